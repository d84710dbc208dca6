"""Run tshark on a capture and return its decoding as flat field dictionaries."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field


def tshark_path() -> str:
    path = shutil.which("tshark")
    if path is None:
        raise RuntimeError("tshark is not installed: run the README's test command (it installs Debian's tshark)")
    return path


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
    cmd = [tshark_path(), "-n", "-r", path, "-T", "json", "--no-duplicate-keys", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
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
    cap = subprocess.Popen([tshark_path(), "-i", "lo", "-f", bpf_filter, "-w", str(path)], stderr=subprocess.PIPE, text=True)
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
