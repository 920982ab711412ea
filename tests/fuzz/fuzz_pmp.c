/*
 * Fuzzes ph_pmp_parse (portmap/pmp.h), which reads whatever arrives from UDP port 5351 of
 * the gateway: the input is one datagram. The result is 0 or -EPROTO with a reason; a
 * parsed answer is NAT-PMP (version 0, opcodes 0-2) or PCP (version 2, opcodes 0-1, a
 * length of 24-1100 and a multiple of 4), its opcode without the response bit, an
 * external address IPv4, IPv6 or none, and its fields are the bytes at their RFC offsets;
 * parsing is deterministic; and the request built from a parsed mapping (PCP MAP or
 * NAT-PMP) carries the same fields, and once turned into an answer parses back to them.
 */
#include "portmap/pmp.h"

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
			fprintf(stderr, "fuzz_pmp: %s failed (size %zu, r %d)\n", #cond, size, r); \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Parses a copy of b[0..n) in a buffer of exactly n bytes (ASan sees overreads). */
static int parse(const uint8_t *b, size_t n, struct ph_pmp_resp *r, const char **why)
{
	uint8_t *c = malloc(n ? n : 1);
	int err;

	if (c == NULL)
		abort();
	if (n > 0)
		memcpy(c, b, n);
	*why = "unset";
	err = ph_pmp_parse(c, n, r, why);
	free(c);
	return err;
}

/* True when a and b say the same, field by field (padding aside). */
static bool same(const struct ph_pmp_resp *a, const struct ph_pmp_resp *b)
{
	return a->version == b->version && a->opcode == b->opcode && a->result == b->result &&
	       a->epoch == b->epoch && a->lifetime == b->lifetime && a->internal == b->internal &&
	       a->external == b->external && a->proto == b->proto &&
	       memcmp(&a->ext, &b->ext, sizeof(a->ext)) == 0 &&
	       memcmp(a->nonce, b->nonce, sizeof(a->nonce)) == 0;
}

/* True when a is no address, or an IPv4 or IPv6 one of the right length and no port. */
static bool ext_ok(const struct ph_addr *a)
{
	if (a->u.sa.sa_family == 0)
		return a->len == 0;
	if (a->u.sa.sa_family == AF_INET)
		return a->len == sizeof(struct sockaddr_in) && a->u.in.sin_port == 0;
	if (a->u.sa.sa_family == AF_INET6)
		return a->len == sizeof(struct sockaddr_in6) && a->u.in6.sin6_port == 0 &&
		       !IN6_IS_ADDR_V4MAPPED(&a->u.in6.sin6_addr);
	return false;
}

/* The 16 bytes PCP writes for a: IPv4 mapped into IPv6. */
static void addr16(const struct ph_addr *a, uint8_t out[16])
{
	memset(out, 0, 16);
	if (a->u.sa.sa_family == AF_INET6) {
		memcpy(out, &a->u.in6.sin6_addr, 16);
		return;
	}
	out[10] = out[11] = 0xff;
	if (a->u.sa.sa_family == AF_INET)
		memcpy(out + 12, &a->u.in.sin_addr, 4);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ph_pmp_resp o, again, back;
	const char *why, *why2;
	int r = 0, r2;

	if (size > 4096)
		return 0;
	r = parse(data, size, &o, &why);
	CHECK(r == 0 || r == -EPROTO);
	CHECK(r == 0 || (why != NULL && strcmp(why, "unset") != 0 && why[0] != '\0'));
	CHECK(r != 0 || why == NULL);

	/* deterministic: the same bytes, the same answer (or the same reason) */
	r2 = parse(data, size, &again, &why2);
	CHECK(r2 == r);
	if (r != 0) {
		CHECK(why2 != NULL && strcmp(why, why2) == 0);
		return 0;
	}
	CHECK(same(&o, &again));

	CHECK(o.version == PH_NATPMP_VERSION || o.version == PH_PCP_VERSION);
	CHECK(o.version == data[0]);
	CHECK(o.opcode < 128 && o.opcode == (data[1] & 0x7f));
	CHECK(ext_ok(&o.ext));
	/* a response, or NAT-PMP's "unsupported version" with opcode 0 (erratum 3618) */
	CHECK((data[1] & 0x80) != 0 ||
	      (data[1] == 0 && o.version == PH_NATPMP_VERSION && o.result == 1 && size >= 8));

	if (o.version == PH_NATPMP_VERSION) {
		uint8_t req[12];

		CHECK(size >= 8 && o.opcode <= 2);
		CHECK(o.result == get16(data + 2) && o.epoch == get32(data + 4));
		if (o.result != 0) {
			CHECK(o.ext.u.sa.sa_family == 0 && o.internal == 0 && o.external == 0 &&
			      o.lifetime == 0 && o.proto == 0);
			return 0;
		}
		if (o.opcode == 0) {
			CHECK(size >= 12 && o.ext.u.sa.sa_family == AF_INET);
			CHECK(memcmp(&o.ext.u.in.sin_addr, data + 8, 4) == 0);
			CHECK(o.internal == 0 && o.external == 0 && o.lifetime == 0 &&
			      o.proto == 0);
			return 0;
		}
		CHECK(size >= 16 && o.ext.u.sa.sa_family == 0);
		CHECK(o.proto == (o.opcode == 1 ? PH_PMP_UDP : PH_PMP_TCP));
		CHECK(o.internal == get16(data + 8) && o.external == get16(data + 10) &&
		      o.lifetime == get32(data + 12));
		/* the request for this mapping: the same opcode, ports and lifetime */
		CHECK(ph_natpmp_map_req(o.proto, o.internal, o.external, o.lifetime, req) == 12);
		CHECK(req[0] == 0 && req[1] == o.opcode && req[2] == 0 && req[3] == 0);
		CHECK(memcmp(req + 4, data + 8, 8) == 0);
		return 0;
	}

	/* PCP */
	CHECK(size >= 24 && size <= PH_PCP_MAX && size % 4 == 0);
	CHECK(o.opcode <= 1);
	CHECK(o.result == data[3] && o.lifetime == get32(data + 4) && o.epoch == get32(data + 8));
	if (o.opcode == 0 || size < 60) {
		/* ANNOUNCE, or a MAP error cut after the header: nothing more is read */
		CHECK(o.opcode == 0 || o.result != 0);
		CHECK(o.ext.u.sa.sa_family == 0 && o.internal == 0 && o.external == 0 &&
		      o.proto == 0);
		return 0;
	}
	CHECK(memcmp(o.nonce, data + 24, PH_PCP_NONCE_LEN) == 0);
	CHECK(o.proto == data[36] && o.internal == get16(data + 40) &&
	      o.external == get16(data + 42));
	CHECK(o.ext.u.sa.sa_family == AF_INET || o.ext.u.sa.sa_family == AF_INET6);
	{
		uint8_t a16[16], body[36], req[PH_PCP_MAX], *ans;
		struct ph_addr client;
		bool pf = (data[2] & 1) != 0; /* a reserved bit picks PREFER_FAILURE */
		size_t n;

		addr16(&o.ext, a16);
		CHECK(memcmp(a16, data + 44, 16) == 0); /* the address as it came */

		/* the request for this mapping, from the fields parsed */
		memset(&client, 0, sizeof(client));
		client.u.in.sin_family = AF_INET;
		client.u.in.sin_addr.s_addr = htonl(0xc0a80117); /* 192.168.1.23 */
		client.len = sizeof(client.u.in);
		n = ph_pcp_map_req(&client, o.nonce, o.proto, o.internal, o.external, &o.ext,
		                   o.lifetime, pf, req);
		CHECK(n == (pf ? 64u : 60u));
		CHECK(req[0] == 2 && req[1] == 1 && req[2] == 0 && req[3] == 0);
		CHECK(get32(req + 4) == o.lifetime);
		/* a request's MAP body is an answer's, its reserved bits cleared (11.1) */
		memcpy(body, data + 24, sizeof(body));
		body[13] = body[14] = body[15] = 0;
		CHECK(memcmp(req + 24, body, sizeof(body)) == 0);
		CHECK(!pf || (req[60] == 2 && req[61] == 0 && get16(req + 62) == 0));

		/* the answer a gateway would make of it parses back to the same mapping */
		ans = malloc(n);
		if (ans == NULL)
			abort();
		memcpy(ans, req, n);
		ans[1] |= 0x80;
		ans[3] = (uint8_t)o.result;
		memcpy(ans + 8, data + 8, 16); /* the epoch and reserved bits */
		r2 = parse(ans, n, &back, &why2);
		free(ans);
		CHECK(r2 == 0 && why2 == NULL);
		CHECK(same(&back, &o));
	}
	return 0;
}
