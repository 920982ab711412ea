#include "core/portseq.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

#define PORTSEQ_ROUNDS 4

static struct {
	bool ready;
	uint64_t key[2];
	uint32_t lo, n; /* the range [lo, lo + n) */
	uint32_t half;  /* bits per Feistel half: 2^(2 half) >= n */
	uint32_t pos;   /* atomic: position in the walk */
	uint8_t reserved[65536 / 8];
} seq;

/* Reads "a b" (the range) or "a,b-c,..." (reserved ports) from a /proc file. */
static int read_line(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "re");
	int ok;

	if (f == NULL)
		return -1;
	ok = fgets(buf, (int)len, f) != NULL;
	fclose(f);
	return ok ? 0 : -1;
}

static void read_reserved(void)
{
	char buf[4096], *p, *end;

	if (read_line("/proc/sys/net/ipv4/ip_local_reserved_ports", buf, sizeof(buf)) < 0)
		return;
	for (p = buf; *p != '\0' && *p != '\n';) {
		unsigned long a = strtoul(p, &end, 10), b = a;

		if (end == p)
			break;
		p = end;
		if (*p == '-') {
			b = strtoul(p + 1, &end, 10);
			p = end;
		}
		for (unsigned long x = a; x <= b && x < 65536; x++)
			seq.reserved[x / 8] |= (uint8_t)(1u << (x % 8));
		if (*p == ',')
			p++;
	}
}

void ph_portseq_init(void)
{
	unsigned long lo = 32768, hi = 60999;
	char buf[64];

	if (seq.ready)
		return;
	if (read_line("/proc/sys/net/ipv4/ip_local_port_range", buf, sizeof(buf)) == 0 &&
	    sscanf(buf, "%lu %lu", &lo, &hi) != 2)
		lo = 32768, hi = 60999;
	if (lo < 1024 || hi > 65535 || lo > hi)
		lo = 32768, hi = 60999;
	seq.lo = (uint32_t)lo;
	seq.n = (uint32_t)(hi - lo + 1);
	while ((1u << (2 * seq.half)) < seq.n)
		seq.half++;
	read_reserved();
	ph_random(seq.key, sizeof(seq.key));
	ph_random(&seq.pos, sizeof(seq.pos));
	seq.ready = true;
}

/* A keyed bijection on [0, 2^(2 half)): a balanced Feistel network. */
static uint32_t feistel(uint32_t x)
{
	uint32_t mask = (1u << seq.half) - 1, l = x >> seq.half, r = x & mask;

	for (uint32_t round = 0; round < PORTSEQ_ROUNDS; round++) {
		uint32_t in[2] = {r, round};
		uint32_t f = (uint32_t)ph_siphash13(seq.key, in, sizeof(in)) & mask;
		uint32_t t = r;

		r = l ^ f;
		l = t;
	}
	return (l << seq.half) | r;
}

uint16_t ph_portseq_next(void)
{
	if (!seq.ready)
		return 0;
	for (unsigned tries = 0; tries < 64; tries++) {
		uint32_t i = __atomic_fetch_add(&seq.pos, 1, __ATOMIC_RELAXED) % seq.n;
		uint32_t x = feistel(i);
		uint32_t port;

		while (x >= seq.n) /* cycle walking keeps it a permutation of [0, n) */
			x = feistel(x);
		port = seq.lo + x;
		if (!(seq.reserved[port / 8] & (1u << (port % 8))))
			return (uint16_t)port;
	}
	return 0;
}
