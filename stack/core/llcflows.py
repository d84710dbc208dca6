"""LLC over a link group (``net/smc/smc_llc.c``): what arrives is dispatched by a table,
local flows hold the group's flow slot, and a group's links are tested, added and deleted.

Messages from the peer go through ``receive``: TEST LINK is answered at once, then the
flow holding the slot may claim a message, then ``HANDLERS`` (keyed by message type and
request/response) answers rkey requests and starts the flows the peer asks for. A CONFIRM
LINK no flow waits for belongs to a first link, whose CLC handshake answers it: ``receive``
returns False for it. A message with no entry is dropped, as the kernel drops it.

Each flow is a small state machine over LLC messages: it sends, waits for a named step
with a timeout, and ends by giving the slot back. The server drives link management:

* ``ServerAddLink``: pick an alternate device (none: an asymmetric link on the current
  one), create the QP, map every RMB, ADD LINK request; on the response bring the QP to
  RTS and exchange rkeys (v1: ADD LINK CONTINUATION, server first, strictly
  alternating; v2: in the ADD LINK extension), then CONFIRM LINK on the new link. A new
  symmetric link makes an asymmetric one redundant: it is deleted (NO_ASYM_NEEDED).
* ``ClientAddLink``: the client's side of the same exchange, or a reject (reason 1,
  no alternate path).
* ``ServerDeleteLink``: fail over off the link, DELETE LINK request, wait for the
  response, clear the link; a group left SINGLE looks for a new link at once.
* ``ClientDeleteLink`` and ``ClientInvite``: the client reports a lost link, and asks
  for a new one (v1 ADD LINK "invitation" with QPN 0, v2 REQUEST ADD LINK).
* ``RequestFlow``: CONFIRM RKEY and DELETE RKEY. If its link dies the request is sent
  again on a surviving link, so a handshake under way does not fail with the link.

No flow runs while ADD LINK or DELETE LINK processing holds the slot on either side, so no
CONFIRM RKEY runs while a link is being added. The client invites (v1) or requests (v2) a
link and reports lost ones.
"""

from __future__ import annotations

from typing import Callable

from stack.wire import llc
from stack.wire.codes import ADD_LINK_REJ, DEL, DELETE_LINK_REASONS, LgrRole, LgrType, LinkState

from .link import Link
from .linkgroup import ASYMMETRIC, LinkGroup
from .negotiation import confirm_link_limits
from .ports import DeviceInfo, Services

RKEYS_PER_CONT = 2  # SMC_LLC_RKEYS_PER_CONT_MSG


def _del_reason(code: int) -> str:
    return DELETE_LINK_REASONS.format(code)


def _alt_device(lgr: LinkGroup) -> DeviceInfo | None:
    """A device for another link of ``lgr``: up, and not used by its symmetric links (the
    kernel's alternate RoCE device; we have no PNET ids, every device qualifies), and on the
    P_Key of the group's security context when it names one (a link on another partition
    would take the group out of its context), with a GID on the group's VLAN (that GID:
    smc_pnet_find_alt_roce looks for the same vlan_id)."""
    used = {link.device for link in lgr.usable_links() if not link.asym}
    while (device := lgr.ctx.devices.alt_device(used, lgr.security.vlan)) is not None:
        if lgr.security.pkey is None or device.pkey == lgr.security.pkey:
            return device
        used.add(device.name)
    return None


# --------------------------------------------------------------------------- what arrives


def receive(lgr: LinkGroup, link: Link, msg: llc.LlcMessage, now: float) -> bool:
    """An LLC message on one of ``lgr``'s links. False: a CONFIRM LINK that no flow waits
    for, which belongs to a first link's CLC handshake (the caller routes it there)."""
    key = (type(msg), msg.response)
    if key in BEFORE_FLOWS:
        BEFORE_FLOWS[key](lgr, link, msg, now)
        return True
    if lgr.running is not None and lgr.running.on_llc(link, msg, now):
        return True
    if key in HANDLERS:
        handler = HANDLERS[key]
        if handler is None:
            return False
        handler(lgr, link, msg, now)
    return True


def _test_link_request(lgr: LinkGroup, link: Link, msg: llc.TestLink, now: float) -> None:
    link.post_llc(llc.TestLink(version=msg.version, response=True, user_data=msg.user_data), now)


def _test_link_response(lgr: LinkGroup, link: Link, msg: llc.TestLink, now: float) -> None:
    link.test_link_outstanding = False
    lgr.ctx.io.cancel_timer(("testlink_resp", lgr.lgr_id, link.link_id))
    arm_test_link(lgr, link, now)


def _confirm_rkey_request(lgr: LinkGroup, link: Link, msg: llc.ConfirmRkey, now: float) -> None:
    row = lgr.rtoken_add(link.link_id, msg.rkey, msg.vaddr, msg.others)
    link.post_llc(llc.ConfirmRkey(version=msg.version, response=True, rkey=msg.rkey, vaddr=msg.vaddr, others=msg.others,
                                  negative=row is None, retry=row is None), now)  # fmt: skip


