#include "conn/udptab.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define UDPTAB_MIN_BUCKETS 16

static uint32_t key_hash(const struct ph_udptab *t, const struct ph_udp_key *k)
{
	return (uint32_t)ph_siphash13(t->seed, k, sizeof(*k));
}

int ph_udptab_init(struct ph_udptab *t)
{
	memset(t, 0, sizeof(*t));
	ph_list_init(&t->lru);
	t->b = calloc(UDPTAB_MIN_BUCKETS, sizeof(*t->b));
	if (t->b == NULL)
		return -ENOMEM;
	t->nb = UDPTAB_MIN_BUCKETS;
	ph_random(t->seed, sizeof(t->seed));
	return 0;
}

void ph_udptab_free(struct ph_udptab *t)
{
	free(t->b);
	t->b = NULL;
	t->nb = 0;
	t->n = 0;
}

struct ph_udp_node *ph_udptab_find(struct ph_udptab *t, const struct ph_udp_key *k)
{
	uint32_t h = key_hash(t, k);

	for (struct ph_udp_node *n = t->b[h & (t->nb - 1)]; n != NULL; n = n->next) {
		if (n->hash == h && memcmp(&n->key, k, sizeof(*k)) == 0)
			return n;
	}
	return NULL;
}

static void udptab_grow(struct ph_udptab *t)
{
	unsigned nb = t->nb * 2;
	struct ph_udp_node **b = calloc(nb, sizeof(*b));

	if (b == NULL)
		return; /* longer chains, still correct */
	for (unsigned i = 0; i < t->nb; i++) {
		struct ph_udp_node *n = t->b[i], *next;

		for (; n != NULL; n = next) {
			next = n->next;
			n->next = b[n->hash & (nb - 1)];
			b[n->hash & (nb - 1)] = n;
		}
	}
	free(t->b);
	t->b = b;
	t->nb = nb;
}

void ph_udptab_add(struct ph_udptab *t, struct ph_udp_node *n, const struct ph_udp_key *k,
                   uint64_t now)
{
	struct ph_udp_node **head;

	if (t->n >= t->nb && t->nb < (1u << 30))
		udptab_grow(t);
	n->key = *k;
	n->hash = key_hash(t, k);
	n->last = now;
	head = &t->b[n->hash & (t->nb - 1)];
	n->next = *head;
	*head = n;
	ph_list_add_tail(&t->lru, &n->lru);
	t->n++;
}

void ph_udptab_del(struct ph_udptab *t, struct ph_udp_node *n)
{
	struct ph_udp_node **pp = &t->b[n->hash & (t->nb - 1)];

	for (; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == n) {
			*pp = n->next;
			n->next = NULL;
			t->n--;
			break;
		}
	}
	ph_list_del(&n->lru);
}
