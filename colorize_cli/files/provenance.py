"""The record every output carries of the input it came from, where standard tools read it.

A small JSON object — ``{"colorized_by": "colorize 0.2.0", "source": "photo.jpg", "size": 148213, "mtime_ns":
..., "model": "general", "seed": 0, "sample": 3, "weight": 0.21}``
— stored as a PNG ``tEXt`` chunk (keyword ``colorize``, after IHDR) or a JPEG comment (``COM`` segment,
``colorize:`` + JSON, after SOI); ``exiftool``, ``identify -verbose`` and Pillow show both. WebP outputs
carry none (their simple container has no place for it): for them, an existing output is taken as done.

The batch reads it back before skipping an input: an output is only "done" for the input it names, so a
``a.jpg`` added beside an earlier ``a.png`` gets its own output, and a photo replaced under the same name is
colorized again.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..common import jsonsafe
from ..common.version import __version__

if TYPE_CHECKING:
    from .metadata import ImageMeta

PNG_KEYWORD = b"colorize"
JPEG_PREFIX = b"colorize:"
#: bytes read from the head of an output to find its record (it sits right after the first header chunk)
HEAD_BYTES = 4096


@dataclass(frozen=True)
class Source:
    """What identifies an input: its file name, size and modification time."""

    name: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> "Source":
        st = os.stat(path)
        return cls(os.path.basename(os.fspath(path)), st.st_size, st.st_mtime_ns)

    def record(self, **extra) -> dict:
        """What an output made from this input says: it is a colorization, by what, of which file."""
        return {"colorized_by": f"colorize {__version__}", "source": self.name, "size": self.size,
                "mtime_ns": self.mtime_ns, **{k: v for k, v in extra.items() if v is not None}}

    def matches(self, record: dict) -> bool:
        return (record.get("source") == self.name and record.get("size") == self.size
                and record.get("mtime_ns") == self.mtime_ns)


def _payload(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def png_chunk(record: dict) -> bytes:
    """The tEXt chunk that carries ``record`` (keyword, NUL, Latin-1 text: the JSON is ASCII)."""
    data = PNG_KEYWORD + b"\0" + _payload(record)
    return struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data) & 0xFFFFFFFF)


def embed(data: bytes, fmt: str, record: dict | None, meta: "ImageMeta | None" = None) -> bytes:
    """Encoded image bytes -> the same image with ``record`` in it, and what ``meta`` keeps of the input
    (EXIF, IPTC, XMP, ICC profile, DPI) edited for a derived file (derived.py; png, jpg; webp unchanged). The
    record comes first after the header, where ``read`` finds it in the file's first bytes."""
    from .derived import image_size, jfif_density, jpeg_segments, png_chunks

    if record is None and not meta:
        return data
    size = image_size(fmt, data)
    if fmt == "png" and data[:8] == b"\x89PNG\r\n\x1a\n":
        ihdr_end = 8 + 8 + struct.unpack(">I", data[8:12])[0] + 4
        extra = (png_chunk(record) if record is not None else b"") + png_chunks(meta, record, size)
        return data[:ihdr_end] + extra + data[ihdr_end:]
    if fmt == "jpg" and data[:2] == b"\xff\xd8":
        data = jfif_density(data, meta.dpi if meta else None)
        # after the JFIF header when there is one (it must stay first), else right after SOI
        at = 2 + 2 + struct.unpack(">H", data[4:6])[0] if data[2:4] == b"\xff\xe0" else 2
        extra = b""
        if record is not None:
            body = JPEG_PREFIX + _payload(record)
            extra += b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body
        extra += jpeg_segments(meta, record, size)
        return data[:at] + extra + data[at:]
    return data


def read(path: str | os.PathLike) -> dict | None:
    """The record in an output file, or None (none there, not readable, or not ours)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        return None
    raw = None
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        pos = 8
        while pos + 8 <= len(head):
            length = struct.unpack(">I", head[pos:pos + 4])[0]
            kind = head[pos + 4:pos + 8]
            if kind in (b"IDAT", b"IEND"):
                break
            body = head[pos + 8:pos + 8 + length]
            if kind == b"tEXt" and body.startswith(PNG_KEYWORD + b"\0"):
                raw = body[len(PNG_KEYWORD) + 1:]
                break
            pos += 12 + length
    elif head[:2] == b"\xff\xd8":
        pos = 2
        while pos + 4 <= len(head) and head[pos] == 0xFF:
            marker, length = head[pos + 1], struct.unpack(">H", head[pos + 2:pos + 4])[0]
            body = head[pos + 4:pos + 2 + length]
            if marker == 0xFE and body.startswith(JPEG_PREFIX):
                raw = body[len(JPEG_PREFIX):]
                break
            if marker == 0xDA:   # start of scan: no more headers
                break
            pos += 2 + length
    if raw is None:
        return None
    try:
        record = jsonsafe.loads(raw.decode("ascii"))   # a crafted record (deeply nested, NaN) is no record
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def owner(path: str | os.PathLike) -> str | None:
    """The input file name an existing output was made from, per its record (None: no record)."""
    record = read(path)
    return record.get("source") if record else None


__all__ = ["Source", "embed", "owner", "png_chunk", "read"]
