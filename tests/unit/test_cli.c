/*
 * Unit tests for the command line grammar (cli/cli.h): what a good command line puts in the
 * config, and for every error, which word it blames and that the message names that word.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cli/cli.h"
#include "core/acl.h"
#include "core/addr.h"
#include "core/util.h"
#include "forward/forward.h"
#include "socks/socks.h"
#include "tunnel/tunnel.h"

struct fixture {
	struct ph_config cfg;
	struct ph_cli_error e;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	ph_config_init(&f->cfg);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	ph_config_free(&f->cfg);
	assert_int_equal(f->cfg.nrules, 0);
	free(f);
	return 0;
}

static int count(char *const *argv)
{
	int n = 0;

	while (argv[n] != NULL)
		n++;
	return n;
}

/* PARSE(f, "forward", ":80", ...): runs ph_cli_parse on the words given. */
#define PARSE(f, ...) parse((f), (char *[]){__VA_ARGS__, NULL})

static int parse(struct fixture *f, char *const *argv)
{
	int argc = count(argv);

	return ph_cli_parse(argc, argv, &f->cfg, &f->e);
}

/* Parses, which must succeed. */
#define PARSE_OK(f, ...) parse_ok((f), (char *[]){__VA_ARGS__, NULL})

static void parse_ok(struct fixture *f, char *const *argv)
{
	int err = parse(f, argv);

	if (err != 0)
		print_error("refused: %d, argi %d: %s\n", err, f->e.argi, f->e.msg);
	assert_int_equal(err, 0);
	assert_int_equal(f->e.argi, -1);
	assert_string_equal(f->e.msg, "");
}

/*
 * Parses, which must fail with -EINVAL blaming word argi; the message must contain each
 * of the NULL-terminated strings in want (the culprit word, usually).
 */
#define PARSE_BAD(f, argi, want, ...)                                                              \
	parse_bad((f), (argi), (const char *[]){want, NULL}, (char *[]){__VA_ARGS__, NULL})
#define PARSE_BAD2(f, argi, want1, want2, ...)                                                     \
	parse_bad((f), (argi), (const char *[]){want1, want2, NULL}, (char *[]){__VA_ARGS__, NULL})

static void parse_bad(struct fixture *f, int argi, const char *const *want, char *const *argv)
{
	int err = parse(f, argv);

	if (err != -EINVAL || f->e.argi != argi)
		print_error("expected -EINVAL at word %d, got %d at %d: %s\n", argi, err, f->e.argi,
		            f->e.msg);
	assert_int_equal(err, -EINVAL);
	assert_int_equal(f->e.argi, argi);
	assert_true(strlen(f->e.msg) > 0);
	for (int i = 0; want[i] != NULL; i++) {
		if (strstr(f->e.msg, want[i]) == NULL)
			print_error("message '%s' does not mention '%s'\n", f->e.msg, want[i]);
		assert_non_null(strstr(f->e.msg, want[i]));
	}
	/* a failed parse adds no rule */
	assert_int_equal(f->cfg.nrules, 0);
	assert_true(f->cfg.cmd != PH_CMD_FORWARD);
}

static const struct ph_rule *rule(const struct fixture *f)
{
	assert_int_equal(f->cfg.cmd, PH_CMD_FORWARD);
	assert_int_equal(f->cfg.nrules, 1);
	assert_non_null(f->cfg.rules[0]);
	return f->cfg.rules[0];
}

static void check_cidr(const struct ph_acl_rule *r, bool allow, const char *text)
{
	struct ph_cidr c;
	const char *why;

	assert_int_equal(ph_cidr_parse(text, &c, &why), 0);
	assert_int_equal(r->allow, allow);
	assert_memory_equal(&r->cidr, &c, sizeof(c));
}

static void test_defaults(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(f->cfg.cmd, PH_CMD_NONE);
	assert_int_equal(f->cfg.verbosity, 0);
	assert_int_equal(f->cfg.workers, 0);
	assert_int_equal(f->cfg.drain_timeout, 10000);
	assert_int_equal(f->cfg.pipe_size, 0);
	assert_int_equal(f->cfg.nrules, 0);
	/* nothing at all: no command, no error */
	assert_int_equal(ph_cli_parse(0, (char *[]){NULL}, &f->cfg, &f->e), 0);
	assert_int_equal(f->cfg.cmd, PH_CMD_NONE);
	assert_int_equal(f->e.argi, -1);
}

static void test_forward_minimal(void **state)
{
	struct fixture *f = *state;
	const struct ph_rule *r;

	PARSE_OK(f, "forward", ":8080", "10.0.0.5:80");
	r = rule(f);
	assert_true(r->listen.wildcard);
	assert_int_equal(r->listen.port, 8080);
	assert_int_equal(r->ntargets, 1);
	assert_string_equal(r->targets[0].hp.host, "10.0.0.5");
	assert_int_equal(r->targets[0].hp.port, 80);
	assert_false(r->targets[0].hp.is_name);
	/* the defaults */
	assert_int_equal(r->max_conns, 0);
	assert_int_equal(r->connect_timeout, 5000);
	assert_int_equal(r->idle_timeout, 0);
	assert_int_equal(r->acl.n, 0);
	assert_string_equal(r->name, "");
}

