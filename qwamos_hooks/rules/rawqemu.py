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

class _Lazy:
    """A regex compiled on first use: most domains carry no raw arguments, and
    the hook should not compile these at every VM start."""

    def __init__(self, pattern: str, flags: int = 0):
        self._args = (pattern, flags)
        self._re = None

    def __getattr__(self, name):
        if self._re is None:
            self._re = re.compile(*self._args)
        return getattr(self._re, name)


# QEMU NIC device models, and properties only network devices take.
_NIC_DRIVER = _Lazy(
    r"net|e1000|rtl8139|ne2k|pcnet|lance|am79c|i8255|i82801|vmxnet|igb|tulip|eepro100|e100\b|"
    r"spapr-vlan|lan9118|smc91c111|sungem|sunhme|ftgmac|fec|xgmac|cadence.gem|dp8393|emac|rocker|opencores.eth",
    re.I,
)
_NET_PROPS = {"netdev", "mac", "vhost", "vhostfd", "vhostfds", "fd", "fds", "tap", "ifname", "script", "downscript", "br", "helper"}
_NIC_ALIAS = _Lazy(r"^(net|hostnet|hostdev|ua-net)[0-9a-z_-]*$", re.I)
_FILTER_OBJECT = _Lazy(r"^(filter-|colo-compare)", re.I)
# Environment that makes the emulator load code it was not built with.
_CODE_ENV = _Lazy(r"^(LD_[A-Z_]+|GCONV_PATH|GIO_EXTRA_MODULES|GIO_MODULE_DIR|GST_PLUGIN_[A-Z_]+|SASL_PATH|"
                       r"GDK_PIXBUF_MODULE_FILE|GTK_PATH|QEMU_MODULE_DIR|MALLOC_[A-Z_]+)$")
# Character back ends that reach a network socket or multiplex a monitor.
_NET_CHARDEV = _Lazy(r"^(tcp|udp|telnet|tn3270|websocket|mon):", re.I)
_CHARDEV_OPTS = ("serial", "parallel", "debugcon", "virtioconsole", "qmp", "qmp-pretty")


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


def _device(value: str):
    """-device VALUE -> (driver, property names); None when it cannot be read."""
    value = value.strip()
    if value.startswith("{"):
        try:
            obj = json.loads(value)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        return str(obj.get("driver", "")), {k.lower() for k in obj}
    parts = value.split(",")
    driver = parts[0]
    props = set()
    for p in parts:
        k = p.split("=", 1)[0].strip().lower()
        props.add(k)
        if k == "driver" and "=" in p:
            driver = p.split("=", 1)[1]
    return driver, props


def _device_problem(value: str) -> str | None:
    dev = _device(value)
    if dev is None:
        return "is not readable, so a NIC cannot be ruled out"
    driver, props = dev
    low = driver.lower()
    if low.startswith("vfio"):
        return "passes a host device through (VFIO), bypassing the passthrough rules"
    if low.startswith("ivshmem"):
        return "shares memory with other VMs"
    if _NIC_DRIVER.search(driver) or props & _NET_PROPS:
        return "is a network device"
    return None


def _chardev_is_network(value: str) -> bool:
    """-chardev BACKEND,... : a socket with host=/port= or any udp back end."""
    parts = value.split(",")
    backend = parts[0].lower()
    keys = {p.split("=", 1)[0].lower() for p in parts[1:]}
    if backend.startswith("backend="):
        backend = backend.split("=", 1)[1]
    return backend in ("udp", "tcp") or (backend == "socket" and bool(keys & {"host", "port", "to", "ipv4", "ipv6"}))


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
        elif name == "device" and _device_problem(value):
            yield line, f"-device {value[:60]} {_device_problem(value)}"
        elif name == "chardev" and _chardev_is_network(value):
            yield line, f"-chardev {value[:60]} connects a guest device to a host network socket"
        elif name in _CHARDEV_OPTS and _NET_CHARDEV.match(value):
            yield line, f"-{name} {value[:60]} opens a network socket or a monitor"
        elif name in ("gdb", "s"):
            yield line, f"-{name} opens a debugger stub with full control of the guest"
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
    ``-readconfig``, extra monitors (``-qmp``, ``-monitor``, ``-mon``, or
    ``mon:`` on a serial port) that could hot-plug one, character devices on
    a network socket (``-chardev socket,host=``, ``-serial tcp:``), the
    gdb stub, and devices that bypass the passthrough and shared-memory rules
    (``-device vfio-pci``, ``-device ivshmem-*``). Both ``-opt value`` and ``-opt=value`` forms,
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
    arguments that do not touch networking are allowed, but what loads code
    into the emulator or strips its hardening is still refused: ``-plugin``,
    ``-sandbox off``, and environment variables such as ``LD_PRELOAD``,
    ``LD_LIBRARY_PATH``, ``GCONV_PATH`` or ``GIO_EXTRA_MODULES``."""
    deny_all = profile.get("raw_qemu", "commandline") == "deny"
    for cl in domain.commandlines:
        if deny_all:
            yield (cl.line, f"{cl.hypervisor}:commandline", f"<{cl.hypervisor}:commandline> is not allowed by this profile")
            continue
        for name, _value, line in cl.env:
            if _CODE_ENV.match(name):
                yield (line, f"{cl.hypervisor}:env", f"environment variable {name} loads code into the emulator")
        toks = list(_tokens(cl.args))
        for i, (tok, line) in enumerate(toks):
            opt, inline = _option(tok)
            value = inline if inline is not None else (toks[i + 1][0] if i + 1 < len(toks) else "")
            if opt == "plugin":
                yield (line, f"{cl.hypervisor}:commandline", "-plugin loads a shared object into the emulator")
            elif opt == "sandbox" and value.split(",")[0].lower() in ("off", "false", "no"):
                yield (line, f"{cl.hypervisor}:commandline", "-sandbox off disables the emulator's seccomp filter")


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


@rule("QW505", "error", "qemu:capabilities changes what QEMU is told to use",
      "Remove <qemu:capabilities>; it is a testing aid that libvirt does not support in production.")
def check_capabilities(domain, profile, ctx):
    """``<qemu:capabilities><qemu:del capability='...'/>`` makes libvirt
    believe QEMU lacks a feature, and ``<qemu:add>`` that it has one. Deleting
    ``seccomp-sandbox`` drops QEMU's ``-sandbox`` hardening; others change
    how devices are built. Refused unless ``raw_qemu.capabilities: allow``."""
    if profile.get("raw_qemu", "capabilities") == "allow":
        return
    for op, cap, line in domain.qemu_capabilities:
        yield (line, "qemu:capabilities", f"<qemu:{op} capability='{cap}'> overrides QEMU's capability probe")
