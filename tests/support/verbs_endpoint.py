"""One side of an RDMA conversation for the verbs conformance suite.

An :class:`Endpoint` owns a device, a PD, one CQ, and QPs and MRs named by small
handles; every argument and result is plain data, so the same endpoint can live in this
process, in a child process, or in another VM behind :class:`RemoteEndpoint` (a
``multiprocessing.connection`` over a pipe or TCP).

Run a server for another machine:  python -m support.verbs_endpoint --listen 10.2.0.2:7000
"""

from __future__ import annotations

import argparse
import errno
import random
import shutil
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Client, Connection, Listener

from stack.verbs import open_provider
from stack.verbs.api import (
    Access,
    Mtu,
    QPCap,
    RCPath,
    RecvWR,
    SendFlags,
    SendWR,
    Sge,
    VerbsError,
    WorkCompletion,
    WrOpcode,
    poll_wait,
)

AUTHKEY = b"smctop-verbs-conformance"
RW = Access.LOCAL_WRITE | Access.REMOTE_WRITE


class Endpoint:
    def __init__(self, provider: str, device: str, **device_opts) -> None:
        self.provider_name = provider
        self.netdev = device_opts.pop("netdev", None)  # the real device's network interface, for faults
        # soft: the engine ("native" or "python") and a seed that makes keys, QPNs and addresses repeatable
        opts = {k: v for k in ("engine", "seed") if (v := device_opts.pop(k, None)) is not None}
        self.provider = open_provider(provider, **opts)
        self.device = self.provider.open_device(device, **device_opts)
        self.pd = self.device.alloc_pd()
        self.cq = self.device.create_cq(4096)
        self.gid = self.device.roce_v2_gid()
        self.qps: list = []
        self.mrs: list = []

    # ---------------------------------------------------------------- resources

    def reg_mr(self, size: int, access: int = int(RW)) -> dict:
        mr = self.pd.reg_mr(size, Access(access))
        self.mrs.append(mr)
        return {"handle": len(self.mrs) - 1, "addr": mr.addr, "rkey": mr.rkey, "length": mr.length}

    def reg_mr_alias(self, mr: int, access: int = int(RW)) -> dict:
        """Register the memory of MR ``mr`` once more (as SMC-R maps one RMB on every link)."""
        base = self.mrs[mr]
        alias = self.pd.reg_mr(base.length, Access(access), buffer=base.buf)
        self.mrs.append(alias)
        return {"handle": len(self.mrs) - 1, "addr": alias.addr, "rkey": alias.rkey, "length": alias.length}

    def write_mem(self, mr: int, offset: int, data: bytes) -> None:
        self.mrs[mr].buf[offset : offset + len(data)] = data

    def read_mem(self, mr: int, offset: int, length: int) -> bytes:
        return bytes(self.mrs[mr].buf[offset : offset + length])

    def dereg_mr(self, mr: int) -> None:
        self.mrs[mr].deregister()

    def create_qp(self, max_send_wr: int = 64, max_recv_wr: int = 64) -> dict:
        qp = self.pd.create_rc_qp(self.cq, self.cq, QPCap(max_send_wr, max_recv_wr, 2, 2, 64))
        self.qps.append(qp)
        # devices may grant more than asked (rxe rounds up): report what the QP really holds
        granted = getattr(qp, "cap", None)
        return {"handle": len(self.qps) - 1, "qpn": qp.qp_num, "psn": random.getrandbits(24), "gid": self.gid.gid,
                "max_send_wr": granted.max_send_wr if granted else max_send_wr}  # fmt: skip

    def connect(self, qp: int, local: dict, remote: dict, **path_kw) -> None:
        """INIT -> RTR -> RTS towards ``remote`` (the peer's create_qp result)."""
        path_kw.setdefault("path_mtu", Mtu.MTU_1024)
        path = RCPath(remote["qpn"], remote["psn"], local["psn"], remote["gid"], self.gid.index, **path_kw)
        q = self.qps[qp]
        q.to_init(RW)
        q.to_rtr(path)
        q.to_rts(path)

    def qp_state(self, qp: int) -> int:
        return int(self.qps[qp].state())

    def to_error(self, qp: int) -> None:
        self.qps[qp].to_error()

    # ---------------------------------------------------------------- work requests

    def _sges(self, sges) -> tuple[Sge, ...]:
        return tuple(Sge(self.mrs[m], off, ln) for m, off, ln in sges)

    def post_send(self, qp: int, wr_id: int, opcode: int, sges, *, remote_addr: int = 0, rkey: int = 0,
                  imm: int | None = None, signaled: bool = True, solicited: bool = False) -> None:  # fmt: skip
        flags = (SendFlags.SIGNALED if signaled else SendFlags.NONE) | (SendFlags.SOLICITED if solicited else SendFlags.NONE)
        self.qps[qp].post_send(SendWR(wr_id, WrOpcode(opcode), self._sges(sges), flags, remote_addr, rkey, imm))

    def post_send_many(self, qp: int, wrs: list[dict]) -> None:
        for wr in wrs:
            self.post_send(qp, **wr)

    def post_recv(self, qp: int, wr_id: int, sges) -> None:
        self.qps[qp].post_recv(RecvWR(wr_id, self._sges(sges)))

    def poll(self, count: int, timeout: float, snapshot: tuple[int, int, int] | None = None) -> tuple[list[WorkCompletion], bytes | None]:
        """Wait for ``count`` completions; ``snapshot`` (mr, offset, length) is read the moment the first one is seen."""
        got = poll_wait(self.cq, 1 if snapshot else count, timeout)
        snap = self.read_mem(*snapshot) if snapshot and got else None
        if len(got) < count:
            got += poll_wait(self.cq, count - len(got), timeout)
        return got, snap

    # ---------------------------------------------------------------- faults

    def set_faults(self, **faults) -> None:
        """loss (probability), drop_next (frames), delay (seconds)."""
        if self.provider_name == "soft":
            for k, v in faults.items():
                setattr(self.device.faults, k, v)
            if "seed" in faults:
                self.device.faults.reseed(faults["seed"])
            return
        # A real device: the kernel's queueing discipline on its network interface loses frames.
        loss = faults.get("loss", 0.0)
        subprocess.run(["tc", "qdisc", "del", "dev", self._netdev(), "root"], capture_output=True)
        if loss:
            subprocess.run(["tc", "qdisc", "add", "dev", self._netdev(), "root", "netem", "loss", f"{loss * 100:.3f}%"], check=True)

    def set_port(self, up: bool, duration: float | None = None) -> None:
        """Port up or down; with ``duration`` the port comes back by itself after that many
        seconds (so a control connection running over the same network survives)."""
        if self.provider_name == "soft":
            self.device.set_port_state(up)
        else:
            subprocess.run(["ip", "link", "set", self._netdev(), "up" if up else "down"], check=True)
        if duration:
            threading.Timer(duration, self.set_port, (not up,)).start()

    def _netdev(self) -> str:
        if not self.netdev or not shutil.which("ip"):
            raise VerbsError(errno.EOPNOTSUPP, "fault injection on a real device needs its netdev (netdev=...) and iproute2")
        return self.netdev

    def port_state(self) -> int:
        return int(self.device.query_port().state)

    def events(self) -> list[int]:
        return [int(e.type) for e in self.device.poll_events()]

    def wait_event(self, event: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if event in self.events():
                return True
            time.sleep(0.01)
        return False

    def stats(self) -> dict:
        return dict(getattr(self.device, "stats", {}))

    def qp_stats(self, qp: int) -> dict:
        return dict(getattr(self.qps[qp], "stats", {}))

    def engine(self) -> str:
        return getattr(self.device, "engine", "")

    def close(self) -> None:
        for qp in self.qps:
            try:
                qp.destroy()
            except VerbsError:
                pass
        self.device.close()


class RemoteEndpoint:
    """An Endpoint in another process or machine; every call is forwarded."""

    def __init__(self, conn: Connection, provider: str, device: str, *, owns_conn: bool = False, **device_opts) -> None:
        self._conn = conn
        self._owns_conn = owns_conn
        self._call("__open__", provider, device, **device_opts)

    def _call(self, method: str, *args, **kwargs):
        self._conn.send((method, args, kwargs))
        status, value = self._conn.recv()
        if status == "err":
            raise value
        return value

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *a, **kw: self._call(name, *a, **kw)

    def close(self) -> None:
        try:
            self._call("close")
        finally:
            if self._owns_conn:
                self._conn.close()


def serve(conn: Connection) -> bool:
    """Serve one Endpoint over ``conn`` until it is closed; False when the connection ended."""
    ep: Endpoint | None = None
    method = ""
    while True:
        try:
            method, args, kwargs = conn.recv()
        except (EOFError, OSError):
            if ep is not None:
                ep.close()
            return False
        try:
            if method == "__open__":
                ep = Endpoint(*args, **kwargs)
                result = None
            else:
                result = getattr(ep, method)(*args, **kwargs)
            conn.send(("ok", result))
        except Exception as e:  # sent back to the caller, which raises it
            conn.send(("err", e))
        if method == "close":
            return True
        if method == "__quit__":
            raise SystemExit(0)


def serve_sessions(conn: Connection) -> None:
    """Serve one endpoint after another over ``conn`` (a child process of the test run)."""
    while serve(conn):
        pass


def connect_remote(address: tuple[str, int], provider: str, device: str, *, wait: float = 60.0, **device_opts) -> RemoteEndpoint:
    """Connect to an endpoint server, waiting up to ``wait`` seconds for it to listen."""
    deadline = time.monotonic() + wait
    while True:
        try:
            conn = Client(address, authkey=AUTHKEY)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return RemoteEndpoint(conn, provider, device, owns_conn=True, **device_opts)


def main() -> None:
    ap = argparse.ArgumentParser(description="serve verbs endpoints over TCP for the conformance suite")
    ap.add_argument("--listen", required=True, help="HOST:PORT")
    ap.add_argument("--count", type=int, default=0, help="stop after this many sessions (0: never)")
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    with Listener((host, int(port)), authkey=AUTHKEY) as listener:
        print(f"verbs endpoint server on {args.listen}", flush=True)
        served = 0
        while not args.count or served < args.count:
            with listener.accept() as conn:
                try:
                    serve(conn)
                except SystemExit:  # a client said __quit__
                    conn.send(("ok", None))
                    return
            served += 1


def quit_server(address: tuple[str, int]) -> None:
    with Client(address, authkey=AUTHKEY) as conn:
        conn.send(("__quit__", (), {}))
        conn.recv()


if __name__ == "__main__":
    sys.exit(main())
