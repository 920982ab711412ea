#include "ctl/ctl.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conn/accept.h"
#include "conn/http.h"
#include "core/addr.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/net.h"
#include "core/util.h"
#include "core/worker.h"
#include "forward/forward.h"
#include "tunnel/msg.h"
#include "tunnel/tunnel.h"

#define CTL_MAX_CLIENTS 64
#define CTL_LINE_MAX    PH_HTTP_HEAD_MAX /* a command line, or a request head */
#define CTL_TIMEOUT_MS  5000             /* a client that says nothing, or reads nothing, goes */

struct ctl_client {
	struct ph_io io;
	struct ph_timer timer;
	struct ph_task reap;
	struct ph_list node;
	struct ph_ctl *ctl;
	char line[CTL_LINE_MAX + 1];
	size_t got;
	char *reply; /* owned once the command is answered */
	size_t len, sent;
};

struct ph_ctl {
	struct ph_loop *loop;
	struct ph_acceptor lio; /* cost 0: CTL_MAX_CLIENTS bounds it, and status must work when
	                        * connections have spent the fd budget */
	struct ph_list clients;
	unsigned nclients;
	ph_ctl_fn fn;
	void *arg;
	bool http; /* a metrics endpoint: HTTP requests rather than command lines */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* "" for TCP */
};

const char *ph_ctl_default_path(char *buf, size_t len)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR");

	if (geteuid() == 0)
		snprintf(buf, len, "/run/pinhole.sock");
	else if (xdg != NULL && xdg[0] == '/')
		snprintf(buf, len, "%s/pinhole.sock", xdg);
	else /* not /tmp itself, where anyone may take the name first: a directory of ours */
		snprintf(buf, len, "/tmp/pinhole-%u/pinhole.sock", (unsigned)geteuid());
	return buf;
}

/* The directory part of path into buf: "." when it has none, "/" for the root. */
static void dir_of(const char *path, char *buf, size_t len)
{
	const char *slash = strrchr(path, '/');

	if (slash == NULL)
		snprintf(buf, len, ".");
	else if (slash == path)
		snprintf(buf, len, "/");
	else
		snprintf(buf, len, "%.*s", (int)(slash - path), path);
}

/*
 * May we serve at path? Its directory must be ours or root's and, unless sticky like /tmp,
 * writable by nobody else: otherwise another user could swap the socket under us. A file
 * already at path must be a socket of ours (a stale one is replaced later); one another
 * user made first is refused, not reused or removed. Makes the default's own directory
 * (/tmp/pinhole-UID, mode 0700) when missing. Returns 0, or -errno with a reason in why.
 */
static int ctl_path_check(const char *path, char *why, size_t whylen)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)], def[sizeof(dir)];
	uid_t me = geteuid();
	struct stat st;
	int err;

	dir_of(path, dir, sizeof(dir));
	if (strcmp(path, ph_ctl_default_path(def, sizeof(def))) == 0 &&
	    strncmp(dir, "/tmp/pinhole-", 13) == 0 && mkdir(dir, 0700) == -1 && errno != EEXIST) {
		err = -errno;
		snprintf(why, whylen, "control socket '%s': cannot make %s: %s", path, dir,
		         strerror(-err));
		return err;
	}
	if (stat(dir, &st) == -1) {
		err = -errno;
		snprintf(why, whylen, "control socket '%s': %s: %s", path, dir, strerror(-err));
		return err;
	}
	if (st.st_uid != me && st.st_uid != 0) {
		snprintf(why, whylen,
		         "control socket '%s': its directory %s belongs to uid %u, not to us: "
		         "refused (give --control PATH in a directory of ours)",
		         path, dir, (unsigned)st.st_uid);
		return -EPERM;
	}
	if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (st.st_mode & S_ISVTX) == 0) {
		snprintf(why, whylen,
		         "control socket '%s': its directory %s is writable by others: refused",
		         path, dir);
		return -EPERM;
	}
	if (lstat(path, &st) == -1) {
		if (errno == ENOENT)
			return 0;
		err = -errno;
		snprintf(why, whylen, "control socket '%s': %s", path, strerror(-err));
		return err;
	}
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(why, whylen, "control socket '%s': something else is there: refused",
		         path);
		return -EEXIST;
	}
	if (st.st_uid != me) {
		snprintf(why, whylen,
		         "control socket '%s': belongs to uid %u, not to us: refused (remove it, "
		         "or give --control PATH)",
		         path, (unsigned)st.st_uid);
		return -EPERM;
	}
	return 0;
}

static void client_reap(struct ph_task *t)
{
	struct ctl_client *c = container_of(t, struct ctl_client, reap);

	free(c->reply);
	free(c);
}

static void client_close(struct ctl_client *c)
{
	struct ph_ctl *ctl = c->ctl;

	if (c->io.fd == -1)
		return;
	ph_io_close(ctl->loop, &c->io);
	ph_timer_stop(ctl->loop, &c->timer);
	ph_list_del(&c->node);
	ctl->nclients--;
	ph_task_queue(ctl->loop, &c->reap); /* events of this batch may still name it */
}

