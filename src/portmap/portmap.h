/*
 * `pinhole map`: asks the gateway to forward a port here, with PCP (RFC 6887), NAT-PMP
 * (RFC 6886) or UPnP IGD (libminiupnpc, on a helper thread), and keeps the mapping alive (renewed at half its lifetime,
 * recreated when the gateway restarts) until stopped, then deletes it.
 */
#ifndef PH_PORTMAP_PORTMAP_H
#define PH_PORTMAP_PORTMAP_H

#include <stdbool.h>
#include <stdint.h>

#include "core/addr.h"

enum ph_map_method { PH_MAP_AUTO = 0, PH_MAP_PCP, PH_MAP_NATPMP, PH_MAP_UPNP };
enum ph_map_verb { PH_MAP_ADD = 0, PH_MAP_DEL, PH_MAP_IP, PH_MAP_PROBE, PH_MAP_LIST };

#define PH_MAP_TCP 1
#define PH_MAP_UDP 2

#define PH_MAP_LIFETIME 7200 /* s: RFC 6886's recommendation */

struct ph_map_conf {
	uint8_t verb;      /* enum ph_map_verb */
	uint8_t method;    /* enum ph_map_method */
	uint8_t protos;    /* PH_MAP_TCP | PH_MAP_UDP */
	uint16_t internal; /* the port on this host */
	uint16_t external; /* the external port wanted; 0: any */
	uint32_t lifetime; /* s asked for */
	bool once;         /* map, print, exit (the mapping lives its lifetime) */
	bool keep;         /* do not delete the mapping on exit */
	bool has_gateway;  /* --gateway, else the default route's */
	struct ph_addr gateway;
	uint64_t timeout; /* ms to wait for the gateway before giving up (per try) */
};

void ph_map_conf_init(struct ph_map_conf *mc);

struct ph_loop;
struct ph_svc;

/*
 * `pinhole map ...` in the foreground, as a service for the supervisor (core/svc.h): it
 * starts asking once started, ends on its own (--once, del, ip, probe, list, a refusal)
 * with the exit status (0, 1) through ph_svc_changed, and on the first signal deletes its
 * mappings before it ends (a second ends it at once). mc is borrowed. Returns 0 and the
 * service in *out, or -ENOMEM.
 */
int ph_map_svc_new(const struct ph_map_conf *mc, struct ph_svc **out);

/*
 * `map --check`: fn(arg, proto, ext, extip) is called each time a mapping of the map
 * command s is made or made again on another port (proto PH_MAP_TCP or PH_MAP_UDP, the
 * external port, the router's external address: AF_UNSPEC when it did not say), from the
 * loop. Set before s starts.
 */
void ph_map_svc_on_mapped(struct ph_svc *s,
                          void (*fn)(void *arg, unsigned proto, uint16_t ext,
                                     const struct ph_addr *extip),
                          void *arg);

struct ph_map_keeper;

/*
 * A mapping kept for as long as a rule lives (forward/socks --map in a daemon), on loop l:
 * mapped like `map` does, renewed, mapped again after a router restart, and, when the
 * router refuses or none answers, tried again every minute; lines in the log, starting
 * "label: ". Returns 0, or -errno (no gateway, no sockets).
 */
int ph_map_keeper_start(struct ph_loop *l, const struct ph_map_conf *mc, const char *label,
                        struct ph_map_keeper **out);

/* Deletes the keeper's mappings (bounded time), calls done(arg), then frees itself.
 * NULL is fine (done is called at once). */
void ph_map_keeper_stop(struct ph_map_keeper *k, void (*done)(void *arg), void *arg);

/* Frees a keeper at once, its mappings left to their lease (the loop has ended). NULL is
 * fine. */
void ph_map_keeper_free(struct ph_map_keeper *k);

/*
 * The IPv4 default gateway: the next hop of the 0.0.0.0/0 route that is up and has the lowest
 * metric, read from the kernel's /proc/net/route (or path, written the same way), on the
 * NAT-PMP port. The only router whose UPnP devices pinhole uses, unless --gateway names
 * another. Returns 0 and *gw, -ENETUNREACH (no such route) or -errno (the file); *gw is
 * cleared on failure.
 */
int ph_map_route_gateway(const char *path, struct ph_addr *gw);
int ph_map_default_gateway(struct ph_addr *gw);

/* True when a is an address no one on the internet can reach (RFC 1918, CGNAT 100.64/10,
 * loopback, link-local, the documentation and benchmarking blocks). */
bool ph_map_addr_is_private(const struct ph_addr *a);

#endif /* PH_PORTMAP_PORTMAP_H */
