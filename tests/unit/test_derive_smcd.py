"""SMC-D in a capture of real hosts (two guests of one IBM Z machine, or Linux with a virtual
ISM device): the CLC handshake runs over TCP as SMC-R's does, and the data then moves
through ISM memory, which no network capture sees. smc-trace left such a connection's mode
unknown ("?"), with 0 bytes sent and received, and printed its Accept and Confirm as
"CLC SmcdAcceptConfirm". The handshake's outcome is now SMCD, the messages say what they
are, and the summary says the bytes are unknown rather than 0."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from support.rocev1 import FIRST_BYTES, SECOND_BYTES, write_v1_capture

from dissectors.capture import read_events
from dissectors.pcapng import LINKTYPE_ETHERNET, PcapngWriter, read_packets
from dissectors.summary import render, summarize
from dissectors.tcpflow import Endpoint, TcpFlow
from stack.events import check_event
from stack.events import render as render_event
from stack.wire import clc

CLIENT, SERVER = ipaddress.IPv4Address("10.4.0.1"), ipaddress.IPv4Address("10.4.0.2")


def smcd_accept_confirm(kind: int, first_contact: bool, version: int = 1) -> bytes:
    """An SMC-D Accept (2) or Confirm (3), version 1 (48 bytes) or 2 (78 bytes), as Linux
    lays them out (struct smc_clc_msg_accept_confirm, its SMC-D part)."""
    size = clc.SMCD_ACCEPT_CONFIRM_V1_LEN if version == 1 else clc.SMCD_ACCEPT_CONFIRM_V2_LEN
    m = bytearray(size)
    m[0:4] = m[-4:] = clc.EYECATCHER_SMCD
    m[4], m[5:7], m[7] = kind, struct.pack("!H", size), (version << 4) | (0x08 if first_contact else 0) | 1  # typev1 D, both versions
    m[8:16], m[16:24], m[24], m[25] = struct.pack("!Q", 0x1111 + kind), struct.pack("!Q", 0xABC0 + kind), 1, 0x10
    m[28:32] = struct.pack("!I", 0x55)
    if version == 2:
        m[32:34] = struct.pack("!H", 7)
        m[34:66] = clc.make_eid("SMCTOP-ISM")
    return bytes(m)


def write_smcd(path: str, *, version: int = 1, snaplen: int = 0, then_v1_capture: str | None = None) -> None:
    flow = TcpFlow(Endpoint(CLIENT, 40001, bytes.fromhex("020000000001")), Endpoint(SERVER, 5000, bytes.fromhex("020000000002")))
    smcd = clc.SmcdArea(ism_gid=0x1100, ism_chid=7)  # with typev1 N a kernel reads the last byte as an IPv6 prefix count
    if version == 1:
        proposal = clc.Proposal(b"\x8a\x01" + bytes(6), bytes(16), bytes(6), clc.SmcType.D, clc.SmcType.N, 2,
                                clc.IpPrefixArea(ipaddress.IPv4Address("10.4.0.0"), 24), smcd=smcd)  # fmt: skip
    else:
        proposal = clc.Proposal(b"\x8a\x01" + bytes(6), bytes(16), bytes(6), clc.SmcType.N, clc.SmcType.D, 2, None, smcd=smcd,
                                v2=clc.V2Extension((clc.make_eid("SMCTOP-ISM"),), bytes(16), 1, True, smcd=clc.SmcdV2Extension()))  # fmt: skip
    frames = [*flow.handshake(), flow.data(True, proposal.encode()), flow.data(False, smcd_accept_confirm(2, True, version)),
              flow.data(True, smcd_accept_confirm(3, True, version)), flow.fin(True), flow.fin(False), flow.ack(True)]  # fmt: skip
    t = 1_765_000_000_000_000_000
    with open(path, "wb") as f:
        w = PcapngWriter(f)
        i = w.add_interface(LINKTYPE_ETHERNET, "eth0", snaplen=snaplen or 262144)
        for frame in frames:
            t += 100_000
            w.write_packet(i, t, frame[:snaplen] if snaplen else frame, None, len(frame))
        if then_v1_capture:  # an SMC-R capture of the same hour after it, on its own interface
            j = w.add_interface(LINKTYPE_ETHERNET, "eth1")
            with open(then_v1_capture, "rb") as g:
                for p in read_packets(g):
                    w.write_packet(j, p.timestamp_ns + 1_000_000_000, p.data)


@pytest.mark.parametrize("version", [1, 2])
def test_an_smcd_handshake_ends_as_smcd_on_both_ends(tmp_path, version):
    path = tmp_path / "smcd.pcapng"
    write_smcd(str(path), version=version)
    events = list(read_events(str(path)))
    for e in events:
        check_event(e)  # every derived event fits the schema
    modes = [(e.host, e.get("mode"), e.get("version"), e.get("first_contact")) for e in events if e.kind == "conn.mode"]
    assert modes == [(str(CLIENT), "SMCD", version, True), (str(SERVER), "SMCD", version, True)]
    types = [e.get("type") for e in events if e.kind == "clc.msg"]
    assert types == ["Proposal", "SMC-D Accept", "SMC-D Confirm"]
    line = render_event(next(e for e in events if e.kind == "clc.msg" and e.get("type") == "SMC-D Accept"))
    assert line == f"sent CLC SMC-D Accept v{version} first contact"
    assert [e.get("new") for e in events if e.kind == "conn.state"] == ["ACTIVE", "ACTIVE", "CLOSED", "CLOSED"]
    assert not [e for e in events if e.kind in ("conn.fallback", "trace.note")]


def test_the_summary_says_an_smcd_connections_bytes_are_unknown_not_zero(tmp_path):
    v1 = tmp_path / "v1.pcapng"
    write_v1_capture(str(v1))
    path = tmp_path / "mixed.pcapng"
    write_smcd(str(path), then_v1_capture=str(v1))
    s = summarize(read_events(str(path)))
    d = s.to_dict()
    assert d["connections"]["modes"] == {"SMCD": 1, "SMCR": 2}
    assert d["moved"] == FIRST_BYTES + SECOND_BYTES  # SMC-R's bytes, which the capture shows
    smcd_rows = [c for c in d["conns"] if c["mode"] == "SMCD"]
    assert len(smcd_rows) == 2 and not any(c["data_seen"] for c in smcd_rows)
    assert all(c["data_seen"] for c in d["conns"] if c["mode"] == "SMCR")
    text = render(s)
    rows = [line.split() for line in text.splitlines() if " SMCD " in line]
    assert len(rows) == 2 and all(r[-4:-2] == ["?", "?"] for r in rows), rows
    assert "ISM memory" in text and "connections: 3 (6 ends) SMCD=1 SMCR=2" in text


def test_an_smcd_accept_cut_by_a_snap_length_still_says_what_it_is(tmp_path):
    path = tmp_path / "smcd-cut.pcapng"
    write_smcd(str(path), snaplen=80)  # the Accept's header and a little more
    events = list(read_events(str(path)))
    cut = [e for e in events if e.kind == "clc.msg" and e.get("cut")]
    assert cut and all(e.get("type") in ("Proposal", "SMC-D Accept", "SMC-D Confirm") for e in cut), [e.fields for e in cut]
