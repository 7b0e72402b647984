"""Rules about NIC MAC addresses."""

from . import rule

_HEX = frozenset("0123456789abcdef")


def _well_formed(mac: str) -> bool:
    """xx:xx:xx:xx:xx:xx in lower-case hex (the model lower-cases MACs)."""
    return (len(mac) == 17 and all(mac[i] == ":" for i in range(2, 17, 3))
            and all(mac[i] in _HEX for i in range(17) if i % 3 != 2))


@rule("QW103", "error", "static MAC address required",
      "Add <mac address='52:54:00:xx:xx:xx'/> so the firewall and anti-spoofing rules know it.")
def check_static(domain, profile, ctx):
    """With ``interfaces.mac.require_static``, every interface must carry an
    explicit ``<mac address>``. A generated MAC changes between definitions,
    which breaks per-VM firewall and anti-spoofing rules."""
    if not profile.get("interfaces", "mac", "require_static"):
        return
    for i in domain.interfaces:
        if i.mac is None:
            yield (i.line, i.label, "no static <mac address>")


@rule("QW104", "error", "malformed MAC address",
      "Write the MAC as six colon-separated hex pairs, e.g. 52:54:00:12:34:56.")
def check_format(domain, profile, ctx):
    """A MAC must be six colon-separated hexadecimal pairs. Other spellings
    libvirt may accept are refused so that every tool reads the same value."""
    for i in domain.interfaces:
        if i.mac is not None and not _well_formed(i.mac):
            yield (i.line, i.label, f"MAC '{i.mac}' is not in xx:xx:xx:xx:xx:xx form")


@rule("QW105", "error", "MAC prefix not allowed",
      "Use a MAC under an allowed prefix (default policy: 52:54:00 or 02:00:00).")
def check_prefix(domain, profile, ctx):
    """The MAC must start with one of ``interfaces.mac.allowed_prefixes``
    (compared case-insensitively). This keeps guests out of vendor OUIs that
    upstream switches or DHCP servers may trust."""
    prefixes = [p.lower() for p in profile.get("interfaces", "mac", "allowed_prefixes", default=[]) or []]
    for i in domain.interfaces:
        if i.mac is None or not _well_formed(i.mac):
            continue
        if not any(i.mac.startswith(p) for p in prefixes):
            yield (i.line, i.label, f"MAC {i.mac} is not under an allowed prefix ({', '.join(prefixes) or 'none'})")


@rule("QW106", "error", "multicast MAC address",
      "Clear the I/G bit: the first octet of a NIC's MAC must be even.")
def check_unicast(domain, profile, ctx):
    """A NIC's own address must be unicast (the least significant bit of the
    first octet clear). A multicast source MAC is invalid on Ethernet and
    confuses bridges' learning."""
    if not profile.get("interfaces", "mac", "require_unicast"):
        return
    for i in domain.interfaces:
        if i.mac and _well_formed(i.mac) and int(i.mac[:2], 16) & 1:
            yield (i.line, i.label, f"MAC {i.mac} is a multicast address")


@rule("QW107", "error", "duplicate MAC address in the domain",
      "Give each interface its own MAC.")
def check_unique(domain, profile, ctx):
    """With ``interfaces.mac.unique``, no MAC may repeat within one domain:
    two NICs with one MAC defeat per-interface anti-spoofing."""
    if not profile.get("interfaces", "mac", "unique"):
        return
    seen = {}
    for i in domain.interfaces:
        if i.mac is None:
            continue
        if i.mac in seen:
            yield (i.line, i.label, f"MAC {i.mac} is also used by {seen[i.mac]}")
        else:
            seen[i.mac] = i.label