static void test_forward_full(void **state)
{
	struct fixture *f = *state;
	const struct ph_rule *r;

	PARSE_OK(f, "forward", "127.0.0.1:5433", "db1.lan:5432", "[2001:db8::7]:5432",
	         "10.0.0.9:6543", "--max-conns", "100", "--connect-timeout", "500ms",
	         "--idle-timeout", "2m", "--allow", "10.0.0.0/8", "--deny", "10.1.0.0/16",
	         "--allow", "2001:db8::/32", "--name", "db");
	r = rule(f);
	assert_string_equal(r->listen.host, "127.0.0.1");
	assert_int_equal(r->listen.port, 5433);
	assert_false(r->listen.wildcard);
	assert_int_equal(r->ntargets, 3);
	assert_string_equal(r->targets[0].hp.host, "db1.lan");
	assert_true(r->targets[0].hp.is_name);
	assert_int_equal(r->targets[0].hp.port, 5432);
	assert_string_equal(r->targets[1].hp.host, "2001:db8::7");
	assert_int_equal(r->targets[1].hp.addr.u.sa.sa_family, AF_INET6);
	assert_string_equal(r->targets[2].hp.host, "10.0.0.9");
	assert_int_equal(r->targets[2].hp.port, 6543);
	assert_int_equal(r->max_conns, 100);
	assert_int_equal(r->connect_timeout, 500);
	assert_int_equal(r->idle_timeout, 120000);
	assert_string_equal(r->name, "db");
	/* rules in the order written */
	assert_int_equal(r->acl.n, 3);
	check_cidr(&r->acl.rules[0], true, "10.0.0.0/8");
	check_cidr(&r->acl.rules[1], false, "10.1.0.0/16");
	check_cidr(&r->acl.rules[2], true, "2001:db8::/32");
	assert_true(r->acl.has_allow);
}

static void test_forward_options_anywhere(void **state)
{
	struct fixture *f = *state;
	const struct ph_rule *r;

	/* options before, between and after the addresses, --opt=value and --opt value */
	PARSE_OK(f, "forward", "--max-conns=7", "[::1]:80", "--deny=::1", "1.2.3.4:80",
	         "--connect-timeout=2s", "5.6.7.8:80", "--idle-timeout", "1h", "--name=x=y");
	r = rule(f);
	assert_int_equal(r->max_conns, 7);
	assert_int_equal(r->connect_timeout, 2000);
	assert_int_equal(r->idle_timeout, 3600000);
	assert_string_equal(r->name, "x=y"); /* only the first '=' splits */
	assert_int_equal(r->listen.addr.u.sa.sa_family, AF_INET6);
	assert_int_equal(r->ntargets, 2);
	assert_string_equal(r->targets[1].hp.host, "5.6.7.8");
	assert_int_equal(r->acl.n, 1);
	check_cidr(&r->acl.rules[0], false, "::1");
	assert_false(r->acl.has_allow);
}

static void test_forward_32_targets(void **state)
{
	struct fixture *f = *state;
	char *argv[2 + PH_RULE_MAX_TARGETS + 1];
	char words[PH_RULE_MAX_TARGETS][32];
	const struct ph_rule *r;

	argv[0] = "forward";
	argv[1] = ":1";
	for (int i = 0; i < PH_RULE_MAX_TARGETS; i++) {
		snprintf(words[i], sizeof(words[i]), "10.0.0.%d:%d", i + 1, 1000 + i);
		argv[2 + i] = words[i];
	}
	argv[2 + PH_RULE_MAX_TARGETS] = NULL;
	parse_ok(f, argv);
	r = rule(f);
	assert_int_equal(r->ntargets, PH_RULE_MAX_TARGETS);
	assert_int_equal(r->targets[31].hp.port, 1031);
}

static void test_global_options(void **state)
{
	struct fixture *f = *state;
	const struct ph_rule *r;

	PARSE_OK(f, "-v", "--workers", "4", "--drain-timeout=30s", "forward", ":80", "h:80", "-vv",
	         "--pipe-size", "1048576", "-q");
	r = rule(f);
	assert_int_equal(r->ntargets, 1);
	assert_int_equal(f->cfg.verbosity, 1 + 2 - 1);
	assert_int_equal(f->cfg.workers, 4);
	assert_int_equal(f->cfg.drain_timeout, 30000);
	assert_int_equal(f->cfg.pipe_size, 1048576);
}

static void test_global_options_after(void **state)
{
	struct fixture *f = *state;

	PARSE_OK(f, "forward", ":80", "h:80", "--workers=3", "--verbose", "--quiet", "--quiet",
	         "-qq", "--drain-timeout", "0");
	(void)rule(f);
	assert_int_equal(f->cfg.workers, 3);
	assert_int_equal(f->cfg.verbosity, 1 - 2 - 2);
	assert_int_equal(f->cfg.drain_timeout, 0);
}

static void test_verbosity_flags(void **state)
{
	struct fixture *f = *state;

	PARSE_OK(f, "-vv");
	assert_int_equal(f->cfg.verbosity, 2);
	assert_int_equal(f->cfg.cmd, PH_CMD_NONE);
	PARSE_OK(f, "-vqv", "-v");
	assert_int_equal(f->cfg.verbosity, 2 + 1 + 1);
}

