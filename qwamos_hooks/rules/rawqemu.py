"""Rules about raw hypervisor arguments that would get around the NIC checks.

``<qemu:commandline>`` and ``<qemu:override>`` reach QEMU without passing
through libvirt's device model, so a NIC added there is invisible to every
``<interface>`` rule. The namespace is matched by URI (see domain.py): the
prefix an author chose means nothing.
"""

from __future__ import annotations

import json
import re

from . import rule

# Options that create, rewire or expose network devices, or hand QEMU a second
# control channel (a monitor can hot-plug a NIC with netdev_add/device_add).
_ALWAYS_NET = {
    "netdev": "adds a network back end",
    "nic": "adds a NIC",
    "net": "adds a NIC or network back end",
    "readconfig": "loads a QEMU config file that may define network devices",
    "qmp": "opens a second QMP monitor that can hot-plug NICs",
    "qmp-pretty": "opens a second QMP monitor that can hot-plug NICs",
    "monitor": "opens a second monitor that can hot-plug NICs",
    "mon": "opens a second monitor that can hot-plug NICs",
    "redir": "forwards host ports (legacy user networking)",
    "tftp": "configures legacy user networking",
    "bootp": "configures legacy user networking",
    "smb": "configures legacy user networking",
}

# QEMU NIC device models, and properties only network devices take.
_NIC_DRIVER = re.compile(
    r"net|e1000|rtl8139|ne2k|pcnet|lance|am79c|i8255|i82801|vmxnet|igb|tulip|eepro100|e100\b|"
    r"spapr-vlan|lan9118|smc91c111|sungem|sunhme|ftgmac|fec|xgmac|cadence.gem|dp8393|emac|rocker|opencores.eth",
    re.I,
)
_NET_PROPS = {"netdev", "mac", "vhost", "vhostfd", "vhostfds", "fd", "fds", "tap", "ifname", "script", "downscript", "br", "helper"}
_NIC_ALIAS = re.compile(r"^(net|hostnet|hostdev|ua-net)[0-9a-z_-]*$", re.I)
_FILTER_OBJECT = re.compile(r"^(filter-|colo-compare)", re.I)
_CODE_ENV = re.compile(r"^LD_(PRELOAD|LIBRARY_PATH|AUDIT)$")


def _tokens(args):
    """(token, line) for every argument; an argument holding spaces is also
    split, because a reader that keeps it whole would miss '-netdev user'."""
    for value, line in args:
        parts = value.split()
        if len(parts) <= 1:
            yield value.strip(), line
        else:
            for p in parts:
                yield p, line


def _option(token: str):
    """'-netdev' / '--netdev' / '-netdev=VALUE' -> ('netdev', VALUE or None)."""
    if not token.startswith("-") or token in ("-", "--"):
        return None, None
    name = token[2:] if token.startswith("--") else token[1:]
    inline = None
    if "=" in name:
        name, inline = name.split("=", 1)
    return name.lower(), inline


def _device_is_nic(value: str) -> bool:
    value = value.strip()
    if value.startswith("{"):
        try:
            obj = json.loads(value)
        except ValueError:
            return True  # unparseable JSON device: cannot rule a NIC out
        if not isinstance(obj, dict):
            return True
        driver = str(obj.get("driver", ""))
        props = {k.lower() for k in obj}
    else:
        parts = value.split(",")
        driver = parts[0]
        props = set()
        for p in parts:
            k = p.split("=", 1)[0].strip().lower()
            props.add(k)
            if k == "driver" and "=" in p:
                driver = p.split("=", 1)[1]
    return bool(_NIC_DRIVER.search(driver)) or bool(props & _NET_PROPS)


def _global_is_nic(value: str) -> bool:
    """-global DRIVER.PROP=VALUE or -global driver=DRIVER,property=PROP,value=VALUE."""
    fields = dict(p.split("=", 1) for p in value.split(",") if "=" in p)
    if "driver" in fields:
        driver, prop = fields["driver"], fields.get("property", "")
    else:
        driver, _, rest = value.partition(".")
        prop = rest.split("=", 1)[0]
    return bool(_NIC_DRIVER.search(driver)) or prop.lower() in _NET_PROPS


def _object_is_filter(value: str) -> bool:
    value = value.strip()
    if value.startswith("{"):
        try:
            obj = json.loads(value)
            qom = str(obj.get("qom-type", "")) if isinstance(obj, dict) else ""
        except ValueError:
            return True
    else:
        first = value.split(",")[0]
        qom = first.split("=", 1)[1] if first.startswith("qom-type=") else first
    return bool(_FILTER_OBJECT.match(qom))


def _nic_aliases(domain) -> set[str]:
    return {i.alias for i in domain.interfaces if i.alias} | {h.alias for h in domain.hostdevs if h.alias}


def _is_nic_alias(alias: str, aliases: set[str]) -> bool:
    return alias in aliases or bool(_NIC_ALIAS.match(alias))