def _delete_rkey_request(lgr: LinkGroup, link: Link, msg: llc.DeleteRkey, now: float) -> None:
    unknown = [r for r in msg.rkeys if not lgr.rtoken_delete(link.link_id, r)]
    resp = llc.DeleteRkey(version=msg.version, response=True, rkeys=msg.rkeys, negative=bool(unknown),
                          **({"err_mask": sum(0x80 >> i for i, r in enumerate(msg.rkeys) if r in unknown)} if msg.version == 1
                             else {"num_invalid": len(unknown)}))  # fmt: skip
    link.post_llc(resp, now)


def confirm_link_msg(lgr: LinkGroup, link: Link, req: llc.ConfirmLink | None = None) -> llc.ConfirmLink:
    """CONFIRM LINK for ``link``: the server's request, or the client's response to ``req``."""
    if req is None:
        version, response, link_num = lgr.llc_version(), False, link.link_id
    else:
        version, response, link_num = req.version, True, req.link_num
    msg = llc.ConfirmLink(version=version, response=response, mac=link.qp.mac, gid=link.qp.gid, qpn=link.qp.qpn, link_num=link_num, link_uid=link.link_uid)
    # every link's CONFIRM LINK as smc_llc_send_confirm_link fills it: the v2.1 limits only
    # for a v2 peer of release >= 1
    return confirm_link_limits(msg, lgr.version, lgr.peer_release, lgr.max_conns, lgr.max_links)


# --------------------------------------------------------------------------- links coming and going


def link_confirmed(lgr: LinkGroup, link: Link, now: float, new_type: LgrType = LgrType.SYMMETRIC) -> None:
    """CONFIRM LINK went both ways: the link is ACTIVE, tested from now on, and the
    connections of a link that died meanwhile move to it."""
    link.set_state("confirmed", now)
    link.last_rx = now
    lgr.set_type(LgrType.SINGLE if len(lgr.active_links()) == 1 else new_type, now, f"link {link.link_id} confirmed")
    arm_test_link(lgr, link, now)
    _adopt_orphans(lgr, now)


def _adopt_orphans(lgr: LinkGroup, now: float) -> None:
    """A link came up after the only other one died: its connections move now and the
    dead link is deleted as any lost link."""
    to = lgr.usable_link()
    while lgr.orphans and to is not None:
        dead = lgr.orphans.pop(0)
        lgr.switch_conns(dead, to, now, "the link it waited for is up")
        _delete_lost_link(lgr, dead.link_id, now)


def _delete_lost_link(lgr: LinkGroup, link_id: int, now: float) -> None:
    if lgr.role == LgrRole.SERVER:
        lgr.start_flow(ServerDeleteLink(lgr, link_id, DEL.LOST_PATH, orderly=True), now)
    else:
        lgr.start_flow(ClientDeleteLink(lgr, link_id, DEL.LOST_PATH), now)


def link_down(lgr: LinkGroup, link: Link, now: float, reason: str) -> None:
    """This side found the link dead: fail over, then tell the peer (server: DELETE LINK
    flow and a new link; client: DELETE LINK request). A link still being added is
    the ADD LINK flow's to clean up."""
    if not link.usable:
        return
    active = link.state == LinkState.ACTIVE
    if lgr.fail_over(link, now, reason) is None or not active:
        return
    _delete_lost_link(lgr, link.link_id, now)


def want_link(lgr: LinkGroup, now: float, cause: str) -> None:
    """A second link may be possible now: the server adds one, the client asks for one."""
    if lgr.terminated or lgr.max_links <= 1 or lgr.type not in (LgrType.SINGLE, LgrType.ASYMMETRIC_LOCAL):
        return
    if lgr.role == LgrRole.SERVER:
        # an ADD LINK already running may be the one that fails (its peer's side of the path
        # going too): this one waits for it, as the kernel's llc_event_q keeps a local ADD
        # LINK while a flow runs (smc_llc_add_link_local); one waiting is enough, and it
        # looks again at the group when it starts
        if any(isinstance(f, ServerAddLink) for f in lgr.flows) or lgr.has_flow(ClientInvite):
            return
        lgr.start_flow(ServerAddLink(lgr, cause), now)
        return
    if lgr.has_flow(ServerAddLink) or lgr.has_flow(ClientInvite):
        return
    lgr.start_flow(ClientInvite(lgr), now)


# --------------------------------------------------------------------------- TEST LINK


def arm_test_link(lgr: LinkGroup, link: Link, now: float) -> None:
    interval = lgr.ctx.config.timeouts.test_link
    if interval > 0:
        lgr.ctx.io.arm_timer(("testlink", lgr.lgr_id, link.link_id), now + interval)


