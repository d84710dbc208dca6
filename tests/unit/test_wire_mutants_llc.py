"""LLC codec edges that the known-answer tests (test_wire_kat.py) leave open, found by mutation
testing (docs/testing.md, "Mutation testing"): which bits of a flags byte mean what, the v2
lengths of the variable messages, the byte order chosen for the v2 length, and the exact
offset and text of each error. Expected bytes are written by hand from the layouts in
net/smc/smc_llc.c, never produced by the encoder under test."""

from __future__ import annotations

import pytest

from stack.wire import llc

MAC = bytes.fromhex("525400120001")
GID = bytes.fromhex("00000000000000000000ffff0a020001")
GID2 = bytes.fromhex("00000000000000000000ffff0a030001")


def err(fn, *args, **kw) -> llc.LlcError:
    with pytest.raises(llc.LlcError) as e:
        fn(*args, **kw)
    return e.value


def test_messages_are_built_by_keyword_only():
    with pytest.raises(TypeError):
        llc.TestLink(2)  # version given by position


def test_confirm_link_every_field_at_its_offset():
    m = llc.ConfirmLink(mac=MAC, gid=GID, qpn=0xABCDEF, link_num=7, link_uid=b"\x01\x02\x03\x04", max_links=3, max_conns=9, rmbe_eyec_flags=1)
    want = bytes([0x01, 44, 0, 0x01]) + MAC + GID + bytes.fromhex("abcdef") + b"\x07" + b"\x01\x02\x03\x04" + b"\x03\x09" + bytes(8)
    assert m.encode() == want
    assert llc.decode(want) == m
    with pytest.raises(llc.LlcError) as e:
        llc.ConfirmLink(mac=MAC, gid=GID, qpn=1, link_num=1, link_uid=bytes(4), rmbe_eyec_flags=4).encode()
    assert (e.value.offset, e.value.reason) == (3, "rmbe_eyec_flags=4 does not fit in 2 bits")


def test_add_link_v1_fields_and_reject_reason_in_byte_2():
    m = llc.AddLink(mac=MAC, gid=GID, qpn=0x010203, link_num=4, qp_mtu=5, psn=0x0A0B0C, rejected=True, reject_reason=0x0F, response=True)
    want = bytes([0x02, 44, 0x0F, 0xC0]) + MAC + b"\0\0" + GID + bytes.fromhex("010203") + b"\x04\x05" + bytes.fromhex("0a0b0c") + bytes(8)
    assert m.encode() == want
    assert llc.decode(want) == m
    # Only the low nibble of qp_mtu and of byte 2 are fields.
    assert llc.decode(want[:32] + b"\xf5" + want[33:]).qp_mtu == 5
    assert llc.decode(want[:2] + b"\xf3" + want[3:]).reject_reason == 3
    e = err(llc.AddLink(mac=MAC, gid=GID, qpn=0, link_num=1, qp_mtu=16, psn=0).encode)
    assert (e.offset, e.reason) == (32, "qp_mtu=16 does not fit in 4 bits")
    e = err(llc.AddLink(mac=MAC, gid=GID, qpn=0, link_num=1, qp_mtu=3, psn=0, reject_reason=16).encode)
    assert (e.offset, e.reason) == (2, "reject_reason=16 does not fit in 4 bits")
    e = err(llc.AddLink(mac=MAC, gid=GID, qpn=0, link_num=1, qp_mtu=3, psn=0, direct=True).encode)
    assert (e.offset, e.reason) == (44, "a v1 ADD LINK has no v2 extension (use ADD LINK CONTINUATION for rkeys)")
    for extra in ({"target_gid": GID}, {"num_rkeys": 1}, {"rkeys": (llc.RkeyTriple(1, 2, 3),)}):
        assert err(llc.AddLink(mac=MAC, gid=GID, qpn=0, link_num=1, qp_mtu=3, psn=0, **extra).encode).offset in (1, 44)


