"""tshark 4.0 as an independent oracle for every message type our codecs encode.

One capture holds them all: CLC messages as the TCP payload of one connection (whose
SYN carries the SMC option), LLC and CDC messages as the payload of RoCEv2 RC SEND ONLY
frames with a correct ICRC, and a few RDMA WRITE / ACK / immediate packets. tshark
decodes it once (``-T json --no-duplicate-keys``); every message's main fields must
equal ours, and no frame may carry ``_ws.malformed`` except where Wireshark 4.0 itself
is known to be wrong. Those cases are asserted as what they are, each with its reason,
so the test notices the day Wireshark is fixed.
"""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
import sys
import zlib
from dataclasses import dataclass, field

import pytest
from support import tshark
from support.tshark import num

from dissectors.pcapng import LINKTYPE_ETHERNET, PcapngWriter
from dissectors.tcpflow import Endpoint, TcpFlow
from stack.wire import cdc, clc, llc, roce

pytestmark = pytest.mark.oracle

CLIENT, SERVER = ipaddress.IPv4Address("127.20.0.1"), ipaddress.IPv4Address("127.20.0.2")
RNG = random.Random(20261125)


def rb(n: int) -> bytes:
    return bytes(RNG.getrandbits(8) for _ in range(n))


def ru(bits: int) -> int:
    return RNG.getrandbits(bits)


def v4gid(ip: str) -> bytes:
    return ipaddress.IPv6Address("::ffff:" + ip).packed


def mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def gid(b: bytes) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(b)


@dataclass
class Case:
    name: str
    kind: str  # clc | llc | cdc | roce
    data: bytes  # what goes on the wire (CLC payload, SEND payload, or the whole IB packet)
    expect: dict = field(default_factory=dict)  # smc.* field -> value
    ib_expect: dict = field(default_factory=dict)  # infiniband.* field -> value
    known_bug: str = ""  # Wireshark 4.0 gets this message wrong, and why
    frame: int = 0


# ------------------------------------------------------------------ expectations


def expect_proposal(p: clc.Proposal) -> dict:
    e = {
        "smc.clc_msg": 1, "smc.length": len(p.encode()), "smc.proposal.smc.version": p.version,
        "smc.proposal.smc.type": int(p.typev1), "smc.proposal.sender.client.peer.id": int.from_bytes(p.peer_id, "big"),
    }  # fmt: skip
    if p.prefix is not None:
        # Wireshark shows GID, MAC and the prefix area only when typev1 offers something
        # (Linux fills them only then, and zeroes them in a v2-only Proposal).
        e["smc.proposal.client.preferred.gid"] = gid(p.gid)
        e["smc.proposal.client.preferred.mac"] = mac(p.mac)
        e["smc.proposal.smcv1_subnet_ext_offset"] = p.ip_area_offset
        e["smc.outgoing.interface.subnet.mask"] = p.prefix.subnet
        e["smc.outgoing.interface.subnet.mask.number.of.significant.bits"] = p.prefix.prefix_len
        e["smc.proposal.ipv6.prefix.count"] = len(p.prefix.ipv6)
        if p.prefix.ipv6:
            e["smc.proposal.ipv6.prefix.value"] = [x.prefix for x in p.prefix.ipv6]
            e["smc.proposal.ipv6.prefix.length"] = [x.length for x in p.prefix.ipv6]
    if p.version >= 2:
        e["smc.proposal.smcv2.type"] = int(p.typev2)
    if p.v2 is not None:
        e |= {
            "smc.proposal.eid.count": len(p.v2.eids), "smc.proposal.smc.version.relnum": p.v2.release,
            "smc.proposal.smc.seid": int(p.v2.seid_flag), "smc.proposal.rocev2.gid.ipv4": ipaddress.IPv4Address(p.v2.roce_gid[-4:]),
        }  # fmt: skip
        if p.v2.eids:
            e["smc.proposal.eid"] = [x.decode("ascii") for x in p.v2.eids]
    return e


