"""One side of the lab's differential runs (issue 16): the same scenarios between two kernels
(the control: what the kernel does) and between the kernel and our stack, both directions.

    diffrun.py server kernel|stack PORT --count N
    diffrun.py client kernel|stack HOST PORT --host6 HOST6 [--scenarios urgent,conc50,unread-client,unread-server,ipv6,close-first,shutdown-first]

Each connection starts with the line ``SCENARIO IMPL`` from the client; both sides then play it
and write one JSON record per connection to ``$LAB_SHARE/<impl>-<role>-<port>.jsonl``: what
the application saw (bytes as SHA-256 and length, the urgent byte, end of file or the
error), the mode, the link group, and how long it took. tests/lab/test_kernel_differential.py
compares the records of kernel/kernel runs with those of kernel/stack runs.

Scenarios:
* ``urgent``: the client sends 20,000 bytes, one urgent byte (send with MSG_OOB), 100,000
  more, then shuts down writing; the receiver takes the urgent byte out of band (not
  inline) when it is announced, reads the stream to end of file, and answers with what it got.
* ``conc50``: the client opens 50 connections (one after the other), then each sends 20,000
  bytes and reads them echoed, all at once; all 50 stay open until all have finished (one
  link group, 50 connections).
* ``ipv6``: one connection to the server's IPv6 address (``--host6``), 20,000 bytes echoed:
  whether it is SMC-R and with which version, or which fallback reason each side names.
* ``unread-client`` / ``unread-server``: the server sends 40,000 bytes; the named side
  closes with data it has not read (the kernel sends abort then: smc_close_final); the other
  side records what its application sees next (reset or end of file).
* ``close-first``: the client sends 1,000 bytes and closes; the server reads them, reads to
  end of file and closes half a second later. Each side records the state of its TCP
  connection (the kernel's clcsock, from /proc/net/tcp): the server's at end of file and
  after its close, the client's after its close. Between kernels the client's FIN leaves
  with its close flag (smc_close_active), so the client keeps the TIME_WAIT, not the server.
* ``shutdown-first``: the same with a half close: the client sends 1,000 bytes, shuts down
  writing and reads the answer (the bytes reversed) to end of file, then closes; the server
  reads to end of file, answers and closes. The client's FIN leaves with its "done
  writing" (smc_shutdown).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hashlib
import json
import os
import select
import socket
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent.parent)]

import ksmc  # noqa: E402
from support.tcpstate import tcp_state  # noqa: E402

LAB_UEID = "SMCTOP-LAB"
# the urgent byte comes while the receiver has read nothing yet (it fits in the RMB): a kernel
# receiver that takes the urgent byte while standing right before it never moves its consumer
# cursor past it, and the kernel sender then waits for ever (smc_rx_recv_urg; seen in the lab
# between two kernels), so the scenario reads it out of band before the stream
URGENT_BEFORE, URGENT_AFTER = 20_000, 100_000
URGENT_BYTE = 0xA5
CONC, CONC_BYTES = 50, 20_000
UNREAD_BYTES = 40_000
CLOSE_BYTES = 1_000
SCENARIOS = ("urgent", "conc50", "unread-client", "unread-server", "ipv6", "close-first", "shutdown-first")
PAUSE = 0.5  # lets data land in the peer's buffer before a close that leaves it unread


def sha(data: bytes) -> dict:
    return {"len": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def pattern(n: int, seed: int) -> bytes:
    """Deterministic bytes both sides can recompute (no need to ship them back)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, i)).digest()
        i += 1
    return bytes(out[:n])


def report(name: str, record: dict) -> None:
    path = Path(os.environ.get("LAB_SHARE", ".")) / f"{name}.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


_ERRNO_OF = {ConnectionResetError: errno.ECONNRESET, BrokenPipeError: errno.EPIPE, ConnectionAbortedError: errno.ECONNABORTED}


def error_name(e: BaseException) -> str:
    """The errno's name, as both sides' applications would see it (asyncio raises
    ConnectionResetError without an errno where a socket says ECONNRESET)."""
    code = e.errno if isinstance(e, OSError) and e.errno else _ERRNO_OF.get(type(e))
    return errno.errorcode.get(code, str(code)) if code else type(e).__name__


# ------------------------------------------------------------------ the kernel: blocking AF_SMC


