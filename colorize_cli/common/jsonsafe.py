"""JSON from files a user (or an attacker) may have dropped in a folder: bounded in size and nesting depth.

``json.loads`` recurses once per nesting level: a 1 KB record of 1,100 nested brackets raises RecursionError,
which nothing above expects. Here the depth is counted first (one linear pass, strings skipped), so a crafted
file is one ValueError like any other malformed JSON.
"""

from __future__ import annotations

import json
import math

#: nesting deeper than this is refused (records and picks files are 2-3 levels deep)
MAX_DEPTH = 32


def nesting_depth(text: str) -> int:
    """The deepest nesting of [ and { in a JSON text, not counting brackets inside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def loads(text: str | bytes, max_depth: int = MAX_DEPTH):
    """``json.loads`` that raises ValueError (never RecursionError) for nesting beyond ``max_depth``, and
    refuses NaN and Infinity (not JSON: a strict reader of our output would choke on them)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    if nesting_depth(text) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_constant=_no_constants)
    except RecursionError as err:   # not reachable after the depth check; kept as the last guard
        raise ValueError("JSON nested too deeply") from err


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_file(path, max_bytes: int = 1 << 20, max_depth: int = MAX_DEPTH):
    """A JSON file of at most ``max_bytes`` (read no further: a FIFO or /dev/zero cannot hang or fill memory
    beyond it), parsed by ``loads``. OSError for what cannot be read, ValueError for the rest."""
    import os
    import stat

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 16, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    try:
        return loads(b"".join(chunks), max_depth)
    except UnicodeDecodeError as err:
        raise ValueError("not UTF-8 text") from err
