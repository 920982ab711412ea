"""
`pinhole local` and `pinhole socks --via`: streams a client opens through the relay - to a
private service another client offers (`expose --private`), or to HOST:PORT that the relay
connects to - between real peers (OpenSSH, curl, proxychains4, python), and the relay's
grants (authorized_keys reach= and connect=) with the words a refusal carries.

On loopback:

    ssh, curl, python ---> pinhole local 127.0.0.1:L NAME|HOST:PORT ==+
    raw SOCKS5, HTTP  ---> pinhole socks 127.0.0.1:S --via R =========+ TLS 1.3 sessions
                                                                      v
                      pinhole server 127.0.0.1:R  (authorized_keys: reach=, connect=)
                        | NAME: a stream on the exposer's session ===> pinhole expose
                        |                                   LOCAL --name NAME --private
                        +-- HOST:PORT: the relay connects --> sshd, echo, http.server

In three network namespaces a fixture makes (root; the names carry the pid), where only the
relay reaches the web server:

    phlc-PID: the client          phlr-PID: the relay                  phlw-PID: a web host
    curl, proxychains4            pinhole server 10.231.0.2:7835       http.server
    pinhole socks 127.0.0.1:1080  r0 10.231.0.2/24                     w0 10.232.0.2/24 :8080
    pinhole local                 r1 10.232.0.1/24 ------------------- w0
    c0 10.231.0.1/24 ------------ r0   (no forwarding: phlc has no way to 10.232.0.0/24)
                                  lo: http.server 127.0.0.1:8081
                                  /etc/hosts, /etc/resolv.conf (ip netns exec's, from
                                  /etc/netns/phlr-PID/): web.relay.test -> 10.232.0.2, a
                                  name only the relay knows; DNS: its own 127.0.0.1

Keys are test_tunnel.py's (relay, alice, bob); each process has its --key, --known-relays and
--control under tmp_path. Readiness is a log line ("session up", "private on relay") and
`ss`, never a sleep; every wait and load loop is bounded. Tests with "slow" in their name
move 64 MiB each way.
"""

import hashlib
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import (CMD_BIND, CMD_CONNECT, CMD_UDP, READY_TIMEOUT_S, SOCK_TIMEOUT_S, alloc_port,
                      connect, connect_outcome, echo_once, listeners, many_echo, read_http_head,
                      recv_exact, recv_until_eof, run_peer, run_pinhole, send_in_thread, sha256,
                      socks4_request, socks5_connect, socks5_open, tagged_echo_handler,
                      wait_listening, wait_until)
from test_metrics import fetch
from test_tunnel import (MiB, SSHD_CONFIG, echo, keys, lenient, procs,  # noqa: F401
                         start_expose, start_relay, status_json)

PRIVATE_RE = r"^expose (\S+) ([A-Za-z0-9._-]+): private on relay (\S+)$"


# ---------------------------------------------------------------------------------------------
# helpers


def comment(key):
    """The comment of a test_tunnel Key (the last word of its public line): what the relay
    calls the key in its lines and its refusals."""
    return key.line.split()[-1]


def grant(key, *opts):
    """An authorized_keys line for key with the options (reach=..., connect=...)."""
    return f"{','.join(opts)} {key.line}" if opts else key.line


def client_args(relay_host, relay_port, key, known):
    return ["--via", f"{relay_host}:{relay_port}", "--key", key.path, "--known-relays", known]


def wait_session(p, relay, timeout=READY_TIMEOUT_S):
    """Waits for client p's "relay R: session up" (the relay took its key)."""
    p.wait_log(rf"^relay {re.escape(relay)}: session up$", timeout=timeout)


def start_private(procs, tmp_path, keys, relay, local, name, key):
    """`pinhole expose LOCAL --name NAME --private` with key, registered (both ends said so)."""
    x = start_expose(procs, tmp_path, keys, relay.port, local, "--name", name, "--private",
                     key=key)
    x.wait_log(rf"^expose {re.escape(local)} {re.escape(name)}: private on relay "
               rf"127\.0\.0\.1:{relay.port}$", timeout=READY_TIMEOUT_S)
    relay.proc.wait_log(rf"\({re.escape(comment(key))}\): offers private service '{name}'$")
    return x


def start_local(procs, tmp_path, relay, *words, key, control="none"):
    """`pinhole local WORDS --via 127.0.0.1:R` with key, its session up and its listener
    open. The listen port is the first word's when two are given, else the target's."""
    p = procs("local", *words, *client_args("127.0.0.1", relay.port, key,
                                            tmp_path / "known_relays"),
              "--control", control, "--drain-timeout", "2s")
    wait_session(p, f"127.0.0.1:{relay.port}")
    wait_listening(int(words[0].rsplit(":", 1)[1]), proc=p.proc)
    return p


def refused_line(rule, text):
    """The client's warning when the relay refused a stream of rule ("local LISTEN TARGET")."""
    return rf"^{re.escape(rule)}: the relay refused: {re.escape(text)}$"


def refused_with(client, port, rule_target, words, timeout=5):
    """Connects to client's `local 127.0.0.1:PORT TARGET` until the relay's refusal (a reset)
    is logged with words: its warnings are a line a second per rule, so a second refusal of
    a rule within the same second is counted, not said. Each attempt must end in a reset."""
    rx = re.compile(refused_line(f"local 127.0.0.1:{port} {rule_target}", words))
    before = sum(1 for m in client.messages() if rx.search(m))

    def said():
        end, took = connect_outcome(port)
        assert end == "reset" and took < 3, f"local {port}: {end} after {took:.1f} s"
        return sum(1 for m in client.messages() if rx.search(m)) > before

    wait_until(said, timeout, f"'{words}' in the log:\n{client.log}", interval=0.2)


def session_peers(relay):
    return sorted(s["peer"] for s in relay.status()["relay"]["sessions"])


def sessions_of(relay, key):
    return [s for s in relay.status()["relay"]["sessions"] if s["key"] == key.fp]


def echo_through(port, tag=b"", msg=None):
    """One connection through port: its bytes come back, after tag (a tagged echo server)."""
    msg = msg or f"through {port}: {os.urandom(6).hex()}\n".encode()
    c = connect("127.0.0.1", port)
    try:
        c.sendall(msg)
        got = recv_exact(c, len(tag) + len(msg))
    finally:
        c.close()
    assert got == tag + msg, f"through {port}: {got!r}"


class Chatter:
    """A long-lived stream kept busy from a thread: a message every 20 ms and its echo
    checked, until stop(); .rounds counts the echoes, .error keeps what went wrong."""

    def __init__(self, port):
        self.sock = connect("127.0.0.1", port)
        self.rounds = 0
        self.error = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while not self.stopping.is_set():
                msg = f"round {self.rounds};".encode() * 40
                self.sock.sendall(msg)
                got = recv_exact(self.sock, len(msg))
                assert got == msg, f"round {self.rounds}: other bytes came back"
                self.rounds += 1
                self.stopping.wait(0.02)
        except BaseException as e:  # reported by stop()
            self.error = e

    def wait_rounds(self, n, what):
        start = self.rounds
        wait_until(lambda: self.rounds >= start + n or self.error, 10, what)
        assert self.error is None, f"the long-lived stream broke: {self.error!r}"

    def stop(self):
        self.stopping.set()
        self.thread.join(SOCK_TIMEOUT_S)
        assert not self.thread.is_alive(), "the long-lived stream's thread hangs"
        assert self.error is None, f"the long-lived stream broke: {self.error!r}"
        echo_once(self.sock, b"still there after everything\n")
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# 1. OpenSSH through `local` to a private service


def need_openssh():
    if os.geteuid() != 0:
        pytest.skip("sshd must run as root to log a user in (run the suite as root)")
    for tool in ("/usr/sbin/sshd", shutil.which("ssh"), shutil.which("ssh-keygen")):
        if tool is None or not os.access(tool, os.X_OK):
            pytest.skip("OpenSSH is not installed (openssh-server, openssh-client)")


