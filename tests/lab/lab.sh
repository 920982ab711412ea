#!/usr/bin/env bash
# (Copied from the project's shared lab, ../shared/lab/lab.sh, written for pinhole; the
# tests of `pinhole map` run their router here. `lab.sh test` is not carried over.)
# pinhole network-namespace lab: two LAN hosts behind two NAT routers on a
# shared "internet" segment, with miniupnpd (UPnP IGD + NAT-PMP + PCP) on each
# router and STUN servers on the public host.  Everything lives in private
# network namespaces; nothing is connected to the host's own network.
#
#   lab.sh deps                 install the Debian packages the lab uses
#   lab.sh up [--nat cone|symmetric] [--nat2 cone|symmetric] [--no-daemons]
#   lab.sh down                 stop lab daemons, delete lab namespaces
#   lab.sh status               namespaces, addresses, daemons, mappings
#   lab.sh exec NS CMD...       run CMD inside namespace NS
#   lab.sh daemons start|stop   (re)start miniupnpd x2, stund, coturn
#   lab.sh nat ROUTER cone|symmetric     switch a router's NAT behaviour
#   lab.sh hairpin ROUTER on|off         NAT loopback for mapped ports
#   lab.sh trigger ROUTER on|off [TRIG_PORT OPEN_PORT]   port triggering
#   lab.sh rules ROUTER         print the router's nftables ruleset
#   lab.sh reboot ROUTER [HTTP_PORT]     restart miniupnpd: mappings gone, epoch 0
#   lab.sh test                 end-to-end checks, prints "N passed, N failed"
#
# Env: LAB_VERBOSE=1 shows command output; LAB_STATE (default /run/pinhole-lab).
set -u

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${LAB_STATE:-/run/pinhole-lab}
VERBOSE=${LAB_VERBOSE:-0}
PY=/usr/bin/python3

# ---- topology --------------------------------------------------------------
NS_ALL="lan router lan2 router2 wan"
WAN_NET=198.18.0.0/24          # RFC 2544 benchmarking range, lab-only
WAN_HOST=198.18.0.1            # public host; stund primary address
WAN_HOST_ALT=198.18.0.2        # stund alternate address (RFC 3489/5780)
COTURN_IP=198.18.0.3           # coturn STUN-only primary
COTURN_ALT=198.18.0.4          # coturn alternate address (RFC 5780)
R1_WAN=198.18.0.11 R1_LAN=10.77.1.1 LAN1_IP=10.77.1.10 LAN1_NET=10.77.1.0/24
R2_WAN=198.18.0.12 R2_LAN=10.77.2.1 LAN2_IP=10.77.2.10 LAN2_NET=10.77.2.0/24

say()  { printf '%s\n' "$*"; }
die()  { printf 'lab: %s\n' "$*" >&2; exit 1; }
q()    { if [ "$VERBOSE" = 1 ]; then "$@"; else "$@" >/dev/null 2>&1; fi; }
nsx()  { local ns=$1; shift; ip netns exec "$ns" "$@"; }
have_ns() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

# router name -> its parameters
router_vars() {
    case $1 in
        router)  R_WAN=$R1_WAN R_LAN=$R1_LAN R_NET=$LAN1_NET R_HOST=$LAN1_IP R_IDX=1 ;;
        router2) R_WAN=$R2_WAN R_LAN=$R2_LAN R_NET=$LAN2_NET R_HOST=$LAN2_IP R_IDX=2 ;;
        *) die "unknown router '$1' (router|router2)" ;;
    esac
}

# ---- packages --------------------------------------------------------------
PKGS="nftables iproute2 iputils-ping miniupnpd-nftables miniupnpc natpmpc socat tcpdump \
coturn stun-client stun-server conntrack netcat-openbsd python3"

