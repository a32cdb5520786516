"""Opt-in remediation through the real SDK, and the ContainerInsights check through the operator's
own async kube layer (both against the local https endpoint)."""

from __future__ import annotations

import base64
import logging

import kopf
import pytest

from nodeaudit.azure.check import check_policy_agents
from nodeaudit.controller.kube import Kube
from nodeaudit.core.agent import AgentSettings
from nodeaudit.testing.armserver import Resp, aks_extensions, ama, vmss_node

SUB = "11111111-2222-3333-4444-555555555555"
DCR = f"/subscriptions/{SUB}/resourceGroups/monitoring/providers/Microsoft.Insights/dataCollectionRules/dcr-syslog"
WS_KEY = "c2VjcmV0LXdvcmtzcGFjZS1rZXk9PQ=="


@pytest.fixture
def kube(arm, aloop):
    """The operator's own async kube layer, pointed at the local https server's Kubernetes paths."""
    api = Kube()
    api.configure(kopf.ConnectionInfo(server=arm.endpoint, ca_path=arm.ca_file))
    yield api
    aloop.run_until_complete(api.close())


def nodes(vmss: str, n: int = 2, **extra) -> list[dict]:
    return [vmss_node(f"{vmss}{i:06d}", SUB, "mc_x", vmss, i, **extra) for i in range(n)]


def test_remediation_is_off_by_default(arm, make_checker, arun):
    arm.extensions["aks-user-1-vmss"] = aks_extensions()
    report = arun(check_policy_agents(nodes("aks-user-1-vmss"), AgentSettings(check="VMSSExtension"), make_checker()))
    assert report.scale_sets[0].state == "Missing" and arm.puts == [] and arm.upgrades == []


def test_remediation_installs_ama_associates_the_dcr_and_upgrades_instances(arm, make_checker, arun):
    arm.extensions["aks-user-1-vmss"] = aks_extensions()
    arm.extensions["aks-user-2-vmss"] = [*aks_extensions(), ama()]
    checker = make_checker()
    settings = AgentSettings(check="VMSSExtension", remediate=True, data_collection_rule_id=DCR)
    arm.dcrs["dcr-syslog"] = Resp(200, {"properties": {"dataSources": {}}})
    report = arun(check_policy_agents(nodes("aks-user-1-vmss") + nodes("aks-user-2-vmss"), settings, checker))
    missing, present = report.scale_sets
    assert missing.state == "Missing" and missing.remediation.startswith("installed AzureMonitorLinuxAgent")
    assert present.remediation is None
    ((vmss, body),) = arm.puts
    assert vmss == "aks-user-1-vmss"
    assert body["properties"]["publisher"] == "Microsoft.Azure.Monitor"
    assert body["properties"]["type"] == "AzureMonitorLinuxAgent" and body["properties"]["autoUpgradeMinorVersion"]
    assert arm.upgrades == [("aks-user-1-vmss", {"instanceIds": ["*"]})]
    ((scope, assoc),) = arm.associations
    assert scope.endswith("/virtualMachineScaleSets/aks-user-1-vmss") and assoc["properties"]["dataCollectionRuleId"] == DCR
    # the next check sees the agent (the cache was invalidated for that scale set only)
    again = arun(check_policy_agents(nodes("aks-user-1-vmss") + nodes("aks-user-2-vmss"), AgentSettings(check="VMSSExtension"), checker))
    assert [s.state for s in again.scale_sets] == ["Present", "Present"]
    assert [s.cached for s in again.scale_sets] == [False, True]


def test_remediation_oms_with_workspace_key_from_a_secret(arm, make_checker, arun, kube, caplog):
    caplog.set_level(logging.DEBUG)
    arm.kube["/api/v1/namespaces/nodeaudit-system/secrets/law-keys"] = Resp(200, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "law-keys", "namespace": "nodeaudit-system"},
        "data": {"workspaceId": base64.b64encode(b"1234-ws").decode(), "workspaceKey": base64.b64encode(WS_KEY.encode()).decode()},
    })
    arm.extensions["aks-user-1-vmss"] = aks_extensions()
    settings = AgentSettings(check="VMSSExtension", remediate=True, remediation_extension="OmsAgentForLinux",
                             workspace_secret=("law-keys", "nodeaudit-system", "workspaceId", "workspaceKey"))
    report = arun(check_policy_agents(nodes("aks-user-1-vmss"), settings, make_checker(), kube=kube))
    assert report.scale_sets[0].remediation.startswith("installed OmsAgentForLinux"), report.scale_sets[0].remediation
    ((_, body),) = arm.puts
    p = body["properties"]
    assert p["publisher"] == "Microsoft.EnterpriseCloud.Monitoring" and p["type"] == "OmsAgentForLinux"
    assert p["settings"] == {"workspaceId": "1234-ws"} and p["protectedSettings"] == {"workspaceKey": WS_KEY}
    from nodeaudit.core.agent import render_json, render_table

    assert WS_KEY not in caplog.text + render_json(report) + render_table(report)


