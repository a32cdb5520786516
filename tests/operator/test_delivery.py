"""Arrival end to end: the real operator, the simulated nodes' canaries shipped into the local
Log Analytics emulator, the real LogsQueryClient: canaries from 2 of 3 nodes -> Delivered False
naming the third; the two others get deliveredAt in their node records."""

from __future__ import annotations

from nodeaudit.testing.armserver import WORKSPACE_ID, ArmServer, aks_extensions, ama
from tests.operator.operator_harness import Cluster, policy, wait_for

VMSS = "aks-user1-11111111-vmss"


def test_canaries_from_two_of_three_nodes_name_the_third(cluster: Cluster, arm: ArmServer) -> None:
    arm.extensions[VMSS] = [*aks_extensions(), ama()]
    nodes = cluster.add_nodes("user1", 3, vmss_suffix="11111111")
    lost = nodes[2]
    name = "delivery"

    def ship(node: str, canary: str, at: int) -> None:  # what the node's agent puts into Syslog
        if node != lost:
            arm.ship_canary(WORKSPACE_ID, node, canary, name, at)

    cluster.sim.on_canary = ship
    cluster.apply_policy(policy(name, monitoringAgent={
        "check": "VMSSExtension", "interval": "2s", "workspaceResourceId": WORKSPACE_ID, "deliveryGrace": "1s"}))
    with cluster.operator():
        cond = wait_for(lambda: (c := cluster.condition("Delivered", name)) and c["status"] == "False" and c,
                        timeout=30, what="Delivered=False")
        assert cond["reason"] == "CanariesMissing" and lost in cond["message"], cond
        assert not any(n in cond["message"] for n in nodes[:2]) and "1 of 3" in cond["message"]
        recs = wait_for(lambda: (r := [cluster.record(n, name) for n in nodes])
                        and all(x and x.get("deliveredAt") for x in r[:2]) and r, timeout=10, what="deliveredAt")
        assert recs[0]["canaryId"].startswith(nodes[0] + ":") and "deliveredAt" not in recs[2]
        # Ready is about the nodes' configuration: an unarrived canary never changes it
        assert (cluster.condition("Ready", name) or {}).get("status") == "True"
        # one query per check, however many nodes
        assert all(q[0] == WORKSPACE_ID.lstrip("/").lower() for q in arm.queries)
