"""The ``contact-sheet`` job: a group's images laid out in a labelled grid, as one image.

It runs as a group's callback (``runner submit thumbnails photos/*.jpg --then contact-sheet``):
the worker hands it ``members.json`` and the members' output files.  Each member gets one tile:
its image (of several, the smallest that still fills the tile), fitted into the tile and
labelled with its file name; a failed member gets a grey tile labelled with its error, so a
gap in the batch shows instead of hiding.  Every member image passes the resize job's checks
(sniffed format, size and pixel limits) before a decoder sees it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from runner import JobContext, Reject
from runner_media import formats
from runner_media.geometry import parse_size
from runner_media.resize import (
    _DECODE_ERRORS,
    MAX_PIXELS,
    _check_file,
    _pixel_limit,
    _save,
)

MAX_TILES = 2000
MAX_TILE_SIDE = 1000
LABEL_HEIGHT = 16
GAP = 4
BACKGROUND = (255, 255, 255)
FAILED = (200, 200, 200)
NAME = "contact-sheet"


def contact_sheet(
    ctx: JobContext,
    tile: str = "200x200",
    columns: int = 0,
    title: str = "",
    format: str = "jpeg",  # the declared parameter's name
    quality: int = 85,
) -> dict[str, Any]:
    """Write ``contact-sheet.<ext>`` into ``ctx.out_dir``.

    Returns ``{"file", "width", "height", "columns", "rows", "tiles", "failed"}``.

    Raises:
        Reject: not run as a group's callback, bad parameters, or a sheet past the limits.
    """
    listing = _members(ctx.in_dir)
    try:
        width, height = parse_size(tile)
    except ValueError as exc:
        raise Reject(str(exc)) from None
    if max(width, height) > MAX_TILE_SIDE:
        raise Reject(f"tile {tile}: each side at most {MAX_TILE_SIDE}")
    if format not in formats.OUTPUTS:
        raise Reject(f"format {format!r} is not one of {', '.join(formats.OUTPUTS)}")
    members = listing["members"]
    if not members or len(members) > MAX_TILES:
        raise Reject(f"a contact sheet takes 1 to {MAX_TILES} members, not {len(members)}")
    cols = int(columns) or math.ceil(math.sqrt(len(members)))
    rows = math.ceil(len(members) / cols)
    top = LABEL_HEIGHT + GAP if title else 0
    cell = (width + GAP, height + LABEL_HEIGHT + GAP)
    size = (cols * cell[0] + GAP, top + rows * cell[1] + GAP)
    if size[0] * size[1] > MAX_PIXELS:
        raise Reject(f"the sheet would be {size[0]}x{size[1]}, over {MAX_PIXELS} pixels")
    sheet = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if title:
        draw.text((GAP, GAP), title[:200], fill=(0, 0, 0), font=font)
    failed = 0
    for i, member in enumerate(members):
        x = GAP + (i % cols) * cell[0]
        y = top + GAP + (i // cols) * cell[1]
        picture, label = _tile(ctx.in_dir, member, (width, height))
        if picture is None:
            failed += 1
            draw.rectangle((x, y, x + width - 1, y + height - 1), fill=FAILED)
        else:
            sheet.paste(picture, (x + (width - picture.width) // 2, y + (height - picture.height) // 2))
        draw.text((x, y + height + 2), _fit(draw, label, width, font), fill=(0, 0, 0), font=font)
    name = f"{NAME}.{formats.EXTENSIONS[format]}"
    written = _save(ctx, name, [sheet], format, int(quality), {})
    return {"file": name, "width": size[0], "height": size[1], "columns": cols, "rows": rows,
            "tiles": len(members), "failed": failed, "bytes": written}


def _members(in_dir: Path) -> dict[str, Any]:
    path = in_dir / "members.json"
    if not path.is_file():
        raise Reject("contact-sheet runs as a group's callback "
                     "(runner submit thumbnails photos/*.jpg --then contact-sheet)")
    try:
        listing = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(listing.get("members"), list):
            raise ValueError("no member list")
    except (ValueError, AttributeError) as exc:
        raise Reject(f"members.json is not a group listing: {exc}") from None
    return listing


def _tile(in_dir: Path, member: Any, box: tuple[int, int]) -> tuple[Image.Image | None, str]:
    """A member's picture fitted into ``box`` and its label; (None, why) when there is none."""
    if not isinstance(member, dict):
        return None, "?"
    if member.get("status") != "succeeded":
        return None, f"failed: {member.get('error') or member.get('status')}"
    found: list[tuple[int, int, Path, str]] = []
    for name in member.get("outputs") or []:
        path = in_dir / str(name)
        if path.parent != in_dir:
            continue  # a name with a path in it: not one the worker wrote
        try:
            fmt = _check_file(path)
        except Reject:
            continue
        dims = formats.dimensions(path, fmt)
        if dims is not None:
            found.append((dims[0] * dims[1], dims[0] >= box[0] or dims[1] >= box[1], path, fmt))
    if not found:
        return None, "no image"
    # The smallest image that still fills the tile (least to decode), else the largest.
    covering = [f for f in found if f[1]]
    best = min(covering) if covering else max(found)
    label = best[2].name.split("-", 1)[-1]
    with _pixel_limit():
        try:
            with Image.open(best[2], formats=[best[3]]) as img:
                img.draft("RGB", box)
                picture = ImageOps.exif_transpose(img).convert("RGB")
                picture.thumbnail(box)
                return picture, label
        except _DECODE_ERRORS:
            return None, f"unreadable: {label}"


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font: Any) -> str:
    """Cut a label to the tile's width, with an ellipsis."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
