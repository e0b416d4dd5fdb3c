"""Writing a file so that a reader never sees it half-written: the text goes to a temporary name
beside it, is flushed to disk, and is renamed over the target (one step on POSIX filesystems).
Used by checkpoints, sweep state, recorded datasets and the files `graphvla data` writes."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

TMP_PREFIX = ".tmp-"  # names a crash may leave behind; readers and pruning skip them


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256_of(path, cache: dict | None = None) -> str:
    """sha256 of a file, read in chunks; `cache` (path, size, mtime) -> digest saves re-reading a
    large file (a base model at every save)."""
    import hashlib

    path = Path(path)
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if cache is not None and key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if cache is not None:
        cache[key] = digest
    return digest
