import io

import cv2
import numpy as np
import pytest
from conftest import synthetic_photo

from colorize_cli.files.imageio import (
    ImageReadError,
    decode_image,
    encode_image,
    read_image,
    write_atomic,
)


def _enc(img, ext, params=()):
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def test_grey_16bit_rgba_and_cmyk():
    rng = np.random.default_rng(0)
    photo = synthetic_photo(rng)
    grey = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    img = decode_image(_enc(grey, ".png"))
    assert img.bgr.shape == photo.shape and img.alpha is None and img.source_channels == 1

    deep = decode_image(_enc(photo.astype(np.uint16) * 257, ".png"))
    assert deep.source_depth == 16 and deep.bgr.dtype == np.uint8
    assert np.abs(deep.bgr.astype(int) - photo).max() <= 1

    rgba = np.dstack([photo, np.full(photo.shape[:2], 77, np.uint8)])
    got = decode_image(_enc(rgba, ".png"))
    assert got.alpha is not None and int(got.alpha[0, 0]) == 77

    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(photo[..., ::-1]).convert("CMYK").save(buf, "JPEG", quality=95)
    cmyk = decode_image(buf.getvalue())
    assert cmyk.bgr.shape == photo.shape and cmyk.alpha is None
    assert np.abs(cmyk.bgr.astype(int) - photo).mean() < 12


def test_exif_orientation_is_applied():
    import io

    from PIL import Image

    photo = np.zeros((20, 40, 3), np.uint8)
    photo[:, :20] = 255  # left half white
    im = Image.fromarray(photo)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif, quality=95)
    got = decode_image(buf.getvalue())
    assert got.bgr.shape[:2] == (40, 20)
    assert got.bgr[:20].mean() > 200 and got.bgr[20:].mean() < 50  # white ends up on top


def _jpeg_with_exif(orientation: int, big_endian: bool = False) -> bytes:
    """A small JPEG with an APP1 EXIF block holding only the Orientation tag."""
    order = "big" if big_endian else "little"
    entry = (0x0112).to_bytes(2, order) + (3).to_bytes(2, order) + (1).to_bytes(4, order) \
        + orientation.to_bytes(2, order) + b"\x00\x00"
    tiff = (b"MM" if big_endian else b"II") + (42).to_bytes(2, order) + (8).to_bytes(4, order) \
        + (1).to_bytes(2, order) + entry + (0).to_bytes(4, order)
    app1 = b"Exif\x00\x00" + tiff
    jpg = _enc(synthetic_photo(np.random.default_rng(3), 30, 50), ".jpg")
    return jpg[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + jpg[2:]


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("big_endian", [False, True])
def test_jpeg_header_reader_agrees_with_pillow(orientation, big_endian):
    from colorize_cli.files.imageio import _exif_orientation, _header_size, _jpeg_header

    data = _jpeg_with_exif(orientation, big_endian)
    assert _jpeg_header(data) == ((50, 30), orientation) == (_header_size(data), _exif_orientation(data))
    upright = decode_image(_jpeg_with_exif(1, big_endian)).bgr
    assert decode_image(data).bgr.shape[:2] == (upright.shape[:2] if orientation < 5 else upright.shape[1::-1])


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
def test_jpeg_header_reader_gives_up_on_odd_markers():
    from colorize_cli.files.imageio import _jpeg_header

    data = _jpeg_with_exif(6)
    broken_ifd = data.replace(b"II*\x00\x08\x00\x00\x00", b"II*\x00\xff\x00\x00\x00")
    assert _jpeg_header(broken_ifd) is None          # decode_image asks Pillow then
    assert decode_image(broken_ifd).bgr.shape[:2] == (30, 50)
    assert _jpeg_header(data[:2] + b"\x00" + data[2:]) is None   # not a marker where one must be
    assert _jpeg_header(data[:2] + b"\xff" * 100_000 + data[2:]) is None   # fill bytes without end
    assert decode_image(data[:2] + b"\xff" * 100 + data[2:]).bgr.shape[:2] == (50, 30)   # a few are fine


def test_jpeg_header_reader_on_real_photos(shared):
    from colorize_cli.files.imageio import _exif_orientation, _header_size, _jpeg_header

    paths = sorted((shared / "data" / "lfw-deepfunneled").rglob("*.jpg"))[:200]
    paths += sorted((shared / "data" / "old_photos").rglob("*.jp*g"))
    for path in paths:
        data = path.read_bytes()
        assert _jpeg_header(data) == (_header_size(data), _exif_orientation(data)), path


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"this is text, not a picture", "not an image"),
])
def test_bad_bytes(data, reason):
    with pytest.raises(ImageReadError, match=reason):
        decode_image(data)


