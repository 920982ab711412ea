/*
 * Fuzzes ph_upnp_url_parse (portmap/upnp.h), which decides whether pinhole follows a URL that
 * any device on the LAN wrote (SSDP's LOCATION, the control URLs of a description): the input
 * is the URL. The result is 0 or -EPROTO with a reason, the same twice; a parsed URL starts
 * with "http://", its host is the address parsed written back in canonical dotted decimal,
 * followed by nothing, "/" or ":PORT" with the port parsed (80 when none), and the URL has no
 * space or control byte; a refused one leaves the address cleared.
 */
#include "portmap/upnp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/addr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_upnpurl: %s failed (size %zu, r %d)\n", #cond, size, \
			        r);                                                                \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char ip[INET_ADDRSTRLEN], *url, *after;
	struct ph_addr a, again;
	const char *why = "unset", *why2 = "unset";
	int r = 0, r2;
	size_t n;

	if (size > 4096)
		return 0;
	url = malloc(size + 1); /* exactly the URL and its NUL: ASan sees overreads */
	if (url == NULL)
		abort();
	memcpy(url, data, size);
	url[size] = '\0';
	r = ph_upnp_url_parse(url, &a, &why);
	CHECK(r == 0 || r == -EPROTO);
	r2 = ph_upnp_url_parse(url, &again, &why2);
	CHECK(r2 == r && memcmp(&a, &again, sizeof(a)) == 0);
	if (r != 0) {
		CHECK(why != NULL && why[0] != '\0' && strcmp(why, "unset") != 0);
		CHECK(why2 != NULL && strcmp(why, why2) == 0);
		CHECK(a.u.sa.sa_family == 0 && a.len == 0);
		free(url);
		return 0;
	}
	CHECK(why == NULL);
	CHECK(a.u.sa.sa_family == AF_INET && a.len == sizeof(a.u.in));
	for (size_t i = 0; url[i] != '\0'; i++)
		CHECK((unsigned char)url[i] > 0x20 && url[i] != 0x7f);
	CHECK(strncmp(url, "http://", 7) == 0);
	CHECK(inet_ntop(AF_INET, &a.u.in.sin_addr, ip, sizeof(ip)) != NULL);
	n = strlen(ip);
	CHECK(strncmp(url + 7, ip, n) == 0);
	after = url + 7 + n;
	CHECK(*after == '\0' || *after == '/' || *after == ':');
	if (*after == ':') {
		char *end;
		unsigned long port = strtoul(after + 1, &end, 10);

		CHECK(end > after + 1 && end - (after + 1) <= 5 && (*end == '\0' || *end == '/'));
		CHECK(after[1] >= '0' && after[1] <= '9' && port == ph_addr_port(&a));
	} else {
		CHECK(ph_addr_port(&a) == 80);
	}
	free(url);
	return 0;
}
