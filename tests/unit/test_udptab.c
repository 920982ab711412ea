/*
 * Unit tests for the UDP session table (conn/udptab.h): lookups by exact key, removal
 * from a chain's middle, growth with every node still found, least-recently-used order.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "conn/udptab.h"
#include "core/addr.h"

#define NN 5000

static void key_v4(struct ph_udp_key *k, unsigned ip, unsigned port)
{
	char s[32];

	memset(k, 0, sizeof(*k));
	snprintf(s, sizeof(s), "10.%u.%u.%u", (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
	assert_int_equal(ph_addr_from_literal(s, (uint16_t)port, &k->peer), 0);
}

static void test_find_add_del(void **state)
{
	struct ph_udptab t;
	struct ph_udp_node *n = calloc(NN, sizeof(*n));
	struct ph_udp_key k;

	(void)state;
	assert_non_null(n);
	assert_int_equal(ph_udptab_init(&t), 0);
	for (unsigned i = 0; i < NN; i++) {
		key_v4(&k, i / 7, 1000 + i % 7);
		assert_null(ph_udptab_find(&t, &k));
		ph_udptab_add(&t, &n[i], &k, i);
	}
	assert_int_equal(t.n, NN);
	assert_true(t.nb >= NN); /* grew: a chain is one node long on average */
	for (unsigned i = 0; i < NN; i++) {
		key_v4(&k, i / 7, 1000 + i % 7);
		assert_ptr_equal(ph_udptab_find(&t, &k), &n[i]);
	}
	/* the same address with another port, or a local address, is another key */
	key_v4(&k, 0, 999);
	assert_null(ph_udptab_find(&t, &k));
	key_v4(&k, 0, 1000);
	assert_int_equal(ph_addr_from_literal("127.0.0.1", 0, &k.local), 0);
	assert_null(ph_udptab_find(&t, &k));
	/* every third goes; the others stay found */
	for (unsigned i = 0; i < NN; i += 3)
		ph_udptab_del(&t, &n[i]);
	for (unsigned i = 0; i < NN; i++) {
		key_v4(&k, i / 7, 1000 + i % 7);
		if (i % 3 == 0)
			assert_null(ph_udptab_find(&t, &k));
		else
			assert_ptr_equal(ph_udptab_find(&t, &k), &n[i]);
	}
	assert_int_equal(t.n, NN - (NN + 2) / 3);
	ph_udptab_free(&t);
	free(n);
}

static void test_lru(void **state)
{
	struct ph_udptab t;
	struct ph_udp_node n[4];
	struct ph_udp_key k;

	(void)state;
	memset(n, 0, sizeof(n));
	assert_int_equal(ph_udptab_init(&t), 0);
	assert_null(ph_udptab_oldest(&t));
	for (unsigned i = 0; i < 4; i++) {
		key_v4(&k, i, 53);
		ph_udptab_add(&t, &n[i], &k, 100 + i);
	}
	assert_ptr_equal(ph_udptab_oldest(&t), &n[0]);
	ph_udptab_touch(&t, &n[0], 200);
	assert_ptr_equal(ph_udptab_oldest(&t), &n[1]);
	assert_int_equal(n[0].last, 200);
	ph_udptab_del(&t, &n[1]);
	assert_ptr_equal(ph_udptab_oldest(&t), &n[2]);
	ph_udptab_del(&t, &n[2]);
	ph_udptab_del(&t, &n[3]);
	assert_ptr_equal(ph_udptab_oldest(&t), &n[0]);
	ph_udptab_del(&t, &n[0]);
	assert_null(ph_udptab_oldest(&t));
	assert_int_equal(t.n, 0);
	ph_udptab_free(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_find_add_del),
		cmocka_unit_test(test_lru),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
