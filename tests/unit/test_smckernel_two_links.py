"""The tracker on a kernel link group with two links and a failover, from the lab's real
trace lines and replies (tests/unit/fixtures/smckernel/two-links, recorded by
tests/lab/test_kernel_two_links.py: a SYMMETRIC group on rxe0 + rxe1, eth1 taken down on
both VMs under traffic, then brought back up).

A poll's dumps are read before it is stamped, so a snapshot can describe the group as it
was just before a change a probe has already told of: such a snapshot must not turn the
change back (a SINGLE -> SYM -> SINGLE flicker, a deleted link re-added), and a change the
probes missed must still come from the next snapshot."""

from __future__ import annotations

import json
from pathlib import Path

from smckernel import kio, model
from smckernel import trace as ktrace
from smckernel.tracker import Tracker
from stack import events as ev

FIX = Path(__file__).resolve().parent / "fixtures" / "smckernel" / "two-links"
EXTRA = ("source",)


def records(name: str) -> list[ktrace.TraceRecord]:
    return [ktrace.parse_line(x) for x in (FIX / name).read_text().splitlines()]


def steps(side: str) -> dict:
    return json.loads((FIX / f"steps-{side}.json").read_text())


def snap(name: str, t: float, host: str = "a") -> model.Snapshot:
    return model.from_kernel(kio.load_raw(str(FIX / name)), t, host)


def tracker(recs: list[ktrace.TraceRecord], host: str = "a") -> Tracker:
    tr = Tracker(host, stats_every=None)
    tr.installed = {r.event for r in recs if r.where}
    return tr


def lgr_states(events: list[ev.Event]) -> list[tuple[str, str, str]]:
    return [(e.fields["old"], e.fields["new"], e.fields["source"]) for e in events if e.kind == "lgr.state"]


def the_failover(side: str) -> list[ktrace.TraceRecord]:
    """The side's records up to its failover's end: the group's SYM -> SINGLE and the rxe1
    link's smcr_link_clear, whichever came later (the server sets the type first, the
    client, told by the server's DELETE LINK, clears the link first)."""
    recs = records(f"trace-{side}.txt")
    t_down = steps("a" if side == "client" else "b")["down_begin"]
    lid = rxe1_link(snap("sym", 0.0))
    i = next(i for i, r in enumerate(recs) if r.event == "lgr_type" and r.t >= t_down and r.int("new") == 1)
    j = next(i for i, r in enumerate(recs) if r.event == "link_clear" and r.t >= t_down and r.int("link") == lid)
    return recs[: max(i, j) + 1]


def rxe1_link(s: model.Snapshot) -> int:
    (lk,) = [lk for lk in s.links if lk.ib_dev == "rxe1"]
    return lk.id


def test_the_recorded_lines_tell_the_group_single_sym_single_and_the_rxe1_links_failover_and_deletion() -> None:
    lid = rxe1_link(snap("sym", 0.0))
    for side, vm in (("client", "a"), ("server", "b")):
        recs = records(f"trace-{side}.txt")
        tr = tracker(recs, vm)
        out = [e for r in recs for e in tr.trace(r)]
        for e in out:
            d = ev.to_dict(e)
            for k in EXTRA:
                d.pop(k, None)
            ev.check_record(json.loads(json.dumps(d)), strict=True)
        back = [("SINGLE", "SYM")] if steps("a")["sym_again"] else []  # (eth1 back up: the kernel may or may not add the link again)
        assert [(o, n) for o, n, _ in lgr_states(out)] == [("NONE", "SINGLE"), ("SINGLE", "SYM"), ("SYM", "SINGLE"), *back], side
        t_down = steps(vm)["down_begin"]
        mine = [e for e in out if e.kind == "link.event" and e.link == lid and e.t >= t_down]
        kinds = [e.fields["event"] for e in mine]
        assert "failover_begin" in kinds and "deleted" in kinds, (side, kinds)
        (deleted,) = [e for e in mine if e.fields["event"] == "deleted"]
        # the DELETE LINK's reason: the server queued it itself after its own link down; the client received it
        by = "this host" if side == "server" else "the peer"
        assert (deleted.fields["reason"], deleted.fields["reason_text"]) == (0x00010000, f"0x00010000 LOST_PATH ({by}'s DELETE LINK)")
        if side == "server":  # its own port went down first: smcr_port_err -> smcr_link_down
            assert kinds.index("down") < kinds.index("deleted")
            (down,) = [e for e in mine if e.fields["event"] == "down"]
            assert down.fields["reason"] == "smcr_link_down from smcr_port_err", down
        else:
            assert "down" not in kinds, kinds


