/*
 * A socks rule's connections: the handshake (SOCKS5, SOCKS4/4a or HTTP, told apart by the
 * first byte), the destination's name looked up (cached per worker for its TTL), the
 * destination rules, the connect with the protocol's reply, then forward's pump; or BIND's
 * one incoming connection, or UDP ASSOCIATE's datagram relay.
 *
 * The client's bytes are peeked (MSG_PEEK) and only each complete message is read, so
 * whatever a client sends after its request stays in the socket for splice: no copy path.
 */
#include "socks/socks.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn/conn.h"
#include "conn/http.h"
#include "conn/udptab.h"
#include "conn/via.h"
#include "core/connlog.h"
#include "core/log.h"
#include "core/logagg.h"
#include "core/net.h"
#include "core/resolve.h"
#include "core/util.h"

#define SOCKS_PEEK       PH_HTTP_HEAD_MAX /* the largest message: an HTTP request head */
#define SOCKS_BIND_MS    60000            /* BIND waits this long for its incoming connection */
#define SOCKS_UDP_PEERS  16               /* destinations whose replies a UDP relay lets back */
#define SOCKS_UDP_BUDGET 64               /* datagrams per wake-up */
#define SOCKS_UDP_MAX    65535
#define SOCKS_UDP_HOLD   2048 /* a datagram waiting for its name's lookup: at most this */

enum sx_phase {
	SX_FIRST = 0,  /* nothing read yet: the first byte says which protocol */
	SX_GREETING,   /* SOCKS5: methods offered */
	SX_AUTH,       /* SOCKS5: username/password (RFC 1929) */
	SX_REQUEST,    /* SOCKS5: the request */
	SX_REQUEST4,   /* SOCKS4/4a: the request */
	SX_HTTP,       /* HTTP: the request head */
	SX_READY,      /* the request is read: next, its destination */
	SX_RESOLVING,  /* the destination's name is being looked up */
	SX_CONNECTING, /* connect() in flight */
	SX_BIND_WAIT,  /* BIND: waiting for the incoming connection */
	SX_UDP,        /* UDP ASSOCIATE: relaying datagrams while the TCP connection lives */
	SX__NPHASES    /* must stay last */
};

static const char *const sx_phase_name[SX__NPHASES] = {
	"first byte", "greeting",  "auth",       "request",   "request4", "http",
	"ready",      "resolving", "connecting", "bind wait", "udp"};

struct ph_socks_conn {
	struct ph_conn *c; /* borrowed: whose state this is */
	uint8_t proto;     /* 5, 4, or 'H' (HTTP); 0 before the first byte */
	uint8_t phase;     /* enum sx_phase */
	uint8_t cmd;       /* enum ph_socks_cmd */
	uint8_t naddr, ai; /* the destination's addresses, and the next to try */
	bool any_allowed;  /* some address passed the destination rules */
	bool any_refused;  /* some address was refused by them: the first is addrs[refused_ai] */
	uint8_t refused_ai;
	int refused; /* what refused it (ph_socks_dest_allows's why) */
	int lasterr;
	struct ph_socks_dest dst;
	struct ph_addr addrs[PH_RESOLVE_MAX];
	struct ph_name_wait nw; /* in the worker's name cache while a lookup is awaited */
	char *fwd;              /* owned: HTTP, the rewritten head for the origin server */
	size_t fwd_len;
	bool one_request; /* HTTP without a body: the client's later bytes stay unread */
	bool via;         /* --via: pump.io[1] is the relay client's stream, its reply first */
	bool handoff;     /* --via: the client's socket goes to the relay client once connected */
	/* BIND's listener, or UDP ASSOCIATE's socket for the client: both on the address the
	 * client reached (what the reply names) */
	struct ph_io aux;
	struct ph_acceptor bindacc; /* BIND: the listener, through the one accept loop */
	struct ph_io out[2]; /* UDP ASSOCIATE: to destinations, IPv4 and IPv6; made on need */
	bool watched;        /* aux or out was in epoll: freed with the connection */
	/* UDP ASSOCIATE */
	struct ph_addr client; /* where datagrams must come from (port 0: the first tells) */
	/* destinations written to, whose replies are let back: the keyed UDP table (as forward's
	 * sessions and the relay's flows), least recently used first, SOCKS_UDP_PEERS at most;
	 * its buckets made when the association starts */
	struct ph_udptab peers;
	uint64_t udp_last; /* loop ms of the last datagram */
	uint8_t *pend;     /* owned: one datagram waiting for its name's lookup */
	size_t pend_len;
};

/* The only place that assigns sx->phase, so a trace (-vv) shows every path taken. */
#define sx_set_phase(c, sx, p) sx_set_phase_((c), (sx), (p), __LINE__)
static void sx_set_phase_(const struct ph_conn *c, struct ph_socks_conn *sx, enum sx_phase p,
                          int line)
{
	ph_trace("c%llu: socks %s -> %s (line %d)", (unsigned long long)c->id,
	         sx_phase_name[sx->phase], sx_phase_name[p], line);
	sx->phase = (uint8_t)p;
}

const char *ph_socks_phase_name(unsigned p)
{
	return p < SX__NPHASES ? sx_phase_name[p] : NULL;
}

static void socks_connect_next(struct ph_conn *c);
static void socks_conn_free(struct ph_conn *c);
static void socks_on_client(struct ph_io *io, uint32_t events);

static const char *proto_name(const struct ph_socks_conn *sx)
{
	return sx->proto == 5 ? "socks5" : sx->proto == 4 ? "socks4" : "http";
}

static const char *dest_fmt(const struct ph_socks_dest *d, char *buf, size_t len)
{
	struct ph_addr a = d->addr;

	if (d->name[0] != '\0') {
		snprintf(buf, len, "%s:%u", d->name, d->port);
		return buf;
	}
	ph_addr_set_port(&a, d->port);
	return ph_addr_fmt(&a, buf, len);
}

/* Sends a short reply whole, or fails: a fresh socket's buffer always takes it. */
static int send_all(int fd, const void *b, size_t n)
{
	ssize_t r = send(fd, b, n, MSG_NOSIGNAL | MSG_DONTWAIT);

	if (r == -1)
		return -errno;
	return (size_t)r == n ? 0 : -EIO;
}

/* Before closing after an error reply: what the client sent and we did not read would
 * turn our FIN into a reset, which may destroy the reply before it is read. */
static void drain(int fd)
{
	char buf[4096];

	for (int i = 0; i < 16; i++)
		if (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) <= 0)
			return;
}

static uint8_t rep5_of(int err)
{
	switch (err) {
	case -ECONNREFUSED:
		return PH_SOCKS5_REFUSED;
	case -ENETUNREACH:
		return PH_SOCKS5_NET_UNREACH;
	case -EHOSTUNREACH:
	case -ENOENT:
	case -PH_ENONAME: /* the name's lookup failed: no host to reach */
	case -PH_ENOADDR:
	case -PH_EDNSFAIL:
	case -PH_EDNSTIMEOUT:
		return PH_SOCKS5_HOST_UNREACH;
	case -ETIMEDOUT:
		return PH_SOCKS5_TTL_EXPIRED;
	case -EACCES:
		return PH_SOCKS5_NOT_ALLOWED;
	case -EOPNOTSUPP:
		return PH_SOCKS5_CMD_UNSUPPORTED;
	case -EAFNOSUPPORT:
		return PH_SOCKS5_ATYP_UNSUPPORTED;
	default:
		return PH_SOCKS5_FAILURE;
	}
}

static int status_of(int err)
{
	switch (err) {
	case -EACCES:
		return 403;
	case -ETIMEDOUT:
		return 504;
	case -EOPNOTSUPP:
		return 501;
	case -EPROTO:
		return 400;
	default:
		return 502;
	}
}

static const char *status_text(int status)
{
	switch (status) {
	case 400:
		return "Bad Request";
	case 403:
		return "Forbidden";
	case 407:
		return "Proxy Authentication Required";
	case 408:
		return "Request Timeout";
	case 431:
		return "Request Header Fields Too Large";
	case 501:
		return "Not Implemented";
	case 504:
		return "Gateway Timeout";
	default:
		return "Bad Gateway";
	}
}

static void http_reply(int fd, int status, const char *why)
{
	char buf[512];
	int n;

	n = snprintf(buf, sizeof(buf),
	             "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
	             "Connection: close\r\n%s\r\n%s\n",
	             status, status_text(status), strlen(why) + 1,
	             status == 407 ? "Proxy-Authenticate: Basic realm=\"pinhole\"\r\n" : "", why);
	if (n > 0 && (size_t)n < sizeof(buf))
		(void)send_all(fd, buf, (size_t)n);
}

