/*
 * The relay's prober (probe.h): one non-blocking socket per probe on the relay's loop.
 *
 * TCP: a connect to the caller's address and port. Connected: open (the socket is reset at
 * once, nothing is sent); a reset (ECONNREFUSED): closed; no answer within the deadline,
 * or an ICMP host or network unreachable: filtered.
 *
 * UDP: a socket connected to the caller's address and port sends a small datagram
 * PH_PROBE_UDP_SEND times over the deadline. Any datagram back: open; an ICMP port
 * unreachable (ECONNREFUSED on the socket): closed; host or network unreachable: filtered;
 * nothing at all: open|filtered, since a UDP service that does not answer a stranger's
 * datagram looks just like a firewall that drops it.
 *
 * A probe whose session ends meanwhile is closed without an answer; every probe is freed
 * after the loop's round of events (a closed probe's socket may still have one queued).
 */
#include "tunnel/probe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn/accept.h"
#include "core/log.h"
#include "core/logagg.h"
#include "core/loop.h"
#include "core/net.h"
#include "core/sys.h"
#include "core/util.h"

#define BUCKETS_MAX 4096 /* keys with a rate remembered (a relay has at most 4096 keys) */

/* The datagram a UDP probe sends: small, and saying who sends it to whoever reads it. */
static const char probe_dgram[] = "pinhole check\n";

struct probe {
	struct ph_list node; /* in pr->live, then pr->dead once closed */
	struct ph_prober *pr;
	void *owner; /* who asked; it is answered when the probe ends */
	uint32_t req;
	uint8_t proto;        /* PH_SVC_TCP, PH_SVC_UDP */
	unsigned sent;        /* UDP: datagrams sent */
	struct ph_addr addr;  /* what is probed: the caller's address (IPv4 as IPv4), the port */
	struct ph_io io;      /* the probe's socket */
	struct ph_timer tick; /* TCP: the deadline; UDP: the next datagram, then the deadline */
	uint64_t started;     /* loop ms */
	char label[96];       /* the caller, for the log */
};

/* A key's rate (GCRA, a token bucket kept as one time): a check fits while tat <= now +
 * (burst - 1) * every, and moves tat on by every. */
struct bucket {
	uint8_t key[PH_KEY_LEN];
	uint64_t tat; /* loop ms: when the key's bucket is full again */
};

struct ph_prober {
	struct ph_loop *loop;
	ph_prober_fn answer;
	uint64_t timeout;
	struct ph_list live;
	unsigned nlive;
	struct ph_list dead; /* closed probes, freed by reap after this round's events */
	struct ph_task reap;
	struct bucket *buckets;
	unsigned nbuckets, cap;
	struct ph_prober_stats st;
};

/* Answers owner's CHECK req with result, about addr (NULL: none), text a printf format. */
static void answer(struct ph_prober *pr, void *owner, uint32_t req, uint8_t result,
                   const struct ph_addr *addr, const char *fmt, ...)
	__attribute__((format(printf, 6, 7)));
static void answer(struct ph_prober *pr, void *owner, uint32_t req, uint8_t result,
                   const struct ph_addr *addr, const char *fmt, ...)
{
	struct ph_ctrl c = {.type = PH_CTRL_CHECKED, .req = req, .result = result};
	va_list ap;

	if (addr != NULL)
		c.addr = *addr;
	va_start(ap, fmt);
	vsnprintf(c.text, sizeof(c.text), fmt, ap);
	va_end(ap);
	pr->st.results[result]++;
	pr->answer(owner, &c);
}

/* The address of a alone ("203.0.113.7", "2001:db8::1"), for a text. Returns buf. */
static const char *ip_str(const struct ph_addr *a, char *buf, size_t len)
{
	const void *ip = a->u.sa.sa_family == AF_INET6 ? (const void *)&a->u.in6.sin6_addr
	                                               : (const void *)&a->u.in.sin_addr;

	if (inet_ntop(a->u.sa.sa_family, ip, buf, (socklen_t)len) == NULL)
		snprintf(buf, len, "?");
	return buf;
}

/* The relay's line for a check that was made (one per check; each key's rate bounds them). */
static void log_result(const char *label, uint8_t proto, const struct ph_addr *a, uint8_t result,
                       const char *text, uint64_t ms)
{
	char as[PH_ADDR_STRLEN];

	ph_info("%s: checked %s %s: %s (%s; %llu ms)", label, proto == PH_SVC_UDP ? "udp" : "tcp",
	        ph_addr_fmt(a, as, sizeof(as)), ph_check_result_name(result), text,
	        (unsigned long long)ms);
}

static void prober_reap(struct ph_task *t)
{
	struct ph_prober *pr = container_of(t, struct ph_prober, reap);

	while (!ph_list_empty(&pr->dead)) {
		struct ph_list *n = pr->dead.next;

		ph_list_del(n);
		free(container_of(n, struct probe, node));
	}
}

