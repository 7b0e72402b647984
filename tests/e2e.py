"""Shared plumbing for tests that drive the real libvirtd through virsh."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import pytest

URI = "qemu:///system"
HOOK = "/etc/libvirt/hooks/qemu.d/50-qwamos"
HOST_POLICY = "/etc/qwamos/policy.yaml"
PREFIX = "qwtest-"


def virsh(*args, check=False):
    p = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)} failed: {p.stderr.strip()}")
    return p


def require_host():
    """Fail (never skip) when the real stack is not there."""
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root")
    if virsh("version").returncode != 0:
        pytest.fail("libvirtd is not reachable at qemu:///system: run scripts/test-env.sh")
    if not os.access(HOOK, os.X_OK):
        pytest.fail(f"{HOOK} is not installed: run ./install.sh")


def define(name: str, xml: str) -> None:
    """virsh define from a string (through a temporary file, removed again)."""
    fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".xml")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(xml)
        virsh("define", path, check=True)
    finally:
        os.unlink(path)


def stop_process(proc, timeout: float = 10) -> None:
    """End a process this test started: SIGTERM, then SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def state(name: str) -> str:
    p = virsh("domstate", name)
    return p.stdout.strip() if p.returncode == 0 else "undefined"


def qemu_running(name: str) -> bool:
    p = subprocess.run(["pgrep", "-f", f"qemu-system.*guest={name},"], capture_output=True)
    return p.returncode == 0


def cleanup(name: str) -> None:
    if state(name) == "running":
        virsh("destroy", name)
    virsh("undefine", name, "--nvram")
    virsh("undefine", name)


class PolicySwap:
    """Install a policy on the host for one test and put the previous one back."""

    def __init__(self):
        self.backup = None
        self.had = os.path.exists(HOST_POLICY)
        if self.had:
            self.backup = HOST_POLICY + ".qwtest-backup"
            shutil.copy2(HOST_POLICY, self.backup)

    def write(self, text: str) -> None:
        os.makedirs(os.path.dirname(HOST_POLICY), exist_ok=True)
        tmp = HOST_POLICY + ".qwtest-tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, HOST_POLICY)

    def remove(self) -> None:
        if os.path.exists(HOST_POLICY):
            os.unlink(HOST_POLICY)

    def restore(self) -> None:
        if self.had:
            os.replace(self.backup, HOST_POLICY)
        elif os.path.exists(HOST_POLICY):
            os.unlink(HOST_POLICY)


def wait_for(pred, timeout=10.0, step=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()
