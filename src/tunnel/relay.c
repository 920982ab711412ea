/*
 * `pinhole server`: the relay. Clients connect to its port, prove their key (TLS 1.3,
 * checked against the authorized keys) and register services; each service is a public
 * TCP listener or UDP socket whose visitors become streams (TCP) or datagrams (UDP) on
 * the owner's session. A service whose session died is held, unpolled, for three
 * heartbeats: the same key taking it back gets the same port at once, visitors that
 * arrived meanwhile wait in the listen queue.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn/accept.h"
#include "conn/udptab.h"
#include "core/log.h"
#include "core/logagg.h"
#include "core/net.h"
#include "core/resolve.h"
#include "core/stun.h"
#include "core/util.h"
#include "tunnel/frame.h"
#include "tunnel/msg.h"
#include "tunnel/probe.h"
#include "tunnel/session.h"
#include "tunnel/tls.h"
#include "tunnel/tunnel.h"

#define MAX_HANDSHAKES        64 /* sessions not yet authenticated, at once */
#define MAX_HANDSHAKES_PER_IP 8  /* of them from one IPv4 address or IPv6 /64 */
#define UDP_BATCH             64 /* datagrams read per event */
#define FLOW_IDLE_MS          60000
#define FLOW_MAX              4096  /* UDP peers per service */
#define AUTH_MAX              4096  /* authorized keys */
#define PORT_TRIES            64    /* binds one port-0 REGISTER may try in a range */
#define PORT_PRIVILEGED       1024  /* below: only for a key whose ports= names it */
#define DIAL_TIMEOUT_MS       10000 /* a client-opened stream's connect, name lookup included */

struct rsess;

/* A public UDP peer of a service: found by its address (keyed hash) or by its id. */
struct uflow {
	struct ph_udp_node node; /* in the service's table, least recent first */
	struct uflow *inext;     /* in byid */
	uint32_t id;
	/* a private service's: the channel and flow of the client it answers */
	uint16_t chan;
	uint32_t cflow;
};

struct rsvc {
	struct ph_list node; /* in relay.services */
	struct ph_relay *r;
	struct rsess *owner; /* NULL while held for its key */
	uint8_t key[PH_KEY_LEN];
	uint16_t id, port;
	uint8_t proto, proxy;
	bool priv; /* private: no public port; reached by name from `pinhole local` */
	char name[PH_NAME_MAX + 1];
	struct ph_acceptor acc; /* TCP: the listener */
	struct ph_io io;        /* UDP: the socket */
	struct ph_timer hold;
	struct ph_addr pub;
	uint32_t max_conns; /* visitors at once (the client's --max-conns); 0 no limit */
	uint32_t live;      /* visitors now */
	struct ph_acl acl;  /* the client's --allow/--deny for its visitors (owned) */
	uint64_t visitors, bytes_in, bytes_out, dgrams, refused, denied;
	/* UDP */
	struct ph_udptab flows;  /* by peer address: SipHash with a random key */
	struct uflow *byid[256]; /* ids are ours and sequential: evenly spread */
	uint32_t next_flow;
};

struct rsess {
	struct ph_list node; /* in relay.sessions */
	struct ph_relay *r;
	struct ph_sess *s;
	const struct ph_auth_key *key; /* once up: &kcopy (a reload may drop the file's) */
	struct ph_auth_key kcopy;
	bool up; /* the handshake is done */
	char peer[PH_ADDR_STRLEN];
	char fp[PH_FP_LEN];
	/* streams this client opened (`local`, `socks --via`): now, in all, refused, bytes */
	uint64_t out_live, out_total, out_refused, out_up, out_down;
};

/*
 * A UDP channel a client opened (`local udp://LISTEN HOST:PORT`): its DGRAMs carry the
 * channel's id as their service id, and each of the client's flows gets a socket here
 * connected to the target (a NAT mapping of the relay's), found by the client's flow id.
 */
struct rchan {
	struct ph_list node; /* in relay.chans */
	struct ph_relay *r;
	struct rsess *rs; /* NULL once its session ended (freed when no lookup waits) */
	uint32_t req;
	uint16_t id, port; /* port 0: to the private service named target */
	bool resolving, ready;
	char target[PH_CTRL_TARGET_MAX + 1];
	struct ph_addr dst;
	struct ph_udptab flows; /* struct cflow, by the client's flow id */
	uint64_t flows_total, dgrams_up, dgrams_down;
};

struct cflow {
	struct ph_udp_node node;
	struct ph_io io; /* connected to the channel's target */
	struct rchan *ch;
	uint32_t id; /* the client's */
};

/*
 * A stream a client opened (odd id): to a private service (a socket pair between its
 * stream and one on the service's session) or to HOST:PORT (the relay connects). It lives
 * until its stream ended and no name lookup waits for it.
 */
struct rdial {
	struct ph_list node; /* in relay.dials */
	struct ph_relay *r;
	struct ph_stream *st; /* NULL once it ended */
	struct rsess *rs;     /* valid while st is */
	struct ph_timer timer;
	bool resolving;
	uint16_t port;
	char target[PH_OPEN_HOST_MAX + 1];
	struct ph_addr dst;
};

struct ph_relay {
	struct ph_loop *loop;
	const struct ph_server_conf *c;
	struct ph_key *key;
	struct ssl_ctx_st *ctx;
	struct ph_auth_key *keys;
	unsigned nkeys;
	struct ph_acceptor lis;
	struct ph_list sessions, services;
	unsigned handshakes;
	uint16_t next_sid;
	uint16_t next_port; /* where the search for a free port starts */
	struct ph_timer sweep;
	struct ph_list dead; /* closed services, freed by reap after this round's events */
	struct ph_task reap;
	struct ph_ratelimit rl;   /* for the refused-key lines */
	struct ph_prober *prober; /* owned: `pinhole check` (probe.c) */
	char auth_file[600];
	struct ph_tunnel_stats gone; /* of ended sessions and freed services */
	struct ph_list dials;        /* struct rdial */
	struct ph_list chans;        /* struct rchan */
	struct ph_resolver *res;     /* owned: HOST:PORT targets of client-opened streams */
	struct ph_hostaddrs *self;   /* this host's addresses (connect= judges them apart) */
	struct ph_io stun;           /* UDP on the session port: STUN Binding answered */
	uint64_t stun_answered, stun_dropped, stun_second;
	unsigned stun_this_second;
};

static const struct ph_sess_ops relay_ops;

#define STUN_PER_SECOND 2000 /* answers at most: the relay is no reflector for floods */

/* STUN Binding requests on the session port: each gets its sender's address back. */
static void relay_stun(struct ph_io *io, uint32_t events)
{
	struct ph_relay *r = container_of(io, struct ph_relay, stun);

	(void)events;
	for (int i = 0; i < UDP_BATCH; i++) {
		uint8_t in[576], out[PH_STUN_RESP_MAX];
		struct ph_stun_msg m;
		struct ph_addr from;
		socklen_t len = sizeof(from.u);
		const char *why;
		size_t n;
		ssize_t k = recvfrom(io->fd, in, sizeof(in), MSG_TRUNC, &from.u.sa, &len);

		if (k < 0)
			return;
		from.len = len;
		if ((size_t)k > sizeof(in) || ph_stun_parse(in, (size_t)k, &m, &why) < 0) {
			r->stun_dropped++; /* not STUN, or not a request: no answer */
			continue;
		}
		if (r->loop->now / 1000 != r->stun_second) {
			r->stun_second = r->loop->now / 1000;
			r->stun_this_second = 0;
		}
		if (r->stun_this_second >= STUN_PER_SECOND) {
			r->stun_dropped++;
			continue;
		}
		n = ph_stun_answer(&m, &from, out);
		if (n == 0 || sendto(io->fd, out, n, MSG_DONTWAIT, &from.u.sa, from.len) < 0) {
			r->stun_dropped++;
			continue;
		}
		r->stun_this_second++;
		r->stun_answered++;
	}
}
static void relay_udp_open(struct rsess *rs, const struct ph_ctrl *c);
static struct rchan *chan_by_id(struct rsess *rs, uint16_t id);
static void chan_free(struct rchan *ch);
static const char *svc_denied_by(const struct rsvc *v, const struct ph_addr *peer);
static void svc_turn_away(struct rsvc *v, const struct ph_addr *peer, bool denied, const char *by);

static const struct ph_auth_key *auth_find(const struct ph_relay *r, const uint8_t pub[PH_KEY_LEN])
{
	for (unsigned i = 0; i < r->nkeys; i++)
		if (memcmp(r->keys[i].pub, pub, PH_KEY_LEN) == 0)
			return &r->keys[i];
	return NULL;
}

static bool peer_ok(void *arg, const uint8_t pub[PH_KEY_LEN])
{
	struct ph_relay *r = arg;
	char fp[PH_FP_LEN];

	if (auth_find(r, pub) != NULL)
		return true;
	if (ph_ratelimit_ok(&r->rl, r->loop->now, 10)) {
		ph_key_fingerprint(pub, fp);
		ph_info("a client with key %s is refused: not in %s", fp, r->auth_file);
	}
	return false;
}

/*
 * Reads the authorized keys file of r into *keys (owned by the caller, *n of them).
 * Returns 0, or -errno with a reason naming the file and line (*keys NULL).
 */
static int auth_read(const struct ph_relay *r, struct ph_auth_key **keys, unsigned *nkeys,
                     char *why, size_t whylen)
{
	char line[1024];
	unsigned n = 0;
	int untrusted;
	FILE *f = fopen(r->auth_file, "re");
	struct ph_auth_key *v = NULL;
	unsigned nk = 0;
	int err = 0;

	*keys = NULL;
	*nkeys = 0;
	if (f == NULL) {
		err = -errno;
		snprintf(why, whylen,
		         "--authorized-keys %s: %s (a relay with no authorized keys would only "
		         "refuse; add the clients' `pinhole keygen` lines to it)",
		         r->auth_file, strerror(-err));
		return err;
	}
	untrusted = ph_strict_modes(fileno(f), r->auth_file, why, whylen); /* ssh's StrictModes */
	if (untrusted < 0) {
		fclose(f);
		return untrusted;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		struct ph_auth_key k;
		char reason[256];

		n++;
		if (strchr(line, '\n') == NULL && !feof(f)) {
			snprintf(why, whylen, "%s:%u: line too long", r->auth_file, n);
			err = -EINVAL;
			break;
		}
		err = ph_auth_parse_line(line, &k, reason, sizeof(reason));
		if (err < 0) {
			snprintf(why, whylen, "%s:%u: %s", r->auth_file, n, reason);
			break;
		}
		if (err == 0)
			continue;
		err = 0;
		if (nk == AUTH_MAX) {
			snprintf(why, whylen, "%s:%u: more than %u keys", r->auth_file, n,
			         AUTH_MAX);
			err = -E2BIG;
			break;
		}
		if ((nk & (nk - 1)) == 0) { /* 0, 1, 2, 4...: grow */
			struct ph_auth_key *nv = realloc(v, (nk != 0 ? nk * 2 : 1) * sizeof(*v));

			if (nv == NULL) {
				snprintf(why, whylen, "out of memory");
				err = -ENOMEM;
				break;
			}
			v = nv;
		}
		v[nk++] = k;
	}
	fclose(f);
	if (err == 0 && nk == 0) {
		snprintf(why, whylen,
		         "--authorized-keys %s holds no key: a relay nobody may use is not started "
		         "(add the clients' `pinhole keygen` lines)",
		         r->auth_file);
		err = -ENOENT;
	}
	if (err < 0) {
		free(v);
		return err;
	}
	*keys = v;
	*nkeys = nk;
	return 0;
}

