"""CLC codec edges that the known-answer tests (test_wire_kat.py) leave open, found by mutation
testing (docs/testing.md, "Mutation testing"): the SMC-Dv2 parts of a Proposal, the lengths
of the layouts with IPv6 prefixes, the first-contact extension forms, SMC-D Accepts, and
the exact offset and text of each error. Offsets come from net/smc/smc_clc.h."""

from __future__ import annotations

import ipaddress

import pytest

from stack.wire import clc

PEER = bytes.fromhex("aabb525400120001")
GID = bytes.fromhex("00000000000000000000ffff0a020001")
MAC = bytes.fromhex("525400120001")
SMCR = clc.EYECATCHER_SMCR
V6 = tuple(clc.Ipv6Prefix(ipaddress.IPv6Address(f"fd00:{i}::"), 64) for i in range(1, 9))


def err(fn, *args) -> clc.ClcError:
    with pytest.raises(clc.ClcError) as e:
        fn(*args)
    return e.value


def proposal(**kw) -> clc.Proposal:
    return clc.Proposal(PEER, GID, MAC, **kw)


def test_rfc_form_with_four_ipv6_prefixes():
    p = proposal(version=1, typev1=clc.SmcType.R, smcd=None, prefix=clc.IpPrefixArea(ipaddress.IPv4Address("10.1.0.0"), 16, V6[:4]))
    data = p.encode()
    assert len(data) == 40 + 8 + 4 * 17 + 4 == 120 and data[5:7] == (120).to_bytes(2, "big")
    assert data[38:40] == b"\0\0" and data[40:45] == bytes([10, 1, 0, 0, 16]) and data[47] == 4
    assert data[48:64] == ipaddress.IPv6Address("fd00:1::").packed and data[64] == 64
    assert data[99:115] == ipaddress.IPv6Address("fd00:4::").packed and data[115] == 64
    assert clc.decode(data) == p
    e = err(clc.decode, data[:5] + (124).to_bytes(2, "big") + data[7:116] + bytes(4) + SMCR)
    assert (e.offset, e.reason) == (5, "length 124 does not match the version 1 layout (120 bytes)")


def test_version_1_proposal_types():
    p = proposal(version=1, typev1=clc.SmcType.B, smcd=None, prefix=clc.IpPrefixArea())
    assert clc.decode(p.encode()) == p
    data = bytearray(p.encode())
    data[7] = 0x10 | clc.SmcType.N
    e = err(clc.decode, bytes(data))
    assert (e.offset, e.reason) == (7, "a version 1 Proposal must offer SMC-R or SMC-D in typev1")
    data = bytearray(p.encode())
    data[38:40] = (20).to_bytes(2, "big")
    e = err(clc.decode, bytes(data))
    assert (e.offset, e.reason) == (38, "ip_area_offset 20 is neither 0 (RFC 7609) nor 40 (Linux)")
    data[38:40] = (41).to_bytes(2, "big")
    assert err(clc.decode, bytes(data)).reason == "ip_area_offset 41 is larger than the SMC-D area (40)"


def test_v2_only_proposal_reads_the_prefix_count_at_byte_47():
    # typev1 N: no prefix area, but the kernel reads byte 47 (the ISM GID's last byte) as a count.
    p = proposal(typev1=clc.SmcType.N, typev2=clc.SmcType.R, smcd=clc.SmcdArea(ism_gid=0x0900000000000008), v2=clc.V2Extension())
    data = p.encode()
    assert data[40] == 9 and data[47] == 8 and data[38:40] == b"\0\0"
    assert clc.decode(data) == p
    bad = bytearray(data)
    bad[47] = 9
    e = err(clc.decode, bytes(bad))
    assert (e.offset, e.reason) == (47, "IPv6 prefix count 9 exceeds 8")
    e = err(proposal(typev1=clc.SmcType.N, typev2=clc.SmcType.R, smcd=clc.SmcdArea(ism_gid=9), v2=clc.V2Extension()).encode)
    assert (e.offset, e.reason) == (47, "with typev1 N the ISM GID's last byte is read as IPv6 prefix count and must be <= 8")
    assert proposal(typev1=clc.SmcType.N, typev2=clc.SmcType.R, smcd=clc.SmcdArea(ism_gid=0x100), v2=clc.V2Extension()).encode()[46] == 1


