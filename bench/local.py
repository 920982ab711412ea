"""The local part of the pinhole benchmark; bench.py calls run() (BENCH_ONLY=local: nothing else).

Measures client-opened streams through a relay, on 127.0.0.1 only: local forwarding, `pinhole
local` (a listener here, the relay connects to HOST:PORT for each connection) against OpenSSH's
`ssh -N -L`, and dynamic forwarding, `pinhole socks --via` (every CONNECT leaves from the relay)
against `ssh -N -D`, both pinhole rows through `pinhole server` (TLS 1.3), both ssh rows through
an sshd of their own (cipher aes128-gcm@openssh.com, as the relay part), and a direct connection
to the target (the limit):
  1. throughput, 1 and 4 streams. Local: iperf3 through the forwarded port, upload (client ->
     target) and download (iperf3 -R). SOCKS: `connrate bulk --socks5` to a discard server
     (upload; the SOCKS part's client, since iperf3 speaks no SOCKS), timed until the sink has
     read everything
  2. new connections per second (connrate load, 32 clients: connect, for SOCKS the SOCKS5
     handshake step by step, 64 B echoed, the target closes) with p50/p99 latency, and the CPU
     per connection of both sides
  3. first-byte latency (socket() to the last byte of a 64 B echo, one client at a time),
     over plain loopback and with the session (client <-> relay) carried by relay.py's delay
     proxy, which adds RTT_MS of round trip: (extra with the delay - extra on loopback) / RTT
     counts the session round trips a client waits for
  4. RSS per idle stream: IDLE idle connections through the forwarder (each with one 64 B
     round trip), the memory of each side with them less before, per connection held; and the
     idle client's RSS (one rule, the session up, no connection yet)
and the CPU (user and system apart, relay side and client side apart) per GiB and per
connection. "The relay side" is `pinhole server`, or sshd with the processes it forks; "the
client side" is `pinhole local` / `pinhole socks --via`, or `ssh`.

Each round starts one forwarder per peer for its tests: pinhole runs one `pinhole local` per
target (each with a key of its own) or one `pinhole socks --via`, and the relay's
authorized_keys grants every client key connect=127.0.0.1:1024-65535 (the relay's own
loopback, written out, as it must be). A pinhole client listens before its session is up (its
clients wait in the listen queue), so the benchmark waits for its "session up" line. ssh reuses
the SOCKS part's throw-away keys and sshd config (AllowTcpForwarding local; sshd in the
foreground, nothing of the system's sshd or ~/.ssh touched, /run/sshd made if missing and
removed again).

Every process runs in its own session with its id in $BENCH_TMP/pgids (sshd's per-connection
sessions too, as soon as they exist), so that run.sh's trap can end it. Every wait is bounded.
"""

import json
import os
import subprocess
import time

import bench as B
import relay as R
import socks as SX

SECS = int(os.environ.get("BENCH_LOCAL_SECS", "3"))
ROUNDS = int(os.environ.get("BENCH_LOCAL_ROUNDS", str(B.ROUNDS)))
CLIENTS = int(os.environ.get("BENCH_LOCAL_CLIENTS", str(B.CLIENTS)))
IDLE = int(os.environ.get("BENCH_LOCAL_IDLE", "5000"))
RTT_MS = float(os.environ.get("BENCH_LOCAL_RTT", "10"))
BUDGET = float(os.environ.get("BENCH_LOCAL_BUDGET", "300"))
PEERS = os.environ.get("BENCH_LOCAL_PEERS",
                       "direct pinhole-local ssh-L pinhole-socks ssh-D").split()
KNOWN = ("direct", "pinhole-local", "ssh-L", "pinhole-socks", "ssh-D")
KIND = {"pinhole-local": "local", "ssh-L": "local", "pinhole-socks": "socks", "ssh-D": "socks"}
LABEL = {"direct": "direct", "pinhole-local": "pinhole local", "ssh-L": "ssh -L",
         "pinhole-socks": "pinhole socks --via", "ssh-D": "ssh -D"}
CIPHER = R.CIPHER
TIMEOUT_MS = 3000  # a connection (SOCKS handshake included) not done by then counts as an error
LAT_CLIENTS = 1    # the latency test: one connection at a time, nothing queues
HOLD_SETUP = 60    # seconds to open the idle streams (ssh opens its channels one at a time)
GRANT = "connect=127.0.0.1:1024-65535"  # every port free_port() hands out, and the servers'
# throughput tests: key -> (streams, reverse); u/d: iperf3 up/down (local), b: connrate bulk
BULK = {"u1": (1, False), "d1": (1, True), "u4": (4, False), "d4": (4, True)}
SOCKS_BULK = {"b1": 1, "b4": 4}
TESTS = {"direct": ("u1", "d1", "u4", "d4", "b1", "b4", "c"),
         "local": ("u1", "d1", "u4", "d4", "c"),
         "socks": ("b1", "b4", "c")}
