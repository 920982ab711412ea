/*
 * Client address rules: an ordered list of allow/deny CIDRs, first match wins. With no
 * match, a list holding any allow rule denies (an allow list), otherwise it allows.
 */
#ifndef PH_CORE_ACL_H
#define PH_CORE_ACL_H

#include <stdbool.h>
#include <stdint.h>

#include "core/addr.h"

struct ph_cidr {
	uint8_t family;  /* AF_INET or AF_INET6 */
	uint8_t prefix;  /* 0-32 or 0-128 */
	uint8_t net[16]; /* the network, host bits cleared */
};

struct ph_acl_rule {
	bool allow;
	struct ph_cidr cidr;
};

struct ph_acl {
	struct ph_acl_rule *rules; /* owned */
	unsigned n;
	bool has_allow;
};

/*
 * Parses "10.0.0.0/8", "2001:db8::/32" or a bare address (a host route). Host bits set
 * past the prefix are cleared. Returns 0, or -EINVAL with a static reason in *why.
 */
int ph_cidr_parse(const char *s, struct ph_cidr *c, const char **why);

/* True when a (IPv4-mapped IPv6 counts as IPv4) lies inside c. */
bool ph_cidr_contains(const struct ph_cidr *c, const struct ph_addr *a);

/* Appends a rule. Returns 0 or -ENOMEM. */
int ph_acl_add(struct ph_acl *acl, bool allow, const struct ph_cidr *c);

/* True when the rules let a client at address a in. */
bool ph_acl_allows(const struct ph_acl *acl, const struct ph_addr *a);

void ph_acl_free(struct ph_acl *acl);

#endif /* PH_CORE_ACL_H */
