"""smctop's Prometheus exporter on its own: the collector on a model fed with known events
(exact names, labels and values), what the ledger keeps when the model forgets, the kernel's
counters from the lab's recorded replies, the serving thread, ADDR:PORT and the command
line's errors, and the dashboard and docs against the declared metrics. A real Prometheus
server scraping it: tests/integration/test_prometheus.py."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from smctop import prometheus as prom
from smctop.model import Model
from smctop.sources import SyntheticSource
from stack.events import Event

ROOT = Path(__file__).resolve().parents[2]
NOSMCDEV, PEERDECL, DIFFPREFIX = 0x03030000, 0x05000000, 0x03070000


def scrape(exporter: prom.Exporter) -> dict[tuple[str, frozenset], float]:
    """The exposition as {(sample name, labels): value}, parsed by prometheus_client's parser."""
    text = generate_latest(exporter.registry).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def pick(samples: dict, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def L(**labels) -> frozenset:
    return frozenset(labels.items())


def known_events() -> list[Event]:
    """Host a (client) and b (server): one SMC-R connection with known bytes, one that fell
    back with NOSMCDEV, a failover that moved it, a link deleted with nothing on it."""
    g = "00000100"
    ev = []
    for host, role in (("a", "client"), ("b", "server")):
        ev.append(Event(1.0, "lgr.state", host, g, fields={"old": "NONE", "new": "NONE", "cause": "created", "role": role, "version": 2, "crit": True}))
        for link in (1, 2):
            ev.append(Event(1.0, "link.event", host, g, link, fields={"event": "added", "device": f"d{link}"}))
            ev.append(Event(1.0, "link.state", host, g, link, fields={"old": "LINK_UNUSED", "new": "LINK_ACTIVE", "cause": "confirm"}))
        ev.append(Event(1.0, "lgr.state", host, g, fields={"old": "SINGLE", "new": "SYM", "cause": "add link", "crit": False}))
        ev.append(Event(1.1, "conn.open", host, conn=1, fields={"role": role, "local": "x", "peer": "y"}))
        ev.append(Event(1.2, "conn.mode", host, g, 1, 1, {"mode": "SMCR", "version": 2, "rmb_size": 65536, "peer_rmb_size": 65536}))
        ev.append(Event(1.2, "conn.state", host, g, 1, 1, {"old": "INIT", "new": "ACTIVE", "cause": "handshake_done"}))
    ev.append(Event(1.3, "rdma.write", "a", g, 1, 1, {"offset": 0, "length": 1000, "rkey": 1}))
    ev.append(Event(1.4, "rdma.write", "a", g, 1, 1, {"offset": 1000, "length": 2500, "rkey": 1}))
    ev.append(Event(1.4, "conn.cursor", "b", g, 1, 1, {"side": "rx", "prod": "0:3500", "cons": "0:0", "bytes_to_rcv": 3500, "peer_rmbe_space": 0}))
    ev.append(Event(1.5, "conn.open", "a", conn=2, fields={"role": "client", "local": "x", "peer": "z"}))
    ev.append(Event(1.6, "conn.fallback", "a", conn=2, fields={"reason": NOSMCDEV, "peer_diagnosis": 0}))
    ev.append(Event(1.6, "conn.mode", "a", conn=2, fields={"mode": "TCP", "reason": NOSMCDEV}))
    for host in ("a", "b"):
        ev.append(Event(2.0, "link.event", host, g, 1, fields={"event": "failover_begin", "to_link": 2, "conns": 1, "reason": "port down"}))
        ev.append(Event(2.02, "link.event", host, g, 1, fields={"event": "failover_end", "to_link": 2, "conns": 1, "failed": 0, "duration_ms": 20.0}))
        ev.append(Event(2.02, "link.state", host, g, 1, fields={"old": "LINK_ACTIVE", "new": "LINK_UNUSED", "cause": "delete"}))
        ev.append(Event(2.02, "lgr.state", host, g, fields={"old": "SYM", "new": "SINGLE", "cause": "link deleted", "crit": True}))
        ev.append(Event(3.0, "link.event", host, g, 3, fields={"event": "failover_begin", "to_link": 2, "conns": 0, "reason": "no asym needed"}))
        ev.append(Event(3.0, "link.event", host, g, 3, fields={"event": "failover_end", "to_link": 2, "conns": 0, "failed": 0, "duration_ms": 0.0}))
    return ev


def test_the_collector_names_labels_and_values_of_known_events() -> None:
    m = Model()
    m.feed_many(known_events())
    m.advance(3.5)
    e = prom.Exporter(m, process_metrics=False)
    s = scrape(e)
    # two hosts: every per-host metric has the host label from the first scrape
    assert pick(s, "smc_host_info") == {L(host="a"): 1, L(host="b"): 1}
    assert pick(s, "smc_link_groups") == {L(host="a", type="SINGLE", role="client"): 1, L(host="b", type="SINGLE", role="server"): 1}
    assert pick(s, "smc_link_groups_critical") == {L(host="a"): 1, L(host="b"): 1}
    assert pick(s, "smc_links") == {L(host="a", state="LINK_ACTIVE"): 1, L(host="b", state="LINK_ACTIVE"): 1}
    assert pick(s, "smc_connections") == {L(host="a", mode="SMCR", state="ACTIVE"): 1, L(host="b", mode="SMCR", state="ACTIVE"): 1,
                                          L(host="a", mode="TCP", state="INIT"): 1}  # fmt: skip
    assert pick(s, "smc_connections_established_total") == {L(host="a", mode="SMCR"): 1, L(host="b", mode="SMCR"): 1, L(host="a", mode="TCP"): 1}
    assert pick(s, "smc_fallbacks_total") == {L(host="a", role="client", reason="0x03030000", reason_name="NOSMCDEV"): 1}
    # each byte once: at the end that sent it, and at the end that received it
    assert pick(s, "smc_sent_bytes_total") == {L(host="a"): 3500, L(host="b"): 0}
    assert pick(s, "smc_received_bytes_total") == {L(host="a"): 0, L(host="b"): 3500}
    # the failover that moved a connection; the link removed with nothing on it apart
    assert pick(s, "smc_failovers_total") == {L(host="a"): 1, L(host="b"): 1}
    assert pick(s, "smc_failover_connections_total") == {L(host="a"): 1, L(host="b"): 1}
    assert pick(s, "smc_failover_failed_connections_total") == {L(host="a"): 0, L(host="b"): 0}
    assert pick(s, "smc_failover_duration_seconds_count") == {L(host="a"): 1, L(host="b"): 1}
    assert pick(s, "smc_failover_duration_seconds_sum") == {L(host="a"): 0.02, L(host="b"): 0.02}
    assert pick(s, "smc_link_deletions_total") == {L(host="a"): 1, L(host="b"): 1}
    assert pick(s, "smc_events_total")[L(kind="rdma.write")] == 2
    assert pick(s, "smc_events_dropped_total") == {L(): 0}
    assert not [n for n, _ in s if n.startswith("smc_kernel_")]  # no kernel counters without a kernel
    # the types Prometheus is told
    text = generate_latest(e.registry).decode()
    for spec in prom.METRICS:
        if not spec.kernel:
            assert f"# TYPE {spec.name} {spec.type}" in text
    # OpenMetrics (what Prometheus asks for) names a counter's family without _total: no two families may clash
    from prometheus_client.openmetrics import exposition as om
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

    families = [f.name for f in om_parse(om.generate_latest(e.registry).decode())]
    assert len(families) == len(set(families)) == len([s for s in prom.METRICS if not s.kernel])


def test_one_host_has_no_host_label_until_a_second_appears_and_then_keeps_it() -> None:
    m = Model()
    m.feed_many([e for e in known_events() if e.host == "a"])
    e = prom.Exporter(m, process_metrics=False)
    s = scrape(e)
    assert pick(s, "smc_sent_bytes_total") == {L(): 3500}
    assert pick(s, "smc_host_info") == {L(host="a"): 1}  # the name is still there
    m.feed(Event(5.0, "conn.open", "b", conn=9, fields={"role": "server"}))
    assert pick(scrape(e), "smc_sent_bytes_total") == {L(host="a"): 3500, L(host="b"): 0}
    m.clear()
    m.feed(Event(6.0, "conn.open", "a", conn=1, fields={"role": "client"}))
    assert L(host="a", mode="INIT", state="INIT") in pick(scrape(e), "smc_connections")  # labels do not flap back
    assert pick(scrape(prom.Exporter(m, host_label=True, process_metrics=False)), "smc_host_info") == {L(host="a"): 1}
    assert L(mode="INIT", state="INIT") in pick(scrape(prom.Exporter(m, host_label=False, process_metrics=False)), "smc_connections")


def test_counters_keep_what_the_model_forgets() -> None:
    """Closed connections leave the model after closed_keep seconds and failovers after 200;
    the counters keep their bytes and counts, ticking once a second as the exporter does."""
    m = Model(closed_keep=2.0)
    e = prom.Exporter(m, process_metrics=False)
    t = 0.0
    for i in range(1, 31):  # a connection a second, 1000 * i bytes each, closed right away
        m.feed_many([Event(t, "conn.open", "a", conn=i, fields={"role": "client"}),
                     Event(t, "conn.mode", "a", "g", 1, i, {"mode": "SMCR", "rmb_size": 65536}),
                     Event(t, "rdma.write", "a", "g", 1, i, {"offset": 0, "length": 1000 * i, "rkey": 1}),
                     Event(t + 0.1, "conn.state", "a", "g", 1, i, {"old": "ACTIVE", "new": "CLOSED", "cause": "close"})])  # fmt: skip
        m.advance(t + 0.5)
        e.tick()
        t += 1.0
    m.advance(t + 10)
    assert len(m.conns) == 0  # all forgotten by the model
    s = scrape(e)
    assert pick(s, "smc_sent_bytes_total") == {L(): 1000 * sum(range(1, 31))}
    assert pick(s, "smc_connections_established_total") == {L(mode="SMCR"): 30}
    assert pick(s, "smc_connections") == {L(mode="SMCR", state="ACTIVE"): 0}  # a known host reads 0, not nothing
    # a snapshot that says less than the events did never takes bytes back
    m.feed(Event(t, "conn.open", "a", conn=99, fields={"role": "client"}))
    m.feed(Event(t, "rdma.write", "a", "g", 1, 99, {"offset": 0, "length": 500, "rkey": 1}))
    before = pick(scrape(e), "smc_sent_bytes_total")[L()]
    m.apply_snapshot({"host": "a", "t": t + 0.1, "conns": [{"conn": 99, "mode": "SMCR", "bytes_sent": 100}]})
    assert m.conns[("a", 99)].bytes_sent == 100
    assert pick(scrape(e), "smc_sent_bytes_total")[L()] == before
    # 250 failovers: the model keeps 200, the counter all of them
    for i in range(250):
        m.feed(Event(t + i, "link.event", "a", "g", 1, fields={"event": "failover_begin", "to_link": 2, "conns": 2}))
        m.feed(Event(t + i, "link.event", "a", "g", 1, fields={"event": "failover_end", "to_link": 2, "conns": 2, "failed": 0, "duration_ms": 10.0}))
        if i % 50 == 49:
            e.tick()
    s = scrape(e)
    assert len(m.failovers) == 200
    assert pick(s, "smc_failovers_total") == {L(): 250} and pick(s, "smc_failover_connections_total") == {L(): 500}
    assert pick(s, "smc_failover_duration_seconds_sum") == {L(): pytest.approx(2.5)}
    # a replay seeking backwards clears the model: the counters start again (a reset to Prometheus)
    m.clear()
    assert pick(scrape(e), "smc_sent_bytes_total") == {}


def test_a_known_hosts_gauges_read_0_not_nothing() -> None:
    """A host without link groups (gamma, srv: every connection declined) had no
    smc_link_groups_critical, smc_links or smc_connections series at all; a group that went
    took its series with it."""
    m = Model()
    m.feed_many(known_events())
    m.apply_snapshot({"host": "srv", "t": 3.0, "stats": {"smc_server": 0}})
    m.advance(3.5)
    e = prom.Exporter(m, process_metrics=False)
    s = scrape(e)
    assert pick(s, "smc_link_groups_critical")[L(host="srv")] == 0
    assert {k: v for k, v in pick(s, "smc_links").items() if ("host", "srv") in k} == {L(host="srv", state="LINK_ACTIVE"): 0}
    assert {k: v for k, v in pick(s, "smc_connections").items() if ("host", "srv") in k} == {L(host="srv", mode="SMCR", state="ACTIVE"): 0}
    # a's link group ends and its connections close: what a had reads 0
    m.feed_many([Event(4.0, "link.event", "a", "00000100", fields={"event": "deleted", "all": True}),
                 Event(4.0, "conn.state", "a", conn=1, fields={"old": "ACTIVE", "new": "CLOSED"}),
                 Event(4.0, "conn.state", "a", conn=2, fields={"old": "INIT", "new": "CLOSED"})])  # fmt: skip
    s = scrape(e)
    assert pick(s, "smc_link_groups")[L(host="a", type="SINGLE", role="client")] == 0
    assert pick(s, "smc_link_groups_critical")[L(host="a")] == 0
    assert pick(s, "smc_links")[L(host="a", state="LINK_ACTIVE")] == 0
    assert pick(s, "smc_connections")[L(host="a", mode="SMCR", state="ACTIVE")] == 0
    assert pick(s, "smc_connections")[L(host="a", mode="TCP", state="INIT")] == 0
    assert pick(s, "smc_links")[L(host="b", state="LINK_ACTIVE")] == 1  # b is as it was


def test_a_host_whose_source_went_away_is_down_with_no_stale_series_until_it_is_back() -> None:
    """smctop_source_up says whether a host's source feeds smctop; while it does not, none of
    the host's values is served as if live, and when it is back its counters go on."""
    m = Model()
    m.feed_many(known_events())
    m.advance(3.5)
    e = prom.Exporter(m, process_metrics=False)
    s = scrape(e)
    assert pick(s, "smctop_source_up") == {L(host="a"): 1, L(host="b"): 1}
    m.host_gone("b", 4.0)
    s = scrape(e)
    assert pick(s, "smctop_source_up") == {L(host="a"): 1, L(host="b"): 0}
    assert pick(s, "smc_host_info") == {L(host="a"): 1, L(host="b"): 1}
    b_series = sorted(n for n, labels in s if ("host", "b") in labels and n not in ("smctop_source_up", "smc_host_info"))
    assert b_series == []
    assert pick(s, "smc_sent_bytes_total") == {L(host="a"): 3500}  # a goes on being served
    m.host_back("b")
    m.apply_snapshot({"host": "b", "t": 5.0, "stats": {"smc_server": 0}})  # a new stack, nothing open yet
    s = scrape(e)
    assert pick(s, "smctop_source_up") == {L(host="a"): 1, L(host="b"): 1}
    assert pick(s, "smc_received_bytes_total")[L(host="b")] == 3500  # the counter goes on from where it was
    assert pick(s, "smc_connections")[L(host="b", mode="SMCR", state="ACTIVE")] == 0


def test_bytes_of_a_connection_that_fell_back_are_not_counted_as_the_model_does_not() -> None:
    """The demo's gamma (every connection declined) read 68 sent and 100 received: the TCP
    bytes of the one connection a snapshot happened to catch open. The model's total counts
    SMC-R bytes only; so do the counters: such a host reads 0."""
    m = Model()
    m.feed_many(known_events())
    m.advance(3.5)
    m.advance(4.5)  # a sample closes: the SMC-R bytes are in the total
    e = prom.Exporter(m, process_metrics=False)
    scrape(e)
    moved = m.bytes
    assert moved > 0
    m.apply_snapshot({"host": "a", "t": 4.6, "conns": [{"conn": 1, "mode": "SMCR", "bytes_sent": 3500},
                                                      {"conn": 2, "mode": "TCP", "bytes_sent": 68, "bytes_received": 100}]})  # fmt: skip
    m.advance(6.0)
    s = scrape(e)
    assert m.conns[("a", 2)].bytes_sent == 68  # the connection's row shows what its snapshot says
    assert m.bytes == moved  # the model's "Total moved" (SMC-R bytes) did not take the 168 TCP bytes
    assert pick(s, "smc_sent_bytes_total") == {L(host="a"): 3500, L(host="b"): 0}
    assert pick(s, "smc_received_bytes_total") == {L(host="a"): 0, L(host="b"): 3500}


def test_a_failover_counts_when_it_ends_so_no_counter_goes_back() -> None:
    m = Model()
    e = prom.Exporter(m, process_metrics=False)
    m.feed(Event(1.0, "link.event", "k", "g", 1, fields={"event": "failover_begin", "reason": "link down"}))  # the kernel's probe: no count
    s = scrape(e)
    assert pick(s, "smc_failovers_total") == {L(): 0} and pick(s, "smc_link_deletions_total") == {L(): 0}
    m.feed(Event(1.5, "link.event", "k", "g", 1, fields={"event": "failover_end", "to_link": 2, "conns": 4, "failed": 1, "duration_ms": 500.0}))
    s = scrape(e)
    assert pick(s, "smc_failovers_total") == {L(): 1} and pick(s, "smc_failover_connections_total") == {L(): 4}
    assert pick(s, "smc_failover_failed_connections_total") == {L(): 1} and pick(s, "smc_failover_duration_seconds_sum") == {L(): 0.5}
    assert pick(s, "smc_link_deletions_total") == {L(): 0}


def test_a_long_synthetic_run_counts_every_fallback_connection() -> None:
    """The synthetic topology at real speed (a poll a second): connections that fall back
    close after half a second and leave the model 5 s later; none is missed."""
    m = Model()
    src = SyntheticSource()
    e = prom.Exporter(m, process_metrics=False)
    for _ in range(30):
        src.advance(1.0)
        src.poll(m)
        m.advance(src.t)
        e.tick()
    s = scrape(e)
    fb = pick(s, "smc_fallbacks_total")
    assert fb == {L(host="alpha", role="client", reason="0x05000000", reason_name="PEERDECL"): 30,
                  L(host="gamma", role="server", reason="0x03070000", reason_name="DIFFPREFIX"): 30}  # fmt: skip
    assert pick(s, "smc_connections_established_total") == {L(host="alpha", mode="SMCR"): 3, L(host="beta", mode="SMCR"): 3,
                                                L(host="alpha", mode="TCP"): 30, L(host="gamma", mode="TCP"): 30}  # fmt: skip
    sent = pick(s, "smc_sent_bytes_total")[L(host="alpha")]
    assert sent == sum(c.bytes_sent for c in m.conns.values() if c.host == "alpha") > 30 * 3 * (1 << 20)
    assert pick(s, "smc_received_bytes_total")[L(host="beta")] == sent  # the other end of the same bytes


def test_the_kernels_smcr_stats_counters_from_the_lab_kernels_replies() -> None:
    from smckernel import kio
    from smckernel import model as kmodel

    snap = kmodel.from_kernel(kio.load_raw(str(ROOT / "tests/unit/fixtures/smckernel/client-open")), 5.0, "vm-a")
    m = Model()
    m.apply_snapshot(kmodel.to_stack_snapshot(snap))
    s = scrape(prom.Exporter(m, process_metrics=False))
    flat = kmodel.flat_stats(snap.stats)
    r = {"technology": "smcr"}
    assert pick(s, "smc_kernel_data_bytes_total") == {L(**r, direction="tx"): flat["smcr.tx_bytes"], L(**r, direction="rx"): flat["smcr.rx_bytes"],
                                                      L(technology="smcd", direction="tx"): 0, L(technology="smcd", direction="rx"): 0}  # fmt: skip
    assert flat["smcr.tx_bytes"] > 0
    conns = pick(s, "smc_kernel_connections_total")
    assert conns[L(**r, role="client", version="2")] == flat["smcr.clnt_v2_succ"] and len(conns) == 8
    assert pick(s, "smc_kernel_payloads_total")[L(**r, direction="tx", size="32K")] == flat["smcr.tx_payload.32K"] == 1
    assert pick(s, "smc_kernel_buffers_total")[L(**r, direction="rx", size="64K")] == flat["smcr.rx_rmb_size.64K"] == 2
    assert pick(s, "smc_kernel_buffer_events_total")[L(**r, direction="tx", event="buf_full")] == flat["smcr.tx_rmb.buf_full"] == 3
    assert pick(s, "smc_kernel_buffer_usage_bytes")[L(**r, direction="rx")] == flat["smcr.rx_rmb_usage"]
    assert pick(s, "smc_kernel_special_calls_total")[L(**r, call="cork")] == flat["smcr.cork"]
    assert pick(s, "smc_handshake_errors_total") == {L(role="client"): flat["clnt_hshake_err"], L(role="server"): flat["srv_hshake_err"]}
    # one host (the kernel source's): no host label; smcr stats' fallback reasons by hex and name
    assert pick(s, "smc_fallbacks_total") == {L(role="client", reason="0x05000000", reason_name="PEERDECL"): 1}
    assert pick(s, "smc_link_groups") == {L(type="SINGLE", role="client"): 1}
    assert pick(s, "smc_host_info") == {L(host="vm-a"): 1}
    # every flat kernel counter becomes a sample, none twice
    kernel = [k for k in s if k[0].startswith("smc_kernel_")]
    assert len(kernel) == len([k for k in flat if k.split(".")[0] in ("smcr", "smcd")]) == len(set(kernel))


def test_the_stacks_handshake_error_counter_has_no_role() -> None:
    m = Model()
    m.apply_snapshot({"host": "a", "t": 1.0, "stats": {"handshake_errors": 4, "smc_client": 9}})
    s = scrape(prom.Exporter(m, process_metrics=False))
    assert pick(s, "smc_handshake_errors_total") == {L(role=""): 4}


def test_reason_labels_are_smc_tools_hex_and_name() -> None:
    assert prom.reason_labels(NOSMCDEV) == ("0x03030000", "NOSMCDEV")
    assert prom.reason_labels(0x0DEAD000) == ("0x0dead000", "UNKNOWN")
    assert prom.reason_labels(0) == ("0x00000000", "NONE")


# ---------------------------------------------------------------------------- threads and serving


def test_a_scrape_reads_the_model_on_the_loop_that_owns_it() -> None:
    async def main() -> tuple[str, str]:
        m = Model()
        m.feed_many(known_events())
        e = prom.Exporter(m).serve("127.0.0.1:0")  # with the process's own metrics, as smctop serves it
        loop_thread = threading.current_thread().name
        seen = []
        real = e.collector.families
        e.collector.families = lambda: (seen.append(threading.current_thread().name), real())[1]  # type: ignore[method-assign]
        e.use(prom.LoopCaller(asyncio.get_running_loop()))
        try:
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(e.url, timeout=5).read().decode())
        finally:
            e.close()
        assert seen == [loop_thread]
        return body, e.url

    body, url = asyncio.run(main())
    assert 'smc_sent_bytes_total{host="a"} 3500.0' in body and "process_cpu_seconds_total" in body
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")


