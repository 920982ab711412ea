/*
 * Unit tests for a relay session's streams (tunnel/session.h) with faults injected
 * through ph_sys: a session without TLS (ph_sess_new_plain) on a real loop, fed frames as
 * if they had arrived, its streams on AF_UNIX socketpairs whose other ends the test reads
 * and writes.
 *
 *    frames (ph_sess_feed) --> [ session ] --> stream socket ==== peer end (the test)
 *                                          <-- (read, counted)
 *
 * Writes and reads on one chosen socket follow a script (EINTR, a short transfer, EAGAIN,
 * an error, or the real call), then go through. Each test runs the loop in short slices
 * until a condition holds, bounded.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/loop.h"
#include "core/sys.h"
#include "tunnel/frame.h"
#include "tunnel/session.h"

#define MAX_ST  4
#define SLICE   5    /* ms the loop runs between checks */
#define WAIT_MS 2000 /* the most a condition is waited for */

/* ---- fault injection through ph_sys ---- */

static struct {
	int fd;              /* the socket the scripts are for; others are left alone */
	const char *wscript; /* writes: i EINTR, s short (cap), a EAGAIN, e ECONNRESET, r real */
	const char *rscript; /* reads: the same, e is EIO */
	size_t cap;
	unsigned eintr, shortened, eagain, errors;
} inj;

static struct ph_sys_ops sys_real;

/* The next step of *script for a call on fd ('r' when none). */
static char step(int fd, const char **script)
{
	if (fd != inj.fd || *script == NULL || **script == '\0')
		return 'r';
	return *(*script)++;
}

static ssize_t fault(char c, int err)
{
	switch (c) {
	case 'i':
		inj.eintr++;
		errno = EINTR;
		break;
	case 'a':
		inj.eagain++;
		errno = EAGAIN;
		break;
	default:
		inj.errors++;
		errno = err;
		break;
	}
	return -1;
}

static ssize_t write_inject(int fd, const void *buf, size_t len)
{
	char c = step(fd, &inj.wscript);

	if (c == 's' && len > inj.cap) {
		inj.shortened++;
		len = inj.cap;
	}
	if (c == 'r' || c == 's')
		return sys_real.write(fd, buf, len);
	return fault(c, ECONNRESET);
}

static ssize_t read_inject(int fd, void *buf, size_t len)
{
	char c = step(fd, &inj.rscript);

	if (c == 'r')
		return sys_real.read(fd, buf, len);
	return fault(c, EIO);
}

/* ---- a session and its streams ---- */

struct sended { /* what stream_end saw of a stream */
	bool ended, failed;
	const char *why;
	int err;
	uint64_t bytes_in, bytes_out;
};

struct stest {
	bool defer;   /* the next OPEN is attached without a socket (fd -1) */
	int deferred; /* its socket, for ph_stream_set_fd */
	char reset_text[PH_RST_TEXT_MAX + 1];
	uint8_t reset_reason;
	unsigned resets, opened;
	struct ph_addr bound;
	struct ph_loop loop;
	struct ph_sess *s;
	struct ph_timer slice;
	unsigned n;
	struct ph_stream *st[MAX_ST];
	int peer[MAX_ST]; /* the other end of each stream's socket */
	struct sended end[MAX_ST];
};

static int t_up(struct ph_sess *s)
{
	(void)s;
	return 0;
}

static int t_ctrl(struct ph_sess *s, const uint8_t *p, size_t n, const char **why)
{
	(void)s;
	(void)p;
	(void)n;
	(void)why;
	return 0;
}

/* The peer opened a stream: attach it to a fresh socketpair, its first bytes after the head. */
static int t_open(struct ph_sess *s, uint32_t id, const uint8_t *p, size_t n, bool fin,
                  const char **why)
{
	struct stest *t = s->owner;
	int fds[2];

	(void)why;
	assert_true(t->n < MAX_ST);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds),
	                 0);
	t->peer[t->n] = fds[1];
	t->deferred = t->defer ? fds[0] : -1;
	/* the owner pointer names the slot, so stream_end finds it after the stream is gone */
	t->st[t->n] = ph_stream_attach(s, id, t->defer ? -1 : fds[0], t->defer, NULL, 0, p + 4,
	                               n - 4, fin, &t->end[t->n]);
	t->defer = false;
	assert_non_null(t->st[t->n]);
	t->n++;
	return 0;
}

