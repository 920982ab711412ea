/*
 * Unit tests for the one accept loop and the fd budget (conn/accept.h), run for real: a
 * loop (no thread), a listener on 127.0.0.1 and clients connecting to it. Faults are
 * injected through ph_sys.accept4: EMFILE must pause the listener on a timer (a handful
 * of calls a second, not a spin), a spent fd budget must leave clients in the listen queue
 * without calling accept at all, and both must resume by themselves.
 */
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

#include "conn/accept.h"
#include "core/loop.h"
#include "core/sys.h"
#include "core/util.h"

struct atest {
	struct ph_loop loop;
	struct ph_acceptor acc;
	struct ph_timer stop, step;
	struct sockaddr_in addr;
	unsigned accepted;
	int clients[8];
	unsigned nclients;
	void (*at_step)(struct atest *t); /* run once by the step timer */
};

static unsigned accept_calls;
static int fake_errno;

static int fake_accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
	(void)fd;
	(void)sa;
	(void)len;
	(void)flags;
	accept_calls++;
	errno = fake_errno;
	return -1;
}

static int counting_accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
	accept_calls++;
	return accept4(fd, sa, len, flags);
}

static void on_accept(struct ph_acceptor *a, int fd, const struct ph_addr *peer)
{
	struct atest *t = container_of(a, struct atest, acc);

	assert_int_equal(peer->u.sa.sa_family, AF_INET);
	t->accepted++;
	close(fd);
	ph_fds_give(a->cost);
}

static const char *label(struct ph_acceptor *a, char *buf, size_t len)
{
	(void)a;
	snprintf(buf, len, "test listener");
	return buf;
}

static void stop_cb(struct ph_timer *tm)
{
	ph_loop_stop(&container_of(tm, struct atest, stop)->loop);
}

static void step_cb(struct ph_timer *tm)
{
	struct atest *t = container_of(tm, struct atest, step);

	if (t->at_step != NULL)
		t->at_step(t);
}

static void run_ms(struct atest *t, uint64_t ms)
{
	t->loop.stop = false;
	t->loop.now = ph_now_ms();
	ph_timer_arm(&t->loop, &t->stop, ms);
	assert_int_equal(ph_loop_run(&t->loop), 0);
}

static void client(struct atest *t)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

	assert_true(fd >= 0);
	assert_true(connect(fd, (struct sockaddr *)&t->addr, sizeof(t->addr)) == 0 ||
	            errno == EINPROGRESS);
	t->clients[t->nclients++] = fd;
}

static int setup(void **state)
{
	static struct atest t;
	socklen_t len = sizeof(t.addr);
	int fd;

	memset(&t, 0, sizeof(t));
	assert_int_equal(ph_loop_init(&t.loop), 0);
	ph_timer_init(&t.stop, stop_cb);
	ph_timer_init(&t.step, step_cb);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	t.addr.sin_family = AF_INET;
	t.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&t.addr, sizeof(t.addr)), 0);
	assert_int_equal(listen(fd, 16), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&t.addr, &len), 0);
	ph_acceptor_init(&t.acc, fd, 6, on_accept, label);
	assert_int_equal(ph_acceptor_start(&t.loop, &t.acc), 0);
	ph_fds_set_limit(0);
	accept_calls = 0;
	*state = &t;
	return 0;
}

static int teardown(void **state)
{
	struct atest *t = *state;

	ph_sys_reset();
	ph_acceptor_close(&t->acc);
	ph_timer_stop(&t->loop, &t->step);
	for (unsigned i = 0; i < t->nclients; i++)
		close(t->clients[i]);
	ph_loop_free(&t->loop);
	ph_fds_set_limit(0);
	assert_int_equal(ph_fds_used(), 0); /* every reservation was given back */
	return 0;
}

static void test_budget_take_give(void **state)
{
	(void)state;
	ph_fds_set_limit(10);
	assert_true(ph_fds_take(6));
	assert_false(ph_fds_take(6)); /* 12 > 10: nothing reserved */
	assert_int_equal(ph_fds_used(), 6);
	assert_true(ph_fds_take(4));
	ph_fds_give(4);
	ph_fds_give(6);
	assert_int_equal(ph_fds_used(), 0);
	ph_fds_set_limit(0); /* no limit */
	assert_true(ph_fds_take(1000000));
	ph_fds_give(1000000);
}

