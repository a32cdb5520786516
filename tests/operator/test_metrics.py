"""The /metrics endpoint after a demo-sized rollout (issue 6 item 3): the real operator, 3 pools x 4
nodes on the local API server, the agent check against the local https ARM endpoint, and the
series scraped over HTTP on 127.0.0.1 and parsed as Prometheus text."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodeaudit.controller import metrics
from nodeaudit.testing.armserver import ArmServer, Resp, aks_extensions, ama
from tests.operator.operator_harness import Cluster, policy, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = metrics.serve(0, "127.0.0.1")  # what `nodeaudit run --metrics-port` and the demo start
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as rsp:
        assert rsp.status == 200
        assert rsp.headers["Content-Type"].startswith("text/plain")
        text = rsp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_endpoint_serves_every_series_after_a_rollout(cluster: Cluster, arm: ArmServer, endpoint: str) -> None:
    pools = {"system": "10000001", "user1": "20000002", "user2": "30000003"}
    arm.extensions[f"aks-system-{pools['system']}-vmss"] = [*aks_extensions(), ama()]
    arm.extensions[f"aks-user1-{pools['user1']}-vmss"] = [*aks_extensions(), ama()]
    denied = f"aks-user2-{pools['user2']}-vmss"
    arm.scripts[denied] = [Resp(403, {"error": {"code": "AuthorizationFailed", "message": "no read on the node RG"}})]
    nodes = [n for pool, suffix in pools.items() for n in cluster.add_nodes(pool, 4, vmss_suffix=suffix)]
    broken, flaky = nodes[5], nodes[9]
    cluster.sim.fail_nodes = {broken}
    cluster.sim.fail_times = {flaky: 1}
    cluster.sim.delay = 0.05
    before = scrape(endpoint)
    cluster.apply_policy(policy("metrics", monitoringAgent={"check": "VMSSExtension", "interval": "1h"},
                                rollout={"maxUnavailable": "50%", "maxFailures": 3}))
    with cluster.operator():
        wait_for(lambda: (cluster.record(broken, "metrics") or {}).get("failures") == 3, timeout=30,
                 what="the broken node exhausted its retries")
        wait_for(lambda: cluster.counts("metrics").get("configured") == 11, timeout=30, what="11 configured")
        wait_for(lambda: cluster.condition("AgentReady", "metrics"), what="AgentReady")
        after = wait_for(lambda: (s := scrape(endpoint)) and value(s, "nodeaudit_policy_nodes", policy="metrics",
                                                                   state="configured") == 11 and s,
                         what="gauges caught up")

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Nodes per policy and state (gauges).
    assert {s: value(after, "nodeaudit_policy_nodes", policy="metrics", state=s)
            for s in ("matched", "configured", "applying", "failed")} == {
        "matched": 12, "configured": 11, "applying": 0, "failed": 1}
    # Job durations by action and result: 11 first tries + the flaky node's retry succeeded;
    # the broken node failed three times, the flaky one once.
    ok_jobs = delta("nodeaudit_job_duration_seconds_count", action="apply", result="succeeded")
    failed_jobs = delta("nodeaudit_job_duration_seconds_count", action="apply", result="failed")
    assert (ok_jobs, failed_jobs) == (11, 4)
    ok_seconds = delta("nodeaudit_job_duration_seconds_sum", action="apply", result="succeeded")
    assert 0.05 * 11 <= ok_seconds < 11 * 10  # each took at least the simulator's delay, none forever
    assert delta("nodeaudit_job_duration_seconds_bucket", action="apply", result="succeeded", le="+Inf") == 11
    # Apply results from the Jobs' JSON lines, by distro and audit version.
    assert delta("nodeaudit_apply_results_total", result="ok", distro="ubuntu-22.04", audit_version="3.0.7") == 11
    failed_results = sum(v for (n, labels), v in after.items()
                         if n == "nodeaudit_apply_results_total" and ("result", "failed") in labels)
    failed_before = sum(v for (n, labels), v in before.items()
                        if n == "nodeaudit_apply_results_total" and ("result", "failed") in labels)
    assert failed_results - failed_before == 4
    # Ready to configured: one observation per configured node, a few seconds at most here.
    count = value(after, "nodeaudit_node_ready_to_configured_seconds_count", policy="metrics")
    total = value(after, "nodeaudit_node_ready_to_configured_seconds_sum", policy="metrics")
    assert count == 11 and 0 <= total / count < 30
    # ARM calls by operation and outcome: two scale sets listed fine, one denied (403, not retried).
    assert delta("nodeaudit_arm_requests_total", operation="vmss.extensions.get", outcome="ok") == 2
    assert delta("nodeaudit_arm_requests_total", operation="vmss.extensions.get", outcome="denied") == 1
    # The agent check's outcome per policy.
    assert value(after, "nodeaudit_agent_scale_sets", policy="metrics", state="Present") == 2
    assert value(after, "nodeaudit_agent_scale_sets", policy="metrics", state="Error") == 1
    assert delta("nodeaudit_agent_checks_total", policy="metrics", status="Unknown") == 1
