#include "core/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
