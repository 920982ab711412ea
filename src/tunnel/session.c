#include "tunnel/session.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn/conn.h"
#include "conn/via.h"
#include "core/log.h"
#include "core/logagg.h"
#include "core/net.h"
#include "core/sys.h"
#include "tunnel/frame.h"
#include "tunnel/msg.h"
#include "tunnel/tls.h"

#define OUT_HIGH    (64u << 10)              /* frames queued before streams wait */
#define OUT_MAX     (1u << 20)               /* control frames past this: the peer is stuck */
#define DGRAM_ROOM  (OUT_HIGH + (64u << 10)) /* datagrams queued past this are dropped */
#define IN_CAP      (4 * (PH_FRAME_HDR + PH_FRAME_MAX))
#define READ_BUDGET (1u << 20) /* decrypted bytes per turn before others get theirs */
#define SEND_BUDGET (1u << 20)
#define LOWAT       (128u << 10) /* TCP_NOTSENT_LOWAT on the session socket */
#define WIRE_CAP    (256u << 10) /* TLS records gathered for one write() */

/* stream flags */
#define ST_CONNECTING 0x01  /* the local connect is in flight */
#define ST_READABLE   0x02  /* the socket may have bytes (edge seen, not drained) */
#define ST_EOF        0x04  /* the socket ended: FIN sent to the peer */
#define ST_FIN_RCVD   0x08  /* the peer ended: shut the socket once buf is out */
#define ST_SHUT       0x10  /* shutdown(SHUT_WR) done */
#define ST_DEAD       0x20  /* closed, waiting to be freed */
#define ST_RDHUP      0x40  /* the socket's FIN (or an error) arrived: read until it shows */
#define ST_CONFIRM    0x80  /* OPENED goes to the peer once connected */
#define ST_HOLD       0x100 /* the peer's bytes wait in buf: the socket is to be replaced */
#define ST_HANDOFF    0x200 /* reads watch for the replacement (SCM_RIGHTS behind a marker) */

static void sess_task(struct ph_task *t);
static void sess_send(struct ph_sess *s);
static const char *const sess_state_name[PH_SESS__NSTATES] = {"handshake", "up", "closed"};

const char *ph_sess_state_name(enum ph_sess_state st)
{
	return (unsigned)st < PH_SESS__NSTATES ? sess_state_name[st] : "?";
}

/* The only place that assigns s->state, so a trace (-vv) shows every path taken. */
#define sess_set_state(s, st) sess_set_state_((s), (st), __LINE__)
static void sess_set_state_(struct ph_sess *s, enum ph_sess_state st, int line)
{
	ph_trace("session fd %d: %s -> %s (line %d)", s->io.fd, sess_state_name[s->state],
	         sess_state_name[st], line);
	s->state = st;
}

static void stream_close(struct ph_stream *st, bool rst_sock, uint8_t rst_reason, const char *why,
                         int err);
static void stream_close_text(struct ph_stream *st, bool rst_sock, uint8_t rst_reason,
                              const char *why, int err, const char *text);

static uint32_t pending(const struct ph_sess *s)
{
	return s->out_len - s->out_off;
}

/* Room for n more bytes at the end of out; grows it up to OUT_MAX. Returns 0 or -ENOBUFS. */
static int out_room(struct ph_sess *s, uint32_t n)
{
	if (s->out_off > 0 && s->out_len + n > s->out_cap) {
		memmove(s->out, s->out + s->out_off, pending(s));
		s->out_len -= s->out_off;
		s->out_off = 0;
	}
	if (s->out_len + n > s->out_cap) {
		uint32_t cap = s->out_cap;
		uint8_t *p;

		while (cap < s->out_len + n)
			cap *= 2;
		if (cap > OUT_MAX)
			return -ENOBUFS;
		p = realloc(s->out, cap);
		if (p == NULL)
			return -ENOBUFS;
		s->out = p;
		s->out_cap = cap;
	}
	return 0;
}

/* Appends a whole frame. Returns 0 or -ENOBUFS. */
static int out_frame(struct ph_sess *s, uint8_t type, uint8_t flags, uint32_t id, const uint8_t *p,
                     size_t n)
{
	if (s->state != PH_SESS_UP)
		return -ENOBUFS;
	if (out_room(s, (uint32_t)(PH_FRAME_HDR + n)) < 0)
		return -ENOBUFS;
	ph_frame_header(type, flags, id, (uint16_t)n, s->out + s->out_len);
	if (n != 0)
		memcpy(s->out + s->out_len + PH_FRAME_HDR, p, n);
	s->out_len += (uint32_t)(PH_FRAME_HDR + n);
	return 0;
}

static void kick(struct ph_sess *s)
{
	ph_task_queue(s->loop, &s->more);
}

/* --- streams --------------------------------------------------------------------------- */

static struct ph_stream *stream_find(struct ph_sess *s, uint32_t id)
{
	struct ph_stream *st;

	if (s->tab == NULL)
		return NULL;
	for (st = s->tab[id & s->tab_mask]; st != NULL; st = st->hnext)
		if (st->id == id)
			return st;
	return NULL;
}

static int tab_grow(struct ph_sess *s)
{
	uint32_t size = s->tab == NULL ? 16 : (s->tab_mask + 1) * 2;
	struct ph_stream **t = calloc(size, sizeof(*t));

	if (t == NULL)
		return -ENOMEM;
	for (uint32_t i = 0; s->tab != NULL && i <= s->tab_mask; i++) {
		while (s->tab[i] != NULL) {
			struct ph_stream *st = s->tab[i];

			s->tab[i] = st->hnext;
			st->hnext = t[st->id & (size - 1)];
			t[st->id & (size - 1)] = st;
		}
	}
	free(s->tab);
	s->tab = t;
	s->tab_mask = size - 1;
	return 0;
}

static void tab_del(struct ph_sess *s, struct ph_stream *st)
{
	struct ph_stream **pp = &s->tab[st->id & s->tab_mask];

	while (*pp != NULL && *pp != st)
		pp = &(*pp)->hnext;
	if (*pp != NULL)
		*pp = st->hnext;
	st->hnext = NULL;
}

static void stream_io(struct ph_io *io, uint32_t events);

/* What the peer's RST of reason means, for the stream's close line. */
static const char *rst_name(uint8_t reason)
{
	switch (reason) {
	case PH_RST_REFUSED:
		return "reset by the peer: refused";
	case PH_RST_RESET:
		return "reset by the peer";
	case PH_RST_NOSERVICE:
		return "reset by the peer: no such service";
	case PH_RST_OVERLOAD:
		return "reset by the peer: overloaded";
	case PH_RST_FORBIDDEN:
		return "reset by the peer: not allowed";
	case PH_RST_UNREACHABLE:
		return "reset by the peer: unreachable";
	case PH_RST_NONAME:
		return "reset by the peer: no such name";
	case PH_RST_TIMEOUT:
		return "reset by the peer: timed out";
	default:
		return "reset by the peer: an unknown reason";
	}
}

static struct ph_stream *stream_new(struct ph_sess *s, uint32_t id, int fd, void *owner)
{
	struct ph_stream *st;

	if ((s->tab == NULL || s->nstreams >= s->tab_mask + 1) && tab_grow(s) < 0)
		return NULL;
	st = calloc(1, sizeof(*st));
	if (st == NULL)
		return NULL;
	ph_io_init(&st->io, fd, stream_io);
	st->s = s;
	st->id = id;
	st->credit = PH_WIN_INIT;
	st->rwin = PH_WIN_INIT;
	st->rallow = PH_WIN_INIT;
	st->epoch_t = s->loop->now;
	st->opened_at = s->loop->now;
	st->owner = owner;
	ph_list_init(&st->rnode);
	ph_list_init(&st->fnode);
	st->hnext = s->tab[id & s->tab_mask];
	s->tab[id & s->tab_mask] = st;
	s->nstreams++;
	s->st.streams++;
	s->st.active++;
	return st;
}

