"""tracefs I/O: a private trace instance with the smc tracepoints and our probes, read
from its ``trace_pipe`` by a thread.

Everything here needs root: tracefs and ``dynamic_events`` are writable by root only (the
kernel checks CAP_SYS_ADMIN when it is mounted with the default mode). Without it the
session says so in one line and the kernel source goes on with smc_diag and genl.

The session uses an instance of its own (``instances/smckernel-<pid>``), so nobody else's
tracing is disturbed and its clock can be CLOCK_MONOTONIC (``trace_clock`` = ``mono``);
dynamic events live in a group of its own (``smck<pid>``), enabled in its instance only.
On close (and for what a dead process left behind, on the next start) it disables them
and removes the group and the instance.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
from typing import Callable

from . import trace as ktrace
from .kio import KernelUnavailable

TRACEFS_PATHS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
# the reader's ends: how long stop() waits for it to see _stop, and then for an aborted one
STOP_WAIT = 5.0
ABORT_WAIT = 2.0
JOIN_TICK = 0.05  # waits are in slices, so that abort() from another thread cuts them short
NEED_ROOT = "tracepoints and probes need root (tracefs and dynamic_events are writable by CAP_SYS_ADMIN only)"


def find_tracefs(mount: bool = True) -> str:
    """The tracefs mount point; mounts it at /sys/kernel/tracing when it is not (root)."""
    for path in TRACEFS_PATHS:
        if os.path.exists(os.path.join(path, "trace")):
            return path
    if mount and os.geteuid() == 0 and os.path.isdir(TRACEFS_PATHS[0]):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"nodev", TRACEFS_PATHS[0].encode(), b"tracefs", 0, None) == 0:
            return TRACEFS_PATHS[0]
        err = ctypes.get_errno()
        raise KernelUnavailable(err, f"cannot mount tracefs at {TRACEFS_PATHS[0]}: {os.strerror(err)}")
    raise KernelUnavailable(errno.ENOENT, "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing, as root)")


def _write(path: str, text: str, append: bool = False) -> None:
    # os.open, not open(..., "a"): Python's append mode seeks to the end, which tracefs refuses
    fd = os.open(path, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TraceSession:
    """The smc tracepoints and our probes in a private instance. ``start(callback)`` starts
    the reader thread, which calls ``callback(list of TraceRecord)``; ``close()`` undoes
    everything. ``notes`` says what the kernel did not allow and why; ``installed`` names
    the probes in place, ``tracepoints`` the tracepoints enabled."""

    def __init__(self, net_cookie: int | None = None, probes=True, tracefs: str | None = None, raw_log: str | None = None,
                 tag: int = 0) -> None:  # fmt: skip
        """``probes``: True for all of smckernel.trace.PROBES, False for none, or the names wanted;
        ``tag``: sessions of one process (one per network namespace) each have their own number."""
        if os.geteuid() != 0:
            raise KernelUnavailable(errno.EPERM, NEED_ROOT)
        self.root = tracefs or find_tracefs()
        self.pid = os.getpid()
        suffix = f"_{tag}" if tag else ""
        self.group = f"smck{self.pid}{suffix}"
        self.instance = os.path.join(self.root, "instances", f"smckernel-{self.pid}{suffix}")
        self.notes: list[str] = []
        self.installed: list[str] = []
        self.tracepoints: list[str] = []
        self.net_cookie = net_cookie
        self.raw_log = raw_log  # a file every line read is appended to (fixtures, bug reports)
        self.errors = 0  # lines that did not parse
        self.clock_mono = True  # record times are CLOCK_MONOTONIC (trace_clock mono taken)
        self.records = 0  # records handed over
        self.unread = 0  # records the kernel still held when drain gave up (see drain)
        self.shared: list[int] = []  # other namespaces' cookies this session's t: probes also take (share_with)
        self.refused: dict[str, str] = {}  # probes refused because another session holds the tracepoint's: name -> why
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self._cleanup_stale()
        try:
            os.mkdir(self.instance)
        except FileExistsError:
            pass
        except OSError as e:
            raise KernelUnavailable(e.errno or 0, f"cannot create a trace instance ({self.instance}): {e.strerror}") from None
        try:
            _write(os.path.join(self.instance, "trace_clock"), "mono")
        except OSError as e:
            self.clock_mono = False
            self.notes.append(f"trace_clock mono refused ({e.strerror}): trace times are the instance's default clock, "
                              "not CLOCK_MONOTONIC")  # fmt: skip
        try:
            _write(os.path.join(self.instance, "buffer_size_kb"), "4096")
        except OSError:
            pass
        if probes:
            self._add_probes(None if probes is True else set(probes))
        self._enable_tracepoints()

    # ------------------------------------------------------------------ set-up

    def _filter(self, event_dir: str, field: str = "net", cookies: list[int] | None = None) -> bool:
        cookies = cookies or ([self.net_cookie] if self.net_cookie is not None else [])
        if not cookies:
            return True
        try:
            _write(os.path.join(event_dir, "filter"), " || ".join(f"{field} == {c}" for c in cookies))
            return True
        except OSError:
            return False  # filtered in Python instead (the tracker drops other namespaces' records)

    def share_with(self, cookie: int) -> list[str]:
        """Let this session's probes on tracepoints (``t:``, which the kernel takes once on the
        whole system) also take the records of network namespace ``cookie``, for another
        session of this process to be handed (smckernel.source routes them by their ``net``).
        Returns the probes that now do."""
        if self.net_cookie is None:
            return [n for n in self.installed if ktrace.PROBES[n][0] == "t"]  # unfiltered: they take every namespace already
        if cookie not in self.shared:
            self.shared.append(cookie)
        out = []
        for name in self.installed:
            if ktrace.PROBES[name][0] == "t" and self._filter(os.path.join(self.instance, "events", self.group, name), cookies=[self.net_cookie, *self.shared]):
                out.append(name)
        return out

    def disable_tracepoints(self, names: list[str]) -> None:
        """Turn off plain smc tracepoints this session no longer needs (their probe is read elsewhere)."""
        for tp in names:
            try:
                _write(os.path.join(self.instance, "events", "smc", tp, "enable"), "0")
            except OSError:
                pass

    def _enable_tracepoints(self) -> None:
        base = os.path.join(self.instance, "events", "smc")
        if not os.path.isdir(base):
            self.notes.append("the smc tracepoints are not there (smc module not loaded, or a kernel before 5.17)")
            return
        read_by_probe = {tp for name, tp in ktrace.REPLACES.items() if name in self.installed}
        for tp in ktrace.TRACEPOINTS:
            d = os.path.join(base, tp)
            if not os.path.isdir(d):
                self.notes.append(f"tracepoint smc:{tp} is not in this kernel")
                continue
            if tp in read_by_probe and tp in ("smc_tx_sendmsg", "smc_rx_recvmsg"):
                self.tracepoints.append(tp)  # read through its probe, which names the connection: not twice per call
                continue
            try:
                self._filter(d, "net_cookie")
                _write(os.path.join(d, "enable"), "1")
                self.tracepoints.append(tp)
            except OSError as e:
                self.notes.append(f"tracepoint smc:{tp} not enabled: {e.strerror}")

    def _error_log(self) -> str:
        try:
            with open(os.path.join(self.root, "error_log")) as f:
                lines = [x.strip() for x in f.read().splitlines() if x.strip()]
            return lines[-1] if lines else ""
        except OSError:
            return ""

    def _add_probes(self, names: set[str] | None) -> None:
        path = os.path.join(self.root, "dynamic_events")
        if not os.path.exists(path):
            self.notes.append("no dynamic_events in tracefs (a kernel without probe events): tracepoints only")
            return
        unknown = (names or set()) - set(ktrace.PROBES)
        if unknown:
            self.notes.append(f"no such probes: {', '.join(sorted(unknown))} (known: {', '.join(ktrace.PROBES)})")
        failed = []
        for name, line in ktrace.probe_definitions(self.group, names).items():
            err = self._try(path, line)
            if err is not None:  # perhaps a kernel without net_cookie: once more without it
                line2 = ktrace.probe_definitions(self.group, [name], net=False)[name]
                if self._try(path, line2) is None:
                    self.notes.append(f"probe {name}: without the namespace cookie ({err}); records of every namespace")
                    err = None
            if err is not None:
                if ktrace.PROBES[name][0] == "t" and err.startswith(os.strerror(errno.EEXIST)):
                    self.refused[name] = err  # the kernel takes a probe on a tracepoint once per system
                    continue
                failed.append(f"{name} ({err})")
                continue
            d = os.path.join(self.instance, "events", self.group, name)
            try:
                self._filter(d)
                _write(os.path.join(d, "enable"), "1")
                self.installed.append(name)
            except OSError as e:
                failed.append(f"{name} (enable: {e.strerror})")
        if self.refused:
            self.notes.append(f"probes on tracepoints another session holds (the kernel takes one per tracepoint on the whole system): "
                              f"{', '.join(self.refused)}")  # fmt: skip
        if failed:
            self.notes.append("probes the kernel did not take (it needs fprobe events with BTF arguments, Linux 6.6+, "
                              "CONFIG_PROBE_EVENTS_BTF_ARGS): " + "; ".join(failed))  # fmt: skip

    def _try(self, path: str, line: str) -> str | None:
        try:
            _write(path, line + "\n", append=True)
            return None
        except OSError as e:
            why = self._error_log()
            return f"{e.strerror}{': ' + why if why else ''}"

    def _cleanup_stale(self) -> None:
        """Instances and groups of smckernel processes that are gone."""
        inst = os.path.join(self.root, "instances")
        try:
            names = os.listdir(inst)
        except OSError:
            names = []
        for name in names:
            pid = name[10:].split("_")[0]
            if name.startswith("smckernel-") and pid.isdigit() and not _pid_alive(int(pid)):
                self._remove(os.path.join(inst, name), f"smck{name[10:]}")

    def _remove(self, instance: str, group: str) -> None:
        try:
            _write(os.path.join(instance, "tracing_on"), "0")
        except OSError:
            pass
        events = os.path.join(instance, "events")
        for sub in (group, "smc"):
            d = os.path.join(events, sub)
            try:
                for ev in os.listdir(d):
                    if os.path.isdir(os.path.join(d, ev)):
                        try:
                            _write(os.path.join(d, ev, "enable"), "0")
                        except OSError:
                            pass
            except OSError:
                pass
        try:
            os.rmdir(instance)
        except OSError:
            pass
        path = os.path.join(self.root, "dynamic_events")
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            return
        for line in lines:
            head = line.split(" ", 1)[0]  # f:group/name
            kind, _, ev = head.partition(":")
            if ev.startswith(group + "/"):
                try:
                    _write(path, f"-:{ev}\n", append=True)
                except OSError:
                    pass

    # ------------------------------------------------------------------ reading

    def start(self, callback: Callable[[list], None]) -> None:
        self._thread = threading.Thread(target=self._run, args=(callback,), name="smckernel trace_pipe", daemon=True)
        self._thread.start()

    def _run(self, callback: Callable[[list], None]) -> None:
        try:
            fd = os.open(os.path.join(self.instance, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            self.notes.append(f"cannot read trace_pipe: {e.strerror}")
            return
        log = open(self.raw_log, "a") if self.raw_log else None
        pending = b""
        try:
            while not self._abort.is_set():
                stopping = self._stop.is_set()
                r, _, _ = select.select([fd], [], [], 0.1)
                data = b""
                if r:
                    try:
                        data = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        data = b""
                if data:
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    records = []
                    for raw in lines:
                        text = raw.decode("utf-8", "backslashreplace")
                        if not text.strip():
                            continue
                        if log is not None:
                            log.write(text + "\n")
                        try:
                            records.append(ktrace.parse_line(text))
                        except ktrace.TraceFormatError:
                            self.errors += 1
                    if records:
                        self.records += len(records)
                        try:
                            callback(records)
                        except Exception as e:  # noqa: BLE001 - the reader must go on
                            self.notes.append(f"trace record handler failed: {type(e).__name__}: {e}")
                elif stopping:
                    self._emptied = True  # an empty read after the stop: the buffer is drained
                    break
        finally:
            os.close(fd)
            if log is not None:
                log.close()

    def unread_entries(self) -> int | None:
        """Records the instance's buffer holds that nobody has read yet (the per-CPU ``entries``
        of ``per_cpu/cpuN/stats``): how far the reader is behind. None when unreadable."""
        total, found = 0, False
        try:
            cpus = os.listdir(os.path.join(self.instance, "per_cpu"))
        except OSError:
            return None
        for cpu in cpus:
            try:
                with open(os.path.join(self.instance, "per_cpu", cpu, "stats")) as f:
                    for line in f:
                        if line.startswith("entries:"):
                            total += int(line.split(":", 1)[1])
                            found = True
            except (OSError, ValueError):
                continue
        return total if found else None

    def drain(self, timeout: float = 60.0) -> None:
        """End the session's trace at this moment and hand over what the kernel still holds.

        The instance stops recording (``tracing_on`` 0: nothing that happens later is taken),
        then the reader goes on until the buffer is empty: a reader that fell behind (a loaded
        host: the trace buffer held minutes of records in the lab) loses nothing that happened
        before the close. After ``timeout`` seconds, or at once when ``abort()`` is called
        (a second Ctrl-C), it stops anyway; what is left is counted in ``unread`` and said in
        ``notes``."""
        if self._thread is None:
            return
        try:
            _write(os.path.join(self.instance, "tracing_on"), "0")
        except OSError:
            pass
        before, t0 = self.records, time.monotonic()
        self._emptied = False
        self._stop.set()  # the reader ends at its first empty read: the buffer is drained
        end = t0 + timeout
        while self._thread.is_alive() and not self._abort.is_set() and time.monotonic() < end:
            self._thread.join(min(JOIN_TICK, max(0.0, end - time.monotonic())))
        cut = self._abort.is_set()  # abort() came before the time was out
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join(ABORT_WAIT)
        if self._abort.is_set() and not self._emptied:  # out of time, or aborted: what the buffer still holds is lost
            self.unread = self.unread_entries() or 0
            how = f"the stop was cut short after {time.monotonic() - t0:.1f} s" if cut else f"after reading for {timeout:g} s"
            self.notes.append(f"the trace reader was behind: {self.unread} records left unread {how} at close")
        elif self.records - before > 1000:
            self.notes.append(f"the trace reader was behind: {self.records - before} records read at close "
                              f"({time.monotonic() - t0:.1f} s)")  # fmt: skip

    def abort(self) -> None:
        """Cut a drain or a stop short (any thread): the reader ends after the batch in its hands."""
        self._abort.set()

    def stop(self) -> None:
        """End the reader thread (bounded: one that does not end is left, and said in ``notes``)."""
        self._stop.set()
        if self._thread is None:
            return
        end = time.monotonic() + STOP_WAIT
        while self._thread.is_alive() and not self._abort.is_set() and time.monotonic() < end:
            self._thread.join(JOIN_TICK)
        if self._thread.is_alive():  # (a stop without drain on a reader far behind)
            self._abort.set()
            self._thread.join(ABORT_WAIT)
        if self._thread.is_alive():
            note = f"the trace reader of {self.instance} did not end: left running"
            if note not in self.notes:
                self.notes.append(note)

    def remove(self) -> None:
        """Take the instance and the probe group out of the kernel (stop first). Each write can
        take a while (a probe's removal waits for an RCU grace period: seconds on a loaded VM)."""
        self._remove(self.instance, self.group)
        if os.path.isdir(self.instance):
            self.notes.append(f"the trace instance {self.instance} could not be removed: the next smckernel session removes it")

    def close(self) -> None:
        self.stop()
        self.remove()
