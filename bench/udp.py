"""The UDP part of the pinhole benchmark; bench.py calls run() (BENCH_ONLY=udp: nothing else).

Measures, for each forwarder and for a direct path (the limit), with connrate's UDP modes:
  1. closed-loop round trips per second: CLIENTS sockets, each keeping WINDOW datagrams in
     flight through the forwarder to an echo server; 64 B and 1,400 B datagrams. A datagram
     not back within TIMEOUT ms is counted lost and its window slot goes on, so a loss costs
     at most that much time. Each round trip is two datagrams through the forwarder.
  2. open loop, 64 B: a fixed rate (OPEN_FRAC of the direct path's closed-loop rate) sent
     whatever comes back; the share delivered and the loss
  3. the forwarder's CPU seconds per million datagrams during 1 (utime+stime, /proc)
  4. the forwarder's RSS per live session: SESSIONS client sockets, one echoed datagram each
Two paths: 127.0.0.1 (direct, pinhole, nginx stream, socat), and a veth pair between two
network namespaces this module creates and removes (direct-veth, dnat-veth: the kernel's own
DNAT by an nftables rule in the server's namespace, pinhole-veth), so that the kernel's NAT
is compared with a direct path of its own kind. Nothing leaves 127.0.0.1 or those
namespaces.

Every process runs in its own session with its id in $BENCH_TMP/pgids; the namespaces are
listed in $BENCH_TMP/netns, so that run.sh's trap ends and removes them whatever happens.
Every wait is bounded.
"""

import os
import subprocess
import time

import bench as B

# 3 s: a datagram rate settles within a fraction of a second, and the UDP part has three
# tests per peer; BENCH_SECS stays the TCP part's
SECS = int(os.environ.get("BENCH_UDP_SECS", "3"))
ROUNDS = int(os.environ.get("BENCH_UDP_ROUNDS", str(B.ROUNDS)))
CLIENTS = int(os.environ.get("BENCH_UDP_CLIENTS", "32"))
WINDOW = int(os.environ.get("BENCH_UDP_WINDOW", "16"))
TIMEOUT_MS = int(os.environ.get("BENCH_UDP_TIMEOUT", "200"))
SESSIONS = int(os.environ.get("BENCH_UDP_SESSIONS", "10000"))
OPEN_FRAC = float(os.environ.get("BENCH_UDP_OPEN", "0.8"))
BUDGET = float(os.environ.get("BENCH_UDP_BUDGET", "300"))
PEERS = os.environ.get(
    "BENCH_UDP_PEERS",
    "direct pinhole nginx socat direct-veth dnat-veth pinhole-veth").split()
SIZES = (64, 1400)

KNOWN = ("direct", "pinhole", "nginx", "socat", "direct-veth", "dnat-veth", "pinhole-veth")
# a forwarder that forks a process per client cannot hold SESSIONS of them here
SESSION_CAP = {"socat": 1000}
MEM_PEERS = ("pinhole", "nginx", "socat")
# pinhole's default --max-sessions: 16,384, or what the spare descriptors allow; written
# out for the memory test so that a lower fd limit shows as an error, not as evictions
PINHOLE_MEM_SESSIONS = 16384

# the veth path: an address pair from the benchmarking range (RFC 2544), inside namespaces
CLIENT_IP = "198.18.0.1"
SERVER_IP = "198.18.0.2"
NFT_TABLE = "pinhole_bench"

log = B.log


class Failed(B.Failed):
    pass


def veth(peer):
    return peer.endswith("-veth")


def base(peer):
    """The direct path a peer is compared with."""
    return "direct-veth" if veth(peer) else "direct"


# ---------------------------------------------------------------- namespaces


