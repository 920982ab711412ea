/*
 * Unit tests for portmap/upnp.h's ph_upnp_url_parse, the rule that decides which URLs a UPnP
 * device may send pinhole to (its description, its control URLs): only http:// to an IPv4
 * address written in canonical dotted decimal, any port, then a path; everything else
 * (names, other schemes, octal or short forms, user info, control bytes) is refused with a
 * reason.
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

#include "core/addr.h"
#include "portmap/upnp.h"

static void ok(const char *url, const char *ip, uint16_t port)
{
	struct ph_addr a, want;
	const char *why = "unset";

	assert_int_equal(ph_upnp_url_parse(url, &a, &why), 0);
	assert_null(why);
	assert_int_equal(ph_addr_from_literal(ip, port, &want), 0);
	assert_true(ph_addr_equal(&a, &want));
}

static void bad(const char *url, const char *reason)
{
	struct ph_addr a;
	const char *why = NULL;

	memset(&a, 0xee, sizeof(a));
	assert_int_equal(ph_upnp_url_parse(url, &a, &why), -EPROTO);
	assert_non_null(why);
	assert_non_null(strstr(why, reason));
	assert_int_equal(a.u.sa.sa_family, 0); /* cleared: nothing half-parsed is left */
}

static void test_accepted(void **state)
{
	(void)state;
	ok("http://10.77.1.1:5000/rootDesc.xml", "10.77.1.1", 5000);
	ok("http://192.168.1.1/ctl/IPConn", "192.168.1.1", 80);
	ok("http://192.168.1.1", "192.168.1.1", 80);
	ok("http://192.168.1.1:1/", "192.168.1.1", 1);
	ok("http://192.168.1.1:65535/a?b=c#d", "192.168.1.1", 65535);
	ok("http://192.168.1.1:00080/", "192.168.1.1", 80); /* five digits */
}

static void test_refused(void **state)
{
	(void)state;
	bad("", "not an http:// URL");
	bad("https://192.168.1.1/", "not an http:// URL");
	bad("HTTP://192.168.1.1/", "not an http:// URL");
	bad("file:///etc/passwd", "not an http:// URL");
	bad("//192.168.1.1/", "not an http:// URL");
	bad("http://router.lan:5000/", "not an IPv4 address");
	bad("http://localhost/", "not an IPv4 address");
	bad("http://[fe80::1]:5000/", "not an IPv4 address");
	bad("http://:5000/", "not an IPv4 address");
	bad("http:///x", "not an IPv4 address");
	bad("http://010.77.1.1/", "not an IPv4 address"); /* octal to inet_aton */
	bad("http://10.77.257/", "not an IPv4 address");  /* a short form */
	bad("http://0x0a.77.1.1/", "not an IPv4 address");
	bad("http://167772161/", "not an IPv4 address");
	bad("http://10.77.1.1.evil.example/", "not an IPv4 address");
	bad("http://10.77.1.1:5000@127.0.0.1/", "not followed by a path");
	bad("http://user@10.77.1.1/", "not an IPv4 address");
	bad("http://10.77.1.1:/", "port is not 1-65535");
	bad("http://10.77.1.1:0/", "port is not 1-65535");
	bad("http://10.77.1.1:65536/", "port is not 1-65535");
	bad("http://10.77.1.1:000080/", "port is not 1-65535");
	bad("http://10.77.1.1:+80/", "port is not 1-65535");
	bad("http://10.77.1.1:80x/", "not followed by a path");
	bad("http://10.77.1.1?/", "not an IPv4 address");
	bad("http://10.77.1.1/a b", "spaces or control characters");
	bad("http://10.77.1.1/\r\nHost: x", "spaces or control characters");
	bad("http://10.77.1.1/\x1b[31m", "spaces or control characters");
	bad("http://10.77.1.1/\x7f", "spaces or control characters");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_accepted),
		cmocka_unit_test(test_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
