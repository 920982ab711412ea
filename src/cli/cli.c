/*
 * The one grammar: the words after `pinhole` (or a config file's line) become a config.
 * Options come from the table in opts.c; this file walks the words of a command, hands
 * each option to the table and each other word (addresses, FILE, PORT) to its verb, and
 * prints help: a verb's prose from here, its options from the table.
 */
#include "cli/cli.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-int.h"
#include "conn/via.h"
#include "core/acl.h"
#include "core/addr.h"
#include "core/util.h"
#include "forward/forward.h"
#include "socks/socks.h"
#include "tunnel/msg.h"
#include "tunnel/tunnel.h"

/* A command: its word, its help's prose, and what it does with the words that are not
 * options. */
struct cli_verb {
	const char *name;     /* the command's word; "" for the words before one */
	const char *topic;    /* `--help` after it shows this topic ("" the overview) */
	const char *synopsis; /* the overview's list of commands: the command, */
	const char *summary;  /* and what it does (lines of at most 40 characters) */
	const char *usage;    /* help: the usage lines and the prose before the options */
	const char *after;    /* help: the prose after them (examples); or NULL */
	unsigned not_for;     /* options of these verbs are "not for NAME rules" here */
	/* makes what the words fill in; or NULL. Returns 0, -EINVAL (e) or -ENOMEM. */
	int (*begin)(struct ph_cli_ctx *x, int first, struct ph_cli_error *e);
	/* a word that is not an option (x->argi is its index). Returns 0 or -EINVAL. */
	int (*word)(struct ph_cli_ctx *x, const char *word, struct ph_cli_error *e);
	/* after the last word, unless help or version was asked: checks, adds, sets cmd */
	int (*end)(struct ph_cli_ctx *x, int first, char *const *argv, struct ph_cli_error *e);
};

static const char overview_head[] = "pinhole - port forwarding and NAT traversal\n"
				    "\n"
				    "Usage: pinhole COMMAND [ARGS] [OPTIONS]\n"
				    "\n"
				    "Commands:\n";

static const char overview_mid[] =
	"\n"
	"Addresses:\n"
	"  :8080            port 8080 on every interface, IPv6 and IPv4\n"
	"  0.0.0.0:8080     every IPv4 interface      127.0.0.1:8080   one address\n"
	"  [::]:8080        every IPv6 interface      [::1]:8080       an IPv6 address\n"
	"  db.lan:5432      a host name (targets only; resolved without blocking)\n"
	"  udp://:53        UDP (tcp:// is the default; tcp+udp://:7 is both at once)\n"
	"\n"
	"Options for every command:\n";

static const char overview_tail[] =
	"\n"
	"Durations are written 500ms, 5s, 2m, 1h (a bare number means seconds).\n"
	"Exit status: 0 stopped cleanly, 1 runtime failure (port in use, ...), 2 bad usage.\n";

static const char every_command[] =
	"\n"
	"Every command also takes the options `pinhole --help` lists (-v, -q, --workers,\n"
	"--user, --pidfile, --control, --log-file, --metrics, --no-sandbox, ...).\n";

static const char usage_forward[] =
	"Usage: pinhole forward LISTEN TARGET [TARGET...] [OPTIONS]\n"
	"\n"
	"Accepts TCP connections on LISTEN and relays each one to a TARGET, the job of\n"
	"rinetd, socat TCP-LISTEN:...,fork, redir or haproxy mode tcp. Bytes are moved with\n"
	"splice(2) (zero copy); a FIN is passed on as a FIN, a reset as a reset.\n"
	"\n"
	"With udp://LISTEN, datagrams are forwarded the way a NAT does: each client gets a\n"
	"session with its own socket towards the target, replies go back to that client\n"
	"from the address it wrote to, and an ICMP error from the target ends the session.\n"
	"Datagrams pass whole (up to 65,507 bytes). tcp+udp://LISTEN serves both.\n"
	"\n"
	"With several targets, connections (and UDP sessions) go round robin; a target that\n"
	"refuses or times out is skipped (the connection fails over to the next one) and\n"
	"left alone for a short back-off (1s, doubling to 10s while it keeps failing).\n"
	"--max-conns, --connect-timeout, --idle-timeout, --proxy-protocol and\n"
	"--accept-proxy are for TCP; --udp-timeout and --max-sessions for UDP.\n";

static const char after_forward[] =
	"\n"
	"Examples:\n"
	"  pinhole forward :8080 10.0.0.5:80\n"
	"  pinhole forward 0.0.0.0:2222 192.168.1.10:22 --allow "
	"203.0.113.0/24\n"
	"  pinhole forward [::]:443 web1.lan:443 web2.lan:443 --max-conns "
	"5000\n"
	"  pinhole forward 127.0.0.1:5433 db.internal:5432 --idle-timeout "
	"1h\n"
	"  pinhole forward udp://:5353 10.0.0.2:53 --udp-timeout 30s\n"
	"  pinhole forward tcp+udp://:7 echo.lan:7\n";

static const char usage_socks[] =
	"Usage: pinhole socks [LISTEN] [OPTIONS]\n"
	"\n"
	"A proxy for dynamic forwarding, the job of ssh -D, microsocks or dante: each\n"
	"client names the host it wants and pinhole connects it there. One port speaks\n"
	"SOCKS5 (CONNECT, BIND, UDP ASSOCIATE; IPv4, IPv6 and names), SOCKS4 and SOCKS4a,\n"
	"and HTTP (CONNECT host:port, as browsers and curl use for https, and plain\n"
	"requests written http://host/path). LISTEN defaults to 127.0.0.1:1080.\n"
	"\n"
	"Names are resolved by pinhole (without blocking; cached for their TTL), so the\n"
	"destination rules see the address a name leads to. A target, below, is the\n"
	"destination a client names.\n";

static const char after_socks[] =
	"\n"
	"To drop privileges, give --user USER before the command:\n"
	"  pinhole --user nobody socks :1080 --users /etc/pinhole/users\n"
	"\n"
	"Examples:\n"
	"  pinhole socks                               # 127.0.0.1:1080, no auth\n"
	"  curl --socks5-hostname 127.0.0.1:1080 https://example.com/\n"
	"  pinhole socks :1080 --users /etc/pinhole/socks.users --deny-dest 10.0.0.0/8\n"
	"  pinhole socks --deny-dest local             # ssh -D, but not into this host\n"
	"  pinhole socks 0.0.0.0:3128 --open --allow 192.168.1.0/24\n";

static const char usage_server[] =
	"Usage: pinhole server [LISTEN] [--authorized-keys FILE] [--key FILE] [--ports LO-HI]\n"
	"                      [--bind ADDR] [--heartbeat DUR]\n"
	"\n"
	"The relay. Clients (`pinhole expose`) connect to LISTEN (default :7835) over TLS 1.3,\n"
	"prove their key, and each service they register gets a public port here whose\n"
	"visitors are carried to them. Ports stay with their key while its client\n"
	"reconnects: a restarted client gets the same port back at once.\n";

