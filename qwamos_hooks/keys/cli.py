"""`qwamos-policy keys ...`: enrol, rotate, reseal, list, status, wipe.

VM is a domain UUID or a domain name that libvirt resolves (the CLI may call
libvirt; the hook never does).
"""

from __future__ import annotations

import os
import sys

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2


def register(sub) -> None:
    def vm_args(p, name=True):
        p.add_argument("vm", metavar="VM", help="domain UUID, or a name libvirt resolves")
        if name:
            p.add_argument("name", metavar="NAME", help="key name, e.g. disk")
        p.add_argument("--connect", "-c", help="libvirt URI to resolve a VM name (default qemu:///system)")

    p = sub.add_parser("enroll", help="generate a key for a VM and seal it to the TPM")
    vm_args(p)
    p.add_argument("--pcrs", default=None, help="PCR list, e.g. 7 or 0,2,7 (default 7)")
    p.add_argument("--pcr-bank", default="sha256", choices=("sha1", "sha256", "sha384", "sha512"))
    p.add_argument("--no-pcrs", action="store_true", help="bind to no PCRs (the key then unseals in any boot state)")
    p.add_argument("--allow-resettable-pcrs", action="store_true",
                   help="accept a PCR list made only of resettable PCRs (16, 23): such a binding protects nothing")
    p.add_argument("--pin", action="store_true", help="also require a PIN (given per start with 'keys pin')")
    p.add_argument("--deliver", default="file", choices=("file", "keyring", "luks"))
    p.add_argument("--luks-device", help="LUKS volume (file or block device) for --deliver luks")
    p.add_argument("--luks-key-file", help="an existing passphrase file of the LUKS volume, to add our keyslot")
    p.add_argument("--owner", help="user that receives the delivered key (default root)")
    p.add_argument("--group", help="group of the delivered key (default: the owner's)")
    p.add_argument("--rotation-days", type=int, choices=(90, 180, 365))
    p.add_argument("--backend", default="tpm", choices=("tpm", "software"),
                   help="software only when the policy sets keys.allow_software_keystore: true")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("rotate", help="rotate one key, or every key that is due")
    p.add_argument("vm", metavar="VM", nargs="?")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("--due", action="store_true", help="rotate every key whose rotation date has passed")
    p.add_argument("--pin", action="store_true", help="the key is PIN-protected: prompt for its PIN")
    p.add_argument("--connect", "-c")
    p.set_defaults(func=cmd_rotate)

    p = sub.add_parser("emergency-rotate", help="rotate now because the key may be exposed")
    vm_args(p)
    p.add_argument("--reason", required=True)
    p.add_argument("--pin", action="store_true", help="the key is PIN-protected: prompt for its PIN")
    p.set_defaults(func=cmd_emergency)

    p = sub.add_parser("reseal", help="re-bind a key to the current PCR values, given its recovery key")
    vm_args(p)
    p.add_argument("--recovery-key", help="the recovery key shown at enrolment (prompted for if omitted)")
    p.add_argument("--pcrs", default=None, help="new PCR list (default: keep)")
    p.add_argument("--allow-resettable-pcrs", action="store_true",
                   help="accept a new PCR list made only of resettable PCRs (16, 23)")
    p.add_argument("--pin", action="store_true", help="the key is PIN-protected: prompt for its PIN")
    p.set_defaults(func=cmd_reseal)

    p = sub.add_parser("list", help="list enrolled keys")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("status", help="due dates, and whether each key would unseal now")
    p.add_argument("vm", metavar="VM", nargs="?")
    p.add_argument("--connect", "-c")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("pin", help="give the PIN for a PIN-protected key's next start")
    vm_args(p)
    p.set_defaults(func=cmd_pin)

    p = sub.add_parser("wipe", help="wipe every key delivered for a VM (what stop does)")
    vm_args(p, name=False)
    p.set_defaults(func=cmd_wipe)


# -- shared ----------------------------------------------------------------------


def _env(args):
    from ..errors import PolicyError
    from ..paths import Paths
    from ..policy import load_policy

    paths = Paths.from_env(getattr(args, "policy", None))
    try:
        policy = load_policy(paths.policy, cache_dir=None, missing_ok=True)
    except PolicyError as exc:
        raise SystemExit(_fail(f"policy: {exc}", EXIT_INPUT))
    args._policy = policy
    return paths, dict(policy.section("keys"))