def test_proposal_with_smcd_v2_extension():
    gids = tuple((0x1000 + i, 0x20 + i) for i in range(8))
    ext = clc.V2Extension(
        eids=(b"E1".ljust(32), b"E2".ljust(32)),
        roce_gid=GID,
        release=1,
        seid_flag=True,
        max_conns=200,
        max_links=3,
        feature_mask=0x0102,
        smcd=clc.SmcdV2Extension(seid=b"S".ljust(32, b"\0"), gids=gids),
    )
    p = proposal(typev1=clc.SmcType.R, typev2=clc.SmcType.B, prefix=clc.IpPrefixArea(ipaddress.IPv4Address("10.2.0.0"), 24, V6[:1]), v2=ext)
    data = p.encode()
    v2 = 80 + 8 + 17  # v2 extension after the prefix area
    assert data[50:52] == (v2 - 52).to_bytes(2, "big")
    assert data[v2 : v2 + 4] == bytes([2, 8, 0, 0x11]) and data[v2 + 6 : v2 + 8] == (32 + 64).to_bytes(2, "big")
    assert data[v2 + 24 : v2 + 28] == bytes([200, 3, 1, 2])
    smcd = v2 + 40 + 64
    assert data[smcd : smcd + 32] == b"S".ljust(32, b"\0")
    g = smcd + 48
    assert data[g : g + 10] == (0x1000).to_bytes(8, "big") + (0x20).to_bytes(2, "big")
    assert data[g + 70 : g + 80] == (0x1007).to_bytes(8, "big") + (0x27).to_bytes(2, "big")
    assert len(data) == g + 80 + 4
    assert clc.decode(data) == p
    e = err(
        proposal(
            typev1=clc.SmcType.R, typev2=clc.SmcType.D, prefix=clc.IpPrefixArea(), v2=clc.V2Extension(smcd=clc.SmcdV2Extension(gids=gids + ((1, 1),)))
        ).encode
    )
    assert (e.offset, e.reason) == (88 + 1, "9 ISM GID entries, at most 8")
    e = err(proposal(typev1=clc.SmcType.R, typev2=clc.SmcType.R, prefix=clc.IpPrefixArea(), v2=clc.V2Extension(eids=(bytes(32),) * 9)).encode)
    assert (e.offset, e.reason) == (88, "9 user EIDs, at most 8")
    # Decoding: a GID count beyond 8, a misplaced SMC-Dv2 extension.
    short = bytearray(data)
    short[v2 + 1] = 9
    e = err(clc.decode, bytes(short))
    assert (e.offset, e.reason) == (v2 + 1, "ism_gid_cnt 9 exceeds 8")
    moved = bytearray(data)
    moved[v2 + 6 : v2 + 8] = (100).to_bytes(2, "big")
    e = err(clc.decode, bytes(moved))
    assert (e.offset, e.reason) == (v2 + 6, f"smcd_v2_ext_offset 100 puts the SMC-Dv2 extension at {v2 + 108}, expected {v2 + 104}")
    many = bytearray(data)
    many[v2] = 9
    e = err(clc.decode, bytes(many))
    assert (e.offset, e.reason) == (v2, "eid_cnt 9 exceeds 8")


