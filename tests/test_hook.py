"""The hook as libvirt runs it: a process with argv, stdin, exit code, one stderr line.
Stage semantics are exercised with the stdin libvirt really writes at each stage."""

import json
import os
import subprocess
import sys

import pytest

from qwamos_hooks import audit, hook

from .domains import domain_xml, nic

REF = os.path.join(os.path.dirname(__file__), "data", "hook-stdin")
# As libvirt writes it from start/begin on: tap names and the network's resolved bridge.
GOOD = domain_xml(name="ci-smoke", nics=[
    nic(source="<source network='default' bridge='virbr0'/>", extra="<target dev='vnet0'/>"),
    nic("bridge", mac="52:54:00:aa:00:02", source="<source bridge='br0'/>", extra="<target dev='vnet1'/>")])
BAD = domain_xml(name="ci-smoke", nics=[nic(model="e1000")])


@pytest.fixture
def env(tmp_path):
    e = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
        "QWAMOS_STATE_DIR": str(tmp_path / "run"), "QWAMOS_LIB_DIR": str(tmp_path / "lib"),
        "QWAMOS_LOG_FILE": str(tmp_path / "hook.log"), "QWAMOS_POLICY": str(tmp_path / "absent.yaml"),
    }
    return e


# These tests pin down the policy side of each stage. The firewall and key
# actions a stage also runs touch the host (nft, TPM) and are exercised end to
# end in their own tests, so here each stage runs with its policy check only.
POLICY_ONLY = ("import sys; from qwamos_hooks import hook; "
               "hook.STAGES = {k: s._replace(actions=()) for k, s in hook.STAGES.items()}; "
               "raise SystemExit(hook.main(sys.argv[1:]))")


def run_hook(env, args, stdin):
    return subprocess.run([sys.executable, "-I", "-c", POLICY_ONLY, *args],
                          input=stdin.encode() if isinstance(stdin, str) else stdin,
                          capture_output=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))


def records(env):
    path = os.path.join(env["QWAMOS_LIB_DIR"], "audit.jsonl")
    return [json.loads(line) for line in open(path)]


def test_no_arguments_prints_usage_and_exits_2(env):
    p = run_hook(env, [], "")
    assert p.returncode == 2 and b"usage" in p.stderr


def test_compliant_vm_passes_every_stage(env):
    for op, sub in hook.STAGES:
        p = run_hook(env, ["ci-smoke", op, sub, "-"], GOOD)
        assert p.returncode == 0, (op, p.stderr)
        assert p.stdout == b""  # migrate/restore: empty output means "XML unchanged"
    recs = records(env)
    assert [r["stage"] for r in recs] == [f"{o}/{s}" for o, s in hook.STAGES]
    assert all(r["decision"] == "allow" for r in recs)


@pytest.mark.parametrize("op, sub", [("prepare", "begin"), ("start", "begin"), ("migrate", "begin"), ("restore", "begin")])
def test_blocking_stages_block_with_one_line(env, op, sub):
    p = run_hook(env, ["ci-smoke", op, sub, "-"], BAD)
    assert p.returncode == 1 and p.stdout == b""
    err = p.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("qwamos: VM 'ci-smoke' refused") and "QW102" in err
    assert records(env)[-1]["decision"] == "deny"


@pytest.mark.parametrize("op, sub", [("stopped", "end"), ("release", "end"), ("reconnect", "begin")])
@pytest.mark.parametrize("stdin", [BAD, "", "<domain", "\x00\xff junk"])
def test_non_blocking_stages_never_fail(env, op, sub, stdin):
    p = run_hook(env, ["ci-smoke", op, sub, "-"], stdin)
    assert p.returncode == 0 and p.stderr == b""
    assert open(env["QWAMOS_LOG_FILE"]).read()  # but it is logged


@pytest.mark.parametrize("stdin, needle", [
    ("", "empty input"),
    ("<domain><name>ci-smoke</name>", "not well-formed"),
    ("<!DOCTYPE d [<!ENTITY a 'b'>]><domain/>", "DOCTYPE"),
    ("<network/>", "expected <domain>"),
])
def test_bad_xml_blocks_prepare(env, stdin, needle):
    p = run_hook(env, ["ci-smoke", "prepare", "begin", "-"], stdin)
    assert p.returncode == 1 and needle in p.stderr.decode() and p.stderr.decode().count("\n") == 1


def test_huge_input_blocks(env):
    p = run_hook(env, ["ci-smoke", "prepare", "begin", "-"], b"<domain>" + b" " * (11 * 1024 * 1024))
    assert p.returncode == 1 and b"larger than 10 MiB" in p.stderr


def test_name_mismatch_blocks(env):
    p = run_hook(env, ["other-vm", "prepare", "begin", "-"], GOOD)
    assert p.returncode == 1 and b"names 'ci-smoke'" in p.stderr


