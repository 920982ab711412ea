"""
`pinhole socks` as an HTTP proxy, spoken to by a python client: CONNECT tunnels, requests
in absolute form passed to the origin in origin form (with `Connection: close`), Basic
proxy authentication, and the status codes of what goes wrong.

    python client ──> pinhole socks 127.0.0.1:P ─┬─> origin 127.0.0.1:O (records each head)
                                                 ├─> echo 127.0.0.1:Q (CONNECT)
                                                 └─> 127.0.0.1:CLOSED, nosuchhost.invalid
"""

import base64
import os
import socket
import threading

import pytest

from conftest import (alloc_port, connect, echo_once, read_all, read_http_head, recv_exact, sha256,
                      start_socks, wait_until)

MiB = 1 << 20


class Origin:
    """An HTTP/1.1 origin server (a thread per connection) that records each request's head
    (request line, [(name, value)]) and body (Content-Length), and answers with a body
    naming the request line, then closes."""

    def __init__(self, tcp_server):
        self.lock = threading.Lock()
        self.requests = []
        self.srv = tcp_server(self._handle)
        self.port = self.srv.port

    def _handle(self, conn, peer):
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            d = conn.recv(65536)
            if not d:
                return
            buf += d
        head, _, body = bytes(buf).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:])]
        n = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
        while len(body) < n:
            d = conn.recv(65536)
            if not d:
                break
            body += d
        with self.lock:
            self.requests.append((lines[0], headers, body))
        answer = f"origin saw: {lines[0]}; {len(body)} body bytes".encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                     + str(len(answer)).encode() + b"\r\n\r\n" + answer)

    def one(self):
        """The only request the origin got: (request line, {lower name: [values]}, body)."""
        wait_until(lambda: self.requests, 5, "the origin to get a request")
        assert len(self.requests) == 1, self.requests
        line, headers, body = self.requests[0]
        d = {}
        for k, v in headers:
            d.setdefault(k.lower(), []).append(v)
        return line, d, body


@pytest.fixture
def origin(tcp_server):
    return Origin(tcp_server)


def exchange(port, request, timeout=5):
    """Sends request through the proxy; returns (status, headers, body up to EOF)."""
    c = connect("127.0.0.1", port)
    try:
        c.sendall(request)
        status, headers, rest = read_http_head(c)
        more, how = read_all(c, timeout)
        assert how in ("eof", "reset"), f"connection still open {timeout} s after the answer"
        return status, headers, rest + more
    finally:
        c.close()


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---------------------------------------------------------------------------------------------
# 1. absolute form: forwarded in origin form


def test_get_in_absolute_form_reaches_the_origin_in_origin_form(pinhole, origin):
    _, port = start_socks(pinhole)
    o = origin.port
    status, _, body = exchange(port, (
        f"GET http://127.0.0.1:{o}/a/b?c=d&e=%20f HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{o}\r\n"
        "User-Agent: pinhole-e2e\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "Connection: keep-alive\r\n"
        "Keep-Alive: timeout=300\r\n"
        "X-Custom: one, two\r\n"
        "Accept: */*\r\n\r\n").encode())
    assert status == 200
    assert body == b"origin saw: GET /a/b?c=d&e=%20f HTTP/1.1; 0 body bytes"
    line, h, _ = origin.one()
    assert line == "GET /a/b?c=d&e=%20f HTTP/1.1"
    assert h.get("host") == [f"127.0.0.1:{o}"]
    assert h.get("user-agent") == ["pinhole-e2e"] and h.get("x-custom") == ["one, two"]
    assert h.get("accept") == ["*/*"]
    assert h.get("connection") == ["close"], f"Connection headers {h.get('connection')}"
    assert "proxy-connection" not in h and "keep-alive" not in h, h


def test_absolute_form_without_path_or_host_header(pinhole, origin):
    """No path: `/`. No Host header (HTTP/1.0): pinhole adds one for the origin."""
    _, port = start_socks(pinhole)
    o = origin.port
    status, _, body = exchange(port, f"GET http://127.0.0.1:{o} HTTP/1.0\r\n\r\n".encode())
    assert status == 200 and body.startswith(b"origin saw: GET / HTTP/1.0;"), body
    line, h, _ = origin.one()
    assert line == "GET / HTTP/1.0"
    assert h.get("host") == [f"127.0.0.1:{o}"], h
    assert h.get("connection") == ["close"], h


def test_absolute_form_by_name(pinhole, origin):
    _, port = start_socks(pinhole)
    o = origin.port
    status, _, body = exchange(
        port, f"GET http://localhost:{o}/by-name HTTP/1.1\r\nHost: localhost:{o}\r\n\r\n".encode())
    assert status == 200 and body.startswith(b"origin saw: GET /by-name HTTP/1.1;"), body


