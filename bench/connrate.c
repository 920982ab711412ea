/*
 * connrate: the load generator and the tiny servers of the pinhole benchmark (bench/run.sh).
 *
 *   connrate echo HOST:PORT [-t MAXSECS] [-x BYTES]
 *       An echo server: one epoll thread, echoes what it reads, closes on EOF, or (-x) as
 *       soon as it has echoed BYTES. Prints "listening" once bound; exits on SIGTERM/SIGINT
 *       or after MAXSECS (default 1800).
 *
 *   connrate load HOST:PORT [-c CLIENTS] [-t SECS] [-s BYTES] [-T TIMEOUT_MS] [-e]
 *       New connections per second: CLIENTS connections at once, each one connect, send
 *       BYTES, read BYTES back, close, and start over, for SECS seconds. Prints one line:
 *       conns=N errors=N secs=S rate=R p50_us=.. p90_us=.. p99_us=.. max_us=..
 *       The latency of a connection runs from socket() to the last byte of the reply, or
 *       with -e (for a server run with -x) to the server's FIN after the reply. With -e the
 *       server closes first, so the TIME_WAIT state stays on the listening side: the
 *       client's (and a forwarder's) ephemeral ports do not run out at high rates.
 *
 *   connrate hold HOST:PORT [-n CONNS] [-p PARALLEL] [-w SETUP_SECS] [-H HOLD_SECS]
 *       Opens CONNS connections, each carrying one BYTES echo round trip (so it is known to
 *       reach the server), then keeps them open and idle. Prints "held=N failed=N secs=S"
 *       when set up, then waits until stdin reaches EOF (or gets a line), a signal, or
 *       HOLD_SECS pass (default 300), and exits.
 *
 *   connrate uecho HOST:PORT [-t MAXSECS]
 *       A UDP echo server: one socket, one thread, recvmmsg/sendmmsg in batches of 32; sends
 *       each datagram back to where it came from. Prints "listening" once bound, and on exit
 *       (SIGTERM/SIGINT or MAXSECS) "echoed=N dropped=N" (dropped: the send failed).
 *
 *   connrate uload HOST:PORT [-c CLIENTS] [-W WINDOW] [-t SECS] [-s BYTES] [-T TIMEOUT_MS]
 *                  [-R RATE]
 *       UDP round trips per second, closed loop: CLIENTS sockets, each connected to
 *       HOST:PORT and keeping WINDOW datagrams of BYTES in flight; each echo that comes back
 *       sends the next one (sendmmsg/recvmmsg, batches of 32). A datagram not back within
 *       TIMEOUT_MS counts as lost and its place in the window is used again, so a loss never
 *       stalls a socket for longer than that. With -R, open loop instead: RATE datagrams a
 *       second in all, spread over the sockets, whatever comes back. After SECS no more are
 *       sent, and the replies still on their way get TIMEOUT_MS to arrive. Prints one line:
 *       sent=N rcvd=N late=N lost=N bad=N errors=N unsent=N secs=S rate=R offered=R
 *       p50_us=.. p99_us=.. max_us=..
 *       rate: round trips completed in SECS, per second; late: echoes that came after their
 *       timeout (delivered, but counted lost by then); bad: echoes not of the size sent;
 *       lost: sent - rcvd - late - bad; unsent (open loop): due but refused by a full socket
 *       buffer (EAGAIN), never sent; offered: sent per second.
 *
 *   connrate uhold HOST:PORT [-n SOCKETS] [-p PARALLEL] [-s BYTES] [-w SETUP_SECS]
 *                  [-H HOLD_SECS]
 *       Opens SOCKETS UDP sockets (distinct client ports), each sending one datagram and
 *       waiting for its echo (sent again after 500 ms, 4 tries at most), PARALLEL at a
 *       time, then keeps them open and idle. Prints "held=N failed=N secs=S" when set up,
 *       then waits like hold.
 *
 *   connrate sink HOST:PORT [-t MAXSECS]
 *       A discard server: one epoll thread, reads and drops what comes, closes on EOF (so a
 *       sender that shuts down its side learns when everything has arrived). Prints
 *       "listening" once bound, and on exit (SIGTERM/SIGINT or MAXSECS) "received=N".
 *
 *   connrate bulk HOST:PORT [-c STREAMS] [-t SECS] [-T TIMEOUT_MS]
 *       Throughput: opens STREAMS connections (each within TIMEOUT_MS, SOCKS handshake
 *       included), then writes 256 KiB blocks on all of them for SECS seconds, then shuts
 *       down each one's sending side and waits (at most TIMEOUT_MS) for the server's EOF,
 *       which comes once the sink has read everything. Prints one line:
 *       bytes=N streams=N secs=S gbps=G drained=N setup_ms=M
 *       secs runs from the first write to the last EOF (to the end of SECS when not every
 *       stream drained), so every byte counted has reached the sink.
 *
 * --socks5 PROXY:PORT (load, hold, bulk; also -S): every connection goes through that SOCKS5
 * proxy to HOST:PORT, the way a SOCKS client does it: connect to the proxy, send the greeting
 * (version 5, one method: no authentication), wait for the method reply, send CONNECT with
 * an IPv4 address, wait for the reply, and only then send data. Nothing is pipelined. The
 * latency of load includes the whole handshake. A refusal or a malformed answer counts as an
 * error; load adds socks_errors=N (of the errors, those) and socks_first=R (the first reply
 * code that was not 0, or 256 for a malformed answer) to its line.
 *
 * Every loop is bounded in time. Loopback IPv4 only is needed, but any IPv4 address works.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256

static volatile sig_atomic_t stop_flag;

/* --socks5: the proxy every client connection goes through (HOST:PORT is then the target) */
static bool use_socks;
static struct sockaddr_in socks_sa;
static unsigned long long socks_errors;
static unsigned socks_first; /* the first reply code that was not 0; 256: malformed */

