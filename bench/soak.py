#!/usr/bin/python3
"""The soak's load generator and echo server; bench/soak.sh starts them (see its head).

    soak.py echo PORT MAXSECS
        An echo server on 127.0.0.1:PORT (asyncio protocols, no per-connection task): echoes
        what it reads, and stops reading a connection while its echo waits to be sent, so a
        client that never reads stalls it instead of growing its memory. Prints "listening"
        once bound; exits on SIGTERM/SIGINT or after MAXSECS.

    soak.py ports N
        Prints N free ports of 127.0.0.1 and a range LO-HI of 8 (for the relay's --ports).

    soak.py load --config FILE.json
        The load: idle connections held open, churn, never-reading clients and garbage, with
        every pinhole process sampled every 10 s into a CSV; then everything is closed, the
        fd counts must come back to their baseline, and a verdict is printed. The exit status
        is 0 for a pass, 1 for a fail, 2 when the load could not be set up.

Paths a client can take (each ends at the echo server):
    forward   client -> pinhole forward -> echo
    socks     client -> pinhole socks (SOCKS5 CONNECT 127.0.0.1:echo) -> echo
    relay     visitor -> pinhole server's public port ~TLS~ pinhole expose -> echo

Standard library only; every loop is bounded in count and in time.
"""

import asyncio
import json
import os
import random
import resource
import signal
import socket
import ssl
import statistics
import struct
import sys
import time

HOST = "127.0.0.1"
PATHS = ("forward", "socks", "relay")


def log(msg):
    print("soak: " + msg, flush=True)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- the echo server


class Echo(asyncio.Protocol):
    live = 0

    def connection_made(self, transport):
        Echo.live += 1
        self.t = transport

    def data_received(self, data):
        self.t.write(data)

    def pause_writing(self):
        # the echo waits to be sent (its reader does not read): read no more meanwhile
        self.t.pause_reading()

    def resume_writing(self):
        self.t.resume_reading()

    def eof_received(self):
        return False  # close once what is queued is written

    def connection_lost(self, exc):
        Echo.live -= 1


def echo_main(port, maxsecs):
    raise_nofile()

    async def main():
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        srv = await loop.create_server(Echo, HOST, port, backlog=4096, reuse_address=True)
        print("listening", flush=True)
        try:
            await asyncio.wait_for(stop, maxsecs)
        except asyncio.TimeoutError:
            pass
        srv.close()

    asyncio.run(main())


# ---------------------------------------------------------------- /proc


