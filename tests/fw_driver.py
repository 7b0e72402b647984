"""Runs one firewall stage action the way the hook does, inside whatever network
namespace it is started in (tests start it with `ip netns exec`).

usage: fw_driver.py ACTION XMLFILE PROFILE_JSON [GLOBAL_JSON]
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qwamos_hooks import domain  # noqa: E402
from qwamos_hooks.errors import StageError  # noqa: E402
from qwamos_hooks.firewall import stage  # noqa: E402
from qwamos_hooks.paths import Paths  # noqa: E402
from qwamos_hooks.policy.model import Profile  # noqa: E402
from qwamos_hooks.stage import StageContext  # noqa: E402


class _Policy:
    def __init__(self, raw):
        self.raw = raw

    def section(self, name):
        return self.raw.get(name) or {}


def main(argv):
    if argv[0] == "init":  # what install.sh does through `qwamos-policy fw init`
        from qwamos_hooks.firewall import apply, render

        apply.ensure_tables(render.global_config(json.loads(argv[1]) if len(argv) > 1 else {}))
        return 0
    action, xml, prof = argv[0], argv[1], json.loads(argv[2])
    glob = json.loads(argv[3]) if len(argv) > 3 else {}
    d = domain.parse_file(xml)
    op = {"apply": "start", "verify": "started", "remove": "stopped", "reapply": "reconnect",
          "guard": "prepare"}[action]
    ctx = StageContext(d.name, op, "begin", d, Profile("test", {"firewall": prof}), _Policy({"firewall": glob}),
                       Paths.from_env(), action in ("apply", "verify", "guard"),
                       lambda event, **kw: None, lambda line: print(line, file=sys.stderr))
    try:
        getattr(stage, action)(ctx)
    except StageError as exc:
        print(f"BLOCKED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
