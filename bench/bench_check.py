#!/usr/bin/env python3
"""Throughput of `qwamos-policy check` on 10,000 domain files: serial vs parallel.

Generates N files (default 10,000) in a temporary folder from a corpus of
libvirt domain XML (copies, with the domain renamed in each further copy), then
times the whole CLI process (`-j 1` vs one worker per core) and prints files/s
and wall time. Output is written as JSON to a file, as a CI job would.

Corpus: first argument, else $QWAMOS_CORPUS, else ../shared/corpus/libvirt
relative to the repository root.

  /opt/qwamos/venv/bin/python bench/bench_check.py [CORPUS] [--files N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = re.compile(rb"<name>([^<]*)</name>")


def domain_files(corpus: str) -> list:
    out = []
    for root, dirs, files in os.walk(corpus):
        dirs.sort()
        for f in sorted(files):
            if not f.endswith(".xml"):
                continue
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                head = fh.read(4096)
            if b"<domain" in head:
                out.append(p)
    return out


def generate(corpus: str, dest: str, n: int) -> int:
    srcs = domain_files(corpus)
    if not srcs:
        raise SystemExit(f"bench: no domain XML under {corpus}")
    for i in range(n):
        src = srcs[i % len(srcs)]
        with open(src, "rb") as fh:
            data = fh.read()
        if i >= len(srcs):  # a variant, not a byte copy: its own domain name
            data = NAME.sub(lambda m: b"<name>" + m.group(1) + b"-v%d</name>" % i, data, count=1)
        sub = os.path.join(dest, f"{i // 1000:02d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"d{i:05d}.xml"), "wb") as fh:
            fh.write(data)
    return len(srcs)


def run_check(folder: str, jobs: int, report: str) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "qwamos_hooks.cli", "check", folder, "-j", str(jobs),
           "--format", "json", "--output", report, "--no-progress"]
    env = dict(os.environ, PYTHONPATH=ROOT, CI="true")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 1, 2) or not os.path.exists(report):
        raise SystemExit(f"bench: check failed ({p.returncode}): {p.stderr.decode()[-500:]}")
    with open(report) as fh:
        return wall, json.load(fh)["summary"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", nargs="?", default=os.environ.get("QWAMOS_CORPUS")
                    or os.path.join(ROOT, "..", "shared", "corpus", "libvirt"))
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    tmp = tempfile.mkdtemp(prefix="qwamos-bench-")
    try:
        folder = os.path.join(tmp, "domains")
        t0 = time.perf_counter()
        distinct = generate(os.path.abspath(args.corpus), folder, args.files)
        print(f"generated {args.files} domain files from {distinct} corpus domains in {time.perf_counter() - t0:.1f} s")
        print(f"cores: {cores}; python {sys.version.split()[0]}; best and median of {args.repeat} runs, whole CLI process")
        rows = []
        for label, jobs in (("serial  (-j 1)", 1), (f"parallel (-j {cores})", cores)):
            walls, summary = [], None
            for r in range(args.repeat):
                wall, summary = run_check(folder, jobs, os.path.join(tmp, f"report-{jobs}-{r}.json"))
                walls.append(wall)
            best = min(walls)
            rows.append((label, best, statistics.median(walls), summary))
            print(f"{label}: {summary['files']} files  best {best:.2f} s ({summary['files'] / best:,.0f} files/s)  "
                  f"median {statistics.median(walls):.2f} s")
        serial, parallel = rows[0][1], rows[1][1]
        s = rows[1][3]
        print(f"speed-up: {serial / parallel:.2f}x on {cores} cores")
        print(f"findings: {s['error']} error(s), {s['warning']} warning(s), {s['files_failing']} file(s) failing, "
              f"{s['input_errors']} unreadable")
        same = open(os.path.join(tmp, "report-1-0.json"), "rb").read() == \
            open(os.path.join(tmp, f"report-{cores}-0.json"), "rb").read()
        print(f"serial and parallel reports identical: {same}")
        return 0 if same else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
