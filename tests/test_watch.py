"""qwamos-policy watch: libvirt runs no hook for attach-device, so a watcher
subscribed to libvirt's events keeps running VMs compliant.

The end-to-end tests run the watcher as a process against the real libvirtd
and hot-plug devices with ``virsh attach-device --live`` into TCG VMs. Each
watcher only looks at its own test's domains (--domain), so other tests'
VMs on the same host are never touched."""

from __future__ import annotations

import json
import os
import subprocess
import uuid as uuidlib

import pytest

from qwamos_hooks import domain, engine, watch
from qwamos_hooks.policy import load_policy

from . import e2e
from .domains import domain_xml, nic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/opt/qwamos/venv/bin/python"
DEFAULT_YAML = os.path.join(ROOT, "qwamos_hooks", "data", "default.yaml")
DEFAULT = load_policy(None)
AUDIT = None  # built lazily from the default with mode: audit

BAD_PCI_NIC = "<interface type='user'><mac address='00:11:22:33:44:66'/><model type='e1000'/></interface>"
# QEMU unplugs a USB device at once, without the guest's help: the detach path end to end.
BAD_USB_NIC = "<interface type='user'><mac address='00:11:22:33:44:{last}'/><model type='usb-net'/></interface>"
GOOD_NIC = ("<interface type='network'><mac address='52:54:00:aa:00:{last}'/><source network='default'/>"
            "<model type='virtio'/><driver name='vhost'/></interface>")


def audit_policy_text() -> str:
    text = open(DEFAULT_YAML).read()
    assert "\nmode: enforce\n" in text
    return text.replace("\nmode: enforce\n", "\nmode: audit\n")


# --- pure logic ----------------------------------------------------------------

BRIDGE_SRC = "<source network='default' bridge='virbr0'/>"


def live(nics=None, tail="", devices_extra=""):
    """A live-looking domain: every NIC resolved to a bridge, with an alias."""
    if nics is None:
        nics = [nic(source=BRIDGE_SRC, extra="<alias name='net0'/>")]
    return domain_xml(name="qwtest-watch-unit", nics=nics, tail=tail, devices_extra=devices_extra).encode()


def plan_of(xml: bytes, policy=DEFAULT):
    result = engine.evaluate(domain.parse_bytes(xml, "unit"), policy, live=True)
    return watch.plan(result.errors, watch.live_devices(xml), policy.mode)


def test_compliant_live_domain_is_allowed():
    p = plan_of(live())
    assert p.action == watch.ALLOW and p.aliases == ()


def test_bad_nic_with_alias_is_detached_alone():
    bad = nic(type="user", mac="00:11:22:33:44:66", model="e1000", driver=None, extra="<alias name='net1'/>")
    p = plan_of(live([nic(source=BRIDGE_SRC, extra="<alias name='net0'/>"), bad]))
    assert p.action == watch.DETACH
    assert p.aliases == ("net1",)
    assert "QW102" in p.reason and "QW105" in p.reason


def test_every_offending_device_is_detached():
    bad1 = nic(type="user", mac="00:11:22:33:44:66", model="e1000", driver=None, extra="<alias name='net1'/>")
    bad2 = nic(type="user", mac="52:54:00:aa:00:09", model="rtl8139", driver=None, extra="<alias name='ua-x'/>")
    p = plan_of(live([nic(source=BRIDGE_SRC, extra="<alias name='net0'/>"), bad1, bad2]))
    assert p.action == watch.DETACH and p.aliases == ("net1", "ua-x")


def test_bad_nic_without_alias_means_destroy():
    bad = nic(type="user", mac="00:11:22:33:44:66", model="e1000", driver=None)
    p = plan_of(live([nic(source=BRIDGE_SRC, extra="<alias name='net0'/>"), bad]))
    assert p.action == watch.DESTROY and p.aliases == ()


