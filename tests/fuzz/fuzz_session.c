/*
 * Fuzzes a live relay session's frame dispatch (tunnel/session.h): the bytes a peer sends
 * after the TLS handshake, fed to a session made with ph_sess_new_plain (no TLS, no
 * socket, its output dropped). Streams the peer opens get real sockets (one end of a
 * socketpair each, at most MAX_STREAMS), so DATA, WINDOW, FIN and RST reach the code that
 * writes, buffers, shuts down and resets them.
 *
 * The input: byte 0 is the mode (MODE_*), bytes 1-3 cut the rest into four chunks (at
 * byte/256 of its length, so frames split anywhere), and the rest is the peer's bytes.
 * After each chunk the harness may drain the sockets' other ends and run one round of
 * the loop (epoll events, then the session's task), as ph_loop_run would; it never runs
 * the task of a closed session, which would free it: ph_sess_free is called once, at the
 * end. The service number of an OPEN says how the harness answers it (SVC_*); its low two
 * bits also name the service that owns the stream, and an UNREGISTER of that service
 * drops its streams (ph_sess_drop_owner), as the relay does. MODE_LOCAL has this end open
 * a stream itself after each chunk (ph_sess_open, ids 2, 4, ... on the relay's end, 1, 3,
 * ... on the client's); MODE_SMALL shrinks windows, socket buffers and the session's cap,
 * so that a few KiB of input reach WINDOW updates, buffering and the cap's resets.
 *
 * The contract: ph_sess_feed returns 0 while the session is up and -EPROTO once it closed,
 * closed is called exactly once when it closes (and once at the end otherwise), every
 * stream the session made ends (stream_end) by the time it is closed, with nothing left
 * buffered and every stream socket closed, nothing is queued on the loop after
 * ph_sess_free, and ASan sees no overread, use after free or leak on the way.
 */
#include "tunnel/session.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/loop.h"
#include "tunnel/frame.h"
#include "tunnel/msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_session: %s failed (size %zu)\n", #cond, size);      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#define MAX_STREAMS 32

/* mode byte */
#define MODE_SERVER 0x01 /* the relay's end (the peer opens odd ids), else the client's */
#define MODE_DRAIN  0x02 /* read what the streams wrote to their sockets after each chunk */
#define MODE_ROUND  0x04 /* run a round of the loop after each chunk */
#define MODE_HANGUP 0x08 /* at the end, the sockets' other ends close, and a round runs */
#define MODE_REPLY  0x10 /* answer a REGISTER with a REGISTERED, echo datagrams */
#define MODE_SMALL  0x20 /* windows of SMALL_WIN, small socket buffers, a cap of SMALL_CAP */
#define MODE_LOCAL  0x40 /* this end opens a stream after each chunk */

#define SMALL_WIN 2048
#define SMALL_CAP 8192

/* an OPEN's service number: how the harness answers it */
#define SVC_REFUSE  0x01 /* RST, no stream */
#define SVC_CONNECT 0x02 /* the stream's socket is still connecting */
#define SVC_PROXY   0x04 /* a PROXY header goes first */
#define SVC_WRITE   0x08 /* the socket has bytes to read at once */
#define SVC_EOF     0x10 /* the socket's other end has finished writing */
#define SVC_FAIL    0x20 /* the open callback fails: the session ends */

struct harness {
	struct ph_loop loop;
	uint8_t mode;
	int peer[MAX_STREAMS];  /* the other ends, closed at the end */
	int local[MAX_STREAMS]; /* the ends the session owns (numbers only: it closes them) */
	unsigned npairs;
	unsigned opens, ends, closed;
	char services[4]; /* what the streams' owner pointers point to */
};

/* Under MODE_SMALL: a new stream's windows as if PH_WIN_INIT were SMALL_WIN. */
static void shrink(struct harness *h, struct ph_stream *st, size_t first)
{
	if (st == NULL || !(h->mode & MODE_SMALL) || first > SMALL_WIN)
		return;
	st->credit = SMALL_WIN;
	st->rwin = SMALL_WIN;
	st->rallow = SMALL_WIN - (uint32_t)first;
}

