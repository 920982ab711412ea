/*
 * The service interface's two helpers (core/svc.h): the rest is hooks that each service
 * fills in and the supervisor calls.
 */
#include "core/svc.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"

void ph_svc_changed(struct ph_svc *s, int status)
{
	if (s->changed != NULL)
		s->changed(s, status);
}

void ph_svc_say(struct ph_svc_reload *r, bool error, const char *fmt, ...)
{
	size_t used = strlen(r->msg);
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (error)
		ph_err("%s", line);
	else
		ph_info("%s", line);
	/* a reply that is full keeps its first lines: the log has them all */
	if (used + strlen(line) + 2 < sizeof(r->msg))
		snprintf(r->msg + used, sizeof(r->msg) - used, "%s\n", line);
}
