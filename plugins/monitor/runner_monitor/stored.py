"""The monitor's view of the result store: finished jobs' results and outputs, and groups.

Output files are served for previews under a strict policy: only files whose *content* is a
PNG, JPEG, GIF or WebP image are served as images (inline); anything else is a download
(``application/octet-stream``, attachment).  Every response forbids sniffing and scripts, so a
job's output can never run in the monitor's origin.  Outputs that went through shared storage
are listed but not served (``runner result ID --output-dir DIR`` fetches them).
"""

from __future__ import annotations

from typing import Any

from runner import describe_group

IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": "private, max-age=300",
}


def image_type(data: bytes) -> str | None:
    """The image MIME type the bytes themselves show, or None."""
    for magic, mime in IMAGE_MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


class Stored:
    """Read-only access to the result store (None: the store is off; every call says so)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def result(self, job_id: str) -> dict[str, Any] | None:
        if self.store is None:
            return None
        found = self.store.get(job_id)
        if found is None:
            return None
        record = found.to_json()
        record["outputs"] = [
            {"index": i, "name": f.name, "size": f.size, "sha256": f.sha256,
             "shared": bool(f.ref), "image": not f.ref and image_type(f.data) is not None}
            for i, f in enumerate(found.outputs)
        ]
        group = self.store.group_of(job_id)  # a plain batch shares an id but is no group
        record["group"] = group if group and self.store.group(group) is not None else None
        suffix = "-then"
        if job_id.endswith(suffix) and self.store.group(job_id[: -len(suffix)]) is not None:
            record["callback_of"] = job_id[: -len(suffix)]
        return record

    def output(self, job_id: str, index: int) -> tuple[bytes, dict[str, str]] | None:
        """An inline output's bytes and the headers to serve them with."""
        if self.store is None:
            return None
        found = self.store.get(job_id)
        if found is None or not 0 <= index < len(found.outputs) or found.outputs[index].ref:
            return None
        item = found.outputs[index]
        mime = image_type(item.data)
        headers = dict(HEADERS)
        if mime is None:
            headers["Content-Type"] = "application/octet-stream"
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in item.name)
            headers["Content-Disposition"] = f'attachment; filename="{safe}"'
        else:
            headers["Content-Type"] = mime
        return item.data, headers

    def group(self, group_id: str) -> dict[str, Any] | None:
        if self.store is None:
            return None
        state = self.store.group(group_id)
        return describe_group(state, self.store) if state is not None else None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
