/*
 * Remote forwarding through a relay (docs/PROTOCOL.md): `pinhole server` is the relay a
 * public host runs; `pinhole expose` connects out to it from behind a NAT and publishes
 * local services on its ports. Both run on one loop (the main thread's).
 */
#ifndef PH_TUNNEL_TUNNEL_H
#define PH_TUNNEL_TUNNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/acl.h"
#include "core/addr.h"
#include "tunnel/keys.h"

struct ph_loop;

#define PH_EXPOSE_MAX 64 /* expose rules in one process */

/* `pinhole server [LISTEN] ...` */
struct ph_server_conf {
	struct ph_hostport listen; /* where clients connect; :7835 by default */
	char key_file[512];        /* "" the default (created when missing) */
	char auth_file[512];       /* --authorized-keys; "" the default next to the key */
	uint16_t port_lo, port_hi; /* --ports: handed out for port 0; 0 none */
	bool has_bind;
	struct ph_addr bind; /* --bind: the public listeners' address (port unused) */
	uint64_t hb_ms;      /* --heartbeat; 0 the default */
	struct ph_acl acl;   /* --allow/--deny: every visitor of every public port (owned) */
};

/* What a line of the relay client is. */
enum ph_expose_kind {
	PH_EXPOSE_SERVICE = 0, /* `expose LOCAL`: a service others visit */
	PH_EXPOSE_LOCAL,       /* `local [LISTEN] TARGET`: streams from here to the relay's side */
	PH_EXPOSE_SOCKS, /* `socks --via`: the socks workers' connections leave from the relay */
};

/* `pinhole expose LOCAL --via RELAY ...`, `pinhole local ...`, and `socks --via`'s client. */
struct ph_expose_conf {
	uint8_t kind;              /* enum ph_expose_kind */
	bool priv;                 /* expose --private: no public port; `local` reaches it */
	struct ph_hostport listen; /* local: where it listens */
	char target[PH_HOST_MAX];  /* local: a private service's name, or a host */
	uint16_t target_port;      /* local: 0 for a private service */
	struct ph_hostport local;  /* the service here */
	struct ph_hostport via;    /* the relay */
	uint16_t port;             /* --port: the public port wanted, 0 any */
	bool udp;
	char name[PH_NAME_MAX + 1]; /* --name, "" none */
	int proxy;                  /* --proxy-protocol 1 or 2, 0 none */
	uint32_t max_conns;         /* --max-conns: visitors at once, 0 no limit */
	char relay_fp[PH_FP_LEN];   /* --relay-key, "" trust on first use */
	char key_file[512];         /* --key, "" the default */
	char known_file[512];       /* --known-relays, "" the default */
	uint64_t hb_ms;             /* --heartbeat; 0 the default */
	struct ph_acl acl; /* --allow/--deny CIDRs (owned): the relay judges the visitors */
};

#define PH_EXPOSE_ACL_MAX 32 /* --allow/--deny rules of one expose line (REGISTER's bound) */

void ph_server_conf_init(struct ph_server_conf *c);

/*
 * Who the relay client of c is, as a string: the rules whose strings are equal share one
 * session (and socks --via finds its channel, conn/via.h, by it).
 */
void ph_expose_client_key(const struct ph_expose_conf *c, char *buf, size_t len);
void ph_expose_conf_init(struct ph_expose_conf *c);

/*
 * The directory pinhole keeps its keys and known relays in: /etc/pinhole as root, else
 * $XDG_CONFIG_HOME/pinhole or ~/.config/pinhole; made (0700, with its parents) when
 * create. Returns 0, or -errno with a reason.
 */
int ph_conf_dir(char *dir, size_t len, bool create, char *why, size_t whylen);

/*
 * Loads the key at path ("" the default), making it when it is missing (create), and
 * saying so with its public line. Returns 0 or -errno with a reason.
 */
int ph_key_open(const char *path, bool create, struct ph_key **out, char *why, size_t whylen);

struct ph_relay;
struct ph_exposer;

/* What a relay or an exposer carried since it started (the stopped: and stats: lines). */
struct ph_tunnel_stats {
	uint64_t sessions;      /* client sessions that were up (the relay: with a known key) */
	uint64_t sessions_live; /* of them, those up now */
	uint64_t visitors;      /* visitors: streams opened for them (expose: to the service) */
	uint64_t dgrams;        /* datagrams both ways */
	uint64_t bytes_up;      /* stream bytes from the visitors to the services */
	uint64_t bytes_down;    /* stream bytes from the services to the visitors */
	uint64_t checks[6];     /* the relay: CHECKs answered, by result (PH_CHECK_*; [0] unused) */
	/* the relay: streams its clients opened (`local`, `socks --via`) */
	uint64_t opened;         /* carried (private services and HOST:PORT) */
	uint64_t opened_refused; /* refused: no grant, no such service, no fds */
	uint64_t opened_up;      /* bytes of ended ones from the clients */
	uint64_t opened_down;    /* bytes to the clients */
};

/*
 * One public service of a relay, or one rule of an exposer, as metrics show it. The
 * counts of streams still open are in live, their bytes only once they ended.
 */
struct ph_tunnel_svc {
	char proto[4]; /* "tcp", "udp" */
	char kind[8];  /* expose: "expose", "local", "socks"; the relay: "public", "private" */
	char name[PH_NAME_MAX + 1];   /* "" none */
	char local[PH_HOST_MAX + 16]; /* expose: LOCAL as written; the relay: "" */
	uint64_t port;                /* the public port; 0 not (yet) public */
	uint64_t up;                  /* the relay: 1 owned, 0 held for its key; expose: 1 public */
	uint64_t live;                /* visitors now */
	uint64_t visitors;            /* visitors since it started (UDP: peers, flows) */
	uint64_t refused;             /* the relay: past --max-conns; expose: LOCAL unreachable */
	uint64_t denied;              /* the relay: by --allow/--deny (UDP: datagrams) */
	uint64_t failed;              /* expose: streams that ended with a reset */
	uint64_t bytes_up;            /* from the visitors */
	uint64_t bytes_down;          /* to the visitors */
	uint64_t dgrams;              /* the relay: UDP datagrams from the visitors */
};

/* Calls fn(arg, v) for each service of the relay r (borrowed for the call). */
void ph_relay_each(struct ph_relay *r, void (*fn)(void *arg, const struct ph_tunnel_svc *v),
                   void *arg);
/* Calls fn(arg, v) for each rule of the exposer x (borrowed for the call). */
void ph_expose_each(struct ph_exposer *x, void (*fn)(void *arg, const struct ph_tunnel_svc *v),
                    void *arg);

/* Starts the relay on l. Returns 0, or -errno with a reason. */
int ph_relay_start(struct ph_loop *l, const struct ph_server_conf *c, struct ph_relay **out,
                   char *why, size_t whylen);
void ph_relay_free(struct ph_relay *r);

/*
 * Reads the authorized keys again: sessions of keys no longer there end (a GOAWAY says
 * why) and their ports close, services outside a key's new limits close, the others go
 * on untouched. A file with a problem changes nothing. Writes one line into msg. Returns 0
 * or -errno.
 */
int ph_relay_reload(struct ph_relay *r, char *msg, size_t len);
/* Appends the relay's status (text or a JSON object) to buf. Returns bytes written. */
size_t ph_relay_status(struct ph_relay *r, bool json, char *buf, size_t len);
/* Fills *out with what r carried so far, its ended sessions and freed services included. */
void ph_relay_stats(struct ph_relay *r, struct ph_tunnel_stats *out);

/*
 * Starts the exposer for rules c[0..n) on l: one session per relay (rules naming the same
 * relay, key and pin share it). fatal(arg) is called when no rule can ever work (every
 * one refused for good, or the relay's key is not the pinned one).
 */
int ph_expose_start(struct ph_loop *l, struct ph_expose_conf *const *c, unsigned n,
                    void (*fatal)(void *arg), void *arg, struct ph_exposer **out, char *why,
                    size_t whylen);
void ph_expose_free(struct ph_exposer *x);
size_t ph_expose_status(struct ph_exposer *x, bool json, char *buf, size_t len);
/* Fills *out with what x carried so far, its ended sessions included. */
void ph_expose_stats(struct ph_exposer *x, struct ph_tunnel_stats *out);

/*
 * `pinhole check PORT --via RELAY` and `pinhole map PORT --check --via RELAY`: the relay is
 * asked to try this client's public address - the one it sees the session come from - on
 * a port (docs/PROTOCOL.md, "Checking a port"). The session is made as expose makes it
 * (the same key, pin and known relays), but it asks instead of registering, once.
 */
struct ph_check_conf {
	struct ph_expose_conf relay; /* --via, --key, --relay-key, --known-relays */
	bool has_via;                /* --via was given */
	bool on_map;                 /* map --check: check the mapping once it is made */
	bool udp;                    /* check: --udp */
	uint16_t port;               /* check: PORT */
	struct ph_addr addr;         /* check HOST:PORT: that address (the relay refuses it) */
};

/* What a check found. */
struct ph_check_result {
	uint8_t result; /* PH_CHECK_* (tunnel/msg.h), or 0: no answer (text says why) */
	bool udp;       /* the protocol and port asked about */
	uint16_t port;
	struct ph_addr
		addr; /* this client's public address as the relay sees it (AF_UNSPEC: unknown) */
	char relay[PH_HOST_MAX + 8]; /* RELAY:PORT */
	char text[512]; /* the relay's words ("reset", why it refused), or why none came */
};

/*
 * Reads what a check needs (c->relay's key, its pin or known relays) on l, before --user
 * drops root, into an exposer that asks nothing yet; each ph_check_go() then asks, and
 * done(arg, r) gets the answer (from the loop, never from inside these calls; r borrowed
 * for the call). Returns 0 and *out (ph_expose_free() frees it), or -errno with a reason.
 */
int ph_check_open(struct ph_loop *l, const struct ph_check_conf *c,
                  void (*done)(void *arg, const struct ph_check_result *r), void *arg,
                  struct ph_exposer **out, char *why, size_t whylen);

/*
 * Asks x's relay to check port (udp or tcp) of this client's public address: the session
 * is made (or the one up is used) and one CHECK sent; the answer, or why none came (the
 * relay unreachable, its key refused, the session lost, 30 s of silence), goes to done.
 * Nothing is retried. One at a time: the next may be asked once done was called.
 */
void ph_check_go(struct ph_exposer *x, bool udp, uint16_t port);

#endif /* PH_TUNNEL_TUNNEL_H */
