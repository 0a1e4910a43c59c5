"""Pixel modes and colour: what to resample in, how to reach sRGB, where alpha goes."""

from __future__ import annotations

import io
import logging

from PIL import Image, ImageCms

log = logging.getLogger(__name__)

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_SPACE_MODES = {"RGB": ("RGB", "RGBA"), "GRAY": ("L", "LA"), "CMYK": ("CMYK",)}


def working_mode(img: Image.Image) -> Image.Image:
    """Convert ``img`` to a mode Lanczos resampling handles without losing tone or alpha.

    Result is one of L, LA, RGB, RGBA or CMYK.  16-bit and float greys are scaled, not
    clipped (Pillow's own I;16 -> L conversion clips everything above 255 to white).
    """
    mode = img.mode
    if mode in ("L", "RGB"):
        return img.convert(mode + "A") if "transparency" in img.info else img
    if mode in ("LA", "RGBA", "CMYK"):
        return img
    if mode in ("La", "RGBa"):
        return img.convert(mode.upper())
    if mode in ("P", "PA"):
        return img.convert("RGBA" if img.has_transparency_data else "RGB")
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I") or mode == "F":
        return _grey_to_l(img)
    return img.convert("RGB")  # YCbCr, LAB, HSV: no alpha, no profile we could apply


def _grey_to_l(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16"):
        top = 65535.0
    else:
        low, high = (float(v) for v in img.getextrema())  # type: ignore[arg-type]
        top = 255.0 if high <= 255 else 65535.0 if high <= 65535 else float(high)
        if img.mode == "F" and 0 <= low and high <= 1.0:
            top = 1.0
    wide = img.convert("F" if img.mode == "F" else "I")
    return wide.point(lambda v: v * (255.0 / top)).convert("L")


def profile_space(icc: bytes | None) -> str | None:
    """The colour space an ICC profile describes ("RGB", "GRAY", "CMYK", ...), or None.

    A profile that cannot be parsed counts as absent, as browsers treat it.
    """
    if not icc:
        return None
    try:
        return str(ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space).strip()
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        log.warning("ignoring an unreadable ICC profile: %s", exc)
        return None


def to_srgb(
    img: Image.Image, icc: bytes | None, keep_profile: bool
) -> tuple[Image.Image, bytes | None]:
    """Bring ``img`` to sRGB (or leave it, with ``keep_profile``); return it and the profile
    to embed in the output (``None``: none, which viewers read as sRGB).

    CMYK always ends as RGB: no output format but JPEG holds it, and few viewers show it.
    """
    space = profile_space(icc)
    fits = space is not None and img.mode in _SPACE_MODES.get(space, ())
    if keep_profile and img.mode != "CMYK":
        return img, icc if fits else None
    if fits and icc and space in ("RGB", "CMYK"):
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        out_mode = "RGB" if img.mode == "CMYK" else img.mode
        try:
            converted = ImageCms.profileToProfile(img, source, _SRGB, outputMode=out_mode)
            assert converted is not None  # not in place
            return converted, None
        except ImageCms.PyCMSError as exc:
            log.warning("ICC conversion to sRGB failed, keeping device values: %s", exc)
    if img.mode == "CMYK":
        img = img.convert("RGB")
    return img, None


def for_output(img: Image.Image, fmt: str) -> Image.Image:
    """Fit the mode to the output format: JPEG has no alpha (flatten on white), WebP no grey."""
    if fmt == "jpeg" and img.mode in ("LA", "RGBA"):
        base = Image.new(img.mode[:-1], img.size, 255 if img.mode == "LA" else (255, 255, 255))
        base.paste(img, mask=img.getchannel("A"))
        return base
    if fmt == "webp" and img.mode in ("L", "LA"):
        return img.convert("RGBA" if img.mode == "LA" else "RGB")
    return img
