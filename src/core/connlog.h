/*
 * A log file with a line per connection event, in rinetd's formats (its logfile and
 * logcommon, as rinetd writes them), for people who feed those to their tools:
 * --log-file PATH [--log-format rinetd|common]. Lines are written with one write(2) each
 * to a file opened O_APPEND, so workers never interleave them.
 */
#ifndef PH_CORE_CONNLOG_H
#define PH_CORE_CONNLOG_H

#include <stdbool.h>
#include <stdint.h>

#include "core/addr.h"

enum ph_connlog_format {
	PH_CONNLOG_RINETD = 0, /* date, client, listen host, port, target host, port, bytes, what */
	PH_CONNLOG_COMMON = 1, /* a web server's common log format, as rinetd's logcommon */
};

/* Opens path for appending (mode 0640). Main thread, before the workers. Returns 0,
 * -ELOOP when path is a symbolic link, -EINVAL when it is not a regular file, or -errno. */
int ph_connlog_open(const char *path, enum ph_connlog_format format);

/* True when a log file is open. */
bool ph_connlog_on(void);

/*
 * One line: client, the address it came to (listen), the target (NULL: none yet), bytes
 * from the client and to it, and what happened ("opened", "done-local-closed", ...).
 */
void ph_connlog(const struct ph_addr *client, const struct ph_addr *listen,
                const struct ph_addr *target, uint64_t from_client, uint64_t to_client,
                const char *what);

void ph_connlog_close(void);

#endif /* PH_CORE_CONNLOG_H */
