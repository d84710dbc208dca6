"""Load the compiled soft RoCEv2 engine (native/softroce/, built into native/build/).

    from native import softroce
    mod = softroce.load()          # EngineUnavailable says why when it cannot
    softroce.available()           # (True, "") or (False, the reason)

The engine is the twin of the pure-Python soft provider (stack/verbs/soft): the same
frames for the same inputs, the same checks, the same completions; it runs the NIC in a
thread of its own that never takes the interpreter lock.
"""

from __future__ import annotations

import importlib.util
import os
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = os.path.join(HERE, "build", "_softroce" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
BUILD_HINT = "native/build.sh builds it (scripts/setup.sh runs it; it needs gcc and the Python headers)"


class EngineUnavailable(ImportError):
    """The compiled engine cannot be used here; the message says why and what to do."""


_module = None
_why = ""


def load():
    global _module, _why
    if _module is not None:
        return _module
    if _why:
        raise EngineUnavailable(_why)
    if not os.path.exists(MODULE):
        _why = f"the compiled soft RoCE engine is not built ({os.path.relpath(MODULE, os.path.dirname(HERE))} is missing): {BUILD_HINT}"
        raise EngineUnavailable(_why)
    try:
        spec = importlib.util.spec_from_file_location("native._softroce", MODULE)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except (ImportError, OSError) as e:
        _why = f"the compiled soft RoCE engine does not load ({e}): rebuild it; {BUILD_HINT}"
        raise EngineUnavailable(_why) from None
    _module = mod
    return mod


def available() -> tuple[bool, str]:
    try:
        load()
        return True, ""
    except EngineUnavailable as e:
        return False, str(e)
