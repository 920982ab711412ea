/*
 * The one grammar: a command line (the words after `pinhole`) becomes a config. A config
 * file line will be the same words, parsed by the same code (DESIGN.md: one grammar).
 */
#ifndef PH_CLI_CLI_H
#define PH_CLI_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"
#include "portmap/portmap.h"
#include "tunnel/tunnel.h"

struct ph_rule;

enum ph_cmd {
	PH_CMD_NONE = 0, /* nothing given: print usage, exit 2 */
	PH_CMD_HELP,     /* --help, for help_topic ("" or "forward") */
	PH_CMD_VERSION,  /* --version */
	PH_CMD_FORWARD,  /* run the rules */
	PH_CMD_RUN,      /* run (or with check, only check) the rules of run_file */
	PH_CMD_STATUS,   /* ask a running pinhole for its status (json: as JSON) */
	PH_CMD_RELOAD,   /* ask a running pinhole to reload its FILE */
	PH_CMD_MAP,      /* ask the gateway for a port mapping (map) */
	PH_CMD_KEYGEN,   /* make a key pair, or show the public half of one (keygen) */
	PH_CMD_CHECK,    /* ask a relay to try this host's public address on a port (check) */
};

#define PH_CONFIG_MAX_RULES 1024
#define PH_DRAIN_TIMEOUT_MS 10000 /* default --drain-timeout */

struct ph_config {
	enum ph_cmd cmd;
	const char *help_topic;  /* borrowed from argv */
	int verbosity;           /* +1 per -v, -1 per -q */
	unsigned workers;        /* 0: one per online CPU */
	uint64_t drain_timeout;  /* ms that live connections get after SIGTERM */
	unsigned pipe_size;      /* bytes per splice pipe, 0: the kernel's default */
	const char *run_file;    /* borrowed from argv: `pinhole run FILE` */
	bool check;              /* run --check: check FILE, run nothing */
	bool rinetd;             /* run --rinetd: FILE is a rinetd.conf */
	unsigned udp_sessions;   /* --max-sessions of a UDP rule that sets none (from fds) */
	char user[64];           /* --user: who to become once the ports are bound; "" */
	bool no_sandbox;         /* --no-sandbox: no seccomp filter once set up */
	char pidfile[512];       /* --pidfile; "" for none */
	char control[108];       /* --control: the control socket; "" default, "none" off */
	char logfile[512];       /* --log-file: a line per connection event; "" none */
	int logformat;           /* --log-format: enum ph_connlog_format */
	bool json;               /* status --json */
	bool has_metrics;        /* --metrics ADDR: */
	struct ph_addr metrics;  /* where Prometheus metrics are served */
	struct ph_map_conf map;  /* `pinhole map ...` */
	const char *key_file;    /* keygen -f FILE (borrowed from argv); NULL: the default */
	const char *key_comment; /* keygen -C COMMENT */
	bool key_show;           /* keygen --show: print the public key of FILE */
	struct ph_rule *rules[PH_CONFIG_MAX_RULES]; /* owned */
	unsigned nrules;
	struct ph_server_conf *server;                /* owned: `server`, NULL none */
	struct ph_expose_conf *expose[PH_EXPOSE_MAX]; /* owned: `expose` rules */
	unsigned nexpose;
	struct ph_check_conf
		relay_check; /* `check PORT --via RELAY`, `map PORT --check --via RELAY` */
};

/* What went wrong, and at which word (an index into the argv given, or -1). */
struct ph_cli_error {
	int argi;
	char msg[320];
};

/*
 * The options, declared once (src/cli/opts.c): the parser, `pinhole VERB --help`, the
 * config grammar and the test that holds docs/pinhole.1 to them all read this table.
 */

