"""
`pinhole socks` spoken to byte by byte by a client written to RFC 1928 (SOCKS5), RFC 1929
(username/password) and the SOCKS4/4a notes: CONNECT and its reply, every reply code,
destination rules, users, BIND, UDP ASSOCIATE, and handshakes that are garbage, cut short
or stalled.

    python client ──> pinhole socks 127.0.0.1:P ──> echo 127.0.0.1:Q (a thread per conn)
    (one byte at a    --handshake-timeout          ├─> 127.0.0.1:CLOSED (nothing listens)
     time if need be)                              ├─> nosuchhost.invalid (NXDOMAIN)
                                                   ├─> UDP echo 127.0.0.1:U, dnsmasq :D
    BIND peer 127.0.0.x ──> the address pinhole announces in its first BIND reply
"""

import os
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import (CMD_BIND, CMD_CONNECT, CMD_UDP, alloc_port, connect, echo_once, free_udp_port,
                      read_all, recv_exact, recv_until_eof, send_in_thread, sha256, socks4_request,
                      socks5_addr, socks5_auth_msg, socks5_connect, socks5_greet, socks5_open,
                      socks5_parse_addr, socks5_reply, start_socks, wait_until)

MiB = 1 << 20
INVALID = "nosuchhost.invalid"  # RFC 6761: never resolves


def closed_port():
    """A port nothing listens on (alloc_port never hands it out again)."""
    return alloc_port()


def assert_closed(c, why, timeout=5):
    """Nothing more comes on c and pinhole ends it (FIN or reset) within timeout."""
    data, how = read_all(c, timeout)
    assert how in ("eof", "reset"), f"{why}: still open after {timeout} s"
    assert data == b"", f"{why}: unexpected bytes {data!r}"


# ---------------------------------------------------------------------------------------------
# 1. CONNECT


def test_connect_relays_both_ways_and_names_the_bound_address(pinhole, echo_server):
    """RFC 1928 section 6: the reply's BND.ADDR:BND.PORT is the address pinhole connected to
    the target from. Then 2 MiB both ways, and a half-close passed on."""
    srv = echo_server()
    ph, port = start_socks(pinhole)
    s, bnd = socks5_connect(port, "127.0.0.1", srv.port)
    try:
        wait_until(lambda: srv.accepted == 1, 5, "the target to accept")
        assert bnd == srv.peers[0][:2], f"BND {bnd}, the target saw {srv.peers[0]}"
        echo_once(s, b"x")
        data = os.urandom(2 * MiB)
        t = send_in_thread(s, data)  # then a FIN, which the echo server answers with its own
        got = recv_until_eof(s)
        t.join(timeout=10)
        assert t.error is None, t.error
        assert len(got) == len(data) and sha256(got) == sha256(data)
    finally:
        s.close()
    ph.stop()
    st = ph.final_stats()
    assert st["accepted"] == 1 and st["active"] == 0, st


def test_connect_by_name(pinhole, echo_server):
    """ATYP 3: pinhole resolves the name (localhost: /etc/hosts)."""
    srv = echo_server()
    _, port = start_socks(pinhole)
    s, _ = socks5_connect(port, "localhost", srv.port)
    echo_once(s, b"by name")
    s.close()
    assert srv.accepted == 1


def test_connect_ipv6(pinhole, echo_server, ipv6):
    """ATYP 4 to ::1, through a proxy reached over IPv6 too; BND is IPv6 then."""
    srv = echo_server(host="::1")
    _, port = start_socks(pinhole, host="[::1]")
    s, bnd = socks5_connect(port, "::1", srv.port, proxy_host="::1")
    echo_once(s, b"over v6")
    s.close()
    wait_until(lambda: srv.accepted == 1, 5, "the target to accept")
    assert bnd == srv.peers[0][:2], f"BND {bnd}, the target saw {srv.peers[0]}"


def test_bytes_sent_before_the_replies_are_not_lost(pinhole, echo_server):
    """A client that sends greeting, request and data in one write (as Tor's optimistic data
    does) gets both replies, then the echo of its data."""
    srv = echo_server()
    _, port = start_socks(pinhole, "--workers", "1")
    payload = os.urandom(3000)
    s = connect("127.0.0.1", port)
    try:
        s.sendall(b"\x05\x01\x00" + b"\x05\x01\x00" + socks5_addr("127.0.0.1")
                  + struct.pack("!H", srv.port) + payload)
        assert recv_exact(s, 2) == b"\x05\x00"
        rep, _ = socks5_reply(s)
        assert rep == 0
        assert recv_exact(s, len(payload)) == payload
    finally:
        s.close()


def test_many_requests_in_a_row_each_get_their_own_target(pinhole, tcp_server):
    """Connections to three targets alternately: each reaches the one it named."""
    srvs = [tcp_server(lambda c, p, t=t: c.sendall(t)) for t in (b"A", b"B", b"C")]
    _, port = start_socks(pinhole)
    for i in range(30):
        k = i % 3
        s, _ = socks5_connect(port, "127.0.0.1", srvs[k].port)
        assert recv_until_eof(s) == b"ABC"[k:k + 1]
        s.close()
    assert [x.accepted for x in srvs] == [10, 10, 10]


# ---------------------------------------------------------------------------------------------
# 2. reply codes


def test_reply_refused_is_5(pinhole):
    _, port = start_socks(pinhole)
    s, rep, _ = socks5_open(port, CMD_CONNECT, "127.0.0.1", closed_port())
    assert rep == 5, f"reply {rep} for a closed port, expected 5 (connection refused)"
    assert_closed(s, "after reply 5")
    s.close()


