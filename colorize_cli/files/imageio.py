"""Reading any photo OpenCV can decode into 8-bit BGR (+ alpha), and writing outputs atomically."""

from __future__ import annotations

import io
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from ..common.atomic import atomic_write
from . import metadata, native
from .metadata import ImageMeta, tiff_orientation

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".dib", ".webp",
                              ".jp2", ".pbm", ".pgm", ".ppm", ".pnm", ".heic", ".heif", ".hif"})
#: the ftyp brands of HEIF stills (phones photograph old prints as HEIC)
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
#: refuse to decode more pixels than this (a decompression bomb, or a scan too big for memory)
MAX_PIXELS = 200_000_000
#: the most bytes read from one input file (a 200-megapixel 16-bit TIFF, uncompressed, is 1.2 GB)
MAX_FILE_BYTES = 2 << 30


class ImageReadError(Exception):
    """An input that cannot be used; the message says why (the caller names the file)."""


@dataclass
class LoadedImage:
    bgr: np.ndarray            # (H, W, 3) uint8
    alpha: np.ndarray | None   # (H, W) uint8 or None
    source_depth: int          # 8 or 16 bits per channel in the file
    source_channels: int       # 1, 3 or 4
    warnings: list[str] = field(default_factory=list)   # what the decoder said about the file (native.py)
    meta: ImageMeta = field(default_factory=ImageMeta)    # what outputs keep of the file (metadata.py)


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _exif_orientation(data: bytes) -> int:
    try:
        from PIL import Image  # Pillow comes with torchvision

        with Image.open(io.BytesIO(data)) as im:
            return int(im.getexif().get(0x0112, 1))
    except Exception:  # no EXIF, or a format Pillow does not know: keep the image as it is
        return 1


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.rotate(cv2.flip(img, 1), cv2.ROTATE_90_COUNTERCLOCKWISE)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.flip(img, 1), cv2.ROTATE_90_CLOCKWISE)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def _to_u8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if img.dtype in (np.float32, np.float64):
        return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if img.dtype == np.int8:
        return (img.astype(np.int16) + 128).astype(np.uint8)
    raise ImageReadError(f"unsupported pixel type {img.dtype}")


def _jpeg_is_truncated(data: bytes) -> bool:
    # a complete JPEG ends with the EOI marker FF D9 (some cameras append a little padding after it)
    return data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]


class _TooLarge(Exception):
    pass


#: bytes of a text header (Radiance HDR, PAM, PFM) read to find the image size
TEXT_HEADER_BYTES = 4096
_HDR_SIZE = re.compile(rb"^[-+][YX] +(\d+) +[-+][YX] +(\d+)$")