def test_v2_proposal_layout_errors():
    p = proposal(typev1=clc.SmcType.R, typev2=clc.SmcType.R, prefix=clc.IpPrefixArea(), v2=clc.V2Extension())
    data = p.encode()
    assert data[50:52] == (36).to_bytes(2, "big") and len(data) == 88 + 40 + 4
    moved = bytearray(data)
    moved[50:52] = (40).to_bytes(2, "big")
    e = err(clc.decode, bytes(moved))
    assert (e.offset, e.reason) == (50, "v2_ext_offset 40 puts the v2 extension at 92, expected 88")
    moved[50:52] = b"\0\0"
    assert err(clc.decode, bytes(moved)).reason == "typev2 offers SMC v2 but v2_ext_offset is 0 (no v2 extension)"
    longer = data[:5] + (136).to_bytes(2, "big") + data[7:128] + bytes(4) + SMCR
    e = err(clc.decode, longer)
    assert (e.offset, e.reason) == (5, "length 136 does not match the version 2 layout (132 bytes)")
    at0 = bytearray(data)
    at0[38:40] = b"\0\0"
    e = err(clc.decode, bytes(at0))
    assert (e.offset, e.reason) == (38, "ip_area_offset 0: a v2 Proposal offering v1 types puts the prefix at 80 (offset 40)")
    e = err(proposal(typev1=clc.SmcType.N, typev2=clc.SmcType.R, prefix=clc.IpPrefixArea(), v2=clc.V2Extension()).encode)
    assert e.offset == 40 and e.reason == "an IP prefix area is required exactly when typev1 offers SMC-R or SMC-D"
    e = err(proposal(typev1=clc.SmcType.R, prefix=clc.IpPrefixArea(ipv6=V6 + V6[:1])).encode)
    assert (e.offset, e.reason) == (87, "9 IPv6 prefixes, at most 8")
    e = err(proposal(version=1, typev1=clc.SmcType.R, prefix=clc.IpPrefixArea(), v2=clc.V2Extension()).encode)
    assert (e.offset, e.reason) == (7, "a v2 extension needs header version 2")
    e = err(proposal(typev1=clc.SmcType.R, prefix=clc.IpPrefixArea(), typev2=clc.SmcType.R).encode)
    assert (e.offset, e.reason) == (50, "a v2 extension is required exactly when typev2 offers SMC-R or SMC-D")
    e = err(proposal(typev1=clc.SmcType.R, prefix=clc.IpPrefixArea(), typev2=clc.SmcType.D, v2=clc.V2Extension()).encode)
    assert (e.offset, e.reason) == (50, "an SMC-Dv2 extension is required exactly when typev2 offers SMC-D")
    e = err(proposal(typev1=clc.SmcType.R, prefix=clc.IpPrefixArea(), smcd=None).encode)
    assert (e.offset, e.reason) == (38, "the RFC 7609 form (no SMC-D area) is version 1 with typev1 R/D/B only")
    pfx = bytearray(data)
    pfx[87] = 9
    e = err(clc.decode, bytes(pfx))
    assert (e.offset, e.reason) == (87, "IPv6 prefix count 9 exceeds 8")


def test_header_checks():
    d = clc.Decline(PEER, 0x03030000).encode()
    e = err(clc.decode_header, b"\xe2\xd4\xc3\xc5" + d[4:])
    assert (e.offset, e.reason) == (0, "eyecatcher e2d4c3c5 is neither SMCR (e2d4c3d9) nor SMCD (e2d4c3c4)")
    e = err(clc.decode_header, d[:4] + b"\x05" + d[5:])
    assert (e.offset, e.reason) == (4, "unknown CLC message type 5")
    e = err(clc.decode_header, d[:5] + b"\x00\x0b" + d[7:])
    assert (e.offset, e.reason, e.message_type) == (5, "length 11 is smaller than header plus trailer (12)", "CLC Decline")
    assert clc.decode_header(d[:5] + b"\x00\x0c" + d[7:]).length == 12
    e = err(clc.decode_header, d[:7] + b"\x08" + d[8:])
    assert (e.offset, e.reason) == (7, "version 0 is not a valid CLC version")
    h = clc.decode_header(d[:7] + b"\xfb" + d[8:])
    assert (h.version, h.typev2, h.typev1, h.flag) == (15, 2, 3, True)
    assert not clc.decode_header(d[:7] + b"\x14" + d[8:]).flag
    e = err(clc.Decline(PEER, 1, eyecatcher="SMCX").encode)
    assert (e.offset, e.reason) == (0, "eyecatcher must be 'SMCR' or 'SMCD', got 'SMCX'")
    e = err(clc.Decline(PEER, 1, version=0).encode)
    assert (e.offset, e.reason) == (7, "version must be at least 1")
    e = err(clc.decode, d + b"\0")
    assert (e.offset, e.reason) == (5, "header length 28 but 29 bytes given")


