"""What an operator coming from smc-tools and htop reaches for (issue 17 items 4, 6, 8): the
events view searching far back, standing still and in time order; devices, LISTEN rows,
counters, UEIDs and the stack's security counters from snapshots; sorting by column (key,
header click, reverse, indicator); smctop's actions in the command palette."""

from __future__ import annotations

import re

from tuihelp import SIZE, advance, make_app, run

from smctop.app import SmctopApp
from smctop.model import Model
from smctop.sources import SyntheticSource
from smctop.synthetic import SyntheticStack
from smctop.views import stats_text
from smctop.widgets import RowTable

DELTA = {  # a fourth host's snapshot: what Stack.snapshot() carries, plus keys other helpers may add
    "host": "delta", "t": 1002.5, "stats": {"smc_client": 4, "smc_server": 0, "fallback_client": 1, "fallback_server": 0, "handshake_errors": 2},
    "devices": [{"name": "mlx5_0", "up": True, "mtu": 5, "pnetid": "NET1"}, {"name": "mlx5_1", "up": False, "mtu": 5}],
    "fallbacks": [], "conns": [], "failovers": [],
    "rdma": {"mlx5_0": {"tx_frames": 1234, "rx_frames": 1200, "tx_dropped": 0, "rx_dropped": 3, "icrc_errors": 0, "bad_frames": 0,
                        "psn_out_of_window": 7, "suspect_ignored": 2, "port_up": True, "engine": "native"}, "mlx5_1": "not a dict"},
    "listeners": [{"local": "10.0.0.4:5000", "smc": True}, {"bad": 1}], "ueids": ["SMCTOP", 5],
    "limits": {"max_conns": 1000, "conns_refused": 3}, "stats_extra": "not numbers",
    "lgrs": [{"id": "00d0d000", "role": "client", "type": "SINGLE", "links": [
        {"id": 1, "state": "LINK_ACTIVE", "device": "mlx5_0", "psn_out_of_window": 4, "suspect_frames": 1, "odd": "text"}]}],
}  # fmt: skip


def table(app, table_id: str) -> RowTable:
    return app.query_one(table_id, RowTable)


def test_events_filter_searches_far_back_clears_on_no_match_and_keeps_time_order():
    async def go():
        source = SyntheticSource(SyntheticStack(3, fallbacks=2))
        app = SmctopApp(source, model=Model(events_kept=100), poll_interval=3600)  # the recent log: a second or two
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, source, 2)
            await pilot.press("f")  # the failover: rare events
            await advance(app, pilot, source, 10)
            assert not any(e.kind == "link.event" and e.get("event") == "failover_begin" for e in app.model.events)  # long gone from it
            await pilot.press("3", "slash", *"failover begins", "enter")
            await pilot.pause()
            rows = table(app, "#events-table").items
            assert len(rows) == 2 and {e.host for e in rows} == {"alpha", "beta"}, rows
            await pilot.press("slash", *"nothing matches this", "enter")
            await pilot.pause()
            assert table(app, "#events-table").items == []
            assert "failover" not in "\n".join(table(app, "#events-table").lines())
            await pilot.press("slash", "escape")
            await pilot.pause()
            rows = table(app, "#events-table").items
            assert [e.t for e in rows] == sorted(e.t for e in rows)  # time order across hosts

    run(go())


def test_events_not_following_stand_still():
    async def go():
        app, src = make_app(3)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 2)
            await pilot.press("3", "F")
            await pilot.pause()
            before = list(table(app, "#events-table").items)
            await advance(app, pilot, src, 2)
            assert table(app, "#events-table").items == before  # the view stands still
            assert "NOT FOLLOWING" in app.screen_text()
            await pilot.press("F")
            await pilot.pause()
            assert len(table(app, "#events-table").items) > len(before) and "following" in app.screen_text()

    run(go())


