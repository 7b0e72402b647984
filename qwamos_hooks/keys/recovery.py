"""Recovery keys: the non-TPM path back to a key (as clevis and cryptenroll keep one).

Enrolment shows a random recovery key once. From it Argon2id derives an X25519
private key; only the public half is stored. Every version of the key (first
enrolment and each rotation) is wrapped to that public half: an ephemeral
X25519 exchange, HKDF-SHA256, then ChaCha20-Poly1305. So a rotation needs no
recovery key, and the disk holds nothing that opens a wrap without it.
"""

from __future__ import annotations

import base64
import json
import os

ARGON2 = {"time_cost": 2, "memory_cost": 65536, "parallelism": 1}  # ~0.18 s here
_INFO = b"qwamos-hooks recovery wrap v1"


class RecoveryError(Exception):
    pass


def new_recovery_key() -> str:
    """160 random bits as 8 groups of base32: easy to type, nothing to confuse."""
    raw = base64.b32encode(os.urandom(20)).decode()
    return "-".join(raw[i:i + 4] for i in range(0, 32, 4))


def _normalise(text: str) -> bytes:
    return "".join(c for c in text.upper() if c.isalnum()).encode()


def _derive(recovery_key: str, salt: bytes):
    from argon2.low_level import Type, hash_secret_raw
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    seed = hash_secret_raw(_normalise(recovery_key), salt, hash_len=32, type=Type.ID, **ARGON2)
    return X25519PrivateKey.from_private_bytes(seed)


def setup(recovery_key: str) -> dict:
    """Metadata for a new recovery key: its salt and public half (both public data)."""
    from cryptography.hazmat.primitives import serialization as s

    salt = os.urandom(16)
    pub = _derive(recovery_key, salt).public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    return {"salt": salt.hex(), "public": pub.hex(), "kdf": "argon2id", **ARGON2}


def _kek(shared: bytes, eph_pub: bytes, pub: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(hashes.SHA256(), 32, salt=eph_pub + pub, info=_INFO).derive(shared)


def wrap(secret: bytes, rec: dict, aad: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    pub = bytes.fromhex(rec["public"])
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    kek = _kek(eph.exchange(X25519PublicKey.from_public_bytes(pub)), eph_pub, pub)
    nonce = os.urandom(12)
    ct = ChaCha20Poly1305(kek).encrypt(nonce, secret, aad)
    return json.dumps({"v": 1, "eph": eph_pub.hex(), "nonce": nonce.hex(), "ct": ct.hex()}).encode()


def unwrap(blob: bytes, rec: dict, recovery_key: str, aad: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    d = json.loads(blob)
    priv = _derive(recovery_key, bytes.fromhex(rec["salt"]))
    eph_pub = bytes.fromhex(d["eph"])
    pub = bytes.fromhex(rec["public"])
    kek = _kek(priv.exchange(X25519PublicKey.from_public_bytes(eph_pub)), eph_pub, pub)
    try:
        return ChaCha20Poly1305(kek).decrypt(bytes.fromhex(d["nonce"]), bytes.fromhex(d["ct"]), aad)
    except InvalidTag:
        raise RecoveryError("wrong recovery key") from None
