/*
 * Least privilege once set-up is done: no new privileges (PR_SET_NO_NEW_PRIVS) and a
 * seccomp filter (libseccomp) that lets through only the system calls the data path,
 * reload, the resolver, TLS and the UPnP helper use. Any other call fails with EPERM
 * rather than killing the process, so a call missing from the list costs an error that is
 * logged where it happens, never a relay.
 */
#ifndef PH_CORE_SANDBOX_H
#define PH_CORE_SANDBOX_H

#include <stdbool.h>
#include <stddef.h>

/* Was pinhole built with the seccomp filter (meson -Dseccomp)? */
bool ph_sandbox_available(void);

/*
 * Sets PR_SET_NO_NEW_PRIVS and loads the filter on every thread of the process (threads
 * made later inherit it); at log level debug (-v) the kernel also logs refused calls. Call it after the listeners are bound, files opened, keys read
 * and root dropped. Returns 0; -ENOSYS when built without libseccomp (no new privileges
 * is still set); or -errno with a reason in why.
 */
int ph_sandbox_enter(char *why, size_t whylen);

/*
 * Debug and test builds only (not buildtype=release): with PINHOLE_DEBUG_EXEC=1 in the
 * environment, tries execve("/bin/true") on the calling thread and logs what came of it,
 * so a test can see the filter refuse it. Does nothing otherwise. who names the thread.
 */
void ph_sandbox_debug_exec(const char *who);

#endif /* PH_CORE_SANDBOX_H */
