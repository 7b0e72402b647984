#!/usr/bin/env python3
"""Policy engine figures, printed side by side in one run:

1. `qwamos-policy check` over the whole libvirt corpus (one process, all
   files) beside `virt-xml-validate` (libvirt's RelaxNG validator, one process
   per file, as it is used) on a sample of the same files.
2. The hook's whole-process time at prepare/begin (the installed hook file,
   run as libvirtd runs it) beside a bare interpreter start.

Usage: bench_policy.py [--corpus DIR] [--runs N] [--sample N]
The corpus defaults to $QWAMOS_CORPUS, else ../shared/corpus/libvirt beside
the checkout.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = "/opt/qwamos/venv/bin/python3"
HOOK = "/etc/libvirt/hooks/qemu.d/50-qwamos"
SCRUBBED = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def timed(cmd, stdin=None, env=None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def corpus_files(corpus):
    out = []
    for root, _d, files in os.walk(corpus):
        out += [os.path.join(root, f) for f in files if f.endswith(".xml")]
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=os.environ.get("QWAMOS_CORPUS") or os.path.join(ROOT, "..", "shared", "corpus", "libvirt"))
    ap.add_argument("--runs", type=int, default=5, help="runs of the corpus check")
    ap.add_argument("--sample", type=int, default=150, help="files given to virt-xml-validate")
    ap.add_argument("--hook-runs", type=int, default=60)
    a = ap.parse_args()

    files = corpus_files(a.corpus)
    if not files:
        print(f"no corpus at {a.corpus}", file=sys.stderr)
        return 2
    py = VENV_PY if os.path.exists(VENV_PY) else sys.executable
    env = dict(os.environ)
    env.pop("QWAMOS_POLICY", None)

    print(f"corpus: {len(files)} domain XML files")
    print("\n[1] whole-corpus check vs virt-xml-validate")
    check = [py, "-m", "qwamos_hooks.cli", "check", "--format", "json", a.corpus]
    runs = [timed(check, env=env) for _ in range(a.runs)]
    t_check = statistics.median(runs)
    print(f"  qwamos-policy check, {len(files)} files, one process: median {t_check:.3f} s over {a.runs} runs "
          f"(min {min(runs):.3f} s) = {t_check / len(files) * 1e3:.3f} ms/file")

    random.seed(7)
    sample = random.sample(files, min(a.sample, len(files)))
    t0 = time.perf_counter()
    for f in sample:
        subprocess.run(["virt-xml-validate", f, "domain"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t_vxv = (time.perf_counter() - t0) / len(sample)
    print(f"  virt-xml-validate, {len(sample)} sampled files, a process per file: {t_vxv * 1e3:.2f} ms/file "
          f"(whole corpus extrapolated: {t_vxv * len(files):.1f} s)")
    print(f"  => qwamos-policy is {t_vxv / (t_check / len(files)):.0f}x faster per file")

    print("\n[2] hook process at prepare/begin vs bare interpreter")
    xml = open(os.path.join(ROOT, "examples", "domains", "web-ok.xml"), "rb").read()
    with tempfile.TemporaryDirectory() as tmp:
        henv = dict(SCRUBBED, QWAMOS_LIB_DIR=os.path.join(tmp, "lib"), QWAMOS_STATE_DIR=os.path.join(tmp, "run"),
                    QWAMOS_LOG_FILE=os.path.join(tmp, "hook.log"), QWAMOS_POLICY=os.path.join(tmp, "absent.yaml"))
        hook = [HOOK] if os.access(HOOK, os.X_OK) else [py, "-I", "-m", "qwamos_hooks.hook"]
        argv = hook + ["qwamos-demo-ok", "prepare", "begin", "-"]
        timed(argv, stdin=xml, env=henv)  # warm the policy cache, as the first real event does
        bare = [timed(["/usr/bin/python3", "-c", "pass"], env=henv) for _ in range(a.hook_runs)]
        vbare = [timed([py, "-I", "-c", "pass"], env=henv) for _ in range(a.hook_runs)]
        hk = [timed(argv, stdin=xml, env=henv) for _ in range(a.hook_runs)]
        # A definition the hook has not seen before: parsed with lxml, not from the parse cache.
        fresh = [xml.replace(b"</name>", f"</name>\n  <description>run {i}</description>".encode(), 1)
                 for i in range(a.hook_runs)]
        cold = [timed(argv, stdin=x, env=henv) for x in fresh]
        imp = subprocess.run([py, "-IS", "-X", "importtime", *hook[-1:], "qwamos-demo-ok", "prepare", "begin", "-"]
                             if hook == [HOOK] else [py, "-I", "-X", "importtime", "-m", "qwamos_hooks.hook",
                                                     "qwamos-demo-ok", "prepare", "begin", "-"],
                             input=xml, capture_output=True, env=henv).stderr.decode()
    rows = (("/usr/bin/python3 -c pass", bare), ("venv python3 -I -c pass", vbare),
            ("hook prepare/begin, definition seen before", hk), ("hook prepare/begin, new definition", cold))
    for label, xs in rows:
        print(f"  {label:<45} p50 {pct(xs, 50) * 1e3:6.1f} ms   p95 {pct(xs, 95) * 1e3:6.1f} ms")
    print(f"  => hook p50 is {pct(hk, 50) / pct(bare, 50):.2f}x a bare interpreter start "
          f"({pct(cold, 50) / pct(bare, 50):.2f}x for a new definition)")
    heavy = []
    for line in imp.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            heavy.append((int(parts[1]), parts[2].rstrip()))
    print("  largest cumulative imports on the hook path (us):")
    for us, mod in sorted(heavy, reverse=True)[:6]:
        print(f"    {us:>7}  {mod.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
