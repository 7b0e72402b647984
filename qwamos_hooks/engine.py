"""The policy engine both front ends share: domain x policy -> findings. Pure.

Waivers are applied here, so the hook and the linter agree on what blocks:
a waived finding stays in ``findings`` (reports count it separately) but is
never in ``errors``.
"""

from __future__ import annotations

import fnmatch
from typing import NamedTuple

from . import rules
from .domain import Domain
from .policy.model import Policy, Selection


class Waiver(NamedTuple):
    """A waiver that applies to a finding."""

    rule: str
    reason: str
    origin: str  # "policy" (waivers[index]) or "metadata" (<qwamos:waive> at line)
    expires: str | None = None
    index: int | None = None
    line: int | None = None

    @property
    def where(self) -> str:
        return f"policy waivers[{self.index}]" if self.origin == "policy" else f"domain metadata line {self.line}"

    def as_dict(self) -> dict:
        return {"origin": self.origin, "reason": self.reason, "expires": self.expires,
                "policy_index": self.index, "line": self.line}


class WaiverNote(NamedTuple):
    """A waiver that does not apply, and why (reported in every format)."""

    kind: str  # expired | no-reason | not-allowed | bad-expiry | unknown-rule
    rule: str
    origin: str
    line: int  # where in the domain XML it points (the waiver element, or the finding)
    message: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "rule": self.rule, "origin": self.origin,
                "line": self.line, "message": self.message}


class Result(NamedTuple):
    domain: Domain | None  # None once detached for transport between processes
    selection: Selection
    findings: tuple  # of rules.Finding, sorted by line; includes waived ones
    notes: tuple = ()  # of WaiverNote

    @property
    def profile(self):
        return self.selection.profile

    @property
    def active(self) -> tuple:
        return tuple(f for f in self.findings if f.waiver is None)

    @property
    def waived(self) -> tuple:
        return tuple(f for f in self.findings if f.waiver is not None)

    @property
    def errors(self) -> tuple:
        """Findings that block: severity error and not waived."""
        return tuple(f for f in self.findings if f.severity == "error" and f.waiver is None)

    def detach(self) -> "Result":
        return self._replace(domain=None)


def today_utc() -> datetime.date:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).date()


def evaluate(domain: Domain, policy: Policy, *, live: bool = False,
             today: datetime.date | None = None) -> Result:
    md = domain.metadata
    selection = policy.select(domain.name, domain.uuid, md.profile if md else None)
    ctx = rules.CheckContext(live=live, selection_problem=selection.problem)
    findings = sorted(
        rules.run(domain, selection.profile, ctx, policy.severity),
        key=lambda f: (f.line, f.rule),
    )
    if not policy.waivers and not (md and md.waivers):
        return Result(domain, selection, tuple(findings))
    findings, notes = _apply_waivers(domain, policy, findings, today or today_utc())
    return Result(domain, selection, tuple(findings), tuple(notes))


def _expiry(value) -> datetime.date | None:
    """ISO date, or raises ValueError."""
    import datetime

    return datetime.date.fromisoformat(str(value)) if value not in (None, "") else None


def _globs(pattern, value: str) -> bool:
    pats = [pattern] if isinstance(pattern, str) else list(pattern or [])
    return any(fnmatch.fnmatchcase(value, p) for p in pats)


def _apply_waivers(domain: Domain, policy: Policy, findings: list, today: datetime.date):
    """Policy waivers come first (the administrator's word), then the domain's
    own metadata waivers, which only count for rules the policy lists under
    ``allow_metadata_waivers``: otherwise whoever writes the XML could waive
    the rules meant to constrain them."""
    candidates: list[tuple[Waiver, str | None]] = []  # (waiver, why it does not apply)
    notes: list[WaiverNote] = []
    name = domain.name or ""
    for i, w in enumerate(policy.waivers):
        if not _globs(w.get("domain", "*"), name):
            continue
        rule = str(w.get("rule", "")).upper()
        waiver = Waiver(rule, str(w.get("reason") or ""), "policy", _str(w.get("expires")), index=i)
        candidates.append((waiver, _why_not(waiver, today)))

    md = domain.metadata
    allowed = {str(r).upper() for r in (policy.raw.get("allow_metadata_waivers") or [])}
    for mw in (md.waivers if md else ()):
        rule = (mw.rule or "").strip().upper()
        waiver = Waiver(rule, (mw.reason or "").strip(), "metadata", mw.expires, line=mw.line)
        line = mw.line or domain.line
        if rules.get(rule) is None:
            notes.append(WaiverNote("unknown-rule", rule, "metadata", line,
                                    f"metadata waiver names unknown rule '{mw.rule}'; ignored"))
            continue
        if not waiver.reason:
            notes.append(WaiverNote("no-reason", rule, "metadata", line,
                                    f"metadata waiver for {rule} has no reason; ignored (a reason is required)"))
            continue
        if rule not in allowed:
            notes.append(WaiverNote("not-allowed", rule, "metadata", line,
                                    f"metadata waiver for {rule} ignored: the policy does not let domain "
                                    f"metadata waive {rule} (allow_metadata_waivers)"))
            continue
        why = _why_not(waiver, today)
        if why:
            # Always said: the stale element sits in this very file.
            notes.append(WaiverNote(why[0], rule, "metadata", line, why[1]))
            continue
        candidates.append((waiver, None))

    out = []
    noted: set = set()
    for f in findings:
        for waiver, why in candidates:
            if waiver.rule != f.rule:
                continue
            if why is None:
                f = f._replace(waiver=waiver)
                break
            # A policy waiver that would have matched: say so once per waiver.
            if (waiver.index, f.rule) not in noted:
                noted.add((waiver.index, f.rule))
                notes.append(WaiverNote(why[0], f.rule, "policy", f.line, why[1]))
        out.append(f)
    notes.sort(key=lambda n: (n.line, n.rule, n.kind))
    return out, notes


def _str(value) -> str | None:
    return None if value is None else str(value)


def _why_not(w: Waiver, today: datetime.date) -> tuple[str, str] | None:
    """(kind, message) when a waiver that names a finding's rule does not apply."""
    try:
        exp = _expiry(w.expires)
    except ValueError:
        return ("bad-expiry", f"waiver for {w.rule} ({w.where}) has an invalid expiry "
                              f"'{w.expires}' (want YYYY-MM-DD); ignored")
    if exp is not None and today >= exp:
        return ("expired", f"waiver for {w.rule} ({w.where}) expired on {exp.isoformat()}; "
                           f"the finding applies again")
    if not w.reason:
        return ("no-reason", f"waiver for {w.rule} ({w.where}) has no reason; ignored")
    return None
