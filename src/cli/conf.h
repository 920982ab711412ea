/*
 * Config files for `pinhole run FILE`: every line is the words you would type after
 * `pinhole` (DESIGN.md: one grammar), split the way a shell would ('single', "double"
 * quotes, backslash escapes, # comments, a trailing backslash joins the next line), and
 * parsed by ph_cli_parse. `include PATTERN...` reads other files (glob patterns, relative
 * to the including file). Problems name FILE:LINE and the word.
 */
#ifndef PH_CLI_CONF_H
#define PH_CLI_CONF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

struct ph_config;

#define PH_CONF_MAX_WORDS   256 /* words on one line */
#define PH_CONF_MAX_INCLUDE 8   /* include depth */

/*
 * Splits line (changed in place: quotes and escapes are removed) into at most max words
 * that point into it. Returns the number of words (0 for a blank or comment line), or
 * -EINVAL with a static reason in *why and the 1-based column of the trouble in *col.
 */
int ph_conf_split(char *line, char **words, int max, const char **why, int *col);

struct ph_rule;

/* Records where rule r was written (FILE:LINE) and its words, which tell a reload whether
 * the rule changed. Returns 0 or -ENOMEM. */
int ph_conf_rule_origin(struct ph_rule *r, const char *file, unsigned line, char *const *words,
                        int n);

/* Called once per problem: "FILE:LINE: what" in msg. */
typedef void (*ph_conf_report_fn)(void *arg, const char *msg);

/* Reports "FILE:LINE: " (or "FILE: " for line 0) and the formatted rest. */
void ph_conf_vreport(ph_conf_report_fn report, void *arg, const char *file, unsigned line,
                     const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));

/*
 * Reads the rules of path (and of the files it includes) into cfg, then checks them as a
 * whole (two rules on one listening address, two rules with one name). Every problem is
 * reported; returns how many there were (0: cfg holds the rules), or -ENOMEM.
 */
int ph_conf_load(const char *path, struct ph_config *cfg, ph_conf_report_fn report, void *arg);

#endif /* PH_CLI_CONF_H */
