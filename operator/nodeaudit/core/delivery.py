"""Arrival: did each node's latest canary reach the Log Analytics workspace?

Pure. Every apply leaves one canary (``apply.sh``: an audit user message ``nodeaudit-canary
id=<node>:<bundle12>:<epoch>-<pid> policy=<policy>``) that travels the policy's own way to the
``Syslog`` table; the node record keeps its ``canaryId`` and ``canaryAt``. Once per interval the
operator asks the workspace one bounded query for the newest canary of this policy per node
(``canary_query``), and this module turns the answer and the records into the ``Delivered``
condition and each node's ``deliveredAt``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from nodeaudit.core.noderecord import record_text
from nodeaudit.core.nodes import state_annotation
from nodeaudit.core.status import few_names

CONDITION_TYPE = "Delivered"
CANARY_TAG = "nodeaudit-canary"
CANARY_RE = re.compile(r"nodeaudit-canary id=([A-Za-z0-9._-]+:[0-9a-f]{1,64}:[0-9]+(?:-[0-9]+)?) policy=([a-z0-9-]+)")
#: The answer's columns, in the order ``canary_query`` returns them.
CANARY_COLUMNS: tuple[tuple[str, str], ...] = (("node", "string"), ("at", "long"), ("canary", "string"),
                                              ("TimeGenerated", "datetime"))
DEFAULT_GRACE_SECONDS = 900.0  # Container Insights / AMA ingestion takes minutes, not seconds
MAX_WINDOW_SECONDS = 8 * 24 * 3600.0  # the oldest canary asked for; older records are not looked up
MAX_ROWS = 50_000
ROLE = "Log Analytics Reader"
_POLICY = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def canary_query(policy: str, limit: int) -> str:
    """The KQL: the newest canary of ``policy`` per node, at most ``limit`` rows (the time range
    goes with the request as its timespan, so the workspace scans only that much)."""
    if not _POLICY.match(policy):
        raise ValueError(f"not a policy name: {policy!r}")
    return "\n".join([
        "Syslog",
        f'| where SyslogMessage has "{CANARY_TAG}"',
        f'| extend canary = extract(@"{CANARY_TAG} id=([A-Za-z0-9._:-]+) policy=", 1, SyslogMessage),',
        f'         policy = extract(@"{CANARY_TAG} id=[A-Za-z0-9._:-]+ policy=([a-z0-9-]+)", 1, SyslogMessage)',
        f'| where isnotempty(canary) and policy == "{policy}"',
        '| extend node = tostring(split(canary, ":")[0]),',
        '         at = tolong(split(tostring(split(canary, ":")[2]), "-")[0])',
        "| summarize arg_max(at, canary, TimeGenerated) by node",
        f"| take {int(limit)}",
    ])


@dataclass(frozen=True)
class Sent:
    """A node's latest canary, from its record."""

    node: str
    canary: str
    at: int


@dataclass(frozen=True)
class Arrived:
    """The newest canary of a node found in the workspace."""

    node: str
    canary: str
    at: int
    time: str  # TimeGenerated, ISO 8601


def sent_canaries(records: Mapping[str, Mapping[str, Any] | None]) -> tuple[list[Sent], list[str]]:
    """(canaries to look for, configured nodes whose record names none) from node -> record."""
    sent: list[Sent] = []
    without: list[str] = []
    for node, rec in sorted(records.items()):
        if not rec or rec.get("result") != "ok":
            continue
        canary, at = rec.get("canaryId"), rec.get("canaryAt")
        if isinstance(canary, str) and canary and isinstance(at, int) and at > 0:
            sent.append(Sent(node, canary, at))
        else:
            without.append(node)
    return sent, without


def query_window(sent: Sequence[Sent], now: float) -> tuple[datetime, datetime]:
    """From a little before the oldest canary looked for (at most ``MAX_WINDOW_SECONDS``) to now."""
    oldest = min((s.at for s in sent), default=int(now))
    start = max(oldest - 300, now - MAX_WINDOW_SECONDS)
    return (datetime.fromtimestamp(start, timezone.utc), datetime.fromtimestamp(now, timezone.utc))


def row_limit(sent: Sequence[Sent]) -> int:
    return min(MAX_ROWS, len(sent) + 100)


