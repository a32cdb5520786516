"""The pure rollout planner: budgets, reasons for a Job, verification, retries and backoff."""

from __future__ import annotations

import datetime as dt

import pytest

from nodeaudit.core import rollout
from tests.core.builders import NOW, H, facts, ok_record


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
