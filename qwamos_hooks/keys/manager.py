"""Seal, unseal and enrol one key version; shared by the CLI, the hook and rotation.

A key has versions. meta["current"] names the committed one (the one the hook
unseals); meta["pending"] names a version being rotated in. A version record
holds only public facts: PCR list and values at seal time, bank, policy digest,
the storage primary's name, LUKS keyslot, dates.
"""

from __future__ import annotations

import os
import time

from . import store

KEY_BYTES = 32
DEFAULT_PCRS = (7,)
DEFAULT_BANK = "sha256"
ROTATION_CHOICES = (90, 180, 365)
DEFAULT_ROTATION_DAYS = 180
DAY = 86400
# PCRs any process may reset at locality 0 (PC Client Platform TPM Profile): 16
# (debug) and 23 (application). A policy over these alone binds to nothing:
# extend + reset brings back the sealed value.
RESETTABLE_PCRS = frozenset({16, 23})


class KeyError_(Exception):
    """One-line failure for the user (kept apart from the builtin KeyError)."""


def now() -> float:
    return time.time()


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def aad(uuid: str, name: str, version: int) -> bytes:
    # Binds each wrap to its place: a blob copied to another key or version fails.
    return f"qwamos-key:{uuid}:{name}:v{version}".encode()


def _tcti(global_keys: dict) -> str:
    from .tpm import resolve_tcti

    return resolve_tcti(global_keys)


def only_resettable(pcrs) -> bool:
    return bool(pcrs) and set(pcrs) <= RESETTABLE_PCRS


def _unmeasured(value: str) -> bool:
    # A PCR's reset value: zeros, or ones for 17-22 on a boot without DRTM.
    return set(bytes.fromhex(value)) in ({0}, {0xFF})


def binding_warnings(meta: dict, rec: dict) -> list[str]:
    """What is weak about a version's PCR binding (for enrol and `keys status`)."""
    if meta.get("backend") != "tpm":
        return []
    pcrs = rec.get("pcrs") or []
    if not pcrs:
        return ["bound to no PCRs"]
    out = []
    listed = ",".join(map(str, pcrs))
    if only_resettable(pcrs):
        out.append(f"bound only to resettable PCR {listed}: anyone can reset them, so this binds to nothing")
    values = rec.get("pcr_values") or {}
    if values and all(_unmeasured(v) for v in values.values()):
        out.append(f"PCR {listed} held only reset values at sealing (never measured): the binding proves nothing")
    return out


def new_secret(meta: dict, global_keys: dict) -> bytes:
    if meta["backend"] == "tpm":
        from . import tpm

        with tpm.connect(_tcti(global_keys)) as t:
            return t.random(KEY_BYTES)
    return os.urandom(KEY_BYTES)


def seal_version(kdir: str, meta: dict, version: int, secret: bytes, global_keys: dict,
                 *, pcrs=None, bank=None, pin: bytes | None = None) -> dict:
    """Write version `version`'s blobs (sealed + recovery wrap); return its record.
    Nothing is committed: meta is not written here."""
    from . import recovery

    pcrs = tuple(meta["pcrs"] if pcrs is None else pcrs)
    bank = bank or meta["bank"]
    ts = now()
    rec = {
        "created": iso(ts),
        "created_ts": ts,
        "rotation_due": iso(ts + meta["rotation_days"] * DAY),
        "rotation_due_ts": ts + meta["rotation_days"] * DAY,
        "pcrs": list(pcrs),
        "bank": bank,
        "pin": pin is not None,
    }
    blobs = {"rec": recovery.wrap(secret, meta["recovery"], aad(meta["uuid"], meta["name"], version))}
    if meta["backend"] == "tpm":
        from . import tpm

        with tpm.connect(_tcti(global_keys)) as t:
            sealed = t.seal(secret, bank=bank, pcrs=pcrs, pin=pin)
        blobs["pub"], blobs["priv"] = sealed.public, sealed.private
        rec.update(pcr_values=sealed.pcr_values, policy_digest=sealed.policy_digest,
                   primary_name=sealed.primary_name)
    else:
        from . import softstore

        blobs["soft"] = softstore.wrap(secret, softstore.passphrase(global_keys),
                                       aad(meta["uuid"], meta["name"], version))
    store.write_version(kdir, version, blobs)
    return rec


