/* Socket set-up shared by the services: listeners, connects, socket options. */
#ifndef PH_CORE_NET_H
#define PH_CORE_NET_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/addr.h"

/*
 * Opens a non-blocking TCP listener on a, with TCP_NODELAY (accepted sockets inherit it). v6only applies to IPv6 addresses (false lets
 * IPv4 clients in as ::ffff:a.b.c.d); reuseport lets several workers bind the same address.
 * Returns the fd, or -errno.
 */
int ph_tcp_listen(const struct ph_addr *a, bool v6only, bool reuseport);

/*
 * Starts a non-blocking connect to a with TCP_NODELAY set, from address src (port 0:
 * chosen at connect) when src is not NULL. Returns the fd (the connect is
 * in flight or done; EPOLLOUT tells), or -errno when it failed at once.
 */
int ph_tcp_connect(const struct ph_addr *a, const struct ph_addr *src);

/*
 * Opens a non-blocking UDP socket bound to a. v6only and reuseport as for ph_tcp_listen;
 * pktinfo asks for each datagram's destination address (for a wildcard address, so that
 * replies leave from the address the client wrote to); bufsize > 0 sets both socket
 * buffers (beyond the sysctl maximum when privileged). Returns the fd, or -errno.
 */
int ph_udp_bind(const struct ph_addr *a, bool v6only, bool reuseport, bool pktinfo, int bufsize);

/*
 * Opens a non-blocking UDP socket connected to a, from local address src (NULL: the
 * kernel picks, by route) and local port port (0: the kernel picks one): it receives only a's datagrams, and an ICMP error from a (port unreachable)
 * ends its next read with -ECONNREFUSED. Returns the fd, or -errno (-EADDRINUSE: port is
 * taken).
 */
int ph_udp_connect(const struct ph_addr *a, const struct ph_addr *src, uint16_t port);

/* Sets TCP_NODELAY. Returns 0 or -errno. */
int ph_sock_nodelay(int fd);

/* Sets SO_LINGER {1, 0} so that close() sends a reset. */
void ph_sock_set_rst(int fd);

/* Reads and clears the socket's pending error (SO_ERROR): 0 or -errno. */
int ph_sock_error(int fd);

/*
 * True for a -errno that says this process ran short (fds, buffers, memory), not that the
 * peer or the network failed: such an error never counts against a target.
 */
static inline bool ph_err_is_local(int err)
{
	return err == -EMFILE || err == -ENFILE || err == -ENOBUFS || err == -ENOMEM;
}

/* A message for a bind() failure that a newcomer understands. */
const char *ph_bind_strerror(int err);

#endif /* PH_CORE_NET_H */
