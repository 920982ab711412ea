#include "tunnel/keys.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Base64 without padding (as ssh prints fingerprints); returns the length written. */
static size_t b64_encode(const uint8_t *in, size_t n, char *out, bool pad)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
		             (i + 2 < n ? in[i + 2] : 0);

		out[o++] = b64[v >> 18 & 63];
		out[o++] = b64[v >> 12 & 63];
		if (i + 1 < n)
			out[o++] = b64[v >> 6 & 63];
		else if (pad)
			out[o++] = '=';
		if (i + 2 < n)
			out[o++] = b64[v & 63];
		else if (pad)
			out[o++] = '=';
	}
	out[o] = '\0';
	return o;
}

static int b64_val(char c)
{
	const char *p = c != '\0' ? strchr(b64, c) : NULL;

	return p != NULL ? (int)(p - b64) : -1;
}

/* Decodes exactly want bytes from s[0..n) (padding allowed). Returns 0 or -EINVAL. */
static int b64_decode_exact(const char *s, size_t n, uint8_t *out, size_t want)
{
	uint32_t acc = 0;
	unsigned bits = 0;
	size_t o = 0, i = 0;

	for (; i < n && s[i] != '='; i++) {
		int v = b64_val(s[i]);

		if (v < 0)
			return -EINVAL;
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (o == want)
				return -EINVAL;
			out[o++] = (uint8_t)(acc >> bits);
		}
	}
	for (; i < n; i++)
		if (s[i] != '=')
			return -EINVAL;
	return o == want && (acc & ((1u << bits) - 1)) == 0 ? 0 : -EINVAL;
}

int ph_key_generate(const char *path, struct ph_key **out, char *why, size_t whylen)
{
	EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	FILE *f = NULL;
	int fd, err = 0;

	*out = NULL;
	if (k == NULL) {
		snprintf(why, whylen, "cannot make an Ed25519 key (OpenSSL)");
		return -EIO;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd == -1) {
		err = -errno;
		snprintf(why, whylen, "%s: %s", path,
		         err == -EEXIST ? "exists already (not overwritten)" : strerror(-err));
		goto out;
	}
	f = fdopen(fd, "w");
	if (f == NULL) {
		err = -errno;
		close(fd);
		snprintf(why, whylen, "%s: %s", path, strerror(-err));
		goto out_unlink;
	}
	if (PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) != 1 || fflush(f) != 0 ||
	    fsync(fileno(f)) != 0) {
		err = -EIO;
		snprintf(why, whylen, "%s: cannot write the key", path);
	}
	if (fclose(f) != 0 && err == 0) {
		err = -EIO;
		snprintf(why, whylen, "%s: cannot write the key", path);
	}
	if (err == 0) {
		*out = (struct ph_key *)k;
		return 0;
	}
out_unlink:
	unlink(path);
out:
	EVP_PKEY_free(k);
	return err;
}

/*
 * OpenSSL's passphrase callback: refuses, and notes that one was wanted. Without it
 * OpenSSL prompts on the terminal, or reads stdin when there is none.
 */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	*(bool *)u = true;
	return -1;
}

int ph_key_load(const char *path, struct ph_key **out, char *why, size_t whylen)
{
	struct stat st;
	bool encrypted = false;
	EVP_PKEY *k;
	FILE *f;
	int fd;

	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd == -1) {
		int err = -errno;

		snprintf(why, whylen, "%s: %s", path, strerror(-err));
		return err;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		snprintf(why, whylen, "%s: not a regular file", path);
		close(fd);
		return -EINVAL;
	}
	if (st.st_mode & 077) {
		snprintf(why, whylen,
		         "%s: others may read this private key (mode %03o): chmod 600 it first",
		         path, (unsigned)(st.st_mode & 0777));
		close(fd);
		return -EPERM;
	}
	f = fdopen(fd, "r");
	if (f == NULL) {
		close(fd);
		snprintf(why, whylen, "%s: %s", path, strerror(errno));
		return -EIO;
	}
	k = PEM_read_PrivateKey(f, NULL, no_passphrase, &encrypted);
	fclose(f);
	if (k == NULL || EVP_PKEY_get_id(k) != EVP_PKEY_ED25519) {
		EVP_PKEY_free(k);
		snprintf(why, whylen, "%s: %s", path,
		         encrypted ? "an encrypted key (pinhole keys have no passphrase)"
		                   : "not an Ed25519 private key (make one with pinhole keygen)");
		return -EINVAL;
	}
	*out = (struct ph_key *)k;
	return 0;
}

