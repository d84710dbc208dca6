"""IPv6 TCP connections through the public API (Stack.open_connection / start_server) over
the soft RoCE provider with real sockets: the RoCE devices stay IPv4 (their GIDs are
IPv4-mapped, as Soft-RoCE's are), the CLC handshake runs on IPv6.

As the kernel: the client offers no SMC-Rv2 on an IPv6 connection (smc_find_proposal_devices),
so it offers SMC-Rv1 with the IPv6 prefixes of the route's device (smc_clc_prfx_set6_rcu: at
most 8, none link-local) in a Proposal with header version 2, and the server matches them
against its own device's (smc_clc_prfx_match6_rcu). An IPv4-mapped connection is IPv4."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import random
import shutil
import subprocess

import pytest
from support.stacks import has_ipv6_loopback, run, two_stacks

from stack.wire import clc
from stack.wire.codes import DECL

pytestmark = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 on the loopback interface (::1)")


async def _exchange(a, b, host: str, listen: str | None = None, client_kw: dict | None = None):
    """One connection from ``a`` to ``b`` on ``host`` (the server listening on ``listen``):
    300 kB up, their digest back. Returns both sides' get_extra_info("smc"), whether the
    bytes arrived intact, and the Proposals each side's bus saw."""
    seen: dict[str, list] = {"client": [], "server": []}
    a.bus.listen(lambda e: seen["client"].append(e) if e.kind == "clc.msg" else None)
    b.bus.listen(lambda e: seen["server"].append(e) if e.kind == "clc.msg" else None)
    infos = {}

    async def server(r, w):
        infos["server"] = w.get_extra_info("smc")
        data = await r.read()
        w.write(hashlib.sha256(data).digest())
        await w.drain()
        w.close()

    srv = await b.start_server(server, listen or host, 0)
    port = srv.sockets[0].getsockname()[1]
    r, w = await a.open_connection(host, port, **(client_kw or {}))
    infos["client"] = w.get_extra_info("smc")
    infos["client_sockname"] = w.get_extra_info("sockname")
    payload = os.urandom(300_000)
    w.write(payload)
    await w.drain()
    w.write_eof()
    digest = await r.read()
    w.close()
    srv.close()
    proposals = [clc.decode(e.get("raw")) for e in seen["client"] if e.get("type") == "Proposal" and e.get("dir") == "tx"]
    return infos, digest == hashlib.sha256(payload).digest(), proposals


def test_ipv6_loopback_negotiates_smcr_v1_with_the_ipv6_prefix_of_lo():
    async def main():
        async with two_stacks() as (a, b, _, _sa):  # v1 and v2 configured on both sides
            return await _exchange(a, b, "::1")

    infos, ok, proposals = run(main())
    assert ok, "data did not arrive intact"
    c, s = infos["client"], infos["server"]
    assert (c["mode"], s["mode"]) == ("SMCR", "SMCR"), (c, s)
    assert c["version"] == s["version"] == 1, "an IPv6 connection negotiates SMC-Rv1 only"
    (p,) = proposals
    # smc_clc_send_proposal: header version 2, v1 offered with the SMC-R part filled, no v2
    assert (p.version, p.typev1, p.typev2, p.v2) == (2, clc.SmcType.R, clc.SmcType.N, None)
    assert p.peer_id != bytes(8) and p.gid != bytes(16)
    assert p.gid[:12] == bytes(10) + b"\xff\xff", "the GID is the RoCE device's (IPv4-mapped), not the TCP address"
    assert (p.prefix.subnet, p.prefix.prefix_len) == (ipaddress.IPv4Address(0), 0)
    assert ipaddress.IPv6Address("::1") in [x.prefix for x in p.prefix.ipv6]
    assert all(x.length == 128 for x in p.prefix.ipv6 if x.prefix == ipaddress.IPv6Address("::1"))


