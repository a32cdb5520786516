"""The Kubernetes Events nodeaudit posts on a policy, as data.

Why a pure module: an Event's reason and message are what ``kubectl describe nap`` shows a user;
they are decided here and tested as data, and the controller's writer only posts them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from nodeaudit.core.eventseries import Post

MESSAGE_LIMIT = 1024


def event_body(*, policy: str, policy_uid: str, namespace: str, type_: str, reason: str, message: str,
               now: dt.datetime, instance: str) -> dict[str, Any]:
    """A core/v1 Event about the NodeAuditPolicy ``policy`` (``instance``: the reporting pod)."""
    stamp = now.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "metadata": {"generateName": f"{policy}.", "namespace": namespace},
        "involvedObject": {"apiVersion": "nodeaudit.io/v1alpha1", "kind": "NodeAuditPolicy",
                           "name": policy, "uid": policy_uid},
        "type": type_, "reason": reason, "message": message[:MESSAGE_LIMIT],
        "source": {"component": "nodeaudit"}, "reportingComponent": "nodeaudit.io/operator",
        "reportingInstance": instance,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "eventTime": stamp, "count": 1, "action": reason,
    }


def apply_failed(node: str, error: str, attempt: int) -> tuple[str, str, str]:
    """(type, reason, message) of a node's failed apply."""
    return "Warning", "ApplyFailed", f"node {node}: {error} (attempt {attempt})"


def remove_failed(node: str, job: str) -> tuple[str, str, str]:
    return "Warning", "RemoveFailed", f"node {node}: removal Job {job} failed"


def create_failed(description: str) -> tuple[str, str, str]:
    return "Warning", "CreateFailed", description


def policy_warnings(warnings: Sequence[str]) -> tuple[str, str, str]:
    """Posted when a policy's warnings change (core.policy.policy_warnings, cross_policy_warnings)."""
    return "Warning", "PolicyWarnings", "; ".join(warnings)


def no_matching_nodes() -> tuple[str, str, str]:
    return "Warning", "NoMatchingNodes", "the node selector matches no Linux node: the policy audits nothing"


def rollout_stalled(failed_nodes: Sequence[str]) -> tuple[str, str, str]:
    return ("Warning", "RolloutStalled",
            f"rollout stopped: {len(failed_nodes)} node(s) failed after retries: " + ", ".join(failed_nodes[:20]))


# ---- Normal events, aggregated per policy, reason and rollout (core/eventseries) -----------------
# A template may hold {count} and {subjects} (filled in by eventseries); literal braces from node
# names or error messages are escaped with ``literal``.

def literal(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def series_body(post: Post, *, policy_uid: str, namespace: str, instance: str) -> dict[str, Any]:
    """The Event for an aggregated series: a stable name (a re-post updates it), its count and the
    times of its first and latest occurrence (``post.first``/``post.last``: seconds since the epoch)."""
    body = event_body(policy=post.policy, policy_uid=policy_uid, namespace=namespace, type_=post.type,
                      reason=post.reason, message=post.message,
                      now=dt.datetime.fromtimestamp(post.last, dt.timezone.utc), instance=instance)
    body["metadata"] = {"name": post.name, "namespace": namespace}
    body["count"] = post.count
    body["firstTimestamp"] = dt.datetime.fromtimestamp(post.first, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    body["lastTimestamp"] = dt.datetime.fromtimestamp(post.last, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return body


def series_update(post: Post) -> dict[str, Any]:
    """The merge patch that brings an existing series Event up to ``post``."""
    return {"count": post.count, "message": post.message,
            "lastTimestamp": dt.datetime.fromtimestamp(post.last, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def rollout_started(bundle: str, matched: int, budget: int) -> tuple[str, str, str]:
    return "Normal", "RolloutStarted", f"rolling out bundle {bundle} to {matched} node(s), at most {budget} at a time"


def nodes_configured(bundle: str) -> tuple[str, str, str]:
    return "Normal", "NodesConfigured", f"configured {{count}} node(s) with bundle {bundle}: {{subjects}}"


def taint_removed(taint_key: str) -> tuple[str, str, str]:
    return ("Normal", "TaintRemoved",
            f"removed the startup taint {taint_key} from {{count}} configured node(s): {{subjects}}")


def apply_failures(bundle: str, latest: str) -> tuple[str, str, str]:
    return ("Warning", "ApplyFailed",
            f"{{count}} node(s) failed to apply bundle {bundle}: {{subjects}}; latest: {literal(latest)}")


def rollout_finished(bundle: str, ready_message: str) -> tuple[str, str, str]:
    return "Normal", "RolloutFinished", f"rollout of bundle {bundle} finished: {literal(ready_message)}"


def removal_finished(removed: int, let_go: int) -> tuple[str, str, str]:
    extra = f"; {let_go} node(s) let go (gone, not ready or past the removal timeout)" if let_go else ""
    return ("Normal", "RemovalFinished",
            f"removed the policy's rules from {removed} node(s){extra}; the finalizer is released")


def removal_skipped(holders: int) -> tuple[str, str, str]:
    return ("Normal", "RemovalSkipped",
            f"removeOnDelete is false: the rules stay on {holders} node(s); the finalizer is released")


def invalid_spec(error: str) -> tuple[str, str, str]:
    return "Warning", "InvalidSpec", f"the policy is invalid, no Job is created: {error}"
