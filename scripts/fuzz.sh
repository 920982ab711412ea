#!/usr/bin/env bash
# make fuzz: builds the libFuzzer harnesses with clang and runs each for FUZZ_SECONDS
# (default 30) on a scratch copy of its corpus. New crashes are left in build-fuzz/.
set -eu
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-30}
[ -f build-fuzz/build.ninja ] ||
	CC=clang meson setup build-fuzz -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false
ninja -C build-fuzz
rc=0
for f in tests/fuzz/fuzz_*.c; do
	name=$(basename "$f" .c)
	name=${name#fuzz_}
	work=build-fuzz/corpus-$name
	mkdir -p "$work"
	cp -n tests/fuzz/corpus/"$name"/* "$work"/ 2>/dev/null || true
	echo "==> fuzz_$name for ${secs}s"
	if (cd build-fuzz && ./fuzz_"$name" -max_total_time="$secs" "corpus-$name" \
		>"fuzz-$name.log" 2>&1); then
		tail -1 "build-fuzz/fuzz-$name.log"
	else # a crash: its report, and the input is left in build-fuzz/
		tail -40 "build-fuzz/fuzz-$name.log"
		rc=1
	fi
done
exit $rc
