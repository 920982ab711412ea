"""
`pinhole local` and `pinhole socks --via` across the lab's two NATs (tests/lab/lab.sh,
topology: ../shared/lab/README.md): the relay on the public host, a private service behind
one NAT and its visitor behind the other. Both sessions are made from inside, out through
the routers' masquerade; neither router lets anything in, and the service has no public port.

    lan 10.77.1.10                  wan 198.18.0.1                   lan2 10.77.2.10
    sshd 10.77.1.10:2222            pinhole server :7835             pinhole local
    pinhole expose --private  ====> (grants: reach=ssh,        <==== 127.0.0.1:2222 ssh
      --name ssh         router      connect=localhost:8080)  router2   <-- ssh -p 2222
    pinhole socks --via  ========>  http.server 127.0.0.1:8080
      <-- curl                       (the wan host's own loopback)

Each test starts its own relay and clients through test_tunnel_lab.py's Tunnel (keys,
known_relays, logs in tmp_path; `--control none`; `--heartbeat 1s`) and stops them: pinhole
with SIGTERM (exit 0, no sanitizer report), the other peers by process group.

Needs root, iproute2 and the lab's tools (scripts/deps.sh test); skipped otherwise. The lab
is brought up for this module (`lab.sh up --no-daemons`) and down at its end - but only when
none of the lab's namespaces has existed for 10 s: another run may be using the lab, so this
module waits for it (PINHOLE_LAB_WAIT_S, default 120 s) and then skips rather than tear it
down; and it takes down only the lab it made (its mark in lab.sh's state directory is still
there), never one that another run's `lab.sh up` put in its place.
"""

import hashlib
import os
import re
import time

import pytest

import test_tunnel_lab as tl

LAB_NAMESPACES = ("lan", "router", "lan2", "router2", "wan")
LAB_WAIT_S = float(os.environ.get("PINHOLE_LAB_WAIT_S", "120"))
LAN2_IP = "10.77.2.10"
WAN2_IP = "198.18.0.12"  # router2's external address: lan2's, as the relay sees it
RELAY = f"{tl.RELAY_IP}:{tl.RELAY_PORT}"
LAB_QUIET_S = 10  # no lab namespace for this long: no other run is between two lab modules
LAB_STATE = os.environ.get("LAB_STATE", "/run/pinhole-lab")  # lab.sh's; its down removes it


def lab_namespaces():
    r = tl._run(["ip", "netns", "list"], 10)
    return sorted({ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()}
                  & set(LAB_NAMESPACES))


def mark_lab():
    """Leaves a mark in the lab's state directory, which any `lab.sh down` (and so any other
    run's `lab.sh up`) removes: while it is there, the lab up is the one this module made."""
    mark = os.path.join(LAB_STATE, f"test_local_lab.{os.getpid()}.{time.monotonic_ns()}")
    with open(mark, "w") as f:
        f.write("made by tests/e2e/test_local_lab.py\n")
    return mark


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, nftables)")
    if tl._which("ip") is None or tl._run(["ip", "netns", "list"], 10).returncode != 0:
        pytest.skip("`ip netns` is not available (iproute2)")
    tl.need(*tl.LAB_TOOLS)
    # someone else's lab is never torn down from here: wait until there has been none for
    # LAB_QUIET_S (a run of several lab modules leaves short gaps between them)
    deadline = time.monotonic() + LAB_WAIT_S
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < LAB_QUIET_S:
        if lab_namespaces():
            quiet_since = time.monotonic()
            if quiet_since >= deadline:
                pytest.skip(f"the lab is in use (namespaces {' '.join(lab_namespaces())} "
                            f"exist) after {LAB_WAIT_S:.0f} s of waiting")
        time.sleep(1)
    ours = None
    try:
        r = tl._run(["bash", tl.LAB_SH, "up", "--no-daemons"], tl.LAB_UP_TIMEOUT_S, "lab.sh up")
        if r.returncode != 0:
            tl._run(["bash", tl.LAB_SH, "down"], tl.LAB_UP_TIMEOUT_S, "lab.sh down")  # ours
            if "cannot create netns" in r.stderr:
                pytest.skip(f"cannot create network namespaces here: {r.stderr.strip()}")
            pytest.fail(f"lab.sh up exited with {r.returncode}: {r.stdout}{r.stderr}")
        ours = mark_lab()
        yield
    finally:
        # only the lab this module made: if another run replaced it meanwhile, it is theirs
        if ours is not None and os.path.exists(ours):
            tl._run(["bash", tl.LAB_SH, "down"], tl.LAB_UP_TIMEOUT_S, "lab.sh down")


