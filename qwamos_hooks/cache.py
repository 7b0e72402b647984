"""A small on-disk cache of plain data (marshal) under the lib dir.

The hook is a new process at every VM event; what it can reuse from an
earlier event (a validated policy, the parse of a definition it has seen) it
reads from here. Entries are keyed by a hash of everything they depend on, so
a stale entry is never read, and every failure just means recomputing: the
cache is best effort and can be deleted at any time. marshal builds plain
data and never runs code on load.
"""

from __future__ import annotations

import marshal
import os

MAX_ENTRIES = 256  # per prefix; the oldest half goes when it is exceeded


def read(path: str):
    """The cached object, or None."""
    try:
        with open(path, "rb") as fh:
            return marshal.load(fh)
    except (OSError, EOFError, ValueError, TypeError):
        return None


def write(path: str, obj) -> None:
    """Write atomically; a read-only or full lib dir only costs a recompute."""
    try:
        folder = os.path.dirname(path)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            marshal.dump(obj, fh)
        os.replace(tmp, path)
        _prune(folder, os.path.basename(path).split("-", 1)[0] + "-")
    except (OSError, ValueError):
        pass


def _prune(folder: str, prefix: str) -> None:
    names = [n for n in os.listdir(folder) if n.startswith(prefix)]
    if len(names) <= MAX_ENTRIES:
        return
    paths = sorted((os.path.join(folder, n) for n in names), key=lambda p: os.stat(p).st_mtime)
    for p in paths[: len(paths) // 2]:
        try:
            os.unlink(p)
        except OSError:
            pass
