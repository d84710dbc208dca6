"""Known-answer tests: byte vectors written by hand from the offsets in the protocol
digest (and two real captures), never produced by our own encoders. Each vector is
decoded and its fields checked, then re-encoded and compared byte for byte."""

from __future__ import annotations

import ipaddress
import re

import pytest

from stack.wire import cdc, clc, codes, llc, roce


def h(text: str) -> bytes:
    """Hex with whitespace and '# comments' ignored."""
    return bytes.fromhex(re.sub(r"#[^\n]*", "", text).replace(" ", "").replace("\n", ""))


SMCR = "e2d4c3d9"
PEER_ID = "aabb525400120001"
GID_V1 = "fe80000000000000505400fffe120001"
GID_V2 = "00000000000000000000ffff0a020001"
MAC = "525400120001"
UEID = b"SMC-TEST-UEID".ljust(32, b" ").hex()
HOST = b"vm-b".ljust(32, b" ").hex()

# ------------------------------------------------------------------ CLC

PROPOSAL_LINUX_V2 = h(f"""
{SMCR} 01 00a4 20            # @0 eyecatcher, type 1, length 164, version 2 typev2 R typev1 R
{PEER_ID} {GID_V1} {MAC}     # @8 peer id, @16 GID, @32 MAC
0028                         # @38 ip_area_offset 40
0000000000000000 0000 0024   # @40 ISM GID, @48 CHID, @50 v2_ext_offset 36 -> ext at 88
000000 0000000000            # @52 vendor OUI, options
{"00" * 20}                  # @60 reserved
0a020000 18 0000 00          # @80 subnet 10.2.0.0, /24, reserved, 0 IPv6 prefixes
01 00 00 10 0000 0000        # @88 eid_cnt 1, ism_gid_cnt 0, rsvd, release 1, rsvd, smcd_v2_ext_offset 0
{GID_V2}                     # @96 RoCEv2 GID ::ffff:10.2.0.1
ff 02 0000 {"00" * 12}       # @112 max_conns 255, max_links 2, feature mask, reserved
{UEID}                       # @128 user EID
{SMCR}                       # @160 trailer
""")

# RFC 7609 form as Linux <= 5.9 sent it: version 1, ip_area_offset 0, prefix at 40, 52 bytes.
PROPOSAL_RFC = h(f"""
{SMCR} 01 0034 10 {PEER_ID} {GID_V1} {MAC} 0000   # ip_area_offset 0
c0a80000 18 0000 00                               # @40 192.168.0.0/24, no IPv6
{SMCR}
""")

ACCEPT_V1 = h(f"""
{SMCR} 02 0044 18        # type 2, length 68, version 1, first contact (0x08), SMC-R
{PEER_ID} {GID_V1} {MAC}
000123 00001234 01       # @38 QPN 0x123, @41 rkey, @45 RMBE index 1
00000042 23 00           # @46 alert token 0x42, @50 RMBE size 2 (64 KiB) | MTU 3 (1024), rsvd
0000000012340000 00      # @52 RMB address, rsvd
abcdef                   # @61 PSN
{SMCR}
""")

ACCEPT_V2_FIRST = h(f"""
{SMCR} 02 00a0 28 {PEER_ID} {GID_V2} {MAC}       # length 160, version 2, first contact
000456 00005678 01 00000007 15 00 00000000abcd0000 00 123456
{UEID} {"00" * 8}                                  # @64 negotiated EID, @96 reserved
80 25 0000 {HOST}                                  # @104 FCE: direct, OS 2 (Linux) release 5, hostname
ff 02 0000 00000000 {"00" * 8}                     # @140 max_conns 255, max_links 2, mask, vendor, rsvd
{SMCR}
""")

CONFIRM_V2_FIRST_2GIDS = h(f"""
{SMCR} 03 00c4 28 {PEER_ID} {GID_V2} {MAC}       # length 196 = 164 + 2 * 16
000789 0000aaaa 01 00000009 24 00 00000000dead0000 00 000001
{UEID} {"00" * 8}
80 21 0000 {HOST} 80 02 0001 00000000 {"00" * 8}  # FCE release 1, max_conns 128, mask 1
02 000000                                          # @156 gid_cnt 2
{GID_V2} 00000000000000000000ffff0a030001          # @160 GIDs
{SMCR}
""")