def start_sshd(spawn, d):
    """A throwaway sshd on 127.0.0.1 (host key and one user key in d); returns its port."""
    d.mkdir()
    for key in ("ssh_host_ed25519_key", "id"):
        r = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f",
                            str(d / key)], capture_output=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
    (d / "authorized_keys").write_bytes((d / "id.pub").read_bytes())
    port = alloc_port()
    (d / "sshd_config").write_text(SSHD_CONFIG.format(port=port, d=d))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    r = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(d / "sshd_config")],
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"sshd -t: {r.stderr.decode(errors='replace')}"
    spawn(["/usr/sbin/sshd", "-D", "-f", str(d / "sshd_config"), "-e"], port=port)
    return port


def test_ssh_through_local_to_a_private_service(procs, tmp_path, keys, spawn):
    """bob offers his sshd as the private service 'ssh' (no public port); alice, granted
    reach=ssh, runs `local 127.0.0.1:P ssh` and logs in with ssh -p P, the host key checked
    against the sshd's own."""
    need_openssh()
    d = tmp_path / "ssh"
    sshd_port = start_sshd(spawn, d)
    relay = start_relay(procs, tmp_path, keys,
                        auth=[keys.bob.line, grant(keys.alice, "reach=ssh")])
    start_private(procs, tmp_path, keys, relay, f"127.0.0.1:{sshd_port}", "ssh", keys.bob)
    assert not any(listeners(p) for p in range(relay.lo, relay.hi + 1)), \
        "a private service got a public port"
    lp = alloc_port()
    start_local(procs, tmp_path, relay, f"127.0.0.1:{lp}", "ssh", key=keys.alice)

    (d / "known_hosts").write_text(
        f"[127.0.0.1]:{lp} {(d / 'ssh_host_ed25519_key.pub').read_text()}")
    ssh = ["ssh", "-F", "/dev/null", "-p", str(lp), "-i", str(d / "id"), "-o", "BatchMode=yes",
           "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={d / 'known_hosts'}",
           "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "root@127.0.0.1"]
    r = run_peer([*ssh, "echo", "hello"], timeout=30)
    assert r.stdout == b"hello\n", r
    # sshd saw the exposer's connection to its own port, not the ssh client's to P
    r = run_peer([*ssh, "echo $SSH_CONNECTION"], timeout=30)
    assert re.fullmatch(rf"127\.0\.0\.1 \d+ 127\.0\.0\.1 {sshd_port}\n", r.stdout.decode()), r
    # bytes both ways inside ssh: 2 MiB up (its digest comes back), 1 MiB of zeros down
    data = os.urandom(2 * MiB)
    r = run_peer([*ssh, "sha256sum; head -c 1048576 /dev/zero"], input=data, timeout=30)
    assert r.stdout[:64].decode() == sha256(data), r.stdout[:100]
    assert r.stdout.endswith(b"\0" * MiB) and len(r.stdout) == 64 + len("  -\n") + MiB

    st = relay.status()["relay"]
    assert [(s["proto"], s["port"], s["name"], s["held"]) for s in st["services"]] == \
        [("tcp", 0, "ssh", False)], st["services"]
    assert st["services"][0]["visitors"] == 3, st["services"]
    alice = [s for s in st["sessions"] if s["key"] == keys.alice.fp]
    assert len(alice) == 1 and alice[0]["streams_total"] == 3, st["sessions"]


# ---------------------------------------------------------------------------------------------
# 2. 64 MiB each way, by hash


@pytest.mark.parametrize("target", ["private", "hostport"])
def test_64mib_each_way_slow(procs, tmp_path, keys, tcp_server, target):
    """64 MiB up and 64 MiB down at once through one `local` stream, to a private service
    (relay -> bob's session -> the service) and to HOST:PORT (the relay connects), each
    side checking the other's bytes by sha256."""
    size = 64 * MiB
    down, up = os.urandom(size), os.urandom(size)
    results = queue.Queue()

    def service(conn, peer):
        t = send_in_thread(conn, down, shut=False)
        got = recv_exact(conn, len(up))
        t.join(SOCK_TIMEOUT_S * 6)
        results.put((len(got), sha256(got), t.error, t.is_alive()))
        conn.sendall(hashlib.sha256(got).digest())  # what came, as the service saw it
        recv_exact(conn, 4)  # the client's "done": it has everything, the service may go

    srv = tcp_server(service)
    lp = alloc_port()
    if target == "private":
        relay = start_relay(procs, tmp_path, keys,
                            auth=[keys.bob.line, grant(keys.alice, "reach=bulk")])
        start_private(procs, tmp_path, keys, relay, f"127.0.0.1:{srv.port}", "bulk", keys.bob)
        start_local(procs, tmp_path, relay, f"127.0.0.1:{lp}", "bulk", key=keys.alice)
    else:
        relay = start_relay(procs, tmp_path, keys,
                            auth=[grant(keys.alice, f"connect=127.0.0.1:{srv.port}")])
        start_local(procs, tmp_path, relay, f"127.0.0.1:{lp}", f"127.0.0.1:{srv.port}",
                    key=keys.alice)
    c = connect("127.0.0.1", lp)
    t0 = time.monotonic()
    try:
        t = send_in_thread(c, up, shut=False)
        got = recv_exact(c, len(down) + 32)
        t.join(SOCK_TIMEOUT_S * 6)
        elapsed = time.monotonic() - t0
        c.sendall(b"done")
    finally:
        c.close()
    assert t.error is None and not t.is_alive(), t.error
    n, digest, err, alive = results.get(timeout=SOCK_TIMEOUT_S)
    assert err is None and not alive, err
    assert n == len(up) and digest == sha256(up), f"the service got {n} of {len(up)} bytes"
    assert got[len(down):] == hashlib.sha256(up).digest()
    assert sha256(got[:len(down)]) == sha256(down), "the client got other bytes"
    assert srv.accepted == 1
    print(f"{target}: {2 * size / MiB:.0f} MiB in {elapsed:.2f} s "
          f"({2 * size / MiB / elapsed:.0f} MiB/s)")


# ---------------------------------------------------------------------------------------------
# 3. many streams at once


def test_500_concurrent_streams(procs, tmp_path, keys, echo_server):
    """500 connections through `local` to a private echo service, all open at once, each
    its own payload echoed; then every stream is gone on the relay and on both clients."""
    n = 500
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys,
                        auth=[keys.bob.line, grant(keys.alice, "reach=echo")])
    start_private(procs, tmp_path, keys, relay, f"127.0.0.1:{srv.port}", "echo", keys.bob)
    lp = alloc_port()
    ctl = tmp_path / "local.sock"
    start_local(procs, tmp_path, relay, f"127.0.0.1:{lp}", "echo", key=keys.alice,
                control=ctl)
    t0 = time.monotonic()
    replies, errors = many_echo("127.0.0.1", lp, n, timeout=40)
    elapsed = time.monotonic() - t0
    assert not errors, f"{len(errors)} of {n} failed, e.g. {sorted(errors.items())[:5]}"
    assert len(replies) == n
    assert srv.accepted == n
    assert srv.max_live == n, f"only {srv.max_live} connections were open at once"
    print(f"{n} concurrent streams echoed in {elapsed:.2f} s")

    def all_gone():
        st = relay.status()["relay"]
        cs = status_json(ctl)["expose"]
        return all(s["streams"] == 0 for s in st["sessions"]) and \
            st["services"][0]["live"] == 0 and cs[0]["streams"] == 0 and \
            cs[0]["rules"][0]["live"] == 0 and srv.live == 0

    wait_until(all_gone, 15, "every stream to end on the relay and both clients")
    st = relay.status()["relay"]
    assert st["services"][0]["visitors"] == n, st["services"]
    (alice,) = sessions_of(relay, keys.alice)
    assert alice["streams_total"] == n, alice
    cs = status_json(ctl)["expose"]
    assert len(cs) == 1 and cs[0]["up"] and cs[0]["rules"][0]["streams"] == n, cs


# ---------------------------------------------------------------------------------------------
# 4. refusals: each with its reason, the session and its other streams unharmed


