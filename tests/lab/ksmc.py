"""The kernel's SMC from Python, for the lab's interop tests (the netlink through smckernel,
the sockets through ctypes).

* :func:`ueid_add` / :func:`ueid_remove` / :func:`ueid_list` / :func:`ueid_flush`: the SMC
  generic netlink family, as smc-tools' ``smcr ueid add/del/show/flush`` (SMC-Rv2 needs at
  least one UEID; smc-tools is not packaged in Debian 12).
* :func:`pnet_add` / :func:`pnet_del` / :func:`pnet_flush` / :func:`pnet_show`: the PNET
  table through the ``SMC_PNETID`` generic netlink family, as smc-tools' ``smc_pnet
  -a/-d/-f/-s`` (a PNET ID groups Ethernet interfaces with RoCE devices).
* :func:`ss`: AF_SMC sockets through sock_diag / smc_diag, as ``smcss``: state, mode
  (SMCR, SMCD or TCP) and, in fallback, the reason and the peer's diagnosis.
* :func:`smc_socket`, :func:`connect`, :func:`listen`, :func:`accept`: AF_SMC sockets.
  Python's socket module cannot bind, connect or accept family 43 with an address, so
  these go through libc and hand back ordinary ``socket.socket`` objects for the I/O.
* :func:`recv_exactly`, :func:`recv_line`, :func:`sendall`: blocking I/O on them, in
  64 KiB steps (an AF_SMC socket in SMC mode or in fallback takes plain send and recv).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project: smckernel speaks the netlink

from smckernel import diag as kdiag  # noqa: E402
from smckernel import genl as kgenl  # noqa: E402
from smckernel import kio  # noqa: E402
from smckernel import netlink as nl  # noqa: E402

AF_SMC = 43
SMCPROTO_SMC = 0
SMC_DIAG_CONNINFO, SMC_DIAG_LGRINFO, SMC_DIAG_FALLBACK = 1, 2, 5
MODES = {0: "SMCR", 1: "TCP", 2: "SMCD"}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def _sockaddr(ip: str, port: int) -> bytes:
    """struct sockaddr_in, or sockaddr_in6 for an IPv6 address."""
    if ":" in ip:
        return struct.pack("=H", socket.AF_INET6) + struct.pack(">HI", port, 0) + socket.inet_pton(socket.AF_INET6, ip) + bytes(4)
    return struct.pack("=H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(ip) + bytes(8)


SMCPROTO_SMC6 = 1  # an AF_SMC socket whose TCP side is IPv6


def smc_socket(family: int = socket.AF_INET) -> int:
    """A new AF_SMC stream socket's fd (EAFNOSUPPORT: modprobe smc); SMCPROTO_SMC6 for IPv6."""
    proto = SMCPROTO_SMC6 if family == socket.AF_INET6 else SMCPROTO_SMC
    return _check(_libc.socket(AF_SMC, socket.SOCK_STREAM, proto), "socket(AF_SMC)")


def listen(ip: str, port: int, backlog: int = 16) -> socket.socket:
    fd = smc_socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    one = ctypes.c_int(1)
    _libc.setsockopt(fd, socket.SOL_SOCKET, socket.SO_REUSEADDR, ctypes.byref(one), 4)
    if ":" in ip:  # IPv6 only: an IPv4 listener may share the port
        _libc.setsockopt(fd, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, ctypes.byref(one), 4)
    addr = _sockaddr(ip, port)
    _check(_libc.bind(fd, addr, len(addr)), f"bind {ip}:{port}")
    _check(_libc.listen(fd, backlog), "listen")
    return socket.socket(fileno=fd)


def accept(listener: socket.socket, timeout: float = 60.0) -> socket.socket:
    listener.settimeout(timeout)
    # wait for readability with Python (ctypes accept() would hold the GIL while blocked)
    import select

    r, _, _ = select.select([listener], [], [], timeout)
    if not r:
        raise TimeoutError(f"no connection within {timeout:g} s")
    fd = _check(_libc.accept(listener.fileno(), None, None), "accept")
    s = socket.socket(fileno=fd)
    s.setblocking(True)
    return s


def connect(ip: str, port: int, timeout: float = 60.0) -> socket.socket:
    """Connect an AF_SMC socket, retrying while the server is not listening yet."""
    deadline = time.monotonic() + timeout
    addr = _sockaddr(ip, port)
    while True:
        fd = smc_socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
        if _libc.connect(fd, addr, len(addr)) == 0:
            return socket.socket(fileno=fd)
        err = ctypes.get_errno()
        os.close(fd)
        if err not in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH) or time.monotonic() > deadline:
            raise OSError(err, f"connect(AF_SMC) {ip}:{port}: {os.strerror(err)}")
        time.sleep(0.1)


