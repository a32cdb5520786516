"""monitoringAgent.check: Auto through the real clients (azure-mgmt-containerservice for the cluster,
azure-mgmt-monitor for the rule associations and the rules, azure-mgmt-compute for the scale sets)
against the local https ARM emulator, with responses shaped like the public REST specifications."""

from __future__ import annotations

import time

import pytest

from nodeaudit.azure.check import check_policy_agents
from nodeaudit.core import agent as A
from nodeaudit.core.agent import AgentSettings
from nodeaudit.testing.armserver import (
    LEVELS_FROM,
    Resp,
    aks_extensions,
    ama,
    association,
    dcr_body,
    managed_cluster,
    msci_dcr,
    oms,
    resource_group,
    vmss_node,
)

SUB = "11111111-2222-3333-4444-555555555555"
RG, CLUSTER, NODE_RG = "rg-prod", "aks-prod", "MC_rg-prod_aks-prod_westeurope"
CLUSTER_ID = f"/subscriptions/{SUB}/resourcegroups/{RG}/providers/Microsoft.ContainerService/managedClusters/{CLUSTER}"
MSCI = f"MSCI-westeurope-{CLUSTER}"
MSCI_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Insights/dataCollectionRules/{MSCI}"
VMSS = ("aks-user-11112222-vmss", "aks-system-33334444-vmss")


def fleet() -> list[dict]:
    return [vmss_node(f"{v}{i:06d}", SUB, NODE_RG, v, i) for v in VMSS for i in range(3)]


