/*
 * `pinhole map`: one UDP socket connected to the gateway's port 5351 on the supervisor's
 * loop (a service, core/svc.h), a timer per mapping (retransmission, then renewal) and one
 * for the gateway's epoch. Auto mode asks in PCP and NAT-PMP at once (ANNOUNCE, address request)
 * and maps with the best that answered.
 */
#include "portmap/portmap.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "core/net.h"
#include "core/svc.h"
#include "core/util.h"
#include "portmap/pmp.h"
#include "portmap/upnp.h"

#define PM_RTO_MS 250 /* first retransmission; doubles each time */
#define PM_PCP_RTO_MS                                                                              \
	1000                 /* PCP MAP (RFC 6887 says 3 s; a router searching a free port
                              * for each retransmission is slowed down by more) */
#define PM_PROBE_TRIES 4     /* 0.25 + 0.5 + 1 + 2 s: whether anyone answers */
#define PM_MAP_TRIES   5     /* then the mapping is retried later */
#define PM_RETRY_MS    30000 /* a mapping the gateway did not grant is asked for again */
#define PM_CHECK_MS    60000 /* the gateway's epoch is checked this often */
#define PM_DEL_MS      5000  /* at exit, deleting may take this long */
#define PM_UPNP_MS     15000 /* a UPnP job (SSDP, then HTTP calls) gets this long */
#define PM_UPNP_DEL_MS 5000  /* at exit, a UPnP deletion may take this long */
#define PM_AGAIN_MS    60000 /* a keeper whose router refused or vanished tries again */

enum pm_state {
	PM_IDLE = 0, /* waiting to ask (or to retry) */
	PM_ASKING,   /* a request is out */
	PM_MAPPED,   /* granted; the timer renews it */
	PM_DELETING, /* a delete is out */
	PM_DONE,     /* deleted, or given up */
};

struct pm;

struct pm_map {
	struct pm *pm;
	uint8_t proto; /* PH_PMP_TCP or PH_PMP_UDP */
	uint8_t state; /* enum pm_state */
	uint16_t ext;  /* the external port granted */
	uint32_t life; /* the lifetime granted, s */
	struct ph_addr extip;
	uint8_t nonce[PH_PCP_NONCE_LEN];
	struct ph_timer timer;
	unsigned tries;
	uint64_t rto;
	bool shown;     /* its line was printed */
	uint8_t want;   /* UPnP: the job it waits for (PH_UPNP_ADD, _DEL, _CHECK), or 0xff */
	bool permanent; /* UPnP: the router only grants permanent leases: checked, not renewed */
};

struct pm {
	struct ph_svc svc; /* the map command: the supervisor's service */
	const struct ph_map_conf *mc;
	struct ph_loop *loop; /* borrowed */
	/* a keeper (a rule's --map in a daemon): logs instead of stdout, never gives up */
	bool daemon;
	char label[72];            /* "RULE: " in its log lines */
	struct ph_map_conf own_mc; /* its configuration (mc points here) */
	void (*done)(void *arg);   /* called once stopped; then it frees itself */
	void *done_arg;
	struct ph_timer restart; /* a keeper that failed tries again */
	struct ph_task free_task;
	bool finished; /* a keeper: freed next; the command: done */
	bool warned;   /* about a private external address, once */
	struct ph_io sock;
	struct ph_io announce; /* 224.0.0.1:5350: the gateway says it restarted */
	struct ph_addr gw, client;
	uint8_t method; /* PH_MAP_PCP or PH_MAP_NATPMP once known; PH_MAP_AUTO before */
	bool pcp_ok;    /* answers seen while probing */
	bool natpmp_ok;
	bool have_ext; /* natpmp_ext is known */
	struct ph_addr natpmp_ext;
	struct ph_timer probe;
	unsigned probe_tries;
	uint64_t probe_rto;
	bool have_epoch;
	uint32_t epoch;    /* the gateway's, as last seen */
	uint64_t epoch_at; /* loop ms when it was seen */
	struct ph_timer check;
	bool silent; /* the gateway stopped answering (said once) */
	struct pm_map maps[2];
	unsigned nmaps;
	bool stopping;
	struct ph_timer deadline;
	int rc;
	/* UPnP IGD, on a helper thread */
	struct ph_upnp *upnp;
	struct ph_io upnp_io;          /* its eventfd: a job ended */
	struct ph_timer upnp_deadline; /* the job in flight gets this long */
	bool upnp_wanted;              /* discovery was started */
	bool upnp_done;                /* discovery ended (upnp_ok: with an IGD) */
	bool upnp_ok;
	bool upnp_stuck; /* a job ran past its deadline: no more jobs */
	bool upnp_connected;
	char upnp_extip[64], upnp_lan[64], upnp_service[160], upnp_url[256];
	struct ph_upnp_job *upnp_job; /* in flight, or NULL */
	struct ph_upnp_job upnp_req;  /* its request (the thread works on a copy) */
	bool await_upnp;              /* the probe ended: the discovery decides */
	/* `map --check`: told of each mapping made (ph_map_svc_on_mapped) */
	void (*on_mapped)(void *arg, unsigned proto, uint16_t ext, const struct ph_addr *extip);
	void *on_mapped_arg;
};

/* An address without its port. */
static const char *ip_str(const struct ph_addr *a, char *buf, size_t len)
{
	const void *p = a->u.sa.sa_family == AF_INET ? (const void *)&a->u.in.sin_addr
	                                             : (const void *)&a->u.in6.sin6_addr;

	if (a->u.sa.sa_family == 0 || inet_ntop(a->u.sa.sa_family, p, buf, (socklen_t)len) == NULL)
		snprintf(buf, len, "?");
	return buf;
}

