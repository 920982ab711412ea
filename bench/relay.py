"""The relay part of the pinhole benchmark; bench.py calls run() (BENCH_ONLY=relay: nothing else).

Measures remote forwarding, a visitor reaching a local service through a public port that a
tunnel holds, with pinhole (`pinhole server` + `pinhole expose`, TLS 1.3) against OpenSSH
(`sshd` + `ssh -N -R`, cipher aes128-gcm@openssh.com) and against a direct connection to the
local service (the limit), on 127.0.0.1 only:
  1. iperf3 throughput through the public port, upload (visitor -> local service) and
     download (visitor <- local service, iperf3 -R), 1 stream and 4 streams
  2. new visitor connections per second (connrate load: connect, 64 B echoed, close; the echo
     server closes first) with p50/p99 latency, and the tunnel's CPU per connection
  3. first-byte latency (socket() to the last byte of a 64 B echo) with nothing else running,
     over plain loopback and with the tunnel's own connection (client <-> relay) carried by
     a delay proxy that adds RTT_MS of round trip: the latency over direct loopback, divided
     by the proxy's round trip as measured on an established connection, counts the round
     trips of the tunnel's connection that a visitor waits for
  4. RSS per idle visitor stream: IDLE idle connections through the tunnel, its memory with
     them less before, relay side and client side apart
  5. the idle client's RSS (one rule, no traffic yet) and the stripped binary size
and the tunnel's CPU (user and system apart, relay side and client side apart) per GiB moved
and per connection. "The tunnel" is every process of it: the relay (`pinhole server`, or sshd
with the per-connection processes it forks) and the client (`pinhole expose`, or `ssh -R`).

Each round starts one tunnel per peer with two public ports (one to the iperf3 server, one to
the conn/s echo server) and runs the round's five tests through it; pinhole runs one expose
per port, each with a key of its own (a second session with the same key would replace the
first), and its public ports listen on 127.0.0.1 only (`--bind`), as ssh -R's do. The sshd part reuses the SOCKS part's throw-away host and user keys (socks.SshKeys:
sshd in the foreground with its own config, nothing of the system's sshd or ~/.ssh touched,
/run/sshd made if missing and removed again).

Every process runs in its own session with its id in $BENCH_TMP/pgids (sshd's per-connection
sessions too, as soon as they exist), so that run.sh's trap can end it. Every wait is bounded.

`relay.py delay LPORT UPORT ONE_WAY_MS MAXSECS` is the delay proxy of test 3 (run by this
module in its own process): it accepts on 127.0.0.1:LPORT, connects each connection to
127.0.0.1:UPORT and hands every chunk on ONE_WAY_MS after it arrived, both ways, keeping
order and half-closes; it exits after MAXSECS.
"""

import json
import os
import resource
import subprocess
import sys
import time

HOST = "127.0.0.1"


# ---------------------------------------------------------------- the delay proxy


def delay_main(lport, uport, one_way_ms, maxsecs):
    """The delay proxy (see the module's head). Runs until maxsecs pass."""
    import asyncio
    import socket

    delay = one_way_ms / 1000.0

    async def pump(reader, writer):
        loop = asyncio.get_running_loop()
        q = asyncio.Queue()

        async def sender():
            try:
                while True:
                    due, data = await q.get()
                    wait = due - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if not data:
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass

        task = asyncio.ensure_future(sender())
        try:
            while True:
                data = await reader.read(262144)
                q.put_nowait((loop.time() + delay, data))
                if not data:
                    break
        except (ConnectionError, OSError):
            q.put_nowait((loop.time() + delay, b""))
        await task

    async def handle(r1, w1):
        try:
            r2, w2 = await asyncio.open_connection(HOST, uport)
        except OSError:
            w1.close()
            return
        for w in (w1, w2):
            s = w.get_extra_info("socket")
            if s is not None:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pump(r1, w2), pump(r2, w1), return_exceptions=True)
        w1.close()
        w2.close()

    async def main():
        srv = await asyncio.start_server(handle, HOST, lport, reuse_address=True)
        async with srv:
            await asyncio.sleep(maxsecs)

    asyncio.run(main())


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "delay":
    delay_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
    sys.exit(0)

import bench as B  # noqa: E402  (not needed by the delay proxy above)
import socks as SX  # noqa: E402  (its ssh keys, process trees and bounded runs)

SECS = int(os.environ.get("BENCH_RELAY_SECS", "3"))
ROUNDS = int(os.environ.get("BENCH_RELAY_ROUNDS", str(B.ROUNDS)))
CLIENTS = int(os.environ.get("BENCH_RELAY_CLIENTS", str(B.CLIENTS)))
IDLE = int(os.environ.get("BENCH_RELAY_IDLE", "10000"))
RTT_MS = float(os.environ.get("BENCH_RELAY_RTT", "10"))
BUDGET = float(os.environ.get("BENCH_RELAY_BUDGET", "200"))
PEERS = os.environ.get("BENCH_RELAY_PEERS", "direct pinhole ssh").split()
KNOWN = ("direct", "pinhole", "ssh")
CIPHER = "aes128-gcm@openssh.com"
TIMEOUT_MS = 3000  # a visitor connection not done by then counts as an error
LAT_CLIENTS = 1    # the latency test: one connection at a time, nothing queues
HOLD_SETUP = 60    # seconds to open the idle streams; ssh -R opens ~100 a second at 10,000
# the throughput tests: key -> (streams, iperf3 -R: visitor <- local service)
BULK = {"u1": (1, False), "d1": (1, True), "u4": (4, False), "d4": (4, True)}
KEYS = ("u1", "d1", "u4", "d4", "c")

log = B.log


class Failed(B.Failed):
    pass


def _write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


# ---------------------------------------------------------------- keys and configs


class PhKeys:
    """pinhole keys made once per run: the relay's and three clients' (all authorized)."""

    dir = None
    NCLIENTS = 3

    @classmethod
    def get(cls):
        if cls.dir is not None:
            return cls.dir
        d = os.path.join(B.TMP, "relay-keys")
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o700)
        lines = []
        for name in ["server"] + ["client%d" % i for i in range(cls.NCLIENTS)]:
            out, err = SX.run_bounded("keygen", [B.PINHOLE, "keygen", "-f",
                                                 os.path.join(d, name + ".key")], 20)
            line = out.strip()
            if not line.startswith("ph-ed25519 "):
                raise Failed("pinhole keygen printed no public key: " + err.strip()[-200:])
            if name != "server":
                lines.append(line)
        _write(os.path.join(d, "authorized_keys"), "\n".join(lines) + "\n", 0o600)
        cls.dir = d
        return d


