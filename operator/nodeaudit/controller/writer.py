"""Every write the controller makes to the API: node records, Jobs and their ConfigMaps, policy
status, Events; and the metrics that count what was written.

Why one module: the decisions (core/) return desired objects and patches; this is the one place
that sends them, maps an API refusal to what the controller does next (CreateFailed, 404 = gone),
and brings the view up to date with what it wrote before the watch event comes back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from nodeaudit.controller import kube as kube_mod
from nodeaudit.controller import metrics
from nodeaudit.controller.config import Config
from nodeaudit.controller.view import PolicyEntry, View
from nodeaudit.core import delivery, events, eventseries, noderecord, rollout, status
from nodeaudit.core import jobs as jobs_mod
from nodeaudit.core import nodes as nodes_mod
from nodeaudit.core.jobs import JobInfo
from nodeaudit.core.nodes import NodeFacts

log = logging.getLogger("nodeaudit.controller.writer")


class CreateFailed(Exception):
    """The API refused a ConfigMap or Job create (namespace missing, forbidden, invalid)."""


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Writer:
    def __init__(self, kube: kube_mod.Kube, config: Config, view: View) -> None:
        self.kube = kube
        self.config = config
        self.view = view
        self.sem = asyncio.Semaphore(config.concurrency)
        # Events about many nodes, aggregated per policy, reason and rollout (the bundle).
        self.series = eventseries.Aggregator()
        self._uids: dict[str, str] = {}

    # ---- node records ---------------------------------------------------------------------

    async def write_record(self, entry: PolicyEntry, job: JobInfo, node: NodeFacts,
                           previous: Mapping[str, Any] | None, record: dict[str, Any], untaint: bool) -> None:
        """Write ``record`` (what ``job`` left) on ``node``; with ``untaint`` the startup taint goes
        in the same JSON patch. A node that is gone settles the Job; another refusal leaves it for
        the next pass."""
        text = noderecord.record_text(record)
        path = kube_mod.node_path(node.name)
        try:
            if untaint:
                taints = self.view.raw_taints.get(node.name, [])
                await self.kube.json_patch(path, noderecord.record_and_untaint_ops(
                    node, entry.name, text, taints, self.view.bare.get(node.name)))
                self.view.untainted(node.name, noderecord.without_startup_taint(taints))
            else:
                await self.kube.merge_patch(path, noderecord.annotation_patch(entry.name, text))
        except kube_mod.ApiError as e:
            if e.status == 404:
                self.view.recorded.add(job.name)
                return
            log.warning("could not record %s on node %s: %s", job.name, node.name, e)
            return
        self.view.recorded.add(job.name)
        self.view.remember(node.name, entry.name, json.loads(text))
        ok = record["result"] == "ok"
        metrics.observe_apply(record["result"], record.get("distro"), record.get("auditVersion"))
        metrics.observe_dispatcher(entry.name, node.name, record)
        if ok and noderecord.first_success_of_boot(previous, node) and node.ready_since:
            metrics.observe_ready_to_configured(entry.name, node.ready_since)
        if ok:
            self.note(entry, job.bundle, *events.nodes_configured(job.bundle), subject=node.name)
            if untaint:
                self.note(entry, job.bundle, *events.taint_removed(nodes_mod.STARTUP_TAINT_KEY), subject=node.name)
        elif job.name not in entry.failures_reported:
            entry.failures_reported.add(job.name)
            _, _, latest = events.apply_failed(node.name, record["error"], record["failures"])
            self.note(entry, job.bundle, *events.apply_failures(job.bundle, latest), subject=node.name)

    async def write_delivered(self, policy: str, node_name: str, old_text: str, new_text: str) -> bool:
        """Add ``deliveredAt`` to a node's record, only if the record is still ``old_text``."""
        try:
            await self.kube.json_patch(kube_mod.node_path(node_name), delivery.delivered_ops(policy, old_text, new_text))
        except kube_mod.ApiError as e:
            if e.status not in (404, 409, 422):
                log.warning("could not record deliveredAt on node %s: %s", node_name, e)
            return False
        if node_name in self.view.nodes:
            self.view.remember(node_name, policy, json.loads(new_text))
        return True

    async def clear_record(self, policy: str, node_name: str) -> None:
        try:
            await self.kube.merge_patch(kube_mod.node_path(node_name), noderecord.annotation_patch(policy, None))
        except kube_mod.ApiError as e:
            if e.status != 404:
                raise
        if node_name in self.view.nodes:
            self.view.remember(node_name, policy, None)

    # ---- Jobs and their bundle ConfigMaps -------------------------------------------------

    async def _create(self, path: str, manifest: Mapping[str, Any]) -> None:
        try:
            await self.kube.create(path, manifest)
        except kube_mod.ApiError as e:
            kind = manifest.get("kind", "object")
            raise CreateFailed(f"creating {kind} {manifest['metadata'].get('name')} (POST {path}) failed: {e}") from e

    async def ensure_configmap(self, entry: PolicyEntry) -> None:
        assert entry.bundle is not None
        name = jobs_mod.configmap_name(entry.bundle.hash)
        if name in self.view.configmaps:
            return
        manifest = jobs_mod.configmap_manifest(entry.bundle, self.config.namespace)
        await self._create(kube_mod.configmaps_path(self.config.namespace), manifest)
        self.view.configmaps.add(name)

    async def start_job(self, entry: PolicyEntry, start: rollout.Start, action: jobs_mod.Action = "apply") -> None:
        assert entry.bundle is not None
        manifest = jobs_mod.job_manifest(
            policy_name=entry.name, policy_uid=entry.uid, node_name=start.node,
            bundle_hash=entry.bundle.hash, image=self.config.image, namespace=self.config.namespace,
            action=action, run_key=start.run_key, reason=start.reason, budget=start.budget,
        )
        async with self.sem:
            await self._create(kube_mod.jobs_path(self.config.namespace), manifest)
        if manifest["metadata"]["name"] not in self.view.jobs:  # count it as running before its watch event
            self.view.on_job(manifest)

    async def start_all(self, entry: PolicyEntry, starts: list[rollout.Start],
                        action: jobs_mod.Action = "apply") -> str | None:
        """Create the bundle ConfigMap and the Jobs; the first refusal's description, or None."""
        try:
            await self.ensure_configmap(entry)
        except CreateFailed as e:
            log.warning("policy %s: %s", entry.name, e)
            return str(e)
        outcomes = await asyncio.gather(*(self.start_job(entry, s, action) for s in starts), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        for error in errors:
            if not isinstance(error, CreateFailed):
                raise error
        if not errors:
            return None
        log.warning("policy %s: %s", entry.name, errors[0])
        more = f" (and {len(errors) - 1} more Job creates)" if len(errors) > 1 else ""
        return str(errors[0]) + more

    async def delete_unused_configmaps(self) -> None:
        """Delete bundle ConfigMaps that no policy's current bundle and no running Job needs."""
        path = kube_mod.configmaps_path(self.config.namespace)
        try:
            listing = await self.kube.get(path, {"labelSelector": f"{jobs_mod.LABEL_MANAGED_BY}=nodeaudit,"
                                                                  f"{jobs_mod.LABEL_COMPONENT}=bundle"})
        except kube_mod.ApiError:
            return
        existing = [cm["metadata"]["name"] for cm in (listing or {}).get("items") or []]
        bundles = [e.bundle.hash for e in self.view.policies.values() if e.bundle is not None]
        for name in jobs_mod.unused_configmaps(existing, bundles, self.view.jobs.values()):
            await self.kube.delete(kube_mod.configmaps_path(self.config.namespace, name))
            self.view.configmaps.discard(name)

    # ---- the policy: status and Events ----------------------------------------------------

    async def write_status(self, entry: PolicyEntry, summary: status.Summary) -> None:
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

    def note(self, entry: PolicyEntry, rollout: str, type_: str, reason: str, template: str,
             subject: str | None = None) -> None:
        """One occurrence for an aggregated Event (posted by :meth:`flush_events`)."""
        self._uids[entry.name] = entry.uid
        self.series.add(time.time(), entry.name, type_, reason, rollout, template, subject)

    async def flush_events(self, *, force: bool = False) -> None:
        """Post the aggregated Events that are due (``force``: all that wait)."""
        for post in self.series.due(time.time(), force=force):
            body = events.series_body(post, policy_uid=self._uids.get(post.policy, ""),
                                      namespace=self.config.namespace,
                                      instance=self.config.instance)
            path = kube_mod.events_path(self.config.namespace)
            try:
                created, _ = await self.kube.create(path, body)
                if not created:  # posted before (or by the operator's previous run): update it
                    await self.kube.merge_patch(f"{path}/{post.name}", events.series_update(post))
            except (kube_mod.ApiError, OSError, asyncio.TimeoutError) as e:
                log.warning("could not post event %s: %s", post.reason, e)

    def forget_events(self, policy: str) -> None:
        self.series.forget(policy)
        self._uids.pop(policy, None)

    async def event(self, entry: PolicyEntry, type_: str, reason: str, message: str) -> None:
        body = events.event_body(policy=entry.name, policy_uid=entry.uid, namespace=self.config.namespace,
                                 type_=type_, reason=reason, message=message,
                                 now=dt.datetime.now(dt.timezone.utc),
                                 instance=self.config.instance)
        try:
            await self.kube.create(kube_mod.events_path(self.config.namespace), body)
        except kube_mod.ApiError as e:
            log.warning("could not post event %s: %s", reason, e)
