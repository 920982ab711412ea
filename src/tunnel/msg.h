/*
 * The relay's message payloads (docs/PROTOCOL.md): CTRL messages, and the addresses OPEN
 * and DGRAM carry. Every parser checks each length before it reads; text from the peer
 * is kept printable, since it reaches the log.
 */
#ifndef PH_TUNNEL_MSG_H
#define PH_TUNNEL_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "core/acl.h"
#include "core/addr.h"
#include "tunnel/keys.h"

enum ph_ctrl_type {
	PH_CTRL_REGISTER = 1,   /* client: expose a service */
	PH_CTRL_REGISTERED = 2, /* relay: it is public */
	PH_CTRL_REFUSED = 3,    /* relay: it is not, and why */
	PH_CTRL_UNREGISTER = 4, /* either: the service is gone */
	PH_CTRL_CHECK = 5,      /* client: probe my own public address on a port */
	PH_CTRL_CHECKED = 6,    /* relay: what the probe found */
	PH_CTRL_UDP_OPEN = 7,   /* client: a UDP channel to a target (`local udp://`) */
	PH_CTRL_UDP_OPENED = 8, /* relay: the channel's id (its DGRAMs' service id), its target */
};

#define PH_SVC_TCP 1
#define PH_SVC_UDP 2

/* REFUSED codes */
#define PH_REFUSE_LIMIT  1 /* outside the key's limits */
#define PH_REFUSE_INUSE  2 /* the port is taken */
#define PH_REFUSE_BIND   3 /* the relay could not open it */
#define PH_REFUSE_FULL   4 /* no free port in the range */
#define PH_REFUSE_BADREQ 5 /* a request the relay does not understand */

/* CHECKED results (`pinhole check`): what the relay's probe of the caller's port found */
#define PH_CHECK_OPEN          1 /* TCP: connected; UDP: an answer came back */
#define PH_CHECK_CLOSED        2 /* TCP: reset; UDP: ICMP port unreachable */
#define PH_CHECK_FILTERED      3 /* no answer (TCP), or ICMP host/net unreachable */
#define PH_CHECK_REFUSED       4 /* not probed: the text says why (another address, the rate) */
#define PH_CHECK_OPEN_FILTERED 5 /* UDP: nothing came back, not even ICMP */

/*
 * REGISTER's tail: options after the name, each a type u8, a length u8 and that many bytes.
 * A type below 0x80 must be understood (an unknown one refuses the message); from 0x80 on
 * an unknown one is skipped, so a later client can add hints an older relay may ignore.
 */
#define PH_TLV_MAX_CONNS 1 /* u32, not 0: visitors at once (`expose --max-conns`) */
#define PH_TLV_ALLOW     2 /* a CIDR: family u8 (4, 6), prefix u8, 4 or 16 address bytes */
#define PH_TLV_DENY      3 /* the same; allow and deny rules count in their order */
#define PH_TLV_PRIVATE   4 /* empty: a private service (no public port; `local` reaches it) */
#define PH_TLV_OPTIONAL  0x80

#define PH_CTRL_ACL_MAX    32 /* allow/deny rules a REGISTER may carry */
#define PH_CTRL_TEXT_MAX   200
#define PH_CTRL_TAIL_MAX   (2 + 4 + 2 + PH_CTRL_ACL_MAX * (2 + 2 + 16))
#define PH_CTRL_MAX        (1 + 4 + 1 + 2 + 1 + 1 + PH_CTRL_TEXT_MAX + PH_CTRL_TAIL_MAX)
#define PH_CTRL_TARGET_MAX 253 /* UDP_OPEN's target: a service name or a host */

/* A client address rule of a REGISTER (`expose --allow/--deny`). */
struct ph_ctrl_acl {
	bool allow;
	struct ph_cidr cidr;
};

