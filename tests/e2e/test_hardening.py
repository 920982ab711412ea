"""
Hardening: the relay and forward as an attacker on loopback would try them, each test the
reproduction of a defect found in review ("Hardening" issue) that fails on the code before
its fix.

    visitors, floods        pinhole server 127.0.0.1:R  <==== TLS ====  pinhole expose
    (no key needed)   --->  public ports 127.0.0.1:PUB                  --> a local service
                            (under prlimit --nofile=48)

    clients (600 idle) ---> pinhole forward :L (prlimit --nofile=1000) --> a TCP server

The relay fixtures (keys, start_relay, start_expose...) are test_tunnel.py's. Every load
loop is bounded in count and time; readiness is polled, never slept for.
"""

import os
import re
import socket
import ssl
import subprocess
import time

import pytest

from conftest import (READY_TIMEOUT_S, alloc_port, connect, connect_outcome, echo_once, run_pinhole,
                      wait_listening, wait_not_listening, wait_until)
from test_tunnel import (bob_cert, echo, echo_check, keygen, keys, port_range, procs,  # noqa: F401
                         start_expose, start_relay, status_json, wait_public)


def cpu_seconds(pid):
    """User + system CPU time of process pid, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def holder(conn, peer):
    """A local service that holds each connection open until the other side closes it."""
    try:
        while conn.recv(4096):
            pass
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# 1. the accept storm: EMFILE on a relay listener pauses it instead of spinning


def test_relay_accept_storm_under_fd_limit_stays_quiet(pinhole, procs, tmp_path, keys,
                                                       echo_server):
    srv = echo_server(handler=holder)
    port = alloc_port()
    lo, hi = port_range(4)
    authf = tmp_path / "authorized_keys"
    authf.write_text(keys.alice.line + "\n")
    relay = pinhole("server", f"127.0.0.1:{port}", "--key", keys.relay.path,
                    "--authorized-keys", authf, "--bind", "127.0.0.1", "--ports", f"{lo}-{hi}",
                    "--control", "none", "--drain-timeout", "1s", ready=False,
                    prefix=("prlimit", "--nofile=48:48"))
    relay.wait_log(r"^relay on ", timeout=READY_TIMEOUT_S)
    x = start_expose(procs, tmp_path, keys, port, f"127.0.0.1:{srv.port}")
    pub = wait_public(x)
    visitors = []
    try:
        # far more visitors than the relay has fds: each one it accepts holds one
        for _ in range(100):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", pub))
            visitors.append(s)
        wait_until(lambda: any("cannot accept" in m or "new connections wait" in m
                               for m in relay.messages()), 10, "the relay to run out of fds")
        before, lines_before = cpu_seconds(relay.pid), len(relay.log.splitlines())
        t0 = time.monotonic()
        time.sleep(3)  # the measurement window: the relay must be idle in it, not spin
        cpu = cpu_seconds(relay.pid) - before
        lines = len(relay.log.splitlines()) - lines_before
        wall = time.monotonic() - t0
        assert cpu < 0.05 * wall, f"the relay used {cpu:.2f} CPU-s in {wall:.1f} s"
        assert lines <= 3, f"{lines} log lines in {wall:.1f} s:\n" + relay.log[-2000:]
    finally:
        for s in visitors:
            s.close()
    # once the visitors are gone, the relay serves again
    wait_until(lambda: outcome_ok(pub), 15, "the relay to serve again")


def outcome_ok(port):
    try:
        echo_check_hold(port)
        return True
    except OSError:
        return False


def echo_check_hold(port):
    """A visitor that the holder keeps: connected and not reset within a moment."""
    c = connect("127.0.0.1", port)
    try:
        c.sendall(b"x")
        c.settimeout(0.3)
        try:
            if c.recv(1) == b"":
                raise ConnectionResetError("closed")
        except socket.timeout:
            pass
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# 3. key limits


def test_key_with_names_and_ports_can_register(procs, tmp_path, keys, echo_server):
    """The example of docs/PROTOCOL.md: names= and ports= on one key."""
    srv = echo_server(handler=echo)
    lo, hi = port_range(4)
    relay = start_relay(procs, tmp_path, keys, ports=(lo, hi),
                        auth=[f"names=web,ports={lo}-{hi} {keys.alice.line}"])
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                     "--name", "web")
    pub = wait_public(x)
    assert lo <= pub <= hi
    echo_check(pub)
    y = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                     "--name", "web", "--port", str(hi))
    assert wait_public(y) == hi
    echo_check(hi)


def test_key_ports_stay_inside_relay_ports(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    lo, hi = port_range(4)
    outside = alloc_port()
    relay = start_relay(procs, tmp_path, keys, ports=(lo, hi),
                        auth=[f"ports={outside}|{lo}-{hi} {keys.alice.line}"])
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                     "--port", str(outside))
    x.expect_rc = 1  # refused for good: the client ends
    x.wait_exit(timeout=10)
    assert f"outside the relay's --ports {lo}-{hi}" in x.log, x.log
    assert not listening_on(outside)


@pytest.mark.skipif(os.geteuid() != 0, reason="a privileged port can be bound by root only")
def test_privileged_port_needs_the_key_to_name_it(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    # a relay without --ports: any port, but not a privileged one
    port = alloc_port()
    authf = tmp_path / "ak-priv"
    authf.write_text(keys.alice.line + "\n")
    r2 = procs("server", f"127.0.0.1:{port}", "--key", keys.relay.path, "--authorized-keys",
               authf, "--bind", "127.0.0.1", "--control", "none", "--drain-timeout", "1s")
    r2.wait_log(r"^relay on ", timeout=READY_TIMEOUT_S)
    x = start_expose(procs, tmp_path, keys, port, f"127.0.0.1:{srv.port}", "--port", "81")
    x.expect_rc = 1
    x.wait_exit(timeout=10)
    assert "port 81 is privileged" in x.log, x.log
    assert not listening_on(81)


def listening_on(port):
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    return any(re.search(rf":{port}\s", ln) for ln in out.splitlines())


def take_range(n):
    """n consecutive ports, each held by a listener of ours: (lo, hi, sockets). Another
    program may take one between the check and the bind: then another range."""
    for _ in range(10):
        lo, hi = port_range(n)
        taken = []
        try:
            for p in range(lo, hi + 1):
                s = socket.socket()
                taken.append(s)
                s.bind(("127.0.0.1", p))
                s.listen(1)
            return lo, hi, taken
        except OSError:
            for s in taken:
                s.close()
    pytest.fail(f"no {n} consecutive ports could be held")


def test_port_zero_in_a_full_range_tries_few_binds(procs, tmp_path, keys, echo_server):
    """A REGISTER for any port of a range that is all taken: a bounded number of binds, not
    one per port of the range each time."""
    if subprocess.run(["which", "strace"], capture_output=True).returncode != 0:
        pytest.skip("strace is not installed (scripts/deps.sh test installs it)")
    srv = echo_server(handler=echo)
    lo, hi, taken = take_range(200)
    try:
        port = alloc_port()
        authf = tmp_path / "ak-full"
        authf.write_text(keys.alice.line + "\n")
        trace = tmp_path / "binds.trace"
        r = procs("server", f"127.0.0.1:{port}", "--key", keys.relay.path, "--authorized-keys",
                  authf, "--bind", "127.0.0.1", "--ports", f"{lo}-{hi}", "--control", "none",
                  "--drain-timeout", "1s")
        r.wait_log(r"^relay on ", timeout=READY_TIMEOUT_S)
        tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=bind", "-o", str(trace),
                                   "-p", str(r.pid)], stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: trace.exists(), 5, "strace to attach")
            time.sleep(0.5)  # strace gives no sign once it is attached
            x = start_expose(procs, tmp_path, keys, port, f"127.0.0.1:{srv.port}")
            x.wait_log(r"no free port left", timeout=10)
        finally:
            tracer.terminate()
            tracer.wait(timeout=5)
        binds = [ln for ln in trace.read_text().splitlines() if "bind(" in ln]
        assert len(binds) <= 70, f"{len(binds)} binds for one REGISTER"
    finally:
        for s in taken:
            s.close()


def test_sessions_per_key_limit(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys, auth=[f"sessions=1 {keys.alice.line}"])
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}")
    wait_public(x)
    y = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                     known=tmp_path / "known2")
    relay.proc.wait_log(r"refused: the key holds 1 sessions already \(sessions=1\)", timeout=10)
    y.wait_log(r"raise sessions=", timeout=10)
    assert len(status_json(relay.ctl)["relay"]["sessions"]) == 1


def test_expose_max_conns_caps_visitors(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                     "--max-conns", "2")
    pub = wait_public(x)
    a, b = connect("127.0.0.1", pub), connect("127.0.0.1", pub)
    try:
        echo_once(a, b"a\n")
        echo_once(b, b"b\n")
        end, _ = connect_outcome(pub)
        assert end in ("reset", "eof"), "a third visitor got through --max-conns 2"
        # counted, and logged as a count with the next report (one line per 10 s)
        assert status_json(relay.ctl)["relay"]["services"][0]["refused"] == 1
    finally:
        a.close()
    wait_until(lambda: status_json(relay.ctl)["relay"]["services"][0]["live"] <= 1, 5,
               "the first visitor's slot to be free")
    echo_check(pub)
    b.close()


# ---------------------------------------------------------------------------------------------
# 4. revocation: a reload ends the sessions of removed keys and nothing else


def test_reload_revokes_removed_keys_only(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys, auth=[keys.alice.line, keys.bob.line])
    xa = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}")
    xb = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                      key=keys.bob, known=tmp_path / "known_bob")
    pa, pb = wait_public(xa), wait_public(xb)
    live = connect("127.0.0.1", pa)  # alice's visitor stays connected through the reload
    echo_once(live, b"before\n")
    relay.auth.write_text(keys.alice.line + "\n")
    r = run_pinhole("reload", "--control", relay.ctl)
    assert r.returncode == 0, r.stderr
    assert "1 session ended" in r.stdout + r.stderr, r.stdout + r.stderr
    xb.wait_log(r"removed from the relay's authorized keys", timeout=10)
    wait_not_listening(pb, timeout=10)
    echo_once(live, b"after\n")
    live.close()
    echo_check(pa)
    sessions = status_json(relay.ctl)["relay"]["sessions"]
    assert [s["comment"] for s in sessions] == ["alice"]


def test_sighup_reloads_keys_of_a_command_line_relay(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys, auth=[keys.alice.line, keys.bob.line])
    xb = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                      key=keys.bob, known=tmp_path / "known_bob")
    pb = wait_public(xb)
    relay.auth.write_text(keys.alice.line + "\n")
    relay.proc.send_signal(1)
    xb.wait_log(r"removed from the relay's authorized keys", timeout=10)
    wait_not_listening(pb, timeout=10)


def test_reload_with_a_broken_keys_file_changes_nothing(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}")
    pub = wait_public(x)
    relay.auth.write_text("bogus line\n")
    r = run_pinhole("reload", "--control", relay.ctl)
    assert "the keys in use stay" in r.stdout + r.stderr
    echo_check(pub)


# ---------------------------------------------------------------------------------------------
# 7. a handshake that is almost done survives a flood of silent connections


def test_handshake_in_progress_survives_a_flood(procs, tmp_path, keys, echo_server, bob_cert):
    srv = echo_server(handler=echo)
    # -v: each eviction is its own line at once (the default level counts them)
    relay = start_relay(procs, tmp_path, keys, auth=[keys.alice.line, keys.bob.line],
                        verbose=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(bob_cert, keys.bob.path)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out)
    sock = connect("127.0.0.1", relay.port)
    flood = []
    try:
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        sock.sendall(out.read())  # the ClientHello: the relay answers with its flight
        sock.settimeout(5)
        data = sock.recv(65536)
        assert data, "the relay closed before its ServerHello"
        inc.write(data)
        # 104 silent connections, 8 from each of 13 loopback addresses (the share of one
        # address), more than the 64 slots
        for i in range(104):
            s = socket.socket()
            s.bind((f"127.0.1.{2 + i // 8}", 0))
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", relay.port))
            flood.append(s)
        relay.proc.wait_log(r"no TLS handshake yet", timeout=20)  # 20: a loaded CI machine
        # now finish: the relay must still hold this handshake
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending = out.read()
                if pending:
                    sock.sendall(pending)
                more = sock.recv(65536)
                assert more, "the relay dropped the handshake in progress"
                inc.write(more)
        pending = out.read()
        if pending:
            sock.sendall(pending)
        assert tls.version() == "TLSv1.3"
        relay.proc.wait_log(r"client 127\.0\.0\.1:\d+: key " + re.escape(keys.bob.fp),
                            timeout=20)
    finally:
        for s in flood:
            s.close()
        sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a network namespace")
def test_pending_handshakes_count_per_ipv6_64(tmp_path, keys):
    """Eight silent connections from one /64 fill its share; a ninth from another address of
    the same /64 is closed at once (an IPv6 host has 2^64 addresses to pick from)."""
    ns = f"phh{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        ex = ["ip", "netns", "exec", ns]
        subprocess.run(ex + ["ip", "link", "set", "lo", "up"], check=True)
        for i in range(1, 11):
            subprocess.run(ex + ["ip", "-6", "addr", "add", f"fd00:1::{i}/64", "dev", "lo",
                                 "nodad"], check=True)
        authf = tmp_path / "ak"
        authf.write_text(keys.alice.line + "\n")
        log = open(tmp_path / "relay.log", "wb")
        proc = subprocess.Popen(ex + [os.environ.get("PINHOLE_BIN", "build/pinhole"), "server",
                                      "[fd00:1::1]:7835", "--key", keys.relay.path,
                                      "--authorized-keys", str(authf), "--control", "none",
                                      "--drain-timeout", "1s"], stdout=log, stderr=log)
        client = f"""
