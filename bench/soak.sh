#!/usr/bin/env bash
# The soak: mixed load through `pinhole forward`, `pinhole socks` and the relay (`pinhole
# server` + `pinhole expose`) at once, for SOAK_SECONDS (default 10 minutes), with the RSS
# (VmRSS) and the fd count of every pinhole process sampled every 10 s into a CSV. At the
# end every client is closed, the fd counts must come back to their baseline, and a verdict
# is printed (exit 0: pass, 1: fail, 2: could not set up). docs/PERFORMANCE.md ("Soak")
# has a run and explains it. Run as bench/soak.sh after `ninja -C build`:
#
#   SOAK_SECONDS=60 bench/soak.sh        # a short run while developing
#   bench/soak.sh                         # the full 10 minutes
#
# The load (bench/soak.py, one asyncio process; an echo server in another), all on loopback:
#   - SOAK_CONNS (10000) idle connections held open, a third through each of the three
#     paths (forward, socks, relay), each proven with one echo round trip when opened and
#     again at the end;
#   - churn: SOAK_RATE (200) new connections a second in all, round robin over the paths,
#     each connect (+ SOCKS5 handshake, half of them pipelined), 16-1023 random bytes
#     echoed, close (one in ten with a reset);
#   - SOAK_STALL (2) clients per path that send and never read, each held SOAK_STALL_LIFE
#     (60) s after its path stopped taking bytes, then reset and replaced: the bytes a path
#     takes before it stops must stay bounded (256 MiB is the fail line);
#   - SOAK_GARBAGE_RATE (10) garbage clients a second: random bytes, a broken ClientHello,
#     a cut-short TLS record header that stalls, an unauthorized key, and an authorized key
#     (the "garbler") that sends frames breaking the rules, to the relay's session port;
#     random bytes, broken SOCKS5/SOCKS4/HTTP handshakes, stalled greetings and a CONNECT
#     to a closed port to socks. Each must be closed by pinhole within 15 s.
# Verdict: each process's RSS peak in the last SOAK_RSS_WINDOW seconds (default two cycles of
# the never-reading clients, 140 s, which make RSS swing) within SOAK_RSS_TOL (0.10 = 10 %)
# of its peak in the first window after SOAK_WARMUP (default max(30, SOAK_SECONDS/5)) s, or
# within SOAK_RSS_SLACK_KIB (1024) when that is more; once every client closed, sockets and other
# fds at most SOAK_FD_TOL (2) above their count before any load, and pipes at most
# SOAK_PIPE_SPARE (64 per CPU: the spares the pipe pools keep) above it; no idle connection
# lost, churn errors under 0.1 %, every garbage client closed, every never-reading client
# stalled, no pinhole process gone, and each exits 0 on SIGTERM.
#
# Other knobs: SOAK_PINHOLE (build/pinhole; copied, so a rebuild cannot change it mid-run),
# SOAK_INTERVAL (10 s), SOAK_GARBAGE_SKIP (garbage kinds to leave out, by their names in
# bench/soak.py, e.g. "relay_unauthorized_key socks_stall"), SOAK_OUT (bench/results/soak:
# soak.csv, summary.txt, the pinhole logs and their final status), SOAK_KEEP=1 keeps the temp
# dir. The load process and the echo server each hold SOAK_CONNS sockets: the fd limit (hard)
# must allow SOAK_CONNS + 1024. pinhole runs at its default log level with its defaults,
# except the control sockets (in the temp dir) and, for socks, --allow-dest 127.0.0.1.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
py=/usr/bin/python3

secs=${SOAK_SECONDS:-600}
conns=${SOAK_CONNS:-10000}
rate=${SOAK_RATE:-200}
garbage_rate=${SOAK_GARBAGE_RATE:-10}
stall=${SOAK_STALL:-2}
stall_life=${SOAK_STALL_LIFE:-60}
interval=${SOAK_INTERVAL:-10}
warmup=${SOAK_WARMUP:-$(( secs / 5 > 30 ? secs / 5 : 30 ))}
rss_tol=${SOAK_RSS_TOL:-0.10}
rss_slack=${SOAK_RSS_SLACK_KIB:-1024}
rss_window=${SOAK_RSS_WINDOW:-$((2 * (stall_life + 10)))}
fd_tol=${SOAK_FD_TOL:-2}
# a worker keeps up to 32 spare pipes (src/pinhole.c spare_pipes): 64 fds, one worker a CPU
pipe_spare=${SOAK_PIPE_SPARE:-$((64 * $(nproc)))}
garbage_skip=${SOAK_GARBAGE_SKIP:-}
out=${SOAK_OUT:-$root/bench/results/soak}
pinhole_src=${SOAK_PINHOLE:-$root/build/pinhole}