def test_reply_name_does_not_resolve_is_4(pinhole):
    _, port = start_socks(pinhole)
    s, rep, _ = socks5_open(port, CMD_CONNECT, INVALID, 80)
    assert rep == 4, f"reply {rep} for {INVALID}, expected 4 (host unreachable)"
    assert_closed(s, "after reply 4")
    s.close()


def test_reply_connect_timed_out_is_6(pinhole, blackhole):
    _, port = start_socks(pinhole, "--connect-timeout", "1s")
    t0 = time.monotonic()
    s, rep, _ = socks5_open(port, CMD_CONNECT, "127.0.0.1", blackhole)
    took = time.monotonic() - t0
    assert rep == 6, f"reply {rep} for a connect that timed out, expected 6 (TTL expired)"
    assert 0.8 <= took < 4, f"the reply came after {took:.1f} s with --connect-timeout 1s"
    assert_closed(s, "after reply 6")
    s.close()


def test_reply_command_not_supported_is_7(pinhole, echo_server):
    srv = echo_server()
    _, port = start_socks(pinhole)
    for cmd in (0, 4, 9, 0xff):
        s, rep, _ = socks5_open(port, cmd, "127.0.0.1", srv.port)
        assert rep == 7, f"reply {rep} for CMD {cmd}, expected 7 (command not supported)"
        assert_closed(s, f"after reply 7 to CMD {cmd}")
        s.close()
    assert srv.accepted == 0


def test_reply_address_type_not_supported_is_8(pinhole, echo_server):
    srv = echo_server()
    _, port = start_socks(pinhole)
    for atyp in (0, 2, 5, 0xff):
        s = connect("127.0.0.1", port)
        try:
            socks5_greet(s)
            s.sendall(bytes([5, 1, 0, atyp]) + b"\x7f\x00\x00\x01" + struct.pack("!H", srv.port))
            rep, _ = socks5_reply(s)
            assert rep == 8, f"reply {rep} for ATYP {atyp}, expected 8"
            assert_closed(s, f"after reply 8 to ATYP {atyp}")
        finally:
            s.close()
    assert srv.accepted == 0


# ---------------------------------------------------------------------------------------------
# 3. destination rules (checked after resolution: a CIDR matches what a name resolved to)


def reply_to(port, host, tport):
    s, rep, _ = socks5_open(port, CMD_CONNECT, host, tport)
    s.close()
    return rep


def socks4_reply_to(port, host, tport):
    s = connect("127.0.0.1", port)
    try:
        return socks4_request(s, host, tport)
    finally:
        s.close()


def test_deny_dest_cidr_matches_a_resolved_name(pinhole, echo_server):
    srv = echo_server()
    _, port = start_socks(pinhole, "--deny-dest", "127.0.0.0/8", "--deny-dest", "::1/128")
    assert reply_to(port, "localhost", srv.port) == 2, "localhost resolves into 127.0.0.0/8"
    assert reply_to(port, "127.0.0.1", srv.port) == 2
    assert reply_to(port, "127.3.4.5", srv.port) == 2
    assert socks4_reply_to(port, "127.0.0.1", srv.port) == 91
    assert socks4_reply_to(port, "localhost", srv.port) == 91  # SOCKS4a
    assert srv.accepted == 0


def test_deny_dest_elsewhere_lets_loopback_through(pinhole, echo_server):
    srv = echo_server()
    _, port = start_socks(pinhole, "--deny-dest", "10.0.0.0/8", "--deny-dest", "2001:db8::/32")
    assert reply_to(port, "localhost", srv.port) == 0
    assert reply_to(port, "127.0.0.1", srv.port) == 0
    assert socks4_reply_to(port, "127.0.0.1", srv.port) == 90


def test_allow_dest_name_suffix(pinhole, echo_server):
    """`--allow-dest localhost` lets the name through, not a bare address (no name matches);
    `*.localhost` does not match localhost itself."""
    srv = echo_server()
    _, port = start_socks(pinhole, "--allow-dest", "localhost")
    assert reply_to(port, "localhost", srv.port) == 0
    assert reply_to(port, "127.0.0.1", srv.port) == 2
    assert socks4_reply_to(port, "127.0.0.1", srv.port) == 91
    assert socks4_reply_to(port, "localhost", srv.port) == 90
    _, port2 = start_socks(pinhole, "--allow-dest", "*.localhost")
    assert reply_to(port2, "localhost", srv.port) == 2
    assert srv.accepted == 2


def test_deny_dest_name_wins_over_allow_cidr(pinhole, echo_server):
    """A deny rule matching the name refuses even when an allow rule matches the address;
    names compare without regard to case (DNS names are case-insensitive), so `LocalHost`
    is no way around `--deny-dest localhost`."""
    srv = echo_server()
    _, port = start_socks(pinhole, "--allow-dest", "127.0.0.0/8", "--deny-dest", "localhost")
    assert reply_to(port, "localhost", srv.port) == 2
    assert reply_to(port, "LocalHost", srv.port) == 2
    assert reply_to(port, "127.0.0.1", srv.port) == 0
    assert reply_to(port, "10.1.2.3", srv.port) == 2, "allow rules exist and none matches"
    assert srv.accepted == 1


# ---------------------------------------------------------------------------------------------
# 4. users (RFC 1929)


