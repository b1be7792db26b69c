"""What an output says of itself, by the archive standards (EXIF, IPTC Photo Metadata, XMP): the input's EXIF,
IPTC and XMP kept and edited for a derived, machine-made file; its ICC profile, DPI and a PNG's colour chunks
as they came.

Exiv2 (through pyexiv2) makes the EXIF/IPTC/XMP edits, on a carrier: a 1x1 image of the output's format that
holds only the input's metadata blocks (each bounded when read: metadata.py). The blocks Exiv2 writes back
are spliced into the output after its provenance record, so Exiv2 never parses an input as it came, a
streamed PNG sheet gets the same blocks as a whole one, and every output kind has one code path:

- EXIF: the thumbnail (IFD1: a small grey copy of the input) and the input's structure tags (size,
  compression, photometric interpretation, samples per pixel, strips) dropped; the pixel size tags say the
  output's; Orientation 1 (the pixels are upright); Software and ModifyDate (with its offset) are this tool
  and now. Everything else stays: Artist, Copyright, dates, GPS, the camera's tags.
- XMP: new xmpMM:DocumentID and InstanceID; xmpMM:DerivedFrom names the input (its IDs, its file name); an
  xmpMM:History entry says what was done, by what, when; Iptc4xmpExt:DigitalSourceType says how the file was
  made (compositeWithTrainedAlgorithmicMedia: a trained model's colours composed with a captured photo's
  grey levels); the input's dc:description stays (ours fills it only where there is none, and is always in
  colorize:description); tiff: structure properties and XMP thumbnails dropped; xmp:ModifyDate,
  MetadataDate, CreatorTool, dc:format, and the record's fields in the colorize: namespace.
- IPTC IIM: kept as it came (keywords, caption, by-line, copyright notice).

"now" is SOURCE_DATE_EPOCH when set (the reproducible-builds convention: the same run gives the same bytes),
else the clock. IDs are UUIDs derived from the output's record (DocumentID) and the time (InstanceID).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import struct
import threading
import uuid
import zlib

from ..common.names import readable
from ..common.version import __version__
from .metadata import ICC_CHUNK, MAX_JPEG_EXIF, PHOTOSHOP, ImageMeta

XMP_NS = "http://ns.colorize-cli.org/1.0/"
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
_UUID_NS = uuid.UUID("6f1c3a52-5d0e-4f5e-9a57-0c01021e2026")

#: IFD0/Exif tags that describe the input's pixels, not the output's (TIFF 6.0 structure tags)
EXIF_STRUCTURE = frozenset([f"Exif.Image.{t}" for t in (
    "NewSubfileType", "SubfileType", "ImageWidth", "ImageLength", "BitsPerSample", "Compression",
    "PhotometricInterpretation", "FillOrder", "StripOffsets", "SamplesPerPixel", "RowsPerStrip",
    "StripByteCounts", "PlanarConfiguration", "Predictor", "TileWidth", "TileLength", "TileOffsets",
    "TileByteCounts", "SubIFDs", "ExtraSamples", "SampleFormat", "JPEGTables", "JPEGProc",
    "JPEGInterchangeFormat", "JPEGInterchangeFormatLength", "YCbCrSubSampling")]
    + ["Exif.Photo.ComponentsConfiguration", "Exif.Photo.CompressedBitsPerPixel"])
#: the same in XMP (Photoshop copies them there), and XMP's own thumbnails (grey too)
XMP_DROPPED = tuple(f"Xmp.tiff.{t}" for t in (
    "ImageWidth", "ImageLength", "BitsPerSample", "Compression", "PhotometricInterpretation",
    "SamplesPerPixel", "PlanarConfiguration", "YCbCrSubSampling", "NativeDigest")) + (
    "Xmp.exif.NativeDigest", "Xmp.exif.ComponentsConfiguration", "Xmp.exif.CompressedBitsPerPixel",
    "Xmp.xmp.Thumbnails", "Xmp.xmpMM.DerivedFrom")
#: the prefixes an output's XMP declares for the namespaces we write: Exiv2's own. The XMP toolkit keeps one
#: prefix per namespace for the whole process and takes the last one a parsed packet declared (an old
#: Photoshop's xapMM for xmpMM, say), so without this an output's bytes would depend on the photos edited
#: before it
PREFIXES = (("http://ns.adobe.com/xap/1.0/", "xmp"), ("http://ns.adobe.com/xap/1.0/mm/", "xmpMM"),
            ("http://ns.adobe.com/xap/1.0/sType/ResourceRef#", "stRef"),
            ("http://ns.adobe.com/xap/1.0/sType/ResourceEvent#", "stEvt"),
            ("http://purl.org/dc/elements/1.1/", "dc"), ("http://ns.adobe.com/photoshop/1.0/", "photoshop"),
            ("http://ns.adobe.com/tiff/1.0/", "tiff"), ("http://ns.adobe.com/exif/1.0/", "exif"),
            ("http://iptc.org/std/Iptc4xmpExt/2008-02-29/", "iptcExt"), (XMP_NS, "colorize"))
#: the record's fields written as colorize: properties
RECORD_FIELDS = ("source", "size", "model", "seed", "sample", "samples", "weight", "vividness")

# Exiv2's XMP toolkit keeps process-wide state and is not thread-safe: one edit at a time (the writer and
# the decoder run in threads)
_LOCK = threading.Lock()
_carriers: dict[str, bytes] = {}


def describe(record: dict) -> str:
    """One sentence for people: what this file is."""
    if "sample" in record:
        what = f"sample {record['sample']}"
    else:
        n = record.get("samples", "?")
        what = f"{n} sample{'' if n == 1 else 's'}"
    parts = [f"model {record.get('model', '?')}", what]
    if "weight" in record:
        parts.append(f"weight {record['weight']:.3f}")
    parts.append(f"seed {record.get('seed', 0)}")
    return readable(f"Colorization by {record.get('colorized_by', 'colorize')} of {record.get('source', '?')} "
                    f"({', '.join(parts)})")


def now() -> _dt.datetime:
    """The time an output says it was made: SOURCE_DATE_EPOCH (UTC) when set, else the local clock."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        return _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc)
    return _dt.datetime.now().astimezone().replace(microsecond=0)


