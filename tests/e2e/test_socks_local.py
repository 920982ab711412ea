"""
A socks proxy and this host's own services (the classic SSRF): the `local` destination
class, refused by default on a rule that listens beyond loopback, and BIND / UDP ASSOCIATE
on the address the client reached rather than on every interface.

    python client ──> pinhole socks 0.0.0.0:P / [::]:P / 127.0.0.1:P ──┬─> echo 0.0.0.0:E + [::]:E
                                                                      ├─> UDP echo 127.0.0.1:U
    BIND peer 127.0.0.1 ──> the port BIND announces                   └─> (this host's own
                                                                           addresses, port E)

The echo server listens on every interface (one socket per family, the same port), so a
proxy that let a "local" destination through would really reach it and the test would see
the echo.
"""

import os
import re
import shutil
import signal
import socket
import subprocess

import pytest

from conftest import (CMD_BIND, CMD_CONNECT, CMD_UDP, alloc_port, connect, echo_once,
                      read_http_head, recv_exact, socks5_open, socks5_reply, start_socks,
                      wait_until)

REFUSED = 2  # SOCKS5 "connection not allowed by ruleset"


@pytest.fixture
def everywhere(echo_server, ipv6):
    """An echo service on every interface, IPv4 and IPv6, one port: (port, servers)."""
    port = alloc_port()
    return port, [echo_server("0.0.0.0", port=port), echo_server("::", port=port)]


def accepted(servers):
    return sum(s.accepted for s in servers)


def reply_to(port, host, tport, proxy_host="127.0.0.1", **kw):
    s, rep, _ = socks5_open(port, CMD_CONNECT, host, tport, proxy_host=proxy_host, **kw)
    s.close()
    return rep


def own_addresses():
    """This host's addresses that are neither loopback nor link-local (ip -o addr)."""
    out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True,
                         timeout=5, check=True).stdout
    found = []
    for line in out.splitlines():
        m = re.search(r"\binet6? ([0-9a-f.:]+)/", line)
        if m and not m.group(1).startswith(("127.", "::1", "fe80:")):
            found.append(m.group(1))
    return found


LOCAL_DESTS = ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "localhost"]


@pytest.mark.parametrize("listen", ["0.0.0.0", "[::]"])
def test_public_rule_refuses_local_by_default(pinhole, everywhere, listen):
    """A rule on the wildcard (--open here) refuses CONNECT to the loopback addresses, v4
    and v6, the IPv4-mapped form, a name that resolves to them, the cloud metadata address
    and this host's own addresses, with reply 2 and a log line naming why; the echo
    service, which is there on every one of them, sees nobody."""
    eport, servers = everywhere
    ph, port = start_socks(pinhole, "--open", "-v", host=listen)  # -v: a line per refusal
    proxy = "::1" if listen.startswith("[") else "127.0.0.1"
    for dest in LOCAL_DESTS + own_addresses():
        assert reply_to(port, dest, eport, proxy_host=proxy) == REFUSED, \
            f"CONNECT {dest}:{eport} through a proxy on {listen} was not refused"
    # nothing listens there: without the rule this would be a connect failure, not 2
    assert reply_to(port, "169.254.169.254", 80, proxy_host=proxy) == REFUSED
    assert reply_to(port, "0.0.0.0", eport, proxy_host=proxy) == REFUSED
    assert accepted(servers) == 0
    ph.wait_log(r"localhost:\d+ \((127\.0\.0\.1|::1):\d+\): refused by a local destination")
    ph.wait_log(r"\[::1\]:\d+: refused by a local destination .*--allow-dest local")


def test_public_rule_with_users_refuses_local(pinhole, everywhere):
    eport, servers = everywhere
    _, port = start_socks(pinhole, "--user", "alice:s3cret", host="0.0.0.0")
    for dest in ("127.0.0.1", "::1", "localhost"):
        assert reply_to(port, dest, eport, user="alice", password="s3cret") == REFUSED, dest
    assert accepted(servers) == 0


