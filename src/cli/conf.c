#include "cli/conf.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/rinetd.h"
#include "core/addr.h"
#include "forward/forward.h"

#define CONF_MAX_LINE (64 * 1024) /* bytes in one line, continuations included */

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

int ph_conf_split(char *line, char **words, int max, const char **why, int *col)
{
	char *r = line, *w = line; /* read and write: w never passes r */
	int n = 0;

	*why = NULL;
	*col = 0;
	for (;;) {
		while (is_space(*r))
			r++;
		if (*r == '\0' || *r == '#') /* a comment starts where a word would */
			return n;
		if (n == max) {
			*why = "too many words on one line";
			*col = (int)(r - line) + 1;
			return -EINVAL;
		}
		words[n++] = w;
		while (*r != '\0' && !is_space(*r)) {
			char *start = r;

			if (*r == '\'') { /* literal up to the next ' */
				for (r++; *r != '\0' && *r != '\''; r++)
					*w++ = *r;
				if (*r == '\0') {
					*why = "unterminated single quote";
					*col = (int)(start - line) + 1;
					return -EINVAL;
				}
				r++;
			} else if (*r == '"') { /* \" \\ \$ \` are escapes, the rest literal */
				for (r++; *r != '\0' && *r != '"'; r++) {
					if (*r == '\\' && r[1] != '\0' &&
					    strchr("\"\\$`", r[1]) != NULL)
						r++;
					*w++ = *r;
				}
				if (*r == '\0') {
					*why = "unterminated double quote";
					*col = (int)(start - line) + 1;
					return -EINVAL;
				}
				r++;
			} else if (*r == '\\') {
				if (r[1] == '\0') {
					*why = "a backslash ends the line";
					*col = (int)(start - line) + 1;
					return -EINVAL;
				}
				*w++ = r[1];
				r += 2;
			} else {
				*w++ = *r++;
			}
		}
		if (*r != '\0')
			r++; /* past the space that ended the word, before it is overwritten */
		*w++ = '\0';
	}
}

/*
 * Does line go on on the next one? Only when it ends in a backslash that escapes the line
 * end, as in a shell: not inside a comment or 'single quotes', not when the backslash is
 * itself escaped.
 */
static bool continues(const char *line)
{
	bool word = false; /* inside a word: # is a character there */
	char q = 0;        /* the open quote, or 0 */

	for (const char *p = line; *p != '\0'; p++) {
		if (q == '\'') {
			if (*p == '\'')
				q = 0;
			continue;
		}
		if (*p == '\\') {
			if (p[1] == '\0')
				return true;
			p++;
			word = true;
			continue;
		}
		if (q == '"') {
			if (*p == '"')
				q = 0;
			continue;
		}
		if (is_space(*p)) {
			word = false;
		} else if (*p == '#' && !word) {
			return false; /* a comment to the end of the line */
		} else {
			word = true;
			if (*p == '\'' || *p == '"')
				q = *p;
		}
	}
	return false;
}

struct conf_ctx {
	struct ph_config *cfg;
	ph_conf_report_fn report;
	void *arg;
	int problems;
	bool nomem;
	char *stack[PH_CONF_MAX_INCLUDE + 1]; /* realpath of each file being read */
	int depth;
};

