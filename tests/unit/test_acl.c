/* Unit tests for CIDR parsing and matching and the allow/deny rule list (core/acl.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/acl.h"
#include "core/addr.h"
#include "core/util.h"

static struct ph_cidr cidr(const char *s)
{
	struct ph_cidr c;
	const char *why = "unset";

	if (ph_cidr_parse(s, &c, &why) != 0)
		print_error("'%s' was refused: %s\n", s, why != NULL ? why : "(null)");
	assert_int_equal(ph_cidr_parse(s, &c, &why), 0);
	assert_null(why);
	return c;
}

static struct ph_addr addr(const char *ip)
{
	struct ph_addr a;

	if (ph_addr_from_literal(ip, 1234, &a) != 0)
		print_error("bad test address '%s'\n", ip);
	assert_int_equal(ph_addr_from_literal(ip, 1234, &a), 0);
	return a;
}

/* True when the rule text s contains the client address ip. */
static bool in(const char *s, const char *ip)
{
	struct ph_cidr c = cidr(s);
	struct ph_addr a = addr(ip);

	return ph_cidr_contains(&c, &a);
}

static void check_net(const struct ph_cidr *c, int family, unsigned prefix, const char *net)
{
	uint8_t want[16] = {0};

	assert_int_equal(inet_pton(family, net, want), 1);
	assert_int_equal(c->family, family);
	assert_int_equal(c->prefix, prefix);
	assert_memory_equal(c->net, want, sizeof(want));
}

