#include "core/net.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int ph_tcp_listen(const struct ph_addr *a, bool v6only, bool reuseport)
{
	int fd, one = 1, v6 = v6only ? 1 : 0, err;

	fd = socket(a->u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -errno;
	/* TCP_NODELAY is inherited by accepted sockets: one syscall per listener, not per client */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1 ||
	    (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1) ||
	    (a->u.sa.sa_family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof(v6)) == -1) ||
	    bind(fd, &a->u.sa, a->len) == -1 || listen(fd, SOMAXCONN) == -1) {
		err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

/* Binds fd to src's address with port (0: chosen later). Returns 0 or -errno. */
static int bind_source(int fd, const struct ph_addr *src, uint16_t port, bool tcp)
{
	struct ph_addr b = *src;
	int one = 1;

	if (b.u.sa.sa_family == AF_INET)
		b.u.in.sin_port = htons(port);
	else
		b.u.in6.sin6_port = htons(port);
	/* the port is picked at connect, for the 4-tuple: bind alone would use one up */
	if (tcp && port == 0)
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
	return bind(fd, &b.u.sa, b.len) == -1 ? -errno : 0;
}

int ph_tcp_connect(const struct ph_addr *a, const struct ph_addr *src)
{
	int fd, err;

	fd = socket(a->u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -errno;
	ph_sock_nodelay(fd);
	if (src != NULL) {
		err = src->u.sa.sa_family != a->u.sa.sa_family ? -EAFNOSUPPORT
		                                               : bind_source(fd, src, 0, true);
		if (err < 0) {
			close(fd);
			return err;
		}
	}
	if (connect(fd, &a->u.sa, a->len) == -1 && errno != EINPROGRESS) {
		err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

/* Grows a buffer past net.core.{r,w}mem_max when privileged, up to it otherwise. */
static void sock_buf(int fd, int opt, int force, int bytes)
{
	if (setsockopt(fd, SOL_SOCKET, force, &bytes, sizeof(bytes)) == -1)
		setsockopt(fd, SOL_SOCKET, opt, &bytes, sizeof(bytes));
}

int ph_udp_bind(const struct ph_addr *a, bool v6only, bool reuseport, bool pktinfo, int bufsize)
{
	int fd, one = 1, v6 = v6only ? 1 : 0, err;
	bool is6 = a->u.sa.sa_family == AF_INET6;

	fd = socket(a->u.sa.sa_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -errno;
	/* SO_RXQ_OVFL: each datagram says how many the socket dropped, so drops are counted */
	setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof(one));
	if ((reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1) ||
	    (is6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof(v6)) == -1) ||
	    (pktinfo && is6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one)) == -1) ||
	    (pktinfo && !is6 && setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one)) == -1) ||
	    bind(fd, &a->u.sa, a->len) == -1) {
		err = -errno;
		close(fd);
		return err;
	}
	if (bufsize > 0) {
		sock_buf(fd, SO_RCVBUF, SO_RCVBUFFORCE, bufsize);
		sock_buf(fd, SO_SNDBUF, SO_SNDBUFFORCE, bufsize);
	}
	return fd;
}

int ph_udp_connect(const struct ph_addr *a, const struct ph_addr *src, uint16_t port)
{
	struct ph_addr any;
	int fd, err, one = 1;

	fd = socket(a->u.sa.sa_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof(one));
	if (src != NULL && src->u.sa.sa_family != a->u.sa.sa_family) {
		close(fd);
		return -EAFNOSUPPORT;
	}
	if (src == NULL && port != 0) { /* the wildcard address of a's family */
		memset(&any, 0, sizeof(any));
		any.u.sa.sa_family = a->u.sa.sa_family;
		any.len = a->u.sa.sa_family == AF_INET ? sizeof(any.u.in) : sizeof(any.u.in6);
		src = &any;
	}
	if (src != NULL) {
		err = bind_source(fd, src, port, false);
		if (err < 0) {
			close(fd);
			return err;
		}
	}
	if (connect(fd, &a->u.sa, a->len) == -1) {
		err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

int ph_sock_nodelay(int fd)
{
	int one = 1;

	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1)
		return -errno;
	return 0;
}

void ph_sock_set_rst(int fd)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};

	/* best effort: if it fails the peer gets a FIN instead of a reset */
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

int ph_sock_error(int fd)
{
	int soerr = 0;
	socklen_t len = sizeof(soerr);

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == -1)
		return -errno;
	return -soerr;
}

const char *ph_bind_strerror(int err)
{
	switch (err) {
	case -EADDRINUSE:
		return "address already in use (another program listens there)";
	case -EACCES:
		return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)";
	case -EADDRNOTAVAIL:
		return "address not available (no interface on this host has it)";
	case -EAFNOSUPPORT:
		return "address family not supported (IPv6 disabled?)";
	default:
		return strerror(-err);
	}
}