static void test_accepts_clients(void **state)
{
	struct atest *t = *state;

	for (int i = 0; i < 3; i++)
		client(t);
	run_ms(t, 200);
	assert_int_equal(t->accepted, 3);
}

static void restore_accept(struct atest *t)
{
	(void)t;
	ph_sys.accept4 = counting_accept4;
}

/* EMFILE: a few calls while paused (one per 100 ms), not a spin; then it resumes alone. */
static void test_emfile_pauses_then_resumes(void **state)
{
	struct atest *t = *state;

	ph_sys.accept4 = fake_accept4;
	fake_errno = EMFILE;
	client(t);
	t->at_step = restore_accept;
	ph_timer_arm(&t->loop, &t->step, 350);
	run_ms(t, 600);
	assert_int_equal(t->accepted, 1);
	/* about 4 failed calls in 350 ms and 1-2 good ones: a spin would make thousands */
	assert_true(accept_calls <= 10);
	assert_true(t->acc.shortages >= 2);
	assert_int_equal(ph_fds_used(), 0);
}

static void raise_limit(struct atest *t)
{
	(void)t;
	ph_fds_set_limit(100);
}

/* A spent budget: accept is not even called; the client waits and is taken later. */
static void test_spent_budget_leaves_clients_waiting(void **state)
{
	struct atest *t = *state;

	ph_sys.accept4 = counting_accept4;
	ph_fds_set_limit(5); /* less than one connection's 6 */
	client(t);
	client(t);
	t->at_step = raise_limit;
	ph_timer_arm(&t->loop, &t->step, 250);
	run_ms(t, 150);
	assert_int_equal(t->accepted, 0);
	assert_int_equal(accept_calls, 0);
	run_ms(t, 400);
	assert_int_equal(t->accepted, 2);
}

static void unhold(struct atest *t)
{
	ph_acceptor_hold(&t->acc, false);
}

static void test_hold_and_resume(void **state)
{
	struct atest *t = *state;

	ph_acceptor_hold(&t->acc, true);
	client(t);
	t->at_step = unhold;
	ph_timer_arm(&t->loop, &t->step, 150);
	run_ms(t, 100);
	assert_int_equal(t->accepted, 0);
	run_ms(t, 200);
	assert_int_equal(t->accepted, 1);
}

/* A listener handed over (a reload) keeps the clients in its queue. */
static void test_take_keeps_the_queue(void **state)
{
	struct atest *t = *state;
	struct ph_acceptor from;
	int fd;

	/* the old rule's acceptor holds the listener, stopped, with a client waiting */
	ph_acceptor_close(&t->acc);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&t->addr, sizeof(t->addr)), 0);
	assert_int_equal(listen(fd, 16), 0);
	ph_acceptor_init(&from, fd, 6, on_accept, label);
	ph_acceptor_hold(&from, true);
	assert_int_equal(ph_acceptor_start(&t->loop, &from), 0);
	client(t);
	run_ms(t, 50);
	assert_int_equal(t->accepted, 0);
	/* the new one takes it over */
	ph_acceptor_init(&t->acc, -1, 6, on_accept, label);
	ph_acceptor_take(&t->loop, &t->acc, &from);
	assert_int_equal(from.io.fd, -1);
	assert_int_equal(ph_acceptor_start(&t->loop, &t->acc), 0);
	run_ms(t, 200);
	assert_int_equal(t->accepted, 1);
	ph_acceptor_close(&from);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_budget_take_give, setup, teardown),
		cmocka_unit_test_setup_teardown(test_accepts_clients, setup, teardown),
		cmocka_unit_test_setup_teardown(test_emfile_pauses_then_resumes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_spent_budget_leaves_clients_waiting, setup,
	                                        teardown),
		cmocka_unit_test_setup_teardown(test_hold_and_resume, setup, teardown),
		cmocka_unit_test_setup_teardown(test_take_keeps_the_queue, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
