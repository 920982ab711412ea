#include "portmap/upnp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <miniupnpc/igd_desc_parse.h>
#include <miniupnpc/miniupnpc.h>
#include <miniupnpc/miniwget.h>
#include <miniupnpc/upnpcommands.h>
#include <miniupnpc/upnperrors.h>

#include "core/log.h"
#include "core/util.h"

#define UPNP_DISCOVER_MS 2000 /* SSDP: how long to wait for answers */
#define UPNP_DESC        "pinhole"
#define UPNP_TRIES_718   8 /* other external ports tried when one is taken */

struct ph_upnp {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int evfd;
	bool has_job, done, quit, orphan;
	struct ph_upnp_job job; /* the thread's own copy */
	/* the IGD, used by the thread only */
	bool have_igd;
	struct UPNPUrls urls;
	struct IGDdatas data;
	char service[160];
	char lanaddr[64];
};

const char *ph_upnp_strerror(int rc)
{
	switch (rc) {
	case 402:
		return "the router found the arguments invalid";
	case 501:
		return "the router failed the action";
	case 606:
		return "the router requires authorization for this (mapping disabled?)";
	case 714:
		return "no such mapping on the router";
	case 715:
		return "the router does not accept wildcard source addresses";
	case 716:
		return "the router does not accept wildcard external ports";
	case 718:
		return "the external port is mapped to another host already";
	case 724:
		return "the router wants the same internal and external port";
	case 725:
		return "the router only supports permanent leases";
	case 726:
		return "the router wants a wildcard remote host";
	case 727:
		return "the router wants a wildcard external port";
	case 728:
		return "the router's mapping table is full";
	case 729:
		return "the router refused: conflict with another mapping";
	case UPNPCOMMAND_HTTP_ERROR:
		return "the router's UPnP service did not answer (HTTP error)";
	case UPNPCOMMAND_INVALID_RESPONSE:
		return "the router sent an answer that makes no sense";
	default:
		return rc < 0                     ? "a UPnP error"
		       : strupnperror(rc) != NULL ? strupnperror(rc)
		                                  : "the router refused";
	}
}

static const char *proto_str(uint8_t p)
{
	return p == 17 ? "UDP" : "TCP";
}

int ph_upnp_url_parse(const char *url, struct ph_addr *out, const char **why)
{
	static const char scheme[] = "http://";
	char host[INET_ADDRSTRLEN], back[INET_ADDRSTRLEN];
	const char *h, *p;
	unsigned long port = 80;
	struct in_addr in;
	size_t n;

	memset(out, 0, sizeof(*out));
	for (p = url; *p != '\0'; p++) {
		if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
			*why = "it has spaces or control characters";
			return -EPROTO;
		}
	}
	if (strncmp(url, scheme, sizeof(scheme) - 1) != 0) {
		*why = "it is not an http:// URL";
		return -EPROTO;
	}
	h = url + sizeof(scheme) - 1;
	n = strcspn(h, ":/");
	if (n == 0 || n >= sizeof(host)) {
		*why = "its host is not an IPv4 address";
		return -EPROTO;
	}
	memcpy(host, h, n);
	host[n] = '\0';
	/* canonical dotted decimal only: what getaddrinfo() would read in another way
	 * (010.1.1.1 is octal to inet_aton) or a name (resolved by anyone) is refused */
	if (inet_pton(AF_INET, host, &in) != 1 ||
	    inet_ntop(AF_INET, &in, back, sizeof(back)) == NULL || strcmp(host, back) != 0) {
		*why = "its host is not an IPv4 address";
		return -EPROTO;
	}
	p = h + n;
	if (*p == ':') {
		port = 0;
		for (n = 0, p++; *p >= '0' && *p <= '9' && n < 6; p++, n++)
			port = port * 10 + (unsigned long)(*p - '0');
		if (n == 0 || n > 5 || port == 0 || port > 65535) {
			*why = "its port is not 1-65535";
			return -EPROTO;
		}
	}
	if (*p != '/' && *p != '\0') {
		*why = "its host and port are not followed by a path";
		return -EPROTO;
	}
	out->u.in.sin_family = AF_INET;
	out->u.in.sin_addr = in;
	out->u.in.sin_port = htons((uint16_t)port);
	out->len = sizeof(out->u.in);
	*why = NULL;
	return 0;
}