def test_link_timer(lgr: LinkGroup, link_id: int, now: float) -> None:
    """The test-link interval passed: quiet links get a TEST LINK."""
    link = lgr.links.get(link_id)
    if link is None or link.state != LinkState.ACTIVE or not link.qp_alive or lgr.terminated:
        return
    timeouts, io = lgr.ctx.config.timeouts, lgr.ctx.io
    deadline = link.last_rx + timeouts.test_link
    if deadline > now:  # heard from the peer within the interval: look again then
        io.arm_timer(("testlink", lgr.lgr_id, link_id), deadline)
        return
    link.test_link_outstanding = True
    link.post_llc(llc.TestLink(version=lgr.llc_version()), now)
    io.arm_timer(("testlink_resp", lgr.lgr_id, link_id), now + timeouts.llc_wait)


def test_link_expired(lgr: LinkGroup, link_id: int, now: float) -> None:
    link = lgr.links.get(link_id)
    if link is not None and link.test_link_outstanding:
        lgr.emit(now, "link.event", link=link_id, event="test_link_timeout")
        link_down(lgr, link, now, "TEST LINK not answered")


# --------------------------------------------------------------------------- rkeys and buffers


def confirm_rkey(lgr: LinkGroup, conn, now: float, done: Callable[[bool, float], None]) -> None:
    """CONFIRM RKEY for a new connection's RMB: its rkey on the link the message goes
    over, and (link id, rkey, address) for every other active link."""

    def build(link: Link) -> llc.LlcMessage:
        others = tuple(llc.Rtoken(l.link_id, conn.rmb.on(l.device).rkey, conn.rmb.on(l.device).addr)
                       for l in lgr.active_links() if l is not link)[:2]  # fmt: skip
        reg = conn.rmb.on(link.device)
        return llc.ConfirmRkey(version=lgr.llc_version(), rkey=reg.rkey, vaddr=reg.addr, others=others)

    lgr.start_flow(RequestFlow(lgr, llc.ConfirmRkey, build, lambda resp, t: done(resp is not None and not resp.negative, t),
                               prefer=conn.link), now)  # fmt: skip


def delete_rkey(lgr: LinkGroup, conn, now: float, done: Callable[[bool, float], None]) -> None:
    """DELETE RKEY for a closed connection's RMB; ``done(answered, now)``."""
    rmb = conn.rmb
    lgr.start_flow(RequestFlow(lgr, llc.DeleteRkey, lambda link: llc.DeleteRkey(version=lgr.llc_version(), rkeys=(rmb.on(link.device).rkey,)),
                               lambda resp, t: done(resp is not None, t), prefer=conn.link), now)  # fmt: skip


def unuse_buffers(lgr: LinkGroup, conn, now: float) -> None:
    """smc_buf_unuse: the send buffer is free at once (it stays registered: its keys are
    local); an RMB the peer knows is unregistered with it first (DELETE RKEY), then
    deregistered here (``LinkGroup.rmb_free``). A group that is going away frees them all."""
    rmb, sndbuf = conn.rmb, conn.sndbuf
    if sndbuf is not None:
        sndbuf.in_use = False
    if rmb is None:
        pass
    elif rmb.confirmed and not lgr.terminated and lgr.active_links():
        delete_rkey(lgr, conn, now, lambda answered, t: lgr.rmb_free(rmb, peer_forgot=answered))
    else:
        lgr.rmb_free(rmb)
    if lgr.terminated:
        lgr.free_buffers()


# --------------------------------------------------------------------------- flows


class LlcFlow:
    step = "start"

    def __init__(self, lgr: LinkGroup) -> None:
        self.lgr = lgr

    @property
    def ctx(self) -> Services:
        return self.lgr.ctx

    @property
    def timeouts(self):
        return self.lgr.ctx.config.timeouts

    def start(self, now: float) -> None:
        raise NotImplementedError

    def on_llc(self, link: Link, msg: llc.LlcMessage, now: float) -> bool:
        """A message while this flow holds the slot; True when it was this flow's."""
        return False

    def on_timeout(self, now: float) -> None:
        self.finish(now)

    def on_link_down(self, link: Link, now: float) -> None:
        pass

    def abandon(self, now: float) -> None:
        """The link group ended before this flow could."""

    def confirming(self) -> bool:
        """Is a new link past the point where it needs the old one (only CONFIRM LINK left)?"""
        return False

    def wait(self, step: str, seconds: float, now: float) -> None:
        self.step = step
        self.lgr.flow_wait(seconds, now)

    def finish(self, now: float) -> None:
        self.step = "done"
        self.lgr.flow_done(self, now)

    def event(self, now: float, event: str, link: int | None = None, **fields) -> None:
        self.lgr.emit(now, "link.event", link=link, event=event, **fields)


# --------------------------------------------------------------------------- rkeys


