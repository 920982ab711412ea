/*
 * Fuzzes the HTTP proxy side of a socks port (socks/proto.h): ph_http_proxy_parse on the
 * input as a request head, ph_http_proxy_rewrite on what it accepts, and
 * ph_http_basic_decode on its Proxy-Authorization value and on the input itself. The parse
 * gives a length within the input, -EAGAIN, or -EPROTO with a reason and a status of 400,
 * 431 or 501; a length parses the same from a buffer cut right after it while shorter
 * prefixes ask for more; every pointer lies inside the head; the destination is an address
 * or a NUL-terminated name. The rewrite fits head_len + 300 bytes, is an HTTP head without
 * the hop-by-hop headers, ends in `Connection: close`, writes nothing past a tight cap and
 * says -ENOSPC then. A decoded user and password are NUL-terminated, within bounds, and
 * encode back to a value that decodes the same.
 */
#include "socks/proto.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conn/http.h"
#include "core/addr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_httpproxy: %s failed (size %zu, r %d)\n", #cond,     \
			        size, r);                                                          \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* Parses a copy of b[0..n) in a buffer of exactly n bytes; offsets stay valid for b. */
static int parse_copy(const char *b, size_t n, struct ph_http_proxy_req *req, int *status,
                      const char **why)
{
	char *c = malloc(n ? n : 1);
	int r;

	if (c == NULL)
		abort();
	memcpy(c, b, n);
	r = ph_http_proxy_parse(c, n, req, status, why);
#define REBASE(p)                                                                                  \
	if ((p) != NULL && (p) >= c && (p) < c + n)                                                \
		(p) = b + ((p)-c);
	REBASE(req->method);
	REBASE(req->path);
	REBASE(req->auth);
#undef REBASE
	free(c);
	return r;
}

static bool in_head(const char *p, size_t len, const char *head, size_t head_len)
{
	return p >= head && p + len <= head + head_len;
}

static bool dest_ok(const struct ph_socks_dest *d)
{
	const char *end = memchr(d->name, '\0', sizeof(d->name));

	if (end == NULL || d->port == 0)
		return false;
	if (d->name[0] != '\0') {
		if (d->addr.u.sa.sa_family != 0 || end - d->name > PH_SOCKS_NAME_MAX)
			return false;
		for (const char *p = d->name; p < end; p++)
			if (strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
			           "._",
			           *p) == NULL)
				return false;
		return true;
	}
	return (d->addr.u.sa.sa_family == AF_INET || d->addr.u.sa.sa_family == AF_INET6) &&
	       ph_addr_port(&d->addr) == d->port;
}

static bool same_req(const struct ph_http_proxy_req *a, const struct ph_http_proxy_req *b)
{
	return a->connect == b->connect && a->dst.port == b->dst.port &&
	       strcmp(a->dst.name, b->dst.name) == 0 &&
	       memcmp(&a->dst.addr, &b->dst.addr, sizeof(a->dst.addr)) == 0 &&
	       a->method == b->method && a->method_len == b->method_len && a->path == b->path &&
	       a->path_len == b->path_len && a->auth == b->auth && a->auth_len == b->auth_len &&
	       a->has_host == b->has_host && a->minor == b->minor && a->head_len == b->head_len;
}

/* Writes "Basic " and the base64 of s[0..n) into out (NUL-terminated); returns its length. */
static size_t basic_encode(const char *s, size_t n, char *out)
{
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 6;

	memcpy(out, "Basic ", 6);
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)(uint8_t)s[i] << 16;

		if (i + 1 < n)
			v |= (uint32_t)(uint8_t)s[i + 1] << 8;
		if (i + 2 < n)
			v |= (uint8_t)s[i + 2];
		out[o++] = a[v >> 18 & 63];
		out[o++] = a[v >> 12 & 63];
		out[o++] = i + 1 < n ? a[v >> 6 & 63] : '=';
		out[o++] = i + 2 < n ? a[v & 63] : '=';
	}
	out[o] = '\0';
	return o;
}

