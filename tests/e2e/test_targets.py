"""
Targets: down, failing over, round robin, silent (connect timeout), and named (c-ares,
answered from /etc/hosts).

    client --> pinhole 127.0.0.1:P --> 127.0.0.1:DOWN (nothing listens: refused)
                                   --> 127.0.0.1:SILENT (accept queue full: SYNs dropped)
                                   --> echo A 127.0.0.1:QA
                                   --> echo B 127.0.0.1:QB
                                   --> localhost:QA
"""

import os
import re
import shutil
import socket
import time

import pytest

from conftest import (alloc_port, connect, connect_outcome, echo_once, recv_exact,
                      recv_until_eof, run_pinhole, tagged_echo_handler, wait_until)


def test_backend_down(pinhole, free_port):
    port, down = free_port(), free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{down}")
    for i in range(3):  # the first try and the ones during the back-off alike
        end, took = connect_outcome(port)
        assert end == "reset", f"attempt {i}: {end}"
        assert took < 2, f"attempt {i}: closed after {took:.2f} s"
    ph.wait_log(rf"^target 127\.0\.0\.1:{down} \(127\.0\.0\.1:{down}\) failed: "
                r"Connection refused; skipped for \d+ ms$")
    ph.stop()
    # the connections' failures: counted in one line, said at the latest when pinhole stops
    assert any(re.fullmatch(rf"forward 127\.0\.0\.1:{port}: 3 connections in the last \d+ s: "
                            r"no target reachable \(the first: c\d+ .*: no target reachable: "
                            r"Connection refused, 0 bytes up, 0 down, \d+ ms\)", m)
               for m in ph.messages()), ph.log
    st = ph.final_stats()
    assert st["accepted"] == 3 and st["target_failures"] == 3 and st["active"] == 0, st


def test_failover_to_second_target(pinhole, echo_server, free_port):
    srv = echo_server()
    port, down = free_port(), free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{down}", f"127.0.0.1:{srv.port}")
    for i in range(8):
        c = connect("127.0.0.1", port)
        echo_once(c, f"conn {i}".encode())
        c.close()
    assert srv.accepted == 8
    ph.wait_log(rf"^target 127\.0\.0\.1:{down} \(127\.0\.0\.1:{down}\) failed: Connection refused")
    ph.stop()
    st = ph.final_stats()
    assert st["accepted"] == 8 and st["target_failures"] == 0, st


def tag_of(c, msg):
    """Sends msg and returns the tag the tagged echo server put in front of it."""
    c.sendall(msg)
    got = recv_exact(c, 2 + len(msg))
    assert got[2:] == msg
    return got[:2]


@pytest.mark.parametrize("workers", [1, 2])
def test_round_robin(pinhole, echo_server, free_port, workers):
    a = echo_server(handler=tagged_echo_handler(b"A:"))
    b = echo_server(handler=tagged_echo_handler(b"B:"))
    port = free_port()
    pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}",
            "--workers", workers)
    seq = []
    for i in range(10):
        c = connect("127.0.0.1", port)
        seq.append(tag_of(c, f"conn {i}".encode()))
        c.close()
    assert (a.accepted, b.accepted) == (seq.count(b"A:"), seq.count(b"B:"))
    if workers == 1:
        # one worker: strictly alternating
        assert all(seq[i] != seq[i + 1] for i in range(9)), seq
        assert a.accepted == b.accepted == 5
    else:
        # each worker alternates on its own, so neither target can get fewer than 4 of 10
        assert a.accepted >= 4 and b.accepted >= 4, seq


def silent_target():
    """A listener whose accept queue is full: further SYNs are dropped, so a connect to it
    neither succeeds nor fails until it times out. Returns (listener, filler, port)."""
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    port = alloc_port()
    l.bind(("127.0.0.1", port))
    l.listen(0)
    filler = socket.create_connection(("127.0.0.1", port), timeout=5)
    probe = socket.socket()
    probe.setblocking(False)
    probe.connect_ex(("127.0.0.1", port))
    time.sleep(0.2)  # the probe's SYN must stay unanswered for this setup to be valid
    try:
        probe.getpeername()
        pytest.skip("the kernel accepted beyond the listen backlog: cannot make a silent target")
    except OSError:
        pass
    finally:
        probe.close()
    return l, filler, port


def test_connect_timeout(pinhole, free_port):
    l, filler, silent = silent_target()
    try:
        port = free_port()
        ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{silent}", "--connect-timeout", "500ms",
                     "-v")
        end, took = connect_outcome(port, timeout=5)
        assert end == "reset"
        assert 0.4 <= took < 2, f"gave up after {took:.2f} s, --connect-timeout is 500ms"
        ph.wait_log(r"no target reachable: Connection timed out")
        ph.wait_log(rf"target 127\.0\.0\.1:{silent} .*failed: Connection timed out")
    finally:
        filler.close()
        l.close()


