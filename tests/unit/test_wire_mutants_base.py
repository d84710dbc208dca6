"""The shared wire plumbing (stack/wire/_base.py), the code tables (codes.py) and the event
fields of decoded messages (fields.py), tested where mutation testing found them open
(docs/testing.md, "Mutation testing"). Code numbers are the kernel's: net/smc/smc_clc.h
SMC_CLC_DECL_*, net/smc/smc_llc.h SMC_LLC_DEL_*, net/smc/smc.h enum smc_state,
net/smc/smc_core.h enum smc_link_state and enum smc_lgr_type."""

from __future__ import annotations

import pytest

from stack.wire import _base, cdc, clc, codes, fields, llc

# net/smc/smc_clc.h, SMC_CLC_DECL_* (read from the kernel source, not from codes.py).
KERNEL_DECLINES = {
    "MEM": 0x01010000, "TIMEOUT_CL": 0x02010000, "TIMEOUT_AL": 0x02020000, "CNFERR": 0x03000000,
    "PEERNOSMC": 0x03010000, "IPSEC": 0x03020000, "NOSMCDEV": 0x03030000, "NOSMCDDEV": 0x03030001,
    "NOSMCRDEV": 0x03030002, "NOISM2SUPP": 0x03030003, "NOV2EXT": 0x03030004, "NOV2DEXT": 0x03030005,
    "NOSEID": 0x03030006, "NOSMCD2DEV": 0x03030007, "NOUEID": 0x03030008, "RELEASEERR": 0x03030009,
    "MAXCONNERR": 0x0303000A, "MAXLINKERR": 0x0303000B, "MODEUNSUPP": 0x03040000, "RMBE_EC": 0x03050000,
    "OPTUNSUPP": 0x03060000, "DIFFPREFIX": 0x03070000, "GETVLANERR": 0x03080000, "ISMVLANERR": 0x03090000,
    "NOACTLINK": 0x030A0000, "NOSRVLINK": 0x030B0000, "VERSMISMAT": 0x030C0000, "MAX_DMB": 0x030D0000,
    "NOROUTE": 0x030E0000, "NOINDIRECT": 0x030F0000, "SYNCERR": 0x04000000, "PEERDECL": 0x05000000,
    "INTERR": 0x09990000, "ERR_RTOK": 0x09990001, "ERR_RDYLNK": 0x09990002, "ERR_REGBUF": 0x09990003,
}  # fmt: skip
# The first mainline smc_clc.h (Linux 4.11).
KERNEL_DECLINES_2017 = {
    "MEM": 0x01010000, "TIMEOUT": 0x02000000, "TCL": 0x02040000, "CNFERR": 0x03000000, "IPSEC": 0x03030000,
    "SYNCERR": 0x04000000, "REPLY": 0x06000000, "SEND": 0x07000000, "INTERR": 0x99990000,
}  # fmt: skip
KERNEL_DELETE_LINK = {
    "OK": 0x00000000, "LOST_PATH": 0x00010000, "OP_INIT_TERM": 0x00020000, "PROG_INIT_TERM": 0x00030000,
    "PROT_VIOL": 0x00040000, "NO_ASYM_NEEDED": 0x00050000, "NOLNK": 0x00100000, "NOLGR": 0x00200000,
}  # fmt: skip


def test_code_tables_hold_the_kernel_numbers():
    assert {c.name: c.value for c in codes.DECLINE_REASONS} == KERNEL_DECLINES
    assert {c.name: c.value for c in codes.DECLINE_REASONS_2017} == KERNEL_DECLINES_2017
    assert {c.name: c.value for c in codes.DELETE_LINK_REASONS} == KERNEL_DELETE_LINK
    assert {c.name: c.value for c in codes.ADD_LINK_REJECT_REASONS} == {"NO_ALT_PATH": 1}
    assert codes.DECL.NOUEID == 0x03030008 and codes.DEL.NOLGR == 0x00200000 and codes.ADD_LINK_REJ.NO_ALT_PATH == 1
    assert codes.FALLBACK_WITHOUT_DECLINE == {KERNEL_DECLINES["PEERNOSMC"], KERNEL_DECLINES["OPTUNSUPP"], KERNEL_DECLINES["PEERDECL"]}
    assert {s.name: s.value for s in codes.SmcState} == {
        "ACTIVE": 1, "INIT": 2, "CLOSED": 7, "LISTEN": 10, "PEERCLOSEWAIT1": 20, "PEERCLOSEWAIT2": 21, "APPCLOSEWAIT1": 22,
        "APPCLOSEWAIT2": 23, "APPFINCLOSEWAIT": 24, "PEERFINCLOSEWAIT": 25, "PEERABORTWAIT": 26, "PROCESSABORT": 27,
    }  # fmt: skip
    assert {s.name: s.value for s in codes.LinkState} == {"UNUSED": 0, "INACTIVE": 1, "ACTIVATING": 2, "ACTIVE": 3}
    assert {t.name: t.value for t in codes.LgrType} == {"NONE": 0, "SINGLE": 1, "SYMMETRIC": 2, "ASYMMETRIC_PEER": 3, "ASYMMETRIC_LOCAL": 4}
    assert (codes.LgrRole.CLIENT, codes.LgrRole.SERVER) == (0, 1)
    assert (codes.DiagMode.SMCR, codes.DiagMode.TCP, codes.DiagMode.SMCD) == (0, 1, 2)


