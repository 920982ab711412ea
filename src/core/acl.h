/*
 * Client address rules: an ordered list of allow/deny CIDRs (or rinetd-style patterns,
 * 192.168.1.*, 10.0.0.?), first match wins. With no match, a list holding any allow rule
 * denies (an allow list), otherwise it allows.
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

#define PH_ACL_PATTERN_MAX 48 /* an IPv6 address in text, and its terminator */

struct ph_acl_rule {
	bool allow;
	struct ph_cidr cidr;
	char pattern[PH_ACL_PATTERN_MAX]; /* "" for a CIDR rule */
};

struct ph_acl {
	struct ph_acl_rule *rules; /* owned */
	unsigned n;
	bool has_allow;
	bool has_pattern;
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

/*
 * Parses a pattern: an address in text where * stands for any run of characters and ?
 * for one (rinetd's allow/deny), matched against the client's address as text (IPv4
 * dotted, IPv6 lower case). Returns 0, or -EINVAL with a static reason in *why.
 */
int ph_acl_pattern_check(const char *s, const char **why);

/* True when s is a pattern (holds * or ?), not a CIDR. */
bool ph_acl_is_pattern(const char *s);

/* Appends a pattern rule (checked). Returns 0, -EINVAL or -ENOMEM. */
int ph_acl_add_pattern(struct ph_acl *acl, bool allow, const char *pattern);

/* True when the rules let a client at address a in. */
bool ph_acl_allows(const struct ph_acl *acl, const struct ph_addr *a);

void ph_acl_free(struct ph_acl *acl);

/* The addresses of this host's interfaces, as host routes (read with getifaddrs). */
struct ph_hostaddrs {
	struct ph_cidr *a; /* owned */
	unsigned n;
};

/*
 * Reads the addresses of every interface of this host (up or down). Returns 0 and a
 * table the caller owns in *out (free it with ph_hostaddrs_free), or -errno with *out ==
 * NULL.
 */
int ph_hostaddrs_read(struct ph_hostaddrs **out);

/* Frees h. NULL is fine. */
void ph_hostaddrs_free(struct ph_hostaddrs *h);

/*
 * True when a reaches this host or its link rather than the network beyond: loopback
 * (127.0.0.0/8, ::1), link-local (169.254.0.0/16 with the cloud metadata address,
 * fe80::/10), the unspecified addresses (0.0.0.0/8, ::), or one of self's addresses (self
 * may be NULL). An IPv4-mapped IPv6 address is judged as the IPv4 address it carries.
 */
bool ph_addr_is_local(const struct ph_addr *a, const struct ph_hostaddrs *self);

#endif /* PH_CORE_ACL_H */
