"""RowTable: a table that stays smooth with tens of thousands of rows.

Textual's DataTable keeps a copy of every cell and re-renders on every ``update_cell``
(measured here: 10,000 rows x 6 cells take about 0.8 s to update). RowTable keeps no
copy: it holds the rows' items in display order and renders only the lines on screen
(Textual's line API, as toolong does), caching each rendered row until its item's
version changes. Updating a row is bumping its version; re-ordering is one list.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Hashable, Sequence

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

Cell = tuple[str, str]  # text, style ("" for the default)

_UNITS = {"": 1, "B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "K": 1 << 10, "M": 1 << 20, "%": 1, "s": 1, "ms": 1e-3, "µs": 1e-6}


def text_key(text: str) -> tuple:
    """How a cell's text sorts: numbers (with their unit: 1.2 MB/s, 256K, 3,000, 40%) by value
    before words, words alphabetically."""
    t = text.strip().replace(",", "")
    num, _, unit = t.partition(" ")
    if not unit and num[-1:] in ("K", "M", "%"):
        num, unit = num[:-1], num[-1:]
    try:
        return (0, float(num) * _UNITS.get(unit.split("/")[0], 1), "")
    except ValueError:
        return (1, 0.0, t.lower())


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int
    align: str = "<"  # "<" left, ">" right


_STYLES: dict[str, Style] = {}
_SELECTED: dict[str, Style] = {}
_PLAIN = Style()


def style(spec: str) -> Style:
    s = _STYLES.get(spec)
    if s is None:
        s = _STYLES[spec] = Style.parse(spec) if spec else Style()
    return s


def selected_style(spec: str) -> Style:
    """``spec`` on the cursor's row (reversed)."""
    s = _SELECTED.get(spec)
    if s is None:
        s = _SELECTED[spec] = style(spec) + style("reverse")
    return s


def fit(text: str, width: int, align: str) -> str:
    if len(text) > width:
        return text[: width - 1] + "…" if width > 1 else text[:width]
    return text.rjust(width) if align == ">" else text.ljust(width)


