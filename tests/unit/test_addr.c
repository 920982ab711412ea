/*
 * Unit tests for the address grammar (core/addr.h) and the number and duration parsers of
 * core/util.h that it and the command line rely on.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include <cmocka.h>

#include "core/addr.h"
#include "core/util.h"

/* Parses s, which must succeed; returns the result for further checks. */
static struct ph_hostport parse_ok(const char *s)
{
	struct ph_hostport hp;
	const char *why = "unset";
	int err = ph_hostport_parse(s, &hp, &why);

	if (err != 0)
		print_error("'%s' was refused: %s\n", s, why != NULL ? why : "(null)");
	assert_int_equal(err, 0);
	assert_null(why);
	assert_true(hp.port >= 1);
	assert_true(strlen(hp.host) < PH_HOST_MAX);
	return hp;
}

static void test_wildcard(void **state)
{
	struct ph_hostport hp = parse_ok(":8080");

	(void)state;
	assert_string_equal(hp.host, "");
	assert_int_equal(hp.port, 8080);
	assert_true(hp.wildcard);
	assert_false(hp.is_name);
	assert_int_equal(hp.proto, PH_PROTO_TCP);
	/* the caller may bind it as is: [::]:8080 */
	assert_int_equal(hp.addr.u.sa.sa_family, AF_INET6);
	assert_true(IN6_IS_ADDR_UNSPECIFIED(&hp.addr.u.in6.sin6_addr));
	assert_int_equal(ph_addr_port(&hp.addr), 8080);
	assert_int_equal(hp.addr.len, sizeof(struct sockaddr_in6));
}

static void test_ipv4(void **state)
{
	struct ph_hostport hp = parse_ok("0.0.0.0:80");

	(void)state;
	assert_string_equal(hp.host, "0.0.0.0");
	assert_false(hp.wildcard);
	assert_false(hp.is_name);
	assert_int_equal(hp.addr.u.sa.sa_family, AF_INET);
	assert_int_equal(hp.addr.u.in.sin_addr.s_addr, htonl(INADDR_ANY));
	assert_int_equal(hp.addr.len, sizeof(struct sockaddr_in));

	hp = parse_ok("127.0.0.1:8080");
	assert_string_equal(hp.host, "127.0.0.1");
	assert_int_equal(hp.port, 8080);
	assert_int_equal(hp.addr.u.sa.sa_family, AF_INET);
	assert_int_equal(hp.addr.u.in.sin_addr.s_addr, htonl(INADDR_LOOPBACK));
	assert_int_equal(hp.addr.u.in.sin_port, htons(8080));
}

static void test_ipv6(void **state)
{
	struct ph_hostport hp = parse_ok("[::]:80");

	(void)state;
	assert_string_equal(hp.host, "::");
	assert_false(hp.wildcard); /* written out: IPv6 only, unlike :80 */
	assert_false(hp.is_name);
	assert_int_equal(hp.addr.u.sa.sa_family, AF_INET6);
	assert_true(IN6_IS_ADDR_UNSPECIFIED(&hp.addr.u.in6.sin6_addr));

	hp = parse_ok("[::1]:443");
	assert_string_equal(hp.host, "::1");
	assert_int_equal(hp.port, 443);
	assert_int_equal(hp.addr.u.sa.sa_family, AF_INET6);
	assert_true(IN6_IS_ADDR_LOOPBACK(&hp.addr.u.in6.sin6_addr));
	assert_int_equal(hp.addr.u.in6.sin6_port, htons(443));
	assert_int_equal(hp.addr.u.in6.sin6_scope_id, 0);
	assert_int_equal(hp.addr.len, sizeof(struct sockaddr_in6));
}

static void test_ipv6_scope(void **state)
{
	unsigned lo = if_nametoindex("lo");
	struct ph_hostport hp;

	(void)state;
	if (lo == 0)
		skip(); /* no loopback interface in this namespace */
	hp = parse_ok("[fe80::1%lo]:80");
	assert_string_equal(hp.host, "fe80::1%lo");
	assert_int_equal(hp.addr.u.sa.sa_family, AF_INET6);
	assert_true(IN6_IS_ADDR_LINKLOCAL(&hp.addr.u.in6.sin6_addr));
	assert_int_equal(hp.addr.u.in6.sin6_scope_id, lo);

	/* a number is taken as the interface index */
	hp = parse_ok("[fe80::1%7]:80");
	assert_int_equal(hp.addr.u.in6.sin6_scope_id, 7);
}

