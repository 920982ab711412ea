"""
The relay on loopback: `pinhole server` and `pinhole expose` between real peers - curl,
socat, ssh, dig, python - and against hostile ones.

    visitors               pinhole server 127.0.0.1:R           pinhole expose LOCAL
    curl, ssh, socat,  --> --bind 127.0.0.1 --ports LO-HI <==== --via 127.0.0.1:R --> LOCAL:
    dig, python            public ports 127.0.0.1:PUB      TLS 1.3                    http.server,
                                                           session                    sshd, socat,
    hostile peers  ------> 127.0.0.1:R: garbage, raw TLS frames, stalled handshakes   dnsmasq, echo

Keys are made once per module (`pinhole keygen`): the relay's, alice (the usual client), bob
(authorized where a test says so: the hostile TLS peer) and mallory (never authorized).
Every process gets --key files and --control sockets under tmp_path, so nothing is written to
/etc/pinhole and parallel runs do not meet. Readiness is the relay's "relay on" line and the
client's "public at" line (and `ss`), never a sleep; every wait and load loop is bounded.

Tests with "slow" in their name take several seconds each (heartbeat timeouts, handshake
timeouts, bulk data); they run in the default suite, `-k "not slow"` leaves them out.
"""

import base64
import errno
import hashlib
import json
import os
import queue
import re
import selectors
import shutil
import signal
import socket
import ssl
import stat
import struct
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import (BIN, READY_TIMEOUT_S, SANITIZER_MARKS, SOCK_TIMEOUT_S, Pinhole, alloc_port,
                      connect, echo_handler, echo_once, free_udp_port, listeners, many_echo,
                      outcome, recv_exact, recv_until_eof, run_peer, run_pinhole, send_in_thread,
                      set_rst, sha256, tagged_echo_handler, wait_listening, wait_not_listening,
                      wait_until)

MiB = 1 << 20
HB = "1s"  # --heartbeat on both sides where liveness matters: a silent peer goes after 3 s
HB_S = 1.0
PUBLIC_RE = re.compile(r"^expose (\S+)(?: [A-Za-z0-9._-]+)?: public at 127\.0\.0\.1:(\d+)")

# frame types (docs/PROTOCOL.md)
CTRL, OPEN, DATA, WINDOW, FIN, RST, DGRAM, PING, PONG, GOAWAY = range(1, 11)
FRAME_MAX = 16384


# ---------------------------------------------------------------------------------------------
# keys, processes, helpers


class Key:
    def __init__(self, path, line, fp):
        self.path, self.line, self.fp = str(path), line, fp


def keygen(path, comment):
    r = run_pinhole("keygen", "-f", path, "-C", comment)
    assert r.returncode == 0, r.stderr
    m = re.search(r"fingerprint (SHA256:[A-Za-z0-9+/]{43})", r.stderr)
    assert m, r.stderr
    line = r.stdout.strip()
    raw = base64.b64decode(line.split()[1])
    assert m.group(1) == "SHA256:" + base64.b64encode(
        hashlib.sha256(raw).digest()).decode().rstrip("=")
    return Key(path, line, m.group(1))


class Keys:
    pass


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    k = Keys()
    for name in ("relay", "alice", "bob", "mallory"):
        setattr(k, name, keygen(d / name, name))
    return k


