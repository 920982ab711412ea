#include "core/stun.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define ATTR_MAPPED     0x0001
#define ATTR_ERROR      0x0009
#define ATTR_UNKNOWN    0x000A
#define ATTR_XOR_MAPPED 0x0020
#define ATTR_SOFTWARE   0x8022
#define CLASS_MASK      0x0110 /* the two class bits of a message type */
#define CLASS_REQUEST   0x0000
#define CLASS_SUCCESS   0x0100
#define CLASS_ERROR     0x0110
#define SOFTWARE        "pinhole"

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

int ph_stun_parse(const uint8_t *p, size_t n, struct ph_stun_msg *m, const char **why)
{
	size_t len, off;

	memset(m, 0, sizeof(*m));
	if (n < PH_STUN_HDR || (p[0] & 0xc0) != 0) {
		*why = "not a STUN message (too short, or the first two bits set)";
		return -EPROTO;
	}
	m->type = get16(p);
	len = get16(p + 2);
	if (len % 4 != 0 || PH_STUN_HDR + len != n) {
		*why = "a STUN length that is not the datagram's, or not a multiple of 4";
		return -EPROTO;
	}
	if ((m->type & CLASS_MASK) != CLASS_REQUEST) {
		*why = "a STUN message that is no request";
		return -EPROTO;
	}
	m->classic = get32(p + 4) != PH_STUN_COOKIE;
	memcpy(m->tid, p + 4, 16); /* a classic client's id is all 16 bytes */
	for (off = PH_STUN_HDR; off < n;) {
		uint16_t at, al;

		if (n - off < 4) {
			*why = "a STUN attribute cut short";
			return -EPROTO;
		}
		at = get16(p + off);
		al = get16(p + off + 2);
		if ((size_t)al + 3 > n - off - 4 + 3 || ((size_t)al + 3) / 4 * 4 > n - off - 4) {
			*why = "a STUN attribute past the end";
			return -EPROTO;
		}
		/* 0x0000-0x7fff must be understood; a Binding request needs none of them */
		if (at < 0x8000 && at != ATTR_SOFTWARE && m->nunknown < 4)
			m->unknown[m->nunknown++] = at;
		off += 4 + ((size_t)al + 3) / 4 * 4;
	}
	return 0;
}

/* An address attribute (MAPPED-ADDRESS or, xor'ed with the cookie and tid, XOR-MAPPED). */
static size_t put_addr(uint8_t *out, uint16_t type, const struct ph_addr *a, const uint8_t *tid,
                       bool xor)
{
	struct ph_addr u = *a;
	uint8_t *v = out + 4;
	size_t len;

	ph_addr_unmap(&u);
	put16(out, type);
	v[0] = 0;
	if (u.u.sa.sa_family == AF_INET) {
		v[1] = 0x01;
		memcpy(v + 2, &u.u.in.sin_port, 2);
		memcpy(v + 4, &u.u.in.sin_addr, 4);
		len = 8;
	} else {
		v[1] = 0x02;
		memcpy(v + 2, &u.u.in6.sin6_port, 2);
		memcpy(v + 4, &u.u.in6.sin6_addr, 16);
		len = 20;
	}
	if (xor) { /* port with the cookie's top half, the address with cookie and tid */
		static const uint8_t cookie[4] = {0x21, 0x12, 0xa4, 0x42};

		v[2] ^= cookie[0];
		v[3] ^= cookie[1];
		for (size_t i = 0; i < len - 4; i++)
			v[4 + i] ^= i < 4 ? cookie[i] : tid[i - 4];
	}
	put16(out + 2, (uint16_t)len);
	return 4 + len;
}