/* --- services ---------------------------------------------------------------------------- */

static void flow_free(struct rsvc *v, struct uflow *f)
{
	struct uflow **pp = &v->byid[f->id & 255];

	while (*pp != f)
		pp = &(*pp)->inext;
	*pp = f->inext;
	ph_udptab_del(&v->flows, &f->node);
	free(f);
}

static struct uflow *flow_get(struct rsvc *v, const struct ph_addr *peer, uint64_t now)
{
	const char *by;
	struct ph_udp_key k;
	struct ph_udp_node *n;
	struct uflow *f;

	memset(&k, 0, sizeof(k)); /* compared as bytes: only what the address holds is set */
	memcpy(&k.peer.u, &peer->u, peer->len <= sizeof(k.peer.u) ? peer->len : sizeof(k.peer.u));
	k.peer.len = peer->len;
	n = ph_udptab_find(&v->flows, &k);
	if (n != NULL) {
		ph_udptab_touch(&v->flows, n, now);
		return container_of(n, struct uflow, node);
	}
	by = svc_denied_by(v, peer); /* judged at a peer's first datagram, and while it has none */
	if (by != NULL) {
		svc_turn_away(v, peer, true, by);
		return NULL;
	}
	if (v->flows.n >= FLOW_MAX) /* the least recent peer makes room */
		flow_free(v, container_of(ph_udptab_oldest(&v->flows), struct uflow, node));
	f = calloc(1, sizeof(*f));
	if (f == NULL)
		return NULL;
	f->id = ++v->next_flow;
	f->inext = v->byid[f->id & 255];
	v->byid[f->id & 255] = f;
	ph_udptab_add(&v->flows, &f->node, &k, now);
	return f;
}

static struct uflow *flow_by_id(struct rsvc *v, uint32_t id)
{
	struct uflow *f;

	for (f = v->byid[id & 255]; f != NULL; f = f->inext)
		if (f->id == id)
			break;
	return f;
}

/* Closes v; it is freed after this round's events, which may still name its socket. */
static void svc_free(struct rsvc *v)
{
	struct ph_udp_node *n;

	v->r->gone.visitors += v->visitors; /* its counts outlive it in the totals */
	ph_acl_free(&v->acl);
	while ((n = ph_udptab_oldest(&v->flows)) != NULL)
		flow_free(v, container_of(n, struct uflow, node));
	ph_udptab_free(&v->flows);
	ph_timer_stop(v->r->loop, &v->hold);
	ph_io_close(v->r->loop, &v->io);
	ph_acceptor_close(&v->acc);
	ph_list_del(&v->node);
	ph_list_add_tail(&v->r->dead, &v->node);
	ph_task_queue(v->r->loop, &v->r->reap);
}

static void relay_reap(struct ph_task *t)
{
	struct ph_relay *r = container_of(t, struct ph_relay, reap);

	while (!ph_list_empty(&r->dead)) {
		struct ph_list *n = r->dead.next;

		ph_list_del(n);
		free(container_of(n, struct rsvc, node));
	}
}

static const char *proto_str(uint8_t proto)
{
	return proto == PH_SVC_UDP ? "udp" : "tcp";
}

static void svc_hold_end(struct ph_timer *t)
{
	struct rsvc *v = container_of(t, struct rsvc, hold);

	ph_info("%s port %u (%s) closed: its client did not come back", proto_str(v->proto),
	        v->port, v->name[0] ? v->name : "unnamed");
	svc_free(v);
}

/*
 * Its session is gone: hold the port for the key, unpolled, for three heartbeats - or one,
 * when the session already took three to be found dead, so that a vanished client's
 * ports are free within the heartbeat timeout (plus one) of its last word.
 */
static void svc_orphan(struct rsvc *v, bool timed_out)
{
	struct ph_relay *r = v->r;
	uint64_t hb = r->c->hb_ms != 0 ? r->c->hb_ms : PH_HEARTBEAT_MS;

	v->owner = NULL;
	if (v->priv)
		; /* no socket: visitors find it gone until it is taken back */
	else if (v->proto == PH_SVC_UDP)
		(void)ph_io_mod(r->loop, &v->io, 0);
	else
		ph_acceptor_hold(&v->acc, true);
	ph_timer_arm(r->loop, &v->hold, timed_out ? hb : 3 * hb);
}

static const char *svc_label(struct ph_acceptor *a, char *buf, size_t len)
{
	struct rsvc *v = container_of(a, struct rsvc, acc);

	snprintf(buf, len, "relay %s port %u%s%s", proto_str(v->proto), v->port,
	         v->name[0] ? " " : "", v->name);
	return buf;
}

/*
 * Whether a visitor (a TCP client, or a UDP peer's first datagram) from peer may reach v:
 * the relay's --allow/--deny first, then the client's. Returns NULL, or what denied it.
 */
static const char *svc_denied_by(const struct rsvc *v, const struct ph_addr *peer)
{
	if (!ph_acl_allows(&v->r->c->acl, peer))
		return "the relay's --allow/--deny";
	if (!ph_acl_allows(&v->acl, peer))
		return "the service's --allow/--deny";
	return NULL;
}

/* Counts and notes a visitor that v turns away (the caller resets or drops it). */
static void svc_turn_away(struct rsvc *v, const struct ph_addr *peer, bool denied, const char *by)
{
	char label[64], pa[PH_ADDR_STRLEN];

	if (denied)
		v->denied++;
	else
		v->refused++;
	if (v->owner == NULL)
		return; /* held: it was not polled, the acceptor only drains its queue */
	svc_label(&v->acc, label, sizeof(label));
	if (denied)
		ph_logagg_note(label, "visitors", "denied", "%s: denied %s by %s", label,
		               ph_addr_fmt(peer, pa, sizeof(pa)), by);
	else
		ph_logagg_note(label, "visitors", "refused: --max-conns reached",
		               "%s: refused visitor %s: --max-conns %u reached", label,
		               ph_addr_fmt(peer, pa, sizeof(pa)), v->max_conns);
}

/* A visitor: a stream on the owner's session, its first bytes riding with the OPEN. */
static void svc_visitor(struct ph_acceptor *a, int fd, const struct ph_addr *peer)
{
	struct rsvc *v = container_of(a, struct rsvc, acc);
	uint8_t head[2 + 2 * PH_MSG_ADDR_MAX];
	const char *by = svc_denied_by(v, peer);
	struct ph_addr local;
	struct ph_stream *st;
	size_t hn;

	if (by != NULL || v->owner == NULL || (v->max_conns != 0 && v->live >= v->max_conns)) {
		svc_turn_away(v, peer, by != NULL, by);
		ph_fds_give(a->cost);
		ph_sock_set_rst(fd);
		close(fd);
		return;
	}
	local.len = sizeof(local.u);
	if (getsockname(fd, &local.u.sa, &local.len) < 0)
		local = v->pub;
	ph_put16(head, v->id);
	hn = 2 + ph_msg_addr_put(head + 2, peer);
	hn += ph_msg_addr_put(head + hn, &local);
	v->visitors++;
	v->live++;
	/* the stream's end (rs_stream_end) gives the fd and the slot back */
	st = ph_sess_open(v->owner->s, fd, head, hn, v);
	if (st == NULL) {
		v->live--;
		ph_fds_give(a->cost);
		return;
	}
	st->peer = *peer; /* for its close line */
}

static void svc_datagrams(struct ph_io *io, uint32_t events)
{
	struct rsvc *v = container_of(io, struct rsvc, io);
	uint8_t p[PH_FRAME_MAX];

	(void)events;
	for (int i = 0; i < UDP_BATCH && v->owner != NULL; i++) {
		struct ph_addr peer;
		struct uflow *f;
		size_t hn;
		ssize_t n;

		peer.len = sizeof(peer.u);
		/* room for the longest header: a datagram longer than what is left is cut, and dropped */
		n = recvfrom(io->fd, p + 2 + 4 + PH_MSG_ADDR_MAX,
		             sizeof(p) - (2 + 4 + PH_MSG_ADDR_MAX), MSG_TRUNC, &peer.u.sa,
		             &peer.len);
		if (n < 0)
			return;
		if ((size_t)n > sizeof(p) - (2 + 4 + PH_MSG_ADDR_MAX)) {
			v->owner->s->st.dgrams_drop++;
			continue;
		}
		f = flow_get(v, &peer, v->r->loop->now);
		if (f == NULL)
			continue;
		/* the header goes right before the datagram */
		uint8_t hdr[2 + 4 + PH_MSG_ADDR_MAX];

		ph_put16(hdr, v->id);
		ph_put32(hdr + 2, f->id);
		hn = 6 + ph_msg_addr_put(hdr + 6, &peer);
		memmove(p + 2 + 4 + PH_MSG_ADDR_MAX - hn, hdr, hn);
		v->dgrams++;
		v->bytes_in += (uint64_t)n;
		(void)ph_sess_dgram(v->owner->s, p + 2 + 4 + PH_MSG_ADDR_MAX - hn, hn + (size_t)n);
	}
}

/*
 * Whether key k may hold public port port: inside its ports= when it has them, inside the
 * relay's --ports when given (both, when both are), and a privileged port only when its
 * ports= names it. When not, why says so (for the REFUSED text).
 */
static bool port_allowed(const struct ph_relay *r, const struct ph_auth_key *k, uint16_t port,
                         char *why, size_t len)
{
	if (k->nranges != 0 && !ph_auth_port_named(k, port)) {
		size_t n = (size_t)snprintf(why, len, "port %u is outside this key's ports=", port);

		for (unsigned i = 0; i < k->nranges && n < len; i++)
			n += (size_t)snprintf(why + n, len - n,
			                      k->lo[i] == k->hi[i] ? "%s%u" : "%s%u-%u",
			                      i ? "|" : "", k->lo[i], k->hi[i]);
		return false;
	}
	if (r->c->port_lo != 0 && (port < r->c->port_lo || port > r->c->port_hi)) {
		snprintf(why, len, "port %u is outside the relay's --ports %u-%u", port,
		         r->c->port_lo, r->c->port_hi);
		return false;
	}
	if (port < PORT_PRIVILEGED && !ph_auth_port_named(k, port)) {
		snprintf(why, len,
		         "port %u is privileged: only a key whose ports= names it may have it",
		         port);
		return false;
	}
	return true;
}

/* Whether one of the relay's services already holds port for proto. */
static bool port_held(const struct ph_relay *r, uint8_t proto, uint16_t port)
{
	for (struct ph_list *n = r->services.next; n != &r->services; n = n->next) {
		const struct rsvc *v = container_of(n, struct rsvc, node);

		if (v->port == port && v->proto == proto)
			return true;
	}
	return false;
}

