"""Seal and unseal small secrets with a TPM 2.0 through the ESAPI (tpm2-pytss).

Why ESAPI and not FAPI: FAPI in the libtss2 this targets crashes on policies over
two or more PCRs.

Every command that carries a secret runs in a session salted to the storage
primary key, with parameter encryption: the key goes to the TPM (create) and
comes back (unseal) AES-CFB encrypted, so an interposer on the bus or the
resource-manager socket never sees it in clear. The primary is re-derived from
the owner seed at each use (same template, same key), and its name is checked
against the one recorded at enrolment, so a substituted TPM cannot pick the salt
key.

Importing this module imports tpm2_pytss (about 0.2 s): only code that has a key
to handle imports it.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass

# libtss2 logs TPM warnings to stderr, which the hook reserves for its one-line
# reason: silence it unless the operator asked for logs.
os.environ.setdefault("TSS2_LOG", "all+NONE")

from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_RC,
    TPM2_SE,
    TPM2B_DIGEST,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMA_OBJECT,
    TPMA_SESSION,
    TPML_PCR_SELECTION,
    TPMS_SENSITIVE_CREATE,
    TPMT_SYM_DEF,
    TSS2_Exception,
)
from tpm2_pytss.types import TPMT_PUBLIC, TPM2B_AUTH, TPM2B_SENSITIVE_DATA

DEFAULT_TCTI = "device:/dev/tpmrm0"

# The storage primary: the tpm2-tools `createprimary -G ecc256:aes128cfb` template,
# so `tpm2_load` can load our blobs too (the benchmark and manual recovery rely on it).
PRIMARY_TEMPLATE = "ecc256:aes128cfb"

_SYM = None


def _sym() -> TPMT_SYM_DEF:
    global _SYM
    if _SYM is None:
        _SYM = TPMT_SYM_DEF.parse("aes128cfb")
    return _SYM


class TPMError(Exception):
    """Any TPM failure; str() is one line for the user."""


class PCRMismatch(TPMError):
    """The PCR policy refused the unseal; .changed lists the PCR indices that moved."""

    def __init__(self, message: str, changed: list[int], bank: str):
        super().__init__(message)
        self.changed = changed
        self.bank = bank


def resolve_tcti(global_keys: dict | None = None, env=os.environ) -> str:
    """QWAMOS_TCTI wins, then the policy's keys.tcti, then the kernel resource manager."""
    return env.get("QWAMOS_TCTI") or (global_keys or {}).get("tcti") or DEFAULT_TCTI


@dataclass(frozen=True)
class Sealed:
    public: bytes  # marshalled TPM2B_PUBLIC (tpm2-tools `-u` format)
    private: bytes  # marshalled TPM2B_PRIVATE (tpm2-tools `-r` format)
    policy_digest: str  # hex
    pcr_values: dict  # {"7": "hex", ...} at seal time
    bank: str
    pcrs: tuple[int, ...]
    primary_name: str  # hex name of the storage primary the blob is under
    pin: bool


def _selection(bank: str, pcrs) -> TPML_PCR_SELECTION:
    return TPML_PCR_SELECTION.parse(f"{bank}:{','.join(str(p) for p in sorted(pcrs))}")


# PolicyPCR hashes the selected PCR values with the policy session's hash
# algorithm, whatever bank they come from (TPM 2.0 Part 3, 23.7).
SESSION_HASH = "sha256"


def policy_pcr_digest(values: dict, pcrs) -> bytes:
    """pcrDigest for PolicyPCR: H_session(value[p0] || value[p1] || ...), in index order."""
    h = hashlib.new(SESSION_HASH)
    for p in sorted(pcrs):
        h.update(bytes.fromhex(values[p]))
    return h.digest()


def parse_pcrs(text: str) -> tuple[int, ...]:
    """'7,16' or '7+16' -> (7, 16). Raises ValueError on anything else."""
    out = set()
    for part in text.replace("+", ",").split(","):
        part = part.strip()
        if not part:
            continue
        n = int(part)
        if not 0 <= n <= 23:
            raise ValueError(f"PCR index {n} out of range 0-23")
        out.add(n)
    return tuple(sorted(out))


