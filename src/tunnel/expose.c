/*
 * `pinhole expose`: the client. One session per relay, made from here (so NATs and
 * firewalls let it out), kept up forever: when it ends, it is made again after a jittered
 * back-off (0.5 s doubling to 30 s), and every rule registers again - asking for the port
 * it had, which the relay held for it. Visitors arrive as streams (TCP: a connection to
 * the local service each) or datagrams (UDP: a socket to the local service per peer).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conn/accept.h"
#include "conn/proxyproto.h"
#include "conn/udptab.h"
#include "conn/via.h"
#include "core/log.h"
#include "core/logagg.h"
#include "core/net.h"
#include "core/resolve.h"
#include "core/util.h"
#include "tunnel/frame.h"
#include "tunnel/msg.h"
#include "tunnel/session.h"
#include "tunnel/tls.h"
#include "tunnel/tunnel.h"

#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
#define FLOW_IDLE_MS   60000
#define FLOW_MAX       1024 /* UDP peers per rule */
#define UDP_BATCH      64

enum xrule_state {
	XR_IDLE,    /* not asked (no session) */
	XR_ASKED,   /* REGISTER sent */
	XR_UP,      /* public */
	XR_REFUSED, /* refused for good: a limit, or a request the relay cannot take */
};

struct xclient;
struct xcheck;

/* A UDP visitor of a rule: found by the relay's flow id, in its rule's table (conn/udptab). */
struct xflow {
	struct ph_udp_node node; /* least recently used first; node.lru: in x->dead once closed */
	struct ph_io io;         /* connected to the local service (local udp: none, -1) */
	struct xrule *r;
	uint32_t id;
	struct xflow *inext; /* local udp: in r->byid (the table keys its clients' addresses) */
};

struct xrule {
	struct xclient *c;
	const struct ph_expose_conf *conf;
	unsigned idx;
	enum xrule_state state;
	struct ph_addr local;
	uint16_t service, port, want;
	struct ph_timer again;
	bool resolving;                     /* LOCAL's name is being looked up */
	uint32_t live;                      /* streams now */
	uint64_t visitors, refused, failed; /* failed: streams that ended with a reset */
	uint64_t bytes_up, bytes_down;      /* of ended streams: visitors -> LOCAL, back */
	struct ph_udptab flows;             /* UDP: by flow id, least recently used first */
	struct ph_acceptor acc;             /* local: the listener (held while no session) */
	struct ph_ratelimit rl;             /* local: the relay's refusals, a line a second */
	struct ph_io uio;                   /* local udp: the listening socket */
	struct xflow **byid;                /* local udp: flows by id (256 chains), owned */
	uint32_t next_flow;
};

/*
 * A socks --via worker's UDP association: its end of a SOCK_SEQPACKET pair (a message a
 * datagram behind its destination's header), and a relay channel per destination.
 */
#define VASSOC_DSTS 16 /* destinations of one association (the least recent goes first) */
#define VASSOC_HOLD 2048

struct vdst {
	char host[PH_VIA_HOST_MAX + 1];
	uint16_t port;
	uint16_t chan;       /* once open; 0 while asked for */
	bool refused;        /* the relay said no: its datagrams are dropped */
	uint32_t req;        /* the UDP_OPEN's */
	struct ph_addr addr; /* where the relay sends (UDP_OPENED): the answers' source */
	uint64_t last;
	uint8_t *pend; /* owned: the first datagram, while the channel is asked for */
	size_t pend_len;
};

struct vudp {
	struct ph_list node; /* in c->vudps */
	struct xclient *c;
	struct ph_io io;
	struct vdst d[VASSOC_DSTS];
	unsigned n;
};

#define VUDP_REQ 0x80000000u /* a UDP_OPEN's request id for an association (rules: 1-64) */

struct xclient {
	struct ph_list node;
	struct ph_exposer *x;
	const struct ph_expose_conf *conf; /* the first rule's: via, key, pin */
	struct ph_key *key;
	struct ssl_ctx_st *ctx;
	struct ph_sess *s;
	struct xrule *rules[PH_EXPOSE_MAX];
	unsigned nrules;
	struct ph_timer retry;
	uint64_t backoff, up_at;
	char relay[PH_HOST_MAX + 8];
	char known[600];
	int known_fd;         /* owned: known, opened at start (before --user), -1 with a pin */
	int known_werr;       /* -errno: known_fd is read-only, for this reason; 0 writable */
	char tofu[PH_FP_LEN]; /* a first-seen key to store once the handshake is done */
	char refusal[1400];   /* why this client refused the relay, for the retry's log line */
	bool fatal;
	bool confirmed; /* the relay answered: it took this client's key */
	bool resolving; /* the relay's name is being looked up */
	unsigned attempts;
	struct xcheck *check;     /* owned: `pinhole check` asks instead of registering; NULL */
	struct ph_via *via;       /* socks --via: the channel its workers' requests come on */
	struct ph_io via_io;      /* reading it (the fd is the channel table's) */
	struct xrule *socks_rule; /* the first socks --via rule: its counts */
	struct ph_list vudps;     /* struct vudp */
	uint64_t hb_ms;           /* the shortest --heartbeat its lines give; 0 the default */
	uint32_t vudp_seq;
};

struct ph_exposer {
	struct ph_loop *loop;
	struct ph_list clients;
	void (*fatal)(void *arg);
	void *arg;
	struct ph_timer sweep;
	struct ph_list dead;       /* closed flows, freed by reap after this round's events */
	struct ph_list dead_vudps; /* likewise for socks --via datagram destinations */
	struct ph_task reap;
	struct ph_resolver *res; /* owned: names looked up on the loop, never blocking it */
	bool stopping;
	struct ph_tunnel_stats gone; /* of ended sessions */
};

static const struct ph_sess_ops client_ops;
static void client_connect(struct xclient *c);
static void check_send(struct xclient *c);
static void check_answer(struct xclient *c, const struct ph_ctrl *m);
static bool check_lost(struct xclient *c, const char *why);
static void check_free(struct ph_exposer *x, struct xclient *c);
static void local_udp_open(struct xrule *r);
static void vudp_answer(struct xclient *c, const struct ph_ctrl *m);
static bool vudp_dgram(struct xclient *c, uint16_t chan, const uint8_t *p, size_t n);

/* --- the relay's key: pinned, or trusted on first use and remembered ----------------- */

/*
 * The known-relays file is opened once, at start: before `--user` drops root, which is
 * how `pinhole --user U expose` as root keeps reading and appending to
 * /etc/pinhole/known_relays (a directory only root may enter) as U. Made 0600 when
 * missing; read-only when it may be read but not written (a relay it names is checked,
 * a new one cannot be pinned and is refused). It must pass ssh's StrictModes
 * (ph_strict_modes): only its owner may change it afterwards, so the check at open holds
 * for the fd's life. The path is not opened again: an edit that replaces the file (a new
 * inode) counts from the next start. Returns 0, or -errno with a reason naming the file.
 */
static int known_open(struct xclient *c, char *why, size_t whylen)
{
	const int flags = O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK; /* a FIFO never blocks */
	char dir[520];
	int err;

	if (c->conf->known_file[0] != '\0') {
		snprintf(c->known, sizeof(c->known), "%s", c->conf->known_file);
	} else {
		err = ph_conf_dir(dir, sizeof(dir), true, why, whylen);
		if (err < 0)
			return err;
		snprintf(c->known, sizeof(c->known), "%s/known_relays", dir);
	}
	c->known_fd = open(c->known, O_RDWR | O_APPEND | O_CREAT | flags, 0600);
	if (c->known_fd == -1 && (errno == EACCES || errno == EROFS || errno == EPERM)) {
		c->known_werr = -errno;
		c->known_fd = open(c->known, O_RDONLY | flags);
		if (c->known_fd == -1)
			errno = -c->known_werr; /* the first reason is the one to fix */
	}
	if (c->known_fd == -1) {
		err = -errno;
		snprintf(why, whylen, "known relays %s: %s", c->known, strerror(-err));
		return err;
	}
	return ph_strict_modes(c->known_fd, c->known, why, whylen);
}

/*
 * Reads the known-relays file from its start for c's relay's line. Returns 1 with its
 * fingerprint and line number, 0 when there is none, or -errno when the file cannot be
 * read (then no key may be trusted: an unreadable file is not an empty one).
 */
static int known_lookup(const struct xclient *c, char fp[PH_FP_LEN], unsigned *lineno)
{
	char line[700];
	unsigned n = 0;
	size_t rl = strlen(c->relay);
	int fd, err = 0;
	FILE *f;

	fd = fcntl(c->known_fd, F_DUPFD_CLOEXEC, 0); /* fclose must not close known_fd */
	if (fd == -1)
		return -errno;
	f = fdopen(fd, "r");
	if (f == NULL) {
		err = -errno;
		close(fd);
		return err;
	}
	if (fseek(f, 0, SEEK_SET) == -1) { /* the offset is shared with known_fd */
		err = -errno;
		goto out;
	}
	errno = 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		char *p;

		n++;
		if (strncmp(line, c->relay, rl) != 0 || line[rl] != ' ')
			continue;
		p = line + rl + 1;
		p[strcspn(p, " \t\r\n")] = '\0';
		snprintf(fp, PH_FP_LEN, "%s", p);
		*lineno = n;
		err = 1;
		goto out;
	}
	if (ferror(f))
		err = errno != 0 ? -errno : -EIO;
out:
	fclose(f);
	return err;
}

