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
