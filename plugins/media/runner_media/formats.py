"""Input formats: sniffed from content, never from the name, before any decoder sees a byte.

Only plain raster formats with small, well-fuzzed decoders are allowed.  Formats that are
programs or can reference other files (PostScript, EPS, PDF, SVG, ImageMagick's MVG and MSL) are
named in the refusal so that an operator reading the failure knows what was attempted.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

# Pillow format name -> display name.  MPO (a JPEG with extra pictures) opens as JPEG.
ALLOWED = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF", "TIFF": "TIFF", "BMP": "BMP"}
ANIMATED = ("GIF", "PNG", "WEBP")  # formats whose extra frames are animation, not pages
OUTPUTS = ("jpeg", "png", "webp")
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
SNIFF_BYTES = 1024

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
_HOSTILE_MAGIC = (
    (b"%!", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
)


class FormatRefused(ValueError):
    """The content is not an allowed image format; the message says what it looks like."""


def sniff(head: bytes) -> str:
    """Return the Pillow format name of ``head`` (the first bytes of a file).

    Raises:
        FormatRefused: for anything but JPEG, PNG, WebP, GIF, TIFF and BMP.
    """
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    kind = _describe(head)
    allowed = ", ".join(ALLOWED.values())
    raise FormatRefused(f"{kind} is not an allowed image format (allowed: {allowed})")


def sniff_file(path: Path) -> str:
    """Sniff the format of the file at ``path``; see :func:`sniff`."""
    with path.open("rb") as fp:
        return sniff(fp.read(SNIFF_BYTES))


def dimensions(path: Path, pillow_format: str) -> tuple[int, int] | None:
    """Width and height as the header of a JPEG, PNG, GIF or WebP file states them.

    Read from the bytes alone, without a decoder, so that a job can refuse a pixel flood
    before any decoder runs.  ``None`` when the header does not say (a decoder's own limits
    must then catch it).
    """
    with path.open("rb") as fp:
        head = fp.read(64)
        if pillow_format == "PNG" and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if pillow_format == "GIF" and len(head) >= 10:
            return struct.unpack("<HH", head[6:10])
        if pillow_format == "WEBP":
            return _webp_size(head)
        if pillow_format == "JPEG":
            return _jpeg_size(fp)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        width = int.from_bytes(head[24:27], "little") + 1
        return width, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a" and len(head) >= 30:
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8, CC are not.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(fp: BinaryIO) -> tuple[int, int] | None:
    """Walk the marker segments up to the first start-of-frame (at most 1 MiB in)."""
    fp.seek(2)
    while fp.tell() < 1 << 20:
        byte = fp.read(1)
        if byte != b"\xff":
            return None
        marker = fp.read(1)
        while marker == b"\xff":  # fill bytes
            marker = fp.read(1)
        if not marker or marker[0] == 0xD9:
            return None
        if marker[0] in (0x01, *range(0xD0, 0xD8)):  # no length
            continue
        header = fp.read(2)
        if len(header) < 2:
            return None
        length = struct.unpack(">H", header)[0]
        if marker[0] in _SOF:
            frame = fp.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        fp.seek(length - 2, 1)
    return None


def default_output(pillow_format: str) -> str:
    """The output format when none is asked for: the input's own, else lossless PNG."""
    return {"JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}.get(pillow_format, "png")


def _describe(head: bytes) -> str:
    for magic, name in _HOSTILE_MAGIC:
        if head.startswith(magic):
            return name
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"push graphic-context", b"viewbox", b"image over", b"fill ")):
        return "ImageMagick MVG"
    if b"<svg" in text:
        return "SVG"
    if text.startswith((b"<?xml", b"<")):
        return "ImageMagick MSL" if b"<image" in text or b"<msl" in text else "XML"
    return "unrecognised content"
