#include "core/acl.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

/* the first 12 bytes of an IPv4-mapped IPv6 address, ::ffff:0:0/96 */
static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

int ph_cidr_parse(const char *s, struct ph_cidr *c, const char **why)
{
	char buf[INET6_ADDRSTRLEN + 8];
	unsigned long long prefix;
	const char *slash;
	unsigned max, bytes;
	size_t n;

	memset(c, 0, sizeof(*c));
	*why = NULL;
	slash = strchr(s, '/');
	n = slash != NULL ? (size_t)(slash - s) : strlen(s);
	if (n == 0 || n >= sizeof(buf)) {
		*why = "expected an address or ADDRESS/PREFIX";
		return -EINVAL;
	}
	memcpy(buf, s, n);
	buf[n] = '\0';
	if (inet_pton(AF_INET, buf, c->net) == 1) {
		c->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, buf, c->net) == 1) {
		c->family = AF_INET6;
		max = 128;
	} else {
		*why = "not an IPv4 or IPv6 address";
		return -EINVAL;
	}
	prefix = max;
	if (slash != NULL && ph_parse_uint(slash + 1, 0, max, &prefix) < 0) {
		*why = max == 32 ? "prefix length must be 0-32" : "prefix length must be 0-128";
		return -EINVAL;
	}
	if (c->family == AF_INET6 && prefix >= 96 &&
	    memcmp(c->net, v4mapped, sizeof(v4mapped)) == 0) {
		/* clients are matched as IPv4, so ::ffff:10.0.0.0/104 means 10.0.0.0/8 */
		memmove(c->net, c->net + 12, 4);
		memset(c->net + 4, 0, 12);
		c->family = AF_INET;
		prefix -= 96;
		max = 32;
	}
	c->prefix = (uint8_t)prefix;
	bytes = max / 8;
	for (unsigned i = 0; i < bytes; i++) {
		unsigned keep = prefix >= (i + 1) * 8 ? 8 : prefix > i * 8 ? prefix - i * 8 : 0;

		c->net[i] &= (uint8_t)(0xff00u >> keep);
	}
	return 0;
}

bool ph_cidr_contains(const struct ph_cidr *c, const struct ph_addr *a)
{
	struct ph_addr u = *a;
	const uint8_t *ip;
	unsigned full, rest;

	ph_addr_unmap(&u);
	if (u.u.sa.sa_family != c->family)
		return false;
	ip = c->family == AF_INET ? (const uint8_t *)&u.u.in.sin_addr
	                          : (const uint8_t *)&u.u.in6.sin6_addr;
	full = c->prefix / 8;
	rest = c->prefix % 8;
	if (memcmp(ip, c->net, full) != 0)
		return false;
	if (rest != 0 && (ip[full] & (uint8_t)(0xff00u >> rest)) != c->net[full])
		return false;
	return true;
}

int ph_acl_add(struct ph_acl *acl, bool allow, const struct ph_cidr *c)
{
	struct ph_acl_rule *r = realloc(acl->rules, (acl->n + 1) * sizeof(*r));

	if (r == NULL)
		return -ENOMEM;
	acl->rules = r;
	memset(&r[acl->n], 0, sizeof(r[acl->n]));
	r[acl->n].allow = allow;
	r[acl->n].cidr = *c;
	acl->n++;
	acl->has_allow |= allow;
	return 0;
}

bool ph_acl_is_pattern(const char *s)
{
	return strpbrk(s, "*?") != NULL;
}

int ph_acl_pattern_check(const char *s, const char **why)
{
	*why = NULL;
	if (s[0] == '\0' || strlen(s) >= PH_ACL_PATTERN_MAX) {
		*why = "a pattern is 1-47 characters";
		return -EINVAL;
	}
	if (strspn(s, "0123456789abcdefABCDEF.:*?") != strlen(s)) {
		*why = "a pattern holds digits, '.', ':', hex letters, '*' and '?' only";
		return -EINVAL;
	}
	return 0;
}

int ph_acl_add_pattern(struct ph_acl *acl, bool allow, const char *pattern)
{
	struct ph_acl_rule *r;
	const char *why;

	if (ph_acl_pattern_check(pattern, &why) < 0)
		return -EINVAL;
	r = realloc(acl->rules, (acl->n + 1) * sizeof(*r));
	if (r == NULL)
		return -ENOMEM;
	acl->rules = r;
	memset(&r[acl->n], 0, sizeof(r[acl->n]));
	r[acl->n].allow = allow;
	for (size_t i = 0; pattern[i] != '\0'; i++) /* inet_ntop writes IPv6 in lower case */
		r[acl->n].pattern[i] = (char)tolower((unsigned char)pattern[i]);
	acl->n++;
	acl->has_allow |= allow;
	acl->has_pattern = true;
	return 0;
}

