/*
 * Unit tests for the TCP pump (conn/pump.h), run for real: a worker's loop (no thread),
 * two TCP connections over 127.0.0.1 and a pump between them.
 *
 *    peer a  ----TCP----  io[0] [ pump ] io[1]  ----TCP----  peer b
 *   (connects)          (accepted)    (connected)          (accepted)
 *
 * The peers are test code on the same loop: they write their tx buffer as the socket takes
 * it (then a FIN when asked) and read into their rx buffer. Each test runs the loop until a
 * condition holds, bounded by a safety timer. Faults are injected through ph_sys.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "conn/accept.h"
#include "conn/pump.h"
#include "core/loop.h"
#include "core/pipepool.h"
#include "core/sys.h"
#include "core/util.h"
#include "core/worker.h"

#define MiB      (1024u * 1024u)
#define RUN_MS   5000 /* safety limit for one run of the loop */
#define PEER_EVS (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)

struct ptest;

struct peer {
	struct ph_io io;
	struct ptest *t;
	const char *name;
	uint8_t *tx; /* owned */
	size_t txlen, txoff;
	bool shut_after; /* shutdown(SHUT_WR) once tx is all written */
	bool shut_done;
	uint8_t *rx; /* owned */
	size_t rxcap, rxlen;
	bool eof;
	bool overflow; /* more bytes came than rxcap */
	int err;       /* -errno of a failed read or write */
	bool paused;   /* leave received bytes in the socket */
};

struct ptest {
	struct ph_worker w;
	struct ph_pump p;
	struct peer a, b;
	struct ph_timer safety;
	bool timed_out;
	bool (*until)(struct ptest *t);
	int done_calls, done_err, done_side;
	bool close_in_done; /* ph_pump_close(p, rst = true) from the done callback */
	int fds_before;
	struct ph_timer tick; /* run_for() */
	bool ticked;
	bool started; /* test_start_registered(): the pump was started */
	int start_err;
	/* test_paused_reader(): the state when b starts reading again */
	struct ph_timer resume;
	size_t a_txoff_at_resume;
	bool pipe_held_at_resume;
	uint32_t inflight_at_resume;
};

/* ---- fault injection through ph_sys ---- */

#define INJ_EINTR     1u /* every other splice fails with EINTR */
#define INJ_SHORT     2u /* a splice moves at most cap bytes */
#define INJ_PIPE_FULL 4u /* every other splice into a pipe that holds bytes: EAGAIN */
#define INJ_RANDOM    8u /* the above at random (seeded) rather than every other call */

static struct {
	unsigned mode;
	size_t cap;
	unsigned seed;
	unsigned calls, eintr, eagain, shortened;
	int pipe2_err; /* pipe2 fails with this errno when non-zero */
	unsigned pipe2_calls;
} inj;

static struct ph_sys_ops sys_real;

static bool coin(unsigned *tick)
{
	if (inj.mode & INJ_RANDOM)
		return rand_r(&inj.seed) % 3 == 0;
	return (++*tick & 1) != 0;
}

static bool holds_bytes(int fd)
{
	struct stat st;
	int n = 0;

	return fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode) && ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

static ssize_t splice_inject(int fd_in, loff_t *off_in, int fd_out, loff_t *off_out, size_t len,
                             unsigned int flags)
{
	static unsigned tick_eintr, tick_full;

	inj.calls++;
	if ((inj.mode & INJ_EINTR) && coin(&tick_eintr)) {
		inj.eintr++;
		errno = EINTR;
		return -1;
	}
	/* "pipe full" is the one EAGAIN the pump must not take as "socket empty" */
	if ((inj.mode & INJ_PIPE_FULL) && holds_bytes(fd_out) && coin(&tick_full)) {
		inj.eagain++;
		errno = EAGAIN;
		return -1;
	}
	if ((inj.mode & INJ_SHORT) && len > inj.cap) {
		inj.shortened++;
		len = (inj.mode & INJ_RANDOM) ? 1 + (size_t)rand_r(&inj.seed) % inj.cap : inj.cap;
	}
	return sys_real.splice(fd_in, off_in, fd_out, off_out, len, flags);
}

