"""The job itself: runs in a child interpreter inside the worker's sandbox.

``count_words(ctx, **params)`` gets the validated parameters; input files arrive as paths in
``ctx.in_dir``; files written to ``ctx.out_dir`` go back to the client; the return value (JSON)
is the result's ``value``.  ``raise Reject(...)`` fails for good, ``raise Retry(...)`` asks for
another attempt; any other exception is retried by the job type's RetryPolicy.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from runner import JobContext, Reject

WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")


def count_words(ctx: JobContext, text: str, top: int) -> dict[str, Any]:
    try:
        content = Path(text).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise Reject(f"{Path(text).name} is not UTF-8 text") from None
    counts = Counter(word.lower() for word in WORD.findall(content))
    common = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
    (ctx.out_dir / "top.txt").write_text("".join(f"{n}\t{word}\n" for word, n in common))
    return {"words": sum(counts.values()), "distinct": len(counts), "top": common}