static void test_parse_good(void **state)
{
	struct ph_cidr c;

	(void)state;
	c = cidr("10.0.0.0/8");
	check_net(&c, AF_INET, 8, "10.0.0.0");
	c = cidr("10.0.0.1/8"); /* host bits are cleared */
	check_net(&c, AF_INET, 8, "10.0.0.0");
	c = cidr("192.168.1.7");
	check_net(&c, AF_INET, 32, "192.168.1.7");
	c = cidr("255.255.255.255/0");
	check_net(&c, AF_INET, 0, "0.0.0.0");
	c = cidr("255.255.255.255/32");
	check_net(&c, AF_INET, 32, "255.255.255.255");
	c = cidr("255.255.255.255/1");
	check_net(&c, AF_INET, 1, "128.0.0.0");
	c = cidr("255.255.255.255/7");
	check_net(&c, AF_INET, 7, "254.0.0.0");
	c = cidr("255.255.255.255/9");
	check_net(&c, AF_INET, 9, "255.128.0.0");
	c = cidr("255.255.255.255/31");
	check_net(&c, AF_INET, 31, "255.255.255.254");
	c = cidr("10.0.0.0/08");
	check_net(&c, AF_INET, 8, "10.0.0.0");

	c = cidr("2001:db8::/32");
	check_net(&c, AF_INET6, 32, "2001:db8::");
	c = cidr("2001:db8:ffff::1/36");
	check_net(&c, AF_INET6, 36, "2001:db8:f000::");
	c = cidr("::1");
	check_net(&c, AF_INET6, 128, "::1");
	c = cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/0");
	check_net(&c, AF_INET6, 0, "::");
	c = cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/127");
	check_net(&c, AF_INET6, 127, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe");
	c = cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128");
	check_net(&c, AF_INET6, 128, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
	c = cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/65");
	check_net(&c, AF_INET6, 65, "ffff:ffff:ffff:ffff:8000::");
}

static void test_parse_bad(void **state)
{
	static char long_addr[200];
	static const struct {
		const char *in;
		const char *why;
	} cases[] = {
		{"10.0.0.0/33", "prefix length must be 0-32"},
		{"10.0.0.0/-1", "prefix length must be 0-32"},
		{"10.0.0.0/+8", "prefix length must be 0-32"},
		{"10.0.0.0/", "prefix length must be 0-32"},
		{"10.0.0.0/8/8", "prefix length must be 0-32"},
		{"10.0.0.0/ 8", "prefix length must be 0-32"},
		{"10.0.0.0/8 ", "prefix length must be 0-32"},
		{"10.0.0.0/99999999999999999999", "prefix length must be 0-32"},
		{"::/129", "prefix length must be 0-128"},
		{"::/1x", "prefix length must be 0-128"},
		{"/33", "expected an address or ADDRESS/PREFIX"},
		{"/8", "expected an address or ADDRESS/PREFIX"},
		{"", "expected an address or ADDRESS/PREFIX"},
		{"banana", "not an IPv4 or IPv6 address"},
		{"banana/8", "not an IPv4 or IPv6 address"},
		{"10.0.0/8", "not an IPv4 or IPv6 address"},
		{"256.0.0.0/8", "not an IPv4 or IPv6 address"},
		{" 10.0.0.0/8", "not an IPv4 or IPv6 address"},
		{"[::1]/128", "not an IPv4 or IPv6 address"},
		{"fe80::1%lo/64", "not an IPv4 or IPv6 address"},
		{long_addr, "expected an address or ADDRESS/PREFIX"},
	};

	(void)state;
	memset(long_addr, '1', sizeof(long_addr) - 1);
	for (size_t i = 0; i < PH_ARRAY_SIZE(cases); i++) {
		struct ph_cidr c;
		const char *why = NULL;
		int err = ph_cidr_parse(cases[i].in, &c, &why);

		if (err != -EINVAL || why == NULL || strcmp(why, cases[i].why) != 0)
			print_error("'%.40s': got %d '%s', expected -EINVAL '%s'\n", cases[i].in,
			            err, why != NULL ? why : "(null)", cases[i].why);
		assert_int_equal(err, -EINVAL);
		assert_non_null(why);
		assert_string_equal(why, cases[i].why);
	}
}

static void test_contains_v4(void **state)
{
	(void)state;
	assert_true(in("0.0.0.0/0", "0.0.0.0"));
	assert_true(in("0.0.0.0/0", "255.255.255.255"));
	assert_true(in("0.0.0.0/1", "127.255.255.255"));
	assert_false(in("0.0.0.0/1", "128.0.0.0"));
	assert_true(in("128.0.0.0/1", "128.0.0.0"));
	assert_false(in("128.0.0.0/1", "127.255.255.255"));
	assert_true(in("10.0.0.0/7", "11.255.255.255"));
	assert_false(in("10.0.0.0/7", "12.0.0.0"));
	assert_false(in("10.0.0.0/7", "9.255.255.255"));
	assert_true(in("10.0.0.0/8", "10.0.0.0"));
	assert_true(in("10.0.0.0/8", "10.255.255.255"));
	assert_false(in("10.0.0.0/8", "11.0.0.0"));
	assert_false(in("10.0.0.0/8", "9.255.255.255"));
	assert_true(in("10.128.0.0/9", "10.128.0.0"));
	assert_true(in("10.128.0.0/9", "10.255.255.255"));
	assert_false(in("10.128.0.0/9", "10.127.255.255"));
	assert_true(in("192.168.1.6/31", "192.168.1.6"));
	assert_true(in("192.168.1.6/31", "192.168.1.7"));
	assert_false(in("192.168.1.6/31", "192.168.1.5"));
	assert_false(in("192.168.1.6/31", "192.168.1.8"));
	assert_true(in("192.168.1.7/32", "192.168.1.7"));
	assert_false(in("192.168.1.7/32", "192.168.1.6"));
	assert_false(in("192.168.1.7", "192.168.1.8"));
	/* prefixes that end inside a byte */
	assert_true(in("172.16.0.0/12", "172.31.255.255"));
	assert_false(in("172.16.0.0/12", "172.32.0.0"));
	assert_false(in("172.16.0.0/12", "172.15.255.255"));
	assert_true(in("100.64.0.0/10", "100.127.0.1"));
	assert_false(in("100.64.0.0/10", "100.128.0.1"));
	assert_true(in("203.0.113.64/27", "203.0.113.95"));
	assert_false(in("203.0.113.64/27", "203.0.113.96"));
	assert_false(in("203.0.113.64/27", "203.0.113.63"));
}

static void test_contains_v6(void **state)
{
	(void)state;
	assert_true(in("::/0", "::"));
	assert_true(in("::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
	assert_true(in("::/1", "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
	assert_false(in("::/1", "8000::"));
	assert_false(in("fe00::/7", "fdff::1"));
	assert_true(in("fe00::/7", "ffff::1"));
	assert_false(in("fc00::/7", "fe00::"));
	assert_true(in("fc00::/7", "fd12:3456::1"));
	assert_true(in("2001:db8::/32", "2001:db8:ffff:ffff::1"));
	assert_false(in("2001:db8::/32", "2001:db9::"));
	assert_false(in("2001:db8::/32", "2001:db7:ffff::"));
	assert_true(in("2001:db8:8000::/33", "2001:db8:ffff::"));
	assert_false(in("2001:db8:8000::/33", "2001:db8:7fff::"));
	assert_true(in("2001:db8::/127", "2001:db8::1"));
	assert_false(in("2001:db8::/127", "2001:db8::2"));
	assert_true(in("2001:db8::1/128", "2001:db8::1"));
	assert_false(in("2001:db8::1/128", "2001:db8::"));
	assert_false(in("2001:db8::1", "2001:db8::3"));
	assert_true(in("fe80::/10", "febf::1"));
	assert_false(in("fe80::/10", "fec0::1"));
	assert_true(in("2001:db8::/61", "2001:db8:0:7::"));
	assert_false(in("2001:db8::/61", "2001:db8:0:8::"));
}

static void test_contains_families(void **state)
{
	(void)state;
	/* an IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d */
	assert_true(in("10.0.0.0/8", "::ffff:10.1.2.3"));
	assert_false(in("10.0.0.0/8", "::ffff:11.1.2.3"));
	assert_true(in("0.0.0.0/0", "::ffff:1.2.3.4"));
	assert_true(in("192.168.1.7", "::ffff:192.168.1.7"));
	/* otherwise IPv4 rules never match IPv6 clients, and the other way round */
	assert_false(in("0.0.0.0/0", "::"));
	assert_false(in("0.0.0.0/0", "::1"));
	assert_false(in("0.0.0.0/0", "::10.1.2.3")); /* IPv4-compatible is not mapped */
	assert_false(in("0.0.0.0/0", "2001:db8::1"));
	assert_false(in("::/0", "0.0.0.0"));
	assert_false(in("::/0", "10.1.2.3"));
	assert_false(in("::/0", "::ffff:10.1.2.3")); /* it is an IPv4 client */
	assert_false(in("::ffff:0.0.0.0/80", "10.1.2.3"));
}

/*
 * A rule written in the IPv4-mapped range (::ffff:0:0/96) describes IPv4 clients. Since
 * clients are unmapped before matching, ph_cidr_parse must either turn such a rule into
 * the IPv4 rule it means or refuse it; accepting it as an IPv6 rule makes a rule that can
 * never match (a --deny that silently denies nobody).
 */
static void test_mapped_rule(void **state)
{
	static const char *const rules[] = {"::ffff:10.0.0.0/104", "::ffff:10.1.2.3",
	                                    "::ffff:0.0.0.0/96"};

	(void)state;
	for (size_t i = 0; i < PH_ARRAY_SIZE(rules); i++) {
		struct ph_cidr c;
		const char *why;
		struct ph_addr v4 = addr("10.1.2.3"), mapped = addr("::ffff:10.1.2.3");

		if (ph_cidr_parse(rules[i], &c, &why) < 0)
			continue; /* refused with a reason: fine */
		if (!ph_cidr_contains(&c, &v4) || !ph_cidr_contains(&c, &mapped))
			print_error(
				"rule '%s' was accepted, yet does not match the client 10.1.2.3 "
				"(nor ::ffff:10.1.2.3)\n",
				rules[i]);
		assert_true(ph_cidr_contains(&c, &v4));
		assert_true(ph_cidr_contains(&c, &mapped));
	}
}

static void add(struct ph_acl *acl, bool allow, const char *s)
{
	struct ph_cidr c = cidr(s);

	assert_int_equal(ph_acl_add(acl, allow, &c), 0);
}

static bool allows(const struct ph_acl *acl, const char *ip)
{
	struct ph_addr a = addr(ip);

	return ph_acl_allows(acl, &a);
}

static void test_acl_empty(void **state)
{
	struct ph_acl acl = {0};

	(void)state;
	assert_true(allows(&acl, "10.0.0.1"));
	assert_true(allows(&acl, "::1"));
	assert_true(allows(&acl, "::ffff:10.0.0.1"));
	ph_acl_free(&acl);
	ph_acl_free(&acl); /* harmless twice */
	assert_null(acl.rules);
	assert_int_equal(acl.n, 0);
}

static void test_acl_first_match_wins(void **state)
{
	struct ph_acl acl = {0};

	(void)state;
	/* deny one host of an allowed net: the order decides */
	add(&acl, false, "10.1.2.3");
	add(&acl, true, "10.0.0.0/8");
	assert_int_equal(acl.n, 2);
	assert_false(acl.rules[0].allow);
	assert_true(acl.rules[1].allow);
	assert_true(acl.has_allow);
	assert_false(allows(&acl, "10.1.2.3"));
	assert_false(allows(&acl, "::ffff:10.1.2.3"));
	assert_true(allows(&acl, "10.1.2.4"));
	assert_true(allows(&acl, "::ffff:10.1.2.4"));
	assert_false(allows(&acl, "11.0.0.1")); /* no match, an allow list: denied */
	assert_false(allows(&acl, "::1"));
	ph_acl_free(&acl);

	/* the other order: the wider allow shadows the deny */
	add(&acl, true, "10.0.0.0/8");
	add(&acl, false, "10.1.2.3");
	assert_true(allows(&acl, "10.1.2.3"));
	ph_acl_free(&acl);
}

static void test_acl_allow_list(void **state)
{
	struct ph_acl acl = {0};

	(void)state;
	add(&acl, true, "192.168.0.0/16");
	add(&acl, true, "2001:db8::/32");
	assert_true(allows(&acl, "192.168.10.20"));
	assert_true(allows(&acl, "::ffff:192.168.10.20"));
	assert_true(allows(&acl, "2001:db8::5"));
	assert_false(allows(&acl, "192.169.0.1"));
	assert_false(allows(&acl, "2001:db9::5"));
	assert_false(allows(&acl, "::1"));
	assert_false(allows(&acl, "127.0.0.1"));
	ph_acl_free(&acl);
}

static void test_acl_deny_list(void **state)
{
	struct ph_acl acl = {0};

	(void)state;
	add(&acl, false, "203.0.113.0/24");
	add(&acl, false, "::1");
	assert_false(acl.has_allow);
	assert_false(allows(&acl, "203.0.113.9"));
	assert_false(allows(&acl, "::ffff:203.0.113.9"));
	assert_false(allows(&acl, "::1"));
	assert_true(allows(&acl, "203.0.114.9")); /* no match, no allow rule: allowed */
	assert_true(allows(&acl, "::2"));
	assert_true(allows(&acl, "127.0.0.1"));
	ph_acl_free(&acl);
}

static void test_acl_many_rules(void **state)
{
	struct ph_acl acl = {0};
	char s[32];

	(void)state;
	/* deny 10.0.0.0 .. 10.0.99.0, then allow 10/8: exercises growth of the array */
	for (int i = 0; i < 100; i++) {
		snprintf(s, sizeof(s), "10.0.%d.0/24", i);
		add(&acl, false, s);
	}
	add(&acl, true, "10.0.0.0/8");
	assert_int_equal(acl.n, 101);
	assert_false(allows(&acl, "10.0.42.1"));
	assert_false(allows(&acl, "10.0.99.255"));
	assert_true(allows(&acl, "10.0.100.1"));
	assert_false(allows(&acl, "11.0.0.1"));
	ph_acl_free(&acl);
}

static void test_acl_patterns(void **state)
{
	struct ph_acl acl = {0};
	const char *why;
	struct ph_addr a;

	(void)state;
	assert_int_equal(ph_acl_add_pattern(&acl, false, "192.168.1.1?"), 0);
	assert_int_equal(ph_acl_add_pattern(&acl, true, "192.168.*"), 0);
	assert_int_equal(ph_acl_add_pattern(&acl, true, "2001:DB8::*"), 0); /* any case */
	a = addr("192.168.1.15");                                           /* 1? matches 15 */
	assert_false(ph_acl_allows(&acl, &a));
	a = addr("192.168.1.150"); /* ? is one character */
	assert_true(ph_acl_allows(&acl, &a));
	a = addr("192.168.7.7");
	assert_true(ph_acl_allows(&acl, &a));
	a = addr("::ffff:192.168.7.7"); /* a mapped client is matched as IPv4 */
	assert_true(ph_acl_allows(&acl, &a));
	a = addr("10.0.0.1"); /* an allow list: no match, no entry */
	assert_false(ph_acl_allows(&acl, &a));
	a = addr("2001:db8::42");
	assert_true(ph_acl_allows(&acl, &a));
	ph_acl_free(&acl);
	assert_true(ph_acl_is_pattern("10.*") && !ph_acl_is_pattern("10.0.0.0/8"));
	assert_int_equal(ph_acl_pattern_check("10.0.0.[1]", &why), -EINVAL);
	assert_int_equal(ph_acl_pattern_check("host*.lan", &why), -EINVAL);
	assert_int_equal(ph_acl_pattern_check("", &why), -EINVAL);
	assert_int_equal(ph_acl_add_pattern(&acl, true, "1.2.3.4/8*"), -EINVAL);
	assert_int_equal(acl.n, 0);
}

/* the `local` class: fixed ranges, and this host's addresses as getifaddrs tells them */
static void test_is_local(void **state)
{
	static const char *const local[] = {
		"127.0.0.1",       "127.255.255.254", "::1",     "::ffff:127.0.0.1",
		"169.254.169.254", "169.254.0.0",     "fe80::1", "fe80::abcd:1",
		"0.0.0.0",         "0.255.0.1",       "::",      "::ffff:169.254.169.254"};
	static const char *const remote[] = {
		"128.0.0.1", "126.255.255.255", "169.255.0.1", "169.253.0.1",    "1.0.0.0",
		"::2",       "fec0::1",         "2001:db8::1", "::ffff:8.8.8.8", "ff02::1"};
	struct ph_hostaddrs *h = NULL;
	struct ph_addr a;

	(void)state;
	for (size_t i = 0; i < PH_ARRAY_SIZE(local); i++) {
		a = addr(local[i]);
		if (!ph_addr_is_local(&a, NULL))
			print_error("%s is not local\n", local[i]);
		assert_true(ph_addr_is_local(&a, NULL));
	}
	for (size_t i = 0; i < PH_ARRAY_SIZE(remote); i++) {
		a = addr(remote[i]);
		if (ph_addr_is_local(&a, NULL))
			print_error("%s is local\n", remote[i]);
		assert_false(ph_addr_is_local(&a, NULL));
	}
	/* this host's addresses: each one is local with the table, and loopback is there */
	assert_int_equal(ph_hostaddrs_read(&h), 0);
	assert_non_null(h);
	for (unsigned i = 0; i < h->n; i++) {
		memset(&a, 0, sizeof(a));
		a.u.sa.sa_family = h->a[i].family;
		if (h->a[i].family == AF_INET) {
			memcpy(&a.u.in.sin_addr, h->a[i].net, 4);
			a.len = sizeof(a.u.in);
		} else {
			memcpy(&a.u.in6.sin6_addr, h->a[i].net, 16);
			a.len = sizeof(a.u.in6);
		}
		assert_true(ph_addr_is_local(&a, h));
	}
	{
		struct ph_cidr mine = cidr("198.51.100.9");
		struct ph_hostaddrs t = {.a = &mine, .n = 1};

		a = addr("198.51.100.9");
		assert_false(ph_addr_is_local(&a, NULL));
		assert_true(ph_addr_is_local(&a, &t));
		a = addr("::ffff:198.51.100.9");
		assert_true(ph_addr_is_local(&a, &t));
		a = addr("198.51.100.10");
		assert_false(ph_addr_is_local(&a, &t));
	}
	ph_hostaddrs_free(h);
	ph_hostaddrs_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_good),
		cmocka_unit_test(test_parse_bad),
		cmocka_unit_test(test_contains_v4),
		cmocka_unit_test(test_contains_v6),
		cmocka_unit_test(test_contains_families),
		cmocka_unit_test(test_mapped_rule),
		cmocka_unit_test(test_acl_empty),
		cmocka_unit_test(test_acl_patterns),
		cmocka_unit_test(test_acl_first_match_wins),
		cmocka_unit_test(test_acl_allow_list),
		cmocka_unit_test(test_acl_deny_list),
		cmocka_unit_test(test_acl_many_rules),
		cmocka_unit_test(test_is_local),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
