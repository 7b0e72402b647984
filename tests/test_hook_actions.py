"""How the hook runs stage actions: blocking stages stop at the first failure,
clean-up stages run every action, even with a broken policy."""

import io

import pytest

from qwamos_hooks import hook

from . import hook_probe_actions as probe
from .test_hook import GOOD


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setattr(hook, "ACTIONS", {"fail": f"{probe.__name__}:fail", "crash": f"{probe.__name__}:crash",
                                          "record": f"{probe.__name__}:record"})
    probe.RAN.clear()
    return {"QWAMOS_STATE_DIR": str(tmp_path / "run"), "QWAMOS_LIB_DIR": str(tmp_path / "lib"),
            "QWAMOS_LOG_FILE": str(tmp_path / "log"), "QWAMOS_POLICY": str(tmp_path / "absent.yaml")}


def stage(monkeypatch, key, actions):
    monkeypatch.setitem(hook.STAGES, key, hook.STAGES[key]._replace(actions=actions))


def test_blocking_stage_stops_at_first_failure(env, monkeypatch):
    stage(monkeypatch, ("prepare", "begin"), ("fail", "record"))
    code, msg = hook.run(["ci-smoke", "prepare", "begin", "-"], io.BytesIO(GOOD.encode()), env=env)
    assert code == 1 and msg == "qwamos: VM 'ci-smoke' fail failed: probe failure"
    assert probe.RAN == [("fail", "prepare")]


def test_unexpected_exception_in_action_blocks_with_its_type(env, monkeypatch):
    stage(monkeypatch, ("start", "begin"), ("crash",))
    code, msg = hook.run(["ci-smoke", "start", "begin", "-"], io.BytesIO(GOOD.encode()), env=env)
    assert code == 1 and "crash failed: KeyError" in msg


@pytest.mark.parametrize("op, sub", [("stopped", "end"), ("release", "end"), ("reconnect", "begin")])
def test_cleanup_stage_runs_every_action_and_exits_0(env, monkeypatch, op, sub):
    stage(monkeypatch, (op, sub), ("crash", "fail", "record"))
    code, msg = hook.run(["ci-smoke", op, sub, "-"], io.BytesIO(GOOD.encode()), env=env)
    assert (code, msg) == (0, "")
    assert [r[0] for r in probe.RAN] == ["crash", "fail", "record"]
    log = open(env["QWAMOS_LOG_FILE"]).read()
    assert "crash: KeyError" in log and "fail: probe failure" in log and "stage cannot block" in log


def test_cleanup_runs_with_a_broken_policy(env, monkeypatch, tmp_path):
    pol = tmp_path / "broken.yaml"
    pol.write_text("version: 1\nprofiles: [\n")
    env["QWAMOS_POLICY"] = str(pol)
    stage(monkeypatch, ("stopped", "end"), ("record",))
    code, _ = hook.run(["ci-smoke", "stopped", "end", "-"], io.BytesIO(GOOD.encode()), env=env)
    assert code == 0 and probe.RAN == [("record", "stopped", True)]
    stage(monkeypatch, ("prepare", "begin"), ("record",))
    code, msg = hook.run(["ci-smoke", "prepare", "begin", "-"], io.BytesIO(GOOD.encode()), env=env)
    assert code == 1 and "policy error" in msg and len(probe.RAN) == 1  # a start never runs actions
