"""The two-link failover of test_kernel_two_links.py with our stack as the client (#16: a
kernel peer and our stack on rxe0 + rxe1, one NIC cut under traffic): the differential
against that file's kernel-to-kernel control.

One boot of two VMs with two NICs each, set up as the control is (one PNET ID on the kernel
side, eth1 on a /16 on both). VM b runs the control's own guest server (the kernel's AF_SMC
server, its control port and its kernel source). VM a runs our stack (pyverbs on rxe0 and
rxe1, the SMC TCP option from native/smcopt) playing the control's client step by step: a
connection, the group SYMMETRIC, a second connection (the kernel server puts it on the rxe1
link), eth1 down on b then on a, eth1 up again. The outcome must be the control's: every
byte through, the group SINGLE on both ends after the cut with the second connection on
rxe0, the kernel's events the same, and our stack's own view agreeing.

A second boot plays the other direction: the control's kernel client against our stack's
server on rxe0 + rxe1 (``guest-stack-server``), with the same outcome asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
sys.path[:0] = [str(HERE), str(PROJECT)]

import test_kernel_two_links as control  # noqa: E402

PY = control.PY


def _groups(host) -> list[dict]:
    return host.snapshot()["lgrs"]


async def _wait(host, want_type: str, want_links: int, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gs = _groups(host)
        if len(gs) == 1 and gs[0]["type"] == want_type and sum(lk["state"] == "LINK_ACTIVE" for lk in gs[0]["links"]) == want_links:
            return time.monotonic()
        await asyncio.sleep(0.1)
    return None


async def _client(share: Path) -> dict:
    from stack import DeviceSpec, SmcConfig, Stack, StackConfig

    peer = os.environ["LAB_PEER_IP"]
    config = StackConfig(SmcConfig(host="ours", versions=frozenset({1, 2}), ueids=(control.UEID,)),
                         (DeviceSpec("pyverbs", "rxe0"), DeviceSpec("pyverbs", "rxe1")), tcp_option="option")  # fmt: skip
    truth: dict = {"steps": {}, "sent": []}
    steps = truth["steps"]
    events = open(share / "ours.jsonl", "w", buffering=1)  # our client's events, line by line: what it did if the run stalls
    async with Stack(config) as host:
        from stack.events import JsonlWriter

        host.bus.listen(JsonlWriter(events))
        ctl = None
        for _ in range(300):
            try:
                ctl = socket.create_connection((peer, control.CONTROL_PORT), timeout=60)
                break
            except OSError:
                await asyncio.sleep(0.1)
        assert ctl is not None, "the server's control port did not answer"
        ctl_f = ctl.makefile("rw")

        def both(order: str) -> None:
            steps[f"{order}_begin"] = time.monotonic()
            ctl_f.write(order + "\n")
            ctl_f.flush()
            assert ctl_f.readline().strip() == "ok"
            subprocess.run(f"ip link set eth1 {order}", shell=True, check=True)
            steps[f"{order}_end"] = time.monotonic()

        conns: list = []
        stop = asyncio.Event()

        async def send(writer, seed: int, rec: dict) -> None:
            sha, i = hashlib.sha256(), 0
            try:
                while not stop.is_set():
                    chunk = hashlib.sha256(f"{seed}/{i}".encode()).digest() * (control.CHUNK // 32)
                    writer.write(chunk)
                    await writer.drain()
                    sha.update(chunk)
                    rec["sent"] += len(chunk)
                    i += 1
                    await asyncio.sleep(control.PAUSE)
            except OSError as e:
                rec["error"] = f"{type(e).__name__}: {e}"
            rec["sha256"] = sha.hexdigest()

        async def open_conn(seed: int) -> None:
            deadline = time.monotonic() + 90
            while True:
                try:
                    reader, writer = await host.open_connection(peer, control.PORT)
                    break
                except ConnectionRefusedError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            rec = {"sent": 0, "error": None, "smc": {k: writer.get_extra_info("smc", {}).get(k) for k in ("mode", "version", "lgr", "link")}}
            truth["sent"].append(rec)
            conns.append((reader, writer, asyncio.ensure_future(send(writer, seed, rec)), rec))

        def links_of_conns() -> list:
            snap = host.snapshot()
            dev = {(g["id"], lk["id"]): lk["device"] for g in snap["lgrs"] for lk in g["links"]}
            return [dev.get((c["lgr"], c["link"])) for c in sorted(snap["conns"], key=lambda c: c["conn"]) if c.get("mode") == "SMCR"]

        await open_conn(1)
        steps["sym"] = await _wait(host, "SYM", 2, 60)
        truth["groups_sym"] = _groups(host)
        await open_conn(2)
        await asyncio.sleep(2.0)
        truth["links_before"] = links_of_conns()
        truth["sent_at_down"] = [c[3]["sent"] for c in conns]
        await asyncio.to_thread(both, "down")
        steps["single"] = await _wait(host, "SINGLE", 1, 60)
        truth["groups_single"] = _groups(host)
        await asyncio.sleep(3.0)
        truth["links_after"] = links_of_conns()
        truth["sent_after_failover"] = [c[3]["sent"] for c in conns]
        await asyncio.to_thread(both, "up")
        steps["sym_again"] = await _wait(host, "SYM", 2, 15)
        stop.set()
        for reader, writer, task, rec in conns:
            await asyncio.wait_for(task, 60)
            writer.write_eof()
            rec["peer_says"] = (await asyncio.wait_for(reader.readline(), 60)).decode().strip()
            writer.close()
        truth["failovers"] = host.snapshot().get("failovers")
        truth["groups_end"] = _groups(host)
        ctl.close()
    events.close()
    return truth


async def _server(share: Path) -> dict:
    """Our stack as the server of the control's kernel client: it reads each connection to
    end of file and answers with its SHA-256 and length; the client's orders for eth1 come
    on the control port, as the control's server takes them."""
    import threading

    from stack import DeviceSpec, SmcConfig, Stack, StackConfig

    config = StackConfig(SmcConfig(host="ours", versions=frozenset({1, 2}), ueids=(control.UEID,)),
                         (DeviceSpec("pyverbs", "rxe0"), DeviceSpec("pyverbs", "rxe1")), tcp_option="option")  # fmt: skip
    truth: dict = {"steps": {}, "received": []}
    steps = truth["steps"]
    done = asyncio.Event()

    def orders() -> None:
        with socket.create_server(("0.0.0.0", control.CONTROL_PORT)) as srv:
            c, _ = srv.accept()
            with c, c.makefile("rw") as f:
                for line in f:
                    order = line.strip()
                    steps[f"{order}_begin"] = time.monotonic()
                    subprocess.run(f"ip link set eth1 {order}", shell=True, check=True)
                    steps[f"{order}_end"] = time.monotonic()
                    f.write("ok\n")
                    f.flush()

    events = open(share / "ours.jsonl", "w", buffering=1)  # our server's events: what it did when rxe1 came back
    async with Stack(config) as host:
        from stack.events import JsonlWriter

        host.bus.listen(JsonlWriter(events))
        snaps: list = []

        async def serve(reader, writer) -> None:
            sha, n = hashlib.sha256(), 0
            smc = {k: writer.get_extra_info("smc", {}).get(k) for k in ("mode", "version", "lgr", "link")}
            try:
                while data := await reader.read(1 << 16):
                    sha.update(data)
                    n += len(data)
                writer.write(f"{sha.hexdigest()} {n}\n".encode())
                await writer.drain()
                error = None
            except OSError as e:
                error = f"{type(e).__name__}: {e}"
            truth["received"].append({"sha256": sha.hexdigest(), "received": n, "error": error, "smc": smc})
            writer.close()
            if len(truth["received"]) == 2:
                done.set()

        async def watch() -> None:  # our group's type through the run, for the steps the client took
            while not done.is_set():
                g = host.snapshot()["lgrs"]
                snaps.append((time.monotonic(), [(x["type"], sorted(lk["device"] for lk in x["links"] if lk["state"] == "LINK_ACTIVE")) for x in g]))
                await asyncio.sleep(0.2)

        await host.start_server(serve, os.environ["LAB_IP"], control.PORT)
        # the control port opens once our SMC listener is armed: the client connects to it first,
        # so its connections cannot reach the listener inside listen() before the option program
        # armed it (their SYN-ACK would lack the SMC option: docs/kernel-fidelity.md)
        threading.Thread(target=orders, daemon=True).start()
        watcher = asyncio.ensure_future(watch())
        await asyncio.wait_for(done.wait(), 200)
        await watcher
        truth["types"] = snaps
        truth["groups_end"] = _groups(host)
        truth["failovers"] = host.snapshot().get("failovers")
    events.close()
    return truth


