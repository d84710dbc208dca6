"""Event records, their schema and the event bus: the product's bloodstream (DESIGN.md
sections 3 and 8).

Every kind of event, and every sub-kind of ``link.event``, is declared once in ``SCHEMA``:
its fields with their types, a one-line meaning and a text template. From it come the
readers' checks (:func:`check_record`, :func:`from_json`, :func:`parse_snapshot`: a bad
record raises :class:`BadRecord` naming the kind and field, and readers count it in a
:class:`Skipped` and go on), the one text of an event (:func:`render`: smc-trace decode,
smctop's views and logs, the recorder's comments), and the Wireshark plugin's event tables
(dissectors/wireshark/gen_codes.py). Adding a kind is adding its declaration here.

Every state transition, cursor movement, link event and protocol message becomes one
:class:`Event`: ``t`` (the ``now`` of the input that caused it), ``kind``, the ids it
belongs to (``host``, ``lgr``, ``link``, ``conn``) and its fields. There is one schema and
one canonical JSON form (:func:`to_json`), used by JSONL files, the control socket and
pcapng event records alike: compact, keys sorted, ids always present (null when not
applicable), bytes as lower-case hex, enums as their numbers.

The bus costs one attribute check when nobody listens (``bus.active``). Listeners are
called inline and must be quick; subscriptions have a bounded queue, and when a slow
subscriber's queue is full new events are dropped for it and counted, then reported to
it as one ``events.dropped`` event as soon as there is room again.

The canonical JSON is encoded by native/eventenc.c when it is built
(``native/build_eventenc.sh``); :func:`_to_json_py` is its pure-Python twin, which defines
the form, gives byte-identical output and is used when it is not
(:func:`encoder_note` says which runs).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import math
import re
from collections import Counter, deque
from dataclasses import dataclass, field
from dataclasses import field as dataclass_field
from typing import Any, Callable, Iterable, TextIO

from stack.wire import codes
from stack.wire.fields import FLOW_CONTROL_FLAGS
from stack.wire.text import printable

# ---------------------------------------------------------------------------- the schema
#
# Every kind of event is declared once below: its fields with their types, a one-line
# description, and how it reads as text (a template, see render()). The JSON form, the
# readers' checks (check_record), smc-trace decode, smctop's event view and logs, the
# summary and the Wireshark plugin's tables (dissectors/wireshark/gen_codes.py) all come
# from here; tests/unit/test_event_schema.py holds every recorded fixture to it.
#
# Templates: text with {field} (the value as its type writes it; ids too: {link}),
# {a|b} (the first of them that is set), {?flag} (nothing, but only when flag is set) and
# [optional parts], left out unless every field inside is set. A field is set when it is
# present and not null, "", false, [] or (for a reason code) 0. The Lua plugin renders
# the same templates the same way.


class BadRecord(ValueError):
    """An event record that does not match the schema; the message names the kind and field."""


MAX_T = 1e11  # seconds: t is the stack's monotonic clock or a capture's wall clock, never nanoseconds
MAX_STR = 4096
MAX_HEX = 2 * 65535  # a CLC message of the largest length, as hex
MAX_LIST = 4096
MAX_DEPTH = 8  # of the JSON inside a field (LLC rkey lists, snapshots)
MAX_LINE = 1 << 20  # bytes of one JSON record
_U = {"u8": 0xFF, "u16": 0xFFFF, "u24": 0xFFFFFF, "u32": 0xFFFFFFFF, "u64": (1 << 64) - 1, "count": (1 << 63) - 1}


def _is_int(v) -> bool:
    return type(v) is int


def _is_num(v) -> bool:
    return (type(v) is int and -(1 << 63) <= v < 1 << 63) or (type(v) is float and math.isfinite(v))


def _num_text(v) -> str:
    """A number as the templates write it (the Lua plugin writes it the same way)."""
    if type(v) is int:
        return str(v)
    if not math.isfinite(v):
        return str(v)
    if v == math.floor(v) and abs(v) < 1e15:
        return str(int(v))
    text = f"{v:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _depth_ok(v, depth: int = 0) -> bool:
    """Bounded nesting and size, finite numbers: any JSON value an unknown field may hold."""
    if depth > MAX_DEPTH:
        return False
    t = type(v)
    if t is dict:
        return len(v) <= MAX_LIST and all(type(k) is str and _depth_ok(x, depth + 1) for k, x in v.items())
    if t is list:
        return len(v) <= MAX_LIST and all(_depth_ok(x, depth + 1) for x in v)
    if t is float:
        return math.isfinite(v)
    if t is int:
        return -(1 << 64) < v < 1 << 64
    if t is str:
        return len(v) <= MAX_HEX
    return v is None or t is bool


_HEX = re.compile("[0-9a-f]*").fullmatch  # a pattern scans a CDC's 88 digits faster than a set does


def _check_hex(v) -> bool:
    return type(v) is str and len(v) <= MAX_HEX and len(v) % 2 == 0 and _HEX(v) is not None


_CURSOR = re.compile(r"([0-9]+):([0-9]+)").fullmatch


def _check_cursor(v) -> bool:
    """'wrap:count' in ASCII digits; the numbers converted only when long enough to be too large
    (every data-path event carries cursors, and readers check each one)."""
    if type(v) is not str or len(v) > 16:
        return False
    m = _CURSOR(v)
    return m is not None and (m.end(1) < 5 or int(m[1]) <= 0xFFFF) and (m.end() - m.end(1) < 11 or int(m[2]) <= 0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class FieldType:
    """What values a field takes (``check``), how a template writes one (``text``), and the
    name the Lua plugin knows it by."""

    name: str
    doc: str
    check: Callable[[Any], bool]
    text: Callable[[Any], str]
    code: bool = False  # a reason code: 0 counts as not set


def _code_text(table: str) -> Callable[[int], str]:
    def text(v: int) -> str:
        t = getattr(codes, table)
        return t.format(v) if t is not codes.DECLINE_REASONS else codes.format_reason(v)

    return text


TYPES: dict[str, FieldType] = {t.name: t for t in (
    FieldType("str", f"text (at most {MAX_STR} characters)", lambda v: type(v) is str and len(v) <= MAX_STR, str),
    FieldType("bool", "true or false", lambda v: type(v) is bool, lambda v: "yes" if v else "no"),
    FieldType("int", "a whole number (64-bit)", lambda v: type(v) is int and -(1 << 63) <= v < 1 << 63, str),
    FieldType("count", "a whole number >= 0 (bytes, events, connections)", lambda v: type(v) is int and 0 <= v <= _U["count"], str),
    FieldType("u8", "a whole number 0..255", lambda v: type(v) is int and 0 <= v <= 0xFF, str),
    FieldType("u16", "a whole number 0..65535", lambda v: type(v) is int and 0 <= v <= 0xFFFF, str),
    FieldType("u32", "a whole number 0..2^32-1", lambda v: type(v) is int and 0 <= v <= 0xFFFFFFFF, str),
    FieldType("x24", "a 24-bit number, written in hex (QPN, PSN)", lambda v: type(v) is int and 0 <= v <= 0xFFFFFF, lambda v: f"0x{v:06x}"),
    FieldType("x32", "a 32-bit number, written in hex (token, rkey)", lambda v: type(v) is int and 0 <= v <= 0xFFFFFFFF, lambda v: f"0x{v:08x}"),
    FieldType("x64", "a 64-bit number, written in hex (virtual address)", lambda v: type(v) is int and 0 <= v <= _U["u64"], lambda v: f"0x{v:x}"),
    FieldType("num", "a finite number", _is_num, _num_text),
    FieldType("prob", "a probability 0..1", lambda v: _is_num(v) and 0 <= v <= 1, _num_text),
    FieldType("hex", "bytes as lower-case hex", _check_hex, str),
    FieldType("cursor", "an RMBE cursor 'wrap:count' (wrap 16 bits, count 32 bits)", _check_cursor, str),
    FieldType("dir", "'tx' (sent) or 'rx' (received)", lambda v: v in ("tx", "rx") and type(v) is str, lambda v: "sent" if v == "tx" else "received"),
    FieldType("strs", "a list of texts", lambda v: type(v) is list and len(v) <= MAX_LIST and all(type(x) is str and len(x) <= MAX_STR for x in v),
              lambda v: ",".join(v)),
    FieldType("decline", "a decline / fallback reason code (32 bits), written as smc-tools does",
              lambda v: type(v) is int and 0 <= v <= 0xFFFFFFFF, lambda v: codes.format_reason(v) if v else "not SMC", code=True),
    FieldType("dl_reason", "a DELETE LINK reason code (32 bits)", lambda v: type(v) is int and 0 <= v <= 0xFFFFFFFF,
              _code_text("DELETE_LINK_REASONS"), code=True),
    FieldType("al_reason", "an ADD LINK reject reason code", lambda v: type(v) is int and 0 <= v <= 0xFFFFFFFF,
              _code_text("ADD_LINK_REJECT_REASONS"), code=True),
    FieldType("json", f"any JSON value (nested at most {MAX_DEPTH} deep)", _depth_ok, lambda v: json.dumps(v, sort_keys=True)),
    FieldType("snapshot", "a stack's snapshot (see SNAPSHOT)", lambda v: check_snapshot(v) is None, lambda v: f"snapshot of {v.get('host', '?')}"),
)}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: str
    doc: str
    required: bool = False


@dataclass(frozen=True)
class Kind:
    """One kind of event (or one sub-kind of ``link.event``): what it means, its fields, how
    it reads (``render``), which ids it always carries, and the plugin's expert info for it."""

    name: str
    doc: str
    render: str
    fields: tuple[Field, ...] = ()
    ids: tuple[str, ...] = ()  # ids that are never null for this kind
    expert: str | None = None  # the Wireshark plugin's expert info (smctop.expert.<name>) on its records
    sub: str | None = None  # the field that names the sub-kind (link.event: "event")
    subs: dict[str, "Kind"] = dataclass_field(default_factory=dict)

    def field(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None


def F(name: str, type_: str, doc: str, required: bool = False) -> Field:
    if type_ not in TYPES:
        raise ValueError(f"field {name}: unknown type {type_!r}")
    return Field(name, type_, doc, required)


def _link_event(name: str, doc: str, render: str, *fields: Field, expert: str | None = None) -> Kind:
    return Kind(name, doc, render, (F("event", "str", "the sub-kind", True), *fields), expert=expert)


_CAUSE = F("cause", "str", "what made it happen (the input, timer or operator action)")
_DIR = F("dir", "dir", "sent (tx) or received (rx) by the host", True)
_RAW = F("raw", "hex", "the message's bytes")
# a control-socket subscriber that asked for the data path sampled (subscribe's "coalesce",
# stack/runtime/coalesce.py) gets one event per connection and interval standing for several
_COALESCED = F("coalesced", "count", "how many events this one stands for (a sampled subscription: the connection as the last of them left it)")

SCHEMA: dict[str, Kind] = {k.name: k for k in (
    Kind("conn.open", "a connection started: role, addresses, SMC wanted or not",
         "{role} {local} -> {peer}[ peer SMC option {peer_smc_option}]",
         (F("role", "str", "client or server", True), F("local", "str", "this end, ip:port"), F("peer", "str", "the other end, ip:port"),
          F("peer_smc_option", "bool", "whether the peer's SYN / SYN-ACK carried the SMC TCP option (when the BPF program watches)")),
         ids=("conn",)),
    Kind("conn.state", "a connection changed state (SMC socket state, kernel names)", "state {old} -> {new}[ ({cause})]",
         (F("old", "str", "the state before (empty when a capture cannot tell)", True), F("new", "str", "the state after", True), _CAUSE),
         ids=("conn",)),
    Kind("conn.mode", "the handshake finished: SMCR (version, first contact) or TCP",
         "{mode}[ v{version}][ first contact{?first_contact}][ {reason}][ handshake {handshake_ms} ms]",
         (F("mode", "str", "SMCR or TCP (or SMCD: the kernel's, a capture's)", True), F("version", "u8", "SMC-R version"),
          F("first_contact", "bool", "a new link group"),
          F("token", "x32", "our RMBE alert token"), F("peer_token", "x32", "the peer's RMBE alert token"),
          F("rmb_size", "count", "our RMB's size, bytes"), F("peer_rmb_size", "count", "the peer's RMB size, bytes"),
          F("handshake_ms", "num", "CLC Proposal to CONFIRM, ms"), F("reason", "decline", "TCP: the fallback reason")),
         ids=("conn",)),
    Kind("conn.fallback", "a connection fell back to TCP: reason and peer diagnosis, hex and name",
         "{reason}[ (peer: {peer_diagnosis})][ ({cause})]",
         (F("reason", "decline", "the fallback reason (0: the connection did not ask for SMC)", True),
          F("reason_text", "str", "the reason as smc-tools writes it"), F("peer_diagnosis", "decline", "the peer's Decline diagnosis"),
          F("peer_diagnosis_text", "str", "the peer's diagnosis as smc-tools writes it"),
          F("decline_sent", "bool", "this side sent a CLC Decline"), _CAUSE, F("declined_by", "str", "the host whose Decline a capture shows")),
         ids=("conn",), expert="fallback"),
    Kind("conn.error", "a connection failed or was aborted, with the reason", "error: {reason}",
         (F("reason", "str", "what went wrong", True),), ids=("conn",), expert="conn_error"),
    Kind("conn.attempt", "a client offered SMC in a SYN that made no connection (a capture): the server refused it (RST) or never answered",
         "SMC connect {local} -> {peer} {outcome}[ ({cause})][, {syns} SYNs][ in {wait_ms} ms]",
         (F("outcome", "str", "refused (the server answered with a RST) or unanswered (no SYN-ACK in the capture)", True),
          F("local", "str", "the client, ip:port", True), F("peer", "str", "the server it tried, ip:port", True), _CAUSE,
          F("syns", "count", "SYNs the client sent, when more than one (retransmitted)"),
          F("wait_ms", "num", "refused: from the first SYN to the RST, ms"))),
    Kind("conn.cursor", "RMBE cursors moved: local and peer producer/consumer (wrap:count)",
         "cursors {side}:[ prod {prod}][ cons {cons}][ sent {sent}][ fin {fin}][ {bytes_to_rcv} bytes to receive][ {rewound} bytes to write again][ ({cause})]",
         (F("side", "str", "rx: a CDC arrived or the application read; tx: we wrote", True), F("prod", "cursor", "producer cursor"),
          F("cons", "cursor", "consumer cursor"), F("sent", "cursor", "tx: sent up to"), F("fin", "cursor", "tx: confirmed up to"),
          F("bytes_to_rcv", "count", "bytes in our RMB the application has not read"),
          F("peer_rmbe_space", "int", "room left in the peer's RMB"), _CAUSE, F("rewound", "int", "failover: bytes sent again"),
          _COALESCED),
         ids=("conn",)),
    Kind("conn.rmb", "RMB fill level and write-blocked state",
         "RMB[ fill {fill}][/{size}][ write-blocked{?write_blocked}][ peer write-blocked{?peer_write_blocked}][, {pending} bytes waiting]",
         (F("fill", "count", "bytes in our RMB"), F("size", "count", "our RMB's size"), F("write_blocked", "bool", "we wait for room in the peer's RMB"),
          F("peer_write_blocked", "bool", "the peer waits for room in ours"), F("peer_rmbe_space", "int", "room left in the peer's RMB"),
          F("pending", "count", "bytes waiting to be written"), _COALESCED),
         ids=("conn",)),
    Kind("conn.urgent", "urgent data (MSG_OOB): sent, confirmed by the peer's consumer cursor, arrived, read out of band, skipped in the stream",
         "urgent {event}[ ({dir})][ byte {byte}][ at {cursor}][ inline{?inline}]",
         (F("dir", "dir", "tx: our urgent send; rx: the peer's", True),
          F("event", "str", "tx: queued, sent, confirmed; rx: arrived, read, skipped", True),
          F("byte", "u8", "the urgent byte"), F("cursor", "cursor", "the producer cursor just after the urgent byte (confirmed: the peer's consumer cursor)"),
          F("inline", "bool", "the receiver keeps the urgent byte in the stream (SO_OOBINLINE)")),
         ids=("conn",)),
    Kind("clc.msg", "a CLC message sent or received (decoded fields and raw bytes)",
         "{dir} CLC {type}[ v{version}][ first contact{?first_contact}][ {diagnosis}][ out of sync{?out_of_sync}][ UEIDs {eids}]"
         "[ QPN {qpn}][ token {token}][ rkey {rkey}][ (cut short: {cut} bytes not captured)]",
         (_DIR, F("type", "str", "Proposal, Accept, Confirm, Decline; SMC-D Accept/Confirm", True), F("version", "u8", "CLC version"), _RAW,
          F("diagnosis", "decline", "Decline: the reason"), F("diagnosis_text", "str", "Decline: the reason as smc-tools writes it"),
          F("out_of_sync", "bool", "Decline: the link group is out of sync"), F("typev1", "str", "Proposal: v1 types offered"),
          F("typev2", "str", "Proposal: v2 types offered"), F("eids", "strs", "Proposal: UEIDs"), F("peer_id", "hex", "the sender's peer id"),
          F("first_contact", "bool", "Accept/Confirm: a new link group"), F("qpn", "x24", "Accept/Confirm: QP number"),
          F("token", "x32", "Accept/Confirm: RMBE alert token"), F("rkey", "x32", "Accept/Confirm: the RMB's rkey"),
          F("rmbe_size", "u8", "Accept/Confirm: RMBE size (compressed)"), F("qp_mtu", "u8", "Accept/Confirm: path MTU (enum)"),
          F("psn", "x24", "Accept/Confirm: initial PSN"),
          F("cut", "count", "a capture's snap length cut the message: its bytes not captured (fields past the kept ones are not given)")),
         ids=("conn",)),
    Kind("llc.msg", "an LLC message sent or received",
         "{dir} {type}[ response{?response}][ link {link_num}][ QPN {qpn}][ {reason}][ rejected{?rejected} {reject_reason}][ rkey {rkey}]",
         (_DIR, F("type", "str", "the message, as the kernel names it (LLC CONFIRM LINK v2)", True), F("response", "bool", "a response"), _RAW,
          F("mac", "hex", "sender MAC"), F("gid", "hex", "sender GID"), F("qpn", "x24", "QP number"), F("link_num", "u8", "link id"),
          F("qp_mtu", "u8", "path MTU (enum)"), F("psn", "x24", "initial PSN"), F("rejected", "bool", "ADD LINK rejected"),
          F("reject_reason", "al_reason", "ADD LINK reject reason"), F("direct", "bool", "ADD LINK v2: direct path"),
          F("target_gid", "hex", "ADD LINK v2: the target's GID"), F("rkeys", "json", "ADD LINK (continuation), DELETE RKEY: rkeys"),
          F("num_rkeys", "u8", "rkeys that follow"), F("link_uid", "hex", "link user id"), F("max_links", "u8", "CONFIRM LINK: links allowed"),
          F("max_conns", "u8", "CONFIRM LINK: connections allowed"), F("rmbe_eyec_flags", "json", "CONFIRM LINK: eye catcher flags"),
          F("rkey", "x32", "CONFIRM RKEY: the rkey"), F("vaddr", "x64", "CONFIRM RKEY: the RMB's address"),
          F("others", "json", "CONFIRM RKEY: the RMB's rkeys on other links"), F("negative", "bool", "a negative response"),
          F("retry", "bool", "CONFIRM RKEY: retry"), F("tokens", "json", "CONFIRM RKEY continuation: rkeys"),
          F("reason", "dl_reason", "DELETE LINK: the reason"), F("all", "bool", "DELETE LINK: every link"),
          F("orderly", "bool", "DELETE LINK: orderly"), F("err_mask", "u8", "DELETE RKEY: error mask"),
          F("num_invalid", "u8", "DELETE RKEY: invalid rkeys"), F("gids", "json", "REQUEST ADD LINK: GIDs"),
          F("user_data", "hex", "TEST LINK: user data"))),
    Kind("cdc.msg", "a CDC message sent or received", "{dir} CDC seq {seqno}[ token {token}] prod {prod} cons {cons}[ {flags}][ (the last of {coalesced})]",
         (_DIR, F("seqno", "u16", "sequence number"), F("token", "x32", "the receiver's RMBE alert token"), F("prod", "cursor", "producer cursor"),
          F("cons", "cursor", "consumer cursor"), F("flags", "strs", "the flags set (write_blocked, peer_conn_closed, ...)"), _RAW, _COALESCED)),
    Kind("rdma.write", "an RDMA WRITE posted: offset and length in the peer RMB",
         "RDMA WRITE {length} bytes[ at offset {offset}][ at vaddr {vaddr}][ rkey {rkey}][ in {coalesced} WRITEs]",
         (F("length", "count", "bytes written (coalesced: the WRITEs' sum)", True), F("offset", "count", "where in the peer's RMB"),
          F("rkey", "x32", "the peer RMB's rkey"), F("vaddr", "x64", "the virtual address written (captures)"), _COALESCED)),
    Kind("link.state", "a link changed state (LINK_* kernel names)", "{old} -> {new}[ ({cause})]",
         (F("old", "str", "the state before", True), F("new", "str", "the state after", True), _CAUSE), ids=("lgr", "link")),
    Kind("link.event", "a link was added or deleted, a TEST LINK timed out, a QP failed, failover began or ended", "link {event}",
         (F("event", "str", "the sub-kind", True),), sub="event", subs={s.name: s for s in (
             _link_event("added", "a link was added to the group", "link added[ on {device}][ QPN {qpn}][ peer QPN {peer_qpn}]",
                         F("qpn", "x24", "our QP number"), F("device", "str", "the RoCE device"),
                         F("peer_qpn", "x24", "the peer's QP number (captures)"), F("gid", "str", "our GID (captures)"),
                         F("peer_gid", "str", "the peer's GID (captures)")),
             _link_event("deleted", "a link was deleted (DELETE LINK, or cleared)", "link deleted[ (all links){?all}][ orderly{?orderly}][ {reason}]",
                         F("all", "bool", "every link of the group"), F("orderly", "bool", "orderly"),
                         F("reason", "dl_reason", "DELETE LINK reason (captures)"), F("reason_text", "str", "the reason's name")),
             _link_event("down", "a link went down; its connections fail over", "link down[: {reason}]",
                         F("reason", "str", "why"), expert="failover"),
             _link_event("failover_pending", "a link went down while the next one waits for its CONFIRM LINK",
                         "failover pending[: {reason}]", F("reason", "str", "why")),
             _link_event("failover_begin", "failover began: connections move to another link",
                         "failover begins to link {to_link}[: {conns} connections][ ({reason})]",
                         F("to_link", "u8", "the link they move to"), F("conns", "count", "connections moved"), F("reason", "str", "why"),
                         expert="failover"),
             _link_event("failover_end", "failover ended: every moved connection validated (or failed)",
                         "failover to link {to_link} done[: {conns} connections][, {failed} failed][ in {duration_ms} ms]",
                         F("to_link", "u8", "the link they moved to"), F("conns", "count", "connections moved"),
                         F("failed", "count", "connections that did not survive"), F("duration_ms", "num", "link down to validated, ms"),
                         expert="failover_end"),
             _link_event("failover_validation", "a failover validation CDC seen in a capture", "failover validation CDC[ seq {seqno}]",
                         F("seqno", "u16", "the CDC's sequence number")),
             _link_event("port_down", "a device's port went down", "port of {device} down", F("device", "str", "the RoCE device")),
             _link_event("port_up", "a device's port came back", "port of {device} up", F("device", "str", "the RoCE device")),
             _link_event("fault", "an operator injected a fault (port, loss, delay)",
                         "fault {fault}[ on {device}][ loss {loss}][ rx loss {rx_loss}][ drop next {drop_next}][ delay {delay} s]",
                         F("fault", "str", "port_down, port_up or faults", True), F("device", "str", "the RoCE device"),
                         F("loss", "prob", "fraction of frames sent that are dropped"), F("rx_loss", "prob", "fraction of frames received dropped"),
                         F("drop_next", "count", "frames to drop next"), F("delay", "num", "seconds each frame is held")),
             _link_event("qp_create_failed", "a QP could not be created for a new link", "QP not created[: {reason}]", F("reason", "str", "why")),
             _link_event("qp_error", "a QP failed (completion error or async event)", "QP error[: {status}]",
                         F("status", "str", "the completion status or event")),
             _link_event("bad_cdc", "a CDC from the peer could not be decoded", "bad CDC[: {reason}]", F("reason", "str", "why"),
                         F("raw", "hex", "the message's bytes, as received")),
             _link_event("bad_llc", "an LLC message from the peer could not be decoded", "bad LLC message[: {reason}]", F("reason", "str", "why"),
                         F("raw", "hex", "the message's bytes, as received")),
             _link_event("suspect_frames", "frames far outside a QP's PSN window arrived: no honest peer sends them, so a possible "
                         "attack (someone guessing PSNs to inject); reported at most once a second per link while they keep coming",
                         "possible attack: {new} frames outside the PSN window[ on {device}][ QPN {qpn}][, {psn_out_of_window} dropped in all]"
                         "[, {suspect_ignored} more past the budget, unexamined]",
                         F("new", "count", "suspect frames since the last report", True), F("device", "str", "the RoCE device"),
                         F("qpn", "x24", "our QP number"), F("psn_out_of_window", "count", "frames outside the window so far (examined, dropped)"),
                         F("suspect_ignored", "count", "frames past the QP's budget a second, dropped unexamined")),
             _link_event("test_link_timeout", "TEST LINK got no answer: the link is taken down", "TEST LINK timed out"),
             _link_event("llc_timeout", "an LLC flow got no answer in time", "LLC flow[ {flow}] timed out[ at {step}]",
                         F("flow", "str", "the flow"), F("step", "str", "where it waited")),
             _link_event("add_link_begin", "an ADD LINK flow began", "ADD LINK begins[ on {device}][ ({cause})][ asymmetric{?asym}]",
                         F("device", "str", "the new link's device"), _CAUSE, F("asym", "bool", "an asymmetric link")),
             _link_event("add_link_done", "an ADD LINK flow ended with a new link", "ADD LINK done[ on {device}][, group {type}][ asymmetric{?asym}]",
                         F("device", "str", "the new link's device"), F("type", "str", "the group's type now"), F("asym", "bool", "an asymmetric link")),
             _link_event("add_link_failed", "an ADD LINK flow failed", "ADD LINK failed[: {reason}]", F("reason", "str", "why")),
             _link_event("add_link_rejected", "ADD LINK was rejected", "ADD LINK rejected[: {reason}][ ({why})]",
                         F("reason", "al_reason", "the reject reason"), F("why", "str", "why")),
             _link_event("add_link_requested", "the client asked the server for a link (REQUEST ADD LINK)",
                         "REQUEST ADD LINK[ for {device}]", F("device", "str", "the device offered")),
         )}),
    Kind("lgr.state", "a link group was created, changed type, or was terminated", "{old} -> {new}[ ({cause})][ {reason}][ Crit{?crit}]",
         (F("old", "str", "the type before (NONE, SINGLE, SYM, ASYMP, ASYML)", True), F("new", "str", "the type after", True), _CAUSE,
          F("crit", "bool", "no failover path (smcr's Crit)"), F("role", "str", "created: client or server"), F("version", "u8", "created: SMC-R version"),
          F("peer_id", "hex", "created: the peer's id"), F("max_conns", "count", "created: connections allowed"),
          F("max_links", "count", "created: links allowed"), F("reason", "dl_reason", "terminated: the DELETE LINK reason")),
         ids=("lgr",)),
    Kind("stats", "a host's state: the snapshot a recording starts with", "host state[ ({cause})]",
         (_CAUSE, F("snapshot", "snapshot", "the stack's snapshot"))),
    Kind("events.dropped", "a subscriber missed events because it was too slow",
         "{count} events dropped[, {frames} frames][ by {by}][ ({last_error})]",
         (F("count", "count", "events missed", True), F("frames", "count", "frames missed (recorder)"), F("by", "str", "who dropped them"),
          F("total_events", "count", "events missed so far"), F("total_frames", "count", "frames missed so far"),
          F("last_error", "str", "why the last malformed item was dropped"))),
    Kind("trace.note", "smc-trace could not decode a frame of a capture: its number and why", "frame {frame} not decoded: {error}",
         (F("frame", "count", "the frame's number", True), F("error", "str", "why", True))),
)}  # fmt: skip

KINDS = {name: k.doc for name, k in SCHEMA.items()}  # name -> one line (the control socket's hello lists them)
LINK_EVENTS = SCHEMA["link.event"].subs

ID_KEYS = ("host", "lgr", "link", "conn")
RESERVED = {"t", "kind", *ID_KEYS}
_ID_TYPES = {"lgr": "str", "link": "u8", "conn": "count"}
_ID_CHECKS = tuple((key, TYPES[t].check) for key, t in _ID_TYPES.items())


def kind_of(kind: str, fields: dict) -> Kind | None:
    """The declaration of an event: its kind's, or its sub-kind's (link.event)."""
    k = SCHEMA.get(kind)
    if k is not None and k.sub is not None:
        return k.subs.get(fields.get(k.sub))
    return k


_CHECKS: dict[int, tuple] = {}  # id(kind) -> (kind, checks, names); the kind held, so its id stays its own


def _checks_of(k: Kind) -> tuple[tuple[tuple[str, Callable[[Any], bool], bool, str], ...], frozenset[str]]:
    """A kind's fields as check_record runs them, looked up once: (name, check, required,
    type name) each, and the set of their names."""
    got = _CHECKS.get(id(k))
    if got is None or got[0] is not k:
        got = _CHECKS[id(k)] = (k, tuple((f.name, TYPES[f.type].check, f.required, f.type) for f in k.fields), frozenset(f.name for f in k.fields))
    return got[1], got[2]


def _field_errors(k: Kind, kind_name: str, fields: dict, strict: bool) -> str | None:
    checks, names = _checks_of(k)
    for name, check, required, type_name in checks:
        v = fields.get(name)
        if v is None:
            if name in fields:  # readers take a field as absent or of its type, never null
                return f"{kind_name}: {name} must be {TYPES[type_name].doc}, not null"
            if required:
                return f"{kind_name}: lacks {name!r}"
            continue
        if not check(v):
            return f"{kind_name}: {name} must be {TYPES[type_name].doc}, not {_short(v)}"
    if not names.issuperset(fields):
        extra = fields.keys() - names
        if strict:
            return f"{kind_name}: fields not in the schema: {sorted(extra)}"
        for name in extra:
            if len(name) > 256 or not _depth_ok(fields[name]):
                return f"{kind_name}: field {name[:40]!r} is nested too deeply, too large or not finite"
    return None


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, (bytes, bytearray, memoryview, enum.Enum)) else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_record(d: Any, strict: bool = False) -> Event:
    """A decoded JSON object as an Event, checked against the schema; BadRecord names what is
    wrong. ``strict`` (tests, the emit checker) also refuses fields the schema does not name;
    readers take them (a newer stack may add fields) if they are bounded JSON."""
    if type(d) is not dict:
        raise BadRecord("an event record must be a JSON object")
    t, kind = d.get("t"), d.get("kind")
    if type(kind) is not str:
        raise BadRecord("event record: 'kind' must be a string" if "kind" in d else "event record lacks 'kind'")
    if type(t) not in (int, float) or not (-MAX_T <= t <= MAX_T):  # NaN fails the comparison
        raise BadRecord(f"{kind[:40]}: t must be seconds, a finite number within ±{MAX_T:.0e}, not {_short(t)}"
                        if "t" in d else f"{kind[:40]}: event record lacks 't'")  # fmt: skip
    host = d.get("host")
    if host is None:
        host = ""
    elif type(host) is not str or len(host) > 256:
        raise BadRecord(f"{kind[:40]}: host must be a string")
    ids = []
    for key, check in _ID_CHECKS:
        v = d.get(key)
        if v is not None and not check(v):
            raise BadRecord(f"{kind[:40]}: {key} must be {TYPES[_ID_TYPES[key]].doc} or null, not {_short(v)}")
        ids.append(v)
    fields = dict(d)  # a copy without the reserved keys: cheaper than a comprehension over every key
    for key in RESERVED:
        fields.pop(key, None)
    decl = SCHEMA.get(kind)
    if decl is None:
        raise BadRecord(f"unknown event kind {kind[:40]!r}")
    for key in decl.ids:
        if d.get(key) is None:
            raise BadRecord(f"{kind}: {key} must not be null")
    if decl.sub is not None:
        sub = fields.get(decl.sub)
        k = decl.subs.get(sub) if type(sub) is str else None
        if k is None:
            raise BadRecord(f"{kind}: unknown {decl.sub} {_short(sub)}")
        err = _field_errors(k, f"{kind} {sub}", fields, strict)
    else:
        err = _field_errors(decl, kind, fields, strict)
    if err:
        raise BadRecord(err)
    return Event(float(t), kind, host, ids[0], ids[1], ids[2], fields)