def network_args(domain, cl):
    """Yield (line, reason) for each argument of a commandline block that adds
    or changes a network device. Pure: used by the rule and by tests."""
    toks = list(_tokens(cl.args))
    aliases = _nic_aliases(domain)
    i = 0
    while i < len(toks):
        tok, line = toks[i]
        name, inline = _option(tok)
        if name is None:
            if cl.hypervisor != "qemu" and _NIC_DRIVER.search(tok):
                yield line, f"argument '{tok}' names a network device"
            i += 1
            continue
        value = inline
        consumed = 1
        if value is None and i + 1 < len(toks) and not toks[i + 1][0].startswith("-"):
            value = toks[i + 1][0]
            consumed = 2
        value = value or ""
        if name in _ALWAYS_NET:
            yield line, f"-{name} {_ALWAYS_NET[name]}"
        elif name == "device" and _device_is_nic(value):
            yield line, f"-device {value[:60]} is a network device"
        elif name == "global" and _global_is_nic(value):
            yield line, f"-global {value[:60]} changes a network device model's defaults"
        elif name == "set":
            group, _, rest = value.partition(".")
            dev_id, _, prop = rest.partition(".")
            prop = prop.split("=", 1)[0].lower()
            if group.lower() in ("netdev", "net", "nic") or _is_nic_alias(dev_id, aliases) or prop in _NET_PROPS:
                yield line, f"-set {value[:60]} changes a network device"
        elif name == "object" and _object_is_filter(value):
            yield line, f"-object {value[:60]} redirects or copies NIC traffic"
        elif name == "usbdevice" and value.lower().startswith("net"):
            yield line, "-usbdevice net adds a USB NIC"
        elif cl.hypervisor != "qemu" and _NIC_DRIVER.search(value):
            yield line, f"-{name} {value[:60]} names a network device"
        i += consumed


@rule("QW501", "error", "raw hypervisor arguments add or change a network device",
      "Declare the NIC as an <interface> instead, so the policy and the firewall see it.")
def check_commandline_network(domain, profile, ctx):
    """``<qemu:commandline>`` (in any namespace prefix, or as the default
    namespace) must not add or change a network device: ``-netdev``,
    ``-nic``, ``-net``, ``-device`` with a NIC driver or ``netdev=``/``mac=``,
    ``-set``/``-global`` on a NIC, traffic filters (``-object filter-*``),
    ``-readconfig``, and extra monitors (``-qmp``, ``-monitor``, ``-mon``)
    that could hot-plug one. Both ``-opt value`` and ``-opt=value`` forms,
    single or double dash, and arguments holding spaces are recognised. The
    same applies to ``<xen:commandline>`` and ``<bhyve:commandline>``.
    Other arguments and environment variables are left to QW502."""
    for cl in domain.commandlines:
        for line, reason in network_args(domain, cl):
            yield (line, f"{cl.hypervisor}:commandline", reason)


@rule("QW502", "error", "raw hypervisor arguments not allowed",
      "Remove the <qemu:commandline> block, or set raw_qemu.commandline: allow-non-network.")
def check_commandline_any(domain, profile, ctx):
    """With ``raw_qemu.commandline: deny``, any ``<qemu:commandline>`` (or
    xen/bhyve equivalent) is refused. With the default ``allow-non-network``,
    arguments that do not touch networking are allowed, but environment
    variables that load code into the emulator (``LD_PRELOAD``,
    ``LD_LIBRARY_PATH``, ``LD_AUDIT``) are still refused."""
    deny_all = profile.get("raw_qemu", "commandline") == "deny"
    for cl in domain.commandlines:
        if deny_all:
            yield (cl.line, f"{cl.hypervisor}:commandline", f"<{cl.hypervisor}:commandline> is not allowed by this profile")
            continue
        for name, _value, line in cl.env:
            if _CODE_ENV.match(name):
                yield (line, f"{cl.hypervisor}:env", f"environment variable {name} loads code into the emulator")


@rule("QW503", "error", "qemu:override rewrites a network device",
      "Remove the <qemu:override> for the NIC; set its properties on the <interface>.")
def check_override(domain, profile, ctx):
    """``<qemu:override><qemu:device alias=...>`` changes a device's QEMU
    properties after libvirt built it. Overriding a NIC (by an interface's
    alias, libvirt's ``netN``/``hostnetN``/``hostdevN`` aliases, or any
    device given a ``netdev``/``mac``/``vhost`` property) is refused unless
    ``raw_qemu.nic_override: allow``."""
    if profile.get("raw_qemu", "nic_override") == "allow":
        return
    aliases = _nic_aliases(domain)
    for ov in domain.overrides:
        props = {p.lower() for p in ov.properties}
        if _is_nic_alias(ov.alias, aliases) or props & _NET_PROPS:
            yield (ov.line, f"qemu:override {ov.alias}", f"override of device '{ov.alias}' ({', '.join(sorted(ov.properties)) or 'no properties'}) rewrites a NIC")


@rule("QW504", "error", "guest shares a host network namespace",
      "Remove <lxc:sharenet>; give the guest its own <interface>.")
def check_sharenet(domain, profile, ctx):
    """``<lxc:sharenet>`` makes the guest join a host network namespace: it
    has no ``<interface>`` at all, yet full network access. Refused unless
    ``raw_qemu.share_host_netns: allow``."""
    if profile.get("raw_qemu", "share_host_netns") == "allow":
        return
    for s in domain.sharenets:
        yield (s.line, "lxc:sharenet", f"joins host network namespace ({s.type} {s.value or ''})".rstrip())
