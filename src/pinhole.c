/*
 * pinhole: the command line. Parses the words (one grammar, src/cli/), then runs the rules
 * on the worker threads while the main thread owns the signals.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/conf.h"
#include "config.h"
#include "conn/accept.h"
#include "core/acl.h"
#include "core/connlog.h"
#include "core/log.h"
#include "core/logagg.h"
#include "core/resolve.h"
#include "core/sandbox.h"
#include "core/service.h"
#include "core/util.h"
#include "core/worker.h"
#include "ctl/ctl.h"
#include "forward/forward.h"
#include "portmap/portmap.h"
#include "socks/socks.h"
#include "tunnel/keys.h"
#include "tunnel/tunnel.h"

#define FDS_BASE        32 /* stdio, epoll, eventfds, resolver sockets, a spare */
#define FDS_PER_WORKER  8  /* epoll, eventfd, listener, spare pipes */
#define FDS_PER_CONN    4  /* client, target, and a pipe while bytes are in flight */
#define FDS_SPARE_PIPES 32 /* idle pipes a worker's pool keeps */

#define PIPE_SIZE_ROOT (1u << 20) /* default splice pipe size as root */
#define PIPE_SIZE_USER (1u << 18) /* and as another user */

/* The main thread's view while the workers run. */
struct ph_main {
	struct ph_loop loop;
	struct ph_io sig_io;
	struct ph_io done_io;
	struct ph_timer drain;
	struct ph_worker **w;
	unsigned nw, started, ended;
	uint64_t drain_timeout;
	bool draining, aborting;
	bool udp;                  /* some rule forwards UDP: its counters get a line */
	struct ph_config *cfg;     /* the rules running now */
	struct ph_rule **retiring; /* owned: removed by a reload, finishing */
	unsigned nretiring;
	struct ph_list plans;       /* struct reload_plan not run by every worker yet */
	struct ph_hostaddrs *self;  /* owned: this host's addresses, the workers' self_addrs */
	struct ph_timer retire;     /* frees what finished, once a second while any is left */
	struct ph_ctl *ctl;         /* owned: the control socket, or NULL */
	struct ph_ctl *metrics;     /* owned: the --metrics endpoint, or NULL */
	uint64_t start;             /* loop ms at start, for the uptime */
	struct ph_list unmapping;   /* struct unmapping: --map keepers deleting their mappings */
	char reload_msg[4096];      /* what the last reload said, for `pinhole reload` */
	struct ph_relay *relay;     /* owned: `server`, or NULL */
	struct ph_exposer *exposer; /* owned: the `expose` rules, or NULL */
	struct ph_task fatal;       /* the exposer gave up: stop, exit status 1 */
	struct ph_task tunnel_end;  /* frees the relay and exposer after this round's events */
	bool failed;
	struct ph_tunnel_stats relay_last, expose_last; /* what they carried, once freed */
	struct ph_logagg agg;     /* failures counted on this thread (the relay, expose) */
	struct ph_timer agg_tick; /* logs every thread's counted failures */
	uint64_t agg_since;       /* loop ms of the last such line */
};

/* A --map keeper told to stop, until it has deleted its mappings. */
struct unmapping {
	struct ph_list node; /* in ph_main.unmapping */
	struct ph_main *m;
	struct ph_map_keeper *k;
};

/* What one reload asks of every worker, in order: attach the new rules, detach the old. */
struct reload_plan {
	struct ph_list node; /* in ph_main.plans */
	struct ph_rule **add, **del;
	unsigned nadd, ndel;
	struct ph_worker_call *calls;    /* owned: one per worker */
	unsigned pending;                /* atomic: workers that have not run it yet */
	const struct ph_hostaddrs *self; /* this host's addresses read again: the workers' */
	struct ph_hostaddrs *old_self;   /* owned: the table it replaces, freed with the plan */
};

static void log_rule(const struct ph_rule *r, unsigned nw);

