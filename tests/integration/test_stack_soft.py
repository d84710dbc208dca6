"""The whole stack over the soft RoCEv2 provider: real sockets, real RoCEv2 frames, in one
process and across two processes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest
from support.stacks import TrafficServer, addrs, run, traffic_client, two_stacks, until

from stack.traffic import runner
from stack.traffic.protocol import BOTH
from stack.wire import codes
from stack.wire.codes import DECL

BULK = 256 << 20
TEST_LINK = 1.0
BIG_RMB = {"rmb_size": 1 << 20, "sndbuf_size": 1 << 20}


def test_bulk_256mib_both_ways_in_one_process():
    async def main():
        async with two_stacks(BIG_RMB, BIG_RMB) as (a, b, _, sa):
            totals_s, totals_c = runner.Totals(), runner.Totals()
            await b.start_server(lambda r, w: runner.serve(r, w, totals_s), sa, 5000)
            await runner.bulk(lambda: a.open_connection(sa, 5000), totals_c, direction=BOTH, total=BULK, duration=0, seed=3)
            return totals_c, totals_s

    c, s = run(main(), timeout=600)
    assert not c.errors and not s.errors, (c.errors, s.errors)
    assert c.verified == 1 and s.verified == 1 and c.modes == {"SMCR": 1}
    assert c.bytes_sent == c.bytes_received == BULK


def test_bulk_256mib_both_ways_across_two_processes():
    ca, sa = addrs()
    server = TrafficServer(sa, "--count", "1", "--rmb-size", "1M", "--sndbuf-size", "1M", "--mtu", "4096")
    rc, rep, err = traffic_client(sa, ca, "--bytes", "256M", "--direction", "both", "--rmb-size", "1M", "--sndbuf-size", "1M", "--mtu", "4096")
    srep = server.report()
    assert rc == 0, err
    assert rep["verified"] == 1 and rep["modes"] == {"SMCR": 1} and rep["bytes_sent"] == rep["bytes_received"] == BULK
    assert srep["verified"] == 1 and srep["bytes_received"] == srep["bytes_sent"] == BULK and not srep["errors"]


def test_request_response_in_one_process():
    async def main():
        async with two_stacks() as (a, b, _, sa):
            ts, tc = runner.Totals(), runner.Totals()
            await b.start_server(lambda r, w: runner.serve(r, w, ts), sa, 5000)
            await asyncio.gather(*(runner.rr(lambda: a.open_connection(sa, 5000), tc, size=300, duration=0, count=200, seed=i) for i in range(3)))
            return tc

    tc = run(main())
    assert not tc.errors and tc.ops == 600 and tc.verified == 3 and tc.modes == {"SMCR": 3}
    assert len(tc.latencies) == 600


def test_request_response_across_two_processes():
    ca, sa = addrs()
    server = TrafficServer(sa, "--count", "2")
    rc, rep, err = traffic_client(sa, ca, "--mode", "rr", "--size", "2000", "--count", "300", "--connections", "2")
    assert rc == 0, err
    assert rep["ops"] == 600 and rep["verified"] == 2 and rep["latency_us"]["p50"] > 0 and rep["modes"] == {"SMCR": 2}
    assert server.report()["ops"] == 600


def test_two_hundred_connections_share_one_link_group():
    async def main():
        async with two_stacks() as (a, b, _, sa):

            async def echo(r, w):
                w.write(await r.readexactly(16))
                await w.drain()
                await r.read()
                w.close()

            await b.start_server(echo, sa, 5000)
            conns = await asyncio.gather(*(a.open_connection(sa, 5000) for _ in range(200)))
            snap_a, snap_b = a.snapshot(), b.snapshot()
            for i, (_r, w) in enumerate(conns):
                w.write(i.to_bytes(16, "big"))
            answers = await asyncio.gather(*(r.readexactly(16) for r, w in conns))
            infos = [w.get_extra_info("smc") for r, w in conns]
            for _r, w in conns:
                w.close()
            await asyncio.gather(*(w.wait_closed() for r, w in conns))
            await until(lambda: not a.snapshot()["conns"], what="the client's connections gone")
            return snap_a, snap_b, answers, infos, a.snapshot()

    snap_a, snap_b, answers, infos, after = run(main())
    assert answers == [i.to_bytes(16, "big") for i in range(200)]
    assert len(snap_a["lgrs"]) == 1 and len(snap_b["lgrs"]) == 1 and snap_b["lgrs"][0]["conns"] == 200
    assert sum(i["first_contact"] for i in infos) == 1 and {i["mode"] for i in infos} == {"SMCR"}
    assert len({i["lgr"] for i in infos}) == 1
    assert not after["conns"] and after["lgrs"][0]["conns"] == 0  # all closed, the link group stays for reuse


def test_two_hundred_connections_share_one_link_group_across_two_processes():
    ca, sa = addrs()
    server = TrafficServer(sa, "--count", "200")
    rc, rep, err = traffic_client(sa, ca, "--mode", "rr", "--connections", "200", "--count", "2", "--size", "100")
    srep = server.report()
    assert rc == 0, err
    assert rep["modes"] == {"SMCR": 200} and rep["ops"] == 400 and rep["verified"] == 200
    assert rep["first_contacts"] == 1 and len(rep["link_groups"]) == 1
    assert srep["first_contacts"] == 1 and len(srep["link_groups"]) == 1 and srep["modes"] == {"SMCR": 200}


async def _pair_conn(a, b, sa, server_cb):
    await b.start_server(server_cb, sa, 5000)
    return await a.open_connection(sa, 5000)


def test_close_paths_through_the_api():
    async def main():
        async with two_stacks() as (a, b, _, sa):
            seen = asyncio.Queue()

            async def server(r, w):
                await seen.put((r, w))

            # active close by the client, the server reads EOF then closes
            r, w = await _pair_conn(a, b, sa, server)
            sr, sw = await seen.get()
            w.write(b"bye")
            w.close()
            assert await sr.read() == b"bye"
            sw.close()
            await asyncio.gather(w.wait_closed(), sw.wait_closed())
            # half close: the client shuts its write side, still reads the server's answer
            r, w = await a.open_connection(sa, 5000)
            sr, sw = await seen.get()
            w.write(b"question")
            w.write_eof()
            assert await sr.read() == b"question"
            sw.write(b"answer")
            sw.close()
            assert await r.read() == b"answer"
            w.close()
            await asyncio.gather(w.wait_closed(), sw.wait_closed())
            # simultaneous close
            r, w = await a.open_connection(sa, 5000)
            sr, sw = await seen.get()
            w.close()
            sw.close()
            await asyncio.gather(w.wait_closed(), sw.wait_closed())
            # abort: the peer reads end of file, as a kernel reader does after peer_conn_abort
            # (smc_rx_recvmsg), and its next write fails with the reason (smc_tx_sendmsg)
            r, w = await a.open_connection(sa, 5000)
            sr, sw = await seen.get()
            w.abort()
            assert await sr.read() == b""
            with pytest.raises(ConnectionResetError, match="connection reset by peer"):
                sw.write(b"late")
                await sw.drain()
            sw.close()
            await sw.wait_closed()
            await until(lambda: not a.snapshot()["conns"] and not b.snapshot()["conns"], what="both sides' connections gone")
            return a.snapshot(), b.snapshot()

    sa_, sb_ = run(main())
    assert not sa_["conns"] and not sb_["conns"]


def test_peer_process_killed_mid_transfer():
    """The survivor sees the link die (RETRY_EXC_ERR), aborts with a clear error, and leaks nothing."""
    ca, sa = addrs()
    server = TrafficServer(sa, "--count", "1")

    async def main():
        async with _ClientOnly(ca) as host:
            reader, writer = await host.open_connection(sa, 5000, local_addr=(ca, 0))
            writer.write(b"SMCT" + bytes([1, 1, 1, 0]) + bytes(24))  # bulk upload header, never ending
            error = None
            try:
                for i in range(100_000):
                    writer.write(b"\0\1\0\0" + bytes(65536))
                    await writer.drain()
                    if i == 20:
                        server.kill()
            except ConnectionResetError as e:
                error = str(e)
            await until(lambda: not host.snapshot()["lgrs"] and not host.rdma.mrs, what="the link group and its memory regions gone")
            return error, host.snapshot(), dict(host.rdma.mrs)

    error, snap, mrs = run(main(), timeout=120)
    assert error is not None and "link group" in error and "terminated" in error, error
    # a sender with WRs in flight sees RETRY_EXC_ERR after ~1 s; one blocked on the full RMB of a
    # dead peer has nothing in flight, and TEST LINK (interval + 2 s for the answer) finds out
    assert "RETRY_EXC_ERR" in error or "TEST LINK not answered" in error, error
    assert not snap["conns"] and not snap["lgrs"], snap
    assert not mrs, f"memory regions still registered: {mrs}"


class _ClientOnly:
    def __init__(self, addr: str) -> None:
        from support.stacks import config

        from stack.core.config import Timeouts
        from stack.runtime import Stack

        self.stack = Stack(config("client", addr, timeouts=Timeouts(test_link=TEST_LINK)))

    async def __aenter__(self):
        return await self.stack.start()

    async def __aexit__(self, *exc):
        await self.stack.close()


FALLBACK_CASES = [
    # name, client config, server config, server smc, client smc, client devices, server devices,
    # expected (client mode, client reason, client peer diagnosis), expected (server mode, server reason)
    (
        "server declines DIFFPREFIX",
        {},
        {"forced_decline": DECL.DIFFPREFIX},
        True,
        True,
        True,
        True,
        ("TCP", DECL.PEERDECL, DECL.DIFFPREFIX),
        ("TCP", DECL.DIFFPREFIX),
    ),
    ("server declines MEM", {}, {"forced_decline": 0x01010000}, True, True, True, True, ("TCP", DECL.PEERDECL, 0x01010000), ("TCP", 0x01010000)),
    ("client has no RDMA device", {}, {}, True, True, False, True, ("TCP", DECL.NOSMCDEV, 0), ("TCP", DECL.PEERDECL)),
    ("server has no RDMA device", {}, {}, True, True, True, False, ("TCP", DECL.PEERDECL, DECL.NOSMCRDEV), ("TCP", DECL.NOSMCRDEV)),
    (
        "v2 only against v1 only",
        {"versions": frozenset({2})},
        {"versions": frozenset({1})},
        True,
        True,
        True,
        True,
        ("TCP", DECL.PEERDECL, DECL.VERSMISMAT),
        ("TCP", DECL.VERSMISMAT),
    ),
    ("v1+v2 against v1 only: SMC-R v1", {}, {"versions": frozenset({1})}, True, True, True, True, ("SMCR", 0, 0), ("SMCR", 0)),
    (
        "IP prefix mismatch",
        {"versions": frozenset({1})},
        {"prefix_len": 30},
        True,
        True,
        True,
        True,
        ("TCP", DECL.PEERDECL, DECL.DIFFPREFIX),
        ("TCP", DECL.DIFFPREFIX),
    ),
    ("server not configured for SMC", {}, {}, False, True, True, True, ("TCP", DECL.PEERNOSMC, DECL.PEERNOSMC), ("TCP", 0)),
    ("client not configured for SMC", {}, {}, True, False, True, True, ("TCP", 0, 0), ("TCP", DECL.PEERNOSMC)),
]


@pytest.mark.parametrize("case", FALLBACK_CASES, ids=[c[0] for c in FALLBACK_CASES])
def test_fallback_carries_data_and_reports_the_reason_on_both_sides(case):
    name, ccfg, scfg, server_smc, client_smc, cdev, sdev, want_c, want_s = case

    async def main():
        async with two_stacks(ccfg, scfg, client_dev=cdev, server_dev=sdev) as (a, b, ca, sa):
            infos = {}

            async def server(r, w):
                infos["server"] = w.get_extra_info("smc")
                data = await r.read()
                w.write(hashlib.sha256(data).digest())
                await w.drain()
                infos["server_counts"] = _counts(b)
                w.close()

            await b.start_server(server, sa, 5000, smc=server_smc)
            r, w = await a.open_connection(sa, 5000, smc=client_smc, local_addr=(ca, 0))
            infos["client"] = w.get_extra_info("smc")
            payload = os.urandom(300_000)
            w.write(payload)
            await w.drain()
            w.write_eof()
            digest = await r.read()
            infos["client_counts"] = _counts(a)
            w.close()
            return infos, digest == hashlib.sha256(payload).digest()

    infos, ok = run(main())
    assert ok, "data did not arrive intact"
    c, s = infos["client"], infos["server"]
    assert (c["mode"], c["fallback_reason"], c.get("peer_diagnosis", 0)) == want_c, c
    assert (s["mode"], s["fallback_reason"]) == want_s, s
    if want_c[1]:
        assert c["fallback_reason_text"] == codes.format_reason(want_c[1])
    # what a stack's end that fell back moved over TCP is in its snapshot, as SMC-R's is (smctop shows it)
    if want_c[0] == "TCP" and client_smc:
        assert infos["client_counts"] == [(300_000, 32)]
    if want_s[0] == "TCP" and server_smc:
        assert infos["server_counts"] == [(32, 300_000)]


def _counts(stack) -> list[tuple[int, int]]:
    return [(c["bytes_sent"], c["bytes_received"]) for c in stack.snapshot()["conns"]]


def test_clc_timeout_and_malformed_clc_fail_the_connection():
    async def main():
        async with two_stacks() as (a, b, ca, sa):

            async def silent(r, w):
                await asyncio.sleep(10)

            async def garbage(r, w):
                await r.read(100)
                w.write(b"\xe2\xd4\xc3\xd9\x02\x00\x45\x10" + bytes(61))
                await w.drain()
                await asyncio.sleep(10)

            s1 = await asyncio.start_server(silent, sa, 5001)
            s2 = await asyncio.start_server(garbage, sa, 5002)
            t0 = time.monotonic()
            with pytest.raises(ConnectionError, match="CLC timeout: no Accept within 3 s"):
                await a.open_connection(sa, 5001)
            waited = time.monotonic() - t0
            with pytest.raises(ConnectionError, match="malformed CLC message: CLC Accept: offset 5: length 69"):
                await a.open_connection(sa, 5002)
            s1.close()
            s2.close()
            return waited, a.snapshot()

    waited, snap = run(main())
    assert waited >= 2.9 and not snap["conns"] and not snap["lgrs"]