def parse_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Arrived]:
    """The query's table -> node -> Arrived (rows it cannot read are skipped)."""
    index = {name: i for i, name in enumerate(columns)}
    out: dict[str, Arrived] = {}
    if not all(c in index for c, _ in CANARY_COLUMNS):
        return out
    for row in rows:
        try:
            node, at, canary, t = (row[index[c]] for c, _ in CANARY_COLUMNS)
            when = t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if isinstance(t, datetime) else str(t)
            out[str(node)] = Arrived(str(node), str(canary), int(at), when)
        except (IndexError, TypeError, ValueError):
            continue
    return out


@dataclass
class DeliveryVerdict:
    status: str
    reason: str
    message: str
    delivered_at: dict[str, str] = field(default_factory=dict)  # node -> TimeGenerated of its latest canary
    arrived: int = 0
    expected: int = 0
    missing: list[str] = field(default_factory=list)


def no_workspace() -> DeliveryVerdict:
    return DeliveryVerdict("Unknown", "NoWorkspace",
                           "no workspace named (monitoringAgent.workspaceResourceId or workspaceId): arrival is not checked")


def query_failed(message: str) -> DeliveryVerdict:
    return DeliveryVerdict("Unknown", "QueryFailed", message)


def delivery_verdict(
    sent: Sequence[Sent], without: Sequence[str], arrived: Mapping[str, Arrived], *, now: float,
    grace_seconds: float = DEFAULT_GRACE_SECONDS, workspace: str = "the workspace", truncated: bool = False,
) -> DeliveryVerdict:
    """``Delivered``: True when every configured node's latest canary arrived (with counts); False
    naming the nodes whose canary is older than the grace period and not there; Unknown while
    canaries are within the grace period or none was sent."""
    delivered_at: dict[str, str] = {}
    missing: list[str] = []
    waiting: list[str] = []
    for s in sent:
        hit = arrived.get(s.node)
        if hit is not None and hit.at >= s.at:
            delivered_at[s.node] = hit.time
        elif now - s.at > grace_seconds:
            missing.append(s.node)
        else:
            waiting.append(s.node)
    n, got = len(sent), len(delivered_at)
    note = f"; {len(without)} configured node(s) sent no canary (an older apply.sh): {few_names(list(without))}" if without else ""
    if truncated:
        note += "; the answer hit its row limit"
    grace = f"{int(grace_seconds // 60)}m" if grace_seconds >= 60 else f"{int(grace_seconds)}s"
    if missing:
        return DeliveryVerdict(
            "False", "CanariesMissing",
            f"canaries from {len(missing)} of {n} configured node(s) did not arrive in {workspace} within {grace}: "
            f"{few_names(missing)} ({got} arrived, {len(waiting)} within the grace period){note}",
            delivered_at, got, n, missing)
    if not sent:
        return DeliveryVerdict("Unknown", "NoCanary", f"no configured node has sent a canary yet{note}", delivered_at, 0, 0)
    if waiting:
        return DeliveryVerdict("Unknown", "Waiting",
                               f"{got} of {n} canaries arrived in {workspace}; {len(waiting)} sent less than {grace} ago: "
                               f"{few_names(waiting)}{note}", delivered_at, got, n)
    return DeliveryVerdict("True", "Delivered",
                           f"the latest canary of all {n} configured node(s) arrived in {workspace}{note}",
                           delivered_at, got, n)


def delivered_updates(records: Mapping[str, Mapping[str, Any] | None], delivered_at: Mapping[str, str]
                      ) -> dict[str, tuple[str, str]]:
    """node -> (record text now, record text with ``deliveredAt``) for the records that lack it."""
    out: dict[str, tuple[str, str]] = {}
    for node, when in sorted(delivered_at.items()):
        rec = records.get(node)
        if rec and rec.get("deliveredAt") != when:
            out[node] = (record_text(rec), record_text({**rec, "deliveredAt": when}))
    return out


def delivered_ops(policy: str, old_text: str, new_text: str) -> list[dict[str, Any]]:
    """A JSON patch that adds ``deliveredAt`` only to the record it was computed from: a record
    written meanwhile (a new apply, a new canary) fails the ``test`` (422) and is left alone."""
    path = "/metadata/annotations/" + state_annotation(policy).replace("~", "~0").replace("/", "~1")
    return [{"op": "test", "path": path, "value": old_text}, {"op": "replace", "path": path, "value": new_text}]
