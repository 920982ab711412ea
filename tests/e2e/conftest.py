"""
End-to-end fixtures: the real pinhole binary between real peers, all on loopback.

    client (python, socat, curl) --> pinhole LISTEN --> TARGET (python server, http.server)

Everything here is bounded: every wait has a deadline, every socket a timeout, and each
test runs under an alarm (TEST_TIMEOUT_S) since pytest-timeout is not installed. Readiness
is polled (`ss -ltnH` and the startup log line), never slept for.

Environment:
    PINHOLE_BIN   the binary to test (default: build/pinhole of this tree)
"""

import errno
import hashlib
import itertools
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("PINHOLE_BIN", os.path.join(ROOT, "build", "pinhole")))

TEST_TIMEOUT_S = 90  # a whole test, the last resort; each wait has its own tighter bound
SOCK_TIMEOUT_S = 10  # any single blocking socket call
READY_TIMEOUT_S = 10  # pinhole start-up (ASan is slow to start)
STOP_TIMEOUT_S = 15  # SIGTERM to exit; the default --drain-timeout is 10 s

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "WARNING: ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")

LOG_RE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (error|warn|info|debug|trace)(?: w(\d+))?: (.*)$")
STATS_RE = re.compile(
    r"^(stats|stopped): (?P<accepted>\d+) connections \((?P<active>\d+) active\), "
    r"(?P<up>.+?) up, (?P<down>.+?) down, (?P<spliced>\d+) bytes spliced, "
    r"(?P<copied>\d+) copied, (?P<denied>\d+) denied, (?P<over_limit>\d+) over limit, "
    r"(?P<target_failures>\d+) target failures, (?P<resets>\d+) resets, "
    r"(?P<errors>\d+) errors$")


# ---------------------------------------------------------------------------------------------
# session-wide setup


def pytest_collection_modifyitems(config, items):
    if os.access(BIN, os.X_OK):
        return
    skip = pytest.mark.skip(
        reason=f"pinhole binary not found at {BIN}: build it (ninja -C build) or set PINHOLE_BIN")
    for item in items:
        item.add_marker(skip)


def pytest_report_header(config):
    return f"pinhole binary: {BIN}"


def _raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


_raise_fd_limit()


class TestTimeout(Exception):
    pass


@pytest.fixture(autouse=True)
def _alarm():
    """The whole test is bounded: SIGALRM interrupts whatever blocks the main thread."""

    def on_alarm(signum, frame):
        raise TestTimeout(f"test exceeded {TEST_TIMEOUT_S} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------------------------
# small helpers


def wait_until(pred, timeout, what, interval=0.01):
    """Polls pred() until it returns something true; fails the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.1)


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def listeners(port):
    """Lines of `ss -ltnH` for sockets listening on port (any address, any family)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=5, check=True).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def wait_listening(port, timeout=READY_TIMEOUT_S, proc=None):
    def ready():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process {proc.args} exited with {proc.returncode} before listening")
        return listeners(port)

    wait_until(ready, timeout, f"a listener on port {port}")


def wait_not_listening(port, timeout=5):
    wait_until(lambda: not listeners(port), timeout, f"port {port} to stop listening")


def _port_free(port):
    for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


# Ports below the ephemeral range (32768+), so no outgoing connection ever takes one of
# ours between the check and the bind; the start depends on the pid so that two runs at
# once rarely meet.
_PORT_LO, _PORT_HI = 20000, 32000
_port_iter = itertools.cycle(range(_PORT_LO, _PORT_HI))
for _ in range((os.getpid() * 211) % (_PORT_HI - _PORT_LO)):
    next(_port_iter)
_port_lock = threading.Lock()


def alloc_port():
    """A port free on 127.0.0.1 and ::1, below the ephemeral range; never handed out twice."""
    with _port_lock:
        for _ in range(2000):
            p = next(_port_iter)
            if _port_free(p):
                return p
    pytest.fail("no free port found in 2000 tries")


