"""The controller's pure decisions: node records, Job selection, patches, removal, Events, GC."""

from __future__ import annotations

import datetime as dt
import json

from nodeaudit.core import events, noderecord, removal
from nodeaudit.core import jobs as jobs_mod
from nodeaudit.core.jobs import JobInfo
from nodeaudit.core.nodes import STARTUP_TAINT_KEY, NodeFacts, Taint

POLICY = "procmon"
NODE = NodeFacts(name="n1", uid="nuid", boot_id="boot1", ready=True, labels={"kubernetes.io/os": "linux"})


def job(name: str, *, outcome: str = "succeeded", bundle: str = "sha256:b", finished: str | None = None,
        node: str = "n1", action: str = "apply", finished_at: float | None = None, budget: str = "update") -> JobInfo:
    return JobInfo(name=name, policy=POLICY, node=node, action=action, budget=budget, bundle=bundle,
                   outcome=outcome, created=1.0, finished_at=finished_at, finished=finished)


def with_record(node: NodeFacts, record: dict[str, object]) -> NodeFacts:
    return NodeFacts(name=node.name, uid=node.uid, boot_id=node.boot_id, ready=node.ready, labels=node.labels,
                     taints=node.taints, records={POLICY: record})


# ---- the record ---------------------------------------------------------------------------------

def test_success_resets_failures_and_sets_last_success() -> None:
    previous = {"bundle": "sha256:b", "result": "failed", "bootID": "boot1", "uid": "nuid", "failures": 2}
    rec = noderecord.build_record(job("j1"), NODE, previous, {"ok": True, "distro": "debian-12", "lost": 0,
                                                               "other": "x"}, "2026-01-01T00:00:00.000Z")
    assert rec == {"bundle": "sha256:b", "result": "ok", "time": "2026-01-01T00:00:00.000Z", "bootID": "boot1",
                   "uid": "nuid", "job": "j1", "failures": 0, "budget": "update",
                   "lastSuccess": "2026-01-01T00:00:00.000Z", "distro": "debian-12", "lost": 0}


def test_failures_count_up_only_within_the_same_run() -> None:
    previous = {"bundle": "sha256:b", "result": "failed", "bootID": "boot1", "uid": "nuid", "failures": 2,
                "lastSuccess": "2025-12-31T00:00:00.000Z"}
    failed = job("j2", outcome="failed")
    rec = noderecord.build_record(failed, NODE, previous, {"ok": False, "message": "boom"}, "t")
    assert (rec["failures"], rec["error"], rec["lastSuccess"]) == (3, "boom", "2025-12-31T00:00:00.000Z")
    rebooted = NodeFacts(name="n1", uid="nuid", boot_id="boot2")
    assert noderecord.build_record(failed, rebooted, previous, None, "t")["failures"] == 1
    other_bundle = job("j3", outcome="failed", bundle="sha256:c")
    assert noderecord.build_record(other_bundle, NODE, previous, None, "t")["failures"] == 1


def test_a_result_line_saying_not_ok_fails_a_succeeded_job() -> None:
    assert noderecord.job_ok(job("j"), None)
    assert not noderecord.job_ok(job("j"), {"ok": False})
    rec = noderecord.build_record(job("j"), NODE, None, {"ok": False}, "t")
    assert rec["result"] == "failed" and rec["error"] == "Job j failed without a result line"
    long = noderecord.build_record(job("j", outcome="failed"), NODE, None, {"message": "x" * 600}, "t")
    assert len(long["error"]) == noderecord.ERROR_LIMIT


