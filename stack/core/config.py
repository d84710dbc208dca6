"""Configuration of one SMC-R host: versions, EIDs, buffer sizes, limits and timeouts.

Defaults are the Linux kernel's (net.smc sysctls and the constants of net/smc).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stack.wire import clc


@dataclass(frozen=True)
class Timeouts:
    clc_wait: float = 6.0  # CLC_WAIT_TIME: Proposal, Accept, Confirm
    clc_wait_short: float = 1.0  # CLC_WAIT_TIME_SHORT: a Decline after a link timeout
    llc_wait: float = 2.0  # SMC_LLC_WAIT_TIME: any LLC response
    llc_wait_first: float = 5.0  # SMC_LLC_WAIT_FIRST_TIME: CONFIRM LINK on a new link
    client_confirm_link: float = 4.0  # client waits 2 * SMC_LLC_WAIT_TIME for CONFIRM LINK
    test_link: float = 30.0  # net.smc.smcr_testlink_time (0 disables)
    close_flush: float = 2.0  # how long close() waits for unsent data before aborting
    peer_first_bytes: float = 6.0  # server: wait this long for a Proposal before PEERNOSMC
    lgr_idle: float = 600.0  # an empty link group is freed after this


@dataclass(frozen=True)
class Limits:
    """A stack's resource limits, in the spirit of the RDMA cgroup (rdma.max: hca_handle,
    hca_object) and the kernel's own caps: link groups, QPs (one per link), memory
    registered for connection buffers (RMBs and send buffers, in bytes, counting each
    device a buffer is mapped on) and connections (SMC-R, handshakes included). None: no
    limit. Past a limit a server declines the Proposal and a client the Accept, with the
    kernel's codes (``Directory.over_limit``); a second link is simply not added."""

    lgrs: int | None = 128
    qps: int | None = 256
    reg_mem: int | None = 1 << 30
    conns: int | None = 1024

    def __post_init__(self) -> None:
        for name in ("lgrs", "qps", "reg_mem", "conns"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"limit {name} must be a whole number >= 0 or None, not {v!r}")


@dataclass(frozen=True)
class SmcConfig:
    host: str = "host"
    versions: frozenset[int] = frozenset({1, 2})
    ueids: tuple[str, ...] = ("SMCTOP",)
    rmb_size: int = 64 << 10  # net.smc.rmem: RMB per connection (rounded up to a power of two)
    sndbuf_size: int = 64 << 10  # net.smc.wmem
    max_conns: int = 255  # net.smc.smcr_max_conns_per_lgr
    max_links: int = 2  # net.smc.smcr_max_links_per_lgr
    release: int = 1  # SMC-Rv2 release 1 (v2.1)
    # The v1 IP prefix (smc_clc_prfx_set, smc_clc_prfx_match). None: the addresses of the net
    # device of the TCP connection's route, which the runtime reads from the OS, as the kernel
    # does. A number overrides them: the TCP address with this prefix length (at most 32 for
    # IPv4), for the Proposal and the match alike (a test forcing DIFFPREFIX, a host whose
    # interfaces cannot be read).
    prefix_len: int | None = None
    forced_decline: int | None = None  # server: decline every Proposal with this reason
    # False: an RMB's registration ends with its connection: once the peer has answered
    # DELETE RKEY, its rkey is deregistered and the memory freed, so no key outlives the
    # connection it was given for. True: the kernel's pooling (smcr_buf_unuse keeps the RMB
    # registered for the group's next connection).
    rmb_keep_registered: bool = False
    llc_v2_order: str = "little"  # byte order of v2 LLC lengths we send (x86-64 Linux)
    send_queue: int = 128  # send WRs per link QP
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        for eid in self.ueids:
            clc.make_eid(eid)  # raises ValueError on a malformed UEID
        if not self.versions or not self.versions <= {1, 2}:
            raise ValueError(f"versions {set(self.versions)} must be a non-empty subset of {{1, 2}}")
        if self.rmb_size < 16384 or self.sndbuf_size < 16384:
            raise ValueError("RMB and send buffer are at least 16 KiB")
        if not 16 <= self.max_conns <= 255:
            raise ValueError(f"max_conns {self.max_conns} is outside 16..255")
        if not 1 <= self.max_links <= 2:
            raise ValueError(f"max_links {self.max_links} is outside 1..2")
        if self.prefix_len is not None and not 0 <= self.prefix_len <= 128:
            raise ValueError(f"prefix_len {self.prefix_len} is outside 0..128")
        if self.llc_v2_order not in ("little", "big"):
            raise ValueError("llc_v2_order is 'little' or 'big'")

    @property
    def v2(self) -> bool:
        """SMC-Rv2 needs at least one UEID, as in Linux."""
        return 2 in self.versions and bool(self.ueids)

    @property
    def eids(self) -> tuple[bytes, ...]:
        return tuple(clc.make_eid(e) for e in self.ueids)
