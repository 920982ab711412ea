#include "conn/proxyproto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "core/util.h"

static const uint8_t v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                   0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
static const char v1_sig[] = "PROXY ";

/* A port of a v1 line: 1-5 digits, at most 65535. */
static int v1_port(const char *s, uint16_t *port)
{
	unsigned long v = 0;
	size_t n = strlen(s);

	if (n == 0 || n > 5 || strspn(s, "0123456789") != n || (n > 1 && s[0] == '0'))
		return -EPROTO;
	for (size_t i = 0; i < n; i++)
		v = v * 10 + (unsigned long)(s[i] - '0');
	if (v > 65535)
		return -EPROTO;
	*port = (uint16_t)v;
	return 0;
}

static int v1_addr(int family, const char *ip, const char *port, struct ph_addr *a)
{
	uint16_t p;

	memset(a, 0, sizeof(*a));
	if (v1_port(port, &p) < 0)
		return -EPROTO;
	if (family == AF_INET) {
		if (inet_pton(AF_INET, ip, &a->u.in.sin_addr) != 1)
			return -EPROTO;
		a->u.in.sin_family = AF_INET;
		a->u.in.sin_port = htons(p);
		a->len = sizeof(a->u.in);
	} else {
		if (inet_pton(AF_INET6, ip, &a->u.in6.sin6_addr) != 1)
			return -EPROTO;
		a->u.in6.sin6_family = AF_INET6;
		a->u.in6.sin6_port = htons(p);
		a->len = sizeof(a->u.in6);
	}
	return 0;
}

static int parse_v1(const uint8_t *buf, size_t len, struct ph_proxy_info *out, const char **why)
{
	char line[PH_PROXY_V1_MAX + 1], *w[7], *save = NULL;
	const uint8_t *crlf = NULL;
	size_t n, max = len < PH_PROXY_V1_MAX ? len : PH_PROXY_V1_MAX;
	int nw = 0, family;

	for (size_t i = 0; i + 1 < max; i++) {
		if (buf[i] == '\r' && buf[i + 1] == '\n') {
			crlf = buf + i;
			break;
		}
	}
	if (crlf == NULL) {
		if (len >= PH_PROXY_V1_MAX) {
			*why = "a v1 header without CRLF in 107 bytes";
			return -EPROTO;
		}
		if (memchr(buf, '\n', len) != NULL || memchr(buf, '\0', len) != NULL) {
			*why = "a v1 header with a bare LF or a NUL";
			return -EPROTO;
		}
		return -EAGAIN;
	}
	n = (size_t)(crlf - buf);
	memcpy(line, buf, n);
	line[n] = '\0';
	if (memchr(line, '\0', n) != NULL) {
		*why = "a v1 header with a NUL";
		return -EPROTO;
	}
	/* single spaces between words: strtok would let doubled ones pass */
	if (strstr(line, "  ") != NULL || line[n - 1] == ' ') {
		*why = "a v1 header with words not one space apart";
		return -EPROTO;
	}
	for (char *t = strtok_r(line, " ", &save); t != NULL && nw < 7;
	     t = strtok_r(NULL, " ", &save))
		w[nw++] = t;
	memset(out, 0, sizeof(*out));
	if (nw >= 2 && strcmp(w[1], "UNKNOWN") == 0) { /* the rest says nothing we use */
		out->local = true;
		return (int)n + 2;
	}
	if (nw != 6 || (strcmp(w[1], "TCP4") != 0 && strcmp(w[1], "TCP6") != 0)) {
		*why = "a v1 header that is not PROXY TCP4|TCP6 SRC DST SPORT DPORT";
		return -EPROTO;
	}
	family = w[1][3] == '4' ? AF_INET : AF_INET6;
	if (v1_addr(family, w[2], w[4], &out->src) < 0 ||
	    v1_addr(family, w[3], w[5], &out->dst) < 0) {
		*why = "a v1 header with a bad address or port";
		return -EPROTO;
	}
	return (int)n + 2;
}

