"""Input formats: sniffed from content, never from the name, before any decoder sees a byte.

Only plain raster formats with small, well-fuzzed decoders are allowed.  Formats that are
programs or can reference other files (PostScript, EPS, PDF, SVG, ImageMagick's MVG and MSL) are
named in the refusal so that an operator reading the failure knows what was attempted.
"""

from __future__ import annotations

from pathlib import Path

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
