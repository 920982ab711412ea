/*
 * The control service: the control socket (`pinhole status`, `pinhole reload`) and the
 * --metrics endpoint, both answered by the supervisor's function (ctl/ctl.h).
 */
#include "run/run.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/log.h"
#include "core/svc.h"
#include "core/util.h"

struct control {
	struct ph_svc svc;
	const struct ph_config *cfg; /* borrowed */
	ph_ctl_fn fn;                /* answers both */
	void *arg;
	struct ph_ctl *ctl;     /* owned: the control socket, or NULL */
	struct ph_ctl *metrics; /* owned: the --metrics endpoint, or NULL */
};

static struct control *control_of(struct ph_svc *s)
{
	return container_of(s, struct control, svc);
}

/*
 * As root: the socket (a failure is fatal when --control named it, else said and the
 * socket is off) and --metrics (a failure is fatal).
 */
static int control_open(struct ph_svc *s)
{
	struct control *c = control_of(s);
	const struct ph_config *cfg = c->cfg;
	char why[256], path[108];
	int err;

	if (strcmp(cfg->control, "none") != 0) {
		if (cfg->control[0] != '\0')
			snprintf(path, sizeof(path), "%s", cfg->control);
		else
			ph_ctl_default_path(path, sizeof(path));
		why[0] = '\0';
		err = ph_ctl_open(s->loop, path, c->fn, c->arg, &c->ctl, why, sizeof(why));
		if (err < 0 && cfg->control[0] != '\0') { /* asked for: a failure is fatal */
			fprintf(stderr, "pinhole: %s\n", why);
			return err;
		}
		if (err < 0)
			ph_warn("%s; status and reload through it are off", why);
	}
	if (cfg->has_metrics) {
		err = ph_metrics_open(s->loop, &cfg->metrics, c->fn, c->arg, &c->metrics, why,
		                      sizeof(why));
		if (err < 0) {
			fprintf(stderr, "pinhole: %s\n", why);
			return err;
		}
	}
	return 0;
}

static void control_free(struct ph_svc *s)
{
	struct control *c = control_of(s);

	ph_ctl_close(c->ctl);
	ph_ctl_close(c->metrics);
	free(c);
}

static const struct ph_svc_ops control_ops = {
	.name = "control",
	.open = control_open,
	.free = control_free,
};

int ph_run_control_new(const struct ph_config *cfg, ph_ctl_fn fn, void *arg, struct ph_svc **out)
{
	struct control *c = calloc(1, sizeof(*c));

	*out = NULL;
	if (c == NULL)
		return -ENOMEM;
	c->svc.ops = &control_ops;
	c->cfg = cfg;
	c->fn = fn;
	c->arg = arg;
	*out = &c->svc;
	return 0;
}
