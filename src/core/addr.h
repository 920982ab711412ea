/*
 * Addresses as users write them: HOST:PORT, :PORT (all interfaces), [v6]:PORT, with an
 * optional tcp:// or udp:// scheme. A HOST that is not an IP literal is a name to resolve.
 */
#ifndef PH_CORE_ADDR_H
#define PH_CORE_ADDR_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define PH_HOST_MAX 254 /* 253 characters of a DNS name and the terminator */

/* A socket address small enough to keep per connection (no sockaddr_storage). */
struct ph_addr {
	union {
		struct sockaddr sa;
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
	} u;
	socklen_t len;
};

enum ph_proto {
	PH_PROTO_TCP = 1, /* the default when no scheme is written */
	PH_PROTO_UDP = 2,
};

/* What one address argument said. */
struct ph_hostport {
	char host[PH_HOST_MAX]; /* as written, without brackets; "" for :PORT */
	uint16_t port;
	unsigned proto;      /* PH_PROTO_* bits from the scheme; PH_PROTO_TCP when none */
	bool has_scheme;     /* a scheme was written */
	bool is_name;        /* host is a DNS name; addr is unset */
	bool wildcard;       /* written as :PORT (all interfaces, IPv6 and IPv4) */
	struct ph_addr addr; /* the literal address, when !is_name */
};

/*
 * Parses one address argument s. Returns 0 and fills *hp, or -EINVAL with a reason
 * ("port must be 1-65535", ...) in *why, a static string.
 */
int ph_hostport_parse(const char *s, struct ph_hostport *hp, const char **why);

/* Sets a to the IPv4 or IPv6 literal host and port. Returns 0 or -EINVAL. */
int ph_addr_from_literal(const char *host, uint16_t port, struct ph_addr *a);

/* Fills a from a sockaddr of known length. Returns 0, or -EAFNOSUPPORT for non-IP families. */
int ph_addr_from_sa(const struct sockaddr *sa, socklen_t len, struct ph_addr *a);

/* Writes "1.2.3.4:80" or "[::1]:80" into buf (PH_ADDR_STRLEN is enough). Returns buf. */
#define PH_ADDR_STRLEN 64
const char *ph_addr_fmt(const struct ph_addr *a, char *buf, size_t len);

/*
 * Writes host and port the way they are written on the command line: "name:80",
 * "1.2.3.4:80", "[::1]:80" (a host with a colon is an IPv6 literal and gets brackets).
 * Returns buf; PH_HOST_MAX + 8 bytes are enough.
 */
const char *ph_hostport_fmt(const char *host, uint16_t port, char *buf, size_t len);

uint16_t ph_addr_port(const struct ph_addr *a);
void ph_addr_set_port(struct ph_addr *a, uint16_t port);

/* An IPv4-mapped IPv6 address (::ffff:a.b.c.d) becomes the plain IPv4 address. */
void ph_addr_unmap(struct ph_addr *a);

/* True when a and b are the same family, address and port. */
bool ph_addr_equal(const struct ph_addr *a, const struct ph_addr *b);

/* True when a and b are the same family and address, whatever their ports. */
bool ph_addr_same_host(const struct ph_addr *a, const struct ph_addr *b);

/* True when a is the unspecified address (0.0.0.0, ::, ::ffff:0.0.0.0) or has no family. */
bool ph_addr_is_any(const struct ph_addr *a);

#endif /* PH_CORE_ADDR_H */