static void test_help_version(void **state)
{
	struct fixture *f = *state;

	PARSE_OK(f, "--help");
	assert_int_equal(f->cfg.cmd, PH_CMD_HELP);
	assert_non_null(ph_cli_help(f->cfg.help_topic));
	assert_int_equal(f->cfg.nrules, 0);

	ph_config_init(&f->cfg);
	PARSE_OK(f, "-h");
	assert_int_equal(f->cfg.cmd, PH_CMD_HELP);

	ph_config_init(&f->cfg);
	PARSE_OK(f, "--version");
	assert_int_equal(f->cfg.cmd, PH_CMD_VERSION);

	ph_config_init(&f->cfg);
	PARSE_OK(f, "-V");
	assert_int_equal(f->cfg.cmd, PH_CMD_VERSION);

	ph_config_init(&f->cfg);
	PARSE_OK(f, "forward", "--help");
	assert_int_equal(f->cfg.cmd, PH_CMD_HELP);
	assert_string_equal(f->cfg.help_topic, "forward");
	assert_int_equal(f->cfg.nrules, 0);
	assert_ptr_equal(ph_cli_help(f->cfg.help_topic), ph_cli_help("forward"));

	/* help wins over a rule that is otherwise complete, or incomplete */
	ph_config_init(&f->cfg);
	PARSE_OK(f, "forward", ":80", "h:1", "-h");
	assert_int_equal(f->cfg.cmd, PH_CMD_HELP);
	assert_string_equal(f->cfg.help_topic, "forward");
	assert_int_equal(f->cfg.nrules, 0);

	ph_config_init(&f->cfg);
	PARSE_OK(f, "forward", ":80", "--version");
	assert_int_equal(f->cfg.cmd, PH_CMD_VERSION);
	assert_int_equal(f->cfg.nrules, 0);

	ph_config_init(&f->cfg);
	PARSE_OK(f, "help", "forward");
	assert_int_equal(f->cfg.cmd, PH_CMD_HELP);
	assert_string_equal(f->cfg.help_topic, "forward");

	ph_config_init(&f->cfg);
	PARSE_OK(f, "help");
	assert_int_equal(f->cfg.cmd, PH_CMD_HELP);
	assert_string_equal(f->cfg.help_topic, "");

	assert_non_null(ph_cli_help(""));
	assert_non_null(ph_cli_help(NULL));
	assert_null(ph_cli_help("frobnicate"));
	assert_non_null(strstr(ph_cli_help("forward"), "--max-conns"));
}

static void test_err_unknown(void **state)
{
	struct fixture *f = *state;

	PARSE_BAD(f, 0, "--bogus", "--bogus");
	PARSE_BAD(f, 1, "--bogus", "-v", "--bogus=1", "forward", ":80", "h:1");
	PARSE_BAD(f, 0, "-x", "-x");
	PARSE_BAD(f, 0, "frobnicate", "frobnicate", ":80");
	PARSE_BAD(f, 3, "--bogus", "forward", ":80", "h:1", "--bogus");
	PARSE_BAD(f, 1, "--frobnicate", "forward", "--frobnicate=yes", ":80", "h:1");
	PARSE_BAD(f, 3, "-x", "forward", ":80", "h:1", "-x");
}

static void test_err_addresses(void **state)
{
	struct fixture *f = *state;

	PARSE_BAD2(f, 2, "1.2.3:80", "not an IPv4 address", "forward", ":80", "1.2.3:80");
	PARSE_BAD2(f, 1, "::1:80", "brackets", "forward", "::1:80", "h:1");
	PARSE_BAD2(f, 3, "h:0", "1-65535", "forward", ":80", "h:1", "h:0");
	PARSE_BAD2(f, 1, "nocolon", "HOST:PORT", "forward", "nocolon", "h:1");
	/* listen must be an IP address or :PORT */
	PARSE_BAD2(f, 1, "example.com:80", "not a name", "forward", "example.com:80", "1.2.3.4:80");
	/* a target needs a host, and the listener's protocol when it names one */
	PARSE_BAD2(f, 2, "':80'", "needs a host", "forward", ":81", ":80");
	PARSE_BAD2(f, 3, "'udp://h:53'", "is udp://, but the listen address is tcp://", "forward",
	           ":81", "h:1", "udp://h:53");
	PARSE_BAD2(f, 2, "'tcp://h:53'", "listen address is udp://", "forward", "udp://:53",
	           "tcp://h:53");
	PARSE_BAD2(f, 2, "'udp://h:53'", "listen address is tcp+udp://", "forward", "tcp+udp://:53",
	           "udp://h:53");
	/* options of the other protocol */
	PARSE_BAD2(f, 3, "--max-conns", "is for TCP", "forward", "udp://:53", "h:53", "--max-conns",
	           "5");
	PARSE_BAD2(f, 3, "--udp-timeout", "is for UDP", "forward", ":53", "h:53", "--udp-timeout",
	           "5s");
	PARSE_BAD2(f, 1, "--max-sessions", "is for UDP", "forward", "--max-sessions=9", ":53",
	           "h:53");
	PARSE_BAD2(f, 4, "--udp-timeout", "more than 0", "forward", "udp://:53", "h:53",
	           "--udp-timeout", "0");
	PARSE_BAD(f, 4, "--max-sessions", "forward", "udp://:53", "h:53", "--max-sessions", "0");
}

