#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demo: the embedded SMC-R stack with three hosts on
# soft RoCE devices and a traffic mix (bulk, request/response, one peer forcing fallback).
# Extra arguments go to the demo (e.g. --seconds 20).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m smctop.demo "$@"