def accept(**kw):
    base = dict(
        peer_id=PEER,
        gid=GID,
        mac=MAC,
        qpn=0x123456,
        rmb_rkey=0x01020304,
        rmbe_alert_token=0x0A0B0C0D,
        rmbe_size=5,
        qp_mtu=4,
        rmb_vaddr=0x1122334455667788,
        psn=0xABCDEF,
    )
    base.update(kw)
    return base


def test_accept_v2_first_contact_extension_fields():
    fce = clc.FirstContactExt(
        v2_direct=False, os_type=3, release=2, hostname=b"h".ljust(32), max_conns=17, max_links=4, feature_mask=0x0304, vendor_options=0x05060708
    )
    a = clc.Accept(**accept(version=2, first_contact=True, fce=fce, rmbe_idx=9, eid=b"E".ljust(32)))
    data = a.encode()
    assert len(data) == 160 and data[7] == 0x28 and data[45] == 9 and data[50] == 0x54
    assert data[104:108] == bytes([0, 0x32, 0, 0]) and data[140:148] == bytes([17, 4, 3, 4, 5, 6, 7, 8])
    assert clc.decode(data) == a
    # The 36-byte v2.0 extension: no counts, read as 0.
    short = data[:5] + (144).to_bytes(2, "big") + data[7:140] + SMCR
    s = clc.decode(short)
    assert s.fce == clc.FirstContactExt(v2_direct=False, os_type=3, release=2, hostname=b"h".ljust(32), max_conns=0, max_links=0)
    odd = data[:5] + (148).to_bytes(2, "big") + data[7:144] + SMCR
    e = err(clc.decode, odd)
    assert (e.offset, e.reason) == (5, "length 148: the first-contact extension must be 36 or 52 bytes, not 40")
    direct = clc.decode(clc.Accept(**accept(version=2, first_contact=True, fce=clc.FirstContactExt())).encode())
    assert direct.fce.v2_direct
    e = err(clc.Accept(**accept(version=2, first_contact=True, fce=clc.FirstContactExt(os_type=16))).encode)
    assert (e.offset, e.reason) == (105, "os_type=16 does not fit in 4 bits")
    e = err(clc.Accept(**accept(version=2, first_contact=True, fce=clc.FirstContactExt(release=16))).encode)
    assert (e.offset, e.reason) == (105, "release=16 does not fit in 4 bits")


def test_accept_length_rules():
    v1 = clc.Accept(**accept())
    data = v1.encode()
    assert len(data) == 68 and data[7] == 0x10 and data[50] == 0x54 and data[61:64] == bytes.fromhex("abcdef")
    e = err(clc.decode, data[:5] + (72).to_bytes(2, "big") + data[7:64] + bytes(4) + SMCR)
    assert (e.offset, e.reason) == (5, "length 72: a version 1 SMC-R Accept is exactly 68 bytes")
    v2 = clc.Accept(**accept(version=2)).encode()
    assert len(v2) == 108
    e = err(clc.decode, v2[:5] + (104).to_bytes(2, "big") + v2[7:100] + SMCR)
    assert (e.offset, e.reason) == (5, "length 104: a version 2 SMC-R Accept is at least 108 bytes")
    e = err(clc.decode, v2[:5] + (112).to_bytes(2, "big") + v2[7:104] + bytes(4) + SMCR)
    assert (e.offset, e.reason) == (5, "length 112: a v2 SMC-R Accept without first contact is exactly 108 bytes")
    e = err(clc.Accept(**accept(fce=clc.FirstContactExt())).encode)
    assert (e.offset, e.reason) == (64, "a version 1 Accept/Confirm carries no v2 parts")
    e = err(clc.Accept(**accept(version=2, first_contact=True)).encode)
    assert (e.offset, e.reason) == (104, "a v2 first-contact Accept/Confirm needs a first-contact extension, and only it")
    e = err(clc.Accept(**accept(rmbe_size=16)).encode)
    assert (e.offset, e.reason) == (50, "rmbe_size=16 does not fit in 4 bits")
    e = err(clc.Accept(**accept(qp_mtu=16)).encode)
    assert (e.offset, e.reason) == (50, "qp_mtu=16 does not fit in 4 bits")
    bad_trailer = data[:64] + b"\xe2\xd4\xc3\xc5"
    e = err(clc.decode, bad_trailer)
    assert (e.offset, e.reason) == (64, "trailer e2d4c3c5 is not an SMCR or SMCD eyecatcher")
    n = bytearray(data)
    n[7] = 0x12
    e = err(clc.decode, bytes(n))
    assert (e.offset, e.reason) == (7, "typev1 2 of an Accept/Confirm must be 0 (SMC-R) or 1 (SMC-D)")