static void on_stop(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void die(const char *what)
{
	fprintf(stderr, "connrate: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void usage(void)
{
	fprintf(stderr, "usage: connrate echo HOST:PORT [-t MAXSECS] [-x BYTES]\n"
	                "       connrate load HOST:PORT [-c CLIENTS] [-t SECS] [-s BYTES] "
	                "[-T TIMEOUT_MS] [-e]\n"
	                "       connrate hold HOST:PORT [-n CONNS] [-p PARALLEL] [-s BYTES] "
	                "[-w SETUP_SECS] [-H HOLD_SECS]\n"
	                "       connrate uecho HOST:PORT [-t MAXSECS]\n"
	                "       connrate uload HOST:PORT [-c CLIENTS] [-W WINDOW] [-t SECS] "
	                "[-s BYTES] [-T TIMEOUT_MS] [-R RATE]\n"
	                "       connrate uhold HOST:PORT [-n SOCKETS] [-p PARALLEL] [-s BYTES] "
	                "[-w SETUP_SECS] [-H HOLD_SECS]\n"
	                "       connrate sink HOST:PORT [-t MAXSECS]\n"
	                "       connrate bulk HOST:PORT [-c STREAMS] [-t SECS] [-T TIMEOUT_MS]\n"
	                "load, hold and bulk take --socks5 PROXY:PORT (-S): through that SOCKS5 "
	                "proxy to HOST:PORT\n");
	exit(2);
}

static int parse_addr(const char *s, struct sockaddr_in *sa)
{
	char host[64];
	const char *colon = strrchr(s, ':');
	size_t n;
	long port;

	if (colon == NULL)
		return -1;
	n = (size_t)(colon - s);
	if (n == 0 || n >= sizeof(host))
		return -1;
	memcpy(host, s, n);
	host[n] = '\0';
	port = strtol(colon + 1, NULL, 10);
	if (port <= 0 || port > 65535)
		return -1;
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_port = htons((uint16_t)port);
	return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* ---- echo server ---- */

/* Bytes read but not yet written back, per fd (only when a write came up short). */
struct pending {
	char *buf;
	size_t len;
	size_t echoed; /* bytes written back so far */
};

static int echo_main(const struct sockaddr_in *sa, int maxsecs, size_t close_after)
{
	static char buf[65536];
	struct epoll_event ev, evs[MAX_EVENTS];
	struct pending *pend;
	struct rlimit rl;
	uint64_t deadline = now_us() + (uint64_t)maxsecs * 1000000u;
	int lfd, ep, one = 1;
	size_t maxfd;

	getrlimit(RLIMIT_NOFILE, &rl);
	maxfd = rl.rlim_cur > 1048576 ? 1048576 : (size_t)rl.rlim_cur;
	pend = calloc(maxfd, sizeof(*pend));
	if (pend == NULL)
		die("calloc");
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd == -1)
		die("socket");
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (const struct sockaddr *)sa, sizeof(*sa)) == -1)
		die("bind");
	if (listen(lfd, 4096) == -1)
		die("listen");
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep == -1)
		die("epoll_create1");
	ev.events = EPOLLIN;
	ev.data.fd = lfd;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) == -1)
		die("epoll_ctl");
	printf("listening\n");
	fflush(stdout);

	while (!stop_flag && now_us() < deadline) {
		int n = epoll_wait(ep, evs, MAX_EVENTS, 200);

		if (n == -1 && errno != EINTR)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			bool dead = false;

			if (fd == lfd) {
				/* accept a bounded batch; level-triggered, so the rest come next round */
				for (int k = 0; k < 64; k++) {
					int c = accept4(lfd, NULL, NULL,
					                SOCK_NONBLOCK | SOCK_CLOEXEC);

					if (c == -1)
						break;
					if ((size_t)c >= maxfd) {
						close(c);
						continue;
					}
					ev.events = EPOLLIN;
					ev.data.fd = c;
					if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) == -1)
						close(c);
				}
				continue;
			}
			if (pend[fd].len > 0) {
				/* flush what is owed before reading more */
				ssize_t w = write(fd, pend[fd].buf, pend[fd].len);

				if (w > 0) {
					memmove(pend[fd].buf, pend[fd].buf + w,
					        pend[fd].len - (size_t)w);
					pend[fd].len -= (size_t)w;
					pend[fd].echoed += (size_t)w;
				} else if (w == -1 && errno != EAGAIN) {
					dead = true;
				}
				if (!dead && pend[fd].len == 0) {
					ev.events = EPOLLIN;
					ev.data.fd = fd;
					epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
				}
			} else {
				ssize_t r = read(fd, buf, sizeof(buf));

				if (r > 0) {
					ssize_t w = write(fd, buf, (size_t)r);

					if (w > 0)
						pend[fd].echoed += (size_t)w;
					if (w == -1 && errno != EAGAIN) {
						dead = true;
					} else if (w < r) {
						size_t left = (size_t)(r - (w > 0 ? w : 0));

						pend[fd].buf = malloc(left);
						if (pend[fd].buf == NULL) {
							dead = true;
						} else {
							memcpy(pend[fd].buf,
							       buf + (r - (ssize_t)left), left);
							pend[fd].len = left;
							ev.events = EPOLLOUT;
							ev.data.fd = fd;
							epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
						}
					}
				} else if (r == 0 || errno != EAGAIN) {
					dead = true;
				}
			}
			if (!dead && close_after != 0 && pend[fd].len == 0 &&
			    pend[fd].echoed >= close_after)
				dead = true; /* all echoed: the server closes first (-x) */
			if (dead || (pend[fd].len == 0 && pend[fd].buf != NULL)) {
				free(pend[fd].buf);
				pend[fd].buf = NULL;
				pend[fd].len = 0;
			}
			if (dead)
				pend[fd].echoed = 0;
			if (dead)
				close(fd); /* also leaves the epoll set */
		}
	}
	return 0;
}

/* ---- clients: load and hold ---- */

enum cstate {
	C_FREE = 0,     /* slot unused */
	C_CONNECTING,   /* connect() in flight; waiting for EPOLLOUT */
	C_SOCKS_METHOD, /* --socks5: greeting sent; waiting for the method reply (2 bytes) */
	C_SOCKS_REPLY,  /* --socks5: CONNECT sent; waiting for the reply (10, 22 or more bytes) */
	C_READING,      /* request sent; waiting for the whole reply (and the FIN with -e) */
	C_HELD,         /* hold mode: round trip done, kept open */
};

struct client {
	int fd;
	enum cstate state;
	size_t got;
	uint64_t start;
	uint16_t sgot, sneed; /* SOCKS answer: bytes read so far, its length (as far as known) */
	unsigned char sb[5];  /* its first bytes */
};

struct lat {
	uint32_t *v;
	size_t n, cap;
};

static void lat_add(struct lat *l, uint64_t us)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 65536;
		uint32_t *v;

		if (cap > (64u << 20))
			return; /* 64 M samples is more than any bounded run makes */
		v = realloc(l->v, cap * sizeof(*v));
		if (v == NULL)
			return;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static uint32_t lat_pct(const struct lat *l, double p)
{
	size_t i;

	if (l->n == 0)
		return 0;
	i = (size_t)(p * (double)(l->n - 1) + 0.5);
	return l->v[i];
}

