"""qwamos-policy: the offline linter and the administrator's command.

Exit codes (all subcommands):
  0  compliant / success
  1  violations found (or a failed check)
  2  input or usage error: unreadable or malformed XML, not a <domain>,
     a folder with no domain XML, a bad or missing policy
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import EXIT_INPUT, EXIT_OK, EXIT_VIOLATION, InputError, NotADomain, PolicyError

# Command groups that live with their subsystem: (module, help).
GROUPS = {
    "fw": ("qwamos_hooks.firewall.cli", "per-VM nftables firewall"),
    "keys": ("qwamos_hooks.keys.cli", "TPM-sealed per-VM keys"),
}


def _iter_inputs(paths):
    """Yield (path, explicit) for each file to check; folders are walked for *.xml."""
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for f in sorted(files):
                    if f.endswith(".xml"):
                        yield os.path.join(root, f), False
        else:
            yield p, True


def _load_policy(args):
    from .policy import load_policy

    path = args.policy or os.environ.get("QWAMOS_POLICY")
    return load_policy(path) if path else load_policy(None)


def cmd_check(args) -> int:
    from . import domain, engine, report

    try:
        policy = _load_policy(args)
    except PolicyError as exc:
        print(f"qwamos-policy: {exc}", file=sys.stderr)
        return EXIT_INPUT
    checked = []
    skipped = 0
    for path in args.paths:
        if not os.path.exists(path):
            checked.append(report.Checked(path, None, f"{path}: no such file or directory"))
    for path, explicit in _iter_inputs([p for p in args.paths if os.path.exists(p)]):
        try:
            d = domain.parse_file(path)
        except NotADomain as exc:
            if explicit:
                checked.append(report.Checked(path, None, str(exc)))
            else:
                skipped += 1
            continue
        except InputError as exc:
            checked.append(report.Checked(path, None, str(exc)))
            continue
        checked.append(report.Checked(path, engine.evaluate(d, policy, live=args.live)))
    if not checked:
        print(f"qwamos-policy: no domain XML found in {', '.join(args.paths)}"
              f"{f' ({skipped} other XML file(s) skipped)' if skipped else ''}", file=sys.stderr)
        return EXIT_INPUT
    out = sys.stdout
    if args.output:
        out = open(args.output, "w", encoding="utf-8")
    try:
        report.write(args.format, checked, out, verbose=args.verbose)
    finally:
        if out is not sys.stdout:
            out.close()
    c = report.counts(checked)
    if c["input_errors"]:
        return EXIT_INPUT
    failing = c["error"] + (c["warning"] if args.fail_on == "warning" else 0)
    return EXIT_VIOLATION if failing else EXIT_OK


def cmd_rules(args) -> int:
    from . import rules

    for r in rules.all_rules():
        print(f"{r.id}  {r.severity:<7}  {r.title}")
    return EXIT_OK


def cmd_explain(args) -> int:
    from . import rules

    r = rules.get(args.rule)
    if r is None:
        print(f"qwamos-policy: unknown rule '{args.rule}' (see 'qwamos-policy rules')", file=sys.stderr)
        return EXIT_INPUT
    print(f"{r.id}: {r.title}\nseverity: {r.severity}\n\n{r.doc}\n\nfix: {r.hint}")
    return EXIT_OK


def cmd_policy_validate(args) -> int:
    from .policy import load_policy

    try:
        p = load_policy(args.file)
    except PolicyError as exc:
        print(f"qwamos-policy: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(f"{args.file}: valid (mode {p.mode}; profiles: {', '.join(sorted(p.profiles))}; default {p.default_profile})")
    return EXIT_OK


def cmd_policy_show(args) -> int:
    import json

    try:
        p = _load_policy(args)
    except PolicyError as exc:
        print(f"qwamos-policy: {exc}", file=sys.stderr)
        return EXIT_INPUT
    prof = p.profiles.get(args.profile or p.default_profile)
    if prof is None:
        print(f"qwamos-policy: no profile '{args.profile}' in {p.source}", file=sys.stderr)
        return EXIT_INPUT
    print(json.dumps({"policy": p.source, "mode": p.mode, "profile": prof.name, "settings": prof.data}, indent=2))
    return EXIT_OK


def cmd_audit_verify(args) -> int:
    from . import audit
    from .paths import Paths

    path = args.file or Paths.from_env().audit_log
    n, problem = audit.verify(path)
    if problem:
        print(f"{path}: TAMPERED: {problem} ({n} record(s) before it verify)")
        return EXIT_VIOLATION
    print(f"{path}: {n} record(s), chain intact")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qwamos-policy", description="Check libvirt domain XML against a qwamos policy.")
    ap.add_argument("--policy", help="policy file (default: $QWAMOS_POLICY, else the built-in default)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("check", help="check domain XML files or folders")
    c.add_argument("paths", nargs="+", metavar="PATH")
    c.add_argument("--format", "-f", default="text", choices=("text", "json"))
    c.add_argument("--output", "-o", help="write the report to a file")
    c.add_argument("--fail-on", choices=("error", "warning"), default="error")
    c.add_argument("--live", action="store_true", help="treat the XML as a running domain's (check resolved bridges)")
    c.add_argument("--verbose", "-v", action="store_true")
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("rules", help="list the rules")
    r.set_defaults(func=cmd_rules)
    e = sub.add_parser("explain", help="explain one rule")
    e.add_argument("rule", metavar="ID")
    e.set_defaults(func=cmd_explain)

    p = sub.add_parser("policy", help="work with policy files")
    psub = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    v = psub.add_parser("validate", help="validate a policy file")
    v.add_argument("file")
    v.set_defaults(func=cmd_policy_validate)
    s = psub.add_parser("show", help="print a profile with inheritance resolved")
    s.add_argument("profile", nargs="?")
    s.set_defaults(func=cmd_policy_show)

    a = sub.add_parser("audit", help="the tamper-evident audit log")
    asub = a.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    av = asub.add_parser("verify", help="verify the hash chain")
    av.add_argument("file", nargs="?", help="audit log (default: $QWAMOS_LIB_DIR/audit.jsonl)")
    av.set_defaults(func=cmd_audit_verify)

    for name, (modname, helptext) in GROUPS.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name and modname.startswith(exc.name):
                continue  # subsystem not installed in this build
            raise
        g = sub.add_parser(name, help=helptext)
        mod.register(g.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True))
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return EXIT_INPUT if exc.code else EXIT_OK
    if not getattr(args, "func", None):
        ap.print_usage(sys.stderr)
        return EXIT_INPUT
    try:
        return args.func(args)
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