static const char usage_expose[] =
	"Usage: pinhole expose LOCAL --via RELAY[:PORT] [--port N] [--udp] [--name NAME]\n"
	"                      [--max-conns N] [--proxy-protocol v1|v2] [--relay-key SHA256:...]\n"
	"                      [--key FILE]\n"
	"\n"
	"Publishes the service at LOCAL (HOST:PORT here or on this network) on a relay's\n"
	"public port: what ssh -R, frp and rathole do. The session is made from here, so\n"
	"NATs and firewalls let it out; it is made again forever, with back-off, when it\n"
	"breaks (also when the relay is down at start), and the port is taken back.\n";

static const char after_expose[] =
	"\n"
	"Several expose lines of one `pinhole run FILE` share one session per relay.\n";

static const char usage_local[] =
	"Usage: pinhole local [LISTEN] TARGET --via RELAY[:PORT] [--key FILE]\n"
	"                     [--relay-key SHA256:...]\n"
	"\n"
	"Local forwarding through a relay, the job of ssh -L and frp's stcp visitors: each\n"
	"connection to LISTEN here becomes an encrypted stream to the relay, where TARGET is\n"
	"either NAME, a private service another client offers there (`pinhole expose LOCAL\n"
	"--via RELAY --name NAME --private`: both ends may be behind NATs), or HOST:PORT,\n"
	"which the relay connects to (the name looked up on its side). LISTEN may be left out\n"
	"when TARGET has a port: 127.0.0.1 and that port. The relay's authorized_keys grants\n"
	"it per key: reach=NAME for private services, connect=HOST:PORT for the rest.\n";

static const char after_local[] =
	"\n"
	"Examples:\n"
	"  pinhole local 127.0.0.1:2222 homeserver-ssh --via relay.example.com\n"
	"  pinhole local db.internal:5432 --via relay.example.com   # 127.0.0.1:5432\n"
	"  pinhole local :1100 mail.example.com:110 --via relay.example.com\n";

static const char usage_keygen[] =
	"Usage: pinhole keygen [-f FILE] [-C COMMENT]\n"
	"       pinhole keygen --show [-f FILE]\n"
	"\n"
	"Makes an Ed25519 key pair (OpenSSL) for the relay: the private key goes to FILE\n"
	"(PEM, mode 0600; an existing file is never overwritten), the public key is printed\n"
	"as one line, `ph-ed25519 BASE64 COMMENT`, and its fingerprint (SHA256:...) on\n"
	"stderr. A relay lists its clients' public keys in --authorized-keys; a client pins\n"
	"the relay's fingerprint. --show prints the public key of an existing FILE.\n"
	"\n"
	"FILE defaults to /etc/pinhole/key as root, else ~/.config/pinhole/key (the\n"
	"directory is made, mode 0700).\n";

static const char usage_map[] =
	"Usage: pinhole map [add] PORT [OPTIONS]   forward PORT of the router to this host\n"
	"       pinhole map del PORT [OPTIONS]     delete that mapping\n"
	"       pinhole map ip                     the router's external address\n"
	"       pinhole map probe                  what the router speaks, and its state\n"
	"       pinhole map list                   the router's mappings (UPnP)\n"
	"\n"
	"Asks the gateway (the default route's, or --gateway) to forward its external port to\n"
	"PORT on this host, the job of upnpc and natpmpc. PCP (RFC 6887), NAT-PMP (RFC 6886)\n"
	"and UPnP IGD (SSDP) are asked at once and the best that answers is used, in that\n"
	"order. The mapping, the external\n"
	"address and the lifetime the router granted are printed; then pinhole stays in the\n"
	"foreground, renews the mapping at half its lifetime, maps again when the router\n"
	"restarts (its epoch goes back), and deletes the mapping when stopped (SIGINT,\n"
	"SIGTERM). A second signal stops at once.\n";

static const char after_map[] =
	"\n"
	"Exit status: 0 done; 1 the router refused or nobody answered (the reason is\n"
	"printed); 2 bad usage.\n"
	"\n"
	"Examples:\n"
	"  pinhole map 8080                     # router:8080 or another port -> here:8080\n"
	"  pinhole map 51820 --udp --external 51820 --once\n"
	"  pinhole map ip\n";

static const char usage_check[] =
	"Usage: pinhole check PORT --via RELAY[:PORT] [--udp] [--json] [--relay-key SHA256:...]\n"
	"                     [--key FILE] [--known-relays FILE]\n"
	"\n"
	"Asks a relay (`pinhole server`) to try PORT of this host's public address - the one\n"
	"the relay sees its session come from - from outside: is a port forward, a firewall\n"
	"rule or `pinhole map` really letting the world in? The session is made as expose\n"
	"makes it (the same key, pin and known relays). Prints one line, PROTO/PORT at\n"
	"ADDRESS: RESULT, where RESULT is open (TCP: connected; UDP: an answer came back),\n"
	"closed (TCP: reset; UDP: ICMP port unreachable), filtered (no answer in 3 s, or\n"
	"ICMP unreachable), open|filtered (UDP: no answer and no ICMP: a service that does\n"
	"not answer strangers looks like a firewall that drops) or refused (the relay's\n"
	"reason follows). A relay tries only the address it sees, one check at a time per\n"
	"session and 10 a minute per key. `check HOST:PORT` asks about another address,\n"
	"which the relay refuses, saying why.\n";

static const char after_check[] =
	"\n"
	"Exit status: 0 open; 1 anything else (closed, filtered, open|filtered, refused),\n"
	"or no answer from the relay (the reason is printed); 2 bad usage.\n"
	"\n"
	"Examples:\n"
	"  pinhole check 8080 --via relay.example.net\n"
	"  pinhole check 51820 --udp --via relay.example.net --json\n"
	"  pinhole map 8080 --check --via relay.example.net   # map, then check it\n";

static const char usage_run[] =
	"Usage: pinhole run FILE [--check] [OPTIONS]\n"
	"\n"
	"Runs every rule of FILE. Each line is one command as you would type it after\n"
	"`pinhole`, parsed by the same code as the command line:\n"
	"\n"
	"  # web and DNS for the LAN\n"
	"  forward :80 10.0.0.5:8080 --allow 10.0.0.0/8 --name web\n"
	"  forward udp://:53 10.0.0.2:53 --name dns\n"
	"  include conf.d/*.conf\n"
	"\n"
	"Words are split like a shell does: 'single quotes', \"double quotes\", backslash\n"
	"escapes; # starts a comment; a backslash at the end of a line joins the next one.\n"
	"include PATTERN... reads more files (glob patterns, relative to the file that\n"
	"includes them). Options for every command (--workers, -v, ...) may follow FILE.\n";

static const char after_run[] =
	"\n"
	"SIGHUP reads FILE again: rules whose line is unchanged keep running untouched,\n"
	"removed rules stop accepting and let their connections finish, new rules start\n"
	"(a changed rule on the same listen address takes its listeners over: nothing\n"
	"waiting to be accepted is lost). A bad FILE changes nothing; the log says why.\n"
	"Options given after FILE win over the same options in it.\n";

/* --- the verbs' words that are not options ----------------------------------------------- */

static bool help_or_version(const struct ph_config *cfg)
{
	return cfg->cmd == PH_CMD_HELP || cfg->cmd == PH_CMD_VERSION;
}

static int rule_addr(const char *word, int argi, bool listen, struct ph_hostport *hp,
                     struct ph_cli_error *e)
{
	const char *why;