static void test_forward_udp(void **state)
{
	struct fixture *f = *state;
	const struct ph_rule *r;

	PARSE_OK(f, "forward", "udp://:5353", "10.0.0.2:53", "udp://dns.lan:53", "--udp-timeout",
	         "30s", "--max-sessions", "100", "--allow", "10.0.0.0/8");
	r = rule(f);
	assert_int_equal(r->listen.proto, PH_PROTO_UDP);
	assert_true(r->listen.wildcard);
	assert_int_equal(r->ntargets, 2);
	assert_false(r->targets[0].hp.has_scheme);
	assert_true(r->targets[1].hp.has_scheme);
	assert_int_equal(r->udp_timeout, 30000);
	assert_int_equal(r->max_sessions, 100);
	PARSE_OK(f, "forward", "tcp+udp://127.0.0.1:7", "tcp+udp://h:7", "--udp-timeout", "1s",
	         "--max-conns", "5");
	assert_int_equal(f->cfg.nrules, 2); /* one parse after another adds a rule */
	r = f->cfg.rules[1];
	assert_int_equal(r->listen.proto, PH_PROTO_TCP | PH_PROTO_UDP);
	assert_int_equal(r->max_conns, 5);
	assert_int_equal(r->udp_timeout, 1000);
}

static void test_err_missing(void **state)
{
	struct fixture *f = *state;

	/* the command is the culprit when its addresses are missing */
	PARSE_BAD2(f, 0, "forward", "TARGET", "forward", ":80");
	PARSE_BAD2(f, 1, "forward", "LISTEN", "-v", "forward");
	PARSE_BAD(f, 0, "TARGET", "forward", ":80", "--max-conns", "5");
	/* an option without its value is blamed, by name */
	PARSE_BAD(f, 3, "--max-conns", "forward", ":80", "h:1", "--max-conns");
	PARSE_BAD(f, 3, "--allow", "forward", ":80", "h:1", "--allow");
	PARSE_BAD(f, 0, "--workers", "--workers");
	PARSE_BAD(f, 3, "--drain-timeout", "forward", ":80", "h:1", "--drain-timeout");
}

static void test_err_values(void **state)
{
	struct fixture *f = *state;

	/* the value word is blamed when it is a word of its own */
	PARSE_BAD2(f, 4, "--max-conns", "'0'", "forward", ":80", "h:1", "--max-conns", "0");
	PARSE_BAD2(f, 4, "--max-conns", "'abc'", "forward", ":80", "h:1", "--max-conns", "abc");
	PARSE_BAD2(f, 4, "--max-conns", "'-1'", "forward", ":80", "h:1", "--max-conns", "-1");
	PARSE_BAD2(f, 3, "--max-conns", "'0'", "forward", ":80", "h:1", "--max-conns=0");
	PARSE_BAD(f, 3, "--max-conns", "forward", ":80", "h:1", "--max-conns=");
	PARSE_BAD2(f, 4, "--connect-timeout", "more than 0", "forward", ":80", "h:1",
	           "--connect-timeout", "0");
	PARSE_BAD(f, 3, "--connect-timeout", "forward", ":80", "h:1", "--connect-timeout=0ms");
	PARSE_BAD2(f, 4, "--connect-timeout", "'5x'", "forward", ":80", "h:1", "--connect-timeout",
	           "5x");
	PARSE_BAD2(f, 3, "--idle-timeout", "'1.5s'", "forward", ":80", "--idle-timeout", "1.5s",
	           "h:1");
	PARSE_BAD2(f, 4, "--allow", "'banana'", "forward", ":80", "h:1", "--allow", "banana");
	PARSE_BAD2(f, 3, "--deny", "'10.0.0.0/33'", "forward", ":80", "h:1", "--deny=10.0.0.0/33");
	PARSE_BAD2(f, 1, "--workers", "'0'", "--workers", "0");
	PARSE_BAD2(f, 0, "--workers", "'1025'", "--workers=1025");
	PARSE_BAD2(f, 1, "--pipe-size", "'100'", "--pipe-size", "100");
	PARSE_BAD2(f, 1, "--drain-timeout", "'soon'", "--drain-timeout", "soon");
	PARSE_BAD(f, 4, "--name", "forward", ":80", "h:1", "--name", "");
	PARSE_BAD(f, 3, "--name", "forward", ":80", "h:1",
	          "--name=0123456789012345678901234567890123456789012345678901234567890123");
}

static void test_err_too_many_targets(void **state)
{
	struct fixture *f = *state;
	char *argv[2 + PH_RULE_MAX_TARGETS + 2];
	char words[PH_RULE_MAX_TARGETS + 1][32];

	argv[0] = "forward";
	argv[1] = ":1";
	for (int i = 0; i < PH_RULE_MAX_TARGETS + 1; i++) {
		snprintf(words[i], sizeof(words[i]), "10.0.0.%d:%d", i + 1, 1000 + i);
		argv[2 + i] = words[i];
	}
	argv[2 + PH_RULE_MAX_TARGETS + 1] = NULL;
	/* the 33rd target is word 34 */
	parse_bad(f, 2 + PH_RULE_MAX_TARGETS, (const char *[]){"too many targets", "32", NULL},
	          argv);
}