def test_record_time_has_milliseconds_in_utc() -> None:
    when = dt.datetime(2026, 1, 1, 10, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert noderecord.record_time(when) == "2026-01-01T08:00:00.123Z"


def test_first_success_of_boot() -> None:
    assert noderecord.first_success_of_boot(None, NODE)
    seen = {"lastSuccess": "t", "bootID": "boot1", "uid": "nuid"}
    assert not noderecord.first_success_of_boot(seen, NODE)
    assert noderecord.first_success_of_boot({**seen, "bootID": "boot0"}, NODE)


# ---- which finished Jobs to record ----------------------------------------------------------------

def test_only_the_newest_finished_job_per_node_is_recorded() -> None:
    jobs = {j.name: j for j in (job("a", finished="2026-01-01T10:00:00Z"), job("b", finished="2026-01-01T10:05:00Z"),
                                job("r", outcome="running"), job("x", action="remove", finished="2026-01-01T11:00:00Z"),
                                job("gone", node="n9", finished="2026-01-01T10:00:00Z"))}
    todo, settled = noderecord.jobs_to_record(POLICY, jobs, {"n1": NODE}, set())
    assert [j.name for j in todo] == ["b"] and settled == {"a", "gone"}
    todo, settled = noderecord.jobs_to_record(POLICY, jobs, {"n1": NODE}, {"b"})
    assert [j.name for j in todo] == ["a"]


def test_a_job_older_than_the_record_is_settled_not_written() -> None:
    record: dict[str, object] = {"job": "b", "time": "2026-01-01T10:05:00.300Z"}
    node = with_record(NODE, record)
    a, b = job("a", finished="2026-01-01T10:00:00Z"), job("b", finished="2026-01-01T10:05:00Z")
    assert noderecord.jobs_to_record(POLICY, {"a": a, "b": b}, {"n1": node}, set()) == ([], {"a", "b"})
    # b pruned by its TTL: the record's time still says a is older.
    assert noderecord.superseded(a, record, {})
    # A Job that finished after the record was written is not superseded.
    c = job("c", finished="2026-01-01T10:06:00Z")
    assert not noderecord.superseded(c, record, {"b": b})
    assert noderecord.jobs_to_record(POLICY, {"c": c}, {"n1": node}, set()) == ([c], set())
    # Without an API finish time nothing is known to be older.
    assert not noderecord.superseded(job("d"), record, {})


def test_finish_key_orders_by_api_time_then_first_seen() -> None:
    early, late = job("e", finished="2026-01-01T10:00:00Z", finished_at=9.0), job("l", finished_at=1.0)
    assert noderecord.finish_key(early) > noderecord.finish_key(late)
    assert noderecord.finish_key(job("x", finished_at=2.0)) > noderecord.finish_key(late)


# ---- patches --------------------------------------------------------------------------------------

def test_annotation_patch_writes_and_removes() -> None:
    assert noderecord.annotation_patch(POLICY, "{}") == {"metadata": {"annotations": {"nodeaudit.io/procmon": "{}"}}}
    assert noderecord.annotation_patch(POLICY, None) == {"metadata": {"annotations": {"nodeaudit.io/procmon": None}}}
    assert noderecord.record_text({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


def test_record_and_untaint_is_one_guarded_patch() -> None:
    gate = {"key": STARTUP_TAINT_KEY, "value": "true", "effect": "NoSchedule"}
    other = {"key": "dedicated", "value": "x", "effect": "NoSchedule"}
    tainted = NodeFacts(name="n1", uid="nuid", taints=(Taint(STARTUP_TAINT_KEY, "NoSchedule", "true"),))
    ops = noderecord.record_and_untaint_ops(tainted, POLICY, '{"result":"ok"}', [gate, other], None)
    assert ops == [{"op": "test", "path": "/spec/taints", "value": [gate, other]},
                   {"op": "replace", "path": "/spec/taints", "value": [other]},
                   {"op": "add", "path": "/metadata/annotations/nodeaudit.io~1procmon", "value": '{"result":"ok"}'}]
    bare = noderecord.record_and_untaint_ops(tainted, POLICY, "{}", [gate], "41")
    assert bare[2:4] == [{"op": "test", "path": "/metadata/resourceVersion", "value": "41"},
                         {"op": "add", "path": "/metadata/annotations", "value": {}}]
    # A node that has records has an annotations map: no creation, whatever the last event said.
    assert len(noderecord.record_and_untaint_ops(with_record(tainted, {}), POLICY, "{}", [gate], "41")) == 3


# ---- removal --------------------------------------------------------------------------------------

def test_removal_plan() -> None:
    holder = with_record(NODE, {"bundle": "sha256:b"})
    run_key = removal.removal_run_key(POLICY, holder)
    assert run_key == "remove|sha256:b|nuid|boot1"
    name = jobs_mod.job_name(POLICY, "n1", "remove", run_key)
    plan = removal.plan_removal(POLICY, [holder], {}, timed_out=False)
    assert [(s.node, s.run_key) for s in plan.start] == [("n1", run_key)] and plan.waiting == ["n1"]
    assert removal.plan_removal(POLICY, [holder], {}, timed_out=True).clear == ["n1"]
    running = {name: job(name, outcome="running", action="remove")}
    assert removal.plan_removal(POLICY, [holder], running, timed_out=False).waiting == ["n1"]
    assert removal.plan_removal(POLICY, [holder], running, timed_out=True).clear == ["n1"]
    failed = removal.plan_removal(POLICY, [holder], {name: job(name, outcome="failed", action="remove")}, False)
    assert failed.failed == [("n1", name)] and failed.clear == ["n1"] and not failed.waiting
    not_ready = NodeFacts(name="n1", uid="nuid", boot_id="boot1", records={POLICY: {"bundle": "sha256:b"}})
    assert removal.plan_removal(POLICY, [not_ready], {}, timed_out=False).clear == ["n1"]


# ---- Jobs and ConfigMaps --------------------------------------------------------------------------

def test_job_info_keeps_first_seen_times() -> None:
    body = {"metadata": {"name": "j", "labels": {jobs_mod.LABEL_POLICY: POLICY, jobs_mod.LABEL_NODE: "n1"},
                         "annotations": {jobs_mod.ANNOTATION_BUNDLE: "sha256:b"}}, "status": {}}
    first = jobs_mod.job_info(body, None, 5.0)
    assert first is not None and (first.outcome, first.created, first.finished_at, first.action) == (
        "running", 5.0, None, "apply")
    done = {**body, "status": {"completionTime": "2026-01-01T10:00:00Z",
                               "conditions": [{"type": "Complete", "status": "True"}]}}
    later = jobs_mod.job_info(done, first, 9.0)
    assert later is not None and (later.created, later.finished_at, later.finished) == (
        5.0, 9.0, "2026-01-01T10:00:00Z")
    assert jobs_mod.job_info({"metadata": {"name": "x", "labels": {}}}, None, 1.0) is None


def test_unused_configmaps_keeps_current_bundles_and_running_jobs() -> None:
    existing = [jobs_mod.configmap_name(h) for h in ("sha256:cur", "sha256:run", "sha256:old", "sha256:done")]
    jobs = [job("r", outcome="running", bundle="sha256:run"), job("d", bundle="sha256:done")]
    assert jobs_mod.unused_configmaps(existing, ["sha256:cur"], jobs) == [
        jobs_mod.configmap_name("sha256:old"), jobs_mod.configmap_name("sha256:done")]


# ---- Events ---------------------------------------------------------------------------------------

def test_event_body() -> None:
    now = dt.datetime(2026, 1, 1, 10, 0, 0, 5, tzinfo=dt.timezone.utc)
    body = events.event_body(policy=POLICY, policy_uid="puid", namespace="ns", type_="Warning",
                             reason="ApplyFailed", message="m" * 2000, now=now, instance="pod-1")
    assert body["metadata"] == {"generateName": "procmon.", "namespace": "ns"}
    assert body["involvedObject"] == {"apiVersion": "nodeaudit.io/v1alpha1", "kind": "NodeAuditPolicy",
                                      "name": POLICY, "uid": "puid"}
    assert len(body["message"]) == events.MESSAGE_LIMIT and body["reportingInstance"] == "pod-1"
    assert body["eventTime"] == body["firstTimestamp"] == "2026-01-01T10:00:00.000005Z"
    json.dumps(body)


def test_event_messages() -> None:
    assert events.apply_failed("n1", "boom", 2) == ("Warning", "ApplyFailed", "node n1: boom (attempt 2)")
    assert events.remove_failed("n1", "j") == ("Warning", "RemoveFailed", "node n1: removal Job j failed")
    nodes = [f"n{i}" for i in range(25)]
    _, reason, message = events.rollout_stalled(nodes)
    assert reason == "RolloutStalled" and message.startswith("rollout stopped: 25 node(s) failed after retries: n0, ")
    assert message.endswith("n19")
