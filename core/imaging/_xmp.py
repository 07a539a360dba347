"""The photographer's XMP carried from an input to its cut-out, with the EXIF's policy.

    kept_xmp(im, src) -> bytes | None    the input's XMP packet filtered for the output
    filter_xmp(data, src) -> bytes | None

XMP (from JPEG APP1, PNG iTXt "XML:com.adobe.xmp", TIFF tag 700, WebP "XMP ") holds what
photo tools write about a picture: creator, rights, title, caption, keywords, dates, rating.
It can also hold again what ``_meta.kept_exif`` drops, so the same properties go:
- the location: every property named GPS* (in any case: exif:GPSLatitude, a drone's
  GpsLatitude) or holding "Latitude" or "Longitude", in any namespace; IPTC's location
  fields (photoshop:City/State/Country, Iptc4xmpCore:Location/CountryCode,
  Iptc4xmpExt:LocationCreated/LocationShown and their parts); a drone's flight data (DJI);
- the orientation (tiff:Orientation: the output is upright; kept, it would turn it again);
- what describes pixels no longer true: every structural tiff: property (only Make, Model,
  Software, Artist, Copyright, DateTime and ImageDescription stay), exif:PixelX/YDimension,
  the subject area, dc:format, the thumbnails (xmp:Thumbnails), photoshop:ColorMode and
  ICCProfile, image regions (faces: MWG, Microsoft, IPTC, Apple), the raw converter's
  settings (crs:, a crop or exposure a tool would apply again), Google's depth map, motion
  photo and panorama data, the instance id, the pantry of other documents' XMP and the
  pointer to extended XMP (JPEG's extended XMP, which holds depth maps and the like, is not
  read at all).
A property is dropped wherever it appears, also nested in a structure.

The packet is parsed with expat (the stdlib's parser) with any DOCTYPE refused: XMP has none,
and without one no entity can be declared, so nothing is expanded (billion laughs) or fetched
(external entities). Refused, malformed or over ``MAX_XMP_BYTES`` once filtered: dropped with
one warning line naming the file, never an exception. Comments and processing instructions
are not carried; the packet is wrapped in a fresh ``<?xpacket?>``.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

#: The most XMP an output carries (UTF-8 bytes, once filtered): what a JPEG's one XMP
#: segment holds (65,533 bytes of data minus the 29 of its namespace header).
MAX_XMP_BYTES = 65_504
#: Pillow formats whose XMP is read (``info["xmp"]``).
_FORMATS = ("JPEG", "MPO", "PNG", "TIFF", "WEBP")

_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_META = "adobe:ns:meta/"
_XML = "http://www.w3.org/XML/1998/namespace"
#: Namespaces of the packet's frame: what they hold alone is not worth carrying.
_FRAME = (_RDF, _META, _XML, "")
_TIFF = "http://ns.adobe.com/tiff/1.0/"
#: tiff: properties kept (as ``_meta._KEPT_IFD0``); every other one describes the stored pixels.
_KEPT_TIFF = frozenset(("Make", "Model", "Software", "Artist", "Copyright", "DateTime",
                        "ImageDescription"))
_EXIF = "http://ns.adobe.com/exif/1.0/"
_DROPPED = frozenset({
    (_EXIF, "PixelXDimension"), (_EXIF, "PixelYDimension"), (_EXIF, "NativeDigest"),
    (_EXIF, "SubjectArea"), (_EXIF, "SubjectLocation"),
    ("http://purl.org/dc/elements/1.1/", "format"),
    ("http://purl.org/dc/elements/1.1/", "coverage"),  # the place (or time) shown, often
    ("http://ns.adobe.com/xap/1.0/", "Thumbnails"),
    ("http://ns.adobe.com/xap/1.0/mm/", "InstanceID"),
    ("http://ns.adobe.com/xap/1.0/mm/", "Pantry"),
    ("http://ns.adobe.com/xmp/note/", "HasExtendedXMP"),
    ("http://ns.adobe.com/photoshop/1.0/", "City"),
    ("http://ns.adobe.com/photoshop/1.0/", "State"),
    ("http://ns.adobe.com/photoshop/1.0/", "Country"),
    ("http://ns.adobe.com/photoshop/1.0/", "ColorMode"),
    ("http://ns.adobe.com/photoshop/1.0/", "ICCProfile"),
    ("http://ns.adobe.com/photoshop/1.0/", "DocumentAncestors"),
    ("http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/", "Location"),
    ("http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/", "CountryCode"),
    ("http://iptc.org/std/Iptc4xmpExt/2008-02-29/", "LocationCreated"),
    ("http://iptc.org/std/Iptc4xmpExt/2008-02-29/", "LocationShown"),
    ("http://iptc.org/std/Iptc4xmpExt/2008-02-29/", "ImageRegion"),
    *(("http://iptc.org/std/Iptc4xmpExt/2008-02-29/", part) for part in (
        "City", "CountryCode", "CountryName", "ProvinceState", "Sublocation", "WorldRegion")),
    ("http://www.metadataworkinggroup.com/schemas/regions/", "Regions"),
    ("http://ns.microsoft.com/photo/1.2/", "RegionInfo"),
})
#: Namespaces dropped whole: raw settings, Google's depth/motion/panorama data, Apple's faces,
#: a DJI drone's flight data (positions, altitudes, headings).
_DROPPED_NAMESPACES = frozenset({
    "http://www.dji.com/drone-dji/1.0/",
    "http://ns.adobe.com/camera-raw-settings/1.0/",
    "http://ns.google.com/photos/1.0/camera/",
    "http://ns.google.com/photos/1.0/container/",
    "http://ns.google.com/photos/1.0/container/item/",
    "http://ns.google.com/photos/1.0/depthmap/",
    "http://ns.google.com/photos/1.0/image/",
    "http://ns.google.com/photos/1.0/panorama/",
    "http://ns.apple.com/faceinfo/1.0/",
})
_PACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
_PACKET_END = '<?xpacket end="w"?>'


class _Refused(Exception):
    """The packet declares a DOCTYPE or an entity, or grows over the cap."""


def dropped(uri: str, local: str) -> bool:
    """Whether the XMP property ``local`` of namespace ``uri`` is left out of outputs."""
    lower = local.lower()
    if lower.startswith("gps") or "latitude" in lower or "longitude" in lower:
        return True
    if uri in _DROPPED_NAMESPACES or (uri, local) in _DROPPED:
        return True
    return uri == _TIFF and local not in _KEPT_TIFF


def kept_xmp(im: Image.Image, src: str | os.PathLike[str]) -> bytes | None:
    """The XMP packet to write into the output of ``im`` (decoded), or None. Never raises."""
    if im.format not in _FORMATS:
        return None
    data = im.info.get("xmp")
    if not isinstance(data, bytes) or not data.strip(b"\x00 \t\r\n"):
        return None
    return filter_xmp(data, src)


def _trimmed(data: bytes) -> bytes:
    """``data`` without the NUL padding and whitespace a packet may end with, in whole
    characters: a UTF-16 packet's last ``>`` keeps its zero byte."""
    trimmed = data.rstrip(b"\x00 \t\r\n")
    utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff", b"<\x00", b"\x00<")
    return trimmed + b"\x00" if utf16 and len(trimmed) % 2 else trimmed


