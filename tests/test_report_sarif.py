"""SARIF output: valid against the OASIS SARIF 2.1.0 schema, one descriptor per
rule, file and line on every result, levels from severity, waivers as suppressions."""

import json
import os

import jsonschema

from qwamos_hooks import rules

from .check_support import DATA, lines_of, run, waive, write_policy, write_tree
from .domains import domain_xml, nic

SCHEMA = os.path.join(DATA, "sarif-schema-2.1.0.json")


def validate(doc):
    with open(SCHEMA, encoding="utf-8") as fh:
        schema = json.load(fh)
    assert schema["$id"].endswith("sarif-schema-2.1.0.json")
    v = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    errors = sorted(v.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]


def sarif(tmp_path, *args):
    out = tmp_path / "out.sarif"
    code, stdout, stderr = run(*args, "--output", f"sarif={out}")
    doc = json.loads(out.read_text())
    validate(doc)
    return code, doc


def test_schema_rejects_a_broken_log():
    # The validator really checks: a result without a message is not SARIF.
    bad = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}}, "results": [{"ruleId": "QW1"}]}]}
    try:
        validate(bad)
    except AssertionError as exc:
        assert "message" in str(exc)
    else:
        raise AssertionError("schema accepted a result without a message")


def test_sarif_rules_results_lines_levels(tmp_path):
    d = write_tree(tmp_path)
    pol = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\nseverity: {QW102: warning, QW120: info, QW303: 'off'}\n")
    code, doc = sarif(tmp_path, "--policy", pol, "check", d)
    assert code == 1  # QW105 is still an error
    run_ = doc["runs"][0]
    descriptors = run_["tool"]["driver"]["rules"]
    ids = [r["id"] for r in descriptors]
    assert len(ids) == len(set(ids)), "one reportingDescriptor per rule ID"
    assert set(ids) == {r.id for r in rules.all_rules()} - {"QW303"}
    by_id = {r["id"]: r for r in descriptors}
    qw102 = rules.get("QW102")
    assert qw102.doc in by_id["QW102"]["help"]["text"] and qw102.hint in by_id["QW102"]["help"]["text"]
    assert by_id["QW102"]["defaultConfiguration"]["level"] == "warning"
    assert by_id["QW120"]["defaultConfiguration"]["level"] == "note"
    assert by_id["QW105"]["defaultConfiguration"]["level"] == "error"

    results = run_["results"]
    got = sorted((r["ruleId"], r["level"], r["locations"][0]["physicalLocation"]["region"]["startLine"]) for r in results)
    bad = os.path.join(d, "bad.xml")
    first_nic, second_nic = lines_of(bad, "<interface")
    assert got == sorted([("QW102", "warning", first_nic), ("QW105", "error", first_nic), ("QW120", "note", second_nic)])
    for r in results:
        assert descriptors[r["ruleIndex"]]["id"] == r["ruleId"]
        loc = r["locations"][0]["physicalLocation"]["artifactLocation"]
        assert loc["uri"] == os.path.relpath(bad).replace(os.sep, "/") or loc["uri"].endswith("/bad.xml")
    assert run_["properties"]["summary"]["waived"] == 0
    assert run_["invocations"][0]["executionSuccessful"] is True


def test_sarif_waived_findings_are_suppressed_and_counted(tmp_path):
    waived = domain_xml(name="legacy-db", nics=[nic(model="e1000")], tail=waive(
        "<qwamos:waive rule='QW102' reason='guest has no virtio driver until the 2027 upgrade'/>"))
    d = write_tree(tmp_path, {"bad.xml": waived})
    pol = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\nallow_metadata_waivers: [QW102]\n"
                                 "waivers:\n  - {rule: QW102, domain: 'nope-*', reason: unrelated}\n")
    code, doc = sarif(tmp_path, "--policy", pol, "check", d)
    assert code == 0
    results = doc["runs"][0]["results"]
    assert [r["ruleId"] for r in results] == ["QW102"]
    sup = results[0]["suppressions"]
    assert sup[0]["kind"] == "inSource"
    assert sup[0]["justification"] == "guest has no virtio driver until the 2027 upgrade"
    summary = doc["runs"][0]["properties"]["summary"]
    assert summary["waived"] == 1 and summary["error"] == 0


def test_sarif_policy_waiver_is_external(tmp_path):
    d = write_tree(tmp_path)
    pol = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\nwaivers:\n"
                                 "  - {rule: QW105, domain: 'legacy-*', reason: 'vendor OUI pinned by licence', expires: '2999-01-01'}\n")
    code, doc = sarif(tmp_path, "--policy", pol, "check", d)
    assert code == 1  # QW102 and QW120 still fail
    sups = {r["ruleId"]: r.get("suppressions") for r in doc["runs"][0]["results"]}
    assert sups["QW105"] == [{"kind": "external", "justification": "vendor OUI pinned by licence",
                              "properties": {"origin": "policy", "where": "policy waivers[0]", "expires": "2999-01-01"}}]
    assert sups["QW102"] is None


def test_sarif_input_error_is_a_notification(tmp_path):
    d = write_tree(tmp_path, {"broken.xml": "<domain><name>x</name"})
    code, doc = sarif(tmp_path, "check", d)
    assert code == 2
    inv = doc["runs"][0]["invocations"][0]
    assert inv["executionSuccessful"] is False
    notes = inv["toolExecutionNotifications"]
    assert len(notes) == 1 and notes[0]["level"] == "error" and "broken.xml" in notes[0]["message"]["text"]


def test_sarif_absolute_paths_are_file_uris(tmp_path):
    d = write_tree(tmp_path, {"we ird.xml": domain_xml(name="w", nics=[nic(model="rtl8139")])})
    code, doc = sarif(tmp_path, "check", os.path.join(os.path.abspath(d), "we ird.xml"))
    assert code == 1
    uri = doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri.startswith("file:///") and uri.endswith("/we%20ird.xml")
