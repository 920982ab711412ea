/*
 * The relay's CTRL messages: REGISTER's tail of options (type, length, value) - the visitor
 * limit and the address rules, their order, their bounds, what is refused and what skipped;
 * CHECK and CHECKED (`pinhole check`): their fields, their one spelling, what is refused.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tunnel/msg.h"

/* Parses b[0..n) from a buffer of exactly n bytes (ASan sees a read past it). */
static int parse(const uint8_t *b, size_t n, struct ph_ctrl *c, const char **why)
{
	uint8_t *copy = malloc(n ? n : 1);
	int r;

	assert_non_null(copy);
	memcpy(copy, b, n);
	r = ph_ctrl_parse(copy, n, c, why);
	free(copy);
	return r;
}

/* A REGISTER for "web" (tcp, any port) followed by tail[0..tn); returns its length. */
static size_t reg(uint8_t *out, const uint8_t *tail, size_t tn)
{
	static const uint8_t head[] = {1, 0, 0, 0, 7, 1, 0, 0, 0, 3, 'w', 'e', 'b'};

	memcpy(out, head, sizeof(head));
	memcpy(out + sizeof(head), tail, tn);
	return sizeof(head) + tn;
}

static void cidr(struct ph_ctrl_acl *a, bool allow, const char *s)
{
	const char *why;

	a->allow = allow;
	assert_int_equal(ph_cidr_parse(s, &a->cidr, &why), 0);
}

static void test_register_round_trip(void **state)
{
	struct ph_ctrl c = {.type = PH_CTRL_REGISTER,
	                    .req = 9,
	                    .proto = PH_SVC_TCP,
	                    .max_conns = 100,
	                    .nacl = 3},
		       back;
	uint8_t out[PH_CTRL_MAX];
	const char *why;
	size_t n;

	(void)state;
	snprintf(c.name, sizeof(c.name), "web");
	cidr(&c.acl[0], false, "10.1.0.0/16");
	cidr(&c.acl[1], true, "10.0.0.0/8");
	cidr(&c.acl[2], true, "2001:db8::/32");
	n = ph_ctrl_build(&c, out);
	/* head, name, max-conns (6), two IPv4 rules (8 each), one IPv6 rule (20) */
	assert_int_equal(n, 10 + 3 + 6 + 8 + 8 + 20);
	assert_int_equal(out[13], PH_TLV_MAX_CONNS);
	assert_int_equal(out[19], PH_TLV_DENY);
	assert_int_equal(parse(out, n, &back, &why), 0);
	assert_int_equal(back.max_conns, 100);
	assert_int_equal(back.nacl, 3);
	assert_false(back.acl[0].allow); /* the order is the rules' meaning: first match wins */
	assert_true(back.acl[1].allow && back.acl[2].allow);
	assert_int_equal(back.acl[0].cidr.prefix, 16);
	assert_int_equal(back.acl[2].cidr.family, AF_INET6);
	assert_memory_equal(back.acl[2].cidr.net, c.acl[2].cidr.net, 16);
	assert_string_equal(back.name, "web");

	/* nothing set: no tail at all */
	c.max_conns = 0;
	c.nacl = 0;
	assert_int_equal(ph_ctrl_build(&c, out), 13);
}

static void test_register_bounds(void **state)
{
	uint8_t tail[40 * 8], b[PH_CTRL_MAX + sizeof(tail)];
	const uint8_t rule[] = {PH_TLV_ALLOW, 6, 4, 8, 10, 0, 0, 0};
	struct ph_ctrl c;
	const char *why;

	(void)state;
	for (unsigned i = 0; i < 33; i++)
		memcpy(tail + i * sizeof(rule), rule, sizeof(rule));
	assert_int_equal(parse(b, reg(b, tail, 32 * sizeof(rule)), &c, &why), 0);
	assert_int_equal(c.nacl, 32);
	assert_int_equal(parse(b, reg(b, tail, 33 * sizeof(rule)), &c, &why), -EPROTO);
	assert_non_null(strstr(why, "more than 32"));
}

