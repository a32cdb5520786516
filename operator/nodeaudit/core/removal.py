"""Removing a deleted policy from its nodes: which nodes get a removal Job, which are let go.

Why a pure module: deleting a policy (``removeOnDelete: true``) runs ``apply.sh remove`` on every
node that holds, or may hold, its rules: a node with its record, and a node where one of its apply
Jobs ran or still runs (a Job that finished after the deletion began left no record, and a
running one may still write the rules: its node waits for it, then gets the removal). A node that
is gone, not ready, or past the removal timeout must not hold the deletion forever. That choice is made here, from the node facts and the Jobs; the
controller creates the Jobs and clears the records this returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nodeaudit.core.jobs import JobInfo, job_name
from nodeaudit.core.nodes import NodeFacts
from nodeaudit.core.rollout import Start


@dataclass
class RemovalPlan:
    start: list[Start] = field(default_factory=list)
    """Removal Jobs to create."""
    clear: list[str] = field(default_factory=list)
    """Nodes whose record is cleared now (removed, failed, or nothing to run the removal on)."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(node, Job) whose removal Job failed (reported, then let go)."""
    waiting: list[str] = field(default_factory=list)
    """Nodes whose removal is still running or about to start."""


def _apply_jobs(policy: str, node: str, jobs: Mapping[str, JobInfo]) -> list[JobInfo]:
    return [j for j in jobs.values() if j.policy == policy and j.node == node and j.action == "apply"]


def holders(policy: str, nodes: Mapping[str, NodeFacts], jobs: Mapping[str, JobInfo]) -> list[NodeFacts]:
    """The nodes that hold or may hold ``policy``'s rules: its record, or an apply Job of it."""
    with_job = {j.node for j in jobs.values() if j.policy == policy and j.action == "apply"}
    return [n for name, n in sorted(nodes.items()) if policy in n.records or name in with_job]


def removal_run_key(policy: str, node: NodeFacts, jobs: Mapping[str, JobInfo] | None = None) -> str:
    """Stable for the node's boot: the recorded bundle, or (no record) the bundle of its apply Job."""
    bundle = (node.record(policy) or {}).get("bundle")
    if bundle is None and jobs:
        bundle = max((j.bundle for j in _apply_jobs(policy, node.name, jobs)), default=None)
    return f"remove|{bundle}|{node.uid}|{node.boot_id}"


def plan_removal(policy: str, holders: Iterable[NodeFacts], jobs: Mapping[str, JobInfo],
                 timed_out: bool) -> RemovalPlan:
    """``holders``: see :func:`holders`; ``timed_out``: the removal timeout passed."""
    plan = RemovalPlan()
    for node in holders:
        if any(j.outcome == "running" for j in _apply_jobs(policy, node.name, jobs)):
            if timed_out or not node.ready or not node.eligible:
                plan.clear.append(node.name)  # unresponsive: let go, as below
            else:
                plan.waiting.append(node.name)  # its rules may land yet: remove after the apply
            continue
        run_key = removal_run_key(policy, node, jobs)
        job = jobs.get(job_name(policy, node.name, "remove", run_key))
        if job is None:
            if not node.ready or not node.eligible or timed_out:
                plan.clear.append(node.name)  # nothing to run it on: let go
                continue
            plan.start.append(Start(node.name, "update", 0, run_key))
            plan.waiting.append(node.name)
        elif job.outcome == "running":
            if timed_out or not node.ready:
                plan.clear.append(node.name)
                continue
            plan.waiting.append(node.name)
        else:
            if job.outcome == "failed":
                plan.failed.append((node.name, job.name))
            plan.clear.append(node.name)
    return plan
