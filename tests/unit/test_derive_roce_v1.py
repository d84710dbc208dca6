"""SMC-Rv1 on a real RoCE NIC travels in RoCE v1 frames (ethertype 0x8915: GRH, then BTH),
addressed by the hosts' RoCE v1 GIDs, not IP addresses: the kernel picks such a GID for v1
(``smc_ib_determine_gid``, IB_GID_TYPE_ROCE). smc-trace read only RoCEv2 (UDP 4791), so a
capture of real SMC-Rv1 hosts showed the handshake and nothing of the link group: no LLC, no
CDC, no byte moved, no retransmission. These frames are now read, and tied to the hosts,
QPs and connections the CLC messages name (by their GIDs)."""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from support.derive_ways import both_ways
from support.rocev1 import CLIENT_GID, CLIENT_IP, CLIENT_MAC, FIRST_BYTES, SECOND_BYTES, SERVER_GID, SERVER_IP, SERVER_MAC, write_v1_capture

from dissectors import derive
from dissectors.capture import read_events
from dissectors.pcapng import LINKTYPE_ETHERNET, Packet
from dissectors.roce_analysis import RoceAnalysis
from dissectors.summary import summarize
from stack.wire import cdc, roce

SHAPES = {"ethernet": {}, "vlan": {"vlan": 12}, "tcpdump_any": {"cooked": True, "vlan": 12}, "snap_200": {"snaplen": 200}}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_message_of_a_roce_v1_capture_is_read_and_tied_to_its_host_and_connection(tmp_path, shape):
    path = tmp_path / "v1.pcapng"
    truth = write_v1_capture(str(path), **SHAPES[shape])
    analysis = RoceAnalysis()
    events = list(read_events(str(path), roce=analysis))
    assert not [e for e in events if e.kind == "trace.note"], [e.fields for e in events if e.kind == "trace.note"]
    cdcs = [e for e in events if e.kind == "cdc.msg"]
    # each CDC once, named by the IP address its host's CLC came from (not its GID), on the
    # link group the handshake made, and tied to its connection by the alert token
    assert [(e.host, e.get("token"), int(e.get("prod").split(":")[1])) for e in cdcs] == truth.cdcs
    assert {(e.lgr, e.link) for e in cdcs} == {("lgr1", 1)}
    assert [e.conn for e in cdcs] == [truth.tokens[e.get("token")] for e in cdcs]
    llcs = [e for e in events if e.kind == "llc.msg"]
    assert [(e.host, e.get("type")) for e in llcs] == [(h, "LLC CONFIRM LINK") for h, _ in truth.llcs]
    writes = [e for e in events if e.kind == "rdma.write"]
    assert [(e.host, e.get("rkey"), e.get("length")) for e in writes] == truth.writes
    assert [e.conn for e in writes] == [0, 1]
    # the RC analysis: every request frame, the one sent again counted apart
    totals = analysis.totals()
    assert (totals["frames"], totals["packets"], totals["retransmissions"], totals["acks"]) == (20, 19, truth.retransmitted, 4), totals
    assert totals["go_backs"]["timeout"] == 1 and totals["capture_copies"] == 0
    s = summarize(events).to_dict()
    assert s["connections"]["total"] == 2 and s["connections"]["modes"] == {"SMCR": 2}, s["connections"]
    assert s["moved"] == FIRST_BYTES + SECOND_BYTES, s["moved"]


def test_the_fast_way_through_a_write_reads_roce_v1_as_the_full_decoding_does(tmp_path, monkeypatch):
    """Most frames of a bulk transfer are the middle and last of RDMA WRITEs, read from fixed
    offsets (``_middle_of_a_write``); for RoCE v1 as for RoCEv2, nothing may differ."""
    path = tmp_path / "v1.pcapng"
    write_v1_capture(str(path))
    fast, slow, taken = both_ways(lambda analysis: read_events(str(path), roce=analysis), monkeypatch)
    assert fast == slow and fast[0]
    assert taken == 8  # the first WRITE's 4 MIDDLE and 2 LAST frames (one sent again), the second's MIDDLE and LAST