def expect_accept_confirm(m: clc.Accept | clc.Confirm) -> dict:
    if isinstance(m, clc.Accept):
        e = {
            "smc.clc_msg": 2, "smc.accept.sender.server.peer.id": int.from_bytes(m.peer_id, "big"),
            "smc.accept.server.preferred.gid": gid(m.gid), "smc.accept.server.preferred.mac": mac(m.mac),
            "smc.accept.server.qp.number": m.qpn, "smc.accept.server.rmb.rkey": m.rmb_rkey,
            "smc.accept.server.tcp.conn.index": m.rmbe_idx, "smc.accept.server.rmb.element.alert.token": m.rmbe_alert_token,
            "smc.accept.rmb.buffer.size": m.rmbe_size, "smc.accept.qp.mtu.value": m.qp_mtu,
            "smc.accept.server.rmb.virtual.address": m.rmb_vaddr, "smc.accept.initial.psn": m.psn,
            "smc.proposal.first.contact": int(m.first_contact),
        }  # fmt: skip
        p = "smc.accept"
    else:
        e = {
            "smc.clc_msg": 3, "smc.confirm.sender.client.peer.id": int.from_bytes(m.peer_id, "big"),
            "smc.client.gid": gid(m.gid), "smc.confirm.client.mac": mac(m.mac), "smc.confirm.client.qp.number": m.qpn,
            "smc.confirm.client.rmb.rkey": m.rmb_rkey, "smc.confirm.client.tcp.conn.index": m.rmbe_idx,
            "smc.client.rmb.element.alert.token": m.rmbe_alert_token, "smc.confirm.rmb.buffer.size": m.rmbe_size,
            "smc.confirm.qp.mtu.value": m.qp_mtu, "smc.client.rmb.virtual.address": m.rmb_vaddr, "smc.initial.psn": m.psn,
            "smc.confirm.first.contact": int(m.first_contact),
        }  # fmt: skip
        p = "smc.confirm"
    e["smc.length"] = len(m.encode())
    e["smc.proposal.smc.version"] = m.version  # Wireshark reuses the Proposal's filter name here
    if m.version >= 2:
        e[f"{p}.eid"] = m.eid.decode("ascii")
        if m.fce is not None:
            e[f"{p}.os.type"] = m.fce.os_type
            e[f"{p}.smc.version.relnum"] = m.fce.release
            e[f"{p}.peer.host.name"] = m.fce.hostname.decode("ascii")
            e["smc.accept.fce1.flags"] = 0x80 if m.fce.v2_direct else 0
        if isinstance(m, clc.Confirm) and m.fce is not None:
            e["smc.confirm.gid.list.entry_count"] = len(m.gids)
            if m.gids:
                e["smc.confirm.gid.list.entry"] = [gid(g) for g in m.gids]
    return e


def expect_decline(d: clc.Decline) -> dict:
    e = {
        "smc.clc_msg": 4, "smc.length": len(d.encode()), "smc.decline.smc.version": d.version,
        "smc.decline.osync": int(d.out_of_sync), "smc.sender.peer.id": int.from_bytes(d.peer_id, "big"),
        "smc.peer.diag.info": [d.diagnosis, *(d.extra_diagnosis or ())] if d.extra_diagnosis else d.diagnosis,
    }  # fmt: skip
    if d.version >= 2:
        e["smc.decline.os.type"] = d.os_type
    return e