ACCEPT_V2_REUSE = h(f"""
{SMCR} 02 006c 20 {PEER_ID} {GID_V2} {MAC}       # length 108, version 2, no first contact
000456 00005679 01 00000008 15 00 00000000abce0000 00 123456
{UEID} {"00" * 8} {SMCR}
""")

# The Linux 6.12 kernel's own Decline, captured in the kernel lab (digest: kernel-lab README).
DECLINE_KERNEL = h("e2d4c3d9 04 001c 10 9ade525400120002 03030000 00 000000 e2d4c3d9")

DECLINE_V2 = h(f"""
{SMCR} 04 002c 28 {PEER_ID}   # version 2, out of sync
04000000 20 000000            # SYNCERR, OS Linux
00000001 00000002 00000003 00000004 {SMCR}
""")


def test_proposal_linux_v2_form():
    p = clc.decode(PROPOSAL_LINUX_V2)
    assert isinstance(p, clc.Proposal)
    assert (p.version, p.typev1, p.typev2, p.ip_area_offset) == (2, clc.SmcType.R, clc.SmcType.R, 40)
    assert p.peer_id.hex() == PEER_ID and p.gid.hex() == GID_V1 and p.mac.hex() == MAC
    assert p.prefix.subnet == ipaddress.IPv4Address("10.2.0.0") and p.prefix.prefix_len == 24
    assert p.v2.eids == (bytes.fromhex(UEID),) and clc.eid_text(p.v2.eids[0]) == "SMC-TEST-UEID"
    assert p.v2.roce_gid.hex() == GID_V2 and p.v2.release == 1
    assert (p.v2.max_conns, p.v2.max_links) == (255, 2)
    assert p.encode() == PROPOSAL_LINUX_V2


def test_proposal_rfc_form():
    p = clc.decode(PROPOSAL_RFC)
    assert p.version == 1 and p.smcd is None and p.ip_area_offset == 0
    assert str(p.prefix.subnet) == "192.168.0.0" and p.prefix.prefix_len == 24
    assert p.encode() == PROPOSAL_RFC


def test_accept_v1():
    a = clc.decode(ACCEPT_V1)
    assert isinstance(a, clc.Accept) and a.first_contact and a.version == 1
    assert (a.qpn, a.rmb_rkey, a.rmbe_idx, a.rmbe_alert_token) == (0x123, 0x1234, 1, 0x42)
    assert (a.rmbe_size, a.qp_mtu, a.rmb_vaddr, a.psn) == (2, 3, 0x12340000, 0xABCDEF)
    assert clc.rmbe_size_bytes(a.rmbe_size) == 65536 and clc.qp_mtu_bytes(a.qp_mtu) == 1024
    assert a.encode() == ACCEPT_V1
    # the same bytes as a Confirm differ only in the type byte
    confirm = ACCEPT_V1[:4] + b"\x03" + ACCEPT_V1[5:]
    c = clc.decode(confirm)
    assert isinstance(c, clc.Confirm) and c.qpn == 0x123 and c.encode() == confirm


def test_accept_v2_first_contact():
    a = clc.decode(ACCEPT_V2_FIRST)
    assert isinstance(a, clc.Accept) and a.version == 2 and a.first_contact
    assert a.eid == bytes.fromhex(UEID)
    assert a.fce.v2_direct and a.fce.os_type == clc.OS_LINUX and a.fce.release == 5
    assert a.fce.hostname.rstrip() == b"vm-b" and (a.fce.max_conns, a.fce.max_links) == (255, 2)
    assert (a.rmbe_size, a.qp_mtu) == (1, 5)
    assert a.encode() == ACCEPT_V2_FIRST


def test_confirm_v2_gid_list():
    c = clc.decode(CONFIRM_V2_FIRST_2GIDS)
    assert isinstance(c, clc.Confirm) and len(CONFIRM_V2_FIRST_2GIDS) == 196
    assert c.gids == (bytes.fromhex(GID_V2), bytes.fromhex("00000000000000000000ffff0a030001"))
    assert c.fce.release == 1 and c.fce.max_conns == 128 and c.fce.feature_mask == 1
    assert c.encode() == CONFIRM_V2_FIRST_2GIDS


