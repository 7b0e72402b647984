"""The pre-commit hook definition, run the way pre-commit runs it: entry + args + file names."""

import os
import re
import shutil
import subprocess
import sys

import yaml

from .check_support import ROOT, write_tree


def hook():
    with open(os.path.join(ROOT, ".pre-commit-hooks.yaml")) as fh:
        [h] = [h for h in yaml.safe_load(fh) if h["id"] == "qwamos-policy"]
    return h


def test_hook_definition():
    h = hook()
    assert h["entry"] == "qwamos-policy check" and h["language"] == "python"
    rx = re.compile(h["files"])
    assert rx.search("vms/web.xml") and not rx.search("vms/web.xml.bak")


def test_hook_runs_like_pre_commit(tmp_path):
    h = hook()
    d = write_tree(tmp_path, {"pom.xml": "<project/>"})
    exe = shutil.which("qwamos-policy", path=os.path.dirname(sys.executable))
    assert exe, "qwamos-policy console script is not installed in this interpreter's bin/"
    cmd = h["entry"].split()
    cmd[0] = exe
    files = [os.path.join(d, f) for f in sorted(os.listdir(d)) if re.search(h["files"], f)]
    p = subprocess.run([*cmd, *h["args"], *files], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1 and "QW105" in p.stdout and "pom.xml" not in p.stdout
    only_ok = [f for f in files if f.endswith(("good.xml", "pom.xml"))]
    p = subprocess.run([*cmd, *h["args"], *only_ok], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    p = subprocess.run([*cmd, *h["args"], os.path.join(d, "pom.xml")], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and "nothing to check" in p.stderr
