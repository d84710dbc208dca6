"""smc-trace: record SMC-R traces Wireshark opens, and read them back.

    smc-trace record -w run.pcapng -- smc-traffic client --connect 127.1.0.2:5000
    smc-trace record -w run.pcapng --attach /tmp/beta.sock --duration 10
    smc-trace decode run.pcapng [--conn 3] [--link 1] [--kind conn,link] [--json]
    smc-trace summary run.pcapng [--json]          (also a pcap of a real host)
    smc-trace export run.pcapng --jsonl [-o events.jsonl]
    smc-trace install-plugin [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from stack.events import BadRecord, Skipped, check_record, check_snapshot, loads, to_json

from .capture import CaptureError, read_events
from .recorder import WRITE_SNAP, Frame, Recorder, snapshot_event
from .summary import render, summarize
from .timeline import Filter, timeline

PLUGIN = Path(__file__).parent / "wireshark" / "smctop.lua"
CONTROL_DIR_ENV = "SMCTOP_CONTROL_DIR"  # the names stack.runtime.stack reads
CONTROL_WAIT_ENV = "SMCTOP_CONTROL_WAIT"


class UsageError(Exception):
    pass


# ---------------------------------------------------------------------- record


async def follow(path: str, rec: Recorder, stop: asyncio.Event) -> str:
    """Record one stack through its control socket until it closes or ``stop`` is set."""
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 24)
    except OSError as e:
        raise UsageError(f"cannot attach to {path}: {e.strerror or e}") from None
    writer.write(json.dumps({"cmd": "subscribe", "frames": True, "write_snap": rec.write_snap, "id": 1}).encode() + b'\n{"cmd":"snapshot","id":2}\n')
    await writer.drain()
    host = "?"
    stopper = asyncio.ensure_future(stop.wait())
    try:
        while True:
            line_task = asyncio.ensure_future(reader.readline())
            done, _ = await asyncio.wait({line_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if line_task not in done:
                line_task.cancel()
                break
            line = line_task.result()
            if not line:
                break
            try:
                msg = loads(line)
                if type(msg) is not dict:
                    raise BadRecord("a control socket line must be a JSON object")
                kind = msg.get("type")
                if kind == "event":
                    rec.on_event(check_record(msg.get("event")))
                elif kind == "frame":
                    rec.on_frame(_frame(msg.get("frame")))
                elif kind == "frames.dropped":
                    count = msg.get("count", 0)
                    rec.stats.dropped_frames += count if type(count) is int and 0 <= count < 1 << 53 else 0
                    continue
            except BadRecord as e:  # a bad line from the stack: counted and named, never the end of the recording
                rec.stats.dropped_events += 1
                rec.stats.last_error = f"{path}: {e}"
                continue
            if kind in ("event", "frame", "frames.dropped"):
                continue
            if kind == "hello":
                host = str(msg.get("host", "?"))[:256]
            elif kind == "reply" and msg.get("cmd") == "subscribe":
                frames = msg.get("frames", [])
                rec.local_addrs.update(a for a in frames if type(a) is str) if type(frames) is list else None
            elif kind == "reply" and msg.get("cmd") == "snapshot":
                snap = msg.get("snapshot")
                err = check_snapshot(snap)
                if err:
                    rec.stats.last_error = f"{path}: {err}"
                else:
                    rec.on_event(snapshot_event(time.monotonic(), snap))  # CLOCK_MONOTONIC is the stack's clock too
            elif kind == "error":
                raise UsageError(f"{path}: {msg.get('error')}")
    finally:
        stopper.cancel()
        writer.close()
    return host


def _frame(f) -> Frame:
    """A frame line of the control socket, checked (BadRecord names what is wrong)."""
    if type(f) is not dict:
        raise BadRecord("frame: not an object")
    try:
        ok = (f.get("dir") in ("tx", "rx") and type(f.get("ts")) is int and 0 <= f["ts"] < 1 << 63 and type(f.get("src")) is str
              and type(f.get("dst")) is str and all(type(f.get(k)) is int and 0 <= f[k] <= 65535 for k in ("sport", "dport"))
              and type(f.get("payload")) is str and len(f["payload"]) <= 2 * 65535
              and (f.get("dropped") is None or type(f.get("dropped")) is str))  # fmt: skip
        length = f.get("length")
        if not ok or not (length is None or (type(length) is int and 0 <= length <= 65535)):
            raise BadRecord("frame: a field is missing or of the wrong type")
        return Frame(f["dir"], f["ts"], f["src"], f["sport"], f["dst"], f["dport"], bytes.fromhex(f["payload"]), f.get("dropped"), length)
    except (ValueError, KeyError, TypeError) as e:
        raise BadRecord(f"frame: {e}") from None


async def record_command(argv: list[str], rec: Recorder, wait: float) -> int:
    """Run ``argv`` with every stack it starts opening a control socket in a fresh directory,
    and record each one from its first event (the stack waits for us at start)."""
    with tempfile.TemporaryDirectory(prefix="smc-trace-") as d:
        env = dict(os.environ, **{CONTROL_DIR_ENV: d, CONTROL_WAIT_ENV: str(wait)})
        try:
            proc = await asyncio.create_subprocess_exec(*argv, env=env)
        except OSError as e:
            raise UsageError(f"cannot run {argv[0]}: {e.strerror or e}") from None
        stop = asyncio.Event()
        seen: set[str] = set()
        tasks = []
        exit_task = asyncio.ensure_future(proc.wait())
        while not exit_task.done():
            for name in sorted(os.listdir(d)):
                if name.endswith(".sock") and name not in seen:
                    seen.add(name)
                    tasks.append(asyncio.ensure_future(follow(os.path.join(d, name), rec, stop)))
            await asyncio.wait({exit_task}, timeout=0.02)
        await asyncio.sleep(0.1)
        stop.set()
        for t in tasks:
            try:
                await t
            except (UsageError, ConnectionError):
                pass
        return exit_task.result()


async def record_attach(paths: list[str], rec: Recorder, duration: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration:
        loop.call_later(duration, stop.set)
    await asyncio.gather(*(follow(p, rec, stop) for p in paths))
    return 0


def seconds(text: str) -> float:
    """A number of seconds: finite, not negative."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(v) or v < 0 or v > 1e9:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds are a finite number from 0 to 1e9")
    return v


