"""The libvirt qemu hook: ``HOOK NAME OP SUBOP EXTRA`` with the domain XML on stdin.

This file holds the stage table, the one place that says what each libvirt
event does and whether it may block. Stage actions (firewall, keys) are
imported only when a stage names them, so a VM start pays for nothing else.

Exit codes: 0 allowed (or a stage that must not block), 1 blocked, 2 usage.
"""

from __future__ import annotations

import os
import sys
import time
from typing import NamedTuple

USAGE = "usage: qwamos-hook NAME OP SUBOP EXTRA < domain.xml  (called by libvirtd from hooks/qemu.d/)"

EXIT_ALLOW = 0
EXIT_BLOCK = 1
EXIT_USAGE = 2


class Stage(NamedTuple):
    can_block: bool  # libvirt honours a non-zero exit (for reconnect it kills the VM: never)
    check: str | None  # run the policy: "defined" (XML before start) or "live" (taps, resolved bridges)
    actions: tuple[str, ...] = ()  # names in ACTIONS, run in order after a passing check


# As measured with libvirt 9.0 (see docs/hook-stages.md). After a blocked
# prepare or start, libvirt still runs stopped/end and release/end, so their
# actions clean up from recorded state and are idempotent.
STAGES: dict[tuple[str, str], Stage] = {
    ("prepare", "begin"): Stage(True, "defined", ("firewall.guard", "keys.unseal")),
    ("start", "begin"): Stage(True, "live", ("firewall.apply",)),
    ("started", "begin"): Stage(True, None, ("firewall.verify",)),
    ("stopped", "end"): Stage(False, None, ("firewall.remove", "keys.wipe")),
    ("release", "end"): Stage(False, None, ("firewall.remove", "keys.wipe")),
    ("migrate", "begin"): Stage(True, "defined"),
    ("restore", "begin"): Stage(True, "defined"),
    ("reconnect", "begin"): Stage(False, "live", ("firewall.reapply",)),
    ("attach", "begin"): Stage(True, "live"),
}

# action name -> "module:function"; each is def fn(ctx: StageContext) -> None,
# raising errors.StageError to block.
ACTIONS: dict[str, str] = {
    "firewall.guard": "qwamos_hooks.firewall.stage:guard",
    "firewall.apply": "qwamos_hooks.firewall.stage:apply",
    "firewall.verify": "qwamos_hooks.firewall.stage:verify",
    "firewall.remove": "qwamos_hooks.firewall.stage:remove",
    "firewall.reapply": "qwamos_hooks.firewall.stage:reapply",
    "keys.unseal": "qwamos_hooks.keys.stage:unseal",
    "keys.wipe": "qwamos_hooks.keys.stage:wipe",
}


class _Block(Exception):
    pass


def _log_to(paths):
    import syslog

    syslog.openlog("qwamos-hook", syslog.LOG_PID, syslog.LOG_DAEMON)

    def log(line: str) -> None:
        syslog.syslog(syslog.LOG_NOTICE, line)
        try:
            os.makedirs(os.path.dirname(paths.log_file), mode=0o750, exist_ok=True)
            with open(paths.log_file, "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} [{os.getpid()}] {line}\n")
        except OSError:
            pass

    return log


def _summary(findings, limit: int = 3) -> str:
    """All rule IDs first (they are what an admin searches for), then the first few details."""
    ids = ", ".join(dict.fromkeys(f.rule for f in findings))
    parts = [f"{f.rule} {f.device + ': ' if f.device else ''}{f.message}" for f in findings[:limit]]
    more = f"; +{len(findings) - limit} more (see the hook log)" if len(findings) > limit else ""
    return f"{ids}: " + "; ".join(parts) + more


def _resolve(name: str):
    import importlib

    modname, func = ACTIONS[name].split(":")
    return getattr(importlib.import_module(modname), func)


