"""Guardrails: what a new user could write that validates yet hurts the node or other policies.

One test (at least) per guardrail of issue 14: the verifyInterval floor (model, CRD pattern,
rollout planner), `-e 0` behind spec.unsafe, the warnings tier (node-wide control lines, never
rules that mute other policies, an exclude of SYSCALL), metav1 label selectors, strict types, and
duplicate YAML keys. The CRD pattern is checked with the same regular expression the API server
would apply (OpenAPI `pattern` is ECMA-262; these patterns use only the common subset).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from nodeaudit.cli.main import main
from nodeaudit.core import crd, rollout
from nodeaudit.core.nodes import NodeFacts
from nodeaudit.core.policy import (
    NodeAuditPolicy,
    PolicyError,
    cross_policy_warnings,
    load_yaml_documents,
    parse_policy,
    policy_warnings,
)


def doc(name: str = "p", **spec: object) -> dict[str, object]:
    body: dict[str, object] = {"presets": ["procmon"]}
    body.update(spec)
    return {"apiVersion": "nodeaudit.io/v1alpha1", "kind": "NodeAuditPolicy", "metadata": {"name": name},
            "spec": body}


def problems(**spec: object) -> list[str]:
    try:
        parse_policy(doc("p", **spec))
    except PolicyError as error:
        return error.problems
    return []


def policy(name: str = "p", **spec: object) -> NodeAuditPolicy:
    return parse_policy(doc(name, **spec))


def crd_spec_schema() -> dict:
    return crd.spec_schema()


# ---- verifyInterval: at least 5 minutes, in the model, the CRD and the planner -------------------

SHORT = ["0s", "1ms", "299s", "4m", "4.99m", "60000ms", "0h10m", "0.5h"]
LONG = ["5m", "300s", "5.5m", "10m30s", "1h", "1h30m", "1.5h", "6h", "1d", "7d"]


@pytest.mark.parametrize("value", SHORT)
def test_verify_interval_below_5m_is_refused_by_model_and_crd(value: str) -> None:
    found = problems(verifyInterval=value)
    assert len(found) == 1 and found[0].startswith("spec.verifyInterval: ") and "at least 5m" in found[0], found
    pattern = crd_spec_schema()["properties"]["verifyInterval"]["pattern"]
    assert not re.search(pattern, value)


@pytest.mark.parametrize("value", LONG)
def test_verify_interval_of_5m_or_more_passes_model_and_crd(value: str) -> None:
    assert problems(verifyInterval=value) == []
    assert re.search(crd_spec_schema()["properties"]["verifyInterval"]["pattern"], value)


def test_committed_crd_carries_the_verify_interval_floor() -> None:
    committed = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "nodeauditpolicy.yaml").read_text())
    schema = committed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    pattern = schema["properties"]["verifyInterval"]["pattern"]
    assert not re.search(pattern, "0s") and not re.search(pattern, "1ms") and re.search(pattern, "5m")


def test_planner_never_reverifies_sooner_than_5m_whatever_its_settings_say() -> None:
    node = NodeFacts(name="n1", uid="u1", boot_id="b1", ready=True)
    when = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    record = {"bundle": "sha256:x", "result": "ok", "time": when.isoformat(), "uid": "u1", "bootID": "b1",
              "lastSuccess": when.isoformat()}
    settings = rollout.Settings(bundle="sha256:x", verify_interval=dt.timedelta(0))
    early = rollout.plan(settings, [node], {"n1": record}, running={}, now=when + dt.timedelta(minutes=4, seconds=59))
    assert early.start == [] and early.requeue_after == pytest.approx(1.0)
    due = rollout.plan(settings, [node], {"n1": record}, running={}, now=when + dt.timedelta(minutes=5))
    assert [(s.node, s.reason) for s in due.start] == [("n1", "verify")]


# ---- -e 0 ------------------------------------------------------------------------------------------

def test_e0_needs_spec_unsafe_allow_audit_off() -> None:
    assert problems(rules=["-e 0"]) == [
        "spec.rules[0]: -e 0 switches kernel auditing off on the node, for every policy; refused unless "
        "spec.unsafe.allowAuditOff"
    ]
    allowed = policy(rules=["-e 0"], unsafe={"allowAuditOff": True})
    assert "-e 0" in allowed.expanded_rules()
    assert any("switches kernel auditing off" in w for w in policy_warnings(allowed))
    assert problems(rules=["-e 1"]) == []


# ---- warnings ---------------------------------------------------------------------------------------

def test_control_lines_in_rules_are_warned_against_spec_auditd() -> None:
    alone = policy_warnings(policy(rules=["-b 8192", "-r 100", "--backlog_wait_time 60000"]))
    assert [w.split(":")[0] for w in alone] == ["spec.rules[0]", "spec.rules[1]", "spec.rules[2]"]
    assert "set spec.auditd.backlogLimit instead" in alone[0]
    assert "spec.auditd.rateLimit" in alone[1] and "spec.auditd.backlogWaitTime" in alone[2]
    fighting = policy_warnings(policy(rules=["-b 8192"], auditd={"backlogLimit": 4321}))
    assert fighting == ["spec.rules[0]: `-b 8192` contradicts spec.auditd.backlogLimit: 4321; spec.auditd wins "
                        "(applied after the rules files), so this line has no lasting effect"]
    same = policy_warnings(policy(rules=["-b 4321"], auditd={"backlogLimit": 4321}))
    assert "repeats spec.auditd.backlogLimit" in same[0]


def test_a_policy_without_reach_has_no_warnings() -> None:
    assert policy_warnings(policy(presets=["procmon", "identity"], rules=["-w /etc/hosts -p wa -k hosts"])) == []


def test_exclude_of_syscall_records_is_warned() -> None:
    for rule in ("-a always,exclude -F msgtype=SYSCALL", "-a always,exclude -F msgtype!=EXECVE"):
        (warning,) = policy_warnings(policy(rules=[rule]))
        assert "drops every SYSCALL record on the node" in warning
    assert policy_warnings(policy(rules=["-a always,exclude -F msgtype=PROCTITLE"])) == []


def test_never_rule_warns_its_own_policy_and_the_policies_it_mutes() -> None:
    quiet = policy("a-quiet", rules=["-a never,exit -F arch=b64 -S execve -F exe=/usr/bin/runc"])
    later = policy("b-procmon")
    earlier = policy("0-first")
    (own,) = policy_warnings(quiet)
    assert own.startswith("spec.rules[0]: `-a never,exit") and "silences other policies' rules" in own
    found = cross_policy_warnings([quiet, later, earlier])
    # Rules files load in name order and the first match wins: only policies loaded after it suffer.
    assert found["a-quiet"] == [] and found["0-first"] == []
    assert found["b-procmon"] == [
        "policy a-quiet (spec.rules[0]: `-a never,exit -F arch=b64 -S execve -F exe=/usr/bin/runc`) mutes "
        "this policy's rules for the events it matches on the nodes both select"
    ]


def test_prepended_never_rule_and_syscall_exclude_mute_every_policy_on_shared_nodes() -> None:
    loud = policy("z-loud", rules=["-A never,exit -F arch=b64 -S execve", "-a always,exclude -F msgtype=SYSCALL"])
    first = policy("a-first")
    found = cross_policy_warnings([loud, first])
    assert len(found["a-first"]) == 2
    # Disjoint selectors share no node: nothing to warn about.
    system = policy("z-loud", rules=loud.spec.rules, nodeSelector={"matchLabels": {"mode": "system"}})
    user = policy("a-first", nodeSelector={"matchLabels": {"mode": "user"}})
    assert cross_policy_warnings([system, user])["a-first"] == []
    # With the operator's node sets: only policies that really share a node.
    assert cross_policy_warnings([loud, first], shared_nodes=lambda a, b: False)["a-first"] == []


def test_excluded_executables_of_one_policy_mute_later_policies() -> None:
    found = cross_policy_warnings([policy("a", exclude={"executables": ["/usr/bin/curl"]}), policy("b")])
    assert len(found["b"]) == 2 and all("spec.exclude.executables" in w for w in found["b"])


def test_validate_prints_warnings_and_fails_only_with_strict(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump_all([
        doc("a-quiet", rules=["-a never,exit -F arch=b64 -S execve -F exe=/usr/bin/runc"]), doc("b-procmon")]))
    runner = CliRunner()
    loose = runner.invoke(main, ["validate", str(path)])
    assert loose.exit_code == 0, loose.output
    lines = loose.stdout.splitlines()
    assert lines[0].startswith(f"{path}:1: warning: a-quiet: spec.rules[0]: `-a never,exit")
    assert lines[1].startswith(f"{path}:") and ": b-procmon: policy a-quiet (spec.rules[0]" in lines[1]
    assert lines[2] == "2 valid, 0 problem(s), 2 warning(s)"
    strict = runner.invoke(main, ["validate", "--strict", str(path)])
    assert strict.exit_code == 1 and strict.stdout == loose.stdout


# ---- label selectors as metav1 validates them ----------------------------------------------------

@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ({"matchLabels": {"bad key!": "v"}}, "label key 'bad key!': name 'bad key!' must be 1-63 characters"),
        ({"matchLabels": {"": "v"}}, "label key must not be empty"),
        ({"matchLabels": {"/name": "v"}}, "the prefix before '/' must not be empty"),
        ({"matchLabels": {"Example.COM/name": "v"}}, "prefix 'Example.COM' must be a DNS subdomain"),
        ({"matchLabels": {"k" * 64: "v"}}, "must be 1-63 characters"),
        ({"matchLabels": {"mode": "with space"}}, "value of 'mode' 'with space' must be at most 63 characters"),
        ({"matchLabels": {"mode": "v" * 64}}, "must be at most 63 characters"),
        ({"matchLabels": {"mode": "-user"}}, "beginning and ending with a letter or digit"),
        ({"matchExpressions": [{"key": "bad key", "operator": "Exists"}]}, "label key 'bad key'"),
        ({"matchExpressions": [{"key": "mode", "operator": "In", "values": ["ok", "not ok"]}]},
         "values[1] 'not ok' must be at most 63 characters"),
    ],
)
def test_label_selector_is_validated_as_metav1_does(selector: dict, message: str) -> None:
    found = problems(nodeSelector=selector)
    assert len(found) == 1 and found[0].startswith("spec.nodeSelector.") and message in found[0], found


def test_valid_label_selectors_pass() -> None:
    assert problems(nodeSelector={
        "matchLabels": {"kubernetes.azure.com/mode": "user", "agentpool": "", "a.b-c_d": "Z.9-x_y"},
        "matchExpressions": [{"key": "node.kubernetes.io/instance-type", "operator": "In",
                              "values": ["Standard_D4s_v5"]}],
    }) == []


def test_crd_checks_label_values() -> None:
    selector = crd_spec_schema()["properties"]["nodeSelector"]["properties"]
    value = selector["matchLabels"]["additionalProperties"]
    assert value["maxLength"] == 63 and not re.search(value["pattern"], "with space")
    key = selector["matchExpressions"]["items"]["properties"]["key"]
    assert re.search(key["pattern"], "kubernetes.azure.com/mode") and not re.search(key["pattern"], "bad key!")


# ---- strict types: what the API server refuses, the offline check refuses ---------------------

@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"rollout": {"maxFailures": "3"}}, "spec.rollout.maxFailures: Input should be a valid integer, not str '3'"),
        ({"rollout": {"maxUnavailable": True}},
         "spec.rollout.maxUnavailable: must be a count (an integer) or a percentage such as '25%', not True"),
        ({"rollout": {"paused": "yes"}}, "spec.rollout.paused: Input should be a valid boolean, not str 'yes'"),
        ({"removeOnDelete": 1}, "spec.removeOnDelete: Input should be a valid boolean, not int 1"),
        ({"auditd": {"rateLimit": "100"}}, "spec.auditd.rateLimit: Input should be a valid integer, not str '100'"),
        ({"rules": [5]}, "spec.rules[0]: Input should be a valid string, not int 5"),
    ],
)
def test_types_are_strict_as_the_api_server_is(spec: dict, message: str) -> None:
    assert problems(**spec) == [message]


def test_the_crd_types_match_the_strict_model() -> None:
    props = crd_spec_schema()["properties"]["rollout"]["properties"]
    assert props["maxFailures"]["type"] == "integer"
    assert props["maxUnavailable"].get("x-kubernetes-int-or-string") is True


# ---- duplicate YAML keys ---------------------------------------------------------------------------

def test_duplicate_yaml_keys_are_refused_with_their_line() -> None:
    with pytest.raises(yaml.YAMLError) as caught:
        load_yaml_documents("metadata: {name: x}\nspec:\n  presets: [procmon]\n  presets: [identity]\n")
    assert "duplicate key 'presets' (first on line 3)" in str(caught.value)
    assert caught.value.problem_mark.line == 3  # type: ignore[attr-defined]
    # The same key in two different mappings is fine.
    assert load_yaml_documents("a: {k: 1}\nb: {k: 2}\n") == [{"a": {"k": 1}, "b": {"k": 2}}]


def test_validate_refuses_a_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("apiVersion: nodeaudit.io/v1alpha1\nkind: NodeAuditPolicy\nmetadata: {name: x}\n"
                    "spec:\n  presets: [procmon]\n  verifyInterval: 6h\n  verifyInterval: 1m\n")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == (f"{path}:7: invalid YAML: duplicate key 'verifyInterval' "
                                             "(first on line 6); YAML would keep only the last")