def check_event(event: Event, strict: bool = True) -> str | None:
    """What is wrong with an event as emitted (its canonical JSON form checked against the
    schema), or None. Tests and the emit checker use it; readers use check_record."""
    try:
        check_record(json.loads(to_json(event)), strict)
    except (BadRecord, ValueError, TypeError) as e:
        return str(e)
    return None


def _reject_constant(name: str):
    raise BadRecord(f"{name} is not a number an event record may hold")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads(text: str | bytes) -> Any:
    """JSON from an untrusted peer or file: no NaN or Infinity, bounded size and nesting;
    BadRecord names what is wrong."""
    if len(text) > MAX_LINE:
        raise BadRecord(f"a record of {len(text)} bytes is longer than {MAX_LINE}")
    try:
        text = text if type(text) is str else str(text, "utf-8")
        # one decoder for every record, not one built per call as json.loads(parse_constant=...) does
        obj = _DECODER.decode(text)
    except RecursionError:
        raise BadRecord("JSON nested too deeply") from None
    except UnicodeDecodeError as e:
        raise BadRecord(f"not UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise BadRecord(f"not JSON: {e.msg} (column {e.colno})") from None
    except BadRecord:  # NaN or Infinity, said by the decoder's parse_constant
        raise
    except ValueError:  # an integer of more digits than Python converts (4,300)
        raise BadRecord("a number with more digits than any field holds") from None
    # only non-ASCII text or a \u escape can carry what a terminal acts on (an escape
    # sequence, a lone surrogate): then every string is made printable, keys included
    return obj if text.isascii() and "\\u" not in text else _printable_json(obj)


def _printable_json(v: Any) -> Any:
    if type(v) is str:
        return printable(v)
    if type(v) is dict:
        return {printable(k): _printable_json(x) for k, x in v.items()}
    if type(v) is list:
        return [_printable_json(x) for x in v]
    return v


class Skipped:
    """Bad records a reader skipped: counted by reason, the first few named with where they were."""

    def __init__(self, keep: int = 20) -> None:
        self.count = 0
        self.reasons: Counter = Counter()
        self.named: list[str] = []
        self.keep = keep

    def add(self, where: str, error: Exception | str) -> None:
        text = str(error)
        self.count += 1
        self.reasons[text if len(text) <= 200 else text[:197] + "..."] += 1
        if len(self.named) < self.keep:
            self.named.append(f"{where}: {text}")

    def __bool__(self) -> bool:
        return self.count > 0

    def summary(self) -> str:
        """One line: how many, and why (the commonest reasons first)."""
        if not self.count:
            return "no bad records"
        top = "; ".join(f"{why} (x{n})" if n > 1 else why for why, n in self.reasons.most_common(3))
        more = len(self.reasons) - 3
        return f"skipped {self.count} bad event record{'s' if self.count != 1 else ''}: {top}" + (f"; {more} other reasons" if more > 0 else "")

    def to_dict(self) -> dict:
        return {"records": self.count, "reasons": dict(self.reasons.most_common(20)), "first": self.named}


# ---------------------------------------------------------------------------- snapshots
#
# What Stack.snapshot() hands out (the control socket's snapshot lines, a recording's first
# stats record): the keys readers use, with their types ("!": always there). A reader takes a
# snapshot only when it matches (check_snapshot names what does not); other keys may be there.

_S = {"str": TYPES["str"].check, "count": TYPES["count"].check, "int": TYPES["int"].check, "num": _is_num, "bool": TYPES["bool"].check,
      "cursor": _check_cursor, "decline": TYPES["decline"].check, "u8": TYPES["u8"].check, "any": _depth_ok,
      "strnull": lambda v: v is None or (type(v) is str and len(v) <= MAX_STR), "u8null": lambda v: v is None or TYPES["u8"].check(v)}  # fmt: skip
SNAPSHOT_CONN = {"conn": "count!", "state": "str", "mode": "str", "role": "str", "local": "str", "peer": "str", "version": "u8",
                 "fallback_reason": "decline", "peer_diagnosis": "decline", "token": "count", "rmb_size": "count",
                 "peer_rmb_size": "count", "bytes_to_rcv": "count", "write_blocked": "bool", "lgr": "strnull", "link": "u8null",
                 "rx_prod": "cursor", "rx_cons": "cursor", "tx_prod": "cursor", "tx_cons": "cursor", "tx_sent": "cursor", "tx_fin": "cursor",
                 "bytes_sent": "count", "bytes_received": "count"}  # fmt: skip
SNAPSHOT_LINK = {"id": "u8!", "state": "str", "device": "str", "qpn": "count", "peer_qpn": "count", "gid": "str", "peer_gid": "str",
                 "asym": "bool", "conns": "count", "psn_out_of_window": "count", "suspect_ignored": "count"}  # fmt: skip
SNAPSHOT_LGR = {"id": "str!", "role": "str", "type": "str", "crit": "bool", "version": "u8", "peer_host": "str", "conns": "count",
                "links": [SNAPSHOT_LINK]}  # fmt: skip
SNAPSHOT = {"host": "str", "t": "num", "stats": {"*": "num"}, "devices": [{"name": "str!", "up": "bool", "mtu": "count"}],
            "fallbacks": [{"role": "str", "reason": "decline", "count": "count"}], "lgrs": [SNAPSHOT_LGR], "conns": [SNAPSHOT_CONN],
            "failovers": [{"t": "num", "lgr": "str", "from_link": "u8", "to_link": "u8null", "conns": "count", "failed": "count",
                           "duration_ms": "num", "reason": "str"}],
            "rdma": {"*": "any"}}  # fmt: skip
MAX_SNAPSHOT_ITEMS = 1_000_000


def _shape_error(v: Any, shape: Any, where: str) -> str | None:
    if isinstance(shape, str):
        return None if _S[shape](v) else f"{where} must be {TYPES[shape].doc if shape in TYPES else shape}, not {_short(v)}"
    if isinstance(shape, list):
        if type(v) is not list or len(v) > MAX_SNAPSHOT_ITEMS:
            return f"{where} must be a list"
        for i, x in enumerate(v):
            err = _shape_error(x, shape[0], f"{where}[{i}]")
            if err:
                return err
        return None
    if type(v) is not dict or len(v) > MAX_SNAPSHOT_ITEMS:
        return f"{where} must be an object"
    if "*" in shape:
        for k, x in v.items():
            if type(k) is not str:
                return f"{where} keys must be strings"
            err = _shape_error(x, shape["*"], f"{where}.{k[:40]}")
            if err:
                return err
        return None
    for k, sub in shape.items():
        if isinstance(sub, str) and sub.endswith("!"):  # required
            if v.get(k) is None:
                return f"{where} lacks {k!r}"
            sub = sub[:-1]
        if k in v and v[k] is not None:
            err = _shape_error(v[k], sub, f"{where}.{k}")
            if err:
                return err
    return None


def check_snapshot(snap: Any) -> str | None:
    """What is wrong with a snapshot (a control socket's, a recording's), or None."""
    return _shape_error(snap, SNAPSHOT, "snapshot")


def _clean(v: Any, shape: Any) -> Any:
    if isinstance(shape, list):
        return [_clean(x, shape[0]) for x in v]
    if isinstance(shape, dict) and "*" not in shape:
        return {k: _clean(x, shape.get(k)) for k, x in v.items() if x is not None}
    return v


def parse_snapshot(snap: Any) -> dict:
    """A snapshot as its readers (smctop's model, smc-trace summary) take it: checked against
    SNAPSHOT, with null values left out so that a reader's defaults apply. BadRecord names
    what is wrong."""
    err = check_snapshot(snap)
    if err:
        raise BadRecord(err)
    return _clean(snap, SNAPSHOT)


# ---------------------------------------------------------------------------- what events add up to
#
# Aggregations smc-trace's summary and smctop's model share (the snapshot parser above is the other).


@dataclass(slots=True)
class Failover:
    """One failover of a link group: from its failover_begin (or end alone) to its failover_end."""

    t: float  # when it began
    host: str
    lgr: str | None
    from_link: int | None
    to_link: int | None
    conns: int
    duration_ms: float | None = None  # None: still in progress
    reason: str = ""
    failed: int | None = None
    # False for the second end of a failover a reader watched at both ends of its link group:
    # one failover, counted at the end that began it
    counted: bool = True
    paired: bool = False


class Failovers(deque):
    """Failovers as link.event failover_begin / failover_end pair them (by host, link group and
    the link that failed), newest last; at most ``maxlen`` kept."""

    def feed(self, e: Event) -> Failover | None:
        """Take a link.event; returns the failover it began or ended (None for other events)."""
        f = e.fields
        ev = f.get("event")
        if ev == "failover_begin":
            fo = Failover(e.t, e.host, e.lgr, e.link, f.get("to_link"), f.get("conns", 0), None, str(f.get("reason", "")))
            self.append(fo)
            return fo
        if ev != "failover_end":
            return None
        for fo in reversed(self):
            if fo.host == e.host and fo.lgr == e.lgr and fo.from_link == e.link and fo.duration_ms is None:
                fo.duration_ms, fo.conns, fo.failed = f.get("duration_ms"), f.get("conns", fo.conns), f.get("failed")
                return fo
        fo = Failover(e.t, e.host, e.lgr, e.link, f.get("to_link"), f.get("conns", 0), f.get("duration_ms"), str(f.get("reason", "")), f.get("failed"))
        self.append(fo)
        return fo


# ---------------------------------------------------------------------------- text


_TOKEN = re.compile(r"\{([?]?)([a-z_0-9|]+)\}|\[|\]|[^{}\[\]]+")


def _parse_template(text: str) -> list:
    """A template as a tree: strings, ("field", names, cond) and ("group", [parts])."""
    stack: list[list] = [[]]
    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if tok == "[":
            stack.append([])
        elif tok == "]":
            if len(stack) == 1:
                raise ValueError(f"template {text!r}: ']' without '['")
            group = stack.pop()
            stack[-1].append(("group", group))
        elif tok.startswith("{"):
            stack[-1].append(("field", tuple(m.group(2).split("|")), bool(m.group(1))))
        else:
            stack[-1].append(tok)
    if len(stack) != 1 or sum(len(m.group(0)) for m in _TOKEN.finditer(text)) != len(text):
        raise ValueError(f"template {text!r}: unbalanced brackets or a stray brace")
    return stack[0]


# How a template tests and writes a value of the common types, inline: when a value is set
# (for the template, not a full check: a wrong type is simply not set) and its text.
_INLINE = {
    "str": ("type({v}) is str and {v} != ''", "{v}"),
    "hex": ("type({v}) is str and {v} != ''", "{v}"),
    "cursor": ("type({v}) is str and {v} != ''", "{v}"),
    "dir": ("{v} == 'tx' or {v} == 'rx'", "('sent' if {v} == 'tx' else 'received')"),
    "bool": ("{v} is True", "'yes'"),
    **{t: ("type({v}) is int", "str({v})") for t in ("int", "count", "u8", "u16", "u32")},
    "x24": ("type({v}) is int and {v} >= 0", "f'0x{{{v}:06x}}'"),
    "x32": ("type({v}) is int and {v} >= 0", "f'0x{{{v}:08x}}'"),
    "strs": ("type({v}) is list and {v} != []", "','.join(map(str, {v}))"),
}


def _compile(kind: Kind) -> Callable[[Event], str]:
    """A template as a Python function of an event (generated once: smctop renders on its hot path)."""
    types = {f.name: f.type for f in kind.fields}
    lines = ["def render(e):", "    f = e.fields", "    out = []"]
    env: dict[str, Any] = {}
    counter = [0]

    def value(name: str, var: str, ind: str) -> None:
        lines.append(f"{ind}{var} = e.{name}" if name in ID_KEYS else f"{ind}{var} = f.get({name!r})")

    def emit(parts: list, ind: str, ok: str | None) -> None:
        for p in parts:
            if isinstance(p, str):
                lines.append(f"{ind}{ok or 'out'}.append({p!r})")
                continue
            if p[0] == "group":
                counter[0] += 1
                g, gok = f"g{counter[0]}", f"ok{counter[0]}"
                lines.append(f"{ind}{g} = []")
                lines.append(f"{ind}{gok} = True")
                emit_group(p[1], ind, g, gok)
                lines.append(f"{ind}if {gok}:")
                lines.append(f"{ind}    {ok or 'out'}.extend({g})")
                continue
            _, names, cond = p
            counter[0] += 1
            var = f"v{counter[0]}"
            lines.append(f"{ind}{var} = None")
            for n in names:
                tmp = f"{var}_{n}"
                value(n, tmp, ind)
                ftype = "u8" if n == "link" else "count" if n == "conn" else "str" if n in ID_KEYS else types.get(n)
                if ftype is None:
                    raise ValueError(f"{kind.name}: the template names {n!r}, which is not a field")
                guard, text = _INLINE.get(ftype, (None, None))
                if guard is None:  # the type's own check and text
                    t = TYPES[ftype]
                    env[f"_fmt_{ftype}"], env[f"_chk_{ftype}"] = t.text, t.check
                    guard = f"{{v}} is not None and {{v}} != [] and {{v}} is not False and _chk_{ftype}({{v}})" + (" and {v} != 0" if t.code else "")
                    text = f"_fmt_{ftype}({{v}})"
                lines.append(f"{ind}if {var} is None and ({guard.format(v=tmp)}):")
                lines.append(f"{ind}    {var} = '' if {cond} else {text.format(v=tmp)}")
            if ok is None:
                lines.append(f"{ind}out.append('?' if {var} is None else {var})")
            else:
                lines.append(f"{ind}if {var} is None:")
                lines.append(f"{ind}    {group_ok[-1]} = False")
                lines.append(f"{ind}else:")
                lines.append(f"{ind}    {ok}.append({var})")

    group_ok: list[str] = []

    def emit_group(parts: list, ind: str, g: str, gok: str) -> None:
        group_ok.append(gok)
        emit(parts, ind, g)
        group_ok.pop()

    emit(_parse_template(kind.render), "    ", None)
    lines.append("    return ''.join(out)")
    exec("\n".join(lines), env)  # noqa: S102 - the templates are this module's own constants
    return env["render"]


def _renderers() -> dict[str, Callable[[Event], str]]:
    out = {}
    for name, k in SCHEMA.items():
        out[name] = _compile(k)
        for sub, sk in k.subs.items():
            out[f"{name}/{sub}"] = _compile(sk)
    return out


_RENDER = _renderers()


def renderer(kind: str) -> Callable[[Event], str]:
    """The compiled template of one kind (``link.event/added`` for a sub-kind), for a hot path
    that renders many events of that kind; it does not check its event's fields."""
    return _RENDER[kind]


def render(e: Event) -> str:
    """The event as one line an operator reads (its kind's template). Never fails: an event
    the schema does not know reads as its fields."""
    k = SCHEMA.get(e.kind)
    try:
        if k is not None and k.sub is not None:
            fn = _RENDER.get(f"{e.kind}/{e.fields.get(k.sub)}")
            if fn is not None:
                return fn(e)
        elif k is not None:
            return _RENDER[e.kind](e)
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError):
        pass
    return " ".join(f"{key}={_short(v)}" for key, v in e.fields.items() if key != "raw")


