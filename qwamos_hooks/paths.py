"""Where things live on the host; every location can be moved by environment."""

import os
from typing import NamedTuple

DEFAULT_POLICY = "/etc/qwamos/policy.yaml"
DEFAULT_STATE_DIR = "/run/qwamos"
DEFAULT_LIB_DIR = "/var/lib/qwamos"
DEFAULT_LOG_FILE = "/var/log/qwamos/hook.log"


class Paths(NamedTuple):
    policy: str
    state_dir: str  # volatile (tmpfs): per-VM runtime state, delivered keys
    lib_dir: str  # persistent: audit log, sealed keys, policy cache
    log_file: str

    @classmethod
    def from_env(cls, policy: str | None = None, env=os.environ) -> "Paths":
        return cls(
            policy=policy or env.get("QWAMOS_POLICY") or DEFAULT_POLICY,
            state_dir=env.get("QWAMOS_STATE_DIR") or DEFAULT_STATE_DIR,
            lib_dir=env.get("QWAMOS_LIB_DIR") or DEFAULT_LIB_DIR,
            log_file=env.get("QWAMOS_LOG_FILE") or DEFAULT_LOG_FILE,
        )

    @property
    def audit_log(self) -> str:
        return os.path.join(self.lib_dir, "audit.jsonl")

    @property
    def cache_dir(self) -> str:
        return os.path.join(self.lib_dir, "cache")
