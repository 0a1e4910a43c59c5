"""Sizes and crop boxes: the arithmetic of fit, fill and exact, kept free of Pillow."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_SIDE = 20000
MODES = ("fit", "fill", "exact")
# Where a fill crop is anchored, as (x, y) fractions of the spare width and height.
GRAVITIES = {
    "center": (0.5, 0.5),
    "north": (0.5, 0.0),
    "south": (0.5, 1.0),
    "east": (1.0, 0.5),
    "west": (0.0, 0.5),
    "northeast": (1.0, 0.0),
    "northwest": (0.0, 0.0),
    "southeast": (1.0, 1.0),
    "southwest": (0.0, 1.0),
}

_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"WxH"`` into ``(W, H)``; each side must be 1..20000.

    Raises:
        ValueError: with a message fit to show a user.
    """
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 200x200")
    if max(len(match[1]), len(match[2])) > len(str(MAX_SIDE)):  # no int() of a huge digit run
        raise ValueError(f"size {text!r}: each side must be between 1 and {MAX_SIDE}")
    width, height = int(match[1]), int(match[2])
    for side in (width, height):
        if not 1 <= side <= MAX_SIDE:
            raise ValueError(f"size {text!r}: each side must be between 1 and {MAX_SIDE}")
    return width, height


@dataclass(frozen=True)
class Plan:
    """How to turn a source of some size into the output.

    Attributes:
        size: output width and height.
        box: the source region (left, upper, right, lower; floats) scaled onto ``size``.
    """

    size: tuple[int, int]
    box: tuple[float, float, float, float]

    def scale(self) -> tuple[float, float]:
        """Output pixels per source pixel, per axis."""
        left, upper, right, lower = self.box
        return self.size[0] / (right - left), self.size[1] / (lower - upper)


def plan(
    source: tuple[int, int], target: tuple[int, int], mode: str = "fit", gravity: str = "center"
) -> Plan:
    """Plan a resize of a ``source``-sized image into the ``target`` box.

    ``fit`` keeps the aspect ratio and fits inside the box (one side may be shorter);
    ``fill`` keeps the aspect ratio, covers the box and crops the overflow at ``gravity``;
    ``exact`` stretches to the box.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if gravity not in GRAVITIES:
        raise ValueError(f"gravity {gravity!r} is not one of {', '.join(GRAVITIES)}")
    sw, sh = source
    tw, th = target
    full = (0.0, 0.0, float(sw), float(sh))
    if mode == "exact":
        return Plan((tw, th), full)
    if mode == "fit":
        scale = min(tw / sw, th / sh)
        size = (max(1, min(tw, round(sw * scale))), max(1, min(th, round(sh * scale))))
        return Plan(size, full)
    scale = max(tw / sw, th / sh)
    cw, ch = min(sw, tw / scale), min(sh, th / scale)
    gx, gy = GRAVITIES[gravity]
    left, upper = (sw - cw) * gx, (sh - ch) * gy
    return Plan((tw, th), (left, upper, left + cw, upper + ch))


def draft_request(source: tuple[int, int], chosen: Plan, transposed: bool) -> tuple[int, int]:
    """The size to ask a JPEG decoder for so that it still has 2x the pixels the plan needs.

    ``source`` is the stored (not yet rotated) size; ``transposed`` says whether the EXIF
    orientation swaps the axes, in which case the plan's axes are swapped back.
    """
    sx, sy = chosen.scale()
    if transposed:
        sx, sy = sy, sx
    return max(1, int(source[0] * sx * 2)), max(1, int(source[1] * sy * 2))


MAX_SIZES = 16


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"64x64,200x200"`` -> ``[(64, 64), (200, 200)]``: 1..16 sizes, duplicates dropped.

    Raises:
        ValueError: with a message fit to show a user.
    """
    parts = [part for part in str(text).split(",") if part.strip()]
    if not parts:
        raise ValueError("sizes: give at least one WIDTHxHEIGHT, e.g. 64x64,200x200")
    sizes = list(dict.fromkeys(parse_size(part) for part in parts))
    if len(sizes) > MAX_SIZES:
        raise ValueError(f"sizes: {len(sizes)} sizes, at most {MAX_SIZES}")
    return sizes
