"""
UDP forwarding: udp://LISTEN and tcp+udp://LISTEN, a session (and an upstream socket of its
own) per client, datagrams whole, idle expiry, --max-sessions eviction, ICMP unreachable,
--allow/--deny, round robin over targets, IPv6 and dual stack, and a real DNS server.

    client (python, dig) ─> pinhole udp://P ──┬─> UDP echo 127.0.0.1:Q (a thread, below)
    127.0.0.1 or ::1         one upstream     ├─> UDP echo B (tagged replies)
                             socket (port)    ├─> a sink, or a plain socket that answers late
                             per session      ├─> dnsmasq 127.0.0.1:D
                                              └─> 127.0.0.1:DEAD (nothing: ICMP unreachable)

Readiness: pinhole logs its "forwarding udp ..." line only after every worker's UDP socket
is bound, so a datagram sent after it is queued even before the workers run.
"""

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import (READY_TIMEOUT_S, SOCK_TIMEOUT_S, connect, echo_once,
                      free_udp_port, listeners, parse_log, parse_stats, run_peer, run_pinhole,
                      wait_until)

UDP_MAX4 = 65507  # the largest UDP payload over IPv4
UDP_MAX6 = 65527  # over IPv6 (no jumbograms)


UDP_STATS_RE = re.compile(
    r"^(?P<what>stats|stopped) udp: (?P<sessions>\d+) sessions \((?P<active>\d+) active\), "
    r"(?P<up>\d+) datagrams up, (?P<down>\d+) down, (?P<dropped>\d+) dropped, "
    r"(?P<evicted>\d+) evicted$")
# a session's close line (-v): uN CLIENT -> TARGET: REASON, X datagrams (B B) up, ...
CLOSE_RE = re.compile(
    r"^u(?P<id>\d+) (?P<client>\S+) -> (?P<target>\S+): (?P<reason>[^,]+), "
    r"(?P<up>\d+) datagrams \((?P<up_b>\d+) B\) up, (?P<down>\d+) \((?P<down_b>\d+) B\) down, "
    r"(?P<ms>\d+) ms$")


# ---------------------------------------------------------------------------------------------
# helpers


def parse_udp_stats(msg):
    m = UDP_STATS_RE.match(msg)
    if m is None:
        return None
    return {k: (int(v) if v.isdigit() else v) for k, v in m.groupdict().items()}








