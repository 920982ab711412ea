"""
Per-rule limits: --max-conns (refuse beyond N live connections) and --idle-timeout (close a
connection with no bytes either way for that long, leave busy ones alone).

    python clients --> pinhole 127.0.0.1:P --max-conns 3 --> echo 127.0.0.1:Q
    python clients --> pinhole 127.0.0.1:P --idle-timeout 1s --> echo / ticker 127.0.0.1:Q
"""

import socket
import threading
import time

from conftest import (SOCK_TIMEOUT_S, connect, connect_outcome, echo_once, outcome, recv_exact,
                      set_rst, wait_until)


def test_max_conns(pinhole, echo_server, free_port):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--max-conns", "3")
    held = []
    for i in range(3):
        c = connect("127.0.0.1", port)
        echo_once(c, f"held {i}".encode())
        held.append(c)

    over = connect_or_reset("127.0.0.1", port)
    assert over is None or outcome(over, timeout=5) == "reset", "4th connection was not refused"
    ph.wait_log(r"refused 127\.0\.0\.1:\d+: --max-conns 3 reached")
    assert srv.accepted == 3, "the refused connection reached the target"
    for i, c in enumerate(held):  # the held ones are untouched
        echo_once(c, f"still {i}".encode())

    # close one; once pinhole has seen it go, a new one fits
    held[0].shutdown(socket.SHUT_WR)
    assert held[0].recv(1) == b""
    held.pop(0).close()
    wait_until(lambda: ph.stats()["active"] == 2, 5, "the closed connection to be gone")
    c = connect("127.0.0.1", port)
    echo_once(c, b"new one")
    held.append(c)
    assert srv.accepted == 4

    # and the limit holds again
    over = connect_or_reset("127.0.0.1", port)
    assert over is None or outcome(over, timeout=5) == "reset"
    for c in held:
        c.close()
    ph.stop()
    st = ph.final_stats()
    assert st["over_limit"] == 2 and st["accepted"] == 4, st


def connect_or_reset(host, port):
    """A socket, or None when the reset came back before connect() returned."""
    try:
        return connect(host, port)
    except ConnectionResetError:
        return None


def test_idle_timeout(pinhole, tcp_server, free_port):
    """With --idle-timeout 1s: a silent connection is closed after about 1 s; one where the
    client talks every 200 ms and one where only the server talks stay open."""
    server_saw = {}
    lock = threading.Lock()

    def server(conn, peer):
        kind = recv_exact(conn, 4)
        if kind == b"tick":  # the server talks, the client only listens
            conn.settimeout(0.2)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    if conn.recv(1) == b"":  # the client is done
                        break
                except socket.timeout:
                    conn.sendall(b".")
            end = "eof"
        else:  # echo
            conn.sendall(kind)
            try:
                while True:
                    d = conn.recv(65536)
                    if not d:
                        break
                    conn.sendall(d)
                end = "eof"
            except ConnectionResetError:
                end = "reset"
        with lock:
            server_saw[kind] = end

    srv = tcp_server(server)
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--idle-timeout", "1s", "-v")
    idle = connect("127.0.0.1", port)
    echo_once(idle, b"idle")
    idle_last = time.monotonic()
    busy = connect("127.0.0.1", port)
    echo_once(busy, b"busy")
    ticker = connect("127.0.0.1", port)
    ticker.sendall(b"tick")

    # the idle one must end meanwhile; the other two must not
    idle.settimeout(0.05)
    idle_end = None
    t_end = time.monotonic() + 2.5
    ticks = 0
    while time.monotonic() < t_end:
        echo_once(busy, b"x" * 10)
        try:
            d = ticker.recv(100)
            assert d, "ticker connection closed"
            ticks += len(d)
        except socket.timeout:
            pass
        if idle_end is None:
            try:
                assert idle.recv(1) == b"", "unexpected data on the idle connection"
                idle_end = time.monotonic()
            except socket.timeout:
                pass
        time.sleep(0.15)
    assert idle_end is not None, "idle connection was not closed within 2.5 s"
    assert 0.8 <= idle_end - idle_last <= 2.3, f"closed after {idle_end - idle_last:.2f} s"
    assert ticks >= 5, f"only {ticks} ticks arrived"
    echo_once(busy, b"still here")
    ticker.settimeout(SOCK_TIMEOUT_S)
    assert ticker.recv(1) == b"."
    wait_until(lambda: b"idle" in server_saw, 5, "the server to see the idle connection end")
    assert server_saw[b"idle"] == "eof"
    ph.wait_log(r"idle timeout")
    for c in (idle, busy, ticker):
        c.close()


def test_failed_and_reset_connections_free_their_slot(pinhole, echo_server, free_port):
    """--max-conns 1: connections that end badly (no target, client reset) must give their
    slot back, or the rule would lock up."""
    port, later = free_port(), free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{later}", "--max-conns", "1")
    for _ in range(3):
        assert connect_outcome(port)[0] == "reset"
    srv = echo_server(port=later)
    for i in range(3):
        c = connect("127.0.0.1", port)
        echo_once(c, f"slot {i}".encode())
        set_rst(c)
        c.close()
        # the reset reaches pinhole asynchronously: wait until the slot is back
        wait_until(lambda: ph.stats()["active"] == 0, 5, "the reset connection to be gone")
    c = connect("127.0.0.1", port)
    echo_once(c, b"last")
    c.close()
    assert srv.accepted == 4
    ph.stop()
    st = ph.final_stats()
    assert st["over_limit"] == 0 and st["target_failures"] == 3, st
