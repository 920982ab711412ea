"""
`pinhole socks` with real clients: curl through every kind of proxy the port speaks
(--socks5, --socks5-hostname, --socks4, --socks4a, -x http://) to an HTTP and an HTTPS
server, with and without users; proxychains4 putting a real program through it; the
command line (--help, the start line, --open); a `socks` line in `pinhole run FILE`; and
1,000 SOCKS5 clients at once.

    curl ─────────────┐                               ┌─> http.server 127.0.0.1:H (+ ::1)
    proxychains4 curl ├─> pinhole socks 127.0.0.1:P ──┼─> https (self-signed) 127.0.0.1:S
    1000 x python ────┘   --source 127.0.0.5          └─> echo 127.0.0.1:Q

--source 127.0.0.5 makes what came through pinhole recognisable: the servers see that
address (GET /peer answers it), and a client that went around the proxy shows as 127.0.0.1.
"""

import errno
import os
import re
import selectors
import signal
import socket
import struct
import time

import pytest

from conftest import (READY_TIMEOUT_S, alloc_port, connect, echo_once, listeners, read_all,
                      recv_exact, run_peer, run_pinhole, sha256, socks5_auth_msg,
                      socks5_connect, start_socks, wait_until)

VIA = "127.0.0.5"  # pinhole's --source in these tests


def curl(*args, timeout=25, check=True):
    """curl with a deadline. --noproxy "" undoes the NO_PROXY=* that run_peer's environment
    sets (which would send curl around any proxy)."""
    return run_peer(["curl", "--silent", "--show-error", "--noproxy", "", "--max-time",
                     str(timeout - 5), "--connect-timeout", "5", *args],
                    timeout=timeout, check=check)


# (name, curl options for the proxy at 127.0.0.1:{port}, host to put in the URL): the
# "hostname" kinds hand the name to pinhole, the others resolve it first
KINDS = {
    "socks5": (["--socks5", "127.0.0.1:{port}"], "127.0.0.1"),
    "socks5-hostname": (["--socks5-hostname", "127.0.0.1:{port}"], "localhost"),
    "socks4": (["--socks4", "127.0.0.1:{port}"], "127.0.0.1"),
    "socks4a": (["--socks4a", "127.0.0.1:{port}"], "localhost"),
    "http": (["-x", "http://127.0.0.1:{port}"], "127.0.0.1"),
    "http-tunnel": (["-x", "http://127.0.0.1:{port}", "--proxytunnel"], "127.0.0.1"),
}


def proxy_opts(kind, port):
    opts, host = KINDS[kind]
    return [o.format(port=port) for o in opts], host


# ---------------------------------------------------------------------------------------------
# 1. curl through each kind of proxy, to HTTP and HTTPS


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_curl_through_each_kind(pinhole, web, kind, scheme):
    """http:// through -x http:// is an absolute-form GET; everything else a tunnel."""
    _, port = start_socks(pinhole, "--source", VIA)
    opts, host = proxy_opts(kind, port)
    tls = ["--cacert", web.cacert] if scheme == "https" else []
    r = curl("--fail", *opts, *tls, web.url(scheme, "/index.html", host))
    assert r.stdout == web.index
    r = curl("--fail", *opts, *tls, web.url(scheme, "/peer", host))
    assert r.stdout.decode() == VIA, "the request did not come through pinhole"
    r = curl("--fail", *opts, *tls, web.url(scheme, "/big.bin", host))
    assert len(r.stdout) == len(web.big) and sha256(r.stdout) == sha256(web.big)
    r = curl(*opts, *tls, "--output", "/dev/null", "--write-out", "%{http_code}",
             web.url(scheme, "/missing", host))
    assert r.stdout == b"404"


