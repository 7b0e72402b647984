#!/opt/qwamos/venv/bin/python
"""Firewall apply cost per VM event, with 1, 100 and 1000 VMs registered, and
our one-transaction apply beside the naive way (one `nft` process per rule).

Runs in a network namespace it creates and deletes, so the host's ruleset is
never touched.  usage: bench/bench_firewall.py [--reps N]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PY = "/opt/qwamos/venv/bin/python"


def fake_vm(i: int, profile: str = "nat") -> dict:
    """One VM with one tap, a MAC and a declared IPv4 address."""
    from qwamos_hooks.firewall import render

    uuid = f"00000000-0000-4000-8000-{i:012x}"
    tap = f"vnet{i}"
    return render.vm_state(uuid, f"bench-{i}", {"profile": profile},
                           [{"tap": tap, "mac": f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                             "bridge": "br0", "bridge_mac": "02:00:00:00:00:01", "ips": [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"]}])


def inner(reps: int) -> None:
    from qwamos_hooks.firewall import apply, render

    glob = render.global_config({})
    apply.ensure_tables(glob)
    registered = 0
    rows = []
    for n in (1, 100, 1000):
        # Register background VMs up to n - 1 (in batches), then time events for VM number n.
        batch = []
        while registered < n - 1:
            batch += render.vm_commands(fake_vm(registered + 1), glob)
            registered += 1
            if len(batch) > 20000:
                apply.run(batch)
                batch = []
        apply.run(batch)
        probe = fake_vm(900000)
        t_apply, t_remove = [], []
        for _ in range(reps):
            apply._ctx = None  # each hook event is a new process: no libnftables cache carried over
            t0 = time.perf_counter()
            apply.run(render.base_commands(glob) + render.vm_commands(probe, glob))  # start/begin
            t1 = time.perf_counter()
            apply._ctx = None
            apply.run(render.remove_commands(probe["interfaces"], allowlist=False))  # stopped/end
            t2 = time.perf_counter()
            t_apply.append((t1 - t0) * 1000)
            t_remove.append((t2 - t1) * 1000)
        rows.append((n, statistics.median(t_apply), statistics.median(t_remove)))
    base_a, base_r = rows[0][1], rows[0][2]
    print("per-VM event cost (median of %d, ms), one libnftables transaction each:" % reps)
    print(f"{'VMs registered':>15} {'apply':>9} {'remove':>9} {'apply ratio':>12} {'remove ratio':>13}")
    for n, a, r in rows:
        print(f"{n:>15} {a:>9.2f} {r:>9.2f} {a / base_a:>12.2f} {r / base_r:>13.2f}")

    # Naive: the same rules, one `nft` process per command (what a shell script does).
    probe = fake_vm(900001)
    cmds = render.vm_commands(probe, glob)
    t0 = time.perf_counter()
    for c in cmds:
        p = subprocess.run(["nft", "-j", "-f", "-"], input=json.dumps(render.transaction([c])),
                           capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"naive apply failed: {p.stderr}")
    naive = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    apply.run(render.base_commands(glob) + render.remove_commands(probe["interfaces"]))
    apply._ctx = None
    t1 = time.perf_counter()
    apply.run(render.base_commands(glob) + render.vm_commands(probe, glob))
    ours = (time.perf_counter() - t1) * 1000
    print(f"\none VM ({len(cmds)} nft commands) with {registered + 1} VMs registered:")
    print(f"  ours, one transaction:       {ours:8.2f} ms (atomic: no window)")
    print(f"  naive, one nft per command:  {naive:8.2f} ms (not atomic: {len(cmds)} windows) = {naive / ours:.0f}x")


def imports() -> None:
    """What the hook pays before doing anything: the stage module alone must not
    pull nftables or pyroute2 in."""
    def t(code):
        best = 1e9
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([PY, "-I", "-c", f"import sys; sys.path.insert(0, {ROOT!r}); {code}"], check=True)
            best = min(best, time.perf_counter() - t0)
        return best * 1000
    base = t("pass")
    stage = t("import qwamos_hooks.firewall.stage as s; assert 'nftables' not in sys.modules and 'pyroute2' not in sys.modules")
    nft = t("import qwamos_hooks.firewall.apply as a; a._nft()")
    pr = t("import pyroute2")
    print("\nimport cost (best of 5 process starts, ms):")
    print(f"  interpreter alone:                 {base:7.1f}")
    print(f"  + firewall.stage (every event):    {stage - base:7.1f}")
    print(f"  + nftables (start/stop events):    {nft - base:7.1f}")
    print(f"  + pyroute2 (started/begin only):   {pr - base:7.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        inner(args.reps)
        return
    if os.geteuid() != 0:
        raise SystemExit("run as root (it creates a network namespace)")
    ns = f"qwbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, PY, os.path.abspath(__file__), "--inner",
                        "--reps", str(args.reps)], check=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns])
    imports()


if __name__ == "__main__":
    main()
