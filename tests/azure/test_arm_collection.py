"""authpriv collection: DCR via azure-mgmt-monitor, legacy workspace via azure-mgmt-loganalytics."""

from __future__ import annotations

import pytest

from nodeaudit.azure.check import check_policy_agents
from nodeaudit.core.agent import AgentSettings
from nodeaudit.testing.armserver import Resp, aks_extensions, ama, dcr_body, linux_syslog, vmss_node

SUB = "11111111-2222-3333-4444-555555555555"
DCR = f"/subscriptions/{SUB}/resourceGroups/monitoring/providers/Microsoft.Insights/dataCollectionRules/dcr-syslog"
WS = f"/subscriptions/{SUB}/resourceGroups/monitoring/providers/Microsoft.OperationalInsights/workspaces/law-prod"
ALL_FROM_INFO = ["Info", "Notice", "Warning", "Error", "Critical", "Alert", "Emergency"]


def check(arun, checker, **kw):
    nodes = [vmss_node("aks-user-1-vmss000000", SUB, "mc_x", "aks-user-1-vmss")]
    return arun(check_policy_agents(nodes, AgentSettings(**{"check": "VMSSExtension", **kw}), checker))


@pytest.fixture(autouse=True)
def _agent(arm):
    arm.extensions["aks-user-1-vmss"] = [*aks_extensions(), ama()]


@pytest.mark.parametrize(("facilities", "levels", "flow", "state", "words"), [
    (["auth", "authpriv", "daemon"], ALL_FROM_INFO, True, "Collected", "authpriv.info"),
    (["*"], ["*"], True, "Collected", "collected"),
    (["auth", "daemon"], ALL_FROM_INFO, True, "NotCollected", "facility authpriv"),
    (["authpriv"], ["Warning", "Error", "Critical", "Alert", "Emergency"], True, "NotCollected", "not Info"),
    (["authpriv"], ALL_FROM_INFO, False, "NotCollected", "dataFlow"),
])
def test_dcr_syslog_source(arm, make_checker, arun, facilities, levels, flow, state, words):
    arm.dcrs["dcr-syslog"] = Resp(200, dcr_body(facilities, levels, flow=flow))
    report = check(arun, make_checker(), data_collection_rule_id=DCR)
    (c,) = report.collection
    assert (c.kind, c.state) == ("DataCollectionRule", state) and words in c.message, c
    assert report.exit_code == (0 if state == "Collected" else 1)


def test_dcr_without_syslog_and_policy_level(arm, make_checker, arun):
    body = dcr_body(["authpriv"], ["Notice"])
    arm.dcrs["dcr-syslog"] = Resp(200, body)
    (c,) = check(arun, make_checker(), data_collection_rule_id=DCR, priority="LOG_NOTICE").collection
    assert c.state == "Collected"
    body["properties"]["dataSources"] = {"performanceCounters": [{"name": "perf"}]}
    arm.dcrs["dcr-syslog"] = Resp(200, body)
    (c,) = check(arun, make_checker(), data_collection_rule_id=DCR).collection
    assert c.state == "NotCollected" and "no syslog data source" in c.message


@pytest.mark.parametrize(("resp", "words"), [
    (Resp(403, {"error": {"code": "AuthorizationFailed", "message": "no"}}), "Microsoft.Insights/dataCollectionRules/read"),
    (Resp(404, {"error": {"code": "ResourceNotFound", "message": "no"}}), "404"),
    (Resp(200, raw=b"{{"), "malformed"),
])
def test_dcr_errors(arm, make_checker, arun, resp, words):
    arm.dcrs["dcr-syslog"] = resp
    report = check(arun, make_checker(), data_collection_rule_id=DCR)
    (c,) = report.collection
    assert c.state == "Error" and words in c.message and report.exit_code == 3


def test_bad_dcr_id_is_an_error_without_a_call(arm, make_checker, arun):
    (c,) = check(arun, make_checker(), data_collection_rule_id="/subscriptions/x/nope").collection
    assert c.state == "Error" and arm.counts["GET"] == 1  # the extension list only


@pytest.mark.parametrize(("sources", "state"), [
    ([linux_syslog("DataSource_LinuxSyslog_authpriv", "authpriv", ["emerg", "alert", "crit", "err", "warning", "notice", "info"])], "Collected"),
    ([linux_syslog("ds1", "syslog", ["info"]), linux_syslog("ds2", "auth", ["info"])], "NotCollected"),
    ([linux_syslog("ds1", "authpriv", ["emerg", "alert", "crit", "err"])], "NotCollected"),
    ([], "NotCollected"),
])
def test_workspace_linux_syslog(arm, make_checker, arun, sources, state):
    arm.datasources["law-prod"] = Resp(200, {"value": sources})
    report = check(arun, make_checker(), workspace_resource_id=WS)
    (c,) = report.collection
    assert (c.kind, c.state) == ("Workspace", state), c
    # the query asks ARM for LinuxSyslog sources only
    assert any("/dataSources" in p for m, p in arm.log)


def test_workspace_403_names_the_permission(arm, make_checker, arun):
    arm.datasources["law-prod"] = Resp(403, {"error": {"code": "AuthorizationFailed", "message": "no"}})
    (c,) = check(arun, make_checker(), workspace_resource_id=WS).collection
    assert c.state == "Error" and "workspaces/dataSources/read" in c.message


def test_both_named_both_reported(arm, make_checker, arun):
    arm.dcrs["dcr-syslog"] = Resp(200, dcr_body(["authpriv"], ALL_FROM_INFO))
    arm.datasources["law-prod"] = Resp(200, {"value": []})
    report = check(arun, make_checker(), data_collection_rule_id=DCR, workspace_resource_id=WS)
    assert [c.state for c in report.collection] == ["Collected", "NotCollected"]
    from nodeaudit.core.agent import agent_condition

    cond = agent_condition(report)
    assert cond["status"] == "False" and cond["reason"] == "SyslogNotCollected" and "law-prod" in cond["message"]