def test_the_loop_caller_hands_back_results_errors_and_times_out() -> None:
    async def main() -> None:
        call = prom.LoopCaller(asyncio.get_running_loop(), timeout=0.3)
        assert call(lambda: 5) == 5  # on the loop's own thread: directly
        assert await asyncio.to_thread(call, lambda: threading.current_thread() is threading.main_thread())
        with pytest.raises(ZeroDivisionError):
            await asyncio.to_thread(call, lambda: 1 / 0)
        waiting = asyncio.get_running_loop().run_in_executor(None, call, lambda: None)
        time.sleep(0.6)  # the loop is busy for longer than the caller waits
        with pytest.raises(TimeoutError, match="did not answer in 0.3 s"):
            await waiting

    asyncio.run(main())
    loop = asyncio.new_event_loop()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool, pytest.raises(RuntimeError, match="not running"):
            pool.submit(prom.LoopCaller(loop), lambda: 1).result()
    finally:
        loop.close()


@pytest.mark.parametrize("text, addr, port", [("127.0.0.1:9717", "127.0.0.1", 9717), ("[::1]:80", "::1", 80), (":9717", "0.0.0.0", 9717),
                                              ("localhost:0", "localhost", 0)])  # fmt: skip
def test_listen_addresses(text: str, addr: str, port: int) -> None:
    assert prom.parse_listen(text) == (addr, port)


