"""
Reload: `pinhole run FILE` re-reads FILE on SIGHUP. Rules whose line is unchanged keep
running untouched (their connections too), removed rules stop accepting and let their
connections finish, new rules start, and a rule that changed on the very same listen
address takes the old rule's listeners over. A bad file changes nothing.

Readiness after a reload is the `reloaded FILE: ...` log line, and the checks below then
use the ports; every wait is bounded.
"""

import hashlib
import os
import signal
import socket
import threading
import pytest
from conftest import (SOCK_TIMEOUT_S, connect, echo_once, listeners, recv_exact,
                      tagged_echo_handler)


def write(path, text):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # a reload never reads a half-written file


def start(pinhole, conf, *extra):
    ph = pinhole("run", conf, *extra, ready=False)
    n = sum(1 for line in open(conf) if line.strip().startswith("forward"))
    ph.wait_log(r"forwarding (tcp|udp|tcp\+udp) ", count=n)
    return ph


def reload(ph, count):
    """Sends SIGHUP and waits for the count-th `reloaded` line; returns its message."""
    ph.send_signal(signal.SIGHUP)
    return ph.wait_log(r"^reloaded ", count=count)[-1]


def tagged(tcp_server, tag):
    return tcp_server(handler=tagged_echo_handler(tag))


def ask(port, msg=b"ping"):
    c = connect("127.0.0.1", port)
    try:
        c.sendall(msg)
        c.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            d = c.recv(65536)
            if not d:
                return got
            got += d
    finally:
        c.close()


def test_add_remove_keep(pinhole, tcp_server, free_port, tmp_path):
    a, b = tagged(tcp_server, b"A:"), tagged(tcp_server, b"B:")
    keep, gone, new = free_port(), free_port(), free_port()
    conf = tmp_path / "p.conf"
    write(conf, f"forward 127.0.0.1:{keep} 127.0.0.1:{a.port} --name keep\n"
                f"forward 127.0.0.1:{gone} 127.0.0.1:{a.port} --name gone\n")
    ph = start(pinhole, conf)
    assert ask(keep) == b"A:ping" and ask(gone) == b"A:ping"
    # an open connection through the rule that goes, and one through the rule that stays
    c_gone, c_keep = connect("127.0.0.1", gone), connect("127.0.0.1", keep)
    echo_once_tagged(c_gone, b"before", b"A:")
    echo_once_tagged(c_keep, b"before", b"A:")
    write(conf, f"forward 127.0.0.1:{keep} 127.0.0.1:{a.port} --name keep\n"
                f"forward 127.0.0.1:{new} 127.0.0.1:{b.port} --name new\n")
    msg = reload(ph, 1)
    assert "1 rules unchanged, 1 started, 1 removed" in msg, msg
    assert ask(new) == b"B:ping"
    assert ask(keep) == b"A:ping"
    with pytest.raises(ConnectionRefusedError):  # nobody listens there any more
        connect("127.0.0.1", gone).close()
    # both open connections still work after the reload
    echo_once_tagged(c_gone, b"after", b"A:")
    echo_once_tagged(c_keep, b"after", b"A:")
    c_keep.close()
    c_gone.close()
    ph.wait_log(r"^gone: the last connection of the removed rule ended", timeout=5)
    assert not listeners(gone)


def echo_once_tagged(c, msg, tag):
    c.sendall(msg)
    assert recv_exact(c, len(tag) + len(msg)) == tag + msg


def test_changed_rule_takes_the_listener_over(pinhole, tcp_server, free_port, tmp_path):
    """Same listen address, another target: the listening sockets change hands, so a
    client that connected in between (waiting in the accept queue) is served, by the new
    target; a connection open before keeps its old target."""
    a, b = tagged(tcp_server, b"A:"), tagged(tcp_server, b"B:")
    port = free_port()
    conf = tmp_path / "p.conf"
    write(conf, f"forward 127.0.0.1:{port} 127.0.0.1:{a.port}\n")
    ph = start(pinhole, conf, "--workers", "2")
    old = connect("127.0.0.1", port)
    echo_once_tagged(old, b"x", b"A:")
    before = sorted(listeners(port))
    write(conf, f"forward 127.0.0.1:{port} 127.0.0.1:{b.port}\n")
    reload(ph, 1)
    assert sorted(listeners(port)) == before  # the very same sockets
    assert ask(port) == b"B:ping"
    echo_once_tagged(old, b"y", b"A:")
    old.close()
    ph.wait_log(r"the last connection of the removed rule ended", timeout=5)


