"""The pure node facts (providerID, OS, readiness, the startup taint) and label selectors."""

from __future__ import annotations

import json

import pytest

from nodeaudit.core import nodes
from nodeaudit.testing import simulator as sim
from tests.core.builders import facts


def test_facts_from_aks_node() -> None:
    raw = sim.aks_node("user1", 3, taints=[{"key": nodes.STARTUP_TAINT_KEY, "effect": "NoSchedule"}])
    raw["metadata"]["uid"] = "u1"
    raw["metadata"]["annotations"]["nodeaudit.io/procmon"] = json.dumps({"result": "ok"})
    f = nodes.facts_from_node(raw)
    assert f.linux and not f.virtual and f.eligible and f.ready and f.has_startup_taint
    assert f.boot_id == raw["status"]["nodeInfo"]["bootID"] and f.pool == "user1"
    assert f.record("procmon") == {"result": "ok"} and f.record("other") is None


def test_windows_and_virtual_nodes_not_eligible() -> None:
    assert not nodes.facts_from_node(sim.aks_node("win", 0, os_name="windows")).eligible
    assert not nodes.facts_from_node(sim.virtual_node()).eligible
    assert not facts("x", provider_id="vk://aci").eligible
    assert not facts("x", deleting=True).eligible


@pytest.mark.parametrize(("selector", "expected"), [
    ({}, True),
    ({"matchLabels": {"pool": "a"}}, True),
    ({"matchLabels": {"pool": "b"}}, False),
    ({"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a", "c"]}]}, True),
    ({"matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["a"]}]}, False),
    ({"matchExpressions": [{"key": "gpu", "operator": "NotIn", "values": ["x"]}]}, True),
    ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, False),
    ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, True),
    # node affinity's Gt/Lt (the ama-logs DaemonSet's nodeSelectorTerms go through the same matcher)
    ({"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["1"]}]}, True),
    ({"matchExpressions": [{"key": "gen", "operator": "Lt", "values": ["2"]}]}, False),
    ({"matchExpressions": [{"key": "pool", "operator": "Gt", "values": ["1"]}]}, False),  # not a number
    ({"matchExpressions": [{"key": "pool", "operator": "Bogus", "values": ["a"]}]}, False),
])
def test_selector_matching(selector: dict[str, object], expected: bool) -> None:
    assert nodes.matches(selector, {"pool": "a", "gen": "2"}) is expected
