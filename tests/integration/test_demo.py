"""The README's first command runs this demo: it must show SMC-R traffic, the fallback and its reason."""

from __future__ import annotations

import asyncio
import io

from smctop import demo


def test_the_demo_shows_smc_traffic_and_a_reasoned_fallback():
    out = io.StringIO()
    d = asyncio.run(demo.run(3.0, out))  # no time limit of its own: pytest-timeout stops a hang
    text = out.getvalue()
    assert "connections while traffic ran (smcss -d):" in text
    table = text.split("connections while traffic ran (smcss -d):")[1].split("link groups")[0]
    assert table.count(" SMCR ") >= 6  # bulk + 2 rr connections, seen from both ends
    assert "alpha  client 0x05000000 PEERDECL" in text and "gamma  server 0x03070000 DIFFPREFIX" in text
    assert "LINK_ACTIVE" in text and " SYM " in text
    # beta's port was pulled and put back: the connections moved, and the group is SYM again
    failovers = text.split("failovers:")[1].split("link groups at the end")[0]
    assert "beta   link group" in failovers and f"(port down on {demo.BETA})" in failovers
    assert "link groups at the end: alpha SYM, beta SYM" in text
    assert d.totals["bulk"].verified == 1 and not d.totals["bulk"].errors
    assert d.totals["rr"].ops > 0 and d.totals["fallback"].modes.get("TCP", 0) == d.totals["fallback"].connections > 0
    assert d.events["cdc.msg"] > 0 and d.events["conn.fallback"] > 0
    # the per-second lines count each byte once: alpha's ends, not the servers' as well
    last_mb = float([line for line in text.splitlines() if line.strip().endswith(tuple("0123456789")) and " MB " in line][-1].split()[2])
    alpha = sum(d.totals[k].bytes_sent + d.totals[k].bytes_received for k in demo.CLIENT_TRAFFIC)
    servers = sum(d.totals[k].bytes_sent + d.totals[k].bytes_received for k in ("beta", "gamma"))
    assert abs(alpha - servers) < 0.05 * alpha  # both ends saw the same bytes
    assert 0.5 * alpha / 1e6 < last_mb <= alpha / 1e6 + 0.1, (last_mb, alpha)


def test_the_demo_takes_addresses_no_other_process_holds():
    """A demo, or the suite, already on 127.30.x: this run picks the one subnet left free
    (subnets another process holds right now count as held: the test runs beside others)."""
    import socket

    left = next(x for x in range(7, 256) if all(demo._free(f"127.{o}.{x}.{h}") for o, h in ((30, 1), (30, 2), (30, 3), (31, 1), (31, 2))))
    held = []
    try:
        for x in range(256):
            if x != left:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    s.bind((f"127.30.{x}.2", 4791))  # beta's soft device in another demo
                except OSError:  # another process holds it already
                    s.close()
                    continue
                held.append(s)
        assert demo._free_subnet() == left
    finally:
        for s in held:
            s.close()
