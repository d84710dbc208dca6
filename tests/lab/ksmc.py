"""The kernel's SMC from Python, for the lab's interop tests (stdlib and ctypes only).

* :func:`ueid_add` / :func:`ueid_flush`: the SMC generic netlink family, as smc-tools'
  ``smcr ueid add`` (SMC-Rv2 needs at least one UEID; not packaged in Debian 12).
* :func:`ss`: AF_SMC sockets through sock_diag / smc_diag, as ``smcss``: state, mode
  (SMCR, SMCD or TCP) and, in fallback, the reason and the peer's diagnosis.
* :func:`smc_socket`, :func:`connect`, :func:`listen`, :func:`accept`: AF_SMC sockets.
  Python's socket module cannot bind, connect or accept family 43 with an address, so
  these go through libc and hand back ordinary ``socket.socket`` objects for the I/O.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import time

AF_SMC = 43
SMCPROTO_SMC = 0
NETLINK_GENERIC, NETLINK_SOCK_DIAG = 16, 4  # Python 3.11 has no socket.NETLINK_GENERIC
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 1, 4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
SOCK_DIAG_BY_FAMILY = 20
SMC_DIAG_LGRINFO, SMC_DIAG_FALLBACK = 2, 5
SMC_NETLINK_ADD_UEID, SMC_NETLINK_FLUSH_UEID = 10, 11
MODES = {0: "SMCR", 1: "TCP", 2: "SMCD"}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def _sockaddr(ip: str, port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(ip) + bytes(8)


def smc_socket() -> int:
    """A new AF_SMC stream socket's fd (EAFNOSUPPORT: modprobe smc)."""
    return _check(_libc.socket(AF_SMC, socket.SOCK_STREAM, SMCPROTO_SMC), "socket(AF_SMC)")


def listen(ip: str, port: int, backlog: int = 16) -> socket.socket:
    fd = smc_socket()
    one = ctypes.c_int(1)
    _libc.setsockopt(fd, socket.SOL_SOCKET, socket.SO_REUSEADDR, ctypes.byref(one), 4)
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
        fd = smc_socket()
        if _libc.connect(fd, addr, len(addr)) == 0:
            return socket.socket(fileno=fd)
        err = ctypes.get_errno()
        os.close(fd)
        if err not in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH) or time.monotonic() > deadline:
            raise OSError(err, f"connect(AF_SMC) {ip}:{port}: {os.strerror(err)}")
        time.sleep(0.1)


# ---------------------------------------------------------------- netlink


def _attr(t: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return struct.pack("=HH", n, t) + data + bytes(-n % 4)


def _attrs(buf: bytes):
    o = 0
    while o + 4 <= len(buf):
        n, t = struct.unpack_from("=HH", buf, o)
        if n < 4:
            break
        yield t & 0x3FFF, buf[o + 4 : o + n]
        o += (n + 3) & ~3


def _talk(proto: int, mtype: int, flags: int, payload: bytes) -> list[tuple[int, bytes]]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto) as s:
        s.bind((0, 0))
        s.send(struct.pack("=IHHII", 16 + len(payload), mtype, flags, 1, 0) + payload)
        out = []
        while True:
            data = s.recv(1 << 16)
            o = 0
            while o < len(data):
                n, t, _f, _seq, _pid = struct.unpack_from("=IHHII", data, o)
                body = data[o + 16 : o + n]
                o += (n + 3) & ~3
                if t == NLMSG_DONE:
                    return out
                if t == NLMSG_ERROR:
                    err = struct.unpack_from("=i", body)[0]
                    if err:
                        raise OSError(-err, os.strerror(-err))
                    return out
                out.append((t, body))
                if not flags & NLM_F_DUMP:
                    return out


def _genl_family(name: str) -> int:
    msgs = _talk(NETLINK_GENERIC, 0x10, NLM_F_REQUEST, struct.pack("=BBH", 3, 1, 0) + _attr(2, name.encode() + b"\0"))
    return next(struct.unpack("=H", v[:2])[0] for t, v in _attrs(msgs[0][1][4:]) if t == 1)


def ueid(name: str) -> bytes:
    """A UEID as the kernel stores it: upper case, blank-padded to 32 bytes."""
    return name.upper().ljust(32).encode("ascii")


def ueid_add(name: str) -> None:
    fam = _genl_family("SMC_GEN_NETLINK")
    _talk(NETLINK_GENERIC, fam, NLM_F_REQUEST | NLM_F_ACK, struct.pack("=BBH", SMC_NETLINK_ADD_UEID, 1, 0) + _attr(1, ueid(name) + b"\0"))


def ueid_flush() -> None:
    fam = _genl_family("SMC_GEN_NETLINK")
    _talk(NETLINK_GENERIC, fam, NLM_F_REQUEST | NLM_F_ACK, struct.pack("=BBH", SMC_NETLINK_FLUSH_UEID, 1, 0))


def ss() -> list[dict]:
    """Every AF_SMC socket of this network namespace, as smcss shows it."""
    ext = (1 << (SMC_DIAG_FALLBACK - 1)) | (1 << (SMC_DIAG_LGRINFO - 1))
    req = struct.pack("=BBBB", AF_SMC, 0, 0, ext) + bytes(48)
    out = []
    for _t, body in _talk(NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, req):
        _fam, state, mode, _shut = struct.unpack_from("=BBBB", body)
        sport, dport = struct.unpack_from(">HH", body, 4)
        attrs = dict(_attrs(body[64:]))
        fb = attrs.get(SMC_DIAG_FALLBACK)
        reason, peer_diag = struct.unpack("=II", fb[:8]) if fb else (0, 0)
        out.append({
            "state": state, "local": f"{socket.inet_ntoa(body[8:12])}:{sport}",
            "peer": f"{socket.inet_ntoa(body[24:28])}:{dport}", "mode": MODES.get(mode, str(mode)),
            "fallback_reason": reason if mode == 1 else 0, "peer_diagnosis": peer_diag if mode == 1 else 0,
            "lgr": SMC_DIAG_LGRINFO in attrs,
        })  # fmt: skip
    return out


def names(sock: socket.socket) -> tuple[str, str]:
    """("ip:port", "ip:port") of a connected AF_SMC socket (Python's getsockname cannot)."""
    out = []
    for call in (_libc.getsockname, _libc.getpeername):
        buf = ctypes.create_string_buffer(16)
        n = ctypes.c_uint(16)
        _check(call(sock.fileno(), buf, ctypes.byref(n)), call.__name__)
        out.append("%s:%d" % (socket.inet_ntoa(buf.raw[4:8]), struct.unpack(">H", buf.raw[2:4])[0]))
    return out[0], out[1]


def mode_of(sock: socket.socket) -> dict | None:
    """smc_diag's line for this connected AF_SMC socket (matched by its TCP ports)."""
    local, peer = names(sock)
    return next((r for r in ss() if r["local"] == local and r["peer"] == peer), None)
