"""The SOCKS part of the pinhole benchmark; bench.py calls run() (BENCH_ONLY=socks: nothing else).

Measures, for each SOCKS5 proxy (pinhole socks, microsocks, dante, OpenSSH's `ssh -D`) and
for a direct connection (the limit), on 127.0.0.1 only, with connrate's --socks5 option:
  1. new proxied connections per second with p50/p99 latency: CLIENTS clients, each doing
     what a real SOCKS client does, one step after the other (connect to the proxy, greeting
     with the no-authentication method, wait for the method reply, CONNECT with an IPv4
     address, wait for the reply), then 64 B to an echo server and back, then close; the
     echo server closes first (TIME_WAIT stays on its side, as in the TCP part)
  2. throughput with 1 and 4 streams: `connrate bulk` pushes bytes through the proxy to
     `connrate sink` (a discard server) for SECS, then half-closes and counts the time until
     the sink's EOF comes back, so every byte counted arrived
  3. RSS (and PSS) per idle proxied connection: IDLE connections, each with one 64 B round
     trip, then idle; the proxy's memory with them, less before, divided by IDLE
  4. the proxy's CPU seconds per GB during the throughput runs (and µs per connection
     during 1)
"The proxy" is every process of it: dante's mother and its children, `ssh -D` with the
sshd serving it (listener and the per-connection processes, which sshd puts in sessions of
their own), so CPU and memory are summed over all of them.

Why not iperf3 through proxychains4: it works (tried with microsocks: proxychains4 -f CONF
iperf3 -c ... carries both iperf3 connections, control and data, through the proxy, at the
rate connrate bulk measures), but it puts an LD_PRELOAD library whose SOCKS client, timeouts
and localnet/DNS rules come from its own version and config between the numbers and the
proxy, and it would make the throughput test use another SOCKS client than the conn/s test.
connrate bulk uses the same handshake code as connrate load, counts only what reached the
sink (as iperf3's receiver side does), and needs nothing more installed.

Every process runs in its own session with its id in $BENCH_TMP/pgids (sshd's per-connection
sessions too, as soon as they exist), so that run.sh's trap can end it whatever happens here.
The ssh peer needs sshd's privilege separation directory /run/sshd; when it is missing it is
made (empty, 0755) and listed in $BENCH_TMP/rmdirs, and removed again at the end. Neither the
system's sshd (its config, keys, service) nor root's ~/.ssh is used or touched: sshd runs in
the foreground with its own config on a free loopback port, and its host key, the user key,
known_hosts and ssh's config live in the temp dir (ssh is run with -F, so it does not create
~/.ssh either). Every wait is bounded.
"""

import os
import resource
import subprocess
import time

import bench as B

SECS = int(os.environ.get("BENCH_SOCKS_SECS", "3"))
ROUNDS = int(os.environ.get("BENCH_SOCKS_ROUNDS", str(B.ROUNDS)))
CLIENTS = int(os.environ.get("BENCH_SOCKS_CLIENTS", str(B.CLIENTS)))
IDLE = int(os.environ.get("BENCH_SOCKS_IDLE", "2000"))
WORKERS = int(os.environ.get("BENCH_SOCKS_WORKERS", "2"))
BUDGET = float(os.environ.get("BENCH_SOCKS_BUDGET", "200"))
PEERS = os.environ.get("BENCH_SOCKS_PEERS", "direct pinhole microsocks dante ssh").split()
KNOWN = ("direct", "pinhole", "microsocks", "dante", "ssh")
TIMEOUT_MS = 3000  # a connection (handshake included) not done by then counts as an error
PRIVSEP_DIR = "/run/sshd"

log = B.log
HOST = B.HOST


class Failed(B.Failed):
    pass


# ---------------------------------------------------------------- process trees


def _scan():
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = B.read_stat(int(d))
            if st is not None:
                procs[int(d)] = st
    return procs


def tree(leaders):
    """{pid: stat fields} of every process in the sessions of leaders, and of every
    descendant of those (sshd starts a session per connection), zombies included."""
    ps = _scan()
    inset = {pid for pid, st in ps.items() if int(st[3]) in leaders}
    grew = True
    while grew:
        grew = False
        for pid, st in ps.items():
            if pid not in inset and int(st[1]) in inset:
                inset.add(pid)
                grew = True
    return {pid: ps[pid] for pid in inset}


