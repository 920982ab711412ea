#include "cli/cli.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/acl.h"
#include "core/addr.h"
#include "core/util.h"
#include "forward/forward.h"
#include "socks/socks.h"
#include "tunnel/msg.h"
#include "tunnel/session.h"

static const char help_overview[] =
	"pinhole - port forwarding and NAT traversal\n"
	"\n"
	"Usage: pinhole COMMAND [ARGS] [OPTIONS]\n"
	"\n"
	"Commands:\n"
	"  forward LISTEN TARGET [TARGET...]   forward TCP connections or UDP datagrams\n"
	"                                      from LISTEN to a TARGET\n"
	"  socks [LISTEN]                      a SOCKS5, SOCKS4a and HTTP proxy: each\n"
	"                                      client names where it goes (ssh -D)\n"
	"  server [LISTEN]                     the relay: clients behind NATs publish\n"
	"                                      services on its ports (ssh -R, frp)\n"
	"  expose LOCAL --via RELAY            publish LOCAL on a relay's public port\n"
	"  keygen [-f FILE]                    make a key pair for the relay (server,\n"
	"                                      expose); prints the public key\n"
	"  map PORT | map ip | map probe       ask the home router to forward a port\n"
	"                                      here (PCP, NAT-PMP, UPnP), and keep it\n"
	"  run FILE [--check]                  run the rules of a config file (one\n"
	"                                      command a line, as typed after pinhole)\n"
	"  status [--json]                     what a running pinhole is doing: each\n"
	"                                      rule, its connections, bytes, errors\n"
	"  reload                              a running `pinhole run FILE` reads FILE\n"
	"                                      again (as SIGHUP does) and says how it went\n"
	"\n"
	"Addresses:\n"
	"  :8080            port 8080 on every interface, IPv6 and IPv4\n"
	"  0.0.0.0:8080     every IPv4 interface      127.0.0.1:8080   one address\n"
	"  [::]:8080        every IPv6 interface      [::1]:8080       an IPv6 address\n"
	"  db.lan:5432      a host name (targets only; resolved without blocking)\n"
	"  udp://:53        UDP (tcp:// is the default; tcp+udp://:7 is both at once)\n"
	"\n"
	"Options for every command:\n"
	"  -v, --verbose          one log line per connection (-vv: every state change)\n"
	"  -q, --quiet            errors only\n"
	"  --workers N            worker threads (default: one per online CPU)\n"
	"  --drain-timeout DUR    after SIGTERM/SIGINT, how long live connections may\n"
	"                         finish (default 10s); a second signal stops at once\n"
	"  --pipe-size BYTES      splice pipe size (default 1 MiB as root, else 256 KiB)\n"
	"  --user USER            bind the ports as root, then become USER (its groups,\n"
	"                         gid and uid) before serving\n"
	"  --no-sandbox           no seccomp filter once set up (for debugging, or a\n"
	"                         platform where it breaks; see docs/SECURITY.md)\n"
	"  --pidfile PATH         write the process id to PATH\n"
	"  --metrics ADDR         serve Prometheus metrics at http://ADDR/metrics\n"
	"  --log-file PATH        a line per connection opened, denied, ended, as\n"
	"                         rinetd's logfile (--log-format common: logcommon)\n"
	"  --control PATH|none    the control socket that status and reload use\n"
	"                         (default /run/pinhole.sock as root, else\n"
	"                         $XDG_RUNTIME_DIR/pinhole.sock or\n"
	"                         /tmp/pinhole-UID/pinhole.sock)\n"
	"  -h, --help             this text; `pinhole forward --help` for a command\n"
	"  -V, --version          the version\n"
	"\n"
	"Durations are written 500ms, 5s, 2m, 1h (a bare number means seconds).\n"
	"Exit status: 0 stopped cleanly, 1 runtime failure (port in use, ...), 2 bad usage.\n";

static const char help_forward[] =
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
	"\n"
	"Options:\n"
	"  --allow CIDR           let clients from CIDR in (repeatable)\n"
	"  --deny CIDR            keep clients from CIDR out (repeatable)\n"
	"                         The first rule that matches wins; with no match, clients\n"
	"                         are let in unless some --allow is given. IPv4 and IPv6:\n"
	"                         10.0.0.0/8, 192.168.1.7, 2001:db8::/32, ::1, or a\n"
	"                         pattern as rinetd has them: 192.168.1.*, 10.0.?.1\n"
	"  --max-conns N          at most N connections at once; more are refused\n"
	"  --connect-timeout DUR  per connect attempt to a target (default 5s)\n"
	"  --idle-timeout DUR     close a connection idle this long (default: never)\n"
	"  --udp-timeout DUR      end a UDP session idle this long (default 60s)\n"
	"  --max-sessions N       at most N UDP sessions at once (default 16384, fewer\n"
	"                         if the fd limit is lower); when full, the least\n"
	"                         recently used session makes room for a new client\n"
	"  --source ADDR          connect to targets from this local address\n"
	"  --proxy-protocol v1|v2 tell the target who the client is: a PROXY protocol\n"
	"                         header before the client's bytes (haproxy's spec)\n"
	"  --accept-proxy CIDR    clients come through trusted proxies in CIDR (repeat\n"
	"                         it) that send a PROXY header (v1 or v2): the client it\n"
	"                         names is the one --allow/--deny, logs and\n"
	"                         --proxy-protocol see; others are refused\n"
	"  --name NAME            the rule's name in logs\n"
	"  --map                  ask the router (PCP, NAT-PMP, UPnP) to forward the listen\n"
	"                         port here for as long as the rule runs (see map --help)\n"
	"\n"
	"Examples:\n"
	"  pinhole forward :8080 10.0.0.5:80\n"
	"  pinhole forward 0.0.0.0:2222 192.168.1.10:22 --allow 203.0.113.0/24\n"
	"  pinhole forward [::]:443 web1.lan:443 web2.lan:443 --max-conns 5000\n"
	"  pinhole forward 127.0.0.1:5433 db.internal:5432 --idle-timeout 1h\n"
	"  pinhole forward udp://:5353 10.0.0.2:53 --udp-timeout 30s\n"
	"  pinhole forward tcp+udp://:7 echo.lan:7\n";

static const char help_socks[] =
	"Usage: pinhole socks [LISTEN] [OPTIONS]\n"
	"\n"
	"A proxy for dynamic forwarding, the job of ssh -D, microsocks or dante: each\n"
	"client names the host it wants and pinhole connects it there. One port speaks\n"
	"SOCKS5 (CONNECT, BIND, UDP ASSOCIATE; IPv4, IPv6 and names), SOCKS4 and SOCKS4a,\n"
	"and HTTP (CONNECT host:port, as browsers and curl use for https, and plain\n"
	"requests written http://host/path). LISTEN defaults to 127.0.0.1:1080.\n"
	"\n"
	"Names are resolved by pinhole (without blocking; cached for their TTL), so the\n"
	"destination rules see the address a name leads to.\n"
	"\n"
	"Options:\n"
	"  --user NAME:PASS       a proxy user (repeatable): SOCKS5 then asks for a user\n"
	"                         name and password (RFC 1929), HTTP for Basic\n"
	"                         Proxy-Authorization, and SOCKS4 (no passwords) is\n"
	"                         refused. Others can read argv: prefer --users\n"
	"  --users FILE           users from FILE, one NAME:PASS a line, # comments\n"
	"                         (read again on reload)\n"
	"  --open                 allow listening on a non-loopback address with no\n"
	"                         users: without it that is refused, since an open\n"
	"                         proxy is found and abused within hours\n"
	"  --allow-dest X         destinations allowed: a CIDR (10.0.0.0/8), a name and\n"
	"                         the names under it (example.com), only the names\n"
	"                         under it (*.example.com), or local: this host and its\n"
	"                         link (127.0.0.0/8, ::1, 169.254.0.0/16, fe80::/10,\n"
	"                         0.0.0.0/8, ::, this host's addresses). Repeatable.\n"
	"  --deny-dest X          destinations refused, written the same way. A deny\n"
	"                         rule that matches the name or its address always wins;\n"
	"                         with allow rules, one of them must match. A rule that\n"
	"                         listens beyond loopback refuses local destinations\n"
	"                         unless --allow-dest local (or a CIDR holding the\n"
	"                         address, not 0.0.0.0/0) lets them through\n"
	"  --allow CIDR, --deny CIDR   clients let in or kept out (as for forward)\n"
	"  --max-conns N          at most N clients at once\n"
	"  --handshake-timeout DUR  a client must have sent its request by then (10s)\n"
	"  --connect-timeout DUR  per connect attempt to a destination (default 5s)\n"
	"  --idle-timeout DUR     close a connection idle this long (default: never)\n"
	"  --udp-timeout DUR      end a UDP ASSOCIATE relay idle this long (60s)\n"
	"  --source ADDR          connect to destinations from this local address\n"
	"  --name NAME            the rule's name in logs, status and metrics\n"
	"  --map                  ask the router to forward the listen port here\n"
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

