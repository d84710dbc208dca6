"""Trace lines and the tracker, on the lab kernel's real trace_pipe lines and replies
(tests/unit/fixtures/smckernel, recorded by tests/lab/test_kernel_source.py) and on lines
that are not what tracefs writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smckernel import kio, model
from smckernel import trace as ktrace
from smckernel.tracker import Tracker
from stack import events as ev
from stack.wire import cdc

FIX = Path(__file__).resolve().parent / "fixtures" / "smckernel"
TRUTH = json.loads((FIX / "truth-client.json").read_text())
PEERDECL, NOSMCDEV = 0x05000000, 0x03030000
EXTRA = ("source", "len")  # what the kernel source adds to the event schema


def lines(name: str) -> list[str]:
    return (FIX / name).read_text().splitlines()


def records(name: str) -> list[ktrace.TraceRecord]:
    return [ktrace.parse_line(x) for x in lines(name)]


def valid(e: ev.Event) -> None:
    d = ev.to_dict(e)
    for k in EXTRA:
        d.pop(k, None)
    ev.check_record(json.loads(json.dumps(d)), strict=True)


def replay(trace_file: str, snapshots: list[str], host: str = "a") -> tuple[Tracker, list[ev.Event]]:
    """What the source would emit for these records and snapshots (the snapshots after the
    records, as the lab's were taken after the exchange)."""
    recs = records(trace_file)
    tr = Tracker(host, stats_every=None)
    tr.installed = {r.event for r in recs if r.where}  # the probes the lines come from
    out: list[ev.Event] = []
    for r in recs:
        out += tr.trace(r)
    t = max(r.t for r in recs) + 1
    for name in snapshots:
        out += tr.snapshot(model.from_kernel(kio.load_raw(str(FIX / name)), t, host))
        t += 1
    return tr, out


# ---------------------------------------------------------------------------- lines


def test_every_recorded_line_parses_with_its_time_task_and_arguments() -> None:
    for name in ("trace-client.txt", "trace-server.txt"):
        recs = records(name)
        assert recs and all(r.t > 0 and r.pid > 0 and r.event for r in recs)
        assert sorted(r.t for r in recs)[0] >= 0
    fb = next(r for r in records("trace-client.txt") if r.event == "fallback")
    assert fb.where.startswith("smc_switch_to_fallback+0x0/") and fb.comm == "python"
    assert (fb.int("reason"), fb.int("peer_diag")) == (PEERDECL, NOSMCDEV)
    (conn,) = [c for c in TRUTH["conns"] if c["fallback"]]
    assert ktrace.tuple_of(fb) == (conn["local"], conn["peer"])  # ports in host and network order, addresses as __be32
    assert conn["connect"][0] <= fb.t <= conn["connect"][1]  # trace_clock mono is time.monotonic()


def test_plain_tracepoint_lines_and_probe_lines_differ_only_in_what_they_say() -> None:
    recs = records("trace-client.txt")
    tp = next(r for r in recs if r.event == "smc_switch_to_fallback")
    assert tp.where == "" and tp.int("fallback_rsn") == PEERDECL and tp.int("net") == 1 and "sk" in tp.args  # a pointer, nothing more
    probe = next(r for r in recs if r.event == "fallback")
    assert probe.where.startswith("smc_switch_to_fallback+0x0/") and probe.int("reason") == PEERDECL and probe.int("sport") > 0
    send = next(r for r in recs if r.event == "sendmsg")  # the tracepoint read through a probe on it
    assert send.where.startswith("__probestub_smc_tx_sendmsg") and send.int("token") > 0 and send.int("len") > 0
    assert not any(r.event == "smc_tx_sendmsg" for r in recs)  # its plain records would only repeat the probe's


def test_a_received_cdc_is_the_bytes_the_kernel_received() -> None:
    r = next(r for r in records("trace-client.txt") if r.event == "cdc_rx")
    raw = ktrace.raw_bytes(r)
    msg = cdc.decode(raw)
    assert len(raw) == 44 and raw[:2] == b"\xfe\x2c" and msg.token == r.int("token") and msg.seqno >= 1


@pytest.mark.parametrize("line, event, args", [
    ("  <idle>-0       [001] d.s2.  1234.500001: smcr_link_down: lnk=0000 lgr=0000 net=1 state=3 dev=rxe0 location=smc_x+0x1/0x2 [smc]",
     "smcr_link_down", {"state": "3", "dev": "rxe0"}),
    ("      my task-name-12  [000] .....    15.000000: decline: (smc_clc_send_decline+0x0/0x10 [smc]) diag=0x3030000 version=2",
     "decline", {"diag": "0x3030000", "version": "2"}),
    ("  kworker/0:1-7 (-------) [000] ...1.    2.5: link_active: (smc_llc_link_active+0x0/0x1 [smc]) dev=\"rx e0\" link=1",
     "link_active", {"dev": '"rx e0"', "link": "1"}),
])  # fmt: skip
def test_lines_with_spaces_in_names_quoted_strings_and_tgid_columns(line: str, event: str, args: dict) -> None:
    r = ktrace.parse_line(line)
    assert r.event == event and all(r.args[k] == v for k, v in args.items())
    if event == "link_active":
        assert r.str("dev") == "rx e0" and r.comm == "kworker/0:1"


def test_lost_events_become_a_dropped_record() -> None:
    r = ktrace.parse_line("CPU:1 [LOST 42 EVENTS]")
    assert (r.event, r.lost, r.cpu) == ("LOST", 42, 1)
    (e,) = Tracker("a").trace(r)
    assert e.kind == "events.dropped" and e.fields["count"] == 42
    valid(e)


@pytest.mark.parametrize("line", ["", "garbage", "# tracer: nop", "x-1 [0] ....  1e99: ev: a=1", "a-1 [000] .... 99999999999.0: ev: x=1"])
def test_lines_that_are_not_records_raise_trace_format_errors(line: str) -> None:
    with pytest.raises(ktrace.TraceFormatError):
        ktrace.parse_line(line)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_is_a_record_or_a_trace_format_error_and_never_a_bad_event(text: str) -> None:
    try:
        r = ktrace.parse_line(text)
    except ktrace.TraceFormatError:
        return
    for e in Tracker("a").trace(r):
        valid(e)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(ktrace.PROBES)), st.dictionaries(st.sampled_from(
    ["reason", "peer_diag", "listen", "sport", "dport", "saddr", "daddr", "token", "lgr", "link", "old", "new", "role", "version",
     "len", "from", "to", "diag", "dev_err", "state"] + [f"r{i}" for i in range(12)]),
    st.one_of(st.integers(-(1 << 70), 1 << 70).map(str), st.integers(0, 1 << 64).map(hex), st.text(max_size=5))))  # fmt: skip
