#include "core/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

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

/* The length of the UTF-8 sequence at p when it is valid and printable (no C1 control, no
 * bidirectional override), else 0. A NUL ends a sequence early, so p's terminator is never
 * read past. */
static size_t utf8_printable_len(const unsigned char *p)
{
	uint32_t cp;
	size_t n;

	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		n = 2;
		cp = p[0] & 0x1fu;
	} else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		n = 3;
		cp = p[0] & 0x0fu;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		n = 4;
		cp = p[0] & 0x07u;
	} else {
		return 0;
	}
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3fu);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) || /* overlong */
	    (cp >= 0xd800 && cp <= 0xdfff) || /* surrogates */
	    cp <= 0x9f ||                     /* C1 controls (and overlong) */
	    (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069)) /* bidi */
		return 0;
	return n;
}

/* The length of the escape sequence at p (p[0] is ESC): ECMA-48's CSI, its string
 * sequences, or ESC and one byte. An unterminated one runs to the end of the text. */
static size_t esc_len(const unsigned char *p)
{
	size_t i = 1;

	if (p[i] == '[') { /* CSI: parameter and intermediate bytes, then a final byte */
		for (i++; p[i] >= 0x20 && p[i] <= 0x3f; i++)
			;
		return p[i] >= 0x40 && p[i] <= 0x7e ? i + 1 : i;
	}
	if (p[i] == ']' || p[i] == 'P' || p[i] == 'X' || p[i] == '^' || p[i] == '_') {
		/* OSC, DCS, SOS, PM, APC: a string ended by BEL or ST (ESC \) */
		for (i++; p[i] != '\0' && p[i] != 0x07 && !(p[i] == 0x1b && p[i + 1] == '\\'); i++)
			;
		return p[i] == 0x07 ? i + 1 : p[i] == 0x1b ? i + 2 : i;
	}
	return p[i] >= 0x20 && p[i] <= 0x7e ? 2 : 1; /* ESC 7, ESC c ...; a lone ESC */
}

size_t ph_str_sanitize(char *s)
{
	unsigned char *p = (unsigned char *)s;
	size_t i = 0, o = 0, n;

	while (p[i] != '\0') {
		if (p[i] == 0x1b) {
			i += esc_len(p + i);
		} else if (p[i] >= 0x20 && p[i] < 0x7f) {
			p[o++] = p[i++];
		} else if (p[i] >= 0x80 && (n = utf8_printable_len(p + i)) > 0) {
			memmove(p + o, p + i, n); /* o <= i: in place */
			o += n;
			i += n;
		} else {
			p[o++] = '?';
			i++;
		}
	}
	p[o] = '\0';
	return o;
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

FILE *ph_file_open(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK), flags, e;
	struct stat st;
	FILE *f;

	if (fd == -1)
		return NULL;
	/* a directory or a device: no lines to read, or lines without end */
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		e = fstat(fd, &st) == -1 ? errno : EINVAL;
		close(fd);
		errno = e;
		return NULL;
	}
	flags = fcntl(fd, F_GETFL);
	if (flags == -1 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == -1 ||
	    (f = fdopen(fd, "r")) == NULL) {
		e = errno;
		close(fd);
		errno = e;
		return NULL;
	}
	return f;
}
