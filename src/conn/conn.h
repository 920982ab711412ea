/*
 * The life of a TCP connection, the same for every verb that listens: accepted (the fd
 * budget reserved, conn/accept.h), admitted (--allow/--deny, --max-conns), a trusted
 * proxy's PROXY header read when the rule says so, then the verb's part - for a forward
 * rule, connecting to its targets with fail-over; for socks, the client's handshake that
 * names the target - then bytes moved by the pump (conn/pump.h), and one close path that
 * logs one line, counts, gives the fds back and frees the connection after the batch.
 *
 * A verb plugs in with struct ph_conn_ops in its rules (rule->ops). It never includes
 * another verb's headers: what they share is here.
 */
#ifndef PH_CONN_CONN_H
#define PH_CONN_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conn/accept.h"
#include "conn/pump.h"
#include "conn/rule.h"
#include "conn/target.h"
#include "core/loop.h"
#include "core/worker.h"

struct ph_conn;
struct ph_wrule;

enum ph_conn_state {
	PH_CONN_RESOLVING = 0, /* waiting for the target's name; connect deadline armed */
	PH_CONN_CONNECTING,    /* connect() in flight; connect deadline armed */
	PH_CONN_RELAYING,      /* the pump moves bytes; idle deadline armed when set */
	PH_CONN_CLOSED,        /* closed; freed after this batch of events */
	PH_CONN_PROXY,         /* reading the PROXY header of a trusted proxy; deadline armed */
	PH_CONN_VERB,          /* the verb's own handshake (socks); its deadline, its timer */
	PH_CONN__NSTATES       /* must stay last */
};

/* What a verb does with its rules' connections. Every hook but start may be NULL. */
struct ph_conn_ops {
	const char *name; /* how logs name its rules: "socks" */
	unsigned fds;     /* fds one connection may hold at once (reserved at accept) */
	/* c was admitted: the verb's handshake starts (state PH_CONN_VERB). May close c. */
	void (*start)(struct ph_conn *c);
	/* c's deadline passed in PH_CONN_VERB. */
	void (*on_timer)(struct ph_conn *c);
	/*
	 * c ends: the verb's state of it goes (sockets closed, lookups forgotten). What an
	 * event of this batch may still point into stays in c->vstate, freed with c after
	 * the batch. Idempotent.
	 */
	void (*conn_free)(struct ph_conn *c);
	/* True when nothing of the verb's points into wr (no lookup in flight). */
	bool (*wrule_idle)(const struct ph_wrule *wr);
	/* Frees wr->vstate; the worker is done with wr. */
	void (*wrule_free)(struct ph_wrule *wr);
	/* Frees rule->socks (the verb's part of the rule's configuration). */
	void (*rule_free)(struct ph_rule *r);
};

/* One rule on one worker: its listener, its connections, its view of the targets' names. */
struct ph_wrule {
	struct ph_rule *rule;   /* borrowed */
	struct ph_worker *w;    /* borrowed */
	struct ph_acceptor acc; /* the listener; closed when draining */
	struct ph_worker_hook hook;
	struct ph_list conns;       /* ph_conn.node of live connections */
	struct ph_tsel sel;         /* the targets as this worker sees them */
	struct ph_stats stats;      /* the rule's counters on this worker (status, metrics) */
	bool detached;              /* a reload removed the rule: retires when conns is empty */
	bool retired;               /* the worker is done with it (main may free it) */
	struct ph_task retire_task; /* drops the rule's refs after the batch that retired it */
	struct ph_ratelimit rl_denied, rl_full, rl_logfile;
	void *vstate; /* owned by the verb (ops->wrule_free): a socks rule's name cache */
};

struct ph_conn {
	struct ph_pump pump;   /* io[0] the client, io[1] the target (also while connecting) */
	struct ph_timer timer; /* the deadline of the state */
	struct ph_task reap;
	struct ph_list node;      /* in wr->conns */
	struct ph_tsel_wait wait; /* queued for a target's name while resolving */
	struct ph_wrule *wr;
	struct ph_addr peer; /* the client (as a PROXY header said, behind a trusted proxy) */
	struct ph_addr orig; /* where it connected to, from a PROXY header; family 0: unknown */
	uint64_t id;
	uint64_t start;         /* loop ms at accept */
	struct ph_tsel_try try; /* the targets' addresses tried so far */
	void *vstate;           /* owned: the verb's state (a socks handshake); freed with c */
	uint8_t state;          /* enum ph_conn_state */
	uint8_t fds;            /* of the fd budget, reserved at accept and given back at close */
};

