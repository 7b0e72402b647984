"""Fixtures for `qwamos-policy check` report tests: a small tree of domain XML
with known findings, and an in-process runner that captures stdout."""

from __future__ import annotations

import io
import os
import re
from contextlib import redirect_stderr, redirect_stdout

from qwamos_hooks import cli

from .domains import domain_xml, nic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

GOOD = domain_xml(name="web-1")
# QW102 (model) and QW105 (prefix) on one NIC, QW120 (no vhost) on a second one.
BAD = domain_xml(name="legacy-db", nics=[
    nic(model="e1000", mac="00:16:3e:00:00:01"),
    nic(mac="52:54:00:00:00:02", driver=None),
])


def waive(*elements: str) -> str:
    body = "".join(elements)
    return f"\n  <metadata>\n    <qwamos:vm xmlns:qwamos='urn:qwamos:hooks:1'>{body}</qwamos:vm>\n  </metadata>"


def write_tree(base, extra: dict | None = None) -> str:
    """good.xml, bad.xml and any extra {name: xml}; returns the folder."""
    d = os.path.join(str(base), "domains")
    os.makedirs(d, exist_ok=True)
    files = {"good.xml": GOOD, "bad.xml": BAD, **(extra or {})}
    for name, text in files.items():
        with open(os.path.join(d, name), "w", encoding="utf-8") as fh:
            fh.write(text)
    return d


def write_policy(base, text: str, name: str = "policy.yaml") -> str:
    path = os.path.join(str(base), name)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def run(*argv) -> tuple[int, str, str]:
    """The CLI in-process, as on a machine without /etc/qwamos/policy.yaml
    (a CI runner): without --policy it judges by the built-in default."""
    from qwamos_hooks import paths

    out, err = io.StringIO(), io.StringIO()
    host, paths.DEFAULT_POLICY = paths.DEFAULT_POLICY, "/nonexistent/qwamos/policy.yaml"
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main([str(a) for a in argv])
    finally:
        paths.DEFAULT_POLICY = host
    return code, out.getvalue(), err.getvalue()


def lines_of(path: str, pattern: str) -> list:
    """1-based lines matching pattern (where findings must point)."""
    with open(path, encoding="utf-8") as fh:
        found = [n for n, line in enumerate(fh, 1) if re.search(pattern, line)]
    assert found, f"{pattern!r} not in {path}"
    return found
