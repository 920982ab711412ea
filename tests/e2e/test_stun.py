"""`pinhole server` answers STUN Binding requests (RFC 8489) over UDP on its session port
(issue: NAT traversal): coturn's turnutils_stunclient learns its address from it, a request
written here gets its sender's address and port back (XOR-MAPPED-ADDRESS; RFC 3489's
MAPPED-ADDRESS for a classic client), and what is no STUN request gets no answer and
changes nothing. Loopback only."""

import re
import shutil
import socket
import struct
import subprocess

import pytest

from test_tunnel import keys, procs, start_relay  # noqa: F401 (fixtures)

COOKIE = 0x2112A442


def binding(tid, cookie=COOKIE, attrs=b""):
    return struct.pack("!HHI", 1, len(attrs), cookie) + tid + attrs


def attrs_of(msg):
    out, off = {}, 20
    while off + 4 <= len(msg):
        t, n = struct.unpack("!HH", msg[off:off + 4])
        out.setdefault(t, msg[off + 4:off + 4 + n])
        off += 4 + (n + 3) // 4 * 4
    return out


def ask(port, req, timeout=2):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(timeout)
    try:
        s.sendto(req, ("127.0.0.1", port))
        try:
            return s.getsockname()[1], s.recv(2048)
        except socket.timeout:
            return s.getsockname()[1], None
    finally:
        s.close()


def test_binding_gives_the_sender_back(procs, tmp_path, keys):
    relay = start_relay(procs, tmp_path, keys)
    tid = bytes(range(1, 13))
    port, ans = ask(relay.port, binding(tid))
    assert ans is not None, "no answer on the relay's UDP port"
    typ, length, cookie = struct.unpack("!HHI", ans[:8])
    assert typ == 0x0101 and cookie == COOKIE and ans[8:20] == tid and length + 20 == len(ans)
    a = attrs_of(ans)
    x = a[0x0020]  # XOR-MAPPED-ADDRESS
    xport = struct.unpack("!H", x[2:4])[0] ^ (COOKIE >> 16)
    xaddr = socket.inet_ntoa(bytes(b ^ c for b, c in zip(x[4:8], struct.pack("!I", COOKIE))))
    assert (xaddr, xport) == ("127.0.0.1", port)
    m = a[0x0001]  # MAPPED-ADDRESS, for older clients
    assert (socket.inet_ntoa(m[4:8]), struct.unpack("!H", m[2:4])[0]) == ("127.0.0.1", port)
    assert b"pinhole" in a[0x8022]
    # a classic (RFC 3489) client: no cookie, its 16-byte id echoed, MAPPED-ADDRESS alone
    tid16 = bytes(range(20, 36))
    port, ans = ask(relay.port, struct.pack("!HH", 1, 0) + tid16)
    assert ans is not None and ans[4:20] == tid16
    a = attrs_of(ans)
    assert 0x0020 not in a and struct.unpack("!H", a[0x0001][2:4])[0] == port
    # an attribute it must understand and does not: 420 naming it
    _, ans = ask(relay.port, binding(tid, attrs=struct.pack("!HHI", 0x0024, 4, 7)))
    assert ans is not None and struct.unpack("!H", ans[:2])[0] == 0x0111
    assert attrs_of(ans)[0x000A] == b"\x00\x24"  # UNKNOWN-ATTRIBUTES: PRIORITY


def test_no_answer_to_what_is_no_request(procs, tmp_path, keys):
    relay = start_relay(procs, tmp_path, keys)
    tid = bytes(12)
    for junk in (b"", b"hello", b"\x00" * 19, binding(tid)[:-1] + b"",  # short, odd
                 struct.pack("!HHI", 0x0101, 0, COOKIE) + tid,          # a response
                 struct.pack("!HHI", 1, 8, COOKIE) + tid + b"\x80\x22\x00\x09abcd",  # cut
                 b"\x16\x03\x01" + bytes(60)):                           # TLS, over UDP
        _, ans = ask(relay.port, junk, timeout=0.3)
        assert ans is None, junk
    st = relay.status()["relay"]["stun"]
    assert st["on"] and st["answered"] == 0 and st["dropped"] >= 6, st
    _, ans = ask(relay.port, binding(tid))  # and it still answers
    assert ans is not None
    assert relay.status()["relay"]["stun"]["answered"] == 1
    assert relay.alive()


@pytest.mark.skipif(shutil.which("turnutils_stunclient") is None,
                    reason="turnutils_stunclient (coturn) is not installed")
def test_coturn_stunclient(procs, tmp_path, keys):
    """A real STUN client: coturn's turnutils_stunclient reads its reflexive address."""
    relay = start_relay(procs, tmp_path, keys)
    r = subprocess.run(["turnutils_stunclient", "-p", str(relay.port), "127.0.0.1"],
                       capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    out = r.stdout + r.stderr
    assert re.search(r"UDP reflexive addr: 127\.0\.0\.1:\d+", out), out
