/*
 * A relay session (docs/PROTOCOL.md): one TLS 1.3 connection carrying frames, and the
 * streams multiplexed on it. The same code runs on both ends; the relay and the client
 * add what differs (who opens streams, what CTRL messages mean) through ph_sess_ops.
 *
 * Data path. Stream -> session: a stream whose socket is readable and that has credit is
 * on the session's ready ring; the session reads each in turn, 16 KiB at most, straight
 * into its output buffer behind a DATA header, and writes that buffer with SSL_write
 * while the socket takes it (TCP_NOTSENT_LOWAT keeps the kernel's share small, so an
 * interactive stream never waits behind seconds of bulk). Session -> stream: a DATA
 * frame is written to the stream's socket from the decrypted input buffer; only what the
 * socket does not take is copied into the stream's own buffer, which exists only while
 * bytes wait. Credit goes back (WINDOW) as bytes leave for the socket, and a stream whose
 * whole window drained within a round trip gets a window twice as large, up to 16 MiB.
 */
#ifndef PH_TUNNEL_SESSION_H
#define PH_TUNNEL_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"
#include "core/loop.h"
#include "tunnel/keys.h"

struct ssl_ctx_st;
struct ssl_st;
struct ph_sess;
struct ph_stream;

#define PH_RELAY_PORT      7835
#define PH_WIN_INIT        (256u << 10) /* a stream's first window, each way */
#define PH_WIN_MAX         (16u << 20)  /* the most a window grows to */
#define PH_SESS_CAP        (64u << 20)  /* bytes a session may hold for its streams */
#define PH_HEARTBEAT_MS    10000        /* PING interval; 3 missed end the session */
#define PH_HANDSHAKE_MS    10000        /* TLS handshake deadline */
#define PH_RST_REFUSED     1            /* RST reasons: the target refused or failed */
#define PH_RST_RESET       2            /* the socket was reset */
#define PH_RST_NOSERVICE   3            /* no such service */
#define PH_RST_OVERLOAD    4            /* memory cap or limits */
#define PH_RST_FORBIDDEN   5            /* the key has no grant for that target */
#define PH_RST_UNREACHABLE 6            /* no route to the target */
#define PH_RST_NONAME      7            /* the target's name does not resolve */
#define PH_RST_TIMEOUT     8            /* the target did not answer in time */
#define PH_RST_TEXT_MAX    200          /* a RST's text, after its reason */
#define PH_OPEN_HEAD_MAX   300          /* an OPEN's head before the first bytes */
#define PH_GOAWAY_NORMAL   0            /* GOAWAY reasons */
#define PH_GOAWAY_PROTOCOL 1
#define PH_GOAWAY_TIMEOUT  2
#define PH_GOAWAY_REPLACED 3

/* Counters of one session, read by status. */
struct ph_sess_stats {
	uint64_t streams;     /* streams opened (both ways) */
	uint64_t active;      /* streams alive now */
	uint64_t bytes_in;    /* stream bytes received from the peer */
	uint64_t bytes_out;   /* stream bytes sent to the peer */
	uint64_t dgrams_in;   /* datagrams received */
	uint64_t dgrams_out;  /* datagrams sent */
	uint64_t dgrams_drop; /* datagrams dropped: the session's output was full */
	uint64_t resets;      /* streams reset */
};

struct ph_sess_ops {
	/* The handshake is done; the peer's key is s->peer. Returns 0, or < 0 to end it. */
	int (*up)(struct ph_sess *s);
	/* A CTRL message. Returns 0, or < 0 to end the session (*why says why). */
	int (*ctrl)(struct ph_sess *s, const uint8_t *p, size_t n, const char **why);
	/*
	 * The peer opened stream id with payload p (the OPEN's, first bytes included);
	 * fin: the first bytes are all there will be. The owner calls ph_stream_attach
	 * or answers with ph_sess_rst. Returns 0, or < 0 to end the session (*why).
	 */
	int (*open)(struct ph_sess *s, uint32_t id, const uint8_t *p, size_t n, bool fin,
	            const char **why);
	/* A DGRAM frame's payload. */
	void (*dgram)(struct ph_sess *s, const uint8_t *p, size_t n);
	/*
	 * Optional. The peer connected st, a stream this end opened (an OPENED frame); bound
	 * is where the far end's connection leaves from (AF_UNSPEC: it did not say).
	 */
	void (*opened)(struct ph_sess *s, struct ph_stream *st, const struct ph_addr *bound);
	/*
	 * Optional. The peer reset st with reason (PH_RST_*) and text (printable, may be "");
	 * called just before st closes.
	 */
	void (*reset)(struct ph_sess *s, struct ph_stream *st, uint8_t reason, const char *text);
	/* Optional. A PONG answered this end's PING: the peer reads what it is sent. */
	void (*pong)(struct ph_sess *s);
	/* A stream ended (its socket is closed by now): counters for the owner. */
	void (*stream_end)(struct ph_sess *s, struct ph_stream *st);
	/* The session ended (why: a reason for the log). The owner frees it later. */
	void (*closed)(struct ph_sess *s, const char *why);
};

