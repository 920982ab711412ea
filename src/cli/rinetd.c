/*
 * rinetd.conf, read unchanged with the same meaning (rinetd(8)): each forwarding rule
 *
 *     bindaddress bindport connectaddress connectport [timeout=N,src=ADDR]
 *
 * becomes the words of a pinhole forward line, parsed by ph_cli_parse like any other
 * (one grammar). Ports may be service names and carry /tcp or /udp; a UDP rule without
 * timeout= gets rinetd's 72 s. allow/deny patterns before the first rule apply to every
 * rule, after a rule to that rule; a deny wins over an allow, and a client must pass
 * both groups (allow lines in both groups at once are refused: one first-match list
 * cannot say that). logfile and logcommon become --log-file and --log-format common,
 * pidlogfile --pidfile; the command line's own win.
 */
#include "cli/rinetd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "cli/cli.h"
#include "cli/conf.h"
#include "core/acl.h"
#include "core/util.h"
#include "forward/forward.h"

#define RINETD_UDP_TIMEOUT "72s" /* rinetd's default UDP timeout */
#define RINETD_MAX_ACL     256   /* allow/deny lines per group */
#define RINETD_WORD        320

bool ph_rinetd_no_lookups;

/* One group of allow/deny patterns, in file order. */
struct rinetd_acl {
	char pat[RINETD_MAX_ACL][PH_ACL_PATTERN_MAX + 4];
	bool allow[RINETD_MAX_ACL];
	unsigned n, nallow;
};

/* The forwarding rule being read: its words wait for the allow/deny lines after it. */
struct rinetd_rule {
	bool open;
	unsigned line;
	char w[8][RINETD_WORD];
	int nw;
	struct rinetd_acl acl;
};

struct rinetd_ctx {
	const char *path;
	struct ph_config *cfg;
	ph_conf_report_fn report;
	void *arg;
	int problems;
	struct rinetd_acl global;
	struct rinetd_rule rule;
};

static void rinetd_say(struct rinetd_ctx *x, unsigned line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void rinetd_say(struct rinetd_ctx *x, unsigned line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	ph_conf_vreport(x->report, x->arg, x->path, line, fmt, ap);
	va_end(ap);
	x->problems++;
}

/* "80", "80/udp", "http/tcp": the port and whether it is UDP. Returns 0 or -EINVAL. */
static int rinetd_port(const char *s, uint16_t *port, bool *udp)
{
	char name[64];
	const char *slash = strchr(s, '/');
	size_t n = slash != NULL ? (size_t)(slash - s) : strlen(s);
	unsigned long long v;
	struct servent *se;

	*udp = false;
	if (slash != NULL) {
		if (strcmp(slash + 1, "udp") == 0)
			*udp = true;
		else if (strcmp(slash + 1, "tcp") != 0)
			return -EINVAL;
	}
	if (n == 0 || n >= sizeof(name))
		return -EINVAL;
	memcpy(name, s, n);
	name[n] = '\0';
	if (ph_parse_uint(name, 1, 65535, &v) == 0) {
		*port = (uint16_t)v;
		return 0;
	}
	se = getservbyname(name, *udp ? "udp" : "tcp"); /* /etc/services */
	if (se == NULL)
		return -EINVAL;
	*port = ntohs((uint16_t)se->s_port);
	return 0;
}

/* host (a literal, or a name resolved now) and port as a word: "[::1]:80", with scheme
 * in front ("" or "udp://"). */
static int rinetd_hostport(const char *scheme, const char *host, uint16_t port, bool listen,
                           char *out, size_t len)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
	struct addrinfo *res;
	char ip[INET6_ADDRSTRLEN];
	struct ph_addr a;

	if (ph_addr_from_literal(host, 0, &a) == 0 || !listen) { /* targets resolve later */
		bool v6 = strchr(host, ':') != NULL;

		snprintf(out, len, "%s%s%s%s:%u", scheme, v6 ? "[" : "", host, v6 ? "]" : "", port);
		return 0;
	}
	/* pinhole listens on addresses; rinetd takes a host name there: look it up now */
	if (ph_rinetd_no_lookups || getaddrinfo(host, NULL, &hints, &res) != 0)
		return -ENOENT;
	if (res->ai_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)res->ai_addr)->sin_addr, ip,
		          sizeof(ip));
	else
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)res->ai_addr)->sin6_addr, ip,
		          sizeof(ip));
	snprintf(out, len, "%s%s%s%s:%u", scheme, res->ai_family == AF_INET6 ? "[" : "", ip,
	         res->ai_family == AF_INET6 ? "]" : "", port);
	freeaddrinfo(res);
	return 0;
}