/* Stream -> ready ring when it has something to send and may send it. */
static void stream_want_send(struct ph_stream *st)
{
	if ((st->flags & (ST_READABLE | ST_EOF | ST_CONNECTING | ST_DEAD)) == ST_READABLE &&
	    st->credit > 0 && ph_list_empty(&st->rnode)) {
		ph_list_add_tail(&st->s->ready, &st->rnode);
		kick(st->s);
	}
}

static void stream_maybe_done(struct ph_stream *st)
{
	if ((st->flags & (ST_EOF | ST_SHUT)) == (ST_EOF | ST_SHUT))
		stream_close(st, false, 0, "closed", 0);
}

/* Gives credit back for what left for the socket, growing the window when it drained fast. */
static void stream_credit_back(struct ph_stream *st)
{
	struct ph_sess *s = st->s;
	uint32_t inc, rtt;
	uint8_t p[4];

	if (st->consumed == 0 || (st->flags & ST_FIN_RCVD))
		return;
	if (st->consumed < st->rwin / 4 && st->rallow > st->rwin / 2)
		return; /* the peer has plenty left: batch the updates */
	inc = st->consumed;
	st->epoch += st->consumed;
	if (st->epoch >= st->rwin) {
		/*
		 * The whole window drained within two round trips: the window, not the reader,
		 * is what limits this stream. The floor (20 ms) stands for the queues a busy
		 * machine adds to a round trip that PING measures rarely; a reader slower than
		 * a window per 20 ms never gets a bigger one, so it cannot make the relay hold
		 * more than its window.
		 */
		rtt = s->rtt_ms > 10 ? (uint32_t)s->rtt_ms : 10;
		if (st->rwin < PH_WIN_MAX && s->loop->now - st->epoch_t <= 2 * (uint64_t)rtt) {
			inc += st->rwin; /* the window doubles */
			st->rwin *= 2;
		}
		st->epoch = 0;
		st->epoch_t = s->loop->now;
	}
	ph_put32(p, inc);
	if (out_frame(s, PH_FRAME_WINDOW, 0, st->id, p, 4) < 0) {
		ph_sess_close(s, PH_GOAWAY_PROTOCOL, "the peer does not read what it is sent");
		return;
	}
	st->rallow += inc;
	st->consumed = 0;
	kick(s);
}

static void stream_buf_drop(struct ph_stream *st)
{
	st->s->buffered -= st->blen;
	free(st->buf);
	st->buf = NULL;
	st->boff = st->blen = st->bcap = 0;
}

/* Writes what waits in buf to the socket. Returns 0, or -errno (the stream is closed). */
static int stream_flush(struct ph_stream *st)
{
	if (st->flags & ST_HOLD)
		return 0; /* for the socket that comes */
	while (st->blen > 0) {
		ssize_t w = ph_sys.write(st->io.fd, st->buf + st->boff, st->blen);

		if (w < 0) {
			int err = -errno; /* before the close, which may clobber errno */

			if (err == -EINTR)
				continue;
			if (err == -EAGAIN)
				return 0;
			stream_close(st, true, PH_RST_RESET, "socket error", err);
			return err;
		}
		st->boff += (uint32_t)w;
		st->blen -= (uint32_t)w;
		st->s->buffered -= (uint64_t)w;
		st->consumed += (uint32_t)w;
		st->bytes_out += (uint64_t)w;
	}
	free(st->buf);
	st->buf = NULL;
	st->boff = st->bcap = 0;
	stream_credit_back(st);
	if ((st->flags & (ST_FIN_RCVD | ST_SHUT)) == ST_FIN_RCVD) {
		shutdown(st->io.fd, SHUT_WR);
		st->flags |= ST_SHUT;
		stream_maybe_done(st);
	}
	return 0;
}

/* The biggest holder is reset when the session holds more than its cap. */
static void sess_over_cap(struct ph_sess *s)
{
	while (s->buffered > s->cap) {
		struct ph_stream *big = NULL;

		for (uint32_t i = 0; i <= s->tab_mask; i++)
			for (struct ph_stream *st = s->tab[i]; st != NULL; st = st->hnext)
				if (big == NULL || st->blen > big->blen)
					big = st;
		if (big == NULL || big->blen == 0)
			return;
		char label[PH_ADDR_STRLEN + 16], a[PH_ADDR_STRLEN];

		snprintf(label, sizeof(label), "session with %s",
		         ph_addr_fmt(&s->peer_addr, a, sizeof(a)));
		ph_logagg_note(label, "streams", "reset: the reader does not read",
		               "stream %u reset: its reader does not read and the session holds "
		               "%llu bytes (cap %llu)",
		               big->id, (unsigned long long)s->buffered,
		               (unsigned long long)s->cap);
		stream_close(big, true, PH_RST_OVERLOAD, "reset: the reader does not read", 0);
	}
}

/* Appends bytes for the socket to buf. Returns 0 or -ENOMEM. */
static int stream_buf_add(struct ph_stream *st, const uint8_t *p, size_t n)
{
	if (st->boff > 0 && st->boff + st->blen + n > st->bcap) {
		memmove(st->buf, st->buf + st->boff, st->blen);
		st->boff = 0;
	}
	if (st->blen + n > st->bcap) {
		uint32_t cap = st->bcap != 0 ? st->bcap : 4096;
		uint8_t *b;

		while (cap < st->blen + n)
			cap *= 2;
		b = realloc(st->buf, cap);
		if (b == NULL)
			return -ENOMEM;
		st->buf = b;
		st->bcap = cap;
	}
	memcpy(st->buf + st->boff + st->blen, p, n);
	st->blen += (uint32_t)n;
	st->s->buffered += n;
	return 0;
}

/*
 * Writes what of p[0..n) the socket takes now, when nothing waits before it. Returns the
 * bytes written, or -errno (the stream is closed).
 */
static ssize_t stream_write_now(struct ph_stream *st, const uint8_t *p, size_t n)
{
	size_t done = 0;

	while (st->blen == 0 && st->io.fd != -1 && !(st->flags & ST_CONNECTING) && done < n) {
		ssize_t w = ph_sys.write(st->io.fd, p + done, n - done);

		if (w < 0) {
			int err = -errno;

			if (err == -EINTR)
				continue;
			if (err == -EAGAIN)
				break;
			stream_close(st, true, PH_RST_RESET, "socket error", err);
			return err;
		}
		done += (size_t)w;
	}
	return (ssize_t)done;
}

/* Bytes from the peer for the socket: written at once if it takes them, else kept. */
static void stream_deliver(struct ph_stream *st, const uint8_t *p, size_t n)
{
	size_t done = 0;

	if (st->blen == 0 && !(st->flags & (ST_CONNECTING | ST_HOLD))) {
		ssize_t w = stream_write_now(st, p, n);

		if (w < 0)
			return;
		done = (size_t)w;
		st->consumed += (uint32_t)done;
		st->bytes_out += done;
	}
	if (done < n) {
		if (stream_buf_add(st, p + done, n - done) < 0) {
			stream_close(st, true, PH_RST_OVERLOAD, "out of memory", -ENOMEM);
			return;
		}
		if (st->s->buffered > st->s->cap) {
			sess_over_cap(st->s);
			return;
		}
	}
	stream_credit_back(st);
}