/* Counts into the worker's totals and the rule's own on this worker (one writer each). */
#define PH_CONN_STAT(wr, field, n)                                                                 \
	do {                                                                                       \
		PH_STAT_ADD((wr)->w, field, (n));                                                  \
		PH_STATS_ADD(&(wr)->stats, field, (n));                                            \
	} while (0)

/* The one close path (logs a line, closes both sides, frees c after this batch). */
void ph_conn_close(struct ph_conn *c, bool rst, const char *reason, int err);

/* Every state change goes through here (traced at -vv). */
#define ph_conn_set_state(c, s) ph_conn_set_state_((c), (s), __LINE__)
void ph_conn_set_state_(struct ph_conn *c, enum ph_conn_state s, int line);

/* The name of state s, for traces and tests. */
const char *ph_conn_state_name(enum ph_conn_state s);

/*
 * Connects c to its rule's targets: the next address to try (after c->try.lasterr was set
 * for the last one, or first), with fail-over to the next target, or closes c when none is
 * left. What a forward rule does with each connection; may close c.
 */
void ph_conn_connect(struct ph_conn *c);

/*
 * Starts one connect of c to a (from the rule's --source): io[1] is registered with
 * PH_PUMP_EVENTS and on_connect, and c's timer armed with the connect timeout; the caller
 * sets its state. Returns 0, or -errno when the attempt failed at once (a local shortage:
 * ph_err_is_local()).
 */
int ph_conn_dial(struct ph_conn *c, const struct ph_addr *a, ph_io_fn on_connect);

/*
 * c's io[1] is connected (registered with PH_PUMP_EVENTS, events what just came for it,
 * when registered; else not watched yet): the pump starts and the idle deadline is armed.
 * May close c (a failure, or a reset already queued): nothing may touch c after it.
 */
void ph_conn_relay(struct ph_conn *c, uint32_t events, bool registered);

/*
 * c holds at most n fds from here on (a verb's connection reserved the most it might need at
 * accept, e.g. SOCKS's BIND): what it reserved beyond n goes back to the fd budget, so that
 * a relaying connection counts what it holds, not what it might have.
 */
void ph_conn_fds_trim(struct ph_conn *c, unsigned n);

/* The address c's close line names as its target (a verb's own destination). */
static inline void ph_conn_set_dst(struct ph_conn *c, const struct ph_addr *a)
{
	c->try.tgt = 0;
	c->try.dst = *a;
}

/* Bytes c carried outside its pump (datagrams, bytes a verb wrote itself), for its line. */
static inline void ph_conn_count(struct ph_conn *c, uint64_t up, uint64_t down)
{
	c->pump.dir[0].bytes += up;
	c->pump.dir[1].bytes += down;
}

/*
 * The one shape of a connection's close line, for every verb (forward's connections, the
 * relay's visitors, expose's streams): "ID PEER -> DST: REASON[: ERROR], N bytes up, M
 * down, T ms[ (NAME)]" into buf. dst may be NULL ("-"), err 0 (none), name "" (none).
 */
void ph_conn_line(char *buf, size_t len, const char *id, const struct ph_addr *peer,
                  const struct ph_addr *dst, const char *reason, int err, uint64_t up,
                  uint64_t down, uint64_t ms, const char *name);

/* Retires wr when it is detached and holds nothing any more (the verb's lookups included). */
void ph_wrule_retire(struct ph_wrule *wr);

/* "NAME" or "forward ADDR" / "socks ADDR": how logs name a rule. */
const char *ph_rule_label(const struct ph_rule *r, char *buf, size_t len);

/*
 * The TCP side of a rule, in the three steps of ph_forward_bind/attach/detach (forward.h):
 * bind makes r's state for n workers and binds a listener for each, or, with from, leaves
 * them to take over from's listeners in attach (registers nothing; returns 0 or -errno
 * with a reason); attach starts accepting on wr's worker (from: the rule it replaces
 * there, or NULL); detach stops accepting, and wr retires once its connections ended.
 */
int ph_conn_tcp_bind(struct ph_rule *r, struct ph_worker **w, unsigned n,
                     const struct ph_rule *from, char *why, size_t whylen);
void ph_conn_tcp_attach(struct ph_wrule *wr, struct ph_wrule *from);
void ph_conn_tcp_detach(struct ph_wrule *wr);

/* Frees wr and what is left of its connections (without events); the worker has ended. */
void ph_wrule_free(struct ph_wrule *wr);

#endif /* PH_CONN_CONN_H */
