"""One side of the lab's interop runs: the kernel's AF_SMC or our stack, as client or server.

    interop.py kernel-server PORT [--conns N]
    interop.py kernel-client HOST PORT --plan PLAN
    interop.py stack-server PORT [--conns N] [--ueid NAME | --no-ueid]
    interop.py stack-client HOST PORT --plan PLAN [--ueid NAME | --no-ueid] [--tcp]

PLAN is a comma-separated list of connections, ``UP:DOWN:CLOSER`` each (bytes the
client sends, bytes the server sends back, ``client`` or ``server`` closes first).
Per connection the client sends the line ``UP DOWN CLOSER`` and UP random bytes; the
server answers with DOWN random bytes; then the closer closes and the other side must
read end-of-file before it closes too. Each side writes one JSON line per connection to
``$LAB_SHARE/<role>.jsonl``: its view of the mode (smc_diag for the kernel,
``get_extra_info("smc")`` for the stack, taken while the connection is open), the
SHA-256 and CRC-32 of what it sent and received, and whether it saw end-of-file.
tests/lab/test_kernel_interop.py compares the two sides' lines.

Environment: ``SMCTOP_LAB_PAUSE``, the seconds a client waits with the connection open and
idle before it closes; ``SMCTOP_LAB_HOLD`` set: a client opens all its plan's connections
before the first exchange, so that they are open at once; for our stack,
``SMCTOP_LAB_BUFSIZE`` (its RMB and send buffer, as net.smc.rmem and wmem),
``SMCTOP_LAB_TESTLINK`` (seconds, as net.smc.smcr_testlink_time) and
``SMCTOP_LAB_DEVICES`` (its RoCE devices, default ``rxe0``; ``rxe0,rxe1`` with two NICs).
Each side's last line (``<role>-host``) has its link groups as they were at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import sys
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent.parent)]

import ksmc  # noqa: E402

LAB_UEID = "SMCTOP-LAB"
PAUSE = float(os.environ.get("SMCTOP_LAB_PAUSE", 0))  # seconds a client waits, idle, before it closes
HOLD = bool(os.environ.get("SMCTOP_LAB_HOLD"))  # a client opens every connection of its plan before the first exchange


def digest(data: bytes) -> dict:
    return {"len": len(data), "sha256": hashlib.sha256(data).hexdigest(), "crc32": zlib.crc32(data)}


def plan(text: str) -> list[tuple[int, int, str]]:
    out = []
    for item in text.split(","):
        up, down, closer = item.split(":")
        if closer not in ("client", "server"):
            raise SystemExit(f"closer must be client or server, not {closer!r}")
        out.append((int(up), int(down), closer))
    return out


def report(role: str, record: dict) -> None:
    path = Path(os.environ.get("LAB_SHARE", ".")) / f"{role}.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    print(role, json.dumps(record, sort_keys=True), flush=True)


# ---------------------------------------------------------------- kernel AF_SMC (blocking sockets)


def _eof(s: socket.socket) -> bool:
    return s.recv(1 << 16) == b""


def kernel_server(port: int, conns: int) -> None:
    lst = ksmc.listen("0.0.0.0", port, backlog=128)  # (a client may hold many connections open at once)
    print(f"kernel server listening on {port}", flush=True)
    for i in range(conns):
        s = ksmc.accept(lst, timeout=90)
        s.settimeout(60)
        t0 = time.monotonic()
        up, down, closer = ksmc.recv_line(s, "header line").split()
        diag = ksmc.mode_of(s)
        got = ksmc.recv_exactly(s, int(up))
        data = os.urandom(int(down))
        ksmc.sendall(s, data)
        if closer == "server":
            s.shutdown(socket.SHUT_WR)
            eof = _eof(s)
        else:
            eof = _eof(s)
        s.close()
        report("kernel-server", {"i": i, "impl": "kernel", "diag": diag, "sent": digest(data), "received": digest(got),
                                 "closer": closer, "eof": eof, "seconds": round(time.monotonic() - t0, 3)})  # fmt: skip
    lst.close()
    report("kernel-server-host", _kernel_host())


def _kernel_host() -> dict:
    try:
        return {"lgrs": kernel_lgrs()}
    except Exception as e:  # noqa: BLE001 - a test that needs them fails on it, the others do not
        return {"lgrs_error": f"{type(e).__name__}: {e}"}


def kernel_client(host: str, port: int, items: list) -> None:
    held = [ksmc.connect(host, port, timeout=90) for _ in items] if HOLD else []
    for i, (up, down, closer) in enumerate(items):
        t0 = time.monotonic()
        s = held[i] if held else ksmc.connect(host, port, timeout=90)
        s.settimeout(60)
        diag = ksmc.mode_of(s)
        data = os.urandom(up)
        ksmc.sendall(s, f"{up} {down} {closer}\n".encode() + data)
        got = ksmc.recv_exactly(s, down)
        time.sleep(PAUSE)  # the connection open and idle: the links' TEST LINKs keep it
        if closer == "client":
            s.shutdown(socket.SHUT_WR)
        eof = _eof(s)
        s.close()
        report("kernel-client", {"i": i, "impl": "kernel", "diag": diag, "sent": digest(data), "received": digest(got),
                                 "closer": closer, "eof": eof, "seconds": round(time.monotonic() - t0, 3)})  # fmt: skip
    report("kernel-client-host", _kernel_host())


# ---------------------------------------------------------------- our stack (pyverbs on rxe0)


def stack_config(name: str, ueid: str | None):
    from stack import DeviceSpec, SmcConfig, StackConfig
    from stack.core.config import Timeouts

    size = int(os.environ.get("SMCTOP_LAB_BUFSIZE", 0))  # the RMB and send buffer, as the kernel's net.smc.rmem/wmem do
    sizes = {"rmb_size": size, "sndbuf_size": size} if size else {}
    test_link = float(os.environ.get("SMCTOP_LAB_TESTLINK", 0))  # as net.smc.smcr_testlink_time
    timeouts = {"timeouts": Timeouts(test_link=test_link)} if test_link else {}
    smc = SmcConfig(host=name, versions=frozenset({2}), ueids=(ueid,) if ueid else (), **sizes, **timeouts)
    devices = tuple(DeviceSpec("pyverbs", d) for d in os.environ.get("SMCTOP_LAB_DEVICES", "rxe0").split(","))
    return StackConfig(smc, devices, tcp_option=os.environ.get("SMCTOP_TCP_OPTION", "option"))


def stack_lgrs(host) -> list[dict]:
    """Our link groups: type, the limits negotiated, and each link's device and state."""
    return [{"id": g["id"], "type": g["type"], "max_links": g.get("max_links"), "max_conns": g.get("max_conns"),
             "links": [{"id": lk["id"], "device": lk.get("device"), "state": lk["state"]} for lk in g["links"]]}
            for g in host.snapshot()["lgrs"]]  # fmt: skip


