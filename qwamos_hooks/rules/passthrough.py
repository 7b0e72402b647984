"""Rules about host devices handed to the guest."""

from . import rule


def _pci_devices(domain):
    """Everything that gives the guest a host PCI function: <hostdev type='pci'>
    (including the VF half of a failover pair) and <interface type='hostdev'>."""
    for h in domain.hostdevs:
        if h.type == "pci":
            what = f"hostdev pci {h.address}" if h.address else "hostdev pci"
            if h.teaming == "transient":
                what += " (failover VF: a NIC outside <interface>)"
            yield h.line, what
        elif h.mode == "capabilities" and h.type == "net":
            yield h.line, "hostdev capabilities net (a host NIC moved into the guest)"
    for i in domain.interfaces:
        if i.type == "hostdev":
            yield i.line, i.label + " (SR-IOV VF passthrough)"


def _deny(profile, kind):
    return profile.get("passthrough", kind) != "allow"


@rule("QW201", "error", "PCI passthrough not allowed",
      "Remove the <hostdev type='pci'> / <interface type='hostdev'>, or allow passthrough.pci in the profile.")
def check_pci(domain, profile, ctx):
    """PCI passthrough (``<hostdev type='pci'>``, SR-IOV ``<interface
    type='hostdev'>``, the VF of a virtio failover pair) gives the guest a
    device that bypasses the host bridge, the firewall and vhost-net, and that
    can DMA into host memory without an IOMMU. Denied unless
    ``passthrough.pci: allow``."""
    if not _deny(profile, "pci"):
        return
    for line, what in _pci_devices(domain):
        yield (line, what, f"{what} is not allowed")


@rule("QW202", "error", "USB passthrough not allowed",
      "Remove the <hostdev type='usb'>, or allow passthrough.usb in the profile.")
def check_usb(domain, profile, ctx):
    """With ``passthrough.usb: deny``, host USB devices (which include USB
    network adapters) may not be given to the guest."""
    if not _deny(profile, "usb"):
        return
    for h in domain.hostdevs:
        if h.type == "usb":
            yield (h.line, "hostdev usb", "USB passthrough is not allowed")


@rule("QW203", "error", "mediated device passthrough not allowed",
      "Remove the <hostdev type='mdev'>, or allow passthrough.mdev in the profile.")
def check_mdev(domain, profile, ctx):
    """With ``passthrough.mdev: deny``, mediated devices (vGPU, vfio-ap/ccw
    slices) may not be given to the guest."""
    if not _deny(profile, "mdev"):
        return
    for h in domain.hostdevs:
        if h.type == "mdev":
            yield (h.line, "hostdev mdev", "mediated device passthrough is not allowed")


@rule("QW204", "error", "SCSI passthrough not allowed",
      "Remove the <hostdev type='scsi'|'scsi_host'>, or allow passthrough.scsi in the profile.")
def check_scsi(domain, profile, ctx):
    """With ``passthrough.scsi: deny``, host SCSI devices and vhost-scsi hosts
    may not be given to the guest."""
    if not _deny(profile, "scsi"):
        return
    for h in domain.hostdevs:
        if h.type in ("scsi", "scsi_host"):
            yield (h.line, f"hostdev {h.type}", f"{h.type} passthrough is not allowed")


@rule("QW210", "error", "IOMMU required for passthrough",
      "Add <iommu model='intel'/> (x86) or <iommu model='smmuv3'/> (aarch64) under <devices>.")
def check_iommu(domain, profile, ctx):
    """With ``passthrough.require_iommu``, a domain that is given PCI or
    mediated devices must also have a virtual IOMMU, so the guest kernel can
    confine the device's DMA."""
    if not profile.get("passthrough", "require_iommu") or domain.iommu:
        return
    devices = list(_pci_devices(domain)) + [(h.line, "hostdev mdev") for h in domain.hostdevs if h.type == "mdev"]
    for line, what in devices:
        yield (line, what, f"{what} without a virtual <iommu>")
