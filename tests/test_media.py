"""The media plugin's resize job, called directly as the worker's child interpreter calls it.

Checks pixels, not just files: sizes, where the corners end up, colours, alpha, metadata; and
that every hostile fixture is refused with a clear reason.  (End-to-end runs through a worker
live with the worker's tests.)
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from PIL import Image, ImageCms, ImageSequence

import runner_media.plugin as runner_media
from runner import Reject
from runner.config import Settings
from runner.errors import JobError
from runner.jobs import JobContext, Registry
from runner_media.geometry import draft_request, parse_size, plan
from runner_media.resize import resize
from runner_media.thumbnails import parse_sizes, thumbnails

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "fixtures" / "images"
EDGE = IMAGES / "edge"
HOSTILE = IMAGES / "hostile"
RED, GREEN, BLUE, YELLOW, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255,) * 3


@pytest.fixture
def ctx(tmp_path: Path) -> JobContext:
    job = JobContext(job_id="t", job="resize", attempt=1, workdir=tmp_path)
    for folder in (job.in_dir, job.out_dir, job.tmp_dir):
        folder.mkdir()
    return job


def run(ctx: JobContext, source: Path, name: str | None = None, **params):
    """Copy ``source`` into in/, resize it, return the result dict and the opened output."""
    image = ctx.in_dir / (name or source.name)
    shutil.copyfile(source, image)
    params.setdefault("size", "48x48")
    result = resize(ctx, image=str(image), **params)
    assert sorted(p.name for p in ctx.out_dir.iterdir()) == [result["file"]]
    out = Image.open(ctx.out_dir / result["file"])
    assert (result["width"], result["height"]) == out.size
    assert result["bytes"] == (ctx.out_dir / result["file"]).stat().st_size
    return result, out


def near(pixel, expected, tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per RGB channel value."""
    pairs = zip(a.convert("RGB").tobytes(), b.convert("RGB").tobytes(), strict=True)
    return sum(abs(x - y) for x, y in pairs) / (a.width * a.height * 3)


def corners(img: Image.Image) -> list:
    rgb = img.convert("RGB")
    w, h = rgb.size
    return [rgb.getpixel((x, y)) for x, y in ((2, 2), (w - 3, 2), (2, h - 3), (w - 3, h - 3))]


# --- sizes and names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "size", "expected"),
    [("fit", "200x200", (200, 133)), ("fill", "200x200", (200, 200)),
     ("exact", "200x100", (200, 100)), ("fit", "100x400", (100, 67))],
)
def test_rocket_is_resized_per_mode_and_named_after_the_requested_size(ctx, mode, size, expected):
    result, out = run(ctx, IMAGES / "rocket.jpg", size=size, mode=mode)

    assert result["file"] == f"rocket_{size}.jpg"
    assert out.format == "JPEG" and out.size == expected
    assert result["format"] == "jpeg" and result["frames"] == 1


@pytest.mark.parametrize("photo", ["rocket.jpg", "coffee.jpg", "chelsea.png"])
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_real_photos_keep_their_picture_in_every_format(ctx, photo, fmt):
    result, out = run(ctx, IMAGES / photo, size="120x120", format=fmt)

    extension = {"jpeg": "jpg"}.get(fmt, fmt)
    assert out.format == fmt.upper() and result["file"].endswith("." + extension)
    reference = Image.open(IMAGES / photo).convert("RGB").resize(out.size, Image.Resampling.BOX)
    assert mean_difference(out, reference) < 12  # the same picture (rocket also shifts in colour: sRGB)


@pytest.mark.parametrize(("gravity", "middle"), [("west", RED), ("center", GREEN), ("east", GREEN)])
def test_fill_crops_at_the_gravity(ctx, gravity, middle):
    # Given the 96x64 quadrant picture (left half red on top), cropped to a square
    _, out = run(ctx, EDGE / "orientation_1.jpg", size="32x32", mode="fill", gravity=gravity)

    # Then the kept two thirds decide the colour at x=20: red from the west, green otherwise
    rgb = out.convert("RGB")
    assert out.size == (32, 32)
    assert near(rgb.getpixel((20, 6)), middle, 40) and near(rgb.getpixel((1, 6)), RED, 40)