/* A result line: stdout for the map command (scripts read it), the log for a keeper. */
static void pm_say(const struct pm *pm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pm_say(const struct pm *pm, const char *fmt, ...)
{
	char line[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (pm->free_task.fn != NULL) {
		ph_info("%smap: %s", pm->label, line);
		return;
	}
	printf("%s\n", line);
	fflush(stdout);
}

static const char *proto_str(uint8_t p)
{
	return p == PH_PMP_UDP ? "udp" : "tcp";
}

static const char *method_str(uint8_t m)
{
	return m == PH_MAP_PCP      ? "PCP"
	       : m == PH_MAP_NATPMP ? "NAT-PMP"
	       : m == PH_MAP_UPNP   ? "UPnP"
	                            : "auto";
}

bool ph_map_addr_is_private(const struct ph_addr *a)
{
	uint32_t v;

	if (a->u.sa.sa_family != AF_INET)
		return a->u.sa.sa_family != AF_INET6 ||
		       IN6_IS_ADDR_LINKLOCAL(&a->u.in6.sin6_addr) ||
		       IN6_IS_ADDR_LOOPBACK(&a->u.in6.sin6_addr) ||
		       (a->u.in6.sin6_addr.s6_addr[0] & 0xfe) == 0xfc; /* fc00::/7 */
	v = ntohl(a->u.in.sin_addr.s_addr);
	return (v >> 24) == 10 || (v >> 24) == 127 || (v >> 24) == 0 ||
	       (v >> 20) == (172u << 4 | 1) || (v >> 16) == (192u << 8 | 168) ||
	       (v >> 22) == (100u << 2 | 1) ||             /* 100.64.0.0/10, CGNAT */
	       (v >> 16) == (169u << 8 | 254) ||           /* link-local */
	       (v >> 17) == (198u << 7 | 9) ||             /* 198.18.0.0/15 */
	       (v >> 8) == (192u << 16 | 2) ||             /* 192.0.2.0/24 */
	       (v >> 8) == (198u << 16 | 51 << 8 | 100) || /* 198.51.100.0/24 */
	       (v >> 8) == (203u << 16 | 113);             /* 203.0.113.0/24 */
}

int ph_map_route_gateway(const char *path, struct ph_addr *gw)
{
	char line[256];
	FILE *f = fopen(path, "re");
	unsigned long best = ~0ul;
	int err = -ENETUNREACH;

	memset(gw, 0, sizeof(*gw));
	if (f == NULL)
		return -errno;
	while (fgets(line, sizeof(line), f) != NULL) {
		char ifn[64];
		unsigned dst, via, flags, refcnt, use, mask;
		unsigned long metric;

		/* Iface Destination Gateway Flags RefCnt Use Metric Mask ...; the header and
		 * anything else that does not scan is skipped. A default route is 0.0.0.0/0:
		 * a VPN's 0.0.0.0/1 has destination 0 too, and is no route to the LAN's
		 * router. Of several, the lowest metric is the one the kernel uses. */
		if (sscanf(line, "%63s %x %x %x %u %u %lu %x", ifn, &dst, &via, &flags, &refcnt,
		           &use, &metric, &mask) != 8 ||
		    dst != 0 || mask != 0 || via == 0 || (flags & 0x3) != 0x3 || /* UP|GATEWAY */
		    (err == 0 && metric >= best))
			continue;
		best = metric;
		gw->u.in.sin_family = AF_INET;
		gw->u.in.sin_addr.s_addr = via; /* /proc writes it in network order */
		gw->u.in.sin_port = htons(PH_PMP_PORT);
		gw->len = sizeof(gw->u.in);
		err = 0;
	}
	fclose(f);
	if (err != 0)
		memset(gw, 0, sizeof(*gw));
	return err;
}

int ph_map_default_gateway(struct ph_addr *gw)
{
	return ph_map_route_gateway("/proc/net/route", gw);
}

void ph_map_conf_init(struct ph_map_conf *mc)
{
	memset(mc, 0, sizeof(*mc));
	mc->protos = PH_MAP_TCP;
	mc->lifetime = PH_MAP_LIFETIME;
}

/* How long until a mapping not granted is asked for again: soon enough that a short
 * lifetime is not lost for long, at most PM_RETRY_MS. */
static uint64_t pm_retry_ms(const struct pm *pm)
{
	uint64_t half = (uint64_t)pm->mc->lifetime * 500;

	return half < 1000 ? 1000 : half > PM_RETRY_MS ? PM_RETRY_MS : half;
}

static void pm_send(struct pm *pm, const uint8_t *b, size_t n)
{
	if (send(pm->sock.fd, b, n, MSG_DONTWAIT) == -1)
		ph_debug("map: send to the gateway: %s", strerror(errno));
}

static void pm_stop(struct pm *pm, int rc);
static void pm_fail(struct pm *pm);
static void pm_on_restart(struct ph_timer *t);
static bool pm_busy(const struct pm *pm);
static void pm_finish(struct pm *pm);
static void pm_close(struct pm *pm);

/* ---- requests ---- */

static void map_send(struct pm_map *m, uint32_t lifetime)
{
	struct pm *pm = m->pm;
	const struct ph_map_conf *mc = pm->mc;
	uint8_t b[PH_PCP_MAX];
	size_t n;

	if (pm->method == PH_MAP_PCP)
		n = ph_pcp_map_req(&pm->client, m->nonce, m->proto, mc->internal,
		                   m->ext != 0 ? m->ext : mc->external, NULL, lifetime,
		                   mc->external != 0 && lifetime != 0, b);
	else
		n = ph_natpmp_map_req(m->proto, mc->internal,
		                      lifetime == 0 ? 0
		                      : m->ext != 0 ? m->ext
		                                    : mc->external,
		                      lifetime, b);
	pm_send(pm, b, n);
}

/* Asks for (or renews) m: the first try; the timer retransmits. */
static void upnp_kick(struct pm *pm);

static void map_ask(struct pm_map *m)
{
	if (m->pm->method == PH_MAP_UPNP) {
		m->state = PM_ASKING;
		m->want = PH_UPNP_ADD;
		upnp_kick(m->pm);
		return;
	}
	m->state = PM_ASKING;
	m->tries = 1;
	m->rto = m->pm->method == PH_MAP_PCP ? PM_PCP_RTO_MS : PM_RTO_MS;
	map_send(m, m->pm->mc->lifetime);
	ph_timer_arm(m->pm->loop, &m->timer, m->rto);
}

static void map_delete(struct pm_map *m)
{
	if (m->pm->method == PH_MAP_UPNP) {
		m->state = PM_DELETING;
		m->want = PH_UPNP_DEL;
		upnp_kick(m->pm);
		return;
	}
	m->state = PM_DELETING;
	m->tries = 1;
	m->rto = PM_RTO_MS;
	map_send(m, 0);
	ph_timer_arm(m->pm->loop, &m->timer, m->rto);
}

static void map_on_timer(struct ph_timer *t)
{
	struct pm_map *m = container_of(t, struct pm_map, timer);
	struct pm *pm = m->pm;

	if (pm->method == PH_MAP_UPNP && (m->state == PM_ASKING || m->state == PM_DELETING))
		return; /* the UPnP job has its own deadline */
	switch (m->state) {
	case PM_IDLE:
	case PM_MAPPED: /* retry, or renew at half the lifetime */
		if (m->state == PM_MAPPED && m->permanent) {
			m->want = PH_UPNP_CHECK; /* still there? (the router may have restarted) */
			upnp_kick(pm);
			break;
		}
		map_ask(m);
		break;
	case PM_ASKING:
		if (m->tries < (pm->method == PH_MAP_PCP ? PM_MAP_TRIES - 1 : PM_MAP_TRIES)) {
			m->tries++;
			m->rto *= 2;
			map_send(m, pm->mc->lifetime);
			ph_timer_arm(pm->loop, t, m->rto);
			break;
		}
		if (pm->mc->once) {
			ph_err("map: the gateway %s did not answer the %s request for %s port %u",
			       ip_str(&pm->gw, (char[PH_ADDR_STRLEN]){0}, PH_ADDR_STRLEN),
			       method_str(pm->method), proto_str(m->proto), pm->mc->internal);
			m->state = PM_DONE;
			pm_stop(pm, 1);
			break;
		}
		ph_warn("map: no answer from the gateway about %s port %u; asking again in %llu s",
		        proto_str(m->proto), pm->mc->internal,
		        (unsigned long long)pm_retry_ms(pm) / 1000);
		m->state = PM_IDLE;
		ph_timer_arm(pm->loop, t, pm_retry_ms(pm));
		break;
	case PM_DELETING:
		if (m->tries < 4) {
			m->tries++;
			m->rto *= 2;
			map_send(m, 0);
			ph_timer_arm(pm->loop, t, m->rto);
			break;
		}
		m->state = PM_DONE; /* the deadline ends the program */
		pm_stop(pm, pm->rc);
		break;
	default:
		break;
	}
}

/* ---- answers ---- */

static void print_map(struct pm *pm, struct pm_map *m, const char *verb)
{
	char e[PH_ADDR_STRLEN], c[PH_ADDR_STRLEN];
	struct ph_addr ext = m->extip, in = pm->client;

	ph_addr_set_port(&ext, m->ext);
	ph_addr_set_port(&in, pm->mc->internal);
	if (m->permanent)
		pm_say(pm,
		       "%s %s %s -> %s (%s, permanent: the router grants no lease; deleted on "
		       "exit)",
		       verb, proto_str(m->proto),
		       ext.u.sa.sa_family != 0 ? ph_addr_fmt(&ext, e, sizeof(e)) : "?",
		       ph_addr_fmt(&in, c, sizeof(c)), method_str(pm->method));
	else
		pm_say(pm, "%s %s %s -> %s (%s, lifetime %u s)", verb, proto_str(m->proto),
		       ext.u.sa.sa_family != 0 ? ph_addr_fmt(&ext, e, sizeof(e)) : "?",
		       ph_addr_fmt(&in, c, sizeof(c)), method_str(pm->method), m->life);
	if (!pm->warned && ext.u.sa.sa_family != 0 && ph_map_addr_is_private(&ext) &&
	    (pm->warned = true))
		ph_warn("map: the router's external address %s is private: there is another "
		        "NAT beyond it (double NAT or carrier-grade NAT), so this mapping is "
		        "not reachable from the internet",
		        ip_str(&m->extip, e, sizeof(e)));
	m->shown = true;
	if (pm->on_mapped != NULL)
		pm->on_mapped(pm->on_mapped_arg, m->proto == PH_PMP_UDP ? PH_MAP_UDP : PH_MAP_TCP,
		              m->ext, &m->extip);
}

/* The gateway's epoch: one that went back means it lost its mappings (RFC 6886 3.6). */
static void pm_epoch(struct pm *pm, uint32_t epoch)
{
	uint64_t now = pm->loop->now;
	bool reset = false;

	if (pm->have_epoch) {
		uint64_t elapsed = (now - pm->epoch_at) / 1000;

		reset = (uint64_t)epoch + 2 < (uint64_t)pm->epoch + elapsed * 7 / 8;
	}
	pm->have_epoch = true;
	pm->epoch = epoch;
	pm->epoch_at = now;
	if (!reset || pm->stopping)
		return;
	ph_warn("map: the gateway restarted (its epoch went back to %u s): mapping again", epoch);
	for (unsigned i = 0; i < pm->nmaps; i++) {
		struct pm_map *m = &pm->maps[i];

		if (m->state == PM_MAPPED || m->state == PM_IDLE) {
			ph_timer_stop(pm->loop, &m->timer);
			map_ask(m);
		}
	}
}

static bool all_mapped(const struct pm *pm)
{
	for (unsigned i = 0; i < pm->nmaps; i++)
		if (pm->maps[i].state != PM_MAPPED)
			return false;
	return true;
}

static void map_answer(struct pm *pm, struct pm_map *m, const struct ph_pmp_resp *r)
{
	const struct ph_map_conf *mc = pm->mc;
	char g[PH_ADDR_STRLEN];

	ph_timer_stop(pm->loop, &m->timer);
	if (m->state == PM_DELETING) {
		if (r->result != 0)
			ph_warn("map: deleting %s port %u: %s", proto_str(m->proto), mc->internal,
			        ph_pmp_result_str(r->version, r->result));
		else
			pm_say(pm, "deleted %s port %u", proto_str(m->proto), mc->internal);
		m->state = PM_DONE;
		pm_stop(pm, pm->rc);
		return;
	}
	if (r->result != 0) {
		bool transient = r->version == PH_NATPMP_VERSION ? r->result == 3 || r->result == 4
		                                                 : r->result == 7 || r->result == 8;

		ph_err("map: %s %s port %u: %s (%s result %u)", ip_str(&pm->gw, g, sizeof(g)),
		       proto_str(m->proto), mc->internal, ph_pmp_result_str(r->version, r->result),
		       r->version == PH_PCP_VERSION ? "PCP" : "NAT-PMP", r->result);
		if (transient && !mc->once) {
			m->state = PM_IDLE;
			ph_timer_arm(pm->loop, &m->timer, pm_retry_ms(pm));
			return;
		}
		m->state = PM_DONE;
		pm_fail(pm);
		return;
	}
	if (mc->external != 0 && r->external != mc->external) {
		/* NAT-PMP has no PREFER_FAILURE: a port the user did not ask for is given back */
		ph_err("map: the gateway offered external port %u for %s port %u, not %u as "
		       "asked; giving it back",
		       r->external, proto_str(m->proto), mc->internal, mc->external);
		m->ext = r->external;
		map_delete(m);
		pm->rc = 1;
		pm->stopping = true;
		return;
	}
	if (m->state == PM_MAPPED && m->ext != r->external)
		m->shown = false;
	m->ext = r->external;
	m->life = r->lifetime;
	if (pm->method == PH_MAP_PCP)
		m->extip = r->ext;
	else if (pm->have_ext)
		m->extip = pm->natpmp_ext;
	if (!m->shown)
		print_map(pm, m, "mapped");
	else
		ph_info("map: renewed %s port %u -> %u for %u s", proto_str(m->proto), mc->internal,
		        m->ext, m->life);
	m->state = PM_MAPPED;
	ph_timer_arm(pm->loop, &m->timer, (uint64_t)(m->life > 2 ? m->life : 2) * 500);
	if (mc->once && all_mapped(pm))
		pm_stop(pm, 0);
}

static struct pm_map *find_map(struct pm *pm, const struct ph_pmp_resp *r)
{
	for (unsigned i = 0; i < pm->nmaps; i++) {
		struct pm_map *m = &pm->maps[i];

		if (m->state != PM_ASKING && m->state != PM_DELETING)
			continue;
		if (r->version == PH_PCP_VERSION && r->result == 0 &&
		    memcmp(r->nonce, m->nonce, PH_PCP_NONCE_LEN) != 0)
			continue;
		if (r->proto != 0 && r->proto != m->proto)
			continue;
		if (r->internal != 0 && r->internal != pm->mc->internal)
			continue;
		/* a late answer to an earlier MAP is no answer to the delete sent since */
		if (m->state == PM_DELETING && r->result == 0 && r->lifetime != 0)
			continue;
		return m;
	}
	return NULL;
}

static void pm_start_maps(struct pm *pm);

static void pm_on_answer(struct pm *pm, const struct ph_pmp_resp *r)
{
	struct pm_map *m;

	if (r->result == 0 || r->version == PH_PCP_VERSION)
		pm_epoch(pm, r->epoch);
	pm->silent = false;
	/* a NAT-PMP gateway's answer to PCP: unsupported version (its opcode varies) */
	if (r->version == PH_NATPMP_VERSION && r->result == 1 && pm->method == PH_MAP_PCP) {
		if (pm->mc->method == PH_MAP_PCP) {
			ph_err("map: the gateway speaks NAT-PMP, not PCP (try --method natpmp, or "
			       "auto)");
			pm_fail(pm);
			return;
		}
		ph_info("map: the gateway speaks NAT-PMP only: asking again in NAT-PMP");
		pm->method = PH_MAP_NATPMP;
		for (unsigned i = 0; i < pm->nmaps; i++)
			if (pm->maps[i].state == PM_ASKING)
				map_ask(&pm->maps[i]);
		return;
	}
	if (r->version == PH_NATPMP_VERSION && r->opcode == 0) {
		if (r->result == 0) {
			pm->natpmp_ok = true;
			pm->have_ext = true;
			pm->natpmp_ext = r->ext;
		}
		return; /* the probe decides when it ends, or when PCP answers */
	}
	if (r->version == PH_PCP_VERSION && r->opcode == 0) {
		pm->pcp_ok = r->result == 0;
		if (pm->method == PH_MAP_AUTO && pm->pcp_ok && pm->mc->verb == PH_MAP_ADD &&
		    !pm->stopping) {
			pm->method = PH_MAP_PCP;
			ph_timer_stop(pm->loop, &pm->probe);
			pm_start_maps(pm);
		}
		return;
	}
	m = find_map(pm, r);
	if (m == NULL) {
		ph_debug("map: an answer that matches no request (opcode %u, result %u)", r->opcode,
		         r->result);
		return;
	}
	map_answer(pm, m, r);
}

static void pm_on_sock(struct ph_io *io, uint32_t events)
{
	struct pm *pm = container_of(io, struct pm, sock);
	uint8_t b[PH_PCP_MAX + 4];

	(void)events;
	for (;;) {
		struct ph_pmp_resp r;
		const char *why;
		ssize_t n = recv(io->fd, b, sizeof(b), 0);

		if (n == -1) {
			if (errno == EINTR)
				continue;
			if (errno == ECONNREFUSED && !pm->silent) {
				ph_warn("map: the gateway %s refused port %d: NAT-PMP and PCP are "
				        "off "
				        "there (or it is not a router)",
				        ip_str(&pm->gw, (char[PH_ADDR_STRLEN]){0}, PH_ADDR_STRLEN),
				        PH_PMP_PORT);
				pm->silent = true;
				continue;
			}
			return;
		}
		if (ph_pmp_parse(b, (size_t)n, &r, &why) < 0) {
			ph_debug("map: a bad answer from the gateway: %s", why);
			continue;
		}
		pm_on_answer(pm, &r);
	}
}

/* ---- UPnP IGD: one job at a time on the helper thread ---- */

static void pm_after_discovery(struct pm *pm);

/* Submits the next job a mapping waits for, when none runs. */
static void upnp_kick(struct pm *pm)
{
	struct ph_upnp_job *j = &pm->upnp_req;
	struct pm_map *m = NULL;

	if (pm->upnp == NULL || pm->upnp_job != NULL)
		return;
	if (pm->upnp_stuck) {
		for (unsigned i = 0; i < pm->nmaps; i++)
			pm->maps[i].want = 0xff;
		pm_fail(pm);
		return;
	}
	for (unsigned i = 0; i < pm->nmaps && m == NULL; i++)
		if (pm->maps[i].want != 0xff)
			m = &pm->maps[i];
	if (m == NULL)
		return;
	memset(j, 0, sizeof(*j));
	j->op = m->want;
	j->proto = m->proto;
	j->internal = pm->mc->internal;
	j->external = m->ext != 0 ? m->ext : pm->mc->external;
	j->exact = pm->mc->external != 0 || m->ext != 0; /* a renewal keeps its port */
	j->lifetime = m->permanent ? 0 : pm->mc->lifetime;
	j->gateway = pm->gw; /* given, or the default route's: only its devices are asked */
	snprintf(j->label, sizeof(j->label), "%s", pm->label);
	if (ph_upnp_submit(pm->upnp, j) < 0)
		return;
	pm->upnp_job = j;
	ph_timer_arm(pm->loop, &pm->upnp_deadline,
	             pm->stopping && j->op == PH_UPNP_DEL ? PM_UPNP_DEL_MS : PM_UPNP_MS);
}

/* Starts a job that no mapping owns (discovery, list, delete by internal port). */
static bool upnp_submit(struct pm *pm, uint8_t op, uint8_t proto)
{
	struct ph_upnp_job *j = &pm->upnp_req;

	if (pm->upnp == NULL || pm->upnp_job != NULL || pm->upnp_stuck)
		return false;
	memset(j, 0, sizeof(*j));
	j->op = op;
	j->proto = proto;
	j->internal = pm->mc->internal;
	j->gateway = pm->gw; /* given, or the default route's: only its devices are asked */
	snprintf(j->label, sizeof(j->label), "%s", pm->label);
	if (ph_upnp_submit(pm->upnp, j) < 0)
		return false;
	pm->upnp_job = j;
	ph_timer_arm(pm->loop, &pm->upnp_deadline, PM_UPNP_MS);
	return true;
}

static struct pm_map *upnp_owner(struct pm *pm, const struct ph_upnp_job *j)
{
	for (unsigned i = 0; i < pm->nmaps; i++)
		if (pm->maps[i].want == j->op && pm->maps[i].proto == j->proto)
			return &pm->maps[i];
	return NULL;
}

static void upnp_map_result(struct pm *pm, struct pm_map *m, const struct ph_upnp_job *j)
{
	const struct ph_map_conf *mc = pm->mc;
	uint8_t op = m->want;

	m->want = 0xff;
	if (op == PH_UPNP_DEL) {
		if (j->rc != 0 && j->rc != 714)
			ph_warn("map: deleting %s port %u: %s", proto_str(m->proto), m->ext,
			        j->why);
		else
			pm_say(pm, "deleted %s port %u", proto_str(m->proto), mc->internal);
		m->state = PM_DONE;
		pm_stop(pm, pm->rc);
		return;
	}
	if (op == PH_UPNP_CHECK) {
		if (j->rc == 0 && j->present) {
			ph_timer_arm(pm->loop, &m->timer, PM_CHECK_MS);
			return;
		}
		ph_warn("map: the router lost the %s mapping of port %u (restarted?): mapping "
		        "again",
		        proto_str(m->proto), mc->internal);
		m->shown = false;
		map_ask(m);
		return;
	}
	if (j->rc != 0) {
		ph_err("map: UPnP %s port %u: %s", proto_str(m->proto), mc->internal, j->why);
		if (!mc->once && (j->rc < 0 || j->rc == 501 || j->rc == 728)) {
			m->state = PM_IDLE; /* no answer, or busy: again later */
			ph_timer_arm(pm->loop, &m->timer, pm_retry_ms(pm));
			return;
		}
		m->state = PM_DONE;
		pm_fail(pm);
		return;
	}
	if (m->state == PM_MAPPED && m->ext != j->granted)
		m->shown = false;
	m->ext = j->granted;
	m->life = j->lease;
	m->permanent = j->lease == 0;
	memset(&m->extip, 0, sizeof(m->extip));
	if (j->extip[0] != '\0')
		ph_addr_from_literal(j->extip, 0, &m->extip);
	if (!m->shown)
		print_map(pm, m, "mapped");
	else
		ph_info("map: renewed %s port %u -> %u for %u s", proto_str(m->proto), mc->internal,
		        m->ext, m->life);
	m->state = PM_MAPPED;
	ph_timer_arm(pm->loop, &m->timer,
	             m->permanent ? PM_CHECK_MS : (uint64_t)(m->life > 2 ? m->life : 2) * 500);
	if (mc->once && all_mapped(pm))
		pm_stop(pm, 0);
}

static void upnp_result(struct pm *pm, struct ph_upnp_job *j)
{
	struct pm_map *m;

	switch (j->op) {
	case PH_UPNP_DISCOVER:
		pm->upnp_done = true;
		pm->upnp_ok = j->rc == 0;
		pm->upnp_connected = j->connected;
		snprintf(pm->upnp_extip, sizeof(pm->upnp_extip), "%s", j->extip);
		snprintf(pm->upnp_lan, sizeof(pm->upnp_lan), "%s", j->lanaddr);
		snprintf(pm->upnp_service, sizeof(pm->upnp_service), "%s", j->service);
		snprintf(pm->upnp_url, sizeof(pm->upnp_url), "%s", j->url);
		if (!pm->upnp_ok)
			ph_debug("map: UPnP: %s", j->why);
		pm_after_discovery(pm);
		return;
	case PH_UPNP_LIST:
	case PH_UPNP_DEL_INTERNAL:
		if (j->rc != 0 && j->op == PH_UPNP_LIST) {
			ph_err("map: UPnP: %s", j->why);
			pm_stop(pm, 1);
		} else if (j->op == PH_UPNP_LIST) {
			fputs(j->text != NULL ? j->text : "", stdout);
			fflush(stdout);
			pm_stop(pm, 0);
		} else {
			if (j->text != NULL && j->text[0] != '\0') {
				printf("deleted (UPnP) %s", j->text);
				fflush(stdout);
			}
			pm_stop(pm, j->rc == 0 || pm->rc == 0 ? 0 : 1);
		}
		free(j->text);
		return;
	default:
		m = upnp_owner(pm, j);
		if (m != NULL)
			upnp_map_result(pm, m, j);
		return;
	}
}

static void upnp_on_io(struct ph_io *io, uint32_t events)
{
	struct pm *pm = container_of(io, struct pm, upnp_io);
	struct ph_upnp_job *j;
	uint64_t n;

	(void)events;
	while (read(io->fd, &n, sizeof(n)) == (ssize_t)sizeof(n))
		;
	while ((j = ph_upnp_take(pm->upnp)) != NULL) {
		ph_timer_stop(pm->loop, &pm->upnp_deadline);
		pm->upnp_job = NULL;
		if (pm->upnp_stuck) {
			free(j->text); /* an abandoned job ended after all: too late */
			continue;
		}
		upnp_result(pm, j);
	}
	if (!pm->upnp_stuck)
		upnp_kick(pm);
}

static void upnp_on_deadline(struct ph_timer *t)
{
	struct pm *pm = container_of(t, struct pm, upnp_deadline);
	struct ph_upnp_job *j = pm->upnp_job;

	ph_warn("map: the router's UPnP did not answer within %d s", PM_UPNP_MS / 1000);
	pm->upnp_stuck = true; /* its thread is blocked in the call: no more jobs */
	pm->upnp_job = NULL;
	if (j == NULL)
		return;
	j->rc = -ETIMEDOUT;
	snprintf(j->why, sizeof(j->why), "the router's UPnP did not answer in time");
	j->text = NULL;
	upnp_result(pm, j);
}

/* ---- the gateway's announcements (RFC 6886 3.2.1, RFC 6887 14.1.3) ---- */

static void pm_on_announce(struct ph_io *io, uint32_t events)
{
	struct pm *pm = container_of(io, struct pm, announce);
	uint8_t b[PH_PCP_MAX + 4];

	(void)events;
	for (int k = 0; k < 16; k++) {
		struct ph_addr from;
		socklen_t len = sizeof(from.u);
		struct ph_pmp_resp r;
		const char *why;
		ssize_t n = recvfrom(io->fd, b, sizeof(b), 0, &from.u.sa, &len);

		if (n == -1) {
			if (errno == EINTR)
				continue;
			return;
		}
		from.len = len;
		/* from our gateway only: anyone on the LAN can send to the group */
		if (!ph_addr_same_host(&from, &pm->gw) || ph_pmp_parse(b, (size_t)n, &r, &why) < 0)
			continue;
		pm->have_epoch = true;
		pm->epoch = r.epoch;
		pm->epoch_at = pm->loop->now;
		if (pm->stopping)
			continue;
		ph_warn("%smap: the gateway announced a restart or a new address: mapping again",
		        pm->label);
		for (unsigned i = 0; i < pm->nmaps; i++) {
			struct pm_map *m = &pm->maps[i];

			if (m->state == PM_MAPPED || m->state == PM_IDLE) {
				ph_timer_stop(pm->loop, &m->timer);
				m->shown = false;
				map_ask(m);
			}
		}
	}
	ph_io_mod(pm->loop, io, EPOLLIN | EPOLLET); /* more: report it again */
}

/* Joins 224.0.0.1 on the interface towards the gateway, port 5350. Best effort. */
static void pm_listen_announcements(struct pm *pm)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(PH_PMP_CLIENT_PORT)};
	struct ip_mreqn mr;
	int fd, one = 1;

	if (pm->client.u.sa.sa_family != AF_INET)
		return;
	fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return;
	memset(&mr, 0, sizeof(mr));
	inet_pton(AF_INET, "224.0.0.1", &sa.sin_addr);
	mr.imr_multiaddr = sa.sin_addr;
	mr.imr_address = pm->client.u.in.sin_addr;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1 ||
	    setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mr, sizeof(mr)) == -1) {
		ph_debug("%smap: not listening for the gateway's announcements: %s", pm->label,
		         strerror(errno));
		close(fd);
		return;
	}
	ph_io_init(&pm->announce, fd, pm_on_announce);
	if (ph_io_add(pm->loop, &pm->announce, EPOLLIN | EPOLLET) < 0)
		ph_io_close(pm->loop, &pm->announce);
}

