"""A policy and three nodes: three correct Jobs, completed, recorded, Ready with counts."""

from __future__ import annotations

from tests.operator.operator_harness import NAMESPACE, Cluster, policy, wait_for


def test_three_nodes_get_jobs_and_policy_becomes_ready(cluster: Cluster) -> None:
    cluster.sim.hold = True  # keep the Jobs running until their spec is checked
    nodes = cluster.add_nodes("user1", 3)
    cluster.apply_policy(policy())
    with cluster.operator():
        jobs = wait_for(lambda: len(cluster.jobs()) == 3 and cluster.jobs(), what="3 Jobs")
        assert sorted(j["spec"]["template"]["spec"]["nodeName"] for j in jobs) == sorted(nodes)
        pol = wait_for(lambda: (cluster.get_policy() or {}).get("status", {}).get("bundle") and cluster.get_policy(),
                       what="status.bundle")
        for job in jobs:
            meta, spec = job["metadata"], job["spec"]
            pod = spec["template"]["spec"]
            node = pod["nodeName"]
            assert meta["labels"]["nodeaudit.io/policy"] == "procmon"
            assert meta["labels"]["nodeaudit.io/node"] == node
            assert meta["labels"]["nodeaudit.io/bundle"] == pol["status"]["bundle"].split(":")[1][:32]
            assert meta["ownerReferences"][0]["uid"] == pol["metadata"]["uid"]
            assert pod["hostPID"] is True and pod["automountServiceAccountToken"] is False
            assert pod["priorityClassName"] == "system-node-critical"
            assert pod["tolerations"] == [{"operator": "Exists"}]
            (container,) = pod["containers"]
            assert container["securityContext"]["privileged"] is True
            assert container["image"] == "example.azurecr.io/nodeaudit:test"
            assert container["command"] == ["sh", "/bundle/job-entry.sh"]
            assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
            assert container["resources"]["limits"] and container["resources"]["requests"]
            assert {v["name"]: v for v in pod["volumes"]}["host"]["hostPath"]["path"] == "/"
            cm = {v["name"]: v for v in pod["volumes"]}["bundle"]["configMap"]["name"]
            assert cluster.core.read_namespaced_config_map(cm, NAMESPACE).data["apply.sh"]
            assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] == 0
            assert spec["ttlSecondsAfterFinished"] > 0
        assert cluster.condition("Ready")["status"] == "False"
        assert cluster.condition("Reconciling")["status"] == "True"
        cluster.st.call(cluster.sim.release)
        wait_for(lambda: (cluster.condition("Ready") or {}).get("status") == "True", what="Ready=True")
        assert cluster.counts() == {"matched": 3, "configured": 3, "applying": 0, "failed": 0}
        pol = cluster.get_policy()
        assert pol["status"]["observedGeneration"] == pol["metadata"]["generation"]
        assert cluster.condition("Stalled")["status"] == "False"
        for node in nodes:
            rec = cluster.record(node)
            assert rec is not None and rec["result"] == "ok" and rec["bundle"] == pol["status"]["bundle"]
            assert rec["distro"] == "ubuntu-22.04" and rec["auditVersion"] == "3.0.7"
            assert rec["lost"] == 0 and rec["backlog"] == 0  # the kernel counters from the result line
            assert rec["bootID"] == cluster.node(node)["status"]["nodeInfo"]["bootID"]
        assert len(cluster.jobs()) == 3  # nothing more to do
        # Nodes carry no kopf state: no kopf annotations, no finalizers.
        for node in nodes:
            meta = cluster.node(node)["metadata"]
            assert not meta.get("finalizers")
            assert not [k for k in meta.get("annotations") or {} if "kopf" in k]