/* A socketpair for a stream, kept in h; fds[0] is the session's. Returns 0 or -1 (none left). */
static int pair(struct harness *h, int fds[2])
{
	int small = 4096;

	if (h->npairs == MAX_STREAMS ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == -1)
		return -1;
	if (h->mode & MODE_SMALL)
		setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
	h->peer[h->npairs] = fds[1];
	h->local[h->npairs] = fds[0];
	h->npairs++;
	return 0;
}

static int h_up(struct ph_sess *s)
{
	(void)s;
	return 0;
}

static int h_ctrl(struct ph_sess *s, const uint8_t *p, size_t n, const char **why)
{
	struct harness *h = s->owner;
	struct ph_ctrl c;
	int r = ph_ctrl_parse(p, n, &c, why);

	if (r == 0 && c.type == PH_CTRL_UNREGISTER)
		ph_sess_drop_owner(s, &h->services[c.service & 3]);
	if (r == 0 && c.type == PH_CTRL_REGISTER && (h->mode & MODE_REPLY)) {
		struct ph_ctrl a = {.type = PH_CTRL_REGISTERED,
		                    .req = c.req,
		                    .service = 1,
		                    .port = c.port != 0 ? c.port : 40000};
		uint8_t out[PH_CTRL_MAX];

		(void)ph_sess_ctrl(s, out, ph_ctrl_build(&a, out));
	}
	return r;
}

static int h_open(struct ph_sess *s, uint32_t id, const uint8_t *p, size_t n, bool fin,
                  const char **why)
{
	static const uint8_t proxy[] = "PROXY TCP4 192.0.2.1 198.51.100.2 4000 80\r\n";
	struct harness *h = s->owner;
	struct ph_addr visitor, pub;
	struct ph_stream *st;
	uint16_t svc = ph_get16(p);
	size_t off = 2;
	int an, fds[2];

	h->opens++;
	an = ph_msg_addr_get(p + off, n - off, &visitor);
	if (an > 0) {
		off += (size_t)an;
		an = ph_msg_addr_get(p + off, n - off, &pub);
	}
	if (an < 0) {
		*why = "an OPEN with a malformed address";
		return -EPROTO;
	}
	off += (size_t)an;
	if (svc & SVC_FAIL) {
		*why = "the harness fails this OPEN";
		return -EPROTO;
	}
	if ((svc & SVC_REFUSE) || pair(h, fds) < 0) {
		ph_sess_rst(s, id, (svc & SVC_REFUSE) ? PH_RST_NOSERVICE : PH_RST_OVERLOAD);
		return 0;
	}
	if (svc & SVC_WRITE)
		(void)!write(fds[1], "reply from the service\n", 23);
	if (svc & SVC_EOF)
		shutdown(fds[1], SHUT_WR);
	st = ph_stream_attach(s, id, fds[0], (svc & SVC_CONNECT) != 0, proxy,
	                      (svc & SVC_PROXY) ? sizeof(proxy) - 1 : 0, p + off, n - off, fin,
	                      &h->services[svc & 3]);
	shrink(h, st, n - off);
	return 0;
}

static void h_dgram(struct ph_sess *s, const uint8_t *p, size_t n)
{
	struct harness *h = s->owner;

	if (h->mode & MODE_REPLY)
		(void)ph_sess_dgram(s, p, n);
}

static void h_stream_end(struct ph_sess *s, struct ph_stream *st)
{
	struct harness *h = s->owner;

	(void)st;
	h->ends++;
}

static void h_closed(struct ph_sess *s, const char *why)
{
	struct harness *h = s->owner;

	(void)why;
	h->closed++;
}

static const struct ph_sess_ops ops = {
	.up = h_up,
	.ctrl = h_ctrl,
	.open = h_open,
	.dgram = h_dgram,
	.stream_end = h_stream_end,
	.closed = h_closed,
};

/*
 * This end opens a stream, as the relay does for a visitor: the OPEN's head is a service
 * and two addresses, and the visitor has sent a line.
 */
static void open_local(struct harness *h, struct ph_sess *s)
{
	static const uint8_t head[] = {0, 1, 4, 0xc7, 0x38, 192, 0, 2, 1, 0};
	int fds[2];

	if (s->state != PH_SESS_UP || pair(h, fds) < 0)
		return;
	(void)!write(fds[1], "hello from a visitor\n", 21);
	shrink(h, ph_sess_open(s, fds[0], head, sizeof(head), &h->services[1]), 0);
}