def udp_bound(port):
    """Lines of `ss -lunH` for UDP sockets bound to port."""
    out = subprocess.run(["ss", "-lunH", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=5, check=True).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def start_udp(pinhole, *args):
    """pinhole(*args) for a udp:// or tcp+udp:// rule, waited for until it logged its start
    line (the conftest readiness looks for a TCP listener)."""
    ph = pinhole(*args, ready=False)
    ph.wait_log(r"^forwarding (udp|tcp\+udp) ", timeout=READY_TIMEOUT_S)
    return ph


def udp_stats(ph, timeout=5):
    """SIGUSR1, then the `stats udp:` line that follows `stats:`, parsed."""
    before = sum(1 for m in ph.messages() if m.startswith("stats udp:"))
    ph.send_signal(signal.SIGUSR1)
    hits = ph.wait_log(r"^stats udp: ", timeout=timeout, count=before + 1)
    st = parse_udp_stats(hits[-1])
    assert st is not None, f"unparsable: {hits[-1]}"
    return st


def stop_udp(ph):
    """Stops pinhole (SIGTERM, exit 0, no sanitizer report) and returns its two last lines,
    `stopped:` and `stopped udp:`, parsed."""
    ph.stop()
    msgs = ph.messages()
    assert len(msgs) >= 2, f"log too short:\n{ph.log}"
    assert msgs[-2].startswith("stopped: "), f"no stopped: line before the last:\n{ph.log}"
    assert msgs[-1].startswith("stopped udp: "), f"last line is not stopped udp:\n{ph.log}"
    st, ust = parse_stats(msgs[-2]), parse_udp_stats(msgs[-1])
    assert st is not None and ust is not None, f"unparsable stopped lines:\n{ph.log}"
    return st, ust


def close_lines(ph, reason=None):
    """The session close lines (-v), parsed, optionally only those with reason."""
    out = []
    for msg in ph.messages():
        m = CLOSE_RE.match(msg)
        if m and (reason is None or m["reason"] == reason):
            out.append(m.groupdict())
    return out


def sub(d, *keys):
    return {k: d[k] for k in keys}








@pytest.fixture
def udp_client():
    """A callable: udp_client(host="127.0.0.1", timeout=SOCK_TIMEOUT_S) -> an unconnected
    UDP socket bound to host (an ephemeral port), closed at teardown."""
    made = []

    def make(host="127.0.0.1", timeout=SOCK_TIMEOUT_S):
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        made.append(s)
        s.settimeout(timeout)
        s.bind((host, 0))
        return s

    yield make
    for s in made:
        s.close()


def ask(c, msg, addr):
    """Sends msg to addr, returns (reply, the reply's source as (host, port))."""
    c.sendto(msg, addr)
    got, src = c.recvfrom(65536)
    return got, src[:2]


def echo(c, msg, addr):
    got, src = ask(c, msg, addr)
    assert got == msg, f"sent {len(msg)} B, got {len(got)} B back" + (
        "" if len(got) != len(msg) else " (different bytes)")
    assert src == addr, f"reply came from {src}, the client wrote to {addr}"


def nothing_comes(c, wait=0.5):
    """True when no datagram arrives on c within wait seconds."""
    c.settimeout(wait)
    try:
        c.recvfrom(65536)
    except socket.timeout:
        return True
    return False


# ---------------------------------------------------------------------------------------------
# 1. datagrams whole


def test_datagrams_pass_whole(pinhole, udp_echo, udp_client):
    srv = udp_echo()
    port = free_udp_port()
    addr = ("127.0.0.1", port)
    ph = start_udp(pinhole, f"udp://127.0.0.1:{port}", f"127.0.0.1:{srv.port}")
    assert f"forwarding udp 127.0.0.1:{port} -> 127.0.0.1:{srv.port} (" in ph.log
    c = udp_client()

    sizes = [1, 1400, UDP_MAX4, 0]  # an empty datagram is one too
    for n in sizes:
        echo(c, os.urandom(n), addr)

    # a stream of datagrams of assorted sizes: each arrives as one, none merged or split,
    # in order (one path: one listener, one upstream socket, one echo thread)
    rng = random.Random(1234)
    msgs = [rng.randbytes(rng.choice((1, 2, 7, 100, 512, 1472, 1473, 3000, 9000)))
            for _ in range(300)]
    got = []
    for w in range(0, len(msgs), 30):  # paced in windows: no socket buffer ever fills
        window = msgs[w:w + 30]
        for m in window:
            c.sendto(m, addr)
        for _ in window:
            try:
                d, src = c.recvfrom(65536)
            except socket.timeout:
                pytest.fail(f"echo {len(got)} of {len(msgs)} never came back")
            assert src[:2] == addr
            got.append(d)
    assert [len(d) for d in got] == [len(m) for m in msgs]
    assert got == msgs
    assert nothing_comes(c, 0.2), "an extra datagram came back"
    assert srv.sizes == sizes + [len(m) for m in msgs], "the target saw other datagrams"
    assert len(srv.ports()) == 1, "one client must be one session: one source port"

    st, ust = stop_udp(ph)
    n = len(sizes) + len(msgs)
    assert sub(ust, "sessions", "active", "up", "down", "dropped", "evicted") == \
        {"sessions": 1, "active": 0, "up": n, "down": n, "dropped": 0, "evicted": 0}, ust
    assert st["accepted"] == 0 and st["errors"] == 0, st


# ---------------------------------------------------------------------------------------------
# 2. many clients


def test_thousand_clients_each_get_their_own_replies(pinhole, udp_echo):
    n_clients, per, batch = 1000, 3, 50
    srv = udp_echo()
    port = free_udp_port()
    addr = ("127.0.0.1", port)
    ph = start_udp(pinhole, f"udp://127.0.0.1:{port}", f"127.0.0.1:{srv.port}")
    clients = []
    t0 = time.monotonic()
    try:
        for _ in range(n_clients):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            clients.append(s)
            s.settimeout(5)
            s.bind(("127.0.0.1", 0))
        # in batches of 50 clients (150 datagrams in flight at most, far below any socket
        # buffer on the way), so that loopback has no reason to lose any: exact counts
        for b in range(0, n_clients, batch):
            ids = range(b, min(n_clients, b + batch))
            for k in range(per):
                for i in ids:
                    clients[i].sendto(f"client {i:04d} datagram {k}".encode(), addr)
            for i in ids:
                for k in range(per):
                    want = f"client {i:04d} datagram {k}".encode()
                    try:
                        got, src = clients[i].recvfrom(2048)
                    except socket.timeout:
                        pytest.fail(f"client {i}: datagram {k} did not come back within 5 s "
                                    f"({time.monotonic() - t0:.1f} s into the test)")
                    assert got == want, f"client {i} got {got!r}, expected {want!r}"
                    assert src == addr
        # nothing left over for anyone
        for i, s in enumerate(clients):
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recvfrom(2048)
    finally:
        for s in clients:
            s.close()
    took = time.monotonic() - t0
    assert took < 20, f"1000 clients took {took:.1f} s"
    assert srv.count == n_clients * per
    assert len(srv.ports()) == n_clients, "each client must have its own upstream port"
    assert {h for h, _ in srv.sources} == {"127.0.0.1"}

    st, ust = stop_udp(ph)
    assert sub(ust, "sessions", "active", "up", "down", "dropped", "evicted") == \
        {"sessions": n_clients, "active": 0, "up": n_clients * per,
         "down": n_clients * per, "dropped": 0, "evicted": 0}, ust


# ---------------------------------------------------------------------------------------------
# 3. a real DNS server behind pinhole


DNSMASQ = "/usr/sbin/dnsmasq"
HOSTS = {f"h{i}.test": f"192.0.2.{100 + i}" for i in range(50)}
HOSTS.update({"a.test": "192.0.2.1", "b.test": "192.0.2.2", "c.test": "198.51.100.3"})


def dig_cmd(port, name):
    return ["dig", "@127.0.0.1", "-p", str(port), "+short", "+tries=1", "+time=2", name]


def test_dnsmasq_behind_pinhole(pinhole, spawn):
    if not os.access(DNSMASQ, os.X_OK):
        pytest.skip("dnsmasq is not installed")
    if shutil.which("dig") is None:
        pytest.skip("dig is not installed")
    dport = free_udp_port()
    cmd = [DNSMASQ, "--no-daemon", "--no-resolv", "--no-hosts", f"--port={dport}",
           "--listen-address=127.0.0.1", "--bind-interfaces", "--pid-file=",
           "--log-facility=-", "--address=/example.test/192.0.2.7"]
    cmd += [f"--host-record={name},{ip}" for name, ip in HOSTS.items()]
    spawn(cmd, port=dport)  # waits for its TCP listener; the UDP one is made with it
    wait_until(lambda: udp_bound(dport), 5, f"dnsmasq's UDP socket on {dport}")
    port = free_udp_port()
    ph = start_udp(pinhole, f"udp://127.0.0.1:{port}", f"127.0.0.1:{dport}", "-v")

    expect = {"a.test": "192.0.2.1", "b.test": "192.0.2.2", "c.test": "198.51.100.3",
              "example.test": "192.0.2.7", "www.example.test": "192.0.2.7"}
    ndig = 0
    for name, ip in expect.items():
        out = run_peer(dig_cmd(port, name), timeout=10).stdout.decode()
        ndig += 1
        assert out.split() == [ip], f"dig {name}: {out!r}"

    # 50 at once, each with its own name and answer
    procs = {}
    try:
        for i in range(50):
            name = f"h{i}.test"
            procs[name] = subprocess.Popen(dig_cmd(port, name), stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True,
                                           stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        wrong = {}
        for name, p in procs.items():
            try:
                out, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                wrong[name] = "still running after 15 s"
                continue
            ndig += 1
            if p.returncode != 0 or out.split() != [HOSTS[name]]:
                wrong[name] = f"exit {p.returncode}: {out!r}"
        assert not wrong, f"{len(wrong)} of 50 concurrent digs failed: {wrong}"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)

    st, ust = stop_udp(ph)
    # dig +tries=1 sends one query, one answer each; a session per source port, which is
    # one per dig unless a dig got the port of one that ended before (then it is the same
    # client to pinhole, and the same session)
    assert sub(ust, "up", "down", "dropped", "evicted") == \
        {"up": ndig, "down": ndig, "dropped": 0, "evicted": 0}, ust
    closed = close_lines(ph, "shutdown")
    assert len(closed) == ust["sessions"] == len({cl["client"] for cl in closed}), ph.log
    assert sum(int(cl["up"]) for cl in closed) == ndig, ph.log
    assert ndig - 5 <= ust["sessions"] <= ndig, ust


# ---------------------------------------------------------------------------------------------
# 4. idle expiry


def test_idle_timeout(pinhole, udp_echo, udp_client):
    srv = udp_echo()
    port = free_udp_port()
    addr = ("127.0.0.1", port)
    ph = start_udp(pinhole, f"udp://127.0.0.1:{port}", f"127.0.0.1:{srv.port}",
                   "--udp-timeout", "1s", "-v")
    c = udp_client()
    cport = c.getsockname()[1]

    # traffic keeps a session: 4 datagrams 0.4 s apart span 1.2 s > 1 s, one session
    for k in range(4):
        if k:
            time.sleep(0.4)  # pacing on purpose: the gaps are what is tested
        echo(c, f"keep {k}".encode(), addr)
    last = time.monotonic()
    assert len(srv.ports()) == 1, f"the session ended under traffic: {srv.sources}"
    assert not close_lines(ph), f"a session closed under traffic:\n{ph.log}"

    ph.wait_log(r": idle timeout, ", timeout=5)
    idle = time.monotonic() - last
    assert 0.9 <= idle < 3.5, f"expired after {idle:.2f} s idle, --udp-timeout is 1s"
    (cl,) = close_lines(ph, "idle timeout")
    assert cl["client"] == f"127.0.0.1:{cport}" and cl["target"] == f"127.0.0.1:{srv.port}", cl
    assert sub(cl, "up", "up_b", "down", "down_b") == \
        {"up": "4", "up_b": "24", "down": "4", "down_b": "24"}, cl
    assert 1000 <= int(cl["ms"]) < 4000, cl  # the session's whole life: 1.2 s + 1 s idle
    ust = udp_stats(ph)
    assert sub(ust, "sessions", "active") == {"sessions": 1, "active": 0}, ust

    # the same client again: a new session, with a new upstream socket (port)
    echo(c, b"after expiry", addr)
    ports = srv.ports()
    # (the kernel picks the new ephemeral port at random: the same one again is a
    # 1-in-28,000 chance, well below this suite's other risks)
    assert len(ports) == 2, f"no new source port after expiry: {srv.sources}"
    ust = udp_stats(ph)
    assert sub(ust, "sessions", "active") == {"sessions": 2, "active": 1}, ust

    st, ust = stop_udp(ph)
    assert sub(ust, "sessions", "active", "up", "down", "dropped") == \
        {"sessions": 2, "active": 0, "up": 5, "down": 5, "dropped": 0}, ust
    reasons = [cl["reason"] for cl in close_lines(ph)]
    assert reasons == ["idle timeout", "shutdown"], ph.log


def test_one_way_traffic_keeps_a_session(pinhole, udp_echo, udp_client):
    """A datagram either way makes a session live on: one client only sends (to a sink),
    the target only sends to another (after its first datagram); both outlive 1s."""
    sink = udp_echo(reply=False)
    port = free_udp_port()
    addr = ("127.0.0.1", port)
    ph = start_udp(pinhole, f"udp://127.0.0.1:{port}", f"127.0.0.1:{sink.port}",
                   "--udp-timeout", "1s", "-v")
    up, down = udp_client(), udp_client(timeout=3)
    down.sendto(b"subscribe", addr)
    wait_until(lambda: sink.count == 1, 5, "the subscription to reach the target")
    session_of_down = sink.sources[0]
    for k in range(4):  # 1.2 s of one-way traffic each, then silence
        if k:
            time.sleep(0.4)  # pacing on purpose: the gaps are what is tested
        up.sendto(f"up {k}".encode(), addr)
        sink.sock.sendto(f"down {k}".encode(), session_of_down)
    for k in range(4):
        got, src = down.recvfrom(65536)
        assert got == f"down {k}".encode() and src[:2] == addr, (got, src)
    ph.wait_log(r": idle timeout, ", count=2, timeout=5)
    by_client = {cl["client"]: cl for cl in close_lines(ph, "idle timeout")}
    cu = by_client[f"127.0.0.1:{up.getsockname()[1]}"]
    cd = by_client[f"127.0.0.1:{down.getsockname()[1]}"]
    assert (cu["up"], cu["down"], cd["up"], cd["down"]) == ("4", "0", "1", "4"), by_client
    # each lived through its 1.2 s of traffic and then 1 s of silence
    assert int(cu["ms"]) >= 1900 and int(cd["ms"]) >= 1900, by_client
    assert len(sink.ports()) == 2, sink.sources
    st, ust = stop_udp(ph)
    assert sub(ust, "sessions", "active", "up", "down", "dropped") == \
        {"sessions": 2, "active": 0, "up": 5, "down": 4, "dropped": 0}, ust


# ---------------------------------------------------------------------------------------------
# 5. --max-sessions


def test_max_sessions_evicts_least_recently_used(pinhole, udp_echo, udp_client):
    srv = udp_echo()
    port = free_udp_port()
    addr = ("127.0.0.1", port)
    ph = start_udp(pinhole, f"udp://127.0.0.1:{port}", f"127.0.0.1:{srv.port}",
                   "--max-sessions", "2", "--workers", "1", "-v")
    a, b, c = udp_client(), udp_client(), udp_client()
    pa, pb, pc = (s.getsockname()[1] for s in (a, b, c))
    echo(a, b"a1", addr)
    echo(b, b"b1", addr)
    echo(a, b"a2", addr)  # a is now more recent than b: b is the one to go
    assert "reached" not in ph.log
    echo(c, b"c1", addr)

    (warn,) = ph.wait_log(r"--max-sessions 2 reached")
    assert f"of 127.0.0.1:{pb} " in warn and f"makes room for 127.0.0.1:{pc}" in warn, warn
    assert any(lvl == "warn" and "--max-sessions 2 reached" in m
               for lvl, _, m in parse_log(ph.log)), ph.log
    ph.wait_log(rf"^u\d+ 127\.0\.0\.1:{pb} -> 127\.0\.0\.1:{srv.port}: evicted, ")
    ust = udp_stats(ph)
    assert sub(ust, "sessions", "active", "evicted") == \
        {"sessions": 3, "active": 2, "evicted": 1}, ust

    # a and c keep their sessions (the target sees the same ports as before)
    echo(a, b"a3", addr)
    echo(c, b"c2", addr)
    assert len(srv.ports()) == 3, srv.sources
    # b comes back: a new session, which evicts the least recent one now (a)
    echo(b, b"b2", addr)
    assert len(srv.ports()) == 4, srv.sources
    ph.wait_log(rf"^u\d+ 127\.0\.0\.1:{pa} -> \S+: evicted, ")

    st, ust = stop_udp(ph)
    assert sub(ust, "sessions", "active", "up", "down", "dropped", "evicted") == \
        {"sessions": 4, "active": 0, "up": 7, "down": 7, "dropped": 0, "evicted": 2}, ust


def test_max_sessions_under_a_burst(pinhole, udp_echo):
    """200 new clients at once against --max-sessions 10: every datagram still goes up
    (a session is sent on before the next one evicts it), exactly 190 evictions, 10 left,
    and the down count is what the clients received. (Which client gets a late echo of an
    evicted session is test_late_reply_never_reaches_another_client's business.)"""
    n, cap = 200, 10
    srv = udp_echo()
    port = free_udp_port()
    addr = ("127.0.0.1", port)
    ph = start_udp(pinhole, f"udp://127.0.0.1:{port}", f"127.0.0.1:{srv.port}",
                   "--max-sessions", cap, "--workers", "1")
    clients = []
    received = 0
    try:
        for _ in range(n):  # all made first: no client takes a port pinhole gives back
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            clients.append(s)
            s.settimeout(5)
            s.bind(("127.0.0.1", 0))
        for i, s in enumerate(clients):
            s.sendto(f"burst {i:03d}".encode(), addr)
        # the last ten are never evicted: their echoes must come
        for i in range(n - cap, n):
            want = f"burst {i:03d}".encode()
            while True:
                try:
                    got, src = clients[i].recvfrom(2048)
                except socket.timeout:
                    pytest.fail(f"client {i} (a live session) never got its echo")
                assert src[:2] == addr
                received += 1
                if got == want:
                    break
        wait_until(lambda: srv.count == n, 5, f"the target to see all {n} datagrams")
        ust = udp_stats(ph)
        assert sub(ust, "sessions", "active", "up", "evicted") == \
            {"sessions": n, "active": cap, "up": n, "evicted": n - cap}, ust
        st, ust = stop_udp(ph)  # after this, nothing more can reach a client
        for s in clients:
            s.setblocking(False)
            while True:
                try:
                    s.recvfrom(2048)
                except BlockingIOError:
                    break
                received += 1
    finally:
        for s in clients:
            s.close()
    assert sub(ust, "sessions", "active", "up", "down", "evicted") == \
        {"sessions": n, "active": 0, "up": n, "down": received, "evicted": n - cap}, ust
    # (no check on the target's count of source ports: an evicted session's port is free
    # again, and the kernel may well give it to a later session)
    warns = [m for m in ph.messages() if "--max-sessions 10 reached" in m]
    assert 1 <= len(warns) <= 50, f"{len(warns)} warnings: the log must not be flooded"


def test_late_reply_never_reaches_another_client(pinhole, udp_client):
    """A session's upstream port is its client's mapping. Once the session is gone (here
    evicted; an idle timeout is the same), a reply the target sends late to that port must
    not reach another client through pinhole, even when a new session's upstream socket got
    the same port from the kernel (ephemeral ports are reused at random: with 500 live
    sessions and 1,000 ended ones, some reuse is all but certain; the test counts it).

    The target is a plain socket that answers only at the end, to every port it saw. (Our
    own client sockets take ephemeral ports too, and may get a late reply straight from the
    target: that is the kernel's doing, told apart by its source address, and not counted.)
    """
    live, n_max = 500, 4000
    tgt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tgt.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 4 << 20)
    tgt.bind(("127.0.0.1", free_udp_port()))
    tgt.settimeout(5)
    port = free_udp_port()
    addr = ("127.0.0.1", port)
    ph = start_udp(pinhole, f"udp://127.0.0.1:{port}", f"127.0.0.1:{tgt.getsockname()[1]}",
                   "--max-sessions", live, "--workers", "1")
    clients, users = [], {}  # users: upstream port -> client ids that had it, in order
    try:
        reused = []
        while len(clients) < n_max:
            ids = range(len(clients), len(clients) + 50)
            for i in ids:
                c = udp_client()
                clients.append(c)
                c.sendto(f"client {i}".encode(), addr)
            for _ in ids:
                data, (_, p) = tgt.recvfrom(2048)
                users.setdefault(p, []).append(int(data.split()[1]))
            # a port of an ended session now held by one of the live ones
            first_live = len(clients) - live
            reused = [p for p, u in users.items()
                      if len(u) >= 2 and u[-1] >= first_live and u[-2] < first_live]
            if len(clients) >= 3 * live and reused:
                break
        ust = udp_stats(ph)
        assert ust["active"] == live and ust["evicted"] == len(clients) - live, ust
        # the target answers everyone now, each reply naming the client it is for
        for p, ids_ in users.items():
            for i in ids_:
                tgt.sendto(f"reply for client {i}".encode(), ("127.0.0.1", p))
        # the live sessions' clients must get their own reply: wait for those
        first_live = len(clients) - live
        got = {}
        for i in range(first_live, len(clients)):
            want = f"reply for client {i}".encode()
            while True:
                try:
                    d, src = clients[i].recvfrom(2048)
                except socket.timeout:
                    pytest.fail(f"live client {i} never got its reply")
                got.setdefault(i, []).append((d, src[:2]))
                if d == want:
                    break
        # and whatever else arrived anywhere
        for i, c in enumerate(clients):
            c.setblocking(False)
            while True:
                try:
                    d, src = c.recvfrom(2048)
                except BlockingIOError:
                    break
                got.setdefault(i, []).append((d, src[:2]))
    finally:
        tgt.close()
    wrong = {i: [d.decode() for d, src in ds
                 if src == addr and d != f"reply for client {i}".encode()]
             for i, ds in got.items()}
    wrong = {i: ds for i, ds in wrong.items() if ds}
    assert not wrong, (
        f"{sum(map(len, wrong.values()))} replies reached the wrong client through pinhole "
        f"({len(reused)} upstream ports of ended sessions were held by live ones), e.g. "
        f"{dict(list(wrong.items())[:4])}")


