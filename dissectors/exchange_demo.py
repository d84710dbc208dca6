"""Demo: a complete SMC-Rv2 first-contact exchange, from the TCP handshake to the close,
encoded by smctop's codecs, written as a pcapng capture, then decoded twice: by smctop
and, when it is installed, by tshark. The v2 LLC messages use the little-endian length
an x86-64 Linux kernel writes, so the tshark column shows Wireshark 4.0's known blind
spot next to smctop's decoding of the same bytes.

    python -m dissectors.exchange_demo [--out FILE] [--big-endian-llc]
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import subprocess
import sys
from pathlib import Path

from dissectors.describe import describe
from dissectors.pcapng import LINKTYPE_ETHERNET, PcapngWriter, read_packets
from dissectors.tcpflow import Endpoint, TcpFlow
from stack.wire import cdc, clc, inet, llc, roce

CLIENT_IP, SERVER_IP = ipaddress.IPv4Address("10.2.0.1"), ipaddress.IPv4Address("10.2.0.2")
CLIENT_MAC, SERVER_MAC = bytes.fromhex("525400120001"), bytes.fromhex("525400120002")
CLIENT_GID, SERVER_GID = ipaddress.IPv6Address("::ffff:10.2.0.1").packed, ipaddress.IPv6Address("::ffff:10.2.0.2").packed
CLIENT_QPN, SERVER_QPN = 0x000011, 0x000012
UEID = clc.make_eid("SMCTOP-DEMO")
RMB = 65536


def build(out: Path, llc_order: str) -> None:
    t = 1_764_072_000_000_000_000
    flow = TcpFlow(Endpoint(CLIENT_IP, 40123, CLIENT_MAC), Endpoint(SERVER_IP, 5000, SERVER_MAC))
    psn = {True: 0x1000, False: 0x2000}

    with open(out, "wb") as f:
        w = PcapngWriter(f)
        iface = w.add_interface(LINKTYPE_ETHERNET, "demo")

        def put(frame: bytes, comment: str | None = None) -> None:
            nonlocal t
            t += 137_000
            w.write_packet(iface, t, frame, comment)

        def rdma(from_client: bool, packet: roce.RocePacket) -> None:
            src, dst = (CLIENT_IP, SERVER_IP) if from_client else (SERVER_IP, CLIENT_IP)
            macs = (CLIENT_MAC, SERVER_MAC) if from_client else (SERVER_MAC, CLIENT_MAC)
            put(roce.encode_frame(packet, src, dst, 49152 + from_client, src_mac=macs[0], dst_mac=macs[1]))

        def send(from_client: bool, payload: bytes) -> None:
            psn[from_client] += 1
            qpn = SERVER_QPN if from_client else CLIENT_QPN
            rdma(from_client, roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, qpn, psn[from_client], se=True, ackreq=True), payload=payload))

        for frame in flow.handshake():
            put(frame)
        proposal = clc.Proposal(
            b"\x8a\x01" + CLIENT_MAC, bytes(16), CLIENT_MAC, clc.SmcType.N, clc.SmcType.R, 2, None,
            v2=clc.V2Extension((UEID,), CLIENT_GID, 1, False, 255, 2),
        )  # fmt: skip
        fce = clc.FirstContactExt(True, clc.OS_LINUX, 1, clc.make_hostname("server"), 255, 2)
        accept = clc.Accept(
            b"\x8a\x02" + SERVER_MAC, SERVER_GID, SERVER_MAC, SERVER_QPN, 0x100, 0x1, clc.rmbe_size_compress(RMB), 3,
            0x7F0000100000, psn[False] + 1, True, 2, eid=UEID, fce=fce,
        )  # fmt: skip
        confirm = clc.Confirm(
            b"\x8a\x01" + CLIENT_MAC, CLIENT_GID, CLIENT_MAC, CLIENT_QPN, 0x200, 0x2, clc.rmbe_size_compress(RMB), 3,
            0x7F0000200000, psn[True] + 1, True, 2, eid=UEID, fce=fce, gids=(CLIENT_GID,),
        )  # fmt: skip
        put(flow.data(True, proposal.encode()), "client proposes SMC-Rv2")
        put(flow.data(False, accept.encode()), "server accepts, first contact: new link group")
        put(flow.data(True, confirm.encode()))
        send(False, llc.ConfirmLink(version=2, mac=SERVER_MAC, gid=SERVER_GID, qpn=SERVER_QPN, link_num=1, link_uid=b"\0\0\1\1").encode(llc_order))
        send(
            True, llc.ConfirmLink(version=2, response=True, mac=CLIENT_MAC, gid=CLIENT_GID, qpn=CLIENT_QPN, link_num=1, link_uid=b"\0\0\2\1").encode(llc_order)
        )
        # The client sends 6000 bytes: an RDMA WRITE into the server's RMB, then a CDC announcing them.
        # Segmented at the 1024-byte path MTU: WRITE FIRST (with RETH), MIDDLE..., LAST.
        data = bytes(range(256)) * 23 + bytes(112)
        mtu = clc.qp_mtu_bytes(accept.qp_mtu)
        chunks = [data[i : i + mtu] for i in range(0, len(data), mtu)]
        for i, chunk in enumerate(chunks):
            psn[True] += 1
            first, last = i == 0, i == len(chunks) - 1
            op = roce.Opcode.RDMA_WRITE_FIRST if first else roce.Opcode.RDMA_WRITE_LAST if last else roce.Opcode.RDMA_WRITE_MIDDLE
            reth = roce.Reth(accept.rmb_vaddr, accept.rmb_rkey, len(data)) if first else None
            rdma(True, roce.RocePacket(roce.Bth(op, SERVER_QPN, psn[True], ackreq=last), reth=reth, payload=chunk))
        send(True, cdc.CdcMessage(seqno=1, token=accept.rmbe_alert_token, prod=cdc.Cursor(0, len(data))).encode())
        send(False, cdc.CdcMessage(seqno=1, token=confirm.rmbe_alert_token, cons=cdc.Cursor(0, len(data))).encode())
        send(False, llc.TestLink(version=2).encode(llc_order))
        send(True, llc.TestLink(version=2, response=True).encode(llc_order))
        send(True, cdc.CdcMessage(seqno=2, token=accept.rmbe_alert_token, prod=cdc.Cursor(0, len(data)), peer_conn_closed=True).encode())
        send(False, cdc.CdcMessage(seqno=2, token=confirm.rmbe_alert_token, cons=cdc.Cursor(0, len(data)), peer_conn_closed=True).encode())
        put(flow.fin(True))
        put(flow.fin(False))
        put(flow.ack(True))
        send(False, llc.DeleteLink(version=2, link_num=0, reason=0x00030000, all=True, orderly=True).encode(llc_order))


def ours(path: Path) -> list[str]:
    """Decode the capture with smctop's own codecs."""
    lines = []
    clc_buf: dict[tuple, bytes] = {}
    for n, pkt in enumerate(read_packets(path.read_bytes()), 1):
        eth, off = inet.decode_ethernet(pkt.data)
        ip, off = inet.decode_ipv4(pkt.data, off)
        where = f"{ip.src} -> {ip.dst}"
        if ip.protocol == inet.IPPROTO_TCP:
            tcp, off = inet.decode_tcp(pkt.data, off)
            payload = pkt.data[off : 14 + ip.total_length]
            key = (str(ip.src), tcp.sport)
            msgs, clc_buf[key] = clc.split_stream(clc_buf.get(key, b"") + payload)
            texts = [describe(clc.decode(m)) for m in msgs]
            if not texts:
                flags = "+".join(n for n, bit in (("SYN", 2), ("FIN", 1), ("ACK", 16)) if tcp.flags & bit)
                smc = " SMC option" if inet.has_smc_option(tcp.options) else ""
                texts = [f"TCP {flags}{smc}"]
            lines += [f"{n:3} {where:24} {t}" for t in texts]
            continue
        frame = roce.decode_frame(pkt.data, check_icrc=True)
        op = roce.Opcode(frame.packet.bth.opcode).name
        body = frame.packet.payload
        if frame.packet.reth is not None:
            text = f"{op.replace('_', ' ')} {frame.packet.reth.dma_len} bytes -> 0x{frame.packet.reth.vaddr:x} rkey 0x{frame.packet.reth.rkey:x}"
        elif op.startswith("RDMA_WRITE"):
            text = f"{op.replace('_', ' ')} {len(body)} bytes"
        elif body[:1] == b"\xfe":
            text = describe(cdc.decode(body))
        else:
            m = llc.decode(body)
            text = describe(m) + (f" [v2 length {m.order}-endian]" if m.version == 2 else "")
        lines.append(f"{n:3} {where:24} {text}  (ICRC ok, PSN {frame.packet.bth.psn})")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("out/demo-exchange.pcapng"), help="capture to write (default %(default)s)")
    ap.add_argument("--big-endian-llc", action="store_true", help="write v2 LLC lengths big-endian (as s390 does, and Wireshark expects)")
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    build(args.out, "big" if args.big_endian_llc else "little")
    print(f"SMC-Rv2 exchange written to {args.out}\n\n== decoded by smctop ==")
    print("\n".join(ours(args.out)))
    tshark = shutil.which("tshark")
    if tshark:
        print("\n== decoded by tshark (Wireshark 4.0 reads the v2 LLC length big-endian) ==")
        res = subprocess.run([tshark, "-n", "-r", str(args.out)], capture_output=True, text=True)
        print(res.stdout.rstrip())
    else:
        print("\n(tshark is not installed; scripts/setup.sh installs it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