/* Reads and discards what the streams wrote to their sockets. */
static void drain(struct harness *h)
{
	uint8_t buf[16384];

	for (unsigned i = 0; i < h->npairs; i++)
		while (read(h->peer[i], buf, sizeof(buf)) > 0)
			;
}

/*
 * One round of ph_loop_run without the wait: the ready events, then the session's task;
 * nothing when it is closed, since its task would free it (ph_sess_free does, at the end).
 */
static void round_once(struct harness *h, struct ph_sess *s, uint64_t ms)
{
	struct epoll_event ev[64];
	int n;

	if (s->state != PH_SESS_UP)
		return;
	n = epoll_wait(h->loop.epfd, ev, 64, 0);
	h->loop.now += ms;
	for (int i = 0; i < n && s->state == PH_SESS_UP; i++) {
		struct ph_io *io = ev[i].data.ptr;

		if (io->fd != -1)
			io->cb(io, ev[i].events);
	}
	if (s->state == PH_SESS_UP && !ph_list_empty(&s->more.node)) {
		ph_task_cancel(&s->more);
		s->more.fn(&s->more);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct harness h = {0};
	struct ph_sess *s;
	size_t cut[5], body;
	uint8_t *in;
	int r;

	if (size < 4)
		return 0;
	signal(SIGPIPE, SIG_IGN); /* as pinhole does: a write to a closed socket is EPIPE */
	h.mode = data[0];
	body = size - 4;
	cut[0] = 0;
	cut[4] = body;
	for (int i = 1; i < 4; i++) /* sorted: a cut never goes back */
		cut[i] = body * data[i] / 256 > cut[i - 1] ? body * data[i] / 256 : cut[i - 1];
	in = malloc(body ? body : 1); /* exactly the peer's bytes: ASan sees a read past */
	if (in == NULL || ph_loop_init(&h.loop) < 0)
		abort();
	if (body > 0)
		memcpy(in, data + 4, body);
	s = ph_sess_new_plain(&h.loop, h.mode & MODE_SERVER, &ops, &h);
	if (s == NULL)
		abort();
	if (h.mode & MODE_SMALL)
		s->cap = SMALL_CAP;

	for (int i = 0; i < 4; i++) {
		bool up = s->state == PH_SESS_UP;

		r = ph_sess_feed(s, in + cut[i], cut[i + 1] - cut[i]);
		CHECK(r == 0 || r == -EPROTO);
		CHECK((r == 0) == (s->state == PH_SESS_UP));
		CHECK(h.closed == (s->state == PH_SESS_CLOSED));
		CHECK(up || r < 0); /* closed stays closed */
		if (h.mode & MODE_LOCAL)
			open_local(&h, s);
		if (h.mode & MODE_DRAIN)
			drain(&h);
		if (h.mode & MODE_ROUND)
			round_once(&h, s, i < 3 ? data[i + 1] : 0);
		CHECK(h.closed == (s->state == PH_SESS_CLOSED));
	}
	if (h.mode & MODE_HANGUP) {
		for (unsigned i = 0; i < h.npairs; i++)
			shutdown(h.peer[i], SHUT_RDWR);
		round_once(&h, s, 1);
		round_once(&h, s, 1);
	}

	/* closing ends every stream, and leaves nothing held */
	ph_sess_close(s, PH_GOAWAY_NORMAL, "the fuzzer is done");
	CHECK(s->state == PH_SESS_CLOSED && h.closed == 1);
	CHECK(s->nstreams == 0 && s->st.active == 0 && s->buffered == 0);
	CHECK(h.ends == s->st.streams);
	CHECK(s->st.streams <= h.npairs);
	ph_sess_free(s);
	CHECK(ph_list_empty(&h.loop.tasks));
	CHECK(h.closed == 1);

	/*
	 * The session closed every socket it was given. A number seen twice was closed and
	 * reused in between; a number the session kept could not have been reused.
	 */
	for (unsigned i = 0; i < h.npairs; i++)
		CHECK(close(h.peer[i]) == 0);
	for (unsigned i = 0; i < h.npairs; i++)
		CHECK(fcntl(h.local[i], F_GETFD) == -1 && errno == EBADF);
	ph_loop_free(&h.loop);
	free(in);
	return 0;
}
