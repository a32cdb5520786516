"""The policy model: defaults, field paths in messages, and the examples."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import yaml

from nodeaudit.core import policy as policy_mod
from nodeaudit.core.policy import PolicyError, parse_duration, parse_policy
from tests.policies import EXAMPLES, policy_doc


def test_seed_policy_gets_every_default() -> None:
    policy = parse_policy(policy_doc())
    spec = policy.spec
    assert policy.name == "procmon"
    assert spec.node_selector.match_labels == {}
    assert spec.volume == "standard"
    assert spec.syslog.enabled and spec.syslog.facility == "LOG_AUTHPRIV" and spec.syslog.priority == "LOG_INFO"
    assert spec.monitoring_agent.check == "Auto"  # the default since delivery (#13)
    assert spec.monitoring_agent.extension_types == ["OmsAgentForLinux", "AzureMonitorLinuxAgent"]
    assert spec.rollout.max_unavailable == "25%" and spec.rollout.max_failures == 3
    assert spec.rollout.paused is False
    assert spec.verify_interval == "6h" and spec.remove_on_delete is True
    assert spec.unsafe.allow_immutable is False


def test_camel_case_round_trip() -> None:
    doc = policy_doc(rollout={"maxUnavailable": 5, "maxFailures": 0}, verifyInterval="1h30m")
    policy = parse_policy(doc)
    dumped = policy.model_dump(by_alias=True, exclude_none=True)
    assert dumped["spec"]["rollout"] == {"maxUnavailable": 5, "maxFailures": 0, "paused": False}
    assert parse_policy(dumped) == policy


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("6h", 21600), ("1h30m", 5400), ("7d", 604800), ("500ms", 0.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "6", "h", "-1h", "1 h", "1y", "1h-"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


# Each invalid policy names the field that is wrong; the rule grammar has its own larger table.
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("name-upper", {"metadata": {"name": "ProcMon"}}, "metadata.name"),
    ("name-long", {"metadata": {"name": "a" * 64}}, "metadata.name"),
    ("name-dot", {"metadata": {"name": "proc.mon"}}, "metadata.name"),
    ("no-name", {"metadata": {}}, "metadata.name"),
    ("no-spec", {"spec": None}, "spec"),
    ("unknown-field", {"spec": {"rulez": []}}, "spec.rulez"),
    ("no-rules", {"spec": {"rules": []}}, "no rules and no presets"),
    ("bad-rule", {"spec": {"rules": ["-a always,exit -F arch=b64 -S execvee -k x"]}}, "spec.rules[0]"),
    ("second-rule-bad", {"spec": {"rules": ["-a always,exit -F arch=b64 -S execve", "-e 2"]}}, "spec.rules[1]"),
    ("rules-not-list", {"spec": {"rules": "-a always,exit"}}, "spec.rules"),
    ("preset-unknown", {"spec": {"presets": ["procmonn"]}}, "spec.presets[0]"),
    ("volume", {"spec": {"volume": "loud"}}, "spec.volume"),
    ("facility", {"spec": {"syslog": {"facility": "LOG_KERN"}}}, "spec.syslog.facility"),
    ("priority", {"spec": {"syslog": {"priority": "info"}}}, "spec.syslog.priority"),
    ("syslog-enabled", {"spec": {"syslog": {"enabled": "maybe"}}}, "spec.syslog.enabled"),
    ("check", {"spec": {"monitoringAgent": {"check": "Oms"}}}, "spec.monitoringAgent.check"),
    ("ext-types-empty", {"spec": {"monitoringAgent": {"extensionTypes": []}}}, "spec.monitoringAgent.extensionTypes"),
    ("dcr-id", {"spec": {"monitoringAgent": {"dataCollectionRuleId": "my-dcr"}}}, "spec.monitoringAgent.dataCollectionRuleId"),
    ("workspace-id", {"spec": {"monitoringAgent": {"workspaceResourceId": "/subscriptions/x"}}}, "spec.monitoringAgent.workspaceResourceId"),
    ("oms-no-secret", {"spec": {"monitoringAgent": {"remediate": True, "remediation": {"extension": "OmsAgentForLinux"}}}}, "workspaceSecretRef"),
    ("interval", {"spec": {"monitoringAgent": {"interval": "hourly"}}}, "spec.monitoringAgent.interval"),
    ("max-unavailable-0", {"spec": {"rollout": {"maxUnavailable": 0}}}, "spec.rollout.maxUnavailable"),
    ("max-unavailable-pct", {"spec": {"rollout": {"maxUnavailable": "150%"}}}, "spec.rollout.maxUnavailable"),
    ("max-unavailable-str", {"spec": {"rollout": {"maxUnavailable": "5"}}}, "spec.rollout.maxUnavailable"),
    ("max-failures-neg", {"spec": {"rollout": {"maxFailures": -1}}}, "spec.rollout.maxFailures"),
    ("paused", {"spec": {"rollout": {"paused": "no way"}}}, "spec.rollout.paused"),
    ("verify-interval", {"spec": {"verifyInterval": "6 hours"}}, "spec.verifyInterval"),
    ("remove-on-delete", {"spec": {"removeOnDelete": "sometimes"}}, "spec.removeOnDelete"),
    ("selector-op", {"spec": {"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Like"}]}}}, "spec.nodeSelector.matchExpressions[0].operator"),
    ("selector-in-no-values", {"spec": {"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}}, "spec.nodeSelector.matchExpressions[0]"),
    ("selector-exists-values", {"spec": {"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}}, "spec.nodeSelector.matchExpressions[0]"),
    ("selector-labels", {"spec": {"nodeSelector": {"matchLabels": {"a": 1}}}}, "spec.nodeSelector.matchLabels.a"),
    ("exclude-relative", {"spec": {"exclude": {"executables": ["bin/sh"]}}}, "spec.exclude.executables"),
    ("exclude-shell", {"spec": {"exclude": {"executables": ["/bin/sh;reboot"]}}}, "spec.exclude.executables"),
    ("exclude-dir", {"spec": {"exclude": {"executables": ["/usr/bin/"]}}}, "spec.exclude.executables"),
    ("rate-limit", {"spec": {"auditd": {"rateLimit": -5}}}, "spec.auditd.rateLimit"),
    ("backlog", {"spec": {"auditd": {"backlogLimit": 1}}}, "spec.auditd.backlogLimit"),
    ("unsafe-unknown", {"spec": {"unsafe": {"allowEverything": True}}}, "spec.unsafe.allowEverything"),
    ("kind", {"kind": "Deployment"}, "kind"),
    ("api-version", {"apiVersion": "nodeaudit.io/v2"}, "apiVersion"),
]


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "metadata":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(("case", "patch", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_policies_name_the_field(case: str, patch: dict[str, Any], field: str) -> None:
    doc = _merge(policy_doc(), patch)
    with pytest.raises(PolicyError) as caught:
        parse_policy(doc)
    assert any(field in problem for problem in caught.value.problems), caught.value.problems


def test_rule_problem_keeps_the_rule_message() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(policy_doc(rules=["-a always,exit -F arch=b64 -S execve", "-a always,exit -F arch=b64 -S execvee"]))
    assert caught.value.problems == ['spec.rules[1]: unknown syscall "execvee" for arch b64']


def test_all_problems_reported_at_once() -> None:
    doc = _merge(policy_doc(), {"spec": {"volume": "x", "rollout": {"maxFailures": -1}}})
    with pytest.raises(PolicyError) as caught:
        parse_policy(doc)
    assert len(caught.value.problems) == 2


def test_unsafe_opt_in_allows_immutable() -> None:
    with pytest.raises(PolicyError, match="spec.rules"):
        parse_policy(policy_doc(rules=["-a always,exit -F arch=b64 -S execve", "-e 2"]))
    parse_policy(policy_doc(rules=["-a always,exit -F arch=b64 -S execve", "-e 2"], unsafe={"allowImmutable": True}))


def test_not_a_mapping() -> None:
    with pytest.raises(PolicyError, match="mapping"):
        parse_policy(["a"])


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate(path: Any) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        parse_policy(doc)


def test_there_are_at_least_three_examples() -> None:
    assert len(list(EXAMPLES.glob("*.yaml"))) >= 3


def test_every_field_is_documented() -> None:
    def walk(model: type[Any]) -> None:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
            annotation = info.annotation
            for candidate in getattr(annotation, "__args__", ()) + (annotation,):
                if isinstance(candidate, type) and issubclass(candidate, policy_mod._Model):
                    walk(candidate)

    walk(policy_mod.NodeAuditPolicySpec)