@pytest.fixture(scope="module")
def bob_cert(keys, tmp_path_factory):
    """A self-signed certificate made from bob's (authorized) key, for the raw TLS peer."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert = tmp_path_factory.mktemp("cert") / "cert.pem"
    r = subprocess.run(["openssl", "req", "-new", "-x509", "-key", keys.bob.path, "-subj",
                        "/CN=x", "-days", "1", "-out", str(cert)], capture_output=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return str(cert)


@pytest.fixture
def procs(udp_echo, pinhole):
    """A callable: procs(*args) -> a started pinhole, not waited for (conftest's pinhole
    fixture: stopped with SIGTERM at teardown, the last started first, and checked for its
    exit status and sanitizer reports). udp_echo comes first so that it outlives them."""

    def start(*args, **kw):
        return pinhole(*args, ready=False, **kw)

    return start


def kill9(p):
    """SIGKILL: the process dies without a word (as a crashed or unplugged client)."""
    p.proc.kill()
    p.proc.wait(timeout=5)
    p.rc = p.expect_rc = -signal.SIGKILL
    for mark in SANITIZER_MARKS:
        assert mark not in p.log, p.log


def port_range(n):
    """(lo, hi): n consecutive free ports, none of them handed out elsewhere in this run."""
    for _ in range(50):
        ps = [alloc_port() for _ in range(n)]
        if ps == list(range(ps[0], ps[0] + n)):
            return ps[0], ps[-1]
    pytest.fail(f"no {n} consecutive free ports")


class Relay:
    def __init__(self, proc, port, lo, hi, ctl, auth):
        self.proc, self.port, self.lo, self.hi, self.ctl, self.auth = proc, port, lo, hi, ctl, auth

    def status(self):
        return status_json(self.ctl)

    def messages(self):
        return self.proc.messages()

    def alive(self):
        return self.proc.proc.poll() is None


_relays = iter(range(1, 1 << 30))


def start_relay(procs, tmp_path, keys, auth=None, port=None, nports=8, hb=None, ports=None,
                key=None, verbose=False, extra=()):
    """`pinhole server 127.0.0.1:R --bind 127.0.0.1 --ports LO-HI` with its own key (or key)
    and an authorized_keys of the lines given (default: alice's), ready: logged and
    listening. verbose: -v, a line per failed connection (the default level only counts
    them); extra: more words for the command line."""
    key = key or keys.relay
    n = next(_relays)
    port = port or alloc_port()
    lo, hi = ports or port_range(nports)
    authf = tmp_path / f"authorized_keys.{n}"
    if not authf.exists():
        authf.write_text("\n".join(auth if auth is not None else [keys.alice.line]) + "\n")
    ctl = tmp_path / f"r{n}.sock"
    args = ["server", f"127.0.0.1:{port}", "--key", key.path, "--authorized-keys", authf,
            "--bind", "127.0.0.1", "--ports", f"{lo}-{hi}", "--control", ctl,
            "--drain-timeout", "2s"]
    if hb:
        args += ["--heartbeat", hb]
    if verbose:
        args.append("-v")
    p = procs(*args, *extra)
    p.wait_log(rf"^relay on 127\.0\.0\.1:{port}, key {re.escape(key.fp)}, ",
               timeout=READY_TIMEOUT_S)
    wait_listening(port, proc=p.proc)
    return Relay(p, port, lo, hi, str(ctl), authf)


def restart_relay(procs, tmp_path, keys, old):
    """The same relay again: same port, key, authorized_keys and --ports."""
    hb = old.proc.args[old.proc.args.index("--heartbeat") + 1] \
        if "--heartbeat" in old.proc.args else None
    return start_relay(procs, tmp_path, keys, port=old.port, hb=hb, ports=(old.lo, old.hi),
                       auth=old.auth.read_text().splitlines())


def start_expose(procs, tmp_path, keys, relay_port, local, *extra, key=None, hb=None,
                 known=None, control="none", prefix=(), pre=()):
    """`pinhole [PRE] expose LOCAL --via 127.0.0.1:R` (not waited for: see wait_public);
    pre: global options (--user), prefix: a command to run it through (setpriv)."""
    args = [*pre, "expose", local, "--via", f"127.0.0.1:{relay_port}", "--key",
            (key or keys.alice).path, "--known-relays", known or tmp_path / "known_relays",
            "--control", control, "--drain-timeout", "2s"]
    if hb:
        args += ["--heartbeat", hb]
    return procs(*args, *extra, prefix=prefix)


def public_ports(p):
    return [int(m.group(2)) for m in map(PUBLIC_RE.match, p.messages()) if m]


def wait_public(p, count=1, timeout=READY_TIMEOUT_S):
    """The public port of the count-th "public at" line of client p."""
    p.wait_log(PUBLIC_RE.pattern, timeout=timeout, count=count)
    return public_ports(p)[count - 1]


def status_json(ctl):
    r = run_pinhole("status", "--control", ctl, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def echo_check(port, msg=None):
    """One visitor through port: its own bytes come back."""
    msg = msg or f"visitor {os.urandom(6).hex()}\n".encode()
    c = connect("127.0.0.1", port)
    try:
        echo_once(c, msg)
    finally:
        c.close()


def lenient(handler):
    """handler, but a reset that beats its own FIN is no error: a session or process that
    goes away resets the streams it carried, and a test may end one at once."""

    def run(conn, peer):
        try:
            handler(conn, peer)
        except BrokenPipeError:
            pass
        except OSError as e:
            if e.errno != errno.ENOTCONN:
                raise

    return run


echo = lenient(echo_handler)


def curl(*args, timeout=25, check=True):
    return run_peer(["curl", "--silent", "--show-error", "--noproxy", "*", "--max-time",
                     str(timeout - 5), "--connect-timeout", "5", *args], timeout=timeout,
                    check=check)


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def echo_expose(procs, tmp_path, keys, echo_server, hb=None, **kw):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys, hb=hb, **kw)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", hb=hb)
    pub = wait_public(x)
    echo_check(pub)
    return relay, x, pub


# ---------------------------------------------------------------------------------------------
# 1. real peers: curl, socat, ssh


def test_curl_through_the_relay(procs, tmp_path, keys, web):
    relay = start_relay(procs, tmp_path, keys)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{web.http_port}",
                     "--name", "web", control=tmp_path / "x.sock")
    pub = wait_public(x)
    assert relay.lo <= pub <= relay.hi, f"port {pub} outside --ports {relay.lo}-{relay.hi}"
    assert listeners(pub) and all("127.0.0.1:" in ln for ln in listeners(pub)), listeners(pub)
    base = f"http://127.0.0.1:{pub}"
    assert curl("--fail", f"{base}/index.html").stdout == web.index
    body = curl("--fail", f"{base}/big.bin").stdout
    assert len(body) == len(web.big) and sha256(body) == sha256(web.big)
    r = curl("--output", "/dev/null", "--write-out", "%{http_code}", f"{base}/missing")
    assert r.stdout == b"404"
    # three requests in one keep-alive connection
    r = curl("--fail", f"{base}/index.html", f"{base}/index.html", f"{base}/index.html")
    assert r.stdout == web.index * 3

    relay.proc.wait_log(rf"^client 127\.0\.0\.1:\d+ \(alice\): exposes tcp port {pub} as web$")
    st = relay.status()["relay"]
    assert len(st["sessions"]) == 1, st
    assert st["sessions"][0]["key"] == keys.alice.fp and st["sessions"][0]["comment"] == "alice"
    svc = st["services"]
    assert [(s["proto"], s["port"], s["name"], s["held"]) for s in svc] == \
        [("tcp", pub, "web", False)], svc
    assert svc[0]["visitors"] >= 4, svc
    cs = status_json(tmp_path / "x.sock")["expose"]
    assert len(cs) == 1 and cs[0]["relay"] == f"127.0.0.1:{relay.port}" and cs[0]["up"], cs
    assert [(r["name"], r["state"], r["port"]) for r in cs[0]["rules"]] == \
        [("web", "public", pub)], cs
    # the known_relays file learned the relay's key on first sight
    assert (tmp_path / "known_relays").read_text() == \
        f"127.0.0.1:{relay.port} {keys.relay.fp}\n"


def test_socat_both_ways(procs, tmp_path, keys, spawn):
    """socat as the visitor and as the local service: an echo (cat), a download (a file
    sent, then FIN) and an upload (the visitor's FIN ends the file)."""
    relay = start_relay(procs, tmp_path, keys)
    echo_p, down_p, up_p = alloc_port(), alloc_port(), alloc_port()
    blob = os.urandom(3 * MiB + 5)
    (tmp_path / "down.bin").write_bytes(blob)
    upfile = tmp_path / "up.bin"
    spawn(["socat", f"TCP-LISTEN:{echo_p},bind=127.0.0.1,reuseaddr,fork", "EXEC:cat"],
          port=echo_p)
    spawn(["socat", "-U", f"TCP-LISTEN:{down_p},bind=127.0.0.1,reuseaddr,fork",
           f"OPEN:{tmp_path / 'down.bin'},rdonly"], port=down_p)
    up_srv = spawn(["socat", "-u", f"TCP-LISTEN:{up_p},bind=127.0.0.1,reuseaddr",
                    f"CREATE:{upfile}"], port=up_p)
    conf = tmp_path / "expose.conf"
    via = (f"--via 127.0.0.1:{relay.port} --key {keys.alice.path} "
           f"--known-relays {tmp_path / 'known_relays'}")
    conf.write_text(f"expose 127.0.0.1:{echo_p} {via} --name echo\n"
                    f"expose 127.0.0.1:{down_p} {via} --name down\n"
                    f"expose 127.0.0.1:{up_p} {via} --name up\n")
    x = procs("run", conf, "--control", tmp_path / "x.sock", "--drain-timeout", "2s")
    wait_public(x, count=3)
    pub = {r["name"]: r["port"] for r in status_json(tmp_path / "x.sock")["expose"][0]["rules"]}

    data = os.urandom(MiB + 3)
    r = run_peer(["socat", "-t", "5", "-T", "5", "-", f"TCP:127.0.0.1:{pub['echo']}"],
                 input=data, timeout=20)
    assert len(r.stdout) == len(data) and sha256(r.stdout) == sha256(data)

    r = run_peer(["socat", "-T", "5", "-u", f"TCP:127.0.0.1:{pub['down']}", "STDOUT"],
                 timeout=20)
    assert len(r.stdout) == len(blob) and sha256(r.stdout) == sha256(blob)

    up = os.urandom(2 * MiB + 1)
    run_peer(["socat", "-T", "5", "-u", "STDIN", f"TCP:127.0.0.1:{pub['up']}"], input=up,
             timeout=20)
    try:  # its one connection ended: the visitor's FIN came through
        up_srv.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail("the upload's FIN did not reach the local socat within 5 s")
    assert up_srv.returncode == 0
    got = upfile.read_bytes()
    assert len(got) == len(up) and sha256(got) == sha256(up)


SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {d}/ssh_host_ed25519_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
X11Forwarding no
PrintMotd no
LogLevel VERBOSE
"""


def test_ssh_through_the_relay(procs, tmp_path, keys, spawn):
    if os.geteuid() != 0:
        pytest.skip("sshd must run as root to log a user in (run the suite as root)")
    for tool in ("/usr/sbin/sshd", shutil.which("ssh"), shutil.which("ssh-keygen")):
        if tool is None or not os.access(tool, os.X_OK):
            pytest.skip("OpenSSH is not installed (openssh-server, openssh-client)")
    d = tmp_path / "ssh"
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

    relay = start_relay(procs, tmp_path, keys)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{port}", "--name", "ssh")
    pub = wait_public(x)
    ssh = ["ssh", "-F", "/dev/null", "-p", str(pub), "-i", str(d / "id"), "-o",
           "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
           "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "root@127.0.0.1"]
    r = run_peer([*ssh, "echo", "hello"], timeout=30)
    assert r.stdout == b"hello\n", r
    # bytes both ways inside ssh: stdin up, its digest and 1 MiB of zeros back
    data = os.urandom(2 * MiB)
    r = run_peer([*ssh, "sha256sum; head -c 1048576 /dev/zero"], input=data, timeout=30)
    assert r.stdout[:64].decode() == sha256(data), r.stdout[:100]
    assert r.stdout.endswith(b"\0" * MiB) and len(r.stdout) == 64 + len("  -\n") + MiB
    relay.proc.wait_log(rf"exposes tcp port {pub} as ssh$")


# ---------------------------------------------------------------------------------------------
# 2. bulk data and many visitors


@pytest.mark.parametrize("way", ["down", "up", "both"])
def test_64mib_slow(procs, tmp_path, keys, tcp_server, way):
    """64 MiB from the local service to the visitor, from the visitor to it, and both at
    once, each checked by sha256 on the other end. The ends count bytes rather than wait for
    a FIN (test_half_close_is_carried is about that)."""
    size = 64 * MiB
    down = os.urandom(size) if way != "up" else b""
    up = os.urandom(size) if way != "down" else b""
    results = queue.Queue()

    def service(conn, peer):
        t = send_in_thread(conn, down, shut=False)
        got = recv_exact(conn, len(up)) if up else b""
        t.join(SOCK_TIMEOUT_S * 6)
        results.put((len(got), sha256(got), t.error, t.is_alive()))
        conn.sendall(hashlib.sha256(got).digest())  # what came, as the service saw it
        recv_exact(conn, 4)  # the visitor's "done": it has everything, the service may go

    srv = tcp_server(service)
    relay = start_relay(procs, tmp_path, keys)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}")
    pub = wait_public(x)
    c = connect("127.0.0.1", pub)
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
    assert sha256(got[:len(down)]) == sha256(down), "the visitor got other bytes"
    total = len(up) + len(down)
    print(f"{way}: {total / MiB:.0f} MiB in {elapsed:.2f} s ({total / MiB / elapsed:.0f} MiB/s)")


@pytest.mark.parametrize("way", ["up", "down"])
def test_half_close_is_carried(procs, tmp_path, keys, tcp_server, way):
    """A FIN crosses the relay each way, whatever came just before it: up, the visitor sends
    and half-closes at once, the service answers what it got once it sees the FIN; down, the
    visitor half-closes first, the service sends and half-closes at once, and the visitor
    must see the FIN after the last byte. Each round waits at most 5 s for its FIN."""
    payloads = queue.Queue()

    def service(conn, peer):
        conn.settimeout(5)
        try:
            if way == "up":
                got = recv_until_eof(conn)
                conn.sendall(f"{len(got)} {sha256(got)}".encode())
            else:
                data = payloads.get(timeout=5)
                recv_until_eof(conn)  # the visitor's early FIN
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except (socket.timeout, queue.Empty):
            pass  # a FIN that never came: the visitor's side fails the test, saying which

    srv = tcp_server(lenient(service))
    relay = start_relay(procs, tmp_path, keys)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}")
    pub = wait_public(x)
    sizes = [1, 10, 1000, 16383, 16384, 20000, 100000, MiB, 8 * MiB, 32 * MiB]
    for rnd in range(2):
        for size in sizes:
            data = os.urandom(size)
            c = connect("127.0.0.1", pub, timeout=5)
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
                    pytest.fail(f"{way}, {size} bytes, round {rnd + 1}: no FIN within 5 s")
                assert got == want, f"{way}, {size} bytes: wrong bytes back"
            finally:
                c.close()


def test_500_concurrent_visitors(procs, tmp_path, keys, echo_server):
    """500 visitors at once, each its own payload echoed, all open together."""
    n = 500
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}")
    pub = wait_public(x)
    t0 = time.monotonic()
    replies, errors = many_echo("127.0.0.1", pub, n, timeout=40)
    elapsed = time.monotonic() - t0
    assert not errors, f"{len(errors)} of {n} failed, e.g. {sorted(errors.items())[:5]}"
    assert len(replies) == n
    assert srv.accepted == n
    assert srv.max_live == n, f"only {srv.max_live} local connections were open at once"
    print(f"{n} concurrent visitors echoed in {elapsed:.2f} s")
    # every stream is gone again on both sides once the visitors have closed
    wait_until(lambda: relay.status()["relay"]["sessions"][0]["streams"] == 0, 10,
               "the relay's streams to close")
    wait_until(lambda: srv.live == 0, 10, "the local connections to close")
    st = relay.status()["relay"]
    assert st["sessions"][0]["streams_total"] == n, st
    assert st["services"][0]["visitors"] == n, st


# ---------------------------------------------------------------------------------------------
# 3. UDP


def test_udp_echo(procs, tmp_path, keys, udp_echo):
    srv = udp_echo(tag=b"echo:")
    relay = start_relay(procs, tmp_path, keys)
    x = start_expose(procs, tmp_path, keys, relay.port, f"udp://127.0.0.1:{srv.port}",
                     "--name", "echo")
    pub = wait_public(x)
    assert relay.lo <= pub <= relay.hi
    assert "(udp)" in next(m for m in x.messages() if PUBLIC_RE.match(m))
    relay.proc.wait_log(rf"exposes udp port {pub} as echo$")
    visitors = []
    try:
        for _ in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(0.5)
            s.bind(("127.0.0.1", 0))
            visitors.append(s)
        sizes = [1, 100, 1200, 8000, 16000]
        for i in range(20):
            for v, s in enumerate(visitors):
                msg = f"{v}:{i}:".encode() + os.urandom(sizes[i % len(sizes)])
                for _attempt in range(5):  # UDP: a lost datagram is sent again, boundedly
                    s.sendto(msg, ("127.0.0.1", pub))
                    try:
                        data, frm = s.recvfrom(65536)
                    except socket.timeout:
                        continue
                    assert frm == ("127.0.0.1", pub), frm
                    assert data == b"echo:" + msg, (len(data), data[:20], msg[:20])
                    break
                else:
                    pytest.fail(f"no echo for visitor {v} datagram {i}")
    finally:
        for s in visitors:
            s.close()
    # one flow (local socket) per visitor
    assert len(srv.ports()) == 3, srv.ports()
    st = relay.status()["relay"]
    assert st["services"][0]["proto"] == "udp" and st["services"][0]["datagrams"] >= 60, st


def test_dns_to_dnsmasq(procs, tmp_path, keys, spawn):
    """dig through the relay to dnsmasq, over UDP and over TCP (two rules, one session)."""
    port = free_udp_port()
    spawn(["dnsmasq", "--no-daemon", "--port", str(port), "--listen-address", "127.0.0.1",
           "--bind-interfaces", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
           "--pid-file", "--address=/x.test/10.1.2.3", "--address=/y.test/10.4.5.6"],
          port=port)  # dnsmasq serves TCP on the same port: that is what `ss` waits for
    relay = start_relay(procs, tmp_path, keys)
    conf = tmp_path / "expose.conf"
    via = (f"--via 127.0.0.1:{relay.port} --key {keys.alice.path} "
           f"--known-relays {tmp_path / 'known_relays'}")
    conf.write_text(f"expose udp://127.0.0.1:{port} {via} --name dns\n"
                    f"expose 127.0.0.1:{port} {via} --name dnstcp\n")
    x = procs("run", conf, "--control", tmp_path / "x.sock", "--drain-timeout", "2s")
    wait_public(x, count=2)
    pub = {r["name"]: r["port"] for r in status_json(tmp_path / "x.sock")["expose"][0]["rules"]}
    dig = ["dig", "@127.0.0.1", "+short", "+time=2", "+tries=3"]
    r = run_peer([*dig, "-p", str(pub["dns"]), "x.test"], timeout=20)
    assert r.stdout.decode().split() == ["10.1.2.3"], r
    r = run_peer([*dig, "-p", str(pub["dns"]), "y.test"], timeout=20)
    assert r.stdout.decode().split() == ["10.4.5.6"], r
    r = run_peer([*dig, "+tcp", "-p", str(pub["dnstcp"]), "x.test"], timeout=20)
    assert r.stdout.decode().split() == ["10.1.2.3"], r
    assert len(relay.status()["relay"]["sessions"]) == 1


# ---------------------------------------------------------------------------------------------
# 4. PROXY protocol

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def read_proxy_header(conn, ver):
    """Reads a PROXY protocol header: (header bytes, bytes that came after it)."""
    buf = bytearray()
    if ver == "v1":
        while b"\r\n" not in buf:
            d = conn.recv(256)
            assert d, f"EOF inside the v1 header: {bytes(buf)!r}"
            buf += d
            assert len(buf) <= 107 + 256, f"no CRLF in {bytes(buf)!r}"
        end = buf.index(b"\r\n") + 2
        assert end <= 107, f"a v1 header over 107 bytes: {bytes(buf[:end])!r}"
    else:
        while len(buf) < 16:
            d = conn.recv(256)
            assert d, f"EOF inside the v2 header: {bytes(buf)!r}"
            buf += d
        assert buf[:12] == V2_SIG, f"no v2 signature: {bytes(buf[:16])!r}"
        end = 16 + struct.unpack("!H", buf[14:16])[0]
        while len(buf) < end:
            d = conn.recv(256)
            assert d, "EOF inside the v2 header"
            buf += d
    return bytes(buf[:end]), bytes(buf[end:])


@pytest.mark.parametrize("ver", ["v1", "v2"])
def test_proxy_protocol(procs, tmp_path, keys, tcp_server, ver):
    """The local service learns the visitor's address (127.0.0.7 here) and the public port
    it came to from the header; the visitor's bytes follow it unchanged."""
    headers = queue.Queue()

    def service(conn, peer):
        head, rest = read_proxy_header(conn, ver)
        headers.put(head)
        if rest:
            conn.sendall(rest)
        echo(conn, peer)

    srv = tcp_server(service)
    relay = start_relay(procs, tmp_path, keys)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                     "--proxy-protocol", ver)
    pub = wait_public(x)
    for i in range(3):
        c = connect("127.0.0.1", pub, source="127.0.0.7")
        try:
            sport = c.getsockname()[1]
            echo_once(c, f"after the header #{i}".encode() * (1 + 500 * i))
        finally:
            c.close()
        head = headers.get(timeout=SOCK_TIMEOUT_S)
        if ver == "v1":
            assert head == f"PROXY TCP4 127.0.0.7 127.0.0.1 {sport} {pub}\r\n".encode(), head
        else:
            assert head[12] == 0x21, f"version/command {head[12]:#x}: not v2 PROXY"
            assert head[13] == 0x11, f"family/protocol {head[13]:#x}: not TCP over IPv4"
            src, dst, sp, dp = struct.unpack("!4s4sHH", head[16:28])
            assert (socket.inet_ntoa(src), sp) == ("127.0.0.7", sport), head
            assert (socket.inet_ntoa(dst), dp) == ("127.0.0.1", pub), head


# ---------------------------------------------------------------------------------------------
# 5. ports and sessions


def test_port_zero_and_two_rules_share_a_session(procs, tmp_path, keys, echo_server):
    a = echo_server(handler=lenient(tagged_echo_handler(b"A:")))
    b = echo_server(handler=lenient(tagged_echo_handler(b"B:")))
    relay = start_relay(procs, tmp_path, keys, nports=4)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{a.port}", "--port", "0")
    p0 = wait_public(x)
    assert relay.lo <= p0 <= relay.hi, f"--port 0 gave {p0}, not in {relay.lo}-{relay.hi}"
    x.stop()
    relay.proc.wait_log(r"session ended: the peer ended the session")

    conf = tmp_path / "expose.conf"
    via = (f"--via 127.0.0.1:{relay.port} --key {keys.alice.path} "
           f"--known-relays {tmp_path / 'known_relays'}")
    conf.write_text(f"# two rules, one relay: one session\n"
                    f"expose 127.0.0.1:{a.port} {via} --name a --port 0\n"
                    f"expose 127.0.0.1:{b.port} {via} --name b\n")
    r = run_pinhole("run", conf, "--check")
    assert r.returncode == 0, r.stdout + r.stderr
    run = procs("run", conf, "--control", tmp_path / "x.sock", "--drain-timeout", "2s")
    wait_public(run, count=2)
    cs = status_json(tmp_path / "x.sock")["expose"]
    assert len(cs) == 1 and cs[0]["up"], cs
    rules = {r["name"]: r for r in cs[0]["rules"]}
    assert set(rules) == {"a", "b"} and all(r["state"] == "public" for r in rules.values())
    pa, pb = rules["a"]["port"], rules["b"]["port"]
    assert pa != pb and all(relay.lo <= p <= relay.hi for p in (pa, pb)), (pa, pb)
    st = relay.status()["relay"]
    assert len(st["sessions"]) == 1, f"two rules made {len(st['sessions'])} sessions: {st}"
    peer = st["sessions"][0]["peer"]
    live = [s for s in st["services"] if not s["held"]]
    assert sorted((s["name"], s["client"]) for s in live) == [("a", peer), ("b", peer)], st
    for port, tag in ((pa, b"A:"), (pb, b"B:")):
        c = connect("127.0.0.1", port)
        c.sendall(b"which one?")
        assert recv_exact(c, 12) == tag + b"which one?"
        c.close()
    assert sum("session up" in m for m in run.messages()) == 1


# ---------------------------------------------------------------------------------------------
# 6. reconnection


def test_killed_client_takes_its_port_back(procs, tmp_path, keys, echo_server):
    """SIGKILL and start again, twice: the same public port at once, with --port 0 and a
    --name (the relay held it for the key)."""
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)  # the default heartbeat: ports held 30 s
    args = (relay.port, f"127.0.0.1:{srv.port}", "--port", "0", "--name", "web")
    x = start_expose(procs, tmp_path, keys, *args)
    pub = wait_public(x)
    echo_check(pub)
    for round_ in range(2):
        kill9(x)
        relay.proc.wait_log(r"session ended: ", count=round_ + 1)
        assert listeners(pub), "the relay let go of the port of a client that just died"
        t0 = time.monotonic()
        x = start_expose(procs, tmp_path, keys, *args)
        again = wait_public(x)
        took = time.monotonic() - t0
        assert again == pub, f"restart #{round_ + 1}: port {again}, it had {pub}"
        assert took < 3, f"restart #{round_ + 1}: the port came back after {took:.1f} s"
        relay.proc.wait_log(rf"took back tcp port {pub} as web$", count=round_ + 1)
        echo_check(pub)
    assert not any("address in use" in m or "in use" in m for m in x.messages()), x.log


