#include "socks/socks.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

struct ph_socks_conf *ph_socks_conf_new(void)
{
	struct ph_socks_conf *sc = calloc(1, sizeof(*sc));

	if (sc != NULL)
		sc->handshake_timeout = PH_SOCKS_HANDSHAKE_TIMEOUT;
	return sc;
}

void ph_socks_conf_free(struct ph_socks_conf *sc)
{
	if (sc == NULL)
		return;
	if (sc->users != NULL)
		explicit_bzero(sc->users, sc->nusers * sizeof(*sc->users));
	free(sc->users);
	free(sc->dests);
	free(sc);
}

bool ph_socks_conf_same_users(const struct ph_socks_conf *a, const struct ph_socks_conf *b)
{
	return a->nusers == b->nusers &&
	       (a->nusers == 0 || memcmp(a->users, b->users, a->nusers * sizeof(*a->users)) == 0);
}

static int user_add(struct ph_socks_conf *sc, const char *s, size_t n, const char **why)
{
	const char *colon = memchr(s, ':', n);
	struct ph_socks_user *u;
	size_t nl, pl;

	if (colon == NULL || colon == s) {
		*why = "a user is written NAME:PASS";
		return -EINVAL;
	}
	nl = (size_t)(colon - s);
	pl = n - nl - 1;
	if (nl > PH_SOCKS_NAME_MAX || pl > PH_SOCKS_NAME_MAX) {
		*why = "a user name or password longer than 255 bytes (SOCKS5 cannot carry it)";
		return -EINVAL;
	}
	if (pl == 0) {
		*why = "an empty password";
		return -EINVAL;
	}
	if (memchr(s, '\0', n) != NULL) {
		*why = "a NUL in a user";
		return -EINVAL;
	}
	u = realloc(sc->users, (sc->nusers + 1) * sizeof(*u));
	if (u == NULL)
		return -ENOMEM;
	sc->users = u;
	u += sc->nusers++;
	memset(u, 0, sizeof(*u));
	memcpy(u->name, s, nl);
	memcpy(u->pass, colon + 1, pl);
	u->nlen = nl;
	u->plen = pl;
	return 0;
}

int ph_socks_user_add(struct ph_socks_conf *sc, const char *spec, const char **why)
{
	*why = NULL;
	return user_add(sc, spec, strlen(spec), why);
}

int ph_socks_users_load(struct ph_socks_conf *sc, const char *path, char *why, size_t whylen)
{
	char line[2 * PH_SOCKS_NAME_MAX + 8];
	unsigned lineno = 0;
	int err = 0;
	FILE *f;

	f = ph_file_open(path);
	if (f == NULL) {
		err = -errno;
		snprintf(why, whylen, "%s: %s", path,
		         err == -EINVAL ? "not a regular file" : strerror(-err));
		return err;
	}
	while (err == 0 && fgets(line, sizeof(line), f) != NULL) {
		size_t n = strlen(line);
		const char *s = line, *reason;

		lineno++;
		if (n == sizeof(line) - 1 && line[n - 1] != '\n') {
			snprintf(why, whylen, "%s:%u: line too long", path, lineno);
			err = -EINVAL;
			break;
		}
		while (n > 0 && isspace((unsigned char)line[n - 1]))
			line[--n] = '\0';
		while (isspace((unsigned char)*s))
			s++;
		if (*s == '\0' || *s == '#')
			continue;
		err = user_add(sc, s, strlen(s), &reason);
		if (err == -EINVAL)
			snprintf(why, whylen, "%s:%u: %s", path, lineno, reason);
		else if (err < 0)
			snprintf(why, whylen, "%s: out of memory", path);
	}
	if (err == 0 && ferror(f)) {
		err = -EIO;
		snprintf(why, whylen, "%s: read error", path);
	}
	explicit_bzero(line, sizeof(line));
	fclose(f);
	return err;
}

bool ph_socks_user_ok(const struct ph_socks_conf *sc, const char *user, size_t ulen,
                      const char *pass, size_t plen)
{
	unsigned ok = 0;

	/* every user, every byte: the time taken says nothing about how close a guess was */
	for (unsigned i = 0; i < sc->nusers; i++) {
		const struct ph_socks_user *u = &sc->users[i];
		size_t d = (u->nlen ^ ulen) | (u->plen ^ plen);

		for (size_t k = 0; k <= PH_SOCKS_NAME_MAX; k++)
			d |= (size_t)((unsigned char)(u->name[k] ^ user[k]) |
			              (unsigned char)(u->pass[k] ^ pass[k]));
		ok |= d == 0;
	}
	return ok != 0;
}

