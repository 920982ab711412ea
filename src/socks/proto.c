#include "socks/proto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "conn/http.h"

#define fail(msg) (*why = (msg), -EPROTO)

/* A host name as sent: letters, digits, '-', '.', '_' (no NUL, no space, no ':'...). */
static bool name_ok(const char *s, size_t n)
{
	if (n == 0 || n > PH_SOCKS_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.' || c == '_'))
			return false;
	}
	return true;
}

/*
 * Sets d from a host of n bytes (not NUL-terminated) and a port: an address literal
 * becomes the address, anything else must look like a name. Returns 0 or -EPROTO.
 */
static int dest_set(struct ph_socks_dest *d, const char *host, size_t n, uint16_t port,
                    const char **why)
{
	char tmp[PH_SOCKS_NAME_MAX + 1];

	memset(&d->addr, 0, sizeof(d->addr));
	d->name[0] = '\0';
	d->port = port;
	if (n == 0 || n > PH_SOCKS_NAME_MAX)
		return fail("a host name of a bad length");
	memcpy(tmp, host, n);
	tmp[n] = '\0';
	/* an address literal; a scope (fe80::1%eth0) would name one of our interfaces */
	if (memchr(tmp, '\0', n) == NULL && memchr(tmp, '%', n) == NULL &&
	    ph_addr_from_literal(tmp, port, &d->addr) == 0)
		return 0;
	memset(&d->addr, 0, sizeof(d->addr));
	if (!name_ok(host, n))
		return fail("a host name with characters no name has");
	memcpy(d->name, tmp, n + 1);
	return 0;
}

static void dest_set_v4(struct ph_socks_dest *d, const uint8_t *ip, uint16_t port)
{
	memset(d, 0, sizeof(*d));
	d->addr.u.in.sin_family = AF_INET;
	memcpy(&d->addr.u.in.sin_addr, ip, 4);
	d->addr.u.in.sin_port = htons(port);
	d->addr.len = sizeof(d->addr.u.in);
	d->port = port;
}

static void dest_set_v6(struct ph_socks_dest *d, const uint8_t *ip, uint16_t port)
{
	memset(d, 0, sizeof(*d));
	d->addr.u.in6.sin6_family = AF_INET6;
	memcpy(&d->addr.u.in6.sin6_addr, ip, 16);
	d->addr.u.in6.sin6_port = htons(port);
	d->addr.len = sizeof(d->addr.u.in6);
	d->port = port;
}

int ph_socks5_greeting(const uint8_t *b, size_t n, unsigned *methods, const char **why)
{
	*why = NULL;
	*methods = 0;
	if (n < 1)
		return -EAGAIN;
	if (b[0] != 5)
		return fail("not SOCKS5");
	if (n < 2)
		return -EAGAIN;
	if (b[1] == 0)
		return fail("a SOCKS5 greeting offering no method");
	if (n < 2 + (size_t)b[1])
		return -EAGAIN;
	for (unsigned i = 0; i < b[1]; i++) {
		if (b[2 + i] == 0x00)
			*methods |= PH_SOCKS5_M_NONE;
		else if (b[2 + i] == 0x02)
			*methods |= PH_SOCKS5_M_USERPASS;
	}
	return 2 + b[1];
}

int ph_socks5_userpass(const uint8_t *b, size_t n, char *user, size_t *ulen, char *pass,
                       size_t *plen, const char **why)
{
	size_t u, p;

	*why = NULL;
	user[0] = pass[0] = '\0';
	*ulen = *plen = 0;
	if (n < 1)
		return -EAGAIN;
	if (b[0] != 1)
		return fail("not a username/password request (RFC 1929)");
	if (n < 2)
		return -EAGAIN;
	u = b[1];
	if (u == 0)
		return fail("an empty user name");
	if (n < 2 + u + 1)
		return -EAGAIN;
	p = b[2 + u];
	if (n < 3 + u + p)
		return -EAGAIN;
	if (memchr(b + 2, '\0', u) != NULL || memchr(b + 3 + u, '\0', p) != NULL)
		return fail("a NUL in the user name or password");
	memcpy(user, b + 2, u);
	user[u] = '\0';
	memcpy(pass, b + 3 + u, p);
	pass[p] = '\0';
	*ulen = u;
	*plen = p;
	return (int)(3 + u + p);
}

