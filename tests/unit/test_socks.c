/*
 * Unit tests for the socks port's messages (socks/proto.h) and configuration
 * (socks/socks.h): SOCKS5, RFC 1929, SOCKS4/4a, the UDP header and the HTTP proxy requests
 * parse what they should, refuse what they should, and every prefix of a valid message
 * asks for more; the replies are byte-exact; users and destination rules decide right.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <arpa/inet.h>

#include "conn/http.h"
#include "core/addr.h"
#include "core/util.h"
#include "socks/proto.h"
#include "socks/socks.h"

/* The parsers of proto.h under one signature, so one helper checks their prefixes. */
enum kind { GREETING, USERPASS, REQ5, REQ4, UDP };

struct result {
	unsigned methods;
	char user[PH_SOCKS_NAME_MAX + 1], pass[PH_SOCKS_NAME_MAX + 1];
	size_t ulen, plen;
	struct ph_socks_req req;
	uint8_t rep;
	struct ph_socks_dest dst;
	const char *why;
};

/* Parses a copy of b[0..n) in a buffer of exactly n bytes, so ASan sees any overread. */
static int parse(enum kind k, const uint8_t *b, size_t n, struct result *res)
{
	uint8_t *c = malloc(n ? n : 1);
	int r = -EINVAL;

	assert_non_null(c);
	memcpy(c, b, n);
	memset(res, 0, sizeof(*res));
	switch (k) {
	case GREETING:
		r = ph_socks5_greeting(c, n, &res->methods, &res->why);
		break;
	case USERPASS:
		r = ph_socks5_userpass(c, n, res->user, &res->ulen, res->pass, &res->plen,
		                       &res->why);
		break;
	case REQ5:
		r = ph_socks5_request(c, n, &res->req, &res->rep, &res->why);
		break;
	case REQ4:
		r = ph_socks4_request(c, n, &res->req, &res->why);
		break;
	case UDP:
		r = ph_socks5_udp_parse(c, n, &res->dst, &res->why);
		break;
	}
	free(c);
	if (r == -EPROTO)
		assert_non_null(res->why);
	return r;
}

/* Parses b whole, after checking that every shorter prefix asks for more. */
static int parse_all(enum kind k, const uint8_t *b, size_t n, struct result *res)
{
	for (size_t i = 0; i < n; i++) {
		int r = parse(k, b, i, res);

		if (r != -EAGAIN)
			print_error("prefix of %zu bytes gave %d (%s)\n", i, r,
			            res->why ? res->why : "");
		assert_int_equal(r, -EAGAIN);
	}
	return parse(k, b, n, res);
}

/* Expects -EPROTO with a reason containing want. */
static void bad(enum kind k, const uint8_t *b, size_t n, const char *want)
{
	struct result res;
	int r = parse(k, b, n, &res);

	if (r != -EPROTO || strstr(res.why, want) == NULL)
		print_error("gave %d (%s), expected '%s'\n", r, res.why ? res.why : "", want);
	assert_int_equal(r, -EPROTO);
	assert_non_null(strstr(res.why, want));
}

static struct ph_addr addr(const char *ip, uint16_t port)
{
	struct ph_addr a;

	if (ph_addr_from_literal(ip, port, &a) != 0)
		print_error("bad test address '%s'\n", ip);
	assert_int_equal(ph_addr_from_literal(ip, port, &a), 0);
	return a;
}

/* Checks d names address ip (and port) and no host name. */
static void dest_is_addr(const struct ph_socks_dest *d, const char *ip, uint16_t port)
{
	char s[PH_ADDR_STRLEN], w[PH_ADDR_STRLEN];
	struct ph_addr want = addr(ip, port);

	assert_string_equal(d->name, "");
	assert_int_equal(d->port, port);
	assert_int_equal(d->addr.len, want.len);
	assert_string_equal(ph_addr_fmt(&d->addr, s, sizeof(s)), ph_addr_fmt(&want, w, sizeof(w)));
	assert_true(ph_addr_equal(&d->addr, &want));
}

/* Checks d names host name (and port) and no address. */
static void dest_is_name(const struct ph_socks_dest *d, const char *name, uint16_t port)
{
	assert_string_equal(d->name, name);
	assert_int_equal(d->port, port);
	assert_int_equal(d->addr.u.sa.sa_family, 0);
}

/* ---- SOCKS5 greeting ---- */

static void test_greeting(void **state)
{
	static const uint8_t none[] = {5, 1, 0}, both[] = {5, 2, 0, 2},
			     more[] = {5, 4, 0x80, 2, 1, 0xff, 0xaa}, other[] = {5, 1, 0x80};
	struct result res;

	(void)state;
	assert_int_equal(parse_all(GREETING, none, sizeof(none), &res), 3);
	assert_int_equal(res.methods, PH_SOCKS5_M_NONE);
	assert_null(res.why);
	assert_int_equal(parse_all(GREETING, both, sizeof(both), &res), 4);
	assert_int_equal(res.methods, PH_SOCKS5_M_NONE | PH_SOCKS5_M_USERPASS);
	/* unknown methods are ignored; bytes after the greeting are not consumed */
	assert_int_equal(parse_all(GREETING, more, 6, &res), 6);
	assert_int_equal(res.methods, PH_SOCKS5_M_USERPASS);
	assert_int_equal(parse(GREETING, more, sizeof(more), &res), 6);
	assert_int_equal(parse_all(GREETING, other, sizeof(other), &res), 3);
	assert_int_equal(res.methods, 0);

	bad(GREETING, (const uint8_t[]){4, 1, 0}, 3, "not SOCKS5");
	bad(GREETING, (const uint8_t[]){4}, 1, "not SOCKS5");
	bad(GREETING, (const uint8_t[]){'G', 'E', 'T'}, 3, "not SOCKS5");
	bad(GREETING, (const uint8_t[]){5, 0}, 2, "no method");
	bad(GREETING, (const uint8_t[]){5, 0, 0}, 3, "no method");
}

/* ---- RFC 1929 username/password ---- */

/* Writes VER ULEN UNAME PLEN PASSWD into b; returns its length. */
static size_t userpass_msg(uint8_t *b, const char *u, size_t ul, const char *p, size_t pl)
{
	b[0] = 1;
	b[1] = (uint8_t)ul;
	memcpy(b + 2, u, ul);
	b[2 + ul] = (uint8_t)pl;
	memcpy(b + 3 + ul, p, pl);
	return 3 + ul + pl;
}

static void test_userpass(void **state)
{
	uint8_t b[3 + 2 * 255 + 4];
	char u[255], p[255];
	struct result res;
	size_t n;

	(void)state;
	n = userpass_msg(b, "alice", 5, "s3cret:x", 8);
	assert_int_equal(parse_all(USERPASS, b, n, &res), (int)n);
	assert_string_equal(res.user, "alice");
	assert_int_equal(res.ulen, 5);
	assert_string_equal(res.pass, "s3cret:x");
	assert_int_equal(res.plen, 8);
	/* trailing bytes (the request that follows) are not consumed */
	b[n] = 5;
	assert_int_equal(parse(USERPASS, b, n + 1, &res), (int)n);
	/* an empty password is a message the parser reads (conf refuses such users) */
	n = userpass_msg(b, "bob", 3, "", 0);
	assert_int_equal(parse_all(USERPASS, b, n, &res), 6);
	assert_string_equal(res.pass, "");
	assert_int_equal(res.plen, 0);
	/* the longest of each */
	memset(u, 'u', sizeof(u));
	memset(p, 'p', sizeof(p));
	n = userpass_msg(b, u, 255, p, 255);
	assert_int_equal(parse_all(USERPASS, b, n, &res), 513);
	assert_int_equal(res.ulen, 255);
	assert_int_equal(res.plen, 255);
	assert_int_equal(strlen(res.user), 255);
	assert_int_equal(strlen(res.pass), 255);
	assert_memory_equal(res.user, u, 255);
	assert_memory_equal(res.pass, p, 255);

	n = userpass_msg(b, "alice", 5, "pw", 2);
	b[0] = 5;
	bad(USERPASS, b, n, "RFC 1929");
	bad(USERPASS, b, 1, "RFC 1929");
	bad(USERPASS, (const uint8_t[]){1, 0, 2, 'p', 'w'}, 5, "empty user");
	bad(USERPASS, (const uint8_t[]){1, 0}, 2, "empty user");
	bad(USERPASS, (const uint8_t[]){1, 2, 'a', 0, 2, 'p', 'w'}, 7, "NUL");
	bad(USERPASS, (const uint8_t[]){1, 2, 'a', 'b', 2, 'p', 0}, 7, "NUL");
	/* on failure the outputs are empty */
	assert_int_equal(parse(USERPASS, (const uint8_t[]){1, 2, 'a', 'b', 2, 'p', 0}, 7, &res),
	                 -EPROTO);
	assert_int_equal(res.ulen, 0);
	assert_string_equal(res.user, "");
}