def test_accept_v2_subsequent_contact():
    a = clc.decode(ACCEPT_V2_REUSE)
    assert not a.first_contact and a.fce is None and a.encode() == ACCEPT_V2_REUSE


def test_kernel_decline():
    d = clc.decode(DECLINE_KERNEL)
    assert isinstance(d, clc.Decline) and d.version == 1 and not d.out_of_sync
    assert d.diagnosis == 0x03030000 and codes.format_reason(d.diagnosis) == "0x03030000 NOSMCDEV"
    assert d.encode() == DECLINE_KERNEL


def test_decline_v2():
    d = clc.decode(DECLINE_V2)
    assert d.out_of_sync and d.os_type == clc.OS_LINUX and d.extra_diagnosis == (1, 2, 3, 4)
    assert codes.DECLINE_REASONS.name(d.diagnosis) == "SYNCERR"
    assert d.encode() == DECLINE_V2


def test_smcd_accept_reported_not_spoken():
    smcd_v1 = h(f"e2d4c3c4 02 0030 19 {'11' * 8} {'22' * 8} 01 30 0000 00000005 {'00' * 12} e2d4c3c4")
    m = clc.decode(smcd_v1)
    assert isinstance(m, clc.SmcdAcceptConfirm) and m.type == clc.ClcType.ACCEPT and m.first_contact
    assert m.gid == 0x1111111111111111 and m.token == 0x2222222222222222 and m.linkid == 5 and m.dmbe_size == 3


@pytest.mark.parametrize(
    "data, offset, words",
    [
        (PROPOSAL_LINUX_V2[:-1], 5, "header length 164 but 163"),
        (b"\x00" + PROPOSAL_LINUX_V2[1:], 0, "eyecatcher"),
        (PROPOSAL_LINUX_V2[:-4] + b"XXXX", 160, "trailer"),
        (PROPOSAL_LINUX_V2[:4] + b"\x07" + PROPOSAL_LINUX_V2[5:], 4, "unknown CLC message type 7"),
        (PROPOSAL_LINUX_V2[:38] + b"\x00\x30" + PROPOSAL_LINUX_V2[40:], 38, "ip_area_offset 48"),
        (PROPOSAL_LINUX_V2[:50] + b"\x00\x20" + PROPOSAL_LINUX_V2[52:], 50, "v2_ext_offset 32"),
        (PROPOSAL_LINUX_V2[:87] + b"\x09" + PROPOSAL_LINUX_V2[88:], 87, "IPv6 prefix count 9"),
        (PROPOSAL_LINUX_V2[:88] + b"\x09" + PROPOSAL_LINUX_V2[89:], 88, "eid_cnt 9"),
        (ACCEPT_V1[:5] + b"\x00\x45" + ACCEPT_V1[7:] + b"\x00", 5, "exactly 68"),
        (DECLINE_KERNEL[:5] + b"\x00\x1e" + DECLINE_KERNEL[7:] + b"\0\0", 5, "28 (v1) or 44 (v2)"),
        (ACCEPT_V1[:7] + b"\x02" + ACCEPT_V1[8:], 7, "version 0"),
    ],
)
def test_clc_errors_name_offset_and_reason(data, offset, words):
    with pytest.raises(clc.ClcError) as e:
        clc.decode(data)
    assert e.value.offset == offset and words in str(e.value), str(e.value)


def test_clc_stream_framing():
    stream = PROPOSAL_LINUX_V2 + ACCEPT_V1 + DECLINE_KERNEL[:10]
    msgs, rest = clc.split_stream(stream)
    assert msgs == [PROPOSAL_LINUX_V2, ACCEPT_V1] and rest == DECLINE_KERNEL[:10]


def test_rmbe_size_notation():
    assert [clc.rmbe_size_compress(n) for n in (1, 16384, 16385, 65536, 65537, 1 << 20, 1 << 40)] == [0, 0, 1, 2, 3, 6, 15]
    assert clc.rmbe_size_bytes(15) == 512 << 20


