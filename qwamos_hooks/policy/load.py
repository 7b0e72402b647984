"""Read a policy file: safe YAML, JSON Schema validation, inheritance.

Validation (jsonschema, ~0.2 s to import) runs once per distinct policy file:
the validated document is cached under the lib dir, keyed by the BLAKE3 hash of
the file's bytes and of this package's schema, so a hook at VM start only
hashes the file and reads the cache.
"""

from __future__ import annotations

import os

from blake3 import blake3

from .. import __version__, cache
from ..errors import PolicyError
from .model import Policy

_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
DEFAULT_POLICY_FILE = os.path.join(_DATA, "default.yaml")
SCHEMA_FILE = os.path.join(_DATA, "policy.schema.json")
MAX_POLICY_BYTES = 4 * 1024 * 1024
BUILTIN = "built-in default"


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(MAX_POLICY_BYTES + 1)
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"{path}: policy file is larger than 4 MiB")
    return data


def _schema_tag() -> str:
    # Bound to the code and schema that validated the cached copy.
    st = os.stat(SCHEMA_FILE)
    return f"{__version__}:{st.st_size}:{st.st_mtime_ns}"


def _cache_path(cache_dir: str, digest: str) -> str:
    tag = blake3((_schema_tag() + digest).encode()).hexdigest()[:32]
    return os.path.join(cache_dir, f"policy-{tag}.marshal")


def _yaml_load(data: bytes, source: str):
    import yaml

    Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class StrictLoader(Base):  # type: ignore[misc, valid-type]
        """Safe loader that refuses duplicate keys: the second copy of a key would
        otherwise silently win, and a reviewer reading the first would be misled."""

    def construct_mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise PolicyError(
                    f"{source}:{key_node.start_mark.line + 1}: duplicate key '{key}' "
                    f"(first at line {seen[key]})"
                )
            try:
                seen[key] = key_node.start_mark.line + 1
            except TypeError:
                raise PolicyError(f"{source}:{key_node.start_mark.line + 1}: unhashable mapping key") from None
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    # Dates stay strings (waiver 'expires: 2027-01-01'): the schema checks their
    # form and the validated document must stay marshal-able for the cache.
    StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))
    try:
        return yaml.load(data, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise PolicyError(f"{source}{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: invalid YAML: {exc}") from None


def _line_of(data: bytes, path: list) -> int | None:
    """Line of the YAML node at a schema error's path (for the error message)."""
    import yaml

    try:
        node = yaml.compose(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for key in path:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == str(key)), None)
            if nxt is None:
                break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        line = node.start_mark.line + 1
    return line


def validate_document(doc, data: bytes, source: str) -> dict:
    """Validate a parsed policy against the schema; one line naming path and line."""
    import json

    import jsonschema

    if not isinstance(doc, dict):
        raise PolicyError(f"{source}: a policy is a YAML mapping with 'version' and 'profiles'")
    with open(SCHEMA_FILE, encoding="utf-8") as fh:
        schema = json.load(fh)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        path = list(err.absolute_path)
        where = ".".join(str(p) for p in path) or "(top level)"
        line = _line_of(data, path)
        loc = f"{source}:{line}" if line else source
        msg = err.message if len(err.message) < 200 else err.message[:200] + "..."
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise PolicyError(f"{loc}: {where}: {msg}{more}")
    return doc


def _load_raw(path: str, source: str, cache_dir: str | None) -> tuple[dict, str]:
    data = _read(path)
    digest = blake3(data).hexdigest()
    cpath = _cache_path(cache_dir, digest) if cache_dir else None
    if cpath:
        doc = cache.read(cpath)
        if isinstance(doc, dict):
            return doc, digest
    doc = validate_document(_yaml_load(data, source), data, source)
    if cpath:
        cache.write(cpath, doc)
    return doc, digest


def load_default(cache_dir: str | None = None) -> Policy:
    raw, digest = _load_raw(DEFAULT_POLICY_FILE, BUILTIN, cache_dir)
    return Policy.build(raw, baseline=raw["profiles"]["default"], source=BUILTIN, digest=digest)


def load_policy(path: str | None, *, cache_dir: str | None = None, missing_ok: bool = False) -> Policy:
    """Load a policy file. With missing_ok, an absent file means the built-in
    default; a file that exists but cannot be read or validated is always an error."""
    if path is None:
        return load_default(cache_dir)
    try:
        raw, digest = _load_raw(path, path, cache_dir)
    except FileNotFoundError:
        if missing_ok:
            return load_default(cache_dir)
        raise PolicyError(f"{path}: policy file not found") from None
    except IsADirectoryError:
        raise PolicyError(f"{path}: is a directory, expected a policy file") from None
    except PermissionError:
        raise PolicyError(f"{path}: permission denied reading the policy") from None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy: {exc.strerror or exc}") from None
    # The built-in default profile is every profile's starting point (strict).
    base_raw, _ = _load_raw(DEFAULT_POLICY_FILE, BUILTIN, cache_dir)
    return Policy.build(raw, baseline=base_raw["profiles"]["default"], source=path, digest=digest)
