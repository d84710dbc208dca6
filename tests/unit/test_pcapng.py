"""pcapng writer and reader: round trip, byte orders, and damaged files."""

from __future__ import annotations

import io
import struct

import pytest
from support.pcapng_files import old_style_file

from dissectors.pcapng import LINKTYPE_ETHERNET, LINKTYPE_USER0, PcapngError, PcapngWriter, read_packets


def _file(packets) -> bytes:
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    eth = w.add_interface(LINKTYPE_ETHERNET, "lo")
    user = w.add_interface(LINKTYPE_USER0, "events")
    for iface, ts, data, comment in packets:
        w.write_packet(eth if iface == 0 else user, ts, data, comment)
    return buf.getvalue()


PKTS = [(0, 1_764_000_000_123_456_789, b"\x01\x02\x03", "first"), (1, 1_764_000_000_200_000_000, b"x" * 61, None), (0, 5, b"", "empty")]


def test_round_trip_keeps_data_time_interface_and_comment():
    got = list(read_packets(_file(PKTS)))
    assert [(p.interface, p.timestamp_ns, p.data, p.comments) for p in got] == [
        (0, PKTS[0][1], b"\x01\x02\x03", ["first"]),
        (1, PKTS[1][1], b"x" * 61, []),
        (0, 5, b"", ["empty"]),
    ]
    assert [p.linktype for p in got] == [LINKTYPE_ETHERNET, LINKTYPE_USER0, LINKTYPE_ETHERNET]


def test_big_endian_microsecond_file_from_another_writer():
    shb = struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1)
    idb = struct.pack(">HHI", 1, 0, 65535)  # no if_tsresol: microseconds
    epb = struct.pack(">IIIII", 0, 0, 1_000_001, 4, 4) + b"abcd"

    def block(t, body):
        return struct.pack(">II", t, 12 + len(body)) + body + struct.pack(">I", 12 + len(body))

    data = block(0x0A0D0D0A, shb) + block(1, idb) + block(6, epb) + block(0xBAD, b"\0" * 8)
    (p,) = list(read_packets(data))
    assert p.data == b"abcd" and p.timestamp_ns == 1_000_001_000


def test_truncated_file_names_block_and_offset_and_keeps_the_good_packets():
    data = _file(PKTS)
    cut = data[:-10]
    reader = read_packets(cut)
    assert next(reader).comments == ["first"]
    assert next(reader).data == b"x" * 61
    with pytest.raises(PcapngError) as e:
        next(reader)
    assert e.value.block == 6 and e.value.block_type == 6 and "runs past the end of the file" in str(e.value)
    assert str(e.value).startswith("pcapng block 6 (type 0x00000006) at byte offset")
    assert len(list(read_packets(cut, strict=False))) == 2


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda d: b"\0\0\0\0" + d[4:], "starts with a section header block"),
        (lambda d: d[:8] + b"\x4d\x3c\x2b\x1b" + d[12:], "byte-order magic"),
        (lambda d: d[:-4] + b"\xff\xff\x00\x00", "trailing length"),
        (lambda d: d + b"\x01\x00", "too few for a block header"),
    ],
)
def test_corrupt_files_get_a_clear_error(mutate, words):
    with pytest.raises(PcapngError, match=words):
        list(read_packets(mutate(_file(PKTS))))


def test_packet_on_undescribed_interface():
    good = _file(PKTS[:1])
    # point the EPB at interface 7
    at = good.index(struct.pack("<I", 6))
    bad = good[: at + 8] + struct.pack("<I", 7) + good[at + 12 :]
    with pytest.raises(PcapngError, match="interface 7 was not described"):
        list(read_packets(bad))


def _block_starts(data: bytes) -> list[int]:
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        pos += struct.unpack_from("<I", data, pos + 4)[0]
    return starts


def test_a_cut_anywhere_is_named_by_where_its_block_starts_and_its_type_when_it_has_one():
    """The offset was sometimes the block's start and sometimes the field at fault (a cut
    SHB said offset 4, a cut header offset 0), and four bytes left were "unknown type"
    though they are the type."""
    data = _file(PKTS)
    starts = _block_starts(data)
    for n in range(1, len(data)):
        if n in starts:  # a cut between blocks is a shorter good file
            continue
        with pytest.raises(PcapngError) as e:
            list(read_packets(data[:n]))
        err = e.value
        assert err.start == starts[err.block - 1], (n, str(err))
        assert f"at byte offset {err.start}: " in str(err)
        if n - err.start >= 4:  # the type is there to read
            assert err.block_type == struct.unpack_from("<I", data, err.start)[0], (n, str(err))


@pytest.mark.parametrize("order", ["<", ">"])
def test_obsolete_packet_blocks_and_a_timestamp_offset_read_as_tshark_reads_them(order):
    got = list(read_packets(old_style_file(order)))
    assert [(p.interface, p.linktype, p.timestamp_ns, p.data, p.original_length, p.comments) for p in got] == [
        (0, LINKTYPE_ETHERNET, 1_700_000_001_500_000_000, b"abc", 60, ["old"]),
        (1, LINKTYPE_USER0, 2_000_000_000, b"xy", 2, []),  # (no offset on that interface)
        (0, LINKTYPE_ETHERNET, 1_700_000_002_250_000_000, b"z", 1, []),
    ]
    assert [p.data for p in read_packets(old_style_file(order), linktypes=frozenset({LINKTYPE_USER0}))] == [b"xy"]
    cut = old_style_file(order)[:-20]
    with pytest.raises(PcapngError, match="block 6 .*type 0x00000002"):
        list(read_packets(cut))


def test_a_simple_packet_block_is_left_out_when_its_link_type_is_not_wanted():
    def block(t, body):
        return struct.pack("<II", t, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    data = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)) + block(1, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 0))
    data += block(3, struct.pack("<I", 3) + b"abc\0")
    assert [p.data for p in read_packets(data)] == [b"abc"]
    assert list(read_packets(data, linktypes=frozenset({LINKTYPE_USER0}))) == []
