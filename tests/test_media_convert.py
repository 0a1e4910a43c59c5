"""The media plugin's convert job (ImageMagick), run in the real sandbox as a worker runs it.

Jobs run through :func:`runner.execution.execute` with the host's :class:`runner.sandbox.chain.Jail`
(slot uid, bubblewrap, seccomp, cgroups where the host has them), so the policy binds, the
environment and the limits are the ones a worker applies.  Pixels are checked, not just files;
every hostile fixture is refused; the policy holds even when ImageMagick is pointed straight at
a dangerous coder.  One job goes end-to-end through a worker and the real RabbitMQ.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageSequence
from runner_media import convert, magick
from runner_media.plugin import convert_job

from runner.sandbox import bwrap
from runner.config import Settings
from runner.errors import JobError
from runner.execution import Attempt, Verdict, execute
from runner.sandbox.chain import Jail
from runner.jobs import JobType, RetryPolicy
from runner.message import FileData, JobMessage
from runner.plugins import make_plugins
from runner.sandbox.probe import probe

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "fixtures" / "images"
EDGE = IMAGES / "edge"
HOSTILE = IMAGES / "hostile"
RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
POLICY = magick.POLICY_DIR / "policy.xml"


@pytest.fixture(scope="module")
def found() -> magick.ImageMagick:
    """The real ImageMagick: its absence is a failure (CI installs it), never a skip."""
    try:
        return magick.find()
    except magick.NotFound as exc:
        pytest.fail(f"ImageMagick is required for these tests: {exc}")


@pytest.fixture(scope="module")
def job(found: magick.ImageMagick) -> JobType:
    return convert_job(found)


@pytest.fixture(scope="module")
def jail() -> Iterator[tuple[Jail, Path]]:
    root = Path(tempfile.mkdtemp(prefix="runner-convert-"))
    root.chmod(0o711)  # slot uids traverse to their work dirs
    jail = Jail(probe(), {}, 1, root)
    yield jail, root
    jail.close()


def run(job: JobType, jail, source: Path, name: str | None = None, **params) -> Attempt:
    """Run ``job`` on ``source`` (sent as ``name``) in the sandbox, as a worker would."""
    files = {"image": FileData(name or source.name, source.read_bytes())}
    message = JobMessage(job=job.name, params=params, files=files)
    the_jail, root = jail
    return execute(job, message, job.validate(params, files), root=root, worker="test",
                   jail=the_jail, slot=0)


def output(attempt: Attempt) -> Image.Image:
    """The one output of a succeeded attempt, opened."""
    assert attempt.verdict is Verdict.SUCCEEDED, (attempt.result.error, attempt.result.stderr)
    assert len(attempt.result.outputs) == 1
    return Image.open(io.BytesIO(attempt.result.outputs[0].data))


def near(pixel, expected, tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def corners(img: Image.Image) -> list:
    rgb = img.convert("RGB")
    w, h = rgb.size
    return [rgb.getpixel((x, y)) for x, y in ((3, 3), (w - 4, 3), (3, h - 4), (w - 4, h - 4))]


def assert_corners(img: Image.Image, expected: tuple) -> None:
    got = corners(img)
    assert all(near(g, e) for g, e in zip(got, expected, strict=True)), (got, expected)


# --- the binary -----------------------------------------------------------------------------


def test_imagemagick_is_found_under_usr_and_never_a_stand_in_on_path(found, tmp_path, monkeypatch):
    # Given a fake `convert` first on PATH (as /usr/local/bin/convert is on this machine)
    fake = tmp_path / "convert"
    fake.write_text("#!/bin/sh\necho 'Version: ImageMagick 6.9.11-60 fake'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")

    # When the binary is resolved
    chosen = magick.find()

    # Then it is a real, compiled ImageMagick under /usr/bin, symlinks resolved
    assert chosen == found and chosen.binary.startswith("/usr/bin/")
    assert chosen.binary == os.path.realpath(chosen.binary) and chosen.major in (6, 7)
    assert magick.identify(str(fake))[0] is None
    if os.path.exists("/usr/local/bin/convert"):
        refused, why = magick.identify("/usr/local/bin/convert")
        assert refused is None and why


def test_a_configured_binary_is_verified(found):
    assert magick.find("/usr/bin/convert").binary == magick.find().binary or found.major == 7
    with pytest.raises(magick.NotFound, match=r"\[jobs.convert\] binary = '/usr/bin/env'"):
        magick.find("/usr/bin/env")
    with pytest.raises(magick.NotFound, match="not installed"):
        magick.find("/usr/bin/no-such-magick")


def test_without_imagemagick_convert_is_not_registered_and_plugins_says_why(tmp_path):
    # Given a configuration whose ImageMagick binary does not exist
    settings = Settings(jobs={"convert": {"binary": "/usr/bin/no-such-magick"}})

    # When the plugins load
    plugins = make_plugins(load=["media"], settings=settings)

    # Then the Pillow jobs are there, convert is not, and one line says why
    assert [j.name for j in plugins.jobs] == ["contact-sheet", "resize", "thumbnails"]
    assert len(plugins.errors) == 1 and "\n" not in plugins.errors[0]
    assert "job 'convert' not registered" in plugins.errors[0]
    assert "binary = '/usr/bin/no-such-magick': not installed" in plugins.errors[0]

    # And `runner plugins` shows the same line
    (tmp_path / "runner.toml").write_text('[jobs.convert]\nbinary = "/usr/bin/no-such-magick"\n')
    done = subprocess.run([sys.executable, "-m", "runner.cli", "plugins"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=True,
                          env={**os.environ, "RUNNER_LOAD_PLUGINS": "media"})
    assert "media" in done.stdout and "convert" not in done.stdout.split("media", 1)[1].split("\n")[0]
    assert "job 'convert' not registered" in done.stderr and done.stderr.count("\n") == 1


# --- pixels ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("geometry", "size"), [("100x100", (100, 67)), ("100x100!", (100, 100)),
                                                ("100x100^", (150, 100)), ("2000x2000>", (640, 427))])
def test_resize_geometries(job, jail, geometry, size):
    out = output(run(job, jail, IMAGES / "rocket.jpg", resize=geometry))

    assert out.size == size and out.format == "JPEG"


@pytest.mark.parametrize(
    ("params", "size", "expected"),
    [({}, (96, 64), (RED, GREEN, BLUE, YELLOW)),
     ({"rotate": 90}, (64, 96), (BLUE, RED, YELLOW, GREEN)),
     ({"rotate": -90}, (64, 96), (GREEN, YELLOW, RED, BLUE)),
     ({"flip": True}, (96, 64), (BLUE, YELLOW, RED, GREEN)),
     ({"flop": True}, (96, 64), (GREEN, RED, YELLOW, BLUE)),
     ({"crop": "40x24+52+36"}, (40, 24), (YELLOW,) * 4)],
)
def test_the_marked_corners_end_up_where_the_operation_puts_them(job, jail, params, size, expected):
    out = output(run(job, jail, EDGE / "orientation_1.jpg", format="png", **params))

    assert out.size == size
    assert_corners(out, expected)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_first(job, jail, orientation):
    out = output(run(job, jail, EDGE / f"orientation_{orientation}.jpg", format="png"))

    assert out.size == (96, 64)
    assert_corners(out, (RED, GREEN, BLUE, YELLOW))


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "gif"])
def test_every_output_format(job, jail, fmt):
    attempt = run(job, jail, IMAGES / "coffee.jpg", format=fmt, resize="120x120")

    out = output(attempt)
    assert out.format == fmt.upper() and out.size == (120, 80)
    assert attempt.result.outputs[0].name == f"coffee_converted.{convert.EXTENSIONS[fmt]}"
    reference = Image.open(IMAGES / "coffee.jpg").convert("RGB").resize(out.size)
    pairs = zip(out.convert("RGB").tobytes(), reference.tobytes(), strict=True)
    assert sum(abs(a - b) for a, b in pairs) / (120 * 80 * 3) < 14  # the same picture


def test_a_png_named_jpg_is_read_as_png(job, jail):
    out = output(run(job, jail, EDGE / "palette_alpha.png", name="picture.jpg", format="png"))

    rgba = out.convert("RGBA")
    assert rgba.getpixel((4, 8))[3] == 0 and near(rgba.getpixel((60, 8)), (255, 0, 0, 255))


def test_colorspace_srgb_turns_cmyk_into_rgb(job, jail):
    kept = output(run(job, jail, EDGE / "cmyk.jpg"))
    out = output(run(job, jail, EDGE / "cmyk.jpg", colorspace="sRGB"))

    assert kept.mode == "CMYK" and out.mode == "RGB" and out.format == "JPEG"
    assert near(out.getpixel((4, 16)), RED) and near(out.getpixel((60, 16)), BLUE)


def test_colorspace_gray(job, jail):
    out = output(run(job, jail, IMAGES / "coffee.jpg", colorspace="Gray", format="png"))

    assert out.mode in ("L", "LA", "I;16") and out.size == (600, 400)


def test_blur_mixes_the_quadrant_edge_and_sharpen_keeps_it(job, jail):
    blurred = output(run(job, jail, EDGE / "orientation_1.jpg", format="png", blur=4)).convert("RGB")
    sharp = output(run(job, jail, EDGE / "orientation_1.jpg", format="png", sharpen=1)).convert("RGB")

    red, green, _ = blurred.getpixel((47, 16))
    assert red > 60 and green > 60  # red and green meet at x = 48
    assert near(sharp.getpixel((40, 16)), RED) and near(sharp.getpixel((56, 16)), GREEN)


def test_strip_removes_exif_and_gps(job, jail):
    kept = output(run(job, jail, EDGE / "gps.jpg"))
    stripped = output(run(job, jail, EDGE / "gps.jpg", strip=True))

    assert kept.getexif().get_ifd(0x8825)  # without --strip, ImageMagick keeps it
    assert len(stripped.getexif()) == 0 and "xmp" not in stripped.info


def test_quality_changes_the_jpeg(job, jail):
    low = run(job, jail, IMAGES / "coffee.jpg", quality=20).result.outputs[0].data
    high = run(job, jail, IMAGES / "coffee.jpg", quality=95).result.outputs[0].data

    assert len(low) * 3 < len(high)


def test_animated_gif_stays_animated_as_gif_and_gives_its_first_frame_as_png(job, jail):
    animated = output(run(job, jail, EDGE / "animated.gif", resize="30x30"))
    still = output(run(job, jail, EDGE / "animated.gif", resize="30x30", format="png"))

    frames = [f.convert("RGB").getpixel((15, 10)) for f in ImageSequence.Iterator(animated)]
    assert animated.size == (30, 20) and [near(f, c) for f, c in zip(frames, (RED, GREEN, BLUE))] == [True] * 3
    assert still.size == (30, 20) and getattr(still, "n_frames", 1) == 1 and near(still.convert("RGB").getpixel((15, 10)), RED)


def test_a_file_name_with_imagemagick_syntax_is_harmless(job, jail):
    attempt = run(job, jail, EDGE / "orientation_1.jpg", name="-x[0]*%d|y.jpg", format="png")

    out = output(attempt)
    assert attempt.result.outputs[0].name == "x_0_d_y_converted.png" and out.size == (96, 64)


# --- parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "reason"),
    [({"resize": "100"}, "WIDTHxHEIGHT"), ({"resize": "10x10;id"}, "WIDTHxHEIGHT"),
     ({"resize": "9000x10"}, "between 1 and 8192"), ({"crop": "10x10-1+0"}, r"WIDTHxHEIGHT\+X\+Y"),
     ({"rotate": 400}, "rotate"), ({"blur": 0}, "blur"), ({"sharpen": 51}, "sharpen"),
     ({"quality": 0}, "quality"), ({"format": "pdf"}, "format"), ({"colorspace": "CMYK"}, "colorspace"),
     ({"unknown": 1}, "no parameter 'unknown'")],
)
def test_parameters_outside_the_vocabulary_are_rejected_at_validation(job, params, reason):
    with pytest.raises(JobError, match=reason):
        job.validate(params, {"image": Path("a.jpg")})


def test_validated_parameters_are_canonical(job):
    assert job.validate({"resize": " 200X100! ", "crop": "10x20+3+4", "rotate": "90"},
                        {"image": Path("a.jpg")}) == {
        "image": "a.jpg", "crop": "10x20+3+4", "rotate": 90.0, "flip": False, "flop": False,
        "resize": "200x100!", "colorspace": None, "blur": None, "sharpen": None, "strip": False,
        "quality": None, "format": None,
    }


@pytest.mark.parametrize(
    ("params", "reason"),
    [({"rotate": "90 -write x"}, "rotate '90 -write x' is not a number"),
     ({"resize": "10x10 -write /tmp/x"}, "is not WIDTHxHEIGHT"),
     ({"colorspace": "sRGB -fx x"}, "colorspace"), ({"quality": "9 x"}, "quality"),
     ({"format": "msl"}, "format 'msl'"), ({"image": "../../etc/passwd"}, "not a file in the job's")],
)
def test_the_argv_builder_refuses_raw_values_on_its_own(found, tmp_path, params, reason):
    # Given a message that skipped validation (the builder does not trust it)
    ctx = _context(tmp_path, "a.png")
    Image.new("RGB", (8, 8)).save(ctx.in_dir / "a.png")

    argv = convert.argv({"image": "a.png", **params}, ctx, found)

    assert argv[:2] == ["/bin/sh", "-c"] and f"exit {convert.REFUSED}" in argv[2]
    assert reason in argv[-1] and found.binary not in argv


def test_the_argv_pins_the_coder_and_sets_the_environment(found, tmp_path):
    ctx = _context(tmp_path, "photo.jpg")
    (ctx.in_dir / "photo.jpg").write_bytes((IMAGES / "rocket.jpg").read_bytes())

    argv = convert.argv({"image": "photo.jpg", "resize": "10x10>", "format": "webp"}, ctx, found)

    assert argv[:2] == [magick.ENV, "-i"] and f"HOME={magick.HOME}" in argv
    assert f"MAGICK_CONFIGURE_PATH={magick.POLICY_DIR}" in argv
    at = argv.index(found.binary)
    assert argv[at + 1] == "-regard-warnings" and " -limit area 64MP " in " ".join(argv[at:])
    assert f"jpeg:{ctx.tmp_dir}/input-photo.jpg[0]" in argv
    assert argv[-3:] == ["-resize", "10x10>", f"webp:{ctx.out_dir}/photo_converted.webp"]


def _context(tmp_path: Path, name: str):
    from runner.jobs import JobContext

    ctx = JobContext(job_id="t", job="convert", attempt=1, workdir=tmp_path)
    for folder in (ctx.in_dir, ctx.out_dir, ctx.tmp_dir):
        folder.mkdir()
    return ctx


# --- hostile input --------------------------------------------------------------------------

REFUSALS = {
    "empty.jpg": "file is empty (0 bytes)",
    "truncated.jpg": "Premature end of JPEG file",
    "pixel_flood.png": "image is 100000x100000, over the limits",
    "bomb_100mp.png": "image is 10000x10000, over the limits",
    "postscript.jpg": "PostScript is not an allowed image format",
    "eps.jpg": "EPS is not an allowed image format",
    "pdf.png": "PDF is not an allowed image format",
    "svg.png": "SVG is not an allowed image format",
    "mvg.jpg": "ImageMagick MVG is not an allowed image format",
    "msl.gif": "ImageMagick MSL is not an allowed image format",
}


def test_every_hostile_fixture_has_a_convert_refusal_test():
    assert sorted(p.name for p in HOSTILE.iterdir()) == sorted(REFUSALS)


@pytest.mark.parametrize(("name", "reason"), sorted(REFUSALS.items()))
def test_hostile_input_is_refused_for_good_with_a_clear_error(job, jail, name, reason):
    attempt = run(job, jail, HOSTILE / name, format="png")

    assert attempt.verdict is Verdict.FATAL and attempt.result.outputs == ()
    error = attempt.result.error or ""
    assert reason in error and "\n" not in error and len(error) < 400
    assert "root:" not in attempt.result.stdout + attempt.result.stderr  # no /etc/passwd


def test_tiff_is_refused_by_convert_though_resize_takes_it(job, jail, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.tiff")

    attempt = run(job, jail, tmp_path / "a.tiff")

    assert attempt.verdict is Verdict.FATAL and "TIFF is not an input of convert" in attempt.result.error


# --- the policy holds even when ImageMagick is pointed at a dangerous coder ------------------


@pytest.fixture
def canary() -> Iterator[Path]:
    """A picture and a text outside any work dir, readable by every uid."""
    folder = Path(tempfile.mkdtemp(prefix="runner-canary-"))
    folder.chmod(0o755)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(folder / "secret.png")
    (folder / "secret.txt").write_text("CANARY-SECRET\n")
    for path in folder.iterdir():
        path.chmod(0o644)
    yield folder
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


def in_sandbox(found: magick.ImageMagick, job: JobType, jail, script: str, *args: str) -> Attempt:
    """Run ``sh -c script`` with the convert job's environment prefix and sandbox profile."""
    shell = JobType(
        name="convert-probe", retry=RetryPolicy(attempts=1), sandbox=job.sandbox,
        argv=lambda p, ctx: [*found.environment(ctx.tmp_dir), "/bin/sh", "-c", script, "sh", *args],
    )
    the_jail, root = jail
    return execute(shell, JobMessage(job=shell.name, params={}), {}, root=root, worker="test",
                   jail=the_jail, slot=0)


