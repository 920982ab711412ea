#include "core/dgram.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

/* room for one pktinfo of either family and the socket's drop count (SO_RXQ_OVFL) */
union dgram_ctl {
	char buf[CMSG_SPACE(sizeof(struct in6_pktinfo)) + CMSG_SPACE(sizeof(uint32_t))];
	struct cmsghdr align;
};

union dgram_name {
	struct sockaddr sa;
	struct sockaddr_in in;
	struct sockaddr_in6 in6;
};

struct ph_dgram_batch {
	struct mmsghdr msg[PH_DGRAM_BATCH];
	struct iovec iov[PH_DGRAM_BATCH];
	union dgram_name name[PH_DGRAM_BATCH];
	union dgram_ctl ctl[PH_DGRAM_BATCH];
	struct ph_dgram d[PH_DGRAM_BATCH];
	uint8_t *slots; /* owned: PH_DGRAM_BATCH * PH_DGRAM_SLOT bytes, mmap'd */
};

int ph_dgram_batch_new(struct ph_dgram_batch **out)
{
	struct ph_dgram_batch *b;
	void *m;

	*out = NULL;
	b = calloc(1, sizeof(*b));
	if (b == NULL)
		return -ENOMEM;
	m = mmap(NULL, (size_t)PH_DGRAM_BATCH * PH_DGRAM_SLOT, PROT_READ | PROT_WRITE,
	         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED) {
		free(b);
		return -ENOMEM;
	}
	b->slots = m;
	*out = b;
	return 0;
}

void ph_dgram_batch_free(struct ph_dgram_batch *b)
{
	if (b == NULL)
		return;
	munmap(b->slots, (size_t)PH_DGRAM_BATCH * PH_DGRAM_SLOT);
	free(b);
}

struct ph_dgram *ph_dgram_batch_items(struct ph_dgram_batch *b)
{
	return b->d;
}

/* Canonical form: only family, port, address (and scope) set, the rest zero. */
static void dgram_addr(struct ph_addr *a, const union dgram_name *n, socklen_t len)
{
	memset(a, 0, sizeof(*a));
	if (n->sa.sa_family == AF_INET && len >= sizeof(n->in)) {
		a->u.in.sin_family = AF_INET;
		a->u.in.sin_port = n->in.sin_port;
		a->u.in.sin_addr = n->in.sin_addr;
		a->len = sizeof(a->u.in);
	} else if (n->sa.sa_family == AF_INET6 && len >= sizeof(n->in6)) {
		a->u.in6.sin6_family = AF_INET6;
		a->u.in6.sin6_port = n->in6.sin6_port;
		a->u.in6.sin6_addr = n->in6.sin6_addr;
		a->u.in6.sin6_scope_id = n->in6.sin6_scope_id;
		a->len = sizeof(a->u.in6);
	}
}

/* Reads the local address (pktinfo) and the socket's drop count from the control data. */
static void dgram_ctl(struct ph_dgram *d, struct msghdr *mh)
{
	struct ph_addr *a = &d->local;

	memset(a, 0, sizeof(*a));
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c != NULL; c = CMSG_NXTHDR(mh, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL &&
		    c->cmsg_len >= CMSG_LEN(sizeof(uint32_t))) {
			memcpy(&d->sk_drops, CMSG_DATA(c), sizeof(d->sk_drops));
			continue;
		}
		if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO &&
		    c->cmsg_len >= CMSG_LEN(sizeof(struct in_pktinfo))) {
			struct in_pktinfo pi;

			memcpy(&pi, CMSG_DATA(c), sizeof(pi));
			a->u.in.sin_family = AF_INET;
			a->u.in.sin_addr = pi.ipi_spec_dst; /* ours, also for a broadcast */
			a->len = sizeof(a->u.in);
			continue;
		}
		if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO &&
		    c->cmsg_len >= CMSG_LEN(sizeof(struct in6_pktinfo))) {
			struct in6_pktinfo pi;

			memcpy(&pi, CMSG_DATA(c), sizeof(pi));
			a->u.in6.sin6_family = AF_INET6;
			a->u.in6.sin6_addr = pi.ipi6_addr;
			a->len = sizeof(a->u.in6);
			continue;
		}
	}
}