/* Opens the public socket of v on port (0: the kernel's choice). Returns the fd or -errno. */
static int svc_bind(struct ph_relay *r, struct rsvc *v, uint16_t port)
{
	struct ph_addr a;
	int fd;

	if (r->c->has_bind) {
		a = r->c->bind;
	} else {
		(void)ph_addr_from_literal("::", 0, &a);
	}
	if (a.u.sa.sa_family == AF_INET)
		a.u.in.sin_port = htons(port);
	else
		a.u.in6.sin6_port = htons(port);
	for (int tries = 0; tries < 2; tries++) {
		fd = v->proto == PH_SVC_UDP ? ph_udp_bind(&a, false, false, false, 0)
		                            : ph_tcp_listen(&a, false, false);
		if (fd != -EAFNOSUPPORT || r->c->has_bind)
			break;
		(void)ph_addr_from_literal("0.0.0.0", port, &a); /* no IPv6 here */
	}
	if (fd >= 0) {
		v->pub.len = sizeof(v->pub.u);
		if (getsockname(fd, &v->pub.u.sa, &v->pub.len) < 0)
			v->pub = a;
		v->port = ph_addr_port(&v->pub);
	}
	return fd;
}

static void sess_refuse(struct rsess *rs, uint32_t req, uint8_t code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void sess_refuse(struct rsess *rs, uint32_t req, uint8_t code, const char *fmt, ...)
{
	struct ph_ctrl c = {.type = PH_CTRL_REFUSED, .req = req, .code = code};
	uint8_t out[PH_CTRL_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c.text, sizeof(c.text), fmt, ap);
	va_end(ap);
	ph_info("client %s (%s): refused: %s", rs->peer,
	        rs->key->comment[0] ? rs->key->comment : rs->fp, c.text);
	(void)ph_sess_ctrl(rs->s, out, ph_ctrl_build(&c, out));
}

static void sess_registered(struct rsess *rs, uint32_t req, struct rsvc *v, bool again)
{
	struct ph_ctrl c = {
		.type = PH_CTRL_REGISTERED, .req = req, .service = v->id, .port = v->port};
	uint8_t out[PH_CTRL_MAX];

	if (v->priv)
		ph_info("client %s (%s): %s private service '%s'", rs->peer,
		        rs->key->comment[0] ? rs->key->comment : rs->fp,
		        again ? "took back" : "offers", v->name);
	else
		ph_info("client %s (%s): %s %s port %u%s%s", rs->peer,
		        rs->key->comment[0] ? rs->key->comment : rs->fp,
		        again ? "took back" : "exposes", proto_str(v->proto), v->port,
		        v->name[0] ? " as " : "", v->name);
	(void)ph_sess_ctrl(rs->s, out, ph_ctrl_build(&c, out));
}

/* True when another key holds the private service name (owned or held for it). */
static bool private_taken(struct ph_relay *r, struct rsess *rs, const char *name)
{
	for (struct ph_list *n = r->services.next; n != &r->services; n = n->next) {
		struct rsvc *v = container_of(n, struct rsvc, node);

		if (v->priv && strcmp(v->name, name) == 0 &&
		    memcmp(v->key, rs->key->pub, PH_KEY_LEN) != 0)
			return true;
	}
	return false;
}

/* The service of the same key this REGISTER takes back, if any. */
static struct rsvc *svc_match(struct ph_relay *r, struct rsess *rs, const struct ph_ctrl *c)
{
	struct ph_list *n;

	for (n = r->services.next; n != &r->services; n = n->next) {
		struct rsvc *v = container_of(n, struct rsvc, node);

		if (v->proto != c->proto || v->priv != c->priv ||
		    memcmp(v->key, rs->key->pub, PH_KEY_LEN) != 0)
			continue;
		if (c->port != 0 ? v->port == c->port
		                 : strcmp(v->name, c->name) == 0 && v->owner != rs)
			return v;
	}
	return NULL;
}

static unsigned key_services(struct ph_relay *r, const uint8_t key[PH_KEY_LEN])
{
	unsigned n = 0;

	for (struct ph_list *l = r->services.next; l != &r->services; l = l->next)
		n += memcmp(container_of(l, struct rsvc, node)->key, key, PH_KEY_LEN) == 0;
	return n;
}

/*
 * The first free port for a port-0 REGISTER of key k: in its ports= (inside --ports too),
 * else in --ports, else the kernel's choice. Ports this relay holds are skipped without a
 * syscall, and at most PORT_TRIES binds are tried, so a full range costs a client's
 * REGISTER little. Returns the fd, or -errno (-ENOSPC: none free).
 */
static int svc_bind_any(struct ph_relay *r, const struct ph_auth_key *k, struct rsvc *v)
{
	unsigned nr = k->nranges != 0 ? k->nranges : 1, tries = 0;
	char why[128];
	int fd = -ENOSPC;

	if (k->nranges == 0 && r->c->port_lo == 0)
		return svc_bind(r, v, 0);
	for (unsigned i = 0; i < nr && fd < 0 && tries < PORT_TRIES; i++) {
		unsigned lo = k->nranges != 0 ? k->lo[i] : r->c->port_lo;
		unsigned hi = k->nranges != 0 ? k->hi[i] : r->c->port_hi;
		unsigned span = hi - lo + 1, start = r->next_port % span;

		for (unsigned j = 0; j < span && fd < 0 && tries < PORT_TRIES; j++) {
			uint16_t p = (uint16_t)(lo + (start + j) % span);

			if (port_held(r, v->proto, p) || !port_allowed(r, k, p, why, sizeof(why)))
				continue;
			tries++;
			fd = svc_bind(r, v, p);
			if (fd >= 0)
				r->next_port = (uint16_t)(start + j + 1);
		}
	}
	return fd >= 0 ? fd : -ENOSPC;
}

/* v's visitor rules become the REGISTER's (c). Returns 0, or -ENOMEM with v's unchanged. */
static int svc_set_acl(struct rsvc *v, const struct ph_ctrl *c)
{
	struct ph_acl acl = {0};

	for (unsigned i = 0; i < c->nacl; i++) {
		if (ph_acl_add(&acl, c->acl[i].allow, &c->acl[i].cidr) < 0) {
			ph_acl_free(&acl);
			return -ENOMEM;
		}
	}
	ph_acl_free(&v->acl);
	v->acl = acl;
	return 0;
}

/* Takes service v back for session rs: a restarted or reconnected client of the same key. */
static void svc_take_back(struct rsess *rs, const struct ph_ctrl *c, struct rsvc *v)
{
	struct ph_relay *r = rs->r;

	if (svc_set_acl(v, c) < 0) {
		sess_refuse(rs, c->req, PH_REFUSE_BIND, "the relay is out of memory");
		return;
	}
	if (v->owner != NULL) {
		struct ph_ctrl u = {.type = PH_CTRL_UNREGISTER, .service = v->id};
		uint8_t out[PH_CTRL_MAX];

		ph_warn("client %s: takes %s port %u over from %s, a session of the same key that "
		        "looks stale",
		        rs->peer, proto_str(v->proto), v->port, v->owner->peer);
		ph_sess_drop_owner(v->owner->s, v);
		(void)ph_sess_ctrl(v->owner->s, out, ph_ctrl_build(&u, out));
	}
	ph_timer_stop(r->loop, &v->hold);
	v->owner = rs;
	v->proxy = c->proxy;
	v->max_conns = c->max_conns;
	snprintf(v->name, sizeof(v->name), "%s", c->name);
	if (v->priv) {
		; /* nothing to poll */
	} else if (v->proto == PH_SVC_TCP) {
		ph_acceptor_hold(&v->acc, false);
	} else if (ph_io_mod(r->loop, &v->io, EPOLLIN) < 0) {
		sess_refuse(rs, c->req, PH_REFUSE_BIND, "the relay cannot poll port %u", v->port);
		svc_free(v);
		return;
	}
	sess_registered(rs, c->req, v, true);
}

/* Checks a REGISTER against the key's limits. Returns true, or false with the refusal sent. */
static bool register_allowed(struct rsess *rs, const struct ph_ctrl *c)
{
	const struct ph_auth_key *k = rs->key;
	char why[PH_CTRL_TEXT_MAX];

	if (!ph_auth_name_ok(k, c->name)) {
		char names[PH_AUTH_NAMES * (PH_NAME_MAX + 1) + 1] = "";

		for (unsigned i = 0; i < k->nnames; i++)
			snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
			         i ? "|" : "", k->names[i]);
		sess_refuse(rs, c->req, PH_REFUSE_LIMIT,
		            c->name[0] ? "name '%s' is not among this key's names=%s"
		                       : "%sthis key may only expose names=%s (give --name)",
		            c->name, names);
		return false;
	}
	if (k->max_services != 0 && key_services(rs->r, k->pub) >= k->max_services) {
		sess_refuse(rs, c->req, PH_REFUSE_LIMIT, "this key holds its max=%u services",
		            k->max_services);
		return false;
	}
	if (c->port != 0 && !port_allowed(rs->r, k, c->port, why, sizeof(why))) {
		sess_refuse(rs, c->req, PH_REFUSE_LIMIT, "%s", why);
		return false;
	}
	return true;
}

/* Opens v's public socket and starts serving it. Returns 0, or -errno with v unchanged. */
static int svc_open(struct ph_relay *r, struct rsvc *v, int fd)
{
	int err;

	if (v->proto == PH_SVC_UDP) {
		err = ph_udptab_init(&v->flows);
		if (err < 0)
			return err;
		ph_io_init(&v->io, fd, svc_datagrams);
		err = ph_io_add(r->loop, &v->io, EPOLLIN);
		if (err < 0)
			ph_udptab_free(&v->flows);
		return err;
	}
	ph_acceptor_init(&v->acc, fd, PH_FDS_STREAM, svc_visitor, svc_label);
	return ph_acceptor_start(r->loop, &v->acc);
}

/* An id for a new service or UDP channel (the DGRAM's service id), never 0. */
static uint16_t new_sid(struct ph_relay *r)
{
	do
		++r->next_sid;
	while (r->next_sid == 0);
	return r->next_sid;
}

/* A new private service v: no socket (`local` reaches it by name), owned by rs from now. */
static void svc_start_private(struct rsess *rs, const struct ph_ctrl *c, struct rsvc *v)
{
	struct ph_relay *r = rs->r;

	if (v->proto == PH_SVC_UDP && ph_udptab_init(&v->flows) < 0) {
		ph_acl_free(&v->acl);
		free(v);
		sess_refuse(rs, c->req, PH_REFUSE_BIND, "the relay is out of memory");
		return;
	}
	v->id = new_sid(r);
	v->owner = rs;
	ph_list_add_tail(&r->services, &v->node);
	sess_registered(rs, c->req, v, false);
}

