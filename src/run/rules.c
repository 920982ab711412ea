/*
 * The rules service: the forward and socks rules on the worker threads, their --map keepers
 * on the main thread's loop, and the reload of `pinhole run FILE` (docs/ARCHITECTURE.md,
 * "Config files and reload").
 */
#include "run/run.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/conf.h"
#include "config.h"
#include "core/acl.h"
#include "core/log.h"
#include "core/logagg.h"
#include "core/resolve.h"
#include "core/svc.h"
#include "core/util.h"
#include "core/worker.h"
#include "ctl/ctl.h"
#include "forward/forward.h"
#include "portmap/portmap.h"
#include "socks/socks.h"

#define PIPE_SIZE_ROOT (1u << 20) /* default splice pipe size as root */
#define PIPE_SIZE_USER (1u << 18) /* and as another user */

struct rules {
	struct ph_svc svc;
	struct ph_config *cfg; /* borrowed: the rules running now (a reload changes them) */
	struct ph_io done_io;  /* eventfd: a worker ended */
	struct ph_worker **w;  /* owned */
	unsigned want;         /* workers asked for */
	unsigned nw;           /* workers made (their loops), want once open */
	unsigned started, ended;
	bool aborting;
	bool udp;                  /* some rule forwards UDP: its counters get a line */
	struct ph_rule **retiring; /* owned: removed by a reload, finishing */
	unsigned nretiring;
	struct ph_list plans;      /* struct reload_plan not run by every worker yet */
	struct ph_hostaddrs *self; /* owned: this host's addresses, the workers' self_addrs */
	struct ph_timer retire;    /* frees what finished, once a second while any is left */
	struct ph_list unmapping;  /* struct unmapping: --map keepers deleting their mappings */
	uint64_t start;            /* loop ms at start, for the uptime */
};

/* A --map keeper told to stop, until it has deleted its mappings. */
struct unmapping {
	struct ph_list node; /* in rules.unmapping */
	struct rules *rs;
	struct ph_map_keeper *k;
};

/* What one reload asks of every worker, in order: attach the new rules, detach the old. */
struct reload_plan {
	struct ph_list node; /* in rules.plans */
	struct ph_rule **add, **del;
	unsigned nadd, ndel;
	struct ph_worker_call *calls;    /* owned: one per worker */
	unsigned pending;                /* atomic: workers that have not run it yet */
	const struct ph_hostaddrs *self; /* this host's addresses read again: the workers' */
	struct ph_hostaddrs *old_self;   /* owned: the table it replaces, freed with the plan */
};

/* One reload's work: the file read again, matched against the running rules. */
struct reload {
	struct ph_svc_reload *r;
	struct ph_config nc;    /* the file's rules */
	struct ph_rule **final; /* owned: nc's rule j, or the running rule equal to it */
	bool *kept;             /* owned: running rule i stays */
	unsigned nkept;         /* how many */
	struct reload_plan *p;  /* owned until posted to the workers */
};

static struct rules *rules_of(struct ph_svc *s)
{
	return container_of(s, struct rules, svc);
}

/* How logs name a rule of a config file: its --name, or where it is written. */
static const char *rule_origin(const struct ph_rule *r)
{
	return r->name[0] != '\0' ? r->name : r->origin;
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

/* ---- --map: a keeper of a router mapping for a rule's port ---- */

static bool is_loopback(const struct ph_addr *a)
{
	return (a->u.sa.sa_family == AF_INET && (ntohl(a->u.in.sin_addr.s_addr) >> 24) == 127) ||
	       (a->u.sa.sa_family == AF_INET6 && IN6_IS_ADDR_LOOPBACK(&a->u.in6.sin6_addr));
}

/* A keeper for r's listen port, for as long as r runs (when r has --map and none yet). */
static void map_start(struct rules *rs, struct ph_rule *r)
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
	    is_loopback(&r->listen.addr))
		ph_warn("%s: --map on a loopback address: what the router forwards here cannot "
		        "reach it (listen on :PORT or the LAN address)",
		        label);
	err = ph_map_keeper_start(rs->svc.loop, &mc, label, &r->keeper);
	if (err < 0)
		ph_warn("%s: --map: cannot ask the router (%s); the rule runs without a mapping",
		        label, strerror(-err));
}

static void map_on_unmapped(void *arg)
{
	struct unmapping *u = arg;
	struct rules *rs = u->rs;

	ph_list_del(&u->node);
	free(u);
	ph_svc_changed(&rs->svc, 0); /* the last deletion may be what the loop waits for */
}

