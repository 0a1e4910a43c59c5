"""Shared storage: files too large to travel inline go by reference to a directory every box mounts.

Setting ``shared_storage`` (a path, the same on clients and workers: an NFS or CIFS mount, a
bind-mounted volume) turns it on.  A reference is ``<job id>/in/<name>`` or
``<job id>/out/<name>`` relative to that directory, with the file's size and sha256 in the
(signed) message: a worker verifies the digest while it copies the file into the job's work
directory, so a file changed or swapped on the share is refused, never run.  Jobs never see
the share itself: the worker copies inputs in and outputs out.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from runner.errors import MessageError, RunnerError
from runner.message import FileData, check_file_name

CHUNK = 1 << 20


def _copy(src_fd: int, dest: Path, limit: int | None = None, mode: int = 0o600) -> tuple[int, str]:
    """Copy an open file to ``dest`` (created exclusively); return its size and sha256."""
    digest, size = hashlib.sha256(), 0
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        while chunk := os.read(src_fd, CHUNK):
            size += len(chunk)
            if limit is not None and size > limit:
                raise MessageError(f"{dest.name}: larger than its declared size")
            digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
    finally:
        os.close(out)
    return size, digest.hexdigest()


def _store(root: Path, job_id: str, kind: str, name: str, src_fd: int) -> FileData:
    check_file_name(name, kind)
    folder = root / job_id / kind
    # Readable by the share's other users (clients and workers may run as different users):
    # access to the share is governed by the permissions of the shared_storage directory.
    folder.mkdir(parents=True, exist_ok=True, mode=0o755)
    size, sha = _copy(src_fd, folder / name, mode=0o644)
    return FileData(name=name, ref=f"{job_id}/{kind}/{name}", ref_size=size, ref_sha256=sha)


def store_input(root: Path, job_id: str, path: Path) -> FileData:
    """Copy a client's input file to the share; return its reference."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise RunnerError(f"cannot read input {path}: {exc.strerror}") from exc
    try:
        return _store(root, job_id, "in", path.name, fd)
    finally:
        os.close(fd)


def store_output(root: Path, job_id: str, name: str, fd: int) -> FileData:
    """Copy a job's output (an fd the worker opened safely) to the share; return its reference."""
    return _store(root, job_id, "out", name, fd)


def fetch(root: Path | None, item: FileData, dest: Path) -> None:
    """Copy a referenced file from the share to ``dest``, verifying its size and digest.

    Raises:
        MessageError: no share configured here, the reference leaves the share, follows a
            symlink, or the file's size or digest differs from the (signed) message.
    """
    if root is None:
        raise MessageError(f"{item.name} travels by reference but shared_storage is not set here")
    ref = item.ref or ""
    base = os.path.realpath(root)
    target = os.path.realpath(os.path.join(base, ref))
    if not target.startswith(base + os.sep):
        raise MessageError(f"{item.name}: reference {ref!r} leaves the shared storage")
    try:
        fd = os.open(os.path.join(base, ref), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise MessageError(f"{item.name}: cannot open {ref!r} on shared storage: {exc.strerror}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MessageError(f"{item.name}: {ref!r} is not a regular file")
        size, sha = _copy(fd, dest, limit=item.size)
    finally:
        os.close(fd)
    if size != item.size or sha != item.sha256:
        dest.unlink(missing_ok=True)
        raise MessageError(f"{item.name}: the file on shared storage differs from the message")


def remove(root: Path | None, job_id: str, kind: str) -> None:
    """Remove a job's files of one kind (``in`` or ``out``) from the share, once consumed."""
    if root is not None and job_id and "/" not in job_id and job_id not in (".", ".."):
        shutil.rmtree(root / job_id / kind, ignore_errors=True)
        try:
            (root / job_id).rmdir()
        except OSError:
            pass