def test_add_link_v2_reject_reason_in_flags_and_bare_reject():
    m = llc.AddLink(version=2, mac=MAC, gid=GID, qpn=1, link_num=2, qp_mtu=3, psn=4, rejected=True, reject_reason=1, response=True)
    data = m.encode()
    assert len(data) == 72 and data[:4] == bytes([0x22, 72, 0, 0xC1]) and data[70:72] == b"\0\0"
    assert llc.decode(data) == m
    # The kernel's reject is a bare 44-byte message (smc_llc_cli_add_link_reject).
    bare = bytes([0x22, 44, 0, 0xC1]) + data[4:44]
    r = llc.decode(bare)
    assert r.rejected and r.reject_reason == 1 and r.rkeys == () and not r.direct
    # A 44-byte v2 ADD LINK that is not a reject has no num_rkeys to read.
    e = err(llc.decode, bytes([0x22, 44, 0, 0x80]) + data[4:44])
    assert e.offset == 70


def test_a_kernel_reject_echoing_a_longer_request_is_read_as_the_kernel_reads_it():
    """smc_llc_cli_add_link_reject echoes the request's first 44 bytes, its length_v2 too: our
    104-byte ADD LINK v2 (two rkeys) came back as a 44-byte SEND saying 104 (a lab run, kernel
    6.12). The kernel's receive rule asks only length_v2 >= 44; such an echo (a response) is read so."""
    request = bytes.fromhex("22680000525400120101000000000000000000000000ffff0a02010100001304031797c30000000000000000")
    echo = request[:3] + b"\xc1" + request[4:]
    r = llc.decode(echo)
    assert (r.rejected, r.response, r.reject_reason, r.link_num, r.qpn, r.order) == (True, True, 1, 4, 0x13, "little")
    assert llc.decode(echo, order="little") == r
    assert err(llc.decode, echo, order="big").offset == 1  # 26624: no length at all
    for flags in (0x00, 0x40):  # a request, REJ without RESP: their rkeys are missing
        assert err(llc.decode, request[:3] + bytes([flags]) + request[4:]).offset == 1
    assert err(llc.decode, echo + b"\0").offset == 1  # 45 bytes: not the 44-byte echo either


def test_a_kernel_client_busy_confirming_echoes_an_add_link_flagged_a_response():
    """smc_llc_cli_conf_link: a kernel client waiting for the CONFIRM LINK of a link it is
    adding takes any other message for a DELETE LINK and sends it back with RESP set. Our
    104-byte ADD LINK v2 came back so (a lab run): 44 bytes, length_v2 104, RESP without REJ,
    our own QPN and GID in it. It is read as that response, not as a malformed message."""
    request = bytes.fromhex("22680000525400120101000000000000000000000000ffff0a02010100001304031797c30000000000000000")
    echo = request[:3] + b"\x80" + request[4:]
    r = llc.decode(echo)
    assert (r.response, r.rejected, r.link_num, r.qpn, r.gid, r.rkeys, r.order) == (True, False, 4, 0x13, request[12:28], (), "little")


def test_add_link_v2_direct_is_bit_7_only():
    base = llc.AddLink(version=2, mac=MAC, gid=GID, qpn=1, link_num=2, qp_mtu=3, psn=4).encode()
    assert base[44] == 0
    assert not llc.decode(base[:44] + b"\x7f" + base[45:]).direct
    assert llc.decode(base[:44] + b"\x80" + base[45:]).direct


def test_add_link_v2_num_rkeys_both_orders_and_more_announced():
    t = (llc.RkeyTriple(0x11, 0x22, 0x33),)
    m = llc.AddLink(version=2, mac=MAC, gid=GID, qpn=1, link_num=2, qp_mtu=3, psn=4, rkeys=t, num_rkeys=300 - 45)
    little, big = m.encode("little"), m.encode("big")
    assert little[1:3] == bytes([88, 0]) and big[1:3] == bytes([0, 88])
    assert little[70:72] == (255).to_bytes(2, "little") and big[70:72] == (255).to_bytes(2, "big")
    assert little[72:88] == bytes.fromhex("00000011 00000022 0000000000000033".replace(" ", ""))
    for data, order in ((little, "little"), (big, "big")):
        d = llc.decode(data)
        assert d == m and d.order == order and d.num_rkeys == 255
        assert llc.decode(data, order=order) == m
    # num_rkeys equal to what is carried decodes as 0 (= len(rkeys)).
    exact = llc.AddLink(version=2, mac=MAC, gid=GID, qpn=1, link_num=2, qp_mtu=3, psn=4, rkeys=t)
    assert exact.encode()[70:72] == b"\x01\x00" and llc.decode(exact.encode()).num_rkeys == 0
    e = err(llc.AddLink(version=2, mac=MAC, gid=GID, qpn=1, link_num=2, qp_mtu=3, psn=4, num_rkeys=256).encode)
    assert (e.offset, e.reason) == (70, "num_rkeys=256 does not fit in 8 bits")
    too_many = little[:70] + (256).to_bytes(2, "little") + little[72:]
    e = err(llc.decode, too_many)
    assert (e.offset, e.reason) == (70, "num_rkeys 256 (little-endian): a link group has at most 255 RMBs")
    partial = bytes([0x22, 80, 0]) + little[3:80]
    e = err(llc.decode, partial)
    assert (e.offset, e.reason) == (70, "8 bytes after num_rkeys are not whole 16-byte rkey triples")
    fewer = little[:70] + b"\x00\x00" + little[72:]
    e = err(llc.decode, fewer)
    assert e.reason == "num_rkeys 0 (little-endian) but the message carries 1 triples"


def test_add_link_cont_counts():
    one = llc.AddLinkCont(link_num=3, num_rkeys=1, rkeys=(llc.RkeyTriple(1, 2, 3),), response=True)
    data = one.encode()
    assert data[:8] == bytes([0x03, 44, 0, 0x80, 3, 1, 0, 0]) and data[24:] == bytes(20)
    assert llc.decode(data) == one
    e = err(llc.AddLinkCont(link_num=3, num_rkeys=5, rkeys=(llc.RkeyTriple(1, 2, 3),)).encode)
    assert (e.offset, e.reason) == (5, "num_rkeys 5 means 2 triples here, got 1")


def test_delete_link_flag_bits():
    data = llc.DeleteLink(link_num=1, reason=0x00020000, all=True, response=True).encode()
    assert data[:9] == bytes([0x04, 44, 0, 0xC0, 1, 0, 2, 0, 0])
    d = llc.decode(data)
    assert d.all and not d.orderly and d.response
    r = llc.decode(bytes([0x04, 44, 0, 0x80]) + data[4:])
    assert not r.all and not r.orderly and r.response


def test_request_add_link_fields_and_gid_count():
    m = llc.RequestAddLink(version=2, gids=(GID, GID2, GID), rejected=True, reject_reason=1, response=True)
    data = m.encode()
    assert len(data) == 76 and data[:4] == bytes([0x25, 76, 0, 0xC1]) and data[24:28] == b"\x03\0\0\0"
    assert data[28:44] == GID and data[44:60] == GID2 and data[60:76] == GID
    assert llc.decode(data) == m
    assert llc.RequestAddLink(version=2).encode()[:4] == bytes([0x25, 44, 0, 0])
    short = data[:24] + b"\x04" + data[25:]
    e = err(llc.decode, short)
    assert (e.offset, e.reason) == (24, "gid_cnt 4 needs 92 bytes, the message has 76")
    e = err(llc.RequestAddLink(version=2, reject_reason=16).encode)
    assert (e.offset, e.reason) == (3, "reject_reason=16 does not fit in 4 bits")


