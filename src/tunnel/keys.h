/*
 * The relay's identities, the ssh way: an Ed25519 key pair per relay and per client
 * (OpenSSL), the public key written as one line, `ph-ed25519 BASE64 [comment]`, and its
 * fingerprint `SHA256:BASE64` (unpadded, as ssh prints them). The relay keeps an
 * authorized-keys file of client keys, each with optional limits.
 */
#ifndef PH_TUNNEL_KEYS_H
#define PH_TUNNEL_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/acl.h"

#define PH_KEY_LEN      32 /* an Ed25519 public key */
#define PH_KEY_TYPE     "ph-ed25519"
#define PH_KEY_LINE_MAX 256 /* a public key line: type, base64, a comment */
#define PH_FP_LEN       52  /* "SHA256:" and 43 base64 characters, and NUL */
#define PH_AUTH_NAMES   8   /* service names an authorized key may be limited to */
#define PH_AUTH_RANGES  8   /* port ranges likewise */
#define PH_NAME_MAX     32  /* a service name */
#define PH_AUTH_REACH   8   /* private services a key may be granted (reach=) */
#define PH_AUTH_CONNECT 16  /* destinations likewise (connect=) */
#define PH_AUTH_HOST    64  /* a host name in connect= */

struct ph_key; /* a private key (OpenSSL's EVP_PKEY) */

/*
 * Makes a key pair and writes the private key to path (PEM, PKCS#8, mode 0600, created:
 * an existing file is not overwritten). Returns 0 and the key, or -errno with a reason.
 */
int ph_key_generate(const char *path, struct ph_key **out, char *why, size_t whylen);

/*
 * Reads a private key file. It must be a regular file that only its owner may read (as
 * ssh wants). Returns 0, or -errno with a reason (-ENOENT: no such file).
 */
int ph_key_load(const char *path, struct ph_key **out, char *why, size_t whylen);

void ph_key_free(struct ph_key *k);

/* The public half. */
void ph_key_public(const struct ph_key *k, uint8_t pub[PH_KEY_LEN]);

/* Writes "ph-ed25519 BASE64" (and " comment" when given) into line. */
void ph_pubkey_format(const uint8_t pub[PH_KEY_LEN], const char *comment, char *line, size_t len);

/*
 * Parses a public key line's first two words: "ph-ed25519 BASE64". Returns the bytes
 * used (the comment, if any, follows), or -EINVAL with a static reason.
 */
int ph_pubkey_parse(const char *s, size_t n, uint8_t pub[PH_KEY_LEN], const char **why);

/* "SHA256:..." of a public key, into fp (PH_FP_LEN bytes). */
void ph_key_fingerprint(const uint8_t pub[PH_KEY_LEN], char fp[PH_FP_LEN]);

/* Ed25519 signature of msg with k (64 bytes), and its check. Return 0 or -EIO / -EBADMSG. */
int ph_key_sign(struct ph_key *k, const uint8_t *msg, size_t n, uint8_t sig[64]);
int ph_key_verify(const uint8_t pub[PH_KEY_LEN], const uint8_t *msg, size_t n,
                  const uint8_t sig[64]);

/* A destination of connect=: HOST:PORT, CIDR:PORT-PORT, *:PORT, with * for any port. */
struct ph_auth_dest {
	char host[PH_AUTH_HOST]; /* a name, lower case; "" for an address or * */
	struct ph_cidr cidr;     /* an address (a /32 or /128) or a network */
	bool is_cidr, any;       /* any: the host is * */
	uint16_t lo, hi;         /* the ports */
};

/* One authorized client key and what it may ask for. */
struct ph_auth_key {
	uint8_t pub[PH_KEY_LEN];
	char comment[64];
	char names[PH_AUTH_NAMES][PH_NAME_MAX + 1]; /* names it may expose; none: any */
	unsigned nnames;
	uint16_t lo[PH_AUTH_RANGES], hi[PH_AUTH_RANGES]; /* public ports; none: any */
	unsigned nranges;
	unsigned max_services;                      /* 0: no limit */
	unsigned max_sessions;                      /* 0: PH_AUTH_SESSIONS */
	char reach[PH_AUTH_REACH][PH_NAME_MAX + 1]; /* private services it may visit */
	unsigned nreach;
	bool reach_any;                               /* reach=* */
	struct ph_auth_dest connect[PH_AUTH_CONNECT]; /* where the relay may connect for it */
	unsigned nconnect;
};

#define PH_AUTH_SESSIONS     8    /* sessions a key may hold at once, unless sessions= */
#define PH_AUTH_SESSIONS_MAX 1024 /* the most sessions= may say */

/*
 * Parses one authorized-keys line: `[OPTIONS] ph-ed25519 BASE64 [comment]`, OPTIONS a
 * comma-separated list of `names=a|b`, `ports=20000-20099|443`, `max=N` (services at once),
 * `sessions=N` (sessions at once), `reach=db|web|*` (private services it may visit),
 * `connect=HOST:PORT|CIDR:PORT-PORT|*:443` (where the relay may connect for it; an IPv6
 * address or network in brackets, a port * for any). Returns 1 with
 * *k filled, 0 for a blank or comment line, or -EINVAL with a reason naming the word.
 */
int ph_auth_parse_line(const char *line, struct ph_auth_key *k, char *why, size_t whylen);

/* True when k's reach= lets it visit the private service name. */
bool ph_auth_reach_ok(const struct ph_auth_key *k, const char *name);

/*
 * True when one of k's connect= entries may let the relay connect to host (a name, or an
 * address written as one) on port, judged before the name is looked up: a name entry equal
 * to host, a * entry, or (host an address) an entry whose network holds it.
 */
bool ph_auth_connect_host(const struct ph_auth_key *k, const char *host, uint16_t port);

/*
 * True when k may have the relay connect to a (port in it), reached through name (NULL: an
 * address was asked for): an entry naming name, a network holding a, or *. An address of
 * the relay itself (local: loopback, link-local, its own - ph_addr_is_local) is allowed
 * only by an entry that names it: a network inside loopback or link-local, an address of
 * the relay written out, or a name.
 */
bool ph_auth_connect_addr(const struct ph_auth_key *k, const char *name, const struct ph_addr *a,
                          bool local);

/* True when k may expose a service called name (NULL: unnamed) on public port port. */
bool ph_auth_allows(const struct ph_auth_key *k, const char *name, uint16_t port);

/* True when k's names= lets it use name (NULL or "": unnamed), or k has no names=. */
bool ph_auth_name_ok(const struct ph_auth_key *k, const char *name);

/* True when one of k's ports= ranges holds port (false when k has no ports=). */
bool ph_auth_port_named(const struct ph_auth_key *k, uint16_t port);

/*
 * ssh's StrictModes for a file that says whom to trust (authorized_keys, known_relays):
 * fd is the file, opened from path. Both the file and the directory it is in (after
 * symbolic links) must belong to root or to our effective uid, and neither may be
 * writable by group or others - a directory with the sticky bit excepted, as /tmp: there
 * only a file's owner may replace it. Everything is judged on what fd holds (fstat, and
 * the directory's entry must still be fd's inode), so nothing can be swapped in between.
 * Only the file's own directory is checked, not those above it.
 * Returns 0; -EPERM with a reason naming the file and what to run (`chmod go-w FILE`);
 * -EINVAL when fd is not a regular file; or another -errno (the directory cannot be
 * opened, the file was renamed or replaced since it was opened) with a reason.
 */
int ph_strict_modes(int fd, const char *path, char *why, size_t whylen);

#endif /* PH_TUNNEL_KEYS_H */
