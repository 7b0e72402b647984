"""Adversarial domain XML: configurations libvirt accepts that get a network
path, a device or code past the policy, and hook inputs that stop it from
cleaning up. Each test fails while its hole is open."""

import io
import os

import pytest

from qwamos_hooks import cli, domain, engine, hook
from qwamos_hooks.policy import load_policy

from . import e2e
from .domains import domain_xml, nic

POLICIES = os.path.join(os.path.dirname(__file__), "..", "policies")
DEFAULT = load_policy(None)
STRICT = load_policy(os.path.join(POLICIES, "strict.yaml"))
WORKSTATION = load_policy(os.path.join(POLICIES, "workstation.yaml"))
QNS = "http://libvirt.org/schemas/domain/qemu/1.0"


def errors(xml, policy=DEFAULT, live=False):
    d = domain.parse_bytes(xml.encode(), "adv.xml")
    return [f.rule for f in engine.evaluate(d, policy, live=live).errors]


def attack(xml, policy=DEFAULT, baseline=None):
    """Findings of an attack document, after checking that the compliant
    document it was built from has none (so a failure is never borrowed)."""
    base = baseline if baseline is not None else domain_xml()
    assert errors(base, policy) == [], "baseline is not compliant: the test would prove nothing"
    return errors(xml, policy)


def cmdline(*args):
    body = "".join(f"<qemu:arg value='{a}'/>" for a in args)
    return f"\n  <qemu:commandline xmlns:qemu='{QNS}'>{body}</qemu:commandline>"


def vault(devices="", tail=""):
    """A domain the workstation policy puts in its 'isolated' profile: no network at all."""
    return domain_xml(name="vault-adv", nics=[], devices_extra=devices, tail=tail)


def vault_attack(devices="", tail=""):
    assert WORKSTATION.select("vault-adv", None, None).profile.name == "isolated"
    return attack(vault(devices, tail), WORKSTATION, baseline=vault())


# --- host sockets wired to a guest device ------------------------------------
# Each of these makes QEMU open a TCP/UDP socket on the host and pipe it to a
# guest-visible device (serial, virtio-serial, USB redirection, CCID, RNG).
# With PPP/SLIP over the port, or a remote usbredir server exporting a USB NIC,
# the guest has a network path that no tap, bridge or nft rule ever sees.
CONNECT = "<source mode='connect' host='192.0.2.1' service='443'/>"
HOST_SOCKET_DEVICES = {
    "serial-tcp-connect": f"<serial type='tcp'>{CONNECT}<protocol type='raw'/><target port='0'/></serial>",
    "serial-tcp-bind-any": "<serial type='tcp'><source mode='bind' host='0.0.0.0' service='4555'/>"
                           "<protocol type='raw'/><target port='0'/></serial>",
    "serial-udp": "<serial type='udp'><source mode='bind' host='0.0.0.0' service='4556'/>"
                  "<source mode='connect' host='192.0.2.1' service='53'/><target port='0'/></serial>",
    "channel-tcp": f"<channel type='tcp'>{CONNECT}<protocol type='raw'/><target type='virtio' name='org.x.0'/></channel>",
    "console-tcp": f"<console type='tcp'>{CONNECT}<protocol type='raw'/><target type='serial' port='0'/></console>",
    "parallel-tcp": f"<parallel type='tcp'>{CONNECT}<protocol type='raw'/><target port='0'/></parallel>",
    "redirdev-tcp": f"<redirdev bus='usb' type='tcp'>{CONNECT}</redirdev>",
    "smartcard-tcp": f"<smartcard mode='passthrough' type='tcp'>{CONNECT}<protocol type='raw'/></smartcard>",
    "rng-egd-tcp": f"<rng model='virtio'><backend model='egd' type='tcp'>{CONNECT}<protocol type='raw'/></backend></rng>",
}


@pytest.mark.parametrize("device", sorted(HOST_SOCKET_DEVICES))
def test_isolated_profile_refuses_guest_devices_backed_by_host_sockets(device):
    # libvirt 9.0 starts every one of these; QEMU connects out at start.
    assert vault_attack(devices=HOST_SOCKET_DEVICES[device]), f"{device}: a vault VM gets a network socket"


