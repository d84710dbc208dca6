"""smc-trace: record SMC-R traces Wireshark opens, and read them back.

    smc-trace record -w run.pcapng -- smc-traffic client --connect 127.1.0.2:5000
    smc-trace record -w run.pcapng --attach /tmp/beta.sock --duration 10
    smc-trace record -w run.pcapng --kernel --duration 30     (the Linux kernel's SMC-R)
    smc-trace decode run.pcapng [--conn 3] [--link 1] [--kind conn,link] [--json]
    smc-trace decode alpha.pcapng beta.pcapng      (each host's recording: one timeline in time order)
    smc-trace summary run.pcapng [--json]          (also a pcap of a real host)
    smc-trace export run.pcapng --jsonl [-o events.jsonl]
    smc-trace install-plugin [--dir DIR]

Recording stops on --duration, Ctrl-C or SIGTERM, also while a stack streams without a
pause; a recorded command is asked to stop (SIGINT to its own process group, then SIGTERM
and SIGKILL if it does not) and recorded until its stacks have closed. A closing stack
sends what its control session still held and then an ``end`` line; a stream without one,
or with a last line cut in half, is written as an ``events.dropped`` record of that stack
(``by``: its control socket, ``last_error``: what was lost), and so are the drops the
stack counted itself, so ``summary`` names every loss where it happened. RDMA WRITE frames
keep their headers and the first --write-snaplen (128) bytes of data; each stack's
periodic snapshots are kept too (a replay seeks from them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

from stack.events import SCHEMA, BadRecord, Event, Skipped, check_record, check_snapshot, loads, to_json

from .capture import CaptureError, FileError, read_events
from .multifile import FileIndex, Renaming, base_host, plan
from .recorder import WRITE_SNAP, Frame, Recorder, snapshot_event
from .roce_analysis import RoceAnalysis
from .summary import render, summarize
from .timeline import Filter, timeline
from .timeorder import ClockMismatch, WallOffset, merged

PLUGIN = Path(__file__).parent / "wireshark" / "smctop.lua"
CONTROL_DIR_ENV = "SMCTOP_CONTROL_DIR"  # the names stack.runtime.stack reads
CONTROL_WAIT_ENV = "SMCTOP_CONTROL_WAIT"


class UsageError(Exception):
    pass


# ---------------------------------------------------------------------- record


RAW_BATCH_MAX = 16 << 20  # bytes: a frames.raw batch (the engine hands out at most 4 MiB at once)
TAIL_WAIT = 30.0  # seconds to wait, once a command has exited, for its stacks' last lines
STOP_GRACE = 15.0  # seconds a command asked to stop has before it is asked harder (SIGTERM, then SIGKILL)


def _source_drop(rec: Recorder, host: str, path: str, t: float, count: int, frames: int, why: str) -> None:
    """Record a loss at its source (a stack's bounded queue, its stream cut short) as an
    ``events.dropped`` event of that stack, named, so that ``summary`` shows it."""
    rec.stats.source_dropped_events += count
    rec.stats.source_dropped_frames += frames
    rec.stats.source_notes.append(f"{host} ({path}): {why}" if why else f"{host} ({path})")
    fields = {"count": count, "by": f"{host} control socket"}
    if frames:
        fields["frames"] = frames
    if why:
        fields["last_error"] = why
    rec.on_event(Event(t, "events.dropped", host, fields=fields))


async def follow(path: str, rec: Recorder, stop: asyncio.Event) -> str:
    """Record one stack through its control socket until it closes or ``stop`` is set.

    A stack that closes sends what it still held and then an ``end`` line; a stream that
    stops without one (the stack was killed, its exit cut short) has lost its tail, and a
    last line without its newline was cut mid-record: both are recorded as drops of that
    stack, named. Drops the stack counted (its event queue, its frame queue) are recorded
    as its own, not the recorder's."""
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 24)
    except OSError as e:
        raise UsageError(f"cannot attach to {path}: {e.strerror or e}") from None
    # frames "raw": the compiled engine's batches as bytes, for the spool to take in C
    writer.write(json.dumps({"cmd": "subscribe", "frames": "raw", "write_snap": rec.write_snap, "id": 1}).encode() + b'\n{"cmd":"snapshot","id":2}\n')
    await writer.drain()
    host = "?"
    ended = False
    cut = 0  # bytes of a last line without its newline
    last_t = time.monotonic()  # the stack's clock (CLOCK_MONOTONIC) for a drop found here

    async def pump() -> None:
        """Read and record lines until the stream ends. One task for the whole stream (a
        task and a wait per line cost more than the line): ``stop`` cancels it."""
        nonlocal host, ended, cut, last_t
        n = 0
        while not stop.is_set():  # checked each line: a stream that never pauses must not outlast --duration or Ctrl-C
            n += 1
            if n % 1000 == 0:  # a line already buffered is read without yielding: let the stop in now and then
                await asyncio.sleep(0)
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError) as e:  # a line longer than the reader's limit: the stream is lost from here
                _source_drop(rec, host, path, last_t, 1, 0, f"a line longer than 16 MiB ({e}): the rest of the stream is lost")
                ended = True
                return
            except ConnectionError:
                return
            if not line:
                return
            if not line.endswith(b"\n"):  # EOF inside a line: the stream was cut mid-record
                cut = len(line)
                return
            try:
                msg = loads(line)
                if type(msg) is not dict:
                    raise BadRecord("a control socket line must be a JSON object")
                kind = msg.get("type")
                if kind == "event":
                    e = check_record(msg.get("event"))
                    last_t = e.t
                    if e.kind == "events.dropped":  # the stack's event queue overflowed: its own drop, named
                        rec.stats.source_dropped_events += e.get("count") or 0
                        e.fields.setdefault("by", f"{e.host} event queue")
                    rec.on_event(e)
                elif kind == "frame":
                    rec.on_frame(_frame(msg.get("frame")))
                elif kind == "frames.raw":
                    size = msg.get("size")
                    if type(size) is not int or not 0 < size <= RAW_BATCH_MAX:
                        _source_drop(rec, host, path, last_t, 1, 0, f"a frames.raw line with a bad size ({str(size)[:40]}): the rest of the stream is lost")
                        ended = True
                        return
                    try:
                        blob = await reader.readexactly(size)
                    except asyncio.IncompleteReadError as e:
                        cut = len(e.partial)
                        return
                    rec.on_frames(blob)  # the spool checks each record's bounds
                    continue
                elif kind == "frames.dropped":
                    count = msg.get("count", 0)
                    if type(count) is int and 0 < count < 1 << 53:
                        _source_drop(rec, host, path, last_t, 0, count, "its frame queue was full")
                    continue
                elif kind == "end":
                    ended = True
                    continue
            except BadRecord as e:  # a bad line from the stack: counted and named, never the end of the recording
                rec.stats.dropped_events += 1
                rec.stats.last_error = f"{path}: {e}"
                continue
            if kind in ("event", "frame"):
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
            elif kind == "snapshot":  # the stack's periodic state: the truth of its counts, and where a replay can seek from
                snap = msg.get("snapshot")
                if check_snapshot(snap) is None:
                    t = snap.get("t")
                    t = t if type(t) is float and math.isfinite(t) else time.monotonic()
                    rec.on_event(Event(t, "stats", snap.get("host", host), fields={"cause": "snapshot", "snapshot": snap}))
            elif kind == "error":
                raise UsageError(f"{path}: {msg.get('error')}")
        ended = True  # we stopped: the recording ends here by choice

    pumping = asyncio.ensure_future(pump())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({pumping, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not pumping.done():  # stopped while the stack still talks: the recording ends here by choice
            pumping.cancel()
            ended = True
        try:
            await pumping
        except asyncio.CancelledError:
            if not stop.is_set():
                raise
        if not ended and not stop.is_set():
            _source_drop(rec, host, path, last_t, 1 if cut else 0, 0,
                         (f"its stream ended inside a line ({cut} bytes of a record), " if cut else "its stream ended ")
                         + "without the stack's end line: the stack was killed or its exit cut short, and what it had not sent yet is lost")  # fmt: skip
    finally:
        pumping.cancel()
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


def _on_stop_signals(loop, callback) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, callback, sig)


async def record_command(argv: list[str], rec: Recorder, wait: float, duration: float = 0) -> int:
    """Run ``argv`` with every stack it starts opening a control socket in a fresh directory,
    and record each one from its first event (the stack waits for us at start) to its last
    (it sends what it still holds as it closes).

    Ctrl-C, SIGTERM or ``duration`` ask the command to stop (SIGINT, as Ctrl-C would; a
    second signal, or STOP_GRACE seconds without an exit, sends SIGTERM, then SIGKILL); the
    recording goes on until its stacks have closed. The command runs in a process group of its own, so that it gets one
    signal, from us."""
    with tempfile.TemporaryDirectory(prefix="smc-trace-") as d:
        env = dict(os.environ, **{CONTROL_DIR_ENV: d, CONTROL_WAIT_ENV: str(wait)})
        try:
            proc = await asyncio.create_subprocess_exec(*argv, env=env, process_group=0)
        except OSError as e:
            raise UsageError(f"cannot run {argv[0]}: {e.strerror or e}") from None
        stop = asyncio.Event()
        asked = []
        loop = asyncio.get_running_loop()

        def ask(_sig=None) -> None:
            if proc.returncode is None:
                sig = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)[min(len(asked), 2)]
                asked.append(sig)
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass
                n = len(asked)
                if n < 3:  # a command that does not stop when asked is asked harder
                    loop.call_later(STOP_GRACE, lambda: ask() if len(asked) == n else None)

        _on_stop_signals(loop, ask)
        if duration:
            loop.call_later(duration, ask)
        seen: set[str] = set()
        tasks = []

        def look() -> None:
            for name in sorted(os.listdir(d)):
                if name.endswith(".sock") and name not in seen:
                    seen.add(name)
                    tasks.append(asyncio.ensure_future(follow(os.path.join(d, name), rec, stop)))

        exit_task = asyncio.ensure_future(proc.wait())
        while not exit_task.done():
            look()
            await asyncio.wait({exit_task}, timeout=0.02)
        look()
        if tasks:  # each stream ends when its stack has closed (its end line) or its process is gone (EOF)
            await asyncio.wait(tasks, timeout=TAIL_WAIT)
        stop.set()
        for t in tasks:
            try:
                await t
            except (UsageError, ConnectionError):
                pass
        rc = exit_task.result()
        if asked and rc in (130, -signal.SIGINT, 143, -signal.SIGTERM, -signal.SIGKILL):
            return 0  # stopped as asked
        return rc