static void test_register_refused(void **state)
{
	static const struct {
		uint8_t tail[12];
		size_t n;
		const char *why;
	} bad[] = {
		{{0, 0, 0, 100}, 4, "does not know"}, /* the old bare u32: not options */
		{{PH_TLV_MAX_CONNS, 4, 0, 0, 0, 0}, 6, "limit of 0"},
		{{PH_TLV_MAX_CONNS, 4, 0, 0, 0, 1, PH_TLV_MAX_CONNS, 4, 0, 0, 0, 2},
	         12,
	         "second visitor limit"},
		{{PH_TLV_MAX_CONNS, 2, 0, 1}, 4, "malformed"},
		{{PH_TLV_ALLOW, 6, 4, 8, 10, 0}, 6, "truncated option"},
		{{PH_TLV_ALLOW, 6, 4, 8, 10, 0, 0, 1}, 8, "host bits"},
		{{PH_TLV_ALLOW, 6, 4, 33, 10, 0, 0, 0}, 8, "malformed address rule"},
		{{PH_TLV_DENY, 6, 5, 8, 10, 0, 0, 0}, 8, "malformed address rule"},
		{{PH_TLV_DENY, 7, 4, 8, 10, 0, 0, 0, 0}, 9, "malformed address rule"},
		{{0x7f, 0}, 2, "does not know"}, /* an unknown option that must be understood */
		{{PH_TLV_ALLOW}, 1, "truncated option"},
	};
	uint8_t b[64];
	struct ph_ctrl c;
	const char *why;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why = NULL;
		if (parse(b, reg(b, bad[i].tail, bad[i].n), &c, &why) != -EPROTO)
			fail_msg("tail %zu was taken", i);
		if (why == NULL || strstr(why, bad[i].why) == NULL)
			fail_msg("tail %zu: '%s' does not say '%s'", i, why, bad[i].why);
	}
}

static void test_register_skips_optional(void **state)
{
	/* an optional option this version does not know, then a rule it does */
	static const uint8_t tail[] = {0x90, 3, 1, 2, 3, PH_TLV_DENY, 6, 4, 32, 127, 0, 0, 9};
	uint8_t b[64];
	struct ph_ctrl c;
	const char *why;

	(void)state;
	assert_int_equal(parse(b, reg(b, tail, sizeof(tail)), &c, &why), 0);
	assert_int_equal(c.skipped, 1);
	assert_int_equal(c.nacl, 1);
	assert_false(c.acl[0].allow);
	assert_int_equal(c.acl[0].cidr.prefix, 32);
}

static void test_check_round_trip(void **state)
{
	struct ph_ctrl c = {.type = PH_CTRL_CHECK, .req = 7, .proto = PH_SVC_UDP, .port = 53}, back;
	uint8_t out[PH_CTRL_MAX];
	const char *why;
	size_t n;

	(void)state;
	/* the caller's own address: no address, family 0 */
	n = ph_ctrl_build(&c, out);
	assert_int_equal(n, 9);
	assert_int_equal(out[0], PH_CTRL_CHECK);
	assert_int_equal(out[5], PH_SVC_UDP);
	assert_int_equal(out[8], 0);
	assert_int_equal(parse(out, n, &back, &why), 0);
	assert_int_equal(back.req, 7);
	assert_int_equal(back.proto, PH_SVC_UDP);
	assert_int_equal(back.port, 53);
	assert_int_equal(back.addr.u.sa.sa_family, AF_UNSPEC);

	/* another address: IPv4, and IPv4-mapped IPv6 is written as IPv4 */
	assert_int_equal(ph_addr_from_literal("::ffff:203.0.113.7", 0, &c.addr), 0);
	n = ph_ctrl_build(&c, out);
	assert_int_equal(n, 8 + 7);
	assert_int_equal(out[8], 4);
	assert_int_equal(parse(out, n, &back, &why), 0);
	assert_int_equal(back.addr.u.sa.sa_family, AF_INET);
	assert_int_equal(ntohl(back.addr.u.in.sin_addr.s_addr), 0xcb007107);
	assert_int_equal(ph_addr_from_literal("2001:db8::1", 0, &c.addr), 0);
	n = ph_ctrl_build(&c, out);
	assert_int_equal(n, 8 + 19);
	assert_int_equal(parse(out, n, &back, &why), 0);
	assert_int_equal(back.addr.u.sa.sa_family, AF_INET6);
	assert_memory_equal(&back.addr.u.in6.sin6_addr, &c.addr.u.in6.sin6_addr, 16);
}

