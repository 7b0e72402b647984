"""The policy engine both front ends share: domain x policy -> findings. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from . import rules
from .domain import Domain
from .policy.model import Policy, Selection


@dataclass(frozen=True)
class Result:
    domain: Domain
    selection: Selection
    findings: tuple  # of rules.Finding, sorted by line

    @property
    def profile(self):
        return self.selection.profile

    @property
    def errors(self) -> tuple:
        return tuple(f for f in self.findings if f.severity == "error")


def evaluate(domain: Domain, policy: Policy, *, live: bool = False) -> Result:
    md = domain.metadata
    selection = policy.select(domain.name, domain.uuid, md.profile if md else None)
    ctx = rules.CheckContext(live=live, selection_problem=selection.problem)
    findings = sorted(
        rules.run(domain, selection.profile, ctx, policy.severity),
        key=lambda f: (f.line, f.rule),
    )
    return Result(domain, selection, tuple(findings))
