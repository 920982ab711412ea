#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum ph_log_level ph_log_level = PH_LOG_INFO;

static _Thread_local int log_worker = -1;

static const char *const level_name[PH_LOG__NLEVELS] = {"error", "warn", "info", "debug", "trace"};

void ph_log_set_worker(int id)
{
	log_worker = id;
}

void ph_log_(enum ph_log_level level, const char *fmt, ...)
{
	char line[4096];
	struct timeval tv;
	struct tm tm;
	va_list ap;
	size_t n;
	int r;

	gettimeofday(&tv, NULL);
	localtime_r(&tv.tv_sec, &tm);
	n = strftime(line, sizeof(line), "%H:%M:%S", &tm);
	if (log_worker >= 0)
		r = snprintf(line + n, sizeof(line) - n, ".%03ld %s w%d: ", (long)tv.tv_usec / 1000,
		             level_name[level], log_worker);
	else
		r = snprintf(line + n, sizeof(line) - n, ".%03ld %s: ", (long)tv.tv_usec / 1000,
		             level_name[level]);
	n += (size_t)r;
	va_start(ap, fmt);
	r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
	va_end(ap);
	n = r < 0 ? n : n + (size_t)r;
	if (n > sizeof(line) - 2)
		n = sizeof(line) - 2; /* truncated: keep the newline */
	line[n++] = '\n';
	/* a single write keeps lines whole between threads; nothing to do if stderr is gone */
	if (write(STDERR_FILENO, line, n) < 0)
		return;
}

void ph_fatal(int code, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	fprintf(stderr, "pinhole: %s\n", line);
	exit(code);
}

bool ph_ratelimit_ok(struct ph_ratelimit *rl, uint64_t now_ms, unsigned max)
{
	uint64_t sec = now_ms / 1000;

	if (sec != rl->window) {
		rl->window = sec;
		rl->count = 0;
	}
	if (rl->count >= max) {
		rl->suppressed++;
		return false;
	}
	rl->count++;
	return true;
}
