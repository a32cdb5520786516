"""The operator under faults (issue 15): the real kopf operator behind the fault-injecting proxy.

Each test asserts on API objects (Jobs, Node records, the policy and its status, Events) read past
the proxy, straight from the local API server. The proxy's randomness is seeded
(``NODEAUDIT_FAULT_SEED``, default ``faults.DEFAULT_SEED``).
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import kubernetes
import pytest
import yaml

from nodeaudit.testing import apiserver, faults
from nodeaudit.testing import simulator as sim_mod
from tests.operator.operator_harness import NAMESPACE, Cluster, operator_process, policy, wait_for

pytestmark = [pytest.mark.operator, pytest.mark.faults]

GROUP, VERSION, PLURAL = "nodeaudit.io", "v1alpha1", "nodeauditpolicies"


@pytest.fixture
def proxy(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[faults.FaultProxy]:
    """The fault proxy in front of the cluster's API server; the operator's kubeconfig points at it."""
    fp = cluster.st.submit(faults.FaultProxy(cluster.st.url).start()).result(10)
    print(f"fault proxy seed {fp.seed} (repeat with {faults.SEED_ENV}={fp.seed})")  # shown when a test fails
    path = tmp_path / "kubeconfig-through-faults.yaml"
    path.write_text(yaml.safe_dump(apiserver.kubeconfig(fp.url)))
    monkeypatch.setenv("KUBECONFIG", str(path))
    try:
        yield fp
    finally:
        cluster.st.submit(fp.stop()).result(10)


class JobsSeen:
    """Every Job the API server stored, in order (Jobs are collected with their policy, so the
    end state alone cannot show which ran)."""

    def __init__(self, cluster: Cluster) -> None:
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self._cluster = cluster
        cluster.st.call(lambda: cluster.server.listeners.append(self._on))

    def _on(self, res: tuple[str, str, str], kind: str, obj: dict[str, Any]) -> None:
        if res != sim_mod.JOBS:
            return
        if kind == "ADDED":
            self.created.append(obj)
        elif kind == "DELETED":
            self.deleted.append(obj["metadata"]["name"])

    def names(self, action: str | None = None) -> list[str]:
        return [j["metadata"]["name"] for j in self.created
                if action is None or j["metadata"]["labels"].get("nodeaudit.io/action") == action]

    def at_least(self, action: str, count: int) -> Callable[[], bool]:
        """A wait_for predicate: ``count`` Jobs of ``action`` were created."""
        return lambda: len(self.names(action)) >= count

    def nodes(self, action: str) -> list[str]:
        return [j["spec"]["template"]["spec"]["nodeName"] for j in self.created
                if j["metadata"]["labels"].get("nodeaudit.io/action") == action]


def _ready(cluster: Cluster, name: str = "procmon") -> bool:
    return (cluster.condition("Ready", name) or {}).get("status") == "True"


def _delete_policy(cluster: Cluster, name: str = "procmon") -> None:
    cluster.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)


def _node_of(job: dict[str, Any]) -> str:
    return str(job["spec"]["template"]["spec"]["nodeName"])


# ---- the harness itself -----------------------------------------------------------------------

def test_proxy_injects_each_fault(cluster: Cluster, proxy: faults.FaultProxy) -> None:
    api = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=proxy.url))
    core: Any = cast(Any, kubernetes.client.CoreV1Api(api))  # takes a dict body
    node = sim_mod.aks_node("user1", 1)
    name = node["metadata"]["name"]

    proxy.fail(503, resource="nodes", verb="create")
    with pytest.raises(kubernetes.client.ApiException) as e:
        core.create_node(node)
    assert e.value.status == 503
    assert cluster.server.get(sim_mod.NODES, None, name) is None  # never reached the server

    proxy.land_then_fail(500, resource="nodes", verb="create")
    with pytest.raises(kubernetes.client.ApiException) as e:
        core.create_node(node)
    assert e.value.status == 500
    assert cluster.server.get(sim_mod.NODES, None, name) is not None  # the write landed
    core.read_node(name)  # spent: the next call goes through

    rv = core.list_node().metadata.resource_version
    proxy.gone_on_resume("nodes")
    url = f"{proxy.url}/api/v1/nodes?watch=true&resourceVersion={rv}&timeoutSeconds=1"
    with urllib.request.urlopen(url, timeout=5) as rsp:
        assert json.loads(rsp.readline())["object"]["code"] == 410
    assert [c.verb for c in proxy.calls("gone")] == ["watch"]

    # A cut ends an open watch abruptly; a held watch is not answered until released.
    with urllib.request.urlopen(f"{proxy.url}/api/v1/nodes?watch=true&timeoutSeconds=30", timeout=10) as rsp:
        assert json.loads(rsp.readline())["type"] == "ADDED"
        proxy.cut_watches("nodes")
        with pytest.raises(Exception):  # noqa: B017 - http.client's IncompleteRead or a reset
            rsp.read()
    proxy.hold_watches("nodes")
    held = cluster.st.submit(_watch_first_line(proxy.url))
    with pytest.raises(TimeoutError):
        held.result(0.5)
    proxy.release_watches()
    assert json.loads(held.result(5))["type"] == "ADDED"

    proxy.latency = 0.2
    started = time.monotonic()
    core.read_node(name)
    assert time.monotonic() - started >= 0.2
    proxy.latency = 0.0

    proxy.refuse_for(1.0)
    wait_for(lambda: not _connects(proxy.port), timeout=5, what="connections refused")
    wait_for(lambda: _connects(proxy.port), timeout=10, what="the proxy listens again")
    core.api_client.rest_client.pool_manager.clear()  # its kept-alive connection was dropped
    core.read_node(name)
    assert proxy.seed == faults.seed_from_env()


async def _watch_first_line(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, \
            session.get(f"{url}/api/v1/nodes?watch=true&timeoutSeconds=5") as rsp:
        return await rsp.content.readline()


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except ConnectionRefusedError:
        return False


def test_seed_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.SEED_ENV, "4242")
    assert faults.seed_from_env() == 4242
    monkeypatch.setenv(faults.SEED_ENV, "four")
    with pytest.raises(ValueError, match="NODEAUDIT_FAULT_SEED='four': expected a whole number"):
        faults.seed_from_env()
    monkeypatch.delenv(faults.SEED_ENV)
    assert faults.seed_from_env() == faults.DEFAULT_SEED


# ---- case 1: a running Job deleted by someone else -----------------------------------------

def _held_rollout(cluster: Cluster, nodes: int) -> JobsSeen:
    """``nodes`` nodes and the policy; the simulator holds the Jobs running until released."""
    seen = JobsSeen(cluster)
    cluster.sim.hold = True
    cluster.add_nodes("user1", nodes)
    cluster.apply_policy(policy())
    return seen


def test_running_job_deleted_by_someone_else(cluster: Cluster, proxy: faults.FaultProxy) -> None:
    seen = _held_rollout(cluster, 3)
    with cluster.operator():
        jobs = wait_for(lambda: len(cluster.jobs()) == 3 and cluster.jobs(), what="3 running Jobs")
        victim = jobs[0]["metadata"]["name"]
        node = _node_of(jobs[0])
        cluster.batch.delete_namespaced_job(victim, NAMESPACE, propagation_policy="Background")
        # A clear per-node state at once: the node's record says its Job went away unfinished.
        record = wait_for(lambda: (cluster.record(node) or {}).get("result") == "failed" and cluster.record(node),
                          timeout=10, what="a failed record naming the deleted Job")
        assert victim in record["error"] and "deleted" in record["error"]
        cluster.st.call(cluster.sim.release)
        wait_for(lambda: _ready(cluster) and (cluster.record(node) or {}).get("result") == "ok",
                 timeout=30, what="the node configured by a new Job")
    assert cluster.record(node)["job"] != victim
    assert seen.names().count(victim) == 1  # never made twice
    assert seen.nodes("apply").count(node) == 2


# ---- case 2: the policy deleted mid-rollout with removeOnDelete ------------------------------

def test_policy_deleted_mid_rollout_removes_from_every_node(cluster: Cluster, proxy: faults.FaultProxy) -> None:
    seen = JobsSeen(cluster)
    cluster.sim.hold = True
    nodes = cluster.add_nodes("user1", 8)
    cluster.apply_policy(policy(rollout={"maxUnavailable": 4, "maxFailures": 3}, removeOnDelete=True))
    with cluster.operator():
        wait_for(lambda: len(cluster.jobs()) == 4, what="4 apply Jobs running")
        _delete_policy(cluster)
        time.sleep(0.5)  # the deletion has begun while the apply Jobs run
        # They finish now, after the delete began: each of them configured its node.
        cluster.st.call(cluster.sim.release)
        wait_for(lambda: cluster.get_policy() is None, timeout=40, what="the policy gone")
    applied = set(seen.nodes("apply"))
    assert len(applied) == 4, "no new apply Job may start once the deletion began"
    assert applied <= set(seen.nodes("remove")), "every node that may hold the rules got the removal"
    # Each removal ran after that node's apply Job (the order the simulator ran them in).
    for node in applied:
        order = [a for n, a, _ in cluster.sim.history if n == node]
        assert order == ["apply", "remove"], (node, order)
    assert all(cluster.record(n) is None for n in nodes)


# ---- case 3: a node deleted while the node watch is down, resumed with 410 Gone --------------

def test_node_deleted_while_watch_down_with_410_resume(cluster: Cluster, proxy: faults.FaultProxy) -> None:
    nodes = cluster.add_nodes("user1", 8)
    cluster.apply_policy(policy())
    with cluster.operator():
        wait_for(lambda: _ready(cluster) and cluster.counts().get("configured") == 8, timeout=30, what="Ready 8")
        proxy.hold_watches("nodes")
        time.sleep(0.3)
        cluster.core.delete_node(nodes[0])
        proxy.gone_on_resume("nodes")
        proxy.release_watches()
        wait_for(lambda: cluster.counts().get("matched") == 7, timeout=20, what="the deleted node dropped")
        wait_for(lambda: _ready(cluster), what="settled")
        assert proxy.calls("gone"), "the resume was answered 410"
        assert cluster.counts() == {"matched": 7, "configured": 7, "applying": 0, "failed": 0}


def test_job_deleted_while_job_watch_down_with_410_resume(cluster: Cluster, proxy: faults.FaultProxy) -> None:
    seen = _held_rollout(cluster, 2)
    with cluster.operator():
        jobs = wait_for(lambda: len(cluster.jobs()) == 2 and cluster.jobs(), what="2 running Jobs")
        proxy.hold_watches("jobs")
        time.sleep(0.3)
        victim, node = jobs[0]["metadata"]["name"], _node_of(jobs[0])
        cluster.batch.delete_namespaced_job(victim, NAMESPACE, propagation_policy="Background")
        proxy.gone_on_resume("jobs")
        proxy.release_watches()
        wait_for(lambda: (cluster.record(node) or {}).get("result") == "failed", timeout=15,
                 what="the missed deletion noticed after the re-list")
        cluster.st.call(cluster.sim.release)
        wait_for(lambda: _ready(cluster), timeout=30, what="Ready")
    assert seen.names().count(victim) == 1


# ---- case 4: a 500 whose write landed, on kopf's first finalizer write ------------------------

def test_finalizer_write_landed_then_500(cluster: Cluster, proxy: faults.FaultProxy) -> None:
    nodes = cluster.add_nodes("user1", 4)
    rule = proxy.land_then_fail(500, resource=PLURAL, verb="patch", agent="kopf", body=faults.adds_finalizer)
    cluster.apply_policy(policy())
    with cluster.operator():
        wait_for(lambda: _ready(cluster), timeout=30, what="Ready although the finalizer write answered 500")
        assert len(rule.hits) == 1
        pol = cluster.get_policy()
        assert pol["metadata"]["finalizers"] == ["nodeaudit.io/finalizer"]
        assert pol["status"]["observedGeneration"] == pol["metadata"]["generation"]
        assert all((cluster.record(n) or {}).get("result") == "ok" for n in nodes)


# ---- case 5: status that settles (kstatus) -------------------------------------------------

def test_status_settles_when_retries_are_used_up(cluster: Cluster, proxy: faults.FaultProxy,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEAUDIT_RETRY_LIMIT", "3")
    monkeypatch.setenv("NODEAUDIT_RETRY_BACKOFF_SECONDS", "1")
    nodes = cluster.add_nodes("user1", 3)
    bad = nodes[0]
    cluster.sim.fail_nodes = {bad}
    cluster.apply_policy(policy(rollout={"maxUnavailable": "100%", "maxFailures": 3}))
    with cluster.operator():
        # Degraded from the first failure, naming the node, while its retries still run.
        degraded = wait_for(lambda: (cluster.condition("Degraded") or {}).get("status") == "True"
                            and cluster.condition("Degraded"), timeout=20, what="Degraded=True")
        assert bad in degraded["message"]
        assert int((cluster.record(bad) or {}).get("failures") or 0) < 3, "Degraded only after the retries"
        # Once nothing can progress: Reconciling=False, Ready says what was done.
        wait_for(lambda: (cluster.condition("Reconciling") or {}).get("status") == "False", timeout=30,
                 what="Reconciling=False")
        assert cluster.record(bad)["failures"] == 3
        ready, stalled = cluster.condition("Ready"), cluster.condition("Stalled")
        assert ready["message"].startswith("2 of 3 nodes configured, 1 failed"), ready
        assert ready["status"] == "True", ready  # within maxFailures: done, with Degraded=True beside it
        assert stalled["status"] == "False"
        assert cluster.condition("Degraded")["status"] == "True"
        assert cluster.counts() == {"matched": 3, "configured": 2, "applying": 0, "failed": 1}


# ---- case 6: Normal events, aggregated per policy and rollout --------------------------------

def test_normal_events_aggregated_per_rollout(cluster: Cluster, proxy: faults.FaultProxy) -> None:
    taint = {"key": "nodeaudit.io/unconfigured", "value": "true", "effect": "NoSchedule"}
    nodes = cluster.add_nodes("user1", 12, taints=[taint])
    cluster.apply_policy(policy())
    with cluster.operator():
        wait_for(lambda: _ready(cluster) and cluster.counts().get("configured") == 12, timeout=30, what="Ready")
        wait_for(lambda: cluster.events("RolloutFinished"), timeout=10, what="RolloutFinished")
        for reason in ("RolloutStarted", "NodesConfigured", "TaintRemoved", "RolloutFinished"):
            found = [e for e in cluster.events(reason) if e["involvedObject"]["name"] == "procmon"]
            assert found and all(e["type"] == "Normal" for e in found), reason
        mine = [e for e in cluster.events() if e["involvedObject"]["name"] == "procmon"]
        # Aggregated: one Event object per reason and rollout, however many nodes (a 1,000-node
        # rollout must not post 1,000 Events); its count says how often it happened.
        assert len(mine) <= 6, [(e["reason"], e["message"]) for e in mine]
        configured = sum(int(e.get("count") or 1) for e in cluster.events("NodesConfigured"))
        messages = " ".join(e["message"] for e in cluster.events("NodesConfigured"))
        assert "12" in messages or configured >= 2, messages
        # Removal done, posted before the finalizer goes, on the policy.
        _delete_policy(cluster)
        wait_for(lambda: cluster.get_policy() is None, timeout=30, what="policy gone")
        assert [e for e in cluster.events("RemovalFinished") if e["involvedObject"]["name"] == "procmon"]
        assert all(cluster.record(n) is None for n in nodes)


def test_invalid_spec_posts_a_warning_event(cluster: Cluster, proxy: faults.FaultProxy) -> None:
    cluster.add_nodes("user1", 1)
    cluster.apply_policy(policy(rules=["-a always,exit -F arch=b64 -S execvee -k x"]))
    with cluster.operator():
        event = wait_for(lambda: cluster.events("InvalidSpec"), timeout=20, what="InvalidSpec event")
        assert event[0]["type"] == "Warning" and "execvee" in event[0]["message"]
        assert cluster.jobs() == []


# ---- case 7: node churn without per-node finalizers ---------------------------------------

def test_fifty_nodes_deleted_at_once_never_block(cluster: Cluster, proxy: faults.FaultProxy) -> None:
    seen = JobsSeen(cluster)
    nodes = cluster.add_nodes("user1", 50)
    cluster.apply_policy(policy())
    with cluster.operator():
        wait_for(lambda: _ready(cluster) and cluster.counts().get("configured") == 50, timeout=60, what="Ready 50")
        assert all(not cluster.node(n)["metadata"].get("finalizers") for n in nodes)
        before = len(seen.created)
        for n in nodes:  # a scale-down: every node at once, nothing holds one back
            cluster.core.delete_node(n)
        assert cluster.core.list_node().items == []
        wait_for(lambda: cluster.counts().get("matched") == 0 and _ready(cluster), timeout=20, what="0 matched")
        time.sleep(0.5)
        assert len(seen.created) == before, "no Job for a deleted node"


# ---- everything at once, seeded (what issue 15 measured and must keep) ------------------------

def test_rollout_under_random_faults_configures_every_node_once(cluster: Cluster, proxy: faults.FaultProxy) -> None:
    """5 % of requests 500/503, 3 % 409 on PATCH, watches cut every 2-5 s with half the resumes
    answered 410, connections refused for a while, every answer 150 ms slower: every node ends
    configured, no Job is made twice and the startup taint is gone exactly where configured."""
    seen = JobsSeen(cluster)
    taint = {"key": "nodeaudit.io/unconfigured", "value": "true", "effect": "NoSchedule"}
    nodes = cluster.add_nodes("user1", 12, taints=[taint]) + cluster.add_nodes("user2", 8)
    cluster.sim.fail_times = {nodes[3]: 1}  # one node fails once and is retried
    proxy.latency = 0.15
    proxy.fail(409, times=None, rate=0.03, method="PATCH", agent="nodeaudit", subresource=None)
    proxy.fail(500, times=None, rate=0.025, agent="nodeaudit", subresource=None)
    proxy.fail(503, times=None, rate=0.025, agent="kopf", subresource=None)
    proxy.gone_on_resume(times=None, rate=0.5)
    proxy.cut_watches_every(2.0, 5.0)
    cluster.apply_policy(policy(rollout={"maxUnavailable": 6, "maxFailures": 3}))
    with cluster.operator():
        wait_for(lambda: len(seen.names("apply")) >= 6, timeout=30, what="the rollout under way")
        proxy.refuse_for(3.0)
        cluster.add_nodes("user2", 2, start=8)  # autoscaled while the API is unreachable
        wait_for(lambda: _ready(cluster) and cluster.counts().get("configured") == 22, timeout=90,
                 interval=0.5, what="every node configured")
    names = seen.names()
    assert len(names) == len(set(names)), "a Job made twice"
    for node in cluster.core.list_node().items:
        name = node.metadata.name
        assert (cluster.record(name) or {}).get("result") == "ok", name
        assert not [t for t in node.spec.taints or [] if t.key == "nodeaudit.io/unconfigured"], name
    assert proxy.calls("fail") and proxy.calls("gone"), "the faults happened"


def test_operator_killed_three_times_under_faults(cluster: Cluster, proxy: faults.FaultProxy) -> None:
    """`nodeaudit run` SIGKILLed three times in a 40-node rollout behind the faulty API, a node
    deleted while its Job runs, a rule added mid-rollout: every node ends on the last bundle, no
    node got two Jobs for one bundle, and the startup taint is gone where configured."""
    seen = JobsSeen(cluster)
    taint = {"key": "nodeaudit.io/unconfigured", "value": "true", "effect": "NoSchedule"}
    nodes = cluster.add_nodes("user1", 20, taints=[taint]) + cluster.add_nodes("user2", 20)
    cluster.sim.delay, cluster.sim.jitter = 0.3, 0.3
    proxy.latency = 0.05
    proxy.fail(500, times=None, rate=0.03, agent="nodeaudit", subresource=None)
    proxy.gone_on_resume(times=None, rate=0.5)
    proxy.cut_watches_every(2.0, 5.0)
    body = policy(rollout={"maxUnavailable": 8, "maxFailures": 3})
    cluster.apply_policy(body)
    kubeconfig = os.environ["KUBECONFIG"]  # the proxy's (the fixture set it)
    deleted = ""
    for round_ in range(3):
        with operator_process(cluster, kubeconfig) as proc:
            wait_for(seen.at_least("apply", 8 * (round_ + 1)), timeout=40, interval=0.2,
                     what=f"progress in round {round_}")
            if round_ == 0:  # a node deleted while its Job runs (a scale-down mid-Job)
                running = [j for j in cluster.jobs() if not (j.get("status") or {}).get("conditions")]
                deleted = _node_of(running[0]) if running else nodes[-1]
                cluster.core.delete_node(deleted)
            if round_ == 1:  # a rule added mid-rollout: a new bundle
                cluster.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, "procmon", {"spec": {"rules": [
                    *body["spec"]["rules"], "-w /etc/sudoers -p wa -k sudoers"]}})
            proc.kill()  # SIGKILL: no cleanup, no goodbye
    with cluster.operator():
        wait_for(lambda: _ready(cluster) and cluster.counts().get("configured") == 39, timeout=90, interval=0.5,
                 what="every remaining node configured on the last bundle")
        bundle = cluster.get_policy()["status"]["bundle"]
    per_bundle: dict[tuple[str, str], int] = {}
    for job in seen.created:
        if job["metadata"]["labels"].get("nodeaudit.io/action") == "apply":
            key = (_node_of(job), job["metadata"]["annotations"]["nodeaudit.io/bundle-hash"])
            per_bundle[key] = per_bundle.get(key, 0) + 1
    assert max(per_bundle.values()) == 1, [k for k, v in per_bundle.items() if v > 1]
    for node in cluster.core.list_node().items:
        record = cluster.record(node.metadata.name) or {}
        assert record.get("result") == "ok" and record.get("bundle") == bundle, node.metadata.name
        assert not [t for t in node.spec.taints or [] if t.key == "nodeaudit.io/unconfigured"]
    assert deleted not in {n.metadata.name for n in cluster.core.list_node().items}