/* r's keeper deletes its mapping and goes (the rule is removed, or pinhole stops). */
static void map_stop(struct rules *rs, struct ph_rule *r)
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
	u->rs = rs;
	u->k = r->keeper;
	r->keeper = NULL;
	ph_list_add_tail(&rs->unmapping, &u->node);
	ph_map_keeper_stop(u->k, map_on_unmapped, u);
}

/* ---- reload ---- */

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

/* True when a plan not yet run by every worker takes a listener over from r. */
static bool in_plan(struct rules *rs, const struct ph_rule *r)
{
	struct ph_list *it, *tmp;

	ph_list_for_each_safe(it, tmp, &rs->plans) {
		const struct reload_plan *p = container_of(it, struct reload_plan, node);

		for (unsigned j = 0; j < p->nadd; j++)
			if (p->add[j]->from_tcp == r || p->add[j]->from_udp == r)
				return true;
	}
	return false;
}

/* Frees the plans every worker ran and the removed rules every worker is done with. */
static void rules_on_retire(struct ph_timer *t)
{
	struct rules *rs = container_of(t, struct rules, retire);
	struct ph_list *it, *tmp;
	unsigned k = 0;

	ph_list_for_each_safe(it, tmp, &rs->plans) {
		struct reload_plan *p = container_of(it, struct reload_plan, node);

		if (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) != 0)
			continue;
		for (unsigned i = 0; i < p->nadd; i++)
			p->add[i]->from_tcp = p->add[i]->from_udp = NULL; /* the old rules may go */
		plan_free(p);
	}
	for (unsigned i = 0; i < rs->nretiring; i++) {
		struct ph_rule *r = rs->retiring[i];

		if (!in_plan(rs, r) && ph_forward_retired(r)) {
			ph_info("%s: the last connection of the removed rule ended",
			        rule_origin(r));
			ph_forward_rule_free(r);
		} else {
			rs->retiring[k++] = r;
		}
	}
	rs->nretiring = k;
	if (rs->nretiring != 0 || !ph_list_empty(&rs->plans))
		ph_timer_arm(rs->svc.loop, t, 1000);
}

/* Written alike, both with protocol proto: the new rule takes that listener over. */
static bool same_listen(const struct ph_hostport *a, const struct ph_hostport *b, unsigned proto)
{
	return (a->proto & b->proto & proto) != 0 && a->port == b->port &&
	       a->wildcard == b->wildcard && strcmp(a->host, b->host) == 0;
}