def run(argv: list[str], stdin, env=os.environ) -> tuple[int, str]:
    """The hook without process plumbing: returns (exit code, stderr line)."""
    from .paths import Paths

    if len(argv) < 3:
        return EXIT_USAGE, USAGE
    vm, op, subop = argv[0], argv[1], argv[2]
    stage = STAGES.get((op, subop))
    paths = Paths.from_env(env=env)
    log = _log_to(paths)
    if stage is None:
        # An event this version does not know: never block or kill a VM for it.
        log(f"{vm} {op}/{subop}: unknown stage, ignored")
        return EXIT_ALLOW, ""

    from . import audit as audit_log

    record: dict = {"vm": vm, "stage": f"{op}/{subop}"}

    def audit(event: str, **fields) -> None:
        try:
            audit_log.append(paths.audit_log, event, vm=vm, stage=f"{op}/{subop}", **fields)
        except OSError as exc:
            # Losing the audit trail is itself an error in a blocking stage.
            if stage.can_block:
                raise _Block(f"cannot write audit log {paths.audit_log}: {exc.strerror or exc}") from None
            log(f"{vm} {op}/{subop}: cannot write audit log: {exc}")

    try:
        code, message = _run_stage(vm, op, subop, stage, stdin, paths, log, audit, record)
    except _Block as exc:
        code, message = EXIT_BLOCK, str(exc)
        record.update(decision="deny" if stage.can_block else "error", reason=message)
    except BaseException as exc:  # noqa: BLE001 - fail closed, but never crash without a line
        if isinstance(exc, KeyboardInterrupt):
            raise
        code = EXIT_BLOCK
        message = f"internal error in {op}/{subop}: {type(exc).__name__}: {exc}"
        record.update(decision="deny" if stage.can_block else "error", reason=message)
    if not stage.can_block and code != EXIT_ALLOW:
        log(f"{vm} {op}/{subop}: {message} (stage cannot block; exit 0)")
        record.setdefault("decision", "error")
        code, message = EXIT_ALLOW, ""
    decision = record.pop("decision", "allow")
    log(f"{vm} {op}/{subop}: {decision} (profile {record.get('profile', '-')}, policy {record.get('policy', '-')})")
    try:
        audit_log.append(paths.audit_log, "hook", decision=decision, **record)
    except OSError as exc:
        log(f"{vm} {op}/{subop}: cannot write audit log: {exc}")
        if stage.can_block and code == EXIT_ALLOW:
            code, message = EXIT_BLOCK, f"cannot write audit log {paths.audit_log}: {exc.strerror or exc}"
    if code == EXIT_BLOCK:
        log(f"{vm} {op}/{subop}: BLOCKED: {message}")
        message = f"qwamos: {message}"
    return code, message


def _parse(data: bytes, source: str, stage: Stage, paths):
    """Parse stdin. The XML before start (the definition) repeats from one
    start of a VM to the next, so its parse is cached by content hash: a
    repeated prepare then skips lxml, whose import is half the hook's run.
    Live XML changes at every start (tap names, port ids) and is not cached."""
    from . import domain as dom

    if stage.check != "defined" or len(data) > dom.MAX_BYTES:
        return dom.parse_bytes(data, source)
    from blake3 import blake3

    from . import __version__, cache

    st = os.stat(dom.__file__)  # a changed parser never reads an older parse
    salt = f"domain\0{__version__}\0{st.st_size}\0{st.st_mtime_ns}\0".encode()
    path = os.path.join(paths.cache_dir, f"domain-{blake3(salt + data).hexdigest()[:40]}.marshal")
    plain = cache.read(path)
    if plain is not None:
        try:
            return dom.from_plain(plain)._replace(source=source)
        except (KeyError, TypeError, IndexError, AttributeError):
            pass
    d = dom.parse_bytes(data, source)
    cache.write(path, dom.to_plain(d))
    return d