@pytest.mark.parametrize("how", ["term", "kill"])
def test_relay_restart_client_comes_back(procs, tmp_path, keys, echo_server, how):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys, hb=HB)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                     "--name", "web", hb=HB)
    pub = wait_public(x)
    echo_check(pub)
    if how == "term":
        relay.proc.stop()
    else:
        kill9(relay.proc)
    wait_not_listening(pub)
    relay2 = restart_relay(procs, tmp_path, keys, relay)
    t0 = time.monotonic()
    again = wait_public(x, count=2, timeout=15)
    print(f"the client was back {time.monotonic() - t0:.2f} s after the relay")
    assert again == pub, f"the client got {again} after the restart, had {pub}"
    echo_check(pub)
    relay2.proc.wait_log(rf"exposes tcp port {pub} as web$")
    assert x.proc.poll() is None


def test_client_started_before_the_relay(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    port = alloc_port()
    x = start_expose(procs, tmp_path, keys, port, f"127.0.0.1:{srv.port}", hb=HB)
    x.wait_log(rf"^relay 127\.0\.0\.1:{port}: .*trying again in", count=2, timeout=10)
    relay = start_relay(procs, tmp_path, keys, port=port, hb=HB)
    t0 = time.monotonic()
    pub = wait_public(x, timeout=15)
    print(f"the client connected {time.monotonic() - t0:.2f} s after the relay came up")
    echo_check(pub)
    assert relay.alive()


def test_dead_client_port_is_freed_after_3_heartbeats_slow(procs, tmp_path, keys, echo_server):
    relay, x, pub = echo_expose(procs, tmp_path, keys, echo_server, hb=HB)
    kill9(x)
    relay.proc.wait_log(r"session ended: ")
    t0 = time.monotonic()
    assert listeners(pub), "a dead client's port went at once: not held for it"
    assert relay.status()["relay"]["services"][0]["held"] is True
    wait_not_listening(pub, timeout=3 * HB_S + 4)
    gone = time.monotonic() - t0
    assert gone >= 3 * HB_S - 1.0, f"the port went after {gone:.1f} s, not 3 heartbeats"
    relay.proc.wait_log(rf"tcp port {pub} \(\S*\) closed: its client did not come back")
    assert relay.status()["relay"]["services"] == []
    print(f"port freed {gone:.2f} s after the session ended")


def test_frozen_client_is_dropped_then_comes_back_slow(procs, tmp_path, keys, echo_server):
    """SIGSTOP: the session stays open but silent. The relay drops it after 3 heartbeats
    and frees the port 3 later; SIGCONT: the client notices and registers again."""
    relay, x, pub = echo_expose(procs, tmp_path, keys, echo_server, hb=HB)
    x.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        relay.proc.wait_log(r"session ended: ", timeout=3 * HB_S + 5)
        dropped = time.monotonic() - t0
        wait_not_listening(pub, timeout=3 * HB_S + 5)
        freed = time.monotonic() - t0
    finally:
        x.send_signal(signal.SIGCONT)
    print(f"frozen client dropped after {dropped:.1f} s, port freed after {freed:.1f} s")
    assert dropped >= 2 * HB_S, f"dropped after {dropped:.1f} s: too soon for 3 heartbeats"
    again = wait_public(x, count=2, timeout=15)
    echo_check(again)


# ---------------------------------------------------------------------------------------------
# 7. who may do what


def test_unauthorized_key_is_refused(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys, verbose=True)
    want = relay.lo
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", "--port", want,
                     key=keys.mallory)
    relay.proc.wait_log(rf"key {re.escape(keys.mallory.fp)} is refused: not in "
                        rf"{re.escape(str(relay.auth))}$",
                        timeout=10)
    relay.proc.wait_log(r"^client 127\.0\.0\.1:\d+: TLS handshake", timeout=10)
    x.wait_log(rf"refused the session .*{re.escape(keys.mallory.fp)}", timeout=10)
    x.wait_log(r"trying again", timeout=10)
    assert not listeners(want), f"port {want} opened for an unauthorized key"
    assert not public_ports(x)
    msgs = relay.messages()
    assert not any(keys.mallory.fp in m and "exposes" in m for m in msgs)
    assert not any("exposes" in m for m in msgs), msgs
    assert relay.status()["relay"]["sessions"] == []