def k_lgrs() -> list[dict]:
    """The kernel's SMC-R link groups (genl): id, type and connection count."""
    from smckernel import genl as kgenl
    from smckernel import kio

    g = kio.Genl()
    try:
        groups = kgenl.link_groups(kgenl.parse(g.dump(kgenl.GET_LGR_SMCR), kgenl.GET_LGR_SMCR))
    finally:
        g.close()
    return [{"id": r.get("id"), "type": r.get("type"), "conns": r.get("conns")} for r in groups]


def k_next(s: socket.socket) -> str:
    """What the application sees next on a socket whose peer closed: eof, data or an error."""
    try:
        got = s.recv(1 << 16)
        while got:
            got = s.recv(1 << 16)
        return "eof"
    except OSError as e:
        return error_name(e)


def k_read_with_urgent(s: socket.socket) -> tuple[bytes, int | None]:
    """The urgent byte out of band once poll shows it (POLLPRI), then the stream to end of file."""
    p = select.poll()
    p.register(s, select.POLLPRI)
    if not dict(p.poll(30_000)).get(s.fileno(), 0) & select.POLLPRI:
        raise TimeoutError("no urgent data announced within 30 s")
    urgent = s.recv(1, socket.MSG_OOB)[0]
    data = bytearray()
    while chunk := s.recv(1 << 16):
        data += chunk
    return bytes(data), urgent


def k_serve_one(s: socket.socket, port: int, i: int) -> None:
    t0 = time.monotonic()
    rec: dict = {"impl": "kernel", "role": "server", "i": i}
    try:
        s.settimeout(60)
        scenario, rec["peer"] = ksmc.recv_line(s, "scenario line").split()
        rec["scenario"] = scenario
        rec["diag"] = ksmc.mode_of(s)
        if scenario == "urgent":
            data, urgent = k_read_with_urgent(s)
            rec.update(received=sha(data), urgent=urgent)
            ksmc.sendall(s, json.dumps({"len": len(data), "urgent": urgent}).encode() + b"\n")
            s.shutdown(socket.SHUT_WR)
            rec["next"] = k_next(s)
        elif scenario in ("conc50", "ipv6"):
            got = ksmc.recv_exactly(s, CONC_BYTES)
            rec["received"] = sha(got)
            ksmc.sendall(s, got)
            if scenario == "conc50":
                rec["lgrs"] = k_lgrs()
            rec["next"] = k_next(s)
        elif scenario == "unread-client":
            ksmc.sendall(s, pattern(UNREAD_BYTES, i))
            rec["next"] = k_next(s)  # the client closes with this unread
        elif scenario == "unread-server":
            rec["stage"] = "send"
            ksmc.sendall(s, pattern(UNREAD_BYTES, i))
            rec["stage"] = "recv"
            ksmc.recv_exactly(s, 10)  # the client's first bytes, not the rest
            time.sleep(PAUSE)
            rec["closed_unread"] = True
        elif scenario in ("close-first", "shutdown-first"):
            here, there = s.getsockname()[:2], s.getpeername()[:2]  # the clcsock's
            got = ksmc.recv_exactly(s, CLOSE_BYTES)
            rec["received"] = sha(got)
            rec["next"] = k_next(s)
            rec["tcp_at_eof"] = tcp_state(here, there)
            if scenario == "shutdown-first":
                ksmc.sendall(s, got[::-1])
            time.sleep(PAUSE)
            s.close()
            time.sleep(PAUSE if scenario == "close-first" else 3 * PAUSE)  # a half-closed client closes PAUSE after our close
            rec["tcp_after_close"] = tcp_state(here, there)
        else:
            rec["error"] = f"unknown scenario {scenario!r}"
    except Exception as e:  # noqa: BLE001 - recorded; the test fails on it
        rec["error"] = f"{error_name(e)}: {e}"
    finally:
        s.close()
        rec["seconds"] = round(time.monotonic() - t0, 3)
        report(f"kernel-server-{port}", rec)