class RequestFlow(LlcFlow):
    """One request, one response (CONFIRM RKEY, DELETE RKEY)."""

    def __init__(self, lgr: LinkGroup, kind: type, build: Callable[[Link], llc.LlcMessage],
                 done: Callable[[llc.LlcMessage | None, float], None], prefer: Link | None = None) -> None:  # fmt: skip
        super().__init__(lgr)
        self.kind, self.build, self.done, self.prefer = kind, build, done, prefer
        self.link: Link | None = None

    def start(self, now: float) -> None:
        self._send(now)

    def _send(self, now: float) -> None:
        prefer = self.prefer if self.prefer is not None and self.prefer in self.lgr.active_links() else None
        self.link = prefer or self.lgr.usable_link(avoid=self.link)
        if self.link is None or not self.link.post_llc(self.build(self.link), now):
            self._complete(None, now)
            return
        self.wait("response", self.timeouts.llc_wait, now)

    def on_llc(self, link: Link, msg: llc.LlcMessage, now: float) -> bool:
        if msg.response and isinstance(msg, self.kind):
            self._complete(msg, now)
            return True
        return False

    def on_timeout(self, now: float) -> None:
        self._complete(None, now)

    def on_link_down(self, link: Link, now: float) -> None:
        if link is self.link and self.step == "response":
            self.prefer = None
            self._send(now)  # again, on a link that works

    def abandon(self, now: float) -> None:
        self.done(None, now)

    def _complete(self, msg: llc.LlcMessage | None, now: float) -> None:
        self.finish(now)
        self.done(msg, now)


# --------------------------------------------------------------------------- adding a link


def _same_peer_device(lgr: LinkGroup, gid: bytes, mac: bytes) -> bool:
    """Does the peer offer the device it already uses for a (non-asymmetric) link?"""
    return any(l.peer_gid == gid and (lgr.version >= 2 or l.peer_mac == mac) for l in lgr.usable_links() if not l.asym)


class _AddLinkBase(LlcFlow):
    new: Link | None = None
    new_type = LgrType.SYMMETRIC
    tell_peer = False  # once the peer has heard of the new link, it is told when that link will not come

    def _rkey_cont(self, now: float, response: bool) -> None:
        batch, self.to_send = self.to_send[:RKEYS_PER_CONT], self.to_send[RKEYS_PER_CONT:]
        self.link.post_llc(llc.AddLinkCont(version=1, response=response, link_num=self.new.link_id,
                                           num_rkeys=len(batch) + len(self.to_send), rkeys=tuple(batch)), now)  # fmt: skip

    def _fail(self, now: float, why: str) -> None:
        lgr = self.lgr
        self.event(now, "add_link_failed", link=self.new.link_id if self.new else None, reason=why)
        if self.new is not None:
            lgr.clear_link(self.new, now)
            if self.tell_peer:  # it may have half a link waiting for CONFIRM LINK: let it go now
                via = lgr.usable_link(avoid=self.new)
                if via is not None:
                    via.post_llc(llc.DeleteLink(version=lgr.llc_version(), link_num=self.new.link_id, reason=DEL.LOST_PATH), now)
        self.finish(now)
        if lgr.orphans and not lgr.active_links():  # their last hope is gone
            lgr.terminate(now, DEL.LOST_PATH, f"link {lgr.orphans[0].link_id} down and the new link failed ({why})")

    def on_timeout(self, now: float) -> None:
        self._fail(now, f"no answer while waiting for {self.step}")

    def peer_gave_up(self, link: Link, msg: llc.LlcMessage, now: float) -> bool:
        """The peer deletes the link we are adding: stop now rather than time out."""
        if isinstance(msg, llc.DeleteLink) and not msg.response and not msg.all and self.new is not None and msg.link_num == self.new.link_id:
            self.tell_peer = False
            self._fail(now, f"the peer deleted link {msg.link_num} ({_del_reason(msg.reason)})")
            if self.lgr.role == LgrRole.CLIENT:
                link.post_llc(llc.DeleteLink(version=msg.version, response=True, link_num=msg.link_num, reason=0), now)
            return True
        return False

    def on_link_down(self, link: Link, now: float) -> None:
        if link is self.new or (link is self.link and not self.confirming()):
            self._fail(now, f"link {link.link_id} went down")

    def confirming(self) -> bool:
        return self.new is not None and self.step.startswith("CONFIRM LINK")

    def _new_link(self, device: "DeviceInfo", link_id: int, now: float) -> bool:
        self.new = self.lgr.new_link(device, link_id, now)
        if self.new is None:
            return False
        self.new.asym = self.new_type in ASYMMETRIC
        try:
            self.lgr.map_all(self.new.device)
        except OSError as e:
            self.lgr.clear_link(self.new, now)
            self.new = None
            self.event(now, "add_link_failed", reason=f"buffer registration failed: {e}")
            return False
        return True

    def _add_link_msg(self, response: bool, link_num: int) -> llc.AddLink:
        new, v2 = self.new, self.lgr.version >= 2
        ext = {"direct": True, "target_gid": new.qp.gid, "rkeys": tuple(self.lgr.rkey_triples(self.link, new))} if v2 else {}
        return llc.AddLink(version=self.lgr.llc_version(), response=response, mac=new.qp.mac, gid=new.qp.gid, qpn=new.qp.qpn,
                           link_num=link_num, qp_mtu=new.mtu, psn=new.qp.psn, **ext)  # fmt: skip

    def _confirmed(self, now: float) -> None:
        self.ctx.stats["links_added"] += 1
        link_confirmed(self.lgr, self.new, now, self.new_type)
        self.event(now, "add_link_done", link=self.new.link_id, device=self.new.device, type=self.lgr.type.smc_tools_name,
                   asym=self.new.asym)  # fmt: skip
        self.finish(now)