def test_confirm_rkey_two_others_and_flags():
    m = llc.ConfirmRkey(rkey=0x01020304, vaddr=0x1122334455667788, others=(llc.Rtoken(2, 5, 6), llc.Rtoken(3, 7, 8)), retry=True)
    data = m.encode()
    assert data[:5] == bytes([0x06, 44, 0, 0x10, 2])
    assert data[5:17] == bytes.fromhex("010203041122334455667788")
    assert data[17:30] == bytes([2, 0, 0, 0, 5]) + (6).to_bytes(8, "big")
    assert data[30:43] == bytes([3, 0, 0, 0, 7]) + (8).to_bytes(8, "big")
    d = llc.decode(data)
    assert d == m and d.retry and not d.negative
    n = llc.decode(llc.ConfirmRkey(rkey=1, vaddr=2, negative=True).encode())
    assert n.negative and not n.retry
    e = err(llc.ConfirmRkey(rkey=1, vaddr=2, others=(llc.Rtoken(1, 1, 1),) * 3).encode)
    assert (e.offset, e.reason) == (4, "3 other-link tokens, at most 2")


def test_confirm_rkey_cont_tokens_and_flags():
    toks = (llc.Rtoken(1, 2, 3), llc.Rtoken(4, 5, 6), llc.Rtoken(7, 8, 9))
    m = llc.ConfirmRkeyCont(num_rkeys=4, tokens=toks, negative=True)
    data = m.encode()
    assert data[:5] == bytes([0x08, 44, 0, 0x20, 4])
    assert data[31:44] == bytes([7, 0, 0, 0, 8]) + (9).to_bytes(8, "big")
    assert llc.decode(data) == m
    resp = llc.decode(bytes([0x08, 44, 0, 0x80, 0]) + bytes(39))
    assert resp.response and not resp.negative and resp.tokens == ()
    e = err(llc.ConfirmRkeyCont(num_rkeys=2, tokens=toks).encode)
    assert (e.offset, e.reason) == (4, "num_rkeys 2 means 2 tokens here, got 3")


def test_test_link_user_data():
    data = llc.TestLink(user_data=bytes(range(16))).encode()
    assert data == bytes([0x07, 44, 0, 0]) + bytes(range(16)) + bytes(24)
    e = err(llc.TestLink(user_data=bytes(15)).encode)
    assert (e.offset, e.reason) == (4, "user_data must be 16 bytes, got 15")


def test_delete_rkey_v1_and_v2_sizes_and_errors():
    v1 = llc.DeleteRkey(rkeys=tuple(range(1, 9)), err_mask=0x81, negative=True, response=True)
    data = v1.encode()
    assert data[:8] == bytes([0x09, 44, 0, 0xA0, 8, 0x81, 0, 0]) and data[36:40] == (8).to_bytes(4, "big") and data[40:] == bytes(4)
    assert llc.decode(data) == v1
    v2 = llc.DeleteRkey(version=2, rkeys=tuple(range(100, 110)), num_invalid=3)
    data = v2.encode()
    assert len(data) == 48 and data[:8] == bytes([0x29, 48, 0, 0, 10, 3, 0, 0]) and data[44:48] == (109).to_bytes(4, "big")
    assert llc.decode(data) == v2
    assert len(llc.DeleteRkey(version=2, rkeys=(1,) * 9).encode()) == 44
    e = err(llc.DeleteRkey(rkeys=(1,) * 9).encode)
    assert (e.offset, e.reason) == (4, "9 rkeys, a v1 DELETE RKEY carries at most 8")
    e = err(llc.DeleteRkey(num_invalid=1).encode)
    assert (e.offset, e.reason) == (5, "num_invalid is a v2 field; v1 uses err_mask")
    e = err(llc.DeleteRkey(version=2, err_mask=1).encode)
    assert (e.offset, e.reason) == (5, "err_mask is a v1 field; v2 uses num_invalid")
    short = bytes([0x29, 44, 0, 0, 10]) + bytes(39)
    e = err(llc.decode, short)
    assert (e.offset, e.reason) == (4, "num_rkeys 10 needs 48 bytes, the message has 44")


