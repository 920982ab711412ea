#include "core/logagg.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local struct ph_logagg *logagg_self;

void ph_logagg_init(struct ph_logagg *a)
{
	memset(a, 0, sizeof(*a));
	pthread_mutex_init(&a->lock, NULL);
}

void ph_logagg_destroy(struct ph_logagg *a)
{
	pthread_mutex_destroy(&a->lock);
}

void ph_logagg_bind(struct ph_logagg *a)
{
	logagg_self = a;
}

/* True when e is of the kind (label, what, cause), the way a slot stores it (truncated). */
static bool ent_is(const struct ph_logagg_ent *e, const char *label, const char *what,
                   const char *cause)
{
	return strncmp(e->label, label, sizeof(e->label) - 1) == 0 &&
	       strncmp(e->what, what, sizeof(e->what) - 1) == 0 &&
	       strncmp(e->cause, cause, sizeof(e->cause) - 1) == 0;
}

/* The slot of a kind in a (the caller holds its lock), a new one if room is left, or NULL. */
static struct ph_logagg_ent *ent_get(struct ph_logagg *a, const char *label, const char *what,
                                     const char *cause)
{
	struct ph_logagg_ent *e;

	for (unsigned i = 0; i < a->n; i++)
		if (ent_is(&a->ent[i], label, what, cause))
			return &a->ent[i];
	if (a->n == PH_LOGAGG_SLOTS)
		return NULL;
	e = &a->ent[a->n++];
	snprintf(e->label, sizeof(e->label), "%s", label);
	snprintf(e->what, sizeof(e->what), "%s", what);
	snprintf(e->cause, sizeof(e->cause), "%s", cause);
	e->count = 0;
	e->first[0] = '\0';
	return e;
}

void ph_logagg_note_(const char *label, const char *what, const char *cause, const char *fmt, ...)
{
	struct ph_logagg *a = logagg_self;
	struct ph_logagg_ent *e;
	va_list ap;

	if (a == NULL || PH_LOG_DEBUG <= ph_log_level) {
		/* -v: one line per connection; a thread with no table logs what it cannot count */
		char line[512];

		va_start(ap, fmt);
		vsnprintf(line, sizeof(line), fmt, ap);
		va_end(ap);
		ph_log_(a == NULL ? PH_LOG_INFO : PH_LOG_DEBUG, "%s", line);
		return;
	}
	pthread_mutex_lock(&a->lock);
	e = ent_get(a, label, what, cause);
	if (e == NULL) {
		a->lost++;
	} else if (e->count++ == 0) {
		va_start(ap, fmt);
		vsnprintf(e->first, sizeof(e->first), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&a->lock);
}

void ph_logagg_take(struct ph_logagg *into, struct ph_logagg *from)
{
	pthread_mutex_lock(&from->lock);
	for (unsigned i = 0; i < from->n; i++) {
		const struct ph_logagg_ent *f = &from->ent[i];
		struct ph_logagg_ent *e = ent_get(into, f->label, f->what, f->cause);

		if (e == NULL) {
			into->lost += f->count;
			continue;
		}
		if (e->count == 0)
			memcpy(e->first, f->first, sizeof(e->first));
		e->count += f->count;
	}
	into->lost += from->lost;
	from->n = 0;
	from->lost = 0;
	pthread_mutex_unlock(&from->lock);
}

unsigned ph_logagg_report(struct ph_logagg *a, uint64_t ms)
{
	unsigned long long secs = ms < 1000 ? 1 : (unsigned long long)(ms + 999) / 1000;
	unsigned lines = 0;

	pthread_mutex_lock(&a->lock);
	for (unsigned i = 0; i < a->n; i++) {
		const struct ph_logagg_ent *e = &a->ent[i];

		ph_info("%s: %llu %s in the last %llu s: %s (the first: %s)", e->label,
		        (unsigned long long)e->count, e->what, secs, e->cause, e->first);
		lines++;
	}
	if (a->lost != 0) {
		ph_info("%llu more failures of other kinds in the last %llu s (%d kinds are "
		        "counted apart)",
		        (unsigned long long)a->lost, secs, PH_LOGAGG_SLOTS);
		lines++;
	}
	a->n = 0;
	a->lost = 0;
	pthread_mutex_unlock(&a->lock);
	return lines;
}
