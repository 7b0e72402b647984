"""`qwamos-policy fw ...`: init, show, status, reconcile.

Exit codes: 0 ok, 1 a problem found (status) or a failed operation, 2 usage/input.
"""

from __future__ import annotations

import json
import os
import sys


def register(sub) -> None:
    p = sub.add_parser("init", help="create our nftables tables and the kill switch (idempotent)")
    p.add_argument("--rebuild", action="store_true",
                   help="delete and rebuild our tables, re-registering recorded VMs, in one transaction "
                        "(after an upgrade changed their layout)")
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("uninstall", help="delete our nftables tables (VM traffic is then unfiltered)")
    p.set_defaults(func=cmd_uninstall)
    p = sub.add_parser("show", help="VMs with firewall rules; with VM, its rules")
    p.add_argument("vm", metavar="VM", nargs="?", help="domain name or UUID")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("status", help="tables, kill switch, registered VMs, stale entries, "
                                      "other tables that would drop VM traffic")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("reconcile", help="make nftables match the recorded state of running VMs")
    p.set_defaults(func=cmd_reconcile)


def _paths(args):
    from ..paths import Paths

    return Paths.from_env(policy=getattr(args, "policy", None))


def _global(args) -> dict:
    """The policy-wide firewall section; a broken policy is an input error."""
    from . import render
    from ..policy import load_policy

    path = getattr(args, "policy", None) or os.environ.get("QWAMOS_POLICY")
    return render.global_config(load_policy(path, missing_ok=True).section("firewall")
                                if path else load_policy(None).section("firewall"))


def _err(msg: str) -> None:
    print(f"qwamos-policy fw: {msg}", file=sys.stderr)


def cmd_init(args) -> int:
    from ..errors import PolicyError
    from . import apply

    try:
        glob = _global(args)
        if args.rebuild:
            r = reconcile(_paths(args).state_dir, glob, rebuild=True)
            print(f"rebuilt; re-registered {len(r['applied'])} running VM(s)")
        else:
            apply.ensure_tables(glob)
    except PolicyError as exc:
        _err(str(exc))
        return 2
    except apply.NftError as exc:
        _err(f"could not create tables: {exc}")
        return 1
    print("tables bridge qwamos and inet qwamos ready; kill switch in place")
    return 0


def _find(state_dir: str, key: str):
    from . import state

    for st in state.all_vms(state_dir):
        if key in (st["uuid"], st["name"]):
            return st
    return None


def cmd_show(args) -> int:
    from . import apply, render, state

    sd = _paths(args).state_dir
    if not args.vm:
        vms = state.all_vms(sd)
        if args.json:
            print(json.dumps(vms, indent=1, sort_keys=True))
        else:
            for st in vms:
                taps = ", ".join(f"{i['tap']}@{i['bridge'] or 'routed'}" for i in st["interfaces"]) or "no taps"
                print(f"{st['name']:<24} {st['uuid']}  {st['profile']:<9} {taps}")
            if not vms:
                print("no VM has firewall rules")
        return 0
    st = _find(sd, args.vm)
    if st is None:
        _err(f"no firewall state for VM '{args.vm}'")
        return 2
    taps = [i["tap"] for i in st["interfaces"]]
    counts = {fam: {} for fam in render.FAMILIES}
    profiles = {fam: apply.registered_taps(fam) for fam in render.FAMILIES}
    for fam in render.FAMILIES:
        for tap, c in apply.counters(fam).items():
            if tap in taps:
                for k, v in c.items():
                    counts[fam][k] = counts[fam].get(k, 0) + v
    chains = {}
    if st["profile"] == "allowlist":
        for i in st["interfaces"]:
            for fam in render.FAMILIES:
                for c in render.allow_chains(i["tap"]):
                    chains[f"{fam} {c}"] = apply.query(
                        {"list": {"chain": {"family": fam, "table": render.TABLE, "name": c}}})
    if args.json:
        print(json.dumps({"state": st, "registered": {f: {t: profiles[f].get(t) for t in taps} for f in profiles},
                          "counters": counts, "chains": chains}, indent=1, sort_keys=True))
        return 0
    print(f"{st['name']} {st['uuid']} profile {st['profile']}")
    for i in st["interfaces"]:
        addrs = ", ".join(i["ips4"] + i["ips6"]) or "any (none declared)"
        print(f"  {i['tap']}: mac {i['mac']}, bridge {i['bridge'] or 'none (routed)'}, sources {addrs}, "
              f"registered as {profiles['bridge'].get(i['tap']) or 'NOTHING (dropped)'}")
    for fam in render.FAMILIES:
        c = counts[fam]
        print(f"  {fam} packets: from VM {c.get('acc_in', 0)} passed, {c.get('drop_in', 0)} dropped; "
              f"to VM {c.get('acc_out', 0)} passed, {c.get('drop_out', 0)} dropped")
    for key, objs in chains.items():
        rules = [o["rule"] for o in objs if "rule" in o]
        print(f"  {key}: {'MISSING' if not objs else f'{len(rules)} rules'}")
        for r in rules:
            print(f"    {_expr_text(r['expr'])}")
    print(f"  shared rules of profile {st['profile']}: nft list table bridge {render.TABLE}")
    return 0


