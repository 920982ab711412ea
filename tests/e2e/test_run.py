"""
`pinhole run FILE`: the rules of a config file, one command a line as typed after `pinhole`,
split like a shell would, `include` for more files, problems reported as FILE:LINE before
anything starts, --check to check and start nothing.

    FILE ──> pinhole run ──┬─> 127.0.0.1:P  ─> TCP echo 127.0.0.1:E (conftest)
      include conf.d/*     └─> udp://...:Q  ─> UDP echo 127.0.0.1:U (a thread, below)

The conftest `pinhole` fixture builds `forward ...` command lines and waits for one TCP
listener, so `run` gets its own helper here (RunPinhole): same care (own process group,
stderr to a file, bounded SIGTERM stop, exit status and sanitizer reports checked), and
readiness = one start line per rule plus a listener on every TCP port.
"""

import os
import re
import signal
import socket
import subprocess

import pytest

from conftest import (BIN, READY_TIMEOUT_S, SANITIZER_MARKS, SOCK_TIMEOUT_S, STOP_TIMEOUT_S,
                      alloc_port, connect, echo_once, listeners, parse_log, run_pinhole,
                      tagged_echo_handler, wait_until)

START_RE = re.compile(r"^(?:(?P<name>.+): )?forwarding (?P<proto>tcp|udp|tcp\+udp) "
                      r"(?P<listen>\S+) -> (?P<targets>.+) \((?P<workers>\d+) workers")


# ---------------------------------------------------------------------------------------------
# helpers


