"""Text that came from outside (a peer's packet, a file, another process) made safe to
show: whatever a terminal would act on instead of printing (C0 and C1 controls, DEL,
format characters such as a right-to-left override, lone surrogates) becomes a backslash
escape. Everything printable, non-ASCII letters included, stays as it is."""

from __future__ import annotations


def printable(text: str) -> str:
    if text.isprintable():  # nearly always: one pass in C
        return text
    return "".join(c if c.isprintable() else _escape(ord(c)) for c in text)


def printable_ascii(raw: bytes) -> str:
    """Bytes meant as ASCII text (an EID, a CLC host name), printable."""
    return printable(raw.decode("ascii", "backslashreplace"))


def _escape(o: int) -> str:
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"