bool ph_acl_allows(const struct ph_acl *acl, const struct ph_addr *a)
{
	char text[INET6_ADDRSTRLEN] = "";

	if (acl->has_pattern) { /* the client as text, once */
		struct ph_addr u = *a;

		ph_addr_unmap(&u);
		if (u.u.sa.sa_family == AF_INET)
			inet_ntop(AF_INET, &u.u.in.sin_addr, text, sizeof(text));
		else
			inet_ntop(AF_INET6, &u.u.in6.sin6_addr, text, sizeof(text));
	}
	for (unsigned i = 0; i < acl->n; i++) {
		const struct ph_acl_rule *r = &acl->rules[i];
		bool hit = r->pattern[0] != '\0' ? fnmatch(r->pattern, text, 0) == 0
		                                 : ph_cidr_contains(&r->cidr, a);

		if (hit)
			return r->allow;
	}
	return !acl->has_allow;
}

void ph_acl_free(struct ph_acl *acl)
{
	free(acl->rules);
	acl->rules = NULL;
	acl->n = 0;
	acl->has_allow = false;
	acl->has_pattern = false;
}

int ph_hostaddrs_read(struct ph_hostaddrs **out)
{
	struct ifaddrs *ifs, *i;
	struct ph_hostaddrs *h;
	unsigned n = 0;
	int err;

	*out = NULL;
	if (getifaddrs(&ifs) == -1)
		return -errno;
	for (i = ifs; i != NULL; i = i->ifa_next)
		n += i->ifa_addr != NULL &&
		     (i->ifa_addr->sa_family == AF_INET || i->ifa_addr->sa_family == AF_INET6);
	h = calloc(1, sizeof(*h));
	if (h == NULL || (n > 0 && (h->a = calloc(n, sizeof(*h->a))) == NULL)) {
		err = -ENOMEM;
		goto err_free;
	}
	for (i = ifs; i != NULL && h->n < n; i = i->ifa_next) {
		struct ph_cidr *c = &h->a[h->n];

		if (i->ifa_addr == NULL)
			continue;
		if (i->ifa_addr->sa_family == AF_INET) {
			const struct sockaddr_in *in = (const void *)i->ifa_addr;

			c->family = AF_INET;
			c->prefix = 32;
			memcpy(c->net, &in->sin_addr, 4);
		} else if (i->ifa_addr->sa_family == AF_INET6) {
			const struct sockaddr_in6 *in6 = (const void *)i->ifa_addr;

			c->family = AF_INET6;
			c->prefix = 128;
			memcpy(c->net, &in6->sin6_addr, 16);
		} else {
			continue;
		}
		h->n++;
	}
	freeifaddrs(ifs);
	*out = h;
	return 0;

err_free:
	free(h);
	freeifaddrs(ifs);
	return err;
}

void ph_hostaddrs_free(struct ph_hostaddrs *h)
{
	if (h == NULL)
		return;
	free(h->a);
	free(h);
}

bool ph_addr_is_local(const struct ph_addr *a, const struct ph_hostaddrs *self)
{
	struct ph_addr u = *a;

	ph_addr_unmap(&u);
	if (u.u.sa.sa_family == AF_INET) {
		uint32_t v = ntohl(u.u.in.sin_addr.s_addr);

		/* 127.0.0.0/8 loopback, 0.0.0.0/8 "this network", 169.254.0.0/16 link-local */
		if ((v >> 24) == 127 || (v >> 24) == 0 || (v >> 16) == 0xa9fe)
			return true;
	} else if (u.u.sa.sa_family == AF_INET6) {
		const struct in6_addr *ip = &u.u.in6.sin6_addr;

		if (IN6_IS_ADDR_LOOPBACK(ip) || IN6_IS_ADDR_UNSPECIFIED(ip) ||
		    IN6_IS_ADDR_LINKLOCAL(ip))
			return true;
	} else {
		return false;
	}
	for (unsigned i = 0; self != NULL && i < self->n; i++)
		if (ph_cidr_contains(&self->a[i], &u))
			return true;
	return false;
}
