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
 * Every loop is bounded in time. Loopback IPv4 only is needed, but any IPv4 address works.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
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
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256

static volatile sig_atomic_t stop_flag;

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
	                "[-w SETUP_SECS] [-H HOLD_SECS]\n");
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
	C_FREE = 0,   /* slot unused */
	C_CONNECTING, /* connect() in flight; waiting for EPOLLOUT */
	C_READING,    /* request sent; waiting for the whole reply (and the FIN with -e) */
	C_HELD,       /* hold mode: round trip done, kept open */
};

struct client {
	int fd;
	enum cstate state;
	size_t got;
	uint64_t start;
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

/*
 * Advances slot c on an event. Returns 1 when its round trip is complete, 0 while it goes on,
 * -1 when it failed (the slot is then freed).
 */
static int client_step(int ep, struct client *c, uint32_t events, size_t size, bool wait_eof)
{
	static char req[65536], rsp[65536];
	struct epoll_event ev;
	int err = 0;
	socklen_t len = sizeof(err);

	if (c->state == C_CONNECTING) {
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1 || err != 0 ||
		    (events & (EPOLLERR | EPOLLHUP))) {
			client_drop(c);
			return -1;
		}
		memset(req, 'x', size);
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
			int r = client_step(ep, c, evs[i].events, size, wait_eof);

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
	       "max_us=%u first_errno=%llu\n",
	       done, errors, el, el > 0 ? (double)done / el : 0.0, lat_pct(&lat, 0.50),
	       lat_pct(&lat, 0.90), lat_pct(&lat, 0.99), lat.n ? lat.v[lat.n - 1] : 0, first_err);
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
			int r = client_step(ep, c, evs[i].events, size, false);
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
		if (cl[i].state == C_CONNECTING || cl[i].state == C_READING) {
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

int main(int argc, char **argv)
{
	struct sockaddr_in sa;
	struct sigaction act;
	const char *mode;
	int c, clients = 32, timeout_ms = 3000, nconns = 9000, parallel = 200, setup = 60;
	int hold = 300, maxsecs = 1800;
	double secs = 5;
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
	while ((c = getopt(argc, argv, "c:t:s:T:n:p:w:H:x:e")) != -1) {
		switch (c) {
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
		default:
			usage();
		}
	}
	if (clients < 1 || secs <= 0 || size < 1 || size > 65536 || timeout_ms < 1 || nconns < 1 ||
	    parallel < 1 || setup < 1 || hold < 1)
		usage();
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
	usage();
	return 2;
}
