/*
 * Source ports for the upstream sockets of UDP sessions, chosen the way a careful NAT
 * does (RFC 6056): a keyed random permutation of the ephemeral port range, walked in
 * order and shared by all workers. A port comes back only after every other one of the
 * range was handed out, so a late reply to an ended session's port does not reach the
 * next session to get that port (the kernel's own choice may reuse a port at once), and
 * nobody without the key can guess the next port (spoofed answers, e.g. to DNS queries
 * forwarded through pinhole, need it). Ports in ip_local_reserved_ports are skipped.
 */
#ifndef PH_CORE_PORTSEQ_H
#define PH_CORE_PORTSEQ_H

#include <stdint.h>

/* Reads the range and reserved ports from /proc and draws the key. Main thread, once
 * before the workers start; later calls do nothing. */
void ph_portseq_init(void);

/* The next port of the walk (any thread). 0 when ph_portseq_init was not called. */
uint16_t ph_portseq_next(void);

#endif /* PH_CORE_PORTSEQ_H */
