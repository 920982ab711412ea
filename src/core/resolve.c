#include "core/resolve.h"

#include <ares.h>
#include <errno.h>
#include <stdbool.h>
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
