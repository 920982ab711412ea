#include "core/loop.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"

#define LOOP_MAX_EVENTS 256

int ph_loop_init(struct ph_loop *l)
{
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (l->epfd == -1)
		return -errno;
	l->now = ph_now_ms();
	l->timers = (struct ph_timer_heap){0};
	ph_list_init(&l->tasks);
	l->stop = false;
	return 0;
}

void ph_loop_free(struct ph_loop *l)
{
	if (l->epfd != -1)
		close(l->epfd);
	l->epfd = -1;
	ph_timer_heap_free(&l->timers);
}

void ph_loop_stop(struct ph_loop *l)
{
	l->stop = true;
}

int ph_io_add(struct ph_loop *l, struct ph_io *io, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.ptr = io};

	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, io->fd, &ev) == -1)
		return -errno;
	io->events = events;
	return 0;
}

int ph_io_mod(struct ph_loop *l, struct ph_io *io, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.ptr = io};

	if (epoll_ctl(l->epfd, EPOLL_CTL_MOD, io->fd, &ev) == -1)
		return -errno;
	io->events = events;
	return 0;
}

void ph_io_close(struct ph_loop *l, struct ph_io *io)
{
	(void)l; /* close() removes the fd from epoll: we never dup a registered fd */
	if (io->fd == -1)
		return;
	close(io->fd);
	io->fd = -1;
	io->events = 0;
}

void ph_io_forget(struct ph_loop *l, struct ph_io *io, int *fd)
{
	*fd = io->fd;
	if (io->fd == -1)
		return;
	if (epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, NULL) == -1)
		ph_warn("epoll_ctl(DEL): %s", strerror(errno));
	io->fd = -1; /* events still queued in this batch are dropped */
	io->events = 0;
}

void ph_task_queue(struct ph_loop *l, struct ph_task *t)
{
	if (!ph_list_empty(&t->node))
		return;
	ph_list_add_tail(&l->tasks, &t->node);
}

int ph_timer_arm(struct ph_loop *l, struct ph_timer *t, uint64_t ms)
{
	return ph_timer_heap_add(&l->timers, t, l->now + ms);
}

void ph_timer_stop(struct ph_loop *l, struct ph_timer *t)
{
	ph_timer_heap_del(&l->timers, t);
}

static int loop_timeout(struct ph_loop *l)
{
	struct ph_timer *t;

	if (!ph_list_empty(&l->tasks) || l->stop)
		return 0;
	t = ph_timer_heap_top(&l->timers);
	if (t == NULL)
		return -1;
	if (t->when <= l->now)
		return 0;
	return t->when - l->now > 60000 ? 60000 : (int)(t->when - l->now);
}

static void loop_run_timers(struct ph_loop *l)
{
	struct ph_timer *due[64];
	unsigned n = 0;

	/*
	 * Take the due timers first, then run them: a callback that re-arms its timer for
	 * "now" waits for the next round instead of starving I/O and tasks.
	 */
	while (n < PH_ARRAY_SIZE(due)) {
		struct ph_timer *t = ph_timer_heap_top(&l->timers);

		if (t == NULL || t->when > l->now)
			break;
		ph_timer_heap_del(&l->timers, t);
		t->idx = PH_TIMER_DUE;
		due[n++] = t;
	}
	for (unsigned i = 0; i < n; i++) {
		/* an earlier callback may have stopped or re-armed this one: then it is not due */
		if (due[i]->idx != PH_TIMER_DUE)
			continue;
		due[i]->idx = PH_TIMER_IDLE;
		due[i]->cb(due[i]);
	}
}

static void loop_run_tasks(struct ph_loop *l)
{
	struct ph_list batch, *n;

	if (ph_list_empty(&l->tasks))
		return;
	/* take this round's tasks; tasks queued while they run wait for the next round */
	batch = l->tasks;
	batch.next->prev = &batch;
	batch.prev->next = &batch;
	ph_list_init(&l->tasks);
	while (!ph_list_empty(&batch)) {
		struct ph_task *t;

		n = batch.next;
		ph_list_del(n);
		t = container_of(n, struct ph_task, node);
		t->fn(t);
	}
}

int ph_loop_run(struct ph_loop *l)
{
	struct epoll_event ev[LOOP_MAX_EVENTS];

	while (!l->stop) {
		int n = epoll_wait(l->epfd, ev, LOOP_MAX_EVENTS, loop_timeout(l));

		if (n == -1) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		l->now = ph_now_ms();
		for (int i = 0; i < n; i++) {
			struct ph_io *io = ev[i].data.ptr;

			if (io->fd == -1)
				continue; /* closed by an earlier event of this batch */
			io->cb(io, ev[i].events);
		}
		loop_run_timers(l);
		loop_run_tasks(l);
	}
	/* deferred frees queued by the last round must not be lost */
	for (unsigned i = 0; i < 16 && !ph_list_empty(&l->tasks); i++)
		loop_run_tasks(l);
	return 0;
}
