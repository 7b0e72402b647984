"""Enrol with the CLI, then run the real hook process: unseal + deliver at
prepare/begin, wipe at stopped/end and release/end, block on PCR drift, and
never leave a plaintext key on persistent disk."""

import json
import os
import stat
import subprocess

from qwamos_hooks.keys import deliver
from tests.keys_support import PY, ROOT, UUID, UUID2, encodings, kenv, swtpm, tree_contains  # noqa: F401


def _file(e, name, uuid=UUID):
    return os.path.join(e.state, "keys", uuid, name)


def test_enroll_then_start_delivers_file_and_keyring_then_stop_wipes(kenv):
    e = kenv
    e.enroll("disk", "--pcrs", "7,16")
    e.enroll("vtpm", "--pcrs", "16", "--deliver", "keyring")
    disk, vtpm = e.unseal("disk"), e.unseal("vtpm")
    assert disk != vtpm and len(disk) == 32

    r = e.hook("prepare", "begin")
    assert r.returncode == 0, r.stderr
    path = _file(e, "disk")
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o400 and st.st_uid == 0
    assert deliver.fs_type(path) == "tmpfs"
    with open(path, "rb") as fh:
        assert fh.read() == disk
    serial = deliver.keyring_search(UUID, "vtpm")
    assert serial and deliver.keyring_read(serial) == vtpm

    r = e.hook("stopped", "end")
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(path)
    assert deliver.keyring_search(UUID, "vtpm") is None
    wipes = [a for a in e.audit_events() if a["event"] == "keys.wipe"]
    assert len(wipes) == 1 and wipes[0]["keys"] == ["disk", "vtpm"]

    # release/end after stopped/end: nothing left, nothing new reported
    r = e.hook("release", "end")
    assert r.returncode == 0
    assert len([a for a in e.audit_events() if a["event"] == "keys.wipe"]) == 1
    assert os.listdir(e.state) in ([], ["keys"])


def test_owner_of_delivered_file_is_configurable(kenv):
    e = kenv
    e.enroll("disk", "--pcrs", "16", "--owner", "libvirt-qemu")
    r = e.hook("prepare", "begin")
    assert r.returncode == 0, r.stderr
    import pwd

    st = os.stat(_file(e, "disk"))
    assert st.st_uid == pwd.getpwnam("libvirt-qemu").pw_uid
    assert stat.S_IMODE(st.st_mode) == 0o400
    e.hook("release", "end")
    assert not os.path.exists(_file(e, "disk"))


def test_pcr_drift_blocks_start_naming_the_pcr_and_delivers_nothing(kenv, swtpm):
    e = kenv
    e.enroll("a-first", "--pcrs", "7")
    e.enroll("b-second", "--pcrs", "7,16", "--deliver", "keyring")
    swtpm.extend16()
    r = e.hook("prepare", "begin")
    assert r.returncode == 1
    line = r.stderr.strip()
    assert "\n" not in line
    assert "key 'b-second'" in line and "PCR 16 (sha256) changed since sealing" in line
    assert "keys reseal" in line
    # the first key had been delivered: a blocked start must leave nothing behind
    assert not os.path.exists(_file(e, "a-first"))
    assert deliver.keyring_search(UUID, "b-second") is None
    failed = [a for a in e.audit_events() if a["event"] == "keys.unseal.failed"]
    assert failed and failed[0]["changed_pcrs"] == [16] and failed[0]["key"] == "b-second"


def test_no_plaintext_key_on_persistent_disk_after_enrol_start_stop(kenv):
    e = kenv
    e.enroll("disk", "--pcrs", "16")
    e.enroll("kr", "--pcrs", "16", "--deliver", "keyring")
    keys = [e.unseal("disk"), e.unseal("kr")]
    needles = [n for k in keys for n in encodings(k)]
    assert tree_contains(e.lib, needles) == []          # after enrol
    assert e.hook("prepare", "begin").returncode == 0
    assert tree_contains(e.lib, needles) == []          # while running: only the tmpfs file has it
    assert tree_contains(e.state, needles) == [_file(e, "disk")]
    assert e.hook("stopped", "end").returncode == 0
    assert e.hook("release", "end").returncode == 0
    assert tree_contains(e.lib, needles) == []          # after stop
    assert tree_contains(e.state, needles) == []
    # the scan is able to find a key: a control file with the bytes is caught
    ctl = os.path.join(e.lib, "control")
    with open(ctl, "wb") as fh:
        fh.write(b"x" + keys[0].hex().encode())
    assert tree_contains(e.lib, needles) == [ctl]


