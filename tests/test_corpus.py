"""The whole libvirt test-suite corpus through `qwamos-policy check`."""

import json
import os
import subprocess
import sys

import pytest

from .test_domain import CORPUS

CLI = [sys.executable, "-m", "qwamos_hooks.cli"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


BUILTIN = os.path.join(ROOT, "qwamos_hooks", "data", "default.yaml")


def check(*args, env=None):
    # The built-in default policy, whatever /etc/qwamos/policy.yaml says on this host.
    e = dict(os.environ, QWAMOS_POLICY=BUILTIN, **(env or {}))
    return subprocess.run(CLI + list(args), capture_output=True, text=True, cwd=ROOT, env=e)


@pytest.fixture(scope="module")
def corpus_report():
    if not os.path.isdir(CORPUS):
        pytest.fail(f"libvirt domain XML corpus not found at {CORPUS}: set QWAMOS_CORPUS to its folder")
    p = check("check", CORPUS, "--format", "json")
    assert p.returncode == 1, p.stderr  # violations, and no input errors
    assert p.stderr == "" or "Traceback" not in p.stderr
    doc = json.loads(p.stdout)
    return {os.path.relpath(f["path"], CORPUS): f for f in doc["files"]}, doc


def test_every_file_checked_without_crash(corpus_report):
    files, doc = corpus_report
    assert len(files) == 2787
    assert doc["summary"]["input_errors"] == 0
    assert all(f["error"] is None for f in files.values())
    compliant = [p for p, f in files.items() if not f["findings"]]
    assert 100 < len(compliant) < len(files)  # the policy is neither vacuous nor blanket


EXPECTED = {
    # unknown model, vmxnet3/ne2k/pcnet, uppercase 'ViRtIo' accepted, repeated MAC
    "qemuxmlconfdata/net-many-models.xml": {"QW102", "QW105", "QW107"},
    "qemuxmlconfdata/net-vhostuser.xml": {"QW101", "QW102"},
    "qemuxmlconfdata/net-hostdev.xml": {"QW101", "QW105", "QW201"},
    "domainschemadata/portprofile.xml": {"QW101", "QW102", "QW103", "QW300"},  # direct/macvtap, lxc
    "qemuxmlconfdata/net-virtio-teaming-hostdev.xml": {"QW105", "QW201"},  # the VF outside <interface>
    "lxcxml2xmldata/lxc-sharenet.xml": {"QW300", "QW504"},  # no <interface>, host netns
    "qemuxmlconfdata/net-vdpa.xml": {"QW101"},
    "qemuxmlconfdata/net-virtio-vhost.xml": {"QW101"},  # ethernet; upper-case MAC is fine
    "qemuxmlconfdata/tap-vhost-incorrect.xml": {"QW102", "QW120"},  # vhost on e1000, vhost=/dev/zero
    "qemuxmlconfdata/x86_64-q35-default-models.xml": {"QW102"},  # no <model> -> rtl8139 on x86
    "qemuxmlconfdata/aarch64-virt-default-models.xml": set(),  # no <model> -> virtio on aarch64 virt
    "qemuxmlconfdata/net-eth-unmanaged-tap.xml": {"QW101", "QW105"},
    "vmx2xmldata/ethernet-vds.xml": {"QW101", "QW102", "QW105", "QW300"},
    "qemuxmlconfdata/qemu-ns.xml": {"QW505"},  # overrides a disk (not a NIC), but edits capabilities
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_corpus_files(corpus_report, name):
    files, _ = corpus_report
    assert {x["rule"] for x in files[name]["findings"]} == EXPECTED[name]


def test_ns0_commandline_carrying_a_netdev(tmp_path):
    # The corpus file writes <qemu:commandline> as <ns0:commandline>; give it a NIC.
    src = open(os.path.join(CORPUS, "qemuxmlconfdata/qemu-ns-commandline-ns0.xml")).read()
    assert "ns0:commandline" in src
    bad = tmp_path / "ns0-netdev.xml"
    bad.write_text(src.replace("value='ARGUMENT'/>", "value='-netdev'/><ns0:arg value='user,id=leak'/>"))
    p = check("check", str(bad), "--format", "json")
    assert p.returncode == 1
    rules = {x["rule"] for f in json.loads(p.stdout)["files"] for x in f["findings"]}
    assert "QW501" in rules
    assert check("check", os.path.join(CORPUS, "qemuxmlconfdata/qemu-ns-commandline-ns0.xml"), "--format", "json").returncode in (0, 1)


def test_qemu_prefix_bound_to_dummy_uri(tmp_path):
    src = open(os.path.join(CORPUS, "qemuxmlconfdata/qemu-ns-domain-commandline.xml")).read()
    assert "urn:dummy" in src
    p = check("check", os.path.join(CORPUS, "qemuxmlconfdata/qemu-ns-domain-commandline.xml"), "--format", "json")
    assert "QW5" not in p.stdout  # its real qemu args are not network args
    bad = tmp_path / "x.xml"
    bad.write_text(src.replace("<qemu:arg value='ARGUMENT'/>", "<qemu:arg value='-nic'/><qemu:arg value='user'/>"))
    assert bad.read_text() != src
    p = check("check", str(bad), "--format", "json")
    assert "QW501" in p.stdout
