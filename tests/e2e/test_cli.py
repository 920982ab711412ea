"""
The command line: help, version, usage errors (exit 2) and start-up failures (exit 1).

    pinhole ARGS ...   (no peers; stdout/stderr and the exit status are the outcome)

    python socket LISTEN 127.0.0.1:P  <--  pinhole forward 127.0.0.1:P ...   (port in use)
"""

import re
import socket

import pytest

from conftest import ROOT, alloc_port, run_pinhole


def project_version():
    with open(f"{ROOT}/meson.build") as f:
        m = re.search(r"version:\s*'([^']+)'", f.read())
    assert m, "no version in meson.build"
    return m.group(1)


@pytest.mark.parametrize("args", [["--version"], ["-V"], ["forward", "--version"]])
def test_version(args):
    r = run_pinhole(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"pinhole {project_version()}\n"
    assert r.stdout == "pinhole 0.1.0\n"
    assert r.stderr == ""


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["help"]])
def test_help_overview(args):
    r = run_pinhole(*args)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "Usage: pinhole COMMAND" in r.stdout
    assert "forward LISTEN TARGET [TARGET...]" in r.stdout
    for opt in ("--verbose", "--quiet", "--workers", "--drain-timeout", "--help", "--version"):
        assert opt in r.stdout, opt
    assert "Exit status: 0" in r.stdout


@pytest.mark.parametrize("args", [["forward", "--help"], ["forward", "-h"], ["help", "forward"],
                                  ["forward", ":8080", "--help"]])
def test_help_forward(args):
    r = run_pinhole(*args)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.startswith("Usage: pinhole forward LISTEN TARGET [TARGET...]")
    for opt in ("--allow CIDR", "--deny CIDR", "--max-conns N", "--connect-timeout DUR",
                "--idle-timeout DUR", "--name NAME"):
        assert opt in r.stdout, opt


def test_no_arguments_prints_help_and_fails():
    r = run_pinhole()
    assert r.returncode == 2
    assert r.stdout == ""
    assert "Usage: pinhole COMMAND" in r.stderr


def test_help_on_unknown_topic():
    r = run_pinhole("help", "banana")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == "pinhole: no help on 'banana' (see pinhole --help)\n"


T = "127.0.0.1:9"  # a valid target; these commands never get far enough to use it

# (arguments, the word the message must name, a substring of the reason)
USAGE_ERRORS = [
    (["forward", "1.2.3:80", T], "'1.2.3:80'", "not an IPv4 address"),
    (["forward", "[::1:80", T], "'[::1:80'", "missing ']'"),
    (["forward", "host:", T], "'host:'", "missing port"),
    (["forward", ":0", T], "':0'", "port must be 1-65535"),
    (["forward", ":65536", T], "':65536'", "port must be 1-65535"),
    (["forward", ":99999999999999999999999", T], "':99999999999999999999999'",
     "port must be 1-65535"),
    (["forward", "abc:xyz", T], "'abc:xyz'", "port is not a number"),
    (["forward", "::1:80", T], "'::1:80'", "brackets"),
    (["forward", "[127.0.0.1]:80", T], "'[127.0.0.1]:80'", "brackets are for IPv6"),
    (["forward", "[::1]", T], "'[::1]'", "expected ':PORT'"),
    (["forward", "[]:80", T], "'[]:80'", "empty IPv6 address"),
    (["forward", "8080", T], "'8080'", "expected HOST:PORT"),
    (["forward", "localhost:8080", T], "'localhost:8080'", "not a name"),
    (["forward", "udp://:8080", f"tcp://{T}"], f"target 'tcp://{T}'",
     "is tcp://, but the listen address is udp://"),
    (["forward", "udp://:8080", T, "--max-conns", "9"], "'--max-conns'", "is for TCP"),
    (["forward", ":8080", T, "--udp-timeout", "9s"], "'--udp-timeout'", "is for UDP"),
    (["forward", "ftp://:8080", T], "'ftp://:8080'", "unknown scheme"),
    (["forward", ":8080", "host:"], "target 'host:'", "missing port"),
    (["forward", ":8080", ":80"], "target ':80'", "needs a host"),
    (["forward", ":8080", "1.2.3.4.5:80"], "target '1.2.3.4.5:80'", "not an IPv4 address"),
    (["forward", ":8080", "bad_name!:80"], "target 'bad_name!:80'", "not a valid host name"),
    (["forward", ":8080", T, "--frobnicate"], "'--frobnicate'", "unknown option"),
    (["forward", ":8080", T, "-x"], "'-x'", "unknown option"),
    (["--frobnicate"], "'--frobnicate'", "unknown option"),
    (["frobnicate"], "'frobnicate'", "unknown command"),
    (["forward", ":8080"], "forward", "missing a TARGET"),
    (["forward"], "forward", "missing LISTEN and TARGET"),
    (["forward", ":8080", T, "--max-conns", "abc"], "--max-conns 'abc'", "whole number"),
    (["forward", ":8080", T, "--max-conns", "0"], "--max-conns '0'", "whole number"),
    (["forward", ":8080", T, "--max-conns=-1"], "--max-conns '-1'", "whole number"),
    (["forward", ":8080", T, "--max-conns"], "--max-conns", "needs a value"),
    (["forward", ":8080", T, "--workers", "0"], "--workers '0'", "whole number"),
    (["forward", ":8080", T, "--connect-timeout", "5x"], "--connect-timeout '5x'", "duration"),
    (["forward", ":8080", T, "--connect-timeout", "0"], "--connect-timeout", "more than 0"),
    (["forward", ":8080", T, "--idle-timeout", "1.5s"], "--idle-timeout '1.5s'", "duration"),
    (["forward", ":8080", T, "--drain-timeout", "soon"], "--drain-timeout 'soon'", "duration"),
    (["forward", ":8080", T, "--allow", "10.0.0.0/33"], "--allow '10.0.0.0/33'",
     "prefix length must be 0-32"),
    (["forward", ":8080", T, "--deny", "::1/129"], "--deny '::1/129'",
     "prefix length must be 0-128"),
    (["forward", ":8080", T, "--allow", "banana"], "--allow 'banana'",
     "not an IPv4 or IPv6 address"),
    (["forward", ":8080", T, "--allow="], "--allow ''", "expected an address"),
    (["forward", ":8080", T, "--name="], "--name", "1-63 characters"),
    (["forward", ":8080", T, "--pipe-size", "1"], "--pipe-size '1'", "whole number"),
]


