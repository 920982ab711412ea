/*
 * Unit tests for the relay's keys (tunnel/keys.h): a generated key lands in a new file of
 * mode 0600 that is never overwritten and loads back to the same key; loading refuses
 * files others may read, what is not a regular file, and what is not an Ed25519 key; a
 * public key line formats and parses back, and malformed ones are refused; fingerprints,
 * public key lines and signatures match values computed independently (OpenSSL's own
 * base64 and SHA-256, RFC 8032 section 7.1 test 1); authorized-keys lines parse to their
 * limits or are refused naming the word, and ph_auth_allows applies those limits;
 * ph_strict_modes refuses a file, or its directory, that group or others may write or
 * another user owns, judging the file that is open.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "tunnel/keys.h"

/* RFC 8032 7.1, TEST 1: a secret key, its public key, and the signature of "" */
static const uint8_t rfc_sk[32] = {
	0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a,
	0xf4, 0x92, 0xec, 0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32,
	0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
};
static const uint8_t rfc_pk[32] = {
	0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe,
	0xd3, 0xc9, 0x64, 0x07, 0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6,
	0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
};
static const uint8_t rfc_sig[64] = {
	0xe5, 0x56, 0x43, 0x00, 0xc3, 0x60, 0xac, 0x72, 0x90, 0x86, 0xe2, 0xcc, 0x80,
	0x6e, 0x82, 0x8a, 0x84, 0x87, 0x7f, 0x1e, 0xb8, 0xe5, 0xd9, 0x74, 0xd8, 0x73,
	0xe0, 0x65, 0x22, 0x49, 0x01, 0x55, 0x5f, 0xb8, 0x82, 0x15, 0x90, 0xa3, 0x3b,
	0xac, 0xc6, 0x1e, 0x39, 0x70, 0x1c, 0xf9, 0xb4, 0x6b, 0xd2, 0x5b, 0xf5, 0xf0,
	0x59, 0x5b, 0xbe, 0x24, 0x65, 0x51, 0x41, 0x43, 0x8e, 0x7a, 0x10, 0x0b,
};
/* the same public key as python's base64.b64encode writes it, and its fingerprint:
 * base64.b64encode(hashlib.sha256(pk).digest()).rstrip(b'=') */
#define RFC_PK_B64 "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
#define RFC_PK_FP  "SHA256:If4x36FUomFia/hUBG/SJxt77UtqvkWqWId+9H+XIbk"
/* python3: base64.b64encode(hashlib.sha256(bytes(32)).digest()).rstrip(b'=') */
#define ZERO_FP "SHA256:Zmh6rfhivXdsj8GLjp+OIAiXFIVu4jOzkCpZHQ1fKSU"

#define B64_31 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==" /* 31 zero bytes */
#define B64_32 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" /* 32 zero bytes */
#define B64_33 "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" /* 33 zero bytes */

static char dir[] = "/tmp/ph_test_keys_XXXXXX"; /* removed with all it holds at the end */

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int setup_dir(void **state)
{
	(void)state;
	return mkdtemp(dir) == NULL ? -1 : 0;
}

static int remove_dir(void **state)
{
	(void)state;
	return nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* dir/name, in a static buffer of its own per slot (up to 4 paths in one expression) */
static const char *at(const char *name)
{
	static char buf[4][256];
	static unsigned slot;
	char *p = buf[slot++ % 4];

	snprintf(p, sizeof(buf[0]), "%s/%s", dir, name);
	return p;
}

/* The contents of path (up to 4095 bytes), NUL-terminated, and their length. */
static size_t slurp(const char *path, char buf[4096])
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	assert_int_not_equal(fd, -1);
	n = read(fd, buf, 4095);
	assert_true(n >= 0);
	close(fd);
	buf[n] = '\0';
	return (size_t)n;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

	assert_int_not_equal(fd, -1);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
}

/* Writes k to path as an unencrypted PKCS#8 PEM of mode 0600, with OpenSSL alone. */
static void write_pem(const char *path, EVP_PKEY *k)
{
	FILE *f;

	assert_non_null(k);
	f = fopen(path, "wx");
	assert_non_null(f);
	assert_int_equal(fchmod(fileno(f), 0600), 0);
	assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
	assert_int_equal(fclose(f), 0);
}

/* s holds want; a failed check shows both. */
static void assert_has(const char *s, const char *want)
{
	if (strstr(s, want) == NULL)
		print_error("'%s' does not say '%s'\n", s, want);
	assert_non_null(strstr(s, want));
}

/* Base64 of b[0..n) by OpenSSL (padded), to check ours against. */
static void openssl_b64(const uint8_t *b, size_t n, char *out)
{
	assert_int_equal(EVP_EncodeBlock((unsigned char *)out, b, (int)n), (int)((n + 2) / 3 * 4));
}

/* ---- key files ---- */