void ph_key_free(struct ph_key *k)
{
	EVP_PKEY_free((EVP_PKEY *)k);
}

void ph_key_public(const struct ph_key *k, uint8_t pub[PH_KEY_LEN])
{
	size_t n = PH_KEY_LEN;

	if (EVP_PKEY_get_raw_public_key((const EVP_PKEY *)k, pub, &n) != 1 || n != PH_KEY_LEN)
		memset(pub, 0, PH_KEY_LEN);
}

void ph_pubkey_format(const uint8_t pub[PH_KEY_LEN], const char *comment, char *line, size_t len)
{
	char enc[64];

	b64_encode(pub, PH_KEY_LEN, enc, true);
	snprintf(line, len, "%s %s%s%s", PH_KEY_TYPE, enc, comment && comment[0] ? " " : "",
	         comment ? comment : "");
}

int ph_pubkey_parse(const char *s, size_t n, uint8_t pub[PH_KEY_LEN], const char **why)
{
	size_t tl = strlen(PH_KEY_TYPE), i, start;

	*why = NULL;
	if (n < tl + 1 || memcmp(s, PH_KEY_TYPE, tl) != 0 || (s[tl] != ' ' && s[tl] != '\t')) {
		*why = "not a pinhole public key (ph-ed25519 BASE64)";
		return -EINVAL;
	}
	for (i = tl; i < n && (s[i] == ' ' || s[i] == '\t'); i++)
		;
	start = i;
	while (i < n && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
		i++;
	if (b64_decode_exact(s + start, i - start, pub, PH_KEY_LEN) < 0) {
		*why = "a public key that is not 32 bytes of base64";
		return -EINVAL;
	}
	return (int)i;
}

void ph_key_fingerprint(const uint8_t pub[PH_KEY_LEN], char fp[PH_FP_LEN])
{
	uint8_t h[SHA256_DIGEST_LENGTH];

	SHA256(pub, PH_KEY_LEN, h);
	memcpy(fp, "SHA256:", 7);
	b64_encode(h, sizeof(h), fp + 7, false);
}

int ph_key_sign(struct ph_key *k, const uint8_t *msg, size_t n, uint8_t sig[64])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	size_t sl = 64;
	int ok;

	if (ctx == NULL)
		return -ENOMEM;
	ok = EVP_DigestSignInit(ctx, NULL, NULL, NULL, (EVP_PKEY *)k) == 1 &&
	     EVP_DigestSign(ctx, sig, &sl, msg, n) == 1 && sl == 64;
	EVP_MD_CTX_free(ctx);
	return ok ? 0 : -EIO;
}

int ph_key_verify(const uint8_t pub[PH_KEY_LEN], const uint8_t *msg, size_t n,
                  const uint8_t sig[64])
{
	EVP_PKEY *k = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, PH_KEY_LEN);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int ok = 0;

	if (k != NULL && ctx != NULL)
		ok = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, k) == 1 &&
		     EVP_DigestVerify(ctx, sig, 64, msg, n) == 1;
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(k);
	return ok ? 0 : -EBADMSG;
}

/* True when a file that says whom to trust may belong to uid: root, or the uid we run as. */
static bool trusted_owner(uid_t uid)
{
	return uid == 0 || uid == geteuid();
}