	if (ph_hostport_parse(word, hp, &why) < 0)
		return ph_cli__fail(e, argi, "%s '%s': %s", listen ? "listen address" : "target",
		                    word, why);
	if (listen && hp->is_name)
		return ph_cli__fail(
			e, argi, "listen address '%s': must be an IP address or :PORT, not a name",
			word);
	if (!listen && hp->wildcard)
		return ph_cli__fail(e, argi, "target '%s': needs a host, as in 127.0.0.1%s", word,
		                    word);
	return 0;
}

static int rule_begin(struct ph_cli_ctx *x, int first, struct ph_cli_error *e)
{
	if (x->cfg->nrules >= PH_CONFIG_MAX_RULES)
		return ph_cli__fail(e, first, "too many rules (at most %d)", PH_CONFIG_MAX_RULES);
	x->rule = ph_forward_rule_new();
	return x->rule == NULL ? -ENOMEM : 0;
}

/* The rule is the config's now. */
static int rule_add(struct ph_cli_ctx *x)
{
	x->cfg->rules[x->cfg->nrules++] = x->rule;
	x->rule = NULL;
	x->cfg->cmd = PH_CMD_FORWARD;
	return 0;
}

/* forward: LISTEN, then the targets */
static int forward_word(struct ph_cli_ctx *x, const char *word, struct ph_cli_error *e)
{
	struct ph_rule *r = x->rule;
	int err;

	if (x->npos++ == 0)
		return rule_addr(word, x->argi, true, &r->listen, e);
	if (r->ntargets >= PH_RULE_MAX_TARGETS)
		return ph_cli__fail(e, x->argi, "target '%s': too many targets (at most %d)", word,
		                    PH_RULE_MAX_TARGETS);
	err = rule_addr(word, x->argi, false, &r->targets[r->ntargets].hp, e);
	if (err == 0)
		x->targ_argi[r->ntargets++] = x->argi;
	return err;
}

static const char *proto_name(unsigned proto)
{
	return proto == PH_PROTO_UDP ? "udp" : proto == PH_PROTO_TCP ? "tcp" : "tcp+udp";
}

/* The rule as a whole: targets speak the listener's protocol, options fit it. */
static int forward_end(struct ph_cli_ctx *x, int first, char *const *argv, struct ph_cli_error *e)
{
	const struct ph_rule *r = x->rule;
	unsigned p = r->listen.proto;
	const int *oa = x->opt_argi;

	if (x->npos == 0)
		return ph_cli__fail(e, first,
		                    "forward: missing LISTEN and TARGET addresses "
		                    "(see pinhole forward --help)");
	if (r->ntargets == 0)
		return ph_cli__fail(e, first,
		                    "forward: missing a TARGET address after LISTEN "
		                    "(see pinhole forward --help)");
	for (unsigned t = 0; t < r->ntargets; t++) {
		const struct ph_hostport *hp = &r->targets[t].hp;

		if (hp->has_scheme && hp->proto != p)
			return ph_cli__fail(e, x->targ_argi[t],
			                    "target '%s': is %s://, but the listen address is "
			                    "%s:// (a target may leave the scheme out)",
			                    argv[x->targ_argi[t]], proto_name(hp->proto),
			                    proto_name(p));
	}
	if (!(p & PH_PROTO_TCP) && oa[0] >= 0)
		return ph_cli__fail(e, oa[0],
		                    "option '%.*s' is for TCP, and this rule is udp:// (UDP "
		                    "sessions have --udp-timeout and --max-sessions)",
		                    (int)strcspn(argv[oa[0]], "="), argv[oa[0]]);
	if (!(p & PH_PROTO_UDP) && oa[1] >= 0)
		return ph_cli__fail(e, oa[1],
		                    "option '%.*s' is for UDP: write the listen address as "
		                    "udp://... or tcp+udp://...",
		                    (int)strcspn(argv[oa[1]], "="), argv[oa[1]]);
	return rule_add(x);
}

static bool is_loopback(const struct ph_hostport *hp)
{
	const struct ph_addr *a = &hp->addr;

	if (hp->wildcard)
		return false;
	if (a->u.sa.sa_family == AF_INET)
		return (ntohl(a->u.in.sin_addr.s_addr) >> 24) == 127;
	return a->u.sa.sa_family == AF_INET6 && IN6_IS_ADDR_LOOPBACK(&a->u.in6.sin6_addr);
}

static int socks_begin(struct ph_cli_ctx *x, int first, struct ph_cli_error *e)
{
	const char *why;
	int err = rule_begin(x, first, e);

	if (err < 0)
		return err;
	x->pos_argi = first;
	/* a client for --via, kept only when --via comes (socks_end) */
	if (x->cfg->nexpose < PH_EXPOSE_MAX) {
		x->expose = malloc(sizeof(*x->expose));
		if (x->expose == NULL)
			return -ENOMEM;
		ph_expose_conf_init(x->expose);
		x->expose->kind = PH_EXPOSE_SOCKS;
		x->cfg->expose[x->cfg->nexpose++] = x->expose;
	}
	x->rule->kind = PH_RULE_SOCKS;
	x->rule->ops = &ph_socks_ops;
	x->rule->socks = ph_socks_conf_new();
	if (x->rule->socks == NULL ||
	    ph_hostport_parse("127.0.0.1:1080", &x->rule->listen, &why) < 0)
		return -ENOMEM;
	return 0;
}

/* socks: [LISTEN] */
static int socks_word(struct ph_cli_ctx *x, const char *word, struct ph_cli_error *e)
{
	int err;

	if (x->npos++ > 0)
		return ph_cli__fail(e, x->argi, "socks: '%s': one LISTEN address only", word);
	x->pos_argi = x->argi;
	err = rule_addr(word, x->argi, true, &x->rule->listen, e);
	if (err == 0 && x->rule->listen.proto != PH_PROTO_TCP)
		err = ph_cli__fail(e, x->argi,
		                   "listen address '%s': a socks proxy listens on TCP (UDP "
		                   "ASSOCIATE opens its UDP ports itself)",
		                   word);
	return err;
}

static int socks_end(struct ph_cli_ctx *x, int first, char *const *argv, struct ph_cli_error *e)
{
	struct ph_rule *r = x->rule;

	(void)first;
	if (r->socks->nusers == 0 && !r->socks->open && !is_loopback(&r->listen))
		return ph_cli__fail(e, x->pos_argi,
		                    "socks: listening on %s with no users would make an open proxy "
		                    "that anyone who reaches it can use (open proxies are found "
		                    "and abused within hours): add --user NAME:PASS or --users "
		                    "FILE, or --open if that is really what you want",
		                    x->npos > 0 ? argv[x->pos_argi] : "127.0.0.1:1080");
	if (r->udp_timeout == 0)
		r->udp_timeout = PH_UDP_TIMEOUT_MS;
	/* a client from elsewhere must not reach this host's own services (127.0.0.1, ::1,
	 * its addresses) nor its link's (169.254.169.254) through the proxy; ssh -D style
	 * users on loopback reach their own services as before */
	r->socks->deny_local = !is_loopback(&r->listen);
	if (x->have_pos2) { /* --via: connections leave from the relay */
		char key[PH_VIA_KEY_MAX];

		if (x->expose == NULL)
			return ph_cli__fail(e, first, "socks: at most %u relay client lines",
			                    PH_EXPOSE_MAX);
		ph_expose_client_key(x->expose, key, sizeof(key));
		r->via = ph_via_get(key);
		if (r->via == NULL)
			return -ENOMEM;
		/* the relay's own loopback is the relay's to judge (connect=) */
		r->socks->deny_local = false;
	} else if (x->expose != NULL) {
		if (x->expose->key_file[0] || x->expose->relay_fp[0] || x->expose->known_file[0])
			return ph_cli__fail(
				e, first,
				"socks: --key, --relay-key and --known-relays are for --via");
		x->cfg->expose[--x->cfg->nexpose] = NULL; /* it was the last one added */
		ph_acl_free(&x->expose->acl);
		free(x->expose);
		x->expose = NULL;
	}
	return rule_add(x);
}