cmd_deps() {
    need_root
    local missing="" p
    for p in $PKGS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
    done
    [ -z "$missing" ] && { say "deps: all installed"; return 0; }
    say "deps: installing$missing"
    # keep Debian's maintainer scripts from starting system-wide daemons
    # (miniupnpd, coturn) outside the lab namespaces
    local guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq >/dev/null 2>&1
    timeout 600 apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1
    local rc=$?
    [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
    [ $rc = 0 ] || die "apt-get install failed (rc=$rc)"
    say "deps: ok"
}

check_tools() {
    local t m=""
    for t in ip nft ping miniupnpd upnpc natpmpc socat stund stun turnserver turnutils_natdiscovery conntrack; do
        command -v "$t" >/dev/null 2>&1 || m="$m $t"
    done
    [ -z "$m" ] || die "missing tools:$m (run: $0 deps)"
}

# ---- nftables for a router ---------------------------------------------------
# Table/chain names are the miniupnpd 2.3.x nftables defaults
# (upnp_table_name=filter, family inet, chains miniupnpd/prerouting_miniupnpd/
# postrouting_miniupnpd).  Debian's /etc/miniupnpd/nft_init.sh cannot be used:
# it sources miniupnpd_functions.sh, which the package does not ship.
router_ruleset() {   # $1 router, $2 cone|symmetric
    router_vars "$1"
    local masq="masquerade"
    [ "$2" = symmetric ] && masq="masquerade fully-random"
    cat <<EOF
table inet filter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        ct state invalid drop
        jump miniupnpd
        iifname "lan0" oifname "wan0" accept
        iifname "lan0" oifname "lan0" accept
        ct mark 0x7717 accept comment "port triggering"
    }
    chain miniupnpd {
    }
    chain input {
        type filter hook input priority 0; policy accept;
        # like a home router: nothing unsolicited from the WAN side reaches
        # the router itself (silently dropped, no RST / port unreachable)
        iifname "wan0" ct state established,related accept
        # miniupnpd's STUN self-test needs the CHANGE-REQUEST answers that
        # come from the STUN server's other address/port
        iifname "wan0" ip saddr { $WAN_HOST, $WAN_HOST_ALT } udp sport { 3478, 3479 } accept
        iifname "wan0" icmp type echo-request accept
        iifname "wan0" drop
    }
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
        oifname "wan0" ip saddr $R_NET $masq comment "lan->wan nat"
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
}
EOF
}

apply_router_rules() {  # $1 router, $2 nat mode
    nsx "$1" nft delete table inet filter >/dev/null 2>&1
    nsx "$1" nft delete table ip pinhole_lab >/dev/null 2>&1
    router_ruleset "$1" "$2" | nsx "$1" nft -f - || die "nft ruleset failed on $1"
    echo "$2" >"$STATE/$1.natmode"
}

# ---- namespaces ----------------------------------------------------------------
ns_new() {
    ip netns add "$1" || die "cannot create netns $1"
    nsx "$1" ip link set lo up
    # the lab is IPv4 only; no IPv6 link-local chatter
    nsx "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null
}

build_topology() {  # $1 nat mode router, $2 nat mode router2
    local ns
    for ns in $NS_ALL; do ns_new "$ns"; done

    # public segment: a bridge in "wan" that both routers plug into
    nsx wan ip link add br0 type bridge
    nsx wan ip addr add $WAN_HOST/24 dev br0
    nsx wan ip addr add $WAN_HOST_ALT/24 dev br0
    nsx wan ip addr add $COTURN_IP/24 dev br0
    nsx wan ip addr add $COTURN_ALT/24 dev br0
    nsx wan ip link set br0 up

    local r lanns
    for r in router router2; do
        router_vars "$r"
        lanns=lan; [ "$r" = router2 ] && lanns=lan2
        ip -n "$r" link add wan0 type veth peer name "r$R_IDX" netns wan
        ip -n wan link set "r$R_IDX" master br0 up
        ip -n "$r" link add lan0 type veth peer name eth0 netns "$lanns"
        nsx "$r" ip addr add "$R_WAN/24" dev wan0
        nsx "$r" ip addr add "$R_LAN/24" dev lan0
        nsx "$r" ip link set wan0 up
        nsx "$r" ip link set lan0 up
        # "default route" of the router points at the public host, which
        # has no default route itself: the lab is a closed world
        nsx "$r" ip route add default via $WAN_HOST
        nsx "$r" sysctl -qw net.ipv4.ip_forward=1
        nsx "$lanns" ip addr add "$R_HOST/24" dev eth0
        nsx "$lanns" ip link set eth0 up
        nsx "$lanns" ip route add default via "$R_LAN"
    done
    apply_router_rules router "$1"
    apply_router_rules router2 "$2"
}

# ---- daemons -----------------------------------------------------------------------
# each daemon runs in the foreground under setsid; its pid goes to $STATE/*.pid
start_bg() {  # $1 name, $2 ns, rest: command
    local name=$1 ns=$2; shift 2
    setsid ip netns exec "$ns" "$@" >"$STATE/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
}

