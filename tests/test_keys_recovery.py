"""Recovery key and reseal after PCR drift; software keystore only when the
policy enables it. Real swtpm, real CLI and hook processes."""

import os

import pytest

from qwamos_hooks.keys import recovery, rotate, softstore
from tests.keys_support import UUID, audit_append, encodings, kenv, swtpm, tree_contains  # noqa: F401


def test_reseal_after_pcr_change_with_recovery_key(kenv, swtpm):
    e = kenv
    rkey = e.enroll("disk", "--pcrs", "7,16")
    key = e.unseal("disk")
    swtpm.extend16(b"new firmware")
    r = e.hook("prepare", "begin")
    assert r.returncode == 1 and "PCR 16" in r.stderr

    r = e.cli("reseal", UUID, "disk", "--recovery-key", "AAAA-BBBB-CCCC-DDDD-EEEE-FFFF-GGGG-HHHH")
    assert r.returncode == 1 and "wrong recovery key" in r.stderr
    assert [a for a in e.audit_events() if a["event"] == "keys.reseal.denied"]

    r = e.cli("reseal", UUID, "disk", "--recovery-key", rkey.lower().replace("-", " "))
    assert r.returncode == 0, r.stderr
    assert e.unseal("disk") == key  # same key, new binding: a LUKS slot keeps working
    r = e.hook("prepare", "begin")
    assert r.returncode == 0, r.stderr
    with open(os.path.join(e.state, "keys", UUID, "disk"), "rb") as fh:
        assert fh.read() == key
    e.hook("stopped", "end")
    # the recovery key keeps working after a rotation, without being asked for it
    rotate.rotate(e.lib, UUID, "disk", global_keys=e.global_keys(), audit=audit_append(e.lib))
    new = e.unseal("disk")
    swtpm.extend16(b"again")
    r = e.cli("reseal", UUID, "disk", "--recovery-key", rkey)
    assert r.returncode == 0, r.stderr
    assert e.unseal("disk") == new
    ev = [a["event"] for a in e.audit_events()]
    assert ev.count("keys.reseal") == 2
    assert tree_contains(e.lib, encodings(key) + encodings(new) + [rkey.encode()]) == []


def test_recovery_wrap_unit():
    rk = recovery.new_recovery_key()
    rec = recovery.setup(rk)
    blob = recovery.wrap(b"k" * 32, rec, b"aad")
    assert recovery.unwrap(blob, rec, rk, b"aad") == b"k" * 32
    with pytest.raises(recovery.RecoveryError):
        recovery.unwrap(blob, rec, recovery.new_recovery_key(), b"aad")
    with pytest.raises(recovery.RecoveryError):
        recovery.unwrap(blob, rec, rk, b"other place")


def test_software_keystore_refused_unless_policy_enables_it(kenv, tmp_path):
    e = kenv
    r = e.cli("enroll", UUID, "soft", "--backend", "software", "--pcrs", "16")
    assert r.returncode == 1 and "allow_software_keystore" in r.stderr
    assert not os.path.exists(os.path.join(e.lib, "keys", UUID, "soft", "meta.json"))


def test_software_keystore_roundtrip_when_enabled(kenv, tmp_path):
    e = kenv
    pwf = tmp_path / "keystore.pass"
    pwf.write_bytes(b"correct horse battery staple\n")
    os.chmod(pwf, 0o600)
    with open(e.policy, "w") as fh:
        fh.write("version: 1\nprofiles:\n  default: {}\n"
                 f"keys:\n  allow_software_keystore: true\n  software_passphrase_file: {pwf}\n")
    del e.env["QWAMOS_TCTI"]  # no TPM needed, none used
    r = e.cli("enroll", UUID, "soft", "--backend", "software", "--no-pcrs", "--deliver", "keyring")
    assert r.returncode == 0, r.stderr
    r = e.hook("prepare", "begin")
    assert r.returncode == 0, r.stderr
    from qwamos_hooks.keys import deliver

    serial = deliver.keyring_search(UUID, "soft")
    key = deliver.keyring_read(serial)
    assert len(key) == 32
    assert tree_contains(e.lib, encodings(key)) == []
    e.hook("stopped", "end")
    assert deliver.keyring_search(UUID, "soft") is None
    r = e.cli("status")
    assert "software keystore" in r.stdout
    # turning the permission off again makes the key unusable: no silent path
    with open(e.policy, "w") as fh:
        fh.write(f"version: 1\nprofiles:\n  default: {{}}\nkeys:\n  software_passphrase_file: {pwf}\n")
    r = e.hook("prepare", "begin")
    assert r.returncode == 1 and "allow_software_keystore" in r.stderr


def test_tpm_key_with_tpm_gone_does_not_fall_back(kenv, tmp_path):
    e = kenv
    e.enroll("disk", "--pcrs", "16")
    e.env["QWAMOS_TCTI"] = "swtpm:host=127.0.0.1,port=1"
    with open(e.policy, "w") as fh:
        fh.write("version: 1\nprofiles:\n  default: {}\nkeys:\n  allow_software_keystore: true\n")
    r = e.hook("prepare", "begin")
    assert r.returncode == 1 and "cannot open TPM at TCTI" in r.stderr
    assert not os.path.exists(os.path.join(e.state, "keys", UUID, "disk"))


def test_softstore_unit():
    g = {"allow_software_keystore": True}
    blob = softstore.wrap(b"s" * 32, b"a passphrase!", b"aad")
    assert softstore.unwrap(blob, b"a passphrase!", b"aad") == b"s" * 32
    with pytest.raises(softstore.SoftStoreError):
        softstore.unwrap(blob, b"another passphrase", b"aad")
    with pytest.raises(softstore.SoftStoreError):
        softstore.require_enabled({})
    softstore.require_enabled(g)
