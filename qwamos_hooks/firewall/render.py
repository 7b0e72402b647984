"""State -> libnftables JSON commands. Pure and deterministic: no I/O, no clock.

Two tables are ours and nothing else is touched:

- ``bridge qwamos`` filters every frame a VM sends or receives through a bridge
  port (prerouting sees the tap as ``iifname``, postrouting as ``oifname``);
- ``inet qwamos`` does the same for taps the host routes (no bridge), and holds
  the Tor NAT and the reply marking, which need conntrack.

The rules are data-driven. A VM event adds or deletes set elements only (and,
for the allowlist profile, the VM's own two chains); the chains themselves are
shared by every VM and do not change with the number of VMs:

- membership sets ``p_isolated``, ``p_nat``, ``p_tor`` and the verdict maps
  ``allow_in`` / ``allow_out`` (tap -> its allowlist chain) pick the profile;
- ``mac`` (tap . MAC), ``src4`` / ``src6`` (tap . address) and ``declared`` hold
  what anti-spoofing checks; ``brmac`` (tap -> bridge MAC) serves the Tor
  redirect of bridged frames;
- ``acc_in`` / ``drop_in`` / ``acc_out`` / ``drop_out`` count packets per tap.

After the dispatch come the kill-switch rules: any ``vnet*`` / ``macvtap*``
interface, or any name in ``guard`` (custom tap names taken from domain XML),
is dropped unless a profile chain took it, and every profile chain ends with a
verdict. Every base chain has policy accept: we only ever drop VM traffic.

Per-VM rules use no anonymous sets and per-VM chains only for allowlists:
libnftables refreshes its cache of the table's chains and of every set's
elements before a transaction, so per-VM chains or thousands of small anonymous
sets would make each VM event slower as VMs are added.
"""

from __future__ import annotations

import ipaddress

TABLE = "qwamos"
FAMILIES = ("bridge", "inet")
TAP_PATTERNS = ("vnet*", "macvtap*")
GUARD = "guard"
PROFILE_SETS = {"isolated": "p_isolated", "nat": "p_nat", "tor": "p_tor"}
ALLOW_IN, ALLOW_OUT = "allow_in", "allow_out"
COUNTERS = ("acc_in", "drop_in", "acc_out", "drop_out")

# Base chains. Bridge filters run first on the bridge hooks; inet pre runs after
# conntrack (-200) and before DNAT (-100), so the ct mark is set before the redirect.
BASE_CHAINS = {
    "bridge": (
        ("pre", "filter", "prerouting", -300),
        ("post", "filter", "postrouting", 300),
    ),
    "inet": (
        ("pre", "filter", "prerouting", -150),
        ("tor_nat", "nat", "prerouting", -100),
        ("fwd", "filter", "forward", -150),
        ("out", "filter", "output", -150),
        ("post", "filter", "postrouting", -150),
    ),
}
SHARED_CHAINS = ("deny_in", "pass_in", "deny_out", "pass_out", "spoof", "host_in", "host_out",
                 "isolated_in", "isolated_out", "nat_in", "nat_out", "tor_in", "tor_out")

DEFAULT_GLOBAL = {
    "tor": {"trans_port": 9040, "dns_port": 5353, "address": None, "address6": None},
    "marks": {"tor": 0x00100000, "reply": 0x00200000},
}

PROFILES = ("isolated", "nat", "open", "tor", "allowlist")