def sshd_config(d, sport):
    """sshd for ssh -R: as the SOCKS part's, with remote forwarding instead of local."""
    return (
        "ListenAddress %s:%d\n"
        "HostKey %s/host_key\n"
        "PidFile %s/sshd-%d.pid\n"
        "AuthorizedKeysFile %s/authorized_keys\n"
        "AuthenticationMethods publickey\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "HostbasedAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "AllowUsers root\n"
        # the temp dir is under /tmp (world-writable): StrictModes would refuse the key file
        "StrictModes no\n"
        "UsePAM no\n"
        "UseDNS no\n"
        "AllowTcpForwarding remote\n"
        "GatewayPorts no\n"
        "AllowAgentForwarding no\n"
        "AllowStreamLocalForwarding no\n"
        "X11Forwarding no\n"
        "PermitTTY no\n"
        "PermitTunnel no\n"
        "PermitUserRC no\n"
        "PermitUserEnvironment no\n"
        "PrintMotd no\n"
        "PrintLastLog no\n"
        "LogLevel ERROR\n" % (HOST, sport, d, d, sport, d))


def ssh_config(d, port, known):
    return (
        "Host *\n"
        "  User root\n"
        "  Port %d\n"
        "  IdentityFile %s/user_key\n"
        "  IdentitiesOnly yes\n"
        "  IdentityAgent none\n"
        "  UserKnownHostsFile %s\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  CheckHostIP no\n"
        "  UpdateHostKeys no\n"
        "  BatchMode yes\n"
        "  ExitOnForwardFailure yes\n"
        "  ControlMaster no\n"
        "  ControlPath none\n"
        "  LogLevel ERROR\n" % (port, d, known))


# ---------------------------------------------------------------- tunnels


class Tunnel:
    """A running tunnel: the relay side (pinhole server, or sshd), the client side (one
    pinhole expose per target, or one ssh -R for all) and a public port per target. With
    delay_ms, the client reaches the relay through the delay proxy (that many ms one way)."""

    def __init__(self, peer, targets, delay_ms=0.0):
        self.peer = peer
        self.targets = list(targets)
        self.delay_ms = delay_ms
        self.pub = {}      # target port -> public port
        self.relay = []    # Procs of the relay side
        self.client = []   # Procs of the client side
        self.helpers = []  # the delay proxy
        self.sids = set()  # sessions the relay side made itself (sshd: one per connection)

    def _start(self, side, name, argv, port, timeout=10.0):
        try:
            p = B.Proc(name, argv)
        except OSError as e:
            raise Failed("%s: cannot run %s: %s" % (self.peer, argv[0], e))
        side.append(p)
        if not B.wait_listen(port, p, timeout=timeout):
            text = p.stderr_text().strip().splitlines()
            raise Failed("%s did not start listening on %d: %s" % (
                name, port, " | ".join(text[-3:]) or "-"))
        return p

    def _via(self, rport):
        """The port the client dials: the relay's, or a delay proxy's in front of it."""
        if self.delay_ms <= 0:
            return rport
        dport = B.free_port()
        self._start(self.helpers, "delay", [sys.executable, os.path.abspath(__file__), "delay",
                                            str(dport), str(rport), str(self.delay_ms),
                                            "900"], dport)
        return dport

    def start(self):
        try:
            if self.peer == "pinhole":
                self._start_pinhole()
            elif self.peer == "ssh":
                self._start_ssh()
            else:
                raise ValueError(self.peer)
            self.note_sessions()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_pinhole(self):
        d = PhKeys.get()
        rport = B.free_port()
        self._start(self.relay, "ph-server",
                    [B.PINHOLE, "server", "%s:%d" % (HOST, rport), "--key",
                     os.path.join(d, "server.key"), "--authorized-keys",
                     os.path.join(d, "authorized_keys"), "--bind", HOST, "--control", "none"],
                    rport)
        via = self._via(rport)
        if len(self.targets) > PhKeys.NCLIENTS:
            raise ValueError("more targets than client keys")
        for i, t in enumerate(self.targets):
            pub = B.free_port()
            known = os.path.join(d, "known_relays-%d-%d" % (via, i))
            if os.path.exists(known):
                os.unlink(known)  # a port used again later: trust on first use again
            self._start(self.client, "ph-expose",
                        [B.PINHOLE, "expose", "%s:%d" % (HOST, t), "--via", "%s:%d" % (HOST, via),
                         "--port", str(pub), "--key", os.path.join(d, "client%d.key" % i),
                         "--known-relays", known, "--control", "none"], pub, timeout=15.0)
            self.pub[t] = pub

    def _start_ssh(self):
        d = SX.SshKeys.get()
        sport = B.free_port()
        cfg = os.path.join(d, "relay-sshd-%d.conf" % sport)
        _write(cfg, sshd_config(d, sport))
        self._start(self.relay, "sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", cfg], sport)
        via = self._via(sport)
        known = os.path.join(d, "relay-known_hosts-%d" % via)
        with open(os.path.join(d, "host_key.pub")) as f:
            _write(known, "[%s]:%d %s" % (HOST, via, f.read()))
        ccfg = os.path.join(d, "relay-ssh-%d.conf" % via)
        _write(ccfg, ssh_config(d, via, known))
        argv = ["ssh", "-F", ccfg, "-N", "-c", CIPHER]
        for t in self.targets:
            self.pub[t] = B.free_port()
            argv += ["-R", "%s:%d:%s:%d" % (HOST, self.pub[t], HOST, t)]
        argv.append(HOST)
        p = self._start(self.client, "ssh", argv, self.pub[self.targets[0]], timeout=15.0)
        for t in self.targets[1:]:
            if not B.wait_listen(self.pub[t], p, timeout=5.0):
                raise Failed("ssh -R: port %d did not open" % self.pub[t])

    def addr(self, target):
        return "%s:%d" % (HOST, self.pub[target])

    def leaders(self, side):
        return {p.pid for p in side}

    def note_sessions(self):
        """Appends the sessions that sshd made (one per connection) to $BENCH_TMP/pgids, so
        that run.sh's trap ends them too."""
        new = set()
        lead = self.leaders(self.relay)
        for pid, st in SX.tree(lead).items():
            sid = int(st[3])
            if sid not in lead and sid not in self.sids:
                new.add(sid)
        if new:
            with open(os.path.join(B.TMP, "pgids"), "a") as f:
                for sid in sorted(new):
                    f.write("%d\n" % sid)
            self.sids |= new

    def alive(self):
        return all(p.alive() for p in self.relay + self.client + self.helpers) and \
            bool(self.relay) and bool(self.client)

    def cpu(self, side):
        """(user, system) CPU seconds of one side (self.relay or self.client): its live and
        zombie processes with the children they reaped, and the orphans this driver reaped
        (by session). Two samples subtract."""
        B.reap_orphans()
        u = s = 0
        sids = set(self.leaders(side))
        if side is self.relay:
            sids |= self.sids
        for pid, st in SX.tree(self.leaders(side)).items():
            u += int(st[11]) + int(st[13])
            s += int(st[12]) + int(st[14])
            sids.add(int(st[3]))
        orphans = sum(B._orphan_cpu.get(x, 0.0) for x in sids)
        return u / B.CLK_TCK + orphans, s / B.CLK_TCK

    def mem(self, side):
        """{rss, pss, anon, procs} summed over one side's live processes (bytes)."""
        m = {"rss": 0, "pss": 0, "anon": 0, "procs": 0}
        for pid, st in SX.tree(self.leaders(side)).items():
            if st[0] == "Z":
                continue
            try:
                with open("/proc/%d/status" % pid) as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            m["rss"] += int(line.split()[1]) * 1024
                        elif line.startswith("RssAnon:"):
                            m["anon"] += int(line.split()[1]) * 1024
                with open("/proc/%d/smaps_rollup" % pid) as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            m["pss"] += int(line.split()[1]) * 1024
                m["procs"] += 1
            except OSError:
                pass
        return m

    def stop(self):
        # the client first, so that the relay's side of the session ends by itself
        for p in self.client + self.helpers:
            p.stop()
        lead = self.leaders(self.relay)
        end = time.monotonic() + 3.0
        while self.sids and time.monotonic() < end:
            if not [pid for pid, st in SX.tree(lead).items()
                    if int(st[3]) in self.sids and st[0] != "Z"]:
                break
            time.sleep(0.05)
        for p in self.relay:
            p.stop()
        # what is left of sessions the relay made (an sshd connection): they are its own
        for pid, st in SX.tree(lead).items():
            if int(st[3]) in self.sids:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        B.reap_orphans()
        self.client, self.relay, self.helpers = [], [], []

    def stderr_tail(self):
        return " | ".join("%s: %s" % (p.name, " ".join(p.stderr_text().strip().splitlines()[-2:]))
                          for p in self.relay + self.client)


