/*
 * What running as a service needs: dropping root after the ports are bound (--user),
 * a pid file (--pidfile), and telling systemd where we are (sd_notify's protocol on
 * $NOTIFY_SOCKET, spoken here without libsystemd).
 */
#ifndef PH_CORE_SERVICE_H
#define PH_CORE_SERVICE_H

#include <stddef.h>

/*
 * Becomes user (a name or a uid): its groups, its gid, its uid, in that order, and no way
 * back. Returns 0, or -errno with a reason in why.
 */
int ph_drop_privileges(const char *user, char *why, size_t whylen);

/* Writes our pid to path (replacing it atomically). Returns 0 or -errno. */
int ph_pidfile_write(const char *path);

/* Sends state ("READY=1", "RELOADING=1", "STOPPING=1", "STATUS=...") to systemd when it
 * started us with Type=notify; does nothing otherwise. */
void ph_notify(const char *state);

#endif /* PH_CORE_SERVICE_H */
