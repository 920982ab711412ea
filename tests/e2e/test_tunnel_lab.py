"""
The relay across a real NAT: `pinhole server` on the public host, `pinhole expose` on a LAN
host behind the lab's NAT router (tests/lab/lab.sh, topology: ../shared/lab/README.md),
visitors on the public side. The session is made from lan, out through the router's
masquerade; nothing in the router lets the public side in.

    lan 10.77.1.10                router                            wan 198.18.0.1
    sshd 10.77.1.10:2222          LAN 10.77.1.1, WAN 198.18.0.11    pinhole server :7835,
    http.server 127.0.0.1:8080    nft masquerade; forward:          and its public ports
    dnsmasq udp 10.77.1.10:5353   lan->wan and replies only
    python 10.77.1.10:9000/9001
    pinhole expose LOCAL ------------ session: TLS, out through ------> visitors: ssh, curl,
      --via 198.18.0.1                the NAT, kept up by its client    dig, python -> :PORT

Each test starts its own relay and clients (keys, known_relays, logs in tmp_path; `--control
none`; `--heartbeat 1s` on both sides, so a silent peer is dropped after 3 s) and stops
them: pinhole with SIGTERM (exit 0, no sanitizer report), the other peers by process group.
The reconnection tests SIGKILL or freeze the client, restart the relay, and take the
router's WAN link down; each bounds how long the service may stay away.

Needs root, iproute2 and the lab's tools (scripts/deps.sh test); skipped otherwise. The
module brings the lab up without its daemons (no miniupnpd or STUN is needed here; `lab.sh
up` tears down any lab already there) and down at the end, whatever happens. Every wait is
bounded.
"""

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import BIN, ROOT, SANITIZER_MARKS, Pinhole, wait_until

LAB_SH = os.path.join(ROOT, "tests", "lab", "lab.sh")
PY = "/usr/bin/python3"

LAN_IP = "10.77.1.10"  # the host behind the NAT: the client and its services
WAN_IP = "198.18.0.11"  # the router's external address (the client's, as the relay sees it)
RELAY_IP = "198.18.0.1"  # the public host: the relay, and the visitors
RELAY_PORT = 7835
ROUTER_WAN_DEV = "wan0"  # lab.sh: the router's link to the public segment

HEARTBEAT = "1s"
HB_TIMEOUT_S = 3  # three heartbeats: a silent peer is dropped after this long
# how a session that died is told: the heartbeat, or TCP_USER_TIMEOUT (also 3 heartbeats),
# which reports the router's ICMP "unreachable" when one came back, else ETIMEDOUT
DEAD_PEER = (r"no word from the peer for \d+ s|"
             r"session: (Connection timed out|No route to host|Network is unreachable)")
READY_S = 10  # a process up and listening (ASan is slow to start)
LAB_TOOLS = ("ip", "nft", "ping", "miniupnpd", "upnpc", "natpmpc", "socat", "stund", "stun",
             "turnserver", "turnutils_natdiscovery", "conntrack")  # what lab.sh up checks
LAB_UP_TIMEOUT_S = 60
MiB = 1 << 20

PUBLIC_RE = r"^expose {local}(?: [A-Za-z0-9._-]+)?: public at {host}:(\d+)(?: \(udp\))?( again)?$"

# both ends of the bulk test: send SIZE random bytes while reading the peer's to EOF, then
# print "sha256(sent) sha256(received) received-count errors"
BULK_PY = r"""
import hashlib, os, socket, sys, threading
mode, host, port, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = os.urandom(size)
if mode == "serve":
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((host, port))
    l.listen(1)
    l.settimeout(60)
    s, _ = l.accept()
else:
    s = socket.create_connection((host, port), timeout=10)
s.settimeout(10)  # a stall: nothing for 10 s (the whole transfer takes a few)
err = []
def send():
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    except OSError as e:
        err.append("send: %r" % e)
t = threading.Thread(target=send)
t.start()
h, n = hashlib.sha256(), 0
try:
    while True:
        d = s.recv(1 << 20)
        if not d:
            break
        h.update(d)
        n += len(d)
except OSError as e:
    err.append("recv: %r" % e)
t.join(60)
print(hashlib.sha256(data).hexdigest(), h.hexdigest(), n, "|".join(err) or "-")
"""


