"""The VMSSExtension check through the real azure-mgmt-compute client against a local https ARM."""

from __future__ import annotations

import logging
import time

import pytest

from nodeaudit.azure.check import check_policy_agents
from nodeaudit.core import agent as A
from nodeaudit.core.agent import AgentSettings
from nodeaudit.testing.armserver import (
    SPEC_MAXIMUM,
    SPEC_MINIMUM,
    Resp,
    aks_extensions,
    ama,
    ext,
    oms,
    vmss_node,
)

SUB = "11111111-2222-3333-4444-555555555555"
RG = "MC_rg-prod_aks-prod_westeurope"


def nodes_of(vmss: str, n: int = 3, sub: str = SUB, rg: str = RG) -> list[dict]:
    return [vmss_node(f"{vmss}{i:06d}", sub, rg, vmss, i) for i in range(n)]


def run(checker, nodes, **settings):
    loop = checker.clients._test_loop
    return loop.run_until_complete(check_policy_agents(nodes, AgentSettings(**{"check": "VMSSExtension", **settings}), checker))


def one(report) -> A.ScaleSetResult:
    assert len(report.scale_sets) == 1, report
    return report.scale_sets[0]


def test_aks_scale_set_without_agent_is_missing(arm, make_checker):
    arm.extensions["aks-user-11112222-vmss"] = aks_extensions()
    s = one(run(make_checker(), nodes_of("aks-user-11112222-vmss")))
    assert s.state == "Missing" and s.agent is None
    assert "CustomScript" in s.message and "Compute.AKS.Linux.AKSNode" in s.message
    assert len(s.nodes) == 3 and s.ref.resource_group == RG.lower()


def test_aks_scale_set_with_ama_is_present(arm, make_checker):
    arm.extensions["aks-user-11112222-vmss"] = [*aks_extensions(), ama()]
    report = run(make_checker(), nodes_of("aks-user-11112222-vmss"))
    s = one(report)
    assert (s.state, s.agent, s.warnings) == ("Present", A.AMA, ())
    assert report.exit_code == 0 and report.arm_requests == 1


def test_oms_is_present_but_reported_retired(arm, make_checker):
    arm.extensions["aks-system-1-vmss"] = [*aks_extensions(), oms()]
    report = run(make_checker(), nodes_of("aks-system-1-vmss"))
    s = one(report)
    assert (s.state, s.agent) == ("Present", A.OMS)
    assert "2024-08-31" in s.warnings[0] and report.exit_code == 0
    cond = A.agent_condition(report)
    assert cond["status"] == "True" and "retired" in cond["message"]


@pytest.mark.parametrize(("state", "verdict"), [("Failed", "Failed"), ("Creating", "Pending"), ("Updating", "Pending")])
def test_agent_not_succeeded(arm, make_checker, state, verdict):
    arm.extensions["aks-user-2-vmss"] = [*aks_extensions(), ama(state)]
    report = run(make_checker(), nodes_of("aks-user-2-vmss"))
    assert one(report).state == verdict and report.exit_code == 1
    assert A.agent_condition(report)["status"] == "False"


def test_failed_ama_but_succeeded_oms_counts_as_present(arm, make_checker):
    arm.extensions["aks-user-3-vmss"] = [*aks_extensions(), ama("Failed"), oms()]
    s = one(run(make_checker(), nodes_of("aks-user-3-vmss")))
    assert (s.state, s.agent) == ("Present", A.OMS)


def test_look_alike_publisher_is_not_an_agent(arm, make_checker):
    arm.extensions["aks-user-4-vmss"] = [*aks_extensions(), ext("AzureMonitorLinuxAgent", "Contoso.Fake", "AzureMonitorLinuxAgent")]
    assert one(run(make_checker(), nodes_of("aks-user-4-vmss"))).state == "Missing"


def test_extension_types_restrict_what_counts(arm, make_checker):
    arm.extensions["aks-user-5-vmss"] = [*aks_extensions(), oms()]
    s = one(run(make_checker(), nodes_of("aks-user-5-vmss"), extension_types=("AzureMonitorLinuxAgent",)))
    assert s.state == "Missing"


def test_rest_spec_maximum_set_placeholders(arm, make_checker):
    arm.scripts["aaaaaaaaaaaaaaaaaaaa"] = [Resp(200, SPEC_MAXIMUM)]
    s = one(run(make_checker(), nodes_of("aaaaaaaaaaaaaaaaaaaa")))
    assert s.state == "Missing" and "{extension-Type}" in s.message


def test_rest_spec_minimum_set_empty_item(arm, make_checker):
    arm.scripts["aks-min-vmss"] = [Resp(200, SPEC_MINIMUM)]
    s = one(run(make_checker(), nodes_of("aks-min-vmss")))
    assert s.state == "Missing"
    assert s.extensions == ("?:?",)


