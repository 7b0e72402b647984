"""Ways to get a NIC past the <interface> rules through raw hypervisor XML."""

import pytest

from qwamos_hooks import domain, engine
from qwamos_hooks.policy import load_policy

from .domains import domain_xml

DEFAULT = load_policy(None)
QNS = "http://libvirt.org/schemas/domain/qemu/1.0"


def findings(tail, root_attrs=""):
    d = domain.parse_bytes(domain_xml(tail=tail, root_attrs=root_attrs).encode(), "t.xml")
    return [f for f in engine.evaluate(d, DEFAULT).findings]


def cmdline(*args, prefix="qemu", declare=True):
    decl = f" xmlns:{prefix}='{QNS}'" if declare else ""
    body = "".join(f"<{prefix}:arg value='{a}'/>" for a in args)
    return f"\n  <{prefix}:commandline{decl}>{body}</{prefix}:commandline>"


@pytest.mark.parametrize("args", [
    ("-netdev", "user,id=n1"),
    ("-netdev=user,id=n1",),
    ("--netdev", "tap,id=n1,ifname=foo"),
    ("-nic", "user"),
    ("-net", "nic"),
    ("-NETDEV", "user,id=x"),
    ("-netdev user,id=x",),  # one argument holding a space
    ("-device", "virtio-net-pci,netdev=n1"),
    ("-device=e1000,netdev=n1",),
    ("-device", "rtl8139"),
    ("-device", "driver=virtio-net-pci,id=z"),
    ("-device", '{"driver":"virtio-net-pci","netdev":"n1"}'),
    ("-device", "usb-net"),
    ("-device", "some-future-dev,netdev=n1"),
    ("-device", "vmxnet3"),
    ("-set", "device.net0.mac=52:54:00:00:00:99"),
    ("-set", "netdev.hostnet0.ifname=vnet9"),
    ("-set", "device.ua-x.netdev=n9"),
    ("-global", "virtio-net-pci.mac=52:54:00:00:00:99"),
    ("-global", "driver=e1000,property=netdev,value=x"),
    ("-object", "filter-mirror,id=m0,netdev=hostnet0,queue=tx,outdev=c0"),
    ("-object", '{"qom-type":"filter-redirector","id":"r"}'),
    ("-readconfig", "/tmp/extra.cfg"),
    ("-qmp", "unix:/tmp/q.sock,server=on,wait=off"),
    ("-monitor", "unix:/tmp/m.sock,server"),
    ("-mon", "chardev=c0,mode=control"),
])
def test_network_args_are_refused(args):
    got = [f for f in findings(cmdline(*args)) if f.rule == "QW501"]
    assert got, f"{args} slipped through"
    assert got[0].line > 1 and got[0].device == "qemu:commandline"


@pytest.mark.parametrize("prefix, root_attrs, declare", [
    ("ns0", "", True),
    ("qemu", " xmlns:qemu='urn:dummy'", True),  # 'qemu' prefix bound elsewhere at the root
    ("q", f" xmlns:q='{QNS}'", False),  # declared on the root under another prefix
])
def test_namespace_prefix_does_not_matter(prefix, root_attrs, declare):
    tail = cmdline("-netdev", "user,id=n1", prefix=prefix, declare=declare)
    assert any(f.rule == "QW501" for f in findings(tail, root_attrs))


def test_default_namespace_form():
    tail = f"\n  <commandline xmlns='{QNS}'><arg value='-nic'/><arg value='user'/></commandline>"
    assert any(f.rule == "QW501" for f in findings(tail))


def test_dummy_prefix_is_not_the_qemu_namespace():
    tail = "\n  <qemu:commandline xmlns:qemu='urn:dummy'><qemu:arg value='-netdev'/></qemu:commandline>"
    assert not any(f.rule.startswith("QW5") for f in findings(tail))


@pytest.mark.parametrize("args", [("-m", "512"), ("-boot", "menu=on"), ("-device", "virtio-balloon-pci"),
                                  ("-device", "pvpanic"), ("-set", "device.balloon0.free-page-reporting=on"),
                                  ("-global", "kvm-pit.lost_tick_policy=discard")])
def test_unrelated_args_are_allowed(args):
    assert findings(cmdline(*args)) == []


def test_code_loading_env_is_refused_but_other_env_allowed():
    tail = f"\n  <qemu:commandline xmlns:qemu='{QNS}'><qemu:env name='LD_PRELOAD' value='/tmp/x.so'/><qemu:env name='SPICE_DEBUG' value='1'/></qemu:commandline>"
    assert [f.rule for f in findings(tail)] == ["QW502"]


def test_override_of_a_nic_alias():
    ov = f"""
  <qemu:override xmlns:qemu='{QNS}'>
    <qemu:device alias='net0'><qemu:frontend><qemu:property name='romfile' type='string' value=''/></qemu:frontend></qemu:device>
  </qemu:override>"""
    assert [f.rule for f in findings(ov)] == ["QW503"]
    disk = ov.replace("net0", "ua-disk0")
    assert findings(disk) == []
    mac = disk.replace("romfile", "mac")
    assert [f.rule for f in findings(mac)] == ["QW503"]


def test_xen_and_bhyve_commandline():
    xen = "\n  <xen:commandline xmlns:xen='http://libvirt.org/schemas/domain/xen/1.0'><xen:arg value='-netdev'/><xen:arg value='user,id=a'/></xen:commandline>"
    bhyve = "\n  <bhyve:commandline xmlns:bhyve='http://libvirt.org/schemas/domain/bhyve/1.0'><bhyve:arg value='-s'/><bhyve:arg value='3,virtio-net,tap1'/></bhyve:commandline>"
    assert any(f.rule == "QW501" for f in findings(xen))
    assert any(f.rule == "QW501" for f in findings(bhyve))


def test_lxc_sharenet():
    tail = "\n  <lxc:namespace xmlns:lxc='http://libvirt.org/schemas/domain/lxc/1.0'><lxc:sharenet type='netns' value='red'/></lxc:namespace>"
    assert [f.rule for f in findings(tail)] == ["QW504"]
