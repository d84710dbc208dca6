"""The event schema (stack/events.py): every recorded fixture matches it, every kind is
declared with fields, types, a description and a template, and what does not match is
refused with a message that names the kind and the field."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from dissectors.capture import read_events
from smctop.synthetic import SyntheticStack
from stack import events
from stack.events import LINK_EVENTS, SCHEMA, TYPES, BadRecord, Event, EventBus, Skipped, check_event, check_record, from_json, render

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = sorted(p for p in (ROOT / "tests").rglob("*") if p.is_file() and ("fixtures" in p.parts or "golden" in p.parts)
                  and p.suffix in (".jsonl", ".pcap", ".pcapng"))  # fmt: skip


def test_there_are_fixtures_to_check():
    names = {p.name for p in FIXTURES}
    assert {"session.jsonl", "kernel_interop_smcr.pcap"} <= names


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recorded_fixture_matches_the_schema(path):
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        records = [json.loads(events.to_json(e)) for e in read_events(path)]
    assert records
    for n, d in enumerate(records, 1):
        e = check_record(d, strict=True)  # raises BadRecord naming the kind and field
        assert render(e), n
    kinds = {d["kind"] for d in records}
    assert kinds <= set(SCHEMA)


def test_the_synthetic_source_emits_what_the_stack_emits():
    s = SyntheticStack()
    evs = s.setup(0.0) + s.step(1.0) + s.fail_link(2.0) + s.step(3.0) + s.restore_link(4.0) + s.step(5.0)
    assert [check_event(e) for e in evs if check_event(e)] == []


def test_every_kind_is_declared_whole():
    assert len(LINK_EVENTS) >= 17
    for k in [*SCHEMA.values(), *LINK_EVENTS.values()]:
        assert k.doc and k.render, k.name
        for f in k.fields:
            assert f.type in TYPES and f.doc, (k.name, f.name)
        assert len({f.name for f in k.fields}) == len(k.fields), k.name
    assert set(events.KINDS) == set(SCHEMA)
    assert "conn.stats" not in SCHEMA  # listed once, never emitted: gone


def test_a_kind_missing_from_the_schema_fails():
    with pytest.raises(BadRecord, match="unknown event kind 'conn.teleported'"):
        check_record({"t": 1.0, "kind": "conn.teleported", "host": "h", "conn": 1})
    with pytest.raises(BadRecord, match='unknown event "warp"'):
        check_record({"t": 1.0, "kind": "link.event", "host": "h", "event": "warp"})
    assert "unknown event kind" in check_event(Event(1.0, "conn.teleported", "h", conn=1))


def test_the_emit_checker_catches_what_a_producer_gets_wrong():
    before = len(events.emit_errors)
    bus = EventBus()
    bus.listen(lambda e: None)
    bus.emit(Event(1.0, "conn.cursor", "h", conn=1, fields={"side": "rx", "prod": 17}))
    bus.emit(Event(1.0, "conn.state", "h", conn=1, fields={"old": "INIT", "new": "ACTIVE", "extra": 1}))
    found = events.emit_errors[before:]
    del events.emit_errors[before:]
    assert len(found) == 2
    assert "conn.cursor: prod must be an RMBE cursor" in found[0] and "not in the schema: ['extra']" in found[1]


@pytest.mark.parametrize("record,words", [
    ({"t": 1, "kind": "conn.cursor", "host": "h", "conn": None, "side": "rx"}, "conn.cursor: conn must not be null"),
    ({"t": 1, "kind": "rdma.write", "host": "h", "conn": 1, "length": 1.5}, "rdma.write: length must be a whole number"),
    ({"t": 1, "kind": "conn.fallback", "host": "h", "conn": 1, "reason": {}}, "conn.fallback: reason must be a decline"),
    ({"t": 1, "kind": "conn.state", "host": "h", "conn": "3", "old": "A", "new": "B"}, "conn must be a whole number"),
    ({"t": 1, "kind": "llc.msg", "host": "h", "lgr": 7, "dir": "tx", "type": "x"}, "lgr must be text"),
    ({"t": 1, "kind": "conn.rmb", "host": "h", "conn": 1, "fill": -1}, "fill must be a whole number >= 0"),
    ({"t": 1, "kind": "rdma.write", "host": "h", "conn": 1, "length": 10**30}, "length must be a whole number"),
    ({"t": 1.7e18, "kind": "conn.error", "host": "h", "conn": 1, "reason": "x"}, "t must be seconds"),
    ({"kind": "conn.error", "host": "h", "conn": 1, "reason": "x"}, "lacks 't'"),
    ({"t": 1, "kind": "conn.error", "host": ["h"], "conn": 1, "reason": "x"}, "host must be a string"),
    ({"t": 1, "kind": "conn.error", "host": "h", "conn": 1}, "lacks 'reason'"),
    ({"t": 1, "kind": "cdc.msg", "host": "h", "dir": "up"}, "dir must be"),
    ({"t": 1, "kind": "conn.cursor", "host": "h", "conn": 1, "side": "rx", "prod": "65536:0"}, "prod must be an RMBE cursor"),
    ({"t": 1, "kind": "conn.cursor", "host": "h", "conn": 1, "side": "rx", "cons": "0:4294967296"}, "cons must be an RMBE cursor"),
    ({"t": 1, "kind": "conn.cursor", "host": "h", "conn": 1, "side": "rx", "prod": "1:\u0662"}, "prod must be an RMBE cursor"),
    ({"t": 1, "kind": "conn.cursor", "host": "h", "conn": 1, "side": "rx", "prod": "1:2:3"}, "prod must be an RMBE cursor"),
    ({"t": 1, "kind": "conn.cursor", "host": "h", "conn": 1, "side": "rx", "prod": "00000000000001:11"}, "prod must be an RMBE cursor"),
    ({"t": 1, "kind": "conn.error", "host": "h", "conn": 1, "reason": "x", "junk": [[[[[[[[[[[1]]]]]]]]]]]}, "nested too deeply"),
    ([1, 2], "must be a JSON object"),
])  # fmt: skip
def test_records_that_do_not_match_are_refused_with_a_reason(record, words):
    with pytest.raises(BadRecord, match=None) as info:
        check_record(record)
    assert words in str(info.value), str(info.value)


@pytest.mark.parametrize("line,words", [
    ('{"t": NaN, "kind": "conn.error"}', "NaN is not a number"),
    ('{"t": Infinity, "kind": "conn.error"}', "Infinity is not a number"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"t": 1, "kind": "conn.error", "conn": 1, "reason": "' + "x" * (2 << 20) + '"}', "longer than"),
    ("{nope", "not JSON"),
])  # fmt: skip
def test_json_from_outside_is_bounded(line, words):
    with pytest.raises(BadRecord) as info:
        from_json(line)
    assert words in str(info.value)


@pytest.mark.parametrize("text,ok", [
    ("0:0", True), ("65535:4294967295", True), ("00065535:1", True), ("1:0004294967295", True),
    ("65536:0", False), ("0:4294967296", False), ("99999:1", False), ("1:9999999999", False),
    (":1", False), ("1:", False), ("1:2:3", False), (" 1:2", False), ("1:2\n", False), ("-1:2", False), ("+1:2", False),
    ("1:\u0662", False), ("\u00b2:1", False), ("1_0:1", False), ("0000000000001:1", True), ("00000000000001:11", False), (1, False), (None, False),
])  # fmt: skip
def test_a_cursor_is_wrap_and_count_in_ascii_digits_within_16_and_32_bits(text, ok):
    # readers check every data-path event's cursors; the check is quick, not looser
    assert TYPES["cursor"].check(text) is ok


@pytest.mark.parametrize("text,ok", [
    ("", True), ("00ff", True), ("0123456789abcdef", True), ("abc", False), ("AB", False), ("0g", False), ("ab\n", False),
    ("\u0660\u0661", False), ("ab" * 65535, True), ("ab" * 65536, False), (b"ab", False),
])  # fmt: skip
def test_hex_is_lower_case_digit_pairs_and_bounded(text, ok):
    assert TYPES["hex"].check(text) is ok


def test_unknown_fields_pass_readers_but_not_the_strict_check():
    d = {"t": 1, "kind": "conn.error", "host": "h", "conn": 1, "reason": "x", "added_later": {"a": [1, 2]}}
    assert check_record(d).fields["added_later"] == {"a": [1, 2]}
    with pytest.raises(BadRecord, match="not in the schema"):
        check_record(d, strict=True)


def test_skipped_counts_names_and_summarises():
    s = Skipped(keep=2)
    lines = ['{"t": 1, "kind": "conn.error", "host": "h", "conn": 1, "reason": "ok"}', "{bad", '{"t": 1, "kind": "nope"}', "{bad"]
    got = list(events.read_jsonl(lines, s))
    assert len(got) == 1 and s.count == 3 and len(s.named) == 2
    assert s.named[0].startswith("line 2: not JSON") and "(x2)" in s.summary()


@pytest.mark.parametrize("kind,fields,ids,text", [
    ("conn.fallback", {"reason": 0x05000000, "peer_diagnosis": 0x03070000}, {}, "0x05000000 PEERDECL (peer: 0x03070000 DIFFPREFIX)"),
    ("conn.fallback", {"reason": 0x03070000, "peer_diagnosis": 0}, {}, "0x03070000 DIFFPREFIX"),
    ("conn.mode", {"mode": "SMCR", "version": 2, "first_contact": True}, {}, "SMCR v2 first contact"),
    ("conn.mode", {"mode": "TCP", "reason": 0}, {}, "TCP"),
    ("conn.state", {"old": "INIT", "new": "ACTIVE"}, {}, "state INIT -> ACTIVE"),
    ("link.event", {"event": "failover_end", "to_link": 2, "conns": 3, "failed": 0, "duration_ms": 4.0}, {},
     "failover to link 2 done: 3 connections, 0 failed in 4 ms"),
    ("link.event", {"event": "deleted", "reason": 0x00050000}, {}, "link deleted 0x00050000 NO_ASYM_NEEDED"),
    ("link.event", {"event": "added", "qpn": 257, "device": "127.30.0.1"}, {}, "link added on 127.30.0.1 QPN 0x000101"),
    ("cdc.msg", {"dir": "rx", "seqno": 1, "prod": "4:4099", "cons": "0:0", "flags": []}, {}, "received CDC seq 1 prod 4:4099 cons 0:0"),
    ("lgr.state", {"old": "SYM", "new": "SINGLE", "cause": "link deleted", "crit": True}, {}, "SYM -> SINGLE (link deleted) Crit"),
    ("conn.cursor", {"side": "tx", "prod": 17}, {}, "cursors tx:"),  # a wrong type is left out, never a traceback
    ("no.such", {"a": 1}, {}, "a=1"),
])  # fmt: skip
def test_render(kind, fields, ids, text):
    assert render(Event(1.0, kind, "h", conn=1, fields=fields, **ids)) == text


@pytest.mark.parametrize("raw, shown", [
    (r"evil\u001b]0;PWNED\u0007\u001b[2J", r"evil\x1b]0;PWNED\x07\x1b[2J"),  # a window title, then clear screen
    (r"\ud800x", r"\ud800x"),  # a lone surrogate: no UTF-8 output could print it
    ("\u202eabc", r"\u202eabc"),  # right-to-left override, raw in the file
    ("h\u00e9te \u4e2d", "h\u00e9te \u4e2d"),  # letters stay letters
])  # fmt: skip
def test_text_from_a_file_or_peer_reaches_no_terminal_as_control_sequences(raw, shown):
    """A hostile recording or control socket cannot drive the operator's terminal: every
    string a reader takes (host, fields, snapshot text, keys) comes out printable."""
    line = '{"t": 1.0, "kind": "conn.state", "host": "%s", "conn": 1, "old": "INIT", "new": "ACTIVE", "note": ["%s"]}' % (raw, raw)
    e = from_json(line)
    assert e.host == shown and e.get("note") == [shown] and e.host.isprintable()
    assert events.loads('{"%s": 1}' % raw) == {shown: 1}


def test_a_listener_that_fails_is_removed_named_and_the_rest_go_on(caplog):
    """A JSONL writer on a full disk must not raise into the stack that emits (that stalled
    a transfer): it is removed, its error logged and kept, and later listeners get every event."""
    bus = EventBus()
    got = []
    full = open("/dev/full", "w")
    writer = events.JsonlWriter(full)
    bus.listen(writer)
    bus.listen(got.append)
    for n in range(5000):  # enough to fill the file's buffer
        bus.emit(Event(float(n), "conn.state", "h", None, None, 1, {"old": "INIT", "new": "ACTIVE"}))
    assert len(got) == 5000 and [f for f, _ in bus.failures] == [writer]
    assert isinstance(bus.failures[0][1], OSError) and "writing events to /dev/full failed (No space left on device)" in caplog.text
    assert bus.active and writer not in bus._listeners
    with contextlib.suppress(OSError):
        full.close()