/* Starts a non-blocking connect in slot c. Returns 0, or -errno (slot left free). */
static int client_start(int ep, struct client *c, const struct sockaddr_in *sa)
{
	struct epoll_event ev;
	int fd, one = 1;

	c->start = now_us();
	c->got = 0;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -errno;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (use_socks)
		sa = &socks_sa;
	if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == -1 && errno != EINPROGRESS) {
		int err = -errno;

		close(fd);
		return err;
	}
	ev.events = EPOLLOUT;
	ev.data.ptr = c;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == -1) {
		int err = -errno;

		close(fd);
		return err;
	}
	c->fd = fd;
	c->state = C_CONNECTING;
	return 0;
}

static void client_drop(struct client *c)
{
	if (c->fd != -1)
		close(c->fd);
	c->fd = -1;
	c->state = C_FREE;
}

/* The SOCKS5 greeting: version 5, one method, 0 (no authentication). */
static const unsigned char socks_greeting[3] = {5, 1, 0};

/* The SOCKS5 CONNECT request for target sa (IPv4 address type): 10 bytes into req. */
static void socks_request(unsigned char req[10], const struct sockaddr_in *sa)
{
	req[0] = 5; /* version */
	req[1] = 1; /* CONNECT */
	req[2] = 0;
	req[3] = 1; /* IPv4 */
	memcpy(req + 4, &sa->sin_addr, 4);
	memcpy(req + 8, &sa->sin_port, 2);
}

/* The length of a SOCKS5 reply from its first 5 bytes, or 0 when they are not one. */
static size_t socks_reply_len(const unsigned char b[5])
{
	if (b[0] != 5)
		return 0;
	switch (b[3]) {
	case 1:
		return 4 + 4 + 2;
	case 4:
		return 4 + 16 + 2;
	case 3:
		return 4 + 1 + (size_t)b[4] + 2;
	default:
		return 0;
	}
}

static void socks_fail(unsigned code)
{
	socks_errors++;
	if (socks_first == 0)
		socks_first = code;
}

/*
 * Reads what is missing of the SOCKS answer of c (sneed bytes, no more: what follows is the
 * target's). Returns 1 when it is all there, 0 to wait for more, -1 on EOF or an error.
 */
static int socks_read(struct client *c)
{
	unsigned char buf[300];

	while (c->sgot < c->sneed) {
		size_t want = (size_t)(c->sneed - c->sgot);
		ssize_t r = read(c->fd, buf, want < sizeof(buf) ? want : sizeof(buf));

		if (r > 0) {
			for (ssize_t i = 0; i < r && c->sgot + i < (ssize_t)sizeof(c->sb); i++)
				c->sb[c->sgot + i] = buf[i];
			c->sgot += (uint16_t)r;
			if (c->state == C_SOCKS_REPLY && c->sneed == 5 && c->sgot == 5) {
				size_t n = socks_reply_len(c->sb);

				if (n == 0 || c->sb[1] != 0) {
					socks_fail(n == 0 ? 256u : c->sb[1]);
					return -1;
				}
				c->sneed = (uint16_t)n;
			}
			continue;
		}
		if (r == -1 && errno == EAGAIN)
			return 0;
		if (r == -1 && errno == EINTR)
			continue;
		socks_fail(256); /* the proxy closed (or reset) before its answer was complete */
		return -1;
	}
	return 1;
}

/* Sends the request of c (size bytes) and waits for the reply: state C_READING. */
static int client_send(int ep, struct client *c, size_t size)
{
	static char req[65536];
	struct epoll_event ev;

	if (req[0] == 0)
		memset(req, 'x', sizeof(req));
	if (write(c->fd, req, size) != (ssize_t)size) {
		client_drop(c);
		return -1;
	}
	c->state = C_READING;
	ev.events = EPOLLIN;
	ev.data.ptr = c;
	epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
	return 0;
}

/*
 * Advances slot c on an event. Returns 1 when its round trip is complete, 0 while it goes on,
 * -1 when it failed (the slot is then freed). sa is the target (for --socks5).
 */
static int client_step(int ep, struct client *c, uint32_t events, size_t size, bool wait_eof,
                       const struct sockaddr_in *sa)
{
	static char rsp[65536];
	struct epoll_event ev;
	int err = 0;
	socklen_t len = sizeof(err);

	if (c->state == C_CONNECTING) {
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1 || err != 0 ||
		    (events & (EPOLLERR | EPOLLHUP))) {
			client_drop(c);
			return -1;
		}
		if (!use_socks)
			return client_send(ep, c, size);
		/* a fresh socket takes 3 bytes whole */
		if (write(c->fd, socks_greeting, sizeof(socks_greeting)) !=
		    (ssize_t)sizeof(socks_greeting)) {
			client_drop(c);
			return -1;
		}
		c->state = C_SOCKS_METHOD;
		c->sgot = 0;
		c->sneed = 2;
		ev.events = EPOLLIN;
		ev.data.ptr = c;
		epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
		return 0;
	}
	if (c->state == C_SOCKS_METHOD || c->state == C_SOCKS_REPLY) {
		int r = socks_read(c);
		unsigned char req[10];

		if (r <= 0) {
			if (r < 0)
				client_drop(c);
			return r;
		}
		if (c->state == C_SOCKS_REPLY)
			return client_send(ep, c, size); /* the tunnel is up */
		if (c->sb[0] != 5 || c->sb[1] != 0) {
			socks_fail(c->sb[0] != 5 ? 256u : 255u); /* 255: no acceptable method */
			client_drop(c);
			return -1;
		}
		socks_request(req, sa);
		if (write(c->fd, req, sizeof(req)) != (ssize_t)sizeof(req)) {
			client_drop(c);
			return -1;
		}
		c->state = C_SOCKS_REPLY;
		c->sgot = 0;
		c->sneed = 5; /* then socks_read knows the length */
		return 0;
	}
	if (c->state == C_READING) {
		for (;;) {
			ssize_t r = read(c->fd, rsp, c->got < size ? size - c->got : sizeof(rsp));

			if (r > 0) {
				c->got += (size_t)r;
				if (c->got == size && !wait_eof)
					return 1;
				continue;
			}
			if (r == 0 && wait_eof && c->got == size)
				return 1;
			if (r == -1 && errno == EAGAIN)
				return 0;
			if (r == -1 && errno == EINTR)
				continue;
			client_drop(c); /* EOF or an error before the whole reply */
			return -1;
		}
	}
	if (c->state == C_HELD && (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
		client_drop(c);
		return -1;
	}
	return 0;
}