def test_hostname_kinds_hand_the_name_to_pinhole(pinhole, web):
    """With `--allow-dest localhost` only the name gets through: --socks5-hostname and
    --socks4a send it, --socks5 and --socks4 send the address curl resolved it to."""
    _, port = start_socks(pinhole, "--allow-dest", "localhost")
    url = web.url("http", "/index.html", "localhost")
    for kind in ("socks5-hostname", "socks4a", "http"):
        opts, _ = proxy_opts(kind, port)
        assert curl("--fail", *opts, url).stdout == web.index, kind
    for kind in ("socks5", "socks4"):
        opts, _ = proxy_opts(kind, port)
        r = curl(*opts, url, check=False)
        assert r.returncode != 0 and r.stdout == b"", \
            f"curl {kind} reached {url} by address through --allow-dest localhost"


# ---------------------------------------------------------------------------------------------
# 2. users


def test_curl_with_credentials(pinhole, web):
    _, port = start_socks(pinhole, "--user", "alice:s3cret", "--source", VIA)
    p = f"127.0.0.1:{port}"
    good = [
        ["--socks5", p, "--proxy-user", "alice:s3cret"],
        ["--socks5-hostname", p, "--proxy-user", "alice:s3cret"],
        ["-x", f"socks5://alice:s3cret@{p}"],
        ["-x", f"socks5h://alice:s3cret@{p}"],
        ["-x", f"http://alice:s3cret@{p}"],
        ["-x", f"http://{p}", "--proxy-user", "alice:s3cret"],
    ]
    for opts in good:
        for scheme in ("http", "https"):
            r = curl("--fail", *opts, "--cacert", web.cacert, web.url(scheme, "/peer"))
            assert r.stdout.decode() == VIA, (opts, scheme)
    bad = [
        ["--socks5", p],
        ["--socks5", p, "--proxy-user", "alice:wrong"],
        ["-x", f"socks5h://bob:s3cret@{p}"],
        ["--socks4", p],
        ["--socks4a", p],
        ["-x", f"socks4a://alice:s3cret@{p}"],  # SOCKS4 has no passwords: refused
    ]
    for opts in bad:
        r = curl("--fail", *opts, web.url("http", "/peer"), check=False)
        assert r.returncode != 0 and r.stdout == b"", f"curl {opts} got through"
    # HTTP: 407 without credentials or with wrong ones, for both a tunnel and a GET
    for opts in (["-x", f"http://{p}"], ["-x", f"http://alice:wrong@{p}"]):
        r = curl(*opts, "--output", "/dev/null", "--write-out", "%{http_code}",
                 web.url("http", "/peer"), check=False)
        assert r.stdout == b"407", (opts, r.stdout)
        r = curl(*opts, "--cacert", web.cacert, "--write-out", "%{http_connect}",
                 web.url("https", "/peer"), check=False)
        assert r.returncode != 0 and r.stdout == b"407", (opts, r.stdout)


# ---------------------------------------------------------------------------------------------
# 3. proxychains4: a program that knows nothing of proxies, put through pinhole


PROXYCHAINS_CONF = """\
strict_chain
proxy_dns
remote_dns_subnet 224
quiet_mode
tcp_read_time_out 8000
tcp_connect_time_out 5000
# only what is not loopback stays local: 127.0.0.1 goes through the proxy
localnet 10.0.0.0/255.0.0.0
[ProxyList]
{proxy}
"""


@pytest.mark.parametrize("proxy", ["socks5", "socks4", "http"])
def test_proxychains4(pinhole, web, echo_server, tmp_path, proxy):
    srv = echo_server()
    users = ["--user", "alice:s3cret"] if proxy != "socks4" else []
    ph, port = start_socks(pinhole, "--source", VIA, *users)
    line = f"{proxy} 127.0.0.1 {port}" + (" alice s3cret" if users else "")
    conf = tmp_path / "proxychains.conf"
    conf.write_text(PROXYCHAINS_CONF.format(proxy=line))
    pc = ["proxychains4", "-q", "-f", str(conf)]
    r = run_peer([*pc, "curl", "--silent", "--show-error", "--fail", "--noproxy", "*",
                  "--max-time", "15", web.url("http", "/peer")], timeout=20)
    assert r.stdout.decode() == VIA, f"curl under proxychains4 came from {r.stdout!r}"
    r = run_peer([*pc, "curl", "--silent", "--show-error", "--fail", "--noproxy", "*",
                  "--max-time", "15", "--cacert", web.cacert, web.url("https", "/big.bin")],
                 timeout=20)
    assert sha256(r.stdout) == sha256(web.big)
    data = os.urandom(200_000)
    r = run_peer([*pc, "socat", "-t", "5", "-T", "10", "-", f"TCP:127.0.0.1:{srv.port}"],
                 input=data, timeout=20)
    assert sha256(r.stdout) == sha256(data)
    wait_until(lambda: srv.accepted == 1, 5, "the echo server to see socat")
    assert srv.peers[0][0] == VIA, f"socat reached the echo server from {srv.peers[0]}"
    st = ph.stats()
    assert st["accepted"] == 3, st