static void client_write(struct ctl_client *c)
{
	while (c->sent < c->len) {
		ssize_t n = send(c->io.fd, c->reply + c->sent, c->len - c->sent, MSG_NOSIGNAL);

		if (n > 0) {
			c->sent += (size_t)n;
			continue;
		}
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN)
			return; /* EPOLLOUT brings us back */
		break;
	}
	client_close(c);
}

/* An HTTP reply: status line, headers, and body (taken) unless head_only. */
static char *http_reply(const char *status, char *body, size_t blen, bool head_only, size_t *len)
{
	static const char fmt[] = "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
				  "Connection: close\r\n\r\n";
	const char *type = strncmp(status, "200", 3) == 0
	                           ? "text/plain; version=0.0.4; charset=utf-8"
	                           : "text/plain; charset=utf-8";
	int hlen = snprintf(NULL, 0, fmt, status, type, blen);
	char *r;

	if (body == NULL || hlen < 0 || (r = malloc((size_t)hlen + 1 + blen)) == NULL) {
		free(body);
		return NULL; /* out of memory: the client is closed */
	}
	snprintf(r, (size_t)hlen + 1, fmt, status, type, blen);
	if (!head_only)
		memcpy(r + hlen, body, blen);
	*len = (size_t)hlen + (head_only ? 0 : blen);
	free(body);
	return r;
}

/* The reply to a request head that is complete (n > 0) or bad (n < 0). */
static char *http_answer(struct ph_ctl *ctl, int n, const struct ph_http_req *req, size_t *len)
{
	char *body;
	size_t blen;
	bool head;

	if (n < 0)
		return http_reply("400 Bad Request", strdup("bad request\n"), 12, false, len);
	head = req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0;
	if (!head && !(req->method_len == 3 && memcmp(req->method, "GET", 3) == 0))
		return http_reply("405 Method Not Allowed", strdup("GET /metrics\n"), 13, false,
		                  len);
	if (req->path_len < 8 || memcmp(req->path, "/metrics", 8) != 0 ||
	    (req->path_len > 8 && req->path[8] != '?'))
		return http_reply("404 Not Found", strdup("see /metrics\n"), 13, head, len);
	body = ctl->fn(ctl->arg, "metrics", &blen);
	if (body == NULL)
		return NULL;
	return http_reply("200 OK", body, blen, head, len);
}

static void client_on_io(struct ph_io *io, uint32_t events)
{
	struct ctl_client *c = container_of(io, struct ctl_client, io);
	struct ph_http_req req;
	const char *why;
	char *nl = NULL;
	int hn = 0;

	if (c->reply != NULL) {
		if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
			client_write(c);
		return;
	}
	for (;;) {
		ssize_t n = recv(io->fd, c->line + c->got, sizeof(c->line) - 1 - c->got, 0);

		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN)
			return;
		if (n <= 0) {
			client_close(c);
			return;
		}
		c->got += (size_t)n;
		c->line[c->got] = '\0';
		if (c->ctl->http) {
			hn = ph_http_parse(c->line, c->got, &req, &why);
			if (hn != -EAGAIN)
				break;
			if (c->got == sizeof(c->line) - 1) {
				hn = -EPROTO;
				break;
			}
			continue;
		}
		nl = strchr(c->line, '\n');
		if (nl != NULL)
			break;
		if (c->got == sizeof(c->line) - 1) {
			client_close(c); /* no command is that long */
			return;
		}
	}
	if (c->ctl->http) {
		c->reply = http_answer(c->ctl, hn, &req, &c->len);
	} else {
		*nl = '\0';
		if (nl > c->line && nl[-1] == '\r')
			nl[-1] = '\0';
		c->reply = c->ctl->fn(c->ctl->arg, c->line, &c->len);
	}
	if (c->reply == NULL) {
		client_close(c);
		return;
	}
	ph_timer_arm(c->ctl->loop, &c->timer, CTL_TIMEOUT_MS);
	client_write(c);
}

static void client_on_timeout(struct ph_timer *t)
{
	client_close(container_of(t, struct ctl_client, timer));
}

static void ctl_on_accept(struct ph_acceptor *a, int fd, const struct ph_addr *peer)
{
	struct ph_ctl *ctl = container_of(a, struct ph_ctl, lio);
	struct ctl_client *c;

	(void)peer;
	if (ctl->nclients >= CTL_MAX_CLIENTS || (c = calloc(1, sizeof(*c))) == NULL) {
		close(fd);
		return;
	}
	c->ctl = ctl;
	ph_io_init(&c->io, fd, client_on_io);
	ph_timer_init(&c->timer, client_on_timeout);
	ph_task_init(&c->reap, client_reap);
	ph_list_add_tail(&ctl->clients, &c->node);
	ctl->nclients++;
	if (ph_io_add(ctl->loop, &c->io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) < 0) {
		client_close(c);
		return;
	}
	ph_timer_arm(ctl->loop, &c->timer, CTL_TIMEOUT_MS);
}

static const char *ctl_label(struct ph_acceptor *a, char *buf, size_t len)
{
	struct ph_ctl *ctl = container_of(a, struct ph_ctl, lio);

	snprintf(buf, len, "%s", ctl->http ? "--metrics" : "control socket");
	return buf;
}

/* Is somebody answering at sa? */
static bool ctl_alive(const struct sockaddr_un *sa)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool alive;

	if (fd == -1)
		return false;
	alive = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0;
	close(fd);
	return alive;
}

