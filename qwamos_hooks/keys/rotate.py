"""Versioned, crash-safe rotation (also used by reseal).

Order of a rotation from version N to N+1, each step made durable before the next:

  1. sealed       meta.pending = N+1; v(N+1) blobs written
  2. verified     v(N+1) unsealed and compared with the new key
  3. luks-added   (LUKS keys) the new key added in a new keyslot, authorised by the old key
  4. committed    meta.current = N+1 (one atomic rename); v N marked retired
  5. luks-killed  (LUKS keys) the old keyslot killed, authorised by the new key
  6. old-removed  v N blobs deleted

Until step 4 the hook unseals N; from step 4 on, N+1. A crash anywhere leaves
the committed version intact and, for LUKS, its keyslot still present. The next
rotate / reseal / `keys rotate --due` first finishes or undoes the interrupted
run (recover()): a pending version that unseals is rolled forward, anything
else is rolled back. A crash after step 4 leaves version N on disk, still
unsealing: `keys status` flags it, and the next VM start (clean_at_start) or
`rotate --due` finishes steps 5-6.

`crash` is a test hook: called with each step's name, it may raise to simulate
a crash right after that step.
"""

from __future__ import annotations

from . import manager, store

STEPS = ("sealed", "verified", "luks-added", "committed", "luks-killed", "old-removed")


class RotationError(Exception):
    pass


def _step(crash, name: str) -> None:
    if crash is not None:
        crash(name)


def _is_luks(meta: dict) -> bool:
    return meta.get("delivery") == "luks" and bool(meta.get("luks_device"))


def _commit(kdir: str, meta: dict, new_v: int) -> None:
    old_v = meta["current"]
    meta["versions"][str(old_v)]["state"] = "retired"
    meta["versions"][str(new_v)].pop("state", None)
    meta["current"] = new_v
    meta["pending"] = None
    store.save_meta(kdir, meta)


def _drop_retired(kdir: str, meta: dict, global_keys: dict, current_key: bytes | None, crash=None) -> list[int]:
    """Kill retired versions' LUKS slots (if distinct) and delete their blobs."""
    from . import deliver

    dropped = []
    cur = store.current(meta)
    for v, rec in sorted(meta["versions"].items(), key=lambda kv: int(kv[0])):
        if int(v) == meta["current"]:
            continue
        slot = rec.get("luks_slot")
        if _is_luks(meta) and slot is not None and slot != cur.get("luks_slot"):
            if current_key is None:
                current_key = manager.unseal_version(kdir, meta, meta["current"], global_keys)
            try:
                deliver.luks_kill_slot(meta["luks_device"], slot, current_key)
            except deliver.DeliveryError as exc:
                if "not active" not in str(exc) and "is not used" not in str(exc):
                    raise
            rec["luks_slot"] = None
            store.save_meta(kdir, meta)
            _step(crash, "luks-killed")
        store.remove_version(kdir, int(v))
        del meta["versions"][v]
        store.save_meta(kdir, meta)
        dropped.append(int(v))
    return dropped


def recover(kdir: str, meta: dict, global_keys: dict) -> str | None:
    """Finish or undo an interrupted rotation. Caller holds the key's lock."""
    from . import deliver

    pending = meta.get("pending")
    outcome = None
    if pending:
        v = int(pending["version"])
        rec = meta["versions"].get(str(v))
        secret = None
        if rec is not None:
            try:
                secret = manager.unseal_version(kdir, meta, v, global_keys)
            except Exception:
                secret = None
        if secret is not None:
            if _is_luks(meta) and rec.get("luks_slot") is None:
                slot = deliver.luks_test(meta["luks_device"], secret)
                if slot is None:
                    old = manager.unseal_version(kdir, meta, meta["current"], global_keys)
                    slot = deliver.luks_add_key(meta["luks_device"], old, secret)
                rec["luks_slot"] = slot
                store.save_meta(kdir, meta)
            _commit(kdir, meta, v)
            outcome = f"rolled forward to v{v}"
        else:
            store.remove_version(kdir, v)
            meta["versions"].pop(str(v), None)
            meta["pending"] = None
            store.save_meta(kdir, meta)
            outcome = f"rolled back v{v}"
    cleaned = clean_retired(kdir, meta, global_keys, None)
    if cleaned:
        outcome = f"{outcome}; {cleaned}" if outcome else cleaned
    return outcome


def clean_retired(kdir: str, meta: dict, global_keys: dict, current_key: bytes | None) -> str | None:
    """Finish the clean-up of a committed rotation: kill retired versions' LUKS
    keyslots and delete their blobs (and any blobs meta.json no longer lists).
    Caller holds the key's lock."""
    dropped = _drop_retired(kdir, meta, global_keys, current_key) if len(meta["versions"]) > 1 else []
    for v in store.retired_on_disk(kdir, meta):
        if str(v) not in meta["versions"]:
            store.remove_version(kdir, v)
            dropped.append(v)
    return f"removed retired {', '.join(f'v{v}' for v in sorted(dropped))}" if dropped else None


def needs_recovery(kdir: str, meta: dict) -> bool:
    """Cheap check: an interrupted rotation or a retired version left behind."""
    return bool(meta.get("pending")) or len(meta.get("versions", {})) > 1 or bool(store.retired_on_disk(kdir, meta))


