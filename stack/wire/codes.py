"""Code tables of SMC-R: decline/fallback reasons, DELETE LINK reasons, socket, link
and link-group states, with the kernel's names and a one-line meaning.

Numbers travel as numbers everywhere in smctop; they become text only here, in
the form smc-tools prints them (``0x03030000 NOSMCDEV``).

Sources: Linux ``net/smc/smc_clc.h`` (current and first mainline version 2017),
``net/smc/smc_llc.h``, ``net/smc/smc.h``, ``net/smc/smc_core.h``; smc-tools
``smcss``/``smcr``. Decline values changed between kernel versions (IPSEC was
0x03030000 in 2017 and is 0x03020000 now; 0x03030000 is now NOSMCDEV), so the
historical table is kept apart and chosen explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Iterator


@dataclass(frozen=True)
class Code:
    value: int
    name: str
    meaning: str

    def __str__(self) -> str:
        return f"0x{self.value:08x} {self.name}"


class CodeTable:
    """A lookup table of 32-bit codes with a name and a meaning each."""

    def __init__(self, title: str, entries: list[tuple[int, str, str]]) -> None:
        self.title = title
        self._by_value = {value: Code(value, name, meaning) for value, name, meaning in entries}
        self._by_name = {code.name: code for code in self._by_value.values()}
        if len(self._by_value) != len(entries) or len(self._by_name) != len(entries):
            raise ValueError(f"{title}: duplicate value or name")

    def __iter__(self) -> Iterator[Code]:
        return iter(self._by_value.values())

    def __len__(self) -> int:
        return len(self._by_value)

    def __contains__(self, value: int) -> bool:
        return value in self._by_value

    def get(self, value: int) -> Code | None:
        return self._by_value.get(value)

    def by_name(self, name: str) -> Code:
        try:
            return self._by_name[name.upper()]
        except KeyError:
            raise KeyError(f"{self.title}: no code named {name!r}") from None

    def name(self, value: int) -> str:
        code = self._by_value.get(value)
        return code.name if code else "UNKNOWN"

    def meaning(self, value: int) -> str:
        code = self._by_value.get(value)
        return code.meaning if code else f"not a known {self.title} code"

    def format(self, value: int) -> str:
        """smc-tools form: ``0x03030000 NOSMCDEV`` (``0x12345678 UNKNOWN`` when unknown)."""
        return f"0x{value:08x} {self.name(value)}"


# net/smc/smc_clc.h SMC_CLC_DECL_* as of 2024/25. Byte 0 is the class (01 resources,
# 02 timeout, 03 configuration, 04 sync, 05 peer decline, 09 internal).
DECLINE_REASONS = CodeTable(
    "decline reason",
    [
        (0x01010000, "MEM", "insufficient memory resources"),
        (0x02010000, "TIMEOUT_CL", "timeout waiting for CONFIRM LINK"),
        (0x02020000, "TIMEOUT_AL", "timeout waiting for ADD LINK"),
        (0x03000000, "CNFERR", "configuration error"),
        (0x03010000, "PEERNOSMC", "peer did not indicate SMC (no SMC TCP option)"),
        (0x03020000, "IPSEC", "IPsec in use on the connection"),
        (0x03030000, "NOSMCDEV", "no SMC device found (neither SMC-R nor SMC-D)"),
        (0x03030001, "NOSMCDDEV", "no SMC-D device found"),
        (0x03030002, "NOSMCRDEV", "no SMC-R (RoCE) device found"),
        (0x03030003, "NOISM2SUPP", "hardware has no ISMv2 support"),
        (0x03030004, "NOV2EXT", "peer sent no CLC v2 extension"),
        (0x03030005, "NOV2DEXT", "peer sent no SMC-Dv2 extension"),
        (0x03030006, "NOSEID", "peer sent no system EID"),
        (0x03030007, "NOSMCD2DEV", "no SMC-Dv2 device found"),
        (0x03030008, "NOUEID", "peer sent no user EID, or none matches"),
        (0x03030009, "RELEASEERR", "release version negotiation failed"),
        (0x0303000A, "MAXCONNERR", "max connections negotiation failed"),
        (0x0303000B, "MAXLINKERR", "max links negotiation failed"),
        (0x03040000, "MODEUNSUPP", "SMC modes do not match"),
        (0x03050000, "RMBE_EC", "peer uses an RMBE eyecatcher (unsupported)"),
        (0x03060000, "OPTUNSUPP", "socket option (TCP fast open) not supported"),
        (0x03070000, "DIFFPREFIX", "IP prefix / subnet mismatch"),
        (0x03080000, "GETVLANERR", "cannot determine the VLAN of the IP device"),
        (0x03090000, "ISMVLANERR", "cannot register the VLAN on the ISM device"),
        (0x030A0000, "NOACTLINK", "no active SMC-R link in the link group"),
        (0x030B0000, "NOSRVLINK", "SMC-R link named by the server not found"),
        (0x030C0000, "VERSMISMAT", "SMC version mismatch"),
        (0x030D0000, "MAX_DMB", "SMC-D DMB limit exceeded"),
        (0x030E0000, "NOROUTE", "SMC-Rv2: no route to the peer"),
        (0x030F0000, "NOINDIRECT", "SMC-Rv2: direct/indirect route mismatch"),
        (0x04000000, "SYNCERR", "synchronization error (link group out of sync)"),
        (0x05000000, "PEERDECL", "peer declined during the handshake"),
        (0x09990000, "INTERR", "internal error"),
        (0x09990001, "ERR_RTOK", "rtoken handling failed"),
        (0x09990002, "ERR_RDYLNK", "RDMA link could not be made ready"),
        (0x09990003, "ERR_REGBUF", "RDMA buffer registration failed"),
    ],
)

# The first mainline version (Linux 4.11, 2017). Kept because captures and peers of
# that era use these values: 0x03030000 meant IPSEC, INTERR was 0x99990000.
DECLINE_REASONS_2017 = CodeTable(
    "decline reason (2017)",
    [
        (0x01010000, "MEM", "insufficient memory resources"),
        (0x02000000, "TIMEOUT", "timeout"),
        (0x02040000, "TCL", "timeout waiting for QP confirm"),
        (0x03000000, "CNFERR", "configuration error"),
        (0x03030000, "IPSEC", "IPsec in use on the connection"),
        (0x04000000, "SYNCERR", "synchronization error"),
        (0x06000000, "REPLY", "reply to a received decline"),
        (0x07000000, "SEND", "sending problem"),
        (0x99990000, "INTERR", "internal error"),
    ],
)

DECLINE_ERAS = {"current": DECLINE_REASONS, "2017": DECLINE_REASONS_2017}

# Reasons the kernel falls back for without sending a Decline (digest section 4.3).
FALLBACK_WITHOUT_DECLINE = frozenset({0x03010000, 0x03060000, 0x05000000})


def decline_table(era: str = "current") -> CodeTable:
    try:
        return DECLINE_ERAS[era]
    except KeyError:
        raise ValueError(f"unknown decline code era {era!r}; choose one of {sorted(DECLINE_ERAS)}") from None


def format_reason(value: int, era: str = "current") -> str:
    """``0x03030000 NOSMCDEV`` as smc-tools prints a fallback or decline reason."""
    return decline_table(era).format(value)


def sends_decline(reason: int) -> bool:
    """True when falling back for ``reason`` sends a CLC Decline to the peer (kernel rule)."""
    return reason not in FALLBACK_WITHOUT_DECLINE


# net/smc/smc_llc.h SMC_LLC_DEL_*: DELETE LINK request reasons and response codes.
DELETE_LINK_REASONS = CodeTable(
    "delete link reason",
    [
        (0x00000000, "OK", "response: link deleted"),
        (0x00010000, "LOST_PATH", "link lost its path (port or QP failure)"),
        (0x00020000, "OP_INIT_TERM", "operator-initiated termination"),
        (0x00030000, "PROG_INIT_TERM", "program-initiated termination (inactivity or link group freed)"),
        (0x00040000, "PROT_VIOL", "LLC protocol violation"),
        (0x00050000, "NO_ASYM_NEEDED", "asymmetric link no longer needed"),
        (0x00100000, "NOLNK", "response: unknown link id"),
        (0x00200000, "NOLGR", "response: unknown link group"),
    ],
)

ADD_LINK_REJECT_REASONS = CodeTable(
    "add link reject reason",
    [(0x1, "NO_ALT_PATH", "no alternate path available")],
)


class CodeNames:
    """The codes of a table as attributes named as the kernel names them: ``DECL.PEERNOSMC``
    is SMC_CLC_DECL_PEERNOSMC (0x03010000), ``DEL.LOST_PATH`` is SMC_LLC_DEL_LOST_PATH. The
    stack takes every code's number from here; no other file restates one."""

    def __init__(self, table: CodeTable) -> None:
        for code in table:
            setattr(self, code.name, code.value)


