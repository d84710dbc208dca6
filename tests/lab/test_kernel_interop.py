"""Interop with the Linux kernel's SMC-R (issue 8): our stack (pyverbs on rxe0, the real SMC
TCP option through native/smc_opt.bpf.c) and the kernel's AF_SMC as peers, both ways.

VM a runs our stack: a server on 5002 and a client to VM b's 5001, with tcpdump on eth0.
VM b runs the kernel: an AF_SMC server on 5001 and an AF_SMC client to VM a's 5002
(tests/lab/interop.py; ksmc.py for UEIDs, smc_diag and AF_SMC sockets). Each connection
sends random data both ways, checksummed on both ends, and one side closes first: the
client on the first connection of each direction, the server on the second. Three boots:
both sides with the UEID (SMC-R), the kernel without a UEID, our stack without one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import kcapture
import lab
import pytest

from native import tcpopt

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "kernel_interop_smcr.pcap"
PEERNOSMC, NOSMCDEV, PEERDECL = 0x03010000, 0x03030000, 0x05000000
REFRESH = bool(os.environ.get("SMCTOP_LAB_REFRESH_FIXTURE"))  # rewrite FIXTURE from a small run
UP, DOWN = (8192, 8192) if REFRESH else (300_000, 200_000)  # more than the 64 KiB RMBs both ways: cursors wrap
PLAN = f"{UP}:{DOWN}:client,{DOWN}:{UP}:server"
PY = ".venv/bin/python"

_OURS = """
{setup}
{py} -m native.smcopt load || exit 1
tcpdump -i eth0 -s 0 -B 65536 -w $LAB_SHARE/eth0.pcap 'tcp port 5001 or tcp port 5002 or udp port 4791' 2>$LAB_SHARE/tcpdump.err &
TD=$!
for i in $(seq 50); do grep -q listening $LAB_SHARE/tcpdump.err 2>/dev/null && break; sleep 0.1; done
{py} tests/lab/interop.py stack-server 5002 --conns {sconns} {ueid} & S=$!
{py} tests/lab/interop.py stack-client $LAB_PEER_IP 5001 --plan {plan} {ueid}; rc=$?
{extra}
wait $S || rc=1
{py} -m native.smcopt status
sleep 0.5; kill -INT $TD; wait $TD
exit $rc
"""
_KERNEL = """
{ueid}
{setup}
{py} tests/lab/interop.py kernel-server 5001 --conns {kconns} & S=$!
{py} tests/lab/interop.py kernel-client $LAB_PEER_IP 5002 --plan {plan}; rc=$?
wait $S || rc=1
exit $rc
"""
_UEID_ADD = f"""{PY} -c 'import sys; sys.path.insert(0, "tests/lab"); import ksmc; ksmc.ueid_add("SMCTOP-LAB")' || exit 1"""


def _records(result: lab.GuestResult, role: str) -> list[dict]:
    path = result.share / f"{role}.jsonl"
    if not path.exists():
        raise lab.LabError(f"VM {result.name} wrote no {path.name}\n{result.output[-3000:]}")
    return [json.loads(line) for line in path.read_text().splitlines()]


def boot(plan: str, kernel_ueid: bool, stack_ueid: bool, plain_tcp: bool = False, kernel_setup: str = "", stack_setup: str = "",
         nics: int = 1) -> dict:  # fmt: skip
    """``kernel_setup``, ``stack_setup``: shell lines each VM runs before its server and client
    start; ``nics=2``: a second wire (eth1, rxe1). Each side's ``<role>-host`` line is under
    ``"<role>-host"``."""
    n = len(plan.split(","))
    extra = f"{PY} tests/lab/interop.py stack-client $LAB_PEER_IP 5001 --plan 4096:4096:client --tcp || rc=1" if plain_tcp else ""
    ours = _OURS.format(py=PY, sconns=n, plan=plan, ueid="" if stack_ueid else "--no-ueid", extra=extra, setup=stack_setup)
    kernel = _KERNEL.format(py=PY, kconns=n + plain_tcp, plan=plan, ueid=_UEID_ADD if kernel_ueid else "", setup=kernel_setup)
    a, b = lab.run_pair(ours, kernel, timeout=180 if nics == 1 else 240, nics=nics)
    for r in (a, b):
        r.check()
    out = {"a": a, "b": b, "pcap": a.share / "eth0.pcap"}
    for role, r in (("stack-server", a), ("stack-client", a), ("kernel-server", b), ("kernel-client", b)):
        out[role] = _records(r, role)
        host = r.share / f"{role}-host.jsonl"
        out[f"{role}-host"] = json.loads(host.read_text().splitlines()[-1]) if host.exists() else None
    return out


@pytest.fixture(scope="module")
def smcr() -> dict:
    return boot(PLAN, kernel_ueid=True, stack_ueid=True, plain_tcp=True)


def pairs(run: dict, client: str, server: str) -> list[tuple[dict, dict]]:
    """(client record, server record) per connection, matched by the data they exchanged."""
    servers = {r["received"]["sha256"]: r for r in run[server]}
    out = []
    for c in run[client]:
        s = servers.get(c["sent"]["sha256"])
        assert s is not None, f"{server} never received what {client} connection {c['i']} sent: {c}\n{run[server]}"
        out.append((c, s))
    return out


def _both_ways(c: dict, s: dict) -> None:
    assert c["sent"] == s["received"] and s["sent"] == c["received"], (c, s)  # SHA-256, CRC-32 and length
    assert c["eof"] and s["eof"], f"end of file not seen after the {c['closer']} closed: {c} {s}"


def _smcr_ours(rec: dict, first: bool) -> None:
    smc = rec["smc"]
    assert (smc["mode"], smc["version"], smc["fallback_reason"]) == ("SMCR", 2, 0), rec
    assert smc["first_contact"] is first, rec
    assert smc["tcp_option"] == {"done": True, "sent": True, "peer": True}, rec


def _smcr_kernel(rec: dict) -> None:
    assert rec["diag"] is not None, f"smc_diag did not list the kernel's socket: {rec}"
    assert (rec["diag"]["mode"], rec["diag"]["fallback_reason"]) == ("SMCR", 0), rec
    assert rec["diag"]["lgr"], f"smc_diag shows no link group: {rec}"


@pytest.mark.lab
def test_our_client_to_a_kernel_server_is_smcr_both_ways_and_closes_from_either_side(smcr) -> None:
    conns = pairs(smcr, "stack-client", "kernel-server")
    smc_conns = [(c, s) for c, s in conns if c["sent"]["len"] != 4096]  # 4096 bytes: the plain-TCP one
    assert [c["closer"] for c, _ in smc_conns] == ["client", "server"]
    for i, (c, s) in enumerate(smc_conns):
        _smcr_ours(c, first=i == 0)  # the second connection reuses the link group (CONFIRM RKEY)
        _smcr_kernel(s)
        _both_ways(c, s)
    assert len({c["smc"]["lgr"] for c, _ in smc_conns}) == 1


@pytest.mark.lab
def test_a_kernel_client_to_our_server_is_smcr_both_ways_and_closes_from_either_side(smcr) -> None:
    conns = pairs(smcr, "kernel-client", "stack-server")
    assert [c["closer"] for c, _ in conns] == ["client", "server"]
    for i, (c, s) in enumerate(conns):
        _smcr_kernel(c)
        _smcr_ours(s, first=i == 0)
        _both_ways(c, s)


@pytest.mark.lab
def test_the_kernel_answers_smc_only_when_our_syn_carried_the_option(smcr) -> None:
    # open_connection(smc=False) opts no socket in: no option, and the kernel server falls
    # back with PEERNOSMC without a word of CLC (as smc_listen_work does)
    (c, s) = [(c, s) for c, s in pairs(smcr, "stack-client", "kernel-server") if c["sent"]["len"] == 4096][0]
    assert c["smc"]["mode"] == "TCP" and c["smc"]["tcp_option"] == {"done": False, "sent": False, "peer": False}, c
    assert (s["diag"]["mode"], s["diag"]["fallback_reason"]) == ("TCP", PEERNOSMC), s
    _both_ways(c, s)


@pytest.mark.lab
def test_the_option_is_on_every_smc_syn_and_synack_and_the_bpf_verdicts_match_the_python_twin(smcr) -> None:
    syns = kcapture.tcp_syns(smcr["pcap"])
    conns = {(r["smc"]["local"], r["smc"]["peer"]): r for r in smcr["stack-client"] + smcr["stack-server"]}
    checked = 0
    for (local, peer), rec in conns.items():
        lport, pport = int(local.split(":")[1]), int(peer.split(":")[1])
        ours = [x for x in syns if (x.sport, x.dport) == (lport, pport)]
        theirs = [x for x in syns if (x.sport, x.dport) == (pport, lport)]
        assert ours and theirs, f"no SYN / SYN-ACK of {local} <-> {peer} in the capture"
        want = rec["smc"]["tcp_option"]["sent"]  # False only on the plain-TCP connection
        assert all(tcpopt.carries_smc(x.header) == want for x in ours), (local, peer, want)
        if want:
            # the BPF program's verdict on the peer's SYN(-ACK) is the twin's verdict on the captured bytes
            assert rec["smc"]["tcp_option"]["peer"] == all(tcpopt.carries_smc(x.header) for x in theirs) is True
            opt = [o for o in tcpopt.options(ours[-1].header) if o[0] == tcpopt.KIND]
            assert opt == [(tcpopt.KIND, tcpopt.OPTION[2:])]  # exactly kind 254, length 6, ExID E2D4C3D9
        checked += 1
    assert checked == 5


def _check_capture(pcap: Path) -> tuple[list[str], list[str]]:
    frames = {f.number: f for f in kcapture.frames(pcap)}
    bad, known = [], []
    for n in kcapture.malformed(pcap):
        why = kcapture.explain(frames[n].data)
        (known if why else bad).append(f"frame {n}: {why or 'malformed for no known reason'}")
    return bad, known


@pytest.mark.lab
def test_a_capture_of_our_stack_and_the_kernel_decodes_in_tshark(smcr) -> None:
    pcap = smcr["pcap"]
    bad, known = _check_capture(pcap)
    assert not bad, "tshark flags frames that are not the known v2 LLC length quirk:\n" + "\n".join(bad)
    assert known, "no CONFIRM LINK v2 was flagged: did the capture miss the link set-up?"
    info = " ".join(kcapture.smc_messages(pcap))
    for what in ("SMC-Rv2-Proposal", "SMC-Rv2-Accept", "SMC-Rv2-Confirm", "CDC Message"):
        assert what in info, f"tshark shows no {what} in {pcap}"
    print("known Wireshark 4.0 false positives:\n  " + "\n  ".join(known))
    if REFRESH:
        shutil.copyfile(pcap, FIXTURE)


def test_the_saved_kernel_capture_decodes_with_only_the_known_quirk() -> None:
    """The fixture (a lab capture of our stack and the kernel, both directions) for smc-trace
    and friends; SMCTOP_LAB_REFRESH_FIXTURE=1 on the lab test above rewrites it from a small run."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (scripts/setup.sh installs it)")
    bad, known = _check_capture(FIXTURE)
    assert not bad and known, bad
    info = " ".join(kcapture.smc_messages(FIXTURE))
    assert "SMC-Rv2-Proposal" in info and "CDC Message" in info


