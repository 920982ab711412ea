/*
 * Fuzzes the STUN parser (core/stun.h), which reads every datagram the relay's session
 * port gets over UDP: ph_stun_parse on exactly the input gives 0 or -EPROTO with a reason,
 * the same twice; a parsed request has at most 4 unknown attributes, and its answer (to an
 * IPv4 and an IPv6 sender) fits PH_STUN_RESP_MAX, is a multiple of 4 with its own length in
 * its header, echoes the transaction id, and a success gives the sender back through
 * ph_stun_mapped. ph_stun_mapped on the input never reads past it.
 */
#include "core/stun.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_stun: %s failed (size %zu)\n", #cond, size);         \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *in = malloc(size ? size : 1), out[PH_STUN_RESP_MAX];
	struct ph_stun_msg m, again;
	const char *why = NULL, *why2 = NULL;
	struct ph_addr a, back;
	int r;

	if (in == NULL)
		abort();
	if (size > 0)
		memcpy(in, data, size);
	if (size >= 12)
		(void)ph_stun_mapped(in, size, in, &back); /* bounds only */
	r = ph_stun_parse(in, size, &m, &why);
	CHECK(r == 0 || (r == -EPROTO && why != NULL));
	CHECK(ph_stun_parse(in, size, &again, &why2) == r);
	free(in);
	if (r < 0)
		return 0;
	CHECK(m.nunknown <= 4);
	for (int v6 = 0; v6 < 2; v6++) {
		size_t n;

		(void)ph_addr_from_literal(v6 ? "2001:db8::7" : "203.0.113.9", 40000, &a);
		n = ph_stun_answer(&m, &a, out);
		if (n == 0) {
			CHECK(m.type != PH_STUN_BINDING);
			continue;
		}
		CHECK(n <= PH_STUN_RESP_MAX && n % 4 == 0 && n >= 20);
		CHECK((size_t)(out[2] << 8 | out[3]) + 20 == n);
		CHECK(memcmp(out + 4, m.tid, 16) == 0);
		if ((out[0] << 8 | out[1]) == 0x0101 && !m.classic) {
			CHECK(ph_stun_mapped(out, n, m.tid + 4, &back) == 0);
			CHECK(ph_addr_equal(&a, &back));
		}
	}
	return 0;
}
