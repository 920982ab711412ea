/*
 * pinhole: the command line. Parses the words (one grammar, src/cli/), then hands the verb
 * to a short supervisor: the main thread's loop, its signals, and the services it starts
 * through one interface (core/svc.h): the rules on their workers, the control socket, the
 * relay and its clients (src/run/), or a router's port mapping (`pinhole map`).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/conf.h"
#include "config.h"
#include "conn/accept.h"
#include "conn/rule.h"
#include "core/connlog.h"
#include "core/log.h"
#include "core/logagg.h"
#include "core/loop.h"
#include "core/sandbox.h"
#include "core/service.h"
#include "core/svc.h"
#include "core/util.h"
#include "ctl/ctl.h"
#include "portmap/portmap.h"
#include "run/run.h"
#include "tunnel/keys.h"

#define FDS_BASE       32                   /* stdio, epoll, eventfds, resolver sockets, a spare */
#define FDS_PER_WORKER 8                    /* epoll, eventfd, listener, spare pipes */
#define FDS_PER_CONN   (PH_FDS_FORWARD + 2) /* its sockets, and a pipe while bytes flow */

#define SUP_MAX_SVC 4

/* The supervisor: the main thread while the services run. */
struct sup {
	struct ph_loop loop;
	struct ph_io sig_io;             /* signalfd */
	struct ph_timer drain;           /* --drain-timeout, from the first signal */
	struct ph_timer agg_tick;        /* logs every thread's counted failures */
	uint64_t agg_since;              /* loop ms of the last such line */
	struct ph_logagg agg;            /* failures counted on this thread (the relay, expose) */
	struct ph_svc *svc[SUP_MAX_SVC]; /* owned, in the order they open and start */
	unsigned nsvc;
	struct ph_config *cfg; /* borrowed: --user, --pidfile, --log-file, --drain-timeout */
	bool files;            /* --pidfile and --log-file are ours to write */
	bool sandbox;          /* the services start in the sandbox (unless --no-sandbox) */
	/* `pinhole map`: SIGHUP stops it as SIGTERM does, SIGUSR1 keeps its default action
	 * and no drain deadline is set (its deletions have their own) */
	bool map;
	bool stopping;    /* the first signal came (or a service gave up) */
	bool pid_written; /* --pidfile is ours to remove */
	int status;       /* the exit status: 0, or what a service that gave up asked for */
	struct ph_svc_reload reload; /* what the last reload said, for `pinhole reload` */
};

static int enter_sandbox(const struct ph_config *cfg);

/* Ends the loop once every service is done. */
static void sup_maybe_stop(struct sup *sp)
{
	for (unsigned i = 0; i < sp->nsvc; i++)
		if (sp->svc[i]->ops->done != NULL && !sp->svc[i]->ops->done(sp->svc[i]))
			return;
	ph_loop_stop(&sp->loop);
}

/* The first SIGTERM or SIGINT (or a service that gave up): every service drains. */
static void sup_drain(struct sup *sp)
{
	sp->stopping = true;
	ph_notify("STOPPING=1");
	for (unsigned i = 0; i < sp->nsvc; i++)
		if (sp->svc[i]->ops->drain != NULL)
			sp->svc[i]->ops->drain(sp->svc[i]);
	if (!sp->map)
		ph_timer_arm(&sp->loop, &sp->drain, sp->cfg->drain_timeout);
	sup_maybe_stop(sp);
}

/* Draining ends now: a second signal, or the drain deadline. */
static void sup_stop(struct sup *sp, enum ph_svc_stop why)
{
	for (unsigned i = 0; i < sp->nsvc; i++)
		if (sp->svc[i]->ops->stop != NULL)
			sp->svc[i]->ops->stop(sp->svc[i], why);
	sup_maybe_stop(sp);
}

static void sup_on_drain_timeout(struct ph_timer *t)
{
	sup_stop(container_of(t, struct sup, drain), PH_SVC_TIMEOUT);
}

/* ph_svc_changed: a service may be done, or gave up (status != 0: everything stops). */
static void sup_on_changed(struct ph_svc *s, int status)
{
	struct sup *sp = s->sup;

	if (status != 0) {
		sp->status = status;
		if (!sp->stopping)
			sup_drain(sp);
	}
	sup_maybe_stop(sp);
}

/*
 * Logs every service's counters. From the last service to the first: the tunnel's lines
 * have always come before the forward rules' (tests/e2e parse them).
 */
static void sup_stats(struct sup *sp, const char *what)
{
	for (unsigned i = sp->nsvc; i-- > 0;)
		if (sp->svc[i]->ops->stats != NULL)
			sp->svc[i]->ops->stats(sp->svc[i], what);
}

