/*
 * The way a verb on a worker thread (`socks --via`) has a connection made by the relay
 * client on the main thread: a channel per relay (a SOCK_SEQPACKET socket pair) carries
 * each request - the target and one end of a fresh stream socket pair - from any worker to
 * the client, which opens a stream on its session for it. The worker keeps the other end:
 * the client writes a reply record into it first (the relay connected, or why not), then
 * the stream's bytes. No state is shared between the threads but the channel's fds.
 *
 * Channels live in a process-wide table keyed by the relay client's identity (relay, key,
 * pin), made while the configuration is read on the main thread, so that a reload's new
 * socks rules find the channel the running client reads.
 */
#ifndef PH_CONN_VIA_H
#define PH_CONN_VIA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/addr.h"

#define PH_VIA_KEY_MAX   1200 /* a client's identity as a string */
#define PH_VIA_HOST_MAX  253  /* a target host: a name or an address literal */
#define PH_VIA_TEXT_MAX  200  /* a reply's words */
#define PH_VIA_REQ_MAX   (4 + PH_VIA_HOST_MAX)
#define PH_VIA_REPLY_HDR 21 /* status, family, port, 16 address bytes, text length */

/* Reply statuses. */
enum ph_via_status {
	PH_VIA_OK = 0,
	PH_VIA_REFUSED = 1,     /* the target refused the connection */
	PH_VIA_FORBIDDEN = 2,   /* the relay does not let this key go there */
	PH_VIA_UNREACHABLE = 3, /* no route to the target */
	PH_VIA_NONAME = 4,      /* the name does not resolve (on the relay) */
	PH_VIA_TIMEOUT = 5,     /* the target did not answer in time */
	PH_VIA_DOWN = 6,        /* the relay is not connected now */
	PH_VIA_FAILED = 7,      /* anything else */
};

struct ph_via;

/* A request as the client reads it. */
struct ph_via_req {
	bool udp;     /* a UDP association: SOCK_SEQPACKET, no host, port 0 (ph_via_assoc) */
	bool handoff; /* once connected, the worker sends its client's socket (ph_via_hand) */
	uint16_t port;
	char host[PH_VIA_HOST_MAX + 1];
};

/* A reply as the worker reads it. */
struct ph_via_reply {
	uint8_t status;       /* enum ph_via_status */
	struct ph_addr bound; /* OK: where the relay's connection leaves from; AF_UNSPEC none */
	char text[PH_VIA_TEXT_MAX + 1];
};

/*
 * The channel of the relay client named key, made on first use (main thread only).
 * Returns it (owned by the table, freed by ph_via_free_all), or NULL (out of memory or fds).
 */
struct ph_via *ph_via_get(const char *key);

/* The fd the client reads requests from. */
int ph_via_rx(const struct ph_via *v);

/* Frees every channel; at exit, once no thread uses them. */
void ph_via_free_all(void);

/*
 * From any thread: asks the client to connect to host:port through its relay. Returns the
 * worker's end of the stream (non-blocking; the reply record comes first, then the
 * target's bytes), or -errno (-EAGAIN: the channel is full).
 */
int ph_via_dial(struct ph_via *v, const char *host, uint16_t port);

/*
 * As ph_via_dial, and once the reply said OK the worker hands its client's socket over
 * (ph_via_hand) instead of pumping between it and the stream: the relay client then reads
 * and writes the client itself. Until the socket comes, the target's bytes wait there.
 */
int ph_via_dial_handoff(struct ph_via *v, const char *host, uint16_t port);

/*
 * The worker's side: sends client (its socket, which the worker then closes) over stream,
 * the end ph_via_dial_handoff returned, behind a marker byte. Returns 0 or -errno.
 */
int ph_via_hand(int stream, int client);

/*
 * A UDP association (socks UDP ASSOCIATE) through the relay: the worker's end of a
 * SOCK_SEQPACKET pair, a message a datagram. The worker sends each datagram behind a
 * destination header (ph_via_dgram_put: port, host - a name or an address literal - as
 * the SOCKS client wrote it); the client opens a channel per destination (16 at most, the
 * least recently used first) and sends each answer back behind the address it came from
 * (ph_via_from_get). The end of either end's socket ends the association. Returns the fd
 * or -errno.
 */
int ph_via_assoc(struct ph_via *v);

#define PH_VIA_DGRAM_HDR_MAX (3 + PH_VIA_HOST_MAX) /* port, host length, host */
#define PH_VIA_FROM_MAX      (1 + 2 + 16)          /* family (0, 4, 6), port, address */

/* Writes a datagram's destination header into out. Returns its length. */
size_t ph_via_dgram_put(const char *host, uint16_t port, uint8_t *out);

/* Reads one: the host (terminated) and port. Returns the header's length or -EPROTO. */
int ph_via_dgram_get(const uint8_t *p, size_t n, char host[PH_VIA_HOST_MAX + 1], uint16_t *port);

/* Writes an answer's source address (NULL or none: family 0). Returns its length. */
size_t ph_via_from_put(const struct ph_addr *a, uint8_t *out);

/* Reads one into a (AF_UNSPEC for none). Returns its length or -EPROTO. */
int ph_via_from_get(const uint8_t *p, size_t n, struct ph_addr *a);

/*
 * The client's side: reads one request from the channel rx. Returns the stream fd (the
 * caller's) with *req filled, -EAGAIN when none waits, or another -errno (a malformed
 * request: its fd, if any, was closed).
 */
int ph_via_recv(int rx, struct ph_via_req *req);

/*
 * recvmsg(2) of up to n bytes into p from sock, not blocking: the first fd a message
 * carried (SCM_RIGHTS) in *fd, -1 when none (any more are closed); *truncated (when not
 * NULL) says the data or the fds did not all fit. Returns the bytes, 0 at the end, or
 * -errno (-EAGAIN: nothing waits).
 */
ssize_t ph_via_recv_fd(int sock, void *p, size_t n, int *fd, bool *truncated);

/* Writes a reply record into out (PH_VIA_REPLY_HDR + PH_VIA_TEXT_MAX bytes). Returns its length. */
size_t ph_via_reply_put(uint8_t status, const struct ph_addr *bound, const char *text,
                        uint8_t *out);

/*
 * Parses a reply record at p[0..n). Returns its length with *r set, -EAGAIN when more
 * bytes are needed, or -EPROTO.
 */
int ph_via_reply_parse(const uint8_t *p, size_t n, struct ph_via_reply *r);

/* The errno a status stands for (for SOCKS and HTTP replies): 0 for OK. */
int ph_via_errno(uint8_t status);

#endif /* PH_CONN_VIA_H */