def about_rxe1(events: list[ev.Event], lid: int) -> list[ev.Event]:
    return [e for e in events if e.kind == "lgr.state" or (e.kind in ("link.event", "link.state") and e.link == lid)]


def test_a_snapshot_read_before_the_failover_does_not_turn_it_back() -> None:
    lid = rxe1_link(snap("sym", 0.0))
    recs = the_failover("client")
    tr = tracker(recs)
    told = [e for r in recs for e in tr.trace(r)]
    assert lgr_states(told)[-1] == ("SYM", "SINGLE", "probe")
    assert any(e.kind == "link.event" and e.fields["event"] == "deleted" and e.link == lid for e in told), told
    t = recs[-1].t + 0.05
    # this poll's dumps were read while the group was still SYM with two links
    assert about_rxe1(tr.snapshot(snap("sym", t)), lid) == []
    # the next poll agrees with the probes: nothing to tell either
    assert about_rxe1(tr.snapshot(snap("single", t + 0.5)), lid) == []
    assert tr.lgrs[snap("single", 0).link_groups[0].id].type == "SINGLE"


def test_a_contradiction_that_lasts_is_told_one_poll_later() -> None:
    lid = rxe1_link(snap("sym", 0.0))
    recs = the_failover("client")
    tr = tracker(recs)
    for r in recs:
        tr.trace(r)
    t = recs[-1].t + 0.05
    assert about_rxe1(tr.snapshot(snap("sym", t)), lid) == []
    again = tr.snapshot(snap("sym", t + 0.5))  # SYM with two links once more: the kernel's word, believed now
    assert lgr_states(again) == [("SINGLE", "SYM", "snapshot")]
    assert [(e.kind, e.fields.get("event")) for e in again if e.link == lid][:1] == [("link.event", "added")]


def test_snapshots_alone_tell_the_failover() -> None:
    lid = rxe1_link(snap("sym", 0.0))
    tr = Tracker("a", stats_every=None)
    first = tr.snapshot(snap("sym", 1.0))
    assert [(o, n) for o, n, _ in lgr_states(first)] == [("NONE", "SYM")]
    out = tr.snapshot(snap("single", 2.0))
    assert lgr_states(out) == [("SYM", "SINGLE", "snapshot")]
    assert [(e.fields["event"], e.link) for e in out if e.kind == "link.event" and e.link == lid] == [("deleted", lid)]
    # and what else genl and the device dump showed then: rxe1's port down
    assert [e.fields["device"] for e in out if e.kind == "link.event" and e.fields["event"] == "port_down"] == ["rxe1"]


def test_a_group_still_setting_up_its_first_link_is_told_once_it_has_a_type() -> None:
    s = snap("sym", 1.0)
    s.link_groups[0].type = "NONE"  # as genl shows a group between smc_lgr_create and its first CONFIRM LINK
    s.links.clear()
    tr = Tracker("a", stats_every=None)
    assert lgr_states(tr.snapshot(s, frozenset({"link_groups", "links"}))) == []
    assert [(o, n) for o, n, _ in lgr_states(tr.snapshot(snap("sym", 2.0)))] == [("NONE", "SYM")]


def test_a_link_a_poll_saw_leave_genl_is_deleted_once_when_the_kernel_clears_it() -> None:
    """genl lists only usable links: a link going down leaves the list before smcr_link_clear."""
    lid = rxe1_link(snap("sym", 0.0))
    recs = the_failover("client")
    k = next(i for i, r in enumerate(recs) if r.event == "link_clear" and r.int("link") == lid)
    f = next(i for i, r in enumerate(recs) if r.t >= steps("a")["down_begin"])
    tr = tracker(recs)
    out = []
    for r in recs[:f]:
        out += tr.trace(r)
    out += tr.snapshot(snap("sym", recs[f].t - 0.01))  # a poll while SYM, before the failover
    for r in recs[f:k]:
        out += tr.trace(r)
    out += tr.snapshot(snap("single", recs[k].t - 0.001))  # read after the link left genl's list, before its clear
    for r in recs[k:]:
        out += tr.trace(r)
    out += tr.snapshot(snap("single", recs[-1].t + 0.5))
    deleted = [e for e in out if e.kind == "link.event" and e.fields["event"] == "deleted" and e.link == lid]
    assert len(deleted) == 1 and deleted[0].fields["source"] == "snapshot", deleted
    assert deleted[0].fields["reason_text"] == "0x00010000 LOST_PATH (the peer's DELETE LINK)"