/* Whether the gateway's device may be asked at url: its host is the gateway's address
 * (any port: the router picks its HTTP port). Else logs one line naming url and why. */
static bool url_at_gateway(const struct ph_upnp_job *j, const char *what, const char *url)
{
	char shown[160], gw[INET6_ADDRSTRLEN] = "?";
	struct ph_addr a;
	const char *why;

	if (ph_upnp_url_parse(url, &a, &why) == 0) {
		if (ph_addr_same_host(&a, &j->gateway))
			return true;
		why = "not the gateway";
	}
	inet_ntop(AF_INET, &j->gateway.u.in.sin_addr, gw, sizeof(gw));
	snprintf(shown, sizeof(shown), "%s", url);
	ph_str_sanitize(shown); /* the device wrote it */
	ph_warn("%smap: UPnP: a device ignored: its %s %s is %s (the gateway is %s)", j->label,
	        what, shown, why, gw);
	return false;
}

static void igd_forget(struct ph_upnp *u)
{
	if (u->have_igd)
		FreeUPNPUrls(&u->urls);
	u->have_igd = false;
}

/*
 * Reads the description of device d (at the gateway, checked by the caller) into u->urls,
 * u->data and u->lanaddr. Returns 1 when it is an IGD whose control URLs are at the gateway
 * too, connected; 2 the same but not connected; 0 not usable (nothing is left to free).
 */
static int igd_try(struct ph_upnp *u, const struct ph_upnp_job *j, const struct UPNPDev *d)
{
	int size = 0, status = 0;
	char *xml;

	xml = miniwget_getaddr(d->descURL, &size, u->lanaddr, sizeof(u->lanaddr), d->scope_id,
	                       &status);
	if (xml == NULL) {
		ph_debug("%smap: UPnP: no description from the device at the gateway (HTTP %d)",
		         j->label, status);
		return 0;
	}
	memset(&u->data, 0, sizeof(u->data));
	parserootdesc(xml, size, &u->data);
	free(xml);
	if (strncmp(u->data.CIF.servicetype,
	            "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:", 54) != 0 ||
	    u->data.first.servicetype[0] == '\0')
		return 0; /* a UPnP device, but no Internet Gateway Device */
	/* WANIPConnection (v2 before v1) before WANPPPConnection */
	if (strstr(u->data.first.servicetype, "WANPPPConnection") != NULL &&
	    strstr(u->data.second.servicetype, "WANIPConnection") != NULL) {
		struct IGDdatas_service ppp = u->data.first;

		u->data.first = u->data.second;
		u->data.second = ppp;
	}
	/* the description's URLBase or its absolute control URLs may name any host */
	memset(&u->urls, 0, sizeof(u->urls));
	GetUPNPUrls(&u->urls, &u->data, d->descURL, d->scope_id);
	if (u->urls.controlURL == NULL || u->urls.controlURL_CIF == NULL ||
	    !url_at_gateway(j, "control URL", u->urls.controlURL) ||
	    !url_at_gateway(j, "interface control URL", u->urls.controlURL_CIF)) {
		FreeUPNPUrls(&u->urls);
		return 0;
	}
	return UPNPIGD_IsConnected(&u->urls, &u->data) ? 1 : 2;
}

/* The IGD's external address into j->extip, cleaned for printing; "" when it has none. */
static void get_extip(struct ph_upnp *u, struct ph_upnp_job *j)
{
	if (UPNP_GetExternalIPAddress(u->urls.controlURL, u->service, j->extip) != 0)
		j->extip[0] = '\0';
	ph_str_sanitize(j->extip);
}