def kernel_lgrs() -> list[dict]:
    """The kernel's SMC-R link groups with their links, as smckernel reads SMC_GEN_NETLINK."""
    from smckernel import genl as kgenl
    from smckernel import kio

    g = kio.Genl()
    try:
        groups = kgenl.link_groups(kgenl.parse(g.dump(kgenl.GET_LINK_SMCR), kgenl.GET_LINK_SMCR))
    finally:
        g.close()
    roles = {0: "client", 1: "server"}
    return [{"id": kgenl.lgr_id_text(x["id"]), "role": roles.get(x.get("role"), x.get("role")), "type": kgenl.LGR_TYPES.get(x.get("type"), x.get("type")),
             "pnet_id": x.get("pnet_id"), "links": [{"id": lk.get("id"), "ib_dev": lk.get("ib_dev"), "gid": lk.get("gid"),
             "peer_gid": lk.get("peer_gid"), "state": kgenl.LINK_STATES.get(lk.get("state")), "conns": lk.get("conns")}
             for lk in x["links"]]} for x in groups]  # fmt: skip


def _info(writer, host=None) -> dict:
    """What our side says about the connection, and what the BPF program saw on its SYNs."""
    info = writer.get_extra_info("smc")
    out = {k: info.get(k) for k in ("mode", "version", "fallback_reason", "peer_diagnosis", "first_contact", "lgr", "rmb_size", "peer_rmb_size")}
    out["local"] = "%s:%d" % writer.get_extra_info("sockname")[:2]
    out["peer"] = "%s:%d" % writer.get_extra_info("peername")[:2]
    if host is not None and host.option_map is not None:
        res = host.option_map.result(writer.get_extra_info("socket").fileno())
        out["tcp_option"] = {"done": res.done, "sent": res.sent, "peer": res.peer}
    return out


