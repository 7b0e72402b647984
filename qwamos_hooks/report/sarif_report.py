"""SARIF 2.1.0 (OASIS) for code-scanning dashboards.

One reportingDescriptor per rule ID (help = the rule's docstring and fix hint),
so dashboards can group and filter by rule. Levels follow the effective
severity (error->error, warning->warning, info->note). Waived findings are
results with a ``suppressions`` entry (kind ``external`` for a policy waiver,
``inSource`` for one in the domain's own metadata), which is how SARIF
consumers count them apart. Unreadable inputs and waivers that do not apply
are tool execution notifications.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
from urllib.parse import quote

from .. import __version__
from . import counts, rule_table

LEVELS = {"error": "error", "warning": "warning", "info": "note"}
SRCROOT = "%SRCROOT%"


def _name(title: str) -> str:
    return "".join(w[:1].upper() + w[1:] for w in re.findall(r"[A-Za-z0-9]+", title))


def _descriptor(rule, severity: str) -> dict:
    doc = rule.doc
    return {
        "id": rule.id,
        "name": _name(rule.title),
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": doc},
        "help": {
            "text": f"{doc}\n\nFix: {rule.hint}",
            "markdown": f"{doc}\n\n**Fix:** {rule.hint}\n\n`qwamos-policy explain {rule.id}`",
        },
        "defaultConfiguration": {"level": LEVELS[severity]},
        "properties": {"tags": ["security", "libvirt", rule.module], "severity": severity},
    }


def _location(path: str) -> dict:
    if "://" in path:  # a libvirt domain: URI/name
        scheme, _, rest = path.partition("://")
        return {"uri": f"{scheme}://{quote(rest, safe='/:@')}"}
    if os.path.isabs(path):
        return {"uri": pathlib.PurePosixPath(path).as_uri()}
    rel = path.replace(os.sep, "/")
    while rel.startswith("./"):
        rel = rel[2:]
    return {"uri": quote(rel), "uriBaseId": SRCROOT}


def _physical(path: str, line: int | None) -> dict:
    loc = {"artifactLocation": _location(path)}
    if line is not None:
        loc["region"] = {"startLine": max(1, int(line))}
    return {"physicalLocation": loc}


def _fingerprint(path: str, f) -> str:
    key = "\0".join((f.rule, path, f.device or "", f.message))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def document(checked, *, policy=None, fail_on: str = "error") -> dict:
    table = rule_table(policy)
    descriptors = [_descriptor(r, sev) for r, sev in table]
    index = {r.id: i for i, (r, _) in enumerate(table)}
    results, notifications = [], []
    for ch in checked:
        if ch.error:
            notifications.append({
                "level": "error",
                "message": {"text": ch.error},
                "locations": [_physical(ch.path, None)],
                "descriptor": {"id": "input-error"},
            })
            continue
        for f in ch.result.findings:
            if f.rule not in index:  # only if the caller passed no policy: keep it valid
                from .. import rules

                index[f.rule] = len(descriptors)
                descriptors.append(_descriptor(rules.get(f.rule), f.severity))
            text = f"{f.device}: {f.message}" if f.device else f.message
            res = {
                "ruleId": f.rule,
                "ruleIndex": index[f.rule],
                "level": LEVELS[f.severity],
                "message": {"text": text},
                "locations": [_physical(ch.path, f.line)],
                "partialFingerprints": {"qwamosFinding/v1": _fingerprint(ch.path, f)},
            }
            if f.waiver is not None:
                w = f.waiver
                sup = {
                    "kind": "inSource" if w.origin == "metadata" else "external",
                    "justification": w.reason,
                    "properties": {"origin": w.origin, "where": w.where, "expires": w.expires},
                }
                if w.origin == "metadata" and w.line:
                    sup["location"] = _physical(ch.path, w.line)
                res["suppressions"] = [sup]
            results.append(res)
        for n in ch.result.notes:
            notifications.append({
                "level": "warning",
                "message": {"text": n.message},
                "locations": [_physical(ch.path, n.line)],
                "descriptor": {"id": f"waiver-{n.kind}"},
                "associatedRule": {"id": n.rule, **({"index": index[n.rule]} if n.rule in index else {})},
            })
    c = counts(checked, fail_on)
    run = {
        "tool": {"driver": {
            "name": "qwamos-policy",
            "version": __version__,
            "semanticVersion": __version__,
            "rules": descriptors,
        }},
        "originalUriBaseIds": {SRCROOT: {"uri": pathlib.Path.cwd().as_uri() + "/"}},
        "invocations": [{
            "executionSuccessful": c["input_errors"] == 0,
            "toolExecutionNotifications": notifications,
        }],
        "results": results,
        "columnKind": "unicodeCodePoints",
        "properties": {"summary": c, "fail_on": fail_on,
                       "policy": policy.source if policy is not None else None},
    }
    return {"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0", "runs": [run]}


def write(checked, stream, *, policy=None, fail_on: str = "error", **_):
    json.dump(document(checked, policy=policy, fail_on=fail_on), stream, indent=2)
    stream.write("\n")
