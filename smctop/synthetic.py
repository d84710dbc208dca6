"""A synthetic, deterministic SMC-R topology that produces the events the real stack would,
with the times it is given: for the TUI's tests and benchmark, where the real stack's timing
would make every run different.

``alpha`` (client) and ``beta`` (server) share a link group with two links (SYM) and
``conns`` SMC-R connections between them; ``alpha`` also opens ``fallbacks`` connections a
second to ``gamma``, which declines them (DIFFPREFIX unless told otherwise), so they fall
back to TCP. :meth:`step` produces one second of traffic; :meth:`fail_link` and
:meth:`restore_link` take beta's first link down (failover to the second link) and back.
Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from stack.events import Event
from stack.wire import codes

DIFFPREFIX = 0x03070000
PEERDECL = 0x05000000
A_LGR, B_LGR = "00a1a100", "00b2b200"


def _c(pos: int, size: int) -> str:
    return f"{(pos // size) & 0xFFFF}:{pos % size}"


class SyntheticStack:
    def __init__(self, conns: int = 3, *, fallbacks: int = 1, rmb_size: int = 256 << 10, rate: int = 1 << 20,
                 full: bool = True) -> None:  # fmt: skip
        self.n = conns
        self.fallbacks = fallbacks
        self.rmb_size = rmb_size
        self.rate = rate  # bytes a second per connection, each way
        self.full = full  # the whole message mix (CDC, RDMA WRITE, cursors, RMB) or one update per connection end
        self.traffic = True
        self.decline: int | None = None  # what gamma declines with (None: DIFFPREFIX)
        self.link_up = True
        self.active_link = 1
        self.next_link = 3
        self.pos: dict[int, int] = {}
        self.seq: dict[int, int] = {}
        self.fb_id = 0
        self.started = False

    # ------------------------------------------------------------------ set-up

    def setup(self, t: float) -> list[Event]:
        ev: list[Event] = []
        for host, lgr, role in (("alpha", A_LGR, "client"), ("beta", B_LGR, "server")):
            ev.append(Event(t, "lgr.state", host, lgr, fields={"old": "NONE", "new": "NONE", "cause": "created", "role": role, "version": 2, "crit": True}))
            for link, dev in ((1, "30"), (2, "31")):
                me = "1" if host == "alpha" else "2"
                ev.append(Event(t, "link.event", host, lgr, link, fields={"event": "added", "qpn": 0x100 * int(me) + link, "device": f"127.{dev}.0.{me}"}))
                ev.append(Event(t, "link.state", host, lgr, link, fields={"old": "LINK_UNUSED", "new": "LINK_ACTIVE", "cause": "confirm"}))
                ev.append(Event(t, "llc.msg", host, lgr, link, fields={"dir": "tx", "type": "LLC CONFIRM LINK v2" if link == 1 else "LLC ADD LINK v2"}))
            ev.append(Event(t, "lgr.state", host, lgr, fields={"old": "NONE", "new": "SYM", "cause": "add link", "crit": False}))
        for i in range(1, self.n + 1):
            port = 40000 + i
            for host, lgr, role, local, peer in (("alpha", A_LGR, "client", f"127.30.0.1:{port}", "127.30.0.2:5000"),
                                                 ("beta", B_LGR, "server", "127.30.0.2:5000", f"127.30.0.1:{port}")):  # fmt: skip
                ev.append(Event(t, "conn.open", host, conn=i, fields={"role": role, "local": local, "peer": peer}))
                ev.append(Event(t, "clc.msg", host, conn=i, fields={"dir": "tx", "type": "Proposal" if role == "client" else "Accept", "version": 2}))
                mode = {"mode": "SMCR", "version": 2, "first_contact": i == 1, "token": 0x1000 + i,
                        "rmb_size": self.rmb_size, "peer_rmb_size": self.rmb_size, "handshake_ms": 2.0 + i % 5}  # fmt: skip
                ev.append(Event(t, "conn.mode", host, lgr, 1, i, mode))
                ev.append(Event(t, "conn.state", host, lgr, 1, i, {"old": "INIT", "new": "ACTIVE", "cause": "handshake_done"}))
            self.pos[i] = 0
            self.seq[i] = 0
        self.started = True
        return ev

    def host_info(self, t: float) -> list[dict]:
        """What each host's snapshot says of itself (devices and their counters, listening
        sockets, UEIDs, smcr stats counters) at ``t``, for the Devices and Stats views."""
        secs = max(int(t) - 1000, 0)
        out = []
        for host, me, devs, listen in (("alpha", "1", ("30", "31"), False), ("beta", "2", ("30", "31"), True), ("gamma", "3", ("30",), True)):
            frames = secs * (self.n * 40 if host != "gamma" else 0)
            down = host == "beta" and not self.link_up
            out.append({
                "host": host, "t": t,
                "stats": {"smc_client": self.n if host == "alpha" else 0, "smc_server": self.n if host == "beta" else 0,
                          "fallback_client": self.fb_id if host == "alpha" else 0, "fallback_server": self.fb_id if host == "gamma" else 0,
                          "handshake_errors": 0, "links_added": 2 if host != "gamma" else 0},
                "devices": [{"name": f"127.{d}.0.{me}", "up": not (down and d == "30"), "mtu": 5} for d in devs],
                "rdma": {f"127.{d}.0.{me}": {"tx_frames": frames if d == "30" else 2, "rx_frames": frames if d == "30" else 2, "tx_dropped": 0,
                                            "rx_dropped": 0, "icrc_errors": 0, "bad_frames": 0, "psn_out_of_window": 0, "suspect_ignored": 0,
                                            "port_up": not (down and d == "30"), "engine": "python"} for d in devs},
                "listeners": [{"local": f"127.30.0.{me}:5000", "smc": True}] if listen else [],
                "ueids": ["SMCTOP"] if host != "gamma" else [],
            })  # fmt: skip
        return out

    # ------------------------------------------------------------------ one second

    def step(self, t: float) -> list[Event]:
        ev: list[Event] = []
        if self.traffic:
            link = self.active_link
            size = self.rmb_size
            for i in range(1, self.n + 1):
                n = self.rate + (i * 4099) % 8192  # each connection a little different, deterministically
                old = self.pos[i]
                pos = self.pos[i] = old + n
                fill = (i * 7919 + int(t) * 104729) % (size // 2)
                if self.full:
                    self.seq[i] += 1
                    prod = _c(pos, size)
                    ev.append(Event(t, "rdma.write", "alpha", A_LGR, link, i, {"offset": old % size, "length": n, "rkey": 0x5000 + i}))
                    ev.append(
                        Event(
                            t,
                            "cdc.msg",
                            "alpha",
                            A_LGR,
                            link,
                            i,
                            {"dir": "tx", "seqno": self.seq[i], "token": 0x2000 + i, "prod": prod, "cons": "0:0", "flags": []},
                        )
                    )
                    ev.append(Event(t, "conn.cursor", "alpha", A_LGR, link, i, {"side": "tx", "prod": prod, "cons": "0:0", "sent": prod, "fin": prod}))
                    ev.append(
                        Event(
                            t,
                            "cdc.msg",
                            "beta",
                            B_LGR,
                            link,
                            i,
                            {"dir": "rx", "seqno": self.seq[i], "token": 0x2000 + i, "prod": prod, "cons": "0:0", "flags": []},
                        )
                    )
                ev.append(Event(t, "conn.cursor", "beta", B_LGR, link, i, {"side": "rx", "prod": _c(pos, size), "cons": "0:0",
                                                                             "bytes_to_rcv": fill, "peer_rmbe_space": size - fill}))  # fmt: skip
                if not self.full:  # one update for the sending end too: its bytes
                    ev.append(Event(t, "rdma.write", "alpha", A_LGR, link, i, {"offset": old % size, "length": n, "rkey": 0x5000 + i}))
                if self.full:
                    ev.append(Event(t, "conn.rmb", "beta", B_LGR, link, i, {"fill": fill, "size": size, "write_blocked": False, "peer_write_blocked": False}))
        for _ in range(self.fallbacks):
            ev.extend(self._fallback_conn(t))
        return ev

    def _fallback_conn(self, t: float) -> list[Event]:
        self.fb_id += 1
        i = 100000 + self.fb_id
        reason = self.decline or DIFFPREFIX
        port = 50000 + self.fb_id % 10000
        ev = [
            Event(t, "conn.open", "alpha", conn=i, fields={"role": "client", "local": f"127.30.0.1:{port}", "peer": "127.30.0.3:5000"}),
            Event(t, "conn.open", "gamma", conn=i, fields={"role": "server", "local": "127.30.0.3:5000", "peer": f"127.30.0.1:{port}"}),
            Event(
                t,
                "clc.msg",
                "gamma",
                conn=i,
                fields={"dir": "tx", "type": "Decline", "version": 2, "diagnosis": reason, "diagnosis_text": codes.format_reason(reason)},
            ),
            Event(t, "conn.fallback", "gamma", conn=i, fields={"reason": reason, "reason_text": codes.format_reason(reason), "peer_diagnosis": 0}),
            Event(t, "conn.mode", "gamma", conn=i, fields={"mode": "TCP", "reason": reason}),
            Event(t, "conn.fallback", "alpha", conn=i, fields={"reason": PEERDECL, "reason_text": codes.format_reason(PEERDECL), "peer_diagnosis": reason}),
            Event(t, "conn.mode", "alpha", conn=i, fields={"mode": "TCP", "reason": PEERDECL}),
        ]
        for host in ("alpha", "gamma"):
            ev.append(Event(t, "conn.state", host, conn=i, fields={"old": "INIT", "new": "ACTIVE", "cause": "handshake_done"}))
            ev.append(Event(t + 0.5, "conn.state", host, conn=i, fields={"old": "ACTIVE", "new": "CLOSED", "cause": "close"}))
        return ev

    # ------------------------------------------------------------------ faults

    def fail_link(self, t: float) -> list[Event]:
        """beta's first port goes down: link 1 (or the link that replaced it) dies, connections fail over."""
        if not self.link_up:
            return []
        self.link_up = False
        dead = self._first_link
        survivor = 2
        self.active_link = survivor
        ev = [Event(t, "link.event", "beta", fields={"event": "fault", "fault": "port_down", "device": "127.30.0.2"}),
              Event(t, "link.event", "beta", fields={"event": "port_down", "device": "127.30.0.2"})]  # fmt: skip
        for host, lgr, first in (("beta", B_LGR, True), ("alpha", A_LGR, False)):
            if first:
                ev.append(Event(t, "link.event", host, lgr, dead, fields={"event": "down", "reason": "port down on 127.30.0.2"}))
            ev.append(Event(t, "link.event", host, lgr, dead, fields={"event": "failover_begin", "to_link": survivor, "conns": self.n,
                                                                       "reason": "port down on 127.30.0.2"}))  # fmt: skip
            ev.append(Event(t, "link.state", host, lgr, dead, fields={"old": "LINK_ACTIVE", "new": "LINK_INACTIVE", "cause": "port_down"}))
            ev.append(Event(t + 0.004, "link.event", host, lgr, dead, fields={"event": "failover_end", "to_link": survivor, "conns": self.n,
                                                                               "failed": 0, "duration_ms": 4.0}))  # fmt: skip
            ev.append(Event(t + 0.004, "llc.msg", host, lgr, survivor, fields={"dir": "tx" if first else "rx", "type": "LLC DELETE LINK v2"}))
            ev.append(Event(t + 0.005, "link.state", host, lgr, dead, fields={"old": "LINK_INACTIVE", "new": "LINK_UNUSED", "cause": "delete"}))
            ev.append(Event(t + 0.005, "link.event", host, lgr, dead, fields={"event": "deleted"}))
            ev.append(Event(t + 0.005, "lgr.state", host, lgr, fields={"old": "SYM", "new": "SINGLE", "cause": "link deleted", "crit": True}))
        return ev

    @property
    def _first_link(self) -> int:
        return 1 if self.next_link == 3 else self.next_link - 1

    def restore_link(self, t: float) -> list[Event]:
        if self.link_up:
            return []
        self.link_up = True
        new = self.next_link
        self.next_link += 1
        ev = [Event(t, "link.event", "beta", fields={"event": "fault", "fault": "port_up", "device": "127.30.0.2"}),
              Event(t, "link.event", "beta", fields={"event": "port_up", "device": "127.30.0.2"})]  # fmt: skip
        for host, lgr, me in (("beta", B_LGR, "2"), ("alpha", A_LGR, "1")):
            ev.append(Event(t, "link.event", host, lgr, new, fields={"event": "added", "qpn": 0x100 * int(me) + new, "device": f"127.30.0.{me}"}))
            ev.append(Event(t, "llc.msg", host, lgr, 2, fields={"dir": "tx" if host == "beta" else "rx", "type": "LLC ADD LINK v2"}))
            ev.append(Event(t + 0.003, "link.state", host, lgr, new, fields={"old": "LINK_ACTIVATING", "new": "LINK_ACTIVE", "cause": "confirm"}))
            ev.append(Event(t + 0.003, "lgr.state", host, lgr, fields={"old": "SINGLE", "new": "SYM", "cause": "add link", "crit": False}))
        return ev

    def set_traffic(self, on: bool) -> None:
        self.traffic = on

    def set_decline(self, reason: int | None) -> None:
        self.decline = reason
