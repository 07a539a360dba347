"""XMP and PNG text carried from an input to its cut-out, minus the location and orientation.

The filter (``imaging._xmp``): the photographer's fields stay; GPS, IPTC location, the
orientation and stale pixel facts go, wherever they are nested; hostile XML (a DOCTYPE,
entities, billion laughs, external entities) and malformed packets are dropped with one
warning; the carried packet is capped. Then real files: XMP read from JPEG, PNG, TIFF and WebP
inputs and written into PNG, WebP, TIFF and JPEG outputs (Pillow's writers, our large-PNG and
16-bit writers, the finish's fast path), PNG text chunks filtered; and ``bgremove remove``
against the emulator on 127.0.0.1.
"""

from __future__ import annotations

import io
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from bgremove.config import OutputConfig
from bgremove.emulator import Emulator
from bgremove.imaging import DeepImage, finish_file, load_image, prepare_file, save_image
from bgremove.imaging._meta import MAX_EXIF_BYTES, MAX_TEXT_BYTES, PngText
from bgremove.imaging._png import png_with_metadata, read_chunks
from bgremove.imaging._xmp import MAX_XMP_BYTES, filter_xmp
from tests import images as img
from tests.cli_process import bgremove
from tests.test_prepare_finish import LIMITS, chunk_kinds, idat, served

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
XMP_NS = "http://ns.adobe.com/xap/1.0/"
TIFF = "http://ns.adobe.com/tiff/1.0/"
EXIF = "http://ns.adobe.com/exif/1.0/"
PHOTOSHOP = "http://ns.adobe.com/photoshop/1.0/"
ARTIST, EXIF_IFD, DATE_ORIGINAL = 0x013B, 0x8769, 0x9003
GREEN, RED = (0, 200, 0), (200, 20, 20)

