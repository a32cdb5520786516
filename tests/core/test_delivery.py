"""The Delivered verdict and the canary query, pure (the SDK side: tests/azure/test_arm_delivery.py)."""

from __future__ import annotations

import pytest

from nodeaudit.core import delivery as D

NOW = 1_800_000_000.0


def rec(node: str, at: int, ok: bool = True) -> dict:
    return {"result": "ok" if ok else "failed", "canaryId": f"{node}:abcdefabcdef:{at}-1", "canaryAt": at}


def test_records_without_a_canary_are_counted_apart_and_failed_ones_ignored():
    sent, without = D.sent_canaries({"a": rec("a", 10), "b": {"result": "ok"}, "c": rec("c", 10, ok=False), "d": None})
    assert [s.node for s in sent] == ["a"] and without == ["b"]


def test_grace_period_decides_between_waiting_and_missing():
    sent, _ = D.sent_canaries({"a": rec("a", int(NOW) - 60), "b": rec("b", int(NOW) - 3600)})
    v = D.delivery_verdict(sent, [], {}, now=NOW, grace_seconds=900)
    assert (v.status, v.reason, v.missing) == ("False", "CanariesMissing", ["b"])
    assert "1 within the grace period" in v.message and "15m" in v.message
    v = D.delivery_verdict(sent[:1], [], {}, now=NOW, grace_seconds=900)
    assert (v.status, v.reason) == ("Unknown", "Waiting")


def test_a_newer_or_equal_canary_counts_and_sets_delivered_at():
    sent, _ = D.sent_canaries({"a": rec("a", 100)})
    got = {"a": D.Arrived("a", "a:abcdefabcdef:120-9", 120, "2027-01-15T08:00:02Z")}
    v = D.delivery_verdict(sent, [], got, now=NOW)
    assert (v.status, v.delivered_at, v.arrived, v.expected) == ("True", {"a": "2027-01-15T08:00:02Z"}, 1, 1)
    older = {"a": D.Arrived("a", "a:abcdefabcdef:90-9", 90, "2027-01-15T07:59:00Z")}
    assert D.delivery_verdict(sent, [], older, now=NOW, grace_seconds=1).status == "False"


def test_no_canary_at_all_is_unknown():
    v = D.delivery_verdict([], ["a"], {}, now=NOW)
    assert (v.status, v.reason) == ("Unknown", "NoCanary") and "older apply.sh" in v.message


def test_the_query_window_is_bounded():
    sent, _ = D.sent_canaries({"a": rec("a", int(NOW) - 100 * 86400)})
    start, end = D.query_window(sent, NOW)
    assert (end - start).total_seconds() == D.MAX_WINDOW_SECONDS
    sent, _ = D.sent_canaries({"a": rec("a", int(NOW) - 600)})
    start, end = D.query_window(sent, NOW)
    assert (end - start).total_seconds() == 900
    assert D.row_limit(sent) == 101 and D.row_limit(sent * 60_000) == D.MAX_ROWS


def test_the_query_names_only_a_valid_policy():
    assert 'policy == "procmon"' in D.canary_query("procmon", 5)
    with pytest.raises(ValueError):
        D.canary_query('p" | union *', 5)


def test_delivered_updates_only_change_what_changed():
    recs = {"a": {**rec("a", 1), "deliveredAt": "T1"}, "b": rec("b", 1)}
    ups = D.delivered_updates(recs, {"a": "T1", "b": "T2"})
    assert list(ups) == ["b"] and '"deliveredAt":"T2"' in ups["b"][1]
    ops = D.delivered_ops("procmon", *ups["b"])
    assert [o["op"] for o in ops] == ["test", "replace"] and ops[0]["path"] == "/metadata/annotations/nodeaudit.io~1procmon"


def test_the_marker_apply_sh_writes_is_the_one_the_query_reads():
    import re
    from pathlib import Path

    import nodeaudit

    apply_sh = (Path(nodeaudit.__file__).parent / "host" / "apply.sh").read_text()
    line = next(x for x in apply_sh.splitlines() if "auditctl -m \"" in x)
    assert 'nodeaudit-canary id=$CANARY_ID policy=$POLICY' in line
    assert D.CANARY_RE.search("msg='text=nodeaudit-canary id=aks-x-vmss000001:0123456789ab:1800000000-42 policy=procmon'")
    assert re.search(r'CANARY_ID="\$\(canary_node\):.*:\$CANARY_AT-\$\$"', apply_sh)