def test_clc_encoder_rejects_out_of_range():
    good = clc.decode(ACCEPT_V1)
    with pytest.raises(clc.ClcError, match="qpn=16777216 does not fit in 24 bits"):
        clc.Accept(**{**good.__dict__, "qpn": 1 << 24}).encode()
    with pytest.raises(clc.ClcError, match="rmbe_size=16"):
        clc.Accept(**{**good.__dict__, "rmbe_size": 16}).encode()
    with pytest.raises(clc.ClcError, match="peer_id must be 8 bytes"):
        clc.Decline(peer_id=b"abc", diagnosis=0).encode()


# ------------------------------------------------------------------ LLC

CONFIRM_LINK_V1 = h(f"""
01 2c 00 03              # type 1, length 44, rsvd, flags: no RMBE eyecatcher (0x03)
{MAC} {GID_V1}           # @4 MAC, @10 GID
000102 01 00000401       # @26 QPN, @29 link 1, @30 link user id
02 00 {"00" * 8}         # @34 max links 2, max conns, reserved
""")
# An x86-64 kernel's Confirm Link v2 starts 21 2c 00: length_v2 44 little-endian.
CONFIRM_LINK_V2_LE = h(f"21 2c00 83 {MAC} {GID_V2} 000102 01 00000401 02 ff {'00' * 8}")

ADD_LINK_V1 = h(f"""
02 2c 00 00 {MAC} 0000 {GID_V1}     # request; @10 reserved; @12 GID
000333 02 03 0a0b0c {"00" * 8}      # @28 QPN, @31 link 2, @32 MTU 1024, @33 PSN
""")
ADD_LINK_V1_REJECT = h(f"02 2c 01 c0 {MAC} 0000 {GID_V1} 000333 02 03 0a0b0c {'00' * 8}")
ADD_LINK_V2_LE = h(f"""
22 6800 00 {MAC} 0000 {GID_V2} 000333 02 05 0a0b0c {"00" * 8}   # length 104 = 72 + 2*16, LE
80 00 {GID_V2} {"00" * 8} 0200                                   # @44 direct, @46 target GID, @70 num_rkeys 2 LE
00001111 00002222 0000000010000000                               # @72 rkey triple 1
00003333 00004444 0000000020000000                               # @88 rkey triple 2
""")
ADD_LINK_CONT = h("""
03 2c 00 00 02 03 0000                        # link 2, 3 rkeys remaining, reserved
00001111 00002222 0000000010000000            # @8 triple 1
00003333 00004444 0000000020000000 00000000   # @24 triple 2, @40 reserved
""")
DELETE_LINK = h(f"04 2c 00 20 02 00010000 {'00' * 35}")  # orderly, link 2, LOST_PATH
DELETE_LINK_ALL_V2 = h(f"24 2c00 60 00 00030000 {'00' * 35}")  # all + orderly, PROG_INIT_TERM
REQ_ADD_LINK_V2 = h(f"25 3c00 00 {'00' * 20} 02 000000 {GID_V2} 00000000000000000000ffff0a030001")
CONFIRM_RKEY = h("""
06 2c 00 00 01 0000abcd 0000000030000000      # 1 other token; rkey, address on this link
02 0000dcba 0000000040000000                  # @17 link 2's rkey and address
00 00000000 0000000000000000 00               # @30 unused slot, @43 reserved
""")
CONFIRM_RKEY_NEG_RESP = h(f"06 2c 00 b0 00 0000abcd 0000000030000000 {'00' * 27}")  # RESP|NEG|RETRY
CONFIRM_RKEY_CONT = h(f"08 2c 00 00 02 01 00000001 0000000000001000 02 00000002 0000000000002000 {'00' * 13}")
TEST_LINK = h(f"07 2c 00 80 {'5a' * 16} {'00' * 24}")  # response echoing user data
DELETE_RKEY_V1 = h(f"09 2c 00 a0 02 40 0000 0000abcd 0000dcba {'00' * 24} 00000000")  # NEG resp, rkey 2 unknown
DELETE_RKEY_V2_LE = h(f"29 2c00 00 01 00 0000 0000abcd {'00' * 32}")