def test_confirm_gid_list_with_both_extension_forms():
    gids = (GID, bytes(range(16)), bytes(16))
    c = clc.Confirm(**accept(version=2, first_contact=True, fce=clc.FirstContactExt(max_conns=3), gids=gids))
    data = c.encode()
    assert len(data) == 108 + 52 + 4 + 48 and data[156:160] == b"\x03\0\0\0" and data[176:192] == bytes(range(16))
    assert clc.decode(data) == c
    # v2.0: a 36-byte extension, then the count and the list.
    short = data[:5] + (len(data) - 16).to_bytes(2, "big") + data[7:140] + data[156:]
    s = clc.decode(short)
    assert s.gids == gids and s.fce.max_conns == 0
    e = err(clc.decode, data[:5] + (len(data) + 4).to_bytes(2, "big") + data[7:-4] + bytes(4) + SMCR)
    assert (e.offset, e.reason) == (5, f"length {len(data) + 4} does not fit a first-contact extension (36 or 52 bytes) and its GID list")
    e = err(clc.Confirm(**accept(version=2, gids=(GID,))).encode)
    assert (e.offset, e.reason) == (156, "a GID list is only sent in a v2 first-contact Confirm")
    e = err(clc.Confirm(**accept(version=2, first_contact=True, fce=clc.FirstContactExt(), gids=(GID,) * 256)).encode)
    assert (e.offset, e.reason) == (156, "256 GIDs do not fit the count byte")


def test_smcd_accept_is_reported():
    body = bytearray(78)
    body[0:4] = clc.EYECATCHER_SMCD
    body[4] = 2
    body[5:7] = (78).to_bytes(2, "big")
    body[7] = 0x29  # version 2, first contact, SMC-D
    body[8:16] = (0x0102030405060708).to_bytes(8, "big")
    body[16:24] = (0x1112131415161718).to_bytes(8, "big")
    body[24] = 3
    body[25] = 0x50
    body[28:32] = (0xAABBCCDD).to_bytes(4, "big")
    body[32:34] = (0x0123).to_bytes(2, "big")
    body[34:66] = b"EID".ljust(32)
    body[74:78] = clc.EYECATCHER_SMCD
    m = clc.decode(bytes(body))
    assert isinstance(m, clc.SmcdAcceptConfirm)
    assert (m.type, m.version, m.first_contact, m.gid, m.token, m.dmbe_idx, m.dmbe_size, m.linkid, m.chid) == (
        clc.ClcType.ACCEPT,
        2,
        True,
        0x0102030405060708,
        0x1112131415161718,
        3,
        5,
        0xAABBCCDD,
        0x123,
    )
    assert m.eid == b"EID".ljust(32) and m.raw == bytes(body) and m.eyecatcher == "SMCD"
    short = bytes(body[:5]) + (74).to_bytes(2, "big") + bytes(body[7:70]) + clc.EYECATCHER_SMCD
    e = err(clc.decode, short)
    assert (e.offset, e.reason) == (5, "length 74: an SMC-D Accept version 2 needs 78 bytes")
    v1 = bytes(body[:5]) + (48).to_bytes(2, "big") + b"\x19" + bytes(body[8:44]) + clc.EYECATCHER_SMCD
    m1 = clc.decode(v1)
    assert m1.version == 1 and m1.chid == 0 and m1.eid == b""
    v1_long = bytes(body[:5]) + (52).to_bytes(2, "big") + b"\x19" + bytes(body[8:48]) + clc.EYECATCHER_SMCD
    assert err(clc.decode, v1_long).reason == "length 52: an SMC-D Accept version 1 needs 48 bytes"


