"""TPM seal/unseal on a real swtpm: PCR policy, PCR naming on failure, PIN,
handle flushing, and no secret in clear on the wire."""

import os

import pytest

from qwamos_hooks.keys import tpm
from tests.keys_support import Tap, swtpm  # noqa: F401 (fixture)


def _unseal(t, s, **kw):
    return t.unseal(s.public, s.private, bank=s.bank, pcrs=s.pcrs, pcr_values=s.pcr_values,
                    primary_name=s.primary_name, **kw)


def test_seal_unseal_roundtrip(swtpm):
    secret = os.urandom(32)
    with swtpm.tpm() as t:
        s = t.seal(secret, pcrs=(7,))
        assert _unseal(t, s) == secret
    assert s.pcrs == (7,) and set(s.pcr_values) == {"7"} and s.bank == "sha256"
    assert secret not in s.public + s.private


def test_pcr_extend_blocks_unseal_and_names_the_pcr(swtpm):
    swtpm.reset16()
    secret = os.urandom(32)
    with swtpm.tpm() as t:
        s = t.seal(secret, pcrs=(7, 16))
        swtpm.extend16()
        with pytest.raises(tpm.PCRMismatch) as ei:
            _unseal(t, s)
    assert ei.value.changed == [16]
    assert "PCR 16 (sha256) changed since sealing" in str(ei.value)
    swtpm.reset16()
    with swtpm.tpm() as t:
        assert _unseal(t, s) == secret


def test_pin_is_required_and_checked(swtpm):
    secret = os.urandom(32)
    with swtpm.tpm() as t:
        s = t.seal(secret, pcrs=(16,), pin=b"2468")
        assert _unseal(t, s, pin=b"2468", needs_pin=True) == secret
        with pytest.raises(tpm.TPMError, match="wrong PIN"):
            _unseal(t, s, pin=b"1357", needs_pin=True)
        with pytest.raises(tpm.TPMError, match="needs a PIN"):
            _unseal(t, s, needs_pin=True)


def test_no_pcr_binding_unseals_anyway(swtpm):
    secret = os.urandom(32)
    with swtpm.tpm() as t:
        s = t.seal(secret, pcrs=())
        swtpm.extend16()
        assert _unseal(t, s) == secret
    swtpm.reset16()


def test_other_storage_key_is_refused(swtpm):
    with swtpm.tpm() as t:
        s = t.seal(os.urandom(32), pcrs=(16,))
        with pytest.raises(tpm.TPMError, match="storage key is not the one"):
            t.unseal(s.public, s.private, bank="sha256", pcrs=(16,), pcr_values=s.pcr_values,
                     primary_name="000b" + "00" * 32)


def test_transient_objects_are_flushed(swtpm):
    """swtpm has no resource manager: a leaked handle would stay until reset."""
    with swtpm.tpm() as t:
        s = t.seal(os.urandom(32), pcrs=(16,))
        _unseal(t, s)
        swtpm.extend16()
        with pytest.raises(tpm.PCRMismatch):
            _unseal(t, s)
    swtpm.reset16()
    assert swtpm.transient_handles() == []


def test_secret_never_crosses_the_bus_in_clear(swtpm):
    """Everything between the TSS and swtpm is recorded; the salted, encrypted
    sessions keep the secret out of it. The control run unseals the same blob
    through an unencrypted session and must show it, so the tap does see it."""
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_SE, TPM2B_PRIVATE, TPM2B_PUBLIC, TPMT_SYM_DEF

    tap = Tap(swtpm.port)
    try:
        secret = os.urandom(32)
        with tpm.TPM(tap.tcti) as t:
            s = t.seal(secret, pcrs=(7,))
            assert _unseal(t, s) == secret
        assert len(tap.captured) > 1000
        assert secret not in tap.captured

        with tpm.TPM(tap.tcti) as t:
            primary, _ = t.primary()
            obj = t._track(t.esys.load(primary, TPM2B_PRIVATE.unmarshal(s.private)[0],
                                       TPM2B_PUBLIC.unmarshal(s.public)[0]))
            sess = t._track(t.esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                                      TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256))
            t.esys.policy_pcr(sess, b"", tpm._selection("sha256", (7,)))
            assert bytes(t.esys.unseal(obj, session1=sess)) == secret
        assert secret in tap.captured
    finally:
        tap.close()


def test_unreachable_tpm_is_an_error_not_a_fallback():
    with pytest.raises(tpm.TPMError, match="cannot open TPM at TCTI"):
        tpm.TPM("swtpm:host=127.0.0.1,port=1")


def test_tcti_resolution_order():
    assert tpm.resolve_tcti({}, env={}) == "device:/dev/tpmrm0"
    assert tpm.resolve_tcti({"tcti": "swtpm:port=9"}, env={}) == "swtpm:port=9"
    assert tpm.resolve_tcti({"tcti": "swtpm:port=9"}, env={"QWAMOS_TCTI": "mssim"}) == "mssim"


def test_parse_pcrs():
    assert tpm.parse_pcrs("7,16") == (7, 16)
    assert tpm.parse_pcrs("16+7+7") == (7, 16)
    with pytest.raises(ValueError):
        tpm.parse_pcrs("24")
    with pytest.raises(ValueError):
        tpm.parse_pcrs("x")


def test_sha1_bank_seals_unseals_and_names_the_drift(swtpm):
    """PolicyPCR hashes the sha1 bank's values with the session's sha256."""
    swtpm.reset16()
    secret = os.urandom(32)
    with swtpm.tpm() as t:
        s = t.seal(secret, bank="sha1", pcrs=(7, 16))
        assert len(s.pcr_values["16"]) == 40 and _unseal(t, s) == secret
        t.extend(16, b"firmware", bank="sha1")
        with pytest.raises(tpm.PCRMismatch) as ei:
            _unseal(t, s)
    assert ei.value.changed == [16] and "PCR 16 (sha1) changed" in str(ei.value)
    swtpm.reset16()


def test_policy_pcr_digest_uses_the_session_hash():
    import hashlib

    values = {7: "00" * 20, 16: "11" * 20}
    want = hashlib.sha256(bytes(20) + b"\x11" * 20).digest()
    assert tpm.policy_pcr_digest(values, (16, 7)) == want
