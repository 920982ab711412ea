/*
 * Static forwarding: TCP connections arriving at a listening address are relayed to one of
 * the targets (round robin, skipping a target that failed until its back-off ends); UDP
 * datagrams are relayed like a NAT does, a session per client (forward/udp.c).
 */
#ifndef PH_FORWARD_FORWARD_H
#define PH_FORWARD_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "core/acl.h"
#include "core/addr.h"
#include "forward/target.h"

struct ph_worker;
struct ph_stats;
struct ph_socks_conf;
struct ph_map_keeper;
struct fwd_wrule;
struct udp_wrule;

#define PH_UDP_TIMEOUT_MS   60000 /* default --udp-timeout */
#define PH_UDP_MAX_SESSIONS 16384 /* default --max-sessions, lowered to what fds allow */

struct ph_forward_target {
	struct ph_hostport hp;
	/* shared by the workers, updated with relaxed atomics */
	uint64_t backoff_until; /* ms; skipped until then while another target is up */
	uint32_t fails;         /* consecutive failures, 0 once a connect succeeds */
};

enum ph_rule_kind {
	PH_RULE_FORWARD = 0, /* `forward`: the targets are the rule's */
	PH_RULE_SOCKS = 1,   /* `socks`: each client names its target (src/socks/) */
};

struct ph_forward_rule {
	uint8_t kind;     /* enum ph_rule_kind */
	char name[64];    /* shown in logs; "" for none */
	char origin[320]; /* "FILE:LINE" of its config line; "" from the command line */
	char *spec;       /* owned: its config line's words, each NUL-terminated, back to back: */
	size_t spec_len;  /* how a reload knows the rule unchanged */
	struct ph_hostport listen;
	struct ph_forward_target targets[PH_FORWARD_MAX_TARGETS];
	unsigned ntargets;
	struct ph_acl acl;            /* owned */
	struct ph_acl proxy_from;     /* owned: --accept-proxy, trusted proxies; n == 0: none */
	int proxy_send;               /* --proxy-protocol: 1 or 2, 0 for none */
	unsigned max_conns;           /* 0: no limit */
	uint64_t connect_timeout;     /* ms per connect attempt */
	uint64_t idle_timeout;        /* ms without bytes in either direction; 0: none */
	uint64_t udp_timeout;         /* ms a UDP session lives without a datagram */
	struct ph_addr source;        /* --source: the local address towards targets, */
	bool has_source;              /* when given */
	unsigned max_sessions;        /* UDP sessions over all workers; 0: the default */
	struct ph_socks_conf *socks;  /* owned: a socks rule's users, destinations... */
	bool map;                     /* --map: ask the router to forward the listen port */
	struct ph_map_keeper *keeper; /* the main thread's, while --map runs; or NULL */
	/* run time */
	uint64_t live;     /* atomic: connections alive, over all workers */
	uint64_t sessions; /* atomic: UDP sessions alive, over all workers */
	unsigned refs;     /* atomic: per-worker parts not retired yet (see detach) */
	struct ph_forward_rule *from_tcp; /* borrowed: whose TCP listeners attach takes over */
	struct ph_forward_rule *from_udp; /* borrowed: whose UDP listeners attach takes over */
	struct fwd_wrule **wr;            /* owned: the TCP side's state on each worker */
	unsigned nwr;
	struct udp_wrule **uwr; /* owned: the UDP side's state on each worker */
	unsigned nuwr;
};

/* Defaults for a new rule. Returns NULL when out of memory. */
struct ph_forward_rule *ph_forward_rule_new(void);

/*
 * Binds the rule's listeners (TCP, UDP or both, as its scheme says) once per worker (SO_REUSEPORT) and registers it with each
 * worker's loop; call before the workers start. Returns 0, or -errno with a one-line
 * reason in why, and nothing is left bound.
 */
int ph_forward_start(struct ph_forward_rule *r, struct ph_worker **w, unsigned n, char *why,
                     size_t whylen);

/*
 * A reload's way in three steps. Bind (main thread): proves r's ports free, makes its
 * per-worker state and binds a listener per worker; or, with from_tcp / from_udp (rules
 * being replaced on the very same listen address), takes over their TCP / UDP listeners
 * instead, so that no
 * connection waiting to be accepted is lost. Returns 0, or -errno with a reason in why.
 * Attach (on worker i's thread, or before the workers start): r serves there; called
 * before from is detached there. Detach (on worker i's thread): r stops accepting there;
 * its connections finish, then that worker's part retires. ph_forward_start is bind and
 * attach for the start.
 */
int ph_forward_bind(struct ph_forward_rule *r, struct ph_worker **w, unsigned n,
                    struct ph_forward_rule *from_tcp, struct ph_forward_rule *from_udp, char *why,
                    size_t whylen);
void ph_forward_attach(struct ph_forward_rule *r, unsigned i);
void ph_forward_detach(struct ph_forward_rule *r, unsigned i);

/* True once every worker's part of a detached r retired: r may be freed. */
bool ph_forward_retired(const struct ph_forward_rule *r);

/* Sums r's counters over its workers into *out (any thread; relaxed reads). */
void ph_forward_stats(const struct ph_forward_rule *r, struct ph_stats *out);

/* Frees the rule and its per-worker state; the workers must have ended. NULL is fine. */
void ph_forward_rule_free(struct ph_forward_rule *r);

#endif /* PH_FORWARD_FORWARD_H */
