"""One ARM list call per scale set per interval, however many nodes."""

from __future__ import annotations

from nodeaudit.azure.check import check_policy_agents
from nodeaudit.core.agent import AgentSettings
from nodeaudit.testing.armserver import aks_extensions, ama, vmss_node

SUB = "11111111-2222-3333-4444-555555555555"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fleet(n_nodes: int, n_sets: int) -> list[dict]:
    return [vmss_node(f"aks-pool{i % n_sets}-vmss{i:06d}", SUB, f"MC_rg{i % n_sets % 2}", f"aks-pool{i % n_sets}-vmss", i)
            for i in range(n_nodes)]


def test_500_nodes_in_5_scale_sets_make_5_list_calls_per_interval(arm, make_checker, arun):
    arm.default_extensions = lambda name: [*aks_extensions(), ama()]
    clock = FakeClock()
    checker = make_checker(ttl=3240.0, clock=clock)  # ttl_for_interval(1h)
    nodes = fleet(500, 5)
    settings = AgentSettings(check="VMSSExtension")

    r1 = arun(check_policy_agents(nodes, settings, checker))
    assert len(r1.scale_sets) == 5 and sum(len(s.nodes) for s in r1.scale_sets) == 500
    assert all(s.state == "Present" for s in r1.scale_sets)
    assert arm.list_calls() == 5 and r1.arm_requests == 5

    clock.t += 600  # a second check inside the TTL: answered from the cache
    r2 = arun(check_policy_agents(nodes, settings, checker))
    assert arm.list_calls() == 5 and r2.arm_requests == 0 and all(s.cached for s in r2.scale_sets)

    clock.t += 3000  # the next interval: each scale set once more
    r3 = arun(check_policy_agents(nodes, settings, checker))
    assert arm.list_calls() == 10 and r3.arm_requests == 5

    # a new node pool appears: it alone is checked at once, the others stay cached
    nodes += [vmss_node(f"aks-new-vmss{i:06d}", SUB, "MC_rg0", "aks-new-vmss", i) for i in range(20)]
    clock.t += 10
    r4 = arun(check_policy_agents(nodes, settings, checker))
    assert len(r4.scale_sets) == 6 and arm.list_calls() == 11 and arm.list_calls("aks-new-vmss") == 1
    assert arm.counts["GET"] == len(arm.log)  # reads only: nothing was written


def test_errors_are_not_cached(arm, make_checker, arun):
    from nodeaudit.testing.armserver import Resp

    arm.scripts["aks-pool0-vmss"] = [Resp(403, {"error": {"code": "AuthorizationFailed", "message": "x"}}),
                                     Resp(200, {"value": [ama()]})]
    checker = make_checker(ttl=3600.0)
    nodes = fleet(10, 1)
    assert arun(check_policy_agents(nodes, AgentSettings(check="VMSSExtension"), checker)).scale_sets[0].state == "Error"
    assert arun(check_policy_agents(nodes, AgentSettings(check="VMSSExtension"), checker)).scale_sets[0].state == "Present"


def test_concurrency_is_bounded(arm, make_checker, arun):
    from nodeaudit.testing.armserver import Resp

    in_flight = {"now": 0, "max": 0}

    def slow() -> Resp:
        return Resp(200, {"value": [ama()]}, delay=0.05)

    orig = arm._send

    async def counting(r):  # wraps the server's sender to measure parallel requests
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        try:
            return await orig(r)
        finally:
            in_flight["now"] -= 1

    arm._send = counting
    try:
        for i in range(12):
            arm.scripts[f"aks-pool{i}-vmss"] = [slow]
        report = arun(check_policy_agents(fleet(120, 12), AgentSettings(check="VMSSExtension"), make_checker(concurrency=3)))
    finally:
        arm._send = orig
    assert all(s.state == "Present" for s in report.scale_sets)
    assert in_flight["max"] <= 3
