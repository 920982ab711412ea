/*
 * Fuzzes the config-line splitter (ph_conf_split) and what it feeds: each input line is
 * split like a shell would and the words are parsed by ph_cli_parse, as `pinhole run`
 * does. The splitter either fails with -EINVAL, a reason and a column inside the line, or
 * returns words that lie inside the line's buffer, each NUL-terminated, in order.
 */
#include "cli/conf.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_WORDS 32

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_conf: %s failed (n %d)\n", #cond, n);                \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ph_config cfg;
	char *buf, *line, *next;
	int n = 0;

	if (size > 16384)
		return 0;
	buf = malloc(size + 1);
	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	ph_config_init(&cfg);
	for (line = buf; line != NULL; line = next) {
		char *words[MAX_WORDS];
		const char *why;
		size_t len;
		int col;

		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		len = strlen(line);
		n = ph_conf_split(line, words, MAX_WORDS, &why, &col);
		CHECK(n >= -EINVAL && n <= MAX_WORDS);
		if (n < 0) {
			CHECK(n == -EINVAL && why != NULL && col >= 1 && (size_t)col <= len + 1);
			continue;
		}
		for (int i = 0; i < n; i++) {
			CHECK(words[i] >= line && words[i] + strlen(words[i]) <= line + len);
			CHECK(i == 0 || words[i] > words[i - 1]);
		}
		if (n > 0) {
			struct ph_cli_error e;
			int err = ph_cli_parse(n, words, &cfg, &e);

			CHECK(err == 0 || err == -EINVAL || err == -ENOMEM);
		}
	}
	ph_config_free(&cfg);
	free(buf);
	return 0;
}
