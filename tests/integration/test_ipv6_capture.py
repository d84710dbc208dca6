"""IPv6 connections in captures: smc-trace records the CLC handshake of an IPv6 TCP
connection as Ethernet/IPv6/TCP frames (the recorder's TCP flows were IPv4 only and left
those segments out), reads them back from the frames alone as a capture of a real host
would be read, and tshark decodes them as SMC."""

from __future__ import annotations

import hashlib
import os

import pytest
from support import tshark
from support.stacks import has_ipv6_loopback, run, two_stacks

from dissectors.capture import read_events
from dissectors.pcapng import LINKTYPE_ETHERNET, PcapngWriter, epb_block, read_packets
from dissectors.recorder import Recorder
from stack.wire import inet

pytestmark = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 on the loopback interface (::1)")


def _record_ipv6(path) -> tuple[int, bool]:
    """One SMC-R connection on ::1 (SMC-Rv1: an IPv6 connection offers no v2), 100 kB up
    and its digest back, recorded. Returns the server's port and whether the bytes arrived."""

    async def main():
        async with two_stacks() as (a, b, _, _sa):
            rec = Recorder(str(path))
            for s in (a, b):
                rec.attach(s)

            async def server(r, w):
                w.write(hashlib.sha256(await r.read()).digest())
                await w.drain()
                w.close()

            srv = await b.start_server(server, "::1", 0)
            port = srv.sockets[0].getsockname()[1]
            r, w = await a.open_connection("::1", port)
            assert w.get_extra_info("smc")["mode"] == "SMCR"
            payload = os.urandom(100_000)
            w.write(payload)
            await w.drain()
            w.write_eof()
            ok = await r.read() == hashlib.sha256(payload).digest()
            w.close()
            await w.wait_closed()
            srv.close()
            rec.close()
            return port, ok

    return run(main())


def _tcp6(packets):
    """(source, destination, TCP, payload) of every Ethernet/IPv6/TCP frame."""
    out = []
    for p in packets:
        if p.linktype != LINKTYPE_ETHERNET:
            continue
        eth, off = inet.decode_ethernet(p.data)
        if eth.ethertype != inet.ETH_P_IPV6:
            continue
        ip, off = inet.decode_ipv6(p.data, off)
        tcp, poff = inet.decode_tcp(p.data, off)
        out.append((str(ip.src), str(ip.dst), tcp, p.data[poff:]))
    return out


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("ipv6") / "ipv6.pcapng"
    port, ok = _record_ipv6(path)
    assert ok, "data did not arrive intact"
    return path, port


def test_the_recording_carries_the_ipv6_clc_handshake_as_ipv6_tcp_frames(recording):
    path, port = recording
    with open(path, "rb") as f:
        frames = _tcp6(read_packets(f))
    assert frames, "no Ethernet/IPv6/TCP frame in the recording"
    assert {(s, d) for s, d, _, _ in frames} == {("::1", "::1")}
    syn = [t for _, _, t, _ in frames if t.flags & inet.TCP_SYN]
    assert len(syn) == 2 and all(inet.has_smc_option(t.options) for t in syn)  # SYN and SYN-ACK with the SMC option
    clc_payloads = [pl for _, _, t, pl in frames if pl]
    eyecatchers = [pl[:4] for pl in clc_payloads]
    assert eyecatchers and all(e == b"\xe2\xd4\xc3\xd9" for e in eyecatchers)  # every segment is a CLC message
    assert any(t.dport == port for _, _, t, _ in frames)


def test_events_derived_from_the_ipv6_frames_name_the_connection_and_its_clc(recording, tmp_path):
    """What smc-trace reads from a capture of a real host (frames, no event records)."""
    path, port = recording
    wire = tmp_path / "wire.pcapng"
    with open(path, "rb") as f:
        packets = [p for p in read_packets(f) if p.interface == 0]
    with open(wire, "wb") as f:
        w = PcapngWriter(f)
        w.add_interface(LINKTYPE_ETHERNET, "lo")
        for p in packets:
            w.write_blocks(epb_block(0, p.timestamp_ns, p.data, None, p.original_length))
    events = list(read_events(wire))
    opens = [e for e in events if e.kind == "conn.open"]
    assert {(e.get("role"), e.get("local").rsplit(":", 1)[0]) for e in opens} == {("client", "::1"), ("server", "::1")}
    assert any(e.get("local") == f"::1:{port}" for e in opens if e.get("role") == "server")
    clc = [e.get("type") for e in events if e.kind == "clc.msg"]
    assert clc[:2] == ["Proposal", "Accept"] and "Confirm" in clc, clc


def test_the_proposal_is_described_with_its_ipv6_prefixes(recording):
    from dissectors.describe import describe_clc
    from stack.wire import clc

    path, _ = recording
    (raw,) = [e.get("raw") for e in read_events(path) if e.kind == "clc.msg" and e.get("type") == "Proposal" and e.get("dir") == "tx"]
    text = describe_clc(clc.decode(bytes.fromhex(raw) if isinstance(raw, str) else raw))
    assert "prefixes ::1/128" in text and "0.0.0.0/0" not in text, text


def test_tshark_decodes_the_ipv6_proposal(recording):
    path, _ = recording
    proc = tshark.run(["-n", "-r", str(path), "-Y", "smc && ipv6", "-T", "fields", "-e", "ipv6.src", "-e", "_ws.col.Info"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines and all(line.startswith("::1\t") for line in lines), out
    assert any("Proposal" in line for line in lines), out