static void test_generate(void **state)
{
	const char *path = at("gen");
	char before[4096], after[4096], why[512];
	uint8_t pub[PH_KEY_LEN], pub2[PH_KEY_LEN], zero[PH_KEY_LEN] = {0};
	struct ph_key *k = NULL, *k2 = (struct ph_key *)1;
	struct stat st, st2;
	size_t n;
	mode_t old = umask(0); /* the mode must come from the code, not the umask */

	(void)state;
	why[0] = '\0';
	assert_int_equal(ph_key_generate(path, &k, why, sizeof(why)), 0);
	umask(old);
	assert_non_null(k);
	assert_int_equal(stat(path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0600);
	n = slurp(path, before);
	assert_true(n > 0);
	assert_non_null(strstr(before, "-----BEGIN PRIVATE KEY-----\n")); /* PKCS#8, clear */
	assert_non_null(strstr(before, "-----END PRIVATE KEY-----\n"));
	ph_key_public(k, pub);
	assert_memory_not_equal(pub, zero, PH_KEY_LEN);

	/* O_EXCL: a second key never replaces the first */
	assert_int_equal(ph_key_generate(path, &k2, why, sizeof(why)), -EEXIST);
	assert_null(k2);
	assert_has(why, path);
	assert_has(why, "exists");
	assert_int_equal(stat(path, &st2), 0);
	assert_int_equal(st2.st_ino, st.st_ino);
	assert_int_equal(st2.st_mode & 07777, 0600);
	assert_int_equal(slurp(path, after), n);
	assert_memory_equal(before, after, n);

	/* and it loads back to the same key */
	assert_int_equal(ph_key_load(path, &k2, why, sizeof(why)), 0);
	assert_non_null(k2);
	ph_key_public(k2, pub2);
	assert_memory_equal(pub, pub2, PH_KEY_LEN);
	ph_key_free(k2);

	/* a second key is another key */
	assert_int_equal(ph_key_generate(at("gen2"), &k2, why, sizeof(why)), 0);
	ph_key_public(k2, pub2);
	assert_memory_not_equal(pub, pub2, PH_KEY_LEN);
	ph_key_free(k2);
	ph_key_free(k);
}

static void test_generate_fails(void **state)
{
	struct ph_key *k = (struct ph_key *)1;
	char why[512] = "";

	(void)state;
	/* no such directory: nothing made, a reason naming the path */
	assert_int_equal(ph_key_generate(at("nodir/key"), &k, why, sizeof(why)), -ENOENT);
	assert_null(k);
	assert_has(why, "nodir/key");
	/* a dangling symlink is not followed (O_EXCL, O_NOFOLLOW) */
	assert_int_equal(symlink(at("elsewhere"), at("dangling")), 0);
	k = (struct ph_key *)1;
	assert_true(ph_key_generate(at("dangling"), &k, why, sizeof(why)) < 0);
	assert_null(k);
	assert_int_equal(access(at("elsewhere"), F_OK), -1);
}

static void test_load_refuses(void **state)
{
	struct ph_key *k = (struct ph_key *)1, *g;
	char why[512], pem[4096];

	(void)state;
	assert_int_equal(ph_key_generate(at("open"), &g, why, sizeof(why)), 0);
	ph_key_free(g);

	/* group or others may read it (or write it): refused, and the reason says what to do */
	assert_int_equal(chmod(at("open"), 0644), 0);
	assert_int_equal(ph_key_load(at("open"), &k, why, sizeof(why)), -EPERM);
	assert_null(k);
	assert_has(why, "chmod 600");
	assert_has(why, "644");
	assert_int_equal(chmod(at("open"), 0640), 0);
	assert_int_equal(ph_key_load(at("open"), &k, why, sizeof(why)), -EPERM);
	assert_int_equal(chmod(at("open"), 0602), 0);
	assert_int_equal(ph_key_load(at("open"), &k, why, sizeof(why)), -EPERM);
	assert_null(k);
	assert_int_equal(chmod(at("open"), 0400), 0); /* owner read-only is fine */
	assert_int_equal(ph_key_load(at("open"), &k, why, sizeof(why)), 0);
	ph_key_free(k);

	/* missing */
	k = (struct ph_key *)1;
	assert_int_equal(ph_key_load(at("missing"), &k, why, sizeof(why)), -ENOENT);
	assert_null(k);
	assert_has(why, "missing");

	/* not a regular file: a directory, a FIFO (and opening that must not block) */
	assert_int_equal(mkdir(at("adir"), 0700), 0);
	k = (struct ph_key *)1;
	assert_int_equal(ph_key_load(at("adir"), &k, why, sizeof(why)), -EINVAL);
	assert_null(k);
	assert_has(why, "not a regular file");
	assert_int_equal(mkfifo(at("fifo"), 0600), 0);
	assert_int_equal(ph_key_load(at("fifo"), &k, why, sizeof(why)), -EINVAL);
	assert_null(k);
	assert_has(why, "not a regular file");

	/* not PEM, or PEM cut short */
	write_file(at("text"), "ph-ed25519 " B64_32 "\n", 0600);
	assert_int_equal(ph_key_load(at("text"), &k, why, sizeof(why)), -EINVAL);
	assert_null(k);
	assert_has(why, "not an Ed25519 private key");
	write_file(at("empty"), "", 0600);
	assert_int_equal(ph_key_load(at("empty"), &k, why, sizeof(why)), -EINVAL);
	assert_null(k);
	slurp(at("open"), pem);
	pem[strlen(pem) / 2] = '\0';
	write_file(at("half"), pem, 0600);
	assert_int_equal(ph_key_load(at("half"), &k, why, sizeof(why)), -EINVAL);
	assert_null(k);
}

static void test_load_other_key_types(void **state)
{
	static const char *const names[] = {"rsa", "ec", "x25519", "ed448"};
	EVP_PKEY *keys[4];
	struct ph_key *k;
	char why[512];

	(void)state;
	keys[0] = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	keys[1] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	keys[2] = EVP_PKEY_Q_keygen(NULL, NULL, "X25519"); /* 32 bytes too, but not for signing */
	keys[3] = EVP_PKEY_Q_keygen(NULL, NULL, "ED448");
	for (size_t i = 0; i < 4; i++) {
		write_pem(at(names[i]), keys[i]);
		EVP_PKEY_free(keys[i]);
		k = (struct ph_key *)1;
		why[0] = '\0';
		assert_int_equal(ph_key_load(at(names[i]), &k, why, sizeof(why)), -EINVAL);
		assert_null(k);
		assert_has(why, "not an Ed25519 private key");
	}
}

/* A key with a passphrase is refused, with a reason, and never asks for one (a daemon's
 * stdin is not a terminal to prompt on). */
static void test_load_encrypted(void **state)
{
	EVP_PKEY *e = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	struct ph_key *k = (struct ph_key *)1;
	char why[512];
	FILE *f;
	int fds[2], saved;

	(void)state;
	assert_non_null(e);
	f = fopen(at("encrypted"), "wx");
	assert_non_null(f);
	assert_int_equal(fchmod(fileno(f), 0600), 0);
	assert_int_equal(PEM_write_PrivateKey(f, e, EVP_aes_256_cbc(), (unsigned char *)"secret", 6,
	                                      NULL, NULL),
	                 1);
	assert_int_equal(fclose(f), 0);
	EVP_PKEY_free(e);

	/* stdin holds the passphrase: it must stay unread */
	assert_int_equal(pipe(fds), 0);
	assert_int_equal(write(fds[1], "secret\n", 7), 7);
	close(fds[1]);
	saved = dup(0);
	assert_int_not_equal(saved, -1);
	assert_int_equal(dup2(fds[0], 0), 0);
	close(fds[0]);
	assert_int_equal(ph_key_load(at("encrypted"), &k, why, sizeof(why)), -EINVAL);
	{
		char c[8];

		assert_int_equal(read(0, c, sizeof(c)), 7);
	}
	assert_int_equal(dup2(saved, 0), 0);
	close(saved);
	assert_null(k);
	assert_has(why, "encrypted");
}

/* ---- public keys, fingerprints, signatures: against independent values ---- */

static void test_rfc8032_vector(void **state)
{
	EVP_PKEY *e = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, rfc_sk, 32);
	uint8_t pub[PH_KEY_LEN], sig[64];
	char line[PH_KEY_LINE_MAX], fp[PH_FP_LEN];
	struct ph_key *k;

	(void)state;
	write_pem(at("rfc8032"), e);
	EVP_PKEY_free(e);
	assert_int_equal(ph_key_load(at("rfc8032"), &k, line, sizeof(line)), 0);
	ph_key_public(k, pub);
	assert_memory_equal(pub, rfc_pk, 32);
	memset(sig, 0, sizeof(sig));
	assert_int_equal(ph_key_sign(k, (const uint8_t *)"", 0, sig), 0);
	assert_memory_equal(sig, rfc_sig, 64);
	assert_int_equal(ph_key_verify(rfc_pk, (const uint8_t *)"", 0, rfc_sig), 0);
	ph_key_free(k);

	ph_pubkey_format(rfc_pk, "rfc8032", line, sizeof(line));
	assert_string_equal(line, "ph-ed25519 " RFC_PK_B64 " rfc8032");
	ph_key_fingerprint(rfc_pk, fp);
	assert_string_equal(fp, RFC_PK_FP);
}

