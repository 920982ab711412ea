/*
 * UDP forwarding, the way a NAT does it. Each client (address and port, and the local
 * address it wrote to) gets a session with its own upstream socket connected to one
 * target: that socket's ephemeral port is the client's mapping, its replies go back to
 * exactly that client from the address it wrote to, and an ICMP error from the target
 * ends the session at once. Sessions expire after --udp-timeout without a datagram either
 * way; when --max-sessions is reached the least recently used one makes room.
 *
 * Each worker has its own SO_REUSEPORT listener. The kernel picks a worker by hashing the
 * 4-tuple, so one client's datagrams always reach the same worker and its session table.
 * Both directions move in batches (recvmmsg, then sendmmsg of each run of datagrams for one
 * session). Datagrams pass whole; one that cannot be sent now is dropped and counted, as
 * UDP would: nothing here ever blocks or buffers without bound.
 */
#include "forward/forward-int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn/conn.h"
#include "conn/target.h"
#include "conn/udptab.h"
#include "core/dgram.h"
#include "core/log.h"
#include "core/logagg.h"
#include "core/net.h"
#include "core/portseq.h"
#include "core/worker.h"

#define UDP_ROUNDS     4         /* batches per wake-up before other work gets a turn */
#define UDP_PEND_MAX   8         /* datagrams held while the target's name resolves */
#define UDP_PEND_BYTES (1 << 20) /* and bytes, over all of a rule's sessions on a worker */
/*
 * Listener buffers (the kernel doubles it): a burst queues instead of dropping, but not so
 * deep that an overload turns into a long queue (2 MiB hold ~2,700 small datagrams, about
 * 40 ms at the rate this machine forwards).
 */
#define UDP_SOCKBUF      (1 << 20)
#define UDP_EXPIRE_BATCH 4096 /* sessions expired per timer run */
#define UDP_LOG_PER_SEC  10
#define UDP_PORT_TRIES   8 /* ports of the walk tried before the kernel picks one */

enum udp_state {
	UDP_RESOLVING = 0, /* waiting for the target's name; datagrams are held */
	UDP_ACTIVE,        /* the upstream socket is connected */
	UDP_CLOSED,        /* closed; freed after this batch of events */
};

/* A datagram held while the session's target is being resolved. */
struct udp_pend {
	struct udp_pend *next;
	size_t len;
	uint8_t data[];
};

struct udp_sess {
	struct ph_udp_node node;  /* keyed by the client and the local address it wrote to */
	struct ph_io io;          /* upstream, connected to dst; -1 while resolving */
	struct ph_tsel_wait wait; /* queued for the target's name */
	struct ph_task reap;
	struct udp_wrule *uw;
	struct ph_tsel_try try; /* the target's address is try.dst */
	struct udp_pend *pend;  /* owned: held datagrams, oldest first */
	uint64_t id;
	uint64_t start;             /* loop ms */
	uint64_t pkts[2], bytes[2]; /* [0] client -> target, [1] back */
	uint32_t sk_drops;          /* the upstream socket's drops counted so far */
	uint8_t npend;
	uint8_t state;
};

/* One rule's UDP side on one worker. */
struct udp_wrule {
	struct ph_rule *rule; /* borrowed */
	struct ph_worker *w;  /* borrowed */
	struct ph_io lio;     /* the listener; closed when draining */
	struct ph_worker_hook hook;
	struct ph_timer expire; /* when the least recently used session goes idle */
	struct ph_udptab tab;
	struct ph_tsel sel;
	uint32_t sk_drops;          /* the listener's drops counted so far */
	struct ph_stats stats;      /* the rule's counters on this worker (status, metrics) */
	bool detached;              /* a reload removed the rule */
	bool retired;               /* the worker is done with it (main may free it) */
	struct ph_task retire_task; /* drops the rule's refs after the batch that retired it */
	size_t pend_bytes;          /* held by its sessions while their target's name resolves */
	struct ph_ratelimit rl_denied, rl_full, rl_err;
};

/*
 * Replies gathered from the session sockets that were ready in one round of the loop, in
 * the worker's out batch, all for one listener: they leave in one sendmmsg when the batch
 * is full, when a reply for another listener comes, or after the round (a task).
 */