/* ---- probing (auto), checking the epoch ---- */

static void pm_probe_send(struct pm *pm)
{
	uint8_t b[PH_PCP_MAX];

	if (pm->mc->method != PH_MAP_NATPMP)
		pm_send(pm, b, ph_pcp_announce_req(&pm->client, b));
	if (pm->mc->method != PH_MAP_PCP || pm->mc->verb != PH_MAP_ADD)
		pm_send(pm, b, ph_natpmp_addr_req(b));
}

static void pm_print_probe(struct pm *pm)
{
	char a[PH_ADDR_STRLEN];
	struct ph_addr x;

	printf("gateway %s\n", ip_str(&pm->gw, a, sizeof(a)));
	printf("pcp: %s\n", pm->pcp_ok ? "yes" : "no answer");
	if (pm->natpmp_ok)
		printf("nat-pmp: yes, external address %s%s\n",
		       ip_str(&pm->natpmp_ext, a, sizeof(a)),
		       ph_map_addr_is_private(&pm->natpmp_ext)
		               ? " (private: another NAT beyond this router, double NAT or CGNAT)"
		               : "");
	else
		printf("nat-pmp: no answer\n");
	if (pm->upnp_ok)
		printf("upnp: yes, %s at %s, external address %s%s%s\n",
		       strstr(pm->upnp_service, ":2") != NULL ? "IGDv2" : "IGDv1", pm->upnp_url,
		       pm->upnp_extip[0] ? pm->upnp_extip : "unknown",
		       pm->upnp_extip[0] && ph_addr_from_literal(pm->upnp_extip, 0, &x) == 0 &&
		                       ph_map_addr_is_private(&x)
		               ? " (private: another NAT beyond this router)"
		               : "",
		       pm->upnp_connected ? "" : "; it says it is not connected");
	else if (pm->upnp_wanted)
		printf("upnp: %s\n", pm->upnp_stuck ? "no answer in time" : "no answer");
	if (pm->have_epoch)
		printf("epoch: %u s (the router's mapping state is this old)\n", pm->epoch);
	if (pm->natpmp_ok && pm->upnp_ok && pm->upnp_extip[0] &&
	    strcmp(pm->upnp_extip, ip_str(&pm->natpmp_ext, a, sizeof(a))) != 0)
		printf("note: NAT-PMP and UPnP name different external addresses (%s, %s)\n", a,
		       pm->upnp_extip);
	fflush(stdout);
}

