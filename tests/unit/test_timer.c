/*
 * Unit tests for the timer heap (core/timer.h) and for the loop's timers and tasks
 * (core/loop.h). The heap property and every timer's idx are checked after each operation.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/loop.h"
#include "core/timer.h"
#include "core/util.h"

#define NT 500 /* timers in the randomised tests */

static void nop_cb(struct ph_timer *t)
{
	(void)t;
}

/* Every parent is due no later than its children and every timer knows its slot. */
static void check_heap(const struct ph_timer_heap *h)
{
	assert_true(h->n <= h->cap);
	for (uint32_t i = 0; i < h->n; i++) {
		assert_int_equal(h->v[i]->idx, i);
		if (i > 0 && h->v[(i - 1) / 2]->when > h->v[i]->when)
			print_error("heap order broken at %u: parent %llu > child %llu\n", i,
			            (unsigned long long)h->v[(i - 1) / 2]->when,
			            (unsigned long long)h->v[i]->when);
		if (i > 0)
			assert_true(h->v[(i - 1) / 2]->when <= h->v[i]->when);
	}
	if (h->n > 0)
		assert_ptr_equal(ph_timer_heap_top(h), h->v[0]);
	else
		assert_null(ph_timer_heap_top(h));
}

/* The armed timers of t[0..n) are exactly the heap's. */
static void check_members(const struct ph_timer_heap *h, const struct ph_timer *t, size_t n)
{
	uint32_t armed = 0;

	for (size_t i = 0; i < n; i++) {
		if (!ph_timer_armed(&t[i]))
			continue;
		armed++;
		assert_true(t[i].idx < h->n);
		assert_ptr_equal(h->v[t[i].idx], &t[i]);
	}
	assert_int_equal(armed, h->n);
}

/* Pops every timer, checking deadlines come out in order. */
static void drain_in_order(struct ph_timer_heap *h)
{
	uint64_t last = 0;
	struct ph_timer *t;

	while ((t = ph_timer_heap_top(h)) != NULL) {
		assert_true(t->when >= last);
		last = t->when;
		ph_timer_heap_del(h, t);
		assert_false(ph_timer_armed(t));
		check_heap(h);
	}
	assert_int_equal(h->n, 0);
}

static void test_init(void **state)
{
	struct ph_timer t;

	(void)state;
	ph_timer_init(&t, nop_cb);
	assert_false(ph_timer_armed(&t));
	assert_int_equal(t.idx, PH_TIMER_IDLE);
	assert_ptr_equal(t.cb, nop_cb);
}

static void test_random_order(void **state)
{
	static struct ph_timer t[NT];
	struct ph_timer_heap h = {0};
	unsigned seed = 12345;

	(void)state;
	for (int round = 0; round < 5; round++) {
		for (size_t i = 0; i < NT; i++) {
			ph_timer_init(&t[i], nop_cb);
			/* a small range: many equal deadlines */
			assert_int_equal(
				ph_timer_heap_add(&h, &t[i], (uint64_t)(rand_r(&seed) % 97)), 0);
			assert_true(ph_timer_armed(&t[i]));
			check_heap(&h);
		}
		check_members(&h, t, NT);
		drain_in_order(&h);
	}
	ph_timer_heap_free(&h);
	assert_null(h.v);
}