async def record_attach(paths: list[str], rec: Recorder, duration: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    _on_stop_signals(loop, lambda _sig: stop.set())
    if duration:
        loop.call_later(duration, stop.set)
    await asyncio.gather(*(follow(p, rec, stop) for p in paths))
    return 0


def record_kernel(args) -> int:
    """``record --kernel``: the Linux kernel's own SMC-R (smckernel) into one pcapng timeline:
    its events (smc_diag and SMC_GEN_NETLINK polled and diffed; tracepoints and probes as
    root) and, where a capture runs (root, Soft-RoCE), its RoCEv2 frames, on one clock.
    What the kernel or the privileges do not allow is said on stderr; a host without SMC
    is an error (exit 2) that names what is missing, and leaves no file behind. Ctrl-C or
    SIGTERM stops it in any state, each part of the stop bounded and a second signal cutting
    it short (smckernel.stopping); exit 1 when a part had to be abandoned (said on stderr)."""
    from smckernel import stopping
    from smckernel.kio import KernelUnavailable
    from smckernel.record import KernelRecording
    from smckernel.source import sources_for

    capture = None if args.capture == "none" else ("auto" if args.capture == "auto" else [n for n in args.capture.split(",") if n])
    probes = False if args.no_probes else ([p for p in args.probes.split(",") if p] if args.probes else True)
    # the handlers first: a Ctrl-C during the start (seconds: trace sessions, probes) stops it too,
    # and what was made is undone (a KeyboardInterrupt left trace sessions in the kernel)
    with stopping.StopSignals() as signals:
        srcs: list = []
        try:  # one source per namespace (--netns repeated, or all), each under its own host name
            srcs = sources_for(args.netns, rate=args.rate, trace=False if args.no_trace else None, probes=probes, capture=capture)
            for src in srcs:
                if signals.count:
                    break
                src.open()  # before the file: a host without SMC leaves nothing behind
        except KernelUnavailable as e:
            for src in srcs:
                src.close()
            where = f" (netns {src.netns})" if srcs and src.netns else ""
            print(f"smc-trace: cannot record the kernel's SMC-R{where}: {e.strerror}", file=sys.stderr)
            return 2
        except ValueError as e:
            raise UsageError(str(e)) from None
        if signals.count:
            _stop_kernel_sources(srcs, None, signals)
            print("smc-trace: stopped before the recording began: nothing written", file=sys.stderr)
            return 130
        try:
            rec = KernelRecording(args.write, srcs, write_snap=args.write_snaplen)
        except OSError as e:
            for src in srcs:
                src.close()
            raise UsageError(f"cannot write {args.write}: {e.strerror or e}") from None
        return _record_kernel(args, srcs, rec, signals)


def _record_kernel(args, srcs: list, rec, signals) -> int:
    from smckernel.kio import KernelUnavailable

    shown: dict[int, int] = {}  # notes of each source already printed

    def say_notes(src) -> None:
        for note in src.notes[shown.get(id(src), 0) :]:
            print(f"smc-trace: kernel {src.host}: {note}" if len(srcs) > 1 else f"smc-trace: kernel: {note}", file=sys.stderr)
        shown[id(src)] = len(src.notes)

    try:
        for src in srcs:
            if signals.count:
                break
            try:
                src.start()
            except KernelUnavailable as e:
                print(f"smc-trace: the kernel's SMC-R ({src.host}): {e.strerror}", file=sys.stderr)
                _stop_kernel_sources(srcs, rec, signals)
                return 2
            say_notes(src)
        if not signals.count:
            print(f"smc-trace: recording the kernel's SMC-R of {', '.join(getattr(src, 'host', None) or 'this host' for src in srcs)} to {args.write}"
                  + (f" for {args.duration:g} s" if args.duration else "") + "; Ctrl-C or SIGTERM stops", file=sys.stderr, flush=True)  # fmt: skip
            signals.wait(args.duration or None)
    except BaseException:
        _stop_kernel_sources(srcs, rec, signals)
        raise
    read_all, st = _stop_kernel_sources(srcs, rec, signals, release=False)
    for src in srcs:
        say_notes(src)  # what closing found (records the trace reader could not catch up with)
    if st is None:
        print(f"smc-trace: {args.write} is incomplete: its last writes did not end", file=sys.stderr)
    else:
        capturing = [f"{c} ({src.host})" if len(srcs) > 1 else c for src in srcs for c in src.capturing]
        snap = f"RDMA WRITE frames cut to {args.write_snaplen} bytes" if args.write_snaplen else "whole RDMA WRITE frames"
        hosts = f" of {', '.join(src.host for src in srcs)}" if len(srcs) > 1 else ""
        print(f"smc-trace: {st.events} kernel events{hosts}, {st.frames} RoCE frames ({snap}) written to {args.write}"
              + (f" (captured on {', '.join(capturing)})" if capturing else " (no capture)")
              + (f"; DROPPED by the recorder {st.dropped_events} events, {st.dropped_frames} frames" if st.dropped_events or st.dropped_frames else ""),
              file=sys.stderr, flush=True)  # fmt: skip
    lost = sum(src.status().get("frames_dropped") or 0 for src in srcs)
    if lost:
        print(f"smc-trace: LOST before the recorder: {lost} frames (the capture's ring)", file=sys.stderr)
    from smckernel import stopping

    stopping.release_sources(srcs, signals)  # the file is whole: now the trace sessions leave the kernel
    for src in srcs:
        say_notes(src)
    return 0 if read_all and st is not None else 1


def _stop_kernel_sources(srcs: list, rec, signals, release: bool = True) -> tuple[bool, object]:
    """The sources stop reading, then the recording (if any) writes what is left, then (with
    ``release``) the trace sessions leave the kernel: each part bounded (smckernel.stopping).
    Returns whether every source stopped, and the recording's stats (None: not written)."""
    from smckernel import stopping

    read_all = stopping.stop_sources(srcs, signals)
    st = stopping.write_recording(rec, signals) if rec is not None else None
    if release:
        stopping.release_sources(srcs, signals)
    return read_all, st


def seconds(text: str) -> float:
    """A number of seconds: finite, not negative."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(v) or v < 0 or v > 1e9:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds are a finite number from 0 to 1e9")
    return v


def _rate(text: str) -> float:
    """Polls per second (not seconds: its own words in its errors)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of polls per second") from None
    if not 0.01 <= v <= 100:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text!r}: polls per second from 0.01 to 100")
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


