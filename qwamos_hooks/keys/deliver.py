"""Put an unsealed key where the VM's launch can use it, and take it away again.

Modes:
  file     a file under the runtime dir (default $QWAMOS_STATE_DIR/keys/<uuid>/<name>),
           mode 0400, owned by the configured user (e.g. the QEMU user). The
           directory must be on tmpfs/ramfs: delivery refuses anything else,
           because a delivered key must never reach persistent storage. The
           runtime dir and every directory above it must be root's and not
           writable by others (safedir.py); all changes go through opened fds.
  keyring  a "user" key named qwamos:<uuid>:<name> in root's user keyring,
           owned by the configured user with read permission for it only
           (QEMU reads it with -object secret_keyring,serial=N).
  luks     `cryptsetup open` of the VM's LUKS volume with the key, as
           /dev/mapper/qwamos-<uuid>-<name>. Needs device-mapper in the kernel.

Each delivery leaves a record (no key bytes: a path, a serial or a mapper name)
under $QWAMOS_STATE_DIR/keys/<uuid>/.records/ so the wipe at stop can undo it
even if the hook that delivered it died. Wiping is idempotent.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

from . import safedir, store

MODES = ("file", "keyring", "luks")
SAFE_FS = {"tmpfs", "ramfs"}


class DeliveryError(Exception):
    pass


# -- records -------------------------------------------------------------------


def _records_dir(state_dir: str, uuid: str) -> str:
    return os.path.join(state_dir, "keys", uuid.lower(), ".records")


def _record_path(state_dir: str, uuid: str, name: str) -> str:
    return os.path.join(_records_dir(state_dir, uuid), store.check_name(name) + ".json")


def _keys_state_dir(state_dir: str, searchable: bool = False) -> None:
    """Create $QWAMOS_STATE_DIR/keys 0711: it is the default runtime dir, so a
    key's owner must be able to traverse it (never list it). With `searchable`
    (a non-root owner gets a file there) the state dir itself is given the
    search bits too, which it may lack (e.g. a tmpfs mounted mode=0700)."""
    for d, want in ((state_dir, searchable), (os.path.join(state_dir, "keys"), True)):
        try:
            fd, walked = safedir.open_dir(d, create_mode=0o711)
        except (safedir.UnsafeDirectory, OSError) as exc:
            raise DeliveryError(f"state directory: {exc}") from None
        try:
            mode = stat.S_IMODE(walked[-1][1].st_mode)
            if want and mode & 0o011 != 0o011:
                os.fchmod(fd, mode | 0o011)
        finally:
            os.close(fd)


def _write_record(state_dir: str, uuid: str, name: str, rec: dict, searchable: bool = False) -> None:
    _keys_state_dir(state_dir, searchable)
    store.makedirs(_records_dir(state_dir, uuid))
    store.write_atomic(_record_path(state_dir, uuid, name), json.dumps(rec).encode())


def records(state_dir: str, uuid: str) -> dict[str, dict]:
    d = _records_dir(state_dir, uuid)
    out = {}
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return out
    for fn in names:
        if fn.endswith(".json"):
            try:
                with open(os.path.join(d, fn)) as fh:
                    out[fn[:-5]] = json.load(fh)
            except (OSError, ValueError):
                out[fn[:-5]] = {}
    return out


# -- owner ---------------------------------------------------------------------


def resolve_owner(owner: str | None, group: str | None = None) -> tuple[int, int]:
    """'root', 'libvirt-qemu', '64055' -> (uid, gid); group defaults to the user's."""
    import grp
    import pwd

    if not owner:
        return 0, 0
    try:
        pw = pwd.getpwuid(int(owner)) if owner.isdigit() else pwd.getpwnam(owner)
    except KeyError:
        raise DeliveryError(f"delivery owner {owner!r}: no such user") from None
    gid = pw.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise DeliveryError(f"delivery group {group!r}: no such group") from None
    return pw.pw_uid, gid


# -- file ----------------------------------------------------------------------


def fs_type(path: str) -> str:
    """Filesystem type of the mount holding `path`."""
    return safedir.fs_type_of(os.stat(path))


def _owner_groups(uid: int) -> set[int]:
    """The groups the owner's processes run with (not the file's group, which
    --group may set to one the owner is not in)."""
    import pwd

    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return set()
    return set(os.getgrouplist(pw.pw_name, pw.pw_gid))


def _open_runtime_dir(runtime_dir: str, create: bool) -> tuple[int, list]:
    try:
        return safedir.open_dir(runtime_dir, create_mode=0o711 if create else None)
    except safedir.UnsafeDirectory as exc:
        raise DeliveryError(f"file delivery refused: {exc}") from None


