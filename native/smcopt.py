"""Load the SMC TCP option program (native/smc_opt.bpf.c) and ask it about sockets.

    python -m native.smcopt load [--cgroup /sys/fs/cgroup]   # as root: load, pin, attach
    python -m native.smcopt status                          # loaded? counters
    python -m native.smcopt unload

``load`` pins the program and its maps under ``/sys/fs/bpf/smctop`` (mounting bpffs and
cgroup2 first when they are not mounted, as in a minimal VM) and attaches the program to
a cgroup v2 as ``sock_ops``; by default the root cgroup, which is harmless because the
program only touches sockets that opted in. The stack then uses :class:`OptionMap`:

    opt = OptionMap.open()        # BpfUnavailable with the reason when it cannot
    opt.want(sock)                # before connect() or listen()
    opt.result(sock)              # after connect() / accept(): did the peer's SYN(-ACK) carry it?

Everything goes through the bpf(2) system call (ctypes) and ``bpftool``; no libbpf
binding is needed in Python.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
OBJECT = HERE / "build" / "smc_opt.bpf.o"
PIN_DIR = Path("/sys/fs/bpf/smctop")
PROG_PIN = PIN_DIR / "prog"
MAP_PIN = PIN_DIR / "smc_opt_sk"
STATS_PIN = PIN_DIR / "smc_opt_stats"
CGROUP_ROOT = Path("/sys/fs/cgroup")

WANT, SENT, PEER, DONE = 1, 2, 4, 8  # the per-socket flags (smc_opt.bpf.c)
STAT_NAMES = ("options_written", "peers_with_option", "peers_without_option", "syns_unreadable")

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "s390x": 351, "ppc64le": 361}
BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_OBJ_GET = 1, 2, 7
BUILD_HINT = "native/build.sh builds it (scripts/setup.sh runs it; it needs clang and libbpf-dev)"
LOAD_HINT = "load it as root with 'python -m native.smcopt load'"


class BpfUnavailable(OSError):
    """The SMC TCP option cannot be used here; the message says why. The stack then keeps
    in-band signalling (or refuses, when the option was required)."""


@dataclass(frozen=True)
class OptionResult:
    done: bool  # the TCP handshake is over and the program saw it
    sent: bool  # our SYN / SYN-ACK carried the option
    peer: bool  # the peer's SYN / SYN-ACK carried it

    @classmethod
    def from_flags(cls, flags: int) -> "OptionResult":
        return cls(bool(flags & DONE), bool(flags & SENT), bool(flags & PEER))


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: bytes | bytearray) -> int:
    nr = _SYS_BPF.get(os.uname().machine)
    if nr is None:
        raise BpfUnavailable(f"no bpf(2) system call number known for {os.uname().machine}")
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(nr), ctypes.c_long(cmd), buf, ctypes.c_uint(len(attr)))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def _obj_get(path: Path) -> int:
    name = ctypes.create_string_buffer(str(path).encode())
    attr = ctypes.addressof(name).to_bytes(8, "little") + bytes(8)  # pathname, bpf_fd, file_flags
    return _bpf(BPF_OBJ_GET, attr + bytes(128 - len(attr)))


def _map_op(cmd: int, map_fd: int, key: ctypes.Array, value: ctypes.Array, flags: int = 0) -> None:
    attr = (map_fd.to_bytes(4, "little") + bytes(4) + ctypes.addressof(key).to_bytes(8, "little")
            + ctypes.addressof(value).to_bytes(8, "little") + flags.to_bytes(8, "little"))  # fmt: skip
    _bpf(cmd, attr + bytes(128 - len(attr)))


class OptionMap:
    """The pinned per-socket map of a loaded program."""

    def __init__(self, fd: int, stats_fd: int | None = None) -> None:
        self.fd = fd
        self.stats_fd = stats_fd

    @classmethod
    def open(cls) -> "OptionMap":
        """The loaded program's map, or BpfUnavailable saying why there is none."""
        if sys.platform != "linux":
            raise BpfUnavailable(f"BPF needs Linux, this is {sys.platform}")
        if not Path("/sys/fs/bpf").is_dir():
            raise BpfUnavailable("this kernel has no BPF file system (/sys/fs/bpf): CONFIG_BPF_SYSCALL is off")
        if not MAP_PIN.exists():
            if not OBJECT.exists():
                raise BpfUnavailable(f"the SMC option program is not built ({OBJECT} is missing): {BUILD_HINT}")
            raise BpfUnavailable(f"the SMC option program is not loaded ({MAP_PIN} does not exist): {LOAD_HINT}")
        try:
            fd = _obj_get(MAP_PIN)
        except OSError as e:
            why = "permission denied (needs root or CAP_BPF)" if e.errno in (errno.EPERM, errno.EACCES) else e.strerror
            raise BpfUnavailable(f"cannot open {MAP_PIN}: {why}") from None
        try:
            stats = _obj_get(STATS_PIN)
        except OSError:
            stats = None
        return cls(fd, stats)

    def close(self) -> None:
        for fd in (self.fd, self.stats_fd):
            if fd is not None:
                os.close(fd)
        self.fd = self.stats_fd = None  # type: ignore[assignment]

    def _get(self, sock: socket.socket | int) -> int:
        key = ctypes.create_string_buffer(_fileno(sock).to_bytes(4, "little"), 4)
        value = ctypes.create_string_buffer(4)
        try:
            _map_op(BPF_MAP_LOOKUP_ELEM, self.fd, key, value)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return 0
            raise
        return int.from_bytes(value.raw, "little")

    def want(self, sock: socket.socket | int) -> None:
        """Opt a TCP socket in: call before connect() or listen()."""
        key = ctypes.create_string_buffer(_fileno(sock).to_bytes(4, "little"), 4)
        value = ctypes.create_string_buffer(WANT.to_bytes(4, "little"), 4)
        _map_op(BPF_MAP_UPDATE_ELEM, self.fd, key, value)

    def result(self, sock: socket.socket | int) -> OptionResult:
        """What the program saw on this connected (or accepted) socket."""
        return OptionResult.from_flags(self._get(sock))

    def stats(self) -> dict[str, int]:
        if self.stats_fd is None:
            return {}
        out = {}
        for i, name in enumerate(STAT_NAMES):
            key = ctypes.create_string_buffer(i.to_bytes(4, "little"), 4)
            value = ctypes.create_string_buffer(8)
            _map_op(BPF_MAP_LOOKUP_ELEM, self.stats_fd, key, value)
            out[name] = int.from_bytes(value.raw, "little")
        return out

    def __enter__(self) -> "OptionMap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fileno(sock: socket.socket | int) -> int:
    return sock if isinstance(sock, int) else sock.fileno()


