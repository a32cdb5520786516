"""The reconciler: keeps every policy's nodes configured, one pass per policy at a time.

Why one loop: kopf's handlers only feed the view (``view.py``) and mark policies dirty; this loop
debounces a burst of events into a handful of passes. A pass asks the pure core what to do (the
rollout plan, the records of finished Jobs, the status) and hands the result to the writer
(``writer.py``), the only part that writes to the API. The monitoring-agent check runs beside it
(``agentcheck.py``); its verdict lands in the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from nodeaudit.controller import kube as kube_mod
from nodeaudit.controller import metrics
from nodeaudit.controller.agentcheck import AgentCheck
from nodeaudit.controller.config import Config
from nodeaudit.controller.view import PolicyEntry, View
from nodeaudit.controller.writer import Writer
from nodeaudit.core import events, noderecord, removal, rollout, status
from nodeaudit.core import jobs as jobs_mod
from nodeaudit.core.policy import parse_duration

log = logging.getLogger("nodeaudit.controller.reconciler")

CREATE_RETRY_SECONDS = 5.0
FAILED_PASS_RETRY_SECONDS = 2.0
RESULT_POLL_SECONDS = 0.5
IDLE_WAKE_SECONDS = 30.0
RELIST_DEBOUNCE_SECONDS = 0.5  # kopf's re-listing events of one kind arrive within this
RELIST_RETRY_SECONDS = 2.0
FINALIZER = "nodeaudit.io/finalizer"  # kopf's finalizer on the policy (lifecycle.configure)


class Waiting(Exception):
    """Removal is still in progress (the delete handler retries)."""


class Controller:
    """Wires the view, the loop, the writer and the agent check together."""

    def __init__(self, kube: kube_mod.Kube, config: Config) -> None:
        self.kube = kube
        self.config = config
        self.view = View()
        self.writer = Writer(kube, config, self.view)
        self.agent = AgentCheck(self.view, kube, config, self.writer)
        self._task: asyncio.Task[None] | None = None
        self._relist_task: asyncio.Task[None] | None = None
        self._relist_kinds: set[str] = set()
        self._passing: str | None = None  # the policy whose pass runs now
        self.passes = 0

    # ---- intake (called from kopf handlers; never awaits the API) -------------------------

    def on_node(self, body: Mapping[str, Any], deleted: bool = False, listing: bool = False) -> None:
        facts = self.view.on_node(body, deleted)
        if facts is not None:
            self.agent.notice_scale_set(facts)
        if listing:
            self.notice_listing("nodes")

    def on_job(self, body: Mapping[str, Any], deleted: bool = False, listing: bool = False) -> None:
        if listing:
            self.notice_listing("jobs")
        finished = self.view.on_job(body, deleted)
        if finished is not None:
            metrics.observe_job(finished.action, finished.outcome, time.monotonic() - finished.created)

    def on_pod(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        self.view.on_pod(body, deleted)

    def notice_listing(self, kind: str) -> None:
        """kopf listed ``kind`` ("nodes", "jobs") again: its watch was answered 410 Gone on resume
        (or it restarted). kopf then replays the listing as events but sends no DELETED for what
        went away meanwhile, and neither kopf's on.event nor its indexes drop those objects. So one
        LIST of our own (debounced) replaces that part of the view. Pods need none: a result a
        lost Pod event missed is read from the Job's Pods when the Job is recorded."""
        if not self.view.primed:
            return  # priming is such a LIST
        self._relist_kinds.add(kind)
        if self._relist_task is None or self._relist_task.done():
            self._relist_task = asyncio.create_task(self._relist(), name="nodeaudit-relist")

    async def _relist(self) -> None:
        paths = {"nodes": ("/api/v1/nodes", None),
                 "jobs": (kube_mod.jobs_path(self.config.namespace), {"labelSelector": jobs_mod.LABEL_POLICY})}
        while self._relist_kinds:
            await asyncio.sleep(RELIST_DEBOUNCE_SECONDS)
            kind = sorted(self._relist_kinds)[0]
            self._relist_kinds.discard(kind)
            path, params = paths[kind]
            started = time.monotonic()
            try:
                listing = await self.kube.get(path, params)
            except (kube_mod.ApiError, OSError, asyncio.TimeoutError) as e:
                log.warning("re-listing %s failed (%s); retrying", kind, e)
                self._relist_kinds.add(kind)
                await asyncio.sleep(RELIST_RETRY_SECONDS)
                continue
            gone = self.view.replace(kind, (listing or {}).get("items") or [], started)
            if gone:
                log.info("re-list of %s: %d deleted while the watch was down: %s", kind, len(gone),
                         ", ".join(gone[:10]))

    def notice_policy(self, body: Mapping[str, Any]) -> None:
        """Every event of a policy (kopf's on.event, which kopf never skips). kopf's change handlers
        run once per change and only after kopf's finalizer write: when that write lands but is
        answered 5xx, kopf's retry fails its resourceVersion test (422) and the next event only
        finishes the finalizer step, so no create handler runs until the policy changes again.
        A policy that carries our finalizer and is unknown (or of another generation) is taken
        from here. Before the finalizer is on it, nothing rolls out: its deletion would skip the
        removal."""
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp") or FINALIZER not in (meta.get("finalizers") or []):
            return
        known = self.view.policies.get(str(meta.get("name")))
        if known is None or known.uid != meta.get("uid") or known.generation != int(meta.get("generation") or 1):
            self.set_policy(body)

    def set_policy(self, body: Mapping[str, Any]) -> None:
        """A policy was created, changed or seen at start: parse and render it once."""
        self.view.set_policy(body)
        self.agent.policy_changed()

    def forget_policy(self, name: str) -> None:
        self.view.forget_policy(name)
        self.view.settle_gone_jobs()  # its deleted Jobs will never be recorded
        self.agent.forget(name)
        metrics.forget_policy(name)

    # ---- the loop -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="nodeaudit-reconciler")
        self.agent.start()

    async def stop(self) -> None:
        if self._relist_task is not None:
            self._relist_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._relist_task
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self.agent.stop()
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
        view = self.view
        feeds: tuple[tuple[Any, Any, Mapping[str, Any] | None], ...] = (
            ((nodes or {}).get("items") or [], self.on_node, view.nodes),
            ((jobs or {}).get("items") or [], self.on_job, view.jobs),
            ((pods or {}).get("items") or [], self.on_pod, None))
        for items, feed, known in feeds:
            for obj in items:
                meta = obj.get("metadata") or {}
                if meta.get("uid") in view.deleted_while_priming:
                    continue
                if known is not None and meta.get("name") in known:
                    continue  # a watch event already brought this object (at least as fresh)
                feed(obj)
        view.primed = True
        view.deleted_while_priming.clear()
        view.mark()

    async def _loop(self) -> None:
        await self.prime()
        view = self.view
        while True:
            now = time.monotonic()
            due = [e.requeue_at for e in view.policies.values() if e.requeue_at is not None]
            events_due = self.writer.series.next_due(time.time())
            if events_due is not None:
                due.append(now + events_due)
            timeout = max(0.05, min(due) - now) if due else IDLE_WAKE_SECONDS
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(view.wake.wait(), timeout=timeout)
            await asyncio.sleep(self.config.debounce)
            view.wake.clear()
            now = time.monotonic()
            for e in view.policies.values():
                if e.requeue_at is not None and e.requeue_at <= now:
                    e.requeue_at = None
                    view.dirty.add(e.name)
            todo = sorted(view.dirty)
            view.dirty.clear()
            for name in todo:
                entry = view.policies.get(name)
                if entry is None or entry.deleting:
                    continue
                self._passing = name
                try:
                    await self.reconcile(entry)
                except Exception:  # keep the loop alive; retry soon
                    log.exception("reconcile of policy %s failed; retrying", name)
                    entry.requeue_at = time.monotonic() + FAILED_PASS_RETRY_SECONDS
                finally:
                    self._passing = None
            await self.writer.flush_events()

    # ---- one pass -------------------------------------------------------------------------

    async def reconcile(self, entry: PolicyEntry) -> None:
        self.passes += 1
        if entry.error is not None or entry.policy is None or entry.bundle is None:
            error = entry.error or "not parsed"
            await self.writer.write_status(entry, status.Summary(generation=entry.generation, invalid=error))
            if entry.invalid_reported != error:
                entry.invalid_reported = error
                await self.writer.event(entry, *events.invalid_spec(error))
            return
        await self.record_finished(entry)
        view = self.view
        view.settle_gone_jobs()
        matched = view.matched_nodes(entry)
        conflicts = view.conflicts(entry, matched)
        excluded = {n for nodes in conflicts.values() for n in nodes}
        spec = entry.policy.spec
        settings = rollout.Settings(
            bundle=entry.bundle.hash, max_unavailable=spec.rollout.max_unavailable,
            max_failures=spec.rollout.max_failures, paused=spec.rollout.paused,
            verify_interval=parse_duration(spec.verify_interval),
            retry_limit=self.config.retry_limit, retry_backoff=self.config.retry_backoff,
        )
        now = dt.datetime.now(dt.timezone.utc)
        records = {n.name: n.record(entry.name) for n in matched}
        plan = rollout.plan(settings, matched, records, view.running_jobs(entry.name), now, excluded)
        # A finished Job of the same run (same deterministic name) is never created again.
        starts = [s for s in plan.start
                  if jobs_mod.job_name(entry.name, s.node, "apply", s.run_key) not in view.jobs]
        create_error = await self.writer.start_all(entry, starts) if starts else None
        before = entry.status or {}
        if (create_error is None and any(s.reason != "verify" for s in starts)
                and not _ready_for(before, entry.bundle.hash)
                and not self.writer.series.seen(entry.name, "RolloutStarted", entry.bundle.hash)):
            self.writer.note(entry, entry.bundle.hash,
                             *events.rollout_started(entry.bundle.hash, plan.matched, plan.budget))
        if plan.requeue_after is not None:
            entry.requeue_at = time.monotonic() + max(0.05, plan.requeue_after)
        if create_error is not None:  # try again later, as after any failed pass
            entry.requeue_at = min(entry.requeue_at or 1e18, time.monotonic() + CREATE_RETRY_SECONDS)
        # Unrecorded finished Jobs still waiting for their result line: look again shortly.
        if view.unrecorded(entry.name):
            entry.requeue_at = min(entry.requeue_at or 1e18, time.monotonic() + RESULT_POLL_SECONDS)
        agent, agent_scale_sets = self.agent.verdict(entry.name)
        delivered = self.agent.delivered(entry.name)
        summary = status.Summary(
            generation=entry.generation, bundle=entry.bundle.hash, matched=plan.matched,
            configured=plan.count("configured"), applying=plan.count("applying"),
            pending=plan.count("pending"), waiting=plan.count("waiting"), retrying=plan.count("retrying"),
            failed=plan.count("failed"), failed_nodes=plan.failed_nodes,
            retrying_nodes=[n for n, state in plan.states.items() if state == "retrying"], stalled=plan.stalled,
            paused=plan.paused, conflicts=conflicts, create_failed=create_error,
            agent=agent, agent_scale_sets=agent_scale_sets, delivered=delivered,
        )
        await self.writer.write_status(entry, summary)
        if _ready_for(entry.status or {}, entry.bundle.hash) and not _ready_for(before, entry.bundle.hash):
            ready = next(c for c in (entry.status or {}).get("conditions") or () if c.get("type") == "Ready")
            self.writer.note(entry, entry.bundle.hash, *events.rollout_finished(entry.bundle.hash, ready["message"]))
            await self.writer.flush_events(force=True)  # the rollout's last node counts with it
        if create_error is not None and create_error != entry.create_error_reported:
            await self.writer.event(entry, *events.create_failed(create_error))
        entry.create_error_reported = create_error
        if plan.stalled and frozenset(plan.failed_nodes) != entry.stalled_reported:
            entry.stalled_reported = frozenset(plan.failed_nodes)
            await self.writer.event(entry, *events.rollout_stalled(plan.failed_nodes))
        elif not plan.stalled:
            entry.stalled_reported = frozenset()

    async def record_finished(self, entry: PolicyEntry) -> None:
        """Write the result of each finished apply Job the node records still lack."""
        view = self.view
        todo, settled = noderecord.jobs_to_record(entry.name, view.jobs, view.nodes, view.recorded)
        view.recorded |= settled
        writes = []
        for job in todo:
            node = view.nodes[job.node]
            previous = node.record(entry.name)
            result = view.results.get(job.name)
            if result is None:
                if time.monotonic() - (job.finished_at or job.created) < self.config.result_grace:
                    continue
                result = await self._fetch_result(job)
            record = noderecord.build_record(job, node, previous, result,
                                             noderecord.record_time(dt.datetime.now(dt.timezone.utc)))
            untaint = (record["result"] == "ok" and node.has_startup_taint
                       and view.all_configured(replace(node, records={**node.records, entry.name: record})))
            writes.append(self.writer.write_record(entry, job, node, previous, record, untaint))
        if writes:
            await asyncio.gather(*writes)

    async def _fetch_result(self, job: jobs_mod.JobInfo) -> dict[str, Any] | None:
        """The result line of a finished Job whose Pod event did not bring it (read from its Pods)."""
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

    # ---- removal (the delete handler) and garbage ---------------------------------------------

    async def remove_policy(self, body: Mapping[str, Any]) -> None:
        """Run the removal entry point on the policy's nodes; raise Waiting until done."""
        name = str((body.get("metadata") or {}).get("name"))
        entry = self.view.policies.get(name)
        if entry is None:
            self.set_policy(body)
            entry = self.view.policies[name]
        entry.deleting = True  # no pass starts another apply Job from now on
        if entry.delete_started is None:
            entry.delete_started = time.monotonic()
        if self._passing == name:  # its Jobs may be being created: look at them next time
            raise Waiting("waiting for the policy's current pass to end")
        holders = removal.holders(name, self.view.nodes, self.view.jobs)
        if entry.error is not None or entry.policy is None or not entry.policy.spec.remove_on_delete:
            recorded = [n for n in holders if name in n.records]
            await asyncio.gather(*(self.writer.clear_record(name, n.name) for n in recorded))
            if entry.policy is not None:
                self.writer.note(entry, "delete", *events.removal_skipped(len(recorded)))
            await self._goodbye(name)
            return
        timed_out = time.monotonic() - entry.delete_started > self.config.removal_timeout
        plan = removal.plan_removal(name, holders, self.view.jobs, timed_out)
        failed = dict(plan.failed)
        by_name = {n.name: n for n in holders}
        for node_name in plan.clear:
            if node_name in failed:
                await self.writer.event(entry, *events.remove_failed(node_name, failed[node_name]))
            await self.writer.clear_record(name, node_name)
            ran = removal.removal_run_key(name, by_name[node_name], self.view.jobs)
            done = self.view.jobs.get(jobs_mod.job_name(name, node_name, "remove", ran))
            (entry.removed if done is not None and done.outcome == "succeeded" else entry.let_go).add(node_name)
        if plan.start:
            await self.writer.ensure_configmap(entry)
            await asyncio.gather(*(self.writer.start_job(entry, s, action="remove") for s in plan.start))
        if plan.waiting:
            raise Waiting(f"waiting for removal on {len(plan.waiting)} node(s)")
        self.writer.note(entry, "delete", *events.removal_finished(len(entry.removed), len(entry.let_go)))
        await self._goodbye(name)
        await self.writer.delete_unused_configmaps()

    async def _goodbye(self, name: str) -> None:
        """The policy's last Events, then forget it (the finalizer goes when the handler returns)."""
        await self.writer.flush_events(force=True)
        self.writer.forget_events(name)
        self.forget_policy(name)

    async def resync(self) -> None:
        """Periodic safety net (kopf timer): look at every policy again and collect garbage."""
        self.view.mark()
        await self.writer.delete_unused_configmaps()


def _ready_for(status_: Mapping[str, Any], bundle: str) -> bool:
    """``status_`` says Ready=True for ``bundle``."""
    return status_.get("bundle") == bundle and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status_.get("conditions") or ())