class ServerAddLink(_AddLinkBase):
    def __init__(self, lgr: LinkGroup, cause: str, request: tuple[Link, llc.RequestAddLink] | None = None) -> None:
        super().__init__(lgr)
        self.cause = cause
        self.to_send: list[llc.RkeyTriple] = []
        self.request = request  # the client's REQUEST ADD LINK, answered unless an ADD LINK goes out
        self.later: tuple[Link, llc.RequestAddLink] | None = None  # one that came after our ADD LINK went out

    def finish(self, now: float) -> None:
        """smc_llc_srv_add_link: a REQUEST ADD LINK that did not lead to an ADD LINK is
        answered (smc_llc_send_req_add_link_response), so the client's flow ends. One that
        came while this flow ran gets a flow of its own when this one added no link."""
        if self.request is not None:
            answer_request_add_link(self.lgr, *self.request, now)
            self.request = None
        later, self.later = self.later, None
        super().finish(now)
        if later is not None:
            if self.new is not None and self.new.state == LinkState.ACTIVE:  # this flow added its link
                answer_request_add_link(self.lgr, *later, now)
            else:
                self.lgr.start_flow(ServerAddLink(self.lgr, "client request after a failed add", request=later), now)

    def abandon(self, now: float) -> None:
        self.request = self.later = None  # the group is going: nothing to answer on
        super().abandon(now)

    def take_request(self, link: Link, msg: llc.RequestAddLink) -> None:
        """A REQUEST ADD LINK while this flow is queued or running: answered by this flow's
        ADD LINK if it has not gone out yet, else after this flow (see finish)."""
        if self.step == "start" and self.request is None:
            self.request = (link, msg)
        else:
            self.later = (link, msg)

    def start(self, now: float) -> None:
        lgr = self.lgr
        self.link = lgr.usable_link()
        if self.link is None:
            self.finish(now)
            return
        device = _alt_device(lgr)
        if device is None:  # no other device: an asymmetric link on the one we have
            device, self.new_type = self.ctx.devices.device_info(self.link.device, lgr.security.vlan), LgrType.ASYMMETRIC_LOCAL
        if device is None or not device.up or not lgr.may_add_link(self.new_type) or not self._new_link(device, lgr.next_link_id(), now):
            self.finish(now)
            return
        self.event(now, "add_link_begin", link=self.new.link_id, device=device.name, cause=self.cause, asym=self.new.asym)
        if not self.link.post_llc(self._add_link_msg(False, self.new.link_id), now):
            self._fail(now, "could not send ADD LINK")
            return
        self.request = None  # the ADD LINK is the answer
        self.tell_peer = True
        self.wait("ADD LINK response", self.timeouts.llc_wait, now)

    def on_llc(self, link: Link, msg: llc.LlcMessage, now: float) -> bool:
        lgr, new = self.lgr, self.new
        if self.peer_gave_up(link, msg, now):
            return True
        if self.step == "ADD LINK response" and isinstance(msg, llc.AddLink) and msg.response:
            if msg.link_num and msg.link_num != new.link_id:
                # the late answer to an earlier ADD LINK of ours (a peer names the link it
                # answers for: smc_llc_cli_add_link keeps the server's link_num): not ours to
                # take; its llc.msg event shows it, and this flow waits on for its own
                return True
            if msg.qpn == new.qp.qpn and msg.gid == new.qp.gid and not msg.rejected:
                # our own ADD LINK back, flagged a response: a kernel client still waiting for
                # the CONFIRM LINK of a link it was adding takes any other message for a DELETE
                # LINK, echoes it and gives that link up (smc_llc_cli_conf_link). Our request
                # was dropped; waiting for an answer would only let the client's own REQUEST
                # ADD LINK, which follows, find this flow busy.
                self._fail(now, "the peer sent our ADD LINK back: it was busy adding another link")
                return True
            if msg.rejected:
                self.event(now, "add_link_rejected", link=new.link_id, reason=msg.reject_reason)
                lgr.clear_link(new, now)
                self.finish(now)
                return True
            if _same_peer_device(lgr, msg.gid, msg.mac):
                self.new_type, new.asym = LgrType.ASYMMETRIC_PEER, True
            new.peer_qpn, new.peer_psn, new.peer_gid, new.peer_mac = msg.qpn, msg.psn, msg.gid, msg.mac
            new.mtu = min(new.qp.mtu, msg.qp_mtu)
            try:
                self.ctx.io.qp_to_rtr(new.qp.handle, msg.qpn, msg.psn, msg.gid, new.mtu)
                self.ctx.io.qp_to_rts(new.qp.handle)
            except OSError as e:  # (smc_llc_srv_add_link: smc_ib_ready_link failed, the new link is cleared)
                self._fail(now, f"the new QP cannot reach the peer: {e}")
                return True
            if lgr.version >= 2:
                lgr.rtoken_set(self.link.link_id, new.link_id, msg.rkeys)
                self._confirm_link(now)
            else:
                self.to_send = lgr.rkey_triples(self.link, new)
                self._rkey_cont(now, response=False)
                self.wait("ADD LINK CONT", self.timeouts.llc_wait, now)
            return True
        if self.step == "ADD LINK CONT" and isinstance(msg, llc.AddLinkCont) and msg.link_num == new.link_id:
            lgr.rtoken_set(self.link.link_id, new.link_id, msg.rkeys)
            if self.to_send or msg.num_rkeys > len(msg.rkeys):
                self._rkey_cont(now, response=False)
                self.wait("ADD LINK CONT", self.timeouts.llc_wait, now)
            else:
                self._confirm_link(now)
            return True
        if self.step == "CONFIRM LINK response" and isinstance(msg, llc.ConfirmLink) and msg.response and link is new:
            new.peer_link_uid = msg.link_uid
            asym = [l for l in lgr.usable_links() if l.asym and l is not new]  # set_type clears the tags
            self._confirmed(now)
            if lgr.type == LgrType.SYMMETRIC:
                for old in asym:
                    lgr.start_flow(ServerDeleteLink(lgr, old.link_id, DEL.NO_ASYM_NEEDED, orderly=True), now)
            return True
        return False

    def _confirm_link(self, now: float) -> None:
        self.new.post_llc(confirm_link_msg(self.lgr, self.new), now)
        self.wait("CONFIRM LINK response", self.timeouts.llc_wait_first, now)


