#include "tunnel/msg.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "core/util.h"
#include "tunnel/session.h"

bool ph_svc_name_ok(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > PH_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* Reads a CIDR option's value (family, prefix, address) into a. Returns 0 or -EPROTO. */
static int tlv_cidr(const uint8_t *v, size_t n, struct ph_ctrl_acl *a, const char **why)
{
	size_t bytes = n >= 1 && v[0] == 4 ? 4 : n >= 1 && v[0] == 6 ? 16 : 0;
	unsigned max = (unsigned)bytes * 8;

	if (bytes == 0 || n != 2 + bytes || v[1] > max) {
		*why = "a REGISTER with a malformed address rule";
		return -EPROTO;
	}
	a->cidr.family = v[0] == 4 ? AF_INET : AF_INET6;
	a->cidr.prefix = v[1];
	memcpy(a->cidr.net, v + 2, bytes);
	/* host bits must be clear: one rule has one spelling, and the builder gives it back */
	for (unsigned i = 0; i < bytes; i++) {
		unsigned keep = v[1] >= (i + 1) * 8 ? 8 : v[1] > i * 8 ? v[1] - i * 8 : 0;

		if (a->cidr.net[i] & (uint8_t) ~(0xff00u >> keep)) {
			*why = "a REGISTER with an address rule whose host bits are set";
			return -EPROTO;
		}
	}
	return 0;
}

/*
 * REGISTER's options after the name (p[0..n)): each header and value is checked against
 * what is left before it is read. Returns 0, or -EPROTO with a static reason.
 */
static int register_tail(const uint8_t *p, size_t n, struct ph_ctrl *c, const char **why)
{
	bool have_max = false;

	while (n > 0) {
		uint8_t type, len;

		if (n < 2 || (size_t)p[1] > n - 2) {
			*why = "a REGISTER with a truncated option";
			return -EPROTO;
		}
		type = p[0];
		len = p[1];
		switch (type) {
		case PH_TLV_MAX_CONNS:
			if (len != 4 || have_max) {
				*why = "a REGISTER with a malformed or second visitor limit";
				return -EPROTO;
			}
			c->max_conns = ph_get32(p + 2);
			if (c->max_conns == 0) {
				*why = "a REGISTER with a visitor limit of 0 (no limit is sent as "
				       "none)";
				return -EPROTO;
			}
			have_max = true;
			break;
		case PH_TLV_PRIVATE:
			if (len != 0 || c->priv) {
				*why = "a REGISTER with a malformed or second private option";
				return -EPROTO;
			}
			c->priv = true;
			break;
		case PH_TLV_ALLOW:
		case PH_TLV_DENY:
			if (c->nacl == PH_CTRL_ACL_MAX) {
				*why = "a REGISTER with more than 32 address rules";
				return -EPROTO;
			}
			if (tlv_cidr(p + 2, len, &c->acl[c->nacl], why) < 0)
				return -EPROTO;
			c->acl[c->nacl++].allow = type == PH_TLV_ALLOW;
			break;
		default:
			if (!(type & PH_TLV_OPTIONAL)) {
				*why = "a REGISTER with an option this relay does not know";
				return -EPROTO;
			}
			if (c->skipped < 255)
				c->skipped++;
			break;
		}
		p += 2 + (size_t)len;
		n -= 2 + (size_t)len;
	}
	return 0;
}

const char *ph_check_result_name(uint8_t result)
{
	static const char *const names[] = {"?",        "open",    "closed",
	                                    "filtered", "refused", "open|filtered"};

	return result < PH_ARRAY_SIZE(names) ? names[result] : "?";
}

/* Reads text (a u8 length and that many bytes, the last of p[0..n)), printable only. */
static int ctrl_text(const uint8_t *p, size_t n, struct ph_ctrl *c)
{
	size_t len = p[0];

	if (n != 1 + len || len > PH_CTRL_TEXT_MAX)
		return -EPROTO;
	for (size_t i = 0; i < len; i++) /* printable only: it reaches the log */
		c->text[i] = p[1 + i] >= 0x20 && p[1 + i] < 0x7f ? (char)p[1 + i] : '?';
	c->text[len] = '\0';
	return 0;
}

/*
 * A CHECK (p[0..n), n >= 1): request id, protocol, port, an address (family 0: the
 * caller's own), nothing after it. Returns 0, or -EPROTO with a static reason.
 */
static int check_parse(const uint8_t *p, size_t n, struct ph_ctrl *c, const char **why)
{
	int an;

	*why = "a CHECK of the wrong length";
	if (n < 1 + 4 + 1 + 2 + 1)
		return -EPROTO;
	c->req = ph_get32(p + 1);
	c->proto = p[5];
	c->port = ph_get16(p + 6);
	an = ph_msg_addr_get(p + 8, n - 8, &c->addr);
	if (an < 0 || (size_t)an != n - 8)
		return -EPROTO;
	if (c->proto != PH_SVC_TCP && c->proto != PH_SVC_UDP) {
		*why = "a CHECK for a protocol other than tcp or udp";
		return -EPROTO;
	}
	if (c->port == 0) {
		*why = "a CHECK of port 0";
		return -EPROTO;
	}
	if (c->addr.u.sa.sa_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&c->addr.u.in6.sin6_addr)) {
		*why = "a CHECK with an IPv4-mapped address (IPv4 is written as such)";
		return -EPROTO;
	}
	return 0;
}

