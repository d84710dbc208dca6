#!/usr/bin/env bash
# Build native/eventenc.c (the fast event encoder and the recorder's spool) as the
# extension module native/build/_eventenc<EXT_SUFFIX>, with gcc against the running
# Python's headers. Its pure-Python twins (stack/events.py to_json, dissectors/spool.py)
# are used when it is not built. Usage: native/build_eventenc.sh [--force]; PYTHON picks
# the interpreter (default: the project's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
    if [ -x ../.venv/bin/python ]; then PYTHON=../.venv/bin/python; else PYTHON=python3; fi
fi
CC=${CC:-gcc}
command -v "$CC" >/dev/null || { echo "native build: $CC not found; events are encoded by the pure-Python twin" >&2; exit 1; }
read -r INCLUDE SUFFIX < <("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"], sysconfig.get_config_var("EXT_SUFFIX") or ".so")')
[ -f "$INCLUDE/Python.h" ] || { echo "native build: $INCLUDE/Python.h is missing (Debian: python3-dev); events are encoded by the pure-Python twin" >&2; exit 1; }
mkdir -p build
OUT=build/_eventenc$SUFFIX
if [ "${1:-}" != "--force" ] && [ -f "$OUT" ] && [ "$OUT" -nt eventenc.c ] && [ "$OUT" -nt build_eventenc.sh ]; then
    exit 0
fi
"$CC" -O2 -g -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -fPIC -shared \
    -I"$INCLUDE" eventenc.c -o "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "native build: $OUT"
