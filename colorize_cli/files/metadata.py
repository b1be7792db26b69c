"""What an archive keeps of a photo in its colorizations: the input's EXIF (orientation applied and reset), its
ICC profile (when it describes RGB: a grey or CMYK profile would misdescribe a colour output) and its DPI;
and what marks each output as a colorization, where standard tools read it (XMP: ``dc:description``,
``xmp:CreatorTool`` and the record's fields; exiftool, Adobe tools, digiKam and Pillow show it).

JPEG: APP1 Exif, APP1 XMP, APP2 ICC_PROFILE segments, density in the JFIF header. PNG: ``eXIf``, ``iCCP``,
``pHYs`` and an ``iTXt`` chunk ``XML:com.adobe.xmp``. WebP outputs keep none of it.
Read from the input's bytes by walking its headers (no decoding); TIFF, WebP and BMP inputs through Pillow's
header reader.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from ..common.names import readable

#: the largest EXIF block a JPEG APP1 segment holds (65,535 minus the length field and "Exif\0\0")
MAX_JPEG_EXIF = 65527
#: an ICC profile larger than this is dropped (with a warning), never decompressed further nor copied into
#: outputs: real RGB profiles are 0.5-60 KB (a few with large tables under 1 MB); a 1 MB PNG can hold a
#: zlib bomb of 1 GB, and a 10 MB profile would be copied into every sample
MAX_ICC_BYTES = 4 << 20
ICC_CHUNK = 65519


@dataclass(frozen=True)
class ImageMeta:
    exif: bytes | None = None               # the EXIF TIFF structure (no "Exif\0\0"), orientation reset to 1
    icc: bytes | None = None                # an RGB ICC profile
    dpi: tuple[float, float] | None = None  # pixels per inch, x and y
    orientation: int = 1                    # the input's EXIF orientation (1-8), which decoding applies
    dropped: tuple[str, ...] = ()           # what was not kept and why (an oversized ICC profile)

    def __bool__(self) -> bool:
        return bool(self.exif or self.icc or self.dpi)


def read(data: bytes) -> ImageMeta:
    """The metadata worth keeping of an input file's bytes (empty when none, or unreadable)."""
    try:
        orientation = None
        if data[:2] == b"\xff\xd8":
            exif, icc, dpi = _jpeg(data)
        elif data[:8] == b"\x89PNG\r\n\x1a\n":
            exif, icc, dpi = _png(data)
        elif data[4:8] == b"ftyp":   # HEIF: libheif applied the rotation when decoding
            exif, icc, dpi = _heif(data)
            orientation = 1
        else:
            exif, icc, dpi, orientation = _pillow(data)
        dropped: tuple[str, ...] = ()
        if icc is _TOO_LARGE or (icc is not None and len(icc) > MAX_ICC_BYTES):
            icc, dropped = None, (f"its ICC profile is over {MAX_ICC_BYTES >> 20} MB: not kept in the outputs",)
        if orientation is None:
            orientation = (tiff_orientation(exif) if exif else None) or 1
        if dpi is None and exif:
            dpi = _exif_dpi(exif)
        exif = _reset_orientation(exif) if exif else None
    except (ValueError, IndexError, struct.error, zlib.error):   # malformed: keep nothing rather than junk
        return ImageMeta()
    return ImageMeta(exif, icc if _is_rgb_icc(icc) else None, dpi, orientation, dropped)


#: what a reader returns for an ICC profile over MAX_ICC_BYTES (not read, let alone decompressed, further)
_TOO_LARGE = b"<too large>"


def _inflate_bounded(data: bytes, limit: int) -> bytes:
    """zlib data -> at most ``limit`` bytes; _TOO_LARGE when it holds more (a bomb stops there)."""
    d = zlib.decompressobj()
    out = d.decompress(data, limit + 1)
    return _TOO_LARGE if len(out) > limit or d.unconsumed_tail else out


def _jpeg(data: bytes):
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
        elif marker == 0xE2 and body[:12] == b"ICC_PROFILE\0" and len(body) > 14:
            icc_parts[body[12]] = body[14:]
        pos += 2 + length
    icc = None
    if icc_parts:
        size = sum(len(v) for v in icc_parts.values())
        icc = _TOO_LARGE if size > MAX_ICC_BYTES else b"".join(icc_parts[k] for k in sorted(icc_parts))
    return exif, icc, dpi