def test_confirm_link():
    m = llc.decode(CONFIRM_LINK_V1)
    assert isinstance(m, llc.ConfirmLink) and m.version == 1 and not m.response
    assert (m.qpn, m.link_num, m.link_uid, m.max_links, m.rmbe_eyec_flags) == (0x102, 1, bytes.fromhex("00000401"), 2, 3)
    assert m.encode() == CONFIRM_LINK_V1


def test_confirm_link_v2_little_endian_length():
    m = llc.decode(CONFIRM_LINK_V2_LE)
    assert m.version == 2 and m.response and m.max_conns == 255 and m.order == "little"
    assert m.gid.hex() == GID_V2
    assert m.encode("little") == CONFIRM_LINK_V2_LE
    # The same message from an s390 (big-endian) kernel, and what Wireshark expects.
    big = m.encode("big")
    assert big[1:3] == b"\x00\x2c" and llc.decode(big).order == "big" and llc.decode(big) == m


def test_add_link_v1_and_reject():
    m = llc.decode(ADD_LINK_V1)
    assert (m.qpn, m.link_num, m.qp_mtu, m.psn, m.rejected) == (0x333, 2, 3, 0x0A0B0C, False)
    assert m.encode() == ADD_LINK_V1
    r = llc.decode(ADD_LINK_V1_REJECT)
    assert r.response and r.rejected and r.reject_reason == 1
    assert codes.ADD_LINK_REJECT_REASONS.name(r.reject_reason) == "NO_ALT_PATH"
    assert r.encode() == ADD_LINK_V1_REJECT


def test_add_link_v2_rkeys_little_endian():
    m = llc.decode(ADD_LINK_V2_LE)
    assert m.version == 2 and m.direct and m.target_gid.hex() == GID_V2 and m.qp_mtu == 5
    assert m.rkeys == (llc.RkeyTriple(0x1111, 0x2222, 0x10000000), llc.RkeyTriple(0x3333, 0x4444, 0x20000000))
    assert m.encode("little") == ADD_LINK_V2_LE
    # Received inside an 8192-byte receive buffer, the length still decides.
    assert llc.decode(ADD_LINK_V2_LE + bytes(8192 - len(ADD_LINK_V2_LE))) == m


def test_add_link_cont_rkeys_at_offset_8():
    m = llc.decode(ADD_LINK_CONT)
    assert m.link_num == 2 and m.num_rkeys == 3
    assert m.rkeys == (llc.RkeyTriple(0x1111, 0x2222, 0x10000000), llc.RkeyTriple(0x3333, 0x4444, 0x20000000))
    assert m.encode() == ADD_LINK_CONT


def test_delete_link():
    m = llc.decode(DELETE_LINK)
    assert (m.link_num, m.reason, m.orderly, m.all) == (2, 0x00010000, True, False)
    assert codes.DELETE_LINK_REASONS.format(m.reason) == "0x00010000 LOST_PATH"
    assert m.encode() == DELETE_LINK
    a = llc.decode(DELETE_LINK_ALL_V2)
    assert a.all and a.orderly and a.version == 2 and a.encode() == DELETE_LINK_ALL_V2


def test_request_add_link_v2():
    m = llc.decode(REQ_ADD_LINK_V2)
    assert isinstance(m, llc.RequestAddLink) and len(m.gids) == 2 and m.gids[1][-4:] == bytes([10, 3, 0, 1])
    assert m.encode() == REQ_ADD_LINK_V2


def test_confirm_rkey_and_cont():
    m = llc.decode(CONFIRM_RKEY)
    assert (m.rkey, m.vaddr, m.others) == (0xABCD, 0x30000000, (llc.Rtoken(2, 0xDCBA, 0x40000000),))
    assert m.encode() == CONFIRM_RKEY
    n = llc.decode(CONFIRM_RKEY_NEG_RESP)
    assert n.response and n.negative and n.retry and n.encode() == CONFIRM_RKEY_NEG_RESP
    c = llc.decode(CONFIRM_RKEY_CONT)
    assert c.num_rkeys == 2 and c.tokens == (llc.Rtoken(1, 1, 0x1000), llc.Rtoken(2, 2, 0x2000))
    assert c.encode() == CONFIRM_RKEY_CONT


