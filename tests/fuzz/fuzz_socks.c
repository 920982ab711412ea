/*
 * Fuzzes the SOCKS parsers (socks/proto.h), which read what any client of a socks port
 * sends. The first byte picks the parser, its value modulo 5: 0 the SOCKS5 greeting, 1 the
 * RFC 1929 username/password request, 2 the SOCKS5 request, 3 the SOCKS4/4a request, 4
 * the header of a UDP ASSOCIATE datagram; the rest is the message. The result is a length
 * within the input, -EAGAIN (never for a datagram) or -EPROTO with a reason; a length
 * parses the same from a buffer cut right after it, and every shorter prefix asks for more
 * (a datagram: is refused); a destination is an address or a NUL-terminated name of
 * name characters; and the replies built for a parsed address parse back to it.
 */
#include "socks/proto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/addr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_socks: %s failed (kind %d, size %zu, r %d)\n",       \
			        #cond, kind, size, r);                                             \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

enum kind { GREETING, USERPASS, REQ5, REQ4, UDP, NKINDS };

struct out {
	unsigned methods;
	char user[PH_SOCKS_NAME_MAX + 1], pass[PH_SOCKS_NAME_MAX + 1];
	size_t ulen, plen;
	struct ph_socks_req req;
	struct ph_socks_dest dst; /* UDP; the others: req.dst */
	uint8_t rep;
	const char *why;
};

/* Runs parser k on a copy of b[0..n) in a buffer of exactly n bytes (ASan sees overreads). */
static int parse(enum kind k, const uint8_t *b, size_t n, struct out *o)
{
	uint8_t *c = malloc(n ? n : 1);
	int r = -EINVAL;

	if (c == NULL)
		abort();
	memcpy(c, b, n);
	memset(o, 0, sizeof(*o));
	o->why = "unset";
	switch (k) {
	case GREETING:
		r = ph_socks5_greeting(c, n, &o->methods, &o->why);
		break;
	case USERPASS:
		r = ph_socks5_userpass(c, n, o->user, &o->ulen, o->pass, &o->plen, &o->why);
		break;
	case REQ5:
		r = ph_socks5_request(c, n, &o->req, &o->rep, &o->why);
		break;
	case REQ4:
		r = ph_socks4_request(c, n, &o->req, &o->why);
		break;
	case UDP:
		r = ph_socks5_udp_parse(c, n, &o->dst, &o->why);
		break;
	case NKINDS:
		abort();
	}
	free(c);
	return r;
}

/* True when d is an address (family, length and port agree) or a name of name characters. */
static bool dest_ok(const struct ph_socks_dest *d)
{
	const char *end = memchr(d->name, '\0', sizeof(d->name));

	if (end == NULL)
		return false;
	if (d->name[0] != '\0') {
		if (d->addr.u.sa.sa_family != 0 || end - d->name > PH_SOCKS_NAME_MAX)
			return false;
		for (const char *p = d->name; p < end; p++)
			if (strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
			           "._",
			           *p) == NULL)
				return false;
		return true;
	}
	if (d->addr.u.sa.sa_family == AF_INET)
		return d->addr.len == sizeof(struct sockaddr_in) &&
		       ph_addr_port(&d->addr) == d->port;
	if (d->addr.u.sa.sa_family == AF_INET6)
		return d->addr.len == sizeof(struct sockaddr_in6) &&
		       ph_addr_port(&d->addr) == d->port;
	return false;
}

/* True when a and b name the same address bytes and port (a reply carries no scope). */
static bool same_addr(const struct ph_socks_dest *a, const struct ph_socks_dest *b)
{
	if (a->addr.u.sa.sa_family != b->addr.u.sa.sa_family || a->port != b->port)
		return false;
	if (a->addr.u.sa.sa_family == AF_INET)
		return memcmp(&a->addr.u.in.sin_addr, &b->addr.u.in.sin_addr, 4) == 0;
	return memcmp(&a->addr.u.in6.sin6_addr, &b->addr.u.in6.sin6_addr, 16) == 0;
}