# ---------------------------------------------------------------------------------------------
# 6. ICMP port unreachable


def test_target_unreachable_ends_session_at_once(pinhole, udp_echo, udp_client):
    dead = free_udp_port()  # nothing listens there (yet): the kernel answers ICMP
    port = free_udp_port()
    addr = ("127.0.0.1", port)
    ph = start_udp(pinhole, f"udp://127.0.0.1:{port}", f"127.0.0.1:{dead}",
                   "--udp-timeout", "60s", "-v")
    c = udp_client()
    cport = c.getsockname()[1]
    t0 = time.monotonic()
    c.sendto(b"anyone there?", addr)
    ph.wait_log(r"target unreachable", timeout=2)
    took = time.monotonic() - t0
    assert took < 2, f"the session ended {took:.2f} s after the datagram"
    (cl,) = close_lines(ph)
    assert cl["reason"] == "target unreachable: Connection refused", cl
    assert cl["client"] == f"127.0.0.1:{cport}" and cl["target"] == f"127.0.0.1:{dead}", cl
    assert sub(cl, "up", "up_b", "down", "down_b") == \
        {"up": "1", "up_b": "13", "down": "0", "down_b": "0"}, cl
    ph.wait_log(rf"^target 127\.0\.0\.1:{dead} \(127\.0\.0\.1:{dead}\) failed: "
                r"Connection refused; skipped for \d+ ms$")
    ust = udp_stats(ph)
    assert sub(ust, "sessions", "active", "up", "down") == \
        {"sessions": 1, "active": 0, "up": 1, "down": 0}, ust
    assert nothing_comes(c, 0.2)

    # pinhole runs on: once the target is up, the same client (and another) are served
    c.settimeout(SOCK_TIMEOUT_S)
    srv = udp_echo(port=dead)
    echo(c, b"and now?", addr)
    echo(udp_client(), b"me too", addr)
    assert srv.count == 2
    st, ust = stop_udp(ph)
    assert sub(ust, "sessions", "active", "up", "down", "dropped") == \
        {"sessions": 3, "active": 0, "up": 3, "down": 2, "dropped": 0}, ust
    assert [cl["reason"] for cl in close_lines(ph)] == \
        ["target unreachable: Connection refused", "shutdown", "shutdown"], ph.log