def _expr_text(expr) -> str:
    """A compact one-line rendering of a rule's JSON (for humans; --json is exact)."""
    parts = []
    for e in expr:
        (k, v), = e.items()
        if k == "match":
            parts.append(f"{_val(v['left'])} {'' if v['op'] == '==' else v['op'] + ' '}{_val(v['right'])}")
        elif k == "counter":
            parts.append(f"counter {v['packets']}p" if isinstance(v, dict) else "counter")
        elif k == "mangle":
            parts.append(f"{_val(v['key'])} set {_val(v['value'])}")
        else:
            parts.append(k if v is None else f"{k} {json.dumps(v)}")
    return " ".join(parts)


def _val(v) -> str:
    if isinstance(v, dict):
        if "payload" in v:
            p = v["payload"]
            return f"{p['protocol']} {p['field']}" if "protocol" in p else f"@{p['base']},{p['offset']},{p['len']}"
        if "meta" in v:
            return f"meta {v['meta']['key']}"
        if "ct" in v:
            return f"ct {v['ct']['key']}"
        if "set" in v:
            return "{ " + ", ".join(_val(x) for x in v["set"]) + " }"
        if "prefix" in v:
            return f"{v['prefix']['addr']}/{v['prefix']['len']}"
        if "range" in v:
            return f"{v['range'][0]}-{v['range'][1]}"
        (k, x), = v.items()
        return f"{k}({', '.join(_val(y) for y in x) if isinstance(x, list) else _val(x)})"
    return str(v)


def status_report(state_dir: str, glob: dict) -> dict:
    """Everything `fw status` prints, as data (also used by reconcile and tests)."""
    from . import apply, render, state

    ruleset = apply.list_ruleset()
    ours = {(o["table"]["family"], o["table"]["name"]) for o in ruleset if "table" in o}
    rep: dict = {"tables": {}, "killswitch": {}, "registered": {}, "vms": [], "stale": [], "foreign_drops": []}
    for fam in render.FAMILIES:
        rep["tables"][f"{fam} {render.TABLE}"] = (fam, render.TABLE) in ours
    # Kill switch intact: each base and shared chain holds exactly the rules we render for it.
    want = render.base_rule_counts(glob)
    have: dict = {}
    for o in ruleset:
        r = o.get("rule")
        if r and r["table"] == render.TABLE and r["family"] in render.FAMILIES:
            have[(r["family"], r["chain"])] = have.get((r["family"], r["chain"]), 0) + 1
    for key, n in want.items():
        rep["killswitch"][f"{key[0]} {key[1]}"] = "ok" if have.get(key, 0) == n else f"{have.get(key, 0)}/{n} rules"
    for fam in render.FAMILIES:
        rep["registered"][fam] = sorted(apply.registered_taps(fam)) if rep["tables"][f"{fam} {render.TABLE}"] else []
    recorded = {}
    for st in state.all_vms(state_dir):
        taps = [i["tap"] for i in st["interfaces"]]
        gone = [t for t in taps if not os.path.exists(f"/sys/class/net/{t}")]
        rep["vms"].append({"name": st["name"], "uuid": st["uuid"], "profile": st["profile"], "taps": taps,
                           "taps_gone": gone})
        for t in taps:
            recorded[t] = st["uuid"]
        for t in taps:
            for fam in render.FAMILIES:
                if t not in rep["registered"][fam]:
                    rep["stale"].append(f"{st['name']}: tap {t} recorded but not registered in {fam} {render.TABLE}")
        if gone:
            rep["stale"].append(f"{st['name']}: tap(s) {', '.join(gone)} no longer exist (VM stopped without cleanup)")
    for fam in render.FAMILIES:
        for t in rep["registered"][fam]:
            if t not in recorded:
                rep["stale"].append(f"tap {t} registered in {fam} {render.TABLE} with no recorded VM")
    rep["foreign_drops"] = foreign_drops(ruleset)
    return rep


