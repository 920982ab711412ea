/*
 * Every option of every command, declared once: its name, its value, the verbs that take
 * it, the field it sets (or a setter for the ones with logic of their own) and its help.
 * cli.c parses through this table, `pinhole VERB --help` prints it, config lines are
 * parsed by the same code, and tests/unit/test_cli.c holds docs/pinhole.1 to it.
 */
#include "cli/cli-int.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "core/acl.h"
#include "core/addr.h"
#include "core/util.h"
#include "socks/socks.h"
#include "tunnel/msg.h"
#include "tunnel/session.h"
#include "tunnel/tunnel.h"

#define V(v)  PH_CLI_V(v)
#define RULES (V(FORWARD) | V(SOCKS))

/* The field of a struct an option sets. */
#define FIELD(o, type, member)                                                                     \
	.obj = (o), .off = offsetof(type, member), .size = sizeof(((type *)0)->member)

/* -h, --help: the help of the command it follows (cli.c picks the topic). */
static int set_help(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                    struct ph_cli_error *e)
{
	(void)d, (void)v, (void)e;
	x->cfg->cmd = PH_CMD_HELP;
	return 0;
}

static int set_version(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                       struct ph_cli_error *e)
{
	(void)d, (void)v, (void)e;
	x->cfg->cmd = PH_CMD_VERSION;
	return 0;
}

/* --verbose (val 1), --quiet (val -1); -vvq clusters are counted by cli.c. */
static int set_verbosity(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                         struct ph_cli_error *e)
{
	(void)v, (void)e;
	x->cfg->verbosity += d->val;
	return 0;
}

static int set_metrics(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                       struct ph_cli_error *e)
{
	struct ph_hostport hp;
	const char *why;

	(void)d;
	if (ph_hostport_parse(v, &hp, &why) < 0)
		return ph_cli__fail(e, x->argi, "--metrics '%s': %s", v, why);
	if (hp.is_name || hp.proto != PH_PROTO_TCP)
		return ph_cli__fail(e, x->argi,
		                    "--metrics '%s': an address to listen on, as in 127.0.0.1:9100",
		                    v);
	x->cfg->metrics = hp.addr;
	x->cfg->has_metrics = true;
	return 0;
}

/*
 * --allow (val 1), --deny (val 0): a CIDR, or a rinetd pattern (192.168.1.*), into the
 * rule's ACL (forward, socks), the relay's for its visitors (server), or an exposed
 * service's (expose: the relay judges them, so CIDRs only, as many as REGISTER carries).
 */
static int set_acl(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                   struct ph_cli_error *e)
{
	struct ph_acl *acl = x->verb == PH_CLI_EXPOSE ? &x->expose->acl
	                     : x->server != NULL      ? &x->server->acl
	                                              : &x->rule->acl;
	struct ph_cidr c;
	const char *why;

	if (ph_acl_is_pattern(v)) {
		if (x->verb == PH_CLI_EXPOSE)
			return ph_cli__fail(e, x->argi,
			                    "%s '%s': a CIDR (patterns are for forward and server)",
			                    x->name, v);
		if (ph_acl_pattern_check(v, &why) < 0)
			return ph_cli__fail(e, x->argi, "%s '%s': %s", x->name, v, why);
		return ph_acl_add_pattern(acl, d->val, v) < 0 ? -ENOMEM : 0;
	}
	if (x->verb == PH_CLI_EXPOSE && acl->n == PH_EXPOSE_ACL_MAX)
		return ph_cli__fail(e, x->argi, "%s: at most %u --allow/--deny rules", x->name,
		                    PH_EXPOSE_ACL_MAX);
	if (ph_cidr_parse(v, &c, &why) < 0)
		return ph_cli__fail(e, x->argi, "%s '%s': %s", x->name, v, why);
	return ph_acl_add(acl, d->val, &c) < 0 ? -ENOMEM : 0;
}

static int set_accept_proxy(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                            struct ph_cli_error *e)
{
	struct ph_cidr c;
	const char *why;

	(void)d;
	if (ph_cidr_parse(v, &c, &why) < 0)
		return ph_cli__fail(e, x->argi,
		                    "--accept-proxy '%s': %s (the proxies to trust, as CIDRs)", v,
		                    why);
	return ph_acl_add(&x->rule->proxy_from, true, &c) < 0 ? -ENOMEM : 0;
}

static int set_source(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                      struct ph_cli_error *e)
{
	(void)d;
	if (ph_addr_from_literal(v, 0, &x->rule->source) < 0)
		return ph_cli__fail(e, x->argi, "--source '%s': must be an IP address of this host",
		                    v);
	x->rule->has_source = true;
	return 0;
}