def test_rest_spec_placeholder_next_link_is_an_error_not_a_crash(arm, make_checker):
    arm.scripts["aks-next-vmss"] = [Resp(200, {**SPEC_MAXIMUM, "nextLink": "aa"})]
    s = one(run(make_checker(), nodes_of("aks-next-vmss")))
    assert s.state == "Error"


def test_second_page_via_next_link(arm, make_checker):
    arm.pages["aks-paged-vmss"] = [aks_extensions(), [ama()]]
    report = run(make_checker(), nodes_of("aks-paged-vmss"))
    assert one(report).state == "Present"
    assert arm.list_calls("aks-paged-vmss") == 2 and report.arm_requests == 2


def test_429_retry_after_is_honoured_then_200(arm, make_checker):
    arm.scripts["aks-busy-vmss"] = [
        Resp(429, {"error": {"code": "TooManyRequests", "message": "throttled"}}, headers={"Retry-After": "1"}),
        Resp(200, {"value": [*aks_extensions(), ama()]}),
    ]
    t0 = time.monotonic()
    report = run(make_checker(), nodes_of("aks-busy-vmss"))
    assert one(report).state == "Present"
    assert time.monotonic() - t0 >= 0.9  # waited the Retry-After, not the (tiny) backoff
    assert arm.list_calls() == 2


def test_429_with_a_long_retry_after_is_reported_not_waited(arm, make_checker):
    arm.scripts["aks-busy-vmss"] = [Resp(429, {"error": {"code": "TooManyRequests", "message": "x"}}, headers={"Retry-After": "3600"})]
    t0 = time.monotonic()
    report = run(make_checker(max_retry_after=5.0), nodes_of("aks-busy-vmss"))
    s = one(report)
    assert s.state == "Error" and "429" in s.message and "3600" in s.message
    assert time.monotonic() - t0 < 5 and report.exit_code == 3


def test_403_names_the_permission_and_the_role(arm, make_checker):
    arm.scripts["aks-user-6-vmss"] = [Resp(403, {"error": {"code": "AuthorizationFailed", "message": (
        "The client 'x' with object id 'y' does not have authorization to perform action "
        "'Microsoft.Compute/virtualMachineScaleSets/extensions/read' over scope '/subscriptions/...'")}})]
    report = run(make_checker(), nodes_of("aks-user-6-vmss"))
    s = one(report)
    assert s.state == "Error"
    assert "Microsoft.Compute/virtualMachineScaleSets/extensions/read" in s.message
    assert "Reader on the node resource group" in s.message and "AuthorizationFailed" in s.message
    cond = A.agent_condition(report)
    assert cond["status"] == "Unknown" and cond["reason"] == "CheckFailed"
    assert arm.list_calls() == 1  # 403 is not retried


def test_500_is_retried_with_backoff_then_reported(arm, make_checker):
    arm.scripts["aks-user-7-vmss"] = [Resp(500, {"error": {"code": "InternalServerError", "message": "boom"}})]
    s = one(run(make_checker(retry_total=2), nodes_of("aks-user-7-vmss")))
    assert s.state == "Error" and "500" in s.message
    assert arm.list_calls() == 3  # first try + retry_total


def test_500_then_200_recovers(arm, make_checker):
    arm.scripts["aks-user-8-vmss"] = [Resp(500, {"error": {"code": "InternalServerError", "message": "x"}}),
                                      Resp(503, None, headers={"Retry-After": "0"}),
                                      Resp(200, {"value": [*aks_extensions(), ama()]})]
    assert one(run(make_checker(), nodes_of("aks-user-8-vmss"))).state == "Present"
    assert arm.list_calls() == 3


def test_slow_response_beyond_the_timeout(arm, make_checker):
    arm.scripts["aks-slow-vmss"] = [Resp(200, {"value": [ama()]}, delay=3.0)]
    t0 = time.monotonic()
    s = one(run(make_checker(read_timeout=0.3, retry_total=1, deadline=2.5), nodes_of("aks-slow-vmss")))
    assert s.state == "Error" and ("slow" in s.message or "deadline" in s.message)
    assert time.monotonic() - t0 < 2.9


def test_deadline_bounds_a_scale_set_whatever_the_retries(arm, make_checker):
    arm.scripts["aks-slow-vmss"] = [Resp(200, {"value": [ama()]}, delay=3.0)]
    t0 = time.monotonic()
    s = one(run(make_checker(read_timeout=10, deadline=0.5), nodes_of("aks-slow-vmss")))
    assert s.state == "Error" and "deadline" in s.message
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize("raw", [b"{not json", b'{"value": [', b"<html>502 Bad Gateway</html>"])
def test_malformed_json_is_an_error_verdict(arm, make_checker, raw):
    arm.scripts["aks-bad-vmss"] = [Resp(200, raw=raw)]
    s = one(run(make_checker(), nodes_of("aks-bad-vmss")))
    assert s.state == "Error" and "malformed" in s.message