/*
 * The request failed with err: the protocol's reply (SOCKS5 code, SOCKS4 91, HTTP status;
 * status overrides for HTTP when not 0), one log line, the close. Nothing after this.
 */
static void socks_fail(struct ph_conn *c, int err, int status, const char *why)
{
	struct ph_socks_conn *sx = c->vstate;
	int fd = c->pump.io[0].fd;
	char reason[384];

	if (sx->proto == 5 && sx->phase == SX_GREETING) {
		static const uint8_t none[2] = {5, 0xff}; /* no acceptable method */

		(void)send_all(fd, none, sizeof(none));
	} else if (sx->proto == 5 && sx->phase == SX_AUTH) {
		static const uint8_t denied[2] = {1, 1};

		(void)send_all(fd, denied, sizeof(denied));
	} else if (sx->proto == 5 && sx->phase >= SX_REQUEST) {
		uint8_t r[PH_SOCKS5_REPLY_MAX];

		(void)send_all(fd, r, ph_socks5_reply(rep5_of(err), NULL, r));
	} else if (sx->proto == 4 && sx->phase >= SX_REQUEST4) {
		uint8_t r[8];

		ph_socks4_reply(PH_SOCKS4_REJECTED, NULL, r);
		(void)send_all(fd, r, sizeof(r));
	} else if (sx->proto == 'H') {
		char body[448];
		bool dns = err <= -PH_ENONAME && err >= -PH_EDNSTIMEOUT; /* a name's lookup */

		/* the client reads why a name failed; the log line has it after the reason */
		snprintf(body, sizeof(body), "%s%s%s", why, dns ? ": " : "",
		         dns ? ph_strerror(err) : "");
		http_reply(fd, status != 0 ? status : status_of(err), body);
	}
	drain(fd);
	snprintf(reason, sizeof(reason), "%s: %s", sx->proto != 0 ? proto_name(sx) : "socks", why);
	ph_conn_close(c, false, reason, err);
}

/* ---- the destination: cache, lookup, rules, connect ---- */

/* ph_socks_dest_allows for c's rule, with its worker's table of this host's addresses. */
static bool dest_ok(const struct ph_conn *c, const char *name, const struct ph_addr *a, int *why)
{
	return ph_socks_dest_allows(c->wr->rule->socks, c->wr->w->self_addrs, name, a, why);
}

/* Refuses c's request with "what: refused by RULE", counted as denied. */
static void socks_refuse(struct ph_conn *c, const char *what, int why)
{
	/* cut to what an HTTP reply's 512 bytes can carry after its head */
	char rule[PH_SOCKS_NAME_MAX + 96], reason[384];

	PH_CONN_STAT(c->wr, denied, 1);
	snprintf(reason, sizeof(reason), "%s: refused by %s", what,
	         ph_socks_dest_why(c->wr->rule->socks, why, rule, sizeof(rule)));
	socks_fail(c, -EACCES, 0, reason);
}

/*
 * name's addresses (port set) from the worker's name cache into out: their count at once;
 * 0 when c now waits for the lookup (sx->nw; socks_on_names runs with its end); -errno when
 * the name failed (remembered for a moment) or no lookup could start. A lookup already
 * awaited is not asked again: 0.
 */
static int names_get(struct ph_conn *c, const char *name, uint16_t port, struct ph_addr *out)
{
	struct ph_socks_conn *sx = c->vstate;
	const struct ph_addr *a;
	int n;

	if (!ph_list_empty(&sx->nw.node))
		n = ph_names_peek(c->wr->w, name, &a); /* waiting for another: what is known */
	else
		n = ph_names_get(c->wr->w, name, false, &a, &sx->nw);
	for (int i = 0; i < n; i++) {
		out[i] = a[i];
		ph_addr_set_port(&out[i], port);
	}
	return n;
}

static void socks_udp_flush_pending(struct ph_conn *c);

/* The lookup c waited for ended (err 0: the name has addresses now). */
static void socks_on_names(struct ph_name_wait *nw, int err)
{
	struct ph_socks_conn *sx = container_of(nw, struct ph_socks_conn, nw);
	struct ph_conn *c = sx->c;
	char reason[320];
	int n;

	if (sx->phase == SX_UDP) {
		socks_udp_flush_pending(c);
		return;
	}
	if (sx->phase != SX_RESOLVING)
		return;
	ph_timer_stop(&c->wr->w->loop, &c->timer);
	n = err == 0 ? names_get(c, sx->dst.name, sx->dst.port, sx->addrs) : err;
	if (n <= 0) {
		/* err's words (ph_strerror) name the cause: "no such name" */
		snprintf(reason, sizeof(reason), "cannot resolve %s", sx->dst.name);
		PH_CONN_STAT(c->wr, connect_failed, 1);
		socks_fail(c, n < 0 ? n : -PH_ENOADDR, 502, reason);
		return;
	}
	sx->naddr = (uint8_t)n;
	sx->ai = 0;
	socks_connect_next(c);
}

static void socks_on_connect(struct ph_io *io, uint32_t events);

/* Tries the destination's next address the rules allow; replies with the failure when
 * none is left. */
static void socks_connect_next(struct ph_conn *c)
{
	struct ph_socks_conn *sx = c->vstate;
	struct ph_wrule *wr = c->wr;
	char d[PH_SOCKS_NAME_MAX + 16], reason[PH_SOCKS_NAME_MAX + 96], ip[PH_ADDR_STRLEN];
	int err, why;

	while (sx->ai < sx->naddr) {
		const struct ph_addr *a = &sx->addrs[sx->ai++];

		/* 0.0.0.0 and :: would reach this host past any rule about 127.0.0.0/8 */
		if (ph_addr_is_any(a))
			continue;
		if (!dest_ok(c, sx->dst.name, a, &why)) {
			if (!sx->any_refused) {
				sx->refused = why;
				sx->refused_ai = (uint8_t)(sx->ai - 1);
			}
			sx->any_refused = true;
			continue;
		}
		sx->any_allowed = true;
		ph_conn_set_dst(c, a);
		err = ph_conn_dial(c, a, socks_on_connect);
		if (err < 0) {
			sx->lasterr = err;
			continue;
		}
		sx_set_phase(c, sx, SX_CONNECTING);
		return;
	}
	dest_fmt(&sx->dst, d, sizeof(d));
	if (!sx->any_allowed) {
		if (sx->any_refused) {
			/* a name: which address it led to */
			snprintf(reason, sizeof(reason), "%s (%s)", d,
			         ph_addr_fmt(&sx->addrs[sx->refused_ai], ip, sizeof(ip)));
			socks_refuse(c, sx->dst.name[0] != '\0' ? reason : d, sx->refused);
		} else {
			PH_CONN_STAT(wr, denied, 1);
			socks_fail(c, -EACCES, 0,
			           "the unspecified address (this host) is no destination");
		}
		return;
	}
	PH_CONN_STAT(wr, connect_failed, 1);
	snprintf(reason, sizeof(reason), "cannot connect to %s", d);
	socks_fail(c, sx->lasterr != 0 ? sx->lasterr : -EHOSTUNREACH, 0, reason);
}

/* The request succeeded: the protocol's success reply naming bound. Returns 0 or -errno. */
static int socks_reply_ok(struct ph_conn *c, const struct ph_addr *bound)
{
	struct ph_socks_conn *sx = c->vstate;
	int fd = c->pump.io[0].fd;

	if (sx->proto == 5) {
		uint8_t r[PH_SOCKS5_REPLY_MAX];
		struct ph_addr a = *bound;

		ph_addr_unmap(&a);
		return send_all(fd, r, ph_socks5_reply(PH_SOCKS5_OK, &a, r));
	}
	if (sx->proto == 4) {
		uint8_t r[8];
		struct ph_addr a = *bound;

		ph_addr_unmap(&a);
		ph_socks4_reply(PH_SOCKS4_GRANTED, &a, r);
		return send_all(fd, r, sizeof(r));
	}
	if (sx->fwd == NULL) {
		static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";

		return send_all(fd, ok, sizeof(ok) - 1);
	}
	return 0; /* a forwarded request: the origin server answers */
}

/*
 * The target is reached (io[1] is connected, or the relay's stream confirmed): the success
 * reply naming bound, an HTTP request's rewritten head to the target, then the pump; the
 * connection keeps fds of the budget (a pipe takes its own). Nothing after this.
 */
