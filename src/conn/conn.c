#include "conn/conn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn/proxyproto.h"
#include "conn/pump.h"
#include "core/connlog.h"
#include "core/log.h"
#include "core/logagg.h"
#include "core/net.h"
#include "core/resolve.h"
#include "core/sys.h"
#include "core/worker.h"

#define CONN_LOG_PER_SEC     10  /* lines per second per kind of refusal */
#define CONN_LOGFILE_PER_SEC 100 /* "denied" lines a second in --log-file: a flood fills no disk */

static const char *const conn_state_name[PH_CONN__NSTATES] = {
	"resolving", "connecting", "relaying", "closed", "proxy header", "handshake"};

/* The target a --log-file line names before one was tried: the first, as rinetd does. */
static const struct ph_addr *log_target(const struct ph_rule *r)
{
	return r->ntargets != 0 && !r->targets[0].hp.is_name ? &r->targets[0].hp.addr : NULL;
}

static void wrule_on_retired(struct ph_task *t);

/* The verb's part of a rule's connections; NULL: a forward rule (connect to the targets). */
static const struct ph_conn_ops *verb_ops(const struct ph_wrule *wr)
{
	return wr->rule->ops;
}

const char *ph_conn_state_name(enum ph_conn_state s)
{
	return (unsigned)s < PH_CONN__NSTATES ? conn_state_name[s] : "?";
}

void ph_conn_set_state_(struct ph_conn *c, enum ph_conn_state s, int line)
{
	ph_trace("c%llu: %s -> %s (line %d)", (unsigned long long)c->id, conn_state_name[c->state],
	         conn_state_name[s], line);
	c->state = (uint8_t)s;
}

const char *ph_rule_label(const struct ph_rule *r, char *buf, size_t len)
{
	char a[PH_ADDR_STRLEN];

	if (r->name[0] != '\0')
		snprintf(buf, len, "%s", r->name);
	else
		snprintf(buf, len, "%s %s", r->ops != NULL ? r->ops->name : "forward",
		         ph_addr_fmt(&r->listen.addr, a, sizeof(a)));
	return buf;
}

static void conn_reap(struct ph_task *t)
{
	struct ph_conn *c = container_of(t, struct ph_conn, reap);

	free(c->vstate); /* what socks/ left for after the batch; NULL mostly */
	free(c);
}

void ph_conn_line(char *buf, size_t len, const char *id, const struct ph_addr *peer,
                  const struct ph_addr *dst, const char *reason, int err, uint64_t up,
                  uint64_t down, uint64_t ms, const char *name)
{
	char pa[PH_ADDR_STRLEN], da[PH_ADDR_STRLEN];

	snprintf(buf, len, "%s %s -> %s: %s%s%s, %llu bytes up, %llu down, %llu ms%s%s%s", id,
	         ph_addr_fmt(peer, pa, sizeof(pa)),
	         dst != NULL ? ph_addr_fmt(dst, da, sizeof(da)) : "-", reason, err != 0 ? ": " : "",
	         err != 0 ? ph_strerror(err) : "", (unsigned long long)up, (unsigned long long)down,
	         (unsigned long long)ms, name[0] ? " (" : "", name, name[0] ? ")" : "");
}

/* c's one line at its close: client, target, why, bytes each way, time, rule. */
static void conn_close_line(const struct ph_conn *c, const char *reason, int err, char *buf,
                            size_t len)
{
	const struct ph_wrule *wr = c->wr;
	char id[24];

	snprintf(id, sizeof(id), "c%llu", (unsigned long long)c->id);
	ph_conn_line(buf, len, id, &c->peer, c->try.tgt >= 0 ? &c->try.dst : NULL, reason, err,
	             c->pump.dir[0].bytes, c->pump.dir[1].bytes, wr->w->loop.now - c->start,
	             wr->rule->name);
}

/*
 * The one close path: logs one line (reason, bytes each way, duration) at -v, or below -v
 * counts a failure for the periodic line (core/logagg.h), closes both sockets (with resets
 * when rst), and frees c after this batch. Idempotent.
 */