def _png(data: bytes):
    exif = icc = dpi = None
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
        pos += 12 + length
    return exif, icc, dpi


def _heif(data: bytes):
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
    return (exif if isinstance(exif, bytes) and exif[:2] in (b"II", b"MM") else None, icc, None)


def _pillow(data: bytes):
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:   # reads headers only
            info = dict(im.info)
            # a TIFF's orientation is one of its own tags, not an EXIF block: getexif() has both
            orientation = int(im.getexif().get(0x0112, 1))
    except Exception:   # noqa: BLE001 - a format Pillow does not know: nothing to keep
        return None, None, None, 1
    exif = info.get("exif")
    if isinstance(exif, bytes) and exif[:6] == b"Exif\0\0":
        exif = exif[6:]
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


# ------------------------------------------------------------------------------------------ writing


def describe(record: dict) -> str:
    """One sentence for people: what this file is."""
    what = f"sample {record['sample']}" if "sample" in record else f"{record.get('samples', '?')} samples"
    parts = [f"model {record.get('model', '?')}", what]
    if "weight" in record:
        parts.append(f"weight {record['weight']:.3f}")
    parts.append(f"seed {record.get('seed', 0)}")
    return f"Colorization by {record.get('colorized_by', 'colorize')} of {record.get('source', '?')} ({', '.join(parts)})"


XMP_NS = "http://ns.colorize-cli.org/1.0/"


def xmp_packet(record: dict) -> bytes:
    """An XMP packet: dc:description, xmp:CreatorTool and the record's fields in the colorize namespace."""
    fields = " ".join(f"colorize:{k}={quoteattr(str(v))}" for k, v in record.items()
                      if k in ("source", "size", "model", "seed", "sample", "samples", "weight"))
    text = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        f'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:colorize="{XMP_NS}" '
        f'xmp:CreatorTool={quoteattr(str(record.get("colorized_by", "colorize")))} {fields}>\n'
        f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(describe(record))}</rdf:li></rdf:Alt>'
        '</dc:description>\n</rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end="r"?>')
    return readable(text).encode("utf-8")   # a source name that is not UTF-8: its bytes as \xNN


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def jpeg_segments(meta: ImageMeta | None, record: dict | None) -> bytes:
    """APP1 Exif, APP1 XMP and APP2 ICC_PROFILE segments for a JPEG output."""
    out = b""
    if meta is not None and meta.exif and len(meta.exif) <= MAX_JPEG_EXIF:
        out += _segment(0xE1, b"Exif\0\0" + meta.exif)
    if record is not None:
        out += _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0" + xmp_packet(record))
    if meta is not None and meta.icc:
        parts = [meta.icc[i:i + ICC_CHUNK] for i in range(0, len(meta.icc), ICC_CHUNK)]
        if len(parts) < 256:
            for i, part in enumerate(parts):
                out += _segment(0xE2, b"ICC_PROFILE\0" + bytes([i + 1, len(parts)]) + part)
    return out


def jfif_density(data: bytes, dpi: tuple[float, float] | None) -> bytes:
    """A JPEG's bytes with its JFIF header saying ``dpi`` (OpenCV writes one with no unit)."""
    if not dpi or data[2:4] != b"\xff\xe0" or data[6:11] != b"JFIF\0":
        return data
    x, y = (min(65535, max(1, round(v))) for v in dpi)
    return data[:13] + bytes([1]) + struct.pack(">HH", x, y) + data[18:]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_chunks(meta: ImageMeta | None, record: dict | None) -> bytes:
    """iCCP, pHYs, eXIf and iTXt (XMP) chunks for a PNG output, to go after IHDR."""
    out = b""
    if meta is not None:
        if meta.icc:
            out += _chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(meta.icc))
        if meta.dpi:
            out += _chunk(b"pHYs", struct.pack(">IIB", round(meta.dpi[0] / 0.0254), round(meta.dpi[1] / 0.0254), 1))
        if meta.exif:
            out += _chunk(b"eXIf", meta.exif)
    if record is not None:
        # iTXt: keyword, NUL, compression flag 0, method 0, language tag NUL, translated keyword NUL, text
        out += _chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp_packet(record))
    return out
