#!/usr/bin/env python3
"""Downscaling one JPEG: runner's resize job against ImageMagick and libvips, on the same images.

    python bench/media.py                  # 1-2 minutes; --runs, --size, --photo, --json
    python bench/media.py --no-worker      # without the end-to-end figure (no broker needed)

Two inputs are generated into a temporary directory from a real photo of fixtures/images
(``coffee.jpg``, 600x400, upscaled with Lanczos and saved as JPEG quality 90): ~24 MP
(6000x4000) and ~2 MP (1740x1160).  Each is made to fit ``--size`` (400x400, JPEG quality 85) by:

* runner ``resize``, the job function called in this process (draft decode, Lanczos);
* runner ``resize`` through a worker end to end: submit, sandboxed job, result back (one
  figure per image; the broker is RabbitMQ at ``RUNNER_BROKER_URL`` or 127.0.0.1:5672);
* ``convert IN -resize 400x400 OUT`` (ImageMagick, full decode);
* ``convert -define jpeg:size=800x800 IN -thumbnail 400x400 OUT`` (libjpeg scaled decode);
* ``vipsthumbnail IN -s 400x400 -o OUT[Q=85]`` (shrink-on-load).

Per method and image: milliseconds per image (median of ``--runs``, after one warm-up), peak
resident memory of a process doing one image (``wait4`` rusage of a fresh child: the whole
process, interpreter included for Python), and SSIM of the output against a reference: Pillow
Lanczos from the fully decoded image, without draft mode.  SSIM is the 8x8-window mean SSIM on
luma (BT.601), constants K1 = 0.01, K2 = 0.03.  It prints a table; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "fixtures" / "images"
SIZES = {"24MP": (6000, 4000), "2MP": (1740, 1160)}
QUALITY = 85


def make_inputs(photo: Path, folder: Path) -> dict[str, Path]:
    source = Image.open(photo).convert("RGB")
    made = {}
    for label, (width, height) in SIZES.items():
        path = folder / f"{photo.stem}_{label}.jpg"
        source.resize((width, height), Image.Resampling.LANCZOS).save(path, quality=90)
        made[label] = path
    return made


# --- SSIM -----------------------------------------------------------------------------------


def luma(img: Image.Image) -> np.ndarray:
    rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
    return rgb @ np.array([0.299, 0.587, 0.114])


def _box_mean(a: np.ndarray, n: int) -> np.ndarray:
    """Mean over every n x n window (valid positions only), by an integral image."""
    s = np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return (s[n:, n:] - s[:-n, n:] - s[n:, :-n] + s[:-n, :-n]) / (n * n)


def ssim(a: Image.Image, b: Image.Image, window: int = 8) -> float:
    """Mean SSIM of two same-sized images on luma, 8x8 uniform windows."""
    x, y = luma(a), luma(b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _box_mean(x, window), _box_mean(y, window)
    vx = _box_mean(x * x, window) - mx * mx
    vy = _box_mean(y * y, window) - my * my
    cov = _box_mean(x * y, window) - mx * my
    cov *= window * window / (window * window - 1)  # unbiased, as Wang et al.
    vx *= window * window / (window * window - 1)
    vy *= window * window / (window * window - 1)
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(index.mean())


def score(output: Path, reference: Image.Image) -> tuple[float, str]:
    """SSIM against the reference; outputs a pixel off in size are scaled to it (noted)."""
    with Image.open(output) as out:
        out.load()
    note = ""
    if out.size != reference.size:
        note = f"{out.size[0]}x{out.size[1]}"
        out = out.resize(reference.size, Image.Resampling.LANCZOS)
    return ssim(out, reference), note


# --- measuring ------------------------------------------------------------------------------


def peak_rss(argv: list[str]) -> float:
    """Peak resident MiB of ``argv`` run once, as GNU time measures it.

    Not ``wait4`` from this process: a child forked from it starts with this (large) process's
    high-water mark, which survives the exec.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        if os.path.exists("/usr/bin/time"):
            wrapped = ["/usr/bin/time", "-f", "%M", "-o", report.name, *argv]
        else:  # a small, fresh interpreter forks and waits instead
            wrapped = [sys.executable, "-I", "-S", "-c", _FORK_AND_WAIT, report.name, *argv]
        done = subprocess.run(wrapped, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr[-300:]}")
        return int(report.read().split()[-1]) / 1024


_FORK_AND_WAIT = (
    "import os, sys\npid = os.fork()\nif pid == 0:\n    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "_, status, usage = os.wait4(pid, 0)\nopen(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float, float]:
    fn()  # warm the page cache and lazy imports
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), min(times), max(times)


