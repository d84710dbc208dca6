"""The lab's PNET table helper (tests/lab/ksmc.py): the SMC_PNETID GET dump read back as
smc_pnet -s shows it, and bad input refused before anything reaches the kernel. The
kernel's own answers are checked in tests/lab/test_kernel_two_links.py."""

from __future__ import annotations

import errno
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))

import ksmc  # noqa: E402

from smckernel import netlink as nl  # noqa: E402


def entry(name: str, eth: str, ib: str, port: int, seq: int = 1) -> bytes:
    """One reply message as smc_pnet_dumpinfo writes it (net/smc/smc_pnet.c: "n/a" and port
    0xff for the side an entry does not have)."""
    body = nl.genl_header(ksmc.PNETID_GET) + b"".join(
        nl.attr(t, v) for t, v in ((ksmc.PNETID_NAME, name.encode() + b"\0"), (ksmc.PNETID_ETHNAME, eth.encode() + b"\0"),
                                   (ksmc.PNETID_IBNAME, ib.encode() + b"\0"), (ksmc.PNETID_IBPORT, bytes([port]))))  # fmt: skip
    return nl.message(30, nl.NLM_F_MULTI, seq, body)


def done(err: int = 0) -> bytes:
    return nl.message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 1, struct.pack("=i", err))


def test_the_table_reads_back_one_entry_per_interface_or_device() -> None:
    stream = entry("SMCTOPNET", "eth0", "n/a", 0xFF) + entry("SMCTOPNET", "n/a", "rxe0", 1) + entry("NET2", "n/a", "rxe1", 2) + done()
    assert ksmc.parse_pnet(stream) == [
        {"pnetid": "SMCTOPNET", "eth": "eth0", "ib": None, "ibport": None},
        {"pnetid": "SMCTOPNET", "eth": None, "ib": "rxe0", "ibport": 1},
        {"pnetid": "NET2", "eth": None, "ib": "rxe1", "ibport": 2},
    ]
    assert ksmc.parse_pnet(done()) == []


def test_a_dump_the_kernel_ended_with_an_error_says_which_errno() -> None:
    with pytest.raises(OSError) as e:
        ksmc.parse_pnet(done(-errno.EPERM))
    assert e.value.errno == errno.EPERM and "errno 1" in str(e.value)


def test_pnet_add_needs_an_interface_or_a_device() -> None:
    with pytest.raises(ValueError, match=r"\(eth=\).*\(ib=\)"):
        ksmc.pnet_add("SMCTOPNET")
