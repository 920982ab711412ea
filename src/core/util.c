#include "core/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/types.h>
#include <time.h>

uint64_t ph_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int ph_parse_uint(const char *s, unsigned long long min, unsigned long long max,
                  unsigned long long *out)
{
	unsigned long long v;
	char *end;

	if (s == NULL || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (*end != '\0')
		return -EINVAL;
	if (errno == ERANGE || v < min || v > max)
		return -ERANGE;
	*out = v;
	return 0;
}

int ph_parse_duration(const char *s, uint64_t *ms)
{
	static const struct {
		const char *unit;
		uint64_t mult;
	} units[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
	unsigned long long v;
	char num[32];
	size_t n;

	if (s == NULL)
		return -EINVAL;
	n = strspn(s, "0123456789");
	if (n == 0 || n >= sizeof(num))
		return -EINVAL;
	memcpy(num, s, n);
	num[n] = '\0';
	if (ph_parse_uint(num, 0, 1000000000ull, &v) < 0)
		return -EINVAL;
	for (size_t i = 0; i < PH_ARRAY_SIZE(units); i++) {
		if (strcmp(s + n, units[i].unit) == 0) {
			*ms = v * units[i].mult;
			return 0;
		}
	}
	return -EINVAL;
}

const char *ph_fmt_bytes(uint64_t n, char *buf, size_t len)
{
	static const char *const suffix[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	double v = (double)n;
	size_t i = 0;

	while (v >= 1024.0 && i + 1 < PH_ARRAY_SIZE(suffix)) {
		v /= 1024.0;
		i++;
	}
	if (i == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)n);
	else
		snprintf(buf, len, "%.1f %s", v, suffix[i]);
	return buf;
}

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

uint64_t ph_siphash13(const uint64_t k[2], const void *p, size_t len)
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
	for (size_t i = len & ~(size_t)7; i < len; i++) /* the last 0-7 bytes, little endian */
		m |= (uint64_t)s[i] << (8 * (i & 7));
	v3 ^= m;
	SIPROUND(v0, v1, v2, v3);
	v0 ^= m;
	v2 ^= 0xff;
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

void ph_random(void *buf, size_t len)
{
	static uint64_t ctr;
	unsigned char *p = buf;
	size_t got = 0;

	while (got < len) {
		ssize_t n = getrandom(p + got, len - got, GRND_NONBLOCK);

		if (n <= 0)
			break;
		got += (size_t)n;
	}
	for (; got < len; got++) { /* early boot without entropy: weaker, still varies */
		uint64_t k[2] = {ph_now_ms(), (uint64_t)(uintptr_t)buf};
		uint64_t c = __atomic_add_fetch(&ctr, 1, __ATOMIC_RELAXED);

		p[got] = (unsigned char)ph_siphash13(k, &c, sizeof(c));
	}
}

const char *ph_strerror(int err)
{
	switch (-err) {
	case PH_ENONAME:
		return "no such name";
	case PH_ENOADDR:
		return "no address for the name";
	case PH_EDNSFAIL:
		return "DNS server failure";
	case PH_EDNSTIMEOUT:
		return "DNS timeout";
	default:
		return strerror(-err);
	}
}
