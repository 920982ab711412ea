/*
 * Unit tests for config-line splitting (cli/conf.h): quotes, escapes, comments, and the
 * column of each kind of error.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cli/conf.h"

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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_words),
		cmocka_unit_test(test_empty),
		cmocka_unit_test(test_errors),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
