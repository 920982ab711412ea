"""
Stopping: SIGTERM/SIGINT stop accepting and let live connections finish (up to
--drain-timeout); a second signal or the drain timeout ends what is left; exit status 0 and a
last "stopped:" line with the counters.

    python client --> pinhole 127.0.0.1:P --> echo 127.0.0.1:Q
          ^                  ^
          |                  └── SIGTERM / SIGINT / SIGUSR1 from the test
          └── a live connection across the signal
"""

import os
import signal
import socket
import time

import pytest

from conftest import (SOCK_TIMEOUT_S, Pinhole, connect, echo_once, outcome, recv_exact,
                      send_in_thread, sha256, wait_not_listening)

MiB = 1 << 20
STOP_BOUND = 8  # seconds from the deciding event to the exit, well below the 10 s default drain


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_drain_lets_live_connection_finish(pinhole, echo_server, free_port, sig):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}")
    c = connect("127.0.0.1", port)
    echo_once(c, b"before")
    ph.send_signal(sig)
    ph.wait_log(r"^stopping: no new connections; 1 open ones get up to 10000 ms$")

    # no new connections: every worker's listener is closed
    wait_not_listening(port)
    with pytest.raises(ConnectionRefusedError):
        connect("127.0.0.1", port).close()

    # the live one still carries a whole transfer, both ways
    data = os.urandom(8 * MiB)
    t = send_in_thread(c, data, shut=False)
    got = recv_exact(c, len(data))
    t.join(SOCK_TIMEOUT_S)
    assert t.error is None
    assert sha256(got) == sha256(data)
    assert ph.proc.poll() is None, "pinhole exited before its last connection ended"
    closed = time.monotonic()
    c.shutdown(socket.SHUT_WR)
    assert c.recv(1) == b""  # the echo server's FIN, passed on
    c.close()

    # the last connection gone, pinhole exits at once rather than at the drain timeout
    rc = ph.wait_exit(timeout=STOP_BOUND)
    assert time.monotonic() - closed < 3
    assert rc == 0
    ph.check()
    st = ph.final_stats()
    assert st["accepted"] == 1 and st["active"] == 0, st
    assert st["spliced"] == 2 * (len(data) + 6), st


def test_drain_with_nothing_open_is_immediate(pinhole, echo_server, free_port):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}")
    t0 = time.monotonic()
    ph.stop()
    assert time.monotonic() - t0 < 3
    st = ph.final_stats()
    assert st["accepted"] == 0 and st["spliced"] == 0, st


def test_second_signal_stops_at_once(pinhole, echo_server, free_port):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}")
    c = connect("127.0.0.1", port)
    echo_once(c, b"stuck")
    ph.send_signal(signal.SIGTERM)
    ph.wait_log(r"^stopping: no new connections")
    echo_once(c, b"still served while draining")
    assert ph.proc.poll() is None
    t0 = time.monotonic()
    ph.send_signal(signal.SIGTERM)
    assert ph.wait_exit(timeout=STOP_BOUND) == 0
    assert time.monotonic() - t0 < 3
    ph.check()
    assert any(m.startswith("second signal: stopping now") for m in ph.messages()), ph.log
    assert ph.final_stats()["accepted"] == 1
    # the stuck connection was closed, not left hanging
    assert outcome(c, timeout=5) in ("eof", "reset")
    c.close()


def test_drain_timeout_ends_stuck_connection(pinhole, echo_server, free_port):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--drain-timeout", "1s")
    c = connect("127.0.0.1", port)
    echo_once(c, b"stuck")
    t0 = time.monotonic()
    ph.send_signal(signal.SIGTERM)
    assert ph.wait_exit(timeout=STOP_BOUND) == 0
    took = time.monotonic() - t0
    assert 0.9 <= took < 3, f"exited {took:.2f} s after SIGTERM with --drain-timeout 1s"
    ph.check()
    ph.wait_log(r"^stopping: no new connections; 1 open ones get up to 1000 ms$")
    ph.wait_log(r"^drain timeout: closing 1 connections still open$")
    assert ph.final_stats()["accepted"] == 1
    assert outcome(c, timeout=5) in ("eof", "reset")
    c.close()


def test_sigusr1_logs_stats_and_keeps_running(pinhole, echo_server, free_port):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}")
    c = connect("127.0.0.1", port)
    echo_once(c, b"12345")
    st = ph.stats()
    assert st["accepted"] == 1 and st["active"] == 1, st
    echo_once(c, b"after the stats")
    c.close()
    ph.stop()
    assert ph.final_stats()["spliced"] == 2 * (5 + 15)


# `pinhole map` runs on the same supervisor loop as the other verbs: a signal (SIGHUP too, a
# hangup of its terminal) deletes what it mapped and ends it with 0, a second ends it at
# once, and it has no stopped: line. Nothing answers on loopback's port 5351: the map goes
# on asking until the signal (tests/e2e/test_map.py covers a real router in a lab).
@pytest.mark.parametrize("sigs", [[signal.SIGTERM], [signal.SIGINT], [signal.SIGHUP],
                                  [signal.SIGTERM, signal.SIGTERM]],
                         ids=["SIGTERM", "SIGINT", "SIGHUP", "twice"])
def test_map_ends_on_a_signal(tmp_path, free_port, sigs):
    p = Pinhole(["map", free_port(), "--gateway", "127.0.0.1", "--method", "natpmp"],
                str(tmp_path))
    try:
        p.wait_log(r"^map: the gateway 127\.0\.0\.1 refused port 5351")
        for sig in sigs:
            p.send_signal(sig)
        assert p.wait_exit(STOP_BOUND) == 0, p.log
        p.check()
        assert not any(m.startswith("stopped:") for m in p.messages()), p.log
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(timeout=5)