def _profile_keys(args, uuid: str, vm_name: str | None) -> dict:
    """keys section of the profile the policy assigns this VM by name/UUID
    (a profile requested in the domain's own metadata is not visible here)."""
    try:
        return args._policy.select(vm_name, uuid, None).profile.section("keys")
    except Exception:
        return {}


def _fail(msg: str, code: int = EXIT_FAIL) -> int:
    print(f"qwamos-policy keys: {msg}", file=sys.stderr)
    return code


def _auditor(paths):
    from .. import audit

    def log(event: str, **fields) -> None:
        audit.append(paths.audit_log, event, source="cli", **fields)

    return log


def resolve_vm(vm: str, uri: str | None = None) -> tuple[str, str | None]:
    """(uuid, name) for a UUID or a libvirt domain name."""
    from .store import UUID_RE

    if UUID_RE.match(vm):
        return vm.lower(), None
    import libvirt

    uri = uri or os.environ.get("LIBVIRT_DEFAULT_URI") or "qemu:///system"
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise LookupError(f"cannot connect to libvirt at {uri}: {exc.get_error_message()}") from None
    try:
        dom = conn.lookupByName(vm)
        return dom.UUIDString().lower(), vm
    except libvirt.libvirtError:
        raise LookupError(f"no domain named {vm!r} at {uri}") from None
    finally:
        conn.close()


def _read_secret(prompt: str) -> bytes:
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(prompt).encode()
    return sys.stdin.readline().rstrip("\n").encode()


def _errors():
    from . import deliver, manager, recovery, rotate, softstore, store

    out = (manager.KeyError_, store.StoreError, deliver.DeliveryError, recovery.RecoveryError,
           softstore.SoftStoreError, rotate.RotationError, LookupError, OSError)
    try:
        from .tpm import TPMError

        out += (TPMError,)
    except ImportError:
        pass
    return out


def _pcrs(text: str | None, default):
    from .tpm import parse_pcrs

    return default if text is None else parse_pcrs(text)


def _resettable_refusal(pcrs, allowed: bool) -> str | None:
    from .manager import RESETTABLE_PCRS, only_resettable

    if not only_resettable(pcrs) or allowed:
        return None
    return (f"PCR {','.join(map(str, pcrs))}: only resettable PCRs ({', '.join(map(str, sorted(RESETTABLE_PCRS)))}) "
            "are selected; any process can reset them, so the key would be bound to nothing. "
            "Add a measured PCR (e.g. 7), or pass --allow-resettable-pcrs to mean it")


def _warn_binding(meta: dict) -> None:
    from . import manager, store

    for w in manager.binding_warnings(meta, store.current(meta)):
        print(f"qwamos-policy keys: warning: {w}", file=sys.stderr)


# -- commands --------------------------------------------------------------------


