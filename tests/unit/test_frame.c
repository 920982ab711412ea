/* The relay's frame header: each type's bounds, stream ids, flags, partial input. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tunnel/frame.h"

/* A frame of type t on stream id with len payload bytes (all 0xab), in a buffer of
 * exactly its size; returns its size. */
static size_t build(uint8_t *buf, uint8_t t, uint8_t flags, uint32_t id, uint16_t len)
{
	ph_frame_header(t, flags, id, len, buf);
	memset(buf + PH_FRAME_HDR, 0xab, len);
	return PH_FRAME_HDR + (size_t)len;
}

static int parse(const uint8_t *b, size_t n, struct ph_frame *f, const char **why)
{
	uint8_t *copy = malloc(n ? n : 1); /* exact size: ASan sees a read past it */
	int r;

	assert_non_null(copy);
	memcpy(copy, b, n);
	r = ph_frame_parse(copy, n, f, why);
	if (r > 0)
		f->payload = b + (f->payload - copy);
	free(copy);
	return r;
}

static void test_header_layout(void **state)
{
	uint8_t h[PH_FRAME_HDR];
	static const uint8_t want[PH_FRAME_HDR] = {0x03, 0x00, 0x01, 0x02, 0x03, 0x04, 0x12, 0x34};

	(void)state;
	ph_frame_header(PH_FRAME_DATA, 0, 0x01020304, 0x1234, h);
	assert_memory_equal(h, want, sizeof(want));
}

static void test_good_frames(void **state)
{
	static const struct {
		uint8_t type, flags;
		uint32_t id;
		uint16_t len;
	} ok[] = {
		{PH_FRAME_CTRL, 0, 0, 1},   {PH_FRAME_CTRL, 0, 0, PH_FRAME_MAX},
		{PH_FRAME_OPEN, 0, 2, 9},   {PH_FRAME_OPEN, PH_FRAME_F_FIN, 4, 100},
		{PH_FRAME_DATA, 0, 7, 1},   {PH_FRAME_DATA, 0, 0xffffffffu, PH_FRAME_MAX},
		{PH_FRAME_WINDOW, 0, 0, 4}, {PH_FRAME_WINDOW, 0, 9, 4},
		{PH_FRAME_FIN, 0, 3, 0},    {PH_FRAME_RST, 0, 3, 1},
		{PH_FRAME_DGRAM, 0, 0, 13}, {PH_FRAME_PING, 0, 0, 8},
		{PH_FRAME_PONG, 0, 0, 8},   {PH_FRAME_GOAWAY, 0, 0, 201},
	};
	static uint8_t buf[PH_FRAME_HDR + PH_FRAME_MAX];
	struct ph_frame f;
	const char *why;

	(void)state;
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		size_t n = build(buf, ok[i].type, ok[i].flags, ok[i].id, ok[i].len);

		assert_int_equal(parse(buf, n, &f, &why), (int)n);
		assert_int_equal(f.type, ok[i].type);
		assert_int_equal(f.flags, ok[i].flags);
		assert_int_equal(f.stream, ok[i].id);
		assert_int_equal(f.len, ok[i].len);
		assert_ptr_equal(f.payload, buf + PH_FRAME_HDR);
		/* every shorter prefix asks for more, never a wrong frame */
		for (size_t k = 0; k < n; k++)
			assert_int_equal(parse(buf, k, &f, &why), -EAGAIN);
		/* and what follows the frame is not part of it */
		assert_int_equal(ph_frame_parse(buf, n, &f, &why), (int)n);
	}
}

static void test_bad_frames(void **state)
{
	static const struct {
		uint8_t type, flags;
		uint32_t id;
		uint16_t len;
		const char *why;
	} bad[] = {
		{0, 0, 0, 0, "unknown frame type"},
		{0x0c, 0, 0, 0, "unknown frame type"},
		{PH_FRAME_OPENED, 0, 0, 1, "without a stream id"},
		{PH_FRAME_OPENED, 0, 3, 20, "length"},
		{PH_FRAME_RST, 0, 1, 202, "length"},
		{0xff, 0, 1, 1, "unknown frame type"},
		{PH_FRAME_CTRL, 0, 0, 0, "length"},
		{PH_FRAME_CTRL, 0, 0, PH_FRAME_MAX + 1, "length"},
		{PH_FRAME_CTRL, 0, 5, 1, "session frame with a stream id"},
		{PH_FRAME_OPEN, 0, 0, 9, "without a stream id"},
		{PH_FRAME_OPEN, 0, 2, 3, "length"},
		{PH_FRAME_DATA, 0, 1, 0, "length"},
		{PH_FRAME_DATA, 0, 0, 1, "without a stream id"},
		{PH_FRAME_DATA, PH_FRAME_F_FIN, 1, 1, "flags"},
		{PH_FRAME_WINDOW, 0, 1, 3, "length"},
		{PH_FRAME_WINDOW, 0, 1, 5, "length"},
		{PH_FRAME_FIN, 0, 1, 1, "length"},
		{PH_FRAME_FIN, 0, 0, 0, "without a stream id"},
		{PH_FRAME_RST, 0, 1, 0, "length"},
		{PH_FRAME_DGRAM, 0, 0, 6, "length"},
		{PH_FRAME_PING, 0, 0, 7, "length"},
		{PH_FRAME_PONG, 0, 1, 8, "stream id"},
		{PH_FRAME_GOAWAY, 0, 0, 202, "length"},
		{PH_FRAME_OPEN, 0x02, 2, 9, "flags"},
	};
	uint8_t h[PH_FRAME_HDR];
	struct ph_frame f;
	const char *why;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		/* the header alone decides: no payload is needed to refuse */
		ph_frame_header(bad[i].type, bad[i].flags, bad[i].id, bad[i].len, h);
		assert_int_equal(parse(h, sizeof(h), &f, &why), -EPROTO);
		assert_non_null(why);
		if (strstr(why, bad[i].why) == NULL)
			fail_msg("frame %zu: '%s' does not say '%s'", i, why, bad[i].why);
	}
	/* an unknown type is refused from its first byte */
	h[0] = 0x42;
	assert_int_equal(parse(h, 1, &f, &why), -EPROTO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_header_layout),
		cmocka_unit_test(test_good_frames),
		cmocka_unit_test(test_bad_frames),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