static bool relay_ok(void *arg, const uint8_t pub[PH_KEY_LEN])
{
	struct xclient *c = arg;
	char fp[PH_FP_LEN], known[PH_FP_LEN];
	unsigned line = 0;
	int found;

	ph_key_fingerprint(pub, fp);
	c->tofu[0] = '\0';
	if (c->conf->relay_fp[0] != '\0') {
		if (strcmp(fp, c->conf->relay_fp) == 0)
			return true;
		ph_err("relay %s presents key %s, not the pinned --relay-key %s: refusing it "
		       "(someone may be in the middle)",
		       c->relay, fp, c->conf->relay_fp);
		c->fatal = true;
		return false;
	}
	found = known_lookup(c, known, &line);
	if (found < 0) {
		snprintf(c->refusal, sizeof(c->refusal),
		         "cannot read %s (%s), so its key %s cannot be checked: refusing it",
		         c->known, strerror(-found), fp);
		return false;
	}
	if (found == 1) {
		if (strcmp(fp, known) == 0)
			return true;
		ph_err("relay %s presents key %s, but %s:%u says %s: refusing it. If the relay's "
		       "key really changed, delete that line.",
		       c->relay, fp, c->known, line, known);
		c->fatal = true;
		return false;
	}
	if (c->known_werr != 0) {
		snprintf(
			c->refusal, sizeof(c->refusal),
			"a new key %s, which cannot be pinned: %s is read-only here (%s); refusing "
			"it (add the line `%s %s` to trust it)",
			fp, c->known, strerror(-c->known_werr), c->relay, fp);
		return false;
	}
	snprintf(c->tofu, sizeof(c->tofu), "%s", fp); /* stored by client_up, or refused */
	return true;
}

/*
 * Appends "RELAY FINGERPRINT" (c->tofu) to the known-relays file in one write, after a
 * newline when its last line has none, and syncs it. Returns 0 or -errno.
 */
static int known_store(struct xclient *c)
{
	char line[1 + sizeof(c->relay) + 1 + PH_FP_LEN + 1], last = '\n';
	struct stat st;
	ssize_t w;
	int n;

	if (fstat(c->known_fd, &st) == -1)
		return -errno;
	if (st.st_size > 0 && pread(c->known_fd, &last, 1, st.st_size - 1) != 1)
		return errno != 0 ? -errno : -EIO;
	n = snprintf(line, sizeof(line), "%s%s %s\n", last == '\n' ? "" : "\n", c->relay, c->tofu);
	do
		w = write(c->known_fd, line, (size_t)n);
	while (w == -1 && errno == EINTR);
	if (w == -1)
		return -errno;
	if (w != n) /* a line cut short reads as another key: refused, never trusted */
		return -ENOSPC;
	return fdatasync(c->known_fd) == -1 ? -errno : 0;
}

/* --- rules ---------------------------------------------------------------------------- */

static void flow_free(struct xflow *f)
{
	struct xrule *r = f->r;

	if (r->byid != NULL) {
		struct xflow **pp = &r->byid[f->id & 255];

		while (*pp != NULL && *pp != f)
			pp = &(*pp)->inext;
		if (*pp != NULL)
			*pp = f->inext;
	}
	ph_udptab_del(&r->flows, &f->node);
	ph_io_close(r->c->x->loop, &f->io);
	/* an event of this round may still name it: freed after them */
	ph_list_add_tail(&r->c->x->dead, &f->node.lru);
	ph_task_queue(r->c->x->loop, &r->c->x->reap);
}

static void exposer_reap(struct ph_task *t)
{
	struct ph_exposer *x = container_of(t, struct ph_exposer, reap);

	while (!ph_list_empty(&x->dead)) {
		struct ph_list *n = x->dead.next;

		ph_list_del(n);
		free(container_of(n, struct xflow, node.lru));
	}
	while (!ph_list_empty(&x->dead_vudps)) {
		struct ph_list *n = x->dead_vudps.next;

		ph_list_del(n);
		free(container_of(n, struct vudp, node));
	}
}

static void rule_flows_drop(struct xrule *r)
{
	struct ph_udp_node *n;

	while ((n = ph_udptab_oldest(&r->flows)) != NULL)
		flow_free(container_of(n, struct xflow, node));
}

static const char *local_str(const struct xrule *r, char *buf, size_t len)
{
	char hp[PH_HOST_MAX + 8];

	snprintf(buf, len, "%s%s", r->conf->udp ? "udp://" : "",
	         ph_hostport_fmt(r->conf->local.host, r->conf->local.port, hp, sizeof(hp)));
	return buf;
}

/* local: "LISTEN TARGET"; socks --via: "socks --via RELAY". */
static const char *local_rule_str(const struct xrule *r, char *buf, size_t len)
{
	char l[PH_HOST_MAX + 8], t[PH_HOST_MAX + 8];
	const struct ph_expose_conf *c = r->conf;

	if (c->kind == PH_EXPOSE_SOCKS) {
		snprintf(buf, len, "via %s", r->c->relay);
		return buf;
	}
	snprintf(buf, len, "%s%s %s", c->udp ? "udp://" : "",
	         ph_hostport_fmt(c->listen.wildcard ? "" : c->listen.host, c->listen.port, l,
	                         sizeof(l)),
	         c->target_port != 0 ? ph_hostport_fmt(c->target, c->target_port, t, sizeof(t))
	                             : c->target);
	return buf;
}

/* How logs name rule r: "expose LOCAL[ NAME]", "local LISTEN TARGET", "socks via R". */
static const char *rule_label(const struct xrule *r, char *buf, size_t len)
{
	char l[2 * PH_HOST_MAX + 32];

	if (r->conf->kind != PH_EXPOSE_SERVICE) {
		snprintf(buf, len, "%s %s", r->conf->kind == PH_EXPOSE_LOCAL ? "local" : "socks",
		         local_rule_str(r, l, sizeof(l)));
		return buf;
	}
	snprintf(buf, len, "expose %s%s%.32s", local_str(r, l, sizeof(l)),
	         r->conf->name[0] ? " " : "", r->conf->name);
	return buf;
}

static void rule_register(struct xrule *r);

/* LOCAL's addresses came (or not): the first is used, and the rule registers if it may. */
static void rule_on_resolved(void *arg, int err, const char *why, const struct ph_addr *addrs,
                             unsigned n, uint32_t ttl)
{
	struct xrule *r = arg;
	char label[PH_HOST_MAX + 64];

	(void)ttl;
	r->resolving = false;
	if (r->c->s == NULL || r->c->s->state != PH_SESS_UP || r->state != XR_IDLE)
		return; /* the next session starts it again */
	if (err < 0 || n == 0) {
		ph_warn("%s: %s; asking again in 5 s", rule_label(r, label, sizeof(label)),
		        why != NULL ? why : ph_strerror(err));
		ph_timer_arm(r->c->x->loop, &r->again, 5000);
		return;
	}
	r->local = addrs[0];
	rule_register(r);
}

/*
 * Registers r, LOCAL's name looked up first (each time: at each session start and each
 * retry) without blocking the loop: the answer registers it.
 */
static void rule_start(struct xrule *r)
{
	const struct ph_hostport *hp = &r->conf->local;
	char label[PH_HOST_MAX + 64];
	int err;

	if (!hp->is_name) {
		r->local = hp->addr;
		rule_register(r);
		return;
	}
	if (r->resolving)
		return; /* its answer registers it */
	err = ph_resolver_query(r->c->x->res, hp->host, hp->port, rule_on_resolved, r);
	if (err < 0) {
		ph_warn("%s: %s; asking again in 5 s", rule_label(r, label, sizeof(label)),
		        strerror(-err));
		ph_timer_arm(r->c->x->loop, &r->again, 5000);
		return;
	}
	r->resolving = true;
}

static void rule_register(struct xrule *r)
{
	struct ph_ctrl m = {.type = PH_CTRL_REGISTER,
	                    .req = r->idx + 1,
	                    .proto = r->conf->udp ? PH_SVC_UDP : PH_SVC_TCP,
	                    .port = r->want,
	                    .proxy = (uint8_t)r->conf->proxy,
	                    .max_conns = r->conf->max_conns,
	                    .priv = r->conf->priv};
	uint8_t out[PH_CTRL_MAX];

	if (r->c->s == NULL || r->c->s->state != PH_SESS_UP || r->state == XR_REFUSED)
		return;
	snprintf(m.name, sizeof(m.name), "%s", r->conf->name);
	/* the relay judges the visitors: the rules go with the request (CIDRs, at most 32) */
	for (unsigned i = 0; i < r->conf->acl.n && m.nacl < PH_CTRL_ACL_MAX; i++) {
		m.acl[m.nacl].allow = r->conf->acl.rules[i].allow;
		m.acl[m.nacl++].cidr = r->conf->acl.rules[i].cidr;
	}
	r->state = XR_ASKED;
	(void)ph_sess_ctrl(r->c->s, out, ph_ctrl_build(&m, out));
}

static void rule_again(struct ph_timer *t)
{
	struct xrule *r = container_of(t, struct xrule, again);

	if (r->conf->kind == PH_EXPOSE_LOCAL) {
		if (r->c->s != NULL && r->c->s->state == PH_SESS_UP && r->state == XR_IDLE)
			local_udp_open(r);
		return;
	}
	rule_start(r);
}

static void exposer_check(struct ph_exposer *x)
{
	for (struct ph_list *n = x->clients.next; n != &x->clients; n = n->next) {
		struct xclient *c = container_of(n, struct xclient, node);

		for (unsigned i = 0; i < c->nrules; i++)
			if (c->rules[i]->state != XR_REFUSED ||
			    c->rules[i]->conf->kind != PH_EXPOSE_SERVICE)
				return;
	}
	ph_err("every expose rule was refused: nothing left to do");
	x->fatal(x->arg);
}