/* A failed parse keeps the global settings it saw, adds no rule and leaks nothing (ASan). */
static void test_err_keeps_config(void **state)
{
	struct fixture *f = *state;

	PARSE_OK(f, "forward", ":80", "h:1", "--allow", "10.0.0.0/8");
	assert_int_equal(f->cfg.nrules, 1);
	/* a second command line adds to the same config */
	assert_int_equal(PARSE(f, "forward", ":81", "h:2", "--deny", "::1", "--bogus"), -EINVAL);
	assert_int_equal(f->cfg.nrules, 1);
	PARSE_OK(f, "forward", ":82", "h:3");
	assert_int_equal(f->cfg.nrules, 2);
	assert_int_equal(f->cfg.rules[1]->listen.port, 82);
}

/* --- the option table (src/cli/opts.c) ----------------------------------------------------- */

static const char *man_path; /* docs/pinhole.1, from meson */

static bool opt_named(const struct ph_cli_opt *d, const char *name)
{
	return strcmp(d->name, name) == 0 || (d->alias != NULL && strcmp(d->alias, name) == 0);
}

/* Every option: known verbs, a help, a value shown when it takes one; a name no verb has
 * twice. */
static void test_table_sane(void **state)
{
	(void)state;
	for (int v = 0; v < PH_CLI__NVERBS; v++) {
		const struct ph_cli_opt *d;

		assert_non_null(ph_cli_verb_name((enum ph_cli_verb)v));
		for (size_t i = 0; (d = ph_cli_opt((enum ph_cli_verb)v, i)) != NULL; i++) {
			const char *h = d->help;

			assert_true(d->verbs & (1u << v));
			assert_int_equal(d->verbs & ~(unsigned)PH_CLI_V_EVERY, 0);
			assert_true(strncmp(d->name, "--", 2) == 0 && strlen(d->name) > 3);
			assert_true(d->alias == NULL ||
			            (d->alias[0] == '-' && strlen(d->alias) == 2));
			assert_true((d->arg == PH_CLI_FLAG) == (d->argname == NULL));
			assert_true((d->arg == PH_CLI_WORD) == (d->words != NULL));
			assert_non_null(h);
			assert_true(h[0] != '\0');
			/* help's second column is 55 characters wide */
			for (size_t n; *h != '\0'; h += n + (h[n] == '\n')) {
				n = strcspn(h, "\n");
				if (n > 55)
					print_error("%s: a help line of %zu characters\n", d->name,
					            n);
				assert_true(n <= 55);
			}
			/* no other option of this verb has its name or alias */
			for (size_t k = i + 1; ph_cli_opt((enum ph_cli_verb)v, k) != NULL; k++) {
				const struct ph_cli_opt *o = ph_cli_opt((enum ph_cli_verb)v, k);

				if (opt_named(o, d->name) || (d->alias && opt_named(o, d->alias)))
					print_error("%s: twice for %s\n", d->name,
					            ph_cli_verb_name((enum ph_cli_verb)v));
				assert_false(opt_named(o, d->name));
				assert_false(d->alias != NULL && opt_named(o, d->alias));
			}
		}
	}
	assert_null(ph_cli_verb_name(PH_CLI__NVERBS));
	assert_null(ph_cli_opt(PH_CLI__NVERBS, 0));
	/* the words before a command take every command's options, and only those */
	assert_non_null(ph_cli_opt(PH_CLI_TOP, 0));
	assert_string_equal(ph_cli_opt(PH_CLI_FORWARD, 0)->name, "--allow");
}

/* A verb's help shows each of its options, with its value; the overview every command's. */
static void test_table_help(void **state)
{
	(void)state;
	for (int v = 0; v < PH_CLI__NVERBS; v++) {
		const char *name = ph_cli_verb_name((enum ph_cli_verb)v);
		const char *help = ph_cli_help(name);
		const struct ph_cli_opt *d;
		char want[80];

		if (help == NULL) /* status, reload: the overview */
			help = ph_cli_help("");
		for (size_t i = 0; (d = ph_cli_opt((enum ph_cli_verb)v, i)) != NULL; i++) {
			/* a verb's help points to the overview for every command's */
			if (v != PH_CLI_TOP && ph_cli_help(name) != NULL &&
			    (d->verbs & PH_CLI_V(TOP)))
				continue;
			snprintf(want, sizeof(want), "%s%s%s%s%s", d->alias ? d->alias : "",
			         d->alias ? ", " : "", d->name, d->argname ? " " : "",
			         d->argname ? d->argname : "");
			if (strstr(help, want) == NULL)
				print_error("'%s' is not in the help of '%s'\n", want, name);
			assert_non_null(strstr(help, want));
		}
		/* help is made once: the same text each time */
		assert_ptr_equal(help,
		                 ph_cli_help(name) != NULL ? ph_cli_help(name) : ph_cli_help(""));
	}
}