struct udp_outq {
	struct udp_wrule *uw; /* whose listener they go out on; NULL when empty */
	unsigned n;
	struct ph_task flush;
};

static __thread struct udp_outq outq; /* one per worker thread */

/* Counts into the worker's totals and the rule's own on this worker (one writer each). */
#define UDP_STAT(uw, field, n)                                                                     \
	do {                                                                                       \
		PH_STAT_ADD((uw)->w, field, (n));                                                  \
		PH_STATS_ADD(&(uw)->stats, field, (n));                                            \
	} while (0)

/* Counts what a socket dropped (its buffer was full) since *seen, from SO_RXQ_OVFL. */
static void udp_count_drops(struct udp_wrule *uw, uint32_t *seen, uint32_t now)
{
	uint32_t d = now - *seen; /* a 32-bit counter: modulo arithmetic */

	if (d != 0 && d < (1u << 31)) {
		UDP_STAT(uw, dgrams_dropped, d);
		*seen = now;
	}
}

static void udp_reap(struct ph_task *t)
{
	free(container_of(t, struct udp_sess, reap));
}

static void udp_free_pend(struct udp_sess *s)
{
	while (s->pend != NULL) {
		struct udp_pend *p = s->pend;

		s->pend = p->next;
		s->uw->pend_bytes -= p->len;
		free(p);
	}
	s->npend = 0;
}

/* A client's address as people write it: IPv4 without ::ffff:. */
static const char *client_fmt(const struct ph_addr *a, char *buf, size_t len)
{
	struct ph_addr u = *a;

	ph_addr_unmap(&u);
	return ph_addr_fmt(&u, buf, len);
}

/* s's one line at its close: client, target, why, datagrams and bytes each way, time. */
static void udp_close_line(const struct udp_sess *s, const char *reason, int err, char *buf,
                           size_t len)
{
	const struct udp_wrule *uw = s->uw;
	char peer[PH_ADDR_STRLEN], dst[PH_ADDR_STRLEN];

	snprintf(buf, len,
	         "u%llu %s -> %s: %s%s%s, %llu datagrams (%llu B) up, %llu (%llu B) down, "
	         "%llu ms%s%s%s",
	         (unsigned long long)s->id, client_fmt(&s->node.key.peer, peer, sizeof(peer)),
	         s->io.fd != -1 ? ph_addr_fmt(&s->try.dst, dst, sizeof(dst)) : "-", reason,
	         err != 0 ? ": " : "", err != 0 ? ph_strerror(err) : "",
	         (unsigned long long)s->pkts[0], (unsigned long long)s->bytes[0],
	         (unsigned long long)s->pkts[1], (unsigned long long)s->bytes[1],
	         (unsigned long long)(uw->w->loop.now - s->start), uw->rule->name[0] ? " (" : "",
	         uw->rule->name, uw->rule->name[0] ? ")" : "");
}

/*
 * The one close path: logs one line at -v (below -v a failure is counted for the periodic
 * line, core/logagg.h), closes the upstream socket, frees s after the batch.
 */
static void udp_close(struct udp_sess *s, const char *reason, int err)
{
	struct udp_wrule *uw = s->uw;
	struct ph_worker *w = uw->w;
	char line[512], label[96];

	if (s->state == UDP_CLOSED)
		return;
	if (err == 0 && PH_LOG_DEBUG <= ph_log_level) {
		udp_close_line(s, reason, err, line, sizeof(line));
		ph_debug("%s", line);
	} else if (err != 0 && PH_LOG_INFO <= ph_log_level) {
		udp_close_line(s, reason, err, line, sizeof(line));
		ph_logagg_note(ph_rule_label(uw->rule, label, sizeof(label)), "udp sessions",
		               reason, "%s", line);
	}
	s->state = UDP_CLOSED;
	ph_tsel_wait_cancel(&s->wait);
	ph_udptab_del(&uw->tab, &s->node);
	ph_io_close(&w->loop, &s->io);
	if (s->npend != 0)
		UDP_STAT(uw, dgrams_dropped, s->npend);
	udp_free_pend(s);
	__atomic_fetch_sub(&uw->rule->sessions, 1, __ATOMIC_RELAXED);
	UDP_STAT(uw, udp_active, (uint64_t)-1);
	ph_task_queue(&w->loop, &s->reap);
}

