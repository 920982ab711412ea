/*
 * The control socket: `pinhole status` and `pinhole reload` talk to a running pinhole
 * through a unix stream socket (mode 0600) that the main thread serves. A client writes
 * one line ("status", "status json", "reload") and reads the reply until the server
 * closes. Also here: the status report itself, as text or JSON.
 */
#ifndef PH_CTL_CTL_H
#define PH_CTL_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct ph_addr;
struct ph_exposer;
struct ph_loop;
struct ph_relay;
struct ph_ctl;
struct ph_rule;
struct ph_status_src;
struct ph_stats;

/* Answers one command: a reply the server frees, or NULL when out of memory. */
typedef char *(*ph_ctl_fn)(void *arg, const char *cmd, size_t *len);

/* The default path: /run/pinhole.sock as root, else $XDG_RUNTIME_DIR/pinhole.sock or
 * /tmp/pinhole-UID/pinhole.sock (a directory of mode 0700 that ph_ctl_open makes). */
const char *ph_ctl_default_path(char *buf, size_t len);

/*
 * Serves path on l. A stale socket file of ours is replaced; a path where another pinhole
 * answers is left alone; a socket another user made, anything but a socket, or a directory
 * another user owns or may write (unless sticky) is refused (-EPERM, -EEXIST). Returns 0
 * and the server in *out, or -errno with a reason in why.
 */
int ph_ctl_open(struct ph_loop *l, const char *path, ph_ctl_fn fn, void *arg, struct ph_ctl **out,
                char *why, size_t whylen);

/*
 * Serves Prometheus metrics over HTTP on a (GET or HEAD /metrics; fn is asked for
 * "metrics"). Returns 0 and the server in *out, or -errno with a reason in why.
 */
int ph_metrics_open(struct ph_loop *l, const struct ph_addr *a, ph_ctl_fn fn, void *arg,
                    struct ph_ctl **out, char *why, size_t whylen);

/* The Prometheus text exposition of src (malloc'd, *len set), or NULL. */
char *ph_metrics_render(const struct ph_status_src *src, size_t *len);

/* Closes the server and its clients and removes the socket file. NULL is fine. */
void ph_ctl_close(struct ph_ctl *c);

/* Client side: sends cmd to the pinhole at path and copies the reply to out; a socket
 * of another user (not root) is refused unless we are root. Returns 0, or -errno with a
 * reason in why. */
int ph_ctl_request(const char *path, const char *cmd, FILE *out, char *why, size_t whylen);

/* What a status report is made of. */
struct ph_status_src {
	const char *version;
	uint64_t uptime_ms;
	unsigned workers;
	long pid;
	const char *file; /* `run FILE`, or NULL */
	struct ph_rule *const *rules, *const *retiring;
	unsigned nrules, nretiring;
	const struct ph_stats *totals; /* all workers since the start */
	struct ph_relay *relay;        /* `pinhole server` running here, or NULL (metrics) */
	struct ph_exposer *exposer;    /* `pinhole expose` rules running here, or NULL */
};

/*
 * Appends the relay's and the exposer's metric families (either may be NULL) to reply
 * (malloc'd, *len bytes, taken). Returns the longer reply (*len set), or NULL when out of
 * memory (reply freed).
 */
char *ph_metrics_tunnels(char *reply, size_t *len, struct ph_relay *r, struct ph_exposer *x);

/* The status report as text or JSON (malloc'd, *len set), or NULL when out of memory. */
char *ph_status_render(const struct ph_status_src *src, bool json, size_t *len);

#endif /* PH_CTL_CTL_H */