enum ph_sess_state {
	PH_SESS_HANDSHAKE = 0, /* TLS 1.3 handshake in flight; its deadline armed */
	PH_SESS_UP,            /* frames both ways; heartbeats armed */
	PH_SESS_CLOSED,        /* ended (GOAWAY sent if it could be); freed by its owner */
	PH_SESS__NSTATES       /* must stay last */
};

/* The name of state st, for traces and tests ("?" past the last). */
const char *ph_sess_state_name(enum ph_sess_state st);

struct ph_sess {
	struct ph_io io;
	struct ph_loop *loop;
	struct ssl_st *ssl;
	const struct ph_sess_ops *ops;
	void *owner;
	enum ph_sess_state state;
	bool server;     /* the relay's end: opens even stream ids */
	bool want_write; /* SSL wants the socket writable */
	bool read_wait;  /* input was left in SSL or the socket: the task continues */
	bool timed_out;  /* it ended because the peer fell silent for three heartbeats */
	uint8_t peer[PH_KEY_LEN];
	struct ph_addr peer_addr;
	/* input: decrypted bytes not yet parsed */
	uint8_t *in;
	uint32_t in_off, in_len, in_cap; /* unparsed bytes: in[in_off..in_len) */
	/* TLS records SSL wrote, not yet taken by the socket */
	uint8_t *wire;
	uint32_t wire_off, wire_len;
	/* output: frames not yet taken by SSL_write */
	uint8_t *out;
	uint32_t out_off, out_len, out_cap;
	/* streams */
	struct ph_stream **tab; /* open hashing by id */
	uint32_t tab_mask, nstreams;
	uint32_t next_id;      /* the next id this end opens */
	uint32_t peer_last;    /* the highest id the peer opened */
	struct ph_list ready;  /* streams with bytes to send and credit */
	struct ph_list flushq; /* streams whose socket takes buffered bytes again */
	struct ph_list dead;   /* closed streams, freed by the task */
	uint64_t buffered;     /* bytes held in stream buffers */
	uint64_t cap;          /* most bytes held before the biggest holder is reset */
	struct ph_task more;   /* continues work cut short by the budget */
	/* liveness */
	struct ph_timer hb;
	uint64_t hb_ms;
	uint64_t last_rx; /* loop time a frame last arrived */
	uint64_t ping_at; /* loop time of the outstanding PING, 0 none */
	uint64_t rtt_ms;  /* the last PING's round trip; 0 until measured */
	uint64_t up_at;   /* loop time the handshake finished */
	struct ph_sess_stats st;
	char why[160]; /* why it closed */
};

/* What a stream does with the peer's bytes. */
struct ph_stream {
	struct ph_io io; /* the local socket: a visitor (relay), the service (client) */
	struct ph_sess *s;
	uint32_t id;
	uint32_t credit;   /* bytes this end may still send */
	uint32_t rwin;     /* the window granted to the peer */
	uint32_t rallow;   /* bytes the peer may still send */
	uint32_t consumed; /* bytes drained to the socket, not yet given back */
	uint32_t epoch;    /* bytes drained since epoch_t */
	uint64_t epoch_t;
	uint8_t *buf; /* bytes for the socket that it did not take yet; NULL when none */
	uint32_t boff, blen, bcap;
	uint16_t flags;
	struct ph_stream *hnext;
	struct ph_list rnode; /* in s->ready */
	struct ph_list fnode; /* in s->flushq */
	void *owner;          /* the service, for the owner's counters */
	uint64_t bytes_in, bytes_out;
	/* for the close line (ph_stream_log_end) */
	struct ph_addr peer; /* the visitor, when the owner set it; AF_UNSPEC none */
	uint64_t opened_at;  /* loop time */
	const char *why;     /* static: why it ended, set at close */
	int err;             /* -errno behind why, or 0 */
	bool failed;         /* it ended with a reset (either way) */
	bool opened;         /* this end opened it and the peer said OPENED */
};

/*
 * Starts a session on fd (a connected TCP socket, non-blocking), the TLS handshake first.
 * The session owns fd. Returns it, or NULL (fd closed).
 */
struct ph_sess *ph_sess_new(struct ph_loop *l, int fd, struct ssl_ctx_st *ctx, bool server,
                            const struct ph_sess_ops *ops, void *owner, uint64_t hb_ms);