static int pipe2_inject(int fds[2], int flags)
{
	inj.pipe2_calls++;
	if (inj.pipe2_err != 0) {
		errno = inj.pipe2_err;
		return -1;
	}
	return sys_real.pipe2(fds, flags);
}

static void inject(unsigned mode, size_t cap)
{
	inj.mode = mode;
	inj.cap = cap;
	ph_sys.splice = splice_inject;
	ph_sys.pipe2 = pipe2_inject;
}

/* ---- helpers ---- */

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)) != NULL)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static uint8_t *pattern(size_t n, uint32_t seed)
{
	uint8_t *b = malloc(n != 0 ? n : 1);
	uint32_t x = seed * 2654435761u + 1;

	assert_non_null(b);
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		b[i] = (uint8_t)x;
	}
	return b;
}

/* Connects a TCP pair over 127.0.0.1: *c the connecting end, *s the accepted one. */
static void tcp_pair(int *c, int *s, int bufsize)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sin);
	int l, fl;

	l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(l >= 0);
	*c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(*c >= 0);
	if (bufsize > 0) {
		/* small buffers make the pump meet full sockets (real EAGAIN) quickly */
		assert_int_equal(setsockopt(l, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof(int)), 0);
		assert_int_equal(setsockopt(l, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof(int)), 0);
		assert_int_equal(setsockopt(*c, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof(int)), 0);
		assert_int_equal(setsockopt(*c, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof(int)), 0);
	}
	assert_int_equal(bind(l, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(l, 1), 0);
	assert_int_equal(getsockname(l, (struct sockaddr *)&sin, &len), 0);
	assert_int_equal(connect(*c, (struct sockaddr *)&sin, sizeof(sin)), 0);
	*s = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	assert_true(*s >= 0);
	fl = fcntl(*c, F_GETFL);
	assert_int_equal(fcntl(*c, F_SETFL, fl | O_NONBLOCK), 0);
	close(l);
}

static void resume_cb(struct ph_timer *tm);
static void tick_cb(struct ph_timer *tm);

static void check(struct ptest *t)
{
	if (t->until != NULL && t->until(t))
		ph_loop_stop(&t->w.loop);
}

static void peer_write(struct peer *p)
{
	while (p->io.fd != -1 && p->txoff < p->txlen && p->err == 0) {
		ssize_t n = write(p->io.fd, p->tx + p->txoff, p->txlen - p->txoff);

		if (n > 0)
			p->txoff += (size_t)n;
		else if (n == -1 && errno == EAGAIN)
			return;
		else if (n == -1 && errno != EINTR)
			p->err = -errno;
	}
	if (p->io.fd != -1 && p->txoff == p->txlen && p->shut_after && !p->shut_done) {
		assert_int_equal(shutdown(p->io.fd, SHUT_WR), 0);
		p->shut_done = true;
	}
}

static void peer_read(struct peer *p)
{
	static uint8_t scratch[65536];

	while (p->io.fd != -1 && !p->paused && !p->eof && p->err == 0) {
		size_t room = p->rxcap - p->rxlen;
		uint8_t *to = room > 0 ? p->rx + p->rxlen : scratch;
		ssize_t n = read(p->io.fd, to, room > 0 ? room : sizeof(scratch));

		if (n > 0 && room > 0)
			p->rxlen += (size_t)n;
		else if (n > 0)
			p->overflow = true;
		else if (n == 0)
			p->eof = true;
		else if (errno == EAGAIN)
			return;
		else if (errno != EINTR)
			p->err = -errno;
	}
}

static void peer_on_io(struct ph_io *io, uint32_t events)
{
	struct peer *p = container_of(io, struct peer, io);

	(void)events;
	peer_write(p);
	peer_read(p);
	check(p->t);
}

static void peer_init(struct peer *p, struct ptest *t, const char *name, int fd)
{
	memset(p, 0, sizeof(*p));
	p->t = t;
	p->name = name;
	ph_io_init(&p->io, fd, peer_on_io);
	assert_int_equal(ph_io_add(&t->w.loop, &p->io, PEER_EVS), 0);
}