# ---------------------------------------------------------------- proxies


def _write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


class SshKeys:
    """A throw-away host key and user key, made once per run in the temp dir."""

    dir = None

    @classmethod
    def get(cls):
        if cls.dir is not None:
            return cls.dir
        d = os.path.join(B.TMP, "socks-ssh")
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o700)
        for name in ("host_key", "user_key"):
            try:
                cp = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                                     "pinhole-bench", "-f", os.path.join(d, name)],
                                    capture_output=True, text=True, timeout=20)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise Failed("ssh-keygen: %s" % e)
            if cp.returncode != 0:
                raise Failed("ssh-keygen: %s" % cp.stderr.strip()[-200:])
        with open(os.path.join(d, "user_key.pub")) as f:
            _write(os.path.join(d, "authorized_keys"), f.read(), 0o600)
        if not os.path.isdir(PRIVSEP_DIR):
            # listed first: run.sh removes it (if still empty) whatever happens
            with open(os.path.join(B.TMP, "rmdirs"), "a") as f:
                f.write(PRIVSEP_DIR + "\n")
            os.mkdir(PRIVSEP_DIR, 0o755)
        cls.dir = d
        return d


def sshd_config(d, sport):
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
        "AllowTcpForwarding local\n"
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


def ssh_config(d, sport):
    return (
        "Host *\n"
        "  User root\n"
        "  Port %d\n"
        "  IdentityFile %s/user_key\n"
        "  IdentitiesOnly yes\n"
        "  IdentityAgent none\n"
        "  UserKnownHostsFile %s/known_hosts\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  CheckHostIP no\n"
        "  UpdateHostKeys no\n"
        "  BatchMode yes\n"
        "  ExitOnForwardFailure yes\n"
        "  ControlMaster no\n"
        "  ControlPath none\n"
        "  LogLevel ERROR\n" % (sport, d, d))


def dante_config(port):
    return (
        "logoutput: stderr\n"
        "internal: %s port = %d\n"
        "external: %s\n"
        "clientmethod: none\n"
        "socksmethod: none\n"
        "user.privileged: root\n"
        "user.unprivileged: nobody\n"
        "client pass {\n"
        "  from: 127.0.0.0/8 to: 0.0.0.0/0\n"
        "  log: error\n"
        "}\n"
        "socks pass {\n"
        "  from: 127.0.0.0/8 to: 127.0.0.0/8\n"
        "  command: connect\n"
        "  log: error\n"
        "}\n" % (HOST, port, HOST))


def proxy_argv(peer, port):
    if peer == "pinhole":
        return [B.PINHOLE, "socks", "%s:%d" % (HOST, port), "-q", "--workers", str(WORKERS),
                "--control", "none"]
    if peer == "microsocks":
        return ["microsocks", "-i", HOST, "-p", str(port)]
    if peer == "dante":
        cfg = os.path.join(B.TMP, "dante-%d.conf" % port)
        _write(cfg, dante_config(port))
        return ["danted", "-f", cfg, "-p", os.path.join(B.TMP, "dante-%d.pid" % port)]
    raise ValueError(peer)