@pytest.fixture
def free_port():
    """A callable: free_port() -> a port nothing listens on."""
    return alloc_port


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def connect(host, port, source=None, timeout=SOCK_TIMEOUT_S):
    """A connected blocking socket with a timeout; source binds the client's address."""
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if source is not None:
            s.bind((source, 0))
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def set_rst(s):
    """Makes close() send a reset instead of a FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        d = s.recv(min(n - len(buf), 1 << 20))
        if not d:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += d
    return bytes(buf)


def recv_until_eof(s, limit=1 << 30):
    """All bytes until the peer's FIN (raises on reset or timeout)."""
    buf = bytearray()
    while True:
        d = s.recv(1 << 20)
        if not d:
            return bytes(buf)
        buf += d
        assert len(buf) <= limit, "peer sent more than expected"


def outcome(s, timeout=5):
    """How the connection ends, reading whatever comes first: 'reset', 'eof', 'timeout'."""
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            d = s.recv(65536)
            if not d:
                return "eof"
    except ConnectionResetError:
        return "reset"
    except socket.timeout:
        return "timeout"
    return "timeout"


def connect_outcome(port, timeout=5, host="127.0.0.1"):
    """How a client ends when pinhole does not serve it ('reset', 'eof', 'timeout'),
    and how long that took; a reset may already come back from connect() on loopback."""
    t0 = time.monotonic()
    try:
        c = connect(host, port)
    except ConnectionResetError:
        return "reset", time.monotonic() - t0
    try:  # sending nothing: unread bytes at close would make the kernel reset by itself
        end = outcome(c, timeout=timeout)
    finally:
        c.close()
    return end, time.monotonic() - t0


def echo_once(s, msg):
    s.sendall(msg)
    got = recv_exact(s, len(msg))
    assert got == msg
    return got


def send_in_thread(s, data, shut=True):
    """Sends data (then a FIN when shut) from a thread; returns the thread, whose .error
    holds an exception if sending failed."""

    def run():
        try:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except BaseException as e:  # reported by the test through .error
            t.error = e

    t = threading.Thread(target=run, daemon=True)
    t.error = None
    t.start()
    return t


# ---------------------------------------------------------------------------------------------
# servers in threads


