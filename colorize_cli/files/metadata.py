"""What an archive keeps of a photo in its colorizations, read from the input: its EXIF (orientation applied
and reset), IPTC and XMP as they came (derived.py edits them for the output), its ICC profile (when it
describes RGB: a grey or CMYK profile would misdescribe a colour output), its DPI, and a PNG's sRGB, gAMA
and cHRM chunks.

Read from the input's bytes by walking its headers (no decoding): JPEG (APP1 Exif and XMP, APP13 Photoshop
IPTC, APP2 ICC, JFIF density) and PNG (eXIf, iCCP, pHYs, iTXt XMP, a "Raw profile type iptc" text); TIFF,
WebP and BMP through Pillow's header reader, HEIF through pillow-heif's. Every block is bounded before it is
kept: what a file claims is never inflated or parsed past the limits below.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from dataclasses import dataclass

#: the largest EXIF block a JPEG APP1 segment holds (65,535 minus the length field and "Exif\0\0")
MAX_JPEG_EXIF = 65527
#: an ICC profile larger than this is dropped (with a warning), never decompressed further nor copied into
#: outputs: real RGB profiles are 0.5-60 KB (a few with large tables under 1 MB); a 1 MB PNG can hold a
#: zlib bomb of 1 GB, and a 10 MB profile would be copied into every sample
MAX_ICC_BYTES = 4 << 20
ICC_CHUNK = 65519
#: an XMP packet larger than this is not kept (a JPEG's holds 65,502 bytes; Photoshop's largest with a long
#: History run to a few hundred KB); nor one nested deeper than MAX_XMP_DEPTH elements (real packets: <= 12)
#: or with a DOCTYPE (XMP has none: entity expansion is how XML bombs work)
MAX_XMP_BYTES = 1 << 20
MAX_XMP_DEPTH = 40
#: IPTC IIM records larger than this are not kept (a JPEG's APP13 holds 64 KB)
MAX_IPTC_BYTES = 1 << 20


@dataclass(frozen=True)
class ImageMeta:
    exif: bytes | None = None               # the EXIF TIFF structure (no "Exif\0\0"), orientation reset to 1
    icc: bytes | None = None                # an RGB ICC profile
    dpi: tuple[float, float] | None = None  # pixels per inch, x and y
    orientation: int = 1                    # the input's EXIF orientation (1-8), which decoding applies
    dropped: tuple[str, ...] = ()           # what was not kept and why (an oversized ICC profile)
    iptc: bytes | None = None               # IPTC IIM datasets (0x1C record dataset length data ...)
    xmp: bytes | None = None                # the XMP packet (UTF-8), checked by xmp_problem
    png_colour: tuple[tuple[bytes, bytes], ...] = ()   # a PNG's (kind, body) of sRGB, gAMA, cHRM

    def __bool__(self) -> bool:
        return bool(self.exif or self.icc or self.dpi or self.iptc or self.xmp or self.png_colour)


def read(data: bytes) -> ImageMeta:
    """The metadata worth keeping of an input file's bytes (empty when none, or unreadable)."""
    try:
        orientation = None
        extra: dict = {}
        if data[:2] == b"\xff\xd8":
            exif, icc, dpi = _jpeg(data, extra)
        elif data[:8] == b"\x89PNG\r\n\x1a\n":
            exif, icc, dpi = _png(data, extra)
        elif data[4:8] == b"ftyp":   # HEIF: libheif applied the rotation when decoding
            exif, icc, dpi = _heif(data, extra)
            orientation = 1
        else:
            exif, icc, dpi, orientation = _pillow(data, extra)
        dropped: tuple[str, ...] = ()
        if icc is _TOO_LARGE or (icc is not None and len(icc) > MAX_ICC_BYTES):
            icc, dropped = None, (f"its ICC profile is over {MAX_ICC_BYTES >> 20} MB: not kept in the outputs",)
        xmp, iptc = extra.get("xmp"), extra.get("iptc")
        problem = xmp_problem(xmp) if xmp is not None else None
        if problem:
            xmp, dropped = None, (*dropped, f"its XMP metadata {problem}: not kept in the outputs")
        if iptc is _TOO_LARGE or (iptc is not None and (len(iptc) > MAX_IPTC_BYTES or iptc[:1] != b"\x1c")):
            iptc = None   # not IIM datasets (or too many): nothing an archive could read
        if orientation is None:
            orientation = (tiff_orientation(exif) if exif else None) or 1
        if dpi is None and exif:
            dpi = _exif_dpi(exif)
        exif = _reset_orientation(exif) if exif else None
    except (ValueError, IndexError, struct.error, zlib.error):   # malformed: keep nothing rather than junk
        return ImageMeta()
    return ImageMeta(exif, icc if _is_rgb_icc(icc) else None, dpi, orientation, dropped, iptc, xmp,
                     tuple(extra.get("png_colour", ())))


