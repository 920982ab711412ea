/*
 * NAT-PMP (RFC 6886) and PCP (RFC 6887): the messages of UDP port 5351, built and parsed
 * without I/O. One module for both, since a PCP server answers a NAT-PMP request and a
 * NAT-PMP server answers a PCP request with "unsupported version": a client asks in PCP
 * and falls back on that answer.
 */
#ifndef PH_PORTMAP_PMP_H
#define PH_PORTMAP_PMP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"

#define PH_PMP_PORT        5351
#define PH_PMP_CLIENT_PORT 5350 /* where gateways multicast their announcements */
#define PH_PCP_VERSION     2
#define PH_NATPMP_VERSION  0
#define PH_PCP_MAX         1100 /* the largest PCP message (RFC 6887 section 7) */
#define PH_PCP_NONCE_LEN   12

enum ph_pmp_proto { PH_PMP_UDP = 17, PH_PMP_TCP = 6 };

/* What a gateway answered, in either protocol. */
struct ph_pmp_resp {
	uint8_t version;    /* 0 NAT-PMP, 2 PCP (1 is an old PCP draft: unsupported) */
	uint8_t opcode;     /* without the response bit */
	uint16_t result;    /* the protocol's result code; 0 is success */
	uint32_t epoch;     /* seconds since the gateway's state began */
	uint32_t lifetime;  /* granted, seconds (0 in an address answer) */
	uint16_t internal;  /* the mapping's internal port */
	uint16_t external;  /* the external port granted */
	uint8_t proto;      /* PCP MAP: the protocol; NAT-PMP: from the opcode */
	struct ph_addr ext; /* the external address (NAT-PMP address answer, PCP MAP) */
	uint8_t nonce[PH_PCP_NONCE_LEN]; /* PCP MAP */
};

/* NAT-PMP requests (RFC 6886 sections 3.2 and 3.3). Return their length. */
size_t ph_natpmp_addr_req(uint8_t out[2]);
size_t ph_natpmp_map_req(uint8_t proto, uint16_t internal, uint16_t external, uint32_t lifetime,
                         uint8_t out[12]);

/*
 * A PCP MAP request (RFC 6887 sections 7.1 and 11.1) from client (the address this host
 * uses towards the gateway) for internal port of proto, suggesting external (0: any) on
 * ext (NULL: any); prefer_failure adds PREFER_FAILURE (the external port or nothing).
 * lifetime 0 deletes. Returns the length written to out (PH_PCP_MAX bytes).
 */
size_t ph_pcp_map_req(const struct ph_addr *client, const uint8_t nonce[PH_PCP_NONCE_LEN],
                      uint8_t proto, uint16_t internal, uint16_t external,
                      const struct ph_addr *ext, uint32_t lifetime, bool prefer_failure,
                      uint8_t *out);

/* A PCP ANNOUNCE request: learns whether the gateway speaks PCP, and its epoch. */
size_t ph_pcp_announce_req(const struct ph_addr *client, uint8_t *out);

/*
 * Parses a response of either protocol from the gateway. Returns 0 with *r filled, or
 * -EPROTO with a static reason (not a response, too short, unknown version or opcode).
 * A non-zero result code is a parsed response (r->result), not an error.
 */
int ph_pmp_parse(const uint8_t *b, size_t n, struct ph_pmp_resp *r, const char **why);

/* The meaning of a result code in one short phrase a non-expert can read. */
const char *ph_pmp_result_str(uint8_t version, uint16_t result);

#endif /* PH_PORTMAP_PMP_H */
