"""RDMA providers behind one verbs interface (see ``api``): ``soft`` (RoCEv2 over UDP,
runs anywhere) and ``pyverbs`` (real RNICs and Soft-RoCE rxe)."""

from __future__ import annotations

from .api import Provider, VerbsError


def open_provider(name: str, **options) -> Provider:
    """``"soft"`` or ``"pyverbs"``."""
    if name == "soft":
        from .soft import SoftProvider

        return SoftProvider(**options)
    if name == "pyverbs":
        from .pyverbs_provider import PyverbsProvider

        return PyverbsProvider(**options)
    raise ValueError(f"unknown RDMA provider {name!r}: choose 'soft' or 'pyverbs'")


__all__ = ["open_provider", "Provider", "VerbsError"]