/* Sends n datagrams to the clients they came from. Returns how many went out. */
static unsigned udp_to_clients(struct udp_wrule *uw, struct ph_dgram *d, unsigned n)
{
	struct ph_worker *w = uw->w;
	unsigned sent = 0, dropped = 0;
	int k;

	while (sent + dropped < n) {
		k = ph_dgram_send(w->dgram, uw->lio.fd, d + sent + dropped, n - sent - dropped,
		                  true);
		if (k > 0) {
			sent += (unsigned)k;
			continue;
		}
		if (k == -EAGAIN) { /* the listener's buffer is full: the rest is lost */
			dropped = n - sent;
			break;
		}
		/* a datagram of its own kind of trouble (its client's route, its size): skip it */
		if (ph_ratelimit_ok(&uw->rl_err, w->loop.now, UDP_LOG_PER_SEC))
			ph_info("udp: cannot send to a client: %s", strerror(-k));
		dropped++;
	}
	if (dropped != 0)
		UDP_STAT(uw, dgrams_dropped, dropped);
	return sent;
}

/* Sends n datagrams of s's client to its target. */
static void udp_to_target(struct udp_sess *s, struct ph_dgram *d, unsigned n)
{
	struct udp_wrule *uw = s->uw;
	struct ph_worker *w = uw->w;
	unsigned sent = 0, dropped = 0;
	uint64_t bytes = 0;
	int k, err = 0;

	while (sent + dropped < n) {
		k = ph_dgram_send(w->dgram, s->io.fd, d + sent + dropped, n - sent - dropped,
		                  false);
		if (k > 0) {
			for (int i = 0; i < k; i++)
				bytes += d[sent + dropped + (unsigned)i].len;
			sent += (unsigned)k;
			continue;
		}
		if (k == -EAGAIN) {
			dropped = n - sent;
			break;
		}
		if (k == -ECONNREFUSED || k == -EHOSTUNREACH || k == -ENETUNREACH) {
			dropped = n - sent;
			err = k;
			break;
		}
		if (ph_ratelimit_ok(&s->uw->rl_err, w->loop.now, UDP_LOG_PER_SEC))
			ph_info("u%llu: cannot send to the target: %s", (unsigned long long)s->id,
			        strerror(-k));
		dropped++;
	}
	s->pkts[0] += sent;
	s->bytes[0] += bytes;
	UDP_STAT(uw, dgrams_up, sent);
	UDP_STAT(uw, bytes_up, bytes);
	if (dropped != 0)
		UDP_STAT(uw, dgrams_dropped, dropped);
	if (err != 0) {
		/* an ICMP error for an earlier datagram surfaced here */
		ph_tsel_failed(&s->uw->sel, (unsigned)s->try.tgt, &s->try.dst, err);
		udp_close(s, "target unreachable", err);
	}
}

/* Sends the gathered replies. */
static void udp_flush(struct udp_outq *q)
{
	struct udp_wrule *uw;
	struct ph_dgram *d;
	struct ph_worker *w;
	uint64_t bytes = 0;
	unsigned sent;

	ph_task_cancel(&q->flush);
	if (q->uw == NULL)
		return;
	w = q->uw->w;
	d = ph_dgram_batch_items(w->dgram_out);
	uw = q->uw;
	sent = udp_to_clients(uw, d, q->n);
	/* sendmmsg sends in order: the first sent datagrams are the ones that went out */
	for (unsigned i = 0; i < sent; i++)
		bytes += d[i].len;
	UDP_STAT(uw, dgrams_down, sent);
	UDP_STAT(uw, bytes_down, bytes);
	q->uw = NULL;
	q->n = 0;
}

static void udp_on_flush(struct ph_task *t)
{
	udp_flush(container_of(t, struct udp_outq, flush));
}