static void relay_register(struct rsess *rs, const struct ph_ctrl *c)
{
	struct ph_relay *r = rs->r;
	const struct ph_auth_key *k = rs->key;
	struct rsvc *v = svc_match(r, rs, c);
	int fd, err;

	if (v != NULL && v->owner == rs) {
		sess_refuse(rs, c->req, PH_REFUSE_INUSE, "port %u is already this session's",
		            c->port);
		return;
	}
	if (!register_allowed(rs, c))
		return;
	if (c->priv && (c->name[0] == '\0' || c->port != 0)) {
		sess_refuse(rs, c->req, PH_REFUSE_BADREQ,
		            "a private service has a --name and no --port");
		return;
	}
	if (c->priv && private_taken(r, rs, c->name)) {
		sess_refuse(rs, c->req, PH_REFUSE_INUSE,
		            "the private name '%s' is another key's on this relay", c->name);
		return;
	}
	if (v != NULL) {
		svc_take_back(rs, c, v);
		return;
	}
	v = calloc(1, sizeof(*v));
	if (v == NULL) {
		sess_refuse(rs, c->req, PH_REFUSE_BIND, "the relay is out of memory");
		return;
	}
	v->r = r;
	v->proto = c->proto;
	v->proxy = c->proxy;
	v->max_conns = c->max_conns;
	if (svc_set_acl(v, c) < 0) {
		free(v);
		sess_refuse(rs, c->req, PH_REFUSE_BIND, "the relay is out of memory");
		return;
	}
	memcpy(v->key, k->pub, PH_KEY_LEN);
	snprintf(v->name, sizeof(v->name), "%s", c->name);
	ph_list_init(&v->flows.lru); /* empty until a UDP service makes its table */
	ph_list_init(&v->node);
	ph_timer_init(&v->hold, svc_hold_end);
	ph_io_init(&v->io, -1, svc_datagrams);
	ph_acceptor_init(&v->acc, -1, PH_FDS_STREAM, svc_visitor, svc_label);
	v->priv = c->priv;
	if (v->priv) {
		svc_start_private(rs, c, v);
		return;
	}
	fd = c->port != 0 ? svc_bind(r, v, c->port) : svc_bind_any(r, k, v);
	if (fd < 0) {
		ph_acl_free(&v->acl);
		free(v);
		if (fd == -ENOSPC)
			sess_refuse(rs, c->req, PH_REFUSE_FULL, "no free port left in %s",
			            k->nranges != 0 ? "this key's ports=" : "the relay's --ports");
		else
			sess_refuse(
				rs, c->req, fd == -EADDRINUSE ? PH_REFUSE_INUSE : PH_REFUSE_BIND,
				"port %u: %s", c->port,
				fd == -EADDRINUSE ? "in use on the relay" : ph_bind_strerror(fd));
		return;
	}
	v->id = new_sid(r);
	err = svc_open(r, v, fd);
	if (err < 0) {
		close(fd);
		ph_acl_free(&v->acl);
		free(v);
		sess_refuse(rs, c->req, PH_REFUSE_BIND, "the relay cannot poll a new port");
		return;
	}
	v->owner = rs;
	ph_list_add_tail(&r->services, &v->node);
	sess_registered(rs, c->req, v, false);
}

static struct rsvc *svc_by_id(struct ph_relay *r, struct rsess *rs, uint16_t id)
{
	for (struct ph_list *n = r->services.next; n != &r->services; n = n->next) {
		struct rsvc *v = container_of(n, struct rsvc, node);

		if (v->id == id)
			return v->owner == rs ? v : NULL;
	}
	return NULL;
}

/* --- checks: the prober (probe.c) tries a client's own address --------------------------- */

/* The prober's answer to a CHECK of session owner. */
static void rs_checked(void *owner, const struct ph_ctrl *m)
{
	uint8_t out[PH_CTRL_MAX];

	(void)ph_sess_ctrl(owner, out, ph_ctrl_build(m, out));
}

static void relay_check(struct rsess *rs, const struct ph_ctrl *c)
{
	char label[PH_ADDR_STRLEN + 80];

	snprintf(label, sizeof(label), "client %s (%s)", rs->peer,
	         rs->key->comment[0] ? rs->key->comment : rs->fp);
	ph_prober_check(rs->r->prober, rs->s, rs->key->pub, &rs->s->peer_addr, c, label);
}

/* --- session callbacks -------------------------------------------------------------------- */

static int rs_up(struct ph_sess *s)
{
	struct rsess *rs = s->owner;

	const struct ph_auth_key *k = auth_find(rs->r, s->peer);
	unsigned n = 0, max;

	rs->r->handshakes--;
	rs->up = true;
	if (k == NULL)
		return -EPERM; /* the handshake checked it; a reload cannot have come between */
	rs->kcopy = *k;
	rs->key = &rs->kcopy;
	ph_key_fingerprint(s->peer, rs->fp);
	ph_info("client %s: key %s%s%s%s", rs->peer, rs->fp, k->comment[0] ? " (" : "", k->comment,
	        k->comment[0] ? ")" : "");
	max = k->max_sessions != 0 ? k->max_sessions : PH_AUTH_SESSIONS;
	for (struct ph_list *l = rs->r->sessions.next; l != &rs->r->sessions; l = l->next) {
		const struct rsess *o = container_of(l, struct rsess, node);

		n += o != rs && o->up && o->key != NULL &&
		     memcmp(o->key->pub, k->pub, PH_KEY_LEN) == 0;
	}
	if (n >= max) {
		ph_warn("client %s (%s): refused: the key holds %u sessions already (sessions=%u)",
		        rs->peer, k->comment[0] ? k->comment : rs->fp, n, max);
		ph_sess_close(s, PH_GOAWAY_NORMAL,
		              "this key holds %u sessions on the relay already; raise sessions= "
		              "on its authorized_keys line",
		              n);
		return -EPERM;
	}
	return 0;
}

static int rs_ctrl(struct ph_sess *s, const uint8_t *p, size_t n, const char **why)
{
	struct rsess *rs = s->owner;
	struct ph_ctrl c;
	struct rsvc *v;

	if (ph_ctrl_parse(p, n, &c, why) < 0)
		return -EPROTO;
	switch (c.type) {
	case PH_CTRL_REGISTER:
		relay_register(rs, &c);
		return 0;
	case PH_CTRL_CHECK:
		relay_check(rs, &c);
		return 0;
	case PH_CTRL_UDP_OPEN:
		relay_udp_open(rs, &c);
		return 0;
	case PH_CTRL_UNREGISTER:
		v = svc_by_id(rs->r, rs, c.service);
		if (v == NULL) { /* or a UDP channel the client is done with */
			struct rchan *ch = chan_by_id(rs, c.service);

			if (ch != NULL)
				chan_free(ch);
		}
		if (v != NULL) {
			ph_info("client %s: %s port %u closed at its request", rs->peer,
			        proto_str(v->proto), v->port);
			ph_sess_drop_owner(s, v);
			svc_free(v);
		}
		return 0;
	default:
		*why = "a control message only the relay sends";
		return -EPROTO;
	}
}

/* --- streams a client opens: `pinhole local`, `socks --via` ------------------------------ */

/* How logs and refusals name the key of rs: its comment, or its fingerprint. */
static const char *key_name(const struct rsess *rs)
{
	return rs->key->comment[0] ? rs->key->comment : rs->fp;
}

static void dial_free(struct rdial *d)
{
	ph_timer_stop(d->r->loop, &d->timer);
	ph_list_del(&d->node);
	free(d);
}

/* A refusal both ends hear of: the client's RST text, one counted line here. */
static void dial_refuse(struct rsess *rs, uint32_t id, uint8_t reason, const char *text)
{
	char label[PH_ADDR_STRLEN + 80];

	rs->out_refused++;
	snprintf(label, sizeof(label), "client %s (%s)", rs->peer, key_name(rs));
	ph_logagg_note(label, "streams", "refused", "%s: a stream refused: %s", label, text);
	ph_sess_rst_text(rs->s, id, reason, "%s", text);
}

static void dial_timeout(struct ph_timer *t)
{
	struct rdial *d = container_of(t, struct rdial, timer);
	char hp[PH_OPEN_HOST_MAX + 8];

	if (d->st != NULL && ph_stream_connecting(d->st))
		ph_stream_fail(d->st, PH_RST_TIMEOUT, "connect timed out", -ETIMEDOUT,
		               "%s did not answer within %u s",
		               ph_hostport_fmt(d->target, d->port, hp, sizeof(hp)),
		               DIAL_TIMEOUT_MS / 1000);
}

/* The first of addrs[0..n) the key may reach: connected, and the client told once it is. */
static void dial_connect(struct rdial *d, const char *name, const struct ph_addr *addrs, unsigned n)
{
	const struct ph_auth_key *k = d->rs->key;
	char hp[PH_OPEN_HOST_MAX + 8], ip[PH_ADDR_STRLEN];
	const struct ph_addr *a = NULL;
	bool local = false;
	int fd;

	for (unsigned i = 0; i < n && a == NULL; i++) {
		bool l = ph_addr_is_local(&addrs[i], d->r->self);

		if (ph_auth_connect_addr(k, name, &addrs[i], l))
			a = &addrs[i];
		local |= l;
	}
	ph_hostport_fmt(d->target, d->port, hp, sizeof(hp));
	if (a == NULL) {
		d->rs->out_refused++;
		ph_stream_fail(d->st, PH_RST_FORBIDDEN, "not allowed", -EACCES,
		               "key %s may not connect to %s (%s)%s", key_name(d->rs), hp,
		               ph_addr_fmt(&addrs[0], ip, sizeof(ip)),
		               local ? ": the relay's own address, only when connect= names it"
		                     : "");
		return;
	}
	d->dst = *a;
	fd = ph_tcp_connect(a, NULL);
	if (fd < 0) {
		ph_stream_fail(d->st,
		               fd == -ENETUNREACH || fd == -EHOSTUNREACH ? PH_RST_UNREACHABLE
		                                                         : PH_RST_REFUSED,
		               "cannot connect", fd, "cannot connect to %s: %s", hp, strerror(-fd));
		return;
	}
	if (ph_stream_set_fd(d->st, fd) < 0)
		return;
	ph_stream_confirm(d->st);
}

static void dial_on_resolved(void *arg, int err, const char *why, const struct ph_addr *addrs,
                             unsigned n, uint32_t ttl)
{
	struct rdial *d = arg;

	(void)ttl;
	d->resolving = false;
	if (d->st == NULL) { /* it ended meanwhile */
		dial_free(d);
		return;
	}
	if (err < 0 || n == 0) {
		ph_stream_fail(d->st, PH_RST_NONAME, "cannot resolve", err, "cannot resolve %s: %s",
		               d->target, why != NULL ? why : ph_strerror(err));
		return;
	}
	dial_connect(d, d->target, addrs, n);
}

/* A client-opened stream to HOST:PORT: judged by connect=, looked up, connected. */
static int dial_host(struct rsess *rs, uint32_t id, const struct ph_open_req *o,
                     const uint8_t *first, size_t fn, bool fin)
{
	struct ph_relay *r = rs->r;
	char hp[PH_OPEN_HOST_MAX + 8], text[3 * PH_OPEN_HOST_MAX];
	struct ph_addr a;
	struct rdial *d;
	bool literal = ph_addr_from_literal(o->target, o->port, &a) == 0;

	ph_hostport_fmt(o->target, o->port, hp, sizeof(hp));
	if (!ph_auth_connect_host(rs->key, o->target, o->port)) {
		snprintf(text, sizeof(text),
		         "key %s may not connect to %s; add connect=%s to its line on the relay",
		         key_name(rs), hp, hp);
		dial_refuse(rs, id, PH_RST_FORBIDDEN, text);
		return 0;
	}
	if (!ph_fds_take(PH_FDS_STREAM)) {
		dial_refuse(rs, id, PH_RST_OVERLOAD, "the relay is out of file descriptors");
		return 0;
	}
	d = calloc(1, sizeof(*d));
	if (d == NULL) {
		ph_fds_give(PH_FDS_STREAM);
		dial_refuse(rs, id, PH_RST_OVERLOAD, "the relay is out of memory");
		return 0;
	}
	d->r = r;
	d->rs = rs;
	d->port = o->port;
	snprintf(d->target, sizeof(d->target), "%s", o->target);
	ph_timer_init(&d->timer, dial_timeout);
	ph_list_add_tail(&r->dials, &d->node);
	/* the stream exists from now: the client's bytes wait in it for the connect */
	d->st = ph_stream_attach(rs->s, id, -1, true, NULL, 0, first, fn, fin, d);
	if (d->st == NULL) { /* closed and told; stream_end said nothing of it */
		ph_fds_give(PH_FDS_STREAM);
		dial_free(d);
		return 0;
	}
	rs->out_live++;
	rs->out_total++;
	ph_timer_arm(r->loop, &d->timer, DIAL_TIMEOUT_MS);
	if (literal) {
		dial_connect(d, NULL, &a, 1);
		return 0;
	}
	if (ph_resolver_query(r->res, o->target, o->port, dial_on_resolved, d) < 0) {
		ph_stream_fail(d->st, PH_RST_NONAME, "cannot resolve", -ENOMEM,
		               "the relay cannot look %s up now", o->target);
		return 0;
	}
	d->resolving = true;
	return 0;
}