void ph_conn_close(struct ph_conn *c, bool rst, const char *reason, int err)
{
	struct ph_wrule *wr = c->wr;
	struct ph_worker *w = wr->w;
	char line[512], label[96];

	if (c->state == PH_CONN_CLOSED)
		return;
	if (err == 0 && PH_LOG_DEBUG <= ph_log_level) {
		conn_close_line(c, reason, err, line, sizeof(line));
		ph_debug("%s", line);
	} else if (err != 0 && PH_LOG_INFO <= ph_log_level) {
		/* a failure any client can cause, a line per connection only at -v */
		conn_close_line(c, reason, err, line, sizeof(line));
		ph_logagg_note(ph_rule_label(wr->rule, label, sizeof(label)), "connections", reason,
		               "%s", line);
	}
	if (ph_connlog_on()) /* rinetd's words: local is the client's side, remote the target's */
		ph_connlog(&c->peer, &wr->rule->listen.addr,
		           c->try.tgt >= 0 ? &c->try.dst : log_target(wr->rule),
		           c->pump.dir[0].bytes, c->pump.dir[1].bytes,
		           err == 0 ? (c->pump.first_fin == 1 ? "done-remote-closed"
		                                              : "done-local-closed")
		           : c->state == PH_CONN_RELAYING ? "done-reset"
		                                          : "failed");
	ph_conn_set_state(c, PH_CONN_CLOSED);
	ph_timer_stop(&w->loop, &c->timer);
	ph_tsel_wait_cancel(&c->wait);
	if (verb_ops(wr) != NULL && verb_ops(wr)->conn_free != NULL)
		verb_ops(wr)->conn_free(c);
	ph_list_del(&c->node);
	/* the slot is free before the client can see the close and come back */
	__atomic_fetch_sub(&wr->rule->live, 1, __ATOMIC_RELAXED);
	ph_pump_close(&c->pump, rst);
	ph_fds_give(c->fds); /* after the close: the fds are free again */
	c->fds = 0;
	ph_task_queue(&w->loop, &c->reap);
	ph_wrule_retire(wr); /* the last thing that touches wr or its rule */
	ph_worker_conn_dec(w);
}

static void conn_on_pump_done(struct ph_pump *p, int err, int side)
{
	struct ph_conn *c = container_of(p, struct ph_conn, pump);

	if (err == 0) {
		ph_conn_close(c, false, "closed", 0);
		return;
	}
	PH_CONN_STAT(c->wr, resets, 1);
	/* the other side gets a reset too: that is how a reset is passed on */
	ph_conn_close(c, true,
	              side == 0   ? "client reset"
	              : side == 1 ? "target reset"
	                          : "failed",
	              err);
}

static void conn_on_timer(struct ph_timer *t)
{
	struct ph_conn *c = container_of(t, struct ph_conn, timer);
	struct ph_loop *l = &c->wr->w->loop;
	uint64_t idle = c->wr->rule->idle_timeout;

	switch (c->state) {
	case PH_CONN_RESOLVING:
		ph_tsel_wait_cancel(&c->wait);
		c->try.lasterr = -ETIMEDOUT;
		c->try.ai = PH_RESOLVE_MAX; /* no address of this target to go on with */
		ph_conn_connect(c);
		break;
	case PH_CONN_CONNECTING:
		c->try.lasterr = -ETIMEDOUT;
		ph_io_close(l, &c->pump.io[1]);
		ph_conn_connect(c);
		break;
	case PH_CONN_PROXY:
		ph_conn_close(c, true, "no PROXY header in time", -ETIMEDOUT);
		break;
	case PH_CONN_VERB:
		verb_ops(c->wr)->on_timer(c);
		break;
	case PH_CONN_RELAYING:
		/* the deadline is not moved per byte: check the last activity and re-arm */
		if (l->now - c->pump.last >= idle)
			ph_conn_close(c, false, "idle timeout", 0);
		else
			ph_timer_arm(l, &c->timer, idle - (l->now - c->pump.last));
		break;
	default:
		PH_BUG_ON(1);
		break;
	}
}

