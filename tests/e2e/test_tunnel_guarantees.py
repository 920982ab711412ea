"""
The relay's visitors and the client's streams get what every other listener has: an ACL
(`server --allow/--deny` for every public port, `expose --allow/--deny` carried in REGISTER
and enforced by the relay at accept), a close line per visitor at -v, and counters in
`status --json` and in the Prometheus metrics.

    visitors from 127.0.0.1     pinhole server 127.0.0.1:R          pinhole expose LOCAL
    and from 127.0.0.9    --->  public ports 127.0.0.1:PUB  <====   --via 127.0.0.1:R --> echo
    (bound source addresses)    [--allow/--deny] [--metrics]  TLS   [--allow/--deny] [-v]

The relay fixtures (keys, start_relay, start_expose...) are test_tunnel.py's. Readiness is
polled (log lines, `ss`), never slept for; every wait is bounded.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import (READY_TIMEOUT_S, alloc_port, connect, echo_once, listeners,
                      run_pinhole, set_rst, wait_until)
from test_metrics import fetch
from test_targets import start_dnsmasq
from test_tunnel import (echo, keys, procs, start_expose, start_relay,  # noqa: F401
                         status_json, wait_public)

OTHER = "127.0.0.9"  # a second loopback address: the visitor an ACL tells apart


def visit(port, source, msg=b"hello\n"):
    """A visitor from source through port: 'ok' when its bytes come back, else how it
    ended ('reset', 'eof', 'timeout')."""
    try:
        c = connect("127.0.0.1", port, source=source)
    except ConnectionResetError:
        return "reset"
    try:
        try:
            c.sendall(msg)
            got = b""
            while len(got) < len(msg):
                d = c.recv(len(msg) - len(got))
                if not d:
                    return "eof"
                got += d
            return "ok" if got == msg else "garbled"
        except ConnectionResetError:
            return "reset"
        except socket.timeout:
            return "timeout"
    finally:
        c.close()


def sample(text, metric, **labels):
    """The value of metric's sample with labels (name_ for the label "name")."""
    want = [f'{k.rstrip("_")}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(metric + "{") and all(w in line for w in want):
            return int(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {metric} {labels} in:\n{text}")


def service(relay, pub):
    return next(s for s in status_json(relay.ctl)["relay"]["services"] if s["port"] == pub)


def test_server_deny_resets_visitors_of_every_port(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys, verbose=True, extra=("--deny", OTHER))
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", "--name", "a")
    y = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", "--name", "b",
                     known=tmp_path / "known2")
    for pub in (wait_public(x), wait_public(y)):
        assert visit(pub, OTHER) in ("reset", "eof"), f"{OTHER} got through --deny on {pub}"
        assert visit(pub, "127.0.0.1") == "ok"
        svc = service(relay, pub)
        assert svc["denied"] == 1 and svc["refused"] == 0 and svc["visitors"] == 1, svc
        relay.proc.wait_log(rf"^relay tcp port {pub} [ab]: denied {re.escape(OTHER)}:\d+ by the "
                            r"relay's --allow/--deny$")
    text = run_pinhole("status", "--control", relay.ctl).stdout
    assert re.search(r"1 visitors \([01] now\), 0 refused, 1 denied", text), text


def test_expose_acl_is_enforced_by_the_relay(procs, tmp_path, keys, echo_server):
    """expose's rules travel in REGISTER, in order (first match wins), and the relay
    resets the visitors they refuse before the client hears of them."""
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    only = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                        "--allow", "127.0.0.1/32", "--name", "only",
                        control=tmp_path / "x.sock")
    first = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}",
                         "--deny", "127.0.0.1", "--allow", "127.0.0.0/8", "--deny", "0.0.0.0/0",
                         "--name", "first", known=tmp_path / "known2")
    p_only, p_first = wait_public(only), wait_public(first)
    assert visit(p_only, OTHER) in ("reset", "eof")
    assert visit(p_only, "127.0.0.1") == "ok"
    assert visit(p_first, "127.0.0.1") in ("reset", "eof")
    assert visit(p_first, OTHER) == "ok"
    a, b = service(relay, p_only), service(relay, p_first)
    assert (a["denied"], a["visitors"], a["acl"]) == (1, 1, 1), a
    assert (b["denied"], b["visitors"], b["acl"]) == (1, 1, 3), b
    rules = status_json(tmp_path / "x.sock")["expose"][0]["rules"]
    assert rules[0]["acl"] == 1 and rules[0]["visitors"] == 1, rules


