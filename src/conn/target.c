#include "conn/target.h"

#include <errno.h>
#include <string.h>

#include "conn/rule.h"
#include "core/net.h"
#include "core/worker.h"

#define TSEL_BACKOFF_MIN_MS 1000 /* first back-off of a failed target, doubled per failure */
#define TSEL_BACKOFF_MAX_MS 10000
#define TSEL_LOG_PER_SEC    10

void ph_tsel_init(struct ph_tsel *s, struct ph_rule *r, struct ph_worker *w, unsigned start)
{
	memset(s, 0, sizeof(*s));
	s->rule = r;
	s->w = w;
	s->rr = r->ntargets != 0 ? start % r->ntargets : 0;
}

static void tsel_wait_fired(struct ph_name_wait *nw, int err)
{
	struct ph_tsel_wait *wt = container_of(nw, struct ph_tsel_wait, nw);

	wt->fn(wt, err);
}

void ph_tsel_wait_init(struct ph_tsel_wait *wt, ph_tsel_wait_fn fn)
{
	ph_name_wait_init(&wt->nw, tsel_wait_fired);
	wt->fn = fn;
}

int ph_tsel_pick(struct ph_tsel *s, uint32_t tried)
{
	struct ph_rule *r = s->rule;
	unsigned start = s->rr, best = 0;
	uint64_t best_until = UINT64_MAX;
	bool found = false;
	int pick = -1;

	for (unsigned k = 0; k < r->ntargets; k++) {
		unsigned t = (start + k) % r->ntargets;
		uint64_t until;

		if (tried & (1u << t))
			continue;
		until = __atomic_load_n(&r->targets[t].backoff_until, __ATOMIC_RELAXED);
		if (until <= s->w->loop.now) {
			pick = (int)t;
			break;
		}
		if (until < best_until) { /* all in back-off: the one that recovers first */
			best_until = until;
			best = t;
			found = true;
		}
	}
	if (pick < 0 && found)
		pick = (int)best;
	if (pick >= 0)
		s->rr = ((unsigned)pick + 1) % r->ntargets;
	return pick;
}

int ph_tsel_addrs(struct ph_tsel *s, unsigned t, const struct ph_addr **addrs,
                  struct ph_tsel_wait *wt)
{
	struct ph_target *tg = &s->rule->targets[t];

	*addrs = NULL;
	if (!tg->hp.is_name) {
		*addrs = &tg->hp.addr;
		return 1;
	}
	return ph_names_get(s->w, tg->hp.host, true, addrs, &wt->nw);
}

int ph_tsel_cached(struct ph_tsel *s, unsigned t, const struct ph_addr **addrs)
{
	*addrs = NULL;
	if (!s->rule->targets[t].hp.is_name) {
		*addrs = &s->rule->targets[t].hp.addr;
		return 1;
	}
	return ph_names_peek(s->w, s->rule->targets[t].hp.host, addrs);
}

/* t->dst becomes a, with the target's port (a name's addresses are cached without one). */
static void tsel_set_dst(const struct ph_tsel *s, struct ph_tsel_try *t, const struct ph_addr *a)
{
	t->dst = *a;
	ph_addr_set_port(&t->dst, s->rule->targets[t->tgt].hp.port);
}

int ph_tsel_next(struct ph_tsel *s, struct ph_tsel_try *t, struct ph_tsel_wait *wt)
{
	for (;;) {
		const struct ph_addr *addrs;
		int n, tg;

		if (t->tgt >= 0) {
			n = ph_tsel_cached(s, (unsigned)t->tgt, &addrs);
			if ((int)t->ai + 1 < n) {
				t->ai++;
				tsel_set_dst(s, t, &addrs[t->ai]);
				return 1;
			}
			if (t->lasterr != 0)
				ph_tsel_failed(s, (unsigned)t->tgt,
				               t->ai < PH_RESOLVE_MAX ? &t->dst : NULL, t->lasterr);
		}
		tg = ph_tsel_pick(s, t->tried);
		if (tg < 0)
			return t->lasterr != 0 ? t->lasterr : -EHOSTUNREACH;
		t->tgt = (int8_t)tg;
		t->ai = 0;
		t->tried |= 1u << tg;
		n = ph_tsel_addrs(s, (unsigned)tg, &addrs, wt);
		if (n == 0)
			return 0;
		if (n < 0) {
			t->lasterr = n;
			t->ai = PH_RESOLVE_MAX; /* no address of this target to go on with */
			continue;
		}
		tsel_set_dst(s, t, &addrs[0]);
		return 1;
	}
}