def guest_stack_server() -> None:
    share = Path(os.environ["LAB_SHARE"])
    control._setup_addresses_only()
    truth = asyncio.run(_server(share))
    (share / "truth.json").write_text(json.dumps(truth, indent=1, default=str))


def guest_stack_client() -> None:
    share = Path(os.environ["LAB_SHARE"])
    control._setup_addresses_only()
    truth = asyncio.run(_client(share))
    (share / "truth.json").write_text(json.dumps(truth, indent=1, default=str))


if __name__ == "__main__":
    {"guest-stack-client": guest_stack_client, "guest-stack-server": guest_stack_server}[sys.argv[1]]()
    sys.exit(0)


# ---------------------------------------------------------------------------- the host side

import lab  # noqa: E402
import pytest  # noqa: E402

from stack import events as ev  # noqa: E402

pytestmark = pytest.mark.lab
_A = f"""{PY} -m native.smcopt load || exit 1
{PY} tests/lab/test_kernel_two_links_stack.py guest-stack-client"""


@pytest.fixture(scope="module")
def run() -> dict:
    a, b = lab.run_pair(_A, f"{PY} tests/lab/test_kernel_two_links.py guest-server", nics=2, timeout=240)
    for r in (a, b):
        r.check()
    return {"a": a, "b": b, "a_truth": json.loads((a.share / "truth.json").read_text()),
            "b_truth": json.loads((b.share / "truth.json").read_text()),
            "b_events": [ev.check_record(json.loads(x)) for x in (b.share / "events.jsonl").read_text().splitlines()]}  # fmt: skip