#: What a photo tool writes: the photographer's fields, and the location, the orientation and
#: pixel facts again, as attributes, as elements and nested in structures; the tiff namespace
#: also under another prefix.
PHOTO_XMP = f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0">
 <rdf:RDF xmlns:rdf="{RDF}">
  <rdf:Description rdf:about="" xmlns:dc="{DC}" xmlns:xmp="{XMP_NS}" xmlns:tiff="{TIFF}"
    xmlns:exif="{EXIF}" xmlns:photoshop="{PHOTOSHOP}"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
    xmlns:Iptc4xmpCore="http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/"
    tiff:Orientation="6" tiff:Make="Canon" tiff:ImageWidth="6000" tiff:ImageLength="4000"
    exif:GPSLatitude="48,51.5N" exif:GPSLongitude="2,17.4E" exif:PixelXDimension="6000"
    exif:DateTimeOriginal="2026-11-29T09:59:58" xmp:Rating="4" xmp:CreateDate="2026-11-29"
    photoshop:City="Paris" photoshop:Country="France" Iptc4xmpCore:Location="Quai Branly"
    crs:CropTop="0.1" dc:format="image/jpeg" photoshop:Headline="Red block">
   <dc:creator><rdf:Seq><rdf:li>Ann Lens</rdf:li></rdf:Seq></dc:creator>
   <dc:rights><rdf:Alt><rdf:li xml:lang="x-default">© 2026 Ann Lens &amp; Co</rdf:li></rdf:Alt>
   </dc:rights>
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">Shoe</rdf:li></rdf:Alt></dc:title>
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">A red &lt;shoe&gt;</rdf:li></rdf:Alt>
   </dc:description>
   <dc:coverage>Paris, France</dc:coverage>
   <dc:subject><rdf:Bag><rdf:li>shoe</rdf:li><rdf:li>red</rdf:li></rdf:Bag></dc:subject>
   <exif:GPSAltitude>35/1</exif:GPSAltitude>
   <t:Orientation xmlns:t="{TIFF}">6</t:Orientation>
   <xmp:Thumbnails><rdf:Alt><rdf:li rdf:parseType="Resource">
    <xmpGImg:image xmlns:xmpGImg="http://ns.adobe.com/xap/1.0/g/img/">/9j/4AAQ</xmpGImg:image>
   </rdf:li></rdf:Alt></xmp:Thumbnails>
   <Iptc4xmpExt:LocationShown xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">
    <rdf:Bag><rdf:li Iptc4xmpExt:City="Paris" exif:GPSLatitude="48,51.5N"/></rdf:Bag>
   </Iptc4xmpExt:LocationShown>
   <xmpMM:History xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"><rdf:Seq>
    <rdf:li rdf:parseType="Resource"><exif:GPSLongitude>2,17.4E</exif:GPSLongitude>
     <xmp:Label>edited</xmp:Label></rdf:li></rdf:Seq></xmpMM:History>
   <drone-dji:GpsLatitude xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/">48.85
   </drone-dji:GpsLatitude>
   <cam:RtkLatitudeStd xmlns:cam="http://example.com/camera/">0.02</cam:RtkLatitudeStd>
   <cam:SiteLongitude xmlns:cam="http://example.com/camera/">2.29</cam:SiteLongitude>
   <cam:GpsHeading xmlns:cam="http://example.com/camera/">271</cam:GpsHeading>
   <!-- a comment -->
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>""".encode()

KEPT = {(DC, "creator"), (DC, "rights"), (DC, "title"), (DC, "description"), (DC, "subject"),
        (XMP_NS, "Rating"), (XMP_NS, "CreateDate"), (XMP_NS, "Label"), (TIFF, "Make"),
        (EXIF, "DateTimeOriginal"), (PHOTOSHOP, "Headline")}


def names(packet: bytes) -> set[tuple[str, str]]:
    """Every (namespace, name) of an element or attribute in ``packet`` (our own output)."""
    found = set()
    for element in ET.fromstring(packet).iter():
        for name in (element.tag, *element.attrib):
            uri, _, local = name[1:].partition("}") if name.startswith("{") else ("", "", name)
            found.add((uri, local))
    return found


def assert_photographers_xmp(packet: bytes | None) -> None:
    """The photographer's fields are there; no location, orientation or pixel fact is."""
    assert packet is not None
    present = names(packet)
    assert present >= KEPT
    assert not {local for _, local in present if local.lower().startswith("gps")
                or "itude" in local}
    assert not {uri for uri, _ in present if "dji" in uri}
    for gone in [(TIFF, "Orientation"), (TIFF, "ImageWidth"), (TIFF, "ImageLength"),
                 (EXIF, "PixelXDimension"), (PHOTOSHOP, "City"), (PHOTOSHOP, "Country"),
                 (XMP_NS, "Thumbnails"), (DC, "format"), (DC, "coverage")]:
        assert gone not in present, gone
    assert not {uri for uri, _ in present if "Iptc4xmpExt" in uri or "camera-raw" in uri}
    text = packet.decode("utf-8")
    assert "Ann Lens" in text and "Paris" not in text and "Quai Branly" not in text
    root = ET.fromstring(packet)
    rights = root.find(f".//{{{DC}}}rights//{{{RDF}}}li")
    assert rights is not None and rights.text == "© 2026 Ann Lens & Co"
    assert "Orientation" not in text and "48,51" not in text


def xmp_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "XMP" in r.getMessage()]


# --- the filter ----------------------------------------------------------------------------


def test_the_filter_keeps_the_photographers_fields_and_drops_location_and_orientation(
        caplog: pytest.LogCaptureFixture) -> None:
    assert_photographers_xmp(filter_xmp(PHOTO_XMP + b"\x00\x00   ", "photo.jpg"))
    assert not xmp_warnings(caplog)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("bom", ["\ufeff", ""])
def test_a_utf16_xmp_with_its_padding_is_read(caplog: pytest.LogCaptureFixture,
                                              encoding: str, bom: str) -> None:
    """The XMP specification allows UTF-16 (with or without a byte-order mark); its padding
    is trimmed in whole characters."""
    packet = f"{bom}{PHOTO_XMP.decode()}\x00\x00  \n".encode(encoding)
    assert_photographers_xmp(filter_xmp(packet, "photo.tif"))
    assert not xmp_warnings(caplog)


