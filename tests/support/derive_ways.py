"""smc-trace's two ways through the frames of an RDMA WRITE (dissectors/derive.py): the fast
one from fixed offsets, and the full decoding it must agree with."""

from __future__ import annotations

from dissectors import derive
from dissectors.roce_analysis import RoceAnalysis
from stack.events import to_json


def both_ways(read, monkeypatch) -> tuple:
    """(events, analysis) the fast way and the full way, and how many frames the fast way took.
    ``read(analysis)`` yields the events of one reading."""
    taken = []
    real = derive.Deriver._middle_of_a_write

    def counted(self, p, number, t):
        took = real(self, p, number, t)
        taken.append(took)
        return took

    monkeypatch.setattr(derive.Deriver, "_middle_of_a_write", counted)
    out = []
    for fast in (True, False):
        monkeypatch.setattr(derive, "FAST", fast)
        roce = RoceAnalysis()
        out.append(([to_json(e) for e in read(roce)], roce.to_dict()))
    return out[0], out[1], sum(taken)
