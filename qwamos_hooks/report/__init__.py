"""Report writers over one list of checked files. Each format is a module with
``write(checked, stream, **opts)``; they all read the same findings."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

FORMATS = ("text", "json")


@dataclass(frozen=True)
class Checked:
    """One checked input: a file path (or domain) and its result or input error."""

    path: str
    result: object | None  # engine.Result
    error: str | None = None


def write(fmt: str, checked: list, stream, **opts) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}' (one of: {', '.join(FORMATS)})")
    importlib.import_module(f"{__name__}.{fmt}_report").write(checked, stream, **opts)


def counts(checked: list) -> dict:
    c = {"files": len(checked), "input_errors": 0, "error": 0, "warning": 0, "info": 0, "files_with_errors": 0}
    for ch in checked:
        if ch.error:
            c["input_errors"] += 1
            continue
        errs = 0
        for f in ch.result.findings:
            c[f.severity] += 1
            errs += f.severity == "error"
        c["files_with_errors"] += errs > 0
    return c
