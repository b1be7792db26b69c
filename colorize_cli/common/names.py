"""File names as text. On POSIX a name is bytes; Python keeps bytes that are not UTF-8 (a Latin-1 "é") as lone
surrogates, which no UTF-8 writer accepts. Where a name is shown or written as text, it goes through here."""

from __future__ import annotations


def readable(name: str) -> str:
    """``name`` with each byte that is not UTF-8 shown as ``\\xNN`` (valid text, one line per name; the
    file's real bytes are still ``os.fsencode(name)``)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