/* A CHECKED: request id, result, the address probed, text. Returns 0 or -EPROTO. */
static int checked_parse(const uint8_t *p, size_t n, struct ph_ctrl *c, const char **why)
{
	int an;

	*why = "a CHECKED of the wrong length";
	if (n < 1 + 4 + 1 + 1 + 1)
		return -EPROTO;
	c->req = ph_get32(p + 1);
	c->result = p[5];
	an = ph_msg_addr_get(p + 6, n - 6, &c->addr);
	if (an < 0 || (size_t)an >= n - 6 || ctrl_text(p + 6 + an, n - 6 - (size_t)an, c) < 0)
		return -EPROTO;
	if (c->result < PH_CHECK_OPEN || c->result > PH_CHECK_OPEN_FILTERED) {
		*why = "a CHECKED with an unknown result";
		return -EPROTO;
	}
	if (c->addr.u.sa.sa_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&c->addr.u.in6.sin6_addr)) {
		*why = "a CHECKED with an IPv4-mapped address (IPv4 is written as such)";
		return -EPROTO;
	}
	return 0;
}

int ph_ctrl_parse(const uint8_t *p, size_t n, struct ph_ctrl *c, const char **why)
{
	size_t len;

	memset(c, 0, sizeof(*c));
	*why = "a truncated control message";
	if (n < 1)
		return -EPROTO;
	c->type = p[0];
	switch (c->type) {
	case PH_CTRL_REGISTER:
		if (n < 1 + 4 + 1 + 2 + 1 + 1)
			return -EPROTO;
		c->req = ph_get32(p + 1);
		c->proto = p[5];
		c->port = ph_get16(p + 6);
		c->proxy = p[8];
		len = p[9];
		if (n < 10 + len) {
			*why = "a REGISTER of the wrong length";
			return -EPROTO;
		}
		if (len > PH_NAME_MAX) {
			*why = "a service name longer than 32 bytes";
			return -EPROTO;
		}
		if (register_tail(p + 10 + len, n - 10 - len, c, why) < 0)
			return -EPROTO;
		memcpy(c->name, p + 10, len);
		c->name[len] = '\0';
		if ((len != 0 && (strlen(c->name) != len || !ph_svc_name_ok(c->name)))) {
			*why = "a service name with characters other than A-Z a-z 0-9 . _ -";
			return -EPROTO;
		}
		if (c->proto != PH_SVC_TCP && c->proto != PH_SVC_UDP) {
			*why = "a REGISTER for a protocol other than tcp or udp";
			return -EPROTO;
		}
		if (c->proxy > 2) {
			*why = "a REGISTER with an unknown PROXY protocol version";
			return -EPROTO;
		}
		return 0;
	case PH_CTRL_REGISTERED:
		if (n != 1 + 4 + 2 + 2)
			return -EPROTO;
		c->req = ph_get32(p + 1);
		c->service = ph_get16(p + 5);
		c->port = ph_get16(p + 7); /* 0: a private service */
		return 0;
	case PH_CTRL_REFUSED:
		if (n < 1 + 4 + 1 + 1)
			return -EPROTO;
		c->req = ph_get32(p + 1);
		c->code = p[5];
		len = p[6];
		if (n != 7 + len || len > PH_CTRL_TEXT_MAX) {
			*why = "a REFUSED of the wrong length";
			return -EPROTO;
		}
		for (size_t i = 0; i < len; i++) /* printable only: it reaches the log */
			c->text[i] = p[7 + i] >= 0x20 && p[7 + i] < 0x7f ? (char)p[7 + i] : '?';
		c->text[len] = '\0';
		return 0;
	case PH_CTRL_UNREGISTER:
		if (n != 1 + 2)
			return -EPROTO;
		c->service = ph_get16(p + 1);
		return 0;
	case PH_CTRL_CHECK:
		return check_parse(p, n, c, why);
	case PH_CTRL_CHECKED:
		return checked_parse(p, n, c, why);
	case PH_CTRL_UDP_OPEN: {
		struct ph_open_req o;

		/* kind, port, length and target as an OPEN's head, after the request id */
		if (n < 1 + 4 + 4 + 1 || ph_open_req_parse(p + 5, n - 5, &o, why) != (int)(n - 5)) {
			*why = "a UDP_OPEN of the wrong length or target";
			return -EPROTO;
		}
		c->req = ph_get32(p + 1);
		c->okind = o.kind;
		c->port = o.port;
		memcpy(c->target, o.target, sizeof(c->target));
		return 0;
	}
	case PH_CTRL_UDP_OPENED:
		if (n < 1 + 4 + 2 + 1 || ph_msg_addr_get(p + 7, n - 7, &c->addr) != (int)(n - 7) ||
		    (c->addr.u.sa.sa_family == AF_INET6 &&
		     IN6_IS_ADDR_V4MAPPED(&c->addr.u.in6.sin6_addr))) {
			*why = "a UDP_OPENED of the wrong length, or an IPv4-mapped address";
			return -EPROTO;
		}
		c->req = ph_get32(p + 1);
		c->service = ph_get16(p + 5);
		return 0;
	default:
		*why = "an unknown control message";
		return -EPROTO;
	}
}

