"""RowTable draws each row once per change, only the part in view, one segment per run of cells
that share a style: the same characters and styles as the whole row cropped to the view."""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

from smctop import format as fmt
from smctop.model import Model
from smctop.synthetic import SyntheticStack
from smctop.widgets import RowTable, fit, style


def whole_row(table: RowTable, item, selected: bool) -> Strip:
    """A row as one segment a cell and one a space (how RowTable drew it before)."""
    segs = []
    for col, (text, spec) in zip(table.columns, table.render_row(item)):
        st = style(spec) + style("reverse") if selected else style(spec)
        segs.append(Segment(fit(text, col.width, col.align), st))
        segs.append(Segment(" ", style("reverse") if selected else Style()))
    return Strip(segs, table._width)


def cells(strip: Strip) -> list[tuple[str, Style | None]]:
    return [(ch, seg.style or Style()) for seg in strip for ch in seg.text]


def test_a_row_in_view_is_the_whole_row_cropped():
    m, s = Model(), SyntheticStack(2, fallbacks=1)
    m.feed_timed(s.setup(0.0))
    for t in (1.0, 2.0):
        m.feed_timed(s.step(t))
    m.advance(2.5)
    table = RowTable(fmt.CONN_COLUMNS, fmt.conn_cells, key=lambda c: c.key, version=lambda c: c.version_no)
    items = list(m.conns.values())
    assert {c.mode for c in items} == {"SMCR", "TCP"} and any(c.closed for c in items)  # plain, coloured and dimmed cells
    for item in items:
        for selected in (False, True):
            whole = whole_row(table, item, selected)
            for x in (0, 1, 5, 6, 37, 100, table._width - 3, table._width + 4):
                for width in (1, 30, 80, 200, 300):
                    want = whole.crop(x, x + width).extend_cell_length(width)
                    got = table._render(item, selected, x, width)
                    assert got.cell_length == width and cells(got) == cells(want), (item.key, selected, x, width)
                    assert len(list(got)) <= len(list(want))
    plain = table._render(items[0], False, 0, table._width)
    assert len(list(plain)) < len(fmt.CONN_COLUMNS)  # neighbours with one style share a segment