/* Decodes v[0..n) from a buffer of exactly n bytes and checks the result. */
static void check_basic(const char *v, size_t n, size_t size, int r)
{
	char user[PH_SOCKS_NAME_MAX + 1], pass[PH_SOCKS_NAME_MAX + 1];
	char user2[PH_SOCKS_NAME_MAX + 1], pass2[PH_SOCKS_NAME_MAX + 1];
	char cred[2 * PH_SOCKS_NAME_MAX + 2], enc[6 + 4 * (sizeof(cred) + 2) / 3 + 1];
	size_t ulen, plen, ulen2, plen2;
	char *c = malloc(n ? n : 1);
	int d;

	if (c == NULL)
		abort();
	memcpy(c, v, n);
	memset(user, 0xaa, sizeof(user));
	memset(pass, 0xaa, sizeof(pass));
	d = ph_http_basic_decode(c, n, user, &ulen, pass, &plen);
	free(c);
	CHECK(d == 0 || d == -EINVAL);
	if (d != 0) {
		CHECK(ulen == 0 && plen == 0 && user[0] == '\0' && pass[0] == '\0');
		return;
	}
	CHECK(n >= 6 && strncasecmp(v, "Basic ", 6) == 0);
	CHECK(ulen >= 1 && ulen <= PH_SOCKS_NAME_MAX && plen <= PH_SOCKS_NAME_MAX);
	CHECK(user[ulen] == '\0' && pass[plen] == '\0');
	CHECK(memchr(user, '\0', ulen) == NULL && memchr(pass, '\0', plen) == NULL);
	CHECK(memchr(user, ':', ulen) == NULL);
	/* what it decoded encodes back to a value that decodes the same */
	memcpy(cred, user, ulen);
	cred[ulen] = ':';
	memcpy(cred + ulen + 1, pass, plen);
	n = basic_encode(cred, ulen + 1 + plen, enc);
	CHECK(ph_http_basic_decode(enc, n, user2, &ulen2, pass2, &plen2) == 0);
	CHECK(ulen2 == ulen && plen2 == plen && strcmp(user2, user) == 0 &&
	      strcmp(pass2, pass) == 0);
}

/* True when the header name of line p (up to its ':') is lit, in any case. */
static bool header_is(const char *p, const char *colon, const char *lit)
{
	return (size_t)(colon - p) == strlen(lit) && strncasecmp(p, lit, strlen(lit)) == 0;
}