/* Logs the failures every thread counted since the last time (one line per kind). */
static void sup_failures(struct sup *sp)
{
	struct ph_logagg *sum = malloc(sizeof(*sum));

	if (sum == NULL)
		return; /* the counts wait for the next tick */
	ph_logagg_init(sum);
	ph_logagg_take(sum, &sp->agg);
	for (unsigned i = 0; i < sp->nsvc; i++)
		if (sp->svc[i]->ops->failures != NULL)
			sp->svc[i]->ops->failures(sp->svc[i], sum);
	ph_logagg_report(sum, sp->loop.now - sp->agg_since);
	sp->agg_since = sp->loop.now;
	ph_logagg_destroy(sum);
	free(sum);
}

static void sup_on_agg_tick(struct ph_timer *t)
{
	struct sup *sp = container_of(t, struct sup, agg_tick);

	sup_failures(sp);
	ph_timer_arm(&sp->loop, &sp->agg_tick, PH_LOGAGG_INTERVAL_MS);
}

/*
 * SIGHUP or `pinhole reload`: every service reloads, from the last to the first (the
 * relay's keys before FILE's rules: the reply's last line says how FILE went).
 */
static void sup_reload(struct sup *sp)
{
	sp->reload.msg[0] = '\0';
	if (sp->stopping) {
		snprintf(sp->reload.msg, sizeof(sp->reload.msg), "stopping: no reload now\n");
		return;
	}
	for (unsigned i = sp->nsvc; i-- > 0;)
		if (sp->svc[i]->ops->reload != NULL)
			sp->svc[i]->ops->reload(sp->svc[i], &sp->reload);
}

/* A command on the control socket or --metrics. Returns the reply (malloc'd), or NULL. */
static char *sup_ctl(void *arg, const char *cmd, size_t *len)
{
	struct sup *sp = arg;
	enum ph_svc_fmt f = PH_SVC_TEXT;
	char *r = NULL;

	*len = 0;
	if (strcmp(cmd, "status") == 0 || strcmp(cmd, "status json") == 0 ||
	    strcmp(cmd, "metrics") == 0) {
		f = cmd[0] == 'm' ? PH_SVC_METRICS : cmd[6] == ' ' ? PH_SVC_JSON : PH_SVC_TEXT;
		for (unsigned i = 0; i < sp->nsvc; i++)
			if (sp->svc[i]->ops->status != NULL)
				r = sp->svc[i]->ops->status(sp->svc[i], f, r, len);
		return r;
	}
	if (strcmp(cmd, "reload") == 0) {
		ph_notify("RELOADING=1");
		sup_reload(sp);
		ph_notify("READY=1");
		r = strdup(sp->reload.msg);
	} else {
		r = strdup("unknown command (status, status json, reload)\n");
	}
	if (r != NULL)
		*len = strlen(r);
	return r;
}