def _which(tool):
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _run(cmd, timeout, what=None, text=True):
    """Runs cmd to its end (CompletedProcess); past timeout its process group is killed (so
    that no child left holding the pipes can stretch the wait) and the test fails."""
    p = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=text, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        try:
            out, err = p.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            out, err = "", ""
        pytest.fail(f"{what or cmd} did not finish within {timeout} s: {out!r} {err!r}")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def ns_run(ns, *cmd, timeout=20, text=True):
    return _run(["ip", "netns", "exec", ns, *cmd], timeout, f"{cmd} in {ns}", text=text)


def ns_listening(ns, proto, port):
    """A socket listens (tcp) or is bound (udp) on port in namespace ns."""
    r = ns_run(ns, "ss", "-H", "-ltn" if proto == "tcp" else "-lun", f"sport = :{port}",
               timeout=5)
    return r.returncode == 0 and r.stdout.strip() != ""


def need(*tools):
    missing = [t for t in tools if _which(t) is None]
    if missing:
        pytest.skip(f"not installed: {' '.join(missing)} (scripts/deps.sh test)")


@pytest.fixture(scope="module")
def lab_up():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, nftables)")
    if _which("ip") is None or _run(["ip", "netns", "list"], 10).returncode != 0:
        pytest.skip("`ip netns` is not available (iproute2)")
    need(*LAB_TOOLS)
    try:
        r = _run(["bash", LAB_SH, "up", "--no-daemons"], LAB_UP_TIMEOUT_S, "lab.sh up")
        if r.returncode != 0:
            if "cannot create netns" in r.stderr:
                pytest.skip(f"cannot create network namespaces here: {r.stderr.strip()}")
            pytest.fail(f"lab.sh up exited with {r.returncode}: {r.stdout}{r.stderr}")
        yield
    finally:
        _run(["bash", LAB_SH, "down"], LAB_UP_TIMEOUT_S, "lab.sh down")


class LabPinhole(Pinhole):
    """conftest's Pinhole, whose wait_log shows the log as it is when the wait gives up."""

    def wait_log(self, pattern, timeout=5, count=1):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive_or_expected()
            hits = [m for m in self.messages() if rx.search(m)]
            if len(hits) >= count:
                return hits
            if time.monotonic() >= deadline:
                pytest.fail(f"timed out after {timeout} s waiting for /{pattern}/ x{count} in "
                            f"the log of pinhole {self.args[0]}:\n{self.log}")
            time.sleep(0.02)


