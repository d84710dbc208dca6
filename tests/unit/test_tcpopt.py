"""The SMC TCP option: native/tcpopt.py (pure Python) against native/smc_tcpopt.h, the C
parser the BPF program runs, compiled into native/build/tcpopt_check by native/build.sh.
Both must give the same verdict on every header, and that verdict must be the kernel's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from native import smcopt, tcpopt

NATIVE = Path(tcpopt.__file__).resolve().parent
CHECK = NATIVE / "build" / "tcpopt_check"
OPT = tcpopt.OPTION
NOP, EOL = b"\x01", b"\x00"
MSS = bytes([2, 4, 0x05, 0xB4])
SACK_OK = bytes([4, 2])
TS = bytes([8, 10]) + bytes(8)
WSCALE = bytes([3, 3, 7])


def c_verdicts(headers: list[bytes]) -> list[int]:
    if not CHECK.exists():
        pytest.fail(f"{CHECK} is missing: native/build.sh builds it (scripts/setup.sh runs it)")
    out = subprocess.run([str(CHECK)], input="".join(h.hex() + "\n" for h in headers), capture_output=True, text=True, check=True)
    return [int(x) for x in out.stdout.split()]


KNOWN = [
    # (what, header, verdict)
    ("Linux SYN with the option", tcpopt.build_header(tcpopt.SYN, MSS + SACK_OK + TS + NOP + WSCALE + NOP + NOP + OPT), 1),
    ("SYN-ACK with the option", tcpopt.build_header(tcpopt.SYN | tcpopt.ACK, MSS + NOP + NOP + OPT), 1),
    ("the option alone", tcpopt.build_header(tcpopt.SYN, OPT), 1),
    ("SYN without it", tcpopt.build_header(tcpopt.SYN, MSS + SACK_OK + TS), 0),
    ("no options", tcpopt.build_header(tcpopt.SYN, b""), 0),
    ("the option on a plain ACK", tcpopt.build_header(tcpopt.ACK, OPT), 0),
    ("another ExID", tcpopt.build_header(tcpopt.SYN, bytes([254, 6, 0xE2, 0xD4, 0xC3, 0xDA])), 0),
    ("kind 253", tcpopt.build_header(tcpopt.SYN, bytes([253, 6]) + OPT[2:]), 0),
    ("odd length 7", tcpopt.build_header(tcpopt.SYN, bytes([254, 7]) + OPT[2:] + b"\x00"), 0),
    ("even length 8 (the kernel takes >= 6)", tcpopt.build_header(tcpopt.SYN, bytes([254, 8]) + OPT[2:] + b"\x00\x00"), 1),
    ("after EOL", tcpopt.build_header(tcpopt.SYN, EOL + NOP + OPT), 0),
    ("after a silly length 1", tcpopt.build_header(tcpopt.SYN, bytes([5, 1]) + OPT), 0),
    ("after an option running past the end", tcpopt.build_header(tcpopt.SYN, bytes([5, 40]) + OPT), 0),
    ("cut short", tcpopt.build_header(tcpopt.SYN, OPT)[:24], -1),
    ("19 bytes", bytes(19), -1),
    ("data offset 4", bytes(12) + b"\x40\x02" + bytes(6), -1),
]


@pytest.mark.parametrize("what,header,verdict", KNOWN, ids=[k[0] for k in KNOWN])
def test_known_headers(what, header, verdict):
    assert tcpopt.find(header) == verdict


def test_the_c_parser_agrees_on_the_known_headers():
    assert c_verdicts([h for _, h, _ in KNOWN]) == [v for _, _, v in KNOWN]


option_bytes = st.lists(
    st.one_of(st.just(OPT), st.just(NOP), st.just(EOL), st.just(MSS), st.just(TS), st.just(SACK_OK),
              st.binary(min_size=1, max_size=8), st.builds(lambda n: bytes([254, n]) + OPT[2:], st.integers(0, 12))),
    max_size=8,
).map(lambda parts: b"".join(parts)[:40])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([tcpopt.SYN, tcpopt.SYN | tcpopt.ACK, tcpopt.ACK, 0]), option_bytes,
                          st.integers(0, 70)), min_size=1, max_size=40))  # fmt: skip
def test_python_twin_and_c_parser_give_identical_results(cases):
    headers = []
    for flags, opts, cut in cases:
        h = tcpopt.build_header(flags, opts)
        headers.append(h[:cut] if cut < len(h) else h)  # some cut short: both must say -1
    assert c_verdicts(headers) == [tcpopt.find(h) for h in headers]


def test_bad_input_gets_a_clear_error():
    with pytest.raises(tcpopt.TcpOptionError, match="not a TCP header"):
        tcpopt.carries_smc(b"\x00" * 10)
    with pytest.raises(tcpopt.TcpOptionError, match="at most 40"):
        tcpopt.build_header(opts=bytes(41))


def test_the_bpf_object_is_built_and_writes_exactly_our_option():
    obj = smcopt.OBJECT
    assert obj.exists(), f"{obj} is missing: native/build.sh builds it"
    data = obj.read_bytes()
    assert data[:4] == b"\x7fELF" and data[18] == 247  # EM_BPF
    assert OPT in data  # the 6 option bytes it stores with bpf_store_hdr_opt
    assert b"smc_opt_sk" in data and b"sockops" in data


def test_without_the_loaded_program_the_map_says_why(monkeypatch, tmp_path):
    monkeypatch.setattr(smcopt, "MAP_PIN", tmp_path / "nothing")
    with pytest.raises(smcopt.BpfUnavailable, match="not loaded .*'python -m native.smcopt load'"):
        smcopt.OptionMap.open()
    monkeypatch.setattr(smcopt, "OBJECT", tmp_path / "missing.o")
    with pytest.raises(smcopt.BpfUnavailable, match="not built .*native/build.sh"):
        smcopt.OptionMap.open()