def aks(arm, *, addon: bool = True, via: str = "addonProfiles", syslog: list[str] | None = None,
        levels: list[str] | None = None, associated: bool = True, agents=None) -> None:
    """A cluster as `az aks create` + `az aks enable-addons -a monitoring [--enable-syslog]` leave it."""
    arm.resource_groups[NODE_RG.lower()] = Resp(200, resource_group(SUB, NODE_RG, CLUSTER_ID))
    arm.clusters[CLUSTER] = Resp(200, managed_cluster(SUB, RG, CLUSTER, NODE_RG, addon=addon, via=via))
    if addon or associated:
        arm.dcrs[MSCI.lower()] = Resp(200, msci_dcr(SUB, RG, CLUSTER, syslog=syslog, levels=levels))
    if associated:
        arm.rule_associations[CLUSTER_ID.lstrip("/").lower()] = [
            association(CLUSTER_ID, "ContainerInsightsExtension", rule_id=MSCI_ID),
            association(CLUSTER_ID, "configurationAccessEndpoint",
                        endpoint_id=f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Insights/dataCollectionEndpoints/dce"),
        ]
    for v in VMSS:
        arm.extensions[v] = [*aks_extensions(), *(agents or [])]


def run(arun, checker, **kw) -> A.AgentReport:
    return arun(check_policy_agents(fleet(), AgentSettings(**{"check": "Auto", **kw}), checker))


def cond(report) -> dict:
    return A.agent_condition(report)


@pytest.mark.parametrize("via", ["addonProfiles", "azureMonitorProfile"])
def test_addon_with_an_authpriv_dcr_is_ready(arm, make_checker, arun, via):
    aks(arm, via=via, syslog=["auth", "authpriv", "daemon"])
    report = run(arun, make_checker())
    c = cond(report)
    assert (c["status"], c["reason"]) == ("True", "ContainerInsights"), c
    assert MSCI in c["message"] and "authpriv" in c["message"] and report.exit_code == 0
    assert report.cluster.state == "AddonOn" and report.cluster.resource_id == CLUSTER_ID
    # the scale sets are reported too: no agent extension there, and that is fine on this path
    assert [s.state for s in report.scale_sets] == ["Missing", "Missing"]


def test_addon_without_syslog_names_enable_syslog(arm, make_checker, arun):
    aks(arm, syslog=None)
    c = cond(run(arun, make_checker()))
    assert (c["status"], c["reason"]) == ("False", "SyslogNotEnabled"), c
    assert "--enable-syslog" in c["message"] and f"-g {RG} -n {CLUSTER}" in c["message"]
    assert "az aks enable-addons -a monitoring" in c["message"]


def test_dcr_with_auth_only_names_the_facility(arm, make_checker, arun):
    aks(arm, syslog=["auth", "daemon"])
    report = run(arun, make_checker())
    c = cond(report)
    assert (c["status"], c["reason"]) == ("False", "SyslogNotCollected"), c
    assert "facility authpriv" in c["message"] and MSCI in c["message"]
    assert "az monitor data-collection rule syslog update" in c["message"]
    assert "--facility-names auth authpriv daemon" in report.path.fix and report.exit_code == 1


def test_dcr_with_authpriv_at_warning_names_the_level(arm, make_checker, arun):
    aks(arm, syslog=["authpriv"], levels=LEVELS_FROM["Warning"])
    report = run(arun, make_checker())
    c = cond(report)
    assert (c["status"], c["reason"]) == ("False", "SyslogNotCollected"), c
    assert "authpriv" in c["message"] and "not Info" in c["message"]
    assert "--log-levels Info Notice Warning Error Critical Alert Emergency" in report.path.fix


def test_no_addon_but_ama_on_the_scale_sets_with_a_dcr_is_ready(arm, make_checker, arun):
    aks(arm, addon=False, associated=False, agents=[ama()])
    dcr_id = f"/subscriptions/{SUB}/resourceGroups/monitoring/providers/Microsoft.Insights/dataCollectionRules/dcr-syslog"
    arm.dcrs["dcr-syslog"] = Resp(200, dcr_body(["authpriv"], LEVELS_FROM["Info"]))
    report = run(arun, make_checker(), data_collection_rule_id=dcr_id)
    c = cond(report)
    assert (c["status"], c["reason"]) == ("True", "AzureMonitorAgent"), c
    assert report.cluster.state == "AddonOff" and [s.state for s in report.scale_sets] == ["Present", "Present"]


def test_no_addon_and_only_the_retired_agent_says_so(arm, make_checker, arun):
    aks(arm, addon=False, associated=False, agents=[oms()])
    c = cond(run(arun, make_checker()))
    assert (c["status"], c["reason"]) == ("False", "NoCollectionPath"), c
    assert "retired since 2024-08-31" in c["message"] and "--enable-syslog" in c["message"]


def test_reads_are_bounded_per_interval(arm, make_checker, arun):
    aks(arm, syslog=["authpriv"])
    checker = make_checker(ttl=3600.0)
    first = run(arun, checker)
    ops = dict(checker.clients.requests)
    # one list per scale set, the node resource group once, one cluster read, one association list, one DCR read
    assert ops == {"GET vmss.extensions": 2, "GET resourcegroup": 1, "GET aks.cluster": 1,
                   "GET dcr.associations": 1, "GET dcr": 1}, ops
    assert first.arm_requests == 6 and checker.clients.arm_reads == 6
    again = run(arun, checker)  # the same interval: nothing is read again
    assert again.arm_requests == 0 and cond(again)["status"] == "True"


def test_cluster_id_from_the_setting_reads_no_resource_group(arm, make_checker, arun, monkeypatch):
    aks(arm, syslog=["authpriv"])
    checker = make_checker()
    checker.clients.cluster_resource_id = CLUSTER_ID
    report = run(arun, checker)
    assert cond(report)["status"] == "True" and "GET resourcegroup" not in checker.clients.requests


def test_node_resource_group_without_managed_by_asks_for_the_setting(arm, make_checker, arun):
    aks(arm, addon=False, associated=False, agents=[ama()])
    arm.resource_groups[NODE_RG.lower()] = Resp(200, resource_group(SUB, NODE_RG, None))
    report = run(arun, make_checker())
    c = cond(report)
    assert report.cluster.state == "Unresolved" and A.CLUSTER_ID_SETTING in c["message"]
    assert c["status"] == "Unknown" and report.exit_code == 3


def test_429_retry_after_is_honoured(arm, make_checker, arun):
    aks(arm, syslog=["authpriv"])
    calls: list[float] = []

    def throttle_once(method, path):
        if path.endswith(f"/managedClusters/{CLUSTER}"):
            calls.append(time.monotonic())
            if len(calls) == 1:
                return Resp(429, {"error": {"code": "TooManyRequests", "message": "slow down"}}, headers={"Retry-After": "1"})
        return None

    arm.override = throttle_once
    report = run(arun, make_checker())
    assert cond(report)["status"] == "True"
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.95, calls


def test_403_on_the_cluster_names_the_role(arm, make_checker, arun):
    aks(arm, syslog=["authpriv"])
    arm.override = lambda method, path: (
        Resp(403, {"error": {"code": "AuthorizationFailed", "message": "no read"}}) if path.endswith(f"/managedClusters/{CLUSTER}") else None)
    report = run(arun, make_checker())
    c = cond(report)
    assert c["status"] == "Unknown" and report.exit_code == 3
    assert "Microsoft.ContainerService/managedClusters/read" in c["message"] and "Reader on the cluster" in c["message"]


def test_403_on_the_associations_names_the_role(arm, make_checker, arun):
    aks(arm, syslog=["authpriv"])
    arm.override = lambda method, path: (
        Resp(403, {"error": {"code": "AuthorizationFailed", "message": "no read"}})
        if path.endswith("/dataCollectionRuleAssociations") else None)
    c = cond(run(arun, make_checker()))
    assert c["status"] == "Unknown" and "Monitoring Reader on the cluster" in c["message"]


def test_auto_table_and_json_show_every_layer(arm, make_checker, arun):
    aks(arm, syslog=["authpriv"])
    report = run(arun, make_checker())
    table = A.render_table(report)
    assert "cluster: " + CLUSTER_ID in table and "path: ok: ContainerInsights" in table
    doc = A.report_to_json(report)
    assert doc["cluster"]["state"] == "AddonOn" and doc["path"]["ok"] is True
