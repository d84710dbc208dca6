"""Boot kernel-lab VMs (qemu, TCG) and run shell commands inside them.

Each VM boots the kernel that ``tests/lab/setup.sh`` unpacked, sees the host's ``/``
read-only under a tmpfs overlay (so the project and ``.venv`` are at their host paths),
gets ``eth0`` 10.2.0.N/24 and, unless ``rdma=False``, Soft-RoCE ``rxe0`` on it plus the
``smc`` modules. Two VMs are joined by a ``-netdev socket`` wire: one TCP connection on
127.0.0.1 that this module opens on a kernel-chosen port and hands to both qemus, so
parallel runs never collide and neither qemu has to wait for the other to listen.

Every run gets a directory under ``tests/lab/build/runs/`` holding per VM the console log
and a writable share, mounted in the guest at the same path (``$LAB_SHARE``), through
which the guest hands back its exit code, output and any result files.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence
from xml.etree import ElementTree

LAB_DIR = Path(__file__).resolve().parent
PROJECT = LAB_DIR.parent.parent
BUILD = LAB_DIR / "build"
RUNS = BUILD / "runs"
PYTHON = PROJECT / ".venv" / "bin" / "python"
QEMU = "qemu-system-x86_64"
GUEST_ENV = "SMCTOP_LAB_GUEST"  # set inside every lab VM
SUBNET = "10.2.0"
SUBNET2 = "10.2.1"  # the second wire, when a boot asks for two NICs
SUBNET6 = "fd00:2"  # eth0's IPv6 prefix (/64)
BOOT_BUDGET = 60.0  # seconds from qemu start to the guest command, generous for TCG under load
KEEP_RUNS = 30
SETUP_HINT = "run scripts/setup.sh (as root) to set up the kernel lab"


class LabError(AssertionError):
    """The lab could not run, or a guest command failed; the message says which and why."""


@dataclass
class GuestResult:
    """What one VM did: the guest command's exit code and output, and where its logs are."""

    name: str
    rc: int | None  # None: the command never finished (setup failed, VM killed)
    output: str  # the guest command's stdout and stderr
    console: str  # the whole serial console (kernel messages included)
    share: Path
    log: Path
    wall: float  # seconds from qemu start to qemu exit
    timeout: float
    killed: bool = False  # the hard limit fired
    marks: dict[str, float] = field(default_factory=dict)  # guest uptime at each phase

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.killed

    def failure(self) -> str | None:
        """Why the run failed, in one line (None when it passed)."""
        setup = self.share / "setup-failed"
        if self.killed:
            return (
                f"VM {self.name} was killed after {self.wall:.0f} s: it did not power off "
                f"(kernel hang or guest stuck; the guest command's limit was {self.timeout:.0f} s)"
            )
        if setup.exists():
            return f"VM {self.name}: guest setup failed: {setup.read_text().strip()}"
        if self.rc is None:
            if "LAB_INIT_FAILED" in self.console or "BOOTED" not in self.marks:
                return f"VM {self.name} did not boot to the guest command (see {self.log})"
            panic = self.kernel_panic()
            if panic:
                return f"VM {self.name}'s kernel panicked before the guest command finished: {panic} (see {self.log})"
            return f"VM {self.name} stopped before the guest command finished (see {self.log})"
        if self.rc == 124:
            return f"VM {self.name}: guest command timed out after {self.timeout:.0f} s"
        if self.rc == 137:
            return f"VM {self.name}: guest command was killed (SIGKILL: it ignored the timeout's SIGTERM, or OOM)"
        if self.rc != 0:
            fault = self.kernel_fault()
            return f"VM {self.name}: guest command exited with {self.rc}" + (f" after the guest kernel faulted: {fault}" if fault else "")
        return None

    def kernel_fault(self) -> str | None:
        """The guest kernel's own words when it faulted in kernel code (a register dump of
        a kernel-mode exception) and the guest command then failed or never finished, else
        None: what the command saw after that is not the software under test's doing."""
        if self.rc == 0 or "RIP: 0010:" not in self.console:
            return None
        lines = [ln.split("] ", 1)[-1].strip() for ln in self.console.splitlines()]
        first = next((ln for ln in lines if ln.startswith(("Oops:", "BUG:", "general protection", "Kernel panic"))), None)
        first = first or next(ln for ln in lines if ln.startswith("RIP: 0010:"))
        where = next((ln for ln in lines if ln.startswith(("Workqueue:", "Comm:")) or "[rdma_rxe]" in ln), "")
        return f"{first}{'; ' + where if where else ''}"

    def kernel_panic(self) -> str | None:
        """The guest kernel's own words when it died under the guest command (its first Oops
        line and the workqueue or task it was in), else None."""
        if self.rc is not None or "Kernel panic" not in self.console:
            return None
        lines = [ln.split("] ", 1)[-1].strip() for ln in self.console.splitlines()]
        first = next((ln for ln in lines if ln.startswith(("Oops:", "BUG:", "general protection", "Kernel panic"))), "Kernel panic")
        where = next((ln for ln in lines if ln.startswith(("Workqueue:", "Comm:"))), "")
        return f"{first}{'; ' + where if where else ''}"

    def check(self) -> GuestResult:
        """Raise LabError, showing the end of the output and the log's path, unless rc == 0."""
        why = self.failure()
        if why:
            raise LabError(f"{why}\n{_tail(self.output or self.console, 120)}\n(console log: {self.log})")
        return self


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def kernel_version() -> str:
    """The unpacked lab kernel's version, or LabError naming what is missing."""
    if shutil.which(QEMU) is None:
        raise LabError(f"{QEMU} not found: {SETUP_HINT}")
    kver = BUILD / "kver"
    if not kver.exists():
        raise LabError(f"the lab kernel is missing ({kver} does not exist): {SETUP_HINT}")
    version = kver.read_text().strip()
    for need in (BUILD / "kroot" / "boot" / f"vmlinuz-{version}", BUILD / "initrd.img"):
        if not need.exists():
            raise LabError(f"the lab kernel is incomplete ({need} is missing): {SETUP_HINT}")
    return version