def http_connect(port, target):
    """A raw HTTP CONNECT through the proxy at port: (status, body)."""
    s = connect("127.0.0.1", port)
    try:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        status, headers, rest = read_http_head(s)
        n = int(headers.get("content-length", "0"))
        body = rest
        while len(body) < n:
            d = s.recv(n - len(body))
            if not d:
                break
            body += d
    finally:
        s.close()
    return status, body.decode(errors="replace")


def test_refusals_name_their_reason_and_harm_nothing_else(procs, tmp_path, keys, tcp_server):
    """bob offers 'echo' (private) and has no grants; alice may reach 'echo' and connect to
    127.0.0.1:H (written out) and *:A (any host but the relay itself). While a stream of
    alice's to 'echo' - carried by bob's session too - keeps echoing, each refusal resets
    its own connection and the client says why, and the SOCKS5 and HTTP clients of `socks
    --via` get reply 2 and 403 with the relay's words. No session ends, no refused target
    sees a connection."""
    echo_srv = tcp_server(echo)
    h_srv = tcp_server(lenient(tagged_echo_handler(b"H:")))
    a_srv = tcp_server(lenient(tagged_echo_handler(b"A:")))
    x_srv = tcp_server(lenient(tagged_echo_handler(b"X:")))
    h, a, x = h_srv.port, a_srv.port, x_srv.port
    relay = start_relay(procs, tmp_path, keys, auth=[
        keys.bob.line,
        grant(keys.alice, "reach=echo|gone", f"connect=127.0.0.1:{h}|*:{a}")])
    via = " ".join(map(str, client_args("127.0.0.1", relay.port, keys.bob,
                                        tmp_path / "known_relays")))
    ports = {k: alloc_port() for k in ("b_echo", "b_h", "a_echo", "a_db", "a_gone", "a_x",
                                       "a_a", "a_h", "socks")}
    p = ports
    conf = tmp_path / "bob.conf"
    conf.write_text(f"expose 127.0.0.1:{echo_srv.port} {via} --name echo --private\n"
                    f"local 127.0.0.1:{p['b_echo']} echo {via}\n"
                    f"local 127.0.0.1:{p['b_h']} 127.0.0.1:{h} {via}\n")
    bob = procs("run", conf, "--control", tmp_path / "bob.sock", "--drain-timeout", "2s")
    bob.wait_log(PRIVATE_RE, timeout=READY_TIMEOUT_S)
    relay.proc.wait_log(r"\(bob\): offers private service 'echo'$")
    via = via.replace(keys.bob.path, keys.alice.path)
    conf = tmp_path / "alice.conf"
    conf.write_text(f"local 127.0.0.1:{p['a_echo']} echo {via}\n"
                    f"local 127.0.0.1:{p['a_db']} db {via}\n"
                    f"local 127.0.0.1:{p['a_gone']} gone {via}\n"
                    f"local 127.0.0.1:{p['a_x']} 127.0.0.1:{x} {via}\n"
                    f"local 127.0.0.1:{p['a_a']} 127.0.0.1:{a} {via}\n"
                    f"local 127.0.0.1:{p['a_h']} 127.0.0.1:{h} {via}\n"
                    f"socks 127.0.0.1:{p['socks']} {via}\n")
    alice = procs("run", conf, "--control", tmp_path / "alice.sock", "--drain-timeout", "2s")
    wait_session(alice, f"127.0.0.1:{relay.port}")
    for port in p.values():
        wait_listening(port, proc=alice.proc)
    assert len(sessions_of(relay, keys.alice)) == 1 and len(sessions_of(relay, keys.bob)) == 1
    peers = session_peers(relay)

    chat = Chatter(p["a_echo"])  # alice -> relay -> bob's session -> echo, all along
    chat.wait_rounds(5, "the long-lived stream to echo")
    refusals = [  # (client, listen port, rule label, the relay's words)
        (bob, p["b_echo"], "echo",
         "key bob may not reach 'echo'; add reach=echo to its line on the relay"),
        (bob, p["b_h"], f"127.0.0.1:{h}",
         f"key bob may not connect to 127.0.0.1:{h}; add connect=127.0.0.1:{h} to its line "
         "on the relay"),
        (alice, p["a_db"], "db",
         "key alice may not reach 'db'; add reach=db to its line on the relay"),
        (alice, p["a_gone"], "gone", "no private service 'gone' is offered on the relay"),
        (alice, p["a_x"], f"127.0.0.1:{x}",
         f"key alice may not connect to 127.0.0.1:{x}; add connect=127.0.0.1:{x} to its line "
         "on the relay"),
        (alice, p["a_a"], f"127.0.0.1:{a}",
         f"key alice may not connect to 127.0.0.1:{a} (127.0.0.1:{a}): the relay's own "
         "address, only when connect= names it"),
    ]
    for client, port, target, words in refusals:
        end, took = connect_outcome(port)
        assert end == "reset", f"local {port} {target}: the client saw {end}, not a reset"
        assert took < 3, f"local {port} {target}: the reset took {took:.1f} s"
        client.wait_log(refused_line(f"local 127.0.0.1:{port} {target}", words))
        chat.wait_rounds(2, "the long-lived stream to go on echoing")
    # what is granted goes through on the same sessions meanwhile
    echo_through(p["a_h"], b"H:")
    echo_through(p["a_echo"])

    # socks --via: a refused destination is SOCKS5 reply 2, and HTTP 403 with the words
    words = (f"key alice may not connect to 127.0.0.1:{x}; add connect=127.0.0.1:{x} to its "
             "line on the relay")
    s, rep, _ = socks5_open(p["socks"], CMD_CONNECT, "127.0.0.1", x)
    s.close()
    assert rep == 2, f"SOCKS5 CONNECT to a refused destination: reply {rep}, expected 2"
    status, body = http_connect(p["socks"], f"127.0.0.1:{x}")
    assert status == 403 and words in body, (status, body)
    s = connect("127.0.0.1", p["socks"])
    try:
        assert socks4_request(s, "localhost", x) == 91, "SOCKS4a to a refused name"
    finally:
        s.close()
    # BIND is not carried (UDP ASSOCIATE is: test_local_udp.py)
    s, rep, _ = socks5_open(p["socks"], CMD_BIND, "127.0.0.1", x)
    s.close()
    assert rep == 7, f"SOCKS5 BIND through --via: reply {rep}, expected 7"
    # and a granted one answers 0 and carries bytes, the relay's own loopback written out
    s, _ = socks5_connect(p["socks"], "127.0.0.1", h)
    try:
        s.sendall(b"socks via\n")
        assert recv_exact(s, 12) == b"H:socks via\n"
    finally:
        s.close()
    status, body = http_connect(p["socks"], f"127.0.0.1:{a}")
    assert status == 403 and "the relay's own address" in body, (status, body)

    # a rule's warnings: a line a second at most, however many are refused
    rule = f"local 127.0.0.1:{p['a_db']} db"
    before = sum(1 for m in alice.messages() if m.startswith(rule + ": the relay refused"))
    t0 = time.monotonic()
    for _ in range(30):
        assert connect_outcome(p["a_db"])[0] == "reset"
    elapsed = time.monotonic() - t0
    time.sleep(0.2)  # a line still on its way
    more = sum(1 for m in alice.messages() if m.startswith(rule + ": the relay refused")) - before
    assert more <= int(elapsed) + 2, f"{more} lines for 30 refusals in {elapsed:.1f} s"

    chat.wait_rounds(5, "the long-lived stream to keep echoing")
    chat.stop()
    assert session_peers(relay) == peers, "a session ended or was replaced"
    for proc in (relay.proc, alice, bob):
        assert not [m for m in proc.messages() if "session ended" in m or "GOAWAY" in m], \
            proc.log
    assert x_srv.accepted == 0 and a_srv.accepted == 0, "a refused target saw a connection"
    assert h_srv.accepted == 2, h_srv.peers
    st = relay.status()["relay"]
    assert [(v["name"], v["held"]) for v in st["services"]] == [("echo", False)], st


@pytest.mark.parametrize("host,shown", [
    ("0.0.0.0", "0.0.0.0"), ("127.1.2.3", "127.1.2.3"), ("[::1]", "[::1]"), ("[::]", "[::]"),
    ("[::ffff:127.0.0.1]", "[::ffff:127.0.0.1]"), ("[::ffff:7f00:1]", "[::ffff:127.0.0.1]")])