class Methods:
    """Each method: a callable making ``out`` from ``src``, and an argv for the memory run."""

    def __init__(self, size: str, work: Path, magick: str) -> None:
        self.size = size
        self.work = work
        self.magick = magick
        width, height = (int(v) for v in size.split("x"))
        self.jpeg_size = f"{2 * width}x{2 * height}"

    def runner_resize(self, src: Path, out: Path) -> list[str]:
        code = (
            "import shutil, sys, tempfile\nfrom pathlib import Path\n"
            "from runner.context import JobContext\nfrom runner_media.resize import resize\n"
            "src, out, size = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]\n"
            "work = Path(tempfile.mkdtemp())\n(work / 'in').mkdir()\n"
            "shutil.copyfile(src, work / 'in' / src.name)\n"
            "ctx = JobContext('bench', 'resize', 1, work)\n"
            "fmt = 'png' if out.suffix == '.png' else 'jpeg'\n"
            f"r = resize(ctx, image=str(work / 'in' / src.name), size=size, quality={QUALITY}, "
            "format=fmt)\n"
            "shutil.move(ctx.out_dir / r['file'], out)\nshutil.rmtree(work)\n"
        )
        return [sys.executable, "-c", code, str(src), str(out), self.size]

    def convert_resize(self, src: Path, out: Path) -> list[str]:
        return [self.magick, str(src), "-resize", self.size, "-quality", str(QUALITY), str(out)]

    def convert_thumbnail(self, src: Path, out: Path) -> list[str]:
        return [self.magick, "-define", f"jpeg:size={self.jpeg_size}", str(src),
                "-thumbnail", self.size, "-quality", str(QUALITY), str(out)]

    def vipsthumbnail(self, src: Path, out: Path) -> list[str]:
        options = f"[Q={QUALITY}]" if out.suffix == ".jpg" else ""
        return ["vipsthumbnail", str(src), "-s", self.size, "-o", f"{out}{options}"]


def in_process_resize(size: str, work: Path) -> Callable[[Path, Path], None]:
    """runner's resize job function, called here as the child interpreter calls it."""
    from runner_media.resize import resize

    from runner.context import JobContext

    def run(src: Path, out: Path) -> None:
        job = Path(tempfile.mkdtemp(dir=work))
        (job / "in").mkdir()
        shutil.copyfile(src, job / "in" / src.name)
        ctx = JobContext("bench", "resize", 1, job)
        result = resize(ctx, image=str(job / "in" / src.name), size=size, quality=QUALITY,
                        format="png" if out.suffix == ".png" else "jpeg")
        shutil.move(ctx.out_dir / result["file"], out)
        shutil.rmtree(job)

    return run


