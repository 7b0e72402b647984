"""What a stage action receives. Actions live in their own modules (firewall,
keys, ...) and are imported by the hook only when its stage table names them,
so a VM start pays only for what that stage does."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from .domain import Domain
from .paths import Paths


class StageContext(NamedTuple):
    vm: str  # domain name as libvirt passed it (argv[1])
    op: str  # prepare, start, started, stopped, release, migrate, restore, reconnect
    subop: str  # begin | end
    domain: Domain  # parsed stdin XML
    profile: Any  # qwamos_hooks.policy.model.Profile resolved for this domain
    policy: Any  # qwamos_hooks.policy.model.Policy
    paths: Paths
    can_block: bool
    audit: Callable[..., None]  # audit(event: str, **fields): one tamper-evident record
    log: Callable[[str], None]  # log(line): hook log / syslog

    @property
    def uuid(self) -> str:
        """Domain UUID, the key of every per-VM state file."""
        return self.domain.uuid or ""
