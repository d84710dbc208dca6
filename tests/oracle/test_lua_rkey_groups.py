"""The Wireshark plugin ties an RDMA WRITE to its connection by any rkey of the RMB it writes,
as smc-trace does (dissectors/derive.py, Deriver.rkey_group): an RMB has an rkey on each
link, and CONFIRM RKEY (its rtokens on other links) and ADD LINK v2 / ADD LINK CONTINUATION
(an RMB's rkey on a link there is and on the new one) say which rkeys are one RMB. A
connection that joins a link group has its RMB confirmed on the links there are before its
CLC Accept and Confirm name the RMB (smcr_lgr_reg_rmbs). The plugin tied only the rkey the
CLC message named, and a new link's rkey only when ADD LINK came after it, so such a
connection's WRITEs on its second link had no connection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import tshark
from support.ipv6_roce import events_per_frame
from support.rkey_groups import A1, B1, VIAS, capture

pytestmark = pytest.mark.oracle

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "dissectors" / "wireshark" / "smctop.lua"


def plugin_ties(path, *extra: str) -> dict[int, tuple[dict, str | None, str | None]]:
    """Frame number -> (its layers, the plugin's smctop.stream and smctop.connection), for the
    SMC and RoCE frames (a display filter: without one, tshark -2 gives the plugin no fields
    on its first pass, and the plugin learns on the first pass only)."""
    args = ["-n", "-X", f"lua_script:{PLUGIN}", "-r", str(path), *extra, "-Y", "smc || infiniband", "-T", "json", "--no-duplicate-keys"]
    proc = tshark.run(args)
    assert proc.returncode == 0, proc.stderr
    assert "Lua" not in proc.stderr, proc.stderr
    out = {}
    for pkt in json.loads(proc.stdout or "[]"):
        layers = pkt["_source"]["layers"]
        assert "_ws.lua.text" not in json.dumps(layers), layers["frame"]["frame.number"]
        ties = tshark.flatten({"smctop": layers.get("smctop", {})})  # one smctop tree or several
        values = [ties.get(key) for key in ("smctop.stream", "smctop.connection")]
        stream, label = (v[0] if isinstance(v, list) else v for v in values)
        out[int(layers["frame"]["frame.number"])] = (layers, stream, label)
    return out


@pytest.mark.parametrize("via", VIAS)
def test_a_connection_that_joins_has_its_writes_on_the_second_link_tied(tmp_path, via):
    path = tmp_path / f"rkey_groups_{via}.pcapng"
    path.write_bytes(capture(via))
    frames = plugin_ties(path)
    roce = {n: f for n, f in frames.items() if "infiniband" in f[0]}
    ib = {n: tshark.flatten(f[0]["infiniband"]) for n, f in roce.items()}
    writes = [n for n in roce if "infiniband.reth.r_key" in ib[n]]
    cdcs = [n for n in roce if "smc.rmbe.ctrl.alert.token" in tshark.flatten(roce[n][0].get("smc", {}))]
    assert len(writes) == len(cdcs) == 2, (writes, cdcs)
    for n in writes + cdcs:  # connection 1's, on link 2 (its QPs 0x13 and 0x14), each way
        _, stream, label = roce[n]
        assert tshark.num(ib[n]["infiniband.bth.destqp"]) in (0x13, 0x14), n
        assert stream == "1" and label == f"tcp.stream 1 ({A1}:40001 <-> {B1}:5000)", (n, stream, label)
    # smc-trace reads the capture as the plugin does: every RoCE frame's connection the same
    _, derived = events_per_frame(path)
    for n in roce:
        [e] = [e for e in derived[n] if e.kind in ("rdma.write", "cdc.msg", "llc.msg")]
        assert (None if e.conn is None else str(e.conn)) == roce[n][1], (n, e, roce[n][1:])
    assert [(derived[n][0].host, derived[n][0].link, derived[n][0].conn) for n in writes] == [(A1, 2, 1), (B1, 2, 1)]
    # learnt on the first pass only: a second pass (as Wireshark's GUI makes) shows the same
    again = plugin_ties(path, "-2")
    assert {n: f[1:] for n, f in again.items()} == {n: f[1:] for n, f in frames.items()}
