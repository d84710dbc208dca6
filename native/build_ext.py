"""Build the compiled soft RoCEv2 engine (native/softroce/*.c) as the extension module
native/build/_softroce<EXT_SUFFIX>, with gcc and the running Python's headers.

A plain C extension: no build dependency beyond gcc and Python.h (cffi or Cython would
add one, and the engine's hot loop never touches Python objects anyway). Run by
native/build.sh (scripts/setup.sh); ``python native/build_ext.py --force`` rebuilds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join(HERE, "softroce", f) for f in ("engine.c", "crc.c", "module.c")]
HEADERS = [os.path.join(HERE, "softroce", "engine.h")]


def target() -> str:
    return os.path.join(HERE, "build", "_softroce" + sysconfig.get_config_var("EXT_SUFFIX"))


def build(force: bool = False) -> str:
    out = target()
    inputs = SOURCES + HEADERS + [os.path.abspath(__file__)]
    if not force and os.path.exists(out) and all(os.path.getmtime(out) >= os.path.getmtime(p) for p in inputs):
        return out
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        raise SystemExit(f"native build: {cc} not found: the soft provider will use its pure-Python engine (scripts/setup.sh installs gcc)")
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        raise SystemExit(
            f"native build: Python.h is missing in {include}: install the Python development headers "
            f"(Debian: python3-dev); the soft provider uses its pure-Python engine until then"
        )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp"
    cmd = [
        cc,
        "-O2",
        "-g",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
        "-Wno-missing-field-initializers",
        "-fPIC",
        "-shared",
        "-pthread",
        f"-I{include}",
        *SOURCES,
        "-o",
        tmp,
        "-l:libz.so.1",
    ]
    subprocess.run(cmd, check=True)
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    path = build(force="--force" in sys.argv)
    print(f"native build: {os.path.relpath(path, HERE)}")