def _run_stage(vm, op, subop, stage, stdin, paths, log, audit, record):
    from . import domain as dom
    from .errors import InputError, PolicyError

    data = b""
    try:
        data = stdin.read(dom.MAX_BYTES + 1)
        d = _parse(data, f"{vm} {op}/{subop} stdin", stage, paths)
    except InputError as exc:
        if stage.can_block:
            raise _Block(str(exc)) from None
        # Clean-up must still happen (libvirt can re-escape a big description
        # past the size cap at stop): fall back to the name and UUID alone.
        d = dom.identity_only(data, f"{vm} {op}/{subop} stdin")
        if d is None:
            raise _Block(f"{exc}; no UUID found, nothing to clean up") from None
        log(f"{vm} {op}/{subop}: {exc}; cleaning up by UUID {d.uuid}")
        record.update(uuid=d.uuid, decision="error")
        _run_actions(stage, vm, op, subop, d, None, None, paths, audit, log)
        return EXIT_ALLOW, ""
    record["uuid"] = d.uuid
    if d.name and d.name != vm:
        raise _Block(f"domain XML names '{d.name}' but libvirt called the hook for '{vm}'")
    if not d.uuid:
        raise _Block("domain XML has no <uuid>")

    from .policy import load_policy

    try:
        policy = load_policy(paths.policy, cache_dir=paths.cache_dir, missing_ok=True)
    except PolicyError as exc:
        if stage.can_block:
            raise _Block(f"policy error, every start is denied until it is fixed: {exc}") from None
        # Clean-up works from recorded state: a broken policy must not leave
        # rules or keys behind when a VM stops.
        log(f"{vm} {op}/{subop}: policy error, running clean-up from recorded state only: {exc}")
        record["decision"] = "error"
        _run_actions(stage, vm, op, subop, d, None, None, paths, audit, log)
        return EXIT_ALLOW, ""
    record["policy"] = policy.digest[:16]

    profile = None
    if stage.check:
        from . import engine

        result = engine.evaluate(d, policy, live=stage.check == "live")
        profile = result.profile
        record["profile"] = profile.name
        errors = result.errors
        if result.findings:
            record["findings"] = [f"{f.rule}@{f.line}{'(waived)' if f.waiver is not None else ''}" for f in result.findings]
        if errors:
            line = _summary(errors)
            if policy.mode == "audit" or not stage.can_block:
                log(f"{vm} {op}/{subop}: would block ({policy.mode} mode): {line}")
                record["decision"] = "audit-allow" if policy.mode == "audit" else "noncompliant"
            else:
                raise _Block(f"VM '{vm}' refused by policy (profile {profile.name}): {line}")
    else:
        md = d.metadata
        profile = policy.select(d.name, d.uuid, md.profile if md else None).profile
        record["profile"] = profile.name

    _run_actions(stage, vm, op, subop, d, profile, policy, paths, audit, log)
    return EXIT_ALLOW, ""


def _run_actions(stage, vm, op, subop, d, profile, policy, paths, audit, log) -> None:
    """Run the stage's actions in order. Where the stage can block, the first
    failure blocks. Where it cannot (clean-up), every action still runs: a
    failed firewall removal must not leave a key delivered."""
    if not stage.actions:
        return
    from .errors import StageError
    from .stage import StageContext

    ctx = StageContext(vm, op, subop, d, profile, policy, paths, stage.can_block, audit, log)
    failures = []
    for name in stage.actions:
        try:
            _resolve(name)(ctx)
        except Exception as exc:  # noqa: BLE001 - reported below, per stage rules
            reason = str(exc) if isinstance(exc, StageError) else f"{type(exc).__name__}: {exc}"
            if stage.can_block:
                raise _Block(f"VM '{vm}' {name} failed: {reason}") from None
            failures.append(f"{name}: {reason}")
    if failures:
        raise _Block("; ".join(failures))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    code, message = run(argv, sys.stdin.buffer)
    if message:
        # libvirt appends the hook's stderr to its error: one line is the UI.
        sys.stderr.write(message.replace("\n", " ") + "\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