def test_refused_key_backs_off_slow(procs, tmp_path, keys, echo_server):
    """A key the relay does not know: the client retries with growing back-off (0.5 s
    doubling), not several times a second."""
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys, verbose=True)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                     key=keys.mallory)
    relay.proc.wait_log(r"TLS handshake", timeout=10)
    t0 = time.monotonic()
    wait_until(lambda: time.monotonic() - t0 > 6, 8, "6 s to pass")  # a bounded observation
    tries = sum(1 for m in relay.messages() if "TLS handshake" in m)
    # with 0.5 s doubling (jitter: half to all) 6 s hold at most 6 attempts after the first
    assert tries <= 7, f"{tries} attempts in ~6 s: the back-off does not grow; client log:\n" \
        + "\n".join(x.messages()[:12])
    assert not any("session up" in m for m in x.messages()), \
        "the client says 'session up' for a session the relay refused"


def test_names_limit(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys, auth=[f"names=web|ssh {keys.alice.line}"])
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", "--name", "db")
    assert exit_status(x) == 1, x.log
    assert any(re.search(r"the relay refused it: .*'db'.*names=web\|ssh", m)
               for m in x.messages()), x.log
    relay.proc.wait_log(r"refused: .*names=web\|ssh")
    # without a name, a names= key is refused too; with one of them it works
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}")
    assert exit_status(x) == 1, x.log
    assert "names=web|ssh" in x.log
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", "--name", "ssh")
    echo_check(wait_public(x))
    assert [s["name"] for s in relay.status()["relay"]["services"]] == ["ssh"]


