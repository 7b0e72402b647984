"""Report writers over one list of checked files. Each format is a module with
``write(checked, stream, **opts)``; they all read the same findings.

Options every writer accepts (and may ignore): ``verbose``, ``policy`` (the
Policy used, for rule severities and its source), ``fail_on`` ("error" or
"warning": what makes the run fail).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

FORMATS = ("text", "json", "sarif", "junit", "github")


@dataclass(frozen=True)
class Checked:
    """One checked input: a file path (or a libvirt domain) and its result or input error."""

    path: str
    result: object | None  # engine.Result
    error: str | None = None
    state: str | None = None  # libvirt domains: "running" or "inactive"; None for files


def write(fmt: str, checked: list, stream, **opts) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}' (one of: {', '.join(FORMATS)})")
    importlib.import_module(f"{__name__}.{fmt}_report").write(checked, stream, **opts)


def failing_severities(fail_on: str = "error") -> tuple:
    return ("error", "warning") if fail_on == "warning" else ("error",)


def counts(checked: list, fail_on: str = "error") -> dict:
    """Totals. error/warning/info count findings that are not waived; waived
    findings are only in ``waived`` (and ``waived_by_severity``)."""
    c = {"files": len(checked), "input_errors": 0, "error": 0, "warning": 0, "info": 0,
         "files_with_errors": 0, "waived": 0, "waiver_notes": 0,
         "waived_by_severity": {"error": 0, "warning": 0, "info": 0}, "files_failing": 0}
    fail = failing_severities(fail_on)
    for ch in checked:
        if ch.error:
            c["input_errors"] += 1
            c["files_failing"] += 1
            continue
        errs = failing = 0
        for f in ch.result.findings:
            if f.waiver is not None:
                c["waived"] += 1
                c["waived_by_severity"][f.severity] += 1
                continue
            c[f.severity] += 1
            errs += f.severity == "error"
            failing += f.severity in fail
        c["waiver_notes"] += len(ch.result.notes)
        c["files_with_errors"] += errs > 0
        c["files_failing"] += failing > 0
    return c


def rule_table(policy=None) -> list:
    """[(Rule, effective severity)] for the rules the policy leaves on."""
    from .. import rules

    return rules.enabled(policy.severity if policy is not None else None)