/* Logs a line of a reload and keeps it for the `pinhole reload` that asked, if any. */
static void reload_say(struct ph_main *m, bool error, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void reload_say(struct ph_main *m, bool error, const char *fmt, ...)
{
	size_t used = strlen(m->reload_msg);
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (error)
		ph_err("%s", line);
	else
		ph_info("%s", line);
	if (used + strlen(line) + 2 < sizeof(m->reload_msg))
		snprintf(m->reload_msg + used, sizeof(m->reload_msg) - used, "%s\n", line);
}

static void log_problem(void *arg, const char *msg)
{
	reload_say(arg, true, "%s", msg);
}

/* How logs name a rule of a config file: its --name, or where it is written. */
static const char *rule_origin(const struct ph_rule *r)
{
	return r->name[0] != '\0' ? r->name : r->origin;
}

/* --map: a keeper of a router mapping for r's listen port, for as long as r runs. */
static void map_start(struct ph_main *m, struct ph_rule *r)
{
	struct ph_map_conf mc;
	char label[96];
	int err;

	if (!r->map || r->keeper != NULL)
		return;
	ph_map_conf_init(&mc);
	mc.internal = ph_addr_port(&r->listen.addr);
	mc.protos = (r->listen.proto & PH_PROTO_TCP ? PH_MAP_TCP : 0) |
	            (r->listen.proto & PH_PROTO_UDP ? PH_MAP_UDP : 0);
	snprintf(label, sizeof(label), "%.80s", r->name[0] ? r->name : r->origin);
	if (label[0] == '\0')
		snprintf(label, sizeof(label), "%s :%u",
		         r->kind == PH_RULE_SOCKS ? "socks" : "forward", mc.internal);
	if (!r->listen.wildcard && ph_map_addr_is_private(&r->listen.addr) &&
	    ((r->listen.addr.u.sa.sa_family == AF_INET &&
	      (ntohl(r->listen.addr.u.in.sin_addr.s_addr) >> 24) == 127) ||
	     (r->listen.addr.u.sa.sa_family == AF_INET6 &&
	      IN6_IS_ADDR_LOOPBACK(&r->listen.addr.u.in6.sin6_addr))))
		ph_warn("%s: --map on a loopback address: what the router forwards here cannot "
		        "reach it (listen on :PORT or the LAN address)",
		        label);
	err = ph_map_keeper_start(&m->loop, &mc, label, &r->keeper);
	if (err < 0)
		ph_warn("%s: --map: cannot ask the router (%s); the rule runs without a mapping",
		        label, strerror(-err));
}

/* Stops the loop once every worker ended and every mapping is deleted. */
static void main_maybe_stop(struct ph_main *m)
{
	if (m->ended >= m->started && ph_list_empty(&m->unmapping) && (m->draining || m->aborting))
		ph_loop_stop(&m->loop);
}

static void main_on_unmapped(void *arg)
{
	struct unmapping *u = arg;
	struct ph_main *m = u->m;

	ph_list_del(&u->node);
	free(u);
	main_maybe_stop(m);
}

/* r's keeper deletes its mapping and goes (the rule is removed, or pinhole stops). */
static void map_stop(struct ph_main *m, struct ph_rule *r)
{
	struct unmapping *u;

	if (r->keeper == NULL)
		return;
	u = calloc(1, sizeof(*u));
	if (u == NULL) {
		ph_map_keeper_stop(r->keeper, NULL, NULL);
		r->keeper = NULL;
		return;
	}
	u->m = m;
	u->k = r->keeper;
	r->keeper = NULL;
	ph_list_add_tail(&m->unmapping, &u->node);
	ph_map_keeper_stop(u->k, main_on_unmapped, u);
}

static void main_abort(struct ph_main *m)
{
	if (m->aborting)
		return;
	m->aborting = true;
	for (unsigned i = 0; i < m->nw; i++)
		ph_worker_post(m->w[i], PH_WORKER_ABORT);
}

static void main_on_drain_timeout(struct ph_timer *t)
{
	struct ph_main *m = container_of(t, struct ph_main, drain);
	struct ph_stats s;

	ph_stats_sum(m->w, m->nw, &s);
	ph_warn("drain timeout: closing %llu connections still open", (unsigned long long)s.active);
	main_abort(m);
}

/* The counters of the relay or the exposer (live, or what they carried when freed). */
static void log_tunnel_stats(const char *what, const char *kind, const struct ph_tunnel_stats *t)
{
	char up[32], down[32];

	ph_info("%s: %s: %llu sessions, %llu visitors, %s up, %s down, %llu datagrams", what, kind,
	        (unsigned long long)t->sessions, (unsigned long long)t->visitors,
	        ph_fmt_bytes(t->bytes_up, up, sizeof(up)),
	        ph_fmt_bytes(t->bytes_down, down, sizeof(down)), (unsigned long long)t->dgrams);
}

static void log_stats(struct ph_main *m, const char *what)
{
	struct ph_stats s;
	char up[32], down[32];

	if (m->cfg->server != NULL) {
		if (m->relay != NULL)
			ph_relay_stats(m->relay, &m->relay_last);
		log_tunnel_stats(what, "relay", &m->relay_last);
	}
	if (m->cfg->nexpose != 0) {
		if (m->exposer != NULL)
			ph_expose_stats(m->exposer, &m->expose_last);
		log_tunnel_stats(what, "expose", &m->expose_last);
	}
	if (m->nw == 0 && m->cfg->nrules == 0)
		return; /* no forward rule: its counters would say "0 connections" */
	ph_stats_sum(m->w, m->nw, &s);
	ph_info("%s: %llu connections (%llu active), %s up, %s down, %llu bytes spliced, "
	        "%llu copied, %llu denied, %llu over limit, %llu target failures, %llu resets, "
	        "%llu errors",
	        what, (unsigned long long)s.accepted, (unsigned long long)s.active,
	        ph_fmt_bytes(s.bytes_up, up, sizeof(up)),
	        ph_fmt_bytes(s.bytes_down, down, sizeof(down)), (unsigned long long)s.spliced,
	        (unsigned long long)s.copied, (unsigned long long)s.denied,
	        (unsigned long long)s.over_limit, (unsigned long long)s.connect_failed,
	        (unsigned long long)s.resets, (unsigned long long)s.errors);
	if (m->udp)
		ph_info("%s udp: %llu sessions (%llu active), %llu datagrams up, %llu down, "
		        "%llu dropped, %llu evicted",
		        what, (unsigned long long)s.udp_sessions, (unsigned long long)s.udp_active,
		        (unsigned long long)s.dgrams_up, (unsigned long long)s.dgrams_down,
		        (unsigned long long)s.dgrams_dropped, (unsigned long long)s.udp_evicted);
}

/* Logs the failures every thread counted since the last time (one line per kind). */
static void log_failures(struct ph_main *m)
{
	struct ph_logagg *sum = malloc(sizeof(*sum));

	if (sum == NULL)
		return; /* the counts wait for the next tick */
	ph_logagg_init(sum);
	ph_logagg_take(sum, &m->agg);
	for (unsigned i = 0; i < m->nw; i++)
		ph_logagg_take(sum, &m->w[i]->agg);
	ph_logagg_report(sum, m->loop.now - m->agg_since);
	m->agg_since = m->loop.now;
	ph_logagg_destroy(sum);
	free(sum);
}

static void main_on_agg_tick(struct ph_timer *t)
{
	struct ph_main *m = container_of(t, struct ph_main, agg_tick);

	log_failures(m);
	ph_timer_arm(&m->loop, &m->agg_tick, PH_LOGAGG_INTERVAL_MS);
}

static void plan_free(struct reload_plan *p)
{
	ph_list_del(&p->node);
	ph_hostaddrs_free(p->old_self); /* every worker ran the plan, or none is left */
	free(p->add);
	free(p->del);
	free(p->calls);
	free(p);
}

/* On each worker: the reload's new rules start there, then the removed ones stop. */
static void plan_run(struct ph_worker *w, void *arg)
{
	struct reload_plan *p = arg;

	for (unsigned i = 0; i < p->nadd; i++)
		ph_forward_attach(p->add[i], (unsigned)w->id);
	for (unsigned i = 0; i < p->ndel; i++)
		ph_forward_detach(p->del[i], (unsigned)w->id);
	if (p->self != NULL)
		w->self_addrs = p->self;
	__atomic_fetch_sub(&p->pending, 1, __ATOMIC_ACQ_REL);
}

/*
 * Waits (bounded) until every worker ran the plan, so that "reloaded" means the removed
 * listeners are closed and the new ones accept. Workers never block, so this takes about
 * one loop round; after 2 s it goes on and the plan is freed later as usual.
 */
static void plan_wait(const struct reload_plan *p)
{
	const struct timespec ms = {.tv_sec = 0, .tv_nsec = 1000000};

	for (unsigned i = 0; i < 2000; i++) {
		if (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) == 0)
			return;
		nanosleep(&ms, NULL);
	}
	ph_warn("reload: a worker has not switched over after 2 s");
}

/* Frees the plans every worker ran and the removed rules every worker is done with. */
static void main_on_retire(struct ph_timer *t)
{
	struct ph_main *m = container_of(t, struct ph_main, retire);
	struct ph_list *it, *tmp;
	unsigned k = 0;

	ph_list_for_each_safe(it, tmp, &m->plans) {
		struct reload_plan *p = container_of(it, struct reload_plan, node);

		if (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) != 0)
			continue;
		for (unsigned i = 0; i < p->nadd; i++)
			p->add[i]->from_tcp = p->add[i]->from_udp = NULL; /* the old rules may go */
		plan_free(p);
	}
	for (unsigned i = 0; i < m->nretiring; i++) {
		struct ph_rule *r = m->retiring[i];
		bool in_plan = false;

		ph_list_for_each_safe(it, tmp, &m->plans) {
			struct reload_plan *p = container_of(it, struct reload_plan, node);

			for (unsigned j = 0; j < p->nadd && !in_plan; j++)
				in_plan = p->add[j]->from_tcp == r || p->add[j]->from_udp == r;
		}
		if (!in_plan && ph_forward_retired(r)) {
			ph_info("%s: the last connection of the removed rule ended",
			        rule_origin(r));
			ph_forward_rule_free(r);
		} else {
			m->retiring[k++] = r;
		}
	}
	m->nretiring = k;
	if (m->nretiring != 0 || !ph_list_empty(&m->plans))
		ph_timer_arm(&m->loop, t, 1000);
}