/* The removed rule whose proto listener r takes over, each taken once; or NULL. */
static struct ph_rule *takeover(const struct ph_config *cfg, const struct reload *rl,
                                const struct ph_rule *r, unsigned proto)
{
	const struct reload_plan *p = rl->p;

	for (unsigned i = 0; i < cfg->nrules; i++) {
		struct ph_rule *o = cfg->rules[i];
		bool taken = false;

		if (rl->kept[i] || !same_listen(&o->listen, &r->listen, proto))
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

static void log_problem(void *arg, const char *msg)
{
	ph_svc_say(arg, true, "%s", msg);
}

/* Step 1: reads FILE into rl->nc and makes room for the plan. Returns 0 or -errno (said). */
static int reload_read(struct rules *rs, struct reload *rl)
{
	const struct ph_config *cfg = rs->cfg;
	struct ph_config *nc = &rl->nc;
	struct reload_plan *p;
	int n;

	nc->rinetd = cfg->rinetd;
	n = ph_conf_load(cfg->run_file, nc, log_problem, rl->r);
	if (n == 0 && nc->nrules == 0 && nc->server == NULL && nc->nexpose == 0) {
		ph_svc_say(rl->r, true, "%s: no rules", cfg->run_file);
		n = 1;
	}
	if (n != 0) {
		ph_svc_say(rl->r, true, "reload: %s: %s; the running rules stay as they are",
		           cfg->run_file, n < 0 ? "out of memory" : "problems above");
		return -EINVAL;
	}
	rl->final = calloc(nc->nrules, sizeof(*rl->final));
	rl->kept = calloc(cfg->nrules + 1, sizeof(*rl->kept));
	rl->p = p = calloc(1, sizeof(*p));
	if (rl->final == NULL || rl->kept == NULL || p == NULL ||
	    (p->add = calloc(nc->nrules, sizeof(*p->add))) == NULL ||
	    (p->del = calloc(cfg->nrules + 1, sizeof(*p->del))) == NULL ||
	    (p->calls = calloc(rs->nw, sizeof(*p->calls))) == NULL) {
		ph_svc_say(rl->r, true,
		           "reload: out of memory; the running rules stay as they are");
		return -ENOMEM;
	}
	ph_list_init(&p->node);
	return 0;
}

/*
 * Step 2: an unchanged line keeps its running rule; the others are bound, on a removed
 * rule's listeners when they listen just the same. Returns 0, or -errno (said) with the
 * rules bound so far left to rl->nc, unattached.
 */
static int reload_bind(struct rules *rs, struct reload *rl)
{
	const struct ph_config *cfg = rs->cfg;
	struct reload_plan *p = rl->p;
	char why[1024];
	int err;

	for (unsigned j = 0; j < rl->nc.nrules; j++) {
		for (unsigned i = 0; i < cfg->nrules && rl->final[j] == NULL; i++) {
			if (!rl->kept[i] && same_spec(cfg->rules[i], rl->nc.rules[j])) {
				rl->kept[i] = true;
				rl->final[j] = cfg->rules[i];
				rl->nkept++;
			}
		}
	}
	for (unsigned j = 0; j < rl->nc.nrules; j++) {
		struct ph_rule *r = rl->nc.rules[j];

		if (rl->final[j] != NULL)
			continue;
		if ((r->listen.proto & PH_PROTO_UDP) && r->max_sessions == 0)
			r->max_sessions = cfg->udp_sessions;
		/* per protocol: a tcp+udp rule may come from two rules, or go to two */
		err = ph_forward_bind(r, rs->w, rs->nw, takeover(cfg, rl, r, PH_PROTO_TCP),
		                      takeover(cfg, rl, r, PH_PROTO_UDP), why, sizeof(why));
		if (err < 0) {
			ph_svc_say(rl->r, true,
			           "reload: %s: %s; the running rules stay as they are", r->origin,
			           why);
			return err;
		}
		rl->final[j] = r;
		p->add[p->nadd++] = r;
	}
	for (unsigned i = 0; i < cfg->nrules; i++)
		if (!rl->kept[i])
			p->del[p->ndel++] = cfg->rules[i];
	return 0;
}

/* Step 3: the workers switch over to the plan; nothing fails from here on. */
static void reload_switch(struct rules *rs, struct reload *rl)
{
	struct reload_plan *p = rl->p;
	struct ph_config *cfg = rs->cfg;
	struct ph_hostaddrs *self;

	/* this host's addresses (socks' `local`) may have changed since: read them again */
	if (ph_hostaddrs_read(&self) == 0) {
		p->self = self;
		p->old_self = rs->self;
		rs->self = self;
	} else {
		ph_warn("reload: cannot read this host's addresses; `local` keeps the old ones");
	}
	p->pending = rs->nw;
	ph_list_add_tail(&rs->plans, &p->node);
	rl->p = NULL; /* rs->plans has it */
	for (unsigned i = 0; i < rs->nw; i++) {
		p->calls[i].fn = plan_run;
		p->calls[i].arg = p;
		ph_worker_call(rs->w[i], &p->calls[i]);
	}
	for (unsigned i = 0; i < p->ndel; i++)
		rs->retiring[rs->nretiring++] = p->del[i];
	plan_wait(p);
	for (unsigned j = 0; j < rl->nc.nrules; j++) {
		if (rl->final[j] != rl->nc.rules[j])
			ph_forward_rule_free(rl->nc.rules[j]); /* the running twin stays */
		cfg->rules[j] = rl->final[j];
		rs->udp |= (rl->final[j]->listen.proto & PH_PROTO_UDP) != 0;
	}
	cfg->nrules = rl->nc.nrules;
	rl->nc.nrules = 0;
}

/* Step 4: the new rules said, mappings moved, started and stopped. */
static void reload_finish(struct rules *rs, struct reload *rl, const struct reload_plan *p)
{
	for (unsigned k = 0; k < p->nadd; k++)
		log_rule(p->add[k], rs->nw);
	/* --map: a rule that took a removed rule's listener over takes its mapping too */
	for (unsigned k = 0; k < p->nadd; k++) {
		struct ph_rule *r = p->add[k], *o = r->from_tcp ? r->from_tcp : r->from_udp;

		if (r->map && o != NULL && o->keeper != NULL &&
		    o->listen.proto == r->listen.proto &&
		    ph_addr_port(&o->listen.addr) == ph_addr_port(&r->listen.addr)) {
			r->keeper = o->keeper;
			o->keeper = NULL;
		}
		map_start(rs, r);
	}
	for (unsigned i = 0; i < p->ndel; i++)
		map_stop(rs, p->del[i]);
	for (unsigned i = 0; i < p->ndel; i++)
		ph_info("%s: rule removed: no new connections; open ones finish",
		        rule_origin(p->del[i]));
	ph_svc_say(rl->r, false, "reloaded %s: %u rules unchanged, %u started, %u removed",
	           rs->cfg->run_file, rl->nkept, p->nadd, p->ndel);
	ph_timer_arm(rs->svc.loop, &rs->retire, 1000);
}

/*
 * SIGHUP: reads the file again. When it is good, rules whose line is unchanged keep
 * running untouched, new rules start (taking over the listeners of a removed rule on the
 * very same address), and removed rules stop accepting while their connections finish.
 * When it is bad, or a new listener cannot be bound, nothing changes.
 */
static void rules_reload(struct ph_svc *s, struct ph_svc_reload *r)
{
	struct rules *rs = rules_of(s);
	struct reload rl = {.r = r};
	struct reload_plan *p;

	if (rs->cfg->run_file == NULL) {
		if (r->msg[0] != '\0')
			return; /* another service reloaded (a command-line server's keys) */
		ph_warn("SIGHUP: the rules came from the command line; nothing to reload "
		        "(pinhole run FILE reloads FILE)");
		snprintf(r->msg, sizeof(r->msg),
		         "nothing to reload: the rules came from the command line\n");
		return;
	}
	ph_config_init(&rl.nc);
	if (reload_read(rs, &rl) < 0 || reload_bind(rs, &rl) < 0)
		goto out;
	p = rl.p;
	if (rs->nretiring + p->ndel > 0) {
		struct ph_rule **rt =
			realloc(rs->retiring, (rs->nretiring + p->ndel) * sizeof(*rt));

		if (rt == NULL) {
			ph_svc_say(r, true,
			           "reload: out of memory; the running rules stay as they are");
			goto out;
		}
		rs->retiring = rt;
	}
	reload_switch(rs, &rl);
	reload_finish(rs, &rl, p);
out:
	if (rl.p != NULL) {
		free(rl.p->add);
		free(rl.p->del);
		free(rl.p->calls);
		free(rl.p);
	}
	free(rl.kept);
	free(rl.final);
	ph_config_free(&rl.nc); /* rules bound but not attached go with it */
}

/* ---- the service's hooks ---- */

static void rules_abort(struct rules *rs)
{
	if (rs->aborting)
		return;
	rs->aborting = true;
	for (unsigned i = 0; i < rs->nw; i++)
		ph_worker_post(rs->w[i], PH_WORKER_ABORT);
}

static void rules_on_done(struct ph_io *io, uint32_t events)
{
	struct rules *rs = container_of(io, struct rules, done_io);
	uint64_t n;

	(void)events;
	if (read(io->fd, &n, sizeof(n)) != (ssize_t)sizeof(n))
		return;
	rs->ended += (unsigned)n;
	ph_svc_changed(&rs->svc, 0);
}

/* The workers (their loops, not their threads yet), one per nw. Returns 0 or -errno. */
static int workers_init(struct rules *rs)
{
	const struct ph_config *cfg = rs->cfg;
	struct ph_worker_opts wo = {.pipe_size = cfg->pipe_size, .spare_pipes = PH_RUN_SPARE_PIPES};
	int err;

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
	rs->w = calloc(rs->want != 0 ? rs->want : 1, sizeof(*rs->w));
	if (rs->w == NULL)
		return -ENOMEM;
	for (; rs->nw < rs->want; rs->nw++) {
		rs->w[rs->nw] = malloc(sizeof(**rs->w));
		if (rs->w[rs->nw] == NULL)
			return -ENOMEM;
		err = ph_worker_init(rs->w[rs->nw], (int)rs->nw, &wo, rs->done_io.fd);
		if (err < 0) {
			free(rs->w[rs->nw]);
			rs->w[rs->nw] = NULL;
			fprintf(stderr, "pinhole: cannot start worker %u: %s\n", rs->nw,
			        strerror(-err));
			return err;
		}
	}
	return 0;
}

/* As root: the resolver, the workers' loops, every rule's listeners bound. */
static int rules_open(struct ph_svc *s)
{
	struct rules *rs = rules_of(s);
	struct ph_config *cfg = rs->cfg;
	char why[256];
	int fd, err;

	if (ph_resolve_global_init() < 0) {
		fprintf(stderr, "pinhole: cannot initialise the resolver (c-ares)\n");
		return -EIO;
	}
	fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (fd == -1) {
		err = -errno;
		fprintf(stderr, "pinhole: %s\n", strerror(-err));
		return err;
	}
	ph_io_init(&rs->done_io, fd, rules_on_done);
	err = ph_io_add(s->loop, &rs->done_io, EPOLLIN);
	if (err == 0)
		err = workers_init(rs);
	if (err < 0)
		return err;
	/* socks' `local` covers this host's own addresses: read them now, and on reload */
	err = ph_hostaddrs_read(&rs->self);
	if (err < 0) {
		fprintf(stderr, "pinhole: cannot read this host's addresses: %s\n", strerror(-err));
		return err;
	}
	for (unsigned i = 0; i < rs->nw; i++)
		rs->w[i]->self_addrs = rs->self;
	for (unsigned i = 0; i < cfg->nrules; i++) {
		err = ph_forward_start(cfg->rules[i], rs->w, rs->nw, why, sizeof(why));
		if (err < 0) {
			fprintf(stderr, "pinhole: %s\n", why);
			return err;
		}
	}
	for (unsigned i = 0; i < cfg->nrules; i++)
		log_rule(cfg->rules[i], rs->nw);
	return 0;
}

/* In the sandbox: the worker threads, then the --map keepers. */
static int rules_start(struct ph_svc *s)
{
	struct rules *rs = rules_of(s);
	int err;

	for (unsigned i = 0; i < rs->nw; i++) {
		err = ph_worker_start(rs->w[i]);
		if (err < 0) {
			fprintf(stderr, "pinhole: cannot start a worker thread: %s\n",
			        strerror(-err));
			rules_abort(rs); /* those started end; free joins them */
			return err;
		}
		rs->started++;
	}
	for (unsigned i = 0; i < rs->cfg->nrules; i++)
		map_start(rs, rs->cfg->rules[i]);
	rs->start = s->loop->now;
	return 0;
}

/* The status report's body (or the metrics): always the first part of a reply. */
static char *rules_status(struct ph_svc *s, enum ph_svc_fmt f, char *reply, size_t *len)
{
	struct rules *rs = rules_of(s);
	struct ph_stats totals;
	struct ph_status_src src = {
		.totals = &totals,
		.version = PH_VERSION,
		.uptime_ms = s->loop->now - rs->start,
		.workers = rs->nw,
		.pid = (long)getpid(),
		.file = rs->cfg->run_file,
		.rules = rs->cfg->rules,
		.nrules = rs->cfg->nrules,
		.retiring = rs->retiring,
		.nretiring = rs->nretiring,
	};

	if (reply != NULL)
		return reply;
	ph_stats_sum(rs->w, rs->nw, &totals);
	if (f == PH_SVC_METRICS)
		return ph_metrics_render(&src, len);
	return ph_status_render(&src, f == PH_SVC_JSON, len);
}

static void rules_stats(struct ph_svc *s, const char *what)
{
	struct rules *rs = rules_of(s);
	struct ph_stats st;
	char up[32], down[32];

	if (rs->nw == 0 && rs->cfg->nrules == 0)
		return; /* no forward rule: its counters would say "0 connections" */
	ph_stats_sum(rs->w, rs->nw, &st);
	ph_info("%s: %llu connections (%llu active), %s up, %s down, %llu bytes spliced, "
	        "%llu copied, %llu denied, %llu over limit, %llu target failures, %llu resets, "
	        "%llu errors",
	        what, (unsigned long long)st.accepted, (unsigned long long)st.active,
	        ph_fmt_bytes(st.bytes_up, up, sizeof(up)),
	        ph_fmt_bytes(st.bytes_down, down, sizeof(down)), (unsigned long long)st.spliced,
	        (unsigned long long)st.copied, (unsigned long long)st.denied,
	        (unsigned long long)st.over_limit, (unsigned long long)st.connect_failed,
	        (unsigned long long)st.resets, (unsigned long long)st.errors);
	if (rs->udp)
		ph_info("%s udp: %llu sessions (%llu active), %llu datagrams up, %llu down, "
		        "%llu dropped, %llu evicted",
		        what, (unsigned long long)st.udp_sessions,
		        (unsigned long long)st.udp_active, (unsigned long long)st.dgrams_up,
		        (unsigned long long)st.dgrams_down, (unsigned long long)st.dgrams_dropped,
		        (unsigned long long)st.udp_evicted);
}

static void rules_failures(struct ph_svc *s, struct ph_logagg *sum)
{
	struct rules *rs = rules_of(s);

	for (unsigned i = 0; i < rs->nw; i++)
		ph_logagg_take(sum, &rs->w[i]->agg);
}

/* No new connections; open ones get --drain-timeout; every keeper deletes its mapping. */
static void rules_drain(struct ph_svc *s)
{
	struct rules *rs = rules_of(s);
	struct ph_stats st;

	ph_stats_sum(rs->w, rs->nw, &st);
	if (rs->nw > 0)
		ph_info("stopping: no new connections; %llu open ones get up to %llu ms",
		        (unsigned long long)st.active, (unsigned long long)rs->cfg->drain_timeout);
	for (unsigned i = 0; i < rs->nw; i++)
		ph_worker_post(rs->w[i], PH_WORKER_DRAIN);
	for (unsigned i = 0; i < rs->cfg->nrules; i++)
		map_stop(rs, rs->cfg->rules[i]);
}

static void rules_stop(struct ph_svc *s, enum ph_svc_stop why)
{
	struct rules *rs = rules_of(s);
	struct ph_stats st;

	if (why == PH_SVC_TIMEOUT) {
		ph_stats_sum(rs->w, rs->nw, &st);
		ph_warn("drain timeout: closing %llu connections still open",
		        (unsigned long long)st.active);
	} else {
		ph_info("second signal: stopping now");
	}
	rules_abort(rs);
}

/* Every worker ended and every mapping is deleted (or given up, bounded). */
static bool rules_done(struct ph_svc *s)
{
	struct rules *rs = rules_of(s);

	return rs->ended >= rs->started && ph_list_empty(&rs->unmapping);
}

static void rules_free(struct ph_svc *s)
{
	struct rules *rs = rules_of(s);

	/* workers that never started are told to abort and are not waited for */
	rules_abort(rs);
	/* mappings not deleted in time (a second signal) stay with the router, for their lease */
	for (unsigned i = 0; i < rs->cfg->nrules; i++) {
		ph_map_keeper_free(rs->cfg->rules[i]->keeper);
		rs->cfg->rules[i]->keeper = NULL;
	}
	while (!ph_list_empty(&rs->unmapping)) {
		struct unmapping *u = container_of(rs->unmapping.next, struct unmapping, node);

		ph_list_del(&u->node);
		ph_map_keeper_free(u->k);
		free(u);
	}
	for (unsigned i = 0; i < rs->nw; i++)
		ph_worker_destroy(rs->w[i]);
	/* the rules hold parts on the workers: they go before the workers' memory does */
	for (unsigned i = 0; i < rs->cfg->nrules; i++)
		ph_forward_rule_free(rs->cfg->rules[i]);
	rs->cfg->nrules = 0;
	ph_timer_stop(s->loop, &rs->retire);
	for (unsigned i = 0; i < rs->nretiring; i++) /* removed by a reload, still finishing */
		ph_forward_rule_free(rs->retiring[i]);
	free(rs->retiring);
	while (!ph_list_empty(&rs->plans))
		plan_free(container_of(rs->plans.next, struct reload_plan, node));
	ph_hostaddrs_free(rs->self);
	for (unsigned i = 0; i < rs->nw; i++)
		free(rs->w[i]);
	free(rs->w);
	ph_io_close(s->loop, &rs->done_io);
	free(rs);
}

static const struct ph_svc_ops rules_ops = {
	.name = "rules",
	.open = rules_open,
	.start = rules_start,
	.reload = rules_reload,
	.status = rules_status,
	.stats = rules_stats,
	.failures = rules_failures,
	.drain = rules_drain,
	.stop = rules_stop,
	.done = rules_done,
	.free = rules_free,
};

int ph_run_rules_new(struct ph_config *cfg, unsigned nw, struct ph_svc **out)
{
	struct rules *rs = calloc(1, sizeof(*rs));

	*out = NULL;
	if (rs == NULL)
		return -ENOMEM;
	rs->svc.ops = &rules_ops;
	rs->cfg = cfg;
	rs->want = nw;
	ph_io_init(&rs->done_io, -1, rules_on_done);
	ph_timer_init(&rs->retire, rules_on_retire);
	ph_list_init(&rs->plans);
	ph_list_init(&rs->unmapping);
	for (unsigned i = 0; i < cfg->nrules; i++)
		rs->udp |= (cfg->rules[i]->listen.proto & PH_PROTO_UDP) != 0;
	*out = &rs->svc;
	return 0;
}
