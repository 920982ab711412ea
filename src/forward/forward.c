/*
 * `pinhole forward` and the rules of every listening verb: a rule's TCP side is the
 * connection layer's (conn/conn.c: accept, admission, connect with fail-over, pump, close),
 * its UDP side is here (udp.c: sessions like a NAT). A forward rule's connections go to its
 * targets; a rule with ops (socks) has the verb's handshake in between.
 */
#include "forward/forward-int.h"

#include <stdlib.h>
#include <string.h>

#include "conn/conn.h"

struct ph_rule *ph_forward_rule_new(void)
{
	struct ph_rule *r = calloc(1, sizeof(*r));

	if (r == NULL)
		return NULL;
	r->connect_timeout = 5000;
	return r;
}

void ph_forward_rule_free(struct ph_rule *r)
{
	if (r == NULL)
		return;
	for (unsigned i = 0; i < r->nwr; i++)
		ph_wrule_free(r->wr[i]);
	free(r->wr);
	ph_forward__udp_free(r);
	ph_acl_free(&r->acl);
	ph_acl_free(&r->proxy_from);
	if (r->ops != NULL && r->ops->rule_free != NULL)
		r->ops->rule_free(r);
	free(r->spec);
	free(r);
}

int ph_forward_bind(struct ph_rule *r, struct ph_worker **w, unsigned n, struct ph_rule *from_tcp,
                    struct ph_rule *from_udp, char *why, size_t whylen)
{
	struct ph_addr listen = r->listen.addr;
	int err;

	r->from_tcp = from_tcp != NULL && (from_tcp->listen.proto & PH_PROTO_TCP) ? from_tcp : NULL;
	r->from_udp = from_udp != NULL && (from_udp->listen.proto & PH_PROTO_UDP) ? from_udp : NULL;
	if (r->listen.proto & PH_PROTO_TCP) {
		err = ph_conn_tcp_bind(r, w, n, r->from_tcp, why, whylen);
		if (err < 0)
			return err;
	}
	if (r->listen.proto & PH_PROTO_UDP) {
		struct ph_addr tcp_bound = r->listen.addr;

		r->listen.addr = listen; /* as written, not as TCP bound it */
		err = ph_forward__udp_bind(r, w, n, r->from_udp, why, whylen);
		if (r->listen.proto & PH_PROTO_TCP)
			r->listen.addr = tcp_bound;
		if (err < 0)
			return err; /* the TCP side is freed with the rule */
	}
	r->refs = r->nwr + r->nuwr;
	return 0;
}

void ph_forward_attach(struct ph_rule *r, unsigned i)
{
	struct ph_rule *from = r->from_tcp;

	if (i < r->nwr)
		ph_conn_tcp_attach(r->wr[i], from != NULL && i < from->nwr ? from->wr[i] : NULL);
	if (i < r->nuwr)
		ph_forward__udp_attach(r, i);
}

void ph_forward_detach(struct ph_rule *r, unsigned i)
{
	if (i < r->nwr)
		ph_conn_tcp_detach(r->wr[i]);
	if (i < r->nuwr)
		ph_forward__udp_detach(r, i);
}

void ph_forward_stats(const struct ph_rule *r, struct ph_stats *out)
{
	memset(out, 0, sizeof(*out));
	for (unsigned i = 0; i < r->nwr; i++)
		ph_stats_add(out, &r->wr[i]->stats);
	ph_forward__udp_stats(r, out);
	out->active = __atomic_load_n(&r->live, __ATOMIC_RELAXED);
	out->udp_active = __atomic_load_n(&r->sessions, __ATOMIC_RELAXED);
}

bool ph_forward_retired(const struct ph_rule *r)
{
	return __atomic_load_n(&r->refs, __ATOMIC_ACQUIRE) == 0;
}

int ph_forward_start(struct ph_rule *r, struct ph_worker **w, unsigned n, char *why, size_t whylen)
{
	int err = ph_forward_bind(r, w, n, NULL, NULL, why, whylen);

	if (err < 0)
		return err;
	for (unsigned i = 0; i < n; i++)
		ph_forward_attach(r, i);
	return 0;
}
