"""
Listen addresses and families: IPv4 only, IPv6 only ([::1]), dual-stack (:PORT), and an
IPv6 target. (:PORT is the only wildcard listener in the suite; clients still come from
loopback addresses only.)

    127.0.0.1 client ─┐                      ┌─> echo 127.0.0.1:Q
                      ├─> pinhole LISTEN ────┤
    ::1 client ───────┘                      └─> echo [::1]:Q
"""

from conftest import connect, echo_once


def served(host, port):
    """True when an echo comes back through host:port; False when the connection is
    refused (nothing listens there)."""
    try:
        c = connect(host, port)
    except ConnectionRefusedError:
        return False
    try:
        echo_once(c, f"via {host}".encode())
        return True
    finally:
        c.close()


def test_ipv4_listener_is_ipv4_only(pinhole, echo_server, free_port, ipv6):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}")
    assert f"forwarding tcp 127.0.0.1:{port} -> 127.0.0.1:{srv.port}" in ph.log
    assert served("127.0.0.1", port)
    assert not served("::1", port)


def test_ipv6_listener(pinhole, echo_server, free_port, ipv6):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"[::1]:{port}", f"127.0.0.1:{srv.port}")
    assert f"forwarding tcp [::1]:{port} -> 127.0.0.1:{srv.port}" in ph.log
    assert served("::1", port)
    assert not served("127.0.0.1", port), "[::1] must not take IPv4 clients"
    assert [p[0] for p in srv.peers] == ["127.0.0.1"]
    ph.stop()
    assert ph.final_stats()["accepted"] == 1


def test_dual_stack_listener(pinhole, echo_server, free_port, ipv6):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f":{port}", f"127.0.0.1:{srv.port}", "-vv")
    assert f"forwarding tcp [::]:{port} -> 127.0.0.1:{srv.port}" in ph.log
    for _ in range(2):
        assert served("127.0.0.1", port)
        assert served("::1", port)
    assert srv.accepted == 4
    # the client's address is logged as it is, an IPv4 client without ::ffff:
    ph.wait_log(r"accepted 127\.0\.0\.1:\d+$")
    ph.wait_log(r"accepted \[::1\]:\d+$")
    assert "::ffff:" not in ph.log


def test_ipv6_target(pinhole, echo_server, free_port, ipv6):
    srv6 = echo_server(host="::1")
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"[::1]:{srv6.port}")
    assert f"-> [::1]:{srv6.port}" in ph.log
    assert served("127.0.0.1", port)
    assert [p[0] for p in srv6.peers] == ["::1"]


def test_tcp_scheme_prefix(pinhole, echo_server, free_port):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{srv.port}")
    assert f"forwarding tcp 127.0.0.1:{port} -> 127.0.0.1:{srv.port}" in ph.log
    assert served("127.0.0.1", port)