def test_unreachable_target_fails_over_to_next(pinhole, udp_echo, udp_client):
    srv = udp_echo()
    dead = free_udp_port()
    port = free_udp_port()
    addr = ("127.0.0.1", port)
    # one worker: the first session goes to the first target (the dead one)
    ph = start_udp(pinhole, f"udp://127.0.0.1:{port}", f"127.0.0.1:{dead}",
                   f"127.0.0.1:{srv.port}", "--workers", "1", "--udp-timeout", "60s", "-v")
    c = udp_client()
    c.sendto(b"lost", addr)
    ph.wait_log(r"target unreachable", timeout=2)
    # the dead target is skipped for its back-off: every new session goes to the live one
    for _ in range(4):
        echo(udp_client(), b"served", addr)
    echo(c, b"served too", addr)  # the first client gets a new session, on the live target
    assert srv.count == 5 and len(srv.ports()) == 5
    st, ust = stop_udp(ph)
    assert sub(ust, "sessions", "up", "down") == {"sessions": 6, "up": 6, "down": 5}, ust


def test_named_target_holds_datagrams_while_resolving(pinhole, udp_echo, udp_client):
    """A target given by name (c-ares, answered from /etc/hosts): a burst that arrives
    before the name is resolved is held (up to 8 datagrams), then sent in order."""
    with open("/etc/hosts") as f:
        if not re.search(r"^\s*127\.0\.0\.1\s+(.*\s)?localhost(\s|$)", f.read(), re.M):
            pytest.skip("/etc/hosts does not map localhost to 127.0.0.1")
    srv = udp_echo()
    port = free_udp_port()
    addr = ("127.0.0.1", port)
    ph = start_udp(pinhole, f"udp://127.0.0.1:{port}", f"localhost:{srv.port}")
    assert f"forwarding udp 127.0.0.1:{port} -> localhost:{srv.port} (" in ph.log
    c = udp_client()
    msgs = [f"burst {k}".encode() for k in range(6)]
    for m in msgs:
        c.sendto(m, addr)
    got = [c.recvfrom(65536)[0] for _ in msgs]
    assert got == msgs
    assert srv.sources and {h for h, _ in srv.sources} == {"127.0.0.1"}
    echo(udp_client(), b"name cached now", addr)
    st, ust = stop_udp(ph)
    assert sub(ust, "sessions", "up", "down", "dropped") == \
        {"sessions": 2, "up": 7, "down": 7, "dropped": 0}, ust