/* --proxy-protocol: the header goes first on the fresh connection to the target. */
static int conn_send_proxy(struct ph_conn *c)
{
	uint8_t hdr[PH_PROXY_MAX];
	struct ph_addr dst = c->orig;
	socklen_t len = sizeof(dst.u);
	ssize_t sent;
	size_t n;

	if (dst.u.sa.sa_family == 0) { /* where the client connected to */
		if (getsockname(c->pump.io[0].fd, &dst.u.sa, &len) == -1)
			return -errno;
		dst.len = len;
	}
	n = ph_proxy_build(c->wr->rule->proxy_send, &c->peer, &dst, hdr);
	/* a fresh socket's buffer is empty: the header goes out whole or not at all */
	sent = send(c->pump.io[1].fd, hdr, n, MSG_NOSIGNAL | MSG_DONTWAIT);
	if (sent == -1)
		return -errno;
	return (size_t)sent == n ? 0 : -EIO;
}

static void conn_on_connect(struct ph_io *io, uint32_t events)
{
	struct ph_conn *c = container_of(io, struct ph_conn, pump.io[1]);
	struct ph_loop *l = &c->wr->w->loop;
	int err;

	if (events & (EPOLLERR | EPOLLHUP)) {
		err = ph_sock_error(io->fd);
		c->try.lasterr = err < 0 ? err : -ECONNREFUSED;
		ph_io_close(l, io);
		ph_conn_connect(c);
		return;
	}
	if (!(events & EPOLLOUT))
		return;
	ph_timer_stop(l, &c->timer);
	ph_tsel_ok(&c->wr->sel, (unsigned)c->try.tgt);
	if (c->wr->rule->proxy_send != 0) {
		err = conn_send_proxy(c);
		if (err < 0) {
			PH_CONN_STAT(c->wr, errors, 1);
			ph_conn_close(c, true, "cannot send the PROXY header", err);
			return;
		}
	}
	ph_conn_relay(c, events, true);
}

void ph_conn_relay(struct ph_conn *c, uint32_t events, bool registered)
{
	struct ph_loop *l = &c->wr->w->loop;
	int err;

	ph_conn_set_state(c, PH_CONN_RELAYING);
	ph_timer_stop(l, &c->timer);
	if (c->wr->rule->idle_timeout != 0)
		ph_timer_arm(l, &c->timer, c->wr->rule->idle_timeout);
	/* may end the pump at once (a reset already queued), closing c: nothing after this */
	err = registered ? ph_pump_start_registered(&c->pump, events) : ph_pump_start(&c->pump);
	if (err < 0) {
		PH_CONN_STAT(c->wr, errors, 1);
		ph_conn_close(c, true, "cannot start relaying", err);
	}
}

void ph_conn_fds_trim(struct ph_conn *c, unsigned n)
{
	if (c->fds > n) {
		ph_fds_give(c->fds - n);
		c->fds = (uint8_t)n;
	}
}

int ph_conn_dial(struct ph_conn *c, const struct ph_addr *a, ph_io_fn on_connect)
{
	const struct ph_rule *r = c->wr->rule;
	struct ph_loop *l = &c->wr->w->loop;
	int fd, err;

	fd = ph_tcp_connect(a, r->has_source ? &r->source : NULL);
	if (fd < 0)
		return fd;
	/* registered for the pump's events at once: no epoll_ctl when the connect completes */
	ph_io_init(&c->pump.io[1], fd, on_connect);
	err = ph_io_add(l, &c->pump.io[1], PH_PUMP_EVENTS);
	if (err < 0) {
		ph_io_close(l, &c->pump.io[1]);
		return err;
	}
	ph_timer_arm(l, &c->timer, r->connect_timeout);
	return 0;
}

/* Starts connecting to c->try.dst. Returns 0, or -errno when the attempt failed at once. */
static int conn_connect(struct ph_conn *c)
{
	int err = ph_conn_dial(c, &c->try.dst, conn_on_connect);

	if (err == 0)
		ph_conn_set_state(c, PH_CONN_CONNECTING);
	return err;
}

