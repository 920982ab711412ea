/*
 * Fuzzes ph_auth_parse_line and ph_pubkey_parse (tunnel/keys.h), which read the relay's
 * authorized-keys file and the public key lines people paste into it. The input is one
 * line: ph_auth_parse_line gets it NUL-terminated (cut at its first NUL), ph_pubkey_parse
 * gets exactly its bytes. The result is 1, 0 (blank or comment, nothing set) or -EINVAL
 * with a reason; a parsed key has at most PH_AUTH_NAMES names, each non-empty, terminated
 * and of name characters, at most PH_AUTH_RANGES ranges with 1 <= lo <= hi, a terminated
 * comment; the line rebuilt from what was parsed parses back to the same; the public key
 * formats to a line that parses back to the same 32 bytes; ph_auth_allows agrees with the
 * limits; and parsing is deterministic.
 */
#include "tunnel/keys.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_authkeys: %s failed (size %zu, r %d)\n", #cond,      \
			        size, r);                                                          \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* True when s is a terminated string of 1..max characters, each in a name's set. */
static bool name_ok(const char *s, size_t max)
{
	size_t n = strnlen(s, max + 1);

	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_' && s[i] != '.')
			return false;
	return true;
}

/* True when a and b are the same key with the same limits and comment. */
static bool same(const struct ph_auth_key *a, const struct ph_auth_key *b)
{
	if (memcmp(a->pub, b->pub, PH_KEY_LEN) != 0 || strcmp(a->comment, b->comment) != 0 ||
	    a->nnames != b->nnames || a->nranges != b->nranges ||
	    a->max_services != b->max_services)
		return false;
	for (unsigned i = 0; i < a->nnames; i++)
		if (strcmp(a->names[i], b->names[i]) != 0)
			return false;
	for (unsigned i = 0; i < a->nranges; i++)
		if (a->lo[i] != b->lo[i] || a->hi[i] != b->hi[i])
			return false;
	return true;
}

/* The authorized-keys line that says what k says. */
static void rebuild(const struct ph_auth_key *k, char *line, size_t len)
{
	char pub[PH_KEY_LINE_MAX];
	size_t o = 0;

	line[0] = '\0';
	for (unsigned i = 0; i < k->nnames; i++)
		o += (size_t)snprintf(line + o, len - o, "%s%s", i ? "|" : "names=", k->names[i]);
	for (unsigned i = 0; i < k->nranges; i++) {
		o += (size_t)snprintf(line + o, len - o, "%s%u",
		                      i   ? "|"
		                      : o ? ",ports="
		                          : "ports=",
		                      k->lo[i]);
		if (k->hi[i] != k->lo[i])
			o += (size_t)snprintf(line + o, len - o, "-%u", k->hi[i]);
	}
	if (k->max_services != 0)
		o += (size_t)snprintf(line + o, len - o, "%smax=%u", o ? "," : "", k->max_services);
	ph_pubkey_format(k->pub, k->comment, pub, sizeof(pub));
	snprintf(line + o, len - o, "%s%s", o ? " " : "", pub);
}

/* ph_pubkey_parse on a copy of exactly b[0..n) (ASan sees overreads). */
static int pubkey_parse(const uint8_t *b, size_t n, uint8_t pub[PH_KEY_LEN], const char **why)
{
	char *c = malloc(n ? n : 1);
	int r;

	if (c == NULL)
		abort();
	if (n > 0)
		memcpy(c, b, n);
	*why = "unset";
	r = ph_pubkey_parse(c, n, pub, why);
	free(c);
	return r;
}