/* Written alike, both with protocol proto: the new rule takes that listener over. */
static bool same_listen(const struct ph_hostport *a, const struct ph_hostport *b, unsigned proto)
{
	return (a->proto & b->proto & proto) != 0 && a->port == b->port &&
	       a->wildcard == b->wildcard && strcmp(a->host, b->host) == 0;
}

/* The removed rule whose proto listener r takes over, each taken once; or NULL. */
static struct ph_rule *takeover(const struct ph_config *cfg, const bool *kept,
                                const struct reload_plan *p, const struct ph_rule *r,
                                unsigned proto)
{
	for (unsigned i = 0; i < cfg->nrules; i++) {
		struct ph_rule *o = cfg->rules[i];
		bool taken = false;

		if (kept[i] || !same_listen(&o->listen, &r->listen, proto))
			continue;
		for (unsigned k = 0; k < p->nadd; k++)
			taken |= (proto == PH_PROTO_TCP ? p->add[k]->from_tcp
			                                : p->add[k]->from_udp) == o;
		if (!taken)
			return o;
	}
	return NULL;
}

static bool same_spec(const struct ph_rule *a, const struct ph_rule *b)
{
	if (a->spec == NULL || b->spec == NULL || a->spec_len != b->spec_len ||
	    memcmp(a->spec, b->spec, a->spec_len) != 0)
		return false;
	/* the same line may name a --users file whose users changed */
	return a->socks == NULL || b->socks == NULL || ph_socks_conf_same_users(a->socks, b->socks);
}

/*
 * SIGHUP: reads the file again. When it is good, rules whose line is unchanged keep
 * running untouched, new rules start (taking over the listeners of a removed rule on the
 * very same address), and removed rules stop accepting while their connections finish.
 * When it is bad, or a new listener cannot be bound, nothing changes.
 */
static void main_reload(struct ph_main *m)
{
	struct ph_config *cfg = m->cfg, nc;
	struct ph_rule **final = NULL;
	struct reload_plan *p = NULL;
	struct ph_hostaddrs *self;
	bool *kept = NULL;
	char why[1024];
	unsigned nkept = 0;
	int n;

	m->reload_msg[0] = '\0';
	if (m->draining) {
		snprintf(m->reload_msg, sizeof(m->reload_msg), "stopping: no reload now\n");
		return;
	}
	if (m->relay != NULL) { /* authorized keys: a removed key loses its sessions now */
		n = ph_relay_reload(m->relay, why, sizeof(why));
		/* the reply's last line says how it went: "reloaded" when the relay is all */
		reload_say(m, n < 0, "%s%s",
		           n < 0                   ? "reload: relay: "
		           : cfg->run_file == NULL ? "reloaded the relay's keys: "
		                                   : "relay: ",
		           why);
	}
	if (cfg->run_file == NULL) {
		if (m->relay != NULL)
			return;
		ph_warn("SIGHUP: the rules came from the command line; nothing to reload "
		        "(pinhole run FILE reloads FILE)");
		snprintf(m->reload_msg, sizeof(m->reload_msg),
		         "nothing to reload: the rules came from the command line\n");
		return;
	}
	ph_config_init(&nc);
	nc.rinetd = cfg->rinetd;
	n = ph_conf_load(cfg->run_file, &nc, log_problem, m);
	if (n == 0 && nc.nrules == 0 && nc.server == NULL && nc.nexpose == 0) {
		reload_say(m, true, "%s: no rules", cfg->run_file);
		n = 1;
	}
	if (n != 0) {
		reload_say(m, true, "reload: %s: %s; the running rules stay as they are",
		           cfg->run_file, n < 0 ? "out of memory" : "problems above");
		goto out;
	}
	final = calloc(nc.nrules, sizeof(*final));
	kept = calloc(cfg->nrules + 1, sizeof(*kept));
	p = calloc(1, sizeof(*p));
	if (final == NULL || kept == NULL || p == NULL ||
	    (p->add = calloc(nc.nrules, sizeof(*p->add))) == NULL ||
	    (p->del = calloc(cfg->nrules + 1, sizeof(*p->del))) == NULL ||
	    (p->calls = calloc(m->nw, sizeof(*p->calls))) == NULL) {
		reload_say(m, true, "reload: out of memory; the running rules stay as they are");
		goto out;
	}
	ph_list_init(&p->node);
	/* unchanged lines keep their running rule */
	for (unsigned j = 0; j < nc.nrules; j++) {
		for (unsigned i = 0; i < cfg->nrules && final[j] == NULL; i++) {
			if (!kept[i] && same_spec(cfg->rules[i], nc.rules[j])) {
				kept[i] = true;
				final[j] = cfg->rules[i];
				nkept++;
			}
		}
	}
	/* the others start, on a removed rule's listeners when they listen just the same */
	for (unsigned j = 0; j < nc.nrules; j++) {
		struct ph_rule *r = nc.rules[j];
		int err;

		if (final[j] != NULL)
			continue;
		if ((r->listen.proto & PH_PROTO_UDP) && r->max_sessions == 0)
			r->max_sessions = cfg->udp_sessions;
		/* per protocol: a tcp+udp rule may come from two rules, or go to two */
		err = ph_forward_bind(r, m->w, m->nw, takeover(cfg, kept, p, r, PH_PROTO_TCP),
		                      takeover(cfg, kept, p, r, PH_PROTO_UDP), why, sizeof(why));
		if (err < 0) {
			reload_say(m, true, "reload: %s: %s; the running rules stay as they are",
			           r->origin, why);
			goto out; /* the rules bound so far are nc's: freed with it, unattached */
		}
		final[j] = r;
		p->add[p->nadd++] = r;
	}
	for (unsigned i = 0; i < cfg->nrules; i++)
		if (!kept[i])
			p->del[p->ndel++] = cfg->rules[i];
	/* from here nothing fails: the workers switch over */
	if (m->nretiring + p->ndel > 0) {
		struct ph_rule **rt = realloc(m->retiring, (m->nretiring + p->ndel) * sizeof(*rt));

		if (rt == NULL) {
			reload_say(m, true,
			           "reload: out of memory; the running rules stay as they are");
			goto out;
		}
		m->retiring = rt;
	}
	/* this host's addresses (socks' `local`) may have changed since: read them again */
	if (ph_hostaddrs_read(&self) == 0) {
		p->self = self;
		p->old_self = m->self;
		m->self = self;
	} else {
		ph_warn("reload: cannot read this host's addresses; `local` keeps the old ones");
	}
	p->pending = m->nw;
	ph_list_add_tail(&m->plans, &p->node);
	for (unsigned i = 0; i < m->nw; i++) {
		p->calls[i].fn = plan_run;
		p->calls[i].arg = p;
		ph_worker_call(m->w[i], &p->calls[i]);
	}
	for (unsigned i = 0; i < p->ndel; i++)
		m->retiring[m->nretiring++] = p->del[i];
	plan_wait(p);
	for (unsigned j = 0; j < nc.nrules; j++) {
		if (final[j] != nc.rules[j])
			ph_forward_rule_free(nc.rules[j]); /* the running twin stays */
		cfg->rules[j] = final[j];
		m->udp |= (final[j]->listen.proto & PH_PROTO_UDP) != 0;
	}
	cfg->nrules = nc.nrules;
	nc.nrules = 0;
	for (unsigned k = 0; k < p->nadd; k++)
		log_rule(p->add[k], m->nw);
	/* --map: a rule that took a removed rule's listener over takes its mapping too */
	for (unsigned k = 0; k < p->nadd; k++) {
		struct ph_rule *r = p->add[k], *o = r->from_tcp ? r->from_tcp : r->from_udp;

		if (r->map && o != NULL && o->keeper != NULL &&
		    o->listen.proto == r->listen.proto &&
		    ph_addr_port(&o->listen.addr) == ph_addr_port(&r->listen.addr)) {
			r->keeper = o->keeper;
			o->keeper = NULL;
		}
		map_start(m, r);
	}
	for (unsigned i = 0; i < p->ndel; i++)
		map_stop(m, p->del[i]);
	for (unsigned i = 0; i < p->ndel; i++)
		ph_info("%s: rule removed: no new connections; open ones finish",
		        rule_origin(p->del[i]));
	reload_say(m, false, "reloaded %s: %u rules unchanged, %u started, %u removed",
	           cfg->run_file, nkept, p->nadd, p->ndel);
	p = NULL;
	ph_timer_arm(&m->loop, &m->retire, 1000);
out:
	if (p != NULL) {
		free(p->add);
		free(p->del);
		free(p->calls);
		free(p);
	}
	free(kept);
	free(final);
	ph_config_free(&nc);
}

