# A thin front for meson + ninja. `make demo` and `make test` work on a bare Debian 12 as root.
BUILD      ?= build
ASAN_BUILD ?= build-asan
PYTHON     ?= /usr/bin/python3

.PHONY: all build demo test test-unit test-e2e test-asan bench soak fuzz format format-check clean deps

all: build

deps:
	@scripts/deps.sh build

$(BUILD)/build.ninja:
	meson setup $(BUILD) -Dwerror=true

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

demo: build
	@scripts/demo.sh $(BUILD)/pinhole

test:
	@scripts/deps.sh test
	@scripts/test.sh

bench:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory build
	@bench/run.sh

soak:
	@$(MAKE) --no-print-directory build
	@bench/soak.sh

fuzz:
	@scripts/deps.sh test
	@scripts/fuzz.sh

format:
	clang-format -i src/*.c src/*/*.c src/*/*.h tests/unit/*.c tests/fuzz/*.c bench/*.c

format-check:
	clang-format --dry-run -Werror src/*.c src/*/*.c src/*/*.h tests/unit/*.c tests/fuzz/*.c bench/*.c

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) build-clang build-fuzz
