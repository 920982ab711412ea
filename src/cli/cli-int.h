/*
 * Private to src/cli/: what the option table (opts.c) and the parser (cli.c) share.
 */
#ifndef PH_CLI_CLI_INT_H
#define PH_CLI_CLI_INT_H

#include "cli/cli.h"
#include "conn/rule.h"

/* The struct an option's field is in (ph_cli_opt.obj). */
enum ph_cli_obj {
	PH_CLI_IN_CFG = 0, /* struct ph_config */
	PH_CLI_IN_RULE,    /* struct ph_rule: forward and socks */
	PH_CLI_IN_SOCKS,   /* struct ph_socks_conf of a socks rule */
	PH_CLI_IN_SERVER,  /* struct ph_server_conf */
	PH_CLI_IN_EXPOSE,  /* struct ph_expose_conf */
	PH_CLI_IN_MAP,     /* struct ph_map_conf */
	PH_CLI_IN_CHECK,   /* struct ph_check_conf: check's, and map --check's */
};

/* ph_cli_opt.flags */
#define PH_CLI_O_TCP    0x01 /* forward: for TCP rules only */
#define PH_CLI_O_UDP    0x02 /* forward: for UDP rules only */
#define PH_CLI_O_NOEQ   0x04 /* a flag written --x=v is an unknown option, not a flag */
#define PH_CLI_O_COMMON 0x08 /* one of every command's (help lists it in the overview) */

/* One command line being parsed. */
struct ph_cli_ctx {
	struct ph_config *cfg;
	enum ph_cli_verb verb;
	struct ph_rule *rule;               /* forward, socks: owned until the rule is added */
	struct ph_server_conf *server;      /* server: cfg's */
	struct ph_expose_conf *expose;      /* expose: cfg's */
	int argi;                           /* the word being parsed (the value's, when apart) */
	const char *name;                   /* the option as written ("-f" or "--file") */
	int npos;                           /* words that are not options, so far */
	int pos_argi;                       /* the first of them (socks: its LISTEN) */
	bool have_pos2;                     /* map: a PORT; expose: --via given */
	int opt_argi[2];                    /* the first TCP-only, UDP-only option's word or -1 */
	int targ_argi[PH_RULE_MAX_TARGETS]; /* forward: each target's word */
};

/* The table, in help's order, and its length. */
extern const struct ph_cli_opt ph_cli__opts[];
extern const size_t ph_cli__nopts;

/* Fills e (the word argi, the formatted message); returns -EINVAL. */
int ph_cli__fail(struct ph_cli_error *e, int argi, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Parses v as a whole number from min to max into *out; fails naming x->name. */
int ph_cli__uint(struct ph_cli_ctx *x, const char *v, unsigned long long min,
                 unsigned long long max, unsigned long long *out, struct ph_cli_error *e);

#endif /* PH_CLI_CLI_INT_H */
