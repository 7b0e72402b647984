"""Shared pieces of the key tests: a real swtpm on private ports, per-test
directories (lib on disk, state on tmpfs), and helpers to run the CLI and hook."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/opt/qwamos/venv/bin/python"
UUID = "6f1c2b0e-8a7d-4c1e-9a55-0b7f3c2d1e01"
UUID2 = "6f1c2b0e-8a7d-4c1e-9a55-0b7f3c2d1e02"

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='KiB'>32768</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
  </devices>
</domain>
"""


def free_port_pair() -> tuple[int, int]:
    """Two free consecutive loopback ports: the swtpm TCTI always talks to the
    control channel on port + 1."""
    import random

    for _ in range(200):
        p = random.randrange(20000, 60000)
        socks = []
        try:
            for q in (p, p + 1):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", q))
            return p, p + 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port pair")


class Tap:
    """A recording TCP forwarder between a TCTI and swtpm (both channels), to
    see exactly what crosses the 'bus'."""

    def __init__(self, target_port: int):
        import threading

        self.captured = bytearray()
        self.lock = threading.Lock()
        self.port, _ = free_port_pair()
        self.servers = []
        for off in (0, 1):
            srv = socket.socket()
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(("127.0.0.1", self.port + off))
            srv.listen(4)
            self.servers.append(srv)
            threading.Thread(target=self._accept, args=(srv, target_port + off), daemon=True).start()

    def _accept(self, srv, dst):
        import threading

        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", dst))
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                with self.lock:
                    self.captured += data
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def close(self):
        for s in self.servers:
            s.close()


class SwTPM:
    def __init__(self):
        if not shutil.which("swtpm"):
            pytest.fail("swtpm is not installed (apt-get install swtpm swtpm-tools)")
        self.state = tempfile.mkdtemp(prefix="qwamos-swtpm-")
        self.port, self.ctrl = free_port_pair()
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2",
             "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={self.ctrl},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear", "--tpmstate", f"dir={self.state}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"swtpm exited: {self.proc.stderr.read().decode()[-300:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            pytest.fail("swtpm did not start listening")
        self.tcti = f"swtpm:host=127.0.0.1,port={self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.state, ignore_errors=True)

    def tpm(self):
        from qwamos_hooks.keys import tpm

        return tpm.TPM(self.tcti)

    def extend16(self, data: bytes = b"measurement") -> None:
        with self.tpm() as t:
            t.extend(16, data)

    def reset16(self) -> None:
        with self.tpm() as t:
            t.reset(16)

    def transient_handles(self) -> list[int]:
        from tpm2_pytss import TPM2_CAP, TPM2_HT

        with self.tpm() as t:
            _, data = t.esys.get_capability(TPM2_CAP.HANDLES, TPM2_HT.TRANSIENT << 24, 64)
            return list(data.data.handles)


class Env:
    """Per-test directories and the environment the CLI and hook see."""

    def __init__(self, swtpm: SwTPM, tmp_path, policy_text: str | None = None):
        self.swtpm = swtpm
        self.lib = str(tmp_path / "lib")
        self.state = tempfile.mkdtemp(prefix="qwamos-keys-state-", dir="/dev/shm")
        self.policy = str(tmp_path / "policy.yaml")
        if policy_text is not None:
            with open(self.policy, "w") as fh:
                fh.write(policy_text)
        self.env = dict(os.environ)
        self.env.update(QWAMOS_TCTI=swtpm.tcti, QWAMOS_LIB_DIR=self.lib, QWAMOS_STATE_DIR=self.state,
                        QWAMOS_POLICY=self.policy, QWAMOS_LOG_FILE=str(tmp_path / "hook.log"),
                        PYTHONPATH=ROOT)

    def cleanup(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)

    def cli(self, *args, input: str | None = None, env_extra: dict | None = None) -> subprocess.CompletedProcess:
        env = dict(self.env, **(env_extra or {}))
        return subprocess.run([PY, "-m", "qwamos_hooks.cli", "keys", *args], env=env, cwd=ROOT,
                              input=input, capture_output=True, text=True, timeout=120)

    def hook(self, op: str, subop: str, name: str = "qwkeys-test", uuid: str = UUID) -> subprocess.CompletedProcess:
        return subprocess.run([PY, "-m", "qwamos_hooks.hook", name, op, subop, "-"], env=self.env, cwd=ROOT,
                              input=DOMAIN_XML.format(name=name, uuid=uuid), capture_output=True, text=True,
                              timeout=60)

    def enroll(self, name: str, *args, uuid: str = UUID) -> str:
        """Enrol via the CLI; returns the recovery key it printed. Tests bind to
        PCR 16 because they can reset it, so resettable PCRs are allowed here."""
        r = self.cli("enroll", uuid, name, *args, "--allow-resettable-pcrs")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        i = next(i for i, l in enumerate(lines) if l.startswith("RECOVERY KEY"))
        return lines[i + 1].strip()

    def global_keys(self) -> dict:
        return {"tcti": self.swtpm.tcti}

    def unseal(self, name: str, uuid: str = UUID) -> bytes:
        """The key's current value, read straight from the store (test oracle)."""
        from qwamos_hooks.keys import manager, store

        kdir = store.key_dir(self.lib, uuid, name)
        meta = store.load_meta(kdir)
        return manager.unseal_version(kdir, meta, meta["current"], self.global_keys())

    def audit_events(self) -> list[dict]:
        import json

        path = os.path.join(self.lib, "audit.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as fh:
            return [json.loads(l) for l in fh]


def tree_contains(root: str, needles: list[bytes]) -> list[str]:
    """Files under root whose bytes contain any needle."""
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for fn in files:
            p = os.path.join(dirpath, fn)
            try:
                with open(p, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            if any(n in data for n in needles):
                hits.append(p)
    return hits


def encodings(key: bytes) -> list[bytes]:
    import base64

    return [key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key),
            base64.b64encode(key).rstrip(b"=")]


def audit_append(lib: str):
    from qwamos_hooks import audit

    def log(event, **fields):
        audit.append(os.path.join(lib, "audit.jsonl"), event, **fields)

    return log




# -- fixtures (import them into a test module to use them) ----------------------


@pytest.fixture(scope="module")
def swtpm():
    t = SwTPM()
    try:
        yield t
    finally:
        t.stop()


@pytest.fixture
def kenv(swtpm, tmp_path):
    swtpm.reset16()
    e = Env(swtpm, tmp_path)
    try:
        yield e
    finally:
        # Whatever a test delivered to the (shared) kernel keyring goes too.
        from qwamos_hooks.keys import deliver

        deliver.wipe(e.state, UUID)
        deliver.wipe(e.state, UUID2)
        e.cleanup()
        swtpm.reset16()

__all__ = ["SwTPM", "Env", "UUID", "UUID2", "tree_contains", "encodings", "audit_append", "PY", "ROOT", "swtpm", "kenv"]
