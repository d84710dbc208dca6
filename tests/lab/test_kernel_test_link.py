"""TEST LINK with a kernel peer: links that carry nothing are probed, and each end answers
the other's probes, so an idle connection outlives the probe interval.

The kernel sends a TEST LINK request on a link that has received nothing for
net.smc.smcr_testlink_time (30 s by default) and takes the link down when no response
comes within SMC_LLC_WAIT_TIME, 2 s (``smc_llc_testlink_work``); a link down on a group of
one link ends its connections. Here both ends probe every second: the kernel by its sysctl,
our stack by its ``Timeouts.test_link``; each client holds its connection open and idle for
six seconds before it closes. The connection must end cleanly with every byte, and the
capture must show each end's probes answered by the other and no link deleted.
"""

from __future__ import annotations

import pytest
from test_kernel_interop import boot, pairs

PAUSE = 6
PLAN = "20000:30000:client"


@pytest.fixture(scope="module")
def idle() -> dict:
    kernel = f"sysctl -q -w net.smc.smcr_testlink_time=1 || exit 1\nexport SMCTOP_LAB_PAUSE={PAUSE}"
    ours = f"export SMCTOP_LAB_TESTLINK=1 SMCTOP_LAB_PAUSE={PAUSE}"
    return boot(PLAN, kernel_ueid=True, stack_ueid=True, kernel_setup=kernel, stack_setup=ours)


@pytest.mark.lab
@pytest.mark.parametrize("client,server", [("stack-client", "kernel-server"), ("kernel-client", "stack-server")])
def test_an_idle_connection_outlives_the_probes_both_ways(idle, client, server) -> None:
    ((c, s),) = pairs(idle, client, server)
    assert c["sent"] == s["received"] and s["sent"] == c["received"] and c["eof"] and s["eof"], (c, s)
    assert c["seconds"] >= PAUSE, c  # the client did wait, idle, before it closed


@pytest.mark.lab
def test_each_ends_probes_are_answered_and_no_link_goes(idle) -> None:
    """A link is probed by whichever end found it idle first (a probe that arrives is traffic,
    so the other end then waits): each group's link is probed about once a second while its
    connection idles, by both ends in turn; every probe is answered by the other end within
    SMC_LLC_WAIT_TIME; no link is deleted before the connections begin to close (the first
    CDC with a closing flag: the capture's TCP close may come after a stack that is done
    has deleted its group)."""
    from dissectors.capture import read_events

    events = sorted(read_events(str(idle["pcap"])), key=lambda e: e.t)
    ours, kernel = "10.2.0.1", "10.2.0.2"
    probes = [e for e in events if e.kind == "llc.msg" and e.get("type") == "LLC TEST LINK v2"]
    closing = min(e.t for e in events if e.kind == "cdc.msg" and {"peer_done_writing", "peer_conn_closed", "peer_conn_abort"} & set(e.get("flags") or ()))
    groups = {e.lgr for e in probes}
    assert len(groups) == 2, probes  # one link group each way
    askers = set()
    for g in groups:
        asked = [e for e in probes if e.lgr == g and not e.get("response") and e.t < closing]
        answers = [e for e in probes if e.lgr == g and e.get("response")]
        assert len(asked) >= PAUSE - 2, (g, asked)
        for q in asked:
            askers.add(q.host)
            assert any(a.host != q.host and 0 <= a.t - q.t <= 2.0 for a in answers), (g, q, answers)
    assert askers == {ours, kernel}, askers  # each end probed, and the other answered
    deletes = [e for e in events if e.kind == "llc.msg" and "DELETE LINK" in e.get("type", "")]
    assert deletes and all(e.t > closing for e in deletes), (closing, deletes)  # only the groups' ends, after the close began