def test_decline_forms():
    d = clc.Decline(PEER, 0x03030000, out_of_sync=True, os_type=2, version=2, extra_diagnosis=(1, 2, 3, 4))
    data = d.encode()
    assert len(data) == 44 and data[7] == 0x28 and data[16:21] == bytes([3, 3, 0, 0, 0x20]) and data[24:40] == bytes.fromhex("00000001000000020000000300000004")
    assert clc.decode(data) == d
    e = err(clc.Decline(PEER, 1, os_type=16).encode)
    assert (e.offset, e.reason) == (20, "os_type=16 does not fit in 4 bits")
    e = err(clc.Decline(PEER, 1, extra_diagnosis=(1, 2, 3)).encode)
    assert (e.offset, e.reason) == (24, "the v2 Decline carries exactly 4 additional diagnosis words")
    e = err(clc.decode, data[:5] + (32).to_bytes(2, "big") + data[7:28] + SMCR)
    assert (e.offset, e.reason) == (5, "length 32: a Decline is 28 (v1) or 44 (v2) bytes")
    e = err(clc.Decline(PEER[:7], 1).encode)
    assert (e.offset, e.reason) == (8, "peer_id must be 8 bytes")


def test_split_stream():
    d = clc.Decline(PEER, 1).encode()
    msgs, rest = clc.split_stream(d + d + d[:8])
    assert msgs == [d, d] and rest == d[:8]
    assert clc.split_stream(d[:7]) == ([], d[:7])


def test_helpers():
    assert clc.make_eid(" ab-1.x ") == b"AB-1.X".ljust(32)
    for bad in ("", "x" * 33, "-ab", "a b", "é"):
        with pytest.raises(ValueError):
            clc.make_eid(bad)
    assert clc.make_eid("x" * 32) == b"X" * 32
    assert clc.eid_text(b"AB\0 ") == "AB"
    assert clc.make_hostname("h" * 40) == b"h" * 32 and clc.make_hostname("vm") == b"vm".ljust(32)
    assert [clc.rmbe_size_bytes(c) for c in (0, 1, 15)] == [16384, 32768, 1 << 29]
    for bad in (-1, 16):
        with pytest.raises(ValueError, match=f"compressed RMBE size {bad} is not in 0..15"):
            clc.rmbe_size_bytes(bad)
    assert [clc.rmbe_size_compress(s) for s in (1, 16384, 16385, 32768, 32769, 1 << 40)] == [0, 0, 1, 1, 2, 15]
    with pytest.raises(ValueError, match="RMBE size 0 must be positive"):
        clc.rmbe_size_compress(0)
    assert [clc.qp_mtu_bytes(c) for c in (1, 5)] == [256, 4096]
    for bad in (0, 6):
        with pytest.raises(ValueError, match=f"QP MTU code {bad} is not in 1..5"):
            clc.qp_mtu_bytes(bad)
    assert [clc.qp_mtu_code(s) for s in (256, 512, 1024, 2048, 4096)] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"path MTU 1500 is not one of \[256, 512, 1024, 2048, 4096\]"):
        clc.qp_mtu_code(1500)
    assert clc.SmcType.B.has_r and clc.SmcType.B.has_d and not clc.SmcType.N.has_r and not clc.SmcType.R.has_d