@pytest.mark.parametrize("args", [
    ("-chardev", "socket,id=c9,host=192.0.2.1,port=443", "-device", "isa-serial,chardev=c9"),
    ("-serial", "tcp:192.0.2.1:443"),
    ("-serial", "udp:192.0.2.1:53"),
])
def test_isolated_profile_refuses_raw_chardev_sockets(args):
    assert vault_attack(tail=cmdline(*args)), f"{args}: a vault VM gets a network socket"


def test_isolated_profile_refuses_shared_memory_between_vms():
    # Every VM naming the same <shmem> maps the same host memory: a channel
    # from the vault to any networked VM, outside every network control.
    shmem = "<shmem name='vault-bridge'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>"
    assert vault_attack(devices=shmem)


# --- raw QEMU arguments QW501/QW502 miss --------------------------------------

@pytest.mark.parametrize("args", [
    ("-serial", "mon:unix:/run/x/hmp.sock,server=on,wait=off"),
    ("-parallel", "mon:tcp:127.0.0.1:4444,server=on,wait=off"),
])
def test_monitor_multiplexed_onto_a_char_device_is_refused(args):
    # 'mon:' puts an HMP monitor on the port, exactly what -monitor/-mon do
    # (refused): on libvirt 9.0 + QEMU 7.2 it took `netdev_add user,hostfwd=...`
    # and `device_add usb-net,netdev=...` and the guest had a NIC libvirt never saw.
    assert "QW501" in attack(domain_xml(tail=cmdline(*args)))


@pytest.mark.parametrize("args", [("-plugin", "/tmp/evil.so"), ("-plugin", "file=/tmp/evil.so,arg=1")])
def test_tcg_plugin_loading_code_is_refused(args):
    # Same effect as LD_PRELOAD (refused by QW502): the .so ran inside QEMU
    # as libvirt-qemu on this host.
    assert attack(domain_xml(tail=cmdline(*args)))


@pytest.mark.parametrize("args", [
    ("-device", "vfio-pci,host=0000:06:00.0"),
    ("-device", '{"driver":"vfio-pci","host":"0000:06:00.0"}'),
])
def test_pci_passthrough_through_raw_arguments_is_refused(args):
    # passthrough.pci: deny refuses <hostdev type='pci'>; a VF of a NIC given
    # with -device vfio-pci is the same device, hidden from QW201.
    assert attack(domain_xml(tail=cmdline(*args)))


# --- documents the linter reads differently from libvirt ---------------------
# libvirt reads attributes with xmlGetProp(), which ignores namespaces and takes
# the first attribute of that local name. A foreign-namespace copy placed first
# is what libvirt uses; the model reads the unqualified one. `qwamos-policy
# check` (CI) then passes a file that libvirt runs differently (the hook sees
# libvirt's re-serialised XML and still blocks at prepare).
X = "xmlns:x='urn:x'"
SHADOWED = {
    "interface-type": nic(extra="").replace("<interface type='network'>", f"<interface {X} x:type='direct' type='network'>")
                                   .replace("<source network='default'/>", "<source network='default' dev='eth0' mode='vepa'/>"),
    "mac-address": nic(mac=None, extra=f"<mac {X} x:address='00:11:22:33:44:55' address='52:54:00:aa:00:01'/>"),
    "driver-name": nic(driver=None, extra=f"<driver {X} x:name='qemu' name='vhost'/>"),
}


@pytest.mark.parametrize("case", sorted(SHADOWED))
def test_namespaced_attribute_that_libvirt_reads_is_not_ignored(case):
    assert attack(domain_xml(nics=[SHADOWED[case]])), f"{case}: linter and libvirt disagree"


def test_namespaced_hostdev_type_is_not_ignored():
    pci = (f"<hostdev {X} mode='subsystem' x:type='pci' type='usb' managed='yes'><source>"
           "<address domain='0x0000' bus='0x06' slot='0x12' function='0x5'/></source></hostdev>")
    assert "QW201" in attack(domain_xml(devices_extra=pci))


