/*
 * Fuzzes the socks --via channel's parsers (conn/via.h): ph_via_reply_parse, which reads the
 * reply record a worker finds first on its stream, on exactly the input; and ph_via_recv,
 * which reads one request from the channel, on the input sent as one datagram of a
 * SOCK_SEQPACKET pair (with a stream socket attached as the fd unless byte 0 has its top bit).
 *
 * A reply: its length within the input, -EAGAIN (and then every longer prefix of the
 * record also asks for more or parses), or -EPROTO; a parsed one has a known status, an
 * address of the family written (or none), a terminated printable text of the length
 * written, and ph_via_reply_put of it gives back the input's bytes (unprintable text as '?').
 * A request: an fd only for a well-formed request that carried one (any other fd closed:
 * none leaks), a host of the length written; a connection's names a host and a port, an
 * association's neither. An association's datagram headers (ph_via_dgram_get,
 * ph_via_from_get) parse within the input and are written back as the same bytes.
 */
#include "conn/via.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_via: %s failed (size %zu)\n", #cond, size);          \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static void check_reply(const uint8_t *data, size_t size)
{
	uint8_t *in = malloc(size ? size : 1), out[PH_VIA_REPLY_HDR + PH_VIA_TEXT_MAX];
	struct ph_via_reply r;
	int n;

	if (in == NULL)
		abort();
	if (size > 0)
		memcpy(in, data, size);
	n = ph_via_reply_parse(in, size, &r);
	free(in);
	CHECK(n == -EAGAIN || n == -EPROTO || (n >= PH_VIA_REPLY_HDR && (size_t)n <= size));
	if (n < 0)
		return;
	CHECK(r.status <= PH_VIA_FAILED);
	CHECK(strlen(r.text) == (size_t)n - PH_VIA_REPLY_HDR);
	for (const char *t = r.text; *t != '\0'; t++)
		CHECK(*t >= 0x20 && *t < 0x7f);
	CHECK(ph_via_reply_put(r.status, &r.bound, r.text, out) == (size_t)n);
	for (int i = 0; i < n; i++) {
		bool text = i >= PH_VIA_REPLY_HDR;

		/* the address bytes of "none" are written as zeros: the parser ignored them */
		if (i >= 2 && i < 20 && data[1] == 0)
			continue;
		if (i >= 8 && i < 20 && data[1] == 4)
			continue;
		CHECK(out[i] == data[i] ||
		      (text && out[i] == '?' && (data[i] < 0x20 || data[i] >= 0x7f)));
	}
	CHECK(ph_via_errno(r.status) == 0 ? r.status == PH_VIA_OK : r.status != PH_VIA_OK);
}

static void check_request(const uint8_t *data, size_t size)
{
	int ch[2], sp[2] = {-1, -1}, fd;
	struct ph_via_req q;
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} cm;
	uint8_t buf[4096];
	struct iovec iov = {.iov_base = buf, .iov_len = size};
	struct msghdr mh;

	if (size == 0 || size > sizeof(buf))
		return;
	memcpy(buf, data, size);
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, ch) < 0)
		return;
	memset(&mh, 0, sizeof(mh));
	memset(&cm, 0, sizeof(cm));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	if (!(data[0] & 0x80)) {
		struct cmsghdr *c;

		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0) {
			close(ch[0]);
			close(ch[1]);
			return;
		}
		mh.msg_control = cm.buf;
		mh.msg_controllen = sizeof(cm.buf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &sp[1], sizeof(int));
	}
	if (sendmsg(ch[0], &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		goto out;
	fd = ph_via_recv(ch[1], &q);
	CHECK(fd != -EAGAIN);
	if (fd >= 0) {
		CHECK(!(data[0] & 0x80)); /* an fd only when one was sent */
		CHECK(strlen(q.host) == data[3] && (size_t)data[3] + 4 == size);
		CHECK(q.udp ? q.port == 0 && data[3] == 0 : q.port != 0 && data[3] != 0);
		close(fd);
	}
	CHECK(ph_via_recv(ch[1], &q) == -EAGAIN); /* one datagram, one request */
out:
	if (sp[0] != -1) {
		close(sp[0]);
		close(sp[1]);
	}
	close(ch[0]);
	close(ch[1]);
}

/* An association's datagram headers: the destination's, the answer's source. */
static void check_dgram(const uint8_t *data, size_t size)
{
	uint8_t *in = malloc(size ? size : 1), out[PH_VIA_DGRAM_HDR_MAX];
	char host[PH_VIA_HOST_MAX + 1];
	struct ph_addr a;
	uint16_t port;
	int n, m;

	if (in == NULL)
		abort();
	if (size > 0)
		memcpy(in, data, size);
	n = ph_via_dgram_get(in, size, host, &port);
	m = ph_via_from_get(in, size, &a);
	free(in);
	CHECK(n == -EPROTO || (n > 3 && (size_t)n <= size));
	if (n > 0) {
		CHECK(port != 0 && strlen(host) == (size_t)n - 3);
		CHECK(ph_via_dgram_put(host, port, out) == (size_t)n && memcmp(out, data, n) == 0);
	}
	CHECK(m == -EPROTO || m == 1 || m == 7 || m == 19);
	if (m > 0) {
		CHECK((size_t)m <= size);
		CHECK(ph_via_from_put(&a, out) == (size_t)m && memcmp(out, data, m) == 0);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_dgram(data, size);
	check_reply(data, size);
	check_request(data, size);
	return 0;
}