def cmd_enroll(args) -> int:
    from . import manager

    paths, g = _env(args)
    try:
        if args.no_pcrs and args.pcrs:
            return _fail("give --pcrs or --no-pcrs, not both", EXIT_INPUT)
        pcrs = () if args.no_pcrs else _pcrs(args.pcrs, manager.DEFAULT_PCRS)
        if not pcrs and not args.no_pcrs:
            return _fail("an empty PCR list binds the key to nothing; pass --no-pcrs to mean that", EXIT_INPUT)
        # (a software key is bound to no PCRs whatever the list says; status flags that)
        refusal = args.backend == "tpm" and _resettable_refusal(pcrs, args.allow_resettable_pcrs)
        if refusal:
            return _fail(refusal, EXIT_INPUT)
    except ValueError as exc:
        return _fail(f"--pcrs: {exc}", EXIT_INPUT)
    try:
        uuid, vm_name = resolve_vm(args.vm, args.connect)
        pin = None
        if args.pin:
            pin = _read_secret("PIN: ")
            if len(pin) < 4:
                return _fail("PIN shorter than 4 characters", EXIT_INPUT)
        luks_key = None
        if args.deliver == "luks":
            if not args.luks_device or not args.luks_key_file:
                return _fail("--deliver luks needs --luks-device and --luks-key-file", EXIT_INPUT)
            from .store import read_bytes

            luks_key = read_bytes(args.luks_key_file)
        prof = _profile_keys(args, uuid, vm_name)
        rotation_days = args.rotation_days or prof.get("rotation_days")
        rkey = manager.enroll(
            paths.lib_dir, uuid, args.name, global_keys=g, audit=_auditor(paths), vm_name=vm_name,
            pcrs=pcrs, bank=args.pcr_bank, pin=pin, delivery=args.deliver, owner=args.owner, group=args.group,
            luks_device=args.luks_device, luks_key=luks_key, rotation_days=rotation_days, backend=args.backend)
        from . import store

        meta = store.load_meta(store.key_dir(paths.lib_dir, uuid, args.name))
    except _errors() as exc:
        return _fail(str(exc))
    if not args.no_pcrs:  # --no-pcrs was explicit: no need to repeat it
        _warn_binding(meta)
    where = "no PCRs (any boot state!)" if not pcrs else f"PCR {','.join(map(str, pcrs))} ({args.pcr_bank})"
    print(f"enrolled key '{args.name}' for {uuid}: {args.backend}, {where}, delivery {args.deliver}")
    print("RECOVERY KEY (shown once; store it offline, it is the only way back after a PCR change):")
    print(f"    {rkey}")
    return EXIT_OK


def cmd_rotate(args) -> int:
    from . import rotate

    paths, g = _env(args)
    audit = _auditor(paths)
    try:
        if args.due:
            if args.vm:
                return _fail("--due takes no VM", EXIT_INPUT)
            failed = 0
            for uuid, name, outcome, err in rotate.finish_interrupted(paths.lib_dir, g, audit):
                if err:
                    failed += 1
                    print(f"{uuid} {name}: interrupted rotation NOT finished: {err}")
                else:
                    print(f"{uuid} {name}: interrupted rotation finished: {outcome}")
            todo = rotate.due(paths.lib_dir)
            for uuid, name, when in todo:
                try:
                    v = rotate.rotate(paths.lib_dir, uuid, name, global_keys=g, audit=audit, reason=f"due {when}")
                except _errors() as exc:
                    failed += 1
                    print(f"{uuid} {name}: NOT rotated (due {when}): {exc}")
                    continue
                print(f"{uuid} {name}: rotated to v{v} (was due {when})")
            if not todo:
                print("no key is due")
            return EXIT_FAIL if failed else EXIT_OK
        if not args.vm or not args.name:
            return _fail("give VM NAME, or --due", EXIT_INPUT)
        uuid, _ = resolve_vm(args.vm, args.connect)
        pin = _read_secret("PIN: ") if args.pin else None
        v = rotate.rotate(paths.lib_dir, uuid, args.name, global_keys=g, audit=audit, reason="manual", pin=pin)
    except _errors() as exc:
        return _fail(str(exc))
    print(f"{uuid} {args.name}: rotated to v{v}")
    return EXIT_OK


def cmd_emergency(args) -> int:
    from . import rotate

    paths, g = _env(args)
    try:
        uuid, _ = resolve_vm(args.vm, args.connect)
        pin = _read_secret("PIN: ") if args.pin else None
        v = rotate.rotate(paths.lib_dir, uuid, args.name, global_keys=g, audit=_auditor(paths),
                          reason=args.reason, kind="emergency-rotate", pin=pin)
    except _errors() as exc:
        return _fail(str(exc))
    print(f"{uuid} {args.name}: emergency rotation to v{v} done; running VMs still hold the old key until restarted")
    return EXIT_OK


def cmd_reseal(args) -> int:
    from . import rotate

    paths, g = _env(args)
    try:
        pcrs = _pcrs(args.pcrs, None)
        if pcrs is not None and not pcrs:
            return _fail("--pcrs: an empty PCR list binds the key to nothing", EXIT_INPUT)
        refusal = _resettable_refusal(pcrs or (), args.allow_resettable_pcrs)
        if refusal:
            return _fail(refusal, EXIT_INPUT)
        uuid, _ = resolve_vm(args.vm, args.connect)
        rkey = args.recovery_key or _read_secret("recovery key: ").decode()
        pin = _read_secret("PIN: ") if args.pin else None
        v = rotate.reseal(paths.lib_dir, uuid, args.name, rkey, global_keys=g, audit=_auditor(paths), pcrs=pcrs,
                          pin=pin)
        from . import store

        meta = store.load_meta(store.key_dir(paths.lib_dir, uuid, args.name))
    except ValueError as exc:
        return _fail(str(exc), EXIT_INPUT)
    except _errors() as exc:
        return _fail(str(exc))
    _warn_binding(meta)
    print(f"{uuid} {args.name}: resealed to the current PCR values as v{v}")
    return EXIT_OK


