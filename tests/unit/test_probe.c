/*
 * Unit tests for the relay's prober (tunnel/probe.h), run for real on a loop (no thread)
 * against sockets on 127.0.0.1: a TCP listener is open, a port nobody holds is closed, a
 * listener whose accept queue is full (SYNs dropped) is filtered; a UDP socket that answers
 * is open, one that does not is open|filtered, a port nobody holds is closed (ICMP). And
 * the limits: only the caller's own address, one check at a time per caller, the key's
 * rate; a caller that goes away is not answered.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/loop.h"
#include "core/util.h"
#include "tunnel/msg.h"
#include "tunnel/probe.h"

#define TIMEOUT_MS 300 /* the probes' deadline here: filtered takes this long */

struct ptest {
	struct ph_loop loop;
	struct ph_prober *pr;
	struct ph_timer stop;
	struct ph_io echo; /* a UDP socket of the loop that answers each datagram */
	struct ph_ctrl got[32];
	void *owners[32];
	unsigned ngot, want; /* the loop stops once want answers came */
};

static struct ptest *T;
static const uint8_t key_a[PH_KEY_LEN] = {1}, key_b[PH_KEY_LEN] = {2};

static void on_answer(void *owner, const struct ph_ctrl *c)
{
	assert_true(T->ngot < PH_ARRAY_SIZE(T->got));
	assert_int_equal(c->type, PH_CTRL_CHECKED);
	T->owners[T->ngot] = owner;
	T->got[T->ngot++] = *c;
	if (T->ngot >= T->want)
		ph_loop_stop(&T->loop);
}

static void stop_cb(struct ph_timer *tm)
{
	ph_loop_stop(&container_of(tm, struct ptest, stop)->loop);
}

/* Runs the loop until want answers in all came, or ms passed. */
static void run_until(unsigned want, uint64_t ms)
{
	T->want = want;
	if (T->ngot >= want)
		return;
	T->loop.stop = false;
	T->loop.now = ph_now_ms();
	ph_timer_arm(&T->loop, &T->stop, ms);
	assert_int_equal(ph_loop_run(&T->loop), 0);
	ph_timer_stop(&T->loop, &T->stop);
}

static void echo_io(struct ph_io *io, uint32_t events)
{
	struct sockaddr_in from;
	socklen_t len = sizeof(from);
	char buf[64];
	ssize_t n;

	(void)events;
	while ((n = recvfrom(io->fd, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&from,
	                     &len)) >= 0)
		(void)sendto(io->fd, buf, (size_t)n, 0, (struct sockaddr *)&from, len);
}