def _new_run_dir() -> Path:
    RUNS.mkdir(parents=True, exist_ok=True)
    runs = sorted(p for p in RUNS.iterdir() if p.is_dir())
    for old in runs[: max(0, len(runs) - KEEP_RUNS + 1)]:
        if time.time() - old.stat().st_mtime > 3600:  # never a run that may still be going
            shutil.rmtree(old, ignore_errors=True)
    run = RUNS / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    run.mkdir()
    return run


def _wire() -> tuple[socket.socket, socket.socket]:
    """Both ends of one TCP connection on 127.0.0.1 (the port is the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    for end in (a, b):
        end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one frame, one segment
    return a, b


_RUN_SH = """\
# Generated by tests/lab/lab.py: runs in the VM under /bin/sh, then init powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
{exports}
S=$LAB_SHARE
mark() {{ echo "LAB_MARK $1 $(cut -d' ' -f1 /proc/uptime)"; }}
fail() {{ echo "$1" > $S/setup-failed; echo "LAB_SETUP_FAILED: $1"; dmesg | tail -n 30; exit 1; }}
mark BOOTED
hostname $LAB_VM
ip link set lo up
ip addr add $LAB_IP/24 dev eth0 && ip link set eth0 up || fail "could not configure eth0 with $LAB_IP"
ip -6 addr add $LAB_IP6/64 dev eth0 nodad || fail "could not configure eth0 with $LAB_IP6"
if [ "$LAB_RDMA" = 1 ]; then
    modprobe -a rdma_rxe smc smc_diag || fail "modprobe -a rdma_rxe smc smc_diag"
    rdma link add rxe0 type rxe netdev eth0 || fail "rdma link add rxe0 type rxe netdev eth0"
    i=0
    until grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 100 ] || fail "rxe0 port 1 did not become ACTIVE"; sleep 0.1
    done