@dataclass(slots=True)
class Event:
    t: float
    kind: str
    host: str = ""
    lgr: str | None = None
    link: int | None = None
    conn: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return value.value if isinstance(value.value, (int, str)) else value.name
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return round(value, 9)
    return value


def to_dict(event: Event) -> dict[str, Any]:
    clash = RESERVED & event.fields.keys()
    if clash:
        raise ValueError(f"event {event.kind}: field names {sorted(clash)} are reserved")
    d = {"t": round(event.t, 9), "kind": event.kind, "host": event.host, "lgr": event.lgr, "link": event.link, "conn": event.conn}
    d.update(_plain(event.fields))
    return d


def _to_json_py(event: Event) -> str:
    """The canonical JSON form: compact, sorted keys, one line (the pure-Python definition;
    the compiled encoder gives the same bytes, and hands it whatever it does not handle)."""
    return json.dumps(to_dict(event), sort_keys=True, separators=(",", ":"))


def _load_native():
    try:
        from native import eventenc
    except ImportError as e:  # an installation without native/
        return None, f"the compiled event encoder is not available ({e})"
    try:
        mod = eventenc.load()
    except eventenc.EncoderUnavailable as e:
        return None, str(e)
    mod.configure(Event, enum.Enum, _to_json_py)
    return mod, ""