int ph_tsel_dns_done(struct ph_tsel *s, struct ph_tsel_try *t, int err, struct ph_tsel_wait *wt)
{
	const struct ph_addr *addrs;

	if (err == 0 && ph_tsel_cached(s, (unsigned)t->tgt, &addrs) > 0) {
		t->ai = 0;
		tsel_set_dst(s, t, &addrs[0]);
		return 1;
	}
	t->ai = PH_RESOLVE_MAX;
	t->lasterr = err != 0 ? err : -EIO;
	return ph_tsel_next(s, t, wt);
}

void ph_tsel_ok(struct ph_tsel *s, unsigned t)
{
	struct ph_target *tg = &s->rule->targets[t];
	char hp[PH_HOST_MAX + 8];

	/* the exchange lets one worker only see the state change, and log it */
	if (__atomic_load_n(&tg->fails, __ATOMIC_RELAXED) != 0 &&
	    __atomic_exchange_n(&tg->fails, 0, __ATOMIC_RELAXED) != 0) {
		__atomic_store_n(&tg->backoff_until, 0, __ATOMIC_RELAXED);
		ph_info("target %s is up again", ph_hostport_fmt(tg->hp.host[0] ? tg->hp.host : "*",
		                                                 tg->hp.port, hp, sizeof(hp)));
	}
}

void ph_tsel_failed(struct ph_tsel *s, unsigned t, const struct ph_addr *dst, int err)
{
	struct ph_target *tg = &s->rule->targets[t];
	uint32_t fails = __atomic_add_fetch(&tg->fails, 1, __ATOMIC_RELAXED);
	uint64_t backoff = TSEL_BACKOFF_MIN_MS, now = s->w->loop.now;
	char a[PH_ADDR_STRLEN], hp[PH_HOST_MAX + 8];

	if (ph_err_is_local(err)) { /* out of fds or memory here: the target is not to blame */
		__atomic_fetch_sub(&tg->fails, 1, __ATOMIC_RELAXED);
		return;
	}
	for (uint32_t i = 1; i < fails && backoff < TSEL_BACKOFF_MAX_MS; i++)
		backoff *= 2;
	if (backoff > TSEL_BACKOFF_MAX_MS)
		backoff = TSEL_BACKOFF_MAX_MS;
	__atomic_store_n(&tg->backoff_until, now + backoff, __ATOMIC_RELAXED);
	/*
	 * Its going down is a state change, logged; failing again while down is a failure of
	 * the connection that tried it, which its close line counts (a line each at -v).
	 */
	if (fails == 1 ? PH_LOG_WARN <= ph_log_level &&
	                         ph_ratelimit_ok(&s->rl_failed, now, TSEL_LOG_PER_SEC)
	               : PH_LOG_DEBUG <= ph_log_level)
		ph_log_(fails == 1 ? PH_LOG_WARN : PH_LOG_DEBUG,
		        "target %s (%s) failed: %s; skipped for %llu ms",
		        ph_hostport_fmt(tg->hp.host[0] ? tg->hp.host : "*", tg->hp.port, hp,
		                        sizeof(hp)),
		        dst != NULL ? ph_addr_fmt(dst, a, sizeof(a)) : "-", ph_strerror(err),
		        (unsigned long long)backoff);
}