/* The private service of that name and protocol, owned or held; NULL when none. */
static struct rsvc *private_find(struct ph_relay *r, const char *name, uint8_t proto)
{
	for (struct ph_list *n = r->services.next; n != &r->services; n = n->next) {
		struct rsvc *v = container_of(n, struct rsvc, node);

		if (v->priv && v->proto == proto && strcmp(v->name, name) == 0)
			return v;
	}
	return NULL;
}

/*
 * A client-opened stream to a private service: a socket pair joins it to a stream the relay
 * opens on the service's session, as a visitor's would be (its first bytes ride along).
 */
static int dial_service(struct rsess *rs, uint32_t id, const struct ph_open_req *o,
                        const uint8_t *first, size_t fn, bool fin)
{
	struct ph_relay *r = rs->r;
	char text[3 * PH_OPEN_HOST_MAX];
	uint8_t head[2 + 2 * PH_MSG_ADDR_MAX];
	struct ph_addr reached;
	socklen_t rlen = sizeof(reached.u);
	struct ph_stream *sv;
	const char *by;
	struct rsvc *v;
	struct rdial *d;
	size_t hn;
	int sp[2];

	if (!ph_auth_reach_ok(rs->key, o->target)) {
		snprintf(text, sizeof(text),
		         "key %s may not reach '%s'; add reach=%s to its line on the relay",
		         key_name(rs), o->target, o->target);
		dial_refuse(rs, id, PH_RST_FORBIDDEN, text);
		return 0;
	}
	v = private_find(r, o->target, PH_SVC_TCP);
	if (v == NULL || v->owner == NULL) {
		snprintf(text, sizeof(text), "no private service '%s' is %s on the relay",
		         o->target, v == NULL ? "offered" : "connected now");
		dial_refuse(rs, id, PH_RST_NOSERVICE, text);
		return 0;
	}
	by = svc_denied_by(v, &rs->s->peer_addr);
	if (by != NULL || (v->max_conns != 0 && v->live >= v->max_conns)) {
		svc_turn_away(v, &rs->s->peer_addr, by != NULL, by);
		snprintf(text, sizeof(text), "'%s' %s", o->target,
		         by != NULL ? "does not take visitors from this address"
		                    : "has as many visitors as its --max-conns");
		dial_refuse(rs, id, PH_RST_FORBIDDEN, text);
		return 0;
	}
	if (!ph_fds_take(2 * PH_FDS_STREAM)) {
		dial_refuse(rs, id, PH_RST_OVERLOAD, "the relay is out of file descriptors");
		return 0;
	}
	d = calloc(1, sizeof(*d));
	if (d == NULL ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0) {
		free(d);
		ph_fds_give(2 * PH_FDS_STREAM);
		dial_refuse(rs, id, PH_RST_OVERLOAD, "the relay is out of memory or descriptors");
		return 0;
	}
	d->r = r;
	d->rs = rs;
	snprintf(d->target, sizeof(d->target), "%s", o->target);
	ph_timer_init(&d->timer, dial_timeout);
	ph_list_add_tail(&r->dials, &d->node);
	/* the client's first bytes go into the pair, and out of it with the service's OPEN */
	d->st = ph_stream_attach(rs->s, id, sp[0], false, NULL, 0, first, fn, fin, d);
	if (d->st == NULL) {
		close(sp[1]);
		ph_fds_give(2 * PH_FDS_STREAM);
		dial_free(d);
		return 0;
	}
	rs->out_live++;
	rs->out_total++;
	/* the visitor: the opener's public address; reached at: the relay's session address
	 * it connected to (so a PROXY header to the service has both) */
	memset(&reached, 0, sizeof(reached));
	if (getsockname(rs->s->io.fd, &reached.u.sa, &rlen) == 0)
		reached.len = rlen;
	ph_put16(head, v->id);
	hn = 2 + ph_msg_addr_put(head + 2, &rs->s->peer_addr);
	hn += ph_msg_addr_put(head + hn, &reached);
	v->visitors++;
	sv = ph_sess_open(v->owner->s, sp[1], head, hn, v);
	if (sv == NULL) { /* sp[1] closed: the client's stream sees it end */
		ph_fds_give(PH_FDS_STREAM);
		return 0;
	}
	sv->peer = rs->s->peer_addr;
	v->live++;
	ph_stream_confirm(d->st);
	return 0;
}

/* --- UDP channels a client opens: `local udp://` --------------------------------------- */

static void cflow_free(struct cflow *f)
{
	ph_udptab_del(&f->ch->flows, &f->node);
	ph_io_close(f->ch->r->loop, &f->io);
	ph_fds_give(PH_FDS_STREAM);
	free(f);
}

static void chan_free(struct rchan *ch)
{
	struct ph_udp_node *n;

	while ((n = ph_udptab_oldest(&ch->flows)) != NULL)
		cflow_free(container_of(n, struct cflow, node));
	ph_udptab_free(&ch->flows);
	ph_list_del(&ch->node);
	free(ch);
}

/* The target's answers: back to the client, on the flow they belong to. */
static void cflow_io(struct ph_io *io, uint32_t events)
{
	struct cflow *f = container_of(io, struct cflow, io);
	struct rchan *ch = f->ch;
	uint8_t p[PH_FRAME_MAX];

	(void)events;
	for (int i = 0; i < UDP_BATCH; i++) {
		ssize_t n = recv(io->fd, p + 7, sizeof(p) - 7, MSG_TRUNC);

		if (n < 0)
			return;
		if ((size_t)n > sizeof(p) - 7 || ch->rs == NULL)
			continue; /* too big for a frame, or nobody to take it */
		ph_put16(p, ch->id);
		ph_put32(p + 2, f->id);
		p[6] = 0;
		ph_udptab_touch(&ch->flows, &f->node, ch->r->loop->now);
		if (ph_sess_dgram(ch->rs->s, p, 7 + (size_t)n) == 0)
			ch->dgrams_down++;
	}
}

/* Refuses ch's UDP_OPEN and frees it. */
static void chan_refuse(struct rchan *ch, uint8_t code, const char *text)
{
	ch->rs->out_refused++;
	sess_refuse(ch->rs, ch->req, code, "%s", text);
	chan_free(ch);
}

/* The target's addresses: the first the key may reach is the channel's. */
static void chan_ready(struct rchan *ch, const char *name, const struct ph_addr *addrs, unsigned n)
{
	struct ph_ctrl m = {.type = PH_CTRL_UDP_OPENED, .req = ch->req, .service = ch->id};
	char text[3 * PH_OPEN_HOST_MAX], hp[PH_OPEN_HOST_MAX + 8], ip[PH_ADDR_STRLEN];
	uint8_t out[PH_CTRL_MAX];
	bool local = false;

	for (unsigned i = 0; i < n; i++) {
		bool l = ph_addr_is_local(&addrs[i], ch->r->self);

		if (ph_auth_connect_addr(ch->rs->key, name, &addrs[i], l)) {
			ch->dst = addrs[i];
			ch->ready = true;
			m.addr = addrs[i];
			ch->rs->out_total++;
			(void)ph_sess_ctrl(ch->rs->s, out, ph_ctrl_build(&m, out));
			return;
		}
		local |= l;
	}
	snprintf(text, sizeof(text), "key %s may not send to udp %s (%s)%s", key_name(ch->rs),
	         ph_hostport_fmt(ch->target, ch->port, hp, sizeof(hp)),
	         ph_addr_fmt(&addrs[0], ip, sizeof(ip)),
	         local ? ": the relay's own address, only when connect= names it" : "");
	chan_refuse(ch, PH_REFUSE_LIMIT, text);
}

static void chan_on_resolved(void *arg, int err, const char *why, const struct ph_addr *addrs,
                             unsigned n, uint32_t ttl)
{
	struct rchan *ch = arg;
	char text[3 * PH_OPEN_HOST_MAX];

	(void)ttl;
	ch->resolving = false;
	if (ch->rs == NULL) {
		chan_free(ch);
		return;
	}
	if (err < 0 || n == 0) {
		snprintf(text, sizeof(text), "cannot resolve %s: %s", ch->target,
		         why != NULL ? why : ph_strerror(err));
		chan_refuse(ch, PH_REFUSE_BIND, text);
		return;
	}
	chan_ready(ch, ch->target, addrs, n);
}

/* UDP_OPEN: a channel to HOST:PORT, judged by connect= as a stream would be. */
static void relay_udp_open(struct rsess *rs, const struct ph_ctrl *c)
{
	struct ph_relay *r = rs->r;
	char text[3 * PH_OPEN_HOST_MAX], hp[PH_OPEN_HOST_MAX + 8];
	bool svc = c->okind == PH_OPEN_SERVICE;
	struct ph_addr a;
	struct rchan *ch;

	ph_hostport_fmt(c->target, c->port, hp, sizeof(hp));
	if (svc ? !ph_auth_reach_ok(rs->key, c->target)
	        : !ph_auth_connect_host(rs->key, c->target, c->port)) {
		if (svc)
			snprintf(text, sizeof(text),
			         "key %s may not reach '%s'; add reach=%s to its line on the relay",
			         key_name(rs), c->target, c->target);
		else
			snprintf(text, sizeof(text),
			         "key %s may not send to udp %s; add connect=%s to its line on the "
			         "relay",
			         key_name(rs), hp, hp);
		rs->out_refused++;
		sess_refuse(rs, c->req, PH_REFUSE_LIMIT, "%s", text);
		return;
	}
	if (svc) {
		struct rsvc *v = private_find(r, c->target, PH_SVC_UDP);

		if (v == NULL || v->owner == NULL) { /* it may come: the client asks again */
			rs->out_refused++;
			sess_refuse(rs, c->req, PH_REFUSE_BIND,
			            "no private UDP service '%s' is connected now", c->target);
			return;
		}
	}
	ch = calloc(1, sizeof(*ch));
	if (ch == NULL || ph_udptab_init(&ch->flows) < 0) {
		free(ch);
		sess_refuse(rs, c->req, PH_REFUSE_BIND, "the relay is out of memory");
		return;
	}
	ch->r = r;
	ch->rs = rs;
	ch->req = c->req;
	ch->port = svc ? 0 : c->port;
	snprintf(ch->target, sizeof(ch->target), "%s", c->target);
	ch->id = new_sid(r); /* services and channels share the DGRAM's service id */
	ph_list_add_tail(&r->chans, &ch->node);
	if (svc) { /* the service is found by name at each datagram: it may be taken back */
		struct ph_ctrl m = {.type = PH_CTRL_UDP_OPENED, .req = ch->req, .service = ch->id};
		uint8_t out[PH_CTRL_MAX];

		ch->ready = true;
		rs->out_total++;
		(void)ph_sess_ctrl(rs->s, out, ph_ctrl_build(&m, out));
		return;
	}
	if (ph_addr_from_literal(c->target, c->port, &a) == 0) {
		chan_ready(ch, NULL, &a, 1);
		return;
	}
	if (ph_resolver_query(r->res, c->target, c->port, chan_on_resolved, ch) < 0) {
		chan_refuse(ch, PH_REFUSE_BIND, "the relay cannot look the name up now");
		return;
	}
	ch->resolving = true;
}