@pytest.mark.parametrize(("fmt", "default"), [("TIFF", "png"), ("BMP", "png"), ("GIF", "png"),
                                              ("WEBP", "webp"), ("PNG", "png")])
def test_every_allowed_input_format_is_resized(ctx, tmp_path, fmt, default):
    # Given the upright quadrant picture saved in another allowed format
    source = tmp_path / f"quadrants.{fmt.lower()}"
    Image.open(EDGE / "orientation_1.jpg").save(source, fmt)

    result, out = run(ctx, source)

    assert result["format"] == default and out.size == (48, 32)
    for got, want in zip(corners(out), (RED, GREEN, BLUE, YELLOW), strict=True):
        assert near(got, want, 40), (got, want)


def test_a_file_named_jpg_that_holds_a_png_is_read_and_written_as_png(ctx):
    result, out = run(ctx, EDGE / "palette_alpha.png", name="picture.jpg", size="32x32")

    assert result["file"] == "picture_32x32.png" and out.format == "PNG"


# --- orientation, colour, alpha -------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("keep_metadata", [False, True])
def test_exif_orientation_puts_the_red_corner_top_left(ctx, orientation, keep_metadata):
    _, out = run(ctx, EDGE / f"orientation_{orientation}.jpg", keep_metadata=keep_metadata)

    assert out.size == (48, 32)
    for got, want in zip(corners(out), (RED, GREEN, BLUE, YELLOW), strict=True):
        assert near(got, want, 40), (got, want)
    assert out.getexif().get(0x0112, 1) == 1  # a viewer must not turn it again


def test_large_jpeg_is_decoded_in_draft_mode_and_still_upright(ctx, tmp_path):
    # Given a 4000x3000 stored picture (red left, blue right) turned by EXIF orientation 6
    big = Image.new("RGB", (4000, 3000), RED)
    big.paste(BLUE, (2000, 0, 4000, 3000))
    exif = Image.Exif()
    exif[0x0112] = 6
    big.save(tmp_path / "big.jpg", quality=80, exif=exif.tobytes())

    _, out = run(ctx, tmp_path / "big.jpg", size="300x300")

    # Then it is portrait, stored-left (red) now on top, stored-right (blue) below
    assert out.size == (225, 300)
    assert near(out.getpixel((112, 5)), RED) and near(out.getpixel((112, 294)), BLUE)
    assert draft_request((4000, 3000), plan((3000, 4000), (300, 300)), True) == (600, 450)


def test_cmyk_jpeg_becomes_rgb(ctx):
    _, out = run(ctx, EDGE / "cmyk.jpg", size="32x16")

    assert out.mode == "RGB"
    assert near(out.getpixel((4, 8)), RED) and near(out.getpixel((28, 8)), BLUE)


def test_16_bit_grey_keeps_its_tones(ctx):
    _, out = run(ctx, EDGE / "gray16.png", size="128x8", mode="exact")

    row = [out.getpixel((x, 4)) for x in range(0, 128, 16)]
    assert out.mode == "L" and row[0] <= 3 and abs(out.getpixel((64, 4)) - 128) <= 3
    assert row == sorted(row) and len(set(row)) == len(row)  # a ramp, not clipped to white


def test_non_srgb_profile_is_converted_to_srgb(ctx):
    # Given Adobe RGB (200,100,50) | (60,180,75), whose sRGB values are (227,100,42) | (0,181,64)
    _, out = run(ctx, EDGE / "adobe_rgb.png", size="32x16")

    assert "icc_profile" not in out.info
    assert near(out.getpixel((4, 8)), (227, 100, 42), 2)
    assert near(out.getpixel((28, 8)), (0, 181, 64), 2)


def test_keep_profile_keeps_values_and_profile(ctx):
    source = Image.open(EDGE / "adobe_rgb.png")

    _, out = run(ctx, EDGE / "adobe_rgb.png", size="32x16", keep_profile=True)

    assert out.info["icc_profile"] == source.info["icc_profile"]
    assert near(out.getpixel((4, 8)), (200, 100, 50), 2)


