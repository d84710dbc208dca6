"""stack/core/cursor.py: RMBE cursor arithmetic (the kernel's smc_curs_add, smc_curs_diff,
smc_curs_comp, smc_curs_diff_large in net/smc/smc_cdc.h), at the edges: the u16 wrap
counter turning over, a completely full ring, cursors behind, several rings apart; and a
real connection filling its peer's ring to the last byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.fabric import open_conn, pair

from stack.core import cursor as curs
from stack.core.config import SmcConfig
from stack.core.cursor import Cursor

SIZE = 16384


def test_add_turns_the_u16_wrap_counter_over():
    assert curs.add(Cursor(0xFFFF, SIZE - 10), 20, SIZE) == Cursor(0, 10)
    assert curs.add(Cursor(0xFFFF, SIZE - 1), 1, SIZE) == Cursor(0, 0)  # exactly at the ring's end
    assert curs.add(Cursor(0xFFFE, 5), 0, SIZE) == Cursor(0xFFFE, 5)
    assert curs.add(Cursor(7, SIZE - 11), 10, SIZE) == Cursor(7, SIZE - 1)  # one short of the end: no wrap


def test_a_whole_ring_is_one_wrap_at_the_same_count():
    """No "one byte free" rule: the writer may fill the ring; full = same count, wraps one apart."""
    assert curs.add(Cursor(3, 100), SIZE, SIZE) == Cursor(4, 100)
    assert curs.add(Cursor(0xFFFF, 100), SIZE, SIZE) == Cursor(0, 100)
    assert curs.diff(Cursor(3, 100), Cursor(4, 100), SIZE) == SIZE  # full
    assert curs.diff(Cursor(0xFFFF, 100), Cursor(0, 100), SIZE) == SIZE  # full across the u16 turn
    assert curs.diff(Cursor(3, 100), Cursor(3, 100), SIZE) == 0  # empty


def test_diff_across_the_u16_turn_and_behind():
    assert curs.diff(Cursor(0xFFFF, SIZE - 10), Cursor(0, 10), SIZE) == 20
    assert curs.diff(Cursor(5, 300), Cursor(5, 200), SIZE) == 0  # behind on the same wrap: nothing, not negative
    assert curs.diff(Cursor(5, 300), Cursor(6, 200), SIZE) == SIZE - 100


def test_comp_is_signed_and_knows_the_u16_turn():
    assert curs.comp(Cursor(1, 100), Cursor(1, 50), SIZE) == -50
    assert curs.comp(Cursor(1, 50), Cursor(1, 100), SIZE) == 50
    assert curs.comp(Cursor(0xFFFF, SIZE - 10), Cursor(0, 10), SIZE) == 20  # 0 is after 0xFFFF
    assert curs.comp(Cursor(0, 10), Cursor(0xFFFF, SIZE - 10), SIZE) == -20
    assert curs.comp(Cursor(9, 9), Cursor(9, 9), SIZE) == 0


def test_ahead_compares_wraps_over_half_the_u16_range():
    assert curs.ahead(Cursor(0, 0), Cursor(0xFFFF, 5))
    assert not curs.ahead(Cursor(0xFFFF, 5), Cursor(0, 0))
    assert curs.ahead(Cursor(0x7FFF, 0), Cursor(0, 0))
    assert not curs.ahead(Cursor(0x8000, 0), Cursor(0, 0))  # half way round counts as behind
    assert curs.ahead(Cursor(4, 2), Cursor(4, 1)) and not curs.ahead(Cursor(4, 1), Cursor(4, 1))


def test_distance_over_several_rings_is_capped_at_the_ring():
    assert curs.distance(Cursor(3, 10), Cursor(3, 30), SIZE) == 20
    assert curs.distance(Cursor(0xFFFF, 900), Cursor(0, 100), 1000) == 200  # across the u16 turn
    assert curs.distance(Cursor(1, 500), Cursor(3, 0), 1000) == 1000  # two rings apart: capped
    assert curs.distance(Cursor(3, 30), Cursor(3, 10), SIZE) == 0  # behind
    assert curs.distance(Cursor(3, 30), Cursor(3, 30), SIZE) == 0


def test_fits_and_valid_at_the_bounds():
    assert curs.fits(Cursor(0, SIZE - 1), SIZE) and not curs.fits(Cursor(0, SIZE), SIZE)
    assert curs.valid(Cursor(0xFFFF, 0), SIZE) and not curs.valid(Cursor(0x10000, 0), SIZE)
    assert not curs.valid(Cursor(0, SIZE), SIZE) and not curs.valid(Cursor(0, -1), SIZE) and not curs.valid(Cursor(-1, 0), SIZE)


@given(wrap=st.integers(0, 0xFFFF), count=st.integers(0, SIZE - 1), n=st.integers(0, SIZE))
def test_add_then_diff_and_comp_give_back_the_step(wrap, count, n):
    c = Cursor(wrap, count)
    moved = curs.add(c, n, SIZE)
    assert curs.fits(moved, SIZE) and curs.valid(moved, SIZE)
    assert curs.diff(c, moved, SIZE) == n
    assert curs.comp(c, moved, SIZE) == n and curs.comp(moved, c, SIZE) == -n
    assert curs.distance(c, moved, SIZE) == n


@pytest.mark.parametrize("size", [16384, 65536])
def test_a_connection_fills_its_peers_ring_to_the_last_byte(size):
    """The real core: the writer puts exactly one ring into the peer's RMB while it reads
    nothing; the peer's producer cursor is then one wrap ahead at the same count, the writer
    has no room left, and one read gives it the whole ring back."""
    cfg = {"rmb_size": size, "sndbuf_size": size}
    f, a, b = pair(SmcConfig(host="client", **cfg), SmcConfig(host="server", **cfg))
    open_conn(f, a, b, 1)
    data = bytes(range(256)) * (size // 256)
    assert a.host.app_send(1, data, f.now) == size
    f.run(until=f.now + 0.01)
    rx, tx = b.host.conns[1], a.host.conns[1]
    assert curs.diff(rx.rx_cons, rx.rx_prod, size) == size and rx.rx_prod == Cursor(rx.rx_cons.wrap + 1, rx.rx_cons.count)
    assert tx.peer_rmbe_space == 0
    assert a.host.app_send(1, b"x" * 100, f.now) == 100  # into our sndbuf: it waits for room
    f.run(until=f.now + 0.01)
    assert rx.rx_prod == Cursor(rx.rx_cons.wrap + 1, rx.rx_cons.count)  # nothing overwrote unread data
    got = b.host.app_recv(1, 2 * size, f.now)
    f.run(until=f.now + 0.01)
    got += b.host.app_recv(1, 2 * size, f.now)
    assert got == data + b"x" * 100


def test_wraps_beyond_the_small_int_cache_compare_by_value():
    """Equal wraps above 256 are equal values, not the same object (a mutant compared with ``is``)."""
    w1, w2 = int("1000"), int("999") + 1
    assert w1 == w2 and w1 is not w2
    assert not curs.ahead(Cursor(w1, 3), Cursor(w2, 5)) and curs.ahead(Cursor(w1, 5), Cursor(w2, 3))
    assert curs.comp(Cursor(w1, 5), Cursor(w2, 3), SIZE) == -2


def test_fits_rejects_counts_beyond_the_ring():
    assert not curs.fits(Cursor(0, SIZE + 1), SIZE) and not curs.fits(Cursor(0, 10 * SIZE), SIZE)
    assert not curs.fits(Cursor(0, -1), SIZE) and curs.fits(Cursor(0, 0), SIZE)
    assert not curs.valid(Cursor(0, SIZE + 1), SIZE)