def test_a_star_never_reaches_the_relay_itself(procs, tmp_path, keys, echo_server, host, shown,
                                               ipv6):
    """connect=*:P is any host but the relay: its loopback, its unspecified address (which
    Linux connects to itself) and IPv4-mapped spellings of them are refused, with the words,
    and nothing listening on the relay's loopback sees a connection - through `local` and
    through `socks --via` alike."""
    v4 = echo_server(handler=echo)
    v6 = echo_server(host="::1", port=v4.port, handler=echo)
    relay = start_relay(procs, tmp_path, keys, auth=[grant(keys.alice, f"connect=*:{v4.port}")])
    lp = alloc_port()
    loc = start_local(procs, tmp_path, relay, f"127.0.0.1:{lp}", f"{host}:{v4.port}",
                      key=keys.alice)
    refused_with(loc, lp, f"{host}:{v4.port}",
                 f"key alice may not connect to {host}:{v4.port} ({shown}:{v4.port}): the "
                 "relay's own address, only when connect= names it")
    sp = alloc_port()
    sx = procs("socks", f"127.0.0.1:{sp}", *client_args("127.0.0.1", relay.port, keys.alice,
                                                        tmp_path / "known_relays"),
               "--control", "none")
    sx.wait_ready()
    wait_session(sx, f"127.0.0.1:{relay.port}")
    s, rep, _ = socks5_open(sp, CMD_CONNECT, host.strip("[]"), v4.port)
    s.close()
    assert rep == 2, f"SOCKS5 CONNECT {host}: reply {rep}, expected 2"
    assert v4.accepted == 0 and v6.accepted == 0, "the relay connected to itself"


def test_a_private_services_own_rules_hold(procs, tmp_path, keys, echo_server):
    """`expose --private` with --deny (the local client's address as the relay sees it) and
    with --max-conns: the relay refuses the streams past them, saying which."""
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys,
                        auth=[keys.bob.line, grant(keys.alice, "reach=one|closed")])
    start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", "--name", "one",
                 "--private", "--max-conns", "1", key=keys.bob, known=tmp_path / "kb1")
    start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", "--name", "closed",
                 "--private", "--deny", "127.0.0.0/8", key=keys.bob, known=tmp_path / "kb2")
    relay.proc.wait_log(r"\(bob\): offers private service '(one|closed)'$", count=2,
                        timeout=READY_TIMEOUT_S)
    l1, l2 = alloc_port(), alloc_port()
    one = start_local(procs, tmp_path, relay, f"127.0.0.1:{l1}", "one", key=keys.alice)
    closed = start_local(procs, tmp_path, relay, f"127.0.0.1:{l2}", "closed", key=keys.alice)
    refused_with(closed, l2, "closed", "'closed' does not take visitors from this address")
    first = connect("127.0.0.1", l1)
    try:
        echo_once(first, b"the one visitor\n")
        refused_with(one, l1, "one", "'one' has as many visitors as its --max-conns")
        echo_once(first, b"still the one\n")
    finally:
        first.close()
    wait_until(lambda: srv.live == 0, 5, "the first visitor to go")
    echo_through(l1)
    assert srv.accepted == 2, srv.peers


# ---------------------------------------------------------------------------------------------
# 5. changes: a private service away and back, grants reloaded, the relay down


def test_private_service_away_and_back(procs, tmp_path, keys, echo_server):
    """A private service whose client is gone is refused with that reason (the relay holds
    the name for it), comes back when its client does, and the `local` client's session
    carries on throughout. Another key may not take the name meanwhile."""
    srv = echo_server(handler=lenient(tagged_echo_handler(b"E:")))
    relay = start_relay(procs, tmp_path, keys, hb="1s", auth=[
        keys.bob.line, keys.mallory.line, grant(keys.alice, "reach=echo")])
    bob = start_private(procs, tmp_path, keys, relay, f"127.0.0.1:{srv.port}", "echo", keys.bob)
    lp = alloc_port()
    loc = start_local(procs, tmp_path, relay, f"127.0.0.1:{lp}", "echo", key=keys.alice)
    echo_through(lp, b"E:")
    (alice,) = sessions_of(relay, keys.alice)

    bob.stop()
    relay.proc.wait_log(r"\(bob\): session ended", timeout=5)
    mal = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", "--name",
                       "echo", "--private", key=keys.mallory)
    mal.wait_log(r"^expose 127\.0\.0\.1:\d+: the relay refused it: the private name 'echo' is "
                 r"another key's on this relay; asking again in 5 s$", timeout=READY_TIMEOUT_S)
    refused_with(loc, lp, "echo", "no private service 'echo' is connected now on the relay")
    mal.stop()

    bob = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", "--name",
                       "echo", "--private", key=keys.bob)
    relay.proc.wait_log(r"\(bob\): took back private service 'echo'$", timeout=READY_TIMEOUT_S)
    bob.wait_log(PRIVATE_RE, timeout=READY_TIMEOUT_S)
    echo_through(lp, b"E:")
    (again,) = sessions_of(relay, keys.alice)
    assert again["peer"] == alice["peer"], "the local client's session was replaced"
    assert srv.accepted == 2


def test_grants_follow_a_reload(procs, tmp_path, keys, tcp_server):
    """`pinhole reload` of the relay gives a live session its key's new grants at once (no
    new session): what was refused goes through and what was granted is refused; a key
    removed takes its private service with it."""
    echo_srv = tcp_server(lenient(tagged_echo_handler(b"E:")))
    h_srv = tcp_server(lenient(tagged_echo_handler(b"H:")))
    x_srv = tcp_server(lenient(tagged_echo_handler(b"X:")))
    h, x = h_srv.port, x_srv.port
    relay = start_relay(procs, tmp_path, keys,
                        auth=[keys.bob.line, grant(keys.alice, f"connect=127.0.0.1:{h}")])
    bob = start_private(procs, tmp_path, keys, relay, f"127.0.0.1:{echo_srv.port}", "echo",
                        keys.bob)
    via = " ".join(map(str, client_args("127.0.0.1", relay.port, keys.alice,
                                        tmp_path / "known_relays")))
    lh, lx, le = alloc_port(), alloc_port(), alloc_port()
    conf = tmp_path / "alice.conf"
    conf.write_text(f"local 127.0.0.1:{lh} 127.0.0.1:{h} {via}\n"
                    f"local 127.0.0.1:{lx} 127.0.0.1:{x} {via}\n"
                    f"local 127.0.0.1:{le} echo {via}\n")
    alice = procs("run", conf, "--control", "none", "--drain-timeout", "2s")
    wait_session(alice, f"127.0.0.1:{relay.port}")
    for port in (lh, lx, le):
        wait_listening(port, proc=alice.proc)
    (before,) = sessions_of(relay, keys.alice)
    echo_through(lh, b"H:")
    refused_with(alice, lx, f"127.0.0.1:{x}", f"key alice may not connect to 127.0.0.1:{x}; "
                 f"add connect=127.0.0.1:{x} to its line on the relay")
    refused_with(alice, le, "echo",
                 "key alice may not reach 'echo'; add reach=echo to its line on the relay")

    granted = grant(keys.alice, "reach=echo", f"connect=127.0.0.1:{x}")
    relay.auth.write_text(f"{keys.bob.line}\n{granted}\n")
    r = run_pinhole("reload", "--control", relay.ctl)
    assert r.returncode == 0, r.stderr
    assert "0 sessions ended, 0 ports closed" in r.stdout + r.stderr, r.stdout + r.stderr
    echo_through(lx, b"X:")
    echo_through(le, b"E:")
    refused_with(alice, lh, f"127.0.0.1:{h}", f"key alice may not connect to 127.0.0.1:{h}; "
                 f"add connect=127.0.0.1:{h} to its line on the relay")
    (after,) = sessions_of(relay, keys.alice)
    assert after["peer"] == before["peer"], "the reload replaced alice's session"

    relay.auth.write_text(f"{granted}\n")
    r = run_pinhole("reload", "--control", relay.ctl)
    assert r.returncode == 0, r.stderr
    assert "1 session ended, 1 port closed" in r.stdout + r.stderr, r.stdout + r.stderr
    bob.wait_log(r"removed from the relay's authorized keys", timeout=10)
    assert relay.status()["relay"]["services"] == []
    refused_with(alice, le, "echo", "no private service 'echo' is offered on the relay")
    echo_through(lx, b"X:")
    assert h_srv.accepted == 1 and x_srv.accepted == 2 and echo_srv.accepted == 1