def test_probe_records_with_any_values_give_only_events_the_schema_takes(event: str, args: dict) -> None:
    r = ktrace.TraceRecord(t=12.5, event=event, pid=3, flags="..s1.", where="x+0x0/0x1 [smc]", args=args)
    for e in Tracker("a").trace(r):
        valid(e)


# ---------------------------------------------------------------------------- the tracker


def test_the_client_trace_and_snapshots_give_valid_events_from_each_source() -> None:
    _tr, out = replay("trace-client.txt", ["client-open", "client-closed"])
    for e in out:
        valid(e)
        assert e.fields["source"] in ("snapshot", "tracepoint", "probe")
    assert {e.fields["source"] for e in out} == {"snapshot", "tracepoint", "probe"}


def test_the_fallback_comes_from_the_probe_with_the_exact_codes_and_is_not_told_twice() -> None:
    _tr, out = replay("trace-client.txt", ["client-open"])
    (c,) = [c for c in TRUTH["conns"] if c["fallback"]]
    (op,) = [e for e in out if e.kind == "conn.open" and e.fields["local"] == c["local"]]
    assert op.fields["role"] == "client" and op.fields["source"] in ("probe", "tracepoint")
    fbs = [e for e in out if e.kind == "conn.fallback" and e.conn == op.conn]
    assert len(fbs) == 1, fbs
    (fb,) = fbs
    assert (fb.fields["reason"], fb.fields["peer_diagnosis"], fb.fields["source"]) == (PEERDECL, NOSMCDEV, "probe")
    assert c["connect"][0] <= fb.t <= c["connect"][1]
    assert [e.fields["mode"] for e in out if e.kind == "conn.mode" and e.conn == op.conn] == ["TCP"]


