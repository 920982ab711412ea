/*
 * Unit tests for config-line splitting (cli/conf.h): quotes, escapes, comments, and the
 * column of each kind of error; and how rinetd.conf's allow/deny patterns become rules.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cli/cli.h"
#include "cli/conf.h"
#include "cli/rinetd.h"
#include "core/acl.h"
#include "core/addr.h"
#include "forward/forward.h"

#define MAXW 8

/* Splits s and checks the words are want[0..], NULL-terminated. */
static void split_ok(const char *s, const char *const *want)
{
	char buf[256], *words[MAXW];
	const char *why;
	int n, col, k = 0;

	snprintf(buf, sizeof(buf), "%s", s);
	n = ph_conf_split(buf, words, MAXW, &why, &col);
	if (n < 0)
		print_error("'%s': %s at column %d\n", s, why, col);
	assert_true(n >= 0);
	for (; want[k] != NULL; k++) {
		assert_true(k < n);
		assert_string_equal(words[k], want[k]);
	}
	assert_int_equal(n, k);
}

#define SPLIT_OK(s, ...) split_ok((s), (const char *const[]){__VA_ARGS__, NULL})

static void split_bad(const char *s, int want_col, const char *want_why)
{
	char buf[256], *words[MAXW];
	const char *why;
	int n, col;

	snprintf(buf, sizeof(buf), "%s", s);
	n = ph_conf_split(buf, words, MAXW, &why, &col);
	assert_int_equal(n, -EINVAL);
	assert_int_equal(col, want_col);
	assert_non_null(strstr(why, want_why));
}

static void test_words(void **state)
{
	(void)state;
	SPLIT_OK("forward :80 10.0.0.5:80", "forward", ":80", "10.0.0.5:80");
	SPLIT_OK("  \tforward   :80\t\t10.0.0.5:80  \r", "forward", ":80", "10.0.0.5:80");
	SPLIT_OK("a # comment", "a");
	SPLIT_OK("a#b c", "a#b", "c"); /* # inside a word is a character */
	SPLIT_OK("--name 'two words'", "--name", "two words");
	SPLIT_OK("--name \"a \\\"q\\\" \\\\ \\n\"", "--name", "a \"q\" \\ \\n");
	SPLIT_OK("'it'\"'\"'s'", "it's");
	SPLIT_OK("a\\ b c", "a b", "c");
	SPLIT_OK("'' x", "", "x");
	SPLIT_OK("'#not a comment'", "#not a comment");
}

static void test_empty(void **state)
{
	char buf[64], *words[MAXW];
	const char *why;
	int col;

	(void)state;
	strcpy(buf, "");
	assert_int_equal(ph_conf_split(buf, words, MAXW, &why, &col), 0);
	strcpy(buf, "   \t ");
	assert_int_equal(ph_conf_split(buf, words, MAXW, &why, &col), 0);
	strcpy(buf, "# all comment 'quote");
	assert_int_equal(ph_conf_split(buf, words, MAXW, &why, &col), 0);
}

static void test_errors(void **state)
{
	(void)state;
	split_bad("forward 'abc", 9, "unterminated single quote");
	split_bad("a \"x\\\"", 3, "unterminated double quote");
	split_bad("ab \\", 4, "backslash ends the line");
	split_bad("1 2 3 4 5 6 7 8 9", 17, "too many words");
}

static void no_problem(void *arg, const char *msg)
{
	(void)arg;
	print_error("unexpected problem: %s\n", msg);
	fail();
}

/* rinetd.conf text -> the rules; the caller frees cfg. */
static void rinetd_load(const char *text, struct ph_config *cfg)
{
	char path[] = "/tmp/test_conf_rinetd_XXXXXX";
	int fd = mkstemp(path);
	FILE *f;

	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	ph_config_init(cfg);
	ph_rinetd_no_lookups = true;
	assert_int_equal(ph_rinetd_load(path, cfg, no_problem, NULL), 0);
	unlink(path);
}

static bool lets_in(const struct ph_rule *r, const char *ip)
{
	struct ph_addr a;

	assert_int_equal(ph_addr_from_literal(ip, 1234, &a), 0);
	return ph_acl_allows(&r->acl, &a);
}

/* `deny *` and `allow *` mean every client, IPv6 ones too (a rule bound to :: has them) */
static void test_rinetd_star(void **state)
{
	static const char *const all[] = {"127.0.0.1",   "192.0.2.1",       "::1",
	                                  "2001:db8::1", "::ffff:10.0.0.1", "fe80::1"};
	struct ph_config cfg;

	(void)state;
	rinetd_load(":: 18080 127.0.0.1 80\n"
	            "deny *\n"
	            "0.0.0.0 18081 127.0.0.1 80\n"
	            "deny 10.*\n"
	            ":: 18082 127.0.0.1 80\n"
	            "allow 192.0.2.*\n"
	            ":: 18083 127.0.0.1 80\n"
	            "allow *\n"
	            "deny ::1\n",
	            &cfg);
	assert_int_equal(cfg.nrules, 4);
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		if (lets_in(cfg.rules[0], all[i]))
			print_error("deny * let %s in\n", all[i]);
		assert_false(lets_in(cfg.rules[0], all[i]));
	}
	assert_false(lets_in(cfg.rules[1], "10.1.2.3"));
	assert_true(lets_in(cfg.rules[1], "11.1.2.3"));
	assert_true(lets_in(cfg.rules[1], "::1"));
	/* an IPv4 pattern: IPv6 clients match no allow rule */
	assert_true(lets_in(cfg.rules[2], "192.0.2.7"));
	assert_false(lets_in(cfg.rules[2], "::1"));
	/* allow *: every client but the denied one */
	assert_true(lets_in(cfg.rules[3], "2001:db8::1"));
	assert_true(lets_in(cfg.rules[3], "127.0.0.1"));
	assert_false(lets_in(cfg.rules[3], "::1"));
	ph_config_free(&cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_words),
		cmocka_unit_test(test_empty),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_rinetd_star),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
