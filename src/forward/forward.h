/*
 * Static forwarding: TCP connections arriving at a listening address are relayed to one of
 * the targets (round robin, skipping a target that failed until its back-off ends); UDP
 * datagrams are relayed like a NAT does, a session per client (forward/udp.c).
 */
#ifndef PH_FORWARD_FORWARD_H
#define PH_FORWARD_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "conn/rule.h"

struct ph_worker;
struct ph_stats;

/* Defaults for a new rule. Returns NULL when out of memory. */
struct ph_rule *ph_forward_rule_new(void);

/*
 * Binds the rule's listeners (TCP, UDP or both, as its scheme says) once per worker (SO_REUSEPORT) and registers it with each
 * worker's loop; call before the workers start. Returns 0, or -errno with a one-line
 * reason in why, and nothing is left bound.
 */
int ph_forward_start(struct ph_rule *r, struct ph_worker **w, unsigned n, char *why, size_t whylen);

/*
 * A reload's way in three steps. Bind (main thread): proves r's ports free, makes its
 * per-worker state and binds a listener per worker; or, with from_tcp / from_udp (rules
 * being replaced on the very same listen address), takes over their TCP / UDP listeners
 * instead, so that no
 * connection waiting to be accepted is lost. Returns 0, or -errno with a reason in why.
 * Attach (on worker i's thread, or before the workers start): r serves there; called
 * before from is detached there. Detach (on worker i's thread): r stops accepting there;
 * its connections finish, then that worker's part retires. ph_forward_start is bind and
 * attach for the start.
 */
int ph_forward_bind(struct ph_rule *r, struct ph_worker **w, unsigned n, struct ph_rule *from_tcp,
                    struct ph_rule *from_udp, char *why, size_t whylen);
void ph_forward_attach(struct ph_rule *r, unsigned i);
void ph_forward_detach(struct ph_rule *r, unsigned i);

/* True once every worker's part of a detached r retired: r may be freed. */
bool ph_forward_retired(const struct ph_rule *r);

/* Sums r's counters over its workers into *out (any thread; relaxed reads). */
void ph_forward_stats(const struct ph_rule *r, struct ph_stats *out);

/* Frees the rule and its per-worker state; the workers must have ended. NULL is fine. */
void ph_forward_rule_free(struct ph_rule *r);

#endif /* PH_FORWARD_FORWARD_H */
