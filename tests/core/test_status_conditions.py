"""The policy status built from per-node counts: conditions, AgentReady beside Ready, create failures."""

from __future__ import annotations

from typing import Any

from nodeaudit.core import status
from tests.core.builders import H


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


def test_status_create_failed_is_degraded() -> None:
    msg = 'creating Job na-a (POST /apis/batch/v1/namespaces/x/jobs) failed: HTTP 404: namespaces "x" not found'
    st = status.build_status(status.Summary(generation=1, bundle=H, matched=1, pending=1, create_failed=msg), "t")
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["reason"] == "CreateFailed"
    assert conds["Degraded"]["message"] == msg and conds["Ready"]["status"] == "False"
