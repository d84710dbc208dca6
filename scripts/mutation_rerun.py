"""Run the survivors of an earlier cosmic-ray session again, for scripts/mutation.sh with
MUTATION_RERUN=DIR: ``python scripts/mutation_rerun.py OLD.sqlite NEW.sqlite`` copies the
session and forgets the result of each survivor, so ``cosmic-ray exec`` applies exactly those
mutants again (same module, operator and occurrence: the code under test must not have
changed) and runs the tests of the new snapshot against them. Killed and skipped mutants keep
their results, so the new session's score is the score with the new tests."""

from __future__ import annotations

import shutil
import sqlite3
import sys


def main(old: str, new: str) -> int:
    shutil.copyfile(old, new)
    with sqlite3.connect(new) as db:
        n = db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'").rowcount
    print(f"{new}: {n} survivors of {old} to run again")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
