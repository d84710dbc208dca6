"""The CDC message codec bit by bit (struct smc_cdc_msg, net/smc/smc_cdc.h): every producer
flag and connection state flag alone, both ways, the transmit path's pack() against the
message encoder and a hand-written message, the defaults, and each way a header is wrong.
Written to kill the mutants cosmic-ray left in stack/wire/cdc.py (docs/testing.md)."""

from __future__ import annotations

import pytest

from stack.wire import cdc
from stack.wire.cdc import CdcMessage, Cursor

PROD = {"write_blocked": 0x80, "urg_data_pending": 0x40, "urg_data_present": 0x20, "cons_curs_upd_req": 0x10, "failover_validation": 0x08}
STATE = {"peer_done_writing": 0x80, "peer_conn_closed": 0x40, "peer_conn_abort": 0x20}
ALL = {**PROD, **STATE}

# type fe, length 2c, seqno 0102, token 03040506, reserved 0000, prod wrap 0708 count 090a0b0c,
# reserved 0000, cons wrap 0d0e count 0f101112, producer flags 00, state flags 00, 18 reserved
HAND = bytes.fromhex("fe2c0102030405060000070809 0a0b0c00000d0e0f10111200 00".replace(" ", "")) + bytes(18)


def test_a_hand_written_message_both_ways():
    m = CdcMessage(0x0102, 0x03040506, Cursor(0x0708, 0x090A0B0C), Cursor(0x0D0E, 0x0F101112))
    assert len(HAND) == 44 and m.encode() == HAND
    assert cdc.pack(0x0102, 0x03040506, Cursor(0x0708, 0x090A0B0C), Cursor(0x0D0E, 0x0F101112)) == HAND
    assert cdc.decode(HAND) == m
    assert not any(getattr(cdc.decode(HAND), f) for f in ALL)  # every flag defaults to clear


@pytest.mark.parametrize("flag", list(ALL))
def test_each_flag_alone_both_ways(flag):
    m = CdcMessage(1, 2, Cursor(3, 4), Cursor(5, 6), **{flag: True})
    data = m.encode()
    byte, bit = (24, PROD[flag]) if flag in PROD else (25, STATE[flag])
    assert data[byte] == bit and data[49 - byte] == 0  # 24 <-> 25: the other flags byte stays clear
    back = cdc.decode(data)
    assert {f for f in ALL if getattr(back, f)} == {flag}
    pf, sf = (bit, 0) if flag in PROD else (0, bit)
    assert cdc.pack(1, 2, Cursor(3, 4), Cursor(5, 6), pf, sf) == data


def test_every_flag_at_once_and_unknown_bits_ignored():
    m = CdcMessage(1, 2, **{f: True for f in ALL})
    assert m.encode()[24:26] == bytes([0xF8, 0xE0])
    assert cdc.decode(m.encode()[:24] + bytes([0x07, 0x1F]) + bytes(18)) == CdcMessage(1, 2)  # reserved bits: no flag


@pytest.mark.parametrize("mtype", [0x00, 0x01, 0xFD, 0xFF])
def test_a_header_of_another_type_is_refused(mtype):
    with pytest.raises(cdc.CdcError, match="is not CDC"):
        cdc.decode(bytes([mtype]) + HAND[1:])


@pytest.mark.parametrize("length", [0, 43, 45, 0xFF])
def test_a_header_of_another_length_is_refused(length):
    with pytest.raises(cdc.CdcError, match="a CDC message is 44 bytes"):
        cdc.decode(HAND[:1] + bytes([length]) + HAND[2:])


@pytest.mark.parametrize("field,args", [
    ("seqno", (0x10000, 0, Cursor(), Cursor())), ("token", (0, 1 << 32, Cursor(), Cursor())),
    ("producer wrap", (0, 0, Cursor(0x10000, 0), Cursor())), ("consumer count", (0, 0, Cursor(), Cursor(0, 1 << 32))),
])  # fmt: skip
def test_a_field_that_does_not_fit_is_named(field, args):
    with pytest.raises(cdc.CdcError, match=field):
        cdc.pack(*args)
    with pytest.raises(cdc.CdcError, match=field):
        CdcMessage(*args).encode()


@pytest.mark.parametrize("kw,name", [({"prod_flags": 256}, "prod_flags"), ({"conn_state_flags": -1}, "conn_state_flags")])
def test_pack_refuses_flags_that_are_not_a_byte(kw, name):
    """pack() used to fall back to a message without any flags when a flags byte did not fit."""
    with pytest.raises(cdc.CdcError, match=name):
        cdc.pack(1, 2, Cursor(3, 4), Cursor(5, 6), **kw)
