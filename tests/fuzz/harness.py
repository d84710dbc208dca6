"""A fuzz harness for every reader of outside input (issue #15): the capture readers, the
event readers (JSONL, exported-PDU records), the control socket (commands the stack reads,
lines smctop reads) and the command-line parsers of smc-trace, smc-traffic and smctop.

Each target takes one input (bytes, or an argv list) and runs it through the reader and
what consumes its output (summary, timeline, smctop's model). An input passes when the
reader accepts it or refuses it with its own error (CaptureError, BadRecord, an argparse
exit, an error line); anything else is a crash, written to ``crashes/<target>/`` with the
traceback. Inputs are mutations (bytes, JSON values, arguments) of the seeds in
``corpus/<target>/`` (kept in the tree; ``--seed-corpus`` writes them again from the
fixtures); a crasher found once goes into the corpus, so every later run tries it.

    .venv/bin/python tests/fuzz/harness.py                      # every target, 2,000 inputs each
    .venv/bin/python tests/fuzz/harness.py --target jsonl --inputs 1000000
    .venv/bin/python tests/fuzz/harness.py --seconds 600        # every target, 10 minutes each

The test command runs every target briefly (tests/fuzz/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import random
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from dissectors import cli as trace_cli  # noqa: E402
from dissectors.capture import CaptureError, read_events  # noqa: E402
from dissectors.recorder import Recorder  # noqa: E402
from dissectors.records import RecordError, decode_record, encode_record  # noqa: E402
from dissectors.summary import render as render_summary  # noqa: E402
from dissectors.summary import summarize  # noqa: E402
from dissectors.timeline import timeline  # noqa: E402
from smctop import app as smctop_app  # noqa: E402
from smctop.model import Model  # noqa: E402
from smctop.sources import AttachSource  # noqa: E402
from stack.events import Event, Skipped, from_json  # noqa: E402
from stack.runtime import control  # noqa: E402
from stack.traffic import cli as traffic_cli  # noqa: E402

CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"
GOLDEN = ROOT / "tests" / "golden" / "session.jsonl"
KERNEL_PCAP = ROOT / "tests" / "lab" / "fixtures" / "kernel_interop_smcr.pcap"

# ---------------------------------------------------------------------------------------- consumers


def consume(events: list[Event]) -> None:
    """What the tools do with what a reader gave: smc-trace's summary and timeline, smctop's model."""
    if not events:
        return
    s = summarize(events)
    render_summary(s)
    json.dumps(s.to_dict())
    for _ in timeline(events):
        pass
    m = Model(events_kept=500)
    m.feed_timed(sorted(events, key=lambda e: e.t))
    m.advance(max(e.t for e in events) + 2)
    m.totals()
    m.fallback_rows()
    m.link_rows()


# ---------------------------------------------------------------------------------------- targets


def t_jsonl(data: bytes) -> None:
    skipped = Skipped()
    try:
        events = list(read_events(b"{" + data if not data.startswith(b"{") else data, skipped))
    except CaptureError:
        return
    consume(events)


def t_record(data: bytes) -> None:
    try:
        e = decode_record(data)
    except RecordError:
        return
    consume([e])


def t_capture(data: bytes) -> None:
    skipped = Skipped()
    events: list[Event] = []
    try:
        for e in read_events(data, skipped):
            events.append(e)
    except CaptureError:
        pass
    consume(events)


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def is_closing(self) -> bool:
        return False

    def write(self, b: bytes) -> None:
        self.out += b


class _Bus:
    def subscribe(self, maxsize: int, kinds=None):
        assert 1 <= maxsize <= control.MAX_EVENT_QUEUE
        return type("Sub", (), {"close": lambda self: None})()


class _FakeStack:
    """A stand-in stack for the control session (stack.runtime.controls.ControlTarget) that
    checks what it is asked to do."""

    name = "fuzz"

    def __init__(self) -> None:
        self.bus = _Bus()

    def devices(self) -> list[str]:
        return ["127.0.0.1"]

    def snapshot(self) -> dict:
        return {"host": "fuzz", "conns": []}

    def fail_link(self, lgr: str, link: int) -> bool:
        assert type(lgr) is str and type(link) is int
        return False

    def set_port(self, device: str, up: bool) -> None:
        assert type(device) is str and type(up) is bool

    def set_faults(self, device: str, **faults) -> None:
        for k, v in faults.items():
            assert k in control.FAULTS and type(v) in (int, float) and v == v and abs(v) != float("inf"), (k, v)

    def force_decline(self, reason) -> None:
        assert reason is None or (type(reason) is int and 0 < reason <= 0xFFFFFFFF)

    def now(self) -> float:
        return 1.0

    def add_frame_tap(self, *a, **k) -> list:
        return []

    def remove_frame_tap(self, *a) -> None:
        pass


class _Server:
    def __init__(self) -> None:
        self.subscribed = asyncio.Event()


_loop = asyncio.new_event_loop()


def t_control(data: bytes) -> None:
    """A command line on the stack's control socket: an answer line, never an exception."""

    async def go():
        w = _Writer()
        session = control._Session.__new__(control._Session)
        session.server, session.stack, session.writer = _Server(), _FakeStack(), w
        session.sub, session.interval, session._tasks = None, 1.0, []
        session.frames, session.frames_dropped, session.tapped = None, 0, []
        for line in data.split(b"\n")[:8]:
            before = len(w.out)
            session.handle(line[: control.MAX_LINE])
            assert len(w.out) > before, "no answer"
            answer = json.loads(bytes(w.out[before:]))
            assert answer["type"] in ("reply", "error") and not str(answer.get("error", "")).startswith("command failed"), answer
        for t in session._tasks:
            t.cancel()

    _loop.run_until_complete(go())


