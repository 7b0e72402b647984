"""Resolved, read-only policy objects. Pure: built from an already-validated dict."""

from __future__ import annotations

import fnmatch
from typing import Any, NamedTuple

from ..errors import PolicyError


def _merge(base: dict, over: dict) -> dict:
    """Deep merge: mappings merge key by key; lists and scalars replace. Values
    are shared, not copied: a resolved policy is never mutated."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class Profile(NamedTuple):
    name: str
    data: dict

    def get(self, *path: str, default: Any = None) -> Any:
        node: Any = self.data
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node

    def section(self, name: str) -> dict:
        """A whole section (firewall, keys, ...) as a plain dict, possibly empty."""
        value = self.data.get(name)
        return value if isinstance(value, dict) else {}


class Selection(NamedTuple):
    profile: Profile
    how: str  # "assign[3] name", "metadata", "default"
    problem: str | None = None  # a metadata request the policy does not permit


class Policy(NamedTuple):
    source: str  # file path, or "built-in default"
    digest: str  # BLAKE3 of the policy file bytes
    mode: str
    profiles: dict  # name -> Profile
    assign: tuple
    default_profile: str
    severity: dict  # rule id -> error | warning | info | off
    raw: dict  # the validated document, for sections other modules own

    def section(self, name: str) -> dict:
        value = self.raw.get(name)
        return value if isinstance(value, dict) else {}

    @property
    def waivers(self) -> list:
        return list(self.raw.get("waivers") or [])

    @classmethod
    def build(cls, raw: dict, *, baseline: dict, source: str, digest: str) -> "Policy":
        """Resolve inheritance. Every profile starts from the built-in baseline, so a
        setting a policy leaves out is strict, never permissive."""
        profiles_raw = raw.get("profiles") or {}
        resolved: dict[str, dict] = {}

        def resolve(name: str, chain: tuple[str, ...]) -> dict:
            if name in resolved:
                return resolved[name]
            if name in chain:
                raise PolicyError(
                    f"{source}: profiles.{name}: inheritance cycle: {' -> '.join(chain + (name,))}"
                )
            if name not in profiles_raw:
                where = f"profiles.{chain[-1]}.inherits" if chain else "default_profile"
                raise PolicyError(f"{source}: {where}: unknown profile '{name}'")
            body = dict(profiles_raw[name] or {})
            parent = body.pop("inherits", None)
            base = resolve(parent, chain + (name,)) if parent else baseline
            resolved[name] = _merge(base, body)
            return resolved[name]

        for name in profiles_raw:
            resolve(name, ())
        default_profile = raw.get("default_profile", "default")
        if default_profile not in resolved:
            hint = ("add a profile named 'default' under profiles, or set default_profile"
                    if "default_profile" not in raw else f"no profile named '{default_profile}' under profiles")
            raise PolicyError(f"{source}: default_profile: {hint}")
        assign = tuple(raw.get("assign") or ())
        for i, entry in enumerate(assign):
            for p in ([entry["profile"]] if "profile" in entry else []) + list(entry.get("metadata", [])):
                if p not in resolved:
                    raise PolicyError(f"{source}: assign[{i}]: unknown profile '{p}'")
        return cls(
            source=source,
            digest=digest,
            mode=raw.get("mode", "enforce"),
            profiles={n: Profile(n, d) for n, d in resolved.items()},
            assign=assign,
            default_profile=default_profile,
            severity=dict(raw.get("severity") or {}),
            raw=raw,
        )

    def select(self, name: str | None, uuid: str | None, metadata_profile: str | None) -> Selection:
        """First matching assign entry wins. A profile named in the domain's own
        metadata is honoured only where an assign entry lists it: the XML's author
        must not be able to pick a weaker profile than the policy allows."""
        name = name or ""
        uuid = (uuid or "").lower()
        for i, entry in enumerate(self.assign):
            if "name" in entry and _globs(entry["name"], name):
                return Selection(self.profiles[entry["profile"]], f"assign[{i}] name")
            if "uuid" in entry and _globs(entry["uuid"], uuid, lower=True):
                return Selection(self.profiles[entry["profile"]], f"assign[{i}] uuid")
            if "metadata" in entry and metadata_profile in entry["metadata"]:
                return Selection(self.profiles[metadata_profile], f"assign[{i}] metadata")
        default = self.profiles[self.default_profile]
        if metadata_profile is not None and metadata_profile != self.default_profile:
            return Selection(
                default,
                "default",
                f"domain metadata asks for profile '{metadata_profile}', which the policy does not let metadata select",
            )
        return Selection(default, "default")


def _globs(pattern, value: str, lower: bool = False) -> bool:
    pats = [pattern] if isinstance(pattern, str) else pattern
    for p in pats:
        if lower:
            p = p.lower()
        if fnmatch.fnmatchcase(value, p):
            return True
    return False
