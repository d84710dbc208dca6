"""The verbs conformance suite (tests/verbs) against the pyverbs provider on Soft-RoCE, in
the kernel lab: in VM a both endpoints on rxe0 (loopback), and across the wire to an
endpoint server in VM b, where frames can be lost and the peer's port can go down."""

import shlex

import lab
import pytest

pytestmark = pytest.mark.lab

SERVER = "10.2.0.2:7000"


def test_conformance_suite_on_rxe() -> None:
    py = shlex.quote(str(lab.PYTHON))
    env = (f"SMCTOP_VERBS_MODES=pyverbs,pyverbs-2vm SMCTOP_VERBS_REMOTE={SERVER} "
           "SMCTOP_RDMA_DEVICE=rxe0 SMCTOP_RDMA_NETDEV=eth0")  # fmt: skip
    quit_b = f"PYTHONPATH=tests {py} -c 'from support.verbs_endpoint import quit_server; quit_server((\"10.2.0.2\", 7000))'"
    cmd_a = f"{env} {lab.pytest_command(['tests/verbs/test_conformance.py', '-v'])}; rc=$?; {quit_b}; exit $rc"
    cmd_b = f"PYTHONPATH=tests {py} -m support.verbs_endpoint --listen {SERVER}"
    a, b = lab.run_pair(cmd_a, cmd_b, timeout=900)
    lab.check_pytest(a)
    b.check()
    counts = lab.junit_counts(a)
    assert counts["skipped"] == 0, a.output
    # every test ran for both modes, except the ones that need a wire (pyverbs-2vm only)
    assert counts["tests"] >= 40, a.output
    assert "[pyverbs-2vm]" in a.output and "test_peer_port_down" in a.output and "[pyverbs]" in a.output