def test_v2_length_order_choice():
    # A big-endian 256-byte message inside a longer receive buffer: the little-endian reading
    # (1) is smaller than the buffer but not a legal length, so the big-endian one is kept.
    m = llc.DeleteRkey(version=2, rkeys=tuple(range(62)))
    big = m.encode("big")
    assert big[1:3] == b"\x01\x00"
    d = llc.decode(big + bytes(44))
    assert d == m and d.order == "big"
    assert llc.decode(big, order="big").order == "big"
    little = m.encode("little")
    assert llc.decode(little + bytes(44)).order == "little"
    assert llc.decode(little, order="little") == m
    # Forced orders read what they are told, even when the other one would fit.
    e = err(llc.decode, big, order="little")
    assert e.offset == 1 and "length_v2 1 (little-endian) is outside 44..8192" in e.reason
    # Both readings legal and neither the byte count: little-endian wins.
    both = bytes([0x27, 0x2D, 0x2D, 0]) + bytes(16) + bytes(200)
    # 0x2d2d = 11565 either way: too long for both.
    e = err(llc.decode, both)
    assert e.offset == 1 and "neither fits the 220 bytes given" in e.reason
    a = bytes([0x27, 0x2C, 0x00, 0]) + bytes(40)
    assert llc.decode(a + bytes(100)).order == "little"


def test_encoder_checks():
    e = err(llc.TestLink(version=3).encode)
    assert (e.offset, e.reason) == (0, "LLC version 3 is neither 1 nor 2")
    e = err(llc.DeleteRkey(version=2, rkeys=(1,) * 2100).encode)
    assert (e.offset, e.reason) == (1, "message of 8408 bytes does not fit 44..8192")
    e = err(llc.TestLink().encode, "middle")
    assert (e.offset, e.message_type) == (1, "LLC TEST LINK")
    with pytest.raises(ValueError, match="order must be 'auto', 'little' or 'big', not 'x'"):
        llc.decode(bytes(44), order="x")


def test_decoder_type_checks():
    for t in (0x03 | 0x20, 0x08 | 0x20, 0x10 | 0x01, 0x00, 0x0A):
        e = err(llc.decode, bytes([t, 44, 0, 0]) + bytes(40))
        assert (e.offset, e.reason) == (0, f"unknown LLC message type 0x{t:02x}")
    e = err(llc.decode, bytes([0x01, 45, 0, 0]) + bytes(41))
    assert (e.offset, e.reason) == (1, "length 45: a v1 LLC message is 44 bytes")
    e = err(llc.decode, bytes([0x01, 44, 0, 0]) + bytes(30))
    assert (e.offset, e.reason, e.message_type) == (1, "length 44 but only 34 bytes given", "LLC CONFIRM LINK")
    assert llc.decode(bytes([0x27, 44, 0, 0]) + bytes(40)).name == "LLC TEST LINK v2"
    assert llc.decode(bytes([0x07, 44, 0, 0]) + bytes(40)).name == "LLC TEST LINK"


def test_message_fields_are_keyword_only():
    for cls, args in (
        (llc.ConfirmLink, (MAC, GID, 1, 1, bytes(4))),
        (llc.AddLink, (MAC, GID, 1, 1, 3, 0)),
        (llc.AddLinkCont, (1, 0)),
        (llc.DeleteLink, (1, 0)),
        (llc.RequestAddLink, ((GID,),)),
        (llc.ConfirmRkey, (1, 2)),
        (llc.ConfirmRkeyCont, (0,)),
        (llc.TestLink, (bytes(16),)),
        (llc.DeleteRkey, ((1,),)),
    ):
        with pytest.raises(TypeError):
            cls(*args)


def test_confirm_link_announces_two_links_by_default():
    # smc_llc_send_confirm_link: max_links = SMC_LLC_ADD_LNK_MAX_LINKS (2).
    data = llc.ConfirmLink(mac=MAC, gid=GID, qpn=1, link_num=1, link_uid=bytes(4)).encode()
    assert data[34] == 2 and data[35] == 0 and data[3] == llc.FLAG_NO_RMBE_EYEC