def test_broken_policy_denies_every_start(env, tmp_path):
    pol = tmp_path / "broken.yaml"
    pol.write_text("version: 1\nprofiles:\n  default:\n    interfaces: {allowed_types: bridge}\n")
    env["QWAMOS_POLICY"] = str(pol)
    p = run_hook(env, ["ci-smoke", "prepare", "begin", "-"], GOOD)
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "policy error, every start is denied" in err and "broken.yaml:4" in err
    pol.chmod(0)  # unreadable (root ignores mode bits, so also test a directory)
    env["QWAMOS_POLICY"] = str(tmp_path)
    assert run_hook(env, ["ci-smoke", "prepare", "begin", "-"], GOOD).returncode == 1
    # A stage that cannot block still exits 0 with a broken policy.
    assert run_hook(env, ["ci-smoke", "stopped", "end", "-"], GOOD).returncode == 0


def test_audit_mode_allows_and_records(env, tmp_path):
    pol = tmp_path / "audit.yaml"
    pol.write_text("version: 1\nmode: audit\nprofiles: {default: {}}\n")
    env["QWAMOS_POLICY"] = str(pol)
    p = run_hook(env, ["ci-smoke", "prepare", "begin", "-"], BAD)
    assert p.returncode == 0 and p.stderr == b""
    rec = records(env)[-1]
    assert rec["decision"] == "audit-allow" and "QW102@" in rec["findings"][0]
    assert "would block (audit mode)" in open(env["QWAMOS_LOG_FILE"]).read()


def test_live_stage_checks_resolved_bridge(env):
    live = domain_xml(name="ci-smoke", nics=[nic(source="<source network='default' bridge='docker0'/>", extra="<target dev='vnet3'/>")])
    assert run_hook(env, ["ci-smoke", "prepare", "begin", "-"], live).returncode == 0  # bridge= ignored before start
    p = run_hook(env, ["ci-smoke", "start", "begin", "-"], live)
    assert p.returncode == 1 and b"QW110" in p.stderr and b"docker0" in p.stderr


def test_reference_stdin_captures(env):
    # What libvirt wrote at each stage for a VM without vhost: prepare/start block, the rest pass.
    for stage in sorted(os.listdir(REF)):
        op, sub = stage[:-4].split("-")
        p = run_hook(env, ["ci-smoke", op, sub, "-"], open(os.path.join(REF, stage), "rb").read())
        expect = 1 if (op, sub) in (("prepare", "begin"), ("start", "begin")) else 0
        assert p.returncode == expect, (stage, p.stderr)
        if expect:
            assert b"QW120" in p.stderr


def test_unknown_stage_is_ignored(env):
    assert run_hook(env, ["ci-smoke", "frobnicate", "begin", "-"], BAD).returncode == 0


def test_audit_chain_of_hook_records_verifies(env):
    for _ in range(3):
        run_hook(env, ["ci-smoke", "prepare", "begin", "-"], GOOD)
    n, problem = audit.verify(os.path.join(env["QWAMOS_LIB_DIR"], "audit.jsonl"))
    assert n == 3 and problem is None


def test_policy_cache_is_written_and_used(env, tmp_path):
    pol = tmp_path / "p.yaml"
    pol.write_text("version: 1\nprofiles: {default: {}}\n")
    env["QWAMOS_POLICY"] = str(pol)
    run_hook(env, ["ci-smoke", "prepare", "begin", "-"], GOOD)
    cache = os.path.join(env["QWAMOS_LIB_DIR"], "cache")
    assert len([n for n in os.listdir(cache) if n.startswith("policy-")]) == 2
    assert len([n for n in os.listdir(cache) if n.startswith("domain-")]) == 1
    # The hook's import path stays lean: no jsonschema once the cache is warm,
    # and no lxml for a definition it has parsed before.
    code = ("import sys, io; from qwamos_hooks import hook; "
            "sys.stdin = io.TextIOWrapper(io.BytesIO(open(sys.argv[1],'rb').read())); "
            "hook.run(['ci-smoke','prepare','begin','-'], sys.stdin.buffer); "
            "print(sorted(m for m in ('jsonschema','yaml','libvirt','tpm2_pytss','nftables','lxml') if m in sys.modules))")
    xml = tmp_path / "d.xml"
    xml.write_text(GOOD)
    p = subprocess.run([sys.executable, "-I", "-c", code, str(xml)], capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert p.stdout.strip() == "[]", p.stderr


def test_domain_parse_cache_gives_the_same_decision_and_survives_corruption(env):
    bad = BAD.replace("ci-smoke", "ci-smoke")  # same bytes as a non-compliant definition
    first = run_hook(env, ["ci-smoke", "prepare", "begin", "-"], bad)
    second = run_hook(env, ["ci-smoke", "prepare", "begin", "-"], bad)  # served from the cache
    assert first.returncode == second.returncode == 1 and first.stderr == second.stderr
    cache = os.path.join(env["QWAMOS_LIB_DIR"], "cache")
    for n in os.listdir(cache):
        if n.startswith("domain-"):
            with open(os.path.join(cache, n), "wb") as fh:
                fh.write(b"\x00garbage")
    third = run_hook(env, ["ci-smoke", "prepare", "begin", "-"], bad)
    assert third.returncode == 1 and third.stderr == first.stderr