int ph_ctl_open(struct ph_loop *l, const char *path, ph_ctl_fn fn, void *arg, struct ph_ctl **out,
                char *why, size_t whylen)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct ph_ctl *ctl;
	mode_t old;
	int fd, err;

	*out = NULL;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(why, whylen, "control socket '%s': path too long", path);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	err = ctl_path_check(path, why, whylen);
	if (err < 0)
		return err;
	ctl = calloc(1, sizeof(*ctl));
	if (ctl == NULL) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		err = -errno;
		goto err_free;
	}
	old = umask(0177); /* 0600 from the start: no window where others may connect */
	err = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1 ? -errno : 0;
	if (err == -EADDRINUSE && !ctl_alive(&sa) && unlink(path) == 0) /* a stale file */
		err = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1 ? -errno : 0;
	umask(old);
	if (err == -EADDRINUSE) {
		snprintf(why, whylen,
		         "control socket '%s': another pinhole answers there (give this one "
		         "--control PATH)",
		         path);
		goto err_close;
	}
	if (err < 0 || listen(fd, 16) == -1) {
		err = err < 0 ? err : -errno;
		snprintf(why, whylen, "control socket '%s': %s", path, strerror(-err));
		goto err_close;
	}
	ctl->loop = l;
	ctl->fn = fn;
	ctl->arg = arg;
	ph_list_init(&ctl->clients);
	snprintf(ctl->path, sizeof(ctl->path), "%s", path);
	ph_acceptor_init(&ctl->lio, fd, 0, ctl_on_accept, ctl_label);
	err = ph_acceptor_start(l, &ctl->lio);
	if (err < 0) {
		snprintf(why, whylen, "control socket: epoll: %s", strerror(-err));
		unlink(path);
		goto err_close;
	}
	*out = ctl;
	return 0;

err_close:
	close(fd);
err_free:
	if (why[0] == '\0')
		snprintf(why, whylen, "control socket '%s': %s", path, strerror(-err));
	free(ctl);
	return err;
}

int ph_metrics_open(struct ph_loop *l, const struct ph_addr *a, ph_ctl_fn fn, void *arg,
                    struct ph_ctl **out, char *why, size_t whylen)
{
	struct ph_ctl *ctl;
	char s[PH_ADDR_STRLEN];
	int fd, err;

	*out = NULL;
	ctl = calloc(1, sizeof(*ctl));
	if (ctl == NULL) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	fd = ph_tcp_listen(a, true, false);
	if (fd < 0) {
		snprintf(why, whylen, "--metrics %s: %s", ph_addr_fmt(a, s, sizeof(s)),
		         ph_bind_strerror(fd));
		free(ctl);
		return fd;
	}
	ctl->loop = l;
	ctl->fn = fn;
	ctl->arg = arg;
	ctl->http = true;
	ph_list_init(&ctl->clients);
	ph_acceptor_init(&ctl->lio, fd, 0, ctl_on_accept, ctl_label);
	err = ph_acceptor_start(l, &ctl->lio);
	if (err < 0) {
		snprintf(why, whylen, "--metrics: epoll: %s", strerror(-err));
		close(fd);
		free(ctl);
		return err;
	}
	*out = ctl;
	return 0;
}

void ph_ctl_close(struct ph_ctl *ctl)
{
	if (ctl == NULL)
		return;
	while (!ph_list_empty(&ctl->clients)) {
		struct ctl_client *c = container_of(ctl->clients.next, struct ctl_client, node);

		client_close(c);
		ph_task_cancel(&c->reap);
		client_reap(&c->reap);
	}
	ph_acceptor_close(&ctl->lio);
	if (ctl->path[0] != '\0')
		unlink(ctl->path); /* may fail after --user: harmless, the next start replaces it */
	free(ctl);
}

int ph_ctl_request(const char *path, const char *cmd, FILE *out, char *why, size_t whylen)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct timeval tv = {.tv_sec = 10};
	struct stat st;
	char buf[4096];
	size_t len = strlen(cmd);
	int fd, err = 0;
	ssize_t n;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(why, whylen, "control socket '%s': path too long", path);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	/* a socket another user made first would answer in pinhole's name */
	if (geteuid() != 0 && lstat(path, &st) == 0 && st.st_uid != geteuid() && st.st_uid != 0) {
		snprintf(why, whylen,
		         "control socket '%s': belongs to uid %u, not to you or root: refused",
		         path, (unsigned)st.st_uid);
		return -EPERM;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1) {
		err = -errno;
		snprintf(why, whylen, "cannot reach pinhole at '%s': %s%s", path, strerror(-err),
		         err == -ENOENT || err == -ECONNREFUSED
		                 ? " (is it running? give --control PATH if it has another)"
		                 : "");
		goto out;
	}
	if (send(fd, cmd, len, MSG_NOSIGNAL) != (ssize_t)len ||
	    send(fd, "\n", 1, MSG_NOSIGNAL) != 1) {
		err = -errno;
		snprintf(why, whylen, "control socket '%s': %s", path, strerror(-err));
		goto out;
	}
	while ((n = recv(fd, buf, sizeof(buf), 0)) > 0)
		fwrite(buf, 1, (size_t)n, out);
	if (n == -1) {
		err = -errno;
		snprintf(why, whylen, "control socket '%s': %s", path, strerror(-err));
	}
