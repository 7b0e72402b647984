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
            "remove": render.remove_commands([i["tap"] for i in st["interfaces"]])}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case):
    _golden(case, _render(*CASES[case]))


def test_deterministic_whatever_the_input_order():
    a = _render({"profile": "allowlist", "allow": ALLOW}, IFACES, {})
    b = _render({"profile": "allowlist", "allow": ALLOW}, list(reversed(IFACES)), {})
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_base_does_not_grow_with_vms():
    """Per-packet cost: the base chains dispatch through verdict maps, so their
    rules are the same whether 1 or 1000 VMs are registered."""
    g = render.global_config({})
    base = render.base_commands(g)
    one = render.vm_commands(render.vm_state(UUID, "a", {}, IFACES[:1]), g)
    # A VM adds only its own chains and map elements, never a rule in a base chain.
    base_chains = {c[0] for fam in render.BASE_CHAINS.values() for c in fam}
    assert not [c for c in one if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] in base_chains]
    assert base == render.base_commands(g)


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
    """nft --check evaluates each transaction against the kernel without committing.
    Each case is checked on top of the base it needs."""
    for case in sorted(CASES):
        r = _render(*CASES[case])
        cmds = r["base"] + r["apply"] + r["remove"]
        p = subprocess.run(["nft", "--check", "-j", "-f", "-"], input=json.dumps(render.transaction(cmds)),
                           capture_output=True, text=True)
        assert p.returncode == 0, f"{case}: {p.stderr}"