def _snaplen(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bytes") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{n}: the snap length is 0 (whole frames) to 65535 bytes")
    if 0 < n < 44:
        raise argparse.ArgumentTypeError(f"{n}: at least 44 bytes, or RDMA WRITE frames lose their headers (0: whole frames)")
    return n


def cmd_record(args) -> int:
    if not args.command and not args.attach:
        raise UsageError("record needs a command after -- or --attach SOCKET")
    if args.command and args.attach:
        raise UsageError("record takes either a command or --attach, not both")
    for p in args.attach or ():
        if not os.path.exists(p):
            raise UsageError(f"no control socket at {p}")
    try:
        rec = Recorder(args.write, write_snap=args.write_snaplen)
    except OSError as e:
        raise UsageError(f"cannot write {args.write}: {e.strerror or e}") from None
    try:
        if args.command:
            argv = args.command[1:] if args.command[0] == "--" else args.command
            rc = asyncio.run(record_command(argv, rec, args.wait))
        else:
            rc = asyncio.run(record_attach(args.attach, rec, args.duration))
    finally:
        st = rec.close()
    print(f"smc-trace: {st.events} events, {st.frames} RoCE frames, {st.clc_frames} CLC segments written to {args.write}"
          + (f"; DROPPED {st.dropped_events} events, {st.dropped_frames} frames" if st.dropped_events or st.dropped_frames else ""),
          file=sys.stderr)  # fmt: skip
    return rc


# ---------------------------------------------------------------------- read


def _ids(text: str | None, cast=int):
    if text is None:
        return None
    try:
        return {cast(x) for x in text.split(",") if x}
    except ValueError:
        raise UsageError(f"expected a comma-separated list of numbers, got {text!r}") from None


def report_skipped(skipped: Skipped) -> None:
    """Bad event records the reader left out: how many and why, on stderr (the output stays clean)."""
    if skipped:
        sys.stdout.flush()
        print(f"smc-trace: {skipped.summary()}", file=sys.stderr)
        for where in skipped.named[:5]:
            print(f"  {where}", file=sys.stderr)


