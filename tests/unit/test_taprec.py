"""The compiled engine's raw tap records (stack/verbs/taprec.py): counting them, and
records packed from FrameRecords read back as the same frames."""

from __future__ import annotations

import pytest

from stack.verbs.api import FrameRecord
from stack.verbs.soft.native import parse_raw
from stack.verbs.taprec import TAPREC, count_raw, pack_raw

FRAMES = [
    FrameRecord("tx", 1_700_000_000_000_000_001, "10.9.0.1", 49152, "10.9.0.2", 4791, b"\x0a" * 140, None, 4136),  # a WRITE cut at 128
    FrameRecord("rx", 1_700_000_000_000_000_002, "10.9.0.2", 4791, "10.9.0.1", 49152, b"\x11" * 32, None, None),
    FrameRecord("tx", 1_700_000_000_000_000_003, "10.9.0.1", 49152, "10.9.0.2", 4791, b"\x04" * 60, "loss", None),  # a fault dropped it
]


def test_packed_records_read_back_as_the_same_frames_and_count() -> None:
    blob = pack_raw(FRAMES)
    assert count_raw(blob) == 3
    assert len(blob) == 3 * TAPREC.size + 140 + 32 + 60 + len("loss")
    assert parse_raw(blob) == FRAMES


@pytest.mark.parametrize("cut", [0, 4, TAPREC.size - 1])
def test_a_count_stops_at_a_damaged_record(cut: int) -> None:
    blob = pack_raw(FRAMES[:1])
    damaged = blob + (3).to_bytes(4, "little") + bytes(cut)  # a size smaller than a header
    assert count_raw(damaged) == 1
