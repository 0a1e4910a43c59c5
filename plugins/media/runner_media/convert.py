"""The ``convert`` job: a fixed vocabulary of operations turned into an ImageMagick argv.

Nothing from a message reaches ImageMagick as text of its own: every operation is validated
here into numbers and names from fixed lists, the input coder is pinned from the sniffed content
(``jpeg:in``), and file names hold no ImageMagick syntax (the input is linked to
``tmp/input-<name>`` and the output written as ``<name>_converted.<ext>``, with only letters,
digits, ``_``, ``.`` and ``-`` kept of the user's name).  The argv is built in the worker just before
the job runs; an input refused here never reaches ImageMagick: the job then runs only a
one-line refusal that exits with :data:`REFUSED` (fatal, no retry).

Operations are applied in one fixed order, whatever the order of the options:
auto-orient, crop, rotate, flip, flop, resize, colorspace, blur, sharpen, strip.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.context import JobContext
from runner_media import formats
from runner_media.magick import ImageMagick

OUTPUTS = ("png", "jpeg", "webp", "gif")
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "gif": "gif"}
CODERS = {"JPEG": "jpeg", "PNG": "png", "GIF": "gif", "WEBP": "webp"}  # inputs: the policy's
COLORSPACES = ("sRGB", "Gray")
MAX_SIDE = 8192  # the policy's width and height limits (8KP)
MAX_PIXELS = 64_000_000  # and its area limit, as the resize job's
MAX_FILE_BYTES = 128 << 20
MAX_RADIUS = 50.0
REFUSED = 65  # EX_DATAERR: the input or a parameter was refused before ImageMagick ran
# Below the policy's own values, which a job cannot raise; -limit can only lower them.
LIMITS = ("memory", "256MiB", "map", "512MiB", "area", "64MP", "disk", "1GiB", "time", "60",
          "thread", "2", "width", "8KP", "height", "8KP", "list-length", "32")
# Run ImageMagick, then repeat its first message last, without the source location: the
# worker reports the last line of stderr, and ImageMagick's first line names the cause ("no
# images defined" follows it).
_REPORT = ('err="$TMPDIR/imagemagick.stderr"; "$@" 2>"$err"; rc=$?; cat "$err" >&2; '
           'if [ "$rc" -ne 0 ]; then head -n 1 "$err" | sed "s/ @ [a-z]*\\/[^ ]*$//" >&2; fi; '
           'exit "$rc"')
_REFUSE = 'printf "%s\\n" "$1" >&2; exit ' + str(REFUSED)
_RESIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*([!^<>]?)\s*$")
_CROP_RE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*\+(\d{1,5})\s*\+(\d{1,5})\s*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class Refused(ValueError):
    """An input or parameter the job will not pass to ImageMagick; one line for the user."""


def parse_resize(text: str) -> str:
    """``WxH`` with an optional flag: ``!`` exact, ``^`` fill, ``>`` only shrink, ``<`` only
    enlarge; each side 1..8192.  Returns the canonical form, e.g. ``"200x100!"``."""
    match = _RESIZE_RE.match(str(text))
    if not match:
        raise Refused(f"resize {text!r} is not WIDTHxHEIGHT with an optional !, ^, > or <")
    width, height = _sides(text, match[1], match[2])
    return f"{width}x{height}{match[3]}"


def parse_crop(text: str) -> str:
    """``WxH+X+Y``: a box of 1..8192 per side at an offset of 0..8191.  Canonical form back."""
    match = _CROP_RE.match(str(text))
    if not match:
        raise Refused(f"crop {text!r} is not WIDTHxHEIGHT+X+Y, e.g. 100x100+10+20")
    width, height = _sides(text, match[1], match[2])
    x, y = int(match[3]), int(match[4])
    if x >= MAX_SIDE or y >= MAX_SIDE:
        raise Refused(f"crop {text!r}: the offset must be below {MAX_SIDE}")
    return f"{width}x{height}+{x}+{y}"


def _sides(text: str, width: str, height: str) -> tuple[int, int]:
    sides = int(width), int(height)
    if not all(1 <= side <= MAX_SIDE for side in sides):
        raise Refused(f"{text!r}: each side must be between 1 and {MAX_SIDE}")
    return sides


def _number(name: str, value: Any, low: float, high: float, open_low: bool = False) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Refused(f"{name} {value!r} is not a number") from None
    if not (low < number if open_low else low <= number) or not number <= high:  # NaN too
        raise Refused(f"{name} {value!r} is not between {low:g} and {high:g}")
    return f"{number:g}"


def operations(params: Mapping[str, Any]) -> list[str]:
    """ImageMagick operators for the validated ``params``, in the fixed order.

    Raises:
        Refused: a parameter outside the vocabulary.
    """
    ops = ["-auto-orient"]
    if params.get("crop"):
        ops += ["-crop", parse_crop(params["crop"]), "+repage"]
    if params.get("rotate") not in (None, 0, 0.0):
        ops += ["-rotate", _number("rotate", params["rotate"], -360, 360), "+repage"]
    for flag in ("flip", "flop"):
        if params.get(flag):
            ops.append(f"-{flag}")
    if params.get("resize"):
        ops += ["-resize", parse_resize(params["resize"])]
    space = params.get("colorspace")
    if space:
        if space not in COLORSPACES:
            raise Refused(f"colorspace {space!r} is not one of {', '.join(COLORSPACES)}")
        ops += ["-colorspace", space]
    for name in ("blur", "sharpen"):
        if params.get(name) is not None:
            ops += [f"-{name}", "0x" + _number(name, params[name], 0, MAX_RADIUS, open_low=True)]
    if params.get("strip"):
        ops.append("-strip")
    quality = params.get("quality")
    if quality is not None:
        if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
            raise Refused(f"quality {quality!r} is not a whole number between 1 and 100")
        ops += ["-quality", str(quality)]
    return ops


def argv(params: Mapping[str, Any], ctx: JobContext, magick: ImageMagick) -> list[str]:
    """The job's argv: ImageMagick on the pinned input, or a refusal that never starts it."""
    try:
        return _convert_argv(params, ctx, magick)
    except Refused as exc:
        return ["/bin/sh", "-c", _REFUSE, "refuse", str(exc).replace("\n", " ")[:300]]