@pytest.fixture(scope="module", params=["kernel", "stack"], ids=["kernel-without-ueid", "stack-without-ueid"])
def mismatch(request) -> tuple[str, dict]:
    plan = "20000:30000:client"
    return request.param, boot(plan, kernel_ueid=request.param != "kernel", stack_ueid=request.param != "stack")


@pytest.mark.lab
def test_without_a_ueid_on_one_side_both_directions_fall_back_with_the_same_code(mismatch) -> None:
    missing, run = mismatch
    for client, server in (("stack-client", "kernel-server"), ("kernel-client", "stack-server")):
        ((c, s),) = pairs(run, client, server)
        _both_ways(c, s)  # data still flows, over TCP
        views = {}
        for rec in (c, s):
            if rec["impl"] == "stack":
                smc = rec["smc"]
                assert smc["tcp_option"]["peer"], rec  # the option was there: this is a CLC-level decline
                views["stack"] = (smc["mode"], smc["fallback_reason"], smc["peer_diagnosis"])
            else:
                assert rec["diag"] is not None, rec
                views["kernel"] = (rec["diag"]["mode"], rec["diag"]["fallback_reason"], rec["diag"]["peer_diagnosis"])
        # The side without a UEID finds no SMC-Rv2 device and declines with NOSMCDEV; the
        # other falls back with PEERDECL and keeps NOSMCDEV as the peer's diagnosis (the
        # kernel's smc_diag shows it as 0x05000000/0x03030000), exactly as two kernels do.
        decliner, other = ("kernel", "stack") if missing == "kernel" else ("stack", "kernel")
        assert views[decliner][:2] == ("TCP", NOSMCDEV), (client, views)
        assert views[other] == ("TCP", PEERDECL, NOSMCDEV), (client, views)
