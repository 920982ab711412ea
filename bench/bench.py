#!/usr/bin/python3
"""The pinhole benchmark driver; bench/run.sh sets it up and calls it.

Measures, for each forwarder and for a direct connection (the limit), on 127.0.0.1 only:
  1. iperf3 throughput through the forwarder, 1 stream and 4 streams
  2. new connections per second (connect, 64 B echo, close) with p50/p99 latency
  3. userspace RSS per idle connection (forwarder RSS with N idle connections minus before)
  4. forwarder CPU seconds per GB moved during the 1-stream iperf3 run
then the UDP part (bench/udp.py: datagram round trips, CPU per datagram, RSS per session),
then the SOCKS part (bench/socks.py: pinhole socks against microsocks, dante and ssh -D:
proxied conn/s, throughput, CPU per GB, RSS per idle connection), then the relay part
(bench/relay.py: pinhole server + expose against ssh -R: throughput both ways, conn/s,
first-byte latency, memory per idle stream, idle client, binary size), then the local part
(bench/local.py: pinhole local against ssh -L and pinhole socks --via against ssh -D, through
the relay: the same measures), and writes a table to stdout and bench/results/latest.md.
BENCH_ONLY=tcp, udp, socks, relay or local runs one part alone (written to latest-tcp.md,
latest-udp.md, latest-socks.md, latest-relay.md or latest-local.md, unless BENCH_OUT says).

Every process it starts gets its own session; its id is appended to $BENCH_TMP/pgids so
that run.sh's trap can end it whatever happens here. Every wait is bounded.
"""

import hashlib
import json
import os
import resource
import re
import signal
import socket
import subprocess
import sys
import time

TMP = os.environ["BENCH_TMP"]
ROOT = os.environ["BENCH_ROOT"]
CONNRATE = os.environ["BENCH_CONNRATE"]
PINHOLE = os.environ.get("BENCH_PINHOLE", os.path.join(ROOT, "build", "pinhole"))
# run.sh copies the binary, so a rebuild during the run cannot mix two versions
PINHOLE_SRC = os.environ.get("BENCH_PINHOLE_SRC", PINHOLE)
SECS = int(os.environ.get("BENCH_SECS", "4"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "32"))
IDLE = int(os.environ.get("BENCH_IDLE", "9000"))
PEERS = os.environ.get(
    "BENCH_PEERS",
    "direct pinhole pinhole-64k haproxy haproxy-1m nginx socat rinetd redir").split()
ONLY = os.environ.get("BENCH_ONLY", "").strip().lower()
OUT = os.environ.get("BENCH_OUT", os.path.join(
    ROOT, "bench", "results", "latest-%s.md" % ONLY if ONLY else "latest.md"))
# The machine is shared: a test during which other programs used more than QUIET cores is
# run again (at most RETRIES times) while the rounds still fit in BUDGET seconds.
QUIET = float(os.environ.get("BENCH_QUIET", "0.25"))
RETRIES = int(os.environ.get("BENCH_RETRIES", "2"))
BUDGET = float(os.environ.get("BENCH_BUDGET", "480"))

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NGINX_STREAM_SO = "/usr/lib/nginx/modules/ngx_stream_module.so"

# Forwarders that fork a process per connection, or cannot watch more than FD_SETSIZE (1024)
# descriptors, cannot hold IDLE connections on this machine: they get fewer, and say so.
IDLE_CAP = {
    "socat": 1000,  # fork per connection: 1000 processes
    "redir": 1000,  # fork per connection: 1000 processes
    "rinetd": 500,  # select(): two fds per connection must stay below FD_SETSIZE (1024)
}


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------- processes