def test_our_stack_and_the_kernel_form_a_symmetric_group_on_rxe0_and_rxe1(run) -> None:
    a = run["a_truth"]
    assert a["steps"]["sym"] is not None, a["groups_sym"]
    (g,) = a["groups_sym"]
    assert (g["role"], g["type"]) == ("client", "SYM") and sorted(lk["device"] for lk in g["links"]) == ["rxe0", "rxe1"], g
    assert [c["smc"]["mode"] for c in a["sent"]] == ["SMCR", "SMCR"] and all(c["smc"]["version"] == 2 for c in a["sent"])


def test_as_in_the_control_the_second_connection_ran_on_rxe1_and_failed_over_to_rxe0(run) -> None:
    a = run["a_truth"]
    assert a["links_before"] == ["rxe0", "rxe1"], a["links_before"]
    assert a["links_after"] == ["rxe0", "rxe0"], a["links_after"]
    assert all(after > at for at, after in zip(a["sent_at_down"], a["sent_after_failover"], strict=True)), a


def test_as_in_the_control_every_byte_arrived(run) -> None:
    a, received = run["a_truth"], {r["peer"]: r for r in run["b_truth"]["received"]}
    assert len(a["sent"]) == len(received) == 2
    for seed, s in enumerate(a["sent"], start=1):
        assert s["error"] is None and s["sent"] > 0 and s["sha256"] == control._stream_sha(seed, s["sent"]), s
        assert s["peer_says"] == f"{s['sha256']} {s['sent']}", s
    assert sorted((r["sha256"], r["received"]) for r in received.values()) == sorted((s["sha256"], s["sent"]) for s in a["sent"])


def test_as_in_the_control_the_group_went_single_on_both_ends_after_the_cut(run) -> None:
    a, b_truth, events = run["a_truth"], run["b_truth"], run["b_events"]
    assert a["steps"]["single"] is not None, a["groups_single"]
    (g,) = a["groups_single"]
    assert g["type"] == "SINGLE" and [lk["device"] for lk in g["links"] if lk["state"] == "LINK_ACTIVE"] == ["rxe0"], g
    # the kernel server: its own link down, the failover, SYM -> SINGLE once, after its eth1 went down
    t_down, t_up = b_truth["steps"]["down_begin"], b_truth["steps"]["up_begin"]
    changes = [(e.fields["old"], e.fields["new"]) for e in events if e.kind == "lgr.state" and t_down <= e.t < t_up]
    assert changes == [("SYM", "SINGLE")], changes
    downs = [e for e in events if e.kind == "link.event" and e.fields["event"] == "down" and t_down <= e.t < t_up]
    # its port event (smcr_port_err) or, when the cut's first failed send completes before it, the
    # send path (smc_wr_tx_tasklet_fn): both the kernel's link down for the cut, as in the control
    assert downs and downs[0].fields["reason"] in ("smcr_link_down from smcr_port_err", "smcr_link_down from smc_wr_tx_tasklet_fn"), downs
    # our stack followed the kernel's DELETE LINK, as the kernel client did
    assert any("LOST_PATH" in str(f.get("reason")) for f in a["failovers"] or []), a["failovers"]
    # at the end both ends name the same type; the kernel's group may already be gone by its
    # last genl read (our stack's close sends DELETE LINK ALL and the kernel frees it at once)
    if b_truth["genl_end"]:
        ends = (a["groups_end"][0]["type"], b_truth["genl_end"][0]["type"])
        assert ends[0] == ends[1], ends