/* Ends the session: a GOAWAY with reason and text is sent if it can be, streams reset. */
void ph_sess_close(struct ph_sess *s, uint8_t reason, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Frees a closed session (after ops->closed, from outside its callbacks). */
void ph_sess_free(struct ph_sess *s);

/* Queues a CTRL message. Returns 0, or -ENOMEM. */
int ph_sess_ctrl(struct ph_sess *s, const uint8_t *p, size_t n);

/* Queues a DGRAM frame unless the output is full (dropped and counted). Returns 0 or -ENOBUFS. */
int ph_sess_dgram(struct ph_sess *s, const uint8_t *p, size_t n);

/*
 * Opens a stream for the local socket fd (connected, or connecting when connecting) with
 * an OPEN frame whose payload is head[0..hn) followed by whatever fd has to read now.
 * Returns the stream, or NULL (fd closed, and ops->stream_end not called for it).
 */
struct ph_stream *ph_sess_open(struct ph_sess *s, int fd, const uint8_t *head, size_t hn,
                               void *owner);

/*
 * Answers the peer's OPEN of id with a stream on fd (connecting when connecting: bytes
 * wait until it is connected), with pre[0..pn) (a PROXY header) and first[0..fn) (the
 * OPEN's bytes) to write first, and fin when the peer already finished. Returns the
 * stream, or NULL: fd is closed and the peer told (RST).
 */
struct ph_stream *ph_stream_attach(struct ph_sess *s, uint32_t id, int fd, bool connecting,
                                   const uint8_t *pre, size_t pn, const uint8_t *first, size_t fn,
                                   bool fin, void *owner);

/*
 * For the fuzzer: a session already up, with no TLS and no socket, whose output is
 * dropped; ph_sess_feed() hands it decrypted bytes as if they had arrived. Returns 0, or
 * -EPROTO once the bytes ended the session (freed with ph_sess_free).
 */
struct ph_sess *ph_sess_new_plain(struct ph_loop *l, bool server, const struct ph_sess_ops *ops,
                                  void *owner);
int ph_sess_feed(struct ph_sess *s, const uint8_t *p, size_t n);

/*
 * A stream's one close line, from the owner's stream_end: at -v (debug) for each stream;
 * a failed one below -v is counted under label (core/logagg.h) as one of what ("visitors").
 * dst is the other end (NULL: none); visitor_here: the stream's socket is the visitor (the
 * relay), so its bytes read are "up". Borrows everything.
 */
void ph_stream_log_end(const struct ph_stream *st, const char *label, const char *what,
                       const struct ph_addr *dst, bool visitor_here);

/* Answers a stream the owner will not take with a RST of reason. */
void ph_sess_rst(struct ph_sess *s, uint32_t id, uint8_t reason);

/* The same with a text for the peer's log ("key laptop may not reach 'db'"). */
void ph_sess_rst_text(struct ph_sess *s, uint32_t id, uint8_t reason, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/*
 * A stream ph_stream_attach() took with fd -1 (the owner looks the target up first) gets
 * its socket, connecting: bytes from the peer waited for it. Returns 0, or -errno (the
 * stream is closed and the peer told).
 */
int ph_stream_set_fd(struct ph_stream *st, int fd);

/*
 * st's socket (a socket pair's end) will be replaced by the socket its other end sends
 * with SCM_RIGHTS behind one marker byte: the peer's bytes wait for it (injected ones do
 * not), what comes before the marker is st's as usual, and an end without it resets st.
 */
void ph_stream_await_socket(struct ph_stream *st);

/* True while st's socket is not connected yet (or it has none). */
bool ph_stream_connecting(const struct ph_stream *st);

/*
 * The peer is told (OPENED) once st is connected - now, when it is: with the address its
 * socket has here. A connect that fails resets the stream with the error's words.
 */
void ph_stream_confirm(struct ph_stream *st);

/* Ends st with a RST of reason and a text for the peer; why (static) for the close line. */
void ph_stream_fail(struct ph_stream *st, uint8_t reason, const char *why, int err, const char *fmt,
                    ...) __attribute__((format(printf, 5, 6)));

/*
 * Writes p[0..n) to st's socket ahead of the peer's bytes, outside the stream's credit
 * (a reply record of this end's own). Returns 0, or -errno (the stream is closed).
 */
int ph_stream_inject(struct ph_stream *st, const void *p, size_t n);

/* Closes every stream whose owner is owner (a service going away), with resets. */
void ph_sess_drop_owner(struct ph_sess *s, void *owner);

/* Big-endian helpers for the message code. */
static inline uint16_t ph_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}
static inline uint32_t ph_get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void ph_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}
static inline void ph_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

#endif /* PH_TUNNEL_SESSION_H */
