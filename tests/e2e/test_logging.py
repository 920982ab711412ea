"""
What pinhole says on stderr at each verbosity, held to `pinhole --help`:
  -q   "errors only"
  (none) start line, failures, the stopped: counters
  -v   "one log line per connection"
  -vv  "every state change"

    python client --> pinhole 127.0.0.1:P --> echo 127.0.0.1:Q   (or nothing at DOWN)
"""

import re
import socket

from conftest import (connect, connect_outcome, echo_once, outcome, parse_log, recv_exact,
                      set_rst)


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
    """Abnormal ends are logged at the default level with the reason and the byte counts."""

    def server(conn, peer):
        assert recv_exact(conn, 3) == b"abc"
        conn.sendall(b"12345")
        assert conn.recv(1) == b"!"  # the client has read the 5 bytes
        set_rst(conn)
        conn.close()

    srv = tcp_server(server)
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}")
    c = connect("127.0.0.1", port)
    c.sendall(b"abc")
    assert recv_exact(c, 5) == b"12345"
    c.sendall(b"!")
    assert outcome(c, timeout=5) == "reset"
    c.close()
    ph.wait_log(rf"^c1 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:{srv.port}: target reset: "
                r"Connection reset by peer, 4 bytes up, 5 down, \d+ ms$")