def finish_interrupted(lib_dir: str, global_keys: dict, audit) -> list[tuple[str, str, str | None, str | None]]:
    """Finish or undo every interrupted rotation (what `rotate --due` does first).
    Returns (uuid, name, outcome, error) for each key that needed it."""
    out = []
    for uuid, name in store.list_all(lib_dir):
        kdir = store.key_dir(lib_dir, uuid, name)
        try:
            if not needs_recovery(kdir, store.load_meta(kdir)):
                continue
            with store.locked(kdir):
                meta = store.load_meta(kdir)
                outcome = recover(kdir, meta, global_keys)
        except Exception as exc:  # reported per key; the others still get done
            out.append((uuid, name, None, " ".join(str(exc).split()) or type(exc).__name__))
            continue
        if outcome:
            audit("keys.rotate.recover", uuid=uuid, key=name, outcome=outcome)
            out.append((uuid, name, outcome, None))
    return out


def clean_at_start(kdir: str, version: int, current_key: bytes, global_keys: dict) -> str | None:
    """At VM start, with the committed key just unsealed: finish a committed
    rotation's clean-up so a retired (maybe compromised) version stops
    unsealing. Skips if another rotation holds the lock or is pending."""
    try:
        with store.locked(kdir, wait=False):
            meta = store.load_meta(kdir)
            if meta.get("pending") or meta["current"] != version:
                return None
            return clean_retired(kdir, meta, global_keys, current_key)
    except BlockingIOError:
        return None


def rotate(lib_dir: str, uuid: str, name: str, *, global_keys: dict, audit, reason: str = "scheduled",
           kind: str = "rotate", secret: bytes | None = None, old_secret: bytes | None = None,
           pcrs=None, bank: str | None = None, pin: bytes | None = None, crash=None) -> int:
    """Rotate to a new version; returns its number. With `secret` given (reseal),
    the key value is kept and only its sealing changes."""
    from . import deliver

    kdir = store.key_dir(lib_dir, uuid, name)
    with store.locked(kdir):
        meta = store.load_meta(kdir)
        fixed = recover(kdir, meta, global_keys)
        if fixed:
            audit("keys.rotate.recover", uuid=uuid, key=name, outcome=fixed)
        old_v = meta["current"]
        old_rec = store.current(meta)
        if old_rec.get("pin") and pin is None:
            raise RotationError(f"key {name} is PIN-protected: give its PIN (--pin) to rotate or reseal it")
        luks = _is_luks(meta)
        if luks and old_secret is None:
            old_secret = manager.unseal_version(kdir, meta, old_v, global_keys, pin=pin)
        new_secret = secret if secret is not None else manager.new_secret(meta, global_keys)
        new_v = max(int(v) for v in meta["versions"]) + 1
        if pcrs is not None:
            meta["pcrs"] = list(pcrs)
        if bank:
            meta["bank"] = bank
        meta["pending"] = {"version": new_v, "kind": kind, "reason": reason, "started": manager.iso(manager.now())}
        store.save_meta(kdir, meta)

        rec = manager.seal_version(kdir, meta, new_v, new_secret, global_keys, pin=pin if old_rec.get("pin") else None)
        rec["state"] = "pending"
        rec["reason"] = reason
        meta["versions"][str(new_v)] = rec
        store.save_meta(kdir, meta)
        _step(crash, "sealed")

        if manager.unseal_version(kdir, meta, new_v, global_keys, pin=pin) != new_secret:
            raise RotationError(f"key {name}: new version v{new_v} did not unseal to the new key")
        _step(crash, "verified")

        if luks:
            if new_secret == old_secret:
                rec["luks_slot"] = old_rec.get("luks_slot")
            else:
                rec["luks_slot"] = deliver.luks_add_key(meta["luks_device"], old_secret, new_secret)
            store.save_meta(kdir, meta)
            _step(crash, "luks-added")

        _commit(kdir, meta, new_v)
        _step(crash, "committed")

        _drop_retired(kdir, meta, global_keys, new_secret, crash)
        _step(crash, "old-removed")
        del new_secret, old_secret
    audit(f"keys.{kind}", uuid=uuid, key=name, version=new_v, previous=old_v, reason=reason,
          pcrs=meta["pcrs"], bank=meta["bank"])
    return new_v


def due(lib_dir: str, at: float | None = None) -> list[tuple[str, str, str]]:
    """(uuid, name, due date) of every key whose committed version is due."""
    at = manager.now() if at is None else at
    out = []
    for uuid, name in store.list_all(lib_dir):
        try:
            meta = store.load_meta(store.key_dir(lib_dir, uuid, name))
            rec = store.current(meta)
        except store.StoreError:
            continue
        if rec.get("rotation_due_ts", 0) <= at:
            out.append((uuid, name, rec.get("rotation_due", "?")))
    return out


def reseal(lib_dir: str, uuid: str, name: str, recovery_key: str, *, global_keys: dict, audit,
           pcrs=None, bank: str | None = None, pin: bytes | None = None, crash=None) -> int:
    """Re-bind a key to the current PCR values, proving ownership with the recovery key."""
    from . import recovery

    kdir = store.key_dir(lib_dir, uuid, name)
    meta = store.load_meta(kdir)
    v = meta["current"]
    try:
        secret = recovery.unwrap(store.read_version(kdir, v, ("rec",))["rec"], meta["recovery"], recovery_key,
                                 manager.aad(meta["uuid"], meta["name"], v))
    except recovery.RecoveryError:
        audit("keys.reseal.denied", uuid=uuid, key=name, reason="wrong recovery key")
        raise
    return rotate(lib_dir, uuid, name, global_keys=global_keys, audit=audit, reason="reseal with recovery key",
                  kind="reseal", secret=secret, old_secret=secret, pcrs=pcrs, bank=bank, pin=pin, crash=crash)
