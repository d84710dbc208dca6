"""Compressed captures, read as tshark reads them (dissectors/compressed.py): gzip (what
`tcpdump -z gzip` leaves), zstd and LZ4 give the same events as the plain file; several
streams one after another are one file; a stream cut short or damaged keeps the events
before it and says what was wrong; a missing module, nothing to read or a stream that grows
past the limit is an error naming the file, never a traceback."""

from __future__ import annotations

import gzip
import importlib
import struct
import zlib
from pathlib import Path

import lz4.frame
import pytest
import zstandard
from support.pcapng_files import classic_pcap

from dissectors import cli, compressed
from dissectors.capture import CaptureError, FileError, read_events
from dissectors.compressed import InflateError, inflate
from dissectors.pcap import read_pcap
from smctop.sources import load_events
from stack.events import Skipped, to_json

KERNEL_CAPTURE = Path(__file__).resolve().parents[1] / "lab" / "fixtures" / "kernel_interop_smcr.pcap"


def _in_blocks(what: str, parts: list[bytes]) -> list[bytes]:
    """As a writer that flushes as it goes (dumpcap, a pipe through the compressor): each part
    ends a block, so a cut keeps the parts before it. The stream's pieces, one a part."""
    if what == "gzip":
        c = zlib.compressobj(6, zlib.DEFLATED, 31)
        flush = lambda: c.flush(zlib.Z_FULL_FLUSH)  # noqa: E731
        head = b""
    elif what == "zstd":
        c = zstandard.ZstdCompressor().compressobj()
        flush = lambda: c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)  # noqa: E731
        head = b""
    else:
        c = lz4.frame.LZ4FrameCompressor(auto_flush=True)
        flush = lambda: b""  # noqa: E731
        head = c.begin()
    pieces = [c.compress(p) + flush() for p in parts]
    pieces[0] = head + pieces[0]
    pieces[-1] += c.flush()
    return pieces


PACK = {
    "gzip": gzip.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "lz4": lz4.frame.compress,
}


def _json(events) -> list[str]:
    return [to_json(e) for e in events]


@pytest.fixture(scope="module")
def plain() -> tuple[bytes, list[str]]:
    data = KERNEL_CAPTURE.read_bytes()
    return data, _json(read_events(data))


@pytest.mark.parametrize("what", sorted(PACK))
def test_a_compressed_capture_gives_the_plain_ones_events(plain, tmp_path, what):
    data, events = plain
    path = tmp_path / f"host.pcap.{what}"
    path.write_bytes(PACK[what](data))
    assert compressed.kind(path.read_bytes()) == what
    assert _json(read_events(path)) == events and len(events) > 100
    assert sorted(_json(load_events(str(path)))) == sorted(events)  # smctop --replay (it sorts by time)


@pytest.mark.parametrize("what", sorted(PACK))
def test_streams_one_after_another_are_one_file(plain, what):
    data, events = plain
    cut = len(data) // 3
    joined = PACK[what](data[:cut]) + PACK[what](data[cut:])  # as `cat a.gz b.gz`, or a writer that restarted its stream
    out, damage = inflate(joined, "joined", 1 << 30)
    assert out == data and damage is None
    assert _json(read_events(joined)) == events
    out, damage = inflate(PACK[what](data) + b"\0" * 512, "padded", 1 << 30)  # zeros after the end: nothing
    assert out == data and damage is None


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_rotated_pcap_files_joined_by_cat_read_as_the_capture_they_were(plain, gz):
    """``tcpdump -C`` or ``-G`` rotates its files; an operator who joins them with ``cat``
    (or their ``-z gzip`` files) has one pcap file holding several headers. Each part is read
    with its own header (here the second in the other byte order and in nanoseconds), as if
    it were one capture; tshark stops at the second header as at a damaged record."""
    data, events = plain
    packets = list(read_pcap(data))
    cut = len(packets) // 2
    parts = [classic_pcap(packets[:cut], "<", False), classic_pcap(packets[cut:], ">", True)]
    joined = b"".join(gzip.compress(p) for p in parts) if gz else b"".join(parts)
    assert _json(read_events(joined)) == events
    with pytest.raises(CaptureError, match=f"pcap record {cut + 1} at byte offset {len(parts[0])}: captured length"):
        list(read_pcap(parts[0] + b"\xa1\xb2\xc3\xd4" + struct.pack("<HHiIII", 9, 9, 0x7FFFFFFF, 0, 65535, 1)))  # a magic, but not a 2.4 header


def test_a_compressed_jsonl_recording_replays(plain, tmp_path):
    _, events = plain
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(("\n".join(events) + "\n").encode()))
    assert _json(read_events(path)) == events
    assert sorted(_json(load_events(str(path)))) == sorted(events)


