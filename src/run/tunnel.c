/*
 * The tunnel service: the relay (`server`) and the exposer (`expose` rules) of a config,
 * both on the main thread's loop (tunnel/tunnel.h). They read their keys at open, end at
 * once when draining (a GOAWAY to every session), and keep what they carried for the
 * stopped: lines.
 */
#include "run/run.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/svc.h"
#include "core/util.h"
#include "tunnel/tunnel.h"

struct tunnel {
	struct ph_svc svc;
	const struct ph_config *cfg; /* borrowed */
	struct ph_relay *relay;      /* owned: `server`, or NULL */
	struct ph_exposer *exposer;  /* owned: the `expose` rules, or NULL */
	struct ph_task fatal;        /* the exposer gave up: stop, exit status 1 */
	struct ph_task end;          /* frees both after this round's events */
	struct ph_tunnel_stats relay_last, expose_last; /* what they carried, once freed */
};

static struct tunnel *tunnel_of(struct ph_svc *s)
{
	return container_of(s, struct tunnel, svc);
}

static void tunnel_on_fatal(struct ph_task *t)
{
	struct tunnel *tn = container_of(t, struct tunnel, fatal);

	ph_svc_changed(&tn->svc, 1);
}

static void tunnel_expose_fatal(void *arg)
{
	struct tunnel *tn = arg;

	ph_task_queue(tn->svc.loop, &tn->fatal); /* not from inside the exposer's callback */
}

static void tunnel_on_end(struct ph_task *t)
{
	struct tunnel *tn = container_of(t, struct tunnel, end);

	if (tn->relay != NULL) /* its counters, for the stopped: line */
		ph_relay_stats(tn->relay, &tn->relay_last);
	if (tn->exposer != NULL)
		ph_expose_stats(tn->exposer, &tn->expose_last);
	ph_relay_free(tn->relay); /* a GOAWAY to every session */
	tn->relay = NULL;
	ph_expose_free(tn->exposer);
	tn->exposer = NULL;
	ph_svc_changed(&tn->svc, 0);
}

/* As root: the relay binds and reads its keys; the exposer reads its key and pins. */
static int tunnel_open(struct ph_svc *s)
{
	struct tunnel *tn = tunnel_of(s);
	const struct ph_config *cfg = tn->cfg;
	char why[256];
	int err;

	if (cfg->server != NULL) {
		err = ph_relay_start(s->loop, cfg->server, &tn->relay, why, sizeof(why));
		if (err < 0) {
			fprintf(stderr, "pinhole: server: %s\n", why);
			return err;
		}
	}
	if (cfg->nexpose != 0) {
		err = ph_expose_start(s->loop, cfg->expose, cfg->nexpose, tunnel_expose_fatal, tn,
		                      &tn->exposer, why, sizeof(why));
		if (err < 0) {
			fprintf(stderr, "pinhole: expose: %s\n", why);
			return err;
		}
	}
	return 0;
}

/* The relay's authorized keys: a removed key loses its sessions now. */
static void tunnel_reload(struct ph_svc *s, struct ph_svc_reload *r)
{
	struct tunnel *tn = tunnel_of(s);
	char why[1024];
	int n;

	if (tn->relay == NULL)
		return;
	n = ph_relay_reload(tn->relay, why, sizeof(why));
	/* the reply's last line says how it went: "reloaded" when the relay is all */
	ph_svc_say(r, n < 0, "%s%s",
	           n < 0                       ? "reload: relay: "
	           : tn->cfg->run_file == NULL ? "reloaded the relay's keys: "
	                                       : "relay: ",
	           why);
}

/* Appends a status part: text as it is, JSON as a field "name" of the reply's object. */
static char *add_status(char *r, size_t *len, bool json, const char *name, void *x,
                        size_t (*fn)(void *x, bool json, char *buf, size_t len))
{
	size_t cap = 64 * 1024, n = *len;
	char *t;

	t = realloc(r, *len + cap);
	if (t == NULL)
		return r;
	r = t;
	if (json) { /* into the object: before its closing brace */
		while (n > 0 && r[n - 1] != '}')
			n--;
		if (n == 0)
			return r;
		n--;
		n += (size_t)snprintf(r + n, *len + cap - n, ",\"%s\":", name);
		n += fn(x, true, r + n, *len + cap - n - 4);
		n += (size_t)snprintf(r + n, *len + cap - n, "}\n");
	} else {
		n += fn(x, false, r + n, *len + cap - n - 1);
	}
	r[n] = '\0';
	*len = n;
	return r;
}

static size_t relay_status(void *x, bool json, char *buf, size_t len)
{
	return ph_relay_status(x, json, buf, len);
}

static size_t expose_status(void *x, bool json, char *buf, size_t len)
{
	return ph_expose_status(x, json, buf, len);
}

static char *tunnel_status(struct ph_svc *s, enum ph_svc_fmt f, char *reply, size_t *len)
{
	struct tunnel *tn = tunnel_of(s);

	if (reply == NULL)
		return reply;
	if (f == PH_SVC_METRICS) /* the relay's and the client's families after the rules' */
		return ph_metrics_tunnels(reply, len, tn->relay, tn->exposer);
	if (tn->relay != NULL)
		reply = add_status(reply, len, f == PH_SVC_JSON, "relay", tn->relay, relay_status);
	if (tn->exposer != NULL)
		reply = add_status(reply, len, f == PH_SVC_JSON, "expose", tn->exposer,
		                   expose_status);
	return reply;
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

static void tunnel_stats(struct ph_svc *s, const char *what)
{
	struct tunnel *tn = tunnel_of(s);

	if (tn->cfg->server != NULL) {
		if (tn->relay != NULL)
			ph_relay_stats(tn->relay, &tn->relay_last);
		log_tunnel_stats(what, "relay", &tn->relay_last);
	}
	if (tn->cfg->nexpose != 0) {
		if (tn->exposer != NULL)
			ph_expose_stats(tn->exposer, &tn->expose_last);
		log_tunnel_stats(what, "expose", &tn->expose_last);
	}
}

/* Both end at once, after this round: events of this round may still name them. */
static void tunnel_drain(struct ph_svc *s)
{
	struct tunnel *tn = tunnel_of(s);

	if (tn->relay != NULL || tn->exposer != NULL)
		ph_task_queue(s->loop, &tn->end);
}

static bool tunnel_done(struct ph_svc *s)
{
	struct tunnel *tn = tunnel_of(s);

	return tn->relay == NULL && tn->exposer == NULL;
}

static void tunnel_free(struct ph_svc *s)
{
	struct tunnel *tn = tunnel_of(s);

	ph_relay_free(tn->relay);
	ph_expose_free(tn->exposer);
	ph_task_cancel(&tn->fatal);
	ph_task_cancel(&tn->end);
	free(tn);
}

static const struct ph_svc_ops tunnel_ops = {
	.name = "tunnel",
	.open = tunnel_open,
	.reload = tunnel_reload,
	.status = tunnel_status,
	.stats = tunnel_stats,
	.drain = tunnel_drain,
	.done = tunnel_done,
	.free = tunnel_free,
};

int ph_run_tunnel_new(const struct ph_config *cfg, struct ph_svc **out)
{
	struct tunnel *tn = calloc(1, sizeof(*tn));

	*out = NULL;
	if (tn == NULL)
		return -ENOMEM;
	tn->svc.ops = &tunnel_ops;
	tn->cfg = cfg;
	ph_task_init(&tn->fatal, tunnel_on_fatal);
	ph_task_init(&tn->end, tunnel_on_end);
	*out = &tn->svc;
	return 0;
}
