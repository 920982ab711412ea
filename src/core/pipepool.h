/*
 * Per-worker pool of pipes for splice. A connection takes a pipe only while bytes are in
 * flight and gives it back as soon as the pipe is empty, so idle connections hold none
 * [haproxy pipe pool].
 */
#ifndef PH_CORE_PIPEPOOL_H
#define PH_CORE_PIPEPOOL_H

#include <stdint.h>

struct ph_pipe {
	int fd[2];            /* [0] read end, [1] write end, both non-blocking */
	struct ph_pipe *next; /* free-list link while pooled */
};

struct ph_pipepool {
	struct ph_pipe *free; /* owned spare pipes */
	unsigned nfree, max_free;
	unsigned size;         /* requested pipe capacity in bytes (F_SETPIPE_SZ), 0 = kernel's */
	unsigned capacity;     /* the capacity the kernel granted to the last pipe made */
	uint64_t made, failed; /* counters: pipes created, creations that failed */
};

/* Prepares an empty pool keeping at most max_free spare pipes of the given size. */
void ph_pipepool_init(struct ph_pipepool *pp, unsigned max_free, unsigned size);

/* Takes a pipe, creating one if none is spare. Returns 0 and the pipe in *out, or -errno. */
int ph_pipe_get(struct ph_pipepool *pp, struct ph_pipe **out);

/* Returns an empty pipe to the pool (or closes it when the pool is full). */
void ph_pipe_put(struct ph_pipepool *pp, struct ph_pipe *p);

/* Closes a pipe that may still hold bytes (they are dropped). */
void ph_pipe_discard(struct ph_pipepool *pp, struct ph_pipe *p);

void ph_pipepool_free(struct ph_pipepool *pp);

#endif /* PH_CORE_PIPEPOOL_H */