def test_namespaced_qemu_arg_value_is_not_ignored():
    tail = f"\n  <qemu:commandline xmlns:qemu='{QNS}' {X}><qemu:arg x:value='-netdev' value='-name'/><qemu:arg value='user,id=n1'/></qemu:commandline>"
    assert "QW501" in attack(domain_xml(tail=tail))


def test_prefixed_root_element_is_not_skipped_by_a_folder_scan(tmp_path, capsys):
    # libvirt matches the root by local name only: <x:domain> defines a domain.
    (tmp_path / "ok.xml").write_text(domain_xml(name="adv-ok"))
    bad = domain_xml(name="adv-direct", nics=[nic("direct", source="<source dev='eth0' mode='vepa'/>")])
    bad = bad.replace("<domain type='qemu'>", "<x:domain xmlns:x='urn:x' type='qemu'>").replace("</domain>", "</x:domain>")
    (tmp_path / "direct.xml").write_text(bad)
    rc = cli.main(["--policy", os.path.join(POLICIES, "default.yaml"), "check", str(tmp_path)])
    capsys.readouterr()
    assert rc != 0, "a macvtap VM in the folder passed CI as 'not a domain'"


@pytest.mark.parametrize("unit", ["PiB", "P", "EiB", "E", "PB", "EB"])
def test_max_memory_in_units_libvirt_accepts_is_checked(unit):
    base = domain_xml(dtype="kvm", nics=[]).replace(
        "<vcpu>", "<memtune><hard_limit unit='MiB'>128</hard_limit></memtune><vcpu>")
    xml = base.replace("<memtune>", f"<maxMemory slots='2' unit='{unit}'>1</maxMemory><memtune>")
    assert "QW303" in attack(xml, STRICT, baseline=base), f"<maxMemory unit='{unit}'> skipped by the memory cap"


# --- hook robustness ---------------------------------------------------------

_CLEANUPS = []


def record_firewall_remove(ctx):
    _CLEANUPS.append(("firewall.remove", ctx.vm, ctx.uuid))


def record_keys_wipe(ctx):
    _CLEANUPS.append(("keys.wipe", ctx.vm, ctx.uuid))


@pytest.mark.parametrize("op, sub", [("stopped", "end"), ("release", "end")])
def test_cleanup_still_runs_when_the_stop_xml_is_oversized(tmp_path, monkeypatch, op, sub):
    # `virsh desc --live` (or setMetadata) with 2 MiB of '"' is accepted by
    # libvirt; it re-escapes each as &quot;, so the XML at stopped/end is 12 MiB.
    # Measured on this host: the hook refused to parse it, exited 0 and left
    # the VM's firewall record, tap claim and nft rules behind (keys.wipe would
    # be skipped the same way).
    vm, uid = "qwadv-bigdesc", "0a0a0a0a-1111-4222-8333-444455556666"
    xml = domain_xml(name=vm, uuid=uid, nics=[nic(source="<source network='default'/>")])
    xml = xml.replace("</uuid>", "</uuid>\n  <description>" + "&quot;" * (2 * 1024 * 1024) + "</description>", 1)
    assert len(xml) > domain.MAX_BYTES
    monkeypatch.setitem(hook.ACTIONS, "firewall.remove", f"{__name__}:record_firewall_remove")
    monkeypatch.setitem(hook.ACTIONS, "keys.wipe", f"{__name__}:record_keys_wipe")
    env = {"QWAMOS_STATE_DIR": str(tmp_path / "run"), "QWAMOS_LIB_DIR": str(tmp_path / "lib"),
           "QWAMOS_LOG_FILE": str(tmp_path / "hook.log"), "QWAMOS_POLICY": str(tmp_path / "absent.yaml")}
    _CLEANUPS.clear()
    code, _ = hook.run([vm, op, sub, "-"], io.BytesIO(xml.encode()), env=env)
    assert code == 0
    assert ("firewall.remove", vm, uid) in _CLEANUPS and ("keys.wipe", vm, uid) in _CLEANUPS, \
        f"cleanup skipped at {op}/{sub}: {_CLEANUPS}"


# A NIC hot-plugged into a running VM (no hook runs for it) is covered by
# tests/test_watch.py, against the watcher that closes that gap.
