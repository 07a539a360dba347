"""A JPEG file's own bytes without its metadata, never re-encoded.

``strip_jpeg_metadata(data)`` walks the segment list and keeps what decoding needs: the
frame, tables and scans (SOFn, DHT, DQT, DRI, DAC, DNL, SOS and the entropy-coded data),
APP0 "JFIF", APP2 "ICC_PROFILE" (the colours) and APP14 "Adobe" (the colour transform).
Everything else goes: APP1 (EXIF with GPS and orientation, XMP), APP13 (IPTC), COM, the
other APPn segments and anything after the first image's EOI (an MPO's other pictures).
The entropy-coded data is copied byte for byte, so the decoded pixels are the original's.

Any doubt (not a JPEG, a segment running past the end, no EOI, a marker where none may be)
gives None: the caller then re-encodes the decoded pixels instead.
"""

from __future__ import annotations

import re

_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_APP0, _APP2, _APP14 = 0xE0, 0xE2, 0xEE
#: APPn segments kept, by marker and the identifier their payload starts with.
_KEPT_APP = {_APP0: b"JFIF\x00", _APP2: b"ICC_PROFILE\x00", _APP14: b"Adobe"}
#: Markers with no length field (RSTn, TEM) that may stand between segments.
_STANDALONE = {*range(0xD0, 0xD8), 0x01}
#: A real marker in entropy-coded data: an 0xFF not followed by 0x00 (a stuffed 0xFF), a
#: restart marker (0xD0-0xD7) or another 0xFF (fill bytes: the marker follows them). Found
#: by the regex engine: a 24 MP photo's data holds some 50,000 stuffed bytes.
_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")


def strip_jpeg_metadata(data: bytes) -> bytes | None:
    """``data`` minus its metadata segments, or None when its structure is not clear."""
    if data[:2] != b"\xff\xd8":
        return None
    out = bytearray(b"\xff\xd8")
    pos, end = 2, len(data)
    while True:
        if pos >= end or data[pos] != 0xFF:
            return None
        while pos < end and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= end:
            return None
        marker = data[pos]
        pos += 1
        if marker == _EOI:
            out += b"\xff\xd9"
            return bytes(out)
        if marker in _STANDALONE:
            out += bytes((0xFF, marker))
            continue
        if marker in (0x00, _SOI) or pos + 2 > end:
            return None
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2 or pos + length > end:
            return None
        segment = data[pos - 2:pos + length]
        payload = data[pos + 2:pos + length]
        pos += length
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:  # APPn, COM
            ident = _KEPT_APP.get(marker)
            if ident is None or not payload.startswith(ident):
                continue
        out += segment
        if marker == _SOS:
            scan_end = _scan_end(data, pos)
            if scan_end is None:
                return None
            out += data[pos:scan_end]
            pos = scan_end


def _scan_end(data: bytes, pos: int) -> int | None:
    """Where the entropy-coded data starting at ``pos`` ends (at the next real marker)."""
    found = _MARKER.search(data, pos)
    return None if found is None else found.start()