def test_bad_file_keeps_the_running_rules(pinhole, echo_server, free_port, tmp_path):
    srv = echo_server()
    port, other = free_port(), free_port()
    conf = tmp_path / "p.conf"
    good = f"forward 127.0.0.1:{port} 127.0.0.1:{srv.port}\n"
    write(conf, good)
    ph = start(pinhole, conf)
    write(conf, good + f"forward 127.0.0.1:{other} 127.0.0.1:99999\n")
    ph.send_signal(signal.SIGHUP)
    ph.wait_log(r"p\.conf:2: target '127\.0\.0\.1:99999': port must be 1-65535")
    ph.wait_log(r"^reload: .*p\.conf: problems above; the running rules stay as they are")
    assert not listeners(other)
    c = connect("127.0.0.1", port)
    echo_once(c, b"still here")
    c.close()
    # a listener that cannot be bound: nothing changes either
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", other))
    blocker.listen(1)
    try:
        write(conf, f"forward 127.0.0.1:{port} 127.0.0.1:{srv.port} --name renamed\n"
                    f"forward 127.0.0.1:{other} 127.0.0.1:{srv.port}\n")
        ph.send_signal(signal.SIGHUP)
        ph.wait_log(r"^reload: .*cannot listen on 127\.0\.0\.1:%d: address already in use" % other)
    finally:
        blocker.close()
    c = connect("127.0.0.1", port)
    echo_once(c, b"unchanged")
    c.close()
    assert not any("reloaded" in m for m in ph.messages())


def test_stream_survives_many_reloads(pinhole, echo_server, free_port, tmp_path):
    """A client streams 32 MiB each way through a rule that stays, checked by hash, while
    five reloads add and remove other rules (TCP and UDP) around it."""
    srv = echo_server()
    port = free_port()
    extra = [free_port() for _ in range(3)]
    conf = tmp_path / "p.conf"
    base = f"forward 127.0.0.1:{port} 127.0.0.1:{srv.port} --name stream\n"
    write(conf, base)
    ph = start(pinhole, conf)
    data = os.urandom(32 << 20)
    c = connect("127.0.0.1", port)
    c.settimeout(SOCK_TIMEOUT_S)
    got = hashlib.sha256()
    n_got = [0]

    def reader():
        while n_got[0] < len(data):
            d = c.recv(1 << 20)
            if not d:
                break
            got.update(d)
            n_got[0] += len(d)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    sent = 0
    chunk = 1 << 20
    for k in range(5):
        c.sendall(data[sent:sent + 4 * chunk])
        sent += 4 * chunk
        lines = base + "".join(
            f"forward {'udp://' if (i + k) % 2 else ''}127.0.0.1:{p} 127.0.0.1:{srv.port}\n"
            for i, p in enumerate(extra[:(k % 3) + 1]))
        write(conf, lines)
        reload(ph, k + 1)
    c.sendall(data[sent:])
    c.shutdown(socket.SHUT_WR)
    t.join(timeout=30)
    c.close()
    assert n_got[0] == len(data) and got.hexdigest() == hashlib.sha256(data).hexdigest()
    msgs = ph.messages()
    assert sum(1 for m in msgs if m.startswith("reloaded ")) == 5
    assert all("1 rules unchanged" in m or "2 rules unchanged" in m or "3 rules unchanged" in m
               for m in msgs if m.startswith("reloaded "))


def test_udp_rule_changes_target(pinhole, free_port, tmp_path, udp_echo):
    a, b = udp_echo(tag=b"A:"), udp_echo(tag=b"B:")
    port = free_port()
    conf = tmp_path / "p.conf"
    write(conf, f"forward udp://127.0.0.1:{port} 127.0.0.1:{a.port}\n")
    ph = start(pinhole, conf)
    cl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cl.settimeout(SOCK_TIMEOUT_S)
    cl.sendto(b"1", ("127.0.0.1", port))
    assert cl.recv(100) == b"A:1"
    write(conf, f"forward udp://127.0.0.1:{port} 127.0.0.1:{b.port}\n")
    reload(ph, 1)
    cl.sendto(b"2", ("127.0.0.1", port))  # the old session ended with its rule
    assert cl.recv(100) == b"B:2"
    cl.close()


