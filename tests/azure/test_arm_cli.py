"""`nodeaudit check-agent` end to end: real SDK, local https ARM, exit codes 0/1/2."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from nodeaudit.cli.check_agent import check_agent
from nodeaudit.testing.armserver import Resp, aks_extensions, ama, oms, vmss_node

SUB = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def env(arm, token_file):
    return {"NODEAUDIT_ARM_ENDPOINT": arm.endpoint, "NODEAUDIT_ARM_TOKEN_FILE": str(token_file),
            "NODEAUDIT_ARM_CA_FILE": arm.ca_file}


def write_nodes(tmp_path, *specs) -> list[str]:
    files = []
    for i, (vmss, count) in enumerate(specs):
        p = tmp_path / f"nodes{i}.yaml"
        items = [vmss_node(f"{vmss}{j:06d}", SUB, "MC_rg_aks_westeurope", vmss, j) for j in range(count)]
        p.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}) if count > 1 else yaml.safe_dump(items[0]))
        files += ["--node", str(p)]
    return files


def invoke(args, env):
    """check-agent with the scale-set extension check (the Auto default has its own tests)."""
    if args and "--check" not in args and "--policy" not in args:
        args = [*args, "--check", "VMSSExtension"]
    return CliRunner().invoke(check_agent, args, env=env, catch_exceptions=False)


def write_kubeconfig(tmp_path, arm):
    """A kubeconfig whose cluster is the local https server (it serves the Kubernetes paths too)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": arm.endpoint, "certificate-authority": arm.ca_file}}],
        "users": [{"name": "t", "user": {"token": "kube-token"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
    }))
    return kubeconfig


def test_all_present_exit_0_table(arm, env, tmp_path):
    arm.extensions["aks-user-1-vmss"] = [*aks_extensions(), ama()]
    arm.extensions["aks-sys-1-vmss"] = [*aks_extensions(), oms()]
    r = invoke(write_nodes(tmp_path, ("aks-user-1-vmss", 3), ("aks-sys-1-vmss", 1)), env)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:5] == ["SCALE", "SET", "NODES", "AGENT", "STATE"]
    assert "AzureMonitorLinuxAgent" in lines[1] and " 3 " in lines[1] and "Present" in lines[1]
    assert any("retired since 2024-08-31" in line for line in lines)
    assert arm.token not in r.output


def test_one_missing_exit_1_json(arm, env, tmp_path):
    arm.extensions["aks-user-1-vmss"] = [*aks_extensions(), ama()]
    arm.extensions["aks-user-2-vmss"] = aks_extensions()
    r = invoke([*write_nodes(tmp_path, ("aks-user-1-vmss", 2), ("aks-user-2-vmss", 2)), "--json"], env)
    assert r.exit_code == 1, r.output
    doc = json.loads(r.output)
    assert [s["state"] for s in doc["scaleSets"]] == ["Present", "Missing"]
    assert doc["exitCode"] == 1 and doc["armRequests"] == 2 and doc["scaleSets"][1]["nodes"] == 2


def test_forbidden_exit_3(arm, env, tmp_path):
    arm.scripts["aks-user-1-vmss"] = [Resp(403, {"error": {"code": "AuthorizationFailed", "message": "no"}})]
    r = invoke(write_nodes(tmp_path, ("aks-user-1-vmss", 1)), env)
    assert r.exit_code == 3 and "extensions/read" in r.output and "Reader on the node resource group" in r.output


def test_usage_errors_exit_2(arm, env, tmp_path):
    assert invoke([], env).exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\n")
    assert invoke(["--node", str(bad)], env).exit_code == 2
    r = invoke(["--node", str(bad)], {**env, "NODEAUDIT_ARM_ENDPOINT": "http://127.0.0.1:1"})
    assert r.exit_code == 2


def test_policy_settings_are_used(arm, env, tmp_path):
    arm.extensions["aks-user-1-vmss"] = [*aks_extensions(), oms()]
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "apiVersion": "nodeaudit.io/v1alpha1", "kind": "NodeAuditPolicy", "metadata": {"name": "procmon"},
        "spec": {"presets": ["procmon"], "monitoringAgent": {"check": "VMSSExtension", "extensionTypes": ["AzureMonitorLinuxAgent"]}},
    }))
    r = invoke([*write_nodes(tmp_path, ("aks-user-1-vmss", 1)), "--policy", str(policy)], env)
    assert r.exit_code == 1 and "Missing" in r.output, r.output