static void sup_on_signal(struct ph_io *io, uint32_t events)
{
	struct sup *sp = container_of(io, struct sup, sig_io);
	struct signalfd_siginfo si;

	(void)events;
	while (read(io->fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (si.ssi_signo == SIGUSR1) {
			sup_stats(sp, "stats");
		} else if (si.ssi_signo == SIGHUP && !sp->map) {
			ph_notify("RELOADING=1");
			sup_reload(sp);
			ph_notify("READY=1"); /* done, whether the new file was taken or not */
		} else if (sp->stopping) {    /* SIGTERM, SIGINT (and SIGHUP for map) */
			sup_stop(sp, PH_SVC_AGAIN);
		} else {
			sup_drain(sp);
		}
	}
}

/* A supervisor for cfg (borrowed) with no service yet; the caller sets the flags. */
static void sup_setup(struct sup *sp, struct ph_config *cfg)
{
	memset(sp, 0, sizeof(*sp));
	sp->cfg = cfg;
	ph_io_init(&sp->sig_io, -1, sup_on_signal);
	ph_timer_init(&sp->drain, sup_on_drain_timeout);
	ph_timer_init(&sp->agg_tick, sup_on_agg_tick);
}

/* Adds s (owned from here) to the services, after those added before. */
static void sup_add(struct sup *sp, struct ph_svc *s)
{
	s->loop = &sp->loop;
	s->changed = sup_on_changed;
	s->sup = sp;
	sp->svc[sp->nsvc++] = s;
}

/* Frees every service, the last first (the workers end before the files close). */
static void sup_free_services(struct sup *sp)
{
	for (unsigned i = sp->nsvc; i-- > 0;)
		sp->svc[i]->ops->free(sp->svc[i]);
	sp->nsvc = 0;
}

/*
 * The signals, read from a signalfd (every thread made after this inherits the mask),
 * and the failure counts of this thread, on sp's loop. Returns 0, or -errno (said).
 */
static int sup_init(struct sup *sp)
{
	sigset_t sigs;
	int fd, err;

	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	if (!sp->map)
		sigaddset(&sigs, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	ph_logagg_init(&sp->agg);
	ph_logagg_bind(&sp->agg);
	fd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
	if (fd == -1) {
		err = -errno;
		fprintf(stderr, "pinhole: %s\n", strerror(-err));
		return err;
	}
	sp->sig_io.fd = fd;
	return ph_io_add(&sp->loop, &sp->sig_io, EPOLLIN);
}

/* As root, once the services opened: --pidfile, then --log-file. Returns 0 or -errno. */
static int sup_open_files(struct sup *sp)
{
	const struct ph_config *cfg = sp->cfg;
	int err;

	if (sp->files && cfg->pidfile[0] != '\0') {
		err = ph_pidfile_write(cfg->pidfile);
		if (err < 0) {
			fprintf(stderr, "pinhole: --pidfile '%s': %s\n", cfg->pidfile,
			        strerror(-err));
			return err;
		}
		sp->pid_written = true;
	}
	/* opened as root: the file may be where only root writes */
	if (sp->files && cfg->logfile[0] != '\0') {
		err = ph_connlog_open(cfg->logfile, (enum ph_connlog_format)cfg->logformat);
		if (err < 0) {
			fprintf(stderr, "pinhole: --log-file '%s': %s\n", cfg->logfile,
			        err == -EINVAL  ? "not a regular file"
			        : err == -ELOOP ? "a symbolic link: refused (name the file itself)"
			                        : strerror(-err));
			return err;
		}
	}
	return 0;
}

/*
 * Least privilege once everything is opened (docs/SECURITY.md, "The order of a start"):
 * --user, then the sandbox, before any service starts a thread. Returns 0 or -errno.
 */
static int sup_drop(struct sup *sp)
{
	const struct ph_config *cfg = sp->cfg;
	char why[256];
	int err;

	if (cfg->user[0] != '\0') {
		err = ph_drop_privileges(cfg->user, why, sizeof(why));
		if (err < 0) {
			fprintf(stderr, "pinhole: %s\n", why);
			return err;
		}
		ph_info("running as %s (uid %u, gid %u)", cfg->user, (unsigned)getuid(),
		        (unsigned)getgid());
	}
	return sp->sandbox ? enter_sandbox(cfg) : 0;
}

/* Opens every service, drops root, starts every service. Returns 0 or -errno (said). */
static int sup_start(struct sup *sp)
{
	int err = 0;

	for (unsigned i = 0; i < sp->nsvc && err == 0; i++)
		if (sp->svc[i]->ops->open != NULL)
			err = sp->svc[i]->ops->open(sp->svc[i]);
	if (err == 0)
		err = sup_open_files(sp);
	if (err == 0)
		err = sup_drop(sp);
	for (unsigned i = 0; i < sp->nsvc && err == 0; i++)
		if (sp->svc[i]->ops->start != NULL)
			err = sp->svc[i]->ops->start(sp->svc[i]);
	return err;
}

/*
 * Runs the services sp->svc until they are done (a signal drains them, or they end on
 * their own), then frees them. Returns the exit status.
 */
static int sup_run(struct sup *sp)
{
	int err, status = 1;

	if (ph_loop_init(&sp->loop) < 0) {
		sup_free_services(sp);
		return 1;
	}
	if (sup_init(sp) < 0 || sup_start(sp) < 0)
		goto out;
	sp->agg_since = sp->loop.now;
	ph_timer_arm(&sp->loop, &sp->agg_tick, PH_LOGAGG_INTERVAL_MS);
	ph_notify("READY=1");
	err = ph_loop_run(&sp->loop);
	if (err < 0)
		ph_err("main loop: %s", strerror(-err));
	else
		status = sp->status;
	sup_failures(sp);
	sup_stats(sp, "stopped");
out:
	sup_free_services(sp);
	ph_connlog_close();
	if (sp->pid_written && unlink(sp->cfg->pidfile) == -1 && errno != ENOENT)
		ph_warn("--pidfile '%s' stays: %s", sp->cfg->pidfile, strerror(errno));
	if (sp->sig_io.fd != -1)
		close(sp->sig_io.fd);
	ph_loop_free(&sp->loop);
	ph_logagg_bind(NULL); /* what is noted from here on is logged at once */
	ph_logagg_destroy(&sp->agg);
	return status;
}

/*
 * Raises the soft fd limit to the hard one and checks it covers what the rules may need;
 * what is left is the connections' fd budget (conn/accept.h). Returns 0, or -EMFILE with a
 * reason printed.
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
	need += (unsigned long long)nauto * cfg->udp_sessions + nw * PH_RUN_SPARE_PIPES * 2ull + 64;
	left = rl.rlim_cur > need ? rl.rlim_cur - need : 0;
	ph_fds_set_limit(left > 64 ? left : 64);
	return 0;
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

static unsigned online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : n > 64 ? 64 : (unsigned)n;
}

/*
 * `forward`, `socks`, `server`, `expose` on the command line and `run FILE`: the rules on
 * their workers, the control socket and --metrics, the relay and its clients, in that
 * order. Returns the exit status; cfg is the caller's to free.
 */
static int run_rules(struct ph_config *cfg)
{
	struct ph_svc *s[3] = {NULL, NULL, NULL};
	unsigned nw = cfg->workers != 0 ? cfg->workers : online_cpus();
	struct sup sp;

	if (cfg->nrules == 0 && cfg->run_file == NULL) /* server/expose: they run on this thread */
		nw = 0;
	if (check_fd_limit(cfg, nw) < 0)
		return 1;
	sup_setup(&sp, cfg);
	sp.files = true;
	sp.sandbox = true;
	ph_run_rules_new(cfg, nw, &s[0]);
	ph_run_control_new(cfg, sup_ctl, &sp, &s[1]);
	ph_run_tunnel_new(cfg, &s[2]);
	for (unsigned i = 0; i < 3; i++)
		if (s[i] != NULL)
			sup_add(&sp, s[i]);
	if (sp.nsvc != 3) {
		fprintf(stderr, "pinhole: out of memory\n");
		sup_free_services(&sp);
		return 1;
	}
	return sup_run(&sp);
}

/*
 * `map`: needs no root at all (UDP to the gateway, HTTP to its UPnP server), so --user is
 * taken before it opens anything; a map that stays to renew its lease is sandboxed like
 * the other long-running verbs. Returns the exit status.
 */
static int run_map(struct ph_config *cfg)
{
	struct ph_svc *s;
	struct sup sp;

	sup_setup(&sp, cfg);
	sp.map = true;
	sp.sandbox = cfg->map.verb == PH_MAP_ADD && !cfg->map.once;
	if (ph_map_svc_new(&cfg->map, &s) < 0) {
		fprintf(stderr, "pinhole: out of memory\n");
		return 1;
	}
	sup_add(&sp, s);
	if (cfg->relay_check.on_map) { /* --check: the relay tries each mapping once made */
		if (ph_run_check_new(cfg, s, &s) < 0) {
			fprintf(stderr, "pinhole: out of memory\n");
			sup_free_services(&sp);
			return 1;
		}
		sup_add(&sp, s);
	}
	return sup_run(&sp);
}

/*
 * `check PORT --via RELAY`: one service, the relay's answer printed; sandboxed like
 * expose, whose session it makes. Returns the exit status (0 open, 1 else).
 */
static int run_check(struct ph_config *cfg)
{
	struct ph_svc *s;
	struct sup sp;

	sup_setup(&sp, cfg);
	sp.sandbox = true;
	if (ph_run_check_new(cfg, NULL, &s) < 0) {
		fprintf(stderr, "pinhole: out of memory\n");
		return 1;
	}
	sup_add(&sp, s);
	return sup_run(&sp);
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

/* -q: errors only (warnings too are skipped); -v: a line per connection; -vv: trace */
static void set_log_level(const struct ph_config *cfg)
{
	int l = cfg->verbosity < 0 ? (int)PH_LOG_ERR : (int)PH_LOG_INFO + cfg->verbosity;

	ph_log_level = l < 0 ? PH_LOG_ERR : l > PH_LOG_TRACE ? PH_LOG_TRACE : (enum ph_log_level)l;
}

/* Parses the words, then runs the verb: the exit status (0, 1; 2 for a usage error). */
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
		set_log_level(&cfg);
		err = run_map(&cfg);
		ph_config_free(&cfg);
		return err;
	case PH_CMD_CHECK:
		/* the answer is the output: the session's own lines need -v (warnings stay) */
		cfg.verbosity--;
		set_log_level(&cfg);
		if (cfg.verbosity == -1)
			ph_log_level = PH_LOG_WARN;
		err = run_check(&cfg);
		ph_config_free(&cfg);
		return err;
	case PH_CMD_FORWARD:
		break;
	}
	set_log_level(&cfg);
	err = run_rules(&cfg);
	ph_config_free(&cfg); /* the rules went with their service */
	return err;
}
