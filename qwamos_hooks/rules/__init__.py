"""Policy rules. Each rule has a stable ID, a severity, a fix hint and a
docstring that is its documentation (``qwamos-policy explain QW102``).

ID ranges: QW0xx policy selection, QW1xx network, QW2xx passthrough,
QW3xx domain and resources, QW5xx raw hypervisor arguments.

A check is a pure function ``check(domain, profile, ctx)`` that yields
``(line, device, message)``; it never does I/O.
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

SEVERITIES = ("error", "warning", "info")


class Rule(NamedTuple):
    id: str
    severity: str
    title: str
    hint: str
    check: Callable
    module: str

    @property
    def doc(self) -> str:
        import inspect  # only for `explain`: keep it off the hook's path

        return inspect.cleandoc(self.check.__doc__ or self.title)


class Finding(NamedTuple):
    rule: str
    severity: str
    message: str
    hint: str
    line: int
    device: str | None
    source: str
    waiver: object | None = None  # engine.Waiver that applies; a waived finding never fails

    @property
    def waived(self) -> bool:
        return self.waiver is not None

    def as_dict(self) -> dict:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
            "file": self.source,
            "line": self.line,
            "device": self.device,
            "waived": self.waived,
            "waiver": self.waiver.as_dict() if self.waiver is not None else None,
        }


class CheckContext(NamedTuple):
    live: bool = False  # XML from start/started/reconnect: taps and resolved bridges present
    selection_problem: str | None = None


REGISTRY: dict[str, Rule] = {}


def rule(id: str, severity: str, title: str, hint: str):
    assert severity in SEVERITIES
    def deco(fn):
        if id in REGISTRY:
            raise RuntimeError(f"duplicate rule id {id}")
        REGISTRY[id] = Rule(id, severity, title, hint, fn, fn.__module__.rsplit(".", 1)[-1])
        return fn
    return deco


def all_rules() -> list[Rule]:
    _load()
    return [REGISTRY[k] for k in sorted(REGISTRY)]


def get(rule_id: str) -> Rule | None:
    _load()
    return REGISTRY.get(rule_id.upper())


_loaded = False


def _load() -> None:
    global _loaded
    if not _loaded:
        from . import bridges, domaintype, interfaces, mac, passthrough, rawqemu, resources, selection, sidechannels, vhost  # noqa: F401
        _loaded = True


def enabled(severity_overrides: dict | None = None) -> list[tuple[Rule, str]]:
    """(rule, effective severity) for every rule a policy leaves on."""
    overrides = severity_overrides or {}
    out = []
    for r in all_rules():
        sev = overrides.get(r.id, r.severity)
        if sev != "off":
            out.append((r, sev))
    return out


def run(domain, profile, ctx: CheckContext, severity_overrides: dict | None = None) -> Iterator[Finding]:
    _load()
    overrides = severity_overrides or {}
    for rid in sorted(REGISTRY):
        r = REGISTRY[rid]
        sev = overrides.get(rid, r.severity)
        if sev == "off":
            continue
        for line, device, message in r.check(domain, profile, ctx):
            yield Finding(rid, sev, message, r.hint, line or domain.line, device, domain.source)