static int server_begin(struct ph_cli_ctx *x, int first, struct ph_cli_error *e)
{
	if (x->cfg->server != NULL)
		return ph_cli__fail(e, first, "server: one relay per process");
	x->server = malloc(sizeof(*x->server));
	if (x->server == NULL)
		return -ENOMEM;
	ph_server_conf_init(x->server);
	x->cfg->server = x->server; /* the config's from here, even when a word is wrong */
	return 0;
}

/* server: [LISTEN] */
static int server_word(struct ph_cli_ctx *x, const char *word, struct ph_cli_error *e)
{
	struct ph_server_conf *c = x->server;
	const char *why;

	if (x->npos++ > 0)
		return ph_cli__fail(e, x->argi, "server: '%s': one LISTEN address only", word);
	if (ph_hostport_parse(word, &c->listen, &why) < 0)
		return ph_cli__fail(e, x->argi, "server: '%s': %s", word, why);
	if (c->listen.proto != PH_PROTO_TCP || c->listen.is_name)
		return ph_cli__fail(e, x->argi, "server: '%s': a TCP address such as :7835", word);
	return 0;
}

/* server, expose: a command of its own, with rules none */
static int tunnel_end(struct ph_cli_ctx *x, int first, char *const *argv, struct ph_cli_error *e)
{
	(void)first, (void)argv, (void)e;
	x->cfg->cmd = PH_CMD_FORWARD;
	return 0;
}

static int expose_begin(struct ph_cli_ctx *x, int first, struct ph_cli_error *e)
{
	if (x->cfg->nexpose == PH_EXPOSE_MAX)
		return ph_cli__fail(e, first, "expose: at most %u expose rules", PH_EXPOSE_MAX);
	x->expose = malloc(sizeof(*x->expose));
	if (x->expose == NULL)
		return -ENOMEM;
	ph_expose_conf_init(x->expose);
	x->cfg->expose[x->cfg->nexpose++] = x->expose; /* the config's, as for server */
	return 0;
}

/* expose: LOCAL */
static int expose_word(struct ph_cli_ctx *x, const char *word, struct ph_cli_error *e)
{
	struct ph_expose_conf *c = x->expose;
	const char *why;

	if (x->npos++ > 0)
		return ph_cli__fail(e, x->argi, "expose: '%s': one LOCAL address only", word);
	if (ph_hostport_parse(word, &c->local, &why) < 0)
		return ph_cli__fail(e, x->argi, "expose: '%s': %s", word, why);
	if (c->local.wildcard)
		return ph_cli__fail(e, x->argi,
		                    "expose: '%s': LOCAL needs a host, as in 127.0.0.1:%u", word,
		                    c->local.port);
	if (c->local.proto == PH_PROTO_UDP)
		c->udp = true;
	else if (c->local.proto != PH_PROTO_TCP)
		return ph_cli__fail(e, x->argi, "expose: '%s': one protocol a rule", word);
	return 0;
}

static int expose_end(struct ph_cli_ctx *x, int first, char *const *argv, struct ph_cli_error *e)
{
	if (x->npos == 0)
		return ph_cli__fail(e, first, "expose: missing LOCAL (see pinhole expose --help)");
	if (!x->have_pos2) /* set by --via */
		return ph_cli__fail(e, first,
		                    "expose: missing --via RELAY (see pinhole expose --help)");
	if (x->expose->udp && x->expose->proxy != 0)
		return ph_cli__fail(e, first, "expose: --proxy-protocol is for TCP services");
	if (x->expose->priv && (x->expose->name[0] == '\0' || x->expose->port != 0))
		return ph_cli__fail(e, first,
		                    "expose: --private is for a service with a --name and no "
		                    "--port (`pinhole local` reaches it by name)");
	return tunnel_end(x, first, argv, e);
}

static int local_begin(struct ph_cli_ctx *x, int first, struct ph_cli_error *e)
{
	int err = expose_begin(x, first, e);

	if (err == 0)
		x->expose->kind = PH_EXPOSE_LOCAL;
	return err;
}

/* local: [LISTEN] TARGET, read at the end (the count says which is which) */
static int local_word(struct ph_cli_ctx *x, const char *word, struct ph_cli_error *e)
{
	if (x->npos == 2)
		return ph_cli__fail(e, x->argi, "local: '%s': LISTEN and TARGET only", word);
	if (x->npos++ == 0)
		x->pos_argi = x->argi;
	else
		x->targ_argi[0] = x->argi;
	return 0;
}

/* local's TARGET: NAME (a private service) or HOST:PORT. */
static int local_target(struct ph_cli_ctx *x, const char *word, int argi, struct ph_cli_error *e)
{
	struct ph_expose_conf *c = x->expose;
	struct ph_hostport hp;
	const char *why;

	if (strchr(word, ':') == NULL && word[0] != '[') {
		if (!ph_svc_name_ok(word))
			return ph_cli__fail(
				e, argi,
				"local: '%s': TARGET is a private service's NAME (1-32 of "
				"A-Z a-z 0-9 . _ -) or HOST:PORT",
				word);
		snprintf(c->target, sizeof(c->target), "%s", word);
		return 0;
	}
	if (ph_hostport_parse(word, &hp, &why) < 0)
		return ph_cli__fail(e, argi, "local: '%s': %s", word, why);
	if (hp.wildcard)
		return ph_cli__fail(
			e, argi, "local: '%s': TARGET is HOST:PORT as the relay reaches it", word);
	snprintf(c->target, sizeof(c->target), "%s", hp.host);
	c->target_port = hp.port;
	if (hp.has_scheme) /* udp://HOST:PORT with no LISTEN: the protocol is the target's */
		c->listen.proto = hp.proto;
	return 0;
}

/* udp:// makes a UDP line, tcp+udp:// two lines (the second a copy, for UDP). */
static int local_protos(struct ph_cli_ctx *x, int first, char *const *argv, struct ph_cli_error *e)
{
	struct ph_expose_conf *c = x->expose, *u;

	if (c->listen.proto == PH_PROTO_UDP)
		c->udp = true;
	if (c->listen.proto == (PH_PROTO_TCP | PH_PROTO_UDP)) {
		if (x->cfg->nexpose == PH_EXPOSE_MAX)
			return ph_cli__fail(e, first, "local: at most %u relay client lines",
			                    PH_EXPOSE_MAX);
		u = malloc(sizeof(*u));
		if (u == NULL)
			return -ENOMEM;
		*u = *c;
		u->acl = (struct ph_acl){0}; /* local takes no --allow: nothing to share */
		u->udp = true;
		u->listen.proto = PH_PROTO_UDP;
		c->listen.proto = PH_PROTO_TCP;
		x->cfg->expose[x->cfg->nexpose++] = u;
	}
	return tunnel_end(x, first, argv, e);
}

