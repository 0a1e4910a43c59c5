"""Which ImageMagick the convert job runs, and the locked-down setting it runs in.

The binary is resolved once, when the job type is registered: the ``[jobs.convert] binary``
setting, else the first of :data:`CANDIDATES` that is a real ImageMagick.  Nothing is looked
up on ``PATH``: a ``convert`` earlier on it (``/usr/local/bin``) may be anything.

Every run gets the package's allow-list policy twice over: bound over the system
``policy.xml`` inside the sandbox, and first on ``MAGICK_CONFIGURE_PATH``; and an environment
built from nothing with ``HOME=/nonexistent``, so no per-user policy (read after the system
one, and able to re-open coders) or delegate file is ever found.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

POLICY_DIR = Path(__file__).resolve().parent / "imagemagick-policy"
# IM7's single binary, then IM6's by its Debian name, then the usual IM6 name: under /usr
# only, the program tree a job's sandbox sees.
CANDIDATES = ("/usr/bin/magick", "/usr/bin/convert-im6.q16", "/usr/bin/convert")
ENV = "/usr/bin/env"
HOME = "/nonexistent"  # not creatable by the job: the sandbox's root is not writable
_VERSION_RE = re.compile(r"^Version: ImageMagick (\d+)\.(\S+)")


class NotFound(RuntimeError):
    """No usable ImageMagick; the message (one line) says what was tried."""


@dataclass(frozen=True)
class ImageMagick:
    """A verified ImageMagick binary.

    Attributes:
        binary: absolute path, symlinks resolved.
        version: e.g. ``"6.9.11-60"``.
    """

    binary: str
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".", 1)[0])

    def binds(self) -> tuple[tuple[str, str], ...]:
        """Read-only binds for the job's sandbox: the policy directory at its own path (for
        ``MAGICK_CONFIGURE_PATH``) and the policy file over each system ``policy.xml``."""
        policy = str(POLICY_DIR / "policy.xml")
        over = [f"/etc/ImageMagick-{n}/policy.xml" for n in (6, 7)]
        return ((str(POLICY_DIR), str(POLICY_DIR)),
                *((policy, path) for path in over if os.path.isfile(path)))

    def environment(self, tmp_dir: Path) -> list[str]:
        """``env -i ...``: the argv prefix that gives ImageMagick an environment of our own."""
        return [ENV, "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", f"HOME={HOME}",
                f"MAGICK_CONFIGURE_PATH={POLICY_DIR}", f"TMPDIR={tmp_dir}",
                f"MAGICK_TEMPORARY_PATH={tmp_dir}", "OMP_NUM_THREADS=2"]


def find(configured: str | None = None) -> ImageMagick:
    """The configured binary, verified, or the first candidate that is ImageMagick.

    Raises:
        NotFound: the configured binary is not ImageMagick, or no candidate is.
    """
    if configured:
        found, why = identify(str(configured))
        if found is None:
            raise NotFound(f"[jobs.convert] binary = {configured!r}: {why}")
        return found
    reasons = []
    for candidate in CANDIDATES:
        found, why = identify(candidate)
        if found is not None:
            return found
        reasons.append(f"{candidate}: {why}")
    raise NotFound("no ImageMagick found (" + "; ".join(reasons) + "); install imagemagick "
                   "or set [jobs.convert] binary")


def identify(path: str) -> tuple[ImageMagick | None, str]:
    """``(ImageMagick, "")`` when ``path`` is an ImageMagick executable, else ``(None, why)``.

    It must be an ELF executable under ``/usr`` (a shell script standing in for ``convert``
    is refused even if it passes ``-version`` on) whose ``-version`` names ImageMagick.
    """
    if not os.path.isabs(path):
        return None, "not an absolute path"
    real = os.path.realpath(path)
    if not os.path.isfile(real) or not os.access(real, os.X_OK):
        return None, "not installed" if not os.path.exists(path) else "not an executable file"
    if not real.startswith("/usr/"):
        return None, f"{real} is outside /usr, which is all of the programs a job's sandbox sees"
    with open(real, "rb") as fh:
        if fh.read(4) != b"\x7fELF":
            return None, f"{real} is not a compiled program (a script standing in for ImageMagick?)"
    try:
        done = subprocess.run(
            [real, "-version"], capture_output=True, text=True, timeout=10, check=False,
            stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "HOME": HOME},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{real} -version failed: {exc}"
    match = _VERSION_RE.match(done.stdout)
    if done.returncode != 0 or not match:
        return None, f"{real} -version does not name ImageMagick"
    return ImageMagick(binary=real, version=f"{match[1]}.{match[2]}"), ""
