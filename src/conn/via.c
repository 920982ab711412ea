#include "conn/via.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/util.h"

#define VIA_KIND_TCP  1 /* a request's kind: a TCP connection */
#define VIA_KIND_UDP  2 /* datagrams */
#define VIA_KIND_HAND 3 /* TCP, the worker's client socket handed over once connected */

struct ph_via {
	struct ph_via *next;
	int tx, rx; /* the channel: workers send on tx, the client reads rx */
	char key[PH_VIA_KEY_MAX];
};

static struct ph_via *via_table;
static pthread_mutex_t via_lock = PTHREAD_MUTEX_INITIALIZER;

/* Sends p[0..n) with fd attached (SCM_RIGHTS), not blocking. Returns 0 or -errno. */
static int send_fd(int sock, const void *p, size_t n, int fd)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} cm;
	struct iovec iov = {.iov_base = (void *)(uintptr_t)p, .iov_len = n};
	struct msghdr mh;
	struct cmsghdr *c;

	memset(&mh, 0, sizeof(mh));
	memset(&cm, 0, sizeof(cm));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cm.buf;
	mh.msg_controllen = sizeof(cm.buf);
	c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	while (sendmsg(sock, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
		if (errno != EINTR)
			return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	}
	return 0;
}

ssize_t ph_via_recv_fd(int sock, void *p, size_t n, int *fd, bool *truncated)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(4 * sizeof(int))];
	} cm;
	struct iovec iov = {.iov_base = p, .iov_len = n};
	struct msghdr mh;
	ssize_t r;

	*fd = -1;
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cm.buf;
	mh.msg_controllen = sizeof(cm.buf);
	do
		r = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		/* one fd is sent; any more (none of ours) are closed */
		for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
			int f;

			memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (*fd == -1)
				*fd = f;
			else
				close(f);
		}
	}
	if (truncated != NULL)
		*truncated = (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
	return r;
}

struct ph_via *ph_via_get(const char *key)
{
	struct ph_via *v;
	int sp[2];

	pthread_mutex_lock(&via_lock);
	for (v = via_table; v != NULL; v = v->next)
		if (strcmp(v->key, key) == 0)
			goto out;
	v = calloc(1, sizeof(*v));
	if (v == NULL)
		goto out;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0) {
		free(v);
		v = NULL;
		goto out;
	}
	v->tx = sp[0];
	v->rx = sp[1];
	/* the client only reads, the workers only write */
	(void)shutdown(v->tx, SHUT_RD);
	(void)shutdown(v->rx, SHUT_WR);
	snprintf(v->key, sizeof(v->key), "%s", key);
	v->next = via_table;
	via_table = v;
out:
	pthread_mutex_unlock(&via_lock);
	return v;
}

int ph_via_rx(const struct ph_via *v)
{
	return v->rx;
}

void ph_via_free_all(void)
{
	pthread_mutex_lock(&via_lock);
	while (via_table != NULL) {
		struct ph_via *v = via_table;

		via_table = v->next;
		close(v->tx);
		close(v->rx);
		free(v);
	}
	pthread_mutex_unlock(&via_lock);
}

