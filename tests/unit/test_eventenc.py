"""The compiled event encoder (native/eventenc.c) against its pure-Python twins: the same
bytes for every event hypothesis makes (every field type that appears: str, int, float,
bool, None, bytes, enums, nested dicts and lists), the same errors for events that cannot
be encoded, and a clean fall-back to the twins when it is not built."""

from __future__ import annotations

import enum
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from native import eventenc
from stack import events
from stack.events import Event, JsonlWriter, _LineWriterPy, _to_json_py, read_jsonl

ROOT = Path(__file__).resolve().parents[2]


def _built():
    """The compiled module; built here when it is missing and gcc is there (native/build_eventenc.sh)."""
    if not os.path.exists(eventenc.MODULE):
        r = subprocess.run(["bash", str(ROOT / "native" / "build_eventenc.sh")], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"native/build_eventenc.sh failed: {r.stderr.strip()}", allow_module_level=True)
    try:
        mod = eventenc.load()
    except eventenc.EncoderUnavailable as e:
        pytest.skip(str(e), allow_module_level=True)
    mod.configure(Event, enum.Enum, _to_json_py)
    return mod


C = _built()


class Color(enum.Enum):
    RED = 1
    GREEN = "green"
    BLUE = (1, 2)  # neither int nor str: the name is written


class Level(enum.IntEnum):
    LOW = 3
    HIGH = 0x03030000


class Mode(str, enum.Enum):
    SMCR = "SMCR"
    TCP = "TCP"


class Perm(enum.IntFlag):
    R = 4
    W = 2


class Odd(enum.Enum):
    YES = True  # a bool value: json writes true


class Sub(str):
    pass


class MyEvent(Event):
    __slots__ = ()


texts = st.text(alphabet=st.characters(blacklist_categories=()), max_size=12)  # any code point, surrogates too
ascii_texts = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=12)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e7, max_value=1e7),
    st.floats(min_value=-2e-4, max_value=2e-4),
    st.integers(-(10**16), 10**16).map(lambda n: n / 1e9),
    st.integers(-(2**20), 2**20).flatmap(lambda m: st.integers(-80, 10).map(lambda e: math.ldexp(m, e))),  # binary ties
    st.sampled_from([0.0, -0.0, 5e-324, 1e-4, 9.99999999e-5, 1e6, 999999.9999999995, 1e15, 1e16, 0.0009765625, 2.5e-10,
                     1234.5678912345678, 0.1, 1e300, -1e-12]),
)  # fmt: skip
ints = st.one_of(st.integers(-(2**31), 2**31), st.integers(), st.sampled_from([0, -1, 2**63, -(2**63), 2**64]))
scalars = st.one_of(
    st.none(), st.booleans(), ints, floats, texts, ascii_texts, st.binary(max_size=20),
    st.binary(max_size=8).map(bytearray), st.binary(max_size=8).map(memoryview),
    st.sampled_from([*Color, *Level, *Mode, Perm.R, Perm.R | Perm.W, Odd.YES]),
    ascii_texts.map(Sub),
)  # fmt: skip
keys = st.one_of(ascii_texts, texts, st.sampled_from(["dir", "raw", "prod", "cons", "a", "A", "_", "é", "\ud800", ""]))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(keys, inner, max_size=4),
        st.dictionaries(st.integers(0, 3), inner, max_size=2),  # _plain makes keys str(k): left to the twin
    ),
    max_leaves=12,
)
ids = st.one_of(st.none(), ascii_texts, texts, st.integers(-5, 2**40), st.booleans())
field_dicts = st.dictionaries(keys, values, max_size=8)


@st.composite
def any_event(draw):
    cls = draw(st.sampled_from([Event, Event, Event, MyEvent]))
    t = draw(st.one_of(floats, st.integers(-(10**12), 10**12)))
    kind = draw(st.one_of(st.sampled_from(list(events.KINDS)), texts))
    host = draw(st.one_of(ascii_texts, texts, st.none()))
    return cls(t, kind, host, draw(ids), draw(ids), draw(ids), draw(field_dicts))


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as e:  # noqa: BLE001 - the same error, whatever it is
        return ("error", type(e), str(e))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_event())
@example(Event(1.0, "conn.state", "h", fields={"t": 1}))  # a reserved field name
@example(Event(1.0, "x", "h", fields={"v": object()}))  # not serialisable
@example(Event(1.0, "x", "h", fields={"v": 10**5000}))  # past the int digit limit
@example(Event(float("nan"), "x", "h", lgr=1.5, fields={"v": [float("inf"), -0.0, 0.0009765625]}))
@example(Event(1.0, "x", "h", fields={1: "a", "1": "b"}))  # keys that collide once made str
def test_compiled_json_is_the_twins_byte_for_byte(e):
    want = outcome(_to_json_py, e)
    assert outcome(C.to_json, e) == want
    line = outcome(C.to_json_line, e)
    assert line == (("ok", want[1] + "\n") if want[0] == "ok" else want)
    rec = outcome(C.record, e, b"HDR\0")
    assert rec == (("ok", b"HDR\0" + want[1].encode()) if want[0] == "ok" else want)


