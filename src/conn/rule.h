/*
 * A listening rule: what one `forward` or `socks` line (or command) asked for - where to
 * listen, the targets, who may connect, the limits - and, while it runs, its state on each
 * worker. The connection layer (conn/conn.h) serves its TCP side for every verb; the verb
 * that made it says what a connection does once admitted (ops).
 */
#ifndef PH_CONN_RULE_H
#define PH_CONN_RULE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conn/target.h"
#include "core/acl.h"
#include "core/addr.h"

struct ph_socks_conf;
struct ph_map_keeper;
struct ph_wrule;
struct udp_wrule;
struct ph_conn_ops;
struct ph_via;

#define PH_UDP_TIMEOUT_MS   60000 /* default --udp-timeout */
#define PH_UDP_MAX_SESSIONS 16384 /* default --max-sessions, lowered to what fds allow */

struct ph_target {
	struct ph_hostport hp;
	/* shared by the workers, updated with relaxed atomics */
	uint64_t backoff_until; /* ms; skipped until then while another target is up */
	uint32_t fails;         /* consecutive failures, 0 once a connect succeeds */
};

enum ph_rule_kind {
	PH_RULE_FORWARD = 0, /* `forward`: the targets are the rule's */
	PH_RULE_SOCKS = 1,   /* `socks`: each client names its target (src/socks/) */
};

struct ph_rule {
	uint8_t kind;     /* enum ph_rule_kind */
	char name[64];    /* shown in logs; "" for none */
	char origin[320]; /* "FILE:LINE" of its config line; "" from the command line */
	char *spec;       /* owned: its config line's words, each NUL-terminated, back to back: */
	size_t spec_len;  /* how a reload knows the rule unchanged */
	struct ph_hostport listen;
	struct ph_target targets[PH_RULE_MAX_TARGETS];
	unsigned ntargets;
	struct ph_acl acl;             /* owned */
	struct ph_acl proxy_from;      /* owned: --accept-proxy, trusted proxies; n == 0: none */
	int proxy_send;                /* --proxy-protocol: 1 or 2, 0 for none */
	unsigned max_conns;            /* 0: no limit */
	uint64_t connect_timeout;      /* ms per connect attempt */
	uint64_t idle_timeout;         /* ms without bytes in either direction; 0: none */
	uint64_t udp_timeout;          /* ms a UDP session lives without a datagram */
	struct ph_addr source;         /* --source: the local address towards targets, */
	bool has_source;               /* when given */
	unsigned max_sessions;         /* UDP sessions over all workers; 0: the default */
	const struct ph_conn_ops *ops; /* the verb's part of each connection; NULL: forward's */
	struct ph_socks_conf
		*socks;     /* owned (ops->rule_free): a socks rule's users, destinations */
	struct ph_via *via; /* socks --via: connections made by the relay (the channel table's) */
	bool map;           /* --map: ask the router to forward the listen port */
	struct ph_map_keeper *keeper; /* the main thread's, while --map runs; or NULL */
	/* run time */
	uint64_t live;            /* atomic: connections alive, over all workers */
	uint64_t sessions;        /* atomic: UDP sessions alive, over all workers */
	unsigned refs;            /* atomic: per-worker parts not retired yet (see detach) */
	struct ph_rule *from_tcp; /* borrowed: whose TCP listeners attach takes over */
	struct ph_rule *from_udp; /* borrowed: whose UDP listeners attach takes over */
	struct ph_wrule **wr;     /* owned: the TCP side's state on each worker */
	unsigned nwr;
	struct udp_wrule **uwr; /* owned: the UDP side's state on each worker */
	unsigned nuwr;
};

#endif /* PH_CONN_RULE_H */
