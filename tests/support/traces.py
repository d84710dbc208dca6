"""Record real sessions of two in-process stacks with smc-trace's recorder."""

from __future__ import annotations

from dissectors.recorder import Recorder
from stack.events import Event
from support.stacks import echo_exchanges, run, two_stacks, until

DIFFPREFIX = 0x03070000


def lgr_types(stack) -> list[str]:
    return [g["type"] for g in stack.snapshot()["lgrs"]]


def record_session(path, *, kw: dict | None = None, devices: int = 1, fallback: bool = False, failover: bool = False,
                   max_pending: int = 200_000, pair: tuple[str, str] | None = None) -> tuple[list[Event], object]:  # fmt: skip
    """Echo exchanges (SMC-R), then optionally a port pulled and restored on the server
    (failover) and a connection the server declines (fallback). Returns every event the
    stacks emitted, as a direct listener saw them, and the recorder's stats."""
    seen: list[Event] = []

    async def main():
        async with two_stacks(kw or {}, kw or {}, mtu=1024, client_dev=devices, server_dev=devices, pair=pair) as (a, b, ca, sa):
            rec = Recorder(str(path), max_pending=max_pending)
            for s in (a, b):
                seen.append(rec.attach(s))  # the stack's state as the recording starts
                s.bus.listen(seen.append)
            await echo_exchanges(a, b, ca, sa, 2)
            if failover:
                # the echo connections fully closed on both sides first: a close CDC still in flight
                # when the port goes is lost, and the server's end then waits in PEERFINCLOSEWAIT for
                # ever (a stack finding, see docs/testing.md; not what this recording is about)
                await until(lambda: lgr_types(a) == lgr_types(b) == ["SYM"] and not a.snapshot()["conns"] and not b.snapshot()["conns"],
                            what="both link groups SYM and no connection left before the pull")  # fmt: skip
                b.set_port(sa, False)
                await until(lambda: b.snapshot()["failovers"] and a.snapshot()["failovers"], what="the failover on both sides")
                r, w = await a.open_connection(sa, 5000, local_addr=(ca, 0))  # carried by the surviving link
                w.write(b"x" * 3000)
                w.write_eof()
                await r.read()
                w.close()
                b.set_port(sa, True)
                await until(lambda: lgr_types(a) == lgr_types(b) == ["SYM"], what="both link groups SYM again")
            if fallback:
                b.force_decline(DIFFPREFIX)
                r, w = await a.open_connection(sa, 5000, local_addr=(ca, 0))
                w.write(b"y" * 1000)
                w.write_eof()
                await r.read()
                w.close()
                await w.wait_closed()
            await until(lambda: not a.snapshot()["conns"] and not b.snapshot()["conns"], what="every connection closed")
            for s in (a, b):
                s.bus.unlisten(seen.append)
            return rec.close()

    stats = run(main())
    return seen, stats