/* What to do once probing and (when started) UPnP discovery have both ended. */
static void pm_decide(struct pm *pm)
{
	const struct ph_map_conf *mc = pm->mc;
	char a[PH_ADDR_STRLEN];

	if (mc->verb == PH_MAP_PROBE) {
		pm_print_probe(pm);
		pm_stop(pm, pm->pcp_ok || pm->natpmp_ok || pm->upnp_ok ? 0 : 1);
		return;
	}
	if (mc->verb == PH_MAP_IP) {
		struct ph_addr x;

		if (pm->natpmp_ok)
			x = pm->natpmp_ext;
		else if (!pm->upnp_ok || pm->upnp_extip[0] == '\0' ||
		         ph_addr_from_literal(pm->upnp_extip, 0, &x) < 0) {
			ph_err("map: no gateway answered at %s (NAT-PMP, UPnP): port mapping is "
			       "off "
			       "on the router?",
			       ip_str(&pm->gw, a, sizeof(a)));
			pm_stop(pm, 1);
			return;
		}
		printf("%s\n", ip_str(&x, a, sizeof(a)));
		fflush(stdout);
		if (ph_map_addr_is_private(&x))
			ph_warn("map: %s is a private address: there is another NAT beyond this "
			        "router (double NAT or carrier-grade NAT)",
			        a);
		pm_stop(pm, 0);
		return;
	}
	/* the best that answered (PCP, NAT-PMP, UPnP), or the one asked for if it did */
	pm->method = PH_MAP_AUTO;
	if ((mc->method == PH_MAP_AUTO || mc->method == PH_MAP_PCP) && pm->pcp_ok)
		pm->method = PH_MAP_PCP;
	else if ((mc->method == PH_MAP_AUTO || mc->method == PH_MAP_NATPMP) && pm->natpmp_ok)
		pm->method = PH_MAP_NATPMP;
	else if ((mc->method == PH_MAP_AUTO || mc->method == PH_MAP_UPNP) && pm->upnp_ok)
		pm->method = PH_MAP_UPNP;
	if (pm->method != PH_MAP_AUTO) {
		if (pm->method == PH_MAP_UPNP && !pm->upnp_connected)
			ph_warn("map: the router's UPnP says it is not connected to the internet; "
			        "trying anyway");
		pm_start_maps(pm);
		return;
	}
	ph_err("map: no gateway answered %s at %s: port mapping is off on the router, or it "
	       "does not speak %s",
	       mc->method == PH_MAP_AUTO ? "PCP, NAT-PMP or UPnP" : method_str(mc->method),
	       ip_str(&pm->gw, a, sizeof(a)), mc->method == PH_MAP_AUTO ? "them" : "it");
	pm_fail(pm);
}

