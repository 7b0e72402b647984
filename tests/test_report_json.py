"""JSON report (documented schema), several reports in one run, severity
overrides and --fail-on, and the exit codes."""

import json
import os

import jsonschema

from .check_support import ROOT, run, write_policy, write_tree
from .domains import domain_xml, nic

REPORT_SCHEMA = os.path.join(ROOT, "schemas", "report.schema.json")


def validate(doc):
    with open(REPORT_SCHEMA, encoding="utf-8") as fh:
        jsonschema.Draft202012Validator(json.load(fh)).validate(doc)


def test_json_matches_documented_schema(tmp_path):
    d = write_tree(tmp_path, {"broken.xml": "<domain>"})
    code, out, _ = run("check", d, "--format", "json")
    assert code == 2
    doc = json.loads(out)
    validate(doc)
    s = doc["summary"]
    assert (s["files"], s["input_errors"], s["error"], s["waived"]) == (3, 1, 3, 0)
    assert doc["policy"]["source"] == "built-in default" and doc["fail_on"] == "error"
    assert [f["path"].rsplit("/", 1)[1] for f in doc["files"]] == ["bad.xml", "broken.xml", "good.xml"]


def test_several_formats_in_one_run(tmp_path):
    d = write_tree(tmp_path)
    outs = {f: tmp_path / f"r.{f}" for f in ("sarif", "junit", "github", "text")}
    args = []
    for fmt, path in outs.items():
        args += ["--output", f"{fmt}={path}"]
    code, stdout, _ = run("check", d, "--format", "json", *args)
    assert code == 1
    doc = json.loads(stdout)
    assert doc["summary"]["error"] == 3
    assert len(json.loads(outs["sarif"].read_text())["runs"][0]["results"]) == 3
    assert 'failures="3"' in outs["junit"].read_text()
    assert outs["github"].read_text().count("::error ") == 3
    # The same report whether it goes to stdout or to a file.
    _, text_stdout, _ = run("check", d)
    assert outs["text"].read_text() == text_stdout


def test_plain_output_path_takes_the_main_report(tmp_path):
    d = write_tree(tmp_path)
    main = tmp_path / "main.json"
    code, stdout, _ = run("check", d, "-f", "json", "-o", main, "-o", f"github={tmp_path / 'gh.txt'}")
    assert code == 1 and stdout == ""
    assert json.loads(main.read_text())["summary"]["error"] == 3
    code, _, err = run("check", d, "-o", tmp_path / "a", "-o", tmp_path / "b")
    assert code == 2 and "only one plain PATH" in err
    code, _, err = run("check", d, "-o", "sarif=")
    assert code == 2 and "missing path" in err
    code, _, err = run("check", d, "-o", f"junit={tmp_path}/no/such/dir/x.xml")
    assert code == 2 and "cannot write report" in err


def test_severity_override_and_fail_on(tmp_path):
    only_model = domain_xml(name="m", nics=[nic(model="e1000")])
    d = write_tree(tmp_path, {"bad.xml": only_model})
    assert run("check", d)[0] == 1
    warn = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\nseverity: {QW102: warning}\n", "warn.yaml")
    code, out, _ = run("--policy", warn, "check", d, "-f", "json")
    assert code == 0 and json.loads(out)["summary"]["warning"] == 1
    assert run("--policy", warn, "check", d, "--fail-on", "warning")[0] == 1
    info = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\nseverity: {QW102: info}\n", "info.yaml")
    code, out, _ = run("--policy", info, "check", d, "--fail-on", "warning", "-f", "json")
    assert code == 0 and json.loads(out)["summary"]["info"] == 1
    off = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\nseverity: {QW102: 'off'}\n", "off.yaml")
    code, out, _ = run("--policy", off, "check", d, "-f", "json")
    assert code == 0 and all(not f["findings"] for f in json.loads(out)["files"])


def test_nothing_checked_is_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "other.xml").write_text("<network><name>n</name></network>")
    code, _, err = run("check", empty)
    assert code == 2 and "no domain XML found" in err and "1 other XML file(s) skipped" in err
    assert run("check")[0] == 2
    assert run("check", "--all", str(empty))[0] == 2
    assert run("check", empty / "missing.xml")[0] == 2


def test_all_rules_off_is_not_a_pass(tmp_path):
    from qwamos_hooks import rules

    offs = "".join(f"  {r.id}: 'off'\n" for r in rules.all_rules())
    pol = write_policy(tmp_path, f"version: 1\nprofiles: {{default: {{}}}}\nseverity:\n{offs}", "off.yaml")
    code, _, err = run("--policy", pol, "check", write_tree(tmp_path))
    assert code == 2 and "every rule is turned off" in err
