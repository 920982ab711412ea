"""
`pinhole check`: the relay tries the caller's own public address - the one it sees the
session come from - on a port, and says open, closed, filtered, open|filtered or refused.

    pinhole check PORT --via 127.0.0.1:R           pinhole server 127.0.0.1:R
      (its session comes from 127.0.0.1)  ==TLS==>   the prober: a TCP connect, or UDP
                                                     datagrams, to 127.0.0.1:PORT only
    on 127.0.0.1:PORT  <--------------------------------------'
      TCP: a listener (open), nothing (closed: a reset), a full accept queue (filtered)
      UDP: an echo (open), nothing (closed: ICMP), a sink (open|filtered)

    a raw TLS session (bob's key, frames by hand) sends CHECKs beside its own service, to
    see a refusal leave the session and its streams alone

    ip netns phchk-PID (root only): the relay, the client and a listener on its loopback,
    nftables dropping the port's packets: filtered, and open again once the rule goes

The relay fixtures (keys, start_relay, start_expose, RawPeer...) are test_tunnel.py's;
every process gets --key and --known-relays files under tmp_path. Readiness is polled
(log lines, `ss`), never slept for; every wait is bounded. A check of a silent port takes
the prober's 3 s.
"""

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from conftest import (BIN, READY_TIMEOUT_S, SANITIZER_MARKS, Pinhole, alloc_port, connect,
                      free_udp_port, run_pinhole, wait_until)
from test_metrics import fetch
from test_tunnel import (CTRL, OPEN, RawPeer, bob_cert, echo, echo_check, frame,  # noqa: F401
                         keys, procs, start_expose, start_relay, status_json, wait_public)

PROBE_S = 3  # the relay's deadline for one probe (PH_PROBE_MS)
REFUSED_OTHER = "the relay checks only the address it sees you at, 127.0.0.1"
CHECKED_RE = r"^client 127\.0\.0\.1:\d+ \({who}\): checked {proto} 127\.0\.0\.1:{port}: {result} "
RESULTS = {1: "open", 2: "closed", 3: "filtered", 4: "refused", 5: "open|filtered"}


def check(relay, tmp_path, keys, *args, key=None, via=None, timeout=20, prefix=()):
    """`pinhole check ARGS --via 127.0.0.1:R` with alice's key (or key), to its end."""
    return run_pinhole("check", *args, "--via", via or f"127.0.0.1:{relay.port}", "--key",
                       (key or keys.alice).path, "--known-relays", tmp_path / "known_relays",
                       timeout=timeout, prefix=prefix)


def line(r):
    """The one line check printed, after checking it printed exactly one."""
    out = r.stdout.splitlines()
    assert len(out) == 1, f"rc {r.returncode}, stdout {r.stdout!r}, stderr {r.stderr!r}"
    return out[0]


def checks(relay):
    return status_json(relay.ctl)["relay"]["checks"]


def check_msg(req, proto, port, other=None):
    """A CHECK payload (docs/PROTOCOL.md): request id, protocol, port, an address."""
    addr = b"\x00" if other is None else \
        b"\x04" + struct.pack("!H", 0) + socket.inet_aton(other)
    return bytes([5]) + struct.pack("!IBH", req, proto, port) + addr


def parse_checked(p):
    """A CHECKED payload: (request id, result, (address, port), text)."""
    assert p[0] == 6, f"not CHECKED: {p!r}"
    req, result = struct.unpack("!IB", p[1:6])
    fam, off = p[6], 7
    addr = None
    if fam == 4:
        addr = (socket.inet_ntoa(p[off + 2:off + 6]), struct.unpack("!H", p[off:off + 2])[0])
        off += 6
    elif fam == 6:
        addr = (socket.inet_ntop(socket.AF_INET6, p[off + 2:off + 18]),
                struct.unpack("!H", p[off:off + 2])[0])
        off += 18
    n = p[off]
    assert len(p) == off + 1 + n, f"CHECKED of the wrong length: {p!r}"
    return req, RESULTS.get(result, result), addr, p[off + 1:].decode()