def test_code_table_lookups():
    t = codes.CodeTable("thing", [(1, "ONE", "the first"), (0x20, "TWO", "the second")])
    assert len(t) == 2 and [c.name for c in t] == ["ONE", "TWO"] and 1 in t and 2 not in t
    assert t.get(0x20) == codes.Code(0x20, "TWO", "the second") and t.get(3) is None
    assert t.by_name("two").value == 0x20
    with pytest.raises(KeyError, match="thing: no code named 'three'"):
        t.by_name("three")
    assert (t.name(1), t.name(5)) == ("ONE", "UNKNOWN")
    assert (t.meaning(1), t.meaning(5)) == ("the first", "not a known thing code")
    assert t.format(0x20) == "0x00000020 TWO" and t.format(0xABCDEF12) == "0xabcdef12 UNKNOWN"
    assert str(codes.Code(0x03030000, "NOSMCDEV", "x")) == "0x03030000 NOSMCDEV"
    code = codes.DECLINE_REASONS.get(0x03030000)
    with pytest.raises(AttributeError):
        code.value = 1  # type: ignore[misc]  # the tables are shared: a code cannot be changed
    assert {code: 1}[codes.Code(0x03030000, "NOSMCDEV", code.meaning)] == 1
    for dup in ([(1, "A", ""), (1, "B", "")], [(1, "A", ""), (2, "A", "")]):
        with pytest.raises(ValueError, match="dup: duplicate value or name"):
            codes.CodeTable("dup", dup)
    assert codes.decline_table("2017") is codes.DECLINE_REASONS_2017 and codes.decline_table() is codes.DECLINE_REASONS
    with pytest.raises(ValueError, match=r"unknown decline code era '1999'; choose one of \['2017', 'current'\]"):
        codes.decline_table("1999")
    assert all(codes.sends_decline(v) for v in KERNEL_DECLINES.values() if v not in (0x03010000, 0x03060000, 0x05000000))


def test_state_names_and_meanings():
    assert [t.smc_tools_name for t in codes.LgrType] == ["NONE", "SINGLE", "SYM", "ASYMP", "ASYML"]
    assert [t.critical for t in codes.LgrType] == [False, True, False, False, True]
    assert [s.smc_tools_name for s in codes.LinkState] == ["LINK_UNUSED", "LINK_INACTIVE", "LINK_ACTIVATING", "LINK_ACTIVE"]
    assert set(codes.LINK_STATE_MEANINGS) == set(codes.LinkState) and set(codes.LGR_TYPE_MEANINGS) == set(codes.LgrType)
    assert all(codes.SMC_STATE_MEANINGS.values()) and all(codes.LGR_TYPE_MEANINGS.values())


# ------------------------------------------------------------------ _base


class Err(_base.WireError):
    codec = "test"


def test_view_reads_and_bounds():
    v = _base.View(bytearray(bytes(range(1, 17))), "MSG", Err)
    assert len(v) == 16 and isinstance(v.buf, bytes)
    assert (v.u8(0, "a"), v.u16(1, "b"), v.u16le(1, "c"), v.u24(3, "d"), v.u32(4, "e")) == (1, 0x0203, 0x0302, 0x040506, 0x05060708)
    assert v.u64(8, "f") == 0x090A0B0C0D0E0F10 and v.raw(14, 2, "g") == b"\x0f\x10"
    v.need(15, 1, "last")
    for read, off, size in ((v.u8, 16, 1), (v.u16, 15, 2), (v.u16le, 15, 2), (v.u24, 14, 3), (v.u32, 13, 4), (v.u64, 9, 8)):
        with pytest.raises(Err) as e:
            read(off, "field")
        assert (e.value.message_type, e.value.offset) == ("MSG", off)
        assert e.value.reason == f"field needs bytes {off}..{off + size - 1} but the message has 16 bytes"
        assert str(e.value) == f"MSG: offset {off}: {e.value.reason}"
    with pytest.raises(Err, match="raw needs bytes 10..16"):
        v.raw(10, 7, "raw")
    assert isinstance(v.fail(3, "r"), Err) and v.fail(3, "r").codec == "test" and _base.WireError.codec == "wire"