def _mounted(path: Path, fstype: str) -> bool:
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return False
    return any(parts[1] == str(path) and parts[2] == fstype for parts in (ln.split() for ln in lines) if len(parts) > 2)


def _run(argv: list[str]) -> None:
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise BpfUnavailable(f"{' '.join(argv)} failed: {(res.stderr or res.stdout).strip()[-800:]}")


def load(cgroup: Path = CGROUP_ROOT) -> str:
    """Load, pin and attach the program (idempotent); returns what it did. Needs root."""
    if os.geteuid() != 0:
        raise BpfUnavailable("loading a BPF program needs root")
    if not OBJECT.exists():
        raise BpfUnavailable(f"{OBJECT} is missing: {BUILD_HINT}")
    bpftool = shutil.which("bpftool") or next((p for p in ("/usr/sbin/bpftool", "/sbin/bpftool") if os.path.exists(p)), None)
    if bpftool is None:
        raise BpfUnavailable("bpftool is not installed (Debian package bpftool; scripts/setup.sh installs it)")
    if not _mounted(Path("/sys/fs/bpf"), "bpf"):
        _run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"])
    if not (cgroup / "cgroup.procs").exists():
        if cgroup == CGROUP_ROOT and not _mounted(CGROUP_ROOT, "cgroup2"):
            _run(["mount", "-t", "cgroup2", "none", str(CGROUP_ROOT)])
        else:
            raise BpfUnavailable(f"{cgroup} is not a cgroup v2 directory")
    did = []
    if not PROG_PIN.exists():
        PIN_DIR.mkdir(exist_ok=True)
        _run([bpftool, "prog", "load", str(OBJECT), str(PROG_PIN), "type", "sockops", "pinmaps", str(PIN_DIR)])
        did.append(f"loaded {OBJECT.name}, pinned under {PIN_DIR}")
    res = subprocess.run([bpftool, "cgroup", "show", str(cgroup)], capture_output=True, text=True)
    if "smc_opt" not in res.stdout:
        _run([bpftool, "cgroup", "attach", str(cgroup), "sock_ops", "pinned", str(PROG_PIN), "multi"])
        did.append(f"attached to {cgroup} as sock_ops")
    return "; ".join(did) or "already loaded and attached"


def unload(cgroup: Path = CGROUP_ROOT) -> None:
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    if PROG_PIN.exists():
        subprocess.run([bpftool, "cgroup", "detach", str(cgroup), "sock_ops", "pinned", str(PROG_PIN)], capture_output=True)
    shutil.rmtree(PIN_DIR, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m native.smcopt", description="the SMC TCP option BPF program")
    ap.add_argument("command", choices=("load", "unload", "status"))
    ap.add_argument("--cgroup", type=Path, default=CGROUP_ROOT, help="cgroup v2 to attach to (default: the root)")
    args = ap.parse_args(argv)
    try:
        if args.command == "load":
            print(load(args.cgroup))
        elif args.command == "unload":
            unload(args.cgroup)
            print("unloaded")
        else:
            with OptionMap.open() as m:
                print("loaded;", ", ".join(f"{k} {v}" for k, v in m.stats().items()))
    except BpfUnavailable as e:
        print(f"smcopt: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