def _open_vm_dir(rfd: int, where: str, uuid: str) -> tuple[int, os.stat_result]:
    """<runtime_dir>/<uuid>: a real directory (no symlink), root's, created if missing."""
    try:
        os.mkdir(uuid, 0o700, dir_fd=rfd)
    except FileExistsError:
        pass
    try:
        dfd = os.open(uuid, safedir.DIR_FLAGS, dir_fd=rfd)
    except OSError as exc:
        raise DeliveryError(f"file delivery refused: {where}/{uuid}: {os.strerror(exc.errno)} "
                            "(a symlink or other non-directory is there)") from None
    st = os.fstat(dfd)
    if st.st_uid != 0:
        os.close(dfd)
        raise DeliveryError(f"file delivery refused: {where}/{uuid} is owned by uid {st.st_uid}, not root")
    return dfd, st


def _deliver_file(runtime_dir: str, uuid: str, name: str, key: bytes, uid: int, gid: int) -> dict:
    uuid = uuid.lower()
    rfd, walked = _open_runtime_dir(runtime_dir, create=True)
    dfd = -1
    try:
        kind = safedir.fs_type_of(walked[-1][1])
        if kind not in SAFE_FS:
            raise DeliveryError(f"file delivery refused: {runtime_dir} is on {kind}, not tmpfs "
                                "(a key must never reach persistent storage)")
        groups = _owner_groups(uid) if uid else set()
        for where, st in walked:
            if not safedir.can_traverse(st, uid, groups):
                raise DeliveryError(f"file delivery refused: key owner uid {uid} cannot traverse {where} "
                                    f"(mode {stat.S_IMODE(st.st_mode):04o}); make it 0711 or 0755")
        dfd, st = _open_vm_dir(rfd, runtime_dir, uuid)
        if not safedir.can_traverse(st, uid, groups):
            if gid in groups and st.st_gid in (0, gid):
                os.fchown(dfd, 0, gid)
                os.fchmod(dfd, 0o710)  # the owner's group may traverse to its key, nobody may list
            else:
                # owner outside the key's group, or keys of another group share the dir:
                # traverse for all, list for none (the file itself is 0400)
                os.fchmod(dfd, 0o711)
        elif stat.S_IMODE(st.st_mode) & 0o022:
            os.fchmod(dfd, stat.S_IMODE(st.st_mode) & ~0o022)
        tmp = f".{name}.tmp"  # key names start with a letter or digit: never collides
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
        try:
            view = memoryview(key)
            while view:
                view = view[os.write(fd, view):]
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o400)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        if dfd >= 0:
            os.close(dfd)
        os.close(rfd)
    return {"mode": "file", "path": os.path.join(runtime_dir, uuid, name)}


def _shred_at(dfd: int, fn: str) -> bool:
    """Overwrite then unlink: on tmpfs the pages are freed with the key zeroed."""
    try:
        size = os.stat(fn, dir_fd=dfd, follow_symlinks=False).st_size
    except FileNotFoundError:
        return False
    try:
        fd = os.open(fn, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dfd)
        try:
            os.write(fd, b"\0" * size)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    try:
        os.unlink(fn, dir_fd=dfd)
    except FileNotFoundError:
        pass
    return True


def _shred_file(path: str) -> bool:
    """Shred a delivered key file, reaching its directory only through a safe walk:
    a directory that is missing or no longer safe holds nothing we delivered."""
    d, name = os.path.split(path)
    try:
        dfd, _ = safedir.open_dir(d)
    except (safedir.UnsafeDirectory, OSError):
        return False
    try:
        return _shred_at(dfd, name) | _shred_at(dfd, f".{name}.tmp") | _shred_at(dfd, name + ".tmp")
    finally:
        os.close(dfd)


def _rmdir_safe(parent: str, name: str) -> None:
    try:
        pfd, _ = safedir.open_dir(parent)
    except (safedir.UnsafeDirectory, OSError):
        return
    try:
        os.rmdir(name, dir_fd=pfd)
    except OSError:
        pass
    finally:
        os.close(pfd)


# -- keyring (libkeyutils through ctypes) ----------------------------------------

KEY_SPEC_USER_KEYRING = -4
KEY_POS_ALL = 0x3F000000
KEY_USR_VIEW, KEY_USR_READ = 0x00010000, 0x00020000
_LIB = None


def _keyutils():
    global _LIB
    if _LIB is None:
        import ctypes

        lib = ctypes.CDLL("libkeyutils.so.1", use_errno=True)
        i32, c = ctypes.c_int32, ctypes
        lib.add_key.argtypes = [c.c_char_p, c.c_char_p, c.c_void_p, c.c_size_t, i32]
        lib.add_key.restype = i32
        lib.keyctl_search.argtypes = [i32, c.c_char_p, c.c_char_p, i32]
        lib.keyctl_search.restype = c.c_long
        lib.keyctl_invalidate.argtypes = [i32]
        lib.keyctl_invalidate.restype = c.c_long
        lib.keyctl_chown.argtypes = [i32, c.c_uint, c.c_uint]
        lib.keyctl_chown.restype = c.c_long
        lib.keyctl_setperm.argtypes = [i32, c.c_uint32]
        lib.keyctl_setperm.restype = c.c_long
        lib.keyctl_read.argtypes = [i32, c.c_char_p, c.c_size_t]
        lib.keyctl_read.restype = c.c_long
        _LIB = lib
    return _LIB


