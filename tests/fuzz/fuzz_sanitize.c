/*
 * Fuzzes ph_str_sanitize (core/util.h), which cleans what a peer wrote before it is printed
 * or logged: the input is the text (cut at its first NUL). The result is never longer, its
 * length is the one returned, it has no byte below 0x20, no 0x7f and no ESC, it is valid
 * UTF-8 without C1 controls or bidirectional overrides, cleaning it again changes nothing,
 * and text of printable ASCII alone comes back as it was.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_sanitize: %s failed (size %zu)\n", #cond, size);     \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* The code point of the UTF-8 sequence at p of length *n, or -1 when it is not valid. */
static long utf8_at(const unsigned char *p, size_t *n)
{
	long cp;

	if (p[0] < 0x80) {
		*n = 1;
		return p[0];
	}
	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		*n = 2, cp = p[0] & 0x1f;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		*n = 3, cp = p[0] & 0x0f;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		*n = 4, cp = p[0] & 0x07;
	else
		return -1;
	for (size_t i = 1; i < *n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return -1;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	if ((*n == 2 && cp < 0x80) || (*n == 3 && cp < 0x800) || (*n == 4 && cp < 0x10000) ||
	    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return -1;
	return cp;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s, *again;
	size_t len, in_len, n;
	bool ascii = true;

	if (size > 4096)
		return 0;
	s = malloc(size + 1); /* exactly the text and its NUL: ASan sees overreads */
	if (s == NULL)
		abort();
	memcpy(s, data, size);
	s[size] = '\0';
	in_len = strlen(s);
	for (size_t i = 0; i < in_len; i++)
		ascii = ascii && s[i] >= 0x20 && s[i] < 0x7f;
	again = strdup(s);
	if (again == NULL)
		abort();
	len = ph_str_sanitize(s);
	CHECK(len == strlen(s) && len <= in_len);
	CHECK(!ascii || strcmp(s, again) == 0);
	for (size_t i = 0; i < len; i += n) {
		long cp = utf8_at((const unsigned char *)s + i, &n);

		CHECK(cp >= 0x20 && cp != 0x7f && !(cp >= 0x80 && cp <= 0x9f));
		CHECK(!(cp >= 0x202a && cp <= 0x202e) && !(cp >= 0x2066 && cp <= 0x2069));
	}
	memcpy(again, s, len + 1);
	CHECK(ph_str_sanitize(again) == len && strcmp(again, s) == 0);
	free(again);
	free(s);
	return 0;
}
