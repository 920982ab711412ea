/*
 * Unit tests for the connection layer (conn/conn.h) with a forward rule, run for real: a
 * worker's loop (no thread), the rule's listener on 127.0.0.1, clients and targets that
 * are plain sockets of the test. What is checked is the life of a connection: admission
 * (--deny resets and counts, --max-conns resets and counts), connect with fail-over (a
 * refused target is skipped and blamed, the next one serves), bytes both ways, and the one
 * close path (the fd budget and the live count come back to zero, the rule retires).
 *
 *    client --TCP--> [ rule 127.0.0.1:L | conn ] --TCP--> target A (refuses) / target B
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "conn/accept.h"
#include "conn/conn.h"
#include "core/acl.h"
#include "core/log.h"
#include "core/worker.h"
#include "forward/forward.h"

struct ctest {
	struct ph_worker w;
	struct ph_worker *wp;
	struct ph_timer stop;
	struct ph_rule *r;
	int target;     /* listening: the target that serves (-1 none) */
	uint16_t tport; /* its port */
	uint16_t dead;  /* a port nothing listens on */
	uint16_t lport; /* the rule's */
};

static void stop_cb(struct ph_timer *t)
{
	ph_loop_stop(&container_of(t, struct ctest, stop)->w.loop);
}

/* Runs the worker's loop for ms milliseconds. */
static void run_ms(struct ctest *t, uint64_t ms)
{
	t->w.loop.stop = false;
	t->w.loop.now = ph_now_ms();
	assert_int_equal(ph_timer_arm(&t->w.loop, &t->stop, ms), 0);
	assert_int_equal(ph_loop_run(&t->w.loop), 0);
}

static int listener(uint16_t *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 16), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	*port = ntohs(a.sin_port);
	return fd;
}

/* A client of the rule, connected (loopback connects at once) and non-blocking. */
static int client(struct ctest *t)
{
	struct sockaddr_in a = {.sin_family = AF_INET,
	                        .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
	                        .sin_port = htons(t->lport)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	assert_true(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 || errno == EINPROGRESS);
	return fd;
}

/* What became of a client: 'r' reset, 'e' EOF, 'o' open (nothing to read), or a byte. */
static int fate(int fd)
{
	char c;
	ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);

	if (n == 1)
		return (unsigned char)c;
	if (n == 0)
		return 'e';
	return errno == ECONNRESET ? 'r' : 'o';
}

static struct ctest *ctest_new(const char *extra_deny, unsigned max_conns, bool dead_first)
{
	struct ph_worker_opts o = {.pipe_size = 0, .spare_pipes = 0};
	struct ctest *t = calloc(1, sizeof(*t));
	char spec[64], why[256];
	const char *err;
	int fd;

	assert_non_null(t);
	assert_int_equal(ph_worker_init(&t->w, 0, &o, -1), 0);
	t->wp = &t->w;
	ph_timer_init(&t->stop, stop_cb);
	ph_fds_set_limit(0);
	t->target = listener(&t->tport);
	fd = listener(&t->dead); /* a port that was free a moment ago, and refuses now */
	close(fd);
	t->r = ph_forward_rule_new();
	assert_non_null(t->r);
	fd = listener(&t->lport); /* a free port for the rule (port 0 is not a rule's) */
	close(fd);
	snprintf(spec, sizeof(spec), "127.0.0.1:%u", t->lport);
	assert_int_equal(ph_hostport_parse(spec, &t->r->listen, &err), 0);
	if (dead_first) {
		snprintf(spec, sizeof(spec), "127.0.0.1:%u", t->dead);
		assert_int_equal(ph_hostport_parse(spec, &t->r->targets[t->r->ntargets++].hp, &err),
		                 0);
	}
	snprintf(spec, sizeof(spec), "127.0.0.1:%u", t->tport);
	assert_int_equal(ph_hostport_parse(spec, &t->r->targets[t->r->ntargets++].hp, &err), 0);
	if (extra_deny != NULL) {
		struct ph_cidr c;

		assert_int_equal(ph_cidr_parse(extra_deny, &c, &err), 0);
		assert_int_equal(ph_acl_add(&t->r->acl, false, &c), 0);
	}
	t->r->max_conns = max_conns;
	assert_int_equal(ph_forward_bind(t->r, &t->wp, 1, NULL, NULL, why, sizeof(why)), 0);
	ph_forward_attach(t->r, 0);
	return t;
}

static void ctest_free(struct ctest *t)
{
	ph_forward_detach(t->r, 0);
	run_ms(t, 20); /* the close path's reap and the retire task */
	ph_forward_rule_free(t->r);
	close(t->target);
	ph_worker_destroy(&t->w);
	assert_int_equal(ph_fds_used(), 0); /* every reservation was given back */
	free(t);
}