static void test_rearm(void **state)
{
	static struct ph_timer t[NT];
	struct ph_timer_heap h = {0};
	unsigned seed = 777;

	(void)state;
	for (size_t i = 0; i < NT; i++) {
		ph_timer_init(&t[i], nop_cb);
		assert_int_equal(
			ph_timer_heap_add(&h, &t[i], 1000 + (uint64_t)(rand_r(&seed) % 1000)), 0);
	}
	check_heap(&h);
	for (int k = 0; k < 4 * NT; k++) {
		struct ph_timer *x = &t[rand_r(&seed) % NT];
		uint64_t when = x->when;

		switch (k % 4) {
		case 0: /* earlier, possibly to the top */
			when = when > 500 ? when - (uint64_t)(rand_r(&seed) % 500) : 0;
			break;
		case 1: /* later, possibly to the bottom */
			when += (uint64_t)(rand_r(&seed) % 500);
			break;
		case 2: /* the same deadline */
			break;
		default: /* anywhere */
			when = (uint64_t)(rand_r(&seed) % 3000);
			break;
		}
		assert_int_equal(ph_timer_heap_add(&h, x, when), 0);
		assert_int_equal(x->when, when);
		assert_int_equal(h.n, NT); /* re-arming never adds a second entry */
		check_heap(&h);
	}
	check_members(&h, t, NT);

	/* later by one each, so that 0 below is the one earliest deadline */
	for (size_t i = 0; i < NT; i++) {
		assert_int_equal(ph_timer_heap_add(&h, &t[i], t[i].when + 1), 0);
		check_heap(&h);
	}
	/* the earliest moved later leaves the top; a late one moved earliest takes it */
	{
		struct ph_timer *top = ph_timer_heap_top(&h), *last = h.v[h.n - 1];

		assert_int_equal(ph_timer_heap_add(&h, top, 1000000), 0);
		check_heap(&h);
		assert_ptr_not_equal(ph_timer_heap_top(&h), top);
		assert_int_equal(ph_timer_heap_add(&h, last, 0), 0);
		check_heap(&h);
		assert_ptr_equal(ph_timer_heap_top(&h), last);
	}
	drain_in_order(&h);
	ph_timer_heap_free(&h);
}

static void test_delete(void **state)
{
	static struct ph_timer t[NT];
	struct ph_timer_heap h = {0};
	unsigned seed = 4242;
	uint32_t n;

	(void)state;
	for (size_t i = 0; i < NT; i++) {
		ph_timer_init(&t[i], nop_cb);
		assert_int_equal(ph_timer_heap_add(&h, &t[i], (uint64_t)(rand_r(&seed) % 10000)),
		                 0);
	}
	/* the top, the last slot, a middle slot, then random ones */
	ph_timer_heap_del(&h, h.v[0]);
	check_heap(&h);
	ph_timer_heap_del(&h, h.v[h.n - 1]);
	check_heap(&h);
	ph_timer_heap_del(&h, h.v[h.n / 2]);
	check_heap(&h);
	assert_int_equal(h.n, NT - 3);
	for (int k = 0; k < NT; k++) {
		struct ph_timer *x = &t[rand_r(&seed) % NT];
		bool was = ph_timer_armed(x);

		n = h.n;
		ph_timer_heap_del(&h, x); /* idempotent: a disarmed timer is left alone */
		assert_false(ph_timer_armed(x));
		assert_int_equal(h.n, was ? n - 1 : n);
		check_heap(&h);
		check_members(&h, t, NT);
		if (k % 3 == 0) { /* and re-arm some to keep the heap busy */
			assert_int_equal(
				ph_timer_heap_add(&h, x, (uint64_t)(rand_r(&seed) % 10000)), 0);
			check_heap(&h);
		}
	}
	n = h.n;
	ph_timer_heap_del(&h, h.v[0]);
	ph_timer_heap_del(&h, &t[0]);
	ph_timer_heap_del(&h, &t[0]);
	assert_true(h.n == n - 1 || h.n == n - 2);
	check_heap(&h);
	drain_in_order(&h);

	/* one element, deleted twice */
	assert_int_equal(ph_timer_heap_add(&h, &t[0], 5), 0);
	ph_timer_heap_del(&h, &t[0]);
	ph_timer_heap_del(&h, &t[0]);
	assert_int_equal(h.n, 0);
	assert_null(ph_timer_heap_top(&h));
	ph_timer_heap_free(&h);
}

/*
 * A delete whose replacement must move up, not down: in the heap 0 / (100, 1) / (101, 102,
 * 2, 3) deleting 102 moves 3 into a slot under 100, so it must sift up past 100.
 */