/* A socket of type on 127.0.0.1 (listening when listen_n >= 0); its port in *port. */
static int sock_on(int type, int listen_n, uint16_t *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	if (listen_n >= 0)
		assert_int_equal(listen(fd, listen_n), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	*port = ntohs(a.sin_port);
	return fd;
}

/* A port nothing holds right now (bound, then closed). */
static uint16_t free_port(int type)
{
	uint16_t port;

	close(sock_on(type, -1, &port));
	return port;
}

static void check(void *owner, const uint8_t *key, const char *peer, uint8_t proto, uint16_t port,
                  const char *other)
{
	struct ph_ctrl c = {.type = PH_CTRL_CHECK, .req = 7, .proto = proto, .port = port};
	struct ph_addr p;

	assert_int_equal(ph_addr_from_literal(peer, 40000, &p), 0);
	if (other != NULL)
		assert_int_equal(ph_addr_from_literal(other, 0, &c.addr), 0);
	T->loop.now = ph_now_ms();
	ph_prober_check(T->pr, owner, key, &p, &c, "client test");
}

static int setup(void **state)
{
	static struct ptest t;

	memset(&t, 0, sizeof(t));
	T = &t;
	assert_int_equal(ph_loop_init(&t.loop), 0);
	t.loop.now = ph_now_ms();
	ph_timer_init(&t.stop, stop_cb);
	ph_io_init(&t.echo, -1, echo_io);
	assert_int_equal(ph_prober_new(&t.loop, on_answer, TIMEOUT_MS, &t.pr), 0);
	*state = &t;
	return 0;
}

static int teardown(void **state)
{
	struct ptest *t = *state;

	ph_prober_free(t->pr);
	ph_io_close(&t->loop, &t->echo);
	ph_loop_free(&t->loop);
	return 0;
}

/* The answer i: its result, and the address it names (127.0.0.1:port). */
static void assert_answer(unsigned i, uint8_t result, uint16_t port)
{
	const struct ph_ctrl *c = &T->got[i];

	if (c->result != result)
		fail_msg("answer %u: %s (%s), expected %s", i, ph_check_result_name(c->result),
		         c->text, ph_check_result_name(result));
	assert_int_equal(c->req, 7);
	assert_int_equal(c->addr.u.sa.sa_family, AF_INET);
	assert_int_equal(ntohl(c->addr.u.in.sin_addr.s_addr), INADDR_LOOPBACK);
	assert_int_equal(ph_addr_port(&c->addr), port);
}

static void test_tcp(void **state)
{
	struct ph_prober_stats st;
	uint16_t open_p, closed_p = free_port(SOCK_STREAM), full_p;
	int lsn = sock_on(SOCK_STREAM, 16, &open_p);
	int full = sock_on(SOCK_STREAM, 0, &full_p), filler;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

	(void)state;
	/* a listener whose one-slot accept queue is taken drops the next SYNs */
	filler = socket(AF_INET, SOCK_STREAM, 0);
	a.sin_port = htons(full_p);
	assert_int_equal(connect(filler, (struct sockaddr *)&a, sizeof(a)), 0);

	check((void *)1, key_a, "127.0.0.1", PH_SVC_TCP, open_p, NULL);
	run_until(1, 2000);
	assert_int_equal(T->ngot, 1);
	assert_answer(0, PH_CHECK_OPEN, open_p);
	assert_ptr_equal(T->owners[0], (void *)1);

	check((void *)1, key_a, "::ffff:127.0.0.1", PH_SVC_TCP, closed_p, NULL);
	run_until(2, 2000);
	assert_answer(1, PH_CHECK_CLOSED, closed_p); /* IPv4-mapped: probed and named as IPv4 */

	check((void *)2, key_a, "127.0.0.1", PH_SVC_TCP, full_p, NULL);
	run_until(3, 2000);
	assert_answer(2, PH_CHECK_FILTERED, full_p);
	assert_non_null(strstr(T->got[2].text, "no answer in 300 ms"));

	ph_prober_stats(T->pr, &st);
	assert_int_equal(st.results[PH_CHECK_OPEN], 1);
	assert_int_equal(st.results[PH_CHECK_CLOSED], 1);
	assert_int_equal(st.results[PH_CHECK_FILTERED], 1);
	close(filler);
	close(full);
	close(lsn);
}

static void test_udp(void **state)
{
	uint16_t echo_p, silent_p, closed_p = free_port(SOCK_DGRAM);
	int silent = sock_on(SOCK_DGRAM, -1, &silent_p);

	(void)state;
	T->echo.fd = sock_on(SOCK_DGRAM | SOCK_NONBLOCK, -1, &echo_p);
	assert_int_equal(ph_io_add(&T->loop, &T->echo, EPOLLIN), 0);

	check((void *)1, key_a, "127.0.0.1", PH_SVC_UDP, echo_p, NULL);
	run_until(1, 2000);
	assert_answer(0, PH_CHECK_OPEN, echo_p);

	check((void *)1, key_a, "127.0.0.1", PH_SVC_UDP, closed_p, NULL);
	run_until(2, 2000);
	assert_answer(1, PH_CHECK_CLOSED, closed_p);

	check((void *)1, key_a, "127.0.0.1", PH_SVC_UDP, silent_p, NULL);
	run_until(3, 2000);
	assert_answer(2, PH_CHECK_OPEN_FILTERED, silent_p);
	assert_non_null(strstr(T->got[2].text, "no answer to 3 datagrams"));
	{
		char buf[64];
		int n = 0;

		while (recv(silent, buf, sizeof(buf), MSG_DONTWAIT) > 0)
			n++;
		assert_int_equal(n, PH_PROBE_UDP_SEND); /* the tries, spread over the deadline */
	}
	close(silent);
}

static void test_only_own_address(void **state)
{
	uint16_t port;
	int lsn = sock_on(SOCK_STREAM, 16, &port);

	(void)state;
	check((void *)1, key_a, "127.0.0.1", PH_SVC_TCP, port, "127.0.0.2");
	assert_int_equal(T->ngot, 1); /* at once: nothing was probed */
	assert_answer(0, PH_CHECK_REFUSED, port);
	assert_string_equal(T->got[0].text,
	                    "the relay checks only the address it sees you at, 127.0.0.1");
	/* its own address, written out, is fine; IPv4-mapped too */
	check((void *)1, key_a, "127.0.0.1", PH_SVC_TCP, port, "127.0.0.1");
	run_until(2, 2000);
	assert_answer(1, PH_CHECK_OPEN, port);
	check((void *)1, key_a, "127.0.0.1", PH_SVC_TCP, port, "::ffff:127.0.0.1");
	run_until(3, 2000);
	assert_answer(2, PH_CHECK_OPEN, port);
	check((void *)1, key_a, "127.0.0.1", PH_SVC_TCP, port, "::1");
	assert_answer(3, PH_CHECK_REFUSED, port);
	close(lsn);
}

static void test_one_at_a_time_and_forget(void **state)
{
	uint16_t silent_p;
	int silent = sock_on(SOCK_DGRAM, -1, &silent_p);

	(void)state;
	check((void *)1, key_a, "127.0.0.1", PH_SVC_UDP, silent_p, NULL);
	check((void *)1, key_a, "127.0.0.1", PH_SVC_UDP, silent_p, NULL);
	assert_int_equal(T->ngot, 1);
	assert_answer(0, PH_CHECK_REFUSED, silent_p);
	assert_non_null(strstr(T->got[0].text, "one check at a time"));
	/* another caller is not held up by the first one's check */
	check((void *)2, key_a, "127.0.0.1", PH_SVC_UDP, silent_p, NULL);
	assert_int_equal(T->ngot, 1);
	/* the first goes away: its probe ends unanswered; the second's answer comes */
	ph_prober_forget(T->pr, (void *)1);
	run_until(2, 2000);
	run_until(3, 2 * TIMEOUT_MS);
	assert_int_equal(T->ngot, 2);
	assert_ptr_equal(T->owners[1], (void *)2);
	assert_answer(1, PH_CHECK_OPEN_FILTERED, silent_p);
	/* and it may ask again */
	check((void *)1, key_a, "127.0.0.1", PH_SVC_UDP, silent_p, NULL);
	assert_int_equal(T->ngot, 2);
	close(silent);
}

static void test_rate(void **state)
{
	uint16_t port = free_port(SOCK_STREAM);

	(void)state;
	for (unsigned i = 0; i < PH_PROBE_BURST; i++) {
		check((void *)1, key_a, "127.0.0.1", PH_SVC_TCP, port, NULL);
		run_until(i + 1, 2000);
		assert_answer(i, PH_CHECK_CLOSED, port);
	}
	check((void *)1, key_a, "127.0.0.1", PH_SVC_TCP, port, NULL);
	assert_int_equal(T->ngot, PH_PROBE_BURST + 1);
	assert_answer(PH_PROBE_BURST, PH_CHECK_REFUSED, port);
	if (strstr(T->got[PH_PROBE_BURST].text, "10 a minute") == NULL)
		fail_msg("'%s' does not name the rate", T->got[PH_PROBE_BURST].text);
	/* another key has its own */
	check((void *)2, key_b, "127.0.0.1", PH_SVC_TCP, port, NULL);
	run_until(PH_PROBE_BURST + 2, 2000);
	assert_answer(PH_PROBE_BURST + 1, PH_CHECK_CLOSED, port);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_tcp, setup, teardown),
		cmocka_unit_test_setup_teardown(test_udp, setup, teardown),
		cmocka_unit_test_setup_teardown(test_only_own_address, setup, teardown),
		cmocka_unit_test_setup_teardown(test_one_at_a_time_and_forget, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rate, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
