/*
 * The services `pinhole run` (and forward, socks, server, expose on the command line) is
 * made of, each a struct ph_svc (core/svc.h) that the supervisor in src/pinhole.c starts,
 * reloads, drains and frees: the rules on the workers, the control socket and --metrics,
 * the relay and its clients. `pinhole map` is portmap's own service (portmap/portmap.h).
 */
#ifndef PH_RUN_RUN_H
#define PH_RUN_RUN_H

#include "ctl/ctl.h"

struct ph_config;
struct ph_svc;

#define PH_RUN_SPARE_PIPES 32 /* idle pipes a worker's pool keeps (and the fd budget counts) */

/*
 * The forward and socks rules of cfg (borrowed, but its rules are the service's: a reload
 * changes them, and they are freed with the service, before the workers they have parts
 * on) on nw worker threads, with their --map keepers; reloads cfg->run_file. nw may be 0
 * (no rules, no FILE). Returns 0 and the service in *out, or -ENOMEM.
 */
int ph_run_rules_new(struct ph_config *cfg, unsigned nw, struct ph_svc **out);

/*
 * The control socket (--control) and --metrics of cfg (borrowed); fn(arg, command) answers
 * them. Returns 0 and the service in *out, or -ENOMEM.
 */
int ph_run_control_new(const struct ph_config *cfg, ph_ctl_fn fn, void *arg, struct ph_svc **out);

/*
 * The relay (`server`) and the exposer (`expose` rules) of cfg (borrowed), on the main
 * thread's loop. Returns 0 and the service in *out, or -ENOMEM.
 */
int ph_run_tunnel_new(const struct ph_config *cfg, struct ph_svc **out);

/*
 * `check PORT --via RELAY` (map NULL): asks cfg's relay (borrowed) once, prints the answer
 * and ends with its status (0 open, 1 else). With map, the map service of `map --check`:
 * asks about each mapping it makes, once per protocol, and ends without changing the
 * status (with --once: 1 unless every mapping was found open). Returns 0 and the service
 * in *out, or -ENOMEM.
 */
int ph_run_check_new(const struct ph_config *cfg, struct ph_svc *map, struct ph_svc **out);

#endif /* PH_RUN_RUN_H */