static void stream_fin(struct ph_stream *st)
{
	st->flags |= ST_FIN_RCVD;
	if (st->blen == 0 && !(st->flags & (ST_CONNECTING | ST_HOLD))) {
		shutdown(st->io.fd, SHUT_WR);
		st->flags |= ST_SHUT;
		stream_maybe_done(st);
	}
}

/*
 * The one close path of a stream: its socket (reset when rst_sock), its buffers, its place
 * in the table; with rst_reason the peer is told (RST). why (static) and err (-errno or 0)
 * say why, for the owner's close line (a reset is a failure). It is freed by the session's
 * task. Idempotent.
 */
static void stream_close(struct ph_stream *st, bool rst_sock, uint8_t rst_reason, const char *why,
                         int err)
{
	stream_close_text(st, rst_sock, rst_reason, why, err, NULL);
}

/* A RST frame: reason, then text (NULL: none) cut to PH_RST_TEXT_MAX. */
static void rst_frame(struct ph_sess *s, uint32_t id, uint8_t reason, const char *text)
{
	uint8_t p[1 + PH_RST_TEXT_MAX];
	size_t n = text != NULL ? strlen(text) : 0;

	if (n > PH_RST_TEXT_MAX)
		n = PH_RST_TEXT_MAX;
	p[0] = reason;
	if (n != 0)
		memcpy(p + 1, text, n);
	(void)out_frame(s, PH_FRAME_RST, 0, id, p, 1 + n);
}

/* stream_close(), the RST carrying text for the peer (NULL: none). */
static void stream_close_text(struct ph_stream *st, bool rst_sock, uint8_t rst_reason,
                              const char *why, int err, const char *text)
{
	struct ph_sess *s = st->s;

	if (st->flags & ST_DEAD)
		return;
	st->flags |= ST_DEAD;
	st->why = why;
	st->err = err;
	st->failed = rst_sock || rst_reason != 0;
	if (rst_reason != 0 && s->state == PH_SESS_UP)
		rst_frame(s, st->id, rst_reason, text);
	if (rst_sock || rst_reason != 0) {
		s->st.resets++;
		if (st->io.fd != -1)
			ph_sock_set_rst(st->io.fd);
	}
	ph_io_close(s->loop, &st->io);
	stream_buf_drop(st);
	tab_del(s, st);
	s->nstreams--;
	s->st.active--;
	ph_list_del(&st->rnode);
	ph_list_del(&st->fnode);
	if (s->ops->stream_end != NULL)
		s->ops->stream_end(s, st);
	/* freed by the task, after this round's events (none can reach it now) */
	ph_list_add_tail(&s->dead, &st->rnode);
	kick(s);
}

/* What a failed connect's error tells the peer. */
static uint8_t rst_of_errno(int err)
{
	switch (err) {
	case -ETIMEDOUT:
		return PH_RST_TIMEOUT;
	case -EHOSTUNREACH:
	case -ENETUNREACH:
	case -EADDRNOTAVAIL:
		return PH_RST_UNREACHABLE;
	default:
		return PH_RST_REFUSED;
	}
}

/* OPENED: st is connected, its socket's own address in the payload. */
static void stream_opened(struct ph_stream *st)
{
	struct ph_addr a;
	socklen_t len = sizeof(a.u);
	uint8_t p[PH_MSG_ADDR_MAX];

	memset(&a, 0, sizeof(a));
	if (getsockname(st->io.fd, &a.u.sa, &len) == 0)
		a.len = len;
	st->flags &= (uint16_t)~ST_CONFIRM;
	(void)out_frame(st->s, PH_FRAME_OPENED, 0, st->id, p, ph_msg_addr_put(p, &a));
	kick(st->s);
}

static void stream_connected(struct ph_stream *st)
{
	int err = ph_sock_error(st->io.fd);

	if (err < 0) {
		if (st->flags & ST_CONFIRM)
			stream_close_text(st, true, rst_of_errno(err), "cannot connect", err,
			                  strerror(-err));
		else
			stream_close(st, true, PH_RST_REFUSED, "cannot connect", err);
		return;
	}
	st->flags &= (uint16_t)~ST_CONNECTING;
	if (st->flags & ST_CONFIRM)
		stream_opened(st);
	st->flags |= ST_READABLE;
	if (stream_flush(st) < 0)
		return;
	if (st->flags & ST_DEAD)
		return;
	if (st->flags & ST_FIN_RCVD && !(st->flags & ST_SHUT)) {
		shutdown(st->io.fd, SHUT_WR);
		st->flags |= ST_SHUT;
	}
	stream_want_send(st);
}

static void stream_io(struct ph_io *io, uint32_t events)
{
	struct ph_stream *st = container_of(io, struct ph_stream, io);

	if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		st->flags |= ST_RDHUP; /* also while connecting: this edge comes once */
	if (st->flags & ST_CONNECTING) {
		if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
			stream_connected(st);
		return;
	}
	if ((events & (EPOLLOUT | EPOLLERR)) && st->blen > 0 && ph_list_empty(&st->fnode)) {
		ph_list_add_tail(&st->s->flushq, &st->fnode);
		kick(st->s);
	}
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
		st->flags |= ST_READABLE;
		stream_want_send(st);
	}
}

/*
 * read(2) for a stream awaiting its socket: a socket sent with SCM_RIGHTS behind a marker
 * byte (the last byte of the read that carries it: the kernel ends a read there) comes
 * back in *got, the marker still counted in the result; errno set as read's.
 */
static ssize_t read_handoff(int fd, uint8_t *p, size_t n, int *got)
{
	ssize_t r = ph_via_recv_fd(fd, p, n, got, NULL);

	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return r;
}

/* st's socket is replaced by fd (handed over): the bytes held for it go out now. */
static void stream_take_fd(struct ph_stream *st, int fd)
{
	struct ph_sess *s = st->s;

	ph_io_close(s->loop, &st->io); /* the socket pair's end */
	ph_io_init(&st->io, fd, stream_io);
	st->flags &= (uint16_t) ~(ST_HOLD | ST_HANDOFF | ST_RDHUP);
	st->flags |= ST_READABLE;
	if (ph_io_add(s->loop, &st->io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) < 0) {
		stream_close(st, true, PH_RST_OVERLOAD, "cannot poll", -ENOMEM);
		return;
	}
	if (st->blen > 0 && ph_list_empty(&st->fnode)) {
		ph_list_add_tail(&s->flushq, &st->fnode);
		kick(s);
	} else if ((st->flags & (ST_FIN_RCVD | ST_SHUT)) == ST_FIN_RCVD) {
		shutdown(st->io.fd, SHUT_WR);
		st->flags |= ST_SHUT;
		stream_maybe_done(st);
	}
}

