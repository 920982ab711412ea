/*
 * The relay's CTRL messages: REGISTER's tail of options (type, length, value) - the visitor
 * limit and the address rules, their order, their bounds, what is refused and what skipped.
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_register_round_trip),
		cmocka_unit_test(test_register_bounds),
		cmocka_unit_test(test_register_refused),
		cmocka_unit_test(test_register_skips_optional),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
