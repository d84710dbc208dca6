"""The Wireshark plugin (dissectors/wireshark/smctop.lua) in tshark, on captures the recorder
writes of real sessions: a fallback (the server forced to decline), a failover (a port pulled
and put back while a connection is open), a plain SMC-Rv2 exchange (LLC lengths
little-endian, the default), and a crafted capture for what real sessions rarely show
(a producer cursor going backwards, abnormal close, write blocked, odd event records).

Every tshark run filters on ``smctop``: a plugin that fails to load still lets tshark exit 0,
but then the filter names an unknown protocol and tshark exits 2.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from support import tshark
from support.ipv6_roce import IPV6_BOTH_WAYS, IPV6_HOST_PAIRS, events_per_frame, write_ipv6_pairs
from support.stacks import echo_exchanges, run, two_stacks

from dissectors.pcapng import LINKTYPE_ETHERNET, LINKTYPE_WIRESHARK_UPPER_PDU, PcapngWriter, read_packets
from dissectors.recorder import Recorder
from dissectors.records import decode_record, is_event_record
from dissectors.wireshark import gen_codes
from stack.events import SCHEMA, render
from stack.wire import cdc, roce

pytestmark = pytest.mark.oracle

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "dissectors" / "wireshark" / "smctop.lua"
FILTER = "smctop || smc || _ws.malformed || _ws.lua.text"


@pytest.fixture(scope="module", autouse=True)
def need_tshark():
    try:
        tshark.tshark_path()
    except RuntimeError as e:
        pytest.skip(str(e))


# ---------------------------------------------------------------------------------------- helpers


def lua_tshark(path, *args: str, plugin: Path = PLUGIN, home: str | None = None) -> subprocess.CompletedProcess:
    """tshark with the plugin given by -X lua_script:, hermetic (or with ``home`` as its home)."""
    return tshark.run(["-n", "-X", f"lua_script:{plugin}", "-r", str(path), *args], home=home)


def _list(v):
    return [] if v is None else v if isinstance(v, list) else [v]


def _walk(node, out: dict, experts: list) -> None:
    """Collect the smctop.* values (lists, in order) and the expert infos of a layer."""
    if isinstance(node, list):
        for n in node:
            _walk(n, out, experts)
        return
    if not isinstance(node, dict):
        return
    if "_ws.expert.message" in node:
        abbrev = next((k for k in node if k.startswith("smctop.expert.")), None)
        experts.append((abbrev, node["_ws.expert.message"]))
    for key, value in node.items():
        for v in _list(value):
            if isinstance(v, (dict, list)):
                _walk(v, out, experts)
            elif key.startswith("smctop.") and not key.endswith("_tree"):
                out.setdefault(key, []).append(v)


class Decoded:
    """One frame as tshark shows it with the plugin: its smctop fields and expert infos."""

    def __init__(self, layers: dict) -> None:
        self.layers = layers
        self.number = int(layers["frame"]["frame.number"])
        self.fields: dict[str, list] = {}
        self.experts: list[tuple[str | None, str]] = []
        _walk(layers.get("smctop"), self.fields, self.experts)
        self.smc = tshark.flatten(layers.get("smc", {}))
        self.malformed = "_ws.malformed" in layers
        self.lua_error = "_ws.lua.text" in json.dumps(layers)

    def one(self, key: str):
        values = self.fields.get(key, [])
        return values[0] if values else None

    def expert(self, abbrev: str) -> list[str]:
        return [msg for a, msg in self.experts if a == abbrev]


def decode_with_plugin(path) -> dict[int, Decoded]:
    proc = lua_tshark(path, "-Y", FILTER, "-T", "json", "--no-duplicate-keys")
    assert proc.returncode == 0, f"tshark with the plugin failed ({proc.returncode}): {proc.stderr}"
    assert "Lua" not in proc.stderr, proc.stderr
    return {d.number: d for d in (Decoded(p["_source"]["layers"]) for p in json.loads(proc.stdout or "[]"))}


def records(path) -> dict[int, object]:
    """Frame number -> the event in that record, read by our own reader."""
    with open(path, "rb") as f:
        return {i: decode_record(p.data) for i, p in enumerate(read_packets(f), 1) if p.interface == 1 and is_event_record(p.data)}


def check_records(path, frames: dict[int, Decoded], given: list) -> dict[int, object]:
    """Every event record carries the plugin's tree with the kind, host and ids of its event,
    and the records are exactly the events the recorder was given."""
    recs = records(path)
    assert recs
    for n, ev in recs.items():
        d = frames[n]
        assert d.one("smctop.kind") == ev.kind, n
        assert d.one("smctop.host") == ev.host, n
        assert d.one("smctop.conn") == (None if ev.conn is None else str(ev.conn)), n
        assert d.one("smctop.link") == (None if ev.link is None else str(ev.link)), n
        assert d.one("smctop.lgr") == ev.lgr, n
        assert d.one("smctop.summary") == render(ev), n  # the schema's template, rendered by the plugin as by Python
    assert Counter((e.kind, e.host, e.conn) for e in recs.values()) == Counter((e.kind, e.host, e.conn) for e in given)
    return recs


def check_clean(frames: dict[int, Decoded]) -> None:
    assert not [n for n, d in frames.items() if d.malformed], "frames malformed with the plugin loaded"
    assert not [n for n, d in frames.items() if d.lua_error], "Lua errors in the tree"
    assert not [n for n, d in frames.items() if d.expert("smctop.expert.cursor_backwards")], "false cursor alarm"
    assert not [n for n, d in frames.items() if d.expert("smctop.expert.bad_record")]


def cdc_frames(frames: dict[int, Decoded]) -> list[Decoded]:
    return [d for d in frames.values() if d.smc.get("smc.llc_msg") == "0xfe"]


def check_cdc_ties(frames: dict[int, Decoded]) -> None:
    """CDC frames name the connection whose CLC Accept/Confirm gave out their alert token
    (tshark's own fields of the CLC frames are the reference)."""
    token_stream, endpoints = {}, {}
    for d in frames.values():
        s, layers = d.smc, d.layers
        stream = layers.get("tcp", {}).get("tcp.stream")
        for key in ("smc.accept.server.rmb.element.alert.token", "smc.client.rmb.element.alert.token"):
            if key in s:
                token_stream[tshark.num(s[key])] = int(stream)
        if stream is not None and "smc.clc_msg" in s and s["smc.clc_msg"] == "1":
            ip, tcp = layers["ip"], layers["tcp"]
            endpoints[int(stream)] = f"{ip['ip.src']}:{tcp['tcp.srcport']} <-> {ip['ip.dst']}:{tcp['tcp.dstport']}"
    cdcs = cdc_frames(frames)
    assert cdcs and token_stream
    for d in cdcs:
        stream = token_stream[tshark.num(d.smc["smc.rmbe.ctrl.alert.token"])]
        assert d.one("smctop.stream") == str(stream), d.number
        assert d.one("smctop.connection") == f"tcp.stream {stream} ({endpoints[stream]})", d.number


# ---------------------------------------------------------------------------------------- captures


def fresh_pair() -> tuple[str, str]:
    """Loopback addresses of our own (other test processes count from 127.100.x with addrs()),
    with room for the second devices (second_device adds 50 to the second octet)."""
    o1, o2 = random.randint(160, 205), random.randint(0, 255)
    return f"127.{o1}.{o2}.1", f"127.{o1}.{o2}.2"


async def _echo_server(r, w):
    while data := await r.read(65536):
        w.write(data)
    w.close()


def record_plain(path: str) -> list:
    async def main():
        async with two_stacks({}, {}, mtu=1024, pair=fresh_pair()) as (a, b, ca, sa):
            events = []
            rec = Recorder(path)
            events.extend((rec.attach(a), rec.attach(b)))  # each stack's state as the recording starts
            a.bus.listen(events.append), b.bus.listen(events.append)
            await echo_exchanges(a, b, ca, sa, 2)
            await asyncio.sleep(0.3)
            rec.close()
            return list(events)  # not what the stacks emit when they close

    return run(main())


def record_fallback(path: str) -> list:
    async def main():
        async with two_stacks({}, {}, mtu=1024, pair=fresh_pair()) as (a, b, ca, sa):
            events = []
            rec = Recorder(path)
            events.extend((rec.attach(a), rec.attach(b)))  # each stack's state as the recording starts
            a.bus.listen(events.append), b.bus.listen(events.append)
            b.force_decline(0x03070000)
            await echo_exchanges(a, b, ca, sa, 1)
            await asyncio.sleep(0.3)
            rec.close()
            return list(events)  # not what the stacks emit when they close

    return run(main())


def record_failover(path: str) -> list:
    """One connection stays open while the server's first port goes down and comes back."""

    async def main():
        async with two_stacks({}, {}, mtu=1024, client_dev=2, server_dev=2, pair=fresh_pair()) as (a, b, ca, sa):
            events = []
            rec = Recorder(path)
            events.extend((rec.attach(a), rec.attach(b)))  # each stack's state as the recording starts
            a.bus.listen(events.append), b.bus.listen(events.append)
            await b.start_server(_echo_server, sa, 5000)
            r, w = await a.open_connection(sa, 5000, local_addr=(ca, 0))
            for step in range(3):
                w.write(os.urandom(3000))
                assert len(await r.readexactly(3000)) == 3000
                await asyncio.sleep(0.2)
                if step == 0:
                    b.set_port(sa, False)
                    await asyncio.sleep(0.4)
                elif step == 1:
                    b.set_port(sa, True)
                    await asyncio.sleep(0.4)
            w.write_eof()
            await r.read()
            w.close()
            await w.wait_closed()
            await asyncio.sleep(0.3)
            rec.close()
            return list(events)  # not what the stacks emit when they close

    return run(main())


def _exported_pdu(payload: bytes, proto: str = "SMCTOP") -> bytes:
    def tlv(tag: int, value: bytes) -> bytes:
        value += b"\0" * (4 - len(value) % 4)
        return struct.pack("!HH", tag, len(value)) + value

    return tlv(12, b"json") + tlv(33, proto.encode()) + struct.pack("!HH", 0, 0) + payload


def write_crafted(path: str) -> dict[str, int]:
    """Frames that real sessions rarely produce; returns name -> frame number."""
    names: dict[str, int] = {}
    with open(path, "wb") as f:
        w = PcapngWriter(f)
        eth = w.add_interface(LINKTYPE_ETHERNET, "smc")
        pdu = w.add_interface(LINKTYPE_WIRESHARK_UPPER_PDU, "smctop events")
        ts = [1_700_000_000_000_000_000]

        def put(name: str, iface: int, data: bytes) -> None:
            ts[0] += 1000
            w.write_packet(iface, ts[0], data)
            names[name] = len(names) + 1

        def send(name: str, payload: bytes, qpn: int = 0x123) -> None:
            pkt = roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, qpn, len(names)), payload=payload)
            put(name, eth, roce.encode_frame(pkt, "10.9.0.1", "10.9.0.2", 49152))

        def cdc_msg(name: str, seq: int, token: int, wrap: int, count: int, **flags) -> None:
            send(name, cdc.CdcMessage(seq, token, prod=cdc.Cursor(wrap, count), **flags).encode())

        cdc_msg("c1", 1, 0xAB, 0, 5000)
        cdc_msg("back", 2, 0xAB, 0, 4000)  # behind 0:5000
        cdc_msg("c3", 3, 0xAB, 0, 6000)
        cdc_msg("next_wrap", 4, 0xAB, 1, 10)
        cdc_msg("w1", 1, 0xCD, 65535, 60000)
        cdc_msg("wrapped", 2, 0xCD, 0, 100)  # the wrap counter wrapped: forward
        cdc_msg("blocked", 5, 0xAB, 1, 20, write_blocked=True)
        cdc_msg("abort", 6, 0xAB, 1, 20, peer_conn_abort=True)
        # DELETE LINK v1 (Wireshark decodes it), and v2 with a big-endian length (Wireshark too; the plugin leaves it)
        send("del_v1", struct.pack("!BBBBBI", 0x04, 44, 0, 0x20, 1, 0x00040000) + bytes(35))
        send("del_v2_be", struct.pack("!BHBBI", 0x24, 44, 0x20, 2, 0x00010000) + bytes(35))
        send("test_v2_le", struct.pack("<BHB", 0x27, 44, 0) + b"0123456789abcdef" + bytes(24))
        # a kernel's ADD LINK v2 reject: the first 44 bytes of a 104-byte request, its length too (a lab run)
        request = bytes.fromhex("22680000525400120101000000000000000000000000ffff0a02010100001304031797c30000000000000000")
        send("add_link_echo", request[:3] + b"\xc1" + request[4:])
        send("add_link_back", request[:3] + b"\x80" + request[4:])  # RESP only: smc_llc_cli_conf_link's echo
        send("add_link_cut", request)  # not a reject: a request cut short is not one
        ev = {"t": 1.5, "kind": "conn.error", "host": 'h\u00e9"x', "lgr": None, "link": None, "conn": 7,
              "reason": "a\\b\nc \U0001F600", "nested": {"a": [1, 2.5, -3e2, True, False, None]}}  # fmt: skip
        put("escapes", pdu, _exported_pdu(json.dumps(ev, ensure_ascii=True, sort_keys=True).encode()))
        put("utf8", pdu, _exported_pdu(json.dumps({**ev, "conn": 8}, ensure_ascii=False).encode()))
        put("broken", pdu, _exported_pdu(b'{"t": 1, "kind": "conn.state", "host": "x"'))
        put("other", pdu, _exported_pdu(b'{"t": 1, "kind": "conn.state"}', proto="OTHER"))
        ev2 = {"t": 2.0, "kind": "link.event", "host": "h", "lgr": "00ab0100", "link": 2, "conn": None, "event": "deleted", "reason": 0x00050000}
        put("deleted", pdu, _exported_pdu(json.dumps(ev2).encode()))
    return names


