/*
 * The one accept loop of every listener (forward, socks, the relay's session port and its
 * visitors' ports), and the process's fd budget it answers to.
 *
 * The fd budget: every admitted connection reserves, before it is accepted, the fds it may
 * hold at once (its socket, its target's, two splice pipes), and gives them back when it
 * ends. Accepting stops while the budget is spent, so a connection already admitted never
 * meets EMFILE on its connect or its pipes, and a healthy target is never blamed for our
 * own shortage: clients wait in the listen queue instead [haproxy maxconn from ulimit].
 *
 * The acceptor: accepts at most a budget per wake-up then yields (a task continues); on
 * EMFILE, ENFILE, ENOBUFS, ENOMEM or a spent fd budget it pauses on a timer rather than
 * spinning on a listener that stays readable, and says so in one line per ten seconds
 * with a count of what it held back.
 */
#ifndef PH_CONN_ACCEPT_H
#define PH_CONN_ACCEPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"
#include "core/loop.h"

#define PH_ACCEPT_BUDGET   64    /* accepts per wake-up before yielding */
#define PH_ACCEPT_PAUSE_MS 100   /* retry interval while out of fds */
#define PH_ACCEPT_LOG_MS   10000 /* at most one shortage line per listener this often */

/* The fds a connection of each kind may hold at once (reserved at accept). */
#define PH_FDS_FORWARD 2 /* client, target (a pipe takes its own 2 when bytes flow) */
#define PH_FDS_SOCKS   4 /* client, target or BIND listener and its peer, or UDP sockets */
#define PH_FDS_STREAM  1 /* a relay visitor or session: its socket alone */

struct ph_acceptor;

/*
 * A connection was accepted: fd (non-blocking, close-on-exec) is the callee's, and so are
 * a->cost fds of the budget, given back with ph_fds_give(a->cost) when it ends (at once
 * when it is refused). peer is IPv4-mapped addresses unmapped.
 */
typedef void (*ph_accept_fn)(struct ph_acceptor *a, int fd, const struct ph_addr *peer);

/* Writes how the log names this listener ("forward [::]:80") into buf; returns buf. */
typedef const char *(*ph_accept_label_fn)(struct ph_acceptor *a, char *buf, size_t len);

/* Embedded in its owner, which recovers itself with container_of. */
struct ph_acceptor {
	struct ph_io io; /* the listening socket, owned; fd -1 when none */
	struct ph_loop *loop;
	struct ph_timer pause; /* accepting resumes after a shortage */
	struct ph_task more;   /* accepting goes on after a full budget */
	ph_accept_fn accept;
	ph_accept_label_fn label;
	unsigned cost;      /* fds of the budget an accepted connection reserves */
	bool held;          /* the owner stopped accepting for now (ph_acceptor_hold) */
	bool paused;        /* a shortage: the pause timer will retry */
	uint64_t log_at;    /* loop time of the last shortage line */
	uint64_t held_back; /* shortages since that line */
	uint64_t shortages; /* shortages in all (status) */
};

/* Prepares a for listening socket fd (owned from here; -1: none yet). Starts nothing. */
void ph_acceptor_init(struct ph_acceptor *a, int fd, unsigned cost, ph_accept_fn accept,
                      ph_accept_label_fn label);

/* Starts accepting on loop l. Returns 0, or -errno (a is left closed-able). */
int ph_acceptor_start(struct ph_loop *l, struct ph_acceptor *a);

/*
 * Hands from's listening socket, and the clients waiting in its queue, to to (not started
 * yet, no fd of its own); from is left without one. Both on the loop l.
 */
void ph_acceptor_take(struct ph_loop *l, struct ph_acceptor *to, struct ph_acceptor *from);

/* Stops (hold) or resumes accepting; waiting clients stay in the listen queue meanwhile. */
void ph_acceptor_hold(struct ph_acceptor *a, bool hold);

/* Closes the listening socket and stops the timer and task. Idempotent. */
void ph_acceptor_close(struct ph_acceptor *a);

/* Sets the fds connections may reserve in all, process-wide; 0 means no limit. */
void ph_fds_set_limit(uint64_t n);

/* Reserves n fds of the budget. Returns false, reserving nothing, when they are not there. */
bool ph_fds_take(unsigned n);

/* Gives back n fds reserved with ph_fds_take. */
void ph_fds_give(unsigned n);

/* The fds reserved now, and the limit (0: none). */
uint64_t ph_fds_used(void);
uint64_t ph_fds_limit(void);

#endif /* PH_CONN_ACCEPT_H */