out:
	close(fd);
	return err;
}

/* ---- the status report */

struct sb {
	char *p;
	size_t len, cap;
	bool oom;
};

static void sb_add(struct sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(struct sb *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->oom)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p != NULL ? b->p + b->len : NULL, b->cap - b->len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = true;
			return;
		}
		if (b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap * 2 + (size_t)n + 256;
		char *p = realloc(b->p, cap);

		if (p == NULL) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
}

/* s as a JSON string, quotes included */
static void sb_json_str(struct sb *b, const char *s)
{
	sb_add(b, "\"");
	for (; *s != '\0'; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			sb_add(b, "\\%c", ch);
		else if (ch < 0x20)
			sb_add(b, "\\u%04x", ch);
		else
			sb_add(b, "%c", ch);
	}
	sb_add(b, "\"");
}

static const char *proto_name(unsigned proto)
{
	return proto == PH_PROTO_UDP ? "udp" : proto == PH_PROTO_TCP ? "tcp" : "tcp+udp";
}

static void target_fmt(const struct ph_rule *r, unsigned t, char *buf, size_t len)
{
	const struct ph_hostport *hp = &r->targets[t].hp;
	char a[PH_ADDR_STRLEN];

	if (hp->is_name)
		snprintf(buf, len, "%s:%u", hp->host, hp->port);
	else
		snprintf(buf, len, "%s", ph_addr_fmt(&hp->addr, a, sizeof(a)));
}

static void rule_text(struct sb *b, const struct ph_rule *r, const char *state)
{
	struct ph_stats s;
	char a[PH_ADDR_STRLEN], t[PH_HOST_MAX + 16], up[32], down[32];

	ph_forward_stats(r, &s);
	sb_add(b, "rule %s%s%s%s: %s %s ->", r->name[0] ? r->name : "-", r->origin[0] ? " (" : "",
	       r->origin, r->origin[0] ? ")" : "",
	       r->kind == PH_RULE_SOCKS ? "socks" : proto_name(r->listen.proto),
	       ph_addr_fmt(&r->listen.addr, a, sizeof(a)));
	if (r->kind == PH_RULE_SOCKS)
		sb_add(b, " where each client asks");
	for (unsigned i = 0; i < r->ntargets; i++) {
		target_fmt(r, i, t, sizeof(t));
		sb_add(b, "%s %s", i ? "," : "", t);
	}
	sb_add(b, "%s\n", state);
	if (r->listen.proto & PH_PROTO_TCP)
		sb_add(b,
		       "  tcp: %llu connections active, %llu in all; %s up, %s down; %llu denied, "
		       "%llu over limit, %llu target failures, %llu resets, %llu errors\n",
		       (unsigned long long)s.active, (unsigned long long)s.accepted,
		       ph_fmt_bytes(s.bytes_up, up, sizeof(up)),
		       ph_fmt_bytes(s.bytes_down, down, sizeof(down)), (unsigned long long)s.denied,
		       (unsigned long long)s.over_limit, (unsigned long long)s.connect_failed,
		       (unsigned long long)s.resets, (unsigned long long)s.errors);
	if (r->listen.proto & PH_PROTO_UDP)
		sb_add(b,
		       "  udp: %llu sessions active, %llu in all; %llu datagrams up, %llu down, "
		       "%llu dropped, %llu evicted\n",
		       (unsigned long long)s.udp_active, (unsigned long long)s.udp_sessions,
		       (unsigned long long)s.dgrams_up, (unsigned long long)s.dgrams_down,
		       (unsigned long long)s.dgrams_dropped, (unsigned long long)s.udp_evicted);
}

static void rule_json(struct sb *b, const struct ph_rule *r, bool removed)
{
	struct ph_stats s;
	char a[PH_ADDR_STRLEN], t[PH_HOST_MAX + 16];

	ph_forward_stats(r, &s);
	sb_add(b, "{\"name\":");
	sb_json_str(b, r->name);
	sb_add(b, ",\"origin\":");
	sb_json_str(b, r->origin);
	sb_add(b, ",\"removed\":%s,\"kind\":\"%s\",\"proto\":\"%s\",\"listen\":",
	       removed ? "true" : "false", r->kind == PH_RULE_SOCKS ? "socks" : "forward",
	       proto_name(r->listen.proto));
	sb_json_str(b, ph_addr_fmt(&r->listen.addr, a, sizeof(a)));
	sb_add(b, ",\"targets\":[");
	for (unsigned i = 0; i < r->ntargets; i++) {
		target_fmt(r, i, t, sizeof(t));
		sb_add(b, "%s", i ? "," : "");
		sb_json_str(b, t);
	}
	sb_add(b,
	       "],\"connections\":{\"active\":%llu,\"total\":%llu},\"bytes\":{\"up\":%llu,"
	       "\"down\":%llu,\"spliced\":%llu},\"udp\":{\"sessions_active\":%llu,"
	       "\"sessions_total\":%llu,\"datagrams_up\":%llu,\"datagrams_down\":%llu,"
	       "\"dropped\":%llu,\"evicted\":%llu},\"errors\":{\"denied\":%llu,"
	       "\"over_limit\":%llu,\"target_failures\":%llu,\"resets\":%llu,\"other\":%llu}}",
	       (unsigned long long)s.active, (unsigned long long)s.accepted,
	       (unsigned long long)s.bytes_up, (unsigned long long)s.bytes_down,
	       (unsigned long long)s.spliced, (unsigned long long)s.udp_active,
	       (unsigned long long)s.udp_sessions, (unsigned long long)s.dgrams_up,
	       (unsigned long long)s.dgrams_down, (unsigned long long)s.dgrams_dropped,
	       (unsigned long long)s.udp_evicted, (unsigned long long)s.denied,
	       (unsigned long long)s.over_limit, (unsigned long long)s.connect_failed,
	       (unsigned long long)s.resets, (unsigned long long)s.errors);
}