int ph_dgram_recv(struct ph_dgram_batch *b, unsigned first, int fd, unsigned max, bool with_addrs)
{
	int n;

	if (first >= PH_DGRAM_BATCH)
		return -ENOBUFS;
	if (max > PH_DGRAM_BATCH - first)
		max = PH_DGRAM_BATCH - first;
	for (unsigned i = first; i < first + max; i++) {
		struct msghdr *mh = &b->msg[i].msg_hdr;

		b->iov[i].iov_base = b->slots + (size_t)i * PH_DGRAM_SLOT;
		b->iov[i].iov_len = PH_DGRAM_SLOT;
		mh->msg_iov = &b->iov[i];
		mh->msg_iovlen = 1;
		mh->msg_name = with_addrs ? &b->name[i] : NULL;
		mh->msg_namelen = with_addrs ? sizeof(b->name[i]) : 0;
		mh->msg_control = b->ctl[i].buf;
		mh->msg_controllen = sizeof(b->ctl[i].buf);
		mh->msg_flags = 0;
	}
	do
		n = recvmmsg(fd, b->msg + first, max, MSG_DONTWAIT, NULL);
	while (n == -1 && errno == EINTR);
	if (n == -1)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	if (n == 0)
		return -EAGAIN;
	for (unsigned i = first; i < first + (unsigned)n; i++) {
		struct ph_dgram *d = &b->d[i];
		struct msghdr *mh = &b->msg[i].msg_hdr;

		d->data = b->iov[i].iov_base;
		d->len = b->msg[i].msg_len;
		d->trunc = (mh->msg_flags & MSG_TRUNC) != 0;
		d->sk_drops = 0;
		dgram_ctl(d, mh);
		if (with_addrs)
			dgram_addr(&d->peer, &b->name[i], mh->msg_namelen);
	}
	return n;
}

/* Writes the pktinfo that makes local the source address into ctl. Returns its length. */
static size_t dgram_set_source(union dgram_ctl *ctl, const struct ph_addr *local)
{
	struct cmsghdr *c = &ctl->align;

	memset(ctl, 0, sizeof(*ctl));
	if (local->u.sa.sa_family == AF_INET) {
		struct in_pktinfo pi = {.ipi_spec_dst = local->u.in.sin_addr};

		c->cmsg_level = IPPROTO_IP;
		c->cmsg_type = IP_PKTINFO;
		c->cmsg_len = CMSG_LEN(sizeof(pi));
		memcpy(CMSG_DATA(c), &pi, sizeof(pi));
		return CMSG_SPACE(sizeof(pi));
	}
	if (local->u.sa.sa_family == AF_INET6) {
		struct in6_pktinfo pi = {.ipi6_addr = local->u.in6.sin6_addr};

		c->cmsg_level = IPPROTO_IPV6;
		c->cmsg_type = IPV6_PKTINFO;
		c->cmsg_len = CMSG_LEN(sizeof(pi));
		memcpy(CMSG_DATA(c), &pi, sizeof(pi));
		return CMSG_SPACE(sizeof(pi));
	}
	return 0;
}

int ph_dgram_send(struct ph_dgram_batch *b, int fd, struct ph_dgram *d, unsigned n, bool to_peer)
{
	int sent;

	if (n > PH_DGRAM_BATCH)
		n = PH_DGRAM_BATCH;
	for (unsigned i = 0; i < n; i++) {
		struct msghdr *mh = &b->msg[i].msg_hdr;
		size_t clen = 0;

		b->iov[i].iov_base = d[i].data;
		b->iov[i].iov_len = d[i].len;
		memset(mh, 0, sizeof(*mh));
		mh->msg_iov = &b->iov[i];
		mh->msg_iovlen = 1;
		if (to_peer) {
			mh->msg_name = &d[i].peer.u.sa;
			mh->msg_namelen = d[i].peer.len;
			clen = dgram_set_source(&b->ctl[i], &d[i].local);
		}
		mh->msg_control = clen != 0 ? b->ctl[i].buf : NULL;
		mh->msg_controllen = clen;
	}
	do
		sent = sendmmsg(fd, b->msg, n, MSG_DONTWAIT);
	while (sent == -1 && errno == EINTR);
	if (sent == -1)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	return sent;
}