int ph_socks5_request(const uint8_t *b, size_t n, struct ph_socks_req *req, uint8_t *rep,
                      const char **why)
{
	size_t alen, off;
	uint16_t port;

	*why = NULL;
	*rep = PH_SOCKS5_FAILURE;
	if (n < 4)
		return n >= 1 && b[0] != 5 ? fail("not SOCKS5") : -EAGAIN;
	if (b[0] != 5)
		return fail("not SOCKS5");
	if (b[1] < PH_SOCKS_CONNECT || b[1] > PH_SOCKS_UDP) {
		*rep = PH_SOCKS5_CMD_UNSUPPORTED;
		return fail("an unknown SOCKS5 command");
	}
	switch (b[3]) {
	case 1:
		alen = 4;
		off = 4;
		break;
	case 4:
		alen = 16;
		off = 4;
		break;
	case 3:
		if (n < 5)
			return -EAGAIN;
		alen = b[4];
		off = 5;
		if (alen == 0)
			return fail("an empty host name");
		break;
	default:
		*rep = PH_SOCKS5_ATYP_UNSUPPORTED;
		return fail("an unknown SOCKS5 address type");
	}
	if (n < off + alen + 2)
		return -EAGAIN;
	port = (uint16_t)(b[off + alen] << 8 | b[off + alen + 1]);
	if (b[3] == 1) {
		dest_set_v4(&req->dst, b + off, port);
	} else if (b[3] == 4) {
		dest_set_v6(&req->dst, b + off, port);
	} else if (dest_set(&req->dst, (const char *)b + off, alen, port, why) < 0) {
		*rep = PH_SOCKS5_HOST_UNREACH;
		return -EPROTO;
	}
	req->cmd = b[1];
	return (int)(off + alen + 2);
}

size_t ph_socks5_reply(uint8_t rep, const struct ph_addr *a, uint8_t out[PH_SOCKS5_REPLY_MAX])
{
	out[0] = 5;
	out[1] = rep;
	out[2] = 0;
	if (a != NULL && a->u.sa.sa_family == AF_INET6) {
		out[3] = 4;
		memcpy(out + 4, &a->u.in6.sin6_addr, 16);
		memcpy(out + 20, &a->u.in6.sin6_port, 2);
		return 22;
	}
	out[3] = 1;
	if (a != NULL && a->u.sa.sa_family == AF_INET) {
		memcpy(out + 4, &a->u.in.sin_addr, 4);
		memcpy(out + 8, &a->u.in.sin_port, 2);
	} else {
		memset(out + 4, 0, 6);
	}
	return 10;
}

