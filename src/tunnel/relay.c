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

#include "core/log.h"
#include "core/logagg.h"
#include "core/net.h"
#include "core/util.h"
#include "tunnel/frame.h"
#include "tunnel/msg.h"
#include "tunnel/session.h"
#include "tunnel/tls.h"
#include "tunnel/tunnel.h"

#define MAX_HANDSHAKES        64 /* sessions not yet authenticated, at once */
#define MAX_HANDSHAKES_PER_IP 8  /* of them from one address */
#define ACCEPT_BATCH          64 /* visitors accepted per event */
#define UDP_BATCH             64 /* datagrams read per event */
#define FLOW_IDLE_MS          60000
#define FLOW_MAX              4096 /* UDP peers per service */
#define AUTH_MAX              4096 /* authorized keys */

struct rsess;

struct uflow {
	struct ph_list lru; /* in the service's flows, least recent first */
	struct uflow *anext, *inext;
	struct ph_addr peer;
	uint32_t id;
	uint64_t last;
};

struct rsvc {
	struct ph_list node; /* in relay.services */
	struct ph_relay *r;
	struct rsess *owner; /* NULL while held for its key */
	uint8_t key[PH_KEY_LEN];
	uint16_t id, port;
	uint8_t proto, proxy;
	char name[PH_NAME_MAX + 1];
	struct ph_io io; /* listener or UDP socket */
	struct ph_timer hold;
	struct ph_addr pub;
	uint64_t visitors, bytes_in, bytes_out, dgrams;
	/* UDP */
	struct ph_list flows;
	struct uflow *byaddr[256], *byid[256];
	uint32_t nflows, next_flow;
};

struct rsess {
	struct ph_list node; /* in relay.sessions */
	struct ph_relay *r;
	struct ph_sess *s;
	const struct ph_auth_key *key; /* once up */
	bool up;                       /* the handshake is done */
	char peer[PH_ADDR_STRLEN];
	char fp[PH_FP_LEN];
};

struct ph_relay {
	struct ph_loop *loop;
	const struct ph_server_conf *c;
	struct ph_key *key;
	struct ssl_ctx_st *ctx;
	struct ph_auth_key *keys;
	unsigned nkeys;
	struct ph_io lis;
	struct ph_list sessions, services;
	unsigned handshakes;
	uint16_t next_sid;
	uint16_t next_port; /* where the search for a free port starts */
	struct ph_timer sweep;
	struct ph_list dead; /* closed services, freed by reap after this round's events */
	struct ph_task reap;
	struct ph_ratelimit rl; /* for the refused-key lines */
	char auth_file[600];
	struct ph_tunnel_stats gone; /* of ended sessions and freed services */
};

static const struct ph_sess_ops relay_ops;

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

static int auth_load(struct ph_relay *r, char *why, size_t whylen)
{
	char line[1024];
	unsigned n = 0;
	FILE *f = fopen(r->auth_file, "re");

	if (f == NULL) {
		snprintf(why, whylen,
		         "--authorized-keys %s: %s (a relay with no authorized keys would only "
		         "refuse; add the clients' `pinhole keygen` lines to it)",
		         r->auth_file, strerror(errno));
		return -errno;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		struct ph_auth_key k;
		char reason[256];
		int err;

		n++;
		if (strchr(line, '\n') == NULL && !feof(f)) {
			snprintf(why, whylen, "%s:%u: line too long", r->auth_file, n);
			fclose(f);
			return -EINVAL;
		}
		err = ph_auth_parse_line(line, &k, reason, sizeof(reason));
		if (err < 0) {
			snprintf(why, whylen, "%s:%u: %s", r->auth_file, n, reason);
			fclose(f);
			return err;
		}
		if (err == 0)
			continue;
		if (r->nkeys == AUTH_MAX) {
			snprintf(why, whylen, "%s:%u: more than %u keys", r->auth_file, n,
			         AUTH_MAX);
			fclose(f);
			return -E2BIG;
		}
		if ((r->nkeys & (r->nkeys - 1)) == 0) { /* 0, 1, 2, 4...: grow */
			struct ph_auth_key *v =
				realloc(r->keys, (r->nkeys != 0 ? r->nkeys * 2 : 1) * sizeof(*v));

			if (v == NULL) {
				fclose(f);
				snprintf(why, whylen, "out of memory");
				return -ENOMEM;
			}
			r->keys = v;
		}
		r->keys[r->nkeys++] = k;
	}
	fclose(f);
	if (r->nkeys == 0) {
		snprintf(why, whylen,
		         "--authorized-keys %s holds no key: a relay nobody may use is not started "
		         "(add the clients' `pinhole keygen` lines)",
		         r->auth_file);
		return -ENOENT;
	}
	return 0;
}

