"""Check many domain XML files, serially or across processes, in a stable order.

Inputs are listed first (folders walked in sorted order), then checked in
chunks; chunks come back in submission order, so the report is byte-for-byte
the same whatever the number of workers.
"""

from __future__ import annotations

import os
import sys

from .errors import InputError, NotADomain
from .report import Checked

PARALLEL_MIN_FILES = 64  # below this, starting workers costs more than it saves


def iter_inputs(paths):
    """Yield (path, explicit) for each file to check; folders are walked for *.xml."""
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for f in sorted(files):
                    if f.endswith(".xml"):
                        yield os.path.join(root, f), False
        else:
            yield p, True


def check_one(path: str, explicit: bool, policy, live: bool, today) -> Checked | None:
    """None for a non-domain XML file met while walking a folder (skipped)."""
    from . import domain, engine

    try:
        d = domain.parse_file(path)
    except NotADomain as exc:
        return Checked(path, None, str(exc)) if explicit else None
    except InputError as exc:
        return Checked(path, None, str(exc))
    except OSError as exc:  # vanished or unreadable between listing and reading
        return Checked(path, None, f"{path}: cannot read: {exc.strerror or exc}")
    return Checked(path, engine.evaluate(d, policy, live=live, today=today).detach())


_WORKER: dict = {}


def _init_worker(policy, live, today) -> None:
    _WORKER.update(policy=policy, live=live, today=today)


def _check_chunk(items):
    w = _WORKER
    return [check_one(p, e, w["policy"], w["live"], w["today"]) for p, e in items]


class Progress:
    """'checked N/M' on stderr, only for a person at a terminal (never in CI logs)."""

    def __init__(self, total: int, stream=None, enabled: bool | None = None):
        self.total = total
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = (total > 1 and hasattr(self.stream, "isatty") and self.stream.isatty()
                       and not os.environ.get("CI"))
        self.enabled = enabled
        self.done = 0
        self._shown = -1

    def advance(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        pct = self.done * 100 // max(1, self.total)
        if pct != self._shown:
            self._shown = pct
            self.stream.write(f"\rqwamos-policy: checked {self.done}/{self.total} ({pct}%)")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._shown >= 0:
            self.stream.write("\r\033[K")
            self.stream.flush()


def default_jobs(n_files: int) -> int:
    if n_files < PARALLEL_MIN_FILES:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def check_files(items: list, policy, *, live: bool = False, today=None, jobs: int = 0,
                progress: Progress | None = None) -> tuple[list, int]:
    """Check (path, explicit) items. Returns (checked in input order, skipped count)."""
    from . import engine

    today = today or engine.today_utc()
    jobs = jobs or default_jobs(len(items))
    jobs = min(jobs, max(1, len(items)))
    progress = progress or Progress(len(items), enabled=False)
    out: list = []
    if jobs <= 1:
        for p, e in items:
            out.append(check_one(p, e, policy, live, today))
            progress.advance(1)
    else:
        import concurrent.futures

        # Several chunks per worker keep the cores busy when file sizes vary.
        size = max(8, min(256, len(items) // (jobs * 8) or 1))
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=jobs, initializer=_init_worker, initargs=(policy, live, today)
        ) as pool:
            for res in pool.map(_check_chunk, chunks):
                out.extend(res)
                progress.advance(len(res))
    progress.close()
    checked = [c for c in out if c is not None]
    return checked, len(out) - len(checked)
