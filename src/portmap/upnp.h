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
	struct ph_addr gateway; /* the gateway (IPv4): only its devices and URLs are used */
	char label[72];         /* "RULE: " before the thread's log lines, or "" */
	/* out: the text fields (extip, service, url, text) are cleaned with ph_str_sanitize */
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

/*
 * Parses a URL a UPnP device gave (SSDP's LOCATION, the control URLs of its description) in
 * the only form pinhole follows: "http://", an IPv4 address in canonical dotted decimal
 * (no name: a name could resolve anywhere), an optional ":PORT" (1-65535), then "/" and a
 * path or the end, and nowhere a space or a control byte. Returns 0 and the address with
 * its port (80 when none) in *out, or -EPROTO with the reason, a static string, in *why.
 */
int ph_upnp_url_parse(const char *url, struct ph_addr *out, const char **why);

/* The meaning of a UPnP error code, for a one-line message. */
const char *ph_upnp_strerror(int rc);

#endif /* PH_PORTMAP_UPNP_H */
