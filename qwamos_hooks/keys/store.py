"""On-disk layout of enrolled keys (persistent; never holds a plaintext key).

    $QWAMOS_LIB_DIR/keys/<domain-uuid>/<name>/
        meta.json     versions, PCRs, bank, delivery mode, rotation dates
        v<N>.pub      sealed object, public part  (TPM2B_PUBLIC, tpm2-tools -u format)
        v<N>.priv     sealed object, private part (TPM2B_PRIVATE, tpm2-tools -r format)
        v<N>.soft     software keystore wrap (only for backend "software")
        v<N>.rec      the same key wrapped to the recovery key's public half
        .lock         serialises enrol / rotate / reseal on this key

Directories are 0700, files 0600. Every write goes to a temporary file in the
same directory, is fsynced and renamed over the target, then the directory is
fsynced: a crash leaves the old file or the new one, never a torn one. That
is what makes rotation crash-safe (see rotate.py).

This module is on the hook's path: it imports only the standard library.
"""

from __future__ import annotations

import fcntl
import os
import re
from contextlib import contextmanager

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class StoreError(Exception):
    pass


def keys_root(lib_dir: str) -> str:
    return os.path.join(lib_dir, "keys")


def check_uuid(uuid: str) -> str:
    if not UUID_RE.match(uuid or ""):
        raise StoreError(f"not a domain UUID: {uuid!r}")
    return uuid.lower()


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise StoreError(f"bad key name {name!r}: use letters, digits, '_', '.', '-' (max 64)")
    return name


def key_dir(lib_dir: str, uuid: str, name: str) -> str:
    return os.path.join(keys_root(lib_dir), check_uuid(uuid), check_name(name))


def list_names(lib_dir: str, uuid: str) -> list[str]:
    """Names of the keys enrolled for a domain; [] costs one failed stat."""
    try:
        entries = os.listdir(os.path.join(keys_root(lib_dir), uuid.lower()))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        e for e in entries
        if NAME_RE.match(e) and os.path.exists(os.path.join(keys_root(lib_dir), uuid.lower(), e, "meta.json"))
    )


def list_all(lib_dir: str) -> list[tuple[str, str]]:
    root = keys_root(lib_dir)
    try:
        uuids = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    return [(u, n) for u in uuids if UUID_RE.match(u) for n in list_names(lib_dir, u)]


def makedirs(path: str) -> None:
    """mkdir -p with 0700 on every level it creates (os.makedirs applies the
    mode to the leaf only), and 0700 enforced on the leaf."""
    missing = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
    os.chmod(path, 0o700)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    d = os.path.dirname(path)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(d)


def read_bytes(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def load_meta(kdir: str) -> dict:
    import json

    try:
        meta = json.loads(read_bytes(os.path.join(kdir, "meta.json")))
    except FileNotFoundError:
        raise StoreError(f"no key enrolled at {kdir}") from None
    except ValueError as exc:
        raise StoreError(f"{kdir}/meta.json is corrupt: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != 1:
        raise StoreError(f"{kdir}/meta.json: unknown format")
    return meta


def save_meta(kdir: str, meta: dict) -> None:
    import json

    write_atomic(os.path.join(kdir, "meta.json"), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())


def blob_path(kdir: str, version: int, kind: str) -> str:
    return os.path.join(kdir, f"v{int(version)}.{kind}")


def write_version(kdir: str, version: int, blobs: dict[str, bytes]) -> None:
    for kind, data in blobs.items():
        write_atomic(blob_path(kdir, version, kind), data)


def read_version(kdir: str, version: int, kinds) -> dict[str, bytes]:
    return {k: read_bytes(blob_path(kdir, version, k)) for k in kinds}


def remove_version(kdir: str, version: int) -> None:
    for kind in ("pub", "priv", "soft", "rec"):
        remove(blob_path(kdir, version, kind))
    _fsync_dir(kdir)


def versions_on_disk(kdir: str) -> set[int]:
    """Version numbers that have blob files in kdir, whatever meta.json says."""
    out = set()
    for fn in os.listdir(kdir):
        m = re.match(r"^v(\d+)\.(pub|priv|soft|rec)$", fn)
        if m:
            out.add(int(m.group(1)))
    return out


def retired_on_disk(kdir: str, meta: dict) -> list[int]:
    """Versions other than the committed and the pending one that still have
    blobs: left by a rotation interrupted after its commit, they still unseal
    (and, for LUKS keys, their keyslot is killed before their blobs go)."""
    keep = {int(meta["current"])}
    if meta.get("pending"):
        keep.add(int(meta["pending"]["version"]))
    return sorted(versions_on_disk(kdir) - keep)


def current(meta: dict) -> dict:
    """The committed version's record (what the hook unseals)."""
    v = meta["versions"].get(str(meta["current"]))
    if v is None:
        raise StoreError(f"key {meta.get('name')}: current version {meta['current']} missing from metadata")
    return v


@contextmanager
def locked(kdir: str, wait: bool = True):
    """Exclusive lock on one key: enrol, rotate and reseal must not interleave.
    With wait=False, raises BlockingIOError if someone else holds it."""
    makedirs(kdir)
    fd = os.open(os.path.join(kdir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        yield
    finally:
        os.close(fd)