# ---------------------------------------------------------------------------------------------
# 4. the command line


@pytest.mark.parametrize("args", [["socks", "--help"], ["socks", "-h"], ["help", "socks"]])
def test_help(args):
    r = run_pinhole(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage: pinhole socks [LISTEN]"), r.stdout[:200]
    for opt in ("--user NAME:PASS", "--users FILE", "--open", "--allow-dest", "--deny-dest",
                "--handshake-timeout DUR", "--udp-timeout DUR", "--allow CIDR",
                "--max-conns N", "--connect-timeout DUR", "--idle-timeout DUR",
                "--source ADDR", "--name NAME"):
        assert opt in r.stdout, opt


def start_line(ph):
    return next(m for m in ph.messages() if "socks proxy on " in m)


def test_start_line(pinhole, tmp_path):
    ph, port = start_socks(pinhole, "--workers", "2")
    assert re.fullmatch(rf"socks proxy on 127\.0\.0\.1:{port} \(SOCKS5, SOCKS4a, HTTP; "
                        r"2 workers\)", start_line(ph)), start_line(ph)
    ph, port = start_socks(pinhole, "--workers", "3", "--name", "web", "--user", "a:b",
                           "--user", "c:d")
    assert re.fullmatch(rf"web: socks proxy on 127\.0\.0\.1:{port} \(SOCKS5, SOCKS4a, HTTP; "
                        r"3 workers, users: 2\)", start_line(ph)), start_line(ph)
    users = tmp_path / "users"
    users.write_text("x:1\ny:2\nz:3\n")
    ph, port = start_socks(pinhole, "--workers", "1", "--users", users, "--user", "w:0")
    assert start_line(ph).endswith("1 workers, users: 4)"), start_line(ph)


@pytest.mark.parametrize("listen", ["0.0.0.0:{port}", ":{port}", "[::]:{port}"])
def test_public_listen_needs_open_or_users(pinhole, echo_server, request, listen):
    if "[" in listen:
        request.getfixturevalue("ipv6")
    srv = echo_server()
    port = alloc_port()
    addr = listen.format(port=port)
    via = "::1" if addr.startswith("[") else "127.0.0.1"  # [::] is IPv6 only, : both
    r = run_pinhole("socks", addr)
    assert r.returncode == 2, f"socks {addr} without users: exit {r.returncode}"
    assert "--open" in r.stderr, r.stderr
    assert not listeners(port)
    # the echo server is on this host: --allow-dest lifts the default that keeps a rule
    # listening beyond loopback away from it (test_socks_local.py)
    ph = pinhole("socks", addr, "--open", "--allow-dest", "127.0.0.1")
    assert re.search(r"\d+ workers, open[^,()]*\)$", start_line(ph)), start_line(ph)
    s, _ = socks5_connect(port, "127.0.0.1", srv.port, proxy_host=via)
    echo_once(s, b"open proxy")
    s.close()
    ph.stop()
    wait_until(lambda: not listeners(port), 5, f"port {port} to be free again")
    ph = pinhole("socks", addr, "--user", "alice:s3cret", "--allow-dest", "127.0.0.1")
    assert "users: 1" in start_line(ph) and "open" not in start_line(ph), start_line(ph)
    s, _ = socks5_connect(port, "127.0.0.1", srv.port, user="alice", password="s3cret",
                          proxy_host=via)
    echo_once(s, b"with users")
    s.close()


@pytest.mark.parametrize("host", ["127.0.0.2", "[::1]"])
def test_any_loopback_listen_needs_no_open(pinhole, echo_server, request, host):
    if ":" in host:
        request.getfixturevalue("ipv6")
    srv = echo_server()
    ph, port = start_socks(pinhole, "--workers", "1", host=host)
    assert start_line(ph).endswith("(SOCKS5, SOCKS4a, HTTP; 1 workers)"), start_line(ph)
    s, _ = socks5_connect(port, "127.0.0.1", srv.port, proxy_host=host.strip("[]"))
    echo_once(s, b"loopback")
    s.close()


def test_default_listen_address(pinhole):
    """No LISTEN: 127.0.0.1:1080 (skipped when something else has that port)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 1080))
    except OSError:
        pytest.skip("port 1080 is in use here")
    finally:
        s.close()
    ph = pinhole("socks", "--workers", "1")
    assert start_line(ph) == "socks proxy on 127.0.0.1:1080 (SOCKS5, SOCKS4a, HTTP; 1 workers)"
    assert all("127.0.0.1:1080" in ln for ln in listeners(1080)), listeners(1080)


def test_client_rules(pinhole, echo_server):
    """--allow/--deny work as for forward: a client kept out never gets to the handshake."""
    srv = echo_server()
    _, port = start_socks(pinhole, "--allow", "127.0.0.2/32")
    s, _ = socks5_connect(port, "127.0.0.1", srv.port, source="127.0.0.2")
    echo_once(s, b"let in")
    s.close()
    try:
        c = connect("127.0.0.1", port, source="127.0.0.3")
    except ConnectionResetError:  # the reset can beat connect()'s own return on loopback
        c = None
    if c is not None:
        try:
            c.sendall(b"\x05\x01\x00")
        except OSError:
            pass
        data, how = read_all(c)
        c.close()
        assert data == b"" and how in ("eof", "reset"), f"127.0.0.3 got {data!r}, '{how}'"
    assert srv.accepted == 1


def test_max_conns(pinhole, echo_server):
    """--max-conns counts clients: one over it is refused before its handshake."""
    srv = echo_server()
    ph, port = start_socks(pinhole, "--max-conns", "2")
    held = [socks5_connect(port, "127.0.0.1", srv.port)[0] for _ in range(2)]
    try:
        try:
            over = connect("127.0.0.1", port)
        except ConnectionResetError:  # the reset can beat connect()'s own return on loopback
            over = None
        if over is not None:
            try:
                over.sendall(b"\x05\x01\x00")
            except OSError:
                pass
            data, how = read_all(over)
            over.close()
            assert data == b"" and how in ("eof", "reset"), f"3rd client got {data!r}, '{how}'"
        for i, c in enumerate(held):
            echo_once(c, f"held {i}".encode())
        held.pop().close()
        wait_until(lambda: ph.stats()["active"] == 1, 5, "the closed client to be gone")
        c, _ = socks5_connect(port, "127.0.0.1", srv.port)
        held.append(c)
        echo_once(c, b"room again")
    finally:
        for c in held:
            c.close()
    assert srv.accepted == 3


# (arguments after `socks 127.0.0.1:PORT`, a substring of the message); a password is
# never echoed
USAGE_ERRORS = [
    (["--user", "nocolon"], "nocolon"),
    (["--user", ":s3cret"], "--user"),
    (["--user", "alice:"], "--user"),
    (["--users", "/nonexistent/users"], "/nonexistent/users"),
    (["--allow-dest", "10.0.0.0/33"], "10.0.0.0/33"),
    (["--deny-dest", "bad_name!"], "bad_name!"),
    (["--handshake-timeout", "soon"], "soon"),
    (["--frobnicate"], "--frobnicate"),
]


@pytest.mark.parametrize("args,word", USAGE_ERRORS)
def test_usage_errors(args, word):
    port = alloc_port()
    r = run_pinhole("socks", f"127.0.0.1:{port}", *args)
    assert r.returncode == 2, f"{args}: exit {r.returncode}: {r.stderr}"
    assert word in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "s3cret" not in r.stderr, r.stderr
    assert not listeners(port)


# ---------------------------------------------------------------------------------------------
# 5. a config file


def test_socks_line_in_a_config_file(pinhole, echo_server, tmp_path, web):
    srv = echo_server()
    sp, fp = alloc_port(), alloc_port()
    conf = tmp_path / "pinhole.conf"
    conf.write_text(f"# a socks rule and a forward rule\n"
                    f"socks 127.0.0.1:{sp} --user alice:s3cret --name sx --source {VIA}\n"
                    f"forward 127.0.0.1:{fp} 127.0.0.1:{srv.port} --name fw\n")
    r = run_pinhole("run", conf, "--check")
    assert r.returncode == 0, r.stdout + r.stderr
    ph = pinhole("run", conf, "--workers", "2", ready=False)
    ph.wait_log(rf"^sx: socks proxy on 127\.0\.0\.1:{sp} \(SOCKS5, SOCKS4a, HTTP; 2 workers, "
                r"users: 1\)$", timeout=READY_TIMEOUT_S)
    ph.wait_log(r"^fw: forwarding tcp ", timeout=READY_TIMEOUT_S)
    wait_until(lambda: listeners(sp) and listeners(fp), 5, "both rules to listen")
    r = curl("--fail", "-x", f"socks5h://alice:s3cret@127.0.0.1:{sp}", web.url("http", "/peer"))
    assert r.stdout.decode() == VIA
    r = curl("--fail", "-x", f"socks5h://127.0.0.1:{sp}", web.url("http", "/peer"), check=False)
    assert r.returncode != 0, "no credentials got through"
    c = connect("127.0.0.1", fp)
    echo_once(c, b"the forward rule beside it")
    c.close()


def test_reload_changes_the_users(pinhole, echo_server, tmp_path):
    """SIGHUP with a changed socks line: the new password works, the old one no longer;
    a session from before the reload carries on."""
    srv = echo_server()
    sp = alloc_port()
    conf = tmp_path / "pinhole.conf"
    conf.write_text(f"socks 127.0.0.1:{sp} --user alice:one --name sx\n")
    ph = pinhole("run", conf, ready=False)
    ph.wait_log(r"^sx: socks proxy on ", timeout=READY_TIMEOUT_S)
    wait_until(lambda: listeners(sp), 5, "the socks rule to listen")
    before, _ = socks5_connect(sp, "127.0.0.1", srv.port, user="alice", password="one")
    try:
        conf.write_text(f"socks 127.0.0.1:{sp} --user alice:two --name sx\n")
        ph.send_signal(signal.SIGHUP)
        ph.wait_log(r"^reloaded ", timeout=10)
        s, _ = socks5_connect(sp, "127.0.0.1", srv.port, user="alice", password="two")
        echo_once(s, b"new password")
        s.close()
        s = connect("127.0.0.1", sp)
        s.sendall(b"\x05\x01\x02" + socks5_auth_msg("alice", "one"))
        assert recv_exact(s, 2) == b"\x05\x02"
        st = recv_exact(s, 2)
        s.close()
        assert st[1] != 0, "the old password still works after the reload"
        echo_once(before, b"from before the reload")
    finally:
        before.close()


def test_bad_socks_line_is_a_problem(tmp_path):
    conf = tmp_path / "pinhole.conf"
    conf.write_text(f"socks 0.0.0.0:{alloc_port()}\n"
                    f"socks 127.0.0.1:{alloc_port()} --user broken\n")
    r = run_pinhole("run", conf, "--check")
    assert r.returncode == 2, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert f"{conf}:1: " in out and "--open" in out, out
    assert f"{conf}:2: " in out, out


# ---------------------------------------------------------------------------------------------
# 6. 1,000 SOCKS5 clients at once

N = 1000


def many_socks5_echo(port, target_port, n, timeout=30):
    """n SOCKS5 clients at once, each: greeting, CONNECT to the echo server, its own payload
    and its echo, all before any closes. Returns ({index: echo}, {index: error})."""
    sel = selectors.DefaultSelector()
    tag = os.urandom(4).hex()
    request = b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", target_port)
    state, payloads, replies, errors = {}, {}, {}, {}

    def fail(s, st, why):
        errors[st["i"]] = why
        sel.unregister(s)

    try:
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex(("127.0.0.1", port))
            if rc not in (0, errno.EINPROGRESS):
                errors[i] = os.strerror(rc)
                s.close()
                continue
            payload = payloads[i] = f"socks {tag} #{i:05d} {'.' * (i % 53)}\n".encode()
            st = {"i": i, "out": bytearray(b"\x05\x01\x00"), "in": bytearray(),
                  "stage": "method", "payload": payload}
            state[s] = st
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, st)
        deadline = time.monotonic() + timeout
        while len(replies) + len(errors) < n and time.monotonic() < deadline:
            for key, ev in sel.select(timeout=0.2):
                s, st = key.fileobj, key.data
                try:
                    if ev & selectors.EVENT_WRITE and st["out"]:
                        k = s.send(st["out"])
                        del st["out"][:k]
                    if not st["out"]:
                        sel.modify(s, selectors.EVENT_READ, st)
                    if not ev & selectors.EVENT_READ:
                        continue
                    d = s.recv(4096)
                    if not d:
                        fail(s, st, f"EOF in stage {st['stage']} after {bytes(st['in'])!r}")
                        continue
                    st["in"] += d
                    if st["stage"] == "method" and len(st["in"]) >= 2:
                        if st["in"][:2] != b"\x05\x00":
                            fail(s, st, f"method reply {bytes(st['in'])!r}")
                            continue
                        del st["in"][:2]
                        st["out"] += request
                        st["stage"] = "reply"
                        sel.modify(s, selectors.EVENT_READ | selectors.EVENT_WRITE, st)
                    if st["stage"] == "reply" and len(st["in"]) >= 5:
                        size = {1: 10, 4: 22, 3: 7 + st["in"][4]}.get(st["in"][3], 0)
                        if st["in"][1] != 0 or size == 0:
                            fail(s, st, f"CONNECT reply {bytes(st['in'])!r}")
                            continue
                        if len(st["in"]) < size:
                            continue
                        del st["in"][:size]
                        st["out"] += st["payload"]
                        st["stage"] = "echo"
                        sel.modify(s, selectors.EVENT_READ | selectors.EVENT_WRITE, st)
                    if st["stage"] == "echo" and len(st["in"]) >= len(st["payload"]):
                        replies[st["i"]] = bytes(st["in"])
                        sel.unregister(s)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    fail(s, st, repr(e))
        for s, st in state.items():
            if st["i"] not in replies and st["i"] not in errors:
                errors[st["i"]] = f"unfinished in stage {st['stage']} at the deadline"
        wrong = {i: r for i, r in replies.items() if r != payloads[i]}
        assert not wrong, f"{len(wrong)} wrong echoes, e.g. {sorted(wrong.items())[:3]}"
    finally:
        for s in state:
            s.close()
        sel.close()
    return replies, errors


def test_1000_concurrent_socks5_clients(pinhole, echo_server):
    srv = echo_server()
    ph, port = start_socks(pinhole)
    t0 = time.monotonic()
    replies, errors = many_socks5_echo(port, srv.port, N, timeout=30)
    elapsed = time.monotonic() - t0
    assert not errors, f"{len(errors)} of {N} failed, e.g. {sorted(errors.items())[:5]}"
    assert len(replies) == N
    assert srv.accepted == N
    assert srv.max_live == N, f"only {srv.max_live} connections were open at once"
    ph.stop()
    st = ph.final_stats()
    assert st["accepted"] == N and st["active"] == 0 and st["errors"] == 0, st
    print(f"{N} concurrent SOCKS5 echoes in {elapsed:.2f} s")

