"""
The control socket: `pinhole status [--json]` and `pinhole reload` against a running
pinhole, through --control PATH (a unix socket of mode 0600 the test names).
"""

import json
import os
import pwd
import shutil
import socket
import stat
import tempfile

import pytest

from conftest import connect, echo_once, run_pinhole, wait_until


def ctl(tmp_path):
    return str(tmp_path / "ctl.sock")


def ask(path, *args):
    return run_pinhole(*args, "--control", path)


def start_run(pinhole, tmp_path, text, *extra):
    conf = tmp_path / "p.conf"
    conf.write_text(text)
    ph = pinhole("run", conf, "--control", ctl(tmp_path), *extra, ready=False)
    n = sum(1 for line in text.splitlines() if line.startswith("forward"))
    ph.wait_log(r"forwarding ", count=n)
    wait_until(lambda: os.path.exists(ctl(tmp_path)), 5, "the control socket")
    return ph, conf


def test_status_text_and_json(pinhole, echo_server, free_port, tmp_path):
    srv = echo_server()
    web, dns = free_port(), free_port()
    usrv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    usrv.bind(("127.0.0.1", 0))
    usrv.settimeout(5)
    ph, conf = start_run(pinhole, tmp_path,
                         f"forward 127.0.0.1:{web} 127.0.0.1:{srv.port} --name web\n"
                         f"forward udp://127.0.0.1:{dns} 127.0.0.1:{usrv.getsockname()[1]}\n")
    mode = stat.S_IMODE(os.stat(ctl(tmp_path)).st_mode)
    assert mode == 0o600, oct(mode)
    for _ in range(3):
        c = connect("127.0.0.1", web)
        echo_once(c, b"12345")
        c.close()
    live = connect("127.0.0.1", web)
    echo_once(live, b"xy")
    cl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cl.sendto(b"q", ("127.0.0.1", dns))
    d, peer = usrv.recvfrom(10)
    usrv.sendto(b"answer", peer)
    cl.settimeout(5)
    assert cl.recv(10) == b"answer"
    r = ask(ctl(tmp_path), "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("pinhole ") and f"pid {ph.pid}" in lines[0]
    assert f"rules from {conf}" in lines[0]
    assert any(l.startswith(f"rule web ({conf}:1): tcp 127.0.0.1:{web} -> 127.0.0.1:{srv.port}")
               for l in lines), r.stdout
    assert "  tcp: 1 connections active, 4 in all; 17 B up, 17 B down;" in r.stdout, r.stdout
    assert "  udp: 1 sessions active, 1 in all; 1 datagrams up, 1 down, 0 dropped" in r.stdout
    assert lines[-1].startswith("total: 1 connections active, 4 in all; 1 udp sessions "
                                "active, 1 in all; 18 B up, 23 B down; 0 denied"), lines[-1]
    j = json.loads(ask(ctl(tmp_path), "status", "--json").stdout)
    assert j["pid"] == ph.pid and j["workers"] >= 1 and j["file"] == str(conf)
    webj, dnsj = j["rules"]
    assert webj["name"] == "web" and webj["proto"] == "tcp" and not webj["removed"]
    assert webj["connections"] == {"active": 1, "total": 4}
    assert webj["bytes"]["up"] == 17 and webj["bytes"]["spliced"] == 34
    assert dnsj["udp"]["sessions_active"] == 1 and dnsj["udp"]["datagrams_down"] == 1
    assert dnsj["bytes"] == {"up": 1, "down": 6, "spliced": 0}
    assert j["totals"]["connections"] == {"active": 1, "total": 4}
    assert j["totals"]["bytes"] == {"up": 18, "down": 23}
    assert j["totals"]["udp_sessions"] == {"active": 1, "total": 1}
    # a removed rule with a live connection shows as removed until it ends
    conf.write_text(f"forward udp://127.0.0.1:{dns} 127.0.0.1:{usrv.getsockname()[1]}\n")
    r = ask(ctl(tmp_path), "reload")
    assert r.returncode == 0 and "reloaded" in r.stdout, r.stdout + r.stderr
    j = json.loads(ask(ctl(tmp_path), "status", "--json").stdout)
    assert [x["removed"] for x in j["rules"]] == [False, True], j
    live.close()
    cl.close()
    usrv.close()


def test_reload_command(pinhole, echo_server, free_port, tmp_path):
    srv = echo_server()
    a, b = free_port(), free_port()
    ph, conf = start_run(pinhole, tmp_path, f"forward 127.0.0.1:{a} 127.0.0.1:{srv.port}\n")
    conf.write_text(f"forward 127.0.0.1:{a} 127.0.0.1:{srv.port}\n"
                    f"forward 127.0.0.1:{b} 127.0.0.1:{srv.port}\n")
    r = ask(ctl(tmp_path), "reload")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("reloaded " + str(conf) +
                                     ": 1 rules unchanged, 1 started, 0 removed"), r.stdout
    c = connect("127.0.0.1", b)
    echo_once(c, b"new rule")
    c.close()
    conf.write_text(f"forward 127.0.0.1:{a} 127.0.0.1:99999\n")
    r = ask(ctl(tmp_path), "reload")
    assert r.returncode == 1
    assert f"{conf}:1: target '127.0.0.1:99999': port must be 1-65535" in r.stdout
    assert "the running rules stay as they are" in r.stdout


def test_reload_of_a_forward(pinhole, echo_server, free_port, tmp_path):
    srv = echo_server()
    pinhole(f"127.0.0.1:{free_port()}", f"127.0.0.1:{srv.port}", "--control", ctl(tmp_path))
    wait_until(lambda: os.path.exists(ctl(tmp_path)), 5, "the control socket")
    r = ask(ctl(tmp_path), "reload")
    assert r.returncode == 1 and "nothing to reload" in r.stdout


def test_nobody_there(tmp_path):
    r = ask(ctl(tmp_path), "status")
    assert r.returncode == 1
    assert "cannot reach pinhole at" in r.stderr and "is it running?" in r.stderr


def test_stale_socket_replaced_live_one_kept(pinhole, echo_server, free_port, tmp_path):
    srv = echo_server()
    path = ctl(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: a crashed pinhole's leftover
    pinhole(f"127.0.0.1:{free_port()}", f"127.0.0.1:{srv.port}", "--control", path)
    assert ask(path, "status").returncode == 0
    # a second pinhole on the same path refuses to start rather than steal it
    r = run_pinhole("forward", f"127.0.0.1:{free_port()}", f"127.0.0.1:{srv.port}",
                    "--control", path, timeout=10)
    assert r.returncode == 1 and "another pinhole answers there" in r.stderr
    assert ask(path, "status").returncode == 0


def test_control_none_and_unknown_command(pinhole, echo_server, free_port, tmp_path):
    srv = echo_server()
    path = ctl(tmp_path)
    pinhole(f"127.0.0.1:{free_port()}", f"127.0.0.1:{srv.port}", "--control", "none")
    assert not os.path.exists(path)
    pinhole(f"127.0.0.1:{free_port()}", f"127.0.0.1:{srv.port}", "--control", path)
    wait_until(lambda: os.path.exists(path), 5, "the control socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall(b"frobnicate\n")
    got = b""
    while True:
        d = s.recv(1000)
        if not d:
            break
        got += d
    s.close()
    assert got.startswith(b"unknown command")


def test_cli_errors():
    r = run_pinhole("status", "extra")
    assert r.returncode == 2 and "takes no arguments" in r.stderr
    r = run_pinhole("reload", "--json")
    assert r.returncode == 2 and "unknown option '--json'" in r.stderr


# ---------------------------------------------------------------------------------------------
# whose socket: another user must not be able to take the control socket's name first


NOBODY = pwd.getpwnam("nobody")
AS_NOBODY = ("setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}",
             "--clear-groups")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown and setpriv need root")


def squat(path, uid):
    """A socket file at path that uid made (and left: nobody answers there)."""
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    os.chown(path, uid, -1)


@needs_root
def test_socket_of_another_user_refused(pinhole, free_port, tmp_path):
    path = tmp_path / "ctl.sock"
    squat(path, NOBODY.pw_uid)
    r = run_pinhole("forward", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}",
                    "--control", path, timeout=5)
    assert r.returncode == 1, r.stderr
    assert f"control socket '{path}': belongs to uid {NOBODY.pw_uid}, not to us: refused" \
        in r.stderr, r.stderr
    assert os.stat(path).st_uid == NOBODY.pw_uid  # left alone


@needs_root
def test_directory_of_another_user_refused(pinhole, free_port, tmp_path):
    d = tmp_path / "theirs"
    d.mkdir(mode=0o755)
    os.chown(d, NOBODY.pw_uid, NOBODY.pw_gid)
    r = run_pinhole("forward", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}",
                    "--control", d / "ctl.sock", timeout=5)
    assert r.returncode == 1, r.stderr
    assert f"its directory {d} belongs to uid {NOBODY.pw_uid}, not to us: refused" \
        in r.stderr, r.stderr
    assert not (d / "ctl.sock").exists()


@pytest.fixture
def nobody_dir():
    """A directory of nobody's (mode 0700), outside root's private pytest tree."""
    d = tempfile.mkdtemp(prefix=f"ph-ctl-{os.getpid()}-")
    os.chown(d, NOBODY.pw_uid, NOBODY.pw_gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_nobody(*args, env):
    return run_pinhole(*args, prefix=AS_NOBODY, env=env)


@needs_root
def test_default_socket_in_xdg_runtime_dir(pinhole, echo_server, free_port, nobody_dir):
    """Not root, XDG_RUNTIME_DIR set: the socket is $XDG_RUNTIME_DIR/pinhole.sock, and
    status and reload (same user, same environment) find it there."""
    srv = echo_server()
    env = {**os.environ, "XDG_RUNTIME_DIR": nobody_dir}
    conf = os.path.join(nobody_dir, "p.conf")
    port = free_port()
    with open(conf, "w") as f:
        f.write(f"forward 127.0.0.1:{port} 127.0.0.1:{srv.port}\n")
    ph = pinhole("run", conf, prefix=AS_NOBODY, env=env, ready=False)
    ph.wait_log(r"forwarding ")
    sock = os.path.join(nobody_dir, "pinhole.sock")
    wait_until(lambda: os.path.exists(sock), 5, "the control socket")
    assert os.stat(sock).st_uid == NOBODY.pw_uid
    r = as_nobody("status", env=env)
    assert r.returncode == 0 and f"tcp 127.0.0.1:{port} -> " in r.stdout, r.stdout + r.stderr
    r = as_nobody("reload", env=env)
    assert r.returncode == 0 and "reloaded " in r.stdout, r.stdout + r.stderr
    ph.stop()
    assert not os.path.exists(sock)


@needs_root
def test_default_socket_without_xdg(pinhole, echo_server, free_port, nobody_dir):
    """Not root, no XDG_RUNTIME_DIR: /tmp/pinhole-UID/pinhole.sock, in a directory of mode
    0700 pinhole makes; one another user made first is refused, naming it."""
    d = f"/tmp/pinhole-{NOBODY.pw_uid}"
    if os.path.lexists(d):
        pytest.skip(f"{d} exists already (another run?)")
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    srv = echo_server()
    try:
        port = free_port()
        ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", prefix=AS_NOBODY, env=env)
        sock = os.path.join(d, "pinhole.sock")
        wait_until(lambda: os.path.exists(sock), 5, "the control socket")
        st = os.stat(d)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY.pw_uid, 0o700)
        r = as_nobody("status", env=env)
        assert r.returncode == 0 and f"tcp 127.0.0.1:{port} -> " in r.stdout, \
            r.stdout + r.stderr
        ph.stop()
        # taken first by another user (uid 4242 here): refused, and said where
        shutil.rmtree(d)
        os.mkdir(d, 0o700)
        os.chown(d, 4242, 4242)
        ph = pinhole(f"127.0.0.1:{free_port()}", f"127.0.0.1:{srv.port}", prefix=AS_NOBODY,
                     env=env)
        ph.wait_log(rf"control socket '{d}/pinhole\.sock': its directory {d} belongs to uid "
                    r"4242, not to us: refused")
        ph.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)
