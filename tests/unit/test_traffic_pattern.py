"""smc-traffic's byte-for-byte check: every corrupted byte is caught, wherever it falls
(inside a read, at its edges, across the pattern block's end), for bytes, bytearray and
memoryview reads, and the CRC follows the bytes actually received."""

import platform
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from native import softroce
from native.extension import Extension
from stack.traffic.protocol import BLOCK, Pattern, crc32


def _stream(seed: int, n: int) -> bytes:
    p = Pattern(seed)
    out = bytearray()
    while len(out) < n:
        out += p.next(n - len(out))
    return bytes(out)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_clean_stream_verifies_in_any_read_sizes(kind):
    data = _stream(7, BLOCK + 300_000)  # crosses the block's end
    checker = Pattern(7)
    pos = 0
    for size in (1, 4, 65536, 1000, BLOCK + 5, 1 << 16):
        piece = data[pos : pos + size]
        assert checker.check(kind(piece))
        pos += len(piece)
    assert checker.check(kind(data[pos:]))
    assert checker.offset == len(data) and checker.crc == zlib.crc32(data)


@pytest.mark.parametrize("where", [0, 1, 65535, 65536, BLOCK - 1, BLOCK, BLOCK + 1, BLOCK + 299_999])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_one_flipped_byte_fails(where, kind):
    data = bytearray(_stream(3, BLOCK + 300_000))
    data[where] ^= 0x01
    checker = Pattern(3)
    ok = True
    for pos in range(0, len(data), 65536):
        ok &= checker.check(kind(bytes(data[pos : pos + 65536])))
    assert not ok
    assert checker.crc == zlib.crc32(data)  # the CRC is of what came, so the trailer check fails too


def test_whole_read_larger_than_a_block_with_a_bad_last_byte():
    data = bytearray(_stream(11, 2 * BLOCK + 17))
    data[-1] ^= 0x80
    assert not Pattern(11).check(bytes(data))


@given(st.binary(max_size=5000), st.integers(0, 0xFFFFFFFF), st.integers(0, 15))
def test_the_checksum_is_zlibs_crc32_whichever_runs(data, seed, skip):
    """smc-traffic's CRC-32 (the compiled engine's fold when built) gives zlib's values for
    any length, start value and alignment, so either end may run either one."""
    view = memoryview(data)[min(skip, len(data)) :]
    assert crc32(view, seed) == zlib.crc32(view, seed)


@pytest.mark.skipif(platform.machine() != "x86_64" or not softroce.available()[0], reason="the tables and the fold are x86-64's")
def test_the_compiled_crc_runs_its_fast_paths_on_x86_64():
    # both agree with zlib (above) whether or not they run: a self-test that switched one off
    # at load (it disagreed with zlib) would leave the values right and the speed gone
    m = softroce.load()
    assert m.CRC_SMALL == 1  # pieces under 64 bytes (every frame's ICRC headers) by tables
    flags = open("/proc/cpuinfo").read().split()
    assert m.CRC_FOLDED == int("pclmulqdq" in flags and "sse4_1" in flags)  # the rest folded with PCLMULQDQ where the CPU has it


def test_without_the_compiled_engine_the_checksum_is_zlibs(monkeypatch):
    missing = Extension("_softroce", "the compiled soft RoCE engine", softroce.BUILD_HINT, softroce.EngineUnavailable, "/nonexistent/_softroce.so")
    monkeypatch.setattr(softroce, "_EXT", missing)
    assert softroce.crc32_function() is zlib.crc32
