/*
 * rinetd.conf read unchanged, with rinetd's meaning: `pinhole run --rinetd FILE`, or a
 * FILE whose first line is a rinetd line (see rinetd.c for the mapping).
 */
#ifndef PH_CLI_RINETD_H
#define PH_CLI_RINETD_H

#include <stdbool.h>

#include "cli/conf.h"

struct ph_config;

/* Set by the fuzz harness: a bind address that is not a literal is a problem rather than
 * a name to look up (no DNS traffic from a fuzzer). */
extern bool ph_rinetd_no_lookups;

/* True when the words of a line w[0..n) are a rinetd line, not a pinhole command. */
bool ph_rinetd_line(char **w, int n);

/* As ph_conf_load, for a rinetd.conf. */
int ph_rinetd_load(const char *path, struct ph_config *cfg, ph_conf_report_fn report, void *arg);

#endif /* PH_CLI_RINETD_H */