def test_an_xmp_with_nothing_worth_keeping_is_not_carried(
        caplog: pytest.LogCaptureFixture) -> None:
    only_gps = (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="{RDF}">'
                f'<rdf:Description xmlns:exif="{EXIF}" xmlns:tiff="{TIFF}" exif:GPSLatitude="1N"'
                ' tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>').encode()
    assert filter_xmp(only_gps, "gps.jpg") is None
    assert not xmp_warnings(caplog)


SECRET = "top-secret-of-this-machine"
HOSTILE = {
    "billion laughs": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "lol">'
                      + b"".join(b'<!ENTITY %c "&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;">'
                                 % ((98 + i,) + (97 + i,) * 10) for i in range(9))
                      + b']><x:xmpmeta xmlns:x="adobe:ns:meta/">&j;</x:xmpmeta>',
    "harmless internal entity": b'<!DOCTYPE x [<!ENTITY c "Ann">]>'
                                b'<x:xmpmeta xmlns:x="adobe:ns:meta/" xmlns:dc="' + DC.encode()
                                + b'"><dc:creator>&c;</dc:creator></x:xmpmeta>',
    "external entity": b'<!DOCTYPE x [<!ENTITY s SYSTEM "file://SECRET">]>'
                       b'<x:xmpmeta xmlns:x="adobe:ns:meta/" xmlns:dc="' + DC.encode()
                       + b'"><dc:creator>&s;</dc:creator></x:xmpmeta>',
    "parameter entity": b'<!DOCTYPE x [<!ENTITY % p SYSTEM "file://SECRET"> %p;]>'
                        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>',
    "bare DOCTYPE": b"<!DOCTYPE x:xmpmeta>" + PHOTO_XMP[PHOTO_XMP.index(b"<x:xmpmeta"):],
    "undeclared entity": b'<x:xmpmeta xmlns:x="adobe:ns:meta/" xmlns:dc="' + DC.encode()
                         + b'"><dc:creator>&s;</dc:creator></x:xmpmeta>',
    "cut short": PHOTO_XMP[:700],
    "not XML": b"\xff\xfe\x00garbage that is no XML",
    "bad UTF-8": b'<x:xmpmeta xmlns:x="adobe:ns:meta/" xmlns:dc="' + DC.encode()
                 + b'"><dc:creator>\xc3\x28</dc:creator></x:xmpmeta>',
    "two roots": PHOTO_XMP.replace(b'<?xpacket end="w"?>', b"<a/>"),
    "unbound prefix": b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><dc:creator>A</dc:creator>'
                      b"</x:xmpmeta>",
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_or_malformed_xmp_is_dropped_with_one_warning(
        kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    data = HOSTILE[kind].replace(b"SECRET", str(secret).encode())
    with caplog.at_level(logging.WARNING):
        assert filter_xmp(data, "hostile.jpg") is None
    warned = xmp_warnings(caplog)
    assert len(warned) == 1 and warned[0].startswith("hostile.jpg: its XMP metadata")
    assert SECRET not in caplog.text and "lol" not in caplog.text


def test_the_carried_xmp_is_capped(caplog: pytest.LogCaptureFixture) -> None:
    def with_caption(size: int) -> bytes:
        return PHOTO_XMP.replace(b"A red &lt;shoe&gt;", "é".encode() * (size // 2))

    small = filter_xmp(with_caption(MAX_XMP_BYTES - 4000), "fits.jpg")
    assert small is not None and len(small) <= MAX_XMP_BYTES
    assert not xmp_warnings(caplog)
    assert filter_xmp(with_caption(MAX_XMP_BYTES), "big.jpg") is None
    warned = xmp_warnings(caplog)
    assert len(warned) == 1 and "over 65,504 bytes" in warned[0]
    # What is dropped does not count: a huge location block leaves a packet that fits.
    huge_gps = PHOTO_XMP.replace(b"<exif:GPSAltitude>35/1",
                                 b"<exif:GPSAltitude>" + b"9" * (4 * MAX_XMP_BYTES))
    assert filter_xmp(huge_gps, "gps.jpg") is not None


# --- inputs and outputs, file by file ------------------------------------------------------


def subject() -> Image.Image:
    image = Image.new("RGB", (40, 30), GREEN)
    image.paste(RED, (10, 5, 30, 25))
    return image


def save_with_xmp(path: Path, fmt: str, xmp: bytes = PHOTO_XMP, **params: object) -> Path:
    image = subject()
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"), zip=False)
        image.save(path, fmt, pnginfo=info, **params)  # type: ignore[arg-type]
    elif fmt == "TIFF":
        image.save(path, fmt, tiffinfo={700: xmp}, **params)  # type: ignore[arg-type]
    else:
        image.save(path, fmt, xmp=xmp, **params)  # type: ignore[arg-type]
    with Image.open(path) as check:
        assert check.info.get("xmp") == xmp
    return path


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_xmp_is_read_from_each_input_format(tmp_path: Path, fmt: str) -> None:
    src = save_with_xmp(tmp_path / f"photo.{fmt.lower()}", fmt)
    source = load_image(src, max_pixels=10**6)
    assert_photographers_xmp(source.xmp)
    assert source.image.size == (30, 40)  # the XMP's orientation 6 was applied (Pillow reads it)
    assert load_image(src, max_pixels=10**6, exif=False).xmp is None  # an upload reads none


@pytest.mark.parametrize(("fmt", "size"), [
    ("png", (40, 30)), ("png", (2000, 2000)),  # from 4 MP on, PNG has a writer of its own
    ("webp", (40, 30)), ("tiff", (40, 30)), ("jpg", (40, 30))])
def test_xmp_is_written_into_each_output_format(tmp_path: Path, fmt: str,
                                                size: tuple[int, int]) -> None:
    xmp = filter_xmp(PHOTO_XMP, "photo.jpg")
    image = Image.new("RGB" if fmt == "jpg" else "RGBA", size, (9, 8, 7))
    texts = (PngText("Title", "Shoe"),)
    dst = tmp_path / f"out.{fmt}"
    save_image(image, dst, fmt=fmt, exif=img.exif_with(None).tobytes(), xmp=xmp, texts=texts)
    with Image.open(dst) as out:
        assert out.info.get("xmp") == xmp
        out.load()
        if fmt == "png":
            assert out.text.get("Title") == "Shoe"  # type: ignore[attr-defined]


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_the_16_bit_writers_carry_xmp(tmp_path: Path, fmt: str) -> None:
    xmp = filter_xmp(PHOTO_XMP, "photo.tif")
    channel = Image.new("I", (8, 6), 40000)
    deep = DeepImage("RGBA", [channel, channel, channel, channel])
    dst = tmp_path / f"deep.{fmt}"
    save_image(deep, dst, fmt=fmt, xmp=xmp, texts=(PngText("Author", "Ann Lens"),))
    with Image.open(dst) as out:
        assert out.info.get("xmp") == xmp
        if fmt == "png":
            assert out.text == {"Author": "Ann Lens",  # type: ignore[attr-defined]
                                "XML:com.adobe.xmp": xmp.decode()}  # type: ignore[union-attr]


def test_png_text_keeps_the_standard_keywords_only(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "Shoe")
    info.add_text("Author", "Ann Lens", zip=True)
    info.add_itxt("Description", "Chaussure rouge — 红鞋", lang="fr", tkey="Beschreibung")
    info.add_text("Location", "48N 2E")
    info.add_text("GPS", "48.85,2.29")
    info.add_text("Raw profile type exif", "\nexif\n  20\n45786966...")
    info.add_text("date:create", "2026-11-29T10:00:00+00:00")
    info.add_text("Thumb::URI", "file:///home/ann/shoe.png")
    info.add_text("Comment", "after the image data")
    info.chunks[-1] = (*info.chunks[-1][:2], True)  # the Comment chunk after IDAT
    src = tmp_path / "shoe.png"
    subject().save(src, "PNG", pnginfo=info)
    texts = load_image(src, max_pixels=10**6).texts
    assert [(t.keyword, t.text) for t in texts] == [
        ("Title", "Shoe"), ("Author", "Ann Lens"), ("Description", "Chaussure rouge — 红鞋"),
        ("Comment", "after the image data")]
    description = texts[2]
    assert description.international and (description.language, description.translated) == (
        "fr", "Beschreibung")
    dst = tmp_path / "out.png"
    save_image(Image.new("RGBA", (4, 4)), dst, texts=texts)
    with Image.open(dst) as out:
        out.load()
        assert out.text == {t.keyword: t.text for t in texts}  # type: ignore[attr-defined]
        assert out.text["Description"].lang == "fr"  # type: ignore[attr-defined]


def test_png_text_is_capped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "Shoe")
    info.add_text("Description", "x" * (MAX_TEXT_BYTES - 100))
    info.add_text("Comment", "y" * 200)
    src = tmp_path / "long.png"
    subject().save(src, "PNG", pnginfo=info)
    with caplog.at_level(logging.WARNING):
        texts = load_image(src, max_pixels=10**6).texts
    assert [t.keyword for t in texts] == ["Title", "Description"]
    warned = [r.getMessage() for r in caplog.records if "PNG text" in r.getMessage()]
    assert len(warned) == 1 and "first 2 text chunk(s)" in warned[0]


def test_the_fast_path_adds_xmp_and_text_without_re_encoding(tmp_path: Path,
                                                             emulator: Emulator) -> None:
    src = save_with_xmp(tmp_path / "photo.png", "PNG")
    with Image.open(src) as opened:  # upright (no orientation) for the fast path
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp",
                      PHOTO_XMP.decode().replace('tiff:Orientation="6" ', ""), zip=False)
        info.add_text("Copyright", "(c) Ann Lens")
        info.add_text("Location", "Paris")
        opened.save(src, "PNG", pnginfo=info)
    prepared = prepare_file(src, **LIMITS)
    result = served(emulator, prepared)
    dst = tmp_path / "out.png"
    finish_file(prepared, result, src, dst, OutputConfig())
    written = dst.read_bytes()
    assert idat(written) == idat(result.data or b"")  # the service's image data as it came
    assert chunk_kinds(written) == [b"IHDR", b"iTXt", b"tEXt", b"IDAT", b"IEND"]
    with Image.open(dst) as out:
        out.load()
        assert_photographers_xmp(out.info["xmp"])
        assert out.text["Copyright"] == "(c) Ann Lens"  # type: ignore[attr-defined]
        assert "Location" not in out.text  # type: ignore[attr-defined]
    # strip_metadata: none of it
    finish_file(prepared, result, src, dst, OutputConfig(strip_metadata=True))
    assert chunk_kinds(dst.read_bytes()) == [b"IHDR", b"IDAT", b"IEND"]


def test_png_with_metadata_puts_the_chunks_before_the_image_data() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (3, 2), (1, 2, 3, 4)).save(buf, "PNG")
    pieces = png_with_metadata(buf.getvalue(), None, None, b"<x/>", (PngText("Title", "T"),))
    assert pieces is not None
    parsed = read_chunks(b"".join(pieces))
    assert parsed is not None
    assert [c.kind for c in parsed[1]] == [b"IHDR", b"iTXt", b"tEXt", b"IDAT", b"IEND"]
    assert bytes(parsed[1][1].data) == b"XML:com.adobe.xmp\x00\x00\x00\x00\x00<x/>"


def test_the_exif_drops_the_subjects_place_as_the_xmp_does(tmp_path: Path) -> None:
    exif = img.exif_with(None)
    exif[EXIF_IFD] = {DATE_ORIGINAL: "2026:11:29 09:59:58", 0x9214: (20, 15, 10, 10),
                      0xA214: (20, 15)}  # SubjectArea, SubjectLocation
    src = tmp_path / "photo.jpg"
    subject().save(src, "JPEG", exif=exif)
    kept = load_image(src, max_pixels=10**6).exif
    assert kept is not None
    block = Image.Exif()
    block.load(kept)
    assert block.get_ifd(EXIF_IFD) == {DATE_ORIGINAL: "2026:11:29 09:59:58"}


# --- bgremove remove against the emulator --------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpg", "tiff", "webp"])
def test_remove_carries_the_creator_but_not_the_location_or_orientation(
        tmp_path: Path, emulator: Emulator, fmt: str) -> None:
    exif = img.exif_with(6, gps=True)
    exif[ARTIST] = "Ann Lens"
    exif[EXIF_IFD] = {DATE_ORIGINAL: "2026:11:29 09:59:58"}  # a TIFF output's IFD is rewritten
    src = save_with_xmp(tmp_path / "portrait.jpg", "JPEG", quality=98, exif=exif)
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "out"), "--format", fmt,
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("XMP") == 0
    written = next((tmp_path / "out").iterdir())
    with Image.open(written) as out:
        assert out.size == (30, 40)  # turned upright once
        assert_photographers_xmp(out.info["xmp"])
        kept = out.getexif()
        assert kept.get(ARTIST) == "Ann Lens"
        assert kept.get_ifd(EXIF_IFD).get(DATE_ORIGINAL) == "2026:11:29 09:59:58"
        assert img.EXIF_ORIENTATION not in kept and img.EXIF_GPS_IFD not in kept
    data = written.read_bytes()
    assert b"GPSLatitude" not in data and b"Orientation" not in data