def test_clients_wait_for_the_relay(procs, tmp_path, keys, echo_server):
    """`local` started while its relay is down listens at once; a client that connects and
    writes then waits in the listen queue, and is carried once the session is up."""
    srv = echo_server(handler=lenient(tagged_echo_handler(b"late:")))
    rport, lp = alloc_port(), alloc_port()
    loc = procs("local", f"127.0.0.1:{lp}", f"127.0.0.1:{srv.port}",
                *client_args("127.0.0.1", rport, keys.alice, tmp_path / "known_relays"),
                "--control", "none", "--drain-timeout", "2s")
    wait_listening(lp, proc=loc.proc)
    loc.wait_log(rf"^relay 127\.0\.0\.1:{rport}: ", timeout=READY_TIMEOUT_S)
    c = connect("127.0.0.1", lp)
    try:
        c.sendall(b"sent before the relay was up\n")
        start_relay(procs, tmp_path, keys, port=rport,
                    auth=[grant(keys.alice, f"connect=127.0.0.1:{srv.port}")])
        wait_session(loc, f"127.0.0.1:{rport}", timeout=20)
        c.settimeout(20)
        assert recv_exact(c, 34) == b"late:sent before the relay was up\n"
    finally:
        c.close()
    echo_through(lp, b"late:")


def test_socks_via_while_the_relay_is_down(procs, tmp_path, keys, echo_server):
    """socks --via answers at once while its session is down - SOCKS5 3 (network
    unreachable), HTTP 502 saying the relay is not connected - and carries once it is up."""
    srv = echo_server(handler=lenient(tagged_echo_handler(b"up:")))
    rport, sp = alloc_port(), alloc_port()
    sx = procs("socks", f"127.0.0.1:{sp}", *client_args("127.0.0.1", rport, keys.alice,
                                                        tmp_path / "known_relays"),
               "--control", "none")
    sx.wait_ready()
    sx.wait_log(rf"^relay 127\.0\.0\.1:{rport}: cannot connect: ", timeout=READY_TIMEOUT_S)
    t0 = time.monotonic()
    s, rep, _ = socks5_open(sp, CMD_CONNECT, "127.0.0.1", srv.port)
    s.close()
    assert rep == 3, f"SOCKS5 CONNECT with the relay down: reply {rep}, expected 3"
    status, body = http_connect(sp, f"127.0.0.1:{srv.port}")
    assert status == 502 and f"the relay 127.0.0.1:{rport} is not connected now" in body, \
        (status, body)
    assert time.monotonic() - t0 < 2, "the answers waited"
    start_relay(procs, tmp_path, keys, port=rport,
                auth=[grant(keys.alice, f"connect=127.0.0.1:{srv.port}")])
    wait_session(sx, f"127.0.0.1:{rport}", timeout=40)
    s, _ = socks5_connect(sp, "127.0.0.1", srv.port)
    try:
        s.sendall(b"now\n")
        assert recv_exact(s, 7) == b"up:now\n"
    finally:
        s.close()
    assert srv.accepted == 1


# ---------------------------------------------------------------------------------------------
# 6. the ends of a stream: half-close each way, a target that never answers


@pytest.mark.parametrize("way", ["up", "down"])
@pytest.mark.parametrize("target", ["private", "hostport"])
def test_half_close_is_carried(procs, tmp_path, keys, tcp_server, target, way):
    """A FIN crosses `local` each way right behind the last byte: up, the client sends and
    half-closes, the service answers what it got once it sees the FIN; down, the client
    half-closes first, and the service's bytes and its FIN come back. 5 s for each FIN."""
    payloads = queue.Queue()

    def service(conn, peer):
        conn.settimeout(5)
        try:
            if way == "up":
                got = recv_until_eof(conn)
                conn.sendall(f"{len(got)} {sha256(got)}".encode())
            else:
                data = payloads.get(timeout=5)
                recv_until_eof(conn)  # the client's early FIN
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except (socket.timeout, queue.Empty):
            pass  # a FIN that never came: the client's side fails the test, saying which

    srv = tcp_server(lenient(service))
    lp = alloc_port()
    if target == "private":
        relay = start_relay(procs, tmp_path, keys,
                            auth=[keys.bob.line, grant(keys.alice, "reach=half")])
        start_private(procs, tmp_path, keys, relay, f"127.0.0.1:{srv.port}", "half", keys.bob)
        start_local(procs, tmp_path, relay, f"127.0.0.1:{lp}", "half", key=keys.alice)
    else:
        relay = start_relay(procs, tmp_path, keys,
                            auth=[grant(keys.alice, f"connect=127.0.0.1:{srv.port}")])
        start_local(procs, tmp_path, relay, f"127.0.0.1:{lp}", f"127.0.0.1:{srv.port}",
                    key=keys.alice)
    for size in (0, 1, 16384, 100000, 3 * MiB):
        data = os.urandom(size)
        c = connect("127.0.0.1", lp, timeout=5)
        try:
            if way == "up":
                c.sendall(data)
                c.shutdown(socket.SHUT_WR)
                want = f"{size} {sha256(data)}".encode()
            else:
                payloads.put(data)
                c.shutdown(socket.SHUT_WR)
                want = data
            try:
                got = recv_until_eof(c, limit=len(want))
            except socket.timeout:
                pytest.fail(f"{way}, {size} bytes: no FIN within 5 s")
            assert got == want, f"{way}, {size} bytes: other bytes back"
        finally:
            c.close()
    assert srv.accepted == 5


def test_a_target_that_does_not_answer(procs, tmp_path, keys, blackhole):
    """A granted HOST:PORT whose SYNs vanish: the relay gives up after its 10 s and the
    client's connection is reset, the client saying why."""
    relay = start_relay(procs, tmp_path, keys,
                        auth=[grant(keys.alice, f"connect=127.0.0.1:{blackhole}")])
    lp = alloc_port()
    loc = start_local(procs, tmp_path, relay, f"127.0.0.1:{lp}", f"127.0.0.1:{blackhole}",
                      key=keys.alice)
    end, took = connect_outcome(lp, timeout=20)
    assert end == "reset" and 9 <= took <= 15, (end, took)
    loc.wait_log(rf"^local 127\.0\.0\.1:{lp} 127\.0\.0\.1:{blackhole}: the relay could not "
                 rf"connect: 127\.0\.0\.1:{blackhole} did not answer within 10 s$")


# ---------------------------------------------------------------------------------------------
# 7. one session for every line of a config file, and the listen address left out


