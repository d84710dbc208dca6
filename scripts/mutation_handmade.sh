#!/usr/bin/env bash
# The hand-made mutations docs/testing.md names, each applied to a snapshot of HEAD (git
# archive, never the working tree) with the tests that must fail because of it. Prints, per
# mutation, KILLED (with the failing tests) or SURVIVED. On demand; needs tshark for the ICRC.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
WORK=$(mktemp -d /tmp/smctop-handmade.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

mutate() {  # name, file, python replacement (old, new), tests...
    local name=$1 file=$2 old=$3 new=$4; shift 4
    rm -rf "$WORK/t" && mkdir "$WORK/t" && git archive HEAD | tar -x -C "$WORK/t"
    OLD=$old NEW=$new "$PY" - "$WORK/t/$file" <<'PYEOF'
import os, sys
p = sys.argv[1]; s = open(p).read(); old, new = os.environ["OLD"], os.environ["NEW"]
assert s.count(old) == 1, f"{p}: the text to mutate occurs {s.count(old)} times"
open(p, "w").write(s.replace(old, new))
PYEOF
    local out
    out=$(cd "$WORK/t" && nice -n 19 "$PY" -m pytest -q -p no:cacheprovider -rf "$@" 2>&1 || true)
    if echo "$out" | grep -q "^FAILED"; then
        echo "KILLED   $name: $(echo "$out" | grep -c '^FAILED') failing, e.g. $(echo "$out" | grep '^FAILED' | head -2 | sed 's/^FAILED //; s/ - .*//' | tr '\n' ' ')"
    else
        echo "SURVIVED $name: $(echo "$out" | tail -1)"
    fi
}

mutate "swap a close-table target (ACTIVE close -> PEERCLOSEWAIT2)" stack/core/states.py \
    '(S.ACTIVE, "app_close"): (R(S.PEERCLOSEWAIT1, "send_final"),),' '(S.ACTIVE, "app_close"): (R(S.PEERCLOSEWAIT2, "send_final"),),' \
    tests/core/test_expected_tables.py tests/core/test_close_flags.py
mutate "flip a CDC flag (the final flag: closed when data is unread)" stack/core/connection.py \
    'return "abort" if self.unread() > 0 else "closed"' 'return "closed" if self.unread() > 0 else "abort"' \
    tests/core/test_expected_tables.py tests/core/test_close_flags.py
mutate "flip a CDC flag on the wire (peer_conn_closed sent as 0x20)" stack/wire/cdc.py \
    '| (0x40 if self.peer_conn_closed else 0)' '| (0x20 if self.peer_conn_closed else 0)' \
    tests/unit/test_wire_kat.py tests/core/test_golden_session.py
mutate "drop a golden column (the CDC consumer cursor from cdc.msg events)" stack/wire/fields.py \
    '"cons": cursor_text(m.cons), ' '' \
    tests/core/test_golden_session.py
mutate "change the ICRC of a frame (BTH byte 4 not masked)" stack/wire/roce.py \
    'rest[4] = 0xFF  # BTH resv8a' 'rest[4] = rest[4]  # BTH resv8a' \
    tests/oracle/test_wire_oracle.py tests/unit/test_wire_kat.py -k icrc
mutate "change the ICRC the soft device sends (BTH byte 4 not masked)" stack/wire/roce.py \
    'head = bytes(ib[:4]) + b"\xff"' 'head = bytes(ib[:5])' \
    tests/unit/test_icrc_paths.py
mutate "cursor wrap: u16 counter not masked" stack/core/cursor.py \
    'wrap = (wrap + 1) & WRAP_MASK' 'wrap = wrap + 1' \
    tests/unit/test_cursor.py
mutate "a derived decline: RELEASEERR check dropped" stack/core/negotiation.py \
    'if a.fce.release > config.release:' 'if a.fce.release > config.release + 1:' \
    tests/core/test_derived_declines.py
