#include "conn/pump.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "conn/accept.h"
#include "core/log.h"
#include "core/net.h"
#include "core/sys.h"
#include "core/worker.h"

#define PUMP_RD 1u /* the socket may have bytes (or a FIN, or an error) to read */
#define PUMP_WR 2u /* the socket may take bytes */

#define PUMP_EOF  1u /* the source sent its FIN */
#define PUMP_SHUT 2u /* the FIN was passed on: shutdown(SHUT_WR) of the destination */

/* Bytes one direction may read per wake-up before yielding to other connections. */
#define PUMP_BUDGET (1u << 20)
/* The buffer a direction copies through when no fds are left for a pipe. */
#define PUMP_BUF (16u << 10)

static void pump_run(struct ph_pump *p);

static void pump_end(struct ph_pump *p, int err, int side)
{
	if (!p->running)
		return;
	p->running = false;
	ph_task_cancel(&p->more);
	p->done(p, err, side);
}

/* Marks readiness from an epoll event; an error is read from the socket and ends the pump. */
static void pump_on_event(struct ph_pump *p, int side, uint32_t events)
{
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		p->ready[side] |= PUMP_RD;
	if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
		p->ready[side] |= PUMP_WR;
	if (events & EPOLLERR) {
		int err = ph_sock_error(p->io[side].fd);

		if (err < 0) {
			pump_end(p, err == -EPIPE ? -ECONNRESET : err, side);
			return;
		}
	}
	pump_run(p);
}

static void pump_on_io0(struct ph_io *io, uint32_t events)
{
	pump_on_event(container_of(io, struct ph_pump, io[0]), 0, events);
}

static void pump_on_io1(struct ph_io *io, uint32_t events)
{
	pump_on_event(container_of(io, struct ph_pump, io[1]), 1, events);
}

static void pump_on_more(struct ph_task *t)
{
	pump_run(container_of(t, struct ph_pump, more));
}

/* n bytes delivered in direction i, into the worker's counters and the owner's. */
static void pump_count(struct ph_pump *p, int i, uint64_t n, bool copied)
{
	if (i == 0)
		PH_STAT_ADD(p->w, bytes_up, n);
	else
		PH_STAT_ADD(p->w, bytes_down, n);
	if (copied)
		PH_STAT_ADD(p->w, copied, n);
	else
		PH_STAT_ADD(p->w, spliced, n);
	if (p->rs == NULL)
		return;
	if (i == 0)
		PH_STATS_ADD(p->rs, bytes_up, n);
	else
		PH_STATS_ADD(p->rs, bytes_down, n);
	if (copied)
		PH_STATS_ADD(p->rs, copied, n);
	else
		PH_STATS_ADD(p->rs, spliced, n);
}

/*
 * A carrier for bytes in flight in d: a pipe from the pool, its two fds taken from the fd
 * budget; when the budget has none left (or pipe2 meets EMFILE), a small buffer instead, so
 * that a connection admitted is never ended for want of fds - it copies until fds free up.
 * Returns 0, or -errno (no memory either).
 */
static int dir_carrier_get(struct ph_pump *p, struct ph_pump_dir *d)
{
	int err;

	if (ph_fds_take(2)) {
		err = ph_pipe_get(&p->w->pipes, &d->pipe);
		if (err == 0)
			return 0;
		ph_fds_give(2);
		if (!ph_err_is_local(err))
			return err;
	}
	d->buf = malloc(PUMP_BUF);
	if (d->buf == NULL)
		return -ENOMEM;
	d->boff = 0;
	return 0;
}

/* d is empty (or its bytes are to be dropped: discard): its carrier goes back. */
static void dir_carrier_put(struct ph_pump *p, struct ph_pump_dir *d, bool discard)
{
	if (d->pipe != NULL) {
		if (discard) /* a pipe with stale bytes must never be reused */
			ph_pipe_discard(&p->w->pipes, d->pipe);
		else
			ph_pipe_put(&p->w->pipes, d->pipe); /* idle again: the pipe serves others */
		d->pipe = NULL;
		ph_fds_give(2);
	}
	free(d->buf);
	d->buf = NULL;
	d->boff = 0;
	d->inflight = 0;
}

