#!/usr/bin/env bash
# Mutation testing, on demand (not part of scripts/test.sh): cosmic-ray mutates the code of
# one module at a time and runs the tests that should notice; scripts/mutation_tables.py
# mutates the transition tables (what cosmic-ray cannot: which state a rule goes to, which
# flag it sends) and runs the expected-table tests.
#
#   scripts/mutation.sh                      # the default set: stack/core/states.py, stack/core/cursor.py
#   scripts/mutation.sh stack/wire/cdc.py    # any modules, each with the tests listed below
#   MUTATION_KEEP=1 scripts/mutation.sh ...  # keep the work directory (its sessions and reports)
#   MUTATION_SAMPLE=400 MUTATION_SEED=1 scripts/mutation.sh stack/wire/llc.py
#                                            # a uniformly random sample of 400 mutants a module
#   MUTATION_RERUN=/tmp/smctop-mutation.XXXX scripts/mutation.sh stack/wire/llc.py
#                                            # only the survivors of that kept run, with HEAD's tests
#
# Mutants inside type annotations are not run (scripts/mutation_sample.py: every module has
# `from __future__ import annotations`, so they cannot change behaviour); they are counted apart.
# Two runs of this script can go at once (each has its own snapshot): on 2 cores that halves
# the time of a long measurement, cosmic-ray's own local distributor being sequential.
#
# It works on a snapshot of the last commit (git archive HEAD) in a temporary directory, so
# the working tree is never touched; CPU-heavy: it runs under nice. Needs the optional
# dependency group: .venv/bin/pip install -e '.[mutation]'. Scores go to docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
CR=$ROOT/.venv/bin/cosmic-ray
[ -x "$CR" ] || { echo "cosmic-ray is not installed: .venv/bin/pip install -e '.[mutation]'" >&2; exit 2; }
WORK=$(mktemp -d /tmp/smctop-mutation.XXXXXX)
[ -n "${MUTATION_KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT
git archive HEAD | tar -x -C "$WORK"
[ "$#" -gt 0 ] || set -- stack/core/states.py stack/core/cursor.py

tests_for() {  # the tests that speak for a module (fast ones: each mutant runs them)
    case "$1" in
        stack/core/states.py) echo "tests/core/test_expected_tables.py tests/core/test_tables.py tests/core/test_close_flags.py tests/core/test_fin_close_waits.py" ;;
        stack/core/cursor.py) echo "tests/unit/test_cursor.py tests/core/test_golden_session.py tests/core/test_close_flags.py" ;;
        stack/wire/llc.py) echo "tests/unit/test_wire_mutants_llc.py tests/unit/test_wire_kat.py tests/unit/test_llc_addlink_v2.py tests/core/test_linkgroup_rules.py tests/core/test_golden_session.py" ;;
        stack/wire/clc.py) echo "tests/unit/test_wire_mutants_clc.py tests/unit/test_wire_kat.py tests/core/test_decline_order.py tests/core/test_derived_declines.py tests/core/test_prefix.py tests/core/test_ipv6_handshake.py tests/core/test_golden_session.py tests/core/test_core_behaviour.py" ;;
        stack/wire/roce.py|stack/wire/inet.py) echo "tests/unit/test_wire_mutants_roce.py tests/unit/test_wire_kat.py tests/unit/test_icrc_paths.py tests/unit/test_roce_analysis.py tests/integration/test_ipv6_frames.py tests/core/test_golden_session.py" ;;
        stack/wire/*) echo "tests/unit/test_wire_mutants_base.py tests/unit/test_wire_kat.py tests/unit/test_cdc_codec.py tests/unit/test_icrc_paths.py tests/unit/test_llc_addlink_v2.py tests/unit/test_cursor.py tests/core/test_golden_session.py tests/core/test_close_flags.py tests/core/test_fin_close_waits.py tests/core/test_derived_declines.py" ;;  # test_wire_properties.py takes 2 min a run
        smctop/model.py) echo "tests/tui/test_model_mutants.py tests/tui/test_tui_model.py" ;;  # test_byte_accounting.py and test_tui_widgets.py: 8 s more a mutant
        stack/core/*) echo "tests/core" ;;
        *) echo "tests/unit" ;;
    esac
}

cd "$WORK"
for module in "$@"; do
    name=$(echo "$module" | tr '/.' '__')
    tests=$(for t in $(tests_for "$module"); do [ -e "$t" ] && echo "$t"; done | tr '\n' ' ')
    cat > "$name.toml" <<TOML
[cosmic-ray]
module-path = "$module"
timeout = 60.0
excluded-modules = []
test-command = "$PY -m pytest -x -q -p no:cacheprovider -p no:randomly $tests"

[cosmic-ray.distributor]
name = "local"
TOML
    echo "== $module (tests: $tests)"
    if [ -n "${MUTATION_RERUN:-}" ]; then  # the survivors of a kept earlier run, against HEAD's tests
        "$PY" "$ROOT/scripts/mutation_rerun.py" "$MUTATION_RERUN/$name.sqlite" "$name.sqlite"
    else
        "$CR" init "$name.toml" "$name.sqlite"
        "$PY" "$ROOT/scripts/mutation_sample.py" "$name.sqlite" "$module" --sample "${MUTATION_SAMPLE:-0}" --seed "${MUTATION_SEED:-1}"
    fi
    nice -n 19 "$CR" exec "$name.toml" "$name.sqlite"
    "$ROOT/.venv/bin/cr-report" "$name.sqlite" --show-pending > "$name.report.txt" || true
    tail -n 3 "$name.report.txt"
    "$PY" "$ROOT/scripts/mutation_survivors.py" "$name.sqlite" || true
done
if printf '%s\n' "$@" | grep -qx stack/core/states.py; then
    echo "== transition tables (scripts/mutation_tables.py)"
    nice -n 19 "$PY" "$ROOT/scripts/mutation_tables.py"
fi
[ -z "${MUTATION_KEEP:-}" ] || echo "work directory kept: $WORK"
