/*
 * Unit tests for the PROXY protocol (conn/proxyproto.h): what pinhole writes it reads
 * back, every prefix of a header asks for more, and malformed headers are refused.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>

#include "conn/proxyproto.h"
#include "core/addr.h"

static struct ph_addr addr(const char *ip, uint16_t port)
{
	struct ph_addr a;

	assert_int_equal(ph_addr_from_literal(ip, port, &a), 0);
	return a;
}

/* Parses buf whole; checks every shorter prefix asks for more. */
static int parse_all(const uint8_t *buf, size_t len, struct ph_proxy_info *info)
{
	const char *why;

	for (size_t k = 0; k < len; k++) {
		int r = ph_proxy_parse(buf, k, info, &why);

		if (r != -EAGAIN)
			print_error("prefix of %zu bytes gave %d (%s)\n", k, r, why ? why : "");
		assert_int_equal(r, -EAGAIN);
	}
	return ph_proxy_parse(buf, len, info, &why);
}

static void roundtrip(int version, const char *s, uint16_t sp, const char *d, uint16_t dp)
{
	struct ph_addr src = addr(s, sp), dst = addr(d, dp), us = src, ud = dst;
	uint8_t buf[PH_PROXY_MAX + 8];
	struct ph_proxy_info info;
	size_t n = ph_proxy_build(version, &src, &dst, buf);
	char a[PH_ADDR_STRLEN], b[PH_ADDR_STRLEN];

	assert_true(n > 0 && n <= PH_PROXY_MAX);
	memcpy(buf + n, "GET /", 5); /* the client's first bytes follow: not read */
	assert_int_equal(parse_all(buf, n, &info), (int)n);
	assert_int_equal(ph_proxy_parse(buf, n + 5, &info, &(const char *){NULL}), (int)n);
	assert_false(info.local);
	ph_addr_unmap(&us);
	ph_addr_unmap(&ud);
	assert_string_equal(ph_addr_fmt(&info.src, a, sizeof(a)), ph_addr_fmt(&us, b, sizeof(b)));
	assert_string_equal(ph_addr_fmt(&info.dst, a, sizeof(a)), ph_addr_fmt(&ud, b, sizeof(b)));
}

static void test_roundtrip(void **state)
{
	(void)state;
	for (int v = 1; v <= 2; v++) {
		roundtrip(v, "192.0.2.7", 51234, "198.51.100.1", 443);
		roundtrip(v, "2001:db8::7", 1, "2001:db8::1", 65535);
		roundtrip(v, "::ffff:10.0.0.1", 9, "::ffff:10.0.0.2", 80); /* mapped: as IPv4 */
	}
}

static void test_v1_text(void **state)
{
	struct ph_addr s = addr("10.1.2.3", 1000), d = addr("10.9.9.9", 80);
	uint8_t buf[PH_PROXY_MAX];
	size_t n = ph_proxy_build(1, &s, &d, buf);

	(void)state;
	assert_int_equal(n, strlen("PROXY TCP4 10.1.2.3 10.9.9.9 1000 80\r\n"));
	assert_memory_equal(buf, "PROXY TCP4 10.1.2.3 10.9.9.9 1000 80\r\n", n);
	/* families that differ: UNKNOWN (v1), LOCAL (v2) */
	d = addr("2001:db8::1", 80);
	assert_int_equal(ph_proxy_build(1, &s, &d, buf), 15);
	assert_memory_equal(buf, "PROXY UNKNOWN\r\n", 15);
	assert_int_equal(ph_proxy_build(2, &s, &d, buf), 16);
	assert_int_equal(buf[12], 0x20);
}

static void test_local_and_unknown(void **state)
{
	static const uint8_t v2local[] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51,
	                                  0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00, 0x00};
	static const uint8_t v2tlv[] = {
		0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54,
		0x0a, 0x21, 0x11, 0x00, 0x0f, 10,   0,    0,    1,    10,   0,
		0,    2,    0x30, 0x39, 0,    80,   0x04, 0x00, 0x00}; /* a NOOP TLV of 3 bytes */
	const char *u = "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nX";
	struct ph_proxy_info info;
	const char *why;

	(void)state;
	assert_int_equal(parse_all(v2local, sizeof(v2local), &info), 16);
	assert_true(info.local);
	assert_int_equal(ph_proxy_parse((const uint8_t *)u, strlen(u), &info, &why),
	                 (int)strlen(u) - 1);
	assert_true(info.local);
	assert_int_equal(parse_all(v2tlv, sizeof(v2tlv), &info), (int)sizeof(v2tlv));
	assert_false(info.local);
	assert_int_equal(ntohs(info.src.u.in.sin_port), 12345);
}

static void bad(const char *s, const char *want)
{
	struct ph_proxy_info info;
	const char *why;

	assert_int_equal(ph_proxy_parse((const uint8_t *)s, strlen(s), &info, &why), -EPROTO);
	if (strstr(why, want) == NULL)
		print_error("'%s': %s\n", s, why);
	assert_non_null(strstr(why, want));
}

static void test_bad(void **state)
{
	char longline[200];
	uint8_t v2[16] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51,
	                  0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 0x04};
	struct ph_proxy_info info;
	const char *why;

	(void)state;
	bad("GET / HTTP/1.1\r\n", "no PROXY header");
	bad("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "not PROXY TCP4");
	bad("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "not PROXY TCP4");
	bad("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "not PROXY TCP4");
	bad("PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "bad address");
	bad("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "bad address");
	bad("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad address or port");
	bad("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad address or port");
	bad("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "one space apart");
	bad("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF");
	memset(longline, 'a', sizeof(longline));
	memcpy(longline, "PROXY ", 6);
	longline[sizeof(longline) - 1] = '\0';
	bad(longline, "without CRLF");
	/* v2: a body too short for the family, another version, too long */
	assert_int_equal(ph_proxy_parse(v2, 16, &info, &why), -EAGAIN);
	{
		uint8_t b[20];

		memcpy(b, v2, 16);
		memset(b + 16, 0, 4);
		assert_int_equal(ph_proxy_parse(b, 20, &info, &why), -EPROTO);
		b[12] = 0x31;
		assert_int_equal(ph_proxy_parse(b, 20, &info, &why), -EPROTO);
		b[12] = 0x21;
		b[14] = 0xff;
		assert_int_equal(ph_proxy_parse(b, 20, &info, &why), -EPROTO);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_v1_text),
		cmocka_unit_test(test_local_and_unknown),
		cmocka_unit_test(test_bad),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