/* Adds the relay's and the exposer's status to a status reply r (text, or JSON fields). */
static char *tunnel_status(struct ph_main *m, char *r, bool json, size_t *len)
{
	size_t cap = 64 * 1024, n;
	char *t;

	if (r == NULL || (m->relay == NULL && m->exposer == NULL))
		return r;
	t = realloc(r, *len + cap);
	if (t == NULL)
		return r;
	r = t;
	n = *len;
	if (json) { /* into the object: before its closing brace */
		while (n > 0 && r[n - 1] != '}')
			n--;
		if (n == 0)
			return r;
		n--;
		if (m->relay != NULL) {
			n += (size_t)snprintf(r + n, *len + cap - n, ",\"relay\":");
			n += ph_relay_status(m->relay, true, r + n, *len + cap - n - 4);
		}
		if (m->exposer != NULL) {
			n += (size_t)snprintf(r + n, *len + cap - n, ",\"expose\":");
			n += ph_expose_status(m->exposer, true, r + n, *len + cap - n - 4);
		}
		n += (size_t)snprintf(r + n, *len + cap - n, "}\n");
	} else {
		if (m->relay != NULL)
			n += ph_relay_status(m->relay, false, r + n, *len + cap - n - 1);
		if (m->exposer != NULL)
			n += ph_expose_status(m->exposer, false, r + n, *len + cap - n - 1);
	}
	r[n] = '\0';
	*len = n;
	return r;
}

/* A command on the control socket. Returns the reply (malloc'd), or NULL. */
static char *main_ctl(void *arg, const char *cmd, size_t *len)
{
	struct ph_main *m = arg;
	struct ph_stats totals;
	struct ph_status_src src = {
		.totals = &totals,
		.version = PH_VERSION,
		.uptime_ms = m->loop.now - m->start,
		.workers = m->nw,
		.pid = (long)getpid(),
		.file = m->cfg->run_file,
		.rules = m->cfg->rules,
		.nrules = m->cfg->nrules,
		.retiring = m->retiring,
		.nretiring = m->nretiring,
		.relay = m->relay,     /* the tunnel's metrics families */
		.exposer = m->exposer, /* (ctl renders them through tunnel.h) */
	};
	char *r;

	ph_stats_sum(m->w, m->nw, &totals);
	if (strcmp(cmd, "status") == 0 || strcmp(cmd, "status json") == 0)
		return tunnel_status(m, ph_status_render(&src, cmd[6] == ' ', len), cmd[6] == ' ',
		                     len);
	if (strcmp(cmd, "metrics") == 0)
		return ph_metrics_render(&src, len);
	if (strcmp(cmd, "reload") == 0) {
		ph_notify("RELOADING=1");
		main_reload(m);
		ph_notify("READY=1");
		r = strdup(m->reload_msg);
	} else {
		r = strdup("unknown command (status, status json, reload)\n");
	}
	if (r != NULL)
		*len = strlen(r);
	return r;
}

/* SIGTERM, SIGINT: drain (a second time: abort). The relay and the exposer end at once. */
static void main_stop(struct ph_main *m)
{
	struct ph_stats s;

	if (m->draining) {
		ph_info("second signal: stopping now");
		main_abort(m);
		return;
	}
	m->draining = true;
	ph_notify("STOPPING=1");
	ph_stats_sum(m->w, m->nw, &s);
	if (m->nw > 0)
		ph_info("stopping: no new connections; %llu open ones get up to %llu ms",
		        (unsigned long long)s.active, (unsigned long long)m->drain_timeout);
	for (unsigned i = 0; i < m->nw; i++)
		ph_worker_post(m->w[i], PH_WORKER_DRAIN);
	for (unsigned i = 0; i < m->cfg->nrules; i++)
		map_stop(m, m->cfg->rules[i]);
	ph_timer_arm(&m->loop, &m->drain, m->drain_timeout);
	if (m->relay != NULL || m->exposer != NULL)
		ph_task_queue(&m->loop, &m->tunnel_end); /* events of this round may name them */
	else
		main_maybe_stop(m);
}

static void main_on_tunnel_end(struct ph_task *t)
{
	struct ph_main *m = container_of(t, struct ph_main, tunnel_end);

	if (m->relay != NULL) /* its counters, for the stopped: line */
		ph_relay_stats(m->relay, &m->relay_last);
	if (m->exposer != NULL)
		ph_expose_stats(m->exposer, &m->expose_last);
	ph_relay_free(m->relay); /* a GOAWAY to every session */
	m->relay = NULL;
	ph_expose_free(m->exposer);
	m->exposer = NULL;
	main_maybe_stop(m);
}