def test_public_rule_http_connect_to_local_is_403(pinhole, everywhere):
    eport, servers = everywhere
    _, port = start_socks(pinhole, "--open", host="0.0.0.0")
    for authority in (f"127.0.0.1:{eport}", f"[::1]:{eport}", f"localhost:{eport}"):
        c = connect("127.0.0.1", port)
        try:
            c.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            status, _, _ = read_http_head(c)
        finally:
            c.close()
        assert status == 403, f"CONNECT {authority}: HTTP {status}"
    assert accepted(servers) == 0


def test_long_refusal_still_gets_its_403(pinhole):
    """A 253-byte name refused by a rule naming it: the reason is cut to fit the reply,
    never the reply dropped."""
    name = ".".join(["a" * 62, "b" * 62, "c" * 62, "d" * 60, "test"])[:253]
    _, port = start_socks(pinhole, "--deny-dest", name)
    c = connect("127.0.0.1", port)
    try:
        c.sendall(f"CONNECT {name}:80 HTTP/1.1\r\nHost: {name}:80\r\n\r\n".encode())
        status, _, _ = read_http_head(c)
    finally:
        c.close()
    assert status == 403


def test_allow_dest_lifts_the_default(pinhole, everywhere):
    """--allow-dest 127.0.0.1 lets exactly that address through (and makes an allow list);
    --allow-dest local lets every local address through."""
    eport, servers = everywhere
    _, port = start_socks(pinhole, "--open", "--allow-dest", "127.0.0.1", host="0.0.0.0")
    s, rep, _ = socks5_open(port, CMD_CONNECT, "127.0.0.1", eport)
    try:
        assert rep == 0, f"CONNECT 127.0.0.1 with --allow-dest 127.0.0.1: reply {rep}"
        echo_once(s, b"allowed by --allow-dest 127.0.0.1")
    finally:
        s.close()
    assert reply_to(port, "::1", eport) == REFUSED
    assert reply_to(port, "127.0.0.2", eport) == REFUSED
    _, port2 = start_socks(pinhole, "--open", "--allow-dest", "local", host="0.0.0.0")
    for dest in LOCAL_DESTS:
        s, rep, _ = socks5_open(port2, CMD_CONNECT, dest, eport)
        try:
            assert rep == 0, f"CONNECT {dest} with --allow-dest local: reply {rep}"
            echo_once(s, dest.encode())
        finally:
            s.close()


def test_allow_everything_does_not_open_this_host(pinhole, everywhere):
    """0.0.0.0/0 and ::/0 say "anywhere", not "this host": local stays refused."""
    eport, servers = everywhere
    _, port = start_socks(pinhole, "--open", "--allow-dest", "0.0.0.0/0", "--allow-dest",
                          "::/0", host="0.0.0.0")
    for dest in ("127.0.0.1", "::1", "localhost"):
        assert reply_to(port, dest, eport) == REFUSED, dest
    assert accepted(servers) == 0


def test_loopback_rule_reaches_its_own_host(pinhole, everywhere):
    """ssh -D style: a rule on loopback reaches this host's services as before."""
    eport, _ = everywhere
    _, port = start_socks(pinhole)
    for dest in LOCAL_DESTS:
        s, rep, _ = socks5_open(port, CMD_CONNECT, dest, eport)
        try:
            assert rep == 0, f"CONNECT {dest} through a loopback rule: reply {rep}"
            echo_once(s, dest.encode())
        finally:
            s.close()


def test_deny_dest_local_on_a_loopback_rule(pinhole, everywhere):
    """--deny-dest local: ::1 is refused with 127.0.0.1 (what 127.0.0.0/8 alone left
    open), and the log line names the rule."""
    eport, servers = everywhere
    ph, port = start_socks(pinhole, "--deny-dest", "local", "-v")
    for dest in LOCAL_DESTS + own_addresses():
        assert reply_to(port, dest, eport) == REFUSED, dest
    assert accepted(servers) == 0
    ph.wait_log(r"\[::1\]:\d+: refused by --deny-dest local")