/* socks --user NAME:PASS (a proxy user, not the system user of every command's --user) */
static int set_socks_user(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                          struct ph_cli_error *e)
{
	const char *reason;
	int err;

	(void)d;
	if (strchr(v, ':') == NULL)
		return ph_cli__fail(e, x->argi,
		                    "--user '%s': a proxy user is NAME:PASS (to run as another "
		                    "system user, give --user before the command: pinhole --user "
		                    "%s socks ...)",
		                    v, v);
	err = ph_socks_user_add(x->rule->socks, v, &reason);
	if (err == -EINVAL)
		return ph_cli__fail(e, x->argi, "--user: %s", reason);
	return err;
}

static int set_socks_users(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                           struct ph_cli_error *e)
{
	char why[400];
	int err;

	(void)d;
	err = ph_socks_users_load(x->rule->socks, v, why, sizeof(why));
	if (err == -ENOMEM)
		return err;
	if (err < 0)
		return ph_cli__fail(e, x->argi, "--users: %s", why);
	if (x->rule->socks->nusers == 0)
		return ph_cli__fail(e, x->argi, "--users: %s: no users in it", v);
	return 0;
}

/* --allow-dest (val 1), --deny-dest (val 0) */
static int set_socks_dest(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                          struct ph_cli_error *e)
{
	const char *reason;
	int err;

	err = ph_socks_dest_add(x->rule->socks, d->val, v, &reason);
	if (err == -EINVAL)
		return ph_cli__fail(e, x->argi, "%s '%s': %s", x->name, v, reason);
	return err;
}

/* server --ports LO-HI (or one port) */
static int set_ports(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                     struct ph_cli_error *e)
{
	unsigned long long lo, hi;
	char buf[16];
	char *dash;

	(void)d;
	snprintf(buf, sizeof(buf), "%s", v);
	dash = strchr(buf, '-');
	if (dash != NULL)
		*dash = '\0';
	if (strlen(v) >= sizeof(buf) || ph_parse_uint(buf, 1, 65535, &lo) < 0 ||
	    ph_parse_uint(dash != NULL ? dash + 1 : buf, lo, 65535, &hi) < 0)
		return ph_cli__fail(e, x->argi, "--ports '%s': expected LO-HI, as in 20000-20099",
		                    v);
	x->server->port_lo = (uint16_t)lo;
	x->server->port_hi = (uint16_t)hi;
	return 0;
}

static int set_bind(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                    struct ph_cli_error *e)
{
	(void)d;
	if (ph_addr_from_literal(v, 0, &x->server->bind) < 0)
		return ph_cli__fail(e, x->argi, "--bind '%s': an IP address, as in 203.0.113.5", v);
	x->server->has_bind = true;
	return 0;
}

/* expose --via RELAY[:PORT]: the port may be left out (7835) */
static int set_via(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                   struct ph_cli_error *e)
{
	struct ph_expose_conf *c = x->expose;
	char buf[PH_HOST_MAX + 16];
	const char *why;

	(void)d;
	if (c == NULL) /* socks past the relay client lines a process may have */
		return ph_cli__fail(e, x->argi, "--via: at most %u relay client lines",
		                    PH_EXPOSE_MAX);
	snprintf(buf, sizeof(buf), "%s", v);
	if (ph_hostport_parse(buf, &c->via, &why) < 0) {
		snprintf(buf, sizeof(buf), strchr(v, ':') ? "[%s]:%u" : "%s:%u", v, PH_RELAY_PORT);
		if (strlen(v) > PH_HOST_MAX || ph_hostport_parse(buf, &c->via, &why) < 0)
			return ph_cli__fail(e, x->argi, "--via '%s': %s", v, why);
	}
	if (c->via.wildcard || c->via.has_scheme)
		return ph_cli__fail(e, x->argi, "--via '%s': the relay's HOST[:PORT]", v);
	x->have_pos2 = true;
	return 0;
}

static int set_svc_name(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                        struct ph_cli_error *e)
{
	(void)d;
	if (!ph_svc_name_ok(v))
		return ph_cli__fail(e, x->argi, "--name '%s': 1-32 of A-Z a-z 0-9 . _ -", v);
	snprintf(x->expose->name, sizeof(x->expose->name), "%s", v);
	return 0;
}

static int set_relay_key(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                         struct ph_cli_error *e)
{
	(void)d;
	if (strncmp(v, "SHA256:", 7) != 0 || strlen(v) != 7 + 43)
		return ph_cli__fail(e, x->argi,
		                    "--relay-key '%s': the relay's fingerprint, SHA256: and 43 "
		                    "characters, as its log shows it",
		                    v);
	snprintf(x->expose->relay_fp, sizeof(x->expose->relay_fp), "%s", v);
	return 0;
}

static int set_external(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                        struct ph_cli_error *e)
{
	unsigned long long n;

	(void)d;
	if (ph_parse_uint(v, 1, 65535, &n) < 0)
		return ph_cli__fail(e, x->argi, "--external '%s': expected a port from 1 to 65535",
		                    v);
	x->cfg->map.external = (uint16_t)n;
	return 0;
}