def xmp_problem(packet: bytes) -> str | None:
    """Why an XMP packet is not kept (None: it is kept): too large, not UTF-8, a DOCTYPE, nested too deep,
    not well-formed. Parsed by expat with no entities (a DOCTYPE is refused before parsing)."""
    from xml.etree.ElementTree import ParseError, XMLPullParser

    if len(packet) > MAX_XMP_BYTES:
        return f"is over {MAX_XMP_BYTES >> 20} MB"
    try:
        text = packet.decode("utf-8")
    except UnicodeDecodeError:
        return "is not UTF-8"
    if re.search(r"<!\s*(DOCTYPE|ENTITY)", text, re.IGNORECASE):   # XMP allows none
        return "declares a DOCTYPE"
    parser, depth = XMLPullParser(events=("start", "end")), 0
    try:
        parser.feed(text)
        for event, _ in parser.read_events():
            depth += 1 if event == "start" else -1
            if depth > MAX_XMP_DEPTH:
                return f"is nested over {MAX_XMP_DEPTH} deep"
        parser.close()
    except ParseError:
        return "is not well-formed XML"
    return None


#: what a reader returns for an ICC profile over MAX_ICC_BYTES (not read, let alone decompressed, further)
_TOO_LARGE = b"<too large>"


def _inflate_bounded(data: bytes, limit: int) -> bytes:
    """zlib data -> at most ``limit`` bytes; _TOO_LARGE when it holds more (a bomb stops there)."""
    d = zlib.decompressobj()
    out = d.decompress(data, limit + 1)
    return _TOO_LARGE if len(out) > limit or d.unconsumed_tail else out


XMP_JPEG = b"http://ns.adobe.com/xap/1.0/\0"
PHOTOSHOP = b"Photoshop 3.0\0"


def _photoshop_iptc(body: bytes) -> bytes | None:
    """The IPTC resource (0x0404) of Photoshop image resources ("8BIM", id, Pascal name, size, data)."""
    pos = 0
    while pos + 12 <= len(body) and body[pos:pos + 4] == b"8BIM":
        rid = struct.unpack(">H", body[pos + 4:pos + 6])[0]
        name_len = body[pos + 6]
        pos += 6 + ((name_len + 2) & ~1)                  # the name, padded to an even length with its count
        size = struct.unpack(">I", body[pos:pos + 4])[0]
        if rid == 0x0404:
            return body[pos + 4:pos + 4 + size]
        pos += 4 + size + (size & 1)
    return None


def _jpeg(data: bytes, extra: dict):
    exif = dpi = None
    icc_parts: dict[int, bytes] = {}
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xDA, 0xD9):   # start of scan: no more headers
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xE0 and body[:5] == b"JFIF\0" and len(body) >= 12:
            units, x, y = body[7], *struct.unpack(">HH", body[8:12])
            if units in (1, 2) and x and y:
                dpi = (x * 2.54, y * 2.54) if units == 2 else (float(x), float(y))
        elif marker == 0xE1 and body[:6] == b"Exif\0\0" and exif is None:
            exif = body[6:]
        elif marker == 0xE1 and body.startswith(XMP_JPEG) and "xmp" not in extra:
            extra["xmp"] = body[len(XMP_JPEG):]
        elif marker == 0xED and body.startswith(PHOTOSHOP) and "iptc" not in extra:
            iptc = _photoshop_iptc(body[len(PHOTOSHOP):])
            if iptc:
                extra["iptc"] = iptc
        elif marker == 0xE2 and body[:12] == b"ICC_PROFILE\0" and len(body) > 14:
            icc_parts[body[12]] = body[14:]
        pos += 2 + length
    icc = None
    if icc_parts:
        size = sum(len(v) for v in icc_parts.values())
        icc = _TOO_LARGE if size > MAX_ICC_BYTES else b"".join(icc_parts[k] for k in sorted(icc_parts))
    return exif, icc, dpi


