/*
 * STUN Binding (RFC 8489, and RFC 3489's classic form): the messages a server answers so
 * that a client behind a NAT learns its public address and port. Every length is checked
 * before it is read; nothing here keeps state.
 */
#ifndef PH_CORE_STUN_H
#define PH_CORE_STUN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"

#define PH_STUN_HDR      20
#define PH_STUN_COOKIE   0x2112A442u
#define PH_STUN_BINDING  0x0001 /* a Binding request's type */
#define PH_STUN_RESP_MAX 128    /* the largest answer built here */

/* A parsed request. */
struct ph_stun_msg {
	uint16_t type;
	bool classic;        /* no magic cookie: an RFC 3489 client (MAPPED-ADDRESS only) */
	uint8_t tid[16];     /* the transaction id: 12 bytes, 16 for a classic client */
	uint16_t unknown[4]; /* comprehension-required attributes not understood (first 4) */
	unsigned nunknown;
};

/*
 * Parses a datagram p[0..n) as a STUN request. Returns 0 with *m set; -EPROTO with a
 * static reason for anything else (too short, a length that is not the datagram's, not a
 * request, an attribute past the end) - to be dropped without an answer.
 */
int ph_stun_parse(const uint8_t *p, size_t n, struct ph_stun_msg *m, const char **why);

/*
 * The answer to Binding request m from mapped (the address it came from) into out
 * (PH_STUN_RESP_MAX bytes): a success with XOR-MAPPED-ADDRESS and MAPPED-ADDRESS (a classic
 * client: MAPPED-ADDRESS alone), or error 420 naming the unknown attributes. Returns its
 * length, or 0 when m is no Binding request (no answer).
 */
size_t ph_stun_answer(const struct ph_stun_msg *m, const struct ph_addr *mapped, uint8_t *out);

/*
 * Reads the mapped address out of a Binding success response p[0..n) for transaction tid
 * (XOR-MAPPED-ADDRESS preferred). Returns 0, or -EPROTO.
 */
int ph_stun_mapped(const uint8_t *p, size_t n, const uint8_t tid[12], struct ph_addr *out);

#endif /* PH_CORE_STUN_H */