def next_ctrl(peer, timeout=PROBE_S + 5):
    return peer.expect(CTRL, timeout=timeout)[3]


# ---------------------------------------------------------------------------------------------
# what the prober finds


def test_tcp_open_and_closed(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    closed = alloc_port()
    mport = alloc_port()
    relay = start_relay(procs, tmp_path, keys, extra=("--metrics", f"127.0.0.1:{mport}"))

    r = check(relay, tmp_path, keys, srv.port)
    assert (r.returncode, line(r)) == (0, f"tcp/{srv.port} at 127.0.0.1: open"), r.stderr
    wait_until(lambda: srv.accepted >= 1, 5, "the prober's connection at the listener")
    r = check(relay, tmp_path, keys, closed)
    assert (r.returncode, line(r)) == (1, f"tcp/{closed} at 127.0.0.1: closed (reset)"), \
        r.stderr
    assert r.stderr == "", "a check says nothing but its line by default"

    relay.proc.wait_log(CHECKED_RE.format(who="alice", proto="tcp", port=srv.port,
                                          result="open"))
    relay.proc.wait_log(CHECKED_RE.format(who="alice", proto="tcp", port=closed,
                                          result="closed"))
    assert checks(relay) == {"open": 1, "closed": 1, "filtered": 0, "refused": 0,
                             "open|filtered": 0}
    _, _, text = fetch(mport)
    assert re.search(r'^pinhole_relay_checks_total\{result="open"\} 1$', text, re.M), text
    assert re.search(r'^pinhole_relay_checks_total\{result="closed"\} 1$', text, re.M), text
    # the session was made as expose makes it: the relay's key is pinned on first sight
    assert (tmp_path / "known_relays").read_text() == \
        f"127.0.0.1:{relay.port} {keys.relay.fp}\n"
    # and it ended with the answer: nothing is left on the relay
    wait_until(lambda: status_json(relay.ctl)["relay"]["sessions"] == [], 5,
               "the check's session to end")


def test_tcp_filtered(procs, tmp_path, keys, blackhole):
    """SYNs to a listener whose accept queue is full are dropped: no answer in 3 s."""
    relay = start_relay(procs, tmp_path, keys)
    t0 = time.monotonic()
    r = check(relay, tmp_path, keys, blackhole)
    took = time.monotonic() - t0
    assert r.returncode == 1, r.stderr
    assert line(r) == f"tcp/{blackhole} at 127.0.0.1: filtered (no answer in 3000 ms)"
    assert PROBE_S - 0.5 <= took <= PROBE_S + 5, f"took {took:.1f} s"


def test_udp_open_closed_open_filtered(procs, tmp_path, keys, udp_echo):
    relay = start_relay(procs, tmp_path, keys)
    answers = udp_echo()
    sink = udp_echo(reply=False)
    closed = free_udp_port()

    r = check(relay, tmp_path, keys, answers.port, "--udp")
    assert (r.returncode, line(r)) == (0, f"udp/{answers.port} at 127.0.0.1: open"), r.stderr
    r = check(relay, tmp_path, keys, closed, "--udp")
    assert (r.returncode, line(r)) == \
        (1, f"udp/{closed} at 127.0.0.1: closed (ICMP port unreachable)"), r.stderr
    r = check(relay, tmp_path, keys, sink.port, "--udp")
    assert r.returncode == 1, r.stderr
    assert line(r).startswith(f"udp/{sink.port} at 127.0.0.1: open|filtered (no answer to 3 "
                              "datagrams in 3000 ms, and no ICMP error"), r.stdout
    wait_until(lambda: len(sink.sources) >= 3, 5, "the sink to see the prober's datagrams")
    assert len(sink.sources) == 3, sink.sources  # three tries, spread over the deadline
    assert checks(relay)["open|filtered"] == 1


def test_json(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    r = check(relay, tmp_path, keys, srv.port, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "relay": f"127.0.0.1:{relay.port}", "proto": "tcp", "port": srv.port,
        "address": "127.0.0.1", "result": "open", "reason": "connected"}
    r = check(relay, tmp_path, keys, f"127.0.0.2:{srv.port}", "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout) == {
        "relay": f"127.0.0.1:{relay.port}", "proto": "tcp", "port": srv.port,
        "address": "127.0.0.1", "result": "refused", "reason": REFUSED_OTHER}
    # no answer at all: an error object on stdout too, and the reason on stderr
    down = alloc_port()
    r = check(relay, tmp_path, keys, srv.port, "--json", via=f"127.0.0.1:{down}")
    assert r.returncode == 1
    got = json.loads(r.stdout)
    assert got["result"] == "error" and got["address"] == "" and "refused" in got["reason"], got
    assert f"pinhole: check tcp/{srv.port} through 127.0.0.1:{down}: " in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# the relay is never a scanner: refusals, and what they leave alone


def test_another_address_refused_session_unharmed(procs, tmp_path, keys, echo_server):
    """`check HOST:PORT` for another address is refused with the reason; an expose on the
    same relay and key keeps serving through it."""
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}")
    pub = wait_public(x)
    visitor = connect("127.0.0.1", pub)  # a stream through the relay, open all along
    try:
        visitor.sendall(b"before\n")
        assert visitor.recv(64) == b"before\n"
        for other in ("127.0.0.2", "10.1.2.3", "[::1]"):
            r = check(relay, tmp_path, keys, f"{other}:{srv.port}")
            assert r.returncode == 1, r.stderr
            assert line(r) == f"tcp/{srv.port} at 127.0.0.1: refused ({REFUSED_OTHER})"
        assert srv.accepted == 1, "the prober tried another address"  # the visitor alone
        visitor.sendall(b"after\n")
        assert visitor.recv(64) == b"after\n"
    finally:
        visitor.close()
    echo_check(pub)
    assert checks(relay)["refused"] == 3
    assert not [m for m in relay.messages() if "session ended" in m and "alice" in m
                and "the client is stopping" not in m], relay.messages()
    assert status_json(relay.ctl)["relay"]["services"][0]["held"] is False


def test_refusals_on_a_raw_session(procs, tmp_path, keys, echo_server, udp_echo, bob_cert):
    """CHECKs sent by hand on a session that also serves a visitor: another address and a
    second check while one runs are refused (CHECKED, result 4, the reason), and the session,
    its service and its stream go on; its own address is then checked."""
    srv = echo_server(handler=echo)
    sink = udp_echo(reply=False)
    relay = start_relay(procs, tmp_path, keys, auth=[keys.alice.line, keys.bob.line])
    peer = RawPeer(relay.port, bob_cert, keys.bob.path)
    try:
        pub = peer.register()
        v = connect("127.0.0.1", pub)
        v.sendall(b"hi")
        _, _, sid, _ = peer.expect(OPEN)

        peer.send(frame(CTRL, 0, check_msg(1, 1, srv.port, other="127.0.0.2")))
        assert parse_checked(next_ctrl(peer)) == \
            (1, "refused", ("127.0.0.1", srv.port), REFUSED_OTHER)
        # two at once: the first runs (a silent UDP port: 3 s), the second is refused now
        peer.send(frame(CTRL, 0, check_msg(2, 2, sink.port))
                  + frame(CTRL, 0, check_msg(3, 1, srv.port)))
        req, result, _, text = parse_checked(next_ctrl(peer, timeout=2))
        assert (req, result) == (3, "refused") and "one check at a time" in text, text
        req, result, addr, _ = parse_checked(next_ctrl(peer))
        assert (req, result, addr) == (2, "open|filtered", ("127.0.0.1", sink.port))
        # the session, its service and its visitor's stream are all still there
        v2 = connect("127.0.0.1", pub)
        v2.sendall(b"again")
        _, _, sid2, _ = peer.expect(OPEN)
        assert sid2 != sid
        v.close()
        v2.close()
        peer.send(frame(CTRL, 0, check_msg(4, 1, srv.port)))
        assert parse_checked(next_ctrl(peer)) == (4, "open", ("127.0.0.1", srv.port),
                                                  "connected")
    finally:
        peer.close()
    assert checks(relay) == {"open": 1, "closed": 0, "filtered": 0, "refused": 2,
                             "open|filtered": 1}


def test_rate_per_key(procs, tmp_path, keys):
    """Ten checks in a row, then the eleventh is refused saying when the next fits; another
    key has its own rate."""
    relay = start_relay(procs, tmp_path, keys, auth=[keys.alice.line, keys.bob.line])
    closed = alloc_port()
    for _ in range(10):
        r = check(relay, tmp_path, keys, closed)
        assert line(r) == f"tcp/{closed} at 127.0.0.1: closed (reset)", r.stderr
    r = check(relay, tmp_path, keys, closed)
    assert r.returncode == 1
    m = re.fullmatch(rf"tcp/{closed} at 127\.0\.0\.1: refused \(this key made its 10 checks in "
                     r"a row \(10 a minute\); the next fits in ([1-6]) s\)", line(r))
    assert m, line(r)
    r = check(relay, tmp_path, keys, closed, key=keys.bob)
    assert line(r) == f"tcp/{closed} at 127.0.0.1: closed (reset)", r.stderr
    assert checks(relay)["refused"] == 1 and checks(relay)["closed"] == 11
    # the refusals are counted in the log, not a line each (any client may cause them)
    relay.proc.send_signal(signal.SIGTERM)
    relay.proc.wait_exit()
    relay.proc.check()
    assert any(re.search(r"relay: 1 checks in the last .*refused: the key's rate", m)
               for m in relay.messages()), relay.proc.log


# ---------------------------------------------------------------------------------------------
# no answer: said, exit 1


def test_no_answer(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys, auth=[keys.alice.line])
    # nothing listens there
    down = alloc_port()
    r = check(relay, tmp_path, keys, srv.port, via=f"127.0.0.1:{down}")
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert re.search(rf"^pinhole: check tcp/{srv.port} through 127\.0\.0\.1:{down}: .*"
                     r"Connection refused", r.stderr, re.M), r.stderr
    # a key the relay does not know
    r = check(relay, tmp_path, keys, srv.port, key=keys.mallory)
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert "the relay refused this client's key" in r.stderr, r.stderr
    # a relay whose key is not the pinned one
    r = run_pinhole("check", srv.port, "--via", f"127.0.0.1:{relay.port}", "--key",
                    keys.alice.path, "--relay-key", keys.bob.fp)
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert "not the pinned --relay-key" in r.stderr, r.stderr
    assert "the relay's key is not the one pinned for it" in r.stderr, r.stderr
    assert sum(checks(relay).values()) == 0


def test_session_lost_mid_check(procs, tmp_path, keys, udp_echo):
    """The client killed while the relay probes: the probe ends unanswered and the relay
    goes on; the relay killed while the client waits: the client says so, exit 1."""
    sink = udp_echo(reply=False)
    relay = start_relay(procs, tmp_path, keys)
    args = ("-v", "check", sink.port, "--udp", "--via", f"127.0.0.1:{relay.port}", "--key",
            keys.alice.path, "--known-relays", tmp_path / "known_relays")
    c = procs(*args)
    # the prober's first datagram: the check is in flight
    wait_until(lambda: len(sink.sources) >= 1, READY_TIMEOUT_S, "the prober's first datagram")
    c.proc.kill()
    c.proc.wait(timeout=5)
    c.rc = c.expect_rc = -signal.SIGKILL
    relay.proc.wait_log(r"\(alice\): session ended: ")
    time.sleep(PROBE_S + 0.5)  # past the probe's deadline: nothing may answer a gone session
    assert checks(relay)["open|filtered"] == 0, relay.proc.log
    assert relay.alive()

    before = len(sink.sources)
    c = procs(*args)
    c.expect_rc = 1
    wait_until(lambda: len(sink.sources) > before, READY_TIMEOUT_S,
               "the second check's first datagram")
    relay.proc.proc.kill()
    relay.proc.proc.wait(timeout=5)
    relay.proc.rc = relay.proc.expect_rc = -signal.SIGKILL
    assert c.wait_exit() == 1
    assert re.search(rf"^pinhole: check udp/{sink.port} through 127\.0\.0\.1:{relay.port}: the "
                     r"session ended before the relay answered: ", c.log, re.M), c.log
    assert c.stdout == ""


# ---------------------------------------------------------------------------------------------
# a port whose packets a firewall drops (nftables in a namespace of our own; root only)


def _which(tool):
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _ns(ns, *cmd, timeout=10, check_rc=True):
    r = subprocess.run(["ip", "netns", "exec", ns, *[str(c) for c in cmd]], capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check_rc and r.returncode != 0:
        pytest.fail(f"{cmd} in {ns}: exit {r.returncode}: {r.stderr}")
    return r


@pytest.fixture
def netns():
    """A network namespace of this test's own with its loopback up; deleted at teardown,
    with every process still in it."""
    if os.geteuid() != 0:
        pytest.skip("a network namespace and nftables need root")
    for tool in ("ip", "nft"):
        if _which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    ns = f"phchk-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {r.stderr.strip()}")
    try:
        _ns(ns, "ip", "link", "set", "lo", "up")
        yield ns
    finally:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                              timeout=10).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


