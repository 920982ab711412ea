/*
 * A table of UDP sessions, as a NAT keeps them: keyed by the client's address and port and
 * the local address it wrote to, ordered by last use so that the idle ones expire from the
 * front and the oldest can be evicted when the table is full. Nodes are embedded in their
 * owner's session. One table per worker and rule; not thread safe.
 */
#ifndef PH_CONN_UDPTAB_H
#define PH_CONN_UDPTAB_H

#include <stdint.h>

#include "core/addr.h"
#include "core/util.h"

/* Both addresses canonical (see ph_dgram): compared as bytes. */
struct ph_udp_key {
	struct ph_addr peer;
	struct ph_addr local; /* family 0 when the listener has one address */
};

struct ph_udp_node {
	struct ph_udp_node *next; /* hash chain */
	struct ph_list lru;       /* least recently used first */
	struct ph_udp_key key;
	uint64_t last; /* loop ms of the last datagram either way */
	uint32_t hash;
};

struct ph_udptab {
	struct ph_udp_node **b; /* owned: buckets, a power of two of them */
	unsigned nb;
	unsigned n;
	struct ph_list lru;
	uint64_t seed[2]; /* random SipHash key: flooding one chain needs it */
};

/* Returns 0 or -ENOMEM. */
int ph_udptab_init(struct ph_udptab *t);

/* Frees the buckets; the nodes belong to their owners. */
void ph_udptab_free(struct ph_udptab *t);

struct ph_udp_node *ph_udptab_find(struct ph_udptab *t, const struct ph_udp_key *k);

/* Adds n with key k, used at now (its key must not be in t). Never fails: the table grows
 * when it can and stays correct, only slower, when it cannot. */
void ph_udptab_add(struct ph_udptab *t, struct ph_udp_node *n, const struct ph_udp_key *k,
                   uint64_t now);

void ph_udptab_del(struct ph_udptab *t, struct ph_udp_node *n);

/* n was used at now: it goes to the back of the expiry order. */
static inline void ph_udptab_touch(struct ph_udptab *t, struct ph_udp_node *n, uint64_t now)
{
	n->last = now;
	ph_list_del(&n->lru);
	ph_list_add_tail(&t->lru, &n->lru);
}

/* The least recently used node, or NULL when t is empty. */
static inline struct ph_udp_node *ph_udptab_oldest(const struct ph_udptab *t)
{
	return ph_list_empty(&t->lru) ? NULL : container_of(t->lru.next, struct ph_udp_node, lru);
}

#endif /* PH_CONN_UDPTAB_H */