def test_real_adobe_rgb_photo_comes_out_in_srgb(ctx):
    _, kept = run(ctx, IMAGES / "rocket.jpg", format="png", keep_profile=True)
    profile = ImageCms.ImageCmsProfile(io.BytesIO(kept.info["icc_profile"]))
    assert "Adobe RGB" in profile.profile.profile_description
    for path in ctx.out_dir.iterdir():
        path.unlink()

    _, out = run(ctx, IMAGES / "rocket.jpg", format="png")

    expected = ImageCms.profileToProfile(kept, profile, ImageCms.createProfile("sRGB"))
    assert "icc_profile" not in out.info
    assert mean_difference(out, expected) < 0.5 and mean_difference(out, kept) > 2


@pytest.mark.parametrize(("source", "fmt"), [("palette_alpha.png", "png"),
                                             ("palette_alpha.png", "webp"),
                                             ("alpha.webp", "webp"), ("alpha.webp", "png")])
def test_alpha_is_kept_where_the_format_has_it(ctx, source, fmt):
    _, out = run(ctx, EDGE / source, size="32x16", format=fmt)

    rgba = out.convert("RGBA")
    assert rgba.getpixel((4, 8))[3] == 0 and rgba.getpixel((28, 8))[3] == 255


def test_jpeg_output_flattens_alpha_on_white(ctx):
    _, out = run(ctx, EDGE / "palette_alpha.png", size="32x16", format="jpeg")

    assert out.mode == "RGB"
    assert near(out.getpixel((4, 8)), WHITE) and near(out.getpixel((28, 8)), RED)


@pytest.mark.parametrize("fmt", [None, "webp"])
def test_animated_gif_is_resized_frame_by_frame(ctx, fmt):
    result, out = run(ctx, EDGE / "animated.gif", size="30x30", format=fmt)

    frames = [(f.size, f.convert("RGB").getpixel((15, 10)), f.info["duration"])
              for f in ImageSequence.Iterator(out)]
    assert result["file"] == f"animated_30x30.{fmt or 'png'}" and result["frames"] == 3
    assert [f[0] for f in frames] == [(30, 20)] * 3
    assert [near(f[1], c, 2) for f, c in zip(frames, (RED, GREEN, BLUE))] == [True] * 3
    assert [f[2] for f in frames] == [100, 200, 300]


def test_animated_gif_to_jpeg_is_refused(ctx):
    with pytest.raises(Reject, match="animated GIF .3 frames. cannot be written as JPEG"):
        run(ctx, EDGE / "animated.gif", format="jpeg")


# --- metadata -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_metadata_is_stripped_by_default(ctx, fmt):
    _, out = run(ctx, EDGE / "gps.jpg", format=fmt)

    assert len(out.getexif()) == 0 and not out.getexif().get_ifd(0x8825)
    assert not {"exif", "xmp", "XML:com.adobe.xmp", "comment", "icc_profile"} & set(out.info)


def test_jpeg_comment_is_stripped(ctx):
    assert "comment" in Image.open(IMAGES / "rocket.jpg").info

    _, out = run(ctx, IMAGES / "rocket.jpg")

    assert "comment" not in out.info


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_keep_metadata_keeps_exif_gps_and_xmp(ctx, fmt):
    _, out = run(ctx, EDGE / "gps.jpg", format=fmt, keep_metadata=True)

    exif = out.getexif()
    gps = exif.get_ifd(0x8825)
    assert exif[0x010F] == "runner fixtures"
    assert gps[1] == "N" and tuple(map(float, gps[2])) == (51.0, 28.0, 40.0)
    assert b"runner fixtures" in _xmp(out)


def _xmp(img: Image.Image) -> bytes:
    xmp = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp") or b""
    return xmp.encode() if isinstance(xmp, str) else xmp


# --- refusals -------------------------------------------------------------------------------

REFUSALS = {
    "empty.jpg": "file is empty (0 bytes)",
    "truncated.jpg": "JPEG image is truncated or corrupt",
    "pixel_flood.png": "decompression bomb",
    "bomb_100mp.png": "decompression bomb",
    "postscript.jpg": "PostScript is not an allowed image format",
    "eps.jpg": "EPS is not an allowed image format",
    "pdf.png": "PDF is not an allowed image format",
    "svg.png": "SVG is not an allowed image format",
    "mvg.jpg": "ImageMagick MVG is not an allowed image format",
    "msl.gif": "ImageMagick MSL is not an allowed image format",
}