# Hooks where another table sees VM frames or routed VM packets.
_VM_HOOKS = {"bridge": {"prerouting", "input", "forward", "output", "postrouting"},
             "inet": {"forward"}, "ip": {"forward"}, "ip6": {"forward"}, "netdev": {"ingress", "egress"}}


def foreign_drops(ruleset: list[dict]) -> list[str]:
    """Base chains of other tables that can drop VM traffic, following their
    jumps and gotos. A packet any table drops is gone: our accept cannot rescue it."""
    from . import render

    chains: dict = {}
    rules: dict = {}
    for o in ruleset:
        c = o.get("chain")
        if c:
            chains[(c["family"], c["table"], c["name"])] = c
        r = o.get("rule")
        if r:
            rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r["expr"])
    out = []
    for key, c in sorted(chains.items()):
        if "hook" not in c or (c["table"] == render.TABLE and c["family"] in render.FAMILIES):
            continue
        if c["hook"] not in _VM_HOOKS.get(c["family"], ()):
            continue
        why = ["policy drop"] if c.get("policy") == "drop" else []
        seen, todo, n = set(), [key], 0
        while todo:
            k = todo.pop()
            if k in seen:
                continue
            seen.add(k)
            for expr in rules.get(k, ()):
                for e in expr:
                    xt = e.get("xt") or {}  # iptables-nft writes REJECT as an xtables target
                    if "drop" in e or "reject" in e or xt.get("name") in ("REJECT", "DROP"):
                        n += 1
                    for verb in ("jump", "goto"):
                        if verb in e:
                            todo.append((k[0], k[1], e[verb]["target"]))
        if n:
            why.append(f"{n} drop/reject rule(s) reachable")
        if why:
            out.append(f"{key[0]} {key[1]} chain {key[2]} (hook {c['hook']}): {', '.join(why)}")
    return out


def cmd_status(args) -> int:
    from ..errors import PolicyError

    try:
        glob = _global(args)
    except PolicyError as exc:
        _err(str(exc))
        return 2
    rep = status_report(_paths(args).state_dir, glob)
    bad = (not all(rep["tables"].values()) or any(v != "ok" for v in rep["killswitch"].values())
           or bool(rep["stale"]))
    if args.json:
        print(json.dumps(dict(rep, ok=not bad), indent=1, sort_keys=True))
        return 1 if bad else 0
    for t, ok in rep["tables"].items():
        print(f"table {t}: {'present' if ok else 'MISSING'}")
    for c, s in rep["killswitch"].items():
        print(f"base chain {c}: {s}")
    print(f"VMs registered: {len(rep['vms'])}")
    for v in rep["vms"]:
        print(f"  {v['name']} {v['uuid']} {v['profile']} {', '.join(v['taps']) or '-'}")
    for s in rep["stale"]:
        print(f"STALE: {s}")
    for f in rep["foreign_drops"]:
        print(f"WARNING: other table may drop VM traffic: {f}")
    print("status: " + ("problems found; run 'qwamos-policy fw reconcile'" if bad else "ok"))
    return 1 if bad else 0