static void main_on_fatal(struct ph_task *t)
{
	struct ph_main *m = container_of(t, struct ph_main, fatal);

	m->failed = true;
	m->draining = false;
	main_stop(m);
}

static void main_expose_fatal(void *arg)
{
	struct ph_main *m = arg;

	ph_task_queue(&m->loop, &m->fatal); /* not from inside the exposer's callback */
}

static void main_on_signal(struct ph_io *io, uint32_t events)
{
	struct ph_main *m = container_of(io, struct ph_main, sig_io);
	struct signalfd_siginfo si;

	(void)events;
	while (read(io->fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGUSR1:
			log_stats(m, "stats");
			break;
		case SIGHUP:
			ph_notify("RELOADING=1");
			main_reload(m);
			ph_notify("READY=1"); /* done, whether the new file was taken or not */
			break;
		case SIGTERM:
		case SIGINT:
			main_stop(m);
			break;
		default:
			break;
		}
	}
}

static void main_on_done(struct ph_io *io, uint32_t events)
{
	struct ph_main *m = container_of(io, struct ph_main, done_io);
	uint64_t n;

	(void)events;
	if (read(io->fd, &n, sizeof(n)) != (ssize_t)sizeof(n))
		return;
	m->ended += (unsigned)n;
	if (m->ended >= m->started && ph_list_empty(&m->unmapping))
		ph_loop_stop(&m->loop); /* and the mappings are deleted (bounded) */
}

/*
 * Raises the soft fd limit to the hard one and checks it covers what the rules may need.
 * Returns 0, or -EMFILE with a reason printed.
 */
static int check_fd_limit(struct ph_config *cfg, unsigned nw)
{
	unsigned long long need = FDS_BASE + (unsigned long long)nw * FDS_PER_WORKER, conns = 0;
	unsigned long long sessions = 0, left;
	unsigned nauto = 0;
	bool tcp_unbounded = false; /* a TCP rule without --max-conns may take any fd */
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
		return 0;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	for (unsigned i = 0; i < cfg->nrules; i++) {
		struct ph_rule *r = cfg->rules[i];

		need += nw * FDS_PER_WORKER;
		conns += r->max_conns;
		tcp_unbounded |= (r->listen.proto & PH_PROTO_TCP) && r->max_conns == 0;
		if (!(r->listen.proto & PH_PROTO_UDP))
			continue;
		if (r->max_sessions != 0)
			sessions += r->max_sessions;
		else
			nauto++;
	}
	if (rl.rlim_cur < need + 16) {
		fprintf(stderr,
		        "pinhole: too few file descriptors: the limit is %llu, and %u workers "
		        "need at least %llu to start (raise it with ulimit -n)\n",
		        (unsigned long long)rl.rlim_cur, nw, need + 16);
		return -EMFILE;
	}
	if (conns != 0 && rl.rlim_cur < need + conns * FDS_PER_CONN) {
		fprintf(stderr,
		        "pinhole: too few file descriptors: the limit is %llu, but --max-conns "
		        "%llu needs about %llu (raise it with ulimit -n, or lower --max-conns)\n",
		        (unsigned long long)rl.rlim_cur, conns, need + conns * FDS_PER_CONN);
		return -EMFILE;
	}
	need += conns * FDS_PER_CONN;
	if (sessions != 0 && rl.rlim_cur < need + sessions) {
		fprintf(stderr,
		        "pinhole: too few file descriptors: the limit is %llu, but --max-sessions "
		        "%llu needs about %llu (a socket per UDP session; raise it with ulimit -n, "
		        "or lower --max-sessions)\n",
		        (unsigned long long)rl.rlim_cur, sessions, need + sessions);
		return -EMFILE;
	}
	need += sessions;
	/* the default bound of a UDP rule is what the fds left allow, shared fairly (half of
	 * them when TCP connections without a bound need fds too); rules a reload adds get
	 * the same */
	left = rl.rlim_cur > need + 64 ? rl.rlim_cur - need - 64 : 0;
	if (tcp_unbounded)
		left /= 2;
	left /= nauto != 0 ? nauto : 1;
	cfg->udp_sessions = left > PH_UDP_MAX_SESSIONS ? PH_UDP_MAX_SESSIONS
	                    : left < 16                ? 16
	                                               : (unsigned)left;
	for (unsigned i = 0; i < cfg->nrules; i++) {
		struct ph_rule *r = cfg->rules[i];

		if ((r->listen.proto & PH_PROTO_UDP) && r->max_sessions == 0)
			r->max_sessions = cfg->udp_sessions;
	}
	/*
	 * What is left is the connections' fd budget: each reserves what it may hold before
	 * it is accepted (conn/accept.h), so none meets EMFILE once admitted. The workers'
	 * spare pipes and the UDP sessions' sockets are not theirs.
	 */
	need += (unsigned long long)nauto * cfg->udp_sessions + nw * FDS_SPARE_PIPES * 2ull + 64;
	left = rl.rlim_cur > need ? rl.rlim_cur - need : 0;
	ph_fds_set_limit(left > 64 ? left : 64);
	return 0;
}

static unsigned online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : n > 64 ? 64 : (unsigned)n;
}

static void log_rule(const struct ph_rule *r, unsigned nw)
{
	char l[PH_ADDR_STRLEN], t[3072], sess[48] = "";
	size_t off = 0;

	t[0] = '\0';
	for (unsigned i = 0; i < r->ntargets && off < sizeof(t); i++) {
		const struct ph_hostport *hp = &r->targets[i].hp;
		int n;

		if (hp->is_name)
			n = snprintf(t + off, sizeof(t) - off, "%s%s:%u", i ? ", " : "", hp->host,
			             hp->port);
		else
			n = snprintf(t + off, sizeof(t) - off, "%s%s", i ? ", " : "",
			             ph_addr_fmt(&hp->addr, l, sizeof(l)));
		if (n < 0)
			break;
		off += (size_t)n;
	}
	if (r->kind == PH_RULE_SOCKS) {
		ph_info("%s%ssocks proxy on %s (SOCKS5, SOCKS4a, HTTP; %u workers%s%.0u%s)",
		        r->name, r->name[0] ? ": " : "", ph_addr_fmt(&r->listen.addr, l, sizeof(l)),
		        nw, r->socks->nusers != 0 ? ", users: " : "", r->socks->nusers,
		        r->socks->open && r->socks->nusers == 0 ? ", open to anyone" : "");
		return;
	}
	if (r->listen.proto & PH_PROTO_UDP)
		snprintf(sess, sizeof(sess), ", up to %u udp sessions", r->max_sessions);
	ph_info("%s%sforwarding %s %s -> %s (%u workers%s)", r->name, r->name[0] ? ": " : "",
	        r->listen.proto == PH_PROTO_UDP   ? "udp"
	        : r->listen.proto == PH_PROTO_TCP ? "tcp"
	                                          : "tcp+udp",
	        ph_addr_fmt(&r->listen.addr, l, sizeof(l)), t, nw, sess);
}