@settings(max_examples=3000, deadline=None)
@given(floats)
def test_floats_are_rounded_and_written_as_python_does(x):
    e = Event(x, "k", "h", fields={"v": x, "l": [x]})
    assert C.to_json(e) == _to_json_py(e)
    assert json.loads(C.to_json(e).replace("NaN", "null"))["t"] in (None, round(x, 9)) or math.isinf(x)


def test_the_fast_paths_are_taken_for_what_the_stack_emits():
    """Events the stack emits never reach the twin (counting the twin's calls)."""
    calls = []

    def counting(e):
        calls.append(e)
        return _to_json_py(e)

    C.configure(Event, enum.Enum, counting)
    try:
        golden = list(read_jsonl((ROOT / "tests" / "golden" / "session.jsonl").open()))
        fields = {"dir": "rx", "raw": b"\x01\x02", "reason": Level.HIGH, "mode": Mode.SMCR, "flags": ["fin"], "n": {"b": 1.5, "a": None},
                  "ok": True, "fill": 0.25}  # fmt: skip
        for e in golden + [Event(12.000000001, "cdc.msg", "client", "00c13a00", 1, 3, fields)]:
            C.to_json(e)
    finally:
        C.configure(Event, enum.Enum, _to_json_py)
    assert calls == []


def test_the_golden_session_reencodes_to_the_same_lines():
    lines = (ROOT / "tests" / "golden" / "session.jsonl").read_text().splitlines()
    assert [C.to_json(e) for e in read_jsonl(lines)] == lines


def test_events_use_the_compiled_encoder_when_it_is_built():
    if events.native_encoder() is None:
        pytest.skip(events.encoder_note())
    assert events.to_json is events.native_encoder().to_json
    assert issubclass(JsonlWriter, events.native_encoder().LineWriter)
    assert "compiled encoder" in events.encoder_note()


@settings(max_examples=200, deadline=None)
@given(st.lists(any_event(), max_size=6), st.one_of(st.none(), st.sets(st.sampled_from(["conn.state", "cdc.msg", "x"]))))
def test_jsonl_writer_writes_what_its_twin_writes(evs, kinds):
    fast, twin = io.StringIO(), io.StringIO()
    a = C.LineWriter(fast, frozenset(kinds) if kinds else None)
    b = _LineWriterPy(twin, frozenset(kinds) if kinds else None)
    for e in evs:
        assert outcome(a, e)[0] == outcome(b, e)[0]
    assert fast.getvalue() == twin.getvalue()
    assert a.written == b.written


def test_jsonl_writer_keeps_its_attributes_and_writes_at_once():
    out = io.StringIO()
    w = JsonlWriter(out, kinds=["conn.state"])
    w(Event(1.0, "conn.state", "h", conn=1, fields={"old": "INIT", "new": "ACTIVE"}))
    assert out.getvalue().endswith('"new":"ACTIVE","old":"INIT","t":1.0}\n')  # there before the next event
    w(Event(1.0, "cdc.msg", "h"))
    assert w.written == 1 and w.kinds == frozenset({"conn.state"}) and w.out is out
    w.out, w.kinds = io.StringIO(), None
    w(Event(2.0, "cdc.msg", "h"))
    assert w.written == 2 and w.out.getvalue().startswith('{"conn":null')
    w.written = 0
    assert w.written == 0
    with pytest.raises(ValueError, match="reserved"):
        w(Event(1.0, "x", "h", fields={"kind": 1}))


def _python(code: str, **env) -> str:
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout + r.stderr


def test_without_the_compiled_encoder_the_twins_run_and_say_so():
    """Not built: everything works through the twins, and one line (logging, once) says why."""
    out = _python(
        "import native.eventenc as n; n._EXT.path = '/nonexistent/_eventenc.so'\n"
        "import io, logging; from stack import events as E\n"
        "assert E.native_encoder() is None and E.to_json is E._to_json_py\n"
        "w = E.JsonlWriter(io.StringIO()); w(E.Event(1.0, 'x', 'h')); assert w.written == 1\n"
        "w2 = E.JsonlWriter(io.StringIO())\n"
        "print('NOTE:', E.encoder_note())\n"
    )
    assert "NOTE: smctop events: pure-Python encoder, slower: the compiled event encoder is not built" in out
    assert "native/build_eventenc.sh" in out
    assert out.count("pure-Python encoder") == 2  # the warning, once, and the note printed


def test_switched_off_on_purpose_the_twins_run_quietly():
    out = _python("from stack import events as E; import io; E.JsonlWriter(io.StringIO()); print(E.encoder_note())",
                  **{eventenc.DISABLE_ENV: "1"})  # fmt: skip
    assert out.strip() == f"smctop events: pure-Python encoder, slower: the compiled event encoder is switched off ({eventenc.DISABLE_ENV} is set)"