def test_post_body_is_forwarded(pinhole, origin):
    _, port = start_socks(pinhole)
    o = origin.port
    payload = os.urandom(300_000)
    status, _, body = exchange(port, (
        f"POST http://127.0.0.1:{o}/upload HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload)
    assert status == 200
    assert body == f"origin saw: POST /upload HTTP/1.1; {len(payload)} body bytes".encode()
    line, _, got = origin.one()
    assert line == "POST /upload HTTP/1.1"
    assert sha256(got) == sha256(payload)


# ---------------------------------------------------------------------------------------------
# 2. CONNECT


def http_connect(port, authority, extra=b"", auth=None):
    """A CONNECT through the proxy; returns (socket, status, headers, bytes after the head)."""
    c = connect("127.0.0.1", port)
    req = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if auth:
        req += f"Proxy-Authorization: {auth}\r\n"
    try:
        c.sendall(req.encode() + b"\r\n" + extra)
        status, headers, rest = read_http_head(c)
    except BaseException:
        c.close()
        raise
    return c, status, headers, rest


def test_connect_tunnel(pinhole, echo_server):
    srv = echo_server()
    _, port = start_socks(pinhole)
    c, status, _, rest = http_connect(port, f"127.0.0.1:{srv.port}")
    try:
        assert status == 200 and rest == b""
        data = os.urandom(MiB)
        c.sendall(data)
        got = recv_exact(c, len(data))
        assert sha256(got) == sha256(data)
        c.shutdown(socket.SHUT_WR)  # the FIN reaches the echo server, whose FIN comes back
        assert c.recv(1) == b""
    finally:
        c.close()


def test_connect_by_name_and_bytes_right_after_the_head(pinhole, echo_server):
    """Bytes sent in the same write as the CONNECT head (a TLS ClientHello, often) go to the
    target, after the 200."""
    srv = echo_server()
    _, port = start_socks(pinhole, "--workers", "1")
    c, status, _, rest = http_connect(port, f"localhost:{srv.port}", extra=b"early bytes")
    try:
        assert status == 200
        assert rest + recv_exact(c, len(b"early bytes") - len(rest)) == b"early bytes"
        echo_once(c, b"and then some")
    finally:
        c.close()


def test_connect_ipv6(pinhole, echo_server, ipv6):
    srv = echo_server(host="::1")
    _, port = start_socks(pinhole)
    c, status, _, _ = http_connect(port, f"[::1]:{srv.port}")
    try:
        assert status == 200
        echo_once(c, b"v6 tunnel")
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# 3. what goes wrong: a status, then the connection is closed


def test_connect_failures_are_502(pinhole):
    _, port = start_socks(pinhole)
    for authority in (f"127.0.0.1:{alloc_port()}", "nosuchhost.invalid:80"):
        c, status, _, _ = http_connect(port, authority)
        try:
            assert status == 502, f"CONNECT {authority}: {status}, expected 502"
            _, how = read_all(c)
            assert how in ("eof", "reset"), f"CONNECT {authority}: still open after 502"
        finally:
            c.close()
    status, _, _ = exchange(port, f"GET http://127.0.0.1:{alloc_port()}/ HTTP/1.1\r\n"
                                  f"Host: x\r\n\r\n".encode())
    assert status == 502


def test_connect_timeout_is_504(pinhole, blackhole):
    _, port = start_socks(pinhole, "--connect-timeout", "1s")
    c, status, _, _ = http_connect(port, f"127.0.0.1:{blackhole}")
    c.close()
    assert status == 504, f"CONNECT to a port that drops SYNs: {status}, expected 504"
    status, _, _ = exchange(port, f"GET http://127.0.0.1:{blackhole}/ HTTP/1.1\r\n"
                                  "Host: x\r\n\r\n".encode())
    assert status == 504


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/file", "https://127.0.0.1/",
                                 "gopher://127.0.0.1:70/"])
def test_other_schemes_are_501(pinhole, url):
    _, port = start_socks(pinhole)
    status, _, _ = exchange(port, f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert status == 501, f"GET {url}: {status}"


def test_destination_rules_are_403(pinhole, origin, echo_server):
    srv = echo_server()
    _, port = start_socks(pinhole, "--deny-dest", "127.0.0.0/8", "--deny-dest", "::1/128")
    for authority in (f"127.0.0.1:{srv.port}", f"localhost:{srv.port}"):
        c, status, _, _ = http_connect(port, authority)
        c.close()
        assert status == 403, f"CONNECT {authority}: {status}"
    status, _, _ = exchange(port, f"GET http://localhost:{origin.port}/ HTTP/1.1\r\n"
                                  "Host: localhost\r\n\r\n".encode())
    assert status == 403
    assert srv.accepted == 0 and origin.requests == []


def test_proxy_authentication(pinhole, origin, echo_server):
    srv = echo_server()
    _, port = start_socks(pinhole, "--user", "alice:s3cret", "--user", "bob:pa:ss")
    target = f"127.0.0.1:{srv.port}"
    for auth in (None, basic("alice", "wrong"), basic("mallory", "s3cret"),
                 basic("alice", "s3cre"), "Basic " + base64.b64encode(b"alice").decode()):
        c, status, headers, _ = http_connect(port, target, auth=auth)
        try:
            assert status == 407, f"{auth}: {status}"
            assert headers.get("proxy-authenticate") == 'Basic realm="pinhole"', headers
            _, how = read_all(c)
            assert how in ("eof", "reset"), f"{auth}: still open after 407"
        finally:
            c.close()
    assert srv.accepted == 0
    # the right credentials; a password may hold a colon (the name ends at the first one)
    for user, pw in (("alice", "s3cret"), ("bob", "pa:ss")):
        c, status, _, _ = http_connect(port, target, auth=basic(user, pw))
        try:
            assert status == 200, f"{user}: {status}"
            echo_once(c, b"authenticated")
        finally:
            c.close()
    # absolute form: accepted, and the credentials stay with the proxy
    o = origin.port
    status, _, body = exchange(port, (
        f"GET http://127.0.0.1:{o}/secret HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\n"
        f"Proxy-Authorization: {basic('alice', 's3cret')}\r\n\r\n").encode())
    assert status == 200 and body.startswith(b"origin saw: GET /secret HTTP/1.1;"), body
    _, h, _ = origin.one()
    assert "proxy-authorization" not in h, f"the origin got the proxy's credentials: {h}"
    status, headers, _ = exchange(
        port, f"GET http://127.0.0.1:{o}/ HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\n\r\n".encode())
    assert status == 407 and headers.get("proxy-authenticate") == 'Basic realm="pinhole"'
    assert len(origin.requests) == 1