static void socks_established(struct ph_conn *c, const struct ph_addr *bound, unsigned fds,
                              uint32_t events)
{
	struct ph_socks_conn *sx = c->vstate;
	int err = socks_reply_ok(c, bound);

	if (err == 0 && sx->fwd != NULL) {
		err = send_all(c->pump.io[1].fd, sx->fwd, sx->fwd_len);
		if (err == 0) {
			ph_conn_count(c, sx->fwd_len, 0);
			PH_CONN_STAT(c->wr, bytes_up, sx->fwd_len);
			PH_CONN_STAT(c->wr, copied, sx->fwd_len);
		}
	}
	if (err < 0) {
		PH_CONN_STAT(c->wr, errors, 1);
		ph_conn_close(c, true, "cannot send the reply", err);
		return;
	}
	if (sx->one_request)
		ph_pump_down_only(&c->pump);
	socks_conn_free(c); /* the handshake is over: only the pump's state is left */
	ph_conn_fds_trim(c, fds);
	ph_conn_relay(c, events, true);
}

static void socks_on_connect(struct ph_io *io, uint32_t events)
{
	struct ph_conn *c = container_of(io, struct ph_conn, pump.io[1]);
	struct ph_socks_conn *sx = c->vstate;
	struct ph_loop *l = &c->wr->w->loop;
	struct ph_addr bound;
	socklen_t len = sizeof(bound.u);
	int err;

	if (events & (EPOLLERR | EPOLLHUP)) {
		err = ph_sock_error(io->fd);
		sx->lasterr = err < 0 ? err : -ECONNREFUSED;
		ph_io_close(l, io);
		ph_timer_stop(l, &c->timer);
		socks_connect_next(c);
		return;
	}
	if (!(events & EPOLLOUT))
		return;
	ph_timer_stop(l, &c->timer);
	memset(&bound, 0, sizeof(bound));
	if (getsockname(io->fd, &bound.u.sa, &len) == 0)
		bound.len = len;
	socks_established(c, &bound, 2, events); /* client and target (a pipe its own) */
}

/* ---- --via: the relay connects ---- */

/*
 * --via, connected: the success reply (and an HTTP request's head, on the stream), then the
 * client's socket itself goes to the relay client, which carries its bytes from there: no
 * pump here, no hop through the socket pair. Nothing after this.
 */
static void socks_hand_over(struct ph_conn *c, const struct ph_addr *bound)
{
	struct ph_socks_conn *sx = c->vstate;
	int err = socks_reply_ok(c, bound), fd;

	if (err == 0 && sx->fwd != NULL)
		err = send_all(c->pump.io[1].fd, sx->fwd, sx->fwd_len);
	if (err == 0)
		err = ph_via_hand(c->pump.io[1].fd, c->pump.io[0].fd);
	if (err < 0) {
		PH_CONN_STAT(c->wr, errors, 1);
		ph_conn_close(c, true, "cannot hand the connection to the relay client", err);
		return;
	}
	/* the client's socket lives on in the relay client: its registration here must go
	 * explicitly (epoll forgets a socket only when every fd of it is closed) */
	ph_io_forget(&c->wr->w->loop, &c->pump.io[0], &fd);
	close(fd);
	ph_conn_close(c, false, "handed to the relay client", 0); /* closed, not reset */
}

/*
 * The relay client's reply record came (or the stream ended first): the protocol's success
 * reply and the pump, or the failure the relay gave.
 */
static void socks_on_via(struct ph_io *io, uint32_t events)
{
	struct ph_conn *c = container_of(io, struct ph_conn, pump.io[1]);
	struct ph_socks_conn *sx = c->vstate;
	struct ph_loop *l = &c->wr->w->loop;
	uint8_t b[PH_VIA_REPLY_HDR + PH_VIA_TEXT_MAX];
	char reason[PH_VIA_TEXT_MAX + PH_SOCKS_NAME_MAX + 64], d[PH_SOCKS_NAME_MAX + 16];
	struct ph_via_reply rep;
	ssize_t n;
	int used, err;

	/* peeked first: the target's bytes behind the record are the pump's */
	do
		n = recv(io->fd, b, sizeof(b), MSG_PEEK);
	while (n < 0 && errno == EINTR);
	if (n < 0 && errno == EAGAIN && !(events & (EPOLLHUP | EPOLLERR)))
		return;
	used = n > 0 ? ph_via_reply_parse(b, (size_t)n, &rep) : -EPROTO;
	if (used == -EAGAIN && !(events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)))
		return;
	ph_timer_stop(l, &c->timer);
	dest_fmt(&sx->dst, d, sizeof(d));
	if (used < 0) {
		PH_CONN_STAT(c->wr, errors, 1);
		snprintf(reason, sizeof(reason), "%s: the relay client ended the stream", d);
		socks_fail(c, -EIO, 502, reason);
		return;
	}
	(void)!recv(io->fd, b, (size_t)used, 0); /* the record leaves the socket */
	if (rep.status != PH_VIA_OK) {
		err = ph_via_errno(rep.status);
		PH_CONN_STAT(c->wr, connect_failed, 1);
		snprintf(reason, sizeof(reason), "%s through the relay: %s", d,
		         rep.text[0] != '\0' ? rep.text : ph_strerror(err));
		socks_fail(c, err, 0, reason);
		return;
	}
	if (sx->handoff) {
		socks_hand_over(c, &rep.bound);
		return;
	}
	/* fds: client, this end of the stream, and the relay client's end on the main thread */
	socks_established(c, &rep.bound, 3, events | EPOLLIN | EPOLLOUT);
}

/* CONNECT through --via: the relay client is asked; its reply comes first on the stream. */
static void socks_via(struct ph_conn *c)
{
	struct ph_socks_conn *sx = c->vstate;
	struct ph_wrule *wr = c->wr;
	struct ph_loop *l = &wr->w->loop;
	char host[PH_SOCKS_NAME_MAX + 1], reason[128];
	int fd, err;

	if (sx->dst.name[0] != '\0') {
		snprintf(host, sizeof(host), "%s", sx->dst.name);
	} else { /* an address is judged here; a name's addresses only the relay learns */
		struct ph_addr a = sx->dst.addr;
		char d[PH_SOCKS_NAME_MAX + 16];
		int why;

		ph_addr_set_port(&a, sx->dst.port);
		ph_addr_unmap(&a);
		if (ph_addr_is_any(&a)) {
			PH_CONN_STAT(wr, denied, 1);
			socks_fail(c, -EACCES, 0, "the unspecified address is no destination");
			return;
		}
		if (!dest_ok(c, NULL, &a, &why)) {
			socks_refuse(c, dest_fmt(&sx->dst, d, sizeof(d)), why);
			return;
		}
		if (a.u.sa.sa_family == AF_INET)
			inet_ntop(AF_INET, &a.u.in.sin_addr, host, sizeof(host));
		else
			inet_ntop(AF_INET6, &a.u.in6.sin6_addr, host, sizeof(host));
	}
	/* the client's socket follows the reply, unless the pump must keep some of its bytes
	 * unread (an HTTP request without a body) */
	sx->handoff = !sx->one_request;
	fd = sx->handoff ? ph_via_dial_handoff(wr->rule->via, host, sx->dst.port)
	                 : ph_via_dial(wr->rule->via, host, sx->dst.port);
	if (fd < 0) {
		PH_CONN_STAT(wr, errors, 1);
		snprintf(reason, sizeof(reason), "cannot hand the request to the relay client: %s",
		         strerror(-fd));
		socks_fail(c, -EIO, 502, reason);
		return;
	}
	ph_io_init(&c->pump.io[1], fd, socks_on_via);
	err = ph_io_add(l, &c->pump.io[1], PH_PUMP_EVENTS);
	if (err < 0) {
		ph_io_close(l, &c->pump.io[1]);
		socks_fail(c, err, 502, "cannot poll");
		return;
	}
	sx->via = true;
	sx_set_phase(c, sx, SX_CONNECTING);
	ph_timer_arm(l, &c->timer, wr->rule->connect_timeout);
}

/* The local address the client reached us at, port 0: where BIND and UDP listen. */
static int local_of(struct ph_conn *c, struct ph_addr *a)
{
	socklen_t len = sizeof(a->u);

	memset(a, 0, sizeof(*a));
	if (getsockname(c->pump.io[0].fd, &a->u.sa, &len) == -1)
		return -errno;
	a->len = len;
	ph_addr_unmap(a);
	ph_addr_set_port(a, 0);
	return 0;
}

/* The unspecified address of a's family, port 0. */
static void any_of(const struct ph_addr *a, struct ph_addr *any)
{
	ph_addr_from_literal(a->u.sa.sa_family == AF_INET6 ? "::" : "0.0.0.0", 0, any);
}

