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

from .errors import EXIT_INPUT, EXIT_OK, EXIT_VIOLATION, InputError, PolicyError
from .report import FORMATS

# Command groups that live with their subsystem: (module, help).
GROUPS = {
    "fw": ("qwamos_hooks.firewall.cli", "per-VM nftables firewall"),
    "keys": ("qwamos_hooks.keys.cli", "TPM-sealed per-VM keys"),
}


def _load_policy(args):
    """--policy, else $QWAMOS_POLICY, else the host's /etc/qwamos/policy.yaml
    (what the hook enforces), else the built-in default. A file that is named
    explicitly must exist; the host file may be absent."""
    from .paths import DEFAULT_POLICY
    from .policy import load_policy

    path = args.policy or os.environ.get("QWAMOS_POLICY")
    if path:
        return load_policy(path)
    return load_policy(DEFAULT_POLICY, missing_ok=True)


def _parse_outputs(values):
    """--output FMT=PATH (repeatable) plus at most one bare --output PATH, which
    takes the --format report instead of stdout. Returns ([(fmt, path)], path|None)."""

    extra, main_path = [], None
    for v in values or []:
        fmt, sep, path = v.partition("=")
        if sep and fmt in FORMATS:
            if not path:
                raise ValueError(f"--output {v}: missing path after '='")
            extra.append((fmt, path))
        elif main_path is None:
            main_path = v
        else:
            raise ValueError(f"--output {v}: only one plain PATH is allowed; use FMT=PATH for more reports "
                             f"(formats: {', '.join(FORMATS)})")
    return extra, main_path


def _write_report(fmt, path, checked, opts) -> None:
    from . import report

    if path in (None, "-"):
        report.write(fmt, checked, sys.stdout, **opts)
        sys.stdout.flush()
        return
    with open(path, "w", encoding="utf-8") as fh:
        report.write(fmt, checked, fh, **opts)


def cmd_check(args) -> int:
    from . import engine, report, rules

    try:
        extra, main_path = _parse_outputs(args.output)
    except ValueError as exc:
        print(f"qwamos-policy: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if args.jobs < 0:
        print("qwamos-policy: --jobs must be 0 (automatic) or more", file=sys.stderr)
        return EXIT_INPUT
    if args.connect:
        if args.all and args.paths:
            print("qwamos-policy: give --all or domain names, not both", file=sys.stderr)
            return EXIT_INPUT
    else:
        if args.all:
            print("qwamos-policy: --all needs --connect URI", file=sys.stderr)
            return EXIT_INPUT
        if not args.paths:
            print("qwamos-policy: check needs PATH... (or --connect URI)", file=sys.stderr)
            return EXIT_INPUT
    try:
        policy = _load_policy(args)
    except PolicyError as exc:
        print(f"qwamos-policy: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if not rules.enabled(policy.severity):
        print(f"qwamos-policy: {policy.source}: every rule is turned off, nothing would be checked", file=sys.stderr)
        return EXIT_INPUT
    today = engine.today_utc()
    if args.connect:
        from .hostaudit import check_host

        try:
            checked = check_host(args.connect, args.paths, policy, today=today)
        except InputError as exc:
            print(f"qwamos-policy: {exc}", file=sys.stderr)
            return EXIT_INPUT
        if not checked:
            print(f"qwamos-policy: {args.connect}: no domains defined, nothing was checked", file=sys.stderr)
            return EXIT_INPUT
    else:
        from . import scan

        checked = [report.Checked(p, None, f"{p}: no such file or directory")
                   for p in args.paths if not os.path.exists(p)]
        items = [(p, explicit and not args.skip_non_domain)
                 for p, explicit in scan.iter_inputs([p for p in args.paths if os.path.exists(p)])]
        progress = scan.Progress(len(items), enabled=False if args.no_progress else None)
        found, skipped = scan.check_files(items, policy, live=args.live, today=today,
                                          jobs=args.jobs, progress=progress)
        checked += found
        if not checked and skipped and args.skip_non_domain:
            print(f"qwamos-policy: nothing to check ({skipped} non-domain XML file(s) skipped)", file=sys.stderr)
            return EXIT_OK
        if not checked:
            print(f"qwamos-policy: no domain XML found in {', '.join(args.paths)}"
                  f"{f' ({skipped} other XML file(s) skipped)' if skipped else ''}", file=sys.stderr)
            return EXIT_INPUT
    opts = {"verbose": args.verbose, "policy": policy, "fail_on": args.fail_on}
    try:
        for fmt, path in extra:
            _write_report(fmt, path, checked, opts)
        _write_report(args.format, main_path, checked, opts)
    except BrokenPipeError:
        raise
    except OSError as exc:
        print(f"qwamos-policy: cannot write report {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INPUT
    c = report.counts(checked, args.fail_on)
    if c["input_errors"]:
        return EXIT_INPUT
    return EXIT_VIOLATION if c["files_failing"] else EXIT_OK


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
    ap.add_argument("--policy", help="policy file (default: $QWAMOS_POLICY, else /etc/qwamos/policy.yaml "
                                     "if present, else the built-in default)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser(
        "check", help="check domain XML files or folders, or a libvirt host's domains",
        description="Check domain XML against the policy. Exit 0 compliant, 1 violations "
                    "(at or above --fail-on, not waived), 2 input/usage error or nothing checked.")
    c.add_argument("paths", nargs="*", metavar="PATH",
                   help="files or folders (walked for *.xml); with --connect: domain names")
    c.add_argument("--format", "-f", default="text", choices=FORMATS,
                   help="report format on stdout (default: text)")
    c.add_argument("--output", "-o", action="append", metavar="[FMT=]PATH",
                   help="FMT=PATH writes one more report (repeatable), e.g. sarif=out.sarif; "
                        "a plain PATH takes the --format report instead of stdout")
    c.add_argument("--fail-on", choices=("error", "warning"), default="error",
                   help="lowest severity that fails the run (default: error)")
    c.add_argument("--live", action="store_true", help="treat the XML as a running domain's (check resolved bridges)")
    c.add_argument("--connect", "-c", metavar="URI",
                   help="audit the domains of a libvirt host (e.g. qemu:///system), read-only")
    c.add_argument("--all", action="store_true", help="with --connect: every domain, running and inactive (the default)")
    c.add_argument("--jobs", "-j", type=int, default=0, metavar="N",
                   help="worker processes (default 0: one per core for 64 files or more; 1 = serial)")
    c.add_argument("--skip-non-domain", action="store_true",
                   help="skip XML files that are not <domain> even when named (for pre-commit); "
                        "if nothing is left to check, exit 0")
    c.add_argument("--no-progress", action="store_true", help="no progress display (it only shows on a terminal, never with CI set)")
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

    from .completion import register as register_completion

    register_completion(sub, build_parser)

    from .watch import register as register_watch

    register_watch(sub)

    for name, (modname, helptext) in GROUPS.items():
        mod = importlib.import_module(modname)  # cheap: heavy imports live in the handlers
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
