"""The operator and the Azure credential: the chain is never started for a policy whose check cannot
run (no scale sets, `check: None`), and a credential that gives no token is one sentence naming what
to configure, once, never azure-identity's dump of every credential it tried.

The operator runs with no NODEAUDIT_ARM_TOKEN_FILE, so it would use DefaultAzureCredential. That
class is replaced here, on the module the operator imports it from: by one that fails the test when
it is made at all, or by the real chain without its managed-identity step (the one that calls the
instance metadata address), under a guard that refuses any non-loopback connect.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import time
from collections.abc import Iterator
from typing import Any

import azure.identity.aio
import pytest

from nodeaudit.azure import credential as azure_credential
from nodeaudit.testing import simulator as sim_mod
from nodeaudit.testing.armserver import ArmServer
from tests.operator.operator_harness import Cluster, policy, wait_for


@pytest.fixture
def no_token_file(arm_session: ArmServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[ArmServer]:
    """The local endpoint (so nothing could reach Azure anyway), but no token file."""
    arm_session.reset()
    monkeypatch.delenv("NODEAUDIT_ARM_TOKEN_FILE", raising=False)
    for var in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NODEAUDIT_ARM_ENDPOINT", arm_session.endpoint)
    monkeypatch.setenv("NODEAUDIT_ARM_CA_FILE", arm_session.ca_file)
    yield arm_session
    arm_session.reset()


def _vm_pool_node(cluster: Cluster, pool: str, index: int) -> str:
    """A node of a VirtualMachines node pool: an Azure VM, but no scale set to check."""
    node = sim_mod.aks_node(pool, index)
    name = node["metadata"]["name"]
    node["spec"]["providerID"] = (f"azure:///subscriptions/{sim_mod.SUBSCRIPTION}/resourceGroups/{sim_mod.NODE_RG}"
                                  f"/providers/Microsoft.Compute/virtualMachines/{name}")
    cluster.core.create_node(node)
    return name


def test_no_credential_for_a_check_that_cannot_run(cluster: Cluster, no_token_file: ArmServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []

    class NeverMade:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append("DefaultAzureCredential")
            raise AssertionError("the operator started the Azure credential chain")

    monkeypatch.setattr(azure.identity.aio, "DefaultAzureCredential", NeverMade)
    cluster.add_nodes("user1", 2, vmss_suffix="11111111")  # scale sets, but checked by nobody below
    _vm_pool_node(cluster, "vmpool", 0)
    _vm_pool_node(cluster, "vmpool", 1)
    # The default check on nodes without a scale set, and check None on nodes with one.
    cluster.apply_policy(policy("vmonly", nodeSelector={"matchLabels": {"agentpool": "vmpool"}},
                                monitoringAgent={}))
    cluster.apply_policy(policy("nocheck", nodeSelector={"matchLabels": {"agentpool": "user1"}}))
    with cluster.operator():
        vm = wait_for(lambda: cluster.condition("AgentReady", "vmonly"), what="AgentReady of vmonly")
        off = wait_for(lambda: cluster.condition("AgentReady", "nocheck"), what="AgentReady of nocheck")
        time.sleep(0.5)
    assert (vm["status"], vm["reason"]) == ("True", "NoScaleSets"), vm
    assert (off["status"], off["reason"]) == ("True", "CheckDisabled"), off
    assert made == [] and no_token_file.log == []


def test_a_credential_without_a_token_is_one_sentence(cluster: Cluster, no_token_file: ArmServer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect = socket.socket.connect
    refused: list[Any] = []

    def loopback_only(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and not ipaddress.ip_address(address[0]).is_loopback:
            refused.append(address)
            raise PermissionError(f"non-loopback connect to {address} refused by the test")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    monkeypatch.setattr(azure.identity.aio, "DefaultAzureCredential",
                        functools.partial(azure.identity.aio.DefaultAzureCredential,
                                          exclude_managed_identity_credential=True))
    cluster.add_nodes("user1", 2, vmss_suffix="11111111")
    cluster.add_nodes("user2", 2, vmss_suffix="22222222")
    cluster.apply_policy(policy("nocred", monitoringAgent={"check": "VMSSExtension", "interval": "1h"}))
    with cluster.operator():
        cond = wait_for(lambda: (c := cluster.condition("AgentReady", "nocred")) and c["reason"] != "Checking" and c,
                        timeout=30, what="AgentReady of nocred")
        # Ready is about the nodes: a missing credential leaves it alone.
        wait_for(lambda: (cluster.condition("Ready", "nocred") or {}).get("status") == "True", what="Ready")
    assert (cond["status"], cond["reason"]) == ("Unknown", "CredentialUnavailable"), cond
    assert cond["message"] == azure_credential.NO_CREDENTIAL
    assert "NODEAUDIT_ARM_TOKEN_FILE" in cond["message"] and len(cond["message"]) < 200
    assert refused == [] and no_token_file.log == []  # no request goes out without a token