def _kerr(what: str) -> DeliveryError:
    import ctypes

    e = ctypes.get_errno()
    return DeliveryError(f"kernel keyring: {what}: {os.strerror(e)}")


def keyring_description(uuid: str, name: str) -> str:
    return f"qwamos:{uuid.lower()}:{name}"


def keyring_search(uuid: str, name: str, prefix: str = "qwamos") -> int | None:
    lib = _keyutils()
    desc = f"{prefix}:{uuid.lower()}:{name}".encode()
    serial = lib.keyctl_search(KEY_SPEC_USER_KEYRING, b"user", desc, 0)
    return int(serial) if serial > 0 else None


def pin_put(uuid: str, name: str, pin: bytes) -> None:
    """Leave a PIN for the next start in root's user keyring (never on disk)."""
    lib = _keyutils()
    desc = f"qwamos-pin:{uuid.lower()}:{name}".encode()
    serial = lib.add_key(b"user", desc, pin, len(pin), KEY_SPEC_USER_KEYRING)
    if serial < 0:
        raise _kerr("add_key")
    lib.keyctl_setperm(serial, KEY_POS_ALL | KEY_USR_VIEW)


def pin_take(uuid: str, name: str) -> bytes | None:
    """Read and destroy the PIN left for this key, if any: it serves one start."""
    serial = keyring_search(uuid, name, "qwamos-pin")
    if serial is None:
        return None
    try:
        return keyring_read(serial)
    finally:
        _keyutils().keyctl_invalidate(serial)


def keyring_read(serial: int) -> bytes:
    import ctypes

    lib = _keyutils()
    buf = ctypes.create_string_buffer(4096)
    n = lib.keyctl_read(serial, buf, len(buf))
    if n < 0:
        raise _kerr("read")
    return buf.raw[:n]


def _deliver_keyring(uuid: str, name: str, key: bytes, uid: int, gid: int) -> dict:
    lib = _keyutils()
    desc = keyring_description(uuid, name).encode()
    serial = lib.add_key(b"user", desc, key, len(key), KEY_SPEC_USER_KEYRING)
    if serial < 0:
        raise _kerr("add_key")
    if uid or gid:
        if lib.keyctl_chown(serial, uid, gid) < 0:
            lib.keyctl_invalidate(serial)
            raise _kerr("chown")
    if lib.keyctl_setperm(serial, KEY_POS_ALL | KEY_USR_VIEW | KEY_USR_READ) < 0:
        lib.keyctl_invalidate(serial)
        raise _kerr("setperm")
    return {"mode": "keyring", "serial": int(serial), "description": desc.decode()}


def _wipe_keyring(uuid: str, name: str, serial: int | None) -> bool:
    lib = _keyutils()
    done = False
    for s in {serial, keyring_search(uuid, name)} - {None}:
        if lib.keyctl_invalidate(s) == 0:
            done = True
    return done


# -- luks (cryptsetup; device-mapper needed for open) ------------------------------


def cryptsetup() -> str:
    path = shutil.which("cryptsetup") or next(
        (p for p in ("/usr/sbin/cryptsetup", "/sbin/cryptsetup") if os.path.exists(p)), None
    )
    if not path:
        raise DeliveryError("cryptsetup not found (install cryptsetup-bin)")
    return path


