/*
 * Unit tests for NAT-PMP (RFC 6886) and PCP (RFC 6887) messages (portmap/pmp.h) and the
 * map command's address helper (portmap/portmap.h): every request is byte-exact against
 * the RFC layouts, answers written by hand from the same layouts parse to what they say,
 * malformed ones are refused with a reason, and every result code has a phrase.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <arpa/inet.h>

#include "core/addr.h"
#include "portmap/pmp.h"
#include "portmap/portmap.h"

#define POISON 0xee /* what the bytes after a built message must still hold */

static const uint8_t nonce[PH_PCP_NONCE_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

static struct ph_addr addr(const char *ip)
{
	struct ph_addr a;

	assert_int_equal(ph_addr_from_literal(ip, 0, &a), 0);
	return a;
}

/* Parses a copy of b[0..n) in a buffer of exactly n bytes, so ASan sees any overread. */
static int parse(const uint8_t *b, size_t n, struct ph_pmp_resp *r)
{
	uint8_t *c = malloc(n ? n : 1);
	const char *why = "unset";
	int err;

	assert_non_null(c);
	if (n > 0)
		memcpy(c, b, n);
	err = ph_pmp_parse(c, n, r, &why);
	free(c);
	if (err == 0) {
		assert_null(why);
	} else {
		assert_int_equal(err, -EPROTO);
		assert_non_null(why);
		assert_string_not_equal(why, "unset");
	}
	return err;
}

/* b[0..n) is refused, for a reason that says want. */
static void bad(const uint8_t *b, size_t n, const char *want)
{
	uint8_t *c = malloc(n ? n : 1);
	struct ph_pmp_resp r;
	const char *why = NULL;

	assert_non_null(c);
	if (n > 0)
		memcpy(c, b, n);
	assert_int_equal(ph_pmp_parse(c, n, &r, &why), -EPROTO);
	free(c);
	assert_non_null(why);
	if (strstr(why, want) == NULL)
		print_error("%zu bytes: '%s', not '%s'\n", n, why, want);
	assert_non_null(strstr(why, want));
}

/* ---- requests ---- */

static void test_natpmp_requests(void **state)
{
	/* RFC 6886 3.3: version, opcode (1 UDP, 2 TCP), reserved, internal port, suggested
	 * external port, requested lifetime; network byte order */
	static const uint8_t udp[12] = {0, 1, 0, 0, 0x1f, 0x90, 0xc3, 0x50, 0, 0, 0x1c, 0x20};
	static const uint8_t tcp[12] = {0, 2, 0, 0, 0xab, 0xcd, 0, 0, 0x01, 0x02, 0x03, 0x04};
	static const uint8_t del[12] = {0, 2, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0};
	uint8_t out[16];

	(void)state;
	/* 3.2: the external address request is version 0, opcode 0 */
	memset(out, POISON, sizeof(out));
	assert_int_equal(ph_natpmp_addr_req(out), 2);
	assert_int_equal(out[0], 0);
	assert_int_equal(out[1], 0);
	assert_int_equal(out[2], POISON);

	memset(out, POISON, sizeof(out));
	assert_int_equal(ph_natpmp_map_req(PH_PMP_UDP, 8080, 50000, 7200, out), 12);
	assert_memory_equal(out, udp, 12);
	assert_int_equal(out[12], POISON);
	memset(out, POISON, sizeof(out));
	assert_int_equal(ph_natpmp_map_req(PH_PMP_TCP, 0xabcd, 0, 0x01020304, out), 12);
	assert_memory_equal(out, tcp, 12);
	assert_int_equal(out[12], POISON);
	/* 3.4: deleting is lifetime 0 with external port 0 */
	assert_int_equal(ph_natpmp_map_req(PH_PMP_TCP, 22, 0, 0, out), 12);
	assert_memory_equal(out, del, 12);
}

static void test_pcp_map_request(void **state)
{
	/* RFC 6887 7.1 header: version 2, R 0 + opcode 1, reserved 16 bits, lifetime, the
	 * client's address (IPv4-mapped); 11.1 body: nonce, protocol, 24 reserved bits,
	 * internal port, suggested external port, suggested external address */
	static const uint8_t want[60] = {
		2,    1,    0,    0,    /* version 2, MAP */
		0,    0,    0x0e, 0x10, /* lifetime 3600 */
		0,    0,    0,    0,    0, 0, 0, 0, 0, 0,  0xff, 0xff,
		192,  168,  1,    23,                                /* ::ffff:192.168.1.23 */
		1,    2,    3,    4,    5, 6, 7, 8, 9, 10, 11,   12, /* nonce */
		6,    0,    0,    0,                                 /* TCP, reserved */
		0x1f, 0x90, 0,    0,                                 /* 8080, any external port */
		0,    0,    0,    0,    0, 0, 0, 0, 0, 0,  0xff, 0xff,
		0,    0,    0,    0, /* ::ffff:0.0.0.0, any */
	};
	/* a suggested port and address, PREFER_FAILURE (13.2: code 2, reserved, length 0) */
	static const uint8_t want_pf[64] = {
		2,   1,  0,    0, /* version 2, MAP */
		0,   0,  0,    0, /* lifetime 0: delete */
		0,   0,  0,    0,    0, 0, 0, 0, 0, 0,  0xff, 0xff,
		10,  0,  0,    2,                                 /* ::ffff:10.0.0.2 */
		1,   2,  3,    4,    5, 6, 7, 8, 9, 10, 11,   12, /* nonce */
		17,  0,  0,    0,                                 /* UDP, reserved */
		0,   53, 0x14, 0xe9,                              /* 53, 5353 */
		0,   0,  0,    0,    0, 0, 0, 0, 0, 0,  0xff, 0xff,
		203, 0,  113,  5, /* ::ffff:203.0.113.5 */
		2,   0,  0,    0, /* PREFER_FAILURE */
	};
	/* IPv6: the addresses as they are */
	static const uint8_t want6[60] = {
		2,    1,    0,    0,                                           /* version 2, MAP */
		0,    1,    0x51, 0x80,                                        /* lifetime 86400 */
		0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0,  0,  0,  0, 0, 0, 5, /* 2001:db8::5 */
		1,    2,    3,    4,    5, 6, 7, 8, 9, 10, 11, 12,             /* nonce */
		6,    0,    0,    0,                                           /* TCP, reserved */
		0xff, 0xff, 0xff, 0xfe,                                        /* 65535, 65534 */
		0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0,  0,  0,  0, 0, 0, 1, /* 2001:db8::1 */
	};
	struct ph_addr client = addr("192.168.1.23"), any, ext;
	uint8_t out[PH_PCP_MAX];

	(void)state;
	memset(out, POISON, sizeof(out));
	assert_int_equal(
		ph_pcp_map_req(&client, nonce, PH_PMP_TCP, 8080, 0, NULL, 3600, false, out), 60);
	assert_memory_equal(out, want, 60);
	assert_int_equal(out[60], POISON);

	/* an address of no family is "any", as NULL is */
	memset(&any, 0, sizeof(any));
	memset(out, POISON, sizeof(out));
	assert_int_equal(
		ph_pcp_map_req(&client, nonce, PH_PMP_TCP, 8080, 0, &any, 3600, false, out), 60);
	assert_memory_equal(out, want, 60);
	assert_int_equal(out[60], POISON);

	client = addr("10.0.0.2");
	ext = addr("203.0.113.5");
	memset(out, POISON, sizeof(out));
	assert_int_equal(ph_pcp_map_req(&client, nonce, PH_PMP_UDP, 53, 5353, &ext, 0, true, out),
	                 64);
	assert_memory_equal(out, want_pf, 64);
	assert_int_equal(out[64], POISON);

	client = addr("2001:db8::5");
	ext = addr("2001:db8::1");
	memset(out, POISON, sizeof(out));
	assert_int_equal(
		ph_pcp_map_req(&client, nonce, PH_PMP_TCP, 65535, 65534, &ext, 86400, false, out),
		60);
	assert_memory_equal(out, want6, 60);
	assert_int_equal(out[60], POISON);
}

static void test_pcp_announce_request(void **state)
{
	/* RFC 6887 14.1: ANNOUNCE is opcode 0, lifetime 0, the common header alone */
	static const uint8_t want[24] = {
		2, 0, 0, 0,                                                /* version 2, ANNOUNCE */
		0, 0, 0, 0,                                                /* lifetime 0 */
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 23, /* ::ffff:192.168.1.23 */
	};
	static const uint8_t want6[24] = {
		2,    0,    0, 0,                                        /* version 2, ANNOUNCE */
		0,    0,    0, 0,                                        /* lifetime 0 */
		0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42, /* fe80::42 */
	};
	struct ph_addr client = addr("192.168.1.23");
	uint8_t out[PH_PCP_MAX];

	(void)state;
	memset(out, POISON, sizeof(out));
	assert_int_equal(ph_pcp_announce_req(&client, out), 24);
	assert_memory_equal(out, want, 24);
	assert_int_equal(out[24], POISON);
	client = addr("fe80::42");
	memset(out, POISON, sizeof(out));
	assert_int_equal(ph_pcp_announce_req(&client, out), 24);
	assert_memory_equal(out, want6, 24);
	assert_int_equal(out[24], POISON);
}

/* ---- NAT-PMP answers ---- */

static void test_natpmp_addr_answer(void **state)
{
	/* RFC 6886 3.2: version 0, opcode 128, result, epoch, the external IPv4 address */
	static const uint8_t ok[12] = {0, 128, 0, 0, 0, 0, 0x12, 0x34, 198, 51, 100, 7};
	static const uint8_t failed[8] = {0, 128, 0, 3, 0, 0, 0, 9}; /* network failure */
	struct ph_pmp_resp r;

	(void)state;
	assert_int_equal(parse(ok, sizeof(ok), &r), 0);
	assert_int_equal(r.version, PH_NATPMP_VERSION);
	assert_int_equal(r.opcode, 0);
	assert_int_equal(r.result, 0);
	assert_int_equal(r.epoch, 0x1234);
	assert_int_equal(r.lifetime, 0);
	assert_int_equal(r.proto, 0);
	assert_int_equal(r.ext.u.sa.sa_family, AF_INET);
	assert_int_equal(r.ext.len, sizeof(struct sockaddr_in));
	assert_memory_equal(&r.ext.u.in.sin_addr, ((const uint8_t[]){198, 51, 100, 7}), 4);
	/* bytes after the message are not read, nor are they an error */
	{
		uint8_t longer[16] = {0};

		memcpy(longer, ok, sizeof(ok));
		assert_int_equal(parse(longer, sizeof(longer), &r), 0);
		assert_int_equal(r.ext.u.sa.sa_family, AF_INET);
	}
	/* a success without its address is cut short */
	bad(ok, 11, "cut short");
	bad(ok, 8, "cut short");
	/* an error stops after the epoch (3.5) and is a parsed answer */
	assert_int_equal(parse(failed, sizeof(failed), &r), 0);
	assert_int_equal(r.opcode, 0);
	assert_int_equal(r.result, 3);
	assert_int_equal(r.epoch, 9);
	assert_int_equal(r.ext.u.sa.sa_family, 0);
	/* shorter than the 8-byte header */
	bad(failed, 7, "shorter than its header");
	bad(failed, 2, "shorter than its header");
	bad(failed, 1, "shorter than its header");
	bad(failed, 0, "shorter than its header");
}

static void test_natpmp_map_answer(void **state)
{
	/* RFC 6886 3.3: version 0, opcode 128 + 1 (UDP) or 2 (TCP), result, epoch, internal
	 * port, mapped external port, lifetime */
	static const uint8_t udp[16] = {0,    129,  0,    0,    0,    1,    0,    0,
	                                0x1f, 0x90, 0xc3, 0x50, 0x00, 0x00, 0x1c, 0x20};
	static const uint8_t tcp[16] = {0, 130, 0, 0, 0, 0, 0, 5, 0, 22, 0xff, 0xff, 0, 0, 0, 0};
	static const uint8_t refused[8] = {0, 130, 0, 2, 0, 0, 0, 77};
	static const uint8_t resources[16] = {0, 129, 0, 4, 0, 0, 1, 0, 0, 80, 0, 80, 0, 0, 0, 60};
	struct ph_pmp_resp r;

	(void)state;
	assert_int_equal(parse(udp, sizeof(udp), &r), 0);
	assert_int_equal(r.version, PH_NATPMP_VERSION);
	assert_int_equal(r.opcode, 1);
	assert_int_equal(r.result, 0);
	assert_int_equal(r.epoch, 0x10000);
	assert_int_equal(r.proto, PH_PMP_UDP);
	assert_int_equal(r.internal, 8080);
	assert_int_equal(r.external, 50000);
	assert_int_equal(r.lifetime, 7200);
	assert_int_equal(r.ext.u.sa.sa_family, 0); /* only the address answer has one */

	assert_int_equal(parse(tcp, sizeof(tcp), &r), 0);
	assert_int_equal(r.opcode, 2);
	assert_int_equal(r.proto, PH_PMP_TCP);
	assert_int_equal(r.internal, 22);
	assert_int_equal(r.external, 65535);
	assert_int_equal(r.lifetime, 0); /* a deletion's answer */
	assert_int_equal(r.epoch, 5);

	bad(udp, 15, "cut short");
	bad(udp, 12, "cut short");
	bad(udp, 8, "cut short");

	/* errors: 8 bytes are enough, and the result is what counts */
	assert_int_equal(parse(refused, sizeof(refused), &r), 0);
	assert_int_equal(r.version, PH_NATPMP_VERSION);
	assert_int_equal(r.opcode, 2);
	assert_int_equal(r.result, 2);
	assert_int_equal(r.epoch, 77);
	assert_int_equal(parse(resources, sizeof(resources), &r), 0);
	assert_int_equal(r.opcode, 1);
	assert_int_equal(r.result, 4);
	assert_int_equal(r.epoch, 256);
	/* a 16-bit result code */
	{
		uint8_t big[8] = {0, 129, 0x01, 0x02, 0, 0, 0, 0};

		assert_int_equal(parse(big, sizeof(big), &r), 0);
		assert_int_equal(r.result, 0x0102);
	}
}

static void test_natpmp_unsupported_version(void **state)
{
	/* what a NAT-PMP-only gateway answers a PCP request: version 0, result 1; opcode 128
	 * by erratum 3618 (or 128 + the request's opcode in some gateways) */
	static const uint8_t v128[8] = {0, 128, 0, 1, 0, 0, 0x0e, 0x10};
	static const uint8_t v129[8] = {0, 129, 0, 1, 0, 0, 0x0e, 0x10};
	/* RFC 6886 3.5 as published shows opcode 0, and some gateways send that */
	static const uint8_t v0[8] = {0, 0, 0, 1, 0, 0, 0x0e, 0x10};
	struct ph_pmp_resp r;

	(void)state;
	assert_int_equal(parse(v128, sizeof(v128), &r), 0);
	assert_int_equal(r.version, PH_NATPMP_VERSION);
	assert_int_equal(r.opcode, 0);
	assert_int_equal(r.result, 1);
	assert_int_equal(r.epoch, 3600);
	assert_int_equal(parse(v129, sizeof(v129), &r), 0);
	assert_int_equal(r.version, PH_NATPMP_VERSION);
	assert_int_equal(r.opcode, 1);
	assert_int_equal(r.result, 1);
	assert_int_equal(parse(v0, sizeof(v0), &r), 0);
	assert_int_equal(r.version, PH_NATPMP_VERSION);
	assert_int_equal(r.opcode, 0);
	assert_int_equal(r.result, 1);
	assert_int_equal(r.epoch, 3600);
	/* but only that: shorter, or another result, it is a request */
	bad(v0, 7, "a request");
	{
		uint8_t other[8] = {0, 0, 0, 2, 0, 0, 0, 0};

		bad(other, sizeof(other), "a request");
	}
}

static void test_natpmp_bad(void **state)
{
	uint8_t b[16] = {0, 131, 0, 0, 0, 0, 0, 1, 0, 80, 0, 80, 0, 0, 0, 60};

	(void)state;
	/* opcodes 3..127 + 128 answer requests pinhole never sends */
	bad(b, sizeof(b), "never sent");
	b[1] = 255;
	bad(b, sizeof(b), "never sent");
	b[3] = 5; /* "unsupported opcode" echoes the request: still not ours */
	bad(b, sizeof(b), "never sent");
}

/* ---- PCP answers ---- */

/* A PCP answer header (RFC 6887 7.2) at b: version 2, R + opcode, reserved, result,
 * lifetime, epoch, 96 reserved bits. */
static void pcp_header(uint8_t *b, uint8_t op, uint8_t result, uint32_t lifetime, uint32_t epoch)
{
	memset(b, 0, 24);
	b[0] = 2;
	b[1] = (uint8_t)(0x80 | op);
	b[3] = result;
	b[4] = (uint8_t)(lifetime >> 24);
	b[5] = (uint8_t)(lifetime >> 16);
	b[6] = (uint8_t)(lifetime >> 8);
	b[7] = (uint8_t)lifetime;
	b[8] = (uint8_t)(epoch >> 24);
	b[9] = (uint8_t)(epoch >> 16);
	b[10] = (uint8_t)(epoch >> 8);
	b[11] = (uint8_t)epoch;
}

/* A MAP answer body (RFC 6887 11.1) at b: nonce, protocol, 24 reserved bits, internal
 * port, assigned external port, assigned external address (16 bytes). */
static void pcp_map_body(uint8_t *b, uint8_t proto, uint16_t internal, uint16_t external,
                         const uint8_t ext[16])
{
	memcpy(b, nonce, PH_PCP_NONCE_LEN);
	b[12] = proto;
	b[13] = b[14] = b[15] = 0;
	b[16] = (uint8_t)(internal >> 8);
	b[17] = (uint8_t)internal;
	b[18] = (uint8_t)(external >> 8);
	b[19] = (uint8_t)external;
	memcpy(b + 20, ext, 16);
}

static const uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 9};
static const uint8_t v6[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9};