# ---------------------------------------------------------------------------------------------
# 7. IPv6 and dual stack


def test_ipv6_listener_and_target(pinhole, udp_echo, udp_client, ipv6):
    srv = udp_echo(host="::1")
    port = free_udp_port()
    addr = ("::1", port)
    ph = start_udp(pinhole, f"udp://[::1]:{port}", f"[::1]:{srv.port}")
    assert f"forwarding udp [::1]:{port} -> [::1]:{srv.port} (" in ph.log
    c = udp_client("::1")
    for n in (1, 1400, UDP_MAX6):
        echo(c, os.urandom(n), addr)
    assert srv.sizes == [1, 1400, UDP_MAX6]
    assert {h for h, _ in srv.sources} == {"::1"} and len(srv.ports()) == 1
    # an IPv6-only listener: nothing answers on 127.0.0.1
    c4 = udp_client(timeout=0.3)
    c4.sendto(b"v4?", ("127.0.0.1", port))
    assert nothing_comes(c4, 0.3)
    st, ust = stop_udp(ph)
    assert sub(ust, "sessions", "up", "down", "dropped") == \
        {"sessions": 1, "up": 3, "down": 3, "dropped": 0}, ust


def test_dual_stack_listener_replies_from_the_address_written_to(pinhole, udp_echo, udp_client,
                                                                 ipv6):
    srv = udp_echo()
    port = free_udp_port()
    ph = start_udp(pinhole, f"udp://:{port}", f"127.0.0.1:{srv.port}", "-v")
    assert f"forwarding udp [::]:{port} -> 127.0.0.1:{srv.port} (" in ph.log
    c4, c6 = udp_client("127.0.0.1"), udp_client("::1")
    for k in range(2):
        # echo() checks the reply's source (recvfrom on an unconnected socket) is the very
        # address the client wrote to
        echo(c4, f"v4 {k}".encode(), ("127.0.0.1", port))
        echo(c6, f"v6 {k}".encode(), ("::1", port))
    assert len(srv.ports()) == 2
    st, ust = stop_udp(ph)
    assert sub(ust, "sessions", "up", "down", "dropped") == \
        {"sessions": 2, "up": 4, "down": 4, "dropped": 0}, ust
    clients = sorted(cl["client"] for cl in close_lines(ph, "shutdown"))
    assert clients == sorted([f"127.0.0.1:{c4.getsockname()[1]}",
                              f"[::1]:{c6.getsockname()[1]}"]), ph.log
    assert "::ffff:" not in ph.log