int ph_socks4_request(const uint8_t *b, size_t n, struct ph_socks_req *req, const char **why)
{
	const uint8_t *nul, *host;
	size_t off;
	uint16_t port;

	*why = NULL;
	if (n < 1)
		return -EAGAIN;
	if (b[0] != 4)
		return fail("not SOCKS4");
	if (n >= 2 && b[1] != PH_SOCKS_CONNECT && b[1] != PH_SOCKS_BIND)
		return fail("an unknown SOCKS4 command");
	if (n < 9)
		return -EAGAIN;
	/*
	 * USERID, NUL-terminated: at most PH_SOCKS_NAME_MAX bytes, looked for only there so a
	 * longer one is refused however the bytes arrive, not only when read in pieces
	 */
	nul = memchr(b + 8, '\0', n - 8 > PH_SOCKS_NAME_MAX ? PH_SOCKS_NAME_MAX + 1 : n - 8);
	if (nul == NULL)
		return n - 8 > PH_SOCKS_NAME_MAX ? fail("a SOCKS4 user id too long") : -EAGAIN;
	off = (size_t)(nul - b) + 1;
	port = (uint16_t)(b[2] << 8 | b[3]);
	if (b[4] == 0 && b[5] == 0 && b[6] == 0 && b[7] != 0) { /* SOCKS4a: a name follows */
		host = b + off;
		nul = memchr(host, '\0', n - off);
		if (nul == NULL)
			return n - off > PH_SOCKS_NAME_MAX ? fail("a SOCKS4a host name too long")
			                                   : -EAGAIN;
		if (dest_set(&req->dst, (const char *)host, (size_t)(nul - host), port, why) < 0)
			return -EPROTO;
		req->cmd = b[1];
		return (int)(nul - b) + 1;
	}
	dest_set_v4(&req->dst, b + 4, port);
	req->cmd = b[1];
	return (int)off;
}

void ph_socks4_reply(uint8_t cd, const struct ph_addr *a, uint8_t out[8])
{
	memset(out, 0, 8);
	out[1] = cd;
	if (a != NULL && a->u.sa.sa_family == AF_INET) {
		memcpy(out + 2, &a->u.in.sin_port, 2);
		memcpy(out + 4, &a->u.in.sin_addr, 4);
	}
}

int ph_socks5_udp_parse(const uint8_t *b, size_t n, struct ph_socks_dest *dst, const char **why)
{
	struct ph_socks_req req;
	uint8_t head[PH_SOCKS_UDP_HDR_MAX], rep;
	size_t take = n < sizeof(head) ? n : sizeof(head);
	int len;

	*why = NULL;
	if (n < 4)
		return fail("a datagram shorter than its header");
	if (b[2] != 0)
		return fail("a fragment (FRAG != 0): not supported");
	/* the same layout as a request after its first 3 bytes: reuse that parser */
	memcpy(head, b, take);
	head[0] = 5;
	head[1] = PH_SOCKS_CONNECT;
	head[2] = 0;
	len = ph_socks5_request(head, take, &req, &rep, why);
	if (len == -EAGAIN)
		return fail("a datagram shorter than its header");
	if (len < 0)
		return len;
	*dst = req.dst;
	return len;
}

size_t ph_socks5_udp_header(const struct ph_addr *from, uint8_t out[PH_SOCKS_UDP_HDR_MAX])
{
	uint8_t r[PH_SOCKS5_REPLY_MAX];
	size_t n = ph_socks5_reply(0, from, r);

	memcpy(out, r, n);
	out[0] = out[1] = out[2] = 0; /* RSV RSV FRAG */
	return n;
}

static bool ieq(const char *a, size_t n, const char *lit)
{
	return strlen(lit) == n && strncasecmp(a, lit, n) == 0;
}

/* host[:port] or [v6][:port] of n bytes; port required unless defport. */
static int authority_parse(const char *s, size_t n, uint16_t defport, struct ph_socks_dest *d,
                           const char **why)
{
	const char *host = s, *colon = NULL;
	size_t hlen;
	unsigned long port = defport;

	if (n > 0 && s[0] == '[') {
		const char *rb = memchr(s, ']', n);

		if (rb == NULL)
			return fail("a bad [IPv6] address");
		host = s + 1;
		hlen = (size_t)(rb - host);
		if (rb + 1 < s + n) {
			if (rb[1] != ':')
				return fail("a bad host:port");
			colon = rb + 1;
		}
		if (hlen == 0 || memchr(host, ':', hlen) == NULL)
			return fail("a bad [IPv6] address");
	} else {
		colon = memchr(s, ':', n);
		hlen = colon != NULL ? (size_t)(colon - s) : n;
	}
	if (colon != NULL) {
		const char *p = colon + 1, *end = s + n;

		if (p == end || end - p > 5)
			return fail("a bad port");
		port = 0;
		for (; p < end; p++) {
			if (*p < '0' || *p > '9')
				return fail("a bad port");
			port = port * 10 + (unsigned long)(*p - '0');
		}
	} else if (defport == 0) {
		return fail("no port (CONNECT needs host:port)");
	}
	if (port == 0 || port > 65535)
		return fail("a port out of range");
	return dest_set(d, host, hlen, (uint16_t)port, why);
}