class Tunnel:
    """One test's processes in the lab: the relay in wan, clients and services in lan."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.pinholes = []  # Pinhole, stopped with SIGTERM and checked at the end
        self.peers = []  # Popen of the other daemons, killed by process group
        self.relay = None
        self._keygen("relay")
        client_pub = self._keygen("client")
        (tmp_path / "authorized_keys").write_text(client_pub + "\n")

    def _keygen(self, name):
        r = _run([BIN, "keygen", "-f", self.dir / f"{name}.key", "-C", name], 10, "keygen")
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    # -- pinhole

    def _pinhole(self, ns, args):
        p = LabPinhole(args, str(self.dir), prefix=("ip", "netns", "exec", ns),
                    idx=len(self.pinholes))
        self.pinholes.append(p)
        return p

    def start_relay(self):
        """pinhole server on RELAY_IP:RELAY_PORT, the relay's key and the client's line."""
        self.relay = self._pinhole("wan", [
            "server", f"{RELAY_IP}:{RELAY_PORT}", "--key", self.dir / "relay.key",
            "--authorized-keys", self.dir / "authorized_keys", "--heartbeat", HEARTBEAT,
            "--control", "none"])
        self.relay.wait_log(rf"^relay on {re.escape(RELAY_IP)}:{RELAY_PORT}, key SHA256:",
                            timeout=READY_S)
        return self.relay

    def expose(self, local, *args):
        """pinhole expose LOCAL in lan; returns (Pinhole, its public port) once registered."""
        p = self._pinhole("lan", [
            "expose", local, "--via", RELAY_IP, *args, "--key", self.dir / "client.key",
            "--known-relays", self.dir / "known_relays", "--heartbeat", HEARTBEAT,
            "--control", "none"])
        return p, self.public_port(p, local)

    def public_port(self, p, local, count=1, timeout=READY_S):
        """The port of p's count-th 'public at' line for local."""
        rx = PUBLIC_RE.format(local=re.escape(local), host=re.escape(RELAY_IP))
        hits = p.wait_log(rx, timeout=timeout, count=count)
        return int(re.search(rx, hits[count - 1]).group(1))

    # -- the services in lan, and visitors in wan

    def peer(self, ns, cmd, name, proto=None, port=None):
        """A daemon in ns, output to tmp_path/NAME.log; waited for until it listens."""
        log = open(self.dir / f"{name}.log", "wb")
        try:
            p = subprocess.Popen(["ip", "netns", "exec", ns, *[str(c) for c in cmd]],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        finally:
            log.close()
        self.peers.append(p)
        if port is not None:
            def up():
                if p.poll() is not None:
                    pytest.fail(f"{name} exited with {p.returncode}:\n{self.peer_log(name)}")
                return ns_listening(ns, proto, port)

            wait_until(up, READY_S, f"{name} to listen on {proto} {port} in {ns}")
        return p

    def peer_log(self, name):
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def curl(self, port, path="/", timeout=5):
        return ns_run("wan", "curl", "-sS", "--fail", "--noproxy", "*", "-m", timeout,
                      f"http://{RELAY_IP}:{port}{path}", timeout=timeout + 5, text=False)

    def http_works(self, port, path, body):
        r = self.curl(port, path, timeout=1)
        return r.returncode == 0 and r.stdout == body

    # -- the end

    def close(self):
        """Stops every pinhole (SIGTERM: exit 0 and a clean sanitizer log expected) before
        the services behind them; returns the complaints."""
        problems = []
        for p in self.pinholes:
            try:
                if p.rc is None and p.proc.poll() is None:
                    p.stop()
                elif p.rc is None:  # it died by itself: fine only if the test expected it
                    p.rc = p.proc.returncode
                    p.check()
                else:
                    log = p.log
                    for mark in SANITIZER_MARKS:
                        assert mark not in log, f"sanitizer report:\n{log}"
            except BaseException as e:  # pytest.fail raises a BaseException subclass
                problems.append(f"{' '.join(p.args)}: {e}")
                if p.proc.poll() is None:
                    p.proc.kill()
                    p.proc.wait(timeout=5)
        for p in self.peers:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=5)
                except ProcessLookupError:
                    pass
        return problems


@pytest.fixture
def tun(lab_up, tmp_path):
    t = Tunnel(tmp_path)
    try:
        yield t
    finally:
        problems = t.close()
    assert not problems, "\n".join(problems)


WEB = "127.0.0.1:8080"  # http.server binds loopback: for any other address it asks DNS for
                       # the address's name first (getfqdn), and the lab has no DNS: 10+ s


def web_server(tun, size=3 * MiB + 17):
    """python3 -m http.server on lan's WEB serving one file of random bytes: (path, body)."""
    root = tun.dir / "www"
    root.mkdir(exist_ok=True)
    body = os.urandom(size)
    (root / "blob.bin").write_bytes(body)
    host, port = WEB.split(":")
    tun.peer("lan", [PY, "-m", "http.server", "-b", host, "-d", root, port], "http", "tcp", port)
    return "/blob.bin", body


def dns_server(tun):
    need("dnsmasq", "dig")
    tun.peer("lan", [_which("dnsmasq"), "-k", "-C", "/dev/null", "--no-resolv", "--no-hosts",
                     f"--listen-address={LAN_IP}", "--bind-interfaces", "-p", 5353,
                     "--address=/svc.lab/10.77.1.42", "--txt-record=ping.svc.lab,through the relay",
                     f"--pid-file={tun.dir / 'dnsmasq.pid'}", "--log-facility=-"],
             "dnsmasq", "udp", 5353)


def dig(port, name, rtype="A"):
    r = ns_run("wan", "dig", f"@{RELAY_IP}", "-p", port, name, rtype, "+short", "+time=2",
               "+tries=2", timeout=15)
    assert r.returncode == 0, f"dig {name}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    return r.stdout.strip()


