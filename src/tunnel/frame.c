#include "tunnel/frame.h"

#include <errno.h>

/* Per type: the payload's bounds, and whether it belongs to a stream (id != 0). */
struct frame_rule {
	uint16_t min, max;
	int8_t stream; /* 1: needs a stream id; 0: must be 0 */
};

static const struct frame_rule rules[] = {
	[PH_FRAME_CTRL] = {1, PH_FRAME_MAX, 0},
	[PH_FRAME_OPEN] = {2 + 1 + 1, PH_FRAME_MAX, 1}, /* service, two addresses */
	[PH_FRAME_DATA] = {1, PH_FRAME_MAX, 1},
	[PH_FRAME_WINDOW] = {4, 4, -1}, /* a stream, or 0 for the session */
	[PH_FRAME_FIN] = {0, 0, 1},
	[PH_FRAME_RST] = {1, 1 + 200, 1}, /* reason, then text for the client to print */
	[PH_FRAME_DGRAM] = {2 + 4 + 1, PH_FRAME_MAX, 0}, /* service, flow, address */
	[PH_FRAME_PING] = {8, 8, 0},
	[PH_FRAME_PONG] = {8, 8, 0},
	[PH_FRAME_GOAWAY] = {1, 1 + 200, 0},
	[PH_FRAME_OPENED] = {1, 1 + 2 + 16, 1}, /* an address (msg.h) */
};

int ph_frame_parse(const uint8_t *b, size_t n, struct ph_frame *f, const char **why)
{
	const struct frame_rule *r;
	uint16_t len;
	uint32_t id;

	*why = NULL;
	if (n >= 1 && (b[0] == 0 || b[0] >= sizeof(rules) / sizeof(rules[0]))) {
		*why = "an unknown frame type";
		return -EPROTO;
	}
	if (n < PH_FRAME_HDR)
		return -EAGAIN;
	r = &rules[b[0]];
	id = (uint32_t)b[2] << 24 | (uint32_t)b[3] << 16 | (uint32_t)b[4] << 8 | b[5];
	len = (uint16_t)(b[6] << 8 | b[7]);
	if (len < r->min || len > r->max) {
		*why = "a frame length out of its type's bounds";
		return -EPROTO;
	}
	if ((r->stream == 1 && id == 0) || (r->stream == 0 && id != 0)) {
		*why = r->stream == 1 ? "a stream frame without a stream id"
		                      : "a session frame with a stream id";
		return -EPROTO;
	}
	if (b[1] != 0 && !(b[0] == PH_FRAME_OPEN && b[1] == PH_FRAME_F_FIN)) {
		*why = "unknown frame flags";
		return -EPROTO;
	}
	if (n < (size_t)PH_FRAME_HDR + len)
		return -EAGAIN;
	f->type = b[0];
	f->flags = b[1];
	f->stream = id;
	f->len = len;
	f->payload = b + PH_FRAME_HDR;
	return PH_FRAME_HDR + len;
}

void ph_frame_header(uint8_t type, uint8_t flags, uint32_t stream, uint16_t len,
                     uint8_t out[PH_FRAME_HDR])
{
	out[0] = type;
	out[1] = flags;
	out[2] = (uint8_t)(stream >> 24);
	out[3] = (uint8_t)(stream >> 16);
	out[4] = (uint8_t)(stream >> 8);
	out[5] = (uint8_t)stream;
	out[6] = (uint8_t)(len >> 8);
	out[7] = (uint8_t)len;
}
