"""Rotation on a real swtpm (and a real LUKS2 header for LUKS keys): a crash
after each step still leaves a usable key, and the next run finishes the job."""

import json
import os
import subprocess

import pytest

from qwamos_hooks.keys import deliver, manager, rotate, store
from tests.keys_support import UUID, audit_append, kenv, swtpm  # noqa: F401


class Crash(Exception):
    pass


def crash_at(step):
    def hook(name):
        if name == step:
            raise Crash(step)
    return hook


def make_luks(tmp_path) -> tuple[str, bytes]:
    img = str(tmp_path / "vol.img")
    with open(img, "wb") as fh:
        fh.truncate(20 * 1024 * 1024)
    pw = os.urandom(32)
    pwfile = str(tmp_path / "pw")
    with open(pwfile, "wb") as fh:
        fh.write(pw)
    r = subprocess.run(["cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2",
                        "--pbkdf-force-iterations", "1000", "--key-file", pwfile, img], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return img, pw


def _meta(e, name="disk"):
    return store.load_meta(store.key_dir(e.lib, UUID, name))


def _rotate(e, name="disk", **kw):
    return rotate.rotate(e.lib, UUID, name, global_keys=e.global_keys(), audit=audit_append(e.lib), **kw)


def _hook_delivers(e, name="disk"):
    r = e.hook("prepare", "begin")
    assert r.returncode == 0, r.stderr
    with open(os.path.join(e.state, "keys", UUID, name), "rb") as fh:
        got = fh.read()
    e.hook("stopped", "end")
    return got


@pytest.mark.parametrize("step", [s for s in rotate.STEPS if not s.startswith("luks")])
def test_interrupted_rotation_leaves_usable_key_then_completes(kenv, step):
    e = kenv
    e.enroll("disk", "--pcrs", "16")
    old = e.unseal("disk")
    with pytest.raises(Crash):
        _rotate(e, crash=crash_at(step))
    meta = _meta(e)
    # the hook still gets a key that the metadata calls current
    current = e.unseal("disk")
    assert _hook_delivers(e) == current
    assert current == old if step in ("sealed", "verified") else current != old
    # the next run finishes (or undoes) the interrupted one, then rotates
    v = _rotate(e)
    meta = _meta(e)
    assert meta["pending"] is None and list(meta["versions"]) == [str(v)] and meta["current"] == v
    kdir = store.key_dir(e.lib, UUID, "disk")
    assert sorted(f for f in os.listdir(kdir) if f.startswith("v")) == [f"v{v}.priv", f"v{v}.pub", f"v{v}.rec"]
    assert _hook_delivers(e) == e.unseal("disk") != old


@pytest.mark.parametrize("step", rotate.STEPS)
def test_interrupted_luks_rotation_keeps_the_volume_openable(kenv, tmp_path, step):
    e = kenv
    img, pw = make_luks(tmp_path)
    rkey = manager.enroll(e.lib, UUID, "disk", global_keys=e.global_keys(), audit=audit_append(e.lib),
                          pcrs=(16,), delivery="luks", luks_device=img, luks_key=pw)
    assert rkey
    old = e.unseal("disk")
    old_slot = deliver.luks_test(img, old)
    assert old_slot is not None
    with pytest.raises(Crash):
        _rotate(e, crash=crash_at(step))
    # whatever the metadata calls current opens the volume
    assert deliver.luks_test(img, e.unseal("disk")) is not None
    _rotate(e)
    new = e.unseal("disk")
    assert new != old
    assert deliver.luks_test(img, new) is not None
    assert deliver.luks_test(img, old) is None  # old keyslot killed
    assert deliver.luks_test(img, pw) == 0  # the admin's own passphrase is untouched
    meta = _meta(e)
    assert meta["pending"] is None and len(meta["versions"]) == 1


def test_luks_rotation_adds_before_it_kills(kenv, tmp_path):
    e = kenv
    img, pw = make_luks(tmp_path)
    manager.enroll(e.lib, UUID, "disk", global_keys=e.global_keys(), audit=audit_append(e.lib),
                   pcrs=(16,), delivery="luks", luks_device=img, luks_key=pw)
    old = e.unseal("disk")
    seen = {}

    def watch(step):
        meta = _meta(e)
        pend = meta["versions"].get(str(max(int(v) for v in meta["versions"])))
        if step == "luks-added":
            seen["both"] = deliver.luks_test(img, old) is not None and pend.get("luks_slot") is not None
        if step == "luks-killed":
            seen["old_gone"] = deliver.luks_test(img, old) is None

    _rotate(e, crash=watch)
    assert seen == {"both": True, "old_gone": True}


def test_luks_delivery_fails_here_without_device_mapper(kenv, tmp_path):
    """This kernel has no device-mapper: `cryptsetup open` cannot work, and the
    start is refused with cryptsetup's reason rather than half-done."""
    e = kenv
    img, pw = make_luks(tmp_path)
    pwfile = str(tmp_path / "pw")
    r = e.cli("enroll", UUID, "disk", "--pcrs", "16", "--allow-resettable-pcrs", "--deliver", "luks", "--luks-device", img,
              "--luks-key-file", pwfile)
    assert r.returncode == 0, r.stderr
    assert deliver.luks_test(img, e.unseal("disk")) is not None
    r = e.hook("prepare", "begin")
    assert r.returncode == 1
    assert "cryptsetup open" in r.stderr and "device-mapper" in r.stderr


def test_rotate_due_and_emergency_rotation_via_cli(kenv):
    e = kenv
    e.enroll("disk", "--pcrs", "16", "--rotation-days", "90")
    r = e.cli("rotate", "--due")
    assert r.returncode == 0 and "no key is due" in r.stdout
    assert rotate.due(e.lib, at=manager.now() + 89 * 86400) == []
    assert [x[1] for x in rotate.due(e.lib, at=manager.now() + 91 * 86400)] == ["disk"]
    # make it overdue
    kdir = store.key_dir(e.lib, UUID, "disk")
    meta = store.load_meta(kdir)
    meta["versions"]["1"]["rotation_due_ts"] = manager.now() - 1
    store.save_meta(kdir, meta)
    old = e.unseal("disk")
    r = e.cli("rotate", "--due")
    assert r.returncode == 0 and "rotated to v2" in r.stdout, r.stderr
    assert e.unseal("disk") != old
    due2 = _meta(e)["versions"]["2"]["rotation_due_ts"]
    assert 89 * 86400 < due2 - manager.now() <= 90 * 86400

    r = e.cli("emergency-rotate", UUID, "disk", "--reason", "laptop stolen")
    assert r.returncode == 0, r.stderr
    ev = [a for a in e.audit_events() if a["event"] == "keys.emergency-rotate"]
    assert ev and ev[0]["reason"] == "laptop stolen" and ev[0]["version"] == 3
    assert [a["event"] for a in e.audit_events()].count("keys.rotate") == 1
    r = e.cli("emergency-rotate", UUID, "disk")
    assert r.returncode == 2  # --reason is required


def test_rotation_audit_has_no_key_material(kenv):
    from tests.keys_support import encodings, tree_contains

    e = kenv
    e.enroll("disk", "--pcrs", "16")
    k1 = e.unseal("disk")
    _rotate(e)
    k2 = e.unseal("disk")
    assert tree_contains(e.lib, encodings(k1) + encodings(k2)) == []
    with open(os.path.join(e.lib, "audit.jsonl")) as fh:
        recs = [json.loads(l) for l in fh]
    assert any(r["event"] == "keys.rotate" and r["previous"] == 1 and r["version"] == 2 for r in recs)


def test_pin_key_rotation_keeps_the_pin(kenv):
    e = kenv
    r = e.cli("enroll", UUID, "disk", "--pcrs", "16", "--allow-resettable-pcrs", "--pin", input="8642\n")
    assert r.returncode == 0, r.stderr
    r = e.cli("rotate", UUID, "disk")
    assert r.returncode == 1 and "PIN-protected" in r.stderr
    r = e.cli("rotate", UUID, "disk", "--pin", input="8642\n")
    assert r.returncode == 0, r.stderr
    meta = _meta(e)
    assert meta["current"] == 2 and meta["versions"]["2"]["pin"] is True
    e.cli("pin", UUID, "disk", input="8642\n")
    assert e.hook("prepare", "begin").returncode == 0
    e.hook("stopped", "end")


def _status(e):
    r = e.cli("status")
    return r.returncode, r.stdout


def test_crash_after_commit_is_flagged_then_finished_by_rotate_due(kenv, tmp_path):
    """A retired version left on disk still unseals (and keeps its LUKS keyslot):
    status fails until `rotate --due` finishes the clean-up, due or not."""
    e = kenv
    img, pw = make_luks(tmp_path)
    manager.enroll(e.lib, UUID, "disk", global_keys=e.global_keys(), audit=audit_append(e.lib),
                   pcrs=(16,), delivery="luks", luks_device=img, luks_key=pw)
    old = e.unseal("disk")
    with pytest.raises(Crash):
        _rotate(e, crash=crash_at("committed"))
    code, out = _status(e)
    assert code == 1 and "retired version v1 still on disk" in out, out
    r = e.cli("rotate", "--due")
    assert r.returncode == 0 and "interrupted rotation finished: removed retired v1" in r.stdout, r.stdout
    assert "no key is due" in r.stdout
    kdir = store.key_dir(e.lib, UUID, "disk")
    assert store.versions_on_disk(kdir) == {2}
    assert deliver.luks_test(img, old) is None and deliver.luks_test(img, e.unseal("disk")) is not None
    assert _status(e)[0] == 0
    ev = [a for a in e.audit_events() if a["event"] == "keys.rotate.recover"]
    assert ev and ev[-1]["outcome"] == "removed retired v1"


def test_crash_after_commit_is_finished_at_the_next_start(kenv):
    e = kenv
    e.enroll("disk", "--pcrs", "16")
    with pytest.raises(Crash):
        _rotate(e, crash=crash_at("committed"))
    kdir = store.key_dir(e.lib, UUID, "disk")
    assert store.versions_on_disk(kdir) == {1, 2}
    assert _hook_delivers(e) == e.unseal("disk")
    assert store.versions_on_disk(kdir) == {2} and list(_meta(e)["versions"]) == ["2"]
    assert any(a["event"] == "keys.rotate.recover" and a["outcome"] == "removed retired v1"
               for a in e.audit_events())
    assert _status(e)[0] == 0


def test_interrupted_uncommitted_rotation_fails_status(kenv):
    e = kenv
    e.enroll("disk", "--pcrs", "16")
    with pytest.raises(Crash):
        _rotate(e, crash=crash_at("verified"), kind="emergency-rotate", reason="exposed")
    code, out = _status(e)
    assert code == 1 and "interrupted rotation to v2, v1 still current" in out, out
    r = e.cli("rotate", "--due")
    assert r.returncode == 0 and "rolled forward to v2" in r.stdout, r.stdout
    assert _status(e)[0] == 0
