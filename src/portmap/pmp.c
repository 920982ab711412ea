#include "portmap/pmp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

#define PCP_HDR                24
#define PCP_MAP_BODY           36
#define PCP_OP_ANNOUNCE        0
#define PCP_OP_MAP             1
#define PCP_OPT_PREFER_FAILURE 2
#define PMP_RESPONSE           0x80

#define fail(msg) (*why = (msg), -EPROTO)

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* An address as PCP writes every address: 16 bytes, IPv4 mapped into IPv6. */
static void put_addr(uint8_t *p, const struct ph_addr *a)
{
	memset(p, 0, 16);
	if (a == NULL || a->u.sa.sa_family == 0) {
		p[10] = p[11] = 0xff; /* ::ffff:0.0.0.0, "any IPv4" */
	} else if (a->u.sa.sa_family == AF_INET) {
		p[10] = p[11] = 0xff;
		memcpy(p + 12, &a->u.in.sin_addr, 4);
	} else {
		memcpy(p, &a->u.in6.sin6_addr, 16);
	}
}

static void get_addr(const uint8_t *p, struct ph_addr *a)
{
	memset(a, 0, sizeof(*a));
	a->u.in6.sin6_family = AF_INET6;
	memcpy(&a->u.in6.sin6_addr, p, 16);
	a->len = sizeof(a->u.in6);
	ph_addr_unmap(a);
}

size_t ph_natpmp_addr_req(uint8_t out[2])
{
	out[0] = PH_NATPMP_VERSION;
	out[1] = 0;
	return 2;
}

size_t ph_natpmp_map_req(uint8_t proto, uint16_t internal, uint16_t external, uint32_t lifetime,
                         uint8_t out[12])
{
	out[0] = PH_NATPMP_VERSION;
	out[1] = proto == PH_PMP_UDP ? 1 : 2;
	out[2] = out[3] = 0;
	put16(out + 4, internal);
	put16(out + 6, external);
	put32(out + 8, lifetime);
	return 12;
}

static size_t pcp_header(uint8_t op, uint32_t lifetime, const struct ph_addr *client, uint8_t *out)
{
	out[0] = PH_PCP_VERSION;
	out[1] = op;
	out[2] = out[3] = 0;
	put32(out + 4, lifetime);
	put_addr(out + 8, client);
	return PCP_HDR;
}

size_t ph_pcp_map_req(const struct ph_addr *client, const uint8_t nonce[PH_PCP_NONCE_LEN],
                      uint8_t proto, uint16_t internal, uint16_t external,
                      const struct ph_addr *ext, uint32_t lifetime, bool prefer_failure,
                      uint8_t *out)
{
	size_t n = pcp_header(PCP_OP_MAP, lifetime, client, out);
	uint8_t *m = out + n;

	memcpy(m, nonce, PH_PCP_NONCE_LEN);
	m[12] = proto;
	m[13] = m[14] = m[15] = 0;
	put16(m + 16, internal);
	put16(m + 18, external);
	put_addr(m + 20, ext);
	n += PCP_MAP_BODY;
	if (prefer_failure) {
		out[n] = PCP_OPT_PREFER_FAILURE;
		out[n + 1] = 0;
		put16(out + n + 2, 0);
		n += 4;
	}
	return n;
}

size_t ph_pcp_announce_req(const struct ph_addr *client, uint8_t *out)
{
	return pcp_header(PCP_OP_ANNOUNCE, 0, client, out);
}

static int natpmp_parse(const uint8_t *b, size_t n, struct ph_pmp_resp *r, const char **why)
{
	uint8_t op;

	if (n < 8)
		return fail("a NAT-PMP answer shorter than its header");
	op = b[1] & 0x7f;
	if (op > 2)
		return fail("a NAT-PMP answer to a request never sent");
	r->opcode = op;
	r->result = get16(b + 2);
	r->epoch = get32(b + 4);
	if (r->result != 0)
		return 0; /* an error answer may stop after the epoch */
	if (op == 0) {
		if (n < 12)
			return fail("a NAT-PMP address answer cut short");
		r->ext.u.in.sin_family = AF_INET;
		memcpy(&r->ext.u.in.sin_addr, b + 8, 4);
		r->ext.len = sizeof(r->ext.u.in);
		return 0;
	}
	if (n < 16)
		return fail("a NAT-PMP mapping answer cut short");
	r->proto = op == 1 ? PH_PMP_UDP : PH_PMP_TCP;
	r->internal = get16(b + 8);
	r->external = get16(b + 10);
	r->lifetime = get32(b + 12);
	return 0;
}