def t_attach(data: bytes) -> None:
    """Lines a stack's control socket sends to smctop (events, snapshots): the model survives them."""
    src = AttachSource(["/fuzz.sock"])
    lines = data.split(b"\n")[:20]
    skipped = Skipped()

    class Reader:
        async def readline(self):
            return lines.pop(0) + b"\n" if lines else b""

    client = control.ControlClient(Reader(), None)

    async def read():
        async for msg in client.messages(skipped):
            src.inbox.append(("/fuzz.sock", msg))

    _loop.run_until_complete(read())
    m = Model(events_kept=500)
    src.poll(m)
    m.advance((src.now() or 0.0) + 2)
    m.totals()
    m.fallback_rows()
    m.link_rows()


def _argv_target(parse: Callable[[list[str]], Any]) -> Callable[[list[str]], None]:
    def target(argv: list[str]) -> None:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            try:
                parse(argv)
            except SystemExit:
                pass

    return target


def _trace_args(argv: list[str]) -> None:
    p = trace_cli.parser()
    args = p.parse_args(argv)
    if args.cmd == "decode":
        try:
            trace_cli.Filter(trace_cli._ids("--conn", args.conn), trace_cli._ids("--link", args.link), trace_cli._ids("--lgr", args.lgr, str),
                             trace_cli._ids("--host", args.host, str), trace_cli._kinds(args.kind))  # fmt: skip
        except trace_cli.UsageError:
            pass


def _traffic_args(argv: list[str]) -> None:
    p = traffic_cli.parser()
    args = p.parse_args(argv)
    if args.role == "client" and (not 1 <= args.connections <= 10_000 or args.count < 0):
        return
    if args.count < 0:
        return
    try:
        traffic_cli.stack_config(args, args.role)
    except ValueError:
        return  # main() turns this into a usage error


def _smctop_args(argv: list[str]) -> None:
    args, ap = smctop_app.parse_args(argv)
    if args.replay:
        args.replay = str(GOLDEN) if "golden" in args.replay else args.replay
    smctop_app.build_source(args, ap)