static void test_schemes(void **state)
{
	struct ph_hostport hp = parse_ok("tcp://h:1");

	(void)state;
	assert_int_equal(hp.proto, PH_PROTO_TCP);
	assert_string_equal(hp.host, "h");
	assert_int_equal(hp.port, 1);
	assert_true(hp.is_name);

	hp = parse_ok("udp://:53");
	assert_int_equal(hp.proto, PH_PROTO_UDP);
	assert_true(hp.wildcard);
	assert_int_equal(hp.port, 53);

	hp = parse_ok("tcp+udp://:7");
	assert_int_equal(hp.proto, PH_PROTO_TCP | PH_PROTO_UDP);
	assert_true(hp.wildcard);
	assert_int_equal(hp.port, 7);

	hp = parse_ok("udp://[::1]:53");
	assert_int_equal(hp.proto, PH_PROTO_UDP);
	assert_int_equal(hp.addr.u.sa.sa_family, AF_INET6);
}

static void test_names(void **state)
{
	char name[300], in[310];
	struct ph_hostport hp = parse_ok("example.com:80");

	(void)state;
	assert_true(hp.is_name);
	assert_false(hp.wildcard);
	assert_string_equal(hp.host, "example.com");
	assert_int_equal(hp.port, 80);

	hp = parse_ok("db_1.internal-lan.:5432"); /* underscore, hyphen, trailing dot */
	assert_true(hp.is_name);

	/* 253 characters in labels of 63: the longest DNS name */
	memset(name, 'a', 253);
	name[63] = name[127] = name[191] = '.';
	name[253] = '\0';
	snprintf(in, sizeof(in), "%s:80", name);
	hp = parse_ok(in);
	assert_true(hp.is_name);
	assert_int_equal(strlen(hp.host), 253);
	assert_string_equal(hp.host, name);
}

static void test_port_bounds(void **state)
{
	struct ph_hostport hp = parse_ok(":65535");

	(void)state;
	assert_int_equal(hp.port, 65535);
	hp = parse_ok("127.0.0.1:1");
	assert_int_equal(hp.port, 1);
	hp = parse_ok("[::1]:00080"); /* leading zeros are still decimal */
	assert_int_equal(hp.port, 80);
}

struct bad_case {
	const char *in;
	const char *why;
};

static void test_bad_forms(void **state)
{
	static char long_name[300];
	const struct bad_case cases[] = {
		{"1.2.3:80", "not an IPv4 address"},
		{"256.1.1.1:80", "not an IPv4 address"},
		{"1.2.3.4.5:80", "not an IPv4 address"},
		{"[::1:80", "missing ']' after an IPv6 address"},
		{"::1:80", "an IPv6 address must be written in brackets: [::1]:PORT"},
		{"fe80::1%lo:80", "an IPv6 address must be written in brackets: [::1]:PORT"},
		{"[::1]", "expected ':PORT' after ']'"},
		{"[::1]80", "expected ':PORT' after ']'"},
		{"[::1]:", "missing port"},
		{"[]:80", "empty IPv6 address"},
		{"[::g]:80", "not an IPv6 address"},
		{"[fe80::1%no-such-if0]:80", "not an IPv6 address"},
		{"[fe80::1%0]:80", "not an IPv6 address"},
		{"[fe80::1%]:80", "not an IPv6 address"},
		{"[1.2.3.4]:80", "brackets are for IPv6 addresses only"},
		{"[example.com]:80", "not an IPv6 address"},
		{"host:", "missing port"},
		{":", "missing port"},
		{"host", "expected HOST:PORT or :PORT"},
		{"", "expected HOST:PORT or :PORT"},
		{":0", "port must be 1-65535"},
		{":65536", "port must be 1-65535"},
		{":99999999999999999999", "port must be 1-65535"},
		{":-1", "port is not a number"},
		{":+80", "port is not a number"},
		{": 80", "port is not a number"},
		{":80 ", "port is not a number"},
		{":8o", "port is not a number"},
		{":0x50", "port is not a number"},
		{"abc:xyz", "port is not a number"},
		{"ftp://x:1", "unknown scheme (tcp://, udp:// or tcp+udp://)"},
		{"TCP://x:1", "unknown scheme (tcp://, udp:// or tcp+udp://)"},
		{"a..b:1", "not a valid host name or IP address"},
		{".a:1", "not a valid host name or IP address"},
		{"a b:1", "not a valid host name or IP address"},
		{"h\xc3\xa9:1", "not a valid host name or IP address"},
		{long_name, "host name too long"},
	};

	(void)state;
	/* 254 characters: one past the longest DNS name, and past PH_HOST_MAX - 1 */
	memset(long_name, 'a', 254);
	strcpy(long_name + 254, ":80");

	for (size_t i = 0; i < PH_ARRAY_SIZE(cases); i++) {
		struct ph_hostport hp;
		const char *why = NULL;
		int err = ph_hostport_parse(cases[i].in, &hp, &why);

		if (err != -EINVAL || why == NULL || strcmp(why, cases[i].why) != 0)
			print_error("'%.40s': got %d '%s', expected -EINVAL '%s'\n", cases[i].in,
			            err, why != NULL ? why : "(null)", cases[i].why);
		assert_int_equal(err, -EINVAL);
		assert_non_null(why);
		assert_string_equal(why, cases[i].why);
	}
}

