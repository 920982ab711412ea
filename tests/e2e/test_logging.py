"""
What pinhole says on stderr at each verbosity, held to `pinhole --help`:
  -q   "errors only"
  (none) start line, failures, the stopped: counters
  -v   "one log line per connection"
  -vv  "every state change"

    python client --> pinhole 127.0.0.1:P --> echo 127.0.0.1:Q   (or nothing at DOWN)
"""

import re
import signal
import socket
import time

from conftest import (connect, connect_outcome, echo_once, free_udp_port, outcome, parse_log,
                      recv_exact, set_rst, wait_until)


def one_session(port, up):
    """A connection that sends up, reads the echo, half-closes and waits for the FIN."""
    c = connect("127.0.0.1", port)
    echo_once(c, up)
    c.shutdown(socket.SHUT_WR)
    assert c.recv(1) == b""
    c.close()


def test_default_level(pinhole, echo_server, free_port):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}")
    one_session(port, b"x" * 1000)
    ph.stop()
    lines = parse_log(ph.log)
    assert [lvl for lvl, _, _ in lines] == ["info"] * len(lines), ph.log
    msgs = [m for _, _, m in lines]
    assert re.fullmatch(rf"forwarding tcp 127\.0\.0\.1:{port} -> 127\.0\.0\.1:{srv.port} "
                        r"\(\d+ workers\)", msgs[0]), msgs[0]
    assert msgs[1].startswith("stopping: no new connections")
    assert msgs[-1].startswith("stopped: 1 connections (0 active), 1000 B up, 1000 B down, "
                               "2000 bytes spliced"), msgs[-1]
    assert len(msgs) == 3, "a clean connection must not be logged at the default level"
    # every line is whole and well formed
    assert len(lines) == len(ph.log.splitlines())


def test_verbose_one_line_per_connection(pinhole, echo_server, free_port):
    """Connection ids count per worker: a connection is (worker, id)."""
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "-v")
    sizes = (10, 2000, 70000)
    for n in sizes:
        one_session(port, b"y" * n)
    ph.stop()
    per_conn = {}
    for _, w, m in parse_log(ph.log):
        cid = re.match(r"(c\d+)\b", m)
        if cid:
            per_conn.setdefault((w, cid.group(1)), []).append(m)
    assert len(per_conn) == len(sizes), per_conn
    summaries = []
    for key, lines in sorted(per_conn.items()):
        assert len(lines) == 1, f"connection {key} logged {len(lines)} lines with -v: {lines}"
        m = re.fullmatch(rf"c\d+ 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:{srv.port}: closed, "
                         r"(\d+) bytes up, (\d+) down, \d+ ms", lines[0])
        assert m, lines[0]
        assert m.group(1) == m.group(2)
        summaries.append(int(m.group(1)))
    assert sorted(summaries) == sorted(sizes)


def test_very_verbose_traces_state_changes(pinhole, echo_server, free_port):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "-vv", "--workers", "1")
    one_session(port, b"z")
    ph.stop()
    msgs = ph.messages()
    assert any(re.fullmatch(r"c1: connecting -> relaying \(line \d+\)", m) for m in msgs), msgs
    assert any(re.fullmatch(r"c1: relaying -> closed \(line \d+\)", m) for m in msgs), msgs


def test_quiet_prints_errors_only(pinhole, free_port):
    """-q is "errors only" in --help: a refused target is a warning, so nothing is printed."""
    port, down = free_port(), free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{down}", "-q", "--workers", "2")
    assert connect_outcome(port)[0] == "reset"
    ph.stop()
    assert ph.log == "" or all(lvl == "error" for lvl, _, _ in parse_log(ph.log)), \
        f"-q printed more than errors:\n{ph.log}"


def test_reset_and_failure_lines_name_both_ends(pinhole, tcp_server, free_port):
    """Abnormal ends are logged with -v with the reason and the byte counts (and counted
    at the default level: test_failures_are_counted_not_logged_one_by_one)."""

    def server(conn, peer):
        assert recv_exact(conn, 3) == b"abc"
        conn.sendall(b"12345")
        assert conn.recv(1) == b"!"  # the client has read the 5 bytes
        set_rst(conn)
        conn.close()

    srv = tcp_server(server)
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "-v")
    c = connect("127.0.0.1", port)
    c.sendall(b"abc")
    assert recv_exact(c, 5) == b"12345"
    c.sendall(b"!")
    assert outcome(c, timeout=5) == "reset"
    c.close()
    ph.wait_log(rf"^c1 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:{srv.port}: target reset: "
                r"Connection reset by peer, 4 bytes up, 5 down, \d+ ms$")


