"""Several files in one ``smc-trace summary`` / ``decode`` / ``export`` (dissectors/multifile.py):
two recordings that each have a "client" and a "server" (two runs of smc-traffic, two
hosts' captures) were merged into one row per host name and connection number, so two
different connections became one, their bytes added. A host name that more than one file
has now names its file (``client@a.jsonl``); the same connection end in two files (the same
host name, 4-tuple and alert token) is counted once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.ipv6_roce import IPV6_BOTH_WAYS, IPV6_HOST_PAIRS, write_ipv6_pairs

from dissectors import cli
from dissectors.multifile import FileIndex, plan
from stack.events import Event

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "session.jsonl"


def _other_run(lines: list[str], port: int) -> list[str]:
    """The golden session as another run of it: the client's port and the alert tokens differ."""
    out = []
    for line in lines:
        d = json.loads(line)
        for key in ("local", "peer"):
            if d.get(key) == "127.0.0.1:40001":
                d[key] = f"127.0.0.1:{port}"
        if d.get("kind") == "clc.msg" and isinstance(d.get("token"), int):
            d["token"] += 1
        out.append(json.dumps(d, sort_keys=True, separators=(",", ":")))
    return out


def _summary(capsys, *files) -> dict:
    assert cli.main(["summary", "--json", *map(str, files)]) == 0
    return json.loads(capsys.readouterr().out)


def _rows(s: dict) -> dict[tuple[str, int], dict]:
    return {(c["host"], c["conn"]): c for c in s["conns"]}


