/*
 * Fuzzes the TLS 1.3 handshake of relay sessions (tunnel/tls.h) with the bytes a stranger
 * sends first: anyone who reaches the relay's port gets this far before any key is
 * checked. The contexts are pinhole's own (ph_tls_ctx_new, made once from a key generated
 * at the first input), the connections in memory (BIO_s_mem).
 *
 * The input: byte 0 picks the side (bit 0 clear: the relay's server end, fed the input as
 * a client's first flight; set: a client end that has sent its real ClientHello, fed the
 * input as the server's answer), byte 1 cuts the rest in two (at byte/256 of its length)
 * that arrive one after the other, with a handshake step after each. Bit 1 of byte 0 turns
 * the client's middlebox compatibility off: its ClientHello then carries no random session
 * id, which a ServerHello must echo, so the input can get past ServerHello (to a
 * HelloRetryRequest, a second ClientHello, the key share).
 *
 * The contract: the handshake never completes (no one can finish it without the keys),
 * the peer check is never reached (the peer's certificate is encrypted under keys the
 * input cannot know), each step asks for more bytes or fails (SSL_ERROR_SSL, or
 * SSL_ERROR_ZERO_RETURN for a close_notify), and everything is freed (LeakSanitizer).
 * OpenSSL's own code is not instrumented: what guides the fuzzer is described at note().
 */
#include "tunnel/tls.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tunnel/keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_handshake: %s failed (size %zu)\n", #cond, size);    \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static unsigned peer_calls;

static bool peer_ok(void *arg, const uint8_t pub[PH_KEY_LEN])
{
	(void)arg;
	(void)pub;
	peer_calls++;
	return true;
}

/*
 * The two contexts, made once and kept for the process (still reachable: no leak). The
 * key is generated into a scratch directory that is removed at once: ph_key_generate
 * only writes to a file.
 */
static void contexts(SSL_CTX **server, SSL_CTX **client)
{
	static SSL_CTX *sctx, *cctx;
	static struct ph_key *key;
	char dir[] = "/tmp/pinhole-fuzz-XXXXXX", path[64], why[256];

	if (sctx == NULL) {
		if (mkdtemp(dir) == NULL) {
			perror("mkdtemp");
			abort();
		}
		snprintf(path, sizeof(path), "%s/key", dir);
		if (ph_key_generate(path, &key, why, sizeof(why)) < 0) {
			fprintf(stderr, "fuzz_handshake: %s\n", why);
			abort();
		}
		unlink(path);
		rmdir(dir);
		sctx = ph_tls_ctx_new(key, true, peer_ok, NULL, why, sizeof(why));
		cctx = ph_tls_ctx_new(key, false, peer_ok, NULL, why, sizeof(why));
		if (sctx == NULL || cctx == NULL) {
			fprintf(stderr, "fuzz_handshake: %s\n", why);
			abort();
		}
	}
	*server = sctx;
	*client = cctx;
}

/*
 * OpenSSL is not built for coverage, so libFuzzer would see none of its paths and keep
 * only the few inputs that differ in this file. What each step leaves behind - the
 * handshake state, the first error's library and reason, the order of magnitude of what
 * was written - is given to libFuzzer as extra counters instead, so an input that gets
 * further into the handshake, or fails at a check not failed before, is kept and mutated.
 */
#define FEEDBACK 8192
__attribute__((section("__libfuzzer_extra_counters"), used)) static uint8_t feedback[FEEDBACK];

static void note(unsigned n, SSL *ssl, BIO *wbio)
{
	unsigned long err = ERR_peek_error();
	size_t out = BIO_ctrl_pending(wbio);
	uint32_t h, mag = 0;

	while (out != 0) {
		mag++;
		out >>= 1;
	}
	h = n * 0x9e3779b1u;
	h = (h ^ (uint32_t)SSL_get_state(ssl)) * 0x85ebca6bu;
	h = (h ^ (uint32_t)ERR_GET_LIB(err)) * 0xc2b2ae35u;
	h = (h ^ (uint32_t)ERR_GET_REASON(err)) * 0x27d4eb2fu;
	h = (h ^ mag) * 0x165667b1u;
	feedback[(h ^ h >> 15) % FEEDBACK]++;
}

/* Handshake step n: it must not finish, and may only want more or fail. */
static void step(unsigned n, SSL *ssl, BIO *wbio, size_t size)
{
	int r = SSL_do_handshake(ssl);
	int e = SSL_get_error(ssl, r);

	CHECK(r != 1);
	/* ZERO_RETURN: a close_notify alert, which TLS 1.3 allows during the handshake */
	CHECK(e == SSL_ERROR_WANT_READ || e == SSL_ERROR_SSL || e == SSL_ERROR_ZERO_RETURN);
	CHECK(peer_calls == 0);
	note(n, ssl, wbio);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	SSL_CTX *sctx, *cctx;
	BIO *rbio, *wbio;
	size_t body, cut;
	bool client;
	SSL *ssl;

	if (size < 2)
		return 0;
	contexts(&sctx, &cctx);
	client = data[0] & 1;
	body = size - 2;
	cut = body * data[1] / 256;

	ssl = SSL_new(client ? cctx : sctx);
	rbio = BIO_new(BIO_s_mem());
	wbio = BIO_new(BIO_s_mem());
	if (ssl == NULL || rbio == NULL || wbio == NULL)
		abort();
	SSL_set_bio(ssl, rbio, wbio); /* ssl owns both */
	if (client) {
		if (data[0] & 2)
			SSL_clear_options(ssl, SSL_OP_ENABLE_MIDDLEBOX_COMPAT);
		SSL_set_connect_state(ssl);
		step(0, ssl, wbio, size); /* the ClientHello, into wbio */
		CHECK(BIO_ctrl_pending(wbio) > 0);
	} else {
		SSL_set_accept_state(ssl);
	}
	if (cut > 0) {
		CHECK(BIO_write(rbio, data + 2, (int)cut) == (int)cut);
		step(client ? 1 : 5, ssl, wbio, size);
	}
	if (body > cut) {
		CHECK(BIO_write(rbio, data + 2 + cut, (int)(body - cut)) == (int)(body - cut));
		step(client ? 2 : 6, ssl, wbio, size);
	}
	step(client ? 3 : 7, ssl, wbio, size); /* nothing new: it still does not finish */
	SSL_free(ssl);
	ERR_clear_error();
	return 0;
}