def test_failover_after_connect_timeout(pinhole, echo_server, free_port):
    srv = echo_server()
    l, filler, silent = silent_target()
    try:
        port = free_port()
        pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{silent}", f"127.0.0.1:{srv.port}",
                "--connect-timeout", "300ms", "--workers", "1")
        for i in range(3):  # the first waits out the silent one, the next skip it (back-off)
            t0 = time.monotonic()
            c = connect("127.0.0.1", port)
            echo_once(c, f"conn {i}".encode())
            c.close()
            took = time.monotonic() - t0
            if i == 0:
                assert 0.25 <= took < 2, f"first connection took {took:.2f} s"
            else:
                assert took < 0.25, f"connection {i} took {took:.2f} s: back-off not used"
        assert srv.accepted == 3
    finally:
        filler.close()
        l.close()


def test_hostname_target(pinhole, echo_server, free_port):
    with open("/etc/hosts") as f:
        if not re.search(r"^\s*127\.0\.0\.1\s+(.*\s)?localhost(\s|$)", f.read(), re.M):
            pytest.skip("/etc/hosts does not map localhost to 127.0.0.1")
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"localhost:{srv.port}")
    assert f"forwarding tcp 127.0.0.1:{port} -> localhost:{srv.port}" in ph.log
    for i in range(5):
        c = connect("127.0.0.1", port)
        echo_once(c, f"by name {i}".encode())
        c.close()
    assert srv.accepted == 5
    ph.stop()
    assert ph.final_stats()["target_failures"] == 0


def test_hostname_target_down(pinhole, free_port):
    port, down = free_port(), free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"localhost:{down}", "-v")
    end, took = connect_outcome(port)
    assert end == "reset" and took < 2, (end, took)
    ph.wait_log(rf"target localhost:{down} \(.*:{down}\) failed: Connection refused")
    ph.wait_log(r"no target reachable")


def test_target_recovers(pinhole, echo_server, free_port):
    """A target that was down and comes up is used again once its back-off ends."""
    port, later = free_port(), free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{later}", "--workers", "1", "-v")
    assert connect_outcome(port)[0] == "reset"
    srv = echo_server(port=later)

    def served():
        try:
            c = connect("127.0.0.1", port)
        except ConnectionResetError:
            return False
        try:
            echo_once(c, b"back?")
            return True
        except (ConnectionResetError, AssertionError):
            return False
        finally:
            c.close()

    # the only target is tried even during its back-off, so the first try must work
    assert served()
    assert srv.accepted == 1
    wait_until(lambda: "no target reachable" in ph.log, 5, "the first failure in the log")
    # down and up again are state changes, said at the default level too
    ph.wait_log(rf"^target 127\.0\.0\.1:{later} is up again$")


def test_early_data_and_fin_wait_out_a_failover(pinhole, echo_server, free_port):
    """The client sends everything and its FIN before pinhole has a target (it is still
    waiting out a silent one): nothing is lost, and the FIN is passed on after the data."""
    srv = echo_server()
    l, filler, silent = silent_target()
    try:
        port = free_port()
        pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{silent}", f"127.0.0.1:{srv.port}",
                "--connect-timeout", "300ms", "--workers", "1")
        data = os.urandom(200 * 1024)
        c = connect("127.0.0.1", port)
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        got = recv_until_eof(c)
        c.close()
        assert len(got) == len(data) and got == data
    finally:
        filler.close()
        l.close()


def test_many_targets_fail_over_to_the_last(pinhole, echo_server, free_port):
    """32 targets (the most allowed), 31 refusing: every connection reaches the 32nd."""
    srv = echo_server()
    port = free_port()
    down = [free_port() for _ in range(31)]
    ph = pinhole(f"127.0.0.1:{port}", *[f"127.0.0.1:{d}" for d in down],
                 f"127.0.0.1:{srv.port}", "--workers", "1")
    for i in range(4):
        c = connect("127.0.0.1", port)
        echo_once(c, f"through 31 dead ones #{i}".encode())
        c.close()
    assert srv.accepted == 4
    ph.stop()
    assert ph.final_stats()["target_failures"] == 0


