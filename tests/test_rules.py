"""Each rule, against the built-in default and the strict example policy."""

import os

import pytest

from qwamos_hooks import domain, engine, rules
from qwamos_hooks.policy import load_policy
from qwamos_hooks.rules.interfaces import default_model

from .domains import domain_xml, nic

DEFAULT = load_policy(None)
STRICT = load_policy(os.path.join(os.path.dirname(__file__), "..", "policies", "strict.yaml"))


def ids(xml, policy=DEFAULT, live=False):
    d = domain.parse_bytes(xml.encode(), "t.xml")
    return sorted({f.rule for f in engine.evaluate(d, policy, live=live).findings})


def test_compliant_domain_has_no_findings():
    assert ids(domain_xml()) == []
    assert ids(domain_xml(nics=[nic("bridge", source="<source bridge='br0'/>")])) == []
    assert ids(domain_xml(nics=[nic("user", driver=None)])) == []  # vhost applies to bridge/network only
    assert ids(domain_xml(nics=[])) == []


@pytest.mark.parametrize("iface_type", ["direct", "ethernet", "vhostuser", "hostdev", "vdpa", "server", "client", "mcast", "udp", "null", "vds"])
def test_types_outside_the_default_are_denied(iface_type):
    assert "QW101" in ids(domain_xml(nics=[nic(iface_type, source="<source dev='eth0' mode='vepa'/>")]))


def test_unknown_type_denied_even_if_listed():
    assert "QW101" in ids(domain_xml(nics=[nic("tunnel9")]))
    assert "QW101" in ids(domain_xml(nics=[nic("BRIDGE")]))  # libvirt is case-sensitive here


@pytest.mark.parametrize("model, ok", [
    ("virtio", True), ("ViRtIo", True), ("virtio-transitional", True), ("virtio-non-transitional", True),
    ("e1000", False), ("rtl8139", False), ("idontexist", False), ("virtio-net-pci", False)])
def test_models(model, ok):
    assert ("QW102" not in ids(domain_xml(nics=[nic(model=model)]))) == ok


def test_missing_model_judged_by_arch_default():
    assert "QW102" in ids(domain_xml(nics=[nic(model=None)]))  # x86: rtl8139
    assert "QW102" not in ids(domain_xml(nics=[nic(model=None)], arch="aarch64", machine="virt"))
    assert default_model("s390x", "s390-ccw-virtio") == "virtio"
    assert default_model("ppc64", "pseries") == "spapr-vlan"
    assert default_model("x86_64", "q35") == "rtl8139"


@pytest.mark.parametrize("mac, expect", [
    (None, {"QW103"}),
    ("52:54:00:12:34", {"QW104"}),
    ("52-54-00-12-34-56", {"QW104"}),
    ("00:11:22:33:44:55", {"QW105"}),
    ("52:54:00:E5:48:5A", set()),  # upper case is the same MAC
    ("03:00:00:00:00:01", {"QW105", "QW106"}),
    ("02:00:00:00:00:01", set()),
])
def test_mac_rules(mac, expect):
    got = set(ids(domain_xml(nics=[nic(mac=mac)]))) & {"QW103", "QW104", "QW105", "QW106"}
    assert got == expect


