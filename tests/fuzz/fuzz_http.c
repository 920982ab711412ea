/*
 * Fuzzes the HTTP request-head parser of the metrics endpoint (conn/http.h), which anyone
 * who can reach --metrics may feed: the result is a length within the input, -EAGAIN or
 * -EPROTO with a reason; a length covers a head ending in a blank line, and the method and
 * path it points at lie inside it.
 */
#include "conn/http.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_http: %s failed (size %zu, r %d)\n", #cond, size,    \
			        r);                                                                \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ph_http_req req;
	const char *why;
	char *buf;
	int r;

	if (size > 2 * PH_HTTP_HEAD_MAX)
		return 0;
	buf = malloc(size ? size : 1); /* exactly size bytes: ASan sees any read past it */
	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);
	r = ph_http_parse(buf, size, &req, &why);
	CHECK(r == -EAGAIN || r == -EPROTO || (r > 0 && (size_t)r <= size));
	CHECK(r != -EPROTO || why != NULL);
	if (r > 0) {
		CHECK(r <= PH_HTTP_HEAD_MAX);
		CHECK(buf[r - 1] == '\n');
		CHECK(req.method >= buf && req.method + req.method_len <= buf + r);
		CHECK(req.path > req.method && req.path + req.path_len <= buf + r);
		CHECK(req.minor >= 0 && req.minor <= 9);
		CHECK(ph_http_parse(buf, (size_t)r, &req, &why) == r);
	}
	free(buf);
	return 0;
}