def udp_visit(port, source, msg):
    """A datagram from source to port: the answer, or None when none came (a few tries)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.3)
    try:
        s.bind((source, 0))
        for _ in range(5):  # UDP: a lost datagram is sent again, boundedly
            s.sendto(msg, ("127.0.0.1", port))
            try:
                return s.recvfrom(65536)[0]
            except socket.timeout:
                continue
        return None
    finally:
        s.close()


def test_udp_peers_are_judged_too(procs, tmp_path, keys, udp_echo):
    """A UDP service's peers meet the same rules: a denied peer's datagrams are dropped
    (and counted) before a flow is made for it."""
    srv = udp_echo(tag=b"echo:")
    relay = start_relay(procs, tmp_path, keys, verbose=True)
    x = start_expose(procs, tmp_path, keys, relay.port, f"udp://127.0.0.1:{srv.port}",
                     "--deny", OTHER, "--name", "dns")
    pub = wait_public(x)
    assert udp_visit(pub, "127.0.0.1", b"hi") == b"echo:hi"
    assert udp_visit(pub, OTHER, b"hi") is None
    svc = service(relay, pub)
    assert svc["denied"] >= 1 and svc["datagrams"] >= 1, svc
    relay.proc.wait_log(rf"^relay udp port {pub} dns: denied {re.escape(OTHER)}:\d+ by the "
                        r"service's --allow/--deny$")
    assert len(srv.ports()) == 1, srv.ports()  # no flow for the denied peer


@pytest.mark.parametrize("args,word,why", [
    (["--allow", "127.0.0.*"], "--allow '127.0.0.*'", "a CIDR"),
    (["--deny", "10.0.0.0/33"], "--deny '10.0.0.0/33'", "prefix length"),
    (["--allow", "10.0.0.1"] * 33, "--allow", "at most 32"),
])
def test_expose_acl_words(args, word, why):
    r = run_pinhole("expose", "127.0.0.1:1", "--via", "127.0.0.1:1", *args)
    assert r.returncode == 2 and word in r.stderr and why in r.stderr, r.stderr


def test_server_acl_words():
    r = run_pinhole("server", "--deny", "10.0.0.0/8x")
    assert r.returncode == 2 and "--deny '10.0.0.0/8x'" in r.stderr, r.stderr
    r = run_pinhole("server", "--help")
    assert "--allow CIDR" in r.stdout and "--deny CIDR" in r.stdout, r.stdout
    r = run_pinhole("expose", "--help")
    assert "--allow CIDR" in r.stdout and "--deny CIDR" in r.stdout, r.stdout


def test_close_line_per_visitor_at_v(procs, tmp_path, keys, echo_server):
    """-v: one line per visitor on the relay and per stream on the client, in forward's
    shape (who, where, why, bytes each way, time); a reset says so."""
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys, verbose=True)
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", "-v",
                     "--name", "echo")
    pub = wait_public(x)
    c = connect("127.0.0.1", pub)
    echo_once(c, b"12345")
    cport = c.getsockname()[1]
    c.close()
    relay.proc.wait_log(rf"^s\d+ 127\.0\.0\.1:{cport} -> 127\.0\.0\.1:{pub}: closed, 5 bytes "
                        rf"up, 5 down, \d+ ms \(relay tcp port {pub} echo\)$", timeout=10)
    x.wait_log(rf"^s\d+ 127\.0\.0\.1:{cport} -> 127\.0\.0\.1:{srv.port}: closed, 5 bytes up, "
               rf"5 down, \d+ ms \(expose 127\.0\.0\.1:{srv.port} echo\)$", timeout=10)
    # a visitor that resets: the relay's line says why, and the client's too
    c = connect("127.0.0.1", pub)
    echo_once(c, b"abc")
    cport = c.getsockname()[1]
    set_rst(c)
    c.close()
    relay.proc.wait_log(rf"^s\d+ 127\.0\.0\.1:{cport} -> 127\.0\.0\.1:{pub}: socket error: "
                        r"Connection reset by peer, 3 bytes up, 3 down", timeout=10)
    x.wait_log(rf"^s\d+ 127\.0\.0\.1:{cport} -> 127\.0\.0\.1:{srv.port}: reset by the peer, "
               r"3 bytes up, 3 down", timeout=10)


def test_metrics_of_the_relay_and_the_client(procs, tmp_path, keys, echo_server):
    srv = echo_server(handler=echo)
    rm, xm = alloc_port(), alloc_port()
    relay = start_relay(procs, tmp_path, keys,
                        extra=("--deny", OTHER, "--metrics", f"127.0.0.1:{rm}"))
    x = start_expose(procs, tmp_path, keys, relay.port, f"127.0.0.1:{srv.port}", "--name",
                     "web", "--max-conns", "1", "--metrics", f"127.0.0.1:{xm}")
    pub = wait_public(x)
    wait_until(lambda: listeners(rm) and listeners(xm), READY_TIMEOUT_S, "the metrics listeners")
    for _ in range(2):
        assert visit(pub, "127.0.0.1", b"abcd") == "ok"
        wait_until(lambda: service(relay, pub)["live"] == 0, 10, "the visitor's slot")
    assert visit(pub, OTHER) in ("reset", "eof")
    held = connect("127.0.0.1", pub)  # holds the one slot: the next visitor is over the limit
    try:
        echo_once(held, b"x")
        assert visit(pub, "127.0.0.1") in ("reset", "eof")
    finally:
        held.close()
    wait_until(lambda: service(relay, pub)["live"] == 0, 10, "the visitors to end")
    status, _, text = fetch(rm)
    assert status == 200
    lab = {"proto": "tcp", "port": pub, "name_": "web"}
    assert sample(text, "pinhole_relay_visitors_total", **lab) == 3
    assert sample(text, "pinhole_relay_visitors_active", **lab) == 0
    assert sample(text, "pinhole_relay_service_up", **lab) == 1
    assert sample(text, "pinhole_relay_refused_total", reason="denied", **lab) == 1
    assert sample(text, "pinhole_relay_refused_total", reason="over_limit", **lab) == 1
    assert sample(text, "pinhole_relay_bytes_total", direction="up", **lab) == 9
    assert sample(text, "pinhole_relay_bytes_total", direction="down", **lab) == 9
    assert re.search(r"^pinhole_relay_sessions 1$", text, re.M), text
    assert re.search(r"^pinhole_relay_sessions_total 1$", text, re.M), text
    wait_until(lambda: sample(fetch(xm)[2], "pinhole_expose_visitors_active", name_="web") == 0,
               10, "the client's streams to end")
    xt = fetch(xm)[2]
    xl = {"proto": "tcp", "local": f"127.0.0.1:{srv.port}", "name_": "web"}
    assert sample(xt, "pinhole_expose_up", **xl) == 1
    assert sample(xt, "pinhole_expose_visitors_total", **xl) == 3
    assert sample(xt, "pinhole_expose_bytes_total", direction="up", **xl) == 9
    assert sample(xt, "pinhole_expose_bytes_total", direction="down", **xl) == 9
    assert sample(xt, "pinhole_expose_failures_total", reason="refused", **xl) == 0
    assert re.search(r"^pinhole_expose_sessions 1$", xt, re.M), xt
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (scripts/deps.sh test installs prometheus)")
    for t in (text, xt):
        r = subprocess.run([tool, "check", "metrics"], input=t, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr


def test_a_silent_dns_server_stalls_no_other_session(procs, tmp_path, keys, echo_server, spawn):
    """expose looks names up on its loop without blocking it (c-ares): while the DNS server
    of one rule's --via says nothing, the other rule's session comes up and carries its
    visitors at once; when the server answers again, the first comes up too."""
    srv = echo_server(handler=echo)
    relay = start_relay(procs, tmp_path, keys)
    dns, prefix = start_dnsmasq(tmp_path, spawn, "--local=/test/",
                                "--address=/relay.test/127.0.0.1", options="timeout:5 attempts:2")
    common = (f"--key {keys.alice.path} --known-relays {tmp_path / 'known_relays'} "
              "--heartbeat 1s")
    conf = tmp_path / "x.conf"
    # the rule whose relay is a name comes first: a blocking lookup would hold up the other
    conf.write_text(f"expose 127.0.0.1:{srv.port} --via relay.test:{relay.port} --name slow "
                    f"{common}\n"
                    f"expose 127.0.0.1:{srv.port} --via 127.0.0.1:{relay.port} --name fast "
                    f"{common}\n")
    os.kill(dns.pid, signal.SIGSTOP)  # the server hears the questions and says nothing
    try:
        t0 = time.monotonic()
        x = procs("run", conf, "--control", "none", "--drain-timeout", "2s", prefix=prefix)
        x.wait_log(r"^expose 127\.0\.0\.1:\d+ fast: public at 127\.0\.0\.1:\d+",
                   timeout=READY_TIMEOUT_S)
        assert time.monotonic() - t0 < 3, "the session waited for another rule's DNS"
        pub = int(re.search(r"fast: public at 127\.0\.0\.1:(\d+)", x.log).group(1))
        # for 4 s, while the lookup waits for the silent server: each visitor at once
        end = time.monotonic() + 4
        while time.monotonic() < end:
            t1 = time.monotonic()
            assert visit(pub, "127.0.0.1") == "ok"
            assert time.monotonic() - t1 < 1, "a visitor waited for the DNS server"
            time.sleep(0.1)
        assert "slow: public" not in x.log
    finally:
        os.kill(dns.pid, signal.SIGCONT)
    x.wait_log(r"^expose 127\.0\.0\.1:\d+ slow: public at relay\.test:\d+", timeout=40)