def _frame(grh: bytes, ib: bytes, icrc: bytes = b"ICRC") -> bytes:
    return SERVER_MAC + CLIENT_MAC + struct.pack("!H", roce.ETH_P_ROCE) + grh + ib + icrc


def _cdc_packet() -> bytes:
    return roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, 0x10A, 7), payload=cdc.CdcMessage(1, 0x2000, prod=cdc.Cursor(0, 10)).encode()).encode()


def _grh(paylen: int, *, version: int = 6, next_header: int = roce.GRH_NEXT_BTH) -> bytes:
    return struct.pack("!IHBB16s16s", version << 28, paylen, next_header, 64, CLIENT_GID, SERVER_GID)


ODD_V1 = {
    "GRH version 4": (_grh(60, version=4) + _cdc_packet() + b"ICRC", "IP version 4 is not 6"),
    "next header not BTH": (_grh(60, next_header=17) + _cdc_packet() + b"ICRC", "next header 0x11 is not an IBA transport header"),
    "payload length past the frame": (_grh(500) + _cdc_packet() + b"ICRC", "payload length 500 but only 60 bytes captured after the GRH"),
    "shorter than a GRH": (_grh(60)[:30], "GRH"),
    "too short for BTH and ICRC": (_grh(8) + b"\x04" * 8, "too short for BTH and ICRC"),
}


@pytest.mark.parametrize("case", sorted(ODD_V1))
def test_a_malformed_roce_v1_frame_is_named_and_the_next_frame_still_read(case):
    body, words = ODD_V1[case]
    good = _grh(len(_cdc_packet()) + 4) + _cdc_packet() + b"ICRC"
    d = derive.Deriver()
    bad_events = list(d.feed(Packet(0, LINKTYPE_ETHERNET, 1_000_000_000, _frame(b"", body, b""), len(body) + 14), 1))
    notes = [e for e in bad_events if e.kind == "trace.note"]
    assert len(notes) == 1 and words in notes[0].get("error"), bad_events
    good_events = list(d.feed(Packet(0, LINKTYPE_ETHERNET, 1_001_000_000, _frame(b"", good, b""), len(good) + 14), 2))
    cdcs = [e for e in good_events if e.kind == "cdc.msg"]
    assert len(cdcs) == 1 and cdcs[0].get("token") == 0x2000 and cdcs[0].host == "fe80::5054:ff:fe13:1"


def test_the_roce_v1_icrc_leaves_out_what_routers_may_change_and_covers_the_rest():
    """The invariant CRC: a GRH's traffic class, flow label and hop limit and the BTH's byte 4
    do not count (IBA 7.8.1, Annex A16); the version, the payload length, the GIDs, the
    transport headers and the payload do."""
    ib = _cdc_packet()
    base = roce.Grh(CLIENT_GID, SERVER_GID, len(ib) + 4).encode()
    want = roce.icrc_v1(base, ib)
    for changed in (roce.Grh(CLIENT_GID, SERVER_GID, len(ib) + 4, hop_limit=1, tclass=0xB8, flow_label=0x12345).encode(),):
        assert roce.icrc_v1(changed, ib) == want
    assert roce.icrc_v1(base, ib[:4] + b"\xc0" + ib[5:]) == want  # FECN/BECN set on the way
    for grh in (base[:8] + SERVER_GID + CLIENT_GID, base[:4] + struct.pack("!H", 99) + base[6:], b"\x40" + base[1:]):
        assert roce.icrc_v1(grh, ib) != want
    assert roce.icrc_v1(base, ib[:-1] + b"\x01") != want
    assert roce.icrc_v1(base, ib[:5] + b"\x00\x01\x0b" + ib[8:]) != want  # another QP
    # the frame writer puts it where a NIC does: after the pad, little-endian
    frame = roce.encode_frame_v1(roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, 0x10A, 7), payload=ib[12:]), CLIENT_GID, SERVER_GID,
                                 src_mac=CLIENT_MAC, dst_mac=SERVER_MAC)  # fmt: skip
    assert frame[12:14] == b"\x89\x15" and frame[-4:] == want and frame[14:54] == base