class Proxy:
    """A running proxy: one or more Procs (ssh: sshd, then ssh -D) and the port it serves."""

    def __init__(self, peer):
        self.peer = peer
        self.procs = []
        self.port = None
        self.sids = set()

    def addr(self):
        return "%s:%d" % (HOST, self.port)

    def _start(self, name, argv, port):
        try:
            p = B.Proc(name, argv)
        except OSError as e:
            raise Failed("%s: cannot run %s: %s" % (self.peer, argv[0], e))
        self.procs.append(p)
        if not B.wait_listen(port, p, timeout=10.0):
            text = p.stderr_text().strip().splitlines()
            raise Failed("%s did not start listening: %s" % (name, " | ".join(text[-3:]) or "-"))
        return p

    def start(self):
        try:
            if self.peer == "ssh":
                d = SshKeys.get()
                sport = B.free_port()
                cfg = os.path.join(d, "sshd-%d.conf" % sport)
                _write(cfg, sshd_config(d, sport))
                self._start("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", cfg], sport)
                with open(os.path.join(d, "host_key.pub")) as f:
                    _write(os.path.join(d, "known_hosts"), "[%s]:%d %s" % (HOST, sport, f.read()))
                ccfg = os.path.join(d, "ssh-%d.conf" % sport)
                _write(ccfg, ssh_config(d, sport))
                self.port = B.free_port()
                self._start("ssh", ["ssh", "-F", ccfg, "-N", "-D", self.addr(), HOST],
                            self.port)
                self.note_sessions()
            else:
                self.port = B.free_port()
                self._start(self.peer, proxy_argv(self.peer, self.port), self.port)
        except BaseException:
            self.stop()
            raise
        return self

    def leaders(self):
        return {p.pid for p in self.procs}

    def note_sessions(self):
        """Appends the sessions that the proxy's processes made (sshd: one per connection)
        to $BENCH_TMP/pgids, so that run.sh's trap ends them too."""
        new = set()
        for pid, st in tree(self.leaders()).items():
            sid = int(st[3])
            if sid not in self.leaders() and sid not in self.sids:
                new.add(sid)
        if new:
            with open(os.path.join(B.TMP, "pgids"), "a") as f:
                for sid in sorted(new):
                    f.write("%d\n" % sid)
            self.sids |= new

    def alive(self):
        return bool(self.procs) and all(p.alive() for p in self.procs)

    def cpu(self):
        """CPU seconds of every process of the proxy, the dead ones included: a live or
        zombie process counts its own time and that of the children it reaped; orphans
        that this driver reaped are counted by their session. Two samples subtract."""
        B.reap_orphans()
        t = 0
        sids = set(self.leaders()) | self.sids
        for pid, st in tree(self.leaders()).items():
            t += int(st[11]) + int(st[12]) + int(st[13]) + int(st[14])
            sids.add(int(st[3]))
        return t / B.CLK_TCK + sum(B._orphan_cpu.get(s, 0.0) for s in sids)

    def mem(self):
        """(RSS bytes, PSS bytes, process count) summed over the proxy's live processes."""
        rss = pss = n = 0
        for pid, st in tree(self.leaders()).items():
            if st[0] == "Z":
                continue
            try:
                with open("/proc/%d/status" % pid) as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            rss += int(line.split()[1]) * 1024
                with open("/proc/%d/smaps_rollup" % pid) as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            pss += int(line.split()[1]) * 1024
                n += 1
            except OSError:
                pass
        return rss, pss, n

    def stop(self):
        # in reverse: ssh -D first, so that sshd's connection ends by itself
        for p in reversed(self.procs):
            p.stop()
            if p.argv[0].endswith("sshd"):
                continue
            end = time.monotonic() + 3.0
            while self.procs and time.monotonic() < end:
                rest = [pid for pid, st in tree(self.leaders()).items()
                        if int(st[3]) in self.sids and st[0] != "Z"]
                if not rest:
                    break
                time.sleep(0.05)
        # what is left of sessions the proxy made (an sshd connection): they are its own
        for pid, st in tree(self.leaders()).items():
            if int(st[3]) in self.sids:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        B.reap_orphans()
        self.procs = []

    def stderr_tail(self):
        return " | ".join(" ".join(p.stderr_text().strip().splitlines()[-2:])
                          for p in self.procs)


# ---------------------------------------------------------------- servers and sampling


class Servers:
    """The echo server of the conn/s test (closes after 64 B), the sink of the throughput
    test and the echo server of the idle test, shared by all tests of the run."""

    def __init__(self):
        self.procs = {}
        self.ports = {}

    def start(self, name, argv_tail):
        port = B.free_port()
        mode = "sink" if name == "sink" else "echo"
        argv = [B.CONNRATE, mode, "%s:%d" % (HOST, port), "-t", "900"] + argv_tail
        p = B.Proc(name, argv)
        self.procs[name] = p
        if not B.wait_listen(port, p):
            raise RuntimeError("%s did not start: %s" % (name, p.stderr_text()))
        self.ports[name] = port

    def addr(self, name):
        return "%s:%d" % (HOST, self.ports[name])

    def cpu(self):
        return sum(B.tree_cpu(p.pid) for p in self.procs.values())

    def stop(self):
        for p in self.procs.values():
            p.stop()
        self.procs = {}


