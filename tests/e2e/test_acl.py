"""
--allow / --deny: the first matching rule wins; with no match, clients are let in unless
some --allow is given. A denied client is reset at accept and never reaches the target.

    client bound to 127.0.0.1 ─┐
    client bound to 127.0.0.2 ─┼─> pinhole 127.0.0.1:P (or :P, [::1]:P) --> echo 127.0.0.1:Q
    client bound to 127.0.0.3 ─┤
    client bound to 127.0.0.4 ─┤
    client from ::1           ─┘
"""

import re

import pytest

from conftest import connect, outcome, recv_exact


def attempt(host, port, source, expect):
    """'served' when an echo comes back, else how the connection ended ('reset', 'eof',
    'timeout'). A client expected to be denied sends nothing: closing a socket with unread
    bytes makes the kernel send a reset by itself, which would hide a FIN from pinhole."""
    msg = f"hello from {source}\n".encode()
    try:
        c = connect(host, port, source=source)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:  # the reset can beat connect()'s own return on loopback
        return "reset"
    try:
        if expect != "served":
            return outcome(c, timeout=3)  # a served one sends nothing: 'timeout'
        c.sendall(msg)
        return "served" if recv_exact(c, len(msg)) == msg else "garbled"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except AssertionError:  # EOF before the echo
        return "eof"
    finally:
        c.close()


V4_CASES = [
    # rules, {source: expected}
    (["--allow", "127.0.0.1/32"],
     {"127.0.0.1": "served", "127.0.0.2": "reset"}),
    (["--deny", "127.0.0.2", "--allow", "127.0.0.0/8"],
     {"127.0.0.1": "served", "127.0.0.2": "reset", "127.0.0.3": "served"}),
    (["--allow", "127.0.0.2/32", "--deny", "127.0.0.0/8"],
     {"127.0.0.1": "reset", "127.0.0.2": "served", "127.0.0.3": "reset"}),
    (["--deny", "127.0.0.0/8", "--allow", "127.0.0.2"],
     {"127.0.0.1": "reset", "127.0.0.2": "reset"}),
    (["--deny", "127.0.0.2/31"],
     {"127.0.0.1": "served", "127.0.0.2": "reset", "127.0.0.3": "reset", "127.0.0.4": "served"}),
    (["--allow", "127.0.0.2/31"],
     {"127.0.0.1": "reset", "127.0.0.2": "served", "127.0.0.3": "served", "127.0.0.4": "reset"}),
    (["--allow", "127.0.0.3", "--allow", "127.0.0.1"],
     {"127.0.0.1": "served", "127.0.0.2": "reset", "127.0.0.3": "served"}),
    (["--allow", "10.0.0.0/8"],
     {"127.0.0.1": "reset", "127.0.0.2": "reset"}),
    (["--allow", "0.0.0.0/0", "--deny", "127.0.0.2"],
     {"127.0.0.1": "served", "127.0.0.2": "served"}),
    (["--allow", "127.0.0.9/8"],  # host bits after the prefix are ignored
     {"127.0.0.1": "served", "127.0.0.2": "served"}),
    (["--deny", "127.0.0.1/0"],  # /0: every IPv4 address
     {"127.0.0.1": "reset", "127.0.0.4": "reset"}),
    (["--allow", "127.0.0.0/29", "--allow", "127.0.0.4/30", "--deny", "127.0.0.2"],
     {"127.0.0.1": "served", "127.0.0.2": "served", "127.0.0.4": "served"}),
    (["--allow", "::1"],  # an IPv6 rule says nothing about IPv4 clients, but an allow exists
     {"127.0.0.1": "reset"}),
]


@pytest.mark.parametrize("rules,expect", V4_CASES, ids=[" ".join(r) for r, _ in V4_CASES])
def test_ipv4_rules(pinhole, echo_server, free_port, rules, expect):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", *rules)
    got = {src: attempt("127.0.0.1", port, src, v) for src, v in expect.items()}
    assert got == expect
    served = sorted(src for src, v in expect.items() if v == "served")
    assert sorted(p[0] for p in srv.peers) == ["127.0.0.1"] * len(served), \
        "a denied client reached the target, or a served one did not"
    denied = [src for src, v in expect.items() if v == "reset"]
    for src in denied:
        ph.wait_log(rf"^forward 127\.0\.0\.1:{port}: denied {re.escape(src)}:\d+ by --allow/--deny$")
    ph.stop()
    st = ph.final_stats()
    assert st["denied"] == len(denied), st
    assert st["accepted"] == len(served), st


DUAL_CASES = [
    (["--allow", "::1"], {"::1": "served", "127.0.0.1": "reset"}),
    (["--allow", "::1/128", "--deny", "::/0"], {"::1": "served", "127.0.0.1": "reset"}),
    (["--deny", "::/0"], {"::1": "reset", "127.0.0.1": "served"}),
    (["--deny", "::1/128"], {"::1": "reset", "127.0.0.1": "served"}),
    (["--allow", "::/127"], {"::1": "served", "127.0.0.1": "reset"}),
    (["--allow", "::2/127"], {"::1": "reset", "127.0.0.1": "reset"}),
    # an IPv4 client of a dual-stack listener arrives as ::ffff:127.0.0.1: IPv4 rules apply
    (["--allow", "127.0.0.1/32"], {"::1": "reset", "127.0.0.1": "served", "127.0.0.2": "reset"}),
    (["--deny", "127.0.0.0/8", "--allow", "::/0"], {"::1": "served", "127.0.0.1": "reset"}),
]


@pytest.mark.parametrize("rules,expect", DUAL_CASES, ids=[" ".join(r) for r, _ in DUAL_CASES])
def test_dual_stack_rules(pinhole, echo_server, free_port, ipv6, rules, expect):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f":{port}", f"127.0.0.1:{srv.port}", *rules)
    got = {src: attempt("::1" if ":" in src else "127.0.0.1", port, src, v)
           for src, v in expect.items()}
    assert got == expect
    served = [src for src, v in expect.items() if v == "served"]
    assert srv.accepted == len(served)
    for src, v in expect.items():
        if v == "reset":
            shown = f"[{src}]" if ":" in src else src
            ph.wait_log(rf"denied {re.escape(shown)}:\d+ by --allow/--deny")


def test_ipv6_listener_deny(pinhole, echo_server, free_port, ipv6):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"[::1]:{port}", f"127.0.0.1:{srv.port}", "--deny", "::1")
    assert attempt("::1", port, "::1", "reset") == "reset"
    assert srv.accepted == 0
    ph.wait_log(r"denied \[::1\]:\d+ by --allow/--deny")


def test_named_rule_in_denial_log(pinhole, echo_server, free_port):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--allow", "127.0.0.1",
                 "--name", "web")
    assert "web: forwarding tcp" in ph.log
    assert attempt("127.0.0.1", port, "127.0.0.2", "reset") == "reset"
    ph.wait_log(r"^web: denied 127\.0\.0\.2:\d+ by --allow/--deny$")
