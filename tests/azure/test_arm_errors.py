"""Failure messages name the real cause: the credential's own message, the network error and the
endpoint, the permission of the step that failed; the CLI's input checks and exit codes."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
import yaml
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from click.testing import CliRunner

from nodeaudit.azure import check as check_mod
from nodeaudit.azure import checker as checker_mod
from nodeaudit.azure import clients as clients_mod
from nodeaudit.azure import credential as credential_mod
from nodeaudit.azure import facts as facts_mod
from nodeaudit.cli.check_agent import check_agent
from nodeaudit.core import agent as agent_mod
from nodeaudit.core.agent import AgentReport
from nodeaudit.testing.armserver import Resp, aks_extensions, vmss_node
from tests.azure.conftest import fast_options

SUB = "11111111-2222-3333-4444-555555555555"
DCR = f"/subscriptions/{SUB}/resourceGroups/monitoring/providers/Microsoft.Insights/dataCollectionRules/dcr-syslog"
VMSS = "aks-user-1-vmss"


def nodes(vmss: str = VMSS, n: int = 1) -> list[dict]:
    return [vmss_node(f"{vmss}{i:06d}", SUB, "mc_x", vmss, i) for i in range(n)]


def check(arm, token_path: str, aloop, *, endpoint: str | None = None, retry_note: str = "") -> AgentReport:
    clients = clients_mod.ArmClients(credential_mod.TokenFileCredential(token_path), endpoint=endpoint or arm.endpoint,
                           options=fast_options(arm, deadline=5.0))
    checker = checker_mod.AgentChecker(clients, ttl=0.0, retry_note=retry_note)
    try:
        return aloop.run_until_complete(check_mod.check_policy_agents(nodes(), agent_mod.AgentSettings(check="VMSSExtension"), checker))
    finally:
        aloop.run_until_complete(clients.close())


def test_missing_token_file_says_so_not_401(arm, aloop, tmp_path):
    s = check(arm, str(tmp_path / "nope"), aloop).scale_sets[0]
    assert s.state == "Error" and "401" not in s.message
    assert f"cannot get a token: cannot read the ARM token file {tmp_path / 'nope'}: No such file" in s.message
    assert arm.list_calls() == 0


def test_token_file_that_is_a_directory_or_not_utf8(arm, aloop, tmp_path):
    s = check(arm, str(tmp_path), aloop).scale_sets[0]
    assert f"cannot read the ARM token file {tmp_path}: Is a directory" in s.message
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00token")
    s = check(arm, str(binary), aloop).scale_sets[0]
    assert f"cannot read the ARM token file {binary}: not UTF-8 text" in s.message


def test_unreachable_endpoint_names_the_error_and_the_endpoint(arm, aloop, token_file):
    s = check(arm, str(token_file), aloop, endpoint="https://127.0.0.1:9").scale_sets[0]
    assert s.state == "Error"
    assert "Cannot connect to host 127.0.0.1:9" in s.message and "https://127.0.0.1:9" in s.message
    assert "retried" not in s.message  # the one-shot caller passes no retry note
    report = check(arm, str(token_file), aloop, endpoint="https://127.0.0.1:9", retry_note="; retried next interval")
    assert report.scale_sets[0].message.endswith("; retried next interval")


def test_every_endpoint_is_https_only(token_file):
    with pytest.raises(ValueError, match="https://"):
        clients_mod.ArmClients(credential_mod.TokenFileCredential(str(token_file)), endpoint="http://127.0.0.1:9")
    assert clients_mod.ArmClients(credential_mod.TokenFileCredential(str(token_file)), endpoint="https://x.example/").endpoint == "https://x.example"


def test_describe_error_keeps_the_cause():
    kw = {"what": "listing extensions", "permission": "p", "scope": "s", "endpoint": "https://arm.example"}
    msg = facts_mod.describe_error(ClientAuthenticationError("DefaultAzureCredential failed\n  WorkloadIdentity: no file"), **kw)
    assert msg == f"listing extensions: {credential_mod.NO_CREDENTIAL}"
    msg = facts_mod.describe_error(ServiceRequestError("Bearer token authentication is not permitted for non-TLS\nmore"), **kw)
    assert "ServiceRequestError: Bearer token authentication is not permitted for non-TLS" in msg
    assert "more" not in msg and "https://arm.example" in msg
    msg = facts_mod.describe_error(KeyError("odd"), **kw)
    assert msg.startswith("listing extensions: unexpected KeyError: 'odd'") and "https://arm.example" in msg
    assert "retried" not in facts_mod.describe_error(asyncio.TimeoutError(), **kw)
    assert facts_mod.describe_error(asyncio.TimeoutError(), **kw, retry_note="; retried next interval").endswith(
        "; retried next interval")


def test_remediation_failure_names_the_permission_of_the_step(arm, make_checker, arun):
    arm.extensions[VMSS] = aks_extensions()
    arm.override = lambda method, path: (
        Resp(403, {"error": {"code": "AuthorizationFailed", "message": "no"}})
        if method == "PUT" and "datacollectionruleassociations" in path.lower() else None)
    settings = agent_mod.AgentSettings(check="VMSSExtension", remediate=True, data_collection_rule_id=DCR)
    msg = arun(check_mod.check_policy_agents(nodes(), settings, make_checker())).scale_sets[0].remediation
    assert msg.startswith("remediation failed: associating the Data Collection Rule: 403")
    assert "Microsoft.Insights/dataCollectionRuleAssociations/write" in msg
    assert "extensions/write" not in msg and "manualUpgrade" not in msg


# -- the CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def env(arm, token_file):
    return {"NODEAUDIT_ARM_ENDPOINT": arm.endpoint, "NODEAUDIT_ARM_TOKEN_FILE": str(token_file),
            "NODEAUDIT_ARM_CA_FILE": arm.ca_file}


def invoke(args, env):
    """check-agent with the scale-set extension check (the Auto default has its own tests)."""
    if args and "--check" not in args and "--policy" not in args:
        args = [*args, "--check", "VMSSExtension"]
    return CliRunner().invoke(check_agent, args, env=env, catch_exceptions=False)


def node_file(tmp_path, *docs) -> str:
    p = tmp_path / "nodes.yaml"
    p.write_text(yaml.safe_dump_all(docs))
    return str(p)


def test_a_document_that_is_not_a_node_is_named(arm, env, tmp_path):
    path = node_file(tmp_path, nodes()[0], {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}})
    r = invoke(["--node", path], env)
    assert r.exit_code == 2 and f"--node {path}: document 2 is a Pod, not a Node" in r.output
    path = node_file(tmp_path, {"apiVersion": "v1", "kind": "List", "items": [*nodes(), {"kind": "Service"}]})
    r = invoke(["--node", path], env)
    assert r.exit_code == 2 and "document 1: items[1] is a Service, not a Node" in r.output
    assert arm.list_calls() == 0


def test_nodelist_items_without_kind_are_nodes(arm, env, tmp_path):
    arm.extensions[VMSS] = aks_extensions()
    items = [{k: v for k, v in n.items() if k not in ("kind", "apiVersion")} for n in nodes(n=2)]
    r = invoke(["--node", node_file(tmp_path, {"apiVersion": "v1", "kind": "NodeList", "items": items}), "--json"], env)
    assert r.exit_code == 1 and json.loads(r.output)["scaleSets"][0]["nodes"] == 2


def test_nothing_checkable_is_exit_3(arm, env, tmp_path):
    vm = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "vm-node"},
          "spec": {"providerID": f"azure:///subscriptions/{SUB}/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/vm0"}}
    r = invoke(["--node", node_file(tmp_path, vm)], env)
    assert r.exit_code == 3, r.output
    assert "nothing checkable: none of the 1 node(s) runs in a VM scale set" in r.output
    assert "not checkable: node vm-node" in r.output and arm.list_calls() == 0


def test_errors_are_not_repeated_on_stderr(arm, env, tmp_path):
    arm.scripts[VMSS] = [Resp(403, {"error": {"code": "AuthorizationFailed", "message": "no"}})]
    r = invoke(["--node", node_file(tmp_path, *nodes())], env)
    assert r.exit_code == 3 and "extensions/read" in r.stdout
    assert "agent check of" not in r.stderr


def test_ca_file_must_exist(env, tmp_path):
    r = invoke(["--node", node_file(tmp_path, *nodes()), "--ca-file", str(tmp_path / "none.pem")], env)
    assert r.exit_code == 2 and "does not exist" in r.output


def test_policy_file_problems_are_usage_errors(env, tmp_path):
    doc = {"apiVersion": "nodeaudit.io/v1alpha1", "kind": "NodeAuditPolicy", "spec": {"presets": ["procmon"]}}
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump_all([{**doc, "metadata": {"name": "a"}}, {**doc, "metadata": {"name": "b"}}]))
    r = invoke(["--node", node_file(tmp_path, *nodes()), "--policy", str(two)], env)
    assert r.exit_code == 2 and "pick one with --policy-name NAME" in r.output
    r = invoke(["--node", node_file(tmp_path, *nodes()), "--policy", str(two), "--policy-name", "c"], env)
    assert r.exit_code == 2 and 'no NodeAuditPolicy named "c"' in r.output


def test_cluster_without_kubeconfig_or_cluster_says_both(env, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    missing = tmp_path / "no-kubeconfig"
    r = invoke(["--cluster"], {**env, "KUBECONFIG": str(missing)})
    assert r.exit_code == 2
    text = " ".join(r.output.split())
    assert f"no kubeconfig at {missing}" in text and "not running in a cluster" in text


def test_a_credential_chain_dump_becomes_one_sentence(aloop, monkeypatch):
    """The real DefaultAzureCredential without its managed-identity step (the one that calls the
    instance metadata address): every other step fails here on local facts (no AZURE_* variables,
    no az, pwsh or azd), so its real multi-paragraph message is made with no network at all."""
    import socket

    from azure.identity.aio import DefaultAzureCredential

    for var in [v for v in os.environ if v.startswith("AZURE_")]:
        monkeypatch.delenv(var)

    def refuse(self, address):  # belt and braces: this test never connects anywhere
        raise AssertionError(f"connect to {address} attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    cred = DefaultAzureCredential(exclude_managed_identity_credential=True)
    with pytest.raises(ClientAuthenticationError) as raised:
        aloop.run_until_complete(cred.get_token("https://management.azure.com/.default"))
    aloop.run_until_complete(cred.close())
    dump = str(raised.value)
    assert "EnvironmentCredential" in dump and "\n" in dump and len(dump) > 400  # what used to be pasted
    assert credential_mod.credential_message(raised.value) == credential_mod.NO_CREDENTIAL
    msg = facts_mod.describe_error(raised.value, what="listing extensions", permission="p", scope="s")
    assert msg == f"listing extensions: {credential_mod.NO_CREDENTIAL}" and len(msg) < 200 and "\n" not in msg
    # The token-file credential's own line names the file: kept.
    assert credential_mod.credential_message(ClientAuthenticationError("the ARM token file /t is empty")) == (
        "the ARM token file /t is empty")