class Sampler:
    """As bench.Sampler: the proxy's CPU, and other(): the CPU that none of the proxy, the
    servers and the client used during the test, in cores (other jobs, the host's steal)."""

    def __init__(self, proxy, servers):
        self.proxy, self.servers = proxy, servers

    def _take(self):
        f = self.proxy.cpu() if self.proxy else 0.0
        s = self.servers.cpu()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (f, s, ru.ru_utime + ru.ru_stime, B.sys_busy(), time.monotonic())

    def start(self):
        self.a = self._take()

    def stop(self):
        self.b = self._take()
        d = [y - x for x, y in zip(self.a, self.b)]
        self.proxy_cpu = d[0]
        self.other = max(0.0, d[3] - d[0] - d[1] - d[2]) / d[4] if d[4] > 0 else 0.0


def run_bounded(name, argv, timeout):
    """Runs argv in its own recorded session; returns (stdout, stderr), or raises Failed."""
    p = B.Proc(name, argv, capture=True)
    try:
        try:
            out, _ = p.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failed("%s did not finish in %d s" % (name, timeout))
        return out.decode("utf-8", "replace"), p.stderr_text()
    finally:
        p.stop()


def via(proxy):
    return ["--socks5", proxy.addr()] if proxy else []


def display_cmd(argv):
    return " ".join("connrate" if a == B.CONNRATE else a for a in argv)


# ---------------------------------------------------------------- measurements


def conn_test(proxy, servers):
    argv = [B.CONNRATE, "load", servers.addr("echo64"), "-c", str(CLIENTS), "-t", str(SECS),
            "-s", "64", "-T", str(TIMEOUT_MS), "-e"] + via(proxy)
    smp = Sampler(proxy, servers)
    smp.start()
    out, err = run_bounded("load", argv, SECS + 15)
    time.sleep(0.3)
    smp.stop()
    kv = B.parse_kv(out)
    if "rate" not in kv:
        raise Failed("connrate load printed nothing: " + err.strip()[-200:])
    if kv["conns"] == 0:
        raise Failed("no connection completed (%d errors, errno %d, SOCKS reply %d)" % (
            kv["errors"], kv["first_errno"], kv.get("socks_first", 0)))
    kv["cpu_us_per_conn"] = smp.proxy_cpu / kv["conns"] * 1e6 if proxy else None
    kv["other"] = smp.other
    kv["cmd"] = display_cmd(argv)
    return kv


def bulk_test(proxy, servers, streams):
    argv = [B.CONNRATE, "bulk", servers.addr("sink"), "-c", str(streams), "-t", str(SECS),
            "-T", "5000"] + via(proxy)
    smp = Sampler(proxy, servers)
    smp.start()
    out, err = run_bounded("bulk", argv, SECS + 30)
    time.sleep(0.3)
    smp.stop()
    kv = B.parse_kv(out)
    if "gbps" not in kv:
        raise Failed("connrate bulk printed nothing: " + err.strip()[-200:])
    if kv.get("failed") or kv["bytes"] == 0:
        raise Failed("bulk: %s" % (err.strip()[-200:] or "no byte went through"))
    kv["cpu"] = smp.proxy_cpu if proxy else None
    kv["cpu_per_gb"] = smp.proxy_cpu / (kv["bytes"] / 1e9) if proxy else None
    kv["other"] = smp.other
    kv["cmd"] = display_cmd(argv)
    return kv


def idle_test(peer, servers):
    """RSS per idle proxied connection: fresh proxy, a short warm-up, baseline, hold IDLE
    connections (each had one 64 B round trip), measure."""
    proxy = Proxy(peer).start()
    hold = None
    target = servers.addr("echo")
    try:
        # warm-up: 16 connections, one round trip each, closed again (first-use allocations,
        # a pre-forked child, a thread pool are not per connection)
        run_bounded("hold", [B.CONNRATE, "hold", target, "-n", "16", "-w", "10", "-H", "1"] +
                    via(proxy), 20)
        time.sleep(0.5)
        proxy.note_sessions()
        rss0, pss0, np0 = proxy.mem()
        # 64 set up at a time: ssh -D opens a channel per connection, one after the other
        hold = B.Proc("hold", [B.CONNRATE, "hold", target, "-n", str(IDLE), "-p", "64", "-w",
                               "60", "-H", "120"] + via(proxy),
                      stdin=subprocess.PIPE, capture=True)
        line = B.read_line(hold, 75)
        kv = B.parse_kv(line or "")
        if "held" not in kv:
            raise Failed("hold printed nothing: " + hold.stderr_text().strip()[-200:])
        held = int(kv["held"])
        if held == 0:
            raise Failed("no idle connection could be opened (%d failed)" % kv["failed"])
        time.sleep(1.0)
        proxy.note_sessions()
        rss1, pss1, np1 = proxy.mem()
        if not proxy.alive():
            raise Failed("the proxy died while holding connections: " + proxy.stderr_tail())
        return {"n": IDLE, "held": held, "failed": int(kv["failed"]), "secs": kv.get("secs"),
                "rss0": rss0, "rss1": rss1, "pss0": pss0, "pss1": pss1,
                "procs0": np0, "procs1": np1,
                "rss_per": (rss1 - rss0) / held, "pss_per": (pss1 - pss0) / held}
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
        proxy.stop()


