#!/usr/bin/env python3
"""How long a hot-plugged, forbidden NIC stays usable under `qwamos-policy watch`.

Runs a watcher against the real libvirtd (qemu:///system, restricted to its
own domains) and a compliant TCG VM, then hot-plugs forbidden NICs through the
libvirt API and measures, from the moment attachDeviceFlags returns:

  usb   a usb-net NIC on user networking: time until it is gone from the live XML
        (QEMU unplugs USB at once);
  pci   an e1000 NIC on user networking: time until its link is down (the PCI
        unplug waits for the guest; without a guest OS the VM is destroyed
        after --detach-timeout, so each round uses a fresh VM).

Needs root and a running libvirtd (scripts/test-env.sh).

  /opt/qwamos/venv/bin/python bench/bench_watch.py [--usb N] [--pci N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.domains import domain_xml  # noqa: E402

PY = "/opt/qwamos/venv/bin/python"
URI = "qemu:///system"


def wait(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def start_vm(conn, name):
    xml = domain_xml(name=name).replace("</os>", "</os>\n  <features><acpi/></features>")
    dom = conn.defineXML(xml)
    dom.create()
    return dom


def remove(conn, name):
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        try:
            dom.destroy()
        except libvirt.libvirtError:
            pass
    dom.undefine()


def summary(label, values):
    ms = sorted(v * 1000 for v in values)
    print(f"{label}: n={len(ms)} p50={statistics.median(ms):.1f} ms "
          f"min={ms[0]:.1f} ms max={ms[-1]:.1f} ms")


def main() -> int:
    import libvirt

    ap = argparse.ArgumentParser()
    ap.add_argument("--usb", type=int, default=20)
    ap.add_argument("--pci", type=int, default=5)
    args = ap.parse_args()
    token = uuidlib.uuid4().hex[:6]
    prefix = f"qwbench-watch-{token}-"
    tmp = tempfile.mkdtemp(prefix="qwbench-watch-")
    ready = os.path.join(tmp, "ready")
    env = dict(os.environ, QWAMOS_LIB_DIR=os.path.join(tmp, "lib"))
    watcher = subprocess.Popen(
        [PY, "-m", "qwamos_hooks.cli", "--policy", os.path.join(ROOT, "qwamos_hooks/data/default.yaml"),
         "watch", "--domain", prefix + "*", "--detach-timeout", "1", "--rescan-interval", "0",
         "--ready-file", ready], cwd=ROOT, env=env, stderr=open(os.path.join(tmp, "watch.log"), "w"))
    conn = libvirt.open(URI)
    names = []
    try:
        if not wait(lambda: os.path.exists(ready), 20):
            print("watcher did not come up", file=sys.stderr)
            return 1
        usb, pci = [], []
        name = prefix + "usb"
        names.append(name)
        dom = start_vm(conn, name)
        for i in range(args.usb):
            mac = f"00:11:22:33:{i // 256:02x}:{i % 256:02x}"
            dom.attachDeviceFlags(f"<interface type='user'><mac address='{mac}'/><model type='usb-net'/>"
                                  "</interface>", libvirt.VIR_DOMAIN_AFFECT_LIVE)
            t1 = time.monotonic()
            if not wait(lambda: mac not in dom.XMLDesc(0), 10):
                print(f"usb round {i}: NIC still there after 10 s", file=sys.stderr)
                return 1
            usb.append(time.monotonic() - t1)
            # Let the watcher finish its re-check: a NIC attached during it counts as one more
            # detach round, and after three the watcher destroys the VM.
            time.sleep(0.3)
        for i in range(args.pci):
            name = f"{prefix}pci{i}"
            names.append(name)
            dom = start_vm(conn, name)
            mac = f"00:11:22:44:00:{i:02x}"
            dom.attachDeviceFlags(f"<interface type='user'><mac address='{mac}'/><model type='e1000'/>"
                                  "</interface>", libvirt.VIR_DOMAIN_AFFECT_LIVE)
            t1 = time.monotonic()

            def cut():
                if not dom.isActive():
                    return True
                x = dom.XMLDesc(0)
                part = x[x.find(mac):]
                return mac not in x or "<link state='down'/>" in part[:part.find("</interface>")]
            if not wait(cut, 10):
                print(f"pci round {i}: link still up after 10 s", file=sys.stderr)
                return 1
            pci.append(time.monotonic() - t1)
        v = conn.getLibVersion()
        print(f"libvirt {v // 1000000}.{v // 1000 % 1000}.{v % 1000}, TCG guests without an OS, "
              f"{os.cpu_count()} cores, polled every 10 ms")
        summary("usb-net hot-plug -> gone from the live XML", usb)
        summary("e1000 hot-plug   -> link down", pci)
        return 0
    finally:
        for n in names:
            remove(conn, n)
        os.kill(watcher.pid, signal.SIGTERM)
        watcher.wait(timeout=15)
        if sys.exc_info()[0] is not None:
            with open(os.path.join(tmp, "watch.log")) as fh:
                print("watcher log:\n" + fh.read()[-3000:], file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