def test_ipv6_prefix_mismatch_falls_back_with_diffprefix():
    async def main():
        # the server's override: ::1 with /127 is ::/127, which the client's ::1/128 is not
        async with two_stacks(None, {"prefix_len": 127}) as (a, b, _, _sa):
            return await _exchange(a, b, "::1")

    infos, ok, _ = run(main())
    assert ok, "the fallback must carry the data"
    c, s = infos["client"], infos["server"]
    assert (c["mode"], c["fallback_reason"], c.get("peer_diagnosis")) == ("TCP", DECL.PEERDECL, DECL.DIFFPREFIX)
    assert (s["mode"], s["fallback_reason"]) == ("TCP", DECL.DIFFPREFIX)


def test_ipv6_client_configured_for_v2_only_falls_back_with_nosmcdev():
    """No SMC-Rv2 on IPv6 and no v1 configured: nothing to propose (smc_find_proposal_devices)."""

    async def main():
        async with two_stacks({"versions": frozenset({2})}, None) as (a, b, _, _sa):
            return await _exchange(a, b, "::1")

    infos, ok, proposals = run(main())
    assert ok and not proposals
    assert (infos["client"]["mode"], infos["client"]["fallback_reason"]) == ("TCP", DECL.NOSMCDEV)
    assert (infos["server"]["mode"], infos["server"]["fallback_reason"]) == ("TCP", DECL.PEERDECL)


def test_ipv4_mapped_connection_is_ipv4_and_negotiates_v2():
    """An IPv6 socket connected to ::ffff:a.b.c.d speaks IPv4: the kernel takes such a
    connection for IPv4 (ipv6_addr_v4mapped), so SMC-Rv2 and the IPv4 prefix apply."""

    async def main():
        async with two_stacks() as (a, b, ca, sa):
            return await _exchange(a, b, f"::ffff:{sa}", listen=sa, client_kw={"local_addr": (f"::ffff:{ca}", 0)})

    infos, ok, proposals = run(main())
    assert ok
    assert infos["client_sockname"][0].startswith("::ffff:"), infos["client_sockname"]
    assert (infos["client"]["mode"], infos["server"]["mode"]) == ("SMCR", "SMCR")
    assert infos["client"]["version"] == 2
    (p,) = proposals
    assert p.typev2 == clc.SmcType.R and p.prefix is not None and not p.prefix.ipv6
    assert (str(p.prefix.subnet), p.prefix.prefix_len) == ("127.0.0.0", 8)  # lo's 127.0.0.1/8 holds the address


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def lo_ipv6_addresses():
    """Ten IPv6 addresses of a random fd00::/8 prefix added to lo (root), removed after."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("adding addresses to lo needs root and iproute2")
    base = random.SystemRandom().randrange(1, 0xFFFF)
    added = []
    try:
        for i in range(10):
            addr = f"fd00:{base:x}:{i:x}::1/64"
            res = _ip("-6", "addr", "add", addr, "dev", "lo", "nodad")
            if res.returncode != 0:
                pytest.skip(f"cannot add {addr} to lo: {res.stderr.strip()}")
            added.append(addr)
        yield [a.split("/")[0] for a in added]
    finally:
        for addr in added:
            _ip("-6", "addr", "del", addr, "dev", "lo")


def test_ipv6_on_lo_with_ten_prefixes_proposes_the_first_eight_in_the_kernels_order(lo_ipv6_addresses):
    """smc_clc_prfx_set6_rcu takes at most 8 prefixes, in the device's order (what a netlink
    dump of lo lists), and smc_clc_prfx_match6_rcu matches any of them."""
    host = lo_ipv6_addresses[3]

    async def main():
        async with two_stacks() as (a, b, _, _sa):
            return await _exchange(a, b, host)

    infos, ok, proposals = run(main())
    assert ok and infos["client"]["mode"] == "SMCR" and infos["client"]["version"] == 1
    assert infos["client_sockname"][0] == host
    (p,) = proposals
    dump = _ip("-6", "-o", "addr", "show", "dev", "lo").stdout.split("\n")
    lo_order = [ipaddress.ip_interface(line.split()[3]) for line in dump if " inet6 " in line]
    want = [(i.network.network_address, i.network.prefixlen) for i in lo_order if not i.is_link_local][:8]
    assert len(p.prefix.ipv6) == clc.MAX_V6_PREFIXES == 8
    assert [(x.prefix, x.length) for x in p.prefix.ipv6] == want