def pcurl(*args, timeout=25, check=True, prefix=()):
    """curl through a proxy given in args, with a deadline; --noproxy "" undoes run_peer's
    NO_PROXY=* (which would send curl around the proxy). prefix: e.g. ip netns exec NS."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return run_peer([*prefix, "curl", "--silent", "--show-error", "--noproxy", "", "--max-time",
                     str(timeout - 5), "--connect-timeout", "5", *args], timeout=timeout,
                    check=check)


def test_one_session_carries_expose_local_and_socks_lines(procs, tmp_path, keys, echo_server,
                                                          web):
    """A config file with two expose lines (one private), a local line and a socks --via
    line for one relay and key: the relay sees one session, and each line works - the local
    line reaching the private service of the same session."""
    priv = echo_server(handler=lenient(tagged_echo_handler(b"E:")))
    pub = echo_server(handler=lenient(tagged_echo_handler(b"P:")))
    relay = start_relay(procs, tmp_path, keys, auth=[
        grant(keys.alice, "reach=echo", f"connect=localhost:{web.http_port}")])
    via = " ".join(map(str, client_args("127.0.0.1", relay.port, keys.alice,
                                        tmp_path / "known_relays")))
    lp, sp = alloc_port(), alloc_port()
    conf = tmp_path / "alice.conf"
    conf.write_text(f"# one relay, one key: one session\n"
                    f"expose 127.0.0.1:{priv.port} {via} --name echo --private\n"
                    f"expose 127.0.0.1:{pub.port} {via} --name pub\n"
                    f"local 127.0.0.1:{lp} echo {via}\n"
                    f"socks 127.0.0.1:{sp} {via}\n")
    r = run_pinhole("run", conf, "--check")
    assert r.returncode == 0, r.stdout + r.stderr
    ctl = tmp_path / "alice.sock"
    x = procs("run", conf, "--control", ctl, "--drain-timeout", "2s")
    x.wait_log(rf"^expose 127\.0\.0\.1:{priv.port} echo: private on relay ", timeout=10)
    hit = x.wait_log(rf"^expose 127\.0\.0\.1:{pub.port} pub: public at 127\.0\.0\.1:\d+$",
                     timeout=10)
    pub_port = int(hit[0].rsplit(":", 1)[1])
    for port in (lp, sp):
        wait_listening(port, proc=x.proc)

    echo_through(lp, b"E:")  # up the session and down it again, to the private service
    echo_through(pub_port, b"P:")  # a visitor at the public port
    r = pcurl("--socks5-hostname", f"127.0.0.1:{sp}", "--fail",
              web.url("http", "/big.bin", host="localhost"))
    assert sha256(r.stdout) == sha256(web.big), "socks --via: other bytes"
    r = pcurl("-x", f"http://127.0.0.1:{sp}", "--proxytunnel", "--fail",
              web.url("http", "/index.html", host="localhost"))
    assert r.stdout == web.index

    st = relay.status()["relay"]
    assert len(st["sessions"]) == 1, f"one config file made {len(st['sessions'])} sessions"
    assert st["sessions"][0]["streams_total"] == 5, st["sessions"]  # 2 local + 1 pub + 2 socks
    assert sorted((v["name"], v["port"] != 0) for v in st["services"]) == \
        [("echo", False), ("pub", True)], st["services"]
    cs = status_json(ctl)["expose"]
    assert len(cs) == 1 and cs[0]["up"] and len(cs[0]["rules"]) == 4, cs
    relay.proc.wait_log(r"\(alice\): offers private service 'echo'$", timeout=1)


def test_one_session_also_with_a_heartbeat(procs, tmp_path, keys, echo_server):
    """The same relay and key, the expose and local lines with --heartbeat 2s (socks takes
    no --heartbeat): still one session."""
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys, auth=[
        grant(keys.alice, "reach=echo", f"connect=127.0.0.1:{srv.port}")])
    via = " ".join(map(str, client_args("127.0.0.1", relay.port, keys.alice,
                                        tmp_path / "known_relays")))
    lp, sp = alloc_port(), alloc_port()
    conf = tmp_path / "alice.conf"
    conf.write_text(f"expose 127.0.0.1:{srv.port} {via} --name echo --private --heartbeat 2s\n"
                    f"local 127.0.0.1:{lp} echo {via} --heartbeat 2s\n"
                    f"socks 127.0.0.1:{sp} {via}\n")
    x = procs("run", conf, "--control", "none", "--drain-timeout", "2s")
    x.wait_log(PRIVATE_RE, timeout=READY_TIMEOUT_S)
    for port in (lp, sp):
        wait_listening(port, proc=x.proc)
    wait_session(x, f"127.0.0.1:{relay.port}")
    s, _ = socks5_connect(sp, "127.0.0.1", srv.port)
    s.close()
    echo_through(lp)
    assert len(relay.status()["relay"]["sessions"]) == 1, relay.status()["relay"]["sessions"]


def test_listen_left_out_is_loopback_and_the_targets_port(procs, tmp_path, keys, echo_server,
                                                          ipv6):
    """`local [::1]:P --via R`: LISTEN left out, the client listens on 127.0.0.1:P (not on
    ::1, and not on every address), and the relay connects to [::1]:P, granted written out."""
    srv = echo_server(host="::1", handler=lenient(tagged_echo_handler(b"v6:")))
    relay = start_relay(procs, tmp_path, keys,
                        auth=[grant(keys.alice, f"connect=[::1]:{srv.port}")])
    start_local(procs, tmp_path, relay, f"[::1]:{srv.port}", key=keys.alice)
    assert sorted(ln.split()[3] for ln in listeners(srv.port)) == \
        [f"127.0.0.1:{srv.port}", f"[::1]:{srv.port}"], listeners(srv.port)
    echo_through(srv.port, b"v6:")
    assert srv.accepted == 1


def test_status_and_metrics_tell_local_rules_apart(procs, tmp_path, keys, echo_server):
    """Two local lines and a socks --via line: `status --json` must not call them public
    expose rules of LOCAL ':0', and /metrics must not give them one label set (a
    duplicate series)."""
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys,
                        auth=[grant(keys.alice, f"connect=127.0.0.1:{srv.port}")])
    via = " ".join(map(str, client_args("127.0.0.1", relay.port, keys.alice,
                                        tmp_path / "known_relays")))
    l1, l2, sp, mp = (alloc_port() for _ in range(4))
    conf = tmp_path / "alice.conf"
    conf.write_text(f"local 127.0.0.1:{l1} 127.0.0.1:{srv.port} {via}\n"
                    f"local 127.0.0.1:{l2} 127.0.0.1:{srv.port} {via}\n"
                    f"socks 127.0.0.1:{sp} {via}\n")
    ctl = tmp_path / "alice.sock"
    x = procs("run", conf, "--control", ctl, "--metrics", f"127.0.0.1:{mp}")
    wait_session(x, f"127.0.0.1:{relay.port}")
    wait_listening(mp, proc=x.proc)
    rules = status_json(ctl)["expose"][0]["rules"]
    assert len(rules) == 3, rules
    assert not [r for r in rules if r["state"] == "public" or r.get("local") == ":0"], rules
    assert sorted(r["kind"] for r in rules) == ["local", "local", "socks"], rules
    status, _, text = fetch(mp)
    assert status == 200
    series = [ln.rsplit(" ", 1)[0] for ln in text.splitlines()
              if ln.startswith("pinhole_expose_up{")]
    assert len(series) == len(set(series)) == 3, series


# ---------------------------------------------------------------------------------------------
# 8. the command line


def test_local_help_and_man_page():
    r = run_pinhole("local", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage: pinhole local [LISTEN] TARGET --via RELAY[:PORT]"), \
        r.stdout
    for word in ("reach=NAME", "connect=HOST:PORT", "--private", "--relay-key", "--key",
                 "--known-relays", "ssh -L"):
        assert word in r.stdout, f"local --help does not mention {word}"
    assert run_pinhole("help", "local").stdout == r.stdout
    man = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "docs", "pinhole.1")
    with open(man) as f:
        text = f.read()
    for word in (".B pinhole local", ".SS LOCAL OPTIONS", r".B \-\-private", "reach=",
                 "connect=", r"\-\-via", "BIND is refused"):
        assert word in text, f"the man page does not mention {word}"


@pytest.mark.parametrize("args,msg", [
    (["local", "127.0.0.1:2222", "db"], "local: missing --via RELAY"),
    (["local", "db", "--via", "127.0.0.1:7835"],
     "local: 'db' has no port to listen on: give LISTEN too, as in pinhole local "
     "127.0.0.1:2222 db"),
    (["local", "--via", "127.0.0.1:7835"], "local: missing TARGET"),
    (["local", "127.0.0.1:1", "127.0.0.1:2", "x", "--via", "127.0.0.1:7835"],
     "local: 'x': LISTEN and TARGET only"),
    (["local", "127.0.0.1:2222", "bad/name", "--via", "127.0.0.1:7835"],
     "TARGET is a private service's NAME"),
    (["local", "udp://127.0.0.1:5353", "10.0.0.1:0", "--via", "127.0.0.1:7835"],
     "local: '10.0.0.1:0': port must be 1-65535"),
    (["expose", "127.0.0.1:22", "--via", "127.0.0.1:7835", "--private"],
     "expose: --private is for a service with a --name"),
    (["expose", "127.0.0.1:22", "--via", "127.0.0.1:7835", "--private", "--name", "s",
      "--port", "20000"], "expose: --private is for a service with a --name and no --port"),
    (["socks", "127.0.0.1:1080", "--key", "k"],
     "socks: --key, --relay-key and --known-relays are for --via"),
    (["local", "127.0.0.1:2222", "db", "--via", "127.0.0.1:7835", "--private"],
     "--private"),
])
def test_usage_errors(tmp_path, args, msg):
    """Each mistake exits 2 before anything starts, naming what is wrong."""
    r = run_pinhole(*args, "--control", "none")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert msg in r.stderr, r.stderr
    assert r.stderr.count("\n") <= 2, r.stderr


# ---------------------------------------------------------------------------------------------
# 9. in network namespaces: what only the relay reaches

NS_RELAY_IP, NS_WEB_IP, NS_RELAY_WEB_SIDE = "10.231.0.2", "10.232.0.2", "10.232.0.1"
NS_RELAY_PORT, NS_WEB_PORT, NS_LOOP_WEB_PORT, NS_SOCKS_PORT = 7835, 8080, 8081, 1080
NS_NAME = "web.relay.test"  # in the relay's /etc/hosts only

# http.server on the addresses given (HOST:PORT...), serving root (and /peer: the client's
# address); it binds without asking DNS for its name (no namespace here has DNS)
NS_WEB_PY = r"""
import http.server, socketserver, sys, threading
root, ready = sys.argv[1], sys.argv[2]


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=root, **kw)

    def do_GET(self):
        if self.path != "/peer":
            return super().do_GET()
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