static int set_gateway(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                       struct ph_cli_error *e)
{
	struct ph_map_conf *mc = &x->cfg->map;

	(void)d;
	if (ph_addr_from_literal(v, 0, &mc->gateway) < 0 || mc->gateway.u.sa.sa_family != AF_INET)
		return ph_cli__fail(e, x->argi,
		                    "--gateway '%s': the router's IPv4 address, as in 192.168.1.1",
		                    v);
	mc->has_gateway = true;
	return 0;
}

/* keygen -f FILE (max 500), -C COMMENT (max 60, one line): borrowed from argv */
static int set_keygen(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                      struct ph_cli_error *e)
{
	bool file = d->name[2] == 'f';

	if (v[0] == '\0' || strlen(v) > d->max)
		return ph_cli__fail(e, x->argi, "%s must be 1-%llu characters", x->name, d->max);
	if (!file && strpbrk(v, "\n\r\t") != NULL)
		return ph_cli__fail(e, x->argi, "%s: one line, no tabs", x->name);
	if (file)
		x->cfg->key_file = v;
	else
		x->cfg->key_comment = v;
	return 0;
}

/*
 * check's and map --check's --via and --relay-key: expose's own setters, into the relay part
 * of cfg->relay_check (set_via's mark of a --via given is map's PORT mark too: kept as it was).
 */
static int set_check_relay(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                           struct ph_cli_error *e)
{
	struct ph_expose_conf *was = x->expose;
	bool pos2 = x->have_pos2;
	int err;

	x->expose = &x->cfg->relay_check.relay;
	err = d->val ? set_via(x, d, v, e) : set_relay_key(x, d, v, e);
	x->expose = was;
	x->have_pos2 = pos2;
	if (err == 0 && d->val)
		x->cfg->relay_check.has_via = true;
	return err;
}

static const struct ph_cli_word proxy_words[] = {
	{"v1", 1}, {"1", 1}, {"v2", 2}, {"2", 2}, {NULL, 0}};
static const struct ph_cli_word logformat_words[] = {{"rinetd", 0}, {"common", 1}, {NULL, 0}};
static const struct ph_cli_word method_words[] = {
	{"auto", PH_MAP_AUTO},      {"pcp", PH_MAP_PCP},   {"natpmp", PH_MAP_NATPMP},
	{"nat-pmp", PH_MAP_NATPMP}, {"upnp", PH_MAP_UPNP}, {NULL, 0}};

#define HELP_ACL                                                                                   \
	"The first rule that matches wins; with no match,\n"                                       \
	"clients are let in unless some --allow is given. IPv4\n"                                  \
	"and IPv6: 10.0.0.0/8, 192.168.1.7, 2001:db8::/32, ::1,\n"                                 \
	"or a pattern as rinetd has them: 192.168.1.*, 10.0.?.1"

/*
 * The table. Help shows a verb's options in this order: the verb's own first (those of
 * socks before the ones it shares with forward), then, in the overview, every command's.
 * Two entries may share a name when no verb takes both (--max-conns of forward and of
 * expose set different fields, with different bounds).
 */