static int load_main(const struct sockaddr_in *sa, int nclients, double secs, size_t size,
                     int timeout_ms, bool wait_eof)
{
	struct epoll_event evs[MAX_EVENTS];
	struct client *cl = calloc((size_t)nclients, sizeof(*cl));
	struct lat lat = {0};
	uint64_t t0 = now_us(), end = t0 + (uint64_t)(secs * 1e6), t1;
	uint64_t timeout = (uint64_t)timeout_ms * 1000u, last_scan = t0;
	unsigned long long done = 0, errors = 0, first_err = 0;
	int ep = epoll_create1(EPOLL_CLOEXEC), live = 0;
	double el;

	if (cl == NULL || ep == -1)
		die("setup");
	for (int i = 0; i < nclients; i++)
		cl[i].fd = -1;
	for (;;) {
		uint64_t now = now_us();
		bool launching = now < end && !stop_flag;
		int n;

		/* keep every slot busy while the run lasts */
		for (int i = 0; launching && i < nclients; i++) {
			if (cl[i].state != C_FREE)
				continue;
			int err = client_start(ep, &cl[i], sa);

			if (err < 0) {
				errors++;
				if (first_err == 0)
					first_err = (unsigned long long)-err;
			} else {
				live++;
			}
		}
		if (!launching && live == 0)
			break;
		if (now > end + timeout + 1000000u)
			break; /* hard stop: never wait on a stuck forwarder */
		n = epoll_wait(ep, evs, MAX_EVENTS, 10);
		if (n == -1 && errno != EINTR)
			die("epoll_wait");
		now = now_us();
		for (int i = 0; i < n; i++) {
			struct client *c = evs[i].data.ptr;
			int r = client_step(ep, c, evs[i].events, size, wait_eof, sa);

			if (r == 1) {
				lat_add(&lat, now_us() - c->start);
				client_drop(c);
				done++;
				live--;
			} else if (r < 0) {
				errors++;
				live--;
			}
		}
		if (now - last_scan > 100000u) {
			last_scan = now;
			for (int i = 0; i < nclients; i++) {
				if (cl[i].state != C_FREE && now - cl[i].start > timeout) {
					client_drop(&cl[i]);
					errors++;
					live--;
				}
			}
		}
	}
	t1 = now_us();
	for (int i = 0; i < nclients; i++)
		if (cl[i].state != C_FREE) {
			client_drop(&cl[i]);
			errors++;
		}
	el = (double)(t1 - t0) / 1e6;
	qsort(lat.v, lat.n, sizeof(*lat.v), cmp_u32);
	printf("conns=%llu errors=%llu secs=%.3f rate=%.1f p50_us=%u p90_us=%u p99_us=%u "
	       "max_us=%u first_errno=%llu socks_errors=%llu socks_first=%u\n",
	       done, errors, el, el > 0 ? (double)done / el : 0.0, lat_pct(&lat, 0.50),
	       lat_pct(&lat, 0.90), lat_pct(&lat, 0.99), lat.n ? lat.v[lat.n - 1] : 0, first_err,
	       socks_errors, socks_first);
	fflush(stdout);
	return 0;
}

static int hold_main(const struct sockaddr_in *sa, int nconns, int parallel, size_t size,
                     int setup_secs, int hold_secs)
{
	struct epoll_event evs[MAX_EVENTS];
	struct client *cl = calloc((size_t)nconns, sizeof(*cl));
	uint64_t t0 = now_us(), setup_end = t0 + (uint64_t)setup_secs * 1000000u, hold_end;
	int ep = epoll_create1(EPOLL_CLOEXEC), next = 0, inflight = 0, held = 0, failed = 0;

	if (cl == NULL || ep == -1)
		die("setup");
	for (int i = 0; i < nconns; i++)
		cl[i].fd = -1;
	while (!stop_flag && now_us() < setup_end && (next < nconns || inflight > 0)) {
		int n;

		while (next < nconns && inflight < parallel) {
			if (client_start(ep, &cl[next], sa) < 0)
				failed++;
			else
				inflight++;
			next++;
		}
		n = epoll_wait(ep, evs, MAX_EVENTS, 50);
		if (n == -1 && errno != EINTR)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			struct client *c = evs[i].data.ptr;
			bool was_held = c->state == C_HELD;
			int r = client_step(ep, c, evs[i].events, size, false, sa);
			struct epoll_event ev;

			if (was_held) {
				if (r < 0) {
					held--;
					failed++;
				}
				continue;
			}
			if (r == 1) {
				/* round trip done: from now on only a close or reset is of interest */
				c->state = C_HELD;
				ev.events = EPOLLRDHUP;
				ev.data.ptr = c;
				epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
				held++;
				inflight--;
			} else if (r < 0) {
				failed++;
				inflight--;
			}
		}
	}
	/* whatever did not finish setting up in time counts as failed */
	for (int i = 0; i < nconns; i++)
		if (cl[i].state != C_FREE && cl[i].state != C_HELD) {
			client_drop(&cl[i]);
			failed++;
		}
	failed += nconns - next;
	printf("held=%d failed=%d secs=%.3f\n", held, failed, (double)(now_us() - t0) / 1e6);
	fflush(stdout);

	hold_end = now_us() + (uint64_t)hold_secs * 1000000u;
	while (!stop_flag && now_us() < hold_end) {
		struct pollfd p = {.fd = 0, .events = POLLIN};
		int r = poll(&p, 1, 200);

		if (r == 1)
			break; /* a line or EOF on stdin: done */
	}
	return 0;
}

/* ---- UDP: echo server, load, hold ---- */

#define UBATCH 32 /* datagrams per recvmmsg/sendmmsg */
#define UHDR   16 /* at the front of each datagram: slot (4), sequence (4), send time in us (8) */

/* Big socket buffers, beyond rmem_max/wmem_max when root (the FORCE options). */
static void udp_bufs(int fd, int bytes)
{
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) == -1)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof(bytes)) == -1)
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
}