@pytest.mark.parametrize("body", [{"value": "not-a-list"}, {"value": [1, "x", None]}, {"value": [{"properties": "str"}]},
                                  {"value": [{"properties": {"type": 5, "provisioningState": ["x"]}}]}, ["a"], 7])
def test_wrong_shapes_never_crash(arm, make_checker, body):
    arm.scripts["aks-odd-vmss"] = [Resp(200, body)]
    s = one(run(make_checker(), nodes_of("aks-odd-vmss")))
    assert s.state in ("Missing", "Error")


def test_404_scale_set_gone(arm, make_checker):
    s = one(run(make_checker(), nodes_of("aks-gone-vmss")))
    assert s.state == "Error" and "404" in s.message


def test_rejected_token_and_rotation_of_the_token_file(arm, make_checker, token_file):
    arm.extensions["aks-user-9-vmss"] = [*aks_extensions(), ama()]
    checker = make_checker(ttl=0.0)
    arm.token = "rotated-token"
    s = one(run(checker, nodes_of("aks-user-9-vmss")))
    assert s.state == "Error" and "401" in s.message
    token_file.write_text("rotated-token\n")  # the projected token rotates: picked up at once
    assert one(run(checker, nodes_of("aks-user-9-vmss"))).state == "Present"


def test_no_token_or_secret_in_logs_or_report(arm, make_checker, caplog):
    caplog.set_level(logging.DEBUG)
    arm.scripts["aks-user-10-vmss"] = [Resp(403, {"error": {"code": "AuthorizationFailed", "message": "no"}})]
    report = run(make_checker(), nodes_of("aks-user-10-vmss"))
    text = caplog.text + A.render_json(report) + A.render_table(report)
    assert arm.token not in text


def test_not_checkable_nodes_are_reported_not_crashed(arm, make_checker):
    arm.extensions["aks-user-11-vmss"] = [*aks_extensions(), ama()]
    nodes = nodes_of("aks-user-11-vmss", 1) + [
        {"metadata": {"name": "vm-pool-node"}, "spec": {"providerID": f"azure:///subscriptions/{SUB}/resourceGroups/mc_x/providers/Microsoft.Compute/virtualMachines/aks-vmpool-1"}},
        {"metadata": {"name": "kind-node"}, "spec": {"providerID": "kind://docker/kind/kind-worker"}},
        {"metadata": {"name": "fresh-node"}, "spec": {}},
        {"metadata": {"name": "win", "labels": {"kubernetes.io/os": "windows"}}, "spec": {"providerID": "azure:///x"}},
        {"metadata": {"name": "garbage"}, "spec": {"providerID": "azure:///subscriptions//resourceGroups"}},
        {"spec": None}, "not-a-dict",
    ]
    report = run(make_checker(), nodes)
    assert one(report).state == "Present" and report.exit_code == 0
    nc = report.not_checkable
    assert "VirtualMachines node pool" in nc["vm-pool-node"] and "kind" in nc["kind-node"]
    assert "providerID" in nc["fresh-node"] and "Linux" in nc["win"] and "unrecognised" in nc["garbage"]


def test_check_none_makes_no_arm_call(arm, make_checker):
    report = run(make_checker(), nodes_of("aks-user-12-vmss"), check="None")
    assert one(report).state == "Skipped" and arm.list_calls() == 0 and report.exit_code == 0
    assert A.agent_condition(report)["reason"] == "CheckDisabled"


def test_many_states_at_once_status_and_condition(arm, make_checker):
    arm.extensions["aks-a-vmss"] = [*aks_extensions(), ama()]
    arm.extensions["aks-b-vmss"] = aks_extensions()
    report = run(make_checker(), nodes_of("aks-a-vmss", 2) + nodes_of("aks-b-vmss", 4))
    assert [s.state for s in report.scale_sets] == ["Present", "Missing"]
    cond = A.agent_condition(report, observed_generation=3)
    assert cond["type"] == "AgentReady" and cond["status"] == "False" and cond["reason"] == "AgentMissing"
    assert "aks-b-vmss" in cond["message"] and "aks-a-vmss" not in cond["message"]
    assert cond["observedGeneration"] == 3 and cond["lastTransitionTime"].endswith("Z")
    status = A.agent_status(report)
    assert status[1]["scaleSet"] == "aks-b-vmss" and status[1]["nodes"] == 4 and status[1]["state"] == "Missing"
    assert report.exit_code == 1
    table = A.render_table(report)
    assert table.splitlines()[0].split() == ["SCALE", "SET", "NODES", "AGENT", "STATE", "MESSAGE"]