/* Closes p (its socket reset, its fd given back) and queues it to be freed. Idempotent. */
static void probe_close(struct probe *p)
{
	struct ph_prober *pr = p->pr;

	if (p->io.fd == -1)
		return;
	ph_timer_stop(pr->loop, &p->tick);
	if (p->proto == PH_SVC_TCP)
		ph_sock_set_rst(p->io.fd); /* an open port was only touched: no FIN dance */
	ph_io_close(pr->loop, &p->io);
	ph_fds_give(1);
	ph_list_del(&p->node);
	ph_list_add_tail(&pr->dead, &p->node);
	pr->nlive--;
	ph_task_queue(pr->loop, &pr->reap);
}

/* p found result (err: the -errno behind it, or 0): its caller is answered, p closed. */
static void probe_end(struct probe *p, uint8_t result, int err)
{
	struct ph_prober *pr = p->pr;
	char text[PH_CTRL_TEXT_MAX + 1];

	switch (result) {
	case PH_CHECK_OPEN:
		snprintf(text, sizeof(text), "%s",
		         p->proto == PH_SVC_UDP ? "an answer came back" : "connected");
		break;
	case PH_CHECK_CLOSED:
		snprintf(text, sizeof(text), "%s",
		         p->proto == PH_SVC_UDP ? "ICMP port unreachable" : "reset");
		break;
	case PH_CHECK_OPEN_FILTERED:
		snprintf(text, sizeof(text),
		         "no answer to %u datagrams in %llu ms, and no ICMP error: a service that "
		         "ignores strangers, or a firewall that drops",
		         p->sent, (unsigned long long)pr->timeout);
		break;
	default:
		if (err == 0 || err == -ETIMEDOUT)
			snprintf(text, sizeof(text), "no answer in %llu ms",
			         (unsigned long long)pr->timeout);
		else
			snprintf(text, sizeof(text), "%s", strerror(-err));
		break;
	}
	log_result(p->label, p->proto, &p->addr, result, text, pr->loop->now - p->started);
	answer(pr, p->owner, p->req, result, &p->addr, "%s", text);
	probe_close(p);
}

/*
 * What a socket error says about the port: refused is closed, an unreachable host or
 * network (an ICMP error, or no route) and a timeout are filtered; anything else is the
 * relay's own trouble (0).
 */
static uint8_t err_result(int err)
{
	switch (err) {
	case -ECONNREFUSED:
		return PH_CHECK_CLOSED;
	case -ETIMEDOUT:
	case -EHOSTUNREACH:
	case -ENETUNREACH:
	case -EHOSTDOWN:
	case -ENONET:
		return PH_CHECK_FILTERED;
	default:
		return 0;
	}
}

/* A failure that says nothing about the port (our fds, our firewall): refused, saying so. */
static void probe_fail(struct probe *p, int err)
{
	uint8_t r = err_result(err);
	char a[PH_ADDR_STRLEN];

	if (r != 0) {
		probe_end(p, r, err);
		return;
	}
	ph_warn("%s: check of %s cannot be made here: %s", p->label,
	        ph_addr_fmt(&p->addr, a, sizeof(a)), strerror(-err));
	answer(p->pr, p->owner, p->req, PH_CHECK_REFUSED, &p->addr, "the relay cannot probe it: %s",
	       strerror(-err));
	probe_close(p);
}

static void tcp_on_io(struct ph_io *io, uint32_t events)
{
	struct probe *p = container_of(io, struct probe, io);
	int err = ph_sock_error(io->fd);

	if (err == 0 && (events & (EPOLLERR | EPOLLHUP)))
		err = -ECONNRESET;
	/* connected, even when the peer reset it since: the port is open */
	if (err == 0 || err == -ECONNRESET || err == -EPIPE)
		probe_end(p, PH_CHECK_OPEN, 0);
	else
		probe_fail(p, err);
}

/* Sends the UDP probe's next datagram; returns 0, or -errno (ECONNREFUSED: an earlier
 * datagram met an ICMP port unreachable). */
static int udp_send(struct probe *p)
{
	ssize_t n;

	do
		n = ph_sys.write(p->io.fd, probe_dgram, sizeof(probe_dgram) - 1);
	while (n == -1 && errno == EINTR);
	if (n == -1 && errno != EAGAIN)
		return -errno; /* a full buffer loses one datagram: the next try goes */
	p->sent++;
	return 0;
}

static void udp_on_io(struct ph_io *io, uint32_t events)
{
	struct probe *p = container_of(io, struct probe, io);
	uint8_t buf[512];
	ssize_t n;

	(void)events;
	do
		n = ph_sys.read(io->fd, buf, sizeof(buf));
	while (n == -1 && errno == EINTR);
	if (n >= 0)
		probe_end(p, PH_CHECK_OPEN, 0);
	else if (errno != EAGAIN)
		probe_fail(p, -errno);
}

