/*
 * Unit tests for the counted failure lines (core/logagg.h): kinds kept apart, the first
 * example kept, a full table counted rather than grown, tables merged, -v not counted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/log.h"
#include "core/logagg.h"

static int setup(void **state)
{
	static struct ph_logagg a;

	ph_logagg_init(&a);
	ph_logagg_bind(&a);
	ph_log_level = PH_LOG_INFO;
	*state = &a;
	return 0;
}

static int teardown(void **state)
{
	ph_logagg_bind(NULL);
	ph_logagg_destroy(*state);
	ph_log_level = PH_LOG_INFO;
	return 0;
}

static void test_kinds_and_first_example(void **state)
{
	struct ph_logagg *a = *state;

	for (int i = 0; i < 500; i++)
		ph_logagg_note("forward :80", "connections", "client reset", "c%d reset", i + 1);
	ph_logagg_note("forward :80", "connections", "no target reachable", "c%d refused", 501);
	ph_logagg_note("forward :81", "connections", "client reset", "c%d reset", 502);
	assert_int_equal(a->n, 3);
	assert_string_equal(a->ent[0].label, "forward :80");
	assert_string_equal(a->ent[0].what, "connections");
	assert_string_equal(a->ent[0].cause, "client reset");
	assert_int_equal(a->ent[0].count, 500);
	assert_string_equal(a->ent[0].first, "c1 reset");
	assert_int_equal(a->ent[1].count, 1);
	assert_string_equal(a->ent[1].first, "c501 refused");
	assert_int_equal(a->ent[2].count, 1);
	assert_int_equal(a->lost, 0);
	assert_int_equal(ph_logagg_report(a, 10000), 3);
	assert_int_equal(a->n, 0); /* emptied: the next interval starts from nothing */
	assert_int_equal(ph_logagg_report(a, 10000), 0);
}

static void test_full_table_counts_the_rest(void **state)
{
	struct ph_logagg *a = *state;
	char cause[32];

	for (int i = 0; i < PH_LOGAGG_SLOTS + 5; i++) {
		snprintf(cause, sizeof(cause), "cause %d", i);
		ph_logagg_note("l", "connections", cause, "line %d", i);
	}
	ph_logagg_note("l", "connections", "cause 0", "again"); /* a known kind still counts */
	assert_int_equal(a->n, PH_LOGAGG_SLOTS);
	assert_int_equal(a->lost, 5);
	assert_int_equal(a->ent[0].count, 2);
	assert_string_equal(a->ent[0].first, "line 0");
	/* one line per kind and one for the rest: bounded whatever the peers do */
	assert_int_equal(ph_logagg_report(a, 1), PH_LOGAGG_SLOTS + 1);
	assert_int_equal(a->lost, 0);
}

static void test_take_merges(void **state)
{
	struct ph_logagg *a = *state, b, sum;

	ph_logagg_init(&b);
	ph_logagg_init(&sum);
	ph_logagg_note("r", "connections", "client reset", "from a");
	ph_logagg_bind(&b);
	ph_logagg_note("r", "connections", "client reset", "from b");
	ph_logagg_note("r", "connections", "client reset", "from b again");
	ph_logagg_note("r", "udp sessions", "target unreachable", "u1");
	ph_logagg_bind(a);
	ph_logagg_take(&sum, a);
	ph_logagg_take(&sum, &b);
	assert_int_equal(a->n, 0);
	assert_int_equal(b.n, 0);
	assert_int_equal(sum.n, 2);
	assert_int_equal(sum.ent[0].count, 3);
	assert_string_equal(sum.ent[0].first, "from a"); /* the first taken stays the example */
	assert_string_equal(sum.ent[1].what, "udp sessions");
	assert_int_equal(sum.ent[1].count, 1);
	assert_int_equal(ph_logagg_report(&sum, 10000), 2);
	ph_logagg_destroy(&b);
	ph_logagg_destroy(&sum);
}

static void test_verbose_and_quiet_count_nothing(void **state)
{
	struct ph_logagg *a = *state;

	ph_log_level = PH_LOG_DEBUG; /* -v: the caller's line is logged at once */
	ph_logagg_note("r", "connections", "client reset", "c1 logged");
	ph_log_level = PH_LOG_ERR; /* -q: nothing at all */
	ph_logagg_note("r", "connections", "client reset", "c2 dropped");
	assert_int_equal(a->n, 0);
	assert_int_equal(a->lost, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_kinds_and_first_example, setup, teardown),
		cmocka_unit_test_setup_teardown(test_full_table_counts_the_rest, setup, teardown),
		cmocka_unit_test_setup_teardown(test_take_merges, setup, teardown),
		cmocka_unit_test_setup_teardown(test_verbose_and_quiet_count_nothing, setup,
	                                        teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