int ph_strict_modes(int fd, const char *path, char *why, size_t whylen)
{
	char real[PATH_MAX], base[NAME_MAX + 1], *slash;
	struct stat st, dst, ent;
	int dfd, err;

	if (fstat(fd, &st) == -1) {
		err = -errno;
		snprintf(why, whylen, "%s: %s", path, strerror(-err));
		return err;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(why, whylen, "%s: not a regular file", path);
		return -EINVAL;
	}
	if (!trusted_owner(st.st_uid)) {
		snprintf(
			why, whylen,
			"%s: owned by uid %u, neither root nor this process (uid %u): not trusted; "
			"chown it",
			path, (unsigned)st.st_uid, (unsigned)geteuid());
		return -EPERM;
	}
	if (st.st_mode & 022) {
		snprintf(why, whylen,
		         "%s: group or others may write it (mode %04o): not trusted; chmod go-w %s",
		         path, (unsigned)(st.st_mode & 07777), path);
		return -EPERM;
	}
	/* whoever may write the directory may put another file in this one's place */
	if (realpath(path, real) == NULL) {
		err = -errno;
		snprintf(why, whylen, "%s: %s", path, strerror(-err));
		return err;
	}
	slash = strrchr(real, '/'); /* realpath's answer is absolute */
	snprintf(base, sizeof(base), "%s", slash + 1);
	if (slash == real) /* "/x" is in "/" */
		slash++;
	*slash = '\0';
	dfd = open(real, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dfd == -1) {
		err = -errno;
		snprintf(why, whylen, "%s: its directory %s: %s", path, real, strerror(-err));
		return err;
	}
	if (fstat(dfd, &dst) == -1 || fstatat(dfd, base, &ent, AT_SYMLINK_NOFOLLOW) == -1) {
		err = -errno;
		close(dfd);
		snprintf(why, whylen, "%s: %s", path, strerror(-err));
		return err;
	}
	close(dfd);
	if (ent.st_dev != st.st_dev || ent.st_ino != st.st_ino) {
		snprintf(why, whylen, "%s: replaced while it was being opened", path);
		return -ESTALE;
	}
	if (!trusted_owner(dst.st_uid)) {
		snprintf(why, whylen,
		         "%s: its directory %s is owned by uid %u, neither root nor this process "
		         "(uid %u): not trusted; chown it",
		         path, real, (unsigned)dst.st_uid, (unsigned)geteuid());
		return -EPERM;
	}
	if ((dst.st_mode & 022) && !(dst.st_mode & S_ISVTX)) {
		snprintf(why, whylen,
		         "%s: group or others may write its directory (mode %04o): not trusted; "
		         "chmod go-w %s",
		         path, (unsigned)(dst.st_mode & 07777), real);
		return -EPERM;
	}
	return 0;
}

/* ---- authorized keys ---- */

static int opt_fail(char *why, size_t whylen, const char *word, size_t wl, const char *msg)
{
	snprintf(why, whylen, "'%.*s': %s", (int)(wl > 60 ? 60 : wl), word, msg);
	return -EINVAL;
}

static int parse_port(const char *s, size_t n, uint16_t *out)
{
	unsigned long v = 0;

	if (n == 0 || n > 5)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (!isdigit((unsigned char)s[i]))
			return -EINVAL;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v == 0 || v > 65535)
		return -EINVAL;
	*out = (uint16_t)v;
	return 0;
}

/* A port, a range lo-hi, or * (any) of connect=. */
static int parse_ports(const char *v, size_t n, uint16_t *lo, uint16_t *hi)
{
	const char *dash = memchr(v, '-', n);

	if (n == 1 && v[0] == '*') {
		*lo = 1;
		*hi = 65535;
		return 0;
	}
	if (parse_port(v, dash ? (size_t)(dash - v) : n, lo) < 0)
		return -EINVAL;
	if (dash == NULL) {
		*hi = *lo;
		return 0;
	}
	if (parse_port(dash + 1, n - (size_t)(dash + 1 - v), hi) < 0 || *hi < *lo)
		return -EINVAL;
	return 0;
}

