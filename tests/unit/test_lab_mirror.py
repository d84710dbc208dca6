"""Issue #15 defect 9: the lab's set-up takes its Debian mirror from the apt configuration
only (one-line and deb822 forms, in apt's order) and, with none there, stops with a clear
message instead of falling back to a mirror of its own. No VM is booted."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

LAB = Path(__file__).resolve().parents[1] / "lab"
_spec = importlib.util.spec_from_file_location("lab_aptmirror", LAB / "aptmirror.py")
aptmirror = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(aptmirror)


def _root(tmp_path: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        p = tmp_path / "etc/apt" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    return str(tmp_path)


DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example.net/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.net/debian-security
Suites: bookworm-security
Components: main
"""


def test_deb822_sources(tmp_path) -> None:
    root = _root(tmp_path, {"sources.list.d/debian.sources": DEB822})
    assert aptmirror.mirror(root) == "http://mirror.example.net/debian"


def test_one_line_sources_with_options_and_comments(tmp_path) -> None:
    root = _root(tmp_path, {"sources.list": "# deb http://commented.example/debian bookworm main\n"
                                            "deb-src http://src.example/debian bookworm main\n"
                                            "deb [arch=amd64 signed-by=/k.gpg] http://sec.example/debian-security bookworm-security main\n"
                                            "deb [arch=amd64] http://one.example/debian bookworm main contrib # the mirror\n"})  # fmt: skip
    assert aptmirror.mirror(root) == "http://one.example/debian"


def test_apt_order_and_what_is_skipped(tmp_path) -> None:
    """sources.list first, then sources.list.d in lexical order (.list and .sources alike);
    disabled stanzas, other releases, third-party suites and files apt ignores do not count."""
    root = _root(tmp_path, {
        "sources.list": "deb http://old.example/debian bullseye main\n",
        "sources.list.d/a-cloud.list": "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n",
        "sources.list.d/b-off.sources": "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n",
        "sources.list.d/c.list.disabled": "deb http://ignored.example/debian bookworm main\n",
        "sources.list.d/d-multi.sources": "Types: deb deb-src\nURIs:\n http://first.example/debian\n http://second.example/debian\n"
                                          "Suites: bookworm-backports\nComponents: main\n",
        "sources.list.d/e-later.list": "deb http://later.example/debian bookworm main\n",
    })  # fmt: skip
    assert aptmirror.mirror(root) == "http://first.example/debian"


@pytest.mark.parametrize("files", [
    {},
    {"sources.list": "# nothing here\n"},
    {"sources.list.d/node.sources": "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n"},
    {"sources.list.d/debian.sources": "Types: deb\nURIs: http://x.example/debian-security\nSuites: bookworm-security\n"},
])  # fmt: skip
def test_no_mirror_is_a_clear_error_not_a_guess(tmp_path, files) -> None:
    root = _root(tmp_path, files)
    with pytest.raises(aptmirror.NoMirror, match="names no Debian bookworm mirror") as e:
        aptmirror.mirror(root)
    assert "deb.debian.org" not in str(e.value)
    assert "sources.list" in str(e.value)


def test_the_command_setup_sh_runs(tmp_path) -> None:
    """setup.sh calls it with the system python3: the URI on stdout, or the reason and exit 1."""
    good = _root(tmp_path / "good", {"sources.list.d/debian.sources": DEB822})
    out = subprocess.run([sys.executable, "-I", str(LAB / "aptmirror.py"), "--root", good], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "http://mirror.example.net/debian")
    bad = _root(tmp_path / "bad", {})
    out = subprocess.run([sys.executable, "-I", str(LAB / "aptmirror.py"), "--root", bad], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == "" and "names no Debian bookworm mirror" in out.stderr
    assert "Traceback" not in out.stderr
    # and setup.sh has no mirror of its own to fall back to
    setup = (LAB / "setup.sh").read_text()
    assert "deb.debian.org" not in setup and "aptmirror.py" in setup
