"""An in-memory world for sans-I/O SMC hosts: TCP, RDMA and timers on a virtual clock.

Each :class:`FabricIO` is the HostIO of one host, with one or more RDMA devices. TCP
bytes and RDMA operations are delivered after a fixed latency, in post order per QP (RC
ordering), from one event queue, so a run is fully deterministic. RDMA WRITEs are
checked like a NIC checks them (rkey, range) and land byte for byte in the peer's
registered memory.

Ports can go down and up. As on Soft-RoCE: a QP on a port that goes down is flushed at
once (every outstanding WR completes with WR_FLUSH_ERR); a QP whose peer's port is down
gets no ACKs and, after the retry budget of the kernel's QP attributes (timeout 15,
retry_cnt 7), completes its oldest WR with RETRY_EXC_ERR and flushes the rest. An
operation that reached the peer just before its port died is delivered but never
acknowledged, as on a real wire.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass, field

from stack.core.config import SmcConfig
from stack.core.host import SmcHost
from stack.core.ports import DeviceInfo, MrInfo, QpInfo
from stack.events import EventBus
from stack.wire.codes import SmcState

LATENCY = 0.000_050  # 50 us each way
RETRY_TIMEOUT = 8 * 4.096e-6 * 2**15  # (retry_cnt 7 + 1) * local ACK timeout 15: about 1.07 s


class Fabric:
    def __init__(self) -> None:
        self.now = 0.0
        self._q: list = []
        self._seq = itertools.count()
        self.hosts: dict[str, "FabricIO"] = {}
        self.qps: dict[tuple[str, int], "FakeQP"] = {}  # (host, qp handle)
        self.by_qpn: dict[tuple[bytes, int], "FakeQP"] = {}  # (gid, qpn)
        self.tcp_pairs: dict[tuple[str, int], tuple[str, int]] = {}
        self.access_errors: list[str] = []  # RDMA WRITEs a NIC would have refused: always a stack bug

    def at(self, when: float, fn, *args) -> None:
        heapq.heappush(self._q, (when, next(self._seq), fn, args))

    def run(self, until: float | None = None, stop=None, max_steps: int = 10_000_000) -> None:
        for _ in range(max_steps):
            if stop is not None and stop():
                return
            if not self._q or (until is not None and self._q[0][0] > until):
                if until is not None:
                    self.now = max(self.now, until)
                return
            when, _, fn, args = heapq.heappop(self._q)
            self.now = max(self.now, when)
            fn(*args)
        raise RuntimeError("fabric: too many steps (a livelock?)")

    def connect_tcp(self, client: "FabricIO", cid: int, server: "FabricIO", sid: int) -> None:
        self.tcp_pairs[(client.name, cid)] = (server.name, sid)
        self.tcp_pairs[(server.name, sid)] = (client.name, cid)


@dataclass
class FakeQP:
    host: str
    handle: int
    qpn: int
    psn: int
    gid: bytes
    device: str = "fab0"
    state: str = "INIT"
    peer: tuple[bytes, int] | None = None  # (gid, qpn)
    delivered_until: float = 0.0
    outstanding: deque = field(default_factory=deque)  # [wr_id, signaled, acked] in post order
    stalled: bool = False  # the peer stopped answering: nothing after this is delivered (go-back-N)


@dataclass
class App:
    """What the application side saw, per connection."""

    established: bool = False
    fallback: bool = False
    leftover: bytes = b""
    failed: str | None = None
    closed: bool = False
    close_error: str | None = None
    # how the TCP connection ended before the connection closed: "shutdown" (a FIN with our
    # final or done-writing flag) or "reset" (an RST, the connection killed), with the close
    # flags sent by then (the kernel shuts down after smc_close_final or smc_close_wr)
    tcp_end: str | None = None
    tcp_end_after: frozenset = frozenset()
    readable: int = 0
    writable: int = 0
    received: bytearray = field(default_factory=bytearray)
    tcp_in: bytearray = field(default_factory=bytearray)


class FabricIO:
    def __init__(self, fabric: Fabric, name: str, ip: str, config: SmcConfig, seed: int, devices: int = 1) -> None:
        self.fabric = fabric
        self.name = name
        self.ip = ip
        self.gid = bytes(10) + b"\xff\xff" + bytes(int(x) for x in ip.split("."))
        self.mac = b"\x02\x00" + self.gid[12:]
        self.apps: dict[int, App] = {}
        self.timers: dict[tuple, int] = {}
        self.mrs: dict[int, MrInfo] = {}
        self.rkeys: dict[int, MrInfo] = {}
        self._ids = itertools.count(1)
        self.rng = random.Random(seed)
        self.bus = EventBus()
        self.events: list = []
        self.bus.listen(self.events.append)
        self.dead = False
        dev = []
        for i in range(int(devices)):  # device i sits on ip + i in the third octet
            octets = [int(x) for x in ip.split(".")]
            gid = bytes(10) + b"\xff\xff" + bytes(octets[:2] + [(octets[2] + i) % 256, octets[3]])
            dev.append(DeviceInfo(f"fab{i}", gid, b"\x02\x00" + gid[12:], 3))
        self.dev_gid = {d.name: d.gid for d in dev}
        self.dev_up = {d.name: True for d in dev}
        self.host = SmcHost(config, self, dev, self.bus, random.Random(seed))
        fabric.hosts[name] = self

    # -------------------------------------------------------------- TCP
    def tcp_send(self, conn: int, data: bytes) -> None:
        peer = self.fabric.tcp_pairs[(self.name, conn)]
        self.fabric.at(self.fabric.now + LATENCY, self.fabric.hosts[peer[0]]._tcp_in, peer[1], bytes(data))

    def _tcp_in(self, conn: int, data: bytes) -> None:
        if self.dead:
            return
        app = self.apps.setdefault(conn, App())
        if app.fallback:
            app.tcp_in += data
        else:
            self.host.tcp_data(conn, data, self.fabric.now)

    # -------------------------------------------------------------- timers
    def arm_timer(self, key: tuple, when: float) -> None:
        gen = next(self._ids)
        self.timers[key] = gen
        self.fabric.at(when, self._fire, key, gen)

    def cancel_timer(self, key: tuple) -> None:
        self.timers.pop(key, None)

    def _fire(self, key: tuple, gen: int) -> None:
        if self.timers.get(key) == gen and not self.dead:
            del self.timers[key]
            self.host.on_timer(key, self.fabric.now)

    # -------------------------------------------------------------- RDMA
    def create_qp(self, device: str, gid: bytes | None = None) -> QpInfo:
        handle = next(self._ids)
        gid = self.dev_gid[device] if gid is None else gid  # another GID: a VLAN's (DeviceInfo.vlan_gids)
        qp = FakeQP(self.name, handle, 0x100 + handle, self.rng.getrandbits(24), gid, device)
        self.fabric.qps[(self.name, handle)] = qp
        self.fabric.by_qpn[(gid, qp.qpn)] = qp
        return QpInfo(handle, qp.qpn, qp.psn, device, gid, b"\x02\x00" + gid[12:], 3)

    def qp_to_rtr(self, qp: int, peer_qpn: int, peer_psn: int, peer_gid: bytes, mtu: int) -> None:
        q = self.fabric.qps[(self.name, qp)]
        q.peer, q.state = (peer_gid, peer_qpn), "RTR"

    def qp_to_rts(self, qp: int) -> None:
        q = self.fabric.qps[(self.name, qp)]
        if q.state == "RTR":
            q.state = "RTS"

    def destroy_qp(self, qp: int) -> None:
        q = self.fabric.qps.pop((self.name, qp), None)
        if q is not None:
            q.state = "DESTROYED"
            q.outstanding.clear()

    def reg_mr(self, device: str, size: int, remote_write: bool, buf: memoryview | None = None) -> MrInfo:
        handle = next(self._ids)
        buf = memoryview(bytearray(size)) if buf is None else buf
        mr = MrInfo(handle, 0x7F00_0000_0000 + handle * (1 << 24), self.rng.getrandbits(32), size, buf)
        self.mrs[handle] = mr
        if remote_write:
            self.rkeys[mr.rkey] = mr
        return mr

    def dereg_mr(self, mr: int) -> None:
        m = self.mrs.pop(mr, None)
        if m is not None:
            self.rkeys.pop(m.rkey, None)

    # ports
    def port(self, device: str, up: bool, notify_after: float | None = 0.0) -> None:
        """Take a device's port down or up; the host hears of it ``notify_after`` later.
        ``notify_after=None`` is a silent path failure (a cable cut beyond the port): no
        event, no flush, the QPs just stop hearing from their peers."""
        self.dev_up[device] = up
        if notify_after is None:
            return
        if not up:
            for q in list(self.fabric.qps.values()):
                if q.host == self.name and q.device == device and q.state in ("RTR", "RTS"):
                    self._to_error(q, None)
        self.fabric.at(self.fabric.now + notify_after, self._port_event, device, up)

    def _port_event(self, device: str, up: bool) -> None:
        if not self.dead and self.dev_up[device] == up:
            self.host.port_event(device, up, self.fabric.now)

    # work requests
    def _slot(self, q: FakeQP) -> float:
        """RC order: every operation of a QP arrives after the one before it."""
        q.delivered_until = max(q.delivered_until, self.fabric.now + LATENCY) + 1e-9
        return q.delivered_until

    def _post(self, qp: int, wr_id: int, signaled: bool, deliver) -> bool:
        q = self.fabric.qps.get((self.name, qp))
        if q is None or q.state != "RTS" or self.dead:
            return False
        entry = [wr_id, signaled, False]
        q.outstanding.append(entry)
        self.fabric.at(self._slot(q), self._arrive, q, entry, deliver)
        return True

    def post_send(self, qp: int, wr_id: int, payload: bytes) -> bool:
        payload = bytes(payload)
        return self._post(qp, wr_id, True, lambda io, peer: io._recv(peer.handle, payload))

    def post_write(self, qp: int, wr_id: int, sges, remote_addr: int, rkey: int) -> bool:
        data = b"".join(bytes(self.mrs[h].buf[off : off + n]) for h, off, n in sges)
        return self._post(qp, wr_id, False, lambda io, peer: io._write(rkey, remote_addr, data))

    def _reachable(self, q: FakeQP) -> tuple["FabricIO", FakeQP] | None:
        peer = self.fabric.by_qpn.get(q.peer)
        if not self.dev_up[q.device] or peer is None or peer.state not in ("RTR", "RTS") or (peer.host, peer.handle) not in self.fabric.qps:
            return None
        io = self.fabric.hosts[peer.host]
        return None if io.dead or not io.dev_up[peer.device] else (io, peer)

    def _arrive(self, q: FakeQP, entry: list, deliver) -> None:
        if q.state != "RTS" or q.stalled:
            return  # flushed, or waiting for the retry budget to run out
        target = self._reachable(q)
        if target is None:
            self._stall(q)
            return
        if deliver(*target) is False:  # the responder NAKed it: remote access error
            self._to_error(q, "REM_ACCESS_ERR")
            return
        self.fabric.at(self.fabric.now + LATENCY, self._ack, q, entry)

    def _ack(self, q: FakeQP, entry: list) -> None:
        if q.state != "RTS":
            return
        if self._reachable(q) is None:  # delivered, but the ACK died with the port
            self._stall(q)
            return
        entry[2] = True
        while q.outstanding and q.outstanding[0][2]:
            wr_id, signaled, _ = q.outstanding.popleft()
            if signaled:
                self._complete(q, wr_id, True, "SUCCESS")

    def _stall(self, q: FakeQP) -> None:
        if not q.stalled:
            q.stalled = True
            self.fabric.at(self.fabric.now + RETRY_TIMEOUT, self._to_error, q, "RETRY_EXC_ERR")

    def _to_error(self, q: FakeQP, status: str | None) -> None:
        """QP to ERR: the oldest WR gets ``status`` (None: flushed too), the rest WR_FLUSH_ERR."""
        if q.state not in ("RTR", "RTS"):
            return
        q.state = "ERR"
        pending, q.outstanding = list(q.outstanding), deque()
        for i, (wr_id, _, _) in enumerate(pending):
            self._complete(q, wr_id, False, status if i == 0 and status else "WR_FLUSH_ERR")

    def _complete(self, q: FakeQP, wr_id: int, ok: bool, status: str) -> None:
        if not self.dead and (self.name, q.handle) in self.fabric.qps:
            self.host.on_send_done(q.handle, wr_id, ok, self.fabric.now, status)

    def _recv(self, qp: int, payload: bytes) -> None:
        self.host.on_recv(qp, payload, self.fabric.now)

    def _write(self, rkey: int, addr: int, data: bytes) -> bool:
        mr = self.rkeys.get(rkey)
        off = addr - mr.addr if mr else -1
        if mr is None or off < 0 or off + len(data) > mr.size:
            self.fabric.access_errors.append(f"{self.name}: RDMA WRITE rkey 0x{rkey:x} offset {off} length {len(data)}")
            return False
        mr.buf[off : off + len(data)] = data
        return True

    # -------------------------------------------------------------- application
    def _app(self, conn: int) -> App:
        return self.apps.setdefault(conn, App())

    def conn_established(self, conn: int) -> None:
        self._app(conn).established = True

    def conn_fallback(self, conn: int, leftover: bytes) -> None:
        app = self._app(conn)
        app.fallback = True
        app.tcp_in += leftover

    def conn_failed(self, conn: int, error: str) -> None:
        self._app(conn).failed = error

    def conn_readable(self, conn: int) -> None:
        self._app(conn).readable += 1

    def conn_writable(self, conn: int) -> None:
        self._app(conn).writable += 1

    def conn_closed(self, conn: int, error: str | None) -> None:
        app = self._app(conn)
        app.closed, app.close_error = True, error

    def _tcp_end(self, conn: int, how: str) -> None:
        app = self._app(conn)
        c = self.host.conns.get(conn)
        if app.tcp_end is None:
            app.tcp_end = how
            app.tcp_end_after = frozenset(f for f, sent in c.sent.items() if sent) if c is not None else frozenset()

    def conn_tcp_shutdown(self, conn: int) -> None:
        self._tcp_end(conn, "shutdown")

    def conn_tcp_reset(self, conn: int) -> None:
        self._tcp_end(conn, "reset")


def pair(client_cfg: SmcConfig | None = None, server_cfg: SmcConfig | None = None, seed: int = 1, **kw) -> tuple[Fabric, FabricIO, FabricIO]:
    fabric = Fabric()
    a = FabricIO(fabric, "client", "127.0.0.1", client_cfg or SmcConfig(host="client"), seed, int(kw.get("client_devices", 1)))
    b = FabricIO(fabric, "server", "127.0.0.2", server_cfg or SmcConfig(host="server"), seed + 1, int(kw.get("server_devices", 1)))
    return fabric, a, b


def open_conn(fabric: Fabric, a: FabricIO, b: FabricIO, cid: int, server_smc: bool = True):
    """Start a TCP connection a -> b with id ``cid`` on both sides and run the handshake."""
    fabric.connect_tcp(a, cid, b, cid)
    b.host.server_start(cid, (b.ip, 5000), (a.ip, 40000 + cid), fabric.now, smc=server_smc)
    a.host.client_start(cid, (a.ip, 40000 + cid), (b.ip, 5000), fabric.now)
    fabric.run(stop=lambda: (a._app(cid).established or a._app(cid).fallback or a._app(cid).failed)
               and (b._app(cid).established or b._app(cid).fallback or b._app(cid).failed))  # fmt: skip


class Bulk:
    """Bulk data both ways on connections between ``a`` (client) and ``b`` (server), on the
    fabric's clock: each side writes whenever its send buffer has room, reads whatever
    waits, shuts down writing when done and closes once the peer is done too. A
    connection that fell back to TCP carries its data over the fabric's TCP instead.
    ``check()`` compares every byte received with every byte sent."""

    TICK = 0.000_05

    def __init__(self, fabric: Fabric, a: FabricIO, b: FabricIO, nbytes: int, seed: int) -> None:
        self.f, self.a, self.b, self.nbytes = fabric, a, b, nbytes
        self.rng = random.Random(seed)
        self.data: dict[tuple[str, int], bytes] = {}
        self.sent: dict[tuple[str, int], int] = {}
        self.got: dict[tuple[str, int], bytearray] = {}
        self.done_writing: set[tuple[str, int]] = set()
        self.closed: set[tuple[str, int]] = set()
        self.cids: list[int] = []
        self.smc_at_start: dict[int, bool] = {}

    def start(self, cid: int, at: float) -> None:
        """Open connection ``cid`` at virtual time ``at``."""
        self.cids.append(cid)
        for io in (self.a, self.b):
            self.data[(io.name, cid)] = self.rng.randbytes(self.nbytes)
            self.sent[(io.name, cid)], self.got[(io.name, cid)] = 0, bytearray()

        def go() -> None:
            a, b, f = self.a, self.b, self.f
            f.connect_tcp(a, cid, b, cid)
            b.host.server_start(cid, (b.ip, 5000), (a.ip, 40000 + cid), f.now)
            a.host.client_start(cid, (a.ip, 40000 + cid), (b.ip, 5000), f.now)
            self._tick(cid)

        self.f.at(at, go)

    def _tick(self, cid: int) -> None:
        busy = False
        for io, peer in ((self.a, self.b), (self.b, self.a)):
            busy |= self._step(io, peer, cid)
        if busy:
            self.f.at(self.f.now + self.TICK, self._tick, cid)

    def _step(self, io: FabricIO, peer: FabricIO, cid: int) -> bool:
        key, now = (io.name, cid), self.f.now
        app, conn = io._app(cid), io.host.conns.get(cid)
        if app.failed or key in self.closed:
            return False
        if not (app.established or app.fallback):
            return True
        data, got = self.data[key], self.got[key]
        if app.fallback:  # TCP: the bytes go through the peer's tcp_in
            if self.sent[key] < len(data):
                io.tcp_send(cid, data[self.sent[key] :])
                self.sent[key] = len(data)
            got[:] = app.tcp_in
            done = len(got) == len(self.data[(peer.name, cid)])
            if done:
                self.closed.add(key)
            return not done
        if conn is None:  # closed (or aborted) under us
            self.closed.add(key)
            return False
        if self.sent[key] < len(data) and conn.state in (SmcState.ACTIVE, SmcState.APPCLOSEWAIT1):
            self.sent[key] += io.host.app_send(cid, memoryview(data)[self.sent[key] :], now)
        if self.sent[key] == len(data) and key not in self.done_writing and conn.state == SmcState.ACTIVE:
            self.done_writing.add(key)
            io.host.app_shutdown_wr(cid, now)
        got += io.host.app_recv(cid, 1 << 20, now)
        if conn.eof and self.sent[key] == len(data) and key not in self.closed:
            self.closed.add(key)
            io.host.app_close(cid, now)
            return False
        return True

    def finished(self) -> bool:
        return all((io.name, cid) in self.closed for cid in self.cids for io in (self.a, self.b)) and all(
            io._app(cid).closed or io._app(cid).fallback or io._app(cid).failed for cid in self.cids for io in (self.a, self.b)
        )

    def check(self) -> None:
        for cid in self.cids:
            for io, peer in ((self.a, self.b), (self.b, self.a)):
                want, got = self.data[(peer.name, cid)], bytes(self.got[(io.name, cid)])
                assert len(got) == len(want), f"conn {cid} at {io.name}: {len(got)} bytes received, {len(want)} sent"
                if got != want:
                    at = next(i for i in range(len(want)) if got[i] != want[i])
                    raise AssertionError(f"conn {cid} at {io.name}: bytes differ from offset {at}")
