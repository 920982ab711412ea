/*
 * Fuzzes the relay's message parsers (tunnel/msg.h): ph_ctrl_parse, which reads every CTRL
 * frame's payload, and ph_msg_addr_get, which reads the addresses in OPEN and DGRAM.
 *
 * ph_ctrl_parse gets exactly the input: the result is 0, or -EPROTO with a reason, the
 * same twice; a parsed message is of a known type, its name empty or a valid service name,
 * its text terminated and printable, a REGISTER of tcp or udp with PROXY version 0-2;
 * ph_ctrl_build of it gives back the input (a REFUSED's or CHECKED's text with each
 * unprintable byte as '?'; a REGISTER's options in the order it writes them, less the
 * optional ones it skipped: the same length), fits PH_CTRL_MAX, and parses back to the same
 * fields; a REGISTER's address rules are at most PH_CTRL_ACL_MAX, each an IPv4 or IPv6
 * network with a prefix that fits; a CHECK is of tcp or udp, a port not 0, and an address
 * none, IPv4 or IPv6 (never IPv4-mapped); a CHECKED has a known result and such an address.
 *
 * ph_msg_addr_get reads addresses one after another from the input, as OPEN carries two:
 * each result is 1, 7 or 19 bytes within the input (by the family byte 0, 4, 6) or
 * -EPROTO; the address has the family, port and bytes written; ph_msg_addr_put writes it
 * back as the same bytes (an IPv4-mapped IPv6 address as IPv4) and that reads back equal.
 *
 * ph_open_req_parse reads the head of a client's OPEN: -EPROTO with a reason, or the bytes
 * it took (4 and the target) with a printable target of that length, which
 * ph_open_req_put writes back as the same bytes.
 */
#include "tunnel/msg.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_ctrl: %s failed (size %zu, r %d)\n", #cond, size,    \
			        r);                                                                \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* A copy of b[0..n) in a buffer of exactly n bytes (ASan sees overreads); the caller frees. */
static uint8_t *dup_exact(const uint8_t *b, size_t n)
{
	uint8_t *c = malloc(n ? n : 1);

	if (c == NULL)
		abort();
	if (n > 0)
		memcpy(c, b, n);
	return c;
}

/* True when a and b carry the same fields (padding aside). */
static bool same(const struct ph_ctrl *a, const struct ph_ctrl *b)
{
	if (a->nacl != b->nacl || a->result != b->result ||
	    a->addr.u.sa.sa_family != b->addr.u.sa.sa_family || a->addr.len != b->addr.len ||
	    memcmp(&a->addr.u, &b->addr.u, a->addr.len) != 0)
		return false;
	for (unsigned i = 0; i < a->nacl; i++)
		if (a->acl[i].allow != b->acl[i].allow ||
		    a->acl[i].cidr.family != b->acl[i].cidr.family ||
		    a->acl[i].cidr.prefix != b->acl[i].cidr.prefix ||
		    memcmp(a->acl[i].cidr.net, b->acl[i].cidr.net, 16) != 0)
			return false;
	return a->type == b->type && a->req == b->req && a->proto == b->proto &&
	       a->port == b->port && a->proxy == b->proxy && a->service == b->service &&
	       a->code == b->code && a->max_conns == b->max_conns && a->priv == b->priv &&
	       a->okind == b->okind && strcmp(a->target, b->target) == 0 &&
	       strcmp(a->name, b->name) == 0 && strcmp(a->text, b->text) == 0;
}

static void check_ctrl(const uint8_t *data, size_t size)
{
	struct ph_ctrl c, again, back;
	uint8_t *in = dup_exact(data, size), out[PH_CTRL_MAX];
	const char *why = "unset", *why2 = "unset";
	size_t n;
	int r;

	r = ph_ctrl_parse(in, size, &c, &why);
	CHECK(r == 0 || r == -EPROTO);
	CHECK(r == 0 || (why != NULL && why[0] != '\0' && strcmp(why, "unset") != 0));
	CHECK(ph_ctrl_parse(in, size, &again, &why2) == r);
	free(in);
	if (r < 0) {
		CHECK(strcmp(why, why2) == 0);
		return;
	}
	CHECK(same(&c, &again));

	CHECK(((c.type >= PH_CTRL_REGISTER && c.type <= PH_CTRL_CHECKED) ||
	       c.type == PH_CTRL_UDP_OPEN || c.type == PH_CTRL_UDP_OPENED) &&
	      c.type == data[0]);
	CHECK(memchr(c.name, '\0', sizeof(c.name)) != NULL);
	CHECK(c.name[0] == '\0' || ph_svc_name_ok(c.name));
	CHECK(memchr(c.text, '\0', sizeof(c.text)) != NULL);
	for (const char *t = c.text; *t != '\0'; t++)
		CHECK(*t >= 0x20 && *t < 0x7f);
	if (c.type == PH_CTRL_REGISTER) {
		CHECK((c.proto == PH_SVC_TCP || c.proto == PH_SVC_UDP) && c.proxy <= 2);
		CHECK(c.nacl <= PH_CTRL_ACL_MAX);
		for (unsigned i = 0; i < c.nacl; i++) {
			const struct ph_cidr *a = &c.acl[i].cidr;

			CHECK((a->family == AF_INET && a->prefix <= 32) ||
			      (a->family == AF_INET6 && a->prefix <= 128));
		}
	}
	if (c.type == PH_CTRL_CHECK)
		CHECK((c.proto == PH_SVC_TCP || c.proto == PH_SVC_UDP) && c.port != 0);
	if (c.type == PH_CTRL_CHECKED)
		CHECK(c.result >= PH_CHECK_OPEN && c.result <= PH_CHECK_OPEN_FILTERED);
	if (c.type == PH_CTRL_CHECK || c.type == PH_CTRL_CHECKED) {
		int fam = c.addr.u.sa.sa_family;

		CHECK(fam == AF_UNSPEC || fam == AF_INET || fam == AF_INET6);
		CHECK(fam != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&c.addr.u.in6.sin6_addr));
	}

	/*
	 * Built again, it is the input (REFUSED's text made printable) - less the optional
	 * REGISTER options this version skipped, which are not written back.
	 */
	memset(out, 0xa5, sizeof(out));
	n = ph_ctrl_build(&c, out);
	CHECK(n <= PH_CTRL_MAX && (c.skipped != 0 ? n < size : n == size));
	for (size_t i = 0; i < n && c.skipped == 0 && c.type != PH_CTRL_REGISTER; i++) {
		/* CHECKED: its text after the address (1, 7 or 19 bytes) and the length byte */
		size_t at = c.type == PH_CTRL_REFUSED   ? 7
		            : c.type == PH_CTRL_CHECKED ? 7 + (size_t)(data[6] == 4   ? 7
		                                                       : data[6] == 6 ? 19
		                                                                      : 1)
		                                        : n;
		bool text = i >= at;

		CHECK(out[i] == data[i] ||
		      (text && out[i] == '?' && (data[i] < 0x20 || data[i] >= 0x7f)));
	}
	in = dup_exact(out, n);
	r = ph_ctrl_parse(in, n, &back, &why);
	free(in);
	CHECK(r == 0 && same(&c, &back));
}