static void test_pcp_announce_answer(void **state)
{
	uint8_t b[28];
	struct ph_pmp_resp r;

	(void)state;
	pcp_header(b, 0, 0, 0, 123456);
	assert_int_equal(parse(b, 24, &r), 0);
	assert_int_equal(r.version, PH_PCP_VERSION);
	assert_int_equal(r.opcode, 0);
	assert_int_equal(r.result, 0);
	assert_int_equal(r.epoch, 123456);
	assert_int_equal(r.lifetime, 0);
	assert_int_equal(r.ext.u.sa.sa_family, 0);
	/* options after it are allowed (a multiple of 4) */
	memset(b + 24, 0, 4);
	assert_int_equal(parse(b, 28, &r), 0);
	/* UNSUPP_OPCODE from a PCP server that does not do ANNOUNCE: a parsed answer */
	pcp_header(b, 0, 4, 0, 7);
	assert_int_equal(parse(b, 24, &r), 0);
	assert_int_equal(r.version, PH_PCP_VERSION);
	assert_int_equal(r.result, 4);
	assert_int_equal(r.epoch, 7);
	/* a header cut short */
	bad(b, 20, "shorter than its header");
	bad(b, 4, "shorter than its header");
}

static void test_pcp_map_answer(void **state)
{
	uint8_t b[PH_PCP_MAX + 4];
	struct ph_pmp_resp r;

	(void)state;
	memset(b, 0, sizeof(b));
	pcp_header(b, 1, 0, 7200, 99);
	pcp_map_body(b + 24, PH_PMP_TCP, 8080, 40000, mapped);
	assert_int_equal(parse(b, 60, &r), 0);
	assert_int_equal(r.version, PH_PCP_VERSION);
	assert_int_equal(r.opcode, 1);
	assert_int_equal(r.result, 0);
	assert_int_equal(r.lifetime, 7200);
	assert_int_equal(r.epoch, 99);
	assert_memory_equal(r.nonce, nonce, PH_PCP_NONCE_LEN);
	assert_int_equal(r.proto, PH_PMP_TCP);
	assert_int_equal(r.internal, 8080);
	assert_int_equal(r.external, 40000);
	/* an IPv4-mapped address comes back as IPv4 */
	assert_int_equal(r.ext.u.sa.sa_family, AF_INET);
	assert_int_equal(r.ext.len, sizeof(struct sockaddr_in));
	assert_memory_equal(&r.ext.u.in.sin_addr, mapped + 12, 4);

	/* with an option after it (PREFER_FAILURE echoed), and the largest length */
	b[60] = 2;
	assert_int_equal(parse(b, 64, &r), 0);
	assert_int_equal(r.external, 40000);
	assert_int_equal(parse(b, PH_PCP_MAX, &r), 0);
	assert_memory_equal(r.nonce, nonce, PH_PCP_NONCE_LEN);
	b[60] = 0;

	/* an IPv6 external address stays IPv6 */
	pcp_map_body(b + 24, PH_PMP_UDP, 53, 53, v6);
	assert_int_equal(parse(b, 60, &r), 0);
	assert_int_equal(r.proto, PH_PMP_UDP);
	assert_int_equal(r.internal, 53);
	assert_int_equal(r.external, 53);
	assert_int_equal(r.ext.u.sa.sa_family, AF_INET6);
	assert_int_equal(r.ext.len, sizeof(struct sockaddr_in6));
	assert_memory_equal(&r.ext.u.in6.sin6_addr, v6, 16);

	/* a MAP error with its body: the fields are read too */
	pcp_header(b, 1, 11, 30, 100); /* CANNOT_PROVIDE_EXTERNAL */
	assert_int_equal(parse(b, 60, &r), 0);
	assert_int_equal(r.result, 11);
	assert_int_equal(r.lifetime, 30);
	assert_int_equal(r.internal, 53);
}