class ClientAddLink(_AddLinkBase):
    def __init__(self, lgr: LinkGroup, link: Link, req: llc.AddLink) -> None:
        super().__init__(lgr)
        self.link, self.req = link, req
        self.to_send: list[llc.RkeyTriple] = []

    def start(self, now: float) -> None:
        lgr, req = self.lgr, self.req
        if not self.link.usable:
            self.finish(now)
            return
        if req.qp_mtu == 0 or lgr.max_links <= 1:
            self._reject(now, "the peer cannot have a second link")
            return
        device = _alt_device(lgr)
        if _same_peer_device(lgr, req.gid, req.mac):
            if device is None:
                self._reject(now, "no alternate path: both sides would use the devices they use already")
                return
            self.new_type = LgrType.ASYMMETRIC_PEER
        if device is None:
            device, self.new_type = self.ctx.devices.device_info(self.link.device, lgr.security.vlan), LgrType.ASYMMETRIC_LOCAL
        if device is None or not lgr.may_add_link(self.new_type) or req.link_num == 0 or req.link_num in lgr.links:
            self._reject(now, f"no room for a {self.new_type.smc_tools_name} link {req.link_num}")
            return
        if not self._new_link(device, req.link_num, now):
            self._reject(now, "could not create the link")
            return
        new = self.new
        new.peer_qpn, new.peer_psn, new.peer_gid, new.peer_mac = req.qpn, req.psn, req.gid, req.mac
        new.mtu = min(new.qp.mtu, req.qp_mtu)
        try:
            self.ctx.io.qp_to_rtr(new.qp.handle, req.qpn, req.psn, req.gid, new.mtu)
        except OSError as e:  # the device cannot reach the peer's GID (its netdev down, no route): the kernel rejects too
            lgr.clear_link(new, now)
            self.new = None
            self._reject(now, f"the new QP cannot reach the peer: {e}")
            return
        self.event(now, "add_link_begin", link=new.link_id, device=device.name, cause="server request", asym=new.asym)
        if not self.link.post_llc(self._add_link_msg(True, req.link_num), now):
            self._fail(now, "could not send the ADD LINK response")
            return
        self.tell_peer = True
        if lgr.version >= 2:
            lgr.rtoken_set(self.link.link_id, new.link_id, req.rkeys)
            self.wait("CONFIRM LINK", self.timeouts.llc_wait_first, now)
        else:
            self.to_send = lgr.rkey_triples(self.link, new)
            self.wait("ADD LINK CONT", self.timeouts.llc_wait, now)

    def _reject(self, now: float, why: str) -> None:
        req = self.req
        self.link.post_llc(llc.AddLink(version=req.version, response=True, rejected=True, reject_reason=ADD_LINK_REJ.NO_ALT_PATH, mac=req.mac,
                                       gid=req.gid, qpn=req.qpn, link_num=req.link_num, qp_mtu=req.qp_mtu, psn=req.psn), now)  # fmt: skip
        self.event(now, "add_link_rejected", link=req.link_num, reason=ADD_LINK_REJ.NO_ALT_PATH, why=why)
        self.finish(now)

    def on_llc(self, link: Link, msg: llc.LlcMessage, now: float) -> bool:
        lgr, new = self.lgr, self.new
        if self.peer_gave_up(link, msg, now):
            return True
        if self.step == "ADD LINK CONT" and isinstance(msg, llc.AddLinkCont) and msg.link_num == new.link_id:
            lgr.rtoken_set(self.link.link_id, new.link_id, msg.rkeys)
            self._rkey_cont(now, response=True)
            if self.to_send or msg.num_rkeys > len(msg.rkeys):
                self.wait("ADD LINK CONT", self.timeouts.llc_wait, now)
            else:
                self.wait("CONFIRM LINK", self.timeouts.llc_wait_first, now)
            return True
        if self.step == "CONFIRM LINK" and isinstance(msg, llc.ConfirmLink) and not msg.response and link is new:
            if not msg.rmbe_eyec_flags & 0x03:
                self._fail(now, "CONFIRM LINK without the no-RMBE-eyecatcher flags")
                return True
            self.ctx.io.qp_to_rts(new.qp.handle)
            new.peer_link_uid = msg.link_uid
            new.post_llc(confirm_link_msg(lgr, new, msg), now)
            self._confirmed(now)
            return True
        return False


