/*
 * The PROXY protocol (haproxy's spec, versions 1 and 2): a header a proxy puts in front of
 * a TCP stream to say who the client really is. pinhole writes one towards targets
 * (--proxy-protocol v1|v2) and reads one from trusted proxies in front of it
 * (--accept-proxy CIDR).
 */
#ifndef PH_CONN_PROXYPROTO_H
#define PH_CONN_PROXYPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"

#define PH_PROXY_V1_MAX  107             /* the longest v1 line, CRLF included */
#define PH_PROXY_V2_HEAD 16              /* signature, version/command, family, length */
#define PH_PROXY_V2_MAX  (16 + 36 + 512) /* the longest v2 header read: TLVs up to 512 B */
#define PH_PROXY_MAX     PH_PROXY_V2_MAX

/* What a header said. */
struct ph_proxy_info {
	bool local;         /* v2 LOCAL or v1 UNKNOWN: no addresses, keep the connection's */
	struct ph_addr src; /* the client */
	struct ph_addr dst; /* the address the client connected to */
};

/*
 * Parses the PROXY header at the start of buf[0..len) [picohttpparser's contract]: returns
 * its length (> 0) with *out filled, -EAGAIN when buf is a valid beginning that needs more
 * bytes, or -EPROTO with a static reason in *why when buf cannot start a header. Reads
 * nothing past the header; allocates nothing.
 */
int ph_proxy_parse(const uint8_t *buf, size_t len, struct ph_proxy_info *out, const char **why);

/*
 * Writes a version (1 or 2) header saying src connected to dst into buf, which holds
 * PH_PROXY_MAX bytes. Addresses of different families (an IPv4 client on an IPv6 socket
 * is given unmapped) make a v1 UNKNOWN / v2 LOCAL header. Returns its length.
 */
size_t ph_proxy_build(int version, const struct ph_addr *src, const struct ph_addr *dst,
                      uint8_t *buf);

#endif /* PH_CONN_PROXYPROTO_H */