def test_wildcard_listener_replies_from_a_second_address(pinhole, udp_echo, udp_client):
    """A client bound to 127.0.0.1 writes to 127.0.0.2 (loopback owns all of 127/8): the
    kernel's own choice of source for the reply would be 127.0.0.1, so only the pktinfo
    pinhole sets makes the reply come from 127.0.0.2, the address written to."""
    srv = udp_echo()
    port = free_udp_port()
    ph = start_udp(pinhole, f"udp://0.0.0.0:{port}", f"127.0.0.1:{srv.port}")
    c = udp_client("127.0.0.1")
    for k in range(2):
        echo(c, f"to .2 {k}".encode(), ("127.0.0.2", port))
        echo(c, f"to .1 {k}".encode(), ("127.0.0.1", port))
    # one client, two local addresses: two sessions (two mappings), as a NAT keeps them
    st, ust = stop_udp(ph)
    assert sub(ust, "sessions", "up", "down") == {"sessions": 2, "up": 4, "down": 4}, ust


# ---------------------------------------------------------------------------------------------
# 8. tcp+udp on one port


def test_tcp_and_udp_on_one_port(pinhole, echo_server, udp_echo, udp_client):
    q = free_udp_port()
    tsrv = echo_server(port=q)
    usrv = udp_echo(port=q)
    port = free_udp_port()
    ph = start_udp(pinhole, f"tcp+udp://127.0.0.1:{port}", f"127.0.0.1:{q}")
    assert f"forwarding tcp+udp 127.0.0.1:{port} -> 127.0.0.1:{q} (" in ph.log
    assert listeners(port) and udp_bound(port)
    t = connect("127.0.0.1", port)
    try:
        echo_once(t, b"over tcp")
    finally:
        t.close()
    echo(udp_client(), b"over udp", ("127.0.0.1", port))
    assert tsrv.accepted == 1 and usrv.count == 1
    st, ust = stop_udp(ph)
    assert st["accepted"] == 1 and st["errors"] == 0, st
    assert sub(ust, "sessions", "up", "down") == {"sessions": 1, "up": 1, "down": 1}, ust


