"""Capability signalling with the real SMC TCP option (native/smcopt): what the core does
when the runtime knows whether the peer's SYN or SYN-ACK carried the option, and how the
runtime chooses between the option and in-band signalling."""

from __future__ import annotations

import asyncio

import pytest
from support.fabric import pair

from native import smcopt
from stack import Stack, StackConfig
from stack.wire.codes import DECL


def kinds(io, kind):
    return [e for e in io.events if e.kind == kind]


def start(f, a, b, cid, client_opt, server_opt):
    f.connect_tcp(a, cid, b, cid)
    b.host.server_start(cid, (b.ip, 5000), (a.ip, 40000 + cid), f.now, peer_smc=server_opt)
    a.host.client_start(cid, (a.ip, 40000 + cid), (b.ip, 5000), f.now, peer_smc=client_opt)
    f.run(until=f.now + 3)


def test_both_options_seen_the_handshake_runs_as_usual():
    f, a, b = pair()
    start(f, a, b, 1, True, True)
    assert a.apps[1].established and b.apps[1].established
    assert kinds(a, "conn.open")[0].get("peer_smc_option") is True


def test_a_synack_without_the_option_makes_the_client_tcp_with_peernosmc_and_no_clc():
    f, a, b = pair()
    f.connect_tcp(a, 1, b, 1)
    a.host.client_start(1, (a.ip, 40001), (b.ip, 5000), f.now, peer_smc=False)
    c = a.host.conns[1]
    assert a.apps[1].fallback and (c.mode, c.fallback_reason, c.peer_diagnosis) == ("TCP", DECL.PEERNOSMC, 0)
    assert not kinds(a, "clc.msg"), "no Proposal, no Decline: the kernel sends no CLC without the option"
    assert kinds(a, "conn.open")[0].get("peer_smc_option") is False


def test_a_syn_without_the_option_makes_the_server_tcp_at_once():
    f, a, b = pair()
    f.connect_tcp(a, 1, b, 1)
    b.host.server_start(1, (b.ip, 5000), (a.ip, 40001), f.now, peer_smc=False)
    c = b.host.conns[1]
    assert b.apps[1].fallback and (c.mode, c.fallback_reason) == ("TCP", DECL.PEERNOSMC)  # no 6 s wait
    assert not kinds(b, "clc.msg")


def test_in_band_events_are_unchanged():
    f, a, b = pair()
    start(f, a, b, 1, None, None)
    assert a.apps[1].established and "peer_smc_option" not in kinds(a, "conn.open")[0].fields


def test_tcp_option_setting_is_checked():
    with pytest.raises(ValueError, match="tcp_option 'bpf' must be 'auto', 'option' or 'inband'"):
        StackConfig(tcp_option="bpf")


def test_a_required_option_without_the_program_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(smcopt, "MAP_PIN", tmp_path / "smc_opt_sk")

    async def go(mode):
        host = Stack(StackConfig(tcp_option=mode))
        await host.start()
        try:
            return host.signalling, host.signalling_note
        finally:
            await host.close()

    with pytest.raises(smcopt.BpfUnavailable, match="not loaded"):
        asyncio.run(go("option"))
    signalling, note = asyncio.run(go("auto"))
    assert signalling == "inband" and "not loaded" in note
    assert asyncio.run(go("inband")) == ("inband", "")


def test_smc_traffic_says_why_when_the_option_is_required_but_unavailable(monkeypatch, tmp_path, capsys):
    from stack.traffic import cli

    monkeypatch.setattr(smcopt, "MAP_PIN", tmp_path / "smc_opt_sk")
    rc = cli.main(["client", "--connect", "127.1.0.2:5999", "--tcp-option", "option", "--bytes", "1K", "--no-progress"])
    assert rc == 2
    assert "smc-traffic: the SMC option program is not loaded" in capsys.readouterr().err