class RowTable(ScrollView, can_focus=True):
    """Rows of ``items``; ``render_row(item)`` gives the cells, ``key(item)`` and
    ``version(item)`` decide when a cached row is stale."""

    DEFAULT_CSS = """
    RowTable { height: 1fr; background: $surface; }
    RowTable:focus { background-tint: $foreground 3%; }
    """
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "edge(0)", "First", show=False),
        Binding("end", "edge(1)", "Last", show=False),
        Binding("enter", "select", "Select", show=False),
    ]

    class HeaderClicked(Message):
        """A click on a column's title (a view sorts by it)."""

        def __init__(self, table: "RowTable", column: str) -> None:
            super().__init__()
            self.table = table
            self.column = column

    class Selected(Message):
        def __init__(self, table: "RowTable", item: Any) -> None:
            super().__init__()
            self.table = table
            self.item = item

    def __init__(self, columns: Sequence[Column], render_row: Callable[[Any], list[Cell]], *,
                 key: Callable[[Any], Hashable] = id, version: Callable[[Any], int] | None = None, fit: bool = True,
                 text_sort: bool = False,
                 name: str | None = None, id: str | None = None, classes: str | None = None) -> None:  # fmt: skip
        super().__init__(name=name, id=id, classes=classes)
        self.base_columns = list(columns)  # their widths are the most each takes
        self.columns = list(columns)
        self.fit = fit  # size each column to its content (up to its width)
        self.sort_column: str | None = None  # the indicator in the header: ▲ ascending, ▼ descending
        self.sort_reverse = False
        self.text_sort = text_sort  # a click on a title sorts the rows by that column's text (the table does it)
        self.render_row = render_row
        self.key = key
        self.version = version or (lambda item: 0)
        self.items: list[Any] = []
        self.cursor = 0
        self.follow = False  # keep the last row in view as rows are added
        self._view: tuple | None = None  # scroll x and y, width, focus while a paint renders lines
        self._cache: dict[Hashable, tuple] = {}  # key -> (version, selected, scroll x, width, the line)
        self._width = 0
        self._header = Strip([])
        self._layout()

    def _layout(self) -> None:
        self._width = sum(c.width + 1 for c in self.columns)
        self._header = Strip([Segment(" ".join(fit(self._label(c), c.width, c.align) for c in self.columns) + " ", style("bold reverse"))])
        self._cache.clear()

    def _label(self, c: Column) -> str:
        if c.key != self.sort_column:
            return c.label
        return c.label + ("▼" if self.sort_reverse else "▲")

    def set_sort(self, column: str | None, reverse: bool = False) -> None:
        """Show which column orders the rows (the view orders them)."""
        if (column, reverse) != (self.sort_column, self.sort_reverse):
            self.sort_column, self.sort_reverse = column, reverse
            self._fit_columns(self.items, force=True)
            self.refresh()

    def _fit_columns(self, items: list[Any], force: bool = False) -> None:
        """Each column as wide as its title and the widest of some rows (the first, those on
        screen), at most its declared width: what matters shows, nothing is padded to spare."""
        if not self.fit:
            if force:
                self._layout()
            return
        top = int(self.scroll_offset.y)
        sample = items[:200] + items[top : top + max(self.size.height, 50)]
        widths = [len(self._label(c)) for c in self.base_columns]
        for item in sample:
            for i, (text, _spec) in enumerate(self.render_row(item)[: len(widths)]):
                if len(text) > widths[i]:
                    widths[i] = len(text)
        cols = [replace(c, width=min(max(w, 1), c.width) if c.key != self.sort_column else min(max(w, 1), c.width + 1))
                for c, w in zip(self.base_columns, widths)]  # fmt: skip
        if force or cols != self.columns:
            self.columns = cols
            self._layout()

    # ------------------------------------------------------------------ data

    def set_items(self, items: list[Any]) -> None:
        """The rows, in display order (the table keeps the list; do not mutate it afterwards),
        or in the order of the column the operator clicked (``text_sort``)."""
        if self.text_sort and self.sort_column is not None:
            i = next((n for n, c in enumerate(self.base_columns) if c.key == self.sort_column), None)
            if i is not None:
                items = sorted(items, key=lambda item: text_key(self.render_row(item)[i][0]), reverse=self.sort_reverse)
        old = self.items[self.cursor] if self.items and self.cursor < len(self.items) else None
        self.items = items
        if old is not None and not self.follow:  # keep the cursor on the same row
            self.cursor = self._find(items, old)
        self.cursor = min(self.cursor, max(len(items) - 1, 0))
        if len(self._cache) > 4 * max(self.size.height, 50):
            self._cache.clear()
        self._fit_columns(items)
        self.virtual_size = Size(self._width, len(items) + 1)
        if self.follow and items:
            self.cursor = len(items) - 1
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.refresh()

    def _find(self, items: list[Any], old: Any) -> int:
        """Where ``old``'s row is in ``items`` now (the cursor's row if gone)."""
        try:
            i = items.index(old)  # the same object, usually: found at C speed
            if self.key(items[i]) == self.key(old):
                return i
        except ValueError:
            pass
        old_key = self.key(old)
        for i, item in enumerate(items):
            if self.key(item) == old_key:
                return i
        return self.cursor

    def forget(self, keys) -> None:
        for k in keys:
            self._cache.pop(k, None)

    @property
    def current(self) -> Any:
        return self.items[self.cursor] if 0 <= self.cursor < len(self.items) else None

    def visible_items(self) -> list[Any]:
        top = int(self.scroll_offset.y)
        return self.items[top : top + max(self.size.height - 1, 0)]

    # ------------------------------------------------------------------ rendering

    def render_lines(self, crop):
        self._view = (*self.scroll_offset, self.size.width, self.has_focus)  # the same for every line of this paint
        try:
            return super().render_lines(crop)
        finally:
            self._view = None

    def render_line(self, y: int) -> Strip:
        view = self._view
        scroll_x, scroll_y, width, focused = view if view is not None else (*self.scroll_offset, self.size.width, self.has_focus)
        if y == 0:
            return self._header.crop(scroll_x, scroll_x + width).extend_cell_length(width, style("reverse"))
        i = scroll_y + y - 1
        if i >= len(self.items):
            return Strip.blank(width)
        item = self.items[i]
        k = self.key(item)
        v = self.version(item)
        selected = i == self.cursor and focused
        hit = self._cache.get(k)
        if hit is None or hit[0] != v or hit[1] != selected or hit[2] != scroll_x or hit[3] != width:
            hit = self._cache[k] = (v, selected, scroll_x, width, self._render(item, selected, scroll_x, width))
        return hit[4]

    def _render(self, item: Any, selected: bool, x: int, width: int) -> Strip:
        """One row as the screen shows it from column ``x``, ``width`` cells: its cells fitted
        to their columns, a plain space after each (reversed on the cursor's row); neighbours
        that share a style make one segment, and cells out of view cost no segment."""
        runs: list[tuple[str, str]] = []
        run: list[str] = []
        spec_of_run = None
        end = x + width
        pos = 0  # where the next cell starts
        for col, (text, spec) in zip(self.columns, self.render_row(item)):
            w = col.width
            if pos + w + 1 <= x:  # scrolled off to the left
                pos += w + 1
                continue
            if pos >= end:
                break
            pos += w + 1
            if len(text) > w:
                text = text[: w - 1] + "…" if w > 1 else text[:w]
            else:
                text = text.rjust(w) if col.align == ">" else text.ljust(w)
            if spec != spec_of_run:
                if run:
                    runs.append(("".join(run), spec_of_run))
                run, spec_of_run = [text], spec
            else:
                run.append(text)
            if spec_of_run:
                runs.append(("".join(run), spec_of_run))
                run, spec_of_run = [" "], ""
            else:
                run.append(" ")
        if run:
            runs.append(("".join(run), spec_of_run))
        styled = selected_style if selected else style
        segs = []
        start = pos - sum(len(t) for t, _ in runs)  # where the first run starts (the cells are one character a cell)
        for text, spec in runs:
            if start < x:
                text = text[x - start :]
                start = x
            if start + len(text) > end:
                text = text[: end - start]
            if text:
                segs.append(Segment(text, styled(spec)))
            start += len(text)
        start = max(start, x)  # (nothing in view: all padding)
        if start < end:
            segs.append(Segment(" " * (end - start)))
        return Strip(segs, width)

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # ------------------------------------------------------------------ moving

    def _show_cursor(self) -> None:
        rows = max(self.size.height - 1, 1)
        top = int(self.scroll_offset.y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + rows:
            self.scroll_to(y=self.cursor - rows + 1, animate=False, immediate=True)
        self.refresh()

    def move_to(self, index: int) -> None:
        self.cursor = max(0, min(index, len(self.items) - 1))
        self.follow = False
        self._show_cursor()

    def action_cursor(self, delta: int) -> None:
        self.move_to(self.cursor + delta)

    def action_page(self, delta: int) -> None:
        self.move_to(self.cursor + delta * max(self.size.height - 2, 1))

    def action_edge(self, end: int) -> None:
        self.move_to(len(self.items) - 1 if end else 0)

    def action_select(self) -> None:
        if self.current is not None:
            self.post_message(self.Selected(self, self.current))

    def on_click(self, event) -> None:
        if event.y == 0:  # the header: which column was clicked
            x = int(self.scroll_offset.x) + event.x
            pos = 0
            for c in self.columns:
                if pos <= x < pos + c.width + 1:
                    if self.text_sort:  # the table orders its rows itself: again on the same column reverses
                        reverse = not self.sort_reverse if c.key == self.sort_column else False
                        self.sort_column, self.sort_reverse = c.key, reverse
                        self._fit_columns(self.items, force=True)
                        self.set_items(self.items)
                    self.post_message(self.HeaderClicked(self, c.key))
                    return
                pos += c.width + 1
            return
        row = int(self.scroll_offset.y) + event.y - 1
        if 0 <= row < len(self.items):
            self.move_to(row)
            if getattr(event, "chain", 1) >= 2:
                self.action_select()

    def lines(self) -> list[str]:
        """The table as plain text, every row (for tests and text screenshots)."""
        out = [self._header.text.rstrip()]
        for item in self.items:
            out.append(" ".join(fit(t, c.width, c.align) for c, (t, _) in zip(self.columns, self.render_row(item))).rstrip())
        return out
