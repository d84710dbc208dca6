"""tshark decodes what the running stack puts on the wire: a live capture of lo during real
SMC-R sessions (CLC on TCP, LLC and CDC as RoCEv2 SENDs, data as RDMA WRITEs)."""

from __future__ import annotations

import asyncio

import pytest
from support import tshark
from support.stacks import echo_exchanges, run, two_stacks

from dissectors.pcapng import read_packets
from stack.wire import roce

pytestmark = pytest.mark.oracle


def capture(path, hosts: tuple[str, str], body) -> None:
    tshark.capture_lo(path, f"(udp port 4791 or tcp port 5000) and host {hosts[0]} and host {hosts[1]}", body)


def session(versions: frozenset[int], order: str, holder: dict, pair: tuple[str, str]):
    async def main():
        kw = {"versions": versions, "llc_v2_order": order}
        async with two_stacks(kw, kw, mtu=1024, pair=pair) as (a, b, ca, sa):
            holder["addrs"] = (ca, sa)
            await echo_exchanges(a, b, ca, sa, 2, holder.setdefault("info", []))
            await asyncio.sleep(0.2)

    return main


@pytest.mark.parametrize("versions,order", [(frozenset({1}), "little"), (frozenset({2}), "big")], ids=["v1", "v2-big-endian-llc"])
def test_a_live_stack_session_decodes_cleanly(tmp_path, versions, order):
    from support.stacks import addrs

    holder: dict = {}
    pcap = tmp_path / "stack.pcapng"
    ca, sa = addrs()
    capture(pcap, (ca, sa), lambda: run(session(versions, order, holder, (ca, sa))()))
    assert holder["addrs"] == (ca, sa)
    frames = tshark.decode(str(pcap))
    assert frames, "nothing captured"
    assert not [f.number for f in frames if f.malformed], "tshark marks frames malformed"
    smc = [s for f in frames for s in f.smc]
    clc_types = [int(s["smc.clc_msg"]) for s in smc if "smc.clc_msg" in s]
    assert clc_types.count(1) == 2 and clc_types.count(2) == 2 and clc_types.count(3) == 2
    llc_types = {int(s["smc.llc_msg"], 0) for s in smc if "smc.llc_msg" in s}
    base = 0x20 if 2 in versions else 0
    assert {base | 0x01, base | 0x06, base | 0x09, 0xFE} <= llc_types, llc_types
    # the QPN the server named in its Accept is where the client's RoCE frames go
    accept_qpn = next(int(s["smc.accept.server.qp.number"], 16) for s in smc if s.get("smc.clc_msg") == "2")
    to_server = {int(f.ib["infiniband.bth.destqp"], 16) for f in frames if f.ib and f.layers["ip"]["ip.dst"] == sa}
    assert to_server == {accept_qpn}
    assert any(int(f.ib["infiniband.bth.opcode"]) in (roce.Opcode.RDMA_WRITE_ONLY, roce.Opcode.RDMA_WRITE_FIRST) for f in frames if f.ib)
    for pkt in read_packets(pcap.read_bytes()):  # our own decoder agrees, ICRC included
        if pkt.data[23] == 17:
            assert roce.decode_frame(pkt.data, check_icrc=True).icrc_ok
    assert [i["version"] for i in holder["info"]] == [max(versions)] * 2 and [i["first_contact"] for i in holder["info"]] == [True, False]


def test_little_endian_v2_llc_is_wiresharks_known_bug(tmp_path):
    """What an x86 kernel sends (and our default): Wireshark 4.0 misreads the v2 LLC length."""
    from support.stacks import addrs

    holder: dict = {}
    pcap = tmp_path / "le.pcapng"
    ca, sa = addrs()
    capture(pcap, (ca, sa), lambda: run(session(frozenset({2}), "little", holder, (ca, sa))()))
    frames = tshark.decode(str(pcap))
    v2_llc_frames = [f for f in frames if f.ib and int(f.ib["infiniband.bth.opcode"]) == roce.Opcode.SEND_ONLY
                     and not any(s.get("smc.llc_msg") == "0xfe" for s in f.smc)]  # fmt: skip
    assert v2_llc_frames
    # every one is malformed or not taken as SMC at all; the CDCs decode fine
    assert all(f.malformed or not f.smc for f in v2_llc_frames)
    assert any(s.get("smc.llc_msg") == "0xfe" for f in frames for s in f.smc)