def test_the_server_saw_its_own_decline_and_fallback() -> None:
    _tr, out = replay("trace-server.txt", ["server-open"], host="b")
    (c,) = [c for c in TRUTH["conns"] if c["fallback"]]
    (op,) = [e for e in out if e.kind == "conn.open" and e.fields["peer"] == c["local"]]
    assert op.fields["role"] == "server"  # listen_smc is set on an accepted socket
    (decl,) = [e for e in out if e.kind == "clc.msg" and e.conn == op.conn]
    assert (decl.fields["type"], decl.fields["dir"], decl.fields["diagnosis"]) == ("Decline", "tx", NOSMCDEV)
    (fb,) = [e for e in out if e.kind == "conn.fallback" and e.conn == op.conn]
    assert fb.fields["reason"] == NOSMCDEV and "peer_diagnosis" not in fb.fields


def test_sendmsg_and_recvmsg_add_up_to_the_applications_bytes() -> None:
    _tr, out = replay("trace-client.txt", ["client-open"])
    for c in TRUTH["conns"]:
        if c["fallback"]:
            continue
        ids = {e.conn for e in out if e.kind == "conn.open" and e.fields["local"] == c["local"]}
        assert len(ids) == 1, ids  # the probes and smc_diag name one connection
        (cid,) = ids
        sent = sum(
            e.fields["len"] for e in out if e.kind == "conn.cursor" and e.conn == cid and e.fields["source"] == "tracepoint" and e.fields["side"] == "tx"
        )
        read = sum(
            e.fields["len"] for e in out if e.kind == "conn.cursor" and e.conn == cid and e.fields["source"] == "tracepoint" and e.fields["side"] == "rx"
        )
        assert (sent, read) == (c["sent"], c["received"])
        assert any(e.kind == "cdc.msg" and e.conn == cid for e in out)


def test_the_link_group_is_created_once_with_role_and_version_and_outlives_its_connections() -> None:
    _tr, out = replay("trace-client.txt", ["client-open", "client-closed"])
    lgr = [e for e in out if e.kind == "lgr.state"]
    assert len(lgr) == 1, lgr  # created; a client's group lingers (SMC_LGR_FREE_DELAY_CLNT) after its last connection
    assert (lgr[0].fields["old"], lgr[0].fields["new"], lgr[0].fields["source"]) == ("NONE", "SINGLE", "probe")
    assert (lgr[0].fields["role"], lgr[0].fields["version"]) == ("client", 2)
    link = [(e.kind, e.fields.get("event") or e.fields.get("new")) for e in out if e.kind in ("link.state", "link.event")]
    assert link == [("link.event", "added"), ("link.state", "LINK_ACTIVE")], link
    gone = _tr.snapshot(model.from_kernel(model.RawDumps(genl={3: b""}, diag=None), 1e4, "a"), {"link_groups", "links"})
    assert [(e.kind, e.fields.get("event") or e.fields.get("new")) for e in gone] == [("link.event", "deleted"), ("lgr.state", "NONE")]
    llc = [e.fields["type"] for e in out if e.kind == "llc.msg"]
    assert "LLC CONFIRM LINK v2" in llc and "LLC ADD LINK v2 (first 44 bytes)" in llc, llc  # ADD LINK v2 is 88 bytes