/* The target answered on s's upstream socket (or an ICMP error came back). */
static void udp_on_target(struct ph_io *io, uint32_t events)
{
	struct udp_sess *s = container_of(io, struct udp_sess, io);
	struct udp_wrule *uw = s->uw;
	struct ph_worker *w = uw->w;
	struct ph_dgram *d = ph_dgram_batch_items(w->dgram_out);
	struct udp_outq *q = &outq;

	(void)events;
	if (q->flush.fn == NULL)
		ph_task_init(&q->flush, udp_on_flush);
	if (q->uw != NULL && q->uw != uw)
		udp_flush(q);
	for (unsigned round = 0; round < UDP_ROUNDS && s->state == UDP_ACTIVE; round++) {
		unsigned max = PH_DGRAM_BATCH - q->n;
		int n = ph_dgram_recv(w->dgram_out, q->n, io->fd, max, false);
		uint64_t bytes = 0;

		if (n == -EAGAIN)
			return;
		if (n < 0) {
			if (n == -ECONNREFUSED || n == -EHOSTUNREACH || n == -ENETUNREACH) {
				ph_tsel_failed(&uw->sel, (unsigned)s->try.tgt, &s->try.dst, n);
				udp_close(s, "target unreachable", n);
			} else {
				UDP_STAT(uw, errors, 1);
				udp_close(s, "receive failed", n);
			}
			return;
		}
		udp_count_drops(uw, &s->sk_drops, d[q->n + (unsigned)n - 1].sk_drops);
		for (unsigned i = q->n; i < q->n + (unsigned)n; i++) {
			d[i].peer = s->node.key.peer;
			d[i].local = s->node.key.local;
			bytes += d[i].len;
		}
		ph_tsel_ok(&uw->sel, (unsigned)s->try.tgt);
		ph_udptab_touch(&uw->tab, &s->node, w->loop.now);
		s->pkts[1] += (unsigned)n; /* handed to the listener; a drop there is counted */
		s->bytes[1] += bytes;
		q->uw = uw;
		q->n += (unsigned)n;
		if (q->n == PH_DGRAM_BATCH)
			udp_flush(q);
		else
			ph_task_queue(&w->loop, &q->flush);
		if ((unsigned)n < max)
			return;
	}
}

/* Connects s's upstream socket to s->try.dst and sends what was held. Returns 0 or -errno. */
static int udp_connect(struct udp_sess *s)
{
	struct ph_worker *w = s->uw->w;
	struct ph_rule *r = s->uw->rule;
	const struct ph_addr *src = r->has_source ? &r->source : NULL;
	int fd, err;

	/* a port from the shared random walk, so that ports come back as late as possible */
	fd = -EADDRINUSE;
	for (unsigned tries = 0; tries < UDP_PORT_TRIES && fd == -EADDRINUSE; tries++) {
		uint16_t port = ph_portseq_next();

		if (port == 0)
			break;
		fd = ph_udp_connect(&s->try.dst, src, port);
	}
	if (fd == -EADDRINUSE)
		fd = ph_udp_connect(&s->try.dst, src, 0);
	if (fd < 0)
		return fd;
	ph_io_init(&s->io, fd, udp_on_target);
	err = ph_io_add(&w->loop, &s->io, EPOLLIN);
	if (err < 0) {
		ph_io_close(&w->loop, &s->io);
		return err;
	}
	s->state = UDP_ACTIVE;
	while (s->pend != NULL && s->state == UDP_ACTIVE) {
		struct udp_pend *p = s->pend;
		struct ph_dgram d = {.data = p->data, .len = p->len};

		s->pend = p->next;
		s->npend--;
		s->uw->pend_bytes -= p->len;
		udp_to_target(s, &d, 1);
		free(p);
	}
	return 0;
}

/* Opens s's upstream socket to its target's addresses from the next one on (n: as
 * ph_tsel_next returned). Closes s when none is left. */
static void udp_try(struct udp_sess *s, int n)
{
	struct udp_wrule *uw = s->uw;
	int err;

	for (;; n = ph_tsel_next(&uw->sel, &s->try, &s->wait)) {
		if (n == 0) {
			s->state = UDP_RESOLVING; /* bounded by the resolver's timeouts */
			return;
		}
		if (n < 0) {
			UDP_STAT(uw, connect_failed, 1);
			udp_close(s, "no target reachable", n);
			return;
		}
		err = udp_connect(s);
		if (err == 0)
			return;
		s->try.lasterr = err;
	}
}