# ---------------------------------------------------------------- the run


def versions():
    def dpkg(pkg):
        try:
            cp = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg],
                                capture_output=True, text=True, timeout=10)
            return cp.stdout.strip() or "not installed"
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    return [("microsocks", "%s (Debian package; no version option)" % dpkg("microsocks")),
            ("dante", B.version(["danted", "-v"], "Dante")),
            ("OpenSSH", B.version(["ssh", "-V"], "OpenSSH"))]


def run():
    """Runs the SOCKS tests. Returns (markdown section, notes for the summary, raw results)."""
    peers = [p for p in PEERS if p in KNOWN]
    notes = []
    for p in PEERS:
        if p not in KNOWN:
            notes.append("SOCKS: unknown peer %s skipped (known: %s)" % (p, " ".join(KNOWN)))
    results = {p: {"c": [], "b1": [], "b4": [], "m": None, "errors": []} for p in peers}
    t_start = time.monotonic()
    servers = Servers()
    try:
        servers.start("echo64", ["-x", "64"])
        servers.start("sink", [])
        servers.start("echo", [])
        _rounds(peers, results, servers, notes)
    finally:
        servers.stop()
        _rmdirs()
    notes.append("SOCKS: total run time %.0f s" % (time.monotonic() - t_start))
    for p in peers:
        notes.extend(results[p]["errors"])
    for p in peers:
        c = B.pick(results[p]["c"], "rate")
        if c and c["errors"] > 0:
            notes.append("%s: %d connection attempts failed or timed out (%d ms) during the "
                         "conn/s run (first errno %d; %d refused or malformed SOCKS answers, "
                         "first reply code %d)" % (p, c["errors"], TIMEOUT_MS, c["first_errno"],
                                                   c.get("socks_errors", 0),
                                                   c.get("socks_first", 0)))
        for k in ("b1", "b4"):
            for v in results[p][k]:
                if v["drained"] < v["streams"]:
                    notes.append("%s %s: %d of %d streams were not closed by the sink within "
                                 "5 s of the end: that run's rate counts bytes sent, not "
                                 "received" % (p, k, v["streams"] - v["drained"], v["streams"]))
        m = results[p]["m"]
        if isinstance(m, dict) and m["failed"] > 0:
            notes.append("%s: %d of %d idle connections failed to open" % (p, m["failed"],
                                                                          m["n"]))
    return build_section(peers, results, notes), notes, {"results": results}


def _rmdirs():
    path = os.path.join(B.TMP, "rmdirs")
    if not os.path.exists(path):
        return
    with open(path) as f:
        for d in f.read().split():
            try:
                os.rmdir(d)
            except OSError:
                pass
    os.unlink(path)


