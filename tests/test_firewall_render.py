"""The renderer is pure: state in, nft JSON out. Golden files pin the output;
regenerate them with QWAMOS_UPDATE_GOLDEN=1 after an intended change and review
the diff."""

import json
import os
import subprocess

import pytest

from qwamos_hooks.firewall import render

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "firewall")
UUID = "6f1c0a52-3b0e-4d7e-9a55-0c1e2d3f4a5b"
BR = {"bridge": "br0", "bridge_mac": "02:00:00:00:00:01"}
IFACES = [
    {"tap": "vnet3", "mac": "52:54:00:AB:CD:01", **BR, "ips": ["192.0.2.10/24", "2001:db8::10"]},
    {"tap": "vnet4", "mac": "52:54:00:ab:cd:02", **BR, "ips": []},
]
ALLOW = [{"dest": ["198.51.100.0/24", "2001:db8:1::/48"], "ports": [443, "8000-8080"], "proto": "tcp"},
         {"dest": "203.0.113.53", "ports": [53]}]

CASES = {
    "isolated": ({"profile": "isolated"}, IFACES, {}),
    "nat": ({"profile": "nat"}, IFACES, {}),
    "open-with-policy-addresses": ({"profile": "open", "addresses": ["192.0.2.99"]}, IFACES[1:], {}),
    "tor-bridged": ({"profile": "tor"}, IFACES, {}),
    "tor-routed-custom-ports": ({"profile": "tor"}, [{"tap": "tor0", "mac": "52:54:00:00:00:01", "ips": []}],
                                {"tor": {"trans_port": 9100, "dns_port": 9153, "address": "10.152.152.10",
                                         "address6": "fd00:152::10"}}),
    "allowlist": ({"profile": "allowlist", "allow": ALLOW}, IFACES[:1], {}),
}


def _golden(name, data):
    path = os.path.join(GOLDEN, name + ".json")
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if os.environ.get("QWAMOS_UPDATE_GOLDEN"):
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as fh:
            fh.write(text)
    with open(path) as fh:
        assert fh.read() == text, f"{name}: output differs from {path}"


def _render(section, ifaces, glob):
    g = render.global_config(glob)
    st = render.vm_state(UUID, "web-1", section, ifaces)
    return {"state": st, "base": render.base_commands(g), "apply": render.vm_commands(st, g),
            "remove": render.remove_commands(st["interfaces"])}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case):
    r = _render(*CASES[case])
    _golden(case, {k: r[k] for k in ("state", "apply", "remove")})


@pytest.mark.parametrize("name,glob", [("base-default", {}), ("base-tor-custom", CASES["tor-routed-custom-ports"][2])])
def test_golden_base(name, glob):
    _golden(name, render.base_commands(render.global_config(glob)))


def test_deterministic_whatever_the_input_order():
    a = _render({"profile": "allowlist", "allow": ALLOW}, IFACES, {})
    b = _render({"profile": "allowlist", "allow": ALLOW}, list(reversed(IFACES)), {})
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_a_vm_event_touches_set_elements_only():
    """Per-packet and per-event cost: the chains are shared by every VM, so a
    (non-allowlist) VM adds or removes set elements and nothing else."""
    g = render.global_config({})
    for prof in ("isolated", "nat", "tor"):
        st = render.vm_state(UUID, "a", {"profile": prof}, IFACES)
        for cmds in (render.vm_commands(st, g), render.remove_commands(st["interfaces"])):
            kinds = {(verb, kind) for c in cmds for verb, body in c.items() for kind in body}
            # add/flush/delete chain only for the (absent) allowlist chains, made and deleted idempotently
            assert kinds <= {("add", "element"), ("delete", "element"), ("add", "chain"),
                             ("flush", "chain"), ("delete", "chain")}, kinds
            chains = {c[v]["chain"]["name"] for c in cmds for v in c if "chain" in c[v]}
            assert chains <= {"vnet3-in", "vnet3-out", "vnet4-in", "vnet4-out"}, chains


def test_remove_undoes_apply_exactly():
    """Every element apply adds, remove deletes (same set, same value)."""
    g = render.global_config({})
    for case in sorted(CASES):
        r = _render(*CASES[case])
        added = {(c["add"]["element"]["family"], c["add"]["element"]["name"], json.dumps(c["add"]["element"]["elem"]))
                 for c in r["apply"] if "element" in c.get("add", {})}
        deleted_keys = {(c["delete"]["element"]["family"], c["delete"]["element"]["name"],
                         json.dumps(c["delete"]["element"]["elem"][0]))
                        for c in r["remove"] if "element" in c.get("delete", {})}
        for fam, name, elem in added:
            e = json.loads(elem)[0]
            if name == "guard" and not str(e).startswith(("vnet", "macvtap")):
                continue  # custom tap names stay on the kill-switch list on purpose
            key = e[0] if isinstance(e, list) else e
            assert (fam, name, json.dumps(key)) in deleted_keys, (case, fam, name, e)
    assert g


