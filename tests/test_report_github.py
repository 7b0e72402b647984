"""GitHub workflow commands: one annotation per finding, escaped per the Actions toolkit."""

from qwamos_hooks.report import github_report as gh

from .check_support import lines_of, run, write_policy, write_tree


def test_escaping_rules():
    assert gh.escape_data("50% a\r\nb") == "50%25 a%0D%0Ab"
    assert gh.escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"
    line = gh.command("error", "x\ny", file="dir/a,b:c.xml", line="3", title="QW102")
    assert line == "::error file=dir/a%2Cb%3Ac.xml,line=3,title=QW102::x%0Ay\n"


def test_github_annotations(tmp_path):
    d = write_tree(tmp_path)
    pol = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\nseverity: {QW120: info}\n"
                                 "waivers:\n  - {rule: QW102, domain: legacy-db, reason: 'driver, pending'}\n")
    code, out, _ = run("--policy", pol, "check", d, "--format", "github")
    assert code == 1
    lines = out.splitlines()
    cmds = [l for l in lines if l.startswith("::")]
    assert all("\n" not in c for c in cmds)
    bad = f"{d}/bad.xml"
    n1, n2 = lines_of(bad, "<interface")
    assert any(c.startswith(f"::error file={bad.replace(':', '%3A')},line={n1},title=QW105::") for c in cmds)
    assert any(c.startswith(f"::notice file={bad},line={n2},title=QW120::") for c in cmds)
    waived = [c for c in cmds if "title=QW102 (waived)" in c]
    assert len(waived) == 1 and waived[0].startswith("::notice ") and "driver, pending" in waived[0]
    assert lines[-1].endswith("1 waived, 1 file(s) failing, 0 unreadable")