def _counted(msgs, label, what, cause):
    """The counts of the periodic "LABEL: N WHAT in the last S s: CAUSE (the first: ...)"
    lines for one kind, and those lines."""
    rx = re.compile(rf"{re.escape(label)}: (\d+) {re.escape(what)} in the last \d+ s: "
                    rf"{re.escape(cause)} \(the first: (.*)\)$")
    hits = [(int(m.group(1)), m.group(2)) for m in map(rx.match, msgs) if m]
    return sum(n for n, _ in hits), [first for _, first in hits]


def test_failures_are_counted_not_logged_one_by_one(pinhole, echo_server, free_port):
    """Resets and refused targets any client can cause come as a count per rule and cause
    at the default level, a bounded number of lines; -v has the line per connection."""
    srv = echo_server()
    port, port2, down = free_port(), free_port(), free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--workers", "2")
    ph2 = pinhole(f"127.0.0.1:{port2}", f"127.0.0.1:{down}", "--workers", "2")
    resets = refused = 0
    deadline = time.monotonic() + 10
    while resets < 500 and time.monotonic() < deadline:
        c = connect("127.0.0.1", port)
        echo_once(c, b"x")  # relaying: the reset is the client's, mid-connection
        set_rst(c)
        c.close()
        resets += 1
    while refused < 200 and time.monotonic() < deadline:
        assert connect_outcome(port2, timeout=5)[0] == "reset"
        refused += 1
    assert (resets, refused) == (500, 200), "the burst did not fit in 10 s"
    # every close is counted before the stop's line of counts
    wait_until(lambda: ph.stats()["active"] == 0, 5, "the resets to be seen")
    ph.stop()
    ph2.stop()
    msgs, msgs2 = ph.messages(), ph2.messages()
    assert len(msgs) < 20, f"{len(msgs)} lines for 500 resets:\n" + "\n".join(msgs[:40])
    assert len(msgs2) < 20, f"{len(msgs2)} lines for 200 refusals:\n" + "\n".join(msgs2[:40])
    n, firsts = _counted(msgs, f"forward 127.0.0.1:{port}", "connections", "client reset")
    assert n == 500, "\n".join(msgs)
    assert re.fullmatch(rf"c\d+ 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:{srv.port}: client reset: "
                        r"Connection reset by peer, 1 bytes up, 1 down, \d+ ms", firsts[0])
    n, firsts = _counted(msgs2, f"forward 127.0.0.1:{port2}", "connections",
                         "no target reachable")
    assert n == 200, "\n".join(msgs2)
    assert firsts[0].endswith("no target reachable: Connection refused, 0 bytes up, 0 down, "
                              + firsts[0].rsplit(", ", 1)[1]), firsts[0]
    # the target going down is a state change: said once, not once per connection
    assert sum("failed: Connection refused; skipped for" in m for m in msgs2) <= 2, msgs2
    assert ph2.final_stats()["target_failures"] == 200


def test_verbose_logs_each_failure(pinhole, free_port):
    port, down = free_port(), free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{down}", "-v")
    for _ in range(5):
        assert connect_outcome(port)[0] == "reset"
    ph.wait_log(rf"^c\d+ 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:{down}: no target reachable: "
                r"Connection refused, 0 bytes up, 0 down, \d+ ms$", count=5)
    ph.stop()
    assert not any(" in the last " in m for m in ph.messages()), ph.log


def test_udp_failures_are_counted(pinhole, free_port):
    """100 clients whose datagrams meet an unreachable target: one counted line at the
    default level, not one per session."""
    dead, port = free_udp_port(), free_udp_port()
    ph = pinhole(f"udp://127.0.0.1:{port}", f"127.0.0.1:{dead}", "--workers", "1",
                 ready=False)
    ph.wait_log(r"^forwarding udp ", timeout=10)
    clients = []
    try:
        for i in range(100):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            clients.append(c)
            c.sendto(b"anyone?", ("127.0.0.1", port))

        def all_ended():
            before = sum(1 for m in ph.messages() if m.startswith("stats udp:"))
            ph.send_signal(signal.SIGUSR1)
            m = re.match(r"stats udp: (\d+) sessions \((\d+) active\)",
                         ph.wait_log(r"^stats udp: ", count=before + 1)[-1])
            return m and m.group(1) == "100" and m.group(2) == "0"

        wait_until(all_ended, 10, "the 100 sessions to end")
    finally:
        for c in clients:
            c.close()
    ph.stop()
    msgs = ph.messages()
    n, firsts = _counted(msgs, f"forward 127.0.0.1:{port}", "udp sessions",
                         "target unreachable")
    assert n == 100, "\n".join(msgs)
    assert "target unreachable: Connection refused" in firsts[0], firsts
    assert len(msgs) < 20, "\n".join(msgs)
