"""
The PROXY protocol with real peers: nginx (`listen ... proxy_protocol`, logging
$proxy_protocol_addr) behind pinhole --proxy-protocol v1|v2, and haproxy (`send-proxy-v2`)
in front of pinhole --accept-proxy. curl's source address is set (127.0.0.x, all on
loopback), so the address nginx reports proves the header carried it all the way.
"""

import os
import shutil
import socket
import subprocess

import pytest
from conftest import connect, listeners, run_peer, wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def start(cmd, port, tmp, name):
    log = open(os.path.join(tmp, name + ".log"), "wb")
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True)
    try:
        wait_until(lambda: listeners(port) or p.poll() is not None, 10, f"{name} to listen")
    except BaseException:
        p.kill()
        raise
    if p.poll() is not None:
        pytest.fail(f"{name} exited: {open(log.name).read()}")
    return p


def stop(p):
    p.terminate()
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=5)


@pytest.fixture
def nginx_pp(tmp_path, free_port):
    """nginx answering 'addr=$proxy_protocol_addr port=$proxy_protocol_port' on a port
    that requires a PROXY header."""
    if not os.access(NGINX, os.X_OK):
        pytest.skip("nginx is not installed (scripts/deps.sh test installs nginx-light)")
    d = str(tmp_path / "nginx")
    os.makedirs(d)
    port = free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/b;
    proxy_temp_path {d}/p;
    fastcgi_temp_path {d}/f;
    uwsgi_temp_path {d}/u;
    scgi_temp_path {d}/s;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{
            return 200 "addr=$proxy_protocol_addr port=$proxy_protocol_port\\n";
        }}
    }}
}}
""")
    p = start([NGINX, "-p", d, "-c", conf, "-e", d + "/error.log"], port, str(tmp_path),
              "nginx")
    yield port
    stop(p)


def curl(port, source):
    r = run_peer(["curl", "-sS", "--max-time", "5", "--interface", source,
                  f"http://127.0.0.1:{port}/"], timeout=10)
    return r.stdout.decode().strip()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_pinhole_tells_nginx_the_client(pinhole, nginx_pp, free_port, version):
    port = free_port()
    pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{nginx_pp}", "--proxy-protocol", version)
    got = curl(port, "127.0.0.5")
    assert got.startswith("addr=127.0.0.5 port="), got
    assert int(got.split("port=")[1]) > 0


def test_haproxy_in_front_nginx_behind(pinhole, nginx_pp, free_port, tmp_path):
    """curl (127.0.0.7) -> haproxy send-proxy-v2 -> pinhole --accept-proxy 127.0.0.1
    --proxy-protocol v1 -> nginx: nginx learns 127.0.0.7."""
    if not os.access(HAPROXY, os.X_OK):
        pytest.skip("haproxy is not installed (scripts/deps.sh test installs it)")
    hport, port = free_port(), free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(f"""
global
    maxconn 64
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend f
    bind 127.0.0.1:{hport}
    default_backend b
backend b
    server s1 127.0.0.1:{port} send-proxy-v2
