"""Machine-readable report, schema version 1 (JSON Schema: schemas/report.schema.json,
documented in docs/ci.md). Fields are only ever added within a version; a
removal, rename or change of meaning bumps ``version``.

{"version": 1, "tool": "qwamos-policy", "tool_version": str,
 "policy": {"source": str, "digest": str} | null, "fail_on": "error"|"warning",
 "summary": {counts, see report.counts},
 "files": [{"path": str, "state": "running"|"inactive"|null, "error": str|null,
            "profile": str|null,
            "findings": [{"rule", "severity", "message", "hint", "file", "line", "device",
                          "waived": bool, "waiver": {origin, reason, expires, policy_index, line}|null}],
            "waiver_notes": [{"kind", "rule", "origin", "line", "message"}]}]}
"""

import json

from .. import __version__
from . import counts


def document(checked, *, policy=None, fail_on: str = "error") -> dict:
    files = []
    for ch in checked:
        res = ch.result
        files.append({
            "path": ch.path,
            "state": ch.state,
            "error": ch.error,
            "profile": res.profile.name if res else None,
            "findings": [f.as_dict() for f in res.findings] if res else [],
            "waiver_notes": [n.as_dict() for n in res.notes] if res else [],
        })
    return {
        "version": 1,
        "tool": "qwamos-policy",
        "tool_version": __version__,
        "policy": {"source": policy.source, "digest": policy.digest} if policy is not None else None,
        "fail_on": fail_on,
        "summary": counts(checked, fail_on),
        "files": files,
    }


def write(checked, stream, *, policy=None, fail_on: str = "error", **_):
    json.dump(document(checked, policy=policy, fail_on=fail_on), stream, indent=2)
    stream.write("\n")