class TPM:
    """One ESAPI connection. Use as a context manager; every transient object and
    session created through it is flushed before it closes."""

    def __init__(self, tcti: str):
        self.tcti = tcti
        try:
            self.esys = ESAPI(tcti)
        except Exception as exc:  # TCTI load / connect failures
            raise TPMError(f"cannot open TPM at TCTI '{tcti}': {_short(exc)}") from None
        self._transient: list = []

    def __enter__(self) -> "TPM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._flush_to(0)
        try:
            self.esys.close()
        except Exception:
            pass

    def _flush_to(self, mark: int) -> None:
        # Without a resource manager (swtpm, /dev/tpm0) a leaked handle keeps one
        # of the TPM's few object slots until reset, so flush on every path.
        while len(self._transient) > mark:
            handle = self._transient.pop()
            try:
                self.esys.flush_context(handle)
            except Exception:
                pass

    @contextmanager
    def _op(self):
        mark = len(self._transient)
        try:
            yield
        finally:
            self._flush_to(mark)

    def _track(self, handle):
        self._transient.append(handle)
        return handle

    def _flush(self, handle) -> None:
        if handle in self._transient:
            self._transient.remove(handle)
            self.esys.flush_context(handle)

    # -- building blocks -------------------------------------------------

    def primary(self, expect_name: str | None = None):
        """Create (derive) the storage primary; check its name when one is expected."""
        tmpl = TPM2B_PUBLIC.parse(
            PRIMARY_TEMPLATE,
            objectAttributes=TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS,
            nameAlg="sha256",
        )
        handle, _pub, _, _, _ = self.esys.create_primary(
            TPM2B_SENSITIVE_CREATE(), tmpl, ESYS_TR.OWNER
        )
        self._track(handle)
        name = bytes(self.esys.tr_get_name(handle)).hex()
        if expect_name and name != expect_name:
            raise TPMError(
                "the TPM's storage key is not the one the key was sealed under "
                "(TPM cleared or replaced); reseal with the recovery key"
            )
        return handle, name

    def _session(self, salt_key, kind, attrs):
        sess = self._track(
            self.esys.start_auth_session(
                tpm_key=salt_key,
                bind=ESYS_TR.NONE,
                session_type=kind,
                symmetric=_sym(),
                auth_hash=TPM2_ALG.parse(SESSION_HASH),
            )
        )
        self.esys.trsess_set_attributes(sess, attrs | TPMA_SESSION.CONTINUESESSION)
        return sess

    def read_pcrs(self, bank: str, pcrs) -> dict[int, str]:
        """Current values, {index: hex}. PCR_Read returns at most 8 per call."""
        want = sorted(pcrs)
        out: dict[int, str] = {}
        while len(out) < len(want):
            todo = [p for p in want if p not in out]
            _, sel, digests = self.esys.pcr_read(_selection(bank, todo))
            got = []
            for s in sel:
                mask = bytes(s.pcrSelect)[: s.sizeofSelect]
                for i in range(len(mask) * 8):
                    if mask[i // 8] & (1 << (i % 8)):
                        got.append(i)
            if not got:
                raise TPMError(f"TPM has no {bank} bank for PCRs {todo}")
            for idx, d in zip(sorted(got), digests):
                out[idx] = bytes(d).hex()
        return out

    def _policy(self, session, bank, pcrs, pcr_digest: bytes, pin: bool) -> None:
        if pcrs:
            self.esys.policy_pcr(session, TPM2B_DIGEST(pcr_digest), _selection(bank, pcrs))
        if pin:
            self.esys.policy_auth_value(session)

    # -- operations ------------------------------------------------------

    def seal(self, secret: bytes, bank: str = "sha256", pcrs=(7,), pin: bytes | None = None) -> Sealed:
        """Seal `secret` to the current values of `pcrs` (empty = no PCR binding)."""
        pcrs = tuple(sorted(pcrs))
        with self._op(), _as_tpm_error("seal"):
            primary, pname = self.primary()
            values = self.read_pcrs(bank, pcrs) if pcrs else {}
            pcr_digest = policy_pcr_digest(values, pcrs) if pcrs else b""
            trial = self._track(
                self.esys.start_auth_session(
                    ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, _sym(), TPM2_ALG.parse(SESSION_HASH)
                )
            )
            self._policy(trial, bank, pcrs, pcr_digest, pin is not None)
            policy = bytes(self.esys.policy_get_digest(trial))
            self._flush(trial)

            attrs = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
            if not pcrs and pin is None:
                # No policy at all: the object is usable with its (empty) auth value.
                attrs |= TPMA_OBJECT.USERWITHAUTH
            public = TPM2B_PUBLIC(
                TPMT_PUBLIC(
                    type=TPM2_ALG.KEYEDHASH,
                    nameAlg=TPM2_ALG.SHA256,
                    objectAttributes=attrs,
                    authPolicy=policy if (pcrs or pin is not None) else b"",
                )
            )
            public.publicArea.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
            sensitive = TPM2B_SENSITIVE_CREATE(
                TPMS_SENSITIVE_CREATE(
                    userAuth=TPM2B_AUTH(pin or b""), data=TPM2B_SENSITIVE_DATA(secret)
                )
            )
            # Salted HMAC session with DECRYPT: the secret travels to the TPM encrypted.
            hmac = self._session(primary, TPM2_SE.HMAC, TPMA_SESSION.DECRYPT)
            priv, pub, _, _, _ = self.esys.create(primary, sensitive, public, session1=hmac)
            self._flush(hmac)
        return Sealed(
            public=pub.marshal(),
            private=priv.marshal(),
            policy_digest=policy.hex(),
            pcr_values={str(p): values[p] for p in pcrs},
            bank=bank,
            pcrs=pcrs,
            primary_name=pname,
            pin=pin is not None,
        )

    def unseal(
        self,
        public: bytes,
        private: bytes,
        *,
        bank: str,
        pcrs,
        pcr_values: dict | None = None,
        primary_name: str | None = None,
        pin: bytes | None = None,
        needs_pin: bool = False,
    ) -> bytes:
        """Unseal; on a PCR policy failure raise PCRMismatch naming the PCRs that
        differ from `pcr_values` (the values recorded when the blob was sealed)."""
        pcrs = tuple(sorted(pcrs))
        if needs_pin and pin is None:
            raise TPMError("key needs a PIN and none was given")
        with self._op(), _as_tpm_error("unseal"):
            primary, _ = self.primary(primary_name)
            pub, _ = TPM2B_PUBLIC.unmarshal(public)
            priv, _ = TPM2B_PRIVATE.unmarshal(private)
            obj = self._track(self.esys.load(primary, priv, pub))
            if needs_pin:
                self.esys.tr_set_auth(obj, pin)
            if pcrs or needs_pin:
                # Policy session, salted, ENCRYPT: the TPM returns the secret encrypted.
                sess = self._session(primary, TPM2_SE.POLICY, TPMA_SESSION.ENCRYPT)
                self._policy(sess, bank, pcrs, b"", needs_pin)
            else:
                sess = self._session(primary, TPM2_SE.HMAC, TPMA_SESSION.ENCRYPT)
            try:
                data = bytes(self.esys.unseal(obj, session1=sess))
            except TSS2_Exception as exc:
                if exc.error in (TPM2_RC.POLICY_FAIL, TPM2_RC.VALUE) and pcrs:
                    changed = self.changed_pcrs(bank, pcrs, pcr_values or {})
                    if changed:
                        names = ", ".join(str(p) for p in changed)
                        word = "PCR" if len(changed) == 1 else "PCRs"
                        raise PCRMismatch(
                            f"TPM refused to unseal: {word} {names} ({bank}) changed since sealing",
                            changed,
                            bank,
                        ) from None
                if exc.error == TPM2_RC.AUTH_FAIL or exc.error == TPM2_RC.BAD_AUTH:
                    raise TPMError("TPM refused to unseal: wrong PIN") from None
                raise
            self._flush(sess)
            self._flush(obj)
            return data

    def changed_pcrs(self, bank: str, pcrs, recorded: dict) -> list[int]:
        now = self.read_pcrs(bank, pcrs)
        return [p for p in sorted(pcrs) if recorded.get(str(p)) != now.get(p)]

    def random(self, n: int) -> bytes:
        """Random bytes from the TPM, mixed with the OS generator (neither alone is trusted)."""
        out = b""
        while len(out) < n:
            out += bytes(self.esys.get_random(min(32, n - len(out))))
        return bytes(a ^ b for a, b in zip(out, os.urandom(n)))

    # -- test support: PCR 16 is resettable, never used by real policies -----

    def extend(self, pcr: int, data: bytes, bank: str = "sha256") -> None:
        from tpm2_pytss import TPML_DIGEST_VALUES, TPMT_HA

        digest = hashlib.new(bank, data).digest()
        ha = TPMT_HA(hashAlg=TPM2_ALG.parse(bank))
        setattr(ha.digest, bank, digest)
        values = TPML_DIGEST_VALUES([ha])
        self.esys.pcr_extend(ESYS_TR.parse(f"PCR{pcr}"), values)

    def reset(self, pcr: int) -> None:
        self.esys.pcr_reset(ESYS_TR.parse(f"PCR{pcr}"))


@contextmanager
def connect(tcti: str):
    tpm = TPM(tcti)
    try:
        yield tpm
    finally:
        tpm.close()


@contextmanager
def _as_tpm_error(what: str):
    try:
        yield
    except TSS2_Exception as exc:
        raise TPMError(f"TPM {what} failed: {_short(exc)}") from None


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]