static const char *socks_bind_label(struct ph_acceptor *a, char *buf, size_t len)
{
	struct ph_socks_conn *sx = container_of(a, struct ph_socks_conn, bindacc);

	snprintf(buf, len, "c%llu: BIND", (unsigned long long)sx->c->id);
	return buf;
}

/* BIND's incoming connection (the shared accept loop retries after an fd shortage). */
static void socks_on_bind_accept(struct ph_acceptor *acc, int fd, const struct ph_addr *from)
{
	struct ph_socks_conn *sx = container_of(acc, struct ph_socks_conn, bindacc);
	struct ph_conn *c = sx->c;
	struct ph_loop *l = &c->wr->w->loop;
	struct ph_addr peer = *from, want = sx->dst.addr;
	char a[PH_ADDR_STRLEN];
	int err;

	ph_addr_unmap(&want);
	ph_addr_set_port(&want, ph_addr_port(&peer));
	/* the connection must come from the host the client named (unless 0.0.0.0) */
	if ((sx->dst.name[0] == '\0' && !ph_addr_is_any(&sx->dst.addr) &&
	     !ph_addr_equal(&want, &peer)) ||
	    !dest_ok(c, NULL, &peer, NULL)) {
		char label[96];

		ph_logagg_note(ph_rule_label(c->wr->rule, label, sizeof(label)), "BIND peers",
		               "refused: not the host the client named",
		               "c%llu: BIND: refused a connection from %s",
		               (unsigned long long)c->id, ph_addr_fmt(&peer, a, sizeof(a)));
		ph_sock_set_rst(fd);
		close(fd);
		return; /* the listener waits for the next */
	}
	ph_acceptor_close(&sx->bindacc); /* one connection only: the accept loop stops here */
	ph_timer_stop(l, &c->timer);
	ph_io_init(&c->pump.io[1], fd, NULL);
	ph_conn_set_dst(c, &peer);
	err = socks_reply_ok(c, &peer);
	if (err < 0) {
		ph_conn_close(c, true, "BIND: cannot send the second reply", err);
		return;
	}
	socks_conn_free(c);
	ph_conn_fds_trim(c, 2); /* client and peer: the listener is closed */
	ph_conn_relay(c, 0, false);
}

static void socks_bind(struct ph_conn *c)
{
	struct ph_socks_conn *sx = c->vstate;
	struct ph_loop *l = &c->wr->w->loop;
	struct ph_addr local, bound;
	socklen_t len = sizeof(bound.u);
	int fd, err;

	/* on the address the client reached us at, which the reply names: a port on every
	 * interface would open this host wider than the proxy itself is */
	err = local_of(c, &local);
	if (err == 0) {
		fd = ph_tcp_listen(&local, true, false);
		err = fd < 0 ? fd : 0;
	}
	if (err == 0) {
		/* its peer's fds are within the connection's own reservation: cost 0 */
		ph_acceptor_init(&sx->bindacc, fd, 0, socks_on_bind_accept, socks_bind_label);
		sx->watched = true;
		err = ph_acceptor_start(l, &sx->bindacc);
	}
	if (err == 0 && getsockname(sx->bindacc.io.fd, &bound.u.sa, &len) == -1)
		err = -errno;
	if (err == 0 && sx->proto == 4 && local.u.sa.sa_family != AF_INET)
		err = -EAFNOSUPPORT;
	if (err == 0) {
		ph_addr_set_port(&local, ph_addr_port(&bound));
		err = socks_reply_ok(c, &local);
	}
	if (err < 0) {
		PH_CONN_STAT(c->wr, errors, 1);
		socks_fail(c, err, 0, "BIND: cannot listen for the incoming connection");
		return;
	}
	sx_set_phase(c, sx, SX_BIND_WAIT);
	ph_timer_arm(l, &c->timer, SOCKS_BIND_MS);
}

/* ---- UDP ASSOCIATE ---- */

/* One destination a UDP association wrote to. */
struct udp_peer {
	struct ph_udp_node node;
};

/* a as a UDP table's key: family, address, port and scope only, the rest zero. */
static void peer_key(const struct ph_addr *a, struct ph_udp_key *k)
{
	memset(k, 0, sizeof(*k));
	k->peer.u.sa.sa_family = a->u.sa.sa_family;
	if (a->u.sa.sa_family == AF_INET) {
		k->peer.u.in.sin_port = a->u.in.sin_port;
		k->peer.u.in.sin_addr = a->u.in.sin_addr;
		k->peer.len = sizeof(k->peer.u.in);
	} else {
		k->peer.u.in6.sin6_port = a->u.in6.sin6_port;
		k->peer.u.in6.sin6_addr = a->u.in6.sin6_addr;
		k->peer.u.in6.sin6_scope_id = a->u.in6.sin6_scope_id;
		k->peer.len = sizeof(k->peer.u.in6);
	}
}

static bool udp_peer_known(struct ph_socks_conn *sx, const struct ph_addr *a)
{
	struct ph_udp_key k;

	if (sx->peers.b == NULL)
		return false;
	peer_key(a, &k);
	return ph_udptab_find(&sx->peers, &k) != NULL;
}

/* a was written to: its replies are let back (the least recent of 16 makes room). */
static void udp_peer_add(struct ph_socks_conn *sx, const struct ph_addr *a, uint64_t now)
{
	struct ph_udp_node *n;
	struct udp_peer *p;
	struct ph_udp_key k;

	if (sx->peers.b == NULL)
		return;
	peer_key(a, &k);
	n = ph_udptab_find(&sx->peers, &k);
	if (n != NULL) {
		ph_udptab_touch(&sx->peers, n, now);
		return;
	}
	if (sx->peers.n >= SOCKS_UDP_PEERS) {
		n = ph_udptab_oldest(&sx->peers);
		ph_udptab_del(&sx->peers, n);
		free(container_of(n, struct udp_peer, node));
	}
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		return; /* its replies are dropped: the datagram itself went out */
	ph_udptab_add(&sx->peers, &p->node, &k, now);
}

/* Ends the association's table of destinations. */
static void udp_peers_free(struct ph_socks_conn *sx)
{
	struct ph_udp_node *n;

	if (sx->peers.b == NULL)
		return;
	while ((n = ph_udptab_oldest(&sx->peers)) != NULL) {
		ph_udptab_del(&sx->peers, n);
		free(container_of(n, struct udp_peer, node));
	}
	ph_udptab_free(&sx->peers);
}

static void socks_on_udp(struct ph_io *io, uint32_t events);
static void socks_on_udp_out4(struct ph_io *io, uint32_t events);
static void socks_on_udp_out6(struct ph_io *io, uint32_t events);

/* Multicast and broadcast: a relay for one client has no business on the LAN's groups. */
static bool is_multicast(const struct ph_addr *a)
{
	if (a->u.sa.sa_family == AF_INET) {
		uint32_t v = ntohl(a->u.in.sin_addr.s_addr);

		return (v >> 28) == 0xe || v == 0xffffffffu;
	}
	return a->u.sa.sa_family == AF_INET6 && IN6_IS_ADDR_MULTICAST(&a->u.in6.sin6_addr);
}

/*
 * The socket to destinations of a's family: returns its fd (made now if needed), or
 * -errno. Not the client's socket: that one is on the address the client reached, which
 * may be 127.0.0.1, and could not send beyond this host. Bound to --source when it is of
 * a's family; else the kernel picks the address per destination.
 */
static int udp_out(struct ph_conn *c, const struct ph_addr *a)
{
	struct ph_socks_conn *sx = c->vstate;
	const struct ph_rule *r = c->wr->rule;
	bool v6 = a->u.sa.sa_family == AF_INET6;
	struct ph_io *io = &sx->out[v6];
	struct ph_addr from;
	int fd, err;

	if (io->fd != -1)
		return io->fd;
	any_of(a, &from);
	if (r->has_source && r->source.u.sa.sa_family == a->u.sa.sa_family) {
		from = r->source;
		ph_addr_set_port(&from, 0);
	}
	fd = ph_udp_bind(&from, true, false, false, 0);
	if (fd < 0)
		return fd;
	ph_io_init(io, fd, v6 ? socks_on_udp_out6 : socks_on_udp_out4);
	sx->watched = true;
	err = ph_io_add(&c->wr->w->loop, io, EPOLLIN | EPOLLET);
	if (err < 0) {
		ph_io_close(&c->wr->w->loop, io);
		return err;
	}
	return fd;
}