def _text_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the formats OpenCV reads that Pillow does not: Radiance HDR (``#?RADIANCE``),
    PAM (``P7``), PFM (``PF``/``Pf``). Their headers are text; a header that gives no size is refused (the
    size could not be checked), never decoded blind."""
    head = data[:TEXT_HEADER_BYTES]
    if head.startswith((b"#?RADIANCE", b"#?RGBE")):
        for line in head.split(b"\n")[1:]:
            m = _HDR_SIZE.match(line.strip())
            if m:
                a, b = int(m.group(1)), int(m.group(2))
                return (b, a) if line.strip()[1:2] == b"Y" else (a, b)
        raise ImageReadError("Radiance HDR header gives no size")
    if head.startswith(b"P7\n") or head.startswith(b"P7\r"):
        fields = dict(ln.split(None, 1) for ln in head.split(b"ENDHDR")[0].splitlines()[1:] if len(ln.split()) >= 2)
        try:
            return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
        except (KeyError, ValueError):
            raise ImageReadError("PAM header gives no size") from None
    if head[:2] in (b"PF", b"Pf") and head[2:3] in (b"\n", b"\r", b" "):
        parts = head[2:64].split()
        try:
            return int(parts[0]), int(parts[1])
        except (IndexError, ValueError):
            raise ImageReadError("PFM header gives no size") from None
    return None


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the file's header, without decoding: PNG and BMP read here, the rest by Pillow
    (its decompression-bomb warning silenced: the limit is ours). None where no header says."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        if struct.unpack("<I", data[14:18])[0] == 12:      # OS/2 1.x BITMAPCOREHEADER: 16-bit sizes
            return struct.unpack("<HH", data[18:22])
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    text_size = _text_header_size(data)
    if text_size is not None:
        return text_size
    try:
        import warnings

        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                with Image.open(io.BytesIO(data)) as im:
                    return im.size
            except Image.DecompressionBombError as err:
                raise _TooLarge(str(err)) from err
    except _TooLarge:
        raise
    except Exception:  # unknown to Pillow: OpenCV's own limit still applies
        return None


#: markers (and fill bytes) read before the JPEG header reader hands a file to Pillow
MAX_JPEG_MARKERS = 1024
#: JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...): they carry the image size
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _jpeg_header(data: bytes) -> tuple[tuple[int, int], int] | None:
    """(width, height) and EXIF orientation (1 when absent) of a JPEG, read from its markers; None when the
    markers are not plain (the caller asks Pillow then).

    Why not Pillow for every photo: its parse runs in Python under the GIL, twice per photo (size, then EXIF),
    ~100 us that the decode threads and the batch loop contend for at a thousand photos a second.
    """
    size, orientation, pos, end = None, 1, 2, len(data)
    for _ in range(MAX_JPEG_MARKERS):
        if pos + 4 > end:
            break
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:          # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:   # markers without a length
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: the header is over
            break
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2 or pos + 2 + length > end:
            return None
        body = data[pos + 4:pos + 2 + length]
        if marker in _JPEG_SOF and len(body) >= 5:
            size = (int.from_bytes(body[3:5], "big"), int.from_bytes(body[1:3], "big"))
        elif marker == 0xE1 and body[:6] == b"Exif\x00\x00":
            found = tiff_orientation(body[6:])
            if found is None:
                return None
            orientation = found
        pos += 2 + length
    else:   # a run of fill bytes or bare markers no camera writes: not worth a Python loop under the GIL
        return None
    return (size, orientation) if size is not None else None


def is_heif(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


def _decode_heif(data: bytes, max_pixels: int) -> LoadedImage:
    """HEIC/HEIF through pillow-heif (libheif): the size from the header before decoding, the rotation and
    mirroring the file asks for applied by libheif, EXIF and ICC kept as for other formats."""
    try:
        import pillow_heif
    except ImportError as err:   # a dependency; only a broken install lacks it
        raise ImageReadError(f"HEIC/HEIF needs pillow-heif ({err})") from err
    try:
        heif = pillow_heif.open_heif(data, convert_hdr_to_8bit=True)   # reads the headers only
        w, h = heif.size
        if w * h > max_pixels:
            raise ImageReadError(f"too large to decode ({w}x{h} pixels, limit {max_pixels:,}; "
                                 f"--max-pixels to change it)")
        rgb = np.asarray(heif)
    except ImageReadError:
        raise
    except Exception as err:   # noqa: BLE001 - libheif's errors come as several types: one line
        raise ImageReadError(f"cannot decode HEIF: {str(err).strip().splitlines()[0] if str(err).strip() else err}") \
            from err
    channels = rgb.shape[2] if rgb.ndim == 3 else 1
    if rgb.ndim == 2:
        bgr, alpha = np.repeat(rgb[..., None], 3, axis=2), None
    else:
        bgr = np.ascontiguousarray(rgb[..., 2::-1])
        alpha = np.ascontiguousarray(rgb[..., 3]) if channels == 4 else None
    return LoadedImage(np.ascontiguousarray(bgr), alpha, 8, channels, [], metadata.read(data))


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Bytes of an image file -> 8-bit BGR + alpha, EXIF orientation applied. Raises ImageReadError.

    The size is read from the header and checked against ``max_pixels`` before anything is decoded."""
    if not data:
        raise ImageReadError("empty file")
    if is_heif(data):
        return _decode_heif(data, max_pixels)
    jpeg = _jpeg_header(data) if data[:2] == b"\xff\xd8" else None
    try:
        size = jpeg[0] if jpeg is not None else _header_size(data)
    except _TooLarge:
        raise ImageReadError("too large to decode (over Pillow's 178,956,970-pixel header limit)") from None
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageReadError(f"too large to decode ({size[0]}x{size[1]} pixels, limit {max_pixels:,}; "
                             f"--max-pixels to change it)")
    if _jpeg_is_truncated(data):
        raise ImageReadError("truncated JPEG (no end-of-image marker)")
    buf = np.frombuffer(data, np.uint8)
    try:
        # what libjpeg / libpng / OpenCV print while decoding (a JPEG corrupt in the middle decodes, with
        # "Corrupt JPEG data: ..." on stderr) becomes this file's warnings during a batch run
        img, warnings = native.decoding(lambda: cv2.imdecode(buf, cv2.IMREAD_UNCHANGED))
    except cv2.error as err:
        raise ImageReadError(f"cannot decode: {err.msg.strip() if hasattr(err, 'msg') else err}") from err
    if img is None or img.size == 0:
        raise ImageReadError("not an image, or corrupt" + (f" ({warnings[-1]})" if warnings else ""))
    depth = 16 if img.dtype == np.uint16 else 8
    if img.ndim == 3 and img.shape[2] == 4 and data[:2] == b"\xff\xd8":
        # a CMYK JPEG: let OpenCV's colour path convert it rather than read C, M, Y, K as B, G, R, A
        img, _ = native.decoding(lambda: cv2.imdecode(buf, cv2.IMREAD_COLOR))   # says the same again
        if img is None:
            raise ImageReadError("cannot decode CMYK JPEG")
    channels = 1 if img.ndim == 2 else img.shape[2]
    img = _to_u8(img)
    alpha = None
    if img.ndim == 2:
        bgr = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif channels == 1:
        bgr = cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2BGR)
    elif channels == 2:  # grey + alpha
        bgr = cv2.cvtColor(np.ascontiguousarray(img[..., 0]), cv2.COLOR_GRAY2BGR)
        alpha = np.ascontiguousarray(img[..., 1])
    elif channels == 3:
        bgr = img
    elif channels == 4:
        bgr = np.ascontiguousarray(img[..., :3])
        alpha = np.ascontiguousarray(img[..., 3])
    else:
        raise ImageReadError(f"unsupported channel count {channels}")
    meta = metadata.read(data)   # EXIF, ICC, DPI for the outputs; the orientation of non-JPEG inputs
    if jpeg is not None:
        orientation = jpeg[1]
    elif data[:2] == b"\xff\xd8":   # a JPEG whose headers the fast reader gave up on: Pillow's reading
        orientation = _exif_orientation(data)
    elif data[:4] in (b"II*\x00", b"MM\x00*"):
        orientation = 1   # OpenCV's TIFF decoder applies the Orientation tag itself (all 8, any depth)
    else:
        orientation = meta.orientation
    if orientation != 1:
        bgr = _apply_orientation(bgr, orientation)
        alpha = None if alpha is None else _apply_orientation(alpha, orientation)
    return LoadedImage(np.ascontiguousarray(bgr), alpha, depth, channels, [*warnings, *meta.dropped], meta)


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read and decode an image file. Raises ImageReadError with a short reason."""
    path = Path(path)
    try:
        # only regular files, opened without blocking (a FIFO would wait forever for a writer) and read no
        # further than MAX_FILE_BYTES (a link to /dev/zero would never end)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise ImageReadError("is a directory" if stat.S_ISDIR(mode) else "not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(MAX_FILE_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_FILE_BYTES:
            raise ImageReadError(f"file too large (over {MAX_FILE_BYTES >> 20} MiB)")
    except IsADirectoryError as err:
        raise ImageReadError("is a directory") from err
    except PermissionError as err:
        raise ImageReadError("permission denied") from err
    except FileNotFoundError as err:
        raise ImageReadError("a link to a missing file" if path.is_symlink() else "no such file") from err
    except OSError as err:
        raise ImageReadError(err.strerror or str(err)) from err
    return decode_image(data, max_pixels)


ENCODE_EXT = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}


#: jpg and webp outputs' default quality
JPEG_QUALITY = 90


def encode_image(img: np.ndarray, fmt: str, quality: int | None = None) -> bytes:
    """BGR or BGRA uint8 -> file bytes in ``fmt`` (png, jpg, webp). JPEG drops alpha."""
    fmt = fmt.lower()
    params: list[int] = []
    if fmt == "jpg":
        return _encode_jpeg(img, JPEG_QUALITY if quality is None else int(quality))
    if fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, JPEG_QUALITY if quality is None else int(quality)]
    elif fmt == "png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, png_level(quality)]
        if hasattr(cv2, "IMWRITE_PNG_FILTER"):   # OpenCV >= 4.11: PNG's 'Up' filter (see write_png_streaming)
            params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    ok, buf = cv2.imencode(ENCODE_EXT[fmt], img, params)
    if not ok:
        raise OSError(f"OpenCV could not encode a {fmt} image")
    return buf.tobytes()


#: JPEG outputs up to this many pixels go through Pillow's encoder, larger ones through OpenCV's: the same
#: bytes for the same settings (both libjpeg-turbo; checked on an LFW sheet at qualities 0, 1, 50, 90, 95 and
#: 100), Pillow's in 8.1
#: against 11.3 ms for an 8-sample LFW sheet on one core of an AMD EPYC, but it keeps its own copy of the image
#: at 4 bytes per pixel (peak memory +196 MB for a 50 MP output), where OpenCV encodes the array as it is
PILLOW_JPEG_MAX_PIXELS = 4_000_000


def _encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    """BGR or BGRA uint8 -> progressive JPEG with optimised tables (6-10% smaller than baseline at the same
    quality, read everywhere)."""
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    h, w = img.shape[:2]
    if h * w > PILLOW_JPEG_MAX_PIXELS:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img), [
            cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_OPTIMIZE, 1])
        if not ok:
            raise OSError("OpenCV could not encode a jpg image")
        return buf.tobytes()
    from PIL import Image

    out = io.BytesIO()
    # Pillow reads the BGR rows itself ("raw" BGR): no RGB copy first
    Image.frombuffer("RGB", (w, h), np.ascontiguousarray(img), "raw", "BGR", 0, 1).save(
        out, "JPEG", quality=quality, progressive=True, optimize=True)
    return out.getvalue()


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes so that ``path`` is either absent, its old self, or complete (see ``atomic_write``)."""
    with atomic_write(path) as f:
        f.write(data)


