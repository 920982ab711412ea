/*
 * Unit tests for the sandbox (core/sandbox.h): after ph_sandbox_enter() a process has no
 * new privileges, cannot exec, make a process, ptrace, change credentials or namespaces,
 * or push keys into a terminal (each fails with EPERM, the process goes on), while what
 * the data path and reload use still works: threads, sockets, files. Each case runs in a
 * child process, so the test runner itself stays unfiltered.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "core/sandbox.h"

/* LeakSanitizer needs a plain clone and ptrace: sanitizer builds allow them (sandbox.c) */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

/* Runs fn in a child process and returns its exit status (0: every check held). */
static int in_child(int (*fn)(void))
{
	int status;
	pid_t pid = fork();

	if (pid == 0)
		_exit(fn());
	assert_true(pid > 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	return WEXITSTATUS(status);
}

static int enter(void)
{
	char why[256];

	return ph_sandbox_enter(why, sizeof(why));
}

static void *thread_main(void *arg)
{
	return arg;
}

/* Forbidden calls fail with EPERM. Exit status: the number of the check that failed. */
static int forbidden(void)
{
	static char *const argv[] = {"/bin/false", NULL}; /* exit 1 when the exec works */
	pid_t pid;

	if (enter() != 0)
		return 1;
	if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1)
		return 2;
	if (execve(argv[0], argv, environ) != -1 || errno != EPERM)
		return 3;
	if (!SANITIZED) {
		pid = fork();
		if (pid == 0)
			_exit(0); /* the filter let a process through */
		if (pid != -1 || errno != EPERM)
			return 4;
		if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) != -1 || errno != EPERM)
			return 5;
	}
	if (setuid(getuid()) != -1 || errno != EPERM)
		return 6;
	if (unshare(CLONE_NEWNS) != -1 || errno != EPERM)
		return 7;
	if (ioctl(STDIN_FILENO, TIOCSTI, "x") != -1 || errno != EPERM)
		return 8;
	/* clone3 says ENOSYS: glibc then falls back to clone, whose flags the filter reads */
	if (syscall(SYS_clone3, NULL, 0) != -1 || errno != ENOSYS)
		return 9;
	return 0;
}

/* What the data path and reload use still works. */
static int allowed(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	pthread_t t;
	void *ret = NULL;
	char buf[64];
	int fd, p[2];

	if (enter() != 0)
		return 1;
	if (pthread_create(&t, NULL, thread_main, buf) != 0 || pthread_join(t, &ret) != 0 ||
	    ret != buf)
		return 2;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1 || listen(fd, 8) == -1)
		return 3;
	if (ioctl(fd, FIONBIO, &(int){1}) == -1)
		return 4;
	close(fd);
	fd = open("/etc/hosts", O_RDONLY | O_CLOEXEC); /* c-ares at reload */
	if (fd == -1 || read(fd, buf, sizeof(buf)) < 0)
		return 5;
	close(fd);
	if (pipe2(p, O_CLOEXEC | O_NONBLOCK) == -1 || write(p[1], "ab", 2) != 2 ||
	    read(p[0], buf, sizeof(buf)) != 2)
		return 6;
	return 0;
}

static void test_forbidden_calls_refused(void **state)
{
	(void)state;
	if (!ph_sandbox_available())
		skip();
	assert_int_equal(in_child(forbidden), 0);
}

static void test_data_path_calls_allowed(void **state)
{
	(void)state;
	if (!ph_sandbox_available())
		skip();
	assert_int_equal(in_child(allowed), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_forbidden_calls_refused),
		cmocka_unit_test(test_data_path_calls_allowed),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
