/*
 * A binary min-heap of timers ordered by deadline. Timers are embedded in their owners and
 * carry their heap index, so stopping one is O(log n) and needs no search.
 */
#ifndef PH_CORE_TIMER_H
#define PH_CORE_TIMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PH_TIMER_IDLE UINT32_MAX       /* idx of a timer that is not armed */
#define PH_TIMER_DUE  (UINT32_MAX - 1) /* idx of a timer taken from the heap to fire now */

struct ph_timer;
typedef void (*ph_timer_fn)(struct ph_timer *t);

struct ph_timer {
	uint64_t when; /* deadline, ms on the monotonic clock */
	uint32_t idx;  /* position in the heap, PH_TIMER_IDLE when not armed */
	ph_timer_fn cb;
};

struct ph_timer_heap {
	struct ph_timer **v; /* owned array; the timers are borrowed */
	uint32_t n, cap;
};

/* Prepares t with its callback; it starts disarmed. */
void ph_timer_init(struct ph_timer *t, ph_timer_fn cb);

static inline bool ph_timer_armed(const struct ph_timer *t)
{
	return t->idx < PH_TIMER_DUE;
}

/* Arms (or re-arms) t for deadline when. Returns 0 or -ENOMEM, leaving t disarmed. */
int ph_timer_heap_add(struct ph_timer_heap *h, struct ph_timer *t, uint64_t when);

/* Disarms t if it is armed (or due to fire in this round); harmless otherwise. */
void ph_timer_heap_del(struct ph_timer_heap *h, struct ph_timer *t);

/* The earliest timer, or NULL. */
static inline struct ph_timer *ph_timer_heap_top(const struct ph_timer_heap *h)
{
	return h->n != 0 ? h->v[0] : NULL;
}

void ph_timer_heap_free(struct ph_timer_heap *h);

#endif /* PH_CORE_TIMER_H */