class Proc:
    """A started program in its own session; stop() ends the whole session."""

    def __init__(self, name, argv, stdin=subprocess.DEVNULL, capture=False):
        self.name = name
        self.argv = argv
        self.errpath = os.path.join(TMP, "%s.%d.err" % (name, time.monotonic_ns()))
        self.err = open(self.errpath, "w+b")
        self.p = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE if capture else self.err,
            stderr=self.err,
            start_new_session=True,
            close_fds=True,
        )
        with open(os.path.join(TMP, "pgids"), "a") as f:
            f.write("%d\n" % self.p.pid)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def stop(self, sig=signal.SIGTERM, grace=8.0):
        """Signals the session, waits up to grace seconds, then kills what is left."""
        if self.alive():
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # the session may hold children (socat, redir, nginx workers) after the leader exits
        for pid in session_pids(self.p.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        # killed orphans take a moment to become zombies of this driver: reap them all
        end = time.monotonic() + 3.0
        while True:
            reap_orphans()
            if not session_pids(self.p.pid, zombies=True) or time.monotonic() > end:
                break
            time.sleep(0.05)
        self.err.close()

    def stderr_text(self):
        if not self.err.closed:
            self.err.flush()
        with open(self.errpath, "rb") as f:
            return f.read().decode("utf-8", "replace")


def read_stat(pid):
    """Returns the fields of /proc/PID/stat after the command name, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rindex(")") + 2 :].split()


def session_pids(sid, zombies=False):
    """Every process whose session id is sid (the leader included), zombies only if asked."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        st = read_stat(int(d))
        if st is not None and int(st[3]) == sid and (zombies or st[0] != "Z"):
            pids.append(int(d))
    return pids


# CPU seconds of orphans this driver reaped, by session: redir forks twice per connection,
# so its workers are orphans; as the child subreaper (see main) this driver inherits them.
_orphan_cpu = {}


def reap_orphans():
    """Reaps the dead orphans the driver inherited from the forwarders' sessions, keeping
    their CPU time. Session leaders (the Procs) and the driver's own session are left to
    subprocess, which waits for them itself."""
    me, mysid = os.getpid(), os.getsid(0)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        st = read_stat(pid)
        if st is None or st[0] != "Z" or int(st[1]) != me:
            continue
        sid = int(st[3])
        if sid == pid or sid == mysid:
            continue
        try:
            got, _, ru = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if got == pid:
            _orphan_cpu[sid] = _orphan_cpu.get(sid, 0.0) + ru.ru_utime + ru.ru_stime


def tree_cpu(sid):
    """CPU seconds (user+system) of a session: its processes (zombies too), the children
    the leader reaped (cutime/cstime), and the orphans this driver reaped. Each dead
    process counts exactly once whoever reaps it, so two samples can be subtracted."""
    reap_orphans()
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        st = read_stat(int(d))
        if st is None or int(st[3]) != sid:
            continue
        total += int(st[11]) + int(st[12])
        if int(d) == sid:
            total += int(st[13]) + int(st[14])
    return total / CLK_TCK + _orphan_cpu.get(sid, 0.0)


def tree_mem(sid):
    """(RSS bytes, PSS bytes, process count) summed over a session."""
    rss = pss = n = 0
    for pid in session_pids(sid):
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


def sys_busy():
    """CPU seconds the whole machine spent busy so far (steal included: the host took it)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


class Sampler:
    """Samples the forwarder, the server, this driver's reaped children (the client) and the
    whole machine; other() is the CPU that none of them used during the test, in cores:
    the noise of a shared machine (other jobs, the host's steal)."""

    def __init__(self, fwd, srv):
        self.fwd, self.srv = fwd, srv

    def _take(self):
        f = tree_cpu(self.fwd.pid) if self.fwd else 0.0
        s = tree_cpu(self.srv.pid)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (f, s, ru.ru_utime + ru.ru_stime, sys_busy(), time.monotonic())

    def start(self):
        self.a = self._take()

    def stop(self):
        self.b = self._take()
        d = [y - x for x, y in zip(self.a, self.b)]
        self.fwd_cpu = d[0]
        self.other = max(0.0, d[3] - d[0] - d[1] - d[2]) / d[4] if d[4] > 0 else 0.0


def listening(port):
    out = subprocess.run(
        ["ss", "-ltnH", "sport = :%d" % port], capture_output=True, text=True, timeout=5
    ).stdout
    return out.strip() != ""


def wait_listen(port, proc=None, timeout=8.0):
    """Polls ss until something listens on port; False on timeout or if proc died."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if listening(port):
            return True
        if proc is not None and not proc.alive():
            return False
        time.sleep(0.05)
    return False


_next_port = [21000 + (os.getpid() % 500) * 20]


def free_port():
    """A port below the ephemeral range that nothing uses now."""
    for _ in range(2000):
        port = _next_port[0]
        _next_port[0] += 1
        if _next_port[0] > 32000:
            _next_port[0] = 21000
        s = socket.socket()
        try:
            s.bind((HOST, port))
        except OSError:
            continue
        finally:
            s.close()
        if not listening(port):
            return port
    raise RuntimeError("no free port")


# ---------------------------------------------------------------- forwarders


def fwd_argv(peer, lport, tport):
    """The argv that makes peer forward HOST:lport to HOST:tport (configs go to TMP)."""
    tag = "%s-%d" % (peer, lport)
    if peer == "pinhole":
        return [PINHOLE, "forward", "%s:%d" % (HOST, lport), "%s:%d" % (HOST, tport),
                "--workers", "2"]
    if peer == "pinhole-64k":
        # not the default: pinhole with the kernel's default pipe, the one haproxy uses
        return [PINHOLE, "forward", "%s:%d" % (HOST, lport), "%s:%d" % (HOST, tport),
                "--workers", "2", "--pipe-size", "65536"]
    if peer in ("haproxy", "haproxy-1m"):
        cfg = os.path.join(TMP, tag + ".haproxy.cfg")
        with open(cfg, "w") as f:
            # maxconn 9200 and maxpipes 512 keep haproxy's fd need (2 per connection, 2
            # per pipe) under the 20000 hard limit; 512 pipes are far more than the
            # concurrent transfers of any test here
            f.write(
                "global\n"
                "  nbthread 2\n"
                "  maxconn 9200\n"
                "  maxpipes 512\n"
                "%s"
                "defaults\n"
                "  mode tcp\n"
                "  timeout connect 5s\n"
                "  timeout client 1h\n"
                "  timeout server 1h\n"
                "  option splice-auto\n"
                "  option splice-request\n"
                "  option splice-response\n"
                "frontend fe\n"
                "  bind %s:%d\n"
                "  maxconn 9200\n"
                "  default_backend be\n"
                "backend be\n"
                "  server s1 %s:%d\n" % (
                    # haproxy-1m (not a default): pinhole's pipe size as root
                    "  tune.pipesize 1048576\n" if peer == "haproxy-1m" else "",
                    HOST, lport, HOST, tport)
            )
        return ["haproxy", "-db", "-f", cfg]
    if peer == "nginx":
        d = os.path.join(TMP, tag + ".nginx")
        os.makedirs(d, exist_ok=True)
        cfg = os.path.join(d, "nginx.conf")
        load = ""
        if os.path.exists(NGINX_STREAM_SO):
            load = "load_module %s;\n" % NGINX_STREAM_SO
        with open(cfg, "w") as f:
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
                "    listen %s:%d reuseport;\n"
                "    proxy_pass %s:%d;\n"
                "    proxy_timeout 1h;\n"
                "  }\n"
                "}\n" % (d, d, HOST, lport, HOST, tport)
            )
        return ["nginx", "-p", d, "-e", d + "/error.log", "-c", cfg]
    if peer == "socat":
        # socat's own listen backlog default is 5, which drops SYNs under any load; 1024
        # is what a user who benchmarks would set
        return ["socat", "TCP-LISTEN:%d,bind=%s,fork,reuseaddr,backlog=1024" % (lport, HOST),
                "TCP:%s:%d" % (HOST, tport)]
    if peer == "rinetd":
        cfg = os.path.join(TMP, tag + ".rinetd.conf")
        with open(cfg, "w") as f:
            f.write("%s %d %s %d\n" % (HOST, lport, HOST, tport))
        return ["rinetd", "-f", "-c", cfg]
    if peer == "redir":
        return ["redir", "-n", "%s:%d" % (HOST, lport), "%s:%d" % (HOST, tport)]
    raise ValueError(peer)


class Failed(Exception):
    pass


def start_fwd(peer, tport):
    """Starts peer forwarding a fresh port to tport; returns (Proc, port) or raises Failed."""
    lport = free_port()
    argv = fwd_argv(peer, lport, tport)
    try:
        p = Proc(peer, argv)
    except OSError as e:
        raise Failed("%s: cannot run %s: %s" % (peer, argv[0], e))
    if not wait_listen(lport, p):
        text = p.stderr_text().strip().splitlines()
        p.stop()
        raise Failed("%s did not start listening: %s" % (peer, " | ".join(text[-3:]) or "-"))
    return p, lport


def start_echo(close_after=0):
    """The echo server; with close_after it closes each connection once it has echoed that
    many bytes (the server closes first, so TIME_WAIT stays off the connecting sides)."""
    port = free_port()
    argv = [CONNRATE, "echo", "%s:%d" % (HOST, port), "-t", "900"]
    if close_after:
        argv += ["-x", str(close_after)]
    p = Proc("echo", argv)
    if not wait_listen(port, p):
        p.stop()
        raise RuntimeError("the echo server did not start: " + p.stderr_text())
    return p, port


# ---------------------------------------------------------------- measurements


def iperf(peer, streams):
    """One iperf3 run through a fresh forwarder (or direct). Returns a result dict."""
    sport = free_port()
    srv = Proc("iperf3-s", ["iperf3", "-s", "-1", "-B", HOST, "-p", str(sport)])
    fwd = None
    try:
        if not wait_listen(sport, srv):
            raise Failed("iperf3 server did not start: " + srv.stderr_text().strip())
        port = sport
        if peer != "direct":
            fwd, port = start_fwd(peer, sport)
        smp = Sampler(fwd, srv)
        smp.start()
        argv = ["iperf3", "-c", HOST, "-p", str(port), "-t", str(SECS), "--json",
                "--connect-timeout", "3000"]
        if streams > 1:
            argv += ["-P", str(streams)]
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=SECS + 20)
        except subprocess.TimeoutExpired:
            raise Failed("iperf3 client timed out")
        # let a forking forwarder's children finish so their CPU is accounted for
        time.sleep(0.3)
        smp.stop()
        try:
            j = json.loads(cp.stdout)
        except ValueError:
            raise Failed("iperf3 printed no JSON: " + (cp.stderr or cp.stdout)[-200:])
        if "error" in j:
            raise Failed("iperf3: " + j["error"])
        recv = j["end"]["sum_received"]
        res = {"gbps": recv["bits_per_second"] / 1e9, "bytes": recv["bytes"],
               "cpu": smp.fwd_cpu, "other": smp.other}
        if fwd is not None and res["bytes"] > 0:
            res["cpu_per_gb"] = smp.fwd_cpu / (res["bytes"] / 1e9)
        return res
    finally:
        if fwd is not None:
            fwd.stop()
            if peer.startswith("pinhole"):
                stopped = [l for l in fwd.stderr_text().splitlines() if "stopped:" in l]
                if stopped:
                    iperf.last_stopped = stopped[-1].strip()
        srv.stop()


iperf.last_stopped = None


def parse_kv(line):
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", line)}


def connrate(peer):
    echo, eport = start_echo(close_after=64)
    fwd = None
    try:
        port = eport
        if peer != "direct":
            fwd, port = start_fwd(peer, eport)
        smp = Sampler(fwd, echo)
        smp.start()
        argv = [CONNRATE, "load", "%s:%d" % (HOST, port), "-c", str(CLIENTS), "-t", str(SECS),
                "-s", "64", "-T", "3000", "-e"]
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=SECS + 15)
        except subprocess.TimeoutExpired:
            raise Failed("connrate load timed out")
        time.sleep(0.3)
        smp.stop()
        kv = parse_kv(cp.stdout)
        if "rate" not in kv:
            raise Failed("connrate printed nothing: " + cp.stderr.strip()[-200:])
        if kv["conns"] == 0:
            raise Failed("no connection completed (%d errors, errno %d)" %
                         (kv["errors"], kv["first_errno"]))
        kv["cpu_us_per_conn"] = smp.fwd_cpu / kv["conns"] * 1e6 if fwd else None
        kv["other"] = smp.other
        return kv
    finally:
        if fwd is not None:
            fwd.stop()
        echo.stop()


def idle_mem(peer):
    """RSS per idle connection: fresh forwarder, a short warm-up, baseline, hold N, measure."""
    n = min(IDLE, IDLE_CAP.get(peer, IDLE))
    echo, eport = start_echo()
    fwd = hold = None
    try:
        fwd, port = start_fwd(peer, eport)
        addr = "%s:%d" % (HOST, port)
        # warm-up: 16 connections, one round trip each, closed again (lazy start-up work
        # such as nginx's first accept or a thread's first allocation is not per connection)
        subprocess.run([CONNRATE, "hold", addr, "-n", "16", "-w", "10", "-H", "1"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
        time.sleep(0.5)
        rss0, pss0, np0 = tree_mem(fwd.pid)
        # 16 connections set up at a time: redir's listen backlog is 10, and a forking
        # forwarder is slow to accept; memory, not set-up speed, is measured here
        hold = Proc("hold", [CONNRATE, "hold", addr, "-n", str(n), "-p", "16", "-w", "60",
                             "-H", "120"], stdin=subprocess.PIPE, capture=True)
        line = read_line(hold, 75)
        kv = parse_kv(line or "")
        if "held" not in kv:
            raise Failed("hold printed nothing: " + hold.stderr_text().strip()[-200:])
        held = int(kv["held"])
        if held == 0:
            raise Failed("no idle connection could be opened (%d failed)" % kv["failed"])
        time.sleep(1.0)
        rss1, pss1, np1 = tree_mem(fwd.pid)
        if not fwd.alive():
            raise Failed("the forwarder died while holding connections")
        return {"n": n, "held": held, "failed": int(kv["failed"]),
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
        echo.stop()


def read_line(proc, timeout):
    """The first stdout line of proc, waiting at most timeout seconds."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.p.stdout, selectors.EVENT_READ)
    end = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < end and b"\n" not in buf:
        if not sel.select(timeout=max(0.0, end - time.monotonic())):
            break
        chunk = os.read(proc.p.stdout.fileno(), 4096)
        if not chunk:
            break
        buf += chunk
    sel.close()
    return buf.decode("utf-8", "replace").split("\n")[0] if b"\n" in buf else None


# ---------------------------------------------------------------- environment


def version(argv, pattern=None):
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (cp.stdout + "\n" + cp.stderr).strip()
    for line in text.splitlines():
        if pattern is None or re.search(pattern, line):
            return line.strip()
    return text.splitlines()[0] if text else "?"


def environment():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    git = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src"],
                           capture_output=True, text=True).stdout.strip()
    try:
        with open(PINHOLE, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        built = time.strftime("%Y-%m-%d %H:%M:%S",
                              time.gmtime(os.stat(PINHOLE_SRC).st_mtime))
    except OSError:
        digest = built = "?"
    return [
        ("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("cpus", "%d online (%s)" % (os.cpu_count(), cpu)),
        ("kernel", os.uname().release),
        ("os", version(["cat", "/etc/debian_version"]) + " (Debian)"),
        ("pinhole", version([PINHOLE, "--version"]) +
         " (git %s%s; binary %s built %s UTC, sha256 %s)" % (
             git, " + uncommitted changes in src/" if dirty else "",
             os.path.relpath(PINHOLE_SRC, ROOT), built, digest)),
        ("haproxy", version(["haproxy", "-v"], "version")),
        ("nginx", version(["nginx", "-v"], "version")),
        ("socat", version(["socat", "-V"], "socat version")),
        ("rinetd", version(["rinetd", "-v"])),
        ("redir", version(["redir", "-v"])),
        ("iperf3", version(["iperf3", "-v"], "iperf")),
        ("nftables", version(["nft", "--version"])),
        ("open files", "%d" % resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
    ]


# ---------------------------------------------------------------- report


def fmt(v, spec, empty="—"):
    return empty if v is None else format(v, spec)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def pick(runs, key):
    """The median run by key (the better middle one of an even count), taken from the quiet
    runs (other load <= QUIET) when there are any: a lucky run counts no more than an
    unlucky one."""
    ok = [r for r in runs if isinstance(r, dict) and r.get(key) is not None]
    pool = sorted([r for r in ok if r.get("other", 0.0) <= QUIET] or ok, key=lambda r: r[key])
    return pool[len(pool) // 2] if pool else None


def noisy(run):
    return run is not None and run.get("other", 0.0) > QUIET


def build_header(env):
    L = []
    L.append("# pinhole benchmark — latest run\n")
    L.append("Produced by `make bench` (bench/run.sh)%s. Loopback only (and, for UDP, "
             "network namespaces the benchmark makes), everything on the same machine; the "
             "numbers of one run are comparable with each other, not across machines.\n" % (
                 "" if not ONLY else ", with BENCH_ONLY=%s" % ONLY))
    L.append("| | |\n|---|---|")
    for k, v in env:
        L.append("| %s | %s |" % (k, v))
    L.append("")
    return "\n".join(L) + "\n"


def build_report(env, results, notes, stopped_lines):
    rows = {}
    for peer in PEERS:
        r = results[peer]
        t1 = pick(r["t1"], "gbps")
        t4 = pick(r["t4"], "gbps")
        c = pick(r["c"], "rate")
        m = r["m"] if isinstance(r["m"], dict) else None
        rows[peer] = {
            "n1": noisy(t1), "n4": noisy(t4), "nc": noisy(c),
            "t1": t1["gbps"] if t1 else None,
            "t4": t4["gbps"] if t4 else None,
            "cpu": t1.get("cpu_per_gb") if t1 else None,
            "rate": c["rate"] if c else None,
            "p50": c["p50_us"] / 1000 if c else None,
            "p99": c["p99_us"] / 1000 if c else None,
            "cerr": int(c["errors"]) if c else None,
            "cpu_conn": c.get("cpu_us_per_conn") if c else None,
            "kib": m["rss_per"] / 1024 if m else None,
            "pss_kib": m["pss_per"] / 1024 if m else None,
            "held": "%d/%d" % (m["held"], m["n"]) if m else None,
        }
    L = []
    L.append("## TCP\n")
    L.append("%d rounds, the peers in alternating order; a test during which other "
             "programs used more than %.2f cores is run again while time allows. Each cell is "
             "the median of the quiet runs (latency and CPU from that same run); %d s per test; %d "
             "concurrent clients; idle memory at %d connections (fewer where noted).\n"
             % (ROUNDS, QUIET, SECS, CLIENTS, IDLE))
    L.append("## Absolute numbers\n")
    L.append("| forwarder | 1 stream Gbit/s | 4 streams Gbit/s | CPU s/GB (1 stream) | "
             "conn/s | p50 ms | p99 ms | conn errors | CPU µs/conn | idle KiB/conn (RSS) | "
             "idle KiB/conn (PSS) | idle conns held |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for peer in PEERS:
        x = rows[peer]
        mark = " ⚠" if results[peer]["errors"] else ""
        dag = lambda k: " †" if x[k] else ""
        L.append("| %s%s | %s%s | %s%s | %s | %s%s | %s | %s | %s | %s | %s | %s | %s |" % (
            peer, mark, fmt(x["t1"], ".2f"), dag("n1"), fmt(x["t4"], ".2f"), dag("n4"),
            fmt(x["cpu"], ".2f"), fmt(x["rate"], ",.0f"), dag("nc"), fmt(x["p50"], ".2f"),
            fmt(x["p99"], ".2f"),
            fmt(x["cerr"], "d"), fmt(x["cpu_conn"], ".0f"), fmt(x["kib"], ".2f"),
            fmt(x["pss_kib"], ".2f"), fmt(x["held"], "s")))
    L.append("")
    if "pinhole-64k" in PEERS or "haproxy-1m" in PEERS:
        L.append("Two rows are not defaults, to separate the splice pipe size from the rest: "
                 "pinhole-64k is pinhole with `--pipe-size 65536` (the kernel's default pipe, "
                 "which haproxy uses), haproxy-1m is haproxy with `tune.pipesize 1048576`. The "
                 "ratios and targets use the default `pinhole` and `haproxy` rows.\n")
    L.append("† : every run of this test shared the machine with more than %.2f cores of "
             "other work, so the number is likely low.\n" % QUIET)
    L.append("— : not measured (direct has no forwarder) or failed; ⚠ : a test of this row "
             "failed, see the notes. RSS sums VmRSS over the forwarder's processes, so a "
             "forking forwarder counts its shared pages once per process; PSS shares them "
             "out.\n")
    d = rows.get("direct")
    h = rows.get("haproxy")
    L.append("## Ratios\n")
    L.append("Throughput and conn/s: higher is better; CPU s/GB, p99 and KiB/conn: lower is "
             "better.\n")
    L.append("| forwarder | 1 stream ÷ direct | 4 streams ÷ direct | conn/s ÷ direct | "
             "1 stream ÷ haproxy | 4 streams ÷ haproxy | CPU s/GB ÷ haproxy | "
             "conn/s ÷ haproxy | p99 ÷ haproxy | KiB/conn ÷ haproxy |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for peer in PEERS:
        if peer == "direct":
            continue
        x = rows[peer]
        rd = lambda k: fmt(ratio(x[k], d[k]) if d else None, ".2f")
        rh = lambda k: fmt(ratio(x[k], h[k]) if h else None, ".2f")
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            peer, rd("t1"), rd("t4"), rd("rate"), rh("t1"), rh("t4"), rh("cpu"), rh("rate"),
            rh("p99"), rh("kib")))
    L.append("")
    p = rows.get("pinhole")
    n = rows.get("nginx")
    if p:
        L.append("## pinhole against its targets\n")

        def check(desc, value, ok):
            L.append("- %s: %s — **%s**" % (desc, value,
                     "n/a" if ok is None else ("met" if ok else "NOT met")))

        r = ratio(p["t1"], h["t1"]) if h else None
        check("1 stream ≥ haproxy-splice", fmt(r, ".2f") + "×", None if r is None else r >= 1.0)
        r = ratio(p["t4"], h["t4"]) if h else None
        check("4 streams never below haproxy", fmt(r, ".2f") + "×",
              None if r is None else r >= 1.0)
        r = ratio(p["cpu"], h["cpu"]) if h else None
        check("CPU s/GB ≤ 0.8× haproxy-splice", fmt(r, ".2f") + "×",
              None if r is None else r <= 0.8)
        r = ratio(p["rate"], h["rate"]) if h else None
        check("conn/s ≥ 1.3× haproxy", fmt(r, ".2f") + "×", None if r is None else r >= 1.3)
        r = ratio(p["rate"], n["rate"]) if n else None
        check("conn/s ≥ 1.3× nginx", fmt(r, ".2f") + "×", None if r is None else r >= 1.3)
        check("≤ 0.5 KiB per idle connection", fmt(p["kib"], ".2f") + " KiB",
              None if p["kib"] is None else p["kib"] <= 0.5)
        L.append("")
    if stopped_lines:
        L.append("## pinhole's own counters (last log line of each iperf3 run)\n")
        L.append("Proof that splice(2), not a userspace copy, carried the bulk bytes "
                 "(t1: 1 stream, t4: 4 streams; one line per run):\n")
        L.append("```")
        L.extend(stopped_lines)
        L.append("```\n")
        spliced = copied = 0
        for line in stopped_lines:
            m = re.search(r"(\d+) bytes spliced, (\d+) copied", line)
            if m:
                spliced += int(m.group(1))
                copied += int(m.group(2))
        if spliced + copied > 0:
            L.append("In all: %d bytes spliced, %d copied: %.4f %% of the bytes went through "
                     "splice.\n" % (spliced, copied, 100.0 * spliced / (spliced + copied)))
    if notes:
        L.append("## Notes and failures\n")
        for s in notes:
            L.append("- " + s)
        L.append("")
    L.append("## Every run\n")
    L.append("t1/t4: Gbit/s with 1/4 streams; c: conn/s; in the order run (retries "
             "included). In brackets: CPU used by other programs on the machine during that "
             "test, in cores (2 = the whole machine).\n")
    L.append("```")
    for peer in PEERS:
        r = results[peer]
        for k in ("t1", "t4", "c"):
            vals = []
            for x in r[k]:
                if isinstance(x, dict):
                    vals.append("%s [%.2f]" % (fmt(x.get("gbps", x.get("rate")), ".2f"),
                                               x.get("other", 0.0)))
                else:
                    vals.append("failed")
            L.append("%-8s %-3s %s" % (peer, k, "  ".join(vals)))
        if isinstance(r["m"], dict):
            m = r["m"]
            L.append("%-8s mem held %d/%d, failed %d; RSS %d -> %d B, PSS %d -> %d B, "
                     "procs %d -> %d" % (peer, m["held"], m["n"], m["failed"], m["rss0"],
                                         m["rss1"], m["pss0"], m["pss1"], m["procs0"],
                                         m["procs1"]))
    L.append("```")
    return "\n".join(L) + "\n"


def set_subreaper():
    """Makes this driver the reaper of orphans from its forwarders (PR_SET_CHILD_SUBREAPER),
    so their CPU time is counted and none is left to init."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def run_tcp(results, notes, stopped_lines):
    """The TCP rounds and the idle-connection memory test."""
    t_start = time.monotonic()
    for peer in PEERS:
        if peer == "nginx" and not os.path.exists(NGINX_STREAM_SO):
            notes.append("nginx: %s is missing (package libnginx-mod-stream); nginx may "
                         "refuse the stream block" % NGINX_STREAM_SO)
        if peer in IDLE_CAP and IDLE > IDLE_CAP[peer]:
            notes.append("%s: idle memory measured at %d connections, not %d (%s)" % (
                peer, IDLE_CAP[peer], IDLE,
                "it forks a process per connection" if peer != "rinetd" else
                "it uses select(), limited to 1024 descriptors"))

    def record(peer, key, fn, *args):
        try:
            v = fn(peer, *args)
        except Failed as e:
            v = "failed: %s" % e
            results[peer]["errors"].append("%s %s: %s" % (peer, key, e))
            log("  %-8s %-4s FAILED: %s" % (peer, key, e))
            return
        except Exception as e:  # a peer must never take the whole run down
            v = "failed: %r" % e
            results[peer]["errors"].append("%s %s: %r" % (peer, key, e))
            log("  %-8s %-4s FAILED: %r" % (peer, key, e))
            return
        if key == "m":
            results[peer]["m"] = v
        else:
            results[peer][key].append(v)
        report_one(peer, key, v)
        return v

    def report_one(peer, key, v):
        if key in ("t1", "t4"):
            extra = ""
            if v.get("cpu_per_gb") is not None:
                extra = "  forwarder CPU %.2f s = %.2f s/GB" % (v["cpu"], v["cpu_per_gb"])
            log("  %-8s %-4s %6.2f Gbit/s%s  (other load %.2f cores)" % (
                peer, key, v["gbps"], extra, v["other"]))
            if peer.startswith("pinhole") and iperf.last_stopped:
                stopped_lines.append("%s %s: %s" % (peer, key, iperf.last_stopped))
                log("           pinhole: " + iperf.last_stopped)
                iperf.last_stopped = None
        elif key == "c":
            log("  %-8s conn %8.0f conn/s  p50 %.2f ms  p99 %.2f ms  errors %d%s  "
                "(other load %.2f cores)" % (
                    peer, v["rate"], v["p50_us"] / 1000, v["p99_us"] / 1000, v["errors"],
                    "  CPU %.0f us/conn" % v["cpu_us_per_conn"] if v["cpu_us_per_conn"] else "",
                    v["other"]))
        else:
            log("  %-8s mem  %d/%d held: RSS %.2f KiB/conn, PSS %.2f KiB/conn "
                "(RSS %.1f -> %.1f MiB, %d -> %d processes)" % (
                    peer, v["held"], v["n"], v["rss_per"] / 1024, v["pss_per"] / 1024,
                    v["rss0"] / 2**20, v["rss1"] / 2**20, v["procs0"], v["procs1"]))

    tests = [("t1", iperf, (1,)), ("t4", iperf, (4,)), ("c", connrate, ())]
    t_rounds = time.monotonic()
    left = ROUNDS * len(PEERS) * len(tests)  # first attempts still to run
    runs = retries = 0
    for rnd in range(ROUNDS):
        order = PEERS if rnd % 2 == 0 else list(reversed(PEERS))
        log("round %d of %d (%s)" % (rnd + 1, ROUNDS, " ".join(order)))
        for peer in order:
            for key, fn, args in tests:
                left -= 1
                for attempt in range(RETRIES + 1):
                    v = record(peer, key, fn, *args)
                    runs += 1
                    elapsed = time.monotonic() - t_rounds
                    per_run = elapsed / runs
                    if not isinstance(v, dict) or v.get("other", 0.0) <= QUIET:
                        break
                    if attempt == RETRIES or elapsed + (left + 1) * per_run > BUDGET:
                        break
                    retries += 1
                    log("  %-8s %-4s again: other programs used %.2f cores" % (
                        peer, key, v["other"]))
    log("idle connections")
    for peer in PEERS:
        if peer != "direct":
            record(peer, "m", idle_mem)

    for peer in PEERS:
        notes.extend(results[peer]["errors"])
        c = pick(results[peer]["c"], "rate")
        if c and c["errors"] > 0:
            notes.append("%s: %d connection attempts failed or timed out (3 s) during the "
                         "conn/s run (first errno %d)" % (peer, c["errors"], c["first_errno"]))
        m = results[peer]["m"]
        if isinstance(m, dict) and m["failed"] > 0:
            notes.append("%s: %d of %d idle connections failed to open" % (peer, m["failed"],
                                                                          m["n"]))
    notes.append("%d tests run again because the machine was busy with other work" % retries)
    notes.append("total TCP run time %.0f s" % (time.monotonic() - t_start))


def main():
    if ONLY not in ("", "tcp", "udp", "socks", "relay", "local"):
        sys.exit("bench: BENCH_ONLY is tcp, udp, socks, relay or local (or unset: all), not %r"
                 % ONLY)
    if not os.access(PINHOLE, os.X_OK):
        sys.exit("bench: %s is missing; build first (ninja -C build)" % PINHOLE)
    set_subreaper()
    t_start = time.monotonic()
    env = environment()
    results = {p: {"t1": [], "t4": [], "c": [], "m": None, "errors": []} for p in PEERS}
    notes = []
    stopped_lines = []
    report = ""
    if ONLY in ("", "tcp"):
        run_tcp(results, notes, stopped_lines)
        report = build_report(env, results, notes, stopped_lines)
    udp_raw = socks_raw = relay_raw = local_raw = None
    if ONLY in ("", "udp"):
        # udp.py imports this module as "bench": the same one, not a second copy
        sys.modules.setdefault("bench", sys.modules[__name__])
        import udp

        section, udp_notes, udp_raw = udp.run()
        report += ("\n" if report else "") + section
        udp_raw["notes"] = udp_notes
    if ONLY in ("", "socks"):
        # as udp.py, socks.py imports this module as "bench"
        sys.modules.setdefault("bench", sys.modules[__name__])
        import socks

        section, socks_notes, socks_raw = socks.run()
        report += ("\n" if report else "") + section
        socks_raw["notes"] = socks_notes
    if ONLY in ("", "relay"):
        # as udp.py, relay.py imports this module as "bench"
        sys.modules.setdefault("bench", sys.modules[__name__])
        import relay

        section, relay_notes, relay_raw = relay.run()
        report += ("\n" if report else "") + section
        relay_raw["notes"] = relay_notes
    if ONLY in ("", "local"):
        # as udp.py, local.py imports this module as "bench"
        sys.modules.setdefault("bench", sys.modules[__name__])
        import local

        section, local_notes, local_raw = local.run()
        report += ("\n" if report else "") + section
        local_raw["notes"] = local_notes
    report = build_header(env) + report
    report += "\nTotal run time %.0f s.\n" % (time.monotonic() - t_start)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(report)
    # every raw number, for whoever wants to look again
    with open(os.path.splitext(OUT)[0] + ".json", "w") as f:
        json.dump({"env": env, "results": results if ONLY in ("", "tcp") else None,
                   "notes": notes, "stopped": stopped_lines, "udp": udp_raw,
                   "socks": socks_raw, "relay": relay_raw, "local": local_raw}, f, indent=1)
    print()
    print(report)
    print("written to %s" % OUT)


if __name__ == "__main__":
    main()