/* --- services ---------------------------------------------------------------------------- */

static unsigned flow_hash_addr(const struct ph_addr *a)
{
	const uint8_t *p = (const uint8_t *)&a->u;
	unsigned h = 2166136261u;

	for (socklen_t i = 0; i < a->len; i++)
		h = (h ^ p[i]) * 16777619u;
	return h & 255;
}

static void flow_free(struct rsvc *v, struct uflow *f)
{
	struct uflow **pp = &v->byaddr[flow_hash_addr(&f->peer)];

	while (*pp != f)
		pp = &(*pp)->anext;
	*pp = f->anext;
	pp = &v->byid[f->id & 255];
	while (*pp != f)
		pp = &(*pp)->inext;
	*pp = f->inext;
	ph_list_del(&f->lru);
	v->nflows--;
	free(f);
}

static struct uflow *flow_get(struct rsvc *v, const struct ph_addr *peer, uint64_t now)
{
	unsigned h = flow_hash_addr(peer);
	struct uflow *f;

	for (f = v->byaddr[h]; f != NULL; f = f->anext)
		if (f->peer.len == peer->len && memcmp(&f->peer.u, &peer->u, peer->len) == 0)
			break;
	if (f == NULL) {
		if (v->nflows >= FLOW_MAX) /* the least recent peer makes room */
			flow_free(v, container_of(v->flows.next, struct uflow, lru));
		f = calloc(1, sizeof(*f));
		if (f == NULL)
			return NULL;
		f->peer = *peer;
		f->id = ++v->next_flow;
		f->anext = v->byaddr[h];
		v->byaddr[h] = f;
		f->inext = v->byid[f->id & 255];
		v->byid[f->id & 255] = f;
		ph_list_init(&f->lru);
		v->nflows++;
	}
	ph_list_del(&f->lru);
	ph_list_add_tail(&v->flows, &f->lru);
	f->last = now;
	return f;
}

/* Closes v; it is freed after this round's events, which may still name its socket. */
static void svc_free(struct rsvc *v)
{
	v->r->gone.visitors += v->visitors; /* its counts outlive it in the totals */
	while (!ph_list_empty(&v->flows))
		flow_free(v, container_of(v->flows.next, struct uflow, lru));
	ph_timer_stop(v->r->loop, &v->hold);
	ph_io_close(v->r->loop, &v->io);
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
	(void)ph_io_mod(r->loop, &v->io, 0);
	ph_timer_arm(r->loop, &v->hold, timed_out ? hb : 3 * hb);
}

static void svc_visitors(struct ph_io *io, uint32_t events)
{
	struct rsvc *v = container_of(io, struct rsvc, io);
	uint8_t head[2 + 2 * PH_MSG_ADDR_MAX];

	(void)events;
	for (int i = 0; i < ACCEPT_BATCH && v->owner != NULL; i++) {
		struct ph_addr peer, local;
		size_t hn;
		int fd;

		peer.len = sizeof(peer.u);
		fd = accept4(io->fd, &peer.u.sa, &peer.len, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE)
				ph_warn("%s port %u: cannot accept: %s", proto_str(v->proto),
				        v->port, strerror(errno));
			return;
		}
		local.len = sizeof(local.u);
		if (getsockname(fd, &local.u.sa, &local.len) < 0)
			local = v->pub;
		ph_put16(head, v->id);
		hn = 2 + ph_msg_addr_put(head + 2, &peer);
		hn += ph_msg_addr_put(head + hn, &local);
		v->visitors++;
		(void)ph_sess_open(v->owner->s, fd, head, hn, v);
	}
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

