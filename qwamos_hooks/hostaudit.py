"""Audit the domains a libvirt host knows, over the libvirt API (read-only).

Running domains are checked on their live XML with the live rules (taps and
the bridges their networks resolved to); inactive ones on their persistent
definition (VIR_DOMAIN_XML_INACTIVE). The libvirt binding is imported only here.
"""

from __future__ import annotations

from .errors import InputError
from .report import Checked


def _label(uri: str, name: str) -> str:
    return f"{uri}{name}" if uri.endswith("/") else f"{uri}/{name}"


def check_host(uri: str, names: list, policy, *, today=None) -> list:
    """Checked entries, sorted by domain name (or in the order names were given).
    Raises InputError when the binding is missing or the connection fails."""
    from . import domain, engine

    try:
        import libvirt
    except ImportError:
        raise InputError("--connect needs the libvirt Python binding (Debian: python3-libvirt)") from None
    # The binding prints every error to stderr unless a handler is set; we report our own line.
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as exc:
        raise InputError(f"{uri}: cannot connect: {exc.get_error_message()}") from None
    today = today or engine.today_utc()
    out = []
    try:
        if names:
            targets = []
            for n in names:
                try:
                    targets.append((n, conn.lookupByName(n)))
                except libvirt.libvirtError:
                    out.append(Checked(_label(uri, n), None, f"{_label(uri, n)}: no such domain"))
        else:
            targets = sorted(((d.name(), d) for d in conn.listAllDomains(0)), key=lambda t: t[0])
        for name, dom in targets:
            label = _label(uri, name)
            try:
                active = bool(dom.isActive())
                xml = dom.XMLDesc(0 if active else libvirt.VIR_DOMAIN_XML_INACTIVE)
            except libvirt.libvirtError as exc:
                if not names and exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined while we listed: not ours to report
                out.append(Checked(label, None, f"{label}: cannot read the domain XML: {exc.get_error_message()}"))
                continue
            state = "running" if active else "inactive"
            try:
                d = domain.parse_bytes(xml.encode("utf-8"), label)
            except InputError as exc:
                out.append(Checked(label, None, str(exc), state))
                continue
            out.append(Checked(label, engine.evaluate(d, policy, live=active, today=today).detach(), None, state))
    finally:
        conn.close()
    if names:
        order = {_label(uri, n): i for i, n in enumerate(names)}
        out.sort(key=lambda c: order.get(c.path, len(order)))
    return out
