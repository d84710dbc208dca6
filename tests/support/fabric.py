"""An in-memory world for sans-I/O SMC hosts: TCP, RDMA and timers on a virtual clock.

Each :class:`FabricIO` is the HostIO of one host. TCP bytes and RDMA operations are
delivered after a fixed latency, in post order per QP (RC ordering), from one event
queue, so a run is fully deterministic. RDMA WRITEs are checked like a NIC checks them
(rkey, range) and land byte for byte in the peer's registered memory.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from stack.core.config import SmcConfig
from stack.core.host import SmcHost
from stack.core.ports import DeviceInfo, MrInfo, QpInfo
from stack.events import EventBus

LATENCY = 0.000_050  # 50 us each way


class Fabric:
    def __init__(self) -> None:
        self.now = 0.0
        self._q: list = []
        self._seq = itertools.count()
        self.hosts: dict[str, "FabricIO"] = {}
        self.qps: dict[tuple[str, int], "FakeQP"] = {}  # (host, qp handle)
        self.by_qpn: dict[tuple[bytes, int], "FakeQP"] = {}  # (gid, qpn)
        self.tcp_pairs: dict[tuple[str, int], tuple[str, int]] = {}

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
    state: str = "INIT"
    peer: tuple[bytes, int] | None = None  # (gid, qpn)
    delivered_until: float = 0.0


@dataclass
class App:
    """What the application side saw, per connection."""

    established: bool = False
    fallback: bool = False
    leftover: bytes = b""
    failed: str | None = None
    closed: bool = False
    close_error: str | None = None
    readable: int = 0
    writable: int = 0
    received: bytearray = field(default_factory=bytearray)
    tcp_in: bytearray = field(default_factory=bytearray)


class FabricIO:
    def __init__(self, fabric: Fabric, name: str, ip: str, config: SmcConfig, seed: int, devices: bool = True) -> None:
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
        dev = [DeviceInfo("fab0", self.gid, self.mac, 3)] if devices else []
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
    def create_qp(self, device: str) -> QpInfo:
        handle = next(self._ids)
        qp = FakeQP(self.name, handle, 0x100 + handle, self.rng.getrandbits(24), self.gid)
        self.fabric.qps[(self.name, handle)] = qp
        self.fabric.by_qpn[(self.gid, qp.qpn)] = qp
        return QpInfo(handle, qp.qpn, qp.psn, device, self.gid, self.mac, 3)

    def qp_to_rtr(self, qp: int, peer_qpn: int, peer_psn: int, peer_gid: bytes, mtu: int) -> None:
        q = self.fabric.qps[(self.name, qp)]
        q.peer, q.state = (peer_gid, peer_qpn), "RTR"

    def qp_to_rts(self, qp: int) -> None:
        self.fabric.qps[(self.name, qp)].state = "RTS"

    def destroy_qp(self, qp: int) -> None:
        q = self.fabric.qps.pop((self.name, qp), None)
        if q is not None:
            q.state = "DESTROYED"

    def reg_mr(self, device: str, size: int, remote_write: bool) -> MrInfo:
        handle = next(self._ids)
        mr = MrInfo(handle, 0x7F00_0000_0000 + handle * (1 << 24), self.rng.getrandbits(32), size, memoryview(bytearray(size)))
        self.mrs[handle] = mr
        if remote_write:
            self.rkeys[mr.rkey] = mr
        return mr

    def dereg_mr(self, mr: int) -> None:
        m = self.mrs.pop(mr, None)
        if m is not None:
            self.rkeys.pop(m.rkey, None)

    def _peer(self, qp: int) -> tuple["FabricIO", FakeQP, FakeQP]:
        q = self.fabric.qps[(self.name, qp)]
        peer = self.fabric.by_qpn[q.peer]
        return self.fabric.hosts[peer.host], q, peer

    def _slot(self, q: FakeQP) -> float:
        """RC order: every operation of a QP arrives after the one before it."""
        q.delivered_until = max(q.delivered_until, self.fabric.now + LATENCY) + 1e-9
        return q.delivered_until

    def post_send(self, qp: int, wr_id: int, payload: bytes) -> bool:
        q = self.fabric.qps.get((self.name, qp))
        if q is None or q.state != "RTS" or self.dead:
            return False
        peer_io, q, peer = self._peer(qp)
        when = self._slot(q)
        self.fabric.at(when, peer_io._recv, peer.handle, bytes(payload))
        self.fabric.at(when + LATENCY, self._send_done, qp, wr_id)
        return True

    def _recv(self, qp: int, payload: bytes) -> None:
        if not self.dead and (self.name, qp) in self.fabric.qps:
            self.host.on_recv(qp, payload, self.fabric.now)

    def _send_done(self, qp: int, wr_id: int) -> None:
        if not self.dead and (self.name, qp) in self.fabric.qps:
            self.host.on_send_done(qp, wr_id, True, self.fabric.now)

    def post_write(self, qp: int, wr_id: int, sges, remote_addr: int, rkey: int) -> bool:
        q = self.fabric.qps.get((self.name, qp))
        if q is None or q.state != "RTS":
            return False
        data = b"".join(bytes(self.mrs[h].buf[off : off + n]) for h, off, n in sges)
        peer_io, q, _ = self._peer(qp)
        self.fabric.at(self._slot(q), peer_io._write, rkey, remote_addr, data)
        return True

    def _write(self, rkey: int, addr: int, data: bytes) -> None:
        mr = self.rkeys.get(rkey)
        assert mr is not None, f"RDMA WRITE with unknown rkey 0x{rkey:x}"
        off = addr - mr.addr
        assert 0 <= off and off + len(data) <= mr.size, f"RDMA WRITE outside the RMB: offset {off} length {len(data)} size {mr.size}"
        mr.buf[off : off + len(data)] = data

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


def pair(client_cfg: SmcConfig | None = None, server_cfg: SmcConfig | None = None, seed: int = 1, **kw) -> tuple[Fabric, FabricIO, FabricIO]:
    fabric = Fabric()
    a = FabricIO(fabric, "client", "127.0.0.1", client_cfg or SmcConfig(host="client"), seed, kw.get("client_devices", True))
    b = FabricIO(fabric, "server", "127.0.0.2", server_cfg or SmcConfig(host="server"), seed + 1, kw.get("server_devices", True))
    return fabric, a, b


def open_conn(fabric: Fabric, a: FabricIO, b: FabricIO, cid: int, server_smc: bool = True):
    """Start a TCP connection a -> b with id ``cid`` on both sides and run the handshake."""
    fabric.connect_tcp(a, cid, b, cid)
    b.host.server_start(cid, (b.ip, 5000), (a.ip, 40000 + cid), fabric.now, smc=server_smc)
    a.host.client_start(cid, (a.ip, 40000 + cid), (b.ip, 5000), fabric.now)
    fabric.run(stop=lambda: (a._app(cid).established or a._app(cid).fallback or a._app(cid).failed)
               and (b._app(cid).established or b._app(cid).fallback or b._app(cid).failed))  # fmt: skip