static void test_fingerprint(void **state)
{
	uint8_t pub[PH_KEY_LEN] = {0}, h[32];
	char fp[PH_FP_LEN], want[7 + 64], enc[64];
	unsigned hl = 0;

	(void)state;
	memset(fp, 'x', sizeof(fp));
	ph_key_fingerprint(pub, fp);
	assert_string_equal(fp, ZERO_FP);
	assert_int_equal(strlen(fp), 7 + 43);

	/* other keys: OpenSSL's SHA-256 and base64, the padding cut off */
	for (int i = 0; i < 64; i++) {
		for (size_t j = 0; j < PH_KEY_LEN; j++)
			pub[j] = (uint8_t)(i * 37 + j * 11 + (j == 31 ? i : 0));
		assert_int_equal(EVP_Digest(pub, PH_KEY_LEN, h, &hl, EVP_sha256(), NULL), 1);
		assert_int_equal(hl, 32);
		openssl_b64(h, 32, enc);
		assert_int_equal(enc[43], '=');
		enc[43] = '\0';
		snprintf(want, sizeof(want), "SHA256:%s", enc);
		ph_key_fingerprint(pub, fp);
		assert_string_equal(fp, want);
	}
}

static void test_pubkey_round_trip(void **state)
{
	uint8_t pub[PH_KEY_LEN], back[PH_KEY_LEN];
	char line[PH_KEY_LINE_MAX], want[PH_KEY_LINE_MAX], enc[64];
	const char *why = "unset";
	int used;

	(void)state;
	for (int i = 0; i < 256; i++) {
		for (size_t j = 0; j < PH_KEY_LEN; j++)
			pub[j] = (uint8_t)(i + j * 7 + (i & 1 ? 0x80 : 0));
		openssl_b64(pub, PH_KEY_LEN, enc);
		assert_int_equal(strlen(enc), 44);

		ph_pubkey_format(pub, NULL, line, sizeof(line));
		snprintf(want, sizeof(want), "ph-ed25519 %s", enc);
		assert_string_equal(line, want);
		ph_pubkey_format(pub, "", line, sizeof(line)); /* an empty comment: none */
		assert_string_equal(line, want);

		memset(back, 0, sizeof(back));
		used = ph_pubkey_parse(line, strlen(line), back, &why);
		assert_int_equal(used, (int)strlen(line));
		assert_null(why);
		assert_memory_equal(back, pub, PH_KEY_LEN);

		ph_pubkey_format(pub, "me@host", line, sizeof(line));
		snprintf(want, sizeof(want), "ph-ed25519 %s me@host", enc);
		assert_string_equal(line, want);
		used = ph_pubkey_parse(line, strlen(line), back, &why);
		assert_int_equal(used, 11 + 44); /* the comment follows */
		assert_memory_equal(back, pub, PH_KEY_LEN);
	}

	/* tabs and runs of blanks between the words; the length given is all that is read */
	used = ph_pubkey_parse("ph-ed25519\t \t" RFC_PK_B64 "\tc", 13 + 44 + 2, back, &why);
	assert_int_equal(used, 13 + 44);
	assert_memory_equal(back, rfc_pk, 32);
	used = ph_pubkey_parse("ph-ed25519 " RFC_PK_B64 "XYZ", 11 + 44, back, &why);
	assert_int_equal(used, 11 + 44);
	assert_memory_equal(back, rfc_pk, 32);
	used = ph_pubkey_parse("ph-ed25519 " RFC_PK_B64 "\r\n", 11 + 44 + 2, back, &why);
	assert_int_equal(used, 11 + 44);
}

/* s[0..strlen) is not a public key line. */
static void bad_pubkey(const char *s, const char *want)
{
	size_t n = strlen(s);
	char *c = malloc(n ? n : 1); /* exactly n bytes: ASan sees any overread */
	uint8_t pub[PH_KEY_LEN];
	const char *why = NULL;

	assert_non_null(c);
	memcpy(c, s, n);
	if (ph_pubkey_parse(c, n, pub, &why) != -EINVAL)
		print_error("'%s' was not refused\n", s);
	free(c);
	assert_non_null(why);
	assert_has(why, want);
}