/* Reads one turn of st into a DATA frame (or FIN, or RST). */
static void stream_serve(struct ph_stream *st)
{
	struct ph_sess *s = st->s;
	uint32_t want = st->credit < PH_FRAME_MAX ? st->credit : PH_FRAME_MAX;
	ssize_t n;

	int handed = -1;

	if (out_room(s, PH_FRAME_HDR + want) < 0)
		return;
	do
		n = st->flags & ST_HANDOFF
		            ? read_handoff(st->io.fd, s->out + s->out_len + PH_FRAME_HDR, want,
		                           &handed)
		            : ph_sys.read(st->io.fd, s->out + s->out_len + PH_FRAME_HDR, want);
	while (n < 0 && errno == EINTR);
	if (handed != -1) {
		n--; /* the marker byte the socket came behind */
		if (n > 0) {
			ph_frame_header(PH_FRAME_DATA, 0, st->id, (uint16_t)n, s->out + s->out_len);
			s->out_len += PH_FRAME_HDR + (uint32_t)n;
			st->credit -= (uint32_t)n;
			st->bytes_in += (uint64_t)n;
			s->st.bytes_out += (uint64_t)n;
		}
		stream_take_fd(st, handed);
		return;
	}
	if (n == 0 && (st->flags & ST_HANDOFF)) { /* the socket never came */
		stream_close(st, true, PH_RST_RESET, "the handed socket did not come", 0);
		return;
	}
	if (n > 0) {
		ph_frame_header(PH_FRAME_DATA, 0, st->id, (uint16_t)n, s->out + s->out_len);
		s->out_len += PH_FRAME_HDR + (uint32_t)n;
		st->credit -= (uint32_t)n;
		st->bytes_in += (uint64_t)n;
		s->st.bytes_out += (uint64_t)n;
		/*
		 * A short read drained the socket: the next edge says more - unless the FIN
		 * came with these bytes, whose edge is spent: then read on to the 0.
		 */
		if ((uint32_t)n < want && !(st->flags & ST_RDHUP))
			st->flags &= (uint16_t)~ST_READABLE;
		return;
	}
	st->flags &= (uint16_t)~ST_READABLE;
	if (n == 0) {
		(void)out_frame(s, PH_FRAME_FIN, 0, st->id, NULL, 0);
		st->flags |= ST_EOF;
		stream_maybe_done(st);
	} else if (errno != EAGAIN) {
		stream_close(st, true, PH_RST_RESET, "socket error", -errno);
	}
}

/* --- the session ---------------------------------------------------------------------- */

static const char *ssl_reason(void)
{
	unsigned long e = ERR_get_error();
	const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;

	ERR_clear_error();
	return r != NULL ? r : "the connection ended";
}

/*
 * The wire: SSL writes its records into s->wire (a BIO of ours) rather than onto the
 * socket, and wire_flush() hands them to the kernel in one write() - sixteen records a
 * call instead of one (the relay benchmark's syscall count; docs/PERFORMANCE.md).
 */
static int wire_flush(struct ph_sess *s)
{
	while (s->wire_off < s->wire_len) {
		ssize_t w =
			ph_sys.write(s->io.fd, s->wire + s->wire_off, s->wire_len - s->wire_off);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				s->want_write = true;
				return -EAGAIN;
			}
			return -errno;
		}
		s->wire_off += (uint32_t)w;
	}
	s->wire_off = s->wire_len = 0;
	return 0;
}

static int wire_write(BIO *b, const char *p, int n)
{
	struct ph_sess *s = BIO_get_data(b);

	BIO_clear_retry_flags(b);
	if (n <= 0)
		return 0;
	if (s->wire_len + (uint32_t)n > WIRE_CAP && s->wire_off > 0) {
		memmove(s->wire, s->wire + s->wire_off, s->wire_len - s->wire_off);
		s->wire_len -= s->wire_off;
		s->wire_off = 0;
	}
	if (s->wire_len + (uint32_t)n > WIRE_CAP) {
		BIO_set_retry_write(b); /* SSL says WANT_WRITE: the wire goes out first */
		return -1;
	}
	memcpy(s->wire + s->wire_len, p, (size_t)n);
	s->wire_len += (uint32_t)n;
	return n;
}

/*
 * The session socket's read side, for SSL: through ph_sys like every data-path call (tests
 * inject faults), EINTR retried, EAGAIN a retry; errno is left as read(2) set it, for
 * SSL_ERROR_SYSCALL.
 */
static int wire_read(BIO *b, char *p, int n)
{
	struct ph_sess *s = BIO_get_data(b);
	ssize_t r;

	BIO_clear_retry_flags(b);
	if (n <= 0)
		return 0;
	do
		r = ph_sys.read(s->io.fd, p, (size_t)n);
	while (r == -1 && errno == EINTR);
	if (r == -1 && errno == EAGAIN)
		BIO_set_retry_read(b);
	else if (r == 0)
		BIO_set_flags(b,
		              BIO_FLAGS_IN_EOF); /* as OpenSSL's socket BIO: SSL tells EOF apart */
	return (int)r;
}

static long wire_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	(void)num;
	(void)ptr;
	if (cmd == BIO_CTRL_EOF)
		return BIO_test_flags(b, BIO_FLAGS_IN_EOF) != 0;
	return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static BIO_METHOD *wire_method(void)
{
	static BIO_METHOD *m; /* made once; sessions live on one thread */

	if (m == NULL) {
		m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pinhole wire");
		if (m != NULL && (BIO_meth_set_write(m, wire_write) != 1 ||
		                  BIO_meth_set_read(m, wire_read) != 1 ||
		                  BIO_meth_set_ctrl(m, wire_ctrl) != 1)) {
			BIO_meth_free(m);
			m = NULL;
		}
	}
	return m;
}

/* True for the errors of a peer that closed the connection under us (err < 0). */
static bool peer_went(int err)
{
	return err == -EPIPE || err == -ECONNRESET;
}

#define HANDSHAKE_CLOSED "the peer closed the connection during the TLS handshake"

/* After an SSL call: what it wrote goes to the socket. Returns 0, or -1 (session closed). */
static int sess_flush(struct ph_sess *s)
{
	int err = wire_flush(s);

	if (err == 0 || err == -EAGAIN)
		return 0;
	if (s->state == PH_SESS_HANDSHAKE && peer_went(err))
		ph_sess_close(s, PH_GOAWAY_NORMAL, HANDSHAKE_CLOSED);
	else
		ph_sess_close(s, PH_GOAWAY_NORMAL, "session: %s", strerror(-err));
	return -1;
}

/*
 * An error event before the handshake is done: the socket's own error names it (a connect
 * that failed, a reset), before an SSL call meets it as a "Broken pipe". Returns true when
 * it closed s.
 */
static bool sess_handshake_error(struct ph_sess *s)
{
	int soerr = 0;
	socklen_t len = sizeof(soerr);

	if (getsockopt(s->io.fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == -1 || soerr == 0)
		return false;
	if (peer_went(-soerr))
		ph_sess_close(s, PH_GOAWAY_NORMAL, HANDSHAKE_CLOSED);
	else if (s->server)
		ph_sess_close(s, PH_GOAWAY_NORMAL, "session: %s", strerror(soerr));
	else /* the connect failed: refused, unreachable, timed out */
		ph_sess_close(s, PH_GOAWAY_NORMAL, "cannot connect: %s", strerror(soerr));
	return true;
}

static void sess_hb(struct ph_timer *t)
{
	struct ph_sess *s = container_of(t, struct ph_sess, hb);
	uint8_t p[8];

	if (s->state == PH_SESS_HANDSHAKE) {
		ph_sess_close(s, PH_GOAWAY_TIMEOUT, "no TLS handshake within %u s",
		              PH_HANDSHAKE_MS / 1000);
		return;
	}
	if (s->loop->now - s->last_rx >= 3 * s->hb_ms) {
		s->timed_out = true;
		ph_sess_close(s, PH_GOAWAY_TIMEOUT, "no word from the peer for %llu s",
		              (unsigned long long)((s->loop->now - s->last_rx) / 1000));
		return;
	}
	if (s->ping_at == 0) {
		s->ping_at = s->loop->now;
		memcpy(p, &s->ping_at, 8);
		(void)out_frame(s, PH_FRAME_PING, 0, 0, p, 8);
		kick(s);
	}
	ph_timer_arm(s->loop, &s->hb, s->hb_ms);
}

static void sock_opts(int fd, uint64_t hb_ms)
{
	int one = 1, idle = 10, intvl = 5, cnt = 3, lowat = LOWAT;
	unsigned timeout = (unsigned)(3 * hb_ms);

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &timeout, sizeof(timeout));
}

