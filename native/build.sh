#!/usr/bin/env bash
# Build native/ into native/build/: the BPF object (clang -target bpf), the userspace check
# binary of its option parser, the compiled soft RoCE engine and the event encoder (Python extensions).
# Run by scripts/setup.sh; needs clang, libbpf-dev, gcc and the Python headers.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p build
need() { command -v "$1" >/dev/null || { echo "native build: $1 not found (scripts/setup.sh installs it)" >&2; exit 1; }; }
need clang
need gcc
[ -f /usr/include/bpf/bpf_helpers.h ] || { echo "native build: libbpf-dev is missing (bpf/bpf_helpers.h)" >&2; exit 1; }
up_to_date() { [ -f "$1" ] && [ "$1" -nt smc_tcpopt.h ] && [ "$1" -nt "$2" ] && [ "$1" -nt build.sh ]; }
if ! up_to_date build/smc_opt.bpf.o smc_opt.bpf.c; then
    clang -O2 -g -Wall -target bpf -I/usr/include/"$(gcc -print-multiarch)" -c smc_opt.bpf.c -o build/smc_opt.bpf.o.tmp
    mv build/smc_opt.bpf.o.tmp build/smc_opt.bpf.o
    echo "native build: build/smc_opt.bpf.o"
fi
if ! up_to_date build/tcpopt_check tcpopt_check.c; then
    gcc -O2 -Wall -o build/tcpopt_check tcpopt_check.c
    echo "native build: build/tcpopt_check"
fi
# the compiled soft RoCE engine (native/softroce) as a Python extension for the project's Python;
# without it the soft provider runs its pure-Python engine and says so
PY=${PYTHON_FOR_NATIVE:-../.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" build_ext.py; then
    echo "native build: the compiled soft RoCE engine was not built; the soft provider will run its pure-Python engine" >&2
fi
# the event encoder and the recorder's spool (native/eventenc.c); without it their
# pure-Python twins (stack/events.py, dissectors/spool.py) do the work
if ! PYTHON="$PY" bash build_eventenc.sh; then
    echo "native build: the compiled event encoder was not built; events are encoded by the pure-Python twin" >&2
fi
