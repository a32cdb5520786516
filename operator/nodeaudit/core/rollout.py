"""Which nodes get an apply Job now: the rollout planner.

Why a pure module: this is where an operator's safety lives (how many Jobs at once, when to give
up, when to re-check a node), and every rule here is easiest to trust as a table of inputs and
outputs. The operator calls ``plan()`` with what it knows (nodes, per-node records, running Jobs,
the time) and does what it says; nothing here talks to the API.

Rules:
* A node needs a Job when it has no record (new), its uid or bootID differs from the record
  (reimaged or rebooted), the recorded bundle is not the policy's bundle (update), its last
  Job failed and the retry backoff has passed (retry, up to ``retry_limit`` attempts per bundle
  and boot; on the budget the failed Job used, the record's ``budget``), or its last success is older than ``verifyInterval`` (verify).
* Nodes that are not Ready wait; nodes with a running Job of this policy are "applying", except
  a configured node being re-verified, which stays "configured".
* Two budgets of ``maxUnavailable`` Jobs each: one for never-configured nodes (new, reimaged,
  rebooted, and their retries), one for everything else. A slow or stalled update rollout thus
  never holds back a freshly autoscaled node, and a burst of new nodes still runs at most
  ``maxUnavailable`` Jobs at once.
* When the number of nodes whose retries are exhausted for the current bundle reaches
  ``max(maxFailures, 1)``, the rollout is stalled: no update, retry or verify Jobs start (new
  nodes still get theirs). A new bundle, or a node's reboot/reimage, clears its failure.
* ``paused`` starts nothing.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from nodeaudit.core.nodes import NodeFacts
from nodeaudit.core.policy import MIN_VERIFY_INTERVAL

Reason = Literal["new", "reimaged", "rebooted", "update", "retry", "verify"]
State = Literal["configured", "applying", "pending", "retrying", "failed", "waiting"]
NEW_REASONS = frozenset({"new", "reimaged", "rebooted"})

DEFAULT_RETRY_LIMIT = 3
DEFAULT_RETRY_BACKOFF = 30.0  # seconds; doubles per failure
MAX_RETRY_BACKOFF = 600.0


@dataclass(frozen=True)
class Settings:
    bundle: str
    max_unavailable: int | str = "25%"
    max_failures: int = 3
    paused: bool = False
    verify_interval: dt.timedelta = dt.timedelta(hours=6)
    retry_limit: int = DEFAULT_RETRY_LIMIT
    retry_backoff: float = DEFAULT_RETRY_BACKOFF


@dataclass(frozen=True)
class Start:
    """Create an apply Job on ``node``; ``run_key`` makes its name unique and deterministic."""

    node: str
    reason: Reason
    attempt: int
    run_key: str
    new_budget: bool = False
    """A retry of a Job that ran on the "new" budget (the record's ``budget``)."""

    @property
    def budget(self) -> str:
        return "new" if self.reason in NEW_REASONS or self.new_budget else "update"


@dataclass
class Plan:
    start: list[Start] = field(default_factory=list)
    states: dict[str, State] = field(default_factory=dict)
    failed_nodes: list[str] = field(default_factory=list)
    stalled: bool = False
    paused: bool = False
    budget: int = 0
    requeue_after: float | None = None

    def count(self, state: State) -> int:
        return sum(1 for s in self.states.values() if s == state)

    @property
    def matched(self) -> int:
        return len(self.states)


def resolve_max_unavailable(value: int | str, matched: int) -> int:
    """An int as is; "25%" of the matched nodes, rounded down, never below 1."""
    if isinstance(value, int):
        return max(1, value)
    text = str(value).strip()
    if text.endswith("%"):
        return max(1, math.floor(matched * float(text[:-1]) / 100.0))
    return max(1, int(text))


def parse_time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def backoff(failures: int, base: float) -> float:
    return float(min(MAX_RETRY_BACKOFF, base * (2 ** max(0, failures - 1))))


def classify(node: NodeFacts, record: Mapping[str, Any] | None, settings: Settings,
             now: dt.datetime) -> tuple[State, Start | None, float | None]:
    """One node's state, the Job it needs now (if any), and when to look again (seconds)."""
    if record is None:
        return "pending", Start(node.name, "new", 0, f"{settings.bundle}|{node.uid}|{node.boot_id}|0|"), None
    if record.get("uid") and record.get("uid") != node.uid:
        return "pending", Start(node.name, "reimaged", 0, f"{settings.bundle}|{node.uid}|{node.boot_id}|0|"), None
    if record.get("bootID") != node.boot_id:
        return "pending", Start(node.name, "rebooted", 0, f"{settings.bundle}|{node.uid}|{node.boot_id}|0|"), None
    base = f"{settings.bundle}|{node.uid}|{node.boot_id}"
    ever_ok = bool(record.get("lastSuccess"))
    if record.get("bundle") != settings.bundle:
        reason: Reason = "update" if ever_ok else "new"
        return "pending", Start(node.name, reason, 0, f"{base}|0|"), None
    when = parse_time(record.get("time")) or now
    if record.get("result") == "ok":
        # Never sooner than the policy minimum, whatever reached the settings (an object stored
        # under an older CRD, a caller's own Settings): every verification is a privileged Job.
        due = when + max(settings.verify_interval, MIN_VERIFY_INTERVAL)
        if now >= due:
            return "configured", Start(node.name, "verify", 0, f"{base}|0|{record.get('time')}"), None
        return "configured", None, (due - now).total_seconds()
    failures = int(record.get("failures") or 1)
    if failures >= settings.retry_limit:
        return "failed", None, None
    due = when + dt.timedelta(seconds=backoff(failures, settings.retry_backoff))
    # A retry spends the budget its failed Job spent (the record says which): a rebooted or new
    # node's retries stay on the "new" budget although ``lastSuccess`` may be from an earlier boot.
    # Records written before ``budget`` existed: "new" unless the node was ever configured.
    budget = record.get("budget") or ("update" if ever_ok else "new")
    start = Start(node.name, "retry", failures, f"{base}|{failures}|", new_budget=budget == "new")
    if now >= due:
        return "retrying", start, None
    return "retrying", None, (due - now).total_seconds()


def plan(
    settings: Settings,
    nodes: Sequence[NodeFacts],
    records: Mapping[str, Mapping[str, Any] | None],
    running: Mapping[str, str],
    now: dt.datetime,
    excluded: Collection[str] = (),
) -> Plan:
    """Decide which of the policy's matched ``nodes`` get a Job now.

    ``records``: node name → this policy's record (or None); ``running``: node name → budget
    ("new"/"update") of this policy's unfinished Job on it; ``excluded``: nodes this policy must
    not touch (e.g. a syslog conflict with an older policy).
    """
    result = Plan(paused=settings.paused)
    candidates: list[Start] = []
    waits: list[float] = []
    for node in sorted(nodes, key=lambda n: n.name):
        if node.name in excluded:
            continue
        if node.name in running:
            # A re-verification of a node that is configured for this bundle and boot leaves it
            # configured: a drift check every verifyInterval is not a rollout, and must not turn
            # the policy's Ready (what Flux/Argo CD watch) False on every round.
            state, _, _ = classify(node, records.get(node.name), settings, now)
            result.states[node.name] = "configured" if state == "configured" else "applying"
            continue
        state, start, wait = classify(node, records.get(node.name), settings, now)
        if start is not None and not node.ready:
            result.states[node.name] = "waiting" if state != "configured" else state
            continue
        result.states[node.name] = state
        if state == "failed":
            result.failed_nodes.append(node.name)
        if start is not None:
            candidates.append(start)
        if wait is not None:
            waits.append(wait)
    budget = resolve_max_unavailable(settings.max_unavailable, len(result.states))
    result.budget = budget
    result.stalled = len(result.failed_nodes) >= max(settings.max_failures, 1)
    in_flight = {"new": 0, "update": 0}
    for name, kind in running.items():
        if name not in excluded:
            in_flight["new" if kind == "new" else "update"] += 1
    if not settings.paused:
        for start in candidates:
            kind = start.budget
            if kind == "update" and result.stalled:
                continue
            if in_flight[kind] >= budget:
                continue
            in_flight[kind] += 1
            result.start.append(start)
            if start.reason != "verify":  # see above: a re-verified node stays configured
                result.states[start.node] = "applying"
    result.requeue_after = min(waits) if waits else None
    return result