/* The name of s's target is resolved (err 0) or not: connects, or moves on. */
static void udp_on_dns(struct ph_tsel_wait *wt, int err)
{
	struct udp_sess *s = container_of(wt, struct udp_sess, wait);

	udp_try(s, ph_tsel_dns_done(&s->uw->sel, &s->try, err, &s->wait));
}

static void udp_on_expire(struct ph_timer *t)
{
	struct udp_wrule *uw = container_of(t, struct udp_wrule, expire);
	struct ph_loop *l = &uw->w->loop;
	uint64_t timeout = uw->rule->udp_timeout;
	struct ph_udp_node *n;

	for (unsigned k = 0; (n = ph_udptab_oldest(&uw->tab)) != NULL; k++) {
		if (l->now - n->last < timeout) {
			ph_timer_arm(l, t, timeout - (l->now - n->last));
			return;
		}
		if (k == UDP_EXPIRE_BATCH) { /* the rest after the others had a turn */
			ph_timer_arm(l, t, 0);
			return;
		}
		udp_close(container_of(n, struct udp_sess, node), "idle timeout", 0);
	}
}

/*
 * A datagram from a client without a session: checks the rules and the bound, then opens
 * one. Returns the session (perhaps already closed: no target) or NULL when refused.
 */
static struct udp_sess *udp_open(struct udp_wrule *uw, const struct ph_udp_key *k)
{
	struct ph_rule *r = uw->rule;
	struct ph_worker *w = uw->w;
	char a[PH_ADDR_STRLEN], b[PH_ADDR_STRLEN], label[96];
	struct ph_udp_node *old;
	struct udp_sess *s;
	uint64_t live;

	if (!ph_acl_allows(&r->acl, &k->peer)) {
		UDP_STAT(uw, denied, 1);
		UDP_STAT(uw, dgrams_dropped, 1);
		if (ph_ratelimit_ok(&uw->rl_denied, w->loop.now, UDP_LOG_PER_SEC))
			ph_info("%s: denied %s by --allow/--deny",
			        ph_rule_label(r, label, sizeof(label)),
			        client_fmt(&k->peer, a, sizeof(a)));
		return NULL;
	}
	live = __atomic_add_fetch(&r->sessions, 1, __ATOMIC_RELAXED);
	if (live > r->max_sessions) {
		old = ph_udptab_oldest(&uw->tab);
		if (old == NULL) { /* the sessions are on other workers */
			__atomic_fetch_sub(&r->sessions, 1, __ATOMIC_RELAXED);
			UDP_STAT(uw, over_limit, 1);
			UDP_STAT(uw, dgrams_dropped, 1);
			if (ph_ratelimit_ok(&uw->rl_full, w->loop.now, UDP_LOG_PER_SEC))
				ph_warn("%s: dropped a datagram of %s: --max-sessions %u reached",
				        ph_rule_label(r, label, sizeof(label)),
				        client_fmt(&k->peer, a, sizeof(a)), r->max_sessions);
			return NULL;
		}
		UDP_STAT(uw, udp_evicted, 1);
		if (ph_ratelimit_ok(&uw->rl_full, w->loop.now, UDP_LOG_PER_SEC))
			ph_warn("%s: --max-sessions %u reached: session u%llu of %s (idle %llu ms) "
			        "makes room for %s",
			        ph_rule_label(r, label, sizeof(label)), r->max_sessions,
			        (unsigned long long)container_of(old, struct udp_sess, node)->id,
			        client_fmt(&old->key.peer, a, sizeof(a)),
			        (unsigned long long)(w->loop.now - old->last),
			        client_fmt(&k->peer, b, sizeof(b)));
		udp_close(container_of(old, struct udp_sess, node), "evicted", 0);
	}
	s = calloc(1, sizeof(*s));
	if (s == NULL) {
		__atomic_fetch_sub(&r->sessions, 1, __ATOMIC_RELAXED);
		UDP_STAT(uw, errors, 1);
		UDP_STAT(uw, dgrams_dropped, 1);
		if (ph_ratelimit_ok(&uw->rl_err, w->loop.now, UDP_LOG_PER_SEC))
			ph_err("%s: out of memory: dropped a datagram of %s",
			       ph_rule_label(r, label, sizeof(label)),
			       client_fmt(&k->peer, a, sizeof(a)));
		return NULL;
	}
	ph_io_init(&s->io, -1, udp_on_target);
	ph_tsel_wait_init(&s->wait, udp_on_dns);
	ph_task_init(&s->reap, udp_reap);
	ph_list_init(&s->node.lru);
	s->uw = uw;
	s->id = ++w->next_id;
	s->start = w->loop.now;
	ph_tsel_try_init(&s->try);
	s->state = UDP_RESOLVING;
	ph_udptab_add(&uw->tab, &s->node, k, w->loop.now);
	UDP_STAT(uw, udp_sessions, 1);
	UDP_STAT(uw, udp_active, 1);
	if (!ph_timer_armed(&uw->expire))
		ph_timer_arm(&w->loop, &uw->expire, r->udp_timeout);
	ph_trace("u%llu: new session of %s", (unsigned long long)s->id,
	         client_fmt(&k->peer, a, sizeof(a)));
	udp_try(s, ph_tsel_next(&uw->sel, &s->try, &s->wait));
	return s;
}

