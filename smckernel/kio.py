"""The netlink I/O: sockets for sock_diag and generic netlink, in this network namespace
or a named one. The bytes they return are parsed by the pure modules (``diag``, ``genl``).

A network namespace is joined by a short-lived thread (``setns`` affects only the calling
thread, and a socket keeps the namespace it was made in), so the process never leaves
its own. Joining one needs CAP_SYS_ADMIN; reading the kernel's SMC state in one's own
namespace needs no privilege at all (sock_diag and the SMC_GEN_NETLINK dumps are open to
every user).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading
from typing import Callable, TypeVar

from . import netlink as nl

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"
T = TypeVar("T")
_libc = None


class KernelUnavailable(OSError):
    """The kernel does not offer what was asked (module not loaded, too old, no privilege);
    the message is one line an operator can act on."""


def netns_path(name: str) -> str:
    """``ip netns`` names live in /var/run/netns; a path (/proc/PID/ns/net) is taken as is."""
    return name if "/" in name else f"{NETNS_DIR}/{name}"


ALL = "all"  # --netns all: every namespace in NETNS_DIR and this process's own


def list_netns(directory: str = NETNS_DIR) -> list[str]:
    """The ``ip netns`` names (files in /var/run/netns), sorted; none when the folder is missing."""
    try:
        return sorted(n for n in os.listdir(directory) if not n.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise KernelUnavailable(e.errno or errno.EACCES, f"cannot list the network namespaces in {directory}: {e.strerror}") from None


def netns_label(name: str | None) -> str | None:
    """How a namespace is named in a host name: its ``ip netns`` name, ``pid123`` for
    /proc/123/ns/net (or /proc/123/task/...), the last part of any other path."""
    if name is None:
        return None
    if "/" not in name:
        return name
    parts = [p for p in name.split("/") if p]
    if len(parts) >= 2 and parts[0] == "proc" and parts[1].isdigit():
        return f"pid{parts[1]}"
    return parts[-1] if parts else name


def resolve_netns(specs: list[str] | str | None, directory: str = NETNS_DIR, self_ns: str = "/proc/self/ns/net") -> list[str | None]:
    """The namespaces ``--netns`` values name, in order, each once: None is this process's
    own (what no ``--netns`` reads), ``all`` is this one and every one in /var/run/netns. A
    name that is not there is a KernelUnavailable that names it (and what is there). The
    same namespace given twice (by name and by path, or ``all`` from inside a named one) is
    read once."""
    if specs is None or specs == []:
        return [None]
    if isinstance(specs, str):
        specs = [specs]
    wanted: list[str | None] = []
    for spec in specs:
        if spec == ALL:
            wanted += [None, *(os.path.join(directory, n) if directory != NETNS_DIR else n for n in list_netns(directory))]
        elif not spec or "\0" in spec or spec in (".", ".."):
            raise KernelUnavailable(errno.EINVAL, f"{spec!r} is not a network namespace name (an ip netns name, a path, or 'all')")
        else:
            wanted.append(spec)
    out: list[str | None] = []
    seen: set[tuple[int, int]] = set()
    for name in wanted:
        path = self_ns if name is None else netns_path(name)
        try:
            st = os.stat(path)
        except OSError as e:
            known = list_netns(directory)
            hint = f" (ip netns names here: {', '.join(known)})" if known else " (there are no ip netns names here)"
            raise KernelUnavailable(e.errno or errno.ENOENT, f"network namespace {name!r} not found ({path}: {e.strerror}){hint}") from None
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        out.append(name)
    return out


def in_netns(name: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` run in network namespace ``name`` (None: this one), in a thread of its own."""
    if name is None:
        return fn()
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    path = netns_path(name)
    result: dict = {}

    def worker() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            result["error"] = KernelUnavailable(e.errno or errno.ENOENT, f"network namespace {name!r} not found ({path}: {e.strerror})")
            return
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                hint = " (joining a network namespace needs CAP_SYS_ADMIN: run as root)" if err == errno.EPERM else ""
                result["error"] = KernelUnavailable(err, f"cannot join network namespace {name!r}: {os.strerror(err)}{hint}")
                return
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = e
        finally:
            os.close(fd)

    # a daemon: a worker that never returned would otherwise hold the process at its exit
    t = threading.Thread(target=worker, name=f"smckernel netns {name}", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


class Channel:
    """One netlink socket (sock_diag or generic netlink) with request/dump helpers that
    return the raw reply stream (what fixtures record)."""

    def __init__(self, proto: int, netns: str | None = None, timeout: float = 5.0) -> None:
        self.proto = proto
        self.netns = netns

        def make() -> socket.socket:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)
            s.bind((0, 0))
            return s

        try:
            self.sock = in_netns(netns, make)
        except KernelUnavailable:
            raise
        except OSError as e:
            raise KernelUnavailable(e.errno or 0, f"cannot open a netlink socket (protocol {proto}): {e.strerror or e}") from None
        self.sock.settimeout(timeout)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        except OSError:
            pass
        self._seq = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Channel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def exchange(self, mtype: int, flags: int, body: bytes) -> bytes:
        """Send one request; return every reply message of its sequence number, up to and
        including the NLMSG_DONE or NLMSG_ERROR that ends it, as one byte stream."""
        with self._lock:
            self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
            seq = self._seq
            self.sock.send(nl.message(mtype, flags, seq, body))
            out = bytearray()
            while True:
                try:
                    data = self.sock.recv(1 << 20)
                except socket.timeout:
                    raise KernelUnavailable(errno.ETIMEDOUT, "the kernel did not answer a netlink request within "
                                                             f"{self.sock.gettimeout():g} s") from None  # fmt: skip
                done = False
                for m in nl.messages(data):
                    if m.seq != seq:
                        continue  # a stale answer to an earlier request
                    out += nl.message(m.type, m.flags, m.seq, m.body, m.pid)
                    if m.type in (nl.NLMSG_DONE, nl.NLMSG_ERROR) or not (flags & nl.NLM_F_DUMP) and not (m.flags & nl.NLM_F_MULTI):
                        done = True
                        break
                if done:
                    return bytes(out)


