"""install.sh: idempotent, leaves other tools' hooks and edited policies alone,
--uninstall removes what it installed. Uses its own prefix and hook name so
the installation the other tests use stays in place."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOREIGN = "/etc/libvirt/hooks/qemu"


@pytest.fixture
def prefix(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("install.sh tests need root")
    return str(tmp_path / "opt")


def install(prefix, *args):
    env = dict(os.environ, QWAMOS_SKIP_APT="1", QWAMOS_PREFIX=prefix, QWAMOS_HOOK_NAME="90-qwamos-installtest")
    return subprocess.run([os.path.join(ROOT, "install.sh"), *args], capture_output=True, text=True, env=env, timeout=600)


def test_install_twice_then_uninstall(prefix):
    hook = "/etc/libvirt/hooks/qemu.d/90-qwamos-installtest"
    had_foreign = os.path.exists(FOREIGN)
    if not had_foreign:
        with open(FOREIGN, "w") as fh:
            fh.write("#!/bin/sh\n# another tool's hook\nexit 0\n")
        os.chmod(FOREIGN, 0o755)
    foreign_before = open(FOREIGN, "rb").read()
    try:
        p = install(prefix)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "leaving the existing /etc/libvirt/hooks/qemu alone" in p.stdout
        first = open(hook).read()
        assert first.startswith(f"#!{prefix}/venv/bin/python3 -IS\n")
        assert os.access(hook, os.X_OK)
        # The installed hook works as libvirt runs it: scrubbed environment, argv, stdin.
        xml = open(os.path.join(ROOT, "examples", "domains", "sidechannel-bad.xml"), "rb").read()
        env = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        r = subprocess.run([hook, "qwamos-demo-bad", "migrate", "begin", "-"], input=xml, capture_output=True, env=env)
        assert r.returncode == 1 and b"QW501" in r.stderr and r.stdout == b""
        r = subprocess.run([hook], capture_output=True, env=env)
        assert r.returncode == 2 and b"usage" in r.stderr

        p = install(prefix)  # idempotent
        assert p.returncode == 0, p.stderr
        assert open(hook).read() == first
        assert "kept existing /etc/qwamos/policy.yaml" in p.stdout
        assert os.path.realpath("/usr/local/bin/qwamos-policy").startswith("/opt/qwamos/")  # the main install keeps its command

        p = install(prefix, "--uninstall")
        assert p.returncode == 0, p.stderr
        assert not os.path.exists(hook) and not os.path.exists(f"{prefix}/venv")
        # The main installation is untouched: its command, its hook, the nft tables.
        assert "another qwamos hook is still installed" in p.stdout
        assert os.path.realpath("/usr/local/bin/qwamos-policy").startswith("/opt/qwamos/")
        assert subprocess.run(["nft", "list", "table", "inet", "qwamos"], capture_output=True).returncode == 0
        assert open(FOREIGN, "rb").read() == foreign_before
        assert install(prefix, "--bogus").returncode == 2
    finally:
        if os.path.exists(hook):
            os.unlink(hook)
        if not had_foreign:
            os.unlink(FOREIGN)