def test_file_delivery_refuses_persistent_storage(kenv, tmp_path):
    e = kenv
    e.enroll("disk", "--pcrs", "16")
    with open(e.policy, "w") as fh:
        fh.write(f"version: 1\nprofiles:\n  default: {{}}\nkeys:\n  runtime_dir: {tmp_path}/run-keys\n")
    r = e.hook("prepare", "begin")
    assert r.returncode == 1
    assert "file delivery refused" in r.stderr and "not tmpfs" in r.stderr
    assert tree_contains(str(tmp_path), encodings(e.unseal("disk"))) == []


def test_domain_without_keys_does_not_import_the_tpm_stack(kenv):
    e = kenv
    e.enroll("disk", "--pcrs", "16", uuid=UUID2)  # keys exist, but for another VM
    code = (
        "import io, sys; from qwamos_hooks import hook\n"
        "xml = open(sys.argv[1], 'rb').read()\n"
        "c, m = hook.run(['qwkeys-test', 'prepare', 'begin', '-'], io.BytesIO(xml))\n"
        "print(c, 'tpm2_pytss' in sys.modules, 'cryptography' in sys.modules, 'qwamos_hooks.keys.stage' in sys.modules)\n"
    )
    from tests.keys_support import DOMAIN_XML

    xml = os.path.join(e.state, "d.xml")
    with open(xml, "w") as fh:
        fh.write(DOMAIN_XML.format(name="qwkeys-test", uuid=UUID))
    r = subprocess.run([PY, "-c", code, xml], env=e.env, cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.split() == ["0", "False", "False", "True"], r.stdout + r.stderr
    xml2 = os.path.join(e.state, "d2.xml")
    with open(xml2, "w") as fh:
        fh.write(DOMAIN_XML.format(name="qwkeys-test", uuid=UUID2))
    r = subprocess.run([PY, "-c", code, xml2], env=e.env, cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.split()[:2] == ["0", "True"], r.stdout + r.stderr
    deliver.wipe(e.state, UUID2)


def test_required_key_missing_blocks(kenv):
    e = kenv
    with open(e.policy, "w") as fh:
        fh.write("version: 1\nprofiles:\n  default:\n    keys:\n      required: [disk]\n")
    r = e.hook("prepare", "begin")
    assert r.returncode == 1 and "requires key(s) disk" in r.stderr
    e.enroll("disk", "--pcrs", "16")
    assert e.hook("prepare", "begin").returncode == 0
    e.hook("stopped", "end")


def test_tcti_from_policy_when_environment_has_none(kenv, swtpm):
    """libvirtd runs hooks with a scrubbed environment: the policy names the TPM."""
    e = kenv
    e.enroll("disk", "--pcrs", "16")
    del e.env["QWAMOS_TCTI"]
    r = e.hook("prepare", "begin")
    assert r.returncode == 1 and "device:/dev/tpmrm0" in r.stderr  # no TPM device on this host
    with open(e.policy, "w") as fh:
        fh.write(f"version: 1\nprofiles:\n  default: {{}}\nkeys:\n  tcti: \"{swtpm.tcti}\"\n")
    r = e.hook("prepare", "begin")
    assert r.returncode == 0, r.stderr
    assert os.path.exists(_file(e, "disk"))
    e.hook("stopped", "end")


def test_enroll_refuses_empty_pcr_list_without_no_pcrs(kenv):
    e = kenv
    r = e.cli("enroll", UUID, "disk", "--pcrs", "")
    assert r.returncode == 2 and "--no-pcrs" in r.stderr
    r = e.cli("enroll", UUID, "disk", "--no-pcrs")
    assert r.returncode == 0 and "no PCRs" in r.stdout
    r = e.cli("status")
    assert "bound to no PCRs" in r.stdout


def test_audit_records_enrol_unseal_wipe_without_key_material(kenv):
    e = kenv
    e.enroll("disk", "--pcrs", "16")
    e.hook("prepare", "begin")
    e.hook("stopped", "end")
    events = [a["event"] for a in e.audit_events()]
    for ev in ("keys.enroll", "keys.unseal", "keys.wipe"):
        assert ev in events
    assert tree_contains(e.lib, encodings(e.unseal("disk"))) == []
    from qwamos_hooks import audit

    n, problem = audit.verify(os.path.join(e.lib, "audit.jsonl"))
    assert problem is None and n == len(events)


def test_list_and_status_show_due_dates_and_unsealability(kenv, swtpm):
    e = kenv
    e.enroll("disk", "--pcrs", "16", "--rotation-days", "90")
    r = e.cli("list")
    assert r.returncode == 0 and "disk" in r.stdout and "pcrs=16/sha256" in r.stdout and "due=" in r.stdout
    r = e.cli("status")
    assert r.returncode == 0 and "OK: unseals now" in r.stdout
    swtpm.extend16()
    r = e.cli("status")
    assert r.returncode == 1 and "WOULD FAIL" in r.stdout and "PCR 16" in r.stdout
    meta = json.load(open(os.path.join(e.lib, "keys", UUID, "disk", "meta.json")))
    assert meta["rotation_days"] == 90


def test_rotation_schedule_from_profile_then_global_then_flag(kenv):
    e = kenv
    with open(e.policy, "w") as fh:
        fh.write("version: 1\nprofiles:\n  default:\n    keys:\n      rotation_days: 365\nkeys:\n  rotation_days: 90\n")
    e.enroll("a", "--pcrs", "16")
    e.enroll("b", "--pcrs", "16", "--rotation-days", "180")
    with open(e.policy, "w") as fh:
        fh.write("version: 1\nprofiles:\n  default: {}\nkeys:\n  rotation_days: 90\n")
    e.enroll("c", "--pcrs", "16")
    days = {n: json.load(open(os.path.join(e.lib, "keys", UUID, n, "meta.json")))["rotation_days"] for n in "abc"}
    assert days == {"a": 365, "b": 180, "c": 90}
    with open(e.policy, "w") as fh:
        fh.write("version: 1\nprofiles:\n  default: {}\nkeys:\n  rotation_days: 30\n")
    r = e.cli("enroll", UUID, "d", "--pcrs", "16", "--allow-resettable-pcrs")
    assert r.returncode == 2 and "rotation_days" in r.stderr  # schema: 90, 180 or 365 only


def test_pin_key_needs_pin_per_start(kenv):
    e = kenv
    r = e.cli("enroll", UUID, "disk", "--pcrs", "16", "--allow-resettable-pcrs", "--pin", input="7531\n")
    assert r.returncode == 0, r.stderr
    r = e.hook("prepare", "begin")
    assert r.returncode == 1 and "needs a PIN" in r.stderr
    r = e.cli("pin", UUID, "disk", input="0000\n")
    assert r.returncode == 0
    r = e.hook("prepare", "begin")
    assert r.returncode == 1 and "wrong PIN" in r.stderr
    assert deliver.keyring_search(UUID, "disk", "qwamos-pin") is None  # a PIN serves one attempt
    e.cli("pin", UUID, "disk", input="7531\n")
    r = e.hook("prepare", "begin")
    assert r.returncode == 0, r.stderr
    assert os.path.exists(_file(e, "disk"))
    e.hook("stopped", "end")
    r = e.hook("prepare", "begin")
    assert r.returncode == 1 and "needs a PIN" in r.stderr


def test_cli_wipe_removes_delivered_keys(kenv):
    e = kenv
    e.enroll("disk", "--pcrs", "16")
    e.enroll("kr", "--pcrs", "16", "--deliver", "keyring")
    assert e.hook("prepare", "begin").returncode == 0
    r = e.cli("wipe", UUID)
    assert r.returncode == 0 and "wiped disk, kr" in r.stdout
    assert not os.path.exists(_file(e, "disk")) and deliver.keyring_search(UUID, "kr") is None
    r = e.cli("wipe", UUID)
    assert r.returncode == 0 and "nothing" in r.stdout


def test_resettable_only_pcrs_need_an_explicit_flag_and_stay_flagged(kenv, swtpm):
    e = kenv
    for pcrs in ("16", "23", "16,23"):
        r = e.cli("enroll", UUID, "weak", "--pcrs", pcrs)
        assert r.returncode == 2 and "--allow-resettable-pcrs" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(e.lib, "keys", UUID, "weak", "meta.json"))
    r = e.cli("enroll", UUID, "weak", "--pcrs", "23", "--allow-resettable-pcrs")
    assert r.returncode == 0 and "warning: bound only to resettable PCR 23" in r.stderr, r.stderr
    # PCR 7 is never measured on swtpm and 16 is freshly reset: accepted, but said
    r = e.cli("enroll", UUID, "zero", "--pcrs", "7,16")
    assert r.returncode == 0 and "never measured" in r.stderr, r.stderr
    swtpm.extend16(b"a measurement")
    r = e.cli("enroll", UUID, "measured", "--pcrs", "7,16")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    swtpm.reset16()
    lines = {l.split()[1].rstrip(":"): l for l in e.cli("status").stdout.splitlines()}
    assert "resettable PCR 23" in lines["weak"] and "never measured" in lines["zero"]
    assert "[" not in lines["measured"]


def test_delivery_directory_safety(kenv, tmp_path):
    """The runtime dir and its parents must be root's and not writable by others;
    <uuid> must be a real root-owned directory; a key owner who cannot traverse
    the runtime dir is refused up front."""
    import pwd
    import shutil
    import tempfile

    e = kenv
    nobody = pwd.getpwnam("nobody")
    e.enroll("disk", "--pcrs", "16", "--owner", "libvirt-qemu")
    base = tempfile.mkdtemp(prefix="qwkeys-rt-", dir="/dev/shm")
    rt = os.path.join(base, "rt")

    def start(runtime_dir):
        with open(e.policy, "w") as fh:
            fh.write(f"version: 1\nprofiles:\n  default: {{}}\nkeys:\n  runtime_dir: {runtime_dir}\n")
        r = e.hook("prepare", "begin")
        e.hook("stopped", "end")
        return r

    try:
        os.chmod(base, 0o755)
        r = start(rt)  # created on demand, 0711
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(os.stat(rt).st_mode) == 0o711
        os.chmod(rt, 0o775)
        r = start(rt)
        assert r.returncode == 1 and "writable by group or others" in r.stderr
        os.chmod(rt, 0o700)
        r = start(rt)
        assert r.returncode == 1 and "cannot traverse" in r.stderr and rt in r.stderr
        os.chmod(rt, 0o711)
        os.mkdir(os.path.join(rt, UUID))
        os.chown(os.path.join(rt, UUID), nobody.pw_uid, nobody.pw_gid)
        r = start(rt)
        assert r.returncode == 1 and "not root" in r.stderr
        shutil.rmtree(os.path.join(rt, UUID), ignore_errors=True)  # (the wipe may have removed it: it was empty)
        # a root-owned symlink on the way is followed; one owned by another user is not
        link = os.path.join(base, "link")
        os.symlink("rt", link)
        r = start(link)
        assert r.returncode == 0, r.stderr
        os.lchown(link, nobody.pw_uid, nobody.pw_gid)
        r = start(link)
        assert r.returncode == 1 and "symlink owned by uid" in r.stderr
        assert os.listdir(rt) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_owner_reaches_its_key_by_path_and_nobody_lists_it(kenv):
    import grp
    import pwd

    e = kenv
    pwd.getpwnam("libvirt-qemu")
    os.chmod(e.state, 0o700)  # like a tmpfs mounted mode=0700: the hook adds the search bits
    e.enroll("disk", "--pcrs", "16", "--owner", "libvirt-qemu")
    e.enroll("other", "--pcrs", "16", "--owner", "libvirt-qemu", "--group", "nogroup")
    assert e.hook("prepare", "begin").returncode == 0
    try:
        d = os.path.join(e.state, "keys", UUID)
        assert stat.S_IMODE(os.stat(os.path.join(e.state, "keys")).st_mode) == 0o711
        # libvirt-qemu is not in nogroup: the directory falls back to traverse-only
        assert stat.S_IMODE(os.stat(d).st_mode) in (0o710, 0o711)
        for name in ("disk", "other"):
            q = subprocess.run(["setpriv", "--reuid=libvirt-qemu", "--regid=libvirt-qemu", "--init-groups",
                                "cat", os.path.join(d, name)], capture_output=True)
            assert q.returncode == 0 and q.stdout == e.unseal(name), q.stderr.decode()
        assert os.stat(os.path.join(d, "other")).st_gid == grp.getgrnam("nogroup").gr_gid
        q = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "ls", d],
                           capture_output=True)
        assert q.returncode != 0  # others may not list the VM's keys
        q = subprocess.run(["setpriv", "--reuid=libvirt-qemu", "--regid=libvirt-qemu", "--init-groups",
                            "ls", d], capture_output=True)
        assert q.returncode != 0  # nor may the owner
    finally:
        e.hook("stopped", "end")
