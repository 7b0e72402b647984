"""`check --connect` against the real libvirtd: one running domain (TCG, checked
on its live XML) and one inactive, non-compliant definition."""

import json
import os
import uuid

import pytest

from .check_support import run, write_policy
from .domains import domain_xml, nic
from .test_report_sarif import validate as validate_sarif

URI = "qemu:///system"


def _conn():
    try:
        import libvirt
    except ImportError:
        pytest.fail("the libvirt Python binding is missing (python3-libvirt)")
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        return libvirt, libvirt.open(URI)
    except libvirt.libvirtError as exc:
        pytest.fail(f"libvirtd is not reachable at {URI} ({exc.get_error_message()}): run scripts/test-env.sh")


@pytest.fixture(scope="module")
def host():
    if os.geteuid() != 0:
        pytest.fail("the --connect tests need root")
    libvirt, conn = _conn()
    tag = uuid.uuid4().hex[:8]
    running, inactive = f"qwtest-ci-{tag}-run", f"qwtest-ci-{tag}-off"
    # Compliant with the built-in default, so the installed hook lets it start.
    good = domain_xml(name=running, memory_mib=32, boot=None,
                      nics=[nic(mac="52:54:00:c1:00:01", extra="<rom enabled='no'/>")])
    bad = domain_xml(name=inactive, memory_mib=32, boot=None,
                     nics=[nic(model="e1000", mac="00:16:3e:c1:00:02", driver=None)])
    doms = []
    try:
        try:
            net = conn.networkLookupByName("default")
            if not net.isActive():
                pytest.fail("libvirt network 'default' is not active: run scripts/test-env.sh")
        except libvirt.libvirtError:
            pytest.fail("libvirt network 'default' is not defined: run scripts/test-env.sh")
        for xml in (good, bad):
            doms.append(conn.defineXML(xml))
        try:
            doms[0].create()
        except libvirt.libvirtError as exc:
            pytest.fail(f"could not start the compliant test domain {running}: {exc.get_error_message()}")
        yield {"running": running, "inactive": inactive}
    finally:
        for d in doms:
            try:
                if d.isActive():
                    d.destroy()
            except libvirt.libvirtError:
                pass
            try:
                d.undefine()
            except libvirt.libvirtError:
                pass
        conn.close()


def files(out):
    return {f["path"].rsplit("/", 1)[1]: f for f in json.loads(out)["files"]}


def test_named_running_and_inactive(host, tmp_path):
    pol = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\n")
    code, out, err = run("--policy", pol, "check", "--connect", URI, host["running"], host["inactive"], "-f", "json")
    assert code == 1, err
    got = files(out)
    run_, off = got[host["running"]], got[host["inactive"]]
    assert run_["state"] == "running" and run_["findings"] == [] and run_["error"] is None
    assert off["state"] == "inactive"
    # e1000 with no vhost: QW102 (model) and QW105 (MAC); vhost-net (QW120) is asked of virtio NICs only
    assert sorted(f["rule"] for f in off["findings"]) == ["QW102", "QW105"]
    assert list(got) == [host["running"], host["inactive"]]  # the order given
    # The compliant one alone passes.
    assert run("--policy", pol, "check", "--connect", URI, host["running"])[0] == 0


def test_running_domain_is_checked_on_its_live_xml(host, tmp_path):
    # virbr0 is only visible in the live XML (the network's resolved bridge).
    pol = write_policy(tmp_path, "version: 1\nprofiles:\n  default:\n    interfaces: {allowed_bridges: [br0]}\n")
    code, out, _ = run("--policy", pol, "check", "--connect", URI, host["running"], "-f", "json")
    assert code == 1
    [f] = files(out)[host["running"]]["findings"]
    assert f["rule"] == "QW110" and "virbr0" in f["message"]


def test_all_lists_active_and_inactive(host, tmp_path):
    pol = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\n")
    sarif = tmp_path / "host.sarif"
    code, out, _ = run("--policy", pol, "check", "--connect", URI, "--all", "-f", "json", "-o", f"sarif={sarif}")
    got = files(out)
    assert got[host["running"]]["state"] == "running" and got[host["inactive"]]["state"] == "inactive"
    assert code == 1  # at least our inactive domain fails
    paths = [f["path"] for f in json.loads(out)["files"]]
    assert paths == sorted(paths)
    doc = json.loads(sarif.read_text())
    validate_sarif(doc)
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in doc["runs"][0]["results"]}
    assert f"{URI}/{host['inactive']}" in uris
    # No domain names: the same as --all.
    assert files(run("--policy", pol, "check", "--connect", URI, "-f", "json")[1]).keys() == got.keys()


def test_connect_errors_exit_2(host, tmp_path):
    code, out, err = run("check", "--connect", URI, f"{host['running']}-absent")
    assert code == 2 and "no such domain" in out
    code, _, err = run("check", "--connect", "qemu+unix:///system?socket=/nonexistent/sock", "--all")
    assert code == 2 and "cannot connect" in err and len(err.strip().splitlines()) == 1
    code, _, err = run("check", "--connect", URI, "--all", host["running"])
    assert code == 2 and "not both" in err