static int local_end(struct ph_cli_ctx *x, int first, char *const *argv, struct ph_cli_error *e)
{
	struct ph_expose_conf *c = x->expose;
	int targ = x->npos == 2 ? x->targ_argi[0] : x->pos_argi, err;
	const char *why;

	c->listen.proto = 0;
	if (x->npos == 0)
		return ph_cli__fail(e, first, "local: missing TARGET (see pinhole local --help)");
	if (!x->have_pos2)
		return ph_cli__fail(e, first,
		                    "local: missing --via RELAY (see pinhole local --help)");
	err = local_target(x, argv[targ], targ, e);
	if (err < 0)
		return err;
	if (x->npos == 1) {
		unsigned proto = c->listen.proto != 0 ? c->listen.proto : PH_PROTO_TCP;
		char l[32];

		if (c->target_port == 0)
			return ph_cli__fail(
				e, targ,
				"local: '%s' has no port to listen on: give LISTEN too, as "
				"in pinhole local 127.0.0.1:2222 %s",
				argv[targ], argv[targ]);
		snprintf(l, sizeof(l), "127.0.0.1:%u", c->target_port);
		if (ph_hostport_parse(l, &c->listen, &why) < 0)
			return -EINVAL;
		c->listen.proto = proto;
		return local_protos(x, first, argv, e);
	}
	if (ph_hostport_parse(argv[x->pos_argi], &c->listen, &why) < 0)
		return ph_cli__fail(e, x->pos_argi, "local: '%s': %s", argv[x->pos_argi], why);
	if (c->listen.is_name)
		return ph_cli__fail(e, x->pos_argi, "local: '%s': listen on an address, not a name",
		                    argv[x->pos_argi]);
	return local_protos(x, first, argv, e);
}

/* keygen, status, reload: no words but options */
static int keygen_word(struct ph_cli_ctx *x, const char *word, struct ph_cli_error *e)
{
	return ph_cli__fail(e, x->argi, "keygen: '%s': unexpected (see pinhole keygen --help)",
	                    word);
}

static int keygen_end(struct ph_cli_ctx *x, int first, char *const *argv, struct ph_cli_error *e)
{
	(void)first, (void)argv, (void)e;
	x->cfg->cmd = PH_CMD_KEYGEN;
	return 0;
}

static int map_begin(struct ph_cli_ctx *x, int first, struct ph_cli_error *e)
{
	(void)first, (void)e;
	ph_map_conf_init(&x->cfg->map);
	return 0;
}

/* map: [add|del] PORT, or ip, probe, list */
static int map_word(struct ph_cli_ctx *x, const char *word, struct ph_cli_error *e)
{
	static const struct ph_cli_word verbs[] = {{"add", PH_MAP_ADD},
	                                           {"del", PH_MAP_DEL},
	                                           {"ip", PH_MAP_IP},
	                                           {"probe", PH_MAP_PROBE},
	                                           {"list", PH_MAP_LIST}};
	struct ph_map_conf *mc = &x->cfg->map;
	unsigned long long v;

	for (size_t k = 0; x->npos == 0 && k < PH_ARRAY_SIZE(verbs); k++) {
		if (strcmp(word, verbs[k].word) == 0) {
			mc->verb = (uint8_t)verbs[k].value;
			x->npos++;
			return 0;
		}
	}
	x->npos++;
	if (x->have_pos2 || mc->verb == PH_MAP_IP || mc->verb == PH_MAP_PROBE ||
	    mc->verb == PH_MAP_LIST)
		return ph_cli__fail(e, x->argi, "map: '%s': unexpected (see pinhole map --help)",
		                    word);
	if (ph_parse_uint(word, 1, 65535, &v) < 0)
		return ph_cli__fail(e, x->argi, "map: port '%s': expected a port from 1 to 65535",
		                    word);
	mc->internal = (uint16_t)v;
	x->have_pos2 = true;
	return 0;
}

static int map_end(struct ph_cli_ctx *x, int first, char *const *argv, struct ph_cli_error *e)
{
	struct ph_map_conf *mc = &x->cfg->map;

	(void)argv;
	if ((mc->verb == PH_MAP_ADD || mc->verb == PH_MAP_DEL) && !x->have_pos2)
		return ph_cli__fail(e, first,
		                    "map: missing the PORT to map (see pinhole map --help)");
	if (mc->verb == PH_MAP_DEL && mc->method == PH_MAP_PCP)
		return ph_cli__fail(e, first,
		                    "map del: PCP deletes a mapping only with the secret it was "
		                    "made with; use --method natpmp or upnp (auto tries both)");
	if (x->cfg->relay_check.on_map && !x->cfg->relay_check.has_via)
		return ph_cli__fail(e, first,
		                    "map --check: needs --via RELAY, the relay that tries "
		                    "the mapping from outside");
	if (x->cfg->relay_check.has_via && !x->cfg->relay_check.on_map)
		return ph_cli__fail(e, first, "map: --via is for --check");
	if (x->cfg->relay_check.on_map && mc->verb != PH_MAP_ADD)
		return ph_cli__fail(e, first, "map: --check is for map [add] PORT");
	x->cfg->cmd = PH_CMD_MAP;
	return 0;
}

/* run: FILE */
static int run_word(struct ph_cli_ctx *x, const char *word, struct ph_cli_error *e)
{
	if (x->npos++ > 0)
		return ph_cli__fail(e, x->argi,
		                    "run: '%s': one FILE only (include the others from it)", word);
	x->pos_argi = x->argi;
	return 0;
}

static int run_end(struct ph_cli_ctx *x, int first, char *const *argv, struct ph_cli_error *e)
{
	if (x->npos == 0)
		return ph_cli__fail(e, first, "run: missing FILE (see pinhole run --help)");
	x->cfg->run_file = argv[x->pos_argi];
	x->cfg->cmd = PH_CMD_RUN;
	return 0;
}

static int ask_word(struct ph_cli_ctx *x, const char *word, struct ph_cli_error *e)
{
	return ph_cli__fail(e, x->argi, "%s: '%s': takes no arguments",
	                    x->verb == PH_CLI_STATUS ? "status" : "reload", word);
}

static int ask_end(struct ph_cli_ctx *x, int first, char *const *argv, struct ph_cli_error *e)
{
	(void)first, (void)argv, (void)e;
	x->cfg->cmd = x->verb == PH_CLI_STATUS ? PH_CMD_STATUS : PH_CMD_RELOAD;
	return 0;
}