/*
 * Least privilege once everything is set up (DESIGN: after the listeners are bound, the
 * files opened and root dropped): the seccomp filter, unless --no-sandbox. Returns 0, or
 * -errno when the filter was asked for and cannot be had (said on stderr).
 */
static int enter_sandbox(const struct ph_config *cfg)
{
	char why[256];
	int err;

	if (cfg->no_sandbox) {
		ph_debug("sandbox: off (--no-sandbox)");
		return 0;
	}
	err = ph_sandbox_enter(why, sizeof(why));
	if (err == -ENOSYS) { /* a build for a platform without libseccomp: said, not fatal */
		ph_warn("sandbox: %s; no system call filter", why);
		return 0;
	}
	if (err < 0) {
		fprintf(stderr, "pinhole: sandbox: %s (--no-sandbox runs without it)\n", why);
		return err;
	}
	ph_debug("sandbox: on (no new privileges, system calls filtered)");
	ph_sandbox_debug_exec("main");
	return 0;
}

/*
 * Runs the configured rules until a signal stops them, then frees cfg (after the workers,
 * which hold per-worker parts of the rules). Returns the exit status.
 */
static int run(struct ph_config *cfg)
{
	struct ph_worker_opts wo = {.pipe_size = cfg->pipe_size, .spare_pipes = FDS_SPARE_PIPES};
	struct ph_main m;
	sigset_t sigs;
	char why[256];
	int sfd, dfd, err, status = 1;
	bool pid_written = false;
	unsigned nw = cfg->workers != 0 ? cfg->workers : online_cpus();

	if (cfg->nrules == 0 && cfg->run_file == NULL) /* server/expose: they run on this thread */
		nw = 0;

	if (check_fd_limit(cfg, nw) < 0)
		goto out_cfg;
	if (wo.pipe_size == 0) {
		/*
		 * Bigger pipes mean fewer splice calls per byte (half the CPU per GB at 1 MiB, see
		 * docs/PERFORMANCE.md). Pipes of an unprivileged user count against
		 * fs.pipe-user-pages-soft (64 MiB), past which new pipes shrink to 2 pages: such
		 * a user gets 256 KiB pipes, i.e. 256 pipes in flight before that.
		 */
		wo.pipe_size =
			geteuid() == 0 && cfg->user[0] == '\0' ? PIPE_SIZE_ROOT : PIPE_SIZE_USER;
	}
	if (ph_resolve_global_init() < 0) {
		fprintf(stderr, "pinhole: cannot initialise the resolver (c-ares)\n");
		goto out_cfg;
	}
	/* the signals are read from a signalfd; every thread made after this inherits the mask */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	memset(&m, 0, sizeof(m));
	m.drain_timeout = cfg->drain_timeout;
	for (unsigned i = 0; i < cfg->nrules; i++)
		m.udp |= (cfg->rules[i]->listen.proto & PH_PROTO_UDP) != 0;
	if (ph_loop_init(&m.loop) < 0)
		goto out_cfg;
	ph_logagg_init(&m.agg);
	ph_logagg_bind(&m.agg);
	sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
	dfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (sfd == -1 || dfd == -1) {
		fprintf(stderr, "pinhole: %s\n", strerror(errno));
		goto out_fds;
	}
	ph_io_init(&m.sig_io, sfd, main_on_signal);
	ph_io_init(&m.done_io, dfd, main_on_done);
	ph_timer_init(&m.drain, main_on_drain_timeout);
	ph_timer_init(&m.retire, main_on_retire);
	ph_timer_init(&m.agg_tick, main_on_agg_tick);
	ph_list_init(&m.unmapping);
	ph_list_init(&m.plans);
	ph_task_init(&m.fatal, main_on_fatal);
	ph_task_init(&m.tunnel_end, main_on_tunnel_end);
	m.cfg = cfg;
	if (ph_io_add(&m.loop, &m.sig_io, EPOLLIN) < 0 ||
	    ph_io_add(&m.loop, &m.done_io, EPOLLIN) < 0)
		goto out_fds;
	m.w = calloc(nw != 0 ? nw : 1, sizeof(*m.w));
	if (m.w == NULL)
		goto out_fds;
	for (; m.nw < nw; m.nw++) {
		m.w[m.nw] = malloc(sizeof(**m.w));
		if (m.w[m.nw] == NULL)
			goto out_workers;
		err = ph_worker_init(m.w[m.nw], (int)m.nw, &wo, dfd);
		if (err < 0) {
			free(m.w[m.nw]);
			fprintf(stderr, "pinhole: cannot start worker %u: %s\n", m.nw,
			        strerror(-err));
			goto out_workers;
		}
	}
	/* socks' `local` covers this host's own addresses: read them now, and on reload */
	err = ph_hostaddrs_read(&m.self);
	if (err < 0) {
		fprintf(stderr, "pinhole: cannot read this host's addresses: %s\n", strerror(-err));
		goto out_workers;
	}
	for (unsigned i = 0; i < m.nw; i++)
		m.w[i]->self_addrs = m.self;
	for (unsigned i = 0; i < cfg->nrules; i++) {
		err = ph_forward_start(cfg->rules[i], m.w, m.nw, why, sizeof(why));
		if (err < 0) {
			fprintf(stderr, "pinhole: %s\n", why);
			goto out_workers;
		}
	}
	for (unsigned i = 0; i < cfg->nrules; i++)
		log_rule(cfg->rules[i], m.nw);
	if (cfg->pidfile[0] != '\0') {
		err = ph_pidfile_write(cfg->pidfile);
		if (err < 0) {
			fprintf(stderr, "pinhole: --pidfile '%s': %s\n", cfg->pidfile,
			        strerror(-err));
			goto out_workers;
		}
		pid_written = true;
	}
	if (strcmp(cfg->control, "none") != 0) {
		char path[108];

		if (cfg->control[0] != '\0')
			snprintf(path, sizeof(path), "%s", cfg->control);
		else
			ph_ctl_default_path(path, sizeof(path));
		why[0] = '\0';
		err = ph_ctl_open(&m.loop, path, main_ctl, &m, &m.ctl, why, sizeof(why));
		if (err < 0 && cfg->control[0] != '\0') { /* asked for: a failure is fatal */
			fprintf(stderr, "pinhole: %s\n", why);
			goto out_workers;
		}
		if (err < 0)
			ph_warn("%s; status and reload through it are off", why);
	}
	if (cfg->logfile[0] != '\0') { /* opened as root: the file may be where only root writes */
		err = ph_connlog_open(cfg->logfile, (enum ph_connlog_format)cfg->logformat);
		if (err < 0) {
			fprintf(stderr, "pinhole: --log-file '%s': %s\n", cfg->logfile,
			        err == -EINVAL  ? "not a regular file"
			        : err == -ELOOP ? "a symbolic link: refused (name the file itself)"
			                        : strerror(-err));
			goto out_workers;
		}
	}
	if (cfg->has_metrics) {
		err = ph_metrics_open(&m.loop, &cfg->metrics, main_ctl, &m, &m.metrics, why,
		                      sizeof(why));
		if (err < 0) {
			fprintf(stderr, "pinhole: %s\n", why);
			goto out_workers;
		}
	}
	if (cfg->server != NULL) {
		err = ph_relay_start(&m.loop, cfg->server, &m.relay, why, sizeof(why));
		if (err < 0) {
			fprintf(stderr, "pinhole: server: %s\n", why);
			goto out_workers;
		}
	}
	if (cfg->nexpose != 0) {
		err = ph_expose_start(&m.loop, cfg->expose, cfg->nexpose, main_expose_fatal, &m,
		                      &m.exposer, why, sizeof(why));
		if (err < 0) {
			fprintf(stderr, "pinhole: expose: %s\n", why);
			goto out_workers;
		}
	}
	if (cfg->user[0] != '\0') { /* the ports are bound: root is not needed any more */
		err = ph_drop_privileges(cfg->user, why, sizeof(why));
		if (err < 0) {
			fprintf(stderr, "pinhole: %s\n", why);
			goto out_workers;
		}
		ph_info("running as %s (uid %u, gid %u)", cfg->user, (unsigned)getuid(),
		        (unsigned)getgid());
	}
	/* before the workers and the UPnP helpers start: threads inherit the filter */
	if (enter_sandbox(cfg) < 0)
		goto out_workers;
	for (unsigned i = 0; i < m.nw; i++) {
		err = ph_worker_start(m.w[i]);
		if (err < 0) {
			fprintf(stderr, "pinhole: cannot start a worker thread: %s\n",
			        strerror(-err));
			main_abort(&m);
			break;
		}
		m.started++;
	}
	if (m.started == 0 && m.nw != 0)
		goto out_workers;
	for (unsigned i = 0; i < cfg->nrules; i++)
		map_start(&m, cfg->rules[i]);
	m.start = m.loop.now;
	m.agg_since = m.loop.now;
	ph_timer_arm(&m.loop, &m.agg_tick, PH_LOGAGG_INTERVAL_MS);
	ph_notify("READY=1");
	err = ph_loop_run(&m.loop);
	if (err < 0)
		ph_err("main loop: %s", strerror(-err));
	else if ((!m.aborting || m.draining) && !m.failed)
		status = 0;
	log_failures(&m);
	log_stats(&m, "stopped");

out_workers:
	ph_relay_free(m.relay);
	m.relay = NULL;
	ph_expose_free(m.exposer);
	m.exposer = NULL;
	ph_task_cancel(&m.fatal);
	ph_task_cancel(&m.tunnel_end);
	/* workers that never started are told to abort and are not waited for */
	main_abort(&m);
	/* mappings not deleted in time (a second signal) stay with the router, for their lease */
	for (unsigned i = 0; i < cfg->nrules; i++)
		ph_map_keeper_free(cfg->rules[i]->keeper);
	while (!ph_list_empty(&m.unmapping)) {
		struct unmapping *u = container_of(m.unmapping.next, struct unmapping, node);

		ph_list_del(&u->node);
		ph_map_keeper_free(u->k);
		free(u);
	}
	for (unsigned i = 0; i < m.nw; i++)
		ph_worker_destroy(m.w[i]);
	ph_ctl_close(m.ctl);
	m.ctl = NULL;
	ph_ctl_close(m.metrics);
	m.metrics = NULL;
	ph_connlog_close();
	if (pid_written && unlink(cfg->pidfile) == -1 && errno != ENOENT)
		ph_warn("--pidfile '%s' stays: %s", cfg->pidfile, strerror(errno));
	ph_config_free(cfg);
	for (unsigned i = 0; i < m.nretiring; i++) /* removed by a reload, still finishing */
		ph_forward_rule_free(m.retiring[i]);
	free(m.retiring);
	while (!ph_list_empty(&m.plans))
		plan_free(container_of(m.plans.next, struct reload_plan, node));
	ph_hostaddrs_free(m.self);
	m.self = NULL;
	for (unsigned i = 0; i < m.nw; i++)
		free(m.w[i]);
	free(m.w);
out_fds:
	if (sfd != -1)
		close(sfd);
	if (dfd != -1)
		close(dfd);
	ph_loop_free(&m.loop);
	ph_logagg_bind(NULL); /* what is noted from here on is logged at once */
	ph_logagg_destroy(&m.agg);
out_cfg:
	ph_config_free(cfg); /* again after out_workers: it is idempotent */
	return status;
}

