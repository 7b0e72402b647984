"""Shell completion generated from the parser: valid bash that really completes."""

import os
import subprocess

from qwamos_hooks import cli, completion, rules

from .check_support import ROOT

STATIC = os.path.join(ROOT, "contrib", "completion", "qwamos-policy.bash")


def complete(script: str, *words: str) -> list:
    """Run the completion function in a real bash for `qwamos-policy WORDS...` (last word = cursor)."""
    arr = " ".join("'" + w.replace("'", "'\\''") + "'" for w in ("qwamos-policy", *words))
    prog = f'{script}\nCOMP_WORDS=({arr}); COMP_CWORD={len(words)}; _qwamos_policy; printf "%s\\n" "${{COMPREPLY[@]}}"\n'
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", prog], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return [w for w in p.stdout.splitlines() if w]


def test_generated_bash_completes():
    script = completion.bash(cli.build_parser())
    assert complete(script, "ch") == ["check"]
    assert complete(script, "check", "--format", "") == ["text", "json", "sarif", "junit", "github"]
    assert complete(script, "--policy", "p.yaml", "check", "--fa") == ["--fail-on"]
    assert set(complete(script, "check", "-j", "2", "--")) >= {"--format", "--output", "--connect", "--all", "--jobs"}
    assert complete(script, "policy", "v") == ["validate"]
    assert complete(script, "explain", "qw10") == [r.id for r in rules.all_rules() if r.id.startswith("QW10")]


def test_static_scripts_cover_check():
    with open(STATIC) as fh:
        static = fh.read()
    subprocess.run(["bash", "-n", STATIC], check=True)
    for opt in ("--format", "--output", "--fail-on", "--connect", "--all", "--jobs", "--no-progress"):
        assert opt in static, f"{opt} missing: regenerate with `qwamos-policy completion bash > {STATIC}`"
    assert complete(static, "check", "--format", "s") == ["sarif"]
    with open(os.path.join(ROOT, "contrib", "completion", "_qwamos-policy")) as fh:
        assert fh.readline().startswith("#compdef qwamos-policy")
