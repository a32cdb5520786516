"""The operator's "must show" scenarios against the local API server and simulated nodes."""

from __future__ import annotations

import signal
import time
import urllib.request

from nodeaudit.testing import simulator as sim_mod
from tests.operator.operator_harness import Cluster, operator_process, policy, wait_for


def _scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as rsp:
            return str(rsp.read().decode())
    except OSError:
        return ""


def _ready(cluster: Cluster, name: str = "procmon") -> bool:
    return (cluster.condition("Ready", name) or {}).get("status") == "True"


def _running(cluster: Cluster) -> int:
    return sum(1 for j in cluster.jobs() if not (j.get("status") or {}).get("conditions"))


def test_fifty_nodes_never_more_than_max_unavailable(cluster: Cluster) -> None:
    cluster.sim.delay = 0.15
    cluster.apply_policy(policy(rollout={"maxUnavailable": 5, "maxFailures": 3}))
    with cluster.operator():
        wait_for(lambda: cluster.get_policy().get("status"), what="first status")
        cluster.add_nodes("user1", 25)
        cluster.add_nodes("user2", 25)
        peak = 0
        deadline = time.monotonic() + 60
        # Ready=True with 0 of 0 nodes may still be the status when the loop starts: wait for all 50.
        while not (_ready(cluster) and cluster.counts().get("matched") == 50) and time.monotonic() < deadline:
            peak = max(peak, _running(cluster))
            time.sleep(0.02)
        assert _ready(cluster)
        assert cluster.counts() == {"matched": 50, "configured": 50, "applying": 0, "failed": 0}
        assert 0 < peak <= 5
        assert cluster.sim.peak_running <= 5
        assert len(cluster.jobs()) == 50  # exactly one Job per node
        writes = [e for e in cluster.server.writes() if e.agent in ("kopf", "nodeaudit")]
        assert len(writes) / 50 <= 4, f"{len(writes)} writes for 50 nodes"


def test_boot_id_change_reapplies_on_that_node_only(cluster: Cluster) -> None:
    nodes = cluster.add_nodes("user1", 3)
    cluster.apply_policy(policy())
    with cluster.operator():
        wait_for(lambda: _ready(cluster), what="Ready")
        before = {j["metadata"]["name"] for j in cluster.jobs()}
        assert len(before) == 3
        cluster.st.call(lambda: cluster.sim.reboot(nodes[1]))
        new = wait_for(lambda: [j for j in cluster.jobs() if j["metadata"]["name"] not in before], what="new Job")
        assert [j["spec"]["template"]["spec"]["nodeName"] for j in new] == [nodes[1]]
        wait_for(lambda: _ready(cluster) and (cluster.record(nodes[1]) or {}).get("job") == new[0]["metadata"]["name"],
                 what="re-recorded")
        assert cluster.record(nodes[1])["bootID"] == cluster.node(nodes[1])["status"]["nodeInfo"]["bootID"]
        time.sleep(0.5)
        assert len(cluster.jobs()) == 4


def test_reimaged_node_uid_change_reapplies(cluster: Cluster) -> None:
    nodes = cluster.add_nodes("user1", 2)
    cluster.apply_policy(policy())
    with cluster.operator():
        wait_for(lambda: _ready(cluster), what="Ready")
        cluster.st.call(lambda: cluster.sim.reimage(nodes[0]))
        wait_for(lambda: len(cluster.jobs()) == 3, what="a Job for the reimaged node")
        wait_for(lambda: (cluster.record(nodes[0]) or {}).get("uid") == cluster.node(nodes[0])["metadata"]["uid"],
                 what="record for the new node object")


