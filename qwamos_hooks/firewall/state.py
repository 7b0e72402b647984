"""Per-VM firewall state under $QWAMOS_STATE_DIR/fw/: <uuid>.json holds what was
installed for that domain, taps/<tap> names the domain that owns a tap now,
macs/<bridge>/<mac> the domain whose tap on that bridge has that MAC.

Teardown works only from these records (the XML at stopped/end has no tap
names, and the policy may have changed since start). Writes are atomic
(temporary file, fsync, rename), so a crash leaves the old or the new record.
"""

from __future__ import annotations

import json
import os
import re

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_TAP = re.compile(r"^[A-Za-z0-9_.:@+-]{1,15}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def fw_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "fw")


def _vm_path(state_dir: str, uuid: str) -> str:
    if not _UUID.match(uuid or ""):
        raise ValueError(f"not a domain UUID: {uuid!r}")
    return os.path.join(fw_dir(state_dir), uuid + ".json")


def _tap_path(state_dir: str, tap: str) -> str:
    if not _TAP.match(tap or "") or tap in (".", ".."):
        raise ValueError(f"not an interface name: {tap!r}")
    return os.path.join(fw_dir(state_dir), "taps", tap)


def _write_atomic(path: str, data: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def save(state_dir: str, st: dict) -> None:
    _write_atomic(_vm_path(state_dir, st["uuid"]), json.dumps(st, indent=1, sort_keys=True) + "\n")


def load(state_dir: str, uuid: str) -> dict | None:
    try:
        with open(_vm_path(state_dir, uuid), encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def delete(state_dir: str, uuid: str) -> None:
    try:
        os.unlink(_vm_path(state_dir, uuid))
    except FileNotFoundError:
        pass


def all_vms(state_dir: str) -> list[dict]:
    d = fw_dir(state_dir)
    out = []
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return out
    for n in names:
        if n.endswith(".json") and _UUID.match(n[:-5]):
            st = load(state_dir, n[:-5])
            if st:
                out.append(st)
    return out


def claim_tap(state_dir: str, tap: str, uuid: str) -> None:
    _write_atomic(_tap_path(state_dir, tap), uuid + "\n")


def tap_owner(state_dir: str, tap: str) -> str | None:
    try:
        with open(_tap_path(state_dir, tap), encoding="utf-8") as fh:
            return fh.read().strip() or None
    except FileNotFoundError:
        return None


def release_tap(state_dir: str, tap: str, uuid: str) -> bool:
    """Drop the claim if uuid still owns tap; False when another VM took the name."""
    owner = tap_owner(state_dir, tap)
    if owner not in (None, uuid):
        return False
    try:
        os.unlink(_tap_path(state_dir, tap))
    except FileNotFoundError:
        pass
    return True


def all_taps(state_dir: str) -> dict[str, str]:
    d = os.path.join(fw_dir(state_dir), "taps")
    try:
        return {t: tap_owner(state_dir, t) or "" for t in sorted(os.listdir(d)) if not t.endswith(".tmp")}
    except FileNotFoundError:
        return {}


def _mac_path(state_dir: str, bridge: str, mac: str) -> str:
    mac = (mac or "").lower()
    if not _TAP.match(bridge or "") or bridge in (".", "..") or not _MAC.match(mac):
        raise ValueError(f"not a bridge and MAC: {bridge!r} {mac!r}")
    return os.path.join(fw_dir(state_dir), "macs", bridge, mac.replace(":", "-"))


def claim_mac(state_dir: str, bridge: str, mac: str, uuid: str) -> None:
    _write_atomic(_mac_path(state_dir, bridge, mac), uuid + "\n")


def mac_owner(state_dir: str, bridge: str, mac: str) -> str | None:
    try:
        with open(_mac_path(state_dir, bridge, mac), encoding="utf-8") as fh:
            return fh.read().strip() or None
    except FileNotFoundError:
        return None


def release_mac(state_dir: str, bridge: str, mac: str, uuid: str) -> None:
    """Drop the claim if uuid still holds it."""
    if mac_owner(state_dir, bridge, mac) != uuid:
        return
    try:
        os.unlink(_mac_path(state_dir, bridge, mac))
    except FileNotFoundError:
        pass


def release_macs(state_dir: str, ifaces, uuid: str) -> None:
    for i in ifaces:
        if i.get("bridge") and i.get("mac"):
            release_mac(state_dir, i["bridge"], i["mac"], uuid)