/* Writes REGISTER's options (PH_CTRL_TAIL_MAX bytes at most). Returns their length. */
static size_t register_tail_put(const struct ph_ctrl *c, uint8_t *out)
{
	size_t n = 0;

	if (c->max_conns != 0) {
		out[0] = PH_TLV_MAX_CONNS;
		out[1] = 4;
		ph_put32(out + 2, c->max_conns);
		n = 6;
	}
	if (c->priv) {
		out[n] = PH_TLV_PRIVATE;
		out[n + 1] = 0;
		n += 2;
	}
	for (unsigned i = 0; i < c->nacl && i < PH_CTRL_ACL_MAX; i++) {
		const struct ph_cidr *a = &c->acl[i].cidr;
		uint8_t bytes = a->family == AF_INET ? 4 : 16;

		out[n] = c->acl[i].allow ? PH_TLV_ALLOW : PH_TLV_DENY;
		out[n + 1] = (uint8_t)(2 + bytes);
		out[n + 2] = a->family == AF_INET ? 4 : 6;
		out[n + 3] = a->prefix;
		memcpy(out + n + 4, a->net, bytes);
		n += 4 + bytes;
	}
	return n;
}

size_t ph_ctrl_build(const struct ph_ctrl *c, uint8_t *out)
{
	size_t len;

	out[0] = c->type;
	switch (c->type) {
	case PH_CTRL_REGISTER:
		ph_put32(out + 1, c->req);
		out[5] = c->proto;
		ph_put16(out + 6, c->port);
		out[8] = c->proxy;
		len = strnlen(c->name, PH_NAME_MAX);
		out[9] = (uint8_t)len;
		memcpy(out + 10, c->name, len);
		return 10 + len + register_tail_put(c, out + 10 + len);
	case PH_CTRL_REGISTERED:
		ph_put32(out + 1, c->req);
		ph_put16(out + 5, c->service);
		ph_put16(out + 7, c->port);
		return 9;
	case PH_CTRL_REFUSED:
		ph_put32(out + 1, c->req);
		out[5] = c->code;
		len = strnlen(c->text, PH_CTRL_TEXT_MAX);
		out[6] = (uint8_t)len;
		memcpy(out + 7, c->text, len);
		return 7 + len;
	case PH_CTRL_UNREGISTER:
		ph_put16(out + 1, c->service);
		return 3;
	case PH_CTRL_CHECK:
		ph_put32(out + 1, c->req);
		out[5] = c->proto;
		ph_put16(out + 6, c->port);
		return 8 + ph_msg_addr_put(out + 8, &c->addr);
	case PH_CTRL_CHECKED:
		ph_put32(out + 1, c->req);
		out[5] = c->result;
		len = 6 + ph_msg_addr_put(out + 6, &c->addr);
		out[len] = (uint8_t)strnlen(c->text, PH_CTRL_TEXT_MAX);
		memcpy(out + len + 1, c->text, out[len]);
		return len + 1 + out[len];
	case PH_CTRL_UDP_OPEN: {
		struct ph_open_req o = {.kind = c->okind, .port = c->port};

		ph_put32(out + 1, c->req);
		memcpy(o.target, c->target, sizeof(o.target));
		return 5 + ph_open_req_put(&o, out + 5);
	}
	case PH_CTRL_UDP_OPENED:
		ph_put32(out + 1, c->req);
		ph_put16(out + 5, c->service);
		return 7 + ph_msg_addr_put(out + 7, &c->addr);
	default:
		return 1;
	}
}