# ---------------------------------------------------------------- netlink (smckernel's)


def ueid(name: str) -> bytes:
    """A UEID as the kernel stores it: upper case, blank-padded to 32 bytes."""
    return name.upper().ljust(32).encode("ascii")


def _genl_do(cmd: int, body: bytes = b"") -> None:
    g = kio.Genl()
    try:
        _, err, _ = nl.dump_bodies(g.do(cmd, body))
    finally:
        g.close()
    if err:
        raise OSError(-err, os.strerror(-err))


def ueid_add(name: str) -> None:
    _genl_do(kgenl.ADD_UEID, nl.attr(1, ueid(name) + b"\0"))


def ueid_remove(name: str) -> None:
    """``smcr ueid del``: ENOENT when the kernel has no such UEID."""
    _genl_do(kgenl.REMOVE_UEID, nl.attr(1, ueid(name) + b"\0"))


def ueid_list() -> list[str]:
    """The UEIDs the kernel has (blank padding stripped)."""
    g = kio.Genl()
    try:
        parsed = kgenl.parse(g.dump(kgenl.DUMP_UEID), kgenl.DUMP_UEID)
    finally:
        g.close()
    return [r["ueid"].strip() for r in parsed.records if "ueid" in r]


def ueid_flush() -> None:
    """``smcr ueid flush`` (command 12, SMC_NETLINK_FLUSH_UEID)."""
    _genl_do(kgenl.FLUSH_UEID)


# ---------------------------------------------------------------- the PNET table (SMC_PNETID)
# include/uapi/linux/smc.h; net/smc/smc_pnet.c: ADD, DEL and FLUSH need CAP_NET_ADMIN, GET
# (a dump, or one ID with NAME) is open to every user.
PNETID_GET, PNETID_ADD, PNETID_DEL, PNETID_FLUSH = 1, 2, 3, 4
PNETID_NAME, PNETID_ETHNAME, PNETID_IBNAME, PNETID_IBPORT = 1, 2, 3, 4


class _PnetFamily(kio.Genl):
    NAME = "SMC_PNETID"


def _pnet_family() -> kio.Genl:
    try:
        return _PnetFamily()
    except kio.KernelUnavailable as e:
        raise kio.KernelUnavailable(e.errno, "the SMC_PNETID generic netlink family is not registered: the smc module is not loaded "
                                             "(modprobe smc, as root)") from None  # fmt: skip


def _pnet_do(cmd: int, body: bytes, what: str) -> None:
    g = _pnet_family()
    try:
        _, err, _ = nl.dump_bodies(g.do(cmd, body))
    finally:
        g.close()
    if err:
        hint = {errno.EEXIST: " (the interface or the RoCE device already has a PNET ID: pnet_flush() first)",
                errno.EINVAL: " (a PNET ID is 1 to 16 letters and digits; an IB port is 1 or 2)",
                errno.EPERM: " (changing the PNET table needs CAP_NET_ADMIN: run as root)",
                errno.ENOENT: " (no such PNET ID in the table)"}.get(-err, "")  # fmt: skip
        raise OSError(-err, f"{what}: {os.strerror(-err)} (errno {-err}){hint}")


def pnet_add(pnetid: str, eth: str | None = None, ib: str | None = None, ibport: int = 1) -> None:
    """``smc_pnet -a PNETID -I eth -D ib -P port``: put an Ethernet interface and/or a RoCE
    device's port under PNET ID ``pnetid`` (the kernel upper-cases it). Names the kernel
    does not know (yet) are kept and applied when the device appears, as the kernel does."""
    if not eth and not ib:
        raise ValueError("pnet_add needs an Ethernet interface (eth=) or a RoCE device (ib=), or both")
    body = nl.attr(PNETID_NAME, pnetid.encode() + b"\0")
    if eth:
        body += nl.attr(PNETID_ETHNAME, eth.encode() + b"\0")
    if ib:
        body += nl.attr(PNETID_IBNAME, ib.encode() + b"\0") + nl.attr(PNETID_IBPORT, bytes([ibport & 0xFF]))
    what = f"PNET ID {pnetid}: add" + (f" interface {eth}" if eth else "") + (f" RoCE device {ib} port {ibport}" if ib else "")
    _pnet_do(PNETID_ADD, body, what)


def pnet_del(pnetid: str) -> None:
    """``smc_pnet -d PNETID``: every entry of that PNET ID (ENOENT when there is none)."""
    _pnet_do(PNETID_DEL, nl.attr(PNETID_NAME, pnetid.encode() + b"\0"), f"PNET ID {pnetid}: delete")


