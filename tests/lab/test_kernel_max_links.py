"""A kernel peer that allows one link per link group (SMC-Rv2.1's max_links): with a second
NIC on both ends, where the same setup forms a symmetric group of two links
(test_kernel_two_links_stack.py), no second link may be added or asked for.

The kernel VM sets net.smc.smcr_max_links_per_lgr to 1; our stack offers 2. The first
contact negotiates the smaller (``smc_clc_srv_v2x_features_validate`` on a kernel server,
the Accept's first-contact extension on our client; on our server, the Proposal's). Then
neither side may add a link: a kernel server adds none (``smc_llc_srv_add_link`` checks
``lgr->max_links``), and our stack, with rxe1 unused, must neither send ADD LINK as a
server nor REQUEST ADD LINK as a client. Each client holds its connections open for a few
seconds, past the time a second link takes to come up in the two-link runs.
"""

from __future__ import annotations

import pytest
from test_kernel_interop import PY, boot, pairs

CONNS, PAUSE = 3, 4
PLAN = ",".join(["65536:65536:client"] * CONNS)
_TWO_LINKS = f'{PY} -c \'import sys; sys.path.insert(0, "tests/lab"); import test_kernel_two_links as t; '


@pytest.fixture(scope="module")
def one_link() -> dict:
    kernel = (_TWO_LINKS + "t._setup()' || exit 1\n"  # eth1 on a /16, UEID, both NICs under one PNET ID
              "sysctl -q -w net.smc.smcr_max_links_per_lgr=1 || exit 1\n"
              f"export SMCTOP_LAB_PAUSE={PAUSE}")  # fmt: skip
    ours = _TWO_LINKS + f"t._setup_addresses_only()' || exit 1\nexport SMCTOP_LAB_DEVICES=rxe0,rxe1 SMCTOP_LAB_PAUSE={PAUSE}"
    return boot(PLAN, kernel_ueid=False, stack_ueid=True, kernel_setup=kernel, stack_setup=ours, nics=2)


@pytest.mark.lab
@pytest.mark.parametrize("client,server", [("stack-client", "kernel-server"), ("kernel-client", "stack-server")])
def test_every_connection_moves_its_bytes_over_smcr(one_link, client, server) -> None:
    conns = pairs(one_link, client, server)
    assert len(conns) == CONNS
    for c, s in conns:
        assert c["sent"] == s["received"] and s["sent"] == c["received"] and c["eof"] and s["eof"], (c, s)
        ours = c if client.startswith("stack") else s
        assert ours["smc"]["mode"] == "SMCR" and ours["smc"]["fallback_reason"] == 0, ours


@pytest.mark.lab
@pytest.mark.parametrize("ours", ["stack-client", "stack-server"])
def test_our_link_groups_keep_one_link_when_the_kernel_allows_one(one_link, ours) -> None:
    host = one_link[f"{ours}-host"]
    assert host is not None and host["lgrs"], host
    for g in host["lgrs"]:
        assert g["max_links"] == 1 and g["type"] == "SINGLE", g
        assert [lk["device"] for lk in g["links"]] == ["rxe0"], g  # rxe1 never used
    assert host["stats"]["links_added"] == 0, host["stats"]


@pytest.mark.lab
@pytest.mark.parametrize("theirs", ["kernel-client", "kernel-server"])
def test_the_kernels_link_groups_keep_one_link(one_link, theirs) -> None:
    host = one_link[f"{theirs}-host"]
    assert host is not None and "lgrs_error" not in host, host
    assert host["lgrs"] and all(g["type"] == "SINGLE" and len(g["links"]) == 1 for g in host["lgrs"]), host["lgrs"]


@pytest.mark.lab
def test_neither_end_adds_or_asks_for_a_link_on_the_wire(one_link) -> None:
    """What the snapshots cannot show: an ADD LINK the kernel turned down (a stack that
    ignored the limit sent one and the group still had one link)."""
    from collections import Counter

    from dissectors.capture import read_events

    llc = Counter((e.host, e.get("type")) for e in read_events(str(one_link["pcap"])) if e.kind == "llc.msg")
    assert llc[("10.2.0.1", "LLC CONFIRM LINK v2")] == llc[("10.2.0.2", "LLC CONFIRM LINK v2")] == 2, llc  # a first link each way
    assert not [k for k in llc if "ADD LINK" in (k[1] or "")], llc