# ---------------------------------------------------------------- local services


class Servers:
    """The local services, shared by all tests of the run: iperf3 (one test at a time),
    the conn/s echo server (closes after 64 B), and a plain echo server (latency, idle)."""

    def __init__(self):
        self.procs = {}
        self.ports = {}
        self.argv = {}

    def start(self, name, argv_fn, port=None):
        port = port or B.free_port()
        argv = argv_fn(port)
        p = B.Proc(name, argv)
        self.procs[name] = p
        self.ports[name] = port
        self.argv[name] = argv_fn
        if not B.wait_listen(port, p):
            raise RuntimeError("%s did not start: %s" % (name, p.stderr_text()))

    def restart(self, name):
        """Starts name again on the same port (the tunnels point at it)."""
        self.procs[name].stop()
        self.start(name, self.argv[name], self.ports[name])

    def port(self, name):
        return self.ports[name]

    def cpu(self):
        return sum(B.tree_cpu(p.pid) for p in self.procs.values())

    def stop(self):
        for p in self.procs.values():
            p.stop()
        self.procs = {}


def iperf_argv(port):
    return ["iperf3", "-s", "-B", HOST, "-p", str(port)]


def echo_argv(extra):
    return lambda port: [B.CONNRATE, "echo", "%s:%d" % (HOST, port), "-t", "1800"] + extra


class Sampler:
    """The tunnel's CPU by side (user, system), and other(): the CPU that none of the tunnel,
    the local services and the driver's children (the clients) used during the test, in
    cores (other jobs, the host's steal)."""

    def __init__(self, tun, servers):
        self.tun, self.servers = tun, servers

    def _take(self):
        r = self.tun.cpu(self.tun.relay) if self.tun else (0.0, 0.0)
        c = self.tun.cpu(self.tun.client) if self.tun else (0.0, 0.0)
        s = self.servers.cpu()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (r[0], r[1], c[0], c[1], s, ru.ru_utime + ru.ru_stime, B.sys_busy(),
                time.monotonic())

    def start(self):
        self.a = self._take()

    def stop(self):
        self.b = self._take()
        d = [y - x for x, y in zip(self.a, self.b)]
        self.relay_u, self.relay_s, self.client_u, self.client_s = d[0], d[1], d[2], d[3]
        self.total = sum(d[0:4])
        self.other = max(0.0, d[6] - self.total - d[4] - d[5]) / d[7] if d[7] > 0 else 0.0

    def into(self, kv):
        kv.update({"relay_u": self.relay_u, "relay_s": self.relay_s,
                   "client_u": self.client_u, "client_s": self.client_s,
                   "cpu": self.total if self.tun else None, "other": self.other})
        return kv


def display_cmd(argv):
    return " ".join("connrate" if a == B.CONNRATE else a for a in argv)


# ---------------------------------------------------------------- measurements