static void conf_problem(struct conf_ctx *x, const char *file, unsigned line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void conf_problem(struct conf_ctx *x, const char *file, unsigned line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	ph_conf_vreport(x->report, x->arg, file, line, fmt, ap);
	va_end(ap);
	x->problems++;
}

static int conf_file(struct conf_ctx *x, const char *path, const char *from, unsigned from_line);

void ph_conf_vreport(ph_conf_report_fn report, void *arg, const char *file, unsigned line,
                     const char *fmt, va_list ap)
{
	char msg[1024];
	int off = line != 0 ? snprintf(msg, sizeof(msg), "%s:%u: ", file, line)
	                    : snprintf(msg, sizeof(msg), "%s: ", file);

	if (off < 0 || (size_t)off >= sizeof(msg))
		off = 0;
	vsnprintf(msg + off, sizeof(msg) - (size_t)off, fmt, ap);
	report(arg, msg);
}

static bool has_glob_chars(const char *s)
{
	return strpbrk(s, "*?[") != NULL;
}

/* `include PATTERN...` on line of file. */
static int conf_include(struct conf_ctx *x, const char *file, unsigned line, char **words, int n)
{
	const char *slash = strrchr(file, '/');
	int err = 0;

	if (n < 2) {
		conf_problem(x, file, line, "include: missing a file or pattern");
		return 0;
	}
	for (int i = 1; i < n && err == 0; i++) {
		char pat[4096];
		glob_t g;
		int rc;

		/* relative to the including file's directory */
		if (words[i][0] == '/' || slash == NULL)
			rc = snprintf(pat, sizeof(pat), "%s", words[i]);
		else
			rc = snprintf(pat, sizeof(pat), "%.*s/%s", (int)(slash - file), file,
			              words[i]);
		if (rc < 0 || (size_t)rc >= sizeof(pat)) {
			conf_problem(x, file, line, "include '%s': path too long", words[i]);
			continue;
		}
		rc = glob(pat, 0, NULL, &g);
		if (rc == GLOB_NOMATCH) {
			if (!has_glob_chars(words[i])) /* a pattern may match nothing, a file not */
				conf_problem(x, file, line, "include '%s': no such file", words[i]);
			continue;
		}
		if (rc != 0) {
			if (rc == GLOB_NOSPACE)
				return -ENOMEM;
			conf_problem(x, file, line, "include '%s': cannot read the directory",
			             words[i]);
			continue;
		}
		for (size_t k = 0; k < g.gl_pathc && err == 0; k++) /* glob sorts them */
			err = conf_file(x, g.gl_pathv[k], file, line);
		globfree(&g);
	}
	return err;
}

/* One line, split into n words. */
static int conf_line(struct conf_ctx *x, const char *file, unsigned line, char **words, int n)
{
	struct ph_config *cfg = x->cfg;
	enum ph_cmd cmd = cfg->cmd;
	unsigned nrules = cfg->nrules;
	struct ph_cli_error e;
	int err;

	if (strcmp(words[0], "include") == 0)
		return conf_include(x, file, line, words, n);
	if (strcmp(words[0], "run") == 0 || strcmp(words[0], "help") == 0 ||
	    strcmp(words[0], "status") == 0 || strcmp(words[0], "reload") == 0) {
		conf_problem(x, file, line, "'%s': is for the command line, not a config file",
		             words[0]);
		return 0;
	}
	err = ph_cli_parse(n, words, cfg, &e);
	if (err == -ENOMEM)
		return err;
	if (err < 0) {
		conf_problem(x, file, line, "%s", e.msg);
		return 0;
	}
	if (cfg->cmd == PH_CMD_HELP || cfg->cmd == PH_CMD_VERSION) {
		conf_problem(x, file, line, "'%s': help and version are for the command line",
		             cfg->cmd == PH_CMD_HELP ? "--help" : "--version");
		cfg->cmd = cmd;
		return 0;
	}
	cfg->cmd = cmd; /* a line adds a rule; what to do stays the command line's */
	if (cfg->nrules > nrules)
		return ph_conf_rule_origin(cfg->rules[nrules], file, line, words, n);
	return 0;
}

int ph_conf_rule_origin(struct ph_rule *r, const char *file, unsigned line, char *const *words,
                        int n)
{
	size_t len = 0;

	snprintf(r->origin, sizeof(r->origin), "%s:%u", file, line);
	for (int i = 0; i < n; i++)
		len += strlen(words[i]) + 1;
	free(r->spec);
	r->spec = malloc(len);
	if (r->spec == NULL)
		return -ENOMEM;
	r->spec_len = len;
	len = 0;
	for (int i = 0; i < n; i++) { /* each with its NUL: no word can run into the next */
		size_t k = strlen(words[i]) + 1;

		memcpy(r->spec + len, words[i], k);
		len += k;
	}
	return 0;
}

/*
 * Reads one file. from/from_line: where it was included, NULL at the top. (Over 80 lines:
 * the checks before a file is opened - cycle, depth, kind - and its line loop share the
 * context and the one cleanup; apart they would pass half a dozen things back and forth.)
 */
static int conf_file(struct conf_ctx *x, const char *path, const char *from, unsigned from_line)
{
	char *buf = NULL, *part = NULL, *real, *words[PH_CONF_MAX_WORDS];
	size_t cap = 0, len = 0, pcap = 0;
	unsigned lineno = 0, first = 0;
	int err = 0;
	FILE *f;

	real = realpath(path, NULL);
	for (int i = 0; real != NULL && i < x->depth; i++) {
		if (strcmp(x->stack[i], real) == 0) {
			conf_problem(x, from, from_line, "include '%s': includes itself", path);
			free(real);
			return 0;
		}
	}
	if (x->depth > PH_CONF_MAX_INCLUDE) {
		conf_problem(x, from, from_line, "include '%s': more than %d levels deep", path,
		             PH_CONF_MAX_INCLUDE);
		free(real);
		return 0;
	}
	f = ph_file_open(path);
	if (f == NULL) {
		err = errno == ENOMEM ? -ENOMEM : 0;
		if (errno == EINVAL)
			conf_problem(x, from != NULL ? from : path, from != NULL ? from_line : 0,
			             "'%s': not a regular file", path);
		else if (from != NULL)
			conf_problem(x, from, from_line, "include '%s': %s", path, strerror(errno));
		else
			conf_problem(x, path, 0, "cannot read: %s", strerror(errno));
		free(real);
		return err;
	}
	x->stack[x->depth++] = real != NULL ? real : strdup(path);
	for (;;) {
		ssize_t got = getline(&part, &pcap, f);
		const char *why;
		int n, col;

		if (got < 0) {
			if (len != 0) /* a continuation at the end of the file */
				conf_problem(x, path, first, "a backslash continues the last line");
			break;
		}
		lineno++;
		if (len == 0)
			first = lineno;
		while (got > 0 && (part[got - 1] == '\n' || part[got - 1] == '\r'))
			part[--got] = '\0';
		if (len + (size_t)got + 2 > CONF_MAX_LINE) {
			conf_problem(x, path, first, "line longer than %d bytes", CONF_MAX_LINE);
			len = 0;
			continue;
		}
		if (len + (size_t)got + 2 > cap) {
			char *nb = realloc(buf, len + (size_t)got + 2);

			if (nb == NULL) {
				err = -ENOMEM;
				break;
			}
			buf = nb;
			cap = len + (size_t)got + 2;
		}
		memcpy(buf + len, part, (size_t)got + 1);
		len += (size_t)got;
		if (continues(buf)) { /* the backslash and the line end become a space */
			buf[len - 1] = ' ';
			continue;
		}
		len = 0;
		n = ph_conf_split(buf, words, PH_CONF_MAX_WORDS, &why, &col);
		if (n < 0) {
			conf_problem(x, path, first, "column %d: %s", col, why);
			continue;
		}
		if (n == 0)
			continue;
		err = conf_line(x, path, first, words, n);
		if (err < 0)
			break;
	}
	fclose(f);
	free(part);
	free(buf);
	free(x->stack[--x->depth]);
	x->stack[x->depth] = NULL;
	return err;
}

static bool addr_is_any(const struct ph_addr *a)
{
	static const uint8_t zero[16];

	if (a->u.sa.sa_family == AF_INET)
		return a->u.in.sin_addr.s_addr == 0;
	return memcmp(&a->u.in6.sin6_addr, zero, sizeof(zero)) == 0;
}

/* Would two listeners fight over the same socket address? */
static bool listen_overlap(const struct ph_hostport *a, const struct ph_hostport *b)
{
	if (!(a->proto & b->proto) || a->port != b->port)
		return false;
	if (a->wildcard || b->wildcard) /* :PORT takes IPv6 and IPv4 */
		return true;
	if (a->addr.u.sa.sa_family != b->addr.u.sa.sa_family)
		return false;
	if (addr_is_any(&a->addr) || addr_is_any(&b->addr))
		return true;
	if (a->addr.u.sa.sa_family == AF_INET)
		return a->addr.u.in.sin_addr.s_addr == b->addr.u.in.sin_addr.s_addr;
	return memcmp(&a->addr.u.in6.sin6_addr, &b->addr.u.in6.sin6_addr, 16) == 0;
}

/* A listen address as it was written: "udp://[::1]:53". */
static const char *listen_fmt(const struct ph_hostport *hp, char *buf, size_t len)
{
	const char *scheme = hp->proto == PH_PROTO_UDP   ? "udp://"
	                     : hp->proto == PH_PROTO_TCP ? ""
	                                                 : "tcp+udp://";
	bool v6 = strchr(hp->host, ':') != NULL;

	snprintf(buf, len, "%s%s%s%s:%u", scheme, v6 ? "[" : "", hp->host, v6 ? "]" : "", hp->port);
	return buf;
}

/* What only the file as a whole can tell: one socket address, one name, per rule. */
static void conf_check(struct conf_ctx *x)
{
	struct ph_config *cfg = x->cfg;
	char msg[1024], l[PH_HOST_MAX + 32];

	for (unsigned j = 1; j < cfg->nrules; j++) {
		struct ph_rule *b = cfg->rules[j];
		bool addr_told = false, name_told = false;

		for (unsigned i = 0; i < j; i++) {
			struct ph_rule *a = cfg->rules[i];

			if (!addr_told && listen_overlap(&a->listen, &b->listen)) {
				snprintf(msg, sizeof(msg),
				         "%s: listen address '%s': also taken by the rule at %s",
				         b->origin, listen_fmt(&b->listen, l, sizeof(l)),
				         a->origin);
				x->problems++;
				x->report(x->arg, msg);
				addr_told = true;
			}
			if (!name_told && a->name[0] != '\0' && strcmp(a->name, b->name) == 0) {
				snprintf(msg, sizeof(msg),
				         "%s: --name '%s': also the name of the rule at %s",
				         b->origin, b->name, a->origin);
				x->problems++;
				x->report(x->arg, msg);
				name_told = true;
			}
		}
	}
}

/* True when path's first line with words is a rinetd line rather than a pinhole one. */
static bool looks_like_rinetd(const char *path)
{
	char *line = NULL, *words[PH_CONF_MAX_WORDS];
	size_t cap = 0;
	bool yes = false;
	FILE *f = ph_file_open(path);

	if (f == NULL)
		return false;
	while (getline(&line, &cap, f) >= 0) {
		const char *why;
		int col, n = ph_conf_split(line, words, PH_CONF_MAX_WORDS, &why, &col);

		if (n == 0)
			continue;
		yes = n > 0 && ph_rinetd_line(words, n);
		break;
	}
	free(line);
	fclose(f);
	return yes;
}

int ph_conf_load(const char *path, struct ph_config *cfg, ph_conf_report_fn report, void *arg)
{
	struct conf_ctx x = {.cfg = cfg, .report = report, .arg = arg};
	int err;

	if (cfg->rinetd || looks_like_rinetd(path)) {
		err = ph_rinetd_load(path, cfg, report, arg);
		if (err == 0) {
			x.problems = 0;
			conf_check(&x);
			err = x.problems;
		}
		return err;
	}

	err = conf_file(&x, path, NULL, 0);
	if (err < 0)
		return err;
	conf_check(&x);
	return x.problems;
}
