#include "core/resolve.h"

#include <ares.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/util.h"
#include "core/worker.h"

struct resolve_sock {
	struct ph_io io;
	struct ph_resolver *r;
	struct resolve_sock *next;
};

struct ph_resolver {
	ares_channel ch;
	struct ph_loop *loop;
	struct ph_timer timer;
	struct resolve_sock *socks; /* owned; entries with io.fd == -1 are free */
	struct ph_list deferred;    /* queries answered inside ph_resolve(), not yet delivered */
	bool destroying;
	bool in_call; /* inside ares_getaddrinfo(): answers must wait for a task */
};

struct resolve_query {
	struct ph_resolver *r;
	ph_resolve_fn cb;
	void *arg;
	uint16_t port;
	/* an answer that came inside ares_getaddrinfo() waits here for the task */
	struct ph_task task;
	struct ph_addr addrs[PH_RESOLVE_MAX];
	unsigned n;
	uint32_t ttl;
	int err;
	const char *why;
};

int ph_resolve_global_init(void)
{
	return ares_library_init(ARES_LIB_INIT_ALL) == ARES_SUCCESS ? 0 : -EIO;
}

static void resolver_rearm(struct ph_resolver *r)
{
	struct timeval max = {.tv_sec = 5, .tv_usec = 0}, tv, *t;

	t = ares_timeout(r->ch, &max, &tv);
	ph_timer_arm(r->loop, &r->timer,
	             (uint64_t)t->tv_sec * 1000 + (uint64_t)t->tv_usec / 1000 + 1);
}

static void resolver_on_timer(struct ph_timer *t)
{
	struct ph_resolver *r = container_of(t, struct ph_resolver, timer);

	ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	resolver_rearm(r);
}

static void resolver_on_io(struct ph_io *io, uint32_t events)
{
	struct resolve_sock *s = container_of(io, struct resolve_sock, io);
	struct ph_resolver *r = s->r;
	int fd = io->fd;

	ares_process_fd(r->ch, (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) ? fd : ARES_SOCKET_BAD,
	                (events & EPOLLOUT) ? fd : ARES_SOCKET_BAD);
	resolver_rearm(r);
}

/* c-ares tells us which of its sockets to watch, and for what; (0, 0) means forget it. */
static void resolver_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
	struct ph_resolver *r = data;
	struct resolve_sock *s, *spare = NULL;
	uint32_t ev = (readable ? EPOLLIN : 0) | (writable ? EPOLLOUT : 0);

	for (s = r->socks; s != NULL; s = s->next) {
		if (s->io.fd == fd)
			break;
		if (s->io.fd == -1 && spare == NULL)
			spare = s;
	}
	if (s == NULL && ev == 0)
		return;
	if (s != NULL && ev == 0) {
		/* c-ares closes the socket itself; leaving epoll first keeps no stale entry */
		epoll_ctl(r->loop->epfd, EPOLL_CTL_DEL, fd, NULL);
		s->io.fd = -1;
		return;
	}
	if (s != NULL) {
		if (ph_io_mod(r->loop, &s->io, ev) < 0)
			ph_warn("resolver: cannot watch a DNS socket");
		return;
	}
	s = spare;
	if (s == NULL) {
		s = calloc(1, sizeof(*s));
		if (s == NULL) {
			ph_warn("resolver: out of memory watching a DNS socket");
			return; /* the query times out instead */
		}
		s->r = r;
		s->next = r->socks;
		r->socks = s;
	}
	ph_io_init(&s->io, fd, resolver_on_io);
	if (ph_io_add(r->loop, &s->io, ev) < 0) {
		ph_warn("resolver: cannot watch a DNS socket");
		s->io.fd = -1;
	}
}

int ph_resolver_new(struct ph_loop *l, struct ph_resolver **out)
{
	struct ares_options o;
	struct ph_resolver *r;
	int st;

	*out = NULL;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return -ENOMEM;
	memset(&o, 0, sizeof(o));
	o.sock_state_cb = resolver_sock_state;
	o.sock_state_cb_data = r;
	st = ares_init_options(&r->ch, &o, ARES_OPT_SOCK_STATE_CB);
	if (st != ARES_SUCCESS) {
		ph_err("resolver: %s", ares_strerror(st));
		free(r);
		return -EIO;
	}
	r->loop = l;
	ph_list_init(&r->deferred);
	ph_timer_init(&r->timer, resolver_on_timer);
	*out = r;
	return 0;
}

static void resolve_deliver(struct ph_task *t)
{
	struct resolve_query *q = container_of(t, struct resolve_query, task);

	q->cb(q->arg, q->err, q->why, q->n != 0 ? q->addrs : NULL, q->n, q->ttl);
	free(q);
}

