"""The CLC handshake machine: ``HS_TABLE`` of ``states`` says where each input leads, and
this machine does what the table says.

Each input (a CLC message, a timer, a CONFIRM RKEY or CONFIRM LINK step, a link group
lost, the TCP connection or the application going away) is first examined: what the
message offers and what it would take (``negotiation``, the directory's link groups),
without changing anything. The table's first rule whose guard holds then sets the new
state, and its actions run in order. An action that cannot get what it needs (a QP, a
buffer, room for the peer's rkey) feeds ``setup_failed`` to the machine and the rest of
its rule is skipped. The handshake state (``conn.hs``) is written here and nowhere else.

First contact: the server creates a link group and a link (QP) and sends Accept with the
first-contact bit; after the client's Confirm both QPs are connected and the server sends
LLC CONFIRM LINK on the new link; the response makes the link ACTIVE and the group SINGLE.
Subsequent contact: the server finds the group by peer id and peer GID (v1: and MAC),
the client by peer id and the Accept's QPN; each side registers its RMB and runs
CONFIRM RKEY before its Accept or Confirm. A client that cannot find the group declines
with SYNCERR and the out-of-sync bit. One first contact per peer runs at a time (the
kernel's smc_server_lgr_pending, which serializes every peer): Proposals from that peer
wait for it. A peer is its peer ID and the GID the group is for: a kernel's v2-only
Proposal has an all-zero peer ID, which alone would make all such clients one peer.

The v1 IP prefix comes from the net device of the TCP connection's route (``Netdev``),
which the runtime reads from the OS and hands in with ``start_client``/``start_server``.
"""

from __future__ import annotations

from typing import Callable

from stack.wire import clc, codes
from stack.wire.clc import ClcError
from stack.wire.codes import DECL, DEL, LgrRole, LinkState, SmcState
from stack.wire.fields import clc_fields as _clc_fields

from . import llcflows
from .buffers import RegisteredBuffer
from .connection import SmcConnection
from .directory import Directory
from .link import Link, gid_text
from .linkgroup import LinkGroup
from .negotiation import Netdev, build_proposal, check_accept, check_confirm, choose, confirm_link_limits, server_peer_key
from .ports import Services
from .states import HS_TABLE, Hs, step

_EYECATCHERS = (clc.EYECATCHER_SMCR, clc.EYECATCHER_SMCD)
DONE = (Hs.SMC, Hs.FALLBACK, Hs.FAILED)
_CLC_INPUTS = {clc.Proposal: "proposal", clc.Accept: "accept", clc.Confirm: "confirm", clc.Decline: "decline"}
_WAITING_FOR = {Hs.PROPOSAL_SENT: "Accept", Hs.WAIT_PROPOSAL: "Proposal", Hs.ACCEPT_SENT: "Confirm"}


class Input:
    """One input to the machine: what came, and what examining it found."""

    __slots__ = ("msg", "link", "reason", "version", "diagnosis", "by_peer", "leftover", "error", "peer_smc", "proposal",
                 "choice", "lgr", "first_contact")  # fmt: skip

    def __init__(self, msg=None, *, link: Link | None = None, reason: int = 0, version: int | None = None, diagnosis: int = 0,
                 by_peer: bool = False, leftover: bytes = b"", error: str = "", peer_smc: bool | None = None) -> None:  # fmt: skip
        self.msg = msg
        self.link = link  # the link an LLC message came on
        self.reason = reason  # why to decline or fall back, when the rule does not say
        self.version = version  # the CLC version of a Decline we send (None: the highest the peer used)
        self.diagnosis = diagnosis  # the peer's Decline reason
        self.by_peer = by_peer  # the peer declined (we send no Decline)
        self.leftover = leftover  # bytes that were not CLC: the application's
        self.error = error  # why the connection fails
        self.peer_smc = peer_smc  # the peer's SMC TCP option (None: unknown, in-band)
        self.proposal: clc.Proposal | None = None  # the client's Proposal to send
        self.choice = None  # the server's pick for a Proposal (negotiation.Choice)
        self.lgr: LinkGroup | None = None  # the link group the connection would join
        self.first_contact = False