def test_devices_listen_rows_counters_ueids_and_security_counters_from_a_snapshot():
    async def go():
        app, src = make_app(2)
        async with app.run_test(size=(250, 40)) as pilot:
            await advance(app, pilot, src, 2)
            app.model.apply_snapshot(DELTA)
            await pilot.press("6")
            await pilot.pause()
            text = "\n".join(table(app, "#devices-table").lines())
            lines = text.splitlines()
            assert "PNET ID" in lines[0] and "PSN out-of-window" in lines[0]
            assert any(re.match(r"delta +mlx5_0 +ACTIVE +NET1 +4096 .* 1,234 +1,200 +0 +3 +0 +7 +2$", ln) for ln in lines), text
            assert any(re.match(r"delta +mlx5_1 +DOWN ", ln) for ln in lines), text
            assert "1 with the port DOWN" in app.screen_text()
            await pilot.press("2")
            await pilot.pause()
            assert "LISTEN" not in "\n".join(table(app, "#conns-table").lines())  # as smcss: connections only
            await pilot.press("a")  # as smcss -a
            await pilot.pause()
            conns = "\n".join(table(app, "#conns-table").lines())
            assert re.search(r"^beta +LISTEN +SMC ", conns, re.M) and "127.30.0.2:5000" in conns  # the synthetic hosts' listeners too
            assert re.search(r"^delta +LISTEN +SMC ", conns, re.M) and "10.0.0.4:5000" in conns and "3 listening" in app.screen_text()
            await pilot.press("7")
            await pilot.pause()
            assert "delta" in app.screen_text()
            stats = stats_text(app.model).plain
            assert "handshake errors                     2" in stats and "UEIDs                       SMCTOP" in stats
            assert "psn out of window 7" in stats and "suspect ignored 2" in stats
            assert re.search(r"link 00d0d000/1 +psn out of window 4  suspect frames 1", stats)  # per link, when the stack reports it
            assert "limits.conns_refused 3" in stats and "limits.max_conns 1,000" in stats
            assert "open SMC-R conns by version v2: 2" in stats and "RMB usage                   2 RMBs, 524.3 kB" in stats

    run(go())


def test_sort_by_key_by_header_click_and_reversed_with_an_indicator():
    async def go():
        app, src = make_app(3)
        async with app.run_test(size=(250, 40)) as pilot:
            await advance(app, pilot, src, 2)
            await pilot.press("2")
            await pilot.pause()
            t = table(app, "#conns-table")
            assert t.lines()[0].startswith("Host▲")
            x = 0
            for c in t.columns:
                if c.key == "sent":
                    break
                x += c.width + 1
            await pilot.click("#conns-table", offset=(x + 1, 0))
            await pilot.pause()
            sent = [c.bytes_sent for c in t.items]
            assert "Sent▼" in t.lines()[0] and sent == sorted(sent, reverse=True) and sent[0] > 0
            assert "connections sorted by sent descending" in app.screen_text()
            await pilot.press("S")
            await pilot.pause()
            sent = [c.bytes_sent for c in t.items]
            assert "Sent▲" in t.lines()[0] and sent == sorted(sent)
            await pilot.press("s")  # s cycles the usual orders
            await pilot.pause()
            assert "Host▲" in t.lines()[0] or "Rate▼" in t.lines()[0]

    run(go())


def test_command_palette_offers_smctops_actions():
    async def go():
        app, src = make_app(1)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 1)
            titles = [c.title for c in app.get_system_commands(app.screen)]
            for want in ("smctop: fail a link", "smctop: restore the failed link", "smctop: start / stop traffic", "smctop: show Devices"):
                assert want in titles, titles
            assert not any("replay" in t for t in titles)  # not with this source
            cmd = next(c for c in app.get_system_commands(app.screen) if c.title == "smctop: fail a link")
            cmd.callback()
            await pilot.pause()
            await pilot.pause()
            assert ("fail_link",) in src.calls

    run(go())


def test_failovers_count_only_when_connections_moved():
    from stack.events import Event

    m = Model()
    m.feed(Event(1.0, "link.event", "b", "g1", 1, fields={"event": "failover_begin", "to_link": 2, "conns": 3}))
    m.feed(Event(1.004, "link.event", "b", "g1", 1, fields={"event": "failover_end", "to_link": 2, "conns": 3, "failed": 0, "duration_ms": 4.0}))
    m.feed(Event(2.0, "link.event", "b", "g1", 2, fields={"event": "failover_end", "to_link": 3, "conns": 0, "failed": 0, "duration_ms": 0.0}))
    t = m.totals()
    assert t["failovers"] == 1 and t["link_deletions"] == 1


def test_a_fallen_back_connection_says_why_not_smc_r():
    async def go():
        app, src = make_app(1, fallbacks=1)
        async with app.run_test(size=(200, 50)) as pilot:
            await advance(app, pilot, src, 1)
            key = next(k for k, c in app.model.conns.items() if c.host == "alpha" and c.mode == "TCP")
            from smctop.screens import ConnDetailScreen

            app.push_screen(ConnDetailScreen(app.model, key))
            await pilot.pause()
            text = app.screen_text()
            assert "why not SMC-R" in text
            assert "gamma (server) declined with 0x03070000 DIFFPREFIX: IP prefix / subnet mismatch" in text
            assert "CLC: " in text and "Decline" in text
            assert "check: the two hosts' IP subnets" in text

    run(go())


