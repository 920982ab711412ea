/*
 * The relay's frames (docs/PROTOCOL.md): an 8-byte header - type, flags, stream id (32),
 * length (16) - and a payload of at most PH_FRAME_MAX bytes. The parser checks every
 * length against its type's bounds before anything reads the payload.
 */
#ifndef PH_TUNNEL_FRAME_H
#define PH_TUNNEL_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define PH_FRAME_HDR 8
#define PH_FRAME_MAX 16384 /* payload bytes */

enum ph_frame_type {
	PH_FRAME_CTRL = 0x01,
	PH_FRAME_OPEN = 0x02,
	PH_FRAME_DATA = 0x03,
	PH_FRAME_WINDOW = 0x04,
	PH_FRAME_FIN = 0x05,
	PH_FRAME_RST = 0x06,
	PH_FRAME_DGRAM = 0x07,
	PH_FRAME_PING = 0x08,
	PH_FRAME_PONG = 0x09,
	PH_FRAME_GOAWAY = 0x0a,
	PH_FRAME_OPENED = 0x0b, /* the relay connected a client-opened stream: its address */
};

#define PH_FRAME_F_FIN 0x01 /* OPEN: the visitor's bytes are all there are */

struct ph_frame {
	uint8_t type;
	uint8_t flags;
	uint32_t stream;
	uint16_t len;
	const uint8_t *payload; /* into the caller's buffer */
};

/*
 * Parses the frame at b[0..n): returns its whole length (header and payload) with *f
 * set, -EAGAIN when more bytes are needed, or -EPROTO with a static reason (unknown
 * type, a length out of the type's bounds, a stream id where none belongs or missing).
 */
int ph_frame_parse(const uint8_t *b, size_t n, struct ph_frame *f, const char **why);

/* Writes a header for a payload of len bytes into out. */
void ph_frame_header(uint8_t type, uint8_t flags, uint32_t stream, uint16_t len,
                     uint8_t out[PH_FRAME_HDR]);

#endif /* PH_TUNNEL_FRAME_H */
