#include "core/sandbox.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "config.h"
#include "core/log.h"

#if PH_HAVE_SECCOMP
#include <seccomp.h>
#endif

/*
 * A sanitizer's runtime needs more than pinhole does: LeakSanitizer stops the world at exit
 * from a tracer made with clone() (no CLONE_THREAD) that ptrace()s every thread.
 */
#if defined(__SANITIZE_ADDRESS__)
#define SANDBOX_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANDBOX_SANITIZED 1
#endif
#endif
#ifndef SANDBOX_SANITIZED
#define SANDBOX_SANITIZED 0
#endif

bool ph_sandbox_available(void)
{
	return PH_HAVE_SECCOMP != 0;
}

#if PH_HAVE_SECCOMP
/*
 * What the process may still do once set up, found with strace -f over the e2e tests of
 * every long-running verb and read from the code (reload, c-ares, OpenSSL, miniupnpc).
 * Names the running architecture lacks (open on aarch64) are skipped.
 */
static const char *const allowed[] = {
	/* memory, threads, time (the vDSO falls back to the calls) */
	"brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "futex", "set_robust_list",
	"get_robust_list", "rseq", "exit", "exit_group", "sched_yield", "sched_getaffinity",
	"getrandom", "clock_gettime", "clock_getres", "gettimeofday", "time", "nanosleep",
	"clock_nanosleep", "restart_syscall", "membarrier",
	/* who we are: logs, status, sysconf, the rlimits checked at reload */
	"getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getgroups",
	"getresuid", "getresgid", "getrlimit", "prlimit64", "uname", "sysinfo", "umask", "prctl",
	/* signals: the main thread's signalfd; abort() and pthread_kill() on our own threads */
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "sigaltstack",
	"signalfd", "signalfd4", "tgkill", "tkill",
	/* the loop */
	"epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
	"poll", "ppoll", "select", "pselect6", "eventfd", "eventfd2", "timerfd_create",
	"timerfd_settime", "timerfd_gettime",
	/* descriptors and the splice data path */
	"read", "write", "readv", "writev", "pread64", "pwrite64", "close", "close_range", "dup",
	"dup2", "dup3", "fcntl", "pipe", "pipe2", "splice", "tee", "lseek",
	/* sockets: listeners bound at reload, connects, resolver, UDP batches, UPnP's HTTP */
	"socket", "socketpair", "bind", "listen", "accept", "accept4", "connect", "shutdown",
	"getsockname", "getpeername", "setsockopt", "getsockopt", "sendto", "recvfrom", "sendmsg",
	"recvmsg", "sendmmsg", "recvmmsg",
	/* files: reload re-reads configs, users and authorized keys; c-ares reads resolv.conf
	 * and hosts; the known relays file is written on first use; the pid file and the
	 * control socket are removed at exit */
	"open", "openat", "stat", "fstat", "lstat", "newfstatat", "statx", "access", "faccessat",
	"faccessat2", "readlink", "readlinkat", "getdents", "getdents64", "fsync", "fdatasync",
	"rename", "renameat", "renameat2", "unlink", "unlinkat", "mkdir", "mkdirat", "fchmod",
	"ftruncate"};

/* ioctl requests: FIONREAD (c-ares, UDP), FIONBIO (miniupnpc), the terminal query of
 * stdio, and the interface queries of miniupnpc and if_nametoindex */
static const unsigned long ioctls[] = {FIONREAD,       FIONBIO,      FIOCLEX,      FIONCLEX,
                                       TCGETS,         SIOCGIFCONF,  SIOCGIFFLAGS, SIOCGIFADDR,
                                       SIOCGIFNETMASK, SIOCGIFINDEX, SIOCGIFNAME,  SIOCGIFHWADDR};

/* Adds the rules to ctx. Returns 0 or -errno with the call that failed in why. */
static int sandbox_rules(scmp_filter_ctx ctx, char *why, size_t whylen)
{
	int nr, err;

	for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++) {
		nr = seccomp_syscall_resolve_name(allowed[i]);
		if (nr == __NR_SCMP_ERROR || nr < 0)
			continue; /* not a call of this architecture */
		err = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
		if (err < 0) {
			snprintf(why, whylen, "seccomp: %s: %s", allowed[i], strerror(-err));
			return err;
		}
	}
	for (size_t i = 0; i < sizeof(ioctls) / sizeof(ioctls[0]); i++) {
		err = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
		                       SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, ioctls[i]));
		if (err < 0) {
			snprintf(why, whylen, "seccomp: ioctl %#lx: %s", ioctls[i], strerror(-err));
			return err;
		}
	}
	/*
	 * Threads, not processes: glibc's pthread_create tries clone3 first (whose flags sit
	 * in memory a filter cannot read) and falls back to clone on ENOSYS, whose flags it can.
	 */
	err = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
	if (err == 0 && SANDBOX_SANITIZED) {
		err = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 0);
		if (err == 0)
			err = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ptrace), 0);
		if (err == 0)
			err = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(wait4), 0);
		if (err == 0)
			err = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(kill), 0);
	} else if (err == 0) {
		err = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
		                       SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD));
	}
	if (err < 0)
		snprintf(why, whylen, "seccomp: clone: %s", strerror(-err));
	return err;
}
#endif

int ph_sandbox_enter(char *why, size_t whylen)
{
#if PH_HAVE_SECCOMP
	scmp_filter_ctx ctx;
	int err;
#endif

	/* no exec'd program can gain privileges (setuid bits, file capabilities) */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1) {
		snprintf(why, whylen, "PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
		return -errno;
	}
#if PH_HAVE_SECCOMP
	ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
	if (ctx == NULL) {
		snprintf(why, whylen, "seccomp_init failed");
		return -ENOMEM;
	}
	/* every thread already running gets the filter too, or the load fails */
	err = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
	if (err < 0) {
		snprintf(why, whylen, "seccomp: thread sync: %s", strerror(-err));
		goto out;
	}
	/*
	 * With -v, the kernel logs each refused call too (dmesg, audit type=1326 syscall=N), so
	 * a call missing from the list can be found; clone3 (435) then shows once per thread
	 * made. Best effort: older kernels lack it.
	 */
	if (ph_log_level >= PH_LOG_DEBUG)
		(void)seccomp_attr_set(ctx, SCMP_FLTATR_CTL_LOG, 1);
	err = sandbox_rules(ctx, why, whylen);
	if (err < 0)
		goto out;
	err = seccomp_load(ctx);
	if (err < 0)
		snprintf(why, whylen, "seccomp: cannot load the filter: %s", strerror(-err));
out:
	seccomp_release(ctx);
	return err;
#else
	snprintf(why, whylen, "built without libseccomp (meson -Dseccomp=disabled)");
	return -ENOSYS;
#endif
}

void ph_sandbox_debug_exec(const char *who)
{
#if PH_DEBUG_HOOKS
	static char *const argv[] = {"/bin/true", NULL};
	const char *on = getenv("PINHOLE_DEBUG_EXEC");
	int err;

	if (on == NULL || strcmp(on, "1") != 0)
		return;
	/* when it works, this process becomes /bin/true and the test sees pinhole gone */
	execve(argv[0], argv, environ);
	err = errno;
	ph_warn("debug: %s: execve /bin/true refused: %s", who, strerror(err));
#else
	(void)who;
#endif
}