int ph_http_proxy_parse(const char *b, size_t n, struct ph_http_proxy_req *req, int *status,
                        const char **why)
{
	struct ph_http_req h;
	const char *p, *end, *t;
	size_t tl;
	int len;

	*why = NULL;
	*status = 400;
	memset(req, 0, sizeof(*req));
	len = ph_http_parse(b, n, &h, why);
	if (len < 0) {
		if (len == -EPROTO && *why != NULL && strstr(*why, "too long") != NULL)
			*status = 431;
		return len;
	}
	req->method = h.method;
	req->method_len = h.method_len;
	req->minor = h.minor;
	req->head_len = (size_t)len;
	t = h.path;
	tl = h.path_len;
	if (ieq(h.method, h.method_len, "CONNECT")) {
		req->connect = true;
		if (authority_parse(t, tl, 0, &req->dst, why) < 0)
			return -EPROTO;
	} else {
		const char *slash, *auth_end;

		if (tl < 7 || strncasecmp(t, "http://", 7) != 0) {
			if (tl >= 8 && strncasecmp(t, "https://", 8) == 0) {
				*status = 501;
				return fail("an https:// URL in a plain request (use CONNECT)");
			}
			if (tl > 0 && t[0] == '/')
				return fail("not a proxy request: the URL has no http://host");
			*status = 501;
			return fail("a URL scheme other than http://");
		}
		t += 7;
		tl -= 7;
		slash = memchr(t, '/', tl);
		auth_end = slash != NULL ? slash : t + tl;
		for (const char *q = t; q < auth_end; q++)
			if (*q == '?' || *q == '#' || *q == '@')
				return fail("a URL with user info, or no path before its query");
		if (authority_parse(t, (size_t)(auth_end - t), 80, &req->dst, why) < 0)
			return -EPROTO;
		if (slash != NULL) {
			req->path = slash;
			req->path_len = (size_t)(t + tl - slash);
		} else {
			req->path = "/";
			req->path_len = 1;
		}
	}
	/* the headers the proxy reads: Proxy-Authorization and Host */
	p = (const char *)memchr(b, '\n', (size_t)len) + 1;
	end = b + len;
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		const char *colon = memchr(p, ':', (size_t)(eol - p));
		const char *v, *ve;

		if (colon == NULL) /* the blank line */
			break;
		v = colon + 1;
		ve = eol;
		while (v < ve && (*v == ' ' || *v == '\t'))
			v++;
		while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
			ve--;
		if (ieq(p, (size_t)(colon - p), "Proxy-Authorization")) {
			req->auth = v;
			req->auth_len = (size_t)(ve - v);
		} else if (ieq(p, (size_t)(colon - p), "Host")) {
			req->has_host = true;
		} else if (ieq(p, (size_t)(colon - p), "Transfer-Encoding")) {
			req->has_body = true;
		} else if (ieq(p, (size_t)(colon - p), "Content-Length")) {
			req->has_body |= ve > v && !(ve - v == 1 && v[0] == '0');
		}
		p = eol + 1;
	}
	return len;
}

static int put(char *out, size_t cap, size_t *off, const char *s, size_t n)
{
	if (*off + n > cap)
		return -ENOSPC;
	memcpy(out + *off, s, n);
	*off += n;
	return 0;
}

