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
from nodeaudit.core import policy as policy_mod
from nodeaudit.core.nodes import NodeFacts
from nodeaudit.core.policy import parse_duration

log = logging.getLogger("nodeaudit.controller.reconciler")

CREATE_RETRY_SECONDS = 5.0
FAILED_PASS_RETRY_SECONDS = 2.0
RESULT_POLL_SECONDS = 0.5
IDLE_WAKE_SECONDS = 30.0


class Waiting(Exception):
    """Removal is still in progress (the delete handler retries)."""


class Controller:
    """Wires the view, the loop, the writer and the agent check together."""

    def __init__(self, kube: kube_mod.Kube, config: Config) -> None:
        self.kube = kube
        self.config = config
        self.view = View()
        self.writer = Writer(kube, config, self.view)
        self.agent = AgentCheck(self.view, kube, config)
        self._task: asyncio.Task[None] | None = None
        self.passes = 0

    # ---- intake (called from kopf handlers; never awaits the API) -------------------------

    def on_node(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        facts = self.view.on_node(body, deleted)
        if facts is not None:
            self.agent.notice_scale_set(facts)

    def on_job(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        finished = self.view.on_job(body, deleted)
        if finished is not None:
            metrics.observe_job(finished.action, finished.outcome, time.monotonic() - finished.created)

    def on_pod(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        self.view.on_pod(body, deleted)

    def set_policy(self, body: Mapping[str, Any]) -> None:
        """A policy was created, changed or seen at start: parse and render it once."""
        self.view.set_policy(body)
        self.agent.policy_changed()

    def forget_policy(self, name: str) -> None:
        self.view.forget_policy(name)
        self.agent.forget(name)
        metrics.forget_policy(name)

    # ---- the loop -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="nodeaudit-reconciler")
        self.agent.start()

    async def stop(self) -> None:
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
                try:
                    await self.reconcile(entry)
                except Exception:  # keep the loop alive; retry soon
                    log.exception("reconcile of policy %s failed; retrying", name)
                    entry.requeue_at = time.monotonic() + FAILED_PASS_RETRY_SECONDS

    # ---- one pass -------------------------------------------------------------------------

    async def reconcile(self, entry: PolicyEntry) -> None:
        self.passes += 1
        if entry.error is not None or entry.policy is None or entry.bundle is None:
            await self.writer.write_status(entry, status.Summary(generation=entry.generation,
                                                                 invalid=entry.error or "not parsed"))
            return
        await self.record_finished(entry)
        view = self.view
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
        if plan.requeue_after is not None:
            entry.requeue_at = time.monotonic() + max(0.05, plan.requeue_after)
        if create_error is not None:  # try again later, as after any failed pass
            entry.requeue_at = min(entry.requeue_at or 1e18, time.monotonic() + CREATE_RETRY_SECONDS)
        # Unrecorded finished Jobs still waiting for their result line: look again shortly.
        if view.unrecorded(entry.name):
            entry.requeue_at = min(entry.requeue_at or 1e18, time.monotonic() + RESULT_POLL_SECONDS)
        agent, agent_scale_sets = self.agent.verdict(entry.name)
        warnings = self.warnings(entry, matched)
        summary = status.Summary(
            generation=entry.generation, bundle=entry.bundle.hash, matched=plan.matched,
            configured=plan.count("configured"), applying=plan.count("applying"),
            pending=plan.count("pending"), waiting=plan.count("waiting"), retrying=plan.count("retrying"),
            failed=plan.count("failed"), failed_nodes=plan.failed_nodes, stalled=plan.stalled,
            paused=plan.paused, conflicts=conflicts, create_failed=create_error,
            agent=agent, agent_scale_sets=agent_scale_sets, warnings=warnings,
        )
        await self.writer.write_status(entry, summary)
        said = (("no-match",) if not matched else ()) + tuple(warnings)
        if said != entry.warnings_reported:
            entry.warnings_reported = said
            if not matched:
                await self.writer.event(entry, *events.no_matching_nodes())
            if warnings:
                await self.writer.event(entry, *events.policy_warnings(warnings))
        if create_error is not None and create_error != entry.create_error_reported:
            await self.writer.event(entry, *events.create_failed(create_error))
        entry.create_error_reported = create_error
        if plan.stalled and frozenset(plan.failed_nodes) != entry.stalled_reported:
            entry.stalled_reported = frozenset(plan.failed_nodes)
            await self.writer.event(entry, *events.rollout_stalled(plan.failed_nodes))
        elif not plan.stalled:
            entry.stalled_reported = frozenset()

    def warnings(self, entry: PolicyEntry, matched: list[NodeFacts]) -> list[str]:
        """This policy's own warnings and those other active policies cause it on shared nodes."""
        assert entry.policy is not None
        active = [e for e in self.view.policies.values() if e.active and e.policy is not None]
        nodes = {e.name: {n.name for n in (matched if e is entry else self.view.matched_nodes(e))} for e in active}
        suffering = policy_mod.cross_policy_warnings(
            [e.policy for e in active if e.policy is not None],
            shared_nodes=lambda a, b: bool(nodes.get(a, set()) & nodes.get(b, set())))
        return policy_mod.policy_warnings(entry.policy) + suffering.get(entry.name, [])

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
        entry.deleting = True
        if entry.delete_started is None:
            entry.delete_started = time.monotonic()
        holders = [n for n in self.view.nodes.values() if name in n.records]
        if entry.error is not None or entry.policy is None or not entry.policy.spec.remove_on_delete:
            await asyncio.gather(*(self.writer.clear_record(name, n.name) for n in holders))
            self.forget_policy(name)
            return
        timed_out = time.monotonic() - entry.delete_started > self.config.removal_timeout
        plan = removal.plan_removal(name, holders, self.view.jobs, timed_out)
        failed = dict(plan.failed)
        for node_name in plan.clear:
            if node_name in failed:
                await self.writer.event(entry, *events.remove_failed(node_name, failed[node_name]))
            await self.writer.clear_record(name, node_name)
        if plan.start:
            await self.writer.ensure_configmap(entry)
            await asyncio.gather(*(self.writer.start_job(entry, s, action="remove") for s in plan.start))
        if plan.waiting:
            raise Waiting(f"waiting for removal on {len(plan.waiting)} node(s)")
        self.forget_policy(name)
        await self.writer.delete_unused_configmaps()

    async def resync(self) -> None:
        """Periodic safety net (kopf timer): look at every policy again and collect garbage."""
        self.view.mark()
        await self.writer.delete_unused_configmaps()
