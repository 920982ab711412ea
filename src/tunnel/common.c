/* What the relay and the client share: defaults, the configuration directory, keys. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"
#include "tunnel/session.h"
#include "tunnel/tunnel.h"

void ph_server_conf_init(struct ph_server_conf *c)
{
	memset(c, 0, sizeof(*c));
	c->listen.port = PH_RELAY_PORT;
	c->listen.wildcard = true;
	c->listen.proto = PH_PROTO_TCP;
}

void ph_expose_conf_init(struct ph_expose_conf *c)
{
	memset(c, 0, sizeof(*c));
}

int ph_conf_dir(char *dir, size_t len, bool create, char *why, size_t whylen)
{
	const char *home = getenv("HOME"), *xdg = getenv("XDG_CONFIG_HOME");

	if (getuid() == 0)
		snprintf(dir, len, "/etc/pinhole");
	else if (xdg != NULL && xdg[0] == '/')
		snprintf(dir, len, "%.400s/pinhole", xdg);
	else if (home != NULL && home[0] == '/')
		snprintf(dir, len, "%.400s/.config/pinhole", home);
	else {
		snprintf(why, whylen, "no HOME to keep keys in: name the file");
		return -ENOENT;
	}
	/* ~/.config may not exist yet either: each missing directory, 0700 */
	for (char *p = dir + 1; create; p++) {
		char c = *p;

		if (c != '/' && c != '\0')
			continue;
		*p = '\0';
		if (mkdir(dir, 0700) == -1 && errno != EEXIST) {
			int err = -errno;

			snprintf(why, whylen, "%s: %s", dir, strerror(errno));
			return err;
		}
		*p = c;
		if (c == '\0')
			break;
	}
	return 0;
}

int ph_key_open(const char *path, bool create, struct ph_key **out, char *why, size_t whylen)
{
	char file[600], dir[520], line[PH_KEY_LINE_MAX], fp[PH_FP_LEN];
	uint8_t pub[PH_KEY_LEN];
	int err;

	if (path[0] != '\0') {
		snprintf(file, sizeof(file), "%s", path);
	} else {
		err = ph_conf_dir(dir, sizeof(dir), create, why, whylen);
		if (err < 0)
			return err;
		snprintf(file, sizeof(file), "%s/key", dir);
	}
	err = ph_key_load(file, out, why, whylen);
	if (err != -ENOENT || !create)
		return err;
	err = ph_key_generate(file, out, why, whylen);
	if (err < 0)
		return err;
	ph_key_public(*out, pub);
	ph_pubkey_format(pub, NULL, line, sizeof(line));
	ph_key_fingerprint(pub, fp);
	ph_info("made a new key %s (%s); its public line: %s", file, fp, line);
	return 0;
}
