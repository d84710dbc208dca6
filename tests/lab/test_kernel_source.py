"""The kernel source (smckernel) against the truth, kernel to kernel (issue 18).

One boot of two VMs. VM b runs an AF_SMC server on 5001; VM a opens two SMC-R
connections to it (both with the UEID SMCTOP-LAB), then, once b has removed its UEID, a
third that falls back (b declines with NOSMCDEV, a falls back with PEERDECL). Both VMs run
the kernel source as root for the whole exchange (5 polls a second, tracepoints and
probes, a capture of eth0 on a), writing its events as JSON lines and a recording; while
the connections are open VM a also reads the kernel as user nobody (``--once --json``
and a short streaming run), in a second network namespace (by name and by path), and
keeps the applications' own counts of what they sent and received. The tests here read
what the VMs wrote and hold the source to:

* the applications' byte counts (the cursors smc_diag reports are exactly those counts in
  wrap:count form, with the buffer sizes it reports);
* smc_diag itself (every connection ksmc.ss() shows appears, with its mode and reason);
* the kernel's other interfaces (the link's GID is the one /sys/class/infiniband shows,
  the link group in genl is the one the connections' links name);
* the forced fallback: the exact codes, from the probe, at a time inside the application's
  connect();
* the capture: the CDC bytes the probe read are the bytes on the wire, at the same time.

``python tests/lab/test_kernel_source.py guest-client|guest-server`` is the guest side.
SMCTOP_LAB_REFRESH_FIXTURE=1 copies the VMs' raw replies and trace lines to
tests/unit/fixtures/smckernel (the unit tests' fixtures).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
sys.path[:0] = [str(HERE), str(PROJECT)]

PORT = 5001
UEID = "SMCTOP-LAB"
PLAN = [(100_000, 70_000), (150_000, 30_000)]  # (client sends, server answers) per SMC-R connection
FALLBACK = (5_000, 5_000)
PEERDECL, NOSMCDEV = 0x05000000, 0x03030000
FIXTURES = PROJECT / "tests" / "unit" / "fixtures" / "smckernel"
REFRESH = bool(os.environ.get("SMCTOP_LAB_REFRESH_FIXTURE"))
PY = ".venv/bin/python"


# ---------------------------------------------------------------------------- the guest side


def _share() -> Path:
    return Path(os.environ["LAB_SHARE"])


def _start_source(share: Path, capture):
    from smckernel.record import KernelRecording
    from smckernel.source import KernelSource
    from stack.events import to_json

    src = KernelSource(rate=2.0, trace=True, capture=capture, stats_every=1.0, raw_trace_log=str(share / "trace.txt"))
    out = open(share / "events.jsonl", "w")
    lock = threading.Lock()

    def write(e) -> None:
        with lock:
            out.write(to_json(e) + "\n")

    src.add_listener(write)
    rec = KernelRecording(str(share / "rec.pcapng"), src)
    src.start()
    return src, rec, out


def _stop_source(share: Path, src, rec, out) -> None:
    src.close()
    stats = rec.close()
    out.close()
    status = src.status()
    status["recorder"] = {"events": stats.events, "frames": stats.frames, "dropped_events": stats.dropped_events,
                          "dropped_frames": stats.dropped_frames}  # fmt: skip
    tracefs = Path("/sys/kernel/tracing")  # what the session leaves behind: nothing
    status["leftovers"] = [x for x in (tracefs / "dynamic_events").read_text().splitlines() if "smck" in x]
    status["leftovers"] += [p.name for p in (tracefs / "instances").iterdir() if p.name.startswith("smckernel-")]
    (share / "status.json").write_text(json.dumps(status, indent=1, sort_keys=True))


def _save_raw(share: Path, name: str) -> None:
    """The kernel's raw replies now (the unit tests' fixtures), read in this process."""
    from smckernel.kio import save_raw
    from smckernel.source import KernelReader

    reader = KernelReader()
    try:
        raw, _ = reader.read()
    finally:
        reader.close()
    save_raw(raw, str(share / "raw" / name))


def guest_server() -> None:
    import ksmc

    share = _share()
    ksmc.ueid_add(UEID)
    src, rec, out = _start_source(share, None)
    lst = ksmc.listen("0.0.0.0", PORT)
    socks = []
    for _i in range(len(PLAN) + 1):
        s = ksmc.accept(lst, timeout=120)
        s.settimeout(180)  # the client runs the readers (smckernel, smctop) between its sends and its closes
        up, down, note = ksmc.recv_line(s, "header line").split()
        ksmc.recv_exactly(s, int(up))
        if note == "drop-ueid":
            ksmc.ueid_remove(UEID)  # the next connection falls back: this side declines (NOSMCDEV)
        s.sendall(os.urandom(int(down)))
        socks.append(s)
    time.sleep(0.5)
    _save_raw(share, "server-open")
    for s in socks:  # the client closes first; then this side
        while s.recv(1 << 16):
            pass
        s.close()
    time.sleep(1.0)
    _stop_source(share, src, rec, out)
    lst.close()


def _gid(index: int = 1) -> str:
    return Path(f"/sys/class/infiniband/rxe0/ports/1/gids/{index}").read_text().strip()


def guest_client() -> None:
    import ksmc

    share = _share()
    peer = os.environ["LAB_PEER_IP"]
    ksmc.ueid_add(UEID)
    src, rec, out = _start_source(share, ["eth0"])
    truth: dict = {"conns": [], "gid": _gid(), "ifindex": int(Path("/sys/class/net/eth0/ifindex").read_text())}
    socks = []
    plan = [(up, down, "drop-ueid" if i == len(PLAN) - 1 else "-") for i, (up, down) in enumerate(PLAN)] + [(*FALLBACK, "-")]
    for i, (up, down, note) in enumerate(plan):
        t0 = time.monotonic()
        s = ksmc.connect(peer, PORT, timeout=90)
        t1 = time.monotonic()
        s.settimeout(60)
        s.sendall(f"{up} {down} {note}\n".encode() + os.urandom(up))
        ksmc.recv_exactly(s, down)
        local, remote = ksmc.names(s)
        truth["conns"].append({"i": i, "local": local, "peer": remote, "sent": up + len(f"{up} {down} {note}\n"), "received": down,
                               "connect": [t0, t1], "fallback": i == len(PLAN)})  # fmt: skip
        socks.append(s)
    time.sleep(1.5)  # some polls with everything open and still
    truth["ss"] = ksmc.ss()
    truth["t_ss"] = time.monotonic()
    env = dict(os.environ)
    once = subprocess.run([PY, "-m", "smckernel", "--once", "--json"], capture_output=True, text=True, check=True)
    (share / "once-root.json").write_text(once.stdout)
    # the same through smctop's own command line (issue 18: `smctop --kernel --once --json`)
    smctop = Path(PY).with_name("smctop")
    r = subprocess.run([str(smctop), "--kernel", "--once", "--json"], capture_output=True, text=True, timeout=120)
    (share / "once-smctop.json").write_text(r.stdout)
    (share / "once-smctop.err").write_text(r.stderr + f"\nrc={r.returncode}\n")
    from smckernel.once import render_json, render_text
    from smckernel.source import snapshot_once

    (share / "once-root.txt").write_text(render_text(snapshot_once()))
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    r = subprocess.run(nobody + [PY, "-m", "smckernel", "--once", "--json"], capture_output=True, text=True, env=env)
    (share / "once-nobody.json").write_text(r.stdout)
    (share / "once-nobody.err").write_text(r.stderr + f"\nrc={r.returncode}\n")
    r = subprocess.run(nobody + [PY, "-m", "smckernel", "--seconds", "1.5", "--rate", "5"], capture_output=True, text=True, env=env)
    (share / "nobody-run.jsonl").write_text(r.stdout)
    (share / "nobody-run.err").write_text(r.stderr + f"\nrc={r.returncode}\n")
    subprocess.run(["ip", "netns", "add", "other"], check=True)
    for name, ns in (("netns-name", "other"), ("netns-path", "/proc/1/ns/net")):
        (share / f"once-{name}.json").write_text(render_json(snapshot_once(ns)))
    _save_raw(share, "client-open")
    for s in socks:
        s.shutdown(socket.SHUT_WR)
        while s.recv(1 << 16):
            pass
        s.close()
    time.sleep(1.5)
    _save_raw(share, "client-closed")
    truth["ueids_before_flush"] = ksmc.ueid_list()
    ksmc.ueid_flush()
    truth["ueids_after_flush"] = ksmc.ueid_list()
    (share / "truth.json").write_text(json.dumps(truth, indent=1))
    _stop_source(share, src, rec, out)
    _bench(share)


def _bench(share: Path, n: int = 1000) -> None:
    """The poll cost with n AF_SMC sockets (listeners: cheap to make, listed like any other)."""
    import resource

    import ksmc

    from smckernel.model import from_kernel
    from smckernel.source import KernelReader
    from smckernel.tracker import Tracker

    resource.setrlimit(resource.RLIMIT_NOFILE, (4 * n, 4 * n))
    lst = [ksmc.listen("127.0.0.1", 20000 + i, backlog=1) for i in range(n)]
    reader = KernelReader()
    tracker = Tracker("a", stats_every=None)
    reads, parses = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        raw, complete = reader.read()
        t1 = time.perf_counter()
        snap = from_kernel(raw, time.monotonic(), "a")
        tracker.snapshot(snap, complete)
        t2 = time.perf_counter()
        reads.append(t1 - t0)
        parses.append(t2 - t1)
    reader.close()
    for s in lst:
        s.close()
    (share / "bench.json").write_text(json.dumps({"sockets": len(snap.connections), "read_ms": sorted(reads)[2] * 1000,
                                                  "parse_ms": sorted(parses)[2] * 1000}))  # fmt: skip


if __name__ == "__main__":
    {"guest-client": guest_client, "guest-server": guest_server}[sys.argv[1]]()
    sys.exit(0)


# ---------------------------------------------------------------------------- the host side

import lab  # noqa: E402
import pytest  # noqa: E402

from stack import events as ev  # noqa: E402

pytestmark = pytest.mark.lab
EXTRA_FIELDS = {"source", "len"}  # what the kernel source adds to the schema (see docs/kernel-source.md)


@pytest.fixture(scope="module")
def run() -> dict:
    a, b = lab.run_pair(f"{PY} tests/lab/test_kernel_source.py guest-client", f"{PY} tests/lab/test_kernel_source.py guest-server", timeout=240)
    for r in (a, b):
        r.check()
    out: dict = {"a": a, "b": b}
    for side, r in (("a", a), ("b", b)):
        out[side + "_events"] = [ev.check_record(json.loads(line)) for line in (r.share / "events.jsonl").read_text().splitlines()]
        out[side + "_status"] = json.loads((r.share / "status.json").read_text())
    out["truth"] = json.loads((a.share / "truth.json").read_text())
    if REFRESH:
        _refresh(a, b)
    return out


def _refresh(a, b) -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for r, names in ((a, ("client-open", "client-closed")), (b, ("server-open",))):
        for name in names:
            dst = FIXTURES / name
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(r.share / "raw" / name, dst)
    for r, name in ((a, "trace-client.txt"), (b, "trace-server.txt")):
        (FIXTURES / name).write_text((r.share / "trace.txt").read_text())
    (FIXTURES / "truth-client.json").write_text((a.share / "truth.json").read_text())


def _of(events: list, kind: str, conn: int | None = None, **match) -> list:
    return [e for e in events if e.kind == kind and (conn is None or e.conn == conn) and all(e.fields.get(k) == v for k, v in match.items())]


def _conn_ids(events: list, local: str, peer: str) -> list[int]:
    return [e.conn for e in _of(events, "conn.open") if e.fields.get("local") == local and e.fields.get("peer") == peer]


def _cursor(nbytes: int, size: int) -> str:
    return f"{nbytes // size}:{nbytes % size}"


def test_every_event_keeps_the_schema_and_says_where_it_came_from(run) -> None:
    for side in ("a", "b"):
        events = run[side + "_events"]
        assert events, f"VM {side}: no events"
        for e in events:
            assert e.fields.get("source") in ("snapshot", "tracepoint", "probe", "capture"), e
            d = ev.to_dict(e)
            for k in EXTRA_FIELDS:
                d.pop(k, None)
            ev.check_record(d, strict=True)  # nothing else outside the schema
        sources = {e.fields["source"] for e in events}
        assert {"snapshot", "tracepoint", "probe"} <= sources, (side, sources)
    assert "capture" in {e.fields["source"] for e in run["a_events"]}


def test_every_connection_smc_diag_shows_appears_with_its_mode_reason_and_the_applications_byte_counts(run) -> None:
    events, truth = run["a_events"], run["truth"]
    ss = {(r["local"], r["peer"]): r for r in truth["ss"]}
    assert len(ss) == len(PLAN) + 1, truth["ss"]
    for c in truth["conns"]:
        diag = ss[(c["local"], c["peer"])]
        (cid,) = _conn_ids(events, c["local"], c["peer"])
        modes = _of(events, "conn.mode", cid)
        assert len(modes) == 1 and modes[0].fields["mode"] == diag["mode"], (c, modes, diag)
        if c["fallback"]:
            assert (diag["mode"], diag["fallback_reason"], diag["peer_diagnosis"]) == ("TCP", PEERDECL, NOSMCDEV), diag
            assert modes[0].fields["reason"] == PEERDECL
            continue
        assert diag["mode"] == "SMCR" and diag["lgr"], diag
        m = modes[0].fields
        assert m["version"] == 2 and m["rmb_size"] == m["peer_rmb_size"] == 65536, m
        # the last cursors the source reported: exactly what the applications moved
        tx = _of(events, "conn.cursor", cid, side="tx", source="snapshot")[-1].fields
        rx = _of(events, "conn.cursor", cid, side="rx", source="snapshot")[-1].fields
        assert tx["prod"] == tx["sent"] == tx["fin"] == _cursor(c["sent"], m["peer_rmb_size"]), (c, tx)
        assert rx["prod"] == _cursor(c["received"], m["rmb_size"]), (c, rx)
        assert rx["bytes_to_rcv"] == 0
        assert int(tx["prod"].split(":")[0]) >= 1  # the cursor wrapped (more than the RMB was sent): the wrap counts


def test_connections_close_when_they_leave_smc_diag(run) -> None:
    events, truth = run["a_events"], run["truth"]
    for c in truth["conns"]:
        (cid,) = _conn_ids(events, c["local"], c["peer"])
        states = [(e.fields["old"], e.fields["new"]) for e in _of(events, "conn.state", cid)]
        assert states[-1][1] == "CLOSED" and states[0] == ("", "ACTIVE"), states


def test_the_forced_fallback_has_the_exact_codes_from_the_probe_at_the_time_of_connect(run) -> None:
    events, truth = run["a_events"], run["truth"]
    (c,) = [c for c in truth["conns"] if c["fallback"]]
    (cid,) = _conn_ids(events, c["local"], c["peer"])
    (fb,) = _of(events, "conn.fallback", cid)
    assert fb.fields["source"] == "probe", fb
    assert (fb.fields["reason"], fb.fields["peer_diagnosis"]) == (PEERDECL, NOSMCDEV), fb
    assert fb.fields["reason_text"] == "0x05000000 PEERDECL" and fb.fields["peer_diagnosis_text"] == "0x03030000 NOSMCDEV"
    t0, t1 = c["connect"]
    assert t0 <= fb.t <= t1, f"the fallback at {fb.t} is outside connect() [{t0}, {t1}]"
    # the server declined: its probe saw the Decline it sent, and its own fallback reason
    server = run["b_events"]
    sport = c["local"]
    (sid,) = [e.conn for e in _of(server, "conn.open") if e.fields.get("peer") == sport]
    (decl,) = _of(server, "clc.msg", sid, type="Decline")
    assert decl.fields["diagnosis"] == NOSMCDEV and decl.fields["dir"] == "tx" and decl.fields["source"] == "probe"
    (sfb,) = _of(server, "conn.fallback", sid)
    assert sfb.fields["reason"] == NOSMCDEV and _of(server, "conn.open", sid)[0].fields["role"] == "server"


def test_link_groups_and_links_match_genl_and_the_devices_gids(run) -> None:
    a_events, truth = run["a_events"], run["truth"]
    once = json.loads((run["a"].share / "once-root.json").read_text())
    (g,) = once["link_groups"]
    assert (g["role"], g["type"], g["version"], g["negotiated_eid"], g["peer_host"]) == ("client", "SINGLE", 2, UEID, "b"), g
    (lk,) = once["links"]
    assert lk["link_group"] == g["id"] and lk["state"] == "LINK_ACTIVE" and lk["conns"] == len(PLAN), lk
    assert lk["gid"] == truth["gid"] and lk["ib_dev"] == "rxe0" and lk["ifindex"] == truth["ifindex"] and lk["net_dev"] == "eth0", lk
    smcr = [c for c in once["connections"] if c["mode"] == "SMCR"]
    assert len(smcr) == len(PLAN) and all(c["link_group"]["id"] == g["id"] and c["link_group"]["gid"] == truth["gid"] for c in smcr)
    # the events tell the same group: created SINGLE (client), its link added and ACTIVE
    created = [e for e in _of(a_events, "lgr.state", new="SINGLE") if e.lgr == g["id"]]
    assert created and created[0].fields["old"] == "NONE", created
    assert (created[0].fields["role"], created[0].fields["version"]) == ("client", 2), created
    assert _of(a_events, "link.event", event="added") and any(e.lgr == g["id"] and e.link == lk["id"] for e in _of(a_events, "link.state", new="LINK_ACTIVE"))
    # the server's view is the mirror image
    b_once = json.loads((run["b"].share / "raw" / "server-open" / "ifnames.json").read_text())
    assert b_once  # its raw replies were saved (the unit fixtures)


def test_tracepoints_and_probes_give_events_as_root_and_leave_nothing_behind(run) -> None:
    events, truth, status = run["a_events"], run["truth"], run["a_status"]
    assert status["leftovers"] == [] and run["b_status"]["leftovers"] == [], (status["leftovers"], run["b_status"]["leftovers"])
    assert set(status["tracepoints"]) == {"smc_switch_to_fallback", "smc_tx_sendmsg", "smc_rx_recvmsg", "smcr_link_down"}, status
    assert {"fallback", "cdc_rx", "llc_rx", "lgr_type", "sendmsg", "recvmsg", "decline"} <= set(status["probes"]), status
    for c in truth["conns"]:
        if c["fallback"]:
            continue
        (cid,) = _conn_ids(events, c["local"], c["peer"])
        sent = sum(e.fields["len"] for e in _of(events, "conn.cursor", cid, side="tx", source="tracepoint"))
        read = sum(e.fields["len"] for e in _of(events, "conn.cursor", cid, side="rx", source="tracepoint"))
        assert (sent, read) == (c["sent"], c["received"]), (c, sent, read)
        assert _of(events, "cdc.msg", cid, source="probe"), "no CDC seen by the probe"
    llc = {e.fields["type"] for e in _of(events, "llc.msg", source="probe")}
    assert "LLC CONFIRM LINK v2" in llc, llc
    assert any(e.fields["source"] == "probe" for e in _of(events, "lgr.state")), "smcr_lgr_set_type did not show"


def test_received_cdc_bytes_seen_by_the_probe_are_the_bytes_the_capture_carries_at_the_same_time(run) -> None:
    events = run["a_events"]
    assert run["a_status"]["frames_dropped"] == 0, run["a_status"]  # else a frame's absence proves nothing
    probed = _of(events, "cdc.msg", source="probe")
    wire = {(e.fields["raw"]): e for e in _of(events, "cdc.msg", source="capture", dir="rx")}
    assert probed and wire
    matched = 0
    for p in probed:
        w = wire.get(p.fields["raw"])
        assert w is not None, f"the probe saw a CDC the capture did not carry: {p}"
        assert abs(w.t - p.t) < 0.2, (w, p)  # one clock: wire time and trace time agree
        assert p.conn is not None and w.conn in (None, p.conn), (w, p)  # a capture alone knows a token once smc_diag showed it
        matched += w.conn == p.conn
    assert matched, "no captured CDC was tied to its connection"


def test_the_recording_has_the_events_and_the_frames_in_one_timeline(run) -> None:
    from dissectors.capture import read_events
    from dissectors.pcap import read_capture
    from dissectors.pcapng import LINKTYPE_ETHERNET

    pcap = run["a"].share / "rec.pcapng"
    st = run["a_status"]["recorder"]
    assert st["frames"] > 0 and st["events"] > 0 and not st["dropped_events"] and not st["dropped_frames"], st
    recorded = list(read_events(str(pcap)))
    assert len(recorded) == len(run["a_events"]), (len(recorded), len(run["a_events"]))
    packets = list(read_capture(pcap.read_bytes()))
    roce = [p for p in packets if p.linktype == LINKTYPE_ETHERNET and len(p.data) > 42 and p.data[23] == 17
            and int.from_bytes(p.data[36:38], "big") == 4791]  # fmt: skip
    assert len(roce) == st["frames"], (len(roce), st)
    # a CDC the probe read and the frame that carried it sit side by side in the file's one timeline
    offset = run["a_status"]["clock_offset_ns"]
    probe = next(e for e in recorded if e.kind == "cdc.msg" and e.fields.get("source") == "probe")
    raw = bytes.fromhex(probe.fields["raw"])
    # an RC retry carries the same bytes again (Soft-RoCE under TCG retries now and then): the
    # copy the probe saw is one of them
    frames = [p for p in roce if raw in p.data]
    assert frames, "no captured frame carries the CDC the probe read"
    near = min(abs(f.timestamp_ns - (probe.t * 1e9 + offset)) for f in frames)
    assert near < 0.2e9, ([f.timestamp_ns for f in frames], probe.t, offset)


def test_unprivileged_reading_works_and_names_the_missing_privilege(run) -> None:
    share = run["a"].share
    root = json.loads((share / "once-root.json").read_text())
    nobody = json.loads((share / "once-nobody.json").read_text())
    key = lambda c: (c["local"], c["peer"], c["state"], c["mode"])  # noqa: E731
    assert sorted(map(key, nobody["connections"])) == sorted(map(key, root["connections"])), (nobody, root)
    assert nobody["link_groups"] == root["link_groups"] and nobody["stats"]["counters"]["smcr"]["clnt_v2_succ"] == len(PLAN)
    err = (share / "nobody-run.err").read_text()
    assert "rc=0" in err and "tracepoints and probes need root" in err, err
    lines = [json.loads(x) for x in (share / "nobody-run.jsonl").read_text().splitlines()]
    assert lines and {x["source"] for x in lines} == {"snapshot"}, lines[:3]


def test_smctop_kernel_once_json_shows_what_smc_diag_and_genl_show(run) -> None:
    """`smctop --kernel --once --json` (smctop's command line, not the module) against the
    kernel's own answers taken a moment earlier, everything open and still."""
    share = run["a"].share
    err = (share / "once-smctop.err").read_text()
    assert "rc=0" in err, err
    ours = json.loads((share / "once-smctop.json").read_text())
    root = json.loads((share / "once-root.json").read_text())
    assert {"connections", "link_groups", "links", "devices", "stats"} <= set(ours)
    key = lambda c: (c["local"], c["peer"], c["state"], c["mode"], (c.get("fallback_reason") or {}).get("hex"))  # noqa: E731
    assert sorted(map(key, ours["connections"])) == sorted(map(key, root["connections"]))
    ss = run["truth"]["ss"]
    assert sorted((c["local"], c["peer"], c["mode"]) for c in ours["connections"]) == sorted((c["local"], c["peer"], c["mode"]) for c in ss)
    assert [(g["id"], g["type"]) for g in ours["link_groups"]] == [(g["id"], g["type"]) for g in root["link_groups"]]


def test_a_named_network_namespace_is_read_by_name_and_by_path(run) -> None:
    share = run["a"].share
    other = json.loads((share / "once-netns-name.json").read_text())
    assert other["connections"] == [] and other["link_groups"] == [], other  # smc_diag is per namespace
    assert other["host"].endswith("/other")
    same = json.loads((share / "once-netns-path.json").read_text())
    assert len(same["connections"]) == len(PLAN) + 1, same


def test_the_statistics_count_what_happened(run) -> None:
    once = json.loads((run["a"].share / "once-root.json").read_text())
    truth = run["truth"]
    smcr = once["stats"]["counters"]["smcr"]
    assert smcr["clnt_v2_succ"] == len(PLAN)
    assert smcr["tx_bytes"] == sum(c["sent"] for c in truth["conns"] if not c["fallback"])
    fb = once["stats"]["fallback"]
    assert fb["client"] == 1 and fb["reasons"] == [{"role": "client", "code": PEERDECL, "hex": "0x05000000", "name": "PEERDECL",
                                                    "text": "0x05000000 PEERDECL", "count": 1}], fb  # fmt: skip
    text = (run["a"].share / "once-root.txt").read_text()
    assert "TCP 0x05000000/0x03030000  PEERDECL/NOSMCDEV" in text and "LINK_ACTIVE" in text, text


def test_ksmc_lists_and_flushes_the_ueids(run) -> None:
    assert (run["truth"]["ueids_before_flush"], run["truth"]["ueids_after_flush"]) == ([UEID], [])


def test_poll_cost_per_thousand_sockets_is_reported(run) -> None:
    bench = json.loads((run["a"].share / "bench.json").read_text())
    assert bench["sockets"] >= 1000, bench
    print(f"poll of {bench['sockets']} AF_SMC sockets in the TCG VM: read {bench['read_ms']:.1f} ms, parse+diff {bench['parse_ms']:.1f} ms")
