"""Removing a deleted policy from its nodes: which nodes get a removal Job, which are let go.

Why a pure module: deleting a policy (``removeOnDelete: true``) runs ``apply.sh remove`` on every
node that holds its record, but a node that is gone, not ready, or past the removal timeout must
not hold the deletion forever. That choice is made here, from the node facts and the Jobs; the
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


def removal_run_key(policy: str, node: NodeFacts) -> str:
    record = node.record(policy) or {}
    return f"remove|{record.get('bundle')}|{node.uid}|{node.boot_id}"


def plan_removal(policy: str, holders: Iterable[NodeFacts], jobs: Mapping[str, JobInfo],
                 timed_out: bool) -> RemovalPlan:
    """``holders``: the nodes with a record of ``policy``; ``timed_out``: the removal timeout passed."""
    plan = RemovalPlan()
    for node in holders:
        run_key = removal_run_key(policy, node)
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