def expect_llc(m: llc.LlcMessage) -> dict:
    e = {"smc.llc_msg": m.type_byte, "smc.length": len(m.encode())}
    if isinstance(m, llc.ConfirmLink):
        e |= {
            "smc.confirm.link.response": int(m.response), "smc.confirm.link.sender.mac": mac(m.mac),
            "smc.sender.gid": gid(m.gid), "smc.confirm.link.sender.qp.number": m.qpn, "smc.confirm.link.number": m.link_num,
            "smc.confirm.link.sender.link.userid": int.from_bytes(m.link_uid, "big"), "smc.confirm.link.max.links": m.max_links,
        }  # fmt: skip
    elif isinstance(m, llc.AddLink):
        e |= {
            "smc.add.link.response": int(m.response), "smc.add.link.response.rejected": int(m.rejected),
            "smc.add.link.sender.mac": mac(m.mac), "smc.add.link.sender.gid": gid(m.gid), "smc.add.link.sender.qp.number": m.qpn,
            "smc.add.link.link.number": m.link_num, "smc.add.link.qp.mtu.value": m.qp_mtu, "smc.add.link.initial.psn": m.psn,
        }  # fmt: skip
        if m.version >= 2:
            e |= {"smc.add.link.direct_link": int(m.direct), "smc.add.link.client_target_gid": gid(m.target_gid),
                  "smc.add.link.rkey_count": len(m.rkeys)}  # fmt: skip
            if m.rkeys:
                e["smc.add.link.rmb.RTok.Rkey1"] = [t.rkey for t in m.rkeys]
                e["smc.add.link.rmb.RTok.Rkey2"] = [t.new_rkey for t in m.rkeys]
                e["smc.add.link.rmb.RTok.virt"] = [t.new_vaddr for t in m.rkeys]
            if m.response and m.rejected:
                # A rejected v2 response: Wireshark shows the reason (flags bits 3-0) and stops there.
                e["smc.add.link.response.reject_reason"] = m.reject_reason
                for k in ("smc.add.link.direct_link", "smc.add.link.client_target_gid", "smc.add.link.rkey_count"):
                    del e[k]
    elif isinstance(m, llc.AddLinkCont):
        e |= {"smc.add.link.cont.response": int(m.response), "smc.add.link.cont.link.number": m.link_num,
              "smc.add.link.cont.rkey.number": m.num_rkeys}  # fmt: skip
    elif isinstance(m, llc.DeleteLink):
        e |= {
            "smc.delete.link.response": int(m.response), "smc.delete.link.all": int(m.all),
            "smc.delete.link.orderly": int(m.orderly), "smc.delete.link.number": m.link_num, "smc.delete.link.reason.code": m.reason,
        }  # fmt: skip
    elif isinstance(m, llc.RequestAddLink):
        e |= {"smc.request.add.link.response": int(m.response), "smc.request.add.link.response.rejected": int(m.rejected),
              "smc.request.add.link.gid.list.entry_count": len(m.gids)}  # fmt: skip
        if m.gids:
            e["smc.request.add.link.gid.list.entry"] = [gid(g) for g in m.gids]
    elif isinstance(m, llc.ConfirmRkey):
        e |= {
            "smc.confirm.rkey.response": int(m.response), "smc.confirm.rkey.negative.response": int(m.negative),
            "smc.confirm.rkey.retry.rkey.set": int(m.retry), "smc.confirm.rkey.number.qp": len(m.others),
            "smc.confirm.rkey.new.rkey": [m.rkey, *(t.rkey for t in m.others)],
            "smc.confirm.rkey.new.virt": [m.vaddr, *(t.vaddr for t in m.others)],
        }  # fmt: skip
        if m.others:
            e["smc.confirm.rkey.link.number"] = [t.link_id for t in m.others]
    elif isinstance(m, llc.ConfirmRkeyCont):
        e |= {
            "smc.confirm.rkey.response": int(m.response), "smc.confirm.rkey.negative.response": int(m.negative),
            "smc.confirm.rkey.number.qp": m.num_rkeys, "smc.confirm.rkey.link.number": [t.link_id for t in m.tokens],
            "smc.confirm.rkey.new.rkey": [t.rkey for t in m.tokens], "smc.confirm.rkey.new.virt": [t.vaddr for t in m.tokens],
        }  # fmt: skip
    elif isinstance(m, llc.TestLink):
        e["smc.test.link.response"] = int(m.response)
    elif isinstance(m, llc.DeleteRkey):
        e |= {"smc.delete.rkey.response": int(m.response), "smc.delete.rkey.negative.response": int(m.negative),
              "smc.delete.rkey.count": len(m.rkeys), "smc.delete.rkey.deleted": list(m.rkeys)}  # fmt: skip
        if m.version == 1:
            e["smc.delete.rkey.error.mask"] = m.err_mask
    return e


def expect_cdc(m: cdc.CdcMessage) -> dict:
    return {
        "smc.llc_msg": 0xFE, "smc.length": 44, "smc.rmbe.ctrl.seqno": m.seqno, "smc.rmbe.ctrl.alert.token": m.token,
        # Wireshark 4.0 reuses the producer names for the consumer cursor: [producer, consumer]
        "smc.rmbe.ctrl.prod.wrap.seq": [m.prod.wrap, m.cons.wrap], "smc.rmbe.ctrl.peer.prod.curs": [m.prod.count, m.cons.count],
        "smc.rmbe.ctrl.write.blocked": int(m.write_blocked), "smc.rmbe.ctrl.urgent.pending": int(m.urg_data_pending),
        "smc.rmbe.ctrl.urgent.present": int(m.urg_data_present), "smc.rmbe.ctrl.cons.update.requested": int(m.cons_curs_upd_req),
        "smc.rmbe.ctrl.failover.validation": int(m.failover_validation), "smc.rmbe.ctrl.peer.sending.done": int(m.peer_done_writing),
        "smc.rmbe.ctrl.peer.closed.conn": int(m.peer_conn_closed), "smc.rmbe.ctrl.peer.abnormal.close": int(m.peer_conn_abort),
    }  # fmt: skip


