"""Print a cosmic-ray session's score and every surviving mutant (its diff), for
docs/testing.md: ``python scripts/mutation_survivors.py SESSION.sqlite [--short]``.

The score counts the mutants that ran (killed / (killed + survived)); mutants that
scripts/mutation_sample.py skipped (in an annotation, or not in the sample) are counted
apart by reason. ``--short`` prints one line a survivor (line, operator, the mutated line)
instead of its diff; each survivor's job id is printed (``MUTATION_RERUN`` in
scripts/mutation.sh applies a kept run's survivors again, scripts/mutation_rerun.py)."""

from __future__ import annotations

import collections
import sys

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome


def _mutated_line(diff: str) -> str:
    plus = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return plus[0] if plus else ""


def main(argv: list[str]) -> int:
    path = argv[0]
    short = "--short" in argv[1:]
    with use_db(path, WorkDB.Mode.open) as db:
        items = {item.job_id: item for item in db.work_items}
        results = list(db.results)
        survived = [(j, r) for j, r in results if r.test_outcome == TestOutcome.SURVIVED]
        killed = [r for _, r in results if r.test_outcome == TestOutcome.KILLED]
        incompetent = [r for _, r in results if r.test_outcome == TestOutcome.INCOMPETENT]
        skipped = collections.Counter(r.output for _, r in results if r.worker_outcome == WorkerOutcome.SKIPPED)
        pending = len(items) - len(results)
        total = len(survived) + len(killed)
        score = 100.0 * len(killed) / total if total else 100.0
        print(f"{path}: {len(items)} mutants, {len(killed)} killed, {len(survived)} survived, "
              f"{len(incompetent)} incompetent (not counted), {pending} not run yet; score {score:.1f}%")  # fmt: skip
        for reason, n in sorted(skipped.items()):
            print(f"  skipped, {reason}: {n}")
        survived.sort(key=lambda jr: tuple(items[jr[0]].mutations[0].start_pos))
        for job_id, r in survived:
            m = items[job_id].mutations[0]
            if short:
                print(f"{job_id} line {m.start_pos[0]} {m.operator_name.split('/')[-1]}: {_mutated_line(r.diff or '')}")
            else:
                print(f"--- survived: {job_id} line {m.start_pos[0]} {m.operator_name}")
                print((r.diff or "").strip())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
