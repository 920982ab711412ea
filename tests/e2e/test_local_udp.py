"""`pinhole local udp://` and `tcp+udp://` through the relay (issue: The secure tunnel both
ways): dig to dnsmasq behind the relay (HOST:PORT, granted by connect=) and behind another
client (a private UDP service, granted by reach=), both protocols from one line, and the
refusals with the relay's words. Loopback only; dnsmasq and dig are the real peers."""

import os
import shutil
import socket
import struct

import pytest

from conftest import free_udp_port, run_peer, wait_until
from test_tunnel import keys, procs, start_relay, status_json  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(shutil.which("dnsmasq") is None or shutil.which("dig") is None,
                                reason="dnsmasq and dig (dnsutils) are needed")

DIG = ["dig", "@127.0.0.1", "+short", "+time=2", "+tries=3"]


def dnsmasq(spawn, port):
    """dnsmasq on 127.0.0.1:port (UDP and TCP) answering x.test and y.test."""
    spawn(["dnsmasq", "--no-daemon", "--port", str(port), "--listen-address", "127.0.0.1",
           "--bind-interfaces", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
           "--pid-file", "--address=/x.test/10.1.2.3", "--address=/y.test/10.4.5.6"],
          port=port)


def via(relay, tmp_path, key):
    return ["--via", f"127.0.0.1:{relay.port}", "--key", key.path, "--known-relays",
            str(tmp_path / f"known_relays.{key.path.rsplit('/', 1)[-1]}")]


def dig(port, name, *extra):
    r = run_peer([*DIG, *extra, "-p", str(port), name], timeout=20, check=False)
    return r.stdout.decode().split()


def test_dig_through_local_udp_to_host_port(procs, tmp_path, keys, spawn):
    """`local udp://L 127.0.0.1:DNS`: dig gets dnsmasq's answers, a flow per client port."""
    dns = free_udp_port()
    dnsmasq(spawn, dns)
    relay = start_relay(procs, tmp_path, keys,
                        auth=[f"connect=127.0.0.1:{dns} {keys.alice.line}"])
    lport = free_udp_port()
    c = procs("local", f"udp://127.0.0.1:{lport}", f"127.0.0.1:{dns}",
              *via(relay, tmp_path, keys.alice), "--control", tmp_path / "c.sock")
    c.wait_log(rf"^local udp://127\.0\.0\.1:{lport} 127\.0\.0\.1:{dns}: up")
    assert dig(lport, "x.test") == ["10.1.2.3"]
    assert dig(lport, "y.test") == ["10.4.5.6"]
    st = status_json(tmp_path / "c.sock")["expose"][0]
    rule = st["rules"][0]
    assert rule["kind"] == "local" and rule["streams"] >= 2, st  # a flow per dig (its port)
    sess = relay.status()["relay"]["sessions"]
    assert len(sess) == 1 and sess[0]["opened"]["total"] == 1, sess  # one channel


def test_tcp_and_udp_from_one_line(procs, tmp_path, keys, spawn):
    """`local tcp+udp://L HOST:PORT`: dig over UDP and over TCP on the same port."""
    dns = free_udp_port()
    dnsmasq(spawn, dns)
    relay = start_relay(procs, tmp_path, keys,
                        auth=[f"connect=127.0.0.1:{dns} {keys.alice.line}"])
    lport = free_udp_port()
    c = procs("local", f"tcp+udp://127.0.0.1:{lport}", f"127.0.0.1:{dns}",
              *via(relay, tmp_path, keys.alice))
    c.wait_log(r"^local udp://.*: up")
    assert dig(lport, "x.test") == ["10.1.2.3"]
    assert dig(lport, "x.test", "+tcp") == ["10.1.2.3"]
    assert len(relay.status()["relay"]["sessions"]) == 1


def test_dig_to_a_private_udp_service(procs, tmp_path, keys, spawn):
    """bob offers dnsmasq as a private UDP service; alice, granted reach=dns, digs it."""
    dns = free_udp_port()
    dnsmasq(spawn, dns)
    relay = start_relay(procs, tmp_path, keys,
                        auth=[f"reach=dns {keys.alice.line}", keys.bob.line])
    b = procs("expose", f"udp://127.0.0.1:{dns}", "--name", "dns", "--private",
              *via(relay, tmp_path, keys.bob))
    b.wait_log(r"^expose udp://127\.0\.0\.1:\d+ dns: private on relay")
    lport = free_udp_port()
    c = procs("local", f"udp://127.0.0.1:{lport}", "dns", *via(relay, tmp_path, keys.alice))
    c.wait_log(r"^local udp://127\.0\.0\.1:\d+ dns: up")
    assert dig(lport, "x.test") == ["10.1.2.3"]
    assert dig(lport, "y.test") == ["10.4.5.6"]
    svc = [v for v in relay.status()["relay"]["services"] if v["name"] == "dns"]
    assert svc and svc[0]["private"] and svc[0]["port"] == 0 and svc[0]["visitors"] >= 2, svc