static void on_registered(struct xclient *c, const struct ph_ctrl *m)
{
	struct xrule *r;
	char l[PH_HOST_MAX + 16], hp[PH_HOST_MAX + 8];

	if (m->req == 0 || m->req > c->nrules)
		return;
	r = c->rules[m->req - 1];
	if (r->state == XR_UP && r->service != m->service)
		return;
	if (m->port == 0 && !r->conf->priv) {
		ph_warn("expose %s: the relay gave no public port; asking again in 5 s",
		        local_str(r, l, sizeof(l)));
		r->state = XR_IDLE;
		ph_timer_arm(c->x->loop, &r->again, 5000);
		return;
	}
	r->service = m->service;
	r->state = XR_UP;
	if (r->conf->priv) {
		ph_info("expose %s %s: private on relay %s", local_str(r, l, sizeof(l)),
		        r->conf->name, c->relay);
		return;
	}
	ph_info("expose %s%s%s: public at %s%s%s%s", local_str(r, l, sizeof(l)),
	        r->conf->name[0] ? " " : "", r->conf->name,
	        ph_hostport_fmt(c->conf->via.host, m->port, hp, sizeof(hp)),
	        r->conf->udp ? " (udp)" : "", r->port == m->port ? " again" : "",
	        r->port != 0 && r->port != m->port ? " (a new port)" : "");
	r->port = r->want = m->port;
}

static void on_refused(struct xclient *c, const struct ph_ctrl *m)
{
	struct xrule *r;
	char l[PH_HOST_MAX + 16];

	if (m->req == 0 || m->req > c->nrules)
		return;
	r = c->rules[m->req - 1];
	if (r->conf->kind == PH_EXPOSE_LOCAL) { /* a UDP channel the relay would not open */
		char label[2 * PH_HOST_MAX + 64];

		rule_label(r, label, sizeof(label));
		if (m->code == PH_REFUSE_LIMIT || m->code == PH_REFUSE_BADREQ) {
			ph_err("%s: the relay refused it: %s", label, m->text);
			r->state = XR_REFUSED;
			return;
		}
		ph_warn("%s: the relay refused it: %s; asking again in 5 s", label, m->text);
		r->state = XR_IDLE;
		ph_timer_arm(c->x->loop, &r->again, 5000);
		return;
	}
	if (r->want != r->conf->port) { /* the port it had: any will do */
		ph_info("expose %s: port %u is not to be had again (%s); asking for another",
		        local_str(r, l, sizeof(l)), r->want, m->text);
		r->want = r->conf->port;
		rule_register(r);
		return;
	}
	if (m->code == PH_REFUSE_LIMIT || m->code == PH_REFUSE_BADREQ) {
		ph_err("expose %s: the relay refused it: %s", local_str(r, l, sizeof(l)), m->text);
		r->state = XR_REFUSED;
		exposer_check(c->x);
		return;
	}
	ph_warn("expose %s: the relay refused it: %s; asking again in 5 s",
	        local_str(r, l, sizeof(l)), m->text);
	r->state = XR_IDLE;
	ph_timer_arm(c->x->loop, &r->again, 5000);
}

static struct xrule *rule_by_service(struct xclient *c, uint16_t service)
{
	for (unsigned i = 0; i < c->nrules; i++)
		if (c->rules[i]->state == XR_UP && c->rules[i]->service == service)
			return c->rules[i];
	return NULL;
}

/* --- UDP ------------------------------------------------------------------------------- */

static void flow_io(struct ph_io *io, uint32_t events)
{
	struct xflow *f = container_of(io, struct xflow, io);
	struct xrule *r = f->r;
	uint8_t p[PH_FRAME_MAX];

	(void)events;
	for (int i = 0; i < UDP_BATCH; i++) {
		ssize_t n = recv(io->fd, p + 7, sizeof(p) - 7, MSG_TRUNC);

		if (n < 0)
			return;
		if ((size_t)n > sizeof(p) - 7 || r->c->s == NULL || r->state != XR_UP)
			continue;
		ph_put16(p, r->service);
		ph_put32(p + 2, f->id);
		p[6] = 0; /* no address: the relay knows its peer by the flow */
		ph_udptab_touch(&r->flows, &f->node, r->c->x->loop->now);
		(void)ph_sess_dgram(r->c->s, p, 7 + (size_t)n);
	}
}

/*
 * A flow's key in its rule's table: the relay's flow id (one public peer of the service),
 * where the table keeps an address; not an address of any family.
 */
static void flow_key(struct ph_udp_key *k, uint32_t id)
{
	memset(k, 0, sizeof(*k)); /* compared as bytes */
	k->peer.len = sizeof(id);
	memcpy(&k->peer.u, &id, sizeof(id));
}

/*
 * A new flow of r (key k): a socket connected to LOCAL, in the table - the least recently
 * used flow makes room when the rule holds FLOW_MAX. Returns it, or NULL.
 */
static struct xflow *flow_new(struct xrule *r, const struct ph_udp_key *k)
{
	struct ph_loop *l = r->c->x->loop;
	struct ph_udp_node *old;
	struct xflow *f;
	int fd;

	if (r->flows.n >= FLOW_MAX && (old = ph_udptab_oldest(&r->flows)) != NULL)
		flow_free(container_of(old, struct xflow, node));
	fd = ph_udp_connect(&r->local, NULL, 0);
	if (fd < 0)
		return NULL;
	f = calloc(1, sizeof(*f));
	if (f == NULL) {
		close(fd);
		return NULL;
	}
	f->r = r;
	memcpy(&f->id, &k->peer.u, sizeof(f->id));
	ph_io_init(&f->io, fd, flow_io);
	if (ph_io_add(l, &f->io, EPOLLIN) < 0) {
		close(fd);
		free(f);
		return NULL;
	}
	ph_udptab_add(&r->flows, &f->node, k, l->now);
	r->visitors++;
	return f;
}

static void client_dgram(struct ph_sess *s, const uint8_t *p, size_t n)
{
	struct xclient *c = s->owner;
	struct xrule *r = rule_by_service(c, ph_get16(p));
	uint32_t id = ph_get32(p + 2);

	if (r == NULL && !ph_list_empty(&c->vudps)) {
		int vn = ph_msg_addr_get(p + 6, n - 6, &(struct ph_addr){0});

		if (vn > 0)
			(void)vudp_dgram(c, ph_get16(p), p + 6 + vn, n - 6 - (size_t)vn);
		return;
	}
	struct ph_udp_node *node;
	struct ph_udp_key k;
	struct ph_addr peer;
	struct xflow *f;
	int an;

	if (r == NULL || !r->conf->udp)
		return;
	an = ph_msg_addr_get(p + 6, n - 6, &peer);
	if (an < 0)
		return;
	if (r->conf->kind == PH_EXPOSE_LOCAL) { /* an answer for one of our clients */
		for (f = r->byid[id & 255]; f != NULL && f->id != id; f = f->inext)
			;
		if (f == NULL)
			return;
		ph_udptab_touch(&r->flows, &f->node, c->x->loop->now);
		(void)sendto(r->uio.fd, p + 6 + an, n - 6 - (size_t)an, MSG_DONTWAIT,
		             &f->node.key.peer.u.sa, f->node.key.peer.len);
		r->bytes_down += n - 6 - (size_t)an;
		return;
	}
	flow_key(&k, id);
	node = ph_udptab_find(&r->flows, &k);
	if (node == NULL) {
		f = flow_new(r, &k);
		if (f == NULL)
			return;
	} else {
		f = container_of(node, struct xflow, node);
		ph_udptab_touch(&r->flows, &f->node, c->x->loop->now);
	}
	(void)send(f->io.fd, p + 6 + an, n - 6 - (size_t)an, MSG_DONTWAIT);
}

static void exposer_sweep(struct ph_timer *t)
{
	struct ph_exposer *x = container_of(t, struct ph_exposer, sweep);

	for (struct ph_list *n = x->clients.next; n != &x->clients; n = n->next) {
		struct xclient *c = container_of(n, struct xclient, node);

		for (unsigned i = 0; i < c->nrules; i++) {
			struct xrule *r = c->rules[i];

			struct ph_udp_node *f;

			while ((f = ph_udptab_oldest(&r->flows)) != NULL &&
			       x->loop->now - f->last >= FLOW_IDLE_MS)
				flow_free(container_of(f, struct xflow, node));
		}
	}
	ph_timer_arm(x->loop, &x->sweep, 10000);
}

/* --- session callbacks ------------------------------------------------------------------- */

static int client_up(struct ph_sess *s)
{
	struct xclient *c = s->owner;
	int err;

	c->s = s;
	/* a first-seen key is pinned before a REGISTER goes to its holder, or not used */
	if (c->tofu[0] != '\0') {
		err = known_store(c);
		if (err < 0) {
			snprintf(c->refusal, sizeof(c->refusal),
			         "a new key %s, which cannot be pinned in %s (%s): refusing it",
			         c->tofu, c->known, strerror(-err));
			return err;
		}
		ph_info("relay %s: first seen with key %s, now pinned in %s", c->relay, c->tofu,
		        c->known);
		c->tofu[0] = '\0';
	}
	c->confirmed = false; /* TLS 1.3: the relay judges this client's key after this */
	c->up_at = s->loop->now;
	for (unsigned i = 0; i < c->nrules; i++) {
		struct xrule *r = c->rules[i];

		if (r->conf->kind == PH_EXPOSE_LOCAL && r->conf->udp) {
			if (r->state != XR_REFUSED)
				local_udp_open(r);
			continue;
		}
		if (r->conf->kind == PH_EXPOSE_LOCAL) {
			/* streams may go at once: a refused key resets them, as it ends all */
			r->state = XR_UP;
			ph_acceptor_hold(&r->acc, false);
			continue;
		}
		if (r->conf->kind == PH_EXPOSE_SOCKS) {
			r->state = XR_UP;
			continue;
		}
		if (r->state == XR_REFUSED)
			continue;
		r->state = XR_IDLE;
		rule_start(r);
	}
	if (c->check != NULL)
		check_send(c);
	return 0;
}