""")
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{nginx_pp}", "--accept-proxy",
                 "127.0.0.1/32", "--proxy-protocol", "v1", "-v")
    h = start([HAPROXY, "-db", "-f", str(cfg)], hport, str(tmp_path), "haproxy")
    try:
        got = curl(hport, "127.0.0.7")
        assert got.startswith("addr=127.0.0.7 "), got
        # pinhole's own log names the real client too
        ph.wait_log(r"^c\d+ 127\.0\.0\.7:\d+ -> 127\.0\.0\.1:\d+: closed")
    finally:
        stop(h)


def test_accept_proxy_refuses_the_untrusted(pinhole, echo_server, free_port):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--accept-proxy", "127.0.0.2")
    c = socket.socket()
    c.settimeout(5)
    c.bind(("127.0.0.1", 0))
    try:  # refused at accept: the reset may come before, during or after the send
        c.connect(("127.0.0.1", port))
        c.sendall(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nhello")
        assert c.recv(100) == b""
    except (ConnectionResetError, BrokenPipeError):
        pass
    c.close()
    ph.wait_log(r"denied 127\.0\.0\.1:\d+ by --accept-proxy \(not a trusted proxy\)")
    assert srv.accepted == 0


def test_accept_proxy_header_then_bytes(pinhole, echo_server, free_port):
    """A v1 header and the first bytes in one segment: the bytes after the header reach
    the target, the header does not; --deny applies to the client the header names."""
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--accept-proxy", "127.0.0.0/8",
                 "--deny", "203.0.113.9", "-v")
    c = connect("127.0.0.1", port)
    c.sendall(b"PROXY TCP4 198.51.100.4 127.0.0.1 4444 80\r\nhello")
    got = b""
    while len(got) < 5:
        got += c.recv(100)
    assert got == b"hello"
    c.close()
    ph.wait_log(r"^c\d+ 198\.51\.100\.4:4444 -> ")
    c = connect("127.0.0.1", port)
    c.sendall(b"PROXY TCP4 203.0.113.9 127.0.0.1 4444 80\r\nhello")
    try:
        assert c.recv(100) == b""
    except ConnectionResetError:
        pass
    c.close()
    ph.wait_log(r"203\.0\.113\.9:4444 -> -: denied by --allow/--deny")


@pytest.mark.parametrize("junk,why", [
    (b"GET / HTTP/1.1\r\n\r\n", "no PROXY header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", "bad address or port"),
    (b"PROXY " + b"x" * 200, "without CRLF"),
])
def test_accept_proxy_bad_headers(pinhole, echo_server, free_port, junk, why):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--accept-proxy", "127.0.0.1",
                 "-v")
    c = connect("127.0.0.1", port)
    c.sendall(junk)
    try:
        assert c.recv(100) == b""
    except ConnectionResetError:
        pass
    c.close()
    ph.wait_log(why)
    assert srv.accepted == 0


def test_accept_proxy_silent_client_times_out(pinhole, echo_server, free_port):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--accept-proxy", "127.0.0.1",
                 "--connect-timeout", "300ms", "-v")
    c = connect("127.0.0.1", port)
    c.sendall(b"PROXY TCP4 1.2.3")  # and then nothing
    ph.wait_log(r"no PROXY header in time")
    c.close()
    assert srv.accepted == 0


def test_accept_proxy_bytes_while_connecting(pinhole, free_port):
    """After the header, the client's bytes may come while the target's connect is still
    in flight (here: its backlog is full): they wait and reach it, none is taken for a
    second header."""
    tport = free_port()
    t = socket.socket()
    t.bind(("127.0.0.1", tport))
    t.listen(0)
    fill = []
    try:
        for _ in range(4):  # fill the backlog so that pinhole's connect waits
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", tport))
            except BlockingIOError:
                pass
            fill.append(s)
        port = free_port()
        ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{tport}", "--accept-proxy", "127.0.0.1",
                     "--workers", "1", "--connect-timeout", "10s")
        c = connect("127.0.0.1", port)
        c.sendall(b"PROXY TCP4 10.1.2.3 10.1.2.4 1111 2222\r\n")
        c.sendall(b"hello ")
        c.sendall(b"world")
        conns, got_list = [], []
        t.setblocking(False)

        def step():
            try:
                a, _ = t.accept()
                a.setblocking(False)
                conns.append(a)
            except BlockingIOError:
                pass
            for a in conns:
                try:
                    d = a.recv(100)
                    if d:
                        got_list.append(d)
                except BlockingIOError:
                    pass
            return b"".join(got_list).endswith(b"hello world")

        wait_until(step, 8, "the bytes to reach the target")
        c.close()
        for a in conns:
            a.close()
        assert "where one must be" not in ph.log
    finally:
        for s in fill:
            s.close()
        t.close()