static void test_pcp_map_error_short(void **state)
{
	uint8_t b[60];
	struct ph_pmp_resp r;

	(void)state;
	/* an error may come back as the header alone: parsed, result set */
	pcp_header(b, 1, 8, 30, 4242); /* NO_RESOURCES; lifetime: when to retry */
	assert_int_equal(parse(b, 24, &r), 0);
	assert_int_equal(r.version, PH_PCP_VERSION);
	assert_int_equal(r.opcode, 1);
	assert_int_equal(r.result, 8);
	assert_int_equal(r.lifetime, 30);
	assert_int_equal(r.epoch, 4242);
	assert_int_equal(r.ext.u.sa.sa_family, 0);
	assert_int_equal(r.internal, 0);
	/* a success is not: it must carry the mapping */
	pcp_header(b, 1, 0, 7200, 1);
	pcp_map_body(b + 24, PH_PMP_TCP, 1, 2, mapped);
	bad(b, 24, "cut short");
	bad(b, 56, "cut short");
	bad(b, 28, "cut short");
}

static void test_pcp_bad(void **state)
{
	uint8_t b[PH_PCP_MAX + 8];

	(void)state;
	memset(b, 0, sizeof(b));
	pcp_header(b, 1, 0, 7200, 1);
	pcp_map_body(b + 24, PH_PMP_TCP, 8080, 8080, mapped);
	/* not a multiple of 4, or longer than 1100 bytes */
	bad(b, 61, "bad length");
	bad(b, 59, "bad length");
	bad(b, 25, "bad length");
	bad(b, 26, "bad length");
	bad(b, 27, "bad length");
	bad(b, PH_PCP_MAX + 4, "bad length");
	bad(b, PH_PCP_MAX + 8, "bad length");
	bad(b, 23, "shorter than its header");
	/* opcodes pinhole never sends: PEER (2) and the rest */
	b[1] = 0x80 | 2;
	bad(b, 60, "never sent");
	b[1] = 0x80 | 3;
	bad(b, 60, "never sent");
	b[1] = 0xff;
	bad(b, 60, "never sent");
	b[1] = 0x81;
	/* other versions: 1 (an old PCP draft), 3, 255 */
	b[0] = 1;
	bad(b, 60, "unknown protocol version");
	b[0] = 3;
	bad(b, 60, "unknown protocol version");
	b[0] = 255;
	bad(b, 60, "unknown protocol version");
	b[0] = 2;
}

