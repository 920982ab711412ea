#include "core/worker.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/dgram.h"
#include "core/log.h"
#include "core/resolve.h"
#include "core/sandbox.h"

static _Thread_local struct ph_worker *worker_self;

/* Runs the calls posted so far, outside the lock (a call may post more). */
static void worker_run_calls(struct ph_worker *w)
{
	struct ph_list todo;

	ph_list_init(&todo);
	pthread_mutex_lock(&w->calls_lock);
	if (!ph_list_empty(&w->calls)) { /* move the whole list over */
		todo.next = w->calls.next;
		todo.prev = w->calls.prev;
		todo.next->prev = &todo;
		todo.prev->next = &todo;
		ph_list_init(&w->calls);
	}
	pthread_mutex_unlock(&w->calls_lock);
	while (!ph_list_empty(&todo)) {
		struct ph_worker_call *c = container_of(todo.next, struct ph_worker_call, node);

		ph_list_del(&c->node);
		c->fn(w, c->arg);
	}
}

void ph_worker_call(struct ph_worker *w, struct ph_worker_call *c)
{
	uint64_t one = 1;

	pthread_mutex_lock(&w->calls_lock);
	ph_list_add_tail(&w->calls, &c->node);
	pthread_mutex_unlock(&w->calls_lock);
	if (write(w->cmd_fd, &one, sizeof(one)) == -1)
		ph_err("cannot post to worker %d: %s", w->id, strerror(errno));
}

struct ph_worker *ph_worker_self(void)
{
	return worker_self;
}

static void worker_on_cmd(struct ph_io *io, uint32_t events)
{
	struct ph_worker *w = container_of(io, struct ph_worker, cmd_io);
	struct ph_list *n, *tmp;
	uint64_t v;
	int cmd;

	(void)events;
	if (read(w->cmd_fd, &v, sizeof(v)) == -1 && errno != EAGAIN)
		ph_warn("worker command channel: %s", strerror(errno));
	worker_run_calls(w);
	cmd = __atomic_exchange_n(&w->cmd, 0, __ATOMIC_ACQ_REL);
	if (cmd & PH_WORKER_DRAIN)
		w->draining = true;
	ph_list_for_each_safe(n, tmp, &w->hooks) {
		struct ph_worker_hook *h = container_of(n, struct ph_worker_hook, node);

		if (cmd & PH_WORKER_DRAIN)
			h->fn(h, PH_WORKER_DRAIN);
		if (cmd & PH_WORKER_ABORT)
			h->fn(h, PH_WORKER_ABORT);
	}
	if (cmd & PH_WORKER_ABORT)
		w->draining = true;
	if (w->draining && w->live == 0)
		ph_loop_stop(&w->loop);
}

int ph_worker_init(struct ph_worker *w, int id, const struct ph_worker_opts *o, int done_fd)
{
	int err;

	memset(w, 0, sizeof(*w));
	w->id = id;
	w->done_fd = done_fd;
	ph_logagg_init(&w->agg);
	ph_list_init(&w->hooks);
	ph_list_init(&w->calls);
	pthread_mutex_init(&w->calls_lock, NULL);
	ph_pipepool_init(&w->pipes, o->spare_pipes, o->pipe_size);
	err = ph_loop_init(&w->loop);
	if (err < 0)
		return err;
	w->cmd_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->cmd_fd == -1) {
		err = -errno;
		goto err_loop;
	}
	ph_io_init(&w->cmd_io, w->cmd_fd, worker_on_cmd);
	err = ph_io_add(&w->loop, &w->cmd_io, EPOLLIN);
	if (err < 0)
		goto err_fd;
	return 0;

err_fd:
	close(w->cmd_fd);
	w->cmd_fd = -1;
err_loop:
	ph_loop_free(&w->loop);
	ph_logagg_destroy(&w->agg);
	return err;
}

