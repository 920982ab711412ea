"""
Many connections at once: 1,000 clients, all open together, each echoing its own message.

    1000 x python client (one selector) --> pinhole 127.0.0.1:P --> echo server 127.0.0.1:Q
                                                                    (a thread per connection)
"""

import time

from conftest import many_echo

N = 1000


def test_1000_concurrent_connections(pinhole, echo_server, free_port):
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}")
    t0 = time.monotonic()
    replies, errors = many_echo("127.0.0.1", port, N, timeout=25)
    elapsed = time.monotonic() - t0
    assert not errors, f"{len(errors)} of {N} failed, e.g. {sorted(errors.items())[:5]}"
    assert len(replies) == N
    # every client was still open when the last echo arrived: the server saw them all at once
    assert srv.accepted == N
    assert srv.max_live == N, f"only {srv.max_live} connections were open at once"
    assert elapsed < 25
    ph.stop()
    st = ph.final_stats()
    assert st["accepted"] == N and st["active"] == 0, st
    assert st["errors"] == 0 and st["target_failures"] == 0 and st["over_limit"] == 0, st
    print(f"{N} concurrent echoes in {elapsed:.2f} s")


def test_batches_one_after_another(pinhole, echo_server, free_port):
    """Batches of 100 on one worker, one batch after the other: what the first batch used
    (pooled pipes, connection slots) serves the next ones cleanly."""
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--workers", "1")
    for round_ in range(3):
        replies, errors = many_echo("127.0.0.1", port, 100, timeout=10)
        assert not errors and len(replies) == 100, (round_, errors)
    ph.stop()
    st = ph.final_stats()
    assert st["accepted"] == 300 and st["active"] == 0, st


def test_1000_concurrent_with_idle_timers(pinhole, echo_server, free_port):
    """The same 1,000 with --idle-timeout: a thousand timers armed and cancelled at once."""
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--idle-timeout", "20s")
    replies, errors = many_echo("127.0.0.1", port, N, timeout=25)
    assert not errors, f"{len(errors)} of {N} failed, e.g. {sorted(errors.items())[:5]}"
    assert srv.max_live == N
    ph.stop()
    assert ph.final_stats()["accepted"] == N


def test_max_conns_under_a_burst(pinhole, echo_server, free_port):
    """1,000 at once against --max-conns 400 over two workers: exactly 400 get in (the count
    is shared by the workers), the other 600 are reset, none reaches the target."""
    srv = echo_server()
    port = free_port()
    ph = pinhole(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}", "--max-conns", "400",
                 "--workers", "2")
    replies, errors = many_echo("127.0.0.1", port, N, timeout=25)
    assert len(replies) == 400, f"{len(replies)} served"
    odd = {i: e for i, e in errors.items()
           if "ConnectionResetError" not in e and "BrokenPipeError" not in e}
    assert not odd, f"refused otherwise than by a reset: {sorted(odd.items())[:5]}"
    assert srv.accepted == 400 and srv.max_live == 400
    ph.wait_log(r"--max-conns 400 reached")
    ph.stop()
    st = ph.final_stats()
    assert st["accepted"] == 400 and st["over_limit"] == 600, st
