"""The recorder's spool: the compiled one (native/eventenc.c) against its pure-Python twin
(dissectors/spool.py) on generated sequences of calls, and the recorder built on either:
the same file, byte for byte, which decodes to the events it was given."""

from __future__ import annotations

import enum
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_eventenc import C, MyEvent, _python, any_event

from dissectors.capture import read_events
from dissectors.pcapng import read_packets
from dissectors.recorder import HEADER, MESSAGE_KINDS, SPECIAL, Frame, Recorder
from dissectors.spool import SEQ_STEP, Spool
from stack.events import Event, _to_json_py, to_json
from stack.wire import roce

PAYLOADS = [
    bytes([0x04, 0x00]) + bytes(10) + b"CDC-MESSAGE-1" + bytes(4),  # SEND_ONLY
    bytes([0x04, 0x00]) + bytes(10) + b"CDC-MESSAGE-2" + bytes(4),
    bytes([0x05, 0x30]) + bytes(14) + b"WITH-IMM!!!" + b"\0\0\0" + bytes(4),  # pad count 3
    bytes([0x00, 0x00]) + bytes(10) + b"LLC" * 10 + bytes(4),  # SEND_FIRST
    bytes([0x0A, 0x00]) + bytes(26) + b"W" * 64 + bytes(4),  # RDMA WRITE ONLY: no key
    bytes([0x11, 0x00]) + bytes(14) + bytes(4),  # ACK
    b"",
    b"\x04",
]
ADDRS = ["127.0.0.1", "127.0.0.2", "10.0.0.1"]
LOCAL = {"127.0.0.1", "127.0.0.2"}


class Weird:
    direction = "tx"  # a frame without most of its fields


frames = st.builds(
    Frame,
    st.sampled_from(["tx", "rx", "rx", "RX"]),
    st.one_of(st.integers(0, 2**62), st.sampled_from([-1, 2**64])),
    st.one_of(st.sampled_from(ADDRS), st.sampled_from(["bad", "1.2.3.04"])),
    st.one_of(st.just(4791), st.integers(0, 70000)),
    st.sampled_from(ADDRS),
    st.just(4791),
    st.one_of(st.sampled_from(PAYLOADS), st.sampled_from(PAYLOADS).map(bytearray)),
    st.one_of(st.none(), st.none(), st.sampled_from(["", "loss", "port down"])),
) | st.just(Weird())

hosts = st.sampled_from(["client", "server"])
msg_fields = st.fixed_dictionaries({"dir": st.sampled_from(["rx", "tx", "rx"]), "raw": st.sampled_from([p[12:-4] for p in PAYLOADS] + ["zz", "0102"])})
stack_events = st.builds(
    Event,
    st.integers(0, 20).map(lambda n: 100.0 + n * 1e-3),
    st.sampled_from(["cdc.msg", "llc.msg", "conn.cursor", "conn.state", "lgr.state", "link.event", "rdma.write", "conn.open"]),
    hosts,
    st.just("00c13a00"),
    st.integers(1, 2),
    st.integers(1, 3),
    st.one_of(msg_fields, st.just({"old": "ACTIVE", "new": "CLOSED"}), st.just({"offset": 0, "length": 4096})),
)  # fmt: skip
items = st.lists(st.one_of(stack_events, stack_events, frames, any_event()), max_size=12)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("ingest"), items),
        st.tuples(
            st.just("add"),
            st.integers(-(2**40), 2**62),
            st.integers(0, 1),
            st.binary(max_size=20),
            st.one_of(st.none(), st.lists(st.sampled_from(["a", "b", "é", "x\ny"]), max_size=2)),
            st.integers(-2, 25),
        ),  # fmt: skip
        st.tuples(st.just("find"), st.one_of(st.sampled_from([p[12:-4] for p in PAYLOADS]), st.binary(max_size=4))),
        st.tuples(st.just("comment"), st.integers(0, 40), st.sampled_from(["caused a", "caused b", "ü"])),
        st.tuples(st.just("take"), st.one_of(st.none(), st.integers(0, 2**62))),
    ),
    max_size=12,
)