class ClientInvite(LlcFlow):
    """The client has a device for a second link: v1 invites with an ADD LINK request
    carrying only that device's MAC and GID, v2 sends REQUEST ADD LINK with its GIDs."""

    def start(self, now: float) -> None:
        link, device = self.lgr.usable_link(), _alt_device(self.lgr)
        if link is not None and device is not None:
            if self.lgr.version >= 2:
                msg = llc.RequestAddLink(version=2, gids=(link.qp.gid, device.gid))
            else:
                msg = llc.AddLink(version=1, mac=device.mac, gid=device.gid, qpn=0, link_num=0, qp_mtu=0, psn=0)
            link.post_llc(msg, now)
            self.event(now, "add_link_requested", link=link.link_id, device=device.name)
        self.finish(now)


# --------------------------------------------------------------------------- deleting a link


class ServerDeleteLink(LlcFlow):
    def __init__(self, lgr: LinkGroup, link_id: int, reason: int, orderly: bool, from_peer: bool = False) -> None:
        super().__init__(lgr)
        self.link_id, self.reason, self.orderly, self.from_peer = link_id, reason, orderly, from_peer
        self.target: Link | None = None
        self.via: Link | None = None

    def start(self, now: float) -> None:
        lgr = self.lgr
        self.target = lgr.links.get(self.link_id)
        if self.target is None:  # already gone (an asymmetric link the peer deleted too)
            self.finish(now)
            return
        if self.target.usable:
            who = "the peer" if self.from_peer else "this host"
            lgr.fail_over(self.target, now, f"deleted by {who}: {_del_reason(self.reason)}")
            if lgr.terminated:
                return
        self.via = lgr.usable_link(avoid=self.target)
        if self.via is None:
            self._cleared(now)
            return
        self.via.post_llc(llc.DeleteLink(version=lgr.llc_version(), link_num=self.link_id, reason=self.reason, orderly=self.orderly), now)
        self.wait("DELETE LINK response", self.timeouts.llc_wait, now)

    def on_llc(self, link: Link, msg: llc.LlcMessage, now: float) -> bool:
        if self.step == "DELETE LINK response" and isinstance(msg, llc.DeleteLink) and msg.response:
            self._cleared(now)
            return True
        return False

    def on_timeout(self, now: float) -> None:
        self._cleared(now)

    def on_link_down(self, link: Link, now: float) -> None:
        if link is self.via and self.step == "DELETE LINK response":
            self._cleared(now)

    def _cleared(self, now: float) -> None:
        lgr = self.lgr
        lgr.clear_link(self.target, now)
        lgr.after_link_removed(self.target, now, expected_asym=self.reason == DEL.NO_ASYM_NEEDED)
        self.finish(now)
        if not lgr.terminated and lgr.type == LgrType.SINGLE:
            want_link(lgr, now, "link lost")


class ClientDeleteLink(LlcFlow):
    """The client lost a link: DELETE LINK request (orderly, lost path) on a survivor; no wait."""

    def __init__(self, lgr: LinkGroup, link_id: int, reason: int) -> None:
        super().__init__(lgr)
        self.link_id, self.reason = link_id, reason

    def start(self, now: float) -> None:
        lgr = self.lgr
        target = lgr.links.get(self.link_id)
        via = lgr.usable_link(avoid=target)
        if via is not None:
            via.post_llc(llc.DeleteLink(version=lgr.llc_version(), link_num=self.link_id, reason=self.reason, orderly=True), now)
        if target is not None:
            lgr.clear_link(target, now)
            lgr.after_link_removed(target, now)
        self.finish(now)