static const char help_map[] =
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
	"SIGTERM). A second signal stops at once.\n"
	"\n"
	"Options:\n"
	"  --tcp, --udp, --both   the protocol(s) to map (default tcp)\n"
	"  --external N           the external port wanted; without it the router picks\n"
	"                         (PCP: PREFER_FAILURE, so N or nothing; NAT-PMP: another\n"
	"                         port granted is given back and reported)\n"
	"  --lifetime S           seconds asked for (default 7200)\n"
	"  --method M             auto (default), pcp, natpmp or upnp\n"
	"  --gateway IP           the router to ask, and the only address whose UPnP\n"
	"                         devices and URLs are used (default: the default\n"
	"                         route's next hop)\n"
	"  --once                 map, print, exit (the mapping lives out its lifetime)\n"
	"  --keep                 leave the mapping in place when stopped\n"
	"\n"
	"Exit status: 0 done; 1 the router refused or nobody answered (the reason is\n"
	"printed); 2 bad usage.\n"
	"\n"
	"Examples:\n"
	"  pinhole map 8080                     # router:8080 or another port -> here:8080\n"
	"  pinhole map 51820 --udp --external 51820 --once\n"
	"  pinhole map ip\n";

static const char help_keygen[] =
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

static const char help_server[] =
	"Usage: pinhole server [LISTEN] [--authorized-keys FILE] [--key FILE] [--ports RANGE]\n"
	"                      [--bind ADDR] [--heartbeat DUR] [--allow CIDR] [--deny CIDR]\n"
	"\n"
	"The relay. Clients (`pinhole expose`) connect to LISTEN (default :7835) over TLS 1.3,\n"
	"prove their key, and each service they register gets a public port here whose\n"
	"visitors are carried to them. Ports stay with their key while its client\n"
	"reconnects: a restarted client gets the same port back at once.\n"
	"\n"
	"  --authorized-keys FILE  client public keys (`pinhole keygen` lines), one a line,\n"
	"                          each with optional limits before it:\n"
	"                            names=web|ssh,ports=20000-20099|443,max=4 ph-ed25519 ...\n"
	"                          (default authorized_keys next to the key). The relay\n"
	"                          does not start without one.\n"
	"  --key FILE              the relay's key, made on first start (default\n"
	"                          /etc/pinhole/key as root, else ~/.config/pinhole/key);\n"
	"                          its fingerprint is logged: clients pin it\n"
	"  --ports LO-HI           the ports handed out when a client asks for any (port\n"
	"                          0); explicit ports must be inside too (default: any)\n"
	"  --bind ADDR             the address public ports listen on (default all)\n"
	"  --heartbeat DUR         PING interval (default 10s); a client silent for three\n"
	"                          is dropped, and its ports freed three later\n"
	"  --allow CIDR            visitors of every public port this relay hands out that\n"
	"  --deny CIDR             may come in (repeatable, first match wins; with any\n"
	"                          --allow, others are refused); refused ones are reset\n";

static const char help_expose[] =
	"Usage: pinhole expose LOCAL --via RELAY[:PORT] [--port N] [--udp] [--name NAME]\n"
	"                      [--max-conns N] [--proxy-protocol v1|v2] [--relay-key SHA256:...]\n"
	"                      [--key FILE] [--allow CIDR] [--deny CIDR]\n"
	"\n"
	"Publishes the service at LOCAL (HOST:PORT here or on this network) on a relay's\n"
	"public port: what ssh -R, frp and rathole do. The session is made from here, so\n"
	"NATs and firewalls let it out; it is made again forever, with back-off, when it\n"
	"breaks (also when the relay is down at start), and the port is taken back.\n"
	"\n"
	"  --via RELAY[:PORT]      the relay (`pinhole server`), port 7835 by default\n"
	"  --port N                the public port to ask for (default: any; the one given\n"
	"                          is logged: 'public at RELAY:PORT')\n"
	"  --udp                   LOCAL is a UDP service: datagrams are carried as such\n"
	"  --name NAME             the service's name (a relay may limit a key to names)\n"
	"  --max-conns N           visitors at once; the relay resets those past it\n"
	"  --allow CIDR            visitors that may come in; --deny CIDR those that may\n"
	"  --deny CIDR             not (repeatable, at most 32, first match wins; with any\n"
	"                          --allow, others are refused): the relay resets the\n"
	"                          others as it accepts them\n"
	"  --proxy-protocol v1|v2  tell LOCAL each visitor's address (PROXY protocol)\n"
	"  --relay-key SHA256:...  the relay's fingerprint; without it the first one seen is\n"
	"                          kept in known_relays and a change is refused, as ssh does\n"
	"  --key FILE              this client's key, made when missing (default as keygen)\n"
	"  --known-relays FILE     where first-seen relay keys are kept (default\n"
	"                          known_relays next to the key)\n"
	"  --heartbeat DUR         PING interval (default 10s)\n"
	"\n"
	"Several expose lines of one `pinhole run FILE` share one session per relay.\n";

static const char help_run[] =
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
	"includes them). Options for every command (--workers, -v, ...) may follow FILE.\n"
	"\n"
	"Options:\n"
	"  --rinetd   FILE is a rinetd.conf, read with rinetd's meaning (also found out\n"
	"             by itself when its first line is a rinetd rule or allow/deny)\n"
	"  --check    check FILE (syntax, addresses, two rules on one listening address,\n"
	"             two rules with one name) and run nothing: exit 0, or print\n"
	"             FILE:LINE: what is wrong, naming the word, for each problem and\n"
	"             exit 2\n"
	"\n"
	"SIGHUP reads FILE again: rules whose line is unchanged keep running untouched,\n"
	"removed rules stop accepting and let their connections finish, new rules start\n"
	"(a changed rule on the same listen address takes its listeners over: nothing\n"
	"waiting to be accepted is lost). A bad FILE changes nothing; the log says why.\n"
	"Options given after FILE win over the same options in it.\n";