/* TCP: the deadline. UDP: the next datagram, or, once all went, the deadline. */
static void probe_on_tick(struct ph_timer *t)
{
	struct probe *p = container_of(t, struct probe, tick);
	uint64_t step = p->pr->timeout / PH_PROBE_UDP_SEND;
	int err;

	if (p->proto == PH_SVC_TCP) {
		probe_end(p, PH_CHECK_FILTERED, 0);
		return;
	}
	if (p->sent >= PH_PROBE_UDP_SEND) {
		probe_end(p, PH_CHECK_OPEN_FILTERED, 0);
		return;
	}
	err = udp_send(p);
	if (err < 0) {
		probe_fail(p, err);
		return;
	}
	ph_timer_arm(p->pr->loop, &p->tick,
	             p->sent < PH_PROBE_UDP_SEND ? step
	                                         : p->pr->timeout - step * (PH_PROBE_UDP_SEND - 1));
}

/* The probe's socket, connecting or sending its first datagram. Returns 0 or -errno. */
static int probe_start(struct probe *p)
{
	struct ph_loop *l = p->pr->loop;
	int fd, err;

	fd = p->proto == PH_SVC_UDP ? ph_udp_connect(&p->addr, NULL, 0)
	                            : ph_tcp_connect(&p->addr, NULL);
	if (fd < 0)
		return fd;
	ph_io_init(&p->io, fd, p->proto == PH_SVC_UDP ? udp_on_io : tcp_on_io);
	err = ph_io_add(l, &p->io, p->proto == PH_SVC_UDP ? EPOLLIN : EPOLLOUT | EPOLLET);
	if (err < 0)
		goto err_close;
	if (p->proto == PH_SVC_UDP) {
		err = udp_send(p);
		if (err < 0)
			goto err_close;
		ph_timer_arm(l, &p->tick, p->pr->timeout / PH_PROBE_UDP_SEND);
	} else {
		ph_timer_arm(l, &p->tick, p->pr->timeout);
	}
	return 0;

err_close:
	ph_io_close(l, &p->io);
	return err;
}

/*
 * Takes one check from key's rate, or says when the next one fits. Returns 0, -EAGAIN
 * with *wait_ms set, or -ENOMEM (no room to remember the key: refused as busy).
 */
static int rate_take(struct ph_prober *pr, const uint8_t key[PH_KEY_LEN], uint64_t *wait_ms)
{
	const uint64_t every = PH_PROBE_EVERY_MS, slack = (PH_PROBE_BURST - 1) * every;
	uint64_t now = pr->loop->now;
	struct bucket *b = NULL;

	for (unsigned i = 0; i < pr->nbuckets && b == NULL; i++)
		if (memcmp(pr->buckets[i].key, key, PH_KEY_LEN) == 0)
			b = &pr->buckets[i];
	for (unsigned i = 0; i < pr->nbuckets && b == NULL; i++)
		if (pr->buckets[i].tat <= now) /* full again: as good as never used */
			b = &pr->buckets[i];
	if (b == NULL) {
		if (pr->nbuckets == pr->cap) {
			unsigned cap = pr->cap != 0 ? pr->cap * 2 : 8;
			struct bucket *nb;

			if (cap > BUCKETS_MAX)
				return -ENOMEM;
			nb = realloc(pr->buckets, cap * sizeof(*nb));
			if (nb == NULL)
				return -ENOMEM;
			pr->buckets = nb;
			pr->cap = cap;
		}
		b = &pr->buckets[pr->nbuckets++];
		b->tat = 0;
	}
	if (memcmp(b->key, key, PH_KEY_LEN) != 0) {
		memcpy(b->key, key, PH_KEY_LEN);
		b->tat = 0;
	}
	if (b->tat > now + slack) {
		*wait_ms = b->tat - slack - now;
		return -EAGAIN;
	}
	b->tat = (b->tat > now ? b->tat : now) + every;
	return 0;
}

/* Whether owner has a probe in flight. */
static bool asking(struct ph_prober *pr, const void *owner)
{
	for (struct ph_list *n = pr->live.next; n != &pr->live; n = n->next)
		if (container_of(n, struct probe, node)->owner == owner)
			return true;
	return false;
}

/* A refusal, counted and noted (any client may cause it, so below -v it is counted). */
static void refuse(struct ph_prober *pr, void *owner, const struct ph_ctrl *c,
                   const struct ph_addr *seen, const char *label, const char *cause,
                   const char *text)
{
	ph_logagg_note("relay", "checks", cause, "%s: check of %s port %u refused: %s", label,
	               c->proto == PH_SVC_UDP ? "udp" : "tcp", c->port, text);
	answer(pr, owner, c->req, PH_CHECK_REFUSED, seen, "%s", text);
}