static void check_pubkey(const uint8_t *data, size_t size)
{
	uint8_t pub[PH_KEY_LEN], back[PH_KEY_LEN];
	char line[PH_KEY_LINE_MAX], fp[PH_FP_LEN];
	const char *why;
	int r = pubkey_parse(data, size, pub, &why);

	if (r < 0) {
		CHECK(r == -EINVAL && why != NULL && why[0] != '\0' && strcmp(why, "unset") != 0);
		return;
	}
	CHECK(why == NULL);
	/* the type, a blank, the key; what follows (if anything) starts with a blank or CR/LF */
	CHECK((size_t)r > strlen(PH_KEY_TYPE) + 1 && (size_t)r <= size);
	CHECK(memcmp(data, PH_KEY_TYPE " ", 11) == 0 || memcmp(data, PH_KEY_TYPE "\t", 11) == 0);
	CHECK((size_t)r == size || data[r] == ' ' || data[r] == '\t' || data[r] == '\r' ||
	      data[r] == '\n');
	/* the same from exactly the bytes taken */
	CHECK(pubkey_parse(data, (size_t)r, back, &why) == r);
	CHECK(memcmp(pub, back, PH_KEY_LEN) == 0);
	/* formatted, it parses back to the same bytes */
	ph_pubkey_format(pub, NULL, line, sizeof(line));
	CHECK(strlen(line) == 11 + 44);
	CHECK(pubkey_parse((const uint8_t *)line, strlen(line), back, &why) == 11 + 44);
	CHECK(memcmp(pub, back, PH_KEY_LEN) == 0);
	ph_key_fingerprint(pub, fp);
	CHECK(strlen(fp) == 7 + 43 && memcmp(fp, "SHA256:", 7) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ph_auth_key k, again, back;
	char why[256], why2[256], rebuilt[1024];
	char *line;
	int r = 0;

	if (size > 4096)
		return 0;
	check_pubkey(data, size);

	line = malloc(size + 1);
	if (line == NULL)
		abort();
	if (size > 0)
		memcpy(line, data, size);
	line[size] = '\0';
	memset(why, 'x', sizeof(why));
	r = ph_auth_parse_line(line, &k, why, sizeof(why));
	CHECK(r == -EINVAL || r == 0 || r == 1);
	CHECK(memchr(why, '\0', sizeof(why)) != NULL);
	CHECK((r < 0) == (why[0] != '\0'));

	/* deterministic: the same line, the same answer (or the same reason) */
	CHECK(ph_auth_parse_line(line, &again, why2, sizeof(why2)) == r);
	CHECK(strcmp(why, why2) == 0);
	free(line);
	if (r <= 0)
		return 0;
	CHECK(same(&k, &again));

	CHECK(k.nnames <= PH_AUTH_NAMES && k.nranges <= PH_AUTH_RANGES);
	for (unsigned i = 0; i < k.nnames; i++)
		CHECK(name_ok(k.names[i], PH_NAME_MAX));
	for (unsigned i = 0; i < k.nranges; i++)
		CHECK(k.lo[i] >= 1 && k.lo[i] <= k.hi[i]);
	CHECK(k.max_services <= 65535);
	CHECK(memchr(k.comment, '\0', sizeof(k.comment)) != NULL);
	CHECK(strpbrk(k.comment, "\r\n") == NULL);
	CHECK(k.comment[0] != ' ' && k.comment[0] != '\t');

	/* the line rebuilt from what was parsed says the same */
	rebuild(&k, rebuilt, sizeof(rebuilt));
	CHECK(ph_auth_parse_line(rebuilt, &back, why2, sizeof(why2)) == 1);
	CHECK(same(&k, &back));

	/* ph_auth_allows follows the limits */
	{
		const char *name = k.nnames ? k.names[0] : "any-name";
		uint16_t port = k.nranges ? k.hi[0] : 1;

		CHECK(ph_auth_allows(&k, name, port));
		CHECK(ph_auth_allows(&k, NULL, port) == (k.nnames == 0));
		for (unsigned i = 0; i < k.nranges; i++)
			CHECK(ph_auth_allows(&k, name, k.lo[i]) &&
			      ph_auth_allows(&k, name, k.hi[i]));
		if (k.nranges == 0)
			CHECK(ph_auth_allows(&k, name, 0) && ph_auth_allows(&k, name, 65535));
		else {
			bool in0 = false;

			for (unsigned i = 0; i < k.nranges; i++)
				in0 |= k.lo[i] == 0;
			CHECK(!in0 && !ph_auth_allows(&k, name, 0));
		}
	}
	return 0;
}