def test_finding_outside_any_device_means_destroy():
    # A raw -netdev is a domain-level finding: no device to take away.
    qns = "http://libvirt.org/schemas/domain/qemu/1.0"
    tail = (f"\n  <qemu:commandline xmlns:qemu='{qns}'><qemu:arg value='-netdev'/>"
            f"<qemu:arg value='user,id=x'/></qemu:commandline>")
    bad = nic(type="user", mac="00:11:22:33:44:66", model="e1000", driver=None, extra="<alias name='net1'/>")
    p = plan_of(live([nic(source=BRIDGE_SRC, extra="<alias name='net0'/>"), bad], tail=tail))
    assert p.action == watch.DESTROY
    assert "QW501" in p.reason


def test_audit_mode_only_says_what_it_would_do():
    policy = load_policy_text(audit_policy_text())
    bad = nic(type="user", mac="00:11:22:33:44:66", model="e1000", driver=None, extra="<alias name='net1'/>")
    p = plan_of(live([bad]), policy)
    assert p.action == watch.AUDIT_ALLOW
    assert p.reason.startswith("would detach")


def test_finding_on_a_child_line_maps_to_its_device():
    xml = live([nic(source=BRIDGE_SRC, extra="<alias name='net0'/>"),
                nic(type="user", mac="00:11:22:33:44:66", model="e1000", driver=None, extra="<alias name='net1'/>")])
    devs = watch.live_devices(xml)
    lines = xml.decode().splitlines()
    model_line = next(i for i, l in enumerate(lines, 1) if "e1000" in l)
    mac_line = next(i for i, l in enumerate(lines, 1) if "00:11:22:33:44:66" in l)
    assert watch.device_at(devs, model_line).alias == "net1"
    assert watch.device_at(devs, mac_line).alias == "net1"
    assert watch.device_at(devs, 1) is None
    assert watch.device_at(devs, 0) is None


def test_broken_policy_refuses_only_the_added_device():
    p = watch.plan_unjudged("policy.yaml:3: bad", "net4")
    assert p.action == watch.DETACH and p.aliases == ("net4",)
    p = watch.plan_unjudged("policy.yaml:3: bad", None)
    assert p.action == watch.UNJUDGED and p.aliases == ()


def test_unparseable_live_xml_fails_closed():
    assert watch.plan_unparsed("too big", "enforce").action == watch.DESTROY
    assert watch.plan_unparsed("too big", "audit").action == watch.AUDIT_ALLOW


def test_link_down_replaces_the_link_state():
    out = watch.link_down_xml(b"<interface type='user'><mac address='00:11:22:33:44:66'/>"
                              b"<link state='up'/><alias name='net1'/></interface>").decode()
    assert out.count("<link") == 1 and "state=\"down\"" in out and "net1" in out


def test_a_reused_alias_is_a_different_device():
    # libvirt hands a freed alias to the next device: the detach wait must not
    # mistake a new NIC for the one it removed.
    def dev(mac, link=""):
        xml = (f"<interface type='user'><mac address='{mac}'/><model type='usb-net'/>{link}"
               f"<alias name='net1'/></interface>").encode()
        return watch.Device("interface", "net1", 1, 1, xml)
    assert watch.device_key(dev("00:11:22:33:44:66")) != watch.device_key(dev("00:11:22:33:44:67"))
    # ...while the link state the watcher sets does not make it a new one.
    assert watch.device_key(dev("00:11:22:33:44:66")) == \
        watch.device_key(dev("00:11:22:33:44:66", "<link state='down'/>"))


def test_domain_globs():
    assert watch.wanted("anything", ())
    assert watch.wanted("qwtest-watch-1", ("qwtest-watch-*",))
    assert not watch.wanted("prod-vm", ("qwtest-watch-*",))


def test_malformed_event_is_dropped_not_raised():
    class Broken:
        def UUIDString(self):
            raise RuntimeError("no uuid")

    logged = []
    w = watch.Watcher(watch.Options("test:///default", DEFAULT_YAML, False, (), 1.0, 0, None, None),
                      None, logged.append)
    w._on_device_added(None, Broken(), "net9", None)
    w._on_metadata(None, Broken(), 0, None, None)
    assert w.events.empty()
    assert len(logged) == 2 and "malformed event" in logged[0]