/* Holds a copy of a datagram for s until its target's name is resolved. */
static void udp_hold(struct udp_sess *s, const struct ph_dgram *d)
{
	struct udp_pend *p, **tail;

	if (s->npend >= UDP_PEND_MAX || s->uw->pend_bytes + d->len > UDP_PEND_BYTES ||
	    (p = malloc(sizeof(*p) + d->len)) == NULL) {
		UDP_STAT(s->uw, dgrams_dropped, 1);
		return;
	}
	p->next = NULL;
	p->len = d->len;
	memcpy(p->data, d->data, d->len);
	s->uw->pend_bytes += d->len;
	for (tail = &s->pend; *tail != NULL; tail = &(*tail)->next)
		;
	*tail = p;
	s->npend++;
}

/* Datagrams from clients: each run of consecutive ones for one session goes in one call. */
static void udp_from_clients(struct udp_wrule *uw, struct ph_dgram *d, unsigned n)
{
	struct ph_worker *w = uw->w;
	struct udp_sess *run = NULL;
	unsigned first = 0;

	for (unsigned i = 0; i < n; i++) {
		struct ph_udp_key k = {.peer = d[i].peer, .local = d[i].local};
		struct ph_udp_node *node;
		struct udp_sess *s;

		if (d[i].trunc || d[i].peer.len == 0) {
			if (run != NULL)
				udp_to_target(run, d + first, i - first);
			run = NULL;
			UDP_STAT(uw, dgrams_dropped, 1);
			continue;
		}
		node = ph_udptab_find(&uw->tab, &k);
		s = node != NULL ? container_of(node, struct udp_sess, node) : NULL;
		if (s != NULL && s == run)
			continue;
		if (run != NULL) /* before a new session may evict it */
			udp_to_target(run, d + first, i - first);
		run = NULL;
		if (s == NULL) {
			s = udp_open(uw, &k);
			if (s == NULL)
				continue;
		}
		if (s->state == UDP_CLOSED)
			continue;
		ph_udptab_touch(&uw->tab, &s->node, w->loop.now);
		if (s->state == UDP_RESOLVING) {
			udp_hold(s, &d[i]);
			continue;
		}
		run = s;
		first = i;
	}
	if (run != NULL)
		udp_to_target(run, d + first, n - first);
}

static void udp_on_listen(struct ph_io *io, uint32_t events)
{
	struct udp_wrule *uw = container_of(io, struct udp_wrule, lio);
	struct ph_worker *w = uw->w;
	char label[96];

	(void)events;
	for (unsigned round = 0; round < UDP_ROUNDS && io->fd != -1; round++) {
		int n = ph_dgram_recv(w->dgram, 0, io->fd, PH_DGRAM_BATCH, true);

		if (n == -EAGAIN)
			return;
		if (n < 0) {
			UDP_STAT(uw, errors, 1);
			if (ph_ratelimit_ok(&uw->rl_err, w->loop.now, UDP_LOG_PER_SEC))
				ph_err("%s: udp receive: %s",
				       ph_rule_label(uw->rule, label, sizeof(label)), strerror(-n));
			return;
		}
		udp_count_drops(uw, &uw->sk_drops, ph_dgram_batch_items(w->dgram)[n - 1].sk_drops);
		udp_from_clients(uw, ph_dgram_batch_items(w->dgram), (unsigned)n);
		if (n < PH_DGRAM_BATCH)
			return;
	}
}

