"""tshark decodes the LLC exchanges of link management: two hosts with two soft devices
each, a second link added after first contact, a port lost and restored on each side
(DELETE LINK, an asymmetric link, the client's invitation or request, the symmetric
link and the asymmetric one deleted), captured live on lo.

Wireshark 4.0's known mistakes, kept visible here rather than hidden:
* SMC-Rv2 LLC lengths: the kernel (and we, by default) send them little-endian, which
  Wireshark reads big-endian (``test_stack_capture``); this capture uses big-endian.
* ADD LINK CONTINUATION: Wireshark reads each rkey triple two bytes early, so its
  "Rkey1" shows the high half of our rkey (asserted below, so a fixed Wireshark shows up).
"""

from __future__ import annotations

import os

import pytest
from support import tshark
from support.stacks import addrs, echo_exchanges, run, second_device, two_stacks, until

pytestmark = pytest.mark.oracle


def _types(*stacks) -> list[str]:
    return [g["type"] for s in stacks for g in s.snapshot()["lgrs"]]


def session(versions: frozenset[int], pair: tuple[str, str], seen: dict):
    async def main():
        kw = {"versions": versions, "llc_v2_order": "big"}
        async with two_stacks(kw, kw, mtu=1024, client_dev=2, server_dev=2, pair=pair) as (a, b, ca, sa):
            events = []
            a.bus.listen(events.append)
            b.bus.listen(events.append)

            await echo_exchanges(a, b, ca, sa, 2)  # first contact with a second link, then CONFIRM RKEY on both links
            # a connection held open through the port changes: every ADD LINK that brings a
            # link back carries its RMB's rkey (in a CONTINUATION for SMC-Rv1), however the
            # first contact's second link raced the first connection's close
            r, w = await a.open_connection(sa, 5000, local_addr=(ca, 0))
            await until(lambda: _types(a, b) == ["SYM", "SYM"], what="a symmetric link group")
            for stack, dev in ((b, sa), (a, ca)):  # the server's port, then the client's
                stack.set_port(dev, False)
                await until(lambda: sorted(_types(a, b)) == ["ASYML", "ASYMP"], what="an asymmetric link after the port went down")
                stack.set_port(dev, True)
                await until(lambda: _types(a, b) == ["SYM", "SYM"] and all(len(g["links"]) == 2 for s in (a, b) for g in s.snapshot()["lgrs"]),
                            what="a symmetric link group again, its asymmetric link deleted")  # fmt: skip
            sent = os.urandom(20_000)
            w.write(sent)
            w.write_eof()
            seen["echoed"] = await r.read() == sent
            w.close()
            await w.wait_closed()
            seen["types"] = _types(a, b)
            seen["cont_rkeys"] = [t["rkey"] for e in events if e.kind == "llc.msg" and e.get("dir") == "tx"
                                  and "CONTINUATION" in e.get("type") for t in e.get("rkeys")]  # fmt: skip

    return main


@pytest.mark.parametrize("version", [1, 2])
def test_link_management_decodes_in_tshark(tmp_path, version):
    ca, sa = addrs()
    seen: dict = {}
    pcap = tmp_path / f"failover-v{version}.pcapng"
    tshark.capture_lo(pcap, "udp port 4791 or tcp port 5000", lambda: run(session(frozenset({version}), (ca, sa), seen)()))
    assert seen["types"] == ["SYM", "SYM"] and seen["echoed"]
    frames = tshark.decode(str(pcap))
    ours = {ca, sa, second_device(ca), second_device(sa)}
    frames = [f for f in frames if f.layers.get("ip", {}).get("ip.src") in ours]
    assert frames and not [f.number for f in frames if f.malformed], "tshark marks frames malformed"
    llc = [(f, s) for f in frames for s in f.smc if "smc.llc_msg" in s and s["smc.llc_msg"] != "0xfe"]
    v = 0x20 if version == 2 else 0
    types = [tshark.num(s["smc.llc_msg"]) for _, s in llc]
    for t in (0x01, 0x02, 0x04, 0x06, 0x09):
        assert v | t in types, f"no LLC type 0x{v | t:02x} in {sorted(set(types))}"
    if version == 1:
        assert 0x03 in types  # ADD LINK CONTINUATION, both ways
        # the client's invitation: an ADD LINK request without a QP
        assert any(s.get("smc.add.link.sender.qp.number") == "0x000000" and s["smc.add.link.response"] == "0" for _, s in llc)
    else:
        assert 0x25 in types  # REQUEST ADD LINK
    # CONFIRM LINK travels on the second devices too: the new links are real QPs between them
    second = {second_device(ca), second_device(sa)}
    assert any(f.layers["ip"]["ip.src"] in second for f, s in llc if tshark.num(s["smc.llc_msg"]) == v | 0x01)
    deletes = [(s["smc.delete.link.response"], tshark.num(s["smc.delete.link.reason.code"]), s["smc.delete.link.orderly"])
               for _, s in llc if "smc.delete.link.reason.code" in s and s["smc.delete.link.all"] == "0"]  # fmt: skip
    assert ("0", 0x00010000, "1") in deletes  # lost path, orderly
    assert ("0", 0x00050000, "1") in deletes  # the asymmetric link is no longer needed
    assert ("1", 0, "0") in deletes
    if version == 1:  # Wireshark 4.0 reads ADD LINK CONTINUATION rkeys two bytes early (see the module doc)
        shown = [tshark.num(x) for _, s in llc for x in _as_list(s.get("smc.add.link.cont.rmb.RTok1.Rkey1"))]
        assert shown and all(x >> 16 == 0 for x in shown)
        assert {x for x in shown} <= {r >> 16 for r in seen["cont_rkeys"]}


def _as_list(v):
    return [] if v is None else v if isinstance(v, list) else [v]