/* Requests (the R bit clear) are never answers, whatever else they look like. */
static void test_requests_refused(void **state)
{
	struct ph_addr client = addr("192.168.1.23");
	uint8_t b[PH_PCP_MAX];
	size_t n;

	(void)state;
	n = ph_pcp_map_req(&client, nonce, PH_PMP_TCP, 8080, 0, NULL, 3600, false, b);
	bad(b, n, "a request");
	n = ph_pcp_map_req(&client, nonce, PH_PMP_UDP, 53, 53, NULL, 0, true, b);
	bad(b, n, "a request");
	n = ph_pcp_announce_req(&client, b);
	bad(b, n, "a request");
	n = ph_natpmp_addr_req(b);
	bad(b, n, "a request");
	n = ph_natpmp_map_req(PH_PMP_UDP, 8080, 8080, 7200, b);
	bad(b, n, "a request");
	n = ph_natpmp_map_req(PH_PMP_TCP, 8080, 0, 0, b);
	bad(b, n, "a request");
	/* a request of another version, too */
	b[0] = 7;
	bad(b, n, "a request");
}

/* ---- result codes ---- */

static void test_result_str(void **state)
{
	const char *v0[6], *v2[14], *u0, *u2;

	(void)state;
	for (unsigned i = 0; i < 6; i++)
		assert_non_null(v0[i] = ph_pmp_result_str(PH_NATPMP_VERSION, (uint16_t)i));
	for (unsigned i = 0; i < 14; i++)
		assert_non_null(v2[i] = ph_pmp_result_str(PH_PCP_VERSION, (uint16_t)i));
	u0 = ph_pmp_result_str(PH_NATPMP_VERSION, 6);
	u2 = ph_pmp_result_str(PH_PCP_VERSION, 14);
	assert_non_null(u0);
	assert_non_null(u2);
	assert_non_null(ph_pmp_result_str(PH_NATPMP_VERSION, 65535));
	assert_non_null(ph_pmp_result_str(PH_PCP_VERSION, 255));
	assert_non_null(ph_pmp_result_str(PH_PCP_VERSION, 65535));
	assert_non_null(ph_pmp_result_str(1, 3)); /* another version: some phrase */
	assert_string_equal(ph_pmp_result_str(PH_NATPMP_VERSION, 65535), u0);
	assert_string_equal(ph_pmp_result_str(PH_PCP_VERSION, 255), u2);
	/* each code its own phrase, and unknown ones none of theirs */
	for (unsigned i = 0; i < 6; i++) {
		assert_true(strlen(v0[i]) > 0);
		assert_string_not_equal(v0[i], u0);
		for (unsigned j = i + 1; j < 6; j++)
			assert_string_not_equal(v0[i], v0[j]);
	}
	for (unsigned i = 0; i < 14; i++) {
		assert_true(strlen(v2[i]) > 0);
		assert_string_not_equal(v2[i], u2);
		for (unsigned j = i + 1; j < 14; j++)
			assert_string_not_equal(v2[i], v2[j]);
	}
	assert_string_equal(v0[0], "success");
	assert_string_equal(v2[0], "success");
	/* the ones a user meets: refused, no external address yet, too many mappings */
	assert_non_null(strstr(v0[2], "refused"));
	assert_non_null(strstr(v2[2], "refused"));
	assert_non_null(strstr(v0[3], "network failure"));
	assert_non_null(strstr(v2[7], "network failure"));
	assert_non_null(strstr(v0[4], "out of resources"));
	assert_non_null(strstr(v2[8], "out of resources"));
	assert_non_null(strstr(v0[1], "NAT-PMP"));
	assert_non_null(strstr(v2[1], "PCP"));
}

