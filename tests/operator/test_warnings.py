"""Warnings in the cluster: the real operator against the local API and the node simulator.

A valid policy can still reach beyond itself (node-wide control lines, rules that mute other
policies) or select nothing; the operator says so in a `Warnings` condition and a Warning Event,
once per change, and the policy that suffers another's rules is told on its own status.
"""

from __future__ import annotations

import pytest

from tests.operator.operator_harness import Cluster, policy, wait_for

pytestmark = pytest.mark.operator


def _warnings(cluster: Cluster, name: str) -> dict | None:
    return cluster.condition("Warnings", name)


def test_selector_matching_no_node_is_ready_with_reason_no_matching_nodes_and_a_warning(cluster: Cluster) -> None:
    cluster.add_nodes("user1", 2)
    cluster.apply_policy(policy(nodeSelector={"matchLabels": {"agentpool": "nonexistent"}}))
    with cluster.operator():
        wait_for(lambda: (cluster.condition("Ready") or {}).get("reason") == "NoMatchingNodes", what="NoMatchingNodes")
        ready = cluster.condition("Ready")
        assert ready["status"] == "True" and "matches no Linux node" in ready["message"]
        warning = wait_for(lambda: _warnings(cluster, "procmon"), what="Warnings condition")
        assert (warning["status"], warning["reason"]) == ("True", "NoMatchingNodes")
        (event,) = wait_for(lambda: cluster.events("NoMatchingNodes"), what="NoMatchingNodes event")
        assert event["type"] == "Warning" and event["involvedObject"]["name"] == "procmon"
        assert cluster.counts() == {"matched": 0, "configured": 0, "applying": 0, "failed": 0}


def test_rule_warnings_and_muted_policies_become_conditions_and_events(cluster: Cluster) -> None:
    cluster.add_nodes("user1", 2)
    quiet = policy("a-quiet", rules=["-a never,exit -F arch=b64 -S execve -F exe=/usr/bin/runc", "-b 8192",
                                     "-a always,exit -F arch=b64 -S execve -k procmon"])
    cluster.apply_policy(quiet)
    cluster.apply_policy(policy("b-procmon"))
    with cluster.operator():
        wait_for(lambda: (cluster.condition("Ready", "a-quiet") or {}).get("status") == "True"
                 and (cluster.condition("Ready", "b-procmon") or {}).get("status") == "True", what="both Ready")
        own = wait_for(lambda: _warnings(cluster, "a-quiet"), what="a-quiet Warnings")
        assert (own["status"], own["reason"]) == ("True", "PolicyWarnings")
        assert "spec.rules[0]" in own["message"] and "spec.auditd.backlogLimit" in own["message"]
        victim = wait_for(lambda: _warnings(cluster, "b-procmon"), what="b-procmon Warnings")
        assert victim["status"] == "True" and "policy a-quiet (spec.rules[0]" in victim["message"]
        events = wait_for(lambda: [e for e in cluster.events("PolicyWarnings")
                                   if e["involvedObject"]["name"] == "b-procmon"], what="b-procmon event")
        assert len(events) == 1 and events[0]["type"] == "Warning"
        # Ready is not touched by warnings.
        assert cluster.condition("Ready", "b-procmon")["reason"] == "Configured"
        # The muting policy goes: the victim's warning clears (False), without a new Event.
        cluster.custom.delete_cluster_custom_object("nodeaudit.io", "v1alpha1", "nodeauditpolicies", "a-quiet")
        wait_for(lambda: (_warnings(cluster, "b-procmon") or {}).get("status") == "False", timeout=30,
                 what="b-procmon warning cleared")
        assert _warnings(cluster, "b-procmon")["reason"] == "NoWarnings"
        assert len([e for e in cluster.events("PolicyWarnings") if e["involvedObject"]["name"] == "b-procmon"]) == 1
