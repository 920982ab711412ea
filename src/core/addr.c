#include "core/addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>

#include "core/util.h"

int ph_addr_from_literal(const char *host, uint16_t port, struct ph_addr *a)
{
	char buf[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
	char *pct;

	memset(a, 0, sizeof(*a));
	if (inet_pton(AF_INET, host, &a->u.in.sin_addr) == 1) {
		a->u.in.sin_family = AF_INET;
		a->u.in.sin_port = htons(port);
		a->len = sizeof(a->u.in);
		return 0;
	}
	if (strlen(host) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, host);
	pct = strchr(buf, '%'); /* fe80::1%eth0: a link-local address with its interface */
	if (pct != NULL)
		*pct++ = '\0';
	if (inet_pton(AF_INET6, buf, &a->u.in6.sin6_addr) != 1)
		return -EINVAL;
	if (pct != NULL) {
		unsigned idx = if_nametoindex(pct);
		unsigned long long n;

		if (idx == 0 && ph_parse_uint(pct, 1, UINT32_MAX, &n) == 0)
			idx = (unsigned)n;
		if (idx == 0)
			return -EINVAL;
		a->u.in6.sin6_scope_id = idx;
	}
	a->u.in6.sin6_family = AF_INET6;
	a->u.in6.sin6_port = htons(port);
	a->len = sizeof(a->u.in6);
	return 0;
}

int ph_addr_from_sa(const struct sockaddr *sa, socklen_t len, struct ph_addr *a)
{
	memset(a, 0, sizeof(*a));
	if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
		memcpy(&a->u.in, sa, sizeof(a->u.in));
		a->len = sizeof(a->u.in);
		return 0;
	}
	if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
		memcpy(&a->u.in6, sa, sizeof(a->u.in6));
		a->len = sizeof(a->u.in6);
		return 0;
	}
	return -EAFNOSUPPORT;
}

static bool host_is_name(const char *h)
{
	size_t n = strlen(h), label = 0;

	if (n == 0 || n > 253)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = h[i];

		if (c == '.') {
			if (label == 0)
				return false; /* empty label: "a..b" or ".a" */
			label = 0;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_'))
			return false;
		if (++label > 63)
			return false;
	}
	return true;
}

/* (Over 80 lines: one pass over the scheme, brackets, host and port, each case with its
 * own reason in *why; the fuzzer holds it to its contract.) */
int ph_hostport_parse(const char *s, struct ph_hostport *hp, const char **why)
{
	unsigned long long port;
	const char *colon, *host, *p;
	size_t hostlen;

	memset(hp, 0, sizeof(*hp));
	*why = NULL;
	hp->proto = PH_PROTO_TCP;
	if (strncmp(s, "tcp://", 6) == 0) {
		hp->has_scheme = true;
		s += 6;
	} else if (strncmp(s, "udp://", 6) == 0) {
		hp->proto = PH_PROTO_UDP;
		hp->has_scheme = true;
		s += 6;
	} else if (strncmp(s, "tcp+udp://", 10) == 0) {
		hp->proto = PH_PROTO_TCP | PH_PROTO_UDP;
		hp->has_scheme = true;
		s += 10;
	} else if (strstr(s, "://") != NULL) {
		*why = "unknown scheme (tcp://, udp:// or tcp+udp://)";
		return -EINVAL;
	}
	if (*s == '[') {
		const char *close = strchr(s, ']');

		if (close == NULL) {
			*why = "missing ']' after an IPv6 address";
			return -EINVAL;
		}
		host = s + 1;
		hostlen = (size_t)(close - host);
		if (close[1] != ':') {
			*why = "expected ':PORT' after ']'";
			return -EINVAL;
		}
		p = close + 2;
	} else {
		colon = strrchr(s, ':');
		if (colon == NULL) {
			*why = "expected HOST:PORT or :PORT";
			return -EINVAL;
		}
		host = s;
		hostlen = (size_t)(colon - s);
		if (memchr(host, ':', hostlen) != NULL) {
			*why = "an IPv6 address must be written in brackets: [::1]:PORT";
			return -EINVAL;
		}
		p = colon + 1;
	}
	if (*p == '\0') {
		*why = "missing port";
		return -EINVAL;
	}
	if (ph_parse_uint(p, 0, ~0ull, &port) == -EINVAL) {
		*why = "port is not a number";
		return -EINVAL;
	}
	if (ph_parse_uint(p, 1, 65535, &port) < 0) {
		*why = "port must be 1-65535";
		return -EINVAL;
	}
	if (hostlen >= sizeof(hp->host)) {
		*why = "host name too long";
		return -EINVAL;
	}
	memcpy(hp->host, host, hostlen);
	hp->host[hostlen] = '\0';
	hp->port = (uint16_t)port;
	if (hostlen == 0) {
		if (*s == '[') {
			*why = "empty IPv6 address";
			return -EINVAL;
		}
		hp->wildcard = true;
		/* the caller picks the family; [::] with IPv4 mapping is the usual choice */
		ph_addr_from_literal("::", hp->port, &hp->addr);
		return 0;
	}
	if (ph_addr_from_literal(hp->host, hp->port, &hp->addr) == 0) {
		if (*s == '[' && hp->addr.u.sa.sa_family != AF_INET6) {
			*why = "brackets are for IPv6 addresses only";
			return -EINVAL;
		}
		return 0;
	}
	if (*s == '[') {
		*why = "not an IPv6 address";
		return -EINVAL;
	}
	if (strspn(hp->host, "0123456789.") == hostlen) {
		*why = "not an IPv4 address";
		return -EINVAL;
	}
	if (!host_is_name(hp->host)) {
		*why = "not a valid host name or IP address";
		return -EINVAL;
	}
	hp->is_name = true;
	return 0;
}

