/* Private to src/forward/: the UDP side of a rule, started and freed by forward.c. */
#ifndef PH_FORWARD_FORWARD_INT_H
#define PH_FORWARD_FORWARD_INT_H

#include <stddef.h>

#include "forward/forward.h"

struct ph_worker;
struct ph_stats;

/* The UDP side of ph_forward_bind/attach/detach (forward.h). */
int ph_forward__udp_bind(struct ph_rule *r, struct ph_worker **w, unsigned n, struct ph_rule *from,
                         char *why, size_t whylen);
void ph_forward__udp_attach(struct ph_rule *r, unsigned i);
void ph_forward__udp_detach(struct ph_rule *r, unsigned i);

/* Frees r's UDP state: sessions are closed without events. The workers must have ended. */
void ph_forward__udp_free(struct ph_rule *r);

/* Adds r's UDP counters on every worker to *out. */
void ph_forward__udp_stats(const struct ph_rule *r, struct ph_stats *out);

#endif /* PH_FORWARD_FORWARD_INT_H */