class Netns:
    """Two namespaces joined by a veth pair: the client's (CLIENT_IP) and the server's
    (SERVER_IP), where the echo server, the forwarder and the DNAT rule live. Nothing is
    added to the namespace the benchmark runs in."""

    def __init__(self):
        tag = "phb%d" % os.getpid()
        self.c, self.s = tag + "c", tag + "s"
        self.made = False

    def _ip(self, *args):
        cp = subprocess.run(["ip"] + list(args), capture_output=True, text=True, timeout=10)
        if cp.returncode != 0:
            raise Failed("ip %s: %s" % (" ".join(args), cp.stderr.strip()))

    def setup(self):
        # listed before they exist: run.sh removes whatever of them is left
        with open(os.path.join(B.TMP, "netns"), "a") as f:
            f.write("%s\n%s\n" % (self.c, self.s))
        self.made = True
        self._ip("netns", "add", self.c)
        self._ip("netns", "add", self.s)
        self._ip("-n", self.c, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
                 "netns", self.s)
        self._ip("-n", self.c, "addr", "add", CLIENT_IP + "/24", "dev", "v0")
        self._ip("-n", self.s, "addr", "add", SERVER_IP + "/24", "dev", "v1")
        for ns, dev in ((self.c, "v0"), (self.s, "v1")):
            self._ip("-n", ns, "link", "set", "lo", "up")
            self._ip("-n", ns, "link", "set", dev, "up")

    def teardown(self):
        if not self.made:
            return
        for ns in (self.c, self.s):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self.made = False

    def wrap(self, ns, argv):
        return ["ip", "netns", "exec", ns] + argv

    def nft(self, script):
        cp = subprocess.run(self.wrap(self.s, ["nft", "-f", "-"]), input=script,
                            capture_output=True, text=True, timeout=10)
        if cp.returncode != 0:
            raise Failed("nft: %s" % cp.stderr.strip()[-200:])

    def dnat_add(self, lport, tport):
        self.nft("table ip %s {\n"
                 "  chain pre {\n"
                 "    type nat hook prerouting priority dstnat; policy accept;\n"
                 "    ip daddr %s udp dport %d dnat to %s:%d\n"
                 "  }\n"
                 "}\n" % (NFT_TABLE, SERVER_IP, lport, SERVER_IP, tport))

    def dnat_del(self):
        subprocess.run(self.wrap(self.s, ["nft", "delete", "table", "ip", NFT_TABLE]),
                       capture_output=True, timeout=10)


NS = Netns()


# ---------------------------------------------------------------- processes


def bound(port, ns=None):
    argv = ["ss", "-ulnH", "sport = :%d" % port]
    if ns:
        argv[1:1] = ["-N", ns]
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    return cp.stdout.strip() != ""


