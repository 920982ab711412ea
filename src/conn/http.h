/*
 * Just enough HTTP/1.x for GET /metrics: the request head, parsed the picohttpparser way.
 */
#ifndef PH_CONN_HTTP_H
#define PH_CONN_HTTP_H

#include <stddef.h>

#define PH_HTTP_HEAD_MAX 8192 /* a request head longer than this is refused */

struct ph_http_req {
	const char *method; /* points into the caller's buffer; not NUL-terminated */
	size_t method_len;
	const char *path;
	size_t path_len;
	int minor; /* HTTP/1.minor */
};

/*
 * Parses the request head at buf[0..len): returns its length (up to and including the
 * blank line) with *req pointing into buf, -EAGAIN when more is needed, or -EPROTO with a
 * static reason in *why. Allocates nothing; header lines are checked for shape and
 * otherwise skipped.
 */
int ph_http_parse(const char *buf, size_t len, struct ph_http_req *req, const char **why);

#endif /* PH_CONN_HTTP_H */
