"""The ``resize`` job: one image in, one resized image out, refusing anything hostile.

Runs in the worker's child interpreter as ``resize(ctx, image=..., size=..., ...)``.  Every
problem with the input itself ends in :class:`runner.Reject` with a one-line reason: a bad image
does not get better on a second attempt.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, ImageSequence, PngImagePlugin

from runner import JobContext, Reject
from runner_media import color, formats
from runner_media.geometry import draft_request, parse_size, plan

# Pillow registers its common format plugins (JPEG, PNG, GIF, BMP, PPM) on the first open;
# done here, at import, a warm slot host does it once and every job it forks starts with
# them (about 10 ms a job otherwise; the other formats still load on demand).
Image.preinit()

MAX_FILE_BYTES = 128 << 20
# Decoded pixels of one frame.  61 MP (the largest common camera) passes; Pillow warns above
# this and we turn the warning into a refusal.  At RGBA that is 256 MB, well inside 2 GiB.
MAX_PIXELS = 64_000_000
MAX_FRAMES = 1000
MAX_TOTAL_PIXELS = 256_000_000  # decoded pixels over all frames of an animation, in or out
_ORIENTATION = 0x0112
_SWAPPING = (5, 6, 7, 8)  # EXIF orientations that turn the picture by 90 degrees
_EXIF_IFD = 0x8769
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error,
    zlib.error, MemoryError, Image.DecompressionBombError, Image.DecompressionBombWarning,
)


def resize(
    ctx: JobContext,
    image: str,
    size: str = "200x200",
    mode: str = "fit",
    format: str | None = None,  # the declared parameter's name
    quality: int = 85,
    gravity: str = "center",
    keep_metadata: bool = False,
    keep_profile: bool = False,
) -> dict[str, Any]:
    """Resize ``image`` (a file in ``ctx.in_dir``) into ``ctx.out_dir``.

    Writes ``<stem>_<W>x<H>.<ext>`` and returns ``{"file", "width", "height", "format",
    "bytes", "frames"}``.

    Raises:
        Reject: bad parameters, a refused or broken input, or limits exceeded.
    """
    path = _input_path(ctx, image)
    try:
        target = parse_size(size)
        plan((1, 1), target, mode, gravity)  # validates mode and gravity
    except ValueError as exc:
        raise Reject(str(exc)) from None
    if format is not None and format not in formats.OUTPUTS:
        raise Reject(f"format {format!r} is not one of {', '.join(formats.OUTPUTS)}")
    if not 1 <= int(quality) <= 100:
        raise Reject(f"quality {quality} is not between 1 and 100")
    source_format = _check_file(path)
    with _pixel_limit():
        try:
            with Image.open(path, formats=[source_format]) as img:
                fmt = format or formats.default_output(img.format or source_format)
                frames, extra = _render(img, target, mode, gravity, fmt, keep_profile)
                if keep_metadata:
                    extra.update(_metadata(img, frames[0].size, fmt))
        except Reject as exc:
            raise Reject(f"{path.name}: {exc.reason}") from None
        except _DECODE_ERRORS as exc:
            raise Reject(f"{path.name}: {_reason(exc, source_format)}") from exc
    name = f"{path.stem[:150]}_{target[0]}x{target[1]}.{formats.EXTENSIONS[fmt]}"
    written = _save(ctx, name, frames, fmt, int(quality), extra)
    width, height = frames[0].size
    return {"file": name, "width": width, "height": height, "format": fmt,
            "bytes": written, "frames": len(frames)}


def _input_path(ctx: JobContext, image: str) -> Path:
    path = Path(image)
    if not path.is_absolute():
        path = ctx.in_dir / path
    inside = Path(os.path.normpath(path))
    if ctx.in_dir.absolute() not in inside.absolute().parents:
        raise Reject(f"input {image!r} is not a file in the job's input directory")
    return inside


def _check_file(path: Path) -> str:
    """Refuse missing, empty, oversized or non-image files before any decoder runs."""
    if not path.is_file():
        raise Reject(f"{path.name}: input is missing or not a regular file")
    length = path.stat().st_size
    if length == 0:
        raise Reject(f"{path.name}: file is empty (0 bytes)")
    if length > MAX_FILE_BYTES:
        raise Reject(f"{path.name}: file is {length} bytes, over the limit of {MAX_FILE_BYTES}")
    try:
        return formats.sniff_file(path)
    except formats.FormatRefused as exc:
        raise Reject(f"{path.name}: {exc}") from None


@contextmanager
def _pixel_limit() -> Iterator[None]:
    """Make Pillow's decompression-bomb warning an error, at our pixel limit."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _reason(exc: BaseException, source_format: str) -> str:
    kind = formats.ALLOWED.get(source_format, source_format)
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found[1]} pixels" if found else "too many pixels"
        return f"image has {size}, over the limit of {MAX_PIXELS} (a possible decompression bomb)"
    if isinstance(exc, MemoryError):
        return "image needs more memory than the job may use"
    text = str(exc) or type(exc).__name__
    if "truncated" in text or isinstance(exc, EOFError):
        return f"{kind} image is truncated or corrupt ({text})"
    return f"cannot decode {kind} image: {text}"


