/*
 * Batched UDP I/O: recvmmsg(2) into a worker's batch of datagram slots and sendmmsg(2) out
 * of it, with each datagram's local address (IP_PKTINFO / IPV6_PKTINFO) read on receive and
 * set as the source on send, so a wildcard listener answers from the address it was asked
 * on. One batch per worker, made when its first UDP rule starts.
 */
#ifndef PH_CORE_DGRAM_H
#define PH_CORE_DGRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/addr.h"

#define PH_DGRAM_BATCH 32    /* datagrams per recvmmsg/sendmmsg */
#define PH_DGRAM_SLOT  65536 /* bytes per slot: any UDP payload (65,507 over IPv4) fits */

/* One datagram of a batch. Addresses are canonical (zeroed padding): fit to compare. */
struct ph_dgram {
	struct ph_addr peer;  /* the sender on receive, the destination on send */
	struct ph_addr local; /* our address it was sent to (pktinfo); family 0 when unknown */
	uint8_t *data;        /* borrowed: a slot of the batch, or anyone's buffer on send */
	size_t len;
	bool trunc;        /* longer than the slot (cannot happen with PH_DGRAM_SLOT) */
	uint32_t sk_drops; /* on receive: datagrams the socket dropped so far (SO_RXQ_OVFL) */
};

struct ph_dgram_batch;

/* Returns 0 and a batch in *out, or -ENOMEM. Slots are mapped lazily: untouched pages
 * cost no memory, so small datagrams use a page per slot at most. */
int ph_dgram_batch_new(struct ph_dgram_batch **out);

void ph_dgram_batch_free(struct ph_dgram_batch *b);

/* The batch's datagrams, PH_DGRAM_BATCH of them, filled by ph_dgram_recv. */
struct ph_dgram *ph_dgram_batch_items(struct ph_dgram_batch *b);

/*
 * Receives up to max datagrams waiting on fd into the batch's items first, first + 1, ...
 * (first + max <= PH_DGRAM_BATCH), without blocking. with_addrs reads each sender and local address (an unconnected socket).
 * Returns how many (>= 1), -EAGAIN when none is waiting, or -errno (-ECONNREFUSED: an ICMP
 * error came back for a connected socket).
 */
int ph_dgram_recv(struct ph_dgram_batch *b, unsigned first, int fd, unsigned max, bool with_addrs);

/*
 * Sends the n datagrams d[0..n) on fd without blocking: to each d->peer (with d->local as
 * the source when its family is set) when to_peer, else on a connected fd. Returns how
 * many went out (n when all did), or -errno when the first could not (-EAGAIN: the socket
 * buffer is full; -ECONNREFUSED: an ICMP error came back).
 */
int ph_dgram_send(struct ph_dgram_batch *b, int fd, struct ph_dgram *d, unsigned n, bool to_peer);

#endif /* PH_CORE_DGRAM_H */
