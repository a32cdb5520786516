"""Pure-module tests for the operator's decisions: node facts, selectors, rollout, Jobs, status."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from nodeaudit.core import jobs, nodes, rollout, status
from nodeaudit.testing import apiserver
from nodeaudit.testing import simulator as sim

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
H = "sha256:" + "ab" * 32


def facts(name: str, **kw: object) -> nodes.NodeFacts:
    base = {"name": name, "uid": f"uid-{name}", "boot_id": f"boot-{name}", "ready": True,
            "labels": {"kubernetes.io/os": "linux"}}
    base.update(kw)
    return nodes.NodeFacts(**base)  # type: ignore[arg-type]


def ok_record(n: nodes.NodeFacts, bundle: str = H, when: dt.datetime = NOW, **kw: object) -> dict[str, object]:
    rec = {"bundle": bundle, "result": "ok", "time": when.isoformat(), "bootID": n.boot_id, "uid": n.uid,
           "failures": 0, "lastSuccess": when.isoformat()}
    rec.update(kw)
    return rec


# ---- nodes ----------------------------------------------------------------------------------

def test_facts_from_aks_node() -> None:
    raw = sim.aks_node("user1", 3, taints=[{"key": nodes.STARTUP_TAINT_KEY, "effect": "NoSchedule"}])
    raw["metadata"]["uid"] = "u1"
    raw["metadata"]["annotations"]["nodeaudit.io/procmon"] = json.dumps({"result": "ok"})
    f = nodes.facts_from_node(raw)
    assert f.linux and not f.virtual and f.eligible and f.ready and f.has_startup_taint
    assert f.boot_id == raw["status"]["nodeInfo"]["bootID"] and f.pool == "user1"
    assert f.record("procmon") == {"result": "ok"} and f.record("other") is None


def test_windows_and_virtual_nodes_not_eligible() -> None:
    assert not nodes.facts_from_node(sim.aks_node("win", 0, os_name="windows")).eligible
    assert not nodes.facts_from_node(sim.virtual_node()).eligible
    assert not facts("x", provider_id="vk://aci").eligible
    assert not facts("x", deleting=True).eligible


@pytest.mark.parametrize(("selector", "expected"), [
    ({}, True),
    ({"matchLabels": {"pool": "a"}}, True),
    ({"matchLabels": {"pool": "b"}}, False),
    ({"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a", "c"]}]}, True),
    ({"matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["a"]}]}, False),
    ({"matchExpressions": [{"key": "gpu", "operator": "NotIn", "values": ["x"]}]}, True),
    ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, False),
    ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, True),
    # node affinity's Gt/Lt (the ama-logs DaemonSet's nodeSelectorTerms go through the same matcher)
    ({"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["1"]}]}, True),
    ({"matchExpressions": [{"key": "gen", "operator": "Lt", "values": ["2"]}]}, False),
    ({"matchExpressions": [{"key": "pool", "operator": "Gt", "values": ["1"]}]}, False),  # not a number
    ({"matchExpressions": [{"key": "pool", "operator": "Bogus", "values": ["a"]}]}, False),
])
def test_selector_matching(selector: dict[str, object], expected: bool) -> None:
    assert nodes.matches(selector, {"pool": "a", "gen": "2"}) is expected


# ---- rollout --------------------------------------------------------------------------------

def test_max_unavailable_resolution() -> None:
    assert rollout.resolve_max_unavailable(5, 100) == 5
    assert rollout.resolve_max_unavailable("25%", 10) == 2
    assert rollout.resolve_max_unavailable("25%", 2) == 1
    assert rollout.resolve_max_unavailable("100%", 1000) == 1000


def test_new_nodes_limited_by_budget_and_not_held_back_by_updates() -> None:
    old = [facts(f"old{i}") for i in range(4)]
    new = [facts(f"new{i}") for i in range(4)]
    records = {n.name: ok_record(n, bundle="sha256:old") for n in old}
    running = {"old0": "update", "old1": "update"}  # the update budget (2) is full
    p = rollout.plan(rollout.Settings(bundle=H, max_unavailable=2), old + new, records, running, NOW)
    assert [s.node for s in p.start] == ["new0", "new1"]
    assert all(s.reason == "new" for s in p.start)


def test_reasons_reboot_reimage_update_verify() -> None:
    a, b, c, d = facts("a"), facts("b"), facts("c"), facts("d")
    records = {
        "a": ok_record(a, bootID="older-boot"),
        "b": ok_record(b, uid="older-uid"),
        "c": ok_record(c, bundle="sha256:old"),
        "d": ok_record(d, when=NOW - dt.timedelta(hours=7)),
    }
    p = rollout.plan(rollout.Settings(bundle=H, max_unavailable=10), [a, b, c, d], records, {}, NOW)
    assert {s.node: s.reason for s in p.start} == {"a": "rebooted", "b": "reimaged", "c": "update", "d": "verify"}


def test_verify_not_due_requeues() -> None:
    a = facts("a")
    p = rollout.plan(rollout.Settings(bundle=H), [a], {"a": ok_record(a, when=NOW - dt.timedelta(hours=1))}, {}, NOW)
    assert p.start == [] and p.states == {"a": "configured"}
    assert p.requeue_after == pytest.approx(5 * 3600)


def test_running_verify_keeps_a_configured_node_configured() -> None:
    a, b = facts("a"), facts("b")
    old = NOW - dt.timedelta(hours=7)
    records = {"a": ok_record(a, when=old), "b": ok_record(b, bundle="sha256:" + "cd" * 32)}
    p = rollout.plan(rollout.Settings(bundle=H), [a, b], records, {"a": "update", "b": "update"}, NOW)
    assert p.states == {"a": "configured", "b": "applying"} and p.start == []
    p = rollout.plan(rollout.Settings(bundle=H, max_unavailable=2), [a, b], records, {}, NOW)
    assert [(s.node, s.reason) for s in p.start] == [("a", "verify"), ("b", "update")]
    assert p.states == {"a": "configured", "b": "applying"}


def test_retry_backoff_bound_and_stall() -> None:
    a, b = facts("a"), facts("b")
    failed = {"bundle": H, "result": "failed", "bootID": a.boot_id, "uid": a.uid}
    s = rollout.Settings(bundle=H, max_unavailable=10, max_failures=1, retry_backoff=30)
    p = rollout.plan(s, [a], {"a": {**failed, "failures": 1, "time": NOW.isoformat()}}, {}, NOW)
    assert p.start == [] and p.states["a"] == "retrying" and p.requeue_after == pytest.approx(30)
    later = NOW + dt.timedelta(seconds=31)
    p = rollout.plan(s, [a], {"a": {**failed, "failures": 1, "time": NOW.isoformat()}}, {}, later)
    assert [(x.node, x.reason, x.attempt) for x in p.start] == [("a", "retry", 1)]
    b_rec = ok_record(b, bundle="sha256:old")
    p = rollout.plan(s, [a, b], {"a": {**failed, "failures": 3, "time": NOW.isoformat()}, "b": b_rec}, {}, later)
    assert p.stalled and p.failed_nodes == ["a"] and p.start == []  # stalled: no update for b


def test_paused_and_not_ready() -> None:
    a, b = facts("a"), facts("b", ready=False)
    p = rollout.plan(rollout.Settings(bundle=H, paused=True), [a, b], {}, {}, NOW)
    assert p.start == [] and p.states == {"a": "pending", "b": "waiting"}


def test_run_keys_are_deterministic_and_distinct() -> None:
    a = facts("a")
    s = rollout.Settings(bundle=H)
    k1 = rollout.plan(s, [a], {}, {}, NOW).start[0].run_key
    assert k1 == rollout.plan(s, [a], {}, {}, NOW).start[0].run_key
    k2 = rollout.plan(s, [facts("a", boot_id="other")], {"a": ok_record(a)}, {}, NOW).start[0].run_key
    assert k1 != k2


# ---- jobs -----------------------------------------------------------------------------------

def test_job_manifest_is_safe_and_pinned() -> None:
    m = jobs.job_manifest(policy_name="procmon", policy_uid="u", node_name="aks-user1-12345678-vmss000000",
                          bundle_hash=H, image="img:1", namespace="nodeaudit-system", action="apply", run_key="k")
    assert len(m["metadata"]["name"]) <= 63
    assert m["metadata"]["name"] == jobs.job_name("procmon", "aks-user1-12345678-vmss000000", "apply", "k")
    pod = m["spec"]["template"]["spec"]
    assert pod["nodeName"] == "aks-user1-12345678-vmss000000" and pod["hostPID"]
    assert pod["containers"][0]["command"] == ["sh", "/bundle/job-entry.sh"]
    assert "procmon" not in " ".join(pod["containers"][0]["command"])
    # The environment passes through nsenter into apply.sh, where NODEAUDIT_HOST_ROOT is a test-only prefix.
    assert not [e for e in pod["containers"][0].get("env", []) if e["name"].startswith("NODEAUDIT_")]
    assert m["metadata"]["labels"]["nodeaudit.io/bundle"] == "ab" * 16
    r = jobs.job_manifest(policy_name="procmon", policy_uid="u", node_name="n", bundle_hash=H, image="i",
                          namespace="ns", action="remove", run_key="k")
    assert r["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--remove"


def test_configmap_and_results() -> None:
    class B:
        hash, hex, policy = H, "ab" * 32, "procmon"
        files = {"apply.sh": b"#!/bin/sh\n", "blob": b"\xff\x00"}
    cm = jobs.configmap_manifest(B(), "ns")
    assert cm["metadata"]["name"] == "nodeaudit-bundle-" + "ab" * 8
    assert cm["data"]["apply.sh"] and cm["binaryData"]["blob"] == "/wA="
    assert jobs.parse_result('installing\n{"ok": true, "bundle": "x"}\n') == {"ok": True, "bundle": "x"}
    assert jobs.parse_result("garbage") is None
    assert jobs.job_outcome({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == "failed"


# ---- status ---------------------------------------------------------------------------------

def test_status_conditions() -> None:
    ok = status.build_status(status.Summary(generation=2, bundle=H, matched=3, configured=3), "t1")
    conds = {c["type"]: c for c in ok["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Reconciling"]["status"] == "False"
    assert ok["observedGeneration"] == 2 and ok["nodes"]["configured"] == 3
    again = status.build_status(status.Summary(generation=2, bundle=H, matched=3, configured=3), "t2",
                                ok["conditions"])
    assert not status.status_changed(ok, again)
    assert {c["type"]: c for c in again["conditions"]}["Ready"]["lastTransitionTime"] == "t1"
    bad = status.build_status(status.Summary(generation=3, invalid="spec.rules[0]: bad"), "t")
    conds = {c["type"]: c for c in bad["conditions"]}
    assert conds["Stalled"]["reason"] == "InvalidSpec" and "rules[0]" in conds["Stalled"]["message"]
    conflict = status.build_status(status.Summary(generation=1, matched=1, configured=1,
                                                  conflicts={"first": ["n1"]}), "t")
    assert {c["type"]: c for c in conflict["conditions"]}["Degraded"]["reason"] == "Conflict"


# ---- the test API server's own pieces ---------------------------------------------------------

def test_selectors_and_patches() -> None:
    sel = apiserver.parse_label_selector("a=1,b!=2,c in (x, y),!d,e")
    assert sel({"a": "1", "c": "x", "e": ""}) and not sel({"a": "1", "c": "z", "e": ""})
    f = apiserver.parse_field_selector("spec.nodeName=n1,metadata.name!=x")
    assert f({"spec": {"nodeName": "n1"}, "metadata": {"name": "y"}})
    assert apiserver.merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {"a": {"c": 2, "d": 3}}
    doc = apiserver.json_patch({"m": {"f": ["x"]}}, [{"op": "test", "path": "/m/f", "value": ["x"]},
                                                    {"op": "remove", "path": "/m/f/0"}])
    assert doc == {"m": {"f": []}}
    with pytest.raises(apiserver.ApiError):
        apiserver.json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 2}])


def test_agent_ready_stands_beside_ready_and_keeps_its_transition_time() -> None:
    done: dict[str, Any] = dict(generation=2, bundle="sha256:ab", matched=3, configured=3)
    missing = ("False", "AgentMissing", "scale sets without a working monitoring agent: aks-user2-vmss")
    st = status.build_status(status.Summary(**done, agent=missing, agent_scale_sets=[{"scaleSet": "aks-user2-vmss"}]),
                             "2026-01-01T00:00:00Z")
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["AgentReady"]["status"] == "False"
    assert conds["AgentReady"]["observedGeneration"] == 2 and st["agent"] == [{"scaleSet": "aks-user2-vmss"}]
    later = status.build_status(status.Summary(**done, agent=missing), "2026-01-01T01:00:00Z", st["conditions"])
    assert {c["type"]: c for c in later["conditions"]}["AgentReady"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert "agent" not in later  # None: status.agent is left as it is
    # Without a verdict (invalid spec, or before the first check) there is no AgentReady at all.
    assert "AgentReady" not in {c["type"] for c in status.build_status(status.Summary(**done), "t")["conditions"]}


def test_retry_spends_the_budget_of_the_failed_job() -> None:
    """A rebooted node's failed Job ran on the new-node budget: its retries stay there (a stalled
    update rollout does not block them), although ``lastSuccess`` is from the previous boot."""
    a, b = facts("a"), facts("b")
    earlier = (NOW - dt.timedelta(minutes=5)).isoformat()
    failed = {"bundle": H, "result": "failed", "bootID": a.boot_id, "uid": a.uid, "failures": 1,
              "time": earlier, "lastSuccess": (NOW - dt.timedelta(days=1)).isoformat()}
    exhausted = {"bundle": H, "result": "failed", "bootID": b.boot_id, "uid": b.uid, "failures": 3, "time": earlier}
    s = rollout.Settings(bundle=H, max_unavailable=10, max_failures=1, retry_backoff=30)
    p = rollout.plan(s, [a, b], {"a": {**failed, "budget": "new"}, "b": exhausted}, {}, NOW)
    assert p.stalled
    assert [(x.node, x.reason, x.budget) for x in p.start] == [("a", "retry", "new")]
    # An update's retry stays on the update budget: stalled, so it waits.
    p = rollout.plan(s, [a, b], {"a": {**failed, "budget": "update"}, "b": exhausted}, {}, NOW)
    assert p.stalled and p.start == []
    # Records from before ``budget`` existed: "new" only for a node never configured.
    p = rollout.plan(s, [a, b], {"a": failed, "b": exhausted}, {}, NOW)
    assert p.start == []
    p = rollout.plan(s, [a, b], {"a": {k: v for k, v in failed.items() if k != "lastSuccess"}, "b": exhausted},
                     {}, NOW)
    assert [x.budget for x in p.start] == ["new"]
    assert not any(x.run_key.endswith("|new") for x in p.start)


def test_status_create_failed_is_degraded() -> None:
    msg = 'creating Job na-a (POST /apis/batch/v1/namespaces/x/jobs) failed: HTTP 404: namespaces "x" not found'
    st = status.build_status(status.Summary(generation=1, bundle=H, matched=1, pending=1, create_failed=msg), "t")
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["reason"] == "CreateFailed"
    assert conds["Degraded"]["message"] == msg and conds["Ready"]["status"] == "False"
