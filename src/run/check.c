/*
 * The check service: `pinhole check PORT --via RELAY` asks the relay once and ends with
 * the answer's exit status; with `pinhole map PORT --check --via RELAY` it waits for the
 * map service to make each mapping and asks the relay about its external port (TCP, then
 * UDP with --both), once per protocol, on one session kept until every protocol mapped was
 * checked (a mapping made after the other's check still finds it). Answers are printed on stdout, one line each (or a
 * JSON object with --json); no answer (the relay unreachable, its key refused) is said on
 * stderr. The relay's session is the exposer's (tunnel/tunnel.h: ph_check_open).
 */
#include "run/run.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/svc.h"
#include "core/util.h"
#include "portmap/portmap.h"
#include "tunnel/msg.h"
#include "tunnel/tunnel.h"

struct check {
	struct ph_svc svc;
	const struct ph_config *cfg; /* borrowed */
	struct ph_exposer *x;        /* owned: the session to the relay, NULL once ended */
	bool map;                    /* map --check: the map service names the ports */
	bool busy;                   /* a check is in flight */
	unsigned wanted, asked;      /* map: PH_MAP_TCP/UDP mapped, and already checked */
	uint16_t ext[2];             /* map: each one's external port (TCP, UDP) */
	struct ph_addr extip[2];     /* map: and the router's external address */
	bool finished;               /* nothing more to ask: done */
	int status;                  /* the exit status it asks for: 0 open, 1 else */
	struct ph_task end;          /* ends the session after the round that answered */
};

static struct check *check_of(struct ph_svc *s)
{
	return container_of(s, struct check, svc);
}

/* The address of a alone ("203.0.113.7"), or "?" when there is none. Returns buf. */
static const char *ip_str(const struct ph_addr *a, char *buf, size_t len)
{
	const void *ip = a->u.sa.sa_family == AF_INET6 ? (const void *)&a->u.in6.sin6_addr
	                                               : (const void *)&a->u.in.sin_addr;

	if (a->u.sa.sa_family == AF_UNSPEC ||
	    inet_ntop(a->u.sa.sa_family, ip, buf, (socklen_t)len) == NULL)
		snprintf(buf, len, "?");
	return buf;
}

/* s as the inside of a JSON string: quotes, backslashes and control bytes escaped. */
static void json_str(FILE *f, const char *s)
{
	for (; *s != '\0'; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20 || ch == 0x7f)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
}

/* One answer on stdout: "tcp/8080 at 203.0.113.7: open", or its JSON object. */
static void print_result(const struct check *ck, const struct ph_check_result *r)
{
	const char *proto = r->udp ? "udp" : "tcp";
	char ip[PH_ADDR_STRLEN];

	ip_str(&r->addr, ip, sizeof(ip));
	if (ck->cfg->json) {
		printf("{\"relay\":\"");
		json_str(stdout, r->relay);
		printf("\",\"proto\":\"%s\",\"port\":%u,\"address\":\"%s\",\"result\":\"%s\","
		       "\"reason\":\"",
		       proto, r->port, r->addr.u.sa.sa_family != AF_UNSPEC ? ip : "",
		       r->result != 0 ? ph_check_result_name(r->result) : "error");
		json_str(stdout, r->text);
		printf("\"}\n");
	} else if (r->result != 0) {
		/* open needs no reason ("connected"); the others say theirs */
		printf("%s%s/%u at %s: %s%s%s%s\n", ck->map ? "check: " : "", proto, r->port, ip,
		       ph_check_result_name(r->result),
		       r->result != PH_CHECK_OPEN && r->text[0] ? " (" : "",
		       r->result != PH_CHECK_OPEN ? r->text : "",
		       r->result != PH_CHECK_OPEN && r->text[0] ? ")" : "");
	}
	fflush(stdout);
	if (r->result == 0)
		fprintf(stderr, "pinhole: check %s/%u through %s: %s\n", proto, r->port, r->relay,
		        r->text);
}

/* Asks about the next mapping not checked yet, if any. Returns true when one was asked. */
static bool check_next(struct check *ck)
{
	for (unsigned i = 0; i < 2; i++) {
		unsigned p = i == 0 ? PH_MAP_TCP : PH_MAP_UDP;

		if ((ck->wanted & p) && !(ck->asked & p)) {
			ck->asked |= p;
			ck->busy = true;
			ph_check_go(ck->x, p == PH_MAP_UDP, ck->ext[i]);
			return true;
		}
	}
	return false;
}