#: zlib level of PNG outputs when no --quality is given. With the 'Up' filter below, level 1 made a real
#: 8-sample LFW sheet of 682 kB in 26 ms, level 3 639 kB in 50 ms (the old 'Sub' filter: 738 kB in 52 ms)
PNG_LEVEL = 1


def png_level(quality: int | None) -> int:
    """--quality 0..100 -> zlib level 9..0 (png is lossless either way); None -> ``PNG_LEVEL``."""
    return PNG_LEVEL if quality is None else int(round(9 - 9 * min(max(quality, 0), 100) / 100))


def write_png_streaming(path: str | os.PathLike, height: int, width: int, channels: int,
                        strips: Iterable[np.ndarray], level: int = PNG_LEVEL, extra_chunks: bytes = b"") -> None:
    """Write a PNG from row strips ((rows, width, channels) uint8, top to bottom) without holding it whole.

    Rows use PNG's 'Up' filter (each byte minus the one above it): it costs one subtraction, and on
    colorization sheets it compressed 13% better than 'Sub' and faster. The file goes to a temporary name
    first and is renamed when complete.
    """
    import struct
    import zlib

    if channels not in (1, 3, 4):
        raise ValueError(f"PNG rows need 1, 3 or 4 channels, not {channels}")
    color_type = {1: 0, 3: 2, 4: 6}[channels]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with atomic_write(path) as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)))
        f.write(extra_chunks)   # whole chunks (e.g. the provenance tEXt), before the image data
        comp = zlib.compressobj(level)
        rows_written = 0
        above = np.zeros((1, width * channels), np.uint8)   # the row above the strip (zeros above row 0)
        for strip in strips:
            # OpenCV order (BGR/BGRA) -> PNG order (RGB/RGBA)
            rgb = strip[..., [2, 1, 0, 3][:channels]] if channels > 1 else strip.reshape(strip.shape[0], width, 1)
            flat = np.ascontiguousarray(rgb).reshape(rgb.shape[0], width * channels)
            filtered = np.empty((flat.shape[0], flat.shape[1] + 1), np.uint8)
            filtered[:, 0] = 2                                       # filter type: Up
            filtered[:1, 1:] = flat[:1] - above                      # wraps mod 256, as PNG wants
            filtered[1:, 1:] = flat[1:] - flat[:-1]
            above = flat[-1:].copy()
            data = comp.compress(filtered)
            if data:
                f.write(chunk(b"IDAT", data))
            rows_written += flat.shape[0]
        if rows_written != height:
            raise ValueError(f"PNG writer got {rows_written} rows, expected {height}")
        f.write(chunk(b"IDAT", comp.flush()))
        f.write(chunk(b"IEND", b""))