async def stack_server(port: int, conns: int, ueid: str | None) -> None:
    from stack import Stack

    done = asyncio.Queue()
    stack = None

    async def handle(reader, writer) -> None:
        t0 = time.monotonic()
        try:
            up, down, closer = (await reader.readline()).decode().split()
            info = _info(writer, stack)
            got = await reader.readexactly(int(up))
            data = os.urandom(int(down))
            writer.write(data)
            await writer.drain()
            if closer == "server":
                writer.write_eof()
            eof = await reader.read(1 << 16) == b""
            writer.close()
            await writer.wait_closed()
            await done.put({"impl": "stack", "smc": info, "sent": digest(data), "received": digest(got), "closer": closer,
                            "eof": eof, "seconds": round(time.monotonic() - t0, 3)})  # fmt: skip
        except Exception as e:  # noqa: BLE001 - reported, and the test fails on it
            await done.put({"impl": "stack", "error": f"{type(e).__name__}: {e}", "smc": _info(writer)})

    async with Stack(stack_config("ours-server", ueid)) as host:
        stack = host
        server = await host.start_server(handle, "0.0.0.0", port)
        print(f"stack server listening on {port} (signalling: {host.signalling})", flush=True)
        for i in range(conns):
            record = await asyncio.wait_for(done.get(), 120)
            report("stack-server", {"i": i, **record})
        server.close()
        report("stack-server-host", {"signalling": host.signalling, "stats": host.host.stats, "lgrs": stack_lgrs(host)})


async def stack_client(host_ip: str, port: int, items: list, ueid: str | None, smc: bool = True) -> None:
    from stack import Stack

    async def connect(host):
        deadline = time.monotonic() + 90
        while True:
            try:
                return await host.open_connection(host_ip, port, smc=smc)
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async with Stack(stack_config("ours-client", ueid)) as host:
        print(f"stack client (signalling: {host.signalling})", flush=True)
        held = [await connect(host) for _ in items] if HOLD else []
        for i, (up, down, closer) in enumerate(items):
            t0 = time.monotonic()
            reader, writer = held[i] if held else await connect(host)
            info = _info(writer, host)
            data = os.urandom(up)
            writer.write(f"{up} {down} {closer}\n".encode() + data)
            await writer.drain()
            got = await asyncio.wait_for(reader.readexactly(down), 60)
            await asyncio.sleep(PAUSE)
            if closer == "client":
                writer.write_eof()
            eof = await asyncio.wait_for(reader.read(1 << 16), 60) == b""
            writer.close()
            await writer.wait_closed()
            report("stack-client", {"i": i, "impl": "stack", "smc": info, "sent": digest(data), "received": digest(got),
                                    "closer": closer, "eof": eof, "seconds": round(time.monotonic() - t0, 3)})  # fmt: skip
        report("stack-client-host", {"signalling": host.signalling, "stats": host.host.stats, "lgrs": stack_lgrs(host)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=("kernel-server", "kernel-client", "stack-server", "stack-client"))
    ap.add_argument("args", nargs="+")
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--plan", default="65536:65536:client")
    ap.add_argument("--ueid", default=LAB_UEID)
    ap.add_argument("--no-ueid", action="store_true")
    ap.add_argument("--tcp", action="store_true", help="stack-client: plain TCP (open_connection(smc=False))")
    a = ap.parse_args()
    ueid = None if a.no_ueid else a.ueid
    if a.role == "kernel-server":
        kernel_server(int(a.args[0]), a.conns)
    elif a.role == "kernel-client":
        kernel_client(a.args[0], int(a.args[1]), plan(a.plan))
    elif a.role == "stack-server":
        asyncio.run(stack_server(int(a.args[0]), a.conns, ueid))
    else:
        asyncio.run(stack_client(a.args[0], int(a.args[1]), plan(a.plan), ueid, smc=not a.tcp))


if __name__ == "__main__":
    main()