static void sess_handshake(struct ph_sess *s)
{
	int r;

	/*
	 * The thread's error queue is shared by every session on it: what another session's
	 * failure left there would make SSL_get_error() call this one's WANT_READ fatal (a
	 * refused key's handshake ended the next working session). Empty before each call.
	 */
	ERR_clear_error();
	r = SSL_do_handshake(s->ssl);

	if (sess_flush(s) < 0)
		return;
	if (r != 1) {
		int e = SSL_get_error(s->ssl, r);

		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
			ERR_clear_error();
			return;
		}
		if (SSL_get_verify_result(s->ssl) != X509_V_OK) { /* our verify callback said no */
			ERR_clear_error();
			ph_sess_close(s, PH_GOAWAY_PROTOCOL,
			              "TLS handshake: the peer's key is not accepted");
		} else if (e == SSL_ERROR_SYSCALL && (errno == 0 || peer_went(-errno)))
			ph_sess_close(s, PH_GOAWAY_NORMAL, HANDSHAKE_CLOSED); /* EOF or reset */
		else
			ph_sess_close(s, PH_GOAWAY_PROTOCOL, "TLS handshake: %s",
			              e == SSL_ERROR_SYSCALL && errno != 0 ? strerror(errno)
			                                                   : ssl_reason());
		return;
	}
	if (ph_tls_peer_key(s->ssl, s->peer) < 0) {
		ph_sess_close(s, PH_GOAWAY_PROTOCOL, "TLS handshake: the peer showed no key");
		return;
	}
	s->in = malloc(IN_CAP);
	s->out = malloc(OUT_HIGH + PH_FRAME_HDR + PH_FRAME_MAX);
	if (s->in == NULL || s->out == NULL) {
		ph_sess_close(s, PH_GOAWAY_NORMAL, "out of memory");
		return;
	}
	s->in_cap = IN_CAP;
	s->out_cap = OUT_HIGH + PH_FRAME_HDR + PH_FRAME_MAX;
	sess_set_state(s, PH_SESS_UP);
	s->up_at = s->last_rx = s->loop->now;
	ph_timer_arm(s->loop, &s->hb, 1); /* the first PING at once: the RTT is wanted early */
	if (s->ops->up(s) < 0 && s->state != PH_SESS_CLOSED)
		ph_sess_close(s, PH_GOAWAY_NORMAL, "refused");
}

static int sess_peer_open(struct ph_sess *s, const struct ph_frame *f, const char **why)
{
	bool peer_even = !s->server;

	if ((f->stream % 2 == 0) != peer_even || f->stream <= s->peer_last) {
		*why = "an OPEN with a stream id the peer may not use";
		return -EPROTO;
	}
	s->peer_last = f->stream;
	return s->ops->open(s, f->stream, f->payload, f->len, f->flags & PH_FRAME_F_FIN, why);
}

/* A frame for stream id that is not open: fine after a close here, an error if never opened. */
static int sess_stray(struct ph_sess *s, uint32_t id, const char **why)
{
	bool mine = (id % 2 == 0) == s->server;

	if ((mine && id >= s->next_id) || (!mine && id > s->peer_last)) {
		*why = "a frame for a stream never opened";
		return -EPROTO;
	}
	return 0;
}

/* The peer reset st: its text to the owner (printable only: it reaches the log), then the close. */
static void sess_peer_rst(struct ph_sess *s, struct ph_stream *st, const struct ph_frame *f)
{
	if (s->ops->reset != NULL) {
		char text[PH_RST_TEXT_MAX + 1];
		size_t n = f->len - 1u;

		for (size_t i = 0; i < n; i++)
			text[i] = f->payload[1 + i] >= 0x20 && f->payload[1 + i] < 0x7f
			                  ? (char)f->payload[1 + i]
			                  : '?';
		text[n] = '\0';
		s->ops->reset(s, st, f->payload[0], text);
	}
	stream_close(st, true, 0, rst_name(f->payload[0]), 0);
}

/* The peer connected st, a stream this end opened. Returns 0, or -EPROTO (*why). */
static int sess_opened(struct ph_sess *s, struct ph_stream *st, const struct ph_frame *f,
                       const char **why)
{
	struct ph_addr a;
	bool mine = (f->stream % 2 == 0) == s->server;

	if (!mine || ph_msg_addr_get(f->payload, f->len, &a) != (int)f->len) {
		*why = "an OPENED for a stream this end did not open, or a bad address";
		return -EPROTO;
	}
	st->opened = true;
	if (s->ops->opened != NULL)
		s->ops->opened(s, st, &a);
	return 0;
}

/* One frame, by its type: the dispatch in one switch, each case short (over 80 lines for
 * the ten types together; fuzz_session feeds it). */
static int sess_frame(struct ph_sess *s, const struct ph_frame *f, const char **why)
{
	struct ph_stream *st = NULL;
	uint32_t v;

	if (f->stream != 0 && f->type != PH_FRAME_OPEN) {
		st = stream_find(s, f->stream);
		if (st == NULL)
			return sess_stray(s, f->stream, why);
	}
	switch (f->type) {
	case PH_FRAME_CTRL:
		return s->ops->ctrl(s, f->payload, f->len, why);
	case PH_FRAME_OPEN:
		return sess_peer_open(s, f, why);
	case PH_FRAME_DATA:
		if (st->flags & ST_FIN_RCVD) {
			*why = "DATA after FIN";
			return -EPROTO;
		}
		if (f->len > st->rallow) {
			*why = "DATA beyond the stream's credit";
			return -EPROTO;
		}
		st->rallow -= f->len;
		s->st.bytes_in += f->len;
		stream_deliver(st, f->payload, f->len);
		return 0;
	case PH_FRAME_WINDOW:
		v = ph_get32(f->payload);
		if (st == NULL)
			return 0; /* the session's window: not used by this version */
		if (v == 0 || (uint64_t)st->credit + v > 0x7fffffffu) {
			*why = "a WINDOW increment of 0 or past 2 GiB";
			return -EPROTO;
		}
		st->credit += v;
		stream_want_send(st);
		return 0;
	case PH_FRAME_FIN:
		if (st->flags & ST_FIN_RCVD) {
			*why = "a second FIN";
			return -EPROTO;
		}
		stream_fin(st);
		return 0;
	case PH_FRAME_RST:
		sess_peer_rst(s, st, f);
		return 0;
	case PH_FRAME_OPENED:
		return sess_opened(s, st, f, why);
	case PH_FRAME_DGRAM:
		s->st.dgrams_in++;
		if (s->ops->dgram != NULL)
			s->ops->dgram(s, f->payload, f->len);
		return 0;
	case PH_FRAME_PING:
		(void)out_frame(s, PH_FRAME_PONG, 0, 0, f->payload, 8);
		kick(s);
		return 0;
	case PH_FRAME_PONG:
		if (s->ping_at != 0 && memcmp(f->payload, &s->ping_at, 8) == 0) {
			s->rtt_ms = s->loop->now - s->ping_at;
			s->ping_at = 0;
			if (s->ops->pong != NULL)
				s->ops->pong(s);
		}
		return 0;
	case PH_FRAME_GOAWAY: {
		char text[208];
		size_t n = f->len - 1u;

		for (size_t i = 0; i < n; i++) /* printable only: it reaches the log */
			text[i] = f->payload[1 + i] >= 0x20 && f->payload[1 + i] < 0x7f
			                  ? (char)f->payload[1 + i]
			                  : '?';
		text[n] = '\0';
		ph_sess_close(s, PH_GOAWAY_NORMAL, "the peer ended the session: %s",
		              n != 0 ? text : "no reason given");
		return 0;
	}
	default:
		*why = "an unknown frame type";
		return -EPROTO;
	}
}