const struct ph_cli_opt ph_cli__opts[] = {
	/* socks */
	{.name = "--user",
         .arg = PH_CLI_STRING,
         .argname = "NAME:PASS",
         .verbs = V(SOCKS),
         .set = set_socks_user,
         .help = "a proxy user (repeatable): SOCKS5 then asks for a user\n"
                 "name and password (RFC 1929), HTTP for Basic\n"
                 "Proxy-Authorization, and SOCKS4 (no passwords) is\n"
                 "refused. Others can read argv: prefer --users"},
	{.name = "--users",
         .arg = PH_CLI_FILE,
         .argname = "FILE",
         .verbs = V(SOCKS),
         .set = set_socks_users,
         .help = "users from FILE, one NAME:PASS a line, # comments\n"
                 "(read again on reload)"},
	{.name = "--open",
         .arg = PH_CLI_FLAG,
         .verbs = V(SOCKS),
         FIELD(PH_CLI_IN_SOCKS, struct ph_socks_conf, open),
         .val = 1,
         .help = "allow listening on a non-loopback address with no\n"
                 "users: without it that is refused, since an open\n"
                 "proxy is found and abused within hours"},
	{.name = "--allow-dest",
         .arg = PH_CLI_STRING,
         .argname = "X",
         .verbs = V(SOCKS),
         .set = set_socks_dest,
         .val = 1,
         .help = "destinations allowed: a CIDR (10.0.0.0/8), a name and\n"
                 "the names under it (example.com), only the names\n"
                 "under it (*.example.com), or local: this host and its\n"
                 "link (127.0.0.0/8, ::1, 169.254.0.0/16, fe80::/10,\n"
                 "0.0.0.0/8, ::, this host's addresses). Repeatable."},
	{.name = "--deny-dest",
         .arg = PH_CLI_STRING,
         .argname = "X",
         .verbs = V(SOCKS),
         .set = set_socks_dest,
         .val = 0,
         .help = "destinations refused, written the same way. A deny\n"
                 "rule that matches the name or its address always wins;\n"
                 "with allow rules, one of them must match. A rule that\n"
                 "listens beyond loopback refuses local destinations\n"
                 "unless --allow-dest local (or a CIDR holding the\n"
                 "address, not 0.0.0.0/0) lets them through"},
	{.name = "--handshake-timeout",
         .arg = PH_CLI_DURATION,
         .argname = "DUR",
         .verbs = V(SOCKS),
         FIELD(PH_CLI_IN_SOCKS, struct ph_socks_conf, handshake_timeout),
         .min = 1,
         .help = "a client must have sent its request by then (10s)"},

	/* forward, and socks */
	{.name = "--allow",
         .arg = PH_CLI_CIDR,
         .argname = "CIDR",
         .verbs = RULES | V(SERVER) | V(EXPOSE),
         .set = set_acl,
         .val = 1,
         .help = "let clients (a relay's visitors) from CIDR in\n"
                 "(repeatable)"},
	{.name = "--deny",
         .arg = PH_CLI_CIDR,
         .argname = "CIDR",
         .verbs = RULES | V(SERVER) | V(EXPOSE),
         .set = set_acl,
         .val = 0,
         .help = "keep clients from CIDR out (repeatable)\n" HELP_ACL "\n"
                 "(expose: CIDRs only, at most 32; the relay\n"
                 "resets the others as it accepts them)"},
	{.name = "--max-conns",
         .arg = PH_CLI_UINT,
         .argname = "N",
         .verbs = RULES,
         FIELD(PH_CLI_IN_RULE, struct ph_rule, max_conns),
         .min = 1,
         .max = 10000000,
         .flags = PH_CLI_O_TCP,
         .help = "at most N connections at once; more are refused"},
	{.name = "--connect-timeout",
         .arg = PH_CLI_DURATION,
         .argname = "DUR",
         .verbs = RULES,
         FIELD(PH_CLI_IN_RULE, struct ph_rule, connect_timeout),
         .min = 1,
         .flags = PH_CLI_O_TCP,
         .help = "per connect attempt to a target (default 5s)"},
	{.name = "--idle-timeout",
         .arg = PH_CLI_DURATION,
         .argname = "DUR",
         .verbs = RULES,
         FIELD(PH_CLI_IN_RULE, struct ph_rule, idle_timeout),
         .flags = PH_CLI_O_TCP,
         .help = "close a connection idle this long (default: never)"},
	{.name = "--udp-timeout",
         .arg = PH_CLI_DURATION,
         .argname = "DUR",
         .verbs = RULES,
         FIELD(PH_CLI_IN_RULE, struct ph_rule, udp_timeout),
         .min = 1,
         .flags = PH_CLI_O_UDP,
         .help = "end a UDP session (socks: a UDP ASSOCIATE relay) idle\n"
                 "this long (default 60s)"},
	{.name = "--max-sessions",
         .arg = PH_CLI_UINT,
         .argname = "N",
         .verbs = V(FORWARD),
         FIELD(PH_CLI_IN_RULE, struct ph_rule, max_sessions),
         .min = 1,
         .max = 10000000,
         .flags = PH_CLI_O_UDP,
         .help = "at most N UDP sessions at once (default 16384, fewer\n"
                 "if the fd limit is lower); when full, the least\n"
                 "recently used session makes room for a new client"},
	{.name = "--source",
         .arg = PH_CLI_ADDR,
         .argname = "ADDR",
         .verbs = RULES,
         .set = set_source,
         .help = "connect to targets from this local address"},
	{.name = "--proxy-protocol",
         .arg = PH_CLI_WORD,
         .argname = "v1|v2",
         .words = proxy_words,
         .verbs = V(FORWARD),
         FIELD(PH_CLI_IN_RULE, struct ph_rule, proxy_send),
         .what = "v1 or v2",
         .flags = PH_CLI_O_TCP,
         .help = "tell the target who the client is: a PROXY protocol\n"
                 "header before the client's bytes (haproxy's spec)"},
	{.name = "--accept-proxy",
         .arg = PH_CLI_CIDR,
         .argname = "CIDR",
         .verbs = V(FORWARD),
         .set = set_accept_proxy,
         .flags = PH_CLI_O_TCP,
         .help = "clients come through trusted proxies in CIDR (repeat\n"
                 "it) that send a PROXY header (v1 or v2): the client it\n"
                 "names is the one --allow/--deny, logs and\n"
                 "--proxy-protocol see; others are refused"},
	{.name = "--name",
         .arg = PH_CLI_STRING,
         .argname = "NAME",
         .verbs = RULES,
         FIELD(PH_CLI_IN_RULE, struct ph_rule, name),
         .help = "the rule's name in logs, status and metrics"},
	{.name = "--map",
         .arg = PH_CLI_FLAG,
         .verbs = RULES,
         FIELD(PH_CLI_IN_RULE, struct ph_rule, map),
         .val = 1,
         .help = "ask the router (PCP, NAT-PMP, UPnP) to forward the\n"
                 "listen port here for as long as the rule runs (see\n"
                 "map --help)"},

	/* server */
	{.name = "--authorized-keys",
         .arg = PH_CLI_FILE,
         .argname = "FILE",
         .verbs = V(SERVER),
         FIELD(PH_CLI_IN_SERVER, struct ph_server_conf, auth_file),
         .help = "client public keys (`pinhole keygen` lines), one a\n"
                 "line, each with optional limits before it:\n"
                 "  names=web|ssh,ports=20000-20099|443,max=4 ph-ed25519\n"
                 "(default authorized_keys next to the key). The relay\n"
                 "does not start without one."},
	{.name = "--key",
         .arg = PH_CLI_FILE,
         .argname = "FILE",
         .verbs = V(SERVER),
         FIELD(PH_CLI_IN_SERVER, struct ph_server_conf, key_file),
         .help = "the relay's key, made on first start (default\n"
                 "/etc/pinhole/key as root, else ~/.config/pinhole/key);\n"
                 "its fingerprint is logged: clients pin it"},
	{.name = "--ports",
         .arg = PH_CLI_STRING,
         .argname = "LO-HI",
         .verbs = V(SERVER),
         .set = set_ports,
         .help = "the ports handed out when a client asks for any (port\n"
                 "0); explicit ports must be inside too (default: any)"},
	{.name = "--bind",
         .arg = PH_CLI_ADDR,
         .argname = "ADDR",
         .verbs = V(SERVER),
         .set = set_bind,
         .help = "the address public ports listen on (default all)"},
	{.name = "--heartbeat",
         .arg = PH_CLI_DURATION,
         .argname = "DUR",
         .verbs = V(SERVER),
         FIELD(PH_CLI_IN_SERVER, struct ph_server_conf, hb_ms),
         .min = 200,
         .max = 600000,
         .help = "PING interval (default 10s); a client silent for three\n"
                 "is dropped, and its ports freed three later"},

	/* expose */
	{.name = "--via",
         .arg = PH_CLI_ADDR,
         .argname = "RELAY[:PORT]",
         .verbs = V(EXPOSE) | V(LOCAL) | V(SOCKS),
         .set = set_via,
         .help = "the relay (`pinhole server`), port 7835 by default"},
	{.name = "--port",
         .arg = PH_CLI_UINT,
         .argname = "N",
         .verbs = V(EXPOSE),
         FIELD(PH_CLI_IN_EXPOSE, struct ph_expose_conf, port),
         .min = 0,
         .max = 65535,
         .help = "the public port to ask for (default: any; the one given\n"
                 "is logged: 'public at RELAY:PORT')"},
	{.name = "--udp",
         .arg = PH_CLI_FLAG,
         .verbs = V(EXPOSE),
         FIELD(PH_CLI_IN_EXPOSE, struct ph_expose_conf, udp),
         .val = 1,
         .flags = PH_CLI_O_NOEQ,
         .help = "LOCAL is a UDP service: datagrams are carried as such"},
	{.name = "--private",
         .arg = PH_CLI_FLAG,
         .verbs = V(EXPOSE),
         FIELD(PH_CLI_IN_EXPOSE, struct ph_expose_conf, priv),
         .val = 1,
         .flags = PH_CLI_O_NOEQ,
         .help = "no public port: only `pinhole local` clients whose key\n"
                 "the relay grants reach=NAME reach it (needs --name)"},
	{.name = "--name",
         .arg = PH_CLI_STRING,
         .argname = "NAME",
         .verbs = V(EXPOSE),
         .set = set_svc_name,
         .help = "the service's name (a relay may limit a key to names)"},
	{.name = "--max-conns",
         .arg = PH_CLI_UINT,
         .argname = "N",
         .verbs = V(EXPOSE),
         FIELD(PH_CLI_IN_EXPOSE, struct ph_expose_conf, max_conns),
         .min = 1,
         .max = 1000000,
         .help = "visitors at once; the relay resets those past it"},
	{.name = "--proxy-protocol",
         .arg = PH_CLI_WORD,
         .argname = "v1|v2",
         .words = proxy_words,
         .verbs = V(EXPOSE),
         FIELD(PH_CLI_IN_EXPOSE, struct ph_expose_conf, proxy),
         .what = "v1 or v2",
         .help = "tell LOCAL each visitor's address (PROXY protocol)"},
	{.name = "--relay-key",
         .arg = PH_CLI_STRING,
         .argname = "SHA256:...",
         .verbs = V(EXPOSE) | V(LOCAL) | V(SOCKS),
         .set = set_relay_key,
         .help = "the relay's fingerprint; without it the first one\n"
                 "seen is kept in known_relays and a change is refused,\n"
                 "as ssh does"},
	{.name = "--key",
         .arg = PH_CLI_FILE,
         .argname = "FILE",
         .verbs = V(EXPOSE) | V(LOCAL) | V(SOCKS),
         FIELD(PH_CLI_IN_EXPOSE, struct ph_expose_conf, key_file),
         .help = "this client's key, made when missing (default: as\n"
                 "keygen's)"},
	{.name = "--known-relays",
         .arg = PH_CLI_FILE,
         .argname = "FILE",
         .verbs = V(EXPOSE) | V(LOCAL) | V(SOCKS),
         FIELD(PH_CLI_IN_EXPOSE, struct ph_expose_conf, known_file),
         .help = "where first-seen relay keys are kept (default\n"
                 "known_relays next to the key)"},
	{.name = "--heartbeat",
         .arg = PH_CLI_DURATION,
         .argname = "DUR",
         .verbs = V(EXPOSE) | V(LOCAL),
         FIELD(PH_CLI_IN_EXPOSE, struct ph_expose_conf, hb_ms),
         .min = 200,
         .max = 600000,
         .help = "PING interval (default 10s)"},

	/* map */
	{.name = "--tcp",
         .arg = PH_CLI_FLAG,
         .verbs = V(MAP),
         FIELD(PH_CLI_IN_MAP, struct ph_map_conf, protos),
         .val = PH_MAP_TCP,
         .flags = PH_CLI_O_NOEQ,
         .help = "map TCP (the default)"},
	{.name = "--udp",
         .arg = PH_CLI_FLAG,
         .verbs = V(MAP),
         FIELD(PH_CLI_IN_MAP, struct ph_map_conf, protos),
         .val = PH_MAP_UDP,
         .flags = PH_CLI_O_NOEQ,
         .help = "map UDP instead"},
	{.name = "--both",
         .arg = PH_CLI_FLAG,
         .verbs = V(MAP),
         FIELD(PH_CLI_IN_MAP, struct ph_map_conf, protos),
         .val = PH_MAP_TCP | PH_MAP_UDP,
         .flags = PH_CLI_O_NOEQ,
         .help = "map TCP and UDP"},
	{.name = "--external",
         .arg = PH_CLI_UINT,
         .argname = "N",
         .verbs = V(MAP),
         .set = set_external,
         .min = 1,
         .max = 65535,
         .help = "the external port wanted; without it the router picks\n"
                 "(PCP: PREFER_FAILURE, so N or nothing; NAT-PMP: another\n"
                 "port granted is given back and reported)"},
	{.name = "--lifetime",
         .arg = PH_CLI_UINT,
         .argname = "S",
         .verbs = V(MAP),
         FIELD(PH_CLI_IN_MAP, struct ph_map_conf, lifetime),
         .min = 1,
         .max = 0x7fffffff,
         .help = "seconds asked for (default 7200)"},
	{.name = "--method",
         .arg = PH_CLI_WORD,
         .argname = "M",
         .words = method_words,
         .verbs = V(MAP),
         FIELD(PH_CLI_IN_MAP, struct ph_map_conf, method),
         .what = "auto, pcp, natpmp or upnp",
         .help = "auto (default), pcp, natpmp or upnp"},
	{.name = "--gateway",
         .arg = PH_CLI_ADDR,
         .argname = "IP",
         .verbs = V(MAP),
         .set = set_gateway,
         .help = "the router to ask, and the only address whose UPnP\n"
                 "devices and URLs are used (default: the default\n"
                 "route's next hop)"},
	{.name = "--once",
         .arg = PH_CLI_FLAG,
         .verbs = V(MAP),
         FIELD(PH_CLI_IN_MAP, struct ph_map_conf, once),
         .val = 1,
         .flags = PH_CLI_O_NOEQ,
         .help = "map, print, exit (the mapping lives out its lifetime)"},
	{.name = "--keep",
         .arg = PH_CLI_FLAG,
         .verbs = V(MAP),
         FIELD(PH_CLI_IN_MAP, struct ph_map_conf, keep),
         .val = 1,
         .flags = PH_CLI_O_NOEQ,
         .help = "leave the mapping in place when stopped"},

	/* keygen */
	{.name = "--file",
         .alias = "-f",
         .arg = PH_CLI_FILE,
         .argname = "FILE",
         .verbs = V(KEYGEN),
         .set = set_keygen,
         .max = 500,
         .help = "the private key (default /etc/pinhole/key as root, else\n"
                 "~/.config/pinhole/key)"},
	{.name = "--comment",
         .alias = "-C",
         .arg = PH_CLI_STRING,
         .argname = "COMMENT",
         .verbs = V(KEYGEN),
         .set = set_keygen,
         .max = 60,
         .help = "the public key line's comment (one line, 60 at most)"},
	{.name = "--show",
         .arg = PH_CLI_FLAG,
         .verbs = V(KEYGEN),
         FIELD(PH_CLI_IN_CFG, struct ph_config, key_show),
         .val = 1,
         .flags = PH_CLI_O_NOEQ,
         .help = "print the public key of FILE, which must exist"},

	/* run */
	{.name = "--rinetd",
         .arg = PH_CLI_FLAG,
         .verbs = V(RUN),
         FIELD(PH_CLI_IN_CFG, struct ph_config, rinetd),
         .val = 1,
         .flags = PH_CLI_O_NOEQ,
         .help = "FILE is a rinetd.conf, read with rinetd's meaning (also\n"
                 "found out by itself when its first line is a rinetd\n"
                 "rule or allow/deny)"},
	{.name = "--check",
         .arg = PH_CLI_FLAG,
         .verbs = V(RUN),
         FIELD(PH_CLI_IN_CFG, struct ph_config, check),
         .val = 1,
         .flags = PH_CLI_O_NOEQ,
         .help = "check FILE (syntax, addresses, two rules on one\n"
                 "listening address, two rules with one name) and run\n"
                 "nothing: exit 0, or print FILE:LINE: what is wrong,\n"
                 "naming the word, for each problem and exit 2"},

	/* status */
	{.name = "--json",
         .arg = PH_CLI_FLAG,
         .verbs = V(STATUS),
         FIELD(PH_CLI_IN_CFG, struct ph_config, json),
         .val = 1,
         .flags = PH_CLI_O_NOEQ,
         .help = "the status as JSON, for scripts"},

	/* check, and map --check: the relay that tries the port, reached as expose reaches it */
	{.name = "--via",
         .arg = PH_CLI_ADDR,
         .argname = "RELAY[:PORT]",
         .verbs = V(CHECK) | V(MAP),
         .set = set_check_relay,
         .val = 1,
         .help = "the relay (`pinhole server`) that tries the port from\n"
                 "outside, port 7835 by default (map: with --check)"},
	{.name = "--udp",
         .arg = PH_CLI_FLAG,
         .verbs = V(CHECK),
         FIELD(PH_CLI_IN_CHECK, struct ph_check_conf, udp),
         .val = 1,
         .flags = PH_CLI_O_NOEQ,
         .help = "a UDP port: the relay sends it a few datagrams"},
	{.name = "--json",
         .arg = PH_CLI_FLAG,
         .verbs = V(CHECK),
         FIELD(PH_CLI_IN_CFG, struct ph_config, json),
         .val = 1,
         .flags = PH_CLI_O_NOEQ,
         .help = "the result as a JSON object, for scripts"},
	{.name = "--check",
         .arg = PH_CLI_FLAG,
         .verbs = V(MAP),
         FIELD(PH_CLI_IN_CHECK, struct ph_check_conf, on_map),
         .val = 1,
         .flags = PH_CLI_O_NOEQ,
         .help = "once mapped, ask the relay --via names to try the\n"
                 "external port from outside, and print what it found\n"
                 "(see check --help)"},
	{.name = "--relay-key",
         .arg = PH_CLI_STRING,
         .argname = "SHA256:...",
         .verbs = V(CHECK) | V(MAP),
         .set = set_check_relay,
         .val = 0,
         .help = "the relay's fingerprint; without it, known_relays\n"
                 "pins the first one seen, as expose does"},
	{.name = "--key",
         .arg = PH_CLI_FILE,
         .argname = "FILE",
         .verbs = V(CHECK) | V(MAP),
         FIELD(PH_CLI_IN_CHECK, struct ph_check_conf, relay.key_file),
         .help = "this client's key, made when missing (default: as\n"
                 "keygen's); the relay must authorize it"},
	{.name = "--known-relays",
         .arg = PH_CLI_FILE,
         .argname = "FILE",
         .verbs = V(CHECK) | V(MAP),
         FIELD(PH_CLI_IN_CHECK, struct ph_check_conf, relay.known_file),
         .help = "where first-seen relay keys are kept (default\n"
                 "known_relays next to the key)"},

	/* every command's */
	{.name = "--verbose",
         .alias = "-v",
         .arg = PH_CLI_FLAG,
         .verbs = PH_CLI_V_EVERY,
         .flags = PH_CLI_O_COMMON,
         .set = set_verbosity,
         .val = 1,
         .help = "one log line per connection (-vv: every state change)"},
	{.name = "--quiet",
         .alias = "-q",
         .arg = PH_CLI_FLAG,
         .verbs = PH_CLI_V_EVERY,
         .flags = PH_CLI_O_COMMON,
         .set = set_verbosity,
         .val = -1,
         .help = "errors only"},
	{.name = "--workers",
         .arg = PH_CLI_UINT,
         .argname = "N",
         .verbs = PH_CLI_V_EVERY,
         .flags = PH_CLI_O_COMMON,
         FIELD(PH_CLI_IN_CFG, struct ph_config, workers),
         .min = 1,
         .max = 1024,
         .help = "worker threads (default: one per online CPU)"},
	{.name = "--drain-timeout",
         .arg = PH_CLI_DURATION,
         .argname = "DUR",
         .verbs = PH_CLI_V_EVERY,
         .flags = PH_CLI_O_COMMON,
         FIELD(PH_CLI_IN_CFG, struct ph_config, drain_timeout),
         .help = "after SIGTERM/SIGINT, how long live connections may\n"
                 "finish (default 10s); a second signal stops at once"},
	{.name = "--pipe-size",
         .arg = PH_CLI_UINT,
         .argname = "BYTES",
         .verbs = PH_CLI_V_EVERY,
         .flags = PH_CLI_O_COMMON,
         FIELD(PH_CLI_IN_CFG, struct ph_config, pipe_size),
         .min = 4096,
         .max = 1u << 24,
         .help = "splice pipe size (default 1 MiB as root, else 256 KiB)"},
	{.name = "--user",
         .arg = PH_CLI_STRING,
         .argname = "USER",
         .verbs = PH_CLI_V_EVERY & ~V(SOCKS),
         .flags = PH_CLI_O_COMMON,
         FIELD(PH_CLI_IN_CFG, struct ph_config, user),
         .help = "bind the ports as root, then become USER (its groups,\n"
                 "gid and uid) before serving (socks: give it before the\n"
                 "command; after it, --user is a proxy user)"},
	{.name = "--no-sandbox",
         .arg = PH_CLI_FLAG,
         .verbs = PH_CLI_V_EVERY,
         .flags = PH_CLI_O_COMMON,
         FIELD(PH_CLI_IN_CFG, struct ph_config, no_sandbox),
         .val = 1,
         .help = "no seccomp filter once set up (for debugging, or a\n"
                 "platform where it breaks; see docs/SECURITY.md)"},
	{.name = "--pidfile",
         .arg = PH_CLI_FILE,
         .argname = "PATH",
         .verbs = PH_CLI_V_EVERY,
         .flags = PH_CLI_O_COMMON,
         FIELD(PH_CLI_IN_CFG, struct ph_config, pidfile),
         .help = "write the process id to PATH"},
	{.name = "--metrics",
         .arg = PH_CLI_ADDR,
         .argname = "ADDR",
         .verbs = PH_CLI_V_EVERY,
         .flags = PH_CLI_O_COMMON,
         .set = set_metrics,
         .help = "serve Prometheus metrics at http://ADDR/metrics"},
	{.name = "--log-file",
         .arg = PH_CLI_FILE,
         .argname = "PATH",
         .verbs = PH_CLI_V_EVERY,
         .flags = PH_CLI_O_COMMON,
         FIELD(PH_CLI_IN_CFG, struct ph_config, logfile),
         .help = "a line per connection opened, denied, ended, as\n"
                 "rinetd's logfile"},
	{.name = "--log-format",
         .arg = PH_CLI_WORD,
         .argname = "FORMAT",
         .words = logformat_words,
         .verbs = PH_CLI_V_EVERY,
         .flags = PH_CLI_O_COMMON,
         FIELD(PH_CLI_IN_CFG, struct ph_config, logformat),
         .what = "rinetd or common",
         .help = "--log-file's lines: rinetd (the default) or common\n"
                 "(rinetd's logcommon)"},
	{.name = "--control",
         .arg = PH_CLI_FILE,
         .argname = "PATH|none",
         .verbs = PH_CLI_V_EVERY,
         .flags = PH_CLI_O_COMMON,
         FIELD(PH_CLI_IN_CFG, struct ph_config, control),
         .help = "the control socket that status and reload use\n"
                 "(default /run/pinhole.sock as root, else\n"
                 "$XDG_RUNTIME_DIR/pinhole.sock or\n"
                 "/tmp/pinhole-UID/pinhole.sock)"},
	{.name = "--help",
         .alias = "-h",
         .arg = PH_CLI_FLAG,
         .verbs = PH_CLI_V_EVERY,
         .flags = PH_CLI_O_COMMON,
         .set = set_help,
         .help = "this text; `pinhole forward --help` for a command"},
	{.name = "--version",
         .alias = "-V",
         .arg = PH_CLI_FLAG,
         .verbs = PH_CLI_V_EVERY,
         .flags = PH_CLI_O_COMMON,
         .set = set_version,
         .help = "the version"},
};

const size_t ph_cli__nopts = PH_ARRAY_SIZE(ph_cli__opts);
