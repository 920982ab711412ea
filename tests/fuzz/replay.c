/* Without libFuzzer: feeds every file in the directories given to the harness. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
	static uint8_t buf[1 << 20];
	struct dirent *e;
	char path[4096];
	unsigned count = 0;

	for (int i = 1; i < argc; i++) {
		DIR *d = opendir(argv[i]);

		if (d == NULL) {
			perror(argv[i]);
			return 1;
		}
		while ((e = readdir(d)) != NULL) {
			FILE *f;
			size_t n;

			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", argv[i], e->d_name);
			f = fopen(path, "rb");
			if (f == NULL) {
				perror(path);
				closedir(d);
				return 1;
			}
			n = fread(buf, 1, sizeof(buf), f);
			fclose(f);
			LLVMFuzzerTestOneInput(buf, n);
			count++;
		}
		closedir(d);
	}
	printf("replayed %u inputs\n", count);
	return count == 0; /* an empty corpus proves nothing */
}
