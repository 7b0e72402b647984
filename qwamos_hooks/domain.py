"""Domain XML -> typed, immutable model.

Parsed once, safely: no DTD, no entities, no network, a size cap. The model
is NamedTuples rather than dataclasses: they are immutable too, and a dozen
dataclasses cost the hook ~6 ms of start-up at every VM event. Namespaced
elements are matched by URI, never by prefix. Every object keeps the line of
the element it came from, so findings can point at it.

Where libvirt would read only the first of several same-named children
(``virXPathNode``), the model does the same and also records the ambiguity, so
a rule can refuse a document that two readers could understand differently.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import InputError, NotADomain

MAX_BYTES = 10 * 1024 * 1024

NS_QEMU = "http://libvirt.org/schemas/domain/qemu/1.0"
NS_XEN = "http://libvirt.org/schemas/domain/xen/1.0"
NS_BHYVE = "http://libvirt.org/schemas/domain/bhyve/1.0"
NS_LXC = "http://libvirt.org/schemas/domain/lxc/1.0"
NS_QWAMOS = "urn:qwamos:hooks:1"

# Namespaces whose <commandline> hands raw arguments to the emulator.
COMMANDLINE_NAMESPACES = {NS_QEMU: "qemu", NS_XEN: "xen", NS_BHYVE: "bhyve"}

INTERFACE_TYPES = frozenset(
    "bridge network direct user ethernet vhostuser hostdev vdpa server client "
    "mcast udp null vds".split()
)

_parser = None


def parser():
    """The one lxml parser every front end uses: no entities, no DTD, no
    network. lxml is imported here, not at module level: importing it is
    about half of a hook's run, and a cached parse (see to_plain) skips it."""
    global _parser
    if _parser is None:
        from lxml import etree

        _parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
        )
    return _parser



class Interface(NamedTuple):
    index: int  # position among the domain's interfaces (net0, net1, ... at start)
    line: int
    type: str
    model: str | None  # lower-cased, as libvirt compares models
    mac: str | None  # lower-cased
    source_bridge: str | None
    source_network: str | None
    source_portgroup: str | None
    source_dev: str | None
    resolved_bridge: str | None  # bridge= that libvirt fills in for type='network' at start
    target_dev: str | None
    target_managed: str | None
    driver_name: str | None
    backend_vhost: str | None
    backend_tap: str | None
    backend_type: str | None
    alias: str | None
    virtualport_type: str | None
    ips: tuple[str, ...]  # <ip address=...> declared on the interface
    duplicated: tuple[str, ...]  # child elements given more than once (ambiguous)

    @property
    def label(self) -> str:
        """How a finding names this NIC: alias or tap if known, else its position."""
        name = self.alias or self.target_dev
        if name:
            return f"interface {name} ({self.type}{', ' + self.mac if self.mac else ''})"
        if self.mac:
            return f"interface {self.mac} ({self.type})"
        return f"interface #{self.index + 1} ({self.type})"


class Hostdev(NamedTuple):
    line: int
    mode: str | None
    type: str | None
    managed: str | None
    alias: str | None
    address: str | None  # pci domain:bus:slot.function when given
    teaming: str | None  # 'transient' when it is the VF of a failover pair


class CommandLine(NamedTuple):
    """A raw-argument block: <qemu:commandline>, <xen:commandline>, <bhyve:commandline>."""

    line: int
    hypervisor: str  # qemu | xen | bhyve
    args: tuple[tuple[str, int], ...]  # (value, line)
    env: tuple[tuple[str, str, int], ...]  # (name, value, line)


class Override(NamedTuple):
    """<qemu:override><qemu:device alias=...>: rewrites a device's properties."""

    line: int
    alias: str
    properties: tuple[str, ...]  # frontend property names


class ShareNet(NamedTuple):
    """<lxc:sharenet>: the guest joins a host network namespace."""

    line: int
    type: str | None
    value: str | None


class HostSocket(NamedTuple):
    """A guest device whose back end is a host network socket (serial, channel,
    console, parallel, USB redirection, smartcard, RNG over tcp/udp)."""

    line: int
    device: str  # element name: serial, channel, redirdev, ...
    type: str  # tcp | udp
    endpoint: str | None  # host:service of the first <source>


class Graphics(NamedTuple):
    line: int
    type: str | None
    listen: tuple[str, ...]  # addresses it listens on ('' = hypervisor default)


class Waiver(NamedTuple):
    line: int
    rule: str
    reason: str | None
    expires: str | None


class Metadata(NamedTuple):
    """Our element inside <metadata>: <qwamos:vm profile='...'>."""

    line: int
    profile: str | None
    waivers: tuple[Waiver, ...] = ()