# ------------------------------------------------------------------------------------------ blocks


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _carrier(fmt: str, meta: ImageMeta | None) -> bytes:
    """A 1x1 image of ``fmt`` holding the input's EXIF and IPTC blocks (Exiv2 reads them from there)."""
    if fmt not in _carriers:
        import cv2
        import numpy as np

        _carriers[fmt] = cv2.imencode("." + fmt, np.zeros((1, 1, 3), np.uint8))[1].tobytes()
    base = _carriers[fmt]
    exif = meta.exif if meta is not None else None
    iptc = meta.iptc if meta is not None else None
    if fmt == "jpg":
        blocks = b""
        if exif and len(exif) <= MAX_JPEG_EXIF:
            blocks += _segment(0xE1, b"Exif\0\0" + exif)
        if iptc and len(iptc) <= 65535 - 2 - len(PHOTOSHOP) - 12 - 1:
            resource = b"8BIM\x04\x04\0\0" + struct.pack(">I", len(iptc)) + iptc + b"\0" * (len(iptc) & 1)
            blocks += _segment(0xED, PHOTOSHOP + resource)
        at = 4 + struct.unpack(">H", base[4:6])[0]   # after SOI and the JFIF header
        return base[:at] + blocks + base[at:]
    blocks = b""
    if exif:
        blocks += _chunk(b"eXIf", exif)
    if iptc:   # ImageMagick's raw profile, as Exiv2 and exiftool read it: name, length, hex
        text = f"\niptc\n{len(iptc):8d}\n".encode() + b"\n".join(
            iptc[i:i + 36].hex().encode() for i in range(0, len(iptc), 36)) + b"\n"
        blocks += _chunk(b"zTXt", b"Raw profile type iptc\0\0" + zlib.compress(text))
    return base[:33] + blocks + base[33:]   # after the signature and IHDR


def _blocks_of(fmt: str, data: bytes) -> bytes:
    """The metadata blocks of an image Exiv2 wrote: APP1 and APP13 segments of a JPEG, the text and eXIf
    chunks of a PNG, as they are in the file."""
    out = b""
    if fmt == "jpg":
        pos = 2
        while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] not in (0xDA, 0xD9):
            length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
            if data[pos + 1] in (0xE1, 0xED):
                out += data[pos:pos + 2 + length]
            pos += 2 + length
        return out
    pos = 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        if data[pos + 4:pos + 8] in (b"eXIf", b"tEXt", b"zTXt", b"iTXt"):
            out += data[pos:pos + 12 + length]
        pos += 12 + length
    return out