def pnet_flush() -> None:
    """``smc_pnet -f``: the whole table (and the IDs it applied to RoCE devices)."""
    _pnet_do(PNETID_FLUSH, b"", "PNET table: flush")


def parse_pnet(stream: bytes) -> list[dict]:
    """A SMC_PNETID GET dump as entries {pnetid, eth, ib, ibport}; the kernel writes "n/a"
    for the side an entry does not have (and port 255): None here."""
    bodies, err, _ = nl.dump_bodies(stream)
    if err:
        raise OSError(-err, f"PNET table: dump: {os.strerror(-err)} (errno {-err})")
    out = []
    for body in bodies:
        _cmd, _ver, rest = nl.genl_body(body)
        a = dict(nl.attrs(rest, "SMC_PNETID"))
        text = lambda t: nl.string(a[t], "pnet") if t in a else None  # noqa: E731
        eth, ib = text(PNETID_ETHNAME), text(PNETID_IBNAME)
        port = nl.u8(a[PNETID_IBPORT], "ibport") if PNETID_IBPORT in a else None
        out.append({"pnetid": text(PNETID_NAME), "eth": None if eth == "n/a" else eth, "ib": None if ib == "n/a" else ib,
                    "ibport": None if ib in (None, "n/a") or port == 0xFF else port})  # fmt: skip
    return out


def pnet_show() -> list[dict]:
    """``smc_pnet -s``: the PNET table of this network namespace, one entry per interface or device."""
    g = _pnet_family()
    try:
        stream = g.dump(PNETID_GET)
    finally:
        g.close()
    return parse_pnet(stream)


def ss() -> list[dict]:
    """Every AF_SMC socket of this network namespace, as smcss shows it."""
    d = kio.Diag()
    try:
        dump = kdiag.parse_dump(d.dump((1 << (SMC_DIAG_FALLBACK - 1)) | (1 << (SMC_DIAG_LGRINFO - 1)) | (1 << (SMC_DIAG_CONNINFO - 1))))
    finally:
        d.close()
    out = []
    for s in dump.sockets:
        tcp = s.mode == 1
        out.append({
            "state": s.state, "local": s.local, "peer": s.peer, "mode": MODES.get(s.mode, str(s.mode)),
            "fallback_reason": (s.fallback_reason or 0) if tcp else 0, "peer_diagnosis": (s.peer_diagnosis or 0) if tcp else 0,
            "lgr": s.lgrinfo is not None,
            # the buffers' sizes (smcss -d), once the connection has them
            **({"sndbuf_size": s.conninfo.sndbuf_size, "rmbe_size": s.conninfo.rmbe_size, "peer_rmbe_size": s.conninfo.peer_rmbe_size}
               if s.conninfo is not None else {}),
        })  # fmt: skip
    return out


def names(sock: socket.socket) -> tuple[str, str]:
    """("ip:port", "ip:port") of a connected AF_SMC socket, IPv6 as "[ip]:port" as smc_diag's
    are written (Python's getsockname cannot read family 43)."""
    out = []
    for call in (_libc.getsockname, _libc.getpeername):
        buf = ctypes.create_string_buffer(28)
        n = ctypes.c_uint(28)
        _check(call(sock.fileno(), buf, ctypes.byref(n)), call.__name__)
        (family,) = struct.unpack_from("=H", buf.raw, 0)
        port = struct.unpack(">H", buf.raw[2:4])[0]
        if family == socket.AF_INET6:
            out.append("[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, buf.raw[8:24]), port))
        else:
            out.append("%s:%d" % (socket.inet_ntoa(buf.raw[4:8]), port))
    return out[0], out[1]


def mode_of(sock: socket.socket) -> dict | None:
    """smc_diag's line for this connected AF_SMC socket (matched by its TCP ports)."""
    local, peer = names(sock)
    return next((r for r in ss() if r["local"] == local and r["peer"] == peer), None)


# ------------------------------------------------------------------ blocking I/O


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(1 << 16, n - len(buf)))
        if not chunk:
            raise EOFError(f"end of file after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_line(s: socket.socket, what: str = "line") -> str:
    """One newline-ended text line, read a byte at a time (nothing after it is consumed)."""
    buf = bytearray()
    while not buf.endswith(b"\n"):
        c = s.recv(1)
        if not c:
            raise EOFError(f"end of file in the {what}")
        buf += c
    return buf.decode().strip()


def sendall(s: socket.socket, data: bytes, flags: int = 0) -> None:
    view = memoryview(data)
    while view:
        view = view[s.send(view[: 1 << 16], flags) :]