def test_start_line_names_every_target(pinhole, free_port):
    port = free_port()
    targets = [f"127.0.0.1:{free_port()}" for _ in range(32)]
    ph = pinhole(f"127.0.0.1:{port}", *targets)
    start = next(m for m in ph.messages() if "forwarding tcp" in m)
    m = re.fullmatch(rf"forwarding tcp 127\.0\.0\.1:{port} -> (.*) \(\d+ workers\)", start)
    assert m, start
    listed = m.group(1).split(", ")
    assert listed == targets, (f"start line lists {len(listed)} targets, ends with "
                               f"{listed[-2:]}; missing {sorted(set(targets) - set(listed))}")


def test_too_many_targets_names_the_culprit():
    targets = [f"127.0.0.1:{10000 + i}" for i in range(33)]
    r = run_pinhole("forward", f"127.0.0.1:{alloc_port()}", *targets)
    assert r.returncode == 2
    assert r.stderr.startswith("pinhole: ") and r.stderr.count("\n") == 1, r.stderr
    assert "too many targets (at most 32)" in r.stderr
    assert "127.0.0.1:10032" in r.stderr, f"the 33rd target is not named: {r.stderr!r}"


def test_source_address(pinhole, echo_server, free_port):
    """--source: the target sees connections from that local address (127.0.0.2 is on
    loopback too), and for UDP the datagrams."""
    srv = echo_server()
    port = free_port()
    pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--source", "127.0.0.2")
    c = connect("127.0.0.1", port)
    echo_once(c, b"from .2")
    c.close()
    assert [p[0] for p in srv.peers] == ["127.0.0.2"]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(5)
    uport = free_port()
    pinhole(f"udp://127.0.0.1:{uport}", f"127.0.0.1:{u.getsockname()[1]}", "--source",
            "127.0.0.2", ready=False).wait_log("forwarding udp")
    cl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cl.settimeout(5)
    cl.sendto(b"x", ("127.0.0.1", uport))
    _, peer = u.recvfrom(10)
    assert peer[0] == "127.0.0.2"
    cl.close()
    u.close()


def test_source_of_another_family_fails_over(pinhole, echo_server, free_port):
    """An IPv4 --source cannot reach an IPv6 target: that attempt fails (logged) and the
    client is reset; no crash, the next client is handled the same."""
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", "[::1]:9", "--source", "127.0.0.1")
    for _ in range(2):
        assert connect_outcome(port)[0] == "reset"
    ph.wait_log(r"Address family not supported")


DNSMASQ = "/usr/sbin/dnsmasq"


def start_dnsmasq(tmp_path, spawn, *extra, options=""):
    """dnsmasq on 127.0.X.Y:53 (extra: more of its options), the only server of a
    resolv.conf (with options, its "options" line) that pinhole sees in a mount namespace of
    its own (unshare -m, a bind mount). Returns dnsmasq's Popen and the prefix to run
    pinhole with."""
    if not os.access(DNSMASQ, os.X_OK) or shutil.which("unshare") is None:
        pytest.skip("dnsmasq or unshare is not installed")
    if os.geteuid() != 0:
        pytest.skip("a mount namespace and port 53 need root")
    ip = f"127.0.{os.getpid() % 200 + 20}.{os.getpid() // 200 % 200 + 20}"
    p = spawn([DNSMASQ, "--no-daemon", "--no-resolv", "--no-hosts", "--port=53",
               f"--listen-address={ip}", "--bind-interfaces", "--pid-file=", "--log-facility=-",
               *extra])

    def up():
        try:
            socket.create_connection((ip, 53), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(up, 5, f"dnsmasq on {ip}:53")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {ip}\n" + (f"options {options}\n" if options else ""))
    return p, ("unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"',
               str(resolv))


@pytest.fixture
def local_dns(tmp_path, spawn):
    """start_dnsmasq's: names under .test it has none of are NXDOMAIN, noaddr.test has a TXT
    record and no address, others are REFUSED. Returns the prefix to run pinhole with."""
    return start_dnsmasq(tmp_path, spawn, "--local=/test/", "--txt-record=noaddr.test,x")[1]


@pytest.mark.parametrize("name,words", [("nx.test", "no such name"),
                                        ("noaddr.test", "no address for the name"),
                                        ("nx.example", "DNS server failure")])
def test_a_name_that_fails_says_why(pinhole, free_port, local_dns, name, words):
    """NXDOMAIN, an answer without an address and a refusing server each in their own
    words, not "No such file or directory" or "Input/output error"."""
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"{name}:80", "-v", "--workers", "1", prefix=local_dns)
    assert connect_outcome(port)[0] == "reset"
    ph.wait_log(rf"^cannot resolve {re.escape(name)}: {words}$")
    ph.wait_log(rf"^c1 127\.0\.0\.1:\d+ -> \S+: no target reachable: {words}, 0 bytes up, ")

