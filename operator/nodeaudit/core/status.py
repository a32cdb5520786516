"""Per-node states → the policy's kstatus-style status.

Why a pure module: Flux, Helm ``--wait`` and Argo CD judge the policy only by these fields, so the
mapping from "what happened on the nodes" to Ready/Reconciling/Stalled/Degraded is a contract
that deserves its own tests. Conditions keep their lastTransitionTime while their status holds.

kstatus, as applied here:

* ``Reconciling=True`` only while something can still happen without anyone acting: a Job runs,
  a node waits for its turn, or a failed node waits for its next retry. Once every node is either
  configured or has used up its retries, ``Reconciling=False``: a tool that waits (``kubectl wait``,
  Flux, Helm ``--wait``) must not wait for what will never come.
* ``Degraded=True`` from the first failure, naming the nodes (also while they are retried).
* Failures below ``rollout.maxFailures`` are the tolerance the user chose: the rollout is done,
  ``Ready=True`` says "N of M nodes configured, K failed", ``Degraded=True`` stands beside it.
  At ``maxFailures`` the rollout stops: ``Stalled=True``, ``Ready=False``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TRUE, FALSE = "True", "False"


@dataclass(frozen=True)
class Summary:
    generation: int
    bundle: str | None = None
    matched: int = 0
    configured: int = 0
    applying: int = 0
    pending: int = 0
    waiting: int = 0
    retrying: int = 0
    failed: int = 0
    failed_nodes: Sequence[str] = ()
    """Nodes whose retries are used up for the current bundle and boot."""
    retrying_nodes: Sequence[str] = ()
    """Nodes whose last Job failed and that will be retried."""
    stalled: bool = False
    paused: bool = False
    invalid: str | None = None
    conflicts: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Other policy name → nodes where its syslog settings conflict with this (later) policy."""
    create_failed: str | None = None
    """The API refused a ConfigMap/Job create this pass (request and message)."""
    agent: tuple[str, str, str] | None = None
    """AgentReady (status, reason, message); None: the condition is not written (yet)."""
    agent_scale_sets: Sequence[Mapping[str, Any]] | None = None
    """``status.agent``: the per-scale-set verdicts of the last agent check (None: leave it alone)."""
    delivered: tuple[str, str, str] | None = None
    """Delivered (status, reason, message): did every node's canary reach the workspace; None: not written."""


def _cond(type_: str, status: str, reason: str, message: str, generation: int, now: str,
          previous: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    before = previous.get(type_)
    since = before.get("lastTransitionTime") if before and before.get("status") == status else None
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": since or now}


def few_names(nodes: Sequence[str], limit: int = 5) -> str:
    """``a, b, c, d, e and 3 more``: a list that fits in a condition message."""
    shown = ", ".join(list(nodes)[:limit])
    return shown + (f" and {len(nodes) - limit} more" if len(nodes) > limit else "")


def build_status(summary: Summary, now: str,
                 previous_conditions: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The ``status`` object (camelCase, as stored) for ``summary``."""
    prev = {str(c.get("type")): c for c in previous_conditions if isinstance(c, Mapping)}
    g = summary.generation
    counts = {"matched": summary.matched, "configured": summary.configured,
              "applying": summary.applying, "failed": summary.failed}

    def c(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return _cond(type_, status, reason, message, g, now, prev)

    if summary.invalid is not None:
        conditions = [
            c("Ready", FALSE, "InvalidSpec", "the policy is invalid; no Job is created"),
            c("Reconciling", FALSE, "InvalidSpec", "waiting for a corrected spec"),
            c("Stalled", TRUE, "InvalidSpec", summary.invalid),
            c("Degraded", FALSE, "InvalidSpec", ""),
        ]
        return {"observedGeneration": g, "conditions": conditions, "nodes": counts, "bundle": None}

    progressing = summary.applying + summary.pending + summary.retrying
    failed = f", {summary.failed} failed" if summary.failed else ""
    progress = (f"{summary.configured} of {summary.matched} nodes configured{failed}"
                f" ({summary.applying} applying, {summary.pending} pending, {summary.retrying} retrying,"
                f" {summary.waiting} not ready)")
    if summary.stalled:
        ready = c("Ready", FALSE, "RolloutStalled", progress)
        reconciling = c("Reconciling", FALSE, "RolloutStalled", "the rollout stopped")
    elif summary.paused and (progressing or summary.failed):
        ready = c("Ready", FALSE, "RolloutPaused", progress)
        reconciling = c("Reconciling", FALSE, "RolloutPaused", "spec.rollout.paused is true")
    elif progressing:
        ready = c("Ready", FALSE, "Progressing", progress)
        reconciling = c("Reconciling", TRUE, "Applying", progress)
    elif summary.failed:
        ready = c("Ready", TRUE, "ConfiguredWithFailures",
                  f"{progress}; failed: {few_names(summary.failed_nodes)}")
        reconciling = c("Reconciling", FALSE, "RetriesExhausted",
                        f"nothing left to do: {summary.failed} node(s) used up their retries (fewer than"
                        " rollout.maxFailures); a new bundle, a reboot or a reimage tries them again")
    else:
        ready = c("Ready", TRUE, "Configured", progress)
        reconciling = c("Reconciling", FALSE, "Configured", "")
    if summary.stalled:
        stalled = c("Stalled", TRUE, "MaxFailures",
                    f"{summary.failed} node(s) failed after retries: {few_names(summary.failed_nodes)}")
    else:
        stalled = c("Stalled", FALSE, "NotStalled", "")
    failures = []
    if summary.failed:
        failures.append(f"{summary.failed} node(s) failed: {few_names(summary.failed_nodes)}")
    if summary.retrying:
        names = few_names(summary.retrying_nodes) if summary.retrying_nodes else "see status.nodes"
        failures.append(f"{summary.retrying} node(s) failing, retried: {names}")
    if summary.create_failed:
        degraded = c("Degraded", TRUE, "CreateFailed", summary.create_failed)
    elif summary.conflicts:
        parts = [f"syslog settings conflict with policy {other} on {len(nodes)} node(s) ({few_names(nodes, 3)})"
                 for other, nodes in sorted(summary.conflicts.items())]
        degraded = c("Degraded", TRUE, "Conflict",
                     "; ".join([*parts[:-1], parts[-1] + "; those nodes are left to the older policy", *failures]))
    elif failures:
        degraded = c("Degraded", TRUE, "NodesFailed", "; ".join(failures))
    else:
        degraded = c("Degraded", FALSE, "NoFailures", "")
    conditions = [ready, reconciling, stalled, degraded]
    # AgentReady stands beside Ready and never changes it: Ready (kstatus) is about the nodes'
    # configuration, which the operator controls; the agent is the node pool's business.
    if summary.agent is not None:
        conditions.append(c("AgentReady", *summary.agent))
    # Delivered, like AgentReady, informs and never changes Ready: the workspace is not the operator's
    if summary.delivered is not None:
        conditions.append(c("Delivered", *summary.delivered))
    out: dict[str, Any] = {"observedGeneration": g, "conditions": conditions, "nodes": counts,
                           "bundle": summary.bundle}
    if summary.agent_scale_sets is not None:
        out["agent"] = [dict(item) for item in summary.agent_scale_sets]
    return out


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when ``new`` differs from ``old`` in anything but timestamps (saves a write)."""
    def strip(s: Mapping[str, Any] | None) -> Any:
        if not s:
            return None
        out = {k: v for k, v in s.items() if k in new}
        out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                             for c in s.get("conditions") or []]
        return out
    return bool(strip(old) != strip(new))