def expect_ib(p: roce.RocePacket) -> dict:
    e = {
        "infiniband.bth.opcode": p.bth.opcode, "infiniband.bth.destqp": p.bth.dest_qp, "infiniband.bth.psn": p.bth.psn,
        "infiniband.bth.se": int(p.bth.se), "infiniband.bth.a": int(p.bth.ackreq), "infiniband.bth.padcnt": -len(p.payload) % 4,
        "infiniband.bth.p_key": p.bth.pkey,
    }  # fmt: skip
    if p.reth:
        e |= {"infiniband.reth.va": p.reth.vaddr, "infiniband.reth.r_key": p.reth.rkey, "infiniband.reth.dmalen": p.reth.dma_len}
    if p.aeth:
        e |= {"infiniband.aeth.syndrome": p.aeth.syndrome, "infiniband.aeth.msn": p.aeth.msn}
    if p.imm is not None:
        e["infiniband.immdt"] = p.imm.to_bytes(4, "big").hex(":")
    return e


# ------------------------------------------------------------------ the messages


def smcr_fields(**kw) -> dict:
    base = dict(
        peer_id=rb(8), gid=v4gid("10.2.0.1"), mac=rb(6), qpn=ru(24), rmb_rkey=ru(32), rmbe_alert_token=ru(32),
        rmbe_size=RNG.randint(0, 5), qp_mtu=RNG.randint(1, 5), rmb_vaddr=ru(64), psn=ru(24), rmbe_idx=1,
    )  # fmt: skip
    return base | kw


def eid(text: str) -> bytes:
    return clc.make_eid(text)


FCE = clc.FirstContactExt(v2_direct=True, os_type=clc.OS_LINUX, release=1, hostname=clc.make_hostname("smctop-lab"))


def clc_cases() -> list[Case]:
    msgs: list[tuple[str, clc.ClcMessage]] = [
        ("Proposal v1+v2 Linux form", clc.Proposal(rb(8), rb(16), rb(6), clc.SmcType.R, clc.SmcType.R, 2,
            clc.IpPrefixArea(ipaddress.IPv4Address("10.2.0.0"), 24), v2=clc.V2Extension((eid("SMC-TEST-UEID"),), v4gid("10.2.0.1"), 1, False, 255, 2))),
        ("Proposal v1 only, IPv6 prefixes", clc.Proposal(rb(8), rb(16), rb(6), clc.SmcType.R, clc.SmcType.N, 2,
            clc.IpPrefixArea(ipaddress.IPv4Address(0), 0, (clc.Ipv6Prefix(ipaddress.IPv6Address("2001:db8::"), 64),
                                                           clc.Ipv6Prefix(ipaddress.IPv6Address("fd00:1::"), 48))))),
        ("Proposal v2 only, 3 EIDs", clc.Proposal(rb(8), rb(16), rb(6), clc.SmcType.N, clc.SmcType.R, 2, None,
            v2=clc.V2Extension(tuple(eid(f"EID-{i}") for i in range(3)), v4gid("10.9.8.7"), 1, False, 64, 1))),
        ("Accept v1 first contact", clc.Accept(**smcr_fields(gid=rb(16)), first_contact=True)),
        ("Accept v1 reuse", clc.Accept(**smcr_fields(gid=rb(16)))),
        ("Accept v2 first contact", clc.Accept(**smcr_fields(), first_contact=True, version=2, eid=eid("SMC-TEST-UEID"), fce=FCE)),
        ("Accept v2 reuse", clc.Accept(**smcr_fields(), version=2, eid=eid("SMC-TEST-UEID"))),
        ("Confirm v1", clc.Confirm(**smcr_fields(gid=rb(16)), first_contact=True)),
        ("Confirm v2 first contact, 2 GIDs", clc.Confirm(**smcr_fields(), first_contact=True, version=2, eid=eid("SMC-TEST-UEID"),
            fce=FCE, gids=(v4gid("10.2.0.1"), v4gid("10.3.0.1")))),
        ("Confirm v2 reuse", clc.Confirm(**smcr_fields(), version=2, eid=eid("SMC-TEST-UEID"))),
        ("Decline v1 NOSMCDEV", clc.Decline(rb(8), 0x03030000)),
        ("Decline v2 SYNCERR out of sync", clc.Decline(rb(8), 0x04000000, True, clc.OS_LINUX, 2, (1, 2, 3, 4))),
    ]  # fmt: skip
    cases = []
    for name, m in msgs:
        e = expect_proposal(m) if isinstance(m, clc.Proposal) else expect_decline(m) if isinstance(m, clc.Decline) else expect_accept_confirm(m)
        cases.append(Case(name, "clc", m.encode(), e))
    rfc = clc.Proposal(rb(8), rb(16), rb(6), clc.SmcType.R, clc.SmcType.R, 1, clc.IpPrefixArea(ipaddress.IPv4Address("192.168.0.0"), 24), smcd=None)
    cases.append(Case("Proposal RFC 7609 form", "clc", rfc.encode(), known_bug=(
        "Wireshark 4.0 always expects the 40-byte SMC-D area of Linux >= 5.10 and ignores ip_area_offset 0, "
        "so it reads the prefix area at 80 and runs past the 52-byte message")))  # fmt: skip
    return cases