def test_a_probe_before_smc_diag_and_smc_diag_during_the_handshake_name_one_connection() -> None:
    from smckernel.model import Conn, Snapshot

    tr = Tracker("a", stats_every=None)
    init = Snapshot("a", 1.0, connections=[Conn(state="INIT", cookie=7)])
    assert tr.snapshot(init) == []
    rec = ktrace.parse_line("p-9 [000] ..... 1.5: fallback: (smc_switch_to_fallback+0x0/0x1 [smc]) reason=0x3010000 peer_diag=0x0 "
                            "listen=0x0 sport=40000 dport=35091 saddr=0x100020a daddr=0x200020a net=1")  # fmt: skip
    out = tr.trace(rec)
    assert [e.kind for e in out] == ["conn.open", "conn.fallback", "conn.mode"]
    cid = out[0].conn
    active = Snapshot("a", 2.0, connections=[Conn(state="ACTIVE", mode="TCP", cookie=7, local="10.2.0.1:40000", peer="10.2.0.2:5001",
                                                  fallback_reason=0x03010000, peer_diagnosis=0)])  # fmt: skip
    out = tr.snapshot(active)
    assert [(e.kind, e.conn) for e in out] == [("conn.state", cid)]  # opened, fell back: only the state is new
    assert active.connections[0].id == cid
    out = tr.snapshot(Snapshot("a", 3.0))
    assert [(e.kind, e.conn, e.fields["new"]) for e in out] == [("conn.state", cid, "CLOSED")]


def test_records_of_another_network_namespace_are_left_out() -> None:
    tr = Tracker("a")
    tr.net_cookie = 2
    r = next(r for r in records("trace-client.txt") if r.event == "fallback")
    assert tr.trace(r) == [] and tr.skipped["another network namespace"] == 1


def test_snapshots_alone_tell_open_mode_cursors_and_close() -> None:
    tr = Tracker("a", stats_every=None)
    t = 1.0
    out = []
    for name in ("client-open", "client-open", "client-closed"):
        out += tr.snapshot(model.from_kernel(kio.load_raw(str(FIX / name)), t, "a"))
        t += 1
    for e in out:
        valid(e)
    kinds = [e.kind for e in out]
    assert kinds.count("conn.open") == 3 and kinds.count("conn.mode") == 3 and kinds.count("conn.fallback") == 1
    assert [e.fields["new"] for e in out if e.kind == "conn.state"].count("CLOSED") == 3
    assert kinds.count("conn.cursor") == 4  # rx and tx of each SMC-R connection, once (the second poll saw no move)
    fb = next(e for e in out if e.kind == "conn.fallback")
    assert fb.fields["source"] == "snapshot" and fb.fields["cause"] == "smc_diag"


def test_a_plain_tracepoint_times_the_fallback_smc_diag_shows_when_no_probe_is_there() -> None:
    tr = Tracker("a", stats_every=None)
    tp = next(r for r in records("trace-client.txt") if r.event == "smc_switch_to_fallback")
    assert tr.trace(tp) == []
    out = tr.snapshot(model.from_kernel(kio.load_raw(str(FIX / "client-open")), tp.t + 3, "a"))
    (fb,) = [e for e in out if e.kind == "conn.fallback"]
    assert (fb.t, fb.fields["source"], fb.fields["reason"]) == (tp.t, "tracepoint", PEERDECL)


def test_smctops_model_takes_the_kernel_sources_events_and_snapshots() -> None:
    """What smctop --kernel will feed its model: the events (probes, tracepoints, snapshots)
    and the stack-shaped snapshot; the model must show the connections as the kernel does."""
    from smctop.model import Model

    tr, out = replay("trace-client.txt", ["client-open"])
    m = Model()
    for e in sorted(out, key=lambda e: e.t):
        m.feed(e)
    want = {(c["local"], "TCP" if c["fallback"] else "SMCR") for c in TRUTH["conns"]}
    assert want <= {(c.local, c.mode) for c in m.conns.values() if c.local}  # from the events alone
    snap = model.from_kernel(kio.load_raw(str(FIX / "client-open")), max(e.t for e in out) + 1, "a")
    tr.snapshot(snap)  # the source's tracker numbers the snapshot's connections as it numbered the events'
    m.apply_snapshot(model.to_stack_snapshot(snap))
    shown = {(c.local, c.mode) for c in m.conns.values() if c.local}
    assert want <= shown and len(shown) == len(want), shown
