"""``smctop --once`` text from the model: ``smcr stats`` from the counters a stack's snapshot
carries (it said "unknown" while ``--json`` had them), the port and link counts the same in
every table, and link groups a recording deleted not listed as current."""

from __future__ import annotations

import json
from pathlib import Path

from smctop.model import Model
from smctop.once import model_snapshots, render
from smctop.sources import ReplaySource, load_events

ROOT = Path(__file__).resolve().parents[2]

SRV = {  # a stack's snapshot (Stack.snapshot()): one SMC-R connection on link 1, the second device idle
    "host": "srv", "t": 10.0,
    "stats": {"smc_client": 0, "smc_server": 5, "fallback_client": 0, "fallback_server": 2, "handshake_errors": 1},
    "fallbacks": [{"role": "server", "reason": 0x03070000, "count": 2}],
    "devices": [{"name": "127.213.47.1", "up": True, "mtu": 4096}, {"name": "127.213.48.1", "up": True, "mtu": 4096}],
    "lgrs": [{"id": "00c0ff00", "role": "server", "type": "SINGLE", "crit": True, "conns": 1,
              "links": [{"id": 1, "state": "LINK_ACTIVE", "device": "127.213.47.1", "gid": "::ffff:127.213.47.1",
                         "peer_gid": "::ffff:127.213.47.2", "conns": 1}]}],
    "conns": [{"conn": 1, "state": "ACTIVE", "mode": "SMCR", "role": "server", "local": "127.213.47.1:5000",
               "peer": "127.213.47.2:40000", "version": 2, "token": 7, "rmb_size": 65536, "peer_rmb_size": 65536,
               "lgr": "00c0ff00", "link": 1}],
}  # fmt: skip


def _snaps():
    m = Model()
    m.apply_snapshot(json.loads(json.dumps(SRV)))
    return model_snapshots(m, "attach")


def test_smcr_stats_uses_the_counters_the_snapshot_carries():
    text = render(_snaps(), as_json=False)
    stats = text.split("# smcr stats\n", 1)[1]
    assert "unknown (the attach source does not count them)" not in text
    assert "  Total connections handled             8\n" in stats  # 5 SMC-R, 2 fallbacks, 1 handshake error
    assert "  SMC connections                       5 (client 0, server 5)\n" in stats
    assert "  Handshake errors                      1\n" in stats
    assert "  TCP fallback                          2 (client 0, server 2)\n" in stats
    assert "     0x03070000 DIFFPREFIX                 2\n" in stats
    # the same numbers as --json's counters
    doc = json.loads(render(_snaps(), as_json=True))
    assert doc["stats"]["counters"]["smc_server"] == 5 and doc["stats"]["counters"]["fallback_server"] == 2


def test_ib_port_and_links_agree_across_tables():
    text = render(_snaps(), as_json=False)
    part = {name: body for name, body in (chunk.split("\n", 1) for chunk in text.split("# ")[1:])}
    link = part["smcr linkgroup link-show"].splitlines()[1].split()
    assert link[8:10] == ["127.213.47.1", "1"]  # IB-Dev, IB-P (was "-")
    conn = part["smcss -R"].splitlines()[1].split()
    assert conn[7:10] == ["SERV", "127.213.47.1", "01"]  # Role, IB-device, Port (was "-")
    devices = {row.split()[1]: row.split() for row in part["smcr device"].splitlines()[1:] if row}
    assert devices["127.213.47.1"][2] == "1" and devices["127.213.47.1"][6] == "1"  # IB-P 1, #Links 1 (was "-")
    assert devices["127.213.48.1"][6] == "0"  # no link uses the second device


def test_link_groups_a_recording_deleted_are_not_listed_at_its_end():
    """The kernel interop capture deletes lgr1 and lgr2 (DELETE LINK for all links); a late LLC
    message of lgr2 brought it back as a group of type NONE, role '-' and no connections."""
    path = str(ROOT / "tests/lab/fixtures/kernel_interop_smcr.pcap")
    src = ReplaySource(path, events=load_events(path))
    m = Model()
    src.t = src.end_t  # as --once does: the state at the recording's end
    src.poll(m)
    m.advance(src.end_t)
    m.finish()
    assert m.kinds["llc.msg"] == 39 and len(m.hosts) == 2  # the whole recording is in the model
    assert not [g for g in m.lgrs.values() if not g.terminated]
    text = render(model_snapshots(m, "replay"), as_json=False)
    for block in text.split("# smcr linkgroup show\n")[1:]:
        assert block.split("\n\n", 1)[0].splitlines() == ["LG-ID    LG-Role  LG-Type  VLAN  #Conns  PNET-ID "]
