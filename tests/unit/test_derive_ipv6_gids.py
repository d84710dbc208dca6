"""RoCEv2 over IPv6 in captures of real hosts (dissectors/derive.py). A GID is the IP address
of its interface; smc-trace keyed a QP by its owner's address only when the GID was
IPv4-mapped, and otherwise by the CLC sender's address and, for frames between other
addresses (a second link), by the QP number alone. Kernels number QPs alike (from 0x11), so
two link groups with the same QP numbers (two host pairs, or one pair each way) were mixed
up: the second link's CDCs lost their link (``lgr1/C0`` for ``lgr1/L2/C0``), LLC messages
and RDMA WRITEs their link group. A QP is now its owner's full address (IPv6 text for a
GID that is not IPv4-mapped) and number, as the Wireshark plugin keys it. Exported PDUs
carry their addresses in IPv4 tags (20, 21) or IPv6 tags (22, 23; Wireshark's
exported_pdu.h): both are read."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from support.ipv6_roce import IPV6_BOTH_WAYS, IPV6_HOST_PAIRS, events_per_frame, write_ipv6_pairs

from dissectors.capture import read_events
from dissectors.derive import ip_header, ip_payload
from dissectors.pcapng import LINKTYPE_WIRESHARK_UPPER_PDU, PcapngWriter
from stack.wire import cdc, clc, inet

DATA_PATH = ("cdc.msg", "llc.msg", "rdma.write")


@pytest.mark.parametrize("pairs", [IPV6_HOST_PAIRS, IPV6_BOTH_WAYS], ids=["two_host_pairs", "one_pair_both_ways"])
def test_each_roce_frame_over_ipv6_gets_its_own_link_group_and_link(tmp_path, pairs):
    path = tmp_path / "ipv6_pairs.pcapng"
    truth = write_ipv6_pairs(str(path), pairs, writes=True)
    packets, events = events_per_frame(path)
    lgrs = {"P": "lgr1", "Q": "lgr2"}  # first contacts in this order
    seen = {k: 0 for k in DATA_PATH}
    for n, p in enumerate(packets, 1):
        src, _dst, protocol, _, _ = ip_header(ip_payload(p), False)
        pair, stream = truth[n]
        if protocol != inet.IPPROTO_UDP:
            for e in events[n]:  # the CLC handshake: each connection in its own pair's group
                if e.kind == "conn.mode" and e.get("mode") == "SMCR":
                    assert (e.lgr, e.conn) == (lgrs[pair], stream), (n, e)
            continue
        link = 2 if src in pairs[pair][2:4] else 1  # a frame between the second GIDs is on link 2 (ADD LINK)
        host = pairs[pair][pairs[pair].index(src) - 2] if link == 2 else src  # a second port's frames are its host's
        msgs = [e for e in events[n] if e.kind in DATA_PATH]
        assert len(msgs) == 1, (n, events[n])
        e = msgs[0]
        seen[e.kind] += 1
        assert (e.host, e.lgr, e.link) == (host, lgrs[pair], link), (n, pair, e)
        if stream is not None:  # a CDC by its alert token, an RDMA WRITE by its rkey
            assert e.conn == stream, (n, e)
    # CONFIRM LINK and ADD LINK each way per group; per connection a CDC and a WRITE each way on each link
    assert seen == {"llc.msg": 8, "cdc.msg": 16, "rdma.write": 16}, seen
    assert not [e for evs in events.values() for e in evs if e.kind == "trace.note"]


def _pdu(name: str, src: bytes, dst: bytes, body: bytes, v6: bool) -> bytes:
    def tlv(tag: int, value: bytes) -> bytes:
        value += b"\0" * (-len(value) % 4)
        return struct.pack("!HH", tag, len(value)) + value

    tags = (22, 23) if v6 else (20, 21)
    return tlv(12, name.encode() + b"\0") + tlv(tags[0], src) + tlv(tags[1], dst) + struct.pack("!HH", 0, 0) + body


@pytest.mark.parametrize("v6", [True, False], ids=["ipv6_tags", "ipv4_tags"])
def test_exported_pdus_name_their_hosts_by_their_ipv6_or_ipv4_address_tags(tmp_path, v6):
    a, b = ("fd00:1::a", "fd00:1::b") if v6 else ("10.1.0.1", "10.1.0.2")
    pa, pb = ipaddress.ip_address(a).packed, ipaddress.ip_address(b).packed
    path = tmp_path / "pdus.pcapng"
    decline = clc.Decline(b"\x00\x01" + bytes(6), 0x01010000)  # insufficient memory resources
    with open(path, "wb") as f:
        w = PcapngWriter(f)
        i = w.add_interface(LINKTYPE_WIRESHARK_UPPER_PDU, "pdus")
        w.write_packet(i, 1_700_000_000_000_000_000, _pdu("smc", pb, pa, decline.encode(), v6))
        w.write_packet(i, 1_700_000_000_000_001_000, _pdu("smcr_infiniband", pa, pb, cdc.CdcMessage(1, 0xAB, prod=cdc.Cursor(0, 10)).encode(), v6))
    events = list(read_events(str(path)))
    assert not [e for e in events if e.kind == "trace.note"], events
    clc_msg = next(e for e in events if e.kind == "clc.msg")
    assert clc_msg.host == b and clc_msg.get("type") == "Decline"
    fallbacks = {e.host: e.get("declined_by") for e in events if e.kind == "conn.fallback"}
    assert fallbacks == {a: b, b: b}
    assert [e.host for e in events if e.kind == "cdc.msg"] == [a]