static struct rchan *chan_by_id(struct rsess *rs, uint16_t id)
{
	for (struct ph_list *n = rs->r->chans.next; n != &rs->r->chans; n = n->next) {
		struct rchan *ch = container_of(n, struct rchan, node);

		if (ch->id == id && ch->rs == rs && ch->ready)
			return ch;
	}
	return NULL;
}

/*
 * A client's datagram for a private UDP service: a flow of the service (keyed by channel
 * and flow, where the table keeps an address) whose answers go back on the channel.
 */
static void chan_private_dgram(struct rchan *ch, uint32_t flow, const uint8_t *p, size_t n)
{
	struct rsvc *v = private_find(ch->r, ch->target, PH_SVC_UDP);
	uint8_t out[PH_FRAME_MAX];
	struct ph_udp_node *node;
	struct ph_udp_key k;
	struct uflow *f;
	size_t an;

	if (v == NULL || v->owner == NULL)
		return; /* gone, or held for its key: dropped, as a public one's would be */
	memset(&k, 0, sizeof(k));
	k.peer.len = sizeof(ch->id) + sizeof(flow);
	memcpy(&k.peer.u, &ch->id, sizeof(ch->id));
	memcpy((char *)&k.peer.u + sizeof(ch->id), &flow, sizeof(flow));
	node = ph_udptab_find(&v->flows, &k);
	if (node == NULL) {
		const char *by = svc_denied_by(v, &ch->rs->s->peer_addr);

		if (by != NULL) { /* the service's --allow/--deny judge the client's address */
			svc_turn_away(v, &ch->rs->s->peer_addr, true, by);
			return;
		}
		if (v->flows.n >= FLOW_MAX)
			flow_free(v, container_of(ph_udptab_oldest(&v->flows), struct uflow, node));
		f = calloc(1, sizeof(*f));
		if (f == NULL)
			return;
		f->id = ++v->next_flow;
		f->chan = ch->id;
		f->cflow = flow;
		f->inext = v->byid[f->id & 255];
		v->byid[f->id & 255] = f;
		ph_udptab_add(&v->flows, &f->node, &k, ch->r->loop->now);
		v->visitors++;
		node = &f->node;
	}
	f = container_of(node, struct uflow, node);
	ph_udptab_touch(&v->flows, node, ch->r->loop->now);
	ph_put16(out, v->id);
	ph_put32(out + 2, f->id);
	an = ph_msg_addr_put(out + 6, &ch->rs->s->peer_addr);
	if (6 + an + n > sizeof(out))
		return;
	memcpy(out + 6 + an, p, n);
	if (ph_sess_dgram(v->owner->s, out, 6 + an + n) == 0) {
		v->dgrams++;
		v->bytes_in += n;
		ch->dgrams_up++;
	}
}

/* A private service's answer: back on the channel of the client it answers. */
static void private_answer(struct rsvc *v, struct uflow *f, const uint8_t *p, size_t n)
{
	uint8_t out[PH_FRAME_MAX];

	for (struct ph_list *l = v->r->chans.next; l != &v->r->chans; l = l->next) {
		struct rchan *ch = container_of(l, struct rchan, node);

		if (ch->id != f->chan || ch->rs == NULL || !ch->ready)
			continue;
		if (7 + n > sizeof(out))
			return;
		ph_put16(out, ch->id);
		ph_put32(out + 2, f->cflow);
		out[6] = 0;
		memcpy(out + 7, p, n);
		if (ph_sess_dgram(ch->rs->s, out, 7 + n) == 0) {
			v->bytes_out += n;
			ch->dgrams_down++;
		}
		ph_udptab_touch(&v->flows, &f->node, v->r->loop->now);
		return;
	}
}

/* A client's datagram on a channel: out of the flow's socket (made at its first). */
static void chan_dgram(struct rchan *ch, uint32_t flow, const uint8_t *p, size_t n)
{
	struct ph_loop *l = ch->r->loop;
	struct ph_udp_key k;
	struct ph_udp_node *node;
	struct cflow *f;
	int fd;

	if (ch->port == 0) {
		chan_private_dgram(ch, flow, p, n);
		return;
	}
	memset(&k, 0, sizeof(k)); /* the client's flow id where the table keeps an address */
	k.peer.len = sizeof(flow);
	memcpy(&k.peer.u, &flow, sizeof(flow));
	node = ph_udptab_find(&ch->flows, &k);
	if (node == NULL) {
		if (ch->flows.n >= FLOW_MAX)
			cflow_free(container_of(ph_udptab_oldest(&ch->flows), struct cflow, node));
		if (!ph_fds_take(PH_FDS_STREAM))
			return;
		fd = ph_udp_connect(&ch->dst, NULL, 0);
		f = fd >= 0 ? calloc(1, sizeof(*f)) : NULL;
		if (f == NULL) {
			if (fd >= 0)
				close(fd);
			ph_fds_give(PH_FDS_STREAM);
			return;
		}
		f->ch = ch;
		f->id = flow;
		ph_io_init(&f->io, fd, cflow_io);
		if (ph_io_add(l, &f->io, EPOLLIN) < 0) {
			close(fd);
			ph_fds_give(PH_FDS_STREAM);
			free(f);
			return;
		}
		ph_udptab_add(&ch->flows, &f->node, &k, l->now);
		ch->flows_total++;
		node = &f->node;
	}
	f = container_of(node, struct cflow, node);
	ph_udptab_touch(&ch->flows, node, l->now);
	if (send(f->io.fd, p, n, MSG_DONTWAIT) >= 0)
		ch->dgrams_up++;
}

static int rs_open(struct ph_sess *s, uint32_t id, const uint8_t *p, size_t n, bool fin,
                   const char **why)
{
	struct rsess *rs = s->owner;
	struct ph_open_req o;
	int used = ph_open_req_parse(p, n, &o, why);

	if (used < 0)
		return -EPROTO;
	if (o.kind == PH_OPEN_SERVICE)
		return dial_service(rs, id, &o, p + used, n - (size_t)used, fin);
	return dial_host(rs, id, &o, p + used, n - (size_t)used, fin);
}

static void rs_dgram(struct ph_sess *s, const uint8_t *p, size_t n)
{
	struct rsess *rs = s->owner;
	struct ph_addr ignored;
	struct rsvc *v;
	struct uflow *f;
	int an;

	an = ph_msg_addr_get(p + 6, n - 6, &ignored);
	if (an < 0)
		return;
	v = svc_by_id(rs->r, rs, ph_get16(p));
	if (v == NULL) {
		struct rchan *ch = chan_by_id(rs, ph_get16(p));

		if (ch != NULL)
			chan_dgram(ch, ph_get32(p + 2), p + 6 + an, n - 6 - (size_t)an);
		return;
	}
	if (v->proto != PH_SVC_UDP)
		return;
	f = flow_by_id(v, ph_get32(p + 2));
	if (f ==
	    NULL) /* the relay sends only to peers that wrote to it: never where a client says */
		return;
	if (v->priv) {
		private_answer(v, f, p + 6 + an, n - 6 - (size_t)an);
		return;
	}
	if (sendto(v->io.fd, p + 6 + an, n - 6 - (size_t)an, MSG_DONTWAIT, &f->node.key.peer.u.sa,
	           f->node.key.peer.len) >= 0)
		v->bytes_out += n - 6 - (size_t)an;
	ph_udptab_touch(&v->flows, &f->node, rs->r->loop->now);
}

static void rs_stream_end(struct ph_sess *s, struct ph_stream *st)
{
	struct rsvc *v = st->owner;

	if (st->id % 2 == 1 && st->owner != NULL) { /* a stream the client opened */
		struct rdial *d = st->owner;
		struct rsess *rs = s->owner;
		char label[PH_ADDR_STRLEN + 2 * PH_OPEN_HOST_MAX + 96], hp[PH_OPEN_HOST_MAX + 8];

		snprintf(label, sizeof(label), "client %s (%s) to %s", rs->peer, key_name(rs),
		         d->port != 0 ? ph_hostport_fmt(d->target, d->port, hp, sizeof(hp))
		                      : d->target);
		ph_stream_log_end(st, label, "streams", d->dst.len != 0 ? &d->dst : NULL, false);
		rs->out_live--;
		rs->out_up += st->bytes_out;
		rs->out_down += st->bytes_in;
		ph_fds_give(PH_FDS_STREAM);
		ph_timer_stop(d->r->loop, &d->timer);
		d->st = NULL;
		if (!d->resolving)
			dial_free(d);
		return;
	}
	if (v != NULL) {
		char label[64];

		ph_stream_log_end(st, svc_label(&v->acc, label, sizeof(label)), "visitors", &v->pub,
		                  true);
		v->bytes_in += st->bytes_in;
		v->bytes_out += st->bytes_out;
		v->live--;
		ph_fds_give(PH_FDS_STREAM);
	}
}

/* Adds a relay session's counts to *t: what it sent its client came from visitors. */
static void sess_stats_add(struct ph_tunnel_stats *t, const struct ph_sess_stats *st)
{
	t->bytes_up += st->bytes_out;
	t->bytes_down += st->bytes_in;
	t->dgrams += st->dgrams_in + st->dgrams_out;
}

void ph_relay_stats(struct ph_relay *r, struct ph_tunnel_stats *out)
{
	struct ph_prober_stats ps;

	*out = r->gone;
	ph_prober_stats(r->prober, &ps);
	_Static_assert(sizeof(out->checks) == sizeof(ps.results), "one count per result");
	memcpy(out->checks, ps.results, sizeof(out->checks));
	for (struct ph_list *l = r->sessions.next; l != &r->sessions; l = l->next) {
		const struct rsess *rs = container_of(l, struct rsess, node);

		if (rs->key == NULL)
			continue;
		out->sessions++;
		out->sessions_live++;
		sess_stats_add(out, &rs->s->st);
		out->opened += rs->out_total;
		out->opened_refused += rs->out_refused;
		out->opened_up += rs->out_up;
		out->opened_down += rs->out_down;
	}
	for (struct ph_list *l = r->services.next; l != &r->services; l = l->next)
		out->visitors += container_of(l, struct rsvc, node)->visitors;
}