def wait_bound(port, proc, ns=None, timeout=8.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if bound(port, ns):
            return True
        if not proc.alive():
            return False
        time.sleep(0.05)
    return False


def run_bounded(name, argv, timeout):
    """Runs argv in its own recorded session; returns its stdout, or raises Failed."""
    p = B.Proc(name, argv, capture=True)
    try:
        try:
            out, _ = p.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failed("%s did not finish in %d s" % (name, timeout))
        return out.decode("utf-8", "replace"), p.stderr_text()
    finally:
        p.stop()


def start_echo(ns=None):
    port = B.free_port()
    host = SERVER_IP if ns else B.HOST
    argv = [B.CONNRATE, "uecho", "%s:%d" % (host, port), "-t", "900"]
    p = B.Proc("uecho", NS.wrap(ns, argv) if ns else argv)
    if not wait_bound(port, p, ns):
        p.stop()
        raise Failed("the UDP echo server did not start: " + p.stderr_text().strip()[-200:])
    return p, port


def fwd_argv(peer, host, lport, tport, mem=False):
    tag = "%s-%d" % (peer, lport)
    if peer in ("pinhole", "pinhole-veth"):
        argv = [B.PINHOLE, "forward", "udp://%s:%d" % (host, lport), "%s:%d" % (host, tport),
                "--workers", "2"]
        if mem:
            argv += ["--max-sessions", str(PINHOLE_MEM_SESSIONS)]
        return argv
    if peer == "nginx":
        d = os.path.join(B.TMP, tag + ".nginx")
        os.makedirs(d, exist_ok=True)
        cfg = os.path.join(d, "nginx.conf")
        load = ""
        if os.path.exists(B.NGINX_STREAM_SO):
            load = "load_module %s;\n" % B.NGINX_STREAM_SO
        with open(cfg, "w") as f:
            # a session per client address as pinhole keeps it: no proxy_responses or
            # proxy_requests limit, ended after 60 s without a datagram (pinhole's default)
            f.write(
                load + "daemon off;\n"
                "master_process on;\n"
                "worker_processes 2;\n"
                "worker_rlimit_nofile 19900;\n"
                "pid %s/nginx.pid;\n"
                "error_log %s/error.log notice;\n"
                "events { worker_connections 19500; }\n"
                "stream {\n"
                "  server {\n"
                "    listen %s:%d udp reuseport;\n"
                "    proxy_pass %s:%d;\n"
                "    proxy_timeout 60s;\n"
                "  }\n"
                "}\n" % (d, d, host, lport, host, tport)
            )
        return ["nginx", "-p", d, "-e", d + "/error.log", "-c", cfg]
    if peer == "socat":
        # UDP4-LISTEN with fork: the first datagram of a client makes a child with a socket
        # connected to that client, which forwards both ways until 60 s without traffic
        return ["socat", "-T", "60", "UDP4-LISTEN:%d,bind=%s,fork,reuseaddr" % (lport, host),
                "UDP4:%s:%d" % (host, tport)]
    raise ValueError(peer)


def start_fwd(peer, tport, mem=False):
    ns = NS.s if veth(peer) else None
    host = SERVER_IP if ns else B.HOST
    lport = B.free_port()
    argv = fwd_argv(peer, host, lport, tport, mem)
    try:
        p = B.Proc(peer, NS.wrap(ns, argv) if ns else argv)
    except OSError as e:
        raise Failed("%s: cannot run %s: %s" % (peer, argv[0], e))
    if not wait_bound(lport, p, ns):
        text = p.stderr_text().strip().splitlines()
        p.stop()
        raise Failed("%s did not bind: %s" % (peer, " | ".join(text[-3:]) or "-"))
    return p, lport


def stopped_line(fwd):
    lines = [l for l in fwd.stderr_text().splitlines() if "stopped udp:" in l]
    return lines[-1].strip() if lines else None


# ---------------------------------------------------------------- sampling


def ksoftirqd_pids():
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/comm" % d) as f:
                    if f.read().startswith("ksoftirqd/"):
                        pids.append(int(d))
            except OSError:
                pass
    return pids


def threads_cpu(pids):
    total = 0
    for pid in pids:
        st = B.read_stat(pid)
        if st is not None:
            total += int(st[11]) + int(st[12])
    return total / B.CLK_TCK


def udp_drops(ns_list):
    """Datagrams the kernel dropped for want of socket buffer space (RcvbufErrors +
    SndbufErrors + MemErrors of /proc/net/snmp), summed over the given namespaces (None: this
    one)."""
    total = 0
    for ns in ns_list:
        try:
            if ns is None:
                with open("/proc/net/snmp") as f:
                    text = f.read()
            else:
                text = subprocess.run(NS.wrap(ns, ["cat", "/proc/net/snmp"]),
                                      capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        rows = [l.split() for l in text.splitlines() if l.startswith("Udp:")]
        if len(rows) < 2:
            return None
        kv = dict(zip(rows[0][1:], (int(x) for x in rows[1][1:])))
        total += kv.get("RcvbufErrors", 0) + kv.get("SndbufErrors", 0) + kv.get("MemErrors", 0)
    return total


class Sampler:
    """As bench.Sampler, and the kernel's softirq threads count as the test's own work: under
    a datagram flood much of the network stack runs there, not in the processes."""

    def __init__(self, fwd, srv):
        self.fwd, self.srv = fwd, srv
        self.ksoft = ksoftirqd_pids()

    def _take(self):
        import resource

        f = B.tree_cpu(self.fwd.pid) if self.fwd else 0.0
        s = B.tree_cpu(self.srv.pid)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (f, s, ru.ru_utime + ru.ru_stime, threads_cpu(self.ksoft), B.sys_busy(),
                time.monotonic())

    def start(self):
        self.a = self._take()

    def stop(self):
        self.b = self._take()
        d = [y - x for x, y in zip(self.a, self.b)]
        self.fwd_cpu = d[0]
        self.softirq = d[3]
        self.other = max(0.0, d[4] - d[0] - d[1] - d[2] - d[3]) / d[5] if d[5] > 0 else 0.0


# ---------------------------------------------------------------- measurements


def load_argv(peer, port, size, rate=None):
    host = SERVER_IP if veth(peer) else B.HOST
    argv = [B.CONNRATE, "uload", "%s:%d" % (host, port), "-c", str(CLIENTS), "-t", str(SECS),
            "-s", str(size), "-T", str(TIMEOUT_MS)]
    if rate:
        argv += ["-R", "%.0f" % rate]
    else:
        argv += ["-W", str(WINDOW)]
    return argv


def display_cmd(argv):
    """The command as one would type it (connrate's path shortened)."""
    return " ".join("connrate" if a == B.CONNRATE else a for a in argv)


def measure(peer, size, rate=None):
    """One closed-loop run (or open-loop at rate) of peer. Returns a result dict."""
    ns = NS.s if veth(peer) else None
    echo, eport = start_echo(ns)
    fwd = None
    dnat = False
    try:
        port = eport
        if peer == "dnat-veth":
            port = B.free_port()
            NS.dnat_add(port, eport)
            dnat = True
        elif peer not in ("direct", "direct-veth"):
            fwd, port = start_fwd(peer, eport)
        argv = load_argv(peer, port, size, rate)
        nss = [NS.c, NS.s] if ns else [None]
        drops0 = udp_drops(nss)
        smp = Sampler(fwd, echo)
        smp.start()
        out, err = run_bounded("uload", NS.wrap(NS.c, argv) if ns else argv, SECS + 20)
        # let the forwarder finish with what is in its queues before its CPU is read
        time.sleep(0.3)
        smp.stop()
        drops1 = udp_drops(nss)
        kv = B.parse_kv(out)
        if "rate" not in kv:
            raise Failed("connrate uload printed nothing: " + err.strip()[-200:])
        if kv["rcvd"] == 0:
            raise Failed("no datagram came back (sent %d, errors %d)" % (kv["sent"],
                                                                           kv["errors"]))
        moved = kv["sent"] + kv["rcvd"] + kv["late"]
        # everything that came back, late or not, per second: what the path carried
        kv["back"] = (kv["rcvd"] + kv["late"]) / kv["secs"] if kv["secs"] > 0 else None
        kv["cpu"] = smp.fwd_cpu if fwd else None
        kv["cpu_per_m"] = smp.fwd_cpu / moved * 1e6 if fwd and moved else None
        kv["softirq"] = smp.softirq
        kv["other"] = smp.other
        kv["kdrops"] = (drops1 - drops0) if drops0 is not None and drops1 is not None else None
        kv["cmd"] = display_cmd(argv)
        if fwd is not None and not fwd.alive():
            raise Failed("the forwarder died during the run")
        return kv
    finally:
        if fwd is not None:
            fwd.stop()
            if peer.startswith("pinhole"):
                measure.last_stopped = stopped_line(fwd)
        if dnat:
            NS.dnat_del()
        echo.stop()


measure.last_stopped = None


def session_mem(peer):
    """RSS per live session: fresh forwarder, a short warm-up, baseline, N sessions, measure."""
    n = min(SESSIONS, SESSION_CAP.get(peer, SESSIONS))
    echo, eport = start_echo()
    fwd = hold = None
    try:
        fwd, port = start_fwd(peer, eport, mem=True)
        addr = "%s:%d" % (B.HOST, port)
        # warm-up: 16 sessions (first-use allocations, not per session)
        run_bounded("uhold", [B.CONNRATE, "uhold", addr, "-n", "16", "-w", "10", "-H", "1"], 20)
        time.sleep(0.5)
        rss0, pss0, np0 = B.tree_mem(fwd.pid)
        # a forking forwarder is slow to take new clients: fewer set up at a time
        par = "16" if peer == "socat" else "256"
        hold = B.Proc("uhold", [B.CONNRATE, "uhold", addr, "-n", str(n), "-p", par, "-w", "60",
                                "-H", "120"], stdin=subprocess.PIPE, capture=True)
        line = B.read_line(hold, 75)
        kv = B.parse_kv(line or "")
        if "held" not in kv:
            raise Failed("uhold printed nothing: " + hold.stderr_text().strip()[-200:])
        held = int(kv["held"])
        if held == 0:
            raise Failed("no session could be set up (%d failed)" % kv["failed"])
        time.sleep(1.0)
        rss1, pss1, np1 = B.tree_mem(fwd.pid)
        if not fwd.alive():
            raise Failed("the forwarder died while holding sessions")
        return {"n": n, "held": held, "failed": int(kv["failed"]), "secs": kv.get("secs"),
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
        if fwd is not None:
            fwd.stop()
            if peer == "pinhole":
                session_mem.last_stopped = stopped_line(fwd)
        echo.stop()


session_mem.last_stopped = None


# ---------------------------------------------------------------- the run


def run():
    """Runs the UDP tests. Returns (markdown section, notes for the summary, raw results)."""
    peers = [p for p in PEERS if p in KNOWN]
    notes = []
    for p in PEERS:
        if p not in KNOWN:
            notes.append("UDP: unknown peer %s skipped (known: %s)" % (p, " ".join(KNOWN)))
    results = {p: {"u64": [], "u1400": [], "o64": [], "m": None, "errors": []} for p in peers}
    stopped = []
    t_start = time.monotonic()

    if any(veth(p) for p in peers):
        try:
            NS.setup()
        except (Failed, OSError, subprocess.TimeoutExpired) as e:
            NS.teardown()
            notes.append("UDP: the veth namespaces could not be made (%s): the -veth rows "
                         "are not measured" % e)
            peers = [p for p in peers if not veth(p)]
    try:
        _rounds(peers, results, stopped, notes)
    finally:
        NS.teardown()
    notes.append("UDP: total run time %.0f s" % (time.monotonic() - t_start))
    for p in peers:
        notes.extend(results[p]["errors"])
    return build_section(peers, results, notes, stopped), notes, {
        "results": results, "stopped": stopped}


def _rounds(peers, results, stopped, notes):
    def record(peer, key, fn, *args):
        try:
            v = fn(peer, *args)
        except Exception as e:  # a peer must never take the whole run down
            msg = str(e) if isinstance(e, B.Failed) else repr(e)
            results[peer]["errors"].append("%s %s: %s" % (peer, key, msg))
            log("  %-12s %-5s FAILED: %s" % (peer, key, msg))
            return None
        if key == "m":
            results[peer]["m"] = v
            log("  %-12s mem   %d/%d held: RSS %.2f KiB/session, PSS %.2f KiB/session "
                "(RSS %.1f -> %.1f MiB, %d -> %d processes, set up in %.1f s)" % (
                    peer, v["held"], v["n"], v["rss_per"] / 1024, v["pss_per"] / 1024,
                    v["rss0"] / 2**20, v["rss1"] / 2**20, v["procs0"], v["procs1"],
                    v["secs"] or 0))
            if session_mem.last_stopped:
                stopped.append("%s mem: %s" % (peer, session_mem.last_stopped))
                log("               pinhole: " + session_mem.last_stopped)
                session_mem.last_stopped = None
            return v
        results[peer][key].append(v)
        extra = ""
        if v.get("cpu") is not None:
            extra = "  CPU %.2f s = %.2f s/M dgrams" % (v["cpu"], v["cpu_per_m"])
        log("  %-12s %-5s %9.0f rt/s  sent %d lost %d late %d bad %d%s  p50 %.2f ms "
            "p99 %.2f ms%s  kernel drops %s  (softirq %.2f s, other load %.2f cores)" % (
                peer, key, v["rate"], v["sent"], v["lost"], v["late"], v["bad"],
                "  unsent %d" % v["unsent"] if v.get("unsent") else "",
                v["p50_us"] / 1000, v["p99_us"] / 1000, extra,
                "?" if v["kdrops"] is None else "%d" % v["kdrops"], v["softirq"], v["other"]))
        if measure.last_stopped:
            stopped.append("%s %s: %s" % (peer, key, measure.last_stopped))
            log("               pinhole: " + measure.last_stopped)
            measure.last_stopped = None
        return v

    def retried(peer, key, fn, args, left, state):
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
            log("  %-12s %-5s again: other programs used %.2f cores" % (peer, key,
                                                                       v["other"]))

    state = {"t0": time.monotonic(), "runs": 0, "retries": 0}
    closed = [("u%d" % s, measure, (s,)) for s in SIZES]
    left = ROUNDS * len(peers) * (len(closed) + (1 if OPEN_FRAC > 0 else 0))
    for rnd in range(ROUNDS):
        order = peers if rnd % 2 == 0 else list(reversed(peers))
        log("UDP round %d of %d, closed loop (%s)" % (rnd + 1, ROUNDS, " ".join(order)))
        for peer in order:
            for key, fn, args in closed:
                left -= 1
                retried(peer, key, fn, args, left, state)
    if OPEN_FRAC > 0:
        # the offered rate: a share of what the direct path of the same kind carried
        rates = {}
        for d in ("direct", "direct-veth"):
            r = B.pick(results[d]["u64"], "rate") if d in results else None
            if r:
                rates[d] = r["rate"] * OPEN_FRAC
        for rnd in range(ROUNDS):
            order = peers if rnd % 2 == 0 else list(reversed(peers))
            log("UDP round %d of %d, open loop (%s)" % (rnd + 1, ROUNDS, " ".join(order)))
            for peer in order:
                left -= 1
                if base(peer) not in rates:
                    if rnd == 0:
                        results[peer]["errors"].append(
                            "%s o64: no rate for the open loop (%s was not measured)" % (
                                peer, base(peer)))
                    continue
                retried(peer, "o64", measure, (64, rates[base(peer)]), left, state)
    log("UDP live sessions")
    for peer in peers:
        if peer in MEM_PEERS:
            record(peer, "m", session_mem)
    notes.append("UDP: %d tests run again because the machine was busy with other work" %
                 state["retries"])


# ---------------------------------------------------------------- report


def build_section(peers, results, notes, stopped):
    fmt, ratio = B.fmt, B.ratio
    rows = {}
    for peer in peers:
        r = results[peer]
        x = {}
        for key in ("u64", "u1400", "o64"):
            v = B.pick(r[key], "rate")
            x[key] = v
            x["n" + key] = B.noisy(v)
        m = r["m"] if isinstance(r["m"], dict) else None
        x["m"] = m
        rows[peer] = x

    def g(peer, key, field):
        v = rows[peer][key]
        return v.get(field) if v else None

    def dag(peer, key):
        return " †" if rows[peer]["n" + key] else ""

    def lost(peer, key):
        v = rows[peer][key]
        if not v:
            return "—"
        return "%d (%.2f %%)" % (v["lost"], 100.0 * v["lost"] / v["sent"] if v["sent"] else 0)

    def path(peer):
        return "veth pair" if veth(peer) else "127.0.0.1"

    L = []
    L.append("## UDP\n")
    L.append(
        "Request/response through each forwarder to a UDP echo server, closed loop: %d client "
        "sockets (%d client addresses), each keeping %d datagrams in flight; each echo sends "
        "the next one. A round trip is two datagrams through the forwarder. A datagram not "
        "back in %d ms counts as lost and its place in the window goes on (late: it came "
        "after all). %d s per test, %d rounds in alternating order, the median of the quiet "
        "runs. Open loop: 64 B datagrams at a fixed %.0f %% of the direct path's closed-loop "
        "rate, spread over the same sockets, whatever comes back. Two paths: 127.0.0.1, and "
        "a veth pair between two network namespaces made for the test (client %s, server "
        "%s), where `dnat-veth` is the kernel's DNAT (an nftables `dnat to` rule in the "
        "server's namespace, conntrack) and `direct-veth` its own limit. Every process runs "
        "on the same 2 cores, so a forwarder competes with the load and the echo server: "
        "ratios within one run are the numbers to read.\n" % (
            CLIENTS, CLIENTS, WINDOW, TIMEOUT_MS, SECS, ROUNDS, OPEN_FRAC * 100, CLIENT_IP,
            SERVER_IP))
    cmds = []
    for peer in peers:
        for key in ("u64", "u1400", "o64"):
            v = rows[peer][key]
            if v and v.get("cmd"):
                cmds.append(v["cmd"])
                break
        if cmds:
            break
    L.append("Load (for the port of each peer; `ip netns exec` into the client's namespace "
             "for the veth rows), echo server and forwarders:\n")
    L.append("```")
    L.append("connrate uecho 127.0.0.1:ECHO")
    L.append("connrate uload 127.0.0.1:PORT -c %d -W %d -t %d -s 64|1400 -T %d" % (
        CLIENTS, WINDOW, SECS, TIMEOUT_MS))
    L.append("connrate uload 127.0.0.1:PORT -c %d -t %d -s 64 -T %d -R RATE   # open loop" % (
        CLIENTS, SECS, TIMEOUT_MS))
    L.append("pinhole forward udp://127.0.0.1:PORT 127.0.0.1:ECHO --workers 2")
    L.append("nginx: stream { server { listen 127.0.0.1:PORT udp reuseport; "
             "proxy_pass 127.0.0.1:ECHO; proxy_timeout 60s; } }  (2 workers)")
    L.append("socat -T 60 UDP4-LISTEN:PORT,bind=127.0.0.1,fork,reuseaddr UDP4:127.0.0.1:ECHO")
    L.append("    # a child per client, its socket connected to that client (UDP4-RECVFROM "
             "with fork would fork per datagram)")
    L.append("nft: table ip %s { chain pre { type nat hook prerouting priority dstnat; "
             "ip daddr %s udp dport PORT dnat to %s:ECHO } }" % (NFT_TABLE, SERVER_IP,
                                                                 SERVER_IP))
    L.append("```\n")
    if cmds:
        L.append("For instance, this run: `%s`\n" % cmds[0])

    L.append("### UDP: closed loop\n")
    L.append("| path | forwarder | 64 B round trips/s | ÷ direct | lost (64 B) | p50 / p99 ms "
             "| CPU s per M datagrams | 1,400 B round trips/s | ÷ direct | lost (1,400 B) | "
             "CPU s per M datagrams |")
    L.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for peer in peers:
        d = base(peer)
        mark = " ⚠" if results[peer]["errors"] else ""
        cells = [path(peer), peer + mark]
        for key in ("u64", "u1400"):
            rate = g(peer, key, "rate")
            cells.append(fmt(rate, ",.0f") + (dag(peer, key) if rate is not None else ""))
            cells.append(fmt(ratio(rate, g(d, key, "rate")) if d in rows else None, ".2f"))
            cells.append(lost(peer, key))
            if key == "u64":
                p50, p99 = g(peer, key, "p50_us"), g(peer, key, "p99_us")
                cells.append("—" if p50 is None else "%.2f / %.2f" % (p50 / 1000, p99 / 1000))
            cells.append(fmt(g(peer, key, "cpu_per_m"), ".2f"))
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    L.append("CPU s per M datagrams: the forwarder's processes' user+system CPU during the "
             "run, per million datagrams it moved (sent + echoed); the same number is µs per "
             "datagram. The kernel's DNAT runs in the senders' system calls and softirqs, so "
             "it has no number of its own.\n")

    if OPEN_FRAC > 0:
        L.append("### UDP: open loop and live sessions\n")
        L.append("| path | forwarder | open loop offered/s | delivered in time/s | ÷ direct | "
                 "lost | late | back/s, late too | p99 ms | RSS KiB per session | "
                 "RSS MiB per 10,000 sessions | PSS KiB per session | sessions held |")
        L.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for peer in peers:
            d = base(peer)
            m = rows[peer]["m"]
            rate = g(peer, "o64", "rate")
            L.append("| %s | %s | %s | %s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                path(peer), peer, fmt(g(peer, "o64", "offered"), ",.0f"),
                fmt(rate, ",.0f"), dag(peer, "o64") if rate is not None else "",
                fmt(ratio(rate, g(d, "o64", "rate")) if d in rows else None, ".2f"),
                lost(peer, "o64"), fmt(g(peer, "o64", "late"), ".0f"),
                fmt(g(peer, "o64", "back"), ",.0f"),
                fmt(g(peer, "o64", "p99_us") / 1000 if rate is not None else None, ".2f"),
                fmt(m["rss_per"] / 1024 if m else None, ".2f"),
                fmt(m["rss_per"] * 10000 / 2**20 if m else None, ".1f"),
                fmt(m["pss_per"] / 1024 if m else None, ".2f"),
                "%d/%d" % (m["held"], m["n"]) if m else "—"))
        L.append("")
        L.append("Open loop: offered is what was sent per second (less than asked when a "
                 "client socket's buffer was full: the path pushed back); the delivered rate "
                 "counts the echoes back within %d ms; lost = "
                 "sent − delivered − late; back/s counts the late ones too (what the path "
                 "carried, however slowly). Live sessions: the forwarder's RSS (summed over "
                 "its processes) with that many client sockets that each had one datagram "
                 "echoed, less the RSS before; the sessions are live (60 s timeouts). pinhole "
                 "runs with `--max-sessions %d` there, its default.%s\n" % (
                     TIMEOUT_MS, PINHOLE_MEM_SESSIONS,
                     " socat forks a process per client: it is measured at %d sessions." %
                     SESSION_CAP["socat"] if "socat" in peers else ""))
    L.append("† : every run of this test shared the machine with more than %.2f cores of "
             "other work. ⚠ : a test of this row failed, see the notes.\n" % B.QUIET)

    p, dl = rows.get("pinhole"), rows.get("direct")
    if p:
        L.append("### UDP: pinhole against its targets\n")

        def check(desc, value, ok):
            L.append("- %s: %s — **%s**" % (desc, value,
                     "n/a" if ok is None else ("met" if ok else "NOT met")))

        r = ratio(g("pinhole", "u64", "rate"), g("direct", "u64", "rate")) if dl else None
        check("64 B round trips ≥ 0.8× direct (127.0.0.1)", fmt(r, ".2f") + "×",
              None if r is None else r >= 0.8)
        if "pinhole-veth" in rows and "direct-veth" in rows:
            r = ratio(g("pinhole-veth", "u64", "rate"), g("direct-veth", "u64", "rate"))
            check("64 B round trips ≥ 0.8× direct (veth)", fmt(r, ".2f") + "×",
                  None if r is None else r >= 0.8)
            if "dnat-veth" in rows:
                r2 = ratio(g("dnat-veth", "u64", "rate"), g("direct-veth", "u64", "rate"))
                L.append("- for comparison, the kernel's DNAT on the veth path: %s× direct" %
                         fmt(r2, ".2f"))
        allp = [v for k in ("u64", "u1400") for v in results["pinhole"][k]
                if isinstance(v, dict)]
        if allp:
            lost_all = sum(v["lost"] + v["late"] + v["bad"] for v in allp)
            sent_all = sum(v["sent"] for v in allp)
            check("closed loop: every datagram back, in time (all pinhole runs on 127.0.0.1)",
                  "%d of %d lost or late" % (lost_all, sent_all), lost_all == 0)
        o, od = rows["pinhole"]["o64"], rows["direct"]["o64"] if dl else None
        if o and od:
            r = ratio(o["rate"], od["rate"])
            check("open loop at %.0f %% of direct's rate: delivered in time as direct does "
                  "(≥ 0.99×)" % (OPEN_FRAC * 100),
                  "%s× direct; %d lost, %d late of %d" % (fmt(r, ".2f"), o["lost"], o["late"],
                                                           o["sent"]), r >= 0.99)
        L.append("")
    if stopped:
        L.append("### UDP: pinhole's own counters (last log line of each run)\n")
        L.append("```")
        L.extend(stopped)
        L.append("```\n")
    if notes:
        L.append("### UDP: notes and failures\n")
        for n in notes:
            L.append("- " + n)
        L.append("")
    L.append("### UDP: every run\n")
    L.append("rt/s, then in brackets: lost+late / sent, the kernel's socket-buffer drops in "
             "the namespaces involved, and the CPU of other programs in cores.\n")
    L.append("```")
    for peer in peers:
        r = results[peer]
        for key in ("u64", "u1400", "o64"):
            vals = []
            for x in r[key]:
                vals.append("%.0f [%d/%d, %s, %.2f]" % (
                    x["rate"], x["lost"] + x["late"], x["sent"],
                    "?" if x["kdrops"] is None else "%d" % x["kdrops"], x["other"]))
            if vals:
                L.append("%-12s %-5s %s" % (peer, key, "  ".join(vals)))
        if isinstance(r["m"], dict):
            m = r["m"]
            L.append("%-12s mem   held %d/%d, failed %d; RSS %d -> %d B, PSS %d -> %d B, "
                     "procs %d -> %d" % (peer, m["held"], m["n"], m["failed"], m["rss0"],
                                         m["rss1"], m["pss0"], m["pss1"], m["procs0"],
                                         m["procs1"]))
    L.append("```\n")
    return "\n".join(L) + "\n"
