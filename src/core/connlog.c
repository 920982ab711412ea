#include "core/connlog.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int log_fd = -1;
static enum ph_connlog_format log_format;

int ph_connlog_open(const char *path, enum ph_connlog_format format)
{
	/*
	 * Opened as root: a symbolic link at path, planted by whoever can write its directory,
	 * would make root append to the file it names (O_NOFOLLOW: ELOOP instead).
	 */
	int fd =
		open(path,
	             O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW,
	             0640);
	struct stat st;

	if (fd == -1)
		return -errno;
	/* a FIFO or a device could stall the workers that write to it */
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		close(fd);
		return -EINVAL;
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	if (log_fd != -1)
		close(log_fd);
	log_fd = fd;
	log_format = format;
	return 0;
}

bool ph_connlog_on(void)
{
	return log_fd != -1;
}

/* The host of a, IPv4 without ::ffff:, no port. */
static const char *host_of(const struct ph_addr *a, char *buf, size_t len)
{
	struct ph_addr u;

	snprintf(buf, len, "-");
	if (a == NULL)
		return buf;
	u = *a;
	ph_addr_unmap(&u);
	if (u.u.sa.sa_family == AF_INET)
		return inet_ntop(AF_INET, &u.u.in.sin_addr, buf, (socklen_t)len);
	if (u.u.sa.sa_family == AF_INET6)
		return inet_ntop(AF_INET6, &u.u.in6.sin6_addr, buf, (socklen_t)len);
	return buf;
}

static unsigned port_of(const struct ph_addr *a)
{
	if (a == NULL)
		return 0;
	return ntohs(a->u.sa.sa_family == AF_INET ? a->u.in.sin_port : a->u.in6.sin6_port);
}

void ph_connlog(const struct ph_addr *client, const struct ph_addr *listen,
                const struct ph_addr *target, uint64_t from_client, uint64_t to_client,
                const char *what)
{
	char line[512], when[64], c[INET6_ADDRSTRLEN], l[INET6_ADDRSTRLEN], t[INET6_ADDRSTRLEN];
	time_t now = time(NULL);
	struct tm tm;
	int n;

	if (log_fd == -1)
		return;
	localtime_r(&now, &tm);
	host_of(client, c, sizeof(c));
	host_of(listen, l, sizeof(l));
	host_of(target, t, sizeof(t));
	if (log_format == PH_CONNLOG_COMMON) {
		strftime(when, sizeof(when), "%d/%b/%Y:%H:%M:%S  %z", &tm);
		n = snprintf(
			line, sizeof(line),
			"%s - - [%s] \"GET /rinetd-services/%s/%u/%s/%u/%s HTTP/1.0\" 200 %llu "
			"- - - %llu\n",
			c, when, l, port_of(listen), target != NULL ? t : "-", port_of(target),
			what, (unsigned long long)to_client, (unsigned long long)from_client);
	} else {
		strftime(when, sizeof(when), "%d/%b/%Y:%H:%M:%S ", &tm);
		n = snprintf(line, sizeof(line), "%s\t%s\t%s\t%u\t%s\t%u\t%llu\t%llu\t%s\n", when,
		             c, l, port_of(listen), target != NULL ? t : "-", port_of(target),
		             (unsigned long long)from_client, (unsigned long long)to_client, what);
	}
	if (n > 0 && (size_t)n < sizeof(line) && write(log_fd, line, (size_t)n) != n) {
		/* a full disk loses log lines, never connections */
	}
}

void ph_connlog_close(void)
{
	if (log_fd != -1)
		close(log_fd);
	log_fd = -1;
}
