"""Event fields of decoded SMC messages: one definition for the stack's clc.msg, llc.msg and
cdc.msg events and for the events smc-trace derives from captures we did not write, so a
message means the same thing whichever way it was seen."""

from __future__ import annotations

from dataclasses import fields as dc_fields

from . import clc, codes
from .cdc import CdcMessage, Cursor
from .cdc import pack as cdc_pack
from .llc import LlcMessage

CDC_FLAGS = ("write_blocked", "urg_data_pending", "urg_data_present", "cons_curs_upd_req", "failover_validation",
             "peer_done_writing", "peer_conn_closed", "peer_conn_abort")  # fmt: skip


def cursor_text(c: Cursor) -> str:
    """A cursor as the events show it: ``wrap:count``."""
    return "%s:%s" % c  # a shade faster than an f-string, and events carry millions of cursors


WRAP = 1 << 16  # CDC cursor wrap counters are 16 bits


def parse_cursor(text: str | None) -> tuple[int, int]:
    """``"wrap:count"`` (as ``cursor_text`` writes it) -> (wrap, count); anything else -> (0, 0)."""
    if not text:
        return 0, 0
    w, _, c = str(text).partition(":")
    try:
        return int(w), int(c)
    except ValueError:
        return 0, 0


def cursor_delta(old: str | None, new: str | None, size: int) -> int:
    """Bytes between two cursors of a ring of ``size`` bytes as events show them (wrap
    counters modulo 2**16): 0 when ``new`` is not ahead by less than half the counters' range."""
    if not size or old is None or new is None:
        return 0
    w0, c0 = parse_cursor(old)
    w1, c1 = parse_cursor(new)
    d = ((w1 - w0) % WRAP) * size + c1 - c0
    return d if 0 <= d < WRAP * size // 2 else 0


def clc_fields(msg, raw: bytes) -> dict:
    out: dict = {"type": type(msg).__name__, "raw": raw, "version": msg.version}
    if isinstance(msg, clc.Decline):
        out.update(diagnosis=msg.diagnosis, diagnosis_text=codes.format_reason(msg.diagnosis), out_of_sync=msg.out_of_sync)
    elif isinstance(msg, clc.Proposal):
        out.update(typev1=msg.typev1.name, typev2=msg.typev2.name,
                   eids=[clc.eid_text(e) for e in msg.v2.eids] if msg.v2 else [], peer_id=msg.peer_id.hex())  # fmt: skip
    elif isinstance(msg, (clc.Accept, clc.Confirm)):
        out.update(first_contact=msg.first_contact, qpn=msg.qpn, token=msg.rmbe_alert_token, rkey=msg.rmb_rkey,
                   rmbe_size=msg.rmbe_size, qp_mtu=msg.qp_mtu, psn=msg.psn, peer_id=msg.peer_id.hex())  # fmt: skip
    elif isinstance(msg, clc.SmcdAcceptConfirm):  # reported, not spoken: what it is and whether it starts a group
        out.update(type=smcd_type_name(msg.type), first_contact=msg.first_contact)
    return out


def smcd_type_name(t: int) -> str:
    """The ``type`` of an SMC-D Accept or Confirm in a clc.msg event."""
    return "SMC-D Accept" if t == clc.ClcType.ACCEPT else "SMC-D Confirm"


# clc_fields' keys that come from a message's fixed fields (the others come from its header),
# by the field they come from; None: from past the fixed part, unknown in a message cut short
_CLC_SOURCES = {"diagnosis": "diagnosis", "diagnosis_text": "diagnosis", "peer_id": "peer_id", "qpn": "qpn", "token": "rmbe_alert_token",
                "rkey": "rmb_rkey", "rmbe_size": "rmbe_size", "qp_mtu": "qp_mtu", "psn": "psn", "eids": None}  # fmt: skip


def clc_cut_fields(cut: clc.CutMessage, raw: bytes) -> dict:
    """clc_fields of a message a capture cut short (clc.decode_cut): what it kept, and
    ``cut``, how many of its bytes it did not."""
    if cut.message is None:  # an SMC-D Accept/Confirm: its header
        out: dict = {"type": smcd_type_name(cut.header.type), "raw": raw, "version": cut.header.version}
    else:
        out = {k: v for k, v in clc_fields(cut.message, raw).items() if k not in _CLC_SOURCES or _CLC_SOURCES[k] in cut.known}
    out["cut"] = cut.header.length - cut.captured
    return out


def llc_fields(msg: LlcMessage, raw: bytes) -> dict:
    out = {"type": msg.name, "response": msg.response}
    for f in dc_fields(msg):
        if f.name in ("version", "response", "order"):
            continue
        v = getattr(msg, f.name)
        if isinstance(v, tuple):
            v = [vars(x) if hasattr(x, "__dict__") else x for x in v]
        out[f.name] = v
    out["raw"] = raw
    return out


def _flag_names(bits: tuple[int, ...], names: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """For every value of a flags byte, the names of its set flags in CDC_FLAGS order."""
    return tuple(tuple(n for b, n in zip(bits, names) if v & b) for v in range(256))


_PROD_BITS = (0x80, 0x40, 0x20, 0x10, 0x08)
_PROD_FLAG_NAMES = _flag_names(_PROD_BITS, CDC_FLAGS[:5])
# a CDC's flags that come and go with the data; any other (urgent data, failover validation,
# the connection-state flags) marks the CDC as an event of its own, also for a sampled subscriber
FLOW_CONTROL_FLAGS = frozenset({"write_blocked", "cons_curs_upd_req"})
MARKING_PROD_FLAGS = sum(b for b, n in zip(_PROD_BITS, CDC_FLAGS[:5]) if n not in FLOW_CONTROL_FLAGS)
_STATE_FLAG_NAMES = _flag_names((0x80, 0x40, 0x20), CDC_FLAGS[5:])


def cdc_fields(m: CdcMessage, direction: str | None = None) -> dict:
    pf, cf = m.prod_flags, m.conn_state_flags
    return cdc_fields_of(m.seqno, m.token, m.prod, m.cons, pf, cf, cdc_pack(m.seqno, m.token, m.prod, m.cons, pf, cf), direction)


def cdc_fields_of(seqno: int, token: int, prod: Cursor, cons: Cursor, prod_flags: int, conn_state_flags: int, raw: bytes,
                  direction: str | None = None) -> dict:  # fmt: skip
    """cdc_fields from the values a CDC is packed from (the transmit path has them without a
    CdcMessage; events on the data path come by the hundred thousand). ``prod_flags`` and
    ``conn_state_flags`` are the message's two flag bytes, ``raw`` its 44 bytes; ``direction``
    ("tx" or "rx") comes first as the event's ``dir`` when given."""
    out = {"dir": direction, "seqno": seqno, "token": token, "prod": cursor_text(prod), "cons": cursor_text(cons),
           "flags": [*_PROD_FLAG_NAMES[prod_flags], *_STATE_FLAG_NAMES[conn_state_flags]], "raw": raw}  # fmt: skip
    if direction is None:
        del out["dir"]
    return out
