"""The harness's own failures name what is wrong and what to do (no VM is booted)."""

import lab
import pytest


def test_missing_qemu_says_run_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab, "QEMU", "qemu-system-does-not-exist")
    with pytest.raises(lab.LabError, match=r"qemu-system-does-not-exist not found: run scripts/setup.sh"):
        lab.run("true")


def test_missing_kernel_says_run_setup(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(lab, "QEMU", "sh")  # any program on PATH: the kernel check comes next
    monkeypatch.setattr(lab, "BUILD", tmp_path)
    with pytest.raises(lab.LabError, match=r"lab kernel is missing .*kver.*run scripts/setup.sh"):
        lab.run("true")
    (tmp_path / "kver").write_text("6.12.0-test\n")
    with pytest.raises(lab.LabError, match=r"lab kernel is incomplete .*vmlinuz-6.12.0-test is missing"):
        lab.run("true")


def test_the_lab_does_not_nest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lab.GUEST_ENV, "1")
    with pytest.raises(lab.LabError, match="does not nest"):
        lab.run("true")


PANIC_CONSOLE = """LAB_MARK BOOTED 3.51
LAB_MARK READY 5.69
[   20.923273] traps: PANIC: double fault, error_code: 0x0
[   20.925152] Oops: double fault: 0000 [#1] PREEMPT SMP NOPTI
[   20.926103] Workqueue: rxe_wq do_work [rdma_rxe]
[   20.929165]  rxe_init_packet+0xa1/0x150 [rdma_rxe]
[   20.930317] Kernel panic - not syncing: Fatal exception in interrupt
"""


def _result(name: str, rc, console: str, tmp_path) -> "lab.GuestResult":
    return lab.GuestResult(name, rc, "", console, tmp_path, tmp_path / f"{name}.console.log", 30.0, 120.0,
                           marks={"BOOTED": 3.51, "READY": 5.69})  # fmt: skip


def test_a_guest_kernel_panic_is_named(tmp_path) -> None:
    """A lab run of 2026-12-06: VM a's kernel died in Soft-RoCE's receiver under the test."""
    r = _result("a", None, PANIC_CONSOLE, tmp_path)
    assert r.kernel_panic() == "Oops: double fault: 0000 [#1] PREEMPT SMP NOPTI; Workqueue: rxe_wq do_work [rdma_rxe]"
    assert r.failure().startswith("VM a's kernel panicked before the guest command finished: Oops: double fault")
    assert _result("a", 0, PANIC_CONSOLE, tmp_path).kernel_panic() is None  # the command had finished
    plain = _result("a", None, "LAB_MARK BOOTED 3.5\n", tmp_path)
    assert plain.kernel_panic() is None and "stopped before the guest command finished" in plain.failure()


FAULT_CONSOLE = """LAB_MARK BOOTED 3.53
LAB_MARK READY 5.42
/tmp/run/a/cmd.sh: line 2:   192 Segmentation fault      .venv/bin/python tests/lab/test_kernel_two_links_stack.py guest-stack-server
LAB_MARK DONE 22.58
--- dmesg (last 30 lines)
[   22.492707] RIP: 0010:kmem_cache_alloc_node_noprof+0x74/0x330
[   22.492817]  ? __alloc_skb+0x160/0x1a0
[   22.492984]  </#DB>
[   22.493033]  rxe_init_packet+0xa1/0x150 [rdma_rxe]
[   22.493141]  send_common_ack.isra.0+0x48/0xb0 [rdma_rxe]
[   22.493373] ---[ end trace 0000000000000000 ]---
[   22.521049] traps: python[196] general protection fault ip:7fb636082193 sp:7fb6339d1728 error:0 in libc.so.6[86193,7fb636022000+156000]
"""


def test_a_guest_kernel_fault_before_a_failed_command_is_named(tmp_path) -> None:
    """A lab run of 2026-12-06: VM a's kernel faulted in Soft-RoCE's ACK path without
    panicking, and 28 ms later our process on it died of a general protection fault."""
    r = _result("a", 139, FAULT_CONSOLE, tmp_path)
    assert r.kernel_fault() == "RIP: 0010:kmem_cache_alloc_node_noprof+0x74/0x330; rxe_init_packet+0xa1/0x150 [rdma_rxe]"
    assert r.kernel_panic() is None
    assert r.failure() == "VM a: guest command exited with 139 after the guest kernel faulted: " + r.kernel_fault()
    assert _result("a", 0, FAULT_CONSOLE, tmp_path).kernel_fault() is None  # the command succeeded all the same
    assert _result("a", 1, "LAB_MARK BOOTED 3.5\n[ 1.0] traps: python[9] general protection fault\n", tmp_path).kernel_fault() is None  # ours alone


def test_a_panicked_run_is_booted_again_once(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    runs = []

    def boot(commands, **kwargs):
        runs.append(commands)
        panicked = len(runs) <= panics
        return [_result("a", None if panicked else 0, PANIC_CONSOLE if panicked else "", tmp_path), _result("b", 0, "", tmp_path)]

    monkeypatch.setattr(lab, "boot", boot)
    for panics, boots, ok in ((0, 1, True), (1, 2, True), (2, 2, False)):
        runs.clear()
        if panics:
            with pytest.warns(UserWarning, match="VM a's kernel panicked .*booting the run again once"):
                a, b = lab.run_pair("x", "y")
        else:
            a, b = lab.run_pair("x", "y")
        assert len(runs) == boots and a.ok == ok and b.ok


def test_a_run_whose_kernel_faulted_is_booted_again_once(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    runs: list = []
    faults = {"left": 0}

    def boot(commands, **kwargs):
        runs.append(commands)
        faulted = faults["left"] > 0
        faults["left"] -= 1
        return [_result("a", 139 if faulted else 0, FAULT_CONSOLE if faulted else "", tmp_path), _result("b", 1, "", tmp_path)]

    monkeypatch.setattr(lab, "boot", boot)
    for n, boots, ok in ((1, 2, True), (2, 2, False)):
        runs.clear()
        faults["left"] = n
        with pytest.warns(UserWarning, match=r"VM a's kernel faulted \(RIP: 0010:kmem_cache_alloc.*booting the run again once"):
            a, _ = lab.run_pair("x", "y")
        assert len(runs) == boots and a.ok == ok
    runs.clear()
    monkeypatch.setattr(lab, "boot", lambda commands, **kw: runs.append(commands) or [_result("a", 1, "", tmp_path)])
    assert not lab.run("x").ok and len(runs) == 1  # a command that failed on its own is not booted again