DHCP4_SERVER, DHCP4_CLIENT = 67, 68
DHCP6_CLIENT, DHCP6_SERVER = 546, 547
DHCP6_SERVERS = "ff02::1:2"  # All_DHCP_Relay_Agents_and_Servers
LINK_LOCAL6, LINK_MCAST6 = "fe80::/10", "ff02::/16"
ND_FROM_VM = ["nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert"]
ND_TO_VM = ["nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert"]
MLD_REPORTS = ["mld-listener-report", "mld2-listener-report"]
MLD_FROM_VM = MLD_REPORTS + ["mld-listener-done"]
# The only EtherTypes a VM may send through a filtering profile: anti-spoofing
# matches on these; a VLAN-tagged (802.1Q / 802.1ad) or other frame would skip it.
ETHERTYPES = "ethertypes"
ETHERTYPE_ELEMS = ["arp", "ip", "ip6"]


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
    """allowlist entries normalised: destinations split by family and sorted; proto; ports validated."""
    out = []
    for e in (section or {}).get("allow") or ():
        dests = e.get("dest")
        dests = [dests] if isinstance(dests, str) else list(dests or ())
        nets4, nets6 = [], []
        for d in dests:
            n = ipaddress.ip_network(d, strict=False)
            (nets4 if n.version == 4 else nets6).append(str(n))
        ports = [str(p) for p in (e.get("ports") or ())]
        for p in ports:
            _port(p)  # validates
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


def _concat(*parts):
    return {"concat": list(parts)}


def _addr(a: str):
    if "/" in a:
        net, plen = a.split("/")
        return {"prefix": {"addr": net, "len": int(plen)}}
    return a


def _port(p: str):
    if "-" in str(p):
        lo, hi = (int(x) for x in str(p).split("-", 1))
        if not 0 < lo <= hi <= 65535:
            raise ValueError(f"bad port range {p!r}")
        return {"range": [lo, hi]}
    if not 0 < int(p) <= 65535:
        raise ValueError(f"bad port {p!r}")
    return int(p)


def _mark_is(bit):
    return _m({"&": [_meta("mark"), bit]}, bit)