def test_every_hostile_fixture_has_a_refusal_test():
    assert sorted(p.name for p in HOSTILE.iterdir()) == sorted(REFUSALS)


@pytest.mark.parametrize(("name", "reason"), sorted(REFUSALS.items()))
def test_hostile_input_is_rejected_with_a_clear_reason(ctx, name, reason):
    with pytest.raises(Reject) as caught:
        run(ctx, HOSTILE / name)

    message = caught.value.reason
    assert message.startswith(f"{name}: ") and reason in message
    assert "\n" not in message and len(message) < 300
    assert list(ctx.out_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("params", "reason"),
    [({"size": "0x10"}, "between 1 and 20000"), ({"size": "20001x5"}, "between 1 and 20000"),
     ({"size": "99999999x99999999"}, "between 1 and 20000"),
     ({"size": "big"}, "is not WIDTHxHEIGHT"), ({"mode": "zoom"}, "mode 'zoom'"),
     ({"gravity": "up"}, "gravity 'up'"), ({"quality": 0}, "quality 0"),
     ({"format": "gif"}, "format 'gif'"),
     ({"size": "20000x20000", "mode": "exact"}, "over the limit of 64000000 pixels")],
)
def test_bad_parameters_are_rejected(ctx, params, reason):
    with pytest.raises(Reject, match=reason):
        run(ctx, EDGE / "cmyk.jpg", **params)


def test_input_outside_the_input_directory_is_rejected(ctx):
    with pytest.raises(Reject, match="not a file in the job's input directory"):
        resize(ctx, image=str(ctx.in_dir / ".." / "tmp" / "x.png"), size="10x10")


def test_24_megapixel_images_fit_the_declared_memory_limit(tmp_path):
    # Given a 24 MP JPEG (draft-decoded) and a 24 MP PNG (decoded in full)
    big = Image.new("RGB", (6000, 4000), RED)
    big.paste(BLUE, (0, 2000, 6000, 4000))
    big.save(tmp_path / "big.jpg", quality=80)
    big.save(tmp_path / "big.png", compress_level=1)
    limit = runner_media.RESIZE.sandbox.memory
    script = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
        "from pathlib import Path\nfrom runner.jobs import JobContext\n"
        "from runner_media.resize import resize\n"
        "for name in ('big.jpg', 'big.png'):\n"
        "    work = Path(sys.argv[1]) / name.replace('.', '_')\n"
        "    (work / 'in').mkdir(parents=True)\n"
        "    (work / 'in' / name).write_bytes((Path(sys.argv[1]) / name).read_bytes())\n"
        "    ctx = JobContext('t', 'resize', 1, work)\n"
        "    print(resize(ctx, image=str(work / 'in' / name), size='300x300', mode='fill'))\n"
    )

    # When each is resized in a child process under the job's address-space limit
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], check=False, capture_output=True,
        text=True, timeout=60, env={"PYTHONPATH": os.pathsep.join(sys.path)},
    )

    # Then both succeed
    assert done.returncode == 0, done.stderr
    for name in ("big_jpg/out/big_300x300.jpg", "big_png/out/big_300x300.png"):
        out = Image.open(tmp_path / name)
        assert out.size == (300, 300)
        assert near(out.getpixel((150, 5)), RED) and near(out.getpixel((150, 294)), BLUE)


# --- declaration ----------------------------------------------------------------------------


def test_plugin_registers_a_valid_function_job():
    registry = Registry()
    runner_media.register_jobs(register=lambda job: registry.register(job, "media"),
                               settings=Settings())

    job = registry.get("resize")
    assert job.function == "runner_media.resize:resize" and job.inputs == ("image",)
    assert job.retry.attempts <= 2 and job.sandbox.network is False and job.route == "default"
    assert job.validate({"size": "0640x480"}, {"image": Path("a.jpg")}) == {
        "image": "a.jpg", "size": "640x480", "mode": "fit", "format": None, "quality": 85,
        "gravity": "center", "keep_metadata": False, "keep_profile": False,
    }
    with pytest.raises(JobError, match="size"):
        job.validate({"size": "640"}, {"image": Path("a.jpg")})
    with pytest.raises(JobError, match="quality"):
        job.validate({"size": "1x1", "quality": 101}, {"image": Path("a.jpg")})


