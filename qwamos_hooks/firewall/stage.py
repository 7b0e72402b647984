"""Hook actions of the firewall (named in hook.ACTIONS).

prepare/begin  guard     custom tap names from the XML go on the kill-switch list
start/begin    apply     render + one transaction; state recorded; failure blocks
started/begin  verify    each tap's master is the bridge the policy allows (netlink)
stopped/end,
release/end    remove    from recorded state only; idempotent; never raises
reconnect/begin reapply  apply again from the live XML; never raises

Only this module's own imports are paid at every event: nftables is imported by
apply.py on first use, pyroute2 only inside verify().
"""

from __future__ import annotations

import os

from ..errors import StageError
from . import render, state

# Interface types whose frames never cross the host's bridge or IP hooks.
_UNFILTERED_TYPES = {"user", "direct", "hostdev", "vhostuser", "vdpa", "vds", "mcast",
                     "udp", "server", "client", "null"}


def _sys_read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _master(tap: str) -> str | None:
    try:
        return os.path.basename(os.readlink(f"/sys/class/net/{tap}/master"))
    except OSError:
        return None


def _bridge_mac(bridge: str | None) -> str | None:
    if not bridge or not os.path.isdir(f"/sys/class/net/{bridge}/bridge"):
        return None
    return _sys_read(f"/sys/class/net/{bridge}/address")


def interface_facts(domain, profile: str) -> list[dict]:
    """The taps of a started domain with the facts the renderer needs.

    Raises StageError where the profile cannot be enforced on an interface."""
    out = []
    for i in domain.interfaces:
        if i.type in _UNFILTERED_TYPES:
            if profile != "nat":
                raise StageError(
                    f"{i.label}: type '{i.type}' bypasses the host firewall, "
                    f"profile '{profile}' cannot be enforced on it")
            continue
        tap = i.target_dev
        if not tap:
            raise StageError(f"{i.label}: no tap name in the domain XML, cannot apply firewall")
        if not i.mac:
            raise StageError(f"{i.label}: no MAC address in the domain XML, cannot apply anti-spoofing")
        master = _master(tap)
        bridge = master or i.source_bridge or i.resolved_bridge
        bmac = _bridge_mac(bridge)
        if master and not bmac and profile != "nat":
            # e.g. an Open vSwitch port: its frames bypass the Linux bridge hooks.
            raise StageError(f"{i.label}: tap {tap} is enslaved to {master}, not a Linux bridge; "
                             f"profile '{profile}' cannot be enforced on it")
        out.append({"tap": tap, "mac": i.mac, "bridge": bridge if bmac else None,
                    "bridge_mac": bmac, "ips": list(i.ips)})
    return out


def build_state(ctx) -> tuple[dict, dict]:
    section = ctx.profile.section("firewall")
    glob = render.global_config(ctx.policy.section("firewall"))
    prof = render.profile_name(section)
    try:
        st = render.vm_state(ctx.uuid, ctx.vm, section, interface_facts(ctx.domain, prof))
    except ValueError as exc:
        raise StageError(f"firewall: {exc}") from None
    st["policy_profile"] = getattr(ctx.profile, "name", None)
    return st, glob


def _check_macs(sd: str, st: dict) -> None:
    """Refuse a tap whose MAC another live tap on the same bridge already has:
    anti-spoofing keys on the MAC, so a second VM with it could take over the
    first one's traffic (the bridge learns the MAC on the newest port)."""
    seen: dict = {}
    for i in st["interfaces"]:
        if not i.get("bridge"):
            continue  # a routed tap is a link of its own
        key = (i["bridge"], i["mac"])
        if key in seen:
            raise StageError(f"taps {seen[key]} and {i['tap']} have the same MAC {i['mac']} on bridge {i['bridge']}")
        seen[key] = i["tap"]
        owner = state.mac_owner(sd, *key)
        if owner in (None, st["uuid"]):
            continue
        other = state.load(sd, owner) or {}
        for o in other.get("interfaces", ()):
            # A record whose tap is gone (or now ours) is stale and holds nothing.
            if ((o.get("bridge"), (o.get("mac") or "").lower()) == key and o["tap"] != i["tap"]
                    and state.tap_owner(sd, o["tap"]) == owner and os.path.exists(f"/sys/class/net/{o['tap']}")):
                raise StageError(f"tap {i['tap']}: MAC {i['mac']} is already in use on bridge {i['bridge']} "
                                 f"by {o['tap']} of domain {other.get('name') or owner}")


