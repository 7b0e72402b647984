"""Hook actions: keys.unseal (prepare/begin) and keys.wipe (stopped/end, release/end).

A domain without keys pays one failed directory listing: the TPM stack,
cryptography and even json are imported only when the domain has keys.
"""

from __future__ import annotations

import os

from ..errors import StageError
from . import store


def _runtime_dir(ctx) -> str | None:
    return (ctx.policy.section("keys") if ctx.policy is not None else {}).get("runtime_dir")


def unseal(ctx) -> None:
    uuid = (ctx.uuid or "").lower()
    if not uuid:
        return
    names = store.list_names(ctx.paths.lib_dir, uuid)
    profile = ctx.profile.section("keys") if ctx.profile is not None else {}
    missing = [r for r in profile.get("required") or () if r not in names]
    if missing:
        raise StageError(
            f"keys: the profile requires key(s) {', '.join(missing)} and none is enrolled for this VM"
            f" (qwamos-policy keys enroll {uuid} NAME)"
        )
    if not names:
        return

    from . import deliver

    global_keys = dict(ctx.policy.section("keys")) if ctx.policy is not None else {}
    try:
        _unseal_all(ctx, uuid, names, profile, global_keys)
    except BaseException:
        # Fail closed and leave nothing half-delivered, whatever went wrong.
        deliver.wipe(ctx.paths.state_dir, uuid, _runtime_dir(ctx))
        raise


def _unseal_all(ctx, uuid, names, profile, global_keys) -> None:
    from . import deliver, manager

    state_dir = ctx.paths.state_dir
    for name in names:
        version = None
        try:
            kdir = store.key_dir(ctx.paths.lib_dir, uuid, name)
            meta = store.load_meta(kdir)
            version = meta["current"]
            rec = store.current(meta)
            pin = deliver.pin_take(uuid, name) if rec.get("pin") else None
            secret = manager.unseal_version(kdir, meta, version, global_keys, pin=pin)
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            changed = getattr(exc, "changed", None)
            ctx.audit("keys.unseal.failed", uuid=uuid, key=name, version=version, reason=reason,
                      **({"changed_pcrs": changed} if changed else {}))
            hint = (f"; if expected (firmware update), run: qwamos-policy keys reseal {uuid} {name} --recovery-key KEY"
                    if changed else "")
            raise StageError(f"key '{name}': {reason}{hint}") from None
        if len(meta["versions"]) > 1 and not meta.get("pending"):
            _finish_rotation(ctx, uuid, name, kdir, version, secret, global_keys)
        try:
            owner = meta.get("owner") or profile.get("owner")
            group = meta.get("group") or profile.get("group")
            rec_out = deliver.deliver(meta["delivery"], state_dir=state_dir, runtime_dir=_runtime_dir(ctx),
                                      uuid=uuid, name=name, key=secret, owner=owner, group=group,
                                      luks_device=meta.get("luks_device"))
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            ctx.audit("keys.deliver.failed", uuid=uuid, key=name, version=version, delivery=meta.get("delivery"),
                      reason=reason)
            raise StageError(f"key '{name}': {reason}") from None
        finally:
            del secret
        # ("path" and "stage" are taken by the audit call itself)
        where = {("target" if k == "path" else k): rec_out[k] for k in ("path", "serial", "mapper") if k in rec_out}
        ctx.audit("keys.unseal", uuid=uuid, key=name, version=version, delivery=meta["delivery"],
                  pcrs=rec.get("pcrs"), bank=rec.get("bank"), backend=meta.get("backend"), **where)


def _finish_rotation(ctx, uuid, name, kdir, version, secret, global_keys) -> None:
    """A rotation died after its commit: the retired version still unseals. Finish
    its clean-up now (best effort: the committed key is fine, so never block)."""
    from . import rotate

    try:
        outcome = rotate.clean_at_start(kdir, version, secret, global_keys)
    except Exception as exc:
        ctx.log(f"keys: {uuid} {name}: clean-up of retired versions failed: {' '.join(str(exc).split())}")
        return
    if outcome:
        ctx.audit("keys.rotate.recover", uuid=uuid, key=name, outcome=outcome)


def wipe(ctx) -> None:
    """Idempotent; never raises (these stages cannot block and must not fail)."""
    uuid = (ctx.uuid or "").lower()
    if not uuid or not os.path.isdir(os.path.join(ctx.paths.state_dir, "keys", uuid)):
        return
    try:
        from . import deliver

        wiped = deliver.wipe(ctx.paths.state_dir, uuid, _runtime_dir(ctx))
        if wiped:
            ctx.audit("keys.wipe", uuid=uuid, keys=wiped)
    except Exception as exc:
        ctx.log(f"keys.wipe {uuid}: {exc}")