for a in sys.argv[3:]:
    host, port = a.rsplit(":", 1)
    threading.Thread(target=Server((host, int(port)), Handler).serve_forever,
                     daemon=True).start()
open(ready, "w").close()
threading.Event().wait()
"""


def _ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        pytest.fail(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def ns_listening(ns, port):
    r = subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltnH", f"sport = :{port}"],
                       capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    return r.returncode == 0 and r.stdout.strip() != ""


class Nets:
    """The three namespaces (client, relay, web) and their web servers."""

    def __init__(self, tmp_path, names):
        self.dir = tmp_path
        self.cns, self.rns, self.wns = names
        self.blob = os.urandom(MiB + 13)

    def run(self, ns):
        return ("ip", "netns", "exec", ns)

    def wait_listening(self, ns, port, proc):
        def up():
            if proc.poll() is not None:
                pytest.fail(f"{proc.args} exited with {proc.returncode}")
            return ns_listening(ns, port)

        wait_until(up, READY_TIMEOUT_S, f"a listener on {port} in {ns}")

    def start_web(self, spawn, ns, *addrs):
        """NS_WEB_PY in ns on addrs, serving blob.bin."""
        root = self.dir / "www"
        root.mkdir(exist_ok=True)
        (root / "blob.bin").write_bytes(self.blob)
        script = self.dir / "ns_web.py"
        script.write_text(NS_WEB_PY)
        ready = self.dir / f"web-{ns}.ready"
        p = spawn([*self.run(ns), sys.executable, str(script), str(root), str(ready), *addrs])
        wait_until(lambda: ready.exists() or p.poll() is not None, READY_TIMEOUT_S,
                   f"the web server in {ns}")
        assert p.poll() is None, f"the web server in {ns} exited: {p.stdout.read()!r}"

    def start_relay(self, procs, keys, *lines):
        """pinhole server in the relay's namespace with the authorized_keys lines given."""
        auth = self.dir / "authorized_keys.ns"
        auth.write_text("\n".join(lines) + "\n")
        p = procs("server", f"{NS_RELAY_IP}:{NS_RELAY_PORT}", "--key", keys.relay.path,
                  "--authorized-keys", auth, "--control", self.dir / "relay.sock",
                  "--drain-timeout", "2s", prefix=self.run(self.rns))
        p.wait_log(rf"^relay on {re.escape(NS_RELAY_IP)}:{NS_RELAY_PORT}, key ",
                   timeout=READY_TIMEOUT_S)
        return p

    def client(self, procs, verb, *words, key):
        """pinhole VERB WORDS --via the relay, in the client's namespace, its session up."""
        p = procs(verb, *words, *client_args(NS_RELAY_IP, NS_RELAY_PORT, key,
                                             self.dir / "known_relays"),
                  "--control", "none", "--drain-timeout", "2s", prefix=self.run(self.cns))
        wait_session(p, f"{NS_RELAY_IP}:{NS_RELAY_PORT}")
        return p


@pytest.fixture
def nets(tmp_path):
    """Makes the three namespaces of this file's head (and the relay's /etc/hosts), and
    removes them whatever happens, with anything still running in them."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (run the suite as root)")
    if shutil.which("ip") is None:
        pytest.skip("ip (iproute2) is not installed")
    pid = os.getpid()
    names = (f"phlc-{pid}", f"phlr-{pid}", f"phlw-{pid}")
    c, r, w = names
    etc = f"/etc/netns/{r}"
    made, made_etc = [], None
    try:
        for ns in names:
            res = _ip("netns", "add", ns, check=False)
            if res.returncode != 0:
                pytest.skip(f"cannot create a network namespace: {res.stderr.strip()}")
            made.append(ns)
        _ip("link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "r0", "netns", r)
        _ip("link", "add", "r1", "netns", r, "type", "veth", "peer", "name", "w0", "netns", w)
        for ns, dev, addr in ((c, "c0", "10.231.0.1/24"), (r, "r0", f"{NS_RELAY_IP}/24"),
                              (r, "r1", f"{NS_RELAY_WEB_SIDE}/24"), (w, "w0", f"{NS_WEB_IP}/24")):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        for ns in names:
            _ip("-n", ns, "link", "set", "lo", "up")
        # ip netns exec bind-mounts /etc/netns/NS/hosts over /etc/hosts for what it runs
        if not os.path.isdir("/etc/netns"):
            os.mkdir("/etc/netns", 0o755)
            made_etc = "/etc/netns"
        os.mkdir(etc, 0o755)
        with open(f"{etc}/hosts", "w") as f:
            f.write(f"127.0.0.1 localhost\n{NS_WEB_IP} {NS_NAME}\n")
        with open(f"{etc}/resolv.conf", "w") as f:  # a name not in hosts asks no one outside
            f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        yield Nets(tmp_path, names)
    finally:
        for ns in made:
            for p in _ip("netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(p), 9)
                except ProcessLookupError:
                    pass
            _ip("netns", "del", ns, check=False)
        shutil.rmtree(etc, ignore_errors=True)
        if made_etc is not None:
            try:
                os.rmdir(made_etc)
            except OSError:
                pass


def web_setup(nets, procs, spawn, keys):
    """The web servers (the web host's, the relay's loopback one) and the relay, alice
    granted the web host's network, the name, and the relay's loopback by name."""
    nets.start_web(spawn, nets.wns, f"{NS_WEB_IP}:{NS_WEB_PORT}")
    nets.start_web(spawn, nets.rns, f"127.0.0.1:{NS_LOOP_WEB_PORT}")
    nets.start_relay(procs, keys, grant(
        keys.alice, f"connect=10.232.0.0/24:{NS_WEB_PORT}|{NS_NAME}:{NS_WEB_PORT}|"
                    f"localhost:{NS_LOOP_WEB_PORT}"))
    # the name is the relay's alone, and the web host is out of the client's reach
    r = subprocess.run([*nets.run(nets.rns), "getent", "hosts", NS_NAME], capture_output=True,
                       text=True, timeout=10)
    assert r.stdout.split()[:1] == [NS_WEB_IP], f"the relay's /etc/hosts: {r.stdout!r}"
    r = subprocess.run([*nets.run(nets.cns), "getent", "hosts", NS_NAME],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0, f"the client knows {NS_NAME}: {r.stdout!r}"
    r = pcurl(f"http://{NS_WEB_IP}:{NS_WEB_PORT}/peer", check=False, timeout=10,
              prefix=nets.run(nets.cns))
    assert r.returncode != 0 and r.stdout == b"", "the client reaches the web host directly"


def test_socks_via_reaches_a_web_server_only_the_relay_reaches(nets, procs, spawn, keys):
    """curl in the client's namespace through `socks --via`: by address (SOCKS5), by a name
    only the relay resolves (SOCKS5 with the hostname, HTTP CONNECT, HTTP absolute form),
    and the relay's own loopback by the name connect= grants - not by its address."""
    web_setup(nets, procs, spawn, keys)
    proxy = f"127.0.0.1:{NS_SOCKS_PORT}"
    nets.client(procs, "socks", proxy, key=keys.alice)
    ns = nets.run(nets.cns)
    web = f"{NS_WEB_IP}:{NS_WEB_PORT}"
    named = f"{NS_NAME}:{NS_WEB_PORT}"
    for opts, target in ((["--socks5", proxy], web), (["--socks5-hostname", proxy], named),
                         (["-x", f"http://{proxy}", "--proxytunnel"], named),
                         (["-x", f"http://{proxy}"], named), (["--socks4a", proxy], named)):
        r = pcurl(*opts, "--fail", f"http://{target}/blob.bin", prefix=ns)
        assert len(r.stdout) == len(nets.blob) and sha256(r.stdout) == sha256(nets.blob), \
            f"curl {opts} {target}: {len(r.stdout)} bytes"
        r = pcurl(*opts, "--fail", f"http://{target}/peer", prefix=ns)
        assert r.stdout.decode() == NS_RELAY_WEB_SIDE, f"curl {opts}: came from {r.stdout!r}"
    # the relay's loopback: by the name written in connect=, not by the address
    r = pcurl("--socks5-hostname", proxy, "--fail", f"http://localhost:{NS_LOOP_WEB_PORT}/peer",
              prefix=ns)
    assert r.stdout == b"127.0.0.1", r.stdout
    r = pcurl("--socks5", proxy, f"http://127.0.0.1:{NS_LOOP_WEB_PORT}/peer", check=False,
              prefix=ns)
    assert r.returncode == 97 and r.stdout == b"", (r.returncode, r.stderr)  # SOCKS5 reply 2
    r = pcurl("-x", f"http://{proxy}", "--proxytunnel", "--write-out", "%{http_connect}",
              f"http://127.0.0.1:{NS_LOOP_WEB_PORT}/peer", check=False, prefix=ns)
    assert r.returncode != 0 and r.stdout == b"403", (r.returncode, r.stdout, r.stderr)


