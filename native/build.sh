#!/usr/bin/env bash
# Build native/: the BPF object (clang -target bpf) and the userspace check binary of its
# option parser, into native/build/. Run by scripts/setup.sh; needs clang, libbpf-dev, gcc.
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
