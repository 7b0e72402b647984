"""The only module that talks to nftables: one libnftables JSON transaction per call.

A libnftables command batch is committed atomically by the kernel: either every
command takes effect or none does, so a process killed mid-apply leaves the
previous ruleset (and its kill switch) intact.
"""

from __future__ import annotations

from . import render


class NftError(Exception):
    """libnftables refused the transaction; str() is its first error line."""


_ctx = None


def _nft():
    global _ctx
    if _ctx is None:
        import nftables  # ~25 ms; paid only by stages that touch the firewall

        _ctx = nftables.Nftables()
        _ctx.set_json_output(True)
        _ctx.set_handle_output(False)
    return _ctx


def run(cmds: list[dict]) -> None:
    """Commit cmds as one transaction or raise NftError (nothing changed)."""
    if not cmds:
        return
    rc, _out, err = _nft().json_cmd(render.transaction(cmds))
    if rc != 0:
        lines = [ln.strip() for ln in (err or "").splitlines() if ln.strip()]
        first = next((ln for ln in lines if ln.startswith("Error")), lines[0] if lines else f"rc={rc}")
        raise NftError(first)


def query(cmd: dict) -> list[dict]:
    """Run one list command, e.g. {"list": {"table": {...}}}; [] when it does not exist."""
    rc, out, _err = _nft().json_cmd({"nftables": [cmd]})
    if rc != 0 or not out:
        return []
    return [x for x in out.get("nftables", []) if "metainfo" not in x]


def ensure_tables(glob: dict) -> None:
    """Create our tables, maps, sets and base chains if missing (idempotent)."""
    run(render.base_commands(glob))


def tables_present() -> bool:
    """Whether any of our tables exists."""
    return any(query({"list": {"table": {"family": fam, "name": render.TABLE}}}) for fam in render.FAMILIES)


def list_ruleset() -> list[dict]:
    return query({"list": {"ruleset": None}})


def set_elements(family: str, name: str) -> list:
    """Elements of one of our sets or maps as libnftables lists them ([] if absent)."""
    for obj in query({"list": {"set": {"family": family, "table": render.TABLE, "name": name}}}) + \
            query({"list": {"map": {"family": family, "table": render.TABLE, "name": name}}}):
        body = obj.get("set") or obj.get("map") or {}
        return list(body.get("elem") or ())
    return []


def registered_taps(family: str = "bridge") -> dict[str, str]:
    """tap -> profile, from the membership sets and the allowlist map."""
    out = {}
    for prof, name in render.PROFILE_SETS.items():
        for e in set_elements(family, name):
            out[e] = prof
    for e in set_elements(family, render.ALLOW_IN):
        out[e[0]] = "allowlist"
    return out


def counters(family: str = "bridge") -> dict[str, dict[str, int]]:
    """tap -> {acc_in: packets, drop_in: ..., acc_out: ..., drop_out: ...}."""
    out: dict = {}
    for name in render.COUNTERS:
        for e in set_elements(family, name):
            if isinstance(e, dict) and "elem" in e:
                out.setdefault(e["elem"]["val"], {})[name] = e["elem"].get("counter", {}).get("packets", 0)
    return out
