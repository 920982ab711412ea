#!/usr/bin/env bash
# The pinhole benchmark: pinhole against direct, haproxy (splice), nginx stream, socat,
# rinetd and redir on 127.0.0.1 (TCP), then against direct, nginx stream, socat and the
# kernel's DNAT (UDP, bench/udp.py), then `pinhole socks` against direct, microsocks, dante
# and `ssh -D` (SOCKS5, bench/socks.py), then the relay (`pinhole server` + `pinhole expose`)
# against direct and `ssh -R` (bench/relay.py), then `pinhole local` and `pinhole socks --via`
# through the relay against `ssh -L` and `ssh -D` (bench/local.py). Run by `make bench`, or
# directly as bench/run.sh after `ninja -C build`. Writes bench/results/latest.md;
# docs/PERFORMANCE.md explains it.
#
# Knobs (environment): BENCH_SECS (4) per test, BENCH_ROUNDS (3), BENCH_CLIENTS (32),
# BENCH_IDLE (9000), BENCH_PEERS (default: "direct pinhole pinhole-64k haproxy haproxy-1m
# nginx socat rinetd redir"), BENCH_QUIET (0.25 cores of other load before a test is run
# again), BENCH_RETRIES (2), BENCH_BUDGET (480 s for the rounds, retries included),
# BENCH_PINHOLE (build/pinhole), BENCH_OUT (bench/results/latest.md), BENCH_ONLY (tcp, udp,
# socks, relay or local: that part alone, written to latest-tcp.md, latest-udp.md,
# latest-socks.md, latest-relay.md or latest-local.md unless BENCH_OUT says).
# UDP (bench/udp.py): BENCH_UDP_PEERS (default: "direct pinhole nginx socat direct-veth
# dnat-veth pinhole-veth"), BENCH_UDP_SECS (3), BENCH_UDP_ROUNDS (BENCH_ROUNDS),
# BENCH_UDP_CLIENTS (32), BENCH_UDP_WINDOW (16 datagrams in flight per client),
# BENCH_UDP_TIMEOUT (200 ms, then a datagram counts as lost), BENCH_UDP_OPEN (0.8: the
# open-loop rate as a share of direct's; 0: no open loop), BENCH_UDP_SESSIONS (10000),
# BENCH_UDP_BUDGET (300 s). The -veth rows run in two network namespaces the benchmark makes
# (a veth pair, 198.18.0.1-2, an nftables DNAT rule inside) and removes.
# SOCKS (bench/socks.py): BENCH_SOCKS_PEERS (default: "direct pinhole microsocks dante ssh"),
# BENCH_SOCKS_SECS (3) per test, BENCH_SOCKS_ROUNDS (BENCH_ROUNDS), BENCH_SOCKS_CLIENTS
# (BENCH_CLIENTS), BENCH_SOCKS_IDLE (2000 idle proxied connections), BENCH_SOCKS_WORKERS (2:
# pinhole's --workers), BENCH_SOCKS_BUDGET (200 s for the rounds, retries included). The ssh
# row runs its own sshd (foreground, own config, host key and user key in the temp dir) on a
# free loopback port, and `ssh -D` to it; /run/sshd (sshd's privilege separation directory)
# is made if missing and removed again.
# Relay (bench/relay.py, about 4-5 minutes): BENCH_RELAY_PEERS (default: "direct pinhole ssh"),
# BENCH_RELAY_SECS (3) per test, BENCH_RELAY_ROUNDS (BENCH_ROUNDS), BENCH_RELAY_CLIENTS
# (BENCH_CLIENTS), BENCH_RELAY_IDLE (10000 idle visitor streams), BENCH_RELAY_RTT (10 ms: the
# round trip the latency test adds between client and relay, with a delay proxy on
# loopback), BENCH_RELAY_BUDGET (200 s for the rounds, retries included). The ssh row runs
# its own sshd as the SOCKS part does, and `ssh -N -R` with cipher aes128-gcm@openssh.com;
# the pinhole row `pinhole server` and one `pinhole expose` per public port, with keys made
# in the temp dir. The stripped size of BENCH_RELAY_RELEASE (build-rel/pinhole: a
# --buildtype=release build) is reported too when it exists.
# Local (bench/local.py, about 5-6 minutes): BENCH_LOCAL_PEERS (default: "direct pinhole-local
# ssh-L pinhole-socks ssh-D"), BENCH_LOCAL_SECS (3) per test, BENCH_LOCAL_ROUNDS
# (BENCH_ROUNDS), BENCH_LOCAL_CLIENTS (BENCH_CLIENTS), BENCH_LOCAL_IDLE (5000 idle streams),
# BENCH_LOCAL_RTT (10 ms, as the relay's), BENCH_LOCAL_BUDGET (300 s for the rounds, retries
# included). `pinhole local` / `pinhole socks --via` reach a `pinhole server` whose
# authorized_keys grants their keys connect=127.0.0.1:1024-65535; ssh -L / -D (cipher
# aes128-gcm@openssh.com) reach an sshd of their own, as the SOCKS part's.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
py=/usr/bin/python3

# ---- peers: install what is missing from Debian's archive, without starting daemons
if ! "$root/scripts/deps.sh" bench; then
	# keep going: bench.py marks the rows of peers that cannot start
	echo "bench: some peers could not be installed; their rows will be marked failed" >&2
fi

pinhole=${BENCH_PINHOLE:-$root/build/pinhole}
if [ ! -x "$pinhole" ]; then
	echo "bench: $pinhole is missing; build it first (ninja -C build)" >&2
	exit 1
fi

# ---- a private temp dir; the trap ends every process session bench.py started
tmp=$(mktemp -d /tmp/pinhole-bench.XXXXXX)
driver=""
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
		kill -TERM "$driver" 2>/dev/null || true
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			kill -0 "$driver" 2>/dev/null || break
			sleep 0.2
		done
		kill -KILL "$driver" 2>/dev/null || true
	fi
	if [ -f "$tmp/pgids" ]; then
		while read -r pg; do
			[ -n "$pg" ] && kill -KILL -- "-$pg" 2>/dev/null || true
		done <"$tmp/pgids"
	fi
	# the network namespaces of the UDP part (with their veth pair and nftables rule)
	if [ -f "$tmp/netns" ]; then
		while read -r ns; do
			[ -n "$ns" ] && ip netns del "$ns" 2>/dev/null || true
		done <"$tmp/netns"
	fi
	# directories the SOCKS part made outside the temp dir (/run/sshd), if still empty
	if [ -f "$tmp/rmdirs" ]; then
		while read -r d; do
			[ -n "$d" ] && rmdir "$d" 2>/dev/null || true
		done <"$tmp/rmdirs"
	fi
	rm -rf "$tmp"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- the load generator and echo server, built fresh each time
gcc -O2 -Wall -Wextra -o "$tmp/connrate" "$here/connrate.c"

# 9000 idle connections need 18000 descriptors in the forwarder (10000 UDP sessions or relay
# streams: 10000, and as many client sockets in connrate): take the hard limit
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt 19000 ]; then
	echo "bench: note: open files limited to $(ulimit -n); idle tests may fall short" >&2
fi

# a private copy: others may rebuild build/ while this runs
cp "$pinhole" "$tmp/pinhole"

mkdir -p "$root/bench/results"
export BENCH_TMP=$tmp BENCH_ROOT=$root BENCH_CONNRATE=$tmp/connrate
export BENCH_PINHOLE=$tmp/pinhole BENCH_PINHOLE_SRC=$pinhole
"$py" "$here/bench.py" &
driver=$!
set +e
wait "$driver"
rc=$?
set -e
driver=""
exit $rc
