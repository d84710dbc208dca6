"""Captures compressed as tshark reads them: gzip (``tcpdump -z gzip``, ``*.pcap.gz``), zstd
and LZ4 frames, told by their magic, not their name. Several streams one after another (a
``cat`` of compressed files) are read as one file, as gzip and zstd define it.

:func:`inflate` gives the file's bytes and, when the compressed stream is cut short (a capture
still being written) or damaged part way, what was wrong with it: the bytes before that are
kept, and the reader says where the file ends. A stream that yields nothing, a module that is
not installed, or more than the reader's limit is an error naming the file."""

from __future__ import annotations

import importlib
import zlib

GZIP, ZSTD, LZ4 = b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18"
MAGICS = {GZIP: "gzip", ZSTD: "zstd", LZ4: "lz4"}
MODULES = {"zstd": ("zstandard", "zstd -d"), "lz4": ("lz4.frame", "lz4 -d")}
CHUNK = 4096  # compressed bytes a step: what one step can grow to stays far below the limit (zstd: ~128 MiB at worst)
STEP_OUT = 1 << 20  # decompressed bytes a step of gzip and LZ4, which can bound it


class InflateError(ValueError):
    """The compressed file cannot be read at all: the message says why and what to do."""


def kind(head: bytes) -> str | None:
    """``"gzip"``, ``"zstd"`` or ``"lz4"`` for a file starting with ``head``, else None."""
    return MAGICS.get(head[:2]) or MAGICS.get(head[:4])


def _decoder(what: str):
    if what == "gzip":
        return zlib.decompressobj(31)  # 31: the gzip header and trailer, checked (CRC-32, length)
    module, _ = MODULES[what]
    mod = importlib.import_module(module)
    return mod.ZstdDecompressor().decompressobj() if what == "zstd" else mod.LZ4FrameDecompressor()


def _step(dec, what: str, data: bytes, out: bytearray, limit: int) -> bytes:
    """Feed ``data`` to one stream's decoder; returns what is left over after its end."""
    if what == "zstd":
        out += dec.decompress(data)
    elif what == "gzip":
        while data:
            out += dec.decompress(data, STEP_OUT)
            if len(out) > limit:
                return b""
            data = dec.unconsumed_tail
    else:
        out += dec.decompress(data, STEP_OUT)
        while not dec.eof and not dec.needs_input and len(out) <= limit:
            out += dec.decompress(b"", STEP_OUT)
    return (dec.unused_data or b"") if dec.eof else b""  # LZ4's is None when nothing is left


def inflate(data: bytes, name: str, limit: int) -> tuple[bytes, str | None]:
    """The decompressed bytes of ``data`` (a whole file called ``name``) and what went wrong
    part way (None: every stream complete). Raises InflateError when nothing can be read."""
    what = kind(data)
    if what is None:
        return data, None
    try:
        _decoder(what)
    except ImportError:
        module, tool = MODULES[what]
        raise InflateError(f"{name} is compressed with {what}, and reading it needs the Python module {module.split('.')[0]} "
                           f"(pip install {module.split('.')[0]}); or decompress it first: {tool} {name}") from None  # fmt: skip
    out = bytearray()
    pos = 0
    damage = None
    while pos < len(data):
        if kind(data[pos : pos + 4]) != what:
            rest = data[pos:]
            if not rest.strip(b"\0"):  # zeros after the last stream (a block device's padding): nothing
                break
            damage = f"{len(rest):,} bytes after the last {what} stream at byte offset {pos:,} are not {what}: they are left out"
            break
        dec = _decoder(what)
        start = pos
        try:
            while pos < len(data) and not dec.eof:
                chunk = data[pos : pos + CHUNK]
                left = _step(dec, what, chunk, out, limit)
                if len(out) > limit:
                    raise InflateError(f"cannot read {name}: it decompresses to more than the {limit:,} bytes smc-trace reads")
                pos += len(chunk) - len(left)
        except InflateError:
            raise
        except MemoryError:
            raise InflateError(f"cannot read {name}: not enough memory for what it decompresses to") from None
        except Exception as e:  # zlib.error, LZ4's RuntimeError, zstd's ZstdError: the stream's own complaint
            damage = f"the {what} stream that starts at byte offset {start:,} is damaged near byte offset {pos:,}, after {len(out):,} bytes decompressed: {e}"
            break
        if not dec.eof:
            damage = f"the {what} stream ends early, after {len(out):,} bytes decompressed: the file is cut short (a capture still being written?)"
            break
    if not out:
        raise InflateError(f"cannot read {name}: {damage or f'its {what} stream holds nothing'}")
    return bytes(out), damage
