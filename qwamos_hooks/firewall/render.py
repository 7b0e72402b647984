"""State -> libnftables JSON commands. Pure and deterministic: no I/O, no clock.

Two tables are ours and nothing else is touched:

- ``bridge qwamos`` filters every frame a VM sends or receives through a bridge
  port (prerouting sees the tap as ``iifname``, postrouting as ``oifname``);
- ``inet qwamos`` does the same for taps routed by the host (no bridge), and
  holds the Tor NAT and the reply marking, which need conntrack.

Each base chain dispatches through a verdict map keyed by interface name, so
the per-packet cost does not grow with the number of VMs. After the map come
the kill-switch rules: any ``vnet*`` / ``macvtap*`` interface, or any name in
the ``guard`` set (custom tap names taken from domain XML), is dropped unless
the map sent it to its own chain, which always ends with a verdict.

Every base chain has policy accept: we only ever drop VM traffic.
"""

from __future__ import annotations

import ipaddress

TABLE = "qwamos"
FAMILIES = ("bridge", "inet")
MAP_IN = "vm_in"  # ifname -> jump <tap>-in   (traffic from the VM)
MAP_OUT = "vm_out"  # ifname -> jump <tap>-out (traffic to the VM)
GUARD = "guard"  # ifnames that are dropped unless registered
TAP_PATTERNS = ("vnet*", "macvtap*")

# Base chain names. Priorities: bridge filters run before libvirt's or anyone
# else's bridge rules could forward; inet pre runs after conntrack (-200) and
# before DNAT (-100) so the ct mark is set before the redirect.
BASE_CHAINS = {
    "bridge": (
        ("pre", "filter", "prerouting", -300),
        ("post", "filter", "postrouting", 300),
    ),
    "inet": (
        ("pre", "filter", "prerouting", -150),
        ("tor_nat", "nat", "prerouting", -100),
        ("fwd", "filter", "forward", -150),
        ("post", "filter", "postrouting", -150),
    ),
}

DEFAULT_GLOBAL = {
    "tor": {"trans_port": 9040, "dns_port": 5353, "address": None, "address6": None},
    "marks": {"tor": 0x00100000, "reply": 0x00200000},
}

PROFILES = ("isolated", "nat", "open", "tor", "allowlist")

DHCP4_SERVER, DHCP4_CLIENT = 67, 68
DHCP6_CLIENT, DHCP6_SERVER = 546, 547
ND_FROM_VM = ["nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert"]
ND_TO_VM = ["nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert"]


# --- config normalisation (pure) ----------------------------------------------


def global_config(section: dict | None) -> dict:
    """The policy-wide `firewall` section with defaults filled in."""
    section = section or {}
    tor = dict(DEFAULT_GLOBAL["tor"])
    tor.update(section.get("tor") or {})
    marks = dict(DEFAULT_GLOBAL["marks"])
    marks.update(section.get("marks") or {})
    return {"tor": tor, "marks": marks}


def profile_name(section: dict | None) -> str:
    name = (section or {}).get("profile", "nat")
    return "nat" if name == "open" else name


def split_addresses(addrs) -> tuple[list[str], list[str]]:
    """Sorted, de-duplicated IPv4 and IPv6 host addresses (prefix lengths dropped)."""
    v4, v6 = set(), set()
    for a in addrs or ():
        ip = ipaddress.ip_interface(str(a).strip()).ip
        (v4 if ip.version == 4 else v6).add(ip)
    return [str(x) for x in sorted(v4)], [str(x) for x in sorted(v6)]


def allow_entries(section: dict | None) -> list[dict]:
    """allowlist entries normalised: dest split by family, proto, sorted ports."""
    out = []
    for e in (section or {}).get("allow") or ():
        dests = e.get("dest")
        dests = [dests] if isinstance(dests, str) else list(dests or ())
        nets4, nets6 = [], []
        for d in dests:
            n = ipaddress.ip_network(d, strict=False)
            (nets4 if n.version == 4 else nets6).append(str(n))
        ports = [str(p) for p in (e.get("ports") or ())]
        proto = e.get("proto") or ("tcp+udp" if ports else "any")
        if proto == "any" and ports:
            raise ValueError("allow entry with ports needs proto tcp, udp or tcp+udp")
        out.append({"dest4": sorted(nets4), "dest6": sorted(nets6), "proto": proto, "ports": ports})
    return out