def test_hosts_are_named_by_ip_even_though_frames_carry_gids(tmp_path):
    path = tmp_path / "v1.pcapng"
    write_v1_capture(str(path))
    hosts = Counter(e.host for e in read_events(str(path)) if e.kind in ("cdc.msg", "llc.msg", "rdma.write"))
    assert set(hosts) == {str(CLIENT_IP), str(SERVER_IP)}, hosts


def test_the_link_group_and_its_link_are_told_as_each_ends_stack_tells_them(tmp_path):
    """From the handshake and CONFIRM LINK a capture shows, each end's link group (its role,
    then SINGLE) and its link (active, with both QPs and GIDs), so smctop's Links view and
    `summary`'s link groups read a capture of real hosts as they read a recording; DELETE
    LINK ALL ends the group."""
    path = tmp_path / "v1.pcapng"
    write_v1_capture(str(path))
    events = list(read_events(str(path)))
    lgr = [(e.host, e.get("old"), e.get("new"), e.get("cause"), e.get("role")) for e in events if e.kind == "lgr.state"]
    client, server = str(CLIENT_IP), str(SERVER_IP)
    assert lgr == [(client, "NONE", "NONE", "created", "client"), (server, "NONE", "NONE", "created", "server"),
                   (client, "NONE", "SINGLE", "CONFIRM LINK", None), (server, "NONE", "SINGLE", "CONFIRM LINK", None)]  # fmt: skip
    added = {e.host: (e.link, e.get("qpn"), e.get("peer_qpn"), e.get("gid"), e.get("peer_gid")) for e in events if e.kind == "link.event"}
    client_gid, server_gid = "fe80::5054:ff:fe13:1", "fe80::5054:ff:fe13:2"
    assert added == {client: (1, 0x105, 0x10A, client_gid, server_gid), server: (1, 0x10A, 0x105, server_gid, client_gid)}
    assert [(e.host, e.link, e.get("new")) for e in events if e.kind == "link.state"] == [(client, 1, "LINK_ACTIVE"), (server, 1, "LINK_ACTIVE")]
    from smctop.model import Model

    m = Model()
    for e in events:
        m.feed(e)
    for host, (_, qpn, peer_qpn, gid, peer_gid) in added.items():
        g = m.lgrs[(host, "lgr1")]
        link = g.links[1]
        assert (g.type, g.role, link.state, link.qpn, link.peer_qpn, link.gid, link.peer_gid) == (
            "SINGLE", "client" if host == client else "server", "LINK_ACTIVE", qpn, peer_qpn, gid, peer_gid)  # fmt: skip


def test_a_second_link_makes_the_group_symmetric_and_delete_link_takes_it_back(tmp_path):
    path = tmp_path / "v1two.pcapng"
    write_v1_capture(str(path), second_link=True)
    events = list(read_events(str(path)))
    assert not [e for e in events if e.kind == "trace.note"]
    types = [(e.get("new"), e.get("cause"), e.get("crit")) for e in events if e.kind == "lgr.state" and e.host == str(SERVER_IP)]
    assert types == [("NONE", "created", None), ("SINGLE", "CONFIRM LINK", True), ("SYM", "CONFIRM LINK", False), ("SINGLE", "DELETE LINK", True),
                     ("NONE", "DELETE LINK", None)]  # fmt: skip
    states = [(e.host, e.link, e.get("new")) for e in events if e.kind == "link.state"]
    client, server = str(CLIENT_IP), str(SERVER_IP)
    assert states == [(client, 1, "LINK_ACTIVE"), (server, 1, "LINK_ACTIVE"), (client, 2, "LINK_ACTIVE"), (server, 2, "LINK_ACTIVE"),
                      (client, 2, "LINK_UNUSED"), (server, 2, "LINK_UNUSED"), (client, 1, "LINK_UNUSED"), (server, 1, "LINK_UNUSED")]  # fmt: skip
    second = {e.host: (e.get("qpn"), e.get("gid")) for e in events if e.kind == "link.event" and e.get("event") == "added" and e.link == 2}
    assert second == {client: (0x106, "fe80::5054:ff:fe13:101"), server: (0x10B, "fe80::5054:ff:fe13:102")}
    totals = RoceAnalysis()
    list(read_events(str(path), roce=totals))
    assert totals.totals()["not_captured"] == 0  # each QP counts its own PSNs
