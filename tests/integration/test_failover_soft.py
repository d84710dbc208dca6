"""Failover in the running stack over the soft provider: hosts with two soft RoCE devices,
ports pulled and put back while data flows, checked by CRC and byte count."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from support.stacks import TrafficServer, addrs, run, second_device, traffic_client, two_stacks, until

from stack.core.config import Timeouts
from stack.runtime.control import ControlClient
from stack.traffic import runner
from stack.traffic.protocol import BOTH

RMB = {"rmb_size": 256 << 10, "sndbuf_size": 256 << 10}


def lgr_types(stack) -> list[str]:
    return [g["type"] for g in stack.snapshot()["lgrs"]]


async def settle(predicate, timeout: float = 60.0) -> bool:  # a hang guard, not a speed limit
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bulk_survives_a_port_pulled_at_a_random_moment(seed):
    """Three connections move 24 MiB each way; the first device of one side loses its port
    at a random moment and gets it back later: every byte verifies, the connections stay
    SMC-R, failover is reported on both sides and both groups end SYM again."""
    rng = random.Random(seed)

    async def main():
        async with two_stacks(RMB, RMB, client_dev=2, server_dev=2) as (a, b, ca, sa):
            ts, tc = runner.Totals(), runner.Totals()
            await b.start_server(lambda r, w: runner.serve(r, w, ts), sa, 5000)
            victim, dev = rng.choice([(a, ca), (b, sa)])
            jobs = [runner.bulk(lambda: a.open_connection(sa, 5000, local_addr=(ca, 0)), tc, direction=BOTH, total=24 << 20,
                                duration=0, seed=seed * 10 + i) for i in range(3)]  # fmt: skip
            work = asyncio.gather(*jobs)
            # the port goes at a random point of the transfer (a byte count, not a time: a slow
            # machine must not pull it before the data flows or after it ended) and comes back
            # once both sides have failed over
            pull_at = int(rng.uniform(0.05, 0.6) * 3 * (24 << 20))
            await until(lambda: tc.bytes_received >= pull_at, what=f"{pull_at} bytes received before the pull")
            victim.set_port(dev, False)
            await until(lambda: a.snapshot()["failovers"] and b.snapshot()["failovers"], what="the failover on both sides")
            victim.set_port(dev, True)
            await asyncio.wait_for(work, 120)
            ok = await settle(lambda: lgr_types(a) == ["SYM"] and lgr_types(b) == ["SYM"])
            events = [fo for s in (a, b) for fo in s.snapshot()["failovers"]]
            return tc, ts, ok, events, (lgr_types(a), lgr_types(b))

    tc, ts, sym, failovers, types = run(main(), timeout=180)
    assert not tc.errors and not ts.errors, (tc.errors, ts.errors)
    assert tc.verified == 3 and ts.verified == 3 and tc.modes == {"SMCR": 3}
    assert tc.bytes_sent == tc.bytes_received == 3 * (24 << 20)
    assert sym, f"link groups did not return to SYM: {types}"
    lost = [fo for fo in failovers if fo["reason"].startswith(("port down", "deleted by the peer: 0x00010000", "send completion"))]
    assert lost and all(fo["failed"] == 0 for fo in lost), failovers


def test_both_ports_pulled_every_connection_aborts_in_time():
    """No link left: the host that lost its ports aborts at once; its peer aborts when its
    RC retries run out on each link (about 1.1 s a link with the kernel's QP attributes).
    When flow control has left the client nothing in flight, only TEST LINK can notice (as in
    the kernel): the client sends one every 0.5 s here instead of every 30 s."""

    async def main():
        async with two_stacks({**RMB, "timeouts": Timeouts(clc_wait=3.0, test_link=0.5)}, RMB, client_dev=2, server_dev=2) as (a, b, ca, sa):
            ts, tc = runner.Totals(), runner.Totals()
            await b.start_server(lambda r, w: runner.serve(r, w, ts), sa, 5000)
            jobs = [runner.bulk(lambda: a.open_connection(sa, 5000, local_addr=(ca, 0)), tc, direction=BOTH, total=1 << 30,
                                duration=0, seed=i) for i in range(2)]  # fmt: skip
            work = asyncio.gather(*jobs, return_exceptions=True)
            # both connections up and moving data before the ports go: a loaded machine may take
            # longer than any fixed pause, and a handshake cut short is another test
            assert await settle(lambda: tc.modes.get("SMCR") == 2 and tc.bytes_received > 0)
            b.set_port(sa, False)
            b.set_port(second_device(sa), False)
            # the order of events, not their timing: the server aborts on its own, while the
            # client's transfers are still waiting for their RC retries or TEST LINK to fail
            await until(lambda: not b.host.lgrs, what="the server's link group gone")
            client_still_up = not work.done() and bool(a.host.lgrs)
            await work
            return tc, client_still_up, a.host.snapshot()

    tc, client_still_up, snap = run(main(), timeout=120)
    assert client_still_up, "the client had given up before the server aborted on its own"
    assert len(tc.errors) == 2 and all("terminated" in e for e in tc.errors), tc.errors
    assert not snap["lgrs"] and tc.verified == 0


def test_smc_traffic_fails_and_restores_a_link_across_two_processes():
    # traffic for a time, not a byte count: the native engine moved 32 MiB each way before the
    # port went at 0.3 s, and a failover that moves no connection tests nothing
    ca, sa = addrs()
    sa2, ca2 = second_device(sa), second_device(ca)
    server = TrafficServer(sa, "--device", sa, "--device", sa2, "--duration", "5", "--rmb-size", "256K", "--sndbuf-size", "256K",
                           "--mtu", "4096")  # fmt: skip
    rc, rep, err = traffic_client(sa, ca, "--device", ca2, "--duration", "2.5", "--direction", "both", "--connections", "2",
                                  "--rmb-size", "256K", "--sndbuf-size", "256K", "--mtu", "4096", "--fail-link", "0.3",
                                  "--restore-link", "1.5", "--loss", "0.0005")  # fmt: skip
    srep = server.report()
    assert rc == 0, err
    assert rep["verified"] == 2 and srep["verified"] == 2 and rep["modes"] == {"SMCR": 2}
    links = rep["links"]
    assert links["links_down"] >= 1 and links["failovers"]
    first = links["failovers"][0]
    assert first["reason"] == f"port down on {ca}" and first["conns"] == 2 and first["at_s"] >= 0.3  # not before the pull
    assert [g["type"] for g in links["link_groups"]] == ["SYM"]
    assert srep["links"]["failovers"][0]["reason"].startswith("deleted by the peer: 0x00010000")


def test_fault_controls_on_the_control_socket_are_events(tmp_path):
    path = str(tmp_path / "ctl.sock")

    async def main():
        async with two_stacks({}, {}, client_dev=2, server_dev=2) as (a, b, ca, sa):
            from stack.runtime.control import ControlServer

            ctl = ControlServer(b, path, 1.0)
            await ctl.start()
            try:

                async def echo(r, w):
                    w.write(await r.read(5))
                    await w.drain()

                await b.start_server(echo, sa, 5000)
                r, w = await a.open_connection(sa, 5000, local_addr=(ca, 0))
                await settle(lambda: lgr_types(b) == ["SYM"])
                client = await ControlClient.connect(path)
                await client.send("subscribe", kinds=["link.event", "lgr.state"])
                await client.send("faults", device=second_device(sa), loss=0.0)
                await client.send("port", device=sa, up=False)
                await client.send("port", device="nope", up=True)
                seen = []
                async for msg in client.messages():
                    seen.append(msg)
                    if msg.get("type") == "event" and msg["event"].get("event") == "failover_end":
                        break
                await client.send("port", device=sa, up=True)
                back = await settle(lambda: lgr_types(b) == ["SYM"] and len(b.host.lgrs[0].links) == 2)
                w.write(b"hello")
                got = await r.read(5)
                await client.close()
                return seen, back, got
            finally:
                await ctl.close()

    seen, back, got = run(main())
    errors = [m for m in seen if m.get("type") == "error"]
    assert len(errors) == 1 and "no device 'nope'" in errors[0]["error"]
    events = [(m["event"].get("event"), m["event"].get("fault")) for m in seen if m.get("type") == "event"]
    assert ("fault", "faults") in events and ("fault", "port_down") in events
    assert ("port_down", None) in events and ("down", None) in events and ("failover_begin", None) in events
    assert back and got == b"hello"