DECL = CodeNames(DECLINE_REASONS)  # SMC_CLC_DECL_*
DEL = CodeNames(DELETE_LINK_REASONS)  # SMC_LLC_DEL_*
ADD_LINK_REJ = CodeNames(ADD_LINK_REJECT_REASONS)  # SMC_LLC_REJ_RSN_*


class SmcState(IntEnum):
    """enum smc_state (net/smc/smc.h), as sock_diag exports it in diag_state."""

    ACTIVE = 1
    INIT = 2
    CLOSED = 7
    LISTEN = 10
    PEERCLOSEWAIT1 = 20
    PEERCLOSEWAIT2 = 21
    APPCLOSEWAIT1 = 22
    APPCLOSEWAIT2 = 23
    APPFINCLOSEWAIT = 24
    PEERFINCLOSEWAIT = 25
    PEERABORTWAIT = 26
    PROCESSABORT = 27


SMC_STATE_MEANINGS = {
    SmcState.ACTIVE: "connection established, data may flow",
    SmcState.INIT: "CLC handshake not yet complete",
    SmcState.CLOSED: "connection closed",
    SmcState.LISTEN: "listening socket",
    SmcState.PEERCLOSEWAIT1: "we closed or shut down writing; waiting for the peer",
    SmcState.PEERCLOSEWAIT2: "peer is done writing; waiting for the peer to close",
    SmcState.APPCLOSEWAIT1: "peer closed or shut down writing; waiting for the application",
    SmcState.APPCLOSEWAIT2: "peer closed and we shut down writing; waiting for the application",
    SmcState.APPFINCLOSEWAIT: "peer closed; waiting for the application's final close",
    SmcState.PEERFINCLOSEWAIT: "we closed; waiting for the peer's close",
    SmcState.PEERABORTWAIT: "connection aborted; waiting for cleanup",
    SmcState.PROCESSABORT: "peer aborted; abort being processed",
}