def unseal_version(kdir: str, meta: dict, version: int, global_keys: dict, pin: bytes | None = None) -> bytes:
    """Raises tpm.TPMError / tpm.PCRMismatch / softstore.SoftStoreError / OSError."""
    rec = meta["versions"][str(version)]
    if meta["backend"] == "tpm":
        from . import tpm

        blobs = store.read_version(kdir, version, ("pub", "priv"))
        with tpm.connect(_tcti(global_keys)) as t:
            return t.unseal(blobs["pub"], blobs["priv"], bank=rec["bank"], pcrs=rec["pcrs"],
                            pcr_values=rec.get("pcr_values"), primary_name=rec.get("primary_name"),
                            pin=pin, needs_pin=rec.get("pin", False))
    from . import softstore

    blob = store.read_version(kdir, version, ("soft",))["soft"]
    return softstore.unwrap(blob, softstore.passphrase(global_keys), aad(meta["uuid"], meta["name"], version))


def would_unseal(kdir: str, meta: dict, global_keys: dict) -> tuple[bool, str]:
    """For `keys status`: does the committed version unseal right now? Never prints the key."""
    try:
        rec = store.current(meta)
        if rec.get("pin"):
            if meta["backend"] == "tpm":
                from . import tpm

                with tpm.connect(_tcti(global_keys)) as t:
                    changed = t.changed_pcrs(rec["bank"], rec["pcrs"], rec.get("pcr_values") or {})
                if changed:
                    return False, f"PCRs changed since sealing: {','.join(map(str, changed))}"
                return True, "PCRs match (PIN needed to unseal)"
        secret = unseal_version(kdir, meta, meta["current"], global_keys)
        del secret
        return True, "unseals now"
    except Exception as exc:  # status reports, it does not fail
        return False, str(exc)


def enroll(lib_dir: str, uuid: str, name: str, *, global_keys: dict, audit, vm_name: str | None = None,
           pcrs=DEFAULT_PCRS, bank: str = DEFAULT_BANK, pin: bytes | None = None, delivery: str = "file",
           owner: str | None = None, group: str | None = None, luks_device: str | None = None,
           luks_key: bytes | None = None, rotation_days: int | None = None, backend: str = "tpm") -> str:
    """Enrol a new key; returns the recovery key (to be shown once, never stored)."""
    from . import deliver, recovery

    if delivery not in deliver.MODES:
        raise KeyError_(f"unknown delivery mode {delivery!r}")
    if delivery == "luks" and (not luks_device or luks_key is None):
        raise KeyError_("luks delivery needs --luks-device and an existing passphrase for it (--luks-key-file)")
    if backend == "software":
        from . import softstore

        softstore.require_enabled(global_keys)
    rotation_days = int(rotation_days or global_keys.get("rotation_days") or DEFAULT_ROTATION_DAYS)
    if rotation_days not in ROTATION_CHOICES:
        raise KeyError_(f"rotation schedule must be one of {ROTATION_CHOICES} days")
    kdir = store.key_dir(lib_dir, uuid, name)
    with store.locked(kdir):
        if os.path.exists(os.path.join(kdir, "meta.json")):
            raise KeyError_(f"key {name!r} is already enrolled for {uuid}; use 'keys rotate'")
        rkey = recovery.new_recovery_key()
        meta = {
            "format": 1, "uuid": uuid.lower(), "name": name, "vm_name": vm_name, "created": iso(now()),
            "backend": backend, "delivery": delivery, "owner": owner, "group": group,
            "luks_device": os.path.abspath(luks_device) if luks_device else None,
            "rotation_days": rotation_days, "pcrs": list(pcrs), "bank": bank,
            "recovery": recovery.setup(rkey), "current": 1, "pending": None, "versions": {},
        }
        secret = new_secret(meta, global_keys)
        try:
            rec = seal_version(kdir, meta, 1, secret, global_keys, pin=pin)
            meta["versions"]["1"] = rec
            if unseal_version(kdir, meta, 1, global_keys, pin=pin) != secret:
                raise KeyError_("sealed key did not unseal to the same value; enrolment aborted")
            if delivery == "luks":
                rec["luks_slot"] = deliver.luks_add_key(meta["luks_device"], luks_key, secret)
            store.save_meta(kdir, meta)
        except BaseException:
            store.remove_version(kdir, 1)
            raise
        finally:
            del secret
    audit("keys.enroll", uuid=uuid, key=name, version=1, backend=backend, pcrs=list(pcrs), bank=bank,
          delivery=delivery, pin=pin is not None, rotation_days=rotation_days)
    return rkey
