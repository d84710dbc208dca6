"""Failed SMC attempts in a capture (dissectors/derive.py, conn.attempt): a SYN carrying the
SMC TCP option answered by a RST (connection refused) or never answered was no connection and
was not listed anywhere; now the summary lists who tried whom, how it ended and when, and the
timeline shows it. Plain TCP without the option stays out, as a connection that opened does."""

from __future__ import annotations

import io
import ipaddress
import json

from dissectors.capture import read_events
from dissectors.pcapng import LINKTYPE_ETHERNET, PcapngWriter
from dissectors.summary import render, summarize
from dissectors.tcpflow import Endpoint, TcpFlow
from dissectors.timeline import timeline
from stack.events import check_record, to_json

S = 1_000_000_000
SERVER = ipaddress.IPv4Address("10.4.0.2")


def flow(port: int, smc: bool = True, server_port: int = 5000) -> TcpFlow:
    return TcpFlow(Endpoint(ipaddress.IPv4Address("10.4.0.1"), port, smc=smc, isn=port * 1000), Endpoint(SERVER, server_port))


def capture() -> bytes:
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    w.add_interface(LINKTYPE_ETHERNET, "eth0")
    refused = flow(40001)
    syn, _, _ = refused.handshake()  # the SYN only: the port is closed
    refused_rst = TcpFlow(refused.server, refused.client).rst(True)  # the server's RST
    unanswered = flow(40002, server_port=5999)
    syn2 = unanswered.handshake()[0]
    plain = flow(40003, smc=False, server_port=22)
    plain_syn = plain.handshake()[0]
    plain_rst = TcpFlow(plain.server, plain.client).rst(True)
    ok = flow(40004)
    frames = [(1 * S, syn), (1 * S + 300_000, refused_rst), (2 * S, syn2), (3 * S, syn2),  # its SYN sent again a second later
              (4 * S, plain_syn), (4 * S + 1000, plain_rst), *((5 * S + i, f) for i, f in enumerate(ok.handshake()))]  # fmt: skip
    for ns, frame in frames:
        w.write_packet(0, ns, frame)
    return buf.getvalue()


def test_refused_and_unanswered_smc_attempts_are_listed():
    events = list(read_events(capture()))
    attempts = [e for e in events if e.kind == "conn.attempt"]
    got = [(e.host, e.get("local"), e.get("peer"), e.get("outcome"), e.get("syns"), e.t) for e in attempts]
    assert got == [("10.4.0.1", "10.4.0.1:40001", "10.4.0.2:5000", "refused", None, 1.0),
                   ("10.4.0.1", "10.4.0.1:40002", "10.4.0.2:5999", "unanswered", 2, 2.0)]  # fmt: skip
    assert attempts[0].get("wait_ms") == 0.3 and "RST from 10.4.0.2:5000" in attempts[0].get("cause")
    for e in attempts:
        check_record(json.loads(to_json(e)), strict=True)
    lines = list(timeline(events))
    assert any("conn.attempt" in x and "SMC connect 10.4.0.1:40001 -> 10.4.0.2:5000 refused (RST from 10.4.0.2:5000) in 0.3 ms" in x for x in lines)
    assert any("SMC connect 10.4.0.1:40002 -> 10.4.0.2:5999 unanswered (no SYN-ACK in the capture), 2 SYNs" in x for x in lines), lines
    assert not any(":40003" in x for x in lines if "conn.attempt" in x)  # no SMC option: not an SMC attempt
    s = summarize(events)
    d = s.to_dict()
    assert d["connections"]["total"] == 1 and d["connections"]["ends"] == 2  # the one that opened, from both ends; the attempts are no connections
    assert d["attempts"] == [
        {"host": "10.4.0.1", "peer": "10.4.0.2:5000", "outcome": "refused", "count": 1, "first_s": 0.0, "last_s": 0.0},
        {"host": "10.4.0.1", "peer": "10.4.0.2:5999", "outcome": "unanswered", "count": 1, "first_s": 1.0, "last_s": 1.0},
    ]
    text = render(s)
    assert "Failed SMC attempts (a SYN offering SMC that made no connection): 2" in text
    assert "  10.4.0.1 -> 10.4.0.2:5000: refused x1, at 0.000 s" in text and "  10.4.0.1 -> 10.4.0.2:5999: unanswered x1, at 1.000 s" in text


def test_a_capture_without_failed_attempts_says_nothing_of_them():
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    w.add_interface(LINKTYPE_ETHERNET, "eth0")
    for i, f in enumerate(flow(40010).handshake()):
        w.write_packet(0, S + i, f)
    s = summarize(read_events(buf.getvalue()))
    assert s.to_dict()["attempts"] == [] and "Failed SMC attempts" not in render(s)