def test_job_help_is_generated_from_the_declared_parameters():
    command = click.Command("resize", params=list(runner_media.RESIZE.params))
    text = command.get_help(click.Context(command))

    for option in ("--size", "--mode", "--format", "--quality", "--gravity", "--keep-metadata",
                   "--keep-profile"):
        assert option in text


def test_size_parsing():
    assert parse_size("200x100") == (200, 100) == parse_size(" 200X100 ")
    assert plan((640, 427), (200, 200), "fill", "north").box == (106.5, 0.0, 533.5, 427.0)


# --- thumbnails -----------------------------------------------------------------------------


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Pillow's own decodes, counted where they happen (ImageFile.load with tiles to decode)."""
    from PIL import ImageFile

    seen: list[str] = []
    original = ImageFile.ImageFile.load

    def counting(self):
        if self.tile:
            seen.append(f"{self.format} {self.size}")
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return seen


def thumbs(ctx: JobContext, source: Path, name: str | None = None, **params):
    """Copy ``source`` into in/, make thumbnails; return the result and the opened outputs."""
    image = ctx.in_dir / (name or source.name)
    shutil.copyfile(source, image)
    result = thumbnails(ctx, image=str(image), **params)
    files = [entry["file"] for entry in result["files"]]
    assert sorted(p.name for p in ctx.out_dir.iterdir()) == sorted(files)
    outs = [Image.open(ctx.out_dir / name) for name in files]
    for entry, out in zip(result["files"], outs, strict=True):
        assert (entry["width"], entry["height"]) == out.size
        assert entry["bytes"] == (ctx.out_dir / entry["file"]).stat().st_size
    return result, outs


def test_thumbnails_of_a_photo_in_every_size_from_one_decode(ctx, decodes):
    result, outs = thumbs(ctx, IMAGES / "coffee.jpg", sizes="64x64,200x200,400x300")

    assert [e["file"] for e in result["files"]] == [
        "coffee_64x64.jpg", "coffee_200x200.jpg", "coffee_400x300.jpg"]
    assert [o.size for o in outs] == [(64, 43), (200, 133), (400, 267)]
    assert result["decodes"] == 1 and len(decodes) == 1
    reference = Image.open(IMAGES / "coffee.jpg").convert("RGB")
    for out in outs:
        assert out.format == "JPEG" and mean_difference(out, reference.resize(out.size)) < 12


