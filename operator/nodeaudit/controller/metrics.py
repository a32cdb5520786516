"""Prometheus metrics of the operator, and the /metrics endpoint that serves them.

Why a module of its own: the controller and the Azure edge only call the small ``observe_*`` /
``set_*`` functions below, so the metric names, labels and buckets (a contract with dashboards and
alerts, listed in docs/metrics.md) live in one place, and nothing else imports prometheus_client.
Label values are bounded: policy names, Job actions/results, distro and audit version strings
from the Job's JSON line, ARM operation names from a fixed list, and outcome classes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

NODE_STATES = ("matched", "configured", "applying", "failed")

POLICY_NODES = Gauge(
    "nodeaudit_policy_nodes", "Nodes of a policy by state (matched, configured, applying, failed).",
    ["policy", "state"])
JOB_DURATION = Histogram(
    "nodeaudit_job_duration_seconds",
    "Time from a node Job's creation until the operator saw it finish, by action and result.",
    ["action", "result"], buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900))
APPLY_RESULTS = Counter(
    "nodeaudit_apply_results_total",
    "Recorded apply results (the Job's JSON result line), by result, distro and audit version.",
    ["result", "distro", "audit_version"])
ARM_REQUESTS = Counter(
    "nodeaudit_arm_requests_total",
    "HTTP requests to Azure Resource Manager (every attempt, retries included), by operation and outcome.",
    ["operation", "outcome"])
READY_TO_CONFIGURED = Histogram(
    "nodeaudit_node_ready_to_configured_seconds",
    "Time from a node's Ready transition until its first successful apply of the boot, per policy.",
    ["policy"], buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600))
AGENT_SCALE_SETS = Gauge(
    "nodeaudit_agent_scale_sets",
    "Scale sets of a policy's nodes by monitoring-agent state (Present, Missing, Failed, Error, ...).",
    ["policy", "state"])
AGENT_CHECKS = Counter(
    "nodeaudit_agent_checks_total", "Monitoring-agent checks run, by policy and AgentReady status.",
    ["policy", "status"])

DISPATCHER_COUNTERS = ("events", "dropped", "unparsed", "containersResolved", "containersUnresolved")
DISPATCHER = Gauge(
    "nodeaudit_dispatcher_events",
    "The JSON dispatcher's counters as each node's last apply reported them, summed over the policy's "
    "nodes (events, dropped, unparsed, containersResolved, containersUnresolved).",
    ["policy", "counter"])
SYSLOG_FORMAT_NODES = Gauge(
    "nodeaudit_syslog_format_nodes",
    "Nodes of a policy by the syslog form they run (json, raw); raw under a json policy is a fallback "
    "(no python3 on the node).", ["policy", "format"])

_agent_states: dict[str, set[str]] = {}
_node_dispatch: dict[str, dict[str, tuple[str | None, Mapping[str, Any] | None]]] = {}


def set_policy_nodes(policy: str, counts: Mapping[str, int]) -> None:
    for state in NODE_STATES:
        POLICY_NODES.labels(policy, state).set(int(counts.get(state, 0)))


def observe_dispatcher(policy: str, node: str, record: Mapping[str, Any]) -> None:
    """A node's apply record: its syslog form and dispatcher counters replace what it said before."""
    counters = record.get("dispatcher")
    _node_dispatch.setdefault(policy, {})[node] = (
        record.get("syslogFormat"), counters if isinstance(counters, Mapping) else None)
    nodes = _node_dispatch[policy].values()
    for counter in DISPATCHER_COUNTERS:
        total = sum(int(c.get(counter) or 0) for _, c in nodes if c)
        DISPATCHER.labels(policy, counter).set(total)
    for fmt in ("json", "raw"):
        SYSLOG_FORMAT_NODES.labels(policy, fmt).set(sum(1 for f, _ in nodes if f == fmt))


def forget_policy(policy: str) -> None:
    """A deleted policy's gauges disappear instead of freezing at their last value."""
    for state in NODE_STATES:
        _remove(POLICY_NODES, policy, state)
    if _node_dispatch.pop(policy, None) is not None:
        for counter in DISPATCHER_COUNTERS:
            _remove(DISPATCHER, policy, counter)
        for fmt in ("json", "raw"):
            _remove(SYSLOG_FORMAT_NODES, policy, fmt)
    for state in _agent_states.pop(policy, set()):
        _remove(AGENT_SCALE_SETS, policy, state)


def _remove(metric: Any, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def observe_job(action: str, result: str, seconds: float) -> None:
    JOB_DURATION.labels(action, result).observe(max(0.0, seconds))


def observe_apply(result: str, distro: str | None, audit_version: str | None) -> None:
    APPLY_RESULTS.labels(result, distro or "unknown", audit_version or "unknown").inc()


def observe_ready_to_configured(policy: str, ready_since: str, now: dt.datetime | None = None) -> None:
    """``ready_since``: the node's Ready condition lastTransitionTime (RFC 3339)."""
    from nodeaudit.core.rollout import parse_time

    since = parse_time(ready_since)
    if since is None:
        return
    seconds = ((now or dt.datetime.now(dt.timezone.utc)) - since).total_seconds()
    if seconds >= 0:
        READY_TO_CONFIGURED.labels(policy).observe(seconds)


def arm_outcome(status: int | None) -> str:
    """An outcome class for an ARM response status (None: no response — connection error, timeout)."""
    if status is None:
        return "transport_error"
    if status < 400:
        return "ok"
    if status == 429:
        return "throttled"
    if status in (401, 403):
        return "denied"
    if status == 404:
        return "not_found"
    return "client_error" if status < 500 else "server_error"


def observe_arm(operation: str, status: int | None) -> None:
    ARM_REQUESTS.labels(operation, arm_outcome(status)).inc()


def set_agent(policy: str, states: Mapping[str, int], ready_status: str) -> None:
    old = _agent_states.get(policy, set())
    for state in old - set(states):
        _remove(AGENT_SCALE_SETS, policy, state)
    for state, n in states.items():
        AGENT_SCALE_SETS.labels(policy, state).set(n)
    _agent_states[policy] = set(states)
    AGENT_CHECKS.labels(policy, ready_status).inc()


def serve(port: int, address: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> Any:
    """Serve /metrics from a daemon thread; returns the HTTP server (``.server_port``, ``.shutdown()``)."""
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server