static void t_stream_end(struct ph_sess *s, struct ph_stream *st)
{
	struct sended *e = st->owner;

	(void)s;
	e->ended = true;
	e->failed = st->failed;
	e->why = st->why;
	e->err = st->err;
	e->bytes_in = st->bytes_in;
	e->bytes_out = st->bytes_out;
	ph_stream_log_end(st, "test", "streams", NULL, false); /* the line's path runs too */
}

static void t_closed(struct ph_sess *s, const char *why)
{
	(void)s;
	(void)why;
}

static void t_reset(struct ph_sess *s, struct ph_stream *st, uint8_t reason, const char *text)
{
	struct stest *t = s->owner;

	(void)st;
	t->resets++;
	t->reset_reason = reason;
	snprintf(t->reset_text, sizeof(t->reset_text), "%s", text);
}

static void t_opened(struct ph_sess *s, struct ph_stream *st, const struct ph_addr *bound)
{
	struct stest *t = s->owner;

	assert_true(st->opened);
	t->opened++;
	t->bound = *bound;
}

static const struct ph_sess_ops t_ops = {
	.up = t_up,
	.ctrl = t_ctrl,
	.open = t_open,
	.reset = t_reset,
	.opened = t_opened,
	.stream_end = t_stream_end,
	.closed = t_closed,
};

static void slice_cb(struct ph_timer *tm)
{
	struct stest *t = container_of(tm, struct stest, slice);

	ph_loop_stop(&t->loop);
}

/* Runs the loop for one slice. */
static void run_slice(struct stest *t)
{
	t->loop.stop = false; /* the last slice's stop */
	ph_timer_arm(&t->loop, &t->slice, SLICE);
	assert_int_equal(ph_loop_run(&t->loop), 0);
}

/* Runs the loop until cond(t, arg) holds (true), or WAIT_MS passed (false). */
static bool run_until(struct stest *t, bool (*cond)(struct stest *t, const void *arg),
                      const void *arg)
{
	for (int i = 0; i < WAIT_MS / SLICE; i++) {
		if (cond(t, arg))
			return true;
		run_slice(t);
	}
	return cond(t, arg);
}

static int setup(void **state)
{
	struct stest *t = calloc(1, sizeof(*t));

	assert_non_null(t);
	assert_int_equal(ph_loop_init(&t->loop), 0);
	ph_timer_init(&t->slice, slice_cb);
	t->s = ph_sess_new_plain(&t->loop, false, &t_ops, t);
	assert_non_null(t->s);
	sys_real = ph_sys;
	memset(&inj, 0, sizeof(inj));
	inj.fd = -1;
	ph_sys.write = write_inject;
	ph_sys.read = read_inject;
	*state = t;
	return 0;
}

static int teardown(void **state)
{
	struct stest *t = *state;

	ph_sys_reset();
	ph_sess_free(t->s); /* closes what is left (stream_end for each) */
	for (unsigned i = 0; i < t->n; i++)
		close(t->peer[i]);
	ph_timer_stop(&t->loop, &t->slice);
	ph_loop_free(&t->loop);
	free(t);
	return 0;
}

/* Feeds one frame of type on stream id with payload p[0..n). */
static void feed(struct stest *t, uint8_t type, uint32_t id, const void *p, size_t n)
{
	uint8_t f[PH_FRAME_HDR + PH_FRAME_MAX];

	ph_frame_header(type, 0, id, (uint16_t)n, f);
	memcpy(f + PH_FRAME_HDR, p, n);
	assert_int_equal(ph_sess_feed(t->s, f, PH_FRAME_HDR + n), 0);
}

