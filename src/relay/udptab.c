#include "relay/udptab.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define UDPTAB_MIN_BUCKETS 16

static inline uint64_t rotl(uint64_t x, int b)
{
	return (x << b) | (x >> (64 - b));
}

#define SIPROUND(v0, v1, v2, v3)                                                                   \
	do {                                                                                       \
		v0 += v1;                                                                          \
		v1 = rotl(v1, 13);                                                                 \
		v1 ^= v0;                                                                          \
		v0 = rotl(v0, 32);                                                                 \
		v2 += v3;                                                                          \
		v3 = rotl(v3, 16);                                                                 \
		v3 ^= v2;                                                                          \
		v0 += v3;                                                                          \
		v3 = rotl(v3, 21);                                                                 \
		v3 ^= v0;                                                                          \
		v2 += v1;                                                                          \
		v1 = rotl(v1, 17);                                                                 \
		v1 ^= v2;                                                                          \
		v2 = rotl(v2, 32);                                                                 \
	} while (0)

/* SipHash-1-3 (Aumasson and Bernstein) of len bytes, len a multiple of 8. */
static uint64_t siphash13(const uint64_t k[2], const void *p, size_t len)
{
	uint64_t v0 = k[0] ^ 0x736f6d6570736575ULL, v1 = k[1] ^ 0x646f72616e646f6dULL;
	uint64_t v2 = k[0] ^ 0x6c7967656e657261ULL, v3 = k[1] ^ 0x7465646279746573ULL;
	const unsigned char *s = p;
	uint64_t m;

	for (size_t i = 0; i + 8 <= len; i += 8) {
		memcpy(&m, s + i, 8);
		v3 ^= m;
		SIPROUND(v0, v1, v2, v3);
		v0 ^= m;
	}
	m = (uint64_t)len << 56;
	v3 ^= m;
	SIPROUND(v0, v1, v2, v3);
	v0 ^= m;
	v2 ^= 0xff;
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

_Static_assert(sizeof(struct ph_udp_key) % 8 == 0, "the key is hashed 8 bytes at a time");

static uint32_t key_hash(const struct ph_udptab *t, const struct ph_udp_key *k)
{
	return (uint32_t)siphash13(t->seed, k, sizeof(*k));
}

int ph_udptab_init(struct ph_udptab *t)
{
	memset(t, 0, sizeof(*t));
	ph_list_init(&t->lru);
	t->b = calloc(UDPTAB_MIN_BUCKETS, sizeof(*t->b));
	if (t->b == NULL)
		return -ENOMEM;
	t->nb = UDPTAB_MIN_BUCKETS;
	if (getrandom(t->seed, sizeof(t->seed), GRND_NONBLOCK) != (ssize_t)sizeof(t->seed)) {
		/* early boot without entropy: weaker, still varies per run */
		t->seed[0] = (uint64_t)(uintptr_t)t ^ ph_now_ms();
		t->seed[1] = rotl(t->seed[0], 29) ^ 0x9e3779b97f4a7c15ULL;
	}
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