/* One destination of connect=: HOST:PORT, CIDR:PORTS, [V6]:PORTS, [V6/N]:PORTS, *:PORTS. */
static int parse_dest(const char *v, size_t n, struct ph_auth_dest *d)
{
	char host[PH_AUTH_HOST + 8];
	const char *colon, *h = v;
	size_t hl;

	memset(d, 0, sizeof(*d));
	if (n > 0 && v[0] == '[') {
		const char *rb = memchr(v, ']', n);

		if (rb == NULL || (size_t)(rb + 1 - v) >= n || rb[1] != ':')
			return -EINVAL;
		h = v + 1;
		hl = (size_t)(rb - h);
		colon = rb + 1;
	} else {
		colon = memrchr(v, ':', n);
		if (colon == NULL)
			return -EINVAL;
		hl = (size_t)(colon - v);
	}
	if (hl == 0 || hl >= sizeof(host) ||
	    parse_ports(colon + 1, n - (size_t)(colon + 1 - v), &d->lo, &d->hi) < 0)
		return -EINVAL;
	memcpy(host, h, hl);
	host[hl] = '\0';
	if (strcmp(host, "*") == 0) {
		d->any = true;
		return 0;
	}
	const char *cwhy;

	if (ph_cidr_parse(host, &d->cidr, &cwhy) == 0) {
		d->is_cidr = true;
		return 0;
	}
	if (hl >= PH_AUTH_HOST || strchr(host, '/') != NULL || strchr(host, ':') != NULL)
		return -EINVAL;
	for (size_t i = 0; i < hl; i++) {
		if (!isalnum((unsigned char)host[i]) && host[i] != '-' && host[i] != '.' &&
		    host[i] != '_')
			return -EINVAL;
		d->host[i] = (char)tolower((unsigned char)host[i]);
	}
	return 0;
}

/* True when v[0..nl) is made of a service name's characters. */
static bool name_chars_ok(const char *v, size_t nl)
{
	for (size_t i = 0; i < nl; i++)
		if (!isalnum((unsigned char)v[i]) && v[i] != '-' && v[i] != '_' && v[i] != '.')
			return false;
	return true;
}

/* reach=a|b|*: the private services key k may visit (w, wl: the option, for errors). */
static int parse_reach(const char *w, size_t wl, const char *v, struct ph_auth_key *k, char *why,
                       size_t whylen)
{
	const char *end = w + wl;

	for (;;) { /* "reach=" is nothing: refused, as names= */
		const char *bar = memchr(v, '|', (size_t)(end - v));
		size_t nl = (size_t)((bar ? bar : end) - v);

		if (nl == 1 && v[0] == '*') {
			k->reach_any = true;
		} else {
			if (nl == 0 || nl > PH_NAME_MAX || k->nreach == PH_AUTH_REACH)
				return opt_fail(why, whylen, w, wl,
				                "reach=a|b|*: up to 8 names of 1-32 characters");
			if (!name_chars_ok(v, nl))
				return opt_fail(why, whylen, w, wl,
				                "a name is letters, digits, - _ and .");
			memcpy(k->reach[k->nreach], v, nl);
			k->reach[k->nreach++][nl] = '\0';
		}
		if (bar == NULL)
			break;
		v = bar + 1;
	}
	return 0;
}

/* connect=DEST|DEST...: where the relay may connect for key k. */
static int parse_connect(const char *w, size_t wl, const char *v, struct ph_auth_key *k, char *why,
                         size_t whylen)
{
	const char *end = w + wl;

	for (;;) {
		const char *bar = memchr(v, '|', (size_t)(end - v));
		size_t nl = (size_t)((bar ? bar : end) - v);

		if (k->nconnect == PH_AUTH_CONNECT ||
		    parse_dest(v, nl, &k->connect[k->nconnect]) < 0)
			return opt_fail(why, whylen, w, wl,
			                "connect=HOST:PORT|10.0.0.0/8:22-80|[::1]:22|*:443 (up "
			                "to 16; a port may be *)");
		k->nconnect++;
		if (bar == NULL)
			break;
		v = bar + 1;
	}
	return 0;
}

