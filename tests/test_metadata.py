"""Metadata by the archive standards (issue 25, item 4): outputs keep the input's EXIF, IPTC and XMP, edited for
a derived, machine-made file, read back with exiftool (when installed: .ci/run installs it) and Pillow."""

import json
import shutil
import struct
import subprocess
import zlib

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import OLD_PHOTOS, require, synthetic_photo
from PIL import Image, IptcImagePlugin

from colorize_cli.cli import main
from colorize_cli.files import derived, metadata

NIPOMO = "February 1936. Nipomo, Calif. Destitute pea pickers living in tent in migrant camp. " \
         "Mother of seven children. Age 32.jpg"
EPOCH = 1765036800   # 2025-12-06 16:00:00 UTC
SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"


def _exiftool(path) -> dict:
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is not installed (Debian: libimage-exiftool-perl)")
    r = subprocess.run(["exiftool", "-j", "-G1", "-a", "-struct", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)[0]


def _list(value) -> list:
    return value if isinstance(value, list) else [value]


def _tag(path, **tags) -> None:
    """Write archive metadata into a photo the way a cataloguing tool does (Exiv2, not our code)."""
    import pyexiv2

    with pyexiv2.Image(str(path)) as img:
        img.modify_iptc({"Iptc.Application2.Keywords": ["tent", "migrants"],
                         "Iptc.Application2.Copyright": "Public domain",
                         "Iptc.Application2.Caption": "Destitute pea pickers in California"})
        img.modify_xmp({"Xmp.dc.creator": ["Dorothea Lange"], "Xmp.dc.rights": {'lang="x-default"': "Public domain"},
                        "Xmp.dc.description": {'lang="x-default"': "Migrant Mother"},
                        "Xmp.dc.subject": ["Great Depression"]})
        img.modify_exif({"Exif.Image.Artist": "Dorothea Lange", "Exif.Photo.DateTimeOriginal": "1936:02:01 12:00:00",
                         **tags})


def test_an_old_photo_keeps_its_archive_metadata_and_says_it_is_derived(shared, tmp_path, tiny_run, monkeypatch):
    # the bar: a real scan (its EXIF has a grey thumbnail and the structure tags of a 6849 x 8539
    # grey TIFF; its XMP a DocumentID and tiff: structure) with a cataloguer's IPTC/XMP/EXIF added
    require(OLD_PHOTOS / "ddcolor" / NIPOMO)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    monkeypatch.delenv("COLORIZE_FORMAT")
    photo = tmp_path / "nipomo.jpg"
    shutil.copy(OLD_PHOTOS / "ddcolor" / NIPOMO, photo)
    _tag(photo)
    before = _exiftool(photo)
    assert before["IFD1:ThumbnailImage"] and before["IFD0:SamplesPerPixel"] == 1   # what must not be copied
    r = CliRunner().invoke(main, [str(photo), "--model", str(tiny_run), "--device", "cpu", "--samples", "1"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "nipomo.colorized.jpg"
    tags = _exiftool(out)
    # the input's, kept
    assert tags["IPTC:Keywords"] == ["tent", "migrants"] and tags["IPTC:CopyrightNotice"] == "Public domain"
    assert tags["IPTC:By-line"] == "Shorpy.com" and tags["IPTC:Caption-Abstract"].startswith("Destitute")
    assert _list(tags["XMP-dc:Creator"]) == ["Dorothea Lange"] and tags["XMP-dc:Rights"] == "Public domain"
    assert _list(tags["XMP-dc:Subject"]) == ["Great Depression"]
    assert tags["XMP-dc:Description"] == "Migrant Mother"                 # not overwritten
    assert tags["IFD0:Artist"] == "Dorothea Lange" and tags["ExifIFD:DateTimeOriginal"] == "1936:02:01 12:00:00"
    assert tags["XMP-xmp:CreateDate"] == before["XMP-xmp:CreateDate"]
    # rewritten for the output, or dropped
    assert not any(k.startswith("IFD1:") for k in tags)                   # no grey thumbnail
    for gone in ("IFD0:ImageWidth", "IFD0:ImageHeight", "IFD0:SamplesPerPixel", "IFD0:PhotometricInterpretation",
                 "IFD0:BitsPerSample", "IFD0:Compression", "XMP-tiff:ImageWidth", "XMP-tiff:SamplesPerPixel",
                 "XMP-tiff:PhotometricInterpretation", "XMP-tiff:NativeDigest"):
        assert gone not in tags, gone
    h, w = cv2.imread(str(out)).shape[:2]
    assert (tags["ExifIFD:ExifImageWidth"], tags["ExifIFD:ExifImageHeight"]) == (w, h)
    assert tags["IFD0:Software"] == tags["XMP-xmp:CreatorTool"] and tags["IFD0:Software"].startswith("colorize ")
    assert tags["IFD0:ModifyDate"] == "2025:12:06 16:00:00" and tags["ExifIFD:OffsetTime"] == "+00:00"
    assert tags["XMP-xmp:ModifyDate"] == "2025:12:06 16:00:00+00:00"
    # derived and machine-made, in the standard places
    assert tags["XMP-iptcExt:DigitalSourceType"] == SOURCE_TYPE
    derived_from = tags["XMP-xmpMM:DerivedFrom"]
    assert derived_from == {"DocumentID": before["XMP-xmpMM:DocumentID"],
                            "InstanceID": before["XMP-xmpMM:InstanceID"], "FilePath": "nipomo.jpg"}
    assert tags["XMP-xmpMM:DocumentID"] != before["XMP-xmpMM:DocumentID"]
    assert tags["XMP-xmpMM:InstanceID"].startswith("xmp.iid:")
    assert tags["XMP-xmpMM:OriginalDocumentID"] == before["XMP-xmpMM:DocumentID"]
    event = tags["XMP-xmpMM:History"]
    event = event[-1] if isinstance(event, list) else event
    assert event["Action"] == "derived" and event["InstanceID"] == tags["XMP-xmpMM:InstanceID"]
    assert "sample" in event["Parameters"] and "1 samples" not in event["Parameters"]
    assert event["SoftwareAgent"] == tags["IFD0:Software"]
    # Pillow reads the same
    with Image.open(out) as im:
        exif = im.getexif()
        assert exif[0x013B] == "Dorothea Lange" and 0x0100 not in exif and 0x0115 not in exif
        assert exif.get_ifd(0x8769)[0x9003] == "1936:02:01 12:00:00"
        assert SOURCE_TYPE.encode() in im.info["xmp"]
        assert IptcImagePlugin.getiptcinfo(im)[(2, 25)] == [b"tent", b"migrants"]
    # the record is still where `colorize info` and a rerun read it
    info = json.loads(CliRunner().invoke(main, ["info", "--json", str(out)]).stdout)["record"]
    assert info["source"] == "nipomo.jpg" and info["samples"] == 1


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_with(path, *chunks: bytes) -> None:
    png = cv2.imencode(".png", synthetic_photo(np.random.default_rng(5), 60, 72))[1].tobytes()
    path.write_bytes(png[:33] + b"".join(chunks) + png[33:])


def _xmp(body: str) -> bytes:
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
            f'xmlns:dc="http://purl.org/dc/elements/1.1/">{body}</rdf:Description></rdf:RDF></x:xmpmeta>'
            '<?xpacket end="w"?>').encode()


def _iptc_profile(*datasets: tuple[int, bytes]) -> bytes:
    iim = b"".join(b"\x1c\x02" + bytes([n]) + struct.pack(">H", len(v)) + v for n, v in datasets)
    text = f"\niptc\n{len(iim):8d}\n{iim.hex()}\n".encode()
    return b"Raw profile type iptc\0\0" + zlib.compress(text)


def test_a_png_keeps_its_colour_chunks_xmp_iptc_and_exif(tmp_path, tiny_run, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    exif = Image.Exif()
    exif[0x013B] = "A. Archivist"
    creator = _xmp("<dc:creator><rdf:Seq><rdf:li>A. Archivist</rdf:li></rdf:Seq></dc:creator>")
    _png_with(tmp_path / "scan.png",
              _png_chunk(b"gAMA", struct.pack(">I", 45455)), _png_chunk(b"sRGB", b"\0"),
              _png_chunk(b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)),
              _png_chunk(b"eXIf", exif.tobytes()[6:]),
              _png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + creator),
              _png_chunk(b"zTXt", _iptc_profile((25, b"harbour"), (25, b"river"))))
    r = CliRunner().invoke(main, [str(tmp_path), "--model", str(tiny_run), "--device", "cpu", "--samples", "1"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "scan.colorized.png"
    raw = out.read_bytes()
    kinds, pos = [], 8
    while pos < len(raw):
        n = struct.unpack(">I", raw[pos:pos + 4])[0]
        kinds.append(raw[pos + 4:pos + 8])
        pos += 12 + n
    assert {b"sRGB", b"gAMA", b"cHRM"} <= set(kinds) and kinds.index(b"sRGB") < kinds.index(b"IDAT")
    with Image.open(out) as im:
        assert im.info["gamma"] == pytest.approx(0.45455) and im.info["srgb"] == 0
        assert im.getexif()[0x013B] == "A. Archivist" and im.getexif()[0x0131].startswith("colorize ")
        assert b"A. Archivist" in im.info["xmp"] and SOURCE_TYPE.encode() in im.info["xmp"]
    tags = _exiftool(out)
    assert tags["IPTC:Keywords"] == ["harbour", "river"] and _list(tags["XMP-dc:Creator"]) == ["A. Archivist"]
    assert tags["XMP-xmpMM:DerivedFrom"]["FilePath"] == "scan.png"
    assert tags["XMP-dc:Description"].startswith("Colorization by colorize")   # none of its own: ours


def test_outputs_with_the_same_options_and_time_are_the_same_bytes(tmp_path, tiny_run, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    cv2.imwrite(str(tmp_path / "a.jpg"), synthetic_photo(np.random.default_rng(1)))
    outs = []
    for run in ("one", "two"):
        r = CliRunner().invoke(main, [str(tmp_path / "a.jpg"), "--model", str(tiny_run), "--device", "cpu",
                                      "-o", str(tmp_path / run)])
        assert r.exit_code == 0, r.output
        outs.append((tmp_path / run / "a.colorized.png").read_bytes())
    assert outs[0] == outs[1]


@pytest.mark.parametrize("name, xmp, why", [
    ("bomb", b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
             + _xmp("<dc:title>&b;&b;&b;</dc:title>"), "DOCTYPE"),
    ("deep", _xmp("<dc:x>" * 5000 + "</dc:x>" * 5000), "nested"),
    ("broken", _xmp("<dc:title>unclosed"), "well-formed"),
    ("big", _xmp("<dc:title>" + "x" * (2 << 20) + "</dc:title>"), "MB"),
])
def test_hostile_xmp_is_not_kept_and_the_photo_still_is(tmp_path, tiny_run, name, xmp, why):
    _png_with(tmp_path / f"{name}.png", _png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp))
    r = CliRunner().invoke(main, [str(tmp_path), "--model", str(tiny_run), "--device", "cpu", "--samples", "1"])
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.stderr.splitlines() if "XMP" in ln]
    assert len(warnings) == 1 and f"{name}.png" in warnings[0] and why in warnings[0], r.stderr
    with Image.open(tmp_path / f"{name}.colorized.png") as im:
        assert b"ENTITY" not in im.info["xmp"] and b"dc:x" not in im.info["xmp"]
        assert SOURCE_TYPE.encode() in im.info["xmp"]           # the output's own metadata is there


def test_compressed_metadata_is_inflated_within_bounds():
    # a 1 GB IPTC raw profile (a zlib bomb of about 1 MB): not inflated past the bound, not kept
    bomb = zlib.compress(b"\niptc\n1000000000\n" + b"0" * (1 << 30), 9)
    png = cv2.imencode(".png", synthetic_photo(np.random.default_rng(2), 20, 20))[1].tobytes()
    data = png[:33] + _png_chunk(b"zTXt", b"Raw profile type iptc\0\0" + bomb) + png[33:]
    assert len(data) < 2 << 20
    meta = metadata.read(data)
    assert meta.iptc is None
    xmp_bomb = zlib.compress(_xmp("<dc:title>" + "x" * (1 << 30) + "</dc:title>"), 9)
    data = png[:33] + _png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\1\0\0\0" + xmp_bomb) + png[33:]
    meta = metadata.read(data)
    assert meta.xmp is None and any("XMP" in d for d in meta.dropped)


def test_metadata_exiv2_cannot_rewrite_is_left_out_and_the_output_keeps_its_own():
    # an EXIF whose IFD0 count runs past its end: the output still gets its XMP, Software and record
    broken = metadata.ImageMeta(exif=b"II*\x00\x08\x00\x00\x00\xff\xff" + b"\x00" * 8,
                                xmp=_xmp("<dc:title>t</dc:title>"))
    blocks = derived.jpeg_segments(broken, {"source": "x.jpg", "samples": 1}, (10, 10))
    assert SOURCE_TYPE.encode() in blocks and b"x.jpg" in blocks


def test_without_source_date_epoch_an_output_says_now(monkeypatch):
    import datetime

    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    made = derived.now()
    assert made.tzinfo is not None and abs((datetime.datetime.now(datetime.timezone.utc) - made).total_seconds()) < 5
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    assert derived.now().isoformat() == "2025-12-06T16:00:00+00:00"


def test_an_outputs_bytes_do_not_depend_on_the_photos_edited_before_it(monkeypatch):
    # the XMP toolkit keeps the prefix the last packet it parsed declared for a namespace (process-wide): an
    # old Photoshop's xap/xapMM must not leak into the next output's XMP
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    old = metadata.ImageMeta(xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
                             b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
                             b'rdf:about="" xmlns:xap="http://ns.adobe.com/xap/1.0/" '
                             b'xmlns:xapMM="http://ns.adobe.com/xap/1.0/mm/" xap:CreatorTool="Photoshop 7">'
                             b'<xapMM:DocumentID>uuid:62C1C674</xapMM:DocumentID></rdf:Description></rdf:RDF>'
                             b'</x:xmpmeta>')
    record = {"source": "x.jpg", "samples": 1}
    for fmt in ("jpg", "png"):
        before = derived.standard_blocks(fmt, None, record, (10, 10))
        edited = derived.standard_blocks(fmt, old, record, (10, 10))
        assert derived.standard_blocks(fmt, None, record, (10, 10)) == before
        assert b"xmlns:xmpMM=" in edited and b"xapMM" not in edited and b"uuid:62C1C674" in edited
