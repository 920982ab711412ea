/*
 * Fuzzes ph_map_route_gateway (portmap/portmap.h), which reads the default gateway from a
 * file laid out as /proc/net/route: the input is the file (through a memfd). The result is
 * 0 or -ENETUNREACH, the same twice (no state kept between reads); a gateway is IPv4, not
 * 0.0.0.0, on the NAT-PMP port; on failure the address is cleared; no overread of a line
 * or of the file (ASan).
 */
#include "portmap/portmap.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/addr.h"
#include "portmap/pmp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_route: %s failed (size %zu, r %d)\n", #cond, size,   \
			        r);                                                                \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ph_addr gw, again;
	char path[64];
	int fd, r = 0, r2;

	if (size > 8192)
		return 0;
	fd = memfd_create("route", MFD_CLOEXEC);
	if (fd == -1 || (size > 0 && write(fd, data, size) != (ssize_t)size))
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	r = ph_map_route_gateway(path, &gw);
	r2 = ph_map_route_gateway(path, &again);
	close(fd);
	CHECK(r == 0 || r == -ENETUNREACH);
	CHECK(r2 == r && memcmp(&gw, &again, sizeof(gw)) == 0);
	if (r != 0) {
		CHECK(gw.u.sa.sa_family == 0 && gw.len == 0);
		return 0;
	}
	CHECK(gw.u.sa.sa_family == AF_INET && gw.len == sizeof(gw.u.in));
	CHECK(ph_addr_port(&gw) == PH_PMP_PORT && gw.u.in.sin_addr.s_addr != 0);
	return 0;
}
