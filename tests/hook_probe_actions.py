"""Stage actions used by test_hook_actions: one that fails, one that records it ran."""

from qwamos_hooks.errors import StageError

RAN = []


def fail(ctx):
    RAN.append(("fail", ctx.op))
    raise StageError("probe failure")


def crash(ctx):
    RAN.append(("crash", ctx.op))
    raise KeyError("boom")


def record(ctx):
    RAN.append(("record", ctx.op, ctx.profile is None))
