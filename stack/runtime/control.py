"""The control socket: a unix socket (mode 0600) where a running stack streams its events
and periodic snapshots as JSON lines, and takes commands. smctop attaches here.

Every line is one JSON object with a ``type``:

* ``hello``: sent on connect: host name, protocol version, the commands;
* ``event``: ``{"type": "event", "event": <canonical event record>}`` once subscribed;
* ``snapshot``: ``{"type": "snapshot", "snapshot": {...}}`` every interval (default 1 s);
* ``frame``: a soft device's RoCE frame (``dir``, wall-clock ``ts`` in ns, addresses and
  ports, ``payload`` hex, ``dropped``) once subscribed with ``frames``; ``frames.dropped``
  counts what a slow client missed;
* ``reply`` / ``error``: the answer to a command, echoing its ``id``.

Commands (``{"cmd": ..., "id": ...}``): subscribe [kinds], unsubscribe, snapshot,
interval {seconds}, fail_link {lgr, link}, port {device, up}, faults {device, loss,
rx_loss, drop_next, delay}, decline {reason: hex, int, name or null}, ping, help. A bad
line gets an ``error`` line naming what was wrong; the connection stays up. A client too
slow for the event stream loses events, which it is told about (``events.dropped``).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator

from stack.events import KINDS, to_dict
from stack.wire import codes

if TYPE_CHECKING:
    from .stack import Stack

PROTOCOL_VERSION = 1
MAX_LINE = 64 << 10
FRAME_QUEUE = 100_000  # frames a session holds for a slow client before it drops and counts them
COMMANDS = {
    "subscribe": "stream events (optional 'kinds': list of event kinds; 'frames': true adds the soft devices' RoCE frames)",
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
    if not 0 < code <= 0xFFFFFFFF:
        raise CommandError(f"reason 0x{code:x} is not a 32-bit decline code")
    return code


class ControlServer:
    def __init__(self, stack: "Stack", path: str, interval: float = 1.0) -> None:
        self.stack = stack
        self.path = path
        self.interval = interval
        self.server: asyncio.AbstractServer | None = None
        self.clients: set[asyncio.Task] = set()
        self.subscribed = asyncio.Event()

    async def wait_subscribed(self, timeout: float) -> bool:
        """Wait until a client subscribes (a recorder attaching), at most ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):  # (not wait_for: it can swallow a cancellation on 3.11)
                await self.subscribed.wait()
            return True
        except asyncio.TimeoutError:
            return False

    async def start(self) -> None:
        if os.path.exists(self.path):
            if not stat.S_ISSOCK(os.stat(self.path).st_mode):
                raise FileExistsError(f"control socket path {self.path} exists and is not a socket")
            os.unlink(self.path)
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self.clients):
                task.cancel()
            await asyncio.gather(*self.clients, return_exceptions=True)
            await self.server.wait_closed()
        if os.path.exists(self.path):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.clients.add(task)
        session = _Session(self, writer)
        try:
            session.send({"type": "hello", "host": self.stack.host.name, "protocol": PROTOCOL_VERSION, "commands": COMMANDS, "kinds": KINDS})
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