_native, _native_why = _load_native()


def native_encoder():
    """The compiled encoder module (native/eventenc.c), or None when the twins run."""
    return _native


def encoder_note() -> str:
    """One line for an operator: which event encoder runs, and why not the fast one."""
    if _native is not None:
        return f"smctop events: compiled encoder ({_native.__file__})"
    return f"smctop events: pure-Python encoder, slower: {_native_why}"


_noted = False


def note_encoder_once(log: logging.Logger | None = None) -> None:
    """Warn once per process (logging) when events are encoded in Python although the
    compiled encoder was not deliberately switched off."""
    global _noted
    if _noted or _native is not None or "switched off" in _native_why:
        return
    _noted = True
    (log or logging.getLogger("smctop.events")).warning("%s", encoder_note())


if _native is not None:
    to_json = _native.to_json
    _to_json_line = _native.to_json_line
else:
    to_json = _to_json_py

    def _to_json_line(event: Event) -> str:
        return _to_json_py(event) + "\n"


def from_dict(d: dict[str, Any]) -> Event:
    """An event record (decoded JSON) checked against the schema; BadRecord (a ValueError)
    names what is wrong."""
    return check_record(d)


def from_json(line: str | bytes) -> Event:
    """One line of canonical JSON, checked (bounded size and nesting, no NaN, the schema)."""
    return check_record(loads(line))


