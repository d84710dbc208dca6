#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demo: a complete SMC-Rv2 exchange encoded by
# smctop's codecs, written as a capture, decoded by smctop and by tshark side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m dissectors.exchange_demo "$@"