def test_ports_limit(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    lo, hi = port_range(6)
    relay = start_relay(procs, tmp_path, keys, ports=(lo, hi),
                        auth=[f"ports={lo}-{lo + 1}|{hi} {keys.alice.line}"])
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                     "--port", lo + 3)
    assert exit_status(x) == 1, x.log
    want = f"port {lo + 3} is outside this key's ports={lo}-{lo + 1}|{hi}"
    assert any(want in m and "the relay refused it" in m for m in x.messages()), x.log
    relay.proc.wait_log(re.escape(f"refused: {want}"))
    assert not listeners(lo + 3)
    # a port outside the relay's --ports altogether, for a key without ports=
    relay2 = start_relay(procs, tmp_path, keys, ports=(lo + 2, lo + 3))
    x = start_expose(procs, tmp_path, keys, relay2.port, f"127.0.0.1:{srv.port}", "--port", hi)
    assert exit_status(x) == 1, x.log
    assert f"port {hi} is outside the relay's --ports {lo + 2}-{lo + 3}" in x.log, x.log
    # inside: fine, and --port 0 picks from the key's ranges
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", "--port", hi)
    assert wait_public(x) == hi
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", "--name", "z")
    assert wait_public(x) in (lo, lo + 1)


def test_max_services_limit(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys, auth=[f"max=1 {keys.alice.line}"])
    x1 = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", "--name", "one")
    echo_check(wait_public(x1))
    x2 = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", "--name", "two")
    assert exit_status(x2) == 1, x2.log
    assert "max=1" in x2.log and "the relay refused it" in x2.log, x2.log
    relay.proc.wait_log(r"refused: .*max=1")
    assert [s["name"] for s in relay.status()["relay"]["services"]] == ["one"]


def exit_status(x, timeout=10):
    """Waits for client x to exit by itself; its status (teardown then checks only that no
    sanitizer spoke: the test asserts the status itself)."""
    rc = x.wait_exit(timeout=timeout)
    x.expect_rc = rc
    return rc


def test_wrong_relay_key_pin(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                     "--relay-key", keys.bob.fp)
    assert exit_status(x) == 1, x.log
    line = next((m for m in x.messages() if keys.relay.fp in m), None)
    assert line is not None and keys.bob.fp in line, x.log
    assert not (tmp_path / "known_relays").exists() or \
        keys.relay.fp not in (tmp_path / "known_relays").read_text()
    assert relay.status()["relay"]["services"] == []


def test_right_relay_key_pin(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                     "--relay-key", keys.relay.fp)
    try:
        pub = wait_public(x)
    finally:
        if x.proc.poll() is not None:
            x.expect_rc = x.proc.returncode
    echo_check(pub)
    assert not (tmp_path / "known_relays").exists(), "a pinned relay went to known_relays"


def test_known_relays_mismatch(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    known = tmp_path / "known"
    known.write_text(f"# a comment\n127.0.0.1:1 {keys.alice.fp}\n"
                     f"127.0.0.1:{relay.port} {keys.bob.fp}\n")
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", known=known)
    assert exit_status(x) == 1, x.log
    line = next((m for m in x.messages() if keys.relay.fp in m), None)
    assert line is not None and keys.bob.fp in line and f"{known}:3" in line, x.log
    assert relay.status()["relay"]["services"] == []
    assert known.read_text().count("\n") == 3, "known_relays was changed"


# ---------------------------------------------------------------------------------------------
# 7b. the pin never fails open: a known_relays that cannot be read or written refuses the
# relay, the files that say whom to trust pass ssh's StrictModes, and `--user` keeps the pin

NOBODY = 65534  # nobody and nogroup on Debian


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (--user, or a client run as nobody, or chown)")


@pytest.fixture
def as_nobody(keys):
    """A client that is not root from its start: .prefix runs pinhole as nobody (setpriv),
    .key is a copy of alice's key that nobody owns, in .dir, a scratch directory in /tmp
    that nobody owns (tmp_path is root's alone), removed at the end."""
    need_root()
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    prefix = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
    probe = subprocess.run([*prefix, BIN, "--version"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run {BIN}: {probe.stderr[-300:]!r}")
    d = tempfile.mkdtemp(prefix="ph-nobody-")
    os.chown(d, NOBODY, NOBODY)
    path = os.path.join(d, "alice")
    shutil.copyfile(keys.alice.path, path)
    os.chown(path, NOBODY, NOBODY)
    os.chmod(path, 0o600)

    class AsNobody:
        pass

    n = AsNobody()
    n.prefix, n.dir, n.key = prefix, d, Key(path, keys.alice.line, keys.alice.fp)
    yield n
    shutil.rmtree(d, ignore_errors=True)


def nothing_registered(relay, x):
    assert not public_ports(x), x.log
    assert relay.status()["relay"]["services"] == []
    assert not any("exposes" in m for m in relay.messages()), relay.proc.log


@pytest.mark.parametrize("how", ["a directory", "no access"])
def test_known_relays_unreadable_is_refused(procs, tmp_path, keys, echo_server, how, request):
    """A known_relays that cannot be opened is not an empty one: the client stops at start,
    naming the file and the error, and nothing reaches the relay. ("no access": a client
    that is not root, and the file where only root may go.) Before, the first key seen
    was trusted then, and the client registered with whoever held it."""
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    if how == "a directory":
        known, key, prefix, err = tmp_path / "known_dir", None, (), "Is a directory"
        known.mkdir()
    else:
        nobody = request.getfixturevalue("as_nobody")
        (tmp_path / "root-only").mkdir(mode=0o700)
        known, key, prefix, err = tmp_path / "root-only" / "known_relays", nobody.key, \
            nobody.prefix, "Permission denied"
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", known=known,
                     key=key, prefix=prefix)
    assert exit_status(x) == 1, x.log
    assert f"pinhole: expose: known relays {known}: {err}\n" in x.log, x.log
    nothing_registered(relay, x)


def test_known_relays_read_only_refuses_a_new_relay(procs, tmp_path, keys, echo_server,
                                                    as_nobody):
    """known_relays that the client (nobody) may read but not write: a new relay cannot be
    pinned, so it is refused at each attempt, with the usual back-off, and nothing is
    registered with it; once the line is there (root adds it to the same file), the next
    attempt checks it and goes through. Before, the key was used without being pinned."""
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    known = os.path.join(as_nobody.dir, "known_relays")
    first = f"127.0.0.1:1 {keys.bob.fp}\n"
    with open(known, "w") as f:
        f.write(first)
    os.chmod(known, 0o644)  # root's: nobody may read it, not write it
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", known=known,
                     key=as_nobody.key, prefix=as_nobody.prefix)
    x.wait_log(rf"^relay 127\.0\.0\.1:{relay.port}: a new key {re.escape(keys.relay.fp)}, "
               rf"which cannot be pinned: {re.escape(known)} is read-only here \(Permission "
               rf"denied\); refusing it .*; trying again in ", timeout=10, count=2)
    nothing_registered(relay, x)
    with open(known) as f:
        assert f.read() == first
    with open(known, "a") as f:
        f.write(f"127.0.0.1:{relay.port} {keys.relay.fp}\n")
    echo_check(wait_public(x, timeout=15))
    assert x.proc.poll() is None


@pytest.mark.parametrize("case", ["file g+w", "file o+w", "dir g+w", "owner", "sticky dir"])
def test_known_relays_strict_modes(procs, tmp_path, keys, echo_server, case):
    """ssh's StrictModes for known_relays: a file group or others may write, or that belongs
    to another user, or in a directory group or others may write (unless sticky, as /tmp),
    could hold any relay's key: the client refuses to start, naming it and the fix."""
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    d = tmp_path / "state"
    d.mkdir()
    known = d / "known_relays"
    known.write_text("")
    known.chmod(0o600)
    real = os.path.realpath(d)
    if case == "file g+w":
        known.chmod(0o620)
        want = f"{known}: group or others may write it (mode 0620): not trusted; " \
            f"chmod go-w {known}"
    elif case == "file o+w":
        known.chmod(0o602)
        want = f"chmod go-w {known}"
    elif case == "dir g+w":
        d.chmod(0o770)
        want = f"{known}: group or others may write its directory (mode 0770): not " \
            f"trusted; chmod go-w {real}"
    elif case == "owner":
        need_root()
        os.chown(known, NOBODY, NOBODY)
        want = f"{known}: owned by uid {NOBODY}, neither root nor this process (uid 0)"
    else:
        d.chmod(0o1777)
        want = None
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", known=known)
    if want is None:  # only the owner may replace a file there: fine
        echo_check(wait_public(x))
        assert known.read_text() == f"127.0.0.1:{relay.port} {keys.relay.fp}\n"
        return
    assert exit_status(x) == 1, x.log
    assert want in x.log, x.log
    nothing_registered(relay, x)
    assert known.read_text() == ""


@pytest.mark.parametrize("case", ["file g+w", "dir o+w"])
def test_authorized_keys_strict_modes(tmp_path, keys, case):
    """ssh's StrictModes for the relay's authorized_keys: whoever may write it (or its
    directory) may let any key in, so the relay does not start, naming the file and the
    fix. Before, it started."""
    d = tmp_path / "etc"
    d.mkdir()
    auth = d / "authorized_keys"
    auth.write_text(keys.alice.line + "\n")
    if case == "file g+w":
        auth.chmod(0o664)
        want = f"pinhole: server: {auth}: group or others may write it (mode 0664): not " \
            f"trusted; chmod go-w {auth}\n"
    else:
        d.chmod(0o757)
        want = f"chmod go-w {os.path.realpath(d)}\n"
    port = alloc_port()
    r = run_pinhole("server", f"127.0.0.1:{port}", "--key", keys.relay.path,
                    "--authorized-keys", auth, "--control", "none", timeout=15)
    assert r.returncode == 1, r
    assert want in r.stderr, r.stderr
    assert not listeners(port)


def test_user_nobody_pins_on_first_use(procs, tmp_path, keys, echo_server):
    """The documented `pinhole --user nobody expose ...` as root, known_relays where only
    root may go (a directory of mode 0700, as /etc/pinhole is): it is opened before root is
    dropped, so the first key is pinned, and checked by the next sessions - the same relay
    back is let in, the same address with another key is refused naming the line. Before,
    nobody could not open the file: every key was trusted, none stored."""
    need_root()
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    (tmp_path / "etc").mkdir(mode=0o700)
    known = tmp_path / "etc" / "known_relays"
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", known=known,
                     pre=("--user", "nobody"))
    x.wait_log(rf"^running as nobody \(uid {NOBODY}, ")
    pub = wait_public(x)
    echo_check(pub)
    with open(f"/proc/{x.pid}/status") as f:
        assert re.search(rf"^Uid:\s+{NOBODY}\s+{NOBODY}\s", f.read(), re.M)
    pinned = f"127.0.0.1:{relay.port} {keys.relay.fp}\n"
    assert known.read_text() == pinned
    st = os.stat(known)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600, st
    relay.proc.stop()
    relay2 = restart_relay(procs, tmp_path, keys, relay)
    assert wait_public(x, count=2, timeout=15) == pub
    assert known.read_text() == pinned  # checked, not stored twice
    relay2.proc.stop()
    start_relay(procs, tmp_path, keys, key=keys.bob, port=relay.port, ports=(relay.lo, relay.hi))
    assert exit_status(x, timeout=20) == 1, x.log
    assert any(keys.bob.fp in m and f"{known}:1 says {keys.relay.fp}" in m
               for m in x.messages()), x.log
    assert known.read_text() == pinned