def udp_port_free(port, host="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((host, port))
    except OSError:
        return False
    finally:
        s.close()
    return True


def free_port_both():
    """A port free for TCP (127.0.0.1 and ::1, see alloc_port) and for UDP on 127.0.0.1."""
    for _ in range(100):
        p = alloc_port()
        if udp_port_free(p):
            return p
    pytest.fail("no port free for both TCP and UDP in 100 tries")


def udp_bound(port):
    out = subprocess.run(["ss", "-lunH", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=5, check=True).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def assert_tcp_free(port, host="127.0.0.1"):
    """Nobody listens on port, and we can bind it ourselves."""
    assert not listeners(port), f"something listens on TCP {port}: {listeners(port)}"
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(1)
    finally:
        s.close()


def assert_udp_free(port, host="127.0.0.1"):
    assert not udp_bound(port), f"something is bound to UDP {port}: {udp_bound(port)}"
    assert udp_port_free(port, host), f"cannot bind UDP {host}:{port}"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def check_run(*args, timeout=10, cwd=None):
    """`pinhole run ARGS` to completion (usage errors, --check, bad files): CompletedProcess.
    Bounded, and a sanitizer report fails the test."""
    if cwd is None:
        return run_pinhole("run", *args, timeout=timeout)
    try:
        r = subprocess.run([BIN, "run", *[str(a) for a in args]], capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"pinhole run {args} did not finish within {timeout} s: {e.stderr!r}")
    for mark in SANITIZER_MARKS:
        assert mark not in r.stderr, f"sanitizer report from pinhole run {args}:\n{r.stderr}"
    return r


def problem_lines(stderr):
    return [ln for ln in stderr.splitlines() if ln.strip()]


class RunPinhole:
    """One `pinhole run ...` process in its own process group; stderr to a file."""

    def __init__(self, args, tmpdir, idx, cwd=None):
        self.args = ["run", *[str(a) for a in args]]
        self.logpath = os.path.join(tmpdir, f"pinhole-run-{os.getpid()}-{idx}.log")
        self.rc = None
        with open(self.logpath, "wb") as err:
            self.proc = subprocess.Popen([BIN, *self.args], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, cwd=cwd,
                                         start_new_session=True)

    @property
    def log(self):
        with open(self.logpath, "r", errors="replace") as f:
            return f.read()

    def messages(self):
        return [m for _, _, m in parse_log(self.log)]

    def _alive(self):
        if self.proc.poll() is not None and self.rc is None:
            self.rc = self.proc.returncode
            pytest.fail(f"pinhole {self.args} exited early with {self.rc}; log:\n{self.log}")

    def wait_log(self, pattern, timeout=5, count=1):
        rx = re.compile(pattern)

        def seen():
            self._alive()
            hits = [m for m in self.messages() if rx.search(m)]
            return hits if len(hits) >= count else None

        return wait_until(seen, timeout, f"log line /{pattern}/ x{count}; log:\n{self.log}")

    def start_lines(self):
        return [m for m in (START_RE.match(x) for x in self.messages()) if m]

    def wait_ready(self, nrules, tcp_ports=(), timeout=READY_TIMEOUT_S):
        """Every rule logged its start line (logged once all its sockets are bound) and
        every TCP port listens."""

        def ready():
            self._alive()
            return (len(self.start_lines()) >= nrules
                    and all(listeners(p) for p in tcp_ports))

        wait_until(ready, timeout, f"{nrules} start lines and listeners on {tcp_ports}; "
                                   f"log:\n{self.log}")
        return self

    def stop(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM, bounded wait (then SIGKILL to the group), exit 0, no sanitizer report."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
            self.rc = "killed"
            pytest.fail(f"pinhole {self.args} did not exit within {timeout} s; log:\n{self.log}")
        log = self.log
        for mark in SANITIZER_MARKS:
            assert mark not in log, f"sanitizer report in pinhole's log:\n{log}"
        assert self.rc == 0, f"pinhole {self.args} exited with {self.rc}; log:\n{log}"
        return self.rc


@pytest.fixture
def run_conf(tmp_path, tcp_server, udp_echo):
    """A callable: run_conf(FILE, *args, nrules=, tcp_ports=(), cwd=None) -> RunPinhole,
    waited for until ready. Stopped (exit 0, no sanitizer report) at teardown, before the
    servers behind it (this fixture depends on theirs)."""
    made = []

    def start(*args, nrules, tcp_ports=(), cwd=None):
        p = RunPinhole(args, str(tmp_path), len(made), cwd=cwd)
        made.append(p)
        p.wait_ready(nrules, tcp_ports)
        return p

    yield start
    failures = []
    for p in made:
        try:
            if p.rc is None:
                p.stop()
        except BaseException as e:  # pytest.fail raises a BaseException subclass
            failures.append(f"{p.args}: {e}")
            if p.proc.poll() is None:
                os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait(timeout=5)
    assert not failures, "\n".join(failures)


def udp_roundtrip(port, msg, host="127.0.0.1"):
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(SOCK_TIMEOUT_S)
    try:
        c.bind(("127.0.0.1", 0))
        c.sendto(msg, (host, port))
        got, src = c.recvfrom(65536)
    finally:
        c.close()
    assert src[:2] == (host, port), f"reply came from {src}, not {host}:{port}"
    return got


def tcp_roundtrip(port, msg, host="127.0.0.1"):
    c = connect(host, port)
    try:
        c.sendall(msg)
        c.shutdown(socket.SHUT_WR)
        buf = bytearray()
        while True:
            d = c.recv(65536)
            if not d:
                return bytes(buf)
            buf += d
    finally:
        c.close()


def by_name(ph):
    return {m["name"]: m for m in ph.start_lines()}


# ---------------------------------------------------------------------------------------------
# 1. the syntax of a file, with real traffic


def test_tcp_and_udp_rules_serve(tmp_path, run_conf, echo_server, udp_echo):
    """Comments (whole-line, indented, trailing), blank lines, a quoted --name with a space
    and a '#' inside a word, escaped quotes, a rule continued over three lines: both rules
    serve, and each start line carries its name."""
    srv, usrv = echo_server(), udp_echo()
    tp, up = alloc_port(), free_port_both()
    conf = write(tmp_path / "pinhole.conf", f"""\
# pinhole rules for test 1

forward 127.0.0.1:{tp} 127.0.0.1:{srv.port} --name 'tcp echo'#1   # a trailing comment
    # an indented comment, then a blank line with spaces
\t  
forward udp://127.0.0.1:{up} \\
    127.0.0.1:{usrv.port} \\
    --name "udp \\"echo\\"" --udp-timeout 30s
""")
    ph = run_conf(conf, "--workers", "2", nrules=2, tcp_ports=[tp])
    names = by_name(ph)
    assert set(names) == {"tcp echo#1", 'udp "echo"'}, ph.log
    t, u = names["tcp echo#1"], names['udp "echo"']
    assert (t["proto"], t["listen"], t["targets"]) == \
        ("tcp", f"127.0.0.1:{tp}", f"127.0.0.1:{srv.port}"), ph.log
    assert (u["proto"], u["listen"], u["targets"]) == \
        ("udp", f"127.0.0.1:{up}", f"127.0.0.1:{usrv.port}"), ph.log
    assert t["workers"] == u["workers"] == "2"
    assert len(ph.start_lines()) == 2, ph.log

    c = connect("127.0.0.1", tp)
    echo_once(c, b"hello through run, tcp")
    c.close()
    assert udp_roundtrip(up, b"hello through run, udp") == b"hello through run, udp"
    assert srv.accepted == 1 and usrv.count == 1
    ph.stop()


# ---------------------------------------------------------------------------------------------
# 2. include


def test_include_glob_and_plain_relative_to_the_file(tmp_path, run_conf, tcp_server, udp_echo):
    """`include conf.d/*.conf` reads the matches in sorted order, `include extra/plain.conf`
    a plain path, and an included file's own relative include resolves against its own
    directory; pinhole runs with cwd=/ so nothing may resolve against the cwd. A pattern
    that matches nothing is fine."""
    a = tcp_server(tagged_echo_handler(b"A:"))
    b = tcp_server(tagged_echo_handler(b"B:"))
    c = udp_echo(tag=b"C:")
    d = tcp_server(tagged_echo_handler(b"D:"))
    pa, pb, pc, pd = alloc_port(), alloc_port(), free_port_both(), alloc_port()
    root = tmp_path / "etc"
    # written in reverse order: glob must sort them, not keep the directory's order
    write(root / "conf.d" / "20-b.conf", f"forward 127.0.0.1:{pb} 127.0.0.1:{b.port} --name b\n")
    write(root / "conf.d" / "10-a.conf", f"forward 127.0.0.1:{pa} 127.0.0.1:{a.port} --name a\n")
    write(root / "conf.d" / "README", "this is not a config file\n")
    write(root / "extra" / "plain.conf", f"""\
forward udp://127.0.0.1:{pc} 127.0.0.1:{c.port} --name c
include more/deeper.conf
include nothing-here-*.conf
""")
    write(root / "extra" / "more" / "deeper.conf",
          f"forward 127.0.0.1:{pd} 127.0.0.1:{d.port} --name d\n")
    main = write(root / "main.conf", "include conf.d/*.conf\ninclude extra/plain.conf\n")

    r = check_run(main, "--check", cwd="/")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{main}: 4 rules, no problems\n", ""), r

    ph = run_conf(main, "--workers", "1", nrules=4, tcp_ports=[pa, pb, pd], cwd="/")
    assert [m["name"] for m in ph.start_lines()] == ["a", "b", "c", "d"], ph.log
    assert tcp_roundtrip(pa, b"x") == b"A:x"
    assert tcp_roundtrip(pb, b"y") == b"B:y"
    assert udp_roundtrip(pc, b"z") == b"C:z"
    assert tcp_roundtrip(pd, b"w") == b"D:w"
    ph.stop()


def test_include_relative_when_file_is_given_relative(tmp_path):
    """FILE given relative to the cwd (no slash, and with a directory part): includes
    resolve against FILE's directory, both ways."""
    root = tmp_path / "cfg"
    write(root / "inc" / "one.conf", f"forward 127.0.0.1:{alloc_port()} 127.0.0.1:9\n")
    write(root / "main.conf", "include inc/one.conf\n")
    r = check_run("main.conf", "--check", cwd=root)
    assert (r.returncode, r.stdout, r.stderr) == (0, "main.conf: 1 rule, no problems\n", ""), r
    r = check_run("cfg/main.conf", "--check", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == \
        (0, "cfg/main.conf: 1 rule, no problems\n", ""), r


# ---------------------------------------------------------------------------------------------
# 3. --check on a good file


def test_check_good_file_starts_nothing(tmp_path):
    """--check: `FILE: N rules, no problems` on stdout, nothing on stderr, exit 0, and no
    socket: it even passes while we hold one of the rule's ports (a bind would fail), and
    every listen port is free afterwards."""
    tp, up, both, held = alloc_port(), free_port_both(), free_port_both(), alloc_port()
    conf = write(tmp_path / "good.conf", f"""\
forward 127.0.0.1:{tp} 127.0.0.1:7
forward udp://127.0.0.1:{up} 127.0.0.1:7 --name dns
forward tcp+udp://127.0.0.1:{both} 127.0.0.1:7
forward 127.0.0.1:{held} 127.0.0.1:7
""")
    hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hold.bind(("127.0.0.1", held))
    hold.listen(1)
    try:
        r = check_run(conf, "--check")
    finally:
        hold.close()
    assert r.returncode == 0, r
    assert r.stdout == f"{conf}: 4 rules, no problems\n"
    assert r.stderr == "", "no log line: nothing was started"
    for p in (tp, both, held):
        assert_tcp_free(p)
    for p in (up, both):
        assert_udp_free(p)

    one = write(tmp_path / "one.conf", f"forward 127.0.0.1:{tp} 127.0.0.1:7\n")
    r = check_run(one, "--check")
    assert (r.returncode, r.stdout) == (0, f"{one}: 1 rule, no problems\n"), r


# ---------------------------------------------------------------------------------------------
# 4. a bad file


def test_bad_file_reports_every_problem_and_starts_nothing(tmp_path):
    """One problem of each kind, each named FILE:LINE (the first line of a continued one,
    the included file's own path and line); the whole-file checks (listen overlaps, names)
    come last. Exit 2, with and without --check, and nothing is bound: while we hold the
    port of the one good rule, a start would fail with exit 1 instead."""
    good, dup, u, t = alloc_port(), alloc_port(), free_port_both(), alloc_port()
    p = [alloc_port() for _ in range(5)]
    main = tmp_path / "bad.conf"
    lines = [
        "# one problem of each kind",                                          # 1
        f"forward 127.0.0.1:{good} 127.0.0.1:{t} --name good",                  # 2
        f"forward 127.0.0.1:{p[0]} 127.0.0.1:99999",                            # 3
        f"forward 127.0.0.1:{p[1]} 127.0.0.1:{t} --bogus",                      # 4
        f'forward 127.0.0.1:{p[2]} 127.0.0.1:{t} --name "half open',            # 5
        "include missing.conf",                                                 # 6
        "--help",                                                               # 7
        "run other.conf",                                                       # 8
        f"forward 127.0.0.1:{dup} 127.0.0.1:{t}",                               # 9
        f"forward :{dup} 127.0.0.1:{t} \\",                                     # 10
        "    --name wild",                                                      # 11
        f"forward 127.0.0.1:{p[3]} 127.0.0.1:{t} --name good",                  # 12
        "include cycle/a.conf",                                                 # 13
        "include sub/dup.conf",                                                 # 14
        f"forward tcp+udp://127.0.0.1:{u} 127.0.0.1:{t}",                       # 15
        f"forward udp://127.0.0.1:{u} 127.0.0.1:{t}",                           # 16
        f"forward 127.0.0.1:{p[4]} 127.0.0.1:{t} --version",                    # 17
    ]
    write(main, "\n".join(lines) + "\n")
    write(tmp_path / "cycle" / "a.conf", "include b.conf\n")
    write(tmp_path / "cycle" / "b.conf", "# b includes a again\ninclude a.conf\n")
    write(tmp_path / "sub" / "dup.conf", f"\nforward 127.0.0.1:{good} 127.0.0.1:{t}\n")
    col = lines[4].index('"') + 1
    sub, cyc = tmp_path / "sub" / "dup.conf", tmp_path / "cycle"
    expected = [
        f"{main}:3: target '127.0.0.1:99999': port must be 1-65535",
        f"{main}:4: unknown option '--bogus' (see pinhole forward --help)",
        f"{main}:5: column {col}: unterminated double quote",
        f"{main}:6: include 'missing.conf': no such file",
        f"{main}:7: '--help': help and version are for the command line",
        f"{main}:8: 'run': is for the command line, not a config file",
        f"{cyc}/b.conf:2: include '{cyc}/a.conf': includes itself",
        f"{main}:17: '--version': help and version are for the command line",
        f"{main}:10: listen address ':{dup}': also taken by the rule at {main}:9",
        f"{main}:12: --name 'good': also the name of the rule at {main}:2",
        f"{sub}:2: listen address '127.0.0.1:{good}': also taken by the rule at {main}:2",
        f"{main}:16: listen address 'udp://127.0.0.1:{u}': also taken by the rule at {main}:15",
    ]
    count = f"pinhole: {main}: {len(expected)} problems; nothing was started"

    r = check_run(main, "--check")
    assert r.returncode == 2, r
    assert r.stdout == ""
    assert problem_lines(r.stderr) == expected + [count], r.stderr

    hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hold.bind(("127.0.0.1", good))
    hold.listen(1)
    try:
        r2 = check_run(main, "--workers", "1")
    finally:
        hold.close()
    assert r2.returncode == 2, r2
    assert problem_lines(r2.stderr) == expected + [count], r2.stderr
    assert "forwarding" not in r2.stderr and "in use" not in r2.stderr
    for port in (good, dup, p[3], t):
        assert_tcp_free(port)
    assert_udp_free(u)


def test_include_depth_limit_and_non_regular_files(tmp_path):
    """Nine files deep (FILE and 8 levels of include) is fine, a tenth is a problem; a
    directory and a device are not regular files; `include` without a word is a problem."""
    d = tmp_path / "deep"
    for i in range(8):
        write(d / f"d{i}.conf", f"include d{i + 1}.conf\n")
    write(d / "d8.conf", f"forward 127.0.0.1:{alloc_port()} 127.0.0.1:9\n")
    r = check_run(d / "d0.conf", "--check")
    assert (r.returncode, r.stdout) == (0, f"{d}/d0.conf: 1 rule, no problems\n"), r

    write(d / "d8.conf", "include d9.conf\n")
    write(d / "d9.conf", f"forward 127.0.0.1:{alloc_port()} 127.0.0.1:9\n")
    r = check_run(d / "d0.conf", "--check")
    assert r.returncode == 2, r
    assert problem_lines(r.stderr) == [
        f"{d}/d8.conf:1: include '{d}/d9.conf': more than 8 levels deep",
        f"pinhole: {d}/d0.conf: 1 problem; nothing was started"], r.stderr

    (tmp_path / "adir").mkdir()
    f = write(tmp_path / "odd.conf", f"""\
forward 127.0.0.1:{alloc_port()} 127.0.0.1:9
include adir
include /dev/null
include
""")
    r = check_run(f, "--check")
    assert r.returncode == 2, r
    assert problem_lines(r.stderr) == [
        f"{f}:2: '{tmp_path}/adir': not a regular file",
        f"{f}:3: '/dev/null': not a regular file",
        f"{f}:4: include: missing a file or pattern",
        f"pinhole: {f}: 3 problems; nothing was started"], r.stderr


def test_include_fifo_is_a_problem_not_a_hang(tmp_path):
    """A FIFO is not a regular file: it must be reported like a directory or a device.
    (conf_file opens it before it checks the type, and fopen() of a FIFO with no writer
    blocks: `pinhole run --check` then never returns.)"""
    fifo = tmp_path / "rules.fifo"
    os.mkfifo(fifo)
    f = write(tmp_path / "main.conf", f"forward 127.0.0.1:{alloc_port()} 127.0.0.1:9\n"
                                      "include rules.fifo\n")
    r = check_run(f, "--check", timeout=3)
    assert r.returncode == 2, r
    assert problem_lines(r.stderr) == [
        f"{f}:2: '{fifo}': not a regular file",
        f"pinhole: {f}: 1 problem; nothing was started"], r.stderr


# ---------------------------------------------------------------------------------------------
# 5. files that are not there, files without rules, and the command line


def test_missing_empty_and_command_line_errors(tmp_path):
    missing = tmp_path / "nope.conf"
    r = check_run(missing)
    assert r.returncode == 2 and r.stdout == "", r
    assert problem_lines(r.stderr) == [
        f"{missing}: cannot read: No such file or directory",
        f"pinhole: {missing}: 1 problem; nothing was started"], r.stderr

    empty = write(tmp_path / "empty.conf", "# only comments\n\n   # and blanks\n\n")
    for extra in ((), ("--check",)):
        r = check_run(empty, *extra)
        assert r.returncode == 2 and r.stdout == "", r
        assert problem_lines(r.stderr) == [
            f"{empty}: no rules (see pinhole run --help)",
            f"pinhole: {empty}: 1 problem; nothing was started"], r.stderr

    r = check_run(tmp_path)  # a directory as FILE
    assert r.returncode == 2, r
    assert problem_lines(r.stderr)[0] == f"{tmp_path}: '{tmp_path}': not a regular file"

    r = check_run()
    assert (r.returncode, r.stdout) == (2, ""), r
    assert r.stderr.strip() == "pinhole: run: missing FILE (see pinhole run --help)"

    r = check_run(tmp_path / "a.conf", tmp_path / "b.conf")
    assert (r.returncode, r.stdout) == (2, ""), r
    assert r.stderr.strip() == \
        f"pinhole: run: '{tmp_path}/b.conf': one FILE only (include the others from it)"
    assert "cannot read" not in r.stderr

    r = check_run(empty, "--bogus")
    assert r.returncode == 2, r
    assert r.stderr.strip() == "pinhole: unknown option '--bogus' (see pinhole run --help)"

    for args in (("--help",), (empty, "--help"), ("-h",)):
        r = check_run(*args)
        assert r.returncode == 0 and r.stderr == "", r
        assert r.stdout.startswith("Usage: pinhole run FILE [--check]"), r.stdout
        assert "include" in r.stdout and "--check" in r.stdout
    assert run_pinhole("help", "run").stdout == r.stdout


# ---------------------------------------------------------------------------------------------
# 6. rules that look alike but do not overlap


def test_lookalike_rules_are_accepted_and_serve(tmp_path, run_conf, tcp_server, udp_echo):
    """One port for TCP and for udp:// in two rules; one port on 127.0.0.1 and on
    127.0.0.2 (TCP): no conflict, all four serve their own target."""
    p, q = free_port_both(), alloc_port()
    t_tcp = tcp_server(tagged_echo_handler(b"T:"))
    t_udp = udp_echo(tag=b"U:")
    t_one = tcp_server(tagged_echo_handler(b"1:"))
    t_two = tcp_server(tagged_echo_handler(b"2:"))
    conf = write(tmp_path / "alike.conf", f"""\
forward 127.0.0.1:{p} 127.0.0.1:{t_tcp.port} --name tcp
forward udp://127.0.0.1:{p} 127.0.0.1:{t_udp.port} --name udp
forward 127.0.0.1:{q} 127.0.0.1:{t_one.port} --name one
forward 127.0.0.2:{q} 127.0.0.1:{t_two.port} --name two
""")
    r = check_run(conf, "--check")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{conf}: 4 rules, no problems\n", ""), r
    ph = run_conf(conf, "--workers", "1", nrules=4, tcp_ports=[p, q])
    assert set(by_name(ph)) == {"tcp", "udp", "one", "two"}, ph.log
    assert tcp_roundtrip(p, b"a") == b"T:a"
    assert udp_roundtrip(p, b"b") == b"U:b"
    assert tcp_roundtrip(q, b"c", host="127.0.0.1") == b"1:c"
    assert tcp_roundtrip(q, b"d", host="127.0.0.2") == b"2:d"
    ph.stop()


# ---------------------------------------------------------------------------------------------
# 7. a line of global options only


def test_global_options_line(tmp_path, run_conf, echo_server):
    """What the code does (conf_line -> ph_cli_parse): a line of only global options such
    as `--workers 1` is accepted and adds no rule, but it sets the option for the whole run
    (the start lines say 1 workers). A file of nothing else has no rules. (The file is read
    after the command line, so a `--workers` line in it also wins over `--workers` given
    after FILE; that order is not tested here.)"""
    only = write(tmp_path / "only.conf", "--workers 1\n")
    r = check_run(only, "--check")
    assert r.returncode == 2, r
    assert problem_lines(r.stderr) == [
        f"{only}: no rules (see pinhole run --help)",
        f"pinhole: {only}: 1 problem; nothing was started"], r.stderr

    bad = write(tmp_path / "bad.conf", "--workers 0\nforward 127.0.0.1:1 127.0.0.1:2\n")
    r = check_run(bad, "--check")
    assert r.returncode == 2, r
    assert problem_lines(r.stderr)[0] == \
        f"{bad}:1: --workers '0': expected a whole number from 1 to 1024", r.stderr

    srv = echo_server()
    port = alloc_port()
    # the start line says the workers; pick a count no machine defaults to by chance
    n = 1 if (os.cpu_count() or 1) > 1 else 3
    conf = write(tmp_path / "w.conf",
                 f"--workers {n}\nforward 127.0.0.1:{port} 127.0.0.1:{srv.port}\n")
    r = check_run(conf, "--check")
    assert (r.returncode, r.stdout) == (0, f"{conf}: 1 rule, no problems\n"), r
    ph = run_conf(conf, nrules=1, tcp_ports=[port])
    assert [m["workers"] for m in ph.start_lines()] == [str(n)], ph.log
    assert tcp_roundtrip(port, b"ok") == b"ok"
    ph.stop()


# ---------------------------------------------------------------------------------------------
# 8. global options after FILE


def test_verbose_after_file_logs_each_connection(tmp_path, run_conf, echo_server):
    """`run FILE -v --workers 1`: the options after FILE apply; -v gives a line per
    connection, which the default level does not."""
    srv = echo_server()
    port = alloc_port()
    conf = write(tmp_path / "v.conf", f"forward 127.0.0.1:{port} 127.0.0.1:{srv.port}\n")
    conn_re = rf"^c\d+ 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:{srv.port}: closed, 5 bytes up, 5 down"

    quiet = run_conf(conf, "--workers", "1", nrules=1, tcp_ports=[port])
    assert tcp_roundtrip(port, b"hello") == b"hello"
    quiet.stop()
    assert not any(re.search(conn_re, m) for m in quiet.messages()), quiet.log

    ph = run_conf(conf, "-v", "--workers", "1", nrules=1, tcp_ports=[port])
    assert [m["workers"] for m in ph.start_lines()] == ["1"], ph.log
    assert tcp_roundtrip(port, b"hello") == b"hello"
    ph.wait_log(conn_re)
    ph.stop()


# ---------------------------------------------------------------------------------------------
# the shell splitting at the ends of lines (what `run --help` promises: "Words are split
# like a shell does")


def test_comment_ending_in_backslash_does_not_join_the_next_line(tmp_path):
    """In a shell a comment ends at the newline, backslash or not (`# C:\\dir\\` then a
    command: the command runs). Here the rule after such a comment must still count."""
    conf = write(tmp_path / "c.conf", f"""\
forward 127.0.0.1:{alloc_port()} 127.0.0.1:9
# the old box was C:\\backup\\
forward 127.0.0.1:{alloc_port()} 127.0.0.1:9
""")
    r = check_run(conf, "--check")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{conf}: 2 rules, no problems\n", ""), r


def test_escaped_backslash_at_line_end_is_not_a_continuation(tmp_path):
    """`a\\\\` is the word `a\\` in a shell (an escaped backslash), not a line
    continuation: two lines, two rules."""
    conf = write(tmp_path / "e.conf", f"""\
forward 127.0.0.1:{alloc_port()} 127.0.0.1:9 --name a\\\\
forward 127.0.0.1:{alloc_port()} 127.0.0.1:9
""")
    r = check_run(conf, "--check")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{conf}: 2 rules, no problems\n", ""), r