/* A pattern as pinhole's --allow/--deny takes it: a CIDR for a bare address or a run of
 * * at the end (exact, and faster), the rinetd pattern otherwise. */
static void rinetd_pattern(const char *p, char *out, size_t len)
{
	size_t n = strlen(p), k = n;
	unsigned parts = 1;

	while (k > 0 && (p[k - 1] == '*' || p[k - 1] == '.'))
		k--;
	for (size_t i = 0; i < k; i++)
		parts += p[i] == '.';
	if (strchr(p, ':') == NULL && strchr(p, '?') == NULL && memchr(p, '*', k) == NULL &&
	    k < n && p[k] == '.' && parts < 4 && strspn(p + k, ".*") == n - k) {
		/* 10.1.*.* or 10.1.* : the leading parts, a /8 each */
		char net[32] = "";
		unsigned have = 0;

		snprintf(net, sizeof(net), "%.*s", (int)k, p);
		for (have = parts; have < 4; have++)
			strncat(net, ".0", sizeof(net) - strlen(net) - 1);
		snprintf(out, len, "%s/%u", net, parts * 8);
		return;
	}
	snprintf(out, len, "%s", p);
}

/* The words of the open rule, with both allow/deny groups, go to the CLI parser. */
static int rinetd_flush(struct rinetd_ctx *x)
{
	struct rinetd_rule *rr = &x->rule;
	static char acl_words[2 * 2 * RINETD_MAX_ACL][PH_ACL_PATTERN_MAX + 8];
	char *words[8 + 4 * 2 * RINETD_MAX_ACL + 2];
	struct ph_cli_error e;
	unsigned nrules = x->cfg->nrules, na = 0;
	enum ph_cmd cmd = x->cfg->cmd;
	int n = 0, err;
	struct rinetd_acl *groups[2] = {&x->global, &rr->acl};

	if (!rr->open)
		return 0;
	rr->open = false;
	for (int i = 0; i < rr->nw; i++)
		words[n++] = rr->w[i];
	if (x->global.nallow != 0 && rr->acl.nallow != 0) {
		/* first-match lists cannot say "one of these and one of those" */
		rinetd_say(x, rr->line,
		           "allow rules both before the first rule and after this one: pinhole "
		           "cannot combine the two groups; keep the allow lines in one of them");
		return 0;
	}
	/* denies first (a deny wins in rinetd whatever the order), then the allows */
	for (int pass = 0; pass < 2; pass++) {
		for (int g = 0; g < 2; g++) {
			for (unsigned i = 0; i < groups[g]->n; i++) {
				if (groups[g]->allow[i] != (pass == 1))
					continue;
				char *opt = pass == 1 ? "--allow" : "--deny";

				if (strcmp(groups[g]->pat[i], "*") == 0) {
					/* every client, IPv4 and IPv6 (a `::` bind has both):
					 * two CIDRs (hence 4 words a line in words[]) */
					words[n++] = opt;
					words[n++] = "0.0.0.0/0";
					words[n++] = opt;
					words[n++] = "::/0";
					continue;
				}
				words[n++] = opt;
				rinetd_pattern(groups[g]->pat[i], acl_words[na],
				               sizeof(acl_words[na]));
				words[n++] = acl_words[na++];
			}
		}
	}
	err = ph_cli_parse(n, words, x->cfg, &e);
	x->cfg->cmd = cmd;
	if (err == -ENOMEM)
		return err;
	if (err < 0) {
		rinetd_say(x, rr->line, "%s", e.msg);
		return 0;
	}
	if (x->cfg->nrules > nrules)
		return ph_conf_rule_origin(x->cfg->rules[nrules], x->path, rr->line, words, n);
	return 0;
}

