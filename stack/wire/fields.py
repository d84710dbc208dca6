"""Event fields of decoded SMC messages: one definition for the stack's clc.msg, llc.msg and
cdc.msg events and for the events smc-trace derives from captures we did not write, so a
message means the same thing whichever way it was seen."""

from __future__ import annotations

from dataclasses import fields as dc_fields

from . import clc, codes
from .cdc import CdcMessage, Cursor
from .llc import LlcMessage

CDC_FLAGS = ("write_blocked", "urg_data_pending", "urg_data_present", "cons_curs_upd_req", "failover_validation",
             "peer_done_writing", "peer_conn_closed", "peer_conn_abort")  # fmt: skip


def cursor_text(c: Cursor) -> str:
    """A cursor as the events show it: ``wrap:count``."""
    return f"{c.wrap}:{c.count}"


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


def cdc_fields(m: CdcMessage) -> dict:
    flags = [name for name in CDC_FLAGS if getattr(m, name)]
    return {"seqno": m.seqno, "token": m.token, "prod": cursor_text(m.prod), "cons": cursor_text(m.cons), "flags": flags, "raw": m.encode()}