@pytest.mark.parametrize("content", ["", "# only a comment\n\n"])
def test_relay_refuses_to_start_without_keys(tmp_path, keys, content):
    auth = tmp_path / "authorized_keys"
    auth.write_text(content)
    port = alloc_port()
    r = run_pinhole("server", f"127.0.0.1:{port}", "--key", keys.relay.path,
                    "--authorized-keys", auth, "--control", "none", timeout=15)
    assert r.returncode == 1, r
    assert str(auth) in r.stderr and "no key" in r.stderr, r.stderr
    assert not listeners(port)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_relay_on_a_busy_port(tmp_path, keys, host, ipv6):
    """The reason in words (not "Unknown error -98"), said once, and an IPv6 address in
    brackets as it is written on the command line."""
    auth = tmp_path / "authorized_keys"
    auth.write_text(keys.alice.line + "\n")
    port = alloc_port()
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    busy = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        busy.bind((host, port))
        busy.listen(1)
        r = run_pinhole("server", shown, "--key", keys.relay.path, "--authorized-keys", auth,
                        "--control", "none", timeout=15)
    finally:
        busy.close()
    assert r.returncode == 1, r
    assert r.stderr.splitlines()[-1] == (f"pinhole: server: cannot listen on {shown}: address "
                                         "already in use (another program listens there)"), \
        r.stderr


def test_relay_on_ipv6_says_its_address_in_brackets(procs, tmp_path, keys, ipv6):
    auth = tmp_path / "authorized_keys"
    auth.write_text(keys.alice.line + "\n")
    port = alloc_port()
    p = procs("server", f"[::1]:{port}", "--key", keys.relay.path, "--authorized-keys", auth,
              "--control", "none")
    p.wait_log(rf"^relay on \[::1\]:{port}, key ", timeout=READY_TIMEOUT_S)


def test_expose_over_ipv6_says_addresses_in_brackets(procs, tmp_path, keys, echo_server, ipv6):
    srv = echo_server(host="::1", handler=echo)
    auth = tmp_path / "authorized_keys"
    auth.write_text(keys.alice.line + "\n")
    port = alloc_port()
    lo, hi = port_range(4)
    relay = procs("server", f"[::1]:{port}", "--key", keys.relay.path, "--authorized-keys", auth,
                  "--bind", "::1", "--ports", f"{lo}-{hi}", "--control", "none")
    relay.wait_log(r"^relay on ", timeout=READY_TIMEOUT_S)
    x = procs("expose", f"[::1]:{srv.port}", "--via", f"[::1]:{port}", "--key", keys.alice.path,
              "--known-relays", tmp_path / "known_relays", "--control", "none")
    m = x.wait_log(rf"^expose \[::1\]:{srv.port}: public at \[::1\]:(\d+)$",
                   timeout=READY_TIMEOUT_S)
    pub = int(re.search(r"\]:(\d+)$", m[0]).group(1))
    c = connect("::1", pub)
    try:
        echo_once(c, b"over v6")
    finally:
        c.close()


def test_expose_names_why_the_relay_said_no(procs, tmp_path, keys, echo_server):
    """A relay that refuses the key, one that closes after the TLS handshake without a word,
    and no relay at all: each in its own words, never "Broken pipe"."""
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                     key=keys.mallory)
    x.wait_log(rf"^relay 127\.0\.0\.1:{relay.port}: the relay refused this client's key "
               r"\(.*alert.*\); trying again in ", timeout=10)
    nobody = alloc_port()
    y = start_expose(procs, tmp_path, keys, nobody, f"127.0.0.1:{srv.port}")
    y.wait_log(rf"^relay 127\.0\.0\.1:{nobody}: cannot connect: Connection refused; trying "
               r"again in ", timeout=10)
    for p in (x, y):
        assert not any("Broken pipe" in m for m in p.messages()), p.log