/* Sends a client's datagram on to dst (resolved). Returns true when it went. */
static bool udp_send(struct ph_conn *c, const struct ph_socks_dest *d, const struct ph_addr *dst,
                     const uint8_t *data, size_t n)
{
	struct ph_socks_conn *sx = c->vstate;
	struct ph_wrule *wr = c->wr;
	struct ph_addr a = *dst;
	int fd;

	ph_addr_unmap(&a);
	if (ph_addr_is_any(&a) || is_multicast(&a) || !dest_ok(c, d->name, &a, NULL))
		return false;
	fd = udp_out(c, &a);
	if (fd < 0 || sendto(fd, data, n, MSG_DONTWAIT, &a.u.sa, a.len) == -1)
		return false;
	udp_peer_add(sx, &a, c->wr->w->loop.now);
	ph_conn_count(c, n, 0);
	PH_CONN_STAT(wr, bytes_up, n);
	PH_CONN_STAT(wr, dgrams_up, 1);
	return true;
}

static void socks_udp_flush_pending(struct ph_conn *c)
{
	struct ph_socks_conn *sx = c->vstate;
	struct ph_socks_dest d;
	struct ph_addr addrs[PH_RESOLVE_MAX];
	const char *why;
	int n, hl;

	if (sx->pend == NULL)
		return;
	hl = ph_socks5_udp_parse(sx->pend, sx->pend_len, &d, &why);
	n = hl > 0 ? names_get(c, d.name, d.port, addrs) : 0;
	if (n <= 0 || !udp_send(c, &d, &addrs[0], sx->pend + hl, sx->pend_len - (size_t)hl))
		PH_CONN_STAT(c->wr, dgrams_dropped, 1);
	free(sx->pend);
	sx->pend = NULL;
}

/*
 * --via: a client's datagram to the relay client, behind its destination as the client
 * wrote it (a name is looked up on the relay). Returns true when it went.
 */
static bool udp_via_send(struct ph_conn *c, const struct ph_socks_dest *d, const uint8_t *data,
                         size_t n)
{
	struct ph_socks_conn *sx = c->vstate;
	static __thread uint8_t m[PH_VIA_DGRAM_HDR_MAX + SOCKS_UDP_MAX];
	char host[PH_SOCKS_NAME_MAX + 1];
	size_t hl;

	if (d->name[0] != '\0') {
		if (!dest_ok(c, d->name, NULL, NULL))
			return false;
		snprintf(host, sizeof(host), "%s", d->name);
	} else {
		struct ph_addr a = d->addr;

		ph_addr_set_port(&a, d->port);
		ph_addr_unmap(&a);
		if (ph_addr_is_any(&a) || is_multicast(&a) || !dest_ok(c, NULL, &a, NULL))
			return false;
		if (a.u.sa.sa_family == AF_INET)
			inet_ntop(AF_INET, &a.u.in.sin_addr, host, sizeof(host));
		else
			inet_ntop(AF_INET6, &a.u.in6.sin6_addr, host, sizeof(host));
	}
	hl = ph_via_dgram_put(host, d->port, m);
	if (n > SOCKS_UDP_MAX)
		return false;
	memcpy(m + hl, data, n);
	if (send(sx->out[0].fd, m, hl + n, MSG_DONTWAIT | MSG_NOSIGNAL) == -1)
		return false;
	ph_conn_count(c, n, 0);
	PH_CONN_STAT(c->wr, bytes_up, n);
	PH_CONN_STAT(c->wr, dgrams_up, 1);
	return true;
}

/* --via: the relay client's datagrams (behind their source), back to the client. */
static void socks_on_via_udp(struct ph_io *io, uint32_t events)
{
	static __thread uint8_t buf[PH_SOCKS_UDP_HDR_MAX + PH_VIA_FROM_MAX + SOCKS_UDP_MAX];
	struct ph_socks_conn *sx = container_of(io, struct ph_socks_conn, out[0]);
	struct ph_conn *c = sx->c;
	struct ph_wrule *wr = c->wr;
	uint8_t *m = buf + PH_SOCKS_UDP_HDR_MAX; /* room to put a SOCKS header in front */

	(void)events;
	for (unsigned i = 0; i < SOCKS_UDP_BUDGET && c->vstate == sx && io->fd != -1; i++) {
		ssize_t n = recv(io->fd, m, PH_VIA_FROM_MAX + SOCKS_UDP_MAX, MSG_DONTWAIT);
		uint8_t h[PH_SOCKS_UDP_HDR_MAX];
		struct ph_addr from;
		size_t hl;
		int fl;

		if (n == -1 && errno == EAGAIN)
			return;
		if (n <= 0) {
			ph_conn_close(c, false, "udp: the relay client ended the association", 0);
			return;
		}
		fl = ph_via_from_get(m, (size_t)n, &from);
		if (fl < 0 || ph_addr_port(&sx->client) == 0) {
			PH_CONN_STAT(wr, dgrams_dropped, 1);
			continue;
		}
		if (from.u.sa.sa_family == AF_UNSPEC) /* no source known: 0.0.0.0:0 */
			(void)ph_addr_from_literal("0.0.0.0", 0, &from);
		hl = ph_socks5_udp_header(&from, h);
		memcpy(m + fl - hl, h, hl);
		if (sendto(sx->aux.fd, m + fl - hl, (size_t)n - (size_t)fl + hl, MSG_DONTWAIT,
		           &sx->client.u.sa, sx->client.len) == -1) {
			PH_CONN_STAT(wr, dgrams_dropped, 1);
			continue;
		}
		sx->udp_last = wr->w->loop.now;
		ph_conn_count(c, 0, (uint64_t)n - (uint64_t)fl);
		PH_CONN_STAT(wr, bytes_down, (uint64_t)n - (uint64_t)fl);
		PH_CONN_STAT(wr, dgrams_down, 1);
	}
	if (c->vstate == sx && io->fd != -1)
		ph_io_mod(&wr->w->loop, io, EPOLLIN | EPOLLET); /* budget used: report again */
}

/* A datagram from the client: header off, on to its destination. */
static void udp_from_client(struct ph_conn *c, uint8_t *b, size_t n)
{
	struct ph_socks_conn *sx = c->vstate;
	struct ph_wrule *wr = c->wr;
	struct ph_addr addrs[PH_RESOLVE_MAX];
	struct ph_socks_dest d;
	const char *why;
	int hl = ph_socks5_udp_parse(b, n, &d, &why), na;
	bool waiting;

	if (hl < 0) {
		PH_CONN_STAT(wr, dgrams_dropped, 1);
		ph_debug("c%llu: udp: dropped a datagram: %s", (unsigned long long)c->id, why);
		return;
	}
	if (wr->rule->via != NULL) {
		if (!udp_via_send(c, &d, b + hl, n - (size_t)hl))
			PH_CONN_STAT(wr, dgrams_dropped, 1);
		return;
	}
	if (d.name[0] == '\0') {
		struct ph_addr a = d.addr;

		ph_addr_set_port(&a, d.port);
		if (!udp_send(c, &d, &a, b + hl, n - (size_t)hl))
			PH_CONN_STAT(wr, dgrams_dropped, 1);
		return;
	}
	waiting = !ph_list_empty(&sx->nw.node);
	na = names_get(c, d.name, d.port, addrs); /* may start a lookup, and wait for it */
	if (na > 0) {
		if (!udp_send(c, &d, &addrs[0], b + hl, n - (size_t)hl))
			PH_CONN_STAT(wr, dgrams_dropped, 1);
		return;
	}
	/* the name is looked up; its first datagram waits for it, the others are dropped */
	if (na < 0 || waiting || !dest_ok(c, d.name, NULL, NULL)) {
		PH_CONN_STAT(wr, dgrams_dropped, 1);
		if (na == 0 && !waiting) /* the lookup this started serves nothing */
			ph_name_wait_cancel(&sx->nw);
		return;
	}
	free(sx->pend);
	sx->pend = n <= SOCKS_UDP_HOLD ? malloc(n) : NULL; /* a name's first datagram: small */
	if (sx->pend == NULL) {
		ph_name_wait_cancel(&sx->nw);
		PH_CONN_STAT(wr, dgrams_dropped, 1);
		return;
	}
	memcpy(sx->pend, b, n);
	sx->pend_len = n;
}

/* Datagrams on io: the client's socket (from the client only), or one to destinations
 * (from those the client wrote to only). */
