"""The Azure edge's entry point: one agent check of a policy's nodes (``check_policy_agents``).

The operator calls it every ``monitoringAgent.interval``; ``nodeaudit check-agent`` calls it once.
It wires the layers below together and decides nothing itself:

- ``nodeaudit.azure.credential``: the endpoint and the token;
- ``nodeaudit.azure.clients``: the real async SDK clients, counted and bounded;
- ``nodeaudit.azure.facts``: SDK objects and errors -> the pure facts and messages;
- ``nodeaudit.azure.checker``: one ARM read per resource per interval, remediation;
- ``nodeaudit.core.agent``: settings, facts -> verdicts, conditions, tables (pure).

The few Kubernetes reads (the ``ama-logs`` DaemonSet and its pods, the workspace Secret) go
through ``KubeReads``: the operator passes its own async kube layer, the CLI the same layer built
from a kubeconfig. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

from nodeaudit.azure.checker import AgentChecker
from nodeaudit.core import agent as A
from nodeaudit.core.agent import AgentSettings


class KubeReads(Protocol):
    """An async GET of a Kubernetes API path: JSON out, an exception with ``.status`` on HTTP errors
    (``nodeaudit.controller.kube.Kube`` is one)."""

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any: ...


def _status(e: BaseException) -> int | None:
    status = getattr(e, "status", None)
    return status if isinstance(status, int) else None


async def fetch_ama_logs(
    kube: KubeReads, namespace: str = "kube-system", name: str = "ama-logs"
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The ama-logs DaemonSet and its pods (None when the DaemonSet is absent)."""
    try:
        ds = await kube.get(f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}")
    except Exception as e:
        if _status(e) == 404:
            return None, []
        raise
    if not isinstance(ds, dict):
        raise ValueError(f"{namespace}/{name}: the API server sent no DaemonSet object")
    match = ((ds.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    selector = ",".join(f"{k}={v}" for k, v in sorted(match.items()))
    pods = await kube.get(f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": selector} if selector else None)
    items = (pods or {}).get("items") if isinstance(pods, dict) else None
    return ds, [p for p in items or [] if isinstance(p, dict)]


async def read_workspace_secret(kube: KubeReads, name: str, namespace: str, id_key: str, key_key: str) -> tuple[str, str]:
    """(workspaceId, workspaceKey) from a Secret. The values are returned, never logged."""
    secret = await kube.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
    data = (secret or {}).get("data") or {} if isinstance(secret, dict) else {}
    missing = [k for k in (id_key, key_key) if k not in data]
    if missing:
        raise KeyError(f"Secret {namespace}/{name} has no key(s) {', '.join(missing)}")
    return (base64.b64decode(data[id_key]).decode().strip(), base64.b64decode(data[key_key]).decode().strip())


async def check_policy_agents(
    nodes: Sequence[Mapping[str, Any]],
    settings: AgentSettings,
    checker: AgentChecker,
    *,
    kube: KubeReads | None = None,
) -> A.AgentReport:
    """One check of a policy's nodes: what the operator calls every ``monitoringAgent.interval``.

    ``nodes`` are Node objects as dicts (the policy's matched Linux nodes). Never raises for ARM or
    cluster trouble: it lands in the report (``state: Error`` / ``report.errors``).
    """
    report = A.AgentReport(check=settings.check)
    before = checker.clients.request_total
    groups = A.group_nodes(nodes)
    report.not_checkable = dict(groups.not_checkable)
    problem = A.settings_problem(settings)
    if problem:
        report.errors.append(problem)
        return report
    if not settings.runs:
        report.scale_sets = [
            A.ScaleSetResult(ref=r, nodes=n, state="Skipped", agent=None, message=A.CHECK_DISABLED_MESSAGE)
            for r, n in groups.scale_sets.items()
        ]
        return report
    if settings.check == "Auto":
        await _check_auto(report, groups, settings, checker)
        report.arm_requests = checker.clients.request_total - before
        return report
    if settings.check == "VMSSExtension":
        report.scale_sets = await checker.check_extensions(groups.scale_sets, settings.extension_types)
    elif settings.check == "ContainerInsights":
        report.scale_sets = await _check_container_insights(groups, nodes, kube)

    if settings.data_collection_rule_id:
        report.collection.append(await checker.check_dcr(settings.data_collection_rule_id, settings.facility, settings.priority))
    if settings.workspace_resource_id:
        report.collection.append(await checker.check_workspace(settings.workspace_resource_id, settings.facility, settings.priority))

    if settings.remediate and settings.check == "VMSSExtension":
        await _remediate(report, settings, checker, kube)
    report.arm_requests = checker.clients.request_total - before
    return report


async def _check_auto(report: A.AgentReport, groups: A.NodeGroups, settings: AgentSettings,
                      checker: AgentChecker) -> None:
    """Every path at once, each read bounded per interval: one list per scale set, the node
    resource group once (kept), one managed-cluster read, one association list, one read per DCR."""
    extensions, cluster = await asyncio.gather(
        checker.check_extensions(groups.scale_sets, settings.extension_types),
        checker.check_cluster(list(groups.scale_sets)),
    )
    report.scale_sets, report.cluster = extensions, cluster
    rule_ids: list[str] = []
    if cluster.resource_id and cluster.state in ("AddonOn", "AddonOff"):
        try:
            rule_ids = await checker.associated_rules(cluster.resource_id)
        except Exception as e:  # noqa: BLE001 - any failure to list the associations is that part's verdict
            report.collection.append(A.collection_error("DataCollectionRule", cluster.resource_id, checker.describe(
                e, what="listing the cluster's Data Collection Rule associations",
                permission="Microsoft.Insights/dataCollectionRuleAssociations/read (Monitoring Reader on the cluster)",
                scope=cluster.resource_id)))
    if settings.data_collection_rule_id:
        rule_ids.append(settings.data_collection_rule_id)
    dcrs, results = await checker.check_rules(rule_ids, settings.facility, settings.priority)
    report.dcrs = dcrs
    report.collection.extend(results)
    report.path = A.auto_path_verdict(cluster, dcrs, results[: len(dcrs)], report.scale_sets,
                                      settings.facility, settings.priority)


async def _check_container_insights(
    groups: A.NodeGroups, nodes: Sequence[Mapping[str, Any]], kube: KubeReads | None
) -> list[A.ScaleSetResult]:
    now = datetime.now(timezone.utc)
    if kube is None:
        return [A.ScaleSetResult(ref=r, nodes=n, state="Error", agent=None, checked_at=now,
                                 message="ContainerInsights check needs the cluster (no Kubernetes client)")
                for r, n in groups.scale_sets.items()]
    try:
        ds, pods = await fetch_ama_logs(kube)
    except Exception as e:  # noqa: BLE001 - any failure is the Container Insights verdict
        status = _status(e)
        msg = (f"reading kube-system/ama-logs failed: {type(e).__name__}"
               + (f" {status}" if status else "")
               + (" (grant get on daemonsets and list on pods in kube-system)" if status == 403 else ""))
        return [A.ScaleSetResult(ref=r, nodes=n, state="Error", agent=None, message=msg, checked_at=now)
                for r, n in groups.scale_sets.items()]
    by_name = {A.node_name(n): n for n in nodes}
    return [A.ScaleSetResult.from_verdict(r, n, A.container_insights_verdict(n, by_name, ds, pods), checked_at=now)
            for r, n in groups.scale_sets.items()]


async def _remediate(report: A.AgentReport, settings: AgentSettings, checker: AgentChecker,
                     kube: KubeReads | None) -> None:
    todo = [s for s in report.scale_sets if s.state in ("Missing", "Failed")]
    if not todo:
        return
    workspace = None
    if settings.remediation_extension == A.OMS:
        if settings.workspace_secret is None or kube is None:
            for s in todo:
                s.remediation = "not attempted: OmsAgentForLinux needs remediation.workspaceSecretRef and the cluster"
            return
        name, ns, idk, keyk = settings.workspace_secret
        try:
            workspace = await read_workspace_secret(kube, name, ns, idk, keyk)
        except Exception as e:  # noqa: BLE001 - any failure: no remediation, said why
            for s in todo:
                s.remediation = f"not attempted: cannot read Secret {ns}/{name} ({type(e).__name__})"
            return
    sem = asyncio.Semaphore(max(1, checker.clients.options.concurrency))

    async def one(s: A.ScaleSetResult) -> None:
        async with sem:
            s.remediation = await checker.remediate(
                s.ref, settings.remediation_extension, workspace=workspace,
                data_collection_rule_id=settings.data_collection_rule_id)

    await asyncio.gather(*(one(s) for s in todo))