def test_remediation_oms_without_secret_is_not_attempted(arm, make_checker, arun, kube):
    arm.extensions["aks-user-1-vmss"] = aks_extensions()
    settings = AgentSettings(check="VMSSExtension", remediate=True, remediation_extension="OmsAgentForLinux",
                             workspace_secret=("missing", "nodeaudit-system", "workspaceId", "workspaceKey"))
    report = arun(check_policy_agents(nodes("aks-user-1-vmss"), settings, make_checker(), kube=kube))
    assert "not attempted" in report.scale_sets[0].remediation and arm.puts == []


def test_remediation_forbidden_is_reported(arm, make_checker, arun):
    arm.extensions["aks-user-1-vmss"] = aks_extensions()
    arm.override = lambda method, path: (
        Resp(403, {"error": {"code": "AuthorizationFailed", "message": "no write"}}) if method == "PUT" else None)
    report = arun(check_policy_agents(nodes("aks-user-1-vmss"), AgentSettings(check="VMSSExtension", remediate=True), make_checker()))
    msg = report.scale_sets[0].remediation
    assert msg.startswith("remediation failed") and "extensions/write" in msg and arm.upgrades == []


# -- ContainerInsights ------------------------------------------------------------------------------

DS_PATH = "/apis/apps/v1/namespaces/kube-system/daemonsets/ama-logs"
PODS_PATH = "/api/v1/namespaces/kube-system/pods"


def ama_logs_ds(**pod_spec) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "ama-logs", "namespace": "kube-system"},
        "spec": {"selector": {"matchLabels": {"dsName": "ama-logs-ds"}},
                 "template": {"metadata": {"labels": {"dsName": "ama-logs-ds"}},
                              "spec": {"containers": [{"name": "ama-logs", "image": "mcr.microsoft.com/azuremonitor/containerinsights/ciprod:3.1"}],
                                       "nodeSelector": {"kubernetes.io/os": "linux"}, **pod_spec}}},
    }


def pod_on(node: str, phase: str = "Running") -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"ama-logs-{node[-4:]}", "namespace": "kube-system"},
            "spec": {"nodeName": node, "containers": [{"name": "ama-logs", "image": "x"}]}, "status": {"phase": phase}}


def test_container_insights_covers_the_nodes(arm, make_checker, arun, kube):
    ns = nodes("aks-user-1-vmss", 3)
    arm.kube[DS_PATH] = Resp(200, ama_logs_ds(tolerations=[{"operator": "Exists", "effect": "NoSchedule"}]))
    arm.kube[PODS_PATH] = Resp(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod_on(n["metadata"]["name"]) for n in ns]})
    report = arun(check_policy_agents(ns, AgentSettings(check="ContainerInsights"), make_checker(), kube=kube))
    s = report.scale_sets[0]
    assert (s.state, s.agent) == ("Present", "ama-logs") and arm.list_calls() == 0


def test_container_insights_taint_not_tolerated(arm, make_checker, arun, kube):
    ns = nodes("aks-gpu-1-vmss", 2, taints=[{"key": "sku", "value": "gpu", "effect": "NoSchedule"}])
    arm.kube[DS_PATH] = Resp(200, ama_logs_ds(tolerations=[{"key": "CriticalAddonsOnly", "operator": "Exists"}]))
    arm.kube[PODS_PATH] = Resp(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})
    s = arun(check_policy_agents(ns, AgentSettings(check="ContainerInsights"), make_checker(), kube=kube)).scale_sets[0]
    assert s.state == "Missing" and "sku=gpu:NoSchedule" in s.message


def test_container_insights_admitted_but_not_yet_running(arm, make_checker, arun, kube):
    ns = nodes("aks-user-1-vmss", 2)
    arm.kube[DS_PATH] = Resp(200, ama_logs_ds())
    arm.kube[PODS_PATH] = Resp(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod_on(ns[0]["metadata"]["name"])]})
    s = arun(check_policy_agents(ns, AgentSettings(check="ContainerInsights"), make_checker(), kube=kube)).scale_sets[0]
    assert s.state == "Pending" and ns[1]["metadata"]["name"] in s.message


def test_container_insights_not_enabled_and_forbidden(arm, make_checker, arun, kube):
    ns = nodes("aks-user-1-vmss", 1)
    s = arun(check_policy_agents(ns, AgentSettings(check="ContainerInsights"), make_checker(), kube=kube)).scale_sets[0]
    assert s.state == "Missing" and "not found" in s.message
    arm.kube[DS_PATH] = Resp(403, {"kind": "Status", "code": 403, "reason": "Forbidden"})
    s = arun(check_policy_agents(ns, AgentSettings(check="ContainerInsights"), make_checker(), kube=kube)).scale_sets[0]
    assert s.state == "Error" and "403" in s.message