int ph_msg_addr_get(const uint8_t *p, size_t n, struct ph_addr *a)
{
	memset(a, 0, sizeof(*a));
	if (n < 1)
		return -EPROTO;
	switch (p[0]) {
	case 0:
		a->u.sa.sa_family = AF_UNSPEC;
		return 1;
	case 4:
		if (n < 1 + 2 + 4)
			return -EPROTO;
		a->u.in.sin_family = AF_INET;
		memcpy(&a->u.in.sin_port, p + 1, 2);
		memcpy(&a->u.in.sin_addr, p + 3, 4);
		a->len = sizeof(a->u.in);
		return 7;
	case 6:
		if (n < 1 + 2 + 16)
			return -EPROTO;
		a->u.in6.sin6_family = AF_INET6;
		memcpy(&a->u.in6.sin6_port, p + 1, 2);
		memcpy(&a->u.in6.sin6_addr, p + 3, 16);
		a->len = sizeof(a->u.in6);
		return 19;
	default:
		return -EPROTO;
	}
}

size_t ph_msg_addr_put(uint8_t *p, const struct ph_addr *a)
{
	if (a != NULL && a->u.sa.sa_family == AF_INET6 &&
	    IN6_IS_ADDR_V4MAPPED(&a->u.in6.sin6_addr)) {
		p[0] = 4;
		memcpy(p + 1, &a->u.in6.sin6_port, 2);
		memcpy(p + 3, a->u.in6.sin6_addr.s6_addr + 12, 4);
		return 7;
	}
	if (a != NULL && a->u.sa.sa_family == AF_INET) {
		p[0] = 4;
		memcpy(p + 1, &a->u.in.sin_port, 2);
		memcpy(p + 3, &a->u.in.sin_addr, 4);
		return 7;
	}
	if (a != NULL && a->u.sa.sa_family == AF_INET6) {
		p[0] = 6;
		memcpy(p + 1, &a->u.in6.sin6_port, 2);
		memcpy(p + 3, &a->u.in6.sin6_addr, 16);
		return 19;
	}
	p[0] = 0;
	return 1;
}

int ph_open_req_parse(const uint8_t *p, size_t n, struct ph_open_req *o, const char **why)
{
	size_t tl;

	memset(o, 0, sizeof(*o));
	if (n < 4 || (size_t)p[3] + 4 > n || p[3] == 0 || p[3] > PH_OPEN_HOST_MAX) {
		*why = "an OPEN with a truncated or empty target";
		return -EPROTO;
	}
	o->kind = p[0];
	o->port = ph_get16(p + 1);
	tl = p[3];
	for (size_t i = 0; i < tl; i++) {
		uint8_t ch = p[4 + i];

		/* names and literals only: letters, digits, . - _ : (IPv6) */
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == '_' ||
		      ch == ':')) {
			*why = "an OPEN whose target holds a character no name has";
			return -EPROTO;
		}
		o->target[i] = (char)ch;
	}
	o->target[tl] = '\0';
	if (o->kind == PH_OPEN_SERVICE ? o->port != 0 || !ph_svc_name_ok(o->target)
	                               : o->kind != PH_OPEN_HOST || o->port == 0) {
		*why = "an OPEN with an unknown kind, or a target that does not fit it";
		return -EPROTO;
	}
	return (int)(4 + tl);
}

size_t ph_open_req_put(const struct ph_open_req *o, uint8_t *out)
{
	size_t tl = strlen(o->target);

	if (tl > PH_OPEN_HOST_MAX)
		tl = PH_OPEN_HOST_MAX;
	out[0] = o->kind;
	ph_put16(out + 1, o->port);
	out[3] = (uint8_t)tl;
	memcpy(out + 4, o->target, tl);
	return 4 + tl;
}
