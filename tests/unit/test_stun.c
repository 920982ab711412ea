/*
 * Unit tests for core/stun.c: Binding requests parsed (RFC 8489 and RFC 3489's classic
 * form), answers built and read back, malformed datagrams refused.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/stun.h"

static const uint8_t req[20] = {0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1,  2,
                                3,    4,    5,    6,    7,    8,    9,    10,   11, 12};

static void test_binding_answer_carries_the_address(void **state)
{
	struct ph_stun_msg m;
	struct ph_addr a, back;
	uint8_t out[PH_STUN_RESP_MAX];
	const char *why;
	size_t n;

	(void)state;
	assert_int_equal(ph_stun_parse(req, sizeof(req), &m, &why), 0);
	assert_false(m.classic);
	assert_int_equal(ph_addr_from_literal("203.0.113.7", 40000, &a), 0);
	n = ph_stun_answer(&m, &a, out);
	assert_true(n > 20 && n <= PH_STUN_RESP_MAX && n % 4 == 0);
	assert_int_equal(out[0] << 8 | out[1], 0x0101); /* Binding success */
	assert_int_equal((size_t)(out[2] << 8 | out[3]) + 20, n);
	assert_int_equal(ph_stun_mapped(out, n, req + 8, &back), 0);
	assert_true(ph_addr_equal(&a, &back));
	/* another transaction's answer is not taken */
	assert_int_equal(ph_stun_mapped(out, n, req + 4, &back), -EPROTO);
	/* IPv6, and an IPv4-mapped one answered as IPv4 */
	assert_int_equal(ph_addr_from_literal("2001:db8::1", 3478, &a), 0);
	n = ph_stun_answer(&m, &a, out);
	assert_int_equal(ph_stun_mapped(out, n, req + 8, &back), 0);
	assert_true(ph_addr_equal(&a, &back));
	assert_int_equal(ph_addr_from_literal("::ffff:192.0.2.1", 5, &a), 0);
	n = ph_stun_answer(&m, &a, out);
	assert_int_equal(ph_stun_mapped(out, n, req + 8, &back), 0);
	assert_int_equal(back.u.sa.sa_family, AF_INET);
}

static void test_classic_and_unknown(void **state)
{
	uint8_t b[32], out[PH_STUN_RESP_MAX];
	struct ph_stun_msg m;
	struct ph_addr a;
	const char *why;
	size_t n;

	(void)state;
	assert_int_equal(ph_addr_from_literal("198.51.100.2", 1234, &a), 0);
	memcpy(b, req, 20);
	b[4] = 0; /* no cookie: RFC 3489, MAPPED-ADDRESS alone, the 16-byte id echoed */
	assert_int_equal(ph_stun_parse(b, 20, &m, &why), 0);
	assert_true(m.classic);
	n = ph_stun_answer(&m, &a, out);
	assert_memory_equal(out + 4, b + 4, 16);
	assert_int_equal(out[20] << 8 | out[21], 0x0001);
	/* a comprehension-required attribute we do not know: 420 naming it */
	memcpy(b, req, 20);
	b[3] = 8;
	memcpy(b + 20, "\x00\x24\x00\x04\x01\x02\x03\x04", 8); /* PRIORITY (ICE) */
	assert_int_equal(ph_stun_parse(b, 28, &m, &why), 0);
	assert_int_equal(m.nunknown, 1);
	n = ph_stun_answer(&m, &a, out);
	assert_int_equal(out[0] << 8 | out[1], 0x0111);
	assert_true(memmem(out, n, "\x00\x0a\x00\x02\x00\x24", 6) != NULL);
	/* SOFTWARE is understood (0x8022 is optional anyway) */
	memcpy(b + 20, "\x80\x22\x00\x02xy\x00\x00", 8);
	assert_int_equal(ph_stun_parse(b, 28, &m, &why), 0);
	assert_int_equal(m.nunknown, 0);
}

static void test_malformed_is_dropped(void **state)
{
	uint8_t b[32];
	struct ph_stun_msg m;
	const char *why = NULL;

	(void)state;
	assert_int_equal(ph_stun_parse(req, 19, &m, &why), -EPROTO); /* short */
	assert_non_null(why);
	memcpy(b, req, 20);
	b[3] = 4; /* a length past the datagram */
	assert_int_equal(ph_stun_parse(b, 20, &m, &why), -EPROTO);
	b[3] = 2; /* not a multiple of 4 */
	assert_int_equal(ph_stun_parse(b, 22, &m, &why), -EPROTO);
	memcpy(b, req, 20);
	b[1] = 0x01;
	b[0] = 0x01; /* a success response: no request */
	assert_int_equal(ph_stun_parse(b, 20, &m, &why), -EPROTO);
	memcpy(b, req, 20);
	b[0] = 0x40; /* the first two bits set: not STUN */
	assert_int_equal(ph_stun_parse(b, 20, &m, &why), -EPROTO);
	memcpy(b, req, 20);
	b[3] = 8;
	memcpy(b + 20, "\x80\x22\x00\x09xyzw", 8); /* an attribute past the end */
	assert_int_equal(ph_stun_parse(b, 28, &m, &why), -EPROTO);
	/* a request of another method gets no answer */
	memcpy(b, req, 20);
	b[1] = 0x02;
	assert_int_equal(ph_stun_parse(b, 20, &m, &why), 0);
	{
		struct ph_addr a;
		uint8_t out[PH_STUN_RESP_MAX];

		assert_int_equal(ph_addr_from_literal("192.0.2.1", 1, &a), 0);
		assert_int_equal(ph_stun_answer(&m, &a, out), 0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_binding_answer_carries_the_address),
		cmocka_unit_test(test_classic_and_unknown),
		cmocka_unit_test(test_malformed_is_dropped),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
