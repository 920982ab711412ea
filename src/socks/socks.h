/*
 * `pinhole socks`: a SOCKS5 / SOCKS4a / HTTP proxy on one port. A socks rule is a forward
 * rule (forward/forward.h) of kind PH_RULE_SOCKS whose target each client names; this is
 * its configuration: users, destination rules and the safety switch for open proxies.
 */
#ifndef PH_SOCKS_SOCKS_H
#define PH_SOCKS_SOCKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/acl.h"
#include "core/addr.h"
#include "socks/proto.h"

struct ph_conn_ops;

/* A socks rule's connections: the handshake, then the connection layer's pump (conn/conn.h). */
extern const struct ph_conn_ops ph_socks_ops;

/* The name of a socks connection's handshake phase p (traces), or NULL past the last. */
const char *ph_socks_phase_name(unsigned p);

#define PH_SOCKS_PORT              1080
#define PH_SOCKS_HANDSHAKE_TIMEOUT 10000 /* ms: default --handshake-timeout */

struct ph_socks_user {
	char name[PH_SOCKS_NAME_MAX + 1]; /* NUL-padded: compared whole, in constant time */
	char pass[PH_SOCKS_NAME_MAX + 1];
	size_t nlen, plen;
};

/* --allow-dest / --deny-dest: a CIDR, a host name suffix, or the class `local` */
struct ph_socks_dest_rule {
	bool allow;
	bool is_local; /* `local`: ph_addr_is_local() with this host's addresses */
	bool is_name;
	bool sub_only; /* "*.example.com": names under it, not example.com itself */
	struct ph_cidr cidr;
	char name[PH_SOCKS_NAME_MAX + 1]; /* lower case, no leading "*." or trailing "." */
};

struct ph_socks_conf {
	struct ph_socks_user *users; /* owned; zeroed before it is freed */
	unsigned nusers;
	struct ph_socks_dest_rule *dests; /* owned */
	unsigned ndests;
	bool has_allow;             /* some --allow-dest: a destination must match one */
	bool deny_local;            /* listening beyond loopback: `local` destinations are
	                             * refused unless an --allow-dest address rule covers them */
	bool open;                  /* --open: a public address without users is allowed */
	uint64_t handshake_timeout; /* ms */
};

/* Defaults for a new configuration. Returns NULL when out of memory. */
struct ph_socks_conf *ph_socks_conf_new(void);

/* Frees sc, wiping the passwords. NULL is fine. */
void ph_socks_conf_free(struct ph_socks_conf *sc);

/* True when a and b have the same users (a reload reads a --users file again). */
bool ph_socks_conf_same_users(const struct ph_socks_conf *a, const struct ph_socks_conf *b);

/* Adds a user written NAME:PASS. Returns 0, -ENOMEM, or -EINVAL with a reason in *why. */
int ph_socks_user_add(struct ph_socks_conf *sc, const char *spec, const char **why);

/*
 * Adds the users of a file: one NAME:PASS a line, blank lines and # comments skipped.
 * Returns 0, or -errno with "PATH:LINE: reason" (or "PATH: reason") in why.
 */
int ph_socks_users_load(struct ph_socks_conf *sc, const char *path, char *why, size_t whylen);

/* True when user/pass (NUL-padded to PH_SOCKS_NAME_MAX + 1 bytes) is a configured user. */
bool ph_socks_user_ok(const struct ph_socks_conf *sc, const char *user, size_t ulen,
                      const char *pass, size_t plen);

/*
 * Adds a destination rule: a CIDR, a name suffix, or `local` (this host and its link: see
 * ph_addr_is_local). Returns 0, -ENOMEM or -EINVAL with a static reason in *why.
 */
int ph_socks_dest_add(struct ph_socks_conf *sc, bool allow, const char *s, const char **why);

/* What refused a destination, besides a deny rule's index (>= 0): */
#define PH_SOCKS_DEST_LOCAL    (-1) /* deny_local: a local address no allow rule covers */
#define PH_SOCKS_DEST_NO_ALLOW (-2) /* there are allow rules and none matched */

/*
 * True when the destination may be reached: name (the name the client asked for, or
 * NULL) and a (its address; NULL to check the name alone, before it is resolved, when
 * only deny rules can decide); self is this host's addresses for `local` (NULL: the fixed
 * ranges only). Denied when any deny rule matches the name or the address; then, with
 * deny_local, when a is local and no allow rule naming `local` or a CIDR (other than
 * 0.0.0.0/0 or ::/0) holding a matches; else allowed when there are no allow rules or one
 * matches. When refused and why is not NULL, *why says what refused: a rule's index, or
 * PH_SOCKS_DEST_LOCAL or PH_SOCKS_DEST_NO_ALLOW.
 */
bool ph_socks_dest_allows(const struct ph_socks_conf *sc, const struct ph_hostaddrs *self,
                          const char *name, const struct ph_addr *a, int *why);

/*
 * Writes what refused a destination (why from ph_socks_dest_allows) for a log line or an
 * HTTP reason: "--deny-dest 10.0.0.0/8", ... Returns buf.
 */
const char *ph_socks_dest_why(const struct ph_socks_conf *sc, int why, char *buf, size_t len);

#endif /* PH_SOCKS_SOCKS_H */
