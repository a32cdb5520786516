"""Which Kubernetes Events to post about a policy, aggregated so a big rollout cannot flood.

Why a pure module: a 1,000-node rollout makes 1,000 "node configured" occurrences; one Event per
occurrence would flood the namespace and the API. Occurrences are aggregated per policy, reason
and rollout (the bundle hash): the first is posted at once, the rest are folded into the same Event
(one deterministic name, so a re-post updates it: ``count``, ``lastTimestamp``, a message naming
a few nodes and how many more) at most once per ``interval``. This is what kubectl's
``describe`` shows as ``(x12 over 40s)``. The edge posts what :meth:`Aggregator.due` returns.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

NORMAL, WARNING = "Normal", "Warning"
DEFAULT_INTERVAL = 5.0
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class Post:
    """One Event to create or update (``name`` is stable for the policy, reason and rollout)."""

    name: str
    policy: str
    type: str
    reason: str
    message: str
    count: int
    first: float  # when the first occurrence happened (the caller's clock)
    last: float


@dataclass
class _Series:
    policy: str
    type: str
    reason: str
    template: str
    subjects: list[str] = field(default_factory=list)
    count: int = 0
    posted_count: int = 0
    first: float = 0.0
    last: float = 0.0
    posted_at: float | None = None
    message: str = ""


def event_name(policy: str, reason: str, rollout: str) -> str:
    """A valid, stable Event name: ``<policy>.<hash of reason and rollout>``."""
    digest = hashlib.sha256(f"{reason}|{rollout}".encode()).hexdigest()[:16]
    return f"{policy[:200]}.{digest}"


def _few(names: list[str], total: int, limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {total - limit} more" if total > limit else "")


class Aggregator:
    """Collects occurrences; :meth:`due` says what to post now."""

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        self.interval = interval
        self._series: dict[tuple[str, str, str], _Series] = {}

    def add(self, now: float, policy: str, type_: str, reason: str, rollout: str, message: str,
            subject: str | None = None) -> None:
        """One occurrence. ``message`` may hold ``{count}`` and ``{subjects}`` (filled in when
        posted, e.g. "configured {count} node(s): {subjects}"); ``subject`` names the node."""
        key = (policy, reason, rollout)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(policy, type_, reason, message, first=now)
        series.template = message
        series.count += 1
        series.last = now
        if subject is not None and subject not in series.subjects:
            series.subjects.append(subject)
        total = len(series.subjects) or series.count
        series.message = message.format(count=total, subjects=_few(series.subjects, len(series.subjects)))

    def due(self, now: float, *, force: bool = False) -> list[Post]:
        """Posts for series with unposted occurrences: the first at once, then one per ``interval``
        (``force``: everything now, e.g. before the policy's Events lose their subject)."""
        out = []
        for (policy, reason, rollout), s in self._series.items():
            if s.count == s.posted_count:
                continue
            if not force and s.posted_at is not None and now - s.posted_at < self.interval:
                continue
            s.posted_at, s.posted_count = now, s.count
            out.append(Post(event_name(policy, reason, rollout), policy, s.type, reason,
                            s.message[:MAX_MESSAGE], s.count, s.first, s.last))
        return out

    def next_due(self, now: float) -> float | None:
        """Seconds until :meth:`due` has something to post (None: nothing pending)."""
        waits = [0.0 if s.posted_at is None else max(0.0, s.posted_at + self.interval - now)
                 for s in self._series.values() if s.count != s.posted_count]
        return min(waits) if waits else None

    def forget(self, policy: str) -> None:
        """Drop a deleted policy's series (after a forced :meth:`due`)."""
        for key in [k for k in self._series if k[0] == policy]:
            del self._series[key]

    def seen(self, policy: str, reason: str, rollout: str) -> bool:
        return (policy, reason, rollout) in self._series