def test_truncated_jpeg():
    data = _enc(synthetic_photo(np.random.default_rng(2), 200, 200), ".jpg")
    with pytest.raises(ImageReadError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


def test_write_atomic_leaves_no_temp_files(tmp_path):
    img = synthetic_photo(np.random.default_rng(3))
    for fmt in ("png", "jpg", "webp"):
        write_atomic(tmp_path / f"out.{fmt}", encode_image(img, fmt, 90))
        assert cv2.imread(str(tmp_path / f"out.{fmt}")).shape == img.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jpg", "out.png", "out.webp"]


@pytest.mark.parametrize("encoder", ["pillow", "opencv"])
def test_jpeg_outputs_are_progressive_and_keep_the_pixels(monkeypatch, encoder):
    # small outputs through Pillow's encoder (faster), large ones through OpenCV's (no copy): either way
    # progressive, optimised tables, the quality asked for; BGRA drops its alpha, and the colours come back as
    # BGR, not swapped
    from PIL import Image

    import colorize_cli.files.imageio as imageio

    if encoder == "opencv":
        monkeypatch.setattr(imageio, "PILLOW_JPEG_MAX_PIXELS", 0)
    img = synthetic_photo(np.random.default_rng(5))
    for quality in (40, 90):
        data = encode_image(img, "jpg", quality)
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and im.info.get("progressive") and im.size == img.shape[1::-1]
        back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        # OpenCV's baseline encoder at the same quality decodes to the same pixels (exactly, where measured)
        theirs = cv2.imdecode(np.frombuffer(_enc(img, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality]), np.uint8), 1)
        assert np.abs(back.astype(int) - theirs).mean() < 1.0
        # measured 4.1 (quality 40) and 2.2 (90) levels from the photo on average
        assert np.abs(back.astype(int) - img).mean() < (4 if quality == 90 else 8)
    bgra = np.dstack([img, np.full(img.shape[:2], 7, np.uint8)])
    assert encode_image(bgra, "jpg", 90) == encode_image(img, "jpg", 90)
    assert len(encode_image(img, "jpg", 40)) < len(encode_image(img, "jpg", 90))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_streaming_png_round_trip(tmp_path, channels):
    from colorize_cli.files.imageio import write_png_streaming

    rng = np.random.default_rng(channels)
    img = rng.integers(0, 256, (123, 77, channels), dtype=np.uint8)
    write_png_streaming(tmp_path / "s.png", 123, 77, channels, (img[i:i + 10] for i in range(0, 123, 10)))
    back = cv2.imread(str(tmp_path / "s.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back.reshape(img.shape), img)
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]
    with pytest.raises(ValueError):
        write_png_streaming(tmp_path / "bad.png", 50, 77, channels, [img[:10]])
    assert not (tmp_path / "bad.png").exists() and len(list(tmp_path.iterdir())) == 1


def test_sheet_strips_equal_whole_merge():
    from colorize_cli.model import render
    from colorize_cli.model.render import merge, sheet_shape, sheet_strips, tile

    rng = np.random.default_rng(0)
    l_full = rng.integers(0, 256, (90, 70), dtype=np.uint8)
    samples = (rng.random((5, 2, 64, 64), dtype=np.float32) - 0.5) * 0.6
    old = render.STRIP_PIXELS
    render.STRIP_PIXELS = 1000   # force many strips
    try:
        sheet = np.concatenate(list(sheet_strips(l_full, None, samples, cols=3, gap=4)))
    finally:
        render.STRIP_PIXELS = old
    assert sheet.shape[:2] == sheet_shape(90, 70, 5, 3, 4)
    expected = tile([merge(l_full, s) for s in samples] + [np.full((90, 70, 3), 255, np.uint8)], cols=3, gap=4)
    # strips interpolate along y in numpy, the whole image in cv2.resize: float rounding may flip a level
    diff = np.abs(sheet.astype(np.int16) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_torch_lab_to_bgr_matches_opencv():
    import torch

    from colorize_cli.model.color import l_ab_to_bgr, l_ab_to_bgr_torch

    rng = np.random.default_rng(2)
    l_u8 = rng.integers(0, 256, (4, 60, 70), dtype=np.uint8)
    for spread in (0.15, 1.0):   # typical predictions, and the whole ab square (out of gamut, clipped)
        ab = np.clip(rng.normal(0, spread, (4, 2, 60, 70)), -1, 1).astype(np.float32)
        got = l_ab_to_bgr_torch(torch.from_numpy(l_u8), torch.from_numpy(ab)).numpy()
        ref = np.stack([l_ab_to_bgr(l, np.moveaxis(a, 0, -1)) for l, a in zip(l_u8, ab)])
        diff = np.abs(got.astype(np.int16) - ref)
        # OpenCV applies the sRGB gamma through a spline table: a level off at a rounding edge, rarely
        assert got.shape == ref.shape and diff.max() <= 1 and (diff > 0).mean() < 1e-3


@pytest.mark.parametrize("h, w, n, with_alpha", [(90, 70, 5, False), (31, 47, 8, True), (200, 150, 3, False)])
def test_device_sheets_equal_cpu_strips(h, w, n, with_alpha):
    import torch

    from colorize_cli.model.render import (
        sheet_cols,
        sheet_gap,
        sheet_strips,
        sheets_on_device,
    )

    rng = np.random.default_rng(h)
    l_fulls = [rng.integers(0, 256, (h, w), dtype=np.uint8) for _ in range(3)]
    alphas = [rng.integers(0, 256, (h, w), dtype=np.uint8) if with_alpha else None for _ in range(3)]
    l_fulls.append(rng.integers(0, 256, (40, 40), dtype=np.uint8))   # another size in the same batch
    alphas.append(None)
    ab = np.clip(rng.normal(0, 0.3, (4, n, 2, 64, 64)), -1, 1).astype(np.float32)
    sheets = [s.numpy() for s in sheets_on_device(l_fulls, alphas, torch.from_numpy(ab))]
    for l_u8, alpha, samples, sheet in zip(l_fulls, alphas, ab, sheets):
        ref = np.concatenate(list(sheet_strips(l_u8, alpha, samples, sheet_cols(n), sheet_gap(*l_u8.shape))))
        assert sheet.shape == ref.shape and sheet.dtype == np.uint8
        diff = np.abs(sheet.astype(np.int16) - ref)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_metadata_of_damaged_headers_is_empty_not_an_error():
    """Truncated or scrambled EXIF/ICC/pHYs headers give no metadata, never an exception."""
    import io

    from PIL import Image

    from colorize_cli.files.metadata import ImageMeta, read

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x011A] = 300.0
    Image.new("RGB", (20, 10)).save(buf, "JPEG", exif=exif, dpi=(300, 300))
    data = buf.getvalue()
    meta = read(data)
    assert meta.dpi == (300.0, 300.0) and meta.exif is not None
    kept = Image.Exif()
    kept.load(b"Exif\x00\x00" + meta.exif)
    assert kept[0x0112] == 1   # the pixels are turned upright: the kept EXIF says so
    rng = np.random.default_rng(0)
    for cut in range(2, 200, 7):
        assert isinstance(read(data[:cut]), ImageMeta)
    for _ in range(50):
        junk = bytearray(data[:300])
        junk[rng.integers(2, 300)] = rng.integers(0, 256)
        assert isinstance(read(bytes(junk)), ImageMeta)


@pytest.mark.parametrize("fmt", ["tiff", "webp", "png"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_orientation_of_tiff_webp_and_png_is_applied_once(tmp_path, fmt, orientation):
    """OpenCV turns TIFFs upright itself; WebP and PNG (eXIf) are turned here: each exactly once."""
    from PIL import Image, ImageOps

    rgb = (np.random.default_rng(orientation).random((10, 20, 3)) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o.{fmt}"
    Image.fromarray(rgb).save(path, exif=exif, **({"lossless": True} if fmt == "webp" else {}))
    want = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))[..., ::-1]
    assert np.array_equal(read_image(path).bgr, want)