/* ---- SOCKS5 request ---- */

static void test_request(void **state)
{
	static const uint8_t v4[] = {5, 1, 0, 1, 192, 0, 2, 7, 0x01, 0xbb},
			     v6[] = {5, 3, 0, 4, 0x20, 1, 0x0d, 0xb8, 0, 0,    0,
	                             0, 0, 0, 0, 0,    0, 0,    0,    1, 0xff, 0xff},
			     lit[] = {5, 2, 0, 3, 8, '1', '0', '.', '0', '.', '0', '.', '1', 0, 80},
			     mixed[] = {5,   1,   0,   3,   13,  'W', 'w', 'w', '.', 'e',
	                                'x', '-', 'a', '_', 'p', '.', 'l', 'e', 0,   1};
	uint8_t b[4 + 1 + 255 + 2 + 1];
	char name[256];
	struct result res;

	(void)state;
	assert_int_equal(parse_all(REQ5, v4, sizeof(v4), &res), 10);
	assert_int_equal(res.req.cmd, PH_SOCKS_CONNECT);
	dest_is_addr(&res.req.dst, "192.0.2.7", 443);
	assert_int_equal(parse_all(REQ5, v6, sizeof(v6), &res), 22);
	assert_int_equal(res.req.cmd, PH_SOCKS_UDP);
	dest_is_addr(&res.req.dst, "2001:db8::1", 65535);
	/* a name that is an address literal becomes the address */
	assert_int_equal(parse_all(REQ5, lit, sizeof(lit), &res), (int)sizeof(lit));
	assert_int_equal(res.req.cmd, PH_SOCKS_BIND);
	dest_is_addr(&res.req.dst, "10.0.0.1", 80);
	/* a name, of every length up to 255; bytes after it are not consumed */
	memset(name, 'a', sizeof(name));
	for (size_t l = 1; l <= 255; l += l < 20 ? 1 : 47) {
		size_t n = 5 + l + 2;

		static const uint8_t head[] = {5, 1, 0, 3};

		memcpy(b, head, 4);
		b[4] = (uint8_t)l;
		memcpy(b + 5, name, l);
		memcpy(b + 5 + l, "\x1f\x90X", 3);
		if (l == 255)
			memcpy(b + 5 + l - 12, ".example.com", 12);
		assert_int_equal(parse_all(REQ5, b, n, &res), (int)n);
		assert_int_equal(parse(REQ5, b, n + 1, &res), (int)n);
		assert_int_equal(strlen(res.req.dst.name), l);
		assert_memory_equal(res.req.dst.name, b + 5, l);
		dest_is_name(&res.req.dst, res.req.dst.name, 8080);
	}
	assert_int_equal(parse_all(REQ5, mixed, sizeof(mixed), &res), 20);
	dest_is_name(&res.req.dst, "Www.ex-a_p.le", 1);

	/* refused, with the reply code to send */
	bad(REQ5, (const uint8_t[]){4, 1, 0, 1}, 4, "not SOCKS5");
	bad(REQ5, (const uint8_t[]){4}, 1, "not SOCKS5");
	parse(REQ5, (const uint8_t[]){5, 0, 0, 1, 1, 2, 3, 4, 0, 80}, 10, &res);
	assert_int_equal(res.rep, PH_SOCKS5_CMD_UNSUPPORTED);
	bad(REQ5, (const uint8_t[]){5, 4, 0, 1, 1, 2, 3, 4, 0, 80}, 10, "unknown SOCKS5 command");
	parse(REQ5, (const uint8_t[]){5, 4, 0, 1}, 4, &res);
	assert_int_equal(res.rep, PH_SOCKS5_CMD_UNSUPPORTED);
	bad(REQ5, (const uint8_t[]){5, 1, 0, 2, 1, 2, 3, 4, 0, 80}, 10, "address type");
	parse(REQ5, (const uint8_t[]){5, 1, 0, 0}, 4, &res);
	assert_int_equal(res.rep, PH_SOCKS5_ATYP_UNSUPPORTED);
	bad(REQ5, (const uint8_t[]){5, 1, 0, 3, 0, 0, 80}, 7, "empty host name");
	parse(REQ5, (const uint8_t[]){5, 1, 0, 3, 0}, 5, &res);
	assert_int_equal(res.rep, PH_SOCKS5_FAILURE);
	bad(REQ5, (const uint8_t[]){5, 1, 0, 3, 3, 'a', ' ', 'b', 0, 80}, 10, "characters");
	bad(REQ5, (const uint8_t[]){5, 1, 0, 3, 3, 'a', 0, 'b', 0, 80}, 10, "characters");
	bad(REQ5, (const uint8_t[]){5, 1, 0, 3, 3, 'a', ':', 'b', 0, 80}, 10, "characters");
	parse(REQ5, (const uint8_t[]){5, 1, 0, 3, 3, 'a', '/', 'b', 0, 80}, 10, &res);
	assert_int_equal(res.rep, PH_SOCKS5_HOST_UNREACH);
}

static void test_reply(void **state)
{
	struct ph_addr v4 = addr("192.0.2.1", 1080), v6 = addr("2001:db8::2", 0x1234), none;
	uint8_t out[PH_SOCKS5_REPLY_MAX];

	(void)state;
	assert_int_equal(ph_socks5_reply(PH_SOCKS5_OK, &v4, out), 10);
	assert_memory_equal(out, ((const uint8_t[]){5, 0, 0, 1, 192, 0, 2, 1, 0x04, 0x38}), 10);
	assert_int_equal(ph_socks5_reply(PH_SOCKS5_REFUSED, &v6, out), 22);
	assert_memory_equal(out,
	                    ((const uint8_t[]){5, 5, 0, 4, 0x20, 1, 0x0d, 0xb8, 0, 0,    0,
	                                       0, 0, 0, 0, 0,    0, 0,    0,    2, 0x12, 0x34}),
	                    22);
	memset(out, 0xee, sizeof(out));
	assert_int_equal(ph_socks5_reply(PH_SOCKS5_NOT_ALLOWED, NULL, out), 10);
	assert_memory_equal(out, ((const uint8_t[]){5, 2, 0, 1, 0, 0, 0, 0, 0, 0}), 10);
	memset(&none, 0, sizeof(none));
	memset(out, 0xee, sizeof(out));
	assert_int_equal(ph_socks5_reply(PH_SOCKS5_CMD_UNSUPPORTED, &none, out), 10);
	assert_memory_equal(out, ((const uint8_t[]){5, 7, 0, 1, 0, 0, 0, 0, 0, 0}), 10);
}

/* ---- SOCKS4 and SOCKS4a ---- */