def _history_size(xmp: dict) -> int | None:
    """How many entries the input's xmpMM:History has (None: it is not an ordered array, replace it)."""
    if "Xmp.xmpMM.History" not in xmp:
        return 0
    if xmp["Xmp.xmpMM.History"] != 'type="Seq"':
        return None
    found = [int(m.group(1)) for k in xmp if (m := re.match(r"Xmp\.xmpMM\.History\[(\d+)\]", k))]
    return max(found, default=0)


def _xmp_changes(xmp: dict, record: dict, when: _dt.datetime, fmt: str, size: tuple[int, int] | None):
    """(what to delete, what to set) in the XMP, as pyexiv2 keys."""
    drop = [k for k in xmp if k.startswith(XMP_DROPPED)]
    iso = when.isoformat()
    tool = f"colorize {__version__}"
    key = json.dumps(record, sort_keys=True, default=str)
    iid = f"xmp.iid:{uuid.uuid5(_UUID_NS, f'instance {key} {iso}')}"
    doc, inst = xmp.get("Xmp.xmpMM.DocumentID"), xmp.get("Xmp.xmpMM.InstanceID")
    put: dict = {
        "Xmp.xmpMM.DocumentID": f"xmp.did:{uuid.uuid5(_UUID_NS, f'document {key}')}",
        "Xmp.xmpMM.InstanceID": iid,
        "Xmp.xmpMM.DerivedFrom": 'type="Struct"',
        "Xmp.xmpMM.DerivedFrom/stRef:filePath": readable(str(record.get("source", "?"))),
    }
    if isinstance(doc, str):
        put["Xmp.xmpMM.DerivedFrom/stRef:documentID"] = doc
        if "Xmp.xmpMM.OriginalDocumentID" not in xmp:
            put["Xmp.xmpMM.OriginalDocumentID"] = doc
    if isinstance(inst, str):
        put["Xmp.xmpMM.DerivedFrom/stRef:instanceID"] = inst
    n = _history_size(xmp)
    if n is None:   # a History that is not a Seq of events: ours replaces it
        drop += [k for k in xmp if k.startswith("Xmp.xmpMM.History")]
        n = 0
    if n == 0:
        put["Xmp.xmpMM.History"] = 'type="Seq"'
    event = f"Xmp.xmpMM.History[{n + 1}]"
    put.update({event: 'type="Struct"', f"{event}/stEvt:action": "derived",
                f"{event}/stEvt:parameters": describe(record), f"{event}/stEvt:instanceID": iid,
                f"{event}/stEvt:when": iso, f"{event}/stEvt:softwareAgent": tool})
    put.update({"Xmp.iptcExt.DigitalSourceType": DIGITAL_SOURCE_TYPE, "Xmp.xmp.CreatorTool": tool,
                "Xmp.xmp.ModifyDate": iso, "Xmp.xmp.MetadataDate": iso,
                "Xmp.dc.format": "image/jpeg" if fmt == "jpg" else "image/png",
                "Xmp.colorize.description": describe(record)})
    if "Xmp.dc.description" not in xmp:
        put["Xmp.dc.description"] = {'lang="x-default"': describe(record)}
    if "Xmp.photoshop.ColorMode" in xmp:
        put["Xmp.photoshop.ColorMode"] = "3"   # RGB
    if "Xmp.tiff.Orientation" in xmp:
        put["Xmp.tiff.Orientation"] = "1"
    if size is not None:
        for axis, value in (("X", size[0]), ("Y", size[1])):
            if f"Xmp.exif.Pixel{axis}Dimension" in xmp:
                put[f"Xmp.exif.Pixel{axis}Dimension"] = str(value)
    for field in RECORD_FIELDS:
        if field in record:
            value = record[field]
            put[f"Xmp.colorize.{field}"] = readable(json.dumps(value) if isinstance(value, list) else str(value))
    return drop, put


