"""Failovers as a capture of real hosts shows them (dissectors/derive.py).

A host whose link fails moves each connection on it to another link of the group and sends,
on the new link, a CDC with the failover-validation flag (the kernel's smc_switch_conns and
smcr_cdc_msg_send_validation); the failover is over for the host when the peer has
acknowledged every one of them (an RC ACK covering its PSN). So from the wire, per host and
link group: the failover began with the host's first validation CDC, moved the connections
whose validation CDCs followed, from the link that last carried their CDCs (either way:
both ends of a connection use the same link), and ended with
the ACK of the last one. It becomes the ``link.event`` pair the stack itself emits
(``failover_begin``, ``failover_end`` with ``conns``, ``failed`` and ``duration_ms``), so
``smc-trace summary`` lists it among the failovers that moved connections.

A failover is closed when the host's DELETE LINK for the failed link passes with every
validation acknowledged, when nothing more came for it for ``IDLE`` seconds, or when the
capture ends; validations never acknowledged by then count as failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stack.events import Event

IDLE = 1.0  # seconds without a validation or its ACK: the failover is over
PSN_MOD = 1 << 24


def _covers(acked: int, psn: int) -> bool:
    """An ACK of ``acked`` acknowledges ``psn`` (24-bit PSNs, compared as RC does)."""
    return (acked - psn) % PSN_MOD < PSN_MOD // 2


@dataclass
class _Pending:
    host: str
    lgr: str | None
    from_link: int
    to_link: int | None
    began: float
    last: float
    conns: set[int] = field(default_factory=set)
    waits: dict[tuple[str, str], dict[int, int]] = field(default_factory=dict)  # (responder, requester) -> conn -> its validation's PSN
    acked: float | None = None
    deleted: bool = False


class FailoverWatch:
    """Feed it a capture's CDCs, ACKs and DELETE LINKs in capture order; it returns the
    failover events each one completes."""

    def __init__(self) -> None:
        self.conn_link: dict[tuple[str, int], int] = {}  # (host, conn) -> the link of its last CDC
        # conn -> the link of its last CDC either way other than a validation: both ends use
        # the link the server chose (the client finds it by the QP its CLC Accept named), and
        # an end that never sent a CDC before its validation has no link of its own yet
        self.conn_data_link: dict[int, int] = {}
        self.pending: dict[tuple[str, str | None, int], _Pending] = {}

    def cdc(self, t: float, host: str, lgr: str | None, link: int | None, conn: int | None, validation: bool,
            src: str, dst: str, psn: int) -> list[Event]:  # fmt: skip
        """A CDC ``host`` sent (from ``src`` to ``dst``) for ``conn`` on ``link``."""
        out = self.expire(t)
        if conn is None or link is None:
            return out
        before = self.conn_link.get((host, conn), self.conn_data_link.get(conn))
        self.conn_link[(host, conn)] = link
        if not validation:
            self.conn_data_link[conn] = link
        if not validation or before is None or before == link:
            return out
        key = (host, lgr, before)
        fo = self.pending.get(key)
        if fo is None:
            fo = self.pending[key] = _Pending(host, lgr, before, link, t, t)
            out.append(Event(t, "link.event", host, lgr, before, None,
                             {"event": "failover_begin", "to_link": link, "reason": "seen on the wire: CDC failover validation"}))  # fmt: skip
        fo.conns.add(conn)
        fo.waits.setdefault((dst, src), {})[conn] = psn
        fo.last = t
        return out

    def ack(self, t: float, src: str, dst: str, psn: int) -> list[Event]:
        """An RC ACK from ``src`` (the responder) to ``dst`` acknowledging up to ``psn``."""
        for fo in self.pending.values():
            waiting = fo.waits.get((src, dst))
            if waiting:
                for conn in [c for c, want in waiting.items() if _covers(psn, want)]:
                    del waiting[conn]
                    fo.acked = fo.last = t
                if not waiting:
                    del fo.waits[(src, dst)]
        return self.expire(t)

    def delete_link(self, t: float, host: str, lgr: str | None, link: int | None) -> list[Event]:
        """``host`` sent a DELETE LINK for ``link``: its failover from that link is done once acknowledged."""
        fo = self.pending.get((host, lgr, link)) if link is not None else None
        if fo is not None:
            fo.deleted = True
        return self.expire(t)

    def expire(self, t: float) -> list[Event]:
        done = [k for k, fo in self.pending.items() if (fo.deleted and not fo.waits) or t - fo.last > IDLE]
        return [self._end(self.pending.pop(k)) for k in done]

    def finish(self) -> list[Event]:
        out = [self._end(fo) for fo in self.pending.values()]
        self.pending.clear()
        return out

    @staticmethod
    def _end(fo: _Pending) -> Event:
        end = fo.acked if fo.acked is not None and not fo.waits else fo.last
        return Event(end, "link.event", fo.host, fo.lgr, fo.from_link, None,
                     {"event": "failover_end", "to_link": fo.to_link, "conns": len(fo.conns), "failed": sum(map(len, fo.waits.values())),
                      "duration_ms": round((end - fo.began) * 1000, 3)})  # fmt: skip
