"""The Debian mirror this machine's apt already uses, for the lab's set-up (setup.sh).

The lab fetches its kernel from bookworm-backports on the host's own mirror; it never falls
back to a mirror of its own choosing (a machine whose apt names none may be offline or behind
a proxy that allows only its mirror). The mirror is read from the apt configuration only:
``/etc/apt/sources.list``, ``/etc/apt/sources.list.d/*.list`` (one-line form) and
``/etc/apt/sources.list.d/*.sources`` (deb822), the files apt itself reads, in its order.
The first enabled ``deb`` entry for the Debian archive of the release (a suite ``bookworm`` or
``bookworm-<something>``, not ``-security``, which lives in another archive) wins.

    python3 tests/lab/aptmirror.py [--root DIR] [--codename bookworm]

prints the URI, or says on stderr why there is none and exits 1. Standard library only:
setup.sh runs it with the system's python3, as root, before any venv exists.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys


class NoMirror(Exception):
    """The apt configuration names no usable mirror."""


def _files(root: str) -> list[str]:
    etc = os.path.join(root, "etc/apt")
    files = [os.path.join(etc, "sources.list")]
    parts = os.path.join(etc, "sources.list.d")
    # apt reads sources.list.d in lexical order, .list and .sources alike; anything else it ignores
    files += sorted(glob.glob(os.path.join(parts, "*.list")) + glob.glob(os.path.join(parts, "*.sources")))
    return files


def one_line(text: str) -> list[dict]:
    """Entries of a one-line sources file: ``deb [options] URI suite [component...]``."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)(.*)$", line)
        if not m:
            continue
        out.append({"types": [m.group(1)], "uris": [m.group(3)], "suites": [m.group(4)], "components": m.group(5).split(),
                    "enabled": True})  # fmt: skip
    return out


def deb822(text: str) -> list[dict]:
    """Stanzas of a deb822 ``.sources`` file (fields may continue on indented lines; a stanza
    with ``Enabled: no`` is off)."""
    out = []
    for stanza in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.split("\n"):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key is not None:
                fields[key] += " " + line.strip()
                continue
            name, sep, value = line.partition(":")
            if not sep:
                continue
            key = name.strip().lower()
            fields[key] = value.strip()
        if not fields:
            continue
        out.append({"types": fields.get("types", "").split(), "uris": fields.get("uris", "").split(),
                    "suites": fields.get("suites", "").split(), "components": fields.get("components", "").split(),
                    "enabled": fields.get("enabled", "yes").strip().lower() not in ("no", "false", "0")})  # fmt: skip
    return out


def _archive_suite(suite: str, codename: str) -> bool:
    return (suite == codename or suite.startswith(codename + "-")) and not suite.endswith("-security")


def mirror(root: str = "/", codename: str = "bookworm") -> str:
    """The URI of the Debian archive mirror apt uses for ``codename``, or NoMirror saying
    which files were read and what to add."""
    read, seen = [], []
    for path in _files(root):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise NoMirror(f"cannot read {path}: {e.strerror or e}") from None
        read.append(path)
        for entry in deb822(text) if path.endswith(".sources") else one_line(text):
            if not entry["enabled"] or "deb" not in entry["types"]:
                continue
            for uri in entry["uris"]:
                seen.append(f"{uri} {' '.join(entry['suites'])}")
                if uri.startswith(("cdrom:", "file:", "copy:")):
                    continue
                if any(_archive_suite(s, codename) for s in entry["suites"]):
                    return uri.rstrip("/")
    if not read:
        where = f"there is no {os.path.join(root, 'etc/apt/sources.list')} and no sources.list.d/*.list or *.sources"
    else:
        where = f"read {', '.join(read)}; " + (f"its deb entries: {'; '.join(seen[:6])}" if seen else "no enabled deb entry")
    raise NoMirror(f"the apt configuration names no Debian {codename} mirror ({where}). "
                   f"Add the mirror this machine may use, e.g. to /etc/apt/sources.list.d/debian.sources, and run again")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="print the Debian mirror the apt configuration uses")
    ap.add_argument("--root", default="/", help="the file system root whose etc/apt is read (default /)")
    ap.add_argument("--codename", default="bookworm", help="the release (default bookworm)")
    args = ap.parse_args(argv)
    try:
        print(mirror(args.root, args.codename))
    except NoMirror as e:
        print(f"lab setup: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