def test_frame_headers_are_the_twins():
    from dissectors.spool import frame_header

    for src, dst, sport, dport, n in [("127.0.0.1", "127.0.0.2", 4791, 4791, 0), ("10.1.2.3", "192.168.255.254", 1, 65535, 4124),
                                      ("0.0.0.0", "255.255.255.255", 0, 4791, 65535 - 28)]:  # fmt: skip
        assert C.frame_header(src, dst, sport, dport, n) == frame_header(src, dst, sport, dport, n)
    for bad in [("127.0.0.01", "1.2.3.4"), ("1.2.3", "1.2.3.4"), ("1.2.3.256", "1.2.3.4"), ("1.2.3.4 ", "1.2.3.4"), ("١.2.3.4", "1.2.3.4")]:
        assert C.frame_header(*bad, 1, 1, 10) is None  # not ours: the Python path decides
    assert C.frame_header("1.2.3.4", "1.2.3.4", 70000, 1, 10) is None
    assert C.frame_header("1.2.3.4", "1.2.3.4", 1, 1, 65535) is None


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535), st.integers(0, 9000))
def test_generated_frame_headers_are_the_twins(a, b, c, d, port, n):
    from dissectors.spool import frame_header

    src, dst = f"{a}.{b}.{c}.{d}", f"{d}.{c}.{b}.{a}"
    assert C.frame_header(src, dst, port, 4791, n) == frame_header(src, dst, port, 4791, n)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([0x00, 0x04, 0x05, 0x01, 0x0A, 0x11]), st.integers(0, 255), st.binary(max_size=40))
def test_send_keys_are_what_decode_packet_cuts(opcode, b1, rest):
    """The lookup key of a frame (the SEND payload) against roce.decode_packet."""
    from dissectors.spool import send_key

    payload = bytes([opcode, b1]) + rest
    off, n = send_key(payload)
    try:
        pkt = roce.decode_packet(payload[: -roce.ICRC_LEN])
        want = bytes(pkt.payload) if opcode in (0x00, 0x04, 0x05) else None
    except roce.RoceError:
        want = None
    assert (payload[off : off + n] if off >= 0 else None) == want


def test_drain_takes_everything_in_order():
    from collections import deque

    from dissectors.spool import drain

    for fn in (C.drain, drain):
        dq = deque(range(5))
        assert fn(dq) == [0, 1, 2, 3, 4] and not dq
        assert fn(dq) == []


def test_without_the_compiled_spool_the_recorder_runs_its_twin(tmp_path):
    out = _python(
        "import native.eventenc as n; n._EXT.path = '/nonexistent/_eventenc.so'\n"
        "from stack.events import Event\n"
        "from dissectors.recorder import Recorder\n"
        f"r = Recorder({str(tmp_path / 'x.pcapng')!r}); r.on_event(Event(1.0, 'events.dropped', 'h', fields={{'count': 1}})); s = r.close()\n"
        "assert s.encoder == 'python' and s.events == 1, s\n"
    )
    assert out.count("smctop events: pure-Python encoder, slower: the compiled event encoder is not built") == 1
    assert [e.kind for e in read_events(tmp_path / "x.pcapng")] == ["events.dropped"]


def _spools():
    args = (HEADER, 0, 1, 1_000_000_000, SPECIAL, frozenset(MESSAGE_KINDS))
    return C.Spool(*args), Spool(*args)