static void test_socks4(void **state)
{
	static const uint8_t plain[] = {4, 1, 0, 80, 192, 0, 2, 9, 'f', 'r', 'e', 'd', 0},
			     anon[] = {4, 2, 0x1f, 0x90, 10, 1, 2, 3, 0},
			     named[] = {4,   1,   1,   0xbb, 0,   0,   0,   1,   'u', 0,   'e',
	                                'x', 'a', 'm', 'p',  'l', 'e', '.', 'o', 'r', 'g', 0},
			     lit[] = {4, 1, 0, 22, 0, 0, 0, 255, 0, ':', ':', '1', 0},
			     zero[] = {4, 1, 0, 22, 0, 0, 0, 0, 0, 'x', 0};
	uint8_t b[8 + 300 + 1 + 300 + 1];
	struct result res;

	(void)state;
	assert_int_equal(parse_all(REQ4, plain, sizeof(plain), &res), (int)sizeof(plain));
	assert_int_equal(res.req.cmd, PH_SOCKS_CONNECT);
	dest_is_addr(&res.req.dst, "192.0.2.9", 80);
	assert_null(res.why);
	assert_int_equal(parse_all(REQ4, anon, sizeof(anon), &res), 9);
	assert_int_equal(res.req.cmd, PH_SOCKS_BIND);
	dest_is_addr(&res.req.dst, "10.1.2.3", 8080);
	assert_int_equal(parse_all(REQ4, named, sizeof(named), &res), (int)sizeof(named));
	dest_is_name(&res.req.dst, "example.org", 443);
	assert_int_equal(parse_all(REQ4, lit, sizeof(lit), &res), (int)sizeof(lit));
	dest_is_addr(&res.req.dst, "::1", 22);
	/* 0.0.0.0 is an address (x == 0), not SOCKS4a: what follows the user id is not read */
	assert_int_equal(parse(REQ4, zero, sizeof(zero), &res), 9);
	dest_is_addr(&res.req.dst, "0.0.0.0", 22);
	/* the following bytes are not consumed */
	memcpy(b, named, sizeof(named));
	b[sizeof(named)] = 'X';
	assert_int_equal(parse(REQ4, b, sizeof(named) + 1, &res), (int)sizeof(named));

	bad(REQ4, (const uint8_t[]){5, 1, 0, 80, 1, 2, 3, 4, 0}, 9, "not SOCKS4");
	bad(REQ4, (const uint8_t[]){5}, 1, "not SOCKS4");
	bad(REQ4, (const uint8_t[]){4, 3, 0, 80, 1, 2, 3, 4, 0}, 9, "unknown SOCKS4 command");
	bad(REQ4, (const uint8_t[]){4, 0}, 2, "unknown SOCKS4 command");
	/* a user id of 255 bytes without its NUL waits; one more is too long */
	memcpy(b, plain, 8);
	memset(b + 8, 'u', 300);
	assert_int_equal(parse(REQ4, b, 8 + 255, &res), -EAGAIN);
	bad(REQ4, b, 8 + 256, "user id too long");
	/* ...and is too long however it arrives: in one read, with its NUL */
	b[8 + 255] = 0;
	assert_int_equal(parse_all(REQ4, b, 8 + 256, &res), 8 + 256);
	memset(b + 8, 'u', 300);
	b[8 + 299] = 0;
	bad(REQ4, b, 8 + 300, "user id too long");
	/* SOCKS4a: a host name too long, empty, or not a name */
	memcpy(b, named, 10);
	memset(b + 10, 'h', 300);
	assert_int_equal(parse(REQ4, b, 10 + 255, &res), -EAGAIN);
	bad(REQ4, b, 10 + 256, "host name too long");
	b[10 + 255] = 0;
	assert_int_equal(parse_all(REQ4, b, 10 + 256, &res), 10 + 256);
	assert_int_equal(strlen(res.req.dst.name), 255);
	bad(REQ4, (const uint8_t[]){4, 1, 0, 80, 0, 0, 0, 1, 0, 0}, 10, "bad length");
	bad(REQ4, (const uint8_t[]){4, 1, 0, 80, 0, 0, 0, 1, 0, 'a', '@', 'b', 0}, 13,
	    "characters");
}

static void test_socks4_reply(void **state)
{
	struct ph_addr v4 = addr("198.51.100.4", 8080), v6 = addr("::1", 80);
	uint8_t out[8];

	(void)state;
	ph_socks4_reply(PH_SOCKS4_GRANTED, &v4, out);
	assert_memory_equal(out, ((const uint8_t[]){0, 90, 0x1f, 0x90, 198, 51, 100, 4}), 8);
	memset(out, 0xee, sizeof(out));
	ph_socks4_reply(PH_SOCKS4_REJECTED, NULL, out);
	assert_memory_equal(out, ((const uint8_t[]){0, 91, 0, 0, 0, 0, 0, 0}), 8);
	memset(out, 0xee, sizeof(out));
	ph_socks4_reply(PH_SOCKS4_GRANTED, &v6, out);
	assert_memory_equal(out, ((const uint8_t[]){0, 90, 0, 0, 0, 0, 0, 0}), 8);
}

/* ---- the UDP ASSOCIATE header ---- */

static void test_udp(void **state)
{
	static const uint8_t v4[] = {0, 0, 0, 1, 203, 0, 113, 5, 0, 53, 'd', 'a', 't', 'a'},
			     v6[] = {0, 0, 0, 4, 0x20, 1, 0x0d, 0xb8, 0, 0, 0,  0,
	                             0, 0, 0, 0, 0,    0, 0,    0x35, 1, 0, 'x'},
			     name[] = {0,   0,   0,   3,   7,   'a',  '.',
	                               'b', '-', 'c', '.', 'd', 0x30, 0x39};
	struct ph_addr from = addr("203.0.113.5", 53), from6 = addr("2001:db8::35", 256);
	uint8_t hdr[PH_SOCKS_UDP_HDR_MAX], big[PH_SOCKS_UDP_HDR_MAX + 100];
	struct result res;

	(void)state;
	assert_int_equal(parse(UDP, v4, sizeof(v4), &res), 10);
	dest_is_addr(&res.dst, "203.0.113.5", 53);
	assert_null(res.why);
	assert_int_equal(parse(UDP, v4, 10, &res), 10); /* an empty datagram */
	assert_int_equal(parse(UDP, v6, sizeof(v6), &res), 22);
	dest_is_addr(&res.dst, "2001:db8::35", 256);
	assert_int_equal(parse(UDP, name, sizeof(name), &res), (int)sizeof(name));
	dest_is_name(&res.dst, "a.b-c.d", 12345);
	/* a header of the longest name, with data after it */
	memset(big, 'n', sizeof(big));
	memset(big, 0, 4);
	big[3] = 3;
	big[4] = 255;
	big[260] = 0;
	big[261] = 7;
	assert_int_equal(parse(UDP, big, sizeof(big), &res), PH_SOCKS_UDP_HDR_MAX);
	assert_int_equal(strlen(res.dst.name), 255);
	assert_int_equal(res.dst.port, 7);
	assert_int_equal(parse(UDP, big, PH_SOCKS_UDP_HDR_MAX, &res), PH_SOCKS_UDP_HDR_MAX);
	/* a datagram holds its whole header: a short one is refused, not waited for */
	for (size_t i = 0; i < sizeof(v4) - 4; i++)
		bad(UDP, v4, i, "shorter than its header");
	for (size_t i = 4; i < 22; i++)
		bad(UDP, v6, i, "shorter than its header");
	for (size_t i = 4; i < PH_SOCKS_UDP_HDR_MAX; i += 16)
		bad(UDP, big, i, "shorter than its header");
	bad(UDP, (const uint8_t[]){0, 0, 1, 1, 1, 2, 3, 4, 0, 53}, 10, "fragment");
	bad(UDP, (const uint8_t[]){0, 0, 0, 2, 1, 2, 3, 4, 0, 53}, 10, "address type");
	bad(UDP, (const uint8_t[]){0, 0, 0, 3, 0, 0, 53}, 7, "empty host name");
	bad(UDP, (const uint8_t[]){0, 0, 0, 3, 1, '*', 0, 53}, 8, "characters");

	/* the header of a reply: RSV RSV FRAG, then the sender, and it parses back */
	assert_int_equal(ph_socks5_udp_header(&from, hdr), 10);
	assert_memory_equal(hdr, ((const uint8_t[]){0, 0, 0, 1, 203, 0, 113, 5, 0, 53}), 10);
	assert_int_equal(parse(UDP, hdr, 10, &res), 10);
	dest_is_addr(&res.dst, "203.0.113.5", 53);
	assert_int_equal(ph_socks5_udp_header(&from6, hdr), 22);
	assert_memory_equal(hdr, v6, 22);
	assert_int_equal(parse(UDP, hdr, 22, &res), 22);
	dest_is_addr(&res.dst, "2001:db8::35", 256);
}

/* ---- HTTP proxy requests ---- */