static void *worker_main(void *arg)
{
	struct ph_worker *w = arg;
	uint64_t one = 1;
	int err;

	worker_self = w;
	ph_log_set_worker(w->id);
	ph_logagg_bind(&w->agg);
	ph_sandbox_debug_exec("worker"); /* a test's proof that the filter covers the threads */
	err = ph_loop_run(&w->loop);
	if (err < 0)
		ph_err("event loop failed: %s", strerror(-err));
	if (write(w->done_fd, &one, sizeof(one)) == -1)
		ph_err("cannot tell the main thread this worker ended: %s", strerror(errno));
	return NULL;
}

int ph_worker_start(struct ph_worker *w)
{
	int err = pthread_create(&w->thread, NULL, worker_main, w);

	if (err != 0)
		return -err;
	w->started = true;
	return 0;
}

void ph_worker_post(struct ph_worker *w, enum ph_worker_cmd cmd)
{
	uint64_t one = 1;

	__atomic_fetch_or(&w->cmd, (int)cmd, __ATOMIC_ACQ_REL);
	if (write(w->cmd_fd, &one, sizeof(one)) == -1)
		ph_err("cannot post to worker %d: %s", w->id, strerror(errno));
}

void ph_worker_destroy(struct ph_worker *w)
{
	if (w->started)
		pthread_join(w->thread, NULL);
	w->started = false;
	ph_resolver_free(w->resolver);
	w->resolver = NULL;
	ph_names_free(w->names); /* after the resolver: no lookup points in any more */
	w->names = NULL;
	ph_dgram_batch_free(w->dgram);
	w->dgram = NULL;
	ph_dgram_batch_free(w->dgram_out);
	w->dgram_out = NULL;
	ph_io_close(&w->loop, &w->cmd_io);
	w->cmd_fd = -1;
	while (!ph_list_empty(&w->calls)) /* posted after the worker ended: never run */
		ph_list_del(w->calls.next);
	pthread_mutex_destroy(&w->calls_lock);
	ph_logagg_destroy(&w->agg);
	ph_pipepool_free(&w->pipes);
	ph_loop_free(&w->loop);
}

void ph_worker_hook_add(struct ph_worker *w, struct ph_worker_hook *h, ph_worker_hook_fn fn)
{
	h->fn = fn;
	ph_list_add_tail(&w->hooks, &h->node);
}

void ph_worker_conn_inc(struct ph_worker *w)
{
	w->live++;
	PH_STAT_ADD(w, active, 1);
}

void ph_worker_conn_dec(struct ph_worker *w)
{
	PH_BUG_ON(w->live == 0);
	w->live--;
	PH_STAT_ADD(w, active, -1);
	if (w->draining && w->live == 0)
		ph_loop_stop(&w->loop);
}

void ph_stats_add(struct ph_stats *out, const struct ph_stats *in)
{
	out->accepted += PH_STATS_GET(in, accepted);
	out->active += PH_STATS_GET(in, active);
	out->bytes_up += PH_STATS_GET(in, bytes_up);
	out->bytes_down += PH_STATS_GET(in, bytes_down);
	out->spliced += PH_STATS_GET(in, spliced);
	out->copied += PH_STATS_GET(in, copied);
	out->denied += PH_STATS_GET(in, denied);
	out->over_limit += PH_STATS_GET(in, over_limit);
	out->udp_sessions += PH_STATS_GET(in, udp_sessions);
	out->udp_active += PH_STATS_GET(in, udp_active);
	out->udp_evicted += PH_STATS_GET(in, udp_evicted);
	out->dgrams_up += PH_STATS_GET(in, dgrams_up);
	out->dgrams_down += PH_STATS_GET(in, dgrams_down);
	out->dgrams_dropped += PH_STATS_GET(in, dgrams_dropped);
	out->connect_failed += PH_STATS_GET(in, connect_failed);
	out->resets += PH_STATS_GET(in, resets);
	out->errors += PH_STATS_GET(in, errors);
}

void ph_stats_sum(struct ph_worker *const *w, unsigned n, struct ph_stats *out)
{
	memset(out, 0, sizeof(*out));
	for (unsigned i = 0; i < n; i++)
		ph_stats_add(out, &w[i]->stats);
}
