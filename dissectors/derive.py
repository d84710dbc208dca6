"""Events from a capture we did not write: CLC over TCP (any capture of a host), RoCEv2
frames (Soft-RoCE on the netdev, our soft provider on loopback, SMC-Rv2 on a RoCE NIC),
RoCE v1 frames (ethertype 0x8915: SMC-Rv1 on a RoCE NIC, whose frames carry the RoCE v1
GIDs of the CLC messages, not IP addresses), and exported-PDU records of SMC messages.
Seen from the wire, each message becomes one ``*.msg`` event of
the host that sent it (named by its IP address) with dir "tx", and the handshake's
outcome becomes ``conn.open``/``conn.mode``/``conn.fallback`` as the stack reports them,
so ``smc-trace summary`` reads a real host's capture as it reads ours. A CDC also gives its
receiver's ``conn.cursor`` (the sender's cursors, as a CDC's arrival is reported), and a
failover's validation CDC the sender's rewind (dissectors.wire_cursors).

Connections are numbered like Wireshark's ``tcp.stream`` (order of first appearance);
CDC messages and RDMA WRITEs are tied to connections by the alert tokens and rkeys of
CLC Accept/Confirm (and of ADD LINK / CONFIRM RKEY for the other links); links by QPN.
A frame that cannot be decoded becomes a ``trace.note`` event naming it; nothing stops.

RoCE frames go through the RC analysis (dissectors.roce_analysis) first: a frame that
repeats a PSN already captured (a retransmission) yields no event, so each message is
counted once; the analysis counts the retransmissions apart.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from stack.events import Event
from stack.wire import cdc, clc, codes, llc, roce
from stack.wire._base import WireError
from stack.wire.fields import cdc_fields, clc_cut_fields, clc_fields, cursor_text, llc_fields
from stack.wire.inet import (
    _VLAN_TAGS,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV6_HLEN,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    decode_ethernet,
    decode_ipv4,
    decode_ipv6,
    decode_tcp,
    decode_udp,
    has_smc_option,
)

from .describe import gid_text
from .pcapng import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    LINKTYPE_WIRESHARK_UPPER_PDU,
    Packet,
)
from .records import TAG_DISSECTOR_NAME, RecordError, parse_tags
from .roce_analysis import RoceAnalysis
from .wire_cursors import WireCursors
from .wire_failover import FailoverWatch

LINKTYPE_NULL = 0
LINKTYPE_IPV4 = 228
TAG_HEUR_NAME = 13
TAG_IPV4_SRC, TAG_IPV4_DST = 20, 21  # exported-PDU tags (Wireshark's exported_pdu.h)
TAG_IPV6_SRC, TAG_IPV6_DST = 22, 23
PEERNOSMC = 0x03010000
PEERDECL = 0x05000000  # the end that received a Decline (its peer declined)
FAST = True  # frames in the middle of an RDMA WRITE read from fixed offsets (tests turn it off to compare)
_MIDDLE_OF_A_WRITE = frozenset((roce.Opcode.RDMA_WRITE_MIDDLE, roce.Opcode.RDMA_WRITE_LAST))
_ROCE_PORT = struct.pack("!H", roce.ROCE_V2_PORT)
_ROCE_V1 = struct.pack("!H", roce.ETH_P_ROCE)
AHEAD_LIMIT = 1 << 20  # bytes past a gap a segment may be kept for, until the gap closes
RDMA_WRITES = {roce.Opcode.RDMA_WRITE_ONLY, roce.Opcode.RDMA_WRITE_FIRST, roce.Opcode.RDMA_WRITE_ONLY_WITH_IMMEDIATE}
SENDS = {roce.Opcode.SEND_ONLY, roce.Opcode.SEND_FIRST, roce.Opcode.SEND_ONLY_WITH_IMMEDIATE, roce.Opcode.UC_SEND_ONLY}


_IP_TYPES = (ETH_P_IP, ETH_P_IPV6)
_NETWORK_TYPES = (ETH_P_IP, ETH_P_IPV6, roce.ETH_P_ROCE)
_READ_LINKTYPES = frozenset((LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_NULL))
_NULL_FAMILIES = (2, 10, 24, 28, 30)  # AF_INET; AF_INET6 as Linux, NetBSD/OpenBSD, FreeBSD and macOS number it


def _network_offset(p: Packet) -> tuple[int, int] | None:
    """Where the network layer starts in a captured frame (after its 802.1Q / 802.1ad tags:
    libpcap puts a VLAN's tag back into a Linux cooked header of ``tcpdump -i any``) and the
    protocol it is (an ethertype: IPv4, IPv6, or RoCE v1's GRH), or None when the frame
    carries something else."""
    d = p.data
    if p.linktype == LINKTYPE_ETHERNET:
        eth, off = decode_ethernet(d)
        return (off, eth.ethertype) if eth.ethertype in _NETWORK_TYPES else None
    if p.linktype in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2):
        off, at = (16, 14) if p.linktype == LINKTYPE_LINUX_SLL else (20, 0)
        if len(d) < off:
            return None
        proto = struct.unpack_from("!H", d, at)[0]
        while proto in _VLAN_TAGS and len(d) >= off + 4:  # the tag's TCI, then the protocol it carries
            proto = struct.unpack_from("!H", d, off + 2)[0]
            off += 4
        return (off, proto) if proto in _NETWORK_TYPES else None
    if p.linktype in (LINKTYPE_RAW, LINKTYPE_IPV4):
        version = d[0] >> 4 if d[:1] else 0
        if version in ((4,) if p.linktype == LINKTYPE_IPV4 else (4, 6)):
            return 0, ETH_P_IP if version == 4 else ETH_P_IPV6
        return None
    if p.linktype == LINKTYPE_NULL:
        return (4, ETH_P_IP) if len(d) >= 4 and struct.unpack_from("<I", d, 0)[0] in _NULL_FAMILIES else None
    return None


def _ip_offset(p: Packet) -> int | None:
    """Where the IPv4 or IPv6 packet starts in a captured frame, or None when it carries
    something else."""
    at = _network_offset(p)
    return at[0] if at is not None and at[1] != roce.ETH_P_ROCE else None


def grh_offset(p: Packet) -> int | None:
    """Where the GRH of a RoCE v1 frame (ethertype 0x8915) starts, or None for any other frame."""
    at = _network_offset(p)
    return at[0] if at is not None and at[1] == roce.ETH_P_ROCE else None


def ip_payload(p: Packet) -> bytes | None:
    """The IPv4 or IPv6 packet inside a captured frame, or None when it carries something else."""
    off = _ip_offset(p)
    return None if off is None else p.data[off:]


def capture_point(p: Packet) -> tuple[int, bytes]:
    """Where a frame was captured, as far as the file tells: its interface and its link-layer
    header (a VLAN's tag, a cooked header's interface index and packet type). One frame seen
    twice (``tcpdump -i any`` on a host with a VLAN or a bridge, a pcapng of two interfaces)
    has one IP packet (or RoCE v1 packet) at two points."""
    at = _network_offset(p)
    return p.interface, bytes(p.data[: at[0] if at else 0])


def ip_header(ip_bytes: bytes, cut: bool) -> tuple[str, str, int, int, int]:
    """(source, destination, protocol, header end, packet end) of an IPv4 or IPv6 packet.
    IPv6 extension headers are not followed: such a packet's protocol is the next header's
    number, which is neither TCP nor UDP, so it is passed over as other traffic is."""
    if ip_bytes[:1] and ip_bytes[0] >> 4 == 6:
        ip6, off = decode_ipv6(ip_bytes, cut=cut)
        return str(ip6.src), str(ip6.dst), ip6.next_header, off, min(len(ip_bytes), off + ip6.payload_length)
    ip, off = decode_ipv4(ip_bytes, cut=cut)
    return str(ip.src), str(ip.dst), ip.protocol, off, min(len(ip_bytes), ip.total_length or len(ip_bytes))  # Ethernet padding is not payload


def not_captured(ip_bytes: bytes) -> int:
    """Bytes at the end of an IPv4 or IPv6 packet its capture did not keep (a snap length):
    its header says how long it was."""
    total = IPV6_HLEN + struct.unpack_from("!H", ip_bytes, 4)[0] if ip_bytes[0] >> 4 == 6 else struct.unpack_from("!H", ip_bytes, 2)[0]
    return max(0, total - len(ip_bytes))


@dataclass
class _Flow:
    """One TCP connection: its number, ends, and the CLC bytes each side sent."""

    conn: int
    client: tuple[str, int]
    server: tuple[str, int]
    syn_option: bool | None = None
    synack_option: bool | None = None
    next_seq: dict[tuple[str, int], int] = field(default_factory=dict)
    buf: dict[tuple[str, int], bytearray] = field(default_factory=dict)
    clc_done: set[tuple[str, int]] = field(default_factory=set)
    outcome: str | None = None  # "SMCR", "SMCD" or "TCP"
    data_seen: bool = False
    data_t: float | None = None  # when its first payload was seen
    proposal: clc.Proposal | None = None
    accept: clc.Accept | None = None
    opened: bool = False
    closed: bool = False
    fins: set[tuple[str, int]] = field(default_factory=set)
    ahead: dict[tuple[str, int], dict[int, tuple[bytes, int]]] = field(default_factory=dict)  # segments past a gap: seq -> (payload, frame)
    stuck: dict[tuple[str, int], str] = field(default_factory=dict)  # a direction whose CLC cannot be read on: why
    syn_t: float | None = None  # the client's first SYN
    syns: int = 0  # SYNs the client sent (retransmitted ones too)

    @property
    def attempt(self) -> bool:
        """A SYN offering SMC that no SYN-ACK answered (yet) and that is no connection: a
        failed SMC attempt when a RST answers it or the capture ends."""
        return bool(self.syn_option) and self.synack_option is None and not self.opened and not self.closed


@dataclass
class _Lgr:
    name: str
    qpns: dict[tuple[str, int], int] = field(default_factory=dict)  # (owner's address, QPN) -> link id
    # what the capture shows of its state, told as each end's stack tells it (lgr.state,
    # link.state, link.event): its ends (host -> role), the links both ends confirmed, and the
    # server's half of a CONFIRM LINK whose response has not come yet (link -> (host, QPN, GID))
    ends: dict[str, str] = field(default_factory=dict)
    type: str = "NONE"
    active: set[int] = field(default_factory=set)
    offered: dict[int, tuple[str, int, bytes]] = field(default_factory=dict)

    def link_of(self, qpn: int) -> int | None:
        """The link of a QP known by a guessed address (found by its number)."""
        return next((lid for (_, q), lid in self.qpns.items() if q == qpn), None)


def _gid_ip(gid: bytes | None) -> str | None:
    """The address a RoCEv2 frame of the GID's owner carries, as ``ip_header`` names it: a
    GID is the IP address of its interface, an IPv4-mapped one (::ffff:a.b.c.d) in IPv4
    frames (the IPv4 address), any other in IPv6 frames (its IPv6 text). None when there is
    no GID or it names no host (the unspecified ::), as the Wireshark plugin's host_addr."""
    if not gid or len(gid) != 16:
        return None
    addr = ipaddress.IPv6Address(bytes(gid))
    if addr.is_unspecified:
        return None
    return str(addr.ipv4_mapped or addr)


def _gid_text(gid: bytes) -> str:
    """A RoCE v1 frame's GID as its address: as ``_gid_ip`` names it, the unspecified one too."""
    return _gid_ip(gid) or "::"


class Deriver:
    """Turn packets into events, one packet at a time (``feed``), then ``finish``."""

    def __init__(self, roce: RoceAnalysis | None = None) -> None:
        self.roce = RoceAnalysis() if roce is None else roce  # retransmissions, counted apart
        self.flows: dict[frozenset, _Flow] = {}
        self.tokens: dict[int, int] = {}  # alert token -> conn
        self.rkeys: dict[int, int] = {}  # rkey -> conn
        # rkey -> the rkeys of the same RMB on every link (CONFIRM RKEY, ADD LINK's pairs): an
        # RMB is confirmed on the links there are before the CLC message that names it to its
        # connection (smcr_lgr_reg_rmbs), and a link added meanwhile gets its rkey too
        self.rkey_group: dict[int, frozenset[int]] = {}
        self.lgrs: dict[tuple[str, str], _Lgr] = {}  # (client peer id, server peer id) -> its latest lgr
        self.nlgrs = 0
        # a QP by its owner's address and number: kernels number QPs alike (both from 0x11),
        # so a QPN alone names a QP on each host. The address is its GID's (IPv4 when
        # IPv4-mapped, else IPv6). By number alone only QPs whose address was a guess (no GID,
        # or the unspecified one: the CLC sender's address stands in), when one has it.
        self.qp_lgr: dict[tuple[str, int], _Lgr] = {}
        self.qpn_guessed: dict[int, _Lgr | None] = {}
        self.conn_lgr: dict[int, str] = {}
        # a host's RoCE address (its GID's) -> the address its CLC came from, when they differ
        # (another family, interface, subnet, or a second link's port): one host, named as its
        # connections are
        self.alias: dict[str, str] = {}
        self.failovers = FailoverWatch()  # failovers from validation CDCs and their ACKs
        self.cursors = WireCursors()  # what a failover's sender writes again, what a receiver learns
        self.gid_texts: dict[bytes, str] = {}  # a RoCE v1 frame's GID -> its text (the fast path's)
        self.frames = 0
        self.opened = 0  # connections numbered in order of opening, like tcp.stream without the probes

    # ------------------------------------------------------------------ entry points

    def feed(self, p: Packet, number: int) -> Iterator[Event]:
        self.frames += 1
        t = p.timestamp_ns / 1e9
        if FAST and self._middle_of_a_write(p, number, t):
            return
        try:
            if p.linktype == LINKTYPE_WIRESHARK_UPPER_PDU:
                yield from self._exported_pdu(p.data, t)
                return
            ip_bytes = ip_payload(p)
            if ip_bytes is None:
                grh_at = grh_offset(p)
                if grh_at is not None:
                    yield from self._roce_v1(t, p, grh_at, number)
                    return
                if p.linktype not in _READ_LINKTYPES:  # counted and named, not passed over as other traffic
                    yield Event(t, "trace.note", "", fields={"frame": number, "error": f"interface {p.interface}: link type {p.linktype} "
                                                             "is not one smc-trace reads (Ethernet, Linux cooked, raw IP, BSD loopback)"})  # fmt: skip
                return
            cut = p.original_length > len(p.data)  # a snap length kept only its start
            src, dst, protocol, off, end = ip_header(ip_bytes, cut)
            if protocol == IPPROTO_TCP:
                tcp, poff = decode_tcp(ip_bytes, off)
                short = not_captured(ip_bytes) if cut else 0  # a snap length kept only the start of the segment
                yield from self._tcp(t, src, dst, tcp, ip_bytes[poff:end], number, short)
            elif protocol == IPPROTO_UDP:
                udp, poff = decode_udp(ip_bytes, off, cut=cut)
                if udp.dport == roce.ROCE_V2_PORT:
                    yield from self._roce(t, src, dst, ip_bytes[poff : off + udp.length], cut=cut and off + udp.length > len(ip_bytes),
                                          number=number, dropped=dropped_at(p), packet=ip_bytes, point=capture_point(p))  # fmt: skip
        except (WireError, RecordError, ValueError) as e:
            yield Event(t, "trace.note", "", fields={"frame": number, "error": str(e)})

    def _middle_of_a_write(self, p: Packet, number: int, t: float) -> bool:
        """A frame of an RDMA WRITE after its first (most frames of a bulk transfer): no
        message of its own, only its place in the RC analysis. Taken here from fixed offsets
        when it is a plain IPv4 RoCEv2 frame or an untagged RoCE v1 frame that the full
        decoding would accept as it is (True); anything else goes the long way (False),
        which names what is wrong."""
        d = p.data
        lt = p.linktype
        if lt == LINKTYPE_ETHERNET:
            off, proto = 14, d[12:14]
        elif lt == LINKTYPE_LINUX_SLL2:
            off, proto = 20, d[0:2]
        elif lt == LINKTYPE_LINUX_SLL:
            off, proto = 16, d[14:16]
        else:
            return False
        if proto == b"\x08\x00":
            # IPv4 with a 20-byte header (what the kernel sends), UDP, then BTH
            if len(d) < off + 28 + roce.BTH_LEN or d[off] != 0x45 or d[off + 9] != IPPROTO_UDP:
                return False
            total, sport_dport, udp_len = struct.unpack_from("!H", d, off + 2)[0], d[off + 22 : off + 24], struct.unpack_from("!H", d, off + 24)[0]
            if sport_dport != _ROCE_PORT:
                return False
            ip_len = len(d) - off
            cut = p.original_length > len(d) and 20 + udp_len > ip_len  # a snap length took the end of the datagram
            if total < 28 or udp_len < 8 or (not cut and (total > ip_len or udp_len > ip_len - 20)):
                return False
            bth, payload = off + 28, udp_len - 8
            src, dst = socket.inet_ntoa(d[off + 12 : off + 16]), socket.inet_ntoa(d[off + 16 : off + 20])
        elif proto == _ROCE_V1:
            # the GRH (IPv6's layout, next header BTH), then BTH
            if len(d) < off + roce.GRH_LEN + roce.BTH_LEN or d[off] >> 4 != 6 or d[off + 6] != roce.GRH_NEXT_BTH:
                return False
            payload = struct.unpack_from("!H", d, off + 4)[0]
            cut = p.original_length > len(d) and roce.GRH_LEN + payload > len(d) - off
            if not cut and roce.GRH_LEN + payload > len(d) - off:
                return False
            bth = off + roce.GRH_LEN
            src, dst = self._gid_text(d[off + 8 : off + 24]), self._gid_text(d[off + 24 : off + 40])
        else:
            return False
        opcode = d[bth]
        if opcode not in _MIDDLE_OF_A_WRITE:
            return False
        if cut:
            if payload < roce.BTH_LEN:
                return False
        elif payload < roce.BTH_LEN + roce.ICRC_LEN or payload - roce.BTH_LEN - roce.ICRC_LEN < (d[bth + 1] >> 4) & 3:
            return False  # too short for its pad count: the long way says so
        dest_qp, psn = struct.unpack_from("!II", d, bth + 4)
        dropped = dropped_at(p)
        self.roce.feed(number, t, src, dst, opcode, dest_qp & 0xFFFFFF, psn & 0xFFFFFF, None, dropped == "tx", dropped == "rx", d[off:],
                       (p.interface, bytes(d[:off])))  # fmt: skip
        return True

    def _gid_text(self, gid: bytes) -> str:
        """``_gid_text`` of a RoCE v1 frame's GID, remembered: a bulk transfer's frames repeat two."""
        text = self.gid_texts.get(gid)
        if text is None:
            text = _gid_text(gid)
            if len(self.gid_texts) < 4096:  # bounded: a capture of many hosts only misses the cache
                self.gid_texts[gid] = text
        return text

    def _stuck_note(self, t: float, number: int, flow: _Flow, src: tuple[str, int]) -> Event:
        return Event(t, "trace.note", "", fields={"frame": number, "error": f"CLC from {src[0]}:{src[1]} not read on: {flow.stuck[src]}"})

    def finish(self, t: float) -> Iterator[Event]:
        """Connections that offered SMC and carried data without CLC: they fell back, each end
        as the kernel would say (dated when their data began, not when the capture ended).
        A direction whose CLC waited behind a gap that never closed is named."""
        for flow in self.flows.values():
            for src, pending in flow.ahead.items():
                if pending and src not in flow.clc_done and src not in flow.stuck:
                    first = min(pending, key=lambda seq: (seq - flow.next_seq.get(src, seq)) & 0xFFFFFFFF)
                    flow.stuck[src] = f"{(first - flow.next_seq.get(src, first)) & 0xFFFFFFFF} bytes of its TCP stream before this frame were not captured"
                    yield self._stuck_note(t, pending[first][1], flow, src)
        for flow in self.flows.values():
            if flow.outcome is None and flow.data_seen and flow.opened:
                flow.outcome = "TCP"
                yield from self._no_clc(flow)
            elif flow.attempt:
                yield self._attempt(flow, "unanswered", "no SYN-ACK in the capture")
        yield from self.failovers.finish()

    def _attempt(self, flow: _Flow, outcome: str, cause: str, t: float | None = None) -> Event:
        """A failed SMC attempt, dated at its first SYN, named by its client (``t``: when the RST came)."""
        flow.closed = True
        fields = {"outcome": outcome, "local": f"{flow.client[0]}:{flow.client[1]}", "peer": f"{flow.server[0]}:{flow.server[1]}", "cause": cause}
        if flow.syns > 1:
            fields["syns"] = flow.syns
        if t is not None and flow.syn_t is not None:
            fields["wait_ms"] = round((t - flow.syn_t) * 1000, 3)
        return Event(flow.syn_t if flow.syn_t is not None else t or 0.0, "conn.attempt", flow.client[0], fields=fields)

    def _no_clc(self, flow: _Flow) -> Iterator[Event]:
        """An end that offered SMC in its SYN or SYN-ACK and whose peer did not falls back
        with PEERNOSMC (smc_connect, smc_listen_work); an end that offered nothing is a plain
        TCP socket (reason 0); both offered and no CLC seen: the capture missed it (0)."""
        t = flow.data_t
        offered = {flow.client: flow.syn_option, flow.server: flow.synack_option}
        for end, other in ((flow.client, flow.server), (flow.server, flow.client)):
            reason = PEERNOSMC if offered[end] and not offered[other] else 0
            fields = {"reason": reason, "reason_text": codes.format_reason(reason) if reason else "not SMC", "cause": "no CLC handshake on this connection"}
            yield Event(t, "conn.fallback", end[0], conn=flow.conn, fields=fields)
            yield Event(t, "conn.mode", end[0], conn=flow.conn, fields={"mode": "TCP", "reason": reason})
            yield _active(t, end[0], None, None, flow.conn)

    # ------------------------------------------------------------------ TCP and CLC

    def _flow(self, src: tuple[str, int], dst: tuple[str, int]) -> _Flow:
        key = frozenset((src, dst))
        flow = self.flows.get(key)
        if flow is None:  # the sender of the first segment seen, until a SYN or a CLC message says otherwise
            flow = self.flows[key] = _Flow(-1, src, dst)
        return flow

    def _opened(self, t: float, flow: _Flow) -> list[Event]:
        """conn.open for both ends, once the connection is real and SMC's business: a SYN
        answered by a RST (a port probe) is no connection, nor is TCP that never offered SMC
        (no option in its SYN or SYN-ACK, no CLC: an ssh session in the same capture)."""
        if flow.opened:
            return []
        flow.opened = True
        flow.conn = self.opened
        self.opened += 1
        ends = (("client", flow.client, flow.server), ("server", flow.server, flow.client))
        return [Event(t, "conn.open", end[0], conn=flow.conn, fields={"role": role, "local": f"{end[0]}:{end[1]}", "peer": f"{other[0]}:{other[1]}"})
                for role, end, other in ends]  # fmt: skip

    def _tcp(self, t: float, src_ip: str, dst_ip: str, tcp, payload: bytes, number: int = 0, short: int = 0) -> Iterator[Event]:
        src, dst = (src_ip, tcp.sport), (dst_ip, tcp.dport)
        if tcp.flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
            old = self.flows.get(frozenset((src, dst)))
            if old is not None and old.next_seq.get(src) != (tcp.seq + 1) & 0xFFFFFFFF and (old.opened or old.closed or old.attempt):
                del self.flows[frozenset((src, dst))]  # the 4-tuple used again (a new ISN): a new connection
                if old.outcome is None and old.data_seen and old.opened:  # what finish() would have said of it
                    old.outcome = "TCP"
                    yield from self._no_clc(old)
                elif old.attempt:  # a SYN of its own never answered
                    yield self._attempt(old, "unanswered", "no SYN-ACK in the capture")
        flow = self._flow(src, dst)
        if tcp.flags & TCP_SYN:
            has = has_smc_option(tcp.options)
            if tcp.flags & TCP_ACK:  # the SYN-ACK: its sender is the server
                flow.client, flow.server = dst, src
                flow.synack_option = has
                if flow.syn_option or has:
                    yield from self._opened(t, flow)
            else:
                flow.client, flow.server = src, dst
                flow.syn_option = has
                flow.syns += 1
                flow.syn_t = t if flow.syn_t is None else flow.syn_t
            flow.next_seq[src] = (tcp.seq + 1) & 0xFFFFFFFF
            return
        if tcp.flags & TCP_RST and flow.attempt and src == flow.server:  # connection refused: the SYN's answer
            yield self._attempt(flow, "refused", f"RST from {src[0]}:{src[1]}", t)
            return
        if tcp.flags & (TCP_FIN | TCP_RST) and flow.opened and not flow.closed:
            flow.fins.add(src)
            if tcp.flags & TCP_RST or len(flow.fins) == 2:
                flow.closed = True
                for end in (flow.client, flow.server):
                    yield Event(
                        t, "conn.state", end[0], conn=flow.conn, fields={"old": "", "new": "CLOSED", "cause": "RST" if tcp.flags & TCP_RST else "FIN both ways"}
                    )
        if not payload and not short:
            return
        nxt = flow.next_seq.setdefault(src, tcp.seq)
        delta = (tcp.seq - nxt) & 0xFFFFFFFF
        if delta >= 0x80000000:  # a retransmission, perhaps overlapping: keep only the new bytes
            overlap = (nxt - tcp.seq) & 0xFFFFFFFF
            if overlap >= len(payload) + short:
                return
            payload = payload[overlap:]
        elif delta:  # ahead of what came: a segment the capture has later (reordered) or lost
            if src not in flow.clc_done and src not in flow.stuck and delta < AHEAD_LIMIT:
                flow.ahead.setdefault(src, {})[tcp.seq] = (bytes(payload) if not short else b"", number)
            return
        if flow.data_t is None:
            flow.data_t = t
        if short:  # the capture kept only the start of this segment (read below as far as it goes)
            flow.next_seq[src] = (nxt + len(payload) + short) & 0xFFFFFFFF
        else:
            flow.next_seq[src] = (nxt + len(payload)) & 0xFFFFFFFF
            pending = flow.ahead.get(src)
            while pending and flow.next_seq[src] in pending:  # the gap closed: what waited behind it follows
                more, _ = pending.pop(flow.next_seq[src])
                if not more:  # a cut segment waited there
                    break
                payload += more
                flow.next_seq[src] = (flow.next_seq[src] + len(more)) & 0xFFFFFFFF
        if src in flow.clc_done:
            flow.data_seen = True
            return
        if src in flow.stuck:
            return
        buf = flow.buf.setdefault(src, bytearray())
        buf += payload
        while len(buf) >= 8:
            if bytes(buf[:4]) not in (clc.EYECATCHER_SMCR, clc.EYECATCHER_SMCD):
                flow.clc_done.add(src)
                flow.data_seen = True
                buf.clear()
                if flow.syn_option or flow.synack_option:  # offered SMC, and this is not CLC: a fallback to come
                    yield from self._opened(t, flow)
                break
            length = struct.unpack_from("!H", buf, 5)[0]
            if len(buf) < length:
                break
            raw = bytes(buf[:length])
            del buf[:length]
            yield from self._clc(t, flow, src, raw, number)
        if short and src not in flow.clc_done:
            yield from self._cut_clc(t, flow, src, number, short)

    def _cut_clc(self, t: float, flow: _Flow, src: tuple[str, int], number: int, short: int) -> Iterator[Event]:
        """The capture kept only the start of ``src``'s segment (``short`` bytes of it not): the
        CLC message it cuts is read as far as it was kept. When the message ends with the
        segment, the next segment starts the next message; else what follows cannot be told
        apart, and CLC from ``src`` is read no further."""
        buf = flow.buf.setdefault(src, bytearray())
        raw = bytes(buf)
        buf.clear()
        length = struct.unpack_from("!H", raw, 5)[0] if len(raw) >= clc.HEADER_LEN else None
        if length != len(raw) + short:
            flow.stuck[src] = f"its segment was cut by the capture's snap length ({short} bytes of TCP payload not captured)"
            yield self._stuck_note(t, number, flow, src)
        if length is None:
            return
        cut = clc.decode_cut(raw)
        yield from self._clc(t, flow, src, raw, number, cut)
        if src not in flow.stuck:
            name = type(cut.message).__name__ if cut.message is not None else "SMC-D Accept/Confirm"
            yield Event(t, "trace.note", "", fields={"frame": number, "error": f"CLC {name} from {src[0]}:{src[1]} cut by the capture's snap length: "
                                                     f"{len(raw)} of its {length} bytes captured, its fields past them unknown"})  # fmt: skip

    def _clc(self, t: float, flow: _Flow, src: tuple[str, int], raw: bytes, number: int = 0, cut: clc.CutMessage | None = None) -> Iterator[Event]:
        """One CLC message and what it tells. ``cut``: the message as far as a capture kept it
        (``raw``, its start); what it did not keep is not given, and unless its fixed fields
        all were, it tells nothing more."""
        msg = clc.decode(raw) if cut is None else cut.message
        host = src[0]
        # the Proposal and the Confirm come from the client, the Accept from the server: when
        # the capture missed the SYN, the first segment's sender was only a guess
        from_client = isinstance(msg, (clc.Proposal, clc.Confirm))
        if (from_client or isinstance(msg, clc.Accept)) and not flow.opened and (src == flow.client) != from_client:
            flow.client, flow.server = flow.server, flow.client
        yield from self._opened(t, flow)
        yield Event(t, "clc.msg", host, conn=flow.conn, fields={"dir": "tx", **(clc_fields(msg, raw) if cut is None else clc_cut_fields(cut, raw))})
        if cut is not None and not cut.complete:
            return
        if isinstance(msg, (clc.Proposal, clc.Accept, clc.Confirm)):
            self._tie(msg.gid, host)
        if isinstance(msg, clc.Proposal):
            flow.proposal = msg
        elif isinstance(msg, (clc.Accept, clc.Confirm)):
            self.tokens[msg.rmbe_alert_token] = flow.conn
            for rkey in self.rkey_group.get(msg.rmb_rkey, (msg.rmb_rkey,)):  # the RMB on every link
                self.rkeys[rkey] = flow.conn
            if isinstance(msg, clc.Accept):
                flow.accept = msg
            else:
                accept = flow.accept
                server_ip = flow.server[0]
                if accept is None:  # its segment was not captured: the server's QP, rkey and token are unknown
                    note = f"the CLC Accept of the connection {flow.client[0]}:{flow.client[1]} -> {flow.server[0]}:{flow.server[1]} was not captured"
                    yield Event(t, "trace.note", "", fields={"frame": number, "error": note + " (the server's QP, RMB and alert token are unknown)"})
                lgr = None
                if not msg.first_contact and accept is not None and accept.qpn:  # the group whose link it uses
                    gid_ip = _gid_ip(accept.gid)
                    lgr = self._qp(gid_ip or server_ip, accept.qpn, known=gid_ip is not None)
                if lgr is None:  # first contact makes a new link group (a VLAN, a second group between the hosts)
                    lgr = self._lgr(msg.peer_id.hex(), accept.peer_id.hex() if accept else "", new=msg.first_contact)
                if not lgr.ends:  # its ends, as the handshake that made it (or the first one seen) names them
                    lgr.ends = {flow.client[0]: "client", flow.server[0]: "server"}
                    if msg.first_contact:
                        for end, role in lgr.ends.items():
                            yield Event(t, "lgr.state", end, lgr.name, fields={"old": "NONE", "new": "NONE", "cause": "created", "role": role,
                                                                              "version": msg.version})  # fmt: skip
                self._learn_qp(msg.gid, host, msg.qpn, lgr, 1)
                if accept is not None:
                    self._learn_qp(accept.gid, server_ip, accept.qpn, lgr, 1)
                self.conn_lgr[flow.conn] = lgr.name
                flow.outcome = "SMCR"
                flow.clc_done.update((flow.client, flow.server))
                for end, own, peer in ((flow.client, msg, accept), (flow.server, accept, msg)):
                    fields = {"mode": "SMCR", "version": msg.version, "first_contact": msg.first_contact}
                    # each end's RMB and token as the CLC announced them: the producer cursors of
                    # the CDCs run over the receiver's RMB, so counting bytes from them needs its size
                    if own is not None:
                        fields.update(token=own.rmbe_alert_token, rmb_size=clc.rmbe_size_bytes(own.rmbe_size))
                        self.cursors.rmb_size(flow.conn, end[0], fields["rmb_size"])
                    if peer is not None:
                        fields.update(peer_token=peer.rmbe_alert_token, peer_rmb_size=clc.rmbe_size_bytes(peer.rmbe_size))
                    yield Event(t, "conn.mode", end[0], lgr.name, 1, flow.conn, fields)
                    yield _active(t, end[0], lgr.name, 1, flow.conn)
        elif isinstance(msg, clc.SmcdAcceptConfirm) and msg.type == clc.ClcType.CONFIRM:
            # SMC-D (ISM between two guests of one machine): the handshake ends as SMC-R's does,
            # and the data then moves through ISM memory, which no network capture sees
            flow.outcome = "SMCD"
            flow.clc_done.update((flow.client, flow.server))
            for end in (flow.client, flow.server):
                yield Event(t, "conn.mode", end[0], conn=flow.conn, fields={"mode": "SMCD", "version": msg.version, "first_contact": msg.first_contact})
                yield _active(t, end[0], None, None, flow.conn)
        elif isinstance(msg, clc.Decline):
            flow.outcome = "TCP"
            flow.clc_done.update((flow.client, flow.server))
            yield from self._fallback(t, flow, msg.diagnosis, f"CLC Decline from {host}", declined_by=src)

    def _fallback(self, t: float, flow: _Flow, reason: int, why: str, declined_by: tuple[str, int] | None = None) -> Iterator[Event]:
        """Both ends fall back. With a Decline, each end's own view, as the kernel keeps it:
        the end that declined has its reason, the other PEERDECL with the peer's diagnosis."""
        for end in (flow.client, flow.server):
            own = reason if declined_by is None or end == declined_by else PEERDECL
            fields = {"reason": own, "reason_text": codes.format_reason(own) if own else "not SMC", "cause": why}
            if declined_by is not None:
                fields["declined_by"] = declined_by[0]
                if end != declined_by:
                    fields["peer_diagnosis"], fields["peer_diagnosis_text"] = reason, codes.format_reason(reason) if reason else ""
            yield Event(t, "conn.fallback", end[0], conn=flow.conn, fields=fields)
            yield Event(t, "conn.mode", end[0], conn=flow.conn, fields={"mode": "TCP", "reason": own})
            yield _active(t, end[0], None, None, flow.conn)

    def _lgr(self, client_id: str, server_id: str, new: bool = False) -> _Lgr:
        lgr = self.lgrs.get((client_id, server_id))
        if lgr is None or new:
            self.nlgrs += 1
            lgr = self.lgrs[(client_id, server_id)] = _Lgr(f"lgr{self.nlgrs}")
        return lgr

    def _learn_qp(self, gid: bytes, sender: str, qpn: int, lgr: _Lgr, link: int | None) -> None:
        """The QP ``qpn`` of the host whose GID is ``gid`` (its RoCE address, see ``_gid_ip``;
        without one the address it sent from stands in) belongs to ``lgr``, as link ``link``."""
        if not qpn:
            return
        ip = _gid_ip(gid)
        if link is not None:
            lgr.qpns.setdefault((ip or sender, qpn), link)
        self.qp_lgr[(ip or sender, qpn)] = lgr
        if ip is None:
            known = self.qpn_guessed.get(qpn, lgr)
            self.qpn_guessed[qpn] = lgr if known is lgr else None  # two guessed QPs with one number: ambiguous

    def _same_rmb(self, known: int, *others: int) -> None:
        """``known`` and ``others`` are one RMB's rkeys on several links: each names the
        connection ``known`` names (now, or when a CLC message names any of them later)."""
        group = set(self.rkey_group.get(known, (known,)))
        for rkey in others:
            group.update(self.rkey_group.get(rkey, (rkey,)))
        frozen = frozenset(group)
        for rkey in frozen:
            self.rkey_group[rkey] = frozen
        conn = self.rkeys.get(known)
        if conn is not None:
            for rkey in frozen:
                self.rkeys[rkey] = conn

    def host_of(self, ip: str) -> str:
        """The name of the host a RoCE frame came from (see ``alias``)."""
        return self.alias.get(ip, ip)

    def _tie(self, gid: bytes, sender: str) -> None:
        """The host ``sender`` names has the GID ``gid`` (a Proposal's, an Accept's, a
        Confirm's, an ADD LINK's): its RoCE frames, over IPv4 when the GID is an IPv4-mapped
        one and over IPv6 otherwise, are that host's too, though they come from another
        address than its CLC did: the other family, another interface (a RoCE port mapped by
        PNET ID), another subnet (SMC-Rv2), a second link's port."""
        ip = _gid_ip(gid)
        if ip is not None and ip != sender:
            self.alias[ip] = self.host_of(sender)

    def _qp(self, ip: str, qpn: int, known: bool = False) -> _Lgr | None:
        """The link group of the QP ``qpn`` of ``ip``. ``known``: the address is the QP's own
        (its GID's), so only it counts: the same QPN on another host is another QP. Otherwise
        (a frame's address) a QP learnt under a guessed address may be found by its number."""
        lgr = self.qp_lgr.get((ip, qpn))
        return lgr if lgr is not None or known else self.qpn_guessed.get(qpn)

    # ------------------------------------------------------------------ RoCEv2 and RoCE v1

    def _roce_v1(self, t: float, p: Packet, at: int, number: int) -> Iterator[Event]:
        """A RoCE v1 frame (SMC-Rv1 on a RoCE NIC: GRH, then BTH): its addresses are its GIDs,
        named as ``_gid_ip`` names a CLC message's GID, so they meet the QPs and hosts the
        handshake learnt."""
        d = p.data
        cut = p.original_length > len(d)
        grh, boff = roce.decode_grh(d, at, cut=cut)
        if grh.next_header != roce.GRH_NEXT_BTH:
            raise ValueError(f"RoCE v1 GRH: next header 0x{grh.next_header:02x} is not an IBA transport header (0x1b)")
        end = boff + grh.paylen
        yield from self._roce(t, _gid_text(grh.sgid), _gid_text(grh.dgid), d[boff:end], cut=cut and end > len(d), number=number,
                              dropped=dropped_at(p), packet=d[at:], point=capture_point(p))  # fmt: skip

    def _roce(self, t: float, src: str, dst: str, udp_payload: bytes, cut: bool = False, number: int = 0,
              dropped: str | None = None, packet: bytes | None = None, point=None) -> Iterator[Event]:  # fmt: skip
        """``packet`` and ``point``: the frame's IP packet and where it was captured, for the
        analysis to tell a frame captured twice from one sent twice."""
        if len(udp_payload) < roce.BTH_LEN + (0 if cut else roce.ICRC_LEN):
            raise ValueError(f"RoCE packet of {len(udp_payload)} bytes (BTH to ICRC) is too short for BTH and ICRC")
        if cut:  # the snap length took the ICRC and the end of the data: the headers are what counts
            if udp_payload[0] in SENDS:
                raise ValueError(f"a SEND cut to {len(udp_payload)} bytes by the capture's snap length cannot be decoded")
            pkt = roce.decode_packet(udp_payload, pad_cut=True)
        else:
            pkt = roce.decode_packet(udp_payload[: -roce.ICRC_LEN])
        bth = pkt.bth
        mark = self.roce.feed(number, t, src, dst, bth.opcode, bth.dest_qp, bth.psn, pkt.aeth.syndrome if pkt.aeth else None,
                              dropped == "tx", dropped == "rx", packet, point)  # fmt: skip
        if dropped == "rx" or (mark is not None and mark.copy):
            return  # a retransmission, a frame captured twice, or a receiver's copy of a frame that did not arrive: not a new message
        if bth.opcode == roce.Opcode.ACKNOWLEDGE and pkt.aeth is not None and pkt.aeth.syndrome >> 5 == 0:
            yield from self.failovers.ack(t, src, dst, bth.psn)
            return
        yield from self._ib(t, src, dst, bth.opcode, bth.dest_qp, pkt.payload, pkt.reth, bth.psn)

    def _ib(self, t: float, src: str, dst: str, opcode: int, dest_qp: int, payload: bytes, reth, psn: int = 0) -> Iterator[Event]:
        lgr = self._qp(dst, dest_qp)
        link = (lgr.qpns.get((dst, dest_qp)) or lgr.link_of(dest_qp)) if lgr else None
        lgr_name = lgr.name if lgr else None
        if opcode in SENDS and payload:
            if payload[0] == cdc.CDC_TYPE:
                msg = cdc.decode(payload)
                conn = self.tokens.get(msg.token)
                host, group = self.host_of(src), self.conn_lgr.get(conn, lgr_name)
                again = self.cursors.cdc(host, conn, msg) if conn is not None else None
                if again:  # as the stack reports its failover's cursor, before its validation CDC
                    yield Event(
                        t, "conn.cursor", host, group, link, conn, {"side": "tx", "cause": "failover", "rewound": again[0], "prod": cursor_text(again[1])}
                    )
                yield Event(t, "cdc.msg", host, group, link, conn, {"dir": "tx", **cdc_fields(msg)})
                seen = self.cursors.received(host, conn, msg) if conn is not None else None
                if seen:  # the receiver's cursors, as the stack reports a CDC's arrival
                    yield Event(t, "conn.cursor", seen.pop("receiver"), group, link, conn,
                                {**seen, "prod": cursor_text(seen["prod"]), "cons": cursor_text(seen["cons"])})  # fmt: skip
                if msg.failover_validation:
                    yield Event(t, "link.event", host, group, link, conn, {"event": "failover_validation", "seqno": msg.seqno})
                yield from self.failovers.cdc(t, host, group, link, conn, msg.failover_validation, src, dst, psn)
                return
            msg = llc.decode(payload)
            raw = payload[: len(msg.encode(msg.order))]
            yield Event(t, "llc.msg", self.host_of(src), lgr_name, link, None, {"dir": "tx", **llc_fields(msg, raw)})
            yield from self._llc_effects(t, src, lgr, link, msg)
        elif opcode in RDMA_WRITES and reth is not None:
            conn = self.rkeys.get(reth.rkey)
            yield Event(t, "rdma.write", self.host_of(src), self.conn_lgr.get(conn, lgr_name), link, conn,
                        {"vaddr": reth.vaddr, "rkey": reth.rkey, "length": reth.dma_len})  # fmt: skip

    def _link_confirmed(self, t: float, host: str, lgr: _Lgr, msg: llc.ConfirmLink) -> Iterator[Event]:
        """CONFIRM LINK: the server's request names its QP and GID, the client's response its
        own; with both, the link is up at both ends (smc_llc_cli_conf_link and
        smc_llc_srv_conf_link set it active): each end's link as its stack tells it."""
        if not msg.response:
            lgr.offered[msg.link_num] = (host, msg.qpn, msg.gid)
            return
        offer = lgr.offered.pop(msg.link_num, None)
        ends = [(host, msg.qpn, msg.gid)] + ([offer] if offer is not None else [])
        for i, (end, qpn, gid) in enumerate(ends):
            peer = ends[1 - i] if len(ends) == 2 else None
            fields = {"event": "added", "qpn": qpn, "gid": gid_text(gid)}
            if peer is not None:
                fields.update(peer_qpn=peer[1], peer_gid=gid_text(peer[2]))
            yield Event(t, "link.event", end, lgr.name, msg.link_num, None, fields)
            yield Event(t, "link.state", end, lgr.name, msg.link_num, None, {"old": "LINK_ACTIVATING", "new": "LINK_ACTIVE", "cause": "CONFIRM LINK"})
        lgr.active.add(msg.link_num)
        yield from self._lgr_type(t, lgr, "CONFIRM LINK")

    def _lgr_type(self, t: float, lgr: _Lgr, cause: str) -> Iterator[Event]:
        """The group's type from its links as the capture shows them (one: SINGLE, more: SYM;
        an asymmetric group cannot be told from the wire), told at each end when it changes."""
        new = "NONE" if not lgr.active else "SINGLE" if len(lgr.active) == 1 else "SYM"
        if new == lgr.type:
            return
        old, lgr.type = lgr.type, new
        fields = {"old": old, "new": new, "cause": cause}
        if new != "NONE":  # smc-tools' Crit: no failover path (codes.LgrType.critical)
            fields["crit"] = new == "SINGLE"
        for end in lgr.ends:
            yield Event(t, "lgr.state", end, lgr.name, fields=dict(fields))

    def _llc_effects(self, t: float, src: str, lgr: _Lgr | None, link: int | None, msg) -> Iterator[Event]:
        name = lgr.name if lgr else None
        if isinstance(msg, llc.ConfirmLink) and lgr is not None:
            self._learn_qp(msg.gid, src, msg.qpn, lgr, None)
            lgr.qpns[(_gid_ip(msg.gid) or src, msg.qpn)] = msg.link_num
            for key, lid in list(lgr.qpns.items()):
                if lid == 1 and link == 1:
                    lgr.qpns[key] = msg.link_num
            yield from self._link_confirmed(t, self.host_of(src), lgr, msg)
        elif isinstance(msg, llc.AddLink) and lgr is not None and not msg.rejected and msg.qpn:
            self._tie(msg.gid, self.host_of(src))  # the sender's next link: the same host
            self._learn_qp(msg.gid, src, msg.qpn, lgr, None)
            lgr.qpns[(_gid_ip(msg.gid) or src, msg.qpn)] = msg.link_num
            for r in msg.rkeys:
                self._same_rmb(r.rkey, r.new_rkey)
        elif isinstance(msg, llc.AddLinkCont):
            for r in msg.rkeys:
                self._same_rmb(r.rkey, r.new_rkey)
        elif isinstance(msg, llc.ConfirmRkey):
            self._same_rmb(msg.rkey, *(o.rkey for o in msg.others))
        elif isinstance(msg, llc.DeleteLink) and not msg.response:
            yield Event(t, "link.event", self.host_of(src), name, None if msg.all else msg.link_num, None,
                        {"event": "deleted", "all": msg.all, "orderly": msg.orderly, "reason": msg.reason,
                         "reason_text": codes.DELETE_LINK_REASONS.format(msg.reason)})  # fmt: skip
            yield from self.failovers.delete_link(t, self.host_of(src), name, None if msg.all else msg.link_num)
            if lgr is not None:
                gone = sorted(lgr.active) if msg.all else [msg.link_num] if msg.link_num in lgr.active else []
                for lid in gone:  # at both ends: the request's receiver takes its link down too (smc_llc_process_cli_delete_link)
                    lgr.active.discard(lid)
                    for end in lgr.ends:
                        yield Event(t, "link.state", end, name, lid, None, {"old": "LINK_ACTIVE", "new": "LINK_UNUSED", "cause": "DELETE LINK"})
                yield from self._lgr_type(t, lgr, "DELETE LINK")

    # ------------------------------------------------------------------ exported PDUs

    def _exported_pdu(self, data: bytes, t: float) -> Iterator[Event]:
        tags, pos = parse_tags(data)
        name = (tags.get(TAG_DISSECTOR_NAME) or tags.get(TAG_HEUR_NAME) or b"").rstrip(b"\0").decode("ascii", "replace")
        body = data[pos:]
        src, dst = _pdu_address(tags, TAG_IPV4_SRC, TAG_IPV6_SRC), _pdu_address(tags, TAG_IPV4_DST, TAG_IPV6_DST)
        if name in ("smc", "smc_tcp"):
            flow = self._flow((src, 0), (dst, 0))
            yield from self._clc(t, flow, flow.client if src == flow.client[0] else flow.server, body)
        elif name in ("smcr_infiniband", "smc.infiniband"):
            yield from self._ib(t, src, dst, roce.Opcode.SEND_ONLY, 0, body, None)


def _pdu_address(tags: dict, v4: int, v6: int) -> str:
    """An exported PDU's source or destination address: its IPv4 tag, else its IPv6 tag, as
    text ("" when it has neither, or one of the wrong length)."""
    if len(tags.get(v4, b"")) == 4:
        return str(ipaddress.IPv4Address(tags[v4]))
    if len(tags.get(v6, b"")) == 16:
        return str(ipaddress.IPv6Address(tags[v6]))
    return ""


def _active(t: float, host: str, lgr: str | None, link: int | None, conn: int) -> Event:
    """An end's handshake is done, over SMC-R or fallen back: ACTIVE, as the stack and the
    kernel (smcss) say of an open connection either way."""
    return Event(t, "conn.state", host, lgr, link, conn, {"old": "INIT", "new": "ACTIVE", "cause": "handshake_done"})


def dropped_at(p: Packet) -> str | None:
    """ "tx" or "rx" for a frame smc-trace's recorder kept though fault injection dropped it
    (its comment says "dropped (tx at ...)": the sender's copy, never on the wire; "rx": a
    receiver's copy of a frame whose sender's copy is recorded too), else None."""
    for c in p.comments:
        if c.startswith("dropped (tx"):
            return "tx"
        if c.startswith("dropped (rx"):
            return "rx"
    return None


def observe(analysis: RoceAnalysis, p: Packet, number: int) -> None:
    """Feed one captured frame to the RC analysis (frames that are not RoCEv2 are ignored):
    for a recording, whose events come from its records, not from the frames."""
    dropped = dropped_at(p)
    ip_bytes = ip_payload(p)
    if ip_bytes is None or len(ip_bytes) < 20 or ip_bytes[9] != IPPROTO_UDP:
        return
    off = (ip_bytes[0] & 0x0F) * 4
    if len(ip_bytes) < off + 8 + roce.BTH_LEN or struct.unpack_from("!H", ip_bytes, off + 2)[0] != roce.ROCE_V2_PORT:
        return
    b = off + 8
    opcode = ip_bytes[b]
    dest_qp, psn = struct.unpack_from("!II", ip_bytes, b + 4)
    syndrome = ip_bytes[b + roce.BTH_LEN] if opcode in (0x11, 0x12) and len(ip_bytes) > b + roce.BTH_LEN else None
    analysis.feed(number, p.timestamp_ns / 1e9, ".".join(map(str, ip_bytes[12:16])), ".".join(map(str, ip_bytes[16:20])),
                  opcode, dest_qp & 0xFFFFFF, psn & 0xFFFFFF, syndrome, dropped == "tx", dropped == "rx", ip_bytes, capture_point(p))  # fmt: skip


def derive_events(packets: Iterable[Packet], roce: RoceAnalysis | None = None) -> Iterator[Event]:
    d = Deriver(roce)
    t = 0.0
    for n, p in enumerate(packets, 1):
        t = p.timestamp_ns / 1e9
        yield from d.feed(p, n)
    yield from d.finish(t)
