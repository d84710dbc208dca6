#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run smctop on its embedded demo: three hosts on soft RoCE
# devices (two links between alpha and beta, a peer that forces fallback) and a traffic mix,
# live in the TUI. Keys: f fails a link, r restores it, d forces a decline, ? for help, q quits.
# Extra arguments go to smctop (e.g. --record-dir /tmp). The text-only demo without the TUI:
# .venv/bin/python -m smctop.demo --seconds 20
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/smctop "$@"