@pytest.mark.parametrize("text, why", [("9717", "expected ADDR:PORT"), ("127.0.0.1:", "port must be a number"), ("127.0.0.1:65536", "0 to 65535"),
                                       ("127.0.0.1:http", "port must be"), ("::1:9717", "brackets"), ("[::1:9717", "expected ADDR:PORT"),
                                       ("[nope]:9717", "not an IPv6"), ("a\0b:1", "expected ADDR:PORT"), ("127.0.0.1:-1", "port must")])  # fmt: skip
def test_bad_listen_addresses_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(prom.ExporterError, match=why):
        prom.parse_listen(text)


def test_a_port_in_use_and_an_address_not_ours_are_clear_errors() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(prom.ExporterError, match=f"127.0.0.1:{port}: cannot listen: the port is in use"):
            prom.Exporter(Model(), process_metrics=False).serve(f"127.0.0.1:{port}")
    with pytest.raises(prom.ExporterError, match="192.0.2.1 is not an address of this host"):
        prom.Exporter(Model(), process_metrics=False).serve("192.0.2.1:9717")


def test_every_address_is_ipv4_and_ipv6() -> None:
    """``:PORT`` is "every address" (the docs, the error text): it listened on 0.0.0.0 only,
    so a scrape of [::1] found nothing."""
    with socket.socket() as s:  # a free port on both families
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    e = prom.Exporter(Model(), process_metrics=False).serve(f":{port}")
    try:
        for host in ("127.0.0.1", "[::1]"):
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
                assert r.status == 200 and b"smctop_" in r.read(), host
    finally:
        e.close()


