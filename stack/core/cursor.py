"""RMBE cursor arithmetic, as Linux ``net/smc/smc_cdc.h`` does it.

A cursor is (wrap, count): ``count`` bytes into a ring of ``size`` bytes, ``wrap`` times
around it (u16, wrapping 0xFFFF -> 0). The writer may fill the ring completely: there
is no "one byte free" rule, so producer = consumer with wraps one apart means full.
"""

from __future__ import annotations

from stack.wire.cdc import Cursor

WRAP_MASK = 0xFFFF

__all__ = ["Cursor", "add", "diff", "comp", "ahead", "fits", "valid"]


def add(c: Cursor, n: int, size: int) -> Cursor:
    """Advance by ``n`` bytes (0 <= n <= size)."""
    count = c.count + n
    wrap = c.wrap
    while count >= size:
        count -= size
        wrap = (wrap + 1) & WRAP_MASK
    return Cursor(wrap, count)


def diff(old: Cursor, new: Cursor, size: int) -> int:
    """Bytes from ``old`` to ``new`` when ``new`` is not behind (smc_curs_diff): at most one ring."""
    if old.wrap != new.wrap:
        return max(0, size - old.count + new.count)
    return max(0, new.count - old.count)


def ahead(a: Cursor, b: Cursor) -> bool:
    """True when ``a`` is strictly beyond ``b`` (wrap compared with u16 wrap-around)."""
    if a.wrap == b.wrap:
        return a.count > b.count
    return ((a.wrap - b.wrap) & WRAP_MASK) < 0x8000


def comp(old: Cursor, new: Cursor, size: int) -> int:
    """Signed distance from ``old`` to ``new`` (smc_curs_comp): negative when ``new`` is behind."""
    if ahead(old, new):
        return -diff(new, old, size)
    return diff(old, new, size)


def fits(c: Cursor, size: int) -> bool:
    return 0 <= c.count < size


def valid(c: Cursor, size: int) -> bool:
    """A cursor a peer may legally send for a ring of ``size`` bytes."""
    return 0 <= c.count < size and 0 <= c.wrap <= WRAP_MASK


def distance(old: Cursor, new: Cursor, size: int) -> int:
    """Bytes between two cursors that may be several rings apart (smc_curs_diff_large),
    capped at ``size``; used where the kernel needs the peer's view over many wraps."""
    if not ahead(new, old):
        return 0
    wraps = (new.wrap - old.wrap) & WRAP_MASK
    total = wraps * size + new.count - old.count
    return min(max(total, 0), size)