def test_username_password(pinhole, echo_server):
    srv = echo_server()
    _, port = start_socks(pinhole, "--user", "alice:s3cret", "--user", "bob:hunter2")
    # the right credentials, for either user
    for user, pw in (("alice", "s3cret"), ("bob", "hunter2")):
        s, _ = socks5_connect(port, "127.0.0.1", srv.port, user=user, password=pw)
        echo_once(s, f"hello {user}".encode())
        s.close()
    # offering both methods: pinhole picks username/password
    s = connect("127.0.0.1", port)
    s.sendall(b"\x05\x02\x00\x02")
    assert recv_exact(s, 2) == b"\x05\x02"
    s.close()
    # no credentials offered: no acceptable method
    s = connect("127.0.0.1", port)
    s.sendall(b"\x05\x01\x00")
    assert recv_exact(s, 2) == b"\x05\xff"
    assert_closed(s, "after 05 FF")
    s.close()
    # wrong credentials: a failure status, then closed
    for user, pw in (("alice", "wrong"), ("alice", "hunter2"), ("mallory", "s3cret"),
                     ("alice", "s3cre"), ("alice", "s3crett"), ("ALICE", "s3cret")):
        s = connect("127.0.0.1", port)
        s.sendall(b"\x05\x01\x02")
        assert recv_exact(s, 2) == b"\x05\x02"
        s.sendall(socks5_auth_msg(user, pw))
        st = recv_exact(s, 2)
        assert st[0] == 1 and st[1] != 0, f"{user}:{pw} got RFC 1929 status {st!r}"
        assert_closed(s, f"after refusing {user}:{pw}")
        s.close()
    assert srv.accepted == 2


def test_socks4_refused_when_users_are_configured(pinhole, echo_server):
    srv = echo_server()
    _, port = start_socks(pinhole, "--user", "alice:s3cret")
    for host in ("127.0.0.1", "localhost"):  # SOCKS4, SOCKS4a
        s = connect("127.0.0.1", port)
        assert socks4_request(s, host, srv.port, userid=b"alice") == 91
        assert_closed(s, "after SOCKS4 reply 91")
        s.close()
    assert srv.accepted == 0


def test_users_file(pinhole, echo_server, tmp_path):
    srv = echo_server()
    users = tmp_path / "users"
    users.write_text("# proxy users\n\ncarol:pa ss word\n# another comment\ndave:x\n")
    _, port = start_socks(pinhole, "--users", users)
    s, _ = socks5_connect(port, "127.0.0.1", srv.port, user="carol", password="pa ss word")
    echo_once(s, b"carol")
    s.close()
    s, _ = socks5_connect(port, "127.0.0.1", srv.port, user="dave", password="x")
    s.close()
    s = connect("127.0.0.1", port)
    s.sendall(b"\x05\x01\x02" + socks5_auth_msg("carol", "x"))
    assert recv_exact(s, 2) == b"\x05\x02"
    assert recv_exact(s, 2)[1] != 0
    s.close()


# ---------------------------------------------------------------------------------------------
# 5. SOCKS4 and SOCKS4a without users


def test_socks4_and_socks4a(pinhole, echo_server):
    srv = echo_server()
    _, port = start_socks(pinhole)
    for host in ("127.0.0.1", "localhost"):
        s = connect("127.0.0.1", port)
        assert socks4_request(s, host, srv.port, userid=b"anyone") == 90
        echo_once(s, f"socks4 to {host}".encode())
        s.close()
    for host, tport in (("127.0.0.1", closed_port()), (INVALID, 80)):
        s = connect("127.0.0.1", port)
        assert socks4_request(s, host, tport) == 91, f"{host}:{tport} must be rejected"
        assert_closed(s, "after reply 91")
        s.close()
    assert srv.accepted == 2


# ---------------------------------------------------------------------------------------------
# 6. BIND


def bind_first_reply(port, expect_from, proxy_host="127.0.0.1"):
    """A BIND request naming expect_from; returns (socket, announced (host, port))."""
    s, rep, bnd = socks5_open(port, CMD_BIND, expect_from, 0, proxy_host=proxy_host)
    if rep != 0:
        s.close()
        raise AssertionError(f"BIND: first reply {rep}")
    return s, bnd


def test_bind_relays_the_incoming_peer(pinhole):
    _, port = start_socks(pinhole)
    s, (host, bport) = bind_first_reply(port, "127.0.0.1")
    try:
        assert host == "127.0.0.1", f"BND.ADDR {host}: the client reached the proxy at 127.0.0.1"
        assert bport != 0
        peer = connect(host, bport, source="127.0.0.1")
        try:
            rep, who = socks5_reply(s)
            assert rep == 0, f"second BIND reply {rep}"
            assert who == peer.getsockname()[:2], f"second reply names {who}, the peer is " \
                                                  f"{peer.getsockname()}"
            data = b"from the client " * 1000
            s.sendall(data)
            assert recv_exact(peer, len(data)) == data
            peer.sendall(b"from the peer")
            assert recv_exact(s, 13) == b"from the peer"
            peer.shutdown(socket.SHUT_WR)  # half-closes pass on, both ways
            assert s.recv(1) == b""
            s.sendall(b"after the peer's FIN")
            assert recv_exact(peer, 20) == b"after the peer's FIN"
            s.shutdown(socket.SHUT_WR)
            assert peer.recv(1) == b""
        finally:
            peer.close()
    finally:
        s.close()


