"""The Kubernetes Events nodeaudit posts on a policy, as data.

Why a pure module: an Event's reason and message are what ``kubectl describe nap`` shows a user;
they are decided here and tested as data, and the controller's writer only posts them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

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