@pytest.mark.parametrize("args,word,reason", USAGE_ERRORS,
                         ids=[" ".join(a[1:]) or a[0] for a, _, _ in USAGE_ERRORS])
def test_usage_error(args, word, reason):
    r = run_pinhole(*args)
    assert r.returncode == 2, f"exit {r.returncode}, stderr {r.stderr!r}"
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got {r.stderr!r}"
    assert lines[0].startswith("pinhole: "), lines[0]
    assert word in lines[0], f"{word!r} not named in {lines[0]!r}"
    assert reason in lines[0], f"{reason!r} not in {lines[0]!r}"


def _holder(family, host, reuseport):
    s = socket.socket(family, socket.SOCK_STREAM)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, alloc_port()))
    s.listen(8)
    return s


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain", "holder-has-reuseport"])
@pytest.mark.parametrize("listen", ["127.0.0.1:{}", ":{}"], ids=["ipv4", "dual-stack"])
def test_port_in_use(listen, reuseport):
    """Another program's listener keeps pinhole out, even one with SO_REUSEPORT (pinhole
    must not silently share a port with it)."""
    s = _holder(socket.AF_INET, "127.0.0.1", reuseport)
    port = s.getsockname()[1]
    try:
        r = run_pinhole("forward", listen.format(port), "127.0.0.1:9")
    finally:
        s.close()
    assert r.returncode == 1, f"exit {r.returncode}, stderr {r.stderr!r}"
    assert "address already in use" in r.stderr
    assert re.search(rf"cannot listen on (127\.0\.0\.1|\[::\]):{port}: address already in use",
                     r.stderr), r.stderr


def test_port_in_use_ipv6(ipv6):
    s = _holder(socket.AF_INET6, "::1", False)
    port = s.getsockname()[1]
    try:
        r = run_pinhole("forward", f"[::1]:{port}", "127.0.0.1:9")
    finally:
        s.close()
    assert r.returncode == 1, r.stderr
    assert f"cannot listen on [::1]:{port}: address already in use" in r.stderr


def test_too_few_fds():
    port = alloc_port()
    r = run_pinhole("forward", f"127.0.0.1:{port}", "127.0.0.1:9",
                    prefix=("prlimit", "--nofile=20:20"))
    assert r.returncode == 1, f"exit {r.returncode}, stderr {r.stderr!r}"
    assert "too few file descriptors" in r.stderr
    assert "the limit is 20" in r.stderr


def test_too_few_fds_for_max_conns():
    port = alloc_port()
    r = run_pinhole("forward", f"127.0.0.1:{port}", "127.0.0.1:9", "--max-conns", "100000",
                    prefix=("prlimit", "--nofile=1024:1024"))
    assert r.returncode == 1, f"exit {r.returncode}, stderr {r.stderr!r}"
    assert "too few file descriptors" in r.stderr
    assert "--max-conns 100000" in r.stderr
