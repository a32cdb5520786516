"""kopf registrations, kept thin: they feed the Controller and nothing else.

Why thin: kopf decides when things happen (startup, watch events, policy changes, deletion);
the Controller decides what to do. Nodes, Jobs and Pods are observed with ``@kopf.on.event`` only
(no create/update handlers on Nodes, so kopf never writes its annotations or finalizers onto
Nodes); the Controller lists them once at start and plans nothing before, so a restarted operator
sees every running Job before it decides anything. Only the policy has kopf state.
"""

from __future__ import annotations

import os
from typing import Any

import kopf

from nodeaudit.controller.kube import Kube
from nodeaudit.controller.reconciler import Config, Controller, Waiting
from nodeaudit.core import jobs as jobs_mod

POLICY = ("nodeaudit.io", "v1alpha1", "nodeauditpolicies")
OURS = {jobs_mod.LABEL_POLICY: kopf.PRESENT}


def configure(settings: kopf.OperatorSettings) -> None:
    """Settings the operator needs to be correct, whoever starts it."""
    settings.persistence.finalizer = "nodeaudit.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="nodeaudit.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="nodeaudit.io", key="last-handled-configuration")
    # Only our Jobs and Pods, filtered by the API server, not in the operator.
    settings.watching.label_selectors["batch", "v1", "jobs"] = jobs_mod.LABEL_POLICY
    settings.watching.label_selectors["", "v1", "pods"] = jobs_mod.LABEL_POLICY
    settings.scanning.disabled = True  # no CRD watching: no cluster-wide CRD RBAC needed


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure(settings)
    controller = Controller(Kube(), Config.from_env())
    memo["controller"] = controller
    if memo.get("connection") is not None:
        controller.kube.configure(memo["connection"])
    controller.start()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    controller = memo.get("controller")
    if controller is not None:
        await controller.stop()


@kopf.on.login()
def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    import kubernetes.config.kube_config as kube_config

    # The kubernetes client reads $KUBECONFIG once, at import; honour its current value.
    if os.environ.get("KUBECONFIG"):
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = os.environ["KUBECONFIG"]
    info = kopf.login_via_client(**kwargs)
    if info is not None:
        memo["connection"] = info
        controller = memo.get("controller")
        if controller is not None:
            controller.kube.configure(info)
    return info


def _controller(memo: kopf.Memo) -> Controller:
    controller: Controller = memo["controller"]
    return controller


# ---- observed resources: events only (the Controller primes itself with one LIST each) --------
# kopf's @kopf.index barrier is O(n^2) in the number of pre-existing objects in kopf 1.45 (every
# object's worker waits on one condition that every other object's toggle notifies): 2,000 Nodes
# take a minute to "index". The Controller instead lists Nodes/Jobs/Pods once at start and plans
# nothing before that, which gives the same guarantee (no plan from a partial view) in O(n).

@kopf.on.event("", "v1", "nodes")
def node_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).on_node(body, deleted=type == "DELETED")


@kopf.on.event("batch", "v1", "jobs", labels=OURS)
def job_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).on_job(body, deleted=type == "DELETED")


@kopf.on.event("", "v1", "pods", labels=OURS)
def pod_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).on_pod(body, deleted=type == "DELETED")


# ---- the policy ------------------------------------------------------------------------------

@kopf.on.resume(*POLICY)
@kopf.on.create(*POLICY)
@kopf.on.update(*POLICY)
def policy_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).set_policy(body)


@kopf.on.delete(*POLICY)
async def policy_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    try:
        await _controller(memo).remove_policy(body)
    except Waiting as e:
        raise kopf.TemporaryError(str(e), delay=_controller(memo).config.removal_poll) from None


async def policy_resync(memo: kopf.Memo, **_: Any) -> None:
    await _controller(memo).resync()


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