# alive = exists and is not a zombie (daemons outlive the shell that
# started them, and their new parent may reap them late)
alive() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && ! awk '{exit ($3 == "Z") ? 0 : 1}' "/proc/$1/stat" 2>/dev/null; }

stop_pidfile() {  # $1 name
    local f="$STATE/$1.pid" pid i
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if alive "$pid"; then
        kill "$pid" 2>/dev/null
        for i in $(seq 1 25); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then
            kill -9 "$pid" 2>/dev/null
            # until it is reaped: a new miniupnpd that still sees it (its .mpid
            # file) exits with "MiniUPnPd is already running"
            for i in $(seq 1 50); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
        fi
    fi
    rm -f "$f"
}

wait_port() {  # $1 ns, $2 udp|tcp, $3 ip, $4 port  (listening socket appears)
    local i flag=-lun
    [ "$2" = tcp ] && flag=-ltn
    for i in $(seq 1 50); do
        # miniupnpd binds 0.0.0.0%lan0 for HTTP/SSDP, so accept any address
        nsx "$1" ss $flag 2>/dev/null | awk '{print $4}' | grep -Eq "^($3|0\.0\.0\.0(%[a-z0-9]+)?|\*):$4\$" && return 0
        sleep 0.1
    done
    return 1
}

miniupnpd_conf() {  # $1 router
    router_vars "$1"
    cat <<EOF
# generated by pinhole lab.sh for namespace $1
ext_ifname=wan0
listening_ip=lan0
http_port=5000
enable_upnp=yes
# enable_natpmp=yes turns on both NAT-PMP and PCP (same UDP port 5351)
enable_natpmp=yes
ipv6_disable=yes
secure_mode=yes
# system_uptime=no: the NAT-PMP/PCP epoch restarts with the daemon, so
# "lab.sh reboot" looks like a real router reboot to clients
system_uptime=no
notify_interval=30
clean_ruleset_interval=600
min_lifetime=120
max_lifetime=86400
lease_file=$STATE/$1.leases
uuid=3a3a0000-7069-6e68-6f6c-650000000${R_IDX}00
friendly_name=pinhole-lab $1
model_number=$R_IDX
serial=0000000$R_IDX
# The WAN address is in 198.18.0.0/15, which miniupnpd 2.3.x treats as
# reserved and refuses to forward to ("Port forwarding is impossible"), and
# ext_ip= rejects reserved addresses too.  STUN against the lab's own stund
# is the supported way round: miniupnpd learns the mapped address, sees no
# filtering, and enables forwarding.
ext_perform_stun=yes
ext_stun_host=$WAN_HOST
ext_stun_port=3478
allow 1024-65535 $R_NET 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
EOF
}

start_stun() {
    # classic RFC 3489 server with two addresses and two ports (CHANGE-REQUEST)
    start_bg stund wan stund -h $WAN_HOST -a $WAN_HOST_ALT -p 3478 -o 3479
    # coturn in STUN-only mode; two listening IPs enable RFC 5780 behaviour
    # discovery (OTHER-ADDRESS, CHANGE-REQUEST) for turnutils_natdiscovery
    start_bg coturn wan turnserver -n --stun-only --no-cli --no-tls --no-dtls \
        --listening-ip=$COTURN_IP --listening-ip=$COTURN_ALT \
        --listening-port=3478 --alt-listening-port=3479 \
        --relay-ip=$COTURN_IP --no-software-attribute --simple-log \
        --log-file=stdout --no-stdout-log --pidfile="$STATE/coturn.turnpid"
    wait_port wan udp $WAN_HOST 3478 || say "warn: stund not listening"
    wait_port wan udp $COTURN_IP 3478 || say "warn: coturn not listening"
}

start_miniupnpd() {  # $1 router [$2 http port]
    miniupnpd_conf "$1" | sed "s/^http_port=.*/http_port=${2:-5000}/" >"$STATE/$1.miniupnpd.conf"
    : >"$STATE/$1.leases"
    # start from empty mapping chains (a restart must not inherit old rules)
    local c
    for c in miniupnpd prerouting_miniupnpd postrouting_miniupnpd; do
        nsx "$1" nft flush chain inet filter $c 2>/dev/null
    done
    # -d: foreground, logs to stderr (no syslog daemon needed)
    start_bg "$1.miniupnpd" "$1" miniupnpd -d -f "$STATE/$1.miniupnpd.conf" -P "$STATE/$1.miniupnpd.mpid"
    router_vars "$1"
    wait_port "$1" tcp "$R_LAN" "${2:-5000}" || say "warn: miniupnpd on $1 not listening (see $STATE/$1.miniupnpd.log)"
    wait_port "$1" udp "$R_LAN" 5351 || true
}

