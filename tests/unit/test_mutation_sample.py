"""scripts/mutation_sample.py: which mutants lie inside a type annotation (skipped as equivalent
under ``from __future__ import annotations``) and which do not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("mutation_sample", Path(__file__).parents[2] / "scripts" / "mutation_sample.py")
sample = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sample)

SOURCE = """from __future__ import annotations
def f(a: int | None, b=1 + 2) -> bytes | str:
    x: dict[str, int] = {"k": a | 4}
    return x
"""


def test_annotation_spans_cover_annotations_only():
    spans = sample.annotation_spans(SOURCE)
    inside = sample.in_annotation
    assert inside((2, 9), (2, 19), spans)  # int | None
    assert inside((2, 33), (2, 44), spans)  # bytes | str (the return annotation)
    assert inside((3, 7), (3, 21), spans)  # dict[str, int]
    assert not inside((2, 23), (2, 28), spans)  # 1 + 2: a default value is evaluated
    assert not inside((3, 30), (3, 35), spans)  # a | 4 in the assigned value
    assert not inside((2, 9), (2, 30), spans)  # a span reaching out of the annotation