/* Accepts the connection the rule made to the target, within a short run of the loop. */
static int target_accept(struct ctest *t)
{
	int fd = -1;

	for (int i = 0; i < 50 && fd == -1; i++) {
		run_ms(t, 10);
		fd = accept4(t->target, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	}
	assert_true(fd >= 0);
	return fd;
}

static void test_bytes_both_ways_and_one_close(void **state)
{
	struct ctest *t = ctest_new(NULL, 0, false);
	int c = client(t), s = target_accept(t);
	char buf[16];

	(void)state;
	assert_int_equal(t->r->live, 1);
	assert_true(ph_fds_used() >= PH_FDS_FORWARD);
	assert_int_equal(send(c, "ping", 4, 0), 4);
	run_ms(t, 30);
	assert_int_equal(recv(s, buf, sizeof(buf), MSG_DONTWAIT), 4);
	assert_int_equal(send(s, "pong", 4, 0), 4);
	run_ms(t, 30);
	assert_int_equal(recv(c, buf, sizeof(buf), MSG_DONTWAIT), 4);
	assert_memory_equal(buf, "pong", 4);
	/* both FINs: the connection ends by itself, once, and gives everything back */
	shutdown(c, SHUT_WR);
	shutdown(s, SHUT_WR);
	run_ms(t, 50);
	assert_int_equal(t->r->live, 0);
	assert_int_equal(ph_fds_used(), 0);
	assert_int_equal(t->r->wr[0]->stats.accepted, 1);
	assert_int_equal(t->r->wr[0]->stats.bytes_up, 4);
	assert_int_equal(t->r->wr[0]->stats.bytes_down, 4);
	close(c);
	close(s);
	ctest_free(t);
}

static void test_deny_resets_and_counts(void **state)
{
	struct ctest *t = ctest_new("127.0.0.0/8", 0, false);
	int c = client(t);

	(void)state;
	run_ms(t, 30);
	assert_int_equal(fate(c), 'r');
	assert_int_equal(t->r->wr[0]->stats.denied, 1);
	assert_int_equal(t->r->wr[0]->stats.accepted, 0);
	assert_int_equal(ph_fds_used(), 0);
	close(c);
	ctest_free(t);
}

static void test_max_conns_resets_the_one_too_many(void **state)
{
	struct ctest *t = ctest_new(NULL, 1, false);
	int a = client(t), s = target_accept(t), b = client(t);

	(void)state;
	run_ms(t, 30);
	assert_int_equal(fate(b), 'r');
	assert_int_equal(fate(a), 'o'); /* the first is untouched */
	assert_int_equal(t->r->wr[0]->stats.over_limit, 1);
	assert_int_equal(t->r->live, 1);
	close(a);
	close(b);
	run_ms(t, 30);
	close(s);
	run_ms(t, 30);
	assert_int_equal(t->r->live, 0);
	ctest_free(t);
}

static void test_fail_over_skips_and_blames_a_refusing_target(void **state)
{
	struct ctest *t = ctest_new(NULL, 0, true);
	int c = client(t), s = target_accept(t);

	(void)state;
	/* target 0 refused: blamed (back-off), target 1 took the connection */
	assert_int_equal(t->r->targets[0].fails, 1);
	assert_true(t->r->targets[0].backoff_until != 0);
	assert_int_equal(t->r->targets[1].fails, 0);
	assert_int_equal(t->r->wr[0]->stats.connect_failed, 0);
	close(c);
	close(s);
	run_ms(t, 30);
	assert_int_equal(t->r->live, 0);
	ctest_free(t);
}

static void test_every_target_refusing_closes_once(void **state)
{
	struct ctest *t = ctest_new(NULL, 0, true);
	int c;

	(void)state;
	close(t->target); /* now both refuse */
	t->target = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	c = client(t);
	run_ms(t, 100);
	assert_int_equal(fate(c), 'r');
	assert_int_equal(t->r->wr[0]->stats.connect_failed, 1);
	assert_int_equal(t->r->live, 0);
	assert_int_equal(ph_fds_used(), 0);
	close(c);
	ctest_free(t);
}

/* A relaying connection keeps what it holds of its reservation, and gives the rest back once. */
static void test_fds_trim_gives_back_the_surplus(void **state)
{
	struct ph_conn c;

	(void)state;
	memset(&c, 0, sizeof(c));
	ph_fds_set_limit(8);
	assert_true(ph_fds_take(PH_FDS_SOCKS));
	c.fds = PH_FDS_SOCKS;
	ph_conn_fds_trim(&c, 2);
	assert_int_equal(c.fds, 2);
	assert_int_equal(ph_fds_used(), 2);
	ph_conn_fds_trim(&c, 3); /* never takes more */
	assert_int_equal(c.fds, 2);
	assert_int_equal(ph_fds_used(), 2);
	ph_fds_give(c.fds); /* as the close path does */
	assert_int_equal(ph_fds_used(), 0);
	ph_fds_set_limit(0);
}

static void test_state_names(void **state)
{
	(void)state;
	for (int s = 0; s < PH_CONN__NSTATES; s++)
		assert_true(strlen(ph_conn_state_name((enum ph_conn_state)s)) > 0);
	assert_string_equal(ph_conn_state_name(PH_CONN_RELAYING), "relaying");
	assert_string_equal(ph_conn_state_name(PH_CONN_VERB), "handshake");
	assert_string_equal(ph_conn_state_name(PH_CONN__NSTATES), "?");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bytes_both_ways_and_one_close),
		cmocka_unit_test(test_deny_resets_and_counts),
		cmocka_unit_test(test_max_conns_resets_the_one_too_many),
		cmocka_unit_test(test_fail_over_skips_and_blames_a_refusing_target),
		cmocka_unit_test(test_every_target_refusing_closes_once),
		cmocka_unit_test(test_fds_trim_gives_back_the_surplus),
		cmocka_unit_test(test_state_names),
	};

	ph_log_level = PH_LOG_WARN; /* the refusals log; the test does not need to see them */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