class Domain(NamedTuple):
    source: str  # file name or '<stdin>'
    line: int
    type: str | None
    name: str | None
    uuid: str | None
    arch: str | None
    machine: str | None
    memory_kib: int | None
    max_memory_kib: int | None
    hard_limit_kib: int | None
    vcpus: int | None
    kernel: str | None
    initrd: str | None
    loader: str | None
    interfaces: tuple[Interface, ...]
    hostdevs: tuple[Hostdev, ...]
    iommu: bool
    commandlines: tuple[CommandLine, ...]
    overrides: tuple[Override, ...]
    sharenets: tuple[ShareNet, ...]
    host_sockets: tuple[HostSocket, ...]
    graphics: tuple[Graphics, ...]
    shmems: tuple[tuple[str, int], ...]  # (name, line) of <shmem> regions
    qemu_capabilities: tuple[tuple[str, str, int], ...]  # (add|del, capability, line)
    metadata: Metadata | None
    lines: dict  # element name -> line, for findings about whole-domain settings


# --- parsing -----------------------------------------------------------------


def parse_bytes(data: bytes, source: str = "<stdin>") -> Domain:
    if len(data) > MAX_BYTES:
        raise InputError(f"{source}: input is larger than {MAX_BYTES // (1024 * 1024)} MiB")
    if not data.strip():
        raise InputError(f"{source}: empty input, expected domain XML")
    # libvirt never writes a DOCTYPE; any DTD is hostile here (XXE, billion laughs).
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise InputError(f"{source}: DOCTYPE/ENTITY declarations are refused in domain XML")
    from lxml import etree

    try:
        root = etree.fromstring(data, parser())
    except etree.XMLSyntaxError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else "malformed XML"
        raise InputError(f"{source}: not well-formed XML: {msg}") from None
    except ValueError as exc:  # e.g. encoding declarations lxml refuses
        raise InputError(f"{source}: unreadable XML: {exc}") from None
    if root is None:
        raise InputError(f"{source}: empty document")
    if root.getroottree().docinfo.doctype:
        raise InputError(f"{source}: DOCTYPE declarations are refused in domain XML")
    # libvirt matches the root by local name only: <x:domain xmlns:x='...'> is a domain.
    if _local(root.tag) != "domain":
        raise NotADomain(f"{source}: root element is <{_local(root.tag)}>, expected <domain>")
    return _domain(root, source)


def identity_only(data: bytes, source: str = "<stdin>") -> Domain | None:
    """Name and UUID from XML too large or broken to parse, for clean-up stages
    only: state is recorded by UUID, and libvirt writes <name> and <uuid>
    first, so a bounded scan of the head finds them."""
    import re

    head = data[:65536].decode("utf-8", "replace")
    uuid = re.search(r"<uuid>\s*([0-9A-Fa-f-]{32,36})\s*</uuid>", head)
    name = re.search(r"<name>([^<]*)</name>", head)
    if not uuid:
        return None
    fields = dict.fromkeys(Domain._fields)  # scalars unknown: None; collections empty
    fields.update(source=source, line=0, name=name.group(1) if name else None, uuid=uuid.group(1).lower(),
                  iommu=False, lines={},
                  **{f: () for f, t in Domain.__annotations__.items()
                     if getattr(t, "__forward_arg__", str(t)).startswith("tuple")})
    return Domain(**fields)


# --- a parse as plain data (for the hook's parse cache) ----------------------
# marshal, not pickle: loading the cache can build tuples and dicts, never run
# code. A NamedTuple becomes ("\0nt", class name, fields); XML text cannot hold
# a NUL, so no real value is mistaken for the marker.
_NT = "\0nt"


def to_plain(x):
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return (_NT, type(x).__name__, tuple(to_plain(v) for v in x))
    if isinstance(x, tuple):
        return tuple(to_plain(v) for v in x)
    if isinstance(x, dict):
        return {k: to_plain(v) for k, v in x.items()}
    return x


def from_plain(x):
    if isinstance(x, tuple):
        if len(x) == 3 and x[0] == _NT:
            return _MODEL[x[1]](*(from_plain(v) for v in x[2]))
        return tuple(from_plain(v) for v in x)
    if isinstance(x, dict):
        return {k: from_plain(v) for k, v in x.items()}
    return x


def parse_file(path: str) -> Domain:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_bytes(data, path)


def _attr(el, name: str, default=None):
    """An attribute as libvirt reads it: xmlGetProp() ignores namespaces and
    returns the first attribute with that local name, so <mac x:address='..'
    address='..'> means the x: one to libvirt and must mean it here too."""
    if el is None:
        return default
    suffix = "}" + name
    for key, value in el.attrib.items():
        if key == name or key.endswith(suffix):
            return value
    return default


def _local(tag) -> str:
    if not isinstance(tag, str):
        return "?"
    return tag.rsplit("}", 1)[-1]


