"""Removal after a deletion reaches every node that holds or may hold the rules (issue 15, case 2)."""

from __future__ import annotations

from nodeaudit.core import jobs as jobs_mod
from nodeaudit.core import removal
from nodeaudit.core.jobs import JobInfo
from nodeaudit.core.nodes import NodeFacts

POLICY = "procmon"


def node(name: str, *, ready: bool = True, record: dict[str, object] | None = None) -> NodeFacts:
    return NodeFacts(name=name, uid=f"{name}-uid", boot_id="boot", ready=ready, labels={"kubernetes.io/os": "linux"},
                     records={POLICY: record} if record is not None else {})


def apply_job(node_name: str, outcome: str, bundle: str = "sha256:new") -> JobInfo:
    return JobInfo(name=f"apply-{node_name}", policy=POLICY, node=node_name, action="apply", budget="new",
                   bundle=bundle, outcome=outcome, created=1.0)


def test_nodes_with_an_apply_job_hold_the_rules_too() -> None:
    nodes = {n.name: n for n in (node("a", record={"bundle": "sha256:old"}), node("b"), node("c"), node("d"))}
    jobs = {j.name: j for j in (apply_job("b", "running"), apply_job("c", "succeeded"))}
    assert [n.name for n in removal.holders(POLICY, nodes, jobs)] == ["a", "b", "c"]  # d never got a Job


def test_a_running_apply_is_waited_for_then_removed() -> None:
    b = node("b")
    running = {"apply-b": apply_job("b", "running")}
    plan = removal.plan_removal(POLICY, [b], running, timed_out=False)
    assert plan.waiting == ["b"] and plan.start == [] and plan.clear == []
    finished = {"apply-b": apply_job("b", "succeeded")}
    plan = removal.plan_removal(POLICY, [b], finished, timed_out=False)
    assert [(s.node, s.run_key) for s in plan.start] == [("b", "remove|sha256:new|b-uid|boot")]
    assert plan.waiting == ["b"]
    # The removal Job's name is stable from poll to poll (no record is written during a deletion).
    name = jobs_mod.job_name(POLICY, "b", "remove", plan.start[0].run_key)
    done = {**finished, name: JobInfo(name=name, policy=POLICY, node="b", action="remove", budget="update",
                                      bundle="sha256:new", outcome="succeeded", created=2.0)}
    assert removal.plan_removal(POLICY, [b], done, timed_out=False).clear == ["b"]


def test_unresponsive_or_timed_out_nodes_are_let_go_even_with_a_running_apply() -> None:
    running = {"apply-b": apply_job("b", "running")}
    assert removal.plan_removal(POLICY, [node("b", ready=False)], running, timed_out=False).clear == ["b"]
    assert removal.plan_removal(POLICY, [node("b")], running, timed_out=True).clear == ["b"]


def test_the_record_bundle_names_the_removal_when_there_is_one() -> None:
    a = node("a", record={"bundle": "sha256:old"})
    jobs = {"apply-a": apply_job("a", "succeeded")}
    assert removal.removal_run_key(POLICY, a, jobs) == "remove|sha256:old|a-uid|boot"