/* The peer opens stream id (service 1, no addresses, no first bytes). Returns its slot. */
static unsigned open_stream(struct stest *t, uint32_t id)
{
	static const uint8_t head[] = {0, 1, 0, 0};

	feed(t, PH_FRAME_OPEN, id, head, sizeof(head));
	return t->n - 1;
}

static size_t waiting(int fd)
{
	int n = 0;

	assert_int_equal(ioctl(fd, FIONREAD, &n), 0);
	return (size_t)n;
}

static bool has_bytes(struct stest *t, const void *arg)
{
	const size_t *want = arg; /* {slot, bytes} */

	return waiting(t->peer[want[0]]) >= want[1];
}

/* Reads exactly n bytes from slot's peer end (they must be there) and compares them. */
static void expect(struct stest *t, unsigned slot, const char *bytes)
{
	size_t n = strlen(bytes), want[2] = {slot, n};
	char buf[256];

	assert_true(run_until(t, has_bytes, want));
	assert_int_equal(read(t->peer[slot], buf, sizeof(buf)), (ssize_t)n);
	assert_memory_equal(buf, bytes, n);
}

/* ---- session -> stream: writes ---- */

static void test_write_eintr_is_retried(void **state)
{
	struct stest *t = *state;
	unsigned a = open_stream(t, 2);

	inj.fd = t->st[a]->io.fd;
	inj.wscript = "ii";
	feed(t, PH_FRAME_DATA, 2, "hello world", 11);
	assert_int_equal(inj.eintr, 2);
	assert_int_equal(t->st[a]->blen, 0); /* all written at once, nothing kept */
	expect(t, a, "hello world");
	assert_false(t->end[a].ended);
}

static void test_short_write_keeps_the_rest_and_eagain_waits(void **state)
{
	struct stest *t = *state;
	unsigned a = open_stream(t, 2);

	feed(t, PH_FRAME_DATA, 2, "abc", 3);
	run_slice(t); /* the socket's first events are spent */
	inj.fd = t->st[a]->io.fd;
	inj.cap = 2;
	/* a short write, then EAGAIN: the rest waits in the stream's buffer */
	inj.wscript = "sa";
	feed(t, PH_FRAME_DATA, 2, "0123456789", 10);
	assert_int_equal(inj.shortened, 1);
	assert_int_equal(inj.eagain, 1);
	assert_int_equal(t->st[a]->blen, 8);
	assert_int_equal(t->s->buffered, 8);
	/* no event, no write: nothing is retried in a loop, nothing lost */
	for (int i = 0; i < 4; i++)
		run_slice(t);
	assert_int_equal(waiting(t->peer[a]), 5);
	assert_int_equal(t->st[a]->blen, 8);
	/* the reader takes what came: the socket says it is writable, the rest goes, in short
	 * writes again, in order */
	inj.cap = 3;
	inj.wscript = "sss";
	expect(t, a, "abc01");
	expect(t, a, "23456789");
	assert_int_equal(t->st[a]->blen, 0);
	assert_int_equal(t->s->buffered, 0);
	assert_int_equal(t->st[a]->bytes_out, 13);
	assert_false(t->end[a].ended);
}

static void test_write_error_closes_that_stream_alone(void **state)
{
	struct stest *t = *state;
	unsigned a = open_stream(t, 2), b = open_stream(t, 4);

	inj.fd = t->st[a]->io.fd;
	inj.wscript = "e";
	feed(t, PH_FRAME_DATA, 2, "to a", 4);
	feed(t, PH_FRAME_DATA, 4, "to b", 4);
	assert_true(t->end[a].ended && t->end[a].failed);
	assert_string_equal(t->end[a].why, "socket error");
	assert_int_equal(t->end[a].err, -ECONNRESET);
	assert_int_equal(t->s->st.resets, 1); /* the peer was told (RST) */
	assert_int_equal(t->s->state, PH_SESS_UP);
	assert_false(t->end[b].ended);
	expect(t, b, "to b");
	/* a frame the peer sent before it saw the RST is no error */
	feed(t, PH_FRAME_DATA, 2, "late", 4);
	assert_int_equal(t->s->state, PH_SESS_UP);
}

