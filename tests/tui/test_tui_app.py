"""Every view and every action of the app, driven by Textual's Pilot against the synthetic source."""

from __future__ import annotations

import re

from tuihelp import SIZE, advance, make_app, run

from dissectors.capture import read_events
from smctop.app import SmctopApp
from smctop.model import Model
from smctop.screens import ConnDetailScreen, DeclineScreen, HelpScreen
from smctop.sources import ReplaySource, feed_timed, load_events
from smctop.synthetic import SyntheticStack
from smctop.views import ConnsPane, EventsPane
from smctop.widgets import RowTable
from stack.events import to_json


def table_text(app: SmctopApp, table_id: str) -> str:
    return "\n".join(app.query_one(table_id, RowTable).lines())


def test_header_shows_hosts_totals_rates_and_fallback_ratio():
    async def go():
        app, src = make_app(3)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 2)
            text = app.screen_text()
            header = "\n".join(text.splitlines()[:3])
            assert "hosts alpha beta gamma" in header
            assert "conns 6 (SMCR 6, TCP 0)" in header and "LGs 2 Crit 0" in header and "links 4/4 active" in header
            assert "fallback 40.0% (2 conns)" in header  # 4 of 10 connection ends: 2 connections, each seen at both ends
            assert "3.2 MB/s" in header  # 3 connections x ~1.05 MB/s, each byte once though both ends are watched

    run(go())


def test_connections_view_lists_smcss_columns_and_updates_in_place():
    async def go():
        app, src = make_app(3)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 1)
            table = app.query_one("#conns-table", RowTable)
            text = table_text(app, "#conns-table")
            for col in ("State", "Local Address", "Peer Address", "Mode", "Fallback reason", "RMB", "Fill", "rxprod-Cursor", "txcons-Cursor"):
                assert col in text
            assert [c.key for c in table.items] == [("alpha", 1), ("alpha", 2), ("alpha", 3), ("beta", 1), ("beta", 2), ("beta", 3)]
            beta1 = table.items[3]
            assert "256K" in text and "0:0" in text
            first = list(table.items)
            v = beta1.version_no
            await advance(app, pilot, src, 1)
            assert table.items == first  # same rows, same order: updated in place, not rebuilt
            assert beta1.version_no > v and beta1.rx_prod in table_text(app, "#conns-table")
            assert "1.1 MB/s" in table_text(app, "#conns-table")

    run(go())


def test_closed_fallback_connections_show_their_reason_on_request():
    async def go():
        app, src = make_app(1)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 1)
            assert "DIFFPREFIX" not in table_text(app, "#conns-table")  # closed ones hidden by default
            await pilot.press("c")
            await pilot.pause()
            text = table_text(app, "#conns-table")
            assert "gamma CLOSED" in text and re.search(r"gamma CLOSED TCP .*0x03070000 DIFFPREFIX", text)
            assert "0x05000000 PEERDECL/03070000" in text  # alpha's reason, and the peer's diagnosis
            await pilot.press("c")
            await pilot.pause()
            assert "DIFFPREFIX" not in table_text(app, "#conns-table")

    run(go())


def test_links_view_shows_types_crit_states_and_failover():
    async def go():
        app, src = make_app(3)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 2)
            await pilot.press("1")
            await pilot.pause()
            text = table_text(app, "#links-table")
            assert text.count(" SYM ") == 4 and "LINK_ACTIVE" in text and "Crit" in text and "Yes" not in text
            await pilot.press("f")  # fail beta's first link
            await advance(app, pilot, src, 1)
            text = table_text(app, "#links-table")
            assert ("fail_link",) in src.calls
            assert text.count(" SINGLE ") == 4 and " Yes " in text and "LINK_UNUSED" in text
            screen = app.screen_text()
            assert "link group 00b2b200 link 1 -> 2: 3 connections moved in 4.0 ms (port down on 127.30.0.2)" in screen
            assert "beta: port of 127.30.0.2 pulled" in screen  # the status line
            # the connections carry on over link 2
            alpha1 = app.model.conns[("alpha", 1)]
            assert alpha1.link == 2 and alpha1.rate > 0
            await pilot.press("r")
            await advance(app, pilot, src, 1)
            text = table_text(app, "#links-table")
            assert ("restore_link",) in src.calls and text.count(" SYM ") >= 4 and " Yes " not in text

    run(go())