KEYS = TESTS["direct"]

log = B.log
HOST = B.HOST


class Failed(B.Failed):
    pass


def kind(peer):
    return KIND.get(peer, "direct")


# ---------------------------------------------------------------- keys and forwarders


class LocalKeys:
    """pinhole keys made once per run: the relay's and three clients', each granted
    connect= to the loopback ports the benchmark uses."""

    dir = None
    NCLIENTS = 3

    @classmethod
    def get(cls):
        if cls.dir is not None:
            return cls.dir
        d = os.path.join(B.TMP, "local-keys")
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
                lines.append("%s %s" % (GRANT, line))
        R._write(os.path.join(d, "authorized_keys"), "\n".join(lines) + "\n", 0o600)
        cls.dir = d
        return d


def wait_session(p, timeout=15.0):
    """Waits until a pinhole client's log says its session is up; False on timeout or death."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if "session up" in p.stderr_text():
            return True
        if not p.alive():
            return False
        time.sleep(0.05)
    return False


class Fwd(R.Tunnel):
    """A running forwarder: the relay side (pinhole server, or sshd) and the client side (one
    pinhole local per target or one pinhole socks --via; one ssh with a -L per target or one
    -D). Local: pub[target] is the port that leads to target. SOCKS: socks is the proxy's
    port. With delay_ms, the client reaches the relay through the delay proxy."""

    def __init__(self, peer, targets, delay_ms=0.0):
        R.Tunnel.__init__(self, "pinhole" if peer.startswith("pinhole") else "ssh", targets,
                          delay_ms)
        self.name = peer
        self.kind = KIND[peer]
        self.socks = None

    def _client(self, name, argv, port):
        p = self._start(self.client, name, argv, port, timeout=15.0)
        if not wait_session(p):
            text = p.stderr_text().strip().splitlines()
            raise Failed("%s: no session up within 15 s: %s" % (name, " | ".join(text[-3:])
                                                                or "-"))
        return p

    def _start_pinhole(self):
        d = LocalKeys.get()
        rport = B.free_port()
        self._start(self.relay, "ph-server",
                    [B.PINHOLE, "server", "%s:%d" % (HOST, rport), "--key",
                     os.path.join(d, "server.key"), "--authorized-keys",
                     os.path.join(d, "authorized_keys"), "--control", "none"], rport)
        via = self._via(rport)

        def common(i):
            known = os.path.join(d, "known_relays-%d-%d" % (via, i))
            if os.path.exists(known):
                os.unlink(known)  # a port used again later: trust on first use again
            return ["--via", "%s:%d" % (HOST, via), "--key",
                    os.path.join(d, "client%d.key" % i), "--known-relays", known,
                    "--control", "none"]

        if self.kind == "socks":
            self.socks = B.free_port()
            self._client("ph-socks", [B.PINHOLE, "socks", "%s:%d" % (HOST, self.socks)] +
                         common(0), self.socks)
            return
        if len(self.targets) > LocalKeys.NCLIENTS:
            raise ValueError("more targets than client keys")
        for i, t in enumerate(self.targets):
            pub = B.free_port()
            self._client("ph-local", [B.PINHOLE, "local", "%s:%d" % (HOST, pub),
                                      "%s:%d" % (HOST, t)] + common(i), pub)
            self.pub[t] = pub

    def _start_ssh(self):
        d = SX.SshKeys.get()
        sport = B.free_port()
        cfg = os.path.join(d, "local-sshd-%d.conf" % sport)
        R._write(cfg, SX.sshd_config(d, sport))  # AllowTcpForwarding local
        self._start(self.relay, "sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", cfg], sport)
        via = self._via(sport)
        known = os.path.join(d, "local-known_hosts-%d" % via)
        with open(os.path.join(d, "host_key.pub")) as f:
            R._write(known, "[%s]:%d %s" % (HOST, via, f.read()))
        ccfg = os.path.join(d, "local-ssh-%d.conf" % via)
        R._write(ccfg, R.ssh_config(d, via, known))
        argv = ["ssh", "-F", ccfg, "-N", "-c", CIPHER]
        if self.kind == "socks":
            self.socks = B.free_port()
            argv += ["-D", "%s:%d" % (HOST, self.socks)]
            ports = [self.socks]
        else:
            for t in self.targets:
                self.pub[t] = B.free_port()
                argv += ["-L", "%s:%d:%s:%d" % (HOST, self.pub[t], HOST, t)]
            ports = [self.pub[t] for t in self.targets]
        argv.append(HOST)
        p = self._start(self.client, "ssh", argv, ports[0], timeout=15.0)
        for port in ports[1:]:
            if not B.wait_listen(port, p, timeout=5.0):
                raise Failed("ssh: port %d did not open" % port)

    def dial(self, target):
        """(host:port to connect to, extra connrate arguments) that reach target."""
        if self.kind == "socks":
            return "%s:%d" % (HOST, target), ["--socks5", "%s:%d" % (HOST, self.socks)]
        return "%s:%d" % (HOST, self.pub[target]), []


def dial(fwd, target):
    return fwd.dial(target) if fwd else ("%s:%d" % (HOST, target), [])


# ---------------------------------------------------------------- measurements


def iperf_test(fwd, servers, key):
    """One iperf3 run to the iperf3 server, through the forwarded port or direct."""
    streams, reverse = BULK[key]
    addr, _ = dial(fwd, servers.port("iperf"))
    host, port = addr.rsplit(":", 1)
    argv = ["iperf3", "-c", host, "-p", port, "-t", str(SECS), "--json",
            "--connect-timeout", "3000"]
    if streams > 1:
        argv += ["-P", str(streams)]
    if reverse:
        argv.append("-R")
    smp = R.Sampler(fwd, servers)
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
    if fwd and recv["bytes"] > 0:
        kv["cpu_per_gib"] = smp.total / (recv["bytes"] / 2**30)
    return kv


def bulk_test(fwd, servers, key):
    """connrate bulk to the sink, through the SOCKS proxy or direct."""
    addr, extra = dial(fwd, servers.port("sink"))
    argv = [B.CONNRATE, "bulk", addr, "-c", str(SOCKS_BULK[key]), "-t", str(SECS),
            "-T", "5000"] + extra
    smp = R.Sampler(fwd, servers)
    smp.start()
    out, err = SX.run_bounded("bulk", argv, SECS + 30)
    time.sleep(0.3)
    smp.stop()
    kv = B.parse_kv(out)
    if "gbps" not in kv:
        raise Failed("connrate bulk printed nothing: " + err.strip()[-200:])
    if kv.get("failed") or kv["bytes"] == 0:
        raise Failed("bulk: %s" % (err.strip()[-200:] or "no byte went through"))
    smp.into(kv)
    if fwd:
        kv["cpu_per_gib"] = smp.total / (kv["bytes"] / 2**30)
    kv["cmd"] = R.display_cmd(argv)
    return kv


def conn_test(fwd, servers):
    addr, extra = dial(fwd, servers.port("echo64"))
    argv = [B.CONNRATE, "load", addr, "-c", str(CLIENTS), "-t", str(SECS), "-s", "64",
            "-T", str(TIMEOUT_MS), "-e"] + extra
    smp = R.Sampler(fwd, servers)
    smp.start()
    out, err = SX.run_bounded("load", argv, SECS + 15)
    time.sleep(0.3)
    smp.stop()
    if fwd:
        fwd.note_sessions()
    kv = B.parse_kv(out)
    if "rate" not in kv:
        raise Failed("connrate load printed nothing: " + err.strip()[-200:])
    if kv["conns"] == 0:
        raise Failed("no connection completed (%d errors, errno %d, SOCKS reply %d)" % (
            kv["errors"], kv["first_errno"], kv.get("socks_first", 0)))
    smp.into(kv)
    kv["cpu_us_per_conn"] = smp.total / kv["conns"] * 1e6 if fwd else None
    kv["cmd"] = R.display_cmd(argv)
    return kv


def latency_test(peer, servers, delay_ms):
    """First-byte latency with LAT_CLIENTS clients: socket() to the last byte of a 64 B echo
    (SOCKS handshake included); through a forwarder whose client reaches its relay through the
    delay proxy when delay_ms."""
    target = servers.port("echo")
    fwd = Fwd(peer, [target], delay_ms).start() if peer != "direct" else None
    try:
        addr, extra = dial(fwd, target)
        # one warm-up connection: the first of a forwarder may pay for lazy set-up
        SX.run_bounded("warm", [B.CONNRATE, "load", addr, "-c", "1", "-t", "0.3", "-s", "64",
                                "-T", str(TIMEOUT_MS)] + extra, 15)
        argv = [B.CONNRATE, "load", addr, "-c", str(LAT_CLIENTS), "-t", str(SECS), "-s", "64",
                "-T", str(TIMEOUT_MS)] + extra
        out, err = SX.run_bounded("lat", argv, SECS + 15)
        kv = B.parse_kv(out)
        if "rate" not in kv or kv["conns"] == 0:
            raise Failed("connrate load: %s" % (err.strip()[-200:] or out.strip()[-200:]))
        kv["cmd"] = R.display_cmd(argv)
        return kv
    finally:
        if fwd:
            fwd.stop()


def idle_test(peer, servers):
    """The idle client's memory (session up, no connection), then RSS per idle stream: a
    short warm-up, baseline, IDLE connections held (each had one 64 B round trip), measure.
    Relay side and client side apart."""
    target = servers.port("echo")
    fwd = Fwd(peer, [target]).start()
    hold = None
    try:
        addr, extra = fwd.dial(target)
        time.sleep(1.0)
        fresh = {"relay": fwd.mem(fwd.relay), "client": fwd.mem(fwd.client)}
        SX.run_bounded("hold", [B.CONNRATE, "hold", addr, "-n", "16", "-w", "10", "-H", "1"] +
                       extra, 20)
        time.sleep(0.5)
        fwd.note_sessions()
        m0 = {"relay": fwd.mem(fwd.relay), "client": fwd.mem(fwd.client)}
        hold = B.Proc("hold", [B.CONNRATE, "hold", addr, "-n", str(IDLE), "-p", "64", "-w",
                               str(HOLD_SETUP), "-H", "150"] + extra,
                      stdin=subprocess.PIPE, capture=True)
        line = B.read_line(hold, HOLD_SETUP + 15)
        kv = B.parse_kv(line or "")
        if "held" not in kv:
            raise Failed("hold printed nothing: " + hold.stderr_text().strip()[-200:])
        held = int(kv["held"])
        if held == 0:
            raise Failed("no idle connection could be opened (%d failed)" % kv["failed"])
        time.sleep(1.0)
        fwd.note_sessions()
        m1 = {"relay": fwd.mem(fwd.relay), "client": fwd.mem(fwd.client)}
        if not fwd.alive():
            raise Failed("the forwarder died while holding connections: " + fwd.stderr_tail())
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
        fwd.stop()


# ---------------------------------------------------------------- the run


def run():
    """Runs the local tests. Returns (markdown section, notes for the summary, raw results)."""
    peers = [p for p in PEERS if p in KNOWN]
    notes = []
    for p in PEERS:
        if p not in KNOWN:
            notes.append("local: unknown peer %s skipped (known: %s)" % (p, " ".join(KNOWN)))
    results = {p: {k: [] for k in KEYS} for p in peers}
    for p in peers:
        results[p].update({"lat0": None, "latd": None, "m": None, "errors": []})
    t_start = time.monotonic()
    servers = R.Servers()
    link = {}
    try:
        servers.start("iperf", R.iperf_argv)
        servers.start("echo64", R.echo_argv(["-x", "64"]))
        servers.start("echo", R.echo_argv([]))
        servers.start("sink", lambda port: [B.CONNRATE, "sink", "%s:%d" % (HOST, port), "-t",
                                            "1800"])
        _rounds(peers, results, servers, notes)
        _once(peers, results, servers, link)
    finally:
        servers.stop()
        SX._rmdirs()
    notes.append("local: total run time %.0f s" % (time.monotonic() - t_start))
    for p in peers:
        notes.extend(results[p]["errors"])
        c = B.pick(results[p]["c"], "rate")
        if c and c["errors"] > 0:
            notes.append("%s: %d connections failed or timed out (%d ms) during the conn/s run "
                         "(first errno %d)" % (LABEL[p], c["errors"], TIMEOUT_MS,
                                               c["first_errno"]))
        for k in SOCKS_BULK:
            for v in results[p][k]:
                if v["drained"] < v["streams"]:
                    notes.append("%s %s: %d of %d streams were not closed by the sink within "
                                 "5 s of the end: that run counts bytes sent, not received" % (
                                     LABEL[p], k, v["streams"] - v["drained"], v["streams"]))
        m = results[p]["m"]
        if isinstance(m, dict) and m["failed"] > 0:
            notes.append("%s: %d of %d idle connections failed to open" % (LABEL[p],
                                                                          m["failed"], m["n"]))
    return build_section(peers, results, link, notes), notes, {
        "results": results, "link_rtt": link}


def _record(results, peer, key, fn, *args):
    try:
        v = fn(*args)
    except Exception as e:  # a peer must never take the whole run down
        msg = str(e) if isinstance(e, B.Failed) else repr(e)
        results[peer]["errors"].append("%s %s: %s" % (LABEL[peer], key, msg))
        log("  %-13s %-4s FAILED: %s" % (peer, key, msg))
        return None
    if key in ("lat0", "latd", "m"):
        results[peer][key] = v
    else:
        results[peer][key].append(v)
    if key in BULK or key in SOCKS_BULK:
        log("  %-13s %-4s %6.2f Gbit/s%s  (other load %.2f cores)" % (
            peer, key, v["gbps"],
            "  relay %.2f+%.2f s, client %.2f+%.2f s (user+sys) = %.2f s/GiB" % (
                v["relay_u"], v["relay_s"], v["client_u"], v["client_s"], v["cpu_per_gib"])
            if v.get("cpu_per_gib") is not None else "", v["other"]))
    elif key == "c":
        log("  %-13s conn %8.0f conn/s  p50 %.2f ms  p99 %.2f ms  errors %d%s  "
            "(other load %.2f cores)" % (
                peer, v["rate"], v["p50_us"] / 1000, v["p99_us"] / 1000, v["errors"],
                "  CPU %.0f us/conn" % v["cpu_us_per_conn"] if v["cpu_us_per_conn"] else "",
                v["other"]))
    elif key in ("lat0", "latd"):
        log("  %-13s %-4s %d conns: p50 %.3f ms  p99 %.3f ms  errors %d" % (
            peer, key, v["conns"], v["p50_us"] / 1000, v["p99_us"] / 1000, v["errors"]))
    else:
        log("  %-13s mem  %d/%d held in %.1f s: relay %.2f KiB/stream, client %.2f KiB/stream "
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
            log("  %-13s %-4s again: other programs used %.2f cores" % (peer, key,
                                                                         v["other"]))

    targets = [servers.port("iperf"), servers.port("echo64")]
    left = ROUNDS * sum(len(TESTS[kind(p)]) for p in peers)
    for rnd in range(ROUNDS):
        order = peers if rnd % 2 == 0 else list(reversed(peers))
        log("local round %d of %d (%s)" % (rnd + 1, ROUNDS, " ".join(order)))
        for peer in order:
            # one forwarder per peer and round for its tests; started again if it died
            fwd = None
            keys = TESTS[kind(peer)]
            try:
                for i, key in enumerate(keys):
                    left -= 1
                    if peer != "direct" and (fwd is None or not fwd.alive()):
                        if fwd is not None:
                            results[peer]["errors"].append(
                                "%s: the forwarder died (%s); started again" % (
                                    LABEL[peer], fwd.stderr_tail() or "-"))
                            fwd.stop()
                        try:
                            fwd = Fwd(peer, targets if kind(peer) == "local" else []).start()
                        except Exception as e:
                            fwd = None
                            msg = str(e) if isinstance(e, B.Failed) else repr(e)
                            results[peer]["errors"].append("%s round %d: %s" % (
                                LABEL[peer], rnd + 1, msg))
                            log("  %-13s FAILED to start: %s" % (peer, msg))
                            left -= len(keys) - i - 1
                            break
                    if key == "c":
                        retried(peer, key, conn_test, (fwd, servers), left)
                    elif key in BULK:
                        retried(peer, key, iperf_test, (fwd, servers, key), left)
                    else:
                        retried(peer, key, bulk_test, (fwd, servers, key), left)
            finally:
                if fwd is not None:
                    fwd.stop()
    notes.append("local: %d tests run again because the machine was busy with other work" %
                 state["retries"])


def _once(peers, results, servers, link):
    log("local first-byte latency (%d client, %d s): loopback, then a %.0f ms round trip "
        "between client and relay" % (LAT_CLIENTS, SECS, RTT_MS))
    try:
        link.update(R.link_rtt(servers, RTT_MS / 2))
        log("  the delay proxy's round trip on an established connection: p50 %.2f ms "
            "(%.2f-%.2f)" % (link["p50_ms"], link["min_ms"], link["max_ms"]))
    except Exception as e:
        log("  the delay proxy's round trip: FAILED: %r" % e)
    for peer in peers:
        _record(results, peer, "lat0", latency_test, peer, servers, 0.0)
        if peer != "direct":
            _record(results, peer, "latd", latency_test, peer, servers, RTT_MS / 2)
    log("local idle streams (%d) and idle clients" % IDLE)
    for peer in peers:
        if peer != "direct":
            _record(results, peer, "m", idle_test, peer, servers)


# ---------------------------------------------------------------- report


def versions():
    return [("OpenSSH", B.version(["ssh", "-V"], "OpenSSH") + ", cipher " + CIPHER),
            ("iperf3", B.version(["iperf3", "-v"], "iperf")),
            ("OpenSSL", B.version(["openssl", "version"]))]


def _rows(peers, results):
    rows = {}
    for peer in peers:
        r = results[peer]
        x = {}
        for k in list(BULK) + list(SOCKS_BULK):
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
        x["m"] = r["m"] if isinstance(r["m"], dict) else None
        rows[peer] = x
    return rows


def build_section(peers, results, link, notes):
    fmt, ratio = B.fmt, B.ratio
    rows = _rows(peers, results)
    d = rows.get("direct")
    L = []
    L.append("## Local and dynamic forwarding through the relay vs ssh -L / ssh -D\n")
    L.append(
        "Client-opened streams, all on 127.0.0.1: `pinhole local` (each connection a stream "
        "of the client's TLS 1.3 session to `pinhole server`, which connects to the target) "
        "against `ssh -N -L`, and `pinhole socks --via` (every CONNECT leaves from the relay) "
        "against `ssh -N -D`; each ssh against its own sshd (own config and keys, cipher %s); "
        "`direct` connects to the target itself (the limit). Throughput: local, iperf3 through "
        "the forwarded port for %d s, upload (client → target) and download (iperf3 -R); SOCKS, "
        "`connrate bulk --socks5` to a discard server (upload), timed until the sink has read "
        "everything; 1 and 4 streams. conn/s: %d clients at once, each connect (SOCKS: the "
        "SOCKS5 handshake, one step after the other), 64 B echoed, the target closes; latency "
        "from socket() to the target's EOF. CPU: the relay side (pinhole server; sshd and the "
        "processes it forks) and the client side (pinhole local / socks; ssh) apart, user and "
        "system apart. %d rounds in alternating order, one forwarder per peer and round; each "
        "cell is the median of the quiet runs; a test during which other programs used more "
        "than %.2f cores is run again while time allows.\n" % (CIPHER, SECS, CLIENTS, ROUNDS,
                                                              B.QUIET))
    L.append("| | |\n|---|---|")
    for k, v in versions():
        L.append("| %s | %s |" % (k, v))
    L.append("")
    L.append("```")
    L.append("iperf3 -s -B 127.0.0.1 -p IPERF ; connrate echo 127.0.0.1:ECHO64 -x 64 ; "
             "connrate echo 127.0.0.1:ECHO ; connrate sink 127.0.0.1:SINK")
    L.append("pinhole keygen -f server.key ; pinhole keygen -f clientN.key   # "
             "authorized_keys: '%s ph-ed25519 ...' per client" % GRANT)
    L.append("pinhole server 127.0.0.1:RELAY --key server.key --authorized-keys authorized_keys "
             "--control none")
    L.append("pinhole local 127.0.0.1:FWD 127.0.0.1:IPERF --via 127.0.0.1:RELAY --key "
             "client0.key --known-relays FILE --control none   # and one for ECHO64 (client1)")
    L.append("pinhole socks 127.0.0.1:SOCKS --via 127.0.0.1:RELAY --key client0.key "
             "--known-relays FILE --control none")
    L.append("/usr/sbin/sshd -D -e -f sshd.conf    # own host key, AllowTcpForwarding local; "
             "sshd.conf as in bench/socks.py")
    L.append("ssh -F ssh.conf -N -c %s -L 127.0.0.1:FWD:127.0.0.1:IPERF "
             "-L 127.0.0.1:FWD2:127.0.0.1:ECHO64 127.0.0.1" % CIPHER)
    L.append("ssh -F ssh.conf -N -c %s -D 127.0.0.1:SOCKS 127.0.0.1" % CIPHER)
    L.append("iperf3 -c 127.0.0.1 -p FWD -t %d --json [-P 4] [-R]" % SECS)
    L.append("connrate bulk 127.0.0.1:SINK -c 1|4 -t %d -T 5000 --socks5 127.0.0.1:SOCKS" % SECS)
    L.append("connrate load 127.0.0.1:FWD2 -c %d -t %d -s 64 -T %d -e   # SOCKS: 127.0.0.1:"
             "ECHO64 ... --socks5 127.0.0.1:SOCKS" % (CLIENTS, SECS, TIMEOUT_MS))
    L.append("connrate load ... -c %d -t %d -s 64 -T %d   # latency, to ECHO; client -> relay "
             "direct or through the delay proxy" % (LAT_CLIENTS, SECS, TIMEOUT_MS))
    L.append("connrate hold ... -n %d -p 64 -w %d -H 150   # idle streams, to ECHO" % (
        IDLE, HOLD_SETUP))
    L.append("```\n")

    def cpu_cell(x, k):
        b = x["run_" + k]
        if not b or b.get("cpu_per_gib") is None:
            return "—"
        g = b["bytes"] / 2**30
        return "%.2f (%.2f+%.2f / %.2f+%.2f)" % (b["cpu_per_gib"], b["relay_u"] / g,
                                                 b["relay_s"] / g, b["client_u"] / g,
                                                 b["client_s"] / g)

    def conn_cells(x):
        return "%s%s | %s / %s | %s | %s" % (
            fmt(x["rate"], ",.0f"), " †" if x["nc"] else "", fmt(x["p50"], ".2f"),
            fmt(x["p99"], ".2f"), fmt(x["cerr"], "d"), fmt(x["cpu_conn"], ".0f"))

    def mark(peer):
        return " ⚠" if results[peer]["errors"] else ""

    def g(x, k):
        return fmt(x[k], ".2f") + (" †" if x["n" + k] else "")

    r = lambda a, b, k: fmt(ratio(a[k], b[k]) if a and b else None, ".2f")
    lp, ls = rows.get("pinhole-local"), rows.get("ssh-L")
    sp, sd = rows.get("pinhole-socks"), rows.get("ssh-D")

    L.append("### Local forwarding: throughput and connections\n")
    L.append("| path | upload 1 Gbit/s | download 1 | upload 4 | download 4 | "
             "CPU s/GiB up 1 (relay u+s / client u+s) | CPU s/GiB down 1 | conn/s | "
             "p50 / p99 ms | conn errors | CPU µs/conn |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for peer in [p for p in peers if kind(p) in ("direct", "local")]:
        x = rows[peer]
        L.append("| %s%s | %s | %s | %s | %s | %s | %s | %s |" % (
            LABEL[peer], mark(peer), g(x, "u1"), g(x, "d1"), g(x, "u4"), g(x, "d4"),
            cpu_cell(x, "u1"), cpu_cell(x, "d1"), conn_cells(x)))
    if lp and ls:
        L.append("| pinhole ÷ ssh -L | %s | %s | — | %s |" % (
            " | ".join(r(lp, ls, k) for k in ("u1", "d1", "u4", "d4", "cpu_u1", "cpu_d1",
                                              "rate")),
            r(lp, ls, "p99"), r(lp, ls, "cpu_conn")))
    L.append("")

    L.append("### Dynamic forwarding (SOCKS5): throughput and connections\n")
    L.append("| path | 1 stream Gbit/s | 4 streams | CPU s/GiB 1 (relay u+s / client u+s) | "
             "CPU s/GiB 4 | conn/s | p50 / p99 ms | conn errors | CPU µs/conn |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for peer in [p for p in peers if kind(p) in ("direct", "socks")]:
        x = rows[peer]
        L.append("| %s%s | %s | %s | %s | %s | %s |" % (
            LABEL[peer], mark(peer), g(x, "b1"), g(x, "b4"), cpu_cell(x, "b1"),
            cpu_cell(x, "b4"), conn_cells(x)))
    if sp and sd:
        L.append("| pinhole ÷ ssh -D | %s | %s | — | %s |" % (
            " | ".join(r(sp, sd, k) for k in ("b1", "b4", "cpu_b1", "cpu_b4", "rate")),
            r(sp, sd, "p99"), r(sp, sd, "cpu_conn")))
    L.append("")
    L.append("† : every run of this test shared the machine with more than %.2f cores of other "
             "work. — : not measured (direct has no forwarder) or failed; ⚠ : a test of this "
             "row failed, see the notes. Ratios: above 1 is better for pinhole in throughput "
             "and conn/s, below 1 in CPU and p99.\n" % B.QUIET)

    rtt = link.get("p50_ms")
    L.append("### First-byte latency\n")
    L.append("%d client, connect (SOCKS: and the SOCKS5 handshake), 64 B, wait for the 64 B "
             "echo, close, for %d s: socket() to the reply's last byte. Loopback: everything on "
             "127.0.0.1. Session RTT: the same, with the session (client ↔ relay) carried by "
             "the delay proxy (`bench/relay.py delay`, %.1f ms each way); one round trip through "
             "it, measured on an established connection (64 B echoed %s times): %s ms (p50). "
             "Extra: p50 over direct's loopback p50. Round trips: (extra with the delay − extra "
             "on loopback) ÷ RTT, the session round trips a client waits for, its own "
             "processing taken out.\n" % (LAT_CLIENTS, SECS, RTT_MS / 2, link.get("n", "—"),
                                           fmt(rtt, ".2f")))
    L.append("| path | loopback p50 / p99 ms | extra | session RTT %.0f ms: p50 / p99 ms | "
             "extra | round trips | connections |" % RTT_MS)
    L.append("|---|--:|--:|--:|--:|--:|--:|")
    base = d["lat0_p50"] if d else None
    for peer in peers:
        x = rows[peer]
        e0 = x["lat0_p50"] - base if base and x["lat0_p50"] else None
        ed = x["latd_p50"] - base if base and x["latd_p50"] else None
        x["rt"] = (ed - e0) / rtt if ed is not None and e0 is not None and rtt else None
        L.append("| %s | %s / %s | %s | %s / %s | %s | %s | %s / %s |" % (
            LABEL[peer], fmt(x["lat0_p50"], ".3f"), fmt(x["lat0_p99"], ".3f"),
            "—" if peer == "direct" else fmt(e0, ".3f") + " ms",
            fmt(x["latd_p50"], ".2f"), fmt(x["latd_p99"], ".2f"),
            "—" if peer == "direct" else fmt(ed, ".2f") + " ms",
            "—" if peer == "direct" else fmt(x["rt"], ".2f"),
            fmt(x["lat0_n"], "d"), fmt(x["latd_n"], "d")))
    L.append("")

    L.append("### Memory per idle stream\n")
    L.append("%d connections through the forwarder (64 set up at a time, as many as open "
             "within %d s), each with one 64 B round trip, then idle; each side's memory with "
             "them less before (after 16 warm-up connections), summed over its processes, per "
             "connection held. Idle client: the client side one second after its session is "
             "up (one rule, no connection yet). anon: RssAnon (what the process allocated); "
             "RSS also counts the shared libraries' pages it touched.\n" % (IDLE, HOLD_SETUP))
    L.append("| forwarder | held | relay side KiB/stream (RSS / anon / PSS) | client side "
             "KiB/stream (RSS / anon / PSS) | set-up s | idle client RSS KiB (anon / PSS) |")
    L.append("|---|--:|--:|--:|--:|--:|")
    for peer in peers:
        if peer == "direct":
            continue
        m = rows[peer]["m"]
        if not m:
            L.append("| %s | failed | — | — | — | — |" % LABEL[peer])
            continue
        f = m["fresh"]["client"]
        L.append("| %s | %d/%d | %.2f / %.2f / %.2f | %.2f / %.2f / %.2f | %.1f | "
                 "%.0f (%.0f / %.0f) |" % (
                     LABEL[peer], m["held"], m["n"], m["relay_rss_per"] / 1024,
                     m["relay_anon_per"] / 1024, m["relay_pss_per"] / 1024,
                     m["client_rss_per"] / 1024, m["client_anon_per"] / 1024,
                     m["client_pss_per"] / 1024, m["secs"] or 0, f["rss"] / 1024,
                     f["anon"] / 1024, f["pss"] / 1024))
    L.append("")

    L.append("### pinhole against its targets\n")

    def check(desc, value, ok):
        L.append("- %s: %s — **%s**" % (desc, value,
                 "n/a" if ok is None else ("met" if ok else "NOT met")))

    for p, s, name, sname, bulk in ((lp, ls, "local", "ssh -L", ("u1", "d1", "u4", "d4")),
                                    (sp, sd, "socks --via", "ssh -D", ("b1", "b4"))):
        if not p or not s:
            continue
        for k in bulk:
            rr = ratio(p[k], s[k])
            check("%s: throughput ≥ %s, %s" % (name, sname, k), fmt(rr, ".2f") + "×",
                  None if rr is None else rr >= 1.0)
        rr = ratio(p["rate"], s["rate"])
        check("%s: conn/s ≥ 2× %s" % (name, sname), fmt(rr, ".2f") + "×",
              None if rr is None else rr >= 2.0)
        if p.get("rt") is not None:
            # one RTT is the least a forwarder that connects on the far side can add; a tenth
            # more for the delay proxy's timers. A SOCKS client waits for the CONNECT reply,
            # which socks --via sends once the relay's OPENED is back: two is its least
            check("%s: first byte within one session round trip of direct" % name,
                  "%.2f round trips (%s: %s)%s" % (
                      p["rt"], sname, fmt(s.get("rt"), ".2f"),
                      "; the CONNECT reply waits for the relay's OPENED, as ssh -D's for "
                      "its confirmation, so 2 is the least here" if name != "local" else ""),
                  p["rt"] <= 1.1)
        m = p["m"]
        if m:
            rk, ck = m["relay_rss_per"] / 1024, m["client_rss_per"] / 1024
            check("%s: ≤ 2 KiB per idle stream on each side (RSS)" % name,
                  "relay %.2f KiB, client %.2f KiB" % (rk, ck), rk <= 2.0 and ck <= 2.0)
    L.append("")
    if notes:
        L.append("### Notes and failures\n")
        for n in notes:
            L.append("- " + n)
        L.append("")
    L.append("### Every run\n")
    L.append("u1/d1/u4/d4: iperf3 Gbit/s upload/download with 1/4 streams; b1/b4: connrate "
             "bulk Gbit/s with 1/4 streams; c: conn/s; in the order run (retries included). In "
             "brackets: CPU used by other programs during that test, in cores (2 = the whole "
             "machine).\n")
    L.append("```")
    for peer in peers:
        res = results[peer]
        for k in TESTS[kind(peer)]:
            vals = ["%s [%.2f]" % (fmt(v.get("gbps", v.get("rate")), ".2f"), v["other"])
                    for v in res[k]]
            L.append("%-13s %-3s %s" % (peer, k, "  ".join(vals) if vals else "failed"))
        m = res["m"]
        if isinstance(m, dict):
            L.append("%-13s mem held %d/%d, failed %d; relay RSS %d -> %d B (%d procs), client "
                     "RSS %d -> %d B; fresh client RSS %d B, anon %d B" % (
                         peer, m["held"], m["n"], m["failed"], m["m0"]["relay"]["rss"],
                         m["m1"]["relay"]["rss"], m["m1"]["relay"]["procs"],
                         m["m0"]["client"]["rss"], m["m1"]["client"]["rss"],
                         m["fresh"]["client"]["rss"], m["fresh"]["client"]["anon"]))
    L.append("```\n")
    return "\n".join(L) + "\n"
