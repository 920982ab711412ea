#include "core/pipepool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "config.h"
#include "core/sys.h"

void ph_pipepool_init(struct ph_pipepool *pp, unsigned max_free, unsigned size)
{
	pp->free = NULL;
	pp->nfree = 0;
	pp->max_free = PH_POOL_DEBUG ? 0 : max_free; /* pool_debug: always really close */
	pp->size = size;
	pp->capacity = 65536;
	pp->made = pp->failed = 0;
}

int ph_pipe_get(struct ph_pipepool *pp, struct ph_pipe **out)
{
	struct ph_pipe *p = pp->free;
	int r;

	*out = NULL;
	if (p != NULL) {
		pp->free = p->next;
		pp->nfree--;
		*out = p;
		return 0;
	}
	p = malloc(sizeof(*p));
	if (p == NULL) {
		pp->failed++;
		return -ENOMEM;
	}
	if (ph_sys.pipe2(p->fd, O_NONBLOCK | O_CLOEXEC) == -1) {
		int err = -errno;

		free(p);
		pp->failed++;
		return err;
	}
	if (pp->size != 0) {
		/* best effort: a smaller pipe still works, only with more syscalls */
		r = fcntl(p->fd[1], F_SETPIPE_SZ, (int)pp->size);
		if (r > 0)
			pp->capacity = (unsigned)r;
	} else {
		r = fcntl(p->fd[1], F_GETPIPE_SZ);
		if (r > 0)
			pp->capacity = (unsigned)r;
	}
	pp->made++;
	*out = p;
	return 0;
}

static void pipe_close(struct ph_pipe *p)
{
	close(p->fd[0]);
	close(p->fd[1]);
	free(p);
}

void ph_pipe_put(struct ph_pipepool *pp, struct ph_pipe *p)
{
	if (pp->nfree >= pp->max_free) {
		pipe_close(p);
		return;
	}
	p->next = pp->free;
	pp->free = p;
	pp->nfree++;
}

void ph_pipe_discard(struct ph_pipepool *pp, struct ph_pipe *p)
{
	(void)pp;
	pipe_close(p); /* a pipe with stale bytes must never be reused */
}

void ph_pipepool_free(struct ph_pipepool *pp)
{
	while (pp->free != NULL) {
		struct ph_pipe *p = pp->free;

		pp->free = p->next;
		pipe_close(p);
	}
	pp->nfree = 0;
}