static void test_pubkey_bad(void **state)
{
	(void)state;
	/* the type */
	bad_pubkey("", "not a pinhole public key");
	bad_pubkey("ph-ed25519", "not a pinhole public key");
	bad_pubkey("ssh-ed25519 " B64_32, "not a pinhole public key");
	bad_pubkey("PH-ED25519 " B64_32, "not a pinhole public key");
	bad_pubkey("ph-ed25519x " B64_32, "not a pinhole public key");
	bad_pubkey("ph-ed25519:" B64_32, "not a pinhole public key");
	bad_pubkey(" ph-ed25519 " B64_32, "not a pinhole public key");
	/* the key */
	bad_pubkey("ph-ed25519 ", "not 32 bytes");
	bad_pubkey("ph-ed25519 \t ", "not 32 bytes");
	bad_pubkey("ph-ed25519 " B64_31, "not 32 bytes");
	bad_pubkey("ph-ed25519 " B64_33, "not 32 bytes");
	bad_pubkey("ph-ed25519 " B64_33 "=", "not 32 bytes");
	bad_pubkey("ph-ed25519 AAAA", "not 32 bytes");
	/* base64 it is not, or with something after the key in the same word */
	bad_pubkey("ph-ed25519 "
	           "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHUR!=",
	           "not 32 bytes");
	bad_pubkey("ph-ed25519 "
	           "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHUR-=",
	           "not 32 bytes");
	bad_pubkey("ph-ed25519 "
	           "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
	           "not 32 bytes");
	bad_pubkey("ph-ed25519 "
	           "11qYAYKxCrfVS/7TyWQ=Og7hcvPapiMlrwIaaPcHURo=",
	           "not 32 bytes");
	bad_pubkey("ph-ed25519 " RFC_PK_B64 "x", "not 32 bytes");
	bad_pubkey("ph-ed25519 " RFC_PK_B64 "A", "not 32 bytes");
	bad_pubkey("ph-ed25519 " RFC_PK_B64 "#c", "not 32 bytes");
	bad_pubkey("ph-ed25519 " RFC_PK_B64 ",", "not 32 bytes");
	bad_pubkey("ph-ed25519 "
	           "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURoA",
	           "not 32 bytes");
	/* the last character carries 2 bits of the key and 4 that must be 0 ('o' is 40) */
	bad_pubkey("ph-ed25519 "
	           "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURp=",
	           "not 32 bytes");
	bad_pubkey("ph-ed25519 "
	           "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURr=",
	           "not 32 bytes");
	/* a NUL inside the given length is not base64 either */
	{
		static const char s[] = "ph-ed25519 11qYAYKxCrfVS/7TyWQHOg7hcvP\0piMlrwIaaPcHURo=";
		uint8_t pub[PH_KEY_LEN];
		const char *why = NULL;

		assert_int_equal(ph_pubkey_parse(s, sizeof(s) - 1, pub, &why), -EINVAL);
		assert_non_null(why);
	}
}

static void test_sign_verify(void **state)
{
	static const char msg[] = "pinhole relay handshake transcript";
	uint8_t pub[PH_KEY_LEN], other[PH_KEY_LEN], sig[64], sig2[64], m[sizeof(msg)];
	struct ph_key *k, *k2;
	char why[512];
	EVP_PKEY *e;
	EVP_MD_CTX *ctx;

	(void)state;
	assert_int_equal(ph_key_generate(at("signer"), &k, why, sizeof(why)), 0);
	assert_int_equal(ph_key_generate(at("other"), &k2, why, sizeof(why)), 0);
	ph_key_public(k, pub);
	ph_key_public(k2, other);
	ph_key_free(k2);

	assert_int_equal(ph_key_sign(k, (const uint8_t *)msg, sizeof(msg), sig), 0);
	assert_int_equal(ph_key_verify(pub, (const uint8_t *)msg, sizeof(msg), sig), 0);
	/* Ed25519 is deterministic */
	assert_int_equal(ph_key_sign(k, (const uint8_t *)msg, sizeof(msg), sig2), 0);
	assert_memory_equal(sig, sig2, 64);

	/* OpenSSL, on its own, agrees */
	e = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, PH_KEY_LEN);
	ctx = EVP_MD_CTX_new();
	assert_non_null(e);
	assert_non_null(ctx);
	assert_int_equal(EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, e), 1);
	assert_int_equal(EVP_DigestVerify(ctx, sig, 64, (const uint8_t *)msg, sizeof(msg)), 1);
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(e);

	/* any bit flipped: in the signature, the message or the key */
	for (size_t bit = 0; bit < 64 * 8; bit += 7) {
		memcpy(sig2, sig, 64);
		sig2[bit / 8] ^= (uint8_t)(1u << bit % 8);
		assert_int_equal(ph_key_verify(pub, (const uint8_t *)msg, sizeof(msg), sig2),
		                 -EBADMSG);
	}
	for (size_t bit = 0; bit < sizeof(msg) * 8; bit += 5) {
		memcpy(m, msg, sizeof(msg));
		m[bit / 8] ^= (uint8_t)(1u << bit % 8);
		assert_int_equal(ph_key_verify(pub, m, sizeof(m), sig), -EBADMSG);
	}
	assert_int_equal(ph_key_verify(pub, (const uint8_t *)msg, sizeof(msg) - 1, sig), -EBADMSG);
	assert_int_equal(ph_key_verify(other, (const uint8_t *)msg, sizeof(msg), sig), -EBADMSG);
	memcpy(other, pub, PH_KEY_LEN);
	other[0] ^= 1;
	assert_int_equal(ph_key_verify(other, (const uint8_t *)msg, sizeof(msg), sig), -EBADMSG);

	/* the empty message */
	assert_int_equal(ph_key_sign(k, m, 0, sig), 0);
	assert_int_equal(ph_key_verify(pub, m, 0, sig), 0);
	ph_key_free(k);
}

/* ---- authorized keys ---- */

#define KEY "ph-ed25519 " RFC_PK_B64

/* line parses to 1: a key, rfc_pk */
static void auth_ok(const char *line, struct ph_auth_key *k)
{
	char why[256] = "unset";
	int r = ph_auth_parse_line(line, k, why, sizeof(why));

	if (r != 1)
		print_error("'%s': %d, %s\n", line, r, why);
	assert_int_equal(r, 1);
	assert_string_equal(why, "");
	assert_memory_equal(k->pub, rfc_pk, PH_KEY_LEN);
}