def _png_text(body: bytes, compressed: bool) -> tuple[bytes, bytes]:
    """(keyword, text) of a tEXt / zTXt (compressed) chunk; compressed text inflated up to MAX_XMP_BYTES."""
    name, _, rest = body.partition(b"\0")
    return name, _inflate_bounded(rest[1:], MAX_XMP_BYTES) if compressed else rest


def _raw_profile(text: bytes) -> bytes | None:
    """ImageMagick's "Raw profile type X" text: a newline, the name, the length, then hex digits."""
    parts = text.split(None, 2)
    if len(parts) < 3 or not parts[1].isdigit() or int(parts[1]) > MAX_IPTC_BYTES:
        return None
    try:
        return bytes.fromhex(parts[2].decode("ascii"))[:int(parts[1])]
    except (UnicodeDecodeError, ValueError):
        return None


def _png(data: bytes, extra: dict):
    exif = icc = dpi = None
    colour = []
    pos = 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"eXIf":
            exif = body
        elif kind == b"iCCP":
            name_end = body.index(b"\0")
            icc = _inflate_bounded(body[name_end + 2:], MAX_ICC_BYTES)
        elif kind == b"pHYs" and len(body) == 9:
            x, y, unit = struct.unpack(">IIB", body)
            if unit == 1 and x and y:
                dpi = (x * 0.0254, y * 0.0254)
        elif kind in (b"sRGB", b"gAMA", b"cHRM") and len(body) == {b"sRGB": 1, b"gAMA": 4, b"cHRM": 32}[kind]:
            colour.append((kind, body))
        elif kind == b"iTXt" and body.startswith(b"XML:com.adobe.xmp\0") and "xmp" not in extra:
            # keyword NUL, compression flag, method, language NUL, translated keyword NUL, text
            flag, rest = body[18:19], body[20:]
            text = rest.split(b"\0", 2)[-1] if rest.count(b"\0") >= 2 else b""
            extra["xmp"] = _inflate_bounded(text, MAX_XMP_BYTES) if flag == b"\1" else text
        elif kind in (b"tEXt", b"zTXt") and body.startswith(b"Raw profile type iptc\0") and "iptc" not in extra:
            raw = _raw_profile(_png_text(body, kind == b"zTXt")[1])
            if raw is not None:   # ImageMagick wraps the IIM in Photoshop resources, Exiv2 does not
                extra["iptc"] = _photoshop_iptc(raw) if raw[:4] == b"8BIM" else raw
        pos += 12 + length
    extra["png_colour"] = colour
    return exif, icc, dpi


def _heif(data: bytes, extra: dict):
    """EXIF and ICC of a HEIF file (pillow-heif reads its boxes; the profile bounded as for every format)."""
    try:
        import pillow_heif

        info = pillow_heif.open_heif(data).info
    except Exception:   # noqa: BLE001 - no pillow-heif, or a file it cannot read: nothing to keep
        return None, None, None
    exif = info.get("exif")
    if isinstance(exif, bytes) and exif[:6] == b"Exif\0\0":
        exif = exif[6:]
    icc = info.get("icc_profile")
    icc = _TOO_LARGE if isinstance(icc, bytes) and len(icc) > MAX_ICC_BYTES else icc
    if isinstance(info.get("xmp"), bytes):
        extra["xmp"] = info["xmp"]
    return (exif if isinstance(exif, bytes) and exif[:2] in (b"II", b"MM") else None, icc, None)