def _convert_argv(params: Mapping[str, Any], ctx: JobContext, magick: ImageMagick) -> list[str]:
    path = _input_path(ctx, str(params.get("image", "")))
    ops = operations(params)
    coder = _input_coder(path)
    fmt = params.get("format") or coder
    if fmt not in OUTPUTS:
        raise Refused(f"format {fmt!r} is not one of {', '.join(OUTPUTS)}")
    # The worker's own name for the input: a user's name could hold ImageMagick syntax
    # (file[0], *.jpg, %d); this one cannot.
    ctx.tmp_dir.mkdir(parents=True, exist_ok=True)
    source = ctx.tmp_dir / f"input-{_safe(path.name)}"
    try:
        os.link(path, source)
    except OSError:
        shutil.copyfile(path, source)
    animated = coder in ("gif", "webp") and fmt in ("gif", "webp")
    # A still output takes the first frame: otherwise ImageMagick writes out-0.png, out-1.png...
    reading = f"{coder}:{source}" + ("" if animated else "[0]")
    output = ctx.out_dir / f"{_safe(path.stem)}_converted.{EXTENSIONS[fmt]}"
    limits = [part for i in range(0, len(LIMITS), 2) for part in ("-limit", *LIMITS[i:i + 2])]
    return [*magick.environment(ctx.tmp_dir), "/bin/sh", "-c", _REPORT, "imagemagick",
            magick.binary, "-regard-warnings", *limits, reading,
            *(["-coalesce"] if animated else []), *ops, f"{fmt}:{output}"]


def _safe(name: str) -> str:
    """``name`` with nothing ImageMagick reads as syntax: letters, digits, ``_ . -`` only."""
    return _UNSAFE.sub("_", name).lstrip("._-")[:100] or "image"


def _input_path(ctx: JobContext, image: str) -> Path:
    path = Path(os.path.normpath(ctx.in_dir / image))
    if ctx.in_dir.absolute() not in path.absolute().parents:
        raise Refused(f"input {image!r} is not a file in the job's input directory")
    return path


def _input_coder(path: Path) -> str:
    """Sniff the content; refuse what the policy does not allow and what is too large."""
    if not path.is_file() or path.is_symlink():
        raise Refused(f"{path.name}: input is missing or not a regular file")
    length = path.stat().st_size
    if length == 0:
        raise Refused(f"{path.name}: file is empty (0 bytes)")
    if length > MAX_FILE_BYTES:
        raise Refused(f"{path.name}: file is {length} bytes, over the limit of {MAX_FILE_BYTES}")
    try:
        kind = formats.sniff_file(path)
    except formats.FormatRefused as exc:
        raise Refused(f"{path.name}: {exc}") from None
    if kind not in CODERS:
        allowed = ", ".join(formats.ALLOWED[k] for k in CODERS)
        raise Refused(f"{path.name}: {formats.ALLOWED[kind]} is not an input of convert "
                      f"(allowed: {allowed})")
    size = formats.dimensions(path, kind)
    if size is not None:
        width, height = size
        if width * height > MAX_PIXELS or max(size) > MAX_SIDE:
            raise Refused(f"{path.name}: image is {width}x{height}, over the limits of "
                          f"{MAX_SIDE} pixels a side and {MAX_PIXELS} pixels "
                          "(a possible decompression bomb)")
    return CODERS[kind]