/* Where an option may be written: before a command (PH_CLI_TOP) or after one. */
enum ph_cli_verb {
	PH_CLI_TOP = 0, /* the words before the command: only options every command takes */
	PH_CLI_FORWARD, /* forward LISTEN TARGET... */
	PH_CLI_SOCKS,   /* socks [LISTEN] */
	PH_CLI_SERVER,  /* server [LISTEN] */
	PH_CLI_EXPOSE,  /* expose LOCAL --via RELAY */
	PH_CLI_LOCAL,   /* local [LISTEN] TARGET --via RELAY */
	PH_CLI_KEYGEN,  /* keygen [-f FILE] */
	PH_CLI_MAP,     /* map [add|del] PORT, map ip|probe|list */
	PH_CLI_RUN,     /* run FILE */
	PH_CLI_STATUS,  /* status [--json] */
	PH_CLI_RELOAD,  /* reload */
	PH_CLI_CHECK,   /* check [HOST:]PORT --via RELAY */
	PH_CLI__NVERBS  /* must stay last */
};

#define PH_CLI_V(v)    (1u << PH_CLI_##v)           /* a verb's bit in ph_cli_opt.verbs */
#define PH_CLI_V_EVERY ((1u << PH_CLI__NVERBS) - 1) /* every command's, and before one */

/* What an option's value is (for help, and for completions). */
enum ph_cli_arg {
	PH_CLI_FLAG = 0, /* no value */
	PH_CLI_UINT,     /* a whole number from min to max */
	PH_CLI_DURATION, /* 500ms, 5s, 2m, 1h (bare: seconds); min and max in ms when set */
	PH_CLI_WORD,     /* one of words[] */
	PH_CLI_STRING,   /* text: a name, a user */
	PH_CLI_FILE,     /* a path */
	PH_CLI_CIDR,     /* an address or a CIDR (client rules) */
	PH_CLI_ADDR,     /* an IP address, or HOST:PORT */
};

/* A word PH_CLI_WORD accepts, and the value it sets. */
struct ph_cli_word {
	const char *word;
	int value;
};

struct ph_cli_ctx;

/* One option; the table in opts.c holds them all, in the order help shows them. */
struct ph_cli_opt {
	const char *name;                /* "--max-conns" */
	const char *alias;               /* "-v", or NULL */
	enum ph_cli_arg arg;             /* what the value is */
	const char *argname;             /* "N", "DUR", "v1|v2" in help; NULL for a flag */
	const struct ph_cli_word *words; /* PH_CLI_WORD: the words, ended by a NULL word */
	unsigned verbs;                  /* PH_CLI_V() of each verb that takes it */
	const char *help;                /* lines of at most 55 characters, '\n' between */
	/* how it is parsed (src/cli/ only) */
	unsigned char obj;           /* enum ph_cli_obj: which struct off is in */
	unsigned char flags;         /* PH_CLI_O_... */
	unsigned short off, size;    /* the field it sets, when set is NULL */
	unsigned long long min, max; /* UINT bounds; DURATION's in ms (max 0: min only) */
	int val;                     /* what a flag stores; a setter's (--allow 1) */
	const char *what;            /* PH_CLI_WORD: the words, in an error message */
	int (*set)(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
	           struct ph_cli_error *e); /* or NULL: the kind's own parse and store */
};

/* A verb's name ("" for PH_CLI_TOP), or NULL past the last verb. */
const char *ph_cli_verb_name(enum ph_cli_verb v);

/*
 * The i-th option verb v takes, in the table's order (so help's), the ones every command
 * takes included; NULL past the last. For completions and for the man page's test.
 */
const struct ph_cli_opt *ph_cli_opt(enum ph_cli_verb v, size_t i);

/* Sets the defaults. */
void ph_config_init(struct ph_config *cfg);

/*
 * Parses argv[0..argc) (the words after `pinhole`) into cfg, adding rules to it.
 * Returns 0, or -EINVAL with e filled (cfg keeps what it had; the caller frees it), or
 * -ENOMEM.
 */
int ph_cli_parse(int argc, char *const *argv, struct ph_config *cfg, struct ph_cli_error *e);

/* Frees the rules. */
void ph_config_free(struct ph_config *cfg);

/*
 * The help text for topic ("" for the overview, "forward", "run"): the verb's prose and
 * its options from the table, made on the first call (main thread), the same pointer
 * after. NULL when unknown.
 */
const char *ph_cli_help(const char *topic);

#endif /* PH_CLI_CLI_H */