def proc_sample(pid):
    """(rss KiB, fds, cpu seconds) of a live process, or None when it is gone."""
    try:
        rss = 0
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        fds = len(os.listdir("/proc/%d/fd" % pid))
        with open("/proc/%d/stat" % pid) as f:
            st = f.read().rsplit(")", 1)[1].split()
        cpu = (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
        return rss, fds, cpu
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def fd_kinds(pid):
    """{"sock": n, "pipe": n, "other": n}: the open fds of a process by kind."""
    k = {"sock": 0, "pipe": 0, "other": 0}
    d = "/proc/%d/fd" % pid
    try:
        names = os.listdir(d)
    except OSError:
        return k
    for n in names:
        try:
            t = os.readlink(os.path.join(d, n))
        except OSError:
            continue
        k["sock" if t.startswith("socket:") else "pipe" if t.startswith("pipe:") else
          "other"] += 1
    return k


def file_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


# ---------------------------------------------------------------- the load


class Failed(Exception):
    pass


class Load:
    def __init__(self, cfg):
        self.cfg = cfg
        self.seconds = float(cfg["seconds"])
        self.conns = int(cfg["conns"])
        self.rate = float(cfg["rate"])
        self.garbage_rate = float(cfg["garbage_rate"])
        self.stall_per_path = int(cfg["stall"])
        self.stall_life = float(cfg["stall_life"])
        self.warmup = float(cfg["warmup"])
        self.interval = float(cfg["interval"])
        self.rss_tol = float(cfg["rss_tol"])
        self.rss_slack = int(cfg["rss_slack_kib"])
        self.rss_window = float(cfg["rss_window"])
        self.fd_tol = int(cfg["fd_tol"])
        self.procs = cfg["procs"]  # [{"name", "pid", "log"}]
        self.ports = cfg["ports"]
        self.rnd = random.Random(int(cfg.get("seed", 1)))
        self.idle = {p: [] for p in PATHS}
        self.ramp_failed = {p: 0 for p in PATHS}
        self.ramp_done = None
        self.stopping = False
        self.t0 = None
        self.rows = []
        self.baseline = {}
        self.base_kinds = {}
        self.pipe_spare = int(cfg["pipe_spare"])  # pipes a process may keep for reuse (fds)
        self.ref = None  # the sample that ends the warm-up
        self.notes = []
        self.tasks = set()
        c = {}
        for p in PATHS:
            c["churn_ok_" + p] = 0
            c["churn_err_" + p] = 0
        c.update(garbage=0, garbage_closed=0, garbage_open=0, garbage_err=0,
                 stall_started=0, stall_bytes_max=0, stall_unbounded=0, stall_err=0)
        self.c = c
        self.errors = {}  # reason -> count (churn)
        self.garbage_kinds = {}
        self.stall_bytes = {p: [] for p in PATHS}
        self.latency = {p: [] for p in PATHS}  # churn round trips, s (the last 10-20,000)

    # ---- helpers

    def now(self):
        return time.monotonic() - self.t0

    def spawn(self, coro):
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    def err(self, why):
        self.errors[why] = self.errors.get(why, 0) + 1

    async def recv_exact(self, s, n, timeout):
        loop = asyncio.get_running_loop()
        buf = b""
        deadline = time.monotonic() + timeout
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed("timeout")
            d = await asyncio.wait_for(loop.sock_recv(s, n - len(buf)), left)
            if not d:
                raise Failed("eof")
            buf += d
        return buf

    def src_addr(self):
        """A loopback source address other than 127.0.0.1 (so per-address limits of the
        relay's handshakes apply to each garbage client, not to everyone at once)."""
        return "127.%d.%d.%d" % (self.rnd.randrange(0, 256), self.rnd.randrange(0, 256),
                                 self.rnd.randrange(2, 255))

    async def connect(self, port, src=None, timeout=10.0):
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if src:
                s.bind((src, 0))
            await asyncio.wait_for(loop.sock_connect(s, (HOST, port)), timeout)
        except BaseException:
            s.close()
            raise
        return s

    async def open_path(self, path, timeout=10.0, pipelined=False):
        """A socket through path to the echo server, its proxy handshake done."""
        loop = asyncio.get_running_loop()
        port = {"forward": self.ports["forward"], "socks": self.ports["socks"],
                "relay": self.ports["public"]}[path]
        s = await self.connect(port, timeout=timeout)
        if path != "socks":
            return s
        try:
            req = b"\x05\x01\x00\x01" + socket.inet_aton(HOST) + struct.pack("!H",
                                                                              self.ports["echo"])
            if pipelined:
                await loop.sock_sendall(s, b"\x05\x01\x00" + req)
                if await self.recv_exact(s, 2, timeout) != b"\x05\x00":
                    raise Failed("socks: method refused")
            else:
                await loop.sock_sendall(s, b"\x05\x01\x00")
                if await self.recv_exact(s, 2, timeout) != b"\x05\x00":
                    raise Failed("socks: method refused")
                await loop.sock_sendall(s, req)
            head = await self.recv_exact(s, 4, timeout)
            if head[1] != 0:
                raise Failed("socks: reply %d" % head[1])
            rest = {1: 6, 4: 18}.get(head[3])
            if rest is None:
                raise Failed("socks: reply address type %d" % head[3])
            await self.recv_exact(s, rest, timeout)
        except BaseException:
            s.close()
            raise
        return s

    async def echo_once(self, s, data, timeout=10.0):
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_sendall(s, data), timeout)
        got = await self.recv_exact(s, len(data), timeout)
        if got != data:
            raise Failed("echo: wrong bytes")

    # ---- idle connections

    async def ramp(self):
        """Opens self.conns idle connections, spread over the paths, 64 in flight at most,
        each proven with one round trip; bounded by cfg ramp_max seconds."""
        sem = asyncio.Semaphore(64)
        deadline = time.monotonic() + float(self.cfg["ramp_max"])
        per = {p: self.conns // len(PATHS) for p in PATHS}
        per[PATHS[0]] += self.conns - sum(per.values())

        async def one(path):
            async with sem:
                if time.monotonic() > deadline or self.stopping:
                    self.ramp_failed[path] += 1
                    return
                try:
                    s = await self.open_path(path)
                except (OSError, Failed, asyncio.TimeoutError):
                    self.ramp_failed[path] += 1
                    return
                try:
                    await self.echo_once(s, b"idle-%05d" % len(self.idle[path]))
                except (OSError, Failed, asyncio.TimeoutError):
                    s.close()
                    self.ramp_failed[path] += 1
                    return
                self.idle[path].append(s)

        order = [p for p in PATHS for _ in range(per[p])]
        self.rnd.shuffle(order)
        # a bounded number of tasks at once: start them in slices
        for i in range(0, len(order), 512):
            await asyncio.gather(*(one(p) for p in order[i:i + 512]))
        self.ramp_done = self.now()
        held = sum(len(v) for v in self.idle.values())
        log("ramp: %d idle connections held (%s) in %.1f s, %d failed" % (
            held, ", ".join("%s %d" % (p, len(self.idle[p])) for p in PATHS), self.ramp_done,
            sum(self.ramp_failed.values())))

    async def check_idle(self):
        """Each idle connection once more: one byte echoed. Returns {path: (alive, dead)}."""
        sem = asyncio.Semaphore(128)
        res = {p: [0, 0] for p in PATHS}

        async def one(path, s):
            async with sem:
                try:
                    await self.echo_once(s, b"k", timeout=10.0)
                    res[path][0] += 1
                except (OSError, Failed, asyncio.TimeoutError):
                    res[path][1] += 1

        for p in PATHS:
            conns = self.idle[p]
            for i in range(0, len(conns), 512):
                await asyncio.gather(*(one(p, s) for s in conns[i:i + 512]))
        return res

    # ---- churn

    async def churn_one(self, path):
        t = time.monotonic()
        s = None
        try:
            s = await self.open_path(path, pipelined=self.rnd.random() < 0.5)
            data = os.urandom(self.rnd.randrange(16, 1024))
            await self.echo_once(s, data)
            if self.rnd.random() < 0.1:  # one in ten ends with a reset instead of a FIN
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.c["churn_ok_" + path] += 1
            lat = self.latency[path]
            lat.append(time.monotonic() - t)
            if len(lat) > 20000:
                del lat[:10000]
        except (OSError, Failed, asyncio.TimeoutError) as e:
            self.c["churn_err_" + path] += 1
            self.err("%s: %s" % (path, e.__class__.__name__ if not str(e) else str(e)[:60]))
        finally:
            if s is not None:
                s.close()

    async def churn(self, end):
        """self.rate connections a second in all, round robin over the paths, until end; at
        most 1,000 in flight (late ones are skipped and counted as errors)."""
        i = 0
        start = time.monotonic()
        inflight = [0]

        async def run(path):
            inflight[0] += 1
            try:
                await self.churn_one(path)
            finally:
                inflight[0] -= 1

        while not self.stopping and time.monotonic() < end:
            due = start + i / self.rate
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            path = PATHS[i % len(PATHS)]
            i += 1
            if inflight[0] >= 1000:
                self.c["churn_err_" + path] += 1
                self.err("%s: skipped (1000 in flight)" % path)
                continue
            self.spawn(run(path))

    # ---- clients that never read

    async def stall_one(self, path):
        """Sends echo requests as fast as the path takes them and never reads: the echo comes
        back until every buffer on the way is full, then the path must stop taking bytes.
        Holds the stalled connection stall_life seconds. A path that takes more than the cap
        (256 MiB) buffers without bound."""
        loop = asyncio.get_running_loop()
        cap = 256 << 20
        chunk = os.urandom(65536)
        sent = 0
        s = None
        try:
            s = await self.open_path(path)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            self.c["stall_started"] += 1
            while sent < cap and not self.stopping:
                try:
                    await asyncio.wait_for(loop.sock_sendall(s, chunk), 3.0)
                except asyncio.TimeoutError:
                    break  # stalled: nothing more taken for 3 s
                sent += len(chunk)
            if sent >= cap:
                self.c["stall_unbounded"] += 1
                self.notes.append("%s: a client that never reads got %d MiB in without a "
                                  "stall" % (path, sent >> 20))
            self.stall_bytes[path].append(sent)
            self.c["stall_bytes_max"] = max(self.c["stall_bytes_max"], sent)
            end = time.monotonic() + self.stall_life
            while not self.stopping and time.monotonic() < end:
                await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
        except (OSError, Failed, asyncio.TimeoutError) as e:
            self.c["stall_err"] += 1
            self.err("never-reading %s: %s" % (path, e.__class__.__name__ if not str(e)
                                                else str(e)[:60]))
        finally:
            if s is not None:
                s.close()  # with unread bytes: the close is a reset

    async def stall(self, path, end):
        while not self.stopping and time.monotonic() < end:
            await self.stall_one(path)
            await asyncio.sleep(0.5)

    # ---- garbage

    def garbage_kinds_all(self):
        kinds = ["relay_random", "relay_zeros", "relay_bad_hello", "relay_huge_record",
                 "relay_stall", "relay_http", "socks_random", "socks_zero_methods",
                 "socks_no_acceptable_method", "socks_bad_atyp", "socks_truncated",
                 "socks_http_garbage", "socks_huge_header", "socks_stall", "socks_refused",
                 "socks4_garbage"]
        if self.cfg.get("mallory_cert"):
            kinds.append("relay_unauthorized_key")
        if self.cfg.get("garbler_cert"):
            kinds += ["relay_frames"] * 3
        skip = set(self.cfg.get("garbage_skip", "").split())
        return [k for k in kinds if k not in skip]

    async def drain_until_eof(self, s, timeout):
        """Reads until EOF or reset. True when the peer closed within timeout."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        n = 0
        while n < (1 << 20):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                d = await asyncio.wait_for(loop.sock_recv(s, 65536), left)
            except asyncio.TimeoutError:
                return False
            except OSError:
                return True
            if not d:
                return True
            n += len(d)
        return False

    def bad_client_hello(self):
        """A TLS handshake record whose ClientHello is broken: right lengths, wrong body."""
        body = b"\x03\x03" + os.urandom(32) + b"\x20" + os.urandom(32) + b"\x00\x02\x13\x01" \
            + b"\x01\x00" + b"\xff\xff" + os.urandom(self.rnd.randrange(0, 300))
        hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
        return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs

    async def garbage_one(self, kind):
        loop = asyncio.get_running_loop()
        p = self.ports
        self.garbage_kinds[kind] = self.garbage_kinds.get(kind, 0) + 1
        self.c["garbage"] += 1
        s = None
        wait = 15.0  # the relay's and socks' handshake deadlines are 10 s
        try:
            if kind == "relay_frames":
                closed = await self.garbage_frames()
            elif kind == "relay_unauthorized_key":
                closed = await self.garbage_tls(self.cfg["mallory_cert"], self.cfg["mallory_key"])
            else:
                port = p["relay"] if kind.startswith("relay") else p["socks"]
                s = await self.connect(port, src=self.src_addr())
                data = {
                    "relay_random": lambda: os.urandom(self.rnd.randrange(1, 4096)),
                    "relay_zeros": lambda: b"\x00" * 64,
                    "relay_bad_hello": self.bad_client_hello,
                    "relay_huge_record": lambda: b"\x16\x03\x03\xff\xff" + b"\x00" * 70000,
                    "relay_stall": lambda: b"\x16\x03\x01\x02",  # a record header, cut short
                    "relay_http": lambda: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                    "socks_random": lambda: os.urandom(self.rnd.randrange(1, 4096)),
                    "socks_zero_methods": lambda: b"\x05\x00",
                    "socks_no_acceptable_method": lambda: b"\x05\x01\x02",
                    "socks_bad_atyp": lambda: b"\x05\x01\x00\x05\x01\x00\x09" + os.urandom(8),
                    "socks_truncated": lambda: b"\x05\x01\x00\x05\x01\x00\x03\xff" + b"a" * 20,
                    "socks_http_garbage": lambda: b"BREW /pot HTCPCP/1.0\r\n\x00\x01\r\n\r\n",
                    "socks_huge_header": lambda: b"CONNECT a:1 HTTP/1.1\r\nX: " + b"y" * 65536,
                    "socks_stall": lambda: b"\x05\x02",  # a greeting cut short
                    "socks_refused": lambda: b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton(
                        HOST) + struct.pack("!H", p["closed"]),
                    "socks4_garbage": lambda: b"\x04\x01" + os.urandom(6) + b"x" * 300,
                }[kind]()
                try:
                    await asyncio.wait_for(loop.sock_sendall(s, data), 5.0)
                except (OSError, asyncio.TimeoutError):
                    pass  # refused half way: fine
                if kind == "socks_truncated":
                    s.shutdown(socket.SHUT_WR)
                closed = await self.drain_until_eof(s, wait)
            self.c["garbage_closed" if closed else "garbage_open"] += 1
            if not closed:
                self.notes.append("garbage %s: not closed by pinhole within %.0f s" % (kind, wait))
        except (OSError, Failed, asyncio.TimeoutError, ssl.SSLError):
            self.c["garbage_err"] += 1
        finally:
            if s is not None:
                s.close()

    async def garbage_tls(self, cert, key):
        """A TLS 1.3 handshake with a key the relay does not know: it must close."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert, key)
        r, w = await asyncio.wait_for(asyncio.open_connection(
            HOST, self.ports["relay"], ssl=ctx, server_hostname="relay",
            local_addr=(self.src_addr(), 0)), 10.0)
        try:
            w.write(b"\x01\x00\x00\x00\x00\x00\x00\x00")
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline:
                try:
                    d = await asyncio.wait_for(r.read(65536), deadline - time.monotonic())
                except (ssl.SSLError, OSError):
                    return True
                if not d:
                    return True
            return False
        except asyncio.TimeoutError:
            return False
        finally:
            w.transport.abort()

    def hostile_frames(self):
        def frame(ftype, sid=0, payload=b"", flags=0, length=None):
            return struct.pack("!BBIH", ftype, flags, sid,
                               len(payload) if length is None else length) + payload

        reg = bytes([1]) + struct.pack("!IBHBB", 1, 1, 0, 0, 0)
        return [
            frame(0x0b, 0, b"x"),                               # unknown type
            frame(0xff, 7, b"x" * 10),                          # unknown type, odd stream
            frame(3, 1, length=16385),                          # DATA over the max
            frame(1, 0, length=0xffff),                         # CTRL over its bounds
            frame(3, 4, b"who?"),                               # DATA, stream never opened
            frame(2, 2, b"\x00\x01\x00\x00"),                   # OPEN, wrong parity
            frame(1, 0, b"\x02" + struct.pack("!IHH", 1, 1, 80)),  # relay-only CTRL
            frame(8, 3, b"12345678"),                           # PING with a stream id
            frame(3, 1, b"x", flags=0x80),                      # unknown flags
            frame(1, 0, bytes([1]) + struct.pack("!IBHBB", 1, 1, 0, 0, 8) + b"a b\x1b[31m"),
            frame(10, 0, b"\x00bye \x1b[31mred\x07\n"),         # GOAWAY with escapes
            os.urandom(512),                                    # noise
            # a service registered (held after the session dies, taken back by the next
            # session of the key), then an unknown frame
            frame(1, 0, reg) + frame(0x0c, 0, b"x"),
        ]

    async def garbage_frames(self):
        """An authorized key (the garbler's) that breaks the frame rules after its TLS
        handshake: the relay must end that session alone."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.cfg["garbler_cert"], self.cfg["garbler_key"])
        r, w = await asyncio.wait_for(asyncio.open_connection(
            HOST, self.ports["relay"], ssl=ctx, server_hostname="relay",
            local_addr=(self.src_addr(), 0)), 10.0)
        try:
            frames = self.hostile_frames()
            w.write(self.rnd.choice(frames))
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline:
                try:
                    d = await asyncio.wait_for(r.read(65536), deadline - time.monotonic())
                except (ssl.SSLError, OSError):
                    return True
                if not d:
                    return True
            return False
        except asyncio.TimeoutError:
            return False
        finally:
            w.transport.abort()

    async def garbage(self, end):
        """garbage_rate clients a second; stalling kinds at most 6 at once (under the relay's
        64 pending handshakes), at most 200 garbage clients in flight."""
        kinds = self.garbage_kinds_all()
        stalling = {"relay_stall", "socks_stall"}
        inflight = {"all": 0, "stall": 0}
        i = 0
        start = time.monotonic()

        async def run(kind):
            st = kind in stalling
            inflight["all"] += 1
            inflight["stall"] += st
            try:
                await self.garbage_one(kind)
            finally:
                inflight["all"] -= 1
                inflight["stall"] -= st

        while not self.stopping and time.monotonic() < end:
            due = start + i / self.garbage_rate
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            i += 1
            kind = self.rnd.choice(kinds)
            if kind in stalling and inflight["stall"] >= 6:
                kind = "socks_random"
            if inflight["all"] >= 200:
                continue
            self.spawn(run(kind))

    # ---- samples

    def sample(self, phase):
        row = {"t_s": round(self.now(), 1), "phase": phase,
               "idle": sum(len(v) for v in self.idle.values())}
        for k in ("churn_ok", "churn_err"):
            row[k] = sum(self.c["%s_%s" % (k, p)] for p in PATHS)
        row["stalled"] = self.c["stall_started"]
        row["garbage"] = self.c["garbage"]
        gone = []
        for p in self.procs:
            s = proc_sample(p["pid"])
            if s is None:
                gone.append(p["name"])
                s = (0, 0, 0.0)
            row["rss_kib_" + p["name"]] = s[0]
            row["fds_" + p["name"]] = s[1]
            row["pipes_" + p["name"]] = fd_kinds(p["pid"])["pipe"] if s[1] else 0
            row["cpu_s_" + p["name"]] = round(s[2], 2)
            row["log_lines_" + p["name"]] = file_lines(p["log"])
        self.rows.append(row)
        with open(self.cfg["csv"], "w") as f:
            keys = list(self.rows[0].keys())
            f.write(",".join(keys) + "\n")
            for r in self.rows:
                f.write(",".join(str(r.get(k, "")) for k in keys) + "\n")
        log("%6.1f s %-8s idle %5d churn %6d ok %4d err | %s" % (
            row["t_s"], phase, row["idle"], row["churn_ok"], row["churn_err"],
            "  ".join("%s %d KiB %d fds" % (p["name"], row["rss_kib_" + p["name"]],
                                             row["fds_" + p["name"]]) for p in self.procs)))
        if gone:
            raise Failed("pinhole process(es) gone: " + ", ".join(gone))
        return row

    async def sampler(self, end):
        n = 1
        while not self.stopping and time.monotonic() < end:
            due = self.t0 + n * self.interval
            n += 1
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if time.monotonic() >= end:
                break
            phase = "warm-up" if self.now() < self.warmup or self.ramp_done is None \
                else "steady"
            row = self.sample(phase)
            if self.ref is None and phase == "steady":
                self.ref = row

    # ---- the run

    async def run(self):
        raise_nofile()
        self.t0 = time.monotonic()
        for p in self.procs:
            self.baseline[p["name"]] = proc_sample(p["pid"])
            self.base_kinds[p["name"]] = fd_kinds(p["pid"])
        self.sample("baseline")
        end = time.monotonic() + self.seconds
        load = [self.spawn(self.churn(end)), self.spawn(self.garbage(end))]
        for p in PATHS:
            for _ in range(self.stall_per_path):  # all at once: in every sample after 10 s
                load.append(self.spawn(self.stall(p, end)))
        sampler = self.spawn(self.sampler(end))
        try:
            await self.ramp()
            while time.monotonic() < end:
                await asyncio.sleep(min(1.0, end - time.monotonic()))
                if sampler.done():
                    sampler.result()  # raises what stopped it (a pinhole process gone)
                    break
            self.sample("steady" if self.ref is not None else "warm-up")
            if self.ref is None:
                self.ref = self.rows[-1]
            last = self.rows[-1]
        finally:
            self.stopping = True
        # the end: let the clients in flight finish (bounded), check and close the idle ones
        t = time.monotonic()
        while self.tasks and time.monotonic() - t < 30:
            await asyncio.sleep(0.2)
        for x in list(self.tasks):
            x.cancel()
        await asyncio.sleep(0.2)
        alive = await self.check_idle()
        for p in PATHS:
            for s in self.idle[p]:
                s.close()
        closed_at = self.now()
        # the fds must come back to the baseline (bounded wait)
        # (up to 45 s for the exact count: a service the garbler registered is held for its
        # key three heartbeats, 30 s, before the relay closes it)
        t = time.monotonic()
        while time.monotonic() - t < 45:
            if all(self.fds_back(p["name"], fd_kinds(p["pid"]), 0) for p in self.procs):
                break
            await asyncio.sleep(0.5)
        self.end_kinds = {p["name"]: fd_kinds(p["pid"]) for p in self.procs}
        await asyncio.sleep(1.0)
        final = self.sample("closed")
        return self.verdict(last, final, alive, closed_at)

    def fds_back(self, name, k, tol=None):
        """Sockets and other fds back to the baseline (within tol, default fd_tol), pipes
        within what the pipe pools may keep (pipe_spare more than the baseline)."""
        b = self.base_kinds[name]
        tol = self.fd_tol if tol is None else tol
        return k["sock"] + k["other"] <= b["sock"] + b["other"] + tol and \
            k["pipe"] <= b["pipe"] + self.pipe_spare

    def verdict(self, last, final, alive, closed_at):
        ok = True
        ref = self.ref
        lines = []
        lines.append("samples every %.0f s; warm-up ends at %.0f s (sample at %.1f s); last "
                     "load sample at %.1f s; all clients closed at %.1f s" % (
                         self.interval, self.warmup, ref["t_s"], last["t_s"], closed_at))
        held = sum(len(v) for v in self.idle.values())
        lines.append("idle connections: %d held of %d (%s); at the end %s" % (
            held, self.conns, ", ".join("%s %d" % (p, len(self.idle[p])) for p in PATHS),
            ", ".join("%s %d alive %d dead" % (p, alive[p][0], alive[p][1]) for p in PATHS)))
        if held < self.conns:
            ok = False
            lines.append("FAIL: %d idle connections could not be opened" % (self.conns - held))
        dead = sum(alive[p][1] for p in PATHS)
        if dead:
            ok = False
            lines.append("FAIL: %d idle connections died during the run" % dead)
        nok = sum(self.c["churn_ok_" + p] for p in PATHS)
        nerr = sum(self.c["churn_err_" + p] for p in PATHS)
        def pct(p, q):
            lat = sorted(self.latency[p])
            return 1000 * lat[min(len(lat) - 1, int(len(lat) * q))] if lat else 0.0

        lines.append("churn: %d round trips done, %d failed (ok/failed: %s), %.0f a second; "
                     "ms p50/p99 of the last 10,000 or more: %s" % (
                         nok, nerr, ", ".join("%s %d/%d" % (p, self.c["churn_ok_" + p],
                                                            self.c["churn_err_" + p])
                                              for p in PATHS),
                         nok / max(1.0, last["t_s"]),
                         ", ".join("%s %.1f/%.1f" % (p, pct(p, 0.5), pct(p, 0.99))
                                   for p in PATHS)))
        if self.errors:
            lines.append("errors: " + "; ".join(
                "%s x%d" % (k, v) for k, v in sorted(self.errors.items(), key=lambda x: -x[1])[:8]))
        if nerr > max(10, nok // 1000):
            ok = False
            lines.append("FAIL: more than 0.1 %% of the churn failed (%d)" % nerr)
        sb = []
        for p in PATHS:
            if self.stall_bytes[p]:
                sb.append("%s %.1f MiB (max %.1f)" % (
                    p, statistics.median(self.stall_bytes[p]) / 2 ** 20,
                    max(self.stall_bytes[p]) / 2 ** 20))
        lines.append("never-reading clients: %d, %d failed; bytes taken before the stall, "
                     "median: %s" % (self.c["stall_started"], self.c["stall_err"],
                                     ", ".join(sb) or "-"))
        if self.c["stall_unbounded"]:
            ok = False
            lines.append("FAIL: a path took 256 MiB from a client that never reads")
        lines.append("garbage clients: %d, closed by pinhole %d, left open %d, errors %d (%s)" % (
            self.c["garbage"], self.c["garbage_closed"], self.c["garbage_open"],
            self.c["garbage_err"], ", ".join("%s %d" % kv for kv in sorted(
                self.garbage_kinds.items()))))
        if self.c["garbage_open"]:
            ok = False
            lines.append("FAIL: %d garbage clients were not closed by pinhole" %
                         self.c["garbage_open"])
        # Never-reading clients make RSS swing (a stalled relay stream holds up to its window,
        # 16 MiB, on each side until it is reset): compare the peaks of the first and the last
        # window (SOAK_RSS_WINDOW, default two stall cycles) after the warm-up, not two points.
        steady = [r for r in self.rows if r["phase"] == "steady" and r["t_s"] >= ref["t_s"]]
        span = steady[-1]["t_s"] - steady[0]["t_s"] if steady else 0.0
        win = min(self.rss_window, span / 2) if span > 0 else 0.0
        first = [r for r in steady if r["t_s"] <= steady[0]["t_s"] + win] or [ref]
        lastw = [r for r in steady if r["t_s"] >= steady[-1]["t_s"] - win] or [last]
        lines.append("RSS (KiB) after the warm-up: the peak of the first and of the last %.0f s "
                     "(%d and %d samples), the range, and the least-squares slope; fds at the "
                     "start, at the end of the warm-up, at the last load sample and once every "
                     "client closed; CPU seconds and log lines over the run:" % (
                         win, len(first), len(lastw)))
        lines.append("%-8s %9s %9s %8s %17s %8s %6s %6s %6s %6s %7s %7s" % (
            "process", "RSS first", "RSS last", "growth", "range", "KiB/min", "fds 0", "warm",
            "last", "end", "CPU s", "log +"))
        for p in self.procs:
            n = p["name"]
            r0 = max(r["rss_kib_" + n] for r in first)
            r1 = max(r["rss_kib_" + n] for r in lastw)
            ys_all = [r["rss_kib_" + n] for r in steady] or [r1]
            allowed = max(r0 * self.rss_tol, self.rss_slack)
            slope = 0.0
            if len(steady) >= 3:
                xs = [r["t_s"] for r in steady]
                ys = [r["rss_kib_" + n] for r in steady]
                mx, my = statistics.fmean(xs), statistics.fmean(ys)
                den = sum((x - mx) ** 2 for x in xs)
                slope = 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0
            base_fds = self.baseline[n][1]
            lines.append("%-8s %9d %9d %+7.1f%% %17s %8.0f %6d %6d %6d %6d %7.1f %7d" % (
                n, r0, r1, 100.0 * (r1 - r0) / max(1, r0),
                "%d-%d" % (min(ys_all), max(ys_all)), slope, base_fds,
                ref["fds_" + n], last["fds_" + n], final["fds_" + n],
                final["cpu_s_" + n], final["log_lines_" + n] - self.rows[0]["log_lines_" + n]))
            if r1 - r0 > allowed:
                ok = False
                lines.append("FAIL: %s's RSS peak grew %d KiB after the warm-up (allowed %d KiB: "
                             "%.0f %% or %d KiB)" % (n, r1 - r0, allowed, 100 * self.rss_tol,
                                                     self.rss_slack))
            b, e = self.base_kinds[n], self.end_kinds[n]
            if not self.fds_back(n, e):
                ok = False
                lines.append("FAIL: %s holds %d sockets, %d pipes and %d other fds after every "
                             "client closed; %d, %d and %d at the start (leak?)" % (
                                 n, e["sock"], e["pipe"], e["other"], b["sock"], b["pipe"],
                                 b["other"]))
            elif e != b:
                lines.append("%s: fds at the end: %d sockets, %d pipes (spare, kept for reuse), "
                             "%d other; at the start %d, %d, %d" % (
                                 n, e["sock"], e["pipe"], e["other"], b["sock"], b["pipe"],
                                 b["other"]))
        ru = resource.getrusage(resource.RUSAGE_SELF)
        lines.append("the load generator itself used %.1f s of CPU (user %.1f, system %.1f)" % (
            ru.ru_utime + ru.ru_stime, ru.ru_utime, ru.ru_stime))
        for n in self.notes[:20]:
            lines.append("note: " + n)
        if len(self.notes) > 20:
            lines.append("note: ... %d more" % (len(self.notes) - 20))
        lines.append("verdict: %s" % ("PASS: flat after the warm-up, fds back to the baseline"
                                     if ok else "FAIL"))
        for line in lines:
            log(line)
        with open(self.cfg["summary"], "w") as f:
            f.write("\n".join(lines) + "\n")
        return 0 if ok else 1


def load_main(path):
    with open(path) as f:
        cfg = json.load(f)
    lim = raise_nofile()
    if lim < int(cfg["conns"]) + 1024:
        log("the fd limit %d is too low for %s connections" % (lim, cfg["conns"]))
        return 2
    ld = Load(cfg)

    async def main():
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(ld.run())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        return await task

    try:
        return asyncio.run(main())
    except Failed as e:
        log("FAIL: %s" % e)
        return 1
    except asyncio.CancelledError:
        log("interrupted")
        return 130


def ports_main(n):
    """Prints n distinct free TCP ports on 127.0.0.1, then LO-HI: 8 consecutive free ones.
    All below 32768, so that no ephemeral port of a connection can take them meanwhile."""
    rnd = random.Random()

    def free(p):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((HOST, p))
            return True
        except OSError:
            return False
        finally:
            s.close()

    got = []
    for _ in range(10000):
        if len(got) == n:
            break
        p = rnd.randrange(20000, 32000)
        if p not in got and free(p):
            got.append(p)
    for _ in range(1000):
        lo = rnd.randrange(20000, 32000 - 8)
        if all(p not in got and free(p) for p in range(lo, lo + 8)):
            print(" ".join(map(str, got)), "%d-%d" % (lo, lo + 7))
            return 0
    return 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "ports":
        sys.exit(ports_main(int(sys.argv[2])))
    elif len(sys.argv) == 4 and sys.argv[1] == "echo":
        echo_main(int(sys.argv[2]), float(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "load" and sys.argv[2] == "--config":
        sys.exit(load_main(sys.argv[3]))
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)