def bulk_test(tun, servers, key):
    """One iperf3 run to the iperf3 server, through the tunnel's public port or direct."""
    streams, reverse = BULK[key]
    port = tun.pub[servers.port("iperf")] if tun else servers.port("iperf")
    argv = ["iperf3", "-c", HOST, "-p", str(port), "-t", str(SECS), "--json",
            "--connect-timeout", "3000"]
    if streams > 1:
        argv += ["-P", str(streams)]
    if reverse:
        argv.append("-R")
    smp = Sampler(tun, servers)
    smp.start()
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=SECS + 20)
    except subprocess.TimeoutExpired:
        servers.restart("iperf")
        raise Failed("iperf3 client timed out")
    time.sleep(0.3)
    smp.stop()
    try:
        j = json.loads(cp.stdout)
    except ValueError:
        servers.restart("iperf")
        raise Failed("iperf3 printed no JSON: " + (cp.stderr or cp.stdout)[-200:])
    if "error" in j:
        servers.restart("iperf")
        raise Failed("iperf3: " + j["error"])
    recv = j["end"]["sum_received"]
    kv = smp.into({"gbps": recv["bits_per_second"] / 1e9, "bytes": recv["bytes"],
                   "cmd": " ".join(argv)})
    if tun and recv["bytes"] > 0:
        kv["cpu_per_gib"] = smp.total / (recv["bytes"] / 2**30)
    return kv


def conn_test(tun, servers):
    port = tun.pub[servers.port("echo64")] if tun else servers.port("echo64")
    argv = [B.CONNRATE, "load", "%s:%d" % (HOST, port), "-c", str(CLIENTS), "-t", str(SECS),
            "-s", "64", "-T", str(TIMEOUT_MS), "-e"]
    smp = Sampler(tun, servers)
    smp.start()
    out, err = SX.run_bounded("load", argv, SECS + 15)
    time.sleep(0.3)
    smp.stop()
    if tun:
        tun.note_sessions()
    kv = B.parse_kv(out)
    if "rate" not in kv:
        raise Failed("connrate load printed nothing: " + err.strip()[-200:])
    if kv["conns"] == 0:
        raise Failed("no connection completed (%d errors, errno %d)" % (kv["errors"],
                                                                       kv["first_errno"]))
    smp.into(kv)
    kv["cpu_us_per_conn"] = smp.total / kv["conns"] * 1e6 if tun else None
    kv["cmd"] = display_cmd(argv)
    return kv


def latency_test(peer, servers, delay_ms):
    """First-byte latency with LAT_CLIENTS clients: socket() to the last byte of a 64 B echo
    (a 64 B reply arrives whole: its last byte is its first); the client closes first.
    Through a tunnel whose client reaches its relay through the delay proxy when delay_ms."""
    target = servers.port("echo")
    tun = Tunnel(peer, [target], delay_ms).start() if peer != "direct" else None
    try:
        port = tun.pub[target] if tun else target
        addr = "%s:%d" % (HOST, port)
        # one warm-up connection: the first of a tunnel may pay for lazy set-up
        SX.run_bounded("warm", [B.CONNRATE, "load", addr, "-c", "1", "-t", "0.3", "-s", "64",
                                "-T", str(TIMEOUT_MS)], 15)
        argv = [B.CONNRATE, "load", addr, "-c", str(LAT_CLIENTS), "-t", str(SECS), "-s", "64",
                "-T", str(TIMEOUT_MS)]
        out, err = SX.run_bounded("lat", argv, SECS + 15)
        kv = B.parse_kv(out)
        if "rate" not in kv or kv["conns"] == 0:
            raise Failed("connrate load: %s" % (err.strip()[-200:] or out.strip()[-200:]))
        kv["cmd"] = display_cmd(argv)
        return kv
    finally:
        if tun:
            tun.stop()