def _run_with_keys(args: list[str], keys: list[bytes]) -> subprocess.CompletedProcess:
    """Run cryptsetup with each key on its own pipe, passed as /dev/fd/N: key
    bytes never touch a file. Placeholders {0}, {1}... in args name the pipes."""
    fds, paths = [], []
    try:
        for k in keys:
            r, w = os.pipe()
            os.write(w, k)  # 32-64 bytes: far below the pipe buffer
            os.close(w)
            fds.append(r)
            paths.append(f"/dev/fd/{r}")
        argv = [cryptsetup()] + [a.format(*paths) for a in args]
        return subprocess.run(argv, pass_fds=fds, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=60, env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    finally:
        for r in fds:
            os.close(r)


def _cs_error(proc) -> str:
    # The first line is the cause ("Cannot initialize device-mapper..."); later ones are consequences.
    lines = [l for l in (proc.stderr or proc.stdout or "").splitlines() if l.strip()]
    return lines[0].strip() if lines else f"exit {proc.returncode}"


def mapper_name(uuid: str, name: str) -> str:
    return f"qwamos-{uuid.lower()}-{name}"


def luks_open(device: str, uuid: str, name: str, key: bytes) -> dict:
    mapper = mapper_name(uuid, name)
    proc = _run_with_keys(["open", "--type", "luks", "--key-file={0}", device, mapper], [key])
    if proc.returncode != 0:
        raise DeliveryError(f"cryptsetup open {device} failed: {_cs_error(proc)}")
    return {"mode": "luks", "mapper": mapper, "device": device}


def luks_close(mapper: str) -> bool:
    if not os.path.exists(os.path.join("/dev/mapper", mapper)):
        return False
    proc = _run_with_keys(["close", mapper], [])
    return proc.returncode == 0


def luks_test(device: str, key: bytes) -> int | None:
    """The keyslot `key` opens, or None. Runs without device-mapper."""
    import re

    proc = _run_with_keys(["open", "--test-passphrase", "-v", "--key-file={0}", device], [key])
    if proc.returncode != 0:
        return None
    m = re.search(r"Key slot (\d+) unlocked", proc.stdout + proc.stderr)
    return int(m.group(1)) if m else -1


def luks_add_key(device: str, existing: bytes, new: bytes) -> int:
    """Add `new` in a free keyslot, authorised by `existing`; returns the slot.
    PBKDF2 with 1000 iterations, as systemd-cryptenroll does for TPM keys: the
    key is 256 random bits, so a slow KDF would only slow every launch."""
    proc = _run_with_keys(
        ["luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
         "--key-file={0}", device, "{1}"],
        [existing, new],
    )
    if proc.returncode != 0:
        raise DeliveryError(f"cryptsetup luksAddKey {device} failed: {_cs_error(proc)}")
    slot = luks_test(device, new)
    if slot is None:
        raise DeliveryError(f"cryptsetup luksAddKey {device}: the new key does not open the volume")
    return slot


def luks_kill_slot(device: str, slot: int, auth: bytes) -> None:
    proc = _run_with_keys(["luksKillSlot", "--batch-mode", "--key-file={0}", device, str(slot)], [auth])
    if proc.returncode != 0:
        raise DeliveryError(f"cryptsetup luksKillSlot {device} {slot} failed: {_cs_error(proc)}")


# -- entry points ------------------------------------------------------------------


def deliver(mode: str, *, state_dir: str, runtime_dir: str | None, uuid: str, name: str, key: bytes,
            owner: str | None = None, group: str | None = None, luks_device: str | None = None) -> dict:
    """Deliver one key; returns its record (also written to the state dir)."""
    if mode not in MODES:
        raise DeliveryError(f"unknown delivery mode {mode!r}")
    uid, gid = resolve_owner(owner, group)
    # Record first: if delivery dies half-way, the wipe still knows where to look.
    _write_record(state_dir, uuid, name, {"mode": mode, "pending": True},
                  searchable=mode == "file" and uid != 0 and not runtime_dir)
    if mode == "file":
        rec = _deliver_file(runtime_dir or os.path.join(state_dir, "keys"), uuid, name, key, uid, gid)
    elif mode == "keyring":
        rec = _deliver_keyring(uuid, name, key, uid, gid)
    else:
        if not luks_device:
            raise DeliveryError("luks delivery: no LUKS device recorded for this key")
        _write_record(state_dir, uuid, name, {"mode": mode, "mapper": mapper_name(uuid, name), "pending": True})
        rec = luks_open(luks_device, uuid, name, key)
    _write_record(state_dir, uuid, name, rec)
    return rec


def wipe(state_dir: str, uuid: str, runtime_dir: str | None = None) -> list[str]:
    """Undo every delivery recorded for the domain. Returns the names actually
    wiped (empty on a second call). Never raises for a missing target."""
    wiped = []
    runtimes = {runtime_dir or os.path.join(state_dir, "keys")}
    for name, rec in records(state_dir, uuid).items():
        mode = rec.get("mode")
        did = False
        if mode == "file" or "path" in rec:
            path = rec.get("path") or os.path.join(runtime_dir or os.path.join(state_dir, "keys"), uuid.lower(), name)
            did = _shred_file(path)
            runtimes.add(os.path.dirname(os.path.dirname(path)))
        elif mode == "keyring":
            did = _wipe_keyring(uuid, name, rec.get("serial"))
        elif mode == "luks":
            did = luks_close(rec.get("mapper") or mapper_name(uuid, name))
        store.remove(_record_path(state_dir, uuid, name))
        if did:
            wiped.append(name)
    _rmdir_safe(os.path.join(state_dir, "keys", uuid.lower()), ".records")
    for rt in sorted(runtimes | {os.path.join(state_dir, "keys")}):
        _rmdir_safe(rt, uuid.lower())
    return sorted(wiped)
