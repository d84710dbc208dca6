"""The control socket: a unix socket (mode 0600) where a running stack streams its events
and periodic snapshots as JSON lines, and takes commands. smctop attaches here.

Every line is one JSON object with a ``type``:

* ``hello``: sent on connect: host name, protocol version, the commands;
* ``event``: ``{"type": "event", "event": <canonical event record>}`` once subscribed;
* ``snapshot``: ``{"type": "snapshot", "snapshot": {...}}`` every interval (default 1 s);
* ``frame``: a soft device's RoCE frame (``dir``, wall-clock ``ts`` in ns, addresses and
  ports, ``payload`` hex, ``dropped``) once subscribed with ``frames``; ``frames.dropped``
  counts what a slow client missed;
* ``frames.raw``: with ``"frames": "raw"``, the compiled engine's frames go as batches:
  ``{"type": "frames.raw", "size": N}`` and then exactly N bytes of raw tap records
  (stack/verbs/taprec.py), not a JSON line each: a recorder takes a whole batch without a
  Python object per frame (devices of the Python engine still send ``frame`` lines);
* ``reply`` / ``error``: the answer to a command, echoing its ``id``;
* ``end``: the last line a subscribed session gets when the stack closes, after every event
  and frame it still held (``events_dropped``, ``frames_dropped``: what it dropped in all):
  a recorder that reads it has the whole stream, one that does not knows its tail is lost.

Commands (``{"cmd": ..., "id": ...}``): subscribe [kinds, frames (true, false or "raw"), write_snap, queue],
unsubscribe, snapshot, interval {seconds}, fail_link {lgr, link}, port {device, up}, faults
{device, loss, rx_loss, drop_next, delay}, decline {reason: hex, int, name or null}, ping,
help. ``queue`` is how many events the session holds for a slow client (1 to 1,000,000,
default 50,000); a client too slow for the event stream loses events, which it is told
about (``events.dropped``).

Every line is checked before it acts: JSON without NaN or Infinity, at most ``MAX_LINE``
bytes and nested at most a few levels, known commands with arguments of the right type
and range (``faults`` takes only the four faults, finite and in range). A bad line gets an
``error`` line naming what was wrong, never a traceback; the connection stays up.

A second stack given the same path does not take it over: ``start`` refuses a path where
a live stack answers, and ``close`` removes the socket only while it is still its own.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import stat
import struct
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator

from stack.events import KINDS, BadRecord, Skipped, loads, to_dict, to_json
from stack.runtime.coalesce import Sampler
from stack.verbs.taprec import count_raw
from stack.wire import codes

if TYPE_CHECKING:
    from .controls import ControlTarget

PROTOCOL_VERSION = 1
MAX_LINE = 64 << 10
FRAME_QUEUE = 100_000  # frames a session holds for a slow client before it drops and counts them
RAW_QUEUE = 64 << 20  # bytes of raw frame batches a session holds for a slow client (each batch at most 4 MiB)
EVENT_QUEUE = 50_000  # events a session holds for a slow client by default ('queue' in subscribe)
MAX_EVENT_QUEUE = 1_000_000
MAX_COALESCE = 10.0  # seconds between a sampled subscription's samples of the data path
FLUSH_WAIT = 10.0  # seconds a closing stack waits for its subscribers to take what it still holds
MAX_DEPTH = 4  # commands are flat objects (subscribe's kinds: a list)
# faults a soft device takes (anything else on its fault object, its random generator for one, is not for the socket)
FAULTS = {"loss": (0.0, 1.0, "a probability from 0 to 1"), "rx_loss": (0.0, 1.0, "a probability from 0 to 1"),
          "drop_next": (0, 1_000_000, "a whole number of frames from 0 to 1,000,000"),
          "delay": (0.0, 60.0, "seconds from 0 to 60")}  # fmt: skip
COMMANDS = {
    "subscribe": "stream events (optional 'kinds': list of event kinds; 'frames': true adds the soft devices' RoCE frames; "
    f"'queue': events held for a slow client, 1 to {MAX_EVENT_QUEUE:,}, default {EVENT_QUEUE:,}; "
    f"'coalesce': seconds, 0 to {MAX_COALESCE:g}: the data path sampled, per connection and interval its last cursors, CDCs, "
    "RDMA WRITEs and RMB fill, 'coalesced' counting what each stands for)",
    "unsubscribe": "stop the event stream",
    "snapshot": "reply with one snapshot now",
    "interval": "periodic snapshots every 'seconds' (0 stops them)",
    "fail_link": "take link 'link' of link group 'lgr' down",
    "port": "set 'device' port 'up' (true/false); soft devices",
    "faults": "set fault injection on 'device': loss, rx_loss, drop_next, delay",
    "decline": "decline new connections with 'reason' (hex, int or name; null stops)",
    "ping": "reply pong",
    "help": "list the commands",
}


class CommandError(ValueError):
    pass


def _depth(v, limit: int) -> bool:
    if limit < 0:
        return False
    if isinstance(v, dict):
        return all(_depth(x, limit - 1) for x in v.values())
    if isinstance(v, list):
        return all(_depth(x, limit - 1) for x in v)
    return True


def _number(name: str, v: Any, lo: float, hi: float, what: str, whole: bool = False) -> float:
    """A finite number from lo to hi (``whole``: an integer), or CommandError naming ``name``."""
    ok = (type(v) is int or (type(v) is float and not whole)) and math.isfinite(v) and lo <= v <= hi
    if not ok:
        raise CommandError(f"{name} must be {what}, not {json.dumps(v)[:40] if _depth(v, 2) else 'that'}")
    return v


def parse_reason(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise CommandError("reason must be a number, a hex string or a reason name")
    if isinstance(value, int):
        code = value
    elif isinstance(value, str):
        try:
            code = int(value, 0)
        except ValueError:
            try:
                code = codes.DECLINE_REASONS.by_name(value).value
            except KeyError:
                raise CommandError(f"unknown decline reason {value!r}") from None
    else:
        raise CommandError("reason must be a number, a hex string or a reason name")
    if not 0 < code <= 0xFFFFFFFF:  # the value as given: "0x-1" for -1 made no sense
        raise CommandError(f"reason {value[:40] if isinstance(value, str) else code} is not a decline code (1 to 0xffffffff)")
    return code


def _owner_uid(path: str) -> str:
    try:
        return f"uid {os.lstat(path).st_uid}"
    except OSError:
        return "an unknown user"


def _live_owner(path: str) -> str | None:
    """Who serves this unix socket path, or None when nobody does (a stale file).

    Probed by connecting: a live stack answers with its ``hello`` line (its host name);
    the kernel names the listening process (SO_PEERCRED). Only a refused connection means
    nobody listens: a socket we may not connect to (another user's, mode 0600) or one that
    does not answer in time may well be live, so that is refused (FileExistsError), never
    taken over."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        probe.close()
        return None
    except PermissionError:
        probe.close()
        raise FileExistsError(
            f"control socket {path} is in use by another user: it belongs to {_owner_uid(path)}, and this user "
            f"(uid {os.getuid()}) may not connect to it to see whether a stack serves it; give this one another path"
        ) from None
    except OSError as e:
        probe.close()
        raise FileExistsError(
            f"control socket {path} (owner {_owner_uid(path)}) may be in use: connecting to it failed "
            f"({e.strerror or type(e).__name__}); give this one another path"
        ) from None
    try:
        who = []
        try:
            pid, uid, _ = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            if pid > 0:
                who.append(f"pid {pid}")
            who.append(f"uid {uid}")
        except (OSError, AttributeError, struct.error):
            pass
        try:
            line = probe.makefile("rb").readline(MAX_LINE)
            hello = json.loads(line) if line else None
            if isinstance(hello, dict) and hello.get("type") == "hello" and isinstance(hello.get("host"), str):
                who.insert(0, f"stack {hello['host'][:64]!r}")
        except (OSError, ValueError):
            pass
        return ", ".join(who) or "an unknown process"
    finally:
        probe.close()


def _ident(path: str) -> tuple[int, int, int]:
    """A socket file's identity: a file system reuses a removed file's inode number at once,
    so the creation (change) time tells a new socket at the same inode from ours."""
    st = os.lstat(path)
    return st.st_dev, st.st_ino, st.st_ctime_ns


class ControlServer:
    def __init__(self, stack: "ControlTarget", path: str, interval: float = 1.0) -> None:
        self.stack = stack
        self.path = path
        self.interval = interval
        self.server: asyncio.AbstractServer | None = None
        self.clients: set[asyncio.Task] = set()
        self.subscribed = asyncio.Event()
        self.sessions: set[_Session] = set()
        self._ident: tuple[int, int, int] | None = None  # our socket file: device, inode, ctime

    async def wait_subscribed(self, timeout: float) -> bool:
        """Wait until a client subscribes (a recorder attaching), at most ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):  # (not wait_for: it can swallow a cancellation on 3.11)
                await self.subscribed.wait()
            return True
        except asyncio.TimeoutError:
            return False

    async def start(self) -> None:
        try:
            if os.path.lexists(self.path):
                if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    raise FileExistsError(f"control socket path {self.path} exists and is not a socket")
                owner = _live_owner(self.path)
                if owner is not None:
                    raise FileExistsError(f"control socket {self.path} is in use: a live stack serves it ({owner}); stop it or give this one another path")
                try:
                    os.unlink(self.path)  # a stale socket a stack left behind
                except PermissionError:  # another user's, in a sticky directory such as /tmp
                    raise FileExistsError(
                        f"control socket {self.path} is a stale socket of {_owner_uid(self.path)}, which this user "
                        f"(uid {os.getuid()}) may not remove; remove it as that user or give this one another path"
                    ) from None
            old = os.umask(0o177)
            try:
                self.server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_LINE)
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            self._ident = _ident(self.path)
        except FileExistsError:
            raise
        except OSError as e:
            raise OSError(f"control socket {self.path}: {e.strerror or e}") from None

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            # the stack's last events (its connections closing) and frames reach every subscriber
            await asyncio.gather(*(s.flush(FLUSH_WAIT) for s in list(self.sessions) if s.sub is not None), return_exceptions=True)
            for task in list(self.clients):
                task.cancel()
            await asyncio.gather(*self.clients, return_exceptions=True)
            await self.server.wait_closed()
        try:  # only our own socket: another stack may have taken a stale path over since
            if self._ident is not None and _ident(self.path) == self._ident:
                os.unlink(self.path)
        except OSError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.clients.add(task)
        session = _Session(self, writer)
        self.sessions.add(session)
        try:
            session.send({"type": "hello", "host": self.stack.name, "protocol": PROTOCOL_VERSION, "commands": COMMANDS, "kinds": KINDS})
            session.start()
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    session.send({"type": "error", "error": f"line longer than {MAX_LINE} bytes"})
                    break
                if not line:
                    break
                session.handle(line)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            session.stop()
            writer.close()
            self.clients.discard(task)
            self.sessions.discard(session)


class _Session:
    sampler: Sampler | None = None  # subscribe's 'coalesce': the data path sampled

    def __init__(self, server: ControlServer, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.stack = server.stack
        self.writer = writer
        self.sub = None
        self.interval = server.interval
        self._tasks: list[asyncio.Task] = []
        self.frames: deque | None = None
        self.frames_dropped = 0
        self.frames_dropped_total = 0
        self.raw_bytes = 0  # bytes of raw batches queued (the device's tap thread adds, the loop takes)
        self._raw_lock = threading.Lock()
        self._tap = self._on_frame
        self.tapped: list[str] = []
        self._tapping = False
        self.sampler = None

    def send(self, obj: dict) -> None:
        if not self.writer.is_closing():
            self.writer.write(json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n")

    def pass_events(self, events: list, final: bool = False) -> None:
        """Send what the subscription gave; for a sampled one, then the progress of the
        connections those events name (``final``: of every connection that moved). A sample
        is the connection as it is now, so it comes after the events queued before it (its
        conn.mode, which says its RMB's size, its close)."""
        s = self.sampler
        if s is not None:
            named, closed = set(), []
            for e in events:
                if e.conn is not None:
                    named.add(e.conn)
                    if e.kind == "cdc.msg":  # one of its own (only those reach a sampled subscription)
                        s.passed(e.conn, e.fields.get("dir"))
                    elif e.kind == "conn.state" and e.fields.get("new") == "CLOSED":
                        closed.append(e.conn)
            now = asyncio.get_running_loop().time()
            events = list(events)
            if final:
                events += s.sample(now)
            else:
                for conn in named & s.touched.keys():
                    events += s.sample(now, conn)
            for conn in closed:
                s.forget(conn)
        self.send_events(events)

    async def _sampling(self, sampler: Sampler) -> None:
        """A sampled subscription's progress, every interval: what the subscription queued
        first (it happened before), then the connections that moved."""
        while self.sampler is sampler:
            await asyncio.sleep(sampler.interval)
            if self.sampler is sampler and self.sub is not None and sampler.touched:
                self.pass_events(self.sub.get_nowait(), final=True)

    def send_events(self, events: list) -> None:
        """Event lines in one write: a system call (and a wake-up of the reader) per batch,
        not per event."""
        if events and not self.writer.is_closing():
            self.writer.write(b"".join(map(self._event_line, events)))

    @staticmethod
    def _event_line(event) -> bytes:
        """An event line; its record in canonical JSON (the compiled encoder: no dict built)."""
        try:
            record = to_json(event)
        except (ValueError, TypeError):  # what the canonical form refuses goes as before, with str() for the odd value
            return json.dumps({"type": "event", "event": to_dict(event)}, separators=(",", ":"), default=str).encode() + b"\n"
        return b'{"type":"event","event":' + record.encode() + b"}\n"

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._snapshots()))

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.sub is not None:
            self.sub.close()
        self._unsample()
        self._untap()

    def _unsample(self) -> None:
        if self.sampler is not None:
            self.stack.bus.remove_toucher(self.sampler)
            self.sampler = None

    def _untap(self) -> None:
        if self._tapping:
            self._tapping = False
            self.stack.remove_frame_tap(self._tap)

    async def flush(self, timeout: float) -> None:
        """The stack is closing: send what the session still holds (events, frames), a last
        snapshot when it takes snapshots, then an ``end`` line with what it dropped in all,
        and wait up to ``timeout`` seconds for the client to take it."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._untap()
        if self.frames is not None:
            self._send_frames()
        self.pass_events(self.sub.get_nowait(), final=True)
        if self.interval > 0:  # the counters as the stack ends: a run shorter than the interval has no other
            self.send({"type": "snapshot", "snapshot": self.stack.snapshot()})
        self.send({"type": "end", "events_dropped": self.sub.dropped_total, "frames_dropped": self.frames_dropped_total})
        try:
            async with asyncio.timeout(timeout):
                await self.writer.drain()
        except (TimeoutError, ConnectionError):
            pass

    def _events_before_snapshot(self) -> None:
        """Send the events still queued for this client ahead of a snapshot: they happened
        before it, and after it a reader would add them to what the snapshot already counts
        (a byte counted twice, a connection the snapshot says is open closed by an old event)."""
        if self.sub is not None:
            self.pass_events(self.sub.get_nowait(), final=True)

    async def _snapshots(self) -> None:
        while True:
            if self.interval > 0:
                await asyncio.sleep(self.interval)
                self._events_before_snapshot()
                self.send({"type": "snapshot", "snapshot": self.stack.snapshot()})
                await self.writer.drain()
            else:
                await asyncio.sleep(0.2)

    async def _events(self) -> None:
        while True:
            first = await self.sub.get()
            self.pass_events([first, *self.sub.get_nowait()])  # what the loop's last turn emitted, together
            if self.writer.transport.get_write_buffer_size() > (1 << 20):
                await self.writer.drain()  # the subscription queue absorbs the wait, and counts drops

    def handle(self, line: bytes) -> None:
        req_id = None
        try:
            try:
                req = loads(line)
            except BadRecord as e:
                raise CommandError(str(e) if str(e).startswith("not JSON") else f"not JSON: {e}") from None
            if not isinstance(req, dict):
                raise CommandError("a command is a JSON object")
            if not _depth(req, MAX_DEPTH):
                raise CommandError(f"a command is nested at most {MAX_DEPTH} deep")
            req_id = req.get("id")
            if not (req_id is None or type(req_id) is str and len(req_id) <= 256 or type(req_id) is int and abs(req_id) < 1 << 53):
                req_id = None
                raise CommandError("id must be a number or a short string")
            cmd = req.get("cmd")
            if cmd not in COMMANDS if isinstance(cmd, str) else True:
                raise CommandError(f"unknown command {str(cmd)[:40]!r}; commands: {', '.join(COMMANDS)}")
            result = getattr(self, "cmd_" + cmd)(req)
            self.send({"type": "reply", "id": req_id, "cmd": cmd, "ok": True, **(result or {})})
        except (CommandError, ValueError, KeyError, TypeError, OverflowError) as e:
            self.send({"type": "error", "id": req_id, "error": str(e) if not isinstance(e, KeyError) else f"missing or unknown {e}"})
        except Exception as e:  # never a traceback on the stack's stderr: the client hears what broke
            self.send({"type": "error", "id": req_id, "error": f"command failed: {type(e).__name__}: {e}"})

    # ---------------------------------------------------------------- commands

    def cmd_subscribe(self, req: dict) -> dict:
        kinds = req.get("kinds")
        if kinds is not None and (not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds)):
            raise CommandError("kinds must be a list of event kinds")
        unknown = [k for k in kinds or () if k not in KINDS]
        if unknown:
            raise CommandError(f"unknown event kinds {unknown}")
        if self.sub is not None:
            self.sub.close()
        frames = req.get("frames", False)
        if not isinstance(frames, bool) and frames != "raw":
            raise CommandError('frames must be true, false or "raw"')
        write_snap = req.get("write_snap", 0)
        if type(write_snap) is not int or not 0 <= write_snap <= 65535:
            raise CommandError("write_snap must be a whole number of bytes from 0 (whole frames) to 65535")
        queue = _number("queue", req.get("queue", EVENT_QUEUE), 1, MAX_EVENT_QUEUE, f"a whole number of events from 1 to {MAX_EVENT_QUEUE:,}", whole=True)
        coalesce = _number("coalesce", req.get("coalesce", 0), 0, MAX_COALESCE, f"seconds from 0 (every event) to {MAX_COALESCE:g}")
        if self.sub is not None:  # what the old subscription still queues (and samples) goes first
            self.pass_events(self.sub.get_nowait(), final=True)
        self._unsample()
        if coalesce:
            self.sampler = Sampler(coalesce)
            self.stack.bus.add_toucher(self.sampler)
            self._tasks.append(asyncio.create_task(self._sampling(self.sampler)))
        self.sub = self.stack.bus.subscribe(maxsize=int(queue), kinds=kinds, sampled=bool(coalesce))
        self._tasks.append(asyncio.create_task(self._events()))
        tapped = self.start_frames(write_snap, raw=frames == "raw") if frames else []
        self.server.subscribed.set()
        return {"kinds": kinds or sorted(KINDS), "frames": tapped}

    def start_frames(self, write_snap: int = 0, raw: bool = False) -> list[str]:
        """Stream the soft devices' RoCE frames too (RDMA WRITE frames cut to ``write_snap``
        bytes, 0: whole; ``raw``: the compiled engine's batches as they come). The tap runs
        on the device threads and only appends to a bounded queue; what does not fit is
        counted and reported."""
        if self.frames is not None:
            return self.tapped
        self.frames = deque()
        self._tap = self._on_batch if raw else self._on_frame
        self.tapped = self.stack.add_frame_tap(self._tap, batch=raw, write_snap=write_snap, raw=raw)
        self._tapping = True
        self._tasks.append(asyncio.create_task(self._frames()))
        return self.tapped

    def _on_frame(self, rec) -> None:
        if len(self.frames) >= FRAME_QUEUE:
            self.frames_dropped += 1
            self.frames_dropped_total += 1
        else:
            self.frames.append(rec)

    def _on_batch(self, batch) -> None:
        """A device's batch: raw records (bytes) are queued whole, within RAW_QUEUE bytes;
        a Python engine's list of FrameRecords frame by frame."""
        if type(batch) is not bytes:
            for rec in batch:
                self._on_frame(rec)
            return
        with self._raw_lock:
            if self.raw_bytes + len(batch) > RAW_QUEUE:
                n = count_raw(batch)
                self.frames_dropped += n
                self.frames_dropped_total += n
                return
            self.raw_bytes += len(batch)
        self.frames.append(batch)

    async def _frames(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self._send_frames()
            if self.writer.transport.get_write_buffer_size() > (1 << 20):
                await self.writer.drain()

    def _send_frames(self) -> None:
        if self.frames_dropped:
            n, self.frames_dropped = self.frames_dropped, 0
            self.send({"type": "frames.dropped", "count": n})
        while self.frames:
            r = self.frames.popleft()
            if type(r) is bytes:
                with self._raw_lock:
                    self.raw_bytes -= len(r)
                if not self.writer.is_closing():
                    self.writer.write(b'{"type":"frames.raw","size":%d}\n' % len(r))
                    self.writer.write(r)
                continue
            frame = {"dir": r.direction, "ts": r.timestamp_ns, "src": r.src, "sport": r.sport, "dst": r.dst, "dport": r.dport,
                     "payload": r.payload.hex(), "dropped": r.dropped}  # fmt: skip
            if getattr(r, "length", None) is not None:  # cut by write_snap: its length on the wire
                frame["length"] = r.length
            self.send({"type": "frame", "frame": frame})

    def cmd_unsubscribe(self, req: dict) -> dict:
        if self.sub is not None:
            self.sub.close()
            self.sub = None
        self._unsample()
        return {}

    def cmd_snapshot(self, req: dict) -> dict:
        self._events_before_snapshot()
        return {"snapshot": self.stack.snapshot()}

    def cmd_interval(self, req: dict) -> dict:
        seconds = req.get("seconds")
        if type(seconds) not in (int, float) or not math.isfinite(seconds) or not 0 <= seconds <= 86400:
            raise CommandError("seconds must be a number >= 0" + ("" if type(seconds) in (int, float) and seconds < 0 else " (at most 86400)"))
        self.interval = float(seconds)
        return {"seconds": self.interval}

    def cmd_fail_link(self, req: dict) -> dict:
        lgr, link = req["lgr"], req["link"]
        if type(lgr) is not str or type(link) is not int:
            raise CommandError("fail_link needs 'lgr' (string) and 'link' (integer)")
        if not (0 <= link <= 255 and self.stack.fail_link(lgr, link)):
            raise CommandError(self._no_link(lgr, link))
        return {}

    def _no_link(self, lgr: str, link: int) -> str:
        """Why fail_link found nothing to fail: no such link group, or no such link in it."""
        groups = {g.get("id"): g for g in self.stack.snapshot().get("lgrs", ()) if isinstance(g, dict)}
        if lgr not in groups:
            return f"no link group {lgr[:40]!r}; link groups: {', '.join(map(str, groups)) or 'none'}"
        ids = [str(x.get("id")) for x in groups[lgr].get("links", ()) if isinstance(x, dict)]
        what = f"link {link}" if 0 <= link <= 255 else f"link {link} (link ids are 0 to 255)"
        return f"no {what} in link group {lgr!r}; its links: {', '.join(ids) or 'none'}"

    def cmd_port(self, req: dict) -> dict:
        device, up = req["device"], req["up"]
        if type(device) is not str or device not in self.stack.devices():
            raise CommandError(f"no device {device!r}; devices: {', '.join(self.stack.devices())}")
        if not isinstance(up, bool):
            raise CommandError("'up' must be true or false")
        self.stack.set_port(device, up)
        return {}

    def cmd_faults(self, req: dict) -> dict:
        device = req["device"]
        if type(device) is not str or device not in self.stack.devices():
            raise CommandError(f"no device {str(device)[:40]!r}")
        faults = {k: v for k, v in req.items() if k not in ("cmd", "id", "device")}
        unknown = sorted(k[:40] for k in faults if k not in FAULTS)
        if unknown:
            raise CommandError(f"unknown faults {unknown}: the faults are {', '.join(FAULTS)}")
        for k, v in faults.items():
            lo, hi, what = FAULTS[k]
            _number(f"fault {k}", v, lo, hi, what, whole=type(lo) is int)
        self.stack.set_faults(device, **faults)
        return {}

    def cmd_decline(self, req: dict) -> dict:
        reason = parse_reason(req.get("reason"))
        self.stack.force_decline(reason)
        return {"reason": reason}

    def cmd_ping(self, req: dict) -> dict:
        return {"pong": self.stack.now()}

    def cmd_help(self, req: dict) -> dict:
        return {"commands": COMMANDS}


class ControlClient:
    """Talk to a stack's control socket: ``async for msg in client.messages()``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._ids = 0

    @classmethod
    async def connect(cls, path: str) -> "ControlClient":
        reader, writer = await asyncio.open_unix_connection(path, limit=64 << 20)
        return cls(reader, writer)

    async def send(self, cmd: str, **args) -> int:
        self._ids += 1
        self.writer.write(json.dumps({"cmd": cmd, "id": self._ids, **args}).encode() + b"\n")
        await self.writer.drain()
        return self._ids

    async def messages(self, skipped: Skipped | None = None) -> AsyncIterator[dict]:
        """The stack's lines as objects. A line that is not a bounded JSON object is counted
        and named in ``skipped`` and left out (without ``skipped``: ValueError). A
        ``frames.raw`` line comes with its batch in ``data`` (bytes); a bad size, or a
        batch cut short, ends the stream (it cannot be read on from there)."""
        n = 0
        while True:
            line = await self.reader.readline()
            if not line:
                return
            n += 1
            lost = False  # a raw batch that cannot be read: so is everything after it
            try:
                msg = loads(line)
                if type(msg) is not dict:
                    raise BadRecord("a control socket line must be a JSON object")
                if msg.get("type") == "frames.raw":
                    lost = True
                    size = msg.get("size")
                    if type(size) is not int or not 0 < size <= RAW_QUEUE:
                        raise BadRecord(f"frames.raw: a bad size {str(size)[:40]}: the rest of the stream cannot be read")
                    try:
                        msg["data"] = await self.reader.readexactly(size)
                    except asyncio.IncompleteReadError as e:
                        raise BadRecord(f"frames.raw: the stream ended {size - len(e.partial)} bytes short of its batch") from None
                    lost = False
            except BadRecord as e:
                if skipped is None:
                    raise
                skipped.add(f"line {n}", e)
                if lost:
                    return
                continue
            yield msg

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass
