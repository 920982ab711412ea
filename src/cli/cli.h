/*
 * The one grammar: a command line (the words after `pinhole`) becomes a config. A config
 * file line will be the same words, parsed by the same code (DESIGN.md: one grammar).
 */
#ifndef PH_CLI_CLI_H
#define PH_CLI_CLI_H

#include <stdbool.h>
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
};

/* What went wrong, and at which word (an index into the argv given, or -1). */
struct ph_cli_error {
	int argi;
	char msg[320];
};

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

/* The help text for topic ("" for the overview, "forward", "run"). NULL when unknown. */
const char *ph_cli_help(const char *topic);

#endif /* PH_CLI_CLI_H */
