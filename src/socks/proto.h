/*
 * The messages of a socks port, parsed and built without I/O: SOCKS5 (RFC 1928) with
 * username/password (RFC 1929), SOCKS4 and SOCKS4a, and the HTTP proxy requests (CONNECT
 * and absolute-form). Parsers follow picohttpparser's contract: bytes consumed, -EAGAIN
 * when more is needed, or -EPROTO with a static reason; they allocate nothing.
 */
#ifndef PH_SOCKS_PROTO_H
#define PH_SOCKS_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"

#define PH_SOCKS_NAME_MAX    255 /* a host name, a user name, a password */
#define PH_SOCKS5_REPLY_MAX  22  /* VER REP RSV ATYP, 16 address bytes, port */
#define PH_SOCKS_UDP_HDR_MAX (4 + 1 + PH_SOCKS_NAME_MAX + 2)

enum ph_socks_cmd { PH_SOCKS_CONNECT = 1, PH_SOCKS_BIND = 2, PH_SOCKS_UDP = 3 };

/* SOCKS5 reply codes (RFC 1928, section 6) */
enum ph_socks5_rep {
	PH_SOCKS5_OK = 0,
	PH_SOCKS5_FAILURE = 1,
	PH_SOCKS5_NOT_ALLOWED = 2,
	PH_SOCKS5_NET_UNREACH = 3,
	PH_SOCKS5_HOST_UNREACH = 4,
	PH_SOCKS5_REFUSED = 5,
	PH_SOCKS5_TTL_EXPIRED = 6,
	PH_SOCKS5_CMD_UNSUPPORTED = 7,
	PH_SOCKS5_ATYP_UNSUPPORTED = 8,
};

/* SOCKS4 reply codes */
#define PH_SOCKS4_GRANTED  90
#define PH_SOCKS4_REJECTED 91

/* SOCKS5 methods a client offers (bits of ph_socks5_greeting's *methods) */
#define PH_SOCKS5_M_NONE     0x01 /* X'00' no authentication */
#define PH_SOCKS5_M_USERPASS 0x02 /* X'02' username/password */

/* Where a client wants to go: an address, or a name still to be resolved. */
struct ph_socks_dest {
	struct ph_addr addr;              /* with the port; family 0 when name is set */
	char name[PH_SOCKS_NAME_MAX + 1]; /* "" for an address */
	uint16_t port;
};

struct ph_socks_req {
	uint8_t cmd; /* enum ph_socks_cmd */
	struct ph_socks_dest dst;
};

/*
 * SOCKS5 greeting: VER=5 NMETHODS METHODS. Sets *methods to the PH_SOCKS5_M_ bits the
 * client offers (others are ignored).
 */
int ph_socks5_greeting(const uint8_t *b, size_t n, unsigned *methods, const char **why);

/*
 * RFC 1929 request: VER=1 ULEN UNAME PLEN PASSWD. user and pass (PH_SOCKS_NAME_MAX + 1
 * bytes each) get the NUL-terminated strings; *ulen and *plen their lengths.
 */
int ph_socks5_userpass(const uint8_t *b, size_t n, char *user, size_t *ulen, char *pass,
                       size_t *plen, const char **why);

/*
 * SOCKS5 request: VER=5 CMD RSV ATYP DST.ADDR DST.PORT. On -EPROTO, *rep is the reply
 * code to send (command or address type not supported, or a general failure).
 */
int ph_socks5_request(const uint8_t *b, size_t n, struct ph_socks_req *req, uint8_t *rep,
                      const char **why);

/* Builds a SOCKS5 reply with BND.ADDR/PORT a (NULL or no family: 0.0.0.0:0) into out. */
size_t ph_socks5_reply(uint8_t rep, const struct ph_addr *a, uint8_t out[PH_SOCKS5_REPLY_MAX]);

/*
 * SOCKS4 or SOCKS4a request: VN=4 CD DSTPORT DSTIP USERID NUL [HOST NUL when DSTIP is
 * 0.0.0.x, x != 0]. CD 1 is CONNECT, 2 BIND; others are -EPROTO.
 */
int ph_socks4_request(const uint8_t *b, size_t n, struct ph_socks_req *req, const char **why);

/* Builds a SOCKS4 reply (VN=0 CD port address; a NULL or IPv6 a gives zeros). */
void ph_socks4_reply(uint8_t cd, const struct ph_addr *a, uint8_t out[8]);

/*
 * The header of a datagram relayed by UDP ASSOCIATE: RSV(2) FRAG ATYP DST.ADDR DST.PORT.
 * Returns its length (the data follows), or -EPROTO (a fragment, FRAG != 0, is one).
 */
int ph_socks5_udp_parse(const uint8_t *b, size_t n, struct ph_socks_dest *dst, const char **why);

/* Builds the header naming a reply's sender into out; returns its length. */
size_t ph_socks5_udp_header(const struct ph_addr *from, uint8_t out[PH_SOCKS_UDP_HDR_MAX]);

/* An HTTP proxy request: CONNECT authority, or a request in absolute form (http://). */
struct ph_http_proxy_req {
	bool connect;
	struct ph_socks_dest dst;
	const char *method; /* into the caller's buffer, not NUL-terminated */
	size_t method_len;
	const char *path; /* origin form ("/" when the URL has none); not for CONNECT */
	size_t path_len;
	const char *auth; /* the Proxy-Authorization value, trimmed; NULL when absent */
	size_t auth_len;
	bool has_host; /* a Host header was sent */
	bool has_body; /* a request body follows (Content-Length > 0, Transfer-Encoding) */
	int minor;     /* HTTP/1.minor */
	size_t head_len;
};

/*
 * Parses an HTTP proxy request head. On -EPROTO, *status is the HTTP status to answer
 * with (400 malformed, 501 a scheme other than http://, 431 a head too long).
 */
int ph_http_proxy_parse(const char *b, size_t n, struct ph_http_proxy_req *req, int *status,
                        const char **why);

/*
 * The head to send the origin server for a non-CONNECT request: the request line in
 * origin form, the client's headers without Proxy-Authorization, Proxy-Connection,
 * Connection, Keep-Alive and Host, a Host header naming the request's target (RFC 7230
 * 5.4: a proxy replaces it), and `Connection: close`.
 * Returns its length, or -ENOSPC when cap is too small (head_len + 300 always suffices).
 */
int ph_http_proxy_rewrite(const char *head, const struct ph_http_proxy_req *req, char *out,
                          size_t cap);

/*
 * A Proxy-Authorization value "Basic base64(user:pass)": decodes it into user and pass
 * (PH_SOCKS_NAME_MAX + 1 bytes each). Returns 0 or -EINVAL.
 */
int ph_http_basic_decode(const char *v, size_t n, char *user, size_t *ulen, char *pass,
                         size_t *plen);

#endif /* PH_SOCKS_PROTO_H */
