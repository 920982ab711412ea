/*
 * A service: one thing the supervisor (src/pinhole.c) runs on the main thread's loop - the
 * forward and socks rules on their workers, the control socket, the relay and its clients,
 * a router's port mapping. The supervisor calls the same hooks of every service, in order:
 * open (as the user that started us), then --user and the sandbox, then start; reload and
 * status while it runs; drain at the first SIGTERM, stop when draining must end now; free.
 * It lives below the verbs so that a verb implements it without including another verb.
 */
#ifndef PH_CORE_SVC_H
#define PH_CORE_SVC_H

#include <stdbool.h>
#include <stddef.h>

struct ph_loop;
struct ph_logagg;
struct ph_svc;

/* What a status hook writes. */
enum ph_svc_fmt {
	PH_SVC_TEXT = 0, /* `pinhole status` */
	PH_SVC_JSON,     /* `pinhole status --json`: fields of the one object */
	PH_SVC_METRICS,  /* --metrics: the Prometheus text */
};

/* Why a service is told to stop now rather than finish draining. */
enum ph_svc_stop {
	PH_SVC_AGAIN = 0, /* a second signal while draining */
	PH_SVC_TIMEOUT,   /* --drain-timeout ran out */
};

/* The reply to one reload: the lines every service said, for `pinhole reload`. */
struct ph_svc_reload {
	char msg[4096];
};

/* The hooks; any may be NULL (nothing to do; a service without done() is always done). */
struct ph_svc_ops {
	const char *name;
	/* Before --user and the sandbox: bind, open files, read keys. Returns 0, or -errno
	 * with the reason already on stderr. */
	int (*open)(struct ph_svc *s);
	/* After the sandbox: threads and timers. Returns 0, or -errno with the reason said. */
	int (*start)(struct ph_svc *s);
	/* SIGHUP or `pinhole reload`: its lines go through ph_svc_say(r, ...). */
	void (*reload)(struct ph_svc *s, struct ph_svc_reload *r);
	/*
	 * Adds its part of a status reply to reply (malloc'd, *len bytes; NULL when no
	 * service made one yet). Returns the reply, perhaps moved: a service that cannot add
	 * its part returns reply as it was.
	 */
	char *(*status)(struct ph_svc *s, enum ph_svc_fmt f, char *reply, size_t *len);
	/* Logs its counters, each line starting with what ("stats", "stopped"). */
	void (*stats)(struct ph_svc *s, const char *what);
	/* Adds the failures its threads counted (core/logagg.h) to sum. */
	void (*failures)(struct ph_svc *s, struct ph_logagg *sum);
	/* The first SIGTERM or SIGINT: no new work; what runs may finish. */
	void (*drain)(struct ph_svc *s);
	/* Draining ends now: close what is left. */
	void (*stop)(struct ph_svc *s, enum ph_svc_stop why);
	/* True when nothing of it runs any more: the loop may end. */
	bool (*done)(struct ph_svc *s);
	/* Frees it (the loop has ended, or it never started); its threads are joined. */
	void (*free)(struct ph_svc *s);
};

/* Embedded in a service; the supervisor fills in all but ops before calling open. */
struct ph_svc {
	const struct ph_svc_ops *ops;
	struct ph_loop *loop;                          /* borrowed: the main thread's */
	void (*changed)(struct ph_svc *s, int status); /* the supervisor's: ph_svc_changed */
	void *sup;                                     /* the supervisor, for changed */
};

/*
 * Tells the supervisor that s changed on its own: it may be done now (the loop ends once
 * every service is), or, with status != 0, it cannot go on and the process is to stop
 * every service and exit with status.
 */
void ph_svc_changed(struct ph_svc *s, int status);

/* Logs a line of a reload (an error or not) and adds it to r's reply. */
void ph_svc_say(struct ph_svc_reload *r, bool error, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif /* PH_CORE_SVC_H */