struct hresult {
	struct ph_http_proxy_req req;
	int status;
	const char *why;
};

/* Parses s[0..n) from a buffer of exactly n bytes; pointers in req are rebased onto s. */
static int hparse_n(const char *s, size_t n, struct hresult *res)
{
	char *c = malloc(n ? n : 1);
	int r;

	assert_non_null(c);
	memcpy(c, s, n);
	r = ph_http_proxy_parse(c, n, &res->req, &res->status, &res->why);
#define REBASE(p)                                                                                  \
	if ((p) != NULL && (p) >= c && (p) < c + n)                                                \
		(p) = s + ((p)-c);
	REBASE(res->req.method);
	REBASE(res->req.path);
	REBASE(res->req.auth);
#undef REBASE
	free(c);
	if (r == -EPROTO)
		assert_non_null(res->why);
	return r;
}

/* Parses s whole, after checking that every shorter prefix asks for more. */
static int hparse(const char *s, struct hresult *res)
{
	size_t n = strlen(s);

	for (size_t i = 0; i < n; i++) {
		int r = hparse_n(s, i, res);

		if (r != -EAGAIN)
			print_error("prefix of %zu bytes gave %d (%s)\n", i, r,
			            res->why ? res->why : "");
		assert_int_equal(r, -EAGAIN);
	}
	return hparse_n(s, n, res);
}

/* Expects all of s parsed. */
static void hok(const char *s, struct hresult *res)
{
	assert_int_equal(hparse(s, res), (int)strlen(s));
	assert_int_equal(res->req.head_len, strlen(s));
}

/* Expects s refused with HTTP status and a reason containing want. */
static void hbad(const char *s, int status, const char *want)
{
	struct hresult res;
	int r = hparse_n(s, strlen(s), &res);

	if (r != -EPROTO || res.status != status || strstr(res.why, want) == NULL)
		print_error("'%s' gave %d, %d (%s)\n", s, r, res.status, res.why ? res.why : "");
	assert_int_equal(r, -EPROTO);
	assert_int_equal(res.status, status);
	assert_non_null(strstr(res.why, want));
}

