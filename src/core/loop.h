/*
 * The event loop: one per worker thread, never shared. Edge-triggered epoll for I/O, a
 * timer heap, and a task list that runs after each batch of events (continuations that ran
 * out of budget, and deferred frees so no stale event reaches freed memory).
 */
#ifndef PH_CORE_LOOP_H
#define PH_CORE_LOOP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>

#include "core/timer.h"
#include "core/util.h"

struct ph_io;
typedef void (*ph_io_fn)(struct ph_io *io, uint32_t events);

/* Embedded in its owner; the owner recovers itself with container_of. */
struct ph_io {
	int fd;          /* -1 when closed: events still queued in this batch are dropped */
	uint32_t events; /* the mask registered with epoll */
	ph_io_fn cb;
};

struct ph_task;
typedef void (*ph_task_fn)(struct ph_task *t);

struct ph_task {
	struct ph_list node; /* self-linked when not queued */
	ph_task_fn fn;
};

struct ph_loop {
	int epfd;
	uint64_t now; /* ms, refreshed once per batch */
	struct ph_timer_heap timers;
	struct ph_list tasks; /* run after the current batch of events */
	bool stop;
};

/* Returns 0 or -errno. */
int ph_loop_init(struct ph_loop *l);
void ph_loop_free(struct ph_loop *l);

/* Runs until ph_loop_stop(). Returns 0 or -errno if epoll itself fails. */
int ph_loop_run(struct ph_loop *l);
void ph_loop_stop(struct ph_loop *l);

static inline void ph_io_init(struct ph_io *io, int fd, ph_io_fn cb)
{
	io->fd = fd;
	io->events = 0;
	io->cb = cb;
}

/* Registers io->fd with the given epoll events. Returns 0 or -errno. */
int ph_io_add(struct ph_loop *l, struct ph_io *io, uint32_t events);
/* Changes the registered events. Returns 0 or -errno. */
int ph_io_mod(struct ph_loop *l, struct ph_io *io, uint32_t events);
/*
 * Takes io's fd out of the loop without closing it, for another io to own: *fd gets it
 * (-1 when io was closed) and io is marked closed.
 */
void ph_io_forget(struct ph_loop *l, struct ph_io *io, int *fd);

/* Closes io->fd (which leaves epoll with it) and marks io closed. Harmless when closed. */
void ph_io_close(struct ph_loop *l, struct ph_io *io);

static inline void ph_task_init(struct ph_task *t, ph_task_fn fn)
{
	ph_list_init(&t->node);
	t->fn = fn;
}

/* Queues t to run after the current batch; a task already queued stays queued once. */
void ph_task_queue(struct ph_loop *l, struct ph_task *t);
/* Unqueues t if it is queued. */
static inline void ph_task_cancel(struct ph_task *t)
{
	ph_list_del(&t->node);
}

/* Arms t to fire after ms milliseconds; re-arming moves it. Returns 0 or -ENOMEM. */
int ph_timer_arm(struct ph_loop *l, struct ph_timer *t, uint64_t ms);
/* Disarms t; harmless when it is not armed. */
void ph_timer_stop(struct ph_loop *l, struct ph_timer *t);

#endif /* PH_CORE_LOOP_H */