char *ph_status_render(const struct ph_status_src *src, bool json, size_t *len)
{
	struct sb b = {0};
	uint64_t up = src->uptime_ms / 1000;
	const struct ph_stats *t = src->totals;
	char upb[32], downb[32];

	if (json) {
		sb_add(&b, "{\"version\":");
		sb_json_str(&b, src->version);
		sb_add(&b, ",\"pid\":%ld,\"uptime_s\":%llu,\"workers\":%u,\"file\":", src->pid,
		       (unsigned long long)up, src->workers);
		if (src->file != NULL)
			sb_json_str(&b, src->file);
		else
			sb_add(&b, "null");
		sb_add(&b, ",\"rules\":[");
		for (unsigned i = 0; i < src->nrules; i++) {
			sb_add(&b, "%s", i ? "," : "");
			rule_json(&b, src->rules[i], false);
		}
		for (unsigned i = 0; i < src->nretiring; i++) {
			sb_add(&b, "%s", i || src->nrules ? "," : "");
			rule_json(&b, src->retiring[i], true);
		}
		sb_add(&b,
		       "],\"totals\":{\"connections\":{\"active\":%llu,\"total\":%llu},"
		       "\"bytes\":{\"up\":%llu,\"down\":%llu},\"udp_sessions\":{\"active\":%llu,"
		       "\"total\":%llu},\"errors\":{\"denied\":%llu,\"over_limit\":%llu,"
		       "\"target_failures\":%llu,\"resets\":%llu,\"udp_dropped\":%llu,"
		       "\"other\":%llu}}}\n",
		       (unsigned long long)t->active, (unsigned long long)t->accepted,
		       (unsigned long long)t->bytes_up, (unsigned long long)t->bytes_down,
		       (unsigned long long)t->udp_active, (unsigned long long)t->udp_sessions,
		       (unsigned long long)t->denied, (unsigned long long)t->over_limit,
		       (unsigned long long)t->connect_failed, (unsigned long long)t->resets,
		       (unsigned long long)t->dgrams_dropped, (unsigned long long)t->errors);
	} else {
		sb_add(&b, "pinhole %s, pid %ld, up %llud %02lluh%02llum%02llus, %u workers%s%s\n",
		       src->version, src->pid, (unsigned long long)(up / 86400),
		       (unsigned long long)(up / 3600 % 24), (unsigned long long)(up / 60 % 60),
		       (unsigned long long)(up % 60), src->workers,
		       src->file != NULL ? ", rules from " : "",
		       src->file != NULL ? src->file : "");
		for (unsigned i = 0; i < src->nrules; i++)
			rule_text(&b, src->rules[i], "");
		for (unsigned i = 0; i < src->nretiring; i++)
			rule_text(&b, src->retiring[i], " (removed: its connections finish)");
		sb_add(&b,
		       "total: %llu connections active, %llu in all; %llu udp sessions active, "
		       "%llu in all; %s up, %s down; %llu denied, %llu over limit, %llu target "
		       "failures, %llu resets, %llu datagrams dropped, %llu errors\n",
		       (unsigned long long)t->active, (unsigned long long)t->accepted,
		       (unsigned long long)t->udp_active, (unsigned long long)t->udp_sessions,
		       ph_fmt_bytes(t->bytes_up, upb, sizeof(upb)),
		       ph_fmt_bytes(t->bytes_down, downb, sizeof(downb)),
		       (unsigned long long)t->denied, (unsigned long long)t->over_limit,
		       (unsigned long long)t->connect_failed, (unsigned long long)t->resets,
		       (unsigned long long)t->dgrams_dropped, (unsigned long long)t->errors);
	}
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	*len = b.len;
	return b.p;
}

/* ---- Prometheus metrics */

/* A label value: backslash, double quote and newline escaped. */
static void sb_label(struct sb *b, const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s == '\\' || *s == '"')
			sb_add(b, "\\%c", *s);
		else if (*s == '\n')
			sb_add(b, "\\n");
		else
			sb_add(b, "%c", *s);
	}
}

/* The labels that name a rule: rule (its name, or where it is written, or its listen
 * address), proto and listen. */
