"""First-party media jobs, written only against runner's public plugin API.

Loading this plugin imports click and runner only; Pillow is imported by the job itself, in the
worker's child interpreter.
"""

from __future__ import annotations

from typing import Any

import click

from runner import JobType, RetryPolicy, SandboxProfile, hookimpl
from runner_media.geometry import GRAVITIES, MODES, parse_size

__all__ = ["RESIZE", "register_jobs"]


class SizeType(click.ParamType):
    """``WxH`` with each side 1..20000; converts to the canonical ``"WxH"`` string."""

    name = "WxH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            width, height = parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return f"{width}x{height}"


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
        click.Option(["--format"], type=click.Choice(("jpeg", "png", "webp")), default=None,
                     help="Output format [default: the input's; PNG for GIF, TIFF, BMP]."),
        click.Option(["--quality"], type=click.IntRange(1, 100), default=85, show_default=True,
                     help="JPEG/WebP quality."),
        click.Option(["--gravity"], type=click.Choice(tuple(GRAVITIES)), default="center",
                     show_default=True, help="Where --mode fill crops from."),
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


@hookimpl
def register_jobs(register: Any) -> None:
    """Register the media job types."""
    register(RESIZE)