def cmd_decode(args) -> int:
    flt = Filter(_ids(args.conn), _ids(args.link), _ids(args.lgr, str), _ids(args.host, str),
                 tuple(args.kind.split(",")) if args.kind else None)  # fmt: skip
    skipped = Skipped()
    events = (e for e in read_events(args.file, skipped) if flt(e))
    try:
        if args.json:
            for e in events:
                print(to_json(e))
        else:
            for line in timeline(events):
                print(line)
    finally:
        report_skipped(skipped)
    return 0


def cmd_summary(args) -> int:
    skipped = Skipped()
    s = summarize(read_events(args.file, skipped))
    s.skipped = skipped
    print(json.dumps(s.to_dict(), indent=2) if args.json else render(s))
    report_skipped(skipped)
    return 0


def cmd_export(args) -> int:
    try:
        out = open(args.output, "w") if args.output else sys.stdout
    except OSError as e:
        raise UsageError(f"cannot write {args.output}: {e.strerror or e}") from None
    skipped = Skipped()
    try:
        for e in read_events(args.file, skipped):
            out.write(to_json(e) + "\n")
    finally:
        if args.output:
            out.close()
        report_skipped(skipped)
    return 0


def plugin_dir() -> Path:
    return Path.home() / ".local/lib/wireshark/plugins"  # Wireshark's personal Lua plugin folder on Linux


def cmd_install_plugin(args) -> int:
    target = Path(args.dir) if args.dir else plugin_dir()
    try:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PLUGIN, target / PLUGIN.name)
    except OSError as e:
        raise UsageError(f"cannot install the plugin into {target}: {e.strerror or e}") from None
    print(f"installed {target / PLUGIN.name}; check with: tshark -G plugins | grep smctop")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smc-trace", description="Record SMC-R traces Wireshark opens (RoCEv2 frames, CLC, events) and read them back.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="record a command's stacks, or running stacks through their control sockets")
    r.add_argument("-w", "--write", required=True, help="pcapng file to write")
    r.add_argument("--attach", action="append", help="a running stack's control socket (repeatable)")
    r.add_argument("--duration", type=seconds, default=0, help="with --attach: stop after this many seconds (default: Ctrl-C or the stack closing)")
    r.add_argument("--wait", type=seconds, default=10.0, help="seconds each stack of the command waits for the recorder at start")
    r.add_argument("--write-snaplen", type=_snaplen, default=WRITE_SNAP, metavar="BYTES",
                   help=f"keep this many bytes of each RDMA WRITE frame (headers and the start of the data; "
                        f"default {WRITE_SNAP}; 0: whole frames); LLC, CDC and ACK frames are always whole")  # fmt: skip
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS... (a program that uses the smctop stack, e.g. smc-traffic)")
    for name, help_ in (("decode", "print the timeline"), ("summary", "connections, fallbacks, failovers, throughput"), ("export", "events as JSON lines")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("file", help="pcapng or pcap file (ours or any capture of SMC traffic), or JSONL events")
        if name == "decode":
            s.add_argument("--conn", help="only these connection ids (comma-separated)")
            s.add_argument("--link", help="only these link ids")
            s.add_argument("--lgr", help="only these link groups")
            s.add_argument("--host", help="only these hosts")
            s.add_argument("--kind", help="only these kinds or kind prefixes, e.g. conn,link.event,llc.msg")
            s.add_argument("--json", action="store_true", help="canonical JSON, one event per line")
        elif name == "summary":
            s.add_argument("--json", action="store_true")
        else:
            s.add_argument("--jsonl", action="store_true", required=True, help="JSON lines (the only format)")
            s.add_argument("-o", "--output", help="file to write (default stdout)")
    i = sub.add_parser("install-plugin", help="copy the Wireshark Lua plugin to your personal plugin folder")
    i.add_argument("--dir", help="plugin folder (default ~/.local/lib/wireshark/plugins)")
    return p


COMMANDS = {"record": cmd_record, "decode": cmd_decode, "summary": cmd_summary, "export": cmd_export, "install-plugin": cmd_install_plugin}


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except UsageError as e:
        p.error(str(e))
    except CaptureError as e:
        sys.stdout.flush()
        print(f"smc-trace: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