static bool same_dest(const struct ph_socks_dest *a, const struct ph_socks_dest *b)
{
	return a->port == b->port && strcmp(a->name, b->name) == 0 &&
	       memcmp(&a->addr, &b->addr, sizeof(a->addr)) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct out o, again, *p = malloc(sizeof(*p));
	enum kind kind;
	const uint8_t *b;
	size_t n;
	int r = 0, r2;

	if (p == NULL || size < 1 || size > 4096) {
		free(p);
		return 0;
	}
	kind = (enum kind)(data[0] % NKINDS);
	b = data + 1;
	n = size - 1;
	r = parse(kind, b, n, &o);
	CHECK(r == -EAGAIN || r == -EPROTO || (r > 0 && (size_t)r <= n));
	CHECK(r != -EPROTO || (o.why != NULL && strcmp(o.why, "unset") != 0));
	CHECK(r == -EPROTO || o.why == NULL);
	CHECK(kind != UDP || r != -EAGAIN); /* a datagram is all there is */
	if (kind == REQ5 && r == -EPROTO)
		CHECK(o.rep == PH_SOCKS5_FAILURE || o.rep == PH_SOCKS5_HOST_UNREACH ||
		      o.rep == PH_SOCKS5_CMD_UNSUPPORTED || o.rep == PH_SOCKS5_ATYP_UNSUPPORTED);
	if (r <= 0)
		goto out;

	/* the same from exactly the bytes it took; every shorter prefix asks for more */
	r2 = parse(kind, b, (size_t)r, &again);
	CHECK(r2 == r);
	for (size_t k = 0; k < (size_t)r; k++) {
		r2 = parse(kind, b, k, p);
		CHECK(r2 == (kind == UDP ? -EPROTO : -EAGAIN));
	}

	switch (kind) {
	case GREETING:
		CHECK(r == 2 + b[1] && b[0] == 5 && b[1] > 0);
		CHECK((o.methods & ~(unsigned)(PH_SOCKS5_M_NONE | PH_SOCKS5_M_USERPASS)) == 0);
		CHECK(again.methods == o.methods);
		CHECK(((o.methods & PH_SOCKS5_M_NONE) != 0) == (memchr(b + 2, 0, b[1]) != NULL));
		CHECK(((o.methods & PH_SOCKS5_M_USERPASS) != 0) ==
		      (memchr(b + 2, 2, b[1]) != NULL));
		break;
	case USERPASS:
		CHECK(o.ulen >= 1 && o.ulen <= PH_SOCKS_NAME_MAX && o.plen <= PH_SOCKS_NAME_MAX);
		CHECK((size_t)r == 3 + o.ulen + o.plen);
		CHECK(strlen(o.user) == o.ulen && strlen(o.pass) == o.plen);
		CHECK(memcmp(o.user, b + 2, o.ulen) == 0 &&
		      memcmp(o.pass, b + 3 + o.ulen, o.plen) == 0);
		CHECK(again.ulen == o.ulen && again.plen == o.plen);
		CHECK(strcmp(again.user, o.user) == 0 && strcmp(again.pass, o.pass) == 0);
		break;
	case REQ5: {
		uint8_t rep[PH_SOCKS5_REPLY_MAX];
		size_t rl;

		CHECK(o.req.cmd == b[1] && o.req.cmd >= PH_SOCKS_CONNECT &&
		      o.req.cmd <= PH_SOCKS_UDP);
		CHECK(dest_ok(&o.req.dst));
		CHECK(again.req.cmd == o.req.cmd && same_dest(&again.req.dst, &o.req.dst));
		if (o.req.dst.name[0] != '\0')
			break;
		/* a reply has a request's layout: with CMD for REP it parses back */
		rl = ph_socks5_reply(PH_SOCKS5_OK, &o.req.dst.addr, rep);
		CHECK(rl == (o.req.dst.addr.u.sa.sa_family == AF_INET ? 10u : 22u));
		CHECK(rep[0] == 5 && rep[1] == PH_SOCKS5_OK && rep[2] == 0);
		rep[1] = PH_SOCKS_CONNECT;
		r2 = parse(REQ5, rep, rl, p);
		CHECK(r2 == (int)rl && same_addr(&p->req.dst, &o.req.dst));
		break;
	}
	case REQ4: {
		uint8_t rep[8], want[8] = {0};

		CHECK(o.req.cmd == b[1] &&
		      (o.req.cmd == PH_SOCKS_CONNECT || o.req.cmd == PH_SOCKS_BIND));
		CHECK(dest_ok(&o.req.dst));
		CHECK(again.req.cmd == o.req.cmd && same_dest(&again.req.dst, &o.req.dst));
		CHECK(o.req.dst.port == (b[2] << 8 | b[3]));
		CHECK(o.req.dst.name[0] != '\0' || o.req.dst.addr.u.sa.sa_family == AF_INET ||
		      (b[4] == 0 && b[5] == 0 && b[6] == 0 && b[7] != 0)); /* 4a: a literal */
		ph_socks4_reply(PH_SOCKS4_GRANTED, &o.req.dst.addr, rep);
		want[1] = PH_SOCKS4_GRANTED;
		if (o.req.dst.addr.u.sa.sa_family == AF_INET) {
			want[2] = (uint8_t)(o.req.dst.port >> 8);
			want[3] = (uint8_t)o.req.dst.port;
			memcpy(want + 4, &o.req.dst.addr.u.in.sin_addr, 4);
		}
		CHECK(memcmp(rep, want, 8) == 0);
		break;
	}
	case UDP: {
		uint8_t hdr[PH_SOCKS_UDP_HDR_MAX];
		size_t hl;

		CHECK(r <= PH_SOCKS_UDP_HDR_MAX && b[2] == 0);
		CHECK(dest_ok(&o.dst));
		CHECK(same_dest(&again.dst, &o.dst));
		if (o.dst.name[0] != '\0')
			break;
		/* the header naming a reply's sender parses back to that sender */
		hl = ph_socks5_udp_header(&o.dst.addr, hdr);
		CHECK(hl == (o.dst.addr.u.sa.sa_family == AF_INET ? 10u : 22u));
		CHECK(hdr[0] == 0 && hdr[1] == 0 && hdr[2] == 0);
		r2 = parse(UDP, hdr, hl, p);
		CHECK(r2 == (int)hl && same_addr(&p->dst, &o.dst));
		break;
	}
	case NKINDS:
		abort();
	}
out:
	free(p);
	return 0;
}
