"""The view after lost events (issue 15): deleted Jobs, and re-lists after 410 Gone."""

from __future__ import annotations

import time
from typing import Any

from nodeaudit.controller.view import View
from nodeaudit.core import jobs as jobs_mod
from nodeaudit.testing import simulator as sim

POLICY = "procmon"


def job_body(name: str, node: str, *, finished: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name, "labels": {jobs_mod.LABEL_POLICY: POLICY, jobs_mod.LABEL_NODE: node,
                                              jobs_mod.LABEL_ACTION: "apply"}},
        "spec": {"template": {"spec": {"nodeName": node}}}, "status": {"active": 1}}
    if finished:
        body["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "2026-01-01T00:00:00Z"}
    return body


def primed_view() -> View:
    view = View()
    view.primed = True
    view.set_policy({"metadata": {"name": POLICY, "uid": "u", "generation": 1},
                     "spec": {"rules": ["-a always,exit -F arch=b64 -S execve -k procmon"]}})
    return view


def test_a_running_job_deleted_is_kept_as_failed_until_recorded() -> None:
    view = primed_view()
    view.on_node(sim.aks_node("user", 1))
    node = next(iter(view.nodes))
    view.on_job(job_body("j1", node))
    view.dirty.clear()
    view.on_job(job_body("j1", node), deleted=True)
    assert view.jobs["j1"].outcome == "failed" and "j1 was deleted before it finished" in view.results["j1"]["message"]
    assert POLICY in view.dirty
    view.settle_gone_jobs()
    assert "j1" in view.jobs  # not recorded yet
    view.recorded.add("j1")
    view.settle_gone_jobs()
    assert "j1" not in view.jobs and "j1" not in view.results


def test_a_finished_job_deleted_keeps_its_outcome_and_a_recorded_one_goes() -> None:
    view = primed_view()
    view.on_job(job_body("j2", "n"))
    view.on_job(job_body("j2", "n", finished=True), deleted=True)  # TTL: finished while unseen
    assert view.jobs["j2"].outcome == "succeeded" and "j2" not in view.results
    view.on_job(job_body("j3", "n", finished=True))
    view.recorded.add("j3")
    view.on_job(job_body("j3", "n", finished=True), deleted=True)
    assert "j3" not in view.jobs


def test_replace_drops_only_what_was_not_heard_of_since_the_listing_began() -> None:
    view = primed_view()
    for i in range(3):
        view.on_node(sim.aks_node("user", i))
    names = sorted(view.nodes)
    listed_since = time.monotonic()
    view.on_node(sim.aks_node("user", 9))  # created after the LIST began: not in it, must stay
    new = [n for n in view.nodes if n not in names][0]
    listing = [{"metadata": {"name": names[1]}}, {"metadata": {"name": names[2]}}]
    assert view.replace("nodes", listing, listed_since) == [names[0]]
    assert sorted(view.nodes) == sorted([names[1], names[2], new])


def test_replace_of_jobs_treats_a_missing_running_job_as_deleted() -> None:
    view = primed_view()
    view.on_job(job_body("j4", "n"))
    view.on_job(job_body("j5", "n"))
    gone = view.replace("jobs", [{"metadata": {"name": "j5"}}], time.monotonic())
    assert gone == ["j4"] and view.jobs["j4"].outcome == "failed" and "j4" in view.gone_jobs
    assert view.replace("jobs", [{"metadata": {"name": "j5"}}], time.monotonic()) == []  # kept, not dropped again
