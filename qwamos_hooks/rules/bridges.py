"""Rules about where a NIC is plugged: host bridges and libvirt networks."""

from . import rule


@rule("QW110", "error", "bridge not allowed",
      "Attach the interface to an allowed bridge (default policy: virbr0, vmbr0, br0).")
def check_bridge(domain, profile, ctx):
    """A ``type='bridge'`` interface's ``<source bridge>`` must be in
    ``interfaces.allowed_bridges``, at every stage. A ``type='network'``
    interface is checked once libvirt has resolved its network to a bridge:
    the ``bridge=`` it fills in at start (hook stage start/begin and later).
    The ``bridge=`` attribute is ignored in XML written before start, where
    libvirt ignores it too."""
    allowed = set(profile.get("interfaces", "allowed_bridges", default=[]) or [])
    for i in domain.interfaces:
        if i.type == "bridge" and i.source_bridge is not None and i.source_bridge not in allowed:
            yield (i.line, i.label, f"bridge '{i.source_bridge}' is not allowed (allowed: {', '.join(sorted(allowed)) or 'none'})")
        elif i.type == "network" and ctx.live and i.resolved_bridge is not None and i.resolved_bridge not in allowed:
            yield (i.line, i.label,
                   f"network '{i.source_network}' resolved to bridge '{i.resolved_bridge}', which is not allowed "
                   f"(allowed: {', '.join(sorted(allowed)) or 'none'})")


@rule("QW111", "error", "bridge interface without a source bridge",
      "Add <source bridge='br0'/> naming an allowed bridge.")
def check_bridge_missing(domain, profile, ctx):
    """A ``type='bridge'`` interface must name its bridge. Without one there is
    nothing to check it against, so it fails closed."""
    for i in domain.interfaces:
        if i.type == "bridge" and not i.source_bridge:
            yield (i.line, i.label, "no <source bridge=...>")


@rule("QW112", "error", "libvirt network not allowed",
      "Use one of the networks in interfaces.allowed_networks.")
def check_network(domain, profile, ctx):
    """When ``interfaces.allowed_networks`` is a list, a ``type='network'``
    interface must name one of those networks. ``null`` allows any network;
    its bridge is still checked at start (QW110)."""
    allowed = profile.get("interfaces", "allowed_networks")
    if allowed is None:
        return
    for i in domain.interfaces:
        if i.type == "network" and i.source_network not in allowed:
            yield (i.line, i.label, f"network '{i.source_network}' is not allowed (allowed: {', '.join(sorted(allowed)) or 'none'})")


@rule("QW113", "error", "network did not resolve to a bridge",
      "Use a libvirt network that forwards through a Linux bridge (mode nat, route, open or bridge).")
def check_network_resolved(domain, profile, ctx):
    """At start, libvirt writes the bridge a ``type='network'`` interface was
    plugged into. A network that hands out macvtap or hostdev ports has no
    such bridge, so the bridge allow-list cannot vouch for it: it fails closed."""
    if not ctx.live:
        return
    for i in domain.interfaces:
        if i.type == "network" and not i.resolved_bridge:
            yield (i.line, i.label, f"network '{i.source_network}' did not resolve to a bridge at start")
