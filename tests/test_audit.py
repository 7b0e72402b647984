"""The hash-chained audit log: tamper evidence and concurrent appends."""

import json
import multiprocessing
import os

from qwamos_hooks import audit, cli


def _fill(path, n=5):
    for i in range(n):
        audit.append(path, "test", i=i)


def test_chain_verifies(tmp_path):
    path = str(tmp_path / "a.jsonl")
    _fill(path)
    assert audit.verify(path) == (5, None)
    assert cli.main(["audit", "verify", path]) == 0


def test_modification_is_detected(tmp_path):
    path = str(tmp_path / "a.jsonl")
    _fill(path)
    lines = open(path).read().splitlines()
    rec = json.loads(lines[2])
    rec["i"] = 99
    lines[2] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    open(path, "w").write("\n".join(lines) + "\n")
    n, problem = audit.verify(path)
    assert n == 2 and "line 3: record was modified" in problem
    assert cli.main(["audit", "verify", path]) == 1


def test_deletion_and_reordering_are_detected(tmp_path):
    path = str(tmp_path / "a.jsonl")
    _fill(path)
    lines = open(path).read().splitlines()
    open(path, "w").write("\n".join(lines[:1] + lines[2:]) + "\n")
    assert "line 2: chain broken" in audit.verify(path)[1]
    open(path, "w").write("\n".join([lines[1], lines[0]] + lines[2:]) + "\n")
    assert "line 1: chain broken" in audit.verify(path)[1]


def test_appending_after_a_torn_line_keeps_damage_visible(tmp_path):
    path = str(tmp_path / "a.jsonl")
    _fill(path, 2)
    with open(path, "a") as fh:
        fh.write('{"torn": tr')
    audit.append(path, "after")
    assert "not an audit record" in audit.verify(path)[1]


def _worker(args):
    path, k = args
    for i in range(20):
        audit.append(path, "concurrent", worker=k, i=i)


def test_concurrent_appends_keep_one_chain(tmp_path):
    path = str(tmp_path / "a.jsonl")
    with multiprocessing.Pool(4) as pool:
        pool.map(_worker, [(path, k) for k in range(4)])
    assert audit.verify(path) == (80, None)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
