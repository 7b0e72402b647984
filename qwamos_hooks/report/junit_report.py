"""JUnit XML for CI test-report views (GitLab, Jenkins, Azure).

One <testsuite> per checked file (or domain), one <testcase> per enabled rule
in it: a rule with findings at a failing severity is a <failure>; a rule whose
only findings are waived is <skipped> with the waiver's reason; findings below
the --fail-on threshold pass and are listed in <system-out>. An unreadable
input is one testcase with an <error>. Waivers that do not apply are in the
suite's <system-err>. Streamed, since 10,000 files x ~30 rules is a large file.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape, quoteattr

from . import counts, failing_severities, rule_table

# Characters XML 1.0 cannot carry at all (error text may quote binary input).
_BAD = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _a(value) -> str:
    return quoteattr(_BAD.sub("\ufffd", str(value)))


def _t(value) -> str:
    return escape(_BAD.sub("\ufffd", str(value)))


def _line(path, f) -> str:
    dev = f"{f.device}: " if f.device else ""
    return f"{path}:{f.line}: {f.rule} [{f.severity}] {dev}{f.message}"


def write(checked, stream, *, policy=None, fail_on: str = "error", **_):
    table = [(rule, sev, _a(f"{rule.id} {rule.title}")) for rule, sev in rule_table(policy)]
    fail = failing_severities(fail_on)
    c = counts(checked, fail_on)
    suites = []
    tot = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for ch in checked:
        cases = []
        qp = _a(ch.path)
        st = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if ch.error:
            st["tests"] = st["errors"] = 1
            cases.append(
                f'    <testcase classname={_a(ch.path)} name="input" file={_a(ch.path)}>\n'
                f'      <error type="input-error" message={_a(ch.error)}>{_t(ch.error)}</error>\n'
                f"    </testcase>\n"
            )
        else:
            by_rule: dict = {}
            for f in ch.result.findings:
                by_rule.setdefault(f.rule, []).append(f)
            st["tests"] += len(table)
            for rule, sev, qname in table:
                fs = by_rule.get(rule.id)
                if not fs:  # the common case: a passing rule
                    cases.append(f"    <testcase classname={qp} name={qname} file={qp}/>\n")
                    continue
                active = [f for f in fs if f.waiver is None]
                waived = [f for f in fs if f.waiver is not None]
                failing = [f for f in active if f.severity in fail]
                head = f'    <testcase classname={qp} name={qname} file={qp} line="{fs[0].line}"'
                body = []
                if failing:
                    st["failures"] += 1
                    msg = f"{len(failing)} finding(s): {failing[0].message}"
                    text = "\n".join(_line(ch.path, f) + f"\n    hint: {f.hint}" for f in failing)
                    body.append(f"      <failure type={_a(failing[0].severity)} message={_a(msg)}>{_t(text)}</failure>\n")
                elif waived and not active:
                    st["skipped"] += 1
                    w = waived[0].waiver
                    body.append(f"      <skipped message={_a(f'waived by {w.where}: {w.reason}')}/>\n")
                out = [_line(ch.path, f) for f in active if f.severity not in fail]
                out += [_line(ch.path, f) + f" (waived by {f.waiver.where}: {f.waiver.reason})" for f in waived]
                if out:
                    body.append(f"      <system-out>{_t(chr(10).join(out))}</system-out>\n")
                cases.append(head + (">\n" + "".join(body) + "    </testcase>\n" if body else "/>\n"))
        for k in tot:
            tot[k] += st[k]
        props = ""
        if ch.result is not None:
            props = (f'    <properties>\n      <property name="profile" value={_a(ch.result.profile.name)}/>\n'
                     + (f'      <property name="state" value={_a(ch.state)}/>\n' if ch.state else "")
                     + f'      <property name="waived" value="{len(ch.result.waived)}"/>\n    </properties>\n')
        err = ""
        if ch.result is not None and ch.result.notes:
            err = "    <system-err>" + _t("\n".join(f"{ch.path}:{n.line}: waiver: {n.message}"
                                                 for n in ch.result.notes)) + "</system-err>\n"
        suites.append(
            f"  <testsuite name={_a(ch.path)} tests=\"{st['tests']}\" failures=\"{st['failures']}\""
            f" errors=\"{st['errors']}\" skipped=\"{st['skipped']}\">\n{props}{''.join(cases)}{err}  </testsuite>\n"
        )
    stream.write('<?xml version="1.0" encoding="UTF-8"?>\n')
    stream.write(
        f"<testsuites name=\"qwamos-policy\" tests=\"{tot['tests']}\" failures=\"{tot['failures']}\""
        f" errors=\"{tot['errors']}\" skipped=\"{tot['skipped']}\" waived=\"{c['waived']}\">\n"
    )
    for s in suites:
        stream.write(s)
    stream.write("</testsuites>\n")
