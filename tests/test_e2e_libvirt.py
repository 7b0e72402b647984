"""End to end on the real libvirtd with TCG QEMU: `virsh start` through the
installed hook under the built-in default policy."""

import os
import subprocess
import uuid as uuidlib

import pytest

from . import e2e
from .domains import domain_xml, nic

QNS = "http://libvirt.org/schemas/domain/qemu/1.0"


@pytest.fixture(scope="module", autouse=True)
def host():
    e2e.require_host()
    swap = e2e.PolicySwap()
    swap.remove()  # absent policy file: the built-in default applies
    yield swap
    swap.restore()


@pytest.fixture
def vm(request):
    names = []

    def define(xml_kwargs, name=None):
        name = name or f"{e2e.PREFIX}{request.node.name[:40].replace('[', '-').replace(']', '').replace('_', '-')}-{len(names)}"
        e2e.define(name, domain_xml(name=name, uuid=str(uuidlib.uuid4()), **xml_kwargs))
        names.append(name)
        return name

    yield define
    for n in names:
        e2e.cleanup(n)


def taps():
    return {n for n in os.listdir("/sys/class/net") if n.startswith(("vnet", "macvtap"))}


def test_compliant_vm_starts_and_stops(vm):
    name = vm({})
    p = e2e.virsh("start", name)
    assert p.returncode == 0, p.stderr
    assert e2e.state(name) == "running" and e2e.qemu_running(name)
    assert e2e.virsh("destroy", name).returncode == 0
    assert e2e.state(name) == "shut off"


PCI = "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x06' slot='0x12' function='0x5'/></source></hostdev>"

VIOLATIONS = {
    "QW101": dict(nics=[nic("ethernet", source="")]),
    "QW102": dict(nics=[nic(model="e1000")]),
    "QW105": dict(nics=[nic(mac="00:11:22:33:44:55")]),
    "QW107": dict(nics=[nic(), nic(mac="52:54:00:AA:00:01")]),
    "QW110": dict(nics=[nic("bridge", source="<source bridge='qwbad0'/>")]),
    "QW120": dict(nics=[nic(driver=None)]),
    "QW201": dict(devices_extra=PCI),
    "QW501": dict(root_attrs=f" xmlns:qemu='{QNS}'",
                  tail="<qemu:commandline><qemu:arg value='-netdev'/><qemu:arg value='user,id=leak0'/>"
                       "<qemu:arg value='-device'/><qemu:arg value='e1000,netdev=leak0'/></qemu:commandline>"),
    "QW503": dict(root_attrs=f" xmlns:qemu='{QNS}'",
                  tail="<qemu:override><qemu:device alias='net0'><qemu:frontend>"
                       "<qemu:property name='mac' type='string' value='00:11:22:33:44:55'/></qemu:frontend></qemu:device></qemu:override>"),
    "QW001": dict(tail="<metadata><q:vm xmlns:q='urn:qwamos:hooks:1' profile='wideopen'/></metadata>"),
}


@pytest.mark.parametrize("rule", sorted(VIOLATIONS))
def test_each_default_rule_blocks_virsh_start(vm, rule):
    before = taps()
    name = vm(VIOLATIONS[rule])
    p = e2e.virsh("start", name)
    assert p.returncode != 0, f"{rule}: VM started"
    assert "Hook script execution failed" in p.stderr and rule in p.stderr, p.stderr
    assert f"qwamos: VM '{name}' refused by policy" in p.stderr
    # A blocked start leaves nothing behind.
    assert e2e.state(name) == "shut off"
    assert not e2e.qemu_running(name)
    assert taps() <= before


@pytest.fixture
def isolated_network():
    """A libvirt network whose bridge is not on the default allow-list."""
    name, br = "qwtest-net", "qwtbr0"
    xml = f"<network><name>{name}</name><bridge name='{br}'/><forward mode='nat'/><ip address='192.168.231.1' netmask='255.255.255.0'/></network>"
    e2e.virsh("net-destroy", name)
    e2e.virsh("net-undefine", name)
    path = "/tmp/qwtest-net.xml"
    open(path, "w").write(xml)
    e2e.virsh("net-define", path, check=True)
    os.unlink(path)
    e2e.virsh("net-start", name, check=True)
    yield name
    e2e.virsh("net-destroy", name)
    e2e.virsh("net-undefine", name)


def test_network_resolving_to_a_foreign_bridge_is_blocked_at_start(vm, isolated_network):
    name = vm(dict(nics=[nic(source=f"<source network='{isolated_network}'/>")]))
    before = taps()
    p = e2e.virsh("start", name)
    assert p.returncode != 0
    assert "QW110" in p.stderr and "qwtbr0" in p.stderr and "start begin" in p.stderr
    assert e2e.state(name) == "shut off" and not e2e.qemu_running(name)
    assert e2e.wait_for(lambda: taps() <= before, 5)


def test_audit_mode_lets_a_noncompliant_vm_run(vm, host):
    host.write("version: 1\nmode: audit\nprofiles: {default: {}}\n")
    try:
        name = vm(VIOLATIONS["QW102"])
        p = e2e.virsh("start", name)
        assert p.returncode == 0, p.stderr
        assert e2e.state(name) == "running"
        log = open("/var/log/qwamos/hook.log").read()
        assert f"{name} prepare/begin: would block (audit mode): QW102" in log
    finally:
        host.remove()


def test_broken_policy_denies_every_start(vm, host):
    host.write("version: 1\nprofiles:\n  default: {interfaces: {allowed_types: 7}}\n")
    try:
        name = vm({})
        p = e2e.virsh("start", name)
        assert p.returncode != 0
        assert "policy error, every start is denied until it is fixed" in p.stderr
        assert "/etc/qwamos/policy.yaml:3" in p.stderr
    finally:
        host.remove()
    assert e2e.virsh("start", name).returncode == 0  # fixed (removed): default applies again


def test_audit_log_chain_intact_after_runs():
    p = subprocess.run(["/opt/qwamos/venv/bin/qwamos-policy", "audit", "verify"], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
