"""The ``thumbnails`` job: several sizes of one image from a single decode.

A large JPEG is decoded once, at the reduced scale the largest size still has twice the pixels
for (JPEG draft mode); every output is then resampled from that one decoded picture.  Input
checks, orientation, colour and metadata stripping are the resize job's.  Thumbnails are
stills: an animation gives the thumbnails of its first frame.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageOps

from runner import JobContext, Reject
from runner_media import color, formats
from runner_media.geometry import draft_request, parse_sizes, plan
from runner_media.resize import (
    _DECODE_ERRORS,
    _ORIENTATION,
    _SWAPPING,
    MAX_PIXELS,
    _check_file,
    _frame,
    _input_path,
    _pixel_limit,
    _reason,
    _save,
)


def thumbnails(
    ctx: JobContext,
    image: str,
    sizes: str = "64x64,200x200,800x800",
    mode: str = "fit",
    format: str | None = None,  # the declared parameter's name
    quality: int = 85,
    gravity: str = "center",
) -> dict[str, Any]:
    """Write ``<stem>_<W>x<H>.<ext>`` into ``ctx.out_dir`` for each of ``sizes``.

    Returns ``{"files": [{"file", "width", "height", "bytes"}, ...], "format", "decodes",
    "decoded": [W, H], "source": [W, H]}``: ``decodes`` counts the times the input's pixels
    were decoded (1), ``decoded`` is the size they were decoded at (smaller than ``source``
    for a JPEG in draft mode).

    Raises:
        Reject: bad parameters, a refused or broken input, or limits exceeded.
    """
    path = _input_path(ctx, image)
    try:
        targets = parse_sizes(sizes)
        for target in targets:
            plan((1, 1), target, mode, gravity)  # validates mode and gravity
    except ValueError as exc:
        raise Reject(str(exc)) from None
    if format is not None and format not in formats.OUTPUTS:
        raise Reject(f"format {format!r} is not one of {', '.join(formats.OUTPUTS)}")
    if not 1 <= int(quality) <= 100:
        raise Reject(f"quality {quality} is not between 1 and 100")
    source_format = _check_file(path)
    written: list[dict[str, Any]] = []
    with _pixel_limit():
        try:
            with Image.open(path, formats=[source_format]) as img:
                fmt = format or formats.default_output(img.format or source_format)
                source = img.size
                decodes, decoded, work, icc = _decode_once(img, targets, mode, gravity)
                for done, target in enumerate(targets, 1):
                    frame, profile = _frame(work, target, mode, gravity, fmt, icc, False)
                    name = f"{path.stem[:150]}_{target[0]}x{target[1]}.{formats.EXTENSIONS[fmt]}"
                    size = _save(ctx, name, [frame], fmt, int(quality), {"icc_profile": profile})
                    written.append({"file": name, "width": frame.width, "height": frame.height,
                                    "bytes": size})
                    ctx.progress(done, len(targets), name)
        except Reject as exc:
            raise Reject(f"{path.name}: {exc.reason}") from None
        except _DECODE_ERRORS as exc:
            raise Reject(f"{path.name}: {_reason(exc, source_format)}") from exc
    return {"files": written, "format": fmt, "decodes": decodes, "decoded": list(decoded),
            "source": list(source)}


def _decode_once(
    img: Image.Image, targets: list[tuple[int, int]], mode: str, gravity: str,
) -> tuple[int, tuple[int, int], Image.Image, bytes | None]:
    """Decode the (first frame's) pixels once, at the scale the largest output needs.

    Returns the number of decodes that ran (1: Pillow never decodes a loaded frame again),
    the decoded size, the upright picture in a working mode, and the ICC profile.
    """
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise Reject(f"image is {width}x{height}, over the limit of {MAX_PIXELS} pixels")
    icc = img.info.get("icc_profile")
    if img.format in ("JPEG", "MPO"):
        swapped = img.getexif().get(_ORIENTATION, 1) in _SWAPPING
        oriented = (height, width) if swapped else (width, height)
        requests = [draft_request(img.size, plan(oriented, t, mode, gravity), swapped)
                    for t in targets]
        request = (max(r[0] for r in requests), max(r[1] for r in requests))
        if request[0] < width and request[1] < height:
            img.draft(img.mode, request)
    decodes = 1 if getattr(img, "tile", None) else 0  # pixels not yet decoded
    img.load()
    decoded = img.size
    ImageOps.exif_transpose(img, in_place=True)
    return decodes, decoded, color.working_mode(img), icc
