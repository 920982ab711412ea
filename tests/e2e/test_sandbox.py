"""
Least privilege: once set up, every long-running verb has no new privileges and a seccomp
filter, on every thread; a call outside the filter (execve) fails with EPERM and the
process keeps serving. Reload still works under the filter: it re-reads FILE and a --users
file, binds a new listener and resolves a target by name (c-ares).

The proof that a forbidden call is refused is a debug hook of non-release builds:
PINHOLE_DEBUG_EXEC=1 makes the main thread, once sandboxed, and each worker thread try
execve("/bin/true") and log what came of it. Without the filter (--no-sandbox) the execve
works: pinhole becomes /bin/true and exits 0.

    test ── tcp ──> pinhole (forward, socks, server + expose, run FILE) ── tcp ──> echo
                    all on 127.0.0.1
"""

import os
import re
import signal
import socket

from conftest import connect, echo_once, recv_until_eof, run_pinhole, wait_listening

REFUSED = r"^debug: {who}: execve /bin/true refused: Operation not permitted$"
DEBUG_ENV = {**os.environ, "PINHOLE_DEBUG_EXEC": "1"}


def echo_and_end(c, msg):
    """msg comes back through c, then a FIN each way: the echo server sees a clean end."""
    try:
        assert echo_once(c, msg) == msg
        c.shutdown(socket.SHUT_WR)
        assert recv_until_eof(c) == b""
    finally:
        c.close()


def proc_status(pid):
    """{field: value} of /proc/PID/status for each of the process's threads."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = {}
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                fields[k] = v.strip()
        out.append(fields)
    return out


def assert_sandboxed(p, threads):
    """Every thread of p (at least threads of them) runs with no_new_privs and a filter."""
    st = proc_status(p.pid)
    assert len(st) >= threads, st
    for t in st:
        assert t["NoNewPrivs"] == "1", f"{t['Name']}: NoNewPrivs {t['NoNewPrivs']}\n{p.log}"
        assert t["Seccomp"] == "2", f"{t['Name']}: Seccomp {t['Seccomp']}\n{p.log}"


def test_execve_refused_on_every_thread(pinhole, echo_server, free_port):
    srv = echo_server()
    port = free_port()
    p = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--workers", "2",
                "--control", "none", env=DEBUG_ENV)
    p.wait_log(REFUSED.format(who="main"))
    p.wait_log(REFUSED.format(who="worker"), count=2)
    assert_sandboxed(p, threads=3)
    # still serving, by splice, under the filter
    echo_and_end(connect("127.0.0.1", port), b"x" * 100000)
    assert p.stop() == 0


def test_no_sandbox_lets_execve_through(pinhole, echo_server, free_port):
    """The escape hatch, and the proof the test above can fail: with --no-sandbox the
    hook's execve succeeds and the process becomes /bin/true (exit 0, nothing refused)."""
    srv = echo_server()
    p = pinhole("--no-sandbox", "forward", f"127.0.0.1:{free_port()}",
                f"127.0.0.1:{srv.port}", "--workers", "1", "--control", "none",
                env=DEBUG_ENV, ready=False)
    assert p.wait_exit() == 0, p.log
    assert "refused" not in p.log, p.log
    assert "unknown option" not in p.log, p.log


def test_socks_sandboxed(pinhole, echo_server, free_port):
    srv = echo_server()
    port = free_port()
    p = pinhole("socks", f"127.0.0.1:{port}", "--workers", "1", "--control", "none",
                env=DEBUG_ENV)
    p.wait_log(REFUSED.format(who="worker"))
    assert_sandboxed(p, threads=2)
    # a SOCKS5 CONNECT through it (no auth, IPv4 target)
    c = connect("127.0.0.1", port)
    try:
        c.sendall(b"\x05\x01\x00")
        assert c.recv(2) == b"\x05\x00"
        c.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") +
                  srv.port.to_bytes(2, "big"))
        rep = b""
        while len(rep) < 10:
            d = c.recv(10 - len(rep))
            assert d, rep
            rep += d
        assert rep[1] == 0, rep
    except BaseException:
        c.close()
        raise
    echo_and_end(c, b"through socks")
    assert p.stop() == 0