# --- expression helpers --------------------------------------------------------


def _m(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


def _p(proto, field):
    return {"payload": {"protocol": proto, "field": field}}


def _meta(key):
    return {"meta": {"key": key}}


def _set(values):
    return {"set": list(values)}


def _addr(a: str):
    if "/" in a:
        net, plen = a.split("/")
        return {"prefix": {"addr": net, "len": int(plen)}}
    return a


def _port(p: str):
    if "-" in str(p):
        lo, hi = str(p).split("-", 1)
        return {"range": [int(lo), int(hi)]}
    return int(p)


def _mark_is(bit):
    return _m({"&": [_meta("mark"), bit]}, bit)


def _mark_or(bit):
    return {"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), bit]}}}


def _ctmark_or(bit):
    return {"mangle": {"key": {"ct": {"key": "mark"}}, "value": {"|": [{"ct": {"key": "mark"}}, bit]}}}


ACCEPT = {"accept": None}
DROP = {"drop": None}
COUNTER = {"counter": None}


def _cmd(verb, kind, body):
    return {verb: {kind: body}}


def chain_names(tap: str) -> tuple[str, str]:
    return f"{tap}-in", f"{tap}-out"


# --- the base skeleton ---------------------------------------------------------


def base_commands(glob: dict) -> list[dict]:
    """Idempotent: tables, maps, sets and base chains are added (no-op if present),
    then each base chain is flushed and refilled in the same transaction, so a
    chain someone flushed gets its kill switch back with no window."""
    cmds: list[dict] = []
    for fam in FAMILIES:
        cmds.append(_cmd("add", "table", {"family": fam, "name": TABLE}))
        for name in (MAP_IN, MAP_OUT):
            cmds.append(_cmd("add", "map", {"family": fam, "table": TABLE, "name": name,
                                             "type": "ifname", "map": "verdict"}))
        cmds.append(_cmd("add", "set", {"family": fam, "table": TABLE, "name": GUARD, "type": "ifname"}))
        for name, ctype, hook, prio in BASE_CHAINS[fam]:
            cmds.append(_cmd("add", "chain", {"family": fam, "table": TABLE, "name": name,
                                               "type": ctype, "hook": hook, "prio": prio,
                                               "policy": "accept"}))
            cmds.append(_cmd("flush", "chain", {"family": fam, "table": TABLE, "name": name}))
            for expr in _base_rules(fam, name, glob):
                cmds.append(_cmd("add", "rule", {"family": fam, "table": TABLE, "chain": name, "expr": expr}))
    return cmds


def _killswitch(key: str) -> list[list]:
    rules = [[_m(_meta(key), pat), COUNTER, DROP] for pat in TAP_PATTERNS]
    rules.append([_m(_meta(key), "@" + GUARD), COUNTER, DROP])
    return rules


def _base_rules(fam: str, chain: str, glob: dict) -> list[list]:
    tor, rep = glob["marks"]["tor"], glob["marks"]["reply"]
    if chain == "pre":
        rules = [[{"vmap": {"key": _meta("iifname"), "data": "@" + MAP_IN}}]]
        rules += _killswitch("iifname")
        if fam == "inet":
            # Remember in conntrack which connections a filtered VM opened, so
            # their replies can be told apart on the way back (see post).
            rules += [[_mark_is(bit), _ctmark_or(bit)] for bit in (tor, rep)]
        return rules
    if chain == "post":
        rules = []
        if fam == "inet":
            rules += [
                [_m({"ct": {"key": "direction"}}, "reply"), _m({"&": [{"ct": {"key": "mark"}}, bit]}, bit),
                 _mark_or(bit)]
                for bit in (tor, rep)
            ]
        rules.append([{"vmap": {"key": _meta("oifname"), "data": "@" + MAP_OUT}}])
        rules += _killswitch("oifname")
        return rules
    if chain == "fwd":
        # Traffic of a Tor VM is only ever delivered locally (to Tor); never route it.
        return [[_mark_is(tor), COUNTER, DROP]]
    if chain == "tor_nat":
        return _tor_nat_rules(glob)
    raise ValueError(chain)


def _tor_nat_rules(glob: dict) -> list[list]:
    t = glob["tor"]
    bit = glob["marks"]["tor"]
    rules = []
    dns = [_m(_meta("l4proto"), _set(["tcp", "udp"])), _m(_p("th", "dport"), 53)]
    for nfproto, fam, addr in (("ipv4", "ip", t.get("address")), ("ipv6", "ip6", t.get("address6"))):
        targets = [(dns, t["dns_port"])]
        if nfproto == "ipv4":
            targets.append(([_m(_meta("l4proto"), "tcp")], t["trans_port"]))
        for match, port in targets:
            head = [_mark_is(bit), _m(_meta("nfproto"), nfproto)] + match + [COUNTER]
            if addr:
                rules.append(head + [{"dnat": {"family": fam, "addr": addr, "port": int(port)}}])
            else:
                rules.append(head + [{"redirect": {"port": int(port)}}])
    return rules


# --- one VM ----------------------------------------------------------------------


def vm_commands(vm: dict, glob: dict) -> list[dict]:
    """Install or replace the chains of every tap of one VM and register them in
    the verdict maps. Chains are named after the tap, so the map elements never
    change value and re-applying is idempotent."""
    cmds: list[dict] = []
    for iface in vm["interfaces"]:
        tap = iface["tap"]
        cin, cout = chain_names(tap)
        comment = f"{vm['uuid']} {vm['name']}"[:120]
        for fam in FAMILIES:
            t = {"family": fam, "table": TABLE}
            cmds.append(_cmd("add", "element", {**t, "name": GUARD, "elem": [tap]}))
            for cname, rules in ((cin, rules_from_vm(fam, vm, iface, glob)),
                                 (cout, rules_to_vm(fam, vm, iface, glob))):
                cmds.append(_cmd("add", "chain", {**t, "name": cname}))
                cmds.append(_cmd("flush", "chain", {**t, "name": cname}))
                for expr in rules:
                    cmds.append(_cmd("add", "rule", {**t, "chain": cname, "expr": expr, "comment": comment}))
            cmds.append(_cmd("add", "element", {**t, "name": MAP_IN, "elem": [[tap, {"jump": {"target": cin}}]]}))
            cmds.append(_cmd("add", "element", {**t, "name": MAP_OUT, "elem": [[tap, {"jump": {"target": cout}}]]}))
    return cmds


def remove_commands(taps, keep_guard: bool = False) -> list[dict]:
    """Unregister taps and delete their chains, idempotently: each object is added
    (a no-op when present) before it is deleted, in one transaction."""
    cmds: list[dict] = []
    for tap in sorted(taps):
        cin, cout = chain_names(tap)
        for fam in FAMILIES:
            t = {"family": fam, "table": TABLE}
            for m, c in ((MAP_IN, cin), (MAP_OUT, cout)):
                cmds.append(_cmd("add", "chain", {**t, "name": c}))
                cmds.append(_cmd("add", "element", {**t, "name": m, "elem": [[tap, {"jump": {"target": c}}]]}))
                cmds.append(_cmd("delete", "element", {**t, "name": m, "elem": [tap]}))
            for c in (cin, cout):
                cmds.append(_cmd("flush", "chain", {**t, "name": c}))
                cmds.append(_cmd("delete", "chain", {**t, "name": c}))
            if not keep_guard:
                cmds.append(_cmd("add", "element", {**t, "name": GUARD, "elem": [tap]}))
                cmds.append(_cmd("delete", "element", {**t, "name": GUARD, "elem": [tap]}))
    return cmds


def guard_commands(names) -> list[dict]:
    """Put custom tap names on the kill-switch list before the tap exists."""
    cmds = []
    for fam in FAMILIES:
        for n in sorted(names):
            cmds.append(_cmd("add", "element", {"family": fam, "table": TABLE, "name": GUARD, "elem": [n]}))
    return cmds


def _antispoof(fam: str, iface: dict) -> list[list]:
    mac = iface["mac"]
    v4, v6 = iface.get("ips4") or [], iface.get("ips6") or []
    declared = bool(v4 or v6)
    rules = [[_m(_p("ether", "saddr"), mac, "!="), COUNTER, DROP]]
    if fam == "bridge":
        rules.append([_m(_p("arp", "saddr ether"), mac, "!="), COUNTER, DROP])
        if declared:
            # 0.0.0.0 is the sender of an ARP probe (RFC 5227) before an address is taken.
            rules.append([_m(_p("arp", "saddr ip"), _set(["0.0.0.0"] + v4), "!="), COUNTER, DROP])
    # A guest must not act as a DHCP server or a router.
    rules.append([_m(_p("udp", "sport"), _set([DHCP4_SERVER, DHCP6_SERVER])), COUNTER, DROP])
    rules.append([_m(_p("icmpv6", "type"), _set(["nd-router-advert", "nd-redirect"])), COUNTER, DROP])
    # A guest with no address yet speaks DHCP from 0.0.0.0 (every profile that
    # gets here allows DHCP); any other unspecified source is dropped.
    rules.append([_m(_p("ip", "saddr"), "0.0.0.0"), _m(_p("udp", "sport"), DHCP4_CLIENT),
                  _m(_p("udp", "dport"), DHCP4_SERVER), COUNTER, ACCEPT])
    if not declared:
        rules.append([_m(_p("ip", "saddr"), "0.0.0.0"), COUNTER, DROP])
    elif v4:
        rules.append([_m(_p("ip", "saddr"), _set(v4), "!="), COUNTER, DROP])
    else:
        rules.append([_m(_p("ip", "version"), 4), COUNTER, DROP])
    if declared:
        # :: is the source of duplicate address detection; link-local is needed for NDP.
        rules.append([_m(_p("ip6", "saddr"), _set(["::", {"prefix": {"addr": "fe80::", "len": 10}}] + v6), "!="),
                      COUNTER, DROP])
        # A neighbour advertisement claims its target address: limit it too
        # (raw payload: this nft has no icmpv6 taddr; the target sits at bit 64).
        target = {"payload": {"base": "th", "offset": 64, "len": 128}}
        claim = [_m(_p("icmpv6", "type"), "nd-neighbor-advert"),
                 _m({"payload": {"base": "th", "offset": 64, "len": 10}}, 0x3FA, "!=")]
        if v6:
            claim.append(_m(target, _set(hex(int(ipaddress.IPv6Address(a))) for a in v6), "!="))
        rules.append(claim + [COUNTER, DROP])
    return rules


def _dhcp_nd_from_vm() -> list[list]:
    return [
        [_m(_p("udp", "sport"), DHCP4_CLIENT), _m(_p("udp", "dport"), DHCP4_SERVER), COUNTER, ACCEPT],
        [_m(_p("udp", "sport"), DHCP6_CLIENT), _m(_p("udp", "dport"), DHCP6_SERVER), COUNTER, ACCEPT],
        [_m(_p("icmpv6", "type"), _set(ND_FROM_VM)), ACCEPT],
    ]


def _dhcp_nd_to_vm(fam: str) -> list[list]:
    rules = [[_m(_p("ether", "type"), "arp"), ACCEPT]] if fam == "bridge" else []
    return rules + [
        [_m(_p("udp", "sport"), DHCP4_SERVER), _m(_p("udp", "dport"), DHCP4_CLIENT), COUNTER, ACCEPT],
        [_m(_p("udp", "sport"), DHCP6_SERVER), _m(_p("udp", "dport"), DHCP6_CLIENT), COUNTER, ACCEPT],
        [_m(_p("icmpv6", "type"), _set(ND_TO_VM)), ACCEPT],
    ]


def rules_from_vm(fam: str, vm: dict, iface: dict, glob: dict) -> list[list]:
    prof = vm["profile"]
    if prof == "isolated":
        return [[COUNTER, DROP]]
    rules = _antispoof(fam, iface)
    if prof == "nat":
        return rules + [[COUNTER, ACCEPT]]
    arp = [[_m(_p("ether", "type"), "arp"), ACCEPT]] if fam == "bridge" else []
    if prof == "tor":
        bit = glob["marks"]["tor"]
        to_tor = [_mark_or(bit)]
        if fam == "bridge" and iface.get("bridge_mac"):
            # Hand the frame to the host's IP stack (where Tor listens) whatever
            # its destination MAC; the inet table then redirects it by mark.
            to_tor += [{"mangle": {"key": _p("ether", "daddr"), "value": iface["bridge_mac"]}},
                       {"mangle": {"key": _meta("pkttype"), "value": "host"}}]
        return rules + arp + _dhcp_nd_from_vm() + [
            [_m(_meta("l4proto"), _set(["tcp", "udp"])), _m(_p("th", "dport"), 53), COUNTER] + to_tor + [ACCEPT],
            # All other TCP goes to the TransPort; IPv6 carries DNS only.
            [_m(_p("ip", "protocol"), "tcp"), COUNTER] + to_tor + [ACCEPT],
            [COUNTER, DROP],
        ]
    if prof == "allowlist":
        bit = glob["marks"]["reply"]
        out = rules + arp + _dhcp_nd_from_vm()
        for e in vm.get("allow") or ():
            for proto, key in (("ip", "dest4"), ("ip6", "dest6")):
                if not e[key]:
                    continue
                for tail in _proto_port(e, "dport"):
                    out.append([_m(_p(proto, "daddr"), _set(_addr(a) for a in e[key]))] + tail
                               + [COUNTER, _mark_or(bit), ACCEPT])
        return out + [[COUNTER, DROP]]
    raise ValueError(f"unknown firewall profile {prof!r}")


def _proto_port(e: dict, key: str) -> list[list]:
    ports = [_port(p) for p in e["ports"]]
    protos = {"tcp+udp": ["tcp", "udp"], "any": [None]}.get(e["proto"], [e["proto"]])
    tails = []
    for proto in protos:
        t = []
        if proto:
            t.append(_m(_meta("l4proto"), proto))
            if ports:
                t.append(_m(_p("th", key), _set(ports)))
        tails.append(t)
    return tails


def rules_to_vm(fam: str, vm: dict, iface: dict, glob: dict) -> list[list]:
    prof = vm["profile"]
    if prof == "isolated":
        return [[COUNTER, DROP]]
    if prof == "nat":
        return [[COUNTER, ACCEPT]]
    rules = _dhcp_nd_to_vm(fam)
    if prof == "tor":
        # Only replies of connections Tor answered (marked from conntrack in inet post).
        return rules + [[_mark_is(glob["marks"]["tor"]), COUNTER, ACCEPT], [COUNTER, DROP]]
    if prof == "allowlist":
        rules.append([_mark_is(glob["marks"]["reply"]), COUNTER, ACCEPT])
        # Bridged replies never meet the host's conntrack: match them statelessly.
        for e in vm.get("allow") or ():
            for proto, key in (("ip", "dest4"), ("ip6", "dest6")):
                if not e[key]:
                    continue
                for tail in _proto_port(e, "sport"):
                    rules.append([_m(_p(proto, "saddr"), _set(_addr(a) for a in e[key]))] + tail
                                 + [COUNTER, ACCEPT])
        return rules + [[COUNTER, DROP]]
    raise ValueError(f"unknown firewall profile {prof!r}")


def transaction(cmds: list[dict]) -> dict:
    return {"nftables": cmds}


# --- state construction (pure) ----------------------------------------------------


def vm_state(uuid: str, name: str, section: dict, interfaces: list[dict]) -> dict:
    """The per-VM record both the renderer and teardown work from.

    interfaces: [{"tap", "mac", "bridge", "bridge_mac", "ips"}] facts gathered at start."""
    prof = profile_name(section)
    if prof not in PROFILES:
        raise ValueError(f"unknown firewall profile {prof!r}")
    extra = list((section or {}).get("addresses") or ())
    ifs = []
    for i in sorted(interfaces, key=lambda x: x["tap"]):
        v4, v6 = split_addresses(list(i.get("ips") or ()) + extra)
        ifs.append({"tap": i["tap"], "mac": i["mac"].lower(), "bridge": i.get("bridge"),
                    "bridge_mac": (i.get("bridge_mac") or None), "ips4": v4, "ips6": v6})
    st = {"version": 1, "uuid": uuid, "name": name, "profile": prof, "interfaces": ifs}
    if prof == "allowlist":
        st["allow"] = allow_entries(section)
    return st