def test_failures_retry_then_stall_with_event(cluster: Cluster) -> None:
    nodes = cluster.add_nodes("user1", 4)
    cluster.sim.fail_nodes = set(nodes[:2])
    cluster.sim.fail_times = {nodes[2]: 1}  # fails once, then succeeds on retry
    cluster.apply_policy(policy(rollout={"maxUnavailable": "100%", "maxFailures": 2}))
    with cluster.operator():
        wait_for(lambda: (cluster.condition("Stalled") or {}).get("status") == "True", timeout=30, what="Stalled")
        stalled = cluster.condition("Stalled")
        assert stalled["reason"] == "MaxFailures"
        assert nodes[0] in stalled["message"] and nodes[1] in stalled["message"]
        assert cluster.condition("Ready")["status"] == "False"
        events = wait_for(lambda: cluster.events("RolloutStalled"), what="RolloutStalled event")
        assert nodes[0] in events[0]["message"] and events[0]["type"] == "Warning"
        assert cluster.events("ApplyFailed")
        # Each failing node was tried retry_limit (3) times; the flaky one twice, then ok.
        per_node: dict[str, int] = {}
        for j in cluster.jobs():
            node = j["spec"]["template"]["spec"]["nodeName"]
            per_node[node] = per_node.get(node, 0) + 1
        assert per_node[nodes[0]] == 3 and per_node[nodes[1]] == 3
        assert per_node[nodes[2]] == 2 and per_node[nodes[3]] == 1
        rec = cluster.record(nodes[0])
        assert rec["result"] == "failed" and rec["failures"] == 3 and "augenrules" in rec["error"]
        assert cluster.record(nodes[2])["result"] == "ok"
        assert cluster.counts()["failed"] == 2
        time.sleep(1.0)
        assert sum(per_node.values()) == len(cluster.jobs())  # stalled: nothing more starts


def test_invalid_policy_is_stalled_without_jobs(cluster: Cluster) -> None:
    cluster.add_nodes("user1", 2)
    bad = policy(rules=["-a always,exit -S execve -F arch=b64 -k procmon"])  # arch after -S: rejected
    cluster.apply_policy(bad)
    with cluster.operator():
        wait_for(lambda: cluster.condition("Stalled"), what="a Stalled condition")
        stalled = cluster.condition("Stalled")
        assert stalled["status"] == "True" and stalled["reason"] == "InvalidSpec"
        assert "rules[0]" in stalled["message"]
        assert cluster.condition("Ready")["status"] == "False"
        time.sleep(0.5)
        assert cluster.jobs() == []


def test_windows_and_virtual_nodes_untouched(cluster: Cluster) -> None:
    linux = cluster.add_nodes("user1", 2)
    cluster.core.create_node(sim_mod.aks_node("win1", 0, os_name="windows"))
    cluster.core.create_node(sim_mod.virtual_node())
    cluster.apply_policy(policy())
    with cluster.operator():
        wait_for(lambda: _ready(cluster), what="Ready")
        assert sorted(j["spec"]["template"]["spec"]["nodeName"] for j in cluster.jobs()) == sorted(linux)
        assert cluster.counts()["matched"] == 2
    for name in ("akswin1000000", "virtual-node-aci-linux"):
        meta = cluster.node(name)["metadata"]
        assert not [k for k in meta.get("annotations") or {} if k.startswith("nodeaudit.io/")]
        assert not meta.get("finalizers")
    assert not [e for e in cluster.server.log
                if e.resource == "nodes" and e.verb == "patch" and e.name in ("akswin1000000", "virtual-node-aci-linux")]


def test_startup_taint_removed_only_after_success(cluster: Cluster) -> None:
    taint = {"key": "nodeaudit.io/unconfigured", "value": "true", "effect": "NoSchedule"}
    other = {"key": "sku", "value": "gpu", "effect": "NoSchedule"}
    good = cluster.add_nodes("user1", 1, taints=[taint, other])[0]
    bad = cluster.add_nodes("user2", 1, taints=[taint])[0]
    cluster.sim.fail_nodes = {bad}
    cluster.apply_policy(policy())
    with cluster.operator():
        wait_for(lambda: (cluster.record(good) or {}).get("result") == "ok", what="good node recorded")
        wait_for(lambda: (cluster.record(bad) or {}).get("failures") == 3, timeout=30, what="bad node exhausted")
        assert cluster.node(good)["spec"]["taints"] == [other]
        assert cluster.node(bad)["spec"]["taints"] == [taint]