# the data path's events: a stack emits several a round trip on each side, and builds them
# only for someone who takes them one by one (EventBus.data_events); a sampling subscriber
# (EventBus.add_toucher) is told which connections moved instead
DATA_KINDS = frozenset({"conn.cursor", "conn.rmb", "rdma.write", "cdc.msg"})


def marks_something(event: Event) -> bool:
    """A data-path event a sampled subscriber still takes as an event: a CDC with flags other
    than flow control (closing, aborting, urgent data, failover validation), or a cursor move
    that names its cause (a failover's rewind, a close that left bytes unsent)."""
    f = event.fields
    if event.kind == "cdc.msg":
        flags = f.get("flags")
        return bool(flags) and not FLOW_CONTROL_FLAGS.issuperset(flags)
    return event.kind == "conn.cursor" and ("cause" in f or "rewound" in f)


class Subscription:
    """A bounded queue of events for one consumer. ``sampled``: it reads the data path by
    sampling the connections that moved (a toucher on the bus), so the data path's events
    are not built for it; it still gets those that mark something (a CDC closing or
    aborting, urgent data, a cursor moved by a failover), which are built for any listener."""

    def __init__(self, bus: "EventBus", maxsize: int, kinds: Iterable[str] | None, sampled: bool = False) -> None:
        self._bus = bus
        self.maxsize = maxsize
        self.kinds = frozenset(kinds) if kinds else None
        self.sampled = sampled
        self.queue: deque[Event] = deque()
        self.dropped = 0
        self.dropped_total = 0
        self._last: Event | None = None
        self._waiter: asyncio.Event | None = None

    def offer(self, event: Event) -> None:
        if self.kinds is not None and event.kind not in self.kinds:
            return
        if self.sampled and event.kind in DATA_KINDS and not marks_something(event):
            return  # built for another listener; the sampler tells this one
        if len(self.queue) >= self.maxsize:
            self.dropped += 1
            self.dropped_total += 1
            self._last = event
            return
        self._report_drops()
        self.queue.append(event)
        if self._waiter is not None:
            self._waiter.set()

    def _report_drops(self) -> None:
        """Put one events.dropped record where the missing events would have been."""
        if self.dropped:
            last = self._last
            self.queue.append(Event(last.t, "events.dropped", last.host, fields={"count": self.dropped}))
            self.dropped = 0

    def get_nowait(self) -> list[Event]:
        self._report_drops()
        out = list(self.queue)
        self.queue.clear()
        return out

    async def get(self) -> Event:
        while not self.queue:
            self._report_drops()
            if self.queue:
                break
            if self._waiter is None:
                self._waiter = asyncio.Event()
            self._waiter.clear()
            await self._waiter.wait()
        return self.queue.popleft()

    def close(self) -> None:
        self._bus._unsubscribe(self)


