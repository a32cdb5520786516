"""`rollout.paused` and `verifyInterval` end to end: the real operator, the local API, the simulator.

Why: both are promises a user relies on without watching (a paused rollout must really start
nothing, also for nodes that appear meanwhile; a drift check must come back every interval, not
more often, and must not make the policy look unready to Flux/Argo CD every time it runs).
"""

from __future__ import annotations

import datetime as dt
import json
import time

from tests.operator.operator_harness import GROUP, PLURAL, VERSION, Cluster, policy, wait_for


def _patch_spec(cluster: Cluster, spec: dict[str, object], name: str = "procmon") -> None:
    cluster.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"spec": spec})


def _reason(cluster: Cluster, type_: str) -> tuple[str, str]:
    c = cluster.condition(type_) or {}
    return str(c.get("status")), str(c.get("reason"))


def _nodes_of(jobs: list[dict[str, object]]) -> list[str]:
    return sorted(j["spec"]["template"]["spec"]["nodeName"] for j in jobs)  # type: ignore[index]


def test_paused_rollout_starts_nothing_until_unpaused(cluster: Cluster) -> None:
    nodes = cluster.add_nodes("user1", 6)
    cluster.sim.hold = True
    cluster.apply_policy(policy(rollout={"maxUnavailable": 2, "maxFailures": 3, "paused": True}))
    with cluster.operator():
        # Paused from the start: a status that says so, and no Job.
        wait_for(lambda: _reason(cluster, "Ready") == ("False", "RolloutPaused"), what="Ready=False RolloutPaused")
        assert _reason(cluster, "Reconciling") == ("False", "RolloutPaused")
        assert "paused" in cluster.condition("Reconciling")["message"]
        assert cluster.condition("Stalled")["status"] == "False"
        assert cluster.counts() == {"matched": 6, "configured": 0, "applying": 0, "failed": 0}
        # A node that appears while paused waits too.
        nodes += cluster.add_nodes("user2", 1)
        wait_for(lambda: cluster.counts().get("matched") == 7, what="the new node matched")
        time.sleep(0.8)
        assert cluster.jobs() == []
        assert cluster.sim.started == 0

        # Unpause: the rollout starts at its pace (maxUnavailable 2).
        _patch_spec(cluster, {"rollout": {"maxUnavailable": 2, "maxFailures": 3, "paused": False}})
        first = wait_for(lambda: len(cluster.jobs()) == 2 and cluster.jobs(), what="2 Jobs after unpausing")
        wait_for(lambda: _reason(cluster, "Reconciling") == ("True", "Applying"), what="Reconciling=True")

        # Pause mid-rollout: the 2 running Jobs finish and are recorded, nothing new starts.
        _patch_spec(cluster, {"rollout": {"maxUnavailable": 2, "maxFailures": 3, "paused": True}})
        wait_for(lambda: (cluster.get_policy() or {}).get("status", {}).get("observedGeneration")
                 == cluster.get_policy()["metadata"]["generation"], what="the pause observed")
        cluster.st.call(cluster.sim.release)
        wait_for(lambda: cluster.counts().get("configured") == 2
                 and _reason(cluster, "Ready") == ("False", "RolloutPaused"), what="2 configured, paused")
        assert _reason(cluster, "Reconciling") == ("False", "RolloutPaused")
        assert "2 of 7 nodes configured" in cluster.condition("Ready")["message"]
        time.sleep(1.0)
        assert sorted(j["metadata"]["name"] for j in cluster.jobs()) == sorted(j["metadata"]["name"] for j in first)

        # Unpause again: the rollout finishes, one Job per node, never more than 2 at once.
        _patch_spec(cluster, {"rollout": {"maxUnavailable": 2, "maxFailures": 3, "paused": False}})
        wait_for(lambda: _reason(cluster, "Ready") == ("True", "Configured"), timeout=30, what="Ready=True")
        assert cluster.counts() == {"matched": 7, "configured": 7, "applying": 0, "failed": 0}
        assert _reason(cluster, "Reconciling") == ("False", "Configured")
        assert _nodes_of(cluster.jobs()) == sorted(nodes)
        assert cluster.sim.peak_running <= 2
        assert all((cluster.record(n) or {}).get("result") == "ok" for n in nodes)


def _backdate_record(cluster: Cluster, node: str, seconds: float, policy_name: str = "procmon") -> None:
    """Make a node's record say its last Job ran `seconds` ago: the interval is at least 5 minutes,
    so the test moves the record back instead of waiting."""
    record = cluster.record(node, policy_name)
    assert record is not None
    then = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)
    record["time"] = then.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    cluster.core.patch_node(node, {"metadata": {"annotations": {f"nodeaudit.io/{policy_name}": json.dumps(record)}}})


def test_verify_interval_reverifies_a_node_when_its_interval_is_over_and_not_before(cluster: Cluster) -> None:
    nodes = cluster.add_nodes("user1", 2)
    cluster.apply_policy(policy(verifyInterval="5m"))
    seen: dict[str, tuple[float, str, str]] = {}  # Job name -> (first seen, node, reason)
    ready_samples: list[str] = []

    def poll() -> None:
        now = time.monotonic()
        for job in cluster.jobs():
            name = job["metadata"]["name"]
            if name not in seen:
                seen[name] = (now, job["spec"]["template"]["spec"]["nodeName"],
                              job["metadata"]["annotations"]["nodeaudit.io/reason"])

    def watch(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            poll()
            ready_samples.append(_reason(cluster, "Ready")[0])
            time.sleep(0.05)
        poll()

    with cluster.operator():
        wait_for(lambda: (cluster.condition("Ready") or {}).get("status") == "True", what="Ready")
        poll()
        assert sorted(reason for _, _, reason in seen.values()) == ["new", "new"]
        first_records = {n: cluster.record(n) for n in nodes}
        watch(2.0)  # 5 minutes are not over: nothing
        assert sorted(reason for _, _, reason in seen.values()) == ["new", "new"]
        # 4m50s ago: still not due.
        _backdate_record(cluster, nodes[0], 290)
        watch(1.5)
        assert [r for _, _, r in seen.values() if r == "verify"] == []
        # 5m10s ago: one verify Job for that node, none for the other.
        _backdate_record(cluster, nodes[0], 310)
        def verified() -> bool:
            poll()
            return any(r == "verify" for _, _, r in seen.values())

        wait_for(verified, what="a verify Job")
        watch(2.0)
    verifies = sorted(n for _, n, reason in seen.values() if reason == "verify")
    assert verifies == [nodes[0]], seen
    record = cluster.record(nodes[0])
    assert record is not None and record["result"] == "ok"
    assert record["job"] != first_records[nodes[0]]["job"]
    assert cluster.record(nodes[1]) == first_records[nodes[1]]
    # Re-verifying a configured node is not a rollout: the policy stays Ready throughout.
    assert ready_samples and set(ready_samples) == {"True"}, sorted(set(ready_samples))
    assert cluster.counts() == {"matched": 2, "configured": 2, "applying": 0, "failed": 0}
