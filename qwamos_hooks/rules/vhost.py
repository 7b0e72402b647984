"""Rules about the vhost-net data path."""

from . import rule


@rule("QW120", "error", "vhost-net required",
      "Add <driver name='vhost'/> to the interface.")
def check_vhost(domain, profile, ctx):
    """With ``interfaces.require_vhost``, bridge and network interfaces must
    ask for the in-kernel vhost-net back end with ``<driver name='vhost'/>``:
    it keeps the packet path out of the QEMU process. ``name='qemu'`` (user
    space virtio) or no ``<driver>`` fails. A ``<backend vhost=...>`` that
    points vhost at another file than /dev/vhost-net is also refused."""
    if not profile.get("interfaces", "require_vhost"):
        return
    for i in domain.interfaces:
        if i.type not in ("bridge", "network"):
            continue
        if i.driver_name != "vhost":
            got = f"<driver name='{i.driver_name}'>" if i.driver_name else "no <driver name>"
            yield (i.line, i.label, f"vhost-net not requested ({got})")
        elif i.backend_vhost is not None and i.backend_vhost != "/dev/vhost-net":
            yield (i.line, i.label, f"<backend vhost='{i.backend_vhost}'> replaces /dev/vhost-net")