def test_cluster_mode_reads_nodes_through_kubeconfig(arm, env, tmp_path):
    arm.extensions["aks-user-1-vmss"] = [*aks_extensions(), ama()]
    items = [vmss_node(f"aks-user-1-vmss{j:06d}", SUB, "mc_x", "aks-user-1-vmss", j) for j in range(4)]
    arm.kube["/api/v1/nodes"] = Resp(200, {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": items})
    kubeconfig = write_kubeconfig(tmp_path, arm)
    r = invoke(["--cluster", "--kubeconfig", str(kubeconfig), "--json"], env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["scaleSets"][0]["nodes"] == 4


def test_help_has_an_example():
    r = CliRunner().invoke(check_agent, ["--help"])
    assert r.exit_code == 0 and "Example" in r.output and "nodeaudit check-agent --node" in r.output


def test_registered_in_the_nodeaudit_group():
    from nodeaudit.cli import main as cli

    if "check-agent" not in cli.main.commands:
        pytest.skip("check-agent not yet added to the nodeaudit group (cli.py, the lead's)")
    r = CliRunner().invoke(cli.main, ["check-agent", "--help"])
    assert r.exit_code == 0


def test_cluster_mode_prints_agent_collection_and_arrival(arm, env, tmp_path):
    """The three layers in one run: scale-set agents, the add-on and its DCR, the canaries."""
    import time as _time

    from nodeaudit.testing.armserver import (
        WORKSPACE_ID,
        association,
        managed_cluster,
        msci_dcr,
        resource_group,
    )

    rg, name, node_rg = "rg-prod", "aks-prod", "MC_rg-prod_aks-prod_westeurope"
    cluster_id = f"/subscriptions/{SUB}/resourcegroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{name}"
    dcr_id = f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Insights/dataCollectionRules/MSCI-westeurope-{name}"
    arm.resource_groups[node_rg.lower()] = Resp(200, resource_group(SUB, node_rg, cluster_id))
    arm.clusters[name] = Resp(200, managed_cluster(SUB, rg, name, node_rg))
    arm.dcrs[f"msci-westeurope-{name}"] = Resp(200, msci_dcr(SUB, rg, name, syslog=["authpriv"]))
    arm.rule_associations[cluster_id.lstrip("/").lower()] = [association(cluster_id, "ContainerInsightsExtension", dcr_id)]
    arm.extensions["aks-user-1-vmss"] = aks_extensions()
    at = int(_time.time()) - 3600
    items = []
    for j in range(3):
        node = vmss_node(f"aks-user-1-vmss{j:06d}", SUB, node_rg, "aks-user-1-vmss", j)
        canary = f"{node['metadata']['name']}:{'ab' * 6}:{at}-{j}"
        node["metadata"]["annotations"] = {"nodeaudit.io/procmon": json.dumps(
            {"result": "ok", "bundle": "sha256:" + "ab" * 32, "canaryId": canary, "canaryAt": at})}
        items.append(node)
        if j < 2:
            arm.ship_canary(WORKSPACE_ID, node["metadata"]["name"], canary, "procmon", at)
    arm.kube["/api/v1/nodes"] = Resp(200, {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": items})
    kubeconfig = write_kubeconfig(tmp_path, arm)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "apiVersion": "nodeaudit.io/v1alpha1", "kind": "NodeAuditPolicy", "metadata": {"name": "procmon"},
        "spec": {"presets": ["procmon"], "monitoringAgent": {"workspaceResourceId": WORKSPACE_ID}},
    }))
    r = invoke(["--cluster", "--kubeconfig", str(kubeconfig), "--policy", str(policy)],
               {**env, "NODEAUDIT_LOGS_ENDPOINT": arm.endpoint})
    assert r.exit_code == 1, r.output  # a canary is missing
    out = r.output
    assert "aks-user-1-vmss" in out.splitlines()[1] and "Missing" in out  # agent layer: no extension
    assert f"cluster: {cluster_id}: AddonOn" in out and "path: ok: ContainerInsights" in out  # collection
    assert "arrival: Delivered=False CanariesMissing" in out and "aks-user-1-vmss000002" in out  # arrival
    doc = json.loads(invoke(["--cluster", "--kubeconfig", str(kubeconfig), "--policy", str(policy), "--json"],
                            {**env, "NODEAUDIT_LOGS_ENDPOINT": arm.endpoint}).output)
    assert doc["delivery"]["missing"] == ["aks-user-1-vmss000002"] and doc["delivery"]["arrived"] == 2