static void udp_read(struct ph_socks_conn *sx, struct ph_io *io)
{
	static __thread uint8_t buf[PH_SOCKS_UDP_HDR_MAX + SOCKS_UDP_MAX];
	struct ph_conn *c = sx->c;
	struct ph_wrule *wr = c->wr;
	uint8_t *data = buf + PH_SOCKS_UDP_HDR_MAX; /* room to put a header in front */

	for (unsigned i = 0; i < SOCKS_UDP_BUDGET && c->vstate == sx && io->fd != -1; i++) {
		struct ph_addr from;
		socklen_t len = sizeof(from.u);
		ssize_t n = recvfrom(io->fd, data, SOCKS_UDP_MAX, 0, &from.u.sa, &len);

		if (n == -1) {
			if (errno == EAGAIN)
				return;
			continue; /* EINTR, or an ICMP error of an earlier send */
		}
		from.len = len;
		ph_addr_unmap(&from);
		if (io == &sx->aux &&
		    (ph_addr_equal(&from, &sx->client) ||
		     (ph_addr_port(&sx->client) == 0 && ph_addr_same_host(&from, &sx->client)))) {
			sx->client = from; /* the first datagram tells the client's port */
			sx->udp_last = wr->w->loop.now;
			udp_from_client(c, data, (size_t)n);
		} else if (io != &sx->aux && udp_peer_known(sx, &from)) {
			uint8_t h[PH_SOCKS_UDP_HDR_MAX];
			size_t hl = ph_socks5_udp_header(&from, h);

			memcpy(data - hl, h, hl);
			if (ph_addr_port(&sx->client) == 0 ||
			    sendto(sx->aux.fd, data - hl, (size_t)n + hl, MSG_DONTWAIT,
			           &sx->client.u.sa, sx->client.len) == -1) {
				PH_CONN_STAT(wr, dgrams_dropped, 1);
				continue;
			}
			sx->udp_last =
				wr->w->loop.now; /* a stranger's datagram keeps nothing alive */
			ph_conn_count(c, 0, (uint64_t)n);
			PH_CONN_STAT(wr, bytes_down, (uint64_t)n);
			PH_CONN_STAT(wr, dgrams_down, 1);
		} else {
			PH_CONN_STAT(wr, dgrams_dropped,
			             1); /* not the client, nor whom it wrote to */
		}
	}
	if (c->vstate == sx && io->fd != -1)
		ph_io_mod(&wr->w->loop, io, EPOLLIN | EPOLLET); /* budget used: report again */
}

static void socks_on_udp(struct ph_io *io, uint32_t events)
{
	(void)events;
	udp_read(container_of(io, struct ph_socks_conn, aux), io);
}

static void socks_on_udp_out4(struct ph_io *io, uint32_t events)
{
	(void)events;
	udp_read(container_of(io, struct ph_socks_conn, out[0]), io);
}

static void socks_on_udp_out6(struct ph_io *io, uint32_t events)
{
	(void)events;
	udp_read(container_of(io, struct ph_socks_conn, out[1]), io);
}

static void socks_udp(struct ph_conn *c)
{
	struct ph_socks_conn *sx = c->vstate;
	struct ph_wrule *wr = c->wr;
	struct ph_loop *l = &wr->w->loop;
	struct ph_addr local, bound;
	socklen_t len = sizeof(bound.u);
	int fd, err;

	/* the client's socket is on the address it reached us at, which the reply names (not
	 * every interface); destinations get sockets of their own (udp_out) */
	err = local_of(c, &local);
	if (err == 0)
		err = ph_udptab_init(&sx->peers); /* freed with sx, whatever happens next */
	if (err == 0) {
		fd = ph_udp_bind(&local, true, false, false, 0);
		err = fd < 0 ? fd : 0;
	}
	if (err == 0) {
		ph_io_init(&sx->aux, fd, socks_on_udp);
		sx->watched = true;
		err = ph_io_add(l, &sx->aux, EPOLLIN | EPOLLET);
	}
	if (err == 0 && getsockname(sx->aux.fd, &bound.u.sa, &len) == -1)
		err = -errno;
	if (err == 0 && wr->rule->via != NULL) { /* datagrams go to the relay client */
		fd = ph_via_assoc(wr->rule->via);
		err = fd < 0 ? fd : 0;
		if (err == 0) {
			ph_io_init(&sx->out[0], fd, socks_on_via_udp);
			err = ph_io_add(l, &sx->out[0], EPOLLIN | EPOLLET);
		}
	}
	if (err == 0) {
		ph_addr_set_port(&local, ph_addr_port(&bound));
		err = socks_reply_ok(c, &local);
	}
	if (err < 0) {
		PH_CONN_STAT(wr, errors, 1);
		socks_fail(c, err, 0, "UDP ASSOCIATE: cannot open the relay socket");
		return;
	}
	/* datagrams are taken from the client's host only; from the port it named, or the
	 * first one's */
	sx->client = c->peer;
	ph_addr_unmap(&sx->client);
	ph_addr_set_port(&sx->client, sx->dst.port);
	sx_set_phase(c, sx, SX_UDP);
	sx->udp_last = l->now;
	ph_conn_set_dst(c, &local);
	ph_timer_arm(l, &c->timer, wr->rule->udp_timeout);
}

/* The request is read: its destination is checked, looked up, connected to. */
static void socks_begin(struct ph_conn *c)
{
	struct ph_socks_conn *sx = c->vstate;
	struct ph_wrule *wr = c->wr;
	struct ph_loop *l = &wr->w->loop;
	char d[PH_SOCKS_NAME_MAX + 16], reason[PH_SOCKS_NAME_MAX + 96];
	int err, why;

	ph_timer_stop(l, &c->timer);
	ph_trace("c%llu: %s %s %s", (unsigned long long)c->id, proto_name(sx),
	         sx->cmd == PH_SOCKS_CONNECT ? "CONNECT"
	         : sx->cmd == PH_SOCKS_BIND  ? "BIND"
	                                     : "UDP ASSOCIATE",
	         dest_fmt(&sx->dst, d, sizeof(d)));
	if (wr->rule->via != NULL && sx->cmd == PH_SOCKS_BIND) {
		socks_fail(c, -EOPNOTSUPP, 501,
		           "BIND is not carried through --via (CONNECT and UDP ASSOCIATE are)");
		return;
	}
	if (sx->cmd == PH_SOCKS_BIND) {
		/* the peer is checked against DST.ADDR: it must be an address the rules allow */
		if (sx->dst.name[0] != '\0') {
			socks_fail(
				c, -EAFNOSUPPORT, 0,
				"BIND takes the address of the host that will connect, not a name");
			return;
		}
		if (!ph_addr_is_any(&sx->dst.addr) && !dest_ok(c, NULL, &sx->dst.addr, &why)) {
			snprintf(reason, sizeof(reason), "BIND for %s",
			         dest_fmt(&sx->dst, d, sizeof(d)));
			socks_refuse(c, reason, why);
			return;
		}
		socks_bind(c);
		return;
	}
	if (sx->cmd == PH_SOCKS_UDP) {
		socks_udp(c);
		return;
	}
	if (!dest_ok(c, sx->dst.name, NULL, &why)) {
		socks_refuse(c, dest_fmt(&sx->dst, d, sizeof(d)), why);
		return;
	}
	if (wr->rule->via != NULL) {
		socks_via(c);
		return;
	}
	sx->ai = 0;
	if (sx->dst.name[0] == '\0' && ph_addr_is_any(&sx->dst.addr)) {
		PH_CONN_STAT(wr, denied, 1);
		socks_fail(c, -EACCES, 0, "the unspecified address (this host) is no destination");
		return;
	}
	if (sx->dst.name[0] == '\0') {
		sx->addrs[0] = sx->dst.addr;
		ph_addr_set_port(&sx->addrs[0], sx->dst.port);
		sx->naddr = 1;
		socks_connect_next(c);
		return;
	}
	err = names_get(c, sx->dst.name, sx->dst.port, sx->addrs);
	if (err > 0) {
		sx->naddr = (uint8_t)err;
		socks_connect_next(c);
		return;
	}
	if (err < 0) { /* the name failed a moment ago, or no lookup could start */
		PH_CONN_STAT(wr, connect_failed, 1);
		snprintf(reason, sizeof(reason), "cannot resolve %s", sx->dst.name);
		socks_fail(c, err, 502, reason);
		return;
	}
	sx_set_phase(c, sx, SX_RESOLVING);
	ph_timer_arm(l, &c->timer, wr->rule->connect_timeout);
}

/* ---- the handshake ---- */

/* A client's word fit for a log line: printable ASCII, at most 32 bytes, '?' for the rest. */
static const char *printable(const char *s, size_t n, char *out, size_t cap)
{
	size_t k = 0;

	for (size_t i = 0; i < n && k + 4 < cap && i < 32; i++)
		out[k++] = s[i] > ' ' && s[i] < 0x7f && s[i] != '\'' ? s[i] : '?';
	if (n > 32 && k + 4 < cap) {
		memcpy(out + k, "...", 3);
		k += 3;
	}
	out[k] = '\0';
	return out;
}