/* Moves bytes in flight from d's carrier to fd. Returns what the syscall did. */
static ssize_t dir_out(struct ph_pump_dir *d, int fd)
{
	if (d->pipe != NULL)
		return ph_sys.splice(d->pipe->fd[0], NULL, fd, NULL, d->inflight,
		                     SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
	return ph_sys.write(fd, d->buf + d->boff, d->inflight);
}

/* Moves up to want bytes from fd into d's carrier, behind what is there. */
static ssize_t dir_in(struct ph_pump_dir *d, int fd, size_t want)
{
	if (d->pipe != NULL)
		return ph_sys.splice(fd, NULL, d->pipe->fd[1], NULL, want,
		                     SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
	if (d->boff != 0) { /* what is left moves to the front, behind it the room */
		memmove(d->buf, d->buf + d->boff, d->inflight);
		d->boff = 0;
	}
	if (want > PUMP_BUF - d->inflight)
		want = PUMP_BUF - d->inflight;
	return ph_sys.read(fd, d->buf + d->inflight, want);
}

/* What d's carrier holds at most (a pipe's capacity, or the buffer). */
static uint32_t dir_room(const struct ph_pump *p, const struct ph_pump_dir *d)
{
	return d->buf != NULL ? PUMP_BUF : p->w->pipes.capacity;
}

/*
 * Moves what it can in direction i: flush the carrier to the destination, refill it from
 * the source, pass a FIN on once it is empty. Stops at EAGAIN or when *budget is spent.
 * Returns 0, or -errno with *eside set to the socket that failed. (Over 80 lines: the
 * three steps share one loop and its readiness bits, the hot path of every connection.)
 */
static int dir_run(struct ph_pump *p, int i, size_t *budget, int *eside)
{
	struct ph_pump_dir *d = &p->dir[i];
	int src = i, dst = 1 - i;
	ssize_t n;
	int err;

	for (;;) {
		bool moved = false;

		if (d->inflight > 0 && (p->ready[dst] & PUMP_WR)) {
			bool copied = d->buf != NULL;

			n = dir_out(d, p->io[dst].fd);
			if (n > 0) {
				d->inflight -= (uint32_t)n;
				d->boff += copied ? (uint32_t)n : 0;
				d->bytes += (uint64_t)n;
				pump_count(p, i, (uint64_t)n, copied);
				moved = true;
			} else if (n == -1 && errno == EAGAIN) {
				p->ready[dst] &= ~PUMP_WR;
			} else if (n == -1 && errno == EINTR) {
				continue;
			} else {
				*eside = dst;
				return n == 0 ? -EIO : (errno == EPIPE ? -ECONNRESET : -errno);
			}
		}
		if (d->inflight == 0 && (d->pipe != NULL || d->buf != NULL))
			dir_carrier_put(p, d, false); /* idle again: the carrier serves others */
		if (!(d->flags & PUMP_EOF) && (p->ready[src] & PUMP_RD) && *budget > 0 &&
		    (d->inflight == 0 || d->inflight < dir_room(p, d))) {
			size_t want;

			if (d->pipe == NULL && d->buf == NULL) {
				err = dir_carrier_get(p, d);
				if (err < 0) {
					*eside = -1;
					return err;
				}
			}
			want = dir_room(p, d) - d->inflight;
			if (want > *budget)
				want = *budget;
			n = dir_in(d, p->io[src].fd, want);
			if (n > 0) {
				d->inflight += (uint32_t)n;
				*budget -= (size_t)n < *budget ? (size_t)n : *budget;
				p->last = p->w->loop.now;
				moved = true;
			} else if (n == 0) {
				d->flags |= PUMP_EOF;
				if (p->first_fin < 0)
					p->first_fin = (int8_t)src;
				moved = true;
			} else if (errno == EAGAIN) {
				/*
				 * With bytes in a pipe, EAGAIN may mean "pipe full" rather than
				 * "socket empty": keep the readiness and retry after a flush. A
				 * read(2) into the buffer says only "socket empty".
				 */
				if (d->inflight == 0 || d->buf != NULL)
					p->ready[src] &= ~PUMP_RD;
			} else if (errno == EINTR) {
				continue;
			} else {
				*eside = src;
				return -errno;
			}
		}
		if ((d->flags & (PUMP_EOF | PUMP_SHUT)) == PUMP_EOF && d->inflight == 0) {
			if (d->pipe != NULL || d->buf != NULL)
				dir_carrier_put(p, d, false);
			d->flags |= PUMP_SHUT;
			/*
			 * When the other direction is done too, both sockets are about to be
			 * closed, and close() sends this FIN: one syscall less per connection.
			 */
			if (!(p->dir[dst].flags & PUMP_SHUT) &&
			    shutdown(p->io[dst].fd, SHUT_WR) == -1 && errno != ENOTCONN) {
				*eside = dst;
				return -errno;
			}
		}
		if (!moved)
			return 0;
	}
}

static bool dir_wants_more(const struct ph_pump *p, int i)
{
	return !(p->dir[i].flags & PUMP_EOF) && (p->ready[i] & PUMP_RD);
}

static void pump_run(struct ph_pump *p)
{
	size_t budget[2] = {PUMP_BUDGET, PUMP_BUDGET};
	int err, side = -1;

	if (!p->running)
		return;
	for (int i = 0; i < 2; i++) {
		err = dir_run(p, i, &budget[i], &side);
		if (err < 0) {
			pump_end(p, err, side);
			return;
		}
	}
	if ((p->dir[0].flags & PUMP_SHUT) && (p->dir[1].flags & PUMP_SHUT)) {
		pump_end(p, 0, -1);
		return;
	}
	if ((budget[0] == 0 && dir_wants_more(p, 0)) || (budget[1] == 0 && dir_wants_more(p, 1)))
		ph_task_queue(&p->w->loop, &p->more); /* yield; go on after other connections */
}

void ph_pump_init(struct ph_pump *p, struct ph_worker *w, int a, int b, ph_pump_done_fn done)
{
	ph_io_init(&p->io[0], a, pump_on_io0);
	ph_io_init(&p->io[1], b, pump_on_io1);
	for (int i = 0; i < 2; i++) {
		p->dir[i].pipe = NULL;
		p->dir[i].buf = NULL;
		p->dir[i].boff = 0;
		p->dir[i].inflight = 0;
		p->dir[i].flags = 0;
		p->dir[i].bytes = 0;
		p->ready[i] = 0;
	}
	p->running = false;
	ph_task_init(&p->more, pump_on_more);
	p->w = w;
	p->last = w->loop.now;
	p->done = done;
	p->rs = NULL;
	p->first_fin = -1;
}

void ph_pump_down_only(struct ph_pump *p)
{
	p->dir[0].flags = PUMP_EOF | PUMP_SHUT;
}

/* io[0] into epoll for the pump; the owner may have watched it already (to read a PROXY
 * header): then MOD, which also reports what is pending at once. */
static int pump_watch0(struct ph_pump *p)
{
	p->io[0].cb = pump_on_io0;
	if (p->io[0].events != 0)
		return ph_io_mod(&p->w->loop, &p->io[0], PH_PUMP_EVENTS);
	return ph_io_add(&p->w->loop, &p->io[0], PH_PUMP_EVENTS);
}

int ph_pump_start(struct ph_pump *p)
{
	struct ph_loop *l = &p->w->loop;
	int err;

	p->io[1].cb = pump_on_io1;
	err = ph_io_add(l, &p->io[1], PH_PUMP_EVENTS);
	if (err < 0)
		return err;
	err = pump_watch0(p);
	if (err < 0)
		return err;
	p->running = true;
	p->last = l->now;
	/* epoll reports what is already pending on add; nothing to try before that */
	return 0;
}

int ph_pump_start_registered(struct ph_pump *p, uint32_t events)
{
	struct ph_loop *l = &p->w->loop;
	int err;

	p->io[1].cb = pump_on_io1;
	err = pump_watch0(p);
	if (err < 0)
		return err;
	p->running = true;
	p->last = l->now;
	/* the edge that reported the connect is used up: replay it to the pump */
	pump_on_event(p, 1, events);
	return 0;
}

void ph_pump_close(struct ph_pump *p, bool rst)
{
	p->running = false;
	ph_task_cancel(&p->more);
	for (int i = 0; i < 2; i++) {
		struct ph_pump_dir *d = &p->dir[i];

		if (d->pipe != NULL || d->buf != NULL)
			dir_carrier_put(p, d, d->inflight != 0);
		if (p->io[i].fd != -1) {
			if (rst)
				ph_sock_set_rst(p->io[i].fd);
			ph_io_close(&p->w->loop, &p->io[i]);
		}
	}
}