/* The relay answered (or none came): printed; then the next mapping, or the end. */
static void check_done(void *arg, const struct ph_check_result *r)
{
	struct check *ck = arg;
	char a[PH_ADDR_STRLEN], b[PH_ADDR_STRLEN];
	const struct ph_addr *extip = &ck->extip[r->udp ? 1 : 0];

	ck->busy = false;
	print_result(ck, r);
	if (r->result != PH_CHECK_OPEN)
		ck->status = 1;
	if (ck->map && r->addr.u.sa.sa_family != AF_UNSPEC && extip->u.sa.sa_family != AF_UNSPEC &&
	    !ph_addr_same_host(&r->addr, extip))
		ph_warn("map: the relay sees this host at %s, not at the router's external address "
		        "%s: there is another NAT between the router and the relay, and the "
		        "mapping "
		        "is not what the relay tried",
		        ip_str(&r->addr, a, sizeof(a)), ip_str(extip, b, sizeof(b)));
	if (ck->map && check_next(ck))
		return;
	if (ck->map && (ck->asked & ck->cfg->map.protos) != ck->cfg->map.protos)
		return; /* --both: the other mapping is not made yet; the session waits for it */
	ph_task_queue(ck->svc.loop, &ck->end); /* not from inside the exposer's callback */
}

/* No more to ask: the session ends; `check` ends the process with the answer's status. */
static void check_on_end(struct ph_task *t)
{
	struct check *ck = container_of(t, struct check, end);

	ph_expose_free(ck->x); /* a GOAWAY to the relay */
	ck->x = NULL;
	ck->finished = true;
	/* map: the mapping goes on whatever was found; with --once its status is the check's */
	ph_svc_changed(&ck->svc, ck->map && !ck->cfg->map.once ? 0 : ck->status);
}

/* map: a mapping was made; it is checked once per protocol, one check at a time. */
static void check_on_mapped(void *arg, unsigned proto, uint16_t ext, const struct ph_addr *extip)
{
	struct check *ck = arg;
	unsigned i = proto == PH_MAP_UDP ? 1 : 0;

	if (ck->x == NULL || (ck->wanted & proto))
		return;
	ck->wanted |= proto;
	ck->ext[i] = ext;
	ck->extip[i] = *extip;
	if (!ck->busy)
		check_next(ck);
}

/* As root: the key, the pin or the known relays (tunnel/tunnel.h). */
static int check_open(struct ph_svc *s)
{
	struct check *ck = check_of(s);
	char why[512];
	int err;

	err = ph_check_open(s->loop, &ck->cfg->relay_check, check_done, ck, &ck->x, why,
	                    sizeof(why));
	if (err < 0) {
		fprintf(stderr, "pinhole: check: %s\n", why);
		return err;
	}
	return 0;
}

/* `check`: asks at once. map --check asks when the map service says a mapping is made. */
static int check_start(struct ph_svc *s)
{
	struct check *ck = check_of(s);
	const struct ph_check_conf *c = &ck->cfg->relay_check;

	if (!ck->map) {
		ck->busy = true;
		ph_check_go(ck->x, c->udp, c->port);
	}
	return 0;
}

/* A signal: the session ends now (a check in flight is not answered: exit 1 for check). */
static void check_drain(struct ph_svc *s)
{
	struct check *ck = check_of(s);

	if (ck->finished)
		return;
	ph_task_cancel(&ck->end);
	ph_expose_free(ck->x);
	ck->x = NULL;
	ck->finished = true;
	ph_svc_changed(s, ck->map ? 0 : 1);
}

static bool check_is_done(struct ph_svc *s)
{
	return check_of(s)->finished;
}

static void check_free(struct ph_svc *s)
{
	struct check *ck = check_of(s);

	ph_task_cancel(&ck->end);
	ph_expose_free(ck->x);
	free(ck);
}

static const struct ph_svc_ops check_ops = {
	.name = "check",
	.open = check_open,
	.start = check_start,
	.drain = check_drain,
	.done = check_is_done,
	.free = check_free,
};

int ph_run_check_new(const struct ph_config *cfg, struct ph_svc *map, struct ph_svc **out)
{
	struct check *ck = calloc(1, sizeof(*ck));

	*out = NULL;
	if (ck == NULL)
		return -ENOMEM;
	ck->svc.ops = &check_ops;
	ck->cfg = cfg;
	ck->map = map != NULL;
	ph_task_init(&ck->end, check_on_end);
	if (map != NULL)
		ph_map_svc_on_mapped(map, check_on_mapped, ck);
	*out = &ck->svc;
	return 0;
}