/* ---- portmap.h ---- */

static bool private(const char *ip)
{
	struct ph_addr a = addr(ip);

	return ph_map_addr_is_private(&a);
}

static void test_addr_is_private(void **state)
{
	static const char *const priv[] = {
		"10.0.0.0",     "10.1.2.3",        "10.255.255.255",  /* RFC 1918 */
		"172.16.0.0",   "172.20.1.1",      "172.31.255.255",  /* RFC 1918 */
		"192.168.0.0",  "192.168.1.1",     "192.168.255.255", /* RFC 1918 */
		"100.64.0.0",   "100.100.1.1",     "100.127.255.255", /* RFC 6598 CGNAT */
		"127.0.0.1",    "127.255.255.255",                    /* loopback */
		"169.254.0.0",  "169.254.1.2",     "169.254.255.255", /* link-local */
		"198.18.0.0",   "198.19.255.255",                     /* benchmarking */
		"192.0.2.0",    "192.0.2.255",                        /* TEST-NET-1 */
		"198.51.100.0", "198.51.100.255",                     /* TEST-NET-2 */
		"203.0.113.0",  "203.0.113.255",                      /* TEST-NET-3 */
		"0.0.0.0",                                            /* "this network" */
		"fc00::1",      "fd12:3456::1",    "fdff:ffff::1",    /* unique local */
		"fe80::1",      "febf::1",                            /* link-local */
		"::1",
	};
	static const char *const pub[] = {
		"1.1.1.1",         "8.8.8.8",         "203.0.114.1",     "203.0.112.255",
		"172.15.255.255",  "172.32.0.0",      "100.63.255.255",  "100.128.0.0",
		"11.0.0.0",        "9.255.255.255",   "192.167.255.255", "192.169.0.0",
		"169.253.255.255", "169.255.0.0",     "198.17.255.255",  "198.20.0.0",
		"192.0.3.1",       "198.51.101.1",    "126.255.255.255", "128.0.0.0",
		"2001:4860::1",    "2606:4700::1111", "fbff::1",         "fec0::1",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(priv) / sizeof(priv[0]); i++) {
		if (!private(priv[i]))
			print_error("%s should be private\n", priv[i]);
		assert_true(private(priv[i]));
	}
	for (size_t i = 0; i < sizeof(pub) / sizeof(pub[0]); i++) {
		if (private(pub[i]))
			print_error("%s should be public\n", pub[i]);
		assert_false(private(pub[i]));
	}
}

