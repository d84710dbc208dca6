"""The pyverbs provider where it cannot work: the error must say why and what to do.

Runs on any host (no VM). Where pyverbs is installed but the kernel has no RDMA (this
project's CI host), opening the provider fails naming that; the lab tests cover real devices.
"""

import subprocess
import sys

import pytest

from stack.verbs.api import VerbsError


def _open_provider():
    from stack.verbs.pyverbs_provider import PyverbsProvider

    return PyverbsProvider()


def test_opening_without_rdma_names_the_cause_and_the_way_out() -> None:
    try:
        provider = _open_provider()
    except VerbsError as exc:
        message = str(exc)
        if "not installed" in message:
            assert "python3-pyverbs" in message and "rdma" in message
        else:
            assert "no RDMA" in message and "soft provider" in message and "kernel lab" in message
        assert exc.errno != 0
        return
    pytest.skip(f"this host has RDMA devices: {provider.list_devices()}")  # the lab tests cover them


def test_opening_without_pyverbs_says_how_to_install_it() -> None:
    # A fresh interpreter where importing pyverbs fails, as on a host without the package.
    code = (
        "import sys; sys.modules['pyverbs'] = None\n"
        "from stack.verbs.api import VerbsError\n"
        "from stack.verbs.pyverbs_provider import PyverbsProvider\n"
        "try:\n    PyverbsProvider()\nexcept VerbsError as exc:\n    print(exc.errno, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("19 ")  # ENODEV
    assert "pyverbs is not installed" in out and "python3-pyverbs" in out and "smctop[rdma]" in out


def test_importing_the_provider_needs_no_pyverbs() -> None:
    code = "import sys; sys.modules['pyverbs'] = None; import stack.verbs.pyverbs_provider"
    subprocess.run([sys.executable, "-c", code], check=True)