def test_remove_png_to_png_carries_text_and_strip_metadata_drops_it(
        tmp_path: Path, emulator: Emulator) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", PHOTO_XMP.decode(), zip=False)
    info.add_text("Author", "Ann Lens")
    info.add_text("Location", "Paris")
    src = tmp_path / "shoe.png"
    subject().save(src, "PNG", pnginfo=info)
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "out"), emulator=emulator)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "out" / "shoe.png") as out:
        out.load()
        assert out.text["Author"] == "Ann Lens"  # type: ignore[attr-defined]
        assert "Location" not in out.text  # type: ignore[attr-defined]
        assert_photographers_xmp(out.info["xmp"])
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "bare"),
                    "--strip-metadata", emulator=emulator)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "bare" / "shoe.png") as out:
        out.load()
        assert "xmp" not in out.info and not out.text  # type: ignore[attr-defined]


def test_remove_with_a_hostile_xmp_writes_the_cut_out_with_one_warning(
        tmp_path: Path, emulator: Emulator) -> None:
    src = save_with_xmp(tmp_path / "laughs.jpg", "JPEG", xmp=HOSTILE["billion laughs"])
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "out"), emulator=emulator)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "XMP" in line]
    assert len(lines) == 1 and "refused" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    with Image.open(tmp_path / "out" / "laughs.png") as out:
        assert "xmp" not in out.info and out.size == (40, 30)


