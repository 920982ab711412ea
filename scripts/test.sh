#!/usr/bin/env bash
# The whole test run: gcc build with -Werror, unit + fuzz-replay + end-to-end tests, then
# the same under ASan+UBSan, then a clang -Werror build. Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
passed=0
failed=0
failures=""
log=$(mktemp -d /tmp/pinhole-test.XXXXXX)

step() { # step NAME CMD...: runs CMD, counts it
	local name=$1
	shift
	echo "==> $name"
	if "$@"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
		failures="$failures $name"
		echo "!!! $name failed"
	fi
}

# a test case count for the summary: pytest's and meson's own counts are added up
count_py() { # count_py LOGFILE
	local p f
	p=$(grep -Eo '[0-9]+ passed' "$1" | tail -1 | cut -d' ' -f1)
	f=$(grep -Eo '[0-9]+ (failed|error)' "$1" | awk '{s+=$1} END {print s+0}')
	passed=$((passed + ${p:-0}))
	failed=$((failed + ${f:-0}))
}

build() { # build DIR ARGS...
	local dir=$1 log=${log:-/tmp}
	shift
	if [ ! -f "$dir/build.ninja" ]; then
		meson setup "$dir" -Dwerror=true "$@" >"$log/setup-$(basename "$dir").log" 2>&1 ||
			{ cat "$log/setup-$(basename "$dir").log"; return 1; }
	fi
	ninja -C "$dir" >"$log/ninja-$(basename "$dir").log" 2>&1 ||
		{ cat "$log/ninja-$(basename "$dir").log"; return 1; }
}

unit() { # unit DIR
	meson test -C "$1" --print-errorlogs --suite unit --suite fuzz
}

e2e() { # e2e BINARY LOGNAME
	local rc
	PINHOLE_BIN=$(realpath "$1") $PY -m pytest -q -p no:cacheprovider tests/e2e 2>&1 | tee "$log/$2"
	rc=${PIPESTATUS[0]}
	count_py "$log/$2"
	[ "$rc" = 0 ] || [ "$rc" = 5 ]
}

ulimit -n 20000 2>/dev/null || true

step "gcc build (-Werror)" build build
step "unit + fuzz replay" unit build
e2e build/pinhole e2e.log || { failed=$((failed + 1)); failures="$failures e2e"; }

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
step "asan+ubsan build" build build-asan -Db_sanitize=address,undefined -Db_lundef=false \
	-Dpool_debug=true -Dbuildtype=debug
step "unit + fuzz replay (asan)" unit build-asan
e2e build-asan/pinhole e2e-asan.log || { failed=$((failed + 1)); failures="$failures e2e-asan"; }
unset ASAN_OPTIONS UBSAN_OPTIONS

step "clang build (-Werror)" env CC=clang bash -c "$(declare -f build); build build-clang" 
# the libFuzzer harnesses run a few seconds each, from the corpora (make fuzz: longer)
step "fuzz (${FUZZ_SECONDS:-8} s a harness)" env FUZZ_SECONDS="${FUZZ_SECONDS:-8}" scripts/fuzz.sh
headers_alone() { # each header compiles on its own (STYLE.md)
	local h ok=0
	for h in src/*/*.h; do
		echo "#include \"${h#src/}\"" | cc -fsyntax-only -std=c11 -D_GNU_SOURCE -Wall -Wextra \
			-Werror -Isrc -Ibuild -x c - || { echo "header does not compile alone: $h"; ok=1; }
	done
	return $ok
}
step "headers compile alone" headers_alone
step "layers (no include upward, no verb includes another)" scripts/layers.sh
if command -v clang-format >/dev/null; then
	step "clang-format" make --no-print-directory format-check
fi

rm -rf "$log"
echo
[ -n "$failures" ] && echo "failed steps:$failures"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