def _mark_or(bit):
    return {"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), bit]}}}


def _ctmark_or(bit):
    return {"mangle": {"key": {"ct": {"key": "mark"}}, "value": {"|": [{"ct": {"key": "mark"}}, bit]}}}


ACCEPT = {"accept": None}
DROP = {"drop": None}
RETURN = {"return": None}
COUNTER = {"counter": None}
# Verdicts go through small shared chains that count per tap: a lookup in a set
# with a counter per element counts the packet on the tap's element.
DROP_IN = [{"goto": {"target": "deny_in"}}]
ACCEPT_IN = [{"goto": {"target": "pass_in"}}]
DROP_OUT = [{"goto": {"target": "deny_out"}}]
ACCEPT_OUT = [{"goto": {"target": "pass_out"}}]
VERDICT_CHAINS = {"deny_in": ("iifname", "drop_in", DROP), "pass_in": ("iifname", "acc_in", ACCEPT),
                  "deny_out": ("oifname", "drop_out", DROP), "pass_out": ("oifname", "acc_out", ACCEPT)}


def _cmd(verb, kind, body):
    return {verb: {kind: body}}


def _t(fam):
    return {"family": fam, "table": TABLE}


def allow_chains(tap: str) -> tuple[str, str]:
    return f"{tap}-in", f"{tap}-out"


# --- the skeleton: tables, sets, shared chains -----------------------------------


def _sets(fam: str) -> list[dict]:
    out = []
    for name in [GUARD, "declared"] + sorted(PROFILE_SETS.values()):
        out.append(_cmd("add", "set", {**_t(fam), "name": name, "type": "ifname"}))
    for name, typ in (("mac", ["ifname", "ether_addr"]), ("src4", ["ifname", "ipv4_addr"]),
                      ("src6", ["ifname", "ipv6_addr"])):
        out.append(_cmd("add", "set", {**_t(fam), "name": name, "type": typ}))
    for name in COUNTERS:
        out.append(_cmd("add", "set", {**_t(fam), "name": name, "type": "ifname",
                                       "stmt": [{"counter": None}]}))
    for name in (ALLOW_IN, ALLOW_OUT):
        out.append(_cmd("add", "map", {**_t(fam), "name": name, "type": "ifname", "map": "verdict"}))
    if fam == "bridge":
        out.append(_cmd("add", "map", {**_t(fam), "name": "brmac", "type": "ifname", "map": "ether_addr"}))
        out.append(_cmd("add", "set", {**_t(fam), "name": ETHERTYPES, "type": "ether_type"}))
        out.append(_cmd("add", "element", {**_t(fam), "name": ETHERTYPES, "elem": list(ETHERTYPE_ELEMS)}))
    return out


def base_commands(glob: dict) -> list[dict]:
    """Idempotent: tables, sets and chains are added (no-op if present), then
    every chain of ours except the allowlist ones is flushed and refilled in the
    same transaction, so a chain someone flushed gets its rules back with no window."""
    cmds: list[dict] = []
    for fam in FAMILIES:
        cmds.append(_cmd("add", "table", {"family": fam, "name": TABLE}))
        cmds += _sets(fam)
        for name in SHARED_CHAINS:
            cmds.append(_cmd("add", "chain", {**_t(fam), "name": name}))
        for name, ctype, hook, prio in BASE_CHAINS[fam]:
            cmds.append(_cmd("add", "chain", {**_t(fam), "name": name, "type": ctype, "hook": hook,
                                               "prio": prio, "policy": "accept"}))
        chains = {name: _shared_rules(fam, name, glob) for name in SHARED_CHAINS}
        chains.update({name: _base_rules(fam, name, glob) for name, *_ in BASE_CHAINS[fam]})
        for name in chains:
            cmds.append(_cmd("flush", "chain", {**_t(fam), "name": name}))
        for name, rules in chains.items():
            for expr in rules:
                cmds.append(_cmd("add", "rule", {**_t(fam), "chain": name, "expr": expr}))
    return cmds


def base_rule_counts(glob: dict) -> dict[tuple[str, str], int]:
    """(family, chain) -> how many rules base_commands puts there (for `fw status`)."""
    out: dict = {}
    for c in base_commands(glob):
        r = c.get("add", {}).get("rule")
        if r:
            out[(r["family"], r["chain"])] = out.get((r["family"], r["chain"]), 0) + 1
    return out


def _dispatch(key: str, direction: str) -> list[list]:
    rules = [[_m(_meta(key), "@" + s), {"jump": {"target": f"{p}_{direction}"}}]
             for p, s in PROFILE_SETS.items()]
    rules.append([{"vmap": {"key": _meta(key), "data": "@" + (ALLOW_IN if direction == "in" else ALLOW_OUT)}}])
    rules += [[_m(_meta(key), pat), COUNTER, DROP] for pat in TAP_PATTERNS]
    rules.append([_m(_meta(key), "@" + GUARD), COUNTER, DROP])
    return rules


def _base_rules(fam: str, chain: str, glob: dict) -> list[list]:
    tor, rep = glob["marks"]["tor"], glob["marks"]["reply"]
    if chain == "pre":
        rules = _dispatch("iifname", "in")
        if fam == "inet":
            # Remember in conntrack which connections a filtered VM opened, so
            # their replies can be told apart on the way back (see post).
            rules += [[_mark_is(bit), _ctmark_or(bit)] for bit in (tor, rep)]
        return rules
    if chain == "post":
        rules = []
        if fam == "inet":
            rules += [[_m({"ct": {"key": "direction"}}, "reply"),
                       _m({"&": [{"ct": {"key": "mark"}}, bit]}, bit), _mark_or(bit)] for bit in (tor, rep)]
        return rules + _dispatch("oifname", "out")
    if chain == "fwd":
        # Traffic of a Tor VM, and a filtered VM's DHCP and NDP, is only ever
        # delivered locally (to Tor, to the host's DHCP server); never route it.
        return [[_mark_is(tor), COUNTER, DROP]]
    if chain == "out":
        # DHCP answers the host itself sends: the only ones host_out lets reach
        # a filtered VM (a routed or bridged peer's answer carries no mark).
        return [[_m(_p("udp", "sport"), sp), _m(_p("udp", "dport"), dp), _mark_or(tor)]
                for sp, dp in ((DHCP4_SERVER, DHCP4_CLIENT), (DHCP6_SERVER, DHCP6_CLIENT))]
    if chain == "tor_nat":
        return _tor_nat_rules(glob)
    raise ValueError(chain)


def _tor_nat_rules(glob: dict) -> list[list]:
    t = glob["tor"]
    bit = glob["marks"]["tor"]
    rules = []
    dns = [[_m(_p("udp", "dport"), 53)], [_m(_p("tcp", "dport"), 53)]]
    for nfproto, fam, addr in (("ipv4", "ip", t.get("address")), ("ipv6", "ip6", t.get("address6"))):
        targets = [(m, t["dns_port"]) for m in dns]
        if nfproto == "ipv4":
            targets.append(([_m(_meta("l4proto"), "tcp")], t["trans_port"]))
        for match, port in targets:
            head = [_mark_is(bit), _m(_meta("nfproto"), nfproto)] + match + [COUNTER]
            if addr:
                rules.append(head + [{"dnat": {"family": fam, "addr": addr, "port": int(port)}}])
            else:
                rules.append(head + [{"redirect": {"port": int(port)}}])
    return rules


def _spoof_rules(fam: str) -> list[list]:
    """Anti-spoofing, shared by every VM; what each tap may use is in the sets."""
    ifn = _meta("iifname")
    rules = [[_m(_concat(ifn, _p("ether", "saddr")), "@mac", "!=")] + DROP_IN]
    if fam == "bridge":
        # Only untagged IPv4, IPv6 and ARP: every check below keys on the EtherType.
        rules.append([_m(_p("ether", "type"), "@" + ETHERTYPES, "!=")] + DROP_IN)
        rules.append([_m(_concat(ifn, _p("arp", "saddr ether")), "@mac", "!=")] + DROP_IN)
    # A guest must not act as a DHCP server or a router.
    for port in (DHCP4_SERVER, DHCP6_SERVER):
        rules.append([_m(_p("udp", "sport"), port)] + DROP_IN)
    for t in ("nd-router-advert", "nd-redirect"):
        rules.append([_m(_p("icmpv6", "type"), t)] + DROP_IN)
    # A guest with no address yet speaks DHCP from 0.0.0.0; the profile decides.
    rules.append([_m(_p("ip", "saddr"), "0.0.0.0"), _m(_p("udp", "sport"), DHCP4_CLIENT),
                  _m(_p("udp", "dport"), DHCP4_SERVER), RETURN])
    rules.append([_m(ifn, "@declared", "!="), _m(_p("ip", "saddr"), "0.0.0.0")] + DROP_IN)
    rules.append([_m(ifn, "@declared", "!="), RETURN])
    # Addresses declared (policy or <ip>): ARP, IPv4 and IPv6 sources limited to them.
    # 0.0.0.0 is the sender of an ARP probe (RFC 5227); :: that of duplicate
    # address detection and its MLD reports (RFC 4862, 3810); link-local that of
    # NDP, MLD and the DHCPv6 client, and of nothing else.
    if fam == "bridge":
        rules.append([_m(_p("arp", "saddr ip"), "0.0.0.0", "!="),
                      _m(_concat(ifn, _p("arp", "saddr ip")), "@src4", "!=")] + DROP_IN)
    rules.append([_m(_meta("protocol"), "ip"), _m(_concat(ifn, _p("ip", "saddr")), "@src4", "!=")] + DROP_IN)
    for t in ["nd-neighbor-solicit"] + MLD_REPORTS:
        rules.append([_m(_p("ip6", "saddr"), "::"), _m(_p("icmpv6", "type"), t), RETURN])
    for t in ND_FROM_VM + MLD_FROM_VM:
        rules.append([_m(_p("ip6", "saddr"), _addr(LINK_LOCAL6)), _m(_p("icmpv6", "type"), t), RETURN])
    rules.append([_m(_p("ip6", "saddr"), _addr(LINK_LOCAL6)), _m(_p("udp", "sport"), DHCP6_CLIENT),
                  _m(_p("udp", "dport"), DHCP6_SERVER), RETURN])
    rules.append([_m(_concat(ifn, _p("ip6", "saddr")), "@src6", "!=")] + DROP_IN)
    return rules


def _host_in(fam: str, glob: dict) -> list[list]:
    """ARP, DHCP and NDP a filtered VM may send: to link-scope destinations the
    host never routes (limited broadcast, ff02::/16, fe80::/10), or to the host
    itself (a frame to the bridge's MAC is `pkttype host` by then). The latter
    carries the Tor mark so that, should its address not be the host's, inet
    fwd drops it instead of routing it. Anything else returns to the profile chain."""
    local = [_mark_or(glob["marks"]["tor"])] + ACCEPT_IN
    host = _m(_meta("pkttype"), "host")
    dhcp4 = [_m(_p("udp", "sport"), DHCP4_CLIENT), _m(_p("udp", "dport"), DHCP4_SERVER)]
    rules = [[_m(_p("ether", "type"), "arp")] + ACCEPT_IN] if fam == "bridge" else []
    rules += [
        dhcp4 + [_m(_meta("pkttype"), "broadcast"), _m(_p("ip", "daddr"), "255.255.255.255")] + ACCEPT_IN,
        dhcp4 + [host] + local,
        [_m(_p("udp", "sport"), DHCP6_CLIENT), _m(_p("udp", "dport"), DHCP6_SERVER),
         _m(_p("ip6", "daddr"), DHCP6_SERVERS)] + ACCEPT_IN,
    ]
    # NDP (hop limit 255, RFC 4861) to link-scope multicast, link-local, or the host.
    for t in ND_FROM_VM:
        nd = [_m(_p("icmpv6", "type"), t), _m(_p("ip6", "hoplimit"), 255)]
        rules += [nd + [_m(_p("ip6", "daddr"), _addr(LINK_MCAST6))] + ACCEPT_IN,
                  nd + [_m(_p("ip6", "daddr"), _addr(LINK_LOCAL6))] + ACCEPT_IN,
                  nd + [host] + local]
    return rules


def _host_out(fam: str, glob: dict) -> list[list]:
    """ARP, NDP, and DHCP answers the host sent (marked in inet out) to a filtered VM."""
    rules = [[_m(_p("ether", "type"), "arp")] + ACCEPT_OUT] if fam == "bridge" else []
    rules += [[_m(_p("udp", "sport"), sp), _m(_p("udp", "dport"), dp), _mark_is(glob["marks"]["tor"])]
              + ACCEPT_OUT for sp, dp in ((DHCP4_SERVER, DHCP4_CLIENT), (DHCP6_SERVER, DHCP6_CLIENT))]
    return rules + [[_m(_p("icmpv6", "type"), t), _m(_p("ip6", "hoplimit"), 255)] + ACCEPT_OUT
                    for t in ND_TO_VM]


def _shared_rules(fam: str, chain: str, glob: dict) -> list[list]:
    spoof = [{"jump": {"target": "spoof"}}]
    if chain in VERDICT_CHAINS:
        key, counter, verdict = VERDICT_CHAINS[chain]
        return [[_m(_meta(key), "@" + counter), COUNTER, verdict], [COUNTER, verdict]]
    if chain == "spoof":
        return _spoof_rules(fam)
    if chain == "host_in":
        return _host_in(fam, glob)
    if chain == "host_out":
        return _host_out(fam, glob)
    if chain == "isolated_in":
        return [DROP_IN]
    if chain == "isolated_out":
        return [DROP_OUT]
    if chain == "nat_in":
        return [spoof, ACCEPT_IN]
    if chain == "nat_out":
        return [ACCEPT_OUT]
    if chain == "tor_in":
        to_tor = [_mark_or(glob["marks"]["tor"])]
        if fam == "bridge":
            # Hand the frame to the host's IP stack (where Tor listens) whatever
            # its destination MAC; the inet table then redirects it by mark. A
            # tap with no bridge MAC recorded fails the map lookup: dropped below.
            to_tor += [{"mangle": {"key": _p("ether", "daddr"),
                                   "value": {"map": {"key": _meta("iifname"), "data": "@brmac"}}}},
                       {"mangle": {"key": _meta("pkttype"), "value": "host"}}]
        to_tor += ACCEPT_IN
        return [spoof, [{"jump": {"target": "host_in"}}]] + [
            [_m(_p("udp", "dport"), 53), COUNTER] + to_tor,
            [_m(_p("tcp", "dport"), 53), COUNTER] + to_tor,
            # All other TCP goes to the TransPort; IPv6 carries DNS only.
            [_m(_p("ip", "protocol"), "tcp"), COUNTER] + to_tor,
            DROP_IN,
        ]
    if chain == "tor_out":
        # Only replies of connections Tor answered (marked from conntrack in inet post).
        return [[{"jump": {"target": "host_out"}}], [_mark_is(glob["marks"]["tor"])] + ACCEPT_OUT, DROP_OUT]
    raise ValueError(chain)


# --- one VM ----------------------------------------------------------------------


def _allow_matches(vm: dict, addr_field: str, port_field: str) -> list[list]:
    """One match list per (destination, protocol, port or range) of the allowlist."""
    out = []
    for e in vm.get("allow") or ():
        protos = {"tcp+udp": ["tcp", "udp"], "any": [None]}.get(e["proto"], [e["proto"]])
        for fam, key in (("ip", "dest4"), ("ip6", "dest6")):
            for net in e[key]:
                for proto in protos:
                    for port in (e["ports"] or [None]) if proto else [None]:
                        m = [_m(_p(fam, addr_field), _addr(net))]
                        if proto:
                            m.append(_m(_meta("l4proto"), proto))
                        if port is not None:
                            m.append(_m(_p(proto, port_field), _port(port)))
                        out.append(m)
    return out


def allowlist_rules(fam: str, vm: dict, glob: dict) -> tuple[list[list], list[list]]:
    """The two chains of an allowlist VM: (from the VM, to the VM)."""
    bit = glob["marks"]["reply"]
    rin = [[{"jump": {"target": "spoof"}}], [{"jump": {"target": "host_in"}}]]
    for head in _allow_matches(vm, "daddr", "dport"):
        rin.append(head + [COUNTER, _mark_or(bit)] + ACCEPT_IN)
    rin.append(DROP_IN)
    rout = [[{"jump": {"target": "host_out"}}], [_mark_is(bit)] + ACCEPT_OUT]
    # Bridged replies never meet the host's conntrack: match them statelessly.
    for head in _allow_matches(vm, "saddr", "sport"):
        rout.append(head + [COUNTER] + ACCEPT_OUT)
    rout.append(DROP_OUT)
    return rin, rout


def _elements(fam: str, iface: dict, counters: bool = True) -> list[tuple[str, object]]:
    """(set, element) pairs that describe one tap, except its profile membership."""
    tap = iface["tap"]
    out = [(GUARD, tap), ("mac", {"concat": [tap, iface["mac"]]})]
    out += [("src4", {"concat": [tap, a]}) for a in iface.get("ips4") or ()]
    out += [("src6", {"concat": [tap, a]}) for a in iface.get("ips6") or ()]
    if iface.get("ips4") or iface.get("ips6"):
        out.append(("declared", tap))
    if fam == "bridge" and iface.get("bridge_mac"):
        out.append(("brmac", [tap, iface["bridge_mac"]]))
    if counters:
        out += [(c, tap) for c in COUNTERS]
    return out


def _add_del(fam: str, name: str, elem) -> list[dict]:
    """Delete an element whether or not it exists: add (a no-op when present), then delete."""
    key = elem[0] if isinstance(elem, list) else elem
    return [_cmd("add", "element", {**_t(fam), "name": name, "elem": [elem]}),
            _cmd("delete", "element", {**_t(fam), "name": name, "elem": [key]})]


def _unallow(fam: str, tap: str) -> list[dict]:
    """Drop a tap's allowlist chains and map entries, whether or not they exist."""
    cmds = []
    chains = allow_chains(tap)
    for c in chains:
        cmds.append(_cmd("add", "chain", {**_t(fam), "name": c}))
    for m, c in zip((ALLOW_IN, ALLOW_OUT), chains):
        cmds += _add_del(fam, m, [tap, {"jump": {"target": c}}])
    for c in chains:
        cmds.append(_cmd("flush", "chain", {**_t(fam), "name": c}))
        cmds.append(_cmd("delete", "chain", {**_t(fam), "name": c}))
    return cmds


def vm_commands(vm: dict, glob: dict) -> list[dict]:
    """Register every tap of one VM: its facts into the sets, then its profile.
    Re-applying the same record is idempotent; to change a record, precede this
    with remove_commands(old record) in the same transaction."""
    cmds: list[dict] = []
    prof = vm["profile"]
    comment = f"{vm['uuid']} {vm['name']}"[:120]
    for iface in vm["interfaces"]:
        tap = iface["tap"]
        for fam in FAMILIES:
            for name, elem in _elements(fam, iface):
                cmds.append(_cmd("add", "element", {**_t(fam), "name": name, "elem": [elem]}))
            for p, s in PROFILE_SETS.items():
                if p != prof:
                    cmds += _add_del(fam, s, tap)
            if prof == "allowlist":
                cin, cout = allow_chains(tap)
                rin, rout = allowlist_rules(fam, vm, glob)
                for c, rules in ((cin, rin), (cout, rout)):
                    cmds.append(_cmd("add", "chain", {**_t(fam), "name": c}))
                    cmds.append(_cmd("flush", "chain", {**_t(fam), "name": c}))
                    for expr in rules:
                        cmds.append(_cmd("add", "rule", {**_t(fam), "chain": c, "expr": expr, "comment": comment}))
                cmds.append(_cmd("add", "element", {**_t(fam), "name": ALLOW_IN,
                                                    "elem": [[tap, {"jump": {"target": cin}}]]}))
                cmds.append(_cmd("add", "element", {**_t(fam), "name": ALLOW_OUT,
                                                    "elem": [[tap, {"jump": {"target": cout}}]]}))
            else:
                cmds.append(_cmd("add", "element", {**_t(fam), "name": PROFILE_SETS[prof], "elem": [tap]}))
    return cmds


def remove_commands(ifaces, counters: bool = True, guard: bool = True, allowlist: bool = True) -> list[dict]:
    """Unregister taps and delete every element the records name, idempotently.

    ifaces: interface records as in vm_state() (a bare tap name removes what
    needs no value: profile, allowlist chains, counters, guard). allowlist=False
    when the record says the VM had none: deleting chains makes the kernel wait
    for the previous transaction's rules to be freed, so skip it when we can."""
    cmds: list[dict] = []
    recs = [{"tap": i} if isinstance(i, str) else i for i in ifaces]
    for iface in sorted(recs, key=lambda r: r["tap"]):
        tap = iface["tap"]
        for fam in FAMILIES:
            for s in PROFILE_SETS.values():
                cmds += _add_del(fam, s, tap)
            if allowlist or "mac" not in iface:
                cmds += _unallow(fam, tap)
            elems = _elements(fam, iface, counters) if "mac" in iface else (
                [(c, tap) for c in COUNTERS] if counters else []) + [(GUARD, tap)]
            for name, elem in elems:
                # A custom tap name stays guarded: the domain may start again under
                # the same name, and vnet*/macvtap* need no entry.
                if name == GUARD and (not guard or not tap.startswith(("vnet", "macvtap"))):
                    continue
                cmds += _add_del(fam, name, elem)
    return cmds


def guard_commands(names) -> list[dict]:
    """Put custom tap names on the kill-switch list before the tap exists."""
    return [_cmd("add", "element", {**_t(fam), "name": GUARD, "elem": [n]})
            for fam in FAMILIES for n in sorted(names)]


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