def test_test_link_and_delete_rkey():
    t = llc.decode(TEST_LINK)
    assert t.response and t.user_data == b"\x5a" * 16 and t.encode() == TEST_LINK
    d = llc.decode(DELETE_RKEY_V1)
    assert d.negative and d.response and d.rkeys == (0xABCD, 0xDCBA) and d.err_mask == 0x40
    assert d.encode() == DELETE_RKEY_V1
    d2 = llc.decode(DELETE_RKEY_V2_LE)
    assert d2.version == 2 and d2.rkeys == (0xABCD,) and d2.encode() == DELETE_RKEY_V2_LE


@pytest.mark.parametrize(
    "data, offset, words",
    [
        (bytes([0x25, 0x10, 0x27]) + bytes(41), 1, "reads 10000 (little-endian) or 4135 (big-endian)"),
        (bytes([0x23]) + CONFIRM_LINK_V2_LE[1:], 0, "unknown LLC message type 0x23"),
        (bytes([0x0A]) + CONFIRM_LINK_V1[1:], 0, "unknown LLC message type 0x0a"),
        (CONFIRM_LINK_V1[:1] + b"\x2d" + CONFIRM_LINK_V1[2:], 1, "a v1 LLC message is 44 bytes"),
        (CONFIRM_LINK_V1[:30], 1, "only 30 bytes given"),
        (ADD_LINK_V2_LE[:70] + b"\x01\x00" + ADD_LINK_V2_LE[72:], 70, "num_rkeys 1"),  # fewer announced than carried (more is legal: smc_llc_fill_ext_v2)
        (CONFIRM_RKEY[:4] + b"\x03" + CONFIRM_RKEY[5:], 4, "num_rkeys 3"),
        (DELETE_RKEY_V1[:4] + b"\x09" + DELETE_RKEY_V1[5:], 4, "at most 8"),
    ],
)
def test_llc_errors(data, offset, words):
    with pytest.raises(llc.LlcError) as e:
        llc.decode(data)
    assert e.value.offset == offset and words in str(e.value), str(e.value)


def test_llc_encoder_rejects():
    with pytest.raises(llc.LlcError, match="has no v2 form"):
        llc.AddLinkCont(version=2, link_num=1, num_rkeys=0).encode()
    with pytest.raises(llc.LlcError, match="link_num=256"):
        llc.DeleteLink(link_num=256, reason=0).encode()
    with pytest.raises(llc.LlcError, match="v1 LLC message is 44 bytes"):
        llc.RequestAddLink(version=1, gids=(bytes(16), bytes(16))).encode()
    with pytest.raises(llc.LlcError, match="byte order"):
        llc.TestLink().encode("middle")


# ------------------------------------------------------------------ CDC

CDC_DATA = h(
    """
fe 2c 0007 00000042      # type, length, seqno 7, alert token 0x42
0000 0003 00001000       # producer cursor: rsvd, wrap 3, count 0x1000
0000 0002 0000fff0       # consumer cursor: rsvd, wrap 2, count 0xfff0
88 40                    # write blocked + failover validation; peer connection closed
"""
    + "00" * 18
)


def test_cdc():
    m = cdc.decode(CDC_DATA)
    assert (m.seqno, m.token, m.prod, m.cons) == (7, 0x42, cdc.Cursor(3, 0x1000), cdc.Cursor(2, 0xFFF0))
    assert m.write_blocked and m.failover_validation and not m.urg_data_pending and m.peer_conn_closed
    assert not m.peer_done_writing and not m.peer_conn_abort
    assert m.encode() == CDC_DATA
    # the kernel accepts a message from byte 26 on (the reserved tail may be missing)
    assert cdc.decode(CDC_DATA[:26]) == m


