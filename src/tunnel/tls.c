#include "tunnel/tls.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

struct tls_peer {
	ph_tls_peer_fn fn;
	void *arg;
};

static int peer_index = -1; /* SSL_CTX ex_data slot of struct tls_peer */

/* A self-signed certificate for key: only its public key matters to the peer. */
static X509 *make_cert(EVP_PKEY *k)
{
	X509 *x = X509_new();
	X509_NAME *name;
	uint8_t serial[8];
	ASN1_INTEGER *sn;
	BIGNUM *bn;

	if (x == NULL)
		return NULL;
	RAND_bytes(serial, sizeof(serial));
	serial[0] &= 0x7f; /* positive */
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	sn = bn != NULL ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
	name = X509_get_subject_name(x);
	if (sn == NULL || X509_set_version(x, 2) != 1 || X509_set_serialNumber(x, sn) != 1 ||
	    X509_gmtime_adj(X509_getm_notBefore(x), -86400) == NULL ||
	    X509_gmtime_adj(X509_getm_notAfter(x), 100L * 365 * 86400) == NULL ||
	    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"pinhole",
	                               -1, -1, 0) != 1 ||
	    X509_set_issuer_name(x, name) != 1 || X509_set_pubkey(x, k) != 1 ||
	    X509_sign(x, k, NULL) == 0) {
		X509_free(x);
		x = NULL;
	}
	ASN1_INTEGER_free(sn);
	BN_free(bn);
	return x;
}

/* The raw Ed25519 key of a certificate. Returns 0 or -EINVAL (another kind of key). */
static int cert_key(X509 *x, uint8_t pub[PH_KEY_LEN])
{
	EVP_PKEY *k = X509_get0_pubkey(x);
	size_t n = PH_KEY_LEN;

	if (k == NULL || EVP_PKEY_get_id(k) != EVP_PKEY_ED25519 ||
	    EVP_PKEY_get_raw_public_key(k, pub, &n) != 1 || n != PH_KEY_LEN)
		return -EINVAL;
	return 0;
}

/*
 * The peer's certificate is self-signed, so the chain check fails by design: what decides
 * is its key, which TLS 1.3's CertificateVerify proves the peer holds.
 */
static int verify_cb(int preverify_ok, X509_STORE_CTX *st)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(st, SSL_get_ex_data_X509_STORE_CTX_idx());
	const struct tls_peer *p;
	uint8_t pub[PH_KEY_LEN];
	X509 *x;

	(void)preverify_ok;
	if (X509_STORE_CTX_get_error_depth(st) != 0)
		return 1; /* only the peer's own certificate counts */
	x = X509_STORE_CTX_get_current_cert(st);
	p = ssl != NULL ? SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), peer_index) : NULL;
	if (x == NULL || p == NULL || cert_key(x, pub) < 0)
		return 0;
	if (!p->fn(p->arg, pub))
		return 0;
	X509_STORE_CTX_set_error(st, X509_V_OK);
	return 1;
}

static void peer_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	(void)parent;
	(void)ad;
	(void)idx;
	(void)argl;
	(void)argp;
	OPENSSL_free(ptr);
}

struct ssl_ctx_st *ph_tls_ctx_new(struct ph_key *key, bool server, ph_tls_peer_fn peer_ok,
                                  void *arg, char *why, size_t whylen)
{
	EVP_PKEY *k = (EVP_PKEY *)key;
	struct tls_peer *p = NULL;
	SSL_CTX *ctx;
	X509 *cert;

	if (peer_index < 0)
		peer_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, peer_free);
	ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	cert = make_cert(k);
	if (peer_index >= 0)
		p = OPENSSL_zalloc(sizeof(*p));
	if (ctx == NULL || cert == NULL || p == NULL) {
		snprintf(why, whylen, "cannot set up TLS (OpenSSL: out of memory?)");
		goto fail;
	}
	p->fn = peer_ok;
	p->arg = arg;
	if (SSL_CTX_set_ex_data(ctx, peer_index, p) != 1) {
		snprintf(why, whylen, "cannot set up TLS");
		goto fail;
	}
	p = NULL; /* the context owns it */
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
	    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1 ||
	    SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, k) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		snprintf(why, whylen, "cannot set up TLS 1.3 with this key (OpenSSL)");
		goto fail;
	}
	/* no resumption: every session shows its key again */
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	/*
	 * AES-128-GCM first: a fifth less CPU per byte than OpenSSL's default AES-256-GCM
	 * (the relay's cost is per byte; docs/PERFORMANCE.md); the others stay acceptable.
	 */
	(void)SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
	                                    "TLS_CHACHA20_POLY1305_SHA256");
	if (server)
		SSL_CTX_set_num_tickets(ctx, 0);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
	                   verify_cb);
	X509_free(cert);
	return ctx;

fail:
	OPENSSL_free(p);
	X509_free(cert);
	SSL_CTX_free(ctx);
	return NULL;
}

void ph_tls_ctx_free(struct ssl_ctx_st *ctx)
{
	SSL_CTX_free(ctx);
}

int ph_tls_peer_key(struct ssl_st *ssl, uint8_t pub[PH_KEY_LEN])
{
	X509 *x = SSL_get0_peer_certificate(ssl);

	return x != NULL && cert_key(x, pub) == 0 ? 0 : -ENOENT;
}