def test_bind_any_peer_when_dst_is_unspecified(pinhole):
    _, port = start_socks(pinhole)
    s, (host, bport) = bind_first_reply(port, "0.0.0.0")
    peer = connect(host, bport, source="127.0.0.9")
    try:
        rep, who = socks5_reply(s)
        assert rep == 0 and who == peer.getsockname()[:2], (rep, who)
        peer.sendall(b"ping")
        assert recv_exact(s, 4) == b"ping"
    finally:
        peer.close()
        s.close()


def test_bind_announces_the_address_the_client_reached(pinhole):
    """A proxy listening on 127.0.0.2 announces 127.0.0.2."""
    _, port = start_socks(pinhole, host="127.0.0.2")
    s, (host, bport) = bind_first_reply(port, "127.0.0.1", proxy_host="127.0.0.2")
    try:
        assert host == "127.0.0.2", f"BND.ADDR {host}, the client reached 127.0.0.2"
        peer = connect(host, bport, source="127.0.0.1")
        rep, who = socks5_reply(s)
        assert rep == 0 and who == peer.getsockname()[:2], (rep, who)
        peer.close()
    finally:
        s.close()


def test_bind_refuses_a_peer_from_another_address(pinhole):
    """The incoming peer must come from DST.ADDR: one from elsewhere is never relayed, and
    the client never gets a success reply naming it."""
    _, port = start_socks(pinhole)
    s, (host, bport) = bind_first_reply(port, "127.0.0.3")
    try:
        try:
            intruder = connect(host, bport, source="127.0.0.4")
        except ConnectionResetError:  # the reset can beat connect()'s own return on loopback
            intruder = None
        if intruder is not None:
            try:
                intruder.sendall(b"let me in")
            except OSError:
                pass  # closed at once
            data, how = read_all(intruder, timeout=5)
            intruder.close()
            assert data == b"" and how in ("eof", "reset"), \
                f"the intruder from 127.0.0.4 got {data!r} and '{how}'"
        got, _ = read_all(s, timeout=1)
        if got:  # a failure reply is fine; a success naming the intruder is not
            assert got[1] != 0, f"second BIND reply {got!r} for a peer from the wrong address"
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------
# 7. UDP ASSOCIATE


def udp_header(host, port, frag=0):
    return b"\0\0" + bytes([frag]) + socks5_addr(host) + struct.pack("!H", port)


def udp_parse(d):
    """(sender host, sender port, payload) of a datagram from the relay."""
    assert d[:3] == b"\0\0\0", f"relay datagram header {d[:3]!r}"
    host, port, used = socks5_parse_addr(d[3:])
    return host, port, d[3 + used:]


def udp_associate(port, client_addr=("0.0.0.0", 0), proxy_host="127.0.0.1"):
    """A UDP ASSOCIATE: (tcp socket, relay (host, port)); 0.0.0.0 in the reply means the
    address the client reached the proxy at."""
    s, rep, (host, rport) = socks5_open(port, CMD_UDP, *client_addr, proxy_host=proxy_host)
    if rep != 0:
        s.close()
        raise AssertionError(f"UDP ASSOCIATE: reply {rep}")
    assert rport != 0, "relay port 0"
    if host in ("0.0.0.0", "::"):
        host = proxy_host
    return s, (host, rport)


