"""Run tshark on a capture and return its decoding as flat field dictionaries.

Every tshark (and pyshark, which starts tshark) the tests run goes through :func:`env`: an
empty temporary home and configuration of its own, so a plugin or preferences the user has
installed (``smc-trace install-plugin`` puts smctop.lua in ~/.local/lib/wireshark/plugins)
cannot change what tshark decodes. The tshark version is checked once per test process.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

MIN_VERSION = (4, 0)  # the oracle the tests were written against (Debian 12's 4.0.17)

# Variables through which a user's Wireshark set-up reaches tshark: personal configuration
# (preferences, profiles, init.lua), personal plugins (Lua and binary), and overrides of both.
_DROPPED_PREFIXES = ("WIRESHARK_", "ETHEREAL_")
_HOME: str | None = None


def _home() -> str:
    """A fresh, empty directory used as HOME for every tshark of this process."""
    global _HOME
    if _HOME is None:
        _HOME = tempfile.mkdtemp(prefix="smctop-tshark-home-")
        atexit.register(shutil.rmtree, _HOME, True)
    return _HOME


def env(base: dict | None = None, home: str | None = None) -> dict[str, str]:
    """The environment for tshark and pyshark: ``base`` (default os.environ) with HOME,
    XDG_CONFIG_HOME/XDG_DATA_HOME/XDG_CACHE_HOME and WIRESHARK_CONFIG_DIR pointing into an
    empty temporary home (or ``home``), and every other WIRESHARK_* variable removed."""
    home = home or _home()
    out = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith(_DROPPED_PREFIXES)}
    out.update(
        HOME=home,
        XDG_CONFIG_HOME=os.path.join(home, ".config"),
        XDG_DATA_HOME=os.path.join(home, ".local", "share"),
        XDG_CACHE_HOME=os.path.join(home, ".cache"),
        WIRESHARK_CONFIG_DIR=os.path.join(home, ".config", "wireshark"),
    )
    return out


def run(args: list[str], *, timeout: float = 120, home: str | None = None) -> subprocess.CompletedProcess:
    """``tshark ARGS`` in the hermetic environment (or with ``home`` as its home), output captured as text."""
    return subprocess.run([tshark_path(), *args], capture_output=True, text=True, timeout=timeout, env=env(home=home))


def parse_version(text: str) -> tuple[int, int, int]:
    m = re.search(r"TShark \(Wireshark\) (\d+)\.(\d+)\.(\d+)", text)
    if m is None:
        raise RuntimeError(f"cannot read tshark's version from: {text.strip()[:200]!r}")
    return int(m[1]), int(m[2]), int(m[3])


@functools.lru_cache(maxsize=None)
def _checked(path: str) -> tuple[int, int, int]:
    proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60, env=env())
    version = parse_version(proc.stdout)
    if version[:2] < MIN_VERSION:
        raise RuntimeError(f"tshark {'.'.join(map(str, version))} is older than {'.'.join(map(str, MIN_VERSION))}: "
                           "run the README's test command (it installs Debian's tshark)")  # fmt: skip
    return version


def tshark_path() -> str:
    """tshark's path; its version is checked on the first call (RuntimeError if missing or too old)."""
    path = shutil.which("tshark")
    if path is None:
        raise RuntimeError("tshark is not installed: run the README's test command (it installs Debian's tshark)")
    _checked(path)
    return path


def version() -> tuple[int, int, int]:
    return _checked(tshark_path())


@dataclass
class Frame:
    number: int
    layers: dict
    smc: list[dict] = field(default_factory=list)  # one flat dict per SMC PDU in the frame
    ib: dict = field(default_factory=dict)
    malformed: bool = False
    protocols: str = ""


def flatten(node, out: dict | None = None) -> dict:
    """Merge nested dicts (the ``*_tree`` subtrees) into one; duplicate keys become lists."""
    out = {} if out is None else out
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict):
                flatten(value, out)
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                for v in value:
                    flatten(v, out)
            elif key in out:
                prev = out[key] if isinstance(out[key], list) else [out[key]]
                out[key] = prev + (value if isinstance(value, list) else [value])
            else:
                out[key] = value
    return out


def decode(path: str, *extra: str) -> list[Frame]:
    proc = run(["-n", "-r", str(path), "-T", "json", "--no-duplicate-keys", *extra])
    if proc.returncode != 0:
        raise RuntimeError(f"tshark failed ({proc.returncode}): {proc.stderr.strip()}")
    frames = []
    for pkt in json.loads(proc.stdout or "[]"):
        layers = pkt["_source"]["layers"]
        smc = layers.get("smc", [])
        smc = smc if isinstance(smc, list) else [smc]
        frames.append(
            Frame(
                number=int(layers["frame"]["frame.number"]),
                layers=layers,
                smc=[flatten(s) for s in smc],
                ib=flatten(layers.get("infiniband", {})),
                malformed="_ws.malformed" in layers,
                protocols=layers["frame"].get("frame.protocols", ""),
            )
        )
    return frames


def num(value) -> int:
    """tshark prints integers in decimal or 0x-hex depending on the field's base."""
    return int(value, 0)


def capture_lo(path, bpf_filter: str, body) -> None:
    """Capture loopback into ``path`` while ``body()`` runs (skips the test without root)."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("capturing lo needs root (CI runs as root)")
    cap = subprocess.Popen([tshark_path(), "-i", "lo", "-f", bpf_filter, "-w", str(path)], stderr=subprocess.PIPE, text=True, env=env())
    try:
        for line in cap.stderr:  # packets before this line would be lost
            if "Capture started" in line:
                break
        time.sleep(0.2)
        body()
        time.sleep(0.3)
    finally:
        cap.send_signal(signal.SIGINT)
        cap.wait(timeout=10)
