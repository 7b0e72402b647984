"""Rules about memory and vCPU limits (cgroup limits on the QEMU process)."""

from ..domain import UNREADABLE
from . import rule


@rule("QW302", "error", "memtune hard_limit required",
      "Add <memtune><hard_limit unit='KiB'>...</hard_limit></memtune>.")
def check_hard_limit(domain, profile, ctx):
    """With ``resources.require_hard_limit``, the domain must set
    ``<memtune><hard_limit>``: libvirt turns it into the cgroup memory limit
    of the QEMU process, so a compromised emulator cannot exhaust the host."""
    if profile.get("resources", "require_hard_limit") and domain.hard_limit_kib in (None, UNREADABLE):
        yield (domain.lines.get("memtune", domain.line), None, "no readable <memtune><hard_limit>")


@rule("QW303", "error", "memory above the profile's maximum",
      "Lower <memory> (and <maxMemory>) to the profile's max_memory_mib.")
def check_max_memory(domain, profile, ctx):
    """``resources.max_memory_mib`` caps ``<memory>`` and ``<maxMemory>``
    (memory hotplug could otherwise grow past it). An unreadable size fails."""
    cap = profile.get("resources", "max_memory_mib")
    if cap is None:
        return
    for label, kib in (("memory", domain.memory_kib), ("maxMemory", domain.max_memory_kib)):
        line = domain.lines.get(label, domain.line)
        if label == "maxMemory" and kib is None:
            continue
        if kib is None or kib == UNREADABLE:
            yield (line, None, f"<{label}> is missing or unreadable (value or unit)")
        elif kib > cap * 1024:
            yield (line, None, f"<{label}> is {kib // 1024} MiB, above the maximum {cap} MiB")


@rule("QW304", "error", "vCPUs above the profile's maximum",
      "Lower <vcpu> to the profile's max_vcpus.")
def check_max_vcpus(domain, profile, ctx):
    """``resources.max_vcpus`` caps ``<vcpu>`` (one when absent, as libvirt
    defaults it). An unreadable count fails."""
    cap = profile.get("resources", "max_vcpus")
    if cap is None:
        return
    if domain.vcpus is None and "vcpu" in domain.lines:
        yield (domain.lines["vcpu"], None, "<vcpu> is unreadable")
    elif (domain.vcpus or 1) > cap:  # libvirt's default is one vCPU
        yield (domain.lines.get("vcpu", domain.line), None, f"{domain.vcpus} vCPUs, above the maximum {cap}")