static void test_delete_sifts_up(void **state)
{
	static const uint64_t when[] = {0, 100, 1, 101, 102, 2, 3};
	struct ph_timer t[PH_ARRAY_SIZE(when)];
	struct ph_timer_heap h = {0};

	(void)state;
	for (size_t i = 0; i < PH_ARRAY_SIZE(when); i++) {
		ph_timer_init(&t[i], nop_cb);
		assert_int_equal(ph_timer_heap_add(&h, &t[i], when[i]), 0);
		assert_int_equal(t[i].idx, i); /* inserted in heap order: no moves */
	}
	ph_timer_heap_del(&h, &t[4]);
	check_heap(&h);
	assert_int_equal(t[6].idx, 1);
	drain_in_order(&h);
	ph_timer_heap_free(&h);
}

static void test_free_disarms(void **state)
{
	struct ph_timer t[3];
	struct ph_timer_heap h = {0};

	(void)state;
	for (int i = 0; i < 3; i++) {
		ph_timer_init(&t[i], nop_cb);
		assert_int_equal(ph_timer_heap_add(&h, &t[i], (uint64_t)i), 0);
	}
	ph_timer_heap_free(&h);
	for (int i = 0; i < 3; i++)
		assert_false(ph_timer_armed(&t[i]));
	assert_int_equal(h.n, 0);
	ph_timer_heap_free(&h);
}

/* ---- the loop ---- */

struct fixture {
	struct ph_loop loop;
	struct ph_timer safety;
	bool timed_out;
	int order[16]; /* ids in the order callbacks ran */
	int norder;
};

struct ttimer {
	struct ph_timer t;
	struct fixture *f;
	int id;
	int fired;
	bool stop;      /* stop the loop when it fires */
	uint64_t rearm; /* re-arm this many ms later, while rearms_left */
	int rearms_left;
	struct ph_task *queue; /* queue this task when it fires */
	uint64_t fired_at;
};

struct ttask {
	struct ph_task task;
	struct fixture *f;
	int id;
	int ran;
	struct ph_task *queue; /* queue this task when it runs */
	bool stop;
	int seen_fired; /* the watched timer's count when this task ran */
	struct ttimer *watch;
};

static void note(struct fixture *f, int id)
{
	if (f->norder < (int)PH_ARRAY_SIZE(f->order))
		f->order[f->norder++] = id;
}

static void safety_cb(struct ph_timer *t)
{
	struct fixture *f = container_of(t, struct fixture, safety);

	f->timed_out = true;
	ph_loop_stop(&f->loop);
}

static void ttimer_cb(struct ph_timer *t)
{
	struct ttimer *x = container_of(t, struct ttimer, t);

	x->fired++;
	x->fired_at = ph_now_ms();
	note(x->f, x->id);
	if (x->queue != NULL)
		ph_task_queue(&x->f->loop, x->queue);
	if (x->rearms_left > 0) {
		x->rearms_left--;
		assert_int_equal(ph_timer_arm(&x->f->loop, t, x->rearm), 0);
	}
	if (x->stop)
		ph_loop_stop(&x->f->loop);
}

static void ttask_fn(struct ph_task *t)
{
	struct ttask *x = container_of(t, struct ttask, task);

	x->ran++;
	note(x->f, x->id);
	if (x->watch != NULL)
		x->seen_fired = x->watch->fired;
	if (x->queue != NULL)
		ph_task_queue(&x->f->loop, x->queue);
	if (x->stop)
		ph_loop_stop(&x->f->loop);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL || ph_loop_init(&f->loop) < 0)
		return -1;
	ph_timer_init(&f->safety, safety_cb);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	ph_loop_free(&f->loop);
	free(f);
	return 0;
}

static void ttimer_init(struct ttimer *x, struct fixture *f, int id)
{
	memset(x, 0, sizeof(*x));
	ph_timer_init(&x->t, ttimer_cb);
	x->f = f;
	x->id = id;
}

static void ttask_init(struct ttask *x, struct fixture *f, int id)
{
	memset(x, 0, sizeof(*x));
	ph_task_init(&x->task, ttask_fn);
	x->f = f;
	x->id = id;
}

