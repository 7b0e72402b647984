"""Machine-readable report. Schema (version 1), stable:

{"version": 1, "tool": "qwamos-policy", "summary": {counts},
 "files": [{"path": str, "error": str|null, "profile": str|null,
            "findings": [{"rule", "severity", "message", "hint", "file", "line", "device"}]}]}
"""

import json

from . import counts


def write(checked, stream, **_):
    files = []
    for ch in checked:
        files.append({
            "path": ch.path,
            "error": ch.error,
            "profile": ch.result.profile.name if ch.result else None,
            "findings": [f.as_dict() for f in ch.result.findings] if ch.result else [],
        })
    doc = {"version": 1, "tool": "qwamos-policy", "summary": counts(checked), "files": files}
    json.dump(doc, stream, indent=2)
    stream.write("\n")
