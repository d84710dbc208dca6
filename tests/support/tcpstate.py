"""The kernel's state of one TCP socket, read from /proc/net/tcp and /proc/net/tcp6: how a
test sees who sent the first FIN (TIME_WAIT), who answered a FIN (CLOSE_WAIT) and whether a
connection was reset (gone at once). Used on the host and in the lab's VMs."""

from __future__ import annotations

import ipaddress

STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "06": "TIME_WAIT",
          "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}  # fmt: skip


def _hex(addr: tuple[str, int]) -> str:
    """An address and port as /proc/net/tcp* write them: the address's 32-bit words each in
    host (little-endian) order."""
    ip = ipaddress.ip_address(addr[0])
    raw = ip.packed
    words = "".join("%08X" % int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4))
    return f"{words}:{addr[1]:04X}"


def tcp_state(local: tuple[str, int], remote: tuple[str, int]) -> str | None:
    """The state of the TCP socket ``local`` -> ``remote`` (e.g. "TIME_WAIT"), None when the
    host has none."""
    v6 = ":" in local[0]
    want = (_hex(local), _hex(remote))
    with open("/proc/net/tcp6" if v6 else "/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == want:
                return STATES.get(fields[3], fields[3])
    return None