def _rows(paths, only_uuid=None):
    from . import store

    for uuid, name in store.list_all(paths.lib_dir):
        if only_uuid and uuid != only_uuid:
            continue
        kdir = store.key_dir(paths.lib_dir, uuid, name)
        yield uuid, name, kdir, store.load_meta(kdir)


def cmd_list(args) -> int:
    paths, _ = _env(args)
    try:
        for uuid, name, _kdir, meta in _rows(paths):
            rec = meta["versions"][str(meta["current"])]
            pcrs = ",".join(map(str, rec["pcrs"])) or "none"
            print(f"{uuid} {name:12} v{meta['current']} {meta['backend']:8} pcrs={pcrs}/{rec['bank']} "
                  f"deliver={meta['delivery']} due={rec['rotation_due']}"
                  + (f" vm={meta['vm_name']}" if meta.get("vm_name") else ""))
    except _errors() as exc:
        return _fail(str(exc))
    return EXIT_OK


def cmd_status(args) -> int:
    from . import manager, store

    paths, g = _env(args)
    bad = 0
    try:
        only = resolve_vm(args.vm, args.connect)[0] if args.vm else None
        for uuid, name, kdir, meta in _rows(paths, only):
            rec = meta["versions"][str(meta["current"])]
            ok, why = manager.would_unseal(kdir, meta, g)
            due = rec.get("rotation_due_ts", 0) <= manager.now()
            warn = manager.binding_warnings(meta, rec)
            if meta["backend"] == "software":
                warn.append("software keystore (not bound to this host's boot state)")
            # Unfinished rotations are failures: after an emergency rotation the
            # old (maybe compromised) key is still current, or still unseals.
            unfinished = False
            if meta.get("pending"):
                unfinished = True
                warn.append(f"interrupted rotation to v{meta['pending']['version']}, v{meta['current']} still "
                            "current (run 'keys rotate --due')")
            retired = store.retired_on_disk(kdir, meta)
            if retired:
                unfinished = True
                word = "version" if len(retired) == 1 else "versions"
                warn.append(f"retired {word} {', '.join(f'v{v}' for v in retired)} still on disk and unsealable: "
                            "rotation interrupted after commit (run 'keys rotate --due')")
            print(f"{uuid} {name}: v{meta['current']} rotation {'OVERDUE' if due else 'due'} {rec['rotation_due']}; "
                  f"{'OK' if ok else 'WOULD FAIL'}: {why}" + (f" [{'; '.join(warn)}]" if warn else ""))
            bad += (not ok) or due or unfinished
    except _errors() as exc:
        return _fail(str(exc))
    return EXIT_FAIL if bad else EXIT_OK


def cmd_pin(args) -> int:
    from . import deliver, store

    paths, _ = _env(args)
    try:
        uuid, _ = resolve_vm(args.vm, args.connect)
        store.check_name(args.name)
        deliver.pin_put(uuid, args.name, _read_secret("PIN: "))
    except _errors() as exc:
        return _fail(str(exc))
    print(f"{uuid} {args.name}: PIN held in the kernel keyring for the next start")
    return EXIT_OK


def cmd_wipe(args) -> int:
    from . import deliver

    paths, g = _env(args)
    try:
        uuid, _ = resolve_vm(args.vm, args.connect)
        wiped = deliver.wipe(paths.state_dir, uuid, g.get("runtime_dir"))
    except _errors() as exc:
        return _fail(str(exc))
    if wiped:
        _auditor(paths)("keys.wipe", uuid=uuid, keys=wiped)
    print(f"{uuid}: wiped {', '.join(wiped) if wiped else 'nothing (no key delivered)'}")
    return EXIT_OK
