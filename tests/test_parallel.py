"""Checking across processes gives exactly the serial report; progress shows
only on a terminal and never in CI."""

import os
import random

from qwamos_hooks import scan

from .check_support import run, waive, write_policy
from .domains import domain_xml, nic


def make_tree(base, n=400):
    rnd = random.Random(7)
    root = os.path.join(str(base), "tree")
    for i in range(n):
        sub = os.path.join(root, f"g{i % 7}")
        os.makedirs(sub, exist_ok=True)
        kind = rnd.randrange(6)
        if kind == 0:
            text = domain_xml(name=f"vm{i}")
        elif kind == 1:
            text = domain_xml(name=f"vm{i}", nics=[nic(model=rnd.choice(["e1000", "rtl8139", "VIRTIO"]),
                                                       mac=f"00:16:3e:00:{i // 256:02x}:{i % 256:02x}")])
        elif kind == 2:
            text = domain_xml(name=f"vm{i}", nics=[nic(driver=None)], tail=waive(
                f"<qwamos:waive rule='QW120' reason='ticket {i}'/>"))
        elif kind == 3:
            text = domain_xml(name=f"legacy{i}", nics=[nic(model="e1000")], memory_mib=4096)
        elif kind == 4:
            text = "<domain type='qemu'><name>broken" if i % 2 else "<network><name>n</name></network>"
        else:
            text = domain_xml(name=f"vm{i}", nics=[nic("bridge", source="<source bridge='evil0'/>")])
        with open(os.path.join(sub, f"d{i:04d}.xml"), "w") as fh:
            fh.write(text)
    return root


def test_parallel_output_equals_serial(tmp_path):
    tree = make_tree(tmp_path)
    pol = write_policy(tmp_path, "version: 1\nprofiles: {default: {}}\nallow_metadata_waivers: [QW120]\n"
                                 "severity: {QW102: warning}\n"
                                 "waivers:\n  - {rule: QW102, domain: 'legacy*', reason: old, expires: 2001-01-01}\n")
    outputs = {}
    for jobs in ("1", "2", "3"):
        files = {f: tmp_path / f"{jobs}.{f}" for f in ("sarif", "junit", "github")}
        extra = [a for f, p in files.items() for a in ("-o", f"{f}={p}")]
        code, out, err = run("--policy", pol, "check", tree, "-j", jobs, "-f", "json", *extra)
        outputs[jobs] = (code, out, *(p.read_text() for p in files.values()))
    assert outputs["1"][0] == 2  # the broken files
    assert outputs["1"] == outputs["2"] == outputs["3"]
    assert '"waived": 0' not in outputs["1"][1] and "expired on 2001-01-01" in outputs["1"][1]


def test_check_files_order_and_skips(tmp_path):
    from qwamos_hooks.policy import load_policy

    tree = make_tree(tmp_path, 120)
    items = list(scan.iter_inputs([tree]))
    pol = load_policy(None)
    serial, skipped1 = scan.check_files(items, pol, jobs=1)
    parallel, skipped2 = scan.check_files(items, pol, jobs=2)
    assert serial == parallel and skipped1 == skipped2 > 0
    assert [c.path for c in serial] == sorted(c.path for c in serial)


def test_progress_on_a_terminal_only(monkeypatch):
    master, slave = os.openpty()
    try:
        tty = os.fdopen(slave, "w")
        monkeypatch.delenv("CI", raising=False)
        p = scan.Progress(10, stream=tty)
        assert p.enabled
        p.advance(5)
        p.close()
        tty.flush()
        assert b"checked 5/10 (50%)" in os.read(master, 4096)
        monkeypatch.setenv("CI", "true")
        assert not scan.Progress(10, stream=tty).enabled
        tty.close()
    finally:
        os.close(master)
    with open(os.devnull, "w") as null:
        monkeypatch.delenv("CI", raising=False)
        assert not scan.Progress(10, stream=null).enabled