for v in secs conns rate garbage_rate stall stall_life interval warmup fd_tol rss_slack \
	rss_window pipe_spare; do
	if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
		echo "soak: $v must be a whole number, not '${!v}'" >&2
		exit 2
	fi
done
if [ ! -x "$pinhole_src" ]; then
	echo "soak: $pinhole_src is missing; build it first (ninja -C build)" >&2
	exit 2
fi

tmp=$(mktemp -d /tmp/pinhole-soak.XXXXXX)
chmod 700 "$tmp"
pids=() # every process this script started, ended by the trap
load_pid=""

stop_pid() { # PID GRACE_TENTHS: TERM, wait, then KILL
	local pid=$1 n=${2:-50}
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	while [ "$n" -gt 0 ] && kill -0 "$pid" 2>/dev/null; do
		sleep 0.1
		n=$((n - 1))
	done
	kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	[ -n "$load_pid" ] && stop_pid "$load_pid" 50
	local i
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do # the last started first
		stop_pid "${pids[$i]}" 50
	done
	wait 2>/dev/null || true
	if [ "${SOAK_KEEP:-0}" = 1 ]; then
		echo "soak: kept $tmp" >&2
	else
		rm -rf "$tmp"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 10,000 connections: that many sockets in the load process and in the echo server, and
# about twice as many in the forward and socks processes
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((conns + 1024)) ]; then
	echo "soak: the fd limit is $(ulimit -n); $conns connections need $((conns + 1024))" \
		"(raise it, or set SOAK_CONNS lower)" >&2
	exit 2
fi