int ph_http_proxy_rewrite(const char *head, const struct ph_http_proxy_req *req, char *out,
                          size_t cap)
{
	const char *p = (const char *)memchr(head, '\n', req->head_len) + 1,
		   *end = head + req->head_len;
	char line[PH_SOCKS_NAME_MAX + 64], a[PH_ADDR_STRLEN];
	size_t off = 0, al;
	int n, err = 0;

	n = snprintf(line, sizeof(line), " HTTP/1.%d\r\n", req->minor);
	err |= put(out, cap, &off, req->method, req->method_len);
	err |= put(out, cap, &off, " ", 1);
	err |= put(out, cap, &off, req->path, req->path_len);
	err |= put(out, cap, &off, line, (size_t)n);
	while (p < end && err == 0) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		const char *colon = memchr(p, ':', (size_t)(eol - p));
		size_t nl;

		if (colon == NULL)
			break;
		nl = (size_t)(colon - p);
		if (!ieq(p, nl, "Proxy-Authorization") && !ieq(p, nl, "Proxy-Connection") &&
		    !ieq(p, nl, "Connection") && !ieq(p, nl, "Keep-Alive") && !ieq(p, nl, "Host"))
			err |= put(out, cap, &off, p, (size_t)(eol + 1 - p));
		p = eol + 1;
	}
	/* the target's authority, the port left out when it is http's */
	if (req->dst.name[0] != '\0') {
		n = snprintf(line, sizeof(line), "Host: %s", req->dst.name);
	} else {
		struct ph_addr x = req->dst.addr;

		ph_addr_set_port(&x, 0);
		ph_addr_fmt(&x, a, sizeof(a));
		al = strlen(a);
		if (al > 2 && a[al - 2] == ':') /* [v6]:0 or v4:0: the ":0" goes */
			a[al - 2] = '\0';
		n = snprintf(line, sizeof(line), "Host: %s", a);
	}
	if (req->dst.port != 80)
		n += snprintf(line + n, sizeof(line) - (size_t)n, ":%u", req->dst.port);
	n += snprintf(line + n, sizeof(line) - (size_t)n, "\r\n");
	err |= put(out, cap, &off, line, (size_t)n);
	err |= put(out, cap, &off, "Connection: close\r\n\r\n", 21);
	return err != 0 ? -ENOSPC : (int)off;
}

static int b64val(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

int ph_http_basic_decode(const char *v, size_t n, char *user, size_t *ulen, char *pass,
                         size_t *plen)
{
	char dec[2 * (PH_SOCKS_NAME_MAX + 1)];
	size_t dn = 0, i = 6, ul, pl;
	unsigned acc = 0, bits = 0;
	const char *colon;
	int err = -EINVAL;

	user[0] = pass[0] = '\0';
	*ulen = *plen = 0;
	if (n < 6 || strncasecmp(v, "Basic ", 6) != 0)
		return -EINVAL;
	while (i < n && v[i] == ' ')
		i++;
	for (; i < n && v[i] != '='; i++) {
		int x = b64val(v[i]);

		if (x < 0 || (bits + 6 >= 8 && dn >= sizeof(dec)))
			goto out;
		acc = (acc << 6) | (unsigned)x;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			dec[dn++] = (char)((acc >> bits) & 0xff);
		}
	}
	for (; i < n; i++)
		if (v[i] != '=')
			goto out;
	colon = memchr(dec, ':', dn);
	if (colon == NULL || colon == dec || memchr(dec, '\0', dn) != NULL)
		goto out;
	ul = (size_t)(colon - dec);
	pl = dn - ul - 1;
	if (ul > PH_SOCKS_NAME_MAX || pl > PH_SOCKS_NAME_MAX)
		goto out;
	memcpy(user, dec, ul);
	user[ul] = '\0';
	memcpy(pass, colon + 1, pl);
	pass[pl] = '\0';
	*ulen = ul;
	*plen = pl;
	err = 0;
out:
	explicit_bzero(dec, sizeof(dec)); /* a refused password too */
	return err;
}