def test_a_large_jpeg_is_decoded_once_at_the_scale_the_largest_size_needs(ctx, tmp_path, decodes):
    # Given a 4000x3000 JPEG (red left, blue right)
    big = Image.new("RGB", (4000, 3000), RED)
    big.paste(BLUE, (2000, 0, 4000, 3000))
    big.save(tmp_path / "big.jpg", quality=80)

    result, outs = thumbs(ctx, tmp_path / "big.jpg", sizes="64x64,200x200,800x800", format="png")

    # Then one decode, in draft mode at 1/2 (2000x1500 still has 2x the 800x600 needed)
    assert result["decodes"] == 1 and decodes == ["JPEG (2000, 1500)"]
    assert result["source"] == [4000, 3000] and result["decoded"] == [2000, 1500]
    assert [o.size for o in outs] == [(64, 48), (200, 150), (800, 600)]
    for out in outs:
        w, h = out.size
        assert near(out.getpixel((2, h // 2)), RED) and near(out.getpixel((w - 3, h // 2)), BLUE)


@pytest.mark.parametrize("orientation", [2, 6, 8])
def test_thumbnails_are_upright(ctx, orientation):
    _, outs = thumbs(ctx, EDGE / f"orientation_{orientation}.jpg", sizes="48x48,24x24")

    assert [o.size for o in outs] == [(48, 32), (24, 16)]
    for out in outs:
        for got, want in zip(corners(out), (RED, GREEN, BLUE, YELLOW), strict=True):
            assert near(got, want, 40), (got, want)


def test_thumbnails_fill_mode_metadata_and_colour(ctx):
    result, outs = thumbs(ctx, EDGE / "gps.jpg", sizes="32x32,16x16", mode="fill", format="webp")

    assert result["format"] == "webp" and [o.size for o in outs] == [(32, 32), (16, 16)]
    for out in outs:
        assert len(out.getexif()) == 0 and not {"exif", "xmp", "icc_profile"} & set(out.info)


def test_thumbnails_convert_to_srgb_and_keep_alpha(ctx):
    _, srgb = thumbs(ctx, EDGE / "adobe_rgb.png", sizes="32x16")
    for path in ctx.out_dir.iterdir():
        path.unlink()
    _, alpha = thumbs(ctx, EDGE / "palette_alpha.png", sizes="32x16,16x8")

    assert near(srgb[0].getpixel((4, 8)), (227, 100, 42), 2)
    assert [o.convert("RGBA").getpixel((1, 1))[3] for o in alpha] == [0, 0]


def test_thumbnails_of_an_animation_are_its_first_frame(ctx):
    result, outs = thumbs(ctx, EDGE / "animated.gif", sizes="30x30")

    assert result["files"][0]["file"] == "animated_30x30.png"
    assert getattr(outs[0], "n_frames", 1) == 1 and near(outs[0].convert("RGB").getpixel((15, 10)), RED, 2)


@pytest.mark.parametrize(("name", "reason"), sorted(REFUSALS.items()))
def test_thumbnails_refuse_hostile_input(ctx, name, reason):
    with pytest.raises(Reject) as caught:
        thumbs(ctx, HOSTILE / name, sizes="32x32,64x64")

    assert caught.value.reason.startswith(f"{name}: ") and reason in caught.value.reason
    assert list(ctx.out_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("sizes", "reason"),
    [("", "at least one"), ("64x64,big", "is not WIDTHxHEIGHT"), ("0x5", "between 1 and 20000"),
     (",".join(f"{n}x{n}" for n in range(1, 18)), "at most 16")],
)
def test_thumbnails_bad_sizes_are_rejected(ctx, sizes, reason):
    with pytest.raises(Reject, match=reason):
        thumbs(ctx, EDGE / "cmyk.jpg", sizes=sizes)


def test_sizes_parse_in_order_without_duplicates():
    assert parse_sizes("200x200, 64x64,200X200") == [(200, 200), (64, 64)]


def test_thumbnails_declaration_canonicalises_sizes():
    job = runner_media.THUMBNAILS

    assert job.function == "runner_media.thumbnails:thumbnails" and job.inputs == ("image",)
    assert job.validate({"sizes": "64x64, 0200x100"}, {"image": Path("a.jpg")}) == {
        "image": "a.jpg", "sizes": "64x64,200x100", "mode": "fit", "format": None,
        "quality": 85, "gravity": "center",
    }
    with pytest.raises(JobError, match="sizes"):
        job.validate({"sizes": "64"}, {"image": Path("a.jpg")})


def test_thumbnails_end_to_end_through_a_worker_and_rabbitmq(worker_process, route, tmp_path, cleanup_queues, amqp_url):
    # Given a worker bound to a route and a real photo
    cleanup_queues.append(f"test.{route}")
    worker_process(f"test.{route}", [f"{route}.#"])
    env = {**os.environ, "RUNNER_BROKER_URL": amqp_url, "RUNNER_PLUGINS": "jobs_plugin"}

    # When thumbnails are asked for from the command line
    done = subprocess.run(
        [sys.executable, "-m", "runner.cli", "submit", "thumbnails", "--sizes", "64x64,200x200",
         "--mode", "fill", str(IMAGES / "rocket.jpg"), "--route", route, "--wait", "--json",
         "--output-dir", str(tmp_path / "thumbs")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )

    # Then both come back at their sizes, from one decode in the sandboxed job
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert sorted(record["outputs"]) == [str(tmp_path / "thumbs" / f"rocket_{s}.jpg")
                                         for s in ("200x200", "64x64")]
    assert record["value"]["decodes"] == 1
    for size in (64, 200):
        with Image.open(tmp_path / "thumbs" / f"rocket_{size}x{size}.jpg") as out:
            assert out.size == (size, size)