def udp_bound(port):
    out = subprocess.run(["ss", "-uanH", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=5, check=True).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def nothing_comes(c, wait=0.5):
    c.settimeout(wait)
    try:
        c.recvfrom(65536)
    except socket.timeout:
        return True
    return False


@pytest.fixture
def udp_sock():
    made = []

    def make(host="127.0.0.1"):
        u = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        made.append(u)
        u.settimeout(5)
        u.bind((host, 0))
        return u

    yield make
    for u in made:
        u.close()


def relay_roundtrip(u, relay, host, port, payload):
    """Sends payload to host:port through the relay; returns (sender host, port, payload)
    of the answer, checking it came from the relay."""
    u.sendto(udp_header(host, port) + payload, relay)
    try:
        d, src = u.recvfrom(65536)
    except socket.timeout:
        pytest.fail(f"no answer through the relay {relay} from {host}:{port}")
    assert src[:2] == relay, f"answer from {src}, the relay is {relay}"
    return udp_parse(d)


def test_udp_associate_echo(pinhole, udp_echo, udp_sock):
    a, b = udp_echo(), udp_echo(tag=b"B:")
    _, port = start_socks(pinhole)
    u = udp_sock()
    s, relay = udp_associate(port, u.getsockname())
    try:
        assert relay[0] == "127.0.0.1", f"relay {relay}: the client reached 127.0.0.1"
        for n in (1, 100, 1400, 8000, 0):
            msg = os.urandom(n)
            assert relay_roundtrip(u, relay, "127.0.0.1", a.port, msg) == \
                ("127.0.0.1", a.port, msg)
        # two destinations through one relay: each answer's header names its own sender
        for i in range(5):
            assert relay_roundtrip(u, relay, "127.0.0.1", b.port, b"%d" % i) == \
                ("127.0.0.1", b.port, b"B:%d" % i)
            assert relay_roundtrip(u, relay, "127.0.0.1", a.port, b"%d" % i) == \
                ("127.0.0.1", a.port, b"%d" % i)
        # a destination by name: the answer names the address it came from
        assert relay_roundtrip(u, relay, "localhost", a.port, b"by name") == \
            ("127.0.0.1", a.port, b"by name")
        sent = a.count
        # FRAG != 0 is dropped (pinhole does no reassembly), and so is a datagram that is
        # only a header cut short
        u.sendto(udp_header("127.0.0.1", a.port, frag=1) + b"fragment 1", relay)
        u.sendto(udp_header("127.0.0.1", a.port, frag=0x81) + b"last fragment", relay)
        u.sendto(b"\0\0\0\x01\x7f\x00", relay)
        assert nothing_comes(u), "an answer to a fragment or a broken header"
        assert a.count == sent, "a fragment reached the destination"
        # the relay still works
        assert relay_roundtrip(u, relay, "127.0.0.1", a.port, b"still") == \
            ("127.0.0.1", a.port, b"still")
        # another source address than the client's is not relayed
        other = udp_sock("127.0.0.2")
        other.sendto(udp_header("127.0.0.1", a.port) + b"stranger", relay)
        assert nothing_comes(other), "the relay answered a stranger"
        assert a.count == sent + 1, "a stranger's datagram was relayed"
    finally:
        s.close()
    # the relay lives as long as the TCP connection
    wait_until(lambda: not udp_bound(relay[1]), 5, f"the relay's UDP port {relay[1]} to close")
    u.sendto(udp_header("127.0.0.1", a.port) + b"after close", relay)
    assert nothing_comes(u)


def test_udp_associate_lets_back_only_the_last_16_destinations(pinhole, udp_echo, udp_sock):
    """Replies are let back from the destinations the client wrote to, the 16 most recent:
    the 17th new one pushes the least recent out, and its late answer is dropped until the
    client writes to it again."""
    _, port = start_socks(pinhole)
    u = udp_sock()
    first = udp_sock()  # a destination that answers when the test says so
    others = [udp_echo() for _ in range(16)]
    s, relay = udp_associate(port, u.getsockname())
    try:
        u.sendto(udp_header("127.0.0.1", first.getsockname()[1]) + b"hello", relay)
        first.settimeout(5)
        d, out = first.recvfrom(65536)  # out: the relay's socket towards destinations
        assert d == b"hello"
        first.sendto(b"answer 1", out)
        assert udp_parse(u.recvfrom(65536)[0])[2] == b"answer 1"
        for e in others:  # 16 more destinations: the first is now the least recent of 17
            assert relay_roundtrip(u, relay, "127.0.0.1", e.port, b"x")[2] == b"x"
        first.sendto(b"late", out)
        assert nothing_comes(u), "an answer from a destination pushed out of the 16"
        u.sendto(udp_header("127.0.0.1", first.getsockname()[1]) + b"again", relay)
        assert first.recvfrom(65536)[0] == b"again"
        first.sendto(b"answer 2", out)
        assert udp_parse(u.recvfrom(65536)[0])[2] == b"answer 2"
    finally:
        s.close()


def test_udp_associate_ipv6_destination(pinhole, udp_echo, udp_sock, ipv6):
    """An IPv4 client's relay sends to an IPv6 destination (ATYP 4) and back."""
    a = udp_echo(host="::1")
    _, port = start_socks(pinhole)
    u = udp_sock()
    s, relay = udp_associate(port, u.getsockname())
    try:
        for n in (1, 1200):
            msg = os.urandom(n)
            assert relay_roundtrip(u, relay, "::1", a.port, msg) == ("::1", a.port, msg)
    finally:
        s.close()


DNSMASQ = "/usr/sbin/dnsmasq"


def dns_query(qid, name):
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", 1, 1)  # type A, class IN


def dns_a_answers(msg, qid):
    """The IPv4 addresses in the answer section of a DNS response to qid."""
    rid, flags, qd, an = struct.unpack("!HHHH", msg[:8])
    assert rid == qid, f"answer to query {rid}, asked {qid}"
    assert flags & 0x8000 and flags & 0xf == 0, f"flags {flags:#x}"

    def skip_name(pos):
        while True:
            n = msg[pos]
            if n == 0:
                return pos + 1
            if n & 0xc0 == 0xc0:
                return pos + 2
            pos += 1 + n

    pos = 12
    for _ in range(qd):
        pos = skip_name(pos) + 4
    ips = []
    for _ in range(an):
        pos = skip_name(pos)
        typ, _, _, rdlen = struct.unpack("!HHIH", msg[pos:pos + 10])
        pos += 10
        if typ == 1:
            ips.append(socket.inet_ntoa(msg[pos:pos + 4]))
        pos += rdlen
    return ips


def test_udp_associate_dns_to_dnsmasq(pinhole, spawn, udp_sock):
    if not os.access(DNSMASQ, os.X_OK):
        pytest.skip("dnsmasq is not installed")
    dport = free_udp_port()
    spawn([DNSMASQ, "--no-daemon", "--no-resolv", "--no-hosts", f"--port={dport}",
           "--listen-address=127.0.0.1", "--bind-interfaces", "--pid-file=", "--log-facility=-",
           "--host-record=socks.test,192.0.2.55", "--address=/wild.test/198.51.100.9"],
          port=dport)
    wait_until(lambda: udp_bound(dport), 5, f"dnsmasq's UDP socket on {dport}")
    _, port = start_socks(pinhole)
    u = udp_sock()
    s, relay = udp_associate(port)  # 0.0.0.0:0: the client does not say where it sends from
    try:
        for qid, name, ip in ((0x1234, "socks.test", "192.0.2.55"),
                              (0x4321, "a.b.wild.test", "198.51.100.9")):
            host, sport, answer = relay_roundtrip(u, relay, "127.0.0.1", dport,
                                                  dns_query(qid, name))
            assert (host, sport) == ("127.0.0.1", dport)
            assert dns_a_answers(answer, qid) == [ip], f"{name}: {answer!r}"
    finally:
        s.close()


def test_udp_associate_idle_relay_ends(pinhole, udp_echo, udp_sock):
    """--udp-timeout: an idle relay ends, and its TCP connection with it."""
    a = udp_echo()
    _, port = start_socks(pinhole, "--udp-timeout", "1s")
    u = udp_sock()
    s, relay = udp_associate(port, u.getsockname())
    try:
        assert relay_roundtrip(u, relay, "127.0.0.1", a.port, b"x")[2] == b"x"
        t0 = time.monotonic()
        data, how = read_all(s, timeout=8)
        assert data == b"" and how in ("eof", "reset"), f"TCP '{how}' with {data!r}"
        assert 0.8 <= time.monotonic() - t0 < 6
    finally:
        s.close()
    wait_until(lambda: not udp_bound(relay[1]), 5, "the relay's UDP port to close")


# ---------------------------------------------------------------------------------------------
# 8. bad handshakes: garbage, cut short (then FIN), too long. Each gets the protocol's error
# reply where it has one and is closed at once, well before --handshake-timeout (a FIN in
# the middle of a message ends the handshake: no more bytes can come); a session that was
# open before carries on, and a new client is served.

GREET = b"\x05\x01\x00"  # no authentication
AUTH_GREET = b"\x05\x01\x02"  # username/password


def exact(b):
    return lambda got: got == b, repr(b)


def one_of(*answers):
    return lambda got: got in answers, " or ".join(map(repr, answers))


def socks5_failure(prefix):
    """prefix, then nothing or a SOCKS5 reply with REP != 0."""
    def ok(got):
        if not got.startswith(prefix):
            return False
        rest = got[len(prefix):]
        return rest == b"" or (len(rest) >= 4 and rest[0] == 5 and rest[1] != 0)
    return ok, f"{prefix!r} then nothing or a failure reply"


def socks4_failure():
    return (lambda got: got == b"" or (len(got) == 8 and got[:2] == b"\x00\x5b"),
            "nothing or reply 91")


def auth_failure():
    def ok(got):
        return got.startswith(b"\x05\x02") and (
            len(got) == 2 or (len(got) == 4 and got[3] != 0))
    return ok, "05 02 then nothing or an RFC 1929 failure status"


def http_status(*codes, or_nothing=False):
    def ok(got):
        if got == b"":
            return or_nothing
        head = got.split(b"\r\n", 1)[0].decode("latin-1")
        return any(head.startswith(f"HTTP/1.1 {c} ") or head.startswith(f"HTTP/1.0 {c} ")
                   for c in codes)
    return ok, f"HTTP status {codes}" + (" or nothing" if or_nothing else "")


TLS_HELLO = bytes.fromhex("16030100a5010000a10303") + os.urandom(32) + b"\x00" * 8

# (what, bytes sent, FIN after them, expected answer); no users
BAD = [
    ("FIN at once", b"", True, exact(b"")),
    ("greeting cut short", b"\x05\x03\x00\x01", True, exact(b"")),
    ("version 6", b"\x06\x01\x00", False, exact(b"")),
    ("zero bytes", b"\x00" * 64, False, exact(b"")),
    ("a TLS ClientHello", TLS_HELLO, False, exact(b"")),
    ("NMETHODS 0", b"\x05\x00", False, exact(b"\x05\xff")),
    ("no acceptable method", b"\x05\x02\x80\xfe", False, exact(b"\x05\xff")),
    ("request with version 4", GREET + b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50", False,
     socks5_failure(b"\x05\x00")),
    ("request cut in the IPv4 address", GREET + b"\x05\x01\x00\x01\x7f\x00", True,
     socks5_failure(b"\x05\x00")),
    ("request cut before the port", GREET + b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00", True,
     socks5_failure(b"\x05\x00")),
    ("request cut in the name", GREET + b"\x05\x01\x00\x03\x0aexam", True,
     socks5_failure(b"\x05\x00")),
    ("request cut in the IPv6 address", GREET + b"\x05\x01\x00\x04" + b"\x00" * 9, True,
     socks5_failure(b"\x05\x00")),
    ("empty name", GREET + b"\x05\x01\x00\x03\x00\x00\x50", False, socks5_failure(b"\x05\x00")),
    ("SOCKS4 cut short", b"\x04\x01\x00\x50\x7f", True, socks4_failure()),
    ("SOCKS4 command 3", b"\x04\x03\x00\x50\x7f\x00\x00\x01\x00", False, socks4_failure()),
    ("SOCKS4 user id that never ends", b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"u" * 70000,
     False, socks4_failure()),
    ("SOCKS4a name that never ends", b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + b"h" * 70000,
     False, socks4_failure()),
    ("HTTP request line garbage", b"GET \x01\x02 nonsense\r\n\r\n", False, http_status(400)),
    ("HTTP origin-form to a proxy", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False,
     http_status(400)),
    ("HTTP CONNECT without a port", b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", False,
     http_status(400)),
    ("HTTP CONNECT port 99999", b"CONNECT 127.0.0.1:99999 HTTP/1.1\r\n\r\n", False,
     http_status(400)),
    ("HTTP header without a colon", b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nno colon\r\n\r\n", False,
     http_status(400)),
    ("HTTP head cut short", b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 12", True,
     http_status(400, 408, or_nothing=True)),
    ("HTTP head of 1 MiB", b"GET http://127.0.0.1:1/ HTTP/1.1\r\nX-Big: " + b"a" * MiB, False,
     http_status(400, 431)),
    ("HTTP 20000 headers", b"GET http://127.0.0.1:1/ HTTP/1.1\r\n" + b"X: y\r\n" * 20000, False,
     http_status(400, 431)),
]

# with --user alice:s3cret
BAD_AUTH = [
    ("no-auth only, to a proxy with users", GREET, False, exact(b"\x05\xff")),
    ("auth version 5", AUTH_GREET + b"\x05\x05alice\x06s3cret", False, auth_failure()),
    ("a request instead of auth", AUTH_GREET + b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50",
     False, auth_failure()),
    ("auth cut short", AUTH_GREET + b"\x01\x05ali", True, auth_failure()),
    ("auth cut in the password", AUTH_GREET + b"\x01\x05alice\x06s3c", True, auth_failure()),
    ("ULEN 0", AUTH_GREET + b"\x01\x00\x06s3cret", False, auth_failure()),
    ("PLEN 0", AUTH_GREET + b"\x01\x05alice\x00", False, auth_failure()),
    ("password with a NUL after it", AUTH_GREET + b"\x01\x05alice\x07s3cret\x00", False,
     auth_failure()),
    ("SOCKS4a with a user id", b"\x04\x01\x00\x50\x00\x00\x00\x01alice\x00localhost\x00",
     False, socks4_failure()),
    ("HTTP without Proxy-Authorization", b"CONNECT 127.0.0.1:80 HTTP/1.1\r\n\r\n", False,
     http_status(407)),
    ("HTTP Basic with garbage", b"CONNECT 127.0.0.1:80 HTTP/1.1\r\n"
     b"Proxy-Authorization: Basic !!!notbase64\r\n\r\n", False, http_status(400, 407)),
    ("HTTP with another scheme", b"CONNECT 127.0.0.1:80 HTTP/1.1\r\n"
     b"Proxy-Authorization: Bearer YWxpY2U6czNjcmV0\r\n\r\n", False, http_status(407)),
]


def bad_client(port, data, fin):
    """Sends data (from a thread: pinhole may stop reading) and FIN when asked; returns
    (what came back, how it ended, seconds until it ended)."""
    c = connect("127.0.0.1", port)
    t0 = time.monotonic()
    try:
        t = send_in_thread(c, data, shut=fin) if data or fin else None
        got, how = read_all(c, timeout=6)
        if t is not None:
            t.join(timeout=5)
    finally:
        c.close()
    return got, how, time.monotonic() - t0


def run_bad(pinhole, echo_server, cases, users=False):
    srv = echo_server()
    args = ["--user", "alice:s3cret"] if users else []
    _, port = start_socks(pinhole, "--handshake-timeout", "5s", *args)
    user = {"user": "alice", "password": "s3cret"} if users else {}
    good, _ = socks5_connect(port, "127.0.0.1", srv.port, **user)
    try:
        problems = []
        for what, data, fin, (ok, want) in cases:
            got, how, took = bad_client(port, data, fin)
            if how not in ("eof", "reset") or took > 3:
                problems.append(f"{what}: not closed at once ('{how}' after {took:.1f} s)")
            if not ok(got):
                problems.append(f"{what}: got {got[:80]!r}, expected {want}")
            # the session from before carries on, and a new one is served
            echo_once(good, f"after {what}".encode())
            fresh, _ = socks5_connect(port, "127.0.0.1", srv.port, **user)
            echo_once(fresh, b"fresh")
            fresh.close()
        assert not problems, "\n".join(problems)
    finally:
        good.close()
    assert srv.accepted == 1 + len(cases), "a bad handshake reached the target"


def test_bad_handshakes(pinhole, echo_server):
    run_bad(pinhole, echo_server, BAD)


def test_bad_auth_handshakes(pinhole, echo_server):
    run_bad(pinhole, echo_server, BAD_AUTH, users=True)


# ---------------------------------------------------------------------------------------------
# 9. stalled handshakes: closed after --handshake-timeout, the session from before untouched

STALLS = [
    ("silent", b"", exact(b"")),
    ("half a greeting", b"\x05", one_of(b"", b"\x05\xff")),
    ("greeting, no request", GREET, socks5_failure(b"\x05\x00")),
    ("half a request", GREET + b"\x05\x01\x00\x03\x09local", socks5_failure(b"\x05\x00")),
    ("SOCKS4 without the end of the user id", b"\x04\x01\x00\x50\x7f\x00\x00\x01ab",
     socks4_failure()),
    ("HTTP head without its blank line", b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: x\r\n",
     http_status(408, or_nothing=True)),
]


def test_stalled_handshakes_time_out(pinhole, echo_server):
    srv = echo_server()
    _, port = start_socks(pinhole, "--handshake-timeout", "1s")
    good, _ = socks5_connect(port, "127.0.0.1", srv.port)
    results, lock = {}, threading.Lock()

    def stall(what, data, want):
        c = connect("127.0.0.1", port)
        t0 = time.monotonic()
        try:
            if data:
                c.sendall(data)
            got, how = read_all(c, timeout=8)
        finally:
            c.close()
        with lock:
            results[what] = (got, how, time.monotonic() - t0, want)

    def trickle():
        """A slow client: one byte of a good HTTP head every 0.2 s; the deadline is for the
        whole handshake, so it is cut off after 1 s all the same."""
        c = connect("127.0.0.1", port)
        t0 = time.monotonic()
        head = f"CONNECT 127.0.0.1:{srv.port} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        how = "sent all"
        try:
            for b in head:
                try:
                    c.sendall(bytes([b]))
                except OSError:
                    how = "closed"
                    break
                time.sleep(0.2)
            got, how = read_all(c, timeout=2) if how == "sent all" else (b"", how)
        finally:
            c.close()
        with lock:
            results["trickle"] = (b"", how, time.monotonic() - t0, None)

    threads = [threading.Thread(target=stall, args=x, daemon=True) for x in STALLS]
    threads.append(threading.Thread(target=trickle, daemon=True))
    for t in threads:
        t.start()
    time.sleep(0.3)  # a new client is served while they stall
    fresh, _ = socks5_connect(port, "127.0.0.1", srv.port)
    echo_once(fresh, b"fresh")
    fresh.close()
    for t in threads:
        t.join(timeout=15)
    assert len(results) == len(STALLS) + 1, f"stallers still running: {sorted(results)}"
    problems = []
    for what, (got, how, took, expect) in sorted(results.items()):
        if what == "trickle":
            if how != "closed" or took > 4:
                problems.append(f"trickle: '{how}' after {took:.1f} s (its head takes 10 s)")
            continue
        if how not in ("eof", "reset") or not 0.8 <= took <= 4:
            problems.append(f"{what}: '{how}' after {took:.1f} s, expected closed after ~1 s")
        ok, want = expect
        if not ok(got):
            problems.append(f"{what}: got {got[:80]!r}, expected {want}")
    assert not problems, "\n".join(problems)
    # the session opened before is past its handshake: idle for longer than the timeout,
    # it still works
    echo_once(good, b"still here")
    good.close()


# ---------------------------------------------------------------------------------------------
# the unspecified address means this host: never a destination, whatever the rules say


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "::ffff:0.0.0.0"])
def test_unspecified_address_is_no_destination(pinhole, echo_server, host):
    """Connecting to 0.0.0.0 (or ::) reaches the proxy's own host: a --deny-dest of
    127.0.0.0/8 must not be walked around that way, so the answer is 'not allowed'."""
    srv = echo_server(host="0.0.0.0")
    _, port = start_socks(pinhole, "--deny-dest", "127.0.0.0/8")
    s, rep, _ = socks5_open(port, CMD_CONNECT, host, srv.port)
    s.close()
    assert rep == 2, f"CONNECT {host}:{srv.port}: reply {rep}, expected 2 (not allowed)"
    # and in a UDP ASSOCIATE relay, such a datagram goes nowhere
    c, rep, (rhost, rport) = socks5_open(port, CMD_UDP, "0.0.0.0", 0)
    assert rep == 0
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(0.5)
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("0.0.0.0", 0))
    target.settimeout(0.5)
    try:
        u.sendto(b"\x00\x00\x00" + socks5_addr(host) + struct.pack("!H", target.getsockname()[1])
                 + b"hello", (rhost, rport))
        with pytest.raises(socket.timeout):
            target.recvfrom(100)
    finally:
        u.close()
        target.close()
        c.close()