@pytest.mark.usefixtures("no_leaked_threads")
def test_watch_carries_the_creator_but_not_the_location_or_orientation(
        tmp_path: Path, emulator: Emulator) -> None:
    from tests.test_watch_support import DaemonRun

    run = DaemonRun(tmp_path, emulator, once=True)
    save_with_xmp(run.inbox / "portrait.jpg", "JPEG", quality=98)
    run.start()
    run.thread.join(60)  # type: ignore[union-attr]
    assert run.stop() == 0
    with Image.open(run.outbox / "portrait.png") as out:
        assert out.size == (30, 40)  # the XMP's orientation applied once
        assert_photographers_xmp(out.info["xmp"])


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_an_exif_too_large_to_carry_is_dropped_and_the_jpeg_still_written(
        tmp_path: Path, emulator: Emulator, fmt: str) -> None:
    """A PNG's EXIF can outgrow a JPEG's EXIF segment (a long user comment): the cut-out,
    paid for, is written without it, with one warning, rather than failing to be saved."""
    exif = img.exif_with(None)
    exif[ARTIST] = "Ann Lens"
    exif[EXIF_IFD] = {0x9286: b"ASCII\x00\x00\x00" + b"x" * MAX_EXIF_BYTES}  # UserComment
    src = tmp_path / "long.png"
    subject().save(src, "PNG", exif=exif)
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "out"), "--format", fmt,
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "EXIF" in line]
    assert len(warned) == 1 and "over 65,533 bytes" in warned[0], done.stderr
    with Image.open(next((tmp_path / "out").iterdir())) as out:
        assert not out.getexif()