def test_events_view_filters_follows_and_pauses():
    async def go():
        app, src = make_app(2)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 1)
            await pilot.press("3")
            await pilot.pause()
            table = app.query_one("#events-table", RowTable)
            assert table.follow and table.cursor == len(table.items) - 1  # following the newest
            kinds = {e.kind for e in table.items}
            assert {"conn.open", "cdc.msg", "conn.fallback", "lgr.state"} <= kinds
            await pilot.press("slash")
            await pilot.press(*"fallback")
            await pilot.press("enter")
            await pilot.pause()
            assert table.items and {e.kind for e in table.items} == {"conn.fallback"}
            assert app.query_one(EventsPane).filter == "fallback"
            n = len(table.items)
            await pilot.press("p")  # pause: the view stands still while the model keeps counting
            seq = app.model.seq
            await advance(app, pilot, src, 1)
            assert len(table.items) == n and app.model.seq > seq and "PAUSED" in app.screen_text()
            await pilot.press("p")
            await pilot.pause()
            assert len(table.items) == n + 2  # two more fallbacks (alpha's and gamma's)
            await pilot.press("F")
            assert not table.follow
            await pilot.press("F")
            assert table.follow
            await pilot.press("slash", "escape")  # Esc clears the filter
            await pilot.pause()
            assert {e.kind for e in table.items} != {"conn.fallback"}

    run(go())


def test_fallbacks_view_counts_reasons():
    async def go():
        app, src = make_app(1, fallbacks=3)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 2)
            await pilot.press("4")
            await pilot.pause()
            text = table_text(app, "#fallbacks-table")
            # one row per cause, each connection once: gamma declined, alpha saw PEERDECL (not two 50% rows)
            rows = text.splitlines()[1:]
            assert len(rows) == 1, text
            assert re.match(r"0x03070000 DIFFPREFIX +6 +100% gamma \(server\) +alpha \(client\): 0x05000000 PEERDECL", rows[0]), text
            screen = app.screen_text()
            assert "fallback ratio 85.7% of 14 connection ends; 6 connections fell back" in screen
            assert "6 connections: SMC-R not used because gamma (server) said 0x03070000 DIFFPREFIX" in screen

    run(go())


def test_decline_action_picks_a_reason_and_new_connections_use_it():
    async def go():
        app, src = make_app(1)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 1)
            await pilot.press("d")
            await pilot.pause()
            assert isinstance(app.screen, DeclineScreen)
            options = app.screen.query_one("#decline-list")
            index = next(i for i in range(options.option_count) if options.get_option_at_index(i).id == str(0x03030000))
            options.highlighted = index
            await pilot.press("enter")
            await pilot.pause()
            await pilot.pause()
            assert ("decline", 0x03030000) in src.calls
            await advance(app, pilot, src, 1)
            await pilot.press("4")
            await pilot.pause()
            assert re.search(r"0x03030000 NOSMCDEV .* gamma \(server\)", table_text(app, "#fallbacks-table"))
            assert "the next connections fall back with 0x03030000 NOSMCDEV" in app.screen_text()
            await pilot.press("d")
            await pilot.pause()
            app.screen.query_one("#decline-list").highlighted = 0  # off
            await pilot.press("enter")
            await pilot.pause()
            await pilot.pause()
            assert src.calls[-1] == ("decline", None)
            await pilot.press("d", "escape")  # cancel: nothing sent
            await pilot.pause()
            assert src.calls[-1] == ("decline", None) and len([c for c in src.calls if c[0] == "decline"]) == 2

    run(go())


