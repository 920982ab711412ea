/*
 * The relay's prober (`pinhole check`, docs/PROTOCOL.md "Checking a port"): a client asks
 * whether its own public address - the one the relay sees its session come from - is
 * reachable on a port, and the relay tries it: a TCP connect, or UDP datagrams, from the
 * relay's loop, never blocking it. Only that address is ever probed, one check at a time
 * per session, at most PH_PROBE_BURST at once and one every PH_PROBE_EVERY_MS after that
 * per key, and PH_PROBE_MAX in the whole relay: the relay is never a scanner.
 */
#ifndef PH_TUNNEL_PROBE_H
#define PH_TUNNEL_PROBE_H

#include <stdint.h>

#include "core/addr.h"
#include "tunnel/keys.h"
#include "tunnel/msg.h"

struct ph_loop;
struct ph_prober;

#define PH_PROBE_MS       3000 /* a probe's deadline: no answer by then is "filtered" */
#define PH_PROBE_UDP_SEND 3    /* datagrams a UDP probe sends, spread over its deadline */
#define PH_PROBE_MAX      64   /* probes in flight in the whole relay */
#define PH_PROBE_BURST    10   /* checks a key may make at once, then: */
#define PH_PROBE_EVERY_MS 6000 /* one more each 6 s (10 a minute) */

/* What a prober answered since it started, by result (PH_CHECK_*; [0] is not used). */
struct ph_prober_stats {
	uint64_t results[PH_CHECK_OPEN_FILTERED + 1];
};

/* How a prober hands an answer (a CHECKED, borrowed for the call) to the one who asked. */
typedef void (*ph_prober_fn)(void *owner, const struct ph_ctrl *answer);

/*
 * Makes a prober on loop l that answers through fn; timeout_ms is a probe's deadline (0:
 * PH_PROBE_MS). Returns 0 and the prober in *out, or -ENOMEM.
 */
int ph_prober_new(struct ph_loop *l, ph_prober_fn fn, uint64_t timeout_ms, struct ph_prober **out);

/* Ends every probe in flight (no answer is given) and frees pr. NULL is fine. */
void ph_prober_free(struct ph_prober *pr);

/*
 * A CHECK c from owner (a session) whose client holds key and whose address the relay sees
 * as peer (IPv4-mapped is fine): a probe of peer's address on c's port starts, and its
 * answer comes later through fn; or a refusal (another address, a check in flight, the
 * key's rate, the relay busy) is answered through fn at once. label names the caller in
 * the log ("client 203.0.113.7:40000 (alice)"). Borrows everything for the call.
 */
void ph_prober_check(struct ph_prober *pr, void *owner, const uint8_t key[PH_KEY_LEN],
                     const struct ph_addr *peer, const struct ph_ctrl *c, const char *label);

/* owner goes away: its probe in flight, if any, ends without an answer. */
void ph_prober_forget(struct ph_prober *pr, void *owner);

/* Fills *out with pr's counts. */
void ph_prober_stats(const struct ph_prober *pr, struct ph_prober_stats *out);

#endif /* PH_TUNNEL_PROBE_H */
