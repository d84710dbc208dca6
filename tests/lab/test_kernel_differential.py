"""Differential runs against the kernel (issue 16): each scenario played twice in one boot of
two VMs, between two kernels (the control: what the kernel does) and between the kernel and
our stack, in both directions; the outcomes must be the same (tests/lab/diffrun.py plays
them: urgent data mid-stream, 50 concurrent connections on one link group, close with
unread data from either side, an IPv6 connection).

VM a (10.2.0.1) runs our stack (pyverbs on rxe0, the BPF SMC option) as a server on 5102
and the kernel's AF_SMC server on 5103, and plays each scenario as a client to VM b, first
with our stack, then with the kernel. VM b (10.2.0.2) runs the kernel's server on 5101 and,
once a's clients are done, plays each scenario as a kernel client to our stack (5102) and to
VM a's kernel (5103).
"""

from __future__ import annotations

import json

import diffrun
import lab
import pytest

PY = ".venv/bin/python"
PER_CLIENT = diffrun.CONC + len(diffrun.SCENARIOS) - 1  # connections one client run opens
UEID_ADD = f"""{PY} -c 'import sys; sys.path.insert(0, "tests/lab"); import ksmc; ksmc.ueid_add("{diffrun.LAB_UEID}")' || exit 1"""

_A = f"""
{UEID_ADD}
{PY} -m native.smcopt load || exit 1
{PY} tests/lab/diffrun.py server stack 5102 --count {PER_CLIENT} & S1=$!
{PY} tests/lab/diffrun.py server kernel 5103 --count {PER_CLIENT} & S2=$!
rc=0
{PY} tests/lab/diffrun.py client stack $LAB_PEER_IP 5101 --host6 $LAB_PEER_IP6 || rc=1
{PY} tests/lab/diffrun.py client kernel $LAB_PEER_IP 5101 --host6 $LAB_PEER_IP6 || rc=1
wait $S1 || rc=1
wait $S2 || rc=1
exit $rc
"""
# b plays its clients once a's are done: one vCPU each under TCG, and a kernel client gives
# up on a CLC answer after 2 s (SMC_CLC_WAIT_TIME), so the phases do not overlap
_B = f"""
{UEID_ADD}
rc=0
{PY} tests/lab/diffrun.py server kernel 5101 --count {2 * PER_CLIENT} || rc=1
{PY} tests/lab/diffrun.py client kernel $LAB_PEER_IP 5102 --host6 $LAB_PEER_IP6 || rc=1
{PY} tests/lab/diffrun.py client kernel $LAB_PEER_IP 5103 --host6 $LAB_PEER_IP6 || rc=1
exit $rc
"""


def _load(result: lab.GuestResult, name: str) -> list[dict]:
    path = result.share / f"{name}.jsonl"
    if not path.exists():
        raise lab.LabError(f"VM {result.name} wrote no {path.name}\n{result.output[-3000:]}")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs() -> dict:
    """(client records, server records) per pairing: 'client impl -> server impl'."""
    a, b = lab.run_pair(_A, _B, timeout=600)
    for r in (a, b):
        r.check()
    k5101 = _load(b, "kernel-server-5101")
    return {
        "stack->kernel": (_load(a, "stack-client-5101"), [r for r in k5101 if r["peer"] == "stack"]),
        "kernel->kernel (a to b)": (_load(a, "kernel-client-5101"), [r for r in k5101 if r["peer"] == "kernel"]),
        "kernel->stack": (_load(b, "kernel-client-5102"), _load(a, "stack-server-5102")),
        "kernel->kernel (b to a)": (_load(b, "kernel-client-5103"), _load(a, "kernel-server-5103")),
    }


def _of(records: list[dict], scenario: str) -> list[dict]:
    out = [r for r in records if r["scenario"] == scenario]
    for r in out:
        assert "error" not in r, r
    return out


def _mode(r: dict) -> str:
    return r["smc"]["mode"] if r["impl"] == "stack" else (r["diag"] or {}).get("mode")


def _view(r: dict) -> tuple:
    """What one end says about its connection: mode, fallback reason, the peer's diagnosis."""
    info = r["smc"] if r["impl"] == "stack" else (r["diag"] or {})
    return info.get("mode"), info.get("fallback_reason") or 0, info.get("peer_diagnosis") or 0


# each mixed pairing and the kernel pairing it is compared with (the same direction of data)
PAIRS = [("stack->kernel", "kernel->kernel (a to b)"), ("kernel->stack", "kernel->kernel (b to a)")]


@pytest.mark.lab
@pytest.mark.parametrize("mixed,control", PAIRS)
def test_urgent_data_mid_stream_arrives_out_of_band_as_between_kernels(runs, mixed, control) -> None:
    seen = {}
    for name in (mixed, control):
        (c,), (s,) = (_of(x, "urgent") for x in runs[name])
        assert _mode(c) == _mode(s) == "SMCR", (name, c, s)
        # every byte through, the urgent byte out of the stream and read out of band, no stall
        assert s["received"] == c["sent"] and s["urgent"] == diffrun.URGENT_BYTE, (name, c, s)
        assert c["peer_saw"] == {"len": c["sent"]["len"], "urgent": diffrun.URGENT_BYTE}, (name, c)
        seen[name] = (s["received"], s["urgent"], c["peer_saw"], c["next"], s["next"])
    assert seen[mixed] == seen[control]