static int parse_v2(const uint8_t *buf, size_t len, struct ph_proxy_info *out, const char **why)
{
	size_t body;
	uint8_t cmd, fam;

	if (len < PH_PROXY_V2_HEAD)
		return -EAGAIN;
	if ((buf[12] & 0xf0) != 0x20 || (buf[12] & 0x0f) > 1) {
		*why = "a v2 header of another version or command";
		return -EPROTO;
	}
	cmd = buf[12] & 0x0f;
	fam = buf[13];
	body = (size_t)buf[14] << 8 | buf[15];
	if (PH_PROXY_V2_HEAD + body > PH_PROXY_V2_MAX) {
		*why = "a v2 header longer than pinhole takes (564 bytes)";
		return -EPROTO;
	}
	if (len < PH_PROXY_V2_HEAD + body)
		return -EAGAIN;
	memset(out, 0, sizeof(*out));
	if (cmd == 0 || (fam >> 4) == 0 || (fam >> 4) == 3) { /* LOCAL, UNSPEC, UNIX */
		out->local = true;
		return (int)(PH_PROXY_V2_HEAD + body);
	}
	if ((fam >> 4) > 3 || (fam & 0x0f) == 0 || (fam & 0x0f) > 2) {
		*why = "a v2 header with an unknown address family";
		return -EPROTO;
	}
	if ((fam >> 4) == 1) {
		const uint8_t *p = buf + PH_PROXY_V2_HEAD;

		if (body < 12) {
			*why = "a v2 header too short for IPv4 addresses";
			return -EPROTO;
		}
		out->src.u.in.sin_family = out->dst.u.in.sin_family = AF_INET;
		memcpy(&out->src.u.in.sin_addr, p, 4);
		memcpy(&out->dst.u.in.sin_addr, p + 4, 4);
		memcpy(&out->src.u.in.sin_port, p + 8, 2);
		memcpy(&out->dst.u.in.sin_port, p + 10, 2);
		out->src.len = out->dst.len = sizeof(struct sockaddr_in);
	} else {
		const uint8_t *p = buf + PH_PROXY_V2_HEAD;

		if (body < 36) {
			*why = "a v2 header too short for IPv6 addresses";
			return -EPROTO;
		}
		out->src.u.in6.sin6_family = out->dst.u.in6.sin6_family = AF_INET6;
		memcpy(&out->src.u.in6.sin6_addr, p, 16);
		memcpy(&out->dst.u.in6.sin6_addr, p + 16, 16);
		memcpy(&out->src.u.in6.sin6_port, p + 32, 2);
		memcpy(&out->dst.u.in6.sin6_port, p + 34, 2);
		out->src.len = out->dst.len = sizeof(struct sockaddr_in6);
	}
	return (int)(PH_PROXY_V2_HEAD + body); /* TLVs, if any, are skipped */
}

int ph_proxy_parse(const uint8_t *buf, size_t len, struct ph_proxy_info *out, const char **why)
{
	size_t n;

	*why = NULL;
	n = len < sizeof(v2_sig) ? len : sizeof(v2_sig);
	if (n > 0 && memcmp(buf, v2_sig, n) == 0)
		return n < sizeof(v2_sig) ? -EAGAIN : parse_v2(buf, len, out, why);
	n = len < sizeof(v1_sig) - 1 ? len : sizeof(v1_sig) - 1;
	if (n > 0 && memcmp(buf, v1_sig, n) == 0)
		return n < sizeof(v1_sig) - 1 ? -EAGAIN : parse_v1(buf, len, out, why);
	if (len == 0)
		return -EAGAIN;
	*why = "no PROXY header (v1 or v2) where one must be";
	return -EPROTO;
}

size_t ph_proxy_build(int version, const struct ph_addr *src, const struct ph_addr *dst,
                      uint8_t *buf)
{
	struct ph_addr s = *src, d = *dst;
	bool same;
	char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
	int n;

	ph_addr_unmap(&s);
	ph_addr_unmap(&d);
	same = s.u.sa.sa_family == d.u.sa.sa_family &&
	       (s.u.sa.sa_family == AF_INET || s.u.sa.sa_family == AF_INET6);
	if (version == 1) {
		if (!same) {
			memcpy(buf, "PROXY UNKNOWN\r\n", 15);
			return 15;
		}
		if (s.u.sa.sa_family == AF_INET) {
			inet_ntop(AF_INET, &s.u.in.sin_addr, a, sizeof(a));
			inet_ntop(AF_INET, &d.u.in.sin_addr, b, sizeof(b));
			n = snprintf((char *)buf, PH_PROXY_MAX, "PROXY TCP4 %s %s %u %u\r\n", a, b,
			             ntohs(s.u.in.sin_port), ntohs(d.u.in.sin_port));
		} else {
			inet_ntop(AF_INET6, &s.u.in6.sin6_addr, a, sizeof(a));
			inet_ntop(AF_INET6, &d.u.in6.sin6_addr, b, sizeof(b));
			n = snprintf((char *)buf, PH_PROXY_MAX, "PROXY TCP6 %s %s %u %u\r\n", a, b,
			             ntohs(s.u.in6.sin6_port), ntohs(d.u.in6.sin6_port));
		}
		return n > 0 ? (size_t)n : 0;
	}
	memcpy(buf, v2_sig, sizeof(v2_sig));
	if (!same) {
		buf[12] = 0x20; /* LOCAL */
		buf[13] = 0x00;
		buf[14] = buf[15] = 0;
		return PH_PROXY_V2_HEAD;
	}
	buf[12] = 0x21; /* version 2, PROXY */
	if (s.u.sa.sa_family == AF_INET) {
		buf[13] = 0x11; /* INET, STREAM */
		buf[14] = 0;
		buf[15] = 12;
		memcpy(buf + 16, &s.u.in.sin_addr, 4);
		memcpy(buf + 20, &d.u.in.sin_addr, 4);
		memcpy(buf + 24, &s.u.in.sin_port, 2);
		memcpy(buf + 26, &d.u.in.sin_port, 2);
		return PH_PROXY_V2_HEAD + 12;
	}
	buf[13] = 0x21; /* INET6, STREAM */
	buf[14] = 0;
	buf[15] = 36;
	memcpy(buf + 16, &s.u.in6.sin6_addr, 16);
	memcpy(buf + 32, &d.u.in6.sin6_addr, 16);
	memcpy(buf + 48, &s.u.in6.sin6_port, 2);
	memcpy(buf + 50, &d.u.in6.sin6_port, 2);
	return PH_PROXY_V2_HEAD + 36;
}