/* Tries c's target addresses from the next one on (n: as ph_tsel_next returned). */
static void conn_try(struct ph_conn *c, int n)
{
	struct ph_wrule *wr = c->wr;
	int err;

	for (;; n = ph_tsel_next(&wr->sel, &c->try, &c->wait)) {
		if (n == 0) {
			ph_conn_set_state(c, PH_CONN_RESOLVING);
			ph_timer_arm(&wr->w->loop, &c->timer, wr->rule->connect_timeout);
			return;
		}
		if (n < 0) {
			PH_CONN_STAT(wr, connect_failed, 1);
			ph_conn_close(c, true, "no target reachable", n);
			return;
		}
		err = conn_connect(c);
		if (err == 0)
			return;
		if (ph_err_is_local(err)) { /* our shortage, never the target's fault */
			PH_CONN_STAT(wr, errors, 1);
			ph_conn_close(c, true, "cannot open a socket to the target", err);
			return;
		}
		c->try.lasterr = err;
	}
}

/* The name of c's target is resolved (err 0) or not: connects, or moves on. */
static void conn_on_dns(struct ph_tsel_wait *wt, int err)
{
	struct ph_conn *c = container_of(wt, struct ph_conn, wait);

	ph_timer_stop(&c->wr->w->loop, &c->timer);
	conn_try(c, ph_tsel_dns_done(&c->wr->sel, &c->try, err, &c->wait));
}

void ph_conn_connect(struct ph_conn *c)
{
	conn_try(c, ph_tsel_next(&c->wr->sel, &c->try, &c->wait));
}

/* A new client on wr: checks the rules and the limit, then starts connecting. Takes fd. */
/* A client the ACLs keep out: logged (rate-limited) and reset. Takes fd. */
static void conn_deny(struct ph_wrule *wr, int fd, const struct ph_addr *peer, const char *by)
{
	struct ph_worker *w = wr->w;
	char a[PH_ADDR_STRLEN], label[96];

	PH_CONN_STAT(wr, denied, 1);
	if (ph_ratelimit_ok(&wr->rl_logfile, w->loop.now, CONN_LOGFILE_PER_SEC))
		ph_connlog(peer, &wr->rule->listen.addr, log_target(wr->rule), 0, 0, "denied");
	if (ph_ratelimit_ok(&wr->rl_denied, w->loop.now, CONN_LOG_PER_SEC))
		ph_info("%s: denied %s by %s", ph_rule_label(wr->rule, label, sizeof(label)),
		        ph_addr_fmt(peer, a, sizeof(a)), by);
	ph_sock_set_rst(fd);
	close(fd);
}

/* The client's PROXY header (--accept-proxy): read without taking a byte past it. */
static void conn_on_proxy(struct ph_io *io, uint32_t events)
{
	struct ph_conn *c = container_of(io, struct ph_conn, pump.io[0]);
	struct ph_wrule *wr = c->wr;
	uint8_t buf[PH_PROXY_MAX];
	struct ph_proxy_info info;
	const char *why;
	ssize_t n;
	int len;

	(void)events;
	if (c->state != PH_CONN_PROXY) /* header read: the client's bytes wait for the pump */
		return;
	n = recv(io->fd, buf, sizeof(buf), MSG_PEEK);
	if (n == -1 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		ph_conn_close(c, false, "closed before its PROXY header", n == 0 ? 0 : -errno);
		return;
	}
	len = ph_proxy_parse(buf, (size_t)n, &info, &why);
	if (len == -EAGAIN && (size_t)n < sizeof(buf))
		return; /* the rest comes with the next edge */
	if (len < 0) {
		PH_CONN_STAT(wr, errors, 1);
		ph_conn_close(c, true, why != NULL ? why : "a PROXY header too long", -EPROTO);
		return;
	}
	if (recv(io->fd, buf, (size_t)len, 0) != len) { /* what the peek saw stays there */
		ph_conn_close(c, true, "cannot read its PROXY header", -EIO);
		return;
	}
	ph_timer_stop(&wr->w->loop, &c->timer);
	if (!info.local) {
		c->peer = info.src;
		c->orig = info.dst;
		ph_addr_unmap(&c->peer);
		ph_addr_unmap(&c->orig);
	}
	if (!ph_acl_allows(&wr->rule->acl, &c->peer)) {
		PH_CONN_STAT(wr, denied, 1);
		ph_conn_close(c, true, "denied by --allow/--deny", -EACCES);
		return;
	}
	ph_connlog(&c->peer, &wr->rule->listen.addr, log_target(wr->rule), 0, 0, "opened");
	ph_conn_set_state(c, PH_CONN_CONNECTING);
	ph_conn_connect(c);
}

