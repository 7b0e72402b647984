"""Rules about the vhost-net data path."""

from . import rule
from .interfaces import effective_model


@rule("QW120", "error", "vhost-net required",
      "Add <driver name='vhost'/> to the interface.")
def check_vhost(domain, profile, ctx):
    """With ``interfaces.require_vhost``, bridge and network interfaces must
    ask for the in-kernel vhost-net back end with ``<driver name='vhost'/>``:
    it keeps the packet path out of the QEMU process. ``name='qemu'`` (user
    space virtio) or no ``<driver>`` fails. vhost-net exists only for virtio
    NICs, so a profile that allows another model (say e1000) is not asked
    for it there: libvirt drops ``<driver name='vhost'/>`` from such NICs. A ``<backend vhost=...>`` that
    points vhost at another file than /dev/vhost-net is also refused."""
    if not profile.get("interfaces", "require_vhost"):
        return
    for i in domain.interfaces:
        if i.type not in ("bridge", "network"):
            continue
        if not effective_model(domain, i)[0].startswith("virtio"):
            continue  # vhost-net serves virtio only (libvirt drops the driver line otherwise); QW102 judges the model
        if i.driver_name != "vhost":
            got = f"<driver name='{i.driver_name}'>" if i.driver_name else "no <driver name>"
            yield (i.line, i.label, f"vhost-net not requested ({got})")
        elif i.backend_vhost is not None and i.backend_vhost != "/dev/vhost-net":
            yield (i.line, i.label, f"<backend vhost='{i.backend_vhost}'> replaces /dev/vhost-net")
