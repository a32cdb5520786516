"""A node's record of a policy: the JSON in the Node annotation ``nodeaudit.io/<policy>``.

Why a pure module: what a finished Job writes on its node (result, failure count, last success,
the Job's facts), which finished Jobs still need writing after a restart (only the newest per node,
never one older than the record), and the patch that writes it (with the startup-taint removal in
the same request) are decisions. They are tested here as data; the controller's writer only sends
what these functions return.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Set
from typing import Any

from nodeaudit.core.jobs import JobInfo
from nodeaudit.core.nodes import STARTUP_TAINT_KEY, NodeFacts, state_annotation
from nodeaudit.core.rollout import parse_time

RESULT_KEYS = ("distro", "auditVersion", "rulesLoaded", "lost", "backlog",
               # the syslog form the node runs, why it fell back to raw, the dispatcher's counters
               "syslogFormat", "fallback", "dispatcher",
               # the canary the apply sent (the Delivered check looks for it)
               "canaryId", "canaryAt", "canarySeen")
ERROR_LIMIT = 512


def record_time(now: dt.datetime) -> str:
    """A record's ``time``/``lastSuccess``: milliseconds, because ``verifyInterval`` and the retry
    backoff are measured from it (whole seconds made a "2s" verification come after 1.05 s)."""
    return now.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_ok(job: JobInfo, result: Mapping[str, Any] | None) -> bool:
    """The Job succeeded and its result line (when there is one) does not say otherwise."""
    return job.outcome == "succeeded" and (result is None or bool(result.get("ok", True)))


def failure_count(job: JobInfo, node: NodeFacts, previous: Mapping[str, Any] | None, ok: bool) -> int:
    """0 after a success; one more than the record's count when the same run (bundle, boot,
    node uid) failed before; else 1."""
    if ok:
        return 0
    same_run = (previous is not None and previous.get("bundle") == job.bundle
                and previous.get("bootID") == node.boot_id and previous.get("uid") == node.uid)
    if same_run and previous and previous.get("result") == "failed":
        return int(previous.get("failures") or 0) + 1
    return 1


def build_record(job: JobInfo, node: NodeFacts, previous: Mapping[str, Any] | None,
                 result: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    """The record ``job`` leaves on ``node`` (``previous``: the record there now; ``now``: record_time)."""
    ok = job_ok(job, result)
    record: dict[str, Any] = {
        "bundle": job.bundle, "result": "ok" if ok else "failed", "time": now,
        "bootID": node.boot_id, "uid": node.uid, "job": job.name,
        "failures": failure_count(job, node, previous, ok),
        "budget": job.budget,  # a retry runs on the same budget (rollout.classify)
    }
    last_ok = now if ok else (previous or {}).get("lastSuccess")
    if last_ok:
        record["lastSuccess"] = last_ok
    if result:
        # lost/backlog: the kernel's counters from `auditctl -s`, so a user sees a node dropping events.
        for key in RESULT_KEYS:
            if key in result:
                record[key] = result[key]
    if not ok:
        message = (result or {}).get("message") or f"Job {job.name} failed without a result line"
        record["error"] = str(message)[:ERROR_LIMIT]
    return record


def record_text(record: Mapping[str, Any]) -> str:
    """The annotation value: compact, keys sorted (the same record is the same text)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def first_success_of_boot(previous: Mapping[str, Any] | None, node: NodeFacts) -> bool:
    """No success was recorded yet for this boot of this node (the Ready-to-configured metric)."""
    return not (previous and previous.get("lastSuccess") and previous.get("bootID") == node.boot_id
                and previous.get("uid") == node.uid)


def finish_key(job: JobInfo) -> tuple[dt.datetime, float]:
    """Orders finished Jobs: API finish time first, then when this operator saw them finish."""
    finished = parse_time(job.finished) or dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return finished, job.finished_at or job.created


def superseded(job: JobInfo, record: Mapping[str, Any], jobs: Mapping[str, JobInfo]) -> bool:
    """``job`` finished before the Job behind ``record`` did (or before the record was written)."""
    finished = parse_time(job.finished)
    if finished is None:
        return False
    recorded_job = jobs.get(str(record.get("job") or ""))
    other = parse_time(recorded_job.finished) if recorded_job is not None else None
    if other is not None and other != finished:
        return finished < other
    written = parse_time(record.get("time"))
    # completionTime has whole seconds: the Job ended within a second after it.
    return written is not None and finished + dt.timedelta(seconds=1) <= written


def jobs_to_record(policy: str, jobs: Mapping[str, JobInfo], nodes: Mapping[str, NodeFacts],
                   recorded: Set[str]) -> tuple[list[JobInfo], set[str]]:
    """The finished apply Jobs of ``policy`` whose result the node records still lack: per node
    only the newest, and none that finished before the node's record was written (after a
    restart every finished Job within its TTL is unrecorded; an older one must not overwrite a
    newer result). Returns (the Jobs to record, the Jobs settled without a write: superseded,
    already recorded, or their node gone)."""
    newest: dict[str, JobInfo] = {}
    settled: set[str] = set()
    for job in jobs.values():
        if job.policy != policy or job.action != "apply" or job.outcome == "running" or job.name in recorded:
            continue
        node = nodes.get(job.node)
        if node is None:
            settled.add(job.name)
            continue
        record = node.record(policy)
        if record is not None and (record.get("job") == job.name or superseded(job, record, jobs)):
            settled.add(job.name)
            continue
        best = newest.get(job.node)
        if best is None:
            newest[job.node] = job
        elif finish_key(job) > finish_key(best):
            settled.add(best.name)
            newest[job.node] = job
        else:
            settled.add(job.name)
    return list(newest.values()), settled


def annotation_patch(policy: str, text: str | None) -> dict[str, Any]:
    """A merge patch that writes (``text``) or removes (None) the policy's record."""
    return {"metadata": {"annotations": {state_annotation(policy): text}}}


def without_startup_taint(taints: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(t) for t in taints if t.get("key") != STARTUP_TAINT_KEY]


def record_and_untaint_ops(node: NodeFacts, policy: str, text: str, taints: list[dict[str, Any]],
                           bare_version: str | None) -> list[dict[str, Any]]:
    """One JSON patch: the record and the startup-taint removal, guarded by a ``test`` of the taint
    list (a concurrent taint change fails it with 422; the next pass tries again). ``bare_version``:
    the resourceVersion of the node's last event when that event had no annotations map at all."""
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/spec/taints", "value": taints},
                                 {"op": "replace", "path": "/spec/taints", "value": without_startup_taint(taints)}]
    if bare_version is not None and not node.records:
        # No annotations map yet: create it, but only on the version we saw (adding {} over
        # annotations written meanwhile would drop them).
        ops += [{"op": "test", "path": "/metadata/resourceVersion", "value": bare_version},
                {"op": "add", "path": "/metadata/annotations", "value": {}}]
    key = state_annotation(policy)
    ops.append({"op": "add", "path": "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1"),
                "value": text})
    return ops