def _text(el) -> str | None:
    if el is None or el.text is None:
        return None
    return el.text.strip()


def _int(el) -> int | None:
    t = _text(el)
    if t is None:
        return None
    try:
        return int(t)
    except ValueError:
        return None


_UNIT = {
    "b": 1, "bytes": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
    "p": 1024**5, "pib": 1024**5, "pb": 1000**5,
    "e": 1024**6, "eib": 1024**6, "eb": 1000**6,
}
UNREADABLE = -1  # a size element that is present but cannot be read: rules fail closed


def _kib(el) -> int | None:
    """A libvirt scaled integer in KiB (unit attribute, default KiB)."""
    if el is None:
        return None
    n = _int(el)
    mult = _UNIT.get((_attr(el, "unit") or "KiB").lower())
    if n is None or mult is None or n < 0:
        return UNREADABLE
    return n * mult // 1024


def _first(parent, tag):
    return parent.find(tag) if parent is not None else None


def _interface(idx: int, el) -> Interface:
    counts: dict[str, int] = {}
    for child in el:
        if isinstance(child.tag, str):
            counts[child.tag] = counts.get(child.tag, 0) + 1
    dup = tuple(sorted(t for t, n in counts.items() if n > 1 and t in _SINGLE_CHILDREN))
    src = el.find("source")
    model = el.find("model")
    mac = el.find("mac")
    target = el.find("target")
    driver = el.find("driver")
    backend = el.find("backend")
    alias = el.find("alias")
    vport = el.find("virtualport")
    ips = tuple(_attr(ip, "address", "") for ip in el.findall("ip"))
    g = _attr
    mtype = g(model, "type")
    maddr = g(mac, "address")
    return Interface(
        index=idx,
        line=el.sourceline or 0,
        type=_attr(el, "type", ""),
        model=mtype.lower() if mtype is not None else None,
        mac=maddr.lower() if maddr is not None else None,
        source_bridge=g(src, "bridge") if _attr(el, "type") == "bridge" else None,
        source_network=g(src, "network"),
        source_portgroup=g(src, "portgroup"),
        source_dev=g(src, "dev"),
        resolved_bridge=g(src, "bridge") if _attr(el, "type") == "network" else None,
        target_dev=g(target, "dev"),
        target_managed=g(target, "managed"),
        driver_name=g(driver, "name"),
        backend_vhost=g(backend, "vhost"),
        backend_tap=g(backend, "tap"),
        backend_type=g(backend, "type"),
        alias=g(alias, "name"),
        virtualport_type=g(vport, "type"),
        ips=ips,
        duplicated=dup,
    )


# Children libvirt reads once per interface; a second copy means two readers may disagree.
_SINGLE_CHILDREN = frozenset(
    "source model mac target driver backend alias virtualport script link".split()
)


def _hostdev(el) -> Hostdev:
    addr = None
    src = el.find("source")
    a = src.find("address") if src is not None else None
    if a is not None and _attr(el, "type") == "pci":
        addr = "{}:{}:{}.{}".format(
            _attr(a, "domain", "0x0000"), _attr(a, "bus", "?"), _attr(a, "slot", "?"), _attr(a, "function", "?")
        )
    team = el.find("teaming")
    alias = el.find("alias")
    return Hostdev(
        line=el.sourceline or 0,
        mode=_attr(el, "mode"),
        type=_attr(el, "type"),
        managed=_attr(el, "managed"),
        alias=_attr(alias, "name") if alias is not None else None,
        address=addr,
        teaming=_attr(team, "type") if team is not None else None,
    )


def _commandlines(root) -> tuple[CommandLine, ...]:
    out = []
    for uri, hv in COMMANDLINE_NAMESPACES.items():
        # Any depth: libvirt reads only direct children, but a stray copy
        # elsewhere is refused by the same rule rather than ignored.
        for cl in root.iter(f"{{{uri}}}commandline"):
            args = tuple(
                (_attr(a, "value", ""), a.sourceline or 0) for a in cl.iter(f"{{{uri}}}arg")
            )
            env = tuple(
                (_attr(e, "name", ""), _attr(e, "value", ""), e.sourceline or 0)
                for e in cl.iter(f"{{{uri}}}env")
            )
            out.append(CommandLine(cl.sourceline or 0, hv, args, env))
    return tuple(out)


def _overrides(root) -> tuple[Override, ...]:
    out = []
    for dev in root.iter(f"{{{NS_QEMU}}}device"):
        props = tuple(
            _attr(p, "name", "")
            for p in dev.iter(f"{{{NS_QEMU}}}property")
        )
        out.append(Override(dev.sourceline or 0, _attr(dev, "alias", ""), props))
    return tuple(out)


_SOCKET_DEVICES = ("serial", "parallel", "channel", "console", "redirdev", "smartcard")


