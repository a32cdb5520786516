"""The operator's view of the cluster, built from watch events (and one LIST each at start).

Why in memory: a policy's decision needs all of its nodes and Jobs at once (budgets, failure
counts), and a burst of 1,000 node events must become a handful of passes, not 1,000. kopf's event
handlers only feed this view and mark policies dirty; the reconciler's single loop debounces and
reconciles. Nothing here talks to the API.

Per-node state lives on the Node itself, in the annotation ``nodeaudit.io/<policy>`` (JSON): it
survives operator restarts, ``kubectl get node -o yaml`` shows it, it disappears with the node,
and the result write can carry the startup-taint removal in the same request. In-flight work needs
no record: the Job (deterministic name, labels) is the record, and a restarted operator finds it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from nodeaudit.core import jobs as jobs_mod
from nodeaudit.core import nodes as nodes_mod
from nodeaudit.core.bundle import Bundle
from nodeaudit.core.policy import NodeAuditPolicy


@dataclass
class PolicyEntry:
    """One policy as the controller knows it: parsed and rendered once per change."""

    name: str
    uid: str
    generation: int
    created: str
    body: dict[str, Any]
    policy: NodeAuditPolicy | None = None
    bundle: Bundle | None = None
    error: str | None = None
    deleting: bool = False
    delete_started: float | None = None
    status: dict[str, Any] | None = None
    requeue_at: float | None = None
    # What was already said in Events (each said once, not on every pass).
    stalled_reported: frozenset[str] = frozenset()
    failures_reported: set[str] = field(default_factory=set)
    create_error_reported: str | None = None
    warnings_reported: tuple[str, ...] = ()
    invalid_reported: str | None = None
    # A deletion's progress, for its RemovalFinished Event: nodes cleaned up, nodes let go.
    removed: set[str] = field(default_factory=set)
    let_go: set[str] = field(default_factory=set)

    @property
    def order(self) -> tuple[str, str]:
        return (self.created, self.name)

    @property
    def active(self) -> bool:
        """Valid and not being deleted: it acts on its nodes."""
        return self.error is None and self.policy is not None and not self.deleting


def parse_entry(body: Mapping[str, Any], old: PolicyEntry | None) -> PolicyEntry:
    """A policy object → its entry, parsed and rendered (an invalid spec is the entry's ``error``).
    What Events already reported carries over from ``old``."""
    from nodeaudit.core.bundle import render_bundle
    from nodeaudit.core.policy import PolicyError, parse_policy

    meta = body.get("metadata") or {}
    entry = PolicyEntry(
        name=str(meta.get("name")), uid=str(meta.get("uid", "")), generation=int(meta.get("generation") or 1),
        created=str(meta.get("creationTimestamp") or ""), body=json.loads(json.dumps(dict(body))),
        status=dict(body.get("status") or {}) or (old.status if old else None),
    )
    if old is not None:
        entry.failures_reported = old.failures_reported
        entry.stalled_reported = old.stalled_reported
        entry.invalid_reported = old.invalid_reported
    try:
        entry.policy = parse_policy(entry.body)
        entry.bundle = render_bundle(entry.policy)
    except PolicyError as e:
        entry.error = str(e)
    except Exception as e:  # noqa: BLE001 - any rendering failure is an invalid spec, reported
        entry.error = f"{type(e).__name__}: {e}"
    return entry


def syslog_key(policy: NodeAuditPolicy) -> tuple[str, str] | None:
    syslog = policy.spec.syslog
    if not syslog.enabled:
        return None
    return (str(syslog.facility), str(syslog.priority))


class View:
    """Nodes, Jobs, Job results and policies, and which policies need a pass (``dirty``)."""

    def __init__(self) -> None:
        self.nodes: dict[str, nodes_mod.NodeFacts] = {}
        self.raw_taints: dict[str, list[dict[str, Any]]] = {}
        # Nodes whose last event had no metadata.annotations at all → that event's resourceVersion
        # (a JSON patch must create the map first, guarded by that version).
        self.bare: dict[str, str] = {}
        self.jobs: dict[str, jobs_mod.JobInfo] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, PolicyEntry] = {}
        self.recorded: set[str] = set()
        # Records this operator wrote whose watch event has not come back yet (node → policy → record,
        # None = removed): an older event must not make a configured node look new again.
        self.overlay: dict[str, dict[str, dict[str, Any] | None]] = {}
        self.configmaps: set[str] = set()  # bundle ConfigMaps known to exist
        self.dirty: set[str] = set()
        self.wake = asyncio.Event()
        self.primed = False
        self.deleted_while_priming: set[str] = set()  # uids
        # When each Node and Job last brought an event (monotonic): after a re-list, an object absent
        # from the listing is deleted only if nothing was heard of it since the listing began.
        self.node_seen: dict[str, float] = {}
        self.job_seen: dict[str, float] = {}
        # Apply Jobs deleted before their result was recorded (someone deleted a running Job, or a
        # TTL controller a finished one the operator never saw finish): kept until recorded.
        self.gone_jobs: set[str] = set()

    def mark(self, name: str | None = None) -> None:
        """Policy ``name`` (None: every policy) needs a pass."""
        if name is None:
            self.dirty.update(n for n, e in self.policies.items() if not e.deleting)
        elif name in self.policies:
            self.dirty.add(name)
        self.wake.set()

    # ---- events ---------------------------------------------------------------------------

    def on_node(self, body: Mapping[str, Any], deleted: bool = False) -> nodes_mod.NodeFacts | None:
        """A Node event; the node's facts (None when it was deleted)."""
        meta = body.get("metadata") or {}
        name = str(meta.get("name", ""))
        if deleted:
            if not self.primed:
                self.deleted_while_priming.add(str(meta.get("uid", "")))
            self.nodes.pop(name, None)
            self.raw_taints.pop(name, None)
            self.bare.pop(name, None)
            self.overlay.pop(name, None)
            self.node_seen.pop(name, None)
            self.mark()
            return None
        self.node_seen[name] = time.monotonic()
        facts = self._apply_overlay(nodes_mod.facts_from_node(body))
        old = self.nodes.get(name)
        self.nodes[name] = facts
        self.raw_taints[name] = [dict(t) for t in (body.get("spec") or {}).get("taints") or []]
        if meta.get("annotations"):
            self.bare.pop(name, None)
        else:
            self.bare[name] = str(meta.get("resourceVersion") or "")
        if old is None or not _same_for_us(old, facts):
            self.mark()
        return facts

    def on_job(self, body: Mapping[str, Any], deleted: bool = False) -> jobs_mod.JobInfo | None:
        """A Job event; the Job when this event is the one that finished it (seen running before:
        a Job first seen finished, after a restart, has no start time)."""
        meta = body.get("metadata") or {}
        name = str(meta.get("name", ""))
        if not (meta.get("labels") or {}).get(jobs_mod.LABEL_POLICY):
            return None
        if deleted:
            if not self.primed:
                self.deleted_while_priming.add(str(meta.get("uid", "")))
            elif self._keep_gone_job(name, body):
                return None
            self._drop_job(name)
            return None
        self.job_seen[name] = time.monotonic()
        old = self.jobs.get(name)
        info = jobs_mod.job_info(body, old, time.monotonic())
        if info is None:
            return None
        self.jobs[name] = info
        if old is None or old.outcome != info.outcome:
            self.mark(info.policy)
        return info if old is not None and old.outcome == "running" and info.outcome != "running" else None

    def _keep_gone_job(self, name: str, body: Mapping[str, Any]) -> bool:
        """A deleted apply Job whose result is not recorded stays (finished, or failed when it was
        still running) until the reconciler records it: its node must not just wait."""
        known = self.jobs.get(name)
        last = jobs_mod.job_info(body, known, time.monotonic()) if body.get("status") else known
        if last is None or last.action != "apply" or name in self.recorded:
            return False
        if last.outcome == "running":
            last = replace(last, outcome="failed", finished_at=time.monotonic())
            self.results[name] = {"ok": False, "message": gone_job_message(name)}
        self.jobs[name] = last
        self.gone_jobs.add(name)
        self.mark(last.policy)
        return True

    def _drop_job(self, name: str) -> None:
        self.jobs.pop(name, None)
        self.results.pop(name, None)
        self.recorded.discard(name)
        self.job_seen.pop(name, None)
        self.gone_jobs.discard(name)

    def settle_gone_jobs(self) -> None:
        """Forget the deleted Jobs whose result is recorded (or whose node or policy is gone)."""
        for name in list(self.gone_jobs):
            job = self.jobs.get(name)
            if job is None or name in self.recorded or job.node not in self.nodes or job.policy not in self.policies:
                self._drop_job(name)

    def replace(self, kind: str, items: Iterable[Mapping[str, Any]], listed_since: float) -> list[str]:
        """A fresh listing of ``kind`` ("nodes" or "jobs"), begun at ``listed_since`` (monotonic):
        the objects it lacks that nothing was heard of since are deleted (their DELETED event was
        lost with the watch that a 410 Gone ended). Returns their names."""
        present = {str((o.get("metadata") or {}).get("name", "")) for o in items}
        seen, on_delete = ((self.node_seen, self.on_node) if kind == "nodes" else (self.job_seen, self.on_job))
        known = self.nodes if kind == "nodes" else {n: j for n, j in self.jobs.items() if n not in self.gone_jobs}
        gone = [name for name in known if name not in present and seen.get(name, 0.0) < listed_since]
        for name in gone:
            labels = {} if kind == "nodes" else {jobs_mod.LABEL_POLICY: self.jobs[name].policy}
            on_delete({"metadata": {"name": name, "labels": labels}}, True)
        return gone

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
                self.mark(info.policy)

    def set_policy(self, body: Mapping[str, Any]) -> PolicyEntry:
        """A policy was created, changed or seen at start."""
        name = str((body.get("metadata") or {}).get("name"))
        entry = parse_entry(body, self.policies.get(name))
        self.policies[name] = entry
        self.mark()  # other policies may now conflict with this one
        return entry

    def forget_policy(self, name: str) -> PolicyEntry | None:
        entry = self.policies.pop(name, None)
        self.dirty.discard(name)
        self.mark()
        return entry

    # ---- records this operator wrote ------------------------------------------------------

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

    def remember(self, node_name: str, policy: str, record: dict[str, Any] | None) -> None:
        """This operator wrote (or, None, removed) ``policy``'s record on the node."""
        self.overlay.setdefault(node_name, {})[policy] = record
        current = self.nodes.get(node_name)
        if current is not None:
            self.nodes[node_name] = self._apply_overlay(current)

    def untainted(self, node_name: str, keep: list[dict[str, Any]]) -> None:
        """This operator removed the startup taint from the node (its remaining taints: ``keep``)."""
        self.raw_taints[node_name] = keep
        self.bare.pop(node_name, None)
        current = self.nodes.get(node_name)
        if current is not None:
            self.nodes[node_name] = replace(current, taints=tuple(
                t for t in current.taints if t.key != nodes_mod.STARTUP_TAINT_KEY))

    # ---- queries --------------------------------------------------------------------------

    def matched_nodes(self, entry: PolicyEntry) -> list[nodes_mod.NodeFacts]:
        assert entry.policy is not None
        selector = entry.policy.spec.node_selector
        return [n for n in self.nodes.values() if n.eligible and nodes_mod.matches(selector, n.labels)]

    def conflicts(self, entry: PolicyEntry, matched: Iterable[nodes_mod.NodeFacts]) -> dict[str, list[str]]:
        """Earlier policies whose syslog settings differ from ``entry``'s, and the ``matched`` nodes
        they share with it (a node has one syslog plugin config: the earlier policy keeps it)."""
        assert entry.policy is not None
        mine = syslog_key(entry.policy)
        if mine is None:
            return {}
        matched = list(matched)
        out: dict[str, list[str]] = {}
        for other in self.policies.values():
            if other is entry or other.policy is None or not other.active:
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

    def all_configured(self, node: nodes_mod.NodeFacts) -> bool:
        """Every valid policy that selects this node (and may act on it) has a successful record
        for its bundle."""
        for other in self.policies.values():
            if other.policy is None or other.bundle is None or not other.active:
                continue
            if not nodes_mod.matches(other.policy.spec.node_selector, node.labels):
                continue
            if self.conflicts(other, [node]):
                continue  # a conflicting later policy leaves this node alone: it must not hold the gate
            rec = node.record(other.name)
            if not rec or rec.get("result") != "ok" or rec.get("bundle") != other.bundle.hash:
                return False
        return True

    def running_jobs(self, policy: str) -> dict[str, str]:
        """Node → budget of the policy's running apply Jobs."""
        return {j.node: j.budget for j in self.jobs.values()
                if j.policy == policy and j.action == "apply" and j.outcome == "running"}

    def unrecorded(self, policy: str) -> bool:
        """A finished Job of the policy still waits for its result to be recorded."""
        return any(j.policy == policy and j.outcome != "running" and j.name not in self.recorded
                   for j in self.jobs.values())


def gone_job_message(job: str) -> str:
    return (f"Job {job} was deleted before it finished (kubectl delete, a namespace cleanup or a TTL "
            "controller); the node is retried")


def _same_for_us(a: nodes_mod.NodeFacts, b: nodes_mod.NodeFacts) -> bool:
    return (a.labels == b.labels and a.ready == b.ready and a.boot_id == b.boot_id and a.uid == b.uid
            and a.taints == b.taints and a.deleting == b.deleting and a.records == b.records)