const char *ph_cli_help(const char *topic)
{
	if (topic == NULL || topic[0] == '\0')
		return help_overview;
	if (strcmp(topic, "forward") == 0)
		return help_forward;
	if (strcmp(topic, "run") == 0)
		return help_run;
	if (strcmp(topic, "socks") == 0)
		return help_socks;
	if (strcmp(topic, "map") == 0)
		return help_map;
	if (strcmp(topic, "server") == 0)
		return help_server;
	if (strcmp(topic, "expose") == 0)
		return help_expose;
	if (strcmp(topic, "keygen") == 0)
		return help_keygen;
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

static int cli_fail(struct ph_cli_error *e, int argi, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int cli_fail(struct ph_cli_error *e, int argi, const char *fmt, ...)
{
	va_list ap;

	e->argi = argi;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* An option word and its value: "--x=v" or "--x v". */
struct cli_opt {
	char name[64];
	const char *value; /* NULL until taken */
	bool inline_value;
};

static void opt_split(const char *word, struct cli_opt *o)
{
	const char *eq = strchr(word, '=');
	size_t n = eq != NULL ? (size_t)(eq - word) : strlen(word);

	if (n >= sizeof(o->name))
		n = sizeof(o->name) - 1;
	memcpy(o->name, word, n);
	o->name[n] = '\0';
	o->value = eq != NULL ? eq + 1 : NULL;
	o->inline_value = eq != NULL;
}

/* Takes the option's value: inline, or the next word. Returns 0 or -EINVAL. */
static int opt_value(int argc, char *const *argv, int *i, struct cli_opt *o, struct ph_cli_error *e)
{
	if (o->inline_value)
		return 0;
	if (*i + 1 >= argc)
		return cli_fail(e, *i, "option %s needs a value", o->name);
	o->value = argv[++*i];
	return 0;
}

static int opt_uint(const struct cli_opt *o, int argi, unsigned long long min,
                    unsigned long long max, unsigned long long *out, struct ph_cli_error *e)
{
	if (ph_parse_uint(o->value, min, max, out) < 0)
		return cli_fail(e, argi, "%s '%s': expected a whole number from %llu to %llu",
		                o->name, o->value, min, max);
	return 0;
}

static int opt_duration(const struct cli_opt *o, int argi, uint64_t *out, struct ph_cli_error *e)
{
	if (ph_parse_duration(o->value, out) < 0)
		return cli_fail(e, argi, "%s '%s': expected a duration such as 500ms, 5s, 2m, 1h",
		                o->name, o->value);
	return 0;
}

/* Options every command takes. Returns 1 when o was one of them, 0 when not, or -errno. */
static int cli_global_opt(int argc, char *const *argv, int *i, struct cli_opt *o,
                          struct ph_config *cfg, struct ph_cli_error *e)
{
	static const char *const flags[] = {"-h",        "--help",  "-V",          "--version",
	                                    "--verbose", "--quiet", "--no-sandbox"};
	unsigned long long v;
	int err;

	for (size_t k = 0; k < PH_ARRAY_SIZE(flags); k++) {
		if (o->inline_value && strcmp(o->name, flags[k]) == 0)
			return cli_fail(e, *i, "option %s takes no value", o->name);
	}
	if (strcmp(o->name, "-h") == 0 || strcmp(o->name, "--help") == 0) {
		cfg->cmd = PH_CMD_HELP;
		return 1;
	}
	if (strcmp(o->name, "-V") == 0 || strcmp(o->name, "--version") == 0) {
		cfg->cmd = PH_CMD_VERSION;
		return 1;
	}
	if (strcmp(o->name, "--verbose") == 0) {
		cfg->verbosity++;
		return 1;
	}
	if (strcmp(o->name, "--no-sandbox") == 0) {
		cfg->no_sandbox = true;
		return 1;
	}
	if (strcmp(o->name, "--quiet") == 0) {
		cfg->verbosity--;
		return 1;
	}
	if (o->name[0] == '-' && o->name[1] != '-' && o->name[1] != '\0' && !o->inline_value &&
	    strspn(o->name + 1, "vq") == strlen(o->name + 1)) {
		for (const char *p = o->name + 1; *p != '\0'; p++)
			cfg->verbosity += *p == 'v' ? 1 : -1;
		return 1;
	}
	if (strcmp(o->name, "--workers") == 0) {
		err = opt_value(argc, argv, i, o, e);
		if (err == 0)
			err = opt_uint(o, *i, 1, 1024, &v, e);
		if (err < 0)
			return err;
		cfg->workers = (unsigned)v;
		return 1;
	}
	if (strcmp(o->name, "--drain-timeout") == 0) {
		err = opt_value(argc, argv, i, o, e);
		if (err == 0)
			err = opt_duration(o, *i, &cfg->drain_timeout, e);
		return err < 0 ? err : 1;
	}
	if (strcmp(o->name, "--log-format") == 0) {
		err = opt_value(argc, argv, i, o, e);
		if (err < 0)
			return err;
		if (strcmp(o->value, "rinetd") == 0)
			cfg->logformat = 0;
		else if (strcmp(o->value, "common") == 0)
			cfg->logformat = 1;
		else
			return cli_fail(e, *i, "--log-format '%s': rinetd or common", o->value);
		return 1;
	}
	if (strcmp(o->name, "--user") == 0 || strcmp(o->name, "--pidfile") == 0 ||
	    strcmp(o->name, "--control") == 0 || strcmp(o->name, "--log-file") == 0) {
		bool user = o->name[2] == 'u', pid = o->name[2] == 'p', log = o->name[2] == 'l';
		char *dst = user  ? cfg->user
		            : pid ? cfg->pidfile
		            : log ? cfg->logfile
		                  : cfg->control;
		size_t cap = user  ? sizeof(cfg->user)
		             : pid ? sizeof(cfg->pidfile)
		             : log ? sizeof(cfg->logfile)
		                   : sizeof(cfg->control);

		err = opt_value(argc, argv, i, o, e);
		if (err < 0)
			return err;
		if (o->value[0] == '\0' || strlen(o->value) >= cap)
			return cli_fail(e, *i, "%s must be 1-%zu characters", o->name, cap - 1);
		snprintf(dst, cap, "%s", o->value);
		return 1;
	}
	if (strcmp(o->name, "--metrics") == 0) {
		struct ph_hostport hp;
		const char *why;

		err = opt_value(argc, argv, i, o, e);
		if (err < 0)
			return err;
		if (ph_hostport_parse(o->value, &hp, &why) < 0)
			return cli_fail(e, *i, "--metrics '%s': %s", o->value, why);
		if (hp.is_name || hp.proto != PH_PROTO_TCP)
			return cli_fail(e, *i,
			                "--metrics '%s': an address to listen on, as in "
			                "127.0.0.1:9100",
			                o->value);
		cfg->metrics = hp.addr;
		cfg->has_metrics = true;
		return 1;
	}
	if (strcmp(o->name, "--pipe-size") == 0) {
		err = opt_value(argc, argv, i, o, e);
		if (err == 0)
			err = opt_uint(o, *i, 4096, 1u << 24, &v, e);
		if (err < 0)
			return err;
		cfg->pipe_size = (unsigned)v;
		return 1;
	}
	return 0;
}

/*
 * An option the command itself does not know: one of every command's (cfg), or an error
 * pointing at `pinhole TOPIC --help`. --help names TOPIC. Returns 0 or -EINVAL.
 */
static int cli_common_opt(int argc, char *const *argv, int *i, struct cli_opt *o,
                          struct ph_config *cfg, const char *topic, struct ph_cli_error *e)
{
	int err = cli_global_opt(argc, argv, i, o, cfg, e);

	if (err < 0)
		return err;
	if (err == 0)
		return cli_fail(e, *i, "unknown option '%s' (see pinhole %s%s--help)", o->name,
		                topic, topic[0] ? " " : "");
	if (cfg->cmd == PH_CMD_HELP && cfg->help_topic == NULL && topic[0] != '\0')
		cfg->help_topic = topic;
	return 0;
}

static int cli_acl(struct ph_acl *acl, bool allow, const struct cli_opt *o, int argi,
                   struct ph_cli_error *e)
{
	struct ph_cidr c;
	const char *why;

	if (ph_acl_is_pattern(o->value)) {
		if (ph_acl_pattern_check(o->value, &why) < 0)
			return cli_fail(e, argi, "%s '%s': %s", o->name, o->value, why);
		return ph_acl_add_pattern(acl, allow, o->value) < 0 ? -ENOMEM : 0;
	}
	if (ph_cidr_parse(o->value, &c, &why) < 0)
		return cli_fail(e, argi, "%s '%s': %s", o->name, o->value, why);
	if (ph_acl_add(acl, allow, &c) < 0)
		return -ENOMEM;
	return 0;
}

/*
 * server's and expose's --allow/--deny (o): the value into acl. With max (expose: the
 * rules travel in REGISTER) at most max rules and CIDRs only. Returns 0 or -errno.
 */
static int cli_visitor_acl(int argc, char *const *argv, int *i, struct cli_opt *o,
                           struct ph_acl *acl, unsigned max, struct ph_cli_error *e)
{
	int err = opt_value(argc, argv, i, o, e);

	if (err < 0)
		return err;
	if (max != 0 && ph_acl_is_pattern(o->value))
		return cli_fail(e, *i, "%s '%s': a CIDR (patterns are for forward and server)",
		                o->name, o->value);
	if (max != 0 && acl->n == max)
		return cli_fail(e, *i, "%s: at most %u --allow/--deny rules", o->name, max);
	return cli_acl(acl, o->name[2] == 'a', o, *i, e);
}

static int cli_forward_opt(int argc, char *const *argv, int *i, struct cli_opt *o,
                           struct ph_rule *r, struct ph_cli_error *e)
{
	unsigned long long v;
	int err;

	if (strcmp(o->name, "--allow") == 0 || strcmp(o->name, "--deny") == 0) {
		err = opt_value(argc, argv, i, o, e);
		return err < 0 ? err : cli_acl(&r->acl, o->name[2] == 'a', o, *i, e);
	}
	if (strcmp(o->name, "--max-conns") == 0) {
		err = opt_value(argc, argv, i, o, e);
		if (err == 0)
			err = opt_uint(o, *i, 1, 10000000, &v, e);
		if (err == 0)
			r->max_conns = (unsigned)v;
		return err;
	}
	if (strcmp(o->name, "--connect-timeout") == 0) {
		err = opt_value(argc, argv, i, o, e);
		if (err == 0)
			err = opt_duration(o, *i, &r->connect_timeout, e);
		if (err == 0 && r->connect_timeout == 0)
			return cli_fail(e, *i, "%s must be more than 0", o->name);
		return err;
	}
	if (strcmp(o->name, "--idle-timeout") == 0) {
		err = opt_value(argc, argv, i, o, e);
		return err < 0 ? err : opt_duration(o, *i, &r->idle_timeout, e);
	}
	if (strcmp(o->name, "--udp-timeout") == 0) {
		err = opt_value(argc, argv, i, o, e);
		if (err == 0)
			err = opt_duration(o, *i, &r->udp_timeout, e);
		if (err == 0 && r->udp_timeout == 0)
			return cli_fail(e, *i, "%s must be more than 0", o->name);
		return err;
	}
	if (strcmp(o->name, "--max-sessions") == 0) {
		err = opt_value(argc, argv, i, o, e);
		if (err == 0)
			err = opt_uint(o, *i, 1, 10000000, &v, e);
		if (err == 0)
			r->max_sessions = (unsigned)v;
		return err;
	}
	if (strcmp(o->name, "--proxy-protocol") == 0) {
		err = opt_value(argc, argv, i, o, e);
		if (err < 0)
			return err;
		if (strcmp(o->value, "v1") == 0 || strcmp(o->value, "1") == 0)
			r->proxy_send = 1;
		else if (strcmp(o->value, "v2") == 0 || strcmp(o->value, "2") == 0)
			r->proxy_send = 2;
		else
			return cli_fail(e, *i, "--proxy-protocol '%s': v1 or v2", o->value);
		return 0;
	}
	if (strcmp(o->name, "--accept-proxy") == 0) {
		struct ph_cidr cidr;
		const char *why;

		err = opt_value(argc, argv, i, o, e);
		if (err < 0)
			return err;
		if (ph_cidr_parse(o->value, &cidr, &why) < 0)
			return cli_fail(e, *i,
			                "--accept-proxy '%s': %s (the proxies to trust, as "
			                "CIDRs)",
			                o->value, why);
		return ph_acl_add(&r->proxy_from, true, &cidr) < 0 ? -ENOMEM : 0;
	}
	if (strcmp(o->name, "--source") == 0) {
		err = opt_value(argc, argv, i, o, e);
		if (err < 0)
			return err;
		if (ph_addr_from_literal(o->value, 0, &r->source) < 0)
			return cli_fail(e, *i, "--source '%s': must be an IP address of this host",
			                o->value);
		r->has_source = true;
		return 0;
	}
	if (strcmp(o->name, "--map") == 0) {
		if (o->inline_value)
			return cli_fail(e, *i, "option --map takes no value");
		r->map = true;
		return 0;
	}
	if (strcmp(o->name, "--name") == 0) {
		err = opt_value(argc, argv, i, o, e);
		if (err < 0)
			return err;
		if (o->value[0] == '\0' || strlen(o->value) >= sizeof(r->name))
			return cli_fail(e, *i, "--name must be 1-%zu characters",
			                sizeof(r->name) - 1);
		snprintf(r->name, sizeof(r->name), "%s", o->value);
		return 0;
	}
	return cli_fail(e, *i, "unknown option '%s' (see pinhole forward --help)", o->name);
}

static int cli_forward_addr(const char *word, int argi, bool listen, struct ph_hostport *hp,
                            struct ph_cli_error *e)
{
	const char *why;

	if (ph_hostport_parse(word, hp, &why) < 0)
		return cli_fail(e, argi, "%s '%s': %s", listen ? "listen address" : "target", word,
		                why);
	if (listen && hp->is_name)
		return cli_fail(e, argi,
		                "listen address '%s': must be an IP address or :PORT, not a name",
		                word);
	if (!listen && hp->wildcard)
		return cli_fail(e, argi, "target '%s': needs a host, as in 127.0.0.1%s", word,
		                word);
	return 0;
}

static const char *proto_name(unsigned proto)
{
	return proto == PH_PROTO_UDP ? "udp" : proto == PH_PROTO_TCP ? "tcp" : "tcp+udp";
}

/* The rule as a whole: targets speak the listener's protocol, options fit it. */
static int cli_forward_check(const struct ph_rule *r, char *const *argv, const int *targ_argi,
                             const int *opt_argi, struct ph_cli_error *e)
{
	unsigned p = r->listen.proto;

	for (unsigned t = 0; t < r->ntargets; t++) {
		const struct ph_hostport *hp = &r->targets[t].hp;

		if (hp->has_scheme && hp->proto != p)
			return cli_fail(e, targ_argi[t],
			                "target '%s': is %s://, but the listen address is %s:// "
			                "(a target may leave the scheme out)",
			                argv[targ_argi[t]], proto_name(hp->proto), proto_name(p));
	}
	if (!(p & PH_PROTO_TCP) && opt_argi[0] >= 0)
		return cli_fail(e, opt_argi[0],
		                "option '%.*s' is for TCP, and this rule is udp:// (UDP sessions "
		                "have --udp-timeout and --max-sessions)",
		                (int)strcspn(argv[opt_argi[0]], "="), argv[opt_argi[0]]);
	if (!(p & PH_PROTO_UDP) && opt_argi[1] >= 0)
		return cli_fail(e, opt_argi[1],
		                "option '%.*s' is for UDP: write the listen address as "
		                "udp://... or tcp+udp://...",
		                (int)strcspn(argv[opt_argi[1]], "="), argv[opt_argi[1]]);
	return 0;
}

static int cli_forward(int argc, char *const *argv, int first, struct ph_config *cfg,
                       struct ph_cli_error *e)
{
	static const char *const tcp_only[] = {"--max-conns", "--connect-timeout", "--idle-timeout",
	                                       "--proxy-protocol", "--accept-proxy"};
	static const char *const udp_only[] = {"--udp-timeout", "--max-sessions"};
	int targ_argi[PH_RULE_MAX_TARGETS], opt_argi[2] = {-1, -1};
	struct ph_rule *r;
	int npos = 0, err = 0;

	if (cfg->nrules >= PH_CONFIG_MAX_RULES)
		return cli_fail(e, first, "too many rules (at most %d)", PH_CONFIG_MAX_RULES);
	r = ph_forward_rule_new();
	if (r == NULL)
		return -ENOMEM;
	for (int i = first + 1; i < argc && err == 0; i++) {
		const char *word = argv[i];
		struct cli_opt o;

		if (word[0] == '-' && word[1] != '\0') {
			opt_split(word, &o);
			for (size_t k = 0; k < PH_ARRAY_SIZE(tcp_only); k++)
				if (opt_argi[0] < 0 && strcmp(o.name, tcp_only[k]) == 0)
					opt_argi[0] = i;
			for (size_t k = 0; k < PH_ARRAY_SIZE(udp_only); k++)
				if (opt_argi[1] < 0 && strcmp(o.name, udp_only[k]) == 0)
					opt_argi[1] = i;
			err = cli_global_opt(argc, argv, &i, &o, cfg, e);
			if (err == 0)
				err = cli_forward_opt(argc, argv, &i, &o, r, e);
			else if (err > 0)
				err = 0;
			if (cfg->cmd == PH_CMD_HELP && cfg->help_topic == NULL)
				cfg->help_topic = "forward";
			continue;
		}
		if (npos == 0) {
			err = cli_forward_addr(word, i, true, &r->listen, e);
		} else if (r->ntargets >= PH_RULE_MAX_TARGETS) {
			err = cli_fail(e, i, "target '%s': too many targets (at most %d)", word,
			               PH_RULE_MAX_TARGETS);
		} else {
			err = cli_forward_addr(word, i, false, &r->targets[r->ntargets].hp, e);
			if (err == 0)
				targ_argi[r->ntargets++] = i;
		}
		npos++;
	}
	if (err == 0 && cfg->cmd != PH_CMD_HELP && cfg->cmd != PH_CMD_VERSION) {
		if (npos == 0)
			err = cli_fail(e, first,
			               "forward: missing LISTEN and TARGET addresses "
			               "(see pinhole forward --help)");
		else if (r->ntargets == 0)
			err = cli_fail(e, first,
			               "forward: missing a TARGET address after LISTEN "
			               "(see pinhole forward --help)");
		else
			err = cli_forward_check(r, argv, targ_argi, opt_argi, e);
	}
	if (err != 0) {
		ph_forward_rule_free(r);
		return err;
	}
	if (cfg->cmd == PH_CMD_HELP || cfg->cmd == PH_CMD_VERSION) {
		ph_forward_rule_free(r);
		return 0;
	}
	cfg->rules[cfg->nrules++] = r;
	cfg->cmd = PH_CMD_FORWARD;
	return 0;
}

/* Options only a socks rule has. Returns 1 when o was one, 0 when not, or -errno. */
static int cli_socks_opt(int argc, char *const *argv, int *i, struct cli_opt *o, struct ph_rule *r,
                         struct ph_cli_error *e)
{
	struct ph_socks_conf *sc = r->socks;
	char why[400];
	const char *reason;
	int err;

	if (strcmp(o->name, "--open") == 0) {
		if (o->inline_value)
			return cli_fail(e, *i, "option --open takes no value");
		sc->open = true;
		return 1;
	}
	if (strcmp(o->name, "--user") == 0) {
		err = opt_value(argc, argv, i, o, e);
		if (err < 0)
			return err;
		if (strchr(o->value, ':') == NULL)
			return cli_fail(
				e, *i,
				"--user '%s': a proxy user is NAME:PASS (to run as another "
				"system user, give --user before the command: pinhole --user "
				"%s socks ...)",
				o->value, o->value);
		err = ph_socks_user_add(sc, o->value, &reason);
		if (err == -EINVAL)
			return cli_fail(e, *i, "--user: %s", reason);
		return err < 0 ? err : 1;
	}
	if (strcmp(o->name, "--users") == 0) {
		err = opt_value(argc, argv, i, o, e);
		if (err < 0)
			return err;
		err = ph_socks_users_load(sc, o->value, why, sizeof(why));
		if (err == -ENOMEM)
			return err;
		if (err < 0)
			return cli_fail(e, *i, "--users: %s", why);
		if (sc->nusers == 0)
			return cli_fail(e, *i, "--users: %s: no users in it", o->value);
		return 1;
	}
	if (strcmp(o->name, "--allow-dest") == 0 || strcmp(o->name, "--deny-dest") == 0) {
		err = opt_value(argc, argv, i, o, e);
		if (err < 0)
			return err;
		err = ph_socks_dest_add(sc, o->name[2] == 'a', o->value, &reason);
		if (err == -EINVAL)
			return cli_fail(e, *i, "%s '%s': %s", o->name, o->value, reason);
		return err < 0 ? err : 1;
	}
	if (strcmp(o->name, "--handshake-timeout") == 0) {
		err = opt_value(argc, argv, i, o, e);
		if (err == 0)
			err = opt_duration(o, *i, &sc->handshake_timeout, e);
		if (err == 0 && sc->handshake_timeout == 0)
			return cli_fail(e, *i, "%s must be more than 0", o->name);
		return err < 0 ? err : 1;
	}
	return 0;
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

static int cli_socks(int argc, char *const *argv, int first, struct ph_config *cfg,
                     struct ph_cli_error *e)
{
	static const char *const not_socks[] = {"--proxy-protocol", "--accept-proxy",
	                                        "--max-sessions"};
	struct ph_rule *r;
	const char *why;
	int listen_argi = first, npos = 0, err = 0;

	if (cfg->nrules >= PH_CONFIG_MAX_RULES)
		return cli_fail(e, first, "too many rules (at most %d)", PH_CONFIG_MAX_RULES);
	r = ph_forward_rule_new();
	if (r == NULL)
		return -ENOMEM;
	r->kind = PH_RULE_SOCKS;
	r->ops = &ph_socks_ops;
	r->socks = ph_socks_conf_new();
	if (r->socks == NULL || ph_hostport_parse("127.0.0.1:1080", &r->listen, &why) < 0) {
		ph_forward_rule_free(r);
		return -ENOMEM;
	}
	for (int i = first + 1; i < argc && err == 0; i++) {
		const char *word = argv[i];
		struct cli_opt o;

		if (word[0] == '-' && word[1] != '\0') {
			opt_split(word, &o);
			for (size_t k = 0; k < PH_ARRAY_SIZE(not_socks); k++)
				if (strcmp(o.name, not_socks[k]) == 0)
					err = cli_fail(e, i, "option '%s' is not for socks rules",
					               o.name);
			if (err == 0)
				err = cli_socks_opt(argc, argv, &i, &o, r, e);
			if (err == 0)
				err = cli_global_opt(argc, argv, &i, &o, cfg, e);
			if (err == 0)
				err = cli_forward_opt(argc, argv, &i, &o, r, e);
			else if (err > 0)
				err = 0;
			if (err < 0 && strstr(e->msg, "pinhole forward --help") != NULL)
				snprintf(e->msg, sizeof(e->msg),
				         "unknown option '%s' (see pinhole socks --help)", o.name);
			if (cfg->cmd == PH_CMD_HELP && cfg->help_topic == NULL)
				cfg->help_topic = "socks";
			continue;
		}
		if (npos++ > 0) {
			err = cli_fail(e, i, "socks: '%s': one LISTEN address only", word);
			break;
		}
		listen_argi = i;
		err = cli_forward_addr(word, i, true, &r->listen, e);
		if (err == 0 && r->listen.proto != PH_PROTO_TCP)
			err = cli_fail(e, i,
			               "listen address '%s': a socks proxy listens on TCP (UDP "
			               "ASSOCIATE opens its UDP ports itself)",
			               word);
	}
	if (err == 0 && cfg->cmd != PH_CMD_HELP && cfg->cmd != PH_CMD_VERSION &&
	    r->socks->nusers == 0 && !r->socks->open && !is_loopback(&r->listen))
		err = cli_fail(e, listen_argi,
		               "socks: listening on %s with no users would make an open proxy "
		               "that anyone who reaches it can use (open proxies are found and "
		               "abused within hours): add --user NAME:PASS or --users FILE, or "
		               "--open if that is really what you want",
		               npos > 0 ? argv[listen_argi] : "127.0.0.1:1080");
	if (err != 0 || cfg->cmd == PH_CMD_HELP || cfg->cmd == PH_CMD_VERSION) {
		ph_forward_rule_free(r);
		return err;
	}
	if (r->udp_timeout == 0)
		r->udp_timeout = PH_UDP_TIMEOUT_MS;
	/* a client from elsewhere must not reach this host's own services (127.0.0.1, ::1,
	 * its addresses) nor its link's (169.254.169.254) through the proxy; ssh -D style
	 * users on loopback reach their own services as before */
	r->socks->deny_local = !is_loopback(&r->listen);
	cfg->rules[cfg->nrules++] = r;
	cfg->cmd = PH_CMD_FORWARD;
	return 0;
}

static int cli_port(const char *word, int argi, const char *what, uint16_t *out,
                    struct ph_cli_error *e)
{
	unsigned long long v;

	if (ph_parse_uint(word, 1, 65535, &v) < 0)
		return cli_fail(e, argi, "%s '%s': expected a port from 1 to 65535", what, word);
	*out = (uint16_t)v;
	return 0;
}

/* `map [add|del] PORT`, `map ip`, `map probe`. */
static int cli_map(int argc, char *const *argv, int first, struct ph_config *cfg,
                   struct ph_cli_error *e)
{
	struct ph_map_conf *mc = &cfg->map;
	unsigned long long v;
	bool have_port = false, verb_given = false;
	int err;

	ph_map_conf_init(mc);
	for (int i = first + 1; i < argc; i++) {
		const char *word = argv[i];
		struct cli_opt o;

		if (word[0] == '-' && word[1] != '\0') {
			opt_split(word, &o);
			if (!o.inline_value &&
			    (strcmp(o.name, "--tcp") == 0 || strcmp(o.name, "--udp") == 0 ||
			     strcmp(o.name, "--both") == 0)) {
				mc->protos = o.name[2] == 't'   ? PH_MAP_TCP
				             : o.name[2] == 'u' ? PH_MAP_UDP
				                                : PH_MAP_TCP | PH_MAP_UDP;
				continue;
			}
			if (!o.inline_value && strcmp(o.name, "--once") == 0) {
				mc->once = true;
				continue;
			}
			if (!o.inline_value && strcmp(o.name, "--keep") == 0) {
				mc->keep = true;
				continue;
			}
			if (strcmp(o.name, "--external") == 0) {
				err = opt_value(argc, argv, &i, &o, e);
				if (err == 0)
					err = cli_port(o.value, i, "--external", &mc->external, e);
				if (err < 0)
					return err;
				continue;
			}
			if (strcmp(o.name, "--lifetime") == 0) {
				err = opt_value(argc, argv, &i, &o, e);
				if (err == 0)
					err = opt_uint(&o, i, 1, 0x7fffffff, &v, e);
				if (err < 0)
					return err;
				mc->lifetime = (uint32_t)v;
				continue;
			}
			if (strcmp(o.name, "--method") == 0) {
				err = opt_value(argc, argv, &i, &o, e);
				if (err < 0)
					return err;
				if (strcmp(o.value, "auto") == 0)
					mc->method = PH_MAP_AUTO;
				else if (strcmp(o.value, "pcp") == 0)
					mc->method = PH_MAP_PCP;
				else if (strcmp(o.value, "natpmp") == 0 ||
				         strcmp(o.value, "nat-pmp") == 0)
					mc->method = PH_MAP_NATPMP;
				else if (strcmp(o.value, "upnp") == 0)
					mc->method = PH_MAP_UPNP;
				else
					return cli_fail(e, i,
					                "--method '%s': auto, pcp, natpmp or upnp",
					                o.value);
				continue;
			}
			if (strcmp(o.name, "--gateway") == 0) {
				err = opt_value(argc, argv, &i, &o, e);
				if (err < 0)
					return err;
				if (ph_addr_from_literal(o.value, 0, &mc->gateway) < 0 ||
				    mc->gateway.u.sa.sa_family != AF_INET)
					return cli_fail(
						e, i,
						"--gateway '%s': the router's IPv4 address, as in "
						"192.168.1.1",
						o.value);
				mc->has_gateway = true;
				continue;
			}
			err = cli_common_opt(argc, argv, &i, &o, cfg, "map", e);
			if (err < 0)
				return err;
			continue;
		}
		if (!verb_given && !have_port &&
		    (strcmp(word, "add") == 0 || strcmp(word, "del") == 0 ||
		     strcmp(word, "ip") == 0 || strcmp(word, "probe") == 0 ||
		     strcmp(word, "list") == 0)) {
			mc->verb = word[0] == 'a'   ? PH_MAP_ADD
			           : word[0] == 'd' ? PH_MAP_DEL
			           : word[0] == 'i' ? PH_MAP_IP
			           : word[0] == 'l' ? PH_MAP_LIST
			                            : PH_MAP_PROBE;
			verb_given = true;
			continue;
		}
		if (have_port || mc->verb == PH_MAP_IP || mc->verb == PH_MAP_PROBE ||
		    mc->verb == PH_MAP_LIST)
			return cli_fail(e, i, "map: '%s': unexpected (see pinhole map --help)",
			                word);
		err = cli_port(word, i, "map: port", &mc->internal, e);
		if (err < 0)
			return err;
		have_port = true;
	}
	if (cfg->cmd == PH_CMD_HELP || cfg->cmd == PH_CMD_VERSION)
		return 0;
	if ((mc->verb == PH_MAP_ADD || mc->verb == PH_MAP_DEL) && !have_port)
		return cli_fail(e, first, "map: missing the PORT to map (see pinhole map --help)");
	if (mc->verb == PH_MAP_DEL && mc->method == PH_MAP_PCP)
		return cli_fail(e, first,
		                "map del: PCP deletes a mapping only with the secret it was made "
		                "with; use --method natpmp or upnp (auto tries both)");
	cfg->cmd = PH_CMD_MAP;
	return 0;
}

/* A file option's value: 1-500 characters. Returns 0 or -EINVAL. */
static int opt_file(const struct cli_opt *o, int argi, char *out, size_t len,
                    struct ph_cli_error *e)
{
	if (o->value[0] == '\0' || strlen(o->value) >= len)
		return cli_fail(e, argi, "%s must be 1-%zu characters", o->name, len - 1);
	memcpy(out, o->value, strlen(o->value) + 1);
	return 0;
}

/* --heartbeat DUR: 1 s to 10 min. */
static int opt_heartbeat(const struct cli_opt *o, int argi, uint64_t *out, struct ph_cli_error *e)
{
	int err = opt_duration(o, argi, out, e);

	if (err == 0 && (*out < 200 || *out > 600000))
		return cli_fail(e, argi, "--heartbeat '%s': from 200ms to 10m", o->value);
	return err;
}

/*
 * The options server and expose share: --key FILE, a second file option (file_opt, into
 * file), --heartbeat DUR; anything else is one of every command's. Both files hold 512
 * bytes. Returns 0 or -EINVAL.
 */
static int cli_tunnel_opt(int argc, char *const *argv, int *i, struct cli_opt *o, char *key,
                          const char *file_opt, char *file, uint64_t *hb_ms, struct ph_config *cfg,
                          const char *topic, struct ph_cli_error *e)
{
	int err;

	if (strcmp(o->name, "--key") == 0 || strcmp(o->name, file_opt) == 0) {
		err = opt_value(argc, argv, i, o, e);
		return err == 0 ? opt_file(o, *i, o->name[3] == 'e' ? key : file, 512, e) : err;
	}
	if (strcmp(o->name, "--heartbeat") == 0) {
		err = opt_value(argc, argv, i, o, e);
		return err == 0 ? opt_heartbeat(o, *i, hb_ms, e) : err;
	}
	return cli_common_opt(argc, argv, i, o, cfg, topic, e);
}

/* `server [LISTEN] ...` */
static int cli_server(int argc, char *const *argv, int first, struct ph_config *cfg,
                      struct ph_cli_error *e)
{
	struct ph_server_conf *c;
	bool have_listen = false;
	const char *why;
	int err;

	if (cfg->server != NULL)
		return cli_fail(e, first, "server: one relay per process");
	c = malloc(sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	ph_server_conf_init(c);
	cfg->server = c;
	for (int i = first + 1; i < argc; i++) {
		const char *word = argv[i];
		struct cli_opt o;

		if (word[0] == '-' && word[1] != '\0') {
			opt_split(word, &o);
			if (strcmp(o.name, "--ports") == 0) {
				unsigned long long lo, hi;
				char *dash;
				char buf[16];

				err = opt_value(argc, argv, &i, &o, e);
				if (err < 0)
					return err;
				snprintf(buf, sizeof(buf), "%s", o.value);
				dash = strchr(buf, '-');
				if (dash != NULL)
					*dash = '\0';
				if (strlen(o.value) >= sizeof(buf) ||
				    ph_parse_uint(buf, 1, 65535, &lo) < 0 ||
				    ph_parse_uint(dash != NULL ? dash + 1 : buf, lo, 65535, &hi) <
				            0)
					return cli_fail(
						e, i,
						"--ports '%s': expected LO-HI, as in 20000-20099",
						o.value);
				c->port_lo = (uint16_t)lo;
				c->port_hi = (uint16_t)hi;
				continue;
			}
			if (strcmp(o.name, "--bind") == 0) {
				err = opt_value(argc, argv, &i, &o, e);
				if (err < 0)
					return err;
				if (ph_addr_from_literal(o.value, 0, &c->bind) < 0)
					return cli_fail(
						e, i,
						"--bind '%s': an IP address, as in 203.0.113.5",
						o.value);
				c->has_bind = true;
				continue;
			}
			if (strcmp(o.name, "--allow") == 0 || strcmp(o.name, "--deny") == 0) {
				err = cli_visitor_acl(argc, argv, &i, &o, &c->acl, 0, e);
				if (err < 0)
					return err;
				continue;
			}
			err = cli_tunnel_opt(argc, argv, &i, &o, c->key_file, "--authorized-keys",
			                     c->auth_file, &c->hb_ms, cfg, "server", e);
			if (err < 0)
				return err;
			continue;
		}
		if (have_listen)
			return cli_fail(e, i, "server: '%s': one LISTEN address only", word);
		if (ph_hostport_parse(word, &c->listen, &why) < 0)
			return cli_fail(e, i, "server: '%s': %s", word, why);
		if (c->listen.proto != PH_PROTO_TCP || c->listen.is_name)
			return cli_fail(e, i, "server: '%s': a TCP address such as :7835", word);
		have_listen = true;
	}
	if (cfg->cmd == PH_CMD_HELP || cfg->cmd == PH_CMD_VERSION)
		return 0;
	cfg->cmd = PH_CMD_FORWARD;
	return 0;
}

/* `expose LOCAL --via RELAY ...` */
static int cli_expose(int argc, char *const *argv, int first, struct ph_config *cfg,
                      struct ph_cli_error *e)
{
	struct ph_expose_conf *c;
	bool have_local = false, have_via = false;
	const char *why;
	int err;

	if (cfg->nexpose == PH_EXPOSE_MAX)
		return cli_fail(e, first, "expose: at most %u expose rules", PH_EXPOSE_MAX);
	c = malloc(sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	ph_expose_conf_init(c);
	cfg->expose[cfg->nexpose++] = c;
	for (int i = first + 1; i < argc; i++) {
		const char *word = argv[i];
		struct cli_opt o;

		if (word[0] == '-' && word[1] != '\0') {
			opt_split(word, &o);
			if (strcmp(o.name, "--udp") == 0 && !o.inline_value) {
				c->udp = true;
				continue;
			}
			if (strcmp(o.name, "--via") == 0) {
				char buf[PH_HOST_MAX + 16];

				err = opt_value(argc, argv, &i, &o, e);
				if (err < 0)
					return err;
				/* the port may be left out: 7835 */
				snprintf(buf, sizeof(buf), "%s", o.value);
				if (ph_hostport_parse(buf, &c->via, &why) < 0) {
					snprintf(buf, sizeof(buf),
					         strchr(o.value, ':') ? "[%s]:%u" : "%s:%u",
					         o.value, PH_RELAY_PORT);
					if (strlen(o.value) > PH_HOST_MAX ||
					    ph_hostport_parse(buf, &c->via, &why) < 0)
						return cli_fail(e, i, "--via '%s': %s", o.value,
						                why);
				}
				if (c->via.wildcard || c->via.has_scheme)
					return cli_fail(e, i, "--via '%s': the relay's HOST[:PORT]",
					                o.value);
				have_via = true;
				continue;
			}
			if (strcmp(o.name, "--port") == 0) {
				unsigned long long v;

				err = opt_value(argc, argv, &i, &o, e);
				if (err == 0)
					err = opt_uint(&o, i, 0, 65535, &v, e);
				if (err < 0)
					return err;
				c->port = (uint16_t)v;
				continue;
			}
			if (strcmp(o.name, "--max-conns") == 0) {
				unsigned long long v;

				err = opt_value(argc, argv, &i, &o, e);
				if (err == 0)
					err = opt_uint(&o, i, 1, 1000000, &v, e);
				if (err < 0)
					return err;
				c->max_conns = (uint32_t)v;
				continue;
			}
			if (strcmp(o.name, "--allow") == 0 || strcmp(o.name, "--deny") == 0) {
				/* the relay judges them: CIDRs only, as many as REGISTER carries */
				err = cli_visitor_acl(argc, argv, &i, &o, &c->acl,
				                      PH_EXPOSE_ACL_MAX, e);
				if (err < 0)
					return err;
				continue;
			}
			if (strcmp(o.name, "--name") == 0) {
				err = opt_value(argc, argv, &i, &o, e);
				if (err < 0)
					return err;
				if (!ph_svc_name_ok(o.value))
					return cli_fail(e, i,
					                "--name '%s': 1-32 of A-Z a-z 0-9 . _ -",
					                o.value);
				snprintf(c->name, sizeof(c->name), "%s", o.value);
				continue;
			}
			if (strcmp(o.name, "--proxy-protocol") == 0) {
				err = opt_value(argc, argv, &i, &o, e);
				if (err < 0)
					return err;
				if (strcmp(o.value, "v1") == 0 || strcmp(o.value, "1") == 0)
					c->proxy = 1;
				else if (strcmp(o.value, "v2") == 0 || strcmp(o.value, "2") == 0)
					c->proxy = 2;
				else
					return cli_fail(e, i, "--proxy-protocol '%s': v1 or v2",
					                o.value);
				continue;
			}
			if (strcmp(o.name, "--relay-key") == 0) {
				err = opt_value(argc, argv, &i, &o, e);
				if (err < 0)
					return err;
				if (strncmp(o.value, "SHA256:", 7) != 0 ||
				    strlen(o.value) != 7 + 43)
					return cli_fail(
						e, i,
						"--relay-key '%s': the relay's fingerprint, "
						"SHA256: and 43 characters, as its log shows it",
						o.value);
				snprintf(c->relay_fp, sizeof(c->relay_fp), "%s", o.value);
				continue;
			}
			err = cli_tunnel_opt(argc, argv, &i, &o, c->key_file, "--known-relays",
			                     c->known_file, &c->hb_ms, cfg, "expose", e);
			if (err < 0)
				return err;
			continue;
		}
		if (have_local)
			return cli_fail(e, i, "expose: '%s': one LOCAL address only", word);
		if (ph_hostport_parse(word, &c->local, &why) < 0)
			return cli_fail(e, i, "expose: '%s': %s", word, why);
		if (c->local.wildcard)
			return cli_fail(e, i,
			                "expose: '%s': LOCAL needs a host, as in 127.0.0.1:%u",
			                word, c->local.port);
		if (c->local.proto == PH_PROTO_UDP)
			c->udp = true;
		else if (c->local.proto != PH_PROTO_TCP)
			return cli_fail(e, i, "expose: '%s': one protocol a rule", word);
		have_local = true;
	}
	if (cfg->cmd == PH_CMD_HELP || cfg->cmd == PH_CMD_VERSION)
		return 0;
	if (!have_local)
		return cli_fail(e, first, "expose: missing LOCAL (see pinhole expose --help)");
	if (!have_via)
		return cli_fail(e, first,
		                "expose: missing --via RELAY (see pinhole expose --help)");
	if (c->udp && c->proxy != 0)
		return cli_fail(e, first, "expose: --proxy-protocol is for TCP services");
	cfg->cmd = PH_CMD_FORWARD;
	return 0;
}

/* `keygen [-f FILE] [-C COMMENT] [--show]` */
static int cli_keygen(int argc, char *const *argv, int first, struct ph_config *cfg,
                      struct ph_cli_error *e)
{
	int err;

	for (int i = first + 1; i < argc; i++) {
		struct cli_opt o;

		if (argv[i][0] != '-' || argv[i][1] == '\0')
			return cli_fail(e, i,
			                "keygen: '%s': unexpected (see pinhole keygen --help)",
			                argv[i]);
		opt_split(argv[i], &o);
		if (strcmp(o.name, "-f") == 0 || strcmp(o.name, "--file") == 0 ||
		    strcmp(o.name, "-C") == 0 || strcmp(o.name, "--comment") == 0) {
			bool file = o.name[1] == 'f' || o.name[2] == 'f';

			err = opt_value(argc, argv, &i, &o, e);
			if (err < 0)
				return err;
			if (o.value[0] == '\0' || strlen(o.value) > (file ? 500u : 60u))
				return cli_fail(e, i, "%s must be 1-%u characters", o.name,
				                file ? 500u : 60u);
			if (!file && strpbrk(o.value, "\n\r\t") != NULL)
				return cli_fail(e, i, "%s: one line, no tabs", o.name);
			if (file)
				cfg->key_file = o.value;
			else
				cfg->key_comment = o.value;
			continue;
		}
		if (strcmp(o.name, "--show") == 0 && !o.inline_value) {
			cfg->key_show = true;
			continue;
		}
		err = cli_common_opt(argc, argv, &i, &o, cfg, "keygen", e);
		if (err < 0)
			return err;
	}
	if (cfg->cmd == PH_CMD_HELP || cfg->cmd == PH_CMD_VERSION)
		return 0;
	cfg->cmd = PH_CMD_KEYGEN;
	return 0;
}

/* `status [--json]`, `reload`: questions for a running pinhole. */
static int cli_ask(int argc, char *const *argv, int first, struct ph_config *cfg,
                   struct ph_cli_error *e)
{
	bool status = argv[first][0] == 's';
	int err;

	for (int i = first + 1; i < argc; i++) {
		struct cli_opt o;

		if (argv[i][0] != '-' || argv[i][1] == '\0')
			return cli_fail(e, i, "%s: '%s': takes no arguments", argv[first], argv[i]);
		opt_split(argv[i], &o);
		if (status && strcmp(o.name, "--json") == 0 && !o.inline_value) {
			cfg->json = true;
			continue;
		}
		err = cli_common_opt(argc, argv, &i, &o, cfg, "", e);
		if (err < 0)
			return err;
	}
	if (cfg->cmd == PH_CMD_HELP || cfg->cmd == PH_CMD_VERSION)
		return 0;
	cfg->cmd = status ? PH_CMD_STATUS : PH_CMD_RELOAD;
	return 0;
}

static int cli_run(int argc, char *const *argv, int first, struct ph_config *cfg,
                   struct ph_cli_error *e)
{
	const char *file = NULL;
	bool check = false;
	int err;

	for (int i = first + 1; i < argc; i++) {
		const char *word = argv[i];
		struct cli_opt o;

		if (word[0] == '-' && word[1] != '\0') {
			opt_split(word, &o);
			if (strcmp(o.name, "--check") == 0 && !o.inline_value) {
				check = true;
				continue;
			}
			if (strcmp(o.name, "--rinetd") == 0 && !o.inline_value) {
				cfg->rinetd = true;
				continue;
			}
			err = cli_common_opt(argc, argv, &i, &o, cfg, "run", e);
			if (err < 0)
				return err;
			continue;
		}
		if (file != NULL)
			return cli_fail(e, i,
			                "run: '%s': one FILE only (include the others from it)",
			                word);
		file = word;
	}
	if (cfg->cmd == PH_CMD_HELP || cfg->cmd == PH_CMD_VERSION)
		return 0;
	if (file == NULL)
		return cli_fail(e, first, "run: missing FILE (see pinhole run --help)");
	cfg->run_file = file;
	cfg->check = check;
	cfg->cmd = PH_CMD_RUN;
	return 0;
}

int ph_cli_parse(int argc, char *const *argv, struct ph_config *cfg, struct ph_cli_error *e)
{
	int err;

	e->argi = -1;
	e->msg[0] = '\0';
	for (int i = 0; i < argc; i++) {
		const char *word = argv[i];
		struct cli_opt o;

		if (word[0] == '-' && word[1] != '\0') {
			opt_split(word, &o);
			err = cli_common_opt(argc, argv, &i, &o, cfg, "", e);
			if (err < 0)
				return err;
			continue;
		}
		if (strcmp(word, "forward") == 0)
			return cli_forward(argc, argv, i, cfg, e);
		if (strcmp(word, "run") == 0)
			return cli_run(argc, argv, i, cfg, e);
		if (strcmp(word, "socks") == 0)
			return cli_socks(argc, argv, i, cfg, e);
		if (strcmp(word, "map") == 0)
			return cli_map(argc, argv, i, cfg, e);
		if (strcmp(word, "keygen") == 0)
			return cli_keygen(argc, argv, i, cfg, e);
		if (strcmp(word, "server") == 0)
			return cli_server(argc, argv, i, cfg, e);
		if (strcmp(word, "expose") == 0)
			return cli_expose(argc, argv, i, cfg, e);
		if (strcmp(word, "status") == 0 || strcmp(word, "reload") == 0)
			return cli_ask(argc, argv, i, cfg, e);
		if (strcmp(word, "help") == 0) {
			cfg->cmd = PH_CMD_HELP;
			cfg->help_topic = i + 1 < argc ? argv[i + 1] : "";
			return 0;
		}
		return cli_fail(e, i, "unknown command '%s' (see pinhole --help)", word);
	}
	return 0;
}
