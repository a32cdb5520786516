"""The dispatcher's counters and the syslog form from a node's apply result line: kept in the node
record and summed per policy in the operator's metrics."""

from __future__ import annotations

from prometheus_client import REGISTRY

from nodeaudit.controller import metrics
from nodeaudit.core import noderecord
from nodeaudit.core.jobs import JobInfo
from nodeaudit.core.nodes import NodeFacts

NODE = NodeFacts(name="n1", uid="nuid", boot_id="boot1", ready=True, labels={"kubernetes.io/os": "linux"})
JOB = JobInfo(name="j1", policy="p-dispatch", node="n1", action="apply", budget="update", bundle="sha256:b",
              outcome="succeeded", created=1.0, finished_at=None, finished=None)
COUNTERS = {"events": 120, "dropped": 3, "unparsed": 1, "containersResolved": 100, "containersUnresolved": 2,
            "hostProcesses": 18}


def sample(policy: str, counter: str) -> float | None:
    return REGISTRY.get_sample_value("nodeaudit_dispatcher_events", {"policy": policy, "counter": counter})


def test_node_record_keeps_format_fallback_and_counters() -> None:
    result = {"ok": True, "syslogFormat": "json", "fallback": "", "dispatcher": COUNTERS, "message": "applied"}
    record = noderecord.build_record(JOB, NODE, None, result, "2026-01-01T00:00:00.000Z")
    assert record["syslogFormat"] == "json" and record["dispatcher"] == COUNTERS and record["fallback"] == ""
    assert "message" not in record


def test_metrics_sum_the_last_counters_of_each_node_and_count_formats() -> None:
    policy = "p-dispatch"
    metrics.observe_dispatcher(policy, "n1", {"syslogFormat": "json", "dispatcher": COUNTERS})
    metrics.observe_dispatcher(policy, "n2", {"syslogFormat": "json", "dispatcher": {**COUNTERS, "dropped": 7}})
    metrics.observe_dispatcher(policy, "n3", {"syslogFormat": "raw", "fallback": "python3 not found",
                                              "dispatcher": None})
    assert sample(policy, "events") == 240 and sample(policy, "dropped") == 10
    assert sample(policy, "containersResolved") == 200
    # A node's newer report replaces its older one (the dispatcher restarted: its counters began again).
    metrics.observe_dispatcher(policy, "n2", {"syslogFormat": "json", "dispatcher": {"events": 5}})
    assert sample(policy, "events") == 125 and sample(policy, "dropped") == 3
    formats = {f: REGISTRY.get_sample_value("nodeaudit_syslog_format_nodes", {"policy": policy, "format": f})
               for f in ("json", "raw")}
    assert formats == {"json": 2, "raw": 1}
    metrics.forget_policy(policy)
    assert sample(policy, "events") is None