class Genl:
    """The SMC_GEN_NETLINK family on a generic netlink channel: resolved once, with the
    commands this kernel supports."""

    NAME = "SMC_GEN_NETLINK"

    def __init__(self, netns: str | None = None) -> None:
        self.channel = Channel(nl.NETLINK_GENERIC, netns)
        reply = self.channel.exchange(nl.GENL_ID_CTRL, nl.NLM_F_REQUEST, nl.getfamily_body(self.NAME))
        bodies, err, _ = nl.dump_bodies(reply)
        if err == -errno.ENOENT or (err and not bodies):
            self.channel.close()
            raise KernelUnavailable(-err, f"the {self.NAME} generic netlink family is not registered: the smc module is not "
                                          "loaded (modprobe smc, as root) or the kernel is older than 5.11")  # fmt: skip
        if not bodies:
            self.channel.close()
            raise KernelUnavailable(errno.EPROTO, f"the generic netlink controller did not describe {self.NAME}")
        self.family = nl.parse_family(bodies[0])
        self.family_reply = reply

    def dump(self, cmd: int) -> bytes:
        """The raw reply stream of one dump command."""
        return self.channel.exchange(self.family.id, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, nl.genl_header(cmd))

    def do(self, cmd: int, body: bytes = b"") -> bytes:
        return self.channel.exchange(self.family.id, nl.NLM_F_REQUEST | nl.NLM_F_ACK, nl.genl_header(cmd) + body)

    def close(self) -> None:
        self.channel.close()


AF_SMC = 43
SOCK_DIAG_BY_FAMILY = 20
DIAG_EXT_ALL = 0x0F  # CONNINFO, LGRINFO, SHUTDOWN and DMBINFO (1 << (ext - 1) each)


def diag_request(ext: int = DIAG_EXT_ALL) -> bytes:
    """struct smc_diag_req: family, two pad bytes, the extensions wanted, an empty socket id."""
    return struct.pack("=BBBB", AF_SMC, 0, 0, ext) + bytes(48)


class Diag:
    """sock_diag for AF_SMC on its own channel."""

    def __init__(self, netns: str | None = None) -> None:
        self.channel = Channel(nl.NETLINK_SOCK_DIAG, netns)

    def dump(self, ext: int = DIAG_EXT_ALL) -> bytes:
        return self.channel.exchange(SOCK_DIAG_BY_FAMILY, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, diag_request(ext))

    def close(self) -> None:
        self.channel.close()


# ---------------------------------------------------------------------------- raw dumps on disk (fixtures, bug reports)


def save_raw(raw, directory: str) -> None:
    """Write a RawDumps as files: diag.bin, family.bin, genl<cmd>.bin, ifnames.json, errors.txt."""
    import json

    os.makedirs(directory, exist_ok=True)
    if raw.diag is not None:
        with open(os.path.join(directory, "diag.bin"), "wb") as f:
            f.write(raw.diag)
    if raw.family is not None:
        with open(os.path.join(directory, "family.bin"), "wb") as f:
            f.write(raw.family)
    for cmd, data in sorted(raw.genl.items()):
        with open(os.path.join(directory, f"genl{cmd}.bin"), "wb") as f:
            f.write(data)
    with open(os.path.join(directory, "ifnames.json"), "w") as f:
        json.dump({str(k): v for k, v in sorted(raw.ifnames.items())}, f)
    if raw.net_cookie is not None:
        with open(os.path.join(directory, "net_cookie"), "w") as f:
            f.write(f"{raw.net_cookie}\n")
    if raw.errors:
        with open(os.path.join(directory, "errors.txt"), "w") as f:
            f.write("\n".join(raw.errors) + "\n")


def load_raw(directory: str):
    """The RawDumps that save_raw wrote (missing files are missing dumps)."""
    import json

    from .model import RawDumps

    raw = RawDumps()
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name == "diag.bin":
            raw.diag = open(path, "rb").read()
        elif name == "family.bin":
            raw.family = open(path, "rb").read()
        elif name.startswith("genl") and name.endswith(".bin") and name[4:-4].isdigit():
            raw.genl[int(name[4:-4])] = open(path, "rb").read()
        elif name == "ifnames.json":
            raw.ifnames = {int(k): v for k, v in json.load(open(path)).items()}
        elif name == "net_cookie":
            raw.net_cookie = int(open(path).read().strip())
        elif name == "errors.txt":
            raw.errors = [line for line in open(path).read().splitlines() if line]
    return raw