/* One option word (up to a comma or blank). */
static int parse_option(const char *w, size_t wl, struct ph_auth_key *k, char *why, size_t whylen)
{
	const char *eq = memchr(w, '=', wl), *v, *end = w + wl;

	if (eq == NULL)
		return opt_fail(why, whylen, w, wl,
		                "an option is names=, ports=, max=, sessions=, reach= or connect=");
	v = eq + 1;
	if ((size_t)(eq - w) == 5 && memcmp(w, "names", 5) == 0) {
		/* an empty list or item is refused: "names=" must not read as "any name" */
		for (;;) {
			const char *bar = memchr(v, '|', (size_t)(end - v));
			size_t nl = (size_t)((bar ? bar : end) - v);

			if (nl == 0 || nl > PH_NAME_MAX || k->nnames == PH_AUTH_NAMES)
				return opt_fail(why, whylen, w, wl,
				                "names=a|b: up to 8 names of 1-32 characters");
			if (!name_chars_ok(v, nl))
				return opt_fail(why, whylen, w, wl,
				                "a name is letters, digits, - _ and .");
			memcpy(k->names[k->nnames], v, nl);
			k->names[k->nnames++][nl] = '\0';
			if (bar == NULL)
				break;
			v = bar + 1;
		}
		return 0;
	}
	if ((size_t)(eq - w) == 5 && memcmp(w, "ports", 5) == 0) {
		for (;;) { /* likewise: "ports=" is no port, not any port */
			const char *bar = memchr(v, '|', (size_t)(end - v));
			const char *stop = bar ? bar : end,
				   *dash = memchr(v, '-', (size_t)(stop - v));
			uint16_t lo, hi;

			if (k->nranges == PH_AUTH_RANGES ||
			    parse_port(v, (size_t)((dash ? dash : stop) - v), &lo) < 0 ||
			    (dash && parse_port(dash + 1, (size_t)(stop - dash - 1), &hi) < 0) ||
			    (dash && hi < lo))
				return opt_fail(why, whylen, w, wl,
				                "ports=20000-20099|443: up to 8 ports or ranges");
			k->lo[k->nranges] = lo;
			k->hi[k->nranges++] = dash ? hi : lo;
			if (bar == NULL)
				break;
			v = bar + 1;
		}
		return 0;
	}
	if ((size_t)(eq - w) == 5 && memcmp(w, "reach", 5) == 0)
		return parse_reach(w, wl, eq + 1, k, why, whylen);
	if ((size_t)(eq - w) == 7 && memcmp(w, "connect", 7) == 0)
		return parse_connect(w, wl, eq + 1, k, why, whylen);
	if ((size_t)(eq - w) == 8 && memcmp(w, "sessions", 8) == 0) {
		uint16_t n;

		if (parse_port(v, (size_t)(end - v), &n) < 0 || n > PH_AUTH_SESSIONS_MAX)
			return opt_fail(why, whylen, w, wl, "sessions=N: sessions at once, 1-1024");
		k->max_sessions = n;
		return 0;
	}
	if ((size_t)(eq - w) == 3 && memcmp(w, "max", 3) == 0) {
		uint16_t n;

		if (parse_port(v, (size_t)(end - v), &n) < 0)
			return opt_fail(why, whylen, w, wl, "max=N: services at once, 1-65535");
		k->max_services = n;
		return 0;
	}
	return opt_fail(why, whylen, w, wl,
	                "an option is names=, ports=, max=, sessions=, reach= or connect=");
}

