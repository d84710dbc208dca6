"""smckernel: the Linux kernel's own SMC-R as an event source for smctop and smc-trace.

* ``smckernel.source.KernelSource``: the kernel as a stream of our events (stack/events.py
  kinds, each with ``source``: snapshot, tracepoint, probe or capture), from smc_diag and
  SMC_GEN_NETLINK polls (no privilege needed), tracepoints and probes (root) and a live
  capture of the RoCEv2 frames (CAP_NET_RAW); ``snapshot_once`` for one reading;
* ``smckernel.once``: a neutral snapshot (``smckernel.model.Snapshot``) as smc-tools prints
  it (``render_text``) and as one JSON document (``render_json``);
* ``smckernel.record.KernelRecording``: its events and frames in one smc-trace capture;
* pure parsers: ``netlink``, ``diag``, ``genl`` (bytes in), ``trace`` (trace_pipe lines in),
  ``tracker`` (facts in, events out), with the I/O in ``kio``, ``tracing``, ``capture``.

``python -m smckernel --once [--json] [--netns NAME]`` prints one snapshot.
"""

from .model import Snapshot
from .once import render_json, render_text

__all__ = ["Snapshot", "render_json", "render_text", "KernelSource", "snapshot_once"]


def __getattr__(name: str):
    if name in ("KernelSource", "snapshot_once"):
        from . import source

        return getattr(source, name)
    raise AttributeError(name)
