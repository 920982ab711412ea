/*
 * Fuzzes ph_hostport_parse() against its contract: a success gives a port in 1-65535, a
 * terminated host shorter than PH_HOST_MAX and consistent flags; a literal address formats
 * with ph_addr_fmt() to text that parses back to the same address; a failure gives a reason.
 */
#include "core/addr.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_addr: %s failed for '%s'\n", #cond, s);              \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ph_hostport hp, again;
	char buf[PH_ADDR_STRLEN];
	const char *why = NULL, *why2 = NULL;
	char *s;
	int err;

	if (size > 4096)
		return 0; /* nothing longer says more */
	s = malloc(size + 1);
	if (s == NULL)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0'; /* the parser takes a string: stop at the first NUL, as argv would */

	err = ph_hostport_parse(s, &hp, &why);
	if (err != 0) {
		CHECK(err == -22); /* -EINVAL */
		CHECK(why != NULL && why[0] != '\0');
		goto out;
	}
	CHECK(why == NULL);
	CHECK(hp.port >= 1);
	CHECK(memchr(hp.host, '\0', sizeof(hp.host)) != NULL);
	CHECK(strlen(hp.host) < PH_HOST_MAX);
	CHECK(strstr(s, hp.host) != NULL); /* the host is as written */
	CHECK(hp.proto != 0 && (hp.proto & ~3u) == 0);
	CHECK(!(hp.is_name && hp.wildcard));
	CHECK(hp.wildcard == (hp.host[0] == '\0'));
	if (hp.is_name)
		goto out;
	CHECK(hp.addr.u.sa.sa_family == AF_INET || hp.addr.u.sa.sa_family == AF_INET6);
	CHECK(hp.addr.len == (hp.addr.u.sa.sa_family == AF_INET ? sizeof(struct sockaddr_in)
	                                                        : sizeof(struct sockaddr_in6)));
	CHECK(ph_addr_port(&hp.addr) == hp.port);

	ph_addr_fmt(&hp.addr, buf, sizeof(buf));
	CHECK(strlen(buf) < sizeof(buf) - 1); /* not truncated */
	err = ph_hostport_parse(buf, &again, &why2);
	if (err != 0)
		fprintf(stderr, "fuzz_addr: '%s' formats as '%s', refused: %s\n", s, buf, why2);
	CHECK(err == 0);
	CHECK(!again.is_name);
	if (!ph_addr_equal(&hp.addr, &again.addr))
		fprintf(stderr, "fuzz_addr: '%s' formats as '%s', another address\n", s, buf);
	CHECK(ph_addr_equal(&hp.addr, &again.addr));
out:
	free(s);
	return 0;
}
