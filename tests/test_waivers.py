"""Waivers: a reason is required, expiry stops them, domain metadata may only
waive what the policy allows, and a waived finding never blocks the hook."""

import datetime
import io
import json

import pytest

from qwamos_hooks import domain, engine, hook
from qwamos_hooks.errors import PolicyError
from qwamos_hooks.policy import load_policy

from .check_support import run, waive, write_policy, write_tree
from .domains import domain_xml, nic

D = datetime.date
LEGACY = domain_xml(name="legacy-db", nics=[nic(model="e1000")])  # QW102 only


def policy(tmp_path, body: str):
    return load_policy(write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\n" + body))


def evaluate(xml, pol, today=D(2026, 6, 1)):
    return engine.evaluate(domain.parse_bytes(xml.encode(), "t.xml"), pol, today=today)


def test_policy_waiver_applies_by_rule_and_domain_glob(tmp_path):
    pol = policy(tmp_path, "waivers:\n  - {rule: QW102, domain: 'legacy-*', reason: 'no virtio driver in guest'}\n")
    r = evaluate(LEGACY, pol)
    [f] = r.findings
    assert f.waived and f.waiver.reason == "no virtio driver in guest" and f.waiver.origin == "policy"
    assert r.errors == () and r.active == () and r.waived == (f,)
    # Another name, or another rule, is not covered.
    other = evaluate(LEGACY.replace("legacy-db", "web-1"), pol)
    assert [x.rule for x in other.errors] == ["QW102"] and not other.notes
    two = evaluate(domain_xml(name="legacy-db", nics=[nic(model="e1000", mac="00:16:3e:00:00:01")]), pol)
    assert [x.rule for x in two.errors] == ["QW105"]


def test_policy_waiver_domain_list(tmp_path):
    pol = policy(tmp_path, "waivers:\n  - {rule: QW102, domain: [a, legacy-db], reason: r}\n")
    assert evaluate(LEGACY, pol).errors == ()


def test_expiry_boundary_and_note(tmp_path):
    pol = policy(tmp_path, "waivers:\n  - {rule: QW102, domain: '*', reason: r, expires: 2026-06-01}\n")
    before = evaluate(LEGACY, pol, today=D(2026, 5, 31))
    assert before.errors == () and not before.notes
    on = evaluate(LEGACY, pol, today=D(2026, 6, 1))
    assert [f.rule for f in on.errors] == ["QW102"]
    [note] = on.notes
    assert note.kind == "expired" and "expired on 2026-06-01" in note.message and note.origin == "policy"


def test_expired_policy_waiver_is_quiet_when_nothing_matches(tmp_path):
    # A '*' waiver must not add a note to every compliant file.
    pol = policy(tmp_path, "waivers:\n  - {rule: QW102, domain: '*', reason: r, expires: 2000-01-01}\n")
    r = evaluate(domain_xml(name="ok"), pol)
    assert r.findings == () and r.notes == ()


def test_policy_waiver_schema_requires_reason_and_date(tmp_path):
    for body, where in [
        ("waivers:\n  - {rule: QW102, domain: '*'}\n", "reason"),
        ("waivers:\n  - {rule: QW102, domain: '*', reason: '  '}\n", "waivers.0.reason"),
        ("waivers:\n  - {rule: QW102, reason: r}\n", "domain"),
        ("waivers:\n  - {rule: QW102, domain: '*', reason: r, expires: next-year}\n", "waivers.0.expires"),
        ("waivers:\n  - {rule: qw102, domain: '*', reason: r}\n", "waivers.0.rule"),
        ("allow_metadata_waivers: [QW1]\n", "allow_metadata_waivers.0"),
    ]:
        with pytest.raises(PolicyError) as exc:
            policy(tmp_path, body)
        assert where in str(exc.value), (body, str(exc.value))


def test_invalid_calendar_date_does_not_apply(tmp_path):
    pol = policy(tmp_path, "waivers:\n  - {rule: QW102, domain: '*', reason: r, expires: '2026-02-30'}\n")
    r = evaluate(LEGACY, pol)
    assert [f.rule for f in r.errors] == ["QW102"] and r.notes[0].kind == "bad-expiry"


def test_metadata_waivers_are_refused_unless_the_policy_allows_the_rule(tmp_path):
    xml = domain_xml(name="legacy-db", nics=[nic(model="e1000")], tail=waive(
        "<qwamos:waive rule='QW102' reason='guest driver'/>"))
    default = evaluate(xml, load_policy(None))
    assert [f.rule for f in default.errors] == ["QW102"]
    assert [n.kind for n in default.notes] == ["not-allowed"]
    other_rule = evaluate(xml, policy(tmp_path, "allow_metadata_waivers: [QW105]\n"))
    assert [f.rule for f in other_rule.errors] == ["QW102"]
    allowed = evaluate(xml, policy(tmp_path, "allow_metadata_waivers: [QW102]\n"))
    assert allowed.errors == () and allowed.waived[0].waiver.origin == "metadata"
    assert allowed.waived[0].waiver.line == xml.splitlines().index(
        next(line for line in xml.splitlines() if "qwamos:waive" in line)) + 1


def test_metadata_waiver_without_reason_does_not_apply_and_is_reported(tmp_path):
    xml = domain_xml(name="legacy-db", nics=[nic(model="e1000")], tail=waive(
        "<qwamos:waive rule='QW102'/><qwamos:waive rule='QW102' reason='   '/><qwamos:waive rule='QW999' reason='x'/>"))
    r = evaluate(xml, policy(tmp_path, "allow_metadata_waivers: [QW102]\n"))
    assert [f.rule for f in r.errors] == ["QW102"]
    assert sorted(n.kind for n in r.notes) == ["no-reason", "no-reason", "unknown-rule"]


def test_metadata_waiver_expiry(tmp_path):
    pol = policy(tmp_path, "allow_metadata_waivers: [QW102]\n")
    xml = domain_xml(name="legacy-db", nics=[nic(model="e1000")], tail=waive(
        "<qwamos:waive rule='QW102' reason='r' expires='2026-01-01'/>"))
    assert evaluate(xml, pol, today=D(2025, 12, 31)).errors == ()
    late = evaluate(xml, pol, today=D(2026, 1, 1))
    assert [f.rule for f in late.errors] == ["QW102"] and late.notes[0].kind == "expired"


def test_policy_waiver_wins_over_metadata(tmp_path):
    pol = policy(tmp_path, "allow_metadata_waivers: [QW102]\n"
                           "waivers:\n  - {rule: QW102, domain: '*', reason: admin}\n")
    xml = domain_xml(name="x", nics=[nic(model="e1000")], tail=waive(
        "<qwamos:waive rule='QW102' reason='author'/>"))
    assert evaluate(xml, pol).waived[0].waiver.reason == "admin"


def test_cli_counts_waived_and_says_expired(tmp_path):
    pol = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\nwaivers:\n"
                                 "  - {rule: QW105, domain: legacy-db, reason: 'vendor OUI'}\n"
                                 "  - {rule: QW120, domain: legacy-db, reason: 'old', expires: 2001-01-01}\n")
    d = write_tree(tmp_path)
    code, out, _ = run("--policy", pol, "check", d)
    assert code == 1
    assert "QW105 [error, waived]" in out and "waived by policy waivers[0]: vendor OUI" in out
    assert "expired on 2001-01-01" in out
    assert "2 error(s)" in out and "1 waived" in out
    code, out, _ = run("--policy", pol, "check", d, "-f", "json")
    s = json.loads(out)["summary"]
    assert (s["error"], s["waived"], s["waived_by_severity"]["error"], s["waiver_notes"]) == (2, 1, 1, 1)