static void rs_closed(struct ph_sess *s, const char *why)
{
	struct rsess *rs = s->owner;
	struct ph_relay *r = rs->r;
	struct ph_list *n, *tmp;

	if (!rs->up)
		r->handshakes--;
	ph_fds_give(PH_FDS_STREAM);     /* the session's socket, reserved at accept */
	ph_prober_forget(r->prober, s); /* its check in flight, if any, is not answered */
	if (rs->key == NULL) {
		ph_logagg_note("relay", "connections", "ended before a key was known",
		               "client %s: %s", rs->peer, why);
	} else {
		ph_info("client %s (%s): session ended: %s", rs->peer,
		        rs->key->comment[0] ? rs->key->comment : rs->fp, why);
	}
	ph_list_for_each_safe(n, tmp, &r->services) {
		struct rsvc *v = container_of(n, struct rsvc, node);

		if (v->owner == rs)
			svc_orphan(v, s->timed_out);
	}
	ph_list_for_each_safe(n, tmp, &r->chans) {
		struct rchan *ch = container_of(n, struct rchan, node);

		if (ch->rs != rs)
			continue;
		ch->rs = NULL;
		if (!ch->resolving) /* else the lookup's answer frees it */
			chan_free(ch);
	}
	if (rs->key != NULL) { /* what it carried stays in the totals */
		r->gone.sessions++;
		sess_stats_add(&r->gone, &s->st);
		r->gone.opened += rs->out_total;
		r->gone.opened_refused += rs->out_refused;
		r->gone.opened_up += rs->out_up;
		r->gone.opened_down += rs->out_down;
	}
	ph_list_del(&rs->node);
	free(rs); /* the session frees itself */
}

static const struct ph_sess_ops relay_ops = {
	.up = rs_up,
	.ctrl = rs_ctrl,
	.open = rs_open,
	.dgram = rs_dgram,
	.stream_end = rs_stream_end,
	.closed = rs_closed,
};

/* Sessions from peer's address (any port; for IPv6 its /64) still in their handshake. */
static unsigned pending_from(struct ph_relay *r, const struct ph_addr *peer)
{
	unsigned n = 0;

	for (struct ph_list *l = r->sessions.next; l != &r->sessions; l = l->next) {
		const struct rsess *rs = container_of(l, struct rsess, node);
		const struct ph_addr *a = &rs->s->peer_addr;

		if (rs->up || a->u.sa.sa_family != peer->u.sa.sa_family)
			continue;
		/* an IPv6 host has a /64 to pick addresses from: it counts as one */
		if (a->u.sa.sa_family == AF_INET
		            ? a->u.in.sin_addr.s_addr == peer->u.in.sin_addr.s_addr
		            : memcmp(&a->u.in6.sin6_addr, &peer->u.in6.sin6_addr, 8) == 0)
			n++;
	}
	return n;
}

/*
 * The pending session to end so that a new one may start: the oldest of those that sent
 * nothing the TLS handshake could use yet, else the oldest. A real client finishes within
 * a round trip of its ClientHello, so a flood of newer connections never evicts a
 * handshake that is almost done.
 */
static struct rsess *pending_victim(struct ph_relay *r)
{
	struct rsess *oldest = NULL;

	for (struct ph_list *n = r->sessions.next; n != &r->sessions; n = n->next) {
		struct rsess *rs = container_of(n, struct rsess, node);

		if (rs->up)
			continue;
		if (rs->s->ssl != NULL && SSL_in_before(rs->s->ssl))
			return rs;
		if (oldest == NULL)
			oldest = rs;
	}
	return oldest;
}

static const char *relay_label(struct ph_acceptor *a, char *buf, size_t len)
{
	(void)a;
	snprintf(buf, len, "relay");
	return buf;
}

static void relay_accept(struct ph_acceptor *a, int fd, const struct ph_addr *peer)
{
	struct ph_relay *r = container_of(a, struct ph_relay, lis);
	char pa[PH_ADDR_STRLEN];
	struct rsess *rs, *old;

	if (pending_from(r, peer) >= MAX_HANDSHAKES_PER_IP) {
		ph_logagg_note("relay", "connections",
		               "refused: too many handshakes from one address",
		               "relay: refused %s: %u handshakes from its address wait already",
		               ph_addr_fmt(peer, pa, sizeof(pa)), MAX_HANDSHAKES_PER_IP);
		ph_fds_give(a->cost);
		close(fd); /* one address may not hold every slot */
		return;
	}
	if (r->handshakes >= MAX_HANDSHAKES && (old = pending_victim(r)) != NULL)
		/*
		 * Unauthenticated sessions are bounded; one makes room, so that a flood of
		 * silent connections cannot keep a real client out (its handshake takes
		 * milliseconds, theirs never ends).
		 */
		ph_sess_close(old->s, PH_GOAWAY_NORMAL, "no TLS handshake yet, and %u others wait",
		              MAX_HANDSHAKES); /* frees old */
	rs = calloc(1, sizeof(*rs));
	if (rs == NULL) {
		ph_fds_give(a->cost);
		close(fd);
		return;
	}
	rs->r = r;
	ph_addr_fmt(peer, rs->peer, sizeof(rs->peer));
	rs->s = ph_sess_new(r->loop, fd, r->ctx, true, &relay_ops, rs, r->c->hb_ms);
	if (rs->s == NULL) {
		ph_fds_give(a->cost);
		free(rs);
		return;
	}
	rs->s->peer_addr = *peer;
	r->handshakes++;
	ph_list_add_tail(&r->sessions, &rs->node);
}

/* Once a heartbeat: UDP peers idle for a minute are forgotten. */
static void relay_sweep(struct ph_timer *t)
{
	struct ph_relay *r = container_of(t, struct ph_relay, sweep);

	for (struct ph_list *n = r->services.next; n != &r->services; n = n->next) {
		struct rsvc *v = container_of(n, struct rsvc, node);

		struct ph_udp_node *f;

		while ((f = ph_udptab_oldest(&v->flows)) != NULL &&
		       r->loop->now - f->last >= FLOW_IDLE_MS)
			flow_free(v, container_of(f, struct uflow, node));
	}
	for (struct ph_list *n = r->chans.next; n != &r->chans; n = n->next) {
		struct rchan *ch = container_of(n, struct rchan, node);
		struct ph_udp_node *f;

		while ((f = ph_udptab_oldest(&ch->flows)) != NULL &&
		       r->loop->now - f->last >= FLOW_IDLE_MS)
			cflow_free(container_of(f, struct cflow, node));
	}
	ph_timer_arm(r->loop, &r->sweep, 10000);
}

int ph_relay_start(struct ph_loop *l, const struct ph_server_conf *c, struct ph_relay **out,
                   char *why, size_t whylen)
{
	struct ph_relay *r = calloc(1, sizeof(*r));
	uint8_t pub[PH_KEY_LEN];
	char fp[PH_FP_LEN], dir[520], hp[PH_HOST_MAX + 8];
	struct ph_addr a;
	int err, fd;

	if (r == NULL) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	r->loop = l;
	r->c = c;
	ph_list_init(&r->sessions);
	ph_list_init(&r->services);
	ph_list_init(&r->dead);
	ph_list_init(&r->dials);
	ph_list_init(&r->chans);
	ph_io_init(&r->stun, -1, relay_stun);
	ph_task_init(&r->reap, relay_reap);
	ph_timer_init(&r->sweep, relay_sweep);
	ph_acceptor_init(&r->lis, -1, PH_FDS_STREAM, relay_accept, relay_label);
	err = ph_prober_new(l, rs_checked, 0, &r->prober);
	if (err < 0) {
		snprintf(why, whylen, "out of memory");
		goto fail;
	}
	if (c->auth_file[0] != '\0') {
		snprintf(r->auth_file, sizeof(r->auth_file), "%s", c->auth_file);
	} else {
		err = ph_conf_dir(dir, sizeof(dir), false, why, whylen);
		if (err < 0)
			goto fail;
		snprintf(r->auth_file, sizeof(r->auth_file), "%s/authorized_keys", dir);
	}
	err = auth_read(r, &r->keys, &r->nkeys, why, whylen);
	if (err < 0)
		goto fail;
	err = ph_resolver_new(l, &r->res);
	if (err < 0) {
		snprintf(why, whylen, "cannot make a resolver: %s", strerror(-err));
		goto fail;
	}
	if (ph_hostaddrs_read(&r->self) < 0)
		r->self = NULL; /* loopback and link-local are still judged as the relay's own */
	err = ph_key_open(c->key_file, true, &r->key, why, whylen);
	if (err < 0)
		goto fail;
	r->ctx = ph_tls_ctx_new(r->key, true, peer_ok, r, why, whylen);
	if (r->ctx == NULL) {
		err = -EIO;
		goto fail;
	}
	if (c->listen.is_name) {
		snprintf(why, whylen, "listen on an address, not a name ('%s')", c->listen.host);
		err = -EINVAL;
		goto fail;
	}
	if (c->listen.wildcard)
		(void)ph_addr_from_literal("::", c->listen.port, &a);
	else
		a = c->listen.addr;
	fd = ph_tcp_listen(&a, false, false);
	if (fd == -EAFNOSUPPORT && c->listen.wildcard) {
		(void)ph_addr_from_literal("0.0.0.0", c->listen.port, &a);
		fd = ph_tcp_listen(&a, false, false);
	}
	if (fd < 0) {
		snprintf(why, whylen, "cannot listen on %s: %s",
		         ph_hostport_fmt(c->listen.wildcard ? "" : c->listen.host, c->listen.port,
		                         hp, sizeof(hp)),
		         ph_bind_strerror(fd));
		err = fd;
		goto fail;
	}
	r->lis.io.fd = fd;
	/* STUN on the same address and port, over UDP (a client learns its public address) */
	fd = ph_udp_bind(&a, false, false, false, 0);
	if (fd >= 0) {
		ph_io_init(&r->stun, fd, relay_stun);
		if (ph_io_add(l, &r->stun, EPOLLIN) < 0)
			ph_io_close(l, &r->stun);
	} else {
		ph_warn("relay: no STUN on udp port %u: %s", c->listen.port, ph_bind_strerror(fd));
	}
	err = ph_acceptor_start(l, &r->lis);
	if (err < 0) {
		snprintf(why, whylen, "%s", strerror(-err));
		goto fail;
	}
	ph_timer_arm(l, &r->sweep, 10000);
	ph_key_public(r->key, pub);
	ph_key_fingerprint(pub, fp);
	ph_info("relay on %s, key %s, %u authorized key%s (%s)",
	        ph_hostport_fmt(c->listen.wildcard ? "" : c->listen.host, c->listen.port, hp,
	                        sizeof(hp)),
	        fp, r->nkeys, r->nkeys == 1 ? "" : "s", r->auth_file);
	*out = r;
	return 0;
fail:
	ph_relay_free(r);
	return err;
}

/* Whether service v of key k still fits k's limits (after a reload changed them). */
static bool svc_fits(const struct ph_relay *r, const struct ph_auth_key *k, const struct rsvc *v)
{
	char why[PH_CTRL_TEXT_MAX];

	return ph_auth_name_ok(k, v->name) &&
	       (v->priv || port_allowed(r, k, v->port, why, sizeof(why)));
}