def test_every_base_chain_accepts():
    for c in render.base_commands(render.global_config({})):
        ch = c.get("add", {}).get("chain")
        if ch and "hook" in ch:
            assert ch["policy"] == "accept", ch


def test_open_is_nat_and_profile_defaults_to_nat():
    assert render.profile_name({"profile": "open"}) == "nat"
    assert render.profile_name({}) == "nat"


@pytest.mark.parametrize("section,ips", [({"profile": "bogus"}, []), ({"profile": "nat"}, ["not-an-ip"]),
                                         ({"profile": "allowlist", "allow": [{"dest": "300.1.1.1/8"}]}, [])])
def test_bad_input_is_refused(section, ips):
    with pytest.raises(ValueError):
        render.vm_state(UUID, "x", section, [{"tap": "vnet0", "mac": "52:54:00:00:00:01", "ips": ips}])


def test_goldens_are_accepted_by_nftables():
    """nft --check evaluates each transaction against the kernel without
    committing, in a network namespace of its own so the host's ruleset plays no part."""
    ns = f"qwfwchk{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for case in sorted(CASES):
            r = _render(*CASES[case])
            for cmds in (r["base"] + r["apply"], r["base"] + r["apply"] + r["remove"], r["base"] + r["remove"]):
                p = subprocess.run(["ip", "netns", "exec", ns, "nft", "--check", "-j", "-f", "-"],
                                   input=json.dumps(render.transaction(cmds)), capture_output=True, text=True)
                assert p.returncode == 0, f"{case}: {p.stderr}"
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def test_no_anonymous_sets_in_rules():
    """libnftables fetches every set's elements before adding an element: an
    anonymous set per rule would make each VM event slower with every VM."""
    for case in sorted(CASES):
        r = _render(*CASES[case])
        text = json.dumps([c for c in r["base"] + r["apply"] if "rule" in c.get("add", {})])
        assert '{"set": [' not in text, case


def test_hook_import_path_stays_lean():
    """The stage module is imported at every event; nftables and pyroute2 only when used."""
    code = ("import sys; import qwamos_hooks.firewall.stage; "
            "bad = [m for m in ('nftables', 'pyroute2', 'jsonschema', 'libvirt') if m in sys.modules]; "
            "assert not bad, bad")
    p = subprocess.run(["/opt/qwamos/venv/bin/python", "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert p.returncode == 0, p.stderr


GOOD_POLICY = """version: 1
firewall:
  tor: {trans_port: 9040, dns_port: 53, address: 10.152.152.10, address6: "fd00::10"}
  marks: {tor: 0x1000, reply: 0x2000}
profiles:
  default: {firewall: {profile: nat}}
  web:
    firewall:
      profile: allowlist
      addresses: [192.0.2.10, "2001:db8::10"]
      allow: [{dest: 198.51.100.0/24, ports: [443, "8000-8080"], proto: tcp}, {dest: [203.0.113.53]}]
  anon: {firewall: {profile: tor}}
"""


@pytest.mark.parametrize("bad", [
    "profiles: {default: {firewall: {profile: wide-open}}}",
    "profiles: {default: {firewall: {profile: nat, ports: [1]}}}",
    "profiles: {default: {firewall: {profile: allowlist, allow: [{ports: [80]}]}}}",
    "profiles: {default: {firewall: {allow: [{dest: 10.0.0.0/8, ports: [70000]}]}}}",
    "firewall: {tor: {trans_port: 0}}\nprofiles: {default: {}}",
    "firewall: {tor: {socks: 9050}}\nprofiles: {default: {}}",
])
def test_policy_schema_refuses_bad_firewall_sections(tmp_path, bad):
    from qwamos_hooks.errors import PolicyError
    from qwamos_hooks.policy import load_policy

    f = tmp_path / "p.yaml"
    f.write_text("version: 1\n" + bad + "\n")
    with pytest.raises(PolicyError):
        load_policy(str(f))


def test_policy_schema_accepts_firewall_sections_and_renders_them(tmp_path):
    from qwamos_hooks.policy import load_policy

    f = tmp_path / "p.yaml"
    f.write_text(GOOD_POLICY)
    p = load_policy(str(f))
    g = render.global_config(p.section("firewall"))
    assert g["tor"]["dns_port"] == 53 and g["marks"]["tor"] == 0x1000
    st = render.vm_state(UUID, "web", p.profiles["web"].section("firewall"), IFACES[1:])
    assert st["profile"] == "allowlist" and st["interfaces"][0]["ips4"] == ["192.0.2.10"]
    assert render.vm_commands(st, g)
    assert load_policy(None).profiles["default"].section("firewall") == {"profile": "nat"}
