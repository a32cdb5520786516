"""The Warnings condition and the NoMatchingNodes reason in the status (core.status)."""

from __future__ import annotations

from nodeaudit.core import events, status

NOW = "2026-12-01T00:00:00Z"


def conditions(summary: status.Summary, previous: list | None = None) -> dict[str, dict]:
    return {c["type"]: c for c in status.build_status(summary, NOW, previous or [])["conditions"]}


def test_no_matching_nodes_is_ready_with_its_own_reason_and_a_warning() -> None:
    found = conditions(status.Summary(generation=1, bundle="sha256:x", matched=0))
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("True", "NoMatchingNodes")
    assert (found["Warnings"]["status"], found["Warnings"]["reason"]) == ("True", "NoMatchingNodes")
    assert found["Reconciling"]["status"] == "False" and found["Stalled"]["status"] == "False"


def test_warnings_condition_appears_with_warnings_and_turns_false_when_they_go() -> None:
    none = conditions(status.Summary(generation=1, bundle="sha256:x", matched=2, configured=2))
    assert "Warnings" not in none and none["Ready"]["reason"] == "Configured"
    warned = status.build_status(status.Summary(generation=1, bundle="sha256:x", matched=2, configured=2,
                                                warnings=("spec.rules[0]: a", "spec.rules[1]: b")), NOW)
    found = {c["type"]: c for c in warned["conditions"]}
    assert found["Warnings"]["message"] == "spec.rules[0]: a; spec.rules[1]: b"
    assert found["Ready"]["status"] == "True"  # warnings never change Ready
    cleared = conditions(status.Summary(generation=2, bundle="sha256:x", matched=2, configured=2),
                         warned["conditions"])
    assert (cleared["Warnings"]["status"], cleared["Warnings"]["reason"]) == ("False", "NoWarnings")


def test_warning_events() -> None:
    assert events.policy_warnings(["a", "b"]) == ("Warning", "PolicyWarnings", "a; b")
    assert events.no_matching_nodes()[:2] == ("Warning", "NoMatchingNodes")