def _exif_changes(exif: dict, when: _dt.datetime, size: tuple[int, int] | None) -> dict:
    changes: dict = {k: None for k in exif if k in EXIF_STRUCTURE or k.startswith("Exif.Thumbnail.")}
    changes["Exif.Image.Software"] = f"colorize {__version__}"
    changes["Exif.Image.DateTime"] = when.strftime("%Y:%m:%d %H:%M:%S")
    offset = when.strftime("%z")
    changes["Exif.Photo.OffsetTime"] = f"{offset[:3]}:{offset[3:]}" if offset else "+00:00"
    if "Exif.Image.Orientation" in exif:
        changes["Exif.Image.Orientation"] = "1"
    if size is not None:
        for axis, value in (("X", size[0]), ("Y", size[1])):
            if f"Exif.Photo.Pixel{axis}Dimension" in exif:
                changes[f"Exif.Photo.Pixel{axis}Dimension"] = str(value)
    return changes


def _edit(fmt: str, meta: ImageMeta | None, record: dict, size: tuple[int, int] | None, when) -> bytes:
    import pyexiv2

    with _LOCK:
        pyexiv2.set_log_level(4)   # failures come back as exceptions; Exiv2's own lines would reach stderr
        img = pyexiv2.ImageData(_carrier(fmt, meta))
        try:
            if meta is not None and meta.xmp:
                img.modify_raw_xmp(meta.xmp.decode("utf-8"))
            for ns, prefix in PREFIXES:   # after the input's packet: its prefixes are not ours (PREFIXES)
                try:
                    pyexiv2.registerNs(ns, prefix)
                except Exception:   # noqa: BLE001 - an Exiv2 that refuses a known prefix keeps its own
                    pass
            exif, xmp = img.read_exif(), img.read_xmp()
            img.clear_thumbnail()
            img.modify_exif(_exif_changes(exif, when, size))
            drop, put = _xmp_changes(xmp, record, when, fmt, size)
            if drop:
                img.modify_xmp(dict.fromkeys(sorted(drop, key=len, reverse=True)))
            img.modify_xmp(put)
            return _blocks_of(fmt, img.get_bytes())
        finally:
            img.close()


def standard_blocks(fmt: str, meta: ImageMeta | None, record: dict | None,
                    size: tuple[int, int] | None = None) -> bytes:
    """The EXIF, IPTC and XMP blocks (JPEG segments or PNG chunks) of an output of ``size`` (width,
    height): the input's, edited for the output (module docstring). Metadata Exiv2 cannot rewrite is left
    out a block at a time: the input's XMP first, then its EXIF and IPTC; the output's own always goes in."""
    if fmt not in ("jpg", "png"):
        return b""
    record = record or {}
    when = now()
    tries = [meta]
    if meta is not None and meta.xmp:
        tries.append(ImageMeta(exif=meta.exif, iptc=meta.iptc))
    if meta is not None and (meta.exif or meta.iptc):
        tries.append(None)
    for attempt in tries:
        try:
            return _edit(fmt, attempt, record, size, when)
        except (RuntimeError, ValueError, UnicodeError, OSError):   # what pyexiv2 raises for Exiv2's errors
            continue
    return b""


def jpeg_segments(meta: ImageMeta | None, record: dict | None, size: tuple[int, int] | None = None) -> bytes:
    """APP1 Exif, APP1 XMP, APP13 IPTC and APP2 ICC_PROFILE segments for a JPEG output."""
    out = standard_blocks("jpg", meta, record, size)
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


def png_chunks(meta: ImageMeta | None, record: dict | None, size: tuple[int, int] | None = None) -> bytes:
    """Colour (iCCP, or sRGB; gAMA, cHRM), pHYs, then eXIf, IPTC and XMP chunks for a PNG output, to go
    after IHDR (colour chunks must precede the image data)."""
    out = b""
    if meta is not None:
        if meta.icc:   # an ICC profile and sRGB are not both written (PNG: iCCP supersedes sRGB)
            out += _chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(meta.icc))
        for kind, body in meta.png_colour:
            if not (kind == b"sRGB" and meta.icc):
                out += _chunk(kind, body)
        if meta.dpi:
            out += _chunk(b"pHYs", struct.pack(">IIB", round(meta.dpi[0] / 0.0254), round(meta.dpi[1] / 0.0254), 1))
    return out + standard_blocks("png", meta, record, size)


def image_size(fmt: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) of encoded PNG or baseline/progressive JPEG bytes, from the header."""
    if fmt == "png" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if fmt == "jpg":
        pos = 2
        while pos + 9 <= len(data) and data[pos] == 0xFF:
            marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
                return w, h
            if marker == 0xDA:
                break
            pos += 2 + length
    return None
