"""Property tests of the wire codecs: round trips, and hostile input.

Round trip: every message the strategies build encodes, and decodes back to itself.
Hostile input: arbitrary bytes and mutated valid encodings never raise anything but
the codec's own error (a ValueError subclass naming type, offset and reason).
Each decoder sees at least 10,000 hostile inputs.
"""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import strategies as S

from stack.wire import cdc, clc, inet, llc, roce
from stack.wire._base import WireError

FUZZ = settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND = settings(max_examples=1_500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SRC, DST = ipaddress.IPv4Address("127.1.0.1"), ipaddress.IPv4Address("127.1.0.2")


@ROUND
@given(S.clc_messages)
def test_clc_round_trip(msg):
    data = msg.encode()
    assert len(data) == int.from_bytes(data[5:7], "big")
    assert clc.decode(data) == msg


@ROUND
@given(S.llc_messages, st.sampled_from(["little", "big"]))
def test_llc_round_trip(msg, order):
    data = msg.encode(order)
    back = llc.decode(data, order=order)
    assert back == msg
    # "auto" finds the order on its own when given the exact message bytes
    assert llc.decode(data) == msg


@ROUND
@given(S.cdc_messages)
def test_cdc_round_trip(msg):
    data = msg.encode()
    assert len(data) == 44
    assert cdc.decode(data) == msg


@ROUND
@given(S.roce_packets(), st.integers(1024, 65535))
def test_roce_round_trip(packet, sport):
    datagram = roce.encode_datagram(packet, SRC, DST, sport)
    assert len(datagram) % 4 == 0
    assert roce.decode_datagram(datagram, SRC, DST, sport) == packet
    frame = roce.encode_frame(packet, SRC, DST, sport)
    decoded = roce.decode_frame(frame, check_icrc=True)
    assert decoded.packet == packet and decoded.icrc_ok
    assert decoded.udp.dport == roce.ROCE_V2_PORT and decoded.ip.checksum_ok


def _only_codec_error(decode, data, error):
    try:
        decode(data)
    except error as e:
        assert isinstance(e, ValueError) and isinstance(e, WireError)
        assert e.message_type and e.reason and e.offset >= 0
        assert str(e).startswith(e.message_type)


def _hostile(valid_messages, encode=lambda m: m.encode()):
    return st.one_of(st.binary(max_size=400), S.mutated(valid_messages, encode))


@FUZZ
@given(_hostile(S.clc_messages))
def test_clc_decode_hostile(data):
    _only_codec_error(clc.decode, data, clc.ClcError)


@FUZZ
@given(_hostile(S.clc_messages))
def test_clc_split_stream_hostile(data):
    _only_codec_error(clc.split_stream, data, clc.ClcError)


@FUZZ
@given(_hostile(S.llc_messages, lambda m: m.encode("little")), st.sampled_from(["auto", "little", "big"]))
def test_llc_decode_hostile(data, order):
    _only_codec_error(lambda d: llc.decode(d, order=order), data, llc.LlcError)


@FUZZ
@given(_hostile(S.cdc_messages))
def test_cdc_decode_hostile(data):
    _only_codec_error(cdc.decode, data, cdc.CdcError)


@FUZZ
@given(_hostile(S.roce_packets(), lambda p: roce.encode_frame(p, SRC, DST, 50000)))
def test_roce_decode_frame_hostile(data):
    _only_codec_error(roce.decode_frame, data, roce.RoceError)


@FUZZ
@given(_hostile(S.roce_packets(), lambda p: roce.encode_datagram(p, SRC, DST, 50000)), st.booleans())
def test_roce_decode_datagram_hostile(data, check):
    _only_codec_error(lambda d: roce.decode_datagram(d, SRC, DST, 50000, check_icrc=check), data, roce.RoceError)


@FUZZ
@given(st.binary(max_size=120))
def test_inet_decoders_hostile(data):
    _only_codec_error(inet.decode_ethernet, data, inet.InetError)
    _only_codec_error(inet.decode_ipv4, data, inet.InetError)
    _only_codec_error(inet.decode_udp, data, inet.InetError)
    _only_codec_error(inet.decode_tcp, data, inet.InetError)