static void udp_close_all(struct udp_wrule *uw, const char *reason)
{
	struct ph_udp_node *n;

	while ((n = ph_udptab_oldest(&uw->tab)) != NULL)
		udp_close(container_of(n, struct udp_sess, node), reason, 0);
}

static void udp_on_cmd(struct ph_worker_hook *h, enum ph_worker_cmd cmd)
{
	struct udp_wrule *uw = container_of(h, struct udp_wrule, hook);
	struct ph_loop *l = &uw->w->loop;

	/* a datagram has nothing to drain: both commands end the sessions */
	(void)cmd;
	if (outq.uw == uw)
		udp_flush(&outq);
	ph_io_close(l, &uw->lio);
	ph_timer_stop(l, &uw->expire);
	udp_close_all(uw, "shutdown");
}

/* Once uw is detached (its sessions end with it): the worker is done with it. */
static void uwrule_retire(struct udp_wrule *uw)
{
	if (!uw->detached || uw->retired)
		return;
	uw->retired = true;
	ph_list_del(&uw->hook.node);
	/* refs drops after this batch: nothing of ours can reach uw by then */
	ph_task_queue(&uw->w->loop, &uw->retire_task);
}

static void uwrule_on_retired(struct ph_task *t)
{
	struct udp_wrule *uw = container_of(t, struct udp_wrule, retire_task);

	__atomic_fetch_sub(&uw->rule->refs, 1, __ATOMIC_ACQ_REL);
}

static void uwrule_free(struct udp_wrule *uw)
{
	struct ph_udp_node *n;

	if (uw == NULL)
		return;
	/* sessions left after the workers ended (aborted start): close without events */
	while ((n = ph_udptab_oldest(&uw->tab)) != NULL) {
		struct udp_sess *s = container_of(n, struct udp_sess, node);

		ph_udptab_del(&uw->tab, n);
		if (s->io.fd != -1)
			close(s->io.fd);
		udp_free_pend(s);
		free(s);
	}
	if (uw->lio.fd != -1)
		close(uw->lio.fd);
	ph_list_del(&uw->hook.node);
	ph_timer_stop(&uw->w->loop, &uw->expire);
	ph_task_cancel(&uw->retire_task);
	ph_udptab_free(&uw->tab);
	free(uw);
}

void ph_forward__udp_stats(const struct ph_rule *r, struct ph_stats *out)
{
	for (unsigned i = 0; i < r->nuwr; i++)
		ph_stats_add(out, &r->uwr[i]->stats);
}

void ph_forward__udp_free(struct ph_rule *r)
{
	for (unsigned i = 0; i < r->nuwr; i++)
		uwrule_free(r->uwr[i]);
	free(r->uwr);
	r->uwr = NULL;
	r->nuwr = 0;
}

static bool addr_is_any(const struct ph_addr *a)
{
	static const struct in6_addr any6 = IN6ADDR_ANY_INIT;

	if (a->u.sa.sa_family == AF_INET)
		return a->u.in.sin_addr.s_addr == htonl(INADDR_ANY);
	return memcmp(&a->u.in6.sin6_addr, &any6, sizeof(any6)) == 0;
}

static int udp_bind_one(struct ph_rule *r, bool reuseport, struct ph_addr *bound)
{
	struct ph_addr a = r->listen.addr;
	int fd;

	if (r->listen.wildcard) {
		/* :PORT means every interface: IPv6 with IPv4 mapped, or IPv4 alone */
		fd = ph_udp_bind(&a, false, reuseport, true, UDP_SOCKBUF);
		if (fd == -EAFNOSUPPORT || fd == -EADDRNOTAVAIL) {
			ph_addr_from_literal("0.0.0.0", r->listen.port, &a);
			fd = ph_udp_bind(&a, false, reuseport, true, UDP_SOCKBUF);
		}
	} else {
		fd = ph_udp_bind(&a, true, reuseport, addr_is_any(&a), UDP_SOCKBUF);
	}
	*bound = a;
	return fd;
}