static void sb_rule_labels(struct sb *b, const struct ph_rule *r)
{
	char a[PH_ADDR_STRLEN];

	ph_addr_fmt(&r->listen.addr, a, sizeof(a));
	sb_add(b, "rule=\"");
	sb_label(b, r->name[0] != '\0' ? r->name : r->origin[0] != '\0' ? r->origin : a);
	sb_add(b, "\",proto=\"%s\",listen=\"", proto_name(r->listen.proto));
	sb_label(b, a);
	sb_add(b, "\"");
}

enum metric_field {
	M_ACCEPTED,
	M_ACTIVE,
	M_BYTES_UP,
	M_BYTES_DOWN,
	M_SPLICED,
	M_DENIED,
	M_OVER_LIMIT,
	M_TARGET_FAILURES,
	M_RESETS,
	M_ERRORS,
	M_UDP_SESSIONS,
	M_UDP_ACTIVE,
	M_DGRAMS_UP,
	M_DGRAMS_DOWN,
	M_DROPPED,
	M_EVICTED,
};

static uint64_t metric_value(const struct ph_stats *s, enum metric_field f)
{
	switch (f) {
	case M_ACCEPTED:
		return s->accepted;
	case M_ACTIVE:
		return s->active;
	case M_BYTES_UP:
		return s->bytes_up;
	case M_BYTES_DOWN:
		return s->bytes_down;
	case M_SPLICED:
		return s->spliced;
	case M_DENIED:
		return s->denied;
	case M_OVER_LIMIT:
		return s->over_limit;
	case M_TARGET_FAILURES:
		return s->connect_failed;
	case M_RESETS:
		return s->resets;
	case M_ERRORS:
		return s->errors;
	case M_UDP_SESSIONS:
		return s->udp_sessions;
	case M_UDP_ACTIVE:
		return s->udp_active;
	case M_DGRAMS_UP:
		return s->dgrams_up;
	case M_DGRAMS_DOWN:
		return s->dgrams_down;
	case M_DROPPED:
		return s->dgrams_dropped;
	case M_EVICTED:
		return s->udp_evicted;
	}
	return 0;
}

/* One metric family: its HELP and TYPE, then a sample per rule (one per extra label
 * value when extra is given: "direction" up/down, "reason" ...). */
struct metric {
	const char *name, *type, *help;
	const char *extra;           /* an extra label's name, or NULL */
	const char *values[2];       /* its values */
	enum metric_field fields[2]; /* the counter for each value (or fields[0] alone) */
	unsigned proto;              /* the rules it is about: PH_PROTO_* bits */
};

static const struct metric metrics[] = {
	{"pinhole_connections_total",
         "counter",
         "TCP connections accepted.",
         NULL,
         {0},
         {M_ACCEPTED},
         PH_PROTO_TCP},
	{"pinhole_connections_active",
         "gauge",
         "TCP connections open now.",
         NULL,
         {0},
         {M_ACTIVE},
         PH_PROTO_TCP},
	{"pinhole_bytes_total",
         "counter",
         "Bytes forwarded, TCP and UDP: up is client to target.",
         "direction",
         {"up", "down"},
         {M_BYTES_UP, M_BYTES_DOWN},
         PH_PROTO_TCP | PH_PROTO_UDP},
	{"pinhole_spliced_bytes_total",
         "counter",
         "TCP bytes moved by splice(2), without a copy.",
         NULL,
         {0},
         {M_SPLICED},
         PH_PROTO_TCP},
	{"pinhole_refused_total",
         "counter",
         "Clients refused: by --allow/--deny or --accept-proxy (denied), by --max-conns or "
         "--max-sessions (over_limit).",
         "reason",
         {"denied", "over_limit"},
         {M_DENIED, M_OVER_LIMIT},
         PH_PROTO_TCP | PH_PROTO_UDP},
	{"pinhole_target_failures_total",
         "counter",
         "Connections or sessions for which no target could be reached.",
         NULL,
         {0},
         {M_TARGET_FAILURES},
         PH_PROTO_TCP | PH_PROTO_UDP},
	{"pinhole_resets_total",
         "counter",
         "TCP resets passed on.",
         NULL,
         {0},
         {M_RESETS},
         PH_PROTO_TCP},
	{"pinhole_errors_total",
         "counter",
         "Other failures: memory, descriptors, bad PROXY headers.",
         NULL,
         {0},
         {M_ERRORS},
         PH_PROTO_TCP | PH_PROTO_UDP},
	{"pinhole_udp_sessions_total",
         "counter",
         "UDP sessions made.",
         NULL,
         {0},
         {M_UDP_SESSIONS},
         PH_PROTO_UDP},
	{"pinhole_udp_sessions_active",
         "gauge",
         "UDP sessions alive now.",
         NULL,
         {0},
         {M_UDP_ACTIVE},
         PH_PROTO_UDP},
	{"pinhole_udp_datagrams_total",
         "counter",
         "UDP datagrams forwarded: up is client to target.",
         "direction",
         {"up", "down"},
         {M_DGRAMS_UP, M_DGRAMS_DOWN},
         PH_PROTO_UDP},
	{"pinhole_udp_dropped_total",
         "counter",
         "UDP datagrams dropped (full buffers, no session).",
         NULL,
         {0},
         {M_DROPPED},
         PH_PROTO_UDP},
	{"pinhole_udp_evicted_total",
         "counter",
         "UDP sessions ended early by --max-sessions.",
         NULL,
         {0},
         {M_EVICTED},
         PH_PROTO_UDP},
};

