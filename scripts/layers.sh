#!/usr/bin/env bash
# The layers of src/ (docs/ARCHITECTURE.md): a file includes only headers of its own layer
# and the layers below, and a verb never includes another verb's headers.
#   0 core/   1 conn/   2 forward/ socks/ tunnel/ portmap/ (verbs)   3 ctl/ cli/
#   4 pinhole.c and run/ (the supervisor and the services it starts)
set -u
cd "$(dirname "$0")/.."
layer() { # layer DIR -> its number
	case $1 in
	core) echo 0 ;; conn) echo 1 ;; forward | socks | tunnel | portmap) echo 2 ;;
	ctl | cli) echo 3 ;; run) echo 4 ;; *) echo 4 ;;
	esac
}
bad=0
for f in src/*.c src/*/*.c src/*/*.h; do
	dir=$(dirname "${f#src/}")
	[ "$dir" = . ] && dir=main
	mine=$(layer "$dir")
	while read -r inc; do
		idir=${inc%%/*}
		[ "$idir" = "$inc" ] && continue # config.h and the like
		theirs=$(layer "$idir")
		if [ "$theirs" -gt "$mine" ]; then
			echo "$f includes $inc: layer $idir is above $dir"
			bad=1
		elif [ "$mine" = 2 ] && [ "$theirs" = 2 ] && [ "$idir" != "$dir" ]; then
			echo "$f includes $inc: a verb includes another verb's header"
			bad=1
		fi
	done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$f")
done
[ $bad = 0 ] && echo "layers: every include goes to its own layer or below"
exit $bad
