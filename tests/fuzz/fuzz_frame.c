/*
 * Fuzzes the relay's frame parser (tunnel/frame.h), which every byte a peer sends after
 * the TLS handshake meets: the result is a length within the input, -EAGAIN or -EPROTO
 * with a reason; a frame's payload lies inside the input; whole frames are parsed one
 * after another as a session would, and a parsed header builds back to the same bytes.
 */
#include "tunnel/frame.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_frame: %s failed (size %zu, r %d)\n", #cond, size,   \
			        r);                                                                \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *buf = malloc(size ? size : 1); /* exactly size bytes: ASan sees a read past */
	size_t off = 0;
	int r = 0;

	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);
	while (off < size) {
		struct ph_frame f;
		const char *why;
		uint8_t h[PH_FRAME_HDR];

		r = ph_frame_parse(buf + off, size - off, &f, &why);
		CHECK(r == -EAGAIN || r == -EPROTO ||
		      (r >= PH_FRAME_HDR && (size_t)r <= size - off));
		CHECK(r != -EPROTO || why != NULL);
		if (r < 0)
			break;
		CHECK(f.len <= PH_FRAME_MAX && (size_t)r == PH_FRAME_HDR + (size_t)f.len);
		CHECK(f.payload == buf + off + PH_FRAME_HDR);
		ph_frame_header(f.type, f.flags, f.stream, f.len, h);
		CHECK(memcmp(h, buf + off, PH_FRAME_HDR) == 0);
		off += (size_t)r;
	}
	free(buf);
	return 0;
}
