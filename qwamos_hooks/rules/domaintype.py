"""Rules about the domain as a whole."""

from . import rule


@rule("QW300", "error", "domain type not allowed",
      "Use <domain type='kvm'> (or 'qemu' for emulation); this policy covers QEMU domains only.")
def check_domain_type(domain, profile, ctx):
    """The policy is written for QEMU/KVM. A domain of another driver (xen,
    vmware, bhyve, lxc, ...) is refused explicitly rather than half-checked:
    its network devices and pass-through options follow other rules."""
    allowed = profile.get("domain", "allowed_types", default=[]) or []
    if domain.type not in allowed:
        yield (domain.line, None,
               f"domain type '{domain.type}' is not allowed (allowed: {', '.join(allowed) or 'none'})")


@rule("QW301", "error", "KVM acceleration required",
      "Set <domain type='kvm'>.")
def check_kvm(domain, profile, ctx):
    """With ``resources.require_kvm``, only hardware-accelerated domains may run:
    pure emulation (TCG, ``type='qemu'``) is slow and has a larger attack surface."""
    if profile.get("resources", "require_kvm") and domain.type != "kvm":
        yield (domain.line, None, f"domain type is '{domain.type}', the profile requires 'kvm'")