@pytest.mark.lab
@pytest.mark.parametrize("mixed,control", PAIRS)
def test_fifty_concurrent_connections_share_one_link_group_as_between_kernels(runs, mixed, control) -> None:
    for name in (mixed, control):
        clients, servers = (_of(x, "conc50") for x in runs[name])
        assert len(clients) == len(servers) == diffrun.CONC, name
        assert all(_mode(r) == "SMCR" for r in clients + servers), name
        assert sorted(r["sent"]["sha256"] for r in clients) == sorted(r["received"]["sha256"] for r in servers), name
        assert all(r["received"] == r["sent"] for r in clients), name  # echoed back intact
        if clients[0]["impl"] == "stack":
            assert len({r["smc"]["lgr"] for r in clients}) == 1, name
        # the client's view while all 50 were open: one link group carries every one of them
        assert any((g["conns"] or 0) >= diffrun.CONC for g in clients[0]["lgrs"]), (name, clients[0]["lgrs"])


@pytest.mark.lab
@pytest.mark.parametrize("closer", ["client", "server"])
@pytest.mark.parametrize("mixed,control", PAIRS)
def test_a_close_with_unread_data_looks_the_same_to_the_peer_as_between_kernels(runs, mixed, control, closer) -> None:
    """smc_close_final: unread data makes the close an abort, whichever side closes; the
    peer's application sees what it sees with a kernel closer: end of file (smc_rx_recvmsg
    stops on peer_conn_abort and returns 0; our reader raised ECONNRESET before this test)."""
    scenario = f"unread-{closer}"
    seen = {}
    for name in (mixed, control):
        (c,), (s,) = (_of(x, scenario) for x in runs[name])
        closing, other = (c, s) if closer == "client" else (s, c)
        assert closing["closed_unread"], (name, closing)
        seen[name] = other["next"]
    assert seen[mixed] == seen[control], seen
    assert seen[control] == "eof", seen


@pytest.mark.lab
@pytest.mark.parametrize("mixed,control", PAIRS)
def test_an_ipv6_connection_ends_as_between_kernels(runs, mixed, control) -> None:
    """The same outcome at each end as between two kernels, whatever it is on Soft-RoCE (by
    the kernel's source: v2 is IPv4 only and v1 wants a RoCE v1 GID), bytes intact."""
    views = {}
    for name in (mixed, control):
        (c,), (s,) = (_of(x, "ipv6") for x in runs[name])
        assert c["received"] == c["sent"] == s["received"], (name, c, s)
        peer = (c.get("diag") or {}).get("peer", "") if c["impl"] == "kernel" else c["smc"].get("peer", "")
        assert peer.startswith("[fd00:2::"), (name, c)  # the connection really was IPv6
        views[name] = (_view(c), _view(s))
    assert views[mixed] == views[control], views


@pytest.mark.lab
@pytest.mark.parametrize("mixed,control", PAIRS)
def test_the_side_that_closes_first_keeps_the_tcp_time_wait_as_between_kernels(runs, mixed, control) -> None:
    """smc_close_active shuts the clcsock down right after the final flag of a close from
    ACTIVE: the closer's FIN goes first, so its TCP keeps the TIME_WAIT and the peer's, which
    closes after reading end of file, none (a server facing many closing clients piles up no
    TIME_WAIT sockets). Our stack sent its FIN only once both close flags had crossed."""
    seen = {}
    for name in (mixed, control):
        (c,), (s,) = (_of(x, "close-first") for x in runs[name])
        assert s["received"] == c["sent"] and s["next"] == "eof", (name, c, s)
        seen[name] = {"client after close": c["tcp_after_close"], "server at eof": s["tcp_at_eof"], "server after close": s["tcp_after_close"]}
    assert seen[mixed] == seen[control], seen
    assert seen[control] == {"client after close": "TIME_WAIT", "server at eof": "CLOSE_WAIT", "server after close": None}, seen


@pytest.mark.lab
@pytest.mark.parametrize("mixed,control", PAIRS)
def test_the_side_that_shuts_down_writing_first_keeps_the_tcp_time_wait_as_between_kernels(runs, mixed, control) -> None:
    """smc_shutdown(SHUT_WR) shuts the clcsock down for writing after "done writing": the
    client of a request/answer that half closes sends the first FIN and keeps the TIME_WAIT."""
    seen = {}
    for name in (mixed, control):
        (c,), (s,) = (_of(x, "shutdown-first") for x in runs[name])
        assert s["received"] == c["sent"] and s["next"] == "eof" and c["answer_ok"] and c["next"] == "eof", (name, c, s)
        seen[name] = {"client after close": c["tcp_after_close"], "server at eof": s["tcp_at_eof"], "server after close": s["tcp_after_close"]}
    assert seen[mixed] == seen[control], seen
    assert seen[control] == {"client after close": "TIME_WAIT", "server at eof": "CLOSE_WAIT", "server after close": None}, seen