const char *ph_addr_fmt(const struct ph_addr *a, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN];

	if (a->u.sa.sa_family == AF_INET) {
		inet_ntop(AF_INET, &a->u.in.sin_addr, ip, sizeof(ip));
		snprintf(buf, len, "%s:%u", ip, ntohs(a->u.in.sin_port));
	} else if (a->u.sa.sa_family == AF_INET6 && a->u.in6.sin6_scope_id != 0) {
		/* the scope as a number: it parses back to the same address */
		inet_ntop(AF_INET6, &a->u.in6.sin6_addr, ip, sizeof(ip));
		snprintf(buf, len, "[%s%%%u]:%u", ip, (unsigned)a->u.in6.sin6_scope_id,
		         ntohs(a->u.in6.sin6_port));
	} else if (a->u.sa.sa_family == AF_INET6) {
		inet_ntop(AF_INET6, &a->u.in6.sin6_addr, ip, sizeof(ip));
		snprintf(buf, len, "[%s]:%u", ip, ntohs(a->u.in6.sin6_port));
	} else {
		snprintf(buf, len, "?");
	}
	return buf;
}

const char *ph_hostport_fmt(const char *host, uint16_t port, char *buf, size_t len)
{
	bool v6 = strchr(host, ':') != NULL;

	snprintf(buf, len, "%s%s%s:%u", v6 ? "[" : "", host, v6 ? "]" : "", port);
	return buf;
}

uint16_t ph_addr_port(const struct ph_addr *a)
{
	return ntohs(a->u.sa.sa_family == AF_INET ? a->u.in.sin_port : a->u.in6.sin6_port);
}

void ph_addr_set_port(struct ph_addr *a, uint16_t port)
{
	if (a->u.sa.sa_family == AF_INET)
		a->u.in.sin_port = htons(port);
	else
		a->u.in6.sin6_port = htons(port);
}

void ph_addr_unmap(struct ph_addr *a)
{
	struct sockaddr_in in;

	if (a->u.sa.sa_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&a->u.in6.sin6_addr))
		return;
	memset(&in, 0, sizeof(in));
	in.sin_family = AF_INET;
	in.sin_port = a->u.in6.sin6_port;
	memcpy(&in.sin_addr, &a->u.in6.sin6_addr.s6_addr[12], 4);
	memset(a, 0, sizeof(*a));
	a->u.in = in;
	a->len = sizeof(in);
}

bool ph_addr_equal(const struct ph_addr *a, const struct ph_addr *b)
{
	if (a->u.sa.sa_family != b->u.sa.sa_family)
		return false;
	if (a->u.sa.sa_family == AF_INET)
		return a->u.in.sin_port == b->u.in.sin_port &&
		       a->u.in.sin_addr.s_addr == b->u.in.sin_addr.s_addr;
	return a->u.in6.sin6_port == b->u.in6.sin6_port &&
	       memcmp(&a->u.in6.sin6_addr, &b->u.in6.sin6_addr, 16) == 0 &&
	       a->u.in6.sin6_scope_id == b->u.in6.sin6_scope_id;
}

bool ph_addr_same_host(const struct ph_addr *a, const struct ph_addr *b)
{
	if (a->u.sa.sa_family != b->u.sa.sa_family)
		return false;
	if (a->u.sa.sa_family == AF_INET)
		return a->u.in.sin_addr.s_addr == b->u.in.sin_addr.s_addr;
	return a->u.sa.sa_family == AF_INET6 &&
	       memcmp(&a->u.in6.sin6_addr, &b->u.in6.sin6_addr, 16) == 0;
}

bool ph_addr_is_any(const struct ph_addr *a)
{
	if (a->u.sa.sa_family == AF_INET)
		return a->u.in.sin_addr.s_addr == htonl(INADDR_ANY);
	if (a->u.sa.sa_family == AF_INET6) {
		const uint8_t *b = a->u.in6.sin6_addr.s6_addr;

		return IN6_IS_ADDR_UNSPECIFIED(&a->u.in6.sin6_addr) ||
		       (IN6_IS_ADDR_V4MAPPED(&a->u.in6.sin6_addr) &&
		        (b[12] | b[13] | b[14] | b[15]) == 0);
	}
	return true;
}