int ph_forward__udp_bind(struct ph_rule *r, struct ph_worker **w, unsigned n, struct ph_rule *from,
                         char *why, size_t whylen)
{
	struct ph_addr bound = r->listen.addr;
	char a[PH_ADDR_STRLEN];
	int fd, err;

	/* a plain bind first: SO_REUSEPORT would share the port with another program */
	if (from == NULL) {
		fd = udp_bind_one(r, false, &bound);
		if (fd < 0) {
			snprintf(why, whylen, "cannot listen on udp %s: %s",
			         ph_addr_fmt(&r->listen.addr, a, sizeof(a)), ph_bind_strerror(fd));
			return fd;
		}
		close(fd);
	}
	ph_portseq_init();
	if (r->udp_timeout == 0)
		r->udp_timeout = PH_UDP_TIMEOUT_MS;
	if (r->max_sessions == 0)
		r->max_sessions = PH_UDP_MAX_SESSIONS;
	r->uwr = calloc(n, sizeof(*r->uwr));
	if (r->uwr == NULL) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	for (unsigned i = 0; i < n; i++) {
		struct udp_wrule *uw;

		if ((w[i]->dgram == NULL && ph_dgram_batch_new(&w[i]->dgram) < 0) ||
		    (w[i]->dgram_out == NULL && ph_dgram_batch_new(&w[i]->dgram_out) < 0)) {
			snprintf(why, whylen, "out of memory");
			err = -ENOMEM;
			goto err_free;
		}
		uw = calloc(1, sizeof(*uw));
		if (uw == NULL || ph_udptab_init(&uw->tab) < 0) {
			free(uw);
			snprintf(why, whylen, "out of memory");
			err = -ENOMEM;
			goto err_free;
		}
		uw->rule = r;
		uw->w = w[i];
		ph_io_init(&uw->lio, -1, udp_on_listen);
		ph_timer_init(&uw->expire, udp_on_expire);
		ph_list_init(&uw->hook.node);
		ph_task_init(&uw->retire_task, uwrule_on_retired);
		ph_tsel_init(&uw->sel, r, w[i], i);
		r->uwr[r->nuwr++] = uw;
		if (from != NULL)
			continue; /* attach takes from's listener over */
		fd = udp_bind_one(r, true, &bound);
		if (fd < 0) {
			snprintf(why, whylen, "cannot listen on udp %s: %s",
			         ph_addr_fmt(&bound, a, sizeof(a)), ph_bind_strerror(fd));
			err = fd;
			goto err_free;
		}
		uw->lio.fd = fd;
	}
	r->listen.addr = from != NULL ? from->listen.addr : bound;
	return 0;

err_free:
	ph_forward__udp_free(r);
	return err;
}

void ph_forward__udp_attach(struct ph_rule *r, unsigned i)
{
	struct udp_wrule *uw = r->uwr[i];
	struct ph_rule *from = r->from_udp;
	struct ph_loop *l = &uw->w->loop;
	char label[96];
	int err;

	ph_worker_hook_add(uw->w, &uw->hook, udp_on_cmd);
	if (uw->lio.fd == -1 && from != NULL && i < from->nuwr) {
		struct udp_wrule *old = from->uwr[i];

		/* the listener changes hands: datagrams queued in it stay */
		if (outq.uw == old)
			udp_flush(&outq);
		ph_io_forget(l, &old->lio, &uw->lio.fd);
		uw->sk_drops = old->sk_drops; /* the socket's running total goes on */
	}
	if (uw->lio.fd == -1)
		return;
	/* level-triggered: a full round budget leaves the rest for the next wake-up */
	err = ph_io_add(l, &uw->lio, EPOLLIN);
	if (err < 0) {
		ph_err("%s: cannot watch the udp listener: %s",
		       ph_rule_label(r, label, sizeof(label)), strerror(-err));
		ph_io_close(l, &uw->lio);
	}
}

void ph_forward__udp_detach(struct ph_rule *r, unsigned i)
{
	struct udp_wrule *uw = r->uwr[i];

	/* a datagram has nothing to drain: the sessions end now, and this part retires */
	udp_on_cmd(&uw->hook, PH_WORKER_ABORT);
	uw->detached = true;
	uwrule_retire(uw);
}