static void test_checked_round_trip(void **state)
{
	struct ph_ctrl c = {.type = PH_CTRL_CHECKED, .req = 1, .result = PH_CHECK_REFUSED}, back;
	uint8_t out[PH_CTRL_MAX];
	const char *why;
	size_t n;

	(void)state;
	assert_int_equal(ph_addr_from_literal("203.0.113.7", 8080, &c.addr), 0);
	snprintf(c.text, sizeof(c.text),
	         "the relay checks only the address it sees you at, "
	         "203.0.113.7");
	n = ph_ctrl_build(&c, out);
	assert_int_equal(n, 6 + 7 + 1 + strlen(c.text));
	assert_int_equal(parse(out, n, &back, &why), 0);
	assert_int_equal(back.result, PH_CHECK_REFUSED);
	assert_int_equal(ph_addr_port(&back.addr), 8080);
	assert_string_equal(back.text, c.text);

	/* every result, the longest text, no address */
	memset(c.text, 'x', PH_CTRL_TEXT_MAX);
	c.text[PH_CTRL_TEXT_MAX] = '\0';
	memset(&c.addr, 0, sizeof(c.addr));
	for (uint8_t r = PH_CHECK_OPEN; r <= PH_CHECK_OPEN_FILTERED; r++) {
		c.result = r;
		n = ph_ctrl_build(&c, out);
		assert_int_equal(n, 6 + 1 + 1 + PH_CTRL_TEXT_MAX);
		assert_true(n <= PH_CTRL_MAX);
		assert_int_equal(parse(out, n, &back, &why), 0);
		assert_int_equal(back.result, r);
		assert_int_equal(strlen(back.text), PH_CTRL_TEXT_MAX);
	}

	/* the peer's text is made printable: it reaches the log */
	static const uint8_t raw[] = {6, 0, 0, 0, 1, 2, 0, 3, 'a', 0x1b, 'b'};
	assert_int_equal(parse(raw, sizeof(raw), &back, &why), 0);
	assert_string_equal(back.text, "a?b");
}

static void test_check_refused(void **state)
{
	static const struct {
		uint8_t m[32];
		size_t n;
		const char *why;
	} bad[] = {
		{{5, 0, 0, 0, 1, 1, 0, 80}, 8, "wrong length"},               /* no address */
		{{5, 0, 0, 0, 1, 1, 0, 80, 0, 0}, 10, "wrong length"},        /* a byte after it */
		{{5, 0, 0, 0, 1, 1, 0, 80, 4, 0, 0, 10}, 12, "wrong length"}, /* cut short */
		{{5, 0, 0, 0, 1, 1, 0, 80, 5}, 9, "wrong length"},            /* family 5 */
		{{5, 0, 0, 0, 1, 3, 0, 80, 0}, 9, "tcp or udp"},
		{{5, 0, 0, 0, 1, 1, 0, 0, 0}, 9, "port 0"},
		{{5, 0, 0, 0, 1, 1, 0, 80,   6,    0,  0, 0, 0, 0,
	          0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1},
	         27,
	         "IPv4-mapped"},
		{{6, 0, 0, 0, 1, 1, 0}, 7, "wrong length"},         /* no text length */
		{{6, 0, 0, 0, 1, 1, 0, 2, 'a'}, 9, "wrong length"}, /* text cut short */
		{{6, 0, 0, 0, 1, 1, 0, 0, 'a'}, 9, "wrong length"}, /* a byte after it */
		{{6, 0, 0, 0, 1, 0, 0, 0}, 8, "unknown result"},
		{{6, 0, 0, 0, 1, 6, 0, 0}, 8, "unknown result"},
	};
	struct ph_ctrl c;
	const char *why;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why = NULL;
		if (parse(bad[i].m, bad[i].n, &c, &why) != -EPROTO)
			fail_msg("message %zu was taken", i);
		if (why == NULL || strstr(why, bad[i].why) == NULL)
			fail_msg("message %zu: '%s' does not say '%s'", i, why, bad[i].why);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_register_round_trip),
		cmocka_unit_test(test_register_bounds),
		cmocka_unit_test(test_register_refused),
		cmocka_unit_test(test_register_skips_optional),
		cmocka_unit_test(test_check_round_trip),
		cmocka_unit_test(test_checked_round_trip),
		cmocka_unit_test(test_check_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