/* line is refused with a reason that names word and says want */
static void auth_bad(const char *line, const char *word, const char *want)
{
	struct ph_auth_key k;
	char why[256] = "", quoted[128];
	int r = ph_auth_parse_line(line, &k, why, sizeof(why));

	if (r != -EINVAL)
		print_error("'%s' was not refused (%d)\n", line, r);
	assert_int_equal(r, -EINVAL);
	snprintf(quoted, sizeof(quoted), "'%s'", word);
	assert_has(why, quoted);
	assert_has(why, want);
}

static void test_auth_blank_and_comments(void **state)
{
	static const char *const lines[] = {
		"",
		"\n",
		"\r\n",
		"   ",
		"\t \t\n",
		"#",
		"# a comment " KEY,
		"   # indented",
		"#max=3 " KEY,
	};
	struct ph_auth_key k;
	char why[256];

	(void)state;
	for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
		memset(&k, 0xa5, sizeof(k));
		strcpy(why, "unset");
		assert_int_equal(ph_auth_parse_line(lines[i], &k, why, sizeof(why)), 0);
		assert_string_equal(why, "");
	}
}

static void test_auth_key_only(void **state)
{
	struct ph_auth_key k;

	(void)state;
	auth_ok(KEY, &k);
	assert_string_equal(k.comment, "");
	assert_int_equal(k.nnames, 0);
	assert_int_equal(k.nranges, 0);
	assert_int_equal(k.max_services, 0);
	auth_ok(KEY "\n", &k);
	assert_string_equal(k.comment, "");
	auth_ok(KEY "\r\n", &k);
	assert_string_equal(k.comment, "");
	auth_ok("  \t" KEY " \t", &k);
	assert_string_equal(k.comment, "");
	assert_int_equal(k.nnames + k.nranges + k.max_services, 0);

	auth_ok(KEY " alice@laptop", &k);
	assert_string_equal(k.comment, "alice@laptop");
	auth_ok(KEY " \talice's laptop, 2024 # not a comment marker\r\n", &k);
	assert_string_equal(k.comment, "alice's laptop, 2024 # not a comment marker");
	auth_ok(KEY " names=web max=1", &k); /* options after the key are only a comment */
	assert_string_equal(k.comment, "names=web max=1");
	assert_int_equal(k.nnames + k.nranges + k.max_services, 0);
	/* a long comment is cut to fit, still terminated */
	auth_ok(KEY " 0123456789012345678901234567890123456789012345678901234567890123456789", &k);
	assert_int_equal(strlen(k.comment), sizeof(k.comment) - 1);
	assert_memory_equal(k.comment, "0123456789", 10);
}

static void test_auth_options(void **state)
{
	struct ph_auth_key k;

	(void)state;
	auth_ok("names=web " KEY, &k);
	assert_int_equal(k.nnames, 1);
	assert_string_equal(k.names[0], "web");
	assert_int_equal(k.nranges, 0);
	assert_int_equal(k.max_services, 0);
	assert_string_equal(k.comment, "");

	auth_ok("names=web|ssh|my-app_2.test " KEY " bob", &k);
	assert_int_equal(k.nnames, 3);
	assert_string_equal(k.names[0], "web");
	assert_string_equal(k.names[1], "ssh");
	assert_string_equal(k.names[2], "my-app_2.test");
	assert_string_equal(k.comment, "bob");

	auth_ok("names=abcdefghijabcdefghijabcdefghij12 " KEY, &k); /* 32: the longest */
	assert_string_equal(k.names[0], "abcdefghijabcdefghijabcdefghij12");

	auth_ok("ports=443 " KEY, &k);
	assert_int_equal(k.nranges, 1);
	assert_int_equal(k.lo[0], 443);
	assert_int_equal(k.hi[0], 443);
	assert_int_equal(k.nnames, 0);

	auth_ok("ports=20000-20099|443|1-1|65535 " KEY, &k);
	assert_int_equal(k.nranges, 4);
	assert_int_equal(k.lo[0], 20000);
	assert_int_equal(k.hi[0], 20099);
	assert_int_equal(k.lo[1], 443);
	assert_int_equal(k.hi[1], 443);
	assert_int_equal(k.lo[2], 1);
	assert_int_equal(k.hi[2], 1);
	assert_int_equal(k.lo[3], 65535);
	assert_int_equal(k.hi[3], 65535);

	auth_ok("max=3 " KEY, &k);
	assert_int_equal(k.max_services, 3);
	auth_ok("max=65535 " KEY, &k);
	assert_int_equal(k.max_services, 65535);

	/* combined, in any order, the comment kept */
	auth_ok("names=a|b,ports=8000-8999,max=2\t" KEY " carol's box", &k);
	assert_int_equal(k.nnames, 2);
	assert_string_equal(k.names[0], "a");
	assert_string_equal(k.names[1], "b");
	assert_int_equal(k.nranges, 1);
	assert_int_equal(k.lo[0], 8000);
	assert_int_equal(k.hi[0], 8999);
	assert_int_equal(k.max_services, 2);
	assert_string_equal(k.comment, "carol's box");
	auth_ok("  max=1,ports=22,names=x " KEY "\n", &k);
	assert_int_equal(k.max_services, 1);
	assert_int_equal(k.nranges, 1);
	assert_int_equal(k.lo[0], 22);
	assert_int_equal(k.nnames, 1);
	assert_string_equal(k.names[0], "x");
	assert_string_equal(k.comment, "");

	/* the limits: 8 names, 8 ranges */
	auth_ok("names=a|b|c|d|e|f|g|h,ports=1|2|3|4|5|6|7|8-9 " KEY, &k);
	assert_int_equal(k.nnames, PH_AUTH_NAMES);
	assert_string_equal(k.names[7], "h");
	assert_int_equal(k.nranges, PH_AUTH_RANGES);
	assert_int_equal(k.lo[7], 8);
	assert_int_equal(k.hi[7], 9);
}

