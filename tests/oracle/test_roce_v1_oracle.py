"""tshark as the oracle for RoCE v1 (SMC-Rv1 on a RoCE NIC): Wireshark reads ethertype 0x8915
as InfiniBand with a GRH and hands SEND payloads to its SMC-R dissector. For every frame of a
RoCE v1 capture, what smc-trace derives must agree with tshark: the GIDs of the GRH (and which
host each one is), the QP and PSN, the LLC and CDC fields, and the RDMA WRITEs' rkeys and
lengths; and the Lua plugin ties the CDCs to their TCP connections."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import tshark
from support.ipv6_roce import events_per_frame
from support.rocev1 import CLIENT_GID, CLIENT_IP, SERVER_GID, SERVER_IP, gid_text, write_v1_capture

pytestmark = pytest.mark.oracle

PLUGIN = Path(__file__).resolve().parents[2] / "dissectors" / "wireshark" / "smctop.lua"
HOST_OF_GID = {gid_text(CLIENT_GID): str(CLIENT_IP), gid_text(SERVER_GID): str(SERVER_IP)}


@pytest.mark.parametrize("shape", [{}, {"cooked": True, "vlan": 7}], ids=["ethernet", "tcpdump_any_vlan"])
def test_smc_trace_reads_each_roce_v1_frame_as_tshark_does(tmp_path, shape):
    path = tmp_path / "v1.pcapng"
    truth = write_v1_capture(str(path), **shape)
    frames = tshark.decode(str(path))
    _, events = events_per_frame(path)
    assert len(frames) == truth.frames and not [f.number for f in frames if f.malformed]
    ib_frames = [f for f in frames if "infiniband" in f.protocols.split(":")]
    assert len(ib_frames) == truth.roce_frames
    checked = {"cdc": 0, "llc": 0, "write": 0}
    for f in ib_frames:
        ours = [e for e in events[f.number] if e.kind in ("cdc.msg", "llc.msg", "rdma.write")]
        sgid, opcode = f.ib["infiniband.grh.sgid"], int(f.ib["infiniband.bth.opcode"])
        assert int(f.ib["infiniband.grh.nxthdr"]) == 0x1B
        if f.smc:  # a SEND the SMC-R dissector read
            (e,) = ours
            assert e.host == HOST_OF_GID[sgid], (f.number, e)
            smc = f.smc[0]
            if int(smc["smc.llc_msg"], 0) == 0xFE:
                checked["cdc"] += 1
                assert e.kind == "cdc.msg"
                assert e.get("seqno") == int(smc["smc.rmbe.ctrl.seqno"], 0)
                assert e.get("token") == int(smc["smc.rmbe.ctrl.alert.token"], 0)
                prod, cons = smc["smc.rmbe.ctrl.peer.prod.curs"]
                assert e.get("prod").split(":")[1] == str(int(prod, 0)) and e.get("cons").split(":")[1] == str(int(cons, 0))
                assert ("peer_conn_closed" in e.get("flags")) == (smc["smc.rmbe.ctrl.peer.closed.conn"] == "1")
            else:
                checked["llc"] += 1
                assert e.kind == "llc.msg" and int(smc["smc.llc_msg"], 0) == 0x01 and e.get("type") == "LLC CONFIRM LINK"
                assert e.get("qpn") == int(smc["smc.confirm.link.sender.qp.number"], 0)
        elif opcode in (6, 10):  # RDMA WRITE FIRST / ONLY: the RETH
            (e,) = ours
            checked["write"] += 1
            assert e.kind == "rdma.write" and e.host == HOST_OF_GID[sgid]
            assert e.get("rkey") == int(f.ib["infiniband.reth.r_key"], 0)
            assert e.get("length") == int(f.ib["infiniband.reth.dmalen"], 0)
            assert e.get("vaddr") == int(f.ib["infiniband.reth.va"], 0)
        else:  # the rest of a WRITE, an ACK: no message
            assert not ours, (f.number, ours)
    assert checked == {"cdc": len(truth.cdcs), "llc": len(truth.llcs), "write": len(truth.writes)}


def test_the_lua_plugin_ties_roce_v1_cdcs_to_their_tcp_connections(tmp_path):
    path = tmp_path / "v1.pcapng"
    truth = write_v1_capture(str(path))
    proc = tshark.run(["-n", "-r", str(path), "-X", f"lua_script:{PLUGIN}", "-T", "fields", "-e", "frame.number", "-e", "smc.rmbe.ctrl.alert.token",
                       "-e", "smctop.stream"])  # fmt: skip
    assert proc.returncode == 0 and "Lua" not in proc.stderr, proc.stderr
    tied = {}
    for line in proc.stdout.splitlines():
        number, token, conn = (line.split("\t") + ["", ""])[:3]
        if token:
            tied[int(number)] = (int(token, 0), conn)
    assert len(tied) == len(truth.cdcs)
    for token, conn in tied.values():
        assert conn == str(truth.tokens[token]), (token, conn)
