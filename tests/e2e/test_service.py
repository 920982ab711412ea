"""
Running as a service: --user (bind as root, serve as someone else), --pidfile, systemd's
readiness protocol (READY=1, RELOADING=1, STOPPING=1 on $NOTIFY_SOCKET, as systemd reads
them) and the unit file in contrib/, checked by systemd-analyze.
"""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess

import pytest
from conftest import BIN, ROOT, connect, echo_once, run_pinhole, wait_until

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="binding a port below 1024 and dropping to another "
                                       "user need root")


def free_low_port():
    """Port 80 when it is free on every address (the issue's `forward :80`), else another
    port below 1024 nobody listens on on loopback (binding either needs root)."""
    s = socket.socket(socket.AF_INET6)
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 80))
        return 80
    except OSError:
        pass
    finally:
        s.close()
    for port in range(980, 1024):
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    pytest.skip("no free port below 1024")


def ids(pid):
    """(real, effective, saved uids), (gids), [supplementary groups] of pid."""
    st = open(f"/proc/{pid}/status").read()
    uids = tuple(int(x) for x in re.search(r"^Uid:\s+(.*)$", st, re.M).group(1).split())
    gids = tuple(int(x) for x in re.search(r"^Gid:\s+(.*)$", st, re.M).group(1).split())
    groups = [int(x) for x in re.search(r"^Groups:\s*(.*)$", st, re.M).group(1).split()]
    return uids[:3], gids[:3], groups


@needs_root
def test_user_drops_root_after_binding_a_low_port(pinhole, echo_server):
    nobody = pwd.getpwnam("nobody")
    srv = echo_server()
    port = free_low_port()
    listen = ":80" if port == 80 else f"127.0.0.1:{port}"
    ph = pinhole(listen, f"127.0.0.1:{srv.port}", "--user", "nobody")
    ph.wait_log(rf"running as nobody \(uid {nobody.pw_uid}, gid {nobody.pw_gid}\)")
    uids, gids, groups = ids(ph.pid)
    assert uids == (nobody.pw_uid,) * 3, uids  # real, effective and saved: no way back
    assert gids == (nobody.pw_gid,) * 3, gids
    assert 0 not in groups, groups
    # every thread, not only the main one
    for tid in os.listdir(f"/proc/{ph.pid}/task"):
        st = open(f"/proc/{ph.pid}/task/{tid}/status").read()
        assert re.search(rf"^Uid:\s+{nobody.pw_uid}\s", st, re.M), st
    c = connect("127.0.0.1", port)
    echo_once(c, b"served by nobody")
    c.close()


@needs_root
def test_user_unknown_or_root(free_port):
    port = free_port()
    r = run_pinhole("forward", f"127.0.0.1:{port}", "127.0.0.1:9", "--user", "no-such-user-x")
    assert r.returncode == 1
    assert "--user 'no-such-user-x': no such user" in r.stderr
    r = run_pinhole("forward", f"127.0.0.1:{port}", "127.0.0.1:9", "--user", "root")
    assert r.returncode == 1 and "is root" in r.stderr


def test_pidfile(pinhole, echo_server, free_port, tmp_path):
    srv = echo_server()
    path = tmp_path / "p.pid"
    ph = pinhole(f"127.0.0.1:{free_port()}", f"127.0.0.1:{srv.port}", "--pidfile", path)
    wait_until(path.exists, 5, "the pid file")
    assert path.read_text() == f"{ph.pid}\n"
    ph.stop()
    assert not path.exists()


def test_pidfile_unwritable(free_port, tmp_path):
    r = run_pinhole("forward", f"127.0.0.1:{free_port()}", "127.0.0.1:9", "--pidfile",
                    tmp_path / "no-such-dir" / "p.pid")
    assert r.returncode == 1 and "--pidfile" in r.stderr and "No such file" in r.stderr


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    yield path, s
    s.close()


def test_systemd_notify(pinhole, echo_server, free_port, tmp_path, notify_socket):
    path, sock = notify_socket
    srv = echo_server()
    conf = tmp_path / "p.conf"
    conf.write_text(f"forward 127.0.0.1:{free_port()} 127.0.0.1:{srv.port}\n")
    env = dict(os.environ, NOTIFY_SOCKET=path)
    ph = pinhole("run", conf, ready=False, env=env)
    assert sock.recv(512) == b"READY=1"
    ph.send_signal(signal.SIGHUP)
    msg = sock.recv(512).decode()
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", msg), msg
    assert sock.recv(512) == b"READY=1"
    ph.stop()
    assert sock.recv(512) == b"STOPPING=1"


def test_systemd_notify_abstract(pinhole, echo_server, free_port):
    """An abstract socket (@name), as systemd may hand out."""
    name = f"pinhole-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    try:
        srv = echo_server()
        pinhole(f"127.0.0.1:{free_port()}", f"127.0.0.1:{srv.port}",
                env=dict(os.environ, NOTIFY_SOCKET="@" + name))
        assert s.recv(512) == b"READY=1"
    finally:
        s.close()


def test_unit_file_verifies(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    unit = open(os.path.join(ROOT, "contrib", "pinhole.service")).read()
    # the unit names /usr/local/bin/pinhole: point it at the binary under test
    (tmp_path / "pinhole.service").write_text(unit.replace("/usr/local/bin/pinhole", BIN))
    r = subprocess.run([tool, "verify", "--man=no", str(tmp_path / "pinhole.service")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "Type=notify" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit


def test_log_file_symlink_refused(free_port, tmp_path):
    """--log-file is opened as root: a symbolic link planted at the path (by whoever can
    write its directory) is refused by name, and the file it points to is not touched."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "conn.log"
    link.symlink_to(victim)
    r = run_pinhole("forward", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}",
                    "--log-file", link, "--control", "none", timeout=5)
    assert r.returncode == 1, r.stderr
    assert f"--log-file '{link}': a symbolic link: refused" in r.stderr, r.stderr
    assert victim.read_text() == "precious\n"
    assert link.is_symlink()


@pytest.mark.parametrize("fmt", ["rinetd", "common"])
def test_log_file(pinhole, echo_server, free_port, tmp_path, fmt):
    """--log-file: a line per connection opened and ended, as rinetd writes them."""
    srv = echo_server()
    port = free_port()
    log = tmp_path / "conn.log"
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--log-file", log,
                 "--log-format", fmt)
    c = connect("127.0.0.1", port)
    echo_once(c, b"12345")
    c.close()
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 2, 5, "2 lines")
    first, last = log.read_text().splitlines()[:2]
    if fmt == "rinetd":
        f = first.split("\t")
        assert f[1:] == ["127.0.0.1", "127.0.0.1", str(port), "127.0.0.1", str(srv.port),
                         "0", "0", "opened"], first
        g = last.split("\t")
        assert g[6:8] == ["5", "5"] and g[8] in ("done-local-closed", "done-remote-closed"), last
    else:
        assert re.fullmatch(rf'127\.0\.0\.1 - - \[[^]]+\] "GET /rinetd-services/127\.0\.0\.1/'
                            rf'{port}/127\.0\.0\.1/{srv.port}/opened HTTP/1\.0" 200 0 - - - 0',
                            first), first
        assert re.search(r'/done-(local|remote)-closed HTTP/1\.0" 200 5 - - - 5$', last), last
    ph.stop()
