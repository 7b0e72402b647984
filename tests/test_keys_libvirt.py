"""End to end through a real libvirtd and the installed hook: a key enrolled
for a TCG test VM is delivered at `virsh start`, wiped at `virsh destroy`, and
after a PCR 16 extend `virsh start` is refused with the PCR named.

libvirtd runs the hook with a scrubbed environment, so the TPM's TCTI and the
tmpfs delivery directory come from /etc/qwamos/policy.yaml, which this test
rewrites and restores."""

import os
import shutil
import subprocess
import tempfile
import uuid as uuidlib

import pytest
import yaml

from qwamos_hooks.keys import deliver
from qwamos_hooks.paths import DEFAULT_LIB_DIR, DEFAULT_POLICY
from tests.keys_support import PY, ROOT, swtpm  # noqa: F401

HOOK = "/etc/libvirt/hooks/qemu.d/50-qwamos"
URI = "qemu:///system"


def virsh(*args, check=True):
    r = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, f"virsh {' '.join(args)}: {r.stderr.strip()}"
    return r


@pytest.fixture
def vm(swtpm):
    if not os.access(HOOK, os.X_OK):
        pytest.fail(f"{HOOK} is not installed (run install.sh)")
    r = subprocess.run(["virsh", "-c", URI, "version"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"libvirtd is not reachable at {URI} (run scripts/test-env.sh): {r.stderr.strip()}")

    uuid = str(uuidlib.uuid4())
    name = f"qwkeys-e2e-{uuid[:8]}"
    runtime = tempfile.mkdtemp(prefix="qwamos-e2e-keys-", dir="/dev/shm")
    saved = None
    if os.path.exists(DEFAULT_POLICY):
        with open(DEFAULT_POLICY, "rb") as fh:
            saved = fh.read()
    try:
        doc = yaml.safe_load(saved) if saved is not None else None
        if doc is None:
            with open(os.path.join(ROOT, "qwamos_hooks", "data", "default.yaml")) as fh:
                doc = yaml.safe_load(fh)
        doc.setdefault("keys", {}).update(tcti=swtpm.tcti, runtime_dir=runtime)
        os.makedirs(os.path.dirname(DEFAULT_POLICY), exist_ok=True)
        with open(DEFAULT_POLICY + ".qwkeys-tmp", "w") as fh:
            yaml.safe_dump(doc, fh)
        os.replace(DEFAULT_POLICY + ".qwkeys-tmp", DEFAULT_POLICY)

        xml = f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='KiB'>32768</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>"""
        xmlf = os.path.join(runtime, "dom.xml")
        with open(xmlf, "w") as fh:
            fh.write(xml)
        virsh("define", xmlf)
        env = dict(os.environ, PYTHONPATH=ROOT)
        for k in ("QWAMOS_TCTI", "QWAMOS_LIB_DIR", "QWAMOS_STATE_DIR", "QWAMOS_POLICY"):
            env.pop(k, None)
        yield {"uuid": uuid, "name": name, "runtime": runtime, "env": env}
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
        deliver.wipe("/run/qwamos", uuid, runtime)
        shutil.rmtree(os.path.join(DEFAULT_LIB_DIR, "keys", uuid), ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)
        if saved is None:
            if os.path.exists(DEFAULT_POLICY):
                os.unlink(DEFAULT_POLICY)
        else:
            with open(DEFAULT_POLICY + ".qwkeys-tmp", "wb") as fh:
                fh.write(saved)
            os.replace(DEFAULT_POLICY + ".qwkeys-tmp", DEFAULT_POLICY)
        swtpm.reset16()


def cli(env, *args):
    return subprocess.run([PY, "-m", "qwamos_hooks.cli", "keys", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_virsh_start_delivers_destroy_wipes_and_pcr_drift_refuses(vm, swtpm):
    swtpm.reset16()
    # VM given by name: the CLI resolves it through libvirt
    r = cli(vm["env"], "enroll", vm["name"], "disk", "--pcrs", "7,16")
    assert r.returncode == 0, r.stderr
    r = cli(vm["env"], "enroll", vm["uuid"], "vtpm", "--pcrs", "16", "--allow-resettable-pcrs",
            "--deliver", "keyring")
    assert r.returncode == 0, r.stderr
    keyfile = os.path.join(vm["runtime"], vm["uuid"], "disk")

    virsh("start", vm["name"])
    assert os.path.exists(keyfile) and os.stat(keyfile).st_mode & 0o777 == 0o400
    assert len(open(keyfile, "rb").read()) == 32
    serial = deliver.keyring_search(vm["uuid"], "vtpm")
    assert serial is not None and len(deliver.keyring_read(serial)) == 32

    virsh("destroy", vm["name"])
    assert not os.path.exists(keyfile)
    assert deliver.keyring_search(vm["uuid"], "vtpm") is None

    swtpm.extend16(b"firmware update")
    r = virsh("start", vm["name"], check=False)
    assert r.returncode != 0
    err = " ".join(r.stderr.split())
    assert "PCR 16 (sha256) changed since sealing" in err, err
    assert not os.path.exists(keyfile)
    assert deliver.keyring_search(vm["uuid"], "vtpm") is None
    assert "shut off" in virsh("domstate", vm["name"]).stdout