@pytest.fixture(scope="module")
def fallback(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lua") / "fallback.pcapng")
    given = record_fallback(path)
    return path, given, decode_with_plugin(path)


@pytest.fixture(scope="module")
def failover(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lua") / "failover.pcapng")
    given = record_failover(path)
    return path, given, decode_with_plugin(path)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lua") / "plain.pcapng")
    given = record_plain(path)
    return path, given, decode_with_plugin(path)


# ---------------------------------------------------------------------------------------- tests


def test_generated_code_tables_match_codes_py():
    text = PLUGIN.read_text()
    assert gen_codes.current_block(text) == gen_codes.generated_block(), "run: python -m dissectors.wireshark.gen_codes"
    events_block = gen_codes.current_block(text, gen_codes.BEGIN_EVENTS, gen_codes.END_EVENTS)
    assert events_block == gen_codes.generated_events_block(), "run: python -m dissectors.wireshark.gen_codes"
    for name, k in SCHEMA.items():  # every kind and sub-kind is in the plugin's tables, with its template
        assert f'["{name}"] =' in events_block and k.render.replace('"', '\\"') in events_block
        for sub in k.subs:
            assert f'["{sub}"] =' in events_block
    experts = {k.expert for k in SCHEMA.values()} | {s.expert for k in SCHEMA.values() for s in k.subs.values()}
    for name in experts - {None}:  # every expert the schema names exists in the plugin
        assert f'{name} = ProtoExpert.new("smctop.expert.' in text, name
    assert gen_codes.main(["--check"]) == 0
    assert '[0x03070000] = {"DIFFPREFIX"' in text and '[0x00010000] = {"LOST_PATH"' in text


def test_fallback_capture(fallback):
    path, given, frames = fallback
    check_clean(frames)
    recs = check_records(path, frames, given)
    declines = [d for d in frames.values() if d.smc.get("smc.clc_msg") == "4"]
    assert len(declines) == 1
    d = declines[0]
    assert d.one("smctop.reason_name") == "DIFFPREFIX" and d.one("smctop.decline.reason") == "0x03070000"
    assert [m for m in d.expert("smctop.expert.fallback") if "0x03070000 DIFFPREFIX" in m]
    fallbacks = {ev.host: n for n, ev in recs.items() if ev.kind == "conn.fallback"}
    assert set(fallbacks) == {"client", "server"}
    assert [m for m in frames[fallbacks["server"]].expert("smctop.expert.fallback") if "0x03070000 DIFFPREFIX" in m]
    client_msgs = frames[fallbacks["client"]].expert("smctop.expert.fallback")
    assert client_msgs and "0x05000000 PEERDECL" in client_msgs[0] and "peer: 0x03070000 DIFFPREFIX" in client_msgs[0]
    assert "DIFFPREFIX" in frames[fallbacks["client"]].fields["smctop.reason_name"]
    # the Info column of a record reads as a sentence; the Decline's names its reason
    proc = lua_tshark(path, "-Y", f"frame.number in {{{fallbacks['server']}, {d.number}}}", "-T", "fields", "-e", "_ws.col.Info")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("0x03070000 DIFFPREFIX") and lines[1] == "conn.fallback server C1 0x03070000 DIFFPREFIX", lines


def test_failover_capture(failover):
    path, given, frames = failover
    check_clean(frames)
    recs = check_records(path, frames, given)
    # DELETE LINK frames (SMC-Rv2, little-endian length: dissected by the plugin) name their reason
    deletes = [d for d in frames.values() if d.one("smctop.llc.type") == "0x24"]
    requests = [d for d in deletes if d.one("smctop.llc.response") == "0"]
    responses = [d for d in deletes if d.one("smctop.llc.response") == "1"]
    assert requests and responses
    msgs = [m for d in requests for m in d.expert("smctop.expert.delete_link")]
    assert len(msgs) == len(requests)
    assert any("0x00010000 LOST_PATH" in m for m in msgs) and any("0x00050000 NO_ASYM_NEEDED" in m for m in msgs)
    assert all(d.expert("smctop.expert.delete_link_response") for d in responses)
    # failover records: begin/down warn, end note
    for n, ev in recs.items():
        if ev.kind == "link.event" and ev.get("event") in ("failover_begin", "down"):
            assert frames[n].expert("smctop.expert.failover"), n
        if ev.kind == "link.event" and ev.get("event") == "failover_end":
            assert frames[n].expert("smctop.expert.failover_end"), n
    assert any(ev.get("event") == "failover_begin" and ev.get("conns") for ev in recs.values())
    # the validation CDCs carry the failover expert, and only they
    validations = [d for d in cdc_frames(frames) if d.smc.get("smc.rmbe.ctrl.failover.validation") == "1"]
    sent = [e for e in given if e.kind == "cdc.msg" and e.get("dir") == "tx" and "failover_validation" in (e.get("flags") or [])]
    assert validations and len(validations) == len(sent)
    flagged = {d.number for d in cdc_frames(frames) if d.expert("smctop.expert.failover")}
    assert flagged == {d.number for d in validations}
    check_cdc_ties(frames)
    # QPs: every SEND and RDMA WRITE frame names its QP's owner, from the records of the links
    roce_frames = [d for d in frames.values() if "infiniband" in d.layers and d.one("smctop.qp")]
    assert any("server link" in d.one("smctop.qp") for d in roce_frames) and any("client link" in d.one("smctop.qp") for d in roce_frames)
    for d in roce_frames:
        assert d.one("smctop.link_group").startswith("link group #1 ")


def test_plain_capture_v2_le(plain):
    path, given, frames = plain
    check_clean(frames)
    check_records(path, frames, given)
    check_cdc_ties(frames)
    assert {d.one("smctop.stream") for d in cdc_frames(frames)} == {"0", "1"}
    # every SMC-Rv2 LLC message is decoded, by the plugin (little-endian length) and not by 4.0's dissector
    llc_types = Counter(d.one("smctop.llc.type") for d in frames.values() if d.one("smctop.llc.type"))
    assert {"0x21", "0x26", "0x29"} <= set(llc_types), llc_types
    confirm = next(d for d in frames.values() if d.one("smctop.llc.type") == "0x21")
    assert confirm.one("smctop.llc.length") == "44" and confirm.expert("smctop.expert.llc_v2_le")
    assert not [d.number for d in frames.values() if d.one("smctop.llc.type") and d.smc], "claimed by both dissectors"
    # the record side of the tie: a CDC names the event records' connection that receives it
    tokens = {e.get("token"): f"{e.host} C{e.conn}" for e in given if e.kind == "conn.mode" and e.get("mode") == "SMCR"}
    tied = [d for d in cdc_frames(frames) if d.one("smctop.record_conn")]
    assert tied
    for d in tied:
        assert d.one("smctop.record_conn").startswith(tokens[tshark.num(d.smc["smc.rmbe.ctrl.alert.token"])] + " ")
    # RDMA WRITEs are tied to their connection by the rkey of the RMB they write
    writes = [d for d in frames.values() if "infiniband.reth.r_key" in tshark.flatten(d.layers.get("infiniband", {}))]
    assert writes and all(d.one("smctop.stream") in ("0", "1") for d in writes)


def test_crafted_capture(tmp_path):
    path = tmp_path / "crafted.pcapng"
    n = write_crafted(str(path))
    frames = decode_with_plugin(path)
    # Wireshark's own dissector calls the cut request malformed (its length says 26624): so it is
    assert not [k for k, d in frames.items() if (d.malformed and k != n["add_link_cut"]) or d.lua_error]
    back = frames[n["back"]].expert("smctop.expert.cursor_backwards")
    assert back and "0:4000 after 0:5000" in back[0]
    flagged = {k for k, d in frames.items() if d.expert("smctop.expert.cursor_backwards")}
    assert flagged == {n["back"]}  # 0:6000, 1:10 and the wrapped 0:100 are forward
    assert frames[n["blocked"]].expert("smctop.expert.write_blocked")
    assert frames[n["abort"]].expert("smctop.expert.abnormal_close")
    assert not frames[n["c1"]].experts
    assert [m for m in frames[n["del_v1"]].expert("smctop.expert.delete_link") if "0x00040000 PROT_VIOL" in m]
    be = frames[n["del_v2_be"]]
    assert be.smc.get("smc.llc_msg") == "0x24" and be.one("smctop.llc.type") is None
    assert [m for m in be.expert("smctop.expert.delete_link") if "0x00010000 LOST_PATH" in m]
    assert frames[n["test_v2_le"]].one("smctop.llc.type") == "0x27"
    echo = frames[n["add_link_echo"]]
    assert echo.one("smctop.llc.type") == "0x22" and echo.one("smctop.llc.link_num") == "4" and echo.one("smctop.llc.length") == "104"
    assert [m for m in echo.expert("smctop.expert.add_link_reject") if "reason 1" in m and "length 104" in m]
    back = frames[n["add_link_back"]]
    assert back.one("smctop.llc.type") == "0x22" and back.one("smctop.llc.length") == "104" and not back.expert("smctop.expert.add_link_reject")
    assert [m for m in back.expert("smctop.expert.add_link_echo") if "length 104" in m and "smc_llc_cli_conf_link" in m]
    assert n["add_link_cut"] not in frames or frames[n["add_link_cut"]].one("smctop.llc.type") is None
    for name, conn in (("escapes", "7"), ("utf8", "8")):
        d = frames[n[name]]
        assert d.one("smctop.host") == 'h\u00e9"x' and d.one("smctop.conn") == conn and d.one("smctop.t") == "1.5"
        assert "reason=a\\b\nc \U0001f600" in d.fields["smctop.field"]
        assert "nested={a=[1, 2.5, -300, true, false, null]}" in d.fields["smctop.field"]
        assert d.expert("smctop.expert.conn_error")
    assert frames[n["broken"]].expert("smctop.expert.bad_record")
    assert n["other"] not in frames or frames[n["other"]].one("smctop.kind") is None
    deleted = frames[n["deleted"]]
    assert deleted.one("smctop.reason_name") == "NO_ASYM_NEEDED" and deleted.one("smctop.lgr") == "00ab0100"


def test_broken_plugin_is_detected(plain, tmp_path):
    broken = tmp_path / "smctop.lua"
    broken.write_text(PLUGIN.read_text().replace("local smctop = Proto(", "local smctop = Proto((", 1))
    proc = lua_tshark(plain[0], "-Y", "smctop", plugin=broken)
    assert proc.returncode == 2 and "smctop" in proc.stderr, (proc.returncode, proc.stderr)


def install_plugin(home: Path) -> Path:
    """``smc-trace install-plugin`` as a user whose home is ``home``; the installed file."""
    res = subprocess.run([sys.executable, "-m", "dissectors.cli", "install-plugin"], cwd=ROOT, env=tshark.env(home=str(home)),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    installed = home / ".local/lib/wireshark/plugins/smctop.lua"
    assert installed.read_text() == PLUGIN.read_text()
    return installed


def conn_mode_hosts(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return sorted(proc.stdout.split())


CONN_MODE_HOSTS = ["-Y", 'smctop.kind == "conn.mode"', "-T", "fields", "-e", "smctop.host"]


def test_installed_plugin_loads_from_the_personal_folder(plain, tmp_path):
    install_plugin(tmp_path)
    proc = tshark.run(["-n", "-r", plain[0], *CONN_MODE_HOSTS], home=str(tmp_path))
    assert conn_mode_hosts(proc) == ["client", "client", "server", "server"]
    assert "smctop.lua" not in proc.stderr  # one copy: nothing to say


def test_plugin_loaded_twice_names_the_active_copy(plain, tmp_path):
    """The README's `tshark -X lua_script:smctop.lua` after `smc-trace install-plugin`: the personal
    copy (loaded first) stays active, the second says it was skipped, and nothing fails."""
    installed = install_plugin(tmp_path)
    proc = lua_tshark(plain[0], *CONN_MODE_HOSTS, home=str(tmp_path))
    assert conn_mode_hosts(proc) == ["client", "client", "server", "server"]
    assert "Lua" not in proc.stderr and "Proto_new" not in proc.stderr, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("smctop.lua:")]
    assert notes == [f"smctop.lua: active copy {installed} (version 1.0); skipped {PLUGIN} (version 1.0), loaded second"]
    # the whole decode of a capture is the same as with one copy
    one = lua_tshark(plain[0], "-Y", FILTER, "-T", "json", "--no-duplicate-keys")
    two = lua_tshark(plain[0], "-Y", FILTER, "-T", "json", "--no-duplicate-keys", home=str(tmp_path))
    assert one.returncode == two.returncode == 0 and one.stdout == two.stdout


def test_an_older_personal_copy_is_named_as_such(plain, tmp_path):
    installed = install_plugin(tmp_path)
    installed.write_text(PLUGIN.read_text().replace('local VERSION = "1.0"', 'local VERSION = "0.9"', 1))
    proc = lua_tshark(plain[0], *CONN_MODE_HOSTS, home=str(tmp_path))
    assert conn_mode_hosts(proc) == ["client", "client", "server", "server"]
    assert f"active copy {installed} (version 0.9); skipped {PLUGIN} (version 1.0)" in proc.stderr
    assert "the versions differ: update or remove one copy" in proc.stderr


def test_tests_ignore_the_users_installed_plugin(plain, tmp_path, monkeypatch):
    """The hermetic runner: with the plugin (and preferences) in the user's own home, tshark as the
    tests run it neither loads that copy nor reads those preferences."""
    home = tmp_path / "user"
    install_plugin(home)
    prefs = home / ".config" / "wireshark"
    prefs.mkdir(parents=True)
    (prefs / "heuristic_protos").write_text("smc_tcp,FALSE\n")  # CLC over TCP no longer recognised
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("WIRESHARK_CONFIG_DIR", str(prefs))
    monkeypatch.setenv("WIRESHARK_PLUGIN_DIR", str(home / ".local/lib/wireshark/plugins"))
    # what a user's own tshark would do here: load the personal copy
    mine = subprocess.run([tshark.tshark_path(), "-n", "-r", plain[0], *CONN_MODE_HOSTS], capture_output=True, text=True, timeout=60)
    assert conn_mode_hosts(mine) == ["client", "client", "server", "server"]
    mine = subprocess.run([tshark.tshark_path(), "-n", "-r", plain[0], "-Y", "smc.clc_msg"], capture_output=True, text=True, timeout=60)
    assert mine.returncode == 0 and not mine.stdout, "the user's heuristic_protos did not apply"
    # the tests' tshark: no smctop protocol unless given by -X, and the plugin given by -X is the only copy
    env = tshark.env()
    assert env["HOME"] != str(home) and not any(Path(env["HOME"]).rglob("*")), "the hermetic home is not empty"
    assert "WIRESHARK_PLUGIN_DIR" not in env
    bare = tshark.run(["-n", "-r", plain[0], "-Y", "smctop"])
    assert bare.returncode != 0 and "smctop" in bare.stderr  # unknown field: the personal copy was not loaded
    proc = lua_tshark(plain[0], *CONN_MODE_HOSTS)
    assert conn_mode_hosts(proc) == ["client", "client", "server", "server"]
    assert "smctop.lua" not in proc.stderr, proc.stderr
    # and decode() (CLC over TCP by the built-in heuristic, which the user's preferences turn off) is unchanged
    frames = tshark.decode(plain[0])
    assert [f for f in frames if f.smc and "smc.clc_msg" in f.smc[0]]
    assert not [f for f in frames if "smctop" in f.layers]


def test_kernel_capture_keeps_link_groups_with_the_same_qpns_apart():
    """Two kernels number their QPs alike (both start at 0x11). In the lab's capture the hosts
    connect both ways, so there are two link groups, each with a QP 0x11 and a QP 0x12 on
    different hosts; the plugin found the second group's QPs by their number alone and put
    every frame in link group #1. Each group holds the connections of one direction."""
    fixture = ROOT / "tests" / "lab" / "fixtures" / "kernel_interop_smcr.pcap"
    frames = decode_with_plugin(fixture)
    syns = tshark.run(["-n", "-r", str(fixture), "-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 0", "-T", "fields", "-e", "tcp.stream", "-e", "tcp.dstport"])
    server_port = {int(a): int(b) for a, b in (line.split("\t") for line in syns.stdout.splitlines() if line)}  # stream -> port connected to
    groups: dict[str, set[int]] = {}
    for d in frames.values():
        if "infiniband" in d.layers and d.one("smctop.link_group"):
            label = d.one("smctop.link_group")
            groups.setdefault(label.split(" (")[0], set()).update(int(x) for x in label.split("tcp.stream ")[1].rstrip(")").split(", "))
    assert len(groups) == 2, groups
    assert set().union(*groups.values()) <= set(server_port), server_port
    for streams in groups.values():
        assert len({server_port.get(s) for s in streams}) == 1, (groups, server_port)  # one direction each


def test_frames_the_recording_cut_are_named_not_called_malformed(plain):
    """smc-trace keeps an RDMA WRITE's headers and the start of its data (--write-snaplen,
    128 by default); Wireshark's InfiniBand dissector looks for the whole payload and wrote
    "Invalid Packet Length from LRH! [Malformed Packet]" in the Info column of every one."""
    path, _, frames = plain
    cols = lua_tshark(path, "-T", "fields", "-e", "frame.number", "-e", "frame.cap_len", "-e", "frame.len", "-e", "_ws.col.Info")
    rows = [line.split("\t") for line in cols.stdout.splitlines() if line]
    cut = [r for r in rows if int(r[1]) < int(r[2])]
    assert cut, "the recording cut no frame: the test shows nothing"
    assert not [r for r in rows if "Malformed" in r[3]], [r for r in rows if "Malformed" in r[3]][:3]
    for number, caplen, length, info in cut:
        assert f"[{caplen} of {length} bytes captured: cut by the capture's snap length]" in info and info.startswith("RC RDMA Write"), info
        assert frames[int(number)].expert("smctop.expert.cut")


# ------------------------------------------------------------------------- RoCEv2 over IPv6


@pytest.mark.parametrize("pairs", [IPV6_HOST_PAIRS, IPV6_BOTH_WAYS], ids=["two_host_pairs", "one_pair_both_ways"])
def test_ipv6_link_groups_with_the_same_qpns_stay_apart(tmp_path, pairs):
    """RoCEv2 over IPv6: GIDs are the hosts' IPv6 addresses, not IPv4-mapped. The plugin keyed
    a QP by its owner's IPv4 address (from an IPv4-mapped GID) and otherwise by its number
    alone, so the second link group, with the same QP numbers (on other hosts, or on the
    same two hosts the other way round), was taken for the first. Each frame belongs to its
    own link group, found again by the group's second connection and by the QPs ADD LINK
    announces."""
    path = tmp_path / "ipv6_pairs.pcapng"
    truth = write_ipv6_pairs(str(path), pairs)
    frames = decode_with_plugin(path)
    check_clean(frames)
    lgs = {"P": "link group #1 (connections: tcp.stream 0, 2)", "Q": "link group #2 (connections: tcp.stream 1, 3)"}
    roce_frames = [n for n, d in frames.items() if "infiniband" in d.layers]
    assert len(roce_frames) == 4 + 4 + 16, roce_frames
    for n in roce_frames:
        pair, stream = truth[n]
        d = frames[n]
        assert d.one("smctop.link_group") == lgs[pair], (n, pair, d.fields)
        if stream is not None:  # a CDC: its connection by its alert token
            assert d.one("smctop.stream") == str(stream), (n, d.fields)
    # smc-trace reads the capture as the plugin does: each frame's message in the same group and connection
    _, derived = events_per_frame(path)
    names = {"link group #1": "lgr1", "link group #2": "lgr2"}
    for n in roce_frames:
        [e] = [e for e in derived[n] if e.kind in ("cdc.msg", "llc.msg")]
        assert e.lgr == names[frames[n].one("smctop.link_group").split(" (")[0]], (n, e)
        assert e.conn is None if truth[n][1] is None else str(e.conn) == frames[n].one("smctop.stream"), (n, e)
    clc_ties = [n for n, d in frames.items() if d.smc.get("smc.clc_msg") in ("2", "3")]
    assert len(clc_ties) == 8, clc_ties
    for n in clc_ties:
        pair, stream = truth[n]
        assert frames[n].one("smctop.link_group").startswith(lgs[pair].split(" (")[0] + " ("), (n, frames[n].fields)
        assert frames[n].one("smctop.stream") == str(stream), (n, frames[n].fields)
        client, server = pairs[pair][:2]
        assert frames[n].one("smctop.connection") == f"tcp.stream {stream} ([{client}]:{40000 + stream} <-> [{server}]:5000)", frames[n].fields
    # every QP on its side, those ADD LINK announced included (servers 0x11 and 0x13, clients 0x12 and 0x14)
    for n in roce_frames:
        qp = frames[n].one("smctop.qp") or ""
        side = "server" if qp[:11] in ("QP 0x000011", "QP 0x000013") else "client"
        assert qp.endswith(f"({side} side)") and qp[:11] in ("QP 0x000011", "QP 0x000012", "QP 0x000013", "QP 0x000014"), (n, qp)