static void pm_after_discovery(struct pm *pm)
{
	if (pm->await_upnp) {
		pm->await_upnp = false;
		pm_decide(pm);
	}
}

static void pm_on_probe(struct ph_timer *t)
{
	struct pm *pm = container_of(t, struct pm, probe);
	const struct ph_map_conf *mc = pm->mc;
	bool done = (mc->verb == PH_MAP_IP && pm->natpmp_ok) ||
	            (mc->verb == PH_MAP_PROBE && pm->pcp_ok && pm->natpmp_ok) ||
	            (mc->verb == PH_MAP_ADD && (pm->pcp_ok || pm->natpmp_ok));

	if (!done && pm->probe_tries < PM_PROBE_TRIES && mc->method != PH_MAP_UPNP) {
		pm->probe_tries++;
		pm->probe_rto *= 2;
		pm_probe_send(pm);
		ph_timer_arm(pm->loop, t, pm->probe_rto);
		return;
	}
	/* UPnP decides only when the others did not answer, or to be shown by probe */
	if (pm->upnp_wanted && !pm->upnp_done && !pm->upnp_stuck &&
	    (mc->verb == PH_MAP_PROBE || !done)) {
		pm->await_upnp = true;
		return;
	}
	pm_decide(pm);
}

static void pm_on_check(struct ph_timer *t)
{
	struct pm *pm = container_of(t, struct pm, check);
	uint8_t b[PH_PCP_MAX];

	if (pm->method == PH_MAP_PCP)
		pm_send(pm, b, ph_pcp_announce_req(&pm->client, b));
	else
		pm_send(pm, b, ph_natpmp_addr_req(b));
	ph_timer_arm(pm->loop, t, PM_CHECK_MS);
}