static int uecho_main(const struct sockaddr_in *sa, int maxsecs)
{
	static char buf[UBATCH][65536];
	struct mmsghdr msg[UBATCH];
	struct iovec iov[UBATCH];
	struct sockaddr_in from[UBATCH];
	uint64_t deadline = now_us() + (uint64_t)maxsecs * 1000000u;
	unsigned long long echoed = 0, dropped = 0;
	int fd;

	fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		die("socket");
	udp_bufs(fd, 8 << 20);
	if (bind(fd, (const struct sockaddr *)sa, sizeof(*sa)) == -1)
		die("bind");
	printf("listening\n");
	fflush(stdout);
	while (!stop_flag && now_us() < deadline) {
		struct pollfd p = {.fd = fd, .events = POLLIN};

		if (poll(&p, 1, 200) <= 0)
			continue;
		/* a bounded number of batches per wake-up; poll says when there is more */
		for (int round = 0; round < 64; round++) {
			int n, k, off = 0;

			for (int i = 0; i < UBATCH; i++) {
				iov[i].iov_base = buf[i];
				iov[i].iov_len = sizeof(buf[i]);
				memset(&msg[i].msg_hdr, 0, sizeof(msg[i].msg_hdr));
				msg[i].msg_hdr.msg_iov = &iov[i];
				msg[i].msg_hdr.msg_iovlen = 1;
				msg[i].msg_hdr.msg_name = &from[i];
				msg[i].msg_hdr.msg_namelen = sizeof(from[i]);
			}
			n = recvmmsg(fd, msg, UBATCH, MSG_DONTWAIT, NULL);
			if (n <= 0)
				break;
			for (int i = 0; i < n; i++)
				iov[i].iov_len = msg[i].msg_len;
			while (off < n) {
				k = sendmmsg(fd, msg + off, (unsigned)(n - off), MSG_DONTWAIT);
				if (k > 0) {
					off += k;
					echoed += (unsigned long long)k;
					continue;
				}
				if (k == -1 && errno == EAGAIN) {
					dropped += (unsigned long long)(n - off);
					break;
				}
				dropped++; /* this one cannot go (its sender is gone): the rest can */
				off++;
			}
			if (n < UBATCH)
				break;
		}
	}
	fprintf(stderr, "echoed=%llu dropped=%llu\n", echoed, dropped);
	return 0;
}

struct uslot {
	uint64_t sent; /* us */
	uint32_t seq;
	bool busy;
};

struct uclient {
	int fd;
	uint32_t next_seq;
	unsigned nfree;      /* free slots of the window */
	struct uslot *slot;  /* the window (closed loop) */
	unsigned char *rbuf; /* UBATCH receive buffers of size bytes */
};

struct urun {
	size_t size;
	int window; /* 0: open loop */
	uint64_t timeout, end;
	unsigned long long sent, rcvd, rcvd_in, late, errors, bad, busy;
	unsigned long long unsent; /* open loop: due, but the socket's buffer was full */
	struct lat lat;
};

/*
 * Sends n datagrams on c: with idx, one for each of those window slots; else (open loop)
 * without a slot. Returns how many went out (0 when none could).
 */
static unsigned usend(struct urun *u, struct uclient *c, const unsigned *idx, unsigned n,
                      uint64_t now)
{
	static char fill[65536];
	unsigned char hdr[UBATCH][UHDR];
	struct iovec iov[UBATCH][2];
	struct mmsghdr msg[UBATCH];
	int k = -1;

	if (fill[0] == 0)
		memset(fill, 'x', sizeof(fill));
	for (unsigned i = 0; i < n; i++) {
		uint32_t slot = idx != NULL ? idx[i] : UINT32_MAX, seq = c->next_seq + i;

		memcpy(hdr[i], &slot, 4);
		memcpy(hdr[i] + 4, &seq, 4);
		memcpy(hdr[i] + 8, &now, 8);
		iov[i][0].iov_base = hdr[i];
		iov[i][0].iov_len = UHDR;
		iov[i][1].iov_base = fill;
		iov[i][1].iov_len = u->size - UHDR;
		memset(&msg[i].msg_hdr, 0, sizeof(msg[i].msg_hdr));
		msg[i].msg_hdr.msg_iov = iov[i];
		msg[i].msg_hdr.msg_iovlen = 2;
	}
	/* an ICMP error of an earlier datagram fails one call: once more then */
	for (int tries = 0; tries < 2 && k == -1; tries++) {
		k = sendmmsg(c->fd, msg, n, MSG_DONTWAIT);
		if (k == -1 && errno != EAGAIN)
			u->errors++;
		if (k == -1 && errno != ECONNREFUSED)
			break;
	}
	if (k <= 0)
		return 0;
	if (idx != NULL) {
		for (int i = 0; i < k; i++) {
			struct uslot *s = &c->slot[idx[i]];

			s->busy = true;
			s->sent = now;
			s->seq = c->next_seq + (uint32_t)i;
		}
		c->nfree -= (unsigned)k;
		u->busy += (unsigned long long)k;
	}
	c->next_seq += (uint32_t)k;
	u->sent += (unsigned long long)k;
	return (unsigned)k;
}

/* Closed loop: fills c's free window slots. */
static void ufill(struct urun *u, struct uclient *c, uint64_t now)
{
	unsigned idx[UBATCH];

	while (c->nfree > 0) {
		unsigned n = 0;

		for (int i = 0; i < u->window && n < UBATCH; i++)
			if (!c->slot[i].busy)
				idx[n++] = (unsigned)i;
		if (usend(u, c, idx, n, now) < n)
			return;
	}
}

/* Takes what came back on c. */
static void urecv(struct urun *u, struct uclient *c)
{
	struct mmsghdr msg[UBATCH];
	struct iovec iov[UBATCH];

	for (int round = 0; round < 8; round++) {
		uint64_t now;
		int n;

		for (int i = 0; i < UBATCH; i++) {
			iov[i].iov_base = c->rbuf + (size_t)i * u->size;
			iov[i].iov_len = u->size;
			memset(&msg[i].msg_hdr, 0, sizeof(msg[i].msg_hdr));
			msg[i].msg_hdr.msg_iov = &iov[i];
			msg[i].msg_hdr.msg_iovlen = 1;
		}
		n = recvmmsg(c->fd, msg, UBATCH, MSG_DONTWAIT, NULL);
		if (n == -1) {
			if (errno == EAGAIN)
				return;
			u->errors++; /* an ICMP error (nothing listens): reported once, go on */
			if (errno == ECONNREFUSED)
				continue;
			return;
		}
		now = now_us();
		for (int i = 0; i < n; i++) {
			const unsigned char *p = iov[i].iov_base;
			uint32_t slot, seq;
			uint64_t t;

			if (msg[i].msg_len != u->size || (msg[i].msg_hdr.msg_flags & MSG_TRUNC)) {
				u->bad++; /* not what was sent: cut or grown on the way */
				continue;
			}
			memcpy(&slot, p, 4);
			memcpy(&seq, p + 4, 4);
			memcpy(&t, p + 8, 8);
			if (u->window > 0) {
				struct uslot *s;

				if (slot >= (uint32_t)u->window) {
					u->bad++;
					continue;
				}
				s = &c->slot[slot];
				if (!s->busy || s->seq != seq) {
					u->late++; /* its slot timed out and moved on */
					continue;
				}
				s->busy = false;
				c->nfree++;
				u->busy--;
			} else if (now - t > u->timeout) {
				u->late++;
				continue;
			}
			u->rcvd++;
			if (now <= u->end)
				u->rcvd_in++;
			lat_add(&u->lat, now - t);
		}
		if (n < UBATCH)
			return;
	}
}