static void do_discover(struct ph_upnp *u, struct ph_upnp_job *j)
{
	struct UPNPDev *devs, *d;
	struct UPNPUrls spare_urls; /* owned while have_spare */
	struct IGDdatas spare_data;
	char spare_lan[sizeof(u->lanaddr)];
	bool have_spare = false;
	int err = 0, r = 0;
	unsigned at_gw = 0;

	igd_forget(u);
	devs = upnpDiscover(UPNP_DISCOVER_MS, NULL, NULL, 0, 0, 2, &err);
	if (devs == NULL) {
		j->rc = -ENOENT;
		snprintf(j->why, sizeof(j->why),
		         "no UPnP device answered (UPnP is off on the router?)");
		return;
	}
	/* anyone on the LAN may answer SSDP: only the gateway's own devices are asked, and
	 * the first connected IGD among them is used, else the first IGD */
	for (d = devs; d != NULL && r != 1; d = d->pNext) {
		if (!url_at_gateway(j, "description URL", d->descURL))
			continue;
		at_gw++;
		r = igd_try(u, j, d);
		if (r == 2 && !have_spare) { /* kept (and owned) in case none is connected */
			spare_urls = u->urls;
			spare_data = u->data;
			memcpy(spare_lan, u->lanaddr, sizeof(spare_lan));
			have_spare = true;
		} else if (r == 2) {
			FreeUPNPUrls(&u->urls);
		}
	}
	freeUPNPDevlist(devs);
	if (r == 1 && have_spare) {
		FreeUPNPUrls(&spare_urls);
	} else if (r != 1 && have_spare) {
		u->urls = spare_urls;
		u->data = spare_data;
		memcpy(u->lanaddr, spare_lan, sizeof(u->lanaddr));
		r = 2;
	}
	if (r != 1 && r != 2) {
		j->rc = -ENOENT;
		snprintf(j->why, sizeof(j->why), "%s",
		         at_gw == 0 ? "UPnP devices answered, but none at the gateway"
		                    : "a UPnP device at the gateway answered, but it is no usable "
		                      "Internet Gateway Device");
		return;
	}
	snprintf(u->service, sizeof(u->service), "%s", u->data.first.servicetype);
	u->have_igd = true;
	j->connected = r == 1;
	snprintf(j->lanaddr, sizeof(j->lanaddr), "%s", u->lanaddr);
	snprintf(j->service, sizeof(j->service), "%s", u->service);
	ph_str_sanitize(j->service); /* the device wrote it; u->service stays as sent */
	snprintf(j->url, sizeof(j->url), "%s", u->urls.rootdescURL ? u->urls.rootdescURL : "");
	ph_str_sanitize(j->url);
	get_extip(u, j);
	j->rc = 0;
}

static bool igd_v2(const struct ph_upnp *u)
{
	return strstr(u->service, "WANIPConnection:2") != NULL;
}

/* Reads the lease of ext back. Returns 0 or the error. */
static int read_lease(struct ph_upnp *u, const char *ext, const char *proto, char *client,
                      char *inport, uint32_t *lease)
{
	char desc[80] = "", enabled[8] = "", dur[16] = "";
	int r;

	client[0] = inport[0] = '\0';
	r = UPNP_GetSpecificPortMappingEntry(u->urls.controlURL, u->service, ext, proto, NULL,
	                                     client, inport, desc, enabled, dur);
	if (r == 0)
		*lease = (uint32_t)strtoul(dur, NULL, 10);
	return r;
}

static void do_add(struct ph_upnp *u, struct ph_upnp_job *j)
{
	char ext[8], in[8], life[16], got[8] = "", client[64], inport[8];
	const char *proto = proto_str(j->proto);
	uint32_t lifetime = j->lifetime;
	uint16_t want = j->external != 0 ? j->external : j->internal;
	int r = 0;

	snprintf(in, sizeof(in), "%u", j->internal);
	for (unsigned t = 0; t < UPNP_TRIES_718; t++) {
		snprintf(ext, sizeof(ext), "%u", want);
		snprintf(life, sizeof(life), "%u", lifetime);
		if (igd_v2(u) && !j->exact)
			r = UPNP_AddAnyPortMapping(u->urls.controlURL, u->service, ext, in,
			                           u->lanaddr, UPNP_DESC, proto, NULL, life, got);
		else
			r = UPNP_AddPortMapping(u->urls.controlURL, u->service, ext, in, u->lanaddr,
			                        UPNP_DESC, proto, NULL, life);
		if ((r == 725 || r == 402) && lifetime != 0) {
			lifetime = 0; /* only permanent leases: one, deleted on exit */
			t--;
			continue;
		}
		if (r == 718 && !j->exact) {
			want = (uint16_t)(want < 65535 ? want + 1
			                               : 1024); /* the next one is tried */
			continue;
		}
		break;
	}
	j->rc = r;
	if (r != 0) {
		snprintf(j->why, sizeof(j->why), "%s (UPnP error %d)", ph_upnp_strerror(r), r);
		return;
	}
	j->granted = got[0] != '\0' ? (uint16_t)strtoul(got, NULL, 10) : want;
	j->lease = lifetime;
	snprintf(ext, sizeof(ext), "%u", j->granted);
	if (read_lease(u, ext, proto, client, inport, &j->lease) != 0)
		j->lease = lifetime; /* not readable: as asked */
	get_extip(u, j);
}

