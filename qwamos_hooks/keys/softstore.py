"""Software keystore: for hosts without a TPM, and ONLY when the policy says
`keys: {allow_software_keystore: true}`. Never a fallback: a TPM-backed key
whose TPM is missing fails, it is not quietly re-read from here.

The key is sealed with ChaCha20-Poly1305 under a key Argon2id derives from a
passphrase (read from `keys.software_passphrase_file`, root-only). This binds
the key to that passphrase, not to the host's boot state: it is weaker than
the TPM, and `keys status` says so.
"""

from __future__ import annotations

import json
import os

ARGON2 = {"time_cost": 2, "memory_cost": 65536, "parallelism": 1}


class SoftStoreError(Exception):
    pass


def require_enabled(global_keys: dict) -> None:
    if global_keys.get("allow_software_keystore") is not True:
        raise SoftStoreError(
            "software keystore refused: the policy does not set keys.allow_software_keystore: true"
        )


def passphrase(global_keys: dict) -> bytes:
    require_enabled(global_keys)
    path = global_keys.get("software_passphrase_file")
    if not path:
        raise SoftStoreError("software keystore: keys.software_passphrase_file is not set in the policy")
    try:
        st = os.stat(path)
        if st.st_mode & 0o077:
            raise SoftStoreError(f"software keystore: {path} must not be readable by group/other")
        with open(path, "rb") as fh:
            data = fh.read().rstrip(b"\n")
    except OSError as exc:
        raise SoftStoreError(f"software keystore: cannot read {path}: {exc.strerror}") from None
    if len(data) < 12:
        raise SoftStoreError("software keystore: passphrase shorter than 12 bytes")
    return data


def _kek(pw: bytes, salt: bytes) -> bytes:
    from argon2.low_level import Type, hash_secret_raw

    return hash_secret_raw(pw, salt, hash_len=32, type=Type.ID, **ARGON2)


def wrap(secret: bytes, pw: bytes, aad: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    salt, nonce = os.urandom(16), os.urandom(12)
    ct = ChaCha20Poly1305(_kek(pw, salt)).encrypt(nonce, secret, aad)
    return json.dumps({"v": 1, "kdf": "argon2id", **ARGON2, "salt": salt.hex(),
                       "nonce": nonce.hex(), "ct": ct.hex()}).encode()


def unwrap(blob: bytes, pw: bytes, aad: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    d = json.loads(blob)
    try:
        return ChaCha20Poly1305(_kek(pw, bytes.fromhex(d["salt"]))).decrypt(
            bytes.fromhex(d["nonce"]), bytes.fromhex(d["ct"]), aad)
    except InvalidTag:
        raise SoftStoreError("software keystore: wrong passphrase or tampered blob") from None