static void check_open(const uint8_t *data, size_t size)
{
	uint8_t *in = dup_exact(data, size), out[PH_OPEN_HOST_MAX + 4];
	struct ph_open_req o;
	const char *why = NULL;
	int r = ph_open_req_parse(in, size, &o, &why);

	free(in);
	CHECK(r == -EPROTO || (r >= 5 && (size_t)r <= size));
	if (r < 0) {
		CHECK(why != NULL);
		return;
	}
	CHECK(strlen(o.target) == (size_t)r - 4);
	CHECK(o.kind == PH_OPEN_SERVICE || (o.kind == PH_OPEN_HOST && o.port != 0));
	CHECK(ph_open_req_put(&o, out) == (size_t)r && memcmp(out, data, (size_t)r) == 0);
}

static bool addr_equal(const struct ph_addr *a, const struct ph_addr *b)
{
	if (a->u.sa.sa_family != b->u.sa.sa_family || a->len != b->len)
		return false;
	switch (a->u.sa.sa_family) {
	case AF_INET:
		return a->u.in.sin_port == b->u.in.sin_port &&
		       a->u.in.sin_addr.s_addr == b->u.in.sin_addr.s_addr;
	case AF_INET6:
		return a->u.in6.sin6_port == b->u.in6.sin6_port &&
		       memcmp(&a->u.in6.sin6_addr, &b->u.in6.sin6_addr, 16) == 0;
	default:
		return true;
	}
}

static void check_addrs(const uint8_t *data, size_t size)
{
	uint8_t *in = dup_exact(data, size);
	size_t off = 0;
	int r = 0;

	while (off < size) {
		const uint8_t *p = in + off;
		uint8_t out[PH_MSG_ADDR_MAX];
		struct ph_addr a, back;
		size_t n;

		r = ph_msg_addr_get(p, size - off, &a);
		CHECK(r == -EPROTO || r == 1 || r == 7 || r == 19);
		if (r < 0) {
			CHECK(p[0] != 0 && (p[0] != 4 || size - off < 7) &&
			      (p[0] != 6 || size - off < 19));
			break;
		}
		CHECK((size_t)r <= size - off);
		switch (p[0]) {
		case 0:
			CHECK(r == 1 && a.u.sa.sa_family == AF_UNSPEC);
			break;
		case 4:
			CHECK(r == 7 && a.u.sa.sa_family == AF_INET && a.len == sizeof(a.u.in));
			CHECK(memcmp(&a.u.in.sin_port, p + 1, 2) == 0);
			CHECK(memcmp(&a.u.in.sin_addr, p + 3, 4) == 0);
			break;
		case 6:
			CHECK(r == 19 && a.u.sa.sa_family == AF_INET6 && a.len == sizeof(a.u.in6));
			CHECK(memcmp(&a.u.in6.sin6_port, p + 1, 2) == 0);
			CHECK(memcmp(&a.u.in6.sin6_addr, p + 3, 16) == 0);
			break;
		default:
			CHECK(!"a family other than 0, 4 or 6 was read");
		}

		/* written back: the same bytes, or the IPv4 form of a mapped address */
		n = ph_msg_addr_put(out, &a);
		if (p[0] == 6 && IN6_IS_ADDR_V4MAPPED(&a.u.in6.sin6_addr)) {
			CHECK(n == 7 && out[0] == 4 && memcmp(out + 1, p + 1, 2) == 0 &&
			      memcmp(out + 3, p + 3 + 12, 4) == 0);
		} else {
			CHECK(n == (size_t)r && memcmp(out, p, n) == 0);
			CHECK(ph_msg_addr_get(out, n, &back) == r && addr_equal(&a, &back));
		}
		off += (size_t)r;
	}
	free(in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_ctrl(data, size);
	check_addrs(data, size);
	check_open(data, size);
	return 0;
}