/* check: PORT, or HOST:PORT (another address: the relay refuses it, and says why) */
static int check_word(struct ph_cli_ctx *x, const char *word, struct ph_cli_error *e)
{
	struct ph_check_conf *c = &x->cfg->relay_check;
	struct ph_hostport hp;
	unsigned long long v;
	const char *why;

	if (x->npos++ > 0)
		return ph_cli__fail(e, x->argi, "check: '%s': one PORT only", word);
	if (ph_parse_uint(word, 1, 65535, &v) == 0) {
		c->port = (uint16_t)v;
		return 0;
	}
	if (ph_hostport_parse(word, &hp, &why) < 0)
		return ph_cli__fail(e, x->argi, "check: '%s': %s", word,
		                    strchr(word, ':') != NULL ? why
		                                              : "expected a port from 1 to 65535");
	if (hp.is_name || hp.wildcard || hp.proto == (PH_PROTO_TCP | PH_PROTO_UDP))
		return ph_cli__fail(e, x->argi, "check: '%s': PORT, or an IP address and port",
		                    word);
	c->port = hp.port;
	c->addr = hp.addr;
	c->udp |= hp.proto == PH_PROTO_UDP;
	return 0;
}

static int check_end(struct ph_cli_ctx *x, int first, char *const *argv, struct ph_cli_error *e)
{
	(void)argv;
	if (x->npos == 0)
		return ph_cli__fail(e, first, "check: missing the PORT (see pinhole check --help)");
	if (!x->cfg->relay_check.has_via)
		return ph_cli__fail(
			e, first,
			"check: missing --via RELAY, the relay that tries the port (see "
			"pinhole check --help)");
	x->cfg->cmd = PH_CMD_CHECK;
	return 0;
}

/* Indexed by enum ph_cli_verb. */
static const struct cli_verb verbs[PH_CLI__NVERBS] = {
	[PH_CLI_TOP] = {.name = "", .topic = ""},
	[PH_CLI_FORWARD] = {.name = "forward",
                            .topic = "forward",
                            .synopsis = "forward LISTEN TARGET [TARGET...]",
                            .summary = "forward TCP connections or UDP datagrams\n"
                                       "from LISTEN to a TARGET",
                            .usage = usage_forward,
                            .after = after_forward,
                            .begin = rule_begin,
                            .word = forward_word,
                            .end = forward_end},
	[PH_CLI_SOCKS] = {.name = "socks",
                          .topic = "socks",
                          .synopsis = "socks [LISTEN]",
                          .summary = "a SOCKS5, SOCKS4a and HTTP proxy: each\n"
                                     "client names where it goes (ssh -D)",
                          .usage = usage_socks,
                          .after = after_socks,
                          .not_for = PH_CLI_V(FORWARD),
                          .begin = socks_begin,
                          .word = socks_word,
                          .end = socks_end},
	[PH_CLI_SERVER] = {.name = "server",
                           .topic = "server",
                           .synopsis = "server [LISTEN]",
                           .summary = "the relay: clients behind NATs publish\n"
                                      "services on its ports (ssh -R, frp)",
                           .usage = usage_server,
                           .begin = server_begin,
                           .word = server_word,
                           .end = tunnel_end},
	[PH_CLI_EXPOSE] = {.name = "expose",
                           .topic = "expose",
                           .synopsis = "expose LOCAL --via RELAY",
                           .summary = "publish LOCAL on a relay's public port",
                           .usage = usage_expose,
                           .after = after_expose,
                           .begin = expose_begin,
                           .word = expose_word,
                           .end = expose_end},
	[PH_CLI_LOCAL] = {.name = "local",
                          .topic = "local",
                          .synopsis = "local [LISTEN] TARGET --via RELAY",
                          .summary = "forward LISTEN here through a relay to a\n"
                                     "private service or HOST:PORT (ssh -L)",
                          .usage = usage_local,
                          .after = after_local,
                          .begin = local_begin,
                          .word = local_word,
                          .end = local_end},
	[PH_CLI_KEYGEN] = {.name = "keygen",
                           .topic = "keygen",
                           .synopsis = "keygen [-f FILE]",
                           .summary = "make a key pair for the relay (server,\n"
                                      "expose); prints the public key",
                           .usage = usage_keygen,
                           .word = keygen_word,
                           .end = keygen_end},
	[PH_CLI_MAP] = {.name = "map",
                        .topic = "map",
                        .synopsis = "map PORT | map ip | map probe",
                        .summary = "ask the home router to forward a port\n"
                                   "here (PCP, NAT-PMP, UPnP), and keep it",
                        .usage = usage_map,
                        .after = after_map,
                        .begin = map_begin,
                        .word = map_word,
                        .end = map_end},
	[PH_CLI_RUN] = {.name = "run",
                        .topic = "run",
                        .synopsis = "run FILE [--check]",
                        .summary = "run the rules of a config file (one\n"
                                   "command a line, as typed after pinhole)",
                        .usage = usage_run,
                        .after = after_run,
                        .word = run_word,
                        .end = run_end},
	[PH_CLI_STATUS] = {.name = "status",
                           .topic = "",
                           .synopsis = "status [--json]",
                           .summary = "what a running pinhole is doing: each\n"
                                      "rule, its connections, bytes, errors",
                           .word = ask_word,
                           .end = ask_end},
	[PH_CLI_RELOAD] = {.name = "reload",
                           .topic = "",
                           .synopsis = "reload",
                           .summary = "a running `pinhole run FILE` reads FILE\n"
                                      "again (as SIGHUP does) and says how it went",
                           .word = ask_word,
                           .end = ask_end},
	[PH_CLI_CHECK] = {.name = "check",
                          .topic = "check",
                          .synopsis = "check PORT --via RELAY",
                          .summary = "ask a relay whether PORT of this host's\n"
                                     "public address is open from outside",
                          .usage = usage_check,
                          .after = after_check,
                          .word = check_word,
                          .end = check_end},
};

/* --- options, through the table ----------------------------------------------------------- */

int ph_cli__fail(struct ph_cli_error *e, int argi, const char *fmt, ...)
{
	va_list ap;

	e->argi = argi;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	return -EINVAL;
}

int ph_cli__uint(struct ph_cli_ctx *x, const char *v, unsigned long long min,
                 unsigned long long max, unsigned long long *out, struct ph_cli_error *e)
{
	if (ph_parse_uint(v, min, max, out) < 0)
		return ph_cli__fail(e, x->argi,
		                    "%s '%s': expected a whole number from %llu to %llu", x->name,
		                    v, min, max);
	return 0;
}

static bool opt_named(const struct ph_cli_opt *d, const char *name)
{
	return strcmp(name, d->name) == 0 || (d->alias != NULL && strcmp(name, d->alias) == 0);
}

/* The option named (or aliased) name that verb v takes, or NULL. */
static const struct ph_cli_opt *opt_find(const char *name, enum ph_cli_verb v)
{
	for (size_t k = 0; k < ph_cli__nopts; k++) {
		if ((ph_cli__opts[k].verbs & (1u << v)) && opt_named(&ph_cli__opts[k], name))
			return &ph_cli__opts[k];
	}
	return NULL;
}