class TcpServer:
    """A TCP server on a loopback address; handler(conn, peer) runs in a thread per
    connection. Records the peers, the live and highest live count, and handler errors."""

    def __init__(self, handler, host="127.0.0.1", port=None, backlog=4096, name=None):
        self.host = host
        self.port = port if port is not None else alloc_port()
        self.name = name or f"{host}:{self.port}"
        self.handler = handler
        self.sock = socket.socket(family_of(host), socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family_of(host) == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.sock.bind((host, self.port))
        self.sock.listen(backlog)
        self.sock.settimeout(0.1)
        self.lock = threading.Lock()
        self.peers = []
        self.errors = []
        self.live = 0
        self.max_live = 0
        self.conns = []
        self.threads = []
        self.stopping = threading.Event()
        self.forced = False
        self.accept_thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.accept_thread.start()

    @property
    def accepted(self):
        with self.lock:
            return len(self.peers)

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self.stopping.is_set():
                    return
                raise
            conn.settimeout(SOCK_TIMEOUT_S)
            with self.lock:
                self.peers.append(peer)
                self.conns.append(conn)
                self.live += 1
                self.max_live = max(self.max_live, self.live)
            t = threading.Thread(target=self._run, args=(conn, peer), daemon=True)
            self.threads.append(t)
            t.start()

    def _run(self, conn, peer):
        try:
            self.handler(conn, peer)
        except BaseException as e:
            with self.lock:
                if not self.forced:
                    self.errors.append(f"{self.name} handler for {peer}: {e!r}")
        finally:
            with self.lock:
                self.live -= 1
            conn.close()

    def close(self):
        self.stopping.set()
        try:  # wakes the blocked accept() at once (Linux), rather than at its next timeout
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.accept_thread.join(timeout=5)
        self.sock.close()
        # handlers normally end on their own once pinhole (stopped first) has closed its side
        deadline = time.monotonic() + 1
        for t in self.threads:
            t.join(timeout=max(0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self.threads):
            with self.lock:
                self.forced = True  # what the handlers meet from now on is our doing
                conns = list(self.conns)
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            for t in self.threads:
                t.join(timeout=5)


def echo_handler(conn, peer):
    """Echoes until the peer's FIN, then sends its own FIN. A reset just ends it."""
    try:
        while True:
            d = conn.recv(1 << 16)
            if not d:
                break
            conn.sendall(d)
        conn.shutdown(socket.SHUT_WR)
    except ConnectionResetError:
        pass


def tagged_echo_handler(tag):
    """Like echo_handler, but every reply is prefixed with tag (tells servers apart)."""

    def handler(conn, peer):
        try:
            while True:
                d = conn.recv(1 << 16)
                if not d:
                    break
                conn.sendall(tag + d)
            conn.shutdown(socket.SHUT_WR)
        except ConnectionResetError:
            pass

    return handler


@pytest.fixture
def tcp_server():
    """A callable: tcp_server(handler, host=..., port=...) -> TcpServer, closed at teardown,
    which also fails the test if a handler raised."""
    made = []

    def make(handler, **kw):
        s = TcpServer(handler, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
    errors = [e for s in made for e in s.errors]
    assert not errors, "server handler errors:\n" + "\n".join(errors)


@pytest.fixture
def echo_server(tcp_server):
    """A callable: echo_server(host="127.0.0.1", port=None) -> TcpServer."""

    def make(host="127.0.0.1", port=None, handler=echo_handler):
        return tcp_server(handler, host=host, port=port)

    return make


# ---------------------------------------------------------------------------------------------
# the binary


def parse_log(text):
    """[(level, worker or None, message)] for every well-formed log line."""
    out = []
    for ln in text.splitlines():
        m = LOG_RE.match(ln)
        if m:
            out.append((m.group(1), m.group(2), m.group(3)))
    return out


def parse_stats(msg):
    m = STATS_RE.match(msg)
    if m is None:
        return None
    d = {k: (int(v) if v.isdigit() else v) for k, v in m.groupdict().items()}
    return d


COMMANDS = ("forward", "help", "run", "socks", "server", "expose", "local")
# what the start line of a command says once its listeners are open (readiness)
START_MARKS = {"forward": "forwarding tcp", "socks": "socks proxy on ", "server": "relay on ",
               "expose": ": public at "}
SOCKS_DEFAULT_PORT = 1080  # `pinhole socks` without LISTEN: 127.0.0.1:1080
SOCKS_FLAGS = ("--open", "--quiet", "--verbose", "--help", "-h")  # socks options without a value


class Pinhole:
    """One pinhole process: stderr goes to a file, .log reads it."""

    def __init__(self, args, tmpdir, prefix=(), env=None, idx=0):
        self.args = [str(a) for a in args]
        self.logpath = os.path.join(tmpdir, f"pinhole-{os.getpid()}-{idx}.log")
        self.outpath = os.path.join(tmpdir, f"pinhole-{os.getpid()}-{idx}.out")
        self.expect_rc = 0
        self.quiet = any(re.fullmatch(r"-q+|--quiet", a) for a in self.args)
        self.command = next((a for a in self.args if a in COMMANDS), None)
        self.listen_port = self._listen_port()
        self.workers = min(os.cpu_count() or 1, 64)
        for i, a in enumerate(self.args[:-1]):
            if a == "--workers":
                self.workers = int(self.args[i + 1])
        self.rc = None
        with open(self.logpath, "wb") as err, open(self.outpath, "wb") as out:
            self.proc = subprocess.Popen([*prefix, BIN, *self.args], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, env=env)

    def _listen_port(self):
        words = iter(self.args)
        for w in words:
            if w == "forward":
                for v in words:
                    if not v.startswith("-"):
                        return int(v.rsplit(":", 1)[1])
            if w == "socks":  # LISTEN is optional there, and may come after options
                for v in words:
                    if not v.startswith("-"):
                        return int(v.rsplit(":", 1)[1])
                    if v not in SOCKS_FLAGS and not re.fullmatch(r"-v+|-q+|--[a-z-]+=.*", v):
                        next(words, None)  # the option's value
                return SOCKS_DEFAULT_PORT
        return None

    @property
    def pid(self):
        return self.proc.pid

    @property
    def log(self):
        with open(self.logpath, "r", errors="replace") as f:
            return f.read()

    @property
    def stdout(self):
        with open(self.outpath, "r", errors="replace") as f:
            return f.read()

    def messages(self):
        return [m for _, _, m in parse_log(self.log)]

    def wait_log(self, pattern, timeout=5, count=1):
        """Waits until pattern (a regex searched in each message) matched count lines."""
        rx = re.compile(pattern)

        def seen():
            self._check_alive_or_expected()
            hits = [m for m in self.messages() if rx.search(m)]
            return hits if len(hits) >= count else None

        return wait_until(seen, timeout, f"log line /{pattern}/ x{count}; log:\n{self.log}")

    def _check_alive_or_expected(self):
        if self.proc.poll() is not None and self.rc is None:
            self.rc = self.proc.returncode
            pytest.fail(f"pinhole exited early with {self.rc}; log:\n{self.log}")

    def wait_ready(self, timeout=READY_TIMEOUT_S):
        """Listening and logged its start line: every worker's listener is open then."""

        def ready():
            self._check_alive_or_expected()
            if not self.quiet:
                return START_MARKS.get(self.command, "forwarding tcp") in self.log \
                    and listeners(self.listen_port)
            # -q hides the start line: count the listeners instead, one per worker (the
            # single probe socket pinhole binds and closes first cannot pass for two)
            assert self.workers >= 2, "with -q, run at least 2 workers: readiness counts them"
            return len(listeners(self.listen_port)) >= self.workers

        wait_until(ready, timeout, f"pinhole to listen on {self.listen_port}; log:\n{self.log}")
        return self

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stats(self, timeout=5):
        """Asks for a stats line (SIGUSR1) and returns it parsed."""
        before = sum(1 for m in self.messages() if m.startswith("stats:"))
        self.send_signal(signal.SIGUSR1)
        hits = self.wait_log(r"^stats: ", timeout=timeout, count=before + 1)
        return parse_stats(hits[-1])

    def wait_exit(self, timeout=STOP_TIMEOUT_S):
        try:
            self.rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            self.rc = "killed"
            pytest.fail(f"pinhole did not exit within {timeout} s; log:\n{self.log}")
        return self.rc

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT_S, check=True):
        """Signals, waits (bounded) and checks the exit status and the sanitizers."""
        if self.proc.poll() is None:
            self.send_signal(sig)
        rc = self.wait_exit(timeout)
        if check:
            self.check()
        return rc

    def check(self):
        log = self.log
        for mark in SANITIZER_MARKS:
            assert mark not in log, f"sanitizer report in pinhole's log:\n{log}"
        assert self.rc == self.expect_rc, \
            f"pinhole exited with {self.rc}, expected {self.expect_rc}; log:\n{log}"

    def final_stats(self):
        """The stopped: line, parsed; it must be the last log line."""
        msgs = self.messages()
        assert msgs, f"empty log:\n{self.log}"
        assert msgs[-1].startswith("stopped:"), f"last line is not stopped:\n{self.log}"
        st = parse_stats(msgs[-1])
        assert st is not None, f"unparsable stopped line: {msgs[-1]}"
        return st


@pytest.fixture
def pinhole(tmp_path, tcp_server, spawn):
    """A callable: pinhole(*args, ready=True, prefix=(), env=None) -> Pinhole.

    "forward" is put in front unless args start with an option or a command (COMMANDS). The
    process is stopped with SIGTERM at teardown (if still running), and its exit status must
    then be .expect_rc (0 unless the test changes it), with no sanitizer report in its log.
    It depends on tcp_server and spawn so that pinhole stops before the servers behind it."""
    made = []

    def start(*args, ready=True, prefix=(), env=None):
        args = [str(a) for a in args]
        if args and not args[0].startswith("-") and args[0] not in COMMANDS:
            args = ["forward"] + args
        p = Pinhole(args, str(tmp_path), prefix=prefix, env=env, idx=len(made))
        made.append(p)
        if ready:
            p.wait_ready()
        return p

    yield start
    failures = []
    for p in reversed(made):  # the last started first: a client before its relay
        try:
            if p.rc is None:
                p.stop()
            else:
                p.check()
        except BaseException as e:  # pytest.fail raises a BaseException subclass
            failures.append(f"{p.args}: {e}")
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(timeout=5)
    assert not failures, "\n".join(failures)


def run_pinhole(*args, timeout=10, prefix=(), env=None):
    """Runs pinhole to completion (for usage errors, --help...); returns CompletedProcess."""
    try:
        r = subprocess.run([*prefix, BIN, *[str(a) for a in args]], capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"pinhole {args} did not finish within {timeout} s: {e.stderr!r}")
    for mark in SANITIZER_MARKS:
        assert mark not in r.stderr, f"sanitizer report from pinhole {args}:\n{r.stderr}"
    return r


# ---------------------------------------------------------------------------------------------
# real peers


def peer_env():
    """The environment for curl & co: no proxy may divert a loopback request."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = env["no_proxy"] = "*"
    return env


def run_peer(cmd, timeout=20, input=None, check=True):
    """Runs a real peer (curl, socat, iperf3) with a deadline; returns CompletedProcess with
    bytes output. check: a non-zero exit fails the test, showing its stderr."""
    tool = shutil.which(cmd[0])
    if tool is None:
        pytest.skip(f"{cmd[0]} is not installed")
    try:
        r = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout,
                           env=peer_env(), stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{cmd} did not finish within {timeout} s; stderr: {e.stderr!r}")
    if check and r.returncode != 0:
        pytest.fail(f"{cmd} exited with {r.returncode}; stderr: {r.stderr.decode(errors='replace')}")
    return r


@pytest.fixture
def spawn():
    """A callable: spawn(cmd, port=None) -> Popen of a background peer (a server), waited
    for until it listens on port; killed at teardown."""
    procs = []

    def start(cmd, port=None, cwd=None):
        if shutil.which(cmd[0]) is None:
            pytest.skip(f"{cmd[0]} is not installed")
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, cwd=cwd, env=peer_env())
        procs.append(p)
        if port is not None:
            wait_listening(port, proc=p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        if p.stdout is not None:
            p.stdout.close()


@pytest.fixture(scope="session")
def ipv6():
    """Skips when ::1 is unusable (IPv6 disabled)."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        s.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------
# many connections at once


def many_echo(host, port, n, timeout=20):
    """Opens n connections to host:port at once, sends a unique message on each and reads
    its echo, all before closing any. Returns ({index: reply}, {index: error})."""
    sel = selectors.DefaultSelector()
    tag = os.urandom(4).hex()
    state = {}
    replies, errors = {}, {}
    try:
        for i in range(n):
            s = socket.socket(family_of(host), socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex((host, port))
            if rc not in (0, errno.EINPROGRESS):
                errors[i] = os.strerror(rc)
                s.close()
                continue
            msg = f"hello {tag} #{i:05d} {'.' * (i % 37)}\n".encode()
            state[s] = {"i": i, "out": memoryview(msg), "want": msg, "in": bytearray()}
            sel.register(s, selectors.EVENT_WRITE, state[s])
        deadline = time.monotonic() + timeout
        pending = len(state)
        while pending and time.monotonic() < deadline:
            for key, ev in sel.select(timeout=0.2):
                s, st = key.fileobj, key.data
                try:
                    if ev & selectors.EVENT_WRITE:
                        k = s.send(st["out"])
                        st["out"] = st["out"][k:]
                        if not st["out"]:
                            sel.modify(s, selectors.EVENT_READ, st)
                    elif ev & selectors.EVENT_READ:
                        d = s.recv(4096)
                        if not d:
                            raise ConnectionError("EOF before the whole echo")
                        st["in"] += d
                        if len(st["in"]) >= len(st["want"]):
                            replies[st["i"]] = bytes(st["in"])
                            sel.unregister(s)
                            pending -= 1
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    errors[st["i"]] = repr(e)
                    sel.unregister(s)
                    pending -= 1
        for s, st in state.items():
            if st["i"] not in replies and st["i"] not in errors:
                errors[st["i"]] = "no echo before the deadline"
        for s, st in state.items():
            if st["i"] in replies:
                assert replies[st["i"]] == st["want"], f"conn {st['i']} got a wrong echo"
    finally:
        for s in state:
            s.close()
        sel.close()
    return replies, errors


# ---------------------------------------------------------------------------------------------
# UDP peers

ECHO_LIFETIME_S = 60  # an echo server thread ends by itself after this, whatever happens


def udp_port_free(port):
    for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
        except OSError as e:
            if fam == socket.AF_INET6 and e.errno == errno.EADDRNOTAVAIL:  # no ::1 here
                continue
            return False
        finally:
            s.close()
    return True


def free_udp_port():
    """A port free for TCP and UDP on 127.0.0.1 and ::1 (alloc_port checks TCP only)."""
    for _ in range(100):
        p = alloc_port()
        if udp_port_free(p):
            return p
    pytest.fail("no port free for both TCP and UDP in 100 tries")


class UdpEchoServer:
    """A UDP echo server in a thread on a loopback address: replies tag + datagram to its
    sender (reply=False: a sink, it answers nothing). Records every sender and datagram
    size; ends at close() or after its lifetime."""

    def __init__(self, host="127.0.0.1", port=None, tag=b"", reply=True,
                 lifetime=ECHO_LIFETIME_S):
        self.host = host
        self.port = port if port is not None else free_udp_port()
        self.tag = tag
        self.reply = reply
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        if fam == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # a burst queues rather than drops (root may exceed rmem_max, others get up to it)
        for opt in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
                break
            except OSError:
                pass
        self.sock.bind((host, self.port))
        self.sock.settimeout(0.05)
        self.lock = threading.Lock()
        self.sources = []  # (host, port) per datagram, in arrival order
        self.sizes = []
        self.errors = []
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + lifetime
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            try:
                data, peer = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError as e:
                if not self.stopping.is_set():
                    self.errors.append(f"udp echo {self.port}: recvfrom: {e!r}")
                return
            with self.lock:
                self.sources.append(peer[:2])
                self.sizes.append(len(data))
            if not self.reply:
                continue
            try:
                self.sock.sendto(self.tag + data, peer)
            except OSError as e:
                self.errors.append(f"udp echo {self.port}: sendto {peer}: {e!r}")

    @property
    def count(self):
        with self.lock:
            return len(self.sources)

    def ports(self):
        """The distinct source ports it saw, in order of first appearance."""
        with self.lock:
            return list(dict.fromkeys(p for _, p in self.sources))

    def close(self):
        self.stopping.set()
        self.thread.join(timeout=5)
        self.sock.close()
        assert not self.thread.is_alive(), f"udp echo {self.port} did not stop"


@pytest.fixture
def udp_echo():
    """A callable: udp_echo(host=, port=, tag=, reply=) -> UdpEchoServer, closed at
    teardown, which fails the test if the server met an error."""
    made = []

    def make(**kw):
        s = UdpEchoServer(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
    errors = [e for s in made for e in s.errors]
    assert not errors, "udp echo errors:\n" + "\n".join(errors)


# ---------------------------------------------------------------------------------------------
# SOCKS and HTTP proxy clients, written to RFC 1928 (SOCKS5), RFC 1929 (its username and
# password), the SOCKS4 and SOCKS4a notes, and RFC 9110/9112 (CONNECT, absolute-form)

CMD_CONNECT, CMD_BIND, CMD_UDP = 1, 2, 3


def start_socks(pinhole, *args, host="127.0.0.1"):
    """`pinhole socks HOST:PORT *args` on a free port, ready; returns (Pinhole, port)."""
    ph = pinhole("socks", f"{host}:{alloc_port()}", *args)
    return ph, ph.listen_port


def socks5_addr(host):
    """ATYP and DST.ADDR for host: an IPv4 or IPv6 literal, else a domain name."""
    for fam, atyp in ((socket.AF_INET, 1), (socket.AF_INET6, 4)):
        try:
            return bytes([atyp]) + socket.inet_pton(fam, host)
        except OSError:
            pass
    name = host.encode()
    return bytes([3, len(name)]) + name


def socks5_parse_addr(buf):
    """(host, port, bytes used) of the ATYP ADDR PORT at the start of buf; raises
    AssertionError when buf is too short or ATYP unknown."""
    assert buf, "no ATYP"
    atyp = buf[0]
    if atyp == 1:
        n = 4
        host = socket.inet_ntop(socket.AF_INET, buf[1:5]) if len(buf) >= 5 else None
        start = 1
    elif atyp == 4:
        n = 16
        host = socket.inet_ntop(socket.AF_INET6, buf[1:17]) if len(buf) >= 17 else None
        start = 1
    elif atyp == 3:
        assert len(buf) >= 2, "no name length"
        n = buf[1]
        start = 2
        host = buf[2:2 + n].decode(errors="replace")
    else:
        raise AssertionError(f"ATYP {atyp} in {buf[:8]!r}")
    used = start + n + 2
    assert len(buf) >= used, f"address cut short: {buf!r}"
    return host, struct.unpack("!H", buf[start + n:used])[0], used


def socks5_read_addr(s):
    """Reads ATYP ADDR PORT from s: (host, port)."""
    atyp = recv_exact(s, 1)
    if atyp == b"\x03":
        n = recv_exact(s, 1)
        rest = recv_exact(s, n[0] + 2)
        return socks5_parse_addr(atyp + n + rest)[:2]
    assert atyp in (b"\x01", b"\x04"), f"reply with ATYP {atyp[0]}"
    rest = recv_exact(s, (4 if atyp == b"\x01" else 16) + 2)
    return socks5_parse_addr(atyp + rest)[:2]


def socks5_reply(s):
    """Reads one SOCKS5 reply: (REP, (BND.ADDR, BND.PORT))."""
    head = recv_exact(s, 3)
    assert head[0] == 5 and head[2] == 0, f"not a SOCKS5 reply: {head!r}"
    return head[1], socks5_read_addr(s)


def socks5_auth_msg(user, password):
    u, p = user.encode(), password.encode()
    return bytes([1, len(u)]) + u + bytes([len(p)]) + p


def socks5_greet(s, user=None, password=None):
    """The method negotiation (and RFC 1929 when user is given); fails the test unless the
    proxy picks the method offered and, with a user, accepts the credentials."""
    method = 0 if user is None else 2
    s.sendall(bytes([5, 1, method]))
    got = recv_exact(s, 2)
    assert got == bytes([5, method]), f"method reply {got!r}, offered method {method}"
    if user is not None:
        s.sendall(socks5_auth_msg(user, password))
        got = recv_exact(s, 2)
        assert got == b"\x01\x00", f"RFC 1929 reply {got!r} for {user}:{password}"


def socks5_request(s, cmd, host, port):
    """Sends one request; returns the reply as socks5_reply does."""
    s.sendall(bytes([5, cmd, 0]) + socks5_addr(host) + struct.pack("!H", port))
    return socks5_reply(s)


def socks5_open(proxy_port, cmd, host, port, user=None, password=None,
                proxy_host="127.0.0.1", source=None):
    """A socket to the proxy (from source, when given) that made its greeting and sent one
    request: (socket, REP, (BND.ADDR, BND.PORT)). The caller closes the socket."""
    s = connect(proxy_host, proxy_port, source=source)
    try:
        socks5_greet(s, user, password)
        rep, bnd = socks5_request(s, cmd, host, port)
    except BaseException:
        s.close()
        raise
    return s, rep, bnd


def socks5_connect(proxy_port, host, port, **kw):
    """A socket through the proxy to host:port (CONNECT answered 0), and BND."""
    s, rep, bnd = socks5_open(proxy_port, CMD_CONNECT, host, port, **kw)
    if rep != 0:
        s.close()
        raise AssertionError(f"CONNECT {host}:{port}: reply {rep}, expected 0")
    return s, bnd


def socks4_request(s, host, port, userid=b""):
    """A SOCKS4 CONNECT (SOCKS4a when host is a name); returns CD of the reply (90 granted,
    91 rejected) after checking VN is 0."""
    try:
        ip, name = socket.inet_pton(socket.AF_INET, host), b""
    except OSError:
        ip, name = bytes([0, 0, 0, 1]), host.encode() + b"\0"
    s.sendall(bytes([4, 1]) + struct.pack("!H", port) + ip + userid + b"\0" + name)
    reply = recv_exact(s, 8)
    assert reply[0] == 0, f"SOCKS4 reply with VN {reply[0]}: {reply!r}"
    return reply[1]


def read_http_head(s, limit=1 << 16):
    """Reads a response head: (status, {lower-case name: value}, bytes after the head)."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            raise AssertionError(f"EOF inside the response head: {bytes(buf)!r}")
        buf += d
        assert len(buf) <= limit, "response head too long"
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.fullmatch(r"HTTP/1\.[01] (\d{3})(?: .*)?", lines[0])
    assert m, f"bad status line {lines[0]!r}"
    headers = {}
    for ln in lines[1:]:
        k, sep, v = ln.partition(":")
        assert sep, f"bad header line {ln!r}"
        headers[k.strip().lower()] = v.strip()
    return int(m.group(1)), headers, rest


def read_all(s, timeout=5, limit=1 << 20):
    """What s receives until the peer ends it: (bytes, 'eof' | 'reset' | 'timeout')."""
    s.settimeout(timeout)
    buf = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            d = s.recv(65536)
            if not d:
                return bytes(buf), "eof"
            buf += d
            assert len(buf) <= limit, "peer sent more than expected"
    except ConnectionResetError:
        return bytes(buf), "reset"
    except socket.timeout:
        pass
    return bytes(buf), "timeout"


@pytest.fixture
def blackhole():
    """A loopback port whose SYNs are dropped, so that a connect to it times out: a listener
    that never accepts, with its accept queue (backlog 0: one) full."""
    lsn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(0)
        port = lsn.getsockname()[1]
        filler.settimeout(SOCK_TIMEOUT_S)
        filler.connect(("127.0.0.1", port))
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", port))
            pytest.skip("a full accept queue does not drop SYNs here")
        except socket.timeout:
            pass
        yield port
    finally:
        for s in (probe, filler, lsn):
            s.close()


# ---------------------------------------------------------------------------------------------
# web servers to reach through a proxy: plain HTTP and HTTPS (a self-signed certificate)

WEB_SERVER_PY = r"""
import http.server, socket, ssl, sys, threading
port, root, cert, key, ready = int(sys.argv[1]), *sys.argv[2:6]


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=root, **kw)

    def do_GET(self):  # /peer answers the address the request came from
        if self.path != "/peer":
            return super().do_GET()
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


class V4(http.server.ThreadingHTTPServer):
    daemon_threads = True


class V6(V4):
    address_family = socket.AF_INET6


servers = [V4(("127.0.0.1", port), Handler)]
try:
    servers.append(V6(("::1", port), Handler))
except OSError:
    pass
if cert != "-":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    for s in servers:
        s.socket = ctx.wrap_socket(s.socket, server_side=True, do_handshake_on_connect=False)
for s in servers:
    threading.Thread(target=s.serve_forever, daemon=True).start()
open(ready, "w").close()  # every socket listens (and is wrapped): the test may begin
threading.Event().wait()
"""


class Web:
    """A plain HTTP and an HTTPS server (127.0.0.1 and ::1, same port each) serving one
    directory: index.html, big.bin, and /peer (the client's address)."""

    def __init__(self, http_port, https_port, cacert, index, big):
        self.http_port, self.https_port, self.cacert = http_port, https_port, cacert
        self.index, self.big = index, big

    def url(self, scheme, path, host="127.0.0.1"):
        port = self.http_port if scheme == "http" else self.https_port
        return f"{scheme}://{host}:{port}{path}"


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory):
    """(cert, key) paths: a self-signed certificate for localhost, 127.0.0.1 and ::1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                        "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
                        "-keyout", str(key), "-out", str(cert)],
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"openssl req failed: {r.stderr.decode(errors='replace')}"
    return str(cert), str(key)


@pytest.fixture
def web(tmp_path, spawn, tls_cert):
    """A Web: python's http.server, once plain and once with TLS, on loopback."""
    root = tmp_path / "www"
    root.mkdir()
    index = b"<html><body>pinhole socks e2e</body></html>\n"
    big = os.urandom((2 << 20) + 7)
    (root / "index.html").write_bytes(index)
    (root / "big.bin").write_bytes(big)
    script = tmp_path / "web_server.py"
    script.write_text(WEB_SERVER_PY)
    hp, sp = alloc_port(), alloc_port()
    for port, tls in ((hp, ("-", "-")), (sp, tls_cert)):
        ready = tmp_path / f"web-{port}.ready"
        p = spawn([sys.executable, str(script), str(port), str(root), *tls, str(ready)])

        def up(p=p, ready=ready):
            if p.poll() is not None:
                pytest.fail(f"web server exited with {p.returncode}: {p.stdout.read()!r}")
            return ready.exists()

        wait_until(up, READY_TIMEOUT_S, f"the web server on {port}")
    return Web(hp, sp, tls_cert[0], index, big)