static int uload_main(const struct sockaddr_in *sa, int nclients, int window, double secs,
                      size_t size, int timeout_ms, double rate)
{
	struct epoll_event ev, evs[MAX_EVENTS];
	struct uclient *cl = calloc((size_t)nclients, sizeof(*cl));
	struct urun u = {.size = size, .window = rate > 0 ? 0 : window};
	uint64_t t0, stopped = 0, last_scan, attempted = 0;
	int ep = epoll_create1(EPOLL_CLOEXEC), rr = 0;
	double el;

	if (cl == NULL || ep == -1)
		die("setup");
	u.timeout = (uint64_t)timeout_ms * 1000u;
	for (int i = 0; i < nclients; i++) {
		struct uclient *c = &cl[i];

		c->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (c->fd == -1)
			die("socket");
		udp_bufs(c->fd, 1 << 20);
		if (connect(c->fd, (const struct sockaddr *)sa, sizeof(*sa)) == -1)
			die("connect");
		c->slot = calloc((size_t)(u.window > 0 ? u.window : 1), sizeof(*c->slot));
		c->rbuf = malloc((size_t)UBATCH * size);
		if (c->slot == NULL || c->rbuf == NULL)
			die("malloc");
		c->nfree = (unsigned)u.window;
		ev.events = EPOLLIN;
		ev.data.ptr = c;
		if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) == -1)
			die("epoll_ctl");
	}
	t0 = last_scan = now_us();
	u.end = t0 + (uint64_t)(secs * 1e6);
	for (int i = 0; i < nclients && u.window > 0; i++)
		ufill(&u, &cl[i], t0);
	for (;;) {
		uint64_t now = now_us();
		bool running = now < u.end && !stop_flag;
		int n;

		if (!running && stopped == 0)
			stopped = now < u.end ? now : u.end;
		if (!running) {
			/* every datagram back (or given up on), or the time for them is over */
			if (u.window > 0 ? u.busy == 0 : u.rcvd + u.late + u.bad >= u.sent)
				break;
			if (now > stopped + u.timeout)
				break;
		}
		if (u.window == 0 && running) {
			/* open loop: what is due by now, spread round robin in batches */
			uint64_t due = (uint64_t)((double)(now - t0) * rate / 1e6);
			unsigned idle = 0;

			while (attempted < due && idle < (unsigned)nclients) {
				uint64_t want = due - attempted;
				unsigned k = want > UBATCH ? UBATCH : (unsigned)want;
				unsigned got = usend(&u, &cl[rr], NULL, k, now);

				if (got < k)
					u.unsent += k - got;
				attempted += k; /* not sent now is not sent later: no catching up */
				idle = got == 0 ? idle + 1 : 0;
				rr = (rr + 1) % nclients;
			}
			attempted = due;
		}
		n = epoll_wait(ep, evs, MAX_EVENTS, u.window == 0 ? 1 : 10);
		if (n == -1 && errno != EINTR)
			die("epoll_wait");
		now = now_us();
		running = now < u.end && !stop_flag;
		for (int i = 0; i < n; i++) {
			struct uclient *c = evs[i].data.ptr;

			urecv(&u, c);
			if (running && u.window > 0)
				ufill(&u, c, now);
		}
		if (u.window > 0 && now - last_scan >= 10000u) {
			/* a datagram not back in time is lost: its slot goes on */
			last_scan = now;
			for (int i = 0; i < nclients; i++) {
				struct uclient *c = &cl[i];

				for (int j = 0; j < u.window; j++) {
					if (c->slot[j].busy && now - c->slot[j].sent > u.timeout) {
						c->slot[j].busy = false;
						c->nfree++;
						u.busy--;
					}
				}
				if (running)
					ufill(&u, c, now);
			}
		}
	}
	el = (double)(stopped - t0) / 1e6;
	qsort(u.lat.v, u.lat.n, sizeof(*u.lat.v), cmp_u32);
	printf("sent=%llu rcvd=%llu late=%llu lost=%llu bad=%llu errors=%llu unsent=%llu secs=%.3f "
	       "rate=%.1f offered=%.1f p50_us=%u p99_us=%u max_us=%u\n",
	       u.sent, u.rcvd, u.late, u.sent - u.rcvd - u.late - u.bad, u.bad, u.errors, u.unsent,
	       el, el > 0 ? (double)u.rcvd_in / el : 0.0, el > 0 ? (double)u.sent / el : 0.0,
	       lat_pct(&u.lat, 0.50), lat_pct(&u.lat, 0.99), u.lat.n ? u.lat.v[u.lat.n - 1] : 0);
	fflush(stdout);
	return 0;
}

enum hstate {
	H_NEW = 0, /* not started */
	H_WAITING, /* datagram sent, no echo yet */
	H_HELD,    /* echo back: kept open */
	H_FAILED,
};

struct hsock {
	int fd;
	uint8_t state;
	uint8_t tries;
	uint64_t sent;
};

static bool hsend(struct hsock *h, size_t size)
{
	static char req[65536];

	if (req[0] == 0)
		memset(req, 'h', sizeof(req));
	h->tries++;
	h->sent = now_us();
	return send(h->fd, req, size, MSG_DONTWAIT) == (ssize_t)size;
}