/* An option of another verb, or none, is refused by name at the word it is. */
static void test_table_wrong_verb(void **state)
{
	struct fixture *f = *state;

	for (int v = 0; v < PH_CLI__NVERBS; v++) {
		const char *verb = ph_cli_verb_name((enum ph_cli_verb)v);

		for (size_t k = 0; k < 1000; k++) {
			const struct ph_cli_opt *d = NULL;
			bool taken = false, fwd = false;
			char word[80], vb[16];

			/* each option of each verb, tried on every verb */
			for (int w = 0, n = 0; w < PH_CLI__NVERBS && d == NULL; w++) {
				const struct ph_cli_opt *o;

				for (size_t i = 0; (o = ph_cli_opt((enum ph_cli_verb)w, i)) != NULL;
				     i++) {
					if (n++ == (int)k) {
						d = o;
						break;
					}
				}
			}
			if (d == NULL)
				break;
			for (size_t i = 0; ph_cli_opt((enum ph_cli_verb)v, i) != NULL; i++)
				taken |= opt_named(ph_cli_opt((enum ph_cli_verb)v, i), d->name);
			if (taken)
				continue;
			for (size_t i = 0; ph_cli_opt(PH_CLI_FORWARD, i) != NULL; i++)
				fwd |= opt_named(ph_cli_opt(PH_CLI_FORWARD, i), d->name);
			snprintf(word, sizeof(word), "%s=1", d->name);
			snprintf(vb, sizeof(vb), "%s", verb);
			ph_config_free(&f->cfg);
			ph_config_init(&f->cfg);
			if (v == PH_CLI_TOP) {
				PARSE_BAD2(f, 0, d->name, "unknown option", word);
			} else if (v == PH_CLI_SOCKS && fwd) {
				PARSE_BAD2(f, 1, d->name, "is not for socks rules", vb, word);
			} else {
				char see[40];

				snprintf(see, sizeof(see), "(see pinhole %s --help)", verb);
				if (v == PH_CLI_STATUS || v == PH_CLI_RELOAD)
					snprintf(see, sizeof(see), "(see pinhole --help)");
				PARSE_BAD2(f, 1, d->name, see, vb, word);
				assert_non_null(strstr(f->e.msg, "unknown option"));
			}
		}
	}
}

/* A number out of its bounds is refused naming them; so is a duration. */
static void test_table_bounds(void **state)
{
	struct fixture *f = *state;

	for (int v = 1; v < PH_CLI__NVERBS; v++) {
		const struct ph_cli_opt *d;

		for (size_t i = 0; (d = ph_cli_opt((enum ph_cli_verb)v, i)) != NULL; i++) {
			char val[32], want[64], vb[16], nm[40];

			if (d->arg != PH_CLI_UINT || d->max == 0)
				continue;
			snprintf(vb, sizeof(vb), "%s", ph_cli_verb_name((enum ph_cli_verb)v));
			snprintf(nm, sizeof(nm), "%s", d->name);
			snprintf(want, sizeof(want), "from %llu to %llu", d->min, d->max);
			snprintf(val, sizeof(val), "%llu", d->max + 1);
			ph_config_free(&f->cfg);
			ph_config_init(&f->cfg);
			PARSE_BAD2(f, 2, d->name, want, vb, nm, val);
			if (d->min == 0)
				continue;
			snprintf(val, sizeof(val), "%llu", d->min - 1);
			ph_config_free(&f->cfg);
			ph_config_init(&f->cfg);
			PARSE_BAD2(f, 2, d->name, want, vb, nm, val);
		}
	}
	PARSE_BAD2(f, 2, "--heartbeat '100ms'", "from 200ms to 10m", "server", "--heartbeat",
	           "100ms");
	PARSE_BAD2(f, 1, "--heartbeat '11m'", "from 200ms to 10m", "expose", "--heartbeat=11m");
	PARSE_BAD2(f, 2, "--handshake-timeout", "more than 0", "socks", "--handshake-timeout", "0");
	/* a flag takes no value: an error, or an unknown option where a value was never read */
	PARSE_BAD(f, 3, "option --map takes no value", "forward", ":1", "h:1", "--map=yes");
	PARSE_BAD(f, 1, "unknown option '--once' (see pinhole map --help)", "map", "--once=1");
	PARSE_BAD(f, 0, "option --no-sandbox takes no value", "--no-sandbox=1");
	/* -v, -q and their clusters were never flags with a value */
	PARSE_BAD(f, 1, "unknown option '-v' (see pinhole socks --help)", "socks", "-v=1");
	PARSE_BAD(f, 0, "unknown option '-vq' (see pinhole --help)", "-vq=");
	/* a flag of this verb written with a value is unknown, not another verb's */
	PARSE_BAD(f, 1, "unknown option '--udp' (see pinhole expose --help)", "expose", "--udp=1");
	PARSE_BAD(f, 2, "--method 'pmp': auto, pcp, natpmp or upnp", "map", "--method", "pmp");
}

/* Options set what the table says, in every verb that takes them. */
static void test_table_sets(void **state)
{
	struct fixture *f = *state;

	PARSE_OK(f, "map", "--both", "--method=nat-pmp", "--lifetime", "60", "--once", "--keep",
	         "8080");
	assert_int_equal(f->cfg.map.protos, PH_MAP_TCP | PH_MAP_UDP);
	assert_int_equal(f->cfg.map.method, PH_MAP_NATPMP);
	assert_int_equal(f->cfg.map.lifetime, 60);
	assert_true(f->cfg.map.once && f->cfg.map.keep);
	assert_int_equal(f->cfg.map.internal, 8080);
	ph_config_init(&f->cfg);
	PARSE_OK(f, "--log-format", "common", "status", "--json", "-vv", "--control=/x/y");
	assert_int_equal(f->cfg.cmd, PH_CMD_STATUS);
	assert_int_equal(f->cfg.logformat, 1);
	assert_true(f->cfg.json);
	assert_int_equal(f->cfg.verbosity, 2);
	assert_string_equal(f->cfg.control, "/x/y");
	ph_config_init(&f->cfg);
	PARSE_OK(f, "expose", "127.0.0.1:22", "--via", "relay.lan", "--port", "2222", "--max-conns",
	         "9", "--proxy-protocol", "v2", "--heartbeat", "1m", "--name", "ssh");
	assert_int_equal(f->cfg.nexpose, 1);
	assert_int_equal(f->cfg.expose[0]->port, 2222);
	assert_int_equal(f->cfg.expose[0]->max_conns, 9);
	assert_int_equal(f->cfg.expose[0]->proxy, 2);
	assert_int_equal(f->cfg.expose[0]->hb_ms, 60000);
	assert_int_equal(f->cfg.expose[0]->via.port, 7835);
	assert_string_equal(f->cfg.expose[0]->name, "ssh");
	ph_config_free(&f->cfg);
	ph_config_init(&f->cfg);
	PARSE_OK(f, "socks", "--user", "a:b", "--handshake-timeout", "3s", "--max-conns", "4",
	         "--user=c:d");
	assert_int_equal(rule(f)->socks->nusers, 2);
	assert_int_equal(rule(f)->socks->handshake_timeout, 3000);
	assert_int_equal(rule(f)->max_conns, 4);
}