def _orphan_records(taps: set[str]) -> list[dict]:
    """Interface records rebuilt from what the sets hold for taps nobody recorded,
    so their elements (MAC, addresses, bridge MAC) can be deleted exactly."""
    from . import apply

    recs = {t: {"tap": t, "mac": None, "ips4": [], "ips6": [], "bridge_mac": None} for t in taps}
    for e in apply.set_elements("bridge", "mac"):
        t, v = e["concat"]
        if t in recs:
            recs[t]["mac"] = v
    for name, key in (("src4", "ips4"), ("src6", "ips6")):
        for e in apply.set_elements("bridge", name) + apply.set_elements("inet", name):
            t, v = e["concat"]
            if t in recs and v not in recs[t][key]:
                recs[t][key].append(v)
    for t, v in apply.set_elements("bridge", "brmac"):
        if t in recs:
            recs[t]["bridge_mac"] = v
    return [r if r["mac"] else r["tap"] for r in recs.values()]


def reconcile(state_dir: str, glob: dict, rebuild: bool = False) -> dict:
    """One transaction: every shared chain re-asserted; every recorded VM whose
    taps exist re-applied from its record; VMs whose taps are gone, and taps
    registered without a record, removed."""
    from . import apply, render, state

    keep, dropped_vms = [], []
    recorded: set[str] = set()
    cmds = []
    if rebuild and apply.tables_present():
        cmds += [{"delete": {"table": {"family": f, "name": render.TABLE}}} for f in render.FAMILIES
                 if apply.query({"list": {"table": {"family": f, "name": render.TABLE}}})]
    cmds += render.base_commands(glob)
    for st in state.all_vms(state_dir):
        taps = [i["tap"] for i in st["interfaces"]]
        owned = [i for i in list(st["interfaces"]) + list(st.get("stale", ()))
                 if state.tap_owner(state_dir, i["tap"]) in (None, st["uuid"])]
        if taps and all(os.path.exists(f"/sys/class/net/{t}") for t in taps):
            cmds += render.remove_commands(st.get("stale", ())) + render.vm_commands(st, glob)
            keep.append(st)
            recorded.update(taps)
        else:
            cmds += render.remove_commands(owned)
            dropped_vms.append(st)
    seen = set()
    for fam in render.FAMILIES if not rebuild else ():
        seen |= set(apply.registered_taps(fam)) | set(apply.counters(fam))
    dropped_taps = {i["tap"] for s in dropped_vms for i in s["interfaces"]}
    orphans = sorted(seen - recorded - dropped_taps)
    cmds += render.remove_commands(_orphan_records(set(orphans)))
    apply.run(cmds)
    for st in dropped_vms:
        for i in list(st["interfaces"]) + list(st.get("stale", ())):
            state.release_tap(state_dir, i["tap"], st["uuid"])
        state.release_macs(state_dir, list(st["interfaces"]) + list(st.get("stale", ())), st["uuid"])
        state.delete(state_dir, st["uuid"])
    return {"applied": [s["name"] for s in keep], "removed": [s["name"] for s in dropped_vms],
            "orphans": orphans}


def cmd_reconcile(args) -> int:
    from ..errors import PolicyError
    from . import apply

    try:
        glob = _global(args)
    except PolicyError as exc:
        _err(str(exc))
        return 2
    try:
        r = reconcile(_paths(args).state_dir, glob)
    except apply.NftError as exc:
        _err(f"reconcile failed, nothing changed: {exc}")
        return 1
    print(f"re-applied {len(r['applied'])} VM(s); removed {len(r['removed'])} stopped VM(s) "
          f"{', '.join(r['removed'])}; removed {len(r['orphans'])} orphan tap(s) {', '.join(r['orphans'])}")
    return 0


def cmd_uninstall(args) -> int:
    from . import apply, render

    cmds = [{"delete": {"table": {"family": f, "name": render.TABLE}}} for f in render.FAMILIES
            if apply.query({"list": {"table": {"family": f, "name": render.TABLE}}})]
    try:
        apply.run(cmds)
    except apply.NftError as exc:
        _err(f"could not delete tables: {exc}")
        return 1
    print(f"deleted {len(cmds)} table(s)")
    return 0