# ---------------------------------------------------------------------------------------------
# real services through the relay


def test_ssh_to_lan_host_through_relay(tun):
    need("sshd", "ssh", "ssh-keygen")
    d = tun.dir
    for name in ("host_key", "user_key"):
        r = _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", d / name], 10)
        assert r.returncode == 0, r.stderr
    (d / "authorized_keys.ssh").write_text((d / "user_key.pub").read_text())
    (d / "sshd_config").write_text(
        f"ListenAddress {LAN_IP}:2222\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys.ssh'}\nUsePAM no\nStrictModes no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nLogLevel VERBOSE\n")
    # the privilege separation directory Debian's sshd insists on (the package's tmpfiles.d
    # makes it at boot; a container may lack it). It is left there: another sshd may use it.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    tun.peer("lan", [_which("sshd"), "-D", "-e", "-f", d / "sshd_config"], "sshd", "tcp", 2222)
    tun.start_relay()
    _, port = tun.expose(f"{LAN_IP}:2222", "--name", "ssh")
    # the visitor knows the lan sshd's host key under the relay's name: a strict check
    (d / "known_hosts").write_text(f"[{RELAY_IP}]:{port} {(d / 'host_key.pub').read_text()}")
    r = ns_run("wan", "ssh", "-F", "/dev/null", "-p", port, "-i", d / "user_key",
               "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
               "-o", f"UserKnownHostsFile={d / 'known_hosts'}", "-o", "ConnectTimeout=5",
               f"root@{RELAY_IP}",
               "echo sum=$((6*7)); echo conn=$SSH_CONNECTION; ip -4 -o addr show dev eth0",
               timeout=20)
    assert r.returncode == 0, f"ssh: exit {r.returncode}\n{r.stderr}\n{tun.peer_log('sshd')}"
    out = r.stdout
    assert "sum=42" in out.splitlines(), out
    # sshd sees the visitor arrive from the client, at its own lan address and port
    assert re.search(rf"^conn=\S+ \d+ {re.escape(LAN_IP)} 2222$", out, re.M), out
    assert re.search(rf"\binet {re.escape(LAN_IP)}/24\b", out), out  # it ran in lan
    # and the relay saw the client come from the router's public address: through the NAT
    tun.relay.wait_log(rf"^client {re.escape(WAN_IP)}:\d+ \(client\): exposes tcp port {port} "
                       r"as ssh$", timeout=1)


def test_http_to_lan_host_through_relay(tun):
    need("curl")
    path, body = web_server(tun)
    tun.start_relay()
    _, port = tun.expose(WEB, "--name", "web")
    for _ in range(3):  # one connection each: a stream each through the one session
        r = tun.curl(port, path, timeout=10)
        assert r.returncode == 0, f"curl: exit {r.returncode} {r.stderr!r}"
        assert len(r.stdout) == len(body) and r.stdout == body, \
            f"curl got {len(r.stdout)} bytes, expected {len(body)}"
    r = tun.curl(port, "/nothing-here", timeout=10)
    assert r.returncode == 22 and b"404" in r.stderr, (r.returncode, r.stderr)


def test_dns_over_udp_through_relay(tun):
    dns_server(tun)
    tun.start_relay()
    _, port = tun.expose(f"udp://{LAN_IP}:5353")
    assert dig(port, "svc.lab") == "10.77.1.42"
    assert dig(port, "www.svc.lab") == "10.77.1.42"
    assert dig(port, "ping.svc.lab", "TXT") == '"through the relay"'


def test_64mib_each_way_through_nat(tun):
    size = 64 * MiB
    srv = tun.peer("lan", [PY, "-c", BULK_PY, "serve", LAN_IP, 9000, size], "bulk-server",
                   "tcp", 9000)
    tun.start_relay()
    _, port = tun.expose(f"{LAN_IP}:9000")
    t0 = time.monotonic()
    r = ns_run("wan", PY, "-c", BULK_PY, "connect", RELAY_IP, port, size, timeout=80)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, f"client: exit {r.returncode}\n{r.stdout}{r.stderr}"
    srv.wait(timeout=30)
    c_sent, c_got, c_n, c_err = r.stdout.split(maxsplit=3)
    s_sent, s_got, s_n, s_err = tun.peer_log("bulk-server").split(maxsplit=3)
    assert (c_err.strip(), s_err.strip()) == ("-", "-"), \
        f"after {elapsed:.1f} s: visitor {c_n} bytes, {c_err}; lan server {s_n} bytes, {s_err}"
    assert int(c_n) == size and c_got == s_sent, "the visitor got wrong bytes"
    assert int(s_n) == size and s_got == c_sent, "the lan server got wrong bytes"
    print(f"128 MiB through the relay and the NAT in {elapsed:.2f} s")


