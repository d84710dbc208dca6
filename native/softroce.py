"""Load the compiled soft RoCEv2 engine (native/softroce/, built into native/build/).

    from native import softroce
    mod = softroce.load()          # EngineUnavailable says why when it cannot
    softroce.available()           # (True, "") or (False, the reason)

The engine is the twin of the pure-Python soft provider (stack/verbs/soft): the same
frames for the same inputs, the same checks, the same completions; it runs the NIC in a
thread of its own that never takes the interpreter lock.
"""

from __future__ import annotations

from .extension import Extension

BUILD_HINT = "native/build.sh builds it (scripts/setup.sh runs it; it needs gcc and the Python headers)"


class EngineUnavailable(ImportError):
    """The compiled engine cannot be used here; the message says why and what to do."""


_EXT = Extension("_softroce", "the compiled soft RoCE engine", BUILD_HINT, EngineUnavailable)
MODULE = _EXT.path


def load():
    """The configured extension module; EngineUnavailable says why when it cannot be used."""
    return _EXT.load()


def available() -> tuple[bool, str]:
    return _EXT.available()


def crc32_function():
    """zlib's CRC-32 as a function (data, crc=0) -> int: the compiled engine's, folded with
    PCLMULQDQ (about five times zlib's speed), when it is built; zlib's otherwise. Both give
    the same values (the engine checks its fold against zlib when it loads)."""
    try:
        return load().crc32
    except EngineUnavailable:
        import zlib

        return zlib.crc32