/* Runs the loop until a callback stops it; fails the test if the safety timer fired. */
static void run(struct fixture *f, uint64_t limit_ms)
{
	f->loop.stop = false;
	f->timed_out = false;
	assert_int_equal(ph_timer_arm(&f->loop, &f->safety, limit_ms), 0);
	assert_int_equal(ph_loop_run(&f->loop), 0);
	ph_timer_stop(&f->loop, &f->safety);
	assert_false(f->timed_out);
}

static void test_loop_timers_in_order(void **state)
{
	struct fixture *f = *state;
	struct ttimer a, b, c, d;
	uint64_t start = f->loop.now; /* what ph_timer_arm counts from */

	ttimer_init(&a, f, 1);
	ttimer_init(&b, f, 2);
	ttimer_init(&c, f, 3);
	ttimer_init(&d, f, 4);
	d.stop = true;
	/* armed out of order */
	assert_int_equal(ph_timer_arm(&f->loop, &c.t, 30), 0);
	assert_int_equal(ph_timer_arm(&f->loop, &a.t, 0), 0);
	assert_int_equal(ph_timer_arm(&f->loop, &d.t, 40), 0);
	assert_int_equal(ph_timer_arm(&f->loop, &b.t, 10), 0);
	run(f, 2000);
	assert_int_equal(f->norder, 4);
	for (int i = 0; i < 4; i++)
		assert_int_equal(f->order[i], i + 1);
	assert_int_equal(a.fired + b.fired + c.fired + d.fired, 4);
	assert_true(d.fired_at >= start + 40);
	assert_false(ph_timer_armed(&d.t)); /* disarmed before its callback ran */
}

static void test_loop_timer_stop_and_move(void **state)
{
	struct fixture *f = *state;
	struct ttimer a, b, c;

	ttimer_init(&a, f, 1);
	ttimer_init(&b, f, 2);
	ttimer_init(&c, f, 3);
	c.stop = true;
	assert_int_equal(ph_timer_arm(&f->loop, &a.t, 5), 0);
	assert_int_equal(ph_timer_arm(&f->loop, &b.t, 10), 0);
	assert_int_equal(ph_timer_arm(&f->loop, &c.t, 50), 0);
	ph_timer_stop(&f->loop, &a.t);
	ph_timer_stop(&f->loop, &a.t);                          /* harmless twice */
	assert_int_equal(ph_timer_arm(&f->loop, &b.t, 100), 0); /* moved after c */
	run(f, 2000);
	assert_int_equal(a.fired, 0);
	assert_int_equal(b.fired, 0);
	assert_int_equal(c.fired, 1);
	assert_true(ph_timer_armed(&b.t));
	ph_timer_stop(&f->loop, &b.t);
}

static void test_loop_timer_rearm_in_callback(void **state)
{
	struct fixture *f = *state;
	struct ttimer a, stopper;

	ttimer_init(&a, f, 1);
	ttimer_init(&stopper, f, 2);
	a.rearm = 5;
	a.rearms_left = 3;
	stopper.stop = true;
	assert_int_equal(ph_timer_arm(&f->loop, &a.t, 1), 0);
	assert_int_equal(ph_timer_arm(&f->loop, &stopper.t, 200), 0);
	run(f, 2000);
	assert_int_equal(a.fired, 4);
	assert_false(ph_timer_armed(&a.t));
}

/*
 * loop.c promises that a callback re-arming its timer for "now" waits for the next round:
 * a task queued by the first firing runs (after the timers of that round) before the
 * second firing.
 */
static void test_loop_timer_rearm_now_waits(void **state)
{
	struct fixture *f = *state;
	struct ttimer a;
	struct ttask check;

	ttimer_init(&a, f, 1);
	ttask_init(&check, f, 2);
	a.rearm = 0;
	a.rearms_left = 5;
	a.queue = &check.task;
	check.watch = &a;
	check.stop = true;
	assert_int_equal(ph_timer_arm(&f->loop, &a.t, 0), 0);
	run(f, 2000);
	assert_int_equal(check.ran, 1);
	if (check.seen_fired != 1)
		print_error("a timer re-armed for 0 ms fired %d times in one round\n",
		            check.seen_fired);
	assert_int_equal(check.seen_fired, 1);
	ph_timer_stop(&f->loop, &a.t);
}