def test_survivors_of_the_sampled_run():
    # A v2 extension without typev2 offering v2 is refused, as its absence when offered.
    e = err(proposal(typev1=clc.SmcType.R, prefix=clc.IpPrefixArea(), v2=clc.V2Extension()).encode)
    assert (e.offset, e.reason) == (50, "a v2 extension is required exactly when typev2 offers SMC-R or SMC-D")
    # A version 1 Proposal in the Linux form carries the SMC-D area.
    p = proposal(version=1, typev1=clc.SmcType.R, smcd=clc.SmcdArea(ism_gid=5, ism_chid=6), prefix=clc.IpPrefixArea())
    data = p.encode()
    assert data[38:40] == (40).to_bytes(2, "big") and data[40:50] == (5).to_bytes(8, "big") + (6).to_bytes(2, "big")
    assert clc.decode(data) == p
    # A v2 Proposal whose layout ends at 196 (four IPv6 prefixes): length 200, and a wrong one named.
    v2p = proposal(typev1=clc.SmcType.R, typev2=clc.SmcType.R, prefix=clc.IpPrefixArea(ipv6=V6[:4]), v2=clc.V2Extension())
    data = v2p.encode()
    assert len(data) == 80 + 8 + 68 + 40 + 4 == 200 and clc.decode(data) == v2p
    e = err(clc.decode, data[:5] + (204).to_bytes(2, "big") + data[7:196] + bytes(4) + SMCR)
    assert (e.offset, e.reason) == (5, "length 204 does not match the version 2 layout (200 bytes)")
    # A bad GID names its own offset.
    e = err(clc.Accept(**accept(gid=bytes(15))).encode)
    assert (e.offset, e.reason) == (16, "gid must be 16 bytes")
    # A header version above 2 reads the v2 layout (the kernel only refuses version 0).
    a = bytearray(clc.Accept(**accept(version=2, eid=b"X".ljust(32))).encode())
    a[7] = 0x30
    d = clc.decode(bytes(a))
    assert d.version == 3 and d.eid == b"X".ljust(32)
    # A first-contact Confirm 4 bytes too short for the 52-byte extension and its GID count.
    c = clc.Confirm(**accept(version=2, first_contact=True, fce=clc.FirstContactExt())).encode()
    cut = c[:5] + (156).to_bytes(2, "big") + c[7:152] + SMCR
    e = err(clc.decode, cut)
    assert (e.offset, e.reason) == (5, "length 156 does not fit a first-contact extension (36 or 52 bytes) and its GID list")
    # Many GIDs: a body past 256 bytes.
    gids = tuple(bytes([i]) * 16 for i in range(15))
    big = clc.Confirm(**accept(version=2, first_contact=True, fce=clc.FirstContactExt(), gids=gids))
    assert clc.decode(big.encode()).gids == gids
    e = err(clc.Decline(PEER, 1, extra_diagnosis=(1, 2, 3, 4, 5)).encode)
    assert (e.offset, e.reason) == (24, "the v2 Decline carries exactly 4 additional diagnosis words")
    d = clc.Decline(PEER, 1).encode()
    assert clc.split_stream(d) == ([d], b"")