LISTEN_PY = r"""
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
s.settimeout(0.2)
end = time.monotonic() + 60  # ends by itself, whatever happens to the test
while time.monotonic() < end:
    try:
        s.accept()[0].close()
    except OSError:
        pass
"""


def test_dropped_port_is_filtered(tmp_path, keys, netns):
    """In a namespace: a listener is open; with nftables dropping its port's packets it is
    filtered (TCP: no answer in 3 s; UDP: open|filtered where it was closed); without the
    rule, open again."""
    port, uport, rport = 8080, 5353, 7835  # the namespace is ours: every port is free
    pre = ("ip", "netns", "exec", netns)
    authf = tmp_path / "authorized_keys.ns"
    authf.write_text(keys.alice.line + "\n")
    relay = Pinhole(["server", f"127.0.0.1:{rport}", "--key", keys.relay.path,
                     "--authorized-keys", authf, "--control", "none"], str(tmp_path),
                    prefix=pre, idx=90)
    listener = subprocess.Popen([*pre, sys.executable, "-c", LISTEN_PY, str(port)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        relay.wait_log(r"^relay on 127\.0\.0\.1:7835, ", timeout=READY_TIMEOUT_S)

        def listening(p):
            return _ns(netns, "ss", "-Hltn", f"sport = :{p}").stdout.strip() != ""

        wait_until(lambda: listening(rport) and listening(port), READY_TIMEOUT_S,
                   "the relay and the listener in the namespace")

        def ns_check(*args):
            return check(relay, tmp_path, keys, *args, via=f"127.0.0.1:{rport}", prefix=pre)

        r = ns_check(port)
        assert (r.returncode, line(r)) == (0, f"tcp/{port} at 127.0.0.1: open"), r.stderr
        r = ns_check(uport, "--udp")
        assert line(r) == f"udp/{uport} at 127.0.0.1: closed (ICMP port unreachable)"

        rules = tmp_path / "drop.nft"
        rules.write_text("table inet phchk {\n  chain input {\n"
                         "    type filter hook input priority 0;\n"
                         f"    tcp dport {port} drop\n    udp dport {uport} drop\n  }}\n}}\n")
        _ns(netns, "nft", "-f", rules)
        r = ns_check(port)
        assert (r.returncode, line(r)) == \
            (1, f"tcp/{port} at 127.0.0.1: filtered (no answer in 3000 ms)"), r.stderr
        r = ns_check(uport, "--udp")
        assert r.returncode == 1
        assert line(r).startswith(f"udp/{uport} at 127.0.0.1: open|filtered (")

        _ns(netns, "nft", "delete", "table", "inet", "phchk")
        r = ns_check(port)
        assert (r.returncode, line(r)) == (0, f"tcp/{port} at 127.0.0.1: open"), r.stderr
        assert any(re.search(CHECKED_RE.format(who="alice", proto="tcp", port=port,
                                               result="filtered"), m)
                   for m in relay.messages()), relay.log
    finally:
        listener.kill()
        listener.wait(timeout=5)
        relay.stop()