int ph_auth_parse_line(const char *line, struct ph_auth_key *k, char *why, size_t whylen)
{
	const char *p = line, *key, *why_key;
	size_t n;
	int used, err;

	memset(k, 0, sizeof(*k));
	why[0] = '\0';
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '\0' || *p == '#' || *p == '\n' || *p == '\r')
		return 0;
	/* options first, when the line does not start with the key type */
	if (strncmp(p, PH_KEY_TYPE, strlen(PH_KEY_TYPE)) != 0) {
		const char *end = p + strcspn(p, " \t\r\n");

		while (p < end) {
			const char *comma = memchr(p, ',', (size_t)(end - p));
			size_t wl = (size_t)((comma ? comma : end) - p);

			err = parse_option(p, wl, k, why, whylen);
			if (err < 0)
				return err;
			p += wl + (comma != NULL);
		}
		while (*p == ' ' || *p == '\t')
			p++;
	}
	key = p;
	n = strcspn(key, "\r\n");
	used = ph_pubkey_parse(key, n, k->pub, &why_key);
	if (used < 0) {
		int kl = (int)strcspn(key, " \t\r\n");

		snprintf(why, whylen, "'%.*s': %s", kl > 60 ? 60 : kl, key, why_key);
		return -EINVAL;
	}
	p = key + used;
	while (*p == ' ' || *p == '\t')
		p++;
	snprintf(k->comment, sizeof(k->comment), "%.*s", (int)strcspn(p, "\r\n"), p);
	return 1;
}

bool ph_auth_name_ok(const struct ph_auth_key *k, const char *name)
{
	if (k->nnames == 0)
		return true;
	for (unsigned i = 0; i < k->nnames; i++)
		if (name != NULL && strcmp(name, k->names[i]) == 0)
			return true;
	return false;
}

bool ph_auth_port_named(const struct ph_auth_key *k, uint16_t port)
{
	for (unsigned i = 0; i < k->nranges; i++)
		if (port >= k->lo[i] && port <= k->hi[i])
			return true;
	return false;
}

bool ph_auth_allows(const struct ph_auth_key *k, const char *name, uint16_t port)
{
	return ph_auth_name_ok(k, name) && (k->nranges == 0 || ph_auth_port_named(k, port));
}

bool ph_auth_reach_ok(const struct ph_auth_key *k, const char *name)
{
	if (k->reach_any)
		return true;
	for (unsigned i = 0; i < k->nreach; i++)
		if (strcmp(name, k->reach[i]) == 0)
			return true;
	return false;
}

bool ph_auth_connect_host(const struct ph_auth_key *k, const char *host, uint16_t port)
{
	struct ph_addr a;
	bool literal = ph_addr_from_literal(host, port, &a) == 0;

	for (unsigned i = 0; i < k->nconnect; i++) {
		const struct ph_auth_dest *d = &k->connect[i];

		if (port < d->lo || port > d->hi)
			continue;
		/* a name may lead into a granted network: the lookup's addresses decide */
		if (d->any || (literal && d->is_cidr && ph_cidr_contains(&d->cidr, &a)) ||
		    (!literal && d->is_cidr) ||
		    (!literal && !d->is_cidr && strcasecmp(d->host, host) == 0))
			return true;
	}
	return false;
}

/* True when c lies inside loopback or link-local: a network that names the relay itself. */
static bool cidr_names_self(const struct ph_cidr *c)
{
	static const uint8_t v6_loop[16] = {[15] = 1};

	if (c->family == AF_INET)
		return (c->prefix >= 8 && c->net[0] == 127) ||
		       (c->prefix >= 16 && c->net[0] == 169 && c->net[1] == 254);
	return (c->prefix == 128 && memcmp(c->net, v6_loop, 16) == 0) ||
	       (c->prefix >= 10 && c->net[0] == 0xfe && (c->net[1] & 0xc0) == 0x80);
}

bool ph_auth_connect_addr(const struct ph_auth_key *k, const char *name, const struct ph_addr *a,
                          bool local)
{
	uint16_t port = ph_addr_port(a);

	for (unsigned i = 0; i < k->nconnect; i++) {
		const struct ph_auth_dest *d = &k->connect[i];

		if (port < d->lo || port > d->hi)
			continue;
		if (name != NULL && !d->is_cidr && !d->any && strcasecmp(d->host, name) == 0)
			return true; /* the name the operator wrote, wherever it leads */
		if (d->any && !local)
			return true;
		if (d->is_cidr && ph_cidr_contains(&d->cidr, a) &&
		    (!local || cidr_names_self(&d->cidr) ||
		     d->cidr.prefix == (d->cidr.family == AF_INET ? 32 : 128)))
			return true;
	}
	return false;
}