static void pm_start_maps(struct pm *pm)
{
	if (pm->mc->verb == PH_MAP_DEL) {
		for (unsigned i = 0; i < pm->nmaps; i++)
			map_delete(&pm->maps[i]);
		return;
	}
	for (unsigned i = 0; i < pm->nmaps; i++)
		map_ask(&pm->maps[i]);
	if (!pm->mc->once)
		ph_timer_arm(pm->loop, &pm->check, PM_CHECK_MS);
}

/* ---- the end ---- */

static bool pm_busy(const struct pm *pm)
{
	for (unsigned i = 0; i < pm->nmaps; i++)
		if (pm->maps[i].state == PM_DELETING)
			return true;
	/* `map del` waits for its UPnP walk too */
	return pm->mc->verb == PH_MAP_DEL && pm->upnp_job != NULL && !pm->upnp_stuck;
}

/*
 * The router refused, or none answered: the map command ends (exit 1); a keeper (a rule's
 * --map) says so and starts over later, since the rule goes on without it.
 */
static void pm_fail(struct pm *pm)
{
	if (!pm->daemon) {
		pm_stop(pm, 1);
		return;
	}
	ph_warn("%smap: trying again in %d s", pm->label, PM_AGAIN_MS / 1000);
	for (unsigned i = 0; i < pm->nmaps; i++) {
		ph_timer_stop(pm->loop, &pm->maps[i].timer);
		pm->maps[i].state = PM_IDLE;
		pm->maps[i].want = 0xff;
		pm->maps[i].shown = false;
		pm->maps[i].ext = 0;
	}
	ph_timer_stop(pm->loop, &pm->probe);
	ph_timer_stop(pm->loop, &pm->check);
	pm->pcp_ok = pm->natpmp_ok = pm->await_upnp = false;
	pm->upnp_done = pm->upnp_ok = pm->upnp_wanted = false;
	pm->method = pm->mc->method;
	ph_timer_arm(pm->loop, &pm->restart, PM_AGAIN_MS);
}

