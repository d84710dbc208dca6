"""Narrow a fresh cosmic-ray session before ``cosmic-ray exec``, for scripts/mutation.sh:

    python scripts/mutation_sample.py SESSION.sqlite MODULE.py [--sample N] [--seed S]

* Mutants inside a type annotation are marked skipped ("annotation"): every module of
  stack/ and smctop/ starts with ``from __future__ import annotations``, so an annotation is a
  string that is never evaluated and such a mutant cannot change behaviour (cdc.py's run had
  20 of them, all survivors). They are counted apart, not as killed.
* With ``--sample N``, of the other mutants a uniformly random N are kept (``random.Random(S)``
  over the mutants sorted by position, operator and occurrence, so one seed always picks the
  same ones for one source) and the rest are marked skipped ("not in sample").

scripts/mutation_survivors.py reports the skipped ones by reason."""

from __future__ import annotations

import argparse
import ast
import random
import sys
from pathlib import Path

ANNOTATION = "annotation: never evaluated (from __future__ import annotations)"
NOT_IN_SAMPLE = "not in sample"


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions, as (line, column), of every annotation in the source."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        found = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            found.append(node.returns)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            found.append(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        for a in found:
            spans.append(((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)))
    return spans


def in_annotation(start: tuple[int, int], end: tuple[int, int], spans) -> bool:
    return any(s <= tuple(start) and tuple(end) <= e for s, e in spans)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("session")
    p.add_argument("module")
    p.add_argument("--sample", type=int, default=0, help="keep this many mutants (0: all)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    try:  # the optional group [mutation]: only running a session needs it, not the span logic the tests check
        from cosmic_ray.work_db import WorkDB, use_db
        from cosmic_ray.work_item import WorkerOutcome, WorkResult
    except ImportError:
        print("cosmic-ray is not installed: .venv/bin/pip install -e '.[mutation]'", file=sys.stderr)
        return 2
    spans = annotation_spans(Path(args.module).read_text())
    with use_db(args.session, WorkDB.Mode.open) as db:
        items = list(db.pending_work_items)
        annotated, others = [], []
        for item in items:
            m = item.mutations[0]
            (annotated if in_annotation(m.start_pos, m.end_pos, spans) else others).append(item)
        db.set_multiple_results([i.job_id for i in annotated], WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=ANNOTATION))
        dropped = []
        if args.sample and args.sample < len(others):
            others.sort(key=lambda i: (tuple(i.mutations[0].start_pos), i.mutations[0].operator_name, i.mutations[0].occurrence))
            keep = set(id(i) for i in random.Random(args.seed).sample(others, args.sample))
            dropped = [i for i in others if id(i) not in keep]
            db.set_multiple_results([i.job_id for i in dropped], WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=NOT_IN_SAMPLE))
        print(
            f"{args.module}: {len(items)} mutants, {len(annotated)} in annotations (skipped), "
            f"{len(others) - len(dropped)} to run" + (f" (a random sample, seed {args.seed})" if dropped else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