def test_add_link_v2_with_many_rkey_triples():
    triples = tuple(llc.RkeyTriple(0x100 + i, 0x200 + i, 0x1000 * (i + 1)) for i in range(6))
    m = llc.AddLink(version=2, mac=MAC, gid=GID, qpn=1, link_num=2, qp_mtu=3, psn=4, rkeys=triples)
    data = m.encode()
    assert len(data) == 72 + 6 * 16 and data[70:72] == b"\x06\x00"
    for i in range(6):
        o = 72 + 16 * i
        assert data[o : o + 16] == (0x100 + i).to_bytes(4, "big") + (0x200 + i).to_bytes(4, "big") + (0x1000 * (i + 1)).to_bytes(8, "big")
    assert llc.decode(data) == m


def test_a_longest_message_in_a_longer_buffer():
    # 8192 bytes, little-endian, in a 9000-byte buffer: the little-endian reading (8192) is the
    # largest legal length, the big-endian one (32) is not legal.
    data = bytes([0x27, 0x00, 0x20, 0x00]) + bytes(range(16)) + bytes(8192 - 20)
    d = llc.decode(data + bytes(808))
    assert isinstance(d, llc.TestLink) and d.order == "little" and d.user_data == bytes(range(16))


def test_second_pass_survivors():
    e = err(llc.AddLinkCont(version=2, link_num=1, num_rkeys=0).encode)
    assert (e.offset, e.reason) == (0, "this message type has no v2 form")
    e = err(llc.RequestAddLink(version=1, gids=(GID, GID)).encode)
    assert (e.offset, e.reason) == (1, "a v1 LLC message is 44 bytes, this one needs 60")
    e = err(llc.AddLinkCont(link_num=1, num_rkeys=1, rkeys=(llc.RkeyTriple(1, 2, 3),) * 2).encode)
    assert (e.offset, e.reason) == (5, "num_rkeys 1 means 1 triples here, got 2")
    r = llc.decode(llc.RequestAddLink(version=2, gids=(GID,), response=True).encode())
    assert r.response and not r.rejected and r.reject_reason == 0
    assert llc.ConfirmRkeyCont(num_rkeys=0).encode()[3] == 0 and not llc.ConfirmRkeyCont(num_rkeys=0).negative
    # 257 bytes reads 0x0101 either way: the little-endian reading is kept.
    odd = bytes([0x27, 0x01, 0x01, 0x00]) + bytes(253)
    assert llc.decode(odd).order == "little"
    # A forced order that reads more than 8192.
    e = err(llc.decode, llc.TestLink(version=2).encode("big"), order="little")
    assert (e.offset, e.reason) == (1, "length_v2 11264 (little-endian) is outside 44..8192")
    # An order given as a string built at run time (from a configuration, say) works as the literal.
    t = (llc.RkeyTriple(1, 2, 3),)
    m = llc.AddLink(version=2, mac=MAC, gid=GID, qpn=1, link_num=2, qp_mtu=3, psn=4, rkeys=t, num_rkeys=3)
    little = "".join(["lit", "tle"])
    assert little == llc.ORDERS[0] and little is not llc.ORDERS[0]  # equal, not the same object
    assert llc.decode(m.encode(), order=little) == m


def test_fresh_sample_survivors():
    # A REQUEST ADD LINK v2 with no GIDs is 44 bytes: the count needs fewer bytes than there are.
    empty = llc.RequestAddLink(version=2, response=True).encode()
    assert len(empty) == 44 and llc.decode(empty) == llc.RequestAddLink(version=2, response=True)
    # A 3-byte v2 buffer: the length reads, and fits nothing.
    e = err(llc.decode, b"\x27\x2c\x00")
    assert (e.offset, e.reason) == (1, "length_v2 reads 44 (little-endian) or 11264 (big-endian); neither fits the 3 bytes given")