cmd_daemons() {
    case ${1:-start} in
        start)
            cmd_daemons stop
            start_stun
            start_miniupnpd router
            start_miniupnpd router2 ;;
        stop)
            local n
            for n in router.miniupnpd router2.miniupnpd coturn stund punchsrv; do stop_pidfile "$n"; done ;;
        *) die "daemons start|stop" ;;
    esac
}

# ---- up / down ----------------------------------------------------------------------
cmd_down() {
    need_root
    cmd_daemons stop 2>/dev/null
    local ns pid
    for ns in $NS_ALL; do
        have_ns "$ns" || continue
        # anything else still running in a lab namespace was started by the lab
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
    done
    sleep 0.2
    for ns in $NS_ALL; do
        have_ns "$ns" || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$STATE"
    say "lab down"
}

cmd_up() {
    need_root
    local nat1=cone nat2=cone daemons=1
    while [ $# -gt 0 ]; do
        case $1 in
            --nat) nat1=$2; nat2=$2; shift 2 ;;
            --nat1) nat1=$2; shift 2 ;;
            --nat2) nat2=$2; shift 2 ;;
            --no-daemons) daemons=0; shift ;;
            *) die "up: unknown option $1" ;;
        esac
    done
    case "$nat1$nat2" in *[!a-z]*|"") die "bad nat mode";; esac
    check_tools
    cmd_down >/dev/null
    mkdir -p "$STATE"
    build_topology "$nat1" "$nat2"
    [ $daemons = 1 ] && cmd_daemons start
    say "lab up: lan=$LAN1_IP router=$R1_WAN ($nat1)  lan2=$LAN2_IP router2=$R2_WAN ($nat2)  wan=$WAN_HOST"
}

cmd_nat() {  # ROUTER MODE -- keeps miniupnpd rules by only swapping the masquerade rule
    router_vars "$1"
    local mode=$2 h masq="masquerade"
    [ "$mode" = symmetric ] && masq="masquerade fully-random"
    h=$(nsx "$1" nft -a list chain inet filter postrouting | awk '/lan->wan nat/ {print $NF}')
    [ -n "$h" ] && nsx "$1" nft delete rule inet filter postrouting handle "$h"
    nsx "$1" nft add rule inet filter postrouting oifname "wan0" ip saddr "$R_NET" $masq comment '"lan->wan nat"'
    nsx "$1" conntrack -F >/dev/null 2>&1
    echo "$mode" >"$STATE/$1.natmode"
    say "$1: nat $mode"
}

cmd_hairpin() {  # ROUTER on|off: NAT loopback for mapped ports
    # miniupnpd's nftables DNAT rules match iif "wan0" only, so a LAN host
    # that connects to the router's WAN address gets nothing (no hairpin),
    # like many real routers.  "on" snapshots the current miniupnpd DNAT
    # rules into a LAN-side copy plus an SNAT so replies return through the
    # router; run it again after mappings change.
    router_vars "$1"
    nsx "$1" nft delete table ip pinhole_hairpin >/dev/null 2>&1
    if [ "${2:-on}" = on ]; then
        local rules
        rules=$(nsx "$1" nft list chain inet filter prerouting_miniupnpd |
            sed -nE 's/.*@nh,72,8 (0x[0-9a-f]+) th dport ([0-9]+) dnat ip to ([0-9.]+:[0-9]+).*/        meta l4proto \1 th dport \2 dnat to \3/p')
        nsx "$1" nft -f - <<EOF || die "hairpin rules failed"
table ip pinhole_hairpin {
    chain prerouting {
        type nat hook prerouting priority -101; policy accept;
        iifname "lan0" ip daddr $R_WAN jump mirror
    }
    chain mirror {
$rules
    }
    chain postrouting {
        type nat hook postrouting priority 99; policy accept;
        iifname "lan0" oifname "lan0" ct status dnat masquerade
    }
}
EOF
        say "$1: hairpin on ($(printf '%s\n' "$rules" | grep -c dnat) mapping(s) mirrored)"
    else
        say "$1: hairpin off"
    fi
}

