#include "core/service.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"

int ph_drop_privileges(const char *user, char *why, size_t whylen)
{
	unsigned long long uid;
	struct passwd *pw;
	int err;

	errno = 0;
	pw = getpwnam(user);
	if (pw == NULL && ph_parse_uint(user, 0, 0xfffffffe, &uid) == 0)
		pw = getpwuid((uid_t)uid);
	if (pw == NULL) {
		snprintf(why, whylen, "--user '%s': no such user", user);
		return errno != 0 ? -errno : -ENOENT;
	}
	if (pw->pw_uid == 0) {
		snprintf(why, whylen, "--user '%s': is root; name the user to become", user);
		return -EINVAL;
	}
	/* groups first: they need root, as does setgid */
	if (initgroups(pw->pw_name, pw->pw_gid) == -1 || setgid(pw->pw_gid) == -1 ||
	    setuid(pw->pw_uid) == -1) {
		err = -errno;
		snprintf(why, whylen, "--user '%s': %s", user,
		         err == -EPERM ? "only root can become another user" : strerror(-err));
		return err;
	}
	if (setuid(0) != -1) { /* must fail now, or the drop did not stick */
		snprintf(why, whylen, "--user '%s': root could be taken back", user);
		return -EPERM;
	}
	return 0;
}

int ph_pidfile_write(const char *path)
{
	char tmp[4096], buf[32];
	int fd, n, err;

	n = snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if (n < 0 || (size_t)n >= sizeof(tmp))
		return -ENAMETOOLONG;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd == -1)
		return -errno;
	n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
	if (write(fd, buf, (size_t)n) != n || close(fd) == -1) {
		err = errno != 0 ? -errno : -EIO;
		unlink(tmp);
		return err;
	}
	if (rename(tmp, path) == -1) {
		err = -errno;
		unlink(tmp);
		return err;
	}
	return 0;
}

void ph_notify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char msg[512];
	size_t len;
	int fd, n;

	if (path == NULL || (path[0] != '/' && path[0] != '@') ||
	    (len = strlen(path)) >= sizeof(sa.sun_path))
		return;
	memcpy(sa.sun_path, path, len);
	if (sa.sun_path[0] == '@') /* the abstract namespace */
		sa.sun_path[0] = '\0';
	if (strcmp(state, "RELOADING=1") == 0) { /* systemd 253 wants the time along */
		struct timespec ts;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		n = snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
		             (unsigned long long)ts.tv_sec * 1000000ULL +
		                     (unsigned long long)ts.tv_nsec / 1000);
	} else {
		n = snprintf(msg, sizeof(msg), "%s", state);
	}
	if (n < 0 || (size_t)n >= sizeof(msg))
		return;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return;
	/* best effort: systemd notices a missing READY=1 by itself */
	(void)sendto(fd, msg, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&sa,
	             (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
	close(fd);
}