/*
 * Each step reads one message of the handshake from the n bytes peeked at b. Returns the
 * bytes it used (to be read from the socket), 0 when more must come first, -EAGAIN or
 * -EPROTO (why set) from its parser for socks_step to judge, or -1 when c was closed.
 */
static int step_first(struct ph_conn *c, struct ph_socks_conn *sx, const uint8_t *b)
{
	if (b[0] == 5) {
		sx->proto = 5;
		sx_set_phase(c, sx, SX_GREETING);
	} else if (b[0] == 4) {
		sx->proto = 4;
		sx_set_phase(c, sx, SX_REQUEST4);
	} else if (b[0] >= 'A' && b[0] <= 'Z') {
		sx->proto = 'H';
		sx_set_phase(c, sx, SX_HTTP);
	} else {
		PH_CONN_STAT(c->wr, errors, 1);
		socks_fail(c, -EPROTO, 0, "neither SOCKS nor HTTP");
		return -1;
	}
	return 0;
}

static int step_greeting(struct ph_conn *c, struct ph_socks_conn *sx, const uint8_t *b, size_t n,
                         const char **why)
{
	const struct ph_socks_conf *sc = c->wr->rule->socks;
	unsigned methods;
	uint8_t r[2];
	int len = ph_socks5_greeting(b, n, &methods, why);

	if (len <= 0)
		return len;
	r[0] = 5;
	r[1] = sc->nusers != 0 ? (methods & PH_SOCKS5_M_USERPASS ? 0x02 : 0xff)
	                       : (methods & PH_SOCKS5_M_NONE ? 0x00 : 0xff);
	if (send_all(c->pump.io[0].fd, r, 2) < 0 || r[1] == 0xff) {
		drain(c->pump.io[0].fd);
		ph_conn_close(c, false,
		              sc->nusers != 0 ? "socks5: the client offers no "
		                                "username/password, which is required"
		                              : "socks5: the client offers no method "
		                                "but username/password, and no users are "
		                                "set",
		              -EACCES);
		return -1;
	}
	sx_set_phase(c, sx, r[1] == 0x02 ? SX_AUTH : SX_REQUEST);
	return len;
}

static int step_auth(struct ph_conn *c, struct ph_socks_conn *sx, const uint8_t *b, size_t n,
                     const char **why)
{
	char user[PH_SOCKS_NAME_MAX + 1], pass[PH_SOCKS_NAME_MAX + 1],
		reason[PH_SOCKS_NAME_MAX + 96], shown[40];
	size_t ulen = 0, plen = 0;
	uint8_t r[2];
	int len;

	memset(user, 0, sizeof(user));
	memset(pass, 0, sizeof(pass));
	len = ph_socks5_userpass(b, n, user, &ulen, pass, &plen, why);
	if (len <= 0)
		return len;
	r[0] = 1;
	r[1] = ph_socks_user_ok(c->wr->rule->socks, user, ulen, pass, plen) ? 0 : 1;
	explicit_bzero(pass, sizeof(pass));
	if (send_all(c->pump.io[0].fd, r, 2) < 0 || r[1] != 0) {
		PH_CONN_STAT(c->wr, denied, 1);
		drain(c->pump.io[0].fd);
		snprintf(reason, sizeof(reason), "socks5: wrong user name or password (user '%s')",
		         printable(user, ulen, shown, sizeof(shown)));
		ph_conn_close(c, false, reason, -EACCES);
		return -1;
	}
	sx_set_phase(c, sx, SX_REQUEST);
	return len;
}

static int step_request5(struct ph_conn *c, struct ph_socks_conn *sx, const uint8_t *b, size_t n,
                         const char **why)
{
	struct ph_socks_req req;
	uint8_t rep;
	int len = ph_socks5_request(b, n, &req, &rep, why);

	if (len == -EPROTO) {
		PH_CONN_STAT(c->wr, errors, 1);
		socks_fail(c,
		           rep == PH_SOCKS5_CMD_UNSUPPORTED    ? -EOPNOTSUPP
		           : rep == PH_SOCKS5_ATYP_UNSUPPORTED ? -EAFNOSUPPORT
		           : rep == PH_SOCKS5_HOST_UNREACH     ? -PH_ENONAME
		                                               : -EPROTO,
		           0, *why);
		return -1;
	}
	if (len <= 0)
		return len;
	sx->cmd = req.cmd;
	sx->dst = req.dst;
	sx_set_phase(c, sx, SX_READY);
	return len;
}

static int step_request4(struct ph_conn *c, struct ph_socks_conn *sx, const uint8_t *b, size_t n,
                         const char **why)
{
	struct ph_socks_req req;
	int len = ph_socks4_request(b, n, &req, why);

	if (len <= 0)
		return len;
	if (c->wr->rule->socks->nusers != 0) {
		PH_CONN_STAT(c->wr, denied, 1);
		socks_fail(c, -EACCES, 0, "SOCKS4 has no passwords, and users are set");
		return -1;
	}
	sx->cmd = req.cmd;
	sx->dst = req.dst;
	sx_set_phase(c, sx, SX_READY);
	return len;
}

/* HTTP Basic credentials of hr against the rule's users. Returns true, or false with c closed. */
static bool http_user_ok(struct ph_conn *c, const struct ph_http_proxy_req *hr)
{
	char user[PH_SOCKS_NAME_MAX + 1], pass[PH_SOCKS_NAME_MAX + 1],
		reason[PH_SOCKS_NAME_MAX + 96], shown[40];
	size_t ulen = 0, plen = 0;
	bool ok = false;

	memset(user, 0, sizeof(user));
	memset(pass, 0, sizeof(pass));
	if (hr->auth != NULL &&
	    ph_http_basic_decode(hr->auth, hr->auth_len, user, &ulen, pass, &plen) == 0)
		ok = ph_socks_user_ok(c->wr->rule->socks, user, ulen, pass, plen);
	explicit_bzero(pass, sizeof(pass));
	if (ok)
		return true;
	PH_CONN_STAT(c->wr, denied, 1);
	snprintf(reason, sizeof(reason), "%s (user '%s')",
	         hr->auth == NULL ? "no proxy credentials" : "wrong user name or password",
	         printable(user, ulen, shown, sizeof(shown)));
	socks_fail(c, -EACCES, 407, reason);
	return false;
}

static int step_http(struct ph_conn *c, struct ph_socks_conn *sx, const uint8_t *b, size_t n,
                     const char **why)
{
	struct ph_http_proxy_req hr;
	int len, status, m;

	len = ph_http_proxy_parse((const char *)b, n, &hr, &status, why);
	if (len == -EPROTO) {
		PH_CONN_STAT(c->wr, errors, 1);
		socks_fail(c, -EPROTO, status, *why);
		return -1;
	}
	if (len <= 0)
		return len;
	if (c->wr->rule->socks->nusers != 0 && !http_user_ok(c, &hr))
		return -1;
	sx->cmd = PH_SOCKS_CONNECT;
	sx->dst = hr.dst;
	if (!hr.connect) {
		sx->fwd = malloc(hr.head_len + 320);
		m = sx->fwd == NULL ? -ENOMEM
		                    : ph_http_proxy_rewrite((const char *)b, &hr, sx->fwd,
		                                            hr.head_len + 320);
		if (m < 0) {
			PH_CONN_STAT(c->wr, errors, 1);
			socks_fail(c, m, 502, "cannot rewrite the request");
			return -1;
		}
		sx->fwd_len = (size_t)m;
		/* a request without a body is all there is: the server answers it and closes
		 * (Connection: close); a next request, which may be for another host, must not
		 * reach this one */
		sx->one_request = !hr.has_body;
	}
	sx_set_phase(c, sx, SX_READY);
	return len;
}

/*
 * One message of the handshake from the n bytes peeked at b. Returns the bytes it used
 * (to be read from the socket), 0 when more must come first, or -1 when c was closed.
 */