import socket, sys, time
socks = []
for i in range(2, 11):
    s = socket.socket(socket.AF_INET6)
    s.bind(("fd00:1::%d" % i, 0))
    for _ in range(200):
        try:
            s.connect(("fd00:1::1", 7835)); break
        except ConnectionRefusedError:
            time.sleep(0.05); s.close(); s = socket.socket(socket.AF_INET6); s.bind(("fd00:1::%d" % i, 0))
    socks.append(s)
    time.sleep(0.05)
time.sleep(0.5)
res = []
for s in socks:
    s.settimeout(0.5)
    try:
        d = s.recv(1)
        res.append("closed" if d == b"" else "data")
    except socket.timeout:
        res.append("open")
    except ConnectionResetError:
        res.append("closed")
print(" ".join(res))
"""
        r = subprocess.run(ex + ["/usr/bin/python3", "-c", client], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        res = r.stdout.split()
        assert res[:8] == ["open"] * 8, res
        assert res[8] == "closed", f"a ninth handshake from the same /64 was let in: {res}"
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns])


# ---------------------------------------------------------------------------------------------
# 9. at the fd limit, working connections keep working and no healthy target is blamed


def test_forward_at_the_fd_limit_keeps_connections_and_targets(pinhole, echo_server):
    srv = echo_server()
    port = alloc_port()
    fwd = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--workers", "1",
                  prefix=("prlimit", "--nofile=1000:1000"))
    clients = []
    try:
        first = connect("127.0.0.1", port)
        echo_once(first, b"hello\n")
        for _ in range(600):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            clients.append(s)
        wait_until(lambda: any("new connections wait" in m for m in fwd.messages()), 15,
                   "forward to stop accepting at its fd budget")
        # the established connection is not reset, and works
        echo_once(first, b"still here\n")
        first.close()
    finally:
        for s in clients:
            s.close()
    wait_until(lambda: fwd_serves(port), 15, "forward to serve again")
    log = fwd.log
    assert "Too many open files" not in log, log[-3000:]
    assert "skipped for" not in log, log[-3000:]


def fwd_serves(port):
    try:
        c = connect("127.0.0.1", port)
        try:
            echo_once(c, b"again\n")
        finally:
            c.close()
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# found by the soak: a refused key's handshake must not end another client's session


def test_unknown_key_does_not_end_other_sessions(procs, tmp_path, keys, echo_server):
    """Each refused TLS handshake left OpenSSL's (per-thread) error queue full, and the
    next SSL call of a working session on the same loop read it as its own fatal error."""
    if subprocess.run(["which", "openssl"], capture_output=True).returncode != 0:
        pytest.skip("openssl is not installed")
    cert = tmp_path / "mallory.crt"
    r = subprocess.run(["openssl", "req", "-new", "-x509", "-key", keys.mallory.path, "-subj",
                        "/CN=x", "-days", "1", "-out", str(cert)], capture_output=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}")
    pub = wait_public(x)
    live = connect("127.0.0.1", pub)
    echo_once(live, b"before\n")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(cert), keys.mallory.path)
    for i in range(5):
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as raw:
            try:
                with ctx.wrap_socket(raw) as t:
                    t.sendall(b"x")
                    t.recv(1)  # the relay's alert or close
            except (ssl.SSLError, OSError):
                pass
        echo_once(live, f"during {i}\n".encode())  # the working stream goes on
    live.close()
    echo_check(pub)
    assert not any("session ended" in m or "verify failed" in m for m in x.messages()), x.log
    assert len(status_json(relay.ctl)["relay"]["sessions"]) == 1
