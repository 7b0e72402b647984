"""JUnit output: parses (ElementTree and lxml), one suite per file, one case per
enabled rule, failures at the --fail-on threshold, waived findings skipped."""

import xml.etree.ElementTree as ET

from lxml import etree

from qwamos_hooks import rules

from .check_support import run, waive, write_policy, write_tree
from .domains import domain_xml, nic


def junit(tmp_path, *args):
    out = tmp_path / "out.xml"
    code, _, _ = run(*args, "--output", f"junit={out}")
    etree.parse(str(out))  # a second, stricter parser must accept it too
    return code, ET.parse(out).getroot()


def suite(root, name):
    [s] = [s for s in root.findall("testsuite") if s.get("name").endswith(name)]
    return s


def test_junit_structure_and_failures(tmp_path):
    d = write_tree(tmp_path)
    code, root = junit(tmp_path, "check", d)
    assert code == 1
    assert root.tag == "testsuites" and len(root.findall("testsuite")) == 2
    n_rules = len(rules.all_rules())
    good, bad = suite(root, "good.xml"), suite(root, "bad.xml")
    assert len(good.findall("testcase")) == n_rules and good.get("failures") == "0"
    failed = sorted(tc.get("name").split()[0] for tc in bad.findall("testcase") if tc.find("failure") is not None)
    assert failed == ["QW102", "QW105", "QW120"]
    assert bad.get("failures") == "3" and root.get("failures") == "3" and root.get("tests") == str(2 * n_rules)
    f = [tc for tc in bad.findall("testcase") if tc.get("name").startswith("QW105")][0]
    assert f.get("line") and "00:16:3e:00:00:01" in f.find("failure").text


def test_junit_warning_passes_unless_fail_on_warning(tmp_path):
    d = write_tree(tmp_path, {"bad.xml": domain_xml(name="w", nics=[nic(model="e1000")])})
    pol = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\nseverity: {QW102: warning}\n")
    code, root = junit(tmp_path, "--policy", pol, "check", d)
    assert code == 0 and root.get("failures") == "0"
    tc = [t for t in suite(root, "bad.xml").findall("testcase") if t.get("name").startswith("QW102")][0]
    assert "QW102 [warning]" in tc.find("system-out").text
    code, root = junit(tmp_path, "--policy", pol, "check", d, "--fail-on", "warning")
    assert code == 1 and root.get("failures") == "1"


def test_junit_waived_is_skipped_with_reason(tmp_path):
    xml = domain_xml(name="w", nics=[nic(model="e1000")], tail=waive(
        "<qwamos:waive rule='QW102' reason='appliance ships an e1000 driver only'/>"))
    d = write_tree(tmp_path, {"bad.xml": xml})
    pol = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\nallow_metadata_waivers: [QW102]\n")
    code, root = junit(tmp_path, "--policy", pol, "check", d)
    assert code == 0
    tc = [t for t in suite(root, "bad.xml").findall("testcase") if t.get("name").startswith("QW102")][0]
    assert "appliance ships an e1000 driver only" in tc.find("skipped").get("message")
    assert root.get("skipped") == "1" and root.get("waived") == "1"


def test_junit_input_error_and_hostile_text(tmp_path):
    # Control characters in an error message must not break the XML.
    d = write_tree(tmp_path, {"junk.xml": "\x01\x02<domain>\x00\x7f"})
    code, root = junit(tmp_path, "check", d, f"{d}/no\x01such\x1b.xml")
    assert code == 2
    s = suite(root, "junk.xml")
    assert s.get("errors") == "1" and s.find("testcase/error") is not None
    missing = suite(root, "such\ufffd.xml")
    assert "no such file" in missing.find("testcase/error").get("message")