def llc_cases() -> list[Case]:
    g1, g2 = v4gid("10.2.0.1"), v4gid("10.3.0.1")
    msgs = [
        llc.ConfirmLink(mac=rb(6), gid=rb(16), qpn=ru(24), link_num=1, link_uid=rb(4), max_links=2),
        llc.ConfirmLink(response=True, mac=rb(6), gid=rb(16), qpn=ru(24), link_num=1, link_uid=rb(4), max_links=2),
        llc.AddLink(mac=rb(6), gid=rb(16), qpn=ru(24), link_num=2, qp_mtu=3, psn=ru(24)),
        llc.AddLink(response=True, mac=rb(6), gid=rb(16), qpn=ru(24), link_num=2, qp_mtu=5, psn=ru(24)),
        llc.DeleteLink(link_num=2, reason=0x00010000, orderly=True),
        llc.DeleteLink(link_num=0, reason=0x00030000, all=True, orderly=True),
        llc.DeleteLink(response=True, link_num=3, reason=0x00100000),
        llc.ConfirmRkey(rkey=ru(32), vaddr=ru(64)),
        llc.ConfirmRkey(rkey=ru(32), vaddr=ru(64), others=(llc.Rtoken(2, ru(32), ru(64)), llc.Rtoken(3, ru(32), ru(64)))),
        llc.ConfirmRkey(response=True, negative=True, retry=True, rkey=ru(32), vaddr=ru(64), others=(llc.Rtoken(2, ru(32), ru(64)),)),
        llc.ConfirmRkeyCont(num_rkeys=2, tokens=(llc.Rtoken(1, ru(32), ru(64)), llc.Rtoken(2, ru(32), ru(64)))),
        llc.TestLink(user_data=rb(16)),
        llc.TestLink(response=True),
        llc.DeleteRkey(rkeys=(ru(32),)),
        llc.DeleteRkey(response=True, negative=True, rkeys=tuple(ru(32) for _ in range(8)), err_mask=0x81),
        # v2, big-endian length (the byte order Wireshark reads)
        llc.ConfirmLink(version=2, mac=rb(6), gid=g1, qpn=ru(24), link_num=1, link_uid=rb(4), max_links=2, max_conns=255),
        llc.AddLink(version=2, mac=rb(6), gid=g2, qpn=ru(24), link_num=2, qp_mtu=5, psn=ru(24), direct=True, target_gid=g2,
                    rkeys=tuple(llc.RkeyTriple(ru(32), ru(32), ru(64)) for _ in range(3))),
        llc.AddLink(version=2, response=True, rejected=True, reject_reason=1, mac=rb(6), gid=g2, qpn=0, link_num=2, qp_mtu=5, psn=0),
        llc.DeleteLink(version=2, link_num=2, reason=0x00050000, orderly=True),
        llc.RequestAddLink(version=2, gids=(g1, g2)),
        llc.ConfirmRkey(version=2, rkey=ru(32), vaddr=ru(64), others=(llc.Rtoken(2, ru(32), ru(64)),)),
        llc.TestLink(version=2, user_data=rb(16)),
        llc.DeleteRkey(version=2, rkeys=(ru(32), ru(32))),
    ]  # fmt: skip
    cases = [Case(f"{m.name}{' resp' if m.response else ''}", "llc", m.encode("big"), expect_llc(m)) for m in msgs]
    cont = llc.AddLinkCont(link_num=2, num_rkeys=3, rkeys=(llc.RkeyTriple(0x11111111, 0x22222222, 0x3333333344444444),
                                                          llc.RkeyTriple(0x55555555, 0x66666666, 0x7777777788888888)))  # fmt: skip
    cases.append(Case("LLC ADD LINK CONTINUATION", "llc", cont.encode(), expect_llc(cont) | {
        # Known Wireshark 4.0 bug: it does not skip the 2 reserved bytes at 6-7, so each rkey triple is read
        # 2 bytes early (rkey1 at 6 instead of 8). These are the values it shows for our correct bytes.
        "smc.add.link.cont.rmb.RTok1.Rkey1": 0x00001111, "smc.add.link.cont.rmb.RTok1.Rkey2": 0x11112222,
        # ... and it reuses the RTok1.virt filter name for the second triple's address.
        "smc.add.link.cont.rmb.RTok1.virt": [0x2222333333334444, 0x6666777777778888],
        "smc.add.link.cont.rmb.RTok2.Rkey1": 0x44445555, "smc.add.link.cont.rmb.RTok2.Rkey2": 0x55556666,
    }))  # fmt: skip
    # What an x86-64 Linux kernel really sends: v2 lengths in little-endian host order.
    le_reason = ("Linux writes length_v2 in host order (little-endian on x86); Wireshark 4.0 reads it big-endian, "
                 "finds a length that does not match the payload and marks the frame malformed or does not take it as SMC")  # fmt: skip
    for m in (
        llc.ConfirmLink(version=2, mac=rb(6), gid=g1, qpn=ru(24), link_num=1, link_uid=rb(4)),
        llc.AddLink(version=2, mac=rb(6), gid=g2, qpn=ru(24), link_num=2, qp_mtu=5, psn=ru(24), rkeys=(llc.RkeyTriple(1, 2, 3),)),
        llc.DeleteRkey(version=2, rkeys=(ru(32),)),
    ):
        cases.append(Case(f"{m.name} little-endian length", "llc", m.encode("little"), known_bug=le_reason))
    return cases


