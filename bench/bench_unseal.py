#!/opt/qwamos/venv/bin/python
"""Cost of unsealing a VM key at prepare/begin, as a whole hook process,
beside the same unseal done with tpm2-tools on the same swtpm.

    bench/bench_unseal.py [-n 30]

Starts its own swtpm on free loopback ports, enrols one key (PCR 7, sha256,
file delivery to tmpfs) for a benchmark VM, then times:
  hook, no keys     `qwamos-hook NAME prepare begin -` for a VM without keys
  hook, 1 key       the same for the VM with one key (policy check + unseal + delivery)
  in-process        manager.unseal_version() alone (no interpreter start-up)
  tpm2-tools        tpm2_createprimary + tpm2_load + tpm2_unseal -p pcr:sha256:7
                    (plus tpm2_flushcontext -t after each, as swtpm has no resource manager)
Prints p50/p95 in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from keys_support import SwTPM  # noqa: E402  (starts swtpm on free ports, stops it by PID)

VENV = "/opt/qwamos/venv/bin"
UUID_KEYS = "0b5e7a4c-1d2e-4f60-8a9b-c0d1e2f3a4b5"
UUID_NONE = "0b5e7a4c-1d2e-4f60-8a9b-c0d1e2f3a4b6"
XML = """<domain type='qemu'><name>{n}</name><uuid>{u}</uuid><memory unit='KiB'>32768</memory>
<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>"""


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def timed(fn, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=30)
    a = ap.parse_args()

    sw = SwTPM()
    work = tempfile.mkdtemp(prefix="qwamos-bench-")
    state = tempfile.mkdtemp(prefix="qwamos-bench-state-", dir="/dev/shm")
    try:
        env = dict(os.environ, QWAMOS_TCTI=sw.tcti, QWAMOS_LIB_DIR=os.path.join(work, "lib"),
                   QWAMOS_STATE_DIR=state, QWAMOS_POLICY=os.path.join(work, "absent.yaml"),
                   QWAMOS_LOG_FILE=os.path.join(work, "hook.log"), TPM2TOOLS_TCTI=sw.tcti)
        r = subprocess.run([f"{VENV}/qwamos-policy", "keys", "enroll", UUID_KEYS, "disk", "--pcrs", "7"],
                           env=env, capture_output=True, text=True)
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            return 1

        def hook(uuid, name, op="prepare", subop="begin"):
            p = subprocess.run([f"{VENV}/qwamos-hook", name, op, subop, "-"], env=env,
                               input=XML.format(n=name, u=uuid).encode(), capture_output=True)
            if p.returncode:
                raise SystemExit(f"hook failed: {p.stderr.decode().strip()}")

        def hook_keys():
            hook(UUID_KEYS, "bench-keys")

        res = {}
        hook(UUID_NONE, "bench-none")  # warm the policy cache and the page cache
        res["hook, no keys"] = timed(lambda: hook(UUID_NONE, "bench-none"), a.n)
        times = []
        for _ in range(a.n):
            t0 = time.perf_counter()
            hook_keys()
            times.append((time.perf_counter() - t0) * 1000)
            hook(UUID_KEYS, "bench-keys", "stopped", "end")  # wipe, untimed
        res["hook, 1 key (unseal+deliver)"] = times

        os.environ.update(QWAMOS_TCTI=sw.tcti)
        from qwamos_hooks.keys import manager, store

        kdir = store.key_dir(env["QWAMOS_LIB_DIR"], UUID_KEYS, "disk")
        meta = store.load_meta(kdir)
        gk = {"tcti": sw.tcti}
        manager.unseal_version(kdir, meta, meta["current"], gk)
        res["in-process unseal (ESAPI)"] = timed(lambda: manager.unseal_version(kdir, meta, meta["current"], gk), a.n)

        pub, priv = store.blob_path(kdir, meta["current"], "pub"), store.blob_path(kdir, meta["current"], "priv")
        prim, obj = os.path.join(state, "prim.ctx"), os.path.join(state, "obj.ctx")
        key = manager.unseal_version(kdir, meta, meta["current"], gk)

        def tools():
            for cmd in (["tpm2_createprimary", "-Q", "-C", "o", "-g", "sha256", "-G", "ecc256:aes128cfb", "-c", prim],
                        ["tpm2_flushcontext", "-t"],
                        ["tpm2_load", "-Q", "-C", prim, "-u", pub, "-r", priv, "-c", obj],
                        ["tpm2_flushcontext", "-t"]):
                subprocess.run(cmd, env=env, check=True, capture_output=True)
            out = subprocess.run(["tpm2_unseal", "-c", obj, "-p", "pcr:sha256:7"], env=env, check=True,
                                 capture_output=True).stdout
            subprocess.run(["tpm2_flushcontext", "-t"], env=env, check=True, capture_output=True)
            if out != key:
                raise SystemExit("tpm2-tools unsealed something else")

        tools()
        res["tpm2-tools (createprimary+load+unseal)"] = timed(tools, a.n)
        for f in (prim, obj):
            os.unlink(f)

        print(f"unseal at prepare/begin, swtpm over TCP loopback, n={a.n} ({os.cpu_count()} cores)")
        print(f"{'':40} {'p50 ms':>8} {'p95 ms':>8}")
        for k, v in res.items():
            print(f"{k:40} {statistics.median(v):8.1f} {pct(v, 0.95):8.1f}")
        return 0
    finally:
        sw.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
