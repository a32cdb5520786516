"""kstatus semantics of the policy status (issue 15, case 5): nothing waits forever."""

from __future__ import annotations

from typing import Any

from nodeaudit.core import status

H = "sha256:" + "ab" * 32


def conds(**summary: Any) -> dict[str, dict[str, Any]]:
    built = status.build_status(status.Summary(generation=4, bundle=H, **summary), "2026-01-01T00:00:00Z")
    return {c["type"]: c for c in built["conditions"]}


def test_retries_used_up_below_max_failures_settles() -> None:
    c = conds(matched=3, configured=2, failed=1, failed_nodes=["aks-user-2"])
    assert c["Reconciling"]["status"] == "False" and c["Reconciling"]["reason"] == "RetriesExhausted"
    assert c["Ready"]["status"] == "True" and c["Ready"]["reason"] == "ConfiguredWithFailures"
    assert c["Ready"]["message"].startswith("2 of 3 nodes configured, 1 failed")
    assert "aks-user-2" in c["Ready"]["message"]
    assert c["Stalled"]["status"] == "False"
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("True", "NodesFailed")
    assert "aks-user-2" in c["Degraded"]["message"]


def test_first_failure_is_degraded_while_it_is_retried() -> None:
    c = conds(matched=3, configured=2, retrying=1, retrying_nodes=["aks-user-2"])
    assert c["Reconciling"]["status"] == "True"  # the retry will come by itself
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "Progressing"
    assert c["Degraded"]["status"] == "True" and c["Degraded"]["reason"] == "NodesFailed"
    assert c["Degraded"]["message"] == "1 node(s) failing, retried: aks-user-2"


def test_failed_and_retrying_are_both_named() -> None:
    c = conds(matched=5, configured=3, failed=1, failed_nodes=["a"], retrying=1, retrying_nodes=["b"])
    assert c["Degraded"]["message"] == "1 node(s) failed: a; 1 node(s) failing, retried: b"
    assert c["Reconciling"]["status"] == "True"


def test_max_failures_stalls_and_is_not_ready() -> None:
    c = conds(matched=3, failed=3, failed_nodes=["a", "b", "c"], stalled=True)
    assert c["Stalled"]["status"] == "True" and c["Ready"]["status"] == "False"
    assert c["Reconciling"]["status"] == "False"


def test_only_configured_is_ready_without_degraded() -> None:
    c = conds(matched=3, configured=3)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("True", "Configured")
    assert c["Ready"]["message"] == "3 of 3 nodes configured (0 applying, 0 pending, 0 retrying, 0 not ready)"
    assert (c["Degraded"]["status"], c["Reconciling"]["status"]) == ("False", "False")


def test_paused_with_failures_does_not_claim_progress() -> None:
    c = conds(matched=3, configured=2, failed=1, failed_nodes=["a"], paused=True)
    assert c["Reconciling"]["status"] == "False" and c["Ready"]["reason"] == "RolloutPaused"


def test_conflict_message_keeps_failures() -> None:
    c = conds(matched=2, configured=1, failed=1, failed_nodes=["b"], conflicts={"older": ["a"]})
    assert c["Degraded"]["reason"] == "Conflict"
    assert c["Degraded"]["message"] == ("syslog settings conflict with policy older on 1 node(s) (a); those nodes "
                                        "are left to the older policy; 1 node(s) failed: b")


def test_degraded_keeps_its_transition_time_from_first_failure_to_exhaustion() -> None:
    first = status.build_status(status.Summary(generation=1, bundle=H, matched=1, retrying=1,
                                               retrying_nodes=["a"]), "t1")
    later = status.build_status(status.Summary(generation=1, bundle=H, matched=1, failed=1, failed_nodes=["a"]),
                                "t2", first["conditions"])
    degraded = {c["type"]: c for c in later["conditions"]}["Degraded"]
    assert degraded["status"] == "True" and degraded["lastTransitionTime"] == "t1"