@pytest.mark.parametrize(
    "data, offset, words",
    [(CDC_DATA[:25], 0, "at least 26"), (b"\xfd" + CDC_DATA[1:], 0, "not CDC"), (CDC_DATA[:1] + b"\x2b" + CDC_DATA[2:], 1, "44 bytes")],
)
def test_cdc_errors(data, offset, words):
    with pytest.raises(cdc.CdcError) as e:
        cdc.decode(data)
    assert e.value.offset == offset and words in str(e.value)


# ------------------------------------------------------------------ RoCE

# A CNP captured on a ConnectX-4 Lx (published with scapy's RoCE tests): real hardware ICRC 82fd002a.
CNP_CONNECTX = h("""
e41d2dab2bc2 7cfe90643b32 0800                       # Ethernet
45c2 003c 718c 4000 4011 9161 0a001101 0a001201      # IPv4, DF, TTL 64, TOS 0xc2
0000 12b7 0028 0000                                  # UDP -> 4791, checksum 0
81 00 ffff 40 000118 00 000000                       # BTH: CNP, BECN, DestQP 0x118, PSN 0
00000000000000000000000000000000                     # CNP reserved payload
82fd002a                                             # ICRC
""")


def test_icrc_matches_real_hardware():
    f = roce.decode_frame(CNP_CONNECTX, check_icrc=True)
    assert f.icrc_ok and f.icrc == bytes.fromhex("82fd002a")
    assert f.packet.bth.opcode == roce.Opcode.CNP and f.packet.bth.becn and f.packet.bth.dest_qp == 0x118
    assert str(f.ip.src) == "10.0.17.1" and f.ip.checksum_ok
    # independent of what routers rewrite: TOS, TTL, checksums are masked
    mangled = bytearray(CNP_CONNECTX)
    mangled[15] = 0x00  # TOS
    mangled[22] = 0x01  # TTL
    assert roce.decode_frame(bytes(mangled)).icrc_ok
    mangled[60] ^= 1  # a payload bit
    assert not roce.decode_frame(bytes(mangled)).icrc_ok
    with pytest.raises(roce.RoceError, match="ICRC 82fd002a does not match"):
        roce.decode_frame(bytes(mangled), check_icrc=True)


def test_send_only_with_cdc_payload():
    frame = (
        h(f"""
    {"00" * 12} 0800
    4500 0058 0000 4000 4011 0000 7f010001 7f010002   # checksum ignored by ICRC (masked)
    c350 12b7 0044 0000
    04 80 ffff 00 000011 80 000005                    # SEND ONLY, SE, DestQP 0x11, AckReq, PSN 5
    """)
        + CDC_DATA
        + bytes(4)
    )
    f = roce.decode_frame(frame)
    assert f.packet.bth.opcode == roce.Opcode.SEND_ONLY and f.packet.bth.se and f.packet.bth.ackreq
    assert f.packet.bth.dest_qp == 0x11 and f.packet.bth.psn == 5
    assert cdc.decode(f.packet.payload).token == 0x42


def test_rdma_write_reth_and_ack_aeth():
    write = roce.decode_packet(h("0a 00 ffff 00 000011 80 000006  0000000012340000 00001234 00000008") + b"ABCDEFGH")
    assert write.reth == roce.Reth(0x12340000, 0x1234, 8) and write.payload == b"ABCDEFGH"
    nak = roce.decode_packet(h("11 00 ffff 00 000022 00 000006  62 000003"))
    assert nak.aeth.kind == roce.AckKind.NAK and nak.aeth.value == roce.NakCode.REMOTE_ACCESS_ERROR
    assert nak.aeth.msn == 3 and roce.Aeth.nak(3, roce.NakCode.REMOTE_ACCESS_ERROR) == nak.aeth
    rnr = roce.decode_packet(h("11 00 ffff 00 000022 00 000006  2e 000003"))
    assert rnr.aeth.kind == roce.AckKind.RNR_NAK and rnr.aeth.value == 0x0E
    pad = roce.decode_packet(h("04 20 ffff 00 000022 00 000007") + b"abcde\0\0\0")
    assert pad.bth.pad == 2 and pad.payload == b"abcde\0"


