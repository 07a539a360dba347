"""The reference clients of the photo benchmark (``bench_photos.py``), run as processes.

    python benchmarks/photos_client.py plain|lean|checked --out DIR [--concurrency 3] PHOTO...

Each reads ``WAVESPEED_BASE_URL`` and ``WAVESPEED_API_KEY``, shares one pooled HTTP client,
and per photo does what the official SDK does: a direct upload (ticket, then PUT), a submit
in sync mode, then it downloads the service's PNG and writes ``DIR/<stem>.png``.

plain  what a script on the official SDK does with a local file: uploads the file's bytes
       as they are (GPS and all) and saves the service's PNG as it comes (a photo stored
       sideways is left to the service's handling of its EXIF orientation).
lean   the leanest correct client: uploads the file's bytes minus its metadata segments
       (APP1 EXIF/XMP, APP13, COM, other APPn; the entropy-coded data copied as it is), so
       the service sees the stored pixels; writes the output with the photographer's EXIF
       minus GPS, as bgremove's default output does. Orientation 1: the service's PNG as
       it came, with an eXIf chunk spliced in (no decode). Stored sideways: the PNG decoded,
       turned, and encoded once (zlib level 1). It trusts the service's colour pixels (it
       does not compare them with the original's).
checked  lean, without trusting the service: the photo is decoded while its task waits,
       and the service's colour pixels are kept (as lean keeps them) only when bgremove's
       check passes them (the photo's own colours, or those zeroed where clear); otherwise
       the service's mask is applied to the photo's own pixels. The price of that check
       (both 24 MP images decoded and compared) is what separates bgremove from (b) on a
       machine where the CPU is the limit.

Prints nothing on success; the first failure is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import struct
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

MODEL = "wavespeed-ai/image-background-remover"


class Service:
    def __init__(self, concurrency: int) -> None:
        self.base = os.environ["WAVESPEED_BASE_URL"].rstrip("/")
        key = os.environ["WAVESPEED_API_KEY"]
        self.http = httpx.Client(headers={"Authorization": f"Bearer {key}"},
                                 timeout=httpx.Timeout(600.0, connect=10.0),
                                 limits=httpx.Limits(max_connections=concurrency * 2))

    def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.http.request(method, f"{self.base}/api/v3/{path}", **kwargs)
        answer.raise_for_status()
        return answer.json()["data"]

    def cut_out(self, name: str, body: bytes) -> bytes:
        """Upload ``body``, run the task in sync mode, download its output."""
        ticket = self._api("POST", "media/uploads", json={
            "filename": name, "size": len(body), "content_type": "image/jpeg"})
        put = self.http.put(ticket["upload"]["url"], content=body,
                            headers=ticket["upload"]["headers"])
        put.raise_for_status()
        task = self._api("POST", MODEL, json={"image": ticket["download_url"],
                                              "enable_sync_mode": True})
        if task["status"] != "completed":
            raise RuntimeError(f"task {task['id']} {task['status']}: {task.get('error')}")
        output = self.http.get(task["outputs"][0])
        output.raise_for_status()
        return output.content


def write_atomic(path: Path, data: bytes) -> None:
    part = path.with_name(f".{path.name}.part")
    part.write_bytes(data)
    os.replace(part, path)


def plain(service: Service, src: Path, out: Path) -> None:
    write_atomic(out / f"{src.stem}.png", service.cut_out(src.name, src.read_bytes()))


# -- lean ------------------------------------------------------------------------------------

_KEPT_APP = {0xE0: b"JFIF\x00", 0xE2: b"ICC_PROFILE\x00", 0xEE: b"Adobe"}


def jpeg_without_metadata(data: bytes) -> tuple[bytes, bytes | None]:
    """(the JPEG minus its metadata segments, its APP1 EXIF block or None).

    Walks the segments before the first scan; from the scan on, the rest of the file is
    copied as it is (entropy-coded data, the scans and tables of a progressive file)."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    out, exif, pos = [b"\xff\xd8"], None, 2
    while True:
        if data[pos] != 0xFF:
            raise ValueError("broken JPEG segment list")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        segment = data[pos:pos + 2 + length]
        if marker == 0xDA:  # start of scan: the rest is image data
            out.append(data[pos:])
            return b"".join(out), exif
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            if marker == 0xE1 and segment[4:10] == b"Exif\x00\x00" and exif is None:
                exif = segment[10:]
            ident = _KEPT_APP.get(marker)
            if ident is None or not segment[4:].startswith(ident):
                pos += 2 + length
                continue
        out.append(segment)
        pos += 2 + length


