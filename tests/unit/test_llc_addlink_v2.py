"""ADD LINK v2 as the kernel sends it (#16 item 4).

``smc_llc_fill_ext_v2`` writes ``num_rkeys = lgr->conns_num`` (connections) but fills a
triple only for each RMB in use, and ``smc_llc_send_add_link`` sets the length from the
triples actually filled. So a kernel may announce more triples than its message carries.
Its receiver, ``smc_llc_save_add_link_rkeys``, reads the triples and sets the rtokens it
finds; we accept the same message and read what it carries.

The bytes here are built from the kernel's struct layout (struct smc_llc_msg_add_link,
then struct smc_llc_msg_add_link_v2_ext at offset 44), not from our encoder.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest
from support.fabric import open_conn, pair

from stack.core import llcflows
from stack.core.config import SmcConfig
from stack.wire import llc
from stack.wire.codes import LgrType, LinkState

MAC = bytes.fromhex("525400120001")
GID = bytes(10) + b"\xff\xff" + bytes([10, 2, 0, 1])
TGID = bytes(10) + b"\xff\xff" + bytes([10, 3, 0, 1])


def kernel_add_link_v2(triples, num_rkeys: int, order: str = "<", response: bool = False) -> bytes:
    """struct smc_llc_msg_add_link + smc_llc_msg_add_link_v2_ext as smc_llc_send_add_link fills it."""
    length = 44 + 28 + 16 * len(triples)
    hdr = bytes([0x22]) + struct.pack(order + "H", length) + bytes([0x80 if response else 0])
    body = MAC + bytes(2) + GID + (0x0ABCDE).to_bytes(3, "big") + bytes([2]) + bytes([5]) + (0x123456).to_bytes(3, "big") + bytes(8)
    ext = bytes([0x80, 0]) + TGID + bytes(8) + struct.pack(order + "H", num_rkeys)
    rt = b"".join(struct.pack(">IIQ", *t) for t in triples)
    msg = hdr + body + ext + rt
    assert len(msg) == length
    return msg


def test_kernel_announces_more_rkeys_than_it_fills():
    """Three connections, one RMB in use: num_rkeys 3, one triple, length 88."""
    raw = kernel_add_link_v2([(0x1111, 0x2222, 0x7F0000001000)], num_rkeys=3)
    m = llc.decode(raw)
    assert isinstance(m, llc.AddLink) and m.version == 2 and not m.response
    assert m.rkeys == (llc.RkeyTriple(0x1111, 0x2222, 0x7F0000001000),)
    assert m.num_rkeys == 3
    assert m.direct and m.target_gid == TGID and m.qpn == 0x0ABCDE and m.link_num == 2 and m.qp_mtu == 5
    assert m.encode() == raw  # what we decode we can write back byte for byte


def test_kernel_add_link_v2_with_connections_but_no_rmb_in_use():
    raw = kernel_add_link_v2([], num_rkeys=2)
    m = llc.decode(raw)
    assert len(raw) == 72 and m.rkeys == () and m.num_rkeys == 2
    assert m.encode() == raw


def test_s390_kernel_big_endian_num_rkeys():
    raw = kernel_add_link_v2([(1, 2, 3), (4, 5, 6)], num_rkeys=5, order=">")
    m = llc.decode(raw)
    assert m.order == "big" and m.num_rkeys == 5 and [t.rkey for t in m.rkeys] == [1, 4]
    assert m.encode(order="big") == raw


def test_exact_count_decodes_without_an_announced_surplus():
    raw = kernel_add_link_v2([(1, 2, 3)], num_rkeys=1)
    m = llc.decode(raw)
    assert m.num_rkeys == 0 and len(m.rkeys) == 1
    assert m == llc.AddLink(version=2, mac=MAC, gid=GID, qpn=0x0ABCDE, link_num=2, qp_mtu=5, psn=0x123456, direct=True,
                            target_gid=TGID, rkeys=(llc.RkeyTriple(1, 2, 3),))  # fmt: skip


def test_fewer_announced_than_carried_is_a_clear_error():
    raw = kernel_add_link_v2([(1, 2, 3), (4, 5, 6)], num_rkeys=1)
    with pytest.raises(llc.LlcError, match="num_rkeys 1 .* carries 2 triples"):
        llc.decode(raw)


def test_a_partial_triple_is_a_clear_error():
    raw = bytearray(kernel_add_link_v2([(1, 2, 3)], num_rkeys=1) + bytes(8))
    raw[1:3] = struct.pack("<H", len(raw))
    with pytest.raises(llc.LlcError, match="not whole 16-byte rkey triples"):
        llc.decode(bytes(raw))


def test_more_than_a_link_group_can_have_is_a_clear_error():
    with pytest.raises(llc.LlcError, match="at most 255 RMBs"):
        llc.decode(kernel_add_link_v2([(1, 2, 3)], num_rkeys=256))


def test_encoder_announces_at_least_what_it_carries():
    m = llc.AddLink(version=2, mac=MAC, gid=GID, qpn=1, link_num=2, qp_mtu=5, psn=1, rkeys=(llc.RkeyTriple(1, 2, 3),))
    assert m.encode()[70:72] == b"\x01\x00"
    assert dataclasses.replace(m, num_rkeys=4).encode()[70:72] == b"\x04\x00"
    with pytest.raises(llc.LlcError, match="does not fit in 8 bits"):
        dataclasses.replace(m, num_rkeys=300).encode()
    with pytest.raises(llc.LlcError, match="no v2 extension"):
        llc.AddLink(mac=MAC, gid=GID, qpn=1, link_num=2, qp_mtu=5, psn=1, num_rkeys=3).encode()


def test_second_link_forms_when_the_server_announces_more_rkeys(monkeypatch):
    """A server that writes ADD LINK as the kernel does (num_rkeys counting connections,
    here two more than the RMBs it fills): the client accepts it, the second link comes
    up and the peer's RMB is known on both links."""
    orig = llcflows._AddLinkBase._add_link_msg

    def kernel_like(self, response, link_num):
        msg = orig(self, response, link_num)
        if self.lgr.role.name == "SERVER" and msg.version >= 2:
            msg = dataclasses.replace(msg, num_rkeys=len(msg.rkeys) + 2)
        return msg

    monkeypatch.setattr(llcflows._AddLinkBase, "_add_link_msg", kernel_like)
    small = {"rmb_size": 16384, "sndbuf_size": 16384}
    f, a, b = pair(SmcConfig(host="client", versions=frozenset({2}), **small),
                   SmcConfig(host="server", versions=frozenset({2}), **small), client_devices=2, server_devices=2)  # fmt: skip
    open_conn(f, a, b, 1)
    f.run(until=f.now + 0.01)
    sent = [e for e in b.events if e.kind == "llc.msg" and e.get("dir") == "tx" and "ADD LINK" in e.get("type")]
    assert sent, "the server sent no ADD LINK"
    for io in (a, b):
        (lgr,) = io.host.lgrs
        assert lgr.type == LgrType.SYMMETRIC
        assert sorted(l.link_id for l in lgr.links.values() if l.state == LinkState.ACTIVE) == [1, 2]
    (row,) = a.host.lgrs[0].rtokens
    rmb = b.host.conns[1].rmb
    assert row == {1: (rmb.on("fab0").rkey, rmb.on("fab0").addr), 2: (rmb.on("fab1").rkey, rmb.on("fab1").addr)}
