"""GitHub Actions workflow commands: one annotation per finding.

``::error file=F,line=N,title=QW102::message``. Escaping follows the Actions
toolkit: in the message, % CR LF become %25 %0D %0A; in property values also
: and , become %3A and %2C. Levels: error->error, warning->warning,
info->notice; waived findings and waiver notes are notices/warnings that
never fail the job by themselves.
"""

from . import counts

LEVELS = {"error": "error", "warning": "warning", "info": "notice"}


def escape_data(s: str) -> str:
    return str(s).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(s: str) -> str:
    return escape_data(s).replace(":", "%3A").replace(",", "%2C")


def command(level: str, message: str, **props) -> str:
    p = ",".join(f"{k}={escape_property(v)}" for k, v in props.items() if v is not None)
    return f"::{level}{' ' + p if p else ''}::{escape_data(message)}\n"


def _file(path: str) -> str:
    while path.startswith("./"):
        path = path[2:]
    return path


def write(checked, stream, *, fail_on: str = "error", **_):
    for ch in checked:
        path = _file(ch.path)
        if ch.error:
            stream.write(command("error", ch.error, file=path, title="unreadable input"))
            continue
        for f in ch.result.findings:
            dev = f"{f.device}: " if f.device else ""
            if f.waiver is not None:
                stream.write(command("notice", f"{dev}{f.message} (waived by {f.waiver.where}: {f.waiver.reason})",
                                     file=path, line=str(f.line), title=f"{f.rule} (waived)"))
                continue
            stream.write(command(LEVELS[f.severity], f"{dev}{f.message}\nFix: {f.hint}",
                                 file=path, line=str(f.line), title=f.rule))
        for n in ch.result.notes:
            stream.write(command("warning", n.message, file=path, line=str(n.line), title=f"{n.rule} waiver"))
    c = counts(checked, fail_on)
    stream.write(
        f"qwamos-policy: {c['files']} file(s) checked: {c['error']} error(s), {c['warning']} warning(s), "
        f"{c['info']} info, {c['waived']} waived, {c['files_failing']} file(s) failing, "
        f"{c['input_errors']} unreadable\n"
    )