TARGETS: dict[str, Callable] = {
    "jsonl": t_jsonl, "record": t_record, "capture": t_capture, "control": t_control, "attach": t_attach,
    "cli_trace": _argv_target(_trace_args), "cli_traffic": _argv_target(_traffic_args), "cli_smctop": _argv_target(_smctop_args),
}  # fmt: skip
ARGV_TARGETS = {"cli_trace", "cli_traffic", "cli_smctop"}


# ---------------------------------------------------------------------------------------- seeds


def _golden_lines() -> list[str]:
    return GOLDEN.read_text().splitlines()


def _roce_v1_capture() -> bytes:
    """SMC-Rv1 over RoCE v1 frames, VLAN-tagged in Linux cooked v2 headers (tests/support/rocev1.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from support.rocev1 import write_v1_capture

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v1.pcapng"
        write_v1_capture(str(path), cooked=True, vlan=12)
        return path.read_bytes()


def make_seeds() -> dict[str, list[bytes]]:
    """The corpus from the fixtures (what --seed-corpus writes)."""
    lines = _golden_lines()
    seeds: dict[str, list[bytes]] = {}
    seeds["jsonl"] = [("\n".join(lines[i : i + 12]) + "\n").encode() for i in range(0, len(lines), 12)]
    seeds["record"] = [encode_record(from_json(line)) for line in lines[::6]]
    buf = io.BytesIO()
    rec = Recorder(buf, interval=3600, clock_offset_ns=0)
    for line in lines[:60]:
        rec.on_event(from_json(line))
    rec.close()
    pcap = KERNEL_PCAP.read_bytes()
    seeds["capture"] = [buf.getvalue(), pcap[:6000], pcap[:24] + pcap[len(pcap) // 2 : len(pcap) // 2 + 3000], _roce_v1_capture()]
    seeds["control"] = [json.dumps(c).encode() for c in (
        {"cmd": "subscribe", "kinds": ["conn.state"], "frames": False, "queue": 100, "id": 1}, {"cmd": "faults", "device": "127.0.0.1", "loss": 0.1},
        {"cmd": "faults", "device": "127.0.0.1", "delay": 0.5, "drop_next": 2}, {"cmd": "interval", "seconds": 2}, {"cmd": "decline", "reason": "DIFFPREFIX"},
        {"cmd": "fail_link", "lgr": "00ab0100", "link": 1}, {"cmd": "port", "device": "127.0.0.1", "up": False}, {"cmd": "ping", "id": "x"},
        {"cmd": "snapshot"}, {"cmd": "help"}, {"cmd": "unsubscribe"})]  # fmt: skip
    snap = {"host": "h", "t": 5.0, "stats": {"smc_client": 1}, "devices": [{"name": "d", "up": True, "mtu": 1024}],
            "fallbacks": [{"role": "client", "reason": 0x05000000, "count": 2}],
            "lgrs": [{"id": "00ab0100", "role": "client", "type": "SYM", "crit": False, "version": 2, "conns": 1,
                      "links": [{"id": 1, "state": "LINK_ACTIVE", "device": "d", "qpn": 257, "peer_qpn": 258, "conns": 1}]}],
            "conns": [{"conn": 1, "state": "ACTIVE", "mode": "SMCR", "role": "client", "lgr": "00ab0100", "link": 1, "rmb_size": 65536,
                       "rx_prod": "1:5", "tx_prod": "0:7", "bytes_sent": 10, "bytes_received": 20}]}  # fmt: skip
    attach = [json.dumps({"type": "hello", "host": "h", "protocol": 1}), json.dumps({"type": "snapshot", "snapshot": snap})]
    attach += [json.dumps({"type": "event", "event": json.loads(line)}) for line in lines[:40]]
    seeds["attach"] = [("\n".join(attach[i : i + 8])).encode() for i in range(0, len(attach), 8)]
    seeds["cli_trace"] = [json.dumps(a).encode() for a in (
        ["decode", str(GOLDEN), "--conn", "1,2", "--kind", "conn,link"], ["summary", str(GOLDEN), "--json"],
        ["export", str(GOLDEN), "--jsonl", "-o", "/tmp/x.jsonl"], ["record", "-w", "/tmp/x.pcapng", "--attach", "/tmp/s.sock", "--duration", "5"],
        ["record", "-w", "/tmp/x.pcapng", "--write-snaplen", "128", "--wait", "2", "--", "true"], ["install-plugin", "--dir", "/tmp/p"])]  # fmt: skip
    seeds["cli_traffic"] = [json.dumps(a).encode() for a in (
        ["client", "--connect", "127.1.0.2:5000", "--mode", "rr", "--size", "64", "--duration", "1", "--connections", "2", "--json"],
        ["server", "--listen", "127.1.0.2:5000", "--decline", "DIFFPREFIX", "--count", "1", "--rmb-size", "64K"],
        ["client", "--bytes", "1M", "--loss", "0.01", "--fail-link", "1:127.1.0.1", "--restore-link", "2", "--versions", "2", "--ueid", "SMCTOP"])]  # fmt: skip
    seeds["cli_smctop"] = [json.dumps(a).encode() for a in (
        ["--replay", "golden", "--speed", "2", "--paused"], ["--attach", "/nonexistent.sock"], ["--no-traffic", "--record-dir", "/tmp"],
        ["--replay", "golden", "--speed", "0.5", "--record", "/tmp/x.pcapng"])]  # fmt: skip
    return seeds


def write_corpus() -> None:
    for target, items in make_seeds().items():
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(items):
            (d / f"seed-{i:03d}").write_bytes(data)


def load_corpus(target: str) -> list[bytes]:
    d = CORPUS / target
    items = [p.read_bytes() for p in sorted(d.iterdir())] if d.is_dir() else []
    return items or make_seeds()[target]


# ---------------------------------------------------------------------------------------- mutations

INTERESTING_JSON: list[Any] = [None, True, False, 0, -1, 1, 255, 256, 65535, 65536, 2**31, 2**32, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**30,
                               1.5, -0.0, 1e308, -1e308, 5e-324, 1.7e18, "", "x", "0:0", "65536:1", "-1:-1", "1:", "ä" * 40, "x" * 5000,
                               "\u0000", [], [1], ["a", 2], {}, {"a": {}}, [[[[[[[[[[1]]]]]]]]]], "NaN", "tx", "rx", "SMCR"]  # fmt: skip
JSON_TOKENS = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"null", b"[" * 3000, b'{"a":' * 3000, b'"\\ud800"', b"\xff\xfe", b"\x00"]
INTERESTING_ARGS = ["nan", "NaN", "inf", "-inf", "1e400", "-1", "0", "1e9", "1e10", "8K", "16K", "512M", "1T", "", " ", "x" * 300, "\x00", "/dev/zero",
                    "/nonexistent/x", "/tmp", "-", "--", "0x03070000", "DIFFPREFIX", "1:2", "a:b", "127.1.0.2:0", "127.1.0.2:65536", ":5000",
                    "1,2,x", ",,,", "3", "--help", "-h", "1_000", "٣", "1.5", "-0"]  # fmt: skip
TRACE_FLAGS = ["--conn", "--link", "--lgr", "--host", "--kind", "--json", "--jsonl", "-o", "-w", "--attach", "--duration", "--wait", "--write-snaplen", "--dir"]
TRAFFIC_FLAGS = ["--connect", "--listen", "--mode", "--direction", "--connections", "--size", "--bytes", "--duration", "--count", "--seed", "--device",
                 "--mtu", "--rmb-size", "--sndbuf-size", "--versions", "--ueid", "--test-link", "--loss", "--fail-link", "--restore-link", "--decline",
                 "--engine", "--gso", "--tcp-option", "--events", "--control", "--json"]  # fmt: skip
SMCTOP_FLAGS = ["--attach", "--replay", "--speed", "--paused", "--no-traffic", "--record", "--record-dir"]


def mutate_bytes(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 6))):
        op = rng.randrange(9)
        if not b:
            b += bytes([rng.randrange(256)])
        pos = rng.randrange(len(b))
        if op == 0:
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[pos] = rng.choice((0, 0xFF, 0x7F, 0x80, 0x20, 0x7B, 0x22, 0x5B, 0x0A))
        elif op == 2:
            del b[pos : pos + rng.randrange(1, 64)]
        elif op == 3:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        elif op == 4:
            b[pos:pos] = rng.choice(JSON_TOKENS)
        elif op == 5 and len(b) >= 4:  # a 16- or 32-bit field set to an edge value
            width = rng.choice((2, 4))
            pos = min(pos, len(b) - width)
            b[pos : pos + width] = rng.choice((0, 1, 0x7FFF, 0xFFFF, 0xFFFFFFFF, 0x80000000)).to_bytes(4, "big")[-width:]
        elif op == 6:
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            b = b[:pos] + other[cut:]
        elif op == 7:
            b = b[:pos]
        else:
            chunk = b[pos : pos + rng.randrange(1, 200)]
            b[pos:pos] = chunk * rng.randrange(1, 4)
    return bytes(b)


def _mutate_value(rng: random.Random, v: Any, depth: int = 0) -> Any:
    if isinstance(v, dict) and v and depth < 4 and rng.random() < 0.7:
        key = rng.choice(list(v))
        out = dict(v)
        r = rng.random()
        if r < 0.15:
            del out[key]
        elif r < 0.25:
            out[rng.choice(["t", "kind", "host", "lgr", "link", "conn", "event", "reason", "snapshot", "x", "type", "cmd"])] = rng.choice(INTERESTING_JSON)
        else:
            out[key] = _mutate_value(rng, out[key], depth + 1)
        return out
    if isinstance(v, list) and v and depth < 4 and rng.random() < 0.7:
        out = list(v)
        i = rng.randrange(len(out))
        out[i] = _mutate_value(rng, out[i], depth + 1)
        return out
    return rng.choice(INTERESTING_JSON)


def mutate_json_lines(rng: random.Random, data: bytes) -> bytes:
    """Mutate JSON values inside the lines (well-formed records of the wrong types), and
    now and then a token JSON parsers disagree on."""
    lines = data.split(b"\n")
    for _ in range(rng.choice((1, 1, 2, 4))):
        i = rng.randrange(len(lines))
        try:
            obj = json.loads(lines[i])
        except (ValueError, RecursionError):
            continue
        text = json.dumps(_mutate_value(rng, obj)).encode()
        if rng.random() < 0.1:
            text = text.replace(b"null", rng.choice((b"NaN", b"Infinity", b"1e999")), 1)
        lines[i] = text
    return b"\n".join(lines)


def mutate_argv(rng: random.Random, argv: list[str], flags: list[str]) -> list[str]:
    out = list(argv)
    for _ in range(rng.choice((1, 1, 2, 3))):
        op = rng.randrange(5)
        if op == 0 and out:
            out[rng.randrange(len(out))] = rng.choice(INTERESTING_ARGS)
        elif op == 1:
            out[rng.randrange(len(out) + 1) : 0] = [rng.choice(flags), rng.choice(INTERESTING_ARGS)]
        elif op == 2 and out:
            del out[rng.randrange(len(out))]
        elif op == 3:
            out.append(rng.choice(flags))
        else:
            i = rng.randrange(len(out) + 1)
            out[i:i] = [rng.choice(INTERESTING_ARGS)]
    return out


def make_input(target: str, rng: random.Random, corpus: list[bytes]) -> Any:
    seed = rng.choice(corpus)
    if target in ARGV_TARGETS:
        flags = TRACE_FLAGS if target == "cli_trace" else TRAFFIC_FLAGS if target == "cli_traffic" else SMCTOP_FLAGS
        return mutate_argv(rng, json.loads(seed), flags)
    if target in ("jsonl", "control", "attach") and rng.random() < 0.6:
        return mutate_json_lines(rng, seed)
    if target == "record" and rng.random() < 0.5:  # the JSON inside the record
        head, sep, body = seed.partition(b"\0\0\0\0{")
        if sep:
            return head + sep[:-1] + mutate_json_lines(rng, b"{" + body)
    return mutate_bytes(rng, seed, corpus)


# ---------------------------------------------------------------------------------------- the loop


@dataclass
class Result:
    target: str
    inputs: int
    seconds: float
    crashes: list[str]


def _key(tb: str) -> str:
    """A crash site: the innermost frame of the project's code, and the exception."""
    lines = [line for line in tb.splitlines() if line.strip().startswith("File ")]
    ours = [line for line in lines if str(ROOT) in line and "tests/fuzz" not in line] or lines
    return (ours[-1].strip() if ours else "?") + " | " + tb.strip().splitlines()[-1][:200]