static void rinetd_acl_line(struct rinetd_ctx *x, unsigned line, char **w, int n)
{
	struct rinetd_acl *g = x->rule.open ? &x->rule.acl : &x->global;
	const char *why;

	if (n != 2) {
		rinetd_say(x, line, "%s: takes one pattern, as in %s 192.168.1.*", w[0], w[0]);
		return;
	}
	if (strlen(w[1]) >= sizeof(g->pat[0])) {
		rinetd_say(x, line, "%s '%s': too long", w[0], w[1]);
		return;
	}
	if (ph_acl_pattern_check(w[1], &why) < 0 && strchr(w[1], '/') == NULL) {
		rinetd_say(x, line, "%s '%s': %s", w[0], w[1], why);
		return;
	}
	if (g->n == RINETD_MAX_ACL) {
		rinetd_say(x, line, "%s '%s': more than %d allow/deny lines in one group", w[0],
		           w[1], RINETD_MAX_ACL);
		return;
	}
	snprintf(g->pat[g->n], sizeof(g->pat[g->n]), "%s", w[1]);
	g->allow[g->n] = w[0][0] == 'a';
	g->nallow += g->allow[g->n];
	g->n++;
}

static int rinetd_rule_line(struct rinetd_ctx *x, unsigned line, char **w, int n)
{
	struct rinetd_rule *rr = &x->rule;
	uint16_t bport, cport;
	bool budp, cudp;
	char timeout[32] = "", src[RINETD_WORD] = "";
	int err;

	err = rinetd_flush(x); /* the previous rule has all its allow/deny lines now */
	if (err < 0)
		return err;
	memset(rr, 0, sizeof(*rr));
	if (rinetd_port(w[1], &bport, &budp) < 0 || rinetd_port(w[3], &cport, &cudp) < 0) {
		rinetd_say(x, line,
		           "port '%s': a number, or a service of /etc/services, "
		           "with /tcp or /udp",
		           rinetd_port(w[1], &bport, &budp) < 0 ? w[1] : w[3]);
		return 0;
	}
	if (budp != cudp) {
		rinetd_say(x, line,
		           "'%s' to '%s': pinhole forwards TCP to TCP and UDP to "
		           "UDP",
		           w[1], w[3]);
		return 0;
	}
	for (int i = 4; i < n; i++) { /* [timeout=N] [src=ADDR], or [timeout=N,src=ADDR] */
		char opt[RINETD_WORD], *tok, *save = NULL;
		size_t len = strlen(w[i]);

		if (len < 2 || w[i][0] != '[' || w[i][len - 1] != ']' || len - 2 >= sizeof(opt)) {
			rinetd_say(x, line, "'%s': options are written [timeout=N,src=ADDR]", w[i]);
			return 0;
		}
		memcpy(opt, w[i] + 1, len - 2);
		opt[len - 2] = '\0';
		for (tok = strtok_r(opt, ",", &save); tok != NULL;
		     tok = strtok_r(NULL, ",", &save)) {
			unsigned long long v;

			if (strncmp(tok, "timeout=", 8) == 0 &&
			    ph_parse_uint(tok + 8, 1, 86400 * 365, &v) == 0)
				snprintf(timeout, sizeof(timeout), "%llus", v);
			else if (strncmp(tok, "src=", 4) == 0 && tok[4] != '\0')
				snprintf(src, sizeof(src), "%s", tok + 4);
			else {
				rinetd_say(x, line,
				           "'%s': unknown option (timeout=N and src=ADDR "
				           "are rinetd's)",
				           tok);
				return 0;
			}
		}
	}
	rr->line = line;
	snprintf(rr->w[rr->nw++], RINETD_WORD, "forward");
	if (rinetd_hostport(budp ? "udp://" : "", w[0], bport, true, rr->w[rr->nw], RINETD_WORD) <
	    0) {
		rinetd_say(x, line,
		           "bind address '%s': not an address, and not a name that "
		           "resolves",
		           w[0]);
		return 0;
	}
	rr->nw++;
	rinetd_hostport("", w[2], cport, false, rr->w[rr->nw++], RINETD_WORD);
	if (budp) {
		snprintf(rr->w[rr->nw++], RINETD_WORD, "--udp-timeout");
		snprintf(rr->w[rr->nw++], RINETD_WORD, "%s",
		         timeout[0] ? timeout : RINETD_UDP_TIMEOUT);
	}
	if (src[0] != '\0') {
		snprintf(rr->w[rr->nw++], RINETD_WORD, "--source");
		snprintf(rr->w[rr->nw++], RINETD_WORD, "%s", src);
	}
	rr->open = true;
	return 0;
}