size_t ph_stun_answer(const struct ph_stun_msg *m, const struct ph_addr *mapped, uint8_t *out)
{
	size_t n = PH_STUN_HDR;

	if (m->type != PH_STUN_BINDING ||
	    (mapped->u.sa.sa_family != AF_INET && mapped->u.sa.sa_family != AF_INET6))
		return 0;
	memcpy(out + 4, m->tid, 16);
	if (m->nunknown != 0 && !m->classic) { /* 420 Unknown Attribute, and which */
		put16(out, PH_STUN_BINDING | CLASS_ERROR);
		put16(out + n, ATTR_ERROR);
		put16(out + n + 2, 4 + 17);
		out[n + 4] = out[n + 5] = 0;
		out[n + 6] = 4;
		out[n + 7] = 20;
		memcpy(out + n + 8, "Unknown Attribute\0\0\0", 20); /* 17 bytes and padding */
		n += 4 + 24;
		put16(out + n, ATTR_UNKNOWN);
		put16(out + n + 2, (uint16_t)(2 * m->nunknown));
		for (unsigned i = 0; i < m->nunknown; i++)
			put16(out + n + 4 + 2 * i, m->unknown[i]);
		n += 4 + (2 * m->nunknown + 3) / 4 * 4;
		if (m->nunknown % 2)
			put16(out + n - 2, 0);
	} else {
		put16(out, PH_STUN_BINDING | CLASS_SUCCESS);
		if (!m->classic)
			n += put_addr(out + n, ATTR_XOR_MAPPED, mapped, m->tid + 4, true);
		n += put_addr(out + n, ATTR_MAPPED, mapped, NULL, false);
		put16(out + n, ATTR_SOFTWARE);
		put16(out + n + 2, sizeof(SOFTWARE) - 1);
		memset(out + n + 4, 0, 8);
		memcpy(out + n + 4, SOFTWARE, sizeof(SOFTWARE) - 1);
		n += 4 + 8;
	}
	put16(out + 2, (uint16_t)(n - PH_STUN_HDR));
	return n;
}

int ph_stun_mapped(const uint8_t *p, size_t n, const uint8_t tid[12], struct ph_addr *out)
{
	bool found = false;

	memset(out, 0, sizeof(*out));
	if (n < PH_STUN_HDR || get16(p) != (PH_STUN_BINDING | CLASS_SUCCESS) ||
	    PH_STUN_HDR + (size_t)get16(p + 2) != n || get32(p + 4) != PH_STUN_COOKIE ||
	    memcmp(p + 8, tid, 12) != 0)
		return -EPROTO;
	for (size_t off = PH_STUN_HDR; off + 4 <= n;) {
		uint16_t at = get16(p + off), al = get16(p + off + 2);
		const uint8_t *v = p + off + 4;

		if ((size_t)al > n - off - 4)
			return -EPROTO;
		if ((at == ATTR_XOR_MAPPED || (at == ATTR_MAPPED && !found)) && al >= 8 &&
		    ((v[1] == 1 && al == 8) || (v[1] == 2 && al == 20))) {
			uint8_t b[18];
			bool x = at == ATTR_XOR_MAPPED;

			memcpy(b, v + 2, al - 2u);
			for (size_t i = 0; x && i < al - 2u; i++)
				b[i] ^= i < 6 ? (uint8_t[]){0x21, 0x12, 0x21, 0x12, 0xa4, 0x42}[i]
				              : tid[i - 6];
			memset(out, 0, sizeof(*out));
			if (v[1] == 1) {
				out->u.in.sin_family = AF_INET;
				memcpy(&out->u.in.sin_port, b, 2);
				memcpy(&out->u.in.sin_addr, b + 2, 4);
				out->len = sizeof(out->u.in);
			} else {
				out->u.in6.sin6_family = AF_INET6;
				memcpy(&out->u.in6.sin6_port, b, 2);
				memcpy(&out->u.in6.sin6_addr, b + 2, 16);
				out->len = sizeof(out->u.in6);
			}
			found = true;
			if (x)
				return 0;
		}
		off += 4 + ((size_t)al + 3) / 4 * 4;
	}
	return found ? 0 : -EPROTO;
}
