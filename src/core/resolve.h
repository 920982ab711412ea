/*
 * Name resolution that never blocks the loop: c-ares, one channel per worker (and one for the
 * main thread's loop where the relay and expose run), its sockets watched by that loop's
 * epoll and its timeouts by its timer heap. Settings come from
 * /etc/resolv.conf and /etc/hosts.
 */
#ifndef PH_CORE_RESOLVE_H
#define PH_CORE_RESOLVE_H

#include <stdint.h>

#include "core/addr.h"

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

#endif /* PH_CORE_RESOLVE_H */