def _command(args) -> list[str]:
    """The command after ``--`` (REMAINDER keeps the ``--``)."""
    cmd = args.command or []
    return cmd[1:] if cmd[:1] == ["--"] else cmd


def _check_runnable(cmd: str) -> None:
    """A command that cannot be started is refused before the file is made."""
    try:
        if os.sep in cmd:
            why = "" if os.path.isfile(cmd) and os.access(cmd, os.X_OK) else "No such file or directory" if not os.path.exists(cmd) else "Permission denied"
        else:
            why = "" if shutil.which(cmd) else "not found in PATH"
    except ValueError as e:  # a NUL in the name
        raise UsageError(f"cannot run {cmd!r}: {e}") from None
    if why:
        raise UsageError(f"cannot run {cmd}: {why}")


def _check_socket(path: str) -> None:
    """An --attach path must be a unix socket: anything else is refused before the file is made."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, ValueError):  # ValueError: a NUL in the path
        raise UsageError(f"no control socket at {path}") from None
    except OSError as e:
        raise UsageError(f"cannot attach to {path}: {e.strerror or e}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"{path} is not a socket (--attach takes a running stack's control socket)")


def _scratch_for(target: str) -> tuple[str | None, os.stat_result | None]:
    """A temporary file beside an existing regular ``target`` to record into, and the target's
    stat: a recording that writes nothing must not replace it with an empty capture. (None,
    None) when there is nothing to keep: the recording goes to ``target`` itself."""
    real = os.path.realpath(target)  # a symlink is written through, as open() would
    try:
        st = os.stat(real)
    except (OSError, ValueError):
        return None, None
    if not stat.S_ISREG(st.st_mode):  # /dev/null and the like are written as they are
        return None, None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(real)}.", suffix=".recording", dir=os.path.dirname(real))
    except OSError as e:
        raise UsageError(f"cannot write {target}: {e.strerror or e}") from None
    os.close(fd)
    return tmp, st


def _settle(tmp: str, target: str, old: os.stat_result, st) -> bool:
    """Put a recording made in ``tmp`` in place of ``target``, unless it holds nothing at all
    (no event, frame or CLC segment): then the old file stays. True when it stayed."""
    if not (st.events or st.frames or st.clc_frames):
        os.unlink(tmp)
        print(f"smc-trace: nothing was recorded: {target} was left as it was", file=sys.stderr)
        return True
    try:
        os.chmod(tmp, stat.S_IMODE(old.st_mode))
        os.replace(tmp, os.path.realpath(target))
    except OSError as e:
        raise UsageError(f"cannot write {target}: {e.strerror or e} (the recording is in {tmp})") from None
    return False


def cmd_record(args) -> int:
    argv = _command(args)
    if args.command and not argv:
        raise UsageError("record needs a command after --")
    given = sum(map(bool, (argv, args.attach, args.kernel)))
    if not given:
        raise UsageError("record needs a command after -- or --attach SOCKET, or --kernel")
    if given > 1:
        raise UsageError("record takes one of a command, --attach or --kernel, not several")
    if not args.kernel and (args.netns or args.capture != "auto" or args.no_trace or args.no_probes or args.probes or args.rate != 1.0):
        raise UsageError("--netns, --capture, --rate, --no-trace, --no-probes and --probes go with --kernel")
    if args.kernel:
        return record_kernel(args)
    for p in args.attach or ():
        _check_socket(p)
    if argv:
        _check_runnable(argv[0])
    tmp, old = _scratch_for(args.write)
    try:
        rec = Recorder(tmp or args.write, write_snap=args.write_snaplen)
    except OSError as e:
        if tmp:
            os.unlink(tmp)
        raise UsageError(f"cannot write {args.write}: {e.strerror or e}") from None
    kept = False
    try:
        if argv:
            rc = asyncio.run(record_command(argv, rec, args.wait, args.duration))
        else:
            rc = asyncio.run(record_attach(args.attach, rec, args.duration))
    finally:
        st = rec.close()
        if tmp:
            kept = _settle(tmp, args.write, old, st)
    snap = f"RDMA WRITE frames cut to {rec.write_snap} bytes" if rec.write_snap else "whole RDMA WRITE frames"
    print(f"smc-trace: {st.events} events, {st.frames} RoCE frames ({snap}), {st.clc_frames} CLC segments "
          + ("recorded" if kept else f"written to {args.write}")
          + (f"; DROPPED by the recorder {st.dropped_events} events, {st.dropped_frames} frames" if st.dropped_events or st.dropped_frames else ""),
          file=sys.stderr)  # fmt: skip
    if st.last_error and st.dropped_events:
        print(f"  the last dropped: {st.last_error}", file=sys.stderr)
    if st.source_notes:
        print(f"smc-trace: LOST before the recorder: {st.source_dropped_events} events, {st.source_dropped_frames} frames", file=sys.stderr)
        for note in st.source_notes[:10]:
            print(f"  {note}", file=sys.stderr)
    return rc


# ---------------------------------------------------------------------- read


def _joined(values: list[str] | str | None) -> str | None:
    """A filter option given once or repeated, as one comma-separated list."""
    return ",".join(values) if isinstance(values, list) else values


def _ids(option: str, values: list[str] | str | None, cast=int):
    """--conn, --link, --lgr, --host: the ids asked for (None: not asked); one that names
    nothing ('', ',') is refused rather than matching nothing."""
    text = _joined(values)
    if text is None:
        return None
    try:
        ids = {cast(x.strip()) for x in text.split(",") if x.strip()}
    except ValueError:
        raise UsageError(f"{option}: expected a comma-separated list of numbers, got {text!r}") from None
    if not ids:
        raise UsageError(f"{option} {text!r} names nothing: give ids, comma-separated")
    return ids


def _kinds(values: list[str] | str | None) -> tuple[str, ...] | None:
    """--kind: kinds or prefixes of kinds (``conn``, ``link.event``), spaces around each
    ignored; one that matches no kind of the schema is refused rather than matching nothing."""
    text = _joined(values)
    if text is None:
        return None
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    for k in kinds:
        stem = k.rstrip(".")
        if not any(name == stem or name.startswith(stem + ".") for name in SCHEMA):
            raise UsageError(f"--kind {k!r} is not a kind or the prefix of one; the kinds: {', '.join(sorted(SCHEMA))}")
    if not kinds:
        raise UsageError(f"--kind {text!r} names no kind; the kinds: {', '.join(sorted(SCHEMA))}")
    return kinds


class WriteError(Exception):
    """The output cannot be written (a full disk): one line naming it, exit 1."""

    def __init__(self, name: str, error: OSError, stdout: bool) -> None:
        super().__init__(f"cannot write {name}: {error.strerror or error}")
        self.stdout = stdout


class Output:
    """A text output whose write errors are a WriteError naming it. A closed pipe stays a
    BrokenPipeError: its reader left, which is not an error."""

    def __init__(self, stream, name: str) -> None:
        self.stream = stream
        self.name = name

    def _do(self, call, *args) -> None:
        try:
            call(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise WriteError(self.name, e, self.stream is sys.stdout) from None

    def write(self, text: str) -> None:
        self._do(self.stream.write, text)

    def flush(self) -> None:
        self._do(self.stream.flush)

    def close(self) -> None:
        self._do(self.stream.close)


def stdout() -> Output:
    return Output(sys.stdout, "standard output")


def report_skipped(skipped: Skipped) -> None:
    """Bad event records the reader left out: how many and why, on stderr (the output stays clean)."""
    if skipped:
        try:
            sys.stdout.flush()  # what was read comes first
        except OSError:
            pass  # the output's own error is reported by whoever wrote to it
        print(f"smc-trace: {skipped.summary()}", file=sys.stderr)
        for where in skipped.named[:5]:
            print(f"  {where}", file=sys.stderr)


class _SkippedIn:
    """Bad records of one of several files: named with the file's path."""

    def __init__(self, skipped: Skipped, path: str) -> None:
        self.skipped = skipped
        self.path = path

    def add(self, where: str, error: Exception | str) -> None:
        self.skipped.add(f"{self.path}: {where}", error)