/* A family of the relay's services or the exposer's rules, read from struct ph_tunnel_svc. */
struct tmetric {
	const char *name, *type, *help;
	const char *extra;     /* an extra label's name, or NULL */
	const char *values[2]; /* its values */
	size_t fields[2];      /* offsetof the uint64_t in ph_tunnel_svc for each value */
};

#define TF(f) offsetof(struct ph_tunnel_svc, f)

static const struct tmetric relay_metrics[] = {
	{"pinhole_relay_service_up",
         "gauge",
         "A public port of the relay: 1 while its client's session holds it, 0 while held for "
         "its key.",
         NULL,
         {0},
         {TF(up)}},
	{"pinhole_relay_visitors_total",
         "counter",
         "Visitors carried (UDP: peers).",
         NULL,
         {0},
         {TF(visitors)}},
	{"pinhole_relay_visitors_active",
         "gauge",
         "Visitors connected now.",
         NULL,
         {0},
         {TF(live)}},
	{"pinhole_relay_refused_total",
         "counter",
         "Visitors turned away: by --allow/--deny of the relay or the service (denied; UDP: "
         "datagrams), by the client's --max-conns (over_limit).",
         "reason",
         {"denied", "over_limit"},
         {TF(denied), TF(refused)}},
	{"pinhole_relay_bytes_total",
         "counter",
         "Bytes of ended streams and of datagrams: up is from the visitors.",
         "direction",
         {"up", "down"},
         {TF(bytes_up), TF(bytes_down)}},
	{"pinhole_relay_datagrams_total",
         "counter",
         "UDP datagrams from visitors.",
         NULL,
         {0},
         {TF(dgrams)}},
};

static const struct tmetric expose_metrics[] = {
	{"pinhole_expose_up",
         "gauge",
         "An expose rule: 1 while its port on the relay is public.",
         NULL,
         {0},
         {TF(up)}},
	{"pinhole_expose_visitors_total",
         "counter",
         "Visitors the relay sent (UDP: flows).",
         NULL,
         {0},
         {TF(visitors)}},
	{"pinhole_expose_visitors_active",
         "gauge",
         "Visitors connected now.",
         NULL,
         {0},
         {TF(live)}},
	{"pinhole_expose_failures_total",
         "counter",
         "Visitors that failed: LOCAL could not be reached (refused), a stream ended with a "
         "reset (reset).",
         "reason",
         {"refused", "reset"},
         {TF(refused), TF(failed)}},
	{"pinhole_expose_bytes_total",
         "counter",
         "Bytes of ended streams: up is from the visitors to LOCAL.",
         "direction",
         {"up", "down"},
         {TF(bytes_up), TF(bytes_down)}},
};

/* The services or rules gathered for one render. */
struct tsvcs {
	struct ph_tunnel_svc *v; /* owned */
	size_t n, cap;
	bool oom;
};

static void tsvcs_add(void *arg, const struct ph_tunnel_svc *v)
{
	struct tsvcs *t = arg;

	if (t->n == t->cap) {
		size_t cap = t->cap != 0 ? t->cap * 2 : 16;
		struct ph_tunnel_svc *nv = realloc(t->v, cap * sizeof(*nv));

		if (nv == NULL) {
			t->oom = true;
			return;
		}
		t->v = nv;
		t->cap = cap;
	}
	t->v[t->n++] = *v;
}

/* The families of tab (n of them) with a sample per service in t; relay: its labels. */
static void sb_tunnel_metrics(struct sb *b, const struct tmetric *tab, size_t n,
                              const struct tsvcs *t, bool relay)
{
	for (size_t m = 0; m < n; m++) {
		const struct tmetric *mt = &tab[m];

		sb_add(b, "# HELP %s %s\n# TYPE %s %s\n", mt->name, mt->help, mt->name, mt->type);
		for (size_t i = 0; i < t->n; i++) {
			const struct ph_tunnel_svc *v = &t->v[i];

			for (int k = 0; k < (mt->extra != NULL ? 2 : 1); k++) {
				uint64_t val;

				memcpy(&val, (const char *)v + mt->fields[k], sizeof(val));
				sb_add(b, "%s{proto=\"%s\",kind=\"%s\",", mt->name, v->proto,
				       v->kind);
				if (relay) {
					sb_add(b, "port=\"%llu\"", (unsigned long long)v->port);
				} else {
					sb_add(b, "local=\"");
					sb_label(b, v->local);
					sb_add(b, "\"");
				}
				sb_add(b, ",name=\"");
				sb_label(b, v->name);
				sb_add(b, "\"");
				if (mt->extra != NULL)
					sb_add(b, ",%s=\"%s\"", mt->extra, mt->values[k]);
				sb_add(b, "} %llu\n", (unsigned long long)val);
			}
		}
	}
}

