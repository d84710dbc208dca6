"""The soft device's ICRC (encode_datagram: a per-flow CRC prefix, then the packet) equals the
frame path's (encode_frame -> icrc, which a ConnectX frame checks in test_wire_kat) for
every kind of packet: two implementations of one rule, so a change to either fails here."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stack.wire import roce

OPCODES = [roce.Opcode.SEND_ONLY, roce.Opcode.RDMA_WRITE_ONLY, roce.Opcode.ACKNOWLEDGE]


@given(opcode=st.sampled_from(OPCODES), qp=st.integers(1, 0xFFFFFF), psn=st.integers(0, 0xFFFFFF), payload=st.binary(max_size=300),
       fecn=st.booleans(), sport=st.integers(49152, 65535))  # fmt: skip
def test_datagram_and_frame_icrc_agree(opcode, qp, psn, payload, fecn, sport):
    bth = roce.Bth(opcode, qp, psn, fecn=fecn)
    if opcode == roce.Opcode.RDMA_WRITE_ONLY:
        packet = roce.RocePacket(bth, reth=roce.Reth(0x1000, 0x1234, len(payload)), payload=payload)
    elif opcode == roce.Opcode.ACKNOWLEDGE:
        packet = roce.RocePacket(bth, aeth=roce.Aeth(0, 0))
    else:
        packet = roce.RocePacket(bth, payload=payload)
    frame = roce.encode_frame(packet, "10.0.17.1", "10.0.18.1", sport)
    datagram = roce.encode_datagram(packet, "10.0.17.1", "10.0.18.1", sport)
    assert datagram[:-4] == frame[42:-4]
    assert datagram[-4:] == frame[-4:]
    assert roce.decode_frame(frame, check_icrc=True).icrc_ok