/* The relay took this client's key: its first word (a CTRL, or a PONG) says so. */
static void client_confirm(struct xclient *c)
{
	if (c->confirmed)
		return;
	c->confirmed = true;
	ph_info("relay %s: session up", c->relay);
	c->backoff = 0;
	c->attempts = 0;
}

static void client_pong(struct ph_sess *s)
{
	client_confirm(s->owner);
}

static int client_ctrl(struct ph_sess *s, const uint8_t *p, size_t n, const char **why)
{
	struct xclient *c = s->owner;
	struct ph_ctrl m;

	if (ph_ctrl_parse(p, n, &m, why) < 0)
		return -EPROTO;
	client_confirm(c); /* the relay's first answer: it took this client's key */
	if ((m.type == PH_CTRL_UDP_OPENED || m.type == PH_CTRL_REFUSED) && (m.req & VUDP_REQ)) {
		if (c->socks_rule != NULL)
			vudp_answer(c, &m);
		return 0;
	}
	switch (m.type) {
	case PH_CTRL_REGISTERED:
		on_registered(c, &m);
		return 0;
	case PH_CTRL_UDP_OPENED:
		if (m.req != 0 && m.req <= c->nrules && c->rules[m.req - 1]->conf->udp &&
		    c->rules[m.req - 1]->conf->kind == PH_EXPOSE_LOCAL) {
			struct xrule *r = c->rules[m.req - 1];
			char label[2 * PH_HOST_MAX + 64];

			r->service = m.service;
			r->state = XR_UP;
			ph_info("%s: up", rule_label(r, label, sizeof(label)));
		}
		return 0;
	case PH_CTRL_REFUSED:
		on_refused(c, &m);
		return 0;
	case PH_CTRL_CHECKED:
		check_answer(c, &m);
		return 0;
	case PH_CTRL_UNREGISTER:
		for (unsigned i = 0; i < c->nrules; i++) {
			struct xrule *r = c->rules[i];
			char l[PH_HOST_MAX + 16];

			if (r->state != XR_UP || r->service != m.service)
				continue;
			ph_warn("expose %s: port %u was taken over by another client with this "
			        "key; asking again in 30 s",
			        local_str(r, l, sizeof(l)), r->port);
			r->state = XR_IDLE;
			rule_flows_drop(r);
			ph_timer_arm(s->loop, &r->again, 30000);
		}
		return 0;
	default:
		*why = "a control message only the client sends";
		return -EPROTO;
	}
}

static int client_open(struct ph_sess *s, uint32_t id, const uint8_t *p, size_t n, bool fin,
                       const char **why)
{
	struct xclient *c = s->owner;
	struct ph_addr visitor, pub;
	uint8_t pre[PH_PROXY_MAX];
	size_t pn = 0, off = 2;
	struct ph_stream *st;
	struct xrule *r;
	int an, fd;

	r = rule_by_service(c, ph_get16(p));
	an = ph_msg_addr_get(p + off, n - off, &visitor);
	if (an > 0) {
		off += (size_t)an;
		an = ph_msg_addr_get(p + off, n - off, &pub);
	}
	if (an < 0) {
		*why = "an OPEN with a malformed address";
		return -EPROTO;
	}
	off += (size_t)an;
	if (r == NULL || r->conf->udp) {
		ph_sess_rst(s, id, PH_RST_NOSERVICE);
		return 0;
	}
	r->visitors++;
	fd = ph_tcp_connect(&r->local, NULL);
	if (fd < 0) {
		char label[PH_HOST_MAX + 64];

		r->refused++;
		rule_label(r, label, sizeof(label));
		ph_logagg_note(label, "visitors", "the local service cannot be reached", "%s: %s",
		               label, strerror(-fd));
		ph_sess_rst(s, id, PH_RST_REFUSED);
		return 0;
	}
	if (r->conf->proxy != 0 && visitor.u.sa.sa_family != AF_UNSPEC)
		pn = ph_proxy_build(r->conf->proxy, &visitor, &pub, pre);
	st = ph_stream_attach(s, id, fd, true, pre, pn, p + off, n - off, fin, r);
	if (st != NULL) {
		st->peer = visitor; /* for its close line */
		r->live++;
	}
	return 0;
}

/* A stream to LOCAL ended: its line, and its counts into its rule's. */
static void client_stream_end(struct ph_sess *s, struct ph_stream *st)
{
	struct xrule *r = st->owner;
	char label[2 * PH_HOST_MAX + 64];

	(void)s;
	if (r == NULL)
		return;
	if (r->conf->kind !=
	    PH_EXPOSE_SERVICE) { /* a stream from here: its socket is the visitor */
		ph_stream_log_end(st, rule_label(r, label, sizeof(label)), "streams", NULL, true);
		if (r->conf->kind == PH_EXPOSE_LOCAL)
			ph_fds_give(PH_FDS_STREAM);
		r->live--;
		r->failed += st->failed;
		r->bytes_up += st->bytes_in;
		r->bytes_down += st->bytes_out;
		return;
	}
	ph_stream_log_end(st, rule_label(r, label, sizeof(label)), "visitors", &r->local, false);
	r->live--;
	r->failed += st->failed;
	r->bytes_up += st->bytes_out;
	r->bytes_down += st->bytes_in;
}

/* What a socks --via worker is told when its stream failed: the status a RST reason means. */
static uint8_t via_status_of(uint8_t reason)
{
	switch (reason) {
	case PH_RST_REFUSED:
		return PH_VIA_REFUSED;
	case PH_RST_FORBIDDEN:
		return PH_VIA_FORBIDDEN;
	case PH_RST_UNREACHABLE:
		return PH_VIA_UNREACHABLE;
	case PH_RST_NONAME:
		return PH_VIA_NONAME;
	case PH_RST_TIMEOUT:
		return PH_VIA_TIMEOUT;
	default:
		return PH_VIA_FAILED;
	}
}

/* The relay connected a stream from here: a socks --via worker hears it first. */
static void client_opened(struct ph_sess *s, struct ph_stream *st, const struct ph_addr *bound)
{
	struct xrule *r = st->owner;
	uint8_t rec[PH_VIA_REPLY_HDR + PH_VIA_TEXT_MAX];

	(void)s;
	if (r != NULL && r->conf->kind == PH_EXPOSE_SOCKS)
		(void)ph_stream_inject(st, rec, ph_via_reply_put(PH_VIA_OK, bound, NULL, rec));
}

/* The relay reset a stream from here: why, in the log, or to the socks --via worker. */
static void client_reset(struct ph_sess *s, struct ph_stream *st, uint8_t reason, const char *text)
{
	struct xrule *r = st->owner;
	char label[2 * PH_HOST_MAX + 64];
	uint8_t rec[PH_VIA_REPLY_HDR + PH_VIA_TEXT_MAX];

	(void)s;
	if (r == NULL || r->conf->kind == PH_EXPOSE_SERVICE)
		return;
	if (r->conf->kind == PH_EXPOSE_SOCKS) {
		if (!st->opened)
			(void)ph_stream_inject(
				st, rec, ph_via_reply_put(via_status_of(reason), NULL, text, rec));
		return;
	}
	/* a refusal is the relay's operator's word: said as it is, a line a second */
	if (text[0] != '\0' && !st->opened && ph_ratelimit_ok(&r->rl, ph_now_ms(), 1))
		ph_warn("%s: the relay %s: %s", rule_label(r, label, sizeof(label)),
		        reason == PH_RST_FORBIDDEN || reason == PH_RST_NOSERVICE
		                ? "refused"
		                : "could not connect",
		        text);
}

/* --- local: streams from here ------------------------------------------------------------ */

static const char *local_acc_label(struct ph_acceptor *a, char *buf, size_t len)
{
	return rule_label(container_of(a, struct xrule, acc), buf, len);
}

/* The head of the OPEN that asks the relay for r's target. */
static size_t local_head(const struct xrule *r, uint8_t *out)
{
	struct ph_open_req o = {.kind = r->conf->target_port != 0 ? PH_OPEN_HOST : PH_OPEN_SERVICE,
	                        .port = r->conf->target_port};

	snprintf(o.target, sizeof(o.target), "%s", r->conf->target);
	return ph_open_req_put(&o, out);
}

/* A client of a local rule: a stream to the target, its first bytes along (no round trip). */
static void local_accept(struct ph_acceptor *a, int fd, const struct ph_addr *peer)
{
	struct xrule *r = container_of(a, struct xrule, acc);
	uint8_t head[PH_OPEN_HEAD_MAX];
	struct ph_stream *st;

	if (r->c->s == NULL || r->c->s->state != PH_SESS_UP) { /* held then: cannot be */
		ph_sock_set_rst(fd);
		close(fd);
		ph_fds_give(PH_FDS_STREAM);
		return;
	}
	r->visitors++;
	st = ph_sess_open(r->c->s, fd, head, local_head(r, head), r);
	if (st == NULL) {
		r->failed++;
		ph_fds_give(PH_FDS_STREAM);
		return;
	}
	st->peer = *peer;
	r->live++;
}