def test_policy_reloads_when_the_file_changes(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(audit_policy_text())
    src = watch.PolicySource(str(path), missing_ok=False)
    logged = []
    assert src.current(logged.append)[0].mode == "audit"
    path.write_text(open(DEFAULT_YAML).read())
    assert src.current(logged.append)[0].mode == "enforce"
    path.write_text("version: 1\nmode: nonsense\n")
    policy, problem = src.current(logged.append)
    assert policy is None and problem
    missing = watch.PolicySource(str(tmp_path / "absent.yaml"), missing_ok=True)
    assert missing.current(logged.append)[0].source == DEFAULT.source


def test_hook_never_imports_the_watcher():
    code = ("import sys, qwamos_hooks.hook, qwamos_hooks.domain, qwamos_hooks.engine; "
            "print('qwamos_hooks.watch' in sys.modules, 'libvirt' in sys.modules)")
    out = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def load_policy_text(text: str):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write(text)
    try:
        return load_policy(fh.name)
    finally:
        os.unlink(fh.name)


# --- end to end, against the real libvirtd -----------------------------------


class Watcher:
    """One `qwamos-policy watch` process, ended by its PID."""

    def __init__(self, tmp_path, glob: str, policy_text: str, uri: str = e2e.URI, detach_timeout: float = 1,
                 rescan: float = 0):
        self.dir = tmp_path / "watch"
        self.dir.mkdir(exist_ok=True)
        self.policy = self.dir / "policy.yaml"
        if not self.policy.exists():
            self.policy.write_text(policy_text)
        self.ready = self.dir / "ready"
        self.pidfile = self.dir / "pid"
        self.audit_log = self.dir / "lib" / "audit.jsonl"
        env = dict(os.environ, QWAMOS_LIB_DIR=str(self.dir / "lib"), QWAMOS_STATE_DIR=str(self.dir / "run"),
                   QWAMOS_LOG_FILE=str(self.dir / "watch.log"))
        env.pop("QWAMOS_POLICY", None)
        self.stderr = open(self.dir / "stderr", "w")
        self.proc = subprocess.Popen(
            [PY, "-m", "qwamos_hooks.cli", "--policy", str(self.policy), "watch", "--connect", uri, "--domain", glob,
             "--detach-timeout", str(detach_timeout), "--rescan-interval", str(rescan),
             "--ready-file", str(self.ready), "--pidfile", str(self.pidfile)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.stderr)
        if not e2e.wait_for(lambda: self.ready.exists() or self.proc.poll() is not None, timeout=20):
            self.stop()
            pytest.fail(f"watcher not ready after 20 s: {self.log()}")
        if self.proc.poll() is not None:
            pytest.fail(f"watcher exited with {self.proc.returncode}: {self.log()}")
        assert self.ready.read_text().strip() == str(self.proc.pid)
        assert self.pidfile.read_text().strip() == str(self.proc.pid)

    def log(self) -> str:
        self.stderr.flush()
        return (self.dir / "stderr").read_text()[-2000:]

    def records(self, vm: str) -> list[dict]:
        if not self.audit_log.exists():
            return []
        out = []
        for line in self.audit_log.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("event") == "watch" and rec.get("vm") == vm:
                out.append(rec)
        return out

    def wait_record(self, vm: str, pred, timeout=10.0) -> dict:
        found = []

        def seen():
            found[:] = [r for r in self.records(vm) if pred(r)]
            return bool(found)

        assert e2e.wait_for(seen, timeout=timeout), \
            f"no matching audit record for {vm}: {self.records(vm)}\n{self.log()}"
        return found[0]

    def stop(self) -> int:
        e2e.stop_process(self.proc)
        self.stderr.close()
        return self.proc.returncode


@pytest.fixture
def host():
    e2e.require_host()


@pytest.fixture
def names():
    """Unique domain names for one test, all removed afterwards."""
    token = uuidlib.uuid4().hex[:8]
    made = []

    def make(suffix="vm"):
        made.append(f"qwtest-watch-{token}-{suffix}")
        return made[-1]

    make.glob = f"qwtest-watch-{token}-*"
    yield make
    for n in made:
        e2e.cleanup(n)


@pytest.fixture
def watchers(tmp_path):
    started = []

    def start(glob, policy_text=None, **kw):
        w = Watcher(tmp_path, glob, policy_text if policy_text is not None else open(DEFAULT_YAML).read(), **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def start_vm(tmp_path, name):
    xml = tmp_path / f"{name}.xml"
    # ACPI as on any real guest: PCI hot-plug goes through it.
    # A MAC of its own: the firewall refuses a second VM with a MAC already on the bridge.
    h = uuidlib.uuid5(uuidlib.NAMESPACE_DNS, name).hex
    mac = f"52:54:00:{h[0:2]}:{h[2:4]}:{h[4:6]}"
    xml.write_text(domain_xml(name=name, nics=[nic(mac=mac)]).replace("</os>", "</os>\n  <features><acpi/></features>"))
    e2e.virsh("define", str(xml), check=True)
    start = e2e.virsh("start", name)
    assert start.returncode == 0, f"compliant VM did not start: {start.stderr.strip()}"
    return mac


def attach(tmp_path, name, device_xml):
    f = tmp_path / f"dev-{uuidlib.uuid4().hex[:6]}.xml"
    f.write_text(device_xml)
    e2e.virsh("attach-device", name, str(f), "--live", check=True)


def live_xml(name) -> str:
    return e2e.virsh("dumpxml", name).stdout


def test_nic_hot_plugged_into_a_running_vm_is_refused(host, tmp_path, names, watchers):
    """libvirt runs no hook for attach-device: once a compliant VM runs, it can
    be given an e1000 on user-mode networking with a foreign MAC (measured on
    libvirt 9.0; update-device and qemu-monitor-command go the same way)."""
    name = names()
    w = watchers(names.glob)
    start_vm(tmp_path, name)
    attach(tmp_path, name, BAD_PCI_NIC)

    def nic_gone():
        if e2e.state(name) != "running":
            return True
        return "00:11:22:33:44:66" not in live_xml(name)
    assert e2e.wait_for(nic_gone, timeout=5.0), "hot-plugged e1000/user NIC is live in a running VM"
    # The check may come from the device-added event or from the start event,
    # whichever the watcher handles after the attach.
    rec = w.wait_record(name, lambda r: r["decision"] != "allow")
    assert rec["decision"] in ("detach", "destroy"), rec
    assert {"QW102", "QW105"} <= {f["rule"] for f in rec["findings"]}
    assert rec["aliases"] == ["net1"]
    if rec["decision"] == "destroy":
        # Without a guest OS nothing answers the ACPI unplug: the VM must be gone.
        assert e2e.state(name) != "running" and not e2e.qemu_running(name)


def test_usb_nic_is_detached_and_the_vm_keeps_running(host, tmp_path, names, watchers):
    name = names()
    w = watchers(names.glob)
    mac = start_vm(tmp_path, name)
    attach(tmp_path, name, BAD_USB_NIC.format(last="67"))
    rec = w.wait_record(name, lambda r: r["decision"] != "allow")
    assert rec["decision"] == "detach", rec
    assert e2e.state(name) == "running"
    assert "00:11:22:33:44:67" not in live_xml(name)
    assert mac in live_xml(name), "the compliant NIC must stay"
    assert rec["uuid"] == str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, name))


def test_compliant_nic_hot_plug_stays(host, tmp_path, names, watchers):
    name = names()
    w = watchers(names.glob)
    start_vm(tmp_path, name)
    attach(tmp_path, name, GOOD_NIC.format(last="02"))
    rec = w.wait_record(name, lambda r: r["trigger"] == "device-added")
    assert rec["decision"] == "allow", rec
    assert rec["findings"] == []
    assert e2e.state(name) == "running"
    assert "52:54:00:aa:00:02" in live_xml(name)


def test_audit_mode_leaves_the_device_then_enforce_after_a_policy_edit(host, tmp_path, names, watchers):
    name = names()
    w = watchers(names.glob, audit_policy_text())
    start_vm(tmp_path, name)
    attach(tmp_path, name, BAD_USB_NIC.format(last="68"))
    rec = w.wait_record(name, lambda r: r["findings"])
    assert rec["decision"] == "audit-allow" and rec["reason"].startswith("would detach"), rec
    assert e2e.state(name) == "running" and "00:11:22:33:44:68" in live_xml(name)

    # The policy file is re-read when it changes: the next event is enforced,
    # and both offending NICs go.
    tmp = w.policy.with_suffix(".new")
    tmp.write_text(open(DEFAULT_YAML).read())
    os.replace(tmp, w.policy)
    attach(tmp_path, name, BAD_USB_NIC.format(last="69"))
    rec = w.wait_record(name, lambda r: r["decision"] == "detach")
    assert sorted(rec["aliases"]) == sorted(set(rec["aliases"])) and len(rec["aliases"]) == 2
    assert e2e.state(name) == "running"
    xml = live_xml(name)
    assert "00:11:22:33:44:68" not in xml and "00:11:22:33:44:69" not in xml


def test_rescan_enforces_a_policy_edit_without_any_event(host, tmp_path, names, watchers):
    name = names()
    w = watchers(names.glob, audit_policy_text(), rescan=1)
    start_vm(tmp_path, name)
    attach(tmp_path, name, BAD_USB_NIC.format(last="73"))
    w.wait_record(name, lambda r: r["decision"] == "audit-allow")
    # Let the attach's own events (device-added may come after a rescan saw the
    # device) be handled before the edit, so the edit is seen by a rescan alone.
    settled = []
    e2e.wait_for(lambda: settled.append(len(w.records(name))) or settled[-3:].count(settled[-1]) == 3
                 and len(settled) >= 3, timeout=10, step=0.5)
    tmp = w.policy.with_suffix(".new")
    tmp.write_text(open(DEFAULT_YAML).read())
    os.replace(tmp, w.policy)
    rec = w.wait_record(name, lambda r: r["decision"] == "detach", timeout=5)
    assert rec["trigger"] == "rescan"
    assert e2e.state(name) == "running" and "00:11:22:33:44:73" not in live_xml(name)
    # Unchanged domains are not recorded again at every rescan.
    n = len(w.records(name))
    e2e.wait_for(lambda: False, timeout=2.5)
    assert len(w.records(name)) == n


def test_startup_sweep_catches_a_device_added_before_the_watcher(host, tmp_path, names, watchers):
    name, other = names("a"), names("b")
    start_vm(tmp_path, name)
    start_vm(tmp_path, other)
    attach(tmp_path, name, BAD_USB_NIC.format(last="70"))
    w = watchers(names.glob)  # ready means: subscribed and the first sweep done
    assert "00:11:22:33:44:70" not in live_xml(name)
    assert e2e.state(name) == "running"
    rec = w.wait_record(name, lambda r: r["trigger"] == "startup", timeout=1)
    assert rec["decision"] == "detach"
    assert w.wait_record(other, lambda r: r["trigger"] == "startup", timeout=1)["decision"] == "allow"


def test_a_slow_detach_on_one_vm_does_not_delay_another(host, tmp_path, names, watchers):
    # Without a guest OS the PCI unplug on VM a never completes: the watcher
    # waits --detach-timeout for it. VM b's check must not queue behind it.
    a, b = names("a"), names("b")
    w = watchers(names.glob, detach_timeout=4)
    start_vm(tmp_path, a)
    start_vm(tmp_path, b)
    attach(tmp_path, a, BAD_PCI_NIC)
    assert e2e.wait_for(lambda: "<link state='down'/>" in live_xml(a) or e2e.state(a) != "running", timeout=2)
    attach(tmp_path, b, BAD_USB_NIC.format(last="72"))
    assert e2e.wait_for(lambda: "00:11:22:33:44:72" not in live_xml(b), timeout=2), \
        f"VM b waited for VM a's detach: {w.log()}"
    assert e2e.state(a) == "running", "VM a should still be inside its detach timeout"
    assert w.wait_record(a, lambda r: r["decision"] != "allow", timeout=10)["decision"] == "destroy"


def test_watcher_stops_cleanly_on_sigterm_and_keeps_the_audit_chain(host, tmp_path, names, watchers):
    name = names()
    w = watchers(names.glob)
    start_vm(tmp_path, name)
    attach(tmp_path, name, BAD_USB_NIC.format(last="71"))
    w.wait_record(name, lambda r: r["decision"] == "detach")
    assert w.stop() == 0, w.log()
    assert not w.ready.exists() and not w.pidfile.exists()
    out = subprocess.run([PY, "-m", "qwamos_hooks.cli", "audit", "verify", str(w.audit_log)],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_watch_refuses_a_broken_policy_named_on_the_command_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmode: maybe\n")
    p = subprocess.run([PY, "-m", "qwamos_hooks.cli", "--policy", str(bad), "watch", "--connect", "test:///default"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert str(bad) in p.stderr


class PrivateLibvirtd:
    """A libvirtd of our own (session mode, as nobody) that the test may kill
    and restart without disturbing the host's daemon. Through it the watcher
    talks to libvirt's test driver, whose running domain 'test' comes back
    fresh at every daemon start."""

    def __init__(self):
        import tempfile

        # Short and traversable by nobody: unix socket paths are limited to 108 bytes.
        self.dir = tempfile.mkdtemp(prefix="qwtest-watch-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        for sub in ("home", "run"):
            os.makedirs(os.path.join(self.dir, sub), mode=0o700)
            os.chown(os.path.join(self.dir, sub), 65534, 65534)
        self.sock = os.path.join(self.dir, "run", "libvirt", "libvirt-sock")
        self.uri = f"test+unix:///default?socket={self.sock}"
        self.proc = None

    def start(self):
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": os.path.join(self.dir, "home"),
               "XDG_RUNTIME_DIR": os.path.join(self.dir, "run")}
        self.proc = subprocess.Popen(["libvirtd", "--timeout", "0"], env=env, user=65534, group=65534,
                                     extra_groups=[], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        up = e2e.wait_for(lambda: subprocess.run(["virsh", "-c", self.uri, "version"],
                                                 capture_output=True).returncode == 0, timeout=15)
        assert up, "private libvirtd did not come up"

    def stop(self):
        e2e.stop_process(self.proc)

    def domstate(self, name):
        return subprocess.run(["virsh", "-c", self.uri, "domstate", name],
                              capture_output=True, text=True).stdout.strip()

    def remove(self):
        import shutil

        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_libvirtd():
    if os.geteuid() != 0:
        pytest.fail("the reconnect test needs root (it runs a private libvirtd as nobody)")
    d = PrivateLibvirtd()
    try:
        d.start()
        yield d
    finally:
        d.remove()


def test_watcher_reconnects_after_libvirtd_restarts(tmp_path, private_libvirtd):
    d = private_libvirtd
    assert d.domstate("test") == "running"
    w = Watcher(tmp_path, "test", open(DEFAULT_YAML).read(), uri=d.uri)
    try:
        # The test driver's domain breaks the default policy outside any device
        # (domain type 'test'): the startup sweep destroys it.
        rec = w.wait_record("test", lambda r: r["trigger"] == "startup", timeout=5)
        assert rec["decision"] == "destroy", rec
        assert d.domstate("test") == "shut off"

        d.stop()
        d.start()  # a fresh daemon: 'test' runs again
        rec = w.wait_record("test", lambda r: r["trigger"] == "reconnect", timeout=20)
        assert rec["decision"] == "destroy", rec
        assert d.domstate("test") == "shut off"
        assert w.proc.poll() is None
    finally:
        assert w.stop() == 0, w.log()