static void test_auth_bad(void **state)
{
	(void)state;
	/* not an option */
	auth_bad("foo=1 " KEY, "foo=1", "names=, ports=, max=, sessions=, reach= or connect=");
	auth_bad("names " KEY, "names", "names=, ports=, max=, sessions=, reach= or connect=");
	auth_bad("Names=a " KEY, "Names=a", "names=, ports=, max=, sessions=, reach= or connect=");
	auth_bad("max=1,,names=a " KEY, "", "names=, ports=, max=, sessions=, reach= or connect=");
	auth_bad("ssh-ed25519 " B64_32, "ssh-ed25519",
	         "names=, ports=, max=, sessions=, reach= or connect=");
	/* names */
	auth_bad("names=a|b|c|d|e|f|g|h|i " KEY, "names=a|b|c|d|e|f|g|h|i", "up to 8 names");
	auth_bad("names=a,names=b|c|d|e|f|g|h|i " KEY, "names=b|c|d|e|f|g|h|i", "up to 8 names");
	auth_bad("names=abcdefghijabcdefghijabcdefghij123 " KEY,
	         "names=abcdefghijabcdefghijabcdefghij123", "1-32 characters");
	auth_bad("names=a||b " KEY, "names=a||b", "1-32 characters");
	auth_bad("names=|a " KEY, "names=|a", "1-32 characters");
	auth_bad("names=a| " KEY, "names=a|", "1-32 characters");
	auth_bad("names= " KEY, "names=", "1-32 characters");
	auth_bad("names=we/b " KEY, "names=we/b", "letters, digits");
	auth_bad("names=a=b " KEY, "names=a=b", "letters, digits");
	auth_bad("names=caf\xc3\xa9 " KEY, "names=caf\xc3\xa9", "letters, digits");
	/* ports */
	auth_bad("ports=0 " KEY, "ports=0", "ports=20000-20099|443");
	auth_bad("ports=65536 " KEY, "ports=65536", "up to 8 ports");
	auth_bad("ports=99999 " KEY, "ports=99999", "up to 8 ports");
	auth_bad("ports=000443 " KEY, "ports=000443", "up to 8 ports");
	auth_bad("ports=0-10 " KEY, "ports=0-10", "up to 8 ports");
	auth_bad("ports=10-65536 " KEY, "ports=10-65536", "up to 8 ports");
	auth_bad("ports=20099-20000 " KEY, "ports=20099-20000", "up to 8 ports");
	auth_bad("ports=1|2|3|4|5|6|7|8|9 " KEY, "ports=1|2|3|4|5|6|7|8|9", "up to 8 ports");
	auth_bad("ports=1-2|3-4|5-6|7-8|9-10|11-12|13-14|15-16|17-18 " KEY,
	         "ports=1-2|3-4|5-6|7-8|9-10|11-12|13-14|15-16|17-18", "up to 8 ports");
	auth_bad("ports=80- " KEY, "ports=80-", "up to 8 ports");
	auth_bad("ports=-80 " KEY, "ports=-80", "up to 8 ports");
	auth_bad("ports=1-2-3 " KEY, "ports=1-2-3", "up to 8 ports");
	auth_bad("ports=http " KEY, "ports=http", "up to 8 ports");
	auth_bad("ports=+80 " KEY, "ports=+80", "up to 8 ports");
	auth_bad("ports=80||81 " KEY, "ports=80||81", "up to 8 ports");
	auth_bad("ports=80| " KEY, "ports=80|", "up to 8 ports");
	auth_bad("ports= " KEY, "ports=", "up to 8 ports");
	/* max */
	auth_bad("max=0 " KEY, "max=0", "1-65535");
	auth_bad("max=65536 " KEY, "max=65536", "1-65535");
	auth_bad("max= " KEY, "max=", "1-65535");
	auth_bad("max=-1 " KEY, "max=-1", "1-65535");
	auth_bad("max=3x " KEY, "max=3x", "1-65535");
	/* the option before a bad one does not hide it, nor the other way round */
	auth_bad("max=2,ports=0 " KEY, "ports=0", "up to 8 ports");
	auth_bad("ports=0,max=2 " KEY, "ports=0", "up to 8 ports");
	/* the key */
	auth_bad("max=2", "", "not a pinhole public key");
	auth_bad("max=2 ", "", "not a pinhole public key");
	auth_bad("max=2 max=3 " KEY, "max=3", "not a pinhole public key");
	auth_bad("ph-ed25519", "ph-ed25519", "not a pinhole public key");
	auth_bad("ph-ed25519 " B64_31, "ph-ed25519", "not 32 bytes");
	auth_bad("ph-ed25519 " B64_33 " c", "ph-ed25519", "not 32 bytes");
	auth_bad("names=a ph-ed25519 " RFC_PK_B64 "x", "ph-ed25519", "not 32 bytes");
	auth_bad("ph-ed25519 " B64_32 "x", "ph-ed25519", "not 32 bytes");
}

static void test_auth_allows(void **state)
{
	struct ph_auth_key k;

	(void)state;
	/* no limits: anything */
	auth_ok(KEY, &k);
	assert_true(ph_auth_allows(&k, NULL, 0));
	assert_true(ph_auth_allows(&k, NULL, 443));
	assert_true(ph_auth_allows(&k, "web", 1));
	assert_true(ph_auth_allows(&k, "anything", 65535));

	/* names only: those names, any port; never unnamed */
	auth_ok("names=web|ssh " KEY, &k);
	assert_true(ph_auth_allows(&k, "web", 80));
	assert_true(ph_auth_allows(&k, "ssh", 65535));
	assert_true(ph_auth_allows(&k, "ssh", 1));
	assert_false(ph_auth_allows(&k, "we", 80));
	assert_false(ph_auth_allows(&k, "webb", 80));
	assert_false(ph_auth_allows(&k, "WEB", 80));
	assert_false(ph_auth_allows(&k, "", 80));
	assert_false(ph_auth_allows(&k, NULL, 80));

	/* ports only: those ports (bounds included), any name or none */
	auth_ok("ports=20000-20099|443 " KEY, &k);
	assert_true(ph_auth_allows(&k, NULL, 443));
	assert_true(ph_auth_allows(&k, "web", 20000));
	assert_true(ph_auth_allows(&k, "ssh", 20050));
	assert_true(ph_auth_allows(&k, NULL, 20099));
	assert_false(ph_auth_allows(&k, NULL, 19999));
	assert_false(ph_auth_allows(&k, "web", 20100));
	assert_false(ph_auth_allows(&k, "web", 442));
	assert_false(ph_auth_allows(&k, "web", 444));
	assert_false(ph_auth_allows(&k, NULL, 0));

	/* both: both must hold */
	auth_ok("names=web,ports=8000-8001 " KEY, &k);
	assert_true(ph_auth_allows(&k, "web", 8000));
	assert_true(ph_auth_allows(&k, "web", 8001));
	assert_false(ph_auth_allows(&k, "web", 8002));
	assert_false(ph_auth_allows(&k, "ssh", 8000));
	assert_false(ph_auth_allows(&k, NULL, 8000));
	assert_false(ph_auth_allows(&k, "ssh", 22));

	/* max is not ph_auth_allows's business */
	auth_ok("max=1 " KEY, &k);
	assert_true(ph_auth_allows(&k, "web", 80));
}