bool ph_rinetd_line(char **w, int n)
{
	uint16_t port;
	bool udp;

	if (n >= 1 && (strcmp(w[0], "allow") == 0 || strcmp(w[0], "deny") == 0 ||
	               strcmp(w[0], "logfile") == 0 || strcmp(w[0], "logcommon") == 0 ||
	               strcmp(w[0], "pidlogfile") == 0))
		return true;
	return n >= 4 && rinetd_port(w[1], &port, &udp) == 0 && rinetd_port(w[3], &port, &udp) == 0;
}

int ph_rinetd_load(const char *path, struct ph_config *cfg, ph_conf_report_fn report, void *arg)
{
	struct rinetd_ctx *x = calloc(1, sizeof(*x));
	char *line = NULL, *w[PH_CONF_MAX_WORDS];
	size_t cap = 0;
	unsigned lineno = 0;
	int err = 0, n;
	FILE *f;

	if (x == NULL)
		return -ENOMEM;
	x->path = path;
	x->cfg = cfg;
	x->report = report;
	x->arg = arg;
	f = ph_file_open(path);
	if (f == NULL) {
		char msg[1024];

		snprintf(msg, sizeof(msg), "%s: cannot read: %s", path,
		         errno == EINVAL ? "not a regular file" : strerror(errno));
		report(arg, msg);
		free(x);
		return 1;
	}
	while (err == 0 && getline(&line, &cap, f) >= 0) {
		const char *why;
		int col;

		lineno++;
		n = ph_conf_split(line, w, PH_CONF_MAX_WORDS, &why, &col);
		if (n < 0) {
			rinetd_say(x, lineno, "column %d: %s", col, why);
			continue;
		}
		if (n == 0)
			continue;
		if (strcmp(w[0], "allow") == 0 || strcmp(w[0], "deny") == 0)
			rinetd_acl_line(x, lineno, w, n);
		else if (strcmp(w[0], "logcommon") == 0 && n == 1)
			x->cfg->logformat = 1;
		else if ((strcmp(w[0], "logfile") == 0 || strcmp(w[0], "pidlogfile") == 0) &&
		         n == 2) {
			bool log = w[0][0] == 'l';
			char *dst = log ? x->cfg->logfile : x->cfg->pidfile;
			size_t room = log ? sizeof(x->cfg->logfile) : sizeof(x->cfg->pidfile);

			if (strlen(w[1]) >= room)
				rinetd_say(x, lineno, "%s: path too long", w[0]);
			else if (dst[0] == '\0') /* the command line's wins */
				snprintf(dst, room, "%s", w[1]);
		} else if (strcmp(w[0], "logfile") == 0 || strcmp(w[0], "pidlogfile") == 0 ||
		           strcmp(w[0], "logcommon") == 0)
			rinetd_say(x, lineno, "%s: takes %s", w[0],
			           w[0][3] == 'c' ? "nothing" : "one path");
		else if (n >= 4)
			err = rinetd_rule_line(x, lineno, w, n);
		else
			rinetd_say(x, lineno,
			           "'%s': not a rinetd line (bindaddress bindport "
			           "connectaddress connectport, allow, deny, logfile, logcommon, "
			           "pidlogfile)",
			           w[0]);
	}
	if (err == 0)
		err = rinetd_flush(x);
	fclose(f);
	free(line);
	n = x->problems;
	free(x);
	return err < 0 ? err : n;
}