@pytest.mark.parametrize("what", sorted(PACK))
def test_a_stream_cut_short_keeps_what_came_before_and_says_so(plain, tmp_path, what):
    data, events = plain
    step = len(data) // 8
    parts = [data[i : i + step] for i in range(0, len(data), step)]
    pieces = _in_blocks(what, parts)
    path = tmp_path / f"cut.{what}"
    path.write_bytes(b"".join(pieces[:5]) + pieces[5][: len(pieces[5]) // 2])  # cut in the sixth part
    got: list = []
    with pytest.raises(CaptureError, match=rf"the {what} stream ends early, after [\d,]+ bytes decompressed: the file is cut short") as e:
        for ev in read_events(path):
            got.append(ev)
    out, damage = inflate(path.read_bytes(), "cut", 1 << 30)
    assert data.startswith(out) and len(out) >= 5 * step and "ends early" in damage  # all five parts, maybe more
    before: list = []  # the same capture, plain, cut where the compressed one gave out
    with pytest.raises(CaptureError) as plain_cut:
        for ev in read_events(out):
            before.append(ev)
    assert _json(got) == _json(before) and len(got) >= len(events) // 2
    assert str(e.value).endswith(f"in what it held, {plain_cut.value}")  # and where the capture in it stops


def test_a_damaged_stream_names_where_and_keeps_what_came_before(plain, tmp_path):
    data, _ = plain
    packed = bytearray(gzip.compress(data * 4))
    packed[len(packed) // 2] ^= 0xFF
    path = tmp_path / "bad.pcap.gz"
    path.write_bytes(bytes(packed))
    got: list = []
    with pytest.raises(CaptureError, match=r"the gzip stream that starts at byte offset 0 is damaged near byte offset [\d,]+, after [\d,]+ bytes decompressed"):
        for ev in read_events(path):
            got.append(ev)
    assert got
    assert cli.main(["summary", str(path)]) == 1  # summary of what it held, and the error


def test_bytes_after_the_last_stream_that_are_not_one_are_named(plain):
    data, events = plain
    got: list = []
    with pytest.raises(CaptureError, match=r"8 bytes after the last gzip stream at byte offset [\d,]+ are not gzip: they are left out"):
        for ev in read_events(gzip.compress(data) + b"junkjunk"):
            got.append(ev)
    assert _json(got) == events


def test_what_cannot_be_read_at_all_is_an_error_naming_the_file(plain, tmp_path, capsys):
    data, _ = plain
    tiny = tmp_path / "tiny.pcap.gz"
    tiny.write_bytes(gzip.compress(data)[:6])
    with pytest.raises(FileError, match=r"cannot read .*tiny.pcap.gz: the gzip stream ends early, after 0 bytes"):
        list(read_events(tiny))
    assert cli.main(["summary", str(tiny)]) == 1
    err = capsys.readouterr().err
    assert "tiny.pcap.gz" in err and "Traceback" not in err
    bomb = gzip.compress(b"\0" * (8 << 20))
    with pytest.raises(InflateError, match=r"decompresses to more than the 1,048,576 bytes"):
        inflate(bomb, "bomb.gz", 1 << 20)
    with pytest.raises(InflateError, match="holds nothing"):
        inflate(gzip.compress(b""), "empty.gz", 1 << 20)


def test_a_missing_module_says_what_to_install_or_run(plain, tmp_path, monkeypatch):
    data, _ = plain
    path = tmp_path / "host.pcap.zst"
    path.write_bytes(PACK["zstd"](data))
    real = importlib.import_module

    def without_zstandard(name, *a, **kw):
        if name == "zstandard":
            raise ImportError("No module named 'zstandard'")
        return real(name, *a, **kw)

    monkeypatch.setattr(compressed.importlib, "import_module", without_zstandard)
    said = r"host.pcap.zst is compressed with zstd, and reading it needs the Python module zstandard \(pip install zstandard\)"
    with pytest.raises(FileError, match=said + "; or decompress it first: zstd -d"):
        list(read_events(path))
    skipped = Skipped()
    with pytest.raises(Exception, match="pip install zstandard"):
        load_events(str(path), skipped)


@pytest.mark.parametrize("what", ["gzip", "zstd", "lz4"])
def test_a_compressed_file_of_something_else_says_it_was_decompressed(tmp_path, what):
    """The bytes a refusal quotes are the decompressed ones, not the file's: it says so."""
    inner = bytes(range(200, 256)) * 4
    packed = {"gzip": gzip.compress, "zstd": zstandard.ZstdCompressor().compress, "lz4": lz4.frame.compress}[what](inner)
    path = tmp_path / "odd.bin"
    path.write_bytes(packed)
    with pytest.raises(CaptureError) as err:
        list(read_events(str(path)))
    assert str(err.value).startswith(f"{what}-compressed, and what it holds is not a pcap or pcapng file: it starts with c8c9cacb"), err.value
    with pytest.raises(CaptureError) as err:  # the same bytes uncompressed: no word of compression
        list(read_events(inner))
    assert str(err.value).startswith("not a pcap or pcapng file: it starts with c8c9cacb"), err.value