def _render(
    img: Image.Image, target: tuple[int, int], mode: str, gravity: str, fmt: str,
    keep_profile: bool,
) -> tuple[list[Image.Image], dict[str, Any]]:
    """Decode, orient, resize and colour-convert every frame; return frames and save options."""
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise Reject(f"image is {width}x{height}, over the limit of {MAX_PIXELS} pixels")
    icc = img.info.get("icc_profile")
    count = getattr(img, "n_frames", 1) if img.format in formats.ANIMATED else 1
    if count == 1:
        _draft(img, target, mode, gravity)
        ImageOps.exif_transpose(img, in_place=True)
        frame, profile = _frame(img, target, mode, gravity, fmt, icc, keep_profile)
        return [frame], {"icc_profile": profile}
    if fmt == "jpeg":
        raise Reject(f"animated {img.format} ({count} frames) cannot be written as JPEG; "
                     "ask for --format png or --format webp")
    if count > MAX_FRAMES or count * width * height > MAX_TOTAL_PIXELS:
        raise Reject(f"animation of {count} frames at {width}x{height} is over the limits "
                     f"({MAX_FRAMES} frames, {MAX_TOTAL_PIXELS} pixels in all)")
    out, durations = [], []
    for each in ImageSequence.Iterator(img):
        durations.append(each.info.get("duration", 100))
        rgba = each.convert("RGBA")
        ImageOps.exif_transpose(rgba, in_place=True)
        frame, profile = _frame(rgba, target, mode, gravity, fmt, icc, keep_profile)
        out.append(frame)
    if len(out) * out[0].size[0] * out[0].size[1] > MAX_TOTAL_PIXELS:
        raise Reject(f"resized animation would exceed {MAX_TOTAL_PIXELS} pixels in all")
    return out, {"icc_profile": profile, "save_all": True, "append_images": out[1:],
                 "duration": durations, "loop": img.info.get("loop", 0)}


def _draft(img: Image.Image, target: tuple[int, int], mode: str, gravity: str) -> None:
    """Let libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale, keeping 2x what we need."""
    if img.format not in ("JPEG", "MPO"):
        return
    swapped = img.getexif().get(_ORIENTATION, 1) in _SWAPPING
    oriented = (img.size[1], img.size[0]) if swapped else img.size
    request = draft_request(img.size, plan(oriented, target, mode, gravity), swapped)
    if request[0] < img.size[0] and request[1] < img.size[1]:
        img.draft(img.mode, request)


def _frame(
    img: Image.Image, target: tuple[int, int], mode: str, gravity: str, fmt: str,
    icc: bytes | None, keep_profile: bool,
) -> tuple[Image.Image, bytes | None]:
    work = color.working_mode(img)
    chosen = plan(work.size, target, mode, gravity)
    if chosen.size[0] * chosen.size[1] > MAX_PIXELS:
        raise Reject(f"output of {chosen.size[0]}x{chosen.size[1]} is over the limit of "
                     f"{MAX_PIXELS} pixels")
    resized = work.resize(chosen.size, Image.Resampling.LANCZOS, box=chosen.box,
                          reducing_gap=3.0)
    resized, profile = color.to_srgb(resized, icc, keep_profile)
    resized = color.for_output(resized, fmt)
    resized.info = {}  # nothing of the source's metadata leaks through Pillow's defaults
    return resized, profile


def _metadata(img: Image.Image, size: tuple[int, int], fmt: str) -> dict[str, Any]:
    """EXIF (orientation already applied and removed, pixel size updated) and XMP to keep."""
    extra: dict[str, Any] = {}
    exif = img.getexif()
    exif.pop(_ORIENTATION, None)  # the pixels are already turned upright
    if len(exif):
        ifd = exif.get_ifd(_EXIF_IFD)
        for tag, value in ((0xA002, size[0]), (0xA003, size[1])):
            if tag in ifd:
                ifd[tag] = value
        extra["exif"] = exif.tobytes()
    xmp = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
    if xmp:
        xmp = xmp.encode() if isinstance(xmp, str) else xmp
        if fmt == "png":
            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace"))
            extra["pnginfo"] = info
        else:
            extra["xmp"] = xmp
    return extra


def _save(
    ctx: JobContext, name: str, frames: list[Image.Image], fmt: str, quality: int,
    extra: dict[str, Any],
) -> int:
    """Write to the job's tmp dir, then move into ``out/``: a failed save leaves no output."""
    options: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
    if fmt == "jpeg":
        options.update(quality=quality, optimize=True)
    elif fmt == "webp":
        options.update(quality=quality, method=4)
    ctx.tmp_dir.mkdir(parents=True, exist_ok=True)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    partial = ctx.tmp_dir / f"{name}.part"
    frames[0].save(partial, format=fmt.upper(), **options)
    final = ctx.out_dir / name
    os.replace(partial, final)
    return final.stat().st_size