PAYLOADS = {
    # SVG whose <image> reads a local picture by plain path (read into the output under the
    # stock Debian policy: research §4.3 p6b), forced to the SVG coder
    "svg": '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
           'width="16" height="16"><image xlink:href="{canary}/secret.png" width="16" '
           'height="16"/></svg>',
    "mvg": "push graphic-context\nviewbox 0 0 16 16\nimage over 0,0 16,16 '{canary}/secret.png'\n"
           "pop graphic-context\n",
    "msl": '<?xml version="1.0"?><image><read filename="{canary}/secret.png"/>'
           '<write filename="out.png"/></image>',
    "ps": "%!PS\n({canary}/secret.txt) (r) file 100 string readstring pop print showpage\n",
    "label": "",
}


@pytest.mark.parametrize("coder", sorted(PAYLOADS))
def test_forcing_a_refused_coder_is_stopped_by_the_policy(found, job, jail, canary, coder):
    # Given a payload that reads a file outside the work dir, given to ImageMagick with its
    # coder forced (as if the sniffing had been fooled)
    payload = PAYLOADS[coder].format(canary=canary)
    source = f"label:@{canary}/secret.txt" if coder == "label" else f"{coder}:payload"

    # When ImageMagick runs it inside the convert job's sandbox and environment
    attempt = in_sandbox(found, job, jail, 'printf "%s" "$1" > payload; "$2" "$3" out.png; echo "rc=$?"; '
                         'ls out.png 2>/dev/null || echo "no output"', payload, found.binary, source)

    # Then the policy refuses it (a refused module is not even a coder name any more) and the
    # canary stays unread
    text = attempt.result.stdout + attempt.result.stderr
    assert "rc=1" in attempt.result.stdout and "no output" in attempt.result.stdout, text
    assert ("not allowed by the security policy" in text
            or f"unable to open image `{coder}:payload'" in text), text
    assert "CANARY-SECRET" not in text


