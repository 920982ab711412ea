#include "conn/http.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

static bool is_tchar(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

int ph_http_parse(const char *buf, size_t len, struct ph_http_req *req, const char **why)
{
	const char *p = buf, *end = buf + len, *eol;
	size_t n;

	*why = NULL;
	/* the request line: METHOD SP TARGET SP HTTP/1.x CRLF */
	eol = memchr(buf, '\n', len);
	if (eol == NULL) {
		if (len >= PH_HTTP_HEAD_MAX) {
			*why = "request line too long";
			return -EPROTO;
		}
		for (size_t i = 0; i < len; i++) /* refuse early what cannot become valid */
			if (buf[i] == '\0') {
				*why = "a NUL in the request";
				return -EPROTO;
			}
		return -EAGAIN;
	}
	for (n = 0; p + n < eol && is_tchar(p[n]); n++)
		;
	if (n == 0 || p[n] != ' ') {
		*why = "a bad method";
		return -EPROTO;
	}
	req->method = p;
	req->method_len = n;
	p += n + 1;
	for (n = 0; p + n < eol && p[n] > ' ' && p[n] != 0x7f; n++)
		;
	if (n == 0 || p[n] != ' ') {
		*why = "a bad request target";
		return -EPROTO;
	}
	req->path = p;
	req->path_len = n;
	p += n + 1;
	if (eol - p < 8 || memcmp(p, "HTTP/1.", 7) != 0 || p[7] < '0' || p[7] > '9' ||
	    (eol - p == 9 ? p[8] != '\r' : eol - p != 8)) {
		*why = "not HTTP/1.x";
		return -EPROTO;
	}
	req->minor = p[7] - '0';
	p = eol + 1;
	/* header lines up to an empty one; each "name: value" */
	for (;;) {
		if (p >= end)
			return len >= PH_HTTP_HEAD_MAX ? (*why = "request head too long", -EPROTO)
			                               : -EAGAIN;
		eol = memchr(p, '\n', (size_t)(end - p));
		if (eol == NULL) {
			if (len >= PH_HTTP_HEAD_MAX) {
				*why = "request head too long";
				return -EPROTO;
			}
			return -EAGAIN;
		}
		if (eol == p || (eol == p + 1 && p[0] == '\r')) /* the blank line */
			break;
		for (n = 0; p + n < eol && is_tchar(p[n]); n++)
			;
		if (n == 0 || p[n] != ':') {
			*why = "a bad header line";
			return -EPROTO;
		}
		for (const char *q = p + n + 1; q < eol; q++)
			if ((*q < ' ' && *q != '\t' && !(*q == '\r' && q + 1 == eol)) ||
			    *q == 0x7f) {
				*why = "a control character in a header";
				return -EPROTO;
			}
		p = eol + 1;
	}
	n = (size_t)(eol + 1 - buf);
	if (n > PH_HTTP_HEAD_MAX) {
		*why = "request head too long";
		return -EPROTO;
	}
	return (int)n;
}
