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

from .extension import Extension

BUILD_HINT = "native/build_eventenc.sh builds it (it needs gcc and the Python headers)"
DISABLE_ENV = "SMCTOP_PURE_PYTHON_EVENTS"  # set to 1: use the pure-Python twins (tests, benchmarks)


class EncoderUnavailable(ImportError):
    """The compiled event encoder cannot be used here; the message says why and what to do."""


_EXT = Extension("_eventenc", "the compiled event encoder", BUILD_HINT, EncoderUnavailable, disable_env=DISABLE_ENV)
MODULE = _EXT.path


def load():
    """The configured extension module; EncoderUnavailable says why when it cannot be used."""
    return _EXT.load()


def available() -> tuple[bool, str]:
    return _EXT.available()


if __name__ == "__main__":
    from stack import events

    print(events.encoder_note())