def test_two_runs_with_the_same_host_names_stay_apart(tmp_path, capsys):
    lines = GOLDEN.read_text().splitlines()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(lines) + "\n")
    b.write_text("\n".join(_other_run(lines, 40002)) + "\n")
    one = _rows(_summary(capsys, a))
    both = _summary(capsys, a, b)
    rows = _rows(both)
    assert set(rows) == {(f"{h}@{f}", 1) for h in ("client", "server") for f in ("a.jsonl", "b.jsonl")}, set(rows)
    assert both["connections"]["total"] == 2 and both["connections"]["ends"] == 4
    for f in ("a.jsonl", "b.jsonl"):
        for h in ("client", "server"):
            mine, alone = rows[(f"{h}@{f}", 1)], one[(h, 1)]
            assert (mine["moved"], mine["received"], mine["mode"], mine["role"]) == (alone["moved"], alone["received"], alone["mode"], alone["role"])
    assert rows[("client@b.jsonl", 1)]["local"] == "127.0.0.1:40002"
    assert {g["host"] for g in both["link_groups"]} == {"client@a.jsonl", "server@a.jsonl", "client@b.jsonl", "server@b.jsonl"}

    # decode and export name them alike; --host client is the client of either file
    assert cli.main(["decode", "--json", "--host", "client", str(a), str(b)]) == 0
    hosts = {json.loads(x)["host"] for x in capsys.readouterr().out.splitlines()}
    assert hosts == {"client@a.jsonl", "client@b.jsonl"}
    assert cli.main(["decode", "--host", "server@b.jsonl", str(a), str(b)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text and all("server@b.jsonl" in line for line in text)
    assert cli.main(["export", "--jsonl", str(a), str(b)]) == 0
    assert {json.loads(x)["host"] for x in capsys.readouterr().out.splitlines()} == {f"{h}@{f}" for h in ("client", "server") for f in ("a.jsonl", "b.jsonl")}

    # text: the host column is as wide as its longest name, not cut at 13 characters
    assert cli.main(["summary", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "client@a.jsonl " in out and "server@b.jsonl " in out


def test_the_same_connections_in_two_files_are_counted_once(tmp_path, capsys):
    """One session in two files (two recordings of the same hosts): each end once, its
    bytes once, as the file alone says."""
    sub = tmp_path / "other"
    sub.mkdir()
    a, b = tmp_path / "run.jsonl", sub / "run.jsonl"  # the same name: told apart by their paths
    a.write_text(GOLDEN.read_text())
    b.write_text(GOLDEN.read_text())
    alone = _summary(capsys, a)
    both = _summary(capsys, a, b)
    assert both["connections"] == alone["connections"]
    assert both["moved"] == alone["moved"]
    rows = _rows(both)
    assert set(rows) == {(f"{h}@{a}", 1) for h in ("client", "server")}, set(rows)
    for (h, conn), c in _rows(alone).items():
        assert {k: v for k, v in rows[(f"{h}@{a}", conn)].items() if k != "host"} == {k: v for k, v in c.items() if k != "host"}


@pytest.mark.parametrize("second", [IPV6_HOST_PAIRS, IPV6_BOTH_WAYS], ids=["the_same_capture", "one_pair_in_common"])
def test_captures_of_real_hosts_with_the_same_addresses(tmp_path, capsys, second):
    """Derived captures name hosts by address and number connections per file. The same
    connections in both (same addresses, ports and tokens) count once; another pair's
    connections between the same two addresses are the second file's own."""
    a, b = tmp_path / "a.pcapng", tmp_path / "b.pcapng"
    write_ipv6_pairs(str(a), IPV6_HOST_PAIRS, writes=True)
    write_ipv6_pairs(str(b), second, writes=True)
    alone = _summary(capsys, a)
    both = _summary(capsys, a, b)
    rows = _rows(both)
    # each connection's two ends; an end's second link (frames from its second address) is its own host's
    assert len(_rows(alone)) == 8 and all(c["local"] for c in _rows(alone).values()), _rows(alone)
    if second is IPV6_HOST_PAIRS:
        assert both["connections"] == alone["connections"] and len(rows) == 8
        assert both["moved"] == alone["moved"] > 0  # every RDMA WRITE once
        assert {h.partition("@")[2] for h, _ in rows} == {"a.pcapng"}
    else:  # group P is in both files (streams 0 and 2: 8 rows, once); b's group Q is fd00:1::b -> fd00:1::a
        assert len(rows) == 8 + 4, sorted(rows)
        assert {h for h, _ in rows if h.endswith("@b.pcapng")} == {f"{h}@b.pcapng" for h in ("fd00:1::a", "fd00:1::b")}
        assert {c for h, c in rows if h.endswith("@b.pcapng")} == {1, 3}
        assert {h for h, _ in rows if "@" not in h} == {"fd00:2::a", "fd00:2::b"}  # only a.pcapng has them
        assert {(c["local"], c["peer"]) for (h, _), c in rows.items() if h.endswith("@b.pcapng") and c["local"]} == {
            ("fd00:1::b:40001", "fd00:1::a:5000"), ("fd00:1::a:5000", "fd00:1::b:40001"),
            ("fd00:1::b:40003", "fd00:1::a:5000"), ("fd00:1::a:5000", "fd00:1::b:40003"),
        }  # fmt: skip


def test_each_file_is_read_once_unless_too_many_events_to_keep(tmp_path, capsys, monkeypatch):
    """Telling names apart needs every file before the timeline: the first reading keeps the
    events (up to cli.KEEP_READ in all) and the second is from memory; a summary took
    3.4 times one file's time for two. Beyond the limit a file is read again, with its own
    RoCE analysis anew: the same summary either way."""
    a, b = tmp_path / "a.pcapng", tmp_path / "b.pcapng"
    write_ipv6_pairs(str(a), IPV6_HOST_PAIRS, writes=True)
    write_ipv6_pairs(str(b), IPV6_BOTH_WAYS, writes=True)
    reads: list[str] = []
    real = cli.read_events

    def counted(path, *args, **kw):
        reads.append(str(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(cli, "read_events", counted)
    kept = _summary(capsys, a, b)
    assert sorted(reads) == [str(a), str(b)]
    reads.clear()
    monkeypatch.setattr(cli, "KEEP_READ", 5)
    again = _summary(capsys, a, b)
    assert sorted(reads) == sorted([str(a), str(b)] * 2)
    assert again == kept and kept["roce"] and kept["moved"] > 0


def _ev(host: str, conn: int, kind: str, **fields) -> Event:
    return Event(0.0, kind, host, None, None, conn, fields)


def test_plan_matches_an_end_only_by_its_tuple_and_a_token_in_common():
    def index(*events: Event) -> FileIndex:
        return FileIndex().feed(events)

    opened = _ev("h", 1, "conn.open", local="1.1.1.1:1", peer="2.2.2.2:2", role="client")
    a = index(opened, _ev("h", 1, "clc.msg", type="Confirm", token=7), _ev("h", 1, "rdma.write", length=1))
    same = index(opened, _ev("h", 3, "conn.open", local="1.1.1.1:1", peer="2.2.2.2:2"), _ev("h", 3, "clc.msg", token=7))
    other_token = index(_ev("h", 1, "conn.open", local="1.1.1.1:1", peer="2.2.2.2:2"), _ev("h", 1, "clc.msg", token=8))
    no_token = index(_ev("h", 1, "conn.open", local="1.1.1.1:1", peer="2.2.2.2:2"), _ev("", None, "trace.note"))
    p = plan([("x/a", a), ("y/b", same), ("c", other_token), ("d", no_token)])
    assert p["x/a"].names == {"h": "h@a"} and p["y/b"].names == {"h": "h@b"}
    assert p["x/a"].drop == set() and p["y/b"].drop == {("h", 3)}  # a has more events of it
    assert p["c"].drop == set() and p["d"].drop == set()
    assert "" not in p["d"].names
    kept = list(p["y/b"]([_ev("h", 3, "cdc.msg"), _ev("h", 1, "cdc.msg"), _ev("", None, "trace.note")]))
    assert [(e.host, e.conn) for e in kept] == [("h@b", 1), ("", None)]


def test_a_connection_counts_once_with_both_its_ends_and_once_with_one():
    """summary's connection count is per connection: both ends in the trace are one
    connection (its rows stay two, one per end); a trace of one host counts its ends."""
    from dissectors.summary import render, summarize
    from stack.events import from_json

    golden = Path(__file__).resolve().parents[1] / "golden" / "session.jsonl"
    events = [from_json(line) for line in golden.read_text().splitlines()]
    both = summarize(events)
    one = summarize(e for e in events if e.host == "client")
    b, o = both.to_dict()["connections"], one.to_dict()["connections"]
    assert b["ends"] == 2 * b["total"] > 0 and len(both.to_dict()["conns"]) == b["ends"]
    assert o["total"] == o["ends"] == b["total"]
    assert f"connections: {b['total']} ({b['ends']} ends) " in render(both) and "ends)" not in render(one).splitlines()[0]
