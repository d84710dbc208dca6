#!/usr/bin/env bash
# Set up a fresh Debian 12 machine (run as root) for smctop: system packages, then a
# virtual environment in .venv with the project and its test dependencies.
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# clang, llvm, libbpf-dev, gcc: native/ (the BPF object and its parser's check binary);
# bpftool loads it, tcpdump captures inside the kernel lab; prometheus: the server that scrapes
# smctop --prometheus in tests/integration/test_prometheus.py (the test starts its own)
APT_PACKAGES=(tshark tmux clang llvm libbpf-dev bpftool gcc libc6-dev tcpdump prometheus)

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: run as root (apt-get installs ${APT_PACKAGES[*]})" >&2
        exit 1
    fi
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    need_root
    export DEBIAN_FRONTEND=noninteractive
    echo "setup: installing ${missing[*]}"
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/smctop-apt.log 2>&1; then
        apt-get update -q >>/tmp/smctop-apt.log 2>&1
        apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/smctop-apt.log 2>&1 ||
            { cat /tmp/smctop-apt.log >&2; exit 1; }
    fi
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"setup: Python >= 3.11 is required, {sys.executable} is {sys.version.split()[0]}")
PY

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.smctop-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing smctop and its test dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/tmp/smctop-pip.log 2>&1 || true
    .venv/bin/python -m pip install -e '.[test]' >>/tmp/smctop-pip.log 2>&1 ||
        { cat /tmp/smctop-pip.log >&2; exit 1; }
    touch "$stamp"
fi
bash native/build.sh     # native/: the SMC TCP option BPF program (native/smcopt.py loads it)
bash tests/lab/setup.sh  # the kernel lab (tests/lab): qemu, the 6.12 kernel, Debian pyverbs in .venv
