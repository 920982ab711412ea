/*
 * TLS 1.3 for relay sessions (docs/PROTOCOL.md): each side presents a self-signed
 * certificate made at start from its Ed25519 key, and each checks only the peer's public
 * key - the relay against its authorized keys, the client against its pin. Chains, names
 * and dates mean nothing here, so no CA is involved and nothing expires.
 */
#ifndef PH_TUNNEL_TLS_H
#define PH_TUNNEL_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tunnel/keys.h"

struct ssl_ctx_st;
struct ssl_st;

/*
 * Decides whether a peer's public key is welcome: returns true to go on. arg is the
 * context's; the key is the peer certificate's raw Ed25519 key.
 */
typedef bool (*ph_tls_peer_fn)(void *arg, const uint8_t pub[PH_KEY_LEN]);

/*
 * A TLS 1.3-only context presenting key (a certificate made from it now), asking the
 * peer for its certificate (a server requires one) and calling peer_ok with its key
 * during the handshake. Returns the context (SSL_CTX), or NULL with a reason in why.
 */
struct ssl_ctx_st *ph_tls_ctx_new(struct ph_key *key, bool server, ph_tls_peer_fn peer_ok,
                                  void *arg, char *why, size_t whylen);

void ph_tls_ctx_free(struct ssl_ctx_st *ctx);

/* The peer's key of an established connection. Returns 0, or -ENOENT when none. */
int ph_tls_peer_key(struct ssl_st *ssl, uint8_t pub[PH_KEY_LEN]);

#endif /* PH_TUNNEL_TLS_H */
