/* Private to src/forward/ and src/socks/: how a socks rule's connections plug in. */
#ifndef PH_SOCKS_SOCKS_INT_H
#define PH_SOCKS_SOCKS_INT_H

#include <stdbool.h>

#include "forward/forward-int.h"
#include "socks/socks.h"

/* A new client of a socks rule (admitted): its handshake starts. May close c. */
void ph_socks__start(struct fwd_conn *c);

/* c's deadline passed while in FWD_SOCKS. */
void ph_socks__on_timer(struct fwd_conn *c);

/*
 * Ends c's socks state: lookups forgotten, extra sockets closed, buffers freed. The state
 * itself is freed now, or, when one of its sockets was watched (an event of this batch
 * may still point into it), left in c->sx for c's reap to free. Idempotent.
 */
void ph_socks__conn_free(struct fwd_conn *c);

/* True when no name lookup of wr's is in flight. */
bool ph_socks__wrule_idle(const struct fwd_wrule *wr);

/* Frees wr's socks state; the worker must be done with wr. */
void ph_socks__wrule_free(struct fwd_wrule *wr);

#endif /* PH_SOCKS_SOCKS_INT_H */
