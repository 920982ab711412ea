/* Private to src/forward/: the UDP side of a rule, started and freed by forward.c. */
#ifndef PH_FORWARD_FORWARD_INT_H
#define PH_FORWARD_FORWARD_INT_H

#include <stddef.h>
#include <stdint.h>

#include "conn/accept.h"
#include "conn/pump.h"
#include "core/loop.h"
#include "core/worker.h"
#include "forward/forward.h"

struct ph_worker;
struct ph_socks_conn;
struct ph_socks_wrule;

/*
 * A rule's TCP side on each worker and its connections, shared with src/socks/: a socks
 * rule is a forward rule whose target each client names in its handshake, so it uses the
 * same listeners, admission, limits, counters, close path and pump.
 */
enum fwd_state {
	FWD_RESOLVING = 0, /* waiting for the target's name; connect deadline armed */
	FWD_CONNECTING,    /* connect() in flight; connect deadline armed */
	FWD_RELAYING,      /* the pump moves bytes; idle deadline armed when set */
	FWD_CLOSED,        /* closed; freed after this batch of events */
	FWD_PROXY,         /* reading the PROXY header of a trusted proxy; deadline armed */
	FWD_SOCKS,         /* a socks rule's client: handshake, lookup, connect (socks/) */
	FWD__NSTATES       /* must stay last */
};

/* One rule on one worker: its listener, its connections, its view of the targets' names. */
struct fwd_wrule {
	struct ph_forward_rule *rule; /* borrowed */
	struct ph_worker *w;          /* borrowed */
	struct ph_acceptor acc;       /* the listener; closed when draining */
	struct ph_worker_hook hook;
	struct ph_list conns;       /* fwd_conn.node of live connections */
	struct ph_tsel sel;         /* the targets as this worker sees them */
	struct ph_stats stats;      /* the rule's counters on this worker (status, metrics) */
	bool detached;              /* a reload removed the rule: retires when conns is empty */
	bool retired;               /* the worker is done with it (main may free it) */
	struct ph_task retire_task; /* drops the rule's refs after the batch that retired it */
	struct ph_ratelimit rl_denied, rl_full, rl_logfile;
	struct ph_socks_wrule *sw; /* owned: a socks rule's name cache and lookups; or NULL */
};

struct fwd_conn {
	struct ph_pump pump;   /* io[0] the client, io[1] the target (also while connecting) */
	struct ph_timer timer; /* connect or idle deadline */
	struct ph_task reap;
	struct ph_list node;      /* in wr->conns */
	struct ph_tsel_wait wait; /* queued for a target's name while resolving */
	struct fwd_wrule *wr;
	struct ph_addr peer; /* the client (as a PROXY header said, behind a trusted proxy) */
	struct ph_addr orig; /* where it connected to, from a PROXY header; family 0: unknown */
	uint64_t id;
	uint64_t start;           /* loop ms at accept */
	struct ph_tsel_try try;   /* the targets' addresses tried so far */
	struct ph_socks_conn *sx; /* owned: a socks client's handshake until it relays */
	uint8_t state;
	uint8_t fds; /* of the fd budget, reserved at accept and given back at close */
};

/* Counts into the worker's totals and the rule's own on this worker (one writer each). */
#define FWD_STAT(wr, field, n)                                                                     \
	do {                                                                                       \
		PH_STAT_ADD((wr)->w, field, (n));                                                  \
		PH_STATS_ADD(&(wr)->stats, field, (n));                                            \
	} while (0)

/* The one close path (logs a line, closes both sides, frees c after this batch). */
void ph_forward__close(struct fwd_conn *c, bool rst, const char *reason, int err);

/* Every state change goes through here (traced at -vv). */
#define ph_forward__set_state(c, s) ph_forward__set_state_((c), (s), __LINE__)
void ph_forward__set_state_(struct fwd_conn *c, enum fwd_state s, int line);

/*
 * c's io[1] is connected (registered with PH_PUMP_EVENTS, events what just came for it,
 * when registered; else not watched yet): the pump starts and the idle deadline is armed.
 * May close c (a failure, or a reset already queued): nothing may touch c after it.
 */
void ph_forward__relay(struct fwd_conn *c, uint32_t events, bool registered);

/* Retires wr when it is detached and holds nothing any more (socks lookups included). */
void ph_forward__retire(struct fwd_wrule *wr);

/* The UDP side of ph_forward_bind/attach/detach (forward.h). */
int ph_forward__udp_bind(struct ph_forward_rule *r, struct ph_worker **w, unsigned n,
                         struct ph_forward_rule *from, char *why, size_t whylen);
void ph_forward__udp_attach(struct ph_forward_rule *r, unsigned i);
void ph_forward__udp_detach(struct ph_forward_rule *r, unsigned i);

/* Frees r's UDP state: sessions are closed without events. The workers must have ended. */
void ph_forward__udp_free(struct ph_forward_rule *r);

/* Adds r's UDP counters on every worker to *out. */
void ph_forward__udp_stats(const struct ph_forward_rule *r, struct ph_stats *out);

/* "NAME" or "forward ADDR": how logs name a rule. */
const char *ph_forward__label(const struct ph_forward_rule *r, char *buf, size_t len);

#endif /* PH_FORWARD_FORWARD_INT_H */
