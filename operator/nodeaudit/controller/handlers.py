"""kopf registrations, one line each: they feed the Controller (or call ``lifecycle``) and nothing else.

Why thin: kopf decides when things happen (startup, watch events, policy changes, deletion);
the Controller decides what to do. Nodes, Jobs and Pods are observed with ``@kopf.on.event`` only
(no create/update handlers on Nodes, so kopf never writes its annotations or finalizers onto
Nodes); the Controller lists them once at start and plans nothing before, so a restarted operator
sees every running Job before it decides anything. Only the policy has kopf state.

kopf's @kopf.index barrier is O(n^2) in the number of pre-existing objects in kopf 1.45 (every
object's worker waits on one condition that every other object's toggle notifies): 2,000 Nodes
take a minute to "index". The Controller instead lists Nodes/Jobs/Pods once at start and plans
nothing before that, which gives the same guarantee (no plan from a partial view) in O(n).
"""

from __future__ import annotations

from typing import Any

import kopf

from nodeaudit.controller import lifecycle
from nodeaudit.controller.config import Config
from nodeaudit.controller.lifecycle import controller
from nodeaudit.core import jobs as jobs_mod

POLICY = ("nodeaudit.io", "v1alpha1", "nodeauditpolicies")
OURS = {jobs_mod.LABEL_POLICY: kopf.PRESENT}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    await lifecycle.startup(settings, memo)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await lifecycle.cleanup(memo)


@kopf.on.login()
def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    return lifecycle.login(memo, **kwargs)


# Async, like the policy handlers below: they only touch the Controller's in-memory view, which
# belongs to its loop (a sync handler would run in kopf's thread pool, beside the loop). ``type`` None marks kopf's listing (at start, or its re-list after 410 Gone).

@kopf.on.event("", "v1", "nodes")
async def node_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller(memo).on_node(body, deleted=type == "DELETED", listing=type is None)


@kopf.on.event("batch", "v1", "jobs", labels=OURS)
async def job_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller(memo).on_job(body, deleted=type == "DELETED", listing=type is None)


@kopf.on.event("", "v1", "pods", labels=OURS)
async def pod_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller(memo).on_pod(body, deleted=type == "DELETED")


@kopf.on.event(*POLICY)
async def policy_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller(memo).notice_policy(body)


@kopf.on.resume(*POLICY)
@kopf.on.create(*POLICY)
@kopf.on.update(*POLICY)
async def policy_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller(memo).set_policy(body)


@kopf.on.delete(*POLICY)
async def policy_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await lifecycle.remove_policy(memo, body)


async def policy_resync(memo: kopf.Memo, **_: Any) -> None:
    await controller(memo).resync()


_timer_interval: float | None = None


def register_timers(config: Config) -> None:
    """Register the resync timer (``NODEAUDIT_RESYNC_SECONDS``) once per process, at operator
    start and not at import: a bad value is then a SettingError for ``nodeaudit run`` to report,
    never an import-time traceback. A later call with another interval keeps the first."""
    global _timer_interval
    if _timer_interval is not None:
        return
    _timer_interval = config.resync
    kopf.timer(*POLICY, interval=config.resync, initial_delay=config.resync, idle=None)(policy_resync)