static void do_del(struct ph_upnp *u, struct ph_upnp_job *j)
{
	char ext[8];
	int r;

	snprintf(ext, sizeof(ext), "%u", j->external);
	r = UPNP_DeletePortMapping(u->urls.controlURL, u->service, ext, proto_str(j->proto), NULL);
	j->rc = r;
	if (r != 0)
		snprintf(j->why, sizeof(j->why), "%s (UPnP error %d)", ph_upnp_strerror(r), r);
}

static void do_check(struct ph_upnp *u, struct ph_upnp_job *j)
{
	char ext[8], client[64], inport[8];
	int r;

	snprintf(ext, sizeof(ext), "%u", j->external);
	r = read_lease(u, ext, proto_str(j->proto), client, inport, &j->lease);
	j->present = r == 0 && strcmp(client, u->lanaddr) == 0 &&
	             strtoul(inport, NULL, 10) == j->internal;
	j->rc = r == 0 || r == 714 ? 0 : r;
	if (j->rc != 0)
		snprintf(j->why, sizeof(j->why), "%s (UPnP error %d)", ph_upnp_strerror(r), r);
}

/* LIST, and DEL_INTERNAL: every entry, by index, until the IGD says there is no more. */
static void do_walk(struct ph_upnp *u, struct ph_upnp_job *j)
{
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	unsigned deleted = 0;

	if (out == NULL) {
		j->rc = -ENOMEM;
		snprintf(j->why, sizeof(j->why), "out of memory");
		return;
	}
	for (unsigned i = 0; i < 1024; i++) {
		char idx[8], ext[8] = "", client[64] = "", in[8] = "", proto[8] = "", desc[80] = "",
			     enabled[8] = "", rhost[64] = "", dur[16] = "";
		int r;

		snprintf(idx, sizeof(idx), "%u", i);
		r = UPNP_GetGenericPortMappingEntry(u->urls.controlURL, u->service, idx, ext,
		                                    client, in, proto, desc, enabled, rhost, dur);
		if (r != 0)
			break; /* 713: past the last entry */
		if (j->op == PH_UPNP_LIST) {
			/* every field is the router's text, printed as it is: cleaned first */
			ph_str_sanitize(proto);
			ph_str_sanitize(ext);
			ph_str_sanitize(client);
			ph_str_sanitize(in);
			ph_str_sanitize(desc);
			ph_str_sanitize(dur);
			fprintf(out, "%s %s -> %s:%s '%s' lease %s s%s\n", proto, ext, client, in,
			        desc, dur, strcmp(dur, "0") == 0 ? " (permanent)" : "");
			continue;
		}
		if (strcmp(client, u->lanaddr) == 0 && strtoul(in, NULL, 10) == j->internal &&
		    (j->proto == 0 || strcasecmp(proto, proto_str(j->proto)) == 0) &&
		    UPNP_DeletePortMapping(u->urls.controlURL, u->service, ext, proto, NULL) == 0) {
			ph_str_sanitize(proto);
			ph_str_sanitize(ext);
			fprintf(out, "%s %s\n", proto, ext);
			deleted++;
			i--; /* the entries after it moved down by one */
		}
	}
	fclose(out);
	j->text = text;
	j->rc = j->op == PH_UPNP_DEL_INTERNAL && deleted == 0 ? 714 : 0;
	if (j->rc != 0)
		snprintf(j->why, sizeof(j->why), "no mapping of this host's port %u", j->internal);
}

