"""Policy loading, validation errors, inheritance, selection, cache."""

import os
import textwrap

import pytest

from qwamos_hooks.errors import PolicyError
from qwamos_hooks.policy import load_policy
from qwamos_hooks.policy import load as loadmod


def write(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_default_policy_is_the_documented_baseline():
    p = load_policy(None)
    prof = p.profiles["default"]
    assert p.mode == "enforce" and p.source == "built-in default"
    assert prof.get("interfaces", "allowed_types") == ["bridge", "network", "user"]
    assert prof.get("interfaces", "allowed_bridges") == ["virbr0", "vmbr0", "br0"]
    assert prof.get("interfaces", "mac", "allowed_prefixes") == ["52:54:00", "02:00:00"]
    assert prof.get("passthrough", "pci") == "deny" and prof.get("interfaces", "require_vhost") is True


def test_missing_file_means_default_only_when_allowed(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    assert load_policy(missing, missing_ok=True).source == "built-in default"
    with pytest.raises(PolicyError, match="not found"):
        load_policy(missing)


@pytest.mark.parametrize("text, expect", [
    ("version: 1\nprofiles:\n  default:\n    interfaces:\n      allowed_typos: [bridge]\n",
     ":5: profiles.default.interfaces: Additional properties are not allowed"),
    ("version: 1\nprofiles:\n  default:\n    passthrough:\n      pci: maybe\n", ":5: profiles.default.passthrough.pci:"),
    ("version: 2\nprofiles: {default: {}}\n", ":1: version:"),
    ("version: 1\nprofiles:\n  default: {}\n  default: {}\n", ":4: duplicate key 'default' (first at line 3)"),
    ("version: 1\nprofiles: [\n", "invalid YAML"),
    ("- just\n- a list\n", "a policy is a YAML mapping"),
    ("version: 1\nprofiles:\n  a: {inherits: b}\n  b: {inherits: a}\ndefault_profile: a\n", "inheritance cycle"),
    ("version: 1\nprofiles:\n  a: {inherits: zz}\ndefault_profile: a\n", "unknown profile 'zz'"),
    ("version: 1\nprofiles:\n  a: {}\n", "default_profile: add a profile named 'default' under profiles"),
    ("version: 1\nprofiles:\n  a: {}\ndefault_profile: b\n", "default_profile: no profile named 'b'"),
    ("version: 1\nprofiles: {default: {}}\nassign:\n  - name: 'x*'\n    profile: nope\n", "assign[0]: unknown profile 'nope'"),
    ("version: 1\nprofiles: {default: {}}\nassign:\n  - name: 'x*'\n", "assign.0"),
    ("!!python/object/apply:os.system ['true']\n", "invalid YAML"),
])
def test_broken_policies_give_one_line_with_path_and_line(tmp_path, text, expect):
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    msg = str(exc.value)
    assert expect in msg, msg
    assert "\n" not in msg and msg.startswith(path)


def test_unreadable_policy(tmp_path):
    with pytest.raises(PolicyError, match="is a directory"):
        load_policy(str(tmp_path))


def test_inheritance_and_strict_baseline(tmp_path):
    path = write(tmp_path, """
        version: 1
        profiles:
          default:
            interfaces: {allowed_bridges: [br-lab]}
          lab:
            inherits: default
            interfaces:
              mac: {allowed_prefixes: ["02:aa"]}
          bare: {}
        """)
    p = load_policy(path)
    lab = p.profiles["lab"]
    assert lab.get("interfaces", "allowed_bridges") == ["br-lab"]  # inherited
    assert lab.get("interfaces", "mac", "allowed_prefixes") == ["02:aa"]  # overridden
    assert lab.get("interfaces", "mac", "unique") is True  # from the built-in baseline
    assert p.profiles["bare"].get("passthrough", "pci") == "deny"  # unspecified means strict


def test_selection_by_name_uuid_and_permitted_metadata(tmp_path):
    path = write(tmp_path, """
        version: 1
        profiles: {default: {}, tor: {}, isolated: {}, open: {}}
        assign:
          - name: "tor-*"
            profile: tor
          - uuid: "AAAAAAAA-*"
            profile: isolated
          - metadata: [isolated, tor]
        """)
    p = load_policy(path)
    assert p.select("tor-1", None, None).profile.name == "tor"
    assert p.select("x", "aaaaaaaa-0000", None).profile.name == "isolated"
    assert p.select("x", "b", "isolated").profile.name == "isolated"
    sel = p.select("x", "b", "open")  # not permitted for metadata selection
    assert sel.profile.name == "default" and "does not let metadata select" in sel.problem


def test_cache_skips_revalidation_and_follows_edits(tmp_path):
    cache = str(tmp_path / "cache")
    path = write(tmp_path, "version: 1\nmode: audit\nprofiles: {default: {}}\n")
    assert load_policy(path, cache_dir=cache).mode == "audit"
    files = [f for f in os.listdir(cache) if f.startswith("policy-")]
    assert len(files) == 2  # the policy and the built-in baseline
    write(tmp_path, "version: 1\nmode: enforce\nprofiles: {default: {}}\n")
    assert load_policy(path, cache_dir=cache).mode == "enforce"  # new digest, new entry
    write(tmp_path, "version: 1\nmode: bogus\nprofiles: {default: {}}\n")
    with pytest.raises(PolicyError):  # an invalid edit is never served from cache
        load_policy(path, cache_dir=cache)


def test_example_policies_validate():
    root = os.path.join(os.path.dirname(__file__), "..", "policies")
    names = sorted(f for f in os.listdir(root) if f.endswith(".yaml"))
    assert "strict.yaml" in names and "default.yaml" in names
    for n in names:
        load_policy(os.path.join(root, n))


def test_schema_file_is_the_shipped_one():
    top = os.path.join(os.path.dirname(__file__), "..", "schemas", "policy.schema.json")
    assert open(top, "rb").read() == open(loadmod.SCHEMA_FILE, "rb").read()