def test_relay_and_client_sandboxed(pinhole, echo_server, free_port, tmp_path):
    """server and expose: TLS 1.3, key checks, a visitor carried to the local service."""
    keys = {}
    for name in ("relay", "alice"):
        r = run_pinhole("keygen", "-f", tmp_path / name, "-C", name)
        assert r.returncode == 0, r.stderr
        keys[name] = r.stdout.strip()
    auth = tmp_path / "authorized_keys"
    auth.write_text(keys["alice"] + "\n")
    auth.chmod(0o600)
    rport, pub = free_port(), free_port()
    srv = echo_server()
    relay = pinhole("server", f"127.0.0.1:{rport}", "--key", tmp_path / "relay",
                    "--authorized-keys", auth, "--bind", "127.0.0.1", "--ports",
                    f"{pub}-{pub}", "--control", "none", env=DEBUG_ENV, ready=False)
    relay.wait_log(REFUSED.format(who="main"))
    wait_listening(rport, proc=relay.proc)
    client = pinhole("expose", f"127.0.0.1:{srv.port}", "--via", f"127.0.0.1:{rport}", "--key",
                     tmp_path / "alice", "--known-relays", tmp_path / "known_relays",
                     "--control", "none", env=DEBUG_ENV, ready=False)
    client.wait_log(REFUSED.format(who="main"))
    client.wait_log(r": public at ", timeout=10)
    assert_sandboxed(relay, threads=1)
    assert_sandboxed(client, threads=1)
    echo_and_end(connect("127.0.0.1", pub), b"visitor" * 1000)
    # the pin was stored under the filter (open, write, rename of known_relays)
    assert (tmp_path / "known_relays").exists()
    assert client.stop() == 0
    assert relay.stop() == 0


def test_reload_under_the_filter(pinhole, echo_server, free_port, tmp_path):
    """SIGHUP and `pinhole reload` under the filter: FILE and a --users file re-read, a new
    listener bound, a target resolved by name."""
    srv = echo_server()
    a, b, s = free_port(), free_port(), free_port()
    ctl = str(tmp_path / "ctl.sock")
    conf = tmp_path / "p.conf"
    users = tmp_path / "users"
    users.write_text("ann:one\n")
    users.chmod(0o600)
    conf.write_text(f"forward 127.0.0.1:{a} 127.0.0.1:{srv.port}\n")
    p = pinhole("run", conf, "--workers", "2", "--control", ctl, env=DEBUG_ENV, ready=False)
    p.wait_log(r"forwarding tcp ")
    p.wait_log(REFUSED.format(who="worker"), count=2)

    conf.write_text(f"forward 127.0.0.1:{a} 127.0.0.1:{srv.port}\n"
                    f"forward 127.0.0.1:{b} localhost:{srv.port}\n")
    p.send_signal(signal.SIGHUP)
    p.wait_log(r"^reloaded ")
    wait_listening(b, proc=p.proc)
    for port in (a, b):  # b's target is a name: c-ares reads hosts under the filter
        echo_and_end(connect("127.0.0.1", port), b"hello")

    conf.write_text(f"forward 127.0.0.1:{b} localhost:{srv.port}\n"
                    f"socks 127.0.0.1:{s} --users {users}\n")
    r = run_pinhole("reload", "--control", ctl)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^reloaded ", r.stdout, re.M), r.stdout
    wait_listening(s, proc=p.proc)
    c = connect("127.0.0.1", s)
    try:
        c.sendall(b"\x05\x01\x02")
        assert c.recv(2) == b"\x05\x02"
        c.sendall(b"\x01\x03ann\x03one")
        assert c.recv(2) == b"\x01\x00"
    finally:
        c.close()
    r = run_pinhole("status", "--control", ctl)
    assert r.returncode == 0, r.stderr
    assert p.stop() == 0