def test_sighup_without_a_file(pinhole, echo_server, free_port):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}")
    ph.send_signal(signal.SIGHUP)
    ph.wait_log(r"SIGHUP: the rules came from the command line; nothing to reload")
    c = connect("127.0.0.1", port)
    echo_once(c, b"fine")
    c.close()


def test_protocol_change_on_one_port(pinhole, echo_server, free_port, tmp_path):
    """tcp:// becomes tcp+udp:// on the same port: TCP is taken over, UDP is bound anew;
    then back to udp:// alone: the TCP listener goes."""
    srv = echo_server()
    port = free_port()
    usrv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    usrv.bind(("127.0.0.1", srv.port))  # a UDP echo on the TCP echo's port number
    usrv.settimeout(SOCK_TIMEOUT_S)
    conf = tmp_path / "p.conf"
    write(conf, f"forward 127.0.0.1:{port} 127.0.0.1:{srv.port}\n")
    ph = start(pinhole, conf)
    before = sorted(listeners(port))
    write(conf, f"forward tcp+udp://127.0.0.1:{port} 127.0.0.1:{srv.port}\n")
    reload(ph, 1)
    assert sorted(listeners(port)) == before
    c = connect("127.0.0.1", port)
    echo_once(c, b"tcp")
    c.close()
    cl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cl.settimeout(SOCK_TIMEOUT_S)
    cl.sendto(b"udp", ("127.0.0.1", port))
    d, peer = usrv.recvfrom(100)
    usrv.sendto(d, peer)
    assert cl.recv(100) == b"udp"
    write(conf, f"forward udp://127.0.0.1:{port} 127.0.0.1:{srv.port}\n")
    reload(ph, 2)
    with pytest.raises(ConnectionRefusedError):
        connect("127.0.0.1", port).close()
    cl.sendto(b"again", ("127.0.0.1", port))
    d, peer = usrv.recvfrom(100)
    usrv.sendto(d, peer)
    assert cl.recv(100) == b"again"
    cl.close()
    usrv.close()


def test_split_and_merge_protocols(pinhole, echo_server, free_port, tmp_path):
    """tcp+udp:// becomes a tcp:// line and a udp:// line on the same port, then one
    tcp+udp:// line again: each protocol's listener is taken over by the rule that
    serves it now, so neither reload has to bind the busy port."""
    srv = echo_server()
    port = free_port()
    usrv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    usrv.bind(("127.0.0.1", srv.port))
    usrv.settimeout(SOCK_TIMEOUT_S)
    conf = tmp_path / "p.conf"

    def both_work():
        c = connect("127.0.0.1", port)
        echo_once(c, b"tcp")
        c.close()
        cl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        cl.settimeout(SOCK_TIMEOUT_S)
        cl.sendto(b"udp", ("127.0.0.1", port))
        d, peer = usrv.recvfrom(100)
        usrv.sendto(d, peer)
        assert cl.recv(100) == b"udp"
        cl.close()

    write(conf, f"forward tcp+udp://127.0.0.1:{port} 127.0.0.1:{srv.port}\n")
    ph = start(pinhole, conf)
    both_work()
    tcp_before = sorted(listeners(port))
    write(conf, f"forward 127.0.0.1:{port} 127.0.0.1:{srv.port} --name t\n"
                f"forward udp://127.0.0.1:{port} 127.0.0.1:{srv.port} --name u\n")
    assert "0 rules unchanged, 2 started, 1 removed" in reload(ph, 1)
    assert sorted(listeners(port)) == tcp_before
    both_work()
    write(conf, f"forward tcp+udp://127.0.0.1:{port} 127.0.0.1:{srv.port}\n")
    assert "0 rules unchanged, 1 started, 2 removed" in reload(ph, 2)
    assert sorted(listeners(port)) == tcp_before
    both_work()
    usrv.close()