static int via_dial(struct ph_via *v, const char *host, uint16_t port, uint8_t kind)
{
	bool udp = kind == VIA_KIND_UDP;
	uint8_t req[PH_VIA_REQ_MAX];
	size_t hl = strlen(host);
	int sp[2], err;

	if (hl > PH_VIA_HOST_MAX)
		return -EINVAL;
	if (socketpair(AF_UNIX, (udp ? SOCK_SEQPACKET : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC,
	               0, sp) < 0)
		return -errno;
	req[0] = kind;
	req[1] = (uint8_t)(port >> 8);
	req[2] = (uint8_t)port;
	req[3] = (uint8_t)hl;
	memcpy(req + 4, host, hl);
	err = send_fd(v->tx, req, 4 + hl, sp[1]);
	if (err < 0) {
		close(sp[0]);
		close(sp[1]);
		return err;
	}
	close(sp[1]); /* the message holds its own reference until the client takes it */
	return sp[0];
}

int ph_via_dial(struct ph_via *v, const char *host, uint16_t port)
{
	if (host[0] == '\0' || port == 0)
		return -EINVAL;
	return via_dial(v, host, port, VIA_KIND_TCP);
}

int ph_via_dial_handoff(struct ph_via *v, const char *host, uint16_t port)
{
	if (host[0] == '\0' || port == 0)
		return -EINVAL;
	return via_dial(v, host, port, VIA_KIND_HAND);
}

int ph_via_assoc(struct ph_via *v)
{
	return via_dial(v, "", 0, VIA_KIND_UDP);
}

int ph_via_hand(int stream, int client)
{
	static const uint8_t marker = 'H';

	return send_fd(stream, &marker, 1, client);
}

size_t ph_via_dgram_put(const char *host, uint16_t port, uint8_t *out)
{
	size_t hl = strlen(host);

	if (hl > PH_VIA_HOST_MAX)
		hl = PH_VIA_HOST_MAX;
	out[0] = (uint8_t)(port >> 8);
	out[1] = (uint8_t)port;
	out[2] = (uint8_t)hl;
	memcpy(out + 3, host, hl);
	return 3 + hl;
}

int ph_via_dgram_get(const uint8_t *p, size_t n, char host[PH_VIA_HOST_MAX + 1], uint16_t *port)
{
	size_t hl;

	if (n < 3)
		return -EPROTO;
	hl = p[2];
	if (hl == 0 || hl > PH_VIA_HOST_MAX || n < 3 + hl)
		return -EPROTO;
	*port = (uint16_t)(p[0] << 8 | p[1]);
	for (size_t i = 0; i < hl; i++) {
		if (p[3 + i] == 0)
			return -EPROTO;
		host[i] = (char)p[3 + i];
	}
	host[hl] = '\0';
	return *port != 0 ? (int)(3 + hl) : -EPROTO;
}

size_t ph_via_from_put(const struct ph_addr *a, uint8_t *out)
{
	if (a != NULL && a->u.sa.sa_family == AF_INET) {
		out[0] = 4;
		memcpy(out + 1, &a->u.in.sin_port, 2);
		memcpy(out + 3, &a->u.in.sin_addr, 4);
		return 7;
	}
	if (a != NULL && a->u.sa.sa_family == AF_INET6) {
		out[0] = 6;
		memcpy(out + 1, &a->u.in6.sin6_port, 2);
		memcpy(out + 3, &a->u.in6.sin6_addr, 16);
		return 19;
	}
	out[0] = 0;
	return 1;
}

int ph_via_from_get(const uint8_t *p, size_t n, struct ph_addr *a)
{
	memset(a, 0, sizeof(*a));
	if (n >= 1 && p[0] == 0)
		return 1;
	if (n >= 7 && p[0] == 4) {
		a->u.in.sin_family = AF_INET;
		memcpy(&a->u.in.sin_port, p + 1, 2);
		memcpy(&a->u.in.sin_addr, p + 3, 4);
		a->len = sizeof(a->u.in);
		return 7;
	}
	if (n >= 19 && p[0] == 6) {
		a->u.in6.sin6_family = AF_INET6;
		memcpy(&a->u.in6.sin6_port, p + 1, 2);
		memcpy(&a->u.in6.sin6_addr, p + 3, 16);
		a->len = sizeof(a->u.in6);
		return 19;
	}
	return -EPROTO;
}

int ph_via_recv(int rx, struct ph_via_req *req)
{
	uint8_t b[PH_VIA_REQ_MAX + 1];
	bool truncated;
	int fd;
	ssize_t n = ph_via_recv_fd(rx, b, sizeof(b), &fd, &truncated);

	if (n < 0)
		return (int)n;
	if (fd == -1)
		return -EPROTO;
	if (n < 4 || truncated || b[0] < VIA_KIND_TCP || b[0] > VIA_KIND_HAND ||
	    b[3] > PH_VIA_HOST_MAX || (size_t)n != 4u + b[3]) {
		close(fd);
		return -EPROTO;
	}
	req->udp = b[0] == VIA_KIND_UDP;
	req->handoff = b[0] == VIA_KIND_HAND;
	req->port = (uint16_t)(b[1] << 8 | b[2]);
	memcpy(req->host, b + 4, b[3]);
	req->host[b[3]] = '\0';
	/* a connection names its target; an association nothing (its datagrams do) */
	if (strlen(req->host) != b[3] ||
	    (req->udp ? req->port != 0 || b[3] != 0 : req->port == 0 || b[3] == 0)) {
		close(fd);
		return -EPROTO;
	}
	return fd;
}

size_t ph_via_reply_put(uint8_t status, const struct ph_addr *bound, const char *text, uint8_t *out)
{
	size_t tl = text != NULL ? strlen(text) : 0;

	memset(out, 0, PH_VIA_REPLY_HDR);
	out[0] = status;
	if (bound != NULL && bound->u.sa.sa_family == AF_INET) {
		out[1] = 4;
		memcpy(out + 2, &bound->u.in.sin_port, 2);
		memcpy(out + 4, &bound->u.in.sin_addr, 4);
	} else if (bound != NULL && bound->u.sa.sa_family == AF_INET6) {
		out[1] = 6;
		memcpy(out + 2, &bound->u.in6.sin6_port, 2);
		memcpy(out + 4, &bound->u.in6.sin6_addr, 16);
	}
	if (tl > PH_VIA_TEXT_MAX)
		tl = PH_VIA_TEXT_MAX;
	out[20] = (uint8_t)tl;
	if (tl != 0) /* text may be NULL, and memcpy from NULL is undefined even for 0 bytes */
		memcpy(out + PH_VIA_REPLY_HDR, text, tl);
	return PH_VIA_REPLY_HDR + tl;
}

int ph_via_reply_parse(const uint8_t *p, size_t n, struct ph_via_reply *r)
{
	size_t tl;

	if (n < PH_VIA_REPLY_HDR)
		return -EAGAIN;
	tl = p[20];
	if (p[0] > PH_VIA_FAILED || (p[1] != 0 && p[1] != 4 && p[1] != 6) || tl > PH_VIA_TEXT_MAX)
		return -EPROTO;
	if (n < PH_VIA_REPLY_HDR + tl)
		return -EAGAIN;
	memset(r, 0, sizeof(*r));
	r->status = p[0];
	if (p[1] == 4) {
		r->bound.u.in.sin_family = AF_INET;
		memcpy(&r->bound.u.in.sin_port, p + 2, 2);
		memcpy(&r->bound.u.in.sin_addr, p + 4, 4);
		r->bound.len = sizeof(r->bound.u.in);
	} else if (p[1] == 6) {
		r->bound.u.in6.sin6_family = AF_INET6;
		memcpy(&r->bound.u.in6.sin6_port, p + 2, 2);
		memcpy(&r->bound.u.in6.sin6_addr, p + 4, 16);
		r->bound.len = sizeof(r->bound.u.in6);
	}
	for (size_t i = 0; i < tl; i++) /* printable: it reaches logs and HTTP replies */
		r->text[i] = p[PH_VIA_REPLY_HDR + i] >= 0x20 && p[PH_VIA_REPLY_HDR + i] < 0x7f
		                     ? (char)p[PH_VIA_REPLY_HDR + i]
		                     : '?';
	r->text[tl] = '\0';
	return (int)(PH_VIA_REPLY_HDR + tl);
}

int ph_via_errno(uint8_t status)
{
	switch (status) {
	case PH_VIA_OK:
		return 0;
	case PH_VIA_REFUSED:
		return -ECONNREFUSED;
	case PH_VIA_FORBIDDEN:
		return -EACCES;
	case PH_VIA_UNREACHABLE:
		return -EHOSTUNREACH;
	case PH_VIA_NONAME:
		return -PH_ENONAME;
	case PH_VIA_TIMEOUT:
		return -ETIMEDOUT;
	case PH_VIA_DOWN:
		return -ENETUNREACH;
	default:
		return -EIO;
	}
}