static void pm_begin(struct pm *pm);

static void pm_on_restart(struct ph_timer *t)
{
	pm_begin(container_of(t, struct pm, restart));
}

/* Stopped: the map command's loop ends, or a keeper tells its owner and goes. */
static void pm_finish(struct pm *pm)
{
	void (*done)(void *arg) = pm->done;

	if (pm->free_task.fn == NULL) { /* the map command: the supervisor ends the loop */
		pm->finished = true;
		ph_svc_changed(&pm->svc, pm->rc);
		return;
	}
	if (pm->finished)
		return;
	pm->finished = true;
	pm_close(pm);
	if (done != NULL)
		done(pm->done_arg);
	ph_task_queue(pm->loop, &pm->free_task); /* after this batch: no event points here */
}

static void pm_on_deadline(struct ph_timer *t)
{
	struct pm *pm = container_of(t, struct pm, deadline);

	ph_warn("%smap: the gateway did not confirm every deletion", pm->label);
	pm_finish(pm);
}

/* Stops with rc once deletions (unless --keep or --once) are answered or time out. */
static void pm_stop(struct pm *pm, int rc)
{
	if (!pm->stopping) {
		pm->stopping = true;
		pm->rc = rc;
		ph_timer_stop(pm->loop, &pm->check);
		ph_timer_stop(pm->loop, &pm->probe);
		for (unsigned i = 0; i < pm->nmaps; i++) {
			struct pm_map *m = &pm->maps[i];

			ph_timer_stop(pm->loop, &m->timer);
			if (m->state == PM_MAPPED && !pm->mc->keep && !pm->mc->once)
				map_delete(m);
			else if (m->state != PM_DELETING)
				m->state = PM_DONE;
		}
		ph_timer_arm(pm->loop, &pm->deadline,
		             pm->method == PH_MAP_UPNP || pm->mc->verb == PH_MAP_DEL
		                     ? PM_UPNP_DEL_MS + 1000
		                     : PM_DEL_MS);
	}
	if (!pm_busy(pm))
		pm_finish(pm);
}

/* Sockets, timers and the UPnP thread for pm (pm->mc, pm->loop set). Returns 0 or 1. */
static int pm_open(struct pm *pm)
{
	const struct ph_map_conf *mc = pm->mc;
	char a[PH_ADDR_STRLEN];
	socklen_t len = sizeof(pm->client.u);
	int fd, err;

	pm->method = mc->method;
	ph_io_init(&pm->sock, -1, pm_on_sock);
	ph_io_init(&pm->upnp_io, -1, upnp_on_io);
	ph_io_init(&pm->announce, -1, pm_on_announce);
	ph_timer_init(&pm->upnp_deadline, upnp_on_deadline);
	ph_timer_init(&pm->probe, pm_on_probe);
	ph_timer_init(&pm->check, pm_on_check);
	ph_timer_init(&pm->deadline, pm_on_deadline);
	ph_timer_init(&pm->restart, pm_on_restart);
	for (unsigned i = 0; i < 2; i++)
		pm->maps[i].want = 0xff;
	if (mc->has_gateway) {
		pm->gw = mc->gateway;
		ph_addr_set_port(&pm->gw, PH_PMP_PORT);
	} else if ((err = ph_map_default_gateway(&pm->gw)) < 0) {
		ph_err("%smap: no default gateway (%s): give --gateway IP", pm->label,
		       strerror(-err));
		return 1;
	}
	fd = ph_udp_connect(&pm->gw, NULL, 0);
	if (fd < 0 || getsockname(fd, &pm->client.u.sa, &len) == -1) {
		ph_err("%smap: cannot reach the gateway %s: %s", pm->label,
		       ip_str(&pm->gw, a, sizeof(a)), strerror(fd < 0 ? -fd : errno));
		if (fd >= 0)
			close(fd);
		return 1;
	}
	pm->client.len = len;
	pm->sock.fd = fd;
	if (ph_io_add(pm->loop, &pm->sock, EPOLLIN | EPOLLET) < 0) {
		ph_err("%smap: cannot watch the socket", pm->label);
		return 1;
	}
	if (mc->verb == PH_MAP_ADD && !mc->once)
		pm_listen_announcements(pm);
	for (unsigned p = PH_MAP_TCP; p <= PH_MAP_UDP; p <<= 1) {
		struct pm_map *m;

		if (!(mc->protos & p))
			continue;
		m = &pm->maps[pm->nmaps++];
		m->pm = pm;
		m->proto = p == PH_MAP_TCP ? PH_PMP_TCP : PH_PMP_UDP;
		ph_random(m->nonce, sizeof(m->nonce)); /* kept for renewal and deletion */
		ph_timer_init(&m->timer, map_on_timer);
	}
	if (mc->method == PH_MAP_AUTO || mc->method == PH_MAP_UPNP) {
		/* UPnP's calls block: they run on a thread that reports on an eventfd */
		int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);

		if (efd == -1 || ph_upnp_start(&pm->upnp, efd) < 0) {
			ph_err("%smap: cannot start the UPnP helper thread", pm->label);
			if (efd != -1)
				close(efd);
			return 1;
		}
		pm->upnp_io.fd = efd;
		if (ph_io_add(pm->loop, &pm->upnp_io, EPOLLIN | EPOLLET) < 0)
			return 1;
	}
	ph_debug("%smap: gateway %s, this host %s, %s", pm->label, ip_str(&pm->gw, a, sizeof(a)),
	         ph_addr_fmt(&pm->client, (char[PH_ADDR_STRLEN]){0}, PH_ADDR_STRLEN),
	         method_str(mc->method));
	return 0;
}