class LinkState(IntEnum):
    """enum smc_link_state (net/smc/smc_core.h); smc-tools prints LINK_<name>."""

    UNUSED = 0
    INACTIVE = 1
    ACTIVATING = 2
    ACTIVE = 3

    @property
    def smc_tools_name(self) -> str:
        return f"LINK_{self.name}"


LINK_STATE_MEANINGS = {
    LinkState.UNUSED: "link slot free",
    LinkState.INACTIVE: "link down or being cleared",
    LinkState.ACTIVATING: "link created, QP not yet confirmed",
    LinkState.ACTIVE: "link confirmed and usable",
}


class LgrType(IntEnum):
    """enum smc_lgr_type (net/smc/smc_core.h)."""

    NONE = 0
    SINGLE = 1
    SYMMETRIC = 2
    ASYMMETRIC_PEER = 3
    ASYMMETRIC_LOCAL = 4

    @property
    def smc_tools_name(self) -> str:
        return _LGR_SHORT[self]

    @property
    def critical(self) -> bool:
        """smc-tools' Crit flag: no failover path exists (SINGLE or locally asymmetric)."""
        return self in (LgrType.SINGLE, LgrType.ASYMMETRIC_LOCAL)


_LGR_SHORT = {
    LgrType.NONE: "NONE",
    LgrType.SINGLE: "SINGLE",
    LgrType.SYMMETRIC: "SYM",
    LgrType.ASYMMETRIC_PEER: "ASYMP",
    LgrType.ASYMMETRIC_LOCAL: "ASYML",
}

LGR_TYPE_MEANINGS = {
    LgrType.NONE: "no active link; link group about to be deleted",
    LgrType.SINGLE: "one link, no redundancy",
    LgrType.SYMMETRIC: "two links over two RNICs on each side",
    LgrType.ASYMMETRIC_PEER: "two local RNICs, the peer has one",
    LgrType.ASYMMETRIC_LOCAL: "one local RNIC, the peer has two",
}


class LgrRole(IntEnum):
    CLIENT = 0  # SMC_CLNT
    SERVER = 1  # SMC_SERV


class DiagMode(IntEnum):
    """smc_diag_msg.diag_mode: what smcss prints in the Mode column."""

    SMCR = 0
    TCP = 1
    SMCD = 2