/*
 * Handles the whole frames in s->in from in_off and keeps the rest where it is: it moves
 * to the front only when the room behind it is less than a frame (in_room()), so most
 * reads cost no copy.
 */
static void sess_input(struct ph_sess *s)
{
	uint32_t off = s->in_off;

	while (s->state == PH_SESS_UP) {
		struct ph_frame f;
		const char *why = NULL;
		int n = ph_frame_parse(s->in + off, s->in_len - off, &f, &why);

		if (n == -EAGAIN)
			break;
		if (n < 0 || sess_frame(s, &f, &why) < 0) {
			ph_sess_close(s, PH_GOAWAY_PROTOCOL, "protocol error: %s",
			              why != NULL ? why : "a bad frame");
			return;
		}
		off += (uint32_t)n;
	}
	if (s->state != PH_SESS_UP)
		return;
	s->in_off = off;
	if (s->in_off == s->in_len)
		s->in_off = s->in_len = 0;
}

/* Room for at least a whole frame behind the unparsed bytes. */
static uint32_t in_room(struct ph_sess *s)
{
	if (s->in_cap - s->in_len < PH_FRAME_HDR + PH_FRAME_MAX && s->in_off > 0) {
		memmove(s->in, s->in + s->in_off, s->in_len - s->in_off);
		s->in_len -= s->in_off;
		s->in_off = 0;
	}
	return s->in_cap - s->in_len;
}

/* Reads and handles frames until SSL has nothing or the budget is spent. */
static void sess_read(struct ph_sess *s)
{
	size_t budget = READ_BUDGET;

	s->read_wait = false;
	while (s->state == PH_SESS_UP) {
		int r;

		if (budget == 0) {
			s->read_wait = true;
			kick(s);
			return;
		}
		ERR_clear_error(); /* see sess_handshake */
		r = SSL_read(s->ssl, s->in + s->in_len, (int)in_room(s));
		ph_trace("session fd %d: SSL_read %d", s->io.fd, r);
		if (r <= 0) {
			int e = SSL_get_error(s->ssl, r);

			if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
				ERR_clear_error();
				(void)sess_flush(s); /* what SSL answered while reading */
				return;
			}
			if (e == SSL_ERROR_ZERO_RETURN)
				ph_sess_close(s, PH_GOAWAY_NORMAL, "the peer closed the session");
			else
				ph_sess_close(s, PH_GOAWAY_NORMAL, "session: %s",
				              e == SSL_ERROR_SYSCALL && errno != 0 ? strerror(errno)
				                                                   : ssl_reason());
			return;
		}
		s->in_len += (uint32_t)r;
		s->last_rx = s->loop->now;
		budget = (size_t)r >= budget ? 0 : budget - (size_t)r;
		sess_input(s);
	}
}

/* Fills the output from ready streams and hands it to SSL while the socket takes it. */
static void sess_send(struct ph_sess *s)
{
	size_t budget = SEND_BUDGET;

	if (s->ssl != NULL && (sess_flush(s) < 0 || s->want_write))
		return;
	while (s->state == PH_SESS_UP && !s->want_write) {
		/*
		 * Refill while there is room behind what waits without moving it: the
		 * output is written out whole before it is filled again, so no byte is
		 * moved twice.
		 */
		while (!ph_list_empty(&s->ready) &&
		       (pending(s) == 0 ||
		        (pending(s) < OUT_HIGH &&
		         s->out_len + PH_FRAME_HDR + PH_FRAME_MAX <= s->out_cap))) {
			struct ph_stream *st = container_of(s->ready.next, struct ph_stream, rnode);

			ph_list_del(&st->rnode);
			stream_serve(st);
			if (s->state != PH_SESS_UP)
				return;
			if (!(st->flags & ST_DEAD))
				stream_want_send(st); /* to the back, if it still may */
		}
		if (pending(s) == 0)
			break;
		if (s->ssl == NULL) { /* a session made for the fuzzer: the output goes nowhere */
			s->out_off = s->out_len = 0;
			continue;
		}
		int r;

		ERR_clear_error(); /* see sess_handshake */
		r = SSL_write(s->ssl, s->out + s->out_off, (int)pending(s));
		ph_trace("session fd %d: SSL_write %u: %d", s->io.fd, pending(s), r);
		if (r <= 0) {
			int e = SSL_get_error(s->ssl, r);

			if (e == SSL_ERROR_WANT_WRITE) { /* the wire is full: out it goes */
				ERR_clear_error();
				if (sess_flush(s) < 0)
					return;
				continue; /* want_write says whether the socket took it */
			}
			if (e == SSL_ERROR_WANT_READ) {
				ERR_clear_error();
				break;
			}
			ph_sess_close(s, PH_GOAWAY_NORMAL, "session: %s",
			              e == SSL_ERROR_SYSCALL && errno != 0 ? strerror(errno)
			                                                   : ssl_reason());
			return;
		}
		s->out_off += (uint32_t)r;
		if (s->out_off == s->out_len)
			s->out_off = s->out_len = 0;
		if ((size_t)r >= budget) {
			kick(s);
			break;
		}
		budget -= (size_t)r;
	}
	if (s->state == PH_SESS_UP && s->ssl != NULL)
		(void)sess_flush(s);
}

static void sess_io(struct ph_io *io, uint32_t events)
{
	struct ph_sess *s = container_of(io, struct ph_sess, io);

	ph_trace("session fd %d: events %x state %d", io->fd, events, s->state);
	if (s->state == PH_SESS_HANDSHAKE) {
		if ((events & (EPOLLERR | EPOLLHUP)) && sess_handshake_error(s))
			return;
		sess_handshake(s);
		if (s->state != PH_SESS_UP)
			return;
		events |= EPOLLIN; /* records that came with the handshake's last flight */
	}
	if (events & EPOLLOUT)
		s->want_write = false;
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))
		sess_read(s);
	else if (s->read_wait)
		kick(s);
	if (s->state == PH_SESS_UP)
		sess_send(s);
}

static void sess_free_dead(struct ph_sess *s)
{
	while (!ph_list_empty(&s->dead)) {
		struct ph_stream *st = container_of(s->dead.next, struct ph_stream, rnode);

		ph_list_del(&st->rnode);
		free(st);
	}
}

static void sess_task(struct ph_task *t)
{
	struct ph_sess *s = container_of(t, struct ph_sess, more);

	if (s->state == PH_SESS_CLOSED) { /* the session is over: free it */
		ph_sess_free(s);
		return;
	}
	while (s->state == PH_SESS_UP && !ph_list_empty(&s->flushq)) {
		struct ph_stream *st = container_of(s->flushq.next, struct ph_stream, fnode);

		ph_list_del(&st->fnode);
		(void)stream_flush(st);
	}
	if (s->state == PH_SESS_UP && s->read_wait)
		sess_read(s);
	if (s->state == PH_SESS_UP)
		sess_send(s);
	if (s->state == PH_SESS_CLOSED) {
		kick(s); /* freed next round */
		return;
	}
	sess_free_dead(s);
}

