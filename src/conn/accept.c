#include "conn/accept.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "core/log.h"
#include "core/sys.h"

static uint64_t fds_limit; /* 0: no limit */
static uint64_t fds_used;  /* atomic: workers and main reserve and give back */

void ph_fds_set_limit(uint64_t n)
{
	__atomic_store_n(&fds_limit, n, __ATOMIC_RELAXED);
}

bool ph_fds_take(unsigned n)
{
	uint64_t lim = __atomic_load_n(&fds_limit, __ATOMIC_RELAXED);
	uint64_t used = __atomic_add_fetch(&fds_used, n, __ATOMIC_RELAXED);

	if (lim == 0 || used <= lim)
		return true;
	__atomic_fetch_sub(&fds_used, n, __ATOMIC_RELAXED);
	return false;
}

void ph_fds_give(unsigned n)
{
	PH_BUG_ON(__atomic_load_n(&fds_used, __ATOMIC_RELAXED) < n);
	__atomic_fetch_sub(&fds_used, n, __ATOMIC_RELAXED);
}

uint64_t ph_fds_used(void)
{
	return __atomic_load_n(&fds_used, __ATOMIC_RELAXED);
}

uint64_t ph_fds_limit(void)
{
	return __atomic_load_n(&fds_limit, __ATOMIC_RELAXED);
}

/*
 * Accepting stops until the pause timer: one line per PH_ACCEPT_LOG_MS per listener, the
 * shortages held back since the last one counted in it. err is 0 for a spent fd budget,
 * else accept4's errno.
 */
static void acc_pause(struct ph_acceptor *a, int err)
{
	char label[128], more[64];

	a->paused = true;
	a->shortages++;
	a->held_back++;
	ph_timer_arm(a->loop, &a->pause, PH_ACCEPT_PAUSE_MS);
	if (a->log_at != 0 && a->loop->now - a->log_at < PH_ACCEPT_LOG_MS)
		return;
	a->label(a, label, sizeof(label));
	if (a->log_at == 0)
		snprintf(more, sizeof(more), "pausing %d ms", PH_ACCEPT_PAUSE_MS);
	else
		snprintf(more, sizeof(more), "%llu pause%s since the last such line",
		         (unsigned long long)a->held_back, a->held_back == 1 ? "" : "s");
	if (err == 0)
		ph_warn("%s: new connections wait: connections hold %llu of the %llu fds they may "
		        "(raise ulimit -n); %s",
		        label, (unsigned long long)ph_fds_used(),
		        (unsigned long long)ph_fds_limit(), more);
	else
		ph_warn("%s: cannot accept: %s (raise ulimit -n); new connections wait, %s", label,
		        strerror(err), more);
	a->log_at = a->loop->now != 0 ? a->loop->now : 1;
	a->held_back = 0;
}

static void acc_some(struct ph_acceptor *a)
{
	char label[128];

	if (a->paused || a->held)
		return;
	for (unsigned i = 0; i < PH_ACCEPT_BUDGET; i++) {
		struct ph_addr peer;
		socklen_t len = sizeof(peer.u);
		int fd;

		if (a->io.fd == -1)
			return;
		if (!ph_fds_take(a->cost)) {
			acc_pause(a, 0); /* the client waits in the listen queue */
			return;
		}
		fd = ph_sys.accept4(a->io.fd, &peer.u.sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd == -1) {
			int err = errno;

			ph_fds_give(a->cost);
			switch (err) {
			case EAGAIN:
				return;
			case EINTR:
			case ECONNABORTED:
			case EPERM:
			case EPROTO:
				continue;
			case EMFILE:
			case ENFILE:
			case ENOBUFS:
			case ENOMEM:
				acc_pause(a, err);
				return;
			default:
				ph_err("%s: accept: %s", a->label(a, label, sizeof(label)),
				       strerror(err));
				acc_pause(a, err);
				return;
			}
		}
		peer.len = len;
		ph_addr_unmap(&peer);
		a->accept(a, fd, &peer); /* may close a: nothing of a is touched after the last */
		if (a->io.fd == -1 || a->held)
			return;
	}
	ph_task_queue(a->loop, &a->more); /* more may be waiting: after the others */
}

static void acc_on_io(struct ph_io *io, uint32_t events)
{
	(void)events;
	acc_some(container_of(io, struct ph_acceptor, io));
}

static void acc_on_more(struct ph_task *t)
{
	acc_some(container_of(t, struct ph_acceptor, more));
}

static void acc_on_pause(struct ph_timer *t)
{
	struct ph_acceptor *a = container_of(t, struct ph_acceptor, pause);

	a->paused = false;
	acc_some(a);
}

void ph_acceptor_init(struct ph_acceptor *a, int fd, unsigned cost, ph_accept_fn accept,
                      ph_accept_label_fn label)
{
	memset(a, 0, sizeof(*a));
	ph_io_init(&a->io, fd, acc_on_io);
	ph_timer_init(&a->pause, acc_on_pause);
	ph_task_init(&a->more, acc_on_more);
	a->accept = accept;
	a->label = label;
	a->cost = cost;
}

int ph_acceptor_start(struct ph_loop *l, struct ph_acceptor *a)
{
	a->loop = l;
	if (a->io.fd == -1)
		return 0;
	/* edge-triggered: what waits is taken now, by the task, and later edges call again */
	ph_task_queue(l, &a->more);
	return ph_io_add(l, &a->io, a->held ? 0 : EPOLLIN | EPOLLET);
}

void ph_acceptor_take(struct ph_loop *l, struct ph_acceptor *to, struct ph_acceptor *from)
{
	if (from->loop == NULL)
		from->loop = l;
	ph_io_forget(l, &from->io, &to->io.fd);
	ph_timer_stop(l, &from->pause);
	ph_task_cancel(&from->more);
	from->paused = false;
}

void ph_acceptor_hold(struct ph_acceptor *a, bool hold)
{
	if (a->held == hold)
		return;
	a->held = hold;
	if (a->loop == NULL || a->io.fd == -1)
		return; /* start registers it as held */
	(void)ph_io_mod(a->loop, &a->io, hold ? 0 : EPOLLIN | EPOLLET);
	if (hold)
		ph_task_cancel(&a->more);
	else
		ph_task_queue(a->loop, &a->more); /* those who waited meanwhile */
}

void ph_acceptor_close(struct ph_acceptor *a)
{
	ph_io_close(a->loop, &a->io); /* the loop is not needed to close */
	if (a->loop != NULL)
		ph_timer_stop(a->loop, &a->pause);
	ph_task_cancel(&a->more);
	a->paused = false;
}