static void test_label_too_long(void **state)
{
	char in[80];
	struct ph_hostport hp;
	const char *why;

	(void)state;
	memset(in, 'a', 64);
	strcpy(in + 64, ".b:1");
	assert_int_equal(ph_hostport_parse(in, &hp, &why), -EINVAL);
	assert_string_equal(why, "not a valid host name or IP address");
	memset(in, 'a', 63); /* 63 is the limit */
	strcpy(in + 63, ".b:1");
	assert_int_equal(ph_hostport_parse(in, &hp, &why), 0);
	assert_true(hp.is_name);
}

/* parse -> fmt gives want -> parse gives the same address again */
static void check_round_trip(const char *in, const char *want)
{
	char buf[PH_ADDR_STRLEN];
	struct ph_hostport a = parse_ok(in), b;

	assert_false(a.is_name);
	assert_ptr_equal(ph_addr_fmt(&a.addr, buf, sizeof(buf)), buf);
	assert_string_equal(buf, want);
	b = parse_ok(buf);
	assert_false(b.is_name);
	assert_true(ph_addr_equal(&a.addr, &b.addr));
	assert_int_equal(a.addr.len, b.addr.len);
}

static void test_fmt_round_trip(void **state)
{
	(void)state;
	check_round_trip("127.0.0.1:8080", "127.0.0.1:8080");
	check_round_trip("0.0.0.0:1", "0.0.0.0:1");
	check_round_trip("255.255.255.255:65535", "255.255.255.255:65535");
	check_round_trip("[::1]:443", "[::1]:443");
	check_round_trip("[2001:DB8:0:0::1]:80", "[2001:db8::1]:80");
	check_round_trip("[::ffff:1.2.3.4]:5", "[::ffff:1.2.3.4]:5");
	check_round_trip("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
	                 "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
	check_round_trip(":8080", "[::]:8080");
	check_round_trip("tcp://10.1.2.3:22", "10.1.2.3:22");
}

/*
 * A link-local address is only meaningful with its interface: ph_addr_fmt must write the
 * scope so a log line names the right peer and the text parses back to the same address.
 */
static void test_fmt_keeps_scope(void **state)
{
	char buf[PH_ADDR_STRLEN];
	struct ph_hostport a = parse_ok("[fe80::1%7]:80"), b;

	(void)state;
	ph_addr_fmt(&a.addr, buf, sizeof(buf));
	if (strchr(buf, '%') == NULL)
		print_error("ph_addr_fmt dropped the scope of [fe80::1%%7]:80: '%s'\n", buf);
	assert_non_null(strchr(buf, '%'));
	b = parse_ok(buf);
	assert_true(ph_addr_equal(&a.addr, &b.addr));
}

static void test_fmt_small_buffer(void **state)
{
	struct ph_hostport hp = parse_ok("[2001:db8::1]:8080");
	char buf[8];
	struct ph_addr none;

	(void)state;
	memset(buf, 'x', sizeof(buf));
	ph_addr_fmt(&hp.addr, buf, sizeof(buf));
	assert_string_equal(buf, "[2001:d"); /* truncated, still terminated */

	memset(&none, 0, sizeof(none));
	none.u.sa.sa_family = AF_UNIX;
	assert_string_equal(ph_addr_fmt(&none, buf, sizeof(buf)), "?");
}

static void test_unmap(void **state)
{
	struct ph_hostport hp = parse_ok("[::ffff:10.1.2.3]:4242");
	struct ph_addr a = hp.addr, want;

	(void)state;
	ph_addr_unmap(&a);
	assert_int_equal(a.u.sa.sa_family, AF_INET);
	assert_int_equal(a.len, sizeof(struct sockaddr_in));
	assert_int_equal(ph_addr_port(&a), 4242);
	assert_int_equal(ph_addr_from_literal("10.1.2.3", 4242, &want), 0);
	assert_true(ph_addr_equal(&a, &want));

	/* plain IPv6 and IPv4 are left alone */
	hp = parse_ok("[::1]:5");
	a = hp.addr;
	ph_addr_unmap(&a);
	assert_int_equal(a.u.sa.sa_family, AF_INET6);
	assert_true(ph_addr_equal(&a, &hp.addr));
	hp = parse_ok("[::10.1.2.3]:5"); /* IPv4-compatible, not mapped */
	a = hp.addr;
	ph_addr_unmap(&a);
	assert_int_equal(a.u.sa.sa_family, AF_INET6);
	hp = parse_ok("10.1.2.3:5");
	a = hp.addr;
	ph_addr_unmap(&a);
	assert_true(ph_addr_equal(&a, &hp.addr));
}

static void test_equal(void **state)
{
	struct ph_addr a, b;

	(void)state;
	assert_int_equal(ph_addr_from_literal("192.0.2.1", 80, &a), 0);
	assert_int_equal(ph_addr_from_literal("192.0.2.1", 80, &b), 0);
	assert_true(ph_addr_equal(&a, &b));
	ph_addr_set_port(&b, 81);
	assert_int_equal(ph_addr_port(&b), 81);
	assert_false(ph_addr_equal(&a, &b));
	assert_int_equal(ph_addr_from_literal("192.0.2.2", 80, &b), 0);
	assert_false(ph_addr_equal(&a, &b));
	/* the same IPv4 address, mapped, is another family */
	assert_int_equal(ph_addr_from_literal("::ffff:192.0.2.1", 80, &b), 0);
	assert_false(ph_addr_equal(&a, &b));
	assert_false(ph_addr_equal(&b, &a));

	assert_int_equal(ph_addr_from_literal("fe80::1", 80, &a), 0);
	assert_int_equal(ph_addr_from_literal("fe80::1", 80, &b), 0);
	assert_true(ph_addr_equal(&a, &b));
	ph_addr_set_port(&b, 8080);
	assert_int_equal(ph_addr_port(&b), 8080);
	assert_false(ph_addr_equal(&a, &b));
	assert_int_equal(ph_addr_from_literal("fe80::1%3", 80, &b), 0);
	assert_false(ph_addr_equal(&a, &b)); /* another interface */
	assert_int_equal(ph_addr_from_literal("fe80::2", 80, &b), 0);
	assert_false(ph_addr_equal(&a, &b));
}

static void test_from_literal_and_sa(void **state)
{
	struct sockaddr_un un;
	struct sockaddr_in in;
	struct ph_addr a, b;

	(void)state;
	assert_int_equal(ph_addr_from_literal("example.com", 1, &a), -EINVAL);
	assert_int_equal(ph_addr_from_literal("", 1, &a), -EINVAL);
	assert_int_equal(ph_addr_from_literal("1.2.3.4", 1, &a), 0);

	memset(&in, 0, sizeof(in));
	in.sin_family = AF_INET;
	in.sin_port = htons(1);
	in.sin_addr.s_addr = inet_addr("1.2.3.4");
	assert_int_equal(ph_addr_from_sa((struct sockaddr *)&in, sizeof(in), &b), 0);
	assert_true(ph_addr_equal(&a, &b));
	assert_int_equal(ph_addr_from_sa((struct sockaddr *)&in, sizeof(in) - 1, &b),
	                 -EAFNOSUPPORT);
	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	assert_int_equal(ph_addr_from_sa((struct sockaddr *)&un, sizeof(un), &b), -EAFNOSUPPORT);
}

static void test_parse_duration(void **state)
{
	static const struct {
		const char *in;
		uint64_t ms;
	} good[] = {
		{"5", 5000},
		{"500ms", 500},
		{"2m", 120000},
		{"1h", 3600000},
		{"0", 0},
		{"5s", 5000},
		{"0ms", 0},
		{"007s", 7000},
		{"1000000000ms", 1000000000ull},
		{"1000000000h", 3600000000000000ull},
	};
	static const char *const bad[] = {
		"",     "5x",  "-1", "1.5s", " 5", "5 ",   "99999999999999999999",
		"ms",   "5 s", "5S", "5sec", "+5", "5ms5", "1000000001",
		"0x10",
	};
	uint64_t ms;

	(void)state;
	for (size_t i = 0; i < PH_ARRAY_SIZE(good); i++) {
		ms = 12345;
		if (ph_parse_duration(good[i].in, &ms) != 0)
			print_error("'%s' was refused\n", good[i].in);
		assert_int_equal(ph_parse_duration(good[i].in, &ms), 0);
		assert_int_equal(ms, good[i].ms);
	}
	for (size_t i = 0; i < PH_ARRAY_SIZE(bad); i++) {
		ms = 12345;
		if (ph_parse_duration(bad[i], &ms) != -EINVAL)
			print_error("'%s' was accepted\n", bad[i]);
		assert_int_equal(ph_parse_duration(bad[i], &ms), -EINVAL);
		assert_int_equal(ms, 12345); /* untouched on failure */
	}
	assert_int_equal(ph_parse_duration(NULL, &ms), -EINVAL);
}

static void test_parse_uint(void **state)
{
	unsigned long long v;

	(void)state;
	assert_int_equal(ph_parse_uint("5", 0, 10, &v), 0);
	assert_int_equal(v, 5);
	assert_int_equal(ph_parse_uint("0", 0, 10, &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(ph_parse_uint("65535", 1, 65535, &v), 0);
	assert_int_equal(v, 65535);
	assert_int_equal(ph_parse_uint("18446744073709551615", 0, ~0ull, &v), 0);
	assert_true(v == ~0ull);

	v = 77;
	assert_int_equal(ph_parse_uint("", 0, 10, &v), -EINVAL);
	assert_int_equal(ph_parse_uint("5x", 0, 10, &v), -EINVAL);
	assert_int_equal(ph_parse_uint("-1", 0, 10, &v), -EINVAL);
	assert_int_equal(ph_parse_uint("+1", 0, 10, &v), -EINVAL);
	assert_int_equal(ph_parse_uint(" 5", 0, 10, &v), -EINVAL);
	assert_int_equal(ph_parse_uint("5 ", 0, 10, &v), -EINVAL);
	assert_int_equal(ph_parse_uint("1.5", 0, 10, &v), -EINVAL);
	assert_int_equal(ph_parse_uint(NULL, 0, 10, &v), -EINVAL);
	assert_int_equal(ph_parse_uint("99999999999999999999", 0, ~0ull, &v), -ERANGE);
	assert_int_equal(ph_parse_uint("18446744073709551616", 0, ~0ull, &v), -ERANGE);
	assert_int_equal(ph_parse_uint("11", 0, 10, &v), -ERANGE);
	assert_int_equal(ph_parse_uint("0", 1, 10, &v), -ERANGE);
	assert_int_equal(v, 77); /* untouched on failure */
}

static void test_hostport_fmt(void **state)
{
	char buf[PH_HOST_MAX + 8];

	(void)state;
	assert_string_equal(ph_hostport_fmt("::1", 8080, buf, sizeof(buf)), "[::1]:8080");
	assert_string_equal(ph_hostport_fmt("fe80::1%eth0", 1, buf, sizeof(buf)),
	                    "[fe80::1%eth0]:1");
	assert_string_equal(ph_hostport_fmt("10.0.0.5", 80, buf, sizeof(buf)), "10.0.0.5:80");
	assert_string_equal(ph_hostport_fmt("example.org", 443, buf, sizeof(buf)),
	                    "example.org:443");
	assert_string_equal(ph_hostport_fmt("", 7835, buf, sizeof(buf)), ":7835");
}

static void test_strerror_of_ours(void **state)
{
	(void)state;
	assert_string_equal(ph_strerror(-PH_ENONAME), "no such name");
	assert_string_equal(ph_strerror(-PH_ENOADDR), "no address for the name");
	assert_string_equal(ph_strerror(-PH_EDNSFAIL), "DNS server failure");
	assert_string_equal(ph_strerror(-PH_EDNSTIMEOUT), "DNS timeout");
	assert_string_equal(ph_strerror(-ECONNREFUSED), strerror(ECONNREFUSED));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_wildcard),
		cmocka_unit_test(test_ipv4),
		cmocka_unit_test(test_ipv6),
		cmocka_unit_test(test_ipv6_scope),
		cmocka_unit_test(test_schemes),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_port_bounds),
		cmocka_unit_test(test_bad_forms),
		cmocka_unit_test(test_label_too_long),
		cmocka_unit_test(test_fmt_round_trip),
		cmocka_unit_test(test_fmt_keeps_scope),
		cmocka_unit_test(test_fmt_small_buffer),
		cmocka_unit_test(test_unmap),
		cmocka_unit_test(test_equal),
		cmocka_unit_test(test_from_literal_and_sa),
		cmocka_unit_test(test_parse_duration),
		cmocka_unit_test(test_parse_uint),
		cmocka_unit_test(test_hostport_fmt),
		cmocka_unit_test(test_strerror_of_ours),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
