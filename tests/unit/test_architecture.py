"""The house keeps its shape: the imports between the files of stack/ follow the layers
(wire <- core <- runtime <- traffic; events a leaf; verbs imported by the runtime only),
no file under stack/wire or stack/core does I/O or reads a clock, no import circle, none
dodged by an import inside a function; docs/architecture.md is drawn from the code."""

from __future__ import annotations

import textwrap
from pathlib import Path

from stack import architecture as arch


def test_the_imports_of_stack_follow_the_layers():
    assert arch.problems() == []


def test_the_architecture_doc_is_drawn_from_the_code():
    doc = arch.ROOT / "docs" / "architecture.md"
    assert doc.read_text() == arch.render(doc.read_text()), "docs/architecture.md is stale: python -m stack.architecture --write"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"stack/__init__.py": "", "stack/core/__init__.py": "", "stack/wire/__init__.py": "",
                       "stack/runtime/__init__.py": "", "stack/verbs/__init__.py": "", **files}.items():  # fmt: skip
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_a_circle_is_found_even_when_a_function_local_import_closes_it(tmp_path):
    root = _tree(tmp_path, {
        "stack/core/a.py": "from .b import B\n",
        "stack/core/b.py": "class B:\n    def f(self):\n        from . import a\n",
    })  # fmt: skip
    (found,) = arch.problems(root)
    assert "import circle: stack.core.a -> stack.core.b -> stack.core.a" in found and "function-local import in stack.core.b" in found


def test_an_import_for_type_checkers_only_closes_no_circle_but_keeps_to_the_layers(tmp_path):
    root = _tree(tmp_path, {
        "stack/core/a.py": "from .b import B\n",
        "stack/core/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n    from stack.runtime.x import X\nclass B: ...\n",
        "stack/runtime/x.py": "X = 1\n",
    })  # fmt: skip
    assert arch.problems(root) == ["stack.core.b (line 4, typing) imports stack.runtime.x: an arrow up or across the layers "
                                   "(stack.core may not import stack.runtime)"]  # fmt: skip


def test_arrows_up_or_across_the_layers_and_io_in_the_core_are_found(tmp_path):
    root = _tree(tmp_path, {
        "stack/wire/w.py": "import time\nfrom stack.core import c\n",
        "stack/core/c.py": "from stack.verbs import v\n",
        "stack/verbs/v.py": "",
        "stack/traffic/t.py": "from stack.verbs import v\n",
    })  # fmt: skip
    found = arch.problems(root)
    assert any("stack.wire.w (line 1) imports time" in p for p in found)
    assert any("stack.wire.w (line 2, module) imports stack.core.c: an arrow up" in p for p in found)
    assert any("stack.core.c (line 1, module) imports stack.verbs.v: an arrow up or across" in p for p in found)
    assert any("stack.traffic.t (line 1, module) imports stack.verbs.v: only the runtime imports the verbs providers" in p for p in found)