/* The first requests: probing, or straight to the mappings. */
static void pm_begin(struct pm *pm)
{
	const struct ph_map_conf *mc = pm->mc;

	if (mc->verb == PH_MAP_LIST) {
		upnp_submit(pm, PH_UPNP_LIST, 0);
	} else if (mc->verb == PH_MAP_DEL) {
		/* NAT-PMP deletes by internal port (PCP would need the mapping's nonce); UPnP
		 * by external port: its table is walked for this host's mappings of PORT */
		if (mc->method != PH_MAP_UPNP) {
			pm->method = PH_MAP_NATPMP;
			pm_start_maps(pm);
		}
		if (pm->upnp != NULL)
			upnp_submit(pm, PH_UPNP_DEL_INTERNAL,
			            mc->protos == PH_MAP_TCP   ? PH_PMP_TCP
			            : mc->protos == PH_MAP_UDP ? PH_PMP_UDP
			                                       : 0);
	} else if (mc->verb == PH_MAP_ADD && mc->method == PH_MAP_PCP) {
		pm->method = PH_MAP_PCP;
		pm_start_maps(pm);
	} else {
		if (!pm->upnp_done)
			pm->upnp_wanted = upnp_submit(pm, PH_UPNP_DISCOVER, 0);
		/* ask both at once; NAT-PMP's address answer also gives the external address */
		pm->probe_tries = 1;
		pm->probe_rto = PM_RTO_MS;
		if (mc->method != PH_MAP_UPNP)
			pm_probe_send(pm);
		ph_timer_arm(pm->loop, &pm->probe, mc->method == PH_MAP_UPNP ? 0 : pm->probe_rto);
	}
}

static void pm_close(struct pm *pm)
{
	for (unsigned i = 0; i < pm->nmaps; i++)
		ph_timer_stop(pm->loop, &pm->maps[i].timer);
	ph_timer_stop(pm->loop, &pm->probe);
	ph_timer_stop(pm->loop, &pm->check);
	ph_timer_stop(pm->loop, &pm->deadline);
	ph_timer_stop(pm->loop, &pm->restart);
	ph_timer_stop(pm->loop, &pm->upnp_deadline);
	ph_upnp_stop(pm->upnp); /* a call still running is left to finish alone */
	pm->upnp = NULL;
	if (pm->upnp_io.fd != -1)
		ph_io_close(pm->loop, &pm->upnp_io);
	if (pm->sock.fd != -1)
		ph_io_close(pm->loop, &pm->sock);
	if (pm->announce.fd != -1)
		ph_io_close(pm->loop, &pm->announce);
}

/* ---- the map command: a service of the supervisor ---- */

static struct pm *pm_of(struct ph_svc *s)
{
	return container_of(s, struct pm, svc);
}

/* After --user and the sandbox (the UPnP thread inherits it): sockets, then the asking. */
static int map_svc_start(struct ph_svc *s)
{
	struct pm *pm = pm_of(s);

	pm->loop = s->loop;
	pm->rc = pm_open(pm);
	if (pm->rc != 0)
		return -EIO;
	pm_begin(pm);
	return 0;
}

/* SIGTERM, SIGINT, SIGHUP: delete the mappings, then end; already stopping: end now. */
static void map_svc_drain(struct ph_svc *s)
{
	struct pm *pm = pm_of(s);

	if (!pm->stopping) {
		pm_stop(pm, 0);
		return;
	}
	pm->finished = true; /* what is not deleted yet is left to its lease */
	ph_svc_changed(s, pm->rc);
}

/* A second signal: the loop ends at once, deletions in flight or not. */
static void map_svc_stop(struct ph_svc *s, enum ph_svc_stop why)
{
	struct pm *pm = pm_of(s);

	(void)why;
	pm->finished = true;
	ph_svc_changed(s, pm->rc);
}

static bool map_svc_done(struct ph_svc *s)
{
	return pm_of(s)->finished;
}

static void map_svc_free(struct ph_svc *s)
{
	struct pm *pm = pm_of(s);

	if (pm->loop != NULL)
		pm_close(pm);
	free(pm);
}

static const struct ph_svc_ops map_svc_ops = {
	.name = "map",
	.start = map_svc_start,
	.drain = map_svc_drain,
	.stop = map_svc_stop,
	.done = map_svc_done,
	.free = map_svc_free,
};

int ph_map_svc_new(const struct ph_map_conf *mc, struct ph_svc **out)
{
	struct pm *pm = calloc(1, sizeof(*pm));

	*out = NULL;
	if (pm == NULL)
		return -ENOMEM;
	pm->svc.ops = &map_svc_ops;
	pm->mc = mc;
	*out = &pm->svc;
	return 0;
}

void ph_map_svc_on_mapped(struct ph_svc *s,
                          void (*fn)(void *arg, unsigned proto, uint16_t ext,
                                     const struct ph_addr *extip),
                          void *arg)
{
	struct pm *pm = pm_of(s);

	pm->on_mapped = fn;
	pm->on_mapped_arg = arg;
}

/* ---- keepers: a rule's mapping in a daemon ---- */

static void keeper_free(struct ph_task *t)
{
	struct pm *pm = container_of(t, struct pm, free_task);

	free(pm);
}

int ph_map_keeper_start(struct ph_loop *l, const struct ph_map_conf *mc, const char *label,
                        struct ph_map_keeper **out)
{
	struct pm *pm = calloc(1, sizeof(*pm));

	*out = NULL;
	if (pm == NULL)
		return -ENOMEM;
	pm->own_mc = *mc;
	pm->own_mc.verb = PH_MAP_ADD;
	pm->own_mc.once = pm->own_mc.keep = false;
	pm->mc = &pm->own_mc;
	pm->loop = l;
	pm->daemon = true;
	ph_task_init(&pm->free_task, keeper_free);
	snprintf(pm->label, sizeof(pm->label), "%s%s", label, label[0] ? ": " : "");
	if (pm_open(pm) != 0) {
		pm_close(pm);
		free(pm);
		return -EIO;
	}
	pm_begin(pm);
	*out = (struct ph_map_keeper *)pm;
	return 0;
}

void ph_map_keeper_stop(struct ph_map_keeper *k, void (*done)(void *arg), void *arg)
{
	struct pm *pm = (struct pm *)k;

	if (pm == NULL) {
		if (done != NULL)
			done(arg);
		return;
	}
	pm->done = done;
	pm->done_arg = arg;
	pm->daemon = false; /* stopping: no more retries */
	if (pm->stopping) {
		if (!pm_busy(pm))
			pm_finish(pm);
		return;
	}
	pm_stop(pm, 0);
}

void ph_map_keeper_free(struct ph_map_keeper *k)
{
	struct pm *pm = (struct pm *)k;

	if (pm == NULL)
		return;
	if (!pm->finished)
		pm_close(pm);
	ph_task_cancel(&pm->free_task);
	free(pm);
}