def test_inside_the_job_home_is_not_writable_and_the_system_policy_is_ours(found, job, jail):
    # When the job looks at its own environment and policy files
    attempt = in_sandbox(
        found, job, jail,
        'echo "HOME=$HOME"; mkdir -p "$HOME/.config/ImageMagick" && echo "home writable"; '
        'cat /etc/ImageMagick-$1/policy.xml > tmp/system-policy.xml || echo "no system policy"; '
        'echo x >> /etc/ImageMagick-$1/policy.xml && echo "policy writable"; '
        'cmp -s tmp/system-policy.xml "$MAGICK_CONFIGURE_PATH/policy.xml" && echo "system is ours"; '
        '"$2" -list policy | grep -E "^Path:"',
        str(found.major), found.binary,
    )

    # Then HOME is /nonexistent and cannot be made; every policy ImageMagick loads is ours
    out = attempt.result.stdout
    assert "HOME=/nonexistent" in out and "home writable" not in out and "policy writable" not in out
    system = Path(f"/etc/ImageMagick-{found.major}/policy.xml")
    if system.exists():
        assert "system is ours" in out
    loaded = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Path:")]
    assert loaded and set(loaded) <= {str(POLICY), str(system), "[built-in]"}, out


def test_binds_come_after_the_system_binds_and_are_read_only(tmp_path):
    # Given a profile bind of a file over one that a system bind provides
    argv = bwrap.command("/usr/bin/bwrap", mode="userns", disable_userns=False, network=False,
                         workdir=tmp_path, binds=[(str(POLICY), "/etc/ImageMagick-6/policy.xml")])

    # Then it is a read-only bind placed after the /etc ones, and /etc stays traversable
    at = argv.index(str(POLICY))
    assert argv[at - 1] == "--ro-bind" and argv[at + 1] == "/etc/ImageMagick-6/policy.xml"
    assert at > argv.index("/etc/ImageMagick-6") and argv.index("--") > at
    assert argv[argv.index("/etc") - 3:argv.index("/etc")] == ["--perms", "0755", "--dir"]


