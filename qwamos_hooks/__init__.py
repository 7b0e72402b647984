"""qwamos-hooks: libvirt/QEMU hook and policy engine for security-sensitive VMs."""

__version__ = "0.1.0"