static int socks_step(struct ph_conn *c, const uint8_t *b, size_t n)
{
	struct ph_socks_conn *sx = c->vstate;
	const char *why = NULL;
	int len;

	switch (sx->phase) {
	case SX_FIRST:
		len = step_first(c, sx, b);
		return len < 0 ? len : socks_step(c, b, n);
	case SX_GREETING:
		len = step_greeting(c, sx, b, n, &why);
		break;
	case SX_AUTH:
		len = step_auth(c, sx, b, n, &why);
		break;
	case SX_REQUEST:
		len = step_request5(c, sx, b, n, &why);
		break;
	case SX_REQUEST4:
		len = step_request4(c, sx, b, n, &why);
		break;
	case SX_HTTP:
		len = step_http(c, sx, b, n, &why);
		break;
	default:
		return 0;
	}
	if (len > 0 || len == -1)
		return len;
	if (len == -EAGAIN)
		return 0;
	PH_CONN_STAT(c->wr, errors, 1);
	socks_fail(c, -EPROTO, 0, why != NULL ? why : "a bad handshake");
	return -1;
}

/*
 * The client's socket after its request. UDP ASSOCIATE: the TCP connection only says how
 * long the relay lives; what it carries is read and dropped, a bounded amount per
 * wake-up. Otherwise its bytes wait for the pump (which re-reads readiness when it takes
 * the socket over); a client that went away (reset, or gone altogether) ends it now.
 */
static void socks_on_client_later(struct ph_conn *c, uint32_t events)
{
	struct ph_socks_conn *sx = c->vstate;
	struct ph_io *io = &c->pump.io[0];
	char buf[4096];

	if (sx->phase == SX_UDP && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
		for (int i = 0; i < 16; i++) {
			ssize_t n = recv(io->fd, buf, sizeof(buf), 0);

			if (n > 0)
				continue;
			if (n == 0 || (errno != EAGAIN && errno != EINTR))
				ph_conn_close(c, false, "udp: the client ended the association", 0);
			return;
		}
		ph_io_mod(&c->wr->w->loop, io, PH_PUMP_EVENTS); /* more: report it again */
		return;
	}
	if (events & (EPOLLHUP | EPOLLERR)) {
		int err = ph_sock_error(io->fd);

		ph_conn_close(c, true, "socks: the client went away before its reply",
		              err < 0 ? err : -ECONNRESET);
		return;
	}
	if (sx->phase == SX_BIND_WAIT && (events & EPOLLRDHUP))
		ph_conn_close(c, false, "BIND: the client ended it before a peer came", 0);
}

/* The client's socket during the handshake and until the pump takes it over. */
static void socks_on_client(struct ph_io *io, uint32_t events)
{
	struct ph_conn *c = container_of(io, struct ph_conn, pump.io[0]);
	uint8_t buf[SOCKS_PEEK];
	struct ph_socks_conn *sx;

	for (;;) {
		ssize_t n;
		size_t off;
		int used = 0;

		sx = c->vstate;
		if (c->state != PH_CONN_VERB || sx == NULL)
			return;
		if (sx->phase >= SX_READY) {
			socks_on_client_later(c, events);
			return;
		}
		n = recv(io->fd, buf, sizeof(buf), MSG_PEEK);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				ph_conn_close(c, true, "socks: the client failed mid-handshake",
				              -errno);
			return;
		}
		if (n == 0) {
			ph_conn_close(c, false, "socks: the client closed mid-handshake", 0);
			return;
		}
		/* every whole message peeked at, then one read of them all; anything that comes
		 * after this peek raises a new edge, so there is no need to peek again */
		for (off = 0; off < (size_t)n && sx->phase < SX_READY; off += (size_t)used) {
			used = socks_step(c, buf + off, (size_t)n - off);
			if (used < 0)
				return;
			if (used == 0)
				break;
		}
		if (off == 0 && (size_t)n == sizeof(buf)) {
			PH_CONN_STAT(c->wr, errors, 1);
			socks_fail(c, -EPROTO, 431, "a handshake too long");
			return;
		}
		if (sx->phase < SX_READY && (size_t)n > off && (events & EPOLLRDHUP)) {
			/* a message cut short, and the client will send nothing more */
			PH_CONN_STAT(c->wr, errors, 1);
			ph_conn_close(c, false, "socks: the client closed mid-message", -EPROTO);
			return;
		}
		/* exactly what was used: what comes after the request stays for splice */
		if (off > 0 && recv(io->fd, buf, off, 0) != (ssize_t)off) {
			ph_conn_close(c, true, "socks: cannot read the handshake", -EIO);
			return;
		}
		if (sx->phase == SX_READY)
			socks_begin(c);
		return;
	}
}

static void socks_start(struct ph_conn *c)
{
	struct ph_loop *l = &c->wr->w->loop;
	struct ph_socks_conn *sx = calloc(1, sizeof(*sx));
	int err;

	if (sx == NULL) {
		PH_CONN_STAT(c->wr, errors, 1);
		ph_conn_close(c, true, "socks: out of memory", -ENOMEM);
		return;
	}
	sx->c = c;
	ph_name_wait_init(&sx->nw, socks_on_names);
	ph_io_init(&sx->aux, -1, NULL);
	ph_acceptor_init(&sx->bindacc, -1, 0, socks_on_bind_accept, socks_bind_label);
	ph_io_init(&sx->out[0], -1, NULL);
	ph_io_init(&sx->out[1], -1, NULL);
	c->vstate = sx;
	ph_conn_set_state(c, PH_CONN_VERB);
	/* the pump takes this registration over (EPOLL_CTL_MOD) when it starts */
	c->pump.io[0].cb = socks_on_client;
	err = ph_io_add(l, &c->pump.io[0], PH_PUMP_EVENTS);
	if (err < 0) {
		PH_CONN_STAT(c->wr, errors, 1);
		ph_conn_close(c, true, "socks: cannot watch the client", err);
		return;
	}
	ph_timer_arm(l, &c->timer, c->wr->rule->socks->handshake_timeout);
}

static void socks_on_timer(struct ph_conn *c)
{
	struct ph_socks_conn *sx = c->vstate;
	struct ph_loop *l = &c->wr->w->loop;
	uint64_t idle;

	switch (sx->phase) {
	case SX_RESOLVING:
		PH_CONN_STAT(c->wr, connect_failed, 1);
		socks_fail(c, -EHOSTUNREACH, 504, "the name lookup timed out");
		break;
	case SX_CONNECTING:
		if (sx->via) {
			PH_CONN_STAT(c->wr, connect_failed, 1);
			socks_fail(c, -ETIMEDOUT, 504, "no answer through the relay in time");
			break;
		}
		sx->lasterr = -ETIMEDOUT;
		ph_io_close(l, &c->pump.io[1]);
		socks_connect_next(c);
		break;
	case SX_BIND_WAIT:
		socks_fail(c, -ETIMEDOUT, 0, "BIND: no incoming connection in time");
		break;
	case SX_UDP:
		idle = c->wr->rule->udp_timeout;
		if (l->now - sx->udp_last >= idle)
			ph_conn_close(c, false, "udp: idle timeout", 0);
		else
			ph_timer_arm(l, &c->timer, idle - (l->now - sx->udp_last));
		break;
	default:
		PH_CONN_STAT(c->wr, errors, 1);
		if (sx->phase == SX_HTTP)
			socks_fail(c, -ETIMEDOUT, 408, "no complete request in time");
		else if (sx->phase == SX_REQUEST || sx->phase == SX_REQUEST4)
			socks_fail(c, -ETIMEDOUT, 0, "no complete request in time");
		else /* mid-greeting or authentication: SOCKS has no answer for that */
			ph_conn_close(c, false, "socks: handshake timed out", -ETIMEDOUT);
		break;
	}
}

static void socks_conn_free(struct ph_conn *c)
{
	struct ph_socks_conn *sx = c->vstate;

	if (sx == NULL)
		return;
	ph_name_wait_cancel(&sx->nw); /* its answer still fills the cache */
	if (sx->aux.fd != -1)
		ph_io_close(&c->wr->w->loop, &sx->aux);
	ph_acceptor_close(&sx->bindacc);
	for (unsigned i = 0; i < PH_ARRAY_SIZE(sx->out); i++)
		if (sx->out[i].fd != -1)
			ph_io_close(&c->wr->w->loop, &sx->out[i]);
	free(sx->pend);
	sx->pend = NULL;
	udp_peers_free(sx);
	free(sx->fwd);
	sx->fwd = NULL;
	/* an event of this batch may still point into a socket it watched: then the memory
	 * goes with the connection's (forward.c's reap), after the batch */
	if (!sx->watched) {
		free(sx);
		c->vstate = NULL;
	}
}

static void socks_rule_free(struct ph_rule *r)
{
	ph_socks_conf_free(r->socks);
	r->socks = NULL;
}

const struct ph_conn_ops ph_socks_ops = {
	.name = "socks",
	.fds = PH_FDS_SOCKS,
	.start = socks_start,
	.on_timer = socks_on_timer,
	.conn_free = socks_conn_free,
	.rule_free = socks_rule_free,
};