class Handshake:
    """The CLC handshake of every connection of one host. It gets the host's services, its
    directory, its connections by id (to know which are still open) and its peer id."""

    def __init__(self, ctx: Services, directory: Directory, conns: dict[int, SmcConnection], peer_id: bytes) -> None:
        self.ctx = ctx
        self.directory = directory
        self.conns = conns
        self.peer_id = peer_id
        self.fallback_reasons: dict[tuple[str, int], int] = {}  # (role, reason) -> connections
        self._first_contact: dict[tuple, SmcConnection] = {}  # peer -> the handshake creating its link group
        self._deferred: dict[tuple, list[tuple[SmcConnection, clc.Proposal]]] = {}
        self._netdevs: dict[int, Netdev] = {}  # a server's connections: the route's device, until the handshake ends
        self._guards: dict[str, Callable[[SmcConnection, Input], bool]] = {
            "peer_no_smc": lambda c, i: i.peer_smc is False and c.smc_listener,
            "nothing_to_propose": lambda c, i: i.proposal is None,
            "first_contact_pending": self._first_contact_pending,
            "plain_listener": lambda c, i: not c.smc_listener,
            "declined": lambda c, i: i.reason != 0,
            "unknown_link_group": lambda c, i: i.lgr is None and not i.first_contact,
            "reuse": lambda c, i: i.lgr is not None,
            "first_contact": lambda c, i: i.first_contact,
            "server": lambda c, i: c.role == "server",
            "rmbe_eyecatchers": lambda c, i: not i.msg.rmbe_eyec_flags & 0x03,
            "nothing_received": lambda c, i: not c.clc_buf,
        }
        self._actions: dict[str, Callable[[SmcConnection, Input, float, object], bool | None]] = {
            name[4:]: getattr(self, name) for name in dir(self) if name.startswith("_do_")
        }
        self._plans = self.plans()

    # ------------------------------------------------------------------ the machine

    def input(self, conn: SmcConnection, event: str, now: float, inp: Input | None = None) -> None:
        """Take the table's step for ``event`` and perform its actions (ProtocolError when
        the table has no rule for it in the connection's state)."""
        inp = inp or Input()
        rule = step("handshake", HS_TABLE, conn.hs, event, lambda g: self._guards[g](conn, inp))
        if rule.next is not None:
            conn.hs = rule.next
        for action, arg in self._plans[id(rule)]:
            if action(conn, inp, now, arg) is False:  # it could not: it fed the machine what happened instead
                return

    def plans(self) -> dict[int, tuple]:
        """Every rule's actions as (method, argument), resolved once: ``send_decline(TIMEOUT_CL)``
        is ``_do_send_decline`` with TIMEOUT_CL's code, ``wait(clc_wait)`` is ``_do_wait`` with
        the name of the timeout. A name the machine does not have fails here, not mid-handshake."""
        plans: dict[int, tuple] = {}  # by the rule's id: the rules are the table's, for good
        for rules in HS_TABLE.values():
            for rule in rules:
                steps = []
                for action in rule.actions:
                    name, _, arg = action.partition("(")
                    arg = arg.rstrip(")") or None
                    if arg is not None and name in ("send_decline", "fall_back"):
                        arg = getattr(DECL, arg)
                    elif arg is not None:
                        getattr(self.ctx.config.timeouts, arg)  # wait(T): T is a timeout
                    steps.append((self._actions[name], arg))
                plans[id(rule)] = tuple(steps)
        return plans

    def _device(self, conn: SmcConnection):
        """The device a connection uses, with the GID of its VLAN (smc_ib_determine_gid by
        the VLAN of its security context); None when no device that is up has one: the
        client proposes nothing (NOSMCDEV), the server finds no device (NOSMCRDEV / NOSMCDEV)."""
        return self.ctx.devices.device(self.directory.context_of(conn).vlan)

    def _first_contact_pending(self, conn: SmcConnection, inp: Input) -> bool:
        pending = self._first_contact.get(server_peer_key(inp.msg, inp.choice))
        return pending is not None and pending is not conn and conn.smc_listener

    # ------------------------------------------------------------------ inputs

    def start_client(self, conn: SmcConnection, now: float, peer_smc: bool | None, netdev: Netdev | None = None) -> None:
        """``peer_smc``: whether the server's SYN-ACK carried the SMC TCP option (None:
        unknown, in-band signalling); False makes the connection TCP at once with PEERNOSMC
        and no CLC, as the kernel does. ``netdev``: the device of the connection's route and
        its addresses (None: unknown, see ``negotiation.Netdev.assumed``)."""
        inp = Input(peer_smc=peer_smc, version=2 if self.ctx.config.v2 else 1)
        if peer_smc is not False:
            inp.proposal, inp.reason = build_proposal(self.ctx.config, self._device(conn), conn.local[0], self.peer_id, netdev)
        self.input(conn, "start_client", now, inp)

    def start_server(self, conn: SmcConnection, now: float, peer_smc: bool | None, netdev: Netdev | None = None) -> None:
        """``peer_smc`` False on an SMC listener: the client's SYN had no SMC TCP option, the
        connection is TCP at once without waiting for a Proposal (smc_listen_work).
        ``netdev``: as for ``start_client``, kept for the Proposal's prefix match."""
        if netdev is not None:
            self._netdevs[conn.id] = netdev
        self.input(conn, "start_server", now, Input(peer_smc=peer_smc))

    def tcp_data(self, conn: SmcConnection, data: bytes, now: float) -> None:
        """CLC bytes from the TCP connection (only while the handshake runs)."""
        if conn.hs in DONE:
            return
        conn.clc_buf += data
        while conn.clc_buf and conn.hs not in DONE:
            if conn.hs == Hs.WAIT_PROPOSAL and not any(e.startswith(conn.clc_buf[:4]) for e in _EYECATCHERS):
                leftover, conn.clc_buf = conn.clc_buf, b""
                self.input(conn, "not_clc", now, Input(leftover=leftover))
                return
            try:
                if len(conn.clc_buf) < clc.HEADER_LEN:
                    return
                header = clc.decode_header(conn.clc_buf)
                if len(conn.clc_buf) < header.length:
                    return
                raw, conn.clc_buf = conn.clc_buf[: header.length], conn.clc_buf[header.length :]
                msg = clc.decode(raw)
            except ClcError as e:
                self.input(conn, "malformed", now, Input(error=f"malformed CLC message: {e}"))
                return
            self.ctx.emit(now, "clc.msg", conn=conn.id, dir="rx", **_clc_fields(msg, raw))
            self._clc_message(conn, msg, now)

    def _clc_message(self, conn: SmcConnection, msg, now: float) -> None:
        event = _CLC_INPUTS.get(type(msg))
        if event is None or (conn.hs, event) not in HS_TABLE:
            self.input(conn, "malformed", now, Input(error=f"unexpected {type(msg).__name__} in handshake state {conn.hs.name}"))
        elif event == "proposal":
            self._proposal(conn, msg, now)
        elif event == "accept":
            self.input(conn, "accept", now, self._examine_accept(conn, msg))
        elif event == "confirm":
            self.input(conn, "confirm", now, self._examine_confirm(conn, msg))
        else:  # our in-band "no SMC here" is the kernel's missing TCP option: PEERNOSMC, not PEERDECL
            reason = DECL.PEERNOSMC if msg.diagnosis == DECL.PEERNOSMC else DECL.PEERDECL
            self.input(conn, "decline", now, Input(msg, reason=reason, diagnosis=msg.diagnosis, by_peer=True))

    def _proposal(self, conn: SmcConnection, p: clc.Proposal, now: float) -> None:
        conn.proposal = p
        inp = Input(p, version=p.version)
        inp.choice = choose(self.ctx.config, p, self._device(conn), conn.local[0], self._netdevs.get(conn.id))
        inp.reason = inp.choice.decline
        if not inp.reason:
            peer_gid = p.v2.roce_gid if inp.choice.version >= 2 else p.gid
            inp.lgr = self.directory.find_server_lgr(p.peer_id, peer_gid, p.mac, inp.choice.version, inp.choice.eid, conn)
            inp.reason = self.directory.over_limit(conn, inp.lgr)  # the stack's resource limits
            inp.lgr = None if inp.reason else inp.lgr
        self.input(conn, "proposal", now, inp)

    def _examine_accept(self, conn: SmcConnection, a: clc.Accept) -> Input:
        inp = Input(a, version=a.version)
        inp.first_contact = a.first_contact
        inp.reason = check_accept(conn.proposal, a, self.ctx.config)
        if not inp.reason and not a.first_contact:
            inp.lgr, inp.link = self.directory.find_client_link(a, conn)
        if not inp.reason and (a.first_contact or inp.lgr is not None):
            inp.reason = self.directory.over_limit(conn, inp.lgr)  # the stack's resource limits
        return inp

    def _examine_confirm(self, conn: SmcConnection, c: clc.Confirm) -> Input:
        lgr = conn.lgr
        inp = Input(c)
        inp.first_contact = conn.first_contact
        inp.reason = check_confirm(conn.choice, c) or (DECL.ERR_RDYLNK if lgr is None or lgr.terminated else 0)
        if not inp.reason and not lgr.rtoken_fits(conn.link.link_id, c.rmb_rkey):  # smc_rmb_rtoken_handling
            inp.reason = DECL.ERR_RTOK
        return inp

    def confirm_link(self, lgr: LinkGroup, link: Link, msg, now: float) -> None:
        """An LLC CONFIRM LINK no flow waited for: a first link's, for its handshake."""
        if msg.response:
            conn, event = self._first_contact_conn(lgr, Hs.WAIT_CONFIRM_LINK_RESP), "confirm_link_resp"
        else:
            conn, event = self._first_contact_conn(lgr, Hs.WAIT_CONFIRM_LINK), "confirm_link"
        if conn is None or link.state != LinkState.ACTIVATING:
            return  # not ours to answer: dropped, as the kernel drops an unexpected flow
        self.input(conn, event, now, Input(msg, link=link))

    def _first_contact_conn(self, lgr: LinkGroup, hs: Hs) -> SmcConnection | None:
        return next((c for c in lgr.conns.values() if c.hs == hs), None)

    def timeout(self, conn: SmcConnection, now: float) -> None:
        what = _WAITING_FOR.get(conn.hs)
        error = f"CLC timeout: no {what} within {self.ctx.config.timeouts.clc_wait:g} s" if what else ""
        self.input(conn, "timeout", now, Input(error=error))

    def tcp_closed(self, conn: SmcConnection, now: float, error: str | None) -> None:
        self.input(conn, "tcp_closed", now, Input(error=error or "TCP connection closed during the CLC handshake"))

    def link_lost(self, conn: SmcConnection, now: float, why: str) -> None:
        """The link group under a handshake ended."""
        if conn.state == SmcState.CLOSED or self.conns.get(conn.id) is not conn:
            return  # closed meanwhile (the application aborted it): nothing to fall back
        self.input(conn, "link_lost", now, Input(error=why))

    def closed(self, conn: SmcConnection, now: float) -> None:
        """The application closed the connection in the middle of its handshake: what waits
        for it stops."""
        self.input(conn, "closed", now)

    def _rkey_done(self, conn: SmcConnection, ok: bool, now: float) -> None:
        self.input(conn, "rkey_confirmed" if ok else "rkey_failed", now)

    def _setup_failed(self, conn: SmcConnection, reason: int, now: float) -> bool:
        self.input(conn, "setup_failed", now, Input(reason=reason))
        return False

    # ------------------------------------------------------------------ actions: sending

    def _send_clc(self, conn: SmcConnection, msg, now: float) -> None:
        raw = msg.encode()
        self.ctx.emit(now, "clc.msg", conn=conn.id, dir="tx", **_clc_fields(msg, raw))
        self.ctx.io.tcp_send(conn.id, raw)

    def _do_send_proposal(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        conn.proposal = inp.proposal
        self._send_clc(conn, inp.proposal, now)

    def _do_wait(self, conn: SmcConnection, inp: Input, now: float, timeout: str) -> None:
        self.ctx.io.arm_timer(("clc", conn.id), now + getattr(self.ctx.config.timeouts, timeout))

    def _do_send_decline(self, conn: SmcConnection, inp: Input, now: float, reason: int | None) -> None:
        reason = inp.reason if reason is None else reason
        v2 = (inp.version or self._decline_version(conn)) >= 2
        decline = clc.Decline(self.peer_id if self.ctx.devices.device() else bytes(8), reason, reason == DECL.SYNCERR,
                              clc.OS_LINUX if v2 else 0, 2 if v2 else 1, (0, 0, 0, 0) if v2 else None)  # fmt: skip
        self._send_clc(conn, decline, now)

    @staticmethod
    def _decline_version(conn: SmcConnection) -> int:
        """A server declines in the version of the Proposal (smc_listen_work's
        proposal_version), a client in the version of the Accept (__smc_connect): a v1-only
        Proposal has header version 2, its Accept version 1."""
        msg = conn.proposal if conn.role == "server" else (conn.accept or conn.proposal)
        return getattr(msg, "version", 1)

    def _do_send_accept(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        link, choice = conn.link, conn.choice
        fce = None
        if conn.version >= 2 and conn.first_contact:
            fce = clc.FirstContactExt(True, clc.OS_LINUX, choice.release, clc.make_hostname(self.ctx.name), choice.max_conns, choice.max_links)
        rmb = conn.rmb.on(link.device)
        accept = clc.Accept(
            self.peer_id, link.qp.gid, link.qp.mac, link.qp.qpn, rmb.rkey, conn.token,
            clc.rmbe_size_compress(conn.rmb.size), link.qp.mtu, rmb.addr, link.qp.psn,
            conn.first_contact, conn.version, eid=choice.eid if conn.version >= 2 else bytes(32), fce=fce,
        )  # fmt: skip
        conn.accept = accept
        self._send_clc(conn, accept, now)

    def _do_send_confirm(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        link, a = conn.link, conn.accept
        fce, gids = None, ()
        if conn.version >= 2 and conn.first_contact and a.fce is not None:
            fce = clc.FirstContactExt(True, clc.OS_LINUX, a.fce.release, clc.make_hostname(self.ctx.name), a.fce.max_conns,
                                      a.fce.max_links, a.fce.feature_mask)  # fmt: skip
            gids = (link.qp.gid,)
        rmb = conn.rmb.on(link.device)
        confirm = clc.Confirm(
            self.peer_id, link.qp.gid, link.qp.mac, link.qp.qpn, rmb.rkey, conn.token,
            clc.rmbe_size_compress(conn.rmb.size), link.mtu, rmb.addr, link.qp.psn, conn.first_contact,
            conn.version, eid=a.eid if conn.version >= 2 else bytes(32), fce=fce, gids=gids,
        )  # fmt: skip
        self._send_clc(conn, confirm, now)

    def _do_defer(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        """One first contact at a time per peer (as the kernel's LGR creation lock): this
        Proposal waits and will most likely reuse the new link group."""
        self._deferred.setdefault(server_peer_key(inp.msg, inp.choice), []).append((conn, inp.msg))

    # ------------------------------------------------------------------ actions: link groups and buffers

    def _do_take_accept(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        a = inp.msg
        conn.accept = a
        conn.version = a.version
        conn.first_contact = a.first_contact

    def _do_join_link_group(self, conn: SmcConnection, inp: Input, now: float, arg) -> bool:
        if conn.role == "server":
            conn.choice, conn.version = inp.choice, inp.choice.version
            conn.lgr, conn.link = inp.lgr, _balance(inp.lgr)
        else:
            conn.lgr, conn.link = inp.lgr, inp.link
        return self._attach_buffers(conn, now)

    def _do_new_link_group(self, conn: SmcConnection, inp: Input, now: float, arg) -> bool:
        device = self._device(conn)
        if conn.role == "server":
            p, choice = inp.msg, inp.choice
            conn.choice, conn.version = choice, choice.version
            peer_gid = p.v2.roce_gid if choice.version >= 2 else p.gid
            lgr = self.directory.new_lgr(LgrRole.SERVER, choice.version, p.peer_id, peer_gid, p.mac, now, choice.max_conns, choice.max_links, conn)
            lgr.negotiated_eid = choice.eid
            conn.first_contact = True
            self._first_contact[server_peer_key(p, choice)] = conn
            link_id = lgr.next_link_id()
        else:
            a = inp.msg
            fce = a.fce
            max_conns = fce.max_conns if fce is not None and fce.release >= 1 else 255
            max_links = fce.max_links if fce is not None and fce.release >= 1 else 2
            lgr = self.directory.new_lgr(LgrRole.CLIENT, a.version, a.peer_id, a.gid, a.mac, now, max_conns, max_links, conn)
            lgr.negotiated_eid = a.eid if a.version >= 2 else b""
            if fce is not None:
                lgr.peer_host = fce.hostname.decode("ascii", "replace").strip()
                lgr.peer_os, lgr.peer_release = fce.os_type, fce.release
            link_id = 0  # the server names the link in CONFIRM LINK
        conn.lgr = lgr
        link = lgr.new_link(device, link_id, now)
        if link is None:
            return self._setup_failed(conn, DECL.MEM, now)
        conn.link = link
        return self._attach_buffers(conn, now)

    def _attach_buffers(self, conn: SmcConnection, now: float) -> bool:
        device, lgr, config = conn.link.device, conn.lgr, self.ctx.config
        rmb_size = clc.rmbe_size_bytes(clc.rmbe_size_compress(config.rmb_size))
        conn.rmb, conn.sndbuf = lgr.take_buffers(rmb_size, config.sndbuf_size)  # reused when the group has them
        try:
            if conn.rmb is None:
                conn.rmb = RegisteredBuffer(self.ctx.io, device, rmb_size, True)
            if conn.sndbuf is None:
                conn.sndbuf = RegisteredBuffer(self.ctx.io, device, config.sndbuf_size, False)
            lgr.add_buffers(conn.rmb, conn.sndbuf)
            lgr.map_buffers(conn)  # and on the devices of the group's other links
        except OSError as e:
            conn.error = f"buffer registration failed: {e}"
            return self._setup_failed(conn, DECL.ERR_REGBUF, now)
        conn.token = self.directory.alloc_token(lgr)
        lgr.conns[conn.token] = conn
        return True

    def _do_adopt_peer_buffer(self, conn: SmcConnection, inp: Input, now: float, arg) -> bool:
        """The peer's RMB from its Accept or Confirm: its rkey is for the connection's link;
        CONFIRM RKEY (or ADD LINK) told us, or will tell us, its keys on the other links."""
        msg = inp.msg
        row = conn.lgr.rtoken_add(conn.link.link_id, msg.rmb_rkey, msg.rmb_vaddr)
        if row is None:
            return self._setup_failed(conn, DECL.ERR_RTOK, now)
        conn.peer_rtoken = row
        conn.peer_token = msg.rmbe_alert_token
        conn.peer_size = clc.rmbe_size_bytes(msg.rmbe_size)
        conn.tx_off = conn.peer_size * (max(msg.rmbe_idx, 1) - 1)  # smcr_conn_save_peer_info: the RMBE rmbe_idx names
        conn.peer_rmbe_space = conn.peer_size
        return True

    def _do_ready_link(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        """The first link's QP to RTR with the peer's QP from its Accept (client) or Confirm
        (server, which takes it to RTS too: CONFIRM LINK goes out on it next)."""
        link, msg, io = conn.link, inp.msg, self.ctx.io
        link.peer_qpn, link.peer_psn, link.peer_gid, link.peer_mac = msg.qpn, msg.psn, msg.gid, msg.mac
        link.mtu = min(link.qp.mtu, msg.qp_mtu)
        io.qp_to_rtr(link.qp.handle, msg.qpn, msg.psn, msg.gid, link.mtu)
        if conn.role == "server":
            io.qp_to_rts(link.qp.handle)
            if msg.fce is not None:
                conn.lgr.peer_host = msg.fce.hostname.decode("ascii", "replace").strip()
                conn.lgr.peer_os, conn.lgr.peer_release = msg.fce.os_type, msg.fce.release

    def _do_confirm_rkey(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        """CONFIRM RKEY for an RMB the peer does not know (a new one, or a reused one, which
        DELETE RKEY took back): smcr_lgr_reg_rmbs."""
        if conn.rmb.confirmed:
            self._rkey_done(conn, True, now)
        else:
            llcflows.confirm_rkey(conn.lgr, conn, now, lambda ok, t: self._rkey_done(conn, ok, t))

    def _do_rmb_confirmed(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        conn.rmb.confirmed = True

    # ------------------------------------------------------------------ actions: the first link

    def _do_send_confirm_link(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        conn.link.post_llc(_confirm_link(conn.lgr, llcflows.confirm_link_msg(conn.lgr, conn.link)), now)

    def _do_answer_confirm_link(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        lgr, link, msg = conn.lgr, inp.link, inp.msg
        self.ctx.io.qp_to_rts(link.qp.handle)
        lgr.rename_link(link, msg.link_num)
        link.peer_link_uid = msg.link_uid
        link.post_llc(_confirm_link(lgr, llcflows.confirm_link_msg(lgr, link, msg)), now)
        llcflows.link_confirmed(lgr, link, now)

    def _do_link_confirmed(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        inp.link.peer_link_uid = inp.msg.link_uid
        llcflows.link_confirmed(conn.lgr, inp.link, now)

    def _do_add_link(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        llcflows.want_link(conn.lgr, now, "first contact")  # the server tries for a second link at once

    # ------------------------------------------------------------------ actions: the end of the handshake

    def _do_established(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        self.ctx.io.cancel_timer(("clc", conn.id))
        self._netdevs.pop(conn.id, None)
        conn.mode = "SMCR"
        conn.rmb.confirmed = True  # the peer has its key (CLC, CONFIRM RKEY): a DELETE RKEY ends it
        self.ctx.stats["smc_" + conn.role] += 1
        conn.emit(now, "conn.mode", mode="SMCR", version=conn.version, first_contact=conn.first_contact,
                  token=conn.token, peer_token=conn.peer_token, rmb_size=conn.rmb_size, peer_rmb_size=conn.peer_size,
                  handshake_ms=round((now - conn.handshake_started) * 1000, 3))  # fmt: skip
        conn.input("handshake_done", now)
        self.ctx.io.conn_established(conn.id)
        early, conn.early_cdcs = conn.early_cdcs, []
        for msg in early:
            conn.on_cdc(msg, now)
        self._first_contact_over(conn, now)

    def _do_note_out_of_sync(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        if inp.msg.out_of_sync and conn.lgr is not None:
            conn.lgr.out_of_sync(now)  # smc_clc_wait_msg: the group is terminated

    def _do_fall_back(self, conn: SmcConnection, inp: Input, now: float, reason: int | None) -> None:
        reason = inp.reason if reason is None else reason
        self.ctx.io.cancel_timer(("clc", conn.id))
        self._netdevs.pop(conn.id, None)
        conn.mode = "TCP"
        conn.fallback_reason = reason
        conn.peer_diagnosis = peer_diagnosis = inp.diagnosis
        self._release_smc(conn, now)
        if reason:
            self.ctx.stats["fallback_" + conn.role] += 1
            self.fallback_reasons[(conn.role, reason)] = self.fallback_reasons.get((conn.role, reason), 0) + 1
        cause = _unknown_group(inp.msg) if reason == DECL.SYNCERR and isinstance(inp.msg, clc.Accept) and not inp.by_peer else None
        conn.emit(now, "conn.fallback", reason=reason, reason_text=codes.format_reason(reason) if reason else "not SMC",
                  peer_diagnosis=peer_diagnosis, peer_diagnosis_text=codes.format_reason(peer_diagnosis) if peer_diagnosis else "",
                  decline_sent=reason != 0 and not inp.by_peer and codes.sends_decline(reason), **({"cause": cause} if cause else {}))  # fmt: skip
        conn.emit(now, "conn.mode", mode="TCP", reason=reason)
        conn.input("handshake_done", now)
        leftover, conn.clc_buf = inp.leftover + conn.clc_buf, b""  # bytes after the last CLC message are the app's
        self.ctx.io.conn_fallback(conn.id, leftover)
        if conn.role == "server":
            self._first_contact_over(conn, now)

    def _do_plain_tcp(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        """A plain-TCP listener's connection: TCP, with no fallback reason."""
        self._do_fall_back(conn, inp, now, 0)

    def _do_fail(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        error = inp.error
        conn.error = error
        self.ctx.stats["handshake_errors"] += 1
        self.ctx.io.cancel_timer(("clc", conn.id))
        self._netdevs.pop(conn.id, None)
        conn.emit(now, "conn.error", reason=error)
        self._release_smc(conn, now)
        conn.set_state(SmcState.CLOSED, now, "handshake failed")
        self.ctx.io.conn_failed(conn.id, error)
        if conn.role == "server":
            self._first_contact_over(conn, now)

    def _do_abandon(self, conn: SmcConnection, inp: Input, now: float, arg) -> None:
        self.ctx.io.cancel_timer(("clc", conn.id))
        self._netdevs.pop(conn.id, None)
        self._release_smc(conn, now)

    def _release_smc(self, conn: SmcConnection, now: float) -> None:
        """Undo what a handshake that did not end in SMC had set up."""
        lgr = conn.lgr
        if lgr is not None:
            lgr.conns.pop(conn.token, None)
            llcflows.unuse_buffers(lgr, conn, now)
        else:
            for buf in (conn.rmb, conn.sndbuf):
                if buf is not None:
                    buf.release()
        conn.rmb = conn.sndbuf = None
        if lgr is not None and conn.first_contact and not lgr.conns:
            lgr.terminate(now, DEL.PROG_INIT_TERM, "first contact did not complete", notify_peer=False)
        conn.lgr, conn.link = None, None

    def _first_contact_over(self, conn: SmcConnection, now: float) -> None:
        """The handshake that was creating a link group finished: the Proposals that waited go on."""
        choice = getattr(conn, "choice", None)
        if conn.proposal is None or choice is None:
            return
        peer = server_peer_key(conn.proposal, choice)
        if self._first_contact.get(peer) is not conn:
            return
        del self._first_contact[peer]
        waiting = self._deferred.pop(peer, [])
        for i, (other, p) in enumerate(waiting):
            if other.hs == Hs.WAIT_PROPOSAL and other.id in self.conns:
                self._proposal(other, p, now)
                if peer in self._first_contact:  # it became the next first contact: the rest wait again
                    self._deferred.setdefault(peer, []).extend(waiting[i + 1 :])
                    return


def _confirm_link(lgr: LinkGroup, msg):
    """The first link's CONFIRM LINK with the v2.1 limits only for a peer of release >= 1."""
    return confirm_link_limits(msg, lgr.version, lgr.peer_release, lgr.max_conns, lgr.max_links)


def _balance(lgr: LinkGroup) -> Link:
    """The kernel's server balancing (smcr_lgr_conn_assign_link): never an asymmetric link."""
    return lgr.assign_link()


def _unknown_group(a: clc.Accept) -> str:
    """Why an Accept that reuses a link group names none of ours, as far as the client can
    tell. For SMC-Rv2 a server tells its peers apart by the Proposal's peer ID and GID, and
    a v2-only Proposal's peer ID is zero (as the kernel sends it): another SMC stack using
    the same RoCE GID toward the same server (the host kernel's, beside this one) is the same
    peer to it. The server ends that link group when this Decline says out of sync."""
    seen = f"the server reuses a link group this stack does not have, or whose link failed (its link to QP 0x{a.qpn:06x}, GID {gid_text(a.gid)})"
    if a.version < 2:
        return seen
    return (f"{seen}; if no link failed: another SMC stack using this host's RoCE GID with that server (the kernel's?) looks the "
            "same to it, a v2 Proposal's peer ID being zero; the server now ends that group")  # fmt: skip
