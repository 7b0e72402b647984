"""qwamos-policy: documented exit codes and the admin subcommands."""

import json

import pytest

from qwamos_hooks import cli

from .domains import domain_xml, nic
from .test_corpus import BUILTIN


@pytest.fixture
def files(tmp_path):
    (tmp_path / "ok.xml").write_text(domain_xml())
    (tmp_path / "bad.xml").write_text(domain_xml(nics=[nic(model="e1000")]))
    (tmp_path / "broken.xml").write_text("<domain><name>x</name>")
    (tmp_path / "net.xml").write_text("<network><name>n</name></network>")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "n.xml").write_text("<network/>")
    (tmp_path / "policy.yaml").write_text("version: 1\nprofiles: {default: {interfaces: {allowed_models: [e1000]}}}\n")
    (tmp_path / "badpolicy.yaml").write_text("version: 1\nprofiles: {default: {interfaces: {allowed_models: e1000}}}\n")
    return tmp_path


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_exit_codes(files, capsys, monkeypatch):
    monkeypatch.setenv("QWAMOS_POLICY", BUILTIN)
    assert run(capsys, "check", files / "ok.xml")[0] == 0
    code, out, _ = run(capsys, "check", files / "bad.xml")
    assert code == 1 and "bad.xml:" in out and "QW102" in out and "hint:" in out
    assert run(capsys, "check", files / "broken.xml")[0] == 2
    assert run(capsys, "check", files / "net.xml")[0] == 2  # named explicitly: not a domain
    code, _, err = run(capsys, "check", files / "empty")
    assert code == 2 and "no domain XML" in err
    assert run(capsys, "check", files / "missing.xml")[0] == 2
    assert run(capsys, "check", files / "ok.xml", files / "broken.xml")[0] == 2  # input error wins
    assert run(capsys, "--policy", files / "policy.yaml", "check", files / "bad.xml")[0] == 0
    code, _, err = run(capsys, "--policy", files / "badpolicy.yaml", "check", files / "ok.xml")
    assert code == 2 and "badpolicy.yaml:2" in err
    assert run(capsys, "--policy", files / "nope.yaml", "check", files / "ok.xml")[0] == 2
    assert run(capsys)[0] == 2
    assert run(capsys, "check")[0] == 2
    assert run(capsys, "frobnicate")[0] == 2


def test_folder_skips_other_xml(files, capsys, monkeypatch):
    monkeypatch.setenv("QWAMOS_POLICY", BUILTIN)
    (files / "broken.xml").unlink()
    (files / "net.xml").unlink()
    code, out, _ = run(capsys, "check", "--format", "json", files)
    doc = json.loads(out)
    assert code == 1
    assert sorted(f["path"].rsplit("/", 1)[-1] for f in doc["files"]) == ["bad.xml", "ok.xml"]


def test_policy_env_variable(files, capsys, monkeypatch):
    monkeypatch.setenv("QWAMOS_POLICY", str(files / "policy.yaml"))
    assert run(capsys, "check", files / "bad.xml")[0] == 0


def test_rules_and_explain(capsys):
    code, out, _ = run(capsys, "rules")
    assert code == 0 and "QW501" in out and "QW102" in out
    code, out, _ = run(capsys, "explain", "qw102")
    assert code == 0 and "case-insensitively" in out and "fix:" in out
    assert run(capsys, "explain", "QW999")[0] == 2


def test_policy_validate_and_show(files, capsys):
    code, out, _ = run(capsys, "policy", "validate", files / "policy.yaml")
    assert code == 0 and "valid" in out
    code, _, err = run(capsys, "policy", "validate", files / "badpolicy.yaml")
    assert code == 2 and "profiles.default.interfaces.allowed_models" in err
    code, out, _ = run(capsys, "--policy", files / "policy.yaml", "policy", "show")
    assert code == 0 and json.loads(out)["settings"]["interfaces"]["allowed_models"] == ["e1000"]


def test_host_policy_is_the_default_when_present(tmp_path, capsys, monkeypatch):
    from qwamos_hooks import paths

    host = tmp_path / "host.yaml"
    host.write_text("version: 1\nprofiles: {default: {interfaces: {allowed_models: [e1000]}}}\n")
    bad = tmp_path / "bad.xml"
    bad.write_text(domain_xml(nics=[nic(model="e1000")]))
    monkeypatch.delenv("QWAMOS_POLICY", raising=False)
    monkeypatch.setattr(paths, "DEFAULT_POLICY", str(host))
    assert run(capsys, "check", bad)[0] == 0  # judged by the host policy
    monkeypatch.setattr(paths, "DEFAULT_POLICY", str(tmp_path / "absent.yaml"))
    assert run(capsys, "check", bad)[0] == 1  # no host policy: the built-in default
