"""Our stack against kernel peers whose buffers are the smallest and far larger than the
default (net.smc.wmem and net.smc.rmem, the sizes a kernel gives new SMC sockets), ours
the same size as the kernel's.

The kernel sizes a connection's RMB and send buffer from the socket's buffer sizes
(``__smc_buf_create``): 16 KiB at the least, and since Linux 6.11 up to 512 MiB (before,
512 KiB). Our stack learns the kernel's RMB size from its CLC Accept or Confirm and must
keep to it: with a 16 KiB RMB the cursors wrap a hundred times a connection and the
kernel's consumer cursor updates pace every write; with a 4 MiB one a write may cross the
512 KiB that older kernels allowed. A kernel send buffer of 16 KiB makes the kernel write
to us in small pieces. Each boot runs a connection each way (tests/lab/interop.py), each
sending megabytes both ways, checksummed on both ends; smc_diag (what ``smcss -d`` shows)
and our ``get_extra_info("smc")`` must agree on both RMB sizes.
"""

from __future__ import annotations

import pytest
from test_kernel_interop import boot, pairs

UP, DOWN = 2_000_000, 1_500_000
PLAN = f"{UP}:{DOWN}:client,{DOWN}:{UP}:server"
SIZES = {
    # net.smc.wmem and rmem; the kernel's RMB is half the socket's receive buffer, rounded
    # up to a power of two, 16 KiB at the least
    "smallest": 16384,
    "large": 8 << 20,
}


@pytest.fixture(scope="module", params=sorted(SIZES))
def sized(request) -> tuple[str, dict]:
    size = SIZES[request.param]
    setup = f"sysctl -q -w net.smc.wmem={size} net.smc.rmem={size} || exit 1"
    ours = f"export SMCTOP_LAB_BUFSIZE={max(size // 2, 16384)}"  # as large as the kernel's RMB will be
    return request.param, boot(PLAN, kernel_ueid=True, stack_ueid=True, kernel_setup=setup, stack_setup=ours)


def _agree(ours: dict, kernel: dict, which: str) -> None:
    """Both ends' view of both RMBs, and the kernel's RMB as its buffers make it."""
    diag, smc = kernel["diag"], ours["smc"]
    assert diag is not None and diag["mode"] == "SMCR" and smc["mode"] == "SMCR", (ours, kernel)
    assert "rmbe_size" in diag, f"smc_diag gave no connection info: {diag}"
    assert smc["peer_rmb_size"] == diag["rmbe_size"] and diag["peer_rmbe_size"] == smc["rmb_size"], (smc, diag)
    if which == "smallest":
        assert diag["rmbe_size"] == smc["rmb_size"] == 16384 and diag["sndbuf_size"] == 16384, (smc, diag)
    else:
        assert diag["rmbe_size"] == smc["rmb_size"] > 512 << 10, (smc, diag)  # past what kernels before 6.11 allowed


@pytest.mark.lab
@pytest.mark.parametrize("client,server", [("stack-client", "kernel-server"), ("kernel-client", "stack-server")])
def test_every_byte_moves_both_ways_whatever_the_kernels_buffers(sized, client, server) -> None:
    which, run = sized
    conns = pairs(run, client, server)
    assert len(conns) == 2
    for c, s in conns:
        ours, kernel = (c, s) if client.startswith("stack") else (s, c)
        _agree(ours, kernel, which)
        assert c["sent"] == s["received"] and s["sent"] == c["received"] and c["eof"] and s["eof"], (c, s)
        assert {c["sent"]["len"], c["received"]["len"]} == {UP, DOWN}


@pytest.mark.lab
def test_a_capture_counts_each_connections_bytes_whatever_the_buffers(sized) -> None:
    """tcpdump on our VM's eth0: smc-trace derives each end's bytes from the CDCs' cursors
    and the WRITEs (a 16 KiB RMB wraps over a hundred times in 2 MB; a 4 MiB one not at all)
    and must come to what each end sent and read; smctop's replay of it, the same."""
    from dissectors.capture import read_events
    from dissectors.summary import summarize
    from smctop.model import Model

    which, run = sized
    counts = (run["a"].share / "tcpdump.err").read_text()
    assert "\n0 packets dropped by kernel" in counts, counts  # (per-packet writes, -U, lost most of them)
    events = list(read_events(str(run["pcap"])))
    d = summarize(events).to_dict()
    model = Model()
    for e in events:
        model.feed(e)
    truth = [(c["smc"], c) for c in run["stack-client"]] + [(s["smc"], s) for s in run["stack-server"] if "smc" in s]
    assert len(truth) == 4
    for smc, rec in truth:
        ends = {x["role"]: x for x in d["conns"] if {x["local"], x["peer"]} == {smc["local"], smc["peer"]}}
        client = rec in run["stack-client"]
        up, down = (rec["sent"]["len"], rec["received"]["len"]) if client else (rec["received"]["len"], rec["sent"]["len"])
        header = len(f"{up} {down} {rec['closer']}\n")  # the client's line before its data (interop.py)
        ours = ends["client" if client else "server"]
        assert ours["mode"] == "SMCR" and (ours["moved"], ours["received"]) == ((header + up, down) if client else (down, header + up)), (which, ours, rec)
        for end in ends.values():
            m = model.conns[(end["host"], end["conn"])]
            assert (m.ev_tx, m.ev_rx) == (end["moved"], end["received"]), (which, end, m.ev_tx, m.ev_rx)