static int pcp_parse(const uint8_t *b, size_t n, struct ph_pmp_resp *r, const char **why)
{
	if (n < PCP_HDR)
		return fail("a PCP answer shorter than its header");
	if (n > PH_PCP_MAX || n % 4 != 0)
		return fail("a PCP answer of a bad length");
	r->opcode = b[1] & 0x7f;
	r->result = b[3];
	r->lifetime = get32(b + 4);
	r->epoch = get32(b + 8);
	if (r->opcode == PCP_OP_ANNOUNCE)
		return 0;
	if (r->opcode != PCP_OP_MAP)
		return fail("a PCP answer to a request never sent");
	if (n < PCP_HDR + PCP_MAP_BODY)
		return r->result != 0 ? 0 : fail("a PCP MAP answer cut short");
	memcpy(r->nonce, b + PCP_HDR, PH_PCP_NONCE_LEN);
	r->proto = b[PCP_HDR + 12];
	r->internal = get16(b + PCP_HDR + 16);
	r->external = get16(b + PCP_HDR + 18);
	get_addr(b + PCP_HDR + 20, &r->ext);
	return 0;
}

/*
 * RFC 6886 section 3.5 as published shows NAT-PMP's "unsupported version" answer (the one a
 * NAT-PMP-only gateway gives a PCP request) with opcode 0, not 128 (erratum 3618), and some
 * gateways send it so. No request has a result code of 1 in 8 bytes: an address request is 2.
 */
static bool natpmp_unsupp_op0(const uint8_t *b, size_t n)
{
	return n >= 8 && b[0] == PH_NATPMP_VERSION && b[1] == 0 && get16(b + 2) == 1;
}

int ph_pmp_parse(const uint8_t *b, size_t n, struct ph_pmp_resp *r, const char **why)
{
	*why = NULL;
	memset(r, 0, sizeof(*r));
	if (n < 2)
		return fail("an answer shorter than its header");
	if (!(b[1] & PMP_RESPONSE) && !natpmp_unsupp_op0(b, n))
		return fail("a request, not an answer");
	r->version = b[0];
	if (b[0] == PH_NATPMP_VERSION)
		return natpmp_parse(b, n, r, why);
	if (b[0] == PH_PCP_VERSION)
		return pcp_parse(b, n, r, why);
	return fail("an answer of an unknown protocol version");
}

const char *ph_pmp_result_str(uint8_t version, uint16_t result)
{
	static const char *const natpmp[] = {
		"success",
		"the router does not speak this version of NAT-PMP",
		"the router refused (port mapping is disabled, or not allowed for this host)",
		"the router has a network failure (no external address yet?)",
		"the router is out of resources (too many mappings)",
		"the router does not know this request",
	};
	static const char *const pcp[] = {
		"success",
		"the router does not speak this version of PCP",
		"the router refused (not authorized: mapping disabled or not for this host)",
		"the router could not parse the request",
		"the router does not support this request",
		"the router does not support an option sent",
		"the router found an option malformed",
		"the router has a network failure (no external address yet?)",
		"the router is out of resources (too many mappings)",
		"the router does not support this protocol",
		"the router's quota for this host is used up",
		"the router cannot provide that external port or address",
		("the router saw another source address than the one in the request (a NAT "
	         "between this host and the router?)"), /* parenthesized: one element, for clang */
		"the router has too many remote peers",
	};

	if (version == PH_NATPMP_VERSION)
		return result < sizeof(natpmp) / sizeof(natpmp[0]) ? natpmp[result]
		                                                   : "an unknown NAT-PMP error";
	return result < sizeof(pcp) / sizeof(pcp[0]) ? pcp[result] : "an unknown PCP error";
}
