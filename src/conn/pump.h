/*
 * The TCP data path between two sockets of this host: moves bytes both ways until both
 * directions have ended. Every socket-to-socket connection uses it (forward, socks);
 * the relay's streams are socket-to-session and move through tunnel/session.c instead.
 *
 * Each direction splices socket -> pipe -> socket; the pipe comes from the worker's pool
 * when bytes arrive (its two fds from the fd budget) and goes back as soon as it is empty,
 * so an idle pump holds no pipe and no buffer; when the budget has no fds for a pipe, the
 * direction copies through a 16 KiB buffer instead. A FIN is passed on as a FIN (shutdown
 * of the write side) while the other direction keeps flowing; a reset is passed on as a
 * reset.
 */
#ifndef PH_CONN_PUMP_H
#define PH_CONN_PUMP_H

#include <stdbool.h>
#include <stdint.h>

#include "core/loop.h"
#include "core/pipepool.h"

struct ph_worker;
struct ph_pump;
struct ph_stats;

/*
 * Why a pump ended: 0 both directions finished with FINs (the last FIN is sent by the
 * close() in ph_pump_close(), which the owner calls at once); -ECONNRESET one side reset and
 * the reset was passed on; other -errno a failure (no pipe, ...), both sides reset.
 * side says which socket (0 or 1) the reason came from, -1 when neither.
 */
typedef void (*ph_pump_done_fn)(struct ph_pump *p, int err, int side);

struct ph_pump_dir {
	struct ph_pipe *pipe; /* owned while bytes are in flight, else NULL */
	uint8_t *buf;         /* owned: instead of a pipe when the fd budget has none */
	uint32_t boff;        /* where the bytes in flight start in buf */
	uint32_t inflight;    /* bytes in the pipe (or buf) */
	uint8_t flags;        /* PUMP_EOF, PUMP_SHUT */
	uint64_t bytes;       /* bytes delivered to the destination */
};

struct ph_pump {
	struct ph_io io[2];        /* [0] the accepted side, [1] the side we connected */
	struct ph_pump_dir dir[2]; /* dir[0] moves io[0] -> io[1], dir[1] io[1] -> io[0] */
	uint8_t ready[2];          /* readiness seen per socket and not yet used up */
	bool running;              /* between start and end */
	struct ph_task more;       /* continues a pump that used up its budget */
	struct ph_worker *w;       /* borrowed */
	uint64_t last;             /* loop time of the last byte moved, for idle timeouts */
	struct ph_stats *rs;       /* borrowed, may be NULL: the owner's counters, counted too */
	int8_t first_fin;          /* the socket (0 or 1) whose FIN came first; -1 none yet */
	ph_pump_done_fn done;
};

/*
 * Prepares p for fds a and b (both non-blocking, connected). p owns the fds from here:
 * ph_pump_close() closes them. done is called once when the pump ends by itself.
 */
void ph_pump_init(struct ph_pump *p, struct ph_worker *w, int a, int b, ph_pump_done_fn done);

/*
 * Before start: only io[1] -> io[0] will move; what io[0] sends is left unread (its reset
 * still ends the pump). For a forwarded HTTP request without a body: nothing the client
 * sends after it may reach that server.
 */
void ph_pump_down_only(struct ph_pump *p);

/* The epoll events a pump's sockets are registered with. */
#define PH_PUMP_EVENTS (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)

/*
 * Starts moving bytes: io[0] and io[1] are added to epoll. Returns 0, or -errno and p is not
 * running (the caller closes it).
 */
int ph_pump_start(struct ph_pump *p);

/*
 * Starts moving bytes when the owner already registered io[1] with PH_PUMP_EVENTS (as
 * forward does for its connect, saving an epoll_ctl per connection): events are the ones
 * that just arrived for io[1]. io[0] is added. Returns 0, or -errno as ph_pump_start().
 */
int ph_pump_start_registered(struct ph_pump *p, uint32_t events);

/*
 * Stops p, gives its pipes back and closes both sockets; with rst, each socket is reset
 * (SO_LINGER 0) rather than closed with a FIN. Idempotent. done is not called.
 */
void ph_pump_close(struct ph_pump *p, bool rst);

#endif /* PH_CONN_PUMP_H */
