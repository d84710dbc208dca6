"""CDC (connection data control) message: type 0xFE, 44 bytes, one per data or cursor update.

Layout (``struct smc_cdc_msg``, all big-endian):

====  ====  =========================================================
 off  size  field
====  ====  =========================================================
   0     1  type 0xFE
   1     1  length = 44
   2     2  sequence number (per connection and direction, u16 wrapping)
   4     4  alert token of the *receiving* connection
   8     8  producer cursor: reserved u16, wrap u16, count u32
  16     8  consumer cursor: reserved u16, wrap u16, count u32
  24     1  producer flags: 0x80 write blocked, 0x40 urgent data pending,
            0x20 urgent data present, 0x10 consumer cursor update requested,
            0x08 failover validation
  25     1  connection state flags: 0x80 peer done writing, 0x40 peer
            connection closed, 0x20 peer connection abort
  26    18  reserved
====  ====  =========================================================

Receive rule of ``smc_cdc_rx_handler``: at least 26 bytes received and the length byte
equal to 44; anything else is dropped.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ._base import Builder, WireError

CDC_TYPE = 0xFE
CDC_LEN = 44
CDC_MIN_RECEIVED = 26  # offsetof(struct smc_cdc_msg, reserved)
# type, length, seqno, token, prod (rsvd, wrap, count), cons (rsvd, wrap, count), flags, flags; 18 reserved
_FIXED = struct.Struct("!BBHIHHIHHIBB18x")
_HEAD = struct.Struct("!BBHIHHIHHIBB")  # the 26 bytes the kernel requires


class CdcError(WireError):
    codec = "cdc"


class Cursor(NamedTuple):
    """An RMBE cursor: ``count`` bytes into the ring, ``wrap`` times around it (u16).
    A tuple: made and compared on every CDC, so it must be cheap."""

    wrap: int = 0
    count: int = 0


class CdcMessage(NamedTuple):
    seqno: int
    token: int
    prod: Cursor = Cursor()
    cons: Cursor = Cursor()
    # producer flags (struct smc_cdc_producer_flags)
    write_blocked: bool = False
    urg_data_pending: bool = False
    urg_data_present: bool = False
    cons_curs_upd_req: bool = False
    failover_validation: bool = False
    # connection state flags (struct smc_cdc_conn_state_flags)
    peer_done_writing: bool = False
    peer_conn_closed: bool = False
    peer_conn_abort: bool = False

    @property
    def prod_flags(self) -> int:
        return (
            (0x80 if self.write_blocked else 0)
            | (0x40 if self.urg_data_pending else 0)
            | (0x20 if self.urg_data_present else 0)
            | (0x10 if self.cons_curs_upd_req else 0)
            | (0x08 if self.failover_validation else 0)
        )

    @property
    def conn_state_flags(self) -> int:
        return (0x80 if self.peer_done_writing else 0) | (0x40 if self.peer_conn_closed else 0) | (0x20 if self.peer_conn_abort else 0)

    def encode(self) -> bytes:
        try:
            return _FIXED.pack(
                CDC_TYPE, CDC_LEN, self.seqno, self.token, 0, self.prod.wrap, self.prod.count,
                0, self.cons.wrap, self.cons.count, self.prod_flags, self.conn_state_flags,
            )  # fmt: skip
        except struct.error:
            return self._encode_checked()  # names the field that does not fit

    def _encode_checked(self) -> bytes:
        b = Builder(CDC_LEN, "CDC", CdcError)
        b.u8(0, CDC_TYPE, "type")
        b.u8(1, CDC_LEN, "length")
        b.u16(2, self.seqno, "seqno")
        b.u32(4, self.token, "token")
        b.u16(10, self.prod.wrap, "producer wrap")
        b.u32(12, self.prod.count, "producer count")
        b.u16(18, self.cons.wrap, "consumer wrap")
        b.u32(20, self.cons.count, "consumer count")
        b.u8(24, self.prod_flags, "producer flags")
        b.u8(25, self.conn_state_flags, "connection state flags")
        return b.bytes()


def pack(seqno: int, token: int, prod: Cursor, cons: Cursor, prod_flags: int = 0, conn_state_flags: int = 0) -> bytes:
    """The 44 bytes of a CDC message straight from its fields (the transmit path's shortcut
    around building a CdcMessage); out-of-range fields raise CdcError naming the field."""
    try:
        return _FIXED.pack(CDC_TYPE, CDC_LEN, seqno, token, 0, prod[0], prod[1], 0, cons[0], cons[1], prod_flags, conn_state_flags)
    except struct.error:
        for name, flags in (("prod_flags", prod_flags), ("conn_state_flags", conn_state_flags)):
            if not isinstance(flags, int) or not 0 <= flags <= 0xFF:
                raise CdcError("CDC", 24 if name == "prod_flags" else 25, f"{name} {flags!r} is not a byte") from None
        # the fallback names the field out of range; it cannot lose the flags, which fit
        return CdcMessage(seqno, token, Cursor(*prod), Cursor(*cons))._encode_checked()


def decode(buf: bytes | bytearray | memoryview) -> CdcMessage:
    if len(buf) < CDC_MIN_RECEIVED:
        raise CdcError("CDC", 0, f"{len(buf)} bytes received, a CDC message needs at least {CDC_MIN_RECEIVED}")
    mtype, length, seqno, token, _, pwrap, pcount, _, cwrap, ccount, pf, cf = _HEAD.unpack_from(buf)
    if mtype != CDC_TYPE:
        raise CdcError("CDC", 0, f"type 0x{mtype:02x} is not CDC (0xfe)")
    if length != CDC_LEN:
        raise CdcError("CDC", 1, f"length {length}: a CDC message is 44 bytes")
    return CdcMessage(seqno, token, Cursor(pwrap, pcount), Cursor(cwrap, ccount), bool(pf & 0x80), bool(pf & 0x40), bool(pf & 0x20),
                      bool(pf & 0x10), bool(pf & 0x08), bool(cf & 0x80), bool(cf & 0x40), bool(cf & 0x20))  # fmt: skip