class _Session:
    def __init__(self, server: ControlServer, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.stack = server.stack
        self.writer = writer
        self.sub = None
        self.interval = server.interval
        self._tasks: list[asyncio.Task] = []
        self.frames: deque | None = None
        self.frames_dropped = 0
        self.tapped: list[str] = []

    def send(self, obj: dict) -> None:
        if not self.writer.is_closing():
            self.writer.write(json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n")

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._snapshots()))

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.sub is not None:
            self.sub.close()
        if self.frames is not None:
            self.stack.remove_frame_tap(self._on_frame)

    async def _snapshots(self) -> None:
        while True:
            if self.interval > 0:
                await asyncio.sleep(self.interval)
                self.send({"type": "snapshot", "snapshot": self.stack.snapshot()})
                await self.writer.drain()
            else:
                await asyncio.sleep(0.2)

    async def _events(self) -> None:
        while True:
            event = await self.sub.get()
            self.send({"type": "event", "event": to_dict(event)})
            if self.writer.transport.get_write_buffer_size() > (1 << 20):
                await self.writer.drain()  # the subscription queue absorbs the wait, and counts drops

    def handle(self, line: bytes) -> None:
        req_id = None
        try:
            try:
                req = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CommandError(f"not JSON: {e}") from None
            if not isinstance(req, dict):
                raise CommandError("a command is a JSON object")
            req_id = req.get("id")
            cmd = req.get("cmd")
            if cmd not in COMMANDS:
                raise CommandError(f"unknown command {cmd!r}; commands: {', '.join(COMMANDS)}")
            result = getattr(self, "cmd_" + cmd)(req)
            self.send({"type": "reply", "id": req_id, "cmd": cmd, "ok": True, **(result or {})})
        except (CommandError, ValueError, KeyError, TypeError) as e:
            self.send({"type": "error", "id": req_id, "error": str(e) if not isinstance(e, KeyError) else f"missing or unknown {e}"})

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
        if not isinstance(frames, bool):
            raise CommandError("frames must be true or false")
        write_snap = req.get("write_snap", 0)
        if type(write_snap) is not int or not 0 <= write_snap <= 65535:
            raise CommandError("write_snap must be a whole number of bytes from 0 (whole frames) to 65535")
        self.sub = self.stack.bus.subscribe(maxsize=int(req.get("queue", 50_000)), kinds=kinds)
        self._tasks.append(asyncio.create_task(self._events()))
        tapped = self.start_frames(write_snap) if frames else []
        self.server.subscribed.set()
        return {"kinds": kinds or sorted(KINDS), "frames": tapped}

    def start_frames(self, write_snap: int = 0) -> list[str]:
        """Stream the soft devices' RoCE frames too (RDMA WRITE frames cut to ``write_snap``
        bytes, 0: whole). The tap runs on the device threads and only appends to a bounded
        queue; what does not fit is counted and reported."""
        if self.frames is not None:
            return self.tapped
        self.frames = deque()
        self.tapped = self.stack.add_frame_tap(self._on_frame, write_snap=write_snap)
        self._tasks.append(asyncio.create_task(self._frames()))
        return self.tapped

    def _on_frame(self, rec) -> None:
        if len(self.frames) >= FRAME_QUEUE:
            self.frames_dropped += 1
        else:
            self.frames.append(rec)

    async def _frames(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            if self.frames_dropped:
                n, self.frames_dropped = self.frames_dropped, 0
                self.send({"type": "frames.dropped", "count": n})
            while self.frames:
                r = self.frames.popleft()
                frame = {"dir": r.direction, "ts": r.timestamp_ns, "src": r.src, "sport": r.sport, "dst": r.dst, "dport": r.dport,
                         "payload": r.payload.hex(), "dropped": r.dropped}  # fmt: skip
                if getattr(r, "length", None) is not None:  # cut by write_snap: its length on the wire
                    frame["length"] = r.length
                self.send({"type": "frame", "frame": frame})
            if self.writer.transport.get_write_buffer_size() > (1 << 20):
                await self.writer.drain()

    def cmd_unsubscribe(self, req: dict) -> dict:
        if self.sub is not None:
            self.sub.close()
            self.sub = None
        return {}

    def cmd_snapshot(self, req: dict) -> dict:
        return {"snapshot": self.stack.snapshot()}

    def cmd_interval(self, req: dict) -> dict:
        seconds = req.get("seconds")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
            raise CommandError("seconds must be a number >= 0")
        self.interval = float(seconds)
        return {"seconds": self.interval}

    def cmd_fail_link(self, req: dict) -> dict:
        lgr, link = req["lgr"], req["link"]
        if not isinstance(lgr, str) or not isinstance(link, int):
            raise CommandError("fail_link needs 'lgr' (string) and 'link' (integer)")
        if not self.stack.fail_link(lgr, link):
            raise CommandError(f"no link {link} in link group {lgr}")
        return {}

    def cmd_port(self, req: dict) -> dict:
        device, up = req["device"], req["up"]
        if device not in self.stack.rdma.devs:
            raise CommandError(f"no device {device!r}; devices: {', '.join(self.stack.rdma.devs)}")
        if not isinstance(up, bool):
            raise CommandError("'up' must be true or false")
        self.stack.set_port(device, up)
        return {}

    def cmd_faults(self, req: dict) -> dict:
        device = req["device"]
        if device not in self.stack.rdma.devs:
            raise CommandError(f"no device {device!r}")
        faults = {k: v for k, v in req.items() if k not in ("cmd", "id", "device")}
        for k, v in faults.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise CommandError(f"fault {k} must be a number >= 0")
            if k in ("loss", "rx_loss") and v > 1:
                raise CommandError(f"{k} is a probability between 0 and 1")
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

    async def messages(self) -> AsyncIterator[dict]:
        while True:
            line = await self.reader.readline()
            if not line:
                return
            yield json.loads(line)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass
