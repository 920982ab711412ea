/*
 * Unit tests for the service interface's helpers (core/svc.h): a reload's reply gathers
 * every line said, in order, and a full reply keeps its first lines whole; a service's
 * change reaches the supervisor's hook with its status, and nothing breaks without one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/log.h"
#include "core/svc.h"

static void test_say_gathers_lines(void **state)
{
	struct ph_svc_reload r = {.msg = ""};

	(void)state;
	ph_log_level = PH_LOG_ERR; /* the lines are checked in the reply */
	ph_svc_say(&r, false, "relay: %s", "keys read");
	ph_svc_say(&r, true, "reload: %s: problems above", "p.conf");
	assert_string_equal(r.msg, "relay: keys read\nreload: p.conf: problems above\n");
}

static void test_say_full_reply_keeps_whole_lines(void **state)
{
	struct ph_svc_reload r = {.msg = ""};
	char line[200];
	size_t len;

	(void)state;
	ph_log_level = PH_LOG_ERR;
	memset(line, 'x', sizeof(line) - 1);
	line[sizeof(line) - 1] = '\0';
	for (int i = 0; i < 100; i++)
		ph_svc_say(&r, false, "%s", line);
	len = strlen(r.msg);
	assert_true(len < sizeof(r.msg));
	assert_int_equal(len % sizeof(line), 0); /* whole lines of 199 bytes and a newline */
	assert_int_equal(r.msg[len - 1], '\n');
}

static int seen_status = -1;
static struct ph_svc *seen_svc;

static void on_changed(struct ph_svc *s, int status)
{
	seen_svc = s;
	seen_status = status;
}

static void test_changed_reaches_the_supervisor(void **state)
{
	struct ph_svc s = {.changed = on_changed};
	struct ph_svc alone = {.changed = NULL};

	(void)state;
	ph_svc_changed(&s, 1);
	assert_ptr_equal(seen_svc, &s);
	assert_int_equal(seen_status, 1);
	ph_svc_changed(&s, 0);
	assert_int_equal(seen_status, 0);
	ph_svc_changed(&alone, 1); /* not added to a supervisor yet: nothing to tell */
	assert_ptr_equal(seen_svc, &s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_say_gathers_lines),
		cmocka_unit_test(test_say_full_reply_keeps_whole_lines),
		cmocka_unit_test(test_changed_reaches_the_supervisor),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