def _host_sockets(root) -> tuple[HostSocket, ...]:
    out = []
    candidates = [el for tag in _SOCKET_DEVICES for el in root.findall(f"devices/{tag}")]
    candidates += root.findall("devices/rng/backend")
    for el in candidates:
        kind = _attr(el, "type")
        if kind in ("tcp", "udp"):
            src = el.find("source")
            endpoint = f"{_attr(src, 'host', '')}:{_attr(src, 'service', '')}" if src is not None else None
            tag = "rng" if el.tag == "backend" else el.tag
            out.append(HostSocket(el.sourceline or 0, tag, kind, endpoint))
    return tuple(sorted(out))


def _graphics(root) -> tuple[Graphics, ...]:
    out = []
    for el in root.findall("devices/graphics"):
        addrs = [_attr(el, "listen")] if _attr(el, "listen") is not None else []
        for ls in el.findall("listen"):
            if _attr(ls, "type") in ("address", None):
                addrs.append(_attr(ls, "address", ""))
        out.append(Graphics(el.sourceline or 0, _attr(el, "type"), tuple(addrs)))
    return tuple(out)


def _qemu_capabilities(root) -> tuple[tuple[str, str, int], ...]:
    out = []
    for caps in root.iter(f"{{{NS_QEMU}}}capabilities"):
        for el in caps:
            if isinstance(el.tag, str) and el.tag in (f"{{{NS_QEMU}}}add", f"{{{NS_QEMU}}}del"):
                out.append((_local(el.tag), _attr(el, "capability", ""), el.sourceline or 0))
    return tuple(out)


def _metadata(root) -> Metadata | None:
    md = root.find("metadata")
    if md is None:
        return None
    vm = md.find(f"{{{NS_QWAMOS}}}vm")
    if vm is None:
        return None
    profile = _attr(vm, "profile")
    if profile is None:
        p = vm.find(f"{{{NS_QWAMOS}}}profile")
        profile = _text(p)
    waivers = tuple(
        Waiver(w.sourceline or 0, _attr(w, "rule", ""), _attr(w, "reason"), _attr(w, "expires"))
        for w in vm.iter(f"{{{NS_QWAMOS}}}waive")
    )
    return Metadata(vm.sourceline or 0, profile, waivers)


def _domain(root, source: str) -> Domain:
    os_el = root.find("os")
    ostype = _first(os_el, "type")
    memtune = root.find("memtune")
    vcpu = root.find("vcpu")
    ifaces = tuple(_interface(i, el) for i, el in enumerate(root.findall("devices/interface")))
    hostdevs = tuple(_hostdev(el) for el in root.findall("devices/hostdev"))
    sharenets = tuple(
        ShareNet(el.sourceline or 0, _attr(el, "type"), _attr(el, "value"))
        for el in root.iter(f"{{{NS_LXC}}}sharenet")
    )
    max_mem = root.find("maxMemory")
    loader = _first(os_el, "loader")
    lines = {}
    for tag in ("memory", "maxMemory", "vcpu", "memtune", "os"):
        el = root.find(tag)
        if el is not None:
            lines[tag] = el.sourceline or 0
    devices = root.find("devices")
    if devices is not None:
        lines["devices"] = devices.sourceline or 0
    name_el = root.find("name")
    # Not stripped: libvirt accepts ' vm ' as a name and passes it verbatim in argv.
    name = name_el.text if name_el is not None else None
    return Domain(
        source=source,
        line=root.sourceline or 0,
        type=_attr(root, "type"),
        name=name,
        uuid=(_text(root.find("uuid")) or "").lower() or None,
        arch=_attr(ostype, "arch") if ostype is not None else None,
        machine=_attr(ostype, "machine") if ostype is not None else None,
        memory_kib=_kib(root.find("memory")),
        max_memory_kib=_kib(max_mem),
        hard_limit_kib=_kib(_first(memtune, "hard_limit")),
        vcpus=_int(vcpu),
        kernel=_text(_first(os_el, "kernel")),
        initrd=_text(_first(os_el, "initrd")),
        loader=_text(loader),
        interfaces=ifaces,
        hostdevs=hostdevs,
        iommu=root.find("devices/iommu") is not None,
        commandlines=_commandlines(root),
        overrides=_overrides(root),
        sharenets=sharenets,
        host_sockets=_host_sockets(root),
        graphics=_graphics(root),
        shmems=tuple((_attr(el, "name", ""), el.sourceline or 0) for el in root.findall("devices/shmem")),
        qemu_capabilities=_qemu_capabilities(root),
        metadata=_metadata(root),
        lines=lines,
    )


_MODEL = {c.__name__: c for c in (Interface, Hostdev, CommandLine, Override, ShareNet, HostSocket,
                                  Graphics, Waiver, Metadata, Domain)}