def filter_xmp(data: bytes, src: str | os.PathLike[str]) -> bytes | None:
    """``data`` (an XMP packet) without the properties ``dropped`` names, as UTF-8; None when
    nothing worth keeping is left, or (with one warning naming ``src``) when it is malformed,
    declares a DOCTYPE or is over ``MAX_XMP_BYTES`` once filtered."""
    from xml.parsers import expat

    packet = _Packet()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.namespace_prefixes = True
    parser.ordered_attributes = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = packet.refuse
    parser.EntityDeclHandler = packet.refuse
    parser.ExternalEntityRefHandler = packet.refuse
    parser.StartNamespaceDeclHandler = packet.namespace
    parser.StartElementHandler = packet.start
    parser.EndElementHandler = packet.end
    parser.CharacterDataHandler = packet.text
    try:
        parser.Parse(_trimmed(data), True)
    except _Refused as exc:
        log.warning("%s: its XMP metadata %s; the cut-out is written without it", src, exc)
        return None
    except (expat.ExpatError, ValueError) as exc:
        log.warning("%s: its XMP metadata is malformed (%s); the cut-out is written without it",
                    src, exc)
        return None
    if not packet.kept:
        return None
    return (_PACKET_BEGIN + "".join(packet.out) + _PACKET_END).encode("utf-8")


class _Packet:
    """The expat handlers that write the packet again without the dropped properties."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.size = len((_PACKET_BEGIN + _PACKET_END).encode("utf-8"))
        self.kept = 0  # properties written (anything outside the packet's frame)
        self.skipping = 0  # depth inside a dropped element
        self.declared: list[str] = []  # namespace declarations for the next start tag
        self.open: list[str] = []  # names of the elements written and not yet closed

    def refuse(self, *_: object) -> int:
        raise _Refused("declares a DOCTYPE or entities (refused: XMP has none)")

    def namespace(self, prefix: str | None, uri: str) -> None:
        name = f"xmlns:{prefix}" if prefix else "xmlns"
        self.declared.append(f' {name}="{_escape(uri or "", attribute=True)}"')

    def start(self, name: str, attributes: list[str]) -> None:
        declared, self.declared = self.declared, []
        uri, local, qname = _split(name)
        if self.skipping or dropped(uri, local):
            self.skipping += 1
            return
        if uri not in _FRAME:
            self.kept += 1
        tag = ["<", qname, *declared]
        for i in range(0, len(attributes), 2):
            a_uri, a_local, a_qname = _split(attributes[i])
            if dropped(a_uri, a_local):
                continue
            if a_uri not in _FRAME:
                self.kept += 1
            tag.append(f' {a_qname}="{_escape(attributes[i + 1], attribute=True)}"')
        tag.append(">")
        self.open.append(qname)
        self._write("".join(tag))

    def end(self, _name: str) -> None:
        if self.skipping:
            self.skipping -= 1
            return
        self._write(f"</{self.open.pop()}>")

    def text(self, data: str) -> None:
        if not self.skipping:
            self._write(_escape(data))

    def _write(self, piece: str) -> None:
        self.size += len(piece.encode("utf-8"))
        if self.size > MAX_XMP_BYTES:
            raise _Refused(f"is over {MAX_XMP_BYTES:,} bytes once filtered (too large to carry)")
        self.out.append(piece)


def _split(name: str) -> tuple[str, str, str]:
    """expat's "uri local prefix" as (uri, local, the name as written)."""
    parts = name.split(" ")
    if len(parts) == 1:
        return "", name, name
    if len(parts) == 2:
        return parts[0], parts[1], parts[1]
    return parts[0], parts[1], f"{parts[2]}:{parts[1]}"


def _escape(text: str, *, attribute: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if attribute:
        text = text.replace('"', "&quot;").replace("\n", "&#10;").replace("\r", "&#13;") \
            .replace("\t", "&#9;")
    return text.replace("\r", "&#13;")
