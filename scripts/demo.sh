#!/usr/bin/env bash
# make demo: a real forward on loopback, end to end, explained as it goes.
set -u
bin=${1:-build/pinhole}
PY=/usr/bin/python3
dir=$(mktemp -d /tmp/pinhole-demo.XXXXXX)
pids=""
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # wait until something listens on 127.0.0.1:$1 (at most 5 s)
	for _ in $(seq 50); do
		(exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "demo: nothing listens on port $1" >&2
	exit 1
}

backend=$(free_port)
front=$(free_port)
echo "pinhole $("$bin" --version | cut -d' ' -f2) demo: a TCP and UDP forward on loopback"
echo
echo "1. A web server (python3 -m http.server) on 127.0.0.1:$backend serves one file."
mkdir -p "$dir/www"
echo "hello through pinhole" >"$dir/www/hello.txt"
(cd "$dir/www" && exec $PY -m http.server "$backend" --bind 127.0.0.1 >"$dir/http.log" 2>&1) &
pids="$pids $!"
wait_port "$backend"
echo "   A UDP echo server listens on the same port number, 127.0.0.1:$backend/udp."
$PY -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.settimeout(60)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data.upper(), peer)
' "$backend" >/dev/null 2>&1 &
pids="$pids $!"

echo "2. pinhole forwards 127.0.0.1:$front, TCP and UDP (tcp+udp://), to them:"
echo "     $bin forward tcp+udp://127.0.0.1:$front 127.0.0.1:$backend -v"
"$bin" forward tcp+udp://127.0.0.1:"$front" 127.0.0.1:"$backend" -v 2>"$dir/pinhole.log" &
ph=$!
pids="$pids $ph"
wait_port "$front"
sed 's/^/     | /' "$dir/pinhole.log"

echo "3. curl fetches the file through pinhole's port:"
echo "     curl http://127.0.0.1:$front/hello.txt"
body=$(curl -sS --max-time 5 "http://127.0.0.1:$front/hello.txt")
echo "     -> $body"

echo "4. 8 MiB of random bytes go through and come back identical (sha256 compared):"
head -c 8M /dev/urandom >"$dir/www/big.bin"
want=$(sha256sum <"$dir/www/big.bin" | cut -c1-16)
got=$(curl -sS --max-time 20 "http://127.0.0.1:$front/big.bin" | sha256sum | cut -c1-16)
echo "     sent $want, received $got"

echo "5. A UDP datagram to the same port: pinhole gives the client a session (like a NAT)"
echo "   and the echo server's answer comes back to it:"
reply=$($PY -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"hello over udp", ("127.0.0.1", int(sys.argv[1])))
print(s.recv(65535).decode())
' "$front" 2>&1)
echo "     -> $reply"

echo "6. SIGTERM: pinhole stops accepting, lets live connections finish, and reports."
kill -TERM "$ph"
wait "$ph"
rc=$?
pids=${pids/ $ph/}
sed -n '2,$p' "$dir/pinhole.log" | grep -v ' debug ' | sed 's/^/     | /'
echo
if [ "$body" = "hello through pinhole" ] && [ "$want" = "$got" ] &&
	[ "$reply" = "HELLO OVER UDP" ] && [ $rc = 0 ]; then
	echo "demo OK: every byte went through pinhole (see 'bytes spliced': zero copy)."
	echo "Next: pinhole forward --help, and 'make test'."
else
	echo "demo FAILED (body='$body', hashes $want/$got, udp '$reply', exit $rc)"
	exit 1
fi