def link_rtt(servers, delay_ms, n=40):
    """The round trip the delay proxy makes, as a tunnel's long-lived connection sees it: 64 B
    echoed n times over one established connection through it. Returns the median in ms."""
    import socket

    dport = B.free_port()
    p = B.Proc("delay", [sys.executable, os.path.abspath(__file__), "delay", str(dport),
                         str(servers.port("echo")), str(delay_ms), "60"])
    try:
        if not B.wait_listen(dport, p):
            raise Failed("the delay proxy did not start: " + p.stderr_text().strip()[-200:])
        s = socket.create_connection((HOST, dport), timeout=3)
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            msg, t = b"r" * 64, []
            for _ in range(n):
                t0 = time.perf_counter()
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = s.recv(len(msg) - len(got))
                    if not chunk:
                        raise Failed("the delay proxy closed the connection")
                    got += chunk
                t.append((time.perf_counter() - t0) * 1000)
        finally:
            s.close()
        t.sort()
        return {"p50_ms": t[len(t) // 2], "min_ms": t[0], "max_ms": t[-1], "n": n}
    finally:
        p.stop()


def idle_test(peer, servers):
    """The idle client's memory (one rule, no traffic), then RSS per idle visitor stream:
    a short warm-up, baseline, IDLE connections held (each had one 64 B round trip), measure.
    Relay side and client side apart."""
    target = servers.port("echo")
    tun = Tunnel(peer, [target]).start()
    hold = None
    try:
        addr = tun.addr(target)
        time.sleep(1.0)
        fresh = {"relay": tun.mem(tun.relay), "client": tun.mem(tun.client)}
        SX.run_bounded("hold", [B.CONNRATE, "hold", addr, "-n", "16", "-w", "10", "-H", "1"],
                       20)
        time.sleep(0.5)
        tun.note_sessions()
        m0 = {"relay": tun.mem(tun.relay), "client": tun.mem(tun.client)}
        hold = B.Proc("hold", [B.CONNRATE, "hold", addr, "-n", str(IDLE), "-p", "64", "-w",
                               str(HOLD_SETUP), "-H", "150"], stdin=subprocess.PIPE,
                      capture=True)
        line = B.read_line(hold, HOLD_SETUP + 15)
        kv = B.parse_kv(line or "")
        if "held" not in kv:
            raise Failed("hold printed nothing: " + hold.stderr_text().strip()[-200:])
        held = int(kv["held"])
        if held == 0:
            raise Failed("no idle connection could be opened (%d failed)" % kv["failed"])
        time.sleep(1.0)
        tun.note_sessions()
        m1 = {"relay": tun.mem(tun.relay), "client": tun.mem(tun.client)}
        if not tun.alive():
            raise Failed("the tunnel died while holding connections: " + tun.stderr_tail())
        res = {"n": IDLE, "held": held, "failed": int(kv["failed"]), "secs": kv.get("secs"),
               "fresh": fresh, "m0": m0, "m1": m1}
        for side in ("relay", "client"):
            for k in ("rss", "pss", "anon"):
                res["%s_%s_per" % (side, k)] = (m1[side][k] - m0[side][k]) / held
        return res
    finally:
        if hold is not None:
            try:
                hold.p.stdin.close()
            except OSError:
                pass
            try:
                hold.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            hold.stop()
        tun.stop()


def sizes():
    """Bytes on disk: the pinhole binary as benchmarked, stripped (and a release build's,
    $BENCH_RELAY_RELEASE or else build-rel/pinhole, when it exists), ssh and sshd as Debian
    ships them (stripped), and the shared libraries each needs (names only)."""
    out = {}

    def stripped(path, key):
        dst = os.path.join(B.TMP, "%s.stripped" % key)
        try:
            cp = subprocess.run(["strip", "-o", dst, path], capture_output=True, text=True,
                                timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            out[key] = "strip failed: %s" % e
            return
        if cp.returncode != 0:
            out[key] = "strip failed: " + cp.stderr.strip()[-100:]
            return
        out[key] = os.path.getsize(dst)
        out[key + "_unstripped"] = os.path.getsize(path)

    stripped(B.PINHOLE, "pinhole")
    rel = os.environ.get("BENCH_RELAY_RELEASE",
                         os.path.join(B.ROOT, "build-rel", "pinhole"))
    if os.access(rel, os.X_OK):
        stripped(rel, "pinhole_release")
    for name, path in (("ssh", "/usr/bin/ssh"), ("sshd", "/usr/sbin/sshd")):
        if os.path.exists(path):
            out[name] = os.path.getsize(path)
    for name, path in (("pinhole", B.PINHOLE), ("ssh", "/usr/bin/ssh")):
        try:
            cp = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=10)
            out[name + "_libs"] = sorted(l.split()[0] for l in cp.stdout.splitlines()
                                         if "=>" in l)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return out


# ---------------------------------------------------------------- the run


def versions():
    return [("OpenSSH", B.version(["ssh", "-V"], "OpenSSH") + ", cipher " + CIPHER),
            ("iperf3", B.version(["iperf3", "-v"], "iperf")),
            ("OpenSSL", B.version(["openssl", "version"]))]


def run():
    """Runs the relay tests. Returns (markdown section, notes for the summary, raw results)."""
    peers = [p for p in PEERS if p in KNOWN]
    notes = []
    for p in PEERS:
        if p not in KNOWN:
            notes.append("relay: unknown peer %s skipped (known: %s)" % (p, " ".join(KNOWN)))
    results = {p: {k: [] for k in KEYS} for p in peers}
    for p in peers:
        results[p].update({"lat0": None, "latd": None, "m": None, "errors": []})
    t_start = time.monotonic()
    servers = Servers()
    link = {}
    try:
        servers.start("iperf", iperf_argv)
        servers.start("echo64", echo_argv(["-x", "64"]))
        servers.start("echo", echo_argv([]))
        _rounds(peers, results, servers, notes)
        _once(peers, results, servers, link)
    finally:
        servers.stop()
        SX._rmdirs()
    size = sizes()
    notes.append("relay: total run time %.0f s" % (time.monotonic() - t_start))
    for p in peers:
        notes.extend(results[p]["errors"])
        c = B.pick(results[p]["c"], "rate")
        if c and c["errors"] > 0:
            notes.append("%s: %d visitor connections failed or timed out (%d ms) during the "
                         "conn/s run (first errno %d)" % (p, c["errors"], TIMEOUT_MS,
                                                          c["first_errno"]))
        m = results[p]["m"]
        if isinstance(m, dict) and m["failed"] > 0:
            notes.append("%s: %d of %d idle connections failed to open" % (p, m["failed"],
                                                                          m["n"]))
    return build_section(peers, results, size, link, notes), notes, {
        "results": results, "sizes": size, "link_rtt": link}


def _record(results, peer, key, fn, *args):
    try:
        v = fn(*args)
    except Exception as e:  # a peer must never take the whole run down
        msg = str(e) if isinstance(e, B.Failed) else repr(e)
        results[peer]["errors"].append("%s %s: %s" % (peer, key, msg))
        log("  %-8s %-4s FAILED: %s" % (peer, key, msg))
        return None
    if key in ("lat0", "latd", "m"):
        results[peer][key] = v
    else:
        results[peer][key].append(v)
    if key in BULK:
        log("  %-8s %-4s %6.2f Gbit/s%s  (other load %.2f cores)" % (
            peer, key, v["gbps"],
            "  relay %.2f+%.2f s, client %.2f+%.2f s (user+sys) = %.2f s/GiB" % (
                v["relay_u"], v["relay_s"], v["client_u"], v["client_s"], v["cpu_per_gib"])
            if v.get("cpu_per_gib") is not None else "", v["other"]))
    elif key == "c":
        log("  %-8s conn %8.0f conn/s  p50 %.2f ms  p99 %.2f ms  errors %d%s  "
            "(other load %.2f cores)" % (
                peer, v["rate"], v["p50_us"] / 1000, v["p99_us"] / 1000, v["errors"],
                "  CPU %.0f us/conn" % v["cpu_us_per_conn"] if v["cpu_us_per_conn"] else "",
                v["other"]))
    elif key in ("lat0", "latd"):
        log("  %-8s %-4s %d conns: p50 %.3f ms  p99 %.3f ms  errors %d" % (
            peer, key, v["conns"], v["p50_us"] / 1000, v["p99_us"] / 1000, v["errors"]))
    else:
        log("  %-8s mem  %d/%d held in %.1f s: relay %.2f KiB/stream, client %.2f KiB/stream "
            "(RSS); idle client %.0f KiB RSS" % (
                peer, v["held"], v["n"], v["secs"] or 0, v["relay_rss_per"] / 1024,
                v["client_rss_per"] / 1024, v["fresh"]["client"]["rss"] / 1024))
    return v


def _rounds(peers, results, servers, notes):
    state = {"t0": time.monotonic(), "runs": 0, "retries": 0}

    def retried(peer, key, fn, args, left):
        for attempt in range(B.RETRIES + 1):
            v = _record(results, peer, key, fn, *args)
            state["runs"] += 1
            elapsed = time.monotonic() - state["t0"]
            per_run = elapsed / state["runs"]
            if not isinstance(v, dict) or v.get("other", 0.0) <= B.QUIET:
                return
            if attempt == B.RETRIES or elapsed + (left + 1) * per_run > BUDGET:
                return
            state["retries"] += 1
            log("  %-8s %-4s again: other programs used %.2f cores" % (peer, key, v["other"]))

    targets = [servers.port("iperf"), servers.port("echo64")]
    left = ROUNDS * len(peers) * len(KEYS)
    for rnd in range(ROUNDS):
        order = peers if rnd % 2 == 0 else list(reversed(peers))
        log("relay round %d of %d (%s)" % (rnd + 1, ROUNDS, " ".join(order)))
        for peer in order:
            # one tunnel per peer and round for its tests; started again if it died
            tun = None
            try:
                for i, key in enumerate(KEYS):
                    left -= 1
                    if peer != "direct" and (tun is None or not tun.alive()):
                        if tun is not None:
                            results[peer]["errors"].append(
                                "%s: the tunnel died (%s); started again" % (
                                    peer, tun.stderr_tail() or "-"))
                            tun.stop()
                        try:
                            tun = Tunnel(peer, targets).start()
                        except Exception as e:
                            tun = None
                            msg = str(e) if isinstance(e, B.Failed) else repr(e)
                            results[peer]["errors"].append("%s round %d: %s" % (peer, rnd + 1,
                                                                               msg))
                            log("  %-8s FAILED to start: %s" % (peer, msg))
                            left -= len(KEYS) - i - 1
                            break
                    if key == "c":
                        retried(peer, key, conn_test, (tun, servers), left)
                    else:
                        retried(peer, key, bulk_test, (tun, servers, key), left)
            finally:
                if tun is not None:
                    tun.stop()
    notes.append("relay: %d tests run again because the machine was busy with other work" %
                 state["retries"])


def _once(peers, results, servers, link):
    log("relay first-byte latency (%d clients, %d s): loopback, then a %.0f ms round trip "
        "between client and relay" % (LAT_CLIENTS, SECS, RTT_MS))
    try:
        link.update(link_rtt(servers, RTT_MS / 2))
        log("  the delay proxy's round trip on an established connection: p50 %.2f ms "
            "(%.2f-%.2f)" % (link["p50_ms"], link["min_ms"], link["max_ms"]))
    except Exception as e:
        log("  the delay proxy's round trip: FAILED: %r" % e)
    for peer in peers:
        _record(results, peer, "lat0", latency_test, peer, servers, 0.0)
        if peer != "direct":
            _record(results, peer, "latd", latency_test, peer, servers, RTT_MS / 2)
    log("relay idle streams (%d) and idle client" % IDLE)
    for peer in peers:
        if peer != "direct":
            _record(results, peer, "m", idle_test, peer, servers)


# ---------------------------------------------------------------- report


def build_section(peers, results, size, link, notes):
    fmt, ratio = B.fmt, B.ratio
    rows = {}
    for peer in peers:
        r = results[peer]
        x = {}
        for k in BULK:
            b = B.pick(r[k], "gbps")
            x[k] = b["gbps"] if b else None
            x["n" + k] = B.noisy(b)
            x["cpu_" + k] = b.get("cpu_per_gib") if b else None
            x["run_" + k] = b
        c = B.pick(r["c"], "rate")
        x.update({"nc": B.noisy(c), "rate": c["rate"] if c else None,
                  "p50": c["p50_us"] / 1000 if c else None,
                  "p99": c["p99_us"] / 1000 if c else None,
                  "cerr": int(c["errors"]) if c else None,
                  "cpu_conn": c.get("cpu_us_per_conn") if c else None, "run_c": c})
        for k in ("lat0", "latd"):
            v = r[k]
            x[k + "_p50"] = v["p50_us"] / 1000 if v else None
            x[k + "_p99"] = v["p99_us"] / 1000 if v else None
            x[k + "_n"] = int(v["conns"]) if v else None
        m = r["m"] if isinstance(r["m"], dict) else None
        x["m"] = m
        rows[peer] = x
    d, p, s = rows.get("direct"), rows.get("pinhole"), rows.get("ssh")
    L = []
    L.append("## Relay (server/expose) vs ssh -R\n")
    L.append(
        "A visitor reaches a local service through a public port that a tunnel holds, all on "
        "127.0.0.1: pinhole (`pinhole server` and `pinhole expose`, TLS 1.3) against OpenSSH "
        "(`sshd` with its own config and keys, `ssh -N -R`, cipher %s) and against `direct` "
        "(the visitor connects to the local service itself: the limit). Throughput: iperf3 "
        "through the public port for %d s, upload (visitor → local service) and download "
        "(visitor ← local service, iperf3 -R), 1 and 4 streams. conn/s: %d clients at once, "
        "each connect, 64 B echoed, the server closes; latency from socket() to the server's "
        "EOF. CPU: every process of the tunnel, the relay side (pinhole server; sshd and the "
        "processes it forks) and the client side (pinhole expose; ssh) apart, user and system "
        "apart. %d rounds in alternating order, one tunnel per peer and round; each cell is "
        "the median of the quiet runs; a test during which other programs used more than "
        "%.2f cores is run again while time allows.\n" % (CIPHER, SECS, CLIENTS, ROUNDS,
                                                         B.QUIET))
    L.append("| | |\n|---|---|")
    for k, v in versions():
        L.append("| %s | %s |" % (k, v))
    L.append("")
    L.append("```")
    L.append("iperf3 -s -B 127.0.0.1 -p IPERF ; connrate echo 127.0.0.1:ECHO64 -x 64 ; "
             "connrate echo 127.0.0.1:ECHO")
    L.append("pinhole keygen -f server.key ; pinhole keygen -f clientN.key   # "
             "authorized_keys: the clients' public lines")
    L.append("pinhole server 127.0.0.1:RELAY --key server.key --authorized-keys authorized_keys "
             "--control none")
    L.append("pinhole expose 127.0.0.1:IPERF --via 127.0.0.1:RELAY --port PUB --key "
             "client0.key --known-relays FILE --control none   # and one for ECHO64 (client1)")
    L.append("/usr/sbin/sshd -D -e -f sshd.conf    # own host key, AllowTcpForwarding remote; "
             "sshd.conf as in bench/relay.py")
    L.append("ssh -F ssh.conf -N -c %s -R 127.0.0.1:PUB:127.0.0.1:IPERF "
             "-R 127.0.0.1:PUB2:127.0.0.1:ECHO64 127.0.0.1" % CIPHER)
    L.append("iperf3 -c 127.0.0.1 -p PUB -t %d --json [-P 4] [-R]" % SECS)
    L.append("connrate load 127.0.0.1:PUB2 -c %d -t %d -s 64 -T %d -e" % (CLIENTS, SECS,
                                                                         TIMEOUT_MS))
    L.append("connrate load 127.0.0.1:PUB3 -c %d -t %d -s 64 -T %d   # latency; PUB3 -> ECHO, "
             "client -> relay direct or through the delay proxy" % (LAT_CLIENTS, SECS,
                                                                     TIMEOUT_MS))
    L.append("connrate hold 127.0.0.1:PUB3 -n %d -p 64 -w %d -H 150   # idle streams" % (
        IDLE, HOLD_SETUP))
    L.append("```\n")

    L.append("### Relay: throughput and connections\n")
    L.append("| path | upload 1 Gbit/s | download 1 | upload 4 | download 4 | "
             "CPU s/GiB up 1 (relay u+s / client u+s) | CPU s/GiB down 1 | conn/s | "
             "p50 / p99 ms | conn errors | CPU µs/conn |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")

    def cpu_cell(x, k):
        b = x["run_" + k]
        if not b or b.get("cpu_per_gib") is None:
            return "—"
        g = b["bytes"] / 2**30
        return "%.2f (%.2f+%.2f / %.2f+%.2f)" % (b["cpu_per_gib"], b["relay_u"] / g,
                                                 b["relay_s"] / g, b["client_u"] / g,
                                                 b["client_s"] / g)

    for peer in peers:
        x = rows[peer]
        mark = " ⚠" if results[peer]["errors"] else ""
        dag = lambda k: " †" if x["n" + k] else ""
        L.append("| %s%s | %s%s | %s%s | %s%s | %s%s | %s | %s | %s%s | %s / %s | %s | %s |" % (
            peer, mark, fmt(x["u1"], ".2f"), dag("u1"), fmt(x["d1"], ".2f"), dag("d1"),
            fmt(x["u4"], ".2f"), dag("u4"), fmt(x["d4"], ".2f"), dag("d4"),
            cpu_cell(x, "u1"), cpu_cell(x, "d1"), fmt(x["rate"], ",.0f"),
            " †" if x["nc"] else "", fmt(x["p50"], ".2f"), fmt(x["p99"], ".2f"),
            fmt(x["cerr"], "d"), fmt(x["cpu_conn"], ".0f")))
    L.append("")
    L.append("† : every run of this test shared the machine with more than %.2f cores of other "
             "work. — : not measured (direct has no tunnel) or failed; ⚠ : a test of this row "
             "failed, see the notes.\n" % B.QUIET)

    if p and s:
        L.append("pinhole ÷ ssh -R (above 1 is better for pinhole in throughput and conn/s, "
                 "below 1 in CPU and p99) and each ÷ direct:\n")
        L.append("| | upload 1 | download 1 | upload 4 | download 4 | CPU/GiB up 1 | "
                 "CPU/GiB down 1 | conn/s | p99 | CPU/conn |")
        L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        r = lambda a, b, k: fmt(ratio(a[k], b[k]) if a and b else None, ".2f")
        L.append("| pinhole ÷ ssh | %s |" % " | ".join(
            r(p, s, k) for k in ("u1", "d1", "u4", "d4", "cpu_u1", "cpu_d1", "rate", "p99",
                                 "cpu_conn")))
        for peer in ("pinhole", "ssh"):
            x = rows[peer]
            L.append("| %s ÷ direct | %s | — | — | %s | %s | — |" % (
                peer, " | ".join(r(x, d, k) for k in ("u1", "d1", "u4", "d4")),
                r(x, d, "rate"), r(x, d, "p99")))
        L.append("")

    rtt = link.get("p50_ms")
    L.append("### Relay: first-byte latency\n")
    L.append("%d client(s), each connect, 64 B, wait for the 64 B echo, close, for %d s (far "
             "from any limit): socket() to the reply's last byte (it arrives whole). Loopback: "
             "everything on 127.0.0.1. Session RTT: the same, with the tunnel's own connection "
             "(client ↔ relay) carried by a delay proxy (`bench/relay.py delay`) that holds "
             "every chunk %.1f ms each way; the visitor and the local service stay on "
             "loopback. One round trip through the proxy, measured on an established "
             "connection (64 B echoed %s times): %s ms (p50). Extra: p50 over direct's "
             "loopback p50. Round trips: (extra with the delay − extra on loopback) ÷ RTT, the "
             "round trips of the tunnel's connection a visitor waits for, its own processing "
             "time taken out: 1 is the least a relay can do (the request goes to the client "
             "and the answer comes back).\n" % (LAT_CLIENTS, SECS, RTT_MS / 2,
                                                link.get("n", "—"), fmt(rtt, ".2f")))
    L.append("| path | loopback p50 / p99 ms | extra | session RTT %.0f ms: p50 / p99 ms | "
             "extra | extra ÷ RTT | round trips | connections |" % RTT_MS)
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|")
    for peer in peers:
        x = rows[peer]
        base = d["lat0_p50"] if d else None
        e0 = x["lat0_p50"] - base if base and x["lat0_p50"] else None
        ed = x["latd_p50"] - base if base and x["latd_p50"] else None
        L.append("| %s | %s / %s | %s | %s / %s | %s | %s | %s | %s / %s |" % (
            peer, fmt(x["lat0_p50"], ".3f"), fmt(x["lat0_p99"], ".3f"),
            "—" if peer == "direct" else fmt(e0, ".3f") + " ms",
            fmt(x["latd_p50"], ".2f"), fmt(x["latd_p99"], ".2f"),
            "—" if peer == "direct" else fmt(ed, ".2f") + " ms",
            "—" if peer == "direct" or ed is None or not rtt else "%.2f" % (ed / rtt),
            "—" if peer == "direct" or ed is None or e0 is None or not rtt
            else "%.2f" % ((ed - e0) / rtt),
            fmt(x["lat0_n"], "d"), fmt(x["latd_n"], "d")))
    L.append("")

    L.append("### Relay: memory and size\n")
    L.append("Idle streams: %d visitor connections through the tunnel (64 set up at a time, "
             "as many as open within %d s), each with one 64 B round trip, then idle; each "
             "side's memory with them less before (after 16 warm-up connections), summed over "
             "its processes, per stream held. Idle client: the client side one second after "
             "its tunnel is up (one rule, no visitor yet).\n" % (IDLE, HOLD_SETUP))
    L.append("| tunnel | streams held | relay side KiB/stream (RSS / anon / PSS) | client side "
             "KiB/stream (RSS / anon / PSS) | both sides RSS KiB/stream | set-up s | idle client "
             "RSS KiB (anon / PSS) | idle relay RSS KiB (anon / PSS) |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|")
    for peer in peers:
        m = rows[peer]["m"]
        if peer == "direct":
            continue
        if not m:
            L.append("| %s | failed | — | — | — | — | — | — |" % peer)
            continue
        f = m["fresh"]
        L.append("| %s | %d/%d | %.2f / %.2f / %.2f | %.2f / %.2f / %.2f | %.2f | %.1f | "
                 "%.0f (%.0f / %.0f) | %.0f (%.0f / %.0f) |" % (
                     peer, m["held"], m["n"], m["relay_rss_per"] / 1024,
                     m["relay_anon_per"] / 1024, m["relay_pss_per"] / 1024,
                     m["client_rss_per"] / 1024, m["client_anon_per"] / 1024,
                     m["client_pss_per"] / 1024,
                     (m["relay_rss_per"] + m["client_rss_per"]) / 1024, m["secs"] or 0,
                     f["client"]["rss"] / 1024, f["client"]["anon"] / 1024,
                     f["client"]["pss"] / 1024, f["relay"]["rss"] / 1024,
                     f["relay"]["anon"] / 1024, f["relay"]["pss"] / 1024))
    L.append("")
    L.append("anon: RssAnon (the heap and stacks: what the process itself allocated); RSS also "
             "counts the pages of shared libraries (libcrypto, libc) the process touched, PSS "
             "shares those out among the processes mapping them.\n")
    sz = []
    if isinstance(size.get("pinhole"), int):
        sz.append("pinhole as benchmarked (`strip`ped copy): %s bytes (%s unstripped)" % (
            format(size["pinhole"], ","), format(size["pinhole_unstripped"], ",")))
    if isinstance(size.get("pinhole_release"), int):
        sz.append("pinhole from build-rel (`--buildtype=release`), stripped: %s bytes" %
                  format(size["pinhole_release"], ","))
    for k in ("ssh", "sshd"):
        if isinstance(size.get(k), int):
            sz.append("%s (Debian, stripped): %s bytes" % (k, format(size[k], ",")))
    for k in ("pinhole", "ssh"):
        if size.get(k + "_libs"):
            sz.append("%s links %s" % (k, ", ".join(size[k + "_libs"])))
    L.extend("- " + x for x in sz)
    L.append("")

    if p and s:
        L.append("### Relay: pinhole against its targets\n")

        def check(desc, value, ok):
            L.append("- %s: %s — **%s**" % (desc, value,
                     "n/a" if ok is None else ("met" if ok else "NOT met")))

        for k, name in (("u1", "upload, 1 stream"), ("d1", "download, 1 stream"),
                        ("u4", "upload, 4 streams"), ("d4", "download, 4 streams")):
            rr = ratio(p[k], s[k])
            check("throughput ≥ 3× ssh -R, %s" % name, fmt(rr, ".2f") + "×",
                  None if rr is None else rr >= 3.0)
        rr = ratio(p["rate"], s["rate"])
        check("conn/s ≥ 2× ssh -R", fmt(rr, ".2f") + "×", None if rr is None else rr >= 2.0)
        if d and None not in (p["latd_p50"], p["lat0_p50"], d["lat0_p50"]) and rtt:
            ed = p["latd_p50"] - d["lat0_p50"]
            e0 = p["lat0_p50"] - d["lat0_p50"]
            # one RTT is the least a relay can add; the tunnel's own processing (its extra on
            # loopback) comes on top, and a tenth of an RTT for the delay proxy's timers
            check("first byte within one round trip of direct (session RTT %.1f ms as "
                  "measured, p50)" % rtt, "%.2f ms over direct = %.2f RTT; %.2f round trips "
                  "with the %.2f ms it adds on loopback taken out" % (
                      ed, ed / rtt, (ed - e0) / rtt, e0), ed - e0 <= 1.1 * rtt)
        m = p["m"]
        if m:
            per = (m["relay_rss_per"] + m["client_rss_per"]) / 1024
            check("≤ 2 KiB per idle stream (relay + client, RSS)", "%.2f KiB (relay %.2f, "
                  "client %.2f)" % (per, m["relay_rss_per"] / 1024,
                                    m["client_rss_per"] / 1024), per <= 2.0)
            rss = m["fresh"]["client"]["rss"]
            check("idle client < 1 MiB RSS", "%.0f KiB (anon %.0f KiB)" % (
                rss / 1024, m["fresh"]["client"]["anon"] / 1024), rss < 2**20)
        L.append("")
    if notes:
        L.append("### Relay: notes and failures\n")
        for n in notes:
            L.append("- " + n)
        L.append("")
    L.append("### Relay: every run\n")
    L.append("u1/d1/u4/d4: Gbit/s upload/download with 1/4 streams; c: conn/s; in the order run "
             "(retries included). In brackets: CPU used by other programs during that test, in "
             "cores (2 = the whole machine).\n")
    L.append("```")
    for peer in peers:
        r = results[peer]
        for k in KEYS:
            vals = ["%s [%.2f]" % (fmt(v.get("gbps", v.get("rate")), ".2f"), v["other"])
                    for v in r[k]]
            L.append("%-8s %-3s %s" % (peer, k, "  ".join(vals) if vals else "failed"))
        m = r["m"]
        if isinstance(m, dict):
            L.append("%-8s mem held %d/%d, failed %d; relay RSS %d -> %d B (%d procs), client "
                     "RSS %d -> %d B; fresh client RSS %d B, anon %d B" % (
                         peer, m["held"], m["n"], m["failed"], m["m0"]["relay"]["rss"],
                         m["m1"]["relay"]["rss"], m["m1"]["relay"]["procs"],
                         m["m0"]["client"]["rss"], m["m1"]["client"]["rss"],
                         m["fresh"]["client"]["rss"], m["fresh"]["client"]["anon"]))
    L.append("```\n")
    return "\n".join(L) + "\n"