def test_beside_the_tui_a_scrape_reads_the_apps_model_on_the_apps_loop() -> None:
    """The TUI with --prometheus: scrapes go through the app's call_from_thread, so they see
    the model the views show, and the app goes on drawing while HTTP is served."""
    from tuihelp import SIZE, advance, make_app, run

    app, source = make_app()
    exporter = prom.Exporter(app.model, process_metrics=False).serve("127.0.0.1:0")
    prom.serve_app(exporter, app)

    def get() -> str:
        return urllib.request.urlopen(exporter.url, timeout=10).read().decode()

    async def main() -> tuple[str, str, dict]:
        async with app.run_test(size=SIZE) as pilot:
            await advance(app, pilot, source, 3.0)
            threads = []
            real = exporter.collector.families
            exporter.collector.families = lambda: (threads.append(threading.get_ident()), real())[1]  # type: ignore[method-assign]
            body = await asyncio.to_thread(get)
            await advance(app, pilot, source, 2.0)
            later = await asyncio.to_thread(get)
            assert threads and set(threads) == {threading.get_ident()}  # the app's own thread
            return body, later, app.model.totals()

    try:
        body, later, totals = run(main())
    finally:
        exporter.close()
    assert f'smc_connections{{host="alpha",mode="SMCR",state="ACTIVE"}} {float(totals["smcr"] // 2)}' in later
    assert 'smc_fallbacks_total{host="gamma",reason="0x03070000",reason_name="DIFFPREFIX",role="server"} 3.0' in body
    assert 'smc_fallbacks_total{host="gamma",reason="0x03070000",reason_name="DIFFPREFIX",role="server"} 5.0' in later
    # the app has exited: a scrape reads the model directly (nobody feeds it any more)
    assert 'smc_host_info{host="gamma"} 1.0' in generate_latest(exporter.registry).decode()


