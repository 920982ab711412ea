/*
 * Workers: one thread each, with its own loop, pipe pool, resolver and counters; nothing
 * hot is shared. The main thread owns signals (signalfd) and tells workers to drain or to
 * abort through an eventfd. A worker stops when told to drain and its last connection ends.
 */
#ifndef PH_CORE_WORKER_H
#define PH_CORE_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/logagg.h"
#include "core/loop.h"
#include "core/pipepool.h"

struct ph_resolver;
struct ph_dgram_batch;
struct ph_hostaddrs;

/* Counters of one worker: written only by it (relaxed stores), read by anyone. */
struct ph_stats {
	uint64_t accepted;       /* connections admitted */
	uint64_t active;         /* connections alive now */
	uint64_t bytes_up;       /* client -> target */
	uint64_t bytes_down;     /* target -> client */
	uint64_t spliced;        /* bytes moved by splice(2) (zero copy) */
	uint64_t copied;         /* bytes moved through a user-space buffer */
	uint64_t denied;         /* refused by --allow/--deny */
	uint64_t over_limit;     /* refused by --max-conns */
	uint64_t connect_failed; /* connections whose every target failed */
	uint64_t resets;         /* resets passed on */
	uint64_t errors;         /* other failures (fds, memory) */
	uint64_t udp_sessions;   /* UDP sessions made */
	uint64_t udp_active;     /* UDP sessions alive now */
	uint64_t udp_evicted;    /* sessions ended early by --max-sessions */
	uint64_t dgrams_up;      /* datagrams client -> target */
	uint64_t dgrams_down;    /* datagrams target -> client */
	uint64_t dgrams_dropped; /* datagrams dropped: full buffers, no session, unreachable */
};

#define PH_STAT_ADD(w, field, n)                                                                   \
	__atomic_store_n(&(w)->stats.field,                                                        \
	                 __atomic_load_n(&(w)->stats.field, __ATOMIC_RELAXED) + (n),               \
	                 __ATOMIC_RELAXED)
/* The same on a struct ph_stats of one writer (a rule's counters on one worker). */
#define PH_STATS_ADD(st, field, n)                                                                 \
	__atomic_store_n(&(st)->field, __atomic_load_n(&(st)->field, __ATOMIC_RELAXED) + (n),      \
	                 __ATOMIC_RELAXED)
#define PH_STATS_GET(st, field) __atomic_load_n(&(st)->field, __ATOMIC_RELAXED)

#define PH_STAT_GET(w, field) __atomic_load_n(&(w)->stats.field, __ATOMIC_RELAXED)

enum ph_worker_cmd {
	PH_WORKER_DRAIN = 1, /* stop accepting; stop when the last connection ends */
	PH_WORKER_ABORT = 2, /* close every connection now and stop */
};

struct ph_worker;
struct ph_worker_hook;

/* A function run on a worker's thread for another thread (ph_worker_call). */
typedef void (*ph_worker_call_fn)(struct ph_worker *w, void *arg);

/* A call, owned by who posts it (so posting never fails); it must live until it ran. */
struct ph_worker_call {
	struct ph_list node;
	ph_worker_call_fn fn;
	void *arg;
};
typedef void (*ph_worker_hook_fn)(struct ph_worker_hook *h, enum ph_worker_cmd cmd);

/* A service's way to hear drain and abort commands, embedded in the service. */
struct ph_worker_hook {
	struct ph_list node;
	ph_worker_hook_fn fn;
};

struct ph_worker {
	int id;
	struct ph_loop loop;
	struct ph_pipepool pipes;
	struct ph_resolver *resolver; /* owned; made on first use */
	struct ph_names *names;       /* owned: the names resolved here (resolve.h); on first use */
	struct ph_dgram_batch *dgram; /* owned: UDP datagram slots; made by the first UDP rule */
	struct ph_dgram_batch *dgram_out; /* owned: replies gathered for one sendmmsg */
	struct ph_stats stats;
	/* borrowed: this host's addresses (core/acl.h), the main thread's table; it swaps
	 * in a new one on reload with a ph_worker_call, and frees the old once every worker
	 * ran it */
	const struct ph_hostaddrs *self_addrs;
	struct ph_logagg agg; /* failures counted for the main thread's periodic line */
	struct ph_list hooks;
	uint64_t live;    /* connections that keep the worker alive while draining */
	uint64_t next_id; /* connection ids, unique within the worker */
	bool draining;
	/* cross-thread */
	int cmd_fd; /* eventfd the main thread writes to */
	struct ph_io cmd_io;
	int cmd; /* atomic: PH_WORKER_* bits pending */
	pthread_mutex_t calls_lock;
	struct ph_list calls; /* struct ph_worker_call, under calls_lock */
	int done_fd; /* borrowed: the main thread's eventfd, bumped when this worker ends */
	pthread_t thread;
	bool started;
};

/* Sizing knobs every worker gets. */
struct ph_worker_opts {
	unsigned pipe_size;   /* bytes per splice pipe, 0 = the kernel's default */
	unsigned spare_pipes; /* pipes kept per worker for reuse */
};

/* Prepares worker id (loop, pools, command eventfd). Returns 0 or -errno. */
int ph_worker_init(struct ph_worker *w, int id, const struct ph_worker_opts *o, int done_fd);

/* Starts its thread. Returns 0 or -errno. */
int ph_worker_start(struct ph_worker *w);

/* Called from another thread: posts cmd to the worker. */
void ph_worker_post(struct ph_worker *w, enum ph_worker_cmd cmd);

/*
 * Called from another thread: runs c->fn(w, c->arg) on w's thread, soon, in the order
 * posted. Calls still queued when w ends are dropped (unlinked, never run).
 */
void ph_worker_call(struct ph_worker *w, struct ph_worker_call *c);

/* Joins the thread (if started) and frees what init made. */
void ph_worker_destroy(struct ph_worker *w);

void ph_worker_hook_add(struct ph_worker *w, struct ph_worker_hook *h, ph_worker_hook_fn fn);

/* A connection starts or ends on w; the last end of a draining worker stops it. */
void ph_worker_conn_inc(struct ph_worker *w);
void ph_worker_conn_dec(struct ph_worker *w);

/* The worker running on this thread, or NULL on the main thread. */
struct ph_worker *ph_worker_self(void);

/* Adds the counters of one writer's *in to *out (relaxed reads of in). */
void ph_stats_add(struct ph_stats *out, const struct ph_stats *in);

/* Sums the counters of n workers into *out. */
void ph_stats_sum(struct ph_worker *const *w, unsigned n, struct ph_stats *out);

#endif /* PH_CORE_WORKER_H */
