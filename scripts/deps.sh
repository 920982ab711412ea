#!/usr/bin/env bash
# Installs what pinhole needs to build and test, from Debian's archive, when missing.
#   scripts/deps.sh build   compiler, meson, libraries
#   scripts/deps.sh test    + cmocka, pytest and the real peers the tests drive
#   scripts/deps.sh bench   + the forwarders and SOCKS proxies the benchmark compares with
set -euo pipefail

want=${1:-build}
pkgs="gcc clang meson ninja-build pkg-config libc-ares-dev libminiupnpc-dev libssl-dev libseccomp-dev"
case $want in
build) ;;
test) pkgs="$pkgs libcmocka-dev python3 python3-pytest curl socat iproute2 libclang-rt-14-dev dnsmasq-base bind9-dnsutils rinetd
	nginx-light haproxy prometheus proxychains4 openssl
	nftables iputils-ping miniupnpd-nftables miniupnpc natpmpc coturn stun-client stun-server
	conntrack netcat-openbsd openssh-server openssh-client strace" ;;
bench) pkgs="$pkgs python3 iperf3 socat curl iproute2 haproxy nginx-light libnginx-mod-stream
	rinetd redir procps nftables microsocks dante-server openssh-server openssh-client" ;;
*) echo "usage: $0 build|test|bench" >&2; exit 2 ;;
esac

missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
	echo "deps: missing:$missing; run as root (or: sudo apt-get install$missing)" >&2
	exit 1
fi
echo "deps: installing$missing"
# Debian's maintainer scripts would start system-wide nginx/haproxy/rinetd/danted/sshd
# daemons: forbid it
guard=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
	guard=1
fi
export DEBIAN_FRONTEND=noninteractive
rc=0
apt-get update -qq || rc=$?
[ $rc = 0 ] && { apt-get install -y -qq --no-install-recommends $missing >/dev/null || rc=$?; }
[ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
if [ $rc != 0 ]; then
	echo "deps: apt-get failed ($rc)" >&2
	exit 1
fi
