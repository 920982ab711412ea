/*
 * Logging to stderr, one write(2) per line so lines from several workers never interleave.
 * The level is tested before the arguments are evaluated [redis].
 */
#ifndef PH_CORE_LOG_H
#define PH_CORE_LOG_H

#include <stdbool.h>
#include <stdint.h>

enum ph_log_level {
	PH_LOG_ERR = 0, /* something failed that the operator must know about */
	PH_LOG_WARN,    /* a peer or target misbehaved; service goes on */
	PH_LOG_INFO,    /* start, stop, one line per refused or failed connection */
	PH_LOG_DEBUG,   /* one line per connection */
	PH_LOG_TRACE,   /* every state change */
	PH_LOG__NLEVELS /* must stay last */
};

extern enum ph_log_level ph_log_level;

/* The worker index shown in each line of this thread, -1 for the main thread. */
void ph_log_set_worker(int id);

void ph_log_(enum ph_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define ph_log(lvl, ...)                                                                           \
	do {                                                                                       \
		if ((lvl) <= ph_log_level)                                                         \
			ph_log_(lvl, __VA_ARGS__);                                                 \
	} while (0)
#define ph_err(...)   ph_log(PH_LOG_ERR, __VA_ARGS__)
#define ph_warn(...)  ph_log(PH_LOG_WARN, __VA_ARGS__)
#define ph_info(...)  ph_log(PH_LOG_INFO, __VA_ARGS__)
#define ph_debug(...) ph_log(PH_LOG_DEBUG, __VA_ARGS__)
#define ph_trace(...) ph_log(PH_LOG_TRACE, __VA_ARGS__)

/* At most max lines per second of one kind; what is held back is counted. */
struct ph_ratelimit {
	uint64_t window; /* the second being counted, ms of the monotonic clock / 1000 */
	unsigned count;
	unsigned suppressed; /* held back in the previous windows, reported with the next line */
};

/* True when one more line may be logged at time now_ms; otherwise counts it as suppressed. */
bool ph_ratelimit_ok(struct ph_ratelimit *rl, uint64_t now_ms, unsigned max);

/* Prints "pinhole: MSG" to stderr and exits with status code. For start-up only. */
void ph_fatal(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));

/* Traps in debug builds, logs once in release [haproxy CHECK_IF, kernel WARN_ON_ONCE]. */
#ifdef NDEBUG
#define PH_BUG_ON(cond)                                                                            \
	do {                                                                                       \
		static bool warned_;                                                               \
		if ((cond) && !warned_) {                                                          \
			warned_ = true;                                                            \
			ph_err("bug: %s at %s:%d", #cond, __FILE__, __LINE__);                     \
		}                                                                                  \
	} while (0)
#else
#define PH_BUG_ON(cond)                                                                            \
	do {                                                                                       \
		if (cond) {                                                                        \
			ph_log_(PH_LOG_ERR, "bug: %s at %s:%d", #cond, __FILE__, __LINE__);        \
			__builtin_trap();                                                          \
		}                                                                                  \
	} while (0)
#endif

#endif /* PH_CORE_LOG_H */