def kernel_server(port: int, count: int) -> None:
    listeners = [ksmc.listen("0.0.0.0", port, backlog=128), ksmc.listen("::", port, backlog=16)]
    print(f"kernel server on {port} (IPv4 and IPv6)", flush=True)
    threads = []
    for i in range(count):
        ready, _, _ = select.select(listeners, [], [], 400)
        if not ready:
            raise TimeoutError(f"no connection within 400 s ({i} of {count} came)")
        s = ksmc.accept(ready[0], timeout=10)
        t = threading.Thread(target=k_serve_one, args=(s, port, i), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(120)
    for lst in listeners:
        lst.close()


def kernel_client(host: str, port: int, scenarios: list[str], host6: str | None = None) -> None:
    for scenario in scenarios:
        n = CONC if scenario == "conc50" else 1
        t0 = time.monotonic()
        socks = [ksmc.connect(host6 if scenario == "ipv6" else host, port, timeout=120) for _ in range(n)]
        results: list[dict] = [{"impl": "kernel", "role": "client", "scenario": scenario, "i": i} for i in range(n)]

        def play(i: int, s: socket.socket) -> None:
            rec = results[i]
            try:
                s.settimeout(60)
                rec["diag"] = ksmc.mode_of(s)
                ksmc.sendall(s, f"{scenario} kernel\n".encode())
                if scenario == "urgent":
                    before, after = pattern(URGENT_BEFORE, 1), pattern(URGENT_AFTER, 2)
                    ksmc.sendall(s, before)
                    ksmc.sendall(s, bytes([URGENT_BYTE]), socket.MSG_OOB)
                    ksmc.sendall(s, after)
                    s.shutdown(socket.SHUT_WR)
                    rec["sent"] = sha(before + after)
                    line = b""
                    while not line.endswith(b"\n"):
                        c = s.recv(1)
                        if not c:
                            break
                        line += c
                    rec["peer_saw"] = json.loads(line) if line else None
                    rec["next"] = k_next(s)
                elif scenario in ("conc50", "ipv6"):
                    data = pattern(CONC_BYTES, 100 + i)
                    ksmc.sendall(s, data)
                    rec["sent"] = sha(data)
                    rec["received"] = sha(ksmc.recv_exactly(s, CONC_BYTES))
                elif scenario == "unread-client":
                    ksmc.recv_exactly(s, 10)
                    time.sleep(PAUSE)
                    rec["closed_unread"] = True
                elif scenario == "unread-server":
                    rec["stage"] = "send"
                    ksmc.sendall(s, pattern(30_000, 7))
                    rec["stage"] = "next"
                    rec["next"] = k_next(s)
                    rec["stage"] = "done"
                elif scenario in ("close-first", "shutdown-first"):
                    here, there = s.getsockname()[:2], s.getpeername()[:2]
                    data = pattern(CLOSE_BYTES, 9)
                    ksmc.sendall(s, data)
                    rec["sent"] = sha(data)
                    if scenario == "shutdown-first":
                        s.shutdown(socket.SHUT_WR)
                        answer = ksmc.recv_exactly(s, CLOSE_BYTES)
                        rec["answer_ok"] = answer == data[::-1]
                        rec["next"] = k_next(s)
                    time.sleep(PAUSE)
                    s.close()
                    time.sleep(3 * PAUSE)
                    rec["tcp_after_close"] = tcp_state(here, there)
            except Exception as e:  # noqa: BLE001
                rec["error"] = f"{error_name(e)}: {e}"

        threads = [threading.Thread(target=play, args=(i, s)) for i, s in enumerate(socks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        if scenario == "conc50":
            lgrs = k_lgrs()
            for r in results:
                r["lgrs"] = lgrs
        for s in socks:
            s.close()
        for r in results:
            r["seconds"] = round(time.monotonic() - t0, 3)
            report(f"kernel-client-{port}", r)


# ------------------------------------------------------------------ our stack (pyverbs on rxe0)


def stack_config(name: str):
    from stack import DeviceSpec, SmcConfig, StackConfig

    smc = SmcConfig(host=name, versions=frozenset({1, 2}), ueids=(LAB_UEID,))  # both, as a kernel offers
    soft = os.environ.get("DIFFRUN_SOFT")  # a soft device's address: the scenarios stack to stack, off the lab
    if soft:
        return StackConfig(smc, (DeviceSpec("soft", addr=soft),), tcp_option="inband")
    return StackConfig(smc, (DeviceSpec("pyverbs", "rxe0"),), tcp_option=os.environ.get("SMCTOP_TCP_OPTION", "option"))


def s_info(writer) -> dict:
    info = writer.get_extra_info("smc") or {}
    out = {k: info.get(k) for k in ("mode", "version", "fallback_reason", "peer_diagnosis", "lgr")}
    peer = writer.get_extra_info("peername")
    if peer:  # written as smc_diag writes it: IPv6 in brackets
        out["peer"] = ("[%s]:%d" if ":" in peer[0] else "%s:%d") % tuple(peer[:2])
    return out


async def s_next(reader) -> str:
    try:
        while await asyncio.wait_for(reader.read(1 << 16), 30):
            pass
        return "eof"
    except OSError as e:
        return error_name(e)


async def s_read_with_urgent(reader) -> tuple[bytes, int | None]:
    """The urgent byte out of band, then the stream to end of file."""
    urgent = await asyncio.wait_for(reader.read_urgent(), 30)
    data = bytearray()
    while chunk := await asyncio.wait_for(reader.read(1 << 16), 30):
        data += chunk
    return bytes(data), urgent[0] if urgent else None


async def stack_server(port: int, count: int) -> None:
    from stack import Stack

    done: asyncio.Queue = asyncio.Queue()
    seq = iter(range(count))

    async def handle(reader, writer) -> None:
        i = next(seq)
        t0 = time.monotonic()
        rec: dict = {"impl": "stack", "role": "server", "i": i}
        try:
            scenario, rec["peer"] = (await asyncio.wait_for(reader.readline(), 60)).decode().split()
            rec["scenario"] = scenario
            rec["smc"] = s_info(writer)
            if scenario == "urgent":
                data, urgent = await s_read_with_urgent(reader)
                rec.update(received=sha(data), urgent=urgent)
                writer.write(json.dumps({"len": len(data), "urgent": urgent}).encode() + b"\n")
                await writer.drain()
                writer.write_eof()
                rec["next"] = await s_next(reader)
            elif scenario in ("conc50", "ipv6"):
                got = await asyncio.wait_for(reader.readexactly(CONC_BYTES), 60)
                rec["received"] = sha(got)
                writer.write(got)
                await writer.drain()
                rec["next"] = await s_next(reader)
            elif scenario == "unread-client":
                writer.write(pattern(UNREAD_BYTES, i))
                await writer.drain()
                rec["next"] = await s_next(reader)
            elif scenario == "unread-server":
                writer.write(pattern(UNREAD_BYTES, i))
                await writer.drain()
                await asyncio.wait_for(reader.readexactly(10), 30)
                await asyncio.sleep(PAUSE)
                rec["closed_unread"] = True
            elif scenario in ("close-first", "shutdown-first"):
                here, there = writer.get_extra_info("sockname")[:2], writer.get_extra_info("peername")[:2]
                got = await asyncio.wait_for(reader.readexactly(CLOSE_BYTES), 30)
                rec["received"] = sha(got)
                rec["next"] = await s_next(reader)
                rec["tcp_at_eof"] = tcp_state(here, there)
                if scenario == "shutdown-first":
                    writer.write(got[::-1])
                    await writer.drain()
                await asyncio.sleep(PAUSE)
                writer.close()
                await asyncio.sleep(PAUSE if scenario == "close-first" else 3 * PAUSE)  # a half-closed client closes PAUSE after our close
                rec["tcp_after_close"] = tcp_state(here, there)
            else:
                rec["error"] = f"unknown scenario {scenario!r}"
        except Exception as e:  # noqa: BLE001
            rec["error"] = f"{error_name(e)}: {e}"
        finally:
            writer.close()
            rec["seconds"] = round(time.monotonic() - t0, 3)
            await done.put(rec)

    async with Stack(stack_config("ours-server")) as host:
        servers = [await host.start_server(handle, "0.0.0.0", port), await host.start_server(handle, "::", port)]
        print(f"stack server on {port} (IPv4 and IPv6)", flush=True)
        for _ in range(count):
            report(f"stack-server-{port}", await asyncio.wait_for(done.get(), 500))
        for server in servers:
            server.close()


async def stack_client(host_ip: str, port: int, scenarios: list[str], host6: str | None = None) -> None:
    from stack import Stack

    async def connect(host, ip=host_ip):
        deadline = time.monotonic() + 120
        while True:
            try:
                return await host.open_connection(ip, port)
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async with Stack(stack_config("ours-client")) as host:
        for scenario in scenarios:
            n = CONC if scenario == "conc50" else 1
            t0 = time.monotonic()
            # one after the other, as the kernel client's blocking connect() does: a burst of 50
            # handshakes on one vCPU under TCG outlasts the CLC timeouts; they then stay open together
            conns = [await connect(host, host6 if scenario == "ipv6" else host_ip) for _ in range(n)]
            results = [{"impl": "stack", "role": "client", "scenario": scenario, "i": i} for i in range(n)]

            async def play(i: int, reader, writer) -> None:
                rec = results[i]
                try:
                    rec["smc"] = s_info(writer)
                    writer.write(f"{scenario} stack\n".encode())
                    if scenario == "urgent":
                        before, after = pattern(URGENT_BEFORE, 1), pattern(URGENT_AFTER, 2)
                        writer.write(before)
                        writer.write_urgent(bytes([URGENT_BYTE]))
                        writer.write(after)
                        await writer.drain()
                        writer.write_eof()
                        rec["sent"] = sha(before + after)
                        line = await asyncio.wait_for(reader.readline(), 60)
                        rec["peer_saw"] = json.loads(line) if line else None
                        rec["next"] = await s_next(reader)
                    elif scenario in ("conc50", "ipv6"):
                        data = pattern(CONC_BYTES, 100 + i)
                        writer.write(data)
                        await writer.drain()
                        rec["sent"] = sha(data)
                        rec["received"] = sha(await asyncio.wait_for(reader.readexactly(CONC_BYTES), 60))
                    elif scenario == "unread-client":
                        await asyncio.wait_for(reader.readexactly(10), 30)
                        await asyncio.sleep(PAUSE)
                        rec["closed_unread"] = True
                    elif scenario == "unread-server":
                        writer.write(pattern(30_000, 7))
                        await writer.drain()
                        rec["next"] = await s_next(reader)
                    elif scenario in ("close-first", "shutdown-first"):
                        here, there = writer.get_extra_info("sockname")[:2], writer.get_extra_info("peername")[:2]
                        data = pattern(CLOSE_BYTES, 9)
                        writer.write(data)
                        await writer.drain()
                        rec["sent"] = sha(data)
                        if scenario == "shutdown-first":
                            writer.write_eof()
                            answer = await asyncio.wait_for(reader.readexactly(CLOSE_BYTES), 30)
                            rec["answer_ok"] = answer == data[::-1]
                            rec["next"] = await s_next(reader)
                        await asyncio.sleep(PAUSE)
                        writer.close()
                        await asyncio.sleep(3 * PAUSE)
                        rec["tcp_after_close"] = tcp_state(here, there)
                except Exception as e:  # noqa: BLE001
                    rec["error"] = f"{error_name(e)}: {e}"

            await asyncio.gather(*(play(i, r, w) for i, (r, w) in enumerate(conns)))
            if scenario == "conc50":
                snap = host.snapshot()
                lgrs = [{"id": g.get("id"), "type": g.get("type"), "conns": g.get("conns")} for g in snap.get("lgrs", ())]
                for r in results:
                    r["lgrs"] = lgrs
            for _, w in conns:
                w.close()
            for r in results:
                r["seconds"] = round(time.monotonic() - t0, 3)
                report(f"stack-client-{port}", r)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=("server", "client"))
    ap.add_argument("impl", choices=("kernel", "stack"))
    ap.add_argument("args", nargs="+")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--host6", help="client: the server's IPv6 address, for the ipv6 scenario")
    a = ap.parse_args()
    scenarios = [s for s in a.scenarios.split(",") if s]
    if a.role == "server":
        port = int(a.args[0])
        (kernel_server(port, a.count) if a.impl == "kernel" else asyncio.run(stack_server(port, a.count)))
    else:
        host, port = a.args[0], int(a.args[1])
        if "ipv6" in scenarios and not a.host6:
            ap.error("the ipv6 scenario needs --host6")
        (kernel_client(host, port, scenarios, a.host6) if a.impl == "kernel" else asyncio.run(stack_client(host, port, scenarios, a.host6)))


if __name__ == "__main__":
    main()