/* Gives p n bytes to send (made from seed) and room for rxcap bytes to receive. */
static void peer_plan(struct peer *p, size_t n, uint32_t seed, size_t rxcap)
{
	free(p->tx);
	free(p->rx);
	p->tx = pattern(n, seed);
	p->txlen = n;
	p->txoff = 0;
	p->rx = malloc(rxcap != 0 ? rxcap : 1);
	assert_non_null(p->rx);
	p->rxcap = rxcap;
	p->rxlen = 0;
}

/* Resets p's socket (SO_LINGER 0 close). */
static void peer_reset(struct peer *p)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};

	assert_int_equal(setsockopt(p->io.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
	ph_io_close(&p->t->w.loop, &p->io);
}

static void on_done(struct ph_pump *p, int err, int side)
{
	struct ptest *t = container_of(p, struct ptest, p);

	t->done_calls++;
	t->done_err = err;
	t->done_side = side;
	if (t->close_in_done)
		ph_pump_close(p, true);
	else if (err == 0)
		ph_pump_close(p, false); /* as owners do: this close() sends the last FIN */
	check(t);
}

static void safety_cb(struct ph_timer *tm)
{
	struct ptest *t = container_of(tm, struct ptest, safety);

	t->timed_out = true;
	ph_loop_stop(&t->w.loop);
}

static void dump(const struct ptest *t)
{
	const struct peer *ps[2] = {&t->a, &t->b};

	for (int i = 0; i < 2; i++)
		print_error("peer %s: tx %zu/%zu shut %d, rx %zu/%zu eof %d err %d\n", ps[i]->name,
		            ps[i]->txoff, ps[i]->txlen, ps[i]->shut_done, ps[i]->rxlen,
		            ps[i]->rxcap, ps[i]->eof, ps[i]->err);
	for (int i = 0; i < 2; i++)
		print_error("pump dir %d: pipe %p inflight %u flags %u bytes %llu ready %u\n", i,
		            (void *)t->p.dir[i].pipe, t->p.dir[i].inflight, t->p.dir[i].flags,
		            (unsigned long long)t->p.dir[i].bytes, t->p.ready[i]);
	print_error("done %d (err %d side %d), running %d\n", t->done_calls, t->done_err,
	            t->done_side, t->p.running);
}

/* Runs the loop until until(t) holds; fails the test if the safety timer fires first. */
static void run(struct ptest *t, bool (*until)(struct ptest *t))
{
	t->until = until;
	if (until(t))
		return;
	t->w.loop.stop = false;
	t->timed_out = false;
	t->w.loop.now = ph_now_ms();
	assert_int_equal(ph_timer_arm(&t->w.loop, &t->safety, RUN_MS), 0);
	assert_int_equal(ph_loop_run(&t->w.loop), 0);
	ph_timer_stop(&t->w.loop, &t->safety);
	t->until = NULL;
	if (t->timed_out)
		dump(t);
	assert_false(t->timed_out);
}

/* Sets up the worker, both connections and a pump not started yet; bufsize 0: the kernel's. */
static struct ptest *ptest_make(int bufsize)
{
	struct ph_worker_opts o = {.pipe_size = 0, .spare_pipes = 4};
	struct ptest *t = calloc(1, sizeof(*t));
	int a_peer, a_pump, b_pump, b_peer;

	assert_non_null(t);
	ph_sys_reset();
	sys_real = ph_sys;
	memset(&inj, 0, sizeof(inj));
	inj.seed = 20240601;
	t->fds_before = count_fds();
	assert_int_equal(ph_worker_init(&t->w, 0, &o, -1), 0);
	ph_timer_init(&t->safety, safety_cb);
	ph_timer_init(&t->resume, resume_cb);
	ph_timer_init(&t->tick, tick_cb);
	tcp_pair(&a_peer, &a_pump, bufsize);
	tcp_pair(&b_pump, &b_peer, bufsize);
	peer_init(&t->a, t, "a", a_peer);
	peer_init(&t->b, t, "b", b_peer);
	ph_pump_init(&t->p, &t->w, a_pump, b_pump, on_done);
	assert_false(t->p.running);
	return t;
}

/* The same with the pump started. */
static struct ptest *ptest_new(int bufsize)
{
	struct ptest *t = ptest_make(bufsize);

	assert_int_equal(ph_pump_start(&t->p), 0);
	assert_true(t->p.running);
	return t;
}

static void ptest_free(struct ptest *t)
{
	ph_sys_reset();
	ph_pump_close(&t->p, false);
	ph_io_close(&t->w.loop, &t->a.io);
	ph_io_close(&t->w.loop, &t->b.io);
	ph_timer_stop(&t->w.loop, &t->resume);
	ph_timer_stop(&t->w.loop, &t->tick);
	ph_worker_destroy(&t->w);
	free(t->a.tx);
	free(t->a.rx);
	free(t->b.tx);
	free(t->b.rx);
	/* every socket and pipe is closed again */
	assert_int_equal(count_fds(), t->fds_before);
	free(t);
}

static int teardown(void **state)
{
	if (*state != NULL)
		ptest_free(*state);
	*state = NULL;
	return 0;
}

/* Both peers got every byte the other sent, in order. */
static void check_intact(const struct ptest *t)
{
	assert_false(t->a.overflow);
	assert_false(t->b.overflow);
	assert_int_equal(t->a.err, 0);
	assert_int_equal(t->b.err, 0);
	assert_int_equal(t->b.rxlen, t->a.txlen);
	assert_int_equal(t->a.rxlen, t->b.txlen);
	assert_memory_equal(t->b.rx, t->a.tx, t->a.txlen);
	assert_memory_equal(t->a.rx, t->b.tx, t->b.txlen);
}

/* An idle pump holds no pipe, and every pipe made is back in the pool or closed. */
static void check_idle(const struct ptest *t)
{
	const struct ph_pipepool *pp = &t->w.pipes;

	for (int i = 0; i < 2; i++) {
		assert_null(t->p.dir[i].pipe);
		assert_int_equal(t->p.dir[i].inflight, 0);
	}
	assert_true(pp->nfree <= pp->max_free);
	assert_int_equal(pp->nfree, pp->made < pp->max_free ? pp->made : pp->max_free);
}

static bool all_received(struct ptest *t)
{
	return t->b.rxlen >= t->a.txlen && t->a.rxlen >= t->b.txlen;
}

static bool all_received_and_done(struct ptest *t)
{
	return all_received(t) && t->a.eof && t->b.eof && t->done_calls > 0;
}

/* ---- the tests ---- */

static void test_both_ways(void **state)
{
	struct ptest *t = *state = ptest_new(0);

	peer_plan(&t->a, 4 * MiB + 17, 1, 3 * MiB + 5);
	peer_plan(&t->b, 3 * MiB + 5, 2, 4 * MiB + 17);
	run(t, all_received);
	check_intact(t);
	assert_int_equal(t->done_calls, 0);
	assert_true(t->p.running);
	assert_int_equal(t->p.dir[0].bytes, t->a.txlen);
	assert_int_equal(t->p.dir[1].bytes, t->b.txlen);
	assert_int_equal(PH_STAT_GET(&t->w, bytes_up), t->a.txlen);
	assert_int_equal(PH_STAT_GET(&t->w, bytes_down), t->b.txlen);
	assert_int_equal(PH_STAT_GET(&t->w, spliced), t->a.txlen + t->b.txlen);
	assert_true(t->w.pipes.made >= 1);
	check_idle(t);

	/* and again after the idle period: a pipe is taken anew */
	peer_plan(&t->a, 100000, 3, 200000);
	peer_plan(&t->b, 200000, 4, 100000);
	peer_write(&t->a);
	peer_write(&t->b);
	run(t, all_received);
	check_intact(t);
	check_idle(t);

	ph_pump_close(&t->p, false);
	assert_false(t->p.running);
	ph_pump_close(&t->p, false); /* idempotent */
	assert_int_equal(t->p.io[0].fd, -1);
	assert_int_equal(t->p.io[1].fd, -1);
	assert_int_equal(t->done_calls, 0); /* close does not call done */
}

static bool b_eof_a_got_all(struct ptest *t)
{
	return t->b.eof && all_received(t);
}

static void test_half_close(void **state)
{
	struct ptest *t = *state = ptest_new(0);
	uint8_t *first;
	size_t nfirst;

	/* a sends and ends; b keeps sending */
	peer_plan(&t->a, 256 * 1024, 5, 2 * MiB + 1 * MiB);
	peer_plan(&t->b, 2 * MiB, 6, 256 * 1024);
	t->a.shut_after = true;
	run(t, b_eof_a_got_all);
	assert_true(t->b.eof);
	assert_false(t->a.eof);
	assert_int_equal(t->b.rxlen, t->a.txlen);
	assert_memory_equal(t->b.rx, t->a.tx, t->a.txlen);
	assert_memory_equal(t->a.rx, t->b.tx, t->b.txlen);
	assert_int_equal(t->done_calls, 0);
	assert_true(t->p.running);

	/* the other direction still flows after the FIN, then ends too */
	first = t->b.tx;
	nfirst = t->b.txlen;
	t->b.tx = pattern(1 * MiB, 7);
	t->b.txlen = 1 * MiB;
	t->b.txoff = 0;
	t->b.shut_after = true;
	peer_write(&t->b);
	run(t, all_received_and_done);
	assert_int_equal(t->a.rxlen, nfirst + t->b.txlen);
	assert_memory_equal(t->a.rx, first, nfirst);
	assert_memory_equal(t->a.rx + nfirst, t->b.tx, t->b.txlen);
	assert_int_equal(t->done_calls, 1);
	assert_int_equal(t->done_err, 0);
	assert_int_equal(t->done_side, -1);
	assert_false(t->p.running);
	check_idle(t);
	free(first);
}

static void test_both_fins(void **state)
{
	struct ptest *t = *state = ptest_new(0);

	peer_plan(&t->a, 70000, 8, 90000);
	peer_plan(&t->b, 90000, 9, 70000);
	t->a.shut_after = true;
	t->b.shut_after = true;
	run(t, all_received_and_done);
	check_intact(t);
	assert_int_equal(t->done_calls, 1);
	assert_int_equal(t->done_err, 0);
	assert_int_equal(t->done_side, -1);
	check_idle(t);
}

static void test_fins_no_data(void **state)
{
	struct ptest *t = *state = ptest_new(0);

	peer_plan(&t->a, 0, 0, 0);
	peer_plan(&t->b, 0, 0, 0);
	t->a.shut_after = true;
	t->b.shut_after = true;
	run(t, all_received_and_done);
	assert_int_equal(t->done_err, 0);
	assert_int_equal(t->done_side, -1);
	assert_false(t->a.overflow || t->b.overflow);
	check_idle(t);
}

static bool done_called(struct ptest *t)
{
	return t->done_calls > 0;
}

static bool a_ended(struct ptest *t)
{
	return t->a.err != 0 || t->a.eof;
}

static bool b_ended(struct ptest *t)
{
	return t->b.err != 0 || t->b.eof;
}

/* A reset from peer `from` ends the pump with -ECONNRESET; the owner passes it on. */
static void reset_from(struct ptest *t, int side)
{
	struct peer *from = side == 0 ? &t->a : &t->b, *to = side == 0 ? &t->b : &t->a;

	peer_plan(&t->a, 65536, 10, 65536);
	peer_plan(&t->b, 65536, 11, 65536);
	run(t, all_received);
	check_intact(t);

	peer_reset(from);
	run(t, done_called);
	assert_int_equal(t->done_calls, 1);
	assert_int_equal(t->done_err, -ECONNRESET);
	assert_int_equal(t->done_side, side);
	assert_false(t->p.running);

	ph_pump_close(&t->p, true);
	run(t, side == 0 ? b_ended : a_ended);
	assert_false(to->eof);
	assert_int_equal(to->err, -ECONNRESET);
	assert_int_equal(t->done_calls, 1);
	check_idle(t);
}

static void test_reset_a(void **state)
{
	struct ptest *t = *state = ptest_new(0);

	reset_from(t, 0);
}

static void test_reset_b(void **state)
{
	struct ptest *t = *state = ptest_new(0);

	reset_from(t, 1);
}

static void resume_cb(struct ph_timer *tm)
{
	struct ptest *t = container_of(tm, struct ptest, resume);

	t->a_txoff_at_resume = t->a.txoff;
	t->pipe_held_at_resume = t->p.dir[0].pipe != NULL;
	t->inflight_at_resume = t->p.dir[0].inflight;
	t->b.paused = false;
	peer_read(&t->b);
	check(t);
}

/* b stops reading: the pump must stop reading a (back-pressure), then catch up. */
static void test_paused_reader(void **state)
{
	struct ptest *t = *state = ptest_new(16384);

	peer_plan(&t->a, 4 * MiB, 12, 0);
	peer_plan(&t->b, 0, 0, 4 * MiB);
	t->b.paused = true;
	t->w.loop.now = ph_now_ms();
	assert_int_equal(ph_timer_arm(&t->w.loop, &t->resume, 300), 0);
	run(t, all_received);
	check_intact(t);
	/* a was held back: what was in flight fits in socket buffers and one pipe */
	assert_true(t->a_txoff_at_resume < t->a.txlen);
	assert_true(t->pipe_held_at_resume);
	assert_true(t->inflight_at_resume > 0);
	assert_true(t->inflight_at_resume <= t->w.pipes.capacity);
	check_idle(t);
}

static void tick_cb(struct ph_timer *tm)
{
	struct ptest *t = container_of(tm, struct ptest, tick);

	t->ticked = true;
	check(t);
}

static bool ticked(struct ptest *t)
{
	return t->ticked;
}

/* Runs the loop for ms milliseconds. */
static void run_for(struct ptest *t, uint64_t ms)
{
	t->ticked = false;
	t->w.loop.now = ph_now_ms();
	assert_int_equal(ph_timer_arm(&t->w.loop, &t->tick, ms), 0);
	run(t, ticked);
}

/* b resets while bytes for it are in flight: the pipe and its bytes are dropped. */
static void test_reset_with_bytes_in_flight(void **state)
{
	struct ptest *t = *state = ptest_new(16384);

	peer_plan(&t->a, 4 * MiB, 13, 0);
	peer_plan(&t->b, 0, 0, 4 * MiB);
	t->b.paused = true;
	run_for(t, 200);
	assert_true(t->a.txoff < t->a.txlen);
	assert_non_null(t->p.dir[0].pipe);
	assert_true(t->p.dir[0].inflight > 0);
	assert_int_equal(t->done_calls, 0);

	peer_reset(&t->b);
	run(t, done_called);
	assert_int_equal(t->done_err, -ECONNRESET);
	assert_int_equal(t->done_side, 1);
	ph_pump_close(&t->p, true);
	assert_null(t->p.dir[0].pipe); /* discarded: ptest_free counts the fds */
	assert_int_equal(t->p.dir[0].inflight, 0);
	/* a pipe with stale bytes must never go back to the pool */
	for (struct ph_pipe *pi = t->w.pipes.free; pi != NULL; pi = pi->next) {
		int n = -1;

		assert_int_equal(ioctl(pi->fd[0], FIONREAD, &n), 0);
		assert_int_equal(n, 0);
	}
	run(t, a_ended);
	assert_true(t->a.err == -ECONNRESET || t->a.err == -EPIPE);
}

/* The owner closes the pump with resets from its done callback, as forward does. */
static void test_close_in_done(void **state)
{
	struct ptest *t = *state = ptest_new(0);

	peer_plan(&t->a, 1000, 14, 0);
	peer_plan(&t->b, 0, 0, 1000);
	t->close_in_done = true;
	run(t, all_received);
	peer_reset(&t->b);
	run(t, a_ended);
	assert_int_equal(t->done_calls, 1);
	assert_int_equal(t->done_err, -ECONNRESET);
	assert_int_equal(t->a.err, -ECONNRESET);
	assert_int_equal(t->p.io[0].fd, -1);
	assert_int_equal(t->p.io[1].fd, -1);
}

/* Both ways with FINs under the injected faults of mode; every byte must arrive. */
static void faulty_transfer(struct ptest *t, unsigned mode, size_t cap, size_t n)
{
	peer_plan(&t->a, n, 20, n / 2 + 3);
	peer_plan(&t->b, n / 2 + 3, 21, n);
	t->a.shut_after = true;
	t->b.shut_after = true;
	inject(mode, cap);
	run(t, all_received_and_done);
	ph_sys_reset();
	check_intact(t);
	assert_int_equal(t->done_calls, 1);
	assert_int_equal(t->done_err, 0);
	assert_int_equal(t->done_side, -1);
	check_idle(t);
}

static void test_eintr(void **state)
{
	struct ptest *t = *state = ptest_new(0);

	faulty_transfer(t, INJ_EINTR, 0, 2 * MiB);
	assert_true(inj.eintr > 10);
}

static void test_short_transfers(void **state)
{
	struct ptest *t = *state = ptest_new(0);

	faulty_transfer(t, INJ_SHORT, 997, 512 * 1024);
	assert_true(inj.shortened > 100);
}

static void test_pipe_full(void **state)
{
	struct ptest *t = *state = ptest_new(16384);

	/* short reads keep bytes in the pipe, so the pipe-full case comes up often */
	faulty_transfer(t, INJ_PIPE_FULL | INJ_SHORT, 4096, 2 * MiB);
	assert_true(inj.eagain > 10);
}

static void test_all_faults_random(void **state)
{
	struct ptest *t = *state = ptest_new(16384);

	faulty_transfer(t, INJ_EINTR | INJ_SHORT | INJ_PIPE_FULL | INJ_RANDOM, 3000, 1 * MiB);
	assert_true(inj.eintr > 10);
	assert_true(inj.eagain > 10);
	assert_true(inj.shortened > 10);
}

/*
 * No pipe to be had (pipe2 says EMFILE): the bytes are copied through a small buffer
 * instead, both ways, intact, and the connection is not ended for our shortage.
 */
static void test_no_pipe_copies(void **state)
{
	struct ptest *t = *state = ptest_new(0);

	ph_pipepool_free(&t->w.pipes); /* no spare pipe either */
	peer_plan(&t->a, 1 * MiB + 22, 22, 300000);
	peer_plan(&t->b, 300000, 21, 1 * MiB + 22);
	inject(0, 0);
	inj.pipe2_err = EMFILE;
	run(t, all_received);
	ph_sys_reset();
	check_intact(t);
	assert_true(inj.pipe2_calls >= 1);
	assert_int_equal(t->done_calls, 0);
	assert_int_equal(t->w.stats.copied, 1 * MiB + 22 + 300000);
	assert_int_equal(t->w.stats.spliced, 0);
	for (int i = 0; i < 2; i++)
		assert_null(t->p.dir[i].buf); /* an idle pump holds no buffer either */
	assert_int_equal(ph_fds_used(), 0);
}

/* The fd budget has no two fds for a pipe: copied without even asking for one. */
static void test_spent_budget_copies(void **state)
{
	struct ptest *t = *state = ptest_new(0);

	ph_fds_set_limit(1);
	peer_plan(&t->a, 200000, 31, 100000);
	peer_plan(&t->b, 100000, 32, 200000);
	inject(0, 0);
	run(t, all_received);
	ph_sys_reset();
	ph_fds_set_limit(0);
	check_intact(t);
	assert_int_equal(inj.pipe2_calls, 0);
	assert_int_equal(t->w.stats.copied, 300000);
	check_idle(t);
}

/* With room in the budget, a pipe's two fds are taken while it carries bytes, then given back. */
static void test_pipe_takes_from_the_budget(void **state)
{
	struct ptest *t = *state = ptest_new(0);

	ph_fds_set_limit(1000);
	peer_plan(&t->a, 2 * MiB, 33, 0);
	peer_plan(&t->b, 0, 0, 2 * MiB);
	inject(0, 0);
	run(t, all_received);
	ph_sys_reset();
	assert_int_equal(t->w.stats.spliced, 2 * MiB);
	assert_int_equal(ph_fds_used(), 0); /* idle: every pipe's fds given back */
	ph_fds_set_limit(0);
	check_idle(t);
}

static void b_connected(struct ph_io *io, uint32_t events)
{
	struct ptest *t = container_of(io, struct ptest, p.io[1]);

	t->start_err = ph_pump_start_registered(&t->p, events);
	t->started = true;
}

static bool started(struct ptest *t)
{
	return t->started;
}

/*
 * forward registers the connecting socket with PH_PUMP_EVENTS itself and starts the pump
 * from the event that reports the connect, handing that event over. b sends first, so the
 * handed-over event is the only news of b's bytes.
 */
static void test_start_registered(void **state)
{
	struct ptest *t = *state = ptest_make(0);

	peer_plan(&t->a, 300000, 23, 200000);
	peer_plan(&t->b, 200000, 24, 300000);
	t->a.shut_after = true;
	t->b.shut_after = true;
	t->p.io[1].cb = b_connected;
	run_for(t, 50); /* b's bytes and FIN are waiting at io[1] */
	assert_false(t->started);
	assert_int_equal(ph_io_add(&t->w.loop, &t->p.io[1], PH_PUMP_EVENTS), 0);
	run(t, started);
	assert_int_equal(t->start_err, 0);
	run(t, all_received_and_done);
	check_intact(t);
	assert_int_equal(t->done_err, 0);
	assert_int_equal(t->done_side, -1);
}

/* A start that fails leaves the pump stopped, never calls done, and close still works. */
static void test_start_fails(void **state)
{
	struct ptest *t = *state = ptest_make(0);
	int fd0;

	/* io[1] is registered already: the add fails */
	assert_int_equal(ph_io_add(&t->w.loop, &t->p.io[1], EPOLLIN), 0);
	assert_int_equal(ph_pump_start(&t->p), -EEXIST);
	assert_false(t->p.running);
	/* io[0] is something epoll refuses (a device): the add fails */
	fd0 = t->p.io[0].fd;
	t->p.io[0].fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_true(t->p.io[0].fd >= 0);
	assert_int_equal(ph_pump_start_registered(&t->p, EPOLLOUT), -EPERM);
	assert_false(t->p.running);
	close(t->p.io[0].fd);
	t->p.io[0].fd = fd0;
	ph_pump_close(&t->p, false);
	run_for(t, 20);
	assert_int_equal(t->done_calls, 0);
	run(t, a_ended);
	assert_true(t->a.eof); /* closed with a FIN */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_both_ways, teardown),
		cmocka_unit_test_teardown(test_half_close, teardown),
		cmocka_unit_test_teardown(test_both_fins, teardown),
		cmocka_unit_test_teardown(test_fins_no_data, teardown),
		cmocka_unit_test_teardown(test_reset_a, teardown),
		cmocka_unit_test_teardown(test_reset_b, teardown),
		cmocka_unit_test_teardown(test_paused_reader, teardown),
		cmocka_unit_test_teardown(test_reset_with_bytes_in_flight, teardown),
		cmocka_unit_test_teardown(test_close_in_done, teardown),
		cmocka_unit_test_teardown(test_eintr, teardown),
		cmocka_unit_test_teardown(test_short_transfers, teardown),
		cmocka_unit_test_teardown(test_pipe_full, teardown),
		cmocka_unit_test_teardown(test_all_faults_random, teardown),
		cmocka_unit_test_teardown(test_no_pipe_copies, teardown),
		cmocka_unit_test_teardown(test_spent_budget_copies, teardown),
		cmocka_unit_test_teardown(test_pipe_takes_from_the_budget, teardown),
		cmocka_unit_test_teardown(test_start_registered, teardown),
		cmocka_unit_test_teardown(test_start_fails, teardown),
	};

	signal(SIGPIPE, SIG_IGN); /* as pinhole does: a write to a reset socket is EPIPE */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