def run(target: str, inputs: int | None = None, seconds: float | None = None, seed: int = 0, save: bool = True) -> Result:
    fn = TARGETS[target]
    corpus = load_corpus(target)
    rng = random.Random(f"{target}:{seed}")
    crashes: dict[str, str] = {}
    start = time.monotonic()
    n = 0
    for data in corpus:  # the corpus itself first: every crasher found before is tried again
        n += 1
        _one(fn, json.loads(data) if target in ARGV_TARGETS else data, crashes, target, save)
    while (inputs is None or n < inputs) and (seconds is None or time.monotonic() - start < seconds):
        n += 1
        _one(fn, make_input(target, rng, corpus), crashes, target, save)
    return Result(target, n, time.monotonic() - start, sorted(crashes))


def _one(fn: Callable, data: Any, crashes: dict[str, str], target: str, save: bool) -> None:
    try:
        fn(data)
    except (KeyboardInterrupt, MemoryError):
        raise
    except BaseException:
        tb = traceback.format_exc()
        key = _key(tb)
        if key not in crashes:
            crashes[key] = tb
            if save:
                d = CRASHES / target
                d.mkdir(parents=True, exist_ok=True)
                raw = json.dumps(data).encode() if isinstance(data, list) else data
                name = f"crash-{abs(hash(key)) % 10**10:010d}"
                (d / name).write_bytes(raw)
                (d / (name + ".txt")).write_text(tb)
                (CORPUS / target).mkdir(parents=True, exist_ok=True)
                (CORPUS / target / name).write_bytes(raw)  # kept: later runs try it first


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fuzz smctop's readers of outside input (see the module's doc).")
    ap.add_argument("--target", action="append", choices=sorted(TARGETS), help="a target (repeatable; default: all)")
    ap.add_argument("--inputs", type=int, help="inputs per target (default 2,000 unless --seconds)")
    ap.add_argument("--seconds", type=float, help="seconds per target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seed-corpus", action="store_true", help="write the corpus seeds from the fixtures and exit")
    args = ap.parse_args(argv)
    if args.seed_corpus:
        write_corpus()
        return 0
    inputs = args.inputs if args.inputs or args.seconds else 2000
    bad = 0
    for target in args.target or list(TARGETS):
        r = run(target, inputs, args.seconds, args.seed)
        print(f"{target:12} {r.inputs:>10,} inputs in {r.seconds:8.1f} s ({r.inputs / max(r.seconds, 1e-9):,.0f}/s): "
              f"{len(r.crashes)} crash sites", flush=True)  # fmt: skip
        for c in r.crashes:
            print(f"    {c}")
        bad += len(r.crashes)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
