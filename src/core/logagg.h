/*
 * Failures that any peer can cause once per connection (resets, handshake timeouts, targets
 * that refuse) are counted at the default level rather than logged one line each: a client
 * resetting 2,000 connections a second must not write 2,000 lines a second. Each thread
 * notes into its own table (a worker's, or the main thread's), keyed by the rule's label,
 * what ended ("connections", "udp sessions", ...) and the cause, keeping the first one's
 * line as the example; every PH_LOGAGG_INTERVAL_MS the main thread sums the tables and logs
 * one line per label and cause with the count. At -v the caller's line is logged at once
 * (debug), one per connection, and nothing is counted.
 */
#ifndef PH_CORE_LOGAGG_H
#define PH_CORE_LOGAGG_H

#include <pthread.h>
#include <stdint.h>

#include "core/log.h"

#define PH_LOGAGG_INTERVAL_MS 10000 /* how often the main thread logs the counts */
#define PH_LOGAGG_SLOTS       32    /* (label, what, cause) kinds a table holds per interval */

struct ph_logagg_ent {
	char label[80]; /* the rule or service, as its other log lines name it */
	char what[24];  /* what ended, plural: "connections" */
	char cause[64]; /* why: "client reset" */
	uint64_t count;
	char first[256]; /* the first one's own line */
};

/* One thread's counts since the last report. */
struct ph_logagg {
	pthread_mutex_t lock; /* the owner per note, the main thread per report: rarely waited on */
	unsigned n;
	uint64_t lost; /* notes that found every slot taken by another kind */
	struct ph_logagg_ent ent[PH_LOGAGG_SLOTS];
};

/* Makes *a an empty table (its lock too); ph_logagg_destroy() undoes it. Cannot fail. */
void ph_logagg_init(struct ph_logagg *a);
/* Frees what init made; a must not be bound to a thread that still notes. */
void ph_logagg_destroy(struct ph_logagg *a);

/* From now on this thread's notes go to a (borrowed; NULL: each note is logged at once). */
void ph_logagg_bind(struct ph_logagg *a);

void ph_logagg_note_(const char *label, const char *what, const char *cause, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/*
 * One failure of what (a plural noun) under label for cause; fmt... is its own line. Below
 * -v it is counted in this thread's table (the line is formatted only when it is the first
 * of its kind); at -v or above the line is logged at debug at once; at -q nothing happens.
 */
#define ph_logagg_note(label, what, cause, ...)                                                    \
	do {                                                                                       \
		if (PH_LOG_INFO <= ph_log_level)                                                   \
			ph_logagg_note_((label), (what), (cause), __VA_ARGS__);                    \
	} while (0)

/* Moves what *from counted into *into (kinds merged, the earliest example kept). */
void ph_logagg_take(struct ph_logagg *into, struct ph_logagg *from);

/*
 * Logs a's counts (info), one line per kind, as counted over the last ms milliseconds, and
 * empties a. Returns the number of lines logged.
 */
unsigned ph_logagg_report(struct ph_logagg *a, uint64_t ms);

#endif /* PH_CORE_LOGAGG_H */