def test_deny_dest_cidr_matches_the_mapped_form(pinhole, everywhere):
    """An IPv4 CIDR matches an IPv4-mapped IPv6 destination (ATYP 4, ::ffff:127.0.0.1)."""
    eport, servers = everywhere
    ph, port = start_socks(pinhole, "--deny-dest", "127.0.0.0/8", "-v")
    assert reply_to(port, "::ffff:127.0.0.1", eport) == REFUSED
    assert accepted(servers) == 0
    ph.wait_log(r"refused by --deny-dest 127\.0\.0\.0/8")


# ---------------------------------------------------------------------------------------------
# BIND and UDP ASSOCIATE: on the address the client reached


# written as CIDRs (not `local`) so that the same test runs against a pinhole without it
ALLOW_LOOPBACK = ["--allow-dest", "127.0.0.0/8", "--allow-dest", "::1"]


def tcp_listeners(port):
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=5, check=True).stdout
    return [ln.split()[3] for ln in out.splitlines() if ln.strip()]


def udp_sockets(port):
    out = subprocess.run(["ss", "-uanH", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=5, check=True).stdout
    return [ln.split()[3] for ln in out.splitlines() if ln.strip()]


@pytest.mark.parametrize("listen,reach", [("0.0.0.0", "127.0.0.1"), ("[::]", "::1")])
def test_bind_listens_on_the_reached_address(pinhole, ipv6, listen, reach):
    _, port = start_socks(pinhole, "--open", *ALLOW_LOOPBACK, host=listen)
    s, rep, (host, bport) = socks5_open(port, CMD_BIND, reach, 0, proxy_host=reach)
    try:
        assert rep == 0, f"BIND: first reply {rep}"
        assert host == reach, f"BND.ADDR {host}, the client reached {reach}"
        where = tcp_listeners(bport)
        want = f"[{reach}]:{bport}" if ":" in reach else f"{reach}:{bport}"
        assert where == [want], f"BIND's port {bport} listens on {where}, not on {want}"
        peer = connect(reach, bport)
        try:
            rep, who = socks5_reply(s)
            assert rep == 0 and who == peer.getsockname()[:2], (rep, who)
            peer.sendall(b"through BIND")
            assert recv_exact(s, 12) == b"through BIND"
        finally:
            peer.close()
    finally:
        s.close()


@pytest.mark.parametrize("listen,reach", [("0.0.0.0", "127.0.0.1"), ("[::]", "::1")])
def test_udp_associate_binds_the_reached_address(pinhole, udp_echo, ipv6, listen, reach):
    """The relay's port is on the address the client reached, and it still relays, to a
    destination of either family."""
    a4, a6 = udp_echo(), udp_echo(host="::1")
    _, port = start_socks(pinhole, "--open", *ALLOW_LOOPBACK, host=listen)
    fam = socket.AF_INET6 if ":" in reach else socket.AF_INET
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.settimeout(5)
    u.bind((reach, 0))
    s, rep, (host, rport) = socks5_open(port, CMD_UDP, *u.getsockname()[:2], proxy_host=reach)
    try:
        assert rep == 0, f"UDP ASSOCIATE: reply {rep}"
        assert host == reach, f"BND.ADDR {host}, the client reached {reach}"
        where = udp_sockets(rport)
        want = f"[{reach}]:{rport}" if ":" in reach else f"{reach}:{rport}"
        assert where == [want], f"the relay's port {rport} is on {where}, not on {want}"
        for dest, echo in (("127.0.0.1", a4), ("::1", a6)):
            atyp = b"\x04" + socket.inet_pton(socket.AF_INET6, dest) if ":" in dest \
                else b"\x01" + socket.inet_pton(socket.AF_INET, dest)
            u.sendto(b"\0\0\0" + atyp + echo.port.to_bytes(2, "big") + b"ping", (reach, rport))
            d, src = u.recvfrom(65536)
            assert src[:2] == (reach, rport), f"answer from {src}"
            assert d.endswith(b"ping") and d[3:4] == atyp[:1], d
    finally:
        s.close()
        u.close()
    wait_until(lambda: not udp_sockets(rport), 5, "the relay's port to close")


# ---------------------------------------------------------------------------------------------
# this host's addresses are read at start and again on reload
#
#     test (host side) ── veth 10.R.0.1/30 ─── 10.R.0.2/30 veth ── netns phsl<pid>:
#                                                                  pinhole run (socks 0.0.0.0:P)
#                                                                  lo: 10.R.1.1 added later


def sh(*cmd):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, f"{cmd}: {r.stderr}"


@pytest.fixture
def netns():
    """A namespace joined to this one by a veth pair; removed at the end: (name, R)."""
    if os.geteuid() != 0:
        pytest.skip("a network namespace needs root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    pid = os.getpid()
    ns, host_if, r = f"phsl{pid}", f"phsl{pid % 100000}h", 100 + pid % 150
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True, timeout=10).returncode:
        pytest.skip("cannot create a network namespace here")
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "v0", "netns", ns)
        sh("ip", "addr", "add", f"10.{r}.0.1/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"10.{r}.0.2/30", "dev", "v0")
        sh("ip", "-n", ns, "link", "set", "v0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns, r
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_own_addresses_are_read_again_on_reload(netns, pinhole, tmp_path):
    """(netns first: pinhole stops before the namespace goes.) The proxy's own address is refused from the start; an address the host gets later
    is let through (nothing listens there: refused by the host, reply 5) until a reload
    reads the addresses again, then refused by the rule (2)."""
    ns, r = netns
    proxy, later = f"10.{r}.0.2", f"10.{r}.1.1"
    port = alloc_port()
    conf = tmp_path / "socks.conf"
    conf.write_text(f"socks 0.0.0.0:{port} --open --name pub\n")
    ph = pinhole("run", conf, "-v", ready=False, prefix=("ip", "netns", "exec", ns))
    ph.wait_log(r"^pub: socks proxy on ", timeout=10)

    def up():
        try:
            connect(proxy, port, timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(up, 5, f"the proxy on {proxy}:{port}")
    assert reply_to(port, proxy, 9, proxy_host=proxy) == REFUSED, "its own address"
    sh("ip", "-n", ns, "addr", "add", f"{later}/32", "dev", "lo")
    assert reply_to(port, later, 9, proxy_host=proxy) == 5, "before the reload"
    ph.send_signal(signal.SIGHUP)
    ph.wait_log(r"^reloaded ", timeout=10)
    assert reply_to(port, later, 9, proxy_host=proxy) == REFUSED, "after the reload"
    ph.wait_log(rf"{re.escape(later)}:9: refused by a local destination")


def test_udp_associate_on_a_public_rule_drops_local_destinations(pinhole, udp_echo):
    """UDP ASSOCIATE judges each datagram's destination the same way: on a public rule, one
    to 127.0.0.1 (a local resolver, say) is dropped, never delivered."""
    a = udp_echo()
    _, port = start_socks(pinhole, "--open", host="0.0.0.0")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(0.5)
    u.bind(("127.0.0.1", 0))
    s, rep, (host, rport) = socks5_open(port, CMD_UDP, *u.getsockname())
    try:
        assert rep == 0, f"UDP ASSOCIATE: reply {rep}"
        u.sendto(b"\0\0\0\x01" + socket.inet_aton("127.0.0.1") + a.port.to_bytes(2, "big")
                 + b"to this host", (host, rport))
        with pytest.raises(socket.timeout):
            u.recvfrom(65536)
        assert a.count == 0, "a datagram reached this host's UDP service"
    finally:
        s.close()
        u.close()