/* local udp: datagrams of our clients, each client a flow of the channel. */
static void local_udp_read(struct ph_io *io, uint32_t events)
{
	struct xrule *r = container_of(io, struct xrule, uio);
	struct ph_loop *l = r->c->x->loop;
	uint8_t p[PH_FRAME_MAX];

	(void)events;
	for (int i = 0; i < UDP_BATCH; i++) {
		struct ph_udp_key k;
		struct ph_udp_node *node;
		struct xflow *f;
		socklen_t alen = sizeof(k.peer.u);
		ssize_t n;

		memset(&k, 0, sizeof(k)); /* compared as bytes */
		n = recvfrom(io->fd, p + 7, sizeof(p) - 7, MSG_TRUNC, &k.peer.u.sa, &alen);
		if (n < 0)
			return;
		k.peer.len = alen;
		if ((size_t)n > sizeof(p) - 7 || r->c->s == NULL || r->state != XR_UP) {
			r->failed++; /* too big for a frame, or no channel now: dropped */
			continue;
		}
		node = ph_udptab_find(&r->flows, &k);
		if (node == NULL) {
			struct ph_udp_node *old;

			if (r->flows.n >= FLOW_MAX && (old = ph_udptab_oldest(&r->flows)) != NULL)
				flow_free(container_of(old, struct xflow, node));
			f = calloc(1, sizeof(*f));
			if (f == NULL)
				continue;
			f->r = r;
			f->id = ++r->next_flow;
			ph_io_init(&f->io, -1, flow_io);
			f->inext = r->byid[f->id & 255];
			r->byid[f->id & 255] = f;
			ph_udptab_add(&r->flows, &f->node, &k, l->now);
			r->visitors++;
			node = &f->node;
		}
		f = container_of(node, struct xflow, node);
		ph_udptab_touch(&r->flows, node, l->now);
		ph_put16(p, r->service);
		ph_put32(p + 2, f->id);
		p[6] = 0;
		if (ph_sess_dgram(r->c->s, p, 7 + (size_t)n) == 0)
			r->bytes_up += (uint64_t)n;
	}
}

/* local udp: asks the relay for a channel to the target (UDP_OPEN). */
static void local_udp_open(struct xrule *r)
{
	struct ph_ctrl m = {.type = PH_CTRL_UDP_OPEN,
	                    .req = r->idx + 1,
	                    .okind = r->conf->target_port != 0 ? PH_OPEN_HOST : PH_OPEN_SERVICE,
	                    .port = r->conf->target_port};
	uint8_t out[PH_CTRL_MAX];

	snprintf(m.target, sizeof(m.target), "%s", r->conf->target);
	r->state = XR_ASKED;
	(void)ph_sess_ctrl(r->c->s, out, ph_ctrl_build(&m, out));
}

/* Opens r's listener, held until a session is up. Returns 0, or -errno with a reason. */
static int local_listen(struct xrule *r, char *why, size_t whylen)
{
	const struct ph_hostport *hp = &r->conf->listen;
	char l[PH_HOST_MAX + 8];
	struct ph_addr a;
	int fd, err;

	if (hp->wildcard)
		(void)ph_addr_from_literal("::", hp->port, &a);
	else
		a = hp->addr;
	fd = r->conf->udp ? ph_udp_bind(&a, false, false, false, 0)
	                  : ph_tcp_listen(&a, false, false);
	if (fd == -EAFNOSUPPORT && hp->wildcard) {
		(void)ph_addr_from_literal("0.0.0.0", hp->port, &a);
		fd = r->conf->udp ? ph_udp_bind(&a, false, false, false, 0)
		                  : ph_tcp_listen(&a, false, false);
	}
	if (fd < 0) {
		snprintf(why, whylen, "local: cannot listen on %s%s: %s",
		         r->conf->udp ? "udp://" : "",
		         ph_hostport_fmt(hp->wildcard ? "" : hp->host, hp->port, l, sizeof(l)),
		         ph_bind_strerror(fd));
		return fd;
	}
	if (r->conf->udp) {
		r->byid = calloc(256, sizeof(*r->byid));
		ph_io_init(&r->uio, fd, local_udp_read);
		err = r->byid == NULL ? -ENOMEM
		                      : 0; /* the flows' table: ph_expose_start makes it */
		if (err == 0)
			err = ph_io_add(r->c->x->loop, &r->uio, EPOLLIN);
		if (err < 0) {
			snprintf(why, whylen, "local: cannot poll a socket: %s", strerror(-err));
			return err;
		}
		return 0;
	}
	ph_acceptor_init(&r->acc, fd, PH_FDS_STREAM, local_accept, local_acc_label);
	err = ph_acceptor_start(r->c->x->loop, &r->acc);
	if (err < 0) {
		snprintf(why, whylen, "local: cannot poll a listener: %s", strerror(-err));
		return err;
	}
	ph_acceptor_hold(&r->acc, true);
	return 0;
}

/* --- socks --via: requests from the workers ------------------------------------------- */

/* Closes d's channel on the relay (when open) and forgets it. */
static void vdst_end(struct vudp *u, struct vdst *d, bool tell)
{
	struct xclient *c = u->c;

	if (tell && d->chan != 0 && c->s != NULL && c->s->state == PH_SESS_UP) {
		struct ph_ctrl m = {.type = PH_CTRL_UNREGISTER, .service = d->chan};
		uint8_t out[PH_CTRL_MAX];

		(void)ph_sess_ctrl(c->s, out, ph_ctrl_build(&m, out));
	}
	free(d->pend);
	memset(d, 0, sizeof(*d));
}

static void vudp_free(struct vudp *u, bool tell)
{
	struct xclient *c = u->c;

	for (unsigned i = 0; i < u->n; i++)
		vdst_end(u, &u->d[i], tell);
	ph_io_close(c->x->loop, &u->io); /* the worker reads the end */
	ph_list_del(&u->node);
	/* an event of this round may still name it: freed after them, with the flows */
	ph_list_add_tail(&c->x->dead_vudps, &u->node);
	ph_task_queue(c->x->loop, &c->x->reap);
}

/* d's datagram p[0..n) on its channel (its one flow). */
static void vdst_send(struct vudp *u, struct vdst *d, const uint8_t *p, size_t n)
{
	uint8_t f[PH_FRAME_MAX];

	if (7 + n > sizeof(f) || u->c->s == NULL)
		return;
	ph_put16(f, d->chan);
	ph_put32(f + 2, 1);
	f[6] = 0;
	memcpy(f + 7, p, n);
	if (ph_sess_dgram(u->c->s, f, 7 + n) == 0)
		u->c->socks_rule->bytes_up += n;
}

/* The destination host:port of u: found, or made (a channel asked for). NULL: dropped. */
static struct vdst *vdst_get(struct vudp *u, const char *host, uint16_t port)
{
	struct xclient *c = u->c;
	struct ph_ctrl m = {.type = PH_CTRL_UDP_OPEN, .okind = PH_OPEN_HOST, .port = port};
	uint8_t out[PH_CTRL_MAX];
	struct vdst *d = NULL;

	for (unsigned i = 0; i < u->n; i++)
		if (u->d[i].port == port && strcmp(u->d[i].host, host) == 0)
			d = &u->d[i];
	if (d != NULL) {
		d->last = c->x->loop->now;
		return d;
	}
	if (c->s == NULL || c->s->state != PH_SESS_UP)
		return NULL;
	if (u->n == VASSOC_DSTS) { /* the least recently used destination makes room */
		unsigned old = 0;

		for (unsigned i = 1; i < u->n; i++)
			if (u->d[i].last < u->d[old].last)
				old = i;
		vdst_end(u, &u->d[old], true);
		d = &u->d[old];
	} else {
		d = &u->d[u->n++];
	}
	snprintf(d->host, sizeof(d->host), "%s", host);
	d->port = port;
	d->last = c->x->loop->now;
	d->req = VUDP_REQ | (++c->vudp_seq & 0x7fffffffu);
	m.req = d->req;
	snprintf(m.target, sizeof(m.target), "%s", host);
	c->socks_rule->visitors++;
	(void)ph_sess_ctrl(c->s, out, ph_ctrl_build(&m, out));
	return d;
}

/* The worker's datagrams: each to its destination's channel (asked for at the first). */
static void vudp_io(struct ph_io *io, uint32_t events)
{
	struct vudp *u = container_of(io, struct vudp, io);
	uint8_t p[PH_VIA_DGRAM_HDR_MAX + PH_FRAME_MAX];

	(void)events;
	for (int i = 0; i < UDP_BATCH && u->io.fd != -1; i++) {
		ssize_t n = recv(io->fd, p, sizeof(p), MSG_DONTWAIT | MSG_TRUNC);
		char host[PH_VIA_HOST_MAX + 1];
		struct vdst *d;
		uint16_t port;
		int hl;

		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) { /* the association ended (0: the worker closed its end) */
			vudp_free(u, true);
			return;
		}
		if ((size_t)n > sizeof(p))
			continue;
		hl = ph_via_dgram_get(p, (size_t)n, host, &port);
		if (hl < 0)
			continue;
		d = vdst_get(u, host, port);
		if (d == NULL || d->refused)
			continue;
		if (d->chan != 0) {
			vdst_send(u, d, p + hl, (size_t)n - (size_t)hl);
		} else if (d->pend == NULL && (size_t)n - (size_t)hl <= VASSOC_HOLD) {
			/* the first datagram waits for its channel; later ones are dropped */
			d->pend = malloc((size_t)n - (size_t)hl);
			if (d->pend != NULL) {
				memcpy(d->pend, p + hl, (size_t)n - (size_t)hl);
				d->pend_len = (size_t)n - (size_t)hl;
			}
		}
	}
}

/* A UDP_OPENED or REFUSED for one of an association's destinations. */
static void vudp_answer(struct xclient *c, const struct ph_ctrl *m)
{
	for (struct ph_list *n = c->vudps.next; n != &c->vudps; n = n->next) {
		struct vudp *u = container_of(n, struct vudp, node);

		for (unsigned i = 0; i < u->n; i++) {
			struct vdst *d = &u->d[i];

			if (d->req != m->req || d->chan != 0 || d->refused)
				continue;
			if (m->type == PH_CTRL_REFUSED) {
				char label[PH_HOST_MAX + 64];

				d->refused = true;
				c->socks_rule->failed++;
				snprintf(label, sizeof(label), "socks via %s", c->relay);
				ph_logagg_note(label, "datagrams", "refused by the relay",
				               "%s: udp to %s: the relay refused: %s", label,
				               d->host, m->text);
			} else {
				d->chan = m->service;
				d->addr = m->addr;
				if (d->pend != NULL)
					vdst_send(u, d, d->pend, d->pend_len);
			}
			free(d->pend);
			d->pend = NULL;
			return;
		}
	}
}