def test_builder_writes_and_checks():
    b = _base.Builder(24, "MSG", Err)
    b.u8(0, 0xFF, "a")
    b.u16(1, 0x0102, "b")
    b.u24(3, 0x030405, "c")
    b.u32(6, 0x06070809, "d")
    b.u64(10, 0x0A0B0C0D0E0F1011, "e")
    b.uint(18, 2, 0x1213, "f", order="little")
    b.raw(20, bytearray(b"wxyz"), 4, "g")
    assert b.bytes() == bytes.fromhex("ff0102030405060708090a0b0c0d0e0f10111312") + b"wxyz"
    for write, bits in ((b.u8, 8), (b.u16, 16), (b.u24, 24), (b.u32, 32), (b.u64, 64)):
        with pytest.raises(Err) as e:
            write(0, 1 << bits, "big")
        assert (e.value.offset, e.value.reason) == (0, f"big={1 << bits} does not fit in {bits} bits")
        write(0, (1 << bits) - 1, "max")
    with pytest.raises(Err, match="neg=-1 does not fit in 8 bits"):
        b.u8(2, -1, "neg")
    with pytest.raises(Err, match="flag must be an integer, got bool"):
        b.u8(2, True, "flag")
    with pytest.raises(Err, match="x must be an integer, got float"):
        b.u8(2, 1.0, "x")
    with pytest.raises(Err) as e:
        b.raw(20, b"abc", 4, "g")
    assert (e.value.offset, e.value.reason) == (20, "g must be 4 bytes, got 3")
    with pytest.raises(Err, match="g must be 4 bytes, got 5"):
        b.raw(20, b"abcde", 4, "g")
    assert len(b.bytes()) == 24
    b.uint(offset=22, size=2, value=0x0102, field="f", order="little")  # every argument may be named
    assert b.bytes()[22:] == b"\x02\x01"
    assert b.fail(5, "r").offset == 5
    with pytest.raises(Err) as e:
        _base.check_choice(3, (1, 2), "mode", "MSG", 7, Err)
    assert (e.value.offset, e.value.reason) == (7, "mode=3 is not one of (1, 2)")
    _base.check_choice(2, (1, 2), "mode", "MSG", 7, Err)


# ------------------------------------------------------------------ fields


