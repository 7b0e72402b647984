"""Human-readable report: file:line, rule ID, message, hint; waived findings and
waivers that do not apply are shown and counted on their own."""

from . import counts


def write(checked, stream, *, verbose: bool = False, fail_on: str = "error", **_):
    for ch in checked:
        if ch.error:
            stream.write(f"{ch.error}\n")
            continue
        for f in ch.result.findings:
            dev = f"{f.device}: " if f.device else ""
            if f.waiver is not None:
                w = f.waiver
                exp = f", expires {w.expires}" if w.expires else ""
                stream.write(f"{ch.path}:{f.line}: {f.rule} [{f.severity}, waived] {dev}{f.message}\n")
                stream.write(f"    waived by {w.where}: {w.reason}{exp}\n")
                continue
            stream.write(f"{ch.path}:{f.line}: {f.rule} [{f.severity}] {dev}{f.message}\n")
            stream.write(f"    hint: {f.hint}\n")
        for n in ch.result.notes:
            stream.write(f"{ch.path}:{n.line}: waiver: {n.message}\n")
        if verbose and not ch.result.findings:
            state = f", {ch.state}" if ch.state else ""
            stream.write(f"{ch.path}: ok (profile {ch.result.profile.name}{state})\n")
    c = counts(checked, fail_on)
    noun = "domain(s)" if checked and all(ch.state for ch in checked) else "file(s)"
    stream.write(
        f"{c['files']} {noun} checked: {c['error']} error(s), {c['warning']} warning(s), "
        f"{c['info']} info, {c['waived']} waived, {c['files_failing']} file(s) failing, "
        f"{c['input_errors']} unreadable"
        + (f", {c['waiver_notes']} waiver note(s)" if c["waiver_notes"] else "")
        + "\n"
    )