def test_waived_finding_does_not_block_the_hook(tmp_path):
    xml = domain_xml(name="legacy-db", nics=[nic(model="e1000")])
    env = {"QWAMOS_STATE_DIR": str(tmp_path / "run"), "QWAMOS_LIB_DIR": str(tmp_path / "lib"),
           "QWAMOS_LOG_FILE": str(tmp_path / "hook.log"), "PATH": "/usr/bin:/bin"}
    # migrate/begin can block and runs the full policy check, with no other actions.
    env["QWAMOS_POLICY"] = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\n", "plain.yaml")
    code, msg = hook.run(["legacy-db", "migrate", "begin", "-"], io.BytesIO(xml.encode()), env)
    assert code == 1 and "QW102" in msg
    env["QWAMOS_POLICY"] = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\nwaivers:\n"
                                                  "  - {rule: QW102, domain: legacy-db, reason: 'driver'}\n", "w.yaml")
    code, msg = hook.run(["legacy-db", "migrate", "begin", "-"], io.BytesIO(xml.encode()), env)
    assert (code, msg) == (0, "")
    # The domain's own metadata cannot do the same under a policy that does not allow it.
    env["QWAMOS_POLICY"] = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\n", "plain.yaml")
    selfwaived = domain_xml(name="legacy-db", nics=[nic(model="e1000")], tail=waive(
        "<qwamos:waive rule='QW102' reason='trust me'/>"))
    code, msg = hook.run(["legacy-db", "migrate", "begin", "-"], io.BytesIO(selfwaived.encode()), env)
    assert code == 1 and "QW102" in msg


def test_unquoted_yaml_date_is_accepted(tmp_path):
    pol = policy(tmp_path, "waivers:\n  - rule: QW102\n    domain: '*'\n    reason: r\n    expires: 2999-12-31\n")
    assert pol.waivers[0]["expires"] == "2999-12-31"
    assert evaluate(LEGACY, pol).errors == ()