/* Rewrites head with a roomy, an exact and tight caps, in buffers of exactly cap bytes. */
static void check_rewrite(const char *head, const struct ph_http_proxy_req *req, size_t size, int r)
{
	size_t cap = req->head_len + 300, m, hosts = 0, conns = 0;
	char *out = malloc(cap), *exact;
	struct ph_http_req h;
	const char *why;
	int w;

	if (out == NULL)
		abort();
	w = ph_http_proxy_rewrite(head, req, out, cap);
	CHECK(w > 0 && (size_t)w <= cap);
	m = (size_t)w;
	/* the request line in origin form, the same method and path */
	CHECK(m > req->method_len + 1 + req->path_len);
	CHECK(memcmp(out, req->method, req->method_len) == 0 && out[req->method_len] == ' ');
	CHECK(memcmp(out + req->method_len + 1, req->path, req->path_len) == 0);
	CHECK(out[req->method_len + 1] == '/');
	CHECK(m >= 21 && memcmp(out + m - 21, "Connection: close\r\n\r\n", 21) == 0);
	/* an HTTP head of its own, without the hop-by-hop headers, with one Host at least */
	if (m <= PH_HTTP_HEAD_MAX) {
		CHECK(ph_http_parse(out, m, &h, &why) == (int)m);
		CHECK(h.method_len == req->method_len && h.path_len == req->path_len);
		CHECK(h.minor == req->minor);
	}
	for (const char *p = (const char *)memchr(out, '\n', m) + 1; p < out + m;) {
		const char *eol = memchr(p, '\n', (size_t)(out + m - p));
		const char *colon;

		CHECK(eol != NULL);
		colon = memchr(p, ':', (size_t)(eol - p));
		if (colon == NULL) {
			CHECK(eol + 1 == out + m); /* the blank line ends it */
			break;
		}
		CHECK(!header_is(p, colon, "Proxy-Authorization"));
		CHECK(!header_is(p, colon, "Proxy-Connection"));
		CHECK(!header_is(p, colon, "Keep-Alive"));
		conns += header_is(p, colon, "Connection");
		hosts += header_is(p, colon, "Host");
		p = eol + 1;
	}
	CHECK(conns == 1 && hosts >= 1);

	/* exactly m bytes suffice and give the same; fewer say -ENOSPC (ASan: no overflow) */
	exact = malloc(m);
	if (exact == NULL)
		abort();
	CHECK(ph_http_proxy_rewrite(head, req, exact, m) == (int)m);
	CHECK(memcmp(exact, out, m) == 0);
	free(exact);
	for (size_t tight = 0; tight < m; tight = tight * 2 + 7) {
		char *t = malloc(tight ? tight : 1);

		if (t == NULL)
			abort();
		CHECK(ph_http_proxy_rewrite(head, req, t, tight) == -ENOSPC);
		free(t);
	}
	exact = malloc(m - 1);
	if (exact == NULL)
		abort();
	CHECK(ph_http_proxy_rewrite(head, req, exact, m - 1) == -ENOSPC);
	free(exact);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ph_http_proxy_req req, again;
	const char *why;
	int r = 0, r2, status, status2;
	char *buf;

	if (size > 2 * PH_HTTP_HEAD_MAX)
		return 0;
	buf = malloc(size ? size : 1); /* exactly size bytes: ASan sees any read past it */
	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);
	status = 0;
	r = ph_http_proxy_parse(buf, size, &req, &status, &why);
	CHECK(r == -EAGAIN || r == -EPROTO || (r > 0 && (size_t)r <= size));
	CHECK(r != -EPROTO || why != NULL);
	CHECK(r != -EPROTO || status == 400 || status == 431 || status == 501);
	if (r > 0) {
		CHECK(r <= PH_HTTP_HEAD_MAX && req.head_len == (size_t)r && buf[r - 1] == '\n');
		CHECK(req.method == buf && req.method_len > 0);
		CHECK(in_head(req.method, req.method_len, buf, req.head_len));
		CHECK(req.connect == (req.method_len == 7 && strncasecmp(buf, "CONNECT", 7) == 0));
		if (req.connect)
			CHECK(req.path == NULL && req.path_len == 0);
		else
			CHECK(req.path != NULL && req.path_len > 0 && req.path[0] == '/' &&
			      (in_head(req.path, req.path_len, buf, req.head_len) ||
			       req.path_len == 1));
		CHECK(req.auth == NULL ? req.auth_len == 0
		                       : in_head(req.auth, req.auth_len, buf, req.head_len));
		CHECK(req.minor >= 0 && req.minor <= 9);
		CHECK(dest_ok(&req.dst));

		/* the same from exactly the head; shorter prefixes ask for more */
		r2 = parse_copy(buf, (size_t)r, &again, &status2, &why);
		CHECK(r2 == r && same_req(&again, &req));
		for (size_t k = 0; k < (size_t)r; k++) {
			if (r > 512 && k >= 16 && k != (size_t)r / 2 && k + 16 < (size_t)r)
				continue; /* a long head: its ends and middle, not all */
			r2 = parse_copy(buf, k, &again, &status2, &why);
			CHECK(r2 == -EAGAIN);
		}
		if (!req.connect)
			check_rewrite(buf, &req, size, r);
		if (req.auth != NULL)
			check_basic(req.auth, req.auth_len, size, r);
	}
	check_basic(buf, size, size, r); /* the input as a Proxy-Authorization value */
	free(buf);
	return 0;
}
