"""An RMB's rkeys on every link name its connection in a capture of real hosts
(dissectors/derive.py, Deriver.rkey_group). A connection that joins a link group has its
RMB confirmed on the links there are (CONFIRM RKEY, smcr_lgr_reg_rmbs) before the CLC
message that names the RMB to the connection, and a link added in between carries the new
rkey in ADD LINK's rkey pairs. smc-trace tied an rkey of another link to a connection only
when the connection was already known, so the RDMA WRITEs of such a connection on its
second link had no connection (seen in `tcpdump -i lo` of `smc-traffic --connections 2`
with two devices a side: one connection's row had a third of its bytes)."""

from __future__ import annotations

from support.rkey_groups import A1, B1, capture

from dissectors.capture import read_events
from dissectors.summary import summarize


def test_a_connection_that_joins_has_its_writes_on_the_second_link():
    events = list(read_events(capture()))
    assert not [e for e in events if e.kind == "trace.note"], [e for e in events if e.kind == "trace.note"]
    writes = [(e.host, e.link, e.conn, e.get("length")) for e in events if e.kind == "rdma.write"]
    assert writes == [(A1, 2, 1, 700), (B1, 2, 1, 300)]
    cdcs = [(e.host, e.link, e.conn) for e in events if e.kind == "cdc.msg"]
    assert cdcs == [(A1, 2, 1), (B1, 2, 1)]
    rows = {(c["host"], c["conn"]): c["bytes_written"] for c in summarize(events).to_dict()["conns"]}
    assert rows == {(A1, 0): 0, (B1, 0): 0, (A1, 1): 700, (B1, 1): 300}