class Lab(tl.Tunnel):
    """test_tunnel_lab's Tunnel with a second client key, "visitor", and grants."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        self.client_line = (tmp_path / "authorized_keys").read_text().strip()
        self.visitor_line = self._keygen("visitor")

    def authorize(self, client_opts="", visitor_opts=""):
        """authorized_keys: the client's and the visitor's lines, with options."""
        lines = [f"{o} {ln}".strip() for o, ln in ((client_opts, self.client_line),
                                                   (visitor_opts, self.visitor_line))]
        (self.dir / "authorized_keys").write_text("\n".join(lines) + "\n")

    def client(self, ns, verb, *words, key="visitor", hb=True):
        """pinhole VERB WORDS --via the relay in ns with key, its session up."""
        p = self._pinhole(ns, [
            verb, *words, "--via", tl.RELAY_IP, "--key", self.dir / f"{key}.key",
            "--known-relays", self.dir / f"known_relays.{key}", "--control", "none",
            *(["--heartbeat", tl.HEARTBEAT] if hb else [])])
        p.wait_log(rf"^relay {re.escape(RELAY)}: session up$", timeout=tl.READY_S)
        return p

    def wait_listening(self, ns, port):
        tl.wait_until(lambda: tl.ns_listening(ns, "tcp", port), tl.READY_S,
                      f"a listener on {port} in {ns}")


@pytest.fixture
def tun(lab, tmp_path):
    t = Lab(tmp_path)
    try:
        yield t
    finally:
        problems = t.close()
    assert not problems, "\n".join(problems)


def test_ssh_from_lan2_to_a_private_service_in_lan(tun):
    """sshd in lan offered as the private service 'ssh' (no public port); from lan2, behind
    the other NAT, `local 127.0.0.1:2222 ssh` and ssh -p 2222 runs a command in lan."""
    tl.need("sshd", "ssh", "ssh-keygen")
    d = tun.dir
    for name in ("host_key", "user_key"):
        r = tl._run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", d / name],
                    10)
        assert r.returncode == 0, r.stderr
    (d / "authorized_keys.ssh").write_text((d / "user_key.pub").read_text())
    (d / "sshd_config").write_text(
        f"ListenAddress {tl.LAN_IP}:2222\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys.ssh'}\nUsePAM no\nStrictModes no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nLogLevel VERBOSE\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # as test_tunnel_lab: left there
    tun.peer("lan", [tl._which("sshd"), "-D", "-e", "-f", d / "sshd_config"], "sshd", "tcp", 2222)
    tun.authorize(visitor_opts="reach=ssh")
    tun.start_relay()
    x = tun.client("lan", "expose", f"{tl.LAN_IP}:2222", "--name", "ssh", "--private",
                   key="client")
    x.wait_log(rf"^expose {re.escape(tl.LAN_IP)}:2222 ssh: private on relay {re.escape(RELAY)}$",
               timeout=tl.READY_S)
    tun.relay.wait_log(rf"^client {re.escape(tl.WAN_IP)}:\d+ \(client\): offers private "
                       r"service 'ssh'$", timeout=1)
    tun.client("lan2", "local", "127.0.0.1:2222", "ssh")
    tun.wait_listening("lan2", 2222)
    tun.relay.wait_log(rf"^client {re.escape(WAN2_IP)}:\d+: key SHA256:\S+ \(visitor\)$",
                       timeout=1)

    (d / "known_hosts").write_text(f"[127.0.0.1]:2222 {(d / 'host_key.pub').read_text()}")
    ssh = ["ssh", "-F", "/dev/null", "-p", 2222, "-i", d / "user_key", "-o", "BatchMode=yes",
           "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={d / 'known_hosts'}",
           "-o", "ConnectTimeout=5", "root@127.0.0.1"]
    r = tl.ns_run("lan2", *ssh, "echo sum=$((6*7)); echo conn=$SSH_CONNECTION; "
                  "ip -4 -o addr show dev eth0", timeout=20)
    assert r.returncode == 0, f"ssh: exit {r.returncode}\n{r.stderr}\n{tun.peer_log('sshd')}"
    out = r.stdout
    assert "sum=42" in out.splitlines(), out
    # sshd sees the exposer in lan arrive at its own address: nothing came in from outside
    assert re.search(rf"^conn={re.escape(tl.LAN_IP)} \d+ {re.escape(tl.LAN_IP)} 2222$", out,
                     re.M), out
    assert re.search(rf"\binet {re.escape(tl.LAN_IP)}/24\b", out), out  # it ran in lan
    # bytes both ways: 1 MiB up, its digest back
    data = os.urandom(1 << 20)
    (d / "up.bin").write_bytes(data)
    r = tl.ns_run("lan2", "bash", "-c", f"{' '.join(map(str, ssh))} sha256sum < {d / 'up.bin'}",
                  timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:1] == [hashlib.sha256(data).hexdigest()], r.stdout


def test_curl_through_socks_via_to_the_wan_hosts_own_web_server(tun):
    """http.server on the wan host's loopback: nothing but the wan host reaches it. curl in
    lan through `socks --via` (SOCKS5 with the name, HTTP CONNECT) gets its file, the name
    localhost resolved by the relay; the address the grant does not name is refused."""
    tl.need("curl")
    root = tun.dir / "www"
    root.mkdir()
    body = os.urandom(2 * (1 << 20) + 5)
    (root / "blob.bin").write_bytes(body)
    tun.peer("wan", [tl.PY, "-m", "http.server", "-b", "127.0.0.1", "-d", root, 8080], "http",
             "tcp", 8080)
    tun.authorize(visitor_opts="connect=localhost:8080")
    tun.start_relay()
    tun.client("lan", "socks", "127.0.0.1:1080", hb=False)
    tun.wait_listening("lan", 1080)
    tun.relay.wait_log(rf"^client {re.escape(tl.WAN_IP)}:\d+: key SHA256:\S+ \(visitor\)$",
                       timeout=1)
    curl = ["curl", "-sS", "--noproxy", "", "-m", 10]

    r = tl.ns_run("lan", *curl, f"http://{tl.RELAY_IP}:8080/blob.bin", timeout=15, text=False)
    assert r.returncode != 0 and r.stdout == b"", "lan reaches the wan host's web server"
    for opts in (["--socks5-hostname", "127.0.0.1:1080"],
                 ["-x", "http://127.0.0.1:1080", "--proxytunnel"]):
        r = tl.ns_run("lan", *curl, *opts, "--fail", "http://localhost:8080/blob.bin",
                      timeout=15, text=False)
        assert r.returncode == 0, f"curl {opts}: exit {r.returncode} {r.stderr!r}"
        assert len(r.stdout) == len(body) and r.stdout == body, f"curl {opts}: other bytes"
    # connect=localhost:8080 grants the name, not the wan host's loopback address
    r = tl.ns_run("lan", *curl, "--socks5", "127.0.0.1:1080", "http://127.0.0.1:8080/blob.bin",
                  timeout=15, text=False)
    assert r.returncode == 97 and b"(2)" in r.stderr, (r.returncode, r.stderr)


def test_dig_from_lan2_through_local_udp_to_dnsmasq_in_lan(tun):
    """dnsmasq in lan offered as the private UDP service 'dns'; from lan2, behind the other
    NAT, `local udp://127.0.0.1:5353 dns` and dig gets its answers; and `local udp://` to
    HOST:PORT, a dnsmasq on the wan host's own loopback, granted by connect=."""
    tl.need("dnsmasq", "dig")
    dm = [tl._which("dnsmasq"), "--no-daemon", "--bind-interfaces", "--no-resolv",
          "--no-hosts", "--conf-file=/dev/null", "--pid-file"]
    tun.peer("lan", [*dm, "--port", 5353, "--listen-address", tl.LAN_IP,
                     "--address=/x.test/10.1.2.3"], "dnsmasq-lan", "udp", 5353)
    tun.peer("wan", [*dm, "--port", 5354, "--listen-address", "127.0.0.1",
                     "--address=/y.test/10.4.5.6"], "dnsmasq-wan", "udp", 5354)
    tun.authorize(visitor_opts="reach=dns,connect=127.0.0.1:5354")
    tun.start_relay()
    x = tun.client("lan", "expose", f"udp://{tl.LAN_IP}:5353", "--name", "dns", "--private",
                   key="client")
    x.wait_log(rf"^expose udp://{re.escape(tl.LAN_IP)}:5353 dns: private on relay ",
               timeout=tl.READY_S)
    a = tun.client("lan2", "local", "udp://127.0.0.1:5353", "dns")
    a.wait_log(r"^local udp://127\.0\.0\.1:5353 dns: up$", timeout=tl.READY_S)
    b = tun.client("lan2", "local", "udp://127.0.0.1:5354", "127.0.0.1:5354")
    b.wait_log(r"^local udp://127\.0\.0\.1:5354 127\.0\.0\.1:5354: up$", timeout=tl.READY_S)
    dig = ["dig", "@127.0.0.1", "+short", "+time=2", "+tries=3"]
    r = tl.ns_run("lan2", *dig, "-p", 5353, "x.test", timeout=20)
    assert r.stdout.split() == ["10.1.2.3"], (r.stdout, r.stderr, tun.peer_log("dnsmasq-lan"))
    r = tl.ns_run("lan2", *dig, "-p", 5354, "y.test", timeout=20)
    assert r.stdout.split() == ["10.4.5.6"], (r.stdout, r.stderr, tun.peer_log("dnsmasq-wan"))
    # nothing of it came in through a router: lan2 cannot reach lan's dnsmasq itself
    r = tl.ns_run("lan2", "dig", f"@{tl.LAN_IP}", "+short", "+time=1", "+tries=1", "-p", 5353,
                  "x.test", timeout=10)
    assert "10.1.2.3" not in r.stdout, r.stdout