fi
if [ "$LAB_NICS" = 2 ]; then
    ip addr add $LAB_IP2/24 dev eth1 && ip link set eth1 up || fail "could not configure eth1 with $LAB_IP2"
    if [ "$LAB_RDMA" = 1 ]; then
        rdma link add rxe1 type rxe netdev eth1 || fail "rdma link add rxe1 type rxe netdev eth1"
        i=0
        until grep -q ACTIVE /sys/class/infiniband/rxe1/ports/1/state 2>/dev/null; do
            i=$((i + 1)); [ $i -lt 100 ] || fail "rxe1 port 1 did not become ACTIVE"; sleep 0.1
        done
    fi
fi
mark READY
cd {cwd}
{{ timeout -k 5 {timeout} /bin/bash $S/cmd.sh 2>&1; echo $? > $S/rc.tmp; }} | tee $S/output.log
mark DONE
rc=$(cat $S/rc.tmp)
[ "$rc" = 0 ] || {{ echo "--- dmesg (last 30 lines)"; dmesg | tail -n 30; }}
mv $S/rc.tmp $S/rc
echo "LAB_RC=$rc"
"""


@dataclass(frozen=True)
class _Guest:
    name: str
    index: int  # 1 or 2: address 10.2.0.N, MAC 52:54:00:12:00:0N

    @property
    def ip(self) -> str:
        return f"{SUBNET}.{self.index}"

    @property
    def mac(self) -> str:
        return f"52:54:00:12:00:{self.index:02x}"

    @property
    def ip6(self) -> str:  # eth0's IPv6 address (besides its link-local one)
        return f"{SUBNET6}::{self.index}"

    @property
    def ip2(self) -> str:  # the second NIC (nics=2): 10.2.1.N
        return f"{SUBNET2}.{self.index}"

    @property
    def mac2(self) -> str:
        return f"52:54:00:12:01:{self.index:02x}"


def boot(
    commands: Sequence[str],
    *,
    timeout: float = 120.0,
    rdma: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path = PROJECT,
    memory: str = "1G",
    boot_budget: float = BOOT_BUDGET,
    nics: int = 1,
) -> list[GuestResult]:
    """Boot one VM per command (one or two), run each command in bash, return when all are off.

    ``timeout`` limits each guest command (exit code 124 when it fires); every qemu is killed
    ``boot_budget`` + 10 seconds after that at the latest, so a hung kernel becomes a failure.
    Inside, ``$LAB_VM`` is "a" or "b", ``$LAB_IP`` / ``$LAB_PEER_IP`` the addresses
    (``$LAB_IP6`` / ``$LAB_PEER_IP6`` their IPv6 ones, fd00:2::N), and
    ``$LAB_SHARE`` the writable shared directory. ``nics=2`` joins two VMs by a second wire
    too: ``eth1`` with ``$LAB_IP2`` / ``$LAB_PEER_IP2`` (10.2.1.N) and, with ``rdma``, ``rxe1``.
    """
    if os.environ.get(GUEST_ENV):
        raise LabError("the lab does not nest: this is already a lab VM")
    if not 1 <= len(commands) <= 2:
        raise LabError(f"boot takes one or two commands, not {len(commands)}")
    if nics not in (1, 2) or (nics == 2 and len(commands) != 2):
        raise LabError(f"nics is 1, or 2 for a pair of VMs (not {nics} for {len(commands)} VM(s))")
    version = kernel_version()
    run = _new_run_dir()
    guests = [_Guest(name, i + 1) for i, name in enumerate("ab"[: len(commands)])]
    wire = _wire() if len(guests) == 2 else None
    wire2 = _wire() if nics == 2 else None
    procs: list[subprocess.Popen] = []
    started = time.monotonic()
    try:
        for g, command in zip(guests, commands, strict=True):
            share = run / g.name
            share.mkdir()
            peer = guests[2 - g.index] if wire else None
            exports = {
                GUEST_ENV: "1",
                "LAB_VM": g.name,
                "LAB_IP": g.ip,
                "LAB_PEER_IP": peer.ip if peer else "",
                "LAB_SHARE": str(share),
                "LAB_RDMA": "1" if rdma else "0",
                "LAB_IP6": g.ip6,
                "LAB_PEER_IP6": peer.ip6 if peer else "",
                "LAB_NICS": str(nics),
                "LAB_IP2": g.ip2 if wire2 else "",
                "LAB_PEER_IP2": peer.ip2 if wire2 and peer else "",
                **(env or {}),
            }
            (share / "run.sh").write_text(
                _RUN_SH.format(
                    exports="\n".join(f"export {k}={shlex.quote(v)}" for k, v in exports.items()),
                    cwd=shlex.quote(str(cwd)),
                    timeout=int(timeout),
                )
            )
            (share / "cmd.sh").write_text(command + "\n")
            if wire:
                end = wire[g.index - 1]
                net, fds = f"socket,id=n0,fd={end.fileno()}", (end.fileno(),)
            else:
                net, fds = "hubport,id=n0,hubid=0", ()  # a hub with one port: eth0 up, no peer
            argv = _qemu_argv(version, share, net, g.mac, memory)
            if wire2:
                end2 = wire2[g.index - 1]
                argv += ["-netdev", f"socket,id=n1,fd={end2.fileno()}", "-device", f"virtio-net-pci,netdev=n1,mac={g.mac2}"]
                fds = (*fds, end2.fileno())
            (share / "qemu.argv").write_text(shlex.join(argv) + "\n")
            with open(run / f"{g.name}.console.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        pass_fds=fds, start_new_session=True,
                    )
                )  # fmt: skip
        for end in (*(wire or ()), *(wire2 or ())):
            end.close()  # the qemus hold their own copies
        ends = _wait(procs, started + boot_budget + timeout + 10)
    except BaseException:  # interrupted (Ctrl-C, pytest timeout): leave no VM behind
        _kill(procs)
        raise
    finally:
        for end in (*(wire or ()), *(wire2 or ())):
            end.close()
    return [_result(g, run, timeout, ends[i][0] - started, ends[i][1]) for i, g in enumerate(guests)]


def _qemu_argv(version: str, share: Path, net: str, mac: str, memory: str) -> list[str]:
    kmods = BUILD / "kroot" / "lib" / "modules" / version
    nine_p = "security_model=none"
    return [
        QEMU, "-machine", "q35,accel=tcg", "-cpu", "max", "-m", memory, "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
        "-serial", "stdio", "-no-reboot",
        "-kernel", str(BUILD / "kroot" / "boot" / f"vmlinuz-{version}"),
        "-initrd", str(BUILD / "initrd.img"),
        "-append", f"console=ttyS0 quiet panic=-1 lab.share={share}",
        "-fsdev", f"local,id=r,path=/,readonly=on,{nine_p},multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=r,mount_tag=hostroot",
        "-fsdev", f"local,id=k,path={kmods},readonly=on,{nine_p}",
        "-device", "virtio-9p-pci,fsdev=k,mount_tag=kmods",
        "-fsdev", f"local,id=w,path={share},{nine_p}",
        "-device", "virtio-9p-pci,fsdev=w,mount_tag=share",
        "-netdev", net, "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
    ]  # fmt: skip


def _wait(procs: list[subprocess.Popen], deadline: float) -> list[tuple[float, bool]]:
    """(end time, killed) per process; kills what is still running at the deadline."""
    ends: list[tuple[float, bool] | None] = [None] * len(procs)
    while None in ends:
        for i, p in enumerate(procs):
            if ends[i] is None and p.poll() is not None:
                ends[i] = (time.monotonic(), False)
        if time.monotonic() >= deadline:
            for i, p in enumerate(procs):
                if ends[i] is None:
                    _kill([p])
                    ends[i] = (time.monotonic(), True)
        time.sleep(0.05)
    return ends  # type: ignore[return-value]


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # our own session: qemu and nothing else
            p.wait()


def _result(g: _Guest, run: Path, timeout: float, wall: float, killed: bool) -> GuestResult:
    share = run / g.name
    log = run / f"{g.name}.console.log"
    console = log.read_text(errors="replace")
    rc_file = share / "rc"
    output = share / "output.log"
    marks = {m[1]: float(m[2]) for m in re.finditer(r"^LAB_MARK (\w+) ([\d.]+)", console, re.M)}
    return GuestResult(
        name=g.name,
        rc=int(rc_file.read_text()) if rc_file.exists() else None,
        output=output.read_text(errors="replace") if output.exists() else "",
        console=console,
        share=share,
        log=log,
        wall=wall,
        timeout=timeout,
        killed=killed,
        marks=marks,
    )


def boot_again_after_a_panic(commands: Sequence[str], **kwargs) -> list[GuestResult]:
    """``boot``, and once more when a guest's kernel panicked under its command, or faulted
    in kernel code and the command then failed (the lab's Debian kernel has died in
    Soft-RoCE's own code, e.g. a double fault allocating an ACK's skb in rxe_receiver, once
    in many runs; once it corrupted memory instead, and our process died of it). Either is
    reported as a warning with its console log; a second is returned as the failure it is."""
    results = boot(commands, **kwargs)
    panics = [(r.name, "panicked", r.kernel_panic(), r.log) for r in results if r.kernel_panic()]
    panics += [(r.name, "faulted", r.kernel_fault(), r.log) for r in results if not r.kernel_panic() and r.kernel_fault()]
    if not panics:
        return results
    for name, how, panic, log in panics:
        warnings.warn(f"lab: VM {name}'s kernel {how} ({panic}; {log}); booting the run again once", stacklevel=3)
    return boot(commands, **kwargs)


def run(command: str, **kwargs) -> GuestResult:
    """Boot one VM (10.2.0.1, rxe0), run ``command``, and return its result (not checked)."""
    return boot_again_after_a_panic([command], **kwargs)[0]


def run_pair(command_a: str, command_b: str, **kwargs) -> tuple[GuestResult, GuestResult]:
    """Boot VMs a (10.2.0.1) and b (10.2.0.2) on one wire; each runs its command."""
    a, b = boot_again_after_a_panic([command_a, command_b], **kwargs)
    return a, b


def pytest_command(args: Sequence[str]) -> str:
    """The guest shell command that runs ``pytest args`` with the venv, writing $LAB_SHARE/junit.xml."""
    # Loading hypothesis' pytest plugin costs ~9 s under TCG; modules that use
    # hypothesis still import it themselves. The cache would only land in the tmpfs overlay.
    return f'{shlex.quote(str(PYTHON))} -m pytest -p no:cacheprovider -p no:hypothesispytest --junitxml="$LAB_SHARE/junit.xml" {shlex.join(args)}'


def junit_counts(result: GuestResult) -> dict[str, int]:
    """tests/failures/errors/skipped from the guest's JUnit XML ({} if it wrote none)."""
    path = result.share / "junit.xml"
    if not path.exists():
        return {}
    suite = ElementTree.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def check_pytest(result: GuestResult) -> GuestResult:
    """Raise LabError unless the guest's pytest passed and ran at least one test."""
    result.check()
    counts = junit_counts(result)
    if not counts.get("tests"):
        raise LabError(f"VM {result.name}: pytest ran no test\n{_tail(result.output, 60)}")
    return result


