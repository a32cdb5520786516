"""Arrival: the real azure-monitor-query LogsQueryClient against the local https Log Analytics
emulator, one bounded query per policy per check, Delivered from the node records' canaries."""

from __future__ import annotations

import time

import pytest

from nodeaudit.core import delivery as D
from nodeaudit.testing.armserver import WORKSPACE_CUSTOMER_ID, WORKSPACE_ID, Resp

NODES = ("aks-user-1-vmss000000", "aks-user-1-vmss000001", "aks-user-1-vmss000002")


def records(at: int, nodes=NODES) -> dict[str, dict]:
    return {n: {"result": "ok", "bundle": "sha256:" + "ab" * 32, "canaryId": f"{n}:{'ab' * 6}:{at}-{100 + i}",
                "canaryAt": at} for i, n in enumerate(nodes)}


def ship(arm, recs: dict[str, dict], nodes, workspace: str = WORKSPACE_ID, policy: str = "procmon") -> None:
    """What each node's agent puts into the Syslog table: audisp-syslog's line for the canary."""
    for n in nodes:
        arm.ship_canary(workspace, n, recs[n]["canaryId"], policy, recs[n]["canaryAt"])


def check(arun, checker, recs, *, now: float, workspace_resource_id=WORKSPACE_ID, workspace_id=None, grace=900.0):
    return arun(checker.check_arrival("procmon", recs, workspace_resource_id=workspace_resource_id,
                                      workspace_id=workspace_id, grace_seconds=grace, now=now))


def test_canaries_from_two_of_three_nodes_name_the_third(arm, make_checker, arun):
    at = int(time.time()) - 3600
    recs = records(at)
    ship(arm, recs, NODES[:2])
    checker = make_checker()
    v = check(arun, checker, recs, now=time.time())
    assert (v.status, v.reason) == ("False", "CanariesMissing"), v
    assert NODES[2] in v.message and NODES[0] not in v.message and "1 of 3" in v.message
    assert set(v.delivered_at) == set(NODES[:2]) and v.missing == [NODES[2]]
    # one query, bounded in time and rows
    ((where, body),) = arm.queries
    assert where == WORKSPACE_ID.lstrip("/").lower()
    assert "| take 103" in body["query"] and 'policy == "procmon"' in body["query"]
    start, end = body["timespan"].split("/")
    assert start.startswith(time.strftime("%Y-%m-%dT%H", time.gmtime(at - 300)))
    assert checker.clients.queries == 1


def test_all_arrived_is_true_with_counts_by_customer_id(arm, make_checker, arun):
    at = int(time.time()) - 60
    recs = records(at)
    ship(arm, recs, NODES, workspace=WORKSPACE_CUSTOMER_ID)
    v = check(arun, make_checker(), recs, now=time.time(), workspace_resource_id=None, workspace_id=WORKSPACE_CUSTOMER_ID)
    assert (v.status, v.reason) == ("True", "Delivered") and "all 3" in v.message, v
    assert arm.queries[0][0] == WORKSPACE_CUSTOMER_ID.lower()


def test_an_older_canary_in_the_workspace_does_not_count(arm, make_checker, arun):
    old = records(int(time.time()) - 7200)
    ship(arm, old, NODES)
    new = records(int(time.time()) - 30)  # applied again since: its canary is not there yet
    v = check(arun, make_checker(), new, now=time.time())
    assert (v.status, v.reason) == ("Unknown", "Waiting") and "0 of 3" in v.message, v


def test_canaries_of_another_policy_do_not_count(arm, make_checker, arun):
    at = int(time.time()) - 3600
    recs = records(at)
    ship(arm, recs, NODES, policy="identity")
    v = check(arun, make_checker(), recs, now=time.time())
    assert v.status == "False" and len(v.missing) == 3


def test_no_workspace_is_unknown_and_asks_nothing(arm, make_checker, arun):
    v = check(arun, make_checker(), records(1), now=time.time(), workspace_resource_id=None)
    assert (v.status, v.reason) == ("Unknown", "NoWorkspace") and arm.queries == []


def test_403_names_log_analytics_reader(arm, make_checker, arun):
    arm.query_override = lambda ws, body: Resp(403, {"error": {"code": "InsufficientAccessError",
                                                               "message": "The provided credentials have insufficient access"}})
    v = check(arun, make_checker(), records(int(time.time())), now=time.time())
    assert (v.status, v.reason) == ("Unknown", "QueryFailed") and "Log Analytics Reader on the workspace" in v.message, v


def test_429_retry_after_is_honoured(arm, make_checker, arun):
    at = int(time.time()) - 3600
    recs = records(at)
    ship(arm, recs, NODES)
    calls: list[float] = []

    def throttle_once(ws, body):
        calls.append(time.monotonic())
        if len(calls) == 1:
            return Resp(429, {"error": {"code": "ThrottledError", "message": "slow down"}}, headers={"Retry-After": "1"})
        return None

    arm.query_override = throttle_once
    v = check(arun, make_checker(), recs, now=time.time())
    assert v.status == "True" and len(calls) == 2 and calls[1] - calls[0] >= 0.95, (v, calls)


def test_query_text_and_its_emulation_agree():
    q = D.canary_query("procmon", 10)
    assert q.splitlines()[0] == "Syslog" and q.endswith("| take 10")
    with pytest.raises(ValueError):
        D.canary_query('x" or true', 10)