def cdc_cases() -> list[Case]:
    msgs = [cdc.CdcMessage(seqno=1, token=ru(32), prod=cdc.Cursor(0, 4096))]
    for _ in range(6):
        flags = {
            k: RNG.random() < 0.5
            for k in ("write_blocked", "urg_data_pending", "urg_data_present", "cons_curs_upd_req", "failover_validation",
                      "peer_done_writing", "peer_conn_closed", "peer_conn_abort")
        }  # fmt: skip
        msgs.append(cdc.CdcMessage(seqno=ru(16), token=ru(32), prod=cdc.Cursor(ru(16), ru(32)), cons=cdc.Cursor(ru(16), ru(32)), **flags))
    return [Case(f"CDC seq {m.seqno}", "cdc", m.encode(), expect_cdc(m)) for m in msgs]


def roce_cases() -> list[Case]:
    pkts = [
        roce.RocePacket(roce.Bth(roce.Opcode.RDMA_WRITE_ONLY, 0x123, 7, ackreq=True), reth=roce.Reth(0x7F0012340000, 0xABCD, 5), payload=b"hello"),
        roce.RocePacket(roce.Bth(roce.Opcode.RDMA_WRITE_FIRST, 0x123, 8), reth=roce.Reth(0x1000, 0xABCD, 2048), payload=b"x" * 1024),
        roce.RocePacket(roce.Bth(roce.Opcode.RDMA_WRITE_LAST_WITH_IMMEDIATE, 0x123, 9, ackreq=True), imm=0x1234, payload=b"y" * 1024),
        roce.RocePacket(roce.Bth(roce.Opcode.ACKNOWLEDGE, 0x456, 9), aeth=roce.Aeth.ack(3)),
        roce.RocePacket(roce.Bth(roce.Opcode.ACKNOWLEDGE, 0x456, 10), aeth=roce.Aeth.nak(3, roce.NakCode.REMOTE_ACCESS_ERROR)),
        roce.RocePacket(roce.Bth(roce.Opcode.ACKNOWLEDGE, 0x456, 10), aeth=roce.Aeth.rnr_nak(3, 14)),
        roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY_WITH_IMMEDIATE, 0x123, 11, se=True), imm=0x55, payload=b"z" * 7),
    ]  # fmt: skip
    return [Case(f"RoCE {roce.Opcode(p.bth.opcode).name} psn {p.bth.psn}", "roce", p.encode(), ib_expect=expect_ib(p)) for p in pkts]


CASES = clc_cases() + llc_cases() + cdc_cases() + roce_cases()
for _n, _case in enumerate(CASES, 1):
    _case.name = f"{_n:02d} {_case.name}"


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> dict[str, tshark.Frame]:
    path = tmp_path_factory.mktemp("oracle") / "all-messages.pcapng"
    with open(path, "wb") as f:
        w = PcapngWriter(f)
        iface = w.add_interface(LINKTYPE_ETHERNET, "lo")
        frame_no, t = 0, 1_764_000_000_000_000_000

        def put(data: bytes, comment: str | None = None) -> int:
            nonlocal frame_no, t
            frame_no += 1
            t += 1_000
            w.write_packet(iface, t, data, comment)
            return frame_no

        flow = TcpFlow(Endpoint(CLIENT, 40001), Endpoint(SERVER, 7777))
        for fr in flow.handshake():
            put(fr)
        psn = 0
        for case in CASES:
            if case.kind == "clc":
                case.frame = put(flow.data(True, case.data), case.name)
                continue
            if case.kind == "roce":
                packet = roce.decode_packet(case.data)
            else:
                psn += 1
                packet = roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, 0x11, psn, se=True, ackreq=True), payload=case.data)
                case.ib_expect = expect_ib(packet)
            case.wire = roce.encode_frame(packet, CLIENT, SERVER, 49152)
            case.frame = put(case.wire, case.name)
    frames = tshark.decode(str(path), "-J", "frame smc infiniband _ws.malformed")
    by_number = {f.number: f for f in frames}
    result = {case.name: by_number[case.frame] for case in CASES}
    result["malformed frames"] = {f.number for f in frames if f.malformed}  # type: ignore[assignment]
    return result