# ---------------------------------------------------------------------------------------------
# a plain http:// request is the only one that reaches its server


def test_plain_http_request_is_alone_on_its_connection(pinhole):
    """A client that keeps its proxy connection alive sends a second request (with its
    credentials, maybe for another host): it must not reach the first request's server.
    The server gets exactly one request, with the Host of its URL, no proxy headers."""
    got, lock = [], threading.Lock()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(5)

    def serve():
        c, _ = srv.accept()
        c.settimeout(2)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                data += c.recv(4096)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            time.sleep(0.3)  # whatever else the proxy lets through arrives meanwhile
            c.setblocking(False)
            try:
                data += c.recv(65536)
            except BlockingIOError:
                pass
        finally:
            c.close()
            with lock:
                got.append(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    _, port = start_socks(pinhole, "--user", "alice:s3cret")
    sport = srv.getsockname()[1]
    auth = "Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n"  # alice:s3cret
    c = connect("127.0.0.1", port)
    c.sendall(f"GET http://127.0.0.1:{sport}/one HTTP/1.1\r\nHost: evil.example\r\n{auth}"
              f"Connection: keep-alive\r\n\r\n"
              f"GET http://other.example/two HTTP/1.1\r\nHost: other.example\r\n{auth}\r\n"
              .encode())
    reply, how = read_all(c, timeout=5)
    c.close()
    t.join(5)
    srv.close()
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"ok"), (reply, how)
    assert len(got) == 1, got
    req = got[0].decode(errors="replace")
    assert req.startswith("GET /one HTTP/1.1\r\n"), req
    assert req.count("GET ") == 1 and "/two" not in req, req
    assert f"Host: 127.0.0.1:{sport}\r\n" in req and "evil.example" not in req, req
    assert "Proxy-Authorization" not in req and "Connection: close\r\n" in req, req


def test_a_user_name_cannot_forge_log_lines(pinhole):
    """The user name a client sends is its own bytes: written to the log, a newline in it
    would make a line of the client's choosing."""
    ph, port = start_socks(pinhole, "--user", "alice:s3cret", "-v")
    c = connect("127.0.0.1", port)
    c.sendall(b"\x05\x01\x02")
    assert recv_exact(c, 2) == b"\x05\x02"
    c.sendall(socks5_auth_msg("x\n12:00:00.000 info: forged", "nope"))
    assert recv_exact(c, 2) == b"\x01\x01"
    c.close()
    ph.wait_log(r"wrong user name or password")
    assert not any(line.startswith("12:00:00.000") for line in ph.log.splitlines()), ph.log
