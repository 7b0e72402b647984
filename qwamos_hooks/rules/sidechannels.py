"""Rules about guest devices that reach outside the VM without being a NIC.

A serial port, virtio-serial channel, USB redirection, smartcard or RNG whose
back end is a host TCP/UDP socket gives the guest a network path (PPP over a
serial line, a remote usbredir server exporting a USB NIC) that no tap,
bridge or nft rule ever sees. Shared memory joins VMs directly.
"""

from . import rule

_LOOPBACK = ("127.", "::1", "localhost", "0:0:0:0:0:0:0:1")


@rule("QW130", "error", "guest device backed by a host network socket",
      "Use type='pty' or type='unix' for the device, or set devices.network_chardevs: allow.")
def check_host_sockets(domain, profile, ctx):
    """``<serial>``, ``<parallel>``, ``<channel>``, ``<console>``,
    ``<redirdev>``, ``<smartcard>`` and ``<rng><backend model='egd'>`` of
    ``type='tcp'`` or ``type='udp'`` make QEMU connect to, or listen on, a
    host network socket and pipe it into the guest. That is a network path
    outside every NIC control (with PPP over a serial port, or a USB NIC
    exported by a remote usbredir server), so it is refused unless
    ``devices.network_chardevs: allow``. ``pty`` and ``unix`` back ends are
    not network paths and are allowed."""
    if profile.get("devices", "network_chardevs") == "allow":
        return
    for s in domain.host_sockets:
        yield (s.line, f"{s.device} ({s.type})",
               f"<{s.device} type='{s.type}'> connects the guest to host socket {s.endpoint or '(unspecified)'}")


@rule("QW131", "warning", "graphics console listens beyond loopback",
      "Set listen='127.0.0.1' (or a unix socket) and reach the console through SSH or virt-viewer.")
def check_graphics_listen(domain, profile, ctx):
    """A VNC or SPICE console listening on a non-loopback address exposes the
    VM's screen and keyboard to the network. With ``devices.graphics_listen:
    loopback`` (the default) that is a warning; ``any`` turns it off. An
    empty listen address means the hypervisor default (loopback unless
    qemu.conf says otherwise) and is accepted."""
    if profile.get("devices", "graphics_listen") == "any":
        return
    for g in domain.graphics:
        for addr in g.listen:
            if addr and not addr.startswith(_LOOPBACK):
                yield (g.line, f"graphics {g.type}", f"{g.type} console listens on {addr}")


@rule("QW132", "error", "memory shared with other VMs",
      "Remove the <shmem> device, or set devices.shmem: allow.")
def check_shmem(domain, profile, ctx):
    """Every VM that names the same ``<shmem>`` region maps the same host
    memory: a channel between VMs (say, an isolated vault and a networked
    VM) outside every network control. Refused unless ``devices.shmem:
    allow``."""
    if profile.get("devices", "shmem") == "allow":
        return
    for name, line in domain.shmems:
        yield (line, f"shmem {name}", f"<shmem name='{name}'> shares memory with any VM that names it")