def test_traffic_stops_and_starts():
    async def go():
        app, src = make_app(2)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 1)
            assert "traffic on" in app.screen_text()
            await pilot.press("t")
            await advance(app, pilot, src, 2)  # the sample after the last traffic is empty
            assert src.calls == [("traffic", False)] and app.model.rate == 0 and "traffic off" in app.screen_text()
            await pilot.press("t")
            await advance(app, pilot, src, 2)
            assert src.calls[-1] == ("traffic", True) and app.model.rate > 0

    run(go())


def test_connection_detail_screen_shows_history_messages_and_timeline():
    async def go():
        app, src = make_app(2)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 3)
            table = app.query_one("#conns-table", RowTable)
            table.focus()
            await pilot.press("down", "down", "enter")  # beta's first connection
            await pilot.pause()
            assert isinstance(app.screen, ConnDetailScreen) and app.screen.key == ("beta", 1)
            assert app.model.watched == ("beta", 1)
            text = app.screen_text()
            assert "beta connection 1  server 127.30.0.2:5000 -> 127.30.0.1:40001  ACTIVE  SMCR v2" in text
            assert "INIT -> ACTIVE  (handshake_done)" in text
            assert "received CDC seq 3" in text and "sent CLC Accept v2" in text  # the schema's templates
            assert "LLC messages of link group 00b2b200" in text and "LLC CONFIRM LINK v2" in text
            rate_line = next(line for line in text.splitlines() if line.strip().startswith("rate "))
            assert "██" in rate_line and "1.1 MB/s" in rate_line and "RMB fill" in text and "rxprod position" in text
            await advance(app, pilot, src, 1)  # it keeps updating
            assert "received CDC seq 4" in app.screen_text()
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, ConnDetailScreen) and app.model.watched is None

    run(go())


def test_help_lists_every_key_and_what_the_source_cannot_do():
    async def go():
        app, src = make_app(1)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            text = app.screen_text()
            for key, what in (("t", "start / stop traffic"), ("f", "fail a link"), ("r", "restore the failed link"),
                              ("d", "fall back with a chosen reason"), ("p", "pause"), ("/", "filter"), ("w", "record")):  # fmt: skip
                assert f"{key:12} " in text and what in text
            assert "replay: 10 s back   (not with this source)" in text
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, HelpScreen)
            footer = app.screen_text().splitlines()[-1]
            for label in ("Traffic", "Fail link", "Restore", "Decline", "Pause", "Filter", "Record", "Help"):
                assert label in footer
            assert "Step" not in footer  # replay keys only with a replay

    run(go())


def test_filter_and_sort_connections():
    async def go():
        app, src = make_app(3)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 2)
            await pilot.press("slash", *"beta", "enter")
            await pilot.pause()
            table = app.query_one("#conns-table", RowTable)
            assert {c.host for c in table.items} == {"beta"} and len(table.items) == 3
            await pilot.press("s")  # by rate, fastest first
            await pilot.pause()
            assert app.query_one(ConnsPane).sort == "rate"
            rates = [c.rate for c in table.items]
            assert rates == sorted(rates, reverse=True) and rates[0] > rates[-1]

    run(go())


def test_record_writes_events_that_replay_reads(tmp_path):
    async def go():
        app, src = make_app(2)
        app.record_dir = str(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 1)
            await pilot.press("w")
            await pilot.pause()
            assert app.recorder is not None and "REC smctop-" in app.screen_text()
            await advance(app, pilot, src, 2)
            await pilot.press("w")
            await pilot.pause()
            assert app.recorder is None
        files = list(tmp_path.glob("smctop-*.pcapng"))
        assert len(files) == 1
        return files[0]

    path = run(go())
    recorded = list(read_events(path))  # an smc-trace capture
    kinds = {e.kind for e in recorded}
    assert len(recorded) > 20 and {"cdc.msg", "conn.cursor", "rdma.write"} <= kinds
    replayed = load_events(str(path))  # what smctop --replay plays
    assert [to_json(e) for e in replayed] == [to_json(e) for e in sorted(recorded, key=lambda e: e.t)]


