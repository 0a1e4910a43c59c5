"""The bubblewrap part of a job's exec chain.

A job sees: ``/usr`` (and the ``/bin``, ``/lib`` links) read-only, the few ``/etc`` files that
programs need to start, a fresh ``/proc`` (its own PID namespace), a minimal ``/dev``, a private
``/tmp``, the Python installation and plugin packages read-only (function jobs only), and its
own work directory, bound at the same path (with ``/tmp`` and ``/dev/shm`` the only writable
places; the rest of the skeleton is remounted read-only).  Every namespace is new;
the network one is kept only when the job type declares network access.

As root, bubblewrap runs privileged with every capability dropped but SETUID, SETGID and
SETPCAP, and ``setpriv`` inside the sandbox clears the bounding set and drops to the slot's uid
before the job starts: root can bind
directories a slot uid could not even traverse (a pyenv under ``/root``), and the job still
never runs as root.  Without root, bubblewrap builds a user namespace and the job keeps the
worker's uid (``--disable-userns`` stops it from nesting another).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def _system_binds() -> list[str]:
    binds = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            binds += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            binds += ["--ro-bind", str(path), str(path)]
    # 0755 made explicit: as root, bwrap would create /etc 0700, closed to the slot uid.
    binds += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC_FILES:
        binds += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return binds


# What dynamic linking, locales, ImageMagick and fonts need; no passwd, shadow or host secrets.
ETC_FILES = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "mime.types",
    "ImageMagick-6", "ImageMagick-7", "fonts", "magic", "magic.mime",
)
# Only for job types that declare network access.
NETWORK_ETC_FILES = (
    "resolv.conf", "hosts", "nsswitch.conf", "host.conf", "gai.conf", "ssl", "ca-certificates",
)
SYSTEM_BINDS = _system_binds()
# Not --unshare-all: as root that would add a user namespace mapping only uid 0, and the uid
# drop inside would fail.  The network namespace is added per job.
NAMESPACES = ("--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try")
# CAP_SETPCAP too: bwrap leaves the bounding set full, and only with it can setpriv clear the
# bounding set (--bounding-set=-all) before it drops to the slot uid, which ends all three.
ROOT_CAPS = ("--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
             "--cap-add", "CAP_SETPCAP")


def command(
    bwrap: str,
    *,
    mode: str,
    disable_userns: bool,
    network: bool,
    workdir: Path,
    read_only: Sequence[str] = (),
    binds: Sequence[tuple[str, str]] = (),
    seccomp_fd: int | None = None,
    tmp_size: int | None = None,
    inner: Sequence[str] = (),
) -> list[str]:
    """bwrap argv up to and including ``--``, followed by ``inner`` (the in-sandbox prefix).

    Args:
        bwrap: path of the bwrap binary.
        mode: ``"root"`` (privileged; ``inner`` must drop the uid) or ``"userns"``.
        disable_userns: bwrap supports ``--disable-userns`` (userns mode only).
        network: keep the host network namespace.
        workdir: the job's directory: bound read-write at the same path, and the cwd.
        read_only: more host paths to bind read-only at the same path (interpreter, packages).
        binds: ``(source, destination)`` read-only binds, after all others: a destination may
            lie over a system bind (a file over one in ``/etc/ImageMagick-6``).
        seccomp_fd: descriptor of a compiled BPF filter, passed to the child.
        tmp_size: size cap of the private ``/tmp`` in bytes.
        inner: argv that runs inside the sandbox before the job's own (e.g. setpriv).
    """
    argv = [bwrap, *NAMESPACES]
    if not network:
        argv.append("--unshare-net")
    argv += ["--die-with-parent", "--new-session", "--hostname", "runner-job"]
    if mode == "root":
        argv += ROOT_CAPS
    else:
        argv.append("--unshare-user")
        if disable_userns:
            argv.append("--disable-userns")
    argv += SYSTEM_BINDS
    if network:
        for name in NETWORK_ETC_FILES:
            argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for private in ("/dev/shm", "/tmp"):
        if tmp_size:
            argv += ["--size", str(tmp_size)]
        argv += ["--tmpfs", private]
    made: set[str] = set()
    # A module bound alone under /tmp: its directory (on the job's import path) would be a
    # writable directory of the private /tmp.  Each such directory is a tmpfs of its own,
    # mounted before any bind (shallowest first) and made read-only at the end, so a job
    # cannot plant modules beside the bound one.
    sealed = sorted({os.path.dirname(p) for p in read_only
                     if _in_private(os.path.dirname(p)) and os.path.isfile(p)}, key=len)
    for parent in sealed:
        argv += [*_parents(os.path.join(parent, "-"), made), "--tmpfs", parent]
    for path in read_only:
        if not path.startswith("/usr/"):
            argv += [*_parents(path, made), "--ro-bind", path, path]
    argv += [*_parents(str(workdir), made), "--bind", str(workdir), str(workdir)]
    for source, destination in binds:
        argv += [*_parents(destination, made), "--ro-bind", source, destination]
    for parent in sealed:
        argv += ["--remount-ro", parent]
    # The skeleton bwrap built (the root, the directories above binds, /dev) is read-only: a
    # job writes only its work dir, /tmp and /dev/shm, which a warm slot host empties between
    # jobs (unprivileged, the skeleton belongs to the job's own uid).
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", str(workdir)]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return [*argv, "--", *inner]


def _in_private(directory: str) -> bool:
    """Whether ``directory`` lies inside the job's private /tmp or /dev/shm (not one of them)."""
    return any(directory.startswith(private + "/") for private in ("/tmp", "/dev/shm"))


def _parents(path: str, made: set[str]) -> list[str]:
    """``--dir`` ops for the ancestors of a bind target, 0755 (bwrap would make them 0700)."""
    ops: list[str] = []
    parts = Path(path).parts[1:-1]
    for i in range(len(parts)):
        ancestor = "/" + "/".join(parts[: i + 1])
        if ancestor in made or ancestor in ("/tmp", "/usr", "/proc", "/dev"):
            continue
        made.add(ancestor)
        ops += ["--perms", "0755", "--dir", ancestor]
    return ops


def collapse(paths: Sequence[str]) -> list[str]:
    """Existing absolute paths, without those already inside another one of the list."""
    found = {os.path.normpath(p) for p in paths if os.path.isabs(p) and os.path.exists(p)}
    real = sorted(found | {os.path.realpath(p) for p in found})
    kept: list[str] = []
    for path in real:
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept
