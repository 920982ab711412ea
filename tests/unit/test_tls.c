/*
 * TLS 1.3 between two keys, in memory (a BIO pair): the handshake succeeds only when
 * each side's check accepts the other's key, and each then knows the other's key.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>

#include "tunnel/keys.h"
#include "tunnel/tls.h"

struct want {
	uint8_t pub[PH_KEY_LEN]; /* the key this side accepts */
	int calls;
};

static bool accept_if_known(void *arg, const uint8_t pub[PH_KEY_LEN])
{
	struct want *w = arg;

	w->calls++;
	return memcmp(w->pub, pub, PH_KEY_LEN) == 0;
}

static struct ph_key *new_key(char *dir, const char *name, uint8_t pub[PH_KEY_LEN])
{
	char path[256], why[256];
	struct ph_key *k;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	assert_int_equal(ph_key_generate(path, &k, why, sizeof(why)), 0);
	ph_key_public(k, pub);
	return k;
}

/* Runs both handshakes to the end. Returns true when both succeeded. */
static bool handshake(SSL *c, SSL *s)
{
	bool cdone = false, sdone = false;

	for (int i = 0; i < 100 && !(cdone && sdone); i++) {
		int rc = SSL_do_handshake(c), rs = SSL_do_handshake(s);

		if (rc == 1)
			cdone = true;
		else if (SSL_get_error(c, rc) != SSL_ERROR_WANT_READ)
			return false;
		if (rs == 1)
			sdone = true;
		else if (SSL_get_error(s, rs) != SSL_ERROR_WANT_READ)
			return false;
	}
	return cdone && sdone;
}

struct pair {
	SSL_CTX *cctx, *sctx;
	SSL *c, *s;
};

static void pair_make(struct pair *p, struct ph_key *ck, struct want *cw, struct ph_key *sk,
                      struct want *sw)
{
	char why[256];
	BIO *b1, *b2;

	p->cctx = ph_tls_ctx_new(ck, false, accept_if_known, cw, why, sizeof(why));
	p->sctx = ph_tls_ctx_new(sk, true, accept_if_known, sw, why, sizeof(why));
	assert_non_null(p->cctx);
	assert_non_null(p->sctx);
	p->c = SSL_new(p->cctx);
	p->s = SSL_new(p->sctx);
	assert_int_equal(BIO_new_bio_pair(&b1, 0, &b2, 0), 1);
	SSL_set_bio(p->c, b1, b1);
	SSL_set_bio(p->s, b2, b2);
	SSL_set_connect_state(p->c);
	SSL_set_accept_state(p->s);
}

static void pair_free(struct pair *p)
{
	SSL_free(p->c);
	SSL_free(p->s);
	ph_tls_ctx_free(p->cctx);
	ph_tls_ctx_free(p->sctx);
}

static void test_tls(void **state)
{
	char dir[] = "/tmp/ph-tls-XXXXXX", cmd[300];
	uint8_t cpub[PH_KEY_LEN], spub[PH_KEY_LEN], opub[PH_KEY_LEN], got[PH_KEY_LEN];
	struct ph_key *ck, *sk, *other;
	struct want cw, sw;
	struct pair p;
	char buf[16];

	(void)state;
	assert_non_null(mkdtemp(dir));
	ck = new_key(dir, "client", cpub);
	sk = new_key(dir, "server", spub);
	other = new_key(dir, "other", opub);

	/* each accepts the other: TLS 1.3, and each sees the other's key */
	memcpy(cw.pub, spub, PH_KEY_LEN);
	memcpy(sw.pub, cpub, PH_KEY_LEN);
	cw.calls = sw.calls = 0;
	pair_make(&p, ck, &cw, sk, &sw);
	assert_true(handshake(p.c, p.s));
	assert_int_equal(SSL_version(p.c), TLS1_3_VERSION);
	assert_true(cw.calls >= 1 && sw.calls >= 1);
	assert_int_equal(ph_tls_peer_key(p.c, got), 0);
	assert_memory_equal(got, spub, PH_KEY_LEN);
	assert_int_equal(ph_tls_peer_key(p.s, got), 0);
	assert_memory_equal(got, cpub, PH_KEY_LEN);
	assert_int_equal(SSL_write(p.c, "hello", 5), 5);
	assert_int_equal(SSL_read(p.s, buf, sizeof(buf)), 5);
	assert_memory_equal(buf, "hello", 5);
	pair_free(&p);

	/* the relay does not know this client's key */
	memcpy(sw.pub, opub, PH_KEY_LEN);
	pair_make(&p, ck, &cw, sk, &sw);
	assert_false(handshake(p.c, p.s));
	pair_free(&p);

	/* the client pinned another relay key */
	memcpy(sw.pub, cpub, PH_KEY_LEN);
	memcpy(cw.pub, opub, PH_KEY_LEN);
	pair_make(&p, ck, &cw, sk, &sw);
	assert_false(handshake(p.c, p.s));
	pair_free(&p);

	/* a client without a certificate is refused by the relay */
	{
		SSL_CTX *plain = SSL_CTX_new(TLS_client_method());
		char why[256];
		SSL_CTX *sctx = ph_tls_ctx_new(sk, true, accept_if_known, &sw, why, sizeof(why));
		SSL *c = SSL_new(plain), *s = SSL_new(sctx);
		BIO *b1, *b2;

		SSL_CTX_set_verify(plain, SSL_VERIFY_NONE, NULL);
		assert_int_equal(BIO_new_bio_pair(&b1, 0, &b2, 0), 1);
		SSL_set_bio(c, b1, b1);
		SSL_set_bio(s, b2, b2);
		SSL_set_connect_state(c);
		SSL_set_accept_state(s);
		assert_false(handshake(c, s));
		assert_int_not_equal(ph_tls_peer_key(s, got), 0);
		SSL_free(c);
		SSL_free(s);
		SSL_CTX_free(plain);
		ph_tls_ctx_free(sctx);
	}

	/* a TLS 1.2-only client gets nowhere */
	{
		SSL_CTX *old = SSL_CTX_new(TLS_client_method());
		char why[256];
		SSL_CTX *sctx = ph_tls_ctx_new(sk, true, accept_if_known, &sw, why, sizeof(why));
		SSL *c, *s;
		BIO *b1, *b2;

		SSL_CTX_set_max_proto_version(old, TLS1_2_VERSION);
		c = SSL_new(old);
		s = SSL_new(sctx);
		assert_int_equal(BIO_new_bio_pair(&b1, 0, &b2, 0), 1);
		SSL_set_bio(c, b1, b1);
		SSL_set_bio(s, b2, b2);
		SSL_set_connect_state(c);
		SSL_set_accept_state(s);
		assert_false(handshake(c, s));
		SSL_free(c);
		SSL_free(s);
		SSL_CTX_free(old);
		ph_tls_ctx_free(sctx);
	}
	ph_key_free(ck);
	ph_key_free(sk);
	ph_key_free(other);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tls),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