def _rounds(peers, results, servers, notes):
    def record(peer, key, fn, *args):
        try:
            v = fn(*args)
        except Exception as e:  # a peer must never take the whole run down
            msg = str(e) if isinstance(e, B.Failed) else repr(e)
            results[peer]["errors"].append("%s %s: %s" % (peer, key, msg))
            log("  %-10s %-4s FAILED: %s" % (peer, key, msg))
            return None
        if key == "m":
            results[peer]["m"] = v
            log("  %-10s mem  %d/%d held: RSS %.2f KiB/conn, PSS %.2f KiB/conn (RSS %.1f -> "
                "%.1f MiB, %d -> %d processes, set up in %.1f s)" % (
                    peer, v["held"], v["n"], v["rss_per"] / 1024, v["pss_per"] / 1024,
                    v["rss0"] / 2**20, v["rss1"] / 2**20, v["procs0"], v["procs1"],
                    v["secs"] or 0))
            return v
        results[peer][key].append(v)
        if key == "c":
            log("  %-10s conn %8.0f conn/s  p50 %.2f ms  p99 %.2f ms  errors %d%s  "
                "(other load %.2f cores)" % (
                    peer, v["rate"], v["p50_us"] / 1000, v["p99_us"] / 1000, v["errors"],
                    "  CPU %.0f us/conn" % v["cpu_us_per_conn"] if v["cpu_us_per_conn"]
                    else "", v["other"]))
        else:
            log("  %-10s %-4s %6.2f Gbit/s%s  (other load %.2f cores)" % (
                peer, key, v["gbps"],
                "  proxy CPU %.2f s = %.2f s/GB" % (v["cpu"], v["cpu_per_gb"])
                if v["cpu"] is not None else "", v["other"]))
        return v

    state = {"t0": time.monotonic(), "runs": 0, "retries": 0}

    def retried(peer, key, fn, args, left):
        for attempt in range(B.RETRIES + 1):
            v = record(peer, key, fn, *args)
            state["runs"] += 1
            elapsed = time.monotonic() - state["t0"]
            per_run = elapsed / state["runs"]
            if not isinstance(v, dict) or v.get("other", 0.0) <= B.QUIET:
                return
            if attempt == B.RETRIES or elapsed + (left + 1) * per_run > BUDGET:
                return
            state["retries"] += 1
            log("  %-10s %-4s again: other programs used %.2f cores" % (peer, key, v["other"]))

    keys = ("c", "b1", "b4")
    left = ROUNDS * len(peers) * len(keys)
    for rnd in range(ROUNDS):
        order = peers if rnd % 2 == 0 else list(reversed(peers))
        log("SOCKS round %d of %d (%s)" % (rnd + 1, ROUNDS, " ".join(order)))
        for peer in order:
            # one proxy for the three tests of a round (it serves any target); started
            # again if it died
            proxy = None
            try:
                for i, key in enumerate(keys):
                    left -= 1
                    if peer != "direct" and (proxy is None or not proxy.alive()):
                        if proxy is not None:
                            results[peer]["errors"].append(
                                "%s: the proxy died (%s); started again" % (
                                    peer, proxy.stderr_tail() or "-"))
                            proxy.stop()
                        try:
                            proxy = Proxy(peer).start()
                        except Exception as e:
                            # cannot start: the rest of this round is not run for it
                            proxy = None
                            msg = str(e) if isinstance(e, B.Failed) else repr(e)
                            results[peer]["errors"].append("%s round %d: %s" % (peer, rnd + 1,
                                                                               msg))
                            log("  %-10s FAILED to start: %s" % (peer, msg))
                            left -= len(keys) - i - 1
                            break
                    if key == "c":
                        retried(peer, key, conn_test, (proxy, servers), left)
                    else:
                        retried(peer, key, bulk_test, (proxy, servers, int(key[1:])), left)
            finally:
                if proxy is not None:
                    proxy.stop()
    log("SOCKS idle connections")
    for peer in peers:
        if peer != "direct":
            record(peer, "m", idle_test, peer, servers)
    notes.append("SOCKS: %d tests run again because the machine was busy with other work" %
                 state["retries"])


# ---------------------------------------------------------------- report


