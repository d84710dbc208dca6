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
    assert doc["stats"]["srv"]["counters"]["smc_server"] == 5 and doc["stats"]["srv"]["counters"]["fallback_server"] == 2


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


def _once(capsys, *argv: str) -> str:
    from smctop.app import main

    assert main([*argv, "--once"]) == 0
    return capsys.readouterr().out


def _block(text: str, view: str) -> list[str]:
    return text.split(f"# {view}\n", 1)[1].split("\n\n", 1)[0].splitlines()


def test_a_connection_in_its_handshake_shows_its_addresses(tmp_path, capsys):
    """A recording cut in the handshake (conn.open, the client's Proposal): the model knows
    both addresses, but smcss -a printed the INIT row with none (smcss's way for a kernel
    socket, which has none yet)."""
    lines = (ROOT / "tests/golden/session.jsonl").read_text().splitlines()[:4]
    path = tmp_path / "handshake.jsonl"
    path.write_text("\n".join(lines) + "\n")
    text = _once(capsys, "--replay", str(path))
    client = text.split("# replay SMC on client\n", 1)[1]
    rows = _block(client, "smcss -a")[1:]
    assert len(rows) == 1 and rows[0].split() == ["INIT", "-", "-", "127.0.0.1:40001", "127.0.0.2:5000", "-", "-"]
    head = _block(client, "smcss -a")[0]
    assert rows[0].index("127.0.0.1:40001") == head.index("Local Address")  # under its header
    assert rows[0].index("127.0.0.2:5000") == head.index("Peer Address")


def test_records_and_snapshots_without_a_host_are_named_question_mark(tmp_path, capsys):
    """``"host": null`` made a host named "": '# replay SMC on ' and an empty Host column.
    The model names it "?" (not known); an attached stack's, by its socket's path."""
    snap = json.loads(json.dumps(SRV))
    snap["host"] = None
    recs = [json.loads(line) for line in (ROOT / "tests/golden/session.jsonl").read_text().splitlines()[:2]]
    for r in recs:
        r["host"] = None
    recs.append({"t": 0.1, "kind": "stats", "host": None, "lgr": None, "link": None, "conn": None, "snapshot": snap})
    path = tmp_path / "nohost.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = _once(capsys, "--replay", str(path))
    assert "# replay SMC on ?\n" in text and "SMC on \n" not in text
    assert text.count("# replay SMC on") == 1  # the records and the snapshot: one host
    # conn 1 of the records and of the snapshot: one connection, its addresses from the records, its link from the snapshot
    assert [r.split()[3:6] for r in _block(text, "smcss -a")[1:]] == [["127.0.0.1:40001", "127.0.0.2:5000", "-"]]
    assert _block(text, "smcss -R")[1].split()[7:9] == ["SERV", "127.213.47.1"]
    doc = json.loads(_once(capsys, "--replay", str(path), "--json"))
    assert doc["hosts"] == ["?"] and {c["host"] for c in doc["connections"]} == {"?"}


def test_an_attached_stack_that_names_no_host_is_named_by_its_socket(tmp_path):
    import asyncio

    from smctop.sources import AttachSource

    sock = str(tmp_path / "anon.sock")
    snap = json.loads(json.dumps(SRV))
    snap["host"] = None
    lines = [{"type": "hello", "host": None}, {"type": "snapshot", "snapshot": snap}]

    async def go():
        async def serve(reader, writer):
            for msg in lines:
                writer.write(json.dumps(msg).encode() + b"\n")
            await writer.drain()
            await reader.read()  # until smctop closes

        server = await asyncio.start_unix_server(serve, sock)
        src, m = AttachSource([sock]), Model()
        await src.start()
        try:
            for _ in range(100):
                src.poll(m)
                if m.hosts:
                    break
                await asyncio.sleep(0.02)
        finally:
            await src.stop()
            server.close()
        return src, m

    src, m = asyncio.run(asyncio.wait_for(go(), 30))
    assert list(m.hosts) == [sock] and src.hostnames[sock] == sock and src.describe() == f"attach {sock}"
    assert m.conns[(sock, 1)].local == "127.213.47.1:5000"


def test_json_has_one_shape_for_one_host_and_for_several():
    """One host gave smckernel's one-snapshot document (``host`` at the top, ``stats`` its
    counters), several another (``hosts``, entries naming their host, ``stats`` per host)."""
    one = json.loads(render(_snaps(), as_json=True))
    m = Model()
    for host in ("srv", "cli"):
        m.apply_snapshot({**json.loads(json.dumps(SRV)), "host": host})
    two = json.loads(render(model_snapshots(m, "attach"), as_json=True))
    assert set(one) == set(two) == {"hosts", "namespaces", "source", "connections", "link_groups", "links", "devices", "stats", "notes"}
    assert one["hosts"] == ["srv"] and two["hosts"] == ["cli", "srv"]
    assert [(c["host"], c["local"]) for c in one["connections"]] == [("srv", "127.213.47.1:5000")]
    assert sorted(c["host"] for c in two["connections"]) == ["cli", "srv"]
    assert [(lk["host"], lk["ib_dev"]) for lk in one["links"]] == [("srv", "127.213.47.1")]
    assert one["stats"]["srv"] == two["stats"]["srv"] and one["stats"]["srv"]["counters"]["smc_server"] == 5