static int uhold_main(const struct sockaddr_in *sa, int nsocks, int parallel, size_t size,
                      int setup_secs, int hold_secs)
{
	static char rsp[65536];
	struct epoll_event ev, evs[MAX_EVENTS];
	struct hsock *hs = calloc((size_t)nsocks, sizeof(*hs));
	uint64_t t0 = now_us(), setup_end = t0 + (uint64_t)setup_secs * 1000000u, hold_end;
	uint64_t last_scan = t0;
	int ep = epoll_create1(EPOLL_CLOEXEC), next = 0, inflight = 0, held = 0, failed = 0;

	if (hs == NULL || ep == -1)
		die("setup");
	for (int i = 0; i < nsocks; i++)
		hs[i].fd = -1;
	while (!stop_flag && now_us() < setup_end && (next < nsocks || inflight > 0)) {
		uint64_t now;
		int n;

		while (next < nsocks && inflight < parallel) {
			struct hsock *h = &hs[next++];

			h->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
			ev.events = EPOLLIN;
			ev.data.ptr = h;
			if (h->fd == -1 ||
			    connect(h->fd, (const struct sockaddr *)sa, sizeof(*sa)) == -1 ||
			    epoll_ctl(ep, EPOLL_CTL_ADD, h->fd, &ev) == -1) {
				if (h->fd != -1)
					close(h->fd);
				h->fd = -1;
				h->state = H_FAILED;
				failed++;
				continue;
			}
			h->state = H_WAITING;
			hsend(h, size); /* lost or not, the scan below sends it again */
			inflight++;
		}
		n = epoll_wait(ep, evs, MAX_EVENTS, 20);
		if (n == -1 && errno != EINTR)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			struct hsock *h = evs[i].data.ptr;
			ssize_t r = recv(h->fd, rsp, sizeof(rsp), MSG_DONTWAIT);

			if (h->state != H_WAITING || r != (ssize_t)size)
				continue; /* an ICMP error or a duplicate: the scan decides */
			h->state = H_HELD;
			held++;
			inflight--;
			/* not watched any more: a duplicate echo may wait in its buffer */
			epoll_ctl(ep, EPOLL_CTL_DEL, h->fd, NULL);
		}
		now = now_us();
		if (now - last_scan < 100000u)
			continue;
		last_scan = now;
		for (int i = 0; i < next; i++) {
			struct hsock *h = &hs[i];

			if (h->state != H_WAITING || now - h->sent < 500000u)
				continue;
			if (h->tries < 4) {
				hsend(h, size);
				continue;
			}
			close(h->fd);
			h->fd = -1;
			h->state = H_FAILED;
			failed++;
			inflight--;
		}
	}
	/* whatever did not finish setting up in time counts as failed */
	for (int i = 0; i < next; i++)
		if (hs[i].state == H_WAITING) {
			close(hs[i].fd);
			hs[i].fd = -1;
			failed++;
		}
	failed += nsocks - next;
	printf("held=%d failed=%d secs=%.3f\n", held, failed, (double)(now_us() - t0) / 1e6);
	fflush(stdout);

	hold_end = now_us() + (uint64_t)hold_secs * 1000000u;
	while (!stop_flag && now_us() < hold_end) {
		struct pollfd p = {.fd = 0, .events = POLLIN};

		if (poll(&p, 1, 200) == 1)
			break; /* a line or EOF on stdin: done */
	}
	return 0;
}

/* ---- throughput: sink and bulk ---- */

static int sink_main(const struct sockaddr_in *sa, int maxsecs)
{
	static char buf[262144];
	struct epoll_event ev, evs[MAX_EVENTS];
	uint64_t deadline = now_us() + (uint64_t)maxsecs * 1000000u;
	unsigned long long received = 0;
	int lfd, ep, one = 1;

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd == -1)
		die("socket");
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (const struct sockaddr *)sa, sizeof(*sa)) == -1)
		die("bind");
	if (listen(lfd, 4096) == -1)
		die("listen");
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep == -1)
		die("epoll_create1");
	ev.events = EPOLLIN;
	ev.data.fd = lfd;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) == -1)
		die("epoll_ctl");
	printf("listening\n");
	fflush(stdout);
	while (!stop_flag && now_us() < deadline) {
		int n = epoll_wait(ep, evs, MAX_EVENTS, 200);

		if (n == -1 && errno != EINTR)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;

			if (fd == lfd) {
				for (int k = 0; k < 64; k++) {
					int c = accept4(lfd, NULL, NULL,
					                SOCK_NONBLOCK | SOCK_CLOEXEC);

					if (c == -1)
						break;
					ev.events = EPOLLIN;
					ev.data.fd = c;
					if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) == -1)
						close(c);
				}
				continue;
			}
			/* a bounded number of reads per wake-up, so that every stream gets its turn */
			for (int k = 0; k < 16; k++) {
				ssize_t r = read(fd, buf, sizeof(buf));

				if (r > 0) {
					received += (unsigned long long)r;
					continue;
				}
				if (r == -1 && errno == EAGAIN)
					break;
				if (r == -1 && errno == EINTR)
					continue;
				close(fd); /* EOF or an error: also leaves the epoll set */
				break;
			}
		}
	}
	fprintf(stderr, "received=%llu\n", received);
	return 0;
}

/*
 * Connects to sa (through the --socks5 proxy, handshake included) with blocking calls bounded
 * by the socket timeouts. Returns a non-blocking fd, or -1.
 */
static int bulk_dial(const struct sockaddr_in *sa, int timeout_ms)
{
	struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
	unsigned char req[10], b[300];
	int fd, one = 1;
	size_t n;

	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -1;
	/* a connect, a send and a receive each wait at most this long */
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (const struct sockaddr *)(use_socks ? &socks_sa : sa), sizeof(*sa)) == -1)
		goto fail;
	if (use_socks) {
		if (write(fd, socks_greeting, sizeof(socks_greeting)) != sizeof(socks_greeting))
			goto fail;
		if (recv(fd, b, 2, MSG_WAITALL) != 2 || b[0] != 5 || b[1] != 0)
			goto fail;
		socks_request(req, sa);
		if (write(fd, req, sizeof(req)) != sizeof(req))
			goto fail;
		if (recv(fd, b, 5, MSG_WAITALL) != 5 || b[1] != 0)
			goto fail;
		n = socks_reply_len(b);
		if (n == 0 || recv(fd, b + 5, n - 5, MSG_WAITALL) != (ssize_t)(n - 5))
			goto fail;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (fcntl(fd, F_SETFL, O_NONBLOCK) == -1)
		goto fail;
	return fd;
fail:
	fprintf(stderr, "connrate: bulk: %s failed: %s\n", use_socks ? "SOCKS connect" : "connect",
	        errno ? strerror(errno) : "bad answer");
	close(fd);
	return -1;
}