/* The relay's datagram on a channel of an association: to the worker, behind its source. */
static bool vudp_dgram(struct xclient *c, uint16_t chan, const uint8_t *p, size_t n)
{
	uint8_t out[PH_VIA_FROM_MAX + PH_FRAME_MAX];

	if (chan == 0)
		return false;
	for (struct ph_list *l = c->vudps.next; l != &c->vudps; l = l->next) {
		struct vudp *u = container_of(l, struct vudp, node);

		for (unsigned i = 0; i < u->n; i++) {
			size_t h;

			if (u->d[i].chan != chan)
				continue;
			h = ph_via_from_put(&u->d[i].addr, out);
			if (h + n > sizeof(out))
				return true;
			memcpy(out + h, p, n);
			if (send(u->io.fd, out, h + n, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
				c->socks_rule->bytes_down += n;
			return true;
		}
	}
	return false;
}

/* A worker's UDP association: polled at once; channels come with its destinations. */
static void vudp_new(struct xclient *c, int fd)
{
	struct vudp *u = calloc(1, sizeof(*u));

	if (u == NULL) {
		close(fd);
		return;
	}
	u->c = c;
	ph_io_init(&u->io, fd, vudp_io);
	ph_list_add_tail(&c->vudps, &u->node);
	if (ph_io_add(c->x->loop, &u->io, EPOLLIN) < 0)
		vudp_free(u, false);
}

static void via_readable(struct ph_io *io, uint32_t events)
{
	struct xclient *c = container_of(io, struct xclient, via_io);
	struct xrule *r = c->socks_rule;
	uint8_t rec[PH_VIA_REPLY_HDR + PH_VIA_TEXT_MAX];
	char text[PH_HOST_MAX + 64];

	(void)events;
	for (unsigned i = 0; i < 64; i++) { /* a bound: the loop's other work goes on */
		struct ph_via_req q;
		struct ph_open_req o = {.kind = PH_OPEN_HOST};
		uint8_t head[PH_OPEN_HEAD_MAX];
		struct ph_stream *st;
		int fd = ph_via_recv(io->fd, &q);

		if (fd == -EAGAIN)
			return;
		if (fd < 0)
			continue; /* malformed: cannot come from our own workers */
		if (q.udp && (c->s == NULL || c->s->state != PH_SESS_UP)) {
			close(fd); /* the association ends at once: the worker says why */
			r->failed++;
			continue;
		}
		r->visitors++;
		if (c->s == NULL || c->s->state != PH_SESS_UP) {
			snprintf(text, sizeof(text), "the relay %s is not connected now", c->relay);
			(void)!write(fd, rec, ph_via_reply_put(PH_VIA_DOWN, NULL, text, rec));
			close(fd);
			r->failed++;
			continue;
		}
		if (q.udp) {
			vudp_new(c, fd);
			continue;
		}
		o.port = q.port;
		snprintf(o.target, sizeof(o.target), "%s", q.host);
		st = ph_sess_open(c->s, fd, head, ph_open_req_put(&o, head), r);
		if (st == NULL) {
			r->failed++;
			continue;
		}
		if (q.handoff) /* the worker's client comes in place of the socket pair */
			ph_stream_await_socket(st);
		r->live++;
	}
}

static void client_retry(struct ph_timer *t)
{
	client_connect(container_of(t, struct xclient, retry));
}

static void client_later(struct xclient *c, const char *why)
{
	uint64_t ms;

	if (check_lost(c, why))
		return; /* a check asks once: no session is its answer */
	c->backoff = c->backoff == 0 ? BACKOFF_MIN_MS : c->backoff * 2;
	if (c->backoff > BACKOFF_MAX_MS)
		c->backoff = BACKOFF_MAX_MS;
	ms = c->backoff / 2 + ph_now_ms() % (c->backoff / 2 + 1); /* jitter: half to all of it */
	if (c->attempts++ < 3 || c->backoff == BACKOFF_MAX_MS)
		ph_warn("relay %s: %s; trying again in %.1f s", c->relay, why, (double)ms / 1000);
	ph_timer_arm(c->x->loop, &c->retry, ms);
}

/* Adds a client session's counts to *t: what the relay sent it came from visitors. */
static void sess_stats_add(struct ph_tunnel_stats *t, const struct ph_sess_stats *st)
{
	t->sessions++;
	t->bytes_up += st->bytes_in;
	t->bytes_down += st->bytes_out;
	t->dgrams += st->dgrams_in + st->dgrams_out;
}

void ph_expose_stats(struct ph_exposer *x, struct ph_tunnel_stats *out)
{
	*out = x->gone;
	for (struct ph_list *l = x->clients.next; l != &x->clients; l = l->next) {
		const struct xclient *c = container_of(l, struct xclient, node);

		if (c->s != NULL && c->confirmed) {
			sess_stats_add(out, &c->s->st);
			out->sessions_live++;
		}
		for (unsigned i = 0; i < c->nrules; i++)
			out->visitors += c->rules[i]->visitors;
	}
}

static void client_closed(struct ph_sess *s, const char *why)
{
	struct xclient *c = s->owner;
	char said[224];

	if (c->confirmed) /* what it carried stays in the totals */
		sess_stats_add(&c->x->gone, &s->st);
	c->s = NULL;
	while (!ph_list_empty(&c->vudps)) /* their workers see the end, and dial again */
		vudp_free(container_of(c->vudps.next, struct vudp, node), false);
	for (unsigned i = 0; i < c->nrules; i++) {
		struct xrule *r = c->rules[i];

		if (r->conf->kind != PH_EXPOSE_SERVICE) {
			if (r->state != XR_REFUSED)
				r->state = XR_IDLE;
			rule_flows_drop(r);
			if (r->conf->kind == PH_EXPOSE_LOCAL &&
			    !r->conf->udp) /* wait in the queue */
				ph_acceptor_hold(&r->acc, true);
			continue;
		}
		ph_timer_stop(c->x->loop, &r->again);
		rule_flows_drop(r);
		if (r->state != XR_REFUSED)
			r->state = XR_IDLE;
	}
	if (c->x->stopping)
		return;
	if (c->fatal) {
		c->x->fatal(c->x->arg);
		return;
	}
	if (c->confirmed && s->loop->now - s->up_at > 10000)
		c->backoff = 0; /* it lasted: start again from the shortest wait */
	/*
	 * TLS 1.3: our handshake ends before the relay has judged this client's key; an alert
	 * then, or a close before the relay's first word, is the relay refusing the key (a
	 * write meeting that close would call it "Broken pipe").
	 */
	if (!c->confirmed && strstr(why, "alert") != NULL)
		snprintf(said, sizeof(said), "the relay refused this client's key (%s)", why);
	else if (!c->confirmed && s->up_at != 0)
		snprintf(said, sizeof(said),
		         "the relay closed the connection before accepting this client's key (%s)",
		         why);
	else
		snprintf(said, sizeof(said), "%s", why);
	if (!c->confirmed && strstr(why, "alert") != NULL && c->attempts == 0) {
		uint8_t pub[PH_KEY_LEN];
		char fp[PH_FP_LEN];

		ph_key_public(c->key, pub);
		ph_key_fingerprint(pub, fp);
		ph_warn("relay %s refused the session (%s): is this client's key %s in its "
		        "authorized keys? (`pinhole keygen --show -f KEY` prints the line to add)",
		        c->relay, why, fp);
	}
	c->confirmed = false;
	client_later(c, c->refusal[0] != '\0' ? c->refusal : said);
	c->refusal[0] = '\0';
}

static const struct ph_sess_ops client_ops = {
	.up = client_up,
	.ctrl = client_ctrl,
	.open = client_open,
	.dgram = client_dgram,
	.opened = client_opened,
	.reset = client_reset,
	.pong = client_pong,
	.stream_end = client_stream_end,
	.closed = client_closed,
};

/* Connects to the relay at a and starts the session. */
static void client_connect_to(struct xclient *c, const struct ph_addr *a)
{
	int fd = ph_tcp_connect(a, NULL);

	if (fd < 0) {
		client_later(c, strerror(-fd));
		return;
	}
	c->s = ph_sess_new(c->x->loop, fd, c->ctx, false, &client_ops, c, c->hb_ms);
	if (c->s == NULL) {
		client_later(c, "out of memory");
		return;
	}
	c->s->peer_addr = *a;
}

/* The relay's addresses came (or not): the first is connected to. */
static void client_on_resolved(void *arg, int err, const char *why, const struct ph_addr *addrs,
                               unsigned n, uint32_t ttl)
{
	struct xclient *c = arg;

	(void)ttl;
	c->resolving = false;
	if (err < 0 || n == 0) {
		client_later(c, why != NULL ? why : ph_strerror(err));
		return;
	}
	client_connect_to(c, &addrs[0]);
}

/* Makes the session: the relay's name looked up first, on the loop, never blocking it. */
static void client_connect(struct xclient *c)
{
	const struct ph_hostport *via = &c->conf->via;
	int err;

	if (!via->is_name) {
		client_connect_to(c, &via->addr);
		return;
	}
	if (c->resolving)
		return;
	err = ph_resolver_query(c->x->res, via->host, via->port, client_on_resolved, c);
	if (err < 0) {
		client_later(c, strerror(-err));
		return;
	}
	c->resolving = true;
}

/* --- the exposer ------------------------------------------------------------------------ */

void ph_expose_client_key(const struct ph_expose_conf *c, char *buf, size_t len)
{
	snprintf(buf, len, "%s|%u|%s|%s|%s", c->via.host, c->via.port, c->key_file, c->relay_fp,
	         c->known_file);
}

static bool same_client(const struct ph_expose_conf *a, const struct ph_expose_conf *b)
{
	return strcmp(a->via.host, b->via.host) == 0 && a->via.port == b->via.port &&
	       strcmp(a->key_file, b->key_file) == 0 && strcmp(a->relay_fp, b->relay_fp) == 0 &&
	       strcmp(a->known_file, b->known_file) == 0;
}

static int client_new(struct ph_exposer *x, const struct ph_expose_conf *conf, char *why,
                      size_t whylen)
{
	struct xclient *c = calloc(1, sizeof(*c));
	int err;

	if (c == NULL)
		return -ENOMEM;
	c->x = x;
	c->conf = conf;
	c->known_fd = -1;
	ph_io_init(&c->via_io, -1, via_readable);
	ph_list_init(&c->vudps);
	ph_timer_init(&c->retry, client_retry);
	ph_list_add_tail(&x->clients, &c->node);
	snprintf(c->relay, sizeof(c->relay), strchr(conf->via.host, ':') ? "[%s]:%u" : "%s:%u",
	         conf->via.host, conf->via.port);
	if (conf->relay_fp[0] == '\0') { /* no pin: trust on first use, through known_relays */
		err = known_open(c, why, whylen);
		if (err < 0)
			return err;
	}
	err = ph_key_open(conf->key_file, true, &c->key, why, whylen);
	if (err < 0)
		return err;
	c->ctx = ph_tls_ctx_new(c->key, false, relay_ok, c, why, whylen);
	return c->ctx != NULL ? 0 : -EIO;
}

int ph_expose_start(struct ph_loop *l, struct ph_expose_conf *const *conf, unsigned n,
                    void (*fatal)(void *arg), void *arg, struct ph_exposer **out, char *why,
                    size_t whylen)
{
	struct ph_exposer *x = calloc(1, sizeof(*x));
	int err = -ENOMEM;

	if (x == NULL) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	x->loop = l;
	x->fatal = fatal;
	x->arg = arg;
	ph_list_init(&x->clients);
	ph_list_init(&x->dead);
	ph_list_init(&x->dead_vudps);
	ph_task_init(&x->reap, exposer_reap);
	ph_timer_init(&x->sweep, exposer_sweep);
	err = ph_resolver_new(l, &x->res);
	if (err < 0) {
		snprintf(why, whylen, "cannot make a resolver: %s", strerror(-err));
		goto fail;
	}
	for (unsigned i = 0; i < n; i++) {
		struct xclient *c = NULL;
		struct xrule *r;

		for (struct ph_list *p = x->clients.next; p != &x->clients; p = p->next)
			if (same_client(container_of(p, struct xclient, node)->conf, conf[i]))
				c = container_of(p, struct xclient, node);
		if (c == NULL) {
			err = client_new(x, conf[i], why, whylen);
			if (err < 0)
				goto fail;
			c = container_of(x->clients.prev, struct xclient, node);
		}
		r = calloc(1, sizeof(*r));
		if (r == NULL) {
			err = -ENOMEM;
			snprintf(why, whylen, "out of memory");
			goto fail;
		}
		r->c = c;
		r->conf = conf[i];
		if (conf[i]->hb_ms != 0 && (c->hb_ms == 0 || conf[i]->hb_ms < c->hb_ms))
			c->hb_ms = conf[i]->hb_ms; /* one session: the most watchful line's */
		r->idx = c->nrules;
		r->want = conf[i]->port;
		ph_list_init(&r->flows.lru); /* empty until a UDP rule makes its table */
		ph_timer_init(&r->again, rule_again);
		ph_acceptor_init(&r->acc, -1, PH_FDS_STREAM, local_accept, local_acc_label);
		ph_io_init(&r->uio, -1, local_udp_read);
		c->rules[c->nrules++] = r;
		if (conf[i]->kind == PH_EXPOSE_LOCAL) {
			err = local_listen(r, why, whylen);
			if (err < 0)
				goto fail;
		}
		if (conf[i]->kind == PH_EXPOSE_SOCKS && c->socks_rule == NULL) {
			char key[PH_VIA_KEY_MAX];

			c->socks_rule = r;
			ph_expose_client_key(conf[i], key, sizeof(key));
			c->via = ph_via_get(key);
			if (c->via == NULL) {
				err = -ENOMEM;
				snprintf(why, whylen, "socks --via: cannot make a channel");
				goto fail;
			}
			c->via_io.fd = ph_via_rx(c->via);
			err = ph_io_add(l, &c->via_io, EPOLLIN);
			if (err < 0) {
				c->via_io.fd = -1;
				snprintf(why, whylen, "socks --via: cannot poll: %s",
				         strerror(-err));
				goto fail;
			}
		}
		if (conf[i]->udp && ph_udptab_init(&r->flows) < 0) {
			err = -ENOMEM;
			snprintf(why, whylen, "out of memory");
			goto fail;
		}
	}
	for (struct ph_list *p = x->clients.next; p != &x->clients; p = p->next) {
		struct xclient *c = container_of(p, struct xclient, node);

		ph_info("relay %s: connecting (%u rule%s)", c->relay, c->nrules,
		        c->nrules == 1 ? "" : "s");
		client_connect(c);
	}
	ph_timer_arm(l, &x->sweep, 10000);
	*out = x;
	return 0;
fail:
	ph_expose_free(x);
	return err;
}

void ph_expose_free(struct ph_exposer *x)
{
	if (x == NULL)
		return;
	x->stopping = true;
	ph_resolver_free(x->res); /* lookups in flight end without their callbacks */
	x->res = NULL;
	while (!ph_list_empty(&x->clients)) {
		struct xclient *c = container_of(x->clients.next, struct xclient, node);

		if (c->s != NULL) {
			struct ph_sess *s = c->s;

			ph_sess_close(s, PH_GOAWAY_NORMAL, "the client is stopping");
			ph_sess_free(s);
		}
		ph_timer_stop(x->loop, &c->retry);
		while (!ph_list_empty(&c->vudps))
			vudp_free(container_of(c->vudps.next, struct vudp, node), false);
		if (c->via_io.fd != -1) { /* the channel stays the table's, for a restart */
			int fd;

			ph_io_forget(x->loop, &c->via_io, &fd);
		}
		for (unsigned i = 0; i < c->nrules; i++) {
			ph_acceptor_close(&c->rules[i]->acc);
			ph_io_close(x->loop, &c->rules[i]->uio);
			rule_flows_drop(c->rules[i]);
			ph_udptab_free(&c->rules[i]->flows);
			ph_timer_stop(x->loop, &c->rules[i]->again);
			free(c->rules[i]->byid);
			free(c->rules[i]);
		}
		check_free(x, c);
		ph_list_del(&c->node);
		ph_tls_ctx_free(c->ctx);
		ph_key_free(c->key);
		if (c->known_fd != -1)
			close(c->known_fd);
		free(c);
	}
	ph_timer_stop(x->loop, &x->sweep);
	ph_task_cancel(&x->reap);
	exposer_reap(&x->reap);
	free(x);
}

void ph_expose_each(struct ph_exposer *x, void (*fn)(void *arg, const struct ph_tunnel_svc *v),
                    void *arg)
{
	for (struct ph_list *p = x->clients.next; p != &x->clients; p = p->next) {
		const struct xclient *c = container_of(p, struct xclient, node);

		for (unsigned i = 0; i < c->nrules; i++) {
			const struct xrule *r = c->rules[i];
			struct ph_tunnel_svc t = {
				.port = r->port,
				.up = r->state == XR_UP,
				.live = r->live,
				.visitors = r->visitors,
				.refused = r->refused,
				.failed = r->failed,
				.bytes_up = r->bytes_up,
				.bytes_down = r->bytes_down,
			};

			static const char *const kinds[] = {"expose", "local", "socks"};

			snprintf(t.proto, sizeof(t.proto), "%s", r->conf->udp ? "udp" : "tcp");
			snprintf(t.kind, sizeof(t.kind), "%s", kinds[r->conf->kind]);
			if (r->conf->kind == PH_EXPOSE_SERVICE) {
				snprintf(t.name, sizeof(t.name), "%s", r->conf->name);
				local_str(r, t.local, sizeof(t.local));
			} else { /* local: LISTEN, and the target as the name; socks: the relay */
				char l[2 * PH_HOST_MAX + 32], *sp;

				local_rule_str(r, l, sizeof(l));
				sp = strchr(l, ' ');
				if (sp != NULL && r->conf->kind == PH_EXPOSE_LOCAL)
					*sp++ = '\0';
				snprintf(t.local, sizeof(t.local), "%.260s", l);
				snprintf(t.name, sizeof(t.name), "%.32s",
				         sp != NULL && r->conf->kind == PH_EXPOSE_LOCAL ? sp : "");
			}
			fn(arg, &t);
		}
	}
}

size_t ph_expose_status(struct ph_exposer *x, bool json, char *buf, size_t len)
{
	size_t n = 0;

#define OUT(...)                                                                                   \
	do {                                                                                       \
		if (n < len)                                                                       \
			n += (size_t)snprintf(buf + n, len - n, __VA_ARGS__);                      \
	} while (0)
	OUT(json ? "[" : "relays:\n");
	for (struct ph_list *p = x->clients.next; p != &x->clients; p = p->next) {
		struct xclient *c = container_of(p, struct xclient, node);
		struct ph_sess *s = c->s != NULL && c->s->state == PH_SESS_UP ? c->s : NULL;
		char up[32], down[32];

		if (json)
			OUT("%s{\"relay\":\"%s\",\"up\":%s,\"rtt_ms\":%llu,\"streams\":%llu,"
			    "\"bytes_in\":%llu,\"bytes_out\":%llu,\"rules\":[",
			    p == x->clients.next ? "" : ",", c->relay, s ? "true" : "false",
			    s ? (unsigned long long)s->rtt_ms : 0ull,
			    s ? (unsigned long long)s->st.active : 0ull,
			    s ? (unsigned long long)s->st.bytes_in : 0ull,
			    s ? (unsigned long long)s->st.bytes_out : 0ull);
		else
			OUT("  %s: %s, rtt %llu ms, %llu streams, in %s, out %s\n", c->relay,
			    s ? "up" : "connecting", s ? (unsigned long long)s->rtt_ms : 0ull,
			    s ? (unsigned long long)s->st.active : 0ull,
			    ph_fmt_bytes(s ? s->st.bytes_in : 0, up, sizeof(up)),
			    ph_fmt_bytes(s ? s->st.bytes_out : 0, down, sizeof(down)));
		for (unsigned i = 0; i < c->nrules; i++) {
			struct xrule *r = c->rules[i];
			static const char *const states[] = {"waiting", "asked", "public",
			                                     "refused"};
			char l[PH_HOST_MAX + 16];

			if (r->conf->kind != PH_EXPOSE_SERVICE) {
				static const char *const kinds[] = {"expose", "local", "socks"};
				char ls[2 * PH_HOST_MAX + 32];

				local_rule_str(r, ls, sizeof(ls));
				if (json)
					OUT("%s{\"kind\":\"%s\",\"rule\":\"%s\",\"state\":\"%s\","
					    "\"streams\":%llu,\"live\":%u,\"failed\":%llu,"
					    "\"bytes_up\":%llu,\"bytes_down\":%llu}",
					    i ? "," : "", kinds[r->conf->kind], ls,
					    r->state == XR_UP ? "up" : "waiting",
					    (unsigned long long)r->visitors, r->live,
					    (unsigned long long)r->failed,
					    (unsigned long long)r->bytes_up,
					    (unsigned long long)r->bytes_down);
				else
					OUT("    %s %s: %s, %llu streams (%u now), %llu failed\n",
					    kinds[r->conf->kind], ls,
					    r->state == XR_UP ? "up" : "waiting",
					    (unsigned long long)r->visitors, r->live,
					    (unsigned long long)r->failed);
				continue;
			}
			local_str(r, l, sizeof(l));
			if (json)
				OUT("%s{\"kind\":\"expose\",\"private\":%s,\"local\":\"%s\","
				    "\"name\":"
				    "\"%s\",\"state\":\"%s\",\"port\":"
				    "%u,\"visitors\":%llu,\"live\":%u,\"refused\":%llu,"
				    "\"failed\":%llu,\"bytes_up\":%llu,\"bytes_down\":%llu,"
				    "\"acl\":%u}",
				    i ? "," : "", r->conf->priv ? "true" : "false", l,
				    r->conf->name, states[r->state], r->port,
				    (unsigned long long)r->visitors, r->live,
				    (unsigned long long)r->refused, (unsigned long long)r->failed,
				    (unsigned long long)r->bytes_up,
				    (unsigned long long)r->bytes_down, r->conf->acl.n);
			else
				OUT("    %s%s%s: %s, public port %u, %llu visitors\n", l,
				    r->conf->name[0] ? " " : "", r->conf->name, states[r->state],
				    r->port, (unsigned long long)r->visitors);
		}
		OUT(json ? "]}" : "");
	}
	OUT(json ? "]" : "");
#undef OUT
	return n < len ? n : len;
}

/* --- `pinhole check`: one CHECK instead of REGISTERs ------------------------------------ */

#define CHECK_MS 30000 /* a check's answer must come by then, the session's making included */

enum xcheck_state {
	XC_IDLE = 0, /* nothing asked (or the last answer given) */
	XC_WANTED,   /* asked for: waiting for the session to be up */
	XC_ASKED,    /* CHECK sent: waiting for CHECKED */
	XC_DONE,     /* answered (or given up): done() is called by the report task */
};

struct xcheck {
	struct xclient *c;
	const struct ph_check_conf *conf;
	void (*done)(void *arg, const struct ph_check_result *r);
	void *arg;
	enum xcheck_state state;
	uint32_t req;               /* the CHECK in flight */
	struct ph_check_result res; /* what is asked, then what was found */
	struct ph_timer deadline;
	struct ph_task report; /* done() runs from here: never inside a caller's call */
};

static void check_report(struct ph_task *t)
{
	struct xcheck *k = container_of(t, struct xcheck, report);

	k->state = XC_IDLE;
	k->done(k->arg, &k->res); /* may free the exposer, and k with it */
}

/* The check of c ends with result (0: none) about addr (NULL: unknown) and text. */
static void check_end(struct xclient *c, uint8_t result, const struct ph_addr *addr,
                      const char *text)
{
	struct xcheck *k = c->check;

	if (k->state != XC_WANTED && k->state != XC_ASKED)
		return;
	k->state = XC_DONE;
	k->res.result = result;
	if (addr != NULL)
		k->res.addr = *addr;
	snprintf(k->res.text, sizeof(k->res.text), "%s", text);
	ph_timer_stop(c->x->loop, &k->deadline);
	ph_task_queue(c->x->loop, &k->report);
}

/* The session is up: the CHECK wanted goes now. */
static void check_send(struct xclient *c)
{
	struct xcheck *k = c->check;
	struct ph_ctrl m = {.type = PH_CTRL_CHECK,
	                    .proto = k->res.udp ? PH_SVC_UDP : PH_SVC_TCP,
	                    .port = k->res.port,
	                    .addr = k->conf->addr};
	uint8_t out[PH_CTRL_MAX];

	if (k->state != XC_WANTED || c->s == NULL || c->s->state != PH_SESS_UP)
		return;
	m.req = ++k->req;
	if (m.addr.u.sa.sa_family != AF_UNSPEC)
		ph_addr_set_port(&m.addr, 0); /* the port asked about is the CHECK's own */
	k->state = XC_ASKED;
	if (ph_sess_ctrl(c->s, out, ph_ctrl_build(&m, out)) < 0)
		check_end(c, 0, NULL, "out of memory");
}

static void check_answer(struct xclient *c, const struct ph_ctrl *m)
{
	if (c->check == NULL || c->check->state != XC_ASKED || m->req != c->check->req)
		return; /* not a question of ours: ignored */
	check_end(c, m->result, &m->addr, m->text);
}

/*
 * The session could not be made, or it ended: a check in flight ends with why. Returns
 * true for a check's client (which never tries again by itself), false for expose's.
 */
static bool check_lost(struct xclient *c, const char *why)
{
	char text[sizeof(c->check->res.text)];

	if (c->check == NULL)
		return false;
	snprintf(text, sizeof(text), "%s%.400s",
	         c->check->state == XC_ASKED ? "the session ended before the relay answered: " : "",
	         why);
	check_end(c, 0, NULL, text);
	return true;
}

static void check_on_deadline(struct ph_timer *t)
{
	struct xcheck *k = container_of(t, struct xcheck, deadline);
	char text[64];

	snprintf(text, sizeof(text), "no answer from the relay in %d s", CHECK_MS / 1000);
	check_end(k->c, 0, NULL, text);
}

/* The relay's key is not the pinned one (relay_ok said so): the check's session is refused. */
static void check_fatal(void *arg)
{
	struct ph_exposer *x = arg;
	struct xclient *c = container_of(x->clients.next, struct xclient, node);

	check_end(c, 0, NULL,
	          "the relay's key is not the one pinned for it: refused (the log says more)");
}

static void check_free(struct ph_exposer *x, struct xclient *c)
{
	if (c->check == NULL)
		return;
	ph_timer_stop(x->loop, &c->check->deadline);
	ph_task_cancel(&c->check->report);
	free(c->check);
	c->check = NULL;
}

int ph_check_open(struct ph_loop *l, const struct ph_check_conf *conf,
                  void (*done)(void *arg, const struct ph_check_result *r), void *arg,
                  struct ph_exposer **out, char *why, size_t whylen)
{
	struct ph_exposer *x;
	struct xclient *c;
	struct xcheck *k;
	int err;

	*out = NULL;
	err = ph_expose_start(l, NULL, 0, check_fatal, NULL, &x, why, whylen);
	if (err < 0)
		return err;
	x->arg = x; /* check_fatal finds the one client through it */
	err = client_new(x, &conf->relay, why, whylen);
	if (err < 0)
		goto fail;
	c = container_of(x->clients.prev, struct xclient, node);
	k = calloc(1, sizeof(*k));
	if (k == NULL) {
		err = -ENOMEM;
		snprintf(why, whylen, "out of memory");
		goto fail;
	}
	k->c = c;
	k->conf = conf;
	k->done = done;
	k->arg = arg;
	ph_timer_init(&k->deadline, check_on_deadline);
	ph_task_init(&k->report, check_report);
	snprintf(k->res.relay, sizeof(k->res.relay), "%s", c->relay);
	c->check = k;
	*out = x;
	return 0;
fail:
	ph_expose_free(x);
	return err;
}

void ph_check_go(struct ph_exposer *x, bool udp, uint16_t port)
{
	struct xclient *c = container_of(x->clients.next, struct xclient, node);
	struct xcheck *k = c->check;

	PH_BUG_ON(k->state != XC_IDLE); /* one at a time */
	memset(&k->res.addr, 0, sizeof(k->res.addr));
	k->res.result = 0;
	k->res.text[0] = '\0';
	k->res.udp = udp;
	k->res.port = port;
	k->state = XC_WANTED;
	ph_timer_arm(x->loop, &k->deadline, CHECK_MS);
	ph_info("relay %s: asking it to check %s port %u", c->relay, udp ? "udp" : "tcp", port);
	if (c->s != NULL)
		check_send(c); /* up: now; in its handshake: client_up sends it */
	else if (!c->resolving)
		client_connect(c);
}
