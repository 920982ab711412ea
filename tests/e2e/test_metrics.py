"""
--metrics ADDR: Prometheus text exposition on GET /metrics, checked by Prometheus's own
promtool (Debian's prometheus package) and read back for the values traffic made.
"""

import re
import shutil
import socket
import subprocess
import urllib.request

import pytest
from conftest import connect, echo_once, listeners, run_pinhole, wait_until


def fetch(port, path="/metrics", method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=5) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def sample(text, name, **labels):
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return int(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} {labels} in:\n{text}")


def test_metrics_promtool_and_values(pinhole, echo_server, free_port):
    srv = echo_server()
    port, mport = free_port(), free_port()
    pinhole(f"tcp+udp://127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--name", "web",
            "--metrics", f"127.0.0.1:{mport}", "--control", "none", "--deny", "127.0.0.9",
            ready=False).wait_log("forwarding tcp\\+udp")
    wait_until(lambda: listeners(mport), 5, "the metrics listener")
    for _ in range(2):
        c = connect("127.0.0.1", port)
        echo_once(c, b"abc")
        c.close()
    s = socket.socket()
    s.bind(("127.0.0.9", 0))
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
        s.recv(10)
    except OSError:
        pass
    s.close()
    status, headers, text = fetch(mport)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (scripts/deps.sh test installs prometheus)")
    r = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: sample(fetch(mport)[2], "pinhole_connections_active", rule="web") == 0,
               5, "the connections to end")
    text = fetch(mport)[2]
    assert sample(text, "pinhole_connections_total", rule="web") == 2
    assert sample(text, "pinhole_bytes_total", rule="web", direction="up") == 6
    assert sample(text, "pinhole_bytes_total", rule="web", direction="down") == 6
    assert sample(text, "pinhole_spliced_bytes_total", rule="web") == 12
    assert sample(text, "pinhole_refused_total", rule="web", reason="denied") == 1
    assert sample(text, "pinhole_udp_sessions_active", rule="web") == 0
    assert re.search(r'^pinhole_info\{version="[^"]+"\} 1$', text, re.M)


def test_metrics_http_answers(pinhole, echo_server, free_port):
    srv = echo_server()
    mport = free_port()
    pinhole(f"127.0.0.1:{free_port()}", f"127.0.0.1:{srv.port}", "--metrics",
            f"127.0.0.1:{mport}", "--control", "none")
    wait_until(lambda: listeners(mport), 5, "the metrics listener")
    assert fetch(mport, "/")[0] == 404
    assert fetch(mport, "/metricsx")[0] == 404
    assert fetch(mport, "/metrics?x=1")[0] == 200
    assert fetch(mport, method="POST")[0] == 405
    status, headers, body = fetch(mport, method="HEAD")
    assert status == 200 and body == "" and int(headers["Content-Length"]) > 100
    # a bad request: 400, and the server keeps serving
    c = connect("127.0.0.1", mport)
    c.sendall(b"GET /metrics\r\n\r\n")
    assert c.recv(100).startswith(b"HTTP/1.1 400 ")
    c.close()
    # a request that never ends is cut at 8 KiB
    c = connect("127.0.0.1", mport)
    try:
        c.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-A: " + b"a" * 9000)
        assert c.recv(100).startswith(b"HTTP/1.1 400 ")
    except ConnectionResetError:
        pass
    c.close()
    assert fetch(mport)[0] == 200


def test_metrics_bad_address(free_port):
    r = run_pinhole("forward", f"127.0.0.1:{free_port()}", "127.0.0.1:9", "--metrics",
                    "localhost:9100")
    assert r.returncode == 2 and "an address to listen on" in r.stderr
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        r = run_pinhole("forward", f"127.0.0.1:{free_port()}", "127.0.0.1:9", "--metrics",
                        f"127.0.0.1:{blocker.getsockname()[1]}", "--control", "none")
        assert r.returncode == 1 and "--metrics 127.0.0.1:" in r.stderr and "in use" in r.stderr
    finally:
        blocker.close()
