"""The reconciler: keeps every policy's nodes configured, one pass per policy at a time.

Why one controller object instead of logic in kopf handlers: a policy's decision needs all of its
nodes and Jobs at once (budgets, failure counts), and a burst of 1,000 node events must become a
handful of passes, not 1,000. kopf's index/event handlers only feed this object's in-memory view
(node facts, Jobs, Job results) and mark policies dirty; a single loop debounces and reconciles.

Per-node state lives on the Node itself, in the annotation ``nodeaudit.io/<policy>`` (JSON):
it survives operator restarts, ``kubectl get node -o yaml`` shows it, it disappears with the node,
and the result write can carry the startup-taint removal in the same request. In-flight work needs
no record: the Job (deterministic name, labels) is the record, and a restarted operator finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from nodeaudit.controller import kube as kube_mod
from nodeaudit.controller import metrics
from nodeaudit.core import agent as agent_mod
from nodeaudit.core import jobs as jobs_mod
from nodeaudit.core import nodes as nodes_mod
from nodeaudit.core import rollout, status
from nodeaudit.core.policy import parse_duration

log = logging.getLogger("nodeaudit.controller.reconciler")

DEFAULT_NAMESPACE = "nodeaudit-system"
DEFAULT_IMAGE = "ghcr.io/nodeaudit/nodeaudit:0.1.0"


class SettingError(ValueError):
    """An operator setting (environment variable) that cannot be used; names the variable."""


def env_number(name: str, default: float, *, integer: bool = False, minimum: float = 0.0) -> float:
    """``$name`` as a number (seconds unless said otherwise), ``default`` when unset or empty.
    Anything else than a plain number ≥ ``minimum`` (``1m``, ``three``, ``-1``) is a SettingError
    naming the variable and the value: a typo must not become a default nobody asked for."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(int(raw)) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number of seconds (no unit)"
        raise SettingError(f"{name}={raw!r}: expected {kind}") from None
    if not value >= minimum or value != value or value in (float("inf"), float("-inf")):
        raise SettingError(f"{name}={raw!r}: expected a finite number >= {minimum:g}")
    return value


@dataclass
class Config:
    namespace: str = DEFAULT_NAMESPACE
    image: str = DEFAULT_IMAGE
    debounce: float = 0.3
    retry_limit: int = rollout.DEFAULT_RETRY_LIMIT
    retry_backoff: float = rollout.DEFAULT_RETRY_BACKOFF
    removal_timeout: float = 600.0
    result_grace: float = 3.0
    concurrency: int = 48
    resync: float = 60.0  # the kopf timer's interval (handlers.register_timers)
    removal_poll: float = 3.0  # how often a deletion looks at its removal Jobs

    @classmethod
    def from_env(cls) -> Config:
        """The settings from ``NODEAUDIT_*``; SettingError for a value that is not usable."""
        return cls(
            namespace=os.environ.get("NODEAUDIT_NAMESPACE") or DEFAULT_NAMESPACE,
            image=os.environ.get("NODEAUDIT_IMAGE") or DEFAULT_IMAGE,
            debounce=env_number("NODEAUDIT_DEBOUNCE_SECONDS", 0.3),
            retry_limit=int(env_number("NODEAUDIT_RETRY_LIMIT", rollout.DEFAULT_RETRY_LIMIT, integer=True)),
            retry_backoff=env_number("NODEAUDIT_RETRY_BACKOFF_SECONDS", rollout.DEFAULT_RETRY_BACKOFF),
            removal_timeout=env_number("NODEAUDIT_REMOVAL_TIMEOUT_SECONDS", 600.0),
            result_grace=env_number("NODEAUDIT_RESULT_GRACE_SECONDS", 3.0),
            resync=env_number("NODEAUDIT_RESYNC_SECONDS", 60.0, minimum=0.1),
            removal_poll=env_number("NODEAUDIT_REMOVAL_POLL_SECONDS", 3.0, minimum=0.05),
        )


@dataclass
class JobInfo:
    name: str
    policy: str
    node: str
    action: str
    budget: str
    bundle: str
    outcome: str  # running | succeeded | failed
    created: float  # monotonic time first seen
    finished_at: float | None = None
    # When the Job finished, as the API says (status.completionTime, or the Failed condition's
    # lastTransitionTime): after a restart it orders finished Jobs against each other and against
    # the node's record, so an older Job never overwrites a newer result.
    finished: str | None = None


@dataclass
class PolicyEntry:
    name: str
    uid: str
    generation: int
    created: str
    body: dict[str, Any]
    policy: Any = None  # nodeaudit.core.policy.NodeAuditPolicy
    bundle: Any = None  # nodeaudit.core.bundle.Bundle
    error: str | None = None
    deleting: bool = False
    delete_started: float | None = None
    status: dict[str, Any] | None = None
    requeue_at: float | None = None
    stalled_reported: frozenset[str] = frozenset()
    failures_reported: set[str] = field(default_factory=set)
    create_error_reported: str | None = None
    # The monitoring-agent check (spec.monitoringAgent): last verdict, when the next is due.
    agent: tuple[str, str, str] | None = None  # AgentReady status, reason, message
    agent_scale_sets: list[dict[str, Any]] | None = None  # status.agent
    agent_key: str = ""  # the settings the verdict is for; a change re-checks at once
    agent_due: float = 0.0
    agent_task: asyncio.Task[None] | None = None
    # Scale sets (ScaleSetRef.key) of the matched nodes, as of the last check plus those noticed
    # since: a node in a scale set not in here makes the check due at once.
    agent_scale_set_keys: set[tuple[str, str, str]] = field(default_factory=set)

    @property
    def order(self) -> tuple[str, str]:
        return (self.created, self.name)