/* c-ares's status of a lookup that gave no address, as one of our codes (core/util.h). */
static int resolve_err(int status)
{
	switch (status) {
	case ARES_ENOTFOUND: /* NXDOMAIN */
	case ARES_EBADNAME:
		return -PH_ENONAME;
	case ARES_SUCCESS: /* none of the families asked for */
	case ARES_ENODATA:
		return -PH_ENOADDR;
	case ARES_ETIMEOUT:
		return -PH_EDNSTIMEOUT;
	case ARES_ENOMEM:
		return -ENOMEM;
	case ARES_ECANCELLED:
	case ARES_EDESTRUCTION:
		return -ECANCELED;
	default: /* SERVFAIL, REFUSED, an answer that does not parse, no server to ask */
		return -PH_EDNSFAIL;
	}
}

static void resolve_done(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
	struct resolve_query *q = arg;
	uint32_t ttl = UINT32_MAX;

	(void)timeouts;
	q->n = 0;
	if (status == ARES_SUCCESS && ai != NULL) {
		for (struct ares_addrinfo_node *a = ai->nodes; a != NULL && q->n < PH_RESOLVE_MAX;
		     a = a->ai_next) {
			if (ph_addr_from_sa(a->ai_addr, a->ai_addrlen, &q->addrs[q->n]) < 0)
				continue;
			ph_addr_set_port(&q->addrs[q->n], q->port);
			if (a->ai_ttl >= 0 && (uint32_t)a->ai_ttl < ttl)
				ttl = (uint32_t)a->ai_ttl;
			q->n++;
		}
	}
	if (ai != NULL)
		ares_freeaddrinfo(ai);
	q->ttl = ttl == UINT32_MAX ? 0 : ttl;
	q->err = 0;
	q->why = NULL;
	if (q->n == 0) {
		q->err = resolve_err(status);
		q->why = ph_strerror(q->err);
	}
	if (q->r->destroying) {
		free(q);
		return;
	}
	if (q->r->in_call) {
		ph_list_add_tail(&q->r->deferred, &q->task.node);
		return;
	}
	resolve_deliver(&q->task);
}

int ph_resolver_query(struct ph_resolver *r, const char *name, uint16_t port, ph_resolve_fn cb,
                      void *arg)
{
	struct ares_addrinfo_hints hints;
	struct resolve_query *q;

	q = malloc(sizeof(*q));
	if (q == NULL)
		return -ENOMEM;
	q->r = r;
	q->cb = cb;
	q->arg = arg;
	q->port = port;
	ph_task_init(&q->task, resolve_deliver);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	/*
	 * c-ares may answer from /etc/hosts inside this call; the answer is still delivered
	 * through the callback, which the callers are written for.
	 */
	r->in_call = true;
	ares_getaddrinfo(r->ch, name, NULL, &hints, resolve_done, q);
	r->in_call = false;
	if (!ph_list_empty(&r->deferred)) {
		struct ph_list *n = r->deferred.next;

		ph_list_del(n);
		ph_task_queue(r->loop, container_of(n, struct ph_task, node));
	}
	resolver_rearm(r);
	return 0;
}

int ph_resolve(struct ph_worker *w, const char *name, uint16_t port, ph_resolve_fn cb, void *arg)
{
	int err;

	if (w->resolver == NULL) {
		err = ph_resolver_new(&w->loop, &w->resolver);
		if (err < 0)
			return err;
	}
	return ph_resolver_query(w->resolver, name, port, cb, arg);
}

void ph_resolver_free(struct ph_resolver *r)
{
	if (r == NULL)
		return;
	r->destroying = true;
	ares_destroy(r->ch);
	while (!ph_list_empty(&r->deferred)) {
		struct ph_list *n = r->deferred.next;

		ph_list_del(n);
		free(container_of(n, struct resolve_query, task.node));
	}
	ph_timer_stop(r->loop, &r->timer);
	while (r->socks != NULL) {
		struct resolve_sock *s = r->socks;

		r->socks = s->next;
		free(s);
	}
	free(r);
}

/* --- the cache of names ------------------------------------------------------------------ */

#define NAMES_SLOTS     64 /* names kept per worker */
#define NAMES_PROBE     4  /* slots a name may sit in */
#define NAMES_TTL_MIN_S 1
#define NAMES_TTL_MAX_S 300
#define NAMES_NEG_MS    1000 /* how long a failed lookup is remembered */

struct names_ent {
	struct ph_names *nc;
	char name[PH_HOST_MAX];
	struct ph_addr addrs[PH_RESOLVE_MAX];
	unsigned n;
	uint64_t expires; /* loop ms; 0: never resolved */
	int err;          /* of the last lookup, 0 when addrs are good */
	bool busy;        /* a lookup is in flight: the entry stays */
	bool loud;        /* a failure is logged */
	struct ph_list waiters;
};