def test_every_reason_code_in_event_details_is_hex_and_name():
    """Whatever kind carries a reason code (decline, DELETE LINK, ADD LINK reject), the events
    view writes it as smc-tools does: 0x03070000 DIFFPREFIX, never 50790400."""
    from smctop import format as fmt
    from stack.events import SCHEMA, Event

    seen = 0
    for kind in SCHEMA.values():
        variants = [(kind, {})] + [(sub, {kind.sub: name}) for name, sub in kind.subs.items()]
        for k, base in variants:
            for f in k.fields:
                if f.type not in ("decline", "dl_reason", "al_reason"):
                    continue
                value = 0x03070000
                e = Event(1.0, kind.name, "h", "g", 1, 1, fields={"dir": "tx", "type": "T", "rejected": True, **base, f.name: value})
                text = fmt.event_details(e)
                assert "0x03070000" in text and str(value) not in text, (kind.name, base, f.name, text)
                seen += 1
    assert seen >= 6  # conn.fallback, conn.mode, clc.msg, llc.msg, link.event deleted, lgr.state, ...


def test_help_scrolls_at_80x24():
    async def go():
        app, src = make_app(1)
        async with app.run_test(size=(80, 24)) as pilot:
            await advance(app, pilot, src, 1)
            await pilot.press("question_mark")
            await pilot.pause()
            assert "start / stop traffic" in app.screen_text() and "ctrl+p: every action" not in app.screen_text()
            await pilot.press("pagedown", "pagedown")
            await pilot.pause()
            assert "ctrl+p: every action by name" in app.screen_text()  # the end of the help, scrolled to

    run(go())


def test_a_click_on_a_title_sorts_the_other_tables_too():
    async def go():
        app, src = make_app(3)
        async with app.run_test(size=(250, 40)) as pilot:
            await advance(app, pilot, src, 3)
            await pilot.press("6")
            await pilot.pause()
            t = table(app, "#devices-table")
            x = sum(c.width + 1 for c in t.columns[: [c.key for c in t.columns].index("tx")])
            await pilot.click("#devices-table", offset=(x + 1, 0))
            await pilot.pause()
            frames = [r["c"]["tx_frames"] for r in t.items]
            assert frames == sorted(frames) and frames[0] < frames[-1] and "TX frames▲" in t.lines()[0]
            await pilot.click("#devices-table", offset=(x + 1, 0))
            await pilot.pause()
            frames = [r["c"]["tx_frames"] for r in t.items]
            assert frames == sorted(frames, reverse=True) and "TX frames▼" in t.lines()[0]
            await advance(app, pilot, src, 1)  # and the order holds as the view updates
            assert [r["c"]["tx_frames"] for r in t.items] == sorted((r["c"]["tx_frames"] for r in t.items), reverse=True)

    run(go())


def test_text_sort_key_orders_numbers_with_units_by_value():
    from smctop.widgets import text_key

    cells = ["1.2 MB/s", "950.0 kB/s", "0", "3,000", "256K", "1M", "-", "alpha"]
    assert sorted(cells, key=text_key) == ["0", "3,000", "256K", "950.0 kB/s", "1M", "1.2 MB/s", "-", "alpha"]


def test_events_filter_finds_a_failovers_rewind_and_validation_cdc_after_the_data_path_flood():
    """A failover's cursor rewind ("N bytes to write again") and its validation CDC are data-path
    kinds; they were kept only in the recent log, which the data path refills in about a second,
    so a filter for them found nothing later."""
    from stack.events import Event

    async def go():
        source = SyntheticSource(SyntheticStack(2))
        app = SmctopApp(source, model=Model(events_kept=100), poll_interval=3600)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, source, 1)
            t = source.t
            m = app.model
            m.feed(Event(t, "conn.cursor", "alpha", "00a1a000", 2, 1, {"side": "tx", "prod": "0:1000", "cause": "failover", "rewound": 65536}))
            m.feed(Event(t, "cdc.msg", "alpha", "00a1a000", 2, 1, {"dir": "tx", "seqno": 7, "flags": ["failover_validation"], "prod": "0:0", "cons": "0:0"}))
            m.feed(Event(t, "cdc.msg", "alpha", "00a1a000", 2, 1, {"dir": "tx", "seqno": 8, "flags": ["write_blocked"], "prod": "0:0", "cons": "0:0"}))
            for i in range(1000):  # the flood: plain cursor moves push both out of the recent log
                m.feed(Event(t + 0.001 * (i + 1), "conn.cursor", "alpha", "00a1a000", 2, 1, {"side": "rx", "prod": f"0:{i}", "cons": f"0:{i}"}))
            assert not any(e.get("rewound") for e in m.events)
            kept = [e for e in m.rare if e.kind in ("conn.cursor", "cdc.msg")]
            assert [e.kind for e in kept] == ["conn.cursor", "cdc.msg"] and kept[0].get("rewound") == 65536  # not the flow-control CDC
            await pilot.press("3", "slash", *"write again", "enter")
            await pilot.pause()
            rows = table(app, "#events-table").items
            assert [e.get("rewound") for e in rows] == [65536], rows
            await pilot.press("slash", *"failover_validation", "enter")
            await pilot.pause()
            assert [e.get("seqno") for e in table(app, "#events-table").items] == [7]

    run(go())