static void conn_admit(struct ph_wrule *wr, int fd, const struct ph_addr *peer)
{
	struct ph_rule *r = wr->rule;
	struct ph_worker *w = wr->w;
	char a[PH_ADDR_STRLEN], label[96];
	struct ph_conn *c;
	uint64_t live;
	int err;

	/* behind a trusted proxy the ACL is for the client its header names: later */
	if (r->proxy_from.n != 0) {
		if (!ph_acl_allows(&r->proxy_from, peer)) {
			ph_fds_give(wr->acc.cost);
			conn_deny(wr, fd, peer, "--accept-proxy (not a trusted proxy)");
			return;
		}
	} else if (!ph_acl_allows(&r->acl, peer)) {
		ph_fds_give(wr->acc.cost);
		conn_deny(wr, fd, peer, "--allow/--deny");
		return;
	}
	live = __atomic_add_fetch(&r->live, 1, __ATOMIC_RELAXED);
	if (r->max_conns != 0 && live > r->max_conns) {
		__atomic_fetch_sub(&r->live, 1, __ATOMIC_RELAXED);
		PH_CONN_STAT(wr, over_limit, 1);
		if (ph_ratelimit_ok(&wr->rl_full, w->loop.now, CONN_LOG_PER_SEC))
			ph_warn("%s: refused %s: --max-conns %u reached",
			        ph_rule_label(r, label, sizeof(label)),
			        ph_addr_fmt(peer, a, sizeof(a)), r->max_conns);
		ph_fds_give(wr->acc.cost);
		ph_sock_set_rst(fd);
		close(fd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		ph_fds_give(wr->acc.cost);
		__atomic_fetch_sub(&r->live, 1, __ATOMIC_RELAXED);
		PH_CONN_STAT(wr, errors, 1);
		ph_err("%s: out of memory: refused %s", ph_rule_label(r, label, sizeof(label)),
		       ph_addr_fmt(peer, a, sizeof(a)));
		close(fd);
		return;
	}
	c->fds = (uint8_t)wr->acc.cost; /* given back by the close path */
	ph_pump_init(&c->pump, w, fd, -1, conn_on_pump_done);
	c->pump.rs = &wr->stats;
	ph_timer_init(&c->timer, conn_on_timer);
	ph_task_init(&c->reap, conn_reap);
	ph_tsel_wait_init(&c->wait, conn_on_dns);
	ph_list_add_tail(&wr->conns, &c->node);
	c->wr = wr;
	c->peer = *peer;
	c->id = ++w->next_id;
	c->start = w->loop.now;
	ph_tsel_try_init(&c->try);
	c->state = PH_CONN_CONNECTING;
	ph_worker_conn_inc(w);
	PH_CONN_STAT(wr, accepted, 1);
	ph_trace("c%llu: accepted %s", (unsigned long long)c->id, ph_addr_fmt(peer, a, sizeof(a)));
	if (r->ops != NULL) { /* the verb's handshake says where to */
		ph_connlog(peer, &r->listen.addr, NULL, 0, 0, "opened");
		r->ops->start(c);
		return;
	}
	if (r->proxy_from.n == 0) {
		ph_connlog(peer, &r->listen.addr, log_target(r), 0, 0, "opened");
		ph_conn_connect(c);
		return;
	}
	/* the pump takes this registration over (EPOLL_CTL_MOD) when it starts */
	ph_conn_set_state(c, PH_CONN_PROXY);
	c->pump.io[0].cb = conn_on_proxy;
	err = ph_io_add(&w->loop, &c->pump.io[0], PH_PUMP_EVENTS);
	if (err < 0) {
		PH_CONN_STAT(wr, errors, 1);
		ph_conn_close(c, true, "cannot watch the client", err);
		return;
	}
	ph_timer_arm(&w->loop, &c->timer, r->connect_timeout);
}

static void conn_on_accept(struct ph_acceptor *a, int fd, const struct ph_addr *peer)
{
	conn_admit(container_of(a, struct ph_wrule, acc), fd, peer);
}

static const char *conn_acc_label(struct ph_acceptor *a, char *buf, size_t len)
{
	return ph_rule_label(container_of(a, struct ph_wrule, acc)->rule, buf, len);
}

static void conn_on_cmd(struct ph_worker_hook *h, enum ph_worker_cmd cmd)
{
	struct ph_wrule *wr = container_of(h, struct ph_wrule, hook);
	struct ph_list *it, *tmp;

	/* both stop accepting; abort also ends what is live */
	ph_acceptor_close(&wr->acc);
	if (cmd != PH_WORKER_ABORT)
		return;
	ph_list_for_each_safe(it, tmp, &wr->conns) {
		ph_conn_close(container_of(it, struct ph_conn, node), false, "shutdown", 0);
	}
}

void ph_wrule_free(struct ph_wrule *wr)
{
	struct ph_list *it, *tmp;

	if (wr == NULL)
		return;
	/* connections left after the workers ended (aborted start): close without events */
	ph_list_for_each_safe(it, tmp, &wr->conns) {
		struct ph_conn *c = container_of(it, struct ph_conn, node);

		ph_list_del(&c->node);
		ph_fds_give(c->fds);
		if (verb_ops(wr) != NULL && verb_ops(wr)->conn_free != NULL)
			verb_ops(wr)->conn_free(c);
		ph_pump_close(&c->pump, false);
		free(c->vstate);
		free(c);
	}
	ph_acceptor_close(&wr->acc);
	ph_list_del(&wr->hook.node);
	ph_task_cancel(&wr->retire_task);
	if (verb_ops(wr) != NULL && verb_ops(wr)->wrule_free != NULL)
		verb_ops(wr)->wrule_free(wr);
	free(wr);
}

static int listen_one(struct ph_rule *r, bool reuseport, struct ph_addr *bound)
{
	struct ph_addr a = r->listen.addr;
	int fd;

	if (r->listen.wildcard) {
		/* :PORT means every interface: IPv6 with IPv4 mapped, or IPv4 alone */
		fd = ph_tcp_listen(&a, false, reuseport);
		if (fd == -EAFNOSUPPORT || fd == -EADDRNOTAVAIL) {
			ph_addr_from_literal("0.0.0.0", r->listen.port, &a);
			fd = ph_tcp_listen(&a, false, reuseport);
		}
	} else {
		fd = ph_tcp_listen(&a, true, reuseport);
	}
	*bound = a;
	return fd;
}

/*
 * Makes r's TCP state for n workers and binds a listener for each, or, with from, leaves
 * them to take over from's listeners in attach. Registers nothing. Returns 0 or -errno.
 */
int ph_conn_tcp_bind(struct ph_rule *r, struct ph_worker **w, unsigned n,
                     const struct ph_rule *from, char *why, size_t whylen)
{
	struct ph_addr bound = r->listen.addr;
	char a[PH_ADDR_STRLEN];
	int fd, err;

	/*
	 * SO_REUSEPORT would let us share a port with another program's reuseport listener
	 * without a word: a plain bind first proves the port is free.
	 */
	if (from == NULL) {
		fd = listen_one(r, false, &bound);
		if (fd < 0) {
			snprintf(why, whylen, "cannot listen on %s: %s",
			         ph_addr_fmt(&r->listen.addr, a, sizeof(a)), ph_bind_strerror(fd));
			return fd;
		}
		close(fd);
	}
	r->wr = calloc(n, sizeof(*r->wr));
	if (r->wr == NULL) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	for (unsigned i = 0; i < n; i++) {
		struct ph_wrule *wr = calloc(1, sizeof(*wr));

		if (wr == NULL) {
			snprintf(why, whylen, "out of memory");
			err = -ENOMEM;
			goto err_free;
		}
		wr->rule = r;
		wr->w = w[i];
		ph_acceptor_init(&wr->acc, -1, r->ops != NULL ? r->ops->fds : PH_FDS_FORWARD,
		                 conn_on_accept, conn_acc_label);
		ph_list_init(&wr->conns);
		ph_list_init(&wr->hook.node);
		ph_task_init(&wr->retire_task, wrule_on_retired);
		ph_tsel_init(&wr->sel, r, w[i], i); /* workers start on different targets */
		r->wr[r->nwr++] = wr;
		if (from != NULL)
			continue;
		fd = listen_one(r, true, &bound);
		if (fd < 0) {
			snprintf(why, whylen, "cannot listen on %s: %s",
			         ph_addr_fmt(&bound, a, sizeof(a)), ph_bind_strerror(fd));
			err = fd;
			goto err_free;
		}
		wr->acc.io.fd = fd;
	}
	r->listen.addr = from != NULL ? from->listen.addr : bound; /* what is bound, for logs */
	return 0;

err_free:
	for (unsigned i = 0; i < r->nwr; i++)
		ph_wrule_free(r->wr[i]);
	free(r->wr);
	r->wr = NULL;
	r->nwr = 0;
	return err;
}

/* On worker i (its thread, or before it starts): wr starts accepting. */
void ph_conn_tcp_attach(struct ph_wrule *wr, struct ph_wrule *from)
{
	struct ph_loop *l = &wr->w->loop;
	char label[96];
	int err;

	ph_worker_hook_add(wr->w, &wr->hook, conn_on_cmd);
	if (wr->acc.io.fd == -1 && from != NULL && from->acc.io.fd == -1)
		ph_warn("%s: the rule it replaces had no listener on worker %d: none here either",
		        ph_rule_label(wr->rule, label, sizeof(label)), wr->w->id);
	if (wr->acc.io.fd == -1 && from != NULL && from->acc.io.fd != -1)
		ph_acceptor_take(l, &wr->acc, &from->acc); /* clients in its queue stay */
	if (wr->acc.io.fd == -1)
		return;
	err = ph_acceptor_start(l, &wr->acc);
	if (err < 0) {
		ph_err("%s: cannot watch the listener: %s",
		       ph_rule_label(wr->rule, label, sizeof(label)), strerror(-err));
		ph_acceptor_close(&wr->acc);
	}
}

/* Once wr is detached, its last connection ended and nothing of the verb's points in it:
 * the worker is done with it. (Name lookups point into the worker's cache, not into wr.)
 * Harmless before, and after. */
void ph_wrule_retire(struct ph_wrule *wr)
{
	if (!wr->detached || wr->retired || !ph_list_empty(&wr->conns) ||
	    (verb_ops(wr) != NULL && verb_ops(wr)->wrule_idle != NULL &&
	     !verb_ops(wr)->wrule_idle(wr)))
		return;
	wr->retired = true;
	ph_list_del(&wr->hook.node);
	/* the main thread may free the rule once refs drops: only after this batch, when no
	 * event, callback or caller of ours can still reach wr */
	ph_task_queue(&wr->w->loop, &wr->retire_task);
}

static void wrule_on_retired(struct ph_task *t)
{
	struct ph_wrule *wr = container_of(t, struct ph_wrule, retire_task);

	__atomic_fetch_sub(&wr->rule->refs, 1, __ATOMIC_ACQ_REL);
}

/* On wr's worker: wr stops accepting; its connections finish, then it retires. */
void ph_conn_tcp_detach(struct ph_wrule *wr)
{
	ph_acceptor_close(&wr->acc); /* harmless when a new rule took the listener over */
	wr->detached = true;
	ph_wrule_retire(wr);
}