def test_no_malformed_frame_but_the_known_bugs(decoded):
    known = {c.frame for c in CASES if c.known_bug}
    assert decoded["malformed frames"] <= known, f"unexpected malformed frames: {decoded['malformed frames'] - known}"


def same(expected, actual) -> bool:
    if isinstance(expected, list):
        actual = actual if isinstance(actual, list) else [actual]
        return len(expected) == len(actual) and all(same(e, a) for e, a in zip(expected, actual))
    if isinstance(actual, list):  # a field Wireshark lists twice (tree and item) with one value
        return len(set(actual)) == 1 and same(expected, actual[0])
    if isinstance(expected, bool):
        return num(actual) == int(expected)
    if isinstance(expected, int):
        return num(actual) == expected
    if isinstance(expected, (ipaddress.IPv6Address, ipaddress.IPv4Address)):
        return ipaddress.ip_address(actual) == expected
    return actual == expected


def test_every_message_type_is_in_the_capture():
    llc_types = {c.data[0] for c in CASES if c.kind == "llc"}
    assert llc_types >= {0x01, 0x02, 0x03, 0x04, 0x06, 0x07, 0x08, 0x09, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27, 0x29}
    clc_types = {(c.data[4], c.data[7] >> 4) for c in CASES if c.kind == "clc"}
    assert clc_types >= {(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2), (4, 1), (4, 2)}
    assert any(c.kind == "cdc" for c in CASES)


@pytest.mark.parametrize("case", [c for c in CASES if not c.known_bug], ids=lambda c: c.name)
def test_tshark_fields_equal_ours(decoded, case):
    frame = decoded[case.name]
    assert not frame.malformed, f"{case.name}: tshark marks frame {frame.number} malformed"
    if case.expect:
        assert len(frame.smc) == 1, f"{case.name}: tshark found {len(frame.smc)} SMC PDUs in frame {frame.number}"
        fields = frame.smc[0]
        wrong = {k: (v, fields.get(k, "<missing>")) for k, v in case.expect.items() if k not in fields or not same(v, fields[k])}
        assert not wrong, f"{case.name}: field -> (ours, tshark's): {wrong}"
    wrong_ib = {k: (v, frame.ib.get(k, "<missing>")) for k, v in case.ib_expect.items() if k not in frame.ib or not same(v, frame.ib[k])}
    assert not wrong_ib, f"{case.name}: field -> (ours, tshark's): {wrong_ib}"


@pytest.mark.parametrize("case", [c for c in CASES if c.known_bug], ids=lambda c: c.name)
def test_known_wireshark_bugs_still_there(decoded, case):
    """Each of these is Wireshark 4.0 being wrong, not us; see ``case.known_bug``.
    If one starts decoding cleanly, Wireshark was fixed and the case can move to the normal list."""
    frame = decoded[case.name]
    decoded_clean = (not frame.malformed) and bool(frame.smc)
    assert not decoded_clean, f"{case.name}: tshark now decodes it cleanly; the known bug is gone ({case.known_bug})"
    # our own decoder reads the same bytes correctly
    if case.kind == "clc":
        assert clc.decode(case.data).encode() == case.data
    else:
        assert llc.decode(case.data).encode(llc.decode(case.data).order) == case.data


def test_icrc_sits_where_wireshark_expects_it(decoded):
    """tshark shows the last 4 bytes as the invariant CRC (read big-endian) without checking it;
    ours must be there and be the right value."""
    for case in CASES:
        if case.kind == "clc" or case.known_bug:
            continue
        frame = decoded[case.name]
        want = spec_icrc(case.wire)
        assert case.wire[-4:] == want, f"{case.name}: ICRC {case.wire[-4:].hex()} on the wire, {want.hex()} by the spec"
        assert num(frame.ib["infiniband.invariant.crc"]) == int.from_bytes(want, "big"), case.name  # what tshark shows