/*
 * The relay judges a name and a port on their own (a port-0 REGISTER has a name but no port
 * yet; a take-back has a port): with names= and ports= on one key, a name is judged by
 * names= alone and a port by ports= alone. This was the bug: the relay asked
 * ph_auth_allows(k, name, 0) and (k, NULL, port), so such a key could register nothing.
 */
static void test_auth_name_and_port_apart(void **state)
{
	struct ph_auth_key k;

	(void)state;
	auth_ok("names=web,ports=8000-8001|443 " KEY, &k);
	assert_true(ph_auth_name_ok(&k, "web"));
	assert_false(ph_auth_name_ok(&k, "ssh"));
	assert_false(ph_auth_name_ok(&k, ""));
	assert_false(ph_auth_name_ok(&k, NULL));
	assert_true(ph_auth_port_named(&k, 8000));
	assert_true(ph_auth_port_named(&k, 443));
	assert_false(ph_auth_port_named(&k, 0));
	assert_false(ph_auth_port_named(&k, 8002));
	auth_ok(KEY, &k); /* no limits: any name, and no port is *named* (privileged stay out) */
	assert_true(ph_auth_name_ok(&k, NULL));
	assert_true(ph_auth_name_ok(&k, "x"));
	assert_false(ph_auth_port_named(&k, 81));
}

/* reach= and connect=: what a key may visit and where the relay may connect for it */
static void test_auth_grants(void **state)
{
	struct ph_auth_key k;
	struct ph_addr a;

	(void)state;
	auth_ok(KEY, &k); /* no grant: nothing */
	assert_false(ph_auth_reach_ok(&k, "db"));
	assert_false(ph_auth_connect_host(&k, "10.0.0.5", 22));
	auth_ok("reach=db|web,connect=10.0.0.0/8:22-80|db.lan:5432|[::1]:22|127.0.0.1:9|*:443 " KEY,
	        &k);
	assert_true(ph_auth_reach_ok(&k, "db"));
	assert_true(ph_auth_reach_ok(&k, "web"));
	assert_false(ph_auth_reach_ok(&k, "dbx"));
	assert_true(ph_auth_connect_host(&k, "10.1.2.3", 22));
	assert_true(ph_auth_connect_host(&k, "10.1.2.3", 80));
	assert_false(ph_auth_connect_host(&k, "10.1.2.3", 81));
	assert_false(ph_auth_connect_host(&k, "11.1.2.3", 22));
	assert_true(ph_auth_connect_host(&k, "DB.lan", 5432)); /* names: any case */
	assert_false(ph_auth_connect_host(&k, "db.lan", 5433));
	assert_true(ph_auth_connect_host(&k, "other.lan", 22));    /* may lead into 10/8: later */
	assert_false(ph_auth_connect_host(&k, "other.lan", 8080)); /* no entry has the port */
	assert_true(ph_auth_connect_host(&k, "example.com", 443));
	/* after the lookup: an address of a network, the name's own, or * beyond the relay */
	assert_int_equal(ph_addr_from_literal("10.9.9.9", 22, &a), 0);
	assert_true(ph_auth_connect_addr(&k, "other.lan", &a, false));
	assert_int_equal(ph_addr_from_literal("192.0.2.1", 443, &a), 0);
	assert_true(ph_auth_connect_addr(&k, "example.com", &a, false));
	/* the relay itself: * does not reach it, nor a network that is not its loopback... */
	assert_int_equal(ph_addr_from_literal("127.0.0.1", 443, &a), 0);
	assert_false(ph_auth_connect_addr(&k, "example.com", &a, true));
	assert_int_equal(ph_addr_from_literal("127.0.0.1", 9, &a), 0);
	assert_true(ph_auth_connect_addr(&k, NULL, &a, true)); /* ...but an address written out */
	assert_int_equal(ph_addr_from_literal("::1", 22, &a), 0);
	assert_true(ph_auth_connect_addr(&k, NULL, &a, true));
	assert_int_equal(ph_addr_from_literal("127.0.0.1", 5432, &a), 0);
	assert_true(ph_auth_connect_addr(&k, "db.lan", &a, true)); /* the name the operator wrote */
	auth_ok("connect=0.0.0.0/0:*,reach=* " KEY, &k);
	assert_true(ph_auth_reach_ok(&k, "anything"));
	assert_int_equal(ph_addr_from_literal("127.0.0.1", 22, &a), 0);
	assert_false(ph_auth_connect_addr(&k, NULL, &a, true)); /* a /0 names nothing */
	assert_int_equal(ph_addr_from_literal("8.8.8.8", 53, &a), 0);
	assert_true(ph_auth_connect_addr(&k, NULL, &a, false));
	auth_bad("reach= " KEY, "reach=", "reach=a|b|*");
	auth_bad("reach=a/b " KEY, "reach=a/b", "letters, digits");
	auth_bad("connect=10.0.0.1 " KEY, "connect=10.0.0.1", "connect=HOST:PORT");
	auth_bad("connect=10.0.0.1:0 " KEY, "connect=10.0.0.1:0", "connect=HOST:PORT");
	auth_bad("connect=a:80-70 " KEY, "connect=a:80-70", "connect=HOST:PORT");
	auth_bad("connect=[::1:22 " KEY, "connect=[::1:22", "connect=HOST:PORT");
	auth_bad("connect=a b:22 " KEY, "connect=a", "connect=HOST:PORT");
	auth_bad("connect=:22 " KEY, "connect=:22", "connect=HOST:PORT");
}