# ---------------------------------------------------------------------------------------------
# 9. --allow / --deny


def test_deny_drops_datagrams(pinhole, udp_echo, udp_client):
    srv = udp_echo()
    port = free_udp_port()
    addr = ("127.0.0.1", port)
    ph = start_udp(pinhole, f"udp://127.0.0.1:{port}", f"127.0.0.1:{srv.port}",
                   "--deny", "127.0.0.1")
    c = udp_client(timeout=0.5)
    for k in range(3):
        c.sendto(f"let me in {k}".encode(), addr)
    with pytest.raises(socket.timeout):
        c.recvfrom(65536)
    ph.wait_log(rf"denied 127\.0\.0\.1:{c.getsockname()[1]} by --allow/--deny")
    assert srv.count == 0
    st, ust = stop_udp(ph)
    assert st["denied"] == 3, st
    assert sub(ust, "sessions", "up", "down", "dropped") == \
        {"sessions": 0, "up": 0, "down": 0, "dropped": 3}, ust


def test_allow_lets_in(pinhole, udp_echo, udp_client):
    srv = udp_echo()
    port = free_udp_port()
    ph = start_udp(pinhole, f"udp://127.0.0.1:{port}", f"127.0.0.1:{srv.port}",
                   "--allow", "127.0.0.0/8")
    echo(udp_client(), b"in", ("127.0.0.1", port))
    st, ust = stop_udp(ph)
    assert st["denied"] == 0 and ust["sessions"] == 1 and ust["dropped"] == 0, (st, ust)