def pytest_in_vm(args: Sequence[str], *, timeout: float = 300.0, **kwargs) -> GuestResult:
    """Run ``pytest args`` in one VM and assert it passed (the guest's output on failure)."""
    return check_pytest(run(pytest_command(args), timeout=timeout, **kwargs))


def pytest_in_pair(args_a: Sequence[str], args_b: Sequence[str] | None = None, *, timeout: float = 300.0, **kwargs) -> tuple[GuestResult, GuestResult]:
    """Run pytest in two VMs at once (``$LAB_VM`` tells each its role); both must pass."""
    a, b = run_pair(pytest_command(args_a), pytest_command(args_a if args_b is None else args_b),
                    timeout=timeout, **kwargs)  # fmt: skip
    errors = []
    for r in (a, b):
        try:
            check_pytest(r)
        except LabError as exc:
            errors.append(str(exc))
    if errors:
        raise LabError("\n\n".join(errors))
    return a, b


if __name__ == "__main__":  # python tests/lab/lab.py 'shell command'  (a quick look inside)
    res = run(" ".join(sys.argv[1:]) or "rdma link; ibv_devices")
    print(res.output, end="")
    print(f"[{res.failure() or 'ok'}; {res.wall:.1f} s; console log {res.log}]")
    sys.exit(0 if res.ok else 1)