# the end of a stream, each way: many short connections at once, each ended by one side
# right after its last bytes (so that the bytes and the FIN arrive together)
FIN_SERVER_PY = r"""
import socket, sys, threading
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
def serve(c):
    c.settimeout(10)
    try:
        if mode == "banner":  # talks first, and closes at once
            c.sendall(b"banner from lan\n")
        else:  # "reply": reads the request to its FIN, then answers and closes
            buf = b""
            while True:
                d = c.recv(65536)
                if not d:
                    break
                buf += d
            c.sendall(b"got %d bytes\n" % len(buf))
    except OSError:
        pass
    c.close()
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((host, port))
l.listen(64)
while True:
    c, _ = l.accept()
    if mode == "banner":  # at once: the banner and FIN may beat the client's connect edge
        serve(c)
    else:
        threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# prints one line a connection: "eof REPLY" or "stalled REPLY-SO-FAR" or "error ..."
FIN_VISITOR_PY = r"""
import socket, sys, threading
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
out = [None] * n
def visit(i):
    try:
        s = socket.create_connection((host, port), timeout=5)
    except OSError as e:
        out[i] = "error connect: %r" % e
        return
    s.settimeout(3)
    buf = b""
    try:
        if mode == "reply":
            s.sendall(b"x" * (1000 + i))
            s.shutdown(socket.SHUT_WR)
        while True:
            d = s.recv(65536)
            if not d:
                break
            buf += d
        out[i] = "eof " + buf.decode().strip()
    except socket.timeout:
        out[i] = "stalled " + (buf.decode().strip() or "(nothing)")
    except OSError as e:
        out[i] = "error %r after %r" % (e, buf)
    s.close()
ts = [threading.Thread(target=visit, args=(i,)) for i in range(n)]
for t in ts:
    t.start()
for t in ts:
    t.join(15)
