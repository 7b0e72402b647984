"""Rules about network interface types and models."""

from ..domain import INTERFACE_TYPES
from . import rule

# Types whose NIC model is fixed by the backend, not by <model>.
_FIXED_VIRTIO = {"vhostuser", "vdpa"}


def default_model(arch: str | None, machine: str | None) -> str:
    """The NIC model libvirt picks when <model> is absent (qemuDomainDefaultNetModel)."""
    arch = arch or "x86_64"
    machine = machine or ""
    if arch == "s390x":
        return "virtio"
    if arch in ("aarch64", "armv7l", "armv6l", "riscv32", "riscv64", "loongarch64") and machine.startswith("virt"):
        return "virtio"
    if arch.startswith("ppc64") and machine.startswith("pseries"):
        return "spapr-vlan"
    return "rtl8139"


def effective_model(domain, iface) -> tuple[str, bool]:
    """(model, implied): the model QEMU will emulate, and whether it was implied."""
    if iface.model is not None:
        return iface.model, False
    if iface.type in _FIXED_VIRTIO:
        return "virtio", True
    return default_model(domain.arch, domain.machine), True


@rule("QW101", "error", "interface type not allowed",
      "Use an allowed <interface type=...> (default policy: bridge, network, user).")
def check_type(domain, profile, ctx):
    """Each ``<interface type=...>`` must be in ``interfaces.allowed_types``.
    The types that bypass a host bridge (direct/macvtap, hostdev, vdpa,
    vhostuser, ethernet with its own scripts, socket types) are denied by the
    default policy. A type this version does not know is always denied."""
    allowed = set(profile.get("interfaces", "allowed_types", default=[]) or [])
    for i in domain.interfaces:
        if i.type not in INTERFACE_TYPES:
            yield (i.line, i.label, f"unknown interface type '{i.type}' is denied")
        elif i.type not in allowed:
            yield (i.line, i.label, f"interface type '{i.type}' is not allowed (allowed: {', '.join(sorted(allowed)) or 'none'})")


@rule("QW102", "error", "NIC model not allowed",
      "Add <model type='virtio'/> to the interface.")
def check_model(domain, profile, ctx):
    """The emulated NIC model must be in ``interfaces.allowed_models``,
    compared case-insensitively as libvirt does. An interface without
    ``<model>`` is judged by the model libvirt would pick for the domain's
    architecture and machine: rtl8139 on x86, virtio on aarch64/riscv
    ``virt`` and s390x. Passthrough NICs (type hostdev) have no model."""
    allowed = {m.lower() for m in profile.get("interfaces", "allowed_models", default=[]) or []}
    for i in domain.interfaces:
        if i.type == "hostdev":
            continue
        model, implied = effective_model(domain, i)
        if model not in allowed:
            why = f"no <model>, so libvirt picks '{model}' for {domain.arch or 'x86_64'}" if implied else f"model '{model}'"
            yield (i.line, i.label, f"{why} is not allowed (allowed: {', '.join(sorted(allowed)) or 'none'})")


@rule("QW109", "error", "ambiguous interface definition",
      "Give each of <source>, <model>, <mac>, <target>, <driver>, <backend> at most once per interface.")
def check_duplicates(domain, profile, ctx):
    """libvirt reads only the first ``<source>``, ``<mac>``, ``<model>``... of
    an interface. A second copy is never legitimate and is a classic way to
    show one value to a reviewer or tool and another to the hypervisor."""
    for i in domain.interfaces:
        if i.duplicated:
            yield (i.line, i.label, "repeated element(s): " + ", ".join(f"<{t}>" for t in i.duplicated))
