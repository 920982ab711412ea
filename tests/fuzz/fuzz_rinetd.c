/*
 * Fuzzes the rinetd.conf reader (cli/rinetd.c): the input is a whole file, written to a
 * memfd and read by ph_rinetd_load. Every problem is reported as "FILE:LINE: ..." with a
 * line inside the file; the count returned matches the problems reported; the config is
 * freed (ASan checks). Host names are not looked up (no DNS from a fuzzer).
 */
#include "cli/rinetd.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cli/cli.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct seen {
	char path[64];
	unsigned lines;
	int problems;
};

static void on_report(void *arg, const char *msg)
{
	struct seen *s = arg;
	size_t n = strlen(s->path);
	unsigned long line;
	char *end;

	if (strncmp(msg, s->path, n) != 0 || msg[n] != ':') {
		fprintf(stderr, "fuzz_rinetd: report without the file name: %s\n", msg);
		abort();
	}
	if (strncmp(msg + n + 1, " cannot read", 12) == 0)
		return;
	line = strtoul(msg + n + 1, &end, 10);
	if (end == msg + n + 1 || *end != ':' || line == 0 || line > s->lines + 1) {
		fprintf(stderr, "fuzz_rinetd: bad line number in: %s\n", msg);
		abort();
	}
	if (strstr(end, ": warning: ") != end)
		s->problems++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ph_config cfg;
	struct seen s = {0};
	int fd, n;

	if (size > 16384)
		return 0;
	ph_rinetd_no_lookups = true;
	fd = memfd_create("fuzz-rinetd", MFD_CLOEXEC);
	if (fd < 0)
		return 0;
	if (write(fd, data, size) != (ssize_t)size) {
		close(fd);
		return 0;
	}
	for (size_t i = 0; i < size; i++)
		s.lines += data[i] == '\n';
	snprintf(s.path, sizeof(s.path), "/proc/self/fd/%d", fd);
	ph_config_init(&cfg);
	n = ph_rinetd_load(s.path, &cfg, on_report, &s);
	if (n < 0 && n != -ENOMEM)
		abort();
	if (n >= 0 && n != s.problems) {
		fprintf(stderr, "fuzz_rinetd: %d problems returned, %d reported\n", n, s.problems);
		abort();
	}
	ph_config_free(&cfg);
	close(fd);
	return 0;
}
