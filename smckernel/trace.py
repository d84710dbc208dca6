"""Tracepoints and probes, pure: what to ask tracefs for, and the lines it answers with.

The smc module has four tracepoints (net/smc/smc_tracepoint.h, Linux 5.17+):
``smc:smc_switch_to_fallback`` (sk, clcsk, net cookie, reason), ``smc:smc_tx_sendmsg`` and
``smc:smc_rx_recvmsg`` (smc, net cookie, length, device), ``smc:smcr_link_down`` (link,
link group, net cookie, state, device, caller). They name sockets and links by kernel
pointers only, which nothing else shows; so where the kernel allows, dynamic probes with
BTF arguments (fprobe ``f:`` and tracepoint probes ``t:``, Linux 6.6+ with
CONFIG_PROBE_EVENTS_BTF_ARGS; module tracepoints for ``t:`` as the lab's 6.12 has them)
fetch what identifies them: TCP ports and addresses, the alert token, the link group id,
the link id, and the raw bytes of received CDC and LLC messages.

:func:`probe_definitions` gives the lines for ``dynamic_events``; :func:`parse_line` reads
a ``trace_pipe`` line into a :class:`TraceRecord`; the helpers below turn a record's
fetched values into facts (addresses, raw message bytes). Time is the line's timestamp:
with the instance's ``trace_clock`` set to ``mono`` it is CLOCK_MONOTONIC seconds, the
clock ``time.monotonic()`` reads.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

# the four tracepoints of the smc module
TRACEPOINTS = ("smc_switch_to_fallback", "smc_tx_sendmsg", "smc_rx_recvmsg", "smcr_link_down")

_SK = "smc->clcsock->sk->__sk_common"
_TUPLE = f"sport={_SK}.skc_num:u16 dport={_SK}.skc_dport:u16 saddr={_SK}.skc_rcv_saddr:x32 daddr={_SK}.skc_daddr:x32"
# 48 bytes: a CDC or LLC message is 44 (an LLC v2 message longer than that, ADD LINK v2, arrives
# in a buffer of its own; what the LLC layer queues, and the probe sees, is its first 44 bytes)
_RAW = " ".join(f"r{i}=+{8 * i}($arg2):x64" for i in range(6))
RAW_WORDS = 6

# name -> (kind of probe, its definition after the event name). Each replaces or adds to a
# tracepoint; ``needs`` says which tracepoint it makes redundant.
_NET_SK = "net=smc->sk.__sk_common.skc_net.net->net_cookie:u64"
_NET_LINK = "net=link->lgr->net->net_cookie:u64"
_NET_LNK = "net=lnk->lgr->net->net_cookie:u64"
_NET_LGR = "net=lgr->net->net_cookie:u64"
PROBES: dict[str, tuple[str, str]] = {
    "fallback": ("f", f"smc_switch_to_fallback reason=reason_code:x32 peer_diag=smc->peer_diagnosis:x32 listen=smc->listen_smc:x64 {_TUPLE} {_NET_SK}"),
    "decline": ("f", f"smc_clc_send_decline diag=peer_diag_info:x32 version=version:u8 listen=smc->listen_smc:x64 {_TUPLE} {_NET_SK}"),
    "cdc_rx": ("f", f"smc_cdc_msg_recv token=smc->conn.alert_token_local:x32 lgr=smc->conn.lgr->id:x32 link=smc->conn.lnk->link_id:u8 {_RAW} "
                    f"listen=smc->listen_smc:x64 {_TUPLE} {_NET_SK}"),
    "llc_rx": ("f", f"smc_llc_enqueue lgr=link->lgr->id:x32 link=link->link_id:u8 {_RAW} {_NET_LINK}"),
    "lgr_type": ("f", f"smcr_lgr_set_type lgr=lgr->id:x32 old=lgr->type:u32 new=new_type:u32 role=lgr->role:u32 version=lgr->smc_version:u8 {_NET_LGR}"),
    "lgr_type_asym": ("f", f"smcr_lgr_set_type_asym lgr=lgr->id:x32 old=lgr->type:u32 new=new_type:u32 asym=asym_lnk_idx:s32 {_NET_LGR}"),
    "lgr_free": ("f", f"smc_lgr_free lgr=lgr->id:x32 type=lgr->type:u32 {_NET_LGR}"),
    "failover": ("f", f"smc_switch_conns lgr=lgr->id:x32 from=from_lnk->link_id:u8 dev_err=is_dev_err:u8 {_NET_LGR}"),
    "failover_end": ("f", "smc_switch_conns%return to=$retval->link_id:u8 lgr=$retval->lgr->id:x32 net=$retval->lgr->net->net_cookie:u64"),
    "link_active": ("f", f"smc_llc_link_active lgr=link->lgr->id:x32 link=link->link_id:u8 dev=link->ibname:string {_NET_LINK}"),
    "link_clear": ("f", f"smcr_link_clear lgr=lnk->lgr->id:x32 link=lnk->link_id:u8 state=lnk->state:s32 dev=lnk->ibname:string {_NET_LNK}"),
    "link_down": ("t", f"smcr_link_down lgr=lnk->lgr->id:x32 link=lnk->link_id:u8 state=lnk->state:s32 dev=lnk->ibname:string loc=location:symbol {_NET_LNK}"),
    "sendmsg": ("t", f"smc_tx_sendmsg token=smc->conn.alert_token_local:x32 len=len:u64 listen=smc->listen_smc:x64 {_TUPLE} {_NET_SK}"),
    "recvmsg": ("t", f"smc_rx_recvmsg token=smc->conn.alert_token_local:x32 len=len:u64 listen=smc->listen_smc:x64 {_TUPLE} {_NET_SK}"),
}  # fmt: skip
# a probe that, once installed, makes its tracepoint's own records redundant
REPLACES = {"fallback": "smc_switch_to_fallback", "link_down": "smcr_link_down", "sendmsg": "smc_tx_sendmsg", "recvmsg": "smc_rx_recvmsg"}


def probe_definitions(group: str, names=None, net: bool = True) -> dict[str, str]:
    """``dynamic_events`` lines for the probes (all, or ``names``) in event group ``group``;
    ``net=False`` leaves out the network namespace cookie (kernels before 5.14 lack it)."""
    out = {}
    for name, (kind, body) in PROBES.items():
        if names is None or name in names:
            if not net:
                body = " ".join(a for a in body.split() if not a.startswith("net="))
            out[name] = f"{kind}:{group}/{name} {body}"
    return out


@dataclass
class TraceRecord:
    """One trace_pipe line: when (CLOCK_MONOTONIC seconds with trace_clock mono), which
    event, in which task and context, and its arguments as text."""

    t: float
    event: str
    comm: str = ""
    pid: int = 0
    cpu: int = 0
    flags: str = ""
    where: str = ""  # a probe's "(function+offset/size [module])"
    args: dict[str, str] = field(default_factory=dict)
    lost: int = 0  # a "[LOST n EVENTS]" line: n

    @property
    def softirq(self) -> bool:
        """Ran in softirq or interrupt context: the irq-info flags' third character
        (irqs-off, need-resched, then h/s/H/z for hardirq, softirq, both, NMI)."""
        return len(self.flags) >= 3 and self.flags[2] in "shHz"

    def int(self, key: str) -> int | None:
        """An argument as a number (decimal or 0x hex); None when absent or a fetch fault."""
        v = self.args.get(key)
        if v is None:
            return None
        try:
            return int(v, 0) if not v.startswith("-") else -int(v[1:], 0)
        except ValueError:
            return None

    def str(self, key: str) -> str | None:
        v = self.args.get(key)
        if v is None:
            return None
        if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
            return v[1:-1]
        return v


class TraceFormatError(ValueError):
    """A line that is not a trace_pipe record."""


_LINE = re.compile(r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]*\)\s+)?\[(?P<cpu>\d+)\]\s+(?:(?P<flags>[^\s\]]{4,6})\s+)?"
                   r"(?P<ts>\d+\.\d+):\s+(?P<event>[\w.]+):\s?(?P<rest>.*)$")  # fmt: skip
_LOST = re.compile(r"^\s*CPU:(?P<cpu>\d+)\s+\[LOST (?P<n>\d+) EVENTS\]")
_ARG = re.compile(r'([A-Za-z_]\w*)=("(?:[^"\\]|\\.)*"|\S+)')
_WHERE = re.compile(r"^\((?P<where>[^)]*)\)\s*")


def parse_line(line: str) -> TraceRecord:
    """A trace_pipe line as a record; TraceFormatError names what is wrong."""
    line = line.rstrip("\n")
    m = _LINE.match(line)
    if m is None:
        lm = _LOST.match(line)
        if lm is not None:
            return TraceRecord(t=0.0, event="LOST", cpu=int(lm.group("cpu")), lost=int(lm.group("n")))
        raise TraceFormatError(f"not a trace record: {line[:120]!r}")
    rest = m.group("rest")
    where = ""
    wm = _WHERE.match(rest)
    if wm is not None:
        where, rest = wm.group("where"), rest[wm.end() :]
    args = {k: v for k, v in _ARG.findall(rest)}
    t = float(m.group("ts"))
    if not t < 1e10:
        raise TraceFormatError(f"timestamp {m.group('ts')} is not seconds of a clock: {line[:120]!r}")
    return TraceRecord(t=t, event=m.group("event"), comm=m.group("comm").strip(), pid=int(m.group("pid")),
                       cpu=int(m.group("cpu")), flags=m.group("flags") or "", where=where, args=args)  # fmt: skip


# ---------------------------------------------------------------------------- what the fetched values mean


def in_range(value: int | None, bits: int) -> int | None:
    """A fetched number, or None when absent or out of the field's range (a damaged line)."""
    return value if value is not None and 0 <= value < 1 << bits else None


