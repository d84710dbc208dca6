"""The README's main command runs this demo; it must say what it shows."""

from __future__ import annotations

import os

from support import tshark

from dissectors import exchange_demo
from dissectors.pcapng import read_packets


def test_demo_decodes_the_whole_exchange(tmp_path, capsys, monkeypatch):
    for key in [k for k in os.environ if k.startswith("WIRESHARK_")]:
        monkeypatch.delenv(key)
    for key, value in tshark.env().items():  # the demo's own tshark run, away from the user's plugins
        monkeypatch.setenv(key, value)
    out = tmp_path / "demo.pcapng"
    assert exchange_demo.main(["--out", str(out)]) == 0
    text = capsys.readouterr().out
    ours = text.split("== decoded by smctop ==")[1].split("== decoded by tshark")[0]
    lines = [line for line in ours.splitlines() if line.strip()]
    assert len(lines) == len(list(read_packets(out.read_bytes())))
    assert "TCP SYN SMC option" in lines[0]
    assert "CLC Proposal v2 offers v1=N v2=R UEIDs SMCTOP-DEMO" in lines[3]
    assert "CLC Accept v2 first contact" in lines[4] and "CLC Confirm v2 first contact" in lines[5]
    assert "LLC CONFIRM LINK v2 request link 1" in lines[6] and "[v2 length little-endian]" in lines[6]
    assert sum("RDMA WRITE" in line for line in lines) == 6
    assert "CDC seq 1 token 0x00000001 prod 0:6000" in ours
    assert "LLC DELETE LINK v2 request all links orderly 0x00030000 PROG_INIT_TERM" in lines[-1]
    assert all("ICRC ok" in line for line in lines if "CDC" in line or "LLC" in line)


def test_demo_capture_with_big_endian_llc_decodes_cleanly_in_tshark(tmp_path):
    out = tmp_path / "demo-be.pcapng"
    exchange_demo.build(out, "big")
    frames = tshark.decode(str(out))
    assert not [f.number for f in frames if f.malformed]
    llc_types = [int(f.smc[0]["smc.llc_msg"], 0) for f in frames if f.smc and "smc.llc_msg" in f.smc[0]]
    assert llc_types.count(0xFE) == 4 and 0x21 in llc_types and 0x27 in llc_types and 0x24 in llc_types