print("\n".join(o or "error: no result" for o in out))
"""


@pytest.mark.parametrize("mode", ["banner", "reply"],
                         ids=["lan-server-closes-first", "visitor-closes-first"])
def test_fin_right_after_the_last_bytes(tun, mode):
    """The lan server sends a banner and closes at once (banner), or the visitor sends its
    request and its FIN at once and the server answers after reading to EOF (reply): the
    other side must get every byte and then EOF, on each of 30 connections at once. An end that
    is lost leaves the visitor waiting for ever (it gives up after 3 s here)."""
    n = 30
    tun.peer("lan", [PY, "-c", FIN_SERVER_PY, mode, LAN_IP, 9001], "fin-server", "tcp", 9001)
    tun.start_relay()
    _, port = tun.expose(f"{LAN_IP}:9001")
    r = ns_run("wan", PY, "-c", FIN_VISITOR_PY, mode, RELAY_IP, port, n, timeout=30)
    assert r.returncode == 0, r.stderr
    got = r.stdout.splitlines()
    want = ["eof banner from lan" if mode == "banner" else f"eof got {1000 + i} bytes"
            for i in range(n)]
    bad = [f"connection {i}: {g!r}, expected {w!r}" for i, (g, w) in enumerate(zip(got, want))
           if g != w]
    assert len(got) == n and not bad, \
        f"{len(bad)} of {n} connections wrong:\n" + "\n".join(bad)


# ---------------------------------------------------------------------------------------------
# reconnection


@pytest.mark.parametrize("how", ["sigkill", "frozen"])
def test_client_restart_gets_the_same_port_at_once(tun, how):
    """SIGKILL: the relay sees the session end and holds the port for the key. frozen
    (SIGSTOP): the relay still thinks the old session alive when the new one asks, so the
    port moves to the new one, and the old one's death later must not take it away."""
    need("curl")
    path, body = web_server(tun, size=64 * 1024)
    tun.start_relay()
    local = WEB
    old, port = tun.expose(local)
    assert tun.http_works(port, path, body)
    if how == "sigkill":
        old.proc.kill()
        old.proc.wait(timeout=5)
        old.rc = "sigkill"
        tun.relay.wait_log(r"session ended", timeout=HB_TIMEOUT_S + 2)
    else:
        old.proc.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    new, port2 = tun.expose(local)
    took = time.monotonic() - t0
    assert port2 == port, f"new client got port {port2}, the old one had {port}\n{tun.relay.log}"
    assert took < 2, f"the port came back after {took:.1f} s"
    wait_until(lambda: tun.http_works(port, path, body), 3, "the service back after the restart")
    if how == "frozen":
        tun.relay.wait_log(rf"takes tcp port {port} over", timeout=1)
        old.proc.kill()
        old.proc.wait(timeout=5)
        old.rc = "sigkill"
        tun.relay.wait_log(r"session ended", timeout=HB_TIMEOUT_S + 2)
        for _ in range(3):
            assert tun.http_works(port, path, body), \
                f"the old session's end took the port away\n{tun.relay.log}\n{new.log}"
    assert new.proc.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_relay_restart_client_registers_again(tun, sig):
    need("curl")
    path, body = web_server(tun, size=64 * 1024)
    dns_server(tun)
    relay = tun.start_relay()
    web, port = tun.expose(WEB)
    dns, uport = tun.expose(f"udp://{LAN_IP}:5353")
    relay.stop(sig=sig, check=sig == signal.SIGTERM)
    t0 = time.monotonic()
    tun.start_relay()
    # each client asks for the port it had, free on the new relay
    assert tun.public_port(web, WEB, count=2) == port, web.log
    assert tun.public_port(dns, f"udp://{LAN_IP}:5353", count=2) == uport, dns.log
    took = time.monotonic() - t0
    assert took < 5, f"registered again after {took:.1f} s"
    wait_until(lambda: tun.http_works(port, path, body), 3, "http back through the new relay")
    assert dig(uport, "svc.lab") == "10.77.1.42"


def test_router_wan_link_down_and_up(tun):
    """The router loses its WAN link for a few seconds: both ends hear nothing for three
    heartbeats and drop the session (the relay holds the port), the client's attempts
    fail, and once the link is back the service returns within the heartbeat timeout."""
    need("curl")
    path, body = web_server(tun, size=64 * 1024)
    tun.start_relay()
    local = WEB
    web, port = tun.expose(local)
    assert tun.http_works(port, path, body)
    link = ["ip", "-n", "router", "link", "set", ROUTER_WAN_DEV]
    try:
        t0 = time.monotonic()
        assert _run([*link, "down"], 10).returncode == 0
        # the heartbeat or TCP_USER_TIMEOUT (the same 3 s), whichever is first
        why = web.wait_log(rf"^relay {re.escape(RELAY_IP)}:{RELAY_PORT}: (.+); trying again in ",
                           timeout=HB_TIMEOUT_S + 3)[0]
        rwhy = tun.relay.wait_log(r"\(client\): session ended: ", timeout=HB_TIMEOUT_S + 3)[0]
        assert re.search(DEAD_PEER, why) and re.search(DEAD_PEER, rwhy), (why, rwhy)
        assert not tun.http_works(port, path, body)
        time.sleep(1)  # part of the scenario: an attempt or two fails while the link is down
        down_for = time.monotonic() - t0
    finally:
        _run([*link, "up"], 10)
        # the link's routes went with it; the default route does not come back by itself
        _run(["ip", "-n", "router", "route", "replace", "default", "via", RELAY_IP], 10)
    t_up = time.monotonic()
    wait_until(lambda: tun.http_works(port, path, body), HB_TIMEOUT_S + 2,
               f"the service back after the link (down {down_for:.1f} s) came up\n{web.log}")
    back = time.monotonic() - t_up
    assert tun.public_port(web, local, count=2) == port, web.log
    print(f"link down {down_for:.1f} s; service back {back:.2f} s after it came up")