static int bulk_main(const struct sockaddr_in *sa, int nstreams, double secs, int timeout_ms)
{
	static char buf[262144];
	struct epoll_event ev, evs[MAX_EVENTS];
	int *fds = calloc((size_t)nstreams, sizeof(*fds));
	unsigned long long bytes = 0;
	uint64_t t_setup = now_us(), t0, end, t_last, deadline;
	int ep = epoll_create1(EPOLL_CLOEXEC), drained = 0, open_fds = 0;
	double el;

	if (fds == NULL || ep == -1)
		die("setup");
	memset(buf, 'b', sizeof(buf));
	for (int i = 0; i < nstreams; i++) {
		errno = 0;
		fds[i] = bulk_dial(sa, timeout_ms);
		if (fds[i] == -1) {
			printf("bytes=0 streams=%d secs=0 gbps=0 drained=0 setup_ms=%.1f "
			       "failed=1\n",
			       nstreams, (double)(now_us() - t_setup) / 1e3);
			return 1;
		}
		ev.events = EPOLLOUT;
		ev.data.u32 = (uint32_t)i;
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) == -1)
			die("epoll_ctl");
	}
	t0 = now_us();
	end = t0 + (uint64_t)(secs * 1e6);
	while (!stop_flag && now_us() < end) {
		int n = epoll_wait(ep, evs, MAX_EVENTS, 10);

		if (n == -1 && errno != EINTR)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			int fd = fds[evs[i].data.u32];
			ssize_t w = write(fd, buf, sizeof(buf));

			if (w > 0) {
				bytes += (unsigned long long)w;
			} else if (w == -1 && errno != EAGAIN && errno != EINTR) {
				fprintf(stderr, "connrate: bulk: write: %s\n", strerror(errno));
				stop_flag = 1;
			}
		}
	}
	t_last = now_us();
	if (t_last > end)
		t_last = end;
	/* shut each sending side; the sink closes on EOF once it has read everything */
	for (int i = 0; i < nstreams; i++) {
		ev.events = EPOLLIN;
		ev.data.u32 = (uint32_t)i;
		shutdown(fds[i], SHUT_WR);
		epoll_ctl(ep, EPOLL_CTL_MOD, fds[i], &ev);
		open_fds++;
	}
	deadline = now_us() + (uint64_t)timeout_ms * 1000u;
	while (open_fds > 0 && now_us() < deadline) {
		int n = epoll_wait(ep, evs, MAX_EVENTS, 10);

		if (n == -1 && errno != EINTR)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			int k = (int)evs[i].data.u32;
			ssize_t r = read(fds[k], buf, sizeof(buf));

			if (r > 0 || (r == -1 && (errno == EAGAIN || errno == EINTR)))
				continue; /* nothing is expected; EOF is */
			if (r == 0) {
				drained++;
				t_last = now_us();
			}
			close(fds[k]);
			fds[k] = -1;
			open_fds--;
		}
	}
	for (int i = 0; i < nstreams; i++)
		if (fds[i] != -1)
			close(fds[i]);
	if (drained < nstreams)
		t_last = end; /* not known when the rest arrived: the end of the sending */
	el = (double)(t_last - t0) / 1e6;
	printf("bytes=%llu streams=%d secs=%.3f gbps=%.3f drained=%d setup_ms=%.1f\n", bytes,
	       nstreams, el, el > 0 ? (double)bytes * 8 / el / 1e9 : 0.0, drained,
	       (double)(t0 - t_setup) / 1e3);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"socks5", required_argument, NULL, 'S'},
		{NULL, 0, NULL, 0},
	};
	struct sockaddr_in sa;
	struct sigaction act;
	const char *mode;
	int c, clients = 32, timeout_ms = 3000, nconns = 9000, parallel = 200, setup = 60;
	int hold = 300, maxsecs = 1800, window = 16;
	double secs = 5, rate = 0;
	size_t size = 64, close_after = 0;
	bool wait_eof = false;

	if (argc < 3)
		usage();
	mode = argv[1];
	if (parse_addr(argv[2], &sa) < 0) {
		fprintf(stderr, "connrate: bad address '%s' (want IPV4:PORT)\n", argv[2]);
		return 2;
	}
	optind = 3;
	while ((c = getopt_long(argc, argv, "c:t:s:T:n:p:w:H:x:eW:R:S:", longopts, NULL)) != -1) {
		switch (c) {
		case 'S':
			if (parse_addr(optarg, &socks_sa) < 0) {
				fprintf(stderr,
				        "connrate: bad proxy address '%s' (want IPV4:PORT)\n",
				        optarg);
				return 2;
			}
			use_socks = true;
			break;
		case 'c':
			clients = atoi(optarg);
			break;
		case 't':
			secs = atof(optarg);
			maxsecs = secs < 1 ? 1 : (int)secs;
			break;
		case 's':
			size = (size_t)atol(optarg);
			break;
		case 'T':
			timeout_ms = atoi(optarg);
			break;
		case 'n':
			nconns = atoi(optarg);
			break;
		case 'p':
			parallel = atoi(optarg);
			break;
		case 'w':
			setup = atoi(optarg);
			break;
		case 'H':
			hold = atoi(optarg);
			break;
		case 'x':
			close_after = (size_t)atol(optarg);
			break;
		case 'e':
			wait_eof = true;
			break;
		case 'W':
			window = atoi(optarg);
			break;
		case 'R':
			rate = atof(optarg);
			break;
		default:
			usage();
		}
	}
	if (clients < 1 || secs <= 0 || size < 1 || size > 65536 || timeout_ms < 1 || nconns < 1 ||
	    parallel < 1 || setup < 1 || hold < 1 || window < 1 || window > 65536 || rate < 0)
		usage();
	if (mode[0] == 'u' && strcmp(mode, "uecho") != 0 && size < UHDR) {
		fprintf(stderr, "connrate: UDP datagrams need at least %d bytes\n", UHDR);
		return 2;
	}
	memset(&act, 0, sizeof(act));
	act.sa_handler = on_stop;
	sigaction(SIGTERM, &act, NULL);
	sigaction(SIGINT, &act, NULL);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();
	if (strcmp(mode, "echo") == 0)
		return echo_main(&sa, maxsecs, close_after);
	if (strcmp(mode, "load") == 0)
		return load_main(&sa, clients, secs, size, timeout_ms, wait_eof);
	if (strcmp(mode, "hold") == 0)
		return hold_main(&sa, nconns, parallel, size, setup, hold);
	if (strcmp(mode, "uecho") == 0)
		return uecho_main(&sa, maxsecs);
	if (strcmp(mode, "uload") == 0)
		return uload_main(&sa, clients, window, secs, size, timeout_ms, rate);
	if (strcmp(mode, "uhold") == 0)
		return uhold_main(&sa, nconns, parallel, size, setup, hold);
	if (strcmp(mode, "sink") == 0)
		return sink_main(&sa, maxsecs);
	if (strcmp(mode, "bulk") == 0)
		return bulk_main(&sa, clients, secs, timeout_ms);
	usage();
	return 2;
}