int ph_relay_reload(struct ph_relay *r, char *msg, size_t len)
{
	struct ph_auth_key *keys, *old = r->keys;
	unsigned n, ended = 0, closed = 0;
	struct ph_list *it, *tmp;
	char why[512];
	int err;

	err = auth_read(r, &keys, &n, why, sizeof(why));
	if (err < 0) {
		snprintf(msg, len, "%s; the keys in use stay", why);
		return err;
	}
	r->keys = keys;
	r->nkeys = n;
	free(old);
	/* sessions of removed keys end; the others get their key's new limits */
	ph_list_for_each_safe(it, tmp, &r->sessions) {
		struct rsess *rs = container_of(it, struct rsess, node);
		const struct ph_auth_key *k;

		if (!rs->up || rs->key == NULL)
			continue; /* still in its handshake: judged against the new keys */
		k = auth_find(r, rs->key->pub);
		if (k != NULL) {
			rs->kcopy = *k;
			continue;
		}
		ph_info("client %s (%s): its key was removed from %s: session ended", rs->peer,
		        rs->key->comment[0] ? rs->key->comment : rs->fp, r->auth_file);
		ended++;
		ph_sess_close(
			rs->s, PH_GOAWAY_NORMAL,
			"this key was removed from the relay's authorized keys"); /* frees rs */
	}
	/* services of removed keys close (held ones too), and those outside new limits */
	ph_list_for_each_safe(it, tmp, &r->services) {
		struct rsvc *v = container_of(it, struct rsvc, node);
		const struct ph_auth_key *k = auth_find(r, v->key);

		if (k != NULL && svc_fits(r, k, v))
			continue;
		ph_info("%s port %u%s%s closed: %s", proto_str(v->proto), v->port,
		        v->name[0] ? " " : "", v->name,
		        k == NULL ? "its key was removed" : "outside its key's new limits");
		if (v->owner != NULL) {
			struct ph_ctrl u = {.type = PH_CTRL_UNREGISTER, .service = v->id};
			uint8_t out[PH_CTRL_MAX];

			ph_sess_drop_owner(v->owner->s, v);
			(void)ph_sess_ctrl(v->owner->s, out, ph_ctrl_build(&u, out));
		}
		closed++;
		svc_free(v);
	}
	snprintf(msg, len, "%u authorized key%s from %s; %u session%s ended, %u port%s closed", n,
	         n == 1 ? "" : "s", r->auth_file, ended, ended == 1 ? "" : "s", closed,
	         closed == 1 ? "" : "s");
	return 0;
}

void ph_relay_free(struct ph_relay *r)
{
	if (r == NULL)
		return;
	while (!ph_list_empty(&r->sessions)) {
		struct rsess *rs = container_of(r->sessions.next, struct rsess, node);
		struct ph_sess *s = rs->s;

		ph_sess_close(s, PH_GOAWAY_NORMAL, "the relay is stopping"); /* frees rs */
		ph_sess_free(s);
	}
	while (!ph_list_empty(&r->services))
		svc_free(container_of(r->services.next, struct rsvc, node));
	ph_prober_free(r->prober);
	ph_resolver_free(r->res);         /* lookups in flight end without their callbacks */
	while (!ph_list_empty(&r->dials)) /* those that waited for one */
		dial_free(container_of(r->dials.next, struct rdial, node));
	while (!ph_list_empty(&r->chans))
		chan_free(container_of(r->chans.next, struct rchan, node));
	ph_hostaddrs_free(r->self);
	ph_io_close(r->loop, &r->stun);
	ph_task_cancel(&r->reap);
	relay_reap(&r->reap);
	ph_timer_stop(r->loop, &r->sweep);
	ph_acceptor_close(&r->lis);
	ph_tls_ctx_free(r->ctx);
	ph_key_free(r->key);
	free(r->keys);
	free(r);
}

void ph_relay_each(struct ph_relay *r, void (*fn)(void *arg, const struct ph_tunnel_svc *v),
                   void *arg)
{
	for (struct ph_list *l = r->services.next; l != &r->services; l = l->next) {
		const struct rsvc *v = container_of(l, struct rsvc, node);
		struct ph_tunnel_svc t = {
			.port = v->port,
			.up = v->owner != NULL,
			.live = v->live,
			.visitors = v->visitors,
			.refused = v->refused,
			.denied = v->denied,
			.bytes_up = v->bytes_in,
			.bytes_down = v->bytes_out,
			.dgrams = v->dgrams,
		};

		snprintf(t.proto, sizeof(t.proto), "%s", proto_str(v->proto));
		snprintf(t.kind, sizeof(t.kind), "%s", v->priv ? "private" : "public");
		snprintf(t.name, sizeof(t.name), "%s", v->name);
		fn(arg, &t);
	}
}

/* The UDP channels session rs holds open. */
static unsigned sess_channels(const struct rsess *rs)
{
	unsigned n = 0;

	for (struct ph_list *l = rs->r->chans.next; l != &rs->r->chans; l = l->next)
		n += container_of(l, struct rchan, node)->rs == rs;
	return n;
}

/* A key's comment as it may stand in JSON and on one line: quotes, backslashes, controls as ?. */
static const char *safe(const char *in, char *out, size_t len)
{
	size_t i = 0;

	for (; in[i] != '\0' && i + 1 < len; i++)
		out[i] = in[i] == '"' || in[i] == '\\' || (unsigned char)in[i] < 0x20 ? '?' : in[i];
	out[i] = '\0';
	return out;
}

/* The checks answered, by result: the end of the relay's status (JSON: its last field). */
static size_t checks_status(const struct ph_relay *r, bool json, char *buf, size_t len)
{
	struct ph_prober_stats st;
	uint64_t all = 0;
	size_t n = 0;

#define OUT(...)                                                                                   \
	do {                                                                                       \
		if (n < len)                                                                       \
			n += (size_t)snprintf(buf + n, len - n, __VA_ARGS__);                      \
	} while (0)
	ph_prober_stats(r->prober, &st);
	for (uint8_t i = PH_CHECK_OPEN; i <= PH_CHECK_OPEN_FILTERED; i++)
		all += st.results[i];
	if (json)
		OUT("],\"checks\":{");
	else
		OUT("relay checks: %llu (", (unsigned long long)all);
	for (uint8_t i = PH_CHECK_OPEN; i <= PH_CHECK_OPEN_FILTERED; i++) {
		if (json)
			OUT("%s\"%s\":%llu", i == PH_CHECK_OPEN ? "" : ",", ph_check_result_name(i),
			    (unsigned long long)st.results[i]);
		else
			OUT("%s%llu %s", i == PH_CHECK_OPEN ? "" : ", ",
			    (unsigned long long)st.results[i], ph_check_result_name(i));
	}
	/* and STUN on the session port */
	if (json)
		OUT("},\"stun\":{\"on\":%s,\"answered\":%llu,\"dropped\":%llu}}",
		    r->stun.fd != -1 ? "true" : "false", (unsigned long long)r->stun_answered,
		    (unsigned long long)r->stun_dropped);
	else
		OUT(")\nrelay stun: %s, %llu answered, %llu dropped\n",
		    r->stun.fd != -1 ? "on" : "off", (unsigned long long)r->stun_answered,
		    (unsigned long long)r->stun_dropped);
#undef OUT
	return n;
}

size_t ph_relay_status(struct ph_relay *r, bool json, char *buf, size_t len)
{
	size_t n = 0;
	char up[32], down[32];

#define OUT(...)                                                                                   \
	do {                                                                                       \
		if (n < len)                                                                       \
			n += (size_t)snprintf(buf + n, len - n, __VA_ARGS__);                      \
	} while (0)
	OUT(json ? "{\"sessions\":[" : "relay sessions:\n");
	for (struct ph_list *l = r->sessions.next; l != &r->sessions; l = l->next) {
		struct rsess *rs = container_of(l, struct rsess, node);
		const struct ph_sess_stats *st = &rs->s->st;
		char comment[sizeof(rs->key->comment)];

		if (rs->key == NULL)
			continue;
		safe(rs->key->comment, comment, sizeof(comment));
		if (json)
			OUT("%s{\"peer\":\"%s\",\"key\":\"%s\",\"comment\":\"%s\",\"rtt_ms\":%llu,"
			    "\"streams\":%llu,\"streams_total\":%llu,\"bytes_in\":%llu,"
			    "\"bytes_out\":%llu,\"dgrams_in\":%llu,\"dgrams_out\":%llu,"
			    "\"dgrams_dropped\":%llu,\"opened\":{\"live\":%llu,\"total\":%llu,"
			    "\"refused\":%llu,\"bytes_up\":%llu,\"bytes_down\":%llu,"
			    "\"channels\":%u}}",
			    l == r->sessions.next ? "" : ",", rs->peer, rs->fp, comment,
			    (unsigned long long)rs->s->rtt_ms, (unsigned long long)st->active,
			    (unsigned long long)st->streams, (unsigned long long)st->bytes_in,
			    (unsigned long long)st->bytes_out, (unsigned long long)st->dgrams_in,
			    (unsigned long long)st->dgrams_out, (unsigned long long)st->dgrams_drop,
			    (unsigned long long)rs->out_live, (unsigned long long)rs->out_total,
			    (unsigned long long)rs->out_refused, (unsigned long long)rs->out_up,
			    (unsigned long long)rs->out_down, sess_channels(rs));
		else
			OUT("  %s %s%s%s rtt %llu ms, %llu streams (%llu in all), in %s, out %s; "
			    "opened by it: %llu now, %llu in all, %llu refused\n",
			    rs->peer, rs->fp, comment[0] ? " " : "", comment,
			    (unsigned long long)rs->s->rtt_ms, (unsigned long long)st->active,
			    (unsigned long long)st->streams,
			    ph_fmt_bytes(st->bytes_in, up, sizeof(up)),
			    ph_fmt_bytes(st->bytes_out, down, sizeof(down)),
			    (unsigned long long)rs->out_live, (unsigned long long)rs->out_total,
			    (unsigned long long)rs->out_refused);
	}
	OUT(json ? "],\"services\":[" : "relay services:\n");
	for (struct ph_list *l = r->services.next; l != &r->services; l = l->next) {
		struct rsvc *v = container_of(l, struct rsvc, node);

		if (json)
			OUT("%s{\"proto\":\"%s\",\"private\":%s,\"port\":%u,\"name\":\"%s\","
			    "\"client\":\"%s\","
			    "\"held\":%s,\"live\":%u,\"max_conns\":%u,\"refused\":%llu,"
			    "\"denied\":%llu,\"acl\":%u,"
			    "\"visitors\":%llu,\"datagrams\":%llu,\"bytes_in\":%llu,"
			    "\"bytes_out\":%llu}",
			    l == r->services.next ? "" : ",", proto_str(v->proto),
			    v->priv ? "true" : "false", v->port, v->name,
			    v->owner != NULL ? v->owner->peer : "",
			    v->owner == NULL ? "true" : "false", v->live, v->max_conns,
			    (unsigned long long)v->refused, (unsigned long long)v->denied, v->acl.n,
			    (unsigned long long)v->visitors, (unsigned long long)v->dgrams,
			    (unsigned long long)v->bytes_in, (unsigned long long)v->bytes_out);
		else
			OUT("  %s %s %u%s%s: %s, %llu visitors (%u now), %llu refused, %llu "
			    "denied, %llu datagrams\n",
			    proto_str(v->proto), v->priv ? "private" : "port", v->port,
			    v->name[0] ? " " : "", v->name,
			    v->owner != NULL ? v->owner->peer : "held for its client",
			    (unsigned long long)v->visitors, v->live,
			    (unsigned long long)v->refused, (unsigned long long)v->denied,
			    (unsigned long long)v->dgrams);
	}
	n += checks_status(r, json, buf + (n < len ? n : len), n < len ? len - n : 0);
#undef OUT
	return n < len ? n : len;
}