static void report_problem(void *arg, const char *msg)
{
	(void)arg;
	fprintf(stderr, "%s\n", msg);
}

/* `run FILE`: reads the rules. Returns 0 to go on, or the exit status (with --check: 0
 * when FILE is good, after saying so). */
static int load_config(struct ph_config *cfg)
{
	struct ph_config cli = *cfg; /* what the command line said: it wins over FILE */
	int n = ph_conf_load(cfg->run_file, cfg, report_problem, NULL);

	if (cli.workers != 0)
		cfg->workers = cli.workers;
	if (cli.pipe_size != 0)
		cfg->pipe_size = cli.pipe_size;
	if (cli.drain_timeout != PH_DRAIN_TIMEOUT_MS)
		cfg->drain_timeout = cli.drain_timeout;

	if (n == -ENOMEM) {
		fprintf(stderr, "pinhole: out of memory\n");
		return 1;
	}
	if (n == 0 && cfg->nrules == 0 && cfg->server == NULL && cfg->nexpose == 0) {
		fprintf(stderr, "%s: no rules (see pinhole run --help)\n", cfg->run_file);
		n = 1;
	}
	if (n > 0) {
		fprintf(stderr, "pinhole: %s: %d problem%s; nothing was started\n", cfg->run_file,
		        n, n == 1 ? "" : "s");
		return 2;
	}
	if (cfg->check)
		printf("%s: %u rule%s, no problems\n", cfg->run_file,
		       cfg->nrules + cfg->nexpose + (cfg->server != NULL),
		       cfg->nrules + cfg->nexpose + (cfg->server != NULL) == 1 ? "" : "s");
	return 0;
}

