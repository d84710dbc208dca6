"""``python -m smckernel``: the kernel's SMC-R as smc-tools shows it, or as our events.

python -m smckernel --once [--json] [--netns NAME]...    what smcss / smcr print, or one JSON document
python -m smckernel --once --netns all                    this namespace and every one in /var/run/netns, each apart
python -m smckernel [--seconds N] [--rate HZ] [--text]    events as JSON lines (or text) until Ctrl-C
python -m smckernel --record run.pcapng [--capture auto]  the events (and frames) as an smc-trace capture
python -m smckernel --save-raw DIR                        the kernel's raw replies (fixtures, bug reports)
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from . import once
from .kio import KernelUnavailable
from .trace import PROBES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m smckernel", description="The Linux kernel's SMC-R, read through smc_diag, "
                                 "SMC_GEN_NETLINK, tracepoints, probes and a capture")  # fmt: skip
    ap.add_argument("--once", action="store_true", help="print one snapshot as smc-tools would (smcss -a/-d/-R, smcr linkgroup, device, stats)")
    ap.add_argument("--json", action="store_true", help="with --once: one JSON document")
    ap.add_argument("--netns", action="append", help="a network namespace (ip netns name, or a path such as /proc/PID/ns/net; "
                    "needs root); repeat for several, 'all' for this one and every one in /var/run/netns (each under its own "
                    "host name, host/NAME)")  # fmt: skip
    ap.add_argument("--host", help="the host name events carry (default: this host's, with the namespace)")
    ap.add_argument("--rate", type=float, default=1.0, help="polls of smc_diag and genl per second (default 1)")
    ap.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    ap.add_argument("--text", action="store_true", help="events as text lines instead of JSON lines")
    ap.add_argument("--no-trace", action="store_true", help="no tracepoints or probes, even as root")
    ap.add_argument("--no-probes", action="store_true", help="the smc tracepoints only, no dynamic probes")
    ap.add_argument("--probes", help="only these probes (comma-separated; default all: " + ",".join(PROBES) + ")")
    ap.add_argument("--capture", help="capture RoCEv2 frames on these netdevs (comma-separated, or 'auto'); needs CAP_NET_RAW")
    ap.add_argument("--record", metavar="FILE", help="write the events (and captured frames) to an smc-trace pcapng file")
    ap.add_argument("--trace-log", metavar="FILE", help="append every trace_pipe line read to FILE")
    ap.add_argument("--save-raw", metavar="DIR", help="write one poll's raw netlink replies to DIR and exit")
    ap.add_argument("--from-raw", metavar="DIR", help="with --once: render replies --save-raw wrote (another host's, a bug report's)")
    ap.add_argument("--stats-every", type=float, default=10.0, help="seconds between stats events (0: only the first)")
    a = ap.parse_args(argv)
    try:
        if a.save_raw:
            return _save_raw(a)
        if a.once:
            from .source import snapshot_many

            if a.from_raw:
                if a.netns and len(a.netns) > 1:
                    ap.error("--from-raw renders one namespace's replies: give at most one --netns")
                snaps = [_from_raw(a)]
            else:
                snaps = snapshot_many(a.netns, a.host)
            sys.stdout.write(once.render_many(snaps, a.json))
            return 0
        return _run(a)
    except KernelUnavailable as e:
        print(f"smckernel: {e.strerror}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


def _from_raw(a):
    import os

    from .kio import load_raw
    from .model import from_kernel
    from .tracker import Tracker

    if not os.path.isdir(a.from_raw):
        raise KernelUnavailable(2, f"{a.from_raw}: no such directory")
    raw = load_raw(a.from_raw)
    netns = a.netns[0] if isinstance(a.netns, list) and a.netns else a.netns or None
    snap = from_kernel(raw, 0.0, a.host or os.path.basename(os.path.normpath(a.from_raw)), netns)
    snap.source = "kernel (saved)"
    Tracker(snap.host, stats_every=None).snapshot(snap)
    return snap


def _save_raw(a) -> int:
    import os

    from .kio import netns_label, resolve_netns, save_raw
    from .source import KernelReader

    namespaces = resolve_netns(a.netns)
    for ns in namespaces:  # several namespaces: one folder each, DIR/<namespace> (DIR/self for this one)
        where = a.save_raw if len(namespaces) == 1 else os.path.join(a.save_raw, netns_label(ns) or "self")
        reader = KernelReader(ns)
        try:
            raw, complete = reader.read()
        finally:
            reader.close()
        raw.errors[:0] = reader.notes
        save_raw(raw, where)
        print(f"smckernel: wrote {2 + len(raw.genl)} files to {where} (complete: {', '.join(sorted(complete)) or 'nothing'})", file=sys.stderr)
    return 0


def _run(a) -> int:
    from stack import events as ev

    from .source import sources_for

    capture = None
    if a.capture:
        capture = "auto" if a.capture == "auto" else a.capture.split(",")
    probes = False if a.no_probes else (a.probes.split(",") if a.probes else True)
    srcs = sources_for(a.netns, a.host, rate=a.rate, trace=False if a.no_trace else None, probes=probes, capture=capture,
                       stats_every=a.stats_every or None, raw_trace_log=a.trace_log)  # fmt: skip
    out = sys.stdout
    lock = threading.Lock()

    def show(e) -> None:
        line = f"{e.t:14.6f} {e.host} {e.kind} [{e.fields.get('source', '?')}] {ev.render(e)}" if a.text else ev.to_json(e)
        with lock:
            out.write(line + "\n")
            out.flush()

    rec = None
    if a.record:
        from .record import KernelRecording

        rec = KernelRecording(a.record, srcs)
    for src in srcs:
        src.add_listener(show)
    from . import stopping

    with stopping.StopSignals() as signals:  # bounded stops, a second signal cuts them short (see smckernel.stopping)
        try:
            for src in srcs:
                if signals.count:
                    break
                src.start()
                for note in src.notes:
                    print(f"smckernel: {src.host}: {note}" if len(srcs) > 1 else f"smckernel: {note}", file=sys.stderr)
            signals.wait(a.seconds)
        finally:
            stopping.stop_sources(srcs, signals)
            if rec is not None:
                st = stopping.write_recording(rec, signals)
                if st is not None:
                    print(f"smckernel: recorded {st.events} events and {st.frames} frames to {a.record}"
                          + (f" ({st.dropped_events} events, {st.dropped_frames} frames dropped)" if st.dropped_events or st.dropped_frames else ""),
                          file=sys.stderr)  # fmt: skip
            stopping.release_sources(srcs, signals)
            for src in srcs:
                print("smckernel: " + json.dumps(src.status(), sort_keys=True), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
