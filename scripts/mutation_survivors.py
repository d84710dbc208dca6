"""Print a cosmic-ray session's score and every surviving mutant (its diff), for
docs/testing.md: ``python scripts/mutation_survivors.py SESSION.sqlite``."""

from __future__ import annotations

import sys

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome


def main(path: str) -> int:
    with use_db(path, WorkDB.Mode.open) as db:
        results = [r for _, r in db.results]
        survived = [r for r in results if r.test_outcome == TestOutcome.SURVIVED]
        killed = [r for r in results if r.test_outcome == TestOutcome.KILLED]
        incompetent = [r for r in results if r.test_outcome == TestOutcome.INCOMPETENT]
        total = len(survived) + len(killed)
        score = 100.0 * len(killed) / total if total else 100.0
        print(f"{path}: {len(results)} mutants, {len(killed)} killed, {len(survived)} survived, "
              f"{len(incompetent)} incompetent (not counted); score {score:.1f}%")  # fmt: skip
        for r in survived:
            print("--- survived:")
            print((r.diff or "").strip())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