/*
 * Each verb's OPTIONS section of docs/pinhole.1 names every option of the verb (the ones
 * every command takes: GLOBAL OPTIONS), and every option a section's tags (the line after
 * .TP) name is one of the verb's.
 */
static const char *const man_sections[PH_CLI__NVERBS] = {
	[PH_CLI_TOP] = "GLOBAL OPTIONS",    [PH_CLI_FORWARD] = "FORWARD OPTIONS",
	[PH_CLI_SOCKS] = "SOCKS OPTIONS",   [PH_CLI_SERVER] = "SERVER OPTIONS",
	[PH_CLI_EXPOSE] = "EXPOSE OPTIONS", [PH_CLI_LOCAL] = "LOCAL OPTIONS",
	[PH_CLI_KEYGEN] = "KEYGEN OPTIONS", [PH_CLI_MAP] = "MAP OPTIONS",
	[PH_CLI_RUN] = "RUN OPTIONS",       [PH_CLI_STATUS] = "STATUS OPTIONS",
	[PH_CLI_CHECK] = "CHECK OPTIONS",
};

/* The text of a section (from ".SH NAME" or ".SS NAME" to the next one), "\-" as "-". */
static char *man_section(const char *man, const char *name)
{
	const char *p = man, *end;
	char *out;
	size_t n = 0;

	for (; (p = strstr(p, name)) != NULL; p++) {
		if (p - man >= 4 && p[-1] == ' ' && p[-4] == '.' && p[strlen(name)] == '\n' &&
		    (p - man == 4 || p[-5] == '\n'))
			break;
	}
	if (p == NULL)
		return NULL;
	p += strlen(name);
	for (end = p; *end != '\0'; end++) {
		if (end[0] == '\n' && end[1] == '.' && end[2] == 'S' &&
		    (end[3] == 'H' || end[3] == 'S'))
			break;
	}
	out = malloc((size_t)(end - p) + 1);
	assert_non_null(out);
	for (; p < end; p++) {
		if (p[0] == '\\' && p[1] == '-')
			p++;
		out[n++] = *p;
	}
	out[n] = '\0';
	return out;
}

/* Whether word (an option) stands in text as a word of its own. */
static bool man_names(const char *text, const char *word)
{
	size_t n = strlen(word);

	for (const char *p = text; (p = strstr(p, word)) != NULL; p++) {
		char after = p[n];

		if ((p == text || strchr(" \t\n(\",", p[-1]) != NULL) &&
		    !(after == '-' || (after >= 'a' && after <= 'z') ||
		      (after >= 'A' && after <= 'Z') || (after >= '0' && after <= '9')))
			return true;
	}
	return false;
}

static void test_table_man(void **state)
{
	char *man;
	FILE *fp;
	long len;

	(void)state;
	if (man_path == NULL)
		skip();
	fp = fopen(man_path, "r");
	assert_non_null(fp);
	assert_int_equal(fseek(fp, 0, SEEK_END), 0);
	len = ftell(fp);
	assert_true(len > 0);
	rewind(fp);
	man = malloc((size_t)len + 1);
	assert_non_null(man);
	assert_int_equal(fread(man, 1, (size_t)len, fp), (size_t)len);
	man[len] = '\0';
	fclose(fp);
	for (int v = 0; v < PH_CLI__NVERBS; v++) {
		const struct ph_cli_opt *d;
		char *sec;

		if (man_sections[v] == NULL) {
			/* reload: only every command's options */
			for (size_t i = 0; (d = ph_cli_opt((enum ph_cli_verb)v, i)) != NULL; i++)
				assert_true(d->verbs & PH_CLI_V(TOP));
			continue;
		}
		sec = man_section(man, man_sections[v]);
		if (sec == NULL)
			print_error("docs/pinhole.1 has no section %s\n", man_sections[v]);
		assert_non_null(sec);
		/* the table's options are in the man page */
		for (size_t i = 0; (d = ph_cli_opt((enum ph_cli_verb)v, i)) != NULL; i++) {
			bool found;

			if (v != PH_CLI_TOP && (d->verbs & PH_CLI_V(TOP)))
				continue; /* in GLOBAL OPTIONS */
			found = man_names(sec, d->name) || (d->alias && man_names(sec, d->alias));
			if (!found)
				print_error("docs/pinhole.1, %s: %s is missing\n", man_sections[v],
				            d->name);
			assert_true(found);
		}
		/* and the man page's are the table's */
		for (char *tp = sec; (tp = strstr(tp, ".TP\n")) != NULL;) {
			char *line = tp + 4, *eol = strchr(line, '\n');

			tp = line;
			if (eol != NULL)
				*eol = '\0';
			for (char *p = line; (p = strchr(p, '-')) != NULL;) {
				char word[64];
				size_t n = strspn(
					p, "-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ");
				bool known = false;

				if (p != line && strchr(" \t\"", p[-1]) == NULL) {
					p += n;
					continue;
				}
				snprintf(word, sizeof(word), "%.*s", (int)n, p);
				p += n;
				if (v == PH_CLI_TOP && word[1] != '-' &&
				    strspn(word + 1, "vq") == strlen(word + 1))
					continue; /* -vv */
				for (size_t i = 0; (d = ph_cli_opt((enum ph_cli_verb)v, i)) != NULL;
				     i++)
					known |= opt_named(d, word);
				if (!known)
					print_error(
						"docs/pinhole.1, %s: %s is not an option of it\n",
						man_sections[v], word);
				assert_true(known);
			}
			if (eol != NULL)
				*eol = '\n';
		}
		free(sec);
	}
	free(man);
}

