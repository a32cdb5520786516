"""The shipped RBAC against what the operator really asks the API server (issue 6, "Must show").

This test runs its own representative scenario set with the real operator (so it needs no other
test to have run first): apply with the startup taint, a failing node retried until the rollout
stalls (events), a conflicting second policy, a reboot, the ContainerInsights agent check reading
kube-system/ama-logs, and deletion with removal Jobs (kopf's finalizer, bundle ConfigMap collection). Every request the operator (and kopf) made — verb, API
group, resource, subresource, namespace and, for named reads, the name — must be allowed by the
Roles/ClusterRole bound to its ServiceAccount in `kubectl kustomize deploy/`, and every verb of
every rule must have been used. Requests other operator tests recorded earlier in this session
(.cache/operator-api-requests.jsonl) are checked against the RBAC too.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import yaml

from tests import REPO
from tests.kustomize import needs_kustomize
from tests.operator.operator_harness import NAMESPACE, Cluster, policy, wait_for
from tests.rbac import Request, allowed_by, grants_for, unused_rules

pytestmark = needs_kustomize  # kubectl with a kustomize that builds deploy/ (tests/kustomize.py)

SA = "nodeaudit-operator"
GATE = {"key": "nodeaudit.io/unconfigured", "value": "true", "effect": "NoSchedule"}
# Rules allowed to go unused in this scenario set, each with the reason (empty: every rule is used).
UNUSED_ALLOWED: dict[tuple[str, str, str], str] = {}


def _rendered_rbac() -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(REPO / "deploy")], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return [o for o in yaml.safe_load_all(out) if o]


def _ama_logs(cluster: Cluster, nodes: list[str]) -> None:
    """The AKS monitoring add-on's DaemonSet, running on every node but the last."""
    cluster.core.create_namespace({"metadata": {"name": "kube-system"}})
    apps = __import__("kubernetes").client.AppsV1Api(cluster.api)
    labels = {"rsName": "ama-logs", "component": "ama-logs-agent"}
    apps.create_namespaced_daemon_set("kube-system", {
        "metadata": {"name": "ama-logs", "namespace": "kube-system"},
        "spec": {"selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "ama-logs", "image": "mcr.microsoft.com/azuremonitor/containerinsights/ciprod:3.1.24"}],
                     "nodeSelector": {"kubernetes.io/os": "linux"}, "tolerations": [{"operator": "Exists"}]}}}})
    for i, node in enumerate(nodes[:-1]):
        cluster.core.create_namespaced_pod("kube-system", {
            "metadata": {"name": f"ama-logs-{i:05d}", "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "ama-logs", "image": "x"}]},
            "status": {"phase": "Running"}})


def _scenarios(cluster: Cluster) -> None:
    plain = cluster.add_nodes("user1", 2)
    gated = cluster.add_nodes("user2", 1, taints=[GATE], vmss_suffix="87654321")
    bad = cluster.add_nodes("user2", 1, start=1, vmss_suffix="87654321")
    nodes = plain + gated + bad
    _ama_logs(cluster, nodes)
    cluster.sim.fail_nodes = {bad[0]}
    cluster.apply_policy(policy("rbac-a", monitoringAgent={"check": "ContainerInsights", "interval": "1h"},
                                rollout={"maxUnavailable": "100%", "maxFailures": 1}))
    # A later policy with other syslog settings on pool user1 only: Degraded=Conflict there.
    cluster.apply_policy(policy("rbac-b", nodeSelector={"matchLabels": {"kubernetes.azure.com/agentpool": "user1"}},
                                syslog={"enabled": True, "facility": "LOG_LOCAL6", "priority": "LOG_INFO"}))
    with cluster.operator():
        wait_for(lambda: (cluster.condition("Stalled", "rbac-a") or {}).get("status") == "True", timeout=30,
                 what="rbac-a stalled on the failing node")
        wait_for(lambda: cluster.events("RolloutStalled"), what="RolloutStalled event")
        assert not [t for t in cluster.node(gated[0])["spec"].get("taints") or [] if t["key"] == GATE["key"]]
        degraded = wait_for(lambda: (cluster.condition("Degraded", "rbac-b") or {}).get("reason") == "Conflict",
                            what="rbac-b Degraded=Conflict")
        assert degraded
        agent = wait_for(lambda: (c := cluster.condition("AgentReady", "rbac-a")) and c["reason"] != "Checking" and c,
                         what="the ContainerInsights verdict")
        assert agent["status"] == "False" and "aks-user2-87654321-vmss" in agent["message"], agent
        jobs_before = len(cluster.jobs())
        cluster.st.call(lambda: cluster.sim.reboot(plain[0]))
        wait_for(lambda: len(cluster.jobs()) > jobs_before, what="a Job for the rebooted node")
        cluster.sim.delay = 1.0  # removal takes a while: kopf retries the delete handler meanwhile
        cluster.custom.delete_cluster_custom_object("nodeaudit.io", "v1alpha1", "nodeauditpolicies", "rbac-a")
        wait_for(lambda: cluster.get_policy("rbac-a") is None, timeout=30, what="rbac-a removed")
        assert [a for _, a, _ in cluster.sim.history if a == "remove"]
        wait_for(lambda: any(e.verb == "delete" and e.resource == "configmaps" for e in cluster.operator_log()),
                 what="the old bundle ConfigMap collected")


def _requests(cluster: Cluster) -> set[Request]:
    out = set()
    for e in cluster.operator_log():
        out.add(Request(e.verb, e.group, e.resource, e.subresource or None, e.namespace or None,
                        e.name if e.verb == "get" else None))
    return out


def _suite_requests() -> set[Request]:
    path = os.environ.get("NODEAUDIT_REQUEST_LOG", str(REPO / ".cache" / "operator-api-requests.jsonl"))
    if not os.path.exists(path):
        return set()
    out = set()
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            out.add(Request(r["verb"], r["apiGroup"], r["resource"], r["subresource"] or None,
                            r["namespace"] or None, r.get("name") or None))
    return out


def test_every_recorded_request_is_allowed_and_every_rule_is_used(cluster: Cluster) -> None:
    grants = grants_for(_rendered_rbac(), NAMESPACE, SA)
    assert grants
    _scenarios(cluster)
    mine = _requests(cluster)
    assert {e.namespace for e in cluster.operator_log() if e.resource == "events"} == {NAMESPACE}

    denied = sorted((r for r in mine | _suite_requests() if not allowed_by(grants, r)), key=repr)
    assert denied == [], "requests the shipped RBAC would refuse:\n" + "\n".join(map(repr, denied))

    unused = [(g.kind, g.namespace or "", f"{r} {v}") for g, r, v in unused_rules(grants, mine)]
    unexplained = [u for u in unused if (u[0], u[1], u[2]) not in UNUSED_ALLOWED]
    assert unexplained == [], "RBAC rules no request used:\n" + "\n".join(map(repr, unexplained))
    # The check itself can fail: a request outside the RBAC is refused.
    assert not allowed_by(grants, Request("delete", "", "nodes", None, None, "x"))
    assert not allowed_by(grants, Request("get", "apps", "daemonsets", None, "kube-system", "coredns"))
