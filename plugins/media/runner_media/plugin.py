"""First-party media jobs, written only against runner's public plugin API.

Loading this plugin imports click and runner only; Pillow is imported by the job itself, in the
worker's child interpreter.  The ``convert`` job (ImageMagick) is registered only when an
ImageMagick binary is found; otherwise ``runner plugins`` names what was tried.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from runner import JobType, RetryPolicy, SandboxProfile, hookimpl
from runner_media import convert, magick
from runner_media.geometry import GRAVITIES, MAX_SIZES, MODES, parse_size, parse_sizes

# Nothing here imports Pillow (runner_media.thumbnails, resize, color do): only the job
# processes need it, and every process that loads the plugins would pay for it.

__all__ = ["CONTACT_SHEET", "RESIZE", "THUMBNAILS", "convert_job", "register_jobs"]


class SizeType(click.ParamType):
    """``WxH`` with each side 1..20000; converts to the canonical ``"WxH"`` string."""

    name = "WxH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            width, height = parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return f"{width}x{height}"


class _Checked(click.ParamType):
    """A string checked (and made canonical) by one of the jobs' own parsers."""

    def __init__(self, name: str, check: Callable[[str], Any], canonical: Callable[[Any], str]):
        self.name = name
        self._check = check
        self._canonical = canonical

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return self._canonical(self._check(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIZES = _Checked("WxH,...", parse_sizes, lambda sizes: ",".join(f"{w}x{h}" for w, h in sizes))
RESIZE_GEOMETRY = _Checked("WxH[!^<>]", convert.parse_resize, str)
CROP_GEOMETRY = _Checked("WxH+X+Y", convert.parse_crop, str)


def _output_options() -> tuple[click.Option, ...]:
    """Output format, quality and crop gravity: the same for resize and thumbnails."""
    return (
        click.Option(["--format"], type=click.Choice(("jpeg", "png", "webp")), default=None,
                     help="Output format [default: the input's; PNG for GIF, TIFF, BMP]."),
        click.Option(["--quality"], type=click.IntRange(1, 100), default=85, show_default=True,
                     help="JPEG/WebP quality."),
        click.Option(["--gravity"], type=click.Choice(tuple(GRAVITIES)), default="center",
                     show_default=True, help="Where --mode fill crops from."),
    )


RESIZE = JobType(
    name="resize",
    help=(
        "Resize an image (JPEG, PNG, WebP, GIF, TIFF, BMP) to WxH: EXIF orientation applied, "
        "colour converted to sRGB, metadata stripped unless asked to keep it. "
        "Writes <name>_<W>x<H>.<ext>."
    ),
    params=(
        click.Argument(["image"], type=click.Path(exists=True, dir_okay=False)),
        click.Option(["--size"], type=SizeType(), required=True,
                     help="Target box, WIDTHxHEIGHT (each 1..20000)."),
        click.Option(["--mode"], type=click.Choice(MODES), default="fit", show_default=True,
                     help="fit: inside the box; fill: cover it and crop; exact: stretch."),
        *_output_options(),
        click.Option(["--keep-metadata"], is_flag=True,
                     help="Keep EXIF (GPS included) and XMP instead of stripping them."),
        click.Option(["--keep-profile"], is_flag=True,
                     help="Keep the ICC profile instead of converting the pixels to sRGB."),
    ),
    function="runner_media.resize:resize",
    inputs=("image",),
    timeout=120.0,
    # A broken or hostile image fails the same way every time: the job Rejects those. The one
    # extra attempt is for a worker lost mid-job; running out of memory will not improve.
    retry=RetryPolicy(attempts=2, backoff=5.0, fatal_exceptions=("MemoryError",)),
    route="default",
    sandbox=SandboxProfile(
        network=False,
        memory=2 << 30,  # a 61 MP RGBA frame and its resampling buffers fit several times over
        cpu_seconds=180,  # above the wall-clock timeout, which should fire first
        file_size=512 << 20,
    ),
)


THUMBNAILS = JobType(
    name="thumbnails",
    help=(
        "Several sizes of one image from a single decode (JPEG draft mode at the scale the "
        "largest needs): EXIF orientation applied, sRGB, metadata stripped. An animation gives "
        "thumbnails of its first frame. Writes <name>_<W>x<H>.<ext> for each size."
    ),
    params=(
        click.Argument(["image"], type=click.Path(exists=True, dir_okay=False)),
        click.Option(["--sizes"], type=SIZES, default="64x64,200x200,800x800", show_default=True,
                     help=f"Comma-separated target boxes, WIDTHxHEIGHT (at most {MAX_SIZES})."),
        click.Option(["--mode"], type=click.Choice(MODES), default="fit", show_default=True,
                     help="fit: inside each box; fill: cover it and crop; exact: stretch."),
        *_output_options(),
    ),
    function="runner_media.thumbnails:thumbnails",
    inputs=("image",),
    timeout=120.0,
    retry=RESIZE.retry,
    route="default",
    sandbox=RESIZE.sandbox,
)


CONTACT_SHEET = JobType(
    name="contact-sheet",
    help=(
        "A group's images in a labelled grid, as one image: run it as a group's callback "
        "(runner submit thumbnails photos/*.jpg --then contact-sheet). Failed members show as "
        "grey tiles labelled with their error. Writes contact-sheet.<ext>."
    ),
    params=(
        click.Option(["--tile"], type=SizeType(), default="200x200", show_default=True,
                     help="Box each image is fitted into, WIDTHxHEIGHT (each side at most 1000)."),
        click.Option(["--columns"], type=click.IntRange(0, 100), default=0,
                     help="Tiles per row [default: a square grid]."),
        click.Option(["--title"], default="", help="A line of text above the grid."),
        click.Option(["--format"], type=click.Choice(("jpeg", "png", "webp")), default="jpeg",
                     show_default=True, help="Output format."),
        click.Option(["--quality"], type=click.IntRange(1, 100), default=85, show_default=True,
                     help="JPEG/WebP quality."),
    ),
    function="runner_media.contact:contact_sheet",
    timeout=300.0,
    retry=RESIZE.retry,
    route="default",
    sandbox=RESIZE.sandbox,
)


def convert_job(found: magick.ImageMagick) -> JobType:
    """The ``convert`` job type, running the ImageMagick ``found`` at registration."""
    radius = click.FloatRange(0, convert.MAX_RADIUS, min_open=True)
    return JobType(
        name="convert",
        help=(
            f"Convert an image (JPEG, PNG, GIF, WebP) with ImageMagick {found.version}: a fixed "
            "set of operations, applied in this order: auto-orient, crop, rotate, flip, flop, "
            "resize, colorspace, blur, sharpen, strip. Writes <name>_converted.<ext>."
        ),
        params=(
            click.Argument(["image"], type=click.Path(exists=True, dir_okay=False)),
            click.Option(["--crop"], type=CROP_GEOMETRY, help="Keep the box WIDTHxHEIGHT+X+Y."),
            click.Option(["--rotate"], type=click.FloatRange(-360, 360), metavar="DEGREES",
                         help="Rotate clockwise by DEGREES (-360..360)."),
            click.Option(["--flip"], is_flag=True, help="Mirror top to bottom."),
            click.Option(["--flop"], is_flag=True, help="Mirror left to right."),
            click.Option(["--resize"], type=RESIZE_GEOMETRY,
                         help="Fit in WIDTHxHEIGHT; suffix ! exact, ^ fill, > only shrink, "
                              "< only enlarge."),
            click.Option(["--colorspace"], type=click.Choice(convert.COLORSPACES),
                         help="Convert the pixels to sRGB or grey."),
            click.Option(["--blur"], type=radius, metavar="RADIUS", help="Gaussian blur of this radius (sigma)."),
            click.Option(["--sharpen"], type=radius, metavar="RADIUS", help="Sharpen with this radius (sigma)."),
            click.Option(["--strip"], is_flag=True, help="Remove metadata and profiles."),
            click.Option(["--quality"], type=click.IntRange(1, 100), help="JPEG/WebP quality."),
            click.Option(["--format"], type=click.Choice(convert.OUTPUTS),
                         help="Output format [default: the input's]."),
        ),
        argv=functools.partial(convert.argv, magick=found),
        inputs=("image",),
        timeout=120.0,
        # Exit 1 is ImageMagick refusing or failing on the input, 65 our own refusal: both
        # fail the same way again.  Signals (out of memory, timeout) get one more attempt.
        retry=RetryPolicy(attempts=2, backoff=5.0, fatal_on_exit=(1, convert.REFUSED)),
        route="default",
        sandbox=SandboxProfile(
            network=False,
            memory=1 << 30,  # the policy caps the pixel cache at 256 MiB + 512 MiB mapped
            cpu_seconds=180,
            processes=64,
            file_size=1 << 30,  # the policy's disk limit: pixel cache spilled to tmp/
            binds=found.binds(),
        ),
    )


@hookimpl
def register_jobs(register: Any, settings: Any) -> None:
    """Register the media job types; ``convert`` only where ImageMagick is found.

    Raises:
        magick.NotFound: after registering the others, so ``runner plugins`` says why
            ``convert`` is missing.
    """
    register(RESIZE)
    register(THUMBNAILS)
    register(CONTACT_SHEET)
    table = settings.jobs.get("convert", {}) if settings is not None else {}
    try:
        found = magick.find(table.get("binary"))
    except magick.NotFound as exc:
        raise magick.NotFound(f"job 'convert' not registered: {exc}") from None
    register(convert_job(found))