/* `pinhole status` / `pinhole reload`: asks the running pinhole. Returns the exit status. */
static int ask(const struct ph_config *cfg)
{
	char path[108], why[256], *reply = NULL;
	size_t len = 0;
	FILE *out;
	int err;

	if (cfg->control[0] != '\0')
		snprintf(path, sizeof(path), "%s", cfg->control);
	else
		ph_ctl_default_path(path, sizeof(path));
	if (cfg->cmd == PH_CMD_STATUS) {
		err = ph_ctl_request(path, cfg->json ? "status json" : "status", stdout, why,
		                     sizeof(why));
		if (err < 0)
			fprintf(stderr, "pinhole: %s\n", why);
		return err < 0 ? 1 : 0;
	}
	out = open_memstream(&reply, &len);
	if (out == NULL)
		return 1;
	err = ph_ctl_request(path, "reload", out, why, sizeof(why));
	fclose(out);
	if (err < 0)
		fprintf(stderr, "pinhole: %s\n", why);
	else
		fputs(reply, stdout);
	/* the reply's last line says how it went */
	err = err < 0                                                                       ? 1
	      : strstr(reply, "\nreloaded ") != NULL || strncmp(reply, "reloaded ", 9) == 0 ? 0
	                                                                                    : 1;
	free(reply);
	return err;
}

/*
 * `map`: needs no root at all (UDP to the gateway, HTTP to its UPnP server), so --user is
 * taken before it starts; a map that stays to renew its lease is sandboxed like the other
 * long-running verbs. Returns 0, or the exit status.
 */
static int map_prepare(const struct ph_config *cfg)
{
	char why[256];
	int err;

	if (cfg->user[0] != '\0') {
		err = ph_drop_privileges(cfg->user, why, sizeof(why));
		if (err < 0) {
			fprintf(stderr, "pinhole: %s\n", why);
			return 1;
		}
		ph_info("running as %s (uid %u, gid %u)", cfg->user, (unsigned)getuid(),
		        (unsigned)getgid());
	}
	if (cfg->map.verb == PH_MAP_ADD && !cfg->map.once && enter_sandbox(cfg) < 0)
		return 1;
	return 0;
}

/* `pinhole keygen`: makes a key pair (or shows one's public key). Returns the exit status. */
static int keygen(const struct ph_config *cfg)
{
	char path[600], why[700], line[PH_KEY_LINE_MAX], fp[PH_FP_LEN];
	uint8_t pub[PH_KEY_LEN];
	struct ph_key *k;
	int err;

	if (cfg->key_file != NULL) {
		snprintf(path, sizeof(path), "%s", cfg->key_file);
	} else {
		const char *home = getenv("HOME"), *xdg = getenv("XDG_CONFIG_HOME");
		char dir[560];

		if (getuid() == 0)
			snprintf(dir, sizeof(dir), "/etc/pinhole");
		else if (xdg != NULL && xdg[0] == '/')
			snprintf(dir, sizeof(dir), "%.500s/pinhole", xdg);
		else if (home != NULL && home[0] == '/')
			snprintf(dir, sizeof(dir), "%.500s/.config/pinhole", home);
		else {
			fprintf(stderr, "pinhole: keygen: no HOME: give -f FILE\n");
			return 2;
		}
		/* ~/.config may not exist yet either: each missing directory, 0700 */
		for (char *p = dir + 1; !cfg->key_show; p++) {
			char c = *p;

			if (c != '/' && c != '\0')
				continue;
			*p = '\0';
			if (mkdir(dir, 0700) == -1 && errno != EEXIST) {
				fprintf(stderr, "pinhole: keygen: %s: %s\n", dir, strerror(errno));
				return 1;
			}
			*p = c;
			if (c == '\0')
				break;
		}
		snprintf(path, sizeof(path), "%s/key", dir);
	}
	err = cfg->key_show ? ph_key_load(path, &k, why, sizeof(why))
	                    : ph_key_generate(path, &k, why, sizeof(why));
	if (err < 0) {
		fprintf(stderr, "pinhole: keygen: %s\n", why);
		return 1;
	}
	ph_key_public(k, pub);
	ph_key_free(k);
	ph_pubkey_format(pub, cfg->key_comment, line, sizeof(line));
	ph_key_fingerprint(pub, fp);
	if (!cfg->key_show)
		fprintf(stderr, "pinhole: wrote the private key to %s (mode 0600)\n", path);
	printf("%s\n", line);
	fprintf(stderr, "pinhole: fingerprint %s\n", fp);
	return 0;
}

int main(int argc, char **argv)
{
	struct ph_config cfg;
	struct ph_cli_error e;
	const char *help;
	int err;

	signal(SIGPIPE, SIG_IGN); /* a write to a reset socket returns EPIPE instead */
	ph_config_init(&cfg);
	err = ph_cli_parse(argc - 1, argv + 1, &cfg, &e);
	if (err == -ENOMEM) {
		fprintf(stderr, "pinhole: out of memory\n");
		return 1;
	}
	if (err < 0) {
		fprintf(stderr, "pinhole: %s\n", e.msg);
		ph_config_free(&cfg);
		return 2;
	}
	switch (cfg.cmd) {
	case PH_CMD_VERSION:
		printf("pinhole %s\n", PH_VERSION);
		ph_config_free(&cfg);
		return 0;
	case PH_CMD_HELP:
		help = ph_cli_help(cfg.help_topic);
		ph_config_free(&cfg);
		if (help == NULL) {
			fprintf(stderr, "pinhole: no help on '%s' (see pinhole --help)\n",
			        cfg.help_topic);
			return 2;
		}
		fputs(help, stdout);
		return 0;
	case PH_CMD_NONE:
		fputs(ph_cli_help(""), stderr);
		return 2;
	case PH_CMD_RUN:
		err = load_config(&cfg);
		if (err != 0 || cfg.check) {
			ph_config_free(&cfg);
			return err;
		}
		break;
	case PH_CMD_STATUS:
	case PH_CMD_RELOAD:
		err = ask(&cfg);
		ph_config_free(&cfg);
		return err;
	case PH_CMD_KEYGEN:
		err = keygen(&cfg);
		ph_config_free(&cfg);
		return err;
	case PH_CMD_MAP:
		err = cfg.verbosity < 0 ? (int)PH_LOG_ERR : (int)PH_LOG_INFO + cfg.verbosity;
		ph_log_level = err > PH_LOG_TRACE ? PH_LOG_TRACE : (enum ph_log_level)err;
		err = map_prepare(&cfg);
		if (err == 0)
			err = ph_map_run(&cfg.map);
		ph_config_free(&cfg);
		return err;
	case PH_CMD_FORWARD:
		break;
	}
	/* -q: errors only (warnings too are skipped); -v: a line per connection; -vv: trace */
	err = cfg.verbosity < 0 ? (int)PH_LOG_ERR : (int)PH_LOG_INFO + cfg.verbosity;
	ph_log_level = err < 0              ? PH_LOG_ERR
	               : err > PH_LOG_TRACE ? PH_LOG_TRACE
	                                    : (enum ph_log_level)err;
	return run(&cfg);
}