def test_rerun_survivors():
    # The kernel's SMC_CLC_OS_* numbers.
    assert (clc.OS_ZOS, clc.OS_LINUX, clc.OS_AIX) == (1, 2, 3)
    # Prefixes are values: hashable, not assignable.
    pfx = clc.Ipv6Prefix(V6[0].prefix, 64)
    assert {pfx, clc.Ipv6Prefix(V6[0].prefix, 64)} == {pfx}
    with pytest.raises(AttributeError):
        pfx.length = 48  # type: ignore[misc]
    # SMC-Dv2 with one user EID: the SMC-Dv2 extension starts 64 bytes after the EID list's start.
    one = proposal(typev1=clc.SmcType.R, typev2=clc.SmcType.B, prefix=clc.IpPrefixArea(),
                   v2=clc.V2Extension(eids=(b"E".ljust(32),), smcd=clc.SmcdV2Extension(gids=((1, 2),))))  # fmt: skip
    data = one.encode()
    assert data[88 + 6 : 88 + 8] == (64).to_bytes(2, "big") and clc.decode(data) == one
    # Two IPv6 prefixes, two EIDs, eight GIDs: the v2 extension at 122, offsets that are not multiples of 8.
    gids = tuple((0x0100 + i, 0x10 + i) for i in range(8))
    many = proposal(typev1=clc.SmcType.R, typev2=clc.SmcType.B, prefix=clc.IpPrefixArea(ipv6=V6[:2]),
                    v2=clc.V2Extension(eids=(b"E1".ljust(32), b"E2".ljust(32)), smcd=clc.SmcdV2Extension(seid=b"S" * 32, gids=gids)))  # fmt: skip
    data = many.encode()
    assert data[50:52] == (122 - 52).to_bytes(2, "big") and data[122 + 40 : 122 + 104] == b"E1".ljust(32) + b"E2".ljust(32)
    assert data[274 + 10 : 274 + 20] == (0x0101).to_bytes(8, "big") + (0x11).to_bytes(2, "big")
    assert clc.decode(data) == many
    # A v2 Proposal too short for its SMC-D/v2 area.
    short = data[:5] + (64).to_bytes(2, "big") + data[7:60] + SMCR
    e = err(clc.decode, short)
    assert (e.offset, e.reason) == (40, "SMC-D/v2 area needs bytes 40..79 but the message has 64 bytes")
    # The first-contact extension's direct bit is bit 7 only.
    a = bytearray(clc.Accept(**accept(version=2, first_contact=True, fce=clc.FirstContactExt())).encode())
    a[104] = 0x7F
    assert not clc.decode(bytes(a)).fce.v2_direct
    # A first-contact Confirm with an empty GID list.
    c = clc.Confirm(**accept(version=2, first_contact=True, fce=clc.FirstContactExt(max_conns=255)))
    data = c.encode()
    assert len(data) == 108 + 52 + 4 and data[156] == 0
    assert clc.decode(data) == c


def test_smcd_accept_version_3_reads_the_v2_fields():
    body = bytearray(78)
    body[0:4] = clc.EYECATCHER_SMCD
    body[4] = 3
    body[5:7] = (78).to_bytes(2, "big")
    body[7] = 0x31
    body[32:34] = (0x0456).to_bytes(2, "big")
    body[34:66] = b"V3".ljust(32)
    body[74:78] = clc.EYECATCHER_SMCD
    m = clc.decode(bytes(body))
    assert (m.type, m.version, m.chid, m.eid) == (clc.ClcType.CONFIRM, 3, 0x456, b"V3".ljust(32))


def test_header_version_and_v2_release_defaults():
    e = err(clc.Decline(PEER, 1, version=16).encode)
    assert (e.offset, e.reason) == (7, "version=16 does not fit in 4 bits")
    assert clc.Decline(PEER, 1, version=15).encode()[7] == 0xF0
    # A v2 extension announces release 1 (SMC_RELEASE_1, v2.1) unless told otherwise.
    data = proposal(typev1=clc.SmcType.R, typev2=clc.SmcType.R, prefix=clc.IpPrefixArea(), v2=clc.V2Extension()).encode()
    assert data[88 + 3] == 0x10


def test_fresh_sample_survivors():
    e = err(proposal(typev1=clc.SmcType.R, typev2=clc.SmcType.R, prefix=clc.IpPrefixArea(), v2=clc.V2Extension(release=16)).encode)
    assert (e.offset, e.reason) == (91, "release=16 does not fit in 4 bits")
    # typev1 N with ip_area_offset 40: the count the kernel reads is at 87.
    p = bytearray(proposal(typev1=clc.SmcType.N, typev2=clc.SmcType.R, v2=clc.V2Extension()).encode())
    p[38:40] = (40).to_bytes(2, "big")
    p[87] = 9
    e = err(clc.decode, bytes(p))
    assert (e.offset, e.reason) == (87, "IPv6 prefix count 9 exceeds 8")
    # The first-contact extension announces two links unless told otherwise.
    a = clc.Accept(**accept(version=2, first_contact=True, fce=clc.FirstContactExt())).encode()
    assert a[140:142] == bytes([255, 2])
    # An 8-byte bad header at the front of the stream is refused, not left for later.
    with pytest.raises(clc.ClcError, match="unknown CLC message type 9"):
        clc.split_stream(SMCR + b"\x09\x00\x10\x10")