#: The photographer's EXIF kept in the output (as bgremove keeps it): IFD0 description, make,
#: model, software, date, artist, copyright and the XP fields; the EXIF sub-IFD minus the
#: maker note and pixel dimensions. Never GPS, orientation or the thumbnail.
_KEPT_IFD0 = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298,
              0x9C9B, 0x9C9C, 0x9C9D, 0x9C9E, 0x9C9F)
_DROPPED_SUB = (0x927C, 0xA002, 0xA003, 0xA005)


def kept_exif(block: bytes | None) -> tuple[bytes | None, int]:
    """(the output's EXIF as TIFF bytes or None, the orientation) of an APP1 EXIF block."""
    if block is None:
        return None, 1
    from PIL import Image

    source = Image.Exif()
    source.load(block)
    orientation = int(source.get(0x0112, 1))
    kept = Image.Exif()
    for tag in _KEPT_IFD0:
        if tag in source:
            kept[tag] = source[tag]
    sub = {t: v for t, v in source.get_ifd(0x8769).items() if t not in _DROPPED_SUB}
    if sub:
        kept[0x8769] = sub
    if not len(kept):
        return None, orientation
    return kept.tobytes()[6:], orientation  # without the "Exif\0\0" of the JPEG segment


def png_with_exif(png: bytes, exif: bytes | None) -> bytes:
    """``png`` with an eXIf chunk after its IHDR (the 8-byte signature + 25-byte IHDR)."""
    if exif is None:
        return png
    chunk = (struct.pack(">I", len(exif)) + b"eXIf" + exif
             + struct.pack(">I", zlib.crc32(b"eXIf" + exif)))
    return png[:33] + chunk + png[33:]


_TURN = {3: "ROTATE_180", 6: "ROTATE_270", 8: "ROTATE_90"}


def lean(service: Service, src: Path, out: Path) -> None:
    body, block = jpeg_without_metadata(src.read_bytes())
    exif, orientation = kept_exif(block)
    png = service.cut_out(src.name, body)
    dst = out / f"{src.stem}.png"
    if orientation == 1:
        write_atomic(dst, png_with_exif(png, exif))
        return
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        image.load()
        write_turned(image, orientation, exif, dst)


def write_turned(image: Any, orientation: int, exif: bytes | None, dst: Path) -> None:
    """``image`` turned upright by ``orientation``, written as PNG with ``exif``."""
    from PIL import Image, ImageOps

    if orientation in _TURN:
        turned = image.transpose(getattr(Image.Transpose, _TURN[orientation]))
    else:  # mirrored orientations: rare in cameras; Pillow's full handling
        turned = ImageOps.exif_transpose(image.copy())
    # The fastest PNG writer at hand (bgremove's: one cheap row filter, rows compressed on
    # all cores), so that (b) stays the floor for a turned photo too.
    from bgremove.imaging._png import write_png

    buffer = io.BytesIO()
    write_png(turned, buffer, level=1, exif=exif)
    write_atomic(dst, buffer.getvalue())


# -- checked ---------------------------------------------------------------------------------

def decoded(data: bytes) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image if image.mode in ("RGB", "RGBA") else image.convert("RGB")


def checked(service: Service, src: Path, out: Path, decoder: ThreadPoolExecutor) -> None:
    # The fastest comparison at hand (bgremove's: cache-sized bands of rows).
    from bgremove.imaging._finish import _same_colours

    data = src.read_bytes()
    photo = decoder.submit(decoded, data)  # the stored pixels, while the task waits
    body, block = jpeg_without_metadata(data)
    exif, orientation = kept_exif(block)
    png = service.cut_out(src.name, body)
    dst = out / f"{src.stem}.png"
    result, original = decoded(png), photo.result()
    same = _same_colours(result, original)
    if same and orientation == 1:
        write_atomic(dst, png_with_exif(png, exif))
        return
    if not same:  # the service's mask on the photo's own pixels
        original.putalpha(result.getchannel("A"))
        result = original
    write_turned(result, orientation, exif, dst)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("client", choices=("plain", "lean", "checked"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("photos", nargs="+", type=Path)
    args = parser.parse_args()
    service = Service(args.concurrency)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with ThreadPoolExecutor(args.concurrency) as pool, \
                ThreadPoolExecutor(args.concurrency) as decoder:
            jobs = {"plain": plain, "lean": lean,
                    "checked": functools.partial(checked, decoder=decoder)}
            job = jobs[args.client]
            for future in [pool.submit(job, service, p, args.out) for p in args.photos]:
                future.result()
    except Exception as exc:
        print(f"{args.client} client: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