/* Where the field of d is, in what x parses. */
static void *opt_field(const struct ph_cli_ctx *x, const struct ph_cli_opt *d)
{
	char *base;

	switch (d->obj) {
	case PH_CLI_IN_RULE:
		base = (char *)x->rule;
		break;
	case PH_CLI_IN_SOCKS:
		base = (char *)x->rule->socks;
		break;
	case PH_CLI_IN_SERVER:
		base = (char *)x->server;
		break;
	case PH_CLI_IN_EXPOSE:
		base = (char *)x->expose;
		break;
	case PH_CLI_IN_MAP:
		base = (char *)&x->cfg->map;
		break;
	case PH_CLI_IN_CHECK:
		base = (char *)&x->cfg->relay_check;
		break;
	default:
		base = (char *)x->cfg;
		break;
	}
	return base + d->off;
}

/* Stores v in an unsigned (or bool, or int) field of size bytes. */
static void opt_store(void *p, size_t size, unsigned long long v)
{
	uint8_t u8 = (uint8_t)v;
	uint16_t u16 = (uint16_t)v;
	uint32_t u32 = (uint32_t)v;
	uint64_t u64 = v;

	if (size == 1)
		memcpy(p, &u8, 1);
	else if (size == 2)
		memcpy(p, &u16, 2);
	else if (size == 4)
		memcpy(p, &u32, 4);
	else
		memcpy(p, &u64, 8);
}

/* 200 -> "200ms", 600000 -> "10m": a bound, in a message. */
static const char *dur_text(uint64_t ms, char *buf, size_t len)
{
	if (ms % 3600000 == 0)
		snprintf(buf, len, "%lluh", (unsigned long long)(ms / 3600000));
	else if (ms % 60000 == 0)
		snprintf(buf, len, "%llum", (unsigned long long)(ms / 60000));
	else if (ms % 1000 == 0)
		snprintf(buf, len, "%llus", (unsigned long long)(ms / 1000));
	else
		snprintf(buf, len, "%llums", (unsigned long long)ms);
	return buf;
}

/* Sets d's field from v (NULL for a flag), checked as d's kind says. */
static int opt_set(struct ph_cli_ctx *x, const struct ph_cli_opt *d, const char *v,
                   struct ph_cli_error *e)
{
	void *p = d->set == NULL ? opt_field(x, d) : NULL;
	char lo[24], hi[24];
	unsigned long long n;
	uint64_t ms;
	int err;

	if (d->set != NULL)
		return d->set(x, d, v, e);
	if (d->obj == PH_CLI_IN_EXPOSE && x->expose == NULL) /* socks past the client lines */
		return ph_cli__fail(e, x->argi, "%s: at most %u relay client lines", x->name,
		                    PH_EXPOSE_MAX);
	switch (d->arg) {
	case PH_CLI_FLAG:
		opt_store(p, d->size, (unsigned long long)d->val);
		return 0;
	case PH_CLI_UINT:
		err = ph_cli__uint(x, v, d->min, d->max, &n, e);
		if (err == 0)
			opt_store(p, d->size, n);
		return err;
	case PH_CLI_DURATION:
		if (ph_parse_duration(v, &ms) < 0)
			return ph_cli__fail(
				e, x->argi,
				"%s '%s': expected a duration such as 500ms, 5s, 2m, 1h", x->name,
				v);
		if (d->max != 0 && (ms < d->min || ms > d->max))
			return ph_cli__fail(e, x->argi, "%s '%s': from %s to %s", x->name, v,
			                    dur_text(d->min, lo, sizeof(lo)),
			                    dur_text(d->max, hi, sizeof(hi)));
		if (ms < d->min)
			return ph_cli__fail(e, x->argi, "%s must be more than 0", x->name);
		opt_store(p, d->size, ms);
		return 0;
	case PH_CLI_WORD:
		for (const struct ph_cli_word *w = d->words; w->word != NULL; w++) {
			if (strcmp(v, w->word) == 0) {
				opt_store(p, d->size, (unsigned long long)(unsigned)w->value);
				return 0;
			}
		}
		return ph_cli__fail(e, x->argi, "%s '%s': %s", x->name, v, d->what);
	default: /* a string into a char array */
		if (v[0] == '\0' || strlen(v) >= d->size)
			return ph_cli__fail(e, x->argi, "%s must be 1-%zu characters", x->name,
			                    (size_t)d->size - 1);
		memcpy(p, v, strlen(v) + 1);
		return 0;
	}
}

/* An option verb v does not take (or not so written): one of a verb it is "not for", or
 * unknown. Returns -EINVAL. */
static int opt_unknown(enum ph_cli_verb v, const char *name, int argi, struct ph_cli_error *e)
{
	const struct cli_verb *vb = &verbs[v];
	bool not_for = false;

	for (size_t k = 0; k < ph_cli__nopts; k++) {
		const struct ph_cli_opt *d = &ph_cli__opts[k];

		if (!opt_named(d, name))
			continue;
		if (d->verbs & (1u << v)) { /* this verb's, written wrong (--flag=value) */
			not_for = false;
			break;
		}
		not_for |= (d->verbs & vb->not_for) != 0;
	}
	if (not_for)
		return ph_cli__fail(e, argi, "option '%s' is not for %s rules", name, vb->name);
	return ph_cli__fail(e, argi, "unknown option '%s' (see pinhole %s%s--help)", name,
	                    vb->topic, vb->topic[0] ? " " : "");
}

/*
 * The option at argv[*i] ("--x", "--x=v" or "--x v", "-vvq"), for verb x->verb: found in the
 * table, its value taken (*i moves past a value of its own) and set. Returns 0 or -EINVAL.
 */
static int opt_take(struct ph_cli_ctx *x, int argc, char *const *argv, int *i,
                    struct ph_cli_error *e)
{
	const struct ph_cli_opt *d;
	const char *word = argv[*i], *eq = strchr(word, '=');
	size_t len = eq != NULL ? (size_t)(eq - word) : strlen(word);
	const char *v = eq != NULL ? eq + 1 : NULL;
	char name[64];

	if (len >= sizeof(name))
		len = sizeof(name) - 1;
	memcpy(name, word, len);
	name[len] = '\0';
	/* -v, -q, and any cluster of them: -vv, -vvq */
	if (name[1] != '-' && strspn(name + 1, "vq") == len - 1) {
		if (v != NULL) /* -v=1 is no flag written with a value: it was never one */
			return opt_unknown(x->verb, name, *i, e);
		for (const char *c = name + 1; *c != '\0'; c++)
			x->cfg->verbosity += *c == 'v' ? 1 : -1;
		return 0;
	}
	d = opt_find(name, x->verb);
	if (d == NULL || (d->arg == PH_CLI_FLAG && v != NULL && (d->flags & PH_CLI_O_NOEQ)))
		return opt_unknown(x->verb, name, *i, e);
	for (int k = 0; k < 2; k++) {
		if ((d->flags & (k == 0 ? PH_CLI_O_TCP : PH_CLI_O_UDP)) && x->opt_argi[k] < 0)
			x->opt_argi[k] = *i;
	}
	x->name = name;
	x->argi = *i;
	if (d->arg == PH_CLI_FLAG) {
		if (v != NULL)
			return ph_cli__fail(e, *i, "option %s takes no value", name);
		return opt_set(x, d, NULL, e);
	}
	if (v == NULL) {
		if (*i + 1 >= argc)
			return ph_cli__fail(e, *i, "option %s needs a value", name);
		v = argv[++*i];
		x->argi = *i;
	}
	return opt_set(x, d, v, e);
}

