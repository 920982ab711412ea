"""
rinetd.conf read unchanged: `pinhole run --rinetd FILE`, or found out by its first line.
The same file (only the listening ports differ) is given to the real rinetd, and TCP
clients from several loopback addresses must be let in or turned away by both alike.

Two things seen of Debian's rinetd 0.73 that the comparison stays clear of: its UDP
forwarding answered nothing here (pinhole's UDP rule is checked on its own), and a pattern
longer than the address ("127.0.0.3?" against 127.0.0.3) let the client in about one time
in six, which looks like a read past the end of the address; its man page says ? matches
one character, which is what pinhole does, every time.
"""

import os
import re
import shutil
import socket
import subprocess

import pytest
from conftest import listeners, run_pinhole, wait_until

RINETD = shutil.which("rinetd") or "/usr/sbin/rinetd"

CONF = """\
# rinetd.conf, as rinetd(8) writes them
deny 127.0.0.9
logfile {tmp}/rinetd.log

127.0.0.1 {p1} 127.0.0.1 {echo}
allow 127.0.0.*
deny 127.0.0.5
127.0.0.1 {p2} 127.0.0.1 {echo}
allow 127.0.0.?
127.0.0.1 {p3} 127.0.0.1 {echo}
allow 127.0.0.2
127.0.0.1 {p4}/udp 127.0.0.1 {uecho}/udp [timeout=30]
"""