void ph_prober_check(struct ph_prober *pr, void *owner, const uint8_t key[PH_KEY_LEN],
                     const struct ph_addr *peer, const struct ph_ctrl *c, const char *label)
{
	char text[PH_CTRL_TEXT_MAX + 1], a[PH_ADDR_STRLEN];
	struct ph_addr seen = *peer, want;
	uint64_t wait;
	struct probe *p;
	int err;

	/* the address the relay sees, IPv4 written as IPv4, with the port asked about */
	ph_addr_unmap(&seen);
	ph_addr_set_port(&seen, c->port);
	ip_str(&seen, a, sizeof(a));
	want = c->addr;
	ph_addr_unmap(&want);
	if (want.u.sa.sa_family != AF_UNSPEC && !ph_addr_same_host(&want, &seen)) {
		snprintf(text, sizeof(text), "the relay checks only the address it sees you at, %s",
		         a);
		refuse(pr, owner, c, &seen, label, "refused: another address", text);
		return;
	}
	if (asking(pr, owner)) {
		refuse(pr, owner, c, &seen, label, "refused: one at a time",
		       "one check at a time: the last one is still running");
		return;
	}
	err = rate_take(pr, key, &wait);
	if (err == -EAGAIN) {
		snprintf(
			text, sizeof(text),
			"this key made its %u checks in a row (%u a minute); the next fits in %llu "
			"s",
			PH_PROBE_BURST, 60000 / PH_PROBE_EVERY_MS,
			(unsigned long long)(wait + 999) / 1000);
		refuse(pr, owner, c, &seen, label, "refused: the key's rate", text);
		return;
	}
	if (err < 0 || pr->nlive >= PH_PROBE_MAX) {
		snprintf(text, sizeof(text), "the relay is busy with %u checks; try again later",
		         pr->nlive);
		refuse(pr, owner, c, &seen, label, "refused: the relay is busy", text);
		return;
	}
	if (!ph_fds_take(1)) {
		refuse(pr, owner, c, &seen, label, "refused: no file descriptor",
		       "the relay is short of file descriptors; try again later");
		return;
	}
	p = calloc(1, sizeof(*p));
	if (p == NULL) {
		ph_fds_give(1);
		refuse(pr, owner, c, &seen, label, "refused: out of memory",
		       "the relay is out of memory");
		return;
	}
	p->pr = pr;
	p->owner = owner;
	p->req = c->req;
	p->proto = c->proto;
	p->addr = seen;
	p->started = pr->loop->now;
	snprintf(p->label, sizeof(p->label), "%s", label);
	ph_io_init(&p->io, -1, NULL);
	ph_timer_init(&p->tick, probe_on_tick);
	err = probe_start(p);
	if (err < 0) {
		uint8_t r = err_result(err);

		ph_fds_give(1);
		free(p);
		if (r != 0) { /* known at once: no route, or a reset on loopback */
			log_result(label, c->proto, &seen, r, strerror(-err), 0);
			answer(pr, owner, c->req, r, &seen, "%s", strerror(-err));
		} else {
			refuse(pr, owner, c, &seen, label, "refused: cannot probe", strerror(-err));
		}
		return;
	}
	ph_list_add_tail(&pr->live, &p->node);
	pr->nlive++;
}

void ph_prober_forget(struct ph_prober *pr, void *owner)
{
	struct ph_list *n, *tmp;

	if (pr == NULL)
		return;
	ph_list_for_each_safe(n, tmp, &pr->live) {
		struct probe *p = container_of(n, struct probe, node);

		if (p->owner == owner)
			probe_close(p);
	}
}

int ph_prober_new(struct ph_loop *l, ph_prober_fn fn, uint64_t timeout_ms, struct ph_prober **out)
{
	struct ph_prober *pr = calloc(1, sizeof(*pr));

	*out = NULL;
	if (pr == NULL)
		return -ENOMEM;
	pr->loop = l;
	pr->answer = fn;
	pr->timeout = timeout_ms != 0 ? timeout_ms : PH_PROBE_MS;
	ph_list_init(&pr->live);
	ph_list_init(&pr->dead);
	ph_task_init(&pr->reap, prober_reap);
	*out = pr;
	return 0;
}

void ph_prober_free(struct ph_prober *pr)
{
	if (pr == NULL)
		return;
	while (!ph_list_empty(&pr->live))
		probe_close(container_of(pr->live.next, struct probe, node));
	ph_task_cancel(&pr->reap);
	prober_reap(&pr->reap);
	free(pr->buckets);
	free(pr);
}

void ph_prober_stats(const struct ph_prober *pr, struct ph_prober_stats *out)
{
	*out = pr->st;
}
