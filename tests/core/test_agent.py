"""The pure agent logic (nodeaudit.core.agent): providerIDs, grouping, verdicts, collection, rendering."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeaudit.core import agent as A

SUB = "11111111-2222-3333-4444-555555555555"
PID = f"azure:///subscriptions/{SUB}/resourceGroups/mc_rg_aks_westeurope/providers/Microsoft.Compute/virtualMachineScaleSets/aks-user-12345678-vmss/virtualMachines/3"


def node(name: str, pid: object = PID, **labels: str) -> dict:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", **labels}}, "spec": {"providerID": pid}}


def test_parse_vmss_provider_id():
    ref = A.parse_provider_id(PID)
    assert ref == A.ScaleSetRef(SUB, "mc_rg_aks_westeurope", "aks-user-12345678-vmss")
    assert ref.resource_id.endswith("/providers/Microsoft.Compute/virtualMachineScaleSets/aks-user-12345678-vmss")
    assert ref.label == "mc_rg_aks_westeurope/aks-user-12345678-vmss"


@pytest.mark.parametrize(("pid", "words"), [
    (None, "no spec.providerID"), ("", "no spec.providerID"),
    (f"azure:///subscriptions/{SUB}/resourceGroups/mc_x/providers/Microsoft.Compute/virtualMachines/aks-vm-1", "VirtualMachines node pool"),
    ("aws:///eu-west-1a/i-0123", "not an Azure node"), ("kind://docker/kind/kind-worker", "'kind'"),
    ("azure:///subscriptions/x", "unrecognised"), ("no-scheme", "not an Azure node"), (42, "no spec.providerID"),
])
def test_not_checkable_provider_ids(pid, words):
    v = A.parse_provider_id(pid)
    assert isinstance(v, A.NotCheckable) and words in v.reason


@given(st.one_of(st.none(), st.integers(), st.text(), st.text().map(lambda s: "azure:///subscriptions/" + s)))
def test_parse_provider_id_never_raises(pid):
    assert isinstance(A.parse_provider_id(pid), A.ScaleSetRef | A.NotCheckable)


def test_grouping_is_case_insensitive_and_keeps_order():
    upper = PID.replace("mc_rg_aks_westeurope", "MC_RG_AKS_WESTEUROPE")
    g = A.group_nodes([node("a"), node("b", upper), node("c", None), node("w", PID, **{"kubernetes.io/os": "windows"})])
    (ref, names), = g.scale_sets.items()
    assert names == ["a", "b"] and set(g.not_checkable) == {"c", "w"}


def fact(typ, publisher, state="Succeeded", name=None):
    return A.ExtensionFact(name=name or typ, type=typ, publisher=publisher, provisioning_state=state)


AKS = [fact("CustomScript", "Microsoft.Azure.Extensions", name="vmssCSE"),
       fact("Compute.AKS.Linux.Billing", "Microsoft.AKS", name="AKSLinuxBilling")]


@pytest.mark.parametrize(("exts", "state", "agent"), [
    (AKS, "Missing", None), ([], "Missing", None),
    ([*AKS, fact("AzureMonitorLinuxAgent", "Microsoft.Azure.Monitor")], "Present", A.AMA),
    ([*AKS, fact("azuremonitorlinuxagent", "microsoft.azure.monitor")], "Present", A.AMA),
    ([*AKS, fact("OmsAgentForLinux", "Microsoft.EnterpriseCloud.Monitoring")], "Present", A.OMS),
    ([*AKS, fact("AzureMonitorLinuxAgent", "Microsoft.Azure.Monitor", "Failed")], "Failed", A.AMA),
    ([*AKS, fact("AzureMonitorLinuxAgent", "Microsoft.Azure.Monitor", None)], "Failed", A.AMA),
    ([*AKS, fact("AzureMonitorLinuxAgent", "Microsoft.Azure.Monitor", "Creating")], "Pending", A.AMA),
    ([*AKS, fact("AzureMonitorLinuxAgent", "Evil.Corp")], "Missing", None),
    ([A.ExtensionFact(None, None, None, None)], "Missing", None),
])
def test_extension_verdict(exts, state, agent):
    v = A.extension_verdict(exts, A.DEFAULT_EXTENSION_TYPES)
    assert (v.state, v.agent) == (state, agent)
    assert bool(v.warnings) == any(e.type and e.type.lower() == "omsagentforlinux" for e in exts)


def test_empty_extension_types_is_an_error():
    assert A.extension_verdict(AKS, []).state == "Error"


@pytest.mark.parametrize(("text", "name"), [("LOG_AUTHPRIV", "authpriv"), ("authpriv", "authpriv"), ("LOG_LOCAL6", "local6")])
def test_facility_names(text, name):
    assert A.facility_name(text) == name


@pytest.mark.parametrize(("text", "name"), [("LOG_INFO", "info"), ("Info", "info"), ("Emergency", "emerg"), ("LOG_ERR", "err")])
def test_severity_names(text, name):
    assert A.severity_name(text) == name


def test_unknown_facility_and_level():
    with pytest.raises(ValueError):
        A.facility_name("LOG_NOPE")
    with pytest.raises(ValueError):
        A.severity_name("loud")


def test_dcr_verdicts():
    src = A.SyslogSource("s", ("authpriv",), ("Info", "Notice"), ("Microsoft-Syslog",))
    assert A.dcr_collection_verdict("id", [src], ["Microsoft-Syslog"], "LOG_AUTHPRIV", "LOG_INFO").state == "Collected"
    assert A.dcr_collection_verdict("id", [src], [], "LOG_AUTHPRIV", "LOG_INFO").state == "NotCollected"
    assert A.dcr_collection_verdict("id", [src], ["Microsoft-Syslog"], "LOG_AUTHPRIV", "LOG_DEBUG").state == "NotCollected"
    odd = A.SyslogSource("s", ("authpriv", "bogus"), ("bogus", "*"), ())
    assert A.dcr_collection_verdict("id", [odd], ["Microsoft-Syslog"], "LOG_AUTHPRIV", "LOG_INFO").state == "Collected"


def test_pod_spec_admits_node():
    n = node("a", **{"agentpool": "gpu"})
    n["spec"]["taints"] = [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}, {"key": "x", "effect": "PreferNoSchedule"}]
    assert not A.pod_spec_admits_node({}, n)[0]
    assert A.pod_spec_admits_node({"tolerations": [{"key": "sku", "operator": "Equal", "value": "gpu"}]}, n)[0]
    assert A.pod_spec_admits_node({"tolerations": [{"operator": "Exists"}]}, n)[0]
    assert not A.pod_spec_admits_node({"tolerations": [{"operator": "Exists"}], "nodeSelector": {"agentpool": "cpu"}}, n)[0]
    aff = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.azure.com/cluster", "operator": "Exists"}]}]}}}
    assert A.pod_spec_admits_node({"tolerations": [{"operator": "Exists"}], "affinity": aff}, n) == (False, "required node affinity does not match")


def test_os_label_as_the_operator_reads_it():
    beta = {"metadata": {"name": "w", "labels": {"beta.kubernetes.io/os": "windows"}},
            "spec": {"providerID": "azure:///subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/"
                                   "virtualMachineScaleSets/v/virtualMachines/0"}}
    where = A.node_scale_set(beta)
    assert isinstance(where, A.NotCheckable) and "windows" in where.reason


def test_report_exit_codes_condition_and_renderers():
    ref = A.ScaleSetRef(SUB, "rg", "vmss-a")
    ok = A.ScaleSetResult(ref, ["n1"], "Present", A.AMA, "fine")
    r = A.AgentReport("VMSSExtension", [ok])
    assert r.exit_code == 0 and A.agent_condition(r)["reason"] == "AgentPresent"
    r.scale_sets.append(A.ScaleSetResult(A.ScaleSetRef(SUB, "rg", "vmss-b"), ["n2"], "Missing", None, "none"))
    assert r.exit_code == 1
    r.scale_sets.append(A.ScaleSetResult(A.ScaleSetRef(SUB, "rg", "vmss-c"), ["n3"], "Error", None, "403"))
    assert r.exit_code == 3
    cond = A.agent_condition(r)
    assert cond["status"] == "False" and "vmss-b" in cond["message"] and "403" in cond["message"]
    doc = json.loads(A.render_json(r))
    assert [s["state"] for s in doc["scaleSets"]] == ["Present", "Missing", "Error"]
    assert "vmss-c" in A.render_table(r)
    assert A.agent_condition(A.AgentReport("VMSSExtension"))["reason"] == "NoScaleSets"