static void test_auth_sessions(void **state)
{
	struct ph_auth_key k;
	char why[256];

	(void)state;
	auth_ok(KEY, &k);
	assert_int_equal(k.max_sessions, 0); /* the relay's default, PH_AUTH_SESSIONS */
	auth_ok("sessions=2,max=3 " KEY, &k);
	assert_int_equal(k.max_sessions, 2);
	assert_int_equal(k.max_services, 3);
	assert_int_equal(ph_auth_parse_line("sessions=0 " KEY, &k, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "sessions=N"));
	assert_int_equal(ph_auth_parse_line("sessions=1025 " KEY, &k, why, sizeof(why)), -EINVAL);
	assert_int_equal(ph_auth_parse_line("sessions= " KEY, &k, why, sizeof(why)), -EINVAL);
}

/* ---- StrictModes ---- */

/* ph_strict_modes on path, opened here (read-only, never blocking on a FIFO). */
static int strict(const char *path, char *why, size_t whylen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK), err;

	assert_int_not_equal(fd, -1);
	why[0] = '\0';
	err = ph_strict_modes(fd, path, why, whylen);
	close(fd);
	return err;
}

static void test_strict_modes(void **state)
{
	char why[1024], d[256], f[256], want[600];
	int fd;

	(void)state;
	snprintf(d, sizeof(d), "%s", at("trust"));
	snprintf(f, sizeof(f), "%s", at("trust/known"));
	assert_int_equal(mkdir(d, 0700), 0);
	write_file(f, "x\n", 0600);
	assert_int_equal(strict(f, why, sizeof(why)), 0);
	assert_int_equal(chmod(f, 0644), 0); /* others may read it: it holds nothing secret */
	assert_int_equal(strict(f, why, sizeof(why)), 0);

	/* group or others may write it */
	assert_int_equal(chmod(f, 0620), 0);
	assert_int_equal(strict(f, why, sizeof(why)), -EPERM);
	snprintf(want, sizeof(want),
	         "%s: group or others may write it (mode 0620): not trusted; "
	         "chmod go-w %s",
	         f, f);
	assert_string_equal(why, want);
	assert_int_equal(chmod(f, 0602), 0);
	assert_int_equal(strict(f, why, sizeof(why)), -EPERM);
	assert_has(why, "chmod go-w");
	assert_int_equal(chmod(f, 0600), 0);

	/* its directory likewise, unless sticky (only a file's owner may replace it there) */
	assert_int_equal(chmod(d, 0770), 0);
	assert_int_equal(strict(f, why, sizeof(why)), -EPERM);
	snprintf(want, sizeof(want),
	         "%s: group or others may write its directory (mode 0770): "
	         "not trusted; chmod go-w %s",
	         f, d);
	assert_string_equal(why, want);
	assert_int_equal(chmod(d, 0703), 0);
	assert_int_equal(strict(f, why, sizeof(why)), -EPERM);
	assert_int_equal(chmod(d, 01777), 0);
	assert_int_equal(strict(f, why, sizeof(why)), 0);
	assert_int_equal(chmod(d, 0755), 0);
	assert_int_equal(strict(f, why, sizeof(why)), 0);

	/* through a symbolic link: the directory judged is the file's own */
	assert_int_equal(mkdir(at("links"), 0700), 0);
	assert_int_equal(symlink(f, at("links/known")), 0);
	assert_int_equal(strict(at("links/known"), why, sizeof(why)), 0);
	assert_int_equal(chmod(d, 0777), 0);
	assert_int_equal(strict(at("links/known"), why, sizeof(why)), -EPERM);
	snprintf(want, sizeof(want), "chmod go-w %s", d);
	assert_has(why, want);
	assert_int_equal(chmod(d, 0700), 0);

	/* another user's file or directory (only root can make one here) */
	if (geteuid() == 0) {
		assert_int_equal(chown(f, 65534, 65534), 0);
		assert_int_equal(strict(f, why, sizeof(why)), -EPERM);
		assert_has(why, "owned by uid 65534, neither root nor this process (uid 0)");
		assert_int_equal(chown(f, 0, 0), 0);
		assert_int_equal(chown(d, 65534, 65534), 0);
		assert_int_equal(strict(f, why, sizeof(why)), -EPERM);
		assert_has(why, "its directory");
		assert_has(why, "owned by uid 65534");
		assert_int_equal(chown(d, 0, 0), 0);
		assert_int_equal(strict(f, why, sizeof(why)), 0);
	}

	/* not a regular file */
	assert_int_equal(mkfifo(at("trust/fifo"), 0600), 0);
	assert_int_equal(strict(at("trust/fifo"), why, sizeof(why)), -EINVAL);
	assert_has(why, "not a regular file");

	/* what is open is judged: a file put in its place after it was opened is not it */
	fd = open(f, O_RDONLY | O_CLOEXEC);
	assert_int_not_equal(fd, -1);
	write_file(at("trust/other"), "y\n", 0600);
	assert_int_equal(rename(at("trust/other"), f), 0);
	assert_int_equal(ph_strict_modes(fd, f, why, sizeof(why)), -ESTALE);
	assert_has(why, "replaced");
	close(fd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_generate),
		cmocka_unit_test(test_generate_fails),
		cmocka_unit_test(test_load_refuses),
		cmocka_unit_test(test_load_other_key_types),
		cmocka_unit_test(test_load_encrypted),
		cmocka_unit_test(test_rfc8032_vector),
		cmocka_unit_test(test_fingerprint),
		cmocka_unit_test(test_pubkey_round_trip),
		cmocka_unit_test(test_pubkey_bad),
		cmocka_unit_test(test_sign_verify),
		cmocka_unit_test(test_auth_blank_and_comments),
		cmocka_unit_test(test_auth_key_only),
		cmocka_unit_test(test_auth_options),
		cmocka_unit_test(test_auth_bad),
		cmocka_unit_test(test_auth_allows),
		cmocka_unit_test(test_auth_name_and_port_apart),
		cmocka_unit_test(test_auth_sessions),
		cmocka_unit_test(test_auth_grants),

		cmocka_unit_test(test_strict_modes),
	};

	return cmocka_run_group_tests(tests, setup_dir, remove_dir);
}
