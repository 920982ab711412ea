#include "ctl/ctl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/addr.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/util.h"
#include "core/worker.h"
#include "forward/forward.h"

#define CTL_MAX_CLIENTS 16
#define CTL_LINE_MAX    256
#define CTL_TIMEOUT_MS  5000 /* a client that says nothing, or reads nothing, goes */

struct ctl_client {
	struct ph_io io;
	struct ph_timer timer;
	struct ph_task reap;
	struct ph_list node;
	struct ph_ctl *ctl;
	char line[CTL_LINE_MAX];
	size_t got;
	char *reply; /* owned once the command is answered */
	size_t len, sent;
};

struct ph_ctl {
	struct ph_loop *loop;
	struct ph_io lio;
	struct ph_list clients;
	unsigned nclients;
	ph_ctl_fn fn;
	void *arg;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

const char *ph_ctl_default_path(char *buf, size_t len)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR");

	if (geteuid() == 0)
		snprintf(buf, len, "/run/pinhole.sock");
	else if (xdg != NULL && xdg[0] == '/')
		snprintf(buf, len, "%s/pinhole.sock", xdg);
	else
		snprintf(buf, len, "/tmp/pinhole-%u.sock", (unsigned)geteuid());
	return buf;
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

static void client_on_io(struct ph_io *io, uint32_t events)
{
	struct ctl_client *c = container_of(io, struct ctl_client, io);
	char *nl;

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
		nl = strchr(c->line, '\n');
		if (nl != NULL)
			break;
		if (c->got == sizeof(c->line) - 1) {
			client_close(c); /* no command is that long */
			return;
		}
	}
	*nl = '\0';
	if (nl > c->line && nl[-1] == '\r')
		nl[-1] = '\0';
	c->reply = c->ctl->fn(c->ctl->arg, c->line, &c->len);
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

static void ctl_on_accept(struct ph_io *io, uint32_t events)
{
	struct ph_ctl *ctl = container_of(io, struct ph_ctl, lio);

	(void)events;
	for (;;) {
		struct ctl_client *c;
		int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd == -1)
			return; /* EAGAIN, or trouble that the next client retries */
		if (ctl->nclients >= CTL_MAX_CLIENTS || (c = calloc(1, sizeof(*c))) == NULL) {
			close(fd);
			continue;
		}
		c->ctl = ctl;
		ph_io_init(&c->io, fd, client_on_io);
		ph_timer_init(&c->timer, client_on_timeout);
		ph_task_init(&c->reap, client_reap);
		ph_list_add_tail(&ctl->clients, &c->node);
		ctl->nclients++;
		if (ph_io_add(ctl->loop, &c->io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) < 0) {
			client_close(c);
			continue;
		}
		ph_timer_arm(ctl->loop, &c->timer, CTL_TIMEOUT_MS);
	}
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
	ph_io_init(&ctl->lio, fd, ctl_on_accept);
	err = ph_io_add(l, &ctl->lio, EPOLLIN | EPOLLET);
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
	ph_io_close(ctl->loop, &ctl->lio);
	unlink(ctl->path); /* may fail after --user: harmless, the next start replaces it */
	free(ctl);
}

int ph_ctl_request(const char *path, const char *cmd, FILE *out, char *why, size_t whylen)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct timeval tv = {.tv_sec = 10};
	char buf[4096];
	size_t len = strlen(cmd);
	int fd, err = 0;
	ssize_t n;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(why, whylen, "control socket '%s': path too long", path);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
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

static void target_fmt(const struct ph_forward_rule *r, unsigned t, char *buf, size_t len)
{
	const struct ph_hostport *hp = &r->targets[t].hp;
	char a[PH_ADDR_STRLEN];

	if (hp->is_name)
		snprintf(buf, len, "%s:%u", hp->host, hp->port);
	else
		snprintf(buf, len, "%s", ph_addr_fmt(&hp->addr, a, sizeof(a)));
}

static void rule_text(struct sb *b, const struct ph_forward_rule *r, const char *state)
{
	struct ph_stats s;
	char a[PH_ADDR_STRLEN], t[PH_HOST_MAX + 16], up[32], down[32];

	ph_forward_stats(r, &s);
	sb_add(b, "rule %s%s%s%s: %s %s ->", r->name[0] ? r->name : "-", r->origin[0] ? " (" : "",
	       r->origin, r->origin[0] ? ")" : "", proto_name(r->listen.proto),
	       ph_addr_fmt(&r->listen.addr, a, sizeof(a)));
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

static void rule_json(struct sb *b, const struct ph_forward_rule *r, bool removed)
{
	struct ph_stats s;
	char a[PH_ADDR_STRLEN], t[PH_HOST_MAX + 16];

	ph_forward_stats(r, &s);
	sb_add(b, "{\"name\":");
	sb_json_str(b, r->name);
	sb_add(b, ",\"origin\":");
	sb_json_str(b, r->origin);
	sb_add(b, ",\"removed\":%s,\"proto\":\"%s\",\"listen\":", removed ? "true" : "false",
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
		sb_add(&b, "]}\n");
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
	}
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	*len = b.len;
	return b.p;
}
