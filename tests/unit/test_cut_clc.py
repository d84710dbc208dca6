"""CLC messages whose TCP segment a capture's snap length cut (dissectors/derive.py,
stack/wire/clc.decode_cut): every field within the bytes kept is read (the header, the
type, the path, the Decline's reason, an Accept's QP, token and rkey), the cut is named
(the trace note), and when the message ends with its segment the next one is read on. No
field of a cut message was read: a 200-byte snap length left every connection of mode "?"."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from dissectors.derive import derive_events
from dissectors.pcap import read_pcap
from dissectors.pcapng import LINKTYPE_ETHERNET, Packet
from dissectors.summary import summarize
from dissectors.tcpflow import Endpoint, TcpFlow
from stack.events import check_record, render, to_json
from stack.wire import clc

KERNEL_CAPTURE = Path(__file__).resolve().parents[1] / "lab" / "fixtures" / "kernel_interop_smcr.pcap"
NOSMCDEV = 0x03030000


def snapped(frames: list[bytes], snaplen: int) -> list[Packet]:
    return [Packet(0, LINKTYPE_ETHERNET, 1_000_000_000 + i * 1000, f[:snaplen], len(f)) for i, f in enumerate(frames)]


def declined(version: int = 1, ipv6: bool = False) -> list[bytes]:
    """SYN and SYN-ACK with the SMC option, then the server's Decline (NOSMCDEV)."""
    a, b = ("fd00::1", "fd00::2") if ipv6 else ("10.9.0.1", "10.9.0.2")
    flow = TcpFlow(Endpoint(ipaddress.ip_address(a), 40000), Endpoint(ipaddress.ip_address(b), 5000))
    extra = (1, 2, 3, 4) if version == 2 else None
    decline = clc.Decline(peer_id=b"\x11" * 8, diagnosis=NOSMCDEV, version=version, extra_diagnosis=extra).encode()
    return [*flow.handshake(), flow.data(False, decline)]


@pytest.mark.parametrize("ipv6", [False, True])
def test_a_cut_decline_still_gives_its_reason_and_the_fallback(ipv6):
    frames = declined(version=2, ipv6=ipv6)
    headers = len(frames[-1]) - 44
    events = list(derive_events(snapped(frames, headers + 24)))  # 24 of the Decline's 44 bytes: to its os_type
    (msg,) = [e for e in events if e.kind == "clc.msg"]
    assert msg.get("type") == "Decline" and msg.get("version") == 2 and msg.get("diagnosis") == NOSMCDEV and msg.get("cut") == 20
    assert "NOSMCDEV" in msg.get("diagnosis_text") and "cut short: 20 bytes not captured" in render(msg)
    check_record(_record(msg), strict=True)
    fb = {e.host: e.get("reason") for e in events if e.kind == "conn.fallback"}
    server = "fd00::2" if ipv6 else "10.9.0.2"
    assert fb[server] == NOSMCDEV and len(fb) == 2
    notes = [e.get("error") for e in events if e.kind == "trace.note"]
    assert len(notes) == 1 and "cut by the capture's snap length: 24 of its 44 bytes captured" in notes[0], notes


def test_a_decline_cut_in_its_header_fields_gives_what_it_kept():
    frames = declined()
    headers = len(frames[-1]) - 28
    events = list(derive_events(snapped(frames, headers + 12)))  # the header and the first bytes of the peer id
    (msg,) = [e for e in events if e.kind == "clc.msg"]
    assert msg.get("type") == "Decline" and msg.get("version") == 1 and msg.get("cut") == 16
    assert "diagnosis" not in msg.fields and "peer_id" not in msg.fields
    assert not [e for e in events if e.kind == "conn.fallback"]  # the reason was not captured: no outcome is made up
    assert any("cut by the capture's snap length" in e.get("error") for e in events if e.kind == "trace.note")
    check_record(_record(msg), strict=True)


def _record(e) -> dict:
    return json.loads(to_json(e))


def test_a_200_byte_snap_length_keeps_every_field_smc_trace_needs():
    """The lab's kernels: every CLC message is cut (the Proposal's prefixes and UEIDs, the
    first-contact extensions), but their fixed parts (QP, token, rkey, GID) were kept."""
    cut = [Packet(p.interface, p.linktype, p.timestamp_ns, p.data[:200], len(p.data)) for p in read_pcap(KERNEL_CAPTURE.read_bytes())]
    events = list(derive_events(cut))
    s = summarize(events).to_dict()
    assert s["connections"] == {"total": 4, "ends": 8, "modes": {"SMCR": 4}}
    clcs = [e for e in events if e.kind == "clc.msg"]
    assert len(clcs) == 12 and all(e.get("cut") for e in clcs if e.get("type") == "Proposal")
    accepts = [e for e in clcs if e.get("type") == "Accept"]
    assert accepts and all(e.get("qpn") and e.get("token") and e.get("rkey") for e in accepts)
    notes = [e.get("error") for e in events if e.kind == "trace.note"]
    assert notes and all("cut by the capture's snap length" in n for n in notes)


def test_decode_cut_reads_only_whole_fields():
    accept = clc.Accept(b"\1" * 8, b"\2" * 16, b"\3" * 6, 0x123456, 0xAABBCCDD, 0x11223344, 2, 3, 0x1000, 0x654321, version=1)
    raw = accept.encode()
    cut = clc.decode_cut(raw[:44])  # up to rmb_rkey (41..45) only partly
    assert cut.message.qpn == 0x123456 and cut.known == {"peer_id", "gid", "mac", "qpn"} and not cut.complete
    cut = clc.decode_cut(raw[:64])
    assert cut.complete and cut.message.rmb_rkey == 0xAABBCCDD and cut.message.psn == 0x654321 and cut.header.length == 68
    with pytest.raises(clc.ClcError):
        clc.decode_cut(raw)  # whole: not cut
    with pytest.raises(clc.ClcError):
        clc.decode_cut(b"\xe2\xd4\xc3\xd9\x09\x00\x44\x10")  # an unknown type