struct ph_sess *ph_sess_new(struct ph_loop *l, int fd, struct ssl_ctx_st *ctx, bool server,
                            const struct ph_sess_ops *ops, void *owner, uint64_t hb_ms)
{
	struct ph_sess *s = calloc(1, sizeof(*s));
	BIO *rbio, *wbio;

	if (s == NULL) {
		close(fd);
		return NULL;
	}
	s->loop = l;
	s->ops = ops;
	s->owner = owner;
	s->server = server;
	s->next_id = server ? 2 : 1;
	s->cap = PH_SESS_CAP;
	s->hb_ms = hb_ms != 0 ? hb_ms : PH_HEARTBEAT_MS;
	ph_list_init(&s->ready);
	ph_list_init(&s->flushq);
	ph_list_init(&s->dead);
	ph_task_init(&s->more, sess_task);
	ph_timer_init(&s->hb, sess_hb);
	ph_io_init(&s->io, fd, sess_io);
	sock_opts(fd, s->hb_ms);
	s->ssl = SSL_new(ctx);
	s->wire = malloc(WIRE_CAP);
	/* both ways through our BIO: reads and writes go through ph_sys */
	rbio = wire_method() != NULL ? BIO_new(wire_method()) : NULL;
	wbio = wire_method() != NULL ? BIO_new(wire_method()) : NULL;
	if (s->ssl == NULL || s->wire == NULL || rbio == NULL || wbio == NULL) {
		ERR_clear_error();
		BIO_free(rbio);
		BIO_free(wbio);
		SSL_free(s->ssl);
		free(s->wire);
		close(fd);
		free(s);
		return NULL;
	}
	BIO_set_data(wbio, s);
	BIO_set_init(wbio, 1);
	BIO_set_data(rbio, s);
	BIO_set_init(rbio, 1);
	SSL_set_bio(s->ssl, rbio, wbio); /* the SSL owns both */
	SSL_set_mode(s->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	                             SSL_MODE_RELEASE_BUFFERS);
	SSL_set_read_ahead(s->ssl, 1); /* a read takes what is there, not one record's header */
	if (server)
		SSL_set_accept_state(s->ssl);
	else
		SSL_set_connect_state(s->ssl);
	if (ph_io_add(l, &s->io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) < 0 ||
	    ph_timer_arm(l, &s->hb, PH_HANDSHAKE_MS) < 0) {
		SSL_free(s->ssl);
		free(s->wire);
		ph_io_close(l, &s->io);
		free(s);
		return NULL;
	}
	return s; /* the client's hello goes on the first EPOLLOUT: once connected */
}

void ph_sess_close(struct ph_sess *s, uint8_t reason, const char *fmt, ...)
{
	va_list ap;

	if (s->state == PH_SESS_CLOSED)
		return;
	va_start(ap, fmt);
	vsnprintf(s->why, sizeof(s->why), fmt, ap);
	va_end(ap);
	if (s->state == PH_SESS_UP && s->ssl != NULL) {
		uint8_t p[1 + 200];
		size_t n = strlen(s->why) > 200 ? 200 : strlen(s->why);

		p[0] = reason;
		memcpy(p + 1, s->why, n);
		/* a last word if the socket takes it now; nothing waits for it */
		if (out_frame(s, PH_FRAME_GOAWAY, 0, 0, p, 1 + n) == 0 && !s->want_write) {
			ERR_clear_error();
			while (pending(s) > 0) {
				int r = SSL_write(s->ssl, s->out + s->out_off, (int)pending(s));

				if (r <= 0)
					break;
				s->out_off += (uint32_t)r;
			}
			(void)SSL_shutdown(s->ssl);
			ERR_clear_error();
			(void)wire_flush(s);
		}
	}
	sess_set_state(s, PH_SESS_CLOSED);
	for (uint32_t i = 0; s->tab != NULL && i <= s->tab_mask; i++)
		while (s->tab[i] != NULL)
			stream_close(s->tab[i], true, 0, "the session ended", 0);
	ph_timer_stop(s->loop, &s->hb);
	ph_io_close(s->loop, &s->io);
	kick(s);
	if (s->ops->closed != NULL)
		s->ops->closed(s, s->why);
}

void ph_sess_free(struct ph_sess *s)
{
	if (s == NULL)
		return;
	if (s->state != PH_SESS_CLOSED)
		ph_sess_close(s, PH_GOAWAY_NORMAL, "shutting down");
	ph_task_cancel(&s->more);
	sess_free_dead(s);
	SSL_free(s->ssl);
	free(s->wire);
	free(s->in);
	free(s->out);
	free(s->tab);
	free(s);
}

struct ph_sess *ph_sess_new_plain(struct ph_loop *l, bool server, const struct ph_sess_ops *ops,
                                  void *owner)
{
	struct ph_sess *s = calloc(1, sizeof(*s));

	if (s == NULL)
		return NULL;
	s->loop = l;
	s->ops = ops;
	s->owner = owner;
	s->server = server;
	s->next_id = server ? 2 : 1;
	s->cap = PH_SESS_CAP;
	s->hb_ms = PH_HEARTBEAT_MS;
	ph_list_init(&s->ready);
	ph_list_init(&s->flushq);
	ph_list_init(&s->dead);
	ph_task_init(&s->more, sess_task);
	ph_timer_init(&s->hb, sess_hb);
	ph_io_init(&s->io, -1, sess_io);
	s->in = malloc(IN_CAP);
	s->out = malloc(OUT_HIGH + PH_FRAME_HDR + PH_FRAME_MAX);
	if (s->in == NULL || s->out == NULL) {
		free(s->in);
		free(s->out);
		free(s);
		return NULL;
	}
	s->in_cap = IN_CAP;
	s->out_cap = OUT_HIGH + PH_FRAME_HDR + PH_FRAME_MAX;
	sess_set_state(s, PH_SESS_UP);
	return s;
}

int ph_sess_feed(struct ph_sess *s, const uint8_t *p, size_t n)
{
	while (n > 0 && s->state == PH_SESS_UP) {
		size_t room = in_room(s), k = room < n ? room : n;

		memcpy(s->in + s->in_len, p, k);
		s->in_len += (uint32_t)k;
		p += k;
		n -= k;
		sess_input(s);
		if (s->state == PH_SESS_UP)
			sess_send(s);
	}
	return s->state == PH_SESS_UP ? 0 : -EPROTO;
}

int ph_sess_ctrl(struct ph_sess *s, const uint8_t *p, size_t n)
{
	if (out_frame(s, PH_FRAME_CTRL, 0, 0, p, n) < 0)
		return -ENOMEM;
	kick(s);
	return 0;
}

int ph_sess_dgram(struct ph_sess *s, const uint8_t *p, size_t n)
{
	if (s->state != PH_SESS_UP || pending(s) + PH_FRAME_HDR + n > DGRAM_ROOM ||
	    out_frame(s, PH_FRAME_DGRAM, 0, 0, p, n) < 0) {
		s->st.dgrams_drop++;
		return -ENOBUFS;
	}
	s->st.dgrams_out++;
	kick(s);
	return 0;
}