def test_expose_names_a_relay_that_closes_after_the_handshake(procs, tmp_path, keys,
                                                              echo_server, bob_cert):
    """A TLS 1.3 peer (bob's key) that takes the handshake, then resets the connection
    before a word: to the client, the relay did not accept its key."""
    srv = echo_server(handler=echo)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", alloc_port()))
    ls.listen(8)
    ls.settimeout(0.2)
    port = ls.getsockname()[1]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(bob_cert, keys.bob.path)
    stop = threading.Event()
    served = []

    def fake_relay():
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                c, _ = ls.accept()
            except OSError:
                continue
            c.settimeout(5)
            try:
                t = ctx.wrap_socket(c, server_side=True)
                served.append(True)
                time.sleep(0.2)  # the client's first frames arrive, unread
                set_rst(t)
                t.close()
            except OSError:
                c.close()

    th = threading.Thread(target=fake_relay, daemon=True)
    th.start()
    try:
        x = start_expose(procs, tmp_path, keys, port, f"127.0.0.1:{srv.port}")
        x.wait_log(rf"^relay 127\.0\.0\.1:{port}: the relay closed the connection before "
                   r"accepting this client's key \(.*\); trying again in ", timeout=10)
        assert served
        assert not any("Broken pipe" in m for m in x.messages()), x.log
    finally:
        stop.set()
        th.join(timeout=5)
        ls.close()


def test_stopped_lines_count_the_visitors(procs, tmp_path, keys, echo_server):
    """The relay's and the client's stopped: lines count what went through them, not the
    forward counters ("0 connections") of a process that runs no forward rule."""
    relay, x, pub = echo_expose(procs, tmp_path, keys, echo_server)  # 1 visitor, 21 bytes
    n = 60
    for i in range(n):
        echo_check(pub, f"v{i:08d}\n".encode())  # 10 bytes each
    total = 21 + 10 * n
    x.stop()
    relay.proc.wait_log(r"session ended: ", timeout=10)
    relay.proc.stop()
    for p, kind in ((x, "expose"), (relay.proc, "relay")):
        msgs = p.messages()
        assert msgs[-1] == (f"stopped: {kind}: 1 sessions, {n + 1} visitors, {total} B up, "
                            f"{total} B down, 0 datagrams"), p.log
        assert not any(m.startswith("stopped: 0 connections") for m in msgs), p.log


# ---------------------------------------------------------------------------------------------
# 8. hostile peers


def frame(ftype, sid=0, payload=b"", flags=0, length=None):
    return struct.pack("!BBIH", ftype, flags, sid, len(payload) if length is None else length) \
        + payload


def register_msg(req=1, proto=1, port=0, proxy=0, name=b""):
    return bytes([1]) + struct.pack("!IBHBB", req, proto, port, proxy, len(name)) + name


class RawPeer:
    """A TLS 1.3 client with bob's key, speaking frames by hand."""

    def __init__(self, port, cert, key):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert, key)
        s = connect("127.0.0.1", port)
        self.sport = s.getsockname()[1]
        self.t = ctx.wrap_socket(s, server_hostname="relay")
        self.t.settimeout(5)
        self.buf = b""

    def send(self, b):
        self.t.sendall(b)

    def next_frame(self, timeout=5):
        """(type, flags, stream, payload), or None at EOF; PINGs are answered and skipped."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 8:
                ft, fl, sid, n = struct.unpack("!BBIH", self.buf[:8])
                if len(self.buf) >= 8 + n:
                    p, self.buf = self.buf[8:8 + n], self.buf[8 + n:]
                    if ft == PING:
                        self.send(frame(PONG, 0, p))
                        continue
                    return ft, fl, sid, p
            left = deadline - time.monotonic()
            assert left > 0, "no frame from the relay in time"
            self.t.settimeout(left)
            try:
                d = self.t.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                return None
            if not d:
                return None
            self.buf += d

    def expect(self, ftype, timeout=5):
        while True:
            f = self.next_frame(timeout)
            assert f is not None, f"EOF while waiting for frame type {ftype}"
            if f[0] == ftype:
                return f

    def goaway_then_eof(self, timeout=5):
        """The GOAWAY text the relay ended with (None if it just closed), after its EOF."""
        text = None
        while True:
            f = self.next_frame(timeout)
            if f is None:
                return text
            if f[0] == GOAWAY:
                text = f[3][1:].decode(errors="replace")

    def register(self):
        """Registers a TCP service; returns its public port."""
        self.send(frame(CTRL, 0, register_msg()))
        _, _, _, p = self.expect(CTRL)
        assert p[0] == 2, f"not REGISTERED: {p!r}"
        return struct.unpack("!H", p[7:9])[0]

    def close(self):
        self.t.close()


def open_visitor(peer, rcvbuf=None):
    """Registers, brings a visitor and waits for the relay's OPEN: (visitor socket, stream)."""
    pub = peer.register()
    v = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        v.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    v.settimeout(SOCK_TIMEOUT_S)
    v.connect(("127.0.0.1", pub))
    v.sendall(b"hello")
    _, _, sid, _ = peer.expect(OPEN)
    assert sid % 2 == 0 and sid != 0, f"the relay opened stream {sid}"
    return v, sid


def h_unknown_type(peer):
    peer.send(frame(0x0c, 0, b"x"))
    return "an unknown frame type"


def h_type_255(peer):
    peer.send(frame(0xff, 7, b"x" * 10))
    return "an unknown frame type"


def h_length_over_max(peer):
    peer.send(frame(DATA, 1, length=FRAME_MAX + 1))  # the header alone: judged before payload
    return "a frame length out of its type's bounds"


def h_ctrl_65535(peer):
    peer.send(frame(CTRL, 0, length=0xffff))
    return "a frame length out of its type's bounds"


def h_truncated_then_close(peer):
    peer.send(frame(CTRL, 0, b"\x01" * 10, length=100))
    peer.close()
    return None


def h_data_never_opened(peer):
    peer.send(frame(DATA, 4, b"who?"))
    return "a frame for a stream never opened"


def h_data_never_opened_odd(peer):
    peer.send(frame(DATA, 5, b"who?"))
    return "a frame for a stream never opened"


def h_open_wrong_parity(peer):
    peer.send(frame(OPEN, 2, b"\x00\x01\x00\x00"))
    return "an OPEN with a stream id the peer may not use"


def h_window_overflow(peer):
    peer.visitor, sid = open_visitor(peer)
    peer.send(frame(WINDOW, sid, struct.pack("!I", 0x7fffffff)))
    return "a WINDOW increment of 0 or past 2 GiB"


def h_window_zero(peer):
    peer.visitor, sid = open_visitor(peer)
    peer.send(frame(WINDOW, sid, struct.pack("!I", 0)))
    return "a WINDOW increment of 0 or past 2 GiB"


def h_data_beyond_credit(peer):
    """A visitor that reads nothing: once its socket is full the relay grants no more, and
    DATA past the 256 KiB it granted last is a protocol error (bounded: 16 MiB at most)."""
    peer.visitor, sid = open_visitor(peer, rcvbuf=4096)
    chunk = frame(DATA, sid, b"z" * FRAME_MAX)
    try:
        for _ in range(1024):
            peer.send(chunk)
    except OSError:
        pass  # the relay has ended the session: what this is about
    return "DATA beyond the stream's credit"


def h_relay_only_ctrl(peer):
    peer.send(frame(CTRL, 0, b"\x02" + struct.pack("!IHH", 1, 1, 80)))
    return "a control message only the relay sends"


def h_session_frame_with_stream(peer):
    peer.send(frame(PING, 3, b"12345678"))
    return "a session frame with a stream id"


def h_unknown_flags(peer):
    peer.send(frame(DATA, 1, b"x", flags=0x80))
    return "unknown frame flags"


def h_bad_service_name(peer):
    peer.send(frame(CTRL, 0, register_msg(name=b"a b\x1b[31m")))
    return "a service name with characters other than"


def h_goaway_with_escapes(peer):
    peer.send(frame(GOAWAY, 0, b"\x00bye \x1b[31mred\x07\n"))
    return "the peer ended the session: bye ?[31mred??"


HOSTILE = {f.__name__[2:]: f for f in (
    h_unknown_type, h_type_255, h_length_over_max, h_ctrl_65535, h_truncated_then_close,
    h_data_never_opened, h_data_never_opened_odd, h_open_wrong_parity, h_window_overflow,
    h_window_zero, h_data_beyond_credit, h_relay_only_ctrl, h_session_frame_with_stream,
    h_unknown_flags, h_bad_service_name, h_goaway_with_escapes)}