def _install(ctx, st: dict, glob: dict) -> None:
    from . import apply as nft

    sd = ctx.paths.state_dir
    _check_macs(sd, st)
    old = state.load(sd, ctx.uuid) or {}
    new_taps = {i["tap"] for i in st["interfaces"]}
    mine = [i for i in list(old.get("interfaces", ())) + list(old.get("stale", ()))
            if state.tap_owner(sd, i["tap"]) in (None, ctx.uuid)]
    kept = [i for i in mine if i["tap"] in new_taps]
    gone = [i for i in mine if i["tap"] not in new_taps]
    # A tap name another domain left registered (its teardown failed): clear
    # what its record says, so nothing of it applies to this VM.
    taken = []
    for tap in sorted(new_taps):
        owner = state.tap_owner(sd, tap)
        if owner not in (None, ctx.uuid):
            other = state.load(sd, owner) or {}
            taken += [i for i in other.get("interfaces", ()) if i["tap"] == tap] or [tap]
    # Record before committing: if we die after the commit, teardown still
    # knows what to remove; if we die before it, removal is a no-op.
    state.save(sd, dict(st, stale=gone))
    for tap in sorted(new_taps):
        state.claim_tap(sd, tap, ctx.uuid)
    new_macs = {(i["bridge"], i["mac"]) for i in st["interfaces"] if i.get("bridge")}
    for bridge, mac in sorted(new_macs):
        state.claim_mac(sd, bridge, mac, ctx.uuid)
    nft.run(render.base_commands(glob)
            + render.remove_commands(gone) + render.remove_commands(taken)
            + render.remove_commands(kept, counters=False, guard=False,
                                     allowlist=old.get("profile") == "allowlist")
            + render.vm_commands(st, glob))
    for i in gone:
        state.release_tap(sd, i["tap"], ctx.uuid)
    state.release_macs(sd, [i for i in mine if (i.get("bridge"), i.get("mac")) not in new_macs], ctx.uuid)
    state.save(sd, st)


def apply(ctx) -> None:
    """start/begin: fail closed; the kill switch keeps dropping if anything fails."""
    from .apply import NftError

    st, glob = build_state(ctx)
    try:
        _install(ctx, st, glob)
    except NftError as exc:
        raise StageError(f"firewall rules could not be applied, traffic stays dropped: {exc}") from None
    except (OSError, ValueError) as exc:
        raise StageError(f"firewall state could not be recorded, traffic stays dropped: {exc}") from None
    ctx.audit("firewall.apply", profile=st["profile"], taps=[i["tap"] for i in st["interfaces"]])


def guard(ctx) -> None:
    """prepare/begin: a tap named in the XML (not vnet*/macvtap*) is dropped from birth."""
    names = sorted({i.target_dev for i in ctx.domain.interfaces
                    if i.target_dev and not i.target_dev.startswith(("vnet", "macvtap"))
                    and i.type not in _UNFILTERED_TYPES})
    if not names:
        return
    from . import apply as nft

    glob = render.global_config(ctx.policy.section("firewall"))
    try:
        nft.run(render.base_commands(glob) + render.guard_commands(names))
    except nft.NftError as exc:
        raise StageError(f"firewall kill switch for {', '.join(names)} could not be set: {exc}") from None