struct ph_stream *ph_sess_open(struct ph_sess *s, int fd, const uint8_t *head, size_t hn,
                               void *owner)
{
	struct ph_stream *st;
	uint32_t room = PH_FRAME_MAX - (uint32_t)hn;
	ssize_t n;
	uint8_t *p;

	if (s->state != PH_SESS_UP || hn > PH_OPEN_HEAD_MAX || s->next_id > 0xfffffff0u ||
	    out_room(s, PH_FRAME_HDR + PH_FRAME_MAX) < 0) {
		ph_sock_set_rst(fd);
		close(fd);
		return NULL;
	}
	st = stream_new(s, s->next_id, fd, owner);
	if (st == NULL) {
		ph_sock_set_rst(fd);
		close(fd);
		return NULL;
	}
	s->next_id += 2;
	p = s->out + s->out_len;
	memcpy(p + PH_FRAME_HDR, head, hn);
	do /* the visitor's first bytes ride with the OPEN */
		n = ph_sys.read(fd, p + PH_FRAME_HDR + hn, room);
	while (n < 0 && errno == EINTR);
	if (n < 0 && errno != EAGAIN) {
		st->owner = NULL; /* NULL means the owner hears nothing of it: no stream_end */
		/* reset before a word: the peer never hears of it */
		stream_close(st, true, 0, "socket error", -errno);
		return NULL;
	}
	if (n > 0) {
		st->credit -= (uint32_t)n;
		st->bytes_in += (uint64_t)n;
		s->st.bytes_out += (uint64_t)n;
		if ((uint32_t)n == room)
			st->flags |= ST_READABLE;
	} else if (n == 0) {
		st->flags |= ST_EOF;
	}
	ph_frame_header(PH_FRAME_OPEN, n == 0 ? PH_FRAME_F_FIN : 0, st->id,
	                (uint16_t)(hn + (n > 0 ? (size_t)n : 0)), p);
	s->out_len += PH_FRAME_HDR + (uint32_t)hn + (uint32_t)(n > 0 ? n : 0);
	if (ph_io_add(s->loop, &st->io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) < 0) {
		st->owner = NULL; /* as promised: NULL, and no stream_end for it */
		stream_close(st, true, PH_RST_RESET, "cannot poll", -ENOMEM);
		return NULL;
	}
	stream_want_send(st);
	kick(s);
	return st;
}

struct ph_stream *ph_stream_attach(struct ph_sess *s, uint32_t id, int fd, bool connecting,
                                   const uint8_t *pre, size_t pn, const uint8_t *first, size_t fn,
                                   bool fin, void *owner)
{
	struct ph_stream *st = stream_new(s, id, fd, owner);

	if (st == NULL) {
		close(fd);
		ph_sess_rst(s, id, PH_RST_OVERLOAD);
		return NULL;
	}
	if (fn > st->rallow) { /* cannot be: an OPEN holds less than a window */
		stream_close(st, true, PH_RST_RESET, "an OPEN past its window", 0);
		return NULL;
	}
	st->rallow -= (uint32_t)fn;
	s->st.bytes_in += fn;
	if (connecting)
		st->flags |= ST_CONNECTING;
	if ((pn != 0 && stream_buf_add(st, pre, pn) < 0) ||
	    (fd != -1 &&
	     ph_io_add(s->loop, &st->io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) < 0)) {
		stream_close(st, true, PH_RST_OVERLOAD, "out of memory", -ENOMEM);
		return NULL;
	}
	if (fn != 0 && st->blen != 0) {
		if (stream_buf_add(st, first, fn) < 0) {
			stream_close(st, true, PH_RST_OVERLOAD, "out of memory", -ENOMEM);
			return NULL;
		}
	} else if (fn != 0) {
		stream_deliver(st, first, fn);
		if (st->flags & ST_DEAD)
			return NULL;
	}
	if (fin)
		stream_fin(st);
	if (st->flags & ST_DEAD)
		return NULL;
	if (!connecting) {
		st->flags |= ST_READABLE;
		stream_want_send(st);
		if (st->blen > 0 && ph_list_empty(&st->fnode)) {
			ph_list_add_tail(&s->flushq, &st->fnode);
			kick(s);
		}
	}
	return st;
}

void ph_stream_log_end(const struct ph_stream *st, const char *label, const char *what,
                       const struct ph_addr *dst, bool visitor_here)
{
	/* up: from the visitor, which is this end's socket on the relay, the peer's on a client */
	uint64_t up = visitor_here ? st->bytes_in : st->bytes_out;
	uint64_t down = visitor_here ? st->bytes_out : st->bytes_in;
	char line[512], id[16];

	if (st->failed ? PH_LOG_INFO > ph_log_level : PH_LOG_DEBUG > ph_log_level)
		return; /* nothing would be said: nothing formatted */
	snprintf(id, sizeof(id), "s%u", st->id);
	ph_conn_line(line, sizeof(line), id, &st->peer, dst, st->why != NULL ? st->why : "closed",
	             st->err, up, down, st->s->loop->now - st->opened_at, label);
	if (st->failed)
		ph_logagg_note(label, what, st->why != NULL ? st->why : "reset", "%s", line);
	else
		ph_debug("%s", line);
}

void ph_sess_rst(struct ph_sess *s, uint32_t id, uint8_t reason)
{
	(void)out_frame(s, PH_FRAME_RST, 0, id, &reason, 1);
	s->st.resets++;
	kick(s);
}

void ph_sess_rst_text(struct ph_sess *s, uint32_t id, uint8_t reason, const char *fmt, ...)
{
	char text[PH_RST_TEXT_MAX + 1];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	rst_frame(s, id, reason, text);
	s->st.resets++;
	kick(s);
}

int ph_stream_set_fd(struct ph_stream *st, int fd)
{
	if (st->flags & ST_DEAD) {
		close(fd);
		return -ECANCELED;
	}
	st->io.fd = fd;
	st->flags |= ST_CONNECTING;
	/* a connected socket's EPOLLOUT comes at once: stream_connected() takes it from there */
	if (ph_io_add(st->s->loop, &st->io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) < 0) {
		stream_close(st, true, PH_RST_OVERLOAD, "cannot poll", -ENOMEM);
		return -ENOMEM;
	}
	return 0;
}

void ph_stream_await_socket(struct ph_stream *st)
{
	st->flags |= ST_HOLD | ST_HANDOFF;
}

bool ph_stream_connecting(const struct ph_stream *st)
{
	return (st->flags & ST_CONNECTING) != 0;
}

void ph_stream_confirm(struct ph_stream *st)
{
	if (st->flags & ST_DEAD)
		return;
	st->flags |= ST_CONFIRM;
	if (!(st->flags & ST_CONNECTING))
		stream_opened(st);
}

void ph_stream_fail(struct ph_stream *st, uint8_t reason, const char *why, int err, const char *fmt,
                    ...)
{
	char text[PH_RST_TEXT_MAX + 1];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	stream_close_text(st, true, reason, why, err, text);
}

int ph_stream_inject(struct ph_stream *st, const void *p, size_t n)
{
	const uint8_t *b = p;
	ssize_t w;
	size_t done;

	if (st->flags & ST_DEAD)
		return -ECANCELED;
	w = stream_write_now(st, b, n);
	if (w < 0)
		return (int)w;
	done = (size_t)w;
	if (done < n && stream_buf_add(st, b + done, n - done) < 0) {
		stream_close(st, true, PH_RST_OVERLOAD, "out of memory", -ENOMEM);
		return -ENOMEM;
	}
	return 0;
}

void ph_sess_drop_owner(struct ph_sess *s, void *owner)
{
	for (uint32_t i = 0; s->tab != NULL && i <= s->tab_mask; i++) {
		struct ph_stream *st = s->tab[i];

		while (st != NULL) {
			struct ph_stream *next = st->hnext;

			if (st->owner == owner)
				stream_close(st, true, PH_RST_NOSERVICE, "the service closed", 0);
			st = next;
		}
	}
}
