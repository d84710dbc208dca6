"""smc_diag, pure: the AF_SMC sock_diag dump as :class:`DiagSocket` records.

Facts from include/uapi/linux/smc_diag.h and net/smc/smc_diag.c:

* each reply is a ``struct smc_diag_msg`` (64 bytes: family, state, mode, shutdown, an
  ``inet_diag_sockid`` with the CLC TCP socket's ports, addresses, interface and the SMC
  socket's cookie, the owner's uid and the inode) followed by attributes;
* SMC_DIAG_SHUTDOWN (u8) and SMC_DIAG_FALLBACK (reason and peer diagnosis, two u32) come
  with every socket; SMC_DIAG_CONNINFO (token, buffer sizes, the cursors) only once the
  connection has an alert token; SMC_DIAG_LGRINFO (the link: id, RDMA device and port,
  GIDs as text, role) only for SMC-R connections in a listed link group;
  SMC_DIAG_DMBINFO for SMC-D;
* the mode is SMCR (0), TCP (1, fallback) or SMCD (2); before the handshake ends a
  socket reads SMCR with state INIT: the mode is only known once the state is not INIT.

The dump covers the namespace of the socket that asked; it needs no privilege.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from stack.wire import codes

from . import netlink as nl

SMC_DIAG_CONNINFO, SMC_DIAG_LGRINFO, SMC_DIAG_SHUTDOWN, SMC_DIAG_DMBINFO, SMC_DIAG_FALLBACK = 1, 2, 3, 4, 5
ATTR_NAMES = {1: "CONNINFO", 2: "LGRINFO", 3: "SHUTDOWN", 4: "DMBINFO", 5: "FALLBACK"}
MODES = {m.value: m.name for m in codes.DiagMode}
STATES = {s.value: s.name for s in codes.SmcState}  # the kernel's names (enum smc_state)
ROLES = {0: "CLNT", 1: "SERV"}  # smc-tools' words; SMC_CLNT / SMC_SERV
MSG_LEN = 64
CONNINFO_LEN = 76
LGRINFO_LEN = 147
IB_DEVICE_NAME_MAX = 64

_MSG = struct.Struct("=BBBB")


class Cursor(NamedTuple):
    """An RMBE cursor: how often it wrapped (16 bits) and where it is (32 bits)."""

    wrap: int
    count: int

    def __str__(self) -> str:  # the form our events use
        return f"{self.wrap}:{self.count}"

    def smc_tools(self) -> str:  # the form smcss -d prints
        return f"{self.wrap:04x}:{self.count:08x}"


@dataclass(slots=True)
class ConnInfo:
    token: int
    sndbuf_size: int
    rmbe_size: int
    peer_rmbe_size: int
    rx_prod: Cursor
    rx_cons: Cursor
    tx_prod: Cursor
    tx_cons: Cursor
    rx_prod_flags: int
    rx_conn_state_flags: int
    tx_prod_flags: int
    tx_conn_state_flags: int
    tx_prep: Cursor
    tx_sent: Cursor
    tx_fin: Cursor


@dataclass(frozen=True, slots=True)
class LgrInfo:
    link_id: int
    ibname: str
    ibport: int
    gid: str
    peer_gid: str
    role: int

    @property
    def role_name(self) -> str:
        return ROLES.get(self.role, f"{self.role:#x}?")


@dataclass(slots=True)
class DmbInfo:
    linkid: int
    peer_gid: int
    my_gid: int
    token: int
    peer_token: int


@dataclass(slots=True)
class DiagSocket:
    family: int
    state: int
    mode: int
    shutdown: int
    sport: int
    dport: int
    src: str
    dst: str
    ifindex: int
    cookie: int
    uid: int
    inode: int
    fallback_reason: int | None = None
    peer_diagnosis: int | None = None
    conninfo: ConnInfo | None = None
    lgrinfo: LgrInfo | None = None
    dmbinfo: DmbInfo | None = None
    unknown_attrs: list[int] = field(default_factory=list)

    @property
    def state_name(self) -> str:
        return STATES.get(self.state, f"{self.state:#x}?")

    @property
    def mode_name(self) -> str:
        return MODES.get(self.mode, f"{self.mode:#x}?")

    @property
    def local(self) -> str:
        return _endpoint(self.src, self.sport)

    @property
    def peer(self) -> str:
        return _endpoint(self.dst, self.dport)


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _address(raw: bytes) -> str:
    """An inet_diag address: IPv4 when words 1-3 are zero (as smcss decides), else IPv6."""
    if not any(raw[4:16]):
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
    return str(ipaddress.IPv6Address(raw))


_CONNINFO = struct.Struct("=IIII" + "2xHI" * 4 + "BBBB" + "2xHI" * 3)


def parse_conninfo(data: bytes) -> ConnInfo:
    if len(data) < CONNINFO_LEN:
        raise nl.FormatError(f"SMC_DIAG_CONNINFO of {len(data)} bytes, {CONNINFO_LEN} expected")
    v = _CONNINFO.unpack_from(data)
    return ConnInfo(v[0], v[1], v[2], v[3], Cursor(v[4], v[5]), Cursor(v[6], v[7]), Cursor(v[8], v[9]), Cursor(v[10], v[11]),
                    v[12], v[13], v[14], v[15], Cursor(v[16], v[17]), Cursor(v[18], v[19]), Cursor(v[20], v[21]))  # fmt: skip


@lru_cache(maxsize=256)  # the connections of one link send the same bytes
def parse_lgrinfo(data: bytes) -> LgrInfo:
    if len(data) < LGRINFO_LEN:
        raise nl.FormatError(f"SMC_DIAG_LGRINFO of {len(data)} bytes, {LGRINFO_LEN} expected")
    o = 1 + IB_DEVICE_NAME_MAX
    return LgrInfo(
        link_id=data[0],
        ibname=nl.string(data[1:o], "LGRINFO ibname"),
        ibport=data[o],
        gid=nl.string(data[o + 1 : o + 41], "LGRINFO gid"),
        peer_gid=nl.string(data[o + 41 : o + 81], "LGRINFO peer gid"),
        role=data[o + 81],
    )


def parse_dmbinfo(data: bytes) -> DmbInfo:
    if len(data) < 40:
        raise nl.FormatError(f"SMC_DIAG_DMBINFO of {len(data)} bytes, at least 40 expected")
    linkid = struct.unpack_from("=I", data, 0)[0]
    peer_gid, my_gid, token, peer_token = struct.unpack_from("=QQQQ", data, 8)
    return DmbInfo(linkid, peer_gid, my_gid, token, peer_token)


def parse_socket(body: bytes) -> DiagSocket:
    """One ``smc_diag_msg`` and its attributes."""
    if len(body) < MSG_LEN:
        raise nl.FormatError(f"smc_diag_msg of {len(body)} bytes, {MSG_LEN} expected")
    family, state, mode, shutdown = _MSG.unpack_from(body, 0)
    sport, dport = struct.unpack_from(">HH", body, 4)
    ifindex, ck0, ck1 = struct.unpack_from("=III", body, 40)
    uid = struct.unpack_from("=I", body, 52)[0]
    inode = struct.unpack_from("=Q", body, 56)[0]
    s = DiagSocket(family, state, mode, shutdown, sport, dport, _address(body[8:24]), _address(body[24:40]), ifindex,
                   ck0 | ck1 << 32, uid, inode)  # fmt: skip
    for t, v in nl.attrs(body[MSG_LEN:], "smc_diag attributes"):
        if t == SMC_DIAG_FALLBACK:
            if len(v) < 8:
                raise nl.FormatError(f"SMC_DIAG_FALLBACK of {len(v)} bytes, 8 expected")
            s.fallback_reason, s.peer_diagnosis = struct.unpack_from("=II", v)
        elif t == SMC_DIAG_SHUTDOWN:
            s.shutdown = nl.u8(v, "SMC_DIAG_SHUTDOWN")
        elif t == SMC_DIAG_CONNINFO:
            s.conninfo = parse_conninfo(v)
        elif t == SMC_DIAG_LGRINFO:
            s.lgrinfo = parse_lgrinfo(v)
        elif t == SMC_DIAG_DMBINFO:
            s.dmbinfo = parse_dmbinfo(v)
        else:
            s.unknown_attrs.append(t)
    return s


@dataclass
class DiagDump:
    sockets: list[DiagSocket]
    notes: list[str]


def parse_dump(stream: bytes) -> DiagDump:
    """A recorded sock_diag reply stream. A socket that does not parse is left out and named
    in ``notes``; a stream that ends in an error says so there too (never an exception,
    except FormatError for a stream that is not netlink at all)."""
    bodies, err, interrupted = nl.dump_bodies(stream)
    notes: list[str] = []
    out = []
    unknown: set[int] = set()
    for i, body in enumerate(bodies):
        try:
            s = parse_socket(body)
        except nl.FormatError as e:
            notes.append(f"smc_diag: socket {i} left out: {e}")
            continue
        unknown.update(s.unknown_attrs)
        out.append(s)
    if unknown:
        notes.append("smc_diag: attributes this version does not know were ignored: " + ", ".join(str(t) for t in sorted(unknown)))
    if err:
        notes.append(f"smc_diag: the dump ended with error {-err} ({os.strerror(-err)})")
    if interrupted:
        notes.append("smc_diag: the kernel flagged the dump as interrupted by a change (the next poll sees a consistent view)")
    return DiagDump(out, notes)