static void test_error_after_eagain_on_flush(void **state)
{
	struct stest *t = *state;
	unsigned a = open_stream(t, 2);

	feed(t, PH_FRAME_DATA, 2, "x", 1);
	run_slice(t);
	inj.fd = t->st[a]->io.fd;
	inj.wscript = "ae"; /* kept; then the flush fails */
	feed(t, PH_FRAME_DATA, 2, "abcdef", 6);
	assert_int_equal(t->st[a]->blen, 6);
	expect(t, a, "x"); /* the reader reads: the flush runs, and fails */
	for (int i = 0; i < WAIT_MS / SLICE && !t->end[a].ended; i++)
		run_slice(t);
	assert_true(t->end[a].ended && t->end[a].failed);
	assert_int_equal(t->end[a].err, -ECONNRESET);
	assert_int_equal(t->s->buffered, 0); /* its buffer went with it */
}

/* ---- stream -> session: reads ---- */

static bool read_all(struct stest *t, const void *arg)
{
	const size_t *want = arg; /* {slot, bytes} */

	return t->st[want[0]]->bytes_in >= want[1];
}

static void test_read_eintr_and_eagain(void **state)
{
	struct stest *t = *state;
	unsigned a = open_stream(t, 2);
	size_t want[2] = {a, 5};

	run_slice(t);
	inj.fd = t->st[a]->io.fd;
	inj.rscript = "ia"; /* EINTR is retried; EAGAIN with bytes there: wait for an event */
	assert_int_equal(write(t->peer[a], "hello", 5), 5);
	for (int i = 0; i < 4; i++)
		run_slice(t);
	assert_int_equal(inj.eintr, 1);
	assert_int_equal(inj.eagain, 1);
	assert_int_equal(t->st[a]->bytes_in, 0);
	/* the next bytes are the next event: both writes are read */
	assert_int_equal(write(t->peer[a], " you", 4), 4);
	want[1] = 9;
	assert_true(run_until(t, read_all, want));
	assert_int_equal(t->st[a]->bytes_in, 9);
	assert_int_equal(t->s->st.bytes_out, 9);
	assert_false(t->end[a].ended);
}

static void test_read_error_closes_that_stream_alone(void **state)
{
	struct stest *t = *state;
	unsigned a = open_stream(t, 2), b = open_stream(t, 4);
	size_t want[2] = {b, 3};

	run_slice(t);
	inj.fd = t->st[a]->io.fd;
	inj.rscript = "e";
	assert_int_equal(write(t->peer[a], "abc", 3), 3);
	assert_int_equal(write(t->peer[b], "abc", 3), 3);
	assert_true(run_until(t, read_all, want));
	for (int i = 0; i < WAIT_MS / SLICE && !t->end[a].ended; i++)
		run_slice(t);
	assert_true(t->end[a].ended && t->end[a].failed);
	assert_string_equal(t->end[a].why, "socket error");
	assert_int_equal(t->end[a].err, -EIO);
	assert_false(t->end[b].ended);
	assert_int_equal(t->s->state, PH_SESS_UP);
}

/* Every session state has a name, each its own, and the table ends where the enum does. */
/* ---- streams a client opens, and the relay's answers ---- */

/* A RST's text reaches the owner (printable), before the stream ends as a failure. */
static void test_rst_text(void **state)
{
	struct stest *t = *state;
	uint8_t rst[] = "\x05key laptop may not reach 'db'\x01";
	unsigned a = open_stream(t, 2);

	feed(t, PH_FRAME_RST, 2, rst, sizeof(rst) - 1);
	assert_int_equal(t->resets, 1);
	assert_int_equal(t->reset_reason, PH_RST_FORBIDDEN);
	assert_string_equal(t->reset_text, "key laptop may not reach 'db'?");
	assert_true(t->end[a].ended && t->end[a].failed);
	assert_string_equal(t->end[a].why, "reset by the peer: not allowed");
}