def verify(ctx) -> None:
    """started/begin: every tap has recorded rules and sits, per netlink, on the
    bridge the XML names, and that bridge is one the profile allows."""
    st = state.load(ctx.paths.state_dir, ctx.uuid)
    recorded = {i["tap"] for i in (st or {}).get("interfaces", ())}
    fw_allowed = ctx.profile.section("firewall").get("bridges")
    if_allowed = ctx.profile.get("interfaces", "allowed_bridges") if hasattr(ctx.profile, "get") else None
    checks = []
    for i in ctx.domain.interfaces:
        if i.type in _UNFILTERED_TYPES:
            continue
        if not i.target_dev or i.target_dev not in recorded:
            raise StageError(f"{i.label}: no firewall rules were recorded for this tap at start")
        expected = i.source_bridge or i.resolved_bridge
        allowed = fw_allowed if fw_allowed is not None else (if_allowed if i.type == "bridge" else None)
        checks.append((i.target_dev, expected, allowed))
    if not checks:
        return
    from pyroute2 import IPRoute  # netlink; only this stage needs it

    with IPRoute() as ipr:
        for tap, expected, allowed in checks:
            idx = ipr.link_lookup(ifname=tap)
            if not idx:
                raise StageError(f"tap {tap} has vanished")
            master_idx = ipr.get_links(idx[0])[0].get_attr("IFLA_MASTER")
            master = kind = None
            if master_idx:
                m = ipr.get_links(master_idx)[0]
                master = m.get_attr("IFLA_IFNAME")
                info = m.get_attr("IFLA_LINKINFO")
                kind = info.get_attr("IFLA_INFO_KIND") if info else None
            if master != expected:
                raise StageError(f"tap {tap} is on {master or 'no bridge'}, the domain XML says "
                                 f"{expected or 'no bridge'}")
            if master is not None and kind != "bridge":
                raise StageError(f"tap {tap} is enslaved to {master} ({kind}), not a bridge")
            if master is not None and allowed is not None and master not in allowed:
                raise StageError(f"tap {tap} is on bridge {master}, not allowed by the policy "
                                 f"(allowed: {', '.join(allowed) or 'none'})")


def remove(ctx) -> None:
    """stopped/end, release/end: undo exactly what the record says; never raises."""
    try:
        removed = remove_uuid(ctx.paths.state_dir, ctx.uuid)
    except Exception as exc:  # noqa: BLE001 - a stage that cannot block must not fail
        ctx.log(f"{ctx.vm}: firewall removal failed, will be retried by 'fw reconcile': {exc}")
        return
    if removed is not None:  # a second stop finds no record and reports nothing
        ctx.audit("firewall.remove", taps=removed)


def remove_uuid(state_dir: str, uuid: str) -> list[str] | None:
    """Remove what the record of uuid says; None when there is no record."""
    st = state.load(state_dir, uuid)
    if st is None:
        return None
    cur = [i for i in st.get("interfaces", ()) if state.tap_owner(state_dir, i["tap"]) in (None, uuid)]
    stale = [i for i in st.get("stale", ()) if state.tap_owner(state_dir, i["tap"]) in (None, uuid)]
    mine = cur + stale
    if mine:
        from . import apply as nft

        # No re-assertion of the shared chains here: a stop must not pay for it
        # (start and reconnect do, and `fw reconcile`).
        cmds = render.remove_commands(cur, allowlist=st.get("profile") == "allowlist") \
            + render.remove_commands(stale)
        try:
            nft.run(cmds)
        except nft.NftError:
            if nft.tables_present():
                raise
            # Our tables are gone altogether: nothing of this VM is left to remove.
    for i in mine:
        state.release_tap(state_dir, i["tap"], uuid)
    state.release_macs(state_dir, list(st.get("interfaces", ())) + list(st.get("stale", ())), uuid)
    state.delete(state_dir, uuid)
    return sorted({i["tap"] for i in mine})


def reapply(ctx) -> None:
    """reconnect/begin: a failure here would kill a running VM, so log and carry on."""
    try:
        st, glob = build_state(ctx)
        _install(ctx, st, glob)
    except Exception as exc:  # noqa: BLE001
        ctx.log(f"{ctx.vm}: firewall re-apply at reconnect failed (kill switch still drops): {exc}")
        return
    ctx.audit("firewall.reapply", profile=st["profile"])