/* The relay's and the exposer's families, when they run here. */
static void sb_tunnels(struct sb *b, const struct ph_status_src *src)
{
	struct ph_tunnel_stats st;
	struct tsvcs t = {0};

	if (src->relay != NULL) {
		ph_relay_stats(src->relay, &st);
		sb_add(b,
		       "# HELP pinhole_relay_sessions Client sessions up now.\n"
		       "# TYPE pinhole_relay_sessions gauge\npinhole_relay_sessions %llu\n"
		       "# HELP pinhole_relay_sessions_total Client sessions that were up.\n"
		       "# TYPE pinhole_relay_sessions_total counter\n"
		       "pinhole_relay_sessions_total %llu\n",
		       (unsigned long long)st.sessions_live, (unsigned long long)st.sessions);
		sb_add(b, "# HELP pinhole_relay_checks_total Checks (pinhole check) answered, by "
		          "result.\n# TYPE pinhole_relay_checks_total counter\n");
		for (uint8_t i = PH_CHECK_OPEN; i <= PH_CHECK_OPEN_FILTERED; i++)
			sb_add(b, "pinhole_relay_checks_total{result=\"%s\"} %llu\n",
			       ph_check_result_name(i), (unsigned long long)st.checks[i]);
		sb_add(b,
		       "# HELP pinhole_relay_opened_total Streams the clients opened (local, socks "
		       "--via): carried, or refused.\n"
		       "# TYPE pinhole_relay_opened_total counter\n"
		       "pinhole_relay_opened_total{result=\"carried\"} %llu\n"
		       "pinhole_relay_opened_total{result=\"refused\"} %llu\n"
		       "# HELP pinhole_relay_opened_bytes_total Bytes of ended client-opened "
		       "streams: up "
		       "is from the clients.\n"
		       "# TYPE pinhole_relay_opened_bytes_total counter\n"
		       "pinhole_relay_opened_bytes_total{direction=\"up\"} %llu\n"
		       "pinhole_relay_opened_bytes_total{direction=\"down\"} %llu\n",
		       (unsigned long long)st.opened, (unsigned long long)st.opened_refused,
		       (unsigned long long)st.opened_up, (unsigned long long)st.opened_down);
		ph_relay_each(src->relay, tsvcs_add, &t);
		sb_tunnel_metrics(b, relay_metrics, PH_ARRAY_SIZE(relay_metrics), &t, true);
		t.n = 0;
	}
	if (src->exposer != NULL) {
		ph_expose_stats(src->exposer, &st);
		sb_add(b,
		       "# HELP pinhole_expose_sessions Sessions with relays up now.\n"
		       "# TYPE pinhole_expose_sessions gauge\npinhole_expose_sessions %llu\n",
		       (unsigned long long)st.sessions_live);
		ph_expose_each(src->exposer, tsvcs_add, &t);
		sb_tunnel_metrics(b, expose_metrics, PH_ARRAY_SIZE(expose_metrics), &t, false);
	}
	b->oom |= t.oom;
	free(t.v);
}

char *ph_metrics_render(const struct ph_status_src *src, size_t *len)
{
	struct ph_stats *st;
	struct sb b = {0};

	st = calloc(src->nrules ? src->nrules : 1, sizeof(*st));
	if (st == NULL)
		return NULL;
	for (unsigned i = 0; i < src->nrules; i++)
		ph_forward_stats(src->rules[i], &st[i]);
	sb_add(&b, "# HELP pinhole_info The running pinhole.\n# TYPE pinhole_info gauge\n");
	sb_add(&b, "pinhole_info{version=\"");
	sb_label(&b, src->version);
	sb_add(&b, "\"} 1\n");
	sb_add(&b,
	       "# HELP pinhole_uptime_seconds Seconds since the start.\n"
	       "# TYPE pinhole_uptime_seconds gauge\npinhole_uptime_seconds %llu\n",
	       (unsigned long long)(src->uptime_ms / 1000));
	sb_add(&b,
	       "# HELP pinhole_workers Worker threads.\n# TYPE pinhole_workers gauge\n"
	       "pinhole_workers %u\n",
	       src->workers);
	sb_add(&b,
	       "# HELP pinhole_rules Rules running (removed ones still finishing aside).\n"
	       "# TYPE pinhole_rules gauge\npinhole_rules %u\n",
	       src->nrules);
	for (size_t m = 0; m < PH_ARRAY_SIZE(metrics); m++) {
		const struct metric *mt = &metrics[m];

		sb_add(&b, "# HELP %s %s\n# TYPE %s %s\n", mt->name, mt->help, mt->name, mt->type);
		for (unsigned i = 0; i < src->nrules; i++) {
			if (!(src->rules[i]->listen.proto & mt->proto))
				continue;
			for (int v = 0; v < (mt->extra != NULL ? 2 : 1); v++) {
				sb_add(&b, "%s{", mt->name);
				sb_rule_labels(&b, src->rules[i]);
				if (mt->extra != NULL)
					sb_add(&b, ",%s=\"%s\"", mt->extra, mt->values[v]);
				sb_add(&b, "} %llu\n",
				       (unsigned long long)metric_value(&st[i], mt->fields[v]));
			}
		}
	}
	free(st);
	sb_tunnels(&b, src);
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	*len = b.len;
	return b.p;
}

char *ph_metrics_tunnels(char *reply, size_t *len, struct ph_relay *r, struct ph_exposer *x)
{
	struct ph_status_src src = {.relay = r, .exposer = x};
	struct sb b = {.p = reply, .len = *len, .cap = *len};

	sb_tunnels(&b, &src);
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	*len = b.len;
	return b.p;
}