def spec_icrc(frame: bytes) -> bytes:
    """The ICRC of an Ethernet/IPv4/UDP RoCEv2 frame computed here from the IBA rule (annex A17:
    CRC-32 over 8 bytes of 1s for the LRH, the IPv4 header with TOS, TTL and checksum set to 1s,
    the UDP header with its checksum set to 1s, the BTH with its reserved byte 4 set to 1s, and
    the rest up to the ICRC; sent least significant byte first), not by stack.wire.roce."""
    ihl = (frame[14] & 0x0F) * 4
    ip, udp, ib = bytearray(frame[14 : 14 + ihl]), bytearray(frame[14 + ihl : 22 + ihl]), bytearray(frame[22 + ihl : -4])
    ip[1], ip[8], ip[10], ip[11] = 0xFF, 0xFF, 0xFF, 0xFF
    udp[6], udp[7] = 0xFF, 0xFF
    ib[4] = 0xFF
    return zlib.crc32(b"\xff" * 8 + ip + udp + ib).to_bytes(4, "little")


def test_the_spec_icrc_is_a_connectx_icrc():
    """spec_icrc itself, against a CNP a ConnectX-4 Lx sent (scapy's RoCE tests), so the oracle above is no echo."""
    cnp = bytes.fromhex("e41d2dab2bc27cfe90643b32080045c2003c718c400040119161 0a0011010a001201 000012b700280000"
                        "8100ffff40000118 00000000 00000000000000000000000000000000 82fd002a".replace(" ", ""))  # fmt: skip
    assert spec_icrc(cnp) == bytes.fromhex("82fd002a")


def test_pyshark_reads_the_same_capture(tmp_path):
    """pyshark (tshark underneath, through its own reader) agrees on a Decline and a CDC."""
    d = clc.Decline(rb(8), 0x03070000, version=2, os_type=clc.OS_LINUX, extra_diagnosis=(0, 0, 0, 0))
    m = cdc.CdcMessage(seqno=9, token=0xCAFE, prod=cdc.Cursor(1, 100))
    path = tmp_path / "two.pcapng"
    with open(path, "wb") as f:
        w = PcapngWriter(f)
        i = w.add_interface(LINKTYPE_ETHERNET, "lo")
        flow = TcpFlow(Endpoint(CLIENT, 40002), Endpoint(SERVER, 7777))
        for n, fr in enumerate(flow.handshake() + [flow.data(False, d.encode())]):
            w.write_packet(i, n, fr)
        w.write_packet(i, 10, roce.encode_frame(roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, 0x11, 1), payload=m.encode()), CLIENT, SERVER, 49152))
    # pyshark drives tshark from its own asyncio loop; after other tests' asyncio.run() the
    # child watcher of this process loses tshark's exit status, so it runs in a fresh interpreter.
    script = (
        "import json, sys, pyshark\n"
        "cap = pyshark.FileCapture(sys.argv[1], display_filter='smc', use_json=True)\n"
        "try:\n"
        "    pk = list(cap)\n"
        "    d = pk[0].smc.get_field('peer.diag.info')\n"
        "    print(json.dumps([len(pk), d[0] if isinstance(d, list) else d, pk[1].smc.get_field('rmbe.ctrl.alert.token')]))\n"
        "finally:\n"
        "    cap.close()\n"
    )
    res = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120, env=tshark.env())
    assert res.returncode == 0, res.stderr
    count, diag, token = json.loads(res.stdout)
    assert count == 2
    assert int(diag, 0) == 0x03070000
    assert int(token, 0) == 0xCAFE


@pytest.mark.parametrize("order", ["<", ">"])
def test_tshark_reads_obsolete_packet_blocks_and_the_timestamp_offset_as_we_do(order, tmp_path):
    """The file of tests/unit/test_pcapng.py's old-style test: tshark gives the same
    times, lengths and comments (so our reader's handling of type-2 blocks, if_tsresol
    and if_tsoffset is tshark's)."""
    from support.pcapng_files import old_style_file

    from dissectors.pcapng import read_packets

    path = tmp_path / "old.pcapng"
    path.write_bytes(old_style_file(order))
    proc = tshark.run(["-n", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len", "-e", "frame.cap_len", "-e", "frame.comment"])
    assert proc.returncode == 0, proc.stderr
    theirs = [line.split("\t") for line in proc.stdout.splitlines()]
    ours = [
        [f"{p.timestamp_ns // 10**9}.{p.timestamp_ns % 10**9:09d}", str(p.original_length), str(len(p.data)), ",".join(p.comments)]
        for p in read_packets(path.read_bytes())
    ]
    assert theirs == ours