struct ph_names {
	struct ph_worker *w;
	uint64_t key[2]; /* SipHash key: a client choosing names cannot aim at one slot */
	struct names_ent ent[NAMES_SLOTS];
};

static struct ph_names *names_of(struct ph_worker *w)
{
	struct ph_names *nc = w->names;

	if (nc != NULL)
		return nc;
	nc = calloc(1, sizeof(*nc));
	if (nc == NULL)
		return NULL;
	nc->w = w;
	ph_random(nc->key, sizeof(nc->key));
	for (unsigned i = 0; i < NAMES_SLOTS; i++) {
		nc->ent[i].nc = nc;
		ph_list_init(&nc->ent[i].waiters);
	}
	w->names = nc;
	return nc;
}

/* name's entry: the one holding it, or one free for it (NULL: every candidate is busy). */
static struct names_ent *names_slot(struct ph_names *nc, const char *name, bool *found)
{
	uint64_t h = ph_siphash13(nc->key, name, strlen(name));
	struct names_ent *free_e = NULL, *oldest = NULL;

	*found = false;
	for (unsigned i = 0; i < NAMES_PROBE; i++) {
		struct names_ent *e = &nc->ent[(h + i) % NAMES_SLOTS];

		if (e->name[0] != '\0' && strcmp(e->name, name) == 0) {
			*found = true;
			return e;
		}
		if (e->busy)
			continue;
		if (e->name[0] == '\0' && free_e == NULL)
			free_e = e;
		if (oldest == NULL || e->expires < oldest->expires)
			oldest = e;
	}
	return free_e != NULL ? free_e : oldest;
}

static void names_on_resolved(void *arg, int err, const char *why, const struct ph_addr *addrs,
                              unsigned n, uint32_t ttl)
{
	struct names_ent *e = arg;
	uint64_t now = e->nc->w->loop.now;

	e->busy = false;
	e->err = err;
	e->n = err == 0 ? (n < PH_RESOLVE_MAX ? n : PH_RESOLVE_MAX) : 0;
	if (err == 0) {
		memcpy(e->addrs, addrs, e->n * sizeof(*addrs));
		ttl = ttl < NAMES_TTL_MIN_S   ? NAMES_TTL_MIN_S
		      : ttl > NAMES_TTL_MAX_S ? NAMES_TTL_MAX_S
		                              : ttl;
		e->expires = now + (uint64_t)ttl * 1000;
	} else {
		if (e->loud)
			ph_warn("cannot resolve %s: %s", e->name, why);
		e->expires = now + NAMES_NEG_MS;
	}
	/* a waiter's callback may end others, which leave the list: always take the head */
	while (!ph_list_empty(&e->waiters)) {
		struct ph_name_wait *nw = container_of(e->waiters.next, struct ph_name_wait, node);

		ph_list_del(&nw->node);
		nw->fn(nw, e->err);
	}
}

int ph_names_get(struct ph_worker *w, const char *name, bool loud, const struct ph_addr **addrs,
                 struct ph_name_wait *nw)
{
	struct ph_names *nc = names_of(w);
	struct names_ent *e;
	bool found;
	int err;

	*addrs = NULL;
	if (nc == NULL)
		return -ENOMEM;
	if (strlen(name) >= sizeof(e->name))
		return -PH_ENONAME;
	e = names_slot(nc, name, &found);
	if (e == NULL)
		return -EBUSY; /* every slot it may take waits for a lookup: rare, and brief */
	if (found && e->expires > w->loop.now && !e->busy) {
		if (e->err != 0)
			return e->err;
		*addrs = e->addrs;
		return (int)e->n;
	}
	if (!found) { /* the slot changes hands (it was free, or the oldest answer) */
		snprintf(e->name, sizeof(e->name), "%s", name);
		e->n = 0;
		e->err = 0;
		e->expires = 0;
		e->loud = false;
	}
	e->loud |= loud;
	/* stale or never looked up: wait for a fresh answer */
	if (!e->busy) {
		err = ph_resolve(w, e->name, 0, names_on_resolved, e);
		if (err < 0)
			return err;
		e->busy = true;
	}
	ph_list_add_tail(&e->waiters, &nw->node);
	return 0;
}

int ph_names_peek(struct ph_worker *w, const char *name, const struct ph_addr **addrs)
{
	struct names_ent *e;
	bool found;

	*addrs = NULL;
	if (w->names == NULL)
		return 0;
	e = names_slot(w->names, name, &found);
	if (!found || e->err != 0 || e->expires == 0) /* stale is still what is known */
		return 0;
	*addrs = e->addrs;
	return (int)e->n;
}

void ph_names_free(struct ph_names *nc)
{
	free(nc);
}