/* OPENED for a stream this end opened gives its address; for the peer's own, a violation. */
static void test_opened(void **state)
{
	struct stest *t = *state;
	uint8_t head[4] = {2, 0, 22, 1}, addr[7] = {4, 0x1f, 0x90, 10, 0, 0, 5}, f[64];
	int fds[2];
	struct ph_stream *st;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds),
	                 0);
	t->peer[t->n] = fds[1];
	st = ph_sess_open(t->s, fds[0], head, sizeof(head), &t->end[t->n]);
	assert_non_null(st);
	assert_int_equal(st->id, 1); /* the client's ids are odd */
	t->st[t->n++] = st;
	assert_false(st->opened);
	feed(t, PH_FRAME_OPENED, 1, addr, sizeof(addr));
	assert_int_equal(t->opened, 1);
	assert_int_equal(t->bound.u.sa.sa_family, AF_INET);
	assert_int_equal(ph_addr_port(&t->bound), 8080);
	/* a bad address, or OPENED for a stream the peer opened, ends the session */
	open_stream(t, 2);
	ph_frame_header(PH_FRAME_OPENED, 0, 2, sizeof(addr), f);
	memcpy(f + PH_FRAME_HDR, addr, sizeof(addr));
	assert_int_equal(ph_sess_feed(t->s, f, PH_FRAME_HDR + sizeof(addr)), -EPROTO);
}

/* A stream attached before its socket keeps the peer's bytes until it has one. */
static void test_deferred_socket(void **state)
{
	struct stest *t = *state;
	unsigned a;

	t->defer = true;
	a = open_stream(t, 2);
	feed(t, PH_FRAME_DATA, 2, "abc", 3);
	feed(t, PH_FRAME_DATA, 2, "def", 3);
	assert_true(ph_stream_connecting(t->st[a]));
	run_slice(t);
	assert_int_equal(waiting(t->peer[a]), 0); /* no socket: nothing went anywhere */
	assert_int_equal(ph_stream_set_fd(t->st[a], t->deferred), 0);
	expect(t, a, "abcdef");
	assert_false(ph_stream_connecting(t->st[a]));
}

/* Injected bytes (a reply record) come before the peer's, whatever is buffered. */
static void test_inject_first(void **state)
{
	struct stest *t = *state;
	unsigned a = open_stream(t, 2);

	assert_int_equal(ph_stream_inject(t->st[a], "REC", 3), 0);
	feed(t, PH_FRAME_DATA, 2, "xyz", 3);
	expect(t, a, "RECxyz");
}

static void test_state_names(void **state)
{
	(void)state;
	for (int a = 0; a < PH_SESS__NSTATES; a++) {
		assert_true(strlen(ph_sess_state_name((enum ph_sess_state)a)) > 1);
		for (int b = 0; b < a; b++)
			assert_string_not_equal(ph_sess_state_name((enum ph_sess_state)a),
			                        ph_sess_state_name((enum ph_sess_state)b));
	}
	assert_string_equal(ph_sess_state_name(PH_SESS_UP), "up");
	assert_string_equal(ph_sess_state_name(PH_SESS__NSTATES), "?");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_state_names),
		cmocka_unit_test_setup_teardown(test_rst_text, setup, teardown),
		cmocka_unit_test_setup_teardown(test_opened, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deferred_socket, setup, teardown),
		cmocka_unit_test_setup_teardown(test_inject_first, setup, teardown),
		cmocka_unit_test_setup_teardown(test_write_eintr_is_retried, setup, teardown),
		cmocka_unit_test_setup_teardown(test_short_write_keeps_the_rest_and_eagain_waits,
	                                        setup, teardown),
		cmocka_unit_test_setup_teardown(test_write_error_closes_that_stream_alone, setup,
	                                        teardown),
		cmocka_unit_test_setup_teardown(test_error_after_eagain_on_flush, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_eintr_and_eagain, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_error_closes_that_stream_alone, setup,
	                                        teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
