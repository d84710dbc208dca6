"""The lab itself: a VM boots with Soft-RoCE up, and the project's venv works inside it."""

import lab
import pytest

pytestmark = pytest.mark.lab


def test_one_vm_has_rxe0_with_a_roce_v2_ipv4_gid_and_pyverbs() -> None:
    res = lab.run(
        """
        rdma link show rxe0/1
        cd /sys/class/infiniband/rxe0/ports/1
        for i in 0 1 2 3; do echo "GID $i $(cat gids/$i) $(cat gid_attrs/types/$i 2>/dev/null)"; done
        cd - >/dev/null
        .venv/bin/python -c 'import pyverbs.device as d; print("PYVERBS", [x.name for x in d.get_device_list()])'
        """,
        timeout=60,
    ).check()
    out = res.output
    assert "state ACTIVE" in out and "netdev eth0" in out, out
    gids = [line.split() for line in out.splitlines() if line.startswith("GID ")]
    assert any(g[2] == "0000:0000:0000:0000:0000:ffff:0a02:0001" and g[3:] == ["RoCE", "v2"] for g in gids), gids
    assert "PYVERBS [b'rxe0']" in out, out


def test_two_vms_reach_each_other_over_both_wires() -> None:
    """nics=2: a second wire (eth1, 10.2.1.N) with its own Soft-RoCE device rxe1, for tests
    that need two RoCE devices per host (SYM link groups, failover)."""
    a, b = lab.run_pair(
        """
        rdma link show rxe1/1
        for i in $(seq 100); do exec 3<>/dev/tcp/$LAB_PEER_IP/7000 && break; sleep 0.1; done
        read -r line <&3; echo "GOT $line"
        for i in $(seq 100); do exec 4<>/dev/tcp/$LAB_PEER_IP2/7001 && break; sleep 0.1; done
        read -r line <&4; echo "GOT2 $line"
        """,
        """.venv/bin/python -c "import socket
for port, text in ((7000, b'hi-b'), (7001, b'hi-b-again')):
    c, peer = socket.create_server(('', port)).accept()
    c.sendall(text + b' from ' + peer[0].encode() + b'\\n')" """,
        timeout=60,
        nics=2,
    )
    a.check(), b.check()
    assert "GOT hi-b from 10.2.0.1" in a.output, a.output
    assert "GOT2 hi-b-again from 10.2.1.1" in a.output, a.output
    assert "state ACTIVE" in a.output and "netdev eth1" in a.output, a.output


def test_a_hung_guest_command_becomes_a_clear_failure() -> None:
    res = lab.run("sleep 600", timeout=3, rdma=False)
    assert res.rc == 124 and not res.killed
    with pytest.raises(lab.LabError, match="guest command timed out after 3 s"):
        res.check()


def test_a_vm_that_never_powers_off_is_killed_at_the_hard_limit() -> None:
    # A daemon left holding the console pipe keeps run.sh from finishing, like a hung kernel would.
    res = lab.run("setsid sleep 600 &", timeout=5, rdma=False, boot_budget=10)
    assert res.killed and not res.ok
    with pytest.raises(lab.LabError, match="was killed after"):
        res.check()
