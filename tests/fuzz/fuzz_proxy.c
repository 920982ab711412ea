/*
 * Fuzzes the PROXY protocol parser (conn/proxyproto.h), which reads what trusted
 * proxies send: the result is a length within the input, -EAGAIN or -EPROTO with a
 * reason; a length parses the same from a buffer cut right after it; and a header built
 * from the addresses it gave parses back to them.
 */
#include "conn/proxyproto.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/addr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_proxy: %s failed (size %zu, r %d)\n", #cond, size,   \
			        r);                                                                \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ph_proxy_info info, again;
	uint8_t *copy, hdr[PH_PROXY_MAX];
	const char *why;
	int r, r2;

	if (size > 4096)
		return 0;
	copy = malloc(size ? size : 1); /* exactly size bytes: ASan sees any read past it */
	if (copy == NULL)
		return 0;
	memcpy(copy, data, size);
	r = ph_proxy_parse(copy, size, &info, &why);
	CHECK(r == -EAGAIN || r == -EPROTO || (r > 0 && (size_t)r <= size));
	CHECK(r != -EPROTO || why != NULL);
	if (r > 0) {
		r2 = ph_proxy_parse(copy, (size_t)r, &again, &why);
		CHECK(r2 == r);
		CHECK(again.local == info.local);
		if (!info.local) {
			for (int v = 1; v <= 2; v++) {
				size_t n = ph_proxy_build(v, &info.src, &info.dst, hdr);

				struct ph_addr s = info.src, d = info.dst;

				r2 = ph_proxy_parse(hdr, n, &again, &why);
				CHECK(r2 == (int)n);
				/* mapped IPv6 goes out as IPv4; differing families as LOCAL */
				ph_addr_unmap(&s);
				ph_addr_unmap(&d);
				CHECK(again.local || (memcmp(&again.src, &s, sizeof(s)) == 0 &&
				                      memcmp(&again.dst, &d, sizeof(d)) == 0));
			}
		}
	}
	free(copy);
	return 0;
}