static void test_loop_tasks(void **state)
{
	struct fixture *f = *state;
	struct ttimer a;
	struct ttask t1, t2, t3, t4, stop;

	ttimer_init(&a, f, 1);
	ttask_init(&t1, f, 10);
	ttask_init(&t2, f, 20);
	ttask_init(&t3, f, 30);
	ttask_init(&t4, f, 40);
	ttask_init(&stop, f, 99);
	a.queue = &t2.task;
	t1.queue = &t3.task; /* queued while the batch runs: the next round */
	t3.queue = &stop.task;
	stop.stop = true;

	ph_task_queue(&f->loop, &t1.task);
	ph_task_queue(&f->loop, &t1.task); /* queued once */
	ph_task_queue(&f->loop, &t4.task);
	ph_task_cancel(&t4.task); /* cancelled before it ran */
	ph_task_cancel(&t4.task); /* harmless twice */
	assert_int_equal(ph_timer_arm(&f->loop, &a.t, 0), 0);
	run(f, 2000);

	assert_int_equal(t1.ran, 1);
	assert_int_equal(t2.ran, 1);
	assert_int_equal(t3.ran, 1);
	assert_int_equal(t4.ran, 0);
	assert_int_equal(stop.ran, 1);
	/* timers of a round run before its tasks; tasks run in the order queued */
	assert_int_equal(f->norder, 5);
	assert_int_equal(f->order[0], 1);
	assert_int_equal(f->order[1], 10);
	assert_int_equal(f->order[2], 20);
	assert_int_equal(f->order[3], 30);
	assert_int_equal(f->order[4], 99);
	/* a task is self-linked again after it ran, so it can be queued anew */
	assert_true(ph_list_empty(&t1.task.node));
}

struct canceller {
	struct ph_task task;
	struct ph_task *victim;
	struct fixture *f;
};

static void cancel_other_fn(struct ph_task *t)
{
	struct canceller *c = container_of(t, struct canceller, task);

	ph_task_cancel(c->victim);
	ph_loop_stop(&c->f->loop);
}

/* A task cancelled by an earlier task of the same batch does not run. */
static void test_loop_task_cancel_in_batch(void **state)
{
	struct fixture *f = *state;
	struct canceller c;
	struct ttask victim;

	ttask_init(&victim, f, 1);
	ph_task_init(&c.task, cancel_other_fn);
	c.victim = &victim.task;
	c.f = f;
	ph_task_queue(&f->loop, &c.task);
	ph_task_queue(&f->loop, &victim.task);
	run(f, 2000);
	assert_int_equal(victim.ran, 0);
	assert_true(ph_list_empty(&f->loop.tasks));
}

/* Tasks queued by the last round still run when the loop stops (deferred frees). */
static void test_loop_tasks_after_stop(void **state)
{
	struct fixture *f = *state;
	struct ttimer a;
	struct ttask t1, t2;

	ttimer_init(&a, f, 1);
	ttask_init(&t1, f, 2);
	ttask_init(&t2, f, 3);
	a.stop = true;
	a.queue = &t1.task;
	t1.queue = &t2.task;
	assert_int_equal(ph_timer_arm(&f->loop, &a.t, 0), 0);
	run(f, 2000);
	assert_int_equal(t1.ran, 1);
	assert_int_equal(t2.ran, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_init),
		cmocka_unit_test(test_random_order),
		cmocka_unit_test(test_rearm),
		cmocka_unit_test(test_delete),
		cmocka_unit_test(test_delete_sifts_up),
		cmocka_unit_test(test_free_disarms),
		cmocka_unit_test_setup_teardown(test_loop_timers_in_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_loop_timer_stop_and_move, setup, teardown),
		cmocka_unit_test_setup_teardown(test_loop_timer_rearm_in_callback, setup, teardown),
		cmocka_unit_test_setup_teardown(test_loop_timer_rearm_now_waits, setup, teardown),
		cmocka_unit_test_setup_teardown(test_loop_tasks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_loop_task_cancel_in_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_loop_tasks_after_stop, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