cmd_trigger() {  # ROUTER on|off [TRIG_PORT OPEN_PORT]
    router_vars "$1"
    local mode=${2:-on} trig=${3:-6667} open=${4:-7000}
    nsx "$1" nft delete table ip pinhole_trigger >/dev/null 2>&1
    if [ "$mode" = on ]; then
        # Kernel-only port triggering: an outbound TCP SYN to TRIG_PORT from a
        # LAN host stores {OPEN_PORT : host} in a dynamic map with a timeout;
        # inbound TCP to OPEN_PORT on the WAN address is DNATed to that host
        # and marked so the forward chain lets it through.
        nsx "$1" nft -f - <<EOF || die "trigger rules failed"
table ip pinhole_trigger {
    map open_tcp {
        type inet_service : ipv4_addr; flags dynamic,timeout; timeout 120s;
    }
    chain trigger_out {
        type filter hook forward priority -5; policy accept;
        iifname "lan0" oifname "wan0" tcp dport $trig ct state new update @open_tcp { $open : ip saddr }
    }
    chain trigger_in {
        type nat hook prerouting priority -110; policy accept;
        iifname "wan0" ip daddr $R_WAN tcp dport @open_tcp ct mark set 0x7717 dnat to tcp dport map @open_tcp
    }
}
EOF
        say "$1: trigger on (tcp $trig out -> opens tcp $open in, 120s)"
    else
        say "$1: trigger off"
    fi
}

cmd_reboot() {  # ROUTER [HTTP_PORT]: simulate a router reboot
    # all mappings and conntrack state are lost, the NAT-PMP/PCP epoch
    # restarts from 0 and (like many real routers) the UPnP HTTP port may
    # change, so cached control URLs stop working
    router_vars "$1"
    stop_pidfile "$1.miniupnpd"
    nsx "$1" conntrack -F >/dev/null 2>&1
    start_miniupnpd "$1" "${2:-5000}"
    say "$1: rebooted (mappings flushed, epoch reset, http_port=${2:-5000})"
}

cmd_status() {
    local ns
    for ns in $NS_ALL; do
        have_ns "$ns" || { say "$ns: (absent)"; continue; }
        printf '%-8s %s\n' "$ns" "$(nsx "$ns" ip -4 -o addr show scope global | awk '{printf "%s=%s ", $2, $4}')"
    done
    local n
    for n in stund coturn router.miniupnpd router2.miniupnpd; do
        if [ -f "$STATE/$n.pid" ] && alive "$(cat "$STATE/$n.pid")"; then
            say "daemon $n: running (pid $(cat "$STATE/$n.pid"))"
        else
            say "daemon $n: stopped"
        fi
    done
    for n in router router2; do
        have_ns $n || continue
        say "$n nat: $(cat "$STATE/$n.natmode" 2>/dev/null)  dnat rules:"
        nsx $n nft list chain inet filter prerouting_miniupnpd 2>/dev/null | grep -E 'dnat' | sed 's/^[[:space:]]*/    /'
    done
}

cmd_exec() {
    [ $# -ge 2 ] || die "exec NS CMD..."
    local ns=$1; shift
    have_ns "$ns" || die "no namespace $ns (run: $0 up)"
    exec ip netns exec "$ns" "$@"
}

cmd_rules() { nsx "${1:-router}" nft list ruleset; }

case ${1:-} in
    deps)    shift; cmd_deps "$@" ;;
    up)      shift; cmd_up "$@" ;;
    down)    shift; cmd_down "$@" ;;
    status)  shift; cmd_status "$@" ;;
    exec)    shift; cmd_exec "$@" ;;
    daemons) shift; need_root; mkdir -p "$STATE"; cmd_daemons "$@" ;;
    nat)     shift; need_root; cmd_nat "$@" ;;
    hairpin) shift; need_root; cmd_hairpin "$@" ;;
    trigger) shift; need_root; cmd_trigger "$@" ;;
    rules)   shift; cmd_rules "$@" ;;
    reboot)  shift; need_root; cmd_reboot "$@" ;;
    test)    die "lab-test.sh lives in ../shared/lab; the map tests are tests/e2e/test_map.py" ;;
    *) awk 'NR>1 && !/^#/ {exit} NR>1' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
