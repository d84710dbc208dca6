"""A link group that is full, with a kernel peer: SMC-Rv2.1 negotiates how many connections
a link group takes (the smaller of both ends' max_conns, at least 16), and a connection
that finds its group full starts another (first contact) on both ends alike.

The kernel's VM sets net.smc.smcr_max_conns_per_lgr to 16, the least it allows; our stack
offers 255, so each group takes 16 (``smc_clc_srv_v2x_features_validate`` on a kernel
server, the Accept's first-contact extension on our client). Each client opens 20
connections before it uses any (tests/lab/interop.py, ``SMCTOP_LAB_HOLD``): the 17th must
start a second link group. Were the ends to disagree on which group a connection joins,
the kernel would decline it (SYNCERR) or the Confirm would name a link the other does not
have; here every connection must be SMC-R, with every byte.
"""

from __future__ import annotations

from collections import Counter

import pytest
from test_kernel_interop import boot, pairs

CONNS, MAX_CONNS = 20, 16
PLAN = ",".join(["4096:4096:client"] * CONNS)


@pytest.fixture(scope="module")
def full() -> dict:
    kernel = f"sysctl -q -w net.smc.smcr_max_conns_per_lgr={MAX_CONNS} || exit 1\nexport SMCTOP_LAB_HOLD=1"
    return boot(PLAN, kernel_ueid=True, stack_ueid=True, kernel_setup=kernel, stack_setup="export SMCTOP_LAB_HOLD=1")


@pytest.mark.lab
@pytest.mark.parametrize("client,server", [("stack-client", "kernel-server"), ("kernel-client", "stack-server")])
def test_the_seventeenth_connection_starts_a_second_link_group_on_both_ends(full, client, server) -> None:
    conns = pairs(full, client, server)
    assert len(conns) == CONNS
    ours = [c if client.startswith("stack") else s for c, s in conns]
    kernel = [s if client.startswith("stack") else c for c, s in conns]
    for c, s in conns:
        assert c["sent"] == s["received"] and s["sent"] == c["received"] and c["eof"] and s["eof"], (c, s)
    assert all(r["smc"]["mode"] == "SMCR" and r["smc"]["fallback_reason"] == 0 for r in ours), ours
    assert all(r["diag"] is not None and r["diag"]["mode"] == "SMCR" for r in kernel), kernel
    per_group = Counter(r["smc"]["lgr"] for r in ours)
    assert sorted(per_group.values()) == [CONNS - MAX_CONNS, MAX_CONNS], per_group
    assert [i for i, r in enumerate(ours) if r["smc"]["first_contact"]] == [0, MAX_CONNS], [r["smc"] for r in ours]
