"""Event aggregation (issue 15, case 6): one Event per policy, reason and rollout, rate-limited."""

from __future__ import annotations

import re

from nodeaudit.core import eventseries as events

TEMPLATE = "configured {count} node(s) with bundle sha256:ab: {subjects}"


def test_first_at_once_then_folded_once_per_interval() -> None:
    agg = events.Aggregator(interval=5.0)
    agg.add(0.0, "procmon", events.NORMAL, "NodesConfigured", "sha256:ab", TEMPLATE, "n0")
    (first,) = agg.due(0.0)
    assert (first.count, first.message) == (1, "configured 1 node(s) with bundle sha256:ab: n0")
    for i in range(1, 1000):
        agg.add(i / 1000, "procmon", events.NORMAL, "NodesConfigured", "sha256:ab", TEMPLATE, f"n{i}")
    assert agg.due(1.0) == []  # within the interval: nothing
    assert agg.next_due(1.0) == 4.0
    (second,) = agg.due(5.0)
    assert second.name == first.name and second.count == 1000
    assert second.message == "configured 1000 node(s) with bundle sha256:ab: n0, n1, n2, n3, n4 and 995 more"
    assert agg.due(100.0) == [] and agg.next_due(100.0) is None


def test_series_per_policy_reason_and_rollout() -> None:
    agg = events.Aggregator()
    agg.add(0, "a", events.NORMAL, "NodesConfigured", "sha256:1", TEMPLATE, "n")
    agg.add(0, "a", events.NORMAL, "NodesConfigured", "sha256:2", TEMPLATE, "n")
    agg.add(0, "a", events.NORMAL, "TaintRemoved", "sha256:1", TEMPLATE, "n")
    agg.add(0, "b", events.NORMAL, "NodesConfigured", "sha256:1", TEMPLATE, "n")
    names = [p.name for p in agg.due(0)]
    assert len(set(names)) == 4
    assert all(re.fullmatch(r"[a-z0-9.-]+\.[0-9a-f]{16}", n) for n in names)
    assert events.event_name("a", "NodesConfigured", "sha256:1") == names[0]


def test_force_flushes_and_forget_drops() -> None:
    agg = events.Aggregator(interval=60)
    agg.add(0, "p", events.WARNING, "ApplyFailed", "sha256:1", "{count} node(s) failed: {subjects}", "x")
    agg.due(0)
    agg.add(1, "p", events.WARNING, "ApplyFailed", "sha256:1", "{count} node(s) failed: {subjects}", "y")
    assert agg.due(2) == []
    (post,) = agg.due(2, force=True)
    assert post.message == "2 node(s) failed: x, y" and post.type == "Warning" and post.count == 2
    agg.forget("p")
    assert not agg.seen("p", "ApplyFailed", "sha256:1")


def test_occurrences_without_subject_count_times() -> None:
    agg = events.Aggregator()
    for t in range(3):
        agg.add(t, "p", events.NORMAL, "RolloutStarted", "sha256:1", "rollout started ({count}x)")
    (post,) = agg.due(10)
    assert post.message == "rollout started (3x)" and post.first == 0 and post.last == 2


def test_series_body_is_a_named_event_with_count_and_times() -> None:
    from nodeaudit.core import events as bodies

    agg = events.Aggregator()
    type_, reason, template = bodies.apply_failures("sha256:1", "node n1: rule {1} bad")
    agg.add(1_700_000_000.0, "procmon", type_, reason, "sha256:1", template, "n1")
    agg.add(1_700_000_060.0, "procmon", type_, reason, "sha256:1", template, "n2")
    (post,) = agg.due(1_700_000_060.0)
    body = bodies.series_body(post, policy_uid="uid-1", namespace="nodeaudit-system", instance="pod-1")
    assert body["metadata"] == {"name": post.name, "namespace": "nodeaudit-system"}
    assert (body["type"], body["reason"], body["count"]) == ("Warning", "ApplyFailed", 2)
    assert body["message"] == "2 node(s) failed to apply bundle sha256:1: n1, n2; latest: node n1: rule {1} bad"
    assert body["firstTimestamp"] == "2023-11-14T22:13:20Z" and body["lastTimestamp"] == "2023-11-14T22:14:20Z"
    assert body["involvedObject"]["uid"] == "uid-1" and body["involvedObject"]["kind"] == "NodeAuditPolicy"
    assert bodies.series_update(post) == {"count": 2, "message": body["message"], "lastTimestamp": body["lastTimestamp"]}