/* The words of a command, argv[first] its name. Returns 0, -EINVAL (e) or -ENOMEM. */
static int cli_verb(const struct cli_verb *vb, int argc, char *const *argv, int first,
                    struct ph_config *cfg, struct ph_cli_error *e)
{
	struct ph_cli_ctx x = {.cfg = cfg, .verb = (enum ph_cli_verb)(vb - verbs)};
	int err = 0;

	x.opt_argi[0] = x.opt_argi[1] = -1;
	if (vb->begin != NULL)
		err = vb->begin(&x, first, e);
	for (int i = first + 1; i < argc && err == 0; i++) {
		if (argv[i][0] == '-' && argv[i][1] != '\0') {
			err = opt_take(&x, argc, argv, &i, e);
			if (cfg->cmd == PH_CMD_HELP && cfg->help_topic == NULL && vb->topic[0])
				cfg->help_topic = vb->topic;
			continue;
		}
		x.argi = i;
		err = vb->word(&x, argv[i], e);
	}
	if (err == 0 && !help_or_version(cfg))
		err = vb->end(&x, first, argv, e);
	ph_forward_rule_free(x.rule); /* a rule not added: an error, help or version */
	return err;
}

int ph_cli_parse(int argc, char *const *argv, struct ph_config *cfg, struct ph_cli_error *e)
{
	struct ph_cli_ctx x = {.cfg = cfg, .verb = PH_CLI_TOP};
	int err;

	e->argi = -1;
	e->msg[0] = '\0';
	x.opt_argi[0] = x.opt_argi[1] = -1;
	for (int i = 0; i < argc; i++) {
		const char *word = argv[i];

		if (word[0] == '-' && word[1] != '\0') {
			err = opt_take(&x, argc, argv, &i, e);
			if (err < 0)
				return err;
			continue;
		}
		for (int v = PH_CLI_TOP + 1; v < PH_CLI__NVERBS; v++) {
			if (strcmp(word, verbs[v].name) == 0)
				return cli_verb(&verbs[v], argc, argv, i, cfg, e);
		}
		if (strcmp(word, "help") == 0) {
			cfg->cmd = PH_CMD_HELP;
			cfg->help_topic = i + 1 < argc ? argv[i + 1] : "";
			return 0;
		}
		return ph_cli__fail(e, i, "unknown command '%s' (see pinhole --help)", word);
	}
	return 0;
}

/* --- help, from the table ------------------------------------------------------------------ */

#define HELP_MAX 8192

struct help_buf {
	char *p;
	size_t len;
};

static void help_add(struct help_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void help_add(struct help_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(b->p + b->len, HELP_MAX - b->len, fmt, ap);
	va_end(ap);
	PH_BUG_ON(n < 0 || (size_t)n >= HELP_MAX - b->len); /* HELP_MAX is too small */
	if (n > 0)
		b->len += (size_t)n < HELP_MAX - b->len ? (size_t)n : HELP_MAX - 1 - b->len;
}

/* left, then the lines of text in a column at 2 + width + 1, the first beside left */
static void help_columns(struct help_buf *b, const char *left, int width, const char *text)
{
	size_t n = strcspn(text, "\n");

	if ((int)strlen(left) <= width)
		help_add(b, "  %-*s %.*s\n", width, left, (int)n, text);
	else
		help_add(b, "  %s  %.*s\n", left, (int)n, text);
	while (text[n] == '\n') {
		text += n + 1;
		n = strcspn(text, "\n");
		help_add(b, "%*s%.*s\n", width + 3, "", (int)n, text);
	}
}

/* "  -f, --file FILE       the private key ..." */
static void help_opt(struct help_buf *b, const struct ph_cli_opt *d)
{
	char left[80];

	snprintf(left, sizeof(left), "%s%s%s%s%s", d->alias != NULL ? d->alias : "",
	         d->alias != NULL ? ", " : "", d->name, d->argname != NULL ? " " : "",
	         d->argname != NULL ? d->argname : "");
	help_columns(b, left, 22, d->help);
}

/* The help of verb v (PH_CLI_TOP: the overview) into buf (HELP_MAX bytes). */
static void help_build(enum ph_cli_verb v, char *buf)
{
	struct help_buf b = {.p = buf};
	const struct ph_cli_opt *d;

	buf[0] = '\0';
	if (v == PH_CLI_TOP) {
		help_add(&b, "%s", overview_head);
		for (int k = PH_CLI_TOP + 1; k < PH_CLI__NVERBS; k++)
			help_columns(&b, verbs[k].synopsis, 35, verbs[k].summary);
		help_add(&b, "%s", overview_mid);
		for (size_t i = 0; (d = ph_cli_opt(v, i)) != NULL; i++)
			help_opt(&b, d);
		help_add(&b, "%s", overview_tail);
		return;
	}
	help_add(&b, "%s\nOptions:\n", verbs[v].usage);
	for (size_t i = 0; (d = ph_cli_opt(v, i)) != NULL; i++) {
		if (!(d->flags & PH_CLI_O_COMMON))
			help_opt(&b, d);
	}
	help_add(&b, "%s%s", verbs[v].after != NULL ? verbs[v].after : "", every_command);
}

const char *ph_cli_help(const char *topic)
{
	static char text[PH_CLI__NVERBS][HELP_MAX]; /* made once each, on the main thread */
	enum ph_cli_verb v = PH_CLI__NVERBS;

	if (topic == NULL || topic[0] == '\0')
		v = PH_CLI_TOP;
	for (int k = PH_CLI_TOP + 1; k < PH_CLI__NVERBS && v == PH_CLI__NVERBS; k++) {
		if (verbs[k].usage != NULL && strcmp(topic, verbs[k].topic) == 0)
			v = (enum ph_cli_verb)k;
	}
	if (v == PH_CLI__NVERBS)
		return NULL;
	if (text[v][0] == '\0')
		help_build(v, text[v]);
	return text[v];
}

const char *ph_cli_verb_name(enum ph_cli_verb v)
{
	return (unsigned)v < PH_CLI__NVERBS ? verbs[v].name : NULL;
}

const struct ph_cli_opt *ph_cli_opt(enum ph_cli_verb v, size_t i)
{
	for (size_t k = 0; k < ph_cli__nopts && (unsigned)v < PH_CLI__NVERBS; k++) {
		if ((ph_cli__opts[k].verbs & (1u << v)) && i-- == 0)
			return &ph_cli__opts[k];
	}
	return NULL;
}

void ph_config_init(struct ph_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->drain_timeout = PH_DRAIN_TIMEOUT_MS;
}

void ph_config_free(struct ph_config *cfg)
{
	if (cfg->server != NULL)
		ph_acl_free(&cfg->server->acl);
	free(cfg->server);
	cfg->server = NULL;
	for (unsigned i = 0; i < cfg->nexpose; i++) {
		ph_acl_free(&cfg->expose[i]->acl);
		free(cfg->expose[i]);
	}
	cfg->nexpose = 0;
	for (unsigned i = 0; i < cfg->nrules; i++)
		ph_forward_rule_free(cfg->rules[i]);
	cfg->nrules = 0;
}