def test_roce_errors():
    with pytest.raises(roce.RoceError, match="unsupported BTH opcode 0x15"):
        roce.decode_packet(h("15 00 ffff 00 000022 00 000006"))
    with pytest.raises(roce.RoceError, match="RETH needs bytes 12..27"):
        roce.decode_packet(h("0a 00 ffff 00 000011 80 000006 00"))
    with pytest.raises(roce.RoceError, match="ethertype 0x86dd is not IPv4"):
        roce.decode_frame(CNP_CONNECTX[:12] + b"\x86\xdd" + CNP_CONNECTX[14:])
    with pytest.raises(roce.RoceError, match="takes extension headers"):
        roce.RocePacket(roce.Bth(roce.Opcode.RDMA_WRITE_ONLY, 1, 1)).encode()


# ------------------------------------------------------------------ codes


def test_codes_print_as_smc_tools():
    assert codes.format_reason(0x03030000) == "0x03030000 NOSMCDEV"
    assert codes.format_reason(0x03030000, era="2017") == "0x03030000 IPSEC"
    assert codes.format_reason(0x03020000) == "0x03020000 IPSEC"
    assert codes.format_reason(0x99990000, era="2017") == "0x99990000 INTERR"
    assert codes.format_reason(0x09990000) == "0x09990000 INTERR"
    assert codes.format_reason(0x12345678) == "0x12345678 UNKNOWN"
    assert str(codes.DECLINE_REASONS.get(0x0303000A)) == "0x0303000a MAXCONNERR"
    assert codes.DECLINE_REASONS.by_name("peerdecl").value == 0x05000000
    assert not codes.sends_decline(0x03010000) and codes.sends_decline(0x03070000)
    assert codes.LgrType.SYMMETRIC.smc_tools_name == "SYM" and codes.LgrType.ASYMMETRIC_LOCAL.critical
    assert codes.LinkState.ACTIVE.smc_tools_name == "LINK_ACTIVE" and codes.SmcState(26).name == "PEERABORTWAIT"
    assert len(codes.DECLINE_REASONS) == 36 and all(c.meaning for c in codes.DECLINE_REASONS)
    assert set(codes.SMC_STATE_MEANINGS) == set(codes.SmcState)
    with pytest.raises(ValueError, match="unknown decline code era"):
        codes.format_reason(0, era="1999")


def test_a_kernel_add_link_v2_reject_is_a_bare_44_byte_message():
    """smc_llc_cli_add_link_reject sends the 44-byte union with the v2 type, RESP|REJ flags
    and a little-endian length; the reason nibble shares the overwritten length byte (from
    a capture of kernel 6.12 in the lab, tests/lab/fixtures/kernel_interop_smcr.pcap)."""
    from stack.wire import llc

    raw = bytes.fromhex("222c00c0525400120001000000000000000000000000ffff0a02000100001302031"
                        "0c3530000000000000000")  # fmt: skip
    m = llc.decode(raw)
    assert isinstance(m, llc.AddLink) and m.version == 2 and m.response and m.rejected and m.rkeys == ()
    assert m.mac == bytes.fromhex("525400120001") and m.gid[-4:] == bytes([10, 2, 0, 1])


def test_an_eid_with_control_bytes_is_shown_escaped():
    """A peer's EID is ASCII text by the protocol; a hostile one cannot put escape sequences
    or undecodable bytes on an operator's screen."""
    assert clc.eid_text(b"SEID\x1b[2J\x07\xff".ljust(32, b" ")) == r"SEID\x1b[2J\x07\xff"
    assert clc.eid_text(b"IBM-SYSZ-ISMSEID00000000".ljust(32, b" ")) == "IBM-SYSZ-ISMSEID00000000"


def test_a_hostile_clc_host_name_is_described_escaped():
    """smc-trace decode of a real host's capture shows the CLC host name: a peer's escape
    sequence in it is shown escaped."""
    import dataclasses

    from dissectors.describe import describe_clc

    a = clc.decode(ACCEPT_V2_FIRST)
    evil = dataclasses.replace(a, fce=dataclasses.replace(a.fce, hostname=b"vm\x1b]0;x\x07".ljust(32, b" ")))
    text = describe_clc(clc.decode(evil.encode()))
    assert r"host vm\x1b]0;x\x07 max_conns" in text and "\x1b" not in text