def test_event_fields_of_each_codec():
    m = cdc.CdcMessage(seqno=7, token=0x42, prod=cdc.Cursor(1, 100), cons=cdc.Cursor(2, 200), write_blocked=True, peer_conn_abort=True)
    assert fields.cdc_fields(m) == {
        "seqno": 7,
        "token": 0x42,
        "prod": "1:100",
        "cons": "2:200",
        "flags": ["write_blocked", "peer_conn_abort"],
        "raw": m.encode(),
    }
    assert fields.CDC_FLAGS == (
        "write_blocked",
        "urg_data_pending",
        "urg_data_present",
        "cons_curs_upd_req",
        "failover_validation",
        "peer_done_writing",
        "peer_conn_closed",
        "peer_conn_abort",
    )
    # every combination of the eight flags: exactly the set ones, in CDC_FLAGS order, and the
    # fields built from packed values (the transmit path) equal those of the message
    for bits in range(256):
        flags = [bool(bits & (0x80 >> i)) for i in range(8)]
        m = cdc.CdcMessage(0xFFFF, 0xFFFFFFFF, cdc.Cursor(0xFFFF, 0xFFFFFFFF), cdc.Cursor(0, 1), *flags)
        want = [name for name, on in zip(fields.CDC_FLAGS, flags) if on]
        got = fields.cdc_fields(m)
        assert got["flags"] == want and got["raw"] == m.encode() and (got["prod"], got["cons"]) == ("65535:4294967295", "0:1")
        raw = m.encode()
        assert fields.cdc_fields_of(m.seqno, m.token, m.prod, m.cons, raw[24], raw[25], raw) == got
    # reserved bits (as a peer may set them on the wire) name nothing
    for pf, cf, want in ((0x07, 0x1F, []), (0xFF, 0xFF, list(fields.CDC_FLAGS)), (0x09, 0x21, ["failover_validation", "peer_conn_abort"])):
        assert fields.cdc_fields_of(1, 2, cdc.Cursor(), cdc.Cursor(), pf, cf, b"")["flags"] == want
    rk = llc.ConfirmRkey(rkey=5, vaddr=6, others=(llc.Rtoken(2, 3, 4),), response=True)
    assert fields.llc_fields(rk, b"r") == {"type": "LLC CONFIRM RKEY", "response": True, "rkey": 5, "vaddr": 6,
                                           "others": [{"link_id": 2, "rkey": 3, "vaddr": 4}], "negative": False, "retry": False, "raw": b"r"}  # fmt: skip
    assert fields.llc_fields(llc.DeleteRkey(rkeys=(1, 2)), b"")["rkeys"] == [1, 2]
    d = clc.Decline(b"p" * 8, 0x03030000, out_of_sync=True, version=2)
    assert fields.clc_fields(d, b"x") == {
        "type": "Decline",
        "raw": b"x",
        "version": 2,
        "diagnosis": 0x03030000,
        "diagnosis_text": "0x03030000 NOSMCDEV",
        "out_of_sync": True,
    }
    p = clc.Proposal(b"\x01" * 8, bytes(16), bytes(6), clc.SmcType.N, clc.SmcType.R, v2=clc.V2Extension(eids=(b"AB".ljust(32),)))
    assert fields.clc_fields(p, b"") == {
        "type": "Proposal",
        "raw": b"",
        "version": 2,
        "typev1": "N",
        "typev2": "R",
        "eids": ["AB"],
        "peer_id": "0101010101010101",
    }
    p1 = clc.Proposal(b"\x01" * 8, bytes(16), bytes(6), clc.SmcType.R, prefix=clc.IpPrefixArea())
    assert fields.clc_fields(p1, b"")["eids"] == []
    a = clc.Confirm(b"\x02" * 8, bytes(16), bytes(6), qpn=1, rmb_rkey=2, rmbe_alert_token=3, rmbe_size=4, qp_mtu=5, rmb_vaddr=6, psn=7, first_contact=True)
    assert fields.clc_fields(a, b"") == {"type": "Confirm", "raw": b"", "version": 1, "first_contact": True, "qpn": 1, "token": 3, "rkey": 2,
                                         "rmbe_size": 4, "qp_mtu": 5, "psn": 7, "peer_id": "0202020202020202"}  # fmt: skip


def test_cdc_pack_names_the_flag_byte_that_does_not_fit():
    p, c = cdc.Cursor(1, 2), cdc.Cursor(3, 4)
    for kw, offset, reason in (
        ({"prod_flags": 256}, 24, "prod_flags 256 is not a byte"),
        ({"conn_state_flags": 256}, 25, "conn_state_flags 256 is not a byte"),
        ({"conn_state_flags": -1}, 25, "conn_state_flags -1 is not a byte"),
    ):
        with pytest.raises(cdc.CdcError) as e:
            cdc.pack(7, 8, p, c, **kw)
        assert (e.value.offset, e.value.reason) == (offset, reason)
    # Flags that fit (0xFF included) leave the error to the field that does not.
    with pytest.raises(cdc.CdcError) as e:
        cdc.pack(1 << 16, 8, p, c, prod_flags=0xFF, conn_state_flags=0x05)
    assert (e.value.offset, e.value.reason) == (2, "seqno=65536 does not fit in 16 bits")
    assert cdc.pack(7, 8, p, c, 0xFF, 0xE0)[24:26] == b"\xff\xe0"


@pytest.mark.parametrize(
    "kw, offset, reason",
    [
        ({"seqno": 1 << 16}, 2, "seqno=65536 does not fit in 16 bits"),
        ({"token": 1 << 32}, 4, "token=4294967296 does not fit in 32 bits"),
        ({"prod": cdc.Cursor(1 << 16, 0)}, 10, "producer wrap=65536 does not fit in 16 bits"),
        ({"prod": cdc.Cursor(0, 1 << 32)}, 12, "producer count=4294967296 does not fit in 32 bits"),
        ({"cons": cdc.Cursor(1 << 16, 0)}, 18, "consumer wrap=65536 does not fit in 16 bits"),
        ({"cons": cdc.Cursor(0, 1 << 32)}, 20, "consumer count=4294967296 does not fit in 32 bits"),
    ],
)
def test_cdc_errors_name_the_fields_offset(kw, offset, reason):
    fields = {"seqno": 1, "token": 2, "prod": cdc.Cursor(0, 0), "cons": cdc.Cursor(0, 0), **kw}
    for encode in (lambda: cdc.CdcMessage(**fields).encode(), lambda: cdc.pack(**fields)):
        with pytest.raises(cdc.CdcError) as e:
            encode()
        assert (e.value.offset, e.value.reason) == (offset, reason)