static void run(struct ph_upnp *u, struct ph_upnp_job *j)
{
	j->rc = 0;
	j->why[0] = '\0';
	j->text = NULL;
	if (j->op == PH_UPNP_DISCOVER || !u->have_igd) {
		do_discover(u, j);
		if (j->op == PH_UPNP_DISCOVER || j->rc != 0)
			return;
	}
	switch (j->op) {
	case PH_UPNP_ADD:
		do_add(u, j);
		if (j->rc == UPNPCOMMAND_HTTP_ERROR) {
			/* the router may have restarted on another port: find it again */
			do_discover(u, j);
			if (j->rc == 0)
				do_add(u, j);
		}
		break;
	case PH_UPNP_DEL:
		do_del(u, j);
		break;
	case PH_UPNP_CHECK:
		do_check(u, j);
		break;
	default:
		do_walk(u, j);
		break;
	}
}

static void *upnp_main(void *arg)
{
	struct ph_upnp *u = arg;
	uint64_t one = 1;

	pthread_mutex_lock(&u->mu);
	for (;;) {
		while (!u->has_job && !u->quit)
			pthread_cond_wait(&u->cv, &u->mu);
		if (u->quit && !u->has_job)
			break;
		pthread_mutex_unlock(&u->mu);
		run(u, &u->job);
		pthread_mutex_lock(&u->mu);
		u->has_job = false;
		u->done = true;
		if (u->orphan)
			break;
		if (write(u->evfd, &one, sizeof(one)) == -1) {
			/* the loop reads the eventfd; a full counter cannot happen here */
		}
	}
	pthread_mutex_unlock(&u->mu);
	if (u->orphan) { /* nobody waits: the thread cleans up after itself */
		igd_forget(u);
		free(u->job.text);
		pthread_mutex_destroy(&u->mu);
		pthread_cond_destroy(&u->cv);
		free(u);
	}
	return NULL;
}

int ph_upnp_start(struct ph_upnp **out, int evfd)
{
	struct ph_upnp *u = calloc(1, sizeof(*u));
	sigset_t all, old;
	int err;

	*out = NULL;
	if (u == NULL)
		return -ENOMEM;
	u->evfd = evfd;
	pthread_mutex_init(&u->mu, NULL);
	pthread_cond_init(&u->cv, NULL);
	/* signals stay with the main thread's signalfd */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	err = pthread_create(&u->thread, NULL, upnp_main, u);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err != 0) {
		pthread_mutex_destroy(&u->mu);
		pthread_cond_destroy(&u->cv);
		free(u);
		return -err;
	}
	*out = u;
	return 0;
}

int ph_upnp_submit(struct ph_upnp *u, struct ph_upnp_job *j)
{
	int err = 0;

	pthread_mutex_lock(&u->mu);
	if (u->has_job || u->done) {
		err = -EBUSY;
	} else {
		u->job = *j;
		u->has_job = true;
		pthread_cond_signal(&u->cv);
	}
	pthread_mutex_unlock(&u->mu);
	return err;
}

struct ph_upnp_job *ph_upnp_take(struct ph_upnp *u)
{
	static __thread struct ph_upnp_job taken;
	struct ph_upnp_job *j = NULL;

	pthread_mutex_lock(&u->mu);
	if (u->done) {
		taken = u->job;
		u->job.text = NULL; /* the caller owns it now */
		u->done = false;
		j = &taken;
	}
	pthread_mutex_unlock(&u->mu);
	return j;
}

void ph_upnp_stop(struct ph_upnp *u)
{
	bool busy;

	if (u == NULL)
		return;
	pthread_mutex_lock(&u->mu);
	busy = u->has_job;
	u->quit = true;
	u->orphan = busy;
	pthread_cond_signal(&u->cv);
	pthread_mutex_unlock(&u->mu);
	if (busy) {
		pthread_detach(u->thread); /* a call past its deadline: it frees u itself */
		return;
	}
	pthread_join(u->thread, NULL);
	igd_forget(u);
	free(u->job.text);
	pthread_mutex_destroy(&u->mu);
	pthread_cond_destroy(&u->cv);
	free(u);
}
