/*
 * Fuzzes ph_cidr_parse() against its contract: a success gives an IPv4 or IPv6 network
 * with a prefix in range and no host bits set, which contains its own network address; a
 * failure gives a reason.
 */
#include "core/acl.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/addr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_cidr: %s failed for '%s'\n", #cond, s);              \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ph_cidr c;
	struct ph_addr a;
	const char *why = NULL;
	unsigned max, bit;
	uint8_t orig[16], *ip;
	char *s, *text;
	int err;

	if (size > 4096)
		return 0;
	s = malloc(size + 1);
	if (s == NULL)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';

	err = ph_cidr_parse(s, &c, &why);
	if (err != 0) {
		CHECK(err == -22); /* -EINVAL */
		CHECK(why != NULL && why[0] != '\0');
		goto out;
	}
	CHECK(why == NULL);
	CHECK(c.family == AF_INET || c.family == AF_INET6);
	max = c.family == AF_INET ? 32 : 128;
	CHECK(c.prefix <= max);
	for (bit = c.prefix; bit < 128; bit++) /* v4 leaves bytes 4-15 zero too */
		CHECK((c.net[bit / 8] & (0x80u >> (bit % 8))) == 0);
	/* and the network bits are the address as written */
	text = strchr(s, '/');
	if (text != NULL)
		*text = '\0';
	if (c.family == AF_INET && strchr(s, ':') != NULL) {
		/* an IPv4-mapped IPv6 network is kept as the IPv4 network it means */
		uint8_t v6[16];

		CHECK(inet_pton(AF_INET6, s, v6) == 1);
		CHECK(IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)(const void *)v6));
		memcpy(orig, v6 + 12, 4);
	} else {
		CHECK(inet_pton(c.family, s, orig) == 1);
	}
	if (text != NULL)
		*text = '/';
	for (bit = 0; bit < c.prefix; bit++)
		CHECK(((c.net[bit / 8] ^ orig[bit / 8]) & (0x80u >> (bit % 8))) == 0);

	/* the network address itself is inside the network */
	memset(&a, 0, sizeof(a));
	if (c.family == AF_INET) {
		a.u.in.sin_family = AF_INET;
		memcpy(&a.u.in.sin_addr, c.net, 4);
		a.len = sizeof(a.u.in);
	} else {
		a.u.in6.sin6_family = AF_INET6;
		memcpy(&a.u.in6.sin6_addr, c.net, 16);
		a.len = sizeof(a.u.in6);
	}
	CHECK(ph_cidr_contains(&c, &a));
	ip = c.family == AF_INET ? (uint8_t *)&a.u.in.sin_addr : (uint8_t *)&a.u.in6.sin6_addr;
	if (c.prefix > 0) {
		/* flipping the last bit of the prefix leaves the network */
		bit = c.prefix - 1u;
		ip[bit / 8] ^= (uint8_t)(0x80u >> (bit % 8));
		CHECK(!ph_cidr_contains(&c, &a));
		ip[bit / 8] ^= (uint8_t)(0x80u >> (bit % 8));
	}
	if (c.prefix < max) {
		/* flipping the last host bit stays inside */
		bit = max - 1;
		ip[bit / 8] ^= (uint8_t)(0x80u >> (bit % 8));
		CHECK(ph_cidr_contains(&c, &a));
	}
out:
	free(s);
	return 0;
}