def test_local_via_reaches_what_only_the_relay_reaches(nets, procs, spawn, keys):
    """`local HOST:PORT` with LISTEN left out (127.0.0.1:PORT in the client's namespace) to
    the web host's address, and `local LISTEN NAME:PORT` with a name only the relay knows."""
    web_setup(nets, procs, spawn, keys)
    nets.client(procs, "local", f"{NS_WEB_IP}:{NS_WEB_PORT}", key=keys.alice)
    nets.client(procs, "local", "127.0.0.1:9000", f"{NS_NAME}:{NS_WEB_PORT}", key=keys.alice)
    ns = nets.run(nets.cns)
    for port in (NS_WEB_PORT, 9000):
        r = pcurl("--fail", f"http://127.0.0.1:{port}/blob.bin", prefix=ns)
        assert sha256(r.stdout) == sha256(nets.blob), f"local {port}: other bytes"
        r = pcurl("--fail", f"http://127.0.0.1:{port}/peer", prefix=ns)
        assert r.stdout.decode() == NS_RELAY_WEB_SIDE, r.stdout


def test_target_failures_reach_the_client(nets, procs, spawn, keys):
    """Granted targets that fail on the relay's side: a closed port (the web host resets) and
    a name the relay cannot resolve. `local` resets its client and logs the relay's words;
    `socks --via` answers SOCKS5 5 and 4, and HTTP 502 with the words."""
    nets.start_web(spawn, nets.wns, f"{NS_WEB_IP}:{NS_WEB_PORT}")
    nets.start_relay(procs, keys, grant(keys.alice, f"connect={NS_WEB_IP}:9|nosuch.test:80"))
    closed = nets.client(procs, "local", "127.0.0.1:9009", f"{NS_WEB_IP}:9", key=keys.alice)
    noname = nets.client(procs, "local", "127.0.0.1:9080", "nosuch.test:80", key=keys.alice)
    nets.client(procs, "socks", f"127.0.0.1:{NS_SOCKS_PORT}", key=keys.alice)
    ns = nets.run(nets.cns)
    proxy = f"127.0.0.1:{NS_SOCKS_PORT}"
    for port in (9009, 9080):  # curl in the namespace: reset before any byte came back
        nets.wait_listening(nets.cns, port, closed.proc)
        r = pcurl(f"http://127.0.0.1:{port}/", check=False, prefix=ns)
        # 7: the reset came before curl looked at its connect (a loaded machine)
        assert r.returncode in (7, 52, 56) and r.stdout == b"", (port, r.returncode, r.stderr)
    closed.wait_log(r"^local 127\.0\.0\.1:9009 10\.232\.0\.2:9: the relay could not "
                    r"connect: .*Connection refused$")
    noname.wait_log(r"^local 127\.0\.0\.1:9080 nosuch\.test:80: the relay could not "
                    r"connect: cannot resolve nosuch\.test: ")
    r = pcurl("--socks5", proxy, f"http://{NS_WEB_IP}:9/", check=False, prefix=ns)
    assert r.returncode == 97 and b"(5)" in r.stderr, (r.returncode, r.stderr)
    r = pcurl("--socks5-hostname", proxy, "http://nosuch.test:80/", check=False, prefix=ns)
    assert r.returncode == 97 and b"(4)" in r.stderr, (r.returncode, r.stderr)
    r = pcurl("-x", f"http://{proxy}", "--write-out", "%{http_code}", "http://nosuch.test/",
              check=False, prefix=ns)
    assert r.stdout.endswith(b"502") and b"cannot resolve nosuch.test" in r.stdout, r.stdout


PROXYCHAINS_CONF = """\
strict_chain
proxy_dns
remote_dns_subnet 224
quiet_mode
tcp_read_time_out 8000
tcp_connect_time_out 5000
[ProxyList]
{proxy}
"""


@pytest.mark.parametrize("kind", ["socks5", "socks4", "http"])
def test_proxychains4_through_socks_via(nets, procs, spawn, keys, kind):
    """proxychains4 puts curl, which knows nothing of proxies, through `socks --via`: names
    go to the proxy (proxy_dns) and the relay resolves them."""
    if shutil.which("proxychains4") is None:
        pytest.skip("proxychains4 is not installed (scripts/deps.sh test)")
    web_setup(nets, procs, spawn, keys)
    nets.client(procs, "socks", f"127.0.0.1:{NS_SOCKS_PORT}", key=keys.alice)
    conf = nets.dir / "proxychains.conf"
    conf.write_text(PROXYCHAINS_CONF.format(proxy=f"{kind} 127.0.0.1 {NS_SOCKS_PORT}"))
    pc = [*nets.run(nets.cns), "proxychains4", "-q", "-f", str(conf), "curl", "--silent",
          "--show-error", "--fail", "--max-time", "15"]
    for target in (f"{NS_NAME}:{NS_WEB_PORT}", f"{NS_WEB_IP}:{NS_WEB_PORT}"):
        r = run_peer([*pc, f"http://{target}/blob.bin"], timeout=20)
        assert sha256(r.stdout) == sha256(nets.blob), f"{target}: {len(r.stdout)} bytes"
        r = run_peer([*pc, f"http://{target}/peer"], timeout=20)
        assert r.stdout.decode() == NS_RELAY_WEB_SIDE, r.stdout
    r = run_peer([*pc, f"http://{NS_WEB_IP}:9/"], timeout=20, check=False)
    assert r.returncode != 0 and r.stdout == b"", "a destination not granted got through"