def test_udp_refusals_name_the_grant(procs, tmp_path, keys, spawn):
    """No connect= for the port, no reach= for the name: each line is refused with the
    relay's words, the other line of the same session works."""
    dns = free_udp_port()
    dnsmasq(spawn, dns)
    relay = start_relay(procs, tmp_path, keys,
                        auth=[f"connect=127.0.0.1:{dns} {keys.alice.line}"])
    other, good, priv = free_udp_port(), free_udp_port(), free_udp_port()
    conf = tmp_path / "local.conf"
    v = " ".join(via(relay, tmp_path, keys.alice))
    conf.write_text(f"local udp://127.0.0.1:{other} 127.0.0.1:{dns + 1} {v}\n"
                    f"local udp://127.0.0.1:{priv} secret {v}\n"
                    f"local udp://127.0.0.1:{good} 127.0.0.1:{dns} {v}\n")
    c = procs("run", conf, "--control", "none")
    c.wait_log(rf"may not send to udp 127\.0\.0\.1:{dns + 1}; add "
               rf"connect=127\.0\.0\.1:{dns + 1} to its line on the relay")
    c.wait_log(r"may not reach 'secret'; add reach=secret to its line on the relay")
    c.wait_log(rf"^local udp://127\.0\.0\.1:{good} 127\.0\.0\.1:{dns}: up")
    assert dig(good, "x.test") == ["10.1.2.3"]
    # the refused line's socket drops what it gets: no answer, no crash
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    s.sendto(b"\x00" * 12, ("127.0.0.1", other))
    with pytest.raises(socket.timeout):
        s.recv(100)
    s.close()
    assert relay.alive() and c.proc.poll() is None
    assert len(relay.status()["relay"]["sessions"]) == 1


def dns_query(name, qid=0x1234):
    """A DNS query for name's A record (RFC 1035), as dig would send it."""
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)


def dns_a(answer):
    """The last A record's address in a DNS answer."""
    assert len(answer) >= 16 and answer[3] & 0x0f == 0, answer  # RCODE 0
    return socket.inet_ntoa(answer[-4:])


def test_socks_via_udp_associate(procs, tmp_path, keys, spawn, udp_echo):
    """UDP ASSOCIATE through `socks --via`: datagrams to dnsmasq (an address, and a name the
    relay resolves) go from the relay and the answers come back behind the SOCKS header; a
    destination without a connect= grant gets nothing, the others go on."""
    from test_socks_rfc import udp_associate, udp_header, udp_parse

    dns = free_udp_port()
    dnsmasq(spawn, dns)
    echo = udp_echo()
    relay = start_relay(procs, tmp_path, keys,
                        auth=[f"connect=127.0.0.1:{dns}|localhost:{dns} {keys.alice.line}"])
    sport = free_udp_port()
    s = procs("socks", f"127.0.0.1:{sport}", *via(relay, tmp_path, keys.alice))
    s.wait_log(r"session up")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(5)
    tcp, r = udp_associate(sport, u.getsockname())
    try:
        u.sendto(udp_header("127.0.0.1", dns) + dns_query("x.test"), r)
        host, port, payload = udp_parse(u.recvfrom(65536)[0])
        assert (host, port) == ("127.0.0.1", dns) and dns_a(payload) == "10.1.2.3"
        u.sendto(udp_header("localhost", dns) + dns_query("y.test", 7), r)
        host, port, payload = udp_parse(u.recvfrom(65536)[0])
        assert port == dns and dns_a(payload) == "10.4.5.6", (host, port)
        # the echo server's port is not granted: the relay refuses, nothing comes back
        u.sendto(udp_header("127.0.0.1", echo.port) + b"ping", r)
        u.settimeout(1)
        with pytest.raises(socket.timeout):
            u.recvfrom(65536)
        u.settimeout(5)
        u.sendto(udp_header("127.0.0.1", dns) + dns_query("x.test", 9), r)
        assert dns_a(udp_parse(u.recvfrom(65536)[0])[2]) == "10.1.2.3"
        opened = relay.status()["relay"]["sessions"][0]["opened"]
        assert opened["total"] == 2 and opened["refused"] >= 1, opened
        assert opened["channels"] == 2, opened
    finally:
        tcp.close()
        u.close()
    # the association's end closes its channels on the relay
    wait_until(lambda: relay.status()["relay"]["sessions"][0]["opened"]["channels"] == 0, 5,
               "the relay's channels to close")


def test_socks_via_hands_the_client_over(procs, tmp_path, keys, tcp_server):
    """`socks --via` CONNECT: once the relay connected, the SOCKS client's socket itself goes
    to the relay client (no hop through the worker). A target that speaks first has its
    banner held and delivered after the hand-over; then 16 MiB each way by sha256, and a
    half-close that reaches the target."""
    import hashlib
    import threading

    from conftest import recv_exact, socks5_connect

    size = 16 << 20
    got = {}

    def banner_then_sink_and_send(conn, peer):
        conn.sendall(b"BANNER\n")
        h, n = hashlib.sha256(), 0
        while n < size:
            b = conn.recv(1 << 16)
            if not b:
                break
            h.update(b)
            n += len(b)
        got["up"] = (n, h.hexdigest())
        assert conn.recv(1) == b""  # the client's FIN came through
        conn.sendall(data_down)
        conn.close()

    data_up, data_down = os.urandom(size), os.urandom(size)
    srv = tcp_server(banner_then_sink_and_send)
    relay = start_relay(procs, tmp_path, keys,
                        auth=[f"connect=127.0.0.1:{srv.port} {keys.alice.line}"])
    sport = free_udp_port()
    s = procs("socks", f"127.0.0.1:{sport}", *via(relay, tmp_path, keys.alice), "-v")
    s.wait_log(r"session up")
    c, _ = socks5_connect(sport, "127.0.0.1", srv.port)
    c.settimeout(30)
    try:
        assert recv_exact(c, 7) == b"BANNER\n"
        t = threading.Thread(target=c.sendall, args=(data_up,))
        t.start()
        t.join(60)
        c.shutdown(socket.SHUT_WR)
        h, n = hashlib.sha256(), 0
        while True:
            b = c.recv(1 << 16)
            if not b:
                break
            h.update(b)
            n += len(b)
    finally:
        c.close()
    assert got.get("up") == (size, hashlib.sha256(data_up).hexdigest()), got
    assert (n, h.hexdigest()) == (size, hashlib.sha256(data_down).hexdigest())
    s.wait_log(r"handed to the relay client")  # the worker's part ended at the hand-over