CREATE_RETRY_SECONDS = 5.0


class CreateFailed(Exception):
    """The API refused a ConfigMap or Job create (namespace missing, forbidden, invalid)."""


class Waiting(Exception):
    """Removal is still in progress (the delete handler retries)."""


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record_time() -> str:
    """A node record's ``time``/``lastSuccess``: milliseconds, because ``verifyInterval`` and the
    retry backoff are measured from it (whole seconds made a "2s" verification come after 1.05 s)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def syslog_key(policy: Any) -> tuple[str, str] | None:
    syslog = policy.spec.syslog
    if not syslog.enabled:
        return None
    return (str(syslog.facility), str(syslog.priority))


class Controller:
    def __init__(self, kube: kube_mod.Kube, config: Config | None = None) -> None:
        self.kube = kube
        self.config = config or Config.from_env()
        self.nodes: dict[str, nodes_mod.NodeFacts] = {}
        self.raw_taints: dict[str, list[dict[str, Any]]] = {}
        # Nodes whose last event had no metadata.annotations at all → that event's resourceVersion
        # (a JSON patch must create the map first, guarded by that version).
        self.bare: dict[str, str] = {}
        self.jobs: dict[str, JobInfo] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, PolicyEntry] = {}
        self.recorded: set[str] = set()
        # Records this operator wrote whose watch event has not come back yet (node → policy → record,
        # None = removed): an older event must not make a configured node look new again.
        self.overlay: dict[str, dict[str, dict[str, Any] | None]] = {}
        self.configmaps: set[str] = set()
        self.dirty: set[str] = set()
        self.wake = asyncio.Event()
        self.sem = asyncio.Semaphore(self.config.concurrency)
        self._task: asyncio.Task[None] | None = None
        self.passes = 0
        self.primed = False
        self._deleted: set[str] = set()  # uids seen deleted while priming
        # Azure: one ArmClients per process (made on the first check, in this loop), one checker
        # (verdict cache sized to the policy's interval) per policy.
        self.arm: Any = None
        self.agent_checkers: dict[str, Any] = {}
        self.agent_wake = asyncio.Event()
        self._agent_loop_task: asyncio.Task[None] | None = None

    # ---- feeding the view (called from kopf handlers; never awaits the API) ----------------

    def _mark(self, name: str | None = None) -> None:
        if name is None:
            self.dirty.update(n for n, e in self.policies.items() if not e.deleting)
        elif name in self.policies:
            self.dirty.add(name)
        self.wake.set()

    def on_node(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        name = str((body.get("metadata") or {}).get("name", ""))
        if deleted:
            if not self.primed:
                self._deleted.add(str((body.get("metadata") or {}).get("uid", "")))
            self.nodes.pop(name, None)
            self.raw_taints.pop(name, None)
            self.bare.pop(name, None)
            self.overlay.pop(name, None)
        else:
            facts = self._apply_overlay(nodes_mod.facts_from_node(body))
            old = self.nodes.get(name)
            self.nodes[name] = facts
            self.raw_taints[name] = [dict(t) for t in (body.get("spec") or {}).get("taints") or []]
            meta = body.get("metadata") or {}
            if meta.get("annotations"):
                self.bare.pop(name, None)
            else:
                self.bare[name] = str(meta.get("resourceVersion") or "")
            self._notice_scale_set(facts)
            if old is not None and _same_for_us(old, facts):
                return
        self._mark()

    def _apply_overlay(self, facts: nodes_mod.NodeFacts) -> nodes_mod.NodeFacts:
        pending = self.overlay.get(facts.name)
        if not pending:
            return facts
        records = dict(facts.records)
        for policy, record in list(pending.items()):
            if records.get(policy) == record:
                del pending[policy]  # the API caught up
            elif record is None:
                records.pop(policy, None)
            else:
                records[policy] = record
        if not pending:
            self.overlay.pop(facts.name, None)
        return replace(facts, records=records)

    def _remember(self, node_name: str, policy: str, record: dict[str, Any] | None) -> None:
        self.overlay.setdefault(node_name, {})[policy] = record
        current = self.nodes.get(node_name)
        if current is not None:
            self.nodes[node_name] = self._apply_overlay(current)

    def on_job(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        meta = body.get("metadata") or {}
        name = str(meta.get("name", ""))
        labels = meta.get("labels") or {}
        policy = labels.get(jobs_mod.LABEL_POLICY)
        if not policy:
            return
        if deleted:
            if not self.primed:
                self._deleted.add(str(meta.get("uid", "")))
            self.jobs.pop(name, None)
            self.results.pop(name, None)
            self.recorded.discard(name)
            return
        outcome = jobs_mod.job_outcome(body)
        old = self.jobs.get(name)
        if old is not None and old.outcome == "running" and outcome != "running":
            # Only Jobs seen running: a Job first seen finished (after a restart) has no start time.
            metrics.observe_job(str(labels.get(jobs_mod.LABEL_ACTION, "apply")), outcome,
                                time.monotonic() - old.created)
        spec_node = (((body.get("spec") or {}).get("template") or {}).get("spec") or {}).get("nodeName")
        info = JobInfo(
            name=name, policy=str(policy), node=str(spec_node or labels.get(jobs_mod.LABEL_NODE, "")),
            action=str(labels.get(jobs_mod.LABEL_ACTION, "apply")),
            budget=str(labels.get(jobs_mod.LABEL_BUDGET, "update")),
            bundle=str((meta.get("annotations") or {}).get(jobs_mod.ANNOTATION_BUNDLE, "")),
            outcome=outcome, created=old.created if old else time.monotonic(),
            finished_at=(old.finished_at if old and old.finished_at else
                         (time.monotonic() if outcome != "running" else None)),
            finished=jobs_mod.job_finished_time(body) if outcome != "running" else None,
        )
        self.jobs[name] = info
        if old is None or old.outcome != outcome:
            self._mark(info.policy)

    def on_pod(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        if deleted:
            return
        labels = (body.get("metadata") or {}).get("labels") or {}
        job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
        if not job:
            return
        result = jobs_mod.pod_result(body)
        if result is not None and job not in self.results:
            self.results[str(job)] = result
            info = self.jobs.get(str(job))
            if info is not None:
                self._mark(info.policy)

    def set_policy(self, body: Mapping[str, Any]) -> None:
        """A policy was created, changed or seen at start: parse and render it once."""
        from nodeaudit.core.bundle import render_bundle
        from nodeaudit.core.policy import PolicyError, parse_policy

        meta = body.get("metadata") or {}
        name = str(meta.get("name"))
        old = self.policies.get(name)
        entry = PolicyEntry(
            name=name, uid=str(meta.get("uid", "")), generation=int(meta.get("generation") or 1),
            created=str(meta.get("creationTimestamp") or ""), body=json.loads(json.dumps(dict(body))),
            status=dict(body.get("status") or {}) or (old.status if old else None),
        )
        if old is not None:
            entry.failures_reported = old.failures_reported
            entry.stalled_reported = old.stalled_reported
            entry.agent, entry.agent_scale_sets = old.agent, old.agent_scale_sets
            entry.agent_key, entry.agent_due, entry.agent_task = old.agent_key, old.agent_due, old.agent_task
            entry.agent_scale_set_keys = old.agent_scale_set_keys
        try:
            entry.policy = parse_policy(entry.body)
            entry.bundle = render_bundle(entry.policy)
        except PolicyError as e:
            entry.error = str(e)
        except Exception as e:  # noqa: BLE001 - any rendering failure is an invalid spec, reported
            entry.error = f"{type(e).__name__}: {e}"
        self.policies[name] = entry
        self.agent_wake.set()
        self._mark()  # other policies may now conflict with this one

    def forget_policy(self, name: str) -> None:
        entry = self.policies.pop(name, None)
        if entry is not None and entry.agent_task is not None:
            entry.agent_task.cancel()
        self.agent_checkers.pop(name, None)
        metrics.forget_policy(name)
        self.dirty.discard(name)
        self._mark()

    # ---- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="nodeaudit-reconciler")
        if self._agent_loop_task is None:
            self._agent_loop_task = asyncio.create_task(self._agent_loop(), name="nodeaudit-agent-check")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._agent_loop_task) if t is not None]
        tasks += [e.agent_task for e in self.policies.values() if e.agent_task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = self._agent_loop_task = None
        if self.arm is not None:
            await self.arm.close()
            self.arm = None
        await self.kube.close()

    async def prime(self) -> None:
        """One LIST each of Nodes, our Jobs and our Pods: the full view before the first plan."""
        ns = self.config.namespace
        selector = {"labelSelector": jobs_mod.LABEL_POLICY}
        while True:
            try:
                nodes = await self.kube.get("/api/v1/nodes")
                jobs = await self.kube.get(kube_mod.jobs_path(ns), selector)
                pods = await self.kube.get(kube_mod.pods_path(ns), selector)
                break
            except (kube_mod.ApiError, OSError, asyncio.TimeoutError) as e:
                log.warning("priming the operator's view failed (%s); retrying", e)
                await asyncio.sleep(2)
        for items, feed, known in (((nodes or {}).get("items") or [], self.on_node, self.nodes),
                                   ((jobs or {}).get("items") or [], self.on_job, self.jobs),
                                   ((pods or {}).get("items") or [], self.on_pod, None)):
            for obj in items:
                meta = obj.get("metadata") or {}
                if meta.get("uid") in self._deleted:
                    continue
                if known is not None and meta.get("name") in known:
                    continue  # a watch event already brought this object (at least as fresh)
                feed(obj)
        self.primed = True
        self._deleted.clear()
        self._mark()

    async def _loop(self) -> None:
        await self.prime()
        while True:
            now = time.monotonic()
            due = [e.requeue_at for e in self.policies.values() if e.requeue_at is not None]
            timeout = max(0.05, min(due) - now) if due else 30.0
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=timeout)
            await asyncio.sleep(self.config.debounce)
            self.wake.clear()
            now = time.monotonic()
            for e in self.policies.values():
                if e.requeue_at is not None and e.requeue_at <= now:
                    e.requeue_at = None
                    self.dirty.add(e.name)
            todo = sorted(self.dirty)
            self.dirty.clear()
            for name in todo:
                entry = self.policies.get(name)
                if entry is None or entry.deleting:
                    continue
                try:
                    await self.reconcile(entry)
                except Exception:  # noqa: BLE001 - keep the loop alive; retry soon
                    log.exception("reconcile of policy %s failed; retrying", name)
                    entry.requeue_at = time.monotonic() + 2.0

    # ---- one pass ------------------------------------------------------------------------

    def matched_nodes(self, entry: PolicyEntry) -> list[nodes_mod.NodeFacts]:
        selector = entry.policy.spec.node_selector
        return [n for n in self.nodes.values() if n.eligible and nodes_mod.matches(selector, n.labels)]

    def conflicts(self, entry: PolicyEntry, matched: list[nodes_mod.NodeFacts]) -> dict[str, list[str]]:
        mine = syslog_key(entry.policy)
        if mine is None:
            return {}
        out: dict[str, list[str]] = {}
        for other in self.policies.values():
            if other is entry or other.error or other.policy is None or other.deleting:
                continue
            theirs = syslog_key(other.policy)
            if theirs is None or theirs == mine or other.order > entry.order:
                continue
            # Only ``matched`` (eligible nodes of this policy) can be shared: filter those with the
            # other's selector instead of matching it over the whole cluster (O(N) per policy).
            selector = other.policy.spec.node_selector
            both = sorted(n.name for n in matched if n.eligible and nodes_mod.matches(selector, n.labels))
            if both:
                out[other.name] = both
        return out

    async def reconcile(self, entry: PolicyEntry) -> None:
        self.passes += 1
        if entry.error is not None:
            await self._write_status(entry, status.Summary(generation=entry.generation, invalid=entry.error))
            return
        await self._record_finished(entry)
        matched = self.matched_nodes(entry)
        conflicts = self.conflicts(entry, matched)
        excluded = {n for nodes in conflicts.values() for n in nodes}
        spec = entry.policy.spec
        settings = rollout.Settings(
            bundle=entry.bundle.hash, max_unavailable=spec.rollout.max_unavailable,
            max_failures=spec.rollout.max_failures, paused=spec.rollout.paused,
            verify_interval=parse_duration(spec.verify_interval),
            retry_limit=self.config.retry_limit, retry_backoff=self.config.retry_backoff,
        )
        running = {j.node: j.budget for j in self.jobs.values()
                   if j.policy == entry.name and j.action == "apply" and j.outcome == "running"}
        now = dt.datetime.now(dt.timezone.utc)
        records = {n.name: n.record(entry.name) for n in matched}
        plan = rollout.plan(settings, matched, records, running, now, excluded)
        # A finished Job of the same run (same deterministic name) is never created again.
        starts = [s for s in plan.start
                  if jobs_mod.job_name(entry.name, s.node, "apply", s.run_key) not in self.jobs]
        create_error = await self._start_all(entry, starts) if starts else None
        if plan.requeue_after is not None:
            entry.requeue_at = time.monotonic() + max(0.05, plan.requeue_after)
        if create_error is not None:  # try again later, as after any failed pass
            entry.requeue_at = min(entry.requeue_at or 1e18, time.monotonic() + CREATE_RETRY_SECONDS)
        # Unrecorded finished Jobs still waiting for their result line: look again shortly.
        if any(j.policy == entry.name and j.outcome != "running" and j.name not in self.recorded
               for j in self.jobs.values()):
            entry.requeue_at = min(entry.requeue_at or 1e18, time.monotonic() + 0.5)
        summary = status.Summary(
            generation=entry.generation, bundle=entry.bundle.hash, matched=plan.matched,
            configured=plan.count("configured"), applying=plan.count("applying"),
            pending=plan.count("pending"), waiting=plan.count("waiting"), retrying=plan.count("retrying"),
            failed=plan.count("failed"), failed_nodes=plan.failed_nodes, stalled=plan.stalled,
            paused=plan.paused, conflicts=conflicts, create_failed=create_error,
            agent=entry.agent, agent_scale_sets=entry.agent_scale_sets,
        )
        await self._write_status(entry, summary)
        if create_error is not None and create_error != entry.create_error_reported:
            await self.event(entry, "Warning", "CreateFailed", create_error)
        entry.create_error_reported = create_error
        if plan.stalled and frozenset(plan.failed_nodes) != entry.stalled_reported:
            entry.stalled_reported = frozenset(plan.failed_nodes)
            await self.event(entry, "Warning", "RolloutStalled",
                             f"rollout stopped: {len(plan.failed_nodes)} node(s) failed after retries: "
                             + ", ".join(plan.failed_nodes[:20]))
        elif not plan.stalled:
            entry.stalled_reported = frozenset()

    async def _record_finished(self, entry: PolicyEntry) -> None:
        writes = []
        for job in self._to_record(entry):
            node = self.nodes[job.node]
            record = node.record(entry.name)
            result = self.results.get(job.name)
            if result is None:
                age = time.monotonic() - (job.finished_at or job.created)
                if age < self.config.result_grace:
                    continue
                result = await self._fetch_result(job)
            writes.append(self._record(entry, job, node, record, result))
        if writes:
            await asyncio.gather(*writes)

    def _to_record(self, entry: PolicyEntry) -> list[JobInfo]:
        """The finished apply Jobs of ``entry`` whose result the node records still lack: per node
        only the newest, and none that finished before the node's record was written (after a
        restart every finished Job within its TTL is unrecorded; an older one must not overwrite
        a newer result). Superseded Jobs are marked recorded."""
        newest: dict[str, JobInfo] = {}
        for job in list(self.jobs.values()):
            if job.policy != entry.name or job.action != "apply" or job.outcome == "running":
                continue
            if job.name in self.recorded:
                continue
            node = self.nodes.get(job.node)
            if node is None:
                self.recorded.add(job.name)
                continue
            record = node.record(entry.name)
            if record is not None and (record.get("job") == job.name or self._superseded(job, record)):
                self.recorded.add(job.name)
                continue
            best = newest.get(job.node)
            if best is None:
                newest[job.node] = job
            elif _finish_key(job) > _finish_key(best):
                self.recorded.add(best.name)
                newest[job.node] = job
            else:
                self.recorded.add(job.name)
        return list(newest.values())

    def _superseded(self, job: JobInfo, record: Mapping[str, Any]) -> bool:
        """``job`` finished before the Job behind ``record`` did (or before the record was written)."""
        finished = rollout.parse_time(job.finished)
        if finished is None:
            return False
        recorded_job = self.jobs.get(str(record.get("job") or ""))
        other = rollout.parse_time(recorded_job.finished) if recorded_job is not None else None
        if other is not None and other != finished:
            return finished < other
        written = rollout.parse_time(record.get("time"))
        # completionTime has whole seconds: the Job ended within a second after it.
        return written is not None and finished + dt.timedelta(seconds=1) <= written

    async def _fetch_result(self, job: JobInfo) -> dict[str, Any] | None:
        try:
            pods = await self.kube.get(kube_mod.pods_path(self.config.namespace),
                                       {"labelSelector": f"batch.kubernetes.io/job-name={job.name}"})
        except kube_mod.ApiError:
            return None
        for pod in (pods or {}).get("items") or []:
            result = jobs_mod.pod_result(pod)
            if result is not None:
                return result
        return None

    async def _record(self, entry: PolicyEntry, job: JobInfo, node: nodes_mod.NodeFacts,
                      previous: Mapping[str, Any] | None, result: dict[str, Any] | None) -> None:
        ok = job.outcome == "succeeded" and (result is None or bool(result.get("ok", True)))
        same_run = (previous is not None and previous.get("bundle") == job.bundle
                    and previous.get("bootID") == node.boot_id and previous.get("uid") == node.uid)
        failures = 0 if ok else (int(previous.get("failures") or 0) + 1 if same_run and previous
                                 and previous.get("result") == "failed" else 1)
        now = _record_time()
        record: dict[str, Any] = {
            "bundle": job.bundle, "result": "ok" if ok else "failed", "time": now,
            "bootID": node.boot_id, "uid": node.uid, "job": job.name, "failures": failures,
            "budget": job.budget,  # a retry runs on the same budget (rollout.classify)
        }
        last_ok = now if ok else (previous or {}).get("lastSuccess")
        if last_ok:
            record["lastSuccess"] = last_ok
        if result:
            # lost/backlog: the kernel's counters from `auditctl -s`, so a user sees a node dropping events.
            # canaryId/canaryAt/canarySeen: the canary this apply sent (the Delivered check looks for it)
            for key in ("distro", "auditVersion", "rulesLoaded", "lost", "backlog", "canaryId", "canaryAt", "canarySeen"):
                if key in result:
                    record[key] = result[key]
        if not ok:
            record["error"] = str((result or {}).get("message") or f"Job {job.name} failed without a result line")[:512]
        text = json.dumps(record, sort_keys=True, separators=(",", ":"))
        key = nodes_mod.state_annotation(entry.name)
        records = dict(node.records)
        records[entry.name] = record
        updated = replace(node, records=records)
        remove_taint = ok and node.has_startup_taint and self._all_configured(updated)
        try:
            if remove_taint:
                taints = self.raw_taints.get(node.name, [])
                keep = [t for t in taints if t.get("key") != nodes_mod.STARTUP_TAINT_KEY]
                await self.kube.json_patch(kube_mod.node_path(node.name),
                                           self._record_and_untaint_ops(node, key, text, taints, keep))
                self.raw_taints[node.name] = keep
                self.bare.pop(node.name, None)
            else:
                await self.kube.merge_patch(kube_mod.node_path(node.name), {"metadata": {"annotations": {key: text}}})
        except kube_mod.ApiError as e:
            if e.status == 404:
                self.recorded.add(job.name)
                return
            log.warning("could not record %s on node %s: %s", job.name, node.name, e)
            return
        self.recorded.add(job.name)
        self._remember(node.name, entry.name, json.loads(text))
        metrics.observe_apply(record["result"], record.get("distro"), record.get("auditVersion"))
        first_of_boot = not (previous and previous.get("lastSuccess") and previous.get("bootID") == node.boot_id
                             and previous.get("uid") == node.uid)
        if ok and first_of_boot and node.ready_since:
            metrics.observe_ready_to_configured(entry.name, node.ready_since)
        if remove_taint and node.name in self.nodes:
            current = self.nodes[node.name]
            self.nodes[node.name] = replace(current, taints=tuple(
                t for t in current.taints if t.key != nodes_mod.STARTUP_TAINT_KEY))
        if not ok and job.name not in entry.failures_reported:
            entry.failures_reported.add(job.name)
            await self.event(entry, "Warning", "ApplyFailed",
                             f"node {node.name}: {record['error']} (attempt {failures})")

    def _record_and_untaint_ops(self, node: nodes_mod.NodeFacts, key: str, text: str,
                                taints: list[dict[str, Any]], keep: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One JSON patch: the record and the startup-taint removal, guarded by a ``test`` of the
        taint list (a concurrent taint change fails it with 422; the next pass tries again)."""
        ops: list[dict[str, Any]] = [{"op": "test", "path": "/spec/taints", "value": taints},
                                     {"op": "replace", "path": "/spec/taints", "value": keep}]
        if node.name in self.bare and not node.records:
            # No annotations map yet: create it, but only on the version we saw (adding {} over
            # annotations written meanwhile would drop them).
            ops += [{"op": "test", "path": "/metadata/resourceVersion", "value": self.bare[node.name]},
                    {"op": "add", "path": "/metadata/annotations", "value": {}}]
        ops.append({"op": "add", "path": "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1"),
                    "value": text})
        return ops

    def _all_configured(self, node: nodes_mod.NodeFacts) -> bool:
        """Every valid policy that selects this node (and may act on it) has a successful record
        for its bundle."""
        for other in self.policies.values():
            if other.error or other.policy is None or other.deleting:
                continue
            if not nodes_mod.matches(other.policy.spec.node_selector, node.labels):
                continue
            if self.conflicts(other, [node]):
                continue  # a conflicting later policy leaves this node alone: it must not hold the gate
            rec = node.record(other.name)
            if not rec or rec.get("result") != "ok" or rec.get("bundle") != other.bundle.hash:
                return False
        return True

    async def _start_all(self, entry: PolicyEntry, starts: list[rollout.Start]) -> str | None:
        """Create the bundle ConfigMap and the Jobs; the first refusal's description, or None."""
        try:
            await self._ensure_configmap(entry)
        except CreateFailed as e:
            log.warning("policy %s: %s", entry.name, e)
            return str(e)
        outcomes = await asyncio.gather(*(self._start_job(entry, s) for s in starts), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        for error in errors:
            if not isinstance(error, CreateFailed):
                raise error
        if not errors:
            return None
        log.warning("policy %s: %s", entry.name, errors[0])
        more = f" (and {len(errors) - 1} more Job creates)" if len(errors) > 1 else ""
        return str(errors[0]) + more

    async def _create(self, path: str, manifest: Mapping[str, Any]) -> None:
        try:
            await self.kube.create(path, manifest)
        except kube_mod.ApiError as e:
            kind = manifest.get("kind", "object")
            raise CreateFailed(f"creating {kind} {manifest['metadata'].get('name')} (POST {path}) failed: {e}") from e

    async def _ensure_configmap(self, entry: PolicyEntry) -> None:
        name = jobs_mod.configmap_name(entry.bundle.hash)
        if name in self.configmaps:
            return
        manifest = jobs_mod.configmap_manifest(entry.bundle, self.config.namespace)
        await self._create(kube_mod.configmaps_path(self.config.namespace), manifest)
        self.configmaps.add(name)

    async def _start_job(self, entry: PolicyEntry, start: rollout.Start, action: str = "apply") -> None:
        manifest = jobs_mod.job_manifest(
            policy_name=entry.name, policy_uid=entry.uid, node_name=start.node,
            bundle_hash=entry.bundle.hash, image=self.config.image, namespace=self.config.namespace,
            action="remove" if action == "remove" else "apply", run_key=start.run_key,
            reason=start.reason, budget=start.budget,
        )
        async with self.sem:
            await self._create(kube_mod.jobs_path(self.config.namespace), manifest)
        name = manifest["metadata"]["name"]
        if name not in self.jobs:  # count it as running before its watch event arrives
            self.on_job(manifest)

    async def _write_status(self, entry: PolicyEntry, summary: status.Summary) -> None:
        previous = entry.status or {}
        new = status.build_status(summary, _now_iso(), previous.get("conditions") or ())
        metrics.set_policy_nodes(entry.name, new["nodes"])
        if not status.status_changed(previous, new):
            return
        try:
            await self.kube.merge_patch(kube_mod.policy_status_path(entry.name), {"status": new})
        except kube_mod.ApiError as e:
            if e.status != 404:
                raise
        entry.status = new

    async def event(self, entry: PolicyEntry, type_: str, reason: str, message: str) -> None:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "metadata": {"generateName": f"{entry.name}.", "namespace": self.config.namespace},
            "involvedObject": {"apiVersion": "nodeaudit.io/v1alpha1", "kind": "NodeAuditPolicy",
                               "name": entry.name, "uid": entry.uid},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": "nodeaudit"}, "reportingComponent": "nodeaudit.io/operator",
            "reportingInstance": os.environ.get("HOSTNAME", "nodeaudit"),
            "firstTimestamp": now, "lastTimestamp": now, "eventTime": now, "count": 1, "action": reason,
        }
        try:
            await self.kube.create(kube_mod.events_path(self.config.namespace), body)
        except kube_mod.ApiError as e:
            log.warning("could not post event %s: %s", reason, e)

    # ---- removal -------------------------------------------------------------------------

    async def remove_policy(self, body: Mapping[str, Any]) -> None:
        """Run the removal entry point on the policy's nodes; raise Waiting until done."""
        name = str((body.get("metadata") or {}).get("name"))
        entry = self.policies.get(name)
        if entry is None:
            self.set_policy(body)
            entry = self.policies[name]
        entry.deleting = True
        if entry.delete_started is None:
            entry.delete_started = time.monotonic()
        remove = entry.error is None and bool(entry.policy.spec.remove_on_delete)
        holders = [n for n in self.nodes.values() if name in n.records]
        if not remove:
            await asyncio.gather(*(self._clear_record(name, n.name) for n in holders))
            self.forget_policy(name)
            return
        timed_out = time.monotonic() - entry.delete_started > self.config.removal_timeout
        waiting: list[str] = []
        starts = []
        for node in holders:
            record = node.record(name) or {}
            run_key = f"remove|{record.get('bundle')}|{node.uid}|{node.boot_id}"
            job_name = jobs_mod.job_name(name, node.name, "remove", run_key)
            job = self.jobs.get(job_name)
            if job is None:
                if not node.ready or not node.eligible or timed_out:
                    await self._clear_record(name, node.name)  # nothing to run it on: let go
                    continue
                starts.append(rollout.Start(node.name, "update", 0, run_key))
                waiting.append(node.name)
            elif job.outcome == "running":
                if timed_out or not node.ready:
                    await self._clear_record(name, node.name)
                    continue
                waiting.append(node.name)
            else:
                if job.outcome == "failed":
                    await self.event(entry, "Warning", "RemoveFailed", f"node {node.name}: removal Job {job.name} failed")
                await self._clear_record(name, node.name)
        if starts:
            await self._ensure_configmap(entry)
            await asyncio.gather(*(self._start_job(entry, s, action="remove") for s in starts))
        if waiting:
            raise Waiting(f"waiting for removal on {len(waiting)} node(s)")
        self.forget_policy(name)
        await self._gc_configmaps()

    async def _clear_record(self, policy: str, node_name: str) -> None:
        node = self.nodes.get(node_name)
        try:
            await self.kube.merge_patch(kube_mod.node_path(node_name),
                                        {"metadata": {"annotations": {nodes_mod.state_annotation(policy): None}}})
        except kube_mod.ApiError as e:
            if e.status != 404:
                raise
        if node is not None:
            self._remember(node_name, policy, None)

    async def _gc_configmaps(self) -> None:
        """Delete bundle ConfigMaps that no policy's current bundle and no running Job needs."""
        try:
            listing = await self.kube.get(kube_mod.configmaps_path(self.config.namespace),
                                          {"labelSelector": f"{jobs_mod.LABEL_MANAGED_BY}=nodeaudit,"
                                                            f"{jobs_mod.LABEL_COMPONENT}=bundle"})
        except kube_mod.ApiError:
            return
        keep = {jobs_mod.configmap_name(e.bundle.hash) for e in self.policies.values() if e.bundle is not None}
        keep |= {jobs_mod.configmap_name(j.bundle) for j in self.jobs.values() if j.outcome == "running" and j.bundle}
        for cm in (listing or {}).get("items") or []:
            name = cm["metadata"]["name"]
            if name not in keep:
                await self.kube.delete(kube_mod.configmaps_path(self.config.namespace, name))
                self.configmaps.discard(name)

    # ---- the monitoring-agent check (Azure) ------------------------------------------------

    async def _agent_loop(self) -> None:
        """Start each policy's agent check every ``spec.monitoringAgent.interval``, in this loop."""
        while not self.primed:
            await asyncio.sleep(0.1)
        while True:
            now = time.monotonic()
            next_due = now + 30.0
            for entry in list(self.policies.values()):
                if entry.error is not None or entry.policy is None or entry.deleting:
                    continue
                try:
                    settings = agent_mod.settings_from_spec(entry.policy.spec)
                except ValueError as e:
                    self._set_agent(entry, ("Unknown", "CheckFailed", str(e)), [])
                    continue
                key = repr(settings)
                if key != entry.agent_key:
                    entry.agent_key, entry.agent_due = key, 0.0
                    self.agent_checkers.pop(entry.name, None)
                if not settings.runs:  # no ARM call, no cluster read
                    self._set_agent(entry, agent_mod.disabled_condition(), [])
                    continue
                if entry.agent_task is not None and not entry.agent_task.done():
                    continue
                if entry.agent_due <= now:
                    # The next one is due an interval after this one *ends* (see _check_agent): the
                    # checker's cache (TTL 0.9 x interval) has then always expired, so every check
                    # lists every scale set exactly once, however long this one takes.
                    entry.agent_due = float("inf")
                    if entry.agent is None:
                        self._set_agent(entry, ("Unknown", "Checking", "the first agent check is running"), None)
                    entry.agent_task = asyncio.create_task(self._check_agent(entry.name, settings),
                                                           name=f"nodeaudit-agent-{entry.name}")
                next_due = min(next_due, entry.agent_due)
            self.agent_wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.agent_wake.wait(), timeout=max(0.05, next_due - time.monotonic()))

    def _notice_scale_set(self, node: nodes_mod.NodeFacts) -> None:
        """A node in a scale set that a policy's agent check has not seen makes that check due now
        (the checker's cache keeps the other scale sets: one list call, for the new one)."""
        if not node.eligible:
            return
        ref = agent_mod.parse_provider_id(node.provider_id)
        if not isinstance(ref, agent_mod.ScaleSetRef):
            return
        for entry in self.policies.values():
            if (entry.error is not None or entry.policy is None or entry.deleting
                    or ref.key in entry.agent_scale_set_keys
                    or not agent_mod.settings_from_spec(entry.policy.spec).runs
                    or not nodes_mod.matches(entry.policy.spec.node_selector, node.labels)):
                continue
            entry.agent_scale_set_keys.add(ref.key)
            entry.agent_due = 0.0  # also while a check runs: _check_agent then leaves it due
            self.agent_wake.set()

    def _set_agent(self, entry: PolicyEntry, condition: tuple[str, str, str],
                   scale_sets: list[dict[str, Any]] | None) -> None:
        if entry.agent == condition and (scale_sets is None or entry.agent_scale_sets == scale_sets):
            return
        entry.agent = condition
        if scale_sets is not None:
            entry.agent_scale_sets = scale_sets
        self._mark(entry.name)

    async def _check_agent(self, name: str, settings: Any) -> None:
        try:
            await self._run_agent_check(name, settings)
        except Exception as e:  # noqa: BLE001 - nobody awaits this task: say it, never lose it
            log.exception("agent check of policy %s failed", name)
            current = self.policies.get(name)
            if current is not None:
                self._set_agent(current, ("Unknown", "CheckFailed", f"{type(e).__name__}: {e}"), None)
        finally:
            entry = self.policies.get(name)
            if entry is not None and entry.agent_due == float("inf"):  # 0 when the spec changed meanwhile
                entry.agent_due = time.monotonic() + settings.interval_seconds
            self.agent_wake.set()

    async def _run_agent_check(self, name: str, settings: Any) -> None:
        from nodeaudit.azure import check as azure
        from nodeaudit.azure.checker import AgentChecker, ttl_for_interval
        from nodeaudit.azure.clients import ArmClients, ArmOptions

        entry = self.policies.get(name)
        if entry is None or entry.policy is None:
            return
        matched = self.matched_nodes(entry)
        entry.agent_scale_set_keys = {ref.key for n in matched
                                      if isinstance(ref := agent_mod.parse_provider_id(n.provider_id),
                                                    agent_mod.ScaleSetRef)}
        nodes = [{"metadata": {"name": n.name, "labels": dict(n.labels)},
                  "spec": {"providerID": n.provider_id, "taints": self.raw_taints.get(n.name, [])}}
                 for n in matched]
        if self.arm is None:
            try:  # NODEAUDIT_ARM_ENDPOINT is checked here (https only): a bad one is the verdict
                ca = os.environ.get("NODEAUDIT_ARM_CA_FILE")
                self.arm = ArmClients(options=ArmOptions(connection_verify=ca or True),
                                            observe=metrics.observe_arm)
            except ValueError as e:
                log.error("agent check of policy %s cannot run: %s", name, e)
                self._set_agent(entry, ("False", "ArmConfigInvalid", str(e)), None)
                return
        checker = self.agent_checkers.get(name)
        if checker is None:
            checker = AgentChecker(self.arm, ttl=ttl_for_interval(settings.interval_seconds),
                                         retry_note="; retried next interval")
            self.agent_checkers[name] = checker
        try:
            # the cluster is read for ContainerInsights only: the operator has no RBAC on Secrets
            kube = self.kube if settings.check == "ContainerInsights" else None
            report = await azure.check_policy_agents(nodes, settings, checker, kube=kube)
        except Exception as e:  # noqa: BLE001 - a check that cannot run is a verdict, not a crash
            log.warning("agent check of policy %s could not run: %s", name, e)
            current = self.policies.get(name)
            if current is not None:
                self._set_agent(current, ("Unknown", "CheckFailed", f"{type(e).__name__}: {e}"), None)
            return
        cond = agent_mod.agent_condition(report, observed_generation=entry.generation)
        current = self.policies.get(name)
        if current is None:
            return
        states: dict[str, int] = {}
        for s in report.scale_sets:
            states[s.state] = states.get(s.state, 0) + 1
        metrics.set_agent(name, states, str(cond["status"]))
        log.info("agent check of policy %s: %s %s", name, cond["reason"], cond["message"])
        self._set_agent(current, (str(cond["status"]), str(cond["reason"]), str(cond["message"])),
                        agent_mod.agent_status(report))

    async def resync(self) -> None:
        """Periodic safety net (kopf timer): look at every policy again and collect garbage."""
        self._mark()
        await self._gc_configmaps()


def _finish_key(job: JobInfo) -> tuple[dt.datetime, float]:
    finished = rollout.parse_time(job.finished) or dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return finished, job.finished_at or job.created


def _same_for_us(a: nodes_mod.NodeFacts, b: nodes_mod.NodeFacts) -> bool:
    return (a.labels == b.labels and a.ready == b.ready and a.boot_id == b.boot_id and a.uid == b.uid
            and a.taints == b.taints and a.deleting == b.deleting and a.records == b.records)
