"""Load the compiled event encoder (native/eventenc.c, built into native/build/).

    from native import eventenc
    mod = eventenc.load()          # EncoderUnavailable says why when it cannot
    eventenc.available()           # (True, "") or (False, the reason)
    python -m native.eventenc      # prints which encoder the recorder and JSONL writers use

What it speeds up, and the pure-Python twin that gives byte-identical results (tests
compare them on generated input, tests/unit/test_eventenc.py):

* ``to_json`` / ``to_json_line`` / ``record``: the canonical JSON of an event; twin
  ``stack.events._to_json_py``. Whatever the C code does not handle exactly as
  ``json.dumps`` would is handed to the twin, so outputs and errors are the twin's.
* ``Spool``: smc-trace's pending timeline (sorting, holding back, pcapng enhanced packet
  blocks, events and soft-RoCE frames turned into blocks in batches); twin
  ``dissectors.spool.Spool``.
* ``frame_header``: Ethernet/IPv4/UDP in front of a RoCEv2 frame; twin
  ``stack.wire.inet.ipv4_udp_frame``.
* ``drain``: empty a deque in one step; twin ``dissectors.spool.drain``.

Built by ``native/build_eventenc.sh`` (gcc and the running Python's headers); when it is
not built the twins run and nothing else changes, only the cost per event.
"""

from __future__ import annotations

import importlib.util
import os
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = os.path.join(HERE, "build", "_eventenc" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
BUILD_HINT = "native/build_eventenc.sh builds it (it needs gcc and the Python headers)"
DISABLE_ENV = "SMCTOP_PURE_PYTHON_EVENTS"  # set to 1: use the pure-Python twins (tests, benchmarks)


class EncoderUnavailable(ImportError):
    """The compiled event encoder cannot be used here; the message says why and what to do."""


_module = None
_why = ""


def load():
    """The configured extension module (stack.events must be importable)."""
    global _module, _why
    if _module is not None:
        return _module
    if _why:
        raise EncoderUnavailable(_why)
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        _why = f"the compiled event encoder is switched off ({DISABLE_ENV} is set)"
        raise EncoderUnavailable(_why)
    if not os.path.exists(MODULE):
        _why = f"the compiled event encoder is not built ({os.path.relpath(MODULE, os.path.dirname(HERE))} is missing): {BUILD_HINT}"
        raise EncoderUnavailable(_why)
    try:
        spec = importlib.util.spec_from_file_location("native._eventenc", MODULE)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except (ImportError, OSError) as e:
        _why = f"the compiled event encoder does not load ({e}): rebuild it; {BUILD_HINT}"
        raise EncoderUnavailable(_why) from None
    _module = mod
    return mod


def available() -> tuple[bool, str]:
    try:
        load()
        return True, ""
    except EncoderUnavailable as e:
        return False, str(e)


if __name__ == "__main__":
    from stack import events

    print(events.encoder_note())
