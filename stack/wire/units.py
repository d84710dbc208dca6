"""Quantities as an operator reads them, one family for every tool: bytes and bytes a
second with SI prefixes (kB/s, MB/s), durations in the unit their size calls for (µs, ms, s)."""

from __future__ import annotations


def human(n: float, unit: str = "B") -> str:
    """1234567 -> '1.2 MB' (decimal units, as throughput is usually given)."""
    n = float(n)
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.0f} {prefix}{unit}" if prefix == "" else f"{n:.1f} {prefix}{unit}"
        n /= 1000
    return f"{n:.1f} T{unit}"


def rate(n: float) -> str:
    """Bytes a second with SI prefixes (kB/s, MB/s), the one unit of throughput everywhere."""
    return human(n, "B/s") if n else "0"


def ms(value: float | None) -> str:
    """A duration given in milliseconds, in the unit its size calls for: 850 µs, 12.3 ms, 1.25 s."""
    if value is None:
        return "-"
    v = float(value)
    if abs(v) < 1.0:
        return f"{v * 1000:.0f} µs"
    if abs(v) < 1000.0:
        return f"{v:.1f} ms"
    return f"{v / 1000:.2f} s"


def us(value: float | None) -> str:
    """A duration given in microseconds (as request/response latencies are measured)."""
    return ms(None if value is None else value / 1000)
