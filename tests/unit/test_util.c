/*
 * Unit tests for core/util.h's ph_str_sanitize, which cleans what a peer wrote (a router's
 * mapping descriptions, its external address, the URLs it gives) before it is printed or
 * logged: escape sequences go, other control bytes and broken UTF-8 become '?', printable
 * text (UTF-8 included) stays as it was.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/util.h"

/* Sanitizes a copy of in and checks it against want, and the length returned. */
static void check(const char *in, const char *want)
{
	char buf[256];
	size_t n;

	assert_true(strlen(in) < sizeof(buf));
	snprintf(buf, sizeof(buf), "%s", in);
	n = ph_str_sanitize(buf);
	assert_string_equal(buf, want);
	assert_int_equal(n, strlen(want));
}

static void test_printable_kept(void **state)
{
	(void)state;
	check("", "");
	check("pinhole", "pinhole");
	check("198.51.100.7", "198.51.100.7");
	check(" !\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~",
	      " !\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~");
	/* u umlaut, the euro sign, an emoji: 2, 3 and 4 bytes */
	check("K\303\274che \342\202\254 \360\237\230\200",
	      "K\303\274che \342\202\254 \360\237\230\200");
}

static void test_escape_sequences_removed(void **state)
{
	(void)state;
	check("\033[31mred\033[0m", "red");            /* SGR */
	check("a\033[2Jb\033[1;1Hc", "abc");           /* clear screen, cursor home */
	check("\033[?1049h", "");                      /* private parameters */
	check("\033]0;owned\007title", "title");       /* OSC ended by BEL */
	check("\033]8;;http://x/\033\\link", "link");  /* OSC 8 ended by ST */
	check("\033Pq#0;2;0;0;0\033\\after", "after"); /* DCS (sixel) */
	check("\0337saved\0338", "saved");             /* ESC 7, ESC 8 */
	check("\033cx", "x");                          /* reset */
	check("end\033", "end");                       /* a lone ESC */
	check("\033]unterminated", "");                /* runs to the end */
	check("\033[31", "");                          /* a CSI cut short */
	check("\033[3\n1m", "?1m");                    /* a CSI cut by a control */
}

static void test_controls_replaced(void **state)
{
	(void)state;
	check("line\nfake: log line", "line?fake: log line");
	check("a\rb\tc\bd\177e", "a?b?c?d?e");
	check("\001\037", "??");
}

static void test_bad_utf8_replaced(void **state)
{
	(void)state;
	check("\23331m", "?31m");              /* a raw 8-bit CSI */
	check("\302\23331m", "??31m");         /* U+009B, CSI as a C1 control */
	check("\302\205", "??");               /* U+0085, NEL */
	check("\300\257", "??");               /* an overlong '/' */
	check("\340\200\257", "???");          /* another overlong '/' */
	check("\355\240\200", "???");          /* a surrogate */
	check("\364\220\200\200", "????");     /* beyond U+10FFFF */
	check("\377\376", "??");               /* never UTF-8 */
	check("cut \342\202", "cut ??");       /* cut at the end */
	check("\342\202A", "??A");             /* cut by ASCII */
	check("\342\200\256evil", "???evil");  /* U+202E, right-to-left override */
	check("\342\201\246x", "???x");        /* U+2066, left-to-right isolate */
	check("\342\200\224", "\342\200\224"); /* an em dash stays */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_printable_kept),
		cmocka_unit_test(test_escape_sequences_removed),
		cmocka_unit_test(test_controls_replaced),
		cmocka_unit_test(test_bad_utf8_replaced),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