def still_serving(relay, pub, rounds=3):
    assert relay.alive(), f"the relay died:\n{relay.proc.log}"
    for _ in range(rounds):
        echo_check(pub)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_tls_peer(procs, tmp_path, keys, echo_server, bob_cert, case):
    """An authorized key (bob) that breaks the frame rules: its session ends with a GOAWAY
    naming why and a log line; alice's visitors never notice."""
    relay, x, pub = echo_expose(procs, tmp_path, keys, echo_server,
                                auth=[keys.alice.line, keys.bob.line])
    peer = RawPeer(relay.port, bob_cert, keys.bob.path)
    peer.visitor = None
    try:
        relay.proc.wait_log(rf"^client 127\.0\.0\.1:{peer.sport}: key {re.escape(keys.bob.fp)} "
                            r"\(bob\)$")
        why = HOSTILE[case](peer)
        still_serving(relay, pub, rounds=1)
        ended = relay.proc.wait_log(rf"^client 127\.0\.0\.1:{peer.sport} \(bob\): session "
                                    r"ended: ", timeout=10)[0]
        if why is not None:
            assert why in ended, ended
            if not case.startswith("goaway"):
                text = peer.goaway_then_eof()
                assert text is not None and why in text, f"GOAWAY {text!r}, wanted {why!r}"
        assert all(c == "\t" or " " <= c < "\x7f" for c in relay.proc.log.replace("\n", "")), \
            "a control character from the peer reached the relay's log"
        if peer.visitor is not None:  # the visitor of the broken session is let go
            end = outcome(peer.visitor, timeout=5)
            assert end in ("eof", "reset"), f"the orphaned visitor: {end}"
    finally:
        peer.close()
        if peer.visitor is not None:
            peer.visitor.close()
    still_serving(relay, pub)
    assert [s["key"] for s in relay.status()["relay"]["sessions"]] == [keys.alice.fp]


def test_garbage_to_the_relay_port(procs, tmp_path, keys, echo_server):
    relay, x, pub = echo_expose(procs, tmp_path, keys, echo_server, verbose=True)
    payloads = [os.urandom(4096), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                b"\x16\x03\x01\x00\x05hello", b"\x16\x03\x03\xff\xff" + b"\x00" * 70000,
                b"SSH-2.0-OpenSSH_9.2\r\n", b"\x00" * 20]
    for i, data in enumerate(payloads):
        c = connect("127.0.0.1", relay.port)
        sport = c.getsockname()[1]
        try:
            try:
                c.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            c.settimeout(10)
            try:
                while c.recv(65536):  # a TLS alert may come first; then the close
                    pass
            except ConnectionResetError:
                pass
        finally:
            c.close()
        relay.proc.wait_log(rf"^client 127\.0\.0\.1:{sport}: ", timeout=10)
        still_serving(relay, pub, rounds=1)
    # a connection that sends garbage and vanishes at once, many times
    for _ in range(50):
        c = connect("127.0.0.1", relay.port)
        c.sendall(os.urandom(64))
        c.close()
    still_serving(relay, pub)
    wait_until(lambda: len(relay.status()["relay"]["sessions"]) == 1, 10,
               "the garbage sessions to be gone")


def test_handshake_flood_does_not_lock_out_clients_slow(procs, tmp_path, keys, echo_server):
    """200 connections that never start TLS: the relay keeps serving alice's visitors, and a
    client that comes during the flood gets in once the stalled handshakes time out (10 s)."""
    srv = echo_server(handler=echo)
    relay, x, pub = echo_expose(procs, tmp_path, keys, echo_server, verbose=True)
    flood = []
    try:
        for _ in range(200):
            try:
                flood.append(connect("127.0.0.1", relay.port))
            except OSError:
                break
        t0 = time.monotonic()
        still_serving(relay, pub)
        late = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                            "--name", "late")
        p = wait_public(late, timeout=30)
        took = time.monotonic() - t0
        print(f"a client got in {took:.1f} s into a flood of {len(flood)} stalled handshakes")
        echo_check(p)
        still_serving(relay, pub)
        relay.proc.wait_log(r"no TLS handshake within 10 s", timeout=15)
    finally:
        for c in flood:
            c.close()


class StalledHandshakes:
    """A thread that keeps n connections to port open without a byte of TLS, from source,
    opening a new one whenever the relay drops one; stops at close() or after limit_s."""

    def __init__(self, port, n, source, limit_s):
        self.port, self.n, self.source = port, n, source
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + limit_s
        self.opened = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        sel = selectors.DefaultSelector()
        live = set()
        try:
            while not self.stopping.is_set() and time.monotonic() < self.deadline:
                while len(live) < self.n:
                    try:
                        c = connect("127.0.0.1", self.port, source=self.source, timeout=2)
                    except OSError:
                        break
                    self.opened += 1
                    live.add(c)
                    sel.register(c, selectors.EVENT_READ)
                for key, _ in sel.select(timeout=0.02):
                    c = key.fileobj
                    try:
                        c.setblocking(False)
                        gone = c.recv(1) == b""
                    except BlockingIOError:
                        gone = False
                    except OSError:
                        gone = True
                    if gone:
                        sel.unregister(c)
                        live.discard(c)
                        c.close()
        finally:
            for c in live:
                c.close()
            sel.close()

    def close(self):
        self.stopping.set()
        self.thread.join(timeout=5)


def test_sustained_handshake_flood_does_not_lock_out_clients_slow(procs, tmp_path, keys,
                                                                  echo_server):
    """100 stalled handshakes from 127.0.0.2, each one re-opened as soon as the relay drops
    it: a client from 127.0.0.1 must still get in within 20 s."""
    srv = echo_server(handler=echo)
    relay, x, pub = echo_expose(procs, tmp_path, keys, echo_server)
    flood = StalledHandshakes(relay.port, 100, "127.0.0.2", limit_s=40)
    try:
        wait_until(lambda: flood.opened >= 100, 10, "the flood to open its connections")
        late = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                            "--name", "late")
        t0 = time.monotonic()
        p = wait_public(late, timeout=20)
        print(f"a client got in {time.monotonic() - t0:.1f} s into a sustained flood "
              f"({flood.opened} connections so far)")
        echo_check(p)
    finally:
        flood.close()
    still_serving(relay, pub)


def test_non_reading_visitor_keeps_relay_memory_bounded_slow(procs, tmp_path, keys, tcp_server):
    """The local service pushes up to 300 MiB at a visitor that never reads: flow control
    must stop it; the relay's RSS stays well under 100 MiB above where it started and other
    visitors of the same session keep working."""
    limit = 300 * MiB
    sent = {"n": 0}
    stop = threading.Event()

    def service(conn, peer):
        first = recv_exact(conn, 5)
        if first != b"FLOOD":
            conn.sendall(first)
            echo(conn, peer)
            return
        chunk = os.urandom(MiB)
        conn.settimeout(0.5)
        deadline = time.monotonic() + 40
        while sent["n"] < limit and not stop.is_set() and time.monotonic() < deadline:
            try:
                sent["n"] += conn.send(chunk)
            except socket.timeout:
                continue
            except OSError:
                return

    srv = tcp_server(service)
    relay = start_relay(procs, tmp_path, keys)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}")
    pub = wait_public(x)
    echo_check(pub, b"warm up\n")
    rss0, xrss0 = vm_rss_kib(relay.proc.pid), vm_rss_kib(x.proc.pid)
    hog = connect("127.0.0.1", pub)
    try:
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        hog.sendall(b"FLOOD")
        # wait until the sender is stuck (nothing more for 1.5 s) or done, boundedly
        last, still_since, t0 = -1, time.monotonic(), time.monotonic()
        peak = peak_x = 0
        while time.monotonic() - t0 < 45:
            peak = max(peak, vm_rss_kib(relay.proc.pid))
            peak_x = max(peak_x, vm_rss_kib(x.proc.pid))
            n = sent["n"]
            if n != last:
                last, still_since = n, time.monotonic()
            elif time.monotonic() - still_since > 1.5 or n >= limit:
                break
            time.sleep(0.05)
        for _ in range(3):
            echo_check(pub)
        peak = max(peak, vm_rss_kib(relay.proc.pid))
        peak_x = max(peak_x, vm_rss_kib(x.proc.pid))
        print(f"the service got {sent['n'] / MiB:.0f} MiB out; relay RSS {rss0 // 1024} -> "
              f"peak {peak // 1024} MiB, client RSS {xrss0 // 1024} -> {peak_x // 1024} MiB")
        assert sent["n"] < limit, "300 MiB went out to a visitor that reads nothing"
        assert peak - rss0 < 100 * 1024, f"relay RSS grew by {(peak - rss0) // 1024} MiB"
        assert peak_x - xrss0 < 100 * 1024, f"client RSS grew by {(peak_x - xrss0) // 1024} MiB"
        # the hog now reads: what it gets is the service's bytes, in order, and it goes on
        hog.settimeout(10)
        got = 0
        while got < 4 * MiB:
            d = hog.recv(1 << 20)
            assert d, "EOF while draining"
            got += len(d)
    finally:
        stop.set()
        hog.close()
    still_serving(relay, pub)