def test_conflicting_syslog_policies_later_one_degraded(cluster: Cluster) -> None:
    taint = {"key": "nodeaudit.io/unconfigured", "value": "true", "effect": "NoSchedule"}
    nodes = cluster.add_nodes("user1", 2, taints=[taint])
    cluster.apply_policy(policy("first"))
    time.sleep(1.1)  # creationTimestamp has a one-second resolution
    second = policy("second", syslog={"enabled": True, "facility": "LOG_LOCAL6", "priority": "LOG_INFO"})
    cluster.apply_policy(second)
    with cluster.operator():
        wait_for(lambda: _ready(cluster, "first"), what="first Ready")
        degraded = wait_for(lambda: (cluster.condition("Degraded", "second") or {}).get("status") == "True"
                            and cluster.condition("Degraded", "second"), what="second Degraded")
        assert degraded["reason"] == "Conflict" and "first" in degraded["message"]
        assert (cluster.condition("Degraded", "first") or {}).get("status") == "False"
        time.sleep(0.5)
        assert {j["metadata"]["labels"]["nodeaudit.io/policy"] for j in cluster.jobs()} == {"first"}
        assert cluster.record(nodes[0], "second") is None
        # The conflicting policy leaves the nodes alone, so it must not hold their startup gate.
        wait_for(lambda: all(not cluster.node(n)["spec"].get("taints") for n in nodes), what="gate opened")


def test_policy_deleted_runs_removal_then_releases_finalizer(cluster: Cluster) -> None:
    nodes = cluster.add_nodes("user1", 3)
    cluster.apply_policy(policy())
    with cluster.operator():
        wait_for(lambda: _ready(cluster), what="Ready")
        assert "nodeaudit.io/finalizer" in cluster.get_policy()["metadata"]["finalizers"]
        # One node disappears (scale-down) and one goes NotReady: removal must not wait for them.
        cluster.core.delete_node(nodes[0])
        cluster.core.patch_node_status(nodes[1], {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
        time.sleep(0.5)
        cluster.custom.delete_cluster_custom_object("nodeaudit.io", "v1alpha1", "nodeauditpolicies", "procmon")
        wait_for(lambda: cluster.get_policy() is None, timeout=20, what="policy gone")
        removal = [j for j in cluster.server.list(("batch", "v1", "jobs"))
                   if j["metadata"]["labels"].get("nodeaudit.io/action") == "remove"]
        # The removal Job ran on the Ready node; the owner's deletion then collected every Job.
        assert [(n, a) for n, a, _ in cluster.sim.history if a == "remove"] == [(nodes[2], "remove")]
        assert removal == []
        assert cluster.record(nodes[2]) is None
        assert cluster.record(nodes[1]) is None


def test_operator_killed_mid_rollout_restarts_without_duplicates(cluster: Cluster) -> None:
    cluster.sim.hold = True
    cluster.add_nodes("user1", 10)
    cluster.apply_policy(policy(rollout={"maxUnavailable": 4, "maxFailures": 3}))
    with operator_process(cluster) as proc:
        wait_for(lambda: len(cluster.jobs()) == 4, timeout=30, what="first 4 Jobs")
        # `nodeaudit run` serves /metrics (NODEAUDIT_METRICS_PORT, --metrics-address).
        line = 'nodeaudit_policy_nodes{policy="procmon",state="applying"} 4.0'
        wait_for(lambda: line in _scrape(proc.metrics_url), what=line)  # type: ignore[attr-defined]
        proc.send_signal(signal.SIGKILL)  # no cleanup, no goodbye
        proc.wait(10)
    # The operator is gone; its Jobs finish while it is away.
    cluster.st.call(cluster.sim.release)
    wait_for(lambda: all((j.get("status") or {}).get("conditions") for j in cluster.jobs()), what="Jobs done")
    first = {j["metadata"]["name"] for j in cluster.jobs()}
    with cluster.operator():
        wait_for(lambda: _ready(cluster), timeout=30, what="Ready after restart")
    names = [j["metadata"]["name"] for j in cluster.jobs()]
    assert len(names) == len(set(names)) == 10
    assert first <= set(names)
    assert cluster.counts()["configured"] == 10
