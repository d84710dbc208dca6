"""One SMC-R connection: the send ring (sndbuf), the receive ring (RMB), CDC messages,
cursor updates by the kernel's rules, and the close state machine of ``states``.

Sending (``smc_tx_rdma_writes``): application bytes go into the sndbuf at ``tx_prep``;
a transmit step writes what the peer's RMB can take with at most two RDMA WRITEs (split
at the peer ring's wrap), then one CDC announcing the new producer cursor. The sndbuf
space is released when that CDC's send completes (``tx_fin``).

Receiving: a CDC moves the peer's producer cursor: that many more bytes wait in our RMB.
Reading advances our consumer cursor; the peer learns it from the next CDC we send, or
from a cursor-only CDC when the kernel's update policy says so (``smc_tx_consumer_update``).

A peer that moves a cursor out of range or puts more into our RMB than it can hold is
violating the protocol: the connection aborts.
"""

from __future__ import annotations

from typing import Any, Callable

from stack.events import Event
from stack.wire.cdc import CDC_LEN, CdcMessage, Cursor
from stack.wire.cdc import pack as cdc_pack
from stack.wire.codes import SmcState
from stack.wire.fields import MARKING_PROD_FLAGS
from stack.wire.fields import cdc_fields as _cdc_fields
from stack.wire.fields import cdc_fields_of as _cdc_fields_of
from stack.wire.fields import cursor_text as _c

from . import cursor as curs
from .ports import Services
from .states import CONN_TABLE, Hs, step

SOCK_MIN_SNDBUF_HALF = 2304  # SOCK_MIN_SNDBUF / 2 on x86-64: the floor of the update limit
AUTOCORKING_SIZE = 64 << 10  # net.smc.autocorking_size: data held back while a CDC is in flight
# what a connection ended by the peer's abort says; its reader sees end of file, as the
# kernel's smc_rx_recvmsg returns 0 once peer_conn_abort arrived (only writes fail)
PEER_ABORT_ERROR = "connection reset by peer (SMC abort)"
CLOSE_FLAGS = ("done_writing", "closed", "abort")  # the connection state flags of our CDCs
CLOSE_PENDING = ("done_writing", "final")  # what may wait for the sndbuf to drain; "final" is smc_close_final
URG_VALID, URG_NOTYET, URG_READ = "VALID", "NOTYET", "READ"  # enum smc_urg_state