# --- end to end -----------------------------------------------------------------------------


def test_convert_end_to_end_through_a_worker_and_rabbitmq(worker_process, route, tmp_path, cleanup_queues, amqp_url):
    # Given a worker bound to a route, and a photo and a disguised PostScript file
    cleanup_queues.append(f"test.{route}")
    worker_process(f"test.{route}", [f"{route}.#"])
    env = {**os.environ, "RUNNER_BROKER_URL": amqp_url, "RUNNER_PLUGINS": "jobs_plugin"}

    def submit(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runner.cli", "submit", "convert", *args,
                               "--route", route, "--wait", "--json", "--output-dir", str(tmp_path)],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              check=False)

    # When the photo is turned and the PostScript submitted
    good = submit("--rotate", "90", "--resize", "96x96", "--format", "png", str(EDGE / "orientation_1.jpg"))
    bad = submit(str(HOSTILE / "postscript.jpg"))

    # Then the photo comes back turned, the PostScript fails at once with the reason
    record = json.loads(good.stdout)
    assert good.returncode == 0 and record["outputs"] == [str(tmp_path / "orientation_1_converted.png")]
    with Image.open(record["outputs"][0]) as out:
        assert out.size == (64, 96)
        assert_corners(out, (BLUE, RED, YELLOW, GREEN))
    assert bad.returncode == 1 and "PostScript is not an allowed image format" in bad.stdout + bad.stderr
    failed = json.loads(bad.stdout)
    assert failed["attempts"] == 1 and failed["status"] == "failed"