/* check [HOST:]PORT --via RELAY, and map PORT --check --via RELAY */
static void test_check(void **state)
{
	struct fixture *f = *state;
	const struct ph_check_conf *c = &f->cfg.relay_check;

	PARSE_OK(f, "check", "8080", "--via", "relay.lan");
	assert_int_equal(f->cfg.cmd, PH_CMD_CHECK);
	assert_int_equal(c->port, 8080);
	assert_false(c->udp || c->on_map || f->cfg.json);
	assert_true(c->has_via);
	assert_string_equal(c->relay.via.host, "relay.lan");
	assert_int_equal(c->relay.via.port, 7835);
	assert_int_equal(c->addr.u.sa.sa_family, AF_UNSPEC);

	ph_config_free(&f->cfg);
	ph_config_init(&f->cfg);
	PARSE_OK(f, "check", "--udp", "[2001:db8::1]:53", "--via", "10.0.0.1:9", "--json", "--key",
	         "k.key", "--known-relays", "known", "--relay-key",
	         "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
	assert_int_equal(f->cfg.cmd, PH_CMD_CHECK);
	assert_true(c->udp && f->cfg.json);
	assert_int_equal(c->port, 53);
	assert_int_equal(c->addr.u.sa.sa_family, AF_INET6);
	assert_int_equal(c->relay.via.port, 9);
	assert_string_equal(c->relay.key_file, "k.key");
	assert_string_equal(c->relay.known_file, "known");
	assert_string_equal(c->relay.relay_fp,
	                    "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");

	/* map: --via before PORT is not map's PORT */
	ph_config_free(&f->cfg);
	ph_config_init(&f->cfg);
	PARSE_OK(f, "map", "--via", "relay.lan", "--check", "8080", "--both");
	assert_int_equal(f->cfg.cmd, PH_CMD_MAP);
	assert_int_equal(f->cfg.map.internal, 8080);
	assert_true(c->on_map && c->has_via);
	assert_string_equal(c->relay.via.host, "relay.lan");

	ph_config_free(&f->cfg);
	ph_config_init(&f->cfg);
	PARSE_BAD(f, 0, "--via", "check", "80");
	PARSE_BAD(f, 0, "PORT", "check", "--via", "r");
	PARSE_BAD(f, 1, "'host.lan:80'", "check", "host.lan:80", "--via", "r");
	PARSE_BAD(f, 1, "from 1 to 65535", "check", "99999", "--via", "r");
	PARSE_BAD(f, 2, "one PORT", "check", "80", "81", "--via", "r");
	PARSE_BAD(f, 4, "--name", "check", "80", "--via", "r", "--name", "x");
	/* each on a fresh config: check's words stay in it after a refusal */
	for (int i = 0; i < 3; i++) {
		ph_config_free(&f->cfg);
		ph_config_init(&f->cfg);
		if (i == 0)
			PARSE_BAD(f, 0, "--via is for --check", "map", "80", "--via", "r");
		else if (i == 1)
			PARSE_BAD(f, 0, "needs --via", "map", "80", "--check");
		else
			PARSE_BAD(f, 0, "map [add] PORT", "map", "ip", "--check", "--via", "r");
	}
}

int main(int argc, char **argv)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_defaults),
		T(test_forward_minimal),
		T(test_forward_full),
		T(test_forward_options_anywhere),
		T(test_forward_32_targets),
		T(test_global_options),
		T(test_global_options_after),
		T(test_verbosity_flags),
		T(test_help_version),
		T(test_err_unknown),
		T(test_forward_udp),
		T(test_err_addresses),
		T(test_err_missing),
		T(test_err_values),
		T(test_err_too_many_targets),
		T(test_err_keeps_config),
		T(test_table_sane),
		T(test_table_help),
		T(test_table_wrong_verb),
		T(test_table_bounds),
		T(test_table_sets),
		T(test_table_man),
		T(test_check),
	};
#undef T

	man_path = argc > 1 ? argv[1] : NULL;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