# ---------------------------------------------------------------------------- the command line


def run_main(capsys, *argv: str) -> tuple[int, str]:
    from smctop import app

    with pytest.raises(SystemExit) as exc:
        app.main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exc.value.code, err


def test_command_line_errors(capsys) -> None:
    code, err = run_main(capsys, "--prometheus", "nope", "--headless")
    assert code == 2 and "smctop: error: --prometheus 'nope': expected ADDR:PORT" in err
    code, err = run_main(capsys, "--prometheus", "127.0.0.1:99999")
    assert code == 2 and "the port must be a number from 0 to 65535" in err
    code, err = run_main(capsys, "--headless")
    assert code == 2 and "--headless needs --prometheus ADDR:PORT" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, err = run_main(capsys, "--prometheus", f"127.0.0.1:{port}", "--headless", "--no-traffic")
        assert code == 2 and "the port is in use" in err
    from smctop import app

    assert "--prometheus ADDR:PORT" in app.parse_args([])[1].format_help() and "--headless" in app.parse_args([])[1].format_help()


def test_headless_replays_a_recording_serves_it_and_stops(tmp_path) -> None:
    """The headless loop (as `smctop --replay F --prometheus A --headless` runs it) on a
    synthetic recording: the model at the end of the replay is what /metrics says."""
    import io

    from smctop.sources import ReplaySource
    from stack.events import to_json

    src = SyntheticSource()
    events = list(src.pending)
    for _ in range(8):
        events.extend(src.stack.step(src.t + 1))
        src.t += 1
    path = tmp_path / "run.jsonl"
    path.write_text("".join(to_json(ev) + "\n" for ev in events))

    async def main() -> str:
        out = io.StringIO()
        e = prom.Exporter(Model(), process_metrics=False).serve("127.0.0.1:0")
        h = prom.Headless(ReplaySource(str(path), speed=1e6), e, poll_interval=0.02, out=out)
        task = asyncio.create_task(h.run())
        for _ in range(200):
            await asyncio.sleep(0.02)
            if "reached its end" in out.getvalue():
                break
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(e.url, timeout=5).read().decode())
        h.stop()
        assert await task == 0
        e.close()
        text = out.getvalue()
        assert "Prometheus metrics on http://127.0.0.1:" in text and text.rstrip().endswith("smctop: stopped")
        return body

    body = asyncio.run(main())
    assert 'smc_connections{host="alpha",mode="SMCR",state="ACTIVE"} 3.0' in body
    assert 'smc_fallbacks_total{host="gamma",reason="0x03070000",reason_name="DIFFPREFIX",role="server"} 8.0' in body


# ---------------------------------------------------------------------------- docs and dashboard


def test_docs_explain_every_metric() -> None:
    doc = (ROOT / "docs/prometheus.md").read_text()
    for spec in prom.METRICS:
        assert f"`{spec.name}`" in doc, spec.name
        for label in spec.labels:
            assert f"`{label}`" in doc, (spec.name, label)


def test_the_grafana_dashboard_uses_only_exported_metrics() -> None:
    dash = json.loads((ROOT / "docs/grafana-smctop.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    names = {n for expr in exprs for n in re.findall(r"\bsmc_[a-z_]+", expr)}
    known = {s.name for s in prom.METRICS} | {f"{s.name}_{x}" for s in prom.METRICS if s.type == "summary" for x in ("count", "sum")}
    assert names and names <= known, names - known
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("connections", "fallbacks", "throughput", "link groups", "failovers"):
        assert word in titles, word
    assert any("rate(smc_sent_bytes_total" in x for x in exprs)
    assert any("smc_fallbacks_total" in x and "reason_name" in x for x in exprs)