/* Whether port is one key k may hold (its ports=, else the relay's --ports, else any). */
static bool port_allowed(const struct ph_relay *r, const struct ph_auth_key *k, uint16_t port)
{
	if (k->nranges != 0)
		return ph_auth_allows(k, NULL, port);
	if (r->c->port_lo != 0)
		return port >= r->c->port_lo && port <= r->c->port_hi;
	return true;
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

	ph_info("client %s (%s): %s %s port %u%s%s", rs->peer,
	        rs->key->comment[0] ? rs->key->comment : rs->fp, again ? "took back" : "exposes",
	        proto_str(v->proto), v->port, v->name[0] ? " as " : "", v->name);
	(void)ph_sess_ctrl(rs->s, out, ph_ctrl_build(&c, out));
}

/* The service of the same key this REGISTER takes back, if any. */
static struct rsvc *svc_match(struct ph_relay *r, struct rsess *rs, const struct ph_ctrl *c)
{
	struct ph_list *n;

	for (n = r->services.next; n != &r->services; n = n->next) {
		struct rsvc *v = container_of(n, struct rsvc, node);

		if (v->proto != c->proto || memcmp(v->key, rs->key->pub, PH_KEY_LEN) != 0)
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

static void relay_register(struct rsess *rs, const struct ph_ctrl *c)
{
	struct ph_relay *r = rs->r;
	const struct ph_auth_key *k = rs->key;
	struct rsvc *v = svc_match(r, rs, c);
	int fd = -EADDRINUSE;

	if (v != NULL && v->owner == rs) {
		sess_refuse(rs, c->req, PH_REFUSE_INUSE, "port %u is already this session's",
		            c->port);
		return;
	}
	if (v != NULL && (k->nnames == 0 || ph_auth_allows(k, c->name, 0))) {
		/* the same key again: a restarted or reconnected client takes its port back */
		if (v->owner != NULL) {
			struct ph_ctrl u = {.type = PH_CTRL_UNREGISTER, .service = v->id};
			uint8_t out[PH_CTRL_MAX];

			ph_warn("client %s: takes %s port %u over from %s, a session of the same "
			        "key "
			        "that looks stale",
			        rs->peer, proto_str(v->proto), v->port, v->owner->peer);
			ph_sess_drop_owner(v->owner->s, v);
			(void)ph_sess_ctrl(v->owner->s, out, ph_ctrl_build(&u, out));
		}
		ph_timer_stop(r->loop, &v->hold);
		v->owner = rs;
		v->proxy = c->proxy;
		snprintf(v->name, sizeof(v->name), "%s", c->name);
		if (ph_io_mod(r->loop, &v->io, EPOLLIN) < 0) {
			sess_refuse(rs, c->req, PH_REFUSE_BIND, "the relay cannot poll port %u",
			            v->port);
			svc_free(v);
			return;
		}
		sess_registered(rs, c->req, v, true);
		return;
	}
	if (k->nnames != 0 && (c->name[0] == '\0' || !ph_auth_allows(k, c->name, 0))) {
		char names[PH_AUTH_NAMES * (PH_NAME_MAX + 1) + 1] = "";

		for (unsigned i = 0; i < k->nnames; i++)
			snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
			         i ? "|" : "", k->names[i]);
		sess_refuse(rs, c->req, PH_REFUSE_LIMIT,
		            c->name[0] ? "name '%s' is not among this key's names=%s"
		                       : "%sthis key may only expose names=%s (give --name)",
		            c->name, names);
		return;
	}
	if (k->max_services != 0 && key_services(r, k->pub) >= k->max_services) {
		sess_refuse(rs, c->req, PH_REFUSE_LIMIT, "this key holds its max=%u services",
		            k->max_services);
		return;
	}
	if (c->port != 0 && !port_allowed(r, k, c->port)) {
		if (k->nranges != 0) {
			char ports[PH_AUTH_RANGES * 12 + 1] = "";

			for (unsigned i = 0; i < k->nranges; i++)
				snprintf(ports + strlen(ports), sizeof(ports) - strlen(ports),
				         k->lo[i] == k->hi[i] ? "%s%u" : "%s%u-%u", i ? "|" : "",
				         k->lo[i], k->hi[i]);
			sess_refuse(rs, c->req, PH_REFUSE_LIMIT,
			            "port %u is outside this key's ports=%s", c->port, ports);
		} else {
			sess_refuse(rs, c->req, PH_REFUSE_LIMIT,
			            "port %u is outside the relay's --ports %u-%u", c->port,
			            r->c->port_lo, r->c->port_hi);
		}
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
	memcpy(v->key, k->pub, PH_KEY_LEN);
	snprintf(v->name, sizeof(v->name), "%s", c->name);
	ph_list_init(&v->flows);
	ph_list_init(&v->node);
	ph_timer_init(&v->hold, svc_hold_end);
	ph_io_init(&v->io, -1, c->proto == PH_SVC_UDP ? svc_datagrams : svc_visitors);
	if (c->port != 0) {
		fd = svc_bind(r, v, c->port);
	} else if (k->nranges == 0 && r->c->port_lo == 0) {
		fd = svc_bind(r, v, 0);
	} else { /* the first free port of the key's ranges, or of --ports */
		unsigned nr = k->nranges != 0 ? k->nranges : 1;

		for (unsigned i = 0; i < nr && fd < 0; i++) {
			unsigned lo = k->nranges != 0 ? k->lo[i] : r->c->port_lo;
			unsigned hi = k->nranges != 0 ? k->hi[i] : r->c->port_hi;
			unsigned span = hi - lo + 1, start = r->next_port % span;

			for (unsigned j = 0; j < span && fd < 0; j++) {
				unsigned p = lo + (start + j) % span;

				if (k->nranges != 0 && r->c->port_lo != 0 &&
				    (p < r->c->port_lo || p > r->c->port_hi))
					continue;
				fd = svc_bind(r, v, (uint16_t)p);
				if (fd >= 0)
					r->next_port = (uint16_t)(start + j + 1);
			}
		}
		if (fd < 0) {
			free(v);
			sess_refuse(rs, c->req, PH_REFUSE_FULL, "no free port left in %s",
			            k->nranges != 0 ? "this key's ports=" : "the relay's --ports");
			return;
		}
	}
	if (fd < 0) {
		free(v);
		sess_refuse(rs, c->req, fd == -EADDRINUSE ? PH_REFUSE_INUSE : PH_REFUSE_BIND,
		            "port %u: %s", c->port,
		            fd == -EADDRINUSE ? "in use on the relay" : ph_bind_strerror(-fd));
		return;
	}
	v->io.fd = fd;
	do /* a service id no live service has */
		v->id = ++r->next_sid;
	while (v->id == 0);
	if (ph_io_add(r->loop, &v->io, EPOLLIN) < 0) {
		close(fd);
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

/* --- session callbacks -------------------------------------------------------------------- */

static int rs_up(struct ph_sess *s)
{
	struct rsess *rs = s->owner;

	rs->r->handshakes--;
	rs->up = true;
	rs->key = auth_find(rs->r, s->peer);
	if (rs->key == NULL)
		return -EPERM; /* the handshake checked it; the file cannot have changed */
	ph_key_fingerprint(s->peer, rs->fp);
	ph_info("client %s: key %s%s%s%s", rs->peer, rs->fp, rs->key->comment[0] ? " (" : "",
	        rs->key->comment, rs->key->comment[0] ? ")" : "");
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
	case PH_CTRL_UNREGISTER:
		v = svc_by_id(rs->r, rs, c.service);
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

static int rs_open(struct ph_sess *s, uint32_t id, const uint8_t *p, size_t n, bool fin,
                   const char **why)
{
	(void)p;
	(void)n;
	(void)fin;
	(void)why;
	ph_sess_rst(s, id, PH_RST_NOSERVICE); /* `pinhole local` is not served by this relay yet */
	return 0;
}

static void rs_dgram(struct ph_sess *s, const uint8_t *p, size_t n)
{
	struct rsess *rs = s->owner;
	struct ph_addr ignored;
	struct rsvc *v;
	struct uflow *f;
	int an;

	v = svc_by_id(rs->r, rs, ph_get16(p));
	if (v == NULL || v->proto != PH_SVC_UDP)
		return;
	an = ph_msg_addr_get(p + 6, n - 6, &ignored);
	if (an < 0)
		return;
	for (f = v->byid[ph_get32(p + 2) & 255]; f != NULL; f = f->inext)
		if (f->id == ph_get32(p + 2))
			break;
	if (f ==
	    NULL) /* the relay sends only to peers that wrote to it: never where a client says */
		return;
	if (sendto(v->io.fd, p + 6 + an, n - 6 - (size_t)an, MSG_DONTWAIT, &f->peer.u.sa,
	           f->peer.len) >= 0)
		v->bytes_out += n - 6 - (size_t)an;
	f->last = rs->r->loop->now;
}

static void rs_stream_end(struct ph_sess *s, struct ph_stream *st)
{
	struct rsvc *v = st->owner;

	(void)s;
	if (v != NULL) {
		v->bytes_in += st->bytes_in;
		v->bytes_out += st->bytes_out;
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
	*out = r->gone;
	for (struct ph_list *l = r->sessions.next; l != &r->sessions; l = l->next) {
		const struct rsess *rs = container_of(l, struct rsess, node);

		if (rs->key == NULL)
			continue;
		out->sessions++;
		sess_stats_add(out, &rs->s->st);
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
	if (rs->key != NULL) { /* what it carried stays in the totals */
		r->gone.sessions++;
		sess_stats_add(&r->gone, &s->st);
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

/* Sessions from peer's address (any port) still in their handshake. */
static unsigned pending_from(struct ph_relay *r, const struct ph_addr *peer)
{
	unsigned n = 0;

	for (struct ph_list *l = r->sessions.next; l != &r->sessions; l = l->next) {
		const struct rsess *rs = container_of(l, struct rsess, node);
		const struct ph_addr *a = &rs->s->peer_addr;

		if (rs->up || a->u.sa.sa_family != peer->u.sa.sa_family)
			continue;
		if (a->u.sa.sa_family == AF_INET
		            ? a->u.in.sin_addr.s_addr == peer->u.in.sin_addr.s_addr
		            : memcmp(&a->u.in6.sin6_addr, &peer->u.in6.sin6_addr, 16) == 0)
			n++;
	}
	return n;
}

static void relay_accept(struct ph_io *io, uint32_t events)
{
	struct ph_relay *r = container_of(io, struct ph_relay, lis);

	(void)events;
	for (int i = 0; i < ACCEPT_BATCH; i++) {
		struct ph_addr peer;
		struct rsess *rs;
		int fd;

		peer.len = sizeof(peer.u);
		fd = accept4(io->fd, &peer.u.sa, &peer.len, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		if (pending_from(r, &peer) >= MAX_HANDSHAKES_PER_IP) {
			close(fd); /* one address may not hold every slot */
			continue;
		}
		if (r->handshakes >= MAX_HANDSHAKES) {
			/*
			 * Unauthenticated sessions are bounded; the oldest makes room, so that a
			 * flood of silent connections cannot keep a real client out (its handshake
			 * takes milliseconds, theirs never ends).
			 */
			for (struct ph_list *n = r->sessions.next; n != &r->sessions; n = n->next) {
				struct rsess *old = container_of(n, struct rsess, node);

				if (!old->up) {
					ph_sess_close(old->s, PH_GOAWAY_NORMAL,
					              "no TLS handshake yet, and %u others wait",
					              MAX_HANDSHAKES);
					break; /* frees old: n is not used again */
				}
			}
		}
		rs = calloc(1, sizeof(*rs));
		if (rs == NULL) {
			close(fd);
			continue;
		}
		rs->r = r;
		ph_addr_fmt(&peer, rs->peer, sizeof(rs->peer));
		rs->s = ph_sess_new(r->loop, fd, r->ctx, true, &relay_ops, rs, r->c->hb_ms);
		if (rs->s == NULL) {
			free(rs);
			continue;
		}
		rs->s->peer_addr = peer;
		r->handshakes++;
		ph_list_add_tail(&r->sessions, &rs->node);
	}
}

/* Once a heartbeat: UDP peers idle for a minute are forgotten. */
static void relay_sweep(struct ph_timer *t)
{
	struct ph_relay *r = container_of(t, struct ph_relay, sweep);

	for (struct ph_list *n = r->services.next; n != &r->services; n = n->next) {
		struct rsvc *v = container_of(n, struct rsvc, node);

		while (!ph_list_empty(&v->flows)) {
			struct uflow *f = container_of(v->flows.next, struct uflow, lru);

			if (r->loop->now - f->last < FLOW_IDLE_MS)
				break;
			flow_free(v, f);
		}
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
	ph_task_init(&r->reap, relay_reap);
	ph_timer_init(&r->sweep, relay_sweep);
	ph_io_init(&r->lis, -1, relay_accept);
	if (c->auth_file[0] != '\0') {
		snprintf(r->auth_file, sizeof(r->auth_file), "%s", c->auth_file);
	} else {
		err = ph_conf_dir(dir, sizeof(dir), false, why, whylen);
		if (err < 0)
			goto fail;
		snprintf(r->auth_file, sizeof(r->auth_file), "%s/authorized_keys", dir);
	}
	err = auth_load(r, why, whylen);
	if (err < 0)
		goto fail;
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
	ph_io_init(&r->lis, fd, relay_accept);
	err = ph_io_add(l, &r->lis, EPOLLIN);
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
	ph_task_cancel(&r->reap);
	relay_reap(&r->reap);
	ph_timer_stop(r->loop, &r->sweep);
	ph_io_close(r->loop, &r->lis);
	ph_tls_ctx_free(r->ctx);
	ph_key_free(r->key);
	free(r->keys);
	free(r);
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
			    "\"dgrams_dropped\":%llu}",
			    l == r->sessions.next ? "" : ",", rs->peer, rs->fp, comment,
			    (unsigned long long)rs->s->rtt_ms, (unsigned long long)st->active,
			    (unsigned long long)st->streams, (unsigned long long)st->bytes_in,
			    (unsigned long long)st->bytes_out, (unsigned long long)st->dgrams_in,
			    (unsigned long long)st->dgrams_out,
			    (unsigned long long)st->dgrams_drop);
		else
			OUT("  %s %s%s%s rtt %llu ms, %llu streams (%llu in all), in %s, out %s\n",
			    rs->peer, rs->fp, comment[0] ? " " : "", comment,
			    (unsigned long long)rs->s->rtt_ms, (unsigned long long)st->active,
			    (unsigned long long)st->streams,
			    ph_fmt_bytes(st->bytes_in, up, sizeof(up)),
			    ph_fmt_bytes(st->bytes_out, down, sizeof(down)));
	}
	OUT(json ? "],\"services\":[" : "relay services:\n");
	for (struct ph_list *l = r->services.next; l != &r->services; l = l->next) {
		struct rsvc *v = container_of(l, struct rsvc, node);

		if (json)
			OUT("%s{\"proto\":\"%s\",\"port\":%u,\"name\":\"%s\",\"client\":\"%s\","
			    "\"held\":%s,\"visitors\":%llu,\"datagrams\":%llu,\"bytes_in\":%llu,"
			    "\"bytes_out\":%llu}",
			    l == r->services.next ? "" : ",", proto_str(v->proto), v->port, v->name,
			    v->owner != NULL ? v->owner->peer : "",
			    v->owner == NULL ? "true" : "false", (unsigned long long)v->visitors,
			    (unsigned long long)v->dgrams, (unsigned long long)v->bytes_in,
			    (unsigned long long)v->bytes_out);
		else
			OUT("  %s port %u%s%s: %s, %llu visitors, %llu datagrams\n",
			    proto_str(v->proto), v->port, v->name[0] ? " " : "", v->name,
			    v->owner != NULL ? v->owner->peer : "held for its client",
			    (unsigned long long)v->visitors, (unsigned long long)v->dgrams);
	}
	OUT(json ? "]}" : "");
#undef OUT
	return n < len ? n : len;
}