def _named(path: str, events: Iterator[Event]) -> Iterator[Event]:
    """A file's events whose damage, of one of several files, names the file."""
    try:
        yield from events
    except FileError:  # names its file already
        raise
    except CaptureError as e:
        raise CaptureError(f"{path}: {e}") from None


def _check_distinct(files: list[str]) -> None:
    """The same file twice would count every event twice: refused, naming it."""
    seen: dict[tuple[int, int], str] = {}
    for f in files:
        try:
            st = os.stat(f)
        except (OSError, ValueError):
            continue  # the reader says what is wrong with it
        first = seen.get((st.st_dev, st.st_ino))
        if first is None:
            seen[(st.st_dev, st.st_ino)] = f
        else:
            same = "twice" if first == f else f"twice ({first} and {f})"
            raise UsageError(f"{f} is given {same}: give each file once (its events would count twice)")


KEEP_READ = 300_000  # events: of several files, the first reading keeps up to this many for the second


class _SkipLog:
    """Bad records a first reading met, to be told only if its events are the ones used."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Exception | str]] = []

    def add(self, where: str, error: Exception | str) -> None:
        self.seen.append((where, error))


class _Kept:
    """A file's events as its first reading found them (and the damage it ended at), read
    again from memory instead of from the file."""

    def __init__(self, events: list[Event], log: _SkipLog, error: CaptureError | None) -> None:
        self.events, self.log, self.error = events, log, error

    def replay(self, skipped) -> Iterator[Event]:
        for where, error in self.log.seen:
            skipped.add(where, error)
        yield from self.events
        if self.error is not None:
            raise self.error


def _file_names(files: list[str], roces: dict[str, RoceAnalysis], clocks: dict[str, WallOffset]) -> tuple[dict[str, Renaming], dict[str, _Kept]]:
    """Each file's host names as several files show them (dissectors.multifile), from a first
    reading of every file: ``client`` of two files is ``client@a.pcapng`` and
    ``client@b.pcapng``, and one connection end in two files is counted once. The first
    reading keeps what it read while the files together have at most KEEP_READ events, and
    the second reading of those is from memory; what is wrong with a file is said by the
    second reading, in its place. A file not kept is read again with a fresh ``roces`` and
    ``clocks`` entry (the first reading fed them)."""
    indexes, kept = [], {}
    room = KEEP_READ
    for f in files:
        idx = FileIndex()
        log, events, error = _SkipLog(), [], None
        try:
            for e in read_events(f, log, roces.get(f), clocks[f]):
                idx.add(e)
                if events is not None:
                    events.append(e)
                    if len(events) > room:
                        events = None  # too many to keep: read again
        except CaptureError as e:  # FileError too: what was read before it still counts
            error = e
        if events is not None:
            kept[f] = _Kept(events, log, error)
            room -= len(events)
        else:
            if f in roces:
                roces[f] = RoceAnalysis()
            clocks[f] = WallOffset()
        indexes.append((f, idx))
    return plan(indexes), kept


def _read_files(args, skipped: Skipped, with_roce: bool = True) -> tuple[Iterator[Event], dict[str, RoceAnalysis]]:
    """The events of every file given, in one time order (dissectors.timeorder), and each
    file's RoCE analysis (frame numbers are per file, as Wireshark counts them). Of several
    files, bad records and damage are named with their file's path, and a host name that
    more than one file has names its file too (``_file_names``)."""
    roces = {f: RoceAnalysis() for f in args.files} if with_roce else {}
    clocks = {f: WallOffset() for f in args.files}  # recordings of hosts that booted apart line up by the wall clock
    if len(args.files) == 1:
        streams = [(f, read_events(f, skipped, roces.get(f), clocks[f]), clocks[f]) for f in args.files]
    else:
        names, kept = _file_names(args.files, roces, clocks)

        def events_of(f: str) -> Iterator[Event]:
            if f in kept:
                return kept.pop(f).replay(_SkippedIn(skipped, f))
            return read_events(f, _SkippedIn(skipped, f), roces.get(f), clocks[f])

        streams = [(f, names[f](_named(f, events_of(f))), clocks[f]) for f in args.files]
    return merged(streams), roces


def _until_error(events: Iterator[Event], errors: list[CaptureError]) -> Iterator[Event]:
    """``events`` until a file's damage, which is kept for after what was read is shown.
    Files that cannot share a timeline show nothing."""
    try:
        yield from events
    except ClockMismatch:
        raise
    except CaptureError as e:
        errors.append(e)


def cmd_decode(args) -> int:
    flt = Filter(_ids("--conn", args.conn), _ids("--link", args.link), _ids("--lgr", args.lgr, lambda x: x.lower()), _ids("--host", args.host, str),
                 _kinds(args.kind))  # fmt: skip
    _check_distinct(args.files)
    skipped = Skipped()
    out = stdout()
    all_events, roces = _read_files(args, skipped)  # frames sent again are not events: listed apart
    unfiltered = not (args.conn or args.link or args.lgr or args.host or args.kind)
    seen = _Seen(flt)
    if not unfiltered:
        all_events = seen.watch(all_events)
    shown = 0
    try:
        if args.json:
            for e in all_events:
                if flt(e):
                    out.write(to_json(e) + "\n")
                    shown += 1
        else:
            for line in timeline(all_events, flt):  # times from the trace's start, filtered or not
                out.write(line + "\n")
                shown += 1
            # a filtered timeline (--conn, --kind, ...) shows what was asked for and nothing else
            for name, roce in roces.items():
                of = f" in {name}" if len(roces) > 1 else ""
                if unfiltered and roce.timeline():
                    out.write(f"\nRoCE retransmissions{of} ({roce.totals()['retransmissions']} frames, not counted as messages):\n")
                    for line in roce.timeline():
                        out.write("  " + line + "\n")
                if unfiltered and roce.capture_copies:
                    out.write(f"\n{roce.copies_line()}{of}\n")
        out.flush()
    finally:
        report_skipped(skipped)
    if not unfiltered and not shown:
        print(f"smc-trace: no event matched: {seen.why_nothing()}", file=sys.stderr)
    elif not shown:  # an empty output says why: not every capture has SMC in it
        print(f"smc-trace: no events in {', '.join(args.files)}: no SMC handshake, RoCEv2 frame or event record in it", file=sys.stderr)
    return 0


class _Seen:
    """What a filtered decode passed over, to say why nothing matched (a host or a
    connection the files do not have) rather than print nothing."""

    def __init__(self, flt: Filter) -> None:
        self.flt = flt
        self.hosts: set[str] = set()
        self.conns: set[int] = set()
        self.links: set[int] = set()
        self.lgrs: set[str] = set()
        self.kinds: set[str] = set()

    def watch(self, events: Iterable[Event]) -> Iterator[Event]:
        for e in events:
            self.hosts.add(e.host)
            self.hosts.add(base_host(e.host))
            self.conns.add(e.conn)
            self.links.add(e.link)
            self.lgrs.add(e.lgr.lower() if e.lgr else e.lgr)
            self.kinds.add(e.kind)
            yield e

    def why_nothing(self) -> str:
        f, missing = self.flt, []
        for option, wanted, have in (("--host", f.hosts, self.hosts), ("--conn", f.conns, self.conns),
                                     ("--link", f.links, self.links), ("--lgr", f.lgrs, self.lgrs)):  # fmt: skip
            have = have - {None}
            if wanted is not None and not wanted & have:
                shown = sorted(have, key=str)
                listed = ", ".join(map(str, shown[:12])) + (f" and {len(shown) - 12} more" if len(shown) > 12 else "")
                missing.append(f"{option} {','.join(map(str, sorted(wanted)))}: not in the capture (it has {listed or 'none'})")
        if f.kinds is not None and not any(f.kind_matches(k) for k in self.kinds):
            missing.append(f"--kind {','.join(f.kinds)}: the capture has no such events")
        return "; ".join(missing) or "each option matches events, but no event matches all of them together"


def cmd_summary(args) -> int:
    _check_distinct(args.files)
    skipped = Skipped()
    out = stdout()
    events, roces = _read_files(args, skipped)
    errors: list[CaptureError] = []
    s = summarize(_until_error(events, errors))  # a damaged file: the summary of what was read, then the error
    if errors and not s.events:  # nothing read at all (not a capture, unreadable): only the error
        report_skipped(skipped)
        raise errors[0]
    s.skipped = skipped
    if len(roces) == 1:
        roce = next(iter(roces.values()))
        out.write((json.dumps({**s.to_dict(), "roce": roce.to_dict()}, indent=2) if args.json else "\n".join([render(s), *roce.render()])) + "\n")
    elif args.json:
        out.write(json.dumps({**s.to_dict(), "roce": {name: r.to_dict() for name, r in roces.items()}}, indent=2) + "\n")
    else:
        out.write("\n".join([render(s), *(f"{name}: {line}" for name, r in roces.items() for line in r.render())]) + "\n")
    out.flush()
    report_skipped(skipped)
    if errors:
        raise errors[0]
    return 0


def _check_not_an_input(output: str, files: list[str]) -> None:
    """-o naming one of the inputs (by any path) would empty it before it is read."""
    for f in files:
        try:
            same = os.path.samefile(output, f)
        except (OSError, ValueError):
            continue
        if same:
            named = output if output == f else f"{output} ({f})"
            raise UsageError(f"-o {named} is one of the files to read: writing it would destroy it; give another output file")


def cmd_export(args) -> int:
    _check_distinct(args.files)
    if args.output:
        _check_not_an_input(args.output, args.files)
    try:
        out = Output(open(args.output, "w"), args.output) if args.output else stdout()
    except OSError as e:
        raise UsageError(f"cannot write {args.output}: {e.strerror or e}") from None
    skipped = Skipped()
    try:
        events, _ = _read_files(args, skipped, with_roce=False)
        for e in events:
            out.write(to_json(e) + "\n")
        out.flush()
    finally:
        try:
            if args.output:
                out.close()
        finally:
            report_skipped(skipped)
    return 0


def plugin_dir() -> Path:
    return Path.home() / ".local/lib/wireshark/plugins"  # Wireshark's personal Lua plugin folder on Linux


def cmd_install_plugin(args) -> int:
    if args.dir is not None and not args.dir.strip():
        raise UsageError("--dir '': give the plugin folder (or leave --dir out for ~/.local/lib/wireshark/plugins)")
    target = Path(args.dir) if args.dir else plugin_dir()
    if target.exists() and not target.is_dir():
        raise UsageError(f"cannot install the plugin into {target}: not a directory")
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
    r.add_argument(
        "--duration",
        type=seconds,
        default=0,
        help="stop after this many seconds (default: Ctrl-C, SIGTERM, or the stacks closing); "
        "a command is asked to stop (SIGINT) and recorded until its stacks have closed",
    )
    r.add_argument("--wait", type=seconds, default=10.0, help="seconds each stack of the command waits for the recorder at start")
    r.add_argument("--write-snaplen", type=_snaplen, default=WRITE_SNAP, metavar="BYTES",
                   help=f"keep this many bytes of each RDMA WRITE frame (headers and the start of the data; "
                        f"default {WRITE_SNAP}; 0: whole frames); LLC, CDC and ACK frames are always whole")  # fmt: skip
    r.add_argument(
        "--kernel",
        action="store_true",
        help="the Linux kernel's own SMC-R: its events (smc_diag, SMC_GEN_NETLINK; tracepoints "
        "and probes as root) and, with a capture (root), its RoCEv2 frames",
    )
    r.add_argument(
        "--netns",
        action="append",
        help="--kernel: a network namespace (ip netns name or /proc/PID/ns/net; needs root); "
        "repeat for several, 'all' for this one and every one in /var/run/netns (each under its own host name, host/NAME)",
    )
    r.add_argument(
        "--capture",
        default="auto",
        help="--kernel: netdevs to capture RoCEv2 frames on (comma-separated), 'auto' (the SMC-R devices' netdevs; default) or 'none'; needs CAP_NET_RAW",
    )
    r.add_argument("--rate", type=_rate, default=1.0, help="--kernel: polls of smc_diag and genl per second (default 1)")
    r.add_argument("--no-trace", action="store_true", help="--kernel: no tracepoints or probes, even as root")
    r.add_argument("--no-probes", action="store_true", help="--kernel: the smc tracepoints only, no dynamic probes")
    r.add_argument("--probes", help="--kernel: only these probes (comma-separated; cdc_rx, sendmsg and recvmsg fire per message or call)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS... (a program that uses the smctop stack, e.g. smc-traffic)")
    for name, help_ in (("decode", "print the timeline"), ("summary", "connections, fallbacks, failovers, throughput"), ("export", "events as JSON lines")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("files", nargs="+", metavar="file",
                       help="pcapng or pcap file (ours or any capture of SMC traffic), or JSONL events, each also gzip, zstd "
                            "or LZ4 compressed as tshark reads them; several files (each host's recording) make one "
                            "timeline in time order")  # fmt: skip
        if name == "decode":
            # each repeatable: --conn 1 --conn 2 is --conn 1,2
            s.add_argument("--conn", action="append", help="only these connection ids (comma-separated)")
            s.add_argument("--link", action="append", help="only these link ids")
            s.add_argument("--lgr", action="append", help="only these link groups (any case)")
            s.add_argument("--host", action="append", help="only these hosts (of several files: client is client@FILE of any file)")
            s.add_argument("--kind", action="append", help="only these kinds or kind prefixes, e.g. conn,link.event,llc.msg")
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
        try:
            stdout().flush()  # what came before the damage is shown first
        except WriteError as w:
            _quiet_stdout()
            print(f"smc-trace: error: {w}", file=sys.stderr)
        except BrokenPipeError:
            _quiet_stdout()
        print(f"smc-trace: error: {e}", file=sys.stderr)
        return 1
    except WriteError as e:
        if e.stdout:
            _quiet_stdout()
        print(f"smc-trace: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    return 0


def _quiet_stdout() -> None:
    """Standard output failed (a full disk, a reader gone): what it still buffers goes to
    /dev/null, so that Python's flush at exit does not print a traceback of its own."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture)
        pass


if __name__ == "__main__":
    sys.exit(main())