# ---------------------------------------------------------------------------- the other direction: the kernel's client, our server


@pytest.fixture(scope="module")
def run_server() -> dict:
    a, b = lab.run_pair(
        f"""{PY} -m native.smcopt load || exit 1
{PY} tests/lab/test_kernel_two_links_stack.py guest-stack-server""",
        f"{PY} tests/lab/test_kernel_two_links.py guest-client",
        nics=2,
        timeout=240,
    )
    for r in (a, b):
        r.check()
    return {"a_truth": json.loads((a.share / "truth.json").read_text()), "b_truth": json.loads((b.share / "truth.json").read_text())}


def _ours_at(types: list, t0: float, t1: float) -> list:
    return [groups for t, groups in types if t0 <= t < t1]


def test_with_our_server_the_kernel_client_forms_a_symmetric_group_on_both_nics(run_server) -> None:
    a, b = run_server["a_truth"], run_server["b_truth"]
    assert b["steps"]["sym"] is not None, b["genl_sym"]
    (g,) = b["genl_sym"]
    assert g["type"] == "SYM", g
    assert [r["smc"]["mode"] for r in a["received"]] == ["SMCR", "SMCR"], a["received"]
    assert any(groups == [["SYM", ["rxe0", "rxe1"]]] for _, groups in a["types"]), a["types"][:5]


def test_with_our_server_every_byte_the_kernel_client_sent_arrived(run_server) -> None:
    a, b = run_server["a_truth"], run_server["b_truth"]
    got = sorted((r["sha256"], r["received"]) for r in a["received"])
    sent = sorted((s["sha256"], s["sent"]) for s in b["sent"])
    assert all(s["error"] is None and s["sent"] > 0 for s in b["sent"]), b["sent"]
    assert all(r["error"] is None for r in a["received"]), a["received"]
    assert got == sent
    assert sorted(s["peer_says"] for s in b["sent"]) == sorted(f"{h} {n}" for h, n in got)


def test_with_our_server_the_second_connection_failed_over_and_the_group_went_single_on_both_ends(run_server) -> None:
    a, b = run_server["a_truth"], run_server["b_truth"]
    before = sorted(x["ibname"] for x in b["links_before"].values())
    after = sorted(x["ibname"] for x in b["links_after"].values())
    assert (before, after) == (["rxe0", "rxe1"], ["rxe0", "rxe0"]), (b["links_before"], b["links_after"])  # the rxe1 one moved
    assert b["steps"]["single"] is not None, b["genl_single"]
    steps = a["steps"]
    after_cut = _ours_at(a["types"], steps["down_end"], steps["up_begin"])
    assert after_cut and after_cut[-1] == [["SINGLE", ["rxe0"]]], after_cut[-3:]
    assert all(after > at for at, after in zip(b["sent_at_down"], b["sent_after_failover"], strict=True)), b


def test_with_our_server_the_group_is_back_to_symmetric_when_the_nic_returns(run_server) -> None:
    """When rxe1's port comes back our server adds the link again (the server's part, as
    smcr_port_add). Its first lab runs stayed SINGLE in 5 of 7: the port's ADD LINK came while
    the asymmetric ADD LINK after the loss still waited (for the client's cut rxe1) and was
    dropped, and then the client's late rejection of that one was taken as the answer to the
    next. The request now waits for the running flow, as the kernel's llc_event_q keeps it,
    and a response for another link is left (tests/core/test_failover.py)."""
    a, b = run_server["a_truth"], run_server["b_truth"]
    after_up = [groups for t, groups in a["types"] if t >= a["steps"]["up_end"]]
    assert [["SYM", ["rxe0", "rxe1"]]] in after_up and after_up[-1] == [["SYM", ["rxe0", "rxe1"]]], after_up[-3:]
    assert b["steps"]["sym_again"] is not None and [g["type"] for g in b["genl_sym_again"]] == ["SYM"], b["genl_sym_again"]