def _same_specials(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x[0] == y[0] and x[1] is y[1] and x[2] == y[2] and x[3] == y[3] and x[4] is y[4], (x, y)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_compiled_spool_does_what_its_twin_does(seq_of_ops):
    c, p = _spools()
    rx_c, rx_p = {}, {}
    seqs = []
    for op in seq_of_ops:
        if op[0] == "ingest":
            rc, rp = c.ingest(list(op[1]), LOCAL, rx_c), p.ingest(list(op[1]), LOCAL, rx_p)
            assert rc[:2] == rp[:2]
            _same_specials(rc[2], rp[2])
            assert rx_c.keys() == rx_p.keys() and all(rx_c[k] is rx_p[k] for k in rx_c)
            seqs += [s[0] for s in rc[2]]
        elif op[0] == "add":
            _, ts, iface, data, comments, key_off = op
            s = c.next_seq()
            assert p.next_seq() == s
            c.add(s, ts, iface, data, comments, key_off)
            p.add(s, ts, iface, data, comments, key_off)
            seqs.append(s)
        elif op[0] == "find":
            assert c.find(op[1]) == p.find(op[1])
        elif op[0] == "comment":
            s = seqs[op[1] % len(seqs)] if seqs else op[1]
            assert c.comment(s, op[2]) == p.comment(s, op[2])
        else:
            assert c.take(op[1]) == p.take(op[1])
        assert c.pending == p.pending and c.seq == p.seq
    assert c.take() == p.take()
    assert c.pending == p.pending == 0


def test_write_to_a_descriptor_is_what_take_returns(tmp_path):
    c, p = _spools()
    data = [os.urandom(i % 50) for i in range(3000)]
    for sp in (c, p):
        for i in range(3000):  # more than one writev batch
            sp.add(sp.next_seq(), 3000 - i, i % 2, data[i], ["note"] if i % 7 == 0 else None)
    want, n = p.take(1500)
    with open(tmp_path / "c.bin", "wb", buffering=0) as f:
        assert c.write(f.fileno(), 1500) == n == 1500
    assert (tmp_path / "c.bin").read_bytes() == want
    with open(tmp_path / "p.bin", "wb", buffering=0) as f:
        assert p.write(f, None) == 1500
    assert (tmp_path / "p.bin").read_bytes() == c.take()[0]


def test_blocks_are_pcapng_the_reader_reads(tmp_path):
    from dissectors.pcapng import LINKTYPE_ETHERNET, LINKTYPE_WIRESHARK_UPPER_PDU, PcapngWriter

    c, _ = _spools()
    c.add(c.next_seq(), 5_000_000_001, 0, b"frame-bytes", ["dropped (tx at 127.0.0.1): loss", "client: conn.state"])
    c.add(c.next_seq(), 5_000_000_000, 1, b"event!", None)
    path = tmp_path / "x.pcapng"
    with open(path, "wb") as f:
        w = PcapngWriter(f)
        w.add_interface(LINKTYPE_ETHERNET, "smc")
        w.add_interface(LINKTYPE_WIRESHARK_UPPER_PDU, "ev")
        w.write_blocks(c.take()[0])
    pk = list(read_packets(path.read_bytes()))
    assert [(p.interface, p.timestamp_ns, p.data, p.comments) for p in pk] == [
        (1, 5_000_000_000, b"event!", []),
        (0, 5_000_000_001, b"frame-bytes", ["dropped (tx at 127.0.0.1): loss\nclient: conn.state"]),
    ]


# ---------------------------------------------------------------------- the recorder on either spool


def session(rng: random.Random) -> list:
    """A recorded session's inputs: two hosts' events (opens, CLC, CDC, state changes a
    received message caused), their frames (with rx copies, a lost one), odd inputs."""
    out: list = []
    t = 50.0
    out.append(Event(t, "conn.open", "client", None, None, 1, {"role": "client", "local": "127.0.0.1:40000", "peer": "127.0.0.2:5000"}))
    out.append(Event(t, "conn.open", "server", None, None, 1, {"role": "server", "local": "127.0.0.2:5000", "peer": "127.0.0.1:40000"}))
    out.append(Event(t, "clc.msg", "client", None, None, 1, {"dir": "tx", "type": "Proposal", "raw": bytes.fromhex("e2d4c3d901")}))
    out.append(Event(t + 1e-5, "clc.msg", "server", None, None, 1, {"dir": "rx", "type": "Proposal", "raw": "e2d4c3d901"}))
    out.append(Event(t + 1e-5, "conn.state", "server", None, None, 1, {"old": "INIT", "new": "ACTIVE"}))
    ts_ns = 1_000_000_000 + int(t * 1e9)
    for i in range(400):
        t += 1e-4
        ts_ns += 100_000
        body = i.to_bytes(4, "big") * 8
        payload = bytes([0x04, 0x00]) + bytes(10) + body + bytes(4)
        out.append(Frame("tx", ts_ns, "127.0.0.1", 4791, "127.0.0.2", 4791, payload, "loss" if i == 7 else None))
        out.append(Frame("rx", ts_ns + 5_000, "127.0.0.1", 4791, "127.0.0.2", 4791, payload))
        out.append(Event(t, "cdc.msg", "client", "00c13a00", 1, 1, {"dir": "tx", "seqno": i, "raw": body}))
        out.append(Event(t + 1e-6, "cdc.msg", "server", "00c13a00", 1, 1, {"dir": "rx", "seqno": i, "raw": body}))
        out.append(Event(t + 1e-6, "conn.cursor", "server", "00c13a00", 1, 1, {"side": "rx", "prod": f"0:{i}", "cons": "0:0"}))
        if i % 50 == 0:
            out.append(Event(t + 1e-6, "link.event", "server", "00c13a00", 1, None, {"event": "fault", "fault": "faults", "loss": rng.random()}))
        if i % 97 == 0:
            out.append(Frame("tx", ts_ns, "not-an-address", 4791, "127.0.0.2", 4791, payload))  # malformed
            out.append(Event(t, "conn.state", "h", conn=1, fields={"t": 1}))  # cannot be a record
            out.append(MyEvent(t, "conn.mode", "client", conn=1, fields={"mode": "SMCR"}))  # a subclass: the Python path
    out.append(Event(t + 1e-3, "conn.state", "client", None, None, 1, {"old": "ACTIVE", "new": "CLOSED"}))
    return out


def record(path, inputs, native: bool, chunks: int) -> object:
    rec = Recorder(str(path), interval=3600, native=native, clock_offset_ns=1_000_000_000)
    rec.local_addrs.update({"127.0.0.1", "127.0.0.2"})
    step = max(1, len(inputs) // chunks)
    for i in range(0, len(inputs), step):
        for item in inputs[i : i + step]:
            (rec.on_event if isinstance(item, Event) else rec.on_frame)(item)
        rec._pump(final=False)  # batches as the writer thread makes them
    return rec.close()


@pytest.mark.parametrize("chunks", [1, 7])
def test_recorder_files_are_the_same_with_either_spool(tmp_path, chunks):
    inputs = session(random.Random(1))
    sc = record(tmp_path / "c.pcapng", inputs, True, chunks)
    sp = record(tmp_path / "p.pcapng", inputs, False, chunks)
    assert (sc.encoder, sp.encoder) == ("compiled", "python")
    a, b = (tmp_path / "c.pcapng").read_bytes(), (tmp_path / "p.pcapng").read_bytes()
    drops = [i for i, p in enumerate(read_packets(a)) if b"events.dropped" in p.data]  # written at time.time_ns()
    assert drops == [i for i, p in enumerate(read_packets(b)) if b"events.dropped" in p.data] and len(drops) >= 1
    assert [p for i, p in enumerate(read_packets(a)) if i not in drops] == [p for i, p in enumerate(read_packets(b)) if i not in drops]
    keep = lambda st: {k: v for k, v in vars(st).items() if k != "encoder"}  # noqa: E731
    assert keep(sc) == keep(sp)


def test_the_recording_holds_every_event_in_time_order_and_comments_the_causing_frame(tmp_path):
    inputs = session(random.Random(2))
    st = record(tmp_path / "c.pcapng", inputs, True, 5)
    events = [e for e in inputs if isinstance(e, Event)]
    bad = [e for e in events if "t" in e.fields]
    assert (st.dropped_events, st.dropped_frames) == (len(bad), 5) and "reserved" in st.last_error
    back = [e for e in read_events(tmp_path / "c.pcapng") if e.kind != "events.dropped"]
    want = sorted((e for e in events if e not in bad), key=lambda e: e.t)
    assert [to_json(e) for e in back] == [_to_json_py(e) for e in want]
    pk = list(read_packets((tmp_path / "c.pcapng").read_bytes()))
    assert [p.timestamp_ns for p in pk if b"events.dropped" not in p.data] == sorted(p.timestamp_ns for p in pk if b"events.dropped" not in p.data)
    frames = [p for p in pk if p.interface == 0]
    assert len([p for p in frames if len(p.data) > 42 + 12 and p.data[42] == 0x04]) == 400  # tx copies; rx copies skipped
    assert any("dropped (tx at 127.0.0.1): loss" in c for p in frames for c in p.comments)
    caused = [p for p in frames if any(c.startswith("server: fault faults loss ") for c in p.comments)]
    assert len(caused) == 8 and all(p.data[42] == 0x04 for p in caused)  # the CDC frame that arrived just before
    assert [p.data[-5:] for p in frames if "server: state INIT -> ACTIVE" in p.comments] == [bytes.fromhex("e2d4c3d901")]  # its CLC segment
    assert st.clc_frames == 1 and st.events == len(events) - len(bad)


def test_seq_steps_leave_room_for_derived_segments():
    assert SEQ_STEP > 4  # a conn.open's handshake (3), a clc.msg's segment, a close's FIN: below the item's own seq
    assert C.SEQ_STEP == SEQ_STEP


def test_odd_enums_and_subclasses_take_the_python_path_with_the_same_bytes(tmp_path):
    class E(enum.Enum):
        A = 1

    inputs = [
        Event(1.0, "link.event", "h", fields={"event": "fault", "fault": "faults", "drop_next": E.A}),
        MyEvent(2.0, "link.event", "h", fields={"event": "test_link_timeout"}),
        Event(3, "events.dropped", "h", fields={"count": 2}),
    ]
    record(tmp_path / "c.pcapng", inputs, True, 1)
    record(tmp_path / "p.pcapng", inputs, False, 1)
    assert (tmp_path / "c.pcapng").read_bytes() == (tmp_path / "p.pcapng").read_bytes()
    assert [e.kind for e in read_events(tmp_path / "c.pcapng")] == ["link.event", "link.event", "events.dropped"]