int ph_socks_dest_add(struct ph_socks_conf *sc, bool allow, const char *s, const char **why)
{
	struct ph_socks_dest_rule r, *v;
	size_t n;

	memset(&r, 0, sizeof(r));
	r.allow = allow;
	*why = NULL;
	if (strcmp(s, "local") == 0) {
		r.is_local = true; /* the class, not the names under .local (write .local) */
	} else if (ph_cidr_parse(s, &r.cidr, why) < 0) {
		/* not a CIDR: a name suffix, "example.com" or "*.example.com" */
		const char *p = s;

		if (strchr(s, '/') != NULL || strchr(s, ':') != NULL)
			return -EINVAL; /* meant as a CIDR: its reason stands */
		if (p[0] == '*' && p[1] == '.') {
			r.sub_only = true;
			p += 2;
		} else if (p[0] == '.') {
			r.sub_only = true;
			p++;
		}
		n = strlen(p);
		if (n > 0 && p[n - 1] == '.')
			n--;
		if (n == 0 || n > PH_SOCKS_NAME_MAX) {
			*why = "expected a CIDR or a host name suffix (example.com, *.example.com)";
			return -EINVAL;
		}
		for (size_t i = 0; i < n; i++) {
			char c = p[i];

			if (!isalnum((unsigned char)c) && c != '-' && c != '.' && c != '_') {
				*why = "expected a CIDR or a host name suffix (example.com, "
				       "*.example.com)";
				return -EINVAL;
			}
			r.name[i] = (char)tolower((unsigned char)c);
		}
		r.is_name = true;
		*why = NULL;
	}
	v = realloc(sc->dests, (sc->ndests + 1) * sizeof(*v));
	if (v == NULL)
		return -ENOMEM;
	sc->dests = v;
	sc->dests[sc->ndests++] = r;
	sc->has_allow |= allow;
	return 0;
}

static bool name_matches(const struct ph_socks_dest_rule *r, const char *name)
{
	size_t n = strlen(name), rn = strlen(r->name);

	if (n > 0 && name[n - 1] == '.')
		n--;
	if (n == rn)
		return !r->sub_only && strncasecmp(name, r->name, n) == 0;
	return n > rn && name[n - rn - 1] == '.' && strncasecmp(name + n - rn, r->name, rn) == 0;
}

bool ph_socks_dest_allows(const struct ph_socks_conf *sc, const struct ph_hostaddrs *self,
                          const char *name, const struct ph_addr *a, int *why)
{
	bool allowed = !sc->has_allow, covered = false, local = false;

	if (name != NULL && name[0] == '\0')
		name = NULL;
	if (a != NULL)
		local = ph_addr_is_local(a, self);
	for (unsigned i = 0; i < sc->ndests; i++) {
		const struct ph_socks_dest_rule *r = &sc->dests[i];
		bool hit = r->is_local  ? local
		           : r->is_name ? name != NULL && name_matches(r, name)
		                        : a != NULL && ph_cidr_contains(&r->cidr, a);

		if (hit && !r->allow) {
			if (why != NULL)
				*why = (int)i;
			return false;
		}
		allowed |= hit;
		/* a name cannot vouch for where it leads, nor 0.0.0.0/0 ("anything") for this
		 * host: only `local` or an address rule really written for it */
		covered |= hit && (r->is_local || (!r->is_name && r->cidr.prefix > 0));
	}
	if (local && sc->deny_local && !covered) {
		if (why != NULL)
			*why = PH_SOCKS_DEST_LOCAL;
		return false;
	}
	if (!allowed && a != NULL) { /* before resolving, only a deny rule can say no */
		if (why != NULL)
			*why = PH_SOCKS_DEST_NO_ALLOW;
		return false;
	}
	return true;
}

const char *ph_socks_dest_why(const struct ph_socks_conf *sc, int why, char *buf, size_t len)
{
	const struct ph_socks_dest_rule *r;
	char ip[INET6_ADDRSTRLEN] = "";

	if (why == PH_SOCKS_DEST_LOCAL) {
		snprintf(buf, len,
		         "a local destination (this host or its link) on a rule that "
		         "listens beyond loopback (--allow-dest local would let it)");
		return buf;
	}
	if (why < 0 || (unsigned)why >= sc->ndests) {
		snprintf(buf, len, "no --allow-dest matches");
		return buf;
	}
	r = &sc->dests[why];
	if (r->is_local) {
		snprintf(buf, len, "--%s-dest local", r->allow ? "allow" : "deny");
	} else if (r->is_name) {
		snprintf(buf, len, "--%s-dest %s%s", r->allow ? "allow" : "deny",
		         r->sub_only ? "*." : "", r->name);
	} else {
		inet_ntop(r->cidr.family, r->cidr.net, ip, sizeof(ip));
		snprintf(buf, len, "--%s-dest %s/%u", r->allow ? "allow" : "deny", ip,
		         r->cidr.prefix);
	}
	return buf;
}
