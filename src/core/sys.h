/*
 * The data path's system calls, called through a table so unit tests can inject EINTR,
 * EAGAIN, short transfers and errors [dropbear]. Production code never changes the table.
 */
#ifndef PH_CORE_SYS_H
#define PH_CORE_SYS_H

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/types.h>

struct ph_sys_ops {
	ssize_t (*splice)(int fd_in, loff_t *off_in, int fd_out, loff_t *off_out, size_t len,
	                  unsigned int flags);
	ssize_t (*read)(int fd, void *buf, size_t len);
	ssize_t (*write)(int fd, const void *buf, size_t len);
	int (*accept4)(int fd, struct sockaddr *sa, socklen_t *len, int flags);
	int (*pipe2)(int fds[2], int flags);
};

extern struct ph_sys_ops ph_sys;

/* Restores the real system calls (tests call it after injecting). */
void ph_sys_reset(void);

#endif /* PH_CORE_SYS_H */
