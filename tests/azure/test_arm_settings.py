"""Credential, endpoint and the adapter from the policy model."""

from __future__ import annotations

import asyncio
import os

import pytest

from nodeaudit.azure import checker as checker_mod
from nodeaudit.azure import clients as clients_mod
from nodeaudit.azure import credential as credential_mod
from nodeaudit.core import agent as agent_mod


def test_endpoint_from_env_and_https_only():
    assert credential_mod.arm_endpoint({}) == "https://management.azure.com"
    assert credential_mod.arm_endpoint({"NODEAUDIT_ARM_ENDPOINT": "https://management.chinacloudapi.cn/"}) == "https://management.chinacloudapi.cn"
    with pytest.raises(ValueError):
        credential_mod.arm_endpoint({"NODEAUDIT_ARM_ENDPOINT": "http://127.0.0.1:8080"})


def test_clients_use_the_endpoint_for_base_url_and_scope(tmp_path):
    tok = tmp_path / "t"
    tok.write_text("abc")
    clients = clients_mod.ArmClients(env={"NODEAUDIT_ARM_ENDPOINT": "https://management.usgovcloudapi.net",
                                "NODEAUDIT_ARM_TOKEN_FILE": str(tok)})
    assert isinstance(clients.credential, credential_mod.TokenFileCredential)
    kw = clients._kwargs()
    assert kw["base_url"] == "https://management.usgovcloudapi.net"
    assert kw["credential_scopes"] == ["https://management.usgovcloudapi.net/.default"]


def test_default_credential_when_no_token_file():
    from azure.identity.aio import DefaultAzureCredential

    cred = credential_mod.make_credential({})
    assert isinstance(cred, DefaultAzureCredential)
    asyncio.run(cred.close())


def test_token_file_is_reread_only_when_it_changes(tmp_path):
    p = tmp_path / "token"
    p.write_text("Bearer one\n")
    cred = credential_mod.TokenFileCredential(str(p))
    assert asyncio.run(cred.get_token("s")).token == "one"
    assert asyncio.run(cred.get_token("s")).token == "one" and cred.reads == 1
    p.write_text("two-two\n")
    os.utime(p, ns=(1, 10**18))
    assert asyncio.run(cred.get_token("s")).token == "two-two" and cred.reads == 2
    assert "two" not in repr(cred)
    p.write_text("")
    with pytest.raises(Exception, match="empty"):
        asyncio.run(cred.get_token("s"))
    p.unlink()
    with pytest.raises(Exception, match="cannot read"):
        asyncio.run(cred.get_token("s"))


def test_settings_from_the_policy_model():
    from nodeaudit.core.policy import NodeAuditPolicySpec, parse_policy

    dcr = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Insights/dataCollectionRules/d"
    policy = parse_policy({
        "apiVersion": "nodeaudit.io/v1alpha1", "kind": "NodeAuditPolicy", "metadata": {"name": "p"},
        "spec": {"presets": ["procmon"], "syslog": {"facility": "LOG_LOCAL6", "priority": "LOG_NOTICE"},
                 "monitoringAgent": {"check": "VMSSExtension", "extensionTypes": ["AzureMonitorLinuxAgent"],
                                     "dataCollectionRuleId": dcr, "interval": "30m", "remediate": True,
                                     "remediation": {"extension": "OmsAgentForLinux",
                                                     "workspaceSecretRef": {"name": "law"}}}},
    })
    s = agent_mod.settings_from_spec(policy.spec)
    assert s.extension_types == ("AzureMonitorLinuxAgent",) and s.data_collection_rule_id == dcr
    assert s.interval_seconds == 1800 and s.remediate and s.remediation_extension == "OmsAgentForLinux"
    assert s.workspace_secret == ("law", "nodeaudit-system", "workspaceId", "workspaceKey")
    assert (s.facility, s.priority) == ("LOG_LOCAL6", "LOG_NOTICE")
    d = agent_mod.settings_from_spec(NodeAuditPolicySpec.model_validate(
        {"presets": ["procmon"], "monitoringAgent": {"check": "None", "interval": "2h"}}))
    assert d.check == "None" and d.interval_seconds == 7200 and d.facility == "LOG_AUTHPRIV"
    assert checker_mod.ttl_for_interval(3600) == 3240