def _pillow(data: bytes, extra: dict):
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:   # reads headers only
            info = dict(im.info)
            # a TIFF's orientation is one of its own tags, not an EXIF block: getexif() has both
            orientation = int(im.getexif().get(0x0112, 1))
            tags = getattr(im, "tag_v2", None)   # TIFF: XMP (700) and IPTC (33723) are tags of their own
            if tags is not None:
                for tag, key in ((700, "xmp"), (33723, "iptc")):
                    value = tags.get(tag)
                    if isinstance(value, bytes):
                        extra[key] = value
                    elif isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
                        extra[key] = bytes(v & 0xFF for v in value[:MAX_IPTC_BYTES + 1])
    except Exception:   # noqa: BLE001 - a format Pillow does not know: nothing to keep
        return None, None, None, 1
    exif = info.get("exif")
    if isinstance(exif, bytes) and exif[:6] == b"Exif\0\0":
        exif = exif[6:]
    if isinstance(info.get("xmp"), bytes):
        extra.setdefault("xmp", info["xmp"])
    dpi = info.get("dpi")
    icc = info.get("icc_profile")
    icc = _TOO_LARGE if isinstance(icc, bytes) and len(icc) > MAX_ICC_BYTES else icc
    return (exif if isinstance(exif, bytes) and exif[:2] in (b"II", b"MM") else None, icc,
            (float(dpi[0]), float(dpi[1])) if dpi and dpi[0] and dpi[1] else None,
            orientation if 1 <= orientation <= 8 else 1)


def _is_rgb_icc(icc: bytes | None) -> bool:
    return bool(icc) and len(icc) >= 128 and icc[16:20] == b"RGB "


def _ifd0(tiff: bytes):
    """(byte order, [(tag, type, count, value-or-offset bytes, entry offset)], whether every entry it counts
    is there) of a TIFF structure's IFD0. Raises struct.error when even the count is missing."""
    order = "<" if tiff[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    count = struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]
    entries = []
    for i in range(count):
        at = ifd + 2 + 12 * i
        if at + 12 > len(tiff):
            return order, entries, False
        tag, kind, n = struct.unpack(order + "HHI", tiff[at:at + 8])
        entries.append((tag, kind, n, tiff[at + 8:at + 12], at))
    return order, entries, True


def _exif_dpi(tiff: bytes) -> tuple[float, float] | None:
    """X/YResolution with ResolutionUnit (inch or cm) of EXIF's IFD0, as pixels per inch."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    order, entries, _ = _ifd0(tiff)
    found, unit = {}, 2
    for tag, kind, n, value, _ in entries:
        if tag in (0x011A, 0x011B) and kind == 5:
            off = struct.unpack(order + "I", value)[0]
            num, den = struct.unpack(order + "II", tiff[off:off + 8])
            if den:
                found[tag] = num / den
        elif tag == 0x0128 and kind == 3:
            unit = struct.unpack(order + "H", value[:2])[0]
    if 0x011A not in found or 0x011B not in found or unit not in (2, 3) or not found[0x011A] or not found[0x011B]:
        return None
    scale = 2.54 if unit == 3 else 1.0
    return found[0x011A] * scale, found[0x011B] * scale


def tiff_orientation(tiff: bytes) -> int | None:
    """The Orientation tag (0x0112) of IFD0 of an EXIF block's TIFF structure: 1 when absent, None when
    malformed."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    try:
        order, entries, complete = _ifd0(tiff)
    except struct.error:
        return None
    for tag, kind, _, value, _ in entries:
        if tag == 0x0112:
            v = struct.unpack(order + ("H" if kind == 3 else "I"), value[:2] if kind == 3 else value)[0]
            return v if 1 <= v <= 8 else 1
    return 1 if complete else None


def _reset_orientation(tiff: bytes) -> bytes | None:
    """The EXIF with its Orientation tag set to 1 (the pixels are already turned upright); None if it is
    not a readable TIFF structure."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    order, entries, complete = _ifd0(tiff)
    if not complete:
        return None
    out = bytearray(tiff)
    for tag, kind, _, _, at in entries:
        if tag == 0x0112 and kind == 3:
            out[at + 8:at + 10] = struct.pack(order + "H", 1)
    return bytes(out)