def end_to_end(inputs: dict[str, Path], size: str, runs: int, work: Path, url: str) -> dict[str, dict]:
    """Submit, run in a worker's sandbox, get the output back: client-side ms per image."""
    from runner.broker import connect
    from runner.client import Client
    from runner.plugins import make_plugins
    from runner.testing import running_worker, settings_for, unique_route

    route = unique_route("bench")
    settings = settings_for(url, route, workdir=str(work / "worker"))
    plugins = make_plugins(load=["media"])
    figures: dict[str, dict] = {}
    try:
        with running_worker(settings, plugins):
            client = Client(connect(url), plugins, settings)
            try:
                for label, src in inputs.items():
                    last: dict = {}

                    def once(src: Path = src, last: dict = last) -> None:
                        result = client.submit("resize", {"size": size, "quality": QUALITY},
                                               {"image": src}, route=route,
                                               wait=True).wait(timeout=120)
                        if not result.ok:
                            raise RuntimeError(result.error)
                        last["result"] = result

                    med, low, high = median_ms(once, runs)
                    result = last["result"]
                    out = work / f"e2e_{label}.jpg"
                    out.write_bytes(result.outputs[0].data)
                    figures[label] = {"ms": med, "min": low, "max": high, "out": out,
                                      "job_ms": result.duration * 1000}
            finally:
                client.close()
    finally:
        with connect(url) as broker:
            broker.delete_queue(settings.queue)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per method and image")
    parser.add_argument("--size", default="400x400", help="target box")
    parser.add_argument("--photo", type=Path, default=PHOTOS / "coffee.jpg")
    parser.add_argument("--no-worker", action="store_true", help="skip the end-to-end figure")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from runner_media import magick

    found = magick.find()
    missing = [tool for tool in ("vipsthumbnail",) if shutil.which(tool) is None]
    if missing:  # its rows are left out; the others do not need it
        print(f"missing: {', '.join(missing)} (apt-get install libvips-tools): its rows are skipped",
              file=sys.stderr)
    vips = "no vips" if missing else subprocess.run(
        ["vips", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="runner-bench-media-"))
    work.chmod(0o711)
    rows: list[dict] = []
    try:
        inputs = make_inputs(args.photo, work)
        methods = Methods(args.size, work, found.binary)
        runner_inline = in_process_resize(args.size, work)
        plans: list[tuple[str, Callable[[Path, Path], list[str]], Callable[[Path, Path], object] | None]] = [
            ("runner resize (in-process)", methods.runner_resize, runner_inline),
            ("convert -resize", methods.convert_resize, None),
            ("convert -thumbnail, jpeg:size", methods.convert_thumbnail, None),
            *([] if missing else [("vipsthumbnail", methods.vipsthumbnail, None)]),
        ]
        print(f"ImageMagick {found.version} ({found.binary}), {vips}, Pillow {Image.__version__}; "
              f"{os.cpu_count()} CPUs; target {args.size}, JPEG q{QUALITY}; median of {args.runs}",
              flush=True)
        for label, src in inputs.items():
            with Image.open(src) as img:
                full = img.convert("RGB")
            width, height = args.size.split("x")
            reference = full.copy()
            reference.thumbnail((int(width), int(height)), Image.Resampling.LANCZOS, reducing_gap=None)
            del full
            mb = src.stat().st_size / 1e6
            print(f"\n{label}: {src.name}, {Image.open(src).size[0]}x{Image.open(src).size[1]}, "
                  f"{mb:.1f} MB; reference {reference.size[0]}x{reference.size[1]}", flush=True)
            for name, make_argv, inline in plans:
                out = work / f"out_{len(rows)}.jpg"
                argv = make_argv(src, out)
                if inline is not None:
                    med, low, high = median_ms(lambda f=inline, s=src, o=out: f(s, o), args.runs)
                else:
                    med, low, high = median_ms(
                        lambda a=argv: subprocess.run(a, check=True, capture_output=True), args.runs)
                rss = peak_rss(argv)
                # SSIM of the resampling alone: the same method once more, PNG out (lossless)
                lossless = out.with_suffix(".png")
                subprocess.run(make_argv(src, lossless), check=True, capture_output=True)
                value, note = score(lossless, reference)
                jpeg_value, _ = score(out, reference)
                rows.append({"image": label, "method": name, "ms": med, "min": low, "max": high,
                             "rss_mib": rss, "ssim": value, "ssim_jpeg": jpeg_value, "note": note})
                _print_row(rows[-1])
        if not args.no_worker:
            url = os.environ.get("RUNNER_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
            for label, fig in end_to_end(inputs, args.size, args.runs, work, url).items():
                with Image.open(inputs[label]) as img:
                    reference = img.convert("RGB")
                reference.thumbnail((int(args.size.split("x")[0]), int(args.size.split("x")[1])),
                                    Image.Resampling.LANCZOS, reducing_gap=None)
                value, note = score(fig["out"], reference)
                rows.append({"image": label, "method": "runner resize (worker, end to end)",
                             "ms": fig["ms"], "min": fig["min"], "max": fig["max"],
                             "rss_mib": None, "ssim": None, "ssim_jpeg": value,
                             "note": f"job {fig['job_ms']:.0f} ms in the sandbox" + (f"; {note}" if note else "")})
                _print_row(rows[-1])
        print()
        _print_table(rows)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _ssim(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _print_row(row: dict) -> None:
    rss = f"{row['rss_mib']:.0f} MiB" if row["rss_mib"] is not None else "-"
    print(f"  {row['method']:<36} {row['ms']:8.1f} ms ({row['min']:.0f}-{row['max']:.0f})  "
          f"{rss:>8}  SSIM {_ssim(row['ssim'])} (JPEG out {_ssim(row['ssim_jpeg'])}) {row['note']}",
          flush=True)


def _print_table(rows: list[dict]) -> None:
    print("| image | method | ms/image, median (range) | peak RSS | SSIM, PNG out | SSIM, JPEG q85 out |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        rss = f"{row['rss_mib']:.0f} MiB" if row["rss_mib"] is not None else "-"
        note = f" ({row['note']})" if row["note"] else ""
        print(f"| {row['image']} | {row['method']}{note} | {row['ms']:.0f} ({row['min']:.0f}-{row['max']:.0f}) "
              f"| {rss} | {_ssim(row['ssim'])} | {_ssim(row['ssim_jpeg'])} |")


if __name__ == "__main__":
    sys.exit(main())
