"""Mutation testing of the transition tables in stack/core/states.py, which cosmic-ray cannot
mutate (it changes operators and numbers, not which state a rule goes to or which flag it
sends). Each mutant changes one entry of CONN_TABLE, LINK_TABLE or HS_TABLE in place:

* ``next``: a rule goes to another state (a different one, or stays where it moved, or
  moves where it stayed);
* ``action``: an action dropped, or swapped for its neighbour (send_final <-> send_abort,
  send_done_writing <-> send_final: another CDC flag; a decline reason for another);
* ``order``: two rules of an entry swapped (the guards decide in another order);
* ``delete``: the entry removed (the pair becomes a protocol error);
* ``add``: an entry for a pair that must be a protocol error.

The tests of tests/core/test_expected_tables.py that concern the mutated pair run against
each mutant (in this process: the tables are looked up by key, so no other row can see the
change). A mutant is killed when one of them changes outcome. Prints the score and every
survivor: ``python scripts/mutation_tables.py`` (scripts/mutation.sh runs it).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from core import test_expected_tables as X  # noqa: E402

from stack.core import states  # noqa: E402
from stack.wire.codes import LinkState, SmcState  # noqa: E402

SWAP = {"send_final": "send_abort", "send_abort": "send_final", "send_final_now": "send_abort", "send_done_writing": "send_final",
        "send_done_writing_now": "send_final_now", "send_decline(TIMEOUT_CL)": "send_decline(ERR_REGBUF)",
        "send_decline(ERR_REGBUF)": "send_decline(TIMEOUT_CL)", "fall_back(PEERNOSMC)": "fall_back(PEERDECL)",
        "send_decline(RMBE_EC)": "send_decline(SYNCERR)", "send_decline(SYNCERR)": "send_decline(RMBE_EC)",
        "wait(clc_wait)": "wait(llc_wait)", "send_accept": "send_confirm", "send_confirm": "send_accept"}  # fmt: skip


def _outcome(fn, *args) -> bool:
    try:
        fn(*args)
        return True
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - any failure of the test is its verdict (pytest.fail is a BaseException)
        return False


def _conn_checks(key):
    s, e = key
    rows = [r for r in X.CLOSE_ROWS if (r[0], r[1]) == key]
    if rows:
        # the rows as the test runs them: today's flags where the stack differs from the kernel
        return [lambda r=r: X.test_close_machine_row(*r[:4], X.TODAY.get(r[:3], r[4]), r[5]) for r in rows]
    return [lambda: X.test_close_machine_rejects_what_no_row_allows(s, e)]


def _link_checks(key):
    return [lambda: X.test_link_machine_against_the_expected_table(*key)]


def _hs_checks(key):
    rows = [r for r in X.HS_ROWS if (r[0], r[1]) == key]
    if rows:
        return [lambda r=r: X.test_handshake_machine_row(*r) for r in rows]
    return [lambda: X.test_handshake_machine_rejects_what_no_row_allows(*key)]


def _mutants(table: dict, all_states: list, inputs: tuple):
    for key, rules in list(table.items()):
        yield key, "delete", None
        for i, rule in enumerate(rules):
            here = key[0]
            if rule.next is None or rule.next == here:
                yield key, f"rule {i}: next stays -> moves", _with(rules, i, replace(rule, next=_other(all_states, here, here)))
            else:
                yield key, f"rule {i}: next {_n(rule.next)} -> stays", _with(rules, i, replace(rule, next=None))
                yield key, f"rule {i}: next {_n(rule.next)} -> other", _with(rules, i, replace(rule, next=_other(all_states, here, rule.next)))
            for j, action in enumerate(rule.actions):
                yield key, f"rule {i}: drop {action}", _with(rules, i, replace(rule, actions=rule.actions[:j] + rule.actions[j + 1 :]))
                if action in SWAP:
                    acts = rule.actions[:j] + (SWAP[action],) + rule.actions[j + 1 :]
                    yield key, f"rule {i}: {action} -> {SWAP[action]}", _with(rules, i, replace(rule, actions=acts))
            if i + 1 < len(rules):
                swapped = rules[:i] + (rules[i + 1], rules[i]) + rules[i + 2 :]
                yield key, f"rules {i}, {i + 1} swapped", swapped
    for s in all_states:  # one added entry per state, for the first input it rejects
        for e in inputs:
            if (s, e) not in table:
                yield (s, e), "add", (states.Rule(_other(all_states, s, s)),)
                break


def _with(rules, i, rule):
    return rules[:i] + (rule,) + rules[i + 1 :]


def _other(all_states, *not_these):
    return next(s for s in all_states if s not in not_these)


def _n(s):
    return getattr(s, "name", str(s))


def run(name: str, table: dict, all_states: list, inputs: tuple, checks) -> tuple[int, int, list[str]]:
    killed, survivors = 0, []
    mutants = list(_mutants(table, all_states, inputs))
    for key, what, new in mutants:
        base = [_outcome(c) for c in checks(key)]
        old = table.get(key)
        if new is None:
            del table[key]
        else:
            table[key] = new
        try:
            after = [_outcome(c) for c in checks(key)]
        finally:
            if old is None:
                table.pop(key, None)
            else:
                table[key] = old
        if after != base:
            killed += 1
        else:
            survivors.append(f"{name} ({_n(key[0])}, {key[1]}): {what}")
    return killed, len(mutants), survivors


def main() -> int:
    total_k = total_n = 0
    all_survivors = []
    for name, table, all_states, inputs, checks in (
        ("connection", states.CONN_TABLE, list(SmcState), states.CONN_INPUTS, _conn_checks),
        ("link", states.LINK_TABLE, list(LinkState), states.LINK_INPUTS, _link_checks),
        ("handshake", states.HS_TABLE, list(states.Hs), states.HS_INPUTS, _hs_checks),
    ):
        k, n, surv = run(name, table, all_states, inputs, checks)
        print(f"{name} table: {n} mutants, {k} killed, {len(surv)} survived ({100.0 * k / n:.1f}%)")
        total_k, total_n = total_k + k, total_n + n
        all_survivors += surv
    print(f"all tables: {total_n} mutants, {total_k} killed ({100.0 * total_k / total_n:.1f}%)")
    for s in all_survivors:
        print("  survived:", s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