def build_section(peers, results, notes):
    fmt, ratio = B.fmt, B.ratio
    rows = {}
    for peer in peers:
        r = results[peer]
        c = B.pick(r["c"], "rate")
        b1 = B.pick(r["b1"], "gbps")
        b4 = B.pick(r["b4"], "gbps")
        m = r["m"] if isinstance(r["m"], dict) else None
        rows[peer] = {
            "nc": B.noisy(c), "n1": B.noisy(b1), "n4": B.noisy(b4),
            "rate": c["rate"] if c else None,
            "p50": c["p50_us"] / 1000 if c else None,
            "p99": c["p99_us"] / 1000 if c else None,
            "cerr": int(c["errors"]) if c else None,
            "cpu_conn": c.get("cpu_us_per_conn") if c else None,
            "t1": b1["gbps"] if b1 else None,
            "t4": b4["gbps"] if b4 else None,
            "cpu1": b1.get("cpu_per_gb") if b1 else None,
            "cpu4": b4.get("cpu_per_gb") if b4 else None,
            "kib": m["rss_per"] / 1024 if m else None,
            "pss_kib": m["pss_per"] / 1024 if m else None,
            "held": "%d/%d" % (m["held"], m["n"]) if m else None,
        }
    d = rows.get("direct")
    p = rows.get("pinhole")
    L = []
    L.append("## SOCKS5\n")
    L.append(
        "Each proxy on 127.0.0.1, clients and servers too. conn/s: %d clients at once, each "
        "connecting to the proxy, sending the SOCKS5 greeting (no authentication), waiting "
        "for the method reply, sending CONNECT (IPv4 address), waiting for the reply, then "
        "64 B to an echo server and back, then close; nothing pipelined; latency from "
        "socket() to the echo server's EOF. Throughput: `connrate bulk` writes through the "
        "proxy to a discard server for %d s, with 1 and 4 connections; the time runs until "
        "the sink has read everything (half-close, then its EOF back). CPU: every process of "
        "the proxy (dante's children; for ssh -D the ssh client and the sshd serving it), "
        "user+system, per GB of the throughput runs and per connection of the conn/s run. "
        "Idle: %d proxied connections, each with one 64 B round trip, then idle; the "
        "proxy's memory with them less before (after 16 warm-up connections), summed over "
        "its processes. %d rounds in alternating order, one proxy started per peer and "
        "round for its three tests; each cell is the median of the quiet runs; a test "
        "during which other programs used more than %.2f cores is run again while time "
        "allows. `direct` has no proxy and no handshake: the limit.\n" % (
            CLIENTS, SECS, IDLE, ROUNDS, B.QUIET))
    L.append("| | |\n|---|---|")
    for k, v in versions():
        L.append("| %s | %s |" % (k, v))
    L.append("")
    L.append("```")
    L.append("connrate echo 127.0.0.1:ECHO -x 64 ; connrate sink 127.0.0.1:SINK ; "
             "connrate echo 127.0.0.1:IDLEECHO")
    L.append("connrate load 127.0.0.1:ECHO -c %d -t %d -s 64 -T %d -e --socks5 127.0.0.1:PORT"
             % (CLIENTS, SECS, TIMEOUT_MS))
    L.append("connrate bulk 127.0.0.1:SINK -c 1|4 -t %d -T 5000 --socks5 127.0.0.1:PORT" % SECS)
    L.append("connrate hold 127.0.0.1:IDLEECHO -n %d -p 64 --socks5 127.0.0.1:PORT" % IDLE)
    L.append("pinhole socks 127.0.0.1:PORT -q --workers %d --control none" % WORKERS)
    L.append("microsocks -i 127.0.0.1 -p PORT          # logs a line per connection to "
             "stderr (a file); 1.0.3 cannot be quieted")
    L.append("danted -f dante.conf -p dante.pid       # foreground; dante.conf:")
    for line in dante_config(0).splitlines():
        L.append("    " + line.replace("port = 0", "port = PORT"))
    L.append("/usr/sbin/sshd -D -e -f sshd.conf        # its own host key, port SSHPORT; "
             "sshd.conf as in bench/socks.py")
    L.append("ssh -F ssh.conf -N -D 127.0.0.1:PORT 127.0.0.1   # its own user key and "
             "known_hosts; default cipher")
    L.append("```\n")

    L.append("### SOCKS5: absolute numbers\n")
    L.append("| proxy | conn/s | ÷ direct | p50 ms | p99 ms | conn errors | CPU µs/conn | "
             "1 stream Gbit/s | 4 streams Gbit/s | ÷ direct (1 / 4) | CPU s/GB (1 / 4) | "
             "idle KiB/conn (RSS) | idle KiB/conn (PSS) | idle conns held |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for peer in peers:
        x = rows[peer]
        mark = " ⚠" if results[peer]["errors"] else ""
        dag = lambda k: " †" if x[k] else ""
        rd = lambda k: fmt(ratio(x[k], d[k]) if d else None, ".2f")
        L.append("| %s%s | %s%s | %s | %s | %s | %s | %s | %s%s | %s%s | %s / %s | %s / %s | "
                 "%s | %s | %s |" % (
                     peer, mark, fmt(x["rate"], ",.0f"), dag("nc"), rd("rate"),
                     fmt(x["p50"], ".2f"), fmt(x["p99"], ".2f"), fmt(x["cerr"], "d"),
                     fmt(x["cpu_conn"], ".0f"), fmt(x["t1"], ".2f"), dag("n1"),
                     fmt(x["t4"], ".2f"), dag("n4"), rd("t1"), rd("t4"),
                     fmt(x["cpu1"], ".2f"), fmt(x["cpu4"], ".2f"), fmt(x["kib"], ".2f"),
                     fmt(x["pss_kib"], ".2f"), fmt(x["held"], "s")))
    L.append("")
    L.append("† : every run of this test shared the machine with more than %.2f cores of "
             "other work, so the number is likely low. — : not measured (direct has no "
             "proxy) or failed; ⚠ : a test of this row failed, see the notes. RSS sums VmRSS "
             "over the proxy's processes, so a forking proxy (dante, sshd) counts its shared "
             "pages once per process; PSS shares them out.\n" % B.QUIET)

    L.append("### SOCKS5: pinhole against each\n")
    L.append("pinhole's number divided by the other's: above 1 is better for pinhole in "
             "conn/s and throughput, below 1 is better in p99, CPU and memory.\n")
    L.append("| pinhole ÷ | conn/s | p99 | 1 stream | 4 streams | CPU s/GB (1 stream) | "
             "CPU µs/conn | idle KiB/conn (RSS) | idle KiB/conn (PSS) |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for peer in peers:
        if peer == "pinhole":
            continue
        x = rows[peer]
        rp = lambda k: fmt(ratio(p[k], x[k]) if p else None, ".2f")
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            peer, rp("rate"), rp("p99"), rp("t1"), rp("t4"), rp("cpu1"), rp("cpu_conn"),
            rp("kib"), rp("pss_kib")))
    L.append("")

    if p is not None:
        L.append("### SOCKS5: pinhole against its targets\n")

        def check(desc, value, ok):
            L.append("- %s: %s — **%s**" % (desc, value,
                     "n/a" if ok is None else ("met" if ok else "NOT met")))

        dn, ms = rows.get("dante"), rows.get("microsocks")
        r = ratio(p["t1"], dn["t1"]) if dn else None
        check("throughput ≥ 1.3× dante, 1 stream", fmt(r, ".2f") + "×",
              None if r is None else r >= 1.3)
        r = ratio(p["t4"], dn["t4"]) if dn else None
        check("throughput ≥ 1.3× dante, 4 streams", fmt(r, ".2f") + "×",
              None if r is None else r >= 1.3)
        r = ratio(p["rate"], ms["rate"]) if ms else None
        check("conn/s ≥ 2× microsocks", fmt(r, ".2f") + "×", None if r is None else r >= 2.0)
        check("≤ 1 KiB per idle proxied connection (RSS)", fmt(p["kib"], ".2f") + " KiB",
              None if p["kib"] is None else p["kib"] <= 1.0)
        L.append("")
    if notes:
        L.append("### SOCKS5: notes and failures\n")
        for n in notes:
            L.append("- " + n)
        L.append("")
    L.append("### SOCKS5: every run\n")
    L.append("c: conn/s; b1/b4: Gbit/s with 1/4 streams; in the order run (retries "
             "included). In brackets: CPU used by other programs during that test, in cores "
             "(2 = the whole machine).\n")
    L.append("```")
    for peer in peers:
        r = results[peer]
        for k in ("c", "b1", "b4"):
            vals = ["%s [%.2f]" % (fmt(x.get("gbps", x.get("rate")), ".2f"), x["other"])
                    for x in r[k]]
            L.append("%-10s %-3s %s" % (peer, k, "  ".join(vals) if vals else "failed"))
        if isinstance(r["m"], dict):
            m = r["m"]
            L.append("%-10s mem held %d/%d, failed %d; RSS %d -> %d B, PSS %d -> %d B, "
                     "procs %d -> %d" % (peer, m["held"], m["n"], m["failed"], m["rss0"],
                                         m["rss1"], m["pss0"], m["pss1"], m["procs0"],
                                         m["procs1"]))
    L.append("```\n")
    return "\n".join(L) + "\n"