/* whether a body follows decides if the client's later bytes may reach the server */
static void test_http_body(void **state)
{
	struct hresult res;

	(void)state;
	hok("GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", &res);
	assert_false(res.req.has_body);
	hok("POST http://a.example/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &res);
	assert_false(res.req.has_body);
	hok("POST http://a.example/ HTTP/1.1\r\ncontent-length: 12\r\n\r\n", &res);
	assert_true(res.req.has_body);
	hok("POST http://a.example/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", &res);
	assert_true(res.req.has_body);
}

static void test_http_connect(void **state)
{
	struct hresult res;
	const char *s;

	(void)state;
	s = "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
	    "Proxy-Authorization:   Basic YTpi \t\r\n\r\nTLS";
	assert_int_equal(hparse_n(s, strlen(s), &res), (int)strlen(s) - 3);
	assert_true(res.req.connect);
	dest_is_name(&res.req.dst, "example.com", 443);
	assert_int_equal(res.req.head_len, strlen(s) - 3);
	assert_int_equal(res.req.minor, 1);
	assert_int_equal(res.req.method_len, 7);
	assert_memory_equal(res.req.method, "CONNECT", 7);
	assert_true(res.req.has_host);
	assert_non_null(res.req.auth);
	assert_int_equal(res.req.auth_len, 10);
	assert_memory_equal(res.req.auth, "Basic YTpi", 10);
	assert_null(res.req.path);

	hok("CONNECT 192.0.2.1:22 HTTP/1.0\r\n\r\n", &res);
	assert_true(res.req.connect);
	dest_is_addr(&res.req.dst, "192.0.2.1", 22);
	assert_int_equal(res.req.minor, 0);
	assert_false(res.req.has_host);
	assert_null(res.req.auth);
	hok("connect [2001:db8::1]:8443 HTTP/1.1\n\n", &res);
	assert_true(res.req.connect);
	dest_is_addr(&res.req.dst, "2001:db8::1", 8443);
	hok("CONNECT a.b:65535 HTTP/1.1\r\nproxy-authorization: x\r\n\r\n", &res);
	dest_is_name(&res.req.dst, "a.b", 65535);
	assert_int_equal(res.req.auth_len, 1);

	hbad("CONNECT example.com HTTP/1.1\r\n\r\n", 400, "no port");
	hbad("CONNECT example.com: HTTP/1.1\r\n\r\n", 400, "bad port");
	hbad("CONNECT example.com:0 HTTP/1.1\r\n\r\n", 400, "out of range");
	hbad("CONNECT example.com:65536 HTTP/1.1\r\n\r\n", 400, "out of range");
	hbad("CONNECT example.com:123456 HTTP/1.1\r\n\r\n", 400, "bad port");
	hbad("CONNECT example.com:8x HTTP/1.1\r\n\r\n", 400, "bad port");
	hbad("CONNECT [2001:db8::1] HTTP/1.1\r\n\r\n", 400, "no port");
	hbad("CONNECT [2001:db8::1:443 HTTP/1.1\r\n\r\n", 400, "IPv6");
	hbad("CONNECT [192.0.2.1]:443 HTTP/1.1\r\n\r\n", 400, "IPv6");
	hbad("CONNECT []:443 HTTP/1.1\r\n\r\n", 400, "IPv6");
	hbad("CONNECT [::1]x:443 HTTP/1.1\r\n\r\n", 400, "host:port");
	hbad("CONNECT 2001:db8::1:443 HTTP/1.1\r\n\r\n", 400, "port");
	hbad("CONNECT :443 HTTP/1.1\r\n\r\n", 400, "bad length");
	hbad("CONNECT a!b:443 HTTP/1.1\r\n\r\n", 400, "characters");
	hbad("CONNECT a:443 HTTP/2.0\r\n\r\n", 400, "HTTP/1.x");
}

static void test_http_absolute(void **state)
{
	struct hresult res;
	char big[PH_HTTP_HEAD_MAX + 64];

	(void)state;
	hok("GET http://example.com:8080/a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", &res);
	assert_false(res.req.connect);
	dest_is_name(&res.req.dst, "example.com", 8080);
	assert_int_equal(res.req.path_len, 8);
	assert_memory_equal(res.req.path, "/a/b?c=d", 8);
	assert_true(res.req.has_host);
	assert_int_equal(res.req.method_len, 3);
	hok("POST HTTP://Example.COM/ HTTP/1.0\r\n\r\n", &res);
	dest_is_name(&res.req.dst, "Example.COM", 80);
	assert_int_equal(res.req.path_len, 1);
	assert_memory_equal(res.req.path, "/", 1);
	/* no path: "/" */
	hok("GET http://example.com HTTP/1.1\r\n\r\n", &res);
	dest_is_name(&res.req.dst, "example.com", 80);
	assert_int_equal(res.req.path_len, 1);
	assert_memory_equal(res.req.path, "/", 1);
	hok("HEAD http://10.0.0.1:81 HTTP/1.1\r\n\r\n", &res);
	dest_is_addr(&res.req.dst, "10.0.0.1", 81);
	assert_int_equal(res.req.path_len, 1);
	hok("GET http://[::1]/x HTTP/1.1\r\n\r\n", &res);
	dest_is_addr(&res.req.dst, "::1", 80);
	assert_memory_equal(res.req.path, "/x", 2);

	hbad("GET https://example.com/ HTTP/1.1\r\n\r\n", 501, "https://");
	hbad("GET ftp://example.com/ HTTP/1.1\r\n\r\n", 501, "other than http://");
	hbad("OPTIONS * HTTP/1.1\r\n\r\n", 501, "other than http://");
	hbad("GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, "not a proxy request");
	hbad("GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n", 400, "user info");
	hbad("GET http://example.com?q HTTP/1.1\r\n\r\n", 400, "query");
	hbad("GET http:///x HTTP/1.1\r\n\r\n", 400, "bad length");
	hbad("GET http://example.com:0/ HTTP/1.1\r\n\r\n", 400, "out of range");
	hbad("GET http://exa%6dple.com/ HTTP/1.1\r\n\r\n", 400, "characters");
	hbad("GET http://example.com/ HTTP/1.1\r\nBad header\r\n\r\n", 400, "header");
	/* too long: 431 */
	memset(big, 'a', sizeof(big));
	memcpy(big, "GET http://a/", 13);
	big[sizeof(big) - 1] = '\0';
	hbad(big, 431, "too long");
	memcpy(big, "GET http://a/ HTTP/1.1\r\n", 24);
	hbad(big, 431, "too long");
}

/* Parses s and checks its rewrite is want exactly, and needs all of its length. */
static void rewrite(const char *s, const char *want)
{
	size_t n = strlen(want), hl;
	struct hresult res;
	char *out;

	hl = (size_t)hparse(s, &res);
	assert_int_equal(hl, strlen(s));
	assert_false(res.req.connect);
	out = malloc(hl + 300);
	assert_non_null(out);
	assert_int_equal(ph_http_proxy_rewrite(s, &res.req, out, hl + 300), (int)n);
	if (memcmp(out, want, n) != 0)
		print_error("got '%.*s'\n", (int)n, out);
	assert_memory_equal(out, want, n);
	free(out);
	/* exactly n bytes suffice; one fewer does not (and nothing is written past cap) */
	out = malloc(n);
	assert_non_null(out);
	assert_int_equal(ph_http_proxy_rewrite(s, &res.req, out, n), (int)n);
	assert_memory_equal(out, want, n);
	assert_int_equal(ph_http_proxy_rewrite(s, &res.req, out, n - 1), -ENOSPC);
	assert_int_equal(ph_http_proxy_rewrite(s, &res.req, out, 0), -ENOSPC);
	free(out);
}

static void test_http_rewrite(void **state)
{
	(void)state;
	rewrite("GET http://example.com:8080/a/b?c=d HTTP/1.1\r\n"
	        "User-Agent: t/1\r\n"
	        "Proxy-Authorization: Basic YTpi\r\n"
	        "Proxy-Connection: keep-alive\r\n"
	        "Connection: keep-alive\r\n"
	        "Keep-Alive: 300\r\n"
	        "Accept: */*\r\n"
	        "\r\n",
	        "GET /a/b?c=d HTTP/1.1\r\n"
	        "User-Agent: t/1\r\n"
	        "Accept: */*\r\n"
	        "Host: example.com:8080\r\n"
	        "Connection: close\r\n"
	        "\r\n");
	/* the client's Host is replaced by the target's (RFC 7230 5.4), whatever it said;
	 * header names in any case; other headers kept; port 80 left out */
	rewrite("POST http://example.com/form HTTP/1.0\r\n"
	        "host: forbidden.example\r\n"
	        "CONNECTION: Upgrade\r\n"
	        "proxy-connection: close\r\n"
	        "Connection-X: y\r\n"
	        "Content-Length: 3\r\n"
	        "\r\n",
	        "POST /form HTTP/1.0\r\n"
	        "Connection-X: y\r\n"
	        "Content-Length: 3\r\n"
	        "Host: example.com\r\n"
	        "Connection: close\r\n"
	        "\r\n");
	/* no headers at all; an address literal, IPv4 and IPv6; bare LF kept as sent */
	rewrite("GET http://192.0.2.1 HTTP/1.1\r\n\r\n",
	        "GET / HTTP/1.1\r\nHost: 192.0.2.1\r\nConnection: close\r\n\r\n");
	rewrite("GET http://[2001:db8::1]:8080/v6 HTTP/1.1\nAccept: x\n\n",
	        "GET /v6 HTTP/1.1\r\nAccept: x\nHost: [2001:db8::1]:8080\r\n"
	        "Connection: close\r\n\r\n");
}

/* Writes the base64 of s[0..n) into out (NUL-terminated); returns out. */
static char *b64(const char *s, size_t n, char *out)
{
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;

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
	return out;
}

/* Decodes the value v; returns what ph_http_basic_decode did. */
static int basic(const char *v, char *user, size_t *ulen, char *pass, size_t *plen)
{
	size_t n = strlen(v);
	char *c = malloc(n ? n : 1);
	int r;

	assert_non_null(c);
	memcpy(c, v, n);
	r = ph_http_basic_decode(c, n, user, ulen, pass, plen);
	free(c);
	if (r != 0) {
		assert_int_equal(r, -EINVAL);
		assert_int_equal(*ulen, 0);
		assert_int_equal(*plen, 0);
		assert_string_equal(user, "");
		assert_string_equal(pass, "");
	}
	return r;
}

static void test_basic(void **state)
{
	char user[PH_SOCKS_NAME_MAX + 1], pass[PH_SOCKS_NAME_MAX + 1], v[1024], cred[600];
	size_t ulen, plen;

	(void)state;
	assert_int_equal(basic("Basic YWxpY2U6c2VjcmV0", user, &ulen, pass, &plen), 0);
	assert_string_equal(user, "alice");
	assert_int_equal(ulen, 5);
	assert_string_equal(pass, "secret");
	assert_int_equal(plen, 6);
	/* the scheme in any case, spaces before the token, padding, a ':' in the password */
	assert_int_equal(basic("bAsIc   dTpwOjE=", user, &ulen, pass, &plen), 0);
	assert_string_equal(user, "u");
	assert_string_equal(pass, "p:1");
	assert_int_equal(basic("Basic dTpwMQ==", user, &ulen, pass, &plen), 0);
	assert_string_equal(pass, "p1");
	assert_int_equal(basic("Basic dTo=", user, &ulen, pass, &plen), 0); /* "u:" */
	assert_string_equal(user, "u");
	assert_int_equal(plen, 0);
	/* 255 bytes each fit */
	memset(cred, 'x', 255);
	cred[255] = ':';
	memset(cred + 256, 'y', 255);
	strcpy(v, "Basic ");
	b64(cred, 511, v + 6);
	assert_int_equal(basic(v, user, &ulen, pass, &plen), 0);
	assert_int_equal(ulen, 255);
	assert_int_equal(plen, 255);
	assert_int_equal(strlen(user), 255);
	assert_int_equal(strlen(pass), 255);

	/* too long: a user of 256 bytes, a password of 256, the whole past the buffer */
	memset(cred, 'x', 256);
	cred[256] = ':';
	cred[257] = 'p';
	b64(cred, 258, v + 6);
	assert_int_equal(basic(v, user, &ulen, pass, &plen), -EINVAL);
	cred[0] = 'u';
	cred[1] = ':';
	memset(cred + 2, 'y', 256);
	b64(cred, 258, v + 6);
	assert_int_equal(basic(v, user, &ulen, pass, &plen), -EINVAL);
	memset(cred, 'z', sizeof(cred));
	cred[100] = ':';
	b64(cred, sizeof(cred), v + 6);
	assert_int_equal(basic(v, user, &ulen, pass, &plen), -EINVAL);

	assert_int_equal(basic("Basic YWxpY2U=", user, &ulen, pass, &plen), -EINVAL); /* no ':' */
	assert_int_equal(basic("Basic OnBhc3M=", user, &ulen, pass, &plen), -EINVAL); /* ":pass" */
	assert_int_equal(basic("Basic YQB6OmI=", user, &ulen, pass, &plen), -EINVAL); /* a NUL */
	assert_int_equal(basic("Basic YWxp!2U6c2VjcmV0", user, &ulen, pass, &plen), -EINVAL);
	assert_int_equal(basic("Basic YWxpY2U6c2VjcmV0 ", user, &ulen, pass, &plen), -EINVAL);
	assert_int_equal(basic("Basic dTpw=MQ==", user, &ulen, pass, &plen), -EINVAL);
	assert_int_equal(basic("Basic YW-xp_Y2U6", user, &ulen, pass, &plen), -EINVAL);
	assert_int_equal(basic("Bearer YWxpY2U6c2VjcmV0", user, &ulen, pass, &plen), -EINVAL);
	assert_int_equal(basic("BasicYWxpY2U6c2VjcmV0", user, &ulen, pass, &plen), -EINVAL);
	assert_int_equal(basic("Basic", user, &ulen, pass, &plen), -EINVAL);
	assert_int_equal(basic("Basic ", user, &ulen, pass, &plen), -EINVAL);
	assert_int_equal(basic("", user, &ulen, pass, &plen), -EINVAL);
}

/* ---- configuration: users ---- */

static void test_user_add(void **state)
{
	struct ph_socks_conf *sc = ph_socks_conf_new();
	char spec[600];
	const char *why;

	(void)state;
	assert_non_null(sc);
	assert_int_equal(sc->handshake_timeout, PH_SOCKS_HANDSHAKE_TIMEOUT);
	assert_int_equal(ph_socks_user_add(sc, "alice:secret", &why), 0);
	assert_null(why);
	assert_int_equal(ph_socks_user_add(sc, "bob:p:w d", &why), 0); /* ':' in the password */
	assert_int_equal(sc->nusers, 2);
	assert_string_equal(sc->users[0].name, "alice");
	assert_string_equal(sc->users[0].pass, "secret");
	assert_int_equal(sc->users[0].nlen, 5);
	assert_int_equal(sc->users[0].plen, 6);
	assert_string_equal(sc->users[1].name, "bob");
	assert_string_equal(sc->users[1].pass, "p:w d");

	assert_int_equal(ph_socks_user_add(sc, "carol:", &why), -EINVAL);
	assert_non_null(strstr(why, "empty password"));
	assert_int_equal(ph_socks_user_add(sc, "carol", &why), -EINVAL);
	assert_non_null(strstr(why, "NAME:PASS"));
	assert_int_equal(ph_socks_user_add(sc, ":secret", &why), -EINVAL);
	assert_non_null(strstr(why, "NAME:PASS"));
	assert_int_equal(ph_socks_user_add(sc, "", &why), -EINVAL);
	/* 255 bytes each fit; 256 do not */
	memset(spec, 'n', 255);
	spec[255] = ':';
	memset(spec + 256, 'p', 255);
	spec[511] = '\0';
	assert_int_equal(ph_socks_user_add(sc, spec, &why), 0);
	assert_int_equal(sc->users[2].nlen, 255);
	assert_int_equal(sc->users[2].plen, 255);
	memset(spec, 'n', 256);
	spec[256] = ':';
	strcpy(spec + 257, "pw");
	assert_int_equal(ph_socks_user_add(sc, spec, &why), -EINVAL);
	assert_non_null(strstr(why, "longer than 255"));
	strcpy(spec, "u:");
	memset(spec + 2, 'p', 256);
	spec[258] = '\0';
	assert_int_equal(ph_socks_user_add(sc, spec, &why), -EINVAL);
	assert_non_null(strstr(why, "longer than 255"));
	assert_int_equal(sc->nusers, 3);
	ph_socks_conf_free(sc);
	ph_socks_conf_free(NULL);
}

/* Writes text to a new temporary file; its path goes into path (for unlink). */
static void tmpfile_with(char *path, size_t len, const char *text)
{
	FILE *f;
	int fd;

	snprintf(path, len, "/tmp/test_socks.%d.XXXXXX", (int)getpid());
	fd = mkstemp(path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

static void test_users_load(void **state)
{
	struct ph_socks_conf *sc = ph_socks_conf_new();
	char path[64], why[512], want[600], longline[700];
	int err;

	(void)state;
	assert_non_null(sc);
	tmpfile_with(path, sizeof(path),
	             "# users of the test proxy\n"
	             "\n"
	             "alice:secret\n"
	             "   \t\n"
	             "  bob:hunter2  \r\n"
	             "\t# indented comment\n"
	             "carol:c:d"); /* no final newline */
	err = ph_socks_users_load(sc, path, why, sizeof(why));
	if (err != 0)
		print_error("%s\n", why);
	assert_int_equal(err, 0);
	assert_int_equal(sc->nusers, 3);
	assert_string_equal(sc->users[0].name, "alice");
	assert_string_equal(sc->users[1].name, "bob");
	assert_string_equal(sc->users[1].pass, "hunter2");
	assert_string_equal(sc->users[2].name, "carol");
	assert_string_equal(sc->users[2].pass, "c:d");
	unlink(path);

	/* a bad line names FILE:LINE and stops the load */
	tmpfile_with(path, sizeof(path), "# c\nalice:secret\n\nnocolon\nbob:pw\n");
	assert_int_equal(ph_socks_users_load(sc, path, why, sizeof(why)), -EINVAL);
	snprintf(want, sizeof(want), "%s:4: a user is written NAME:PASS", path);
	assert_string_equal(why, want);
	unlink(path);
	tmpfile_with(path, sizeof(path), "dave:\n");
	assert_int_equal(ph_socks_users_load(sc, path, why, sizeof(why)), -EINVAL);
	snprintf(want, sizeof(want), "%s:1: an empty password", path);
	assert_string_equal(why, want);
	unlink(path);
	memset(longline, 'x', sizeof(longline));
	longline[10] = ':';
	longline[sizeof(longline) - 1] = '\0';
	tmpfile_with(path, sizeof(path), "a:b\n");
	{
		FILE *f = fopen(path, "a");

		assert_non_null(f);
		fputs(longline, f);
		fclose(f);
	}
	assert_int_equal(ph_socks_users_load(sc, path, why, sizeof(why)), -EINVAL);
	snprintf(want, sizeof(want), "%s:2: line too long", path);
	assert_string_equal(why, want);
	unlink(path);

	/* no file; a directory */
	assert_int_equal(ph_socks_users_load(sc, path, why, sizeof(why)), -ENOENT);
	snprintf(want, sizeof(want), "%s: %s", path, strerror(ENOENT));
	assert_string_equal(why, want);
	assert_int_equal(ph_socks_users_load(sc, "/", why, sizeof(why)), -EINVAL);
	assert_string_equal(why, "/: not a regular file");
	ph_socks_conf_free(sc);
}

/* Checks user/pass the way the handshake does: NUL-padded buffers. */
static bool user_ok(const struct ph_socks_conf *sc, const char *u, const char *p)
{
	char user[PH_SOCKS_NAME_MAX + 1], pass[PH_SOCKS_NAME_MAX + 1];

	memset(user, 0, sizeof(user));
	memset(pass, 0, sizeof(pass));
	strcpy(user, u);
	strcpy(pass, p);
	return ph_socks_user_ok(sc, user, strlen(u), pass, strlen(p));
}

static void test_user_ok(void **state)
{
	struct ph_socks_conf *sc = ph_socks_conf_new();
	const char *why;

	(void)state;
	assert_non_null(sc);
	assert_false(user_ok(sc, "alice", "secret")); /* no users: nobody */
	assert_int_equal(ph_socks_user_add(sc, "alice:secret", &why), 0);
	assert_int_equal(ph_socks_user_add(sc, "bob:hunter2", &why), 0);
	assert_true(user_ok(sc, "alice", "secret"));
	assert_true(user_ok(sc, "bob", "hunter2"));
	assert_false(user_ok(sc, "alice", "hunter2"));  /* another's password */
	assert_false(user_ok(sc, "alice", "Secret"));   /* wrong password */
	assert_false(user_ok(sc, "alice", "secre"));    /* a prefix of the password */
	assert_false(user_ok(sc, "alice", "secrets"));  /* longer */
	assert_false(user_ok(sc, "alice", ""));         /* empty */
	assert_false(user_ok(sc, "Alice", "secret"));   /* names are case-sensitive */
	assert_false(user_ok(sc, "alic", "secret"));    /* a prefix of the name */
	assert_false(user_ok(sc, "mallory", "secret")); /* wrong user */
	/* a length that disagrees with the bytes is refused too */
	{
		char user[PH_SOCKS_NAME_MAX + 1] = "alice", pass[PH_SOCKS_NAME_MAX + 1] = "secret";

		assert_false(ph_socks_user_ok(sc, user, 5, pass, 5));
		assert_false(ph_socks_user_ok(sc, user, 4, pass, 6));
		assert_true(ph_socks_user_ok(sc, user, 5, pass, 6));
	}
	ph_socks_conf_free(sc);
}

/* ---- configuration: destination rules ---- */

static void dest_add(struct ph_socks_conf *sc, bool allow, const char *s)
{
	const char *why = "unset";
	int err = ph_socks_dest_add(sc, allow, s, &why);

	if (err != 0)
		print_error("'%s': %s\n", s, why != NULL ? why : "(null)");
	assert_int_equal(err, 0);
	assert_null(why);
}

static void dest_bad(const char *s, const char *want)
{
	struct ph_socks_conf *sc = ph_socks_conf_new();
	const char *why = NULL;

	assert_non_null(sc);
	assert_int_equal(ph_socks_dest_add(sc, true, s, &why), -EINVAL);
	if (why == NULL || strstr(why, want) == NULL)
		print_error("'%s': %s\n", s, why != NULL ? why : "(null)");
	assert_non_null(why);
	assert_non_null(strstr(why, want));
	assert_int_equal(sc->ndests, 0);
	assert_false(sc->has_allow);
	ph_socks_conf_free(sc);
}

/* This host's addresses, as the tests pretend: 192.0.2.77 and 2001:db8::77. */
static struct ph_cidr self_net[2] = {
	{.family = AF_INET, .prefix = 32, .net = {192, 0, 2, 77}},
	{.family = AF_INET6, .prefix = 128, .net = {0x20, 0x01, 0x0d, 0xb8, [15] = 0x77}},
};
static const struct ph_hostaddrs self = {.a = self_net, .n = 2};

/* What refused the last destination allows() refused. */
static int last_why;

/* ph_socks_dest_allows for a name (or NULL) and an address literal (or NULL). */
static bool allows(const struct ph_socks_conf *sc, const char *name, const char *ip)
{
	struct ph_addr a;

	last_why = 1000;
	if (ip == NULL)
		return ph_socks_dest_allows(sc, &self, name, NULL, &last_why);
	a = addr(ip, 443);
	return ph_socks_dest_allows(sc, &self, name, &a, &last_why);
}

/* Loopback, link-local (the cloud metadata address too), unspecified, this host's own. */
static const char *const local_ips[] = {
	"127.0.0.1",   "127.1.2.3",  "::1",          "::ffff:127.0.0.1",  "169.254.169.254",
	"169.254.0.1", "fe80::1",    "febf::1",      "0.0.0.0",           "0.1.2.3",
	"::",          "192.0.2.77", "2001:db8::77", "::ffff:192.0.2.77",
};
/* and some that are not */
static const char *const remote_ips[] = {
	"192.0.2.1",       "198.51.100.7", "2001:db8::1", "fec0::1",        "128.0.0.1",
	"169.253.255.255", "1.0.0.0",      "::2",         "::ffff:8.8.8.8",
};

/* `local` as a rule, and as the default of a rule that listens beyond loopback */
static void test_dest_local(void **state)
{
	struct ph_socks_conf *sc = ph_socks_conf_new();
	char buf[256];

	(void)state;
	assert_non_null(sc);
	/* a loopback rule, as before: the host's services are reachable */
	for (size_t i = 0; i < PH_ARRAY_SIZE(local_ips); i++)
		assert_true(allows(sc, NULL, local_ips[i]));
	/* --deny-dest local: every local address, v4 and v6, and the mapped forms */
	dest_add(sc, false, "local");
	assert_true(sc->dests[0].is_local);
	assert_false(sc->dests[0].is_name);
	for (size_t i = 0; i < PH_ARRAY_SIZE(local_ips); i++) {
		if (allows(sc, NULL, local_ips[i]))
			print_error("%s was let through\n", local_ips[i]);
		assert_false(allows(sc, NULL, local_ips[i]));
		assert_int_equal(last_why, 0);
	}
	for (size_t i = 0; i < PH_ARRAY_SIZE(remote_ips); i++) {
		if (!allows(sc, NULL, remote_ips[i]))
			print_error("%s was refused\n", remote_ips[i]);
		assert_true(allows(sc, NULL, remote_ips[i]));
	}
	assert_true(allows(sc, "localhost", NULL)); /* the name is judged by its address */
	assert_false(allows(sc, "localhost", "127.0.0.1"));
	assert_string_equal(ph_socks_dest_why(sc, 0, buf, sizeof(buf)), "--deny-dest local");
	/* without this host's table, its own addresses are not known to be local */
	{
		struct ph_addr a = addr("192.0.2.77", 80);

		assert_true(ph_socks_dest_allows(sc, NULL, NULL, &a, NULL));
	}
	ph_socks_conf_free(sc);

	/* a rule beyond loopback: local refused by default, the rest allowed */
	sc = ph_socks_conf_new();
	assert_non_null(sc);
	sc->deny_local = true;
	for (size_t i = 0; i < PH_ARRAY_SIZE(local_ips); i++) {
		assert_false(allows(sc, NULL, local_ips[i]));
		assert_int_equal(last_why, PH_SOCKS_DEST_LOCAL);
	}
	for (size_t i = 0; i < PH_ARRAY_SIZE(remote_ips); i++)
		assert_true(allows(sc, NULL, remote_ips[i]));
	assert_true(allows(sc, "localhost", NULL));
	assert_false(allows(sc, "localhost", "::1"));
	assert_non_null(strstr(ph_socks_dest_why(sc, PH_SOCKS_DEST_LOCAL, buf, sizeof(buf)),
	                       "--allow-dest local"));
	/* a deny rule still names itself */
	dest_add(sc, false, "10.0.0.0/8");
	assert_false(allows(sc, NULL, "10.1.1.1"));
	assert_int_equal(last_why, 0);
	assert_string_equal(ph_socks_dest_why(sc, 0, buf, sizeof(buf)), "--deny-dest 10.0.0.0/8");
	ph_socks_conf_free(sc);

	/* an --allow-dest address rule that covers the address lifts the default for it */
	sc = ph_socks_conf_new();
	assert_non_null(sc);
	sc->deny_local = true;
	dest_add(sc, true, "127.0.0.1");
	assert_true(allows(sc, NULL, "127.0.0.1"));
	assert_true(allows(sc, NULL, "::ffff:127.0.0.1"));
	assert_true(allows(sc, "localhost", "127.0.0.1"));
	assert_false(allows(sc, NULL, "127.0.0.2"));
	assert_int_equal(last_why, PH_SOCKS_DEST_LOCAL);
	assert_false(allows(sc, NULL, "::1"));
	assert_false(allows(sc, NULL, "192.0.2.1")); /* an allow list: nothing else */
	assert_int_equal(last_why, PH_SOCKS_DEST_NO_ALLOW);
	assert_string_equal(ph_socks_dest_why(sc, PH_SOCKS_DEST_NO_ALLOW, buf, sizeof(buf)),
	                    "no --allow-dest matches");
	ph_socks_conf_free(sc);

	/* --allow-dest local lets every local address through */
	sc = ph_socks_conf_new();
	assert_non_null(sc);
	sc->deny_local = true;
	dest_add(sc, true, "local");
	dest_add(sc, true, "192.0.2.0/24");
	for (size_t i = 0; i < PH_ARRAY_SIZE(local_ips); i++)
		assert_true(allows(sc, NULL, local_ips[i]));
	assert_true(allows(sc, NULL, "192.0.2.1"));
	assert_false(allows(sc, NULL, "198.51.100.7"));
	assert_string_equal(ph_socks_dest_why(sc, 0, buf, sizeof(buf)), "--allow-dest local");
	ph_socks_conf_free(sc);

	/* a name cannot vouch for its address, nor "anything" for this host */
	sc = ph_socks_conf_new();
	assert_non_null(sc);
	sc->deny_local = true;
	dest_add(sc, true, "localhost");
	dest_add(sc, true, "example.com");
	dest_add(sc, true, "0.0.0.0/0");
	dest_add(sc, true, "::/0");
	assert_false(allows(sc, "localhost", "127.0.0.1"));
	assert_false(allows(sc, "rebind.example.com", "::1"));
	assert_false(allows(sc, NULL, "127.0.0.1"));
	assert_false(allows(sc, NULL, "169.254.169.254"));
	assert_int_equal(last_why, PH_SOCKS_DEST_LOCAL);
	assert_true(allows(sc, "www.example.com", "198.51.100.7"));
	assert_true(allows(sc, NULL, "2001:db8::1"));
	ph_socks_conf_free(sc);

	/* ".local" is still the names under .local (mDNS), not the class */
	sc = ph_socks_conf_new();
	assert_non_null(sc);
	dest_add(sc, false, ".local");
	assert_true(sc->dests[0].is_name);
	assert_false(allows(sc, "printer.local", NULL));
	assert_true(allows(sc, NULL, "127.0.0.1"));
	assert_string_equal(ph_socks_dest_why(sc, 0, buf, sizeof(buf)), "--deny-dest *.local");
	ph_socks_conf_free(sc);
}

static void test_dest_add(void **state)
{
	struct ph_socks_conf *sc = ph_socks_conf_new();

	(void)state;
	assert_non_null(sc);
	dest_add(sc, false, "10.0.0.0/8");
	assert_false(sc->has_allow);
	dest_add(sc, true, "2001:db8::/32");
	dest_add(sc, true, "*.Example.COM.");
	dest_add(sc, true, "example.org");
	dest_add(sc, false, ".sub.example.net");
	assert_true(sc->has_allow);
	assert_int_equal(sc->ndests, 5);
	assert_false(sc->dests[0].is_name);
	assert_false(sc->dests[0].allow);
	assert_int_equal(sc->dests[0].cidr.family, AF_INET);
	assert_int_equal(sc->dests[0].cidr.prefix, 8);
	assert_int_equal(sc->dests[1].cidr.family, AF_INET6);
	assert_true(sc->dests[2].is_name);
	assert_true(sc->dests[2].sub_only);
	assert_string_equal(sc->dests[2].name, "example.com");
	assert_false(sc->dests[3].sub_only);
	assert_string_equal(sc->dests[3].name, "example.org");
	assert_true(sc->dests[4].sub_only);
	assert_string_equal(sc->dests[4].name, "sub.example.net");
	ph_socks_conf_free(sc);

	dest_bad("10.0.0.0/33", "prefix length");
	dest_bad("2001:db8::/129", "prefix length");
	dest_bad("10.0.0.0/x", "prefix length");
	dest_bad("example.com/24", "not an IPv4 or IPv6 address");
	dest_bad("2001:db8::g", "not an IPv4 or IPv6 address");
	dest_bad("", "host name suffix");
	dest_bad("*", "host name suffix");
	dest_bad("*.", "host name suffix");
	dest_bad(".", "host name suffix");
	dest_bad("exa mple.com", "host name suffix");
	dest_bad("a*.example.com", "host name suffix");
}

static void test_dest_allows(void **state)
{
	struct ph_socks_conf *sc = ph_socks_conf_new();

	(void)state;
	assert_non_null(sc);
	/* no rules: anything */
	assert_true(allows(sc, NULL, "192.0.2.1"));
	assert_true(allows(sc, "example.com", NULL));

	/* deny rules only: what they match is refused, the rest allowed */
	dest_add(sc, false, "10.0.0.0/8");
	dest_add(sc, false, "fd00::/8");
	dest_add(sc, false, "example.com");
	assert_false(allows(sc, NULL, "10.1.2.3"));
	assert_false(allows(sc, NULL, "::ffff:10.1.2.3")); /* mapped is IPv4 */
	assert_false(allows(sc, NULL, "fd12::1"));
	assert_true(allows(sc, NULL, "11.0.0.1"));
	assert_true(allows(sc, NULL, "fe80::1"));
	assert_false(allows(sc, "example.com", NULL));
	assert_false(allows(sc, "a.example.com", NULL));
	assert_false(allows(sc, "x.y.EXAMPLE.Com.", NULL)); /* case, trailing dot */
	assert_false(allows(sc, "example.com.", NULL));
	assert_true(allows(sc, "badexample.com", NULL));
	assert_true(allows(sc, "example.com.evil", NULL));
	assert_true(allows(sc, "com", NULL));
	assert_true(allows(sc, "", NULL));
	assert_true(allows(sc, NULL, NULL));
	/* a name that passes still fails on its address, and the other way round */
	assert_false(allows(sc, "good.org", "10.0.0.1"));
	assert_false(allows(sc, "a.example.com", "192.0.2.1"));
	assert_true(allows(sc, "good.org", "192.0.2.1"));
	assert_true(allows(sc, "", "192.0.2.1"));
	ph_socks_conf_free(sc);

	/* "*.example.com": names under it, not example.com itself */
	sc = ph_socks_conf_new();
	assert_non_null(sc);
	dest_add(sc, false, "*.example.com");
	assert_true(allows(sc, "example.com", NULL));
	assert_true(allows(sc, "example.com.", NULL));
	assert_false(allows(sc, "a.example.com", NULL));
	assert_false(allows(sc, "A.B.Example.Com", NULL));
	assert_true(allows(sc, "badexample.com", NULL));
	assert_false(allows(sc, ".example.com", NULL)); /* an empty label under it */
	ph_socks_conf_free(sc);

	/* allow rules: only what matches one; deny still wins, whatever the order */
	for (int order = 0; order < 2; order++) {
		sc = ph_socks_conf_new();
		assert_non_null(sc);
		if (order == 0)
			dest_add(sc, false, "192.0.2.128/25");
		dest_add(sc, true, "192.0.2.0/24");
		dest_add(sc, true, "2001:db8::/32");
		dest_add(sc, true, "example.com");
		if (order == 1)
			dest_add(sc, false, "192.0.2.128/25");
		dest_add(sc, false, "secret.example.com");
		assert_true(allows(sc, NULL, "192.0.2.1"));
		assert_true(allows(sc, NULL, "::ffff:192.0.2.1"));
		assert_false(allows(sc, NULL, "192.0.2.200")); /* allowed and denied: denied */
		assert_false(allows(sc, NULL, "198.51.100.1"));
		assert_true(allows(sc, NULL, "2001:db8:1::1"));
		assert_false(allows(sc, NULL, "2001:db9::1"));
		/* a name that matches an allow rule lets any address through */
		assert_true(allows(sc, "www.example.com", "198.51.100.1"));
		assert_true(allows(sc, "Example.COM.", "203.0.113.1"));
		assert_false(allows(sc, "www.example.com", "192.0.2.129"));
		assert_false(allows(sc, "badexample.com", "198.51.100.1"));
		assert_false(allows(sc, "secret.example.com", "192.0.2.1"));
		assert_false(allows(sc, "x.secret.example.com", "192.0.2.1"));
		/* names alone (before resolving): only a deny rule can say no */
		assert_true(allows(sc, "badexample.com", NULL));
		assert_true(allows(sc, "www.example.com", NULL));
		assert_true(allows(sc, "other.org", NULL));
		assert_false(allows(sc, "secret.example.com", NULL));
		assert_false(allows(sc, "SECRET.example.com.", NULL));
		assert_true(allows(sc, NULL, NULL));
		ph_socks_conf_free(sc);
	}
}

/* The phase name table has a name for every phase, each once, and ends where the enum does. */
static void test_phase_names(void **state)
{
	unsigned n = 0;

	(void)state;
	while (ph_socks_phase_name(n) != NULL) {
		assert_true(strlen(ph_socks_phase_name(n)) > 0);
		for (unsigned j = 0; j < n; j++)
			assert_string_not_equal(ph_socks_phase_name(j), ph_socks_phase_name(n));
		n++;
	}
	assert_int_equal(n, 11);
	assert_string_equal(ph_socks_phase_name(0), "first byte");
	assert_string_equal(ph_socks_phase_name(10), "udp");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_greeting),     cmocka_unit_test(test_userpass),
		cmocka_unit_test(test_request),      cmocka_unit_test(test_reply),
		cmocka_unit_test(test_socks4),       cmocka_unit_test(test_socks4_reply),
		cmocka_unit_test(test_udp),          cmocka_unit_test(test_http_connect),
		cmocka_unit_test(test_http_body),    cmocka_unit_test(test_http_absolute),
		cmocka_unit_test(test_http_rewrite), cmocka_unit_test(test_basic),
		cmocka_unit_test(test_user_add),     cmocka_unit_test(test_users_load),
		cmocka_unit_test(test_user_ok),      cmocka_unit_test(test_dest_add),
		cmocka_unit_test(test_dest_allows),  cmocka_unit_test(test_dest_local),
		cmocka_unit_test(test_phase_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
