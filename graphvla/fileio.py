"""Writing a file so that a reader never sees it half-written: the text goes to a temporary name
beside it, is flushed to disk, and is renamed over the target (one step on POSIX filesystems).
Used by checkpoints, sweep state, recorded datasets and the files `graphvla data` writes."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

TMP_PREFIX = ".tmp-"  # names a crash may leave behind; readers and pruning skip them


def write_text_atomic(path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
