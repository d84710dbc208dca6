"""Byte-exact SMC-R codecs. Pure: no I/O, no clocks.

``clc`` (handshake on TCP), ``llc`` (link control over RDMA SEND), ``cdc`` (connection
data control), ``roce`` (RoCEv2 transport headers and ICRC), ``inet`` (Ethernet, IPv4,
UDP, TCP), ``codes`` (reason codes and state names).
"""

from ._base import WireError

__all__ = ["WireError"]