_checking = False
emit_errors: list[str] = []  # what the emit checker found (tests assert it stays empty)


def _check_emitted(event: Event) -> None:
    err = check_event(event)
    if err is not None and len(emit_errors) < 1000:
        emit_errors.append(f"{event.host} {event.kind}: {err}")


def check_emitted(on: bool) -> None:
    """Hold every event a bus emits to the schema (strictly) from now on, and note what does
    not match in ``emit_errors``: the test suite turns it on; it costs a check per event."""
    global _checking
    _checking = on


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Callable[[Event], None]] = []
        self._subs: list[Subscription] = []
        self._targets: tuple[Callable[[Event], None], ...] = ()  # listeners, then each subscription's offer
        self.active = False
        self.data_events = False  # someone takes the data path's events one by one (DATA_KINDS)
        self.data_active = False  # data_events, or a toucher to tell which connections moved
        self._touchers: tuple = ()  # objects with a ``touched`` dict: connection id -> connection
        self.emitted = 0
        self.failures: list[tuple[Callable[[Event], None], Exception]] = []  # listeners removed because they raised

    def _update(self) -> None:
        self._targets = (*self._listeners, *(sub.offer for sub in self._subs))
        self.active = bool(self._targets)
        self.data_events = bool(self._listeners) or any(not sub.sampled and (sub.kinds is None or not sub.kinds.isdisjoint(DATA_KINDS)) for sub in self._subs)
        self.data_active = self.data_events or bool(self._touchers)
        if _checking and self.active:
            self._targets = (_check_emitted, *self._targets)

    def touch(self, conn) -> None:
        """The data path moved ``conn`` (its cursors, counters): the touchers sample it later."""
        for t in self._touchers:
            t.touched[conn.id] = conn

    def add_toucher(self, toucher) -> None:
        self._touchers = (*self._touchers, toucher)
        self._update()

    def remove_toucher(self, toucher) -> None:
        self._touchers = tuple(t for t in self._touchers if t is not toucher)
        self._update()

    def emit(self, event: Event) -> None:
        self.emitted += 1
        done = 0
        try:
            for fn in self._targets:
                fn(event)
                done += 1
        except Exception as e:  # noqa: BLE001 - a listener's failure must not become the emitter's
            self._listener_failed(event, done, e)

    def _listener_failed(self, event: Event, at: int, error: Exception) -> None:
        """A listener raised (a JSONL writer on a full disk, a broken pipe): it is removed and
        named in the log and in ``failures``, and the stack that emitted goes on; the
        listeners after it still get the event."""
        targets = self._targets
        self._remove_failed(targets[at], error)
        for fn in targets[at + 1 :]:
            try:
                fn(event)
            except Exception as e:  # noqa: BLE001
                self._remove_failed(fn, e)

    def _remove_failed(self, fn: Callable[[Event], None], error: Exception) -> None:
        self.failures.append((fn, error))
        logging.getLogger("smctop.events").error("%s", listener_error_text(fn, error))
        if fn in self._listeners:
            self._listeners.remove(fn)
        else:  # a subscription's offer (it does not raise) or the emit checker
            self._subs = [s for s in self._subs if s.offer != fn]
        self._update()

    def listen(self, fn: Callable[[Event], None]) -> None:
        self._listeners.append(fn)
        self._update()

    def unlisten(self, fn: Callable[[Event], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)
        self._update()

    def subscribe(self, maxsize: int = 10_000, kinds: Iterable[str] | None = None, sampled: bool = False) -> Subscription:
        sub = Subscription(self, maxsize, kinds, sampled)
        self._subs.append(sub)
        self._update()
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        self._update()


def listener_error_text(fn: Callable, error: Exception) -> str:
    """What to tell the operator when an event listener failed."""
    out = getattr(fn, "out", None)
    what = f"writing events to {getattr(out, 'name', out)}" if out is not None else f"the event listener {fn!r}"
    why = (error.strerror or str(error)) if isinstance(error, OSError) else f"{type(error).__name__}: {error}"
    return f"{what} failed ({why}); no more events go there"


class _LineWriterPy:
    """The pure-Python twin of the compiled ``LineWriter``: JsonlWriter's call path."""

    def __init__(self, out: TextIO, kinds: Iterable[str] | None = None) -> None:
        self.out = out
        self.kinds = kinds
        self.written = 0

    def __call__(self, event: Event) -> None:
        if self.kinds is None or event.kind in self.kinds:
            self.out.write(_to_json_line(event))
            self.written += 1


class JsonlWriter(_native.LineWriter if _native is not None else _LineWriterPy):  # type: ignore[misc]
    """A listener that writes every event (or those of ``kinds``) as one canonical JSON line.

    Each line goes to ``out.write`` at once: nothing is held back, so closing ``out`` after
    the last event loses nothing. With the compiled encoder the whole call runs in C
    (encoding an event and handing it to ``write``)."""

    def __init__(self, out: TextIO, kinds: Iterable[str] | None = None) -> None:
        super().__init__(out, frozenset(kinds) if kinds else None)
        note_encoder_once()


def read_jsonl(lines: Iterable[str], skipped: Skipped | None = None) -> Iterable[Event]:
    """Parse JSONL event records. A bad line is counted and named in ``skipped`` and left out;
    without ``skipped`` it raises ValueError naming its line number."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield from_json(line)
        except ValueError as e:
            if skipped is None:
                raise ValueError(f"line {n}: {e}") from None
            skipped.add(f"line {n}", e)