def test_multicast_with_allowed_prefix(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("version: 1\nprofiles:\n  default:\n    interfaces:\n      mac: {allowed_prefixes: ['53:54']}\n")
    assert ids(domain_xml(nics=[nic(mac="53:54:00:00:00:01")]), load_policy(str(p))) == ["QW106"]


def test_duplicate_mac_case_insensitive():
    assert "QW107" in ids(domain_xml(nics=[nic(mac="52:54:00:aa:00:01"), nic(mac="52:54:00:AA:00:01")]))


def test_ambiguous_duplicate_children():
    assert "QW109" in ids(domain_xml(nics=[nic(extra="<model type='e1000'/>")]))
    assert "QW109" in ids(domain_xml(nics=[nic(extra="<mac address='52:54:00:00:00:09'/>")]))


def test_bridges():
    assert "QW110" in ids(domain_xml(nics=[nic("bridge", source="<source bridge='docker0'/>")]))
    assert "QW111" in ids(domain_xml(nics=[nic("bridge", source="")]))
    # network: the bridge= attribute counts only in live XML (libvirt ignores it before start)
    resolved_bad = domain_xml(nics=[nic(source="<source network='default' bridge='evil0'/>")])
    assert "QW110" not in ids(resolved_bad) and "QW110" in ids(resolved_bad, live=True)
    assert "QW113" in ids(domain_xml(nics=[nic()]), live=True)
    assert ids(domain_xml(nics=[nic(source="<source network='default' bridge='virbr0'/>")]), live=True) == []


def test_allowed_networks():
    assert "QW112" in ids(domain_xml(nics=[nic(source="<source network='other'/>")]), STRICT)


@pytest.mark.parametrize("driver, expect", [("vhost", False), ("qemu", True), (None, True)])
def test_vhost(driver, expect):
    for t in ("bridge", "network"):
        assert ("QW120" in ids(domain_xml(nics=[nic(t, driver=driver, source="<source bridge='br0'/>" if t == "bridge" else None)]))) == expect


def test_vhost_is_asked_of_virtio_nics_only(tmp_path):
    p = tmp_path / "legacy.yaml"
    p.write_text("version: 1\nprofiles:\n  default:\n    interfaces: {allowed_models: [virtio, e1000]}\n")
    legacy = load_policy(str(p))
    assert ids(domain_xml(nics=[nic(model="e1000", driver=None)]), legacy) == []
    assert ids(domain_xml(nics=[nic(model="virtio", driver=None)]), legacy) == ["QW120"]
    assert ids(domain_xml(nics=[nic(model=None, driver=None)], arch="aarch64", machine="virt"), legacy) == ["QW120"]


def test_backend_vhost_redirect():
    assert "QW120" in ids(domain_xml(nics=[nic(extra="<backend tap='/dev/net/tun' vhost='/dev/zero'/>")]))


PCI = "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x06' slot='0x12' function='0x5'/></source></hostdev>"


def test_passthrough():
    assert "QW201" in ids(domain_xml(devices_extra=PCI))
    assert {"QW101", "QW201"} <= set(ids(domain_xml(nics=[nic("hostdev", source="<source><address type='pci' bus='0x06' slot='0x12' function='0x5'/></source>")])))
    failover = PCI.replace("</hostdev>", "<teaming type='transient' persistent='ua-net0'/></hostdev>")
    assert "QW201" in ids(domain_xml(devices_extra=failover))
    usb = "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/><product id='0xbeef'/></source></hostdev>"
    assert "QW202" not in ids(domain_xml(devices_extra=usb)) and "QW202" in ids(domain_xml(devices_extra=usb, dtype="kvm"), STRICT)
    mdev = "<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='c2177883-f1bb-47f0-914d-32a22e3a8804'/></source></hostdev>"
    assert "QW203" in ids(domain_xml(devices_extra=mdev), STRICT)


def test_iommu_required_when_passthrough_allowed():
    xml = domain_xml(name="gpu-1", devices_extra=PCI, dtype="kvm")
    got = ids(xml, STRICT)
    assert "QW201" not in got and "QW210" in got
    assert "QW210" not in ids(xml.replace("<memballoon", "<iommu model='intel'/><memballoon"), STRICT)


def test_resources_in_strict_profile():
    got = ids(domain_xml(memory_mib=32768, vcpus=16, nics=[]), STRICT)
    assert {"QW301", "QW302", "QW303", "QW304"} <= set(got)
    ok = domain_xml(dtype="kvm", nics=[]).replace("<vcpu>", "<memtune><hard_limit unit='MiB'>128</hard_limit></memtune><vcpu>")
    assert ids(ok, STRICT) == []
    assert "QW300" in ids(domain_xml(dtype="vmware"))


def test_metadata_profile_not_permitted():
    xml = domain_xml(tail="<metadata><q:vm xmlns:q='urn:qwamos:hooks:1' profile='open'/></metadata>")
    assert ids(xml) == ["QW001"]


def test_severity_override_and_off(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("version: 1\nprofiles: {default: {}}\nseverity: {QW102: warning, QW120: 'off'}\n")
    d = domain.parse_bytes(domain_xml(nics=[nic(model="e1000", driver=None)]).encode(), "t")
    r = engine.evaluate(d, load_policy(str(p)))
    assert [(f.rule, f.severity) for f in r.findings] == [("QW102", "warning")] and r.errors == ()


def test_every_rule_is_documented():
    for r in rules.all_rules():
        assert r.id.startswith("QW") and len(r.id) == 5
        assert r.severity in rules.SEVERITIES
        assert len(r.doc) > 60 and r.hint and r.title
