/*
 * A rule's targets as one worker sees them, for TCP connections and UDP sessions alike:
 * round robin, a failed target skipped for a back-off that grows with its failures
 * (shared by all workers), and target names resolved without blocking and cached for
 * their time to live (per worker: nothing hot is shared).
 */
#ifndef PH_CONN_TARGET_H
#define PH_CONN_TARGET_H

#include <stdbool.h>
#include <stdint.h>

#include "core/addr.h"
#include "core/log.h"
#include "core/resolve.h"
#include "core/util.h"

struct ph_rule;
struct ph_target;
struct ph_tsel;

#define PH_RULE_MAX_TARGETS 32

/* Someone waiting for a target's name, embedded in a connection or a session. */
struct ph_tsel_wait;
typedef void (*ph_tsel_wait_fn)(struct ph_tsel_wait *wt, int err);
struct ph_tsel_wait {
	struct ph_name_wait nw; /* in the worker's name cache while waiting (core/resolve.h) */
	ph_tsel_wait_fn fn;
};

/* Where one connection or session stands in trying the targets' addresses. */
struct ph_tsel_try {
	struct ph_addr dst; /* the address to try now, or tried last */
	uint32_t tried;     /* bit per target tried */
	int lasterr;        /* of the last failed attempt; 0 for none */
	int8_t tgt;         /* the current target; -1 before the first */
	uint8_t ai;         /* address index in it; PH_RESOLVE_MAX: none to go on with */
};

/* One rule's targets on one worker. Their names are in the worker's cache (resolve.h). */
struct ph_tsel {
	struct ph_rule *rule; /* borrowed */
	struct ph_worker *w;  /* borrowed */
	unsigned rr;          /* round-robin position */
	struct ph_ratelimit rl_failed;
};

void ph_tsel_init(struct ph_tsel *s, struct ph_rule *r, struct ph_worker *w, unsigned start);

/*
 * Picks the next target to try: round robin over those not in tried (a bit per target),
 * those in back-off last. Returns its index, or -1 when every target was tried.
 */
int ph_tsel_pick(struct ph_tsel *s, uint32_t tried);

/*
 * The addresses of target t. Returns n >= 1 with *addrs set; 0 when a lookup is under way
 * and wt was queued (wt->fn runs once with its result; ph_tsel_wait_cancel() takes it
 * back); or -errno when the name cannot be resolved now.
 */
int ph_tsel_addrs(struct ph_tsel *s, unsigned t, const struct ph_addr **addrs,
                  struct ph_tsel_wait *wt);

void ph_tsel_wait_init(struct ph_tsel_wait *wt, ph_tsel_wait_fn fn);

static inline void ph_tsel_wait_cancel(struct ph_tsel_wait *wt)
{
	ph_name_wait_cancel(&wt->nw);
}

static inline void ph_tsel_try_init(struct ph_tsel_try *t)
{
	t->tried = 0;
	t->lasterr = 0;
	t->tgt = -1;
	t->ai = 0;
}

/*
 * Moves t on to the next address to try, after t->lasterr was set for the last one (or
 * first): the current target's next address, else the next target (the one left behind
 * goes into back-off when it failed). Returns 1 with t->dst to try; 0 when the next
 * target's name is being looked up and wt was queued (call ph_tsel_dns_done() from its
 * callback); or -errno when every target was tried (the last error).
 */
int ph_tsel_next(struct ph_tsel *s, struct ph_tsel_try *t, struct ph_tsel_wait *wt);

/* The lookup t waited for ended with err: as ph_tsel_next. */
int ph_tsel_dns_done(struct ph_tsel *s, struct ph_tsel_try *t, int err, struct ph_tsel_wait *wt);

/* What is known of target t's addresses now, without a lookup: their count, 0 for none. */
int ph_tsel_cached(struct ph_tsel *s, unsigned t, const struct ph_addr **addrs);

/* Target t answered: its back-off ends. */
void ph_tsel_ok(struct ph_tsel *s, unsigned t);

/* Target t failed at address dst (NULL: none) with err: it is skipped for a while. */
void ph_tsel_failed(struct ph_tsel *s, unsigned t, const struct ph_addr *dst, int err);

#endif /* PH_CONN_TARGET_H */
