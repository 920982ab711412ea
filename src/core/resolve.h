/*
 * Name resolution that never blocks the loop: c-ares, one channel per worker (and one for the
 * main thread's loop where the relay and expose run), its sockets watched by that loop's
 * epoll and its timeouts by its timer heap. Settings come from
 * /etc/resolv.conf and /etc/hosts.
 */
#ifndef PH_CORE_RESOLVE_H
#define PH_CORE_RESOLVE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/addr.h"
#include "core/util.h"

struct ph_loop;
struct ph_resolver;
struct ph_worker;

#define PH_RESOLVE_MAX 8 /* addresses kept per answer */

/*
 * Called once with the answer: err 0 and n >= 1 addresses (port set), with the answer's
 * time to live in seconds; or err < 0 (-PH_ENONAME, -PH_ENOADDR, -PH_EDNSFAIL,
 * -PH_EDNSTIMEOUT of core/util.h, -ENOMEM, -ECANCELED) and its words in why, a static
 * string (ph_strerror(err)).
 */
typedef void (*ph_resolve_fn)(void *arg, int err, const char *why, const struct ph_addr *addrs,
                              unsigned n, uint32_t ttl);

/* Must run once in the main thread before any worker resolves. Returns 0 or -EIO. */
int ph_resolve_global_init(void);

/*
 * Starts resolving name on worker w's loop (w's thread only), with the worker's resolver
 * (made on first use). arg must live until cb runs; cb never runs from inside this call.
 * Returns 0, or -errno and cb is never called.
 */
int ph_resolve(struct ph_worker *w, const char *name, uint16_t port, ph_resolve_fn cb, void *arg);

/*
 * A resolver of its own on loop l, for a loop that is no worker's (the main thread's, which
 * runs the relay and expose). Used from l's thread only; ph_resolve_global_init() ran.
 * Returns 0 and the resolver the caller owns in *out, or -errno (*out NULL).
 */
int ph_resolver_new(struct ph_loop *l, struct ph_resolver **out);

/* As ph_resolve(), on resolver r. Returns 0, or -errno and cb is never called. */
int ph_resolver_query(struct ph_resolver *r, const char *name, uint16_t port, ph_resolve_fn cb,
                      void *arg);

/* Frees a resolver (NULL is fine). Pending queries are dropped without their callbacks. */
void ph_resolver_free(struct ph_resolver *r);

/*
 * The worker's one cache of names, shared by everything that resolves on it (a forward
 * rule's target names, socks' destinations): each name's addresses kept for their time to
 * live (1 s to 5 min), a failure for 1 s, and one lookup in flight per name however many
 * wait for it. Entries live in a small table made on first use; those with a lookup in
 * flight are never evicted.
 */
struct ph_names;
struct ph_name_wait;
typedef void (*ph_name_fn)(struct ph_name_wait *nw, int err);

/* Someone waiting for a name, embedded in a connection or a session. */
struct ph_name_wait {
	struct ph_list node; /* self-linked when not waiting */
	ph_name_fn fn;
};

static inline void ph_name_wait_init(struct ph_name_wait *nw, ph_name_fn fn)
{
	ph_list_init(&nw->node);
	nw->fn = fn;
}

/* Takes nw back; its callback will not run. Harmless when it is not waiting. */
static inline void ph_name_wait_cancel(struct ph_name_wait *nw)
{
	ph_list_del(&nw->node);
}

/*
 * name's addresses on worker w (its thread only), ports 0. Returns n >= 1 with *addrs
 * (valid until the loop runs again: copy what is kept); 0 when a lookup is under way and
 * nw was queued (nw->fn(nw, err) runs once, err 0 when the name now has addresses: ask
 * again); or -errno: a failure remembered, or none could be started. loud: a failed lookup
 * is logged (a name the operator wrote, not one a client chose).
 */
int ph_names_get(struct ph_worker *w, const char *name, bool loud, const struct ph_addr **addrs,
                 struct ph_name_wait *nw);

/* name's last good addresses (fresh or not) without a lookup: their count (0: none). */
int ph_names_peek(struct ph_worker *w, const char *name, const struct ph_addr **addrs);

/* Frees a worker's cache (NULL is fine); its resolver must be freed first. */
void ph_names_free(struct ph_names *nc);

#endif /* PH_CORE_RESOLVE_H */