static void test_default_gateway(void **state)
{
	struct ph_addr gw;
	int err = ph_map_default_gateway(&gw);

	(void)state;
	/* whatever this host's routes: a gateway on port 5351, or none */
	if (err != 0) {
		assert_true(err == -ENETUNREACH || err == -ENOENT || err == -EACCES);
		return;
	}
	assert_int_equal(gw.u.sa.sa_family, AF_INET);
	assert_int_equal(gw.len, sizeof(struct sockaddr_in));
	assert_int_equal(ntohs(gw.u.in.sin_port), PH_PMP_PORT);
	assert_int_not_equal(gw.u.in.sin_addr.s_addr, 0);
}

/* Writes text to a temporary file and reads its gateway as /proc/net/route. */
static int route_gateway(const char *text, struct ph_addr *gw)
{
	char path[] = "/tmp/test_pmp_route.XXXXXX";
	int fd = mkstemp(path), err;

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	err = ph_map_route_gateway(path, gw);
	unlink(path);
	return err;
}

#define ROUTE_HEAD                                                                                 \
	"Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"

static void test_route_gateway(void **state)
{
	struct ph_addr gw, want;

	(void)state;
	/* the kernel's own layout: the one default route, next to the LAN's */
	assert_int_equal(route_gateway(ROUTE_HEAD "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t"
	                                          "00000000\t0\t0\t0\n"
	                                          "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t"
	                                          "00FFFFFF\t0\t0\t0\n",
	                               &gw),
	                 0);
	assert_int_equal(ph_addr_from_literal("192.168.1.1", PH_PMP_PORT, &want), 0);
	assert_true(ph_addr_equal(&gw, &want));

	/* a VPN's 0.0.0.0/1 and 128.0.0.0/1 come first, a route that is down, and two
	 * default routes: the one of the lowest metric is the router */
	assert_int_equal(route_gateway(ROUTE_HEAD "tun0\t00000000\t0100080A\t0003\t0\t0\t0\t"
	                                          "00000080\t0\t0\t0\n"
	                                          "tun0\t00000080\t0100080A\t0003\t0\t0\t0\t"
	                                          "00000080\t0\t0\t0\n"
	                                          "eth1\t00000000\t0101000A\t0002\t0\t0\t0\t"
	                                          "00000000\t0\t0\t0\n"
	                                          "wlan0\t00000000\t0102A8C0\t0003\t0\t0\t600\t"
	                                          "00000000\t0\t0\t0\n"
	                                          "eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t"
	                                          "00000000\t0\t0\t0\n",
	                               &gw),
	                 0);
	assert_true(ph_addr_equal(&gw, &want));

	/* no default route with a gateway: none, and nothing half set */
	assert_int_equal(route_gateway(ROUTE_HEAD "eth0\t00000000\t00000000\t0001\t0\t0\t0\t"
	                                          "00000000\t0\t0\t0\n"
	                                          "tun0\t00000000\t0100080A\t0003\t0\t0\t0\t"
	                                          "00000080\t0\t0\t0\n"
	                                          "garbage\n",
	                               &gw),
	                 -ENETUNREACH);
	assert_int_equal(gw.u.sa.sa_family, 0);
	assert_int_equal(route_gateway(ROUTE_HEAD, &gw), -ENETUNREACH);
	assert_int_equal(ph_map_route_gateway("/nonexistent/route", &gw), -ENOENT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_natpmp_requests),
		cmocka_unit_test(test_pcp_map_request),
		cmocka_unit_test(test_pcp_announce_request),
		cmocka_unit_test(test_natpmp_addr_answer),
		cmocka_unit_test(test_natpmp_map_answer),
		cmocka_unit_test(test_natpmp_unsupported_version),
		cmocka_unit_test(test_natpmp_bad),
		cmocka_unit_test(test_pcp_announce_answer),
		cmocka_unit_test(test_pcp_map_answer),
		cmocka_unit_test(test_pcp_map_error_short),
		cmocka_unit_test(test_pcp_bad),
		cmocka_unit_test(test_requests_refused),
		cmocka_unit_test(test_result_str),
		cmocka_unit_test(test_addr_is_private),
		cmocka_unit_test(test_default_gateway),
		cmocka_unit_test(test_route_gateway),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
