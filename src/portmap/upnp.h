/*
 * UPnP IGD through libminiupnpc. Its calls block (SSDP, HTTP, SOAP), so they run on a
 * helper thread, one job at a time; the caller's loop learns that a job ended from an
 * eventfd and puts its own deadline on it (a job still running past it is abandoned: its
 * thread finishes it and nobody reads the result).
 */
#ifndef PH_PORTMAP_UPNP_H
#define PH_PORTMAP_UPNP_H

#include <stdbool.h>
#include <stdint.h>

#include "core/addr.h"

enum ph_upnp_op {
	PH_UPNP_DISCOVER = 0, /* find the IGD (SSDP), its service and our LAN address */
	PH_UPNP_ADD,          /* add (or refresh) a mapping, read the lease back */
	PH_UPNP_DEL,          /* delete the mapping of an external port */
	PH_UPNP_DEL_INTERNAL, /* delete every mapping of ours to an internal port */
	PH_UPNP_LIST,         /* every mapping the IGD has, as text lines */
	PH_UPNP_CHECK,        /* is the mapping of an external port still there, to us */
};

struct ph_upnp_job {
	uint8_t op;
	/* in */
	uint8_t proto;          /* 6 TCP, 17 UDP */
	uint16_t internal;      /* our port */
	uint16_t external;      /* the external port asked for; 0: any (ADD), or the one (DEL) */
	bool exact;             /* ADD: that external port or nothing */
	uint32_t lifetime;      /* s; 0: permanent */
	struct ph_addr gateway; /* family 0: any IGD; else the one at this address */
	/* out */
	int rc;            /* 0; a UPnP error code (718, 725...); or < 0 (no IGD...) */
	char why[256];     /* what went wrong, in words */
	uint16_t granted;  /* ADD: the external port */
	uint32_t lease;    /* ADD, CHECK: the lease read back, s; 0: permanent */
	bool present;      /* CHECK */
	char extip[64];    /* DISCOVER, ADD: the IGD's external address */
	char lanaddr[64];  /* DISCOVER: this host's address towards the IGD */
	char service[160]; /* DISCOVER: the service used (WANIPConnection:2 ...) */
	char url[256];     /* DISCOVER: the IGD's description */
	bool connected;    /* DISCOVER: the IGD says it is connected */
	char *text;        /* LIST: lines (malloc'd; the caller frees) */
};

struct ph_upnp;

/* Starts the helper thread; evfd is written when a job ends. Returns 0 or -errno. */
int ph_upnp_start(struct ph_upnp **out, int evfd);

/* Hands j (which must live until taken back) to the thread. -EBUSY when one runs. */
int ph_upnp_submit(struct ph_upnp *u, struct ph_upnp_job *j);

/* The job that ended, or NULL. */
struct ph_upnp_job *ph_upnp_take(struct ph_upnp *u);

/* Stops the thread: joined when idle, else left to finish alone (its memory stays). */
void ph_upnp_stop(struct ph_upnp *u);

/* The meaning of a UPnP error code, for a one-line message. */
const char *ph_upnp_strerror(int rc);

#endif /* PH_PORTMAP_UPNP_H */