def test_allow_on_dual_stack(pinhole, udp_echo, udp_client, ipv6):
    """--allow 127.0.0.0/8 on :P: an IPv4 client (::ffff:127.0.0.1 to the socket) is in,
    ::1 is not."""
    srv = udp_echo()
    port = free_udp_port()
    ph = start_udp(pinhole, f"udp://:{port}", f"127.0.0.1:{srv.port}", "--allow", "127.0.0.0/8")
    echo(udp_client("127.0.0.1"), b"v4", ("127.0.0.1", port))
    c6 = udp_client("::1", timeout=0.5)
    c6.sendto(b"v6", ("::1", port))
    with pytest.raises(socket.timeout):
        c6.recvfrom(65536)
    st, ust = stop_udp(ph)
    assert st["denied"] == 1 and ust["sessions"] == 1, (st, ust)
    assert srv.count == 1


# ---------------------------------------------------------------------------------------------
# 10. several targets


def test_round_robin_and_sticky_sessions(pinhole, udp_echo, udp_client):
    a, b = udp_echo(tag=b"A:"), udp_echo(tag=b"B:")
    port = free_udp_port()
    addr = ("127.0.0.1", port)
    # one worker, so the rotation is one sequence (each worker keeps its own)
    ph = start_udp(pinhole, f"udp://127.0.0.1:{port}", f"udp://127.0.0.1:{a.port}",
                   f"127.0.0.1:{b.port}", "--workers", "1")
    clients = [udp_client() for _ in range(6)]

    def tag_of(c, msg):
        got, src = ask(c, msg, addr)
        assert got[2:] == msg and src == addr, (got, src)
        return got[:2]

    seq = []
    for i, c in enumerate(clients):
        tags = {tag_of(c, f"client {i} #{k}".encode()) for k in range(4)}
        assert len(tags) == 1, f"client {i}'s datagrams went to {tags}"
        seq.append(tags.pop())
    assert seq == [b"A:", b"B:"] * 3, f"sessions went {seq}"
    # again, interleaved now: each session stays on its target
    for i, c in enumerate(clients):
        assert tag_of(c, f"client {i} again".encode()) == seq[i]
    assert len(a.ports()) == 3 and len(b.ports()) == 3
    assert not set(a.ports()) & set(b.ports())
    assert a.count == b.count == 15
    st, ust = stop_udp(ph)
    assert sub(ust, "sessions", "up", "down", "dropped") == \
        {"sessions": 6, "up": 30, "down": 30, "dropped": 0}, ust


# ---------------------------------------------------------------------------------------------
# 11. usage errors


UDP_USAGE_ERRORS = [
    # (arguments, a regex the one line on stderr must match)
    (["udp://127.0.0.1:{p}", "tcp://127.0.0.1:{q}"],
     r"target 'tcp://127\.0\.0\.1:\d+'.*is tcp://, but the listen address is udp://"),
    (["tcp+udp://127.0.0.1:{p}", "udp://127.0.0.1:{q}"],
     r"is udp://, but the listen address is tcp\+udp://"),
    (["udp://127.0.0.1:{p}", "127.0.0.1:{q}", "--max-conns", "10"], r"(is|are) for TCP"),
    (["udp://127.0.0.1:{p}", "127.0.0.1:{q}", "--idle-timeout", "5s"], r"(is|are) for TCP"),
    (["udp://127.0.0.1:{p}", "127.0.0.1:{q}", "--connect-timeout", "5s"], r"(is|are) for TCP"),
    (["127.0.0.1:{p}", "127.0.0.1:{q}", "--udp-timeout", "5s"], r"(is|are) for UDP"),
    (["tcp://127.0.0.1:{p}", "127.0.0.1:{q}", "--max-sessions", "5"], r"(is|are) for UDP"),
    (["udp://127.0.0.1:{p}", "127.0.0.1:{q}", "--udp-timeout", "0"],
     r"--udp-timeout.*must be more than 0"),
    (["udp://127.0.0.1:{p}", "127.0.0.1:{q}", "--max-sessions", "0"], r"--max-sessions '0'"),
]


@pytest.mark.parametrize("args,reason", UDP_USAGE_ERRORS,
                         ids=[" ".join(a) for a, _ in UDP_USAGE_ERRORS])
def test_udp_usage_error(args, reason):
    p, q = free_udp_port(), free_udp_port()
    r = run_pinhole("forward", *[a.format(p=p, q=q) for a in args], timeout=5)
    assert r.returncode == 2, f"exit {r.returncode}, stderr {r.stderr!r}"
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got {r.stderr!r}"
    assert lines[0].startswith("pinhole: "), lines[0]
    assert re.search(reason, lines[0]), f"/{reason}/ not in {lines[0]!r}"