def u8(value: int | None) -> int | None:
    return in_range(value, 8)


def ipv4(value: int | None, byteorder: str = "little") -> str | None:
    """A ``__be32`` address fetched as a native u32 (``:x32``) back to dotted form."""
    value = in_range(value, 32)
    if value is None:
        return None
    return str(ipaddress.IPv4Address(value.to_bytes(4, byteorder)))


def be16(value: int | None, byteorder: str = "little") -> int | None:
    """A ``__be16`` port fetched as a native u16 back to its number."""
    value = in_range(value, 16)
    if value is None:
        return None
    return int.from_bytes(value.to_bytes(2, byteorder), "big")


def tuple_of(rec: TraceRecord, byteorder: str = "little") -> tuple[str, str] | None:
    """(local, peer) "ip:port" of the CLC socket a probe names (sport is in host order,
    dport and the addresses in network order as the kernel keeps them)."""
    sport, dport = in_range(rec.int("sport"), 16), be16(rec.int("dport"), byteorder)
    if sport is None or dport is None:
        return None
    return f"{ipv4(rec.int('saddr'), byteorder) or '0.0.0.0'}:{sport}", f"{ipv4(rec.int('daddr'), byteorder) or '0.0.0.0'}:{dport}"


def raw_bytes(rec: TraceRecord, length: int = 44, byteorder: str = "little") -> bytes | None:
    """The message bytes a probe fetched as r0, r1, ... (native u64 words): ``length`` of
    them, or as many as it fetched when fewer (None when not even the first 44)."""
    words = []
    for i in range(RAW_WORDS):
        w = in_range(rec.int(f"r{i}"), 64)
        if w is None:
            break
        words.append(w)
    if len(words) * 8 < 44:
        return None
    return b"".join(w.to_bytes(8, byteorder) for w in words)[:length]


def lgr_text(value: int | None) -> str | None:
    """The link group id a probe fetched (the 4 id bytes as a native u32): smc-tools' LG-ID."""
    value = in_range(value, 32)
    return None if value is None else f"{value:08x}"