cp "$pinhole_src" "$tmp/pinhole"
ph=$tmp/pinhole
mkdir -p "$out"
rm -f "$out"/*.log "$out"/*.status "$out/soak.csv" "$out/summary.txt"

wait_for() { # SECONDS WHAT COMMAND...: polls COMMAND every 0.1 s
	local n=$(($1 * 10)) what=$2
	shift 2
	while ! "$@" >/dev/null 2>&1; do
		n=$((n - 1))
		if [ "$n" -le 0 ]; then
			echo "soak: $what did not happen in time" >&2
			return 1
		fi
		sleep 0.1
	done
}
listening() { [ -n "$(ss -ltnH "sport = :$1")" ]; }
alive_or_die() { # PID NAME LOG
	if ! kill -0 "$1" 2>/dev/null; then
		echo "soak: $2 exited at start:" >&2
		tail -n 5 "$3" >&2
		exit 2
	fi
}

# ---- ports (all below the ephemeral range) and keys
read -r p_echo p_fwd p_socks p_relay p_closed range < <("$py" "$here/soak.py" ports 5)
p_pub=${range%-*}

mkdir -m 700 "$tmp/keys"
keygen() { # NAME: prints its public key line
	"$ph" keygen -f "$tmp/keys/$1.key" -C "soak-$1" 2>/dev/null
}
client_line=$(keygen client)
garbler_line=$(keygen garbler)
mallory_line=$(keygen mallory)
keygen server >/dev/null
: "$mallory_line" # never authorized
printf '%s\nmax=2 %s\n' "$client_line" "$garbler_line" >"$tmp/keys/authorized_keys"
chmod 600 "$tmp/keys/authorized_keys"
garbler_cert="" mallory_cert=""
if command -v openssl >/dev/null; then
	for k in garbler mallory; do
		openssl req -new -x509 -key "$tmp/keys/$k.key" -subj /CN=soak -days 1 \
			-out "$tmp/keys/$k.crt" >/dev/null 2>&1 && eval "${k}_cert=$tmp/keys/$k.crt"
	done
fi
[ -n "$garbler_cert" ] || echo "soak: note: no openssl: no TLS garbage clients" >&2

# ---- the echo server and the pinhole processes
"$py" "$here/soak.py" echo "$p_echo" $((secs + 900)) >"$tmp/echo.out" 2>&1 &
pids+=($!)
wait_for 10 "the echo server" grep -q listening "$tmp/echo.out"

names=() logs=()
start() { # NAME PINHOLE-ARGS...: starts it, stderr to $tmp/NAME.log
	local name=$1
	shift
	"$ph" "$@" --control "$tmp/$name.sock" >"$tmp/$name.log" 2>&1 &
	pids+=($!)
	names+=("$name")
	logs+=("$tmp/$name.log")
}
start forward forward "127.0.0.1:$p_fwd" "127.0.0.1:$p_echo"
start socks socks "127.0.0.1:$p_socks" --allow-dest 127.0.0.1
start server server "127.0.0.1:$p_relay" --key "$tmp/keys/server.key" \
	--authorized-keys "$tmp/keys/authorized_keys" --bind 127.0.0.1 --ports "$range"
wait_for 10 "pinhole server listening" listening "$p_relay"
start expose expose "127.0.0.1:$p_echo" --via "127.0.0.1:$p_relay" --port "$p_pub" \
	--key "$tmp/keys/client.key" --known-relays "$tmp/keys/known_relays"
for port in "$p_fwd" "$p_socks" "$p_pub"; do
	wait_for 15 "a pinhole listening on $port" listening "$port" || {
		for l in "${logs[@]}"; do tail -n 3 "$l" >&2; done
		exit 2
	}
done
for i in "${!names[@]}"; do
	alive_or_die "${pids[$((i + 1))]}" "${names[$i]}" "${logs[$i]}"
done
sleep 1 # the relay's first heartbeat and the workers' first allocations: part of the baseline

# ---- the load
procs=""
for i in "${!names[@]}"; do
	procs+="${procs:+,}{\"name\": \"${names[$i]}\", \"pid\": ${pids[$((i + 1))]}, \"log\": \"${logs[$i]}\"}"
done
cat >"$tmp/load.json" <<EOF
{"seconds": $secs, "conns": $conns, "rate": $rate, "garbage_rate": $garbage_rate,
 "stall": $stall, "stall_life": $stall_life, "warmup": $warmup, "interval": $interval,
 "rss_tol": $rss_tol, "rss_slack_kib": $rss_slack, "fd_tol": $fd_tol, "ramp_max": 120,
 "pipe_spare": $pipe_spare, "rss_window": $rss_window, "garbage_skip": "$garbage_skip",
 "csv": "$out/soak.csv", "summary": "$out/summary.txt",
 "garbler_cert": "$garbler_cert", "garbler_key": "$tmp/keys/garbler.key",
 "mallory_cert": "$mallory_cert", "mallory_key": "$tmp/keys/mallory.key",
 "ports": {"echo": $p_echo, "forward": $p_fwd, "socks": $p_socks, "relay": $p_relay,
           "public": $p_pub, "closed": $p_closed},
 "procs": [$procs]}
EOF
echo "soak: $secs s, $conns idle connections, $rate conn/s churn, $garbage_rate garbage/s;" \
	"pinhole $("$ph" --version 2>&1 | head -n 1), git $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo ?)"
echo "soak: forward :$p_fwd, socks :$p_socks, relay :$p_relay (public :$p_pub), echo :$p_echo"
timeout -s TERM $((secs + 420)) "$py" "$here/soak.py" load --config "$tmp/load.json" &
load_pid=$!
set +e
wait "$load_pid"
rc=$?
set -e
load_pid=""

# ---- stop pinhole: each must exit 0 on SIGTERM, with no sanitizer report
for i in "${!names[@]}"; do
	"$ph" status --control "$tmp/${names[$i]}.sock" >"$out/${names[$i]}.status" 2>&1 || true
done
for ((i = ${#names[@]} - 1; i >= 0; i--)); do
	pid=${pids[$((i + 1))]}
	if ! kill -0 "$pid" 2>/dev/null; then
		echo "soak: FAIL: ${names[$i]} is gone" >&2
		rc=1
		continue
	fi
	kill -TERM "$pid"
	set +e
	n=150
	while [ "$n" -gt 0 ] && kill -0 "$pid" 2>/dev/null; do
		sleep 0.1
		n=$((n - 1))
	done
	if kill -0 "$pid" 2>/dev/null; then
		echo "soak: FAIL: ${names[$i]} still running 15 s after SIGTERM" >&2
		rc=1
		kill -KILL "$pid"
	fi
	wait "$pid"
	st=$?
	set -e
	if [ "$st" -ne 0 ]; then
		echo "soak: FAIL: ${names[$i]} exited with status $st" >&2
		rc=1
	fi
done
for i in "${!names[@]}"; do
	cp "${logs[$i]}" "$out/"
	if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "${logs[$i]}"; then
		echo "soak: FAIL: a sanitizer report in ${names[$i]}'s log" >&2
		rc=1
	fi
	echo "soak: ${names[$i]}: $(wc -l <"${logs[$i]}") log lines; $(grep -E '^stopped:|stopped: ' "${logs[$i]}" | tail -n 1)"
done
echo "soak: results in $out (soak.csv, summary.txt, logs, status)"
exit "$rc"
