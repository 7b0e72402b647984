"""Human-readable report: file:line, rule ID, message, hint."""

from . import counts


def write(checked, stream, *, verbose: bool = False, **_):
    for ch in checked:
        if ch.error:
            stream.write(f"{ch.error}\n")
            continue
        for f in ch.result.findings:
            dev = f"{f.device}: " if f.device else ""
            stream.write(f"{ch.path}:{f.line}: {f.rule} [{f.severity}] {dev}{f.message}\n")
            stream.write(f"    hint: {f.hint}\n")
        if verbose and not ch.result.findings:
            stream.write(f"{ch.path}: ok (profile {ch.result.profile.name})\n")
    c = counts(checked)
    stream.write(
        f"{c['files']} file(s) checked: {c['error']} error(s), {c['warning']} warning(s), "
        f"{c['files_with_errors']} file(s) failing, {c['input_errors']} unreadable\n"
    )