class SmcConnection:
    """A connection gets its services handed in (the I/O port, the configuration, the event
    bus) and tells its owner through ``on_closed`` when its close machine reaches CLOSED; it
    never names its owner. ``lgr`` and ``link`` are where it lives, for its events and sends."""

    def __init__(self, ctx: Services, conn_id: int, role: str, local: tuple[str, int], peer: tuple[str, int],
                 on_closed: Callable[["SmcConnection", float], None]) -> None:  # fmt: skip
        self.ctx = ctx
        self.io = ctx.io
        self.on_closed = on_closed
        self.id = conn_id
        self.role = role  # "client" or "server"
        self.local = local
        self.peer = peer
        self.state = SmcState.INIT
        self.hs = Hs.START
        self.mode = "INIT"  # then "SMCR" or "TCP"
        self.fallback_reason = 0
        self.peer_diagnosis = 0
        self.version = 0
        self.first_contact = False
        self.lgr: Any = None  # the LinkGroup
        self.link: Any = None  # the Link
        self.error: str | None = None
        self.clc_buf = b""
        self.proposal = None  # what was offered or received, for the rest of the handshake
        self.accept = None
        self.handshake_started = 0.0
        # buffers
        self.token = 0
        self.peer_token = 0
        self.rmb = None
        self.sndbuf = None
        self.peer_rtoken: dict[int, tuple[int, int]] = {}  # link id -> the peer RMB's (rkey, address) on it
        self.peer_size = 0
        self.tx_off = 0  # our RMBE in the peer's RMB: (rmbe_idx - 1) * its size (smcr_conn_save_peer_info)
        # transmit side (sndbuf cursors, producer cursor in the peer's RMB)
        self.tx_prep = Cursor()
        self.tx_sent = Cursor()
        self.tx_fin = Cursor()
        self.tx_prod = Cursor()
        self.tx_prod_fin = Cursor()
        self.peer_rmbe_space = 0
        self.tx_prod_max = Cursor()  # the furthest producer cursor ever announced
        self.tx_seq = 0
        self.tx_seq_fin = 0
        self.tx_epoch = 0  # counts link switches: CDC completions from an older link are stale
        self.cdc_pend = 0  # CDCs posted and not completed (the kernel's cdc_pend_tx_wr)
        self.write_blocked = False
        # receive side
        self.rx_prod = Cursor()  # the peer's producer cursor: how far it wrote into our RMB
        self.rx_cons = Cursor()  # the peer's consumer cursor: how far it read its RMB
        self.cons = Cursor()  # our consumer cursor in our RMB
        self.cons_confirmed = Cursor()  # our consumer cursor as last sent to the peer
        self.bytes_to_rcv = 0
        self.rx_seq = 0
        self.rx_seq_seen = False
        self.peer_write_blocked = False
        self.cons_update_requested = False
        # urgent data (MSG_OOB), as net/smc does it: the last byte of an urgent send is urgent
        self.urg_state = URG_READ  # smc_rx_init: nothing urgent pending
        self.urg_curs = Cursor()  # the producer cursor of the CDC that brought it: the byte is just before
        self.urg_rx_byte = 0
        self.urg_rx_skip_pend = False  # read out of band before the reader reached it: skip it there
        self.urg_rx_count = 0  # urgent bytes that arrived (the runtime notices a new one by it)
        self.urg_inline = False  # SO_OOBINLINE: the urgent byte stays in the stream
        self.urg_data_pending = False  # our producer flags: an urgent send is under way ...
        self.urg_data_present = False  # ... and this CDC carries its last byte
        self.urg_tx_pend = False  # sent; no more sends until the peer has consumed everything (smc_tx_sendmsg)
        # closing
        self.sent = {f: False for f in CLOSE_FLAGS}
        self.pending = {f: False for f in CLOSE_PENDING}  # waits for the sndbuf to drain
        self.pending_any = False  # any of them (checked after every transmit step)
        self.peer_done_writing = False
        self.peer_closed = False
        self.peer_abort = False
        self._final_abort_out = False  # set while input() runs when our final flag went out as an abort
        self.tcp_shutdown_with: str | None = None  # the flag ("done_writing", "final") the TCP connection's FIN goes with
        self.released = False
        self.app_unread = 0  # bytes the runtime took out of the RMB that the application has not read (at close)
        self.early_cdcs: list[CdcMessage] = []
        # counters
        self.bytes_sent = 0
        self.bytes_received = 0
        self.cdc_sent = 0
        self.cdc_received = 0
        self.rdma_writes = 0
        # the data path's other events, counted whether or not anyone listens, so that a
        # sampled subscriber (stack.runtime.coalesce) says how many each sample stands for
        self.rx_moves = 0  # CDCs received that moved a cursor (a conn.cursor and a conn.rmb each)
        self.reads = 0  # reads that took bytes (a conn.cursor each)
        self.rmb_blocked = 0  # times the peer's RMB filled up under our sends (a conn.rmb each)

    # ------------------------------------------------------------------ identity

    def ids(self) -> dict:
        return {"lgr": self.lgr.name if self.lgr else None, "link": self.link.link_id if self.link else None, "conn": self.id}

    def emit(self, now: float, kind: str, **fields) -> None:
        if self.ctx.bus.active:  # the record straight away: events on the data path come by the hundred thousand
            self.emit_fields(now, kind, fields)

    def emit_fields(self, now: float, kind: str, fields: dict) -> None:
        """emit with the fields in a dict of their own (no copy; the caller checked bus.active)."""
        ctx, lgr, link = self.ctx, self.lgr, self.link
        ctx.bus.emit(Event(now, kind, ctx.name, lgr.name if lgr else None, link.link_id if link else None, self.id, fields))

    @property
    def rmb_size(self) -> int:
        return self.rmb.size if self.rmb else 0

    @property
    def sndbuf_size(self) -> int:
        return self.sndbuf.size if self.sndbuf else 0

    def snapshot(self) -> dict:
        """Everything smcss -d shows, and more."""
        return {
            "state": self.state.name, "mode": self.mode, "role": self.role, "local": f"{self.local[0]}:{self.local[1]}",
            "peer": f"{self.peer[0]}:{self.peer[1]}", "version": self.version, "fallback_reason": self.fallback_reason,
            "peer_diagnosis": self.peer_diagnosis, "token": self.token, "peer_token": self.peer_token,
            "rmb_size": self.rmb_size, "sndbuf_size": self.sndbuf_size, "peer_rmb_size": self.peer_size,
            "rx_prod": _c(self.rx_prod), "rx_cons": _c(self.rx_cons), "tx_prod": _c(self.tx_prod), "tx_cons": _c(self.cons),
            "tx_prep": _c(self.tx_prep), "tx_sent": _c(self.tx_sent), "tx_fin": _c(self.tx_fin),
            "bytes_to_rcv": self.bytes_to_rcv, "peer_rmbe_space": self.peer_rmbe_space, "write_blocked": self.write_blocked,
            "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received, **self.ids(),
        }  # fmt: skip

    # ------------------------------------------------------------------ the close machine

    def _guard(self, name: str) -> bool:
        if name == "peer_closed":
            return self.peer_closed
        if name == "done_writing_only":
            # a flag still waiting for the sndbuf to drain counts as sent: the kernel's
            # shutdown() and close() would have waited for it (smc_close_stream_wait)
            sent, pending = self.sent, self.pending
            return (sent["done_writing"] or pending["done_writing"]) and not (sent["closed"] or pending["final"]) and not sent["abort"]
        if name == "done_writing_pending":
            return self.pending["done_writing"] and self._guard("done_writing_only")
        if name == "released_and_closed_sent":
            return self.released and (self.sent["closed"] or self.sent["abort"])
        if name == "released":
            return self.released
        if name == "released_and_abort_sent":
            return self.released and self.sent["abort"]
        if name == "close_pending":
            return self.pending["final"] and not (self.sent["closed"] or self.sent["abort"])
        raise KeyError(name)

    def input(self, event: str, now: float) -> None:
        """Feed the close machine; performs the rule's actions and reports the new state."""
        rule = step("connection", CONN_TABLE, self.state, event, self._guard)
        self._final_abort_out = False
        for action in rule.actions:
            if action == "send_final":
                self._send_flag("final", now)
            elif action == "send_final_now":
                self._send_flag("final", now, immediate=True)
            elif action == "send_abort":
                self._send_flag("abort", now, immediate=True)
            elif action == "send_done_writing":
                self._send_flag("done_writing", now)
            elif action == "send_done_writing_now":
                self._send_flag("done_writing", now, immediate=True)
            elif action == "shutdown_tcp_with_final":  # before send_final, which may send it at once
                self.tcp_shutdown_with = "final"
            elif action == "shutdown_tcp_with_done_writing":  # before send_done_writing, likewise
                self.tcp_shutdown_with = "done_writing"
            elif action == "reset_tcp":
                self.io.conn_tcp_reset(self.id)
        if rule.next is not None and rule.next != self.state:
            self.set_state(rule.next, now, event)
        if self._final_abort_out and event != "closed_sent":
            # our final flag went out at once as an abort: the table decides whether that ends
            # the socket, as it does when a final that waited for the sndbuf goes out
            self._final_abort_out = False
            self.input("closed_sent", now)

    def set_state(self, state: SmcState, now: float, cause: str) -> None:
        old, self.state = self.state, state
        self.emit(now, "conn.state", old=old.name, new=state.name, cause=cause)
        if state == SmcState.CLOSED:
            self.on_closed(self, now)

    def unread(self) -> int:
        """Received bytes the application has not read: in our RMB, and what the runtime's
        streams pulled out of it ahead of the application (``app_unread``)."""
        return self.bytes_to_rcv + self.app_unread

    def _final_flag(self) -> str:
        """smc_close_final: an abort when received data remains unread, else a close."""
        return "abort" if self.unread() > 0 else "closed"

    def _send_flag(self, flag: str, now: float, immediate: bool = False) -> None:
        """``flag`` is "done_writing", "final" (decided when it goes out) or "abort".
        Without ``immediate`` it waits for the sndbuf to drain (smc_close_stream_wait), at
        most ``timeouts.close_flush``; with it, it goes now and takes along what waited."""
        if self.mode != "SMCR" or self.sent["abort"]:
            return
        if flag == "done_writing" and self.sent["done_writing"] or flag == "final" and (self.sent["closed"] or self.pending["final"] and not immediate):
            return
        if immediate or (self._drained() and not self.pending_any):
            self._send_now(flag, now)
        else:
            self.pending[flag] = self.pending_any = True
            self.io.arm_timer(("flush", self.id), now + self.ctx.config.timeouts.close_flush)

    def _send_now(self, flag: str, now: float) -> None:
        """One CDC with ``flag`` and every flag that waited (they go along, as a kernel whose
        wait ended would send them). An abort goes alone: smc_close_abort sets only
        peer_conn_abort, and what waited for the sndbuf (set by smc_close_final or
        smc_close_wr only after their wait) is never sent."""
        if flag == "abort":
            flags = ["abort"]
        else:
            flags = [f for f in CLOSE_PENDING if self.pending[f]] + ([flag] if flag not in CLOSE_PENDING or not self.pending[flag] else [])
        if self.pending_any:
            self.pending = {f: False for f in CLOSE_PENDING}
            self.pending_any = False
            self.io.cancel_timer(("flush", self.id))
        for f in flags:
            sent = self._final_flag() if f == "final" else f
            self.sent[sent] = True
            if f == "final" and sent == "abort":
                self._final_abort_out = True  # input() follows with closed_sent
        self.send_cdc(now)  # its state flags are what ``sent`` says
        self._flags_out(flags)

    def _flags_out(self, flags) -> None:
        """Close flags went out: the TCP connection's FIN follows the one it waits for, as
        the kernel shuts its clcsock down once smc_close_final (smc_close_active from
        ACTIVE) or smc_close_wr (smc_shutdown) has sent its CDC; the side that ends first
        then sends the first FIN, and the peer, closing its TCP side last, needs no TIME_WAIT."""
        if self.tcp_shutdown_with in flags:
            self.tcp_shutdown_with = None
            self.io.conn_tcp_shutdown(self.id)

    def _drained(self) -> bool:
        return self.tx_sent == self.tx_prep

    def flush_timeout(self, now: float) -> None:
        """The close wait is over (smc_close_stream_wait's SMC_MAX_STREAM_WAIT_TIMEOUT): what
        waited goes now, whether or not the sndbuf drained; the close stays a close (not an
        abort), as the kernel's smc_close_final sends it after the wait. What is still unsent
        follows when the peer makes room, as smc_tx_pending would."""
        if not self.pending_any:
            return
        unsent = curs.diff(self.tx_sent, self.tx_prep, self.sndbuf_size)
        if self.ctx.bus.active:
            self.emit(now, "conn.cursor", side="tx", cause=f"close wait over, {unsent} bytes not yet sent", sent=_c(self.tx_sent),
                      fin=_c(self.tx_fin), prod=_c(self.tx_prod))  # fmt: skip
        self._flush_pending(now, force=True)

    def _flush_pending(self, now: float, force: bool = False) -> None:
        if not force and not self._drained():
            return
        self.io.cancel_timer(("flush", self.id))
        out = [f for f in CLOSE_PENDING if self.pending[f]]
        for flag in out:
            self.pending[flag] = False
            sent = self._final_flag() if flag == "final" else flag
            if not self.sent[sent]:
                self.sent[sent] = True
                self.send_cdc(now)  # its state flags are what ``sent`` says
        self.pending_any = False
        self._flags_out(out)
        if "final" in out:
            self.input("closed_sent", now)

    # ------------------------------------------------------------------ application side

    def send_space(self) -> int:
        return self.sndbuf_size - curs.diff(self.tx_fin, self.tx_prep, self.sndbuf_size)

    def app_send(self, data: bytes | memoryview, now: float, urgent: bool = False) -> int:
        """Copy what fits into the sndbuf and start a transmit step; returns the bytes taken.
        ``urgent`` is send(MSG_OOB) (smc_tx_sendmsg): the last byte of ``data`` is urgent;
        once all of it is in the sndbuf nothing more is taken (0 is returned) until the
        peer has consumed everything we wrote, as the kernel's sender waits."""
        if self.peer_abort:  # smc_tx_sendmsg: sk_err is ECONNRESET once the peer's abort arrived
            raise ConnectionResetError(f"connection {self.id}: {PEER_ABORT_ERROR}")
        if self.state not in (SmcState.ACTIVE, SmcState.APPCLOSEWAIT1) or self.sent["done_writing"] or self.pending["done_writing"]:
            raise BrokenPipeError(f"connection {self.id} cannot send in state {self.state.name}")
        if self.peer_closed or self.peer_abort:  # smc_tx_sendmsg: any close received -> ECONNRESET
            raise ConnectionResetError(f"connection {self.id}: the peer closed the connection")
        if urgent and len(data):
            self.urg_data_pending = True
        if self.urg_tx_pend:
            return 0
        n = min(len(data), self.send_space())
        if n == 0:
            return 0
        size, off = self.sndbuf_size, self.tx_prep.count
        first = min(n, size - off)
        self.sndbuf.buf[off : off + first] = data[:first]
        if n > first:
            self.sndbuf.buf[0 : n - first] = data[first:n]
        self.tx_prep = curs.add(self.tx_prep, n, size)
        if urgent and n == len(data):
            self.urg_tx_pend = True
            self.emit(now, "conn.urgent", dir="tx", event="queued", byte=data[n - 1], inline=False)
        if not self._should_cork():
            self.tx_step(now)
        return n

    def _should_cork(self) -> bool:
        """smc_should_autocork: while a CDC is in flight, hold back up to min(64K, sndbuf/2)
        prepared bytes; its completion sends them, in one RDMA WRITE with what came since."""
        if not self.cdc_pend:
            return False
        return curs.diff(self.tx_sent, self.tx_prep, self.sndbuf.size) <= min(AUTOCORKING_SIZE, self.sndbuf.size >> 1)

    def readable_bytes(self) -> int:
        return self.bytes_to_rcv

    @property
    def aborted(self) -> bool:
        """An abort went either way: nothing more will be delivered."""
        return self.sent["abort"] or self.peer_abort

    @property
    def eof(self) -> bool:
        """No more data will come: the peer is done writing, closed or aborted, and all is read."""
        return self.bytes_to_rcv == 0 and (self.peer_done_writing or self.peer_closed or self.peer_abort or self.state == SmcState.CLOSED)

    def app_recv(self, max_bytes: int, now: float) -> bytes:
        n = max_bytes if max_bytes < self.bytes_to_rcv else self.bytes_to_rcv
        urgent = self.urg_state == URG_VALID or self.urg_rx_skip_pend
        if urgent:
            n = self._urgent_clip(n, now)
        if n <= 0:
            return b""
        rmb = self.rmb
        size, (wrap, off) = rmb.size, self.cons
        first = size - off
        if n < first:
            out = rmb.buf[off : off + n].tobytes()
            self.cons = Cursor(wrap, off + n)
        else:  # up to the end of the ring and on from its start, copied once (join sizes the result first)
            out = rmb.buf[off:].tobytes() if n == first else b"".join((rmb.buf[off:], rmb.buf[: n - first]))
            self.cons = Cursor((wrap + 1) & 0xFFFF, n - first)
        self.bytes_to_rcv -= n
        self.bytes_received += n
        self.reads += 1
        bus = self.ctx.bus
        if bus.data_active:
            if bus.data_events:
                self.emit_fields(now, "conn.cursor", {"side": "rx", "cons": _c(self.cons), "prod": _c(self.rx_prod), "bytes_to_rcv": self.bytes_to_rcv})
            bus.touch(self)
        if urgent:
            self._consumer_moved(now)
        else:
            self._maybe_update_consumer(now)
        return out

    # ------------------------------------------------------------------ urgent data (receive)

    def _urgent_clip(self, n: int, now: float) -> int:
        """How much of ``n`` a read may take with an urgent byte ahead: it stops before the
        byte (smc_rx_recvmsg stops at the urgent mark); out of line, the byte is skipped when
        the reader stands on it (smc_rx_recvmsg_data_available, smc_rx_update_consumer);
        inline it is read alone."""
        size = self.rmb_size
        if self.urg_curs.count:
            mark = Cursor(self.urg_curs.wrap, self.urg_curs.count - 1)
        else:
            mark = Cursor((self.urg_curs.wrap - 1) & 0xFFFF, size - 1)
        dist = curs.comp(self.cons, mark, size)  # bytes before the urgent byte
        if dist < 0:
            return n
        if self.urg_inline:
            return min(n, dist) if dist else min(n, 1)
        if dist == 0:
            self._consumer_moved(now)  # the reader stands on the urgent byte: skipped now
            return n
        return min(n, dist)

    def _consumer_moved(self, now: float) -> None:
        """smc_rx_update_consumer: the consumer cursor moved (or a read found nothing): skip
        the urgent byte when the reader reaches it, and tell the peer at once (force), for a
        kernel sender waits for that update before it sends anything after urgent data."""
        force = False
        if self.urg_state == URG_VALID or self.urg_rx_skip_pend:
            size = self.rmb_size
            diff = curs.comp(self.cons, self.urg_curs, size)
            if self.urg_inline:
                if diff == 0:
                    force, self.urg_state = True, URG_READ
            elif diff == 1:
                force = True
                self.cons = curs.add(self.cons, 1, size)
                self.urg_rx_skip_pend = False
                self.emit(now, "conn.urgent", dir="rx", event="skipped", byte=self.urg_rx_byte, cursor=_c(self.urg_curs), inline=False)
            elif diff < -1:
                self.urg_state = URG_READ
        self._maybe_update_consumer(now, force)

    def app_recv_urgent(self, now: float, peek: bool = False) -> int | None:
        """recv(MSG_OOB) (smc_rx_recv_urg): the urgent byte, or None when there is none to
        read (the kernel's EINVAL: none arrived, it was read, the reader went past it, or
        the urgent byte is inline). Reading it out of band also skips it in the stream once
        the reader gets there."""
        if self.urg_inline or self.urg_state != URG_VALID:
            return None
        if not peek:
            self.urg_state = URG_READ
            ahead = curs.comp(self.cons, self.urg_curs, self.rmb_size)
            # > 1: the stream still has bytes before it (smc_rx_recv_urg). The kernel leaves a
            # byte it is standing on (1) in the ring, and a kernel sender then waits for ever
            # (docs/kernel-fidelity.md); we skip it now
            if ahead >= 1:
                self.urg_rx_skip_pend = True
            self.emit(now, "conn.urgent", dir="rx", event="read", byte=self.urg_rx_byte, cursor=_c(self.urg_curs), inline=False)
            self._consumer_moved(now)
        return self.urg_rx_byte

    def set_oob_inline(self, inline: bool) -> None:
        """SO_OOBINLINE: the urgent byte stays in the stream (a read stops before it, and
        the next read returns it). Set while an urgent byte waits ahead of the reader, it
        moves that byte into (or out of) the data to receive."""
        inline = bool(inline)
        if inline != self.urg_inline and self.urg_state == URG_VALID and curs.comp(self.cons, self.urg_curs, self.rmb_size) >= 1:
            self.bytes_to_rcv += 1 if inline else -1
            self.urg_rx_skip_pend = False
        self.urg_inline = inline

    def _maybe_update_consumer(self, now: float, force: bool = False) -> None:
        """smc_tx_consumer_update: tell the peer we read, when it matters (``force``: now)."""
        if self.cons == self.cons_confirmed and not self.cons_update_requested and not force:
            return
        if self.mode != "SMCR" or self.state in (SmcState.CLOSED, SmcState.PEERABORTWAIT) or self.sent["abort"] or self.peer_abort:
            return
        if force:
            self.send_cdc(now)
            return
        size = self.rmb_size
        consumed = curs.diff(self.cons_confirmed, self.cons, size)
        if consumed == 0 and not self.cons_update_requested:
            return
        limit = max(size // 10, SOCK_MIN_SNDBUF_HALF)
        peer_view_free = size - curs.diff(self.cons_confirmed, self.rx_prod, size)
        if self.cons_update_requested or (consumed > limit and (peer_view_free <= self.rmb_size // 2 or self.peer_write_blocked)):
            self.send_cdc(now)

    def app_shutdown_wr(self, now: float) -> None:
        self.input("app_shutdown_wr", now)

    def app_close(self, now: float, unread: int = 0) -> None:
        """close(): ``unread`` is what the runtime took out of the RMB ahead of the
        application and the application never read; with what the RMB still holds it makes
        the final flag an abort (smc_close_final)."""
        self.released = True
        self.app_unread = max(0, unread)
        self.input("app_close", now)

    # ------------------------------------------------------------------ transmit

    def tx_step(self, now: float) -> None:
        """Write what the peer's RMB can take and announce it (smc_tx_rdma_writes)."""
        link = self.link
        if self.mode != "SMCR" or link is None or self.sent["abort"] or self.peer_abort or self.sndbuf is None:
            return  # nothing more after the peer's abort (smc_tx_sndbuf_nonempty: peer_conn_abort)
        sndbuf_size = self.sndbuf.size
        while True:
            to_send = curs.diff(self.tx_sent, self.tx_prep, sndbuf_size)
            if to_send == 0:
                self.write_blocked = False
                break
            if self.peer_rmbe_space <= 0:
                # the last data CDC said write-blocked; the peer updates its consumer cursor as it reads
                if not self.write_blocked:
                    self.write_blocked = True
                    self.rmb_blocked += 1
                    bus = self.ctx.bus
                    if bus.data_active:
                        if bus.data_events:
                            self.emit_fields(now, "conn.rmb", {"write_blocked": True, "peer_rmbe_space": 0, "pending": to_send})
                        bus.touch(self)
                break
            if not link.has_room(3):
                link.wait_for_room(self)
                break
            self.write_blocked = to_send >= self.peer_rmbe_space
            n = min(to_send, self.peer_rmbe_space)
            if self.urg_tx_pend and n == to_send:
                self.urg_data_present = True  # this CDC carries the urgent byte (smc_tx_rdma_writes)
            self._rdma_writes(n, now)
            self.tx_prod = curs.add(self.tx_prod, n, self.peer_size)
            self.tx_sent = curs.add(self.tx_sent, n, sndbuf_size)
            self.peer_rmbe_space -= n
            self.bytes_sent += n
            if self.send_cdc(now) and self.urg_data_present:
                self.urg_data_pending = self.urg_data_present = False
                self.emit(now, "conn.urgent", dir="tx", event="sent", cursor=_c(self.tx_prod), inline=False)
        if self.pending_any:
            self._flush_pending(now)

    def _rdma_writes(self, n: int, now: float) -> None:
        """At most two WRITEs, split where the peer's ring wraps; each source may wrap in the sndbuf."""
        dst = self.tx_prod.count
        src = self.tx_sent.count
        lkey_handle = self.sndbuf.on(self.link.device).handle
        rkey, vaddr = self.peer_rtoken[self.link.link_id]
        chunks = [(dst, min(n, self.peer_size - dst))]
        if chunks[0][1] < n:
            chunks.append((0, n - chunks[0][1]))
        for dst_off, length in chunks:
            sges = []
            left = length
            while left:
                take = min(left, self.sndbuf_size - src)
                sges.append((lkey_handle, src, take))
                src = (src + take) % self.sndbuf_size
                left -= take
            self.link.post_write(sges, vaddr + self.tx_off + dst_off, rkey, now)
            self.rdma_writes += 1
            if self.ctx.bus.data_events:  # a sampler is told by send_cdc, which follows
                self.emit_fields(now, "rdma.write", {"offset": dst_off, "length": length, "rkey": rkey})

    def send_cdc(self, now: float) -> bool:
        """One CDC with the current producer and consumer cursors (and flags)."""
        if self.link is None:
            return False
        self.tx_seq = seq = (self.tx_seq + 1) & 0xFFFF
        token, prod, cons, sent = self.peer_token, self.tx_prod, self.cons, self.sent
        state = (0x80 if sent["done_writing"] else 0) | (0x40 if sent["closed"] else 0) | (0x20 if sent["abort"] else 0)
        prod_flags = (0x80 if self.write_blocked else 0) | (0x40 if self.urg_data_pending else 0) | (0x20 if self.urg_data_present else 0)
        payload = cdc_pack(seq, token, prod, cons, prod_flags, state)
        marks = (self.tx_sent, prod, seq, self.tx_epoch)
        if not self.link.post_cdc_bytes(payload, lambda ok, t: self.cdc_completed(marks, ok, t), now):
            self.tx_seq = (seq - 1) & 0xFFFF  # the kernel rolls back when the post fails
            return False
        if curs.ahead(prod, self.tx_prod_max):
            self.tx_prod_max = prod
        self.cons_confirmed = cons
        self.cons_update_requested = False
        self.cdc_sent += 1
        self.cdc_pend += 1
        bus = self.ctx.bus
        if bus.data_active:
            # a CDC that closes, aborts or carries urgent data is an event for any listener
            if bus.data_events or (state or prod_flags & MARKING_PROD_FLAGS) and bus.active:
                # the event's fields from the values packed, without a CdcMessage
                self.emit_fields(now, "cdc.msg", _cdc_fields_of(seq, token, prod, cons, prod_flags, state, payload, "tx"))
                self.emit_fields(now, "conn.cursor", {"side": "tx", "prod": _c(prod), "cons": _c(cons), "sent": _c(self.tx_sent), "fin": _c(self.tx_fin)})
            bus.touch(self)
        return True

    def cdc_completed(self, marks: tuple[Cursor, Cursor, int, int], ok: bool, now: float) -> None:
        """The send of a CDC completed: release the sndbuf up to what it announced."""
        sent, prod, seq, epoch = marks
        if epoch != self.tx_epoch:
            return  # from a link we left: what it carried is being sent again
        if self.cdc_pend:
            self.cdc_pend -= 1
        if not ok:
            return
        # the kernel's tx_cdc_seq_fin is the pending send's ctrl_seq, taken before the CDC got
        # its number: one less than the completed CDC's seqno (a validation names that)
        self.tx_seq_fin = (seq - 1) & 0xFFFF
        if curs.ahead(sent, self.tx_fin):
            self.tx_fin = sent
            self.tx_prod_fin = prod
            self.io.conn_writable(self.id)
        if self.tx_sent != self.tx_prep:  # smc_tx_pending: what autocorking held back goes now
            self.tx_step(now)

    # ------------------------------------------------------------------ receive

    def on_cdc(self, msg: CdcMessage, now: float, data: bytes | None = None) -> None:
        """A CDC for this connection; ``data``: the bytes it came in (its event shows them)."""
        if self.mode != "SMCR":
            # The peer may be done with its handshake and writing while our last CLC step is
            # still on its way over TCP: keep its CDCs until we know its RMB, then replay them.
            if self.rmb is not None and self.mode == "INIT":
                self.early_cdcs.append(msg)
            return
        self.cdc_received += 1
        bus = self.ctx.bus
        if bus.data_active:
            bus.touch(self)
        # a CDC that closes, aborts or carries urgent data is an event for any listener
        if bus.data_events or bus.active and (msg.prod_flags & MARKING_PROD_FLAGS or msg.conn_state_flags):
            if data is not None and len(data) >= CDC_LEN:  # the bytes as received, flags read from them
                raw = bytes(data[:CDC_LEN])
                self.emit_fields(now, "cdc.msg", _cdc_fields_of(msg.seqno, msg.token, msg.prod, msg.cons, raw[24], raw[25], raw, "rx"))
            else:
                self.emit_fields(now, "cdc.msg", _cdc_fields(msg, "rx"))
        if msg.failover_validation:
            # the peer's last completed CDC must be one we saw; otherwise we are out of sync
            if self.rx_seq_seen and _s16(self.rx_seq - msg.seqno) < 0:
                self.violation(now, f"failover validation seqno {msg.seqno} is beyond the last one received ({self.rx_seq})")
            return
        if self.rx_seq_seen and _s16(msg.seqno - self.rx_seq) < 0:
            return  # an older CDC: dropped, as the kernel does
        self.rx_seq, self.rx_seq_seen = msg.seqno, True
        if not curs.valid(msg.prod, self.rmb_size) or not curs.valid(msg.cons, self.peer_size):
            self.violation(now, f"cursor out of range: prod {_c(msg.prod)} (RMB {self.rmb_size}), cons {_c(msg.cons)} (peer RMB {self.peer_size})")
            return
        new_data = 0
        if curs.ahead(msg.prod, self.rx_prod):
            new_data = curs.diff(self.rx_prod, msg.prod, self.rmb_size)
            if (
                self.bytes_to_rcv + new_data > self.rmb_size
                or msg.prod.wrap != self.rx_prod.wrap
                and curs.diff(self.cons, msg.prod, self.rmb_size) > self.rmb_size
            ):
                self.violation(now, f"producer cursor {_c(msg.prod)} claims {new_data} new bytes, more than the RMB holds")
                return
            self.rx_prod = msg.prod
            if msg.urg_data_present:
                new_data = self._urgent_arrived(msg.prod, new_data, now)
            self.bytes_to_rcv += new_data
        elif msg.urg_data_pending:
            self.urg_state = URG_NOTYET  # smc_cdc_msg_recv_action: urgent data announced, not here yet
        freed = 0
        if curs.ahead(msg.cons, self.rx_cons):
            if curs.ahead(msg.cons, self.tx_prod_max):
                self.violation(now, f"consumer cursor {_c(msg.cons)} is beyond what we wrote ({_c(self.tx_prod_max)})")
                return
            if curs.ahead(msg.cons, self.tx_prod):
                self._skip_consumed(msg.cons)
            freed = curs.diff(self.rx_cons, msg.cons, self.peer_size)
            self.rx_cons = msg.cons
            self.peer_rmbe_space = self.peer_size - curs.diff(self.rx_cons, self.tx_prod, self.peer_size)
        self.peer_write_blocked = msg.write_blocked
        self.cons_update_requested = self.cons_update_requested or msg.cons_curs_upd_req
        if new_data or freed:
            self.rx_moves += 1
            if bus.data_events:  # the record straight away: the data path's events come by the hundred thousand
                self.emit_fields(now, "conn.cursor", {"side": "rx", "prod": _c(self.rx_prod), "cons": _c(self.rx_cons), "bytes_to_rcv": self.bytes_to_rcv,
                                                      "peer_rmbe_space": self.peer_rmbe_space})  # fmt: skip
                self.emit_fields(now, "conn.rmb", {"fill": self.bytes_to_rcv, "size": self.rmb_size, "write_blocked": self.write_blocked,
                                                   "peer_write_blocked": msg.write_blocked})  # fmt: skip
        if new_data:
            self.io.conn_readable(self.id)
        if freed:
            self.tx_step(now)  # first, as smc_cdc_msg_recv_action: the rest of an urgent send goes out before the check below
            if self.urg_tx_pend and self.peer_rmbe_space == self.peer_size:
                # the peer consumed everything, the urgent byte included: sending may go on
                self.urg_tx_pend = False
                self.emit(now, "conn.urgent", dir="tx", event="confirmed", cursor=_c(self.rx_cons), inline=False)
                self.io.conn_writable(self.id)
        elif msg.urg_data_pending:
            self.tx_step(now)  # smc_tx_pending on urg_data_pending, as the kernel does
        if self.cons_update_requested or (msg.write_blocked and not new_data):
            self._maybe_update_consumer(now)
        if msg.peer_conn_abort and not self.peer_abort:
            self.peer_abort = True
            self.error = PEER_ABORT_ERROR
            self.emit(now, "conn.error", reason=self.error)
            self.input("peer_abort", now)
            self.io.conn_readable(self.id)
        elif msg.peer_conn_closed and not self.peer_closed:
            self.peer_closed = True
            self.input("peer_closed", now)
            self.io.conn_readable(self.id)
            self.io.conn_writable(self.id)  # a blocked writer learns it can no longer send
        elif msg.peer_done_writing and not self.peer_done_writing:
            self.peer_done_writing = True
            self.input("peer_done_writing", now)
            self.io.conn_readable(self.id)

    def _urgent_arrived(self, prod: Cursor, new_data: int, now: float) -> int:
        """smc_cdc_handle_urg_data_arrival: the last byte this CDC brought is urgent. It is
        kept (urg_rx_byte) and, unless inline, not counted as data to receive. Returns the
        bytes to count."""
        self.urg_curs = prod
        self.urg_state = URG_VALID
        size = self.rmb_size
        self.urg_rx_byte = self.rmb.buf[(prod.count or size) - 1]
        self.urg_rx_count += 1
        self.emit(now, "conn.urgent", dir="rx", event="arrived", byte=self.urg_rx_byte, cursor=_c(prod), inline=self.urg_inline)
        self.io.conn_readable(self.id)  # the kernel's sk_send_sigurg; a reader waiting for it wakes
        return new_data if self.urg_inline else new_data - 1

    # ------------------------------------------------------------------ failover

    def switch_link(self, to, now: float, on_validated) -> bool:
        """smc_switch_cursor: continue on link ``to``. What the old link may not have
        delivered is written again: the send cursor goes back to the last completed CDC
        (skipping forward what the peer has already read), a failover-validation CDC
        carries the kernel's tx_cdc_seq_fin (one before the last completed CDC's number),
        then data and cursors follow.
        Returns True when the validation CDC went out."""
        self.link = to
        self.tx_epoch += 1
        self.cdc_pend = 0  # the old link's CDCs will not complete
        if self.mode != "SMCR" or self.state == SmcState.CLOSED:
            return False
        if to.link_id not in self.peer_rtoken:
            self.abort(now, f"failover to link {to.link_id}: the peer never gave its RMB key on that link")
            return False
        rewound = curs.diff(self.tx_fin, self.tx_sent, self.sndbuf_size)
        self.tx_sent, self.tx_prod = self.tx_fin, self.tx_prod_fin
        if curs.ahead(self.rx_cons, self.tx_prod):
            rewound -= self._skip_consumed(self.rx_cons)
        self.peer_rmbe_space = self.peer_size - curs.diff(self.rx_cons, self.tx_prod, self.peer_size)
        self.bytes_sent -= rewound
        if self.ctx.bus.active:
            self.emit(now, "conn.cursor", side="tx", cause="failover", rewound=rewound, prod=_c(self.tx_prod), sent=_c(self.tx_sent),
                      fin=_c(self.tx_fin), peer_rmbe_space=self.peer_rmbe_space)  # fmt: skip
        validation = CdcMessage(seqno=self.tx_seq_fin, token=self.peer_token, prod=Cursor(), cons=Cursor(), failover_validation=True)
        if not to.post_cdc(validation, on_validated, now):
            return False
        if self.ctx.bus.active:
            self.emit_fields(now, "cdc.msg", _cdc_fields(validation, "tx"))
        seq = self.tx_seq
        self.tx_step(now)
        if self.tx_seq == seq:  # nothing to write: still re-announce cursors and close flags the old link may have lost
            self.send_cdc(now)
        return True

    def _skip_consumed(self, cons: Cursor) -> int:
        """The peer read beyond our producer cursor (a CDC whose completion we never saw
        reached it): skip what it read instead of writing it again."""
        skip = curs.diff(self.tx_prod, cons, self.peer_size)
        self.tx_prod = cons
        self.tx_sent = curs.add(self.tx_sent, skip, self.sndbuf_size)
        return skip

    def violation(self, now: float, what: str) -> None:
        """The peer broke the protocol: abort, as the kernel does."""
        self.error = f"protocol violation by the peer: {what}"
        self.emit(now, "conn.error", reason=self.error)
        self.abort(now, self.error)

    def abort(self, now: float, reason: str) -> None:
        if self.state in (SmcState.CLOSED, SmcState.PEERABORTWAIT):
            return
        self.error = self.error or reason
        if self.mode == "SMCR":
            self.input("abort", now)
            self.abort_done(now)
        else:
            self.set_state(SmcState.CLOSED, now, "abort")

    def abort_done(self, now: float) -> None:
        if self.state == SmcState.PEERABORTWAIT:
            self.input("abort_done", now)


def _s16(v: int) -> int:
    v &= 0xFFFF
    return v - 0x10000 if v & 0x8000 else v
