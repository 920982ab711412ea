/*
 * Fuzzes ph_cli_parse(): the input is split on NUL and newline into at most 64 words. A
 * parse either succeeds with no error recorded or fails with -EINVAL, a word index in range
 * and a message; either way ph_config_free() releases everything (ASan checks).
 */
#include "cli/cli.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward/forward.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_WORDS 64

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_cli: %s failed (argc %d, err %d, argi %d: %s)\n",    \
			        #cond, argc, err, e.argi, e.msg);                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *argv[MAX_WORDS + 1];
	struct ph_config cfg;
	struct ph_cli_error e;
	int argc = 0, err = 0;
	char *buf, *w;

	if (size > 16384)
		return 0;
	buf = malloc(size + 1);
	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	w = buf;
	for (size_t i = 0; i <= size && argc < MAX_WORDS; i++) {
		if (i == size || buf[i] == '\0' || buf[i] == '\n') {
			buf[i] = '\0';
			argv[argc++] = w;
			w = buf + i + 1;
		}
	}
	argv[argc] = NULL;

	ph_config_init(&cfg);
	memset(&e, 0x55, sizeof(e)); /* the parser must set both fields */
	err = ph_cli_parse(argc, argv, &cfg, &e);
	CHECK(err == 0 || err == -EINVAL || err == -ENOMEM);
	CHECK(memchr(e.msg, '\0', sizeof(e.msg)) != NULL);
	if (err == 0) {
		CHECK(e.argi == -1 && e.msg[0] == '\0');
		/* local tcp+udp:// is two lines of the relay client */
		CHECK(cfg.nrules <= 1 && cfg.nexpose <= 2);
		for (unsigned i = 0; i < cfg.nexpose && cfg.cmd == PH_CMD_FORWARD; i++) {
			const struct ph_expose_conf *x = cfg.expose[i];

			CHECK(x->via.port != 0 && !x->via.wildcard);
			if (x->kind == PH_EXPOSE_SERVICE)
				CHECK(cfg.nexpose == 1 && x->local.port != 0 &&
				      !x->local.wildcard &&
				      (!x->priv || (x->name[0] != '\0' && x->port == 0)));
			else if (x->kind == PH_EXPOSE_LOCAL)
				CHECK(x->listen.port != 0 && x->target[0] != '\0' &&
				      (cfg.nexpose == 1 ||
				       cfg.expose[0]->udp != cfg.expose[1]->udp));
			else /* socks --via: its socks rule has the channel */
				CHECK(x->kind == PH_EXPOSE_SOCKS && cfg.nexpose == 1 &&
				      cfg.nrules == 1 && cfg.rules[0]->via != NULL);
		}
		/* a relay or an expose rule is a command of its own, with a forward rule none */
		if (cfg.cmd == PH_CMD_FORWARD &&
		    (cfg.server != NULL ||
		     (cfg.nexpose != 0 && cfg.expose[0]->kind != PH_EXPOSE_SOCKS))) {
			CHECK(cfg.nrules == 0 && (cfg.server == NULL || cfg.nexpose == 0));
		} else if (cfg.cmd == PH_CMD_FORWARD) {
			const struct ph_rule *r = cfg.rules[0];

			CHECK(cfg.nrules == 1);
			/* a socks rule's clients name their targets */
			CHECK(r->kind == PH_RULE_SOCKS
			              ? r->ntargets == 0 && r->socks != NULL
			              : r->ntargets >= 1 && r->ntargets <= PH_RULE_MAX_TARGETS);
			CHECK(!r->listen.is_name && r->listen.proto != 0 &&
			      (r->listen.proto & ~(unsigned)(PH_PROTO_TCP | PH_PROTO_UDP)) == 0);
			CHECK(r->connect_timeout > 0);
			/* a target speaks the listener's protocol, or leaves the scheme out */
			for (unsigned i = 0; i < r->ntargets; i++)
				CHECK(!r->targets[i].hp.wildcard &&
				      (!r->targets[i].hp.has_scheme ||
				       r->targets[i].hp.proto == r->listen.proto));
			/* an option of the other protocol is refused */
			CHECK((r->listen.proto & PH_PROTO_UDP) || r->max_sessions == 0);
			CHECK((r->listen.proto & PH_PROTO_UDP) || r->kind == PH_RULE_SOCKS ||
			      r->udp_timeout == 0); /* socks: for UDP ASSOCIATE */
			CHECK((r->listen.proto & PH_PROTO_TCP) ||
			      (r->max_conns == 0 && r->idle_timeout == 0));
		} else {
			CHECK(cfg.nrules == 0);
		}
		/* check, and map --check: a port and a relay to ask */
		if (cfg.cmd == PH_CMD_CHECK)
			CHECK(cfg.relay_check.port != 0 && cfg.relay_check.has_via);
		if (cfg.cmd == PH_CMD_MAP)
			CHECK(cfg.relay_check.on_map == cfg.relay_check.has_via &&
			      (!cfg.relay_check.on_map || cfg.map.verb == PH_MAP_ADD));
		if (cfg.relay_check.has_via)
			CHECK(cfg.relay_check.relay.via.port != 0 &&
			      !cfg.relay_check.relay.via.wildcard);
	} else if (err == -EINVAL) {
		CHECK(e.argi >= -1 && e.argi < argc);
		CHECK(e.msg[0] != '\0');
		CHECK(cfg.nrules == 0);
	}
	ph_config_free(&cfg);
	free(buf);
	return 0;
}