# --------------------------------------------------------------------------- requests from the peer


def peer_add_link(lgr: LinkGroup, link: Link, msg: llc.AddLink, now: float) -> None:
    if lgr.role == LgrRole.CLIENT:
        running = lgr.running
        if isinstance(running, ClientAddLink) and running.req.link_num != msg.link_num:
            # the server runs one ADD LINK at a time: a new one means it gave up the last
            running._fail(now, f"the server offers link {msg.link_num} instead")
        if not any(isinstance(f, ClientAddLink) for f in lgr.flows):  # one parked request, as the kernel's delayed_event
            lgr.start_flow(ClientAddLink(lgr, link, msg), now, front=True)
    elif not any(isinstance(f, ServerAddLink) for f in lgr.flows):  # a v1 invitation: the server runs its own flow
        lgr.start_flow(ServerAddLink(lgr, "client invitation"), now)


def answer_request_add_link(lgr: LinkGroup, link: Link, msg: llc.RequestAddLink, now: float) -> None:
    """smc_llc_send_req_add_link_response: the request flagged as a response, its GIDs cleared."""
    via = link if link.usable else lgr.usable_link()
    if via is not None:
        via.post_llc(llc.RequestAddLink(version=msg.version, response=True), now)


def peer_request_add_link(lgr: LinkGroup, link: Link, msg: llc.RequestAddLink, now: float) -> None:
    """A client asks for a link. It is always answered (the kernel client's REQUEST ADD LINK
    flow waits for that): by the ADD LINK of a flow started for it, or by a response when
    no link can be added (smc_llc_srv_add_link). One that comes while an add-link flow runs
    waits for it, and gets a flow of its own if that one added no link (the kernel drops
    such a request, and the group then stays SINGLE until the next port event)."""
    if lgr.role != LgrRole.SERVER:
        return
    flows = [f for f in (lgr.running, *lgr.flows) if isinstance(f, ServerAddLink)]
    if flows:
        flows[-1].take_request(link, msg)
        return
    lgr.start_flow(ServerAddLink(lgr, "client request", request=(link, msg)), now)


def peer_delete_link(lgr: LinkGroup, link: Link, msg: llc.DeleteLink, now: float) -> None:
    why = f"peer deleted the link group ({_del_reason(msg.reason)})"
    if msg.all:
        if lgr.role == LgrRole.SERVER:
            # smc_llc_process_srv_delete_link: smc_llc_send_link_delete_all(lgr, true, reason)
            link.post_llc(llc.DeleteLink(version=msg.version, link_num=0, reason=msg.reason, all=True, orderly=True), now)
        lgr.terminate(now, msg.reason, why, notify_peer=False)
        return
    if lgr.role == LgrRole.SERVER:  # the server drives: it runs the deletion as its own flow
        lgr.start_flow(ServerDeleteLink(lgr, msg.link_num, msg.reason, msg.orderly, from_peer=True), now, front=True)
        return
    target = lgr.links.get(msg.link_num)
    if target is not None and target.usable:
        lgr.fail_over(target, now, f"deleted by the peer: {_del_reason(msg.reason)}")
        if lgr.terminated:
            return
    via = link if link.usable else lgr.usable_link()
    if via is not None:
        via.post_llc(llc.DeleteLink(version=msg.version, response=True, link_num=msg.link_num, reason=0 if target else DEL.NOLNK), now)
    if target is not None:
        lgr.clear_link(target, now)
        lgr.after_link_removed(target, now, expected_asym=msg.reason == DEL.NO_ASYM_NEEDED)


# --------------------------------------------------------------------------- the dispatch table

Handler = Callable[[LinkGroup, Link, llc.LlcMessage, float], None]

# answered whatever flow holds the slot
BEFORE_FLOWS: dict[tuple[type, bool], Handler] = {
    (llc.TestLink, False): _test_link_request,
    (llc.TestLink, True): _test_link_response,
}
# what no flow claimed: (message type, response) -> handler; None: a first link's CONFIRM
# LINK, for the CLC handshake. Anything else (a response nobody waits for, an ADD LINK
# CONTINUATION nobody waits for, CONFIRM RKEY CONTINUATION) is dropped, as in Linux.
HANDLERS: dict[tuple[type, bool], Handler | None] = {
    (llc.ConfirmRkey, False): _confirm_rkey_request,
    (llc.DeleteRkey, False): _delete_rkey_request,
    (llc.DeleteLink, False): peer_delete_link,
    (llc.AddLink, False): peer_add_link,
    (llc.RequestAddLink, False): peer_request_add_link,
    (llc.ConfirmLink, False): None,
    (llc.ConfirmLink, True): None,
}