def test_replay_plays_pauses_steps_and_seeks(tmp_path):
    s = SyntheticStack(2)
    events = s.setup(100.0) + [e for t in range(101, 111) for e in s.step(float(t))]
    path = tmp_path / "rec.jsonl"
    from stack.events import to_json

    path.write_text("".join(to_json(e) + "\n" for e in events))
    clock = [0.0]

    async def go():
        src = ReplaySource(str(path), clock=lambda: clock[0])
        app = SmctopApp(src, poll_interval=3600)
        async with app.run_test(size=SIZE) as pilot:
            app.sync(force=True)
            clock[0] += 3.0  # three seconds of wall time at 1x
            app.sync(force=True)
            await pilot.pause()
            assert src.t == 103.0 and app.model.conns[("beta", 1)].bytes_received > 0
            footer = app.screen_text().splitlines()[-1]
            assert "Step" in footer and "-10s" in footer and "Traffic" not in footer
            await pilot.press("p")
            clock[0] += 5.0
            app.sync(force=True)
            assert src.t == 103.0 and "paused" in src.describe()
            before = src.i
            await pilot.press("n")
            assert src.i == before + 1 and src.paused
            await pilot.press("right_square_bracket")  # +10 s: to the end
            await pilot.pause()
            assert src.done and app.model.conns[("beta", 1)].bytes_received == 10 * (s.rate + 4099)
            await pilot.press("left_square_bracket")  # back 10 s: replayed from the start
            await pilot.pause()
            assert src.t == src.end_t - 10 == 100.5 and app.model.conns[("beta", 1)].bytes_received == 0

    run(go())


def test_model_is_the_only_thing_views_read():
    """The app's model is a plain Model: the same events give the same numbers without the app."""

    async def go():
        app, src = make_app(3)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 3)
        return app.model

    m_app = run(go())
    m = Model()
    s = SyntheticStack(3)
    feed_timed(m, s.setup(1000.0))
    for t in (1001.0, 1002.0, 1003.0):
        feed_timed(m, s.step(t))
        m.advance(t)
    assert m.totals() == m_app.totals() and m.totals()["rate"] > 0


def test_views_not_on_screen_are_drawn_when_shown_and_stand_still_when_paused():
    """A frame updates the view on screen; another view shows the model as of when it is shown
    (or as of the pause)."""

    async def go():
        app, src = make_app(3)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 2)
            await pilot.press("f")  # beta's first link fails while Connections is on screen
            await advance(app, pilot, src, 1)
            await pilot.press("1")
            await pilot.pause()
            assert "LINK_UNUSED" in table_text(app, "#links-table") and "3 connections moved" in app.screen_text()
            await pilot.press("2", "p")  # paused on Connections: the other views stand still too
            await pilot.press("r")
            await advance(app, pilot, src, 2)
            await pilot.press("1")
            await pilot.pause()
            links = app.query_one("#links-table", RowTable)
            assert app.model.lgrs[("beta", "00b2b200")].links[3].state == "LINK_ACTIVE"
            assert all(link.id != 3 for _, link in links.items)  # the restored link is not drawn while paused
            await pilot.press("p")
            await pilot.pause()
            assert [link.id for g, link in links.items if g.host == "beta"] == [1, 2, 3]

    run(go())


def test_the_message_line_names_only_the_shown_views_filter():
    """After a filter on the events view, the message line said "filter 'fallback' on events"
    on every other view too, where that filter does not apply."""

    async def go():
        app, src = make_app(2)
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, src, 1)
            await pilot.press("3", "slash", *"fallback", "enter")
            await pilot.pause()
            assert app.status == "filter 'fallback' on events" and "filter 'fallback' on events" in app.screen_text()
            await pilot.press("1")  # links: nothing filters it
            await pilot.pause()
            assert app.status == "" and "filter 'fallback'" not in app.screen_text()
            await pilot.press("3")  # back: the events view is still filtered, and the line says so
            await pilot.pause()
            assert app.status == "filter 'fallback' on events"
            await pilot.press("f")  # another message stays when the view changes
            await pilot.pause()
            message = app.status
            await pilot.press("1")
            await pilot.pause()
            assert app.status == message and "filter" not in message

    run(go())