def served(port, source, host="127.0.0.1"):
    """True when a TCP client from source gets its bytes echoed through host:port."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.bind((source, 0))
        s.connect((host, port))
        s.sendall(b"hello")
        got = b""
        while len(got) < 5:
            d = s.recv(100)
            if not d:
                break
            got += d
        return got == b"hello"
    except OSError:
        return False
    finally:
        s.close()


def udp_served(port, source):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    try:
        s.bind((source, 0))
        s.sendto(b"ping", ("127.0.0.1", port))
        return s.recv(100) == b"ping"
    except OSError:
        return False
    finally:
        s.close()


@pytest.fixture
def udp_echo_port(udp_echo):
    return udp_echo().port


def conf(tmp_path, name, echo, uecho, ports):
    path = tmp_path / name
    path.write_text(CONF.format(tmp=tmp_path, echo=echo, uecho=uecho, p1=ports[0], p2=ports[1],
                                p3=ports[2], p4=ports[3]))
    return str(path)


SOURCES = [f"127.0.0.{i}" for i in (1, 2, 3, 5, 9)] + ["127.0.0.31"]


def test_same_meaning_as_rinetd(pinhole, echo_server, udp_echo_port, free_port, tmp_path):
    if not os.access(RINETD, os.X_OK):
        pytest.skip("rinetd is not installed (scripts/deps.sh test installs it)")
    srv = echo_server()
    mine = [free_port() for _ in range(4)]
    theirs = [free_port() for _ in range(4)]
    ph = pinhole("run", conf(tmp_path, "pinhole.conf", srv.port, udp_echo_port, mine),
                 ready=False)
    ph.wait_log(r"forwarding udp ")
    rd = subprocess.Popen([RINETD, "-f", "-c",
                           conf(tmp_path, "rinetd.conf", srv.port, udp_echo_port, theirs)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_until(lambda: listeners(theirs[0]) and listeners(theirs[1]), 5,
                   "rinetd to listen")
        wait_until(lambda: listeners(mine[0]) and listeners(mine[1]), 5, "pinhole to listen")
        table = []
        for src in SOURCES:
            for k in range(3):
                table.append((src, k, served(mine[k], src), served(theirs[k], src)))
        differ = [row for row in table if row[2] != row[3]]
        assert not differ, f"(source, rule, pinhole, rinetd) that differ: {differ}"
        # and the file says something: some are let in, some are not
        assert any(r[2] for r in table) and not all(r[2] for r in table), table
        # UDP: the global deny holds there too
        assert udp_served(mine[3], "127.0.0.1") and udp_served(mine[3], "127.0.0.31")
        assert not udp_served(mine[3], "127.0.0.9")
    finally:
        rd.terminate()
        try:
            rd.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rd.kill()
            rd.wait(timeout=5)


def test_detected_and_checked(echo_server, udp_echo_port, free_port, tmp_path):
    path = conf(tmp_path, "r.conf", 7, 7, [free_port() for _ in range(4)])
    r = run_pinhole("run", path, "--check")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{path}: 4 rules, no problems"
    assert r.stderr == ""


def test_rinetd_problems(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text("allow 127.*\n"
                    "1.2.3.4 80 5.6.7.8 80/udp\n"
                    "127.0.0.1 99999 1.2.3.4 1\n"
                    "allow 10.0.0.[1]\n"
                    "127.0.0.1 8080 1.1.1.1 80 [foo=1]\n"
                    "bogus line\n"
                    "127.0.0.1 8081 1.1.1.1 80\n"
                    "allow 10.*\n")
    r = run_pinhole("run", "--rinetd", str(path), "--check")
    assert r.returncode == 2
    want = [f"{path}:2: '80' to '80/udp': pinhole forwards TCP to TCP and UDP to UDP",
            f"{path}:3: port '99999': a number, or a service of /etc/services",
            f"{path}:4: allow '10.0.0.[1]': a pattern holds",
            f"{path}:5: 'foo=1': unknown option",
            f"{path}:6: 'bogus': not a rinetd line",
            f"{path}:7: allow rules both before the first rule and after this one",
            f"pinhole: {path}: 6 problems; nothing was started"]
    lines = r.stderr.splitlines()
    for w in want:
        assert any(line.startswith(w) for line in lines), (w, r.stderr)


def test_service_names_and_source(pinhole, echo_server, free_port, tmp_path):
    """A service name for the bind port (from /etc/services) and [src=...]: the target
    sees the source address."""
    srv = echo_server()
    path = tmp_path / "svc.conf"
    # tcpmux is port 1 in /etc/services: only root may bind it, and the tests run as root
    if os.geteuid() != 0:
        pytest.skip("binding port 1 (tcpmux) needs root")
    path.write_text(f"127.0.0.1 tcpmux 127.0.0.1 {srv.port} [src=127.0.0.2]\n")
    ph = pinhole("run", str(path), ready=False)
    ph.wait_log(r"forwarding tcp 127\.0\.0\.1:1 ")
    assert served(1, "127.0.0.1")
    assert [p[0] for p in srv.peers] == ["127.0.0.2"]


def test_logfile_like_rinetd(pinhole, echo_server, free_port, tmp_path):
    """logfile: pinhole writes the lines rinetd writes (tab-separated: time, client,
    listen host, listen port, target host, target port, bytes from the client, bytes to
    it, what happened), for the same client through the same file."""
    if not os.access(RINETD, os.X_OK):
        pytest.skip("rinetd is not installed (scripts/deps.sh test installs it)")
    srv = echo_server()
    logs = {}
    procs = []
    ports = {}
    for who in ("pinhole", "rinetd"):
        ports[who] = free_port()
        conf = tmp_path / f"{who}.conf"
        conf.write_text(f"logfile {tmp_path}/{who}.log\n"
                        f"127.0.0.1 {ports[who]} 127.0.0.1 {srv.port}\n"
                        f"deny 127.0.0.9\n")
        if who == "pinhole":
            ph = pinhole("run", conf, "--control", "none", ready=False)
            ph.wait_log("forwarding tcp")
        else:
            procs.append(subprocess.Popen([RINETD, "-f", "-c", str(conf)],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))
        wait_until(lambda: listeners(ports[who]), 5, f"{who} to listen")
    try:
        for who in ("pinhole", "rinetd"):
            assert served(ports[who], "127.0.0.3")
            assert not served(ports[who], "127.0.0.9")
        for who in ("pinhole", "rinetd"):
            def lines(w=who):
                try:
                    return [l.split("\t") for l in open(f"{tmp_path}/{w}.log").read().splitlines()]
                except FileNotFoundError:
                    return []
            wait_until(lambda: len(lines()) >= 3, 5, f"{who}'s log lines")
            logs[who] = lines()
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=5)
    for who, rows in logs.items():
        by = {r[8]: r for r in rows}
        assert all(len(r) == 9 for r in rows), (who, rows)
        opened = by["opened"]
        assert opened[1:3] == ["127.0.0.3", "127.0.0.1"], (who, rows)
        assert opened[3] == str(ports[who]) and opened[4:6] == ["127.0.0.1", str(srv.port)]
        done = [r for r in rows if r[8].startswith("done-") and r[1] == "127.0.0.3"]
        assert done and done[0][6] == "5", (who, rows)  # the 5 bytes of "hello"
        assert re.fullmatch(r"\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d ", opened[0]), opened[0]
    # what rinetd writes for a denied client, pinhole writes the same way
    assert [r[1] for r in logs["pinhole"] if r[8] == "denied"] == ["127.0.0.9"]


def test_deny_star_on_a_v6_bind_refuses_ipv6_clients(pinhole, echo_server, free_port, tmp_path,
                                                      ipv6):
    """`deny *` on a rule bound to `::` (IPv6 clients only, as pinhole listens there) turns
    away an IPv6 client on ::1; the rule beside it without a deny serves it."""
    srv = echo_server()
    closed, opened = free_port(), free_port()
    path = tmp_path / "v6.conf"
    path.write_text(f":: {closed} 127.0.0.1 {srv.port}\n"
                    f"deny *\n"
                    f":: {opened} 127.0.0.1 {srv.port}\n")
    ph = pinhole("run", str(path), ready=False)
    ph.wait_log(rf"forwarding tcp \[::\]:{opened} ")
    wait_until(lambda: listeners(closed) and listeners(opened), 5, "pinhole to listen")
    assert served(opened, "::1", "::1")
    assert not served(closed, "::1", "::1"), "deny * let an IPv6 client in"
    assert srv.accepted == 1
