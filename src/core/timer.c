#include "core/timer.h"

#include <errno.h>
#include <stdlib.h>

void ph_timer_init(struct ph_timer *t, ph_timer_fn cb)
{
	t->when = 0;
	t->idx = PH_TIMER_IDLE;
	t->cb = cb;
}

static void heap_set(struct ph_timer_heap *h, uint32_t i, struct ph_timer *t)
{
	h->v[i] = t;
	t->idx = i;
}

static void sift_up(struct ph_timer_heap *h, uint32_t i)
{
	struct ph_timer *t = h->v[i];

	while (i > 0) {
		uint32_t parent = (i - 1) / 2;

		if (h->v[parent]->when <= t->when)
			break;
		heap_set(h, i, h->v[parent]);
		i = parent;
	}
	heap_set(h, i, t);
}

static void sift_down(struct ph_timer_heap *h, uint32_t i)
{
	struct ph_timer *t = h->v[i];

	for (;;) {
		uint32_t c = 2 * i + 1;

		if (c >= h->n)
			break;
		if (c + 1 < h->n && h->v[c + 1]->when < h->v[c]->when)
			c++;
		if (t->when <= h->v[c]->when)
			break;
		heap_set(h, i, h->v[c]);
		i = c;
	}
	heap_set(h, i, t);
}

int ph_timer_heap_add(struct ph_timer_heap *h, struct ph_timer *t, uint64_t when)
{
	if (ph_timer_armed(t)) {
		uint64_t old = t->when;

		t->when = when;
		if (when < old)
			sift_up(h, t->idx);
		else
			sift_down(h, t->idx);
		return 0;
	}
	if (h->n == h->cap) {
		uint32_t cap = h->cap != 0 ? h->cap * 2 : 64;
		struct ph_timer **v = realloc(h->v, cap * sizeof(*v));

		if (v == NULL)
			return -ENOMEM;
		h->v = v;
		h->cap = cap;
	}
	t->when = when;
	heap_set(h, h->n++, t);
	sift_up(h, t->idx);
	return 0;
}

void ph_timer_heap_del(struct ph_timer_heap *h, struct ph_timer *t)
{
	uint32_t i = t->idx;
	struct ph_timer *last;

	if (i >= PH_TIMER_DUE) {
		t->idx = PH_TIMER_IDLE; /* a due timer stopped before it fired does not fire */
		return;
	}
	t->idx = PH_TIMER_IDLE;
	last = h->v[--h->n];
	if (i == h->n)
		return;
	heap_set(h, i, last);
	if (i > 0 && h->v[(i - 1) / 2]->when > last->when)
		sift_up(h, i);
	else
		sift_down(h, i);
}

void ph_timer_heap_free(struct ph_timer_heap *h)
{
	for (uint32_t i = 0; i < h->n; i++)
		h->v[i]->idx = PH_TIMER_IDLE;
	free(h->v);
	h->v = NULL;
	h->n = h->cap = 0;
}