struct ph_ctrl {
	uint8_t type;
	uint32_t req;       /* REGISTER, REGISTERED, REFUSED: the request it answers */
	uint8_t proto;      /* REGISTER: PH_SVC_* */
	uint16_t port;      /* REGISTER: wanted (0: any); REGISTERED: given */
	uint8_t proxy;      /* REGISTER: PROXY protocol version for the local service, 0 none */
	uint16_t service;   /* REGISTERED, UNREGISTER */
	uint8_t code;       /* REFUSED */
	uint32_t max_conns; /* REGISTER: visitors at once (--max-conns); 0 no limit */
	uint8_t nacl;       /* REGISTER: rules in acl, in order (first match wins) */
	uint8_t skipped;    /* REGISTER: optional options this version does not know */
	bool priv;          /* REGISTER: a private service (PH_TLV_PRIVATE) */
	struct ph_ctrl_acl acl[PH_CTRL_ACL_MAX];
	char name[PH_NAME_MAX + 1];          /* REGISTER: "" when unnamed */
	char text[PH_CTRL_TEXT_MAX + 1];     /* REFUSED, CHECKED */
	uint8_t okind;                       /* UDP_OPEN: PH_OPEN_SERVICE or PH_OPEN_HOST (below) */
	char target[PH_CTRL_TARGET_MAX + 1]; /* UDP_OPEN: a private service's name, or a host */
	uint8_t result;                      /* CHECKED: PH_CHECK_* */
	/* UDP_OPENED: the address the relay sends to (AF_UNSPEC: none); CHECK: the address to
	 * probe (AF_UNSPEC: the caller's own; its port is not used); CHECKED: the address
	 * probed, with the port */
	struct ph_addr addr;
};

/*
 * Parses a CTRL payload. Returns 0, or -EPROTO with a static reason. An address in a
 * CHECK or CHECKED has one spelling: an IPv4-mapped IPv6 address is refused (IPv4 is
 * written as IPv4, as ph_msg_addr_put does).
 */
int ph_ctrl_parse(const uint8_t *p, size_t n, struct ph_ctrl *c, const char **why);

/*
 * Writes c into out (PH_CTRL_MAX bytes): a REGISTER's tail holds max_conns when not 0 and
 * acl[0..nacl) (at most PH_CTRL_ACL_MAX). Returns the length.
 */
size_t ph_ctrl_build(const struct ph_ctrl *c, uint8_t *out);

/* "open", "closed", "filtered", "refused", "open|filtered" for a PH_CHECK_*; "?" else. */
const char *ph_check_result_name(uint8_t result);

/* True when name is a valid service name: 1-32 of [A-Za-z0-9._-]. */
bool ph_svc_name_ok(const char *name);

#define PH_MSG_ADDR_MAX (1 + 2 + 16)

/*
 * The head of an OPEN a client sends (`pinhole local`, `socks --via`): what it wants
 * reached, then its first bytes. kind u8, port u16, a u8 length and the target: a private
 * service's name (port 0), or a host - a name or an address literal - the relay connects
 * to on port.
 */
#define PH_OPEN_SERVICE  1 /* a private service by name */
#define PH_OPEN_HOST     2 /* a TCP connection from the relay to HOST:PORT */
#define PH_OPEN_HOST_MAX 253

struct ph_open_req {
	uint8_t kind;
	uint16_t port;
	char target[PH_OPEN_HOST_MAX + 1];
};

/* Parses an OPEN's head. Returns the bytes it took, or -EPROTO with a static reason. */
int ph_open_req_parse(const uint8_t *p, size_t n, struct ph_open_req *o, const char **why);

/* Writes o (4 + its target's length bytes, at most PH_OPEN_HOST_MAX + 4). Returns the length. */
size_t ph_open_req_put(const struct ph_open_req *o, uint8_t *out);

/*
 * An address in a payload: family (0 none, 4, 6), then port and 4 or 16 bytes. Returns
 * the bytes read (a has AF_UNSPEC for none), or -EPROTO.
 */
int ph_msg_addr_get(const uint8_t *p, size_t n, struct ph_addr *a);

/* Writes a (NULL or not IP: none); an IPv4-mapped IPv6 address is written as IPv4. Returns the length. */
size_t ph_msg_addr_put(uint8_t *p, const struct ph_addr *a);

#endif /* PH_TUNNEL_MSG_H */
