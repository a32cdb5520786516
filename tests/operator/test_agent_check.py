"""The operator's monitoring-agent check (issue 5 item 6): the real operator, the real Azure SDK,
the local https ARM endpoint. AgentReady names the scale sets without an agent, status.agent lists
every scale set, the check repeats every interval with one list call per scale set, and AgentReady
never touches Ready."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

from nodeaudit.testing.armserver import ArmServer, aks_extensions, ama
from tests.operator.operator_harness import Cluster, policy, wait_for

WITH_AGENT = "aks-user1-11111111-vmss"
WITHOUT_AGENT = "aks-user2-22222222-vmss"


def _agent_ready(cluster: Cluster, name: str) -> dict | None:
    return cluster.condition("AgentReady", name)


def _checks(name: str) -> float:
    return sum(REGISTRY.get_sample_value("nodeaudit_agent_checks_total", {"policy": name, "status": s}) or 0
               for s in ("True", "False", "Unknown"))


def test_agent_ready_names_the_scale_set_without_an_agent_then_recovers(cluster: Cluster, arm: ArmServer) -> None:
    arm.extensions[WITH_AGENT] = [*aks_extensions(), ama()]
    arm.extensions[WITHOUT_AGENT] = aks_extensions()
    cluster.add_nodes("user1", 2, vmss_suffix="11111111")
    cluster.add_nodes("user2", 2, vmss_suffix="22222222")
    name = "agentcheck"
    cluster.apply_policy(policy(name, monitoringAgent={"check": "VMSSExtension", "interval": "2s"}))
    with cluster.operator():
        cond = wait_for(lambda: (c := _agent_ready(cluster, name)) and c["status"] == "False" and c,
                        timeout=20, what="AgentReady=False")
        assert cond["reason"] == "AgentMissing"
        assert WITHOUT_AGENT in cond["message"] and WITH_AGENT not in cond["message"]
        # Ready reflects the nodes' configuration only (kstatus), whatever the agent says.
        wait_for(lambda: (cluster.condition("Ready", name) or {}).get("status") == "True", what="Ready=True")
        assert (_agent_ready(cluster, name) or {}).get("status") == "False"
        listing = {s["scaleSet"]: s for s in cluster.get_policy(name)["status"]["agent"]}
        assert set(listing) == {WITH_AGENT, WITHOUT_AGENT}
        assert listing[WITH_AGENT]["state"] == "Present" and listing[WITH_AGENT]["agent"] == "AzureMonitorLinuxAgent"
        assert listing[WITHOUT_AGENT]["state"] == "Missing" and listing[WITHOUT_AGENT]["nodes"] == 2
        assert listing[WITH_AGENT]["lastChecked"]
        assert arm.list_calls(WITH_AGENT) >= 1 and arm.list_calls(WITHOUT_AGENT) >= 1

        arm.extensions[WITHOUT_AGENT] = [*aks_extensions(), ama()]  # someone installs the agent
        fixed_at = time.monotonic()
        cond = wait_for(lambda: (c := _agent_ready(cluster, name)) and c["status"] == "True" and c,
                        timeout=10, what="AgentReady=True on the next interval")
        assert time.monotonic() - fixed_at < 2 + 1.5  # the next interval, not a later one
        assert cond["reason"] == "AgentPresent"
        assert (cluster.condition("Ready", name) or {}).get("status") == "True"

        # Politeness: exactly one list call per scale set per check, one check per interval.
        start_checks, start = _checks(name), time.monotonic()
        time.sleep(4.5)
        checks = _checks(name) - start_checks
        assert 1 <= checks <= 4.5 / 2 + 1, checks
        total = _checks(name)
        assert arm.list_calls(WITH_AGENT) == arm.list_calls(WITHOUT_AGENT) == total, (
            arm.list_calls(WITH_AGENT), arm.list_calls(WITHOUT_AGENT), total)
        assert total <= (time.monotonic() - start) / 2 + 10  # not a busy loop


def test_check_none_makes_no_arm_call(cluster: Cluster, arm: ArmServer) -> None:
    cluster.add_nodes("user1", 2, vmss_suffix="11111111")
    cluster.apply_policy(policy("nocheck"))  # monitoringAgent.check: None
    with cluster.operator():
        wait_for(lambda: (cluster.condition("Ready", "nocheck") or {}).get("status") == "True", what="Ready")
        cond = wait_for(lambda: _agent_ready(cluster, "nocheck"), what="AgentReady")
        assert cond["status"] == "True" and cond["reason"] == "CheckDisabled"
        time.sleep(0.5)
    assert arm.log == []


def _agent_listing(cluster: Cluster, name: str) -> list[dict]:
    return list(((cluster.get_policy(name) or {}).get("status") or {}).get("agent") or [])


def test_a_new_scale_set_is_checked_at_once_with_one_list_call(cluster: Cluster, arm: ArmServer) -> None:
    """A node pool added between intervals: its scale set is listed at once (one call), the scale
    sets already checked stay cached until the interval (1h here) is up."""
    new = "aks-user3-33333333-vmss"
    arm.extensions[WITH_AGENT] = [*aks_extensions(), ama()]
    arm.extensions[WITHOUT_AGENT] = aks_extensions()
    arm.extensions[new] = aks_extensions()
    cluster.add_nodes("user1", 2, vmss_suffix="11111111")
    cluster.add_nodes("user2", 1, vmss_suffix="22222222")
    name = "newpool"
    cluster.apply_policy(policy(name, monitoringAgent={"check": "VMSSExtension", "interval": "1h"}))
    with cluster.operator():
        wait_for(lambda: len(_agent_listing(cluster, name)) == 2, timeout=20, what="the first check")
        assert (arm.list_calls(WITH_AGENT), arm.list_calls(WITHOUT_AGENT), arm.list_calls(new)) == (1, 1, 0)

        added_at = time.monotonic()
        cluster.add_nodes("user3", 2, vmss_suffix="33333333")
        listing = wait_for(lambda: (items := _agent_listing(cluster, name)) and len(items) == 3 and items,
                           timeout=15, what="the new scale set in status.agent")
        assert time.monotonic() - added_at < 15  # at once, not after the 1h interval
        by_set = {s["scaleSet"]: s for s in listing}
        assert by_set[new]["state"] == "Missing"
        cond = _agent_ready(cluster, name) or {}
        assert cond.get("status") == "False" and new in cond.get("message", "")
        time.sleep(1.0)  # no further checks follow
        assert arm.list_calls(new) == 1
        assert (arm.list_calls(WITH_AGENT), arm.list_calls(WITHOUT_AGENT)) == (1, 1)  # still cached


def test_a_plain_http_endpoint_makes_agent_ready_false_with_the_reason(
        cluster: Cluster, arm: ArmServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEAUDIT_ARM_ENDPOINT", "http://127.0.0.1:9")
    cluster.add_nodes("user1", 1, vmss_suffix="11111111")
    cluster.apply_policy(policy("badendpoint", monitoringAgent={"check": "VMSSExtension", "interval": "1h"}))
    with cluster.operator():
        cond = wait_for(lambda: (c := _agent_ready(cluster, "badendpoint")) and c["status"] == "False" and c,
                        timeout=20, what="AgentReady=False")
        assert cond["reason"] == "ArmConfigInvalid"
        assert "NODEAUDIT_ARM_ENDPOINT must be an https:// URL" in cond["message"]
    assert arm.list_calls() == 0
